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
/// Peers kept per swarm: beyond this new peers are not recorded (they
/// still get an answer), so no client can grow a swarm without bound.
pub const MAX_PEERS_PER_SWARM: usize = 50_000;

#[derive(Debug, Clone, Copy)]
struct PeerEntry {
    seed: bool,
    last_seen: Duration,
}

#[derive(Debug, Default)]
struct Swarm {
    peers: HashMap<SocketAddr, PeerEntry>,
    /// How many of `peers` are seeds, kept up to date so counting costs
    /// nothing per announce.
    seeds: u32,
    downloaded: u32,
}

impl Swarm {
    fn counts(&self) -> (u32, u32) {
        (self.seeds, self.peers.len() as u32 - self.seeds)
    }
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
#[derive(Debug)]
pub struct SwarmTable {
    swarms: HashMap<InfoHash, Swarm>,
    max_swarms: usize,
}

impl Default for SwarmTable {
    fn default() -> Self {
        SwarmTable::with_max_swarms(usize::MAX)
    }
}

/// Which peers an announce wants back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerRequest {
    /// How many; `None` lets the tracker choose.
    pub numwant: Option<usize>,
    /// Only peers of this family (`Some(true)`: IPv6), as a UDP reply can
    /// carry one family only; `None` for both.
    pub ipv6: Option<bool>,
    /// Where to start in the swarm, so that different announces see
    /// different peers (a random number).
    pub start: usize,
}

impl SwarmTable {
    /// A table that keeps at most `max_swarms` swarms.
    pub fn with_max_swarms(max_swarms: usize) -> Self {
        SwarmTable {
            swarms: HashMap::new(),
            max_swarms,
        }
    }

    /// Records an announce by the peer at `addr` at time `now` and returns
    /// the swarm as the peer should see it: other peers (leechers only, for
    /// a seed), from a varying place in the swarm.
    pub fn announce(
        &mut self,
        info_hash: InfoHash,
        addr: SocketAddr,
        event: Event,
        left: u64,
        request: PeerRequest,
        now: Duration,
    ) -> AnnounceOutcome {
        if !self.swarms.contains_key(&info_hash) && self.swarms.len() >= self.max_swarms {
            // Full: answer, but remember nothing.
            return AnnounceOutcome::default();
        }
        let swarm = self.swarms.entry(info_hash).or_default();
        let seed = left == 0;
        if event == Event::Stopped {
            if swarm.peers.remove(&addr).is_some_and(|p| p.seed) {
                swarm.seeds -= 1;
            }
        } else {
            // A download completes once: a known leecher that now has it all.
            if swarm.peers.get(&addr).is_some_and(|p| !p.seed) && seed {
                swarm.downloaded = swarm.downloaded.saturating_add(1);
            }
            if swarm.peers.contains_key(&addr) || swarm.peers.len() < MAX_PEERS_PER_SWARM {
                let entry = PeerEntry {
                    seed,
                    last_seen: now,
                };
                if swarm.peers.insert(addr, entry).is_some_and(|p| p.seed) {
                    swarm.seeds -= 1;
                }
                if seed {
                    swarm.seeds += 1;
                }
            }
        }
        let want = request.numwant.unwrap_or(DEFAULT_NUMWANT).min(MAX_NUMWANT);
        let peers = if event == Event::Stopped || swarm.peers.is_empty() {
            Vec::new()
        } else {
            let skip = request.start % swarm.peers.len();
            swarm
                .peers
                .iter()
                .cycle()
                .skip(skip)
                .take(swarm.peers.len())
                .filter(|(a, p)| **a != addr && !(seed && p.seed))
                .filter(|(a, _)| request.ipv6.is_none_or(|v6| a.is_ipv6() == v6))
                .take(want)
                .map(|(a, _)| *a)
                .collect()
        };
        let (complete, incomplete) = swarm.counts();
        let outcome = AnnounceOutcome {
            peers,
            complete,
            incomplete,
        };
        if swarm.peers.is_empty() {
            self.swarms.remove(&info_hash);
        }
        outcome
    }

