//! The tracker server's state: who is in each swarm, pure and
//! deterministic (time comes in as an argument). The server shards these
//! tables by info-hash, so no lock is shared by all announces.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::proto::info_hash::InfoHash;
use crate::proto::tracker::{Event, ScrapeStats};

/// Most peers returned by one announce, whatever `numwant` asks.
pub const MAX_NUMWANT: usize = 200;
/// Peers returned when the client does not say.
pub const DEFAULT_NUMWANT: usize = 50;

#[derive(Debug, Clone, Copy)]
struct PeerEntry {
    seed: bool,
    last_seen: Duration,
}

#[derive(Debug, Default)]
struct Swarm {
    peers: HashMap<SocketAddr, PeerEntry>,
    downloaded: u32,
}

/// What an announce gets back.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AnnounceOutcome {
    /// Other peers of the swarm (never the announcer), at most `numwant`.
    pub peers: Vec<SocketAddr>,
    /// Seeds in the swarm.
    pub complete: u32,
    /// Leechers in the swarm.
    pub incomplete: u32,
}

/// The swarms of one shard.
#[derive(Debug, Default)]
pub struct SwarmTable {
    swarms: HashMap<InfoHash, Swarm>,
}

impl SwarmTable {
    /// Records an announce by the peer at `addr` at time `now` and returns
    /// the swarm as the peer should see it.
    pub fn announce(
        &mut self,
        info_hash: InfoHash,
        addr: SocketAddr,
        event: Event,
        left: u64,
        numwant: Option<usize>,
        now: Duration,
    ) -> AnnounceOutcome {
        let swarm = self.swarms.entry(info_hash).or_default();
        if event == Event::Stopped {
            swarm.peers.remove(&addr);
        } else {
            let seed = left == 0;
            let was_seed = swarm.peers.get(&addr).is_some_and(|p| p.seed);
            if event == Event::Completed && !was_seed {
                swarm.downloaded = swarm.downloaded.saturating_add(1);
            }
            swarm.peers.insert(
                addr,
                PeerEntry {
                    seed,
                    last_seen: now,
                },
            );
        }
        let want = numwant.unwrap_or(DEFAULT_NUMWANT).min(MAX_NUMWANT);
        let peers = if event == Event::Stopped {
            Vec::new()
        } else {
            swarm
                .peers
                .keys()
                .filter(|a| **a != addr)
                .take(want)
                .copied()
                .collect()
        };
        let complete = swarm.peers.values().filter(|p| p.seed).count() as u32;
        let outcome = AnnounceOutcome {
            peers,
            complete,
            incomplete: swarm.peers.len() as u32 - complete,
        };
        if swarm.peers.is_empty() && swarm.downloaded == 0 {
            self.swarms.remove(&info_hash);
        }
        outcome
    }

    /// Counts of a swarm (zeros for an unknown one).
    pub fn scrape(&self, info_hash: &InfoHash) -> ScrapeStats {
        self.swarms
            .get(info_hash)
            .map_or_else(ScrapeStats::default, |s| {
                let complete = s.peers.values().filter(|p| p.seed).count() as u32;
                ScrapeStats {
                    complete,
                    downloaded: s.downloaded,
                    incomplete: s.peers.len() as u32 - complete,
                }
            })
    }

    /// Forgets peers not heard from within `ttl` of `now`.
    pub fn expire(&mut self, now: Duration, ttl: Duration) {
        for swarm in self.swarms.values_mut() {
            swarm
                .peers
                .retain(|_, p| now.saturating_sub(p.last_seen) < ttl);
        }
        self.swarms
            .retain(|_, s| !s.peers.is_empty() || s.downloaded > 0);
    }

    /// Number of swarms and of peers in them.
    pub fn size(&self) -> (usize, usize) {
        (
            self.swarms.len(),
            self.swarms.values().map(|s| s.peers.len()).sum(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(n: u8) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, n], 6881))
    }

    const H: InfoHash = InfoHash([1; 20]);
    const T0: Duration = Duration::ZERO;

    #[test]
    fn peers_meet_and_counts_follow_events() {
        let mut t = SwarmTable::default();
        let first = t.announce(H, addr(1), Event::Started, 0, None, T0);
        assert_eq!(
            first,
            AnnounceOutcome {
                peers: vec![],
                complete: 1,
                incomplete: 0
            }
        );
        let second = t.announce(H, addr(2), Event::Started, 100, None, T0);
        assert_eq!(second.peers, [addr(1)]);
        assert_eq!((second.complete, second.incomplete), (1, 1));
        t.announce(H, addr(2), Event::Completed, 0, None, T0);
        assert_eq!(
            t.scrape(&H),
            ScrapeStats {
                complete: 2,
                downloaded: 1,
                incomplete: 0
            }
        );
        // A repeated `completed` from a seed is not another download.
        t.announce(H, addr(2), Event::Completed, 0, None, T0);
        assert_eq!(t.scrape(&H).downloaded, 1);
        let gone = t.announce(H, addr(1), Event::Stopped, 0, None, T0);
        assert!(gone.peers.is_empty());
        assert_eq!(
            t.scrape(&H),
            ScrapeStats {
                complete: 1,
                downloaded: 1,
                incomplete: 0
            }
        );
    }

    #[test]
    fn numwant_is_capped() {
        let mut t = SwarmTable::default();
        for n in 1..=250u8 {
            t.announce(H, addr(n), Event::Started, 1, None, T0);
        }
        assert_eq!(
            t.announce(H, addr(1), Event::None, 1, Some(10), T0)
                .peers
                .len(),
            10
        );
        assert_eq!(
            t.announce(H, addr(1), Event::None, 1, None, T0).peers.len(),
            DEFAULT_NUMWANT
        );
        assert_eq!(
            t.announce(H, addr(1), Event::None, 1, Some(100_000), T0)
                .peers
                .len(),
            MAX_NUMWANT
        );
    }

    #[test]
    fn silent_peers_expire() {
        let mut t = SwarmTable::default();
        t.announce(H, addr(1), Event::Started, 0, None, T0);
        t.announce(
            H,
            addr(2),
            Event::Started,
            5,
            None,
            Duration::from_secs(100),
        );
        t.expire(Duration::from_secs(150), Duration::from_secs(120));
        assert_eq!(
            t.scrape(&H),
            ScrapeStats {
                complete: 0,
                downloaded: 0,
                incomplete: 1
            }
        );
        t.expire(Duration::from_secs(1000), Duration::from_secs(120));
        assert_eq!(t.size(), (0, 0));
    }
}
