//! The routing table (BEP 5): buckets of [`K`] nodes over the id space,
//! fine near our own id and coarse far from it, each with a replacement
//! cache of nodes waiting for a place.
//!
//! Layout: bucket `i` holds the nodes whose id shares exactly `i` leading
//! bits with ours; the last bucket holds everything sharing more. Only the
//! last bucket (the one our own id falls in) splits, so the table stays
//! at most 160 buckets and mostly about log2(network size).
//!
//! Who gets a place, and why:
//! - Node states (BEP 5): *good* replied to us in the last 15 minutes;
//!   *bad* failed [`MAX_FAILURES`] queries in a row (one, if it never
//!   replied); *questionable* otherwise. A full bucket gives a bad node's
//!   place to a newcomer at once; questionable ones are pinged
//!   ([`RoutingTable::nodes_to_ping`]) and lose their place when they fail,
//!   to the best node of the replacement cache.
//! - One node per IP address in the table, and at most
//!   [`MAX_PER_SUBNET`] per /24 (IPv4) or /64 (IPv6) in one bucket, so one
//!   host or one small network cannot fill the region around a key.
//!   Private and loopback addresses are exempt from the subnet rule (LANs).
//! - A node that shows up at a known address with a new id is dropped, and
//!   the new id is not taken in: honest nodes keep their id.
//! - BEP 42: when a bucket is full, a verified newcomer that has replied to
//!   us replaces an unverified node that is not good.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::proto::bencode::{self, DecodeError, OwnedValue};
use crate::proto::krpc::{parse_compact_nodes, write_compact_nodes, NodeId, NodeInfo};
use crate::rng;

use super::node_id;

/// Nodes per bucket.
pub const K: usize = 8;
/// A node that replied within this long is good.
pub const GOOD_FOR: Duration = Duration::from_secs(15 * 60);
/// Failed queries in a row that make a node that once replied bad.
pub const MAX_FAILURES: u8 = 3;
/// Nodes of one /24 (IPv4) or /64 (IPv6) allowed in one bucket.
pub const MAX_PER_SUBNET: usize = 2;
/// A bucket not touched for this long is refreshed with a lookup.
pub const REFRESH_AFTER: Duration = Duration::from_secs(15 * 60);
/// A questionable node is pinged at most once in this long.
const PING_EVERY: Duration = Duration::from_secs(60);

/// What a node is to us (BEP 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    /// Replied within [`GOOD_FOR`] and has not failed since.
    Good,
    /// Neither good nor bad: ping before trusting.
    Questionable,
    /// Failed repeatedly: the first to be replaced.
    Bad,
}

/// One node of the table.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Its id.
    pub id: NodeId,
    /// Its address.
    pub addr: SocketAddr,
    /// When it last replied to one of our queries (`None`: never).
    pub last_reply: Option<Duration>,
    /// When we last heard from it at all.
    pub last_seen: Duration,
    /// Queries failed in a row.
    pub failures: u8,
    /// Its id matches its address (BEP 42).
    pub verified: bool,
    /// When we last pinged it to check on it.
    pub last_ping: Option<Duration>,
}

impl Entry {
    /// The node's state at `now`.
    pub fn state(&self, now: Duration) -> NodeState {
        let bad_after = if self.last_reply.is_some() {
            MAX_FAILURES
        } else {
            1
        };
        if self.failures >= bad_after {
            NodeState::Bad
        } else if self.failures == 0
            && self
                .last_reply
                .is_some_and(|t| now.saturating_sub(t) < GOOD_FOR)
        {
            NodeState::Good
        } else {
            NodeState::Questionable
        }
    }