    /// Counts of a swarm (zeros for an unknown one).
    pub fn scrape(&self, info_hash: &InfoHash) -> ScrapeStats {
        self.swarms
            .get(info_hash)
            .map_or_else(ScrapeStats::default, |s| {
                let (complete, incomplete) = s.counts();
                ScrapeStats {
                    complete,
                    downloaded: s.downloaded,
                    incomplete,
                }
            })
    }

    /// Forgets peers not heard from within `ttl` of `now`.
    pub fn expire(&mut self, now: Duration, ttl: Duration) {
        for swarm in self.swarms.values_mut() {
            let mut expired_seeds = 0;
            swarm.peers.retain(|_, p| {
                let keep = now.saturating_sub(p.last_seen) < ttl;
                if !keep && p.seed {
                    expired_seeds += 1;
                }
                keep
            });
            swarm.seeds -= expired_seeds;
        }
        // A swarm without peers is forgotten, download count and all: an
        // empty swarm must cost nothing, or anyone could fill the table.
        self.swarms.retain(|_, s| !s.peers.is_empty());
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

    fn want(numwant: Option<usize>) -> PeerRequest {
        PeerRequest {
            numwant,
            ipv6: None,
            start: 0,
        }
    }

    #[test]
    fn peers_meet_and_counts_follow_events() {
        let mut t = SwarmTable::default();
        let first = t.announce(H, addr(1), Event::Started, 0, want(None), T0);
        assert_eq!(
            first,
            AnnounceOutcome {
                peers: vec![],
                complete: 1,
                incomplete: 0
            }
        );
        let second = t.announce(H, addr(2), Event::Started, 100, want(None), T0);
        assert_eq!(second.peers, [addr(1)]);
        assert_eq!((second.complete, second.incomplete), (1, 1));
        t.announce(H, addr(2), Event::Completed, 0, want(None), T0);
        assert_eq!(
            t.scrape(&H),
            ScrapeStats {
                complete: 2,
                downloaded: 1,
                incomplete: 0
            }
        );
        // A repeated `completed` from a seed is not another download.
        t.announce(H, addr(2), Event::Completed, 0, want(None), T0);
        assert_eq!(t.scrape(&H).downloaded, 1);
        let gone = t.announce(H, addr(1), Event::Stopped, 0, want(None), T0);
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
            t.announce(H, addr(n), Event::Started, 1, want(None), T0);
        }
        assert_eq!(
            t.announce(H, addr(1), Event::None, 1, want(Some(10)), T0)
                .peers
                .len(),
            10
        );
        assert_eq!(
            t.announce(H, addr(1), Event::None, 1, want(None), T0)
                .peers
                .len(),
            DEFAULT_NUMWANT
        );
        assert_eq!(
            t.announce(H, addr(1), Event::None, 1, want(Some(100_000)), T0)
                .peers
                .len(),
            MAX_NUMWANT
        );
    }

    #[test]
    fn silent_peers_expire() {
        let mut t = SwarmTable::default();
        t.announce(H, addr(1), Event::Started, 0, want(None), T0);
        t.announce(
            H,
            addr(2),
            Event::Started,
            5,
            want(None),
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

#[cfg(test)]
mod limits {
    use super::*;

    #[test]
    fn a_full_table_answers_but_remembers_nothing_new() {
        let mut t = SwarmTable::with_max_swarms(1);
        let a = SocketAddr::from(([127, 0, 0, 1], 1));
        let req = PeerRequest {
            numwant: None,
            ipv6: None,
            start: 0,
        };
        t.announce(InfoHash([1; 20]), a, Event::Started, 0, req, Duration::ZERO);
        t.announce(InfoHash([2; 20]), a, Event::Started, 0, req, Duration::ZERO);
        assert_eq!(t.size(), (1, 1));
        // Emptied swarms are dropped at once, download counts and all.
        t.announce(InfoHash([1; 20]), a, Event::Stopped, 0, req, Duration::ZERO);
        assert_eq!(t.size(), (0, 0));
    }
}

#[cfg(test)]
mod fairness {
    use super::*;

    fn addr(n: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], n))
    }

