//! One iterative lookup (BEP 5, Kademlia): ask the closest nodes we know
//! about the target, learn closer ones from their replies, and stop when the
//! [`K`] closest we know of have all answered.
//!
//! At most [`ALPHA`] queries are in flight at once, and at most
//! [`MAX_QUERIES`] are sent in all, so a lookup costs a bounded number of
//! packets even when hostile nodes answer with endless fresh contacts. The
//! lookup only decides whom to ask; the node sends the queries and feeds
//! the answers back.

use std::collections::HashSet;
use std::net::SocketAddr;

use crate::proto::krpc::{NodeId, NodeInfo};

use super::routing::K;

/// Queries in flight per lookup.
pub const ALPHA: usize = 3;
/// Queries a lookup may send in all.
pub const MAX_QUERIES: usize = 96;
/// Candidates kept; the farthest not yet asked are dropped past this.
const MAX_CANDIDATES: usize = 64;

/// Where a candidate stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CandidateState {
    /// Not asked yet.
    Waiting,
    /// Asked; no answer yet.
    InFlight,
    /// Answered.
    Replied,
    /// Timed out or answered with an error.
    Failed,
}

/// A node the lookup knows of.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Its id; `None` for a bootstrap router whose id we do not know yet
    /// (these sort first, so they are asked first).
    pub id: Option<NodeId>,
    /// Its address.
    pub addr: SocketAddr,
    /// Where it stands.
    pub state: CandidateState,
    /// The `get_peers` token it gave us, for `announce_peer`.
    pub token: Option<Vec<u8>>,
    /// Its distance to the target (`None` sorts first), kept to sort by.
    key: Option<[u8; 20]>,
}

/// The state of one iterative lookup.
#[derive(Debug, Clone)]
pub struct Lookup {
    target: NodeId,
    /// Sorted by distance to the target, unknown ids first.
    candidates: Vec<Candidate>,
    seen: HashSet<SocketAddr>,
    in_flight: usize,
    sent: usize,
}

impl Lookup {
    /// A lookup of `target` starting from `seeds` (closest table nodes, or
    /// bootstrap routers with no id).
    pub fn new(
        target: NodeId,
        seeds: impl IntoIterator<Item = (Option<NodeId>, SocketAddr)>,
    ) -> Self {
        let mut l = Lookup {
            target,
            candidates: Vec::new(),
            seen: HashSet::new(),
            in_flight: 0,
            sent: 0,
        };
        for (id, addr) in seeds {
            l.add(id, addr);
        }
        l
    }

    /// The id looked for.
    pub fn target(&self) -> NodeId {
        self.target
    }

    fn key(&self, id: Option<NodeId>) -> Option<[u8; 20]> {
        id.map(|id| id.distance(&self.target))
    }

    fn add(&mut self, id: Option<NodeId>, addr: SocketAddr) {
        if !self.seen.insert(addr) {
            return;
        }
        if let Some(id) = id {
            if self.candidates.iter().any(|c| c.id == Some(id)) {
                return;
            }
        }
        let key = self.key(id);
        let pos = self.candidates.partition_point(|c| c.key <= key);
        self.candidates.insert(
            pos,
            Candidate {
                id,
                addr,
                state: CandidateState::Waiting,
                token: None,
                key,
            },
        );
        if self.candidates.len() > MAX_CANDIDATES {
            // Drop the farthest that is not being asked or has not answered.
            if let Some(pos) = self
                .candidates
                .iter()
                .rposition(|c| matches!(c.state, CandidateState::Waiting | CandidateState::Failed))
            {
                self.candidates.remove(pos);
            }
        }
    }

    /// Adds nodes learnt from a reply (the caller has filtered out bogus
    /// addresses and our own id).
    pub fn add_nodes(&mut self, nodes: &[NodeInfo]) {
        for n in nodes {
            self.add(Some(n.id), n.addr);
        }
    }

    /// The next node to ask, if the lookup wants one now; it counts as in
    /// flight from here.
    pub fn next_query(&mut self) -> Option<SocketAddr> {
        if self.in_flight >= ALPHA || self.sent >= MAX_QUERIES {
            return None;
        }
        let c = self
            .candidates
            .iter_mut()
            .filter(|c| c.state != CandidateState::Failed)
            .take(K)
            .find(|c| c.state == CandidateState::Waiting)?;
        c.state = CandidateState::InFlight;
        self.in_flight += 1;
        self.sent += 1;
        Some(c.addr)
    }

    fn find(&mut self, addr: SocketAddr) -> Option<usize> {
        self.candidates
            .iter()
            .position(|c| c.addr == addr && c.state == CandidateState::InFlight)
    }

    /// The node at `addr` answered with its `id` (and a token, to
    /// `get_peers`).
    pub fn on_reply(&mut self, addr: SocketAddr, id: NodeId, token: Option<Vec<u8>>) {
        let Some(pos) = self.find(addr) else {
            return;
        };
        self.in_flight -= 1;
        let mut c = self.candidates.remove(pos);
        if c.id.is_some_and(|known| known != id) {
            // It answered with another id than the one we were told: do not
            // let it sit where the old id put it.
            c.state = CandidateState::Failed;
        } else {
            c.state = CandidateState::Replied;
            c.token = token;
        }
        c.id = Some(id);
        c.key = self.key(c.id);
        let pos = self.candidates.partition_point(|x| x.key <= c.key);
        self.candidates.insert(pos, c);
    }

    /// The query to `addr` timed out or was answered with an error.
    pub fn on_failure(&mut self, addr: SocketAddr) {
        if let Some(pos) = self.find(addr) {
            self.in_flight -= 1;
            self.candidates[pos].state = CandidateState::Failed;
        }
    }