    /// The node's contact.
    pub fn info(&self) -> NodeInfo {
        NodeInfo {
            id: self.id,
            addr: self.addr,
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Bucket {
    nodes: Vec<Entry>,
    replacements: Vec<Entry>,
    /// Last time a node of the bucket replied or joined, or the bucket was
    /// refreshed.
    last_active: Duration,
}

/// How [`RoutingTable::insert`] dealt with a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// Took a place in a bucket.
    Added,
    /// Was in the table already; its times were updated.
    Updated,
    /// Waits in the replacement cache; the bucket's questionable nodes
    /// should be pinged.
    Cached,
    /// The address was known under another id: the old entry was dropped.
    IdChanged,
    /// Refused: our own id, an IP or id already in the table, or too many
    /// of its subnet in the bucket.
    Refused,
}

/// The routing table of one address family.
#[derive(Debug, Clone)]
pub struct RoutingTable {
    own: NodeId,
    buckets: Vec<Bucket>,
    /// IP of every node in a bucket (not the replacement caches), to keep
    /// one node per IP.
    by_ip: HashMap<IpAddr, NodeId>,
}

fn subnet(ip: IpAddr) -> Option<[u8; 8]> {
    if node_id::is_exempt(ip) {
        return None;
    }
    let mut key = [0u8; 8];
    match ip {
        IpAddr::V4(ip) => key[..3].copy_from_slice(&ip.octets()[..3]),
        IpAddr::V6(ip) => key.copy_from_slice(&ip.octets()[..8]),
    }
    Some(key)
}

impl RoutingTable {
    /// An empty table around our id `own`.
    pub fn new(own: NodeId) -> Self {
        RoutingTable {
            own,
            buckets: vec![Bucket::default()],
            by_ip: HashMap::new(),
        }
    }

    /// Our id.
    pub fn own_id(&self) -> NodeId {
        self.own
    }

    /// Nodes in buckets.
    pub fn len(&self) -> usize {
        self.buckets.iter().map(|b| b.nodes.len()).sum()
    }

    /// Whether no bucket holds a node.
    pub fn is_empty(&self) -> bool {
        self.by_ip.is_empty()
    }

    /// Nodes waiting in replacement caches.
    pub fn replacement_len(&self) -> usize {
        self.buckets.iter().map(|b| b.replacements.len()).sum()
    }

    /// Buckets so far.
    pub fn bucket_count(&self) -> usize {
        self.buckets.len()
    }

    fn index(&self, id: &NodeId) -> usize {
        self.own.common_prefix_len(id).min(self.buckets.len() - 1)
    }

    /// The entry with this id, if it is in a bucket.
    pub fn get(&self, id: &NodeId) -> Option<&Entry> {
        self.buckets[self.index(id)]
            .nodes
            .iter()
            .find(|e| e.id == *id)
    }

    fn get_mut(&mut self, id: &NodeId) -> Option<&mut Entry> {
        let i = self.index(id);
        self.buckets[i].nodes.iter_mut().find(|e| e.id == *id)
    }

    /// The entry at this address, if it is in a bucket.
    pub fn get_by_addr(&self, addr: SocketAddr) -> Option<&Entry> {
        let id = self.by_ip.get(&addr.ip())?;
        self.get(id).filter(|e| e.addr == addr)
    }

    /// Whether the node at `addr` is in a bucket and has replied to us.
    pub fn has_replied(&self, addr: SocketAddr) -> bool {
        self.get_by_addr(addr)
            .is_some_and(|e| e.last_reply.is_some())
    }

    /// Takes in a node we heard from at `now`: `replied` if it answered one
    /// of our queries (so it owns its address), otherwise it queried us or
    /// came from a saved table.
    pub fn insert(&mut self, now: Duration, node: NodeInfo, replied: bool) -> Inserted {
        if node.id == self.own || node.addr.port() == 0 {
            return Inserted::Refused;
        }
        let ip = node.addr.ip();
        if let Some(&known) = self.by_ip.get(&ip) {
            let entry = self.get_mut(&known).expect("by_ip matches the buckets");
            if entry.addr != node.addr {
                // Another port of a host we have: one per IP.
                return Inserted::Refused;
            }
            if entry.id != node.id {
                self.remove(&known);
                return Inserted::IdChanged;
            }
            entry.last_seen = now;
            if replied {
                entry.last_reply = Some(now);
                entry.failures = 0;
                let i = self.index(&node.id);
                self.buckets[i].last_active = now;
            }
            return Inserted::Updated;
        }
        if self.get(&node.id).is_some() {
            // The id is taken at another address; keep the one we know.
            return Inserted::Refused;
        }
        let entry = Entry {
            id: node.id,
            addr: node.addr,
            last_reply: replied.then_some(now),
            last_seen: now,
            failures: 0,
            verified: node_id::is_valid(&node.id, ip),
            last_ping: None,
        };
        loop {
            let last = self.buckets.len() - 1;
            let i = self.index(&node.id);
            let bucket = &mut self.buckets[i];
            if let Some(net) = subnet(ip) {
                let same = bucket
                    .nodes
                    .iter()
                    .filter(|e| subnet(e.addr.ip()) == Some(net))
                    .count();
                if same >= MAX_PER_SUBNET {
                    return Inserted::Refused;
                }
            }
            if bucket.nodes.len() < K {
                bucket.nodes.push(entry);
                bucket.last_active = now;
                bucket.replacements.retain(|r| r.addr.ip() != ip);
                self.by_ip.insert(ip, node.id);
                return Inserted::Added;
            }
            if let Some(pos) = bucket
                .nodes
                .iter()
                .position(|e| e.state(now) == NodeState::Bad)
            {
                let old = std::mem::replace(&mut bucket.nodes[pos], entry);
                bucket.last_active = now;
                bucket.replacements.retain(|r| r.addr.ip() != ip);
                self.by_ip.remove(&old.addr.ip());
                self.by_ip.insert(ip, node.id);
                return Inserted::Added;
            }
            if i == last && last + 1 < 160 {
                self.split();
                continue;
            }
            if replied && entry.verified {
                if let Some(pos) = bucket
                    .nodes
                    .iter()
                    .position(|e| !e.verified && e.state(now) != NodeState::Good)
                {
                    let old = std::mem::replace(&mut bucket.nodes[pos], entry);
                    bucket.last_active = now;
                    bucket.replacements.retain(|r| r.addr.ip() != ip);
                    self.by_ip.remove(&old.addr.ip());
                    self.by_ip.insert(ip, node.id);
                    return Inserted::Added;
                }
            }
            Self::cache(bucket, entry);
            return Inserted::Cached;
        }
    }

    /// Puts `entry` in the bucket's replacement cache, which keeps the
    /// [`K`] most recent, preferring nodes that replied.
    fn cache(bucket: &mut Bucket, entry: Entry) {
        if let Some(pos) = bucket
            .replacements
            .iter()
            .position(|r| r.addr.ip() == entry.addr.ip())
        {
            if bucket.replacements[pos].addr == entry.addr
                && bucket.replacements[pos].id != entry.id
            {
                // An id change in the cache is dropped as in the table.
                bucket.replacements.remove(pos);
                return;
            }
            let old = &bucket.replacements[pos];
            let merged = Entry {
                last_reply: entry.last_reply.or(old.last_reply),
                ..entry
            };
            bucket.replacements.remove(pos);
            bucket.replacements.push(merged);
            return;
        }
        if bucket.replacements.len() >= K {
            // Drop the oldest that never replied, else the oldest.
            let pos = bucket
                .replacements
                .iter()
                .position(|r| r.last_reply.is_none())
                .unwrap_or(0);
            bucket.replacements.remove(pos);
        }
        bucket.replacements.push(entry);
    }

    /// Splits the last bucket in two.
    fn split(&mut self) {
        let depth = self.buckets.len() - 1;
        let old = self.buckets.last_mut().expect("never empty");
        let (far, near): (Vec<Entry>, Vec<Entry>) = old
            .nodes
            .drain(..)
            .partition(|e| self.own.common_prefix_len(&e.id) == depth);
        let (far_r, near_r): (Vec<Entry>, Vec<Entry>) = old
            .replacements
            .drain(..)
            .partition(|e| self.own.common_prefix_len(&e.id) == depth);
        old.nodes = far;
        old.replacements = far_r;
        let last_active = old.last_active;
        self.buckets.push(Bucket {
            nodes: near,
            replacements: near_r,
            last_active,
        });
        for i in [depth, depth + 1] {
            self.fill_from_cache(i);
        }
    }

    /// Moves the best replacements into free places of bucket `i`.
    fn fill_from_cache(&mut self, i: usize) {
        while self.buckets[i].nodes.len() < K && !self.buckets[i].replacements.is_empty() {
            let b = &mut self.buckets[i];
            // Best: replied and verified, then replied, then most recent.
            let pos = (0..b.replacements.len())
                .max_by_key(|&j| {
                    let r = &b.replacements[j];
                    (
                        r.last_reply.is_some() && r.verified,
                        r.last_reply.is_some(),
                        r.last_seen,
                    )
                })
                .expect("not empty");
            let r = b.replacements.remove(pos);
            if self.by_ip.contains_key(&r.addr.ip()) {
                continue;
            }
            self.by_ip.insert(r.addr.ip(), r.id);
            self.buckets[i].nodes.push(r);
        }
    }

    /// Removes a node from its bucket (a replacement takes its place).
    pub fn remove(&mut self, id: &NodeId) -> bool {
        let i = self.index(id);
        let Some(pos) = self.buckets[i].nodes.iter().position(|e| e.id == *id) else {
            return false;
        };
        let e = self.buckets[i].nodes.remove(pos);
        self.by_ip.remove(&e.addr.ip());
        self.fill_from_cache(i);
        true
    }

    /// A query to the node at `addr` failed (timed out). A node that is bad
    /// now gives its place to a replacement, if one waits.
    pub fn failed(&mut self, addr: SocketAddr, now: Duration) {
        let Some(&id) = self.by_ip.get(&addr.ip()) else {
            return;
        };
        let i = self.index(&id);
        let Some(e) = self.buckets[i]
            .nodes
            .iter_mut()
            .find(|e| e.id == id && e.addr == addr)
        else {
            return;
        };
        e.failures = e.failures.saturating_add(1);
        let bad = e.state(now) == NodeState::Bad;
        // A node that never replied is no loss even with no replacement.
        let useless = e.last_reply.is_none();
        if bad && (useless || !self.buckets[i].replacements.is_empty()) {
            self.remove(&id);
        }
    }

    /// Up to `count` nodes closest to `target`, bad ones left out, closest
    /// first.
    pub fn closest(&self, target: &NodeId, count: usize, now: Duration) -> Vec<NodeInfo> {
        let mut all: Vec<([u8; 20], &Entry)> = self
            .buckets
            .iter()
            .flat_map(|b| b.nodes.iter())
            .filter(|e| e.state(now) != NodeState::Bad)
            .map(|e| (e.id.distance(target), e))
            .collect();
        all.sort_unstable_by_key(|(d, _)| *d);
        all.into_iter().take(count).map(|(_, e)| e.info()).collect()
    }

    /// Up to `max` questionable nodes not pinged in the last minute, marked
    /// as pinged now: the caller pings them so that bad ones are found and
    /// replaced.
    pub fn nodes_to_ping(&mut self, now: Duration, max: usize) -> Vec<NodeInfo> {
        let mut out = Vec::new();
        for i in 0..self.buckets.len() {
            self.pings_in_bucket(i, now, max, &mut out);
        }
        out
    }

    /// Like [`RoutingTable::nodes_to_ping`], in the bucket where `id` would
    /// go: when a newcomer waits for a place there.
    pub fn nodes_to_ping_near(&mut self, id: &NodeId, now: Duration, max: usize) -> Vec<NodeInfo> {
        let mut out = Vec::new();
        self.pings_in_bucket(self.index(id), now, max, &mut out);
        out
    }

    fn pings_in_bucket(&mut self, i: usize, now: Duration, max: usize, out: &mut Vec<NodeInfo>) {
        for e in self.buckets[i].nodes.iter_mut() {
            if out.len() >= max {
                return;
            }
            let due = e
                .last_ping
                .is_none_or(|t| now.saturating_sub(t) >= PING_EVERY);
            if due && e.state(now) == NodeState::Questionable {
                e.last_ping = Some(now);
                out.push(e.info());
            }
        }
    }

    /// Random targets in the buckets not active for [`REFRESH_AFTER`] (at
    /// most `max`), marked as refreshed now: the caller runs a `find_node`
    /// lookup for each.
    pub fn buckets_to_refresh(
        &mut self,
        now: Duration,
        max: usize,
        rng_state: &mut u64,
    ) -> Vec<NodeId> {
        let mut out = Vec::new();
        let last = self.buckets.len() - 1;
        for (i, b) in self.buckets.iter_mut().enumerate() {
            if out.len() >= max {
                break;
            }
            if b.last_active != Duration::ZERO && now.saturating_sub(b.last_active) < REFRESH_AFTER
            {
                continue;
            }
            b.last_active = now;
            out.push(random_in_bucket(&self.own, i, i == last, rng_state));
        }
        out
    }

    /// Makes every bucket due for a refresh (after joining the network).
    pub fn mark_all_stale(&mut self) {
        for b in &mut self.buckets {
            b.last_active = Duration::ZERO;
        }
    }

    /// Every node in a bucket.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.buckets.iter().flat_map(|b| b.nodes.iter())
    }
}

/// A random id that falls in bucket `i`: our first `i` bits, then (unless
/// it is the last bucket) bit `i` flipped, then random bits.
fn random_in_bucket(own: &NodeId, i: usize, last: bool, rng_state: &mut u64) -> NodeId {
    let mut id = [0u8; 20];
    for chunk in id.chunks_mut(8) {
        let bytes = rng::next(rng_state).to_be_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
    let mut id = NodeId(id);
    for bit in 0..i.min(160) {
        id = id.with_bit(bit, own.bit(bit));
    }
    if !last && i < 160 {
        id = id.with_bit(i, !own.bit(i));
    }
    id
}

/// A routing table as saved between runs: our id and the nodes that had
/// replied to us, so a restart keeps the id and needs no bootstrap router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedTable {
    /// Our node id.
    pub id: NodeId,
    /// Nodes worth trying first.
    pub nodes: Vec<NodeInfo>,
}

/// Why a saved table was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SavedTableError {
    /// Not bencode.
    #[error("saved DHT table: {0}")]
    Bencode(#[from] DecodeError),
    /// The `id` key is missing or not 20 bytes.
    #[error("saved DHT table: `id` is missing or not 20 bytes")]
    BadId,
}

impl SavedTable {
    /// The bencoded form: `{id, nodes, nodes6}` with compact node lists.
    pub fn encode(&self) -> Vec<u8> {
        let mut d = OwnedValue::dict();
        d.insert("id", OwnedValue::bytes(self.id.0));
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        write_compact_nodes(&mut v4, &self.nodes, false);
        write_compact_nodes(&mut v6, &self.nodes, true);
        d.insert("nodes", OwnedValue::Bytes(v4));
        d.insert("nodes6", OwnedValue::Bytes(v6));
        d.to_bytes()
    }

    /// Parses what [`SavedTable::encode`] wrote.
    pub fn decode(bytes: &[u8]) -> Result<Self, SavedTableError> {
        let root = bencode::decode(bytes)?;
        let id = root
            .get("id")
            .and_then(|v| v.as_bytes())
            .and_then(|b| <[u8; 20]>::try_from(b).ok())
            .ok_or(SavedTableError::BadId)?;
        let mut nodes = Vec::new();
        for (key, v6) in [("nodes", false), ("nodes6", true)] {
            if let Some(b) = root.get(key).and_then(|v| v.as_bytes()) {
                nodes.extend(parse_compact_nodes(b, v6));
            }
        }
        Ok(SavedTable {
            id: NodeId(id),
            nodes,
        })
    }
}

#[cfg(test)]
mod tests;