    const H: InfoHash = InfoHash([3; 20]);

    fn req(numwant: usize, start: usize) -> PeerRequest {
        PeerRequest {
            numwant: Some(numwant),
            ipv6: None,
            start,
        }
    }

    #[test]
    fn seeds_are_told_only_about_leechers() {
        let mut t = SwarmTable::default();
        t.announce(H, addr(1), Event::Started, 0, req(50, 0), Duration::ZERO);
        t.announce(H, addr(2), Event::Started, 9, req(50, 0), Duration::ZERO);
        let seed = t.announce(H, addr(3), Event::Started, 0, req(50, 0), Duration::ZERO);
        assert_eq!(seed.peers, [addr(2)]);
        let leech = t.announce(H, addr(4), Event::Started, 9, req(50, 0), Duration::ZERO);
        assert_eq!(leech.peers.len(), 3);
    }

    #[test]
    fn different_announces_see_different_peers() {
        let mut t = SwarmTable::default();
        for n in 1..=100 {
            t.announce(H, addr(n), Event::Started, 9, req(0, 0), Duration::ZERO);
        }
        let a = t.announce(H, addr(1), Event::None, 9, req(5, 0), Duration::ZERO);
        let b = t.announce(H, addr(1), Event::None, 9, req(5, 50), Duration::ZERO);
        assert_ne!(a.peers, b.peers);
        let v6 = PeerRequest {
            numwant: None,
            ipv6: Some(true),
            start: 0,
        };
        assert!(t
            .announce(H, addr(1), Event::None, 9, v6, Duration::ZERO)
            .peers
            .is_empty());
    }

    #[test]
    fn completed_counts_once_and_only_with_the_data() {
        let mut t = SwarmTable::default();
        t.announce(H, addr(1), Event::Started, 9, req(0, 0), Duration::ZERO);
        t.announce(H, addr(2), Event::Started, 9, req(0, 0), Duration::ZERO);
        // Claiming completion without the data, repeatedly: no download.
        for _ in 0..3 {
            t.announce(H, addr(2), Event::Completed, 9, req(0, 0), Duration::ZERO);
        }
        assert_eq!(t.scrape(&H).downloaded, 0);
        t.announce(H, addr(1), Event::Completed, 0, req(0, 0), Duration::ZERO);
        t.announce(H, addr(1), Event::Completed, 0, req(0, 0), Duration::ZERO);
        assert_eq!(t.scrape(&H).downloaded, 1);
    }
}

#[cfg(test)]
mod counters {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// The kept seed count always equals a recount, whatever the order
        /// of announces, stops, completions and expiries.
        #[test]
        fn seed_count_matches_a_recount(
            ops in proptest::collection::vec((0u16..12, 0u8..4, any::<bool>(), 0u64..100), 1..200)
        ) {
            let mut t = SwarmTable::default();
            let h = InfoHash([5; 20]);
            let req = PeerRequest { numwant: None, ipv6: None, start: 0 };
            for (i, (port, event, seed, _)) in ops.iter().enumerate() {
                let now = Duration::from_secs(i as u64);
                if *event == 3 && i % 7 == 0 {
                    t.expire(now, Duration::from_secs(20));
                    continue;
                }
                let event = [Event::Started, Event::None, Event::Completed, Event::Stopped][*event as usize];
                let addr = SocketAddr::from(([127, 0, 0, 1], *port));
                t.announce(h, addr, event, if *seed { 0 } else { 9 }, req, now);
                if let Some(s) = t.swarms.get(&h) {
                    let recount = s.peers.values().filter(|p| p.seed).count() as u32;
                    prop_assert_eq!(s.seeds, recount);
                }
            }
        }
    }
}
