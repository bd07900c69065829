//! Peers announced to us (`announce_peer`), per info-hash, for answering
//! `get_peers`. Bounded three ways: torrents, peers per torrent, and peers
//! in all; entries expire after [`PEER_TTL`] without a new announce.
//!
//! One entry per IP address per torrent (a new port replaces the old), so
//! one host cannot fill a torrent by announcing many ports. When a torrent
//! is full the oldest entry gives way; when the store is full new torrents
//! and peers are refused until entries expire: refusing is cheap and
//! predictable, and an attacker needs a token (a real address) per entry.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::proto::info_hash::InfoHash;
use crate::proto::krpc::{BloomFilter, Scrape};
use crate::rng;

/// How long an announce is kept.
pub const PEER_TTL: Duration = Duration::from_secs(30 * 60);

/// The bounds of a [`PeerStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorageLimits {
    /// Torrents tracked at once.
    pub max_torrents: usize,
    /// Peers kept per torrent.
    pub max_peers_per_torrent: usize,
    /// Peers kept in all.
    pub max_peers: usize,
}

impl Default for StorageLimits {
    fn default() -> Self {
        StorageLimits {
            max_torrents: 10_000,
            max_peers_per_torrent: 1_000,
            max_peers: 200_000,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct StoredPeer {
    port: u16,
    seed: bool,
    seen: Duration,
}

/// Why an announce was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StoreRefused {
    /// Port 0 is never a listening port.
    #[error("port 0")]
    PortZero,
    /// The store holds as many torrents as allowed.
    #[error("too many torrents stored")]
    TooManyTorrents,
    /// The store holds as many peers as allowed.
    #[error("too many peers stored")]
    TooManyPeers,
}

/// The peers announced to us.
#[derive(Debug, Default)]
pub struct PeerStore {
    limits: StorageLimits,
    torrents: HashMap<InfoHash, HashMap<IpAddr, StoredPeer>>,
    peers: usize,
}

impl PeerStore {
    /// An empty store with `limits`.
    pub fn new(limits: StorageLimits) -> Self {
        PeerStore {
            limits,
            torrents: HashMap::new(),
            peers: 0,
        }
    }

    /// Records that `peer` has the torrent at `now`.
    pub fn announce(
        &mut self,
        now: Duration,
        info_hash: InfoHash,
        peer: SocketAddr,
        seed: bool,
    ) -> Result<(), StoreRefused> {
        if peer.port() == 0 {
            return Err(StoreRefused::PortZero);
        }
        if !self.torrents.contains_key(&info_hash) {
            if self.torrents.len() >= self.limits.max_torrents {
                return Err(StoreRefused::TooManyTorrents);
            }
            if self.peers >= self.limits.max_peers {
                return Err(StoreRefused::TooManyPeers);
            }
        }
        let swarm = self.torrents.entry(info_hash).or_default();
        let entry = StoredPeer {
            port: peer.port(),
            seed,
            seen: now,
        };
        if let Some(e) = swarm.get_mut(&peer.ip()) {
            *e = entry;
            return Ok(());
        }
        if swarm.len() >= self.limits.max_peers_per_torrent {
            let oldest = swarm.iter().min_by_key(|(_, p)| p.seen).map(|(ip, _)| *ip);
            if let Some(ip) = oldest {
                swarm.remove(&ip);
                self.peers -= 1;
            }
        } else if self.peers >= self.limits.max_peers {
            if swarm.is_empty() {
                self.torrents.remove(&info_hash);
            }
            return Err(StoreRefused::TooManyPeers);
        }
        swarm.insert(peer.ip(), entry);
        self.peers += 1;
        Ok(())
    }

    /// Up to `max` peers of the torrent, chosen at random when there are
    /// more; seeds left out if `noseed`.
    pub fn peers(
        &self,
        info_hash: &InfoHash,
        max: usize,
        noseed: bool,
        rng_state: &mut u64,
    ) -> Vec<SocketAddr> {
        let Some(swarm) = self.torrents.get(info_hash) else {
            return Vec::new();
        };
        let mut all: Vec<SocketAddr> = swarm
            .iter()
            .filter(|(_, p)| !(noseed && p.seed))
            .map(|(ip, p)| SocketAddr::new(*ip, p.port))
            .collect();
        if all.len() > max {
            // Sorted first so that the sample depends only on the rng, not
            // on the map's order: runs replay exactly.
            all.sort_unstable();
            // A partial Fisher-Yates shuffle: the first `max` are a uniform
            // sample.
            for i in 0..max {
                let j = i + rng::next_below(rng_state, all.len() - i);
                all.swap(i, j);
            }
            all.truncate(max);
        }
        all
    }

    /// The BEP 33 bloom filters of the torrent, if we store any peer of it.
    pub fn scrape(&self, info_hash: &InfoHash) -> Option<Scrape> {
        let swarm = self.torrents.get(info_hash)?;
        let mut s = Scrape {
            seeds: BloomFilter::default(),
            peers: BloomFilter::default(),
        };
        for (ip, p) in swarm {
            if p.seed {
                s.seeds.insert(*ip);
            } else {
                s.peers.insert(*ip);
            }
        }
        Some(s)
    }

    /// Up to `max` of the stored info-hashes, at random (BEP 51).
    pub fn sample(&self, max: usize, rng_state: &mut u64) -> Vec<InfoHash> {
        let n = self.torrents.len();
        if n <= max {
            return self.torrents.keys().copied().collect();
        }
        // A random window of the map's order: cheap, and the order itself is
        // randomised per process by the hasher.
        let start = rng::next_below(rng_state, n);
        self.torrents
            .keys()
            .cycle()
            .skip(start)
            .take(max)
            .copied()
            .collect()
    }

    /// Drops announces older than [`PEER_TTL`] and torrents left empty.
    pub fn expire(&mut self, now: Duration) {
        let mut removed = 0;
        self.torrents.retain(|_, swarm| {
            let before = swarm.len();
            swarm.retain(|_, p| now.saturating_sub(p.seen) < PEER_TTL);
            removed += before - swarm.len();
            !swarm.is_empty()
        });
        self.peers -= removed;
    }

    /// The torrents with peers stored.
    pub fn info_hashes(&self) -> impl Iterator<Item = &InfoHash> {
        self.torrents.keys()
    }

    /// Torrents with stored peers.
    pub fn torrent_count(&self) -> usize {
        self.torrents.len()
    }

    /// Peers stored, over all torrents.
    pub fn peer_count(&self) -> usize {
        self.peers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ih(n: u32) -> InfoHash {
        let mut h = [0u8; 20];
        h[..4].copy_from_slice(&n.to_be_bytes());
        InfoHash(h)
    }

    fn peer(n: u32, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::from((0x0a00_0000 + n).to_be_bytes()), port)
    }

    #[test]
    fn port_zero_is_never_stored() {
        let mut s = PeerStore::new(StorageLimits::default());
        assert_eq!(
            s.announce(Duration::ZERO, ih(1), peer(1, 0), false),
            Err(StoreRefused::PortZero)
        );
        assert_eq!(s.torrent_count(), 0);
    }

    #[test]
    fn one_entry_per_ip_and_oldest_gives_way_when_full() {
        let limits = StorageLimits {
            max_torrents: 2,
            max_peers_per_torrent: 3,
            max_peers: 100,
        };
        let mut s = PeerStore::new(limits);
        let mut state = 1;
        for i in 0..3 {
            s.announce(Duration::from_secs(i.into()), ih(1), peer(i, 6881), false)
                .unwrap();
        }
        // Same IP, new port: replaced, not added.
        s.announce(Duration::from_secs(5), ih(1), peer(1, 7000), true)
            .unwrap();
        assert_eq!(s.peer_count(), 3);
        // A fourth address evicts the oldest (peer 0).
        s.announce(Duration::from_secs(6), ih(1), peer(9, 6881), false)
            .unwrap();
        let mut got = s.peers(&ih(1), 10, false, &mut state);
        got.sort();
        assert_eq!(got, vec![peer(1, 7000), peer(2, 6881), peer(9, 6881)]);
        assert_eq!(s.peers(&ih(1), 10, true, &mut state).len(), 2, "noseed");
        assert_eq!(s.peers(&ih(1), 2, false, &mut state).len(), 2);
        // Torrent cap.
        s.announce(Duration::ZERO, ih(2), peer(1, 1), false)
            .unwrap();
        assert_eq!(
            s.announce(Duration::ZERO, ih(3), peer(1, 1), false),
            Err(StoreRefused::TooManyTorrents)
        );
        assert_eq!(s.torrent_count(), 2);
    }

    #[test]
    fn total_peer_cap_holds() {
        let limits = StorageLimits {
            max_torrents: 100,
            max_peers_per_torrent: 100,
            max_peers: 5,
        };
        let mut s = PeerStore::new(limits);
        let ok = (0..20)
            .filter(|i| {
                s.announce(Duration::ZERO, ih(i % 3), peer(*i, 80), false)
                    .is_ok()
            })
            .count();
        assert_eq!(ok, 5);
        assert_eq!(s.peer_count(), 5);
        assert!(s.torrent_count() <= 3);
    }

    #[test]
    fn announces_expire_after_30_minutes() {
        let mut s = PeerStore::new(StorageLimits::default());
        s.announce(Duration::ZERO, ih(1), peer(1, 1), false)
            .unwrap();
        s.announce(Duration::from_secs(600), ih(1), peer(2, 1), false)
            .unwrap();
        s.expire(PEER_TTL - Duration::from_secs(1));
        assert_eq!(s.peer_count(), 2);
        s.expire(PEER_TTL);
        assert_eq!(s.peer_count(), 1);
        s.expire(PEER_TTL + Duration::from_secs(600));
        assert_eq!((s.peer_count(), s.torrent_count()), (0, 0));
    }

    #[test]
    fn scrape_filters_count_seeds_and_peers() {
        let mut s = PeerStore::new(StorageLimits::default());
        for i in 0..300 {
            s.announce(Duration::ZERO, ih(1), peer(i, 1), i < 100)
                .unwrap();
        }
        let sc = s.scrape(&ih(1)).unwrap();
        let (seeds, peers) = (sc.seeds.estimate(), sc.peers.estimate());
        assert!((90.0..110.0).contains(&seeds), "{seeds}");
        assert!((180.0..220.0).contains(&peers), "{peers}");
        assert!(s.scrape(&ih(2)).is_none());
    }
}