    /// Whether the lookup is over: the [`K`] closest live candidates have
    /// all answered, or nobody is left to ask and nothing is in flight.
    pub fn is_done(&self) -> bool {
        let mut top = self
            .candidates
            .iter()
            .filter(|c| c.state != CandidateState::Failed)
            .take(K)
            .peekable();
        if top.peek().is_some()
            && self
                .candidates
                .iter()
                .filter(|c| c.state != CandidateState::Failed)
                .take(K)
                .all(|c| c.state == CandidateState::Replied)
        {
            return true;
        }
        let waiting = top.any(|c| c.state == CandidateState::Waiting);
        self.in_flight == 0 && (!waiting || self.sent >= MAX_QUERIES)
    }

    /// Queries in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Nodes that answered.
    pub fn replied(&self) -> usize {
        self.candidates
            .iter()
            .filter(|c| c.state == CandidateState::Replied)
            .count()
    }

    /// The `count` closest nodes that answered with a token, closest first:
    /// where to `announce_peer`.
    pub fn closest_with_tokens(&self, count: usize) -> Vec<(NodeInfo, Vec<u8>)> {
        self.candidates
            .iter()
            .filter(|c| c.state == CandidateState::Replied)
            .filter_map(|c| {
                let id = c.id?;
                let token = c.token.clone()?;
                Some((NodeInfo { id, addr: c.addr }, token))
            })
            .take(count)
            .collect()
    }

    /// The `count` closest nodes that answered, closest first.
    pub fn closest_replied(&self, count: usize) -> Vec<NodeInfo> {
        self.candidates
            .iter()
            .filter(|c| c.state == CandidateState::Replied)
            .filter_map(|c| {
                Some(NodeInfo {
                    id: c.id?,
                    addr: c.addr,
                })
            })
            .take(count)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;

    fn node(first: u8, n: u8) -> NodeInfo {
        let mut id = [0u8; 20];
        id[0] = first;
        id[19] = n;
        NodeInfo {
            id: NodeId(id),
            addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(1, 2, first, n)), 1000),
        }
    }

    #[test]
    fn keeps_alpha_in_flight_and_asks_closest_first() {
        let seeds: Vec<_> = (1..=10u8).map(|i| node(i * 10, 0)).collect();
        let mut l = Lookup::new(
            NodeId::default(),
            seeds.iter().map(|n| (Some(n.id), n.addr)),
        );
        let asked: Vec<_> = std::iter::from_fn(|| l.next_query()).collect();
        assert_eq!(asked, vec![seeds[0].addr, seeds[1].addr, seeds[2].addr]);
        assert_eq!(l.in_flight(), ALPHA);
        // A reply with closer nodes: they are asked next.
        l.on_reply(seeds[0].addr, seeds[0].id, Some(b"tok".to_vec()));
        l.add_nodes(&[node(1, 1), node(2, 2)]);
        assert_eq!(l.next_query(), Some(node(1, 1).addr));
        assert_eq!(l.next_query(), None, "alpha reached");
        assert!(!l.is_done());
    }

    #[test]
    fn finishes_when_the_k_closest_replied() {
        let seeds: Vec<_> = (1..=12u8).map(|i| node(i, 0)).collect();
        let mut l = Lookup::new(
            NodeId::default(),
            seeds.iter().map(|n| (Some(n.id), n.addr)),
        );
        let mut replied = 0;
        while !l.is_done() {
            let batch: Vec<_> = std::iter::from_fn(|| l.next_query()).collect();
            assert!(!batch.is_empty());
            for addr in batch {
                let n = seeds.iter().find(|n| n.addr == addr).unwrap();
                // The second closest times out; the rest answer.
                if n.id == seeds[1].id {
                    l.on_failure(addr);
                } else {
                    l.on_reply(addr, n.id, Some(vec![n.id.0[0]]));
                    replied += 1;
                }
            }
        }
        // 8 closest live ones answered; the 12th was never needed.
        assert_eq!(replied, K);
        let targets = l.closest_with_tokens(K);
        assert_eq!(targets.len(), K);
        assert_eq!(targets[0].0.id, seeds[0].id);
        assert_eq!(targets[1].0.id, seeds[2].id);
    }

    #[test]
    fn ends_when_nobody_answers() {
        let mut l = Lookup::new(NodeId::default(), [(None, node(1, 1).addr)]);
        let a = l.next_query().unwrap();
        assert!(!l.is_done());
        l.on_failure(a);
        assert!(l.is_done());
        assert_eq!(l.replied(), 0);
    }

    #[test]
    fn query_count_is_bounded() {
        let mut l = Lookup::new(NodeId([0xff; 20]), [(None, node(0, 0).addr)]);
        let mut n = 0u32;
        while let Some(addr) = l.next_query() {
            n += 1;
            // Every reply offers fresh, ever closer nodes.
            let mut id = [0xffu8; 20];
            id[..4].copy_from_slice(&(u32::MAX - n).to_be_bytes());
            l.on_reply(addr, NodeId(id), None);
            let fresh: Vec<_> = (0..8u32)
                .map(|k| {
                    let mut id = [0xffu8; 20];
                    id[..4].copy_from_slice(&(u32::MAX - 1000 * n - k).to_be_bytes());
                    id[19] = 0xfe;
                    NodeInfo {
                        id: NodeId(id),
                        addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::from(n * 100 + k)), 1),
                    }
                })
                .collect();
            l.add_nodes(&fresh);
            assert!(n as usize <= MAX_QUERIES);
        }
        assert!(l.is_done());
    }
}
