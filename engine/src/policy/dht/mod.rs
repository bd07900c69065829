//! The mainline DHT node (BEP 5) as a pure state machine: datagrams and the
//! time come in, datagrams to send and events come out. The io layer only
//! moves datagrams between a UDP socket and [`Dht::receive`] /
//! [`Dht::poll_transmit`], and calls [`Dht::tick`] by [`Dht::next_tick`].
//!
//! One `Dht` serves one address family, as in libtorrent: an engine with
//! IPv4 and IPv6 runs two, each with its own socket, routing table, id and
//! storage (BEP 32). Time is a `Duration` since any fixed start, and all
//! randomness comes from a xorshift state seeded by the caller, so a test
//! (or a simulated network of thousands of nodes) replays exactly.
//!
//! What it does:
//! - answers `ping`, `find_node`, `get_peers` (tokens, stored peers or the
//!   closest nodes, BEP 33 scrape filters), `announce_peer` (token checked,
//!   `implied_port` honoured) and `sample_infohashes` (BEP 51); unknown
//!   methods get error 204. In read-only mode (BEP 43) it answers nothing
//!   and marks its queries `ro`; nodes that mark theirs are never put in
//!   our table.
//! - runs lookups: [`Dht::get_peers`], [`Dht::announce`] (`get_peers` then
//!   `announce_peer` to the closest nodes that gave a token) and
//!   [`Dht::find_node`], plus its own bootstrap (retried with back-off
//!   while the table is nearly empty) and bucket refreshes.
//! - defends itself: malformed or oversized datagrams are counted and
//!   dropped; replies only to our own live transactions, from the address
//!   we asked; queries limited per source and in all; replies to sources
//!   that have not proven their address kept within a small multiple of
//!   the query's size (no amplification); queries we send paced to
//!   [`Config::queries_per_second`].
//! - learns our external address from the `ip` key of replies (BEP 42)
//!   and reports a new majority as [`Event::ExternalAddress`], so the
//!   caller can derive a BEP 42 id ([`node_id::random_id_for_ip`]) and
//!   switch to it with [`Dht::set_id`].

pub mod limits;
pub mod lookup;
pub mod node_id;
pub mod routing;
pub mod schedule;
pub mod storage;
pub mod tokens;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::proto::info_hash::InfoHash;
use crate::proto::krpc::{
    Body, ErrorReply, KrpcError, Message, NodeId, NodeInfo, Query, QueryKind, Response, Samples,
    ERROR_METHOD_UNKNOWN, ERROR_PROTOCOL,
};
use crate::rng;

use limits::{Pacer, SourceLimiter};
use lookup::Lookup;
use node_id::AddressVotes;
use routing::{Inserted, RoutingTable, SavedTable, K};
use storage::{PeerStore, StorageLimits};
use tokens::Tokens;

/// Replies to a source that has not proven its address are at most this
/// many times the query's size, plus [`AMPLIFICATION_SLACK`] bytes.
pub const AMPLIFICATION: usize = 4;
/// See [`AMPLIFICATION`]: room for the fixed part of a reply.
pub const AMPLIFICATION_SLACK: usize = 256;
/// Peers in one `get_peers` reply over IPv4 (BEP 5 leaves it open; 100
/// compact peers keep the datagram under 1,000 bytes).
pub const MAX_VALUES_V4: usize = 100;
/// Peers in one `get_peers` reply over IPv6.
pub const MAX_VALUES_V6: usize = 50;
/// Info-hashes in one `sample_infohashes` reply.
pub const MAX_SAMPLES: usize = 20;
/// The `interval` of our `sample_infohashes` replies, in seconds.
pub const SAMPLE_INTERVAL: u32 = 300;
/// How often maintenance (pings, refreshes, bootstrap retries) runs.
const MAINTENANCE_EVERY: Duration = Duration::from_secs(5);
/// How often stored peers expire and idle rate-limit entries are dropped.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(60);
/// First wait before a failed bootstrap is tried again; it doubles up to
/// [`BOOTSTRAP_BACKOFF_MAX`].
const BOOTSTRAP_BACKOFF: Duration = Duration::from_secs(5);
const BOOTSTRAP_BACKOFF_MAX: Duration = Duration::from_secs(10 * 60);
/// Queries waiting for the pacer; past this new ones are dropped (and
/// counted), which lookups see as an immediate failure.
const MAX_QUEUED: usize = 512;
/// Addresses remembered as having answered us (for the amplification
/// limit); past this, ones not heard from in [`routing::GOOD_FOR`] are
/// forgotten, and if none is that old no new one is added.
const MAX_PROVEN: usize = 4096;
/// Bucket refresh lookups started per maintenance round.
const REFRESHES_PER_ROUND: usize = 2;
/// Questionable nodes pinged per maintenance round.
const PINGS_PER_ROUND: usize = 4;

/// How a [`Dht`] behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Serve IPv6 (BEP 32) rather than IPv4.
    pub ipv6: bool,
    /// BEP 43: query only, answer nothing, stay out of others' tables.
    pub read_only: bool,
    /// The `v` key of our messages (client and version, BEP 20 style).
    pub version: Option<[u8; 4]>,
    /// Queries we send per second at most; more wait in a queue.
    pub queries_per_second: u32,
    /// Queries we answer per second at most, over all sources.
    pub replies_per_second: u32,
    /// Queries answered per second per source (IPv4 address or IPv6 /64).
    pub source_queries_per_second: u32,
    /// Queries a source may send at once before its rate applies.
    pub source_burst: u32,
    /// Sources whose rate is tracked at once.
    pub max_sources: usize,
    /// A query unanswered for this long has failed.
    pub query_timeout: Duration,
    /// Bounds of the peers stored for others.
    pub storage: StorageLimits,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            ipv6: false,
            read_only: false,
            version: None,
            queries_per_second: 50,
            replies_per_second: 250,
            source_queries_per_second: 5,
            source_burst: 20,
            max_sources: 10_000,
            query_timeout: Duration::from_secs(5),
            storage: StorageLimits::default(),
        }
    }
}

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Where to.
    pub to: SocketAddr,
    /// The KRPC message.
    pub bytes: Vec<u8>,
}

/// Names one lookup started by the caller, in its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LookupId(pub u64);

/// What the node tells its caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Peers of a torrent from a `get_peers` or `announce` lookup, as they
    /// arrive (each peer once per lookup).
    Peers {
        /// The lookup.
        lookup: LookupId,
        /// The torrent.
        info_hash: InfoHash,
        /// New peers.
        peers: Vec<SocketAddr>,
    },
    /// A lookup finished its search (an `announce` then announces).
    LookupDone {
        /// The lookup.
        lookup: LookupId,
        /// What it looked for.
        target: NodeId,
        /// Nodes that answered it.
        nodes_replied: usize,
    },
    /// An `announce` finished.
    AnnounceDone {
        /// The lookup.
        lookup: LookupId,
        /// The torrent.
        info_hash: InfoHash,
        /// Nodes that accepted the announce.
        nodes_announced: usize,
    },
    /// The majority of recent replies names a new external address.
    ExternalAddress {
        /// The address.
        ip: IpAddr,
        /// Whether our id is already a BEP 42 id of it; if not, derive one
        /// and call [`Dht::set_id`].
        id_matches: bool,
    },
}

/// The node's counters, for metrics. Running totals unless marked as a
/// level.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DhtStats {
    /// Nodes in the routing table (a level).
    pub routing_nodes: u64,
    /// Nodes in replacement caches (a level).
    pub replacement_nodes: u64,
    /// Torrents with stored peers (a level).
    pub stored_torrents: u64,
    /// Stored peers (a level).
    pub stored_peers: u64,
    /// Lookups running (a level).
    pub lookups_running: u64,
    /// `ping` queries received.
    pub queries_in_ping: u64,
    /// `find_node` queries received.
    pub queries_in_find_node: u64,
    /// `get_peers` queries received.
    pub queries_in_get_peers: u64,
    /// `announce_peer` queries received.
    pub queries_in_announce_peer: u64,
    /// `sample_infohashes` queries received.
    pub queries_in_sample_infohashes: u64,
    /// Queries of unknown methods received.
    pub queries_in_other: u64,
    /// `ping` queries sent.
    pub queries_out_ping: u64,
    /// `find_node` queries sent.
    pub queries_out_find_node: u64,
    /// `get_peers` queries sent.
    pub queries_out_get_peers: u64,
    /// `announce_peer` queries sent.
    pub queries_out_announce_peer: u64,
    /// Replies received to our queries.
    pub replies_in: u64,
    /// Replies sent.
    pub replies_out: u64,
    /// Error replies received to our queries.
    pub errors_in: u64,
    /// Error replies sent.
    pub errors_out: u64,
    /// Our queries that got no answer in time.
    pub timeouts: u64,
    /// Replies with no live transaction of ours (late, forged or from the
    /// wrong address): dropped.
    pub unknown_transactions: u64,
    /// Lookups started (caller's and our own).
    pub lookups_started: u64,
    /// Lookups finished.
    pub lookups_done: u64,
    /// Announces finished.
    pub announces_done: u64,
    /// Peers found by lookups.
    pub peers_found: u64,
    /// Datagrams that are not KRPC: dropped.
    pub dropped_malformed: u64,
    /// Datagrams over the size limit: dropped unparsed.
    pub dropped_oversized: u64,
    /// Datagrams from the other address family or port 0: dropped.
    pub dropped_wrong_source: u64,
    /// Queries dropped by the per-source or total reply rate.
    pub rate_limited: u64,
    /// Queries of ours dropped because the send queue was full.
    pub queries_dropped: u64,
    /// Queries left unanswered because we are read-only.
    pub read_only_ignored: u64,
    /// `announce_peer` queries with a bad token.
    pub bad_tokens: u64,
    /// Announces refused by the storage caps or for port 0.
    pub announces_refused: u64,
    /// Nodes dropped for showing up with a new id at a known address.
    pub id_changes: u64,
}

#[derive(Debug, Clone, Copy)]
struct AnnounceArgs {
    port: u16,
    implied_port: bool,
    seed: bool,
}

#[derive(Debug)]
enum Purpose {
    /// `find_node`; `internal` ones (bootstrap, refresh) raise no events.
    FindNode { internal: bool },
    GetPeers {
        info_hash: InfoHash,
        announce: Option<AnnounceArgs>,
    },
}

#[derive(Debug)]
struct Running {
    lookup: Lookup,
    purpose: Purpose,
    peers_seen: HashSet<SocketAddr>,
    /// In the announce stage: announces sent and not answered yet.
    announcing: Option<usize>,
    announced: usize,
}

#[derive(Debug, Clone, Copy)]
enum Pending {
    Ping,
    Lookup(LookupId),
    Announce(LookupId),
}

#[derive(Debug)]
struct Transaction {
    to: SocketAddr,
    /// When it left the send queue; it times out only from then.
    sent: Option<Duration>,
    pending: Pending,
}

#[derive(Debug)]
struct Queued {
    tid: u16,
    to: SocketAddr,
    bytes: Vec<u8>,
}

/// A DHT node of one address family.
#[derive(Debug)]
pub struct Dht {
    config: Config,
    id: NodeId,
    rng: u64,
    table: RoutingTable,
    tokens: Tokens,
    storage: PeerStore,
    lookups: HashMap<LookupId, Running>,
    next_lookup: u64,
    transactions: HashMap<u16, Transaction>,
    queue: VecDeque<Queued>,
    out: VecDeque<Transmit>,
    events: VecDeque<Event>,
    query_pacer: Pacer,
    reply_pacer: Pacer,
    sources: SourceLimiter,
    votes: AddressVotes,
    /// IPs that answered one of our queries, and when: they receive at
    /// that address, so replies to them cannot be aimed at a victim.
    proven: HashMap<IpAddr, Duration>,
    routers: Vec<SocketAddr>,
    bootstrap_lookup: Option<LookupId>,
    bootstrap_at: Duration,
    bootstrap_backoff: Duration,
    next_maintenance: Duration,
    next_housekeeping: Duration,
    stats: DhtStats,
}

fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// Whether a node's address can be real: no port 0, no unspecified,
/// multicast or broadcast address.
fn plausible(addr: SocketAddr) -> bool {
    let ip_ok = match addr.ip() {
        IpAddr::V4(ip) => !ip.is_unspecified() && !ip.is_multicast() && !ip.is_broadcast(),
        IpAddr::V6(ip) => !ip.is_unspecified() && !ip.is_multicast(),
    };
    ip_ok && addr.port() != 0
}

/// Encodes `msg`, trimming what a reply can spare (peers, then filters,
/// samples and nodes) until it fits in `limit` bytes.
fn encode_within(msg: &mut Message, limit: usize) -> Vec<u8> {
    loop {
        let bytes = msg.to_bytes();
        if bytes.len() <= limit {
            return bytes;
        }
        let over = bytes.len() - limit;
        let Body::Response(r) = &mut msg.body else {
            return bytes;
        };
        if let Some(first) = r.values.first() {
            // "6:" + 6 bytes, or "18:" + 18.
            let each = if first.is_ipv4() { 8 } else { 21 };
            let drop = over.div_ceil(each).min(r.values.len());
            r.values.truncate(r.values.len() - drop);
        } else if r.scrape.is_some() {
            r.scrape = None;
        } else if let Some(s) = r.samples.as_mut().filter(|s| !s.hashes.is_empty()) {
            let drop = over.div_ceil(20).min(s.hashes.len());
            s.hashes.truncate(s.hashes.len() - drop);
        } else if !r.nodes6.is_empty() {
            r.nodes6.pop();
        } else if !r.nodes.is_empty() {
            r.nodes.pop();
        } else {
            return bytes;
        }
    }
}

impl Dht {
    /// A node with id `id` (keep it across restarts: see [`Dht::save`]),
    /// an empty table, at time `now`, with randomness from `rng_seed`.
    pub fn new(config: Config, id: NodeId, now: Duration, rng_seed: u64) -> Self {
        let mut rng_state = rng_seed | 1;
        let tokens = Tokens::new(now, &mut rng_state);
        Dht {
            query_pacer: Pacer::new(
                config.queries_per_second,
                config.queries_per_second.max(1),
                now,
            ),
            reply_pacer: Pacer::new(
                config.replies_per_second,
                config.replies_per_second.max(1),
                now,
            ),
            sources: SourceLimiter::new(
                config.source_queries_per_second,
                config.source_burst,
                config.max_sources,
                now,
            ),
            storage: PeerStore::new(config.storage),
            table: RoutingTable::new(id),
            config,
            id,
            rng: rng_state,
            tokens,
            lookups: HashMap::new(),
            next_lookup: 0,
            transactions: HashMap::new(),
            queue: VecDeque::new(),
            out: VecDeque::new(),
            events: VecDeque::new(),
            votes: AddressVotes::default(),
            proven: HashMap::new(),
            routers: Vec::new(),
            bootstrap_lookup: None,
            bootstrap_at: now,
            bootstrap_backoff: BOOTSTRAP_BACKOFF,
            next_maintenance: now,
            next_housekeeping: now + HOUSEKEEPING_EVERY,
            stats: DhtStats::default(),
        }
    }

    /// A node restored from [`Dht::save`]: the same id, and the saved nodes
    /// in the table as not yet confirmed (they are pinged and looked up
    /// through; the dead ones drop out). Call [`Dht::bootstrap`] after it,
    /// with the routers, in case none of them answers.
    pub fn restore(config: Config, saved: &SavedTable, now: Duration, rng_seed: u64) -> Self {
        let mut dht = Dht::new(config, saved.id, now, rng_seed);
        for n in &saved.nodes {
            if dht.usable(n) {
                dht.table.insert(now, *n, false);
            }
        }
        dht
    }

    /// The routing table in its saved form (bencoded): our id and the nodes
    /// that have replied to us. Small (a few KiB); save it rarely (on exit
    /// and every hour or so), not on every change.
    pub fn save(&self) -> Vec<u8> {
        SavedTable {
            id: self.id,
            nodes: self
                .table
                .entries()
                .filter(|e| e.last_reply.is_some())
                .map(routing::Entry::info)
                .collect(),
        }
        .encode()
    }

    /// The torrents whose peers this node stores for others.
    pub fn stored_info_hashes(&self) -> Vec<InfoHash> {
        self.storage.info_hashes().copied().collect()
    }

    /// Our node id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The routing table, for inspection.
    pub fn routing_table(&self) -> &RoutingTable {
        &self.table
    }

    /// Our external address, once replies agree on one.
    pub fn external_address(&self) -> Option<IpAddr> {
        self.votes.current()
    }

    /// Lookups running.
    pub fn lookups_running(&self) -> usize {
        self.lookups.len()
    }

    /// Changes our id (after [`Event::ExternalAddress`]): the table is
    /// rebuilt around it, keeping the nodes that still fit.
    pub fn set_id(&mut self, now: Duration, id: NodeId) {
        let old = std::mem::replace(&mut self.table, RoutingTable::new(id));
        self.id = id;
        for e in old.entries() {
            let inserted = self
                .table
                .insert(e.last_seen, e.info(), e.last_reply.is_some());
            if inserted == Inserted::Added {
                if let Some(t) = e.last_reply {
                    // Keep its reply time, not the time of the move.
                    self.table.insert(t, e.info(), true);
                }
            }
        }
        self.start_bootstrap(now);
    }

    /// Joins the network through `routers` (bootstrap nodes such as
    /// router.bittorrent.com:6881, resolved by the caller to this family's
    /// addresses). They are kept for retries while the table is nearly
    /// empty, and never put in the table.
    pub fn bootstrap(&mut self, now: Duration, routers: &[SocketAddr]) {
        self.routers = routers
            .iter()
            .map(|a| canonical(*a))
            .filter(|a| self.family_ok(*a))
            .collect();
        self.start_bootstrap(now);
        self.flush(now);
    }

    /// Pings a node we heard of elsewhere (a peer's BEP 5 `port` message);
    /// it joins the table if it answers.
    pub fn add_node(&mut self, now: Duration, addr: SocketAddr) {
        let addr = canonical(addr);
        if self.family_ok(addr) && plausible(addr) {
            self.send_query(addr, QueryKind::Ping, Pending::Ping);
            self.flush(now);
        }
    }

    /// Starts a `get_peers` lookup; peers arrive as [`Event::Peers`].
    pub fn get_peers(&mut self, now: Duration, info_hash: InfoHash) -> LookupId {
        self.start_lookup(
            now,
            info_hash.into(),
            Purpose::GetPeers {
                info_hash,
                announce: None,
            },
        )
    }

    /// Starts a `get_peers` lookup that then announces us as a peer on TCP
    /// `port` (or on the port our DHT packets come from, if `implied_port`,
    /// for uTP behind NAT) to the closest nodes that gave a token; ends with
    /// [`Event::AnnounceDone`].
    pub fn announce(
        &mut self,
        now: Duration,
        info_hash: InfoHash,
        port: u16,
        implied_port: bool,
        seed: bool,
    ) -> LookupId {
        self.start_lookup(
            now,
            info_hash.into(),
            Purpose::GetPeers {
                info_hash,
                announce: Some(AnnounceArgs {
                    port,
                    implied_port,
                    seed,
                }),
            },
        )
    }

    /// Starts a `find_node` lookup of `target`.
    pub fn find_node(&mut self, now: Duration, target: NodeId) -> LookupId {
        self.start_lookup(now, target, Purpose::FindNode { internal: false })
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The counters now.
    pub fn stats(&self) -> DhtStats {
        DhtStats {
            routing_nodes: self.table.len() as u64,
            replacement_nodes: self.table.replacement_len() as u64,
            stored_torrents: self.storage.torrent_count() as u64,
            stored_peers: self.storage.peer_count() as u64,
            lookups_running: self.lookups.len() as u64,
            ..self.stats
        }
    }

    /// When [`Dht::tick`] next has work: a query times out, the pacer lets
    /// a queued query go, or maintenance is due.
    pub fn next_tick(&self, now: Duration) -> Duration {
        let mut at = self.next_maintenance.min(self.tokens.next_rotation());
        if !self.queue.is_empty() {
            at = at.min(self.query_pacer.next_available(now));
        }
        for t in self.transactions.values() {
            if let Some(sent) = t.sent {
                at = at.min(sent + self.config.query_timeout);
            }
        }
        at.max(now)
    }

    /// Advances timers: query timeouts, the pacer's queue, token rotation,
    /// maintenance (pings of questionable nodes, bucket refreshes, bootstrap
    /// retries) and storage expiry.
    pub fn tick(&mut self, now: Duration) {
        self.tokens.rotate_if_due(now, &mut self.rng);
        self.expire_transactions(now);
        if now >= self.next_housekeeping {
            self.next_housekeeping = now + HOUSEKEEPING_EVERY;
            self.storage.expire(now);
            self.sources.prune(now);
        }
        if now >= self.next_maintenance {
            self.next_maintenance = now + MAINTENANCE_EVERY;
            self.maintain(now);
        }
        self.flush(now);
    }

    /// Handles a datagram from `from`.
    pub fn receive(&mut self, now: Duration, from: SocketAddr, bytes: &[u8]) {
        let from = canonical(from);
        if !self.family_ok(from) || from.port() == 0 {
            self.stats.dropped_wrong_source += 1;
            return;
        }
        let msg = match Message::decode(bytes) {
            Ok(m) => m,
            Err(KrpcError::TooLarge { .. }) => {
                self.stats.dropped_oversized += 1;
                return;
            }
            Err(_) => {
                self.stats.dropped_malformed += 1;
                return;
            }
        };
        match msg.body {
            Body::Query(q) => {
                self.on_query(now, from, bytes.len(), msg.transaction, msg.read_only, q)
            }
            Body::Response(r) => self.on_response(now, from, &msg.transaction, msg.ip, r),
            Body::Error(e) => self.on_error(from, &msg.transaction, e),
        }
        self.flush(now);
    }

    fn family_ok(&self, addr: SocketAddr) -> bool {
        addr.is_ipv6() == self.config.ipv6
    }

    /// Whether a node from a reply or a save file is worth contacting.
    fn usable(&self, n: &NodeInfo) -> bool {
        n.id != self.id && self.family_ok(n.addr) && plausible(n.addr)
    }

    fn max_reply_len(&self) -> usize {
        // IPv6's minimum MTU (1,280) less headers; 1,400 fits Ethernet with
        // room for tunnels.
        if self.config.ipv6 {
            1200
        } else {
            1400
        }
    }

    fn on_query(
        &mut self,
        now: Duration,
        from: SocketAddr,
        query_len: usize,
        transaction: Vec<u8>,
        read_only: bool,
        q: Query,
    ) {
        if self.config.read_only {
            self.stats.read_only_ignored += 1;
            return;
        }
        if !self.sources.allow(from.ip(), now) || !self.reply_pacer.try_take(now) {
            self.stats.rate_limited += 1;
            return;
        }
        let s = &mut self.stats;
        match q.kind {
            QueryKind::Ping => s.queries_in_ping += 1,
            QueryKind::FindNode { .. } => s.queries_in_find_node += 1,
            QueryKind::GetPeers { .. } => s.queries_in_get_peers += 1,
            QueryKind::AnnouncePeer { .. } => s.queries_in_announce_peer += 1,
            QueryKind::SampleInfohashes { .. } => s.queries_in_sample_infohashes += 1,
            QueryKind::Other { .. } => s.queries_in_other += 1,
        }
        if !read_only && q.id != self.id {
            self.note_node(
                now,
                NodeInfo {
                    id: q.id,
                    addr: from,
                },
                false,
            );
        }
        let body = self.answer(now, from, q);
        let mut msg = Message {
            transaction,
            version: self.config.version.map(|v| v.to_vec()),
            ip: Some(from),
            read_only: false,
            body,
        };
        let limit = if self.proven.contains_key(&from.ip()) {
            self.max_reply_len()
        } else {
            (AMPLIFICATION * query_len + AMPLIFICATION_SLACK).min(self.max_reply_len())
        };
        let bytes = encode_within(&mut msg, limit);
        match msg.body {
            Body::Error(_) => self.stats.errors_out += 1,
            _ => self.stats.replies_out += 1,
        }
        self.out.push_back(Transmit { to: from, bytes });
    }

    fn closest_for_reply(&self, target: &NodeId, now: Duration) -> (Vec<NodeInfo>, Vec<NodeInfo>) {
        // Only our own family: the other family's table lives in the other
        // `Dht` (see the module docs).
        let nodes = self.table.closest(target, K, now);
        if self.config.ipv6 {
            (Vec::new(), nodes)
        } else {
            (nodes, Vec::new())
        }
    }

    fn answer(&mut self, now: Duration, from: SocketAddr, q: Query) -> Body {
        let error = |code, message: &str| {
            Body::Error(ErrorReply {
                code,
                message: message.to_owned(),
            })
        };
        let mut r = Response::with_id(self.id);
        match q.kind {
            QueryKind::Ping => {}
            QueryKind::FindNode { target } => {
                (r.nodes, r.nodes6) = self.closest_for_reply(&target, now);
            }
            QueryKind::GetPeers {
                info_hash,
                noseed,
                scrape,
            } => {
                r.token = Some(self.tokens.token(from.ip()).to_vec());
                let max = if self.config.ipv6 {
                    MAX_VALUES_V6
                } else {
                    MAX_VALUES_V4
                };
                r.values = self.storage.peers(&info_hash, max, noseed, &mut self.rng);
                if r.values.is_empty() {
                    (r.nodes, r.nodes6) = self.closest_for_reply(&info_hash.into(), now);
                }
                if scrape {
                    r.scrape = self.storage.scrape(&info_hash).map(Box::new);
                }
            }
            QueryKind::AnnouncePeer {
                info_hash,
                port,
                implied_port,
                token,
                seed,
            } => {
                if !self.tokens.check(from.ip(), &token) {
                    self.stats.bad_tokens += 1;
                    return error(ERROR_PROTOCOL, "bad token");
                }
                let port = if implied_port { from.port() } else { port };
                let peer = SocketAddr::new(from.ip(), port);
                if let Err(e) = self.storage.announce(now, info_hash, peer, seed) {
                    self.stats.announces_refused += 1;
                    return error(ERROR_PROTOCOL, &e.to_string());
                }
            }
            QueryKind::SampleInfohashes { target } => {
                (r.nodes, r.nodes6) = self.closest_for_reply(&target, now);
                r.samples = Some(Samples {
                    interval: SAMPLE_INTERVAL,
                    num: self.storage.torrent_count() as u64,
                    hashes: self.storage.sample(MAX_SAMPLES, &mut self.rng),
                });
            }
            QueryKind::Other { .. } => return error(ERROR_METHOD_UNKNOWN, "method unknown"),
        }
        Body::Response(r)
    }

    /// Puts a node we heard from in the table (if it fits) and pings the
    /// questionable nodes of its bucket when it had to wait.
    fn note_node(&mut self, now: Duration, node: NodeInfo, replied: bool) {
        if self.routers.contains(&node.addr) || !self.usable(&node) {
            return;
        }
        match self.table.insert(now, node, replied) {
            Inserted::IdChanged => self.stats.id_changes += 1,
            Inserted::Cached => {
                for n in self
                    .table
                    .nodes_to_ping_near(&node.id, now, PINGS_PER_ROUND)
                {
                    self.send_query(n.addr, QueryKind::Ping, Pending::Ping);
                }
            }
            _ => {}
        }
    }

    /// Finds and removes our transaction for a reply from `from`.
    fn take_transaction(&mut self, from: SocketAddr, t: &[u8]) -> Option<Transaction> {
        let tid = u16::from_be_bytes(<[u8; 2]>::try_from(t).ok()?);
        let tx = self.transactions.get(&tid)?;
        if tx.to != from || tx.sent.is_none() {
            return None;
        }
        self.transactions.remove(&tid)
    }

    fn on_response(
        &mut self,
        now: Duration,
        from: SocketAddr,
        t: &[u8],
        ip: Option<SocketAddr>,
        r: Response,
    ) {
        let Some(tx) = self.take_transaction(from, t) else {
            self.stats.unknown_transactions += 1;
            return;
        };
        self.stats.replies_in += 1;
        self.prove(now, from.ip());
        self.note_node(
            now,
            NodeInfo {
                id: r.id,
                addr: from,
            },
            true,
        );
        if let Some(seen) = ip.map(|a| a.ip().to_canonical()) {
            if seen.is_ipv6() == self.config.ipv6 {
                if let Some(new) = self.votes.vote(from.ip(), seen) {
                    self.events.push_back(Event::ExternalAddress {
                        ip: new,
                        id_matches: node_id::is_valid(&self.id, new),
                    });
                }
            }
        }
        match tx.pending {
            Pending::Ping => {}
            Pending::Lookup(lid) => {
                let nodes: Vec<NodeInfo> = if self.config.ipv6 {
                    &r.nodes6
                } else {
                    &r.nodes
                }
                .iter()
                .filter(|n| self.usable(n))
                .copied()
                .collect();
                let peers: Vec<SocketAddr> =
                    r.values.iter().copied().filter(|p| plausible(*p)).collect();
                let Some(run) = self.lookups.get_mut(&lid) else {
                    return;
                };
                run.lookup.on_reply(from, r.id, r.token);
                run.lookup.add_nodes(&nodes);
                if let Purpose::GetPeers { info_hash, .. } = run.purpose {
                    let fresh: Vec<SocketAddr> = peers
                        .into_iter()
                        .filter(|p| run.peers_seen.insert(*p))
                        .collect();
                    if !fresh.is_empty() {
                        self.stats.peers_found += fresh.len() as u64;
                        self.events.push_back(Event::Peers {
                            lookup: lid,
                            info_hash,
                            peers: fresh,
                        });
                    }
                }
                self.advance(lid);
            }
            Pending::Announce(lid) => self.announce_answered(lid, true),
        }
    }

    /// Remembers that `ip` answered us at `now`.
    fn prove(&mut self, now: Duration, ip: IpAddr) {
        if self.proven.len() >= MAX_PROVEN && !self.proven.contains_key(&ip) {
            self.proven
                .retain(|_, t| now.saturating_sub(*t) < routing::GOOD_FOR);
            if self.proven.len() >= MAX_PROVEN {
                return;
            }
        }
        self.proven.insert(ip, now);
    }

    fn on_error(&mut self, from: SocketAddr, t: &[u8], _e: ErrorReply) {
        let Some(tx) = self.take_transaction(from, t) else {
            self.stats.unknown_transactions += 1;
            return;
        };
        self.stats.errors_in += 1;
        // It answered, so it is alive; but it is no help to this lookup.
        match tx.pending {
            Pending::Ping => {}
            Pending::Lookup(lid) => {
                if let Some(run) = self.lookups.get_mut(&lid) {
                    run.lookup.on_failure(from);
                    self.advance(lid);
                }
            }
            Pending::Announce(lid) => self.announce_answered(lid, false),
        }
    }

    fn expire_transactions(&mut self, now: Duration) {
        let timeout = self.config.query_timeout;
        let mut expired: Vec<(Duration, u16)> = self
            .transactions
            .iter()
            .filter_map(|(tid, t)| t.sent.filter(|s| now >= *s + timeout).map(|s| (s, *tid)))
            .collect();
        // In sending order, not the map's: runs replay exactly.
        expired.sort_unstable();
        for (_, tid) in expired {
            let Some(tx) = self.transactions.remove(&tid) else {
                continue;
            };
            self.stats.timeouts += 1;
            self.table.failed(tx.to, now);
            match tx.pending {
                Pending::Ping => {}
                Pending::Lookup(lid) => {
                    if let Some(run) = self.lookups.get_mut(&lid) {
                        run.lookup.on_failure(tx.to);
                        self.advance(lid);
                    }
                }
                Pending::Announce(lid) => self.announce_answered(lid, false),
            }
        }
    }

    fn maintain(&mut self, now: Duration) {
        for n in self.table.nodes_to_ping(now, PINGS_PER_ROUND) {
            self.send_query(n.addr, QueryKind::Ping, Pending::Ping);
        }
        if self.table.len() >= K {
            self.bootstrap_backoff = BOOTSTRAP_BACKOFF;
            for target in self
                .table
                .buckets_to_refresh(now, REFRESHES_PER_ROUND, &mut self.rng)
            {
                self.start_lookup(now, target, Purpose::FindNode { internal: true });
            }
        } else if self.bootstrap_lookup.is_none() && now >= self.bootstrap_at {
            self.start_bootstrap(now);
        }
    }

    fn start_bootstrap(&mut self, now: Duration) {
        if self.routers.is_empty() && self.table.is_empty() {
            return;
        }
        self.bootstrap_at = now + self.bootstrap_backoff;
        self.bootstrap_backoff = (self.bootstrap_backoff * 2).min(BOOTSTRAP_BACKOFF_MAX);
        let lid = self.start_lookup(now, self.id, Purpose::FindNode { internal: true });
        self.bootstrap_lookup = Some(lid);
    }

    fn start_lookup(&mut self, now: Duration, target: NodeId, purpose: Purpose) -> LookupId {
        let lid = LookupId(self.next_lookup);
        self.next_lookup += 1;
        self.stats.lookups_started += 1;
        let mut seeds: Vec<(Option<NodeId>, SocketAddr)> = self
            .table
            .closest(&target, K * 2, now)
            .into_iter()
            .map(|n| (Some(n.id), n.addr))
            .collect();
        if seeds.len() < K {
            seeds.extend(self.routers.iter().map(|a| (None, *a)));
        }
        // Peers announced to this very node count too (the only node two
        // peers may share, e.g. when one bootstrapped from the other).
        let local = match &purpose {
            Purpose::GetPeers { info_hash, .. } => {
                self.storage
                    .peers(info_hash, MAX_VALUES_V4, false, &mut self.rng)
            }
            Purpose::FindNode { .. } => Vec::new(),
        };
        if let (Purpose::GetPeers { info_hash, .. }, false) = (&purpose, local.is_empty()) {
            self.stats.peers_found += local.len() as u64;
            self.events.push_back(Event::Peers {
                lookup: lid,
                info_hash: *info_hash,
                peers: local.clone(),
            });
        }
        self.lookups.insert(
            lid,
            Running {
                lookup: Lookup::new(target, seeds),
                purpose,
                peers_seen: local.into_iter().collect(),
                announcing: None,
                announced: 0,
            },
        );
        self.advance(lid);
        self.flush(now);
        lid
    }

    /// Sends what the lookup wants sent, and finishes it when it is done.
    fn advance(&mut self, lid: LookupId) {
        loop {
            let Some(run) = self.lookups.get_mut(&lid) else {
                return;
            };
            if run.announcing.is_some() {
                return;
            }
            let Some(addr) = run.lookup.next_query() else {
                break;
            };
            let kind = match run.purpose {
                Purpose::FindNode { .. } => QueryKind::FindNode {
                    target: run.lookup.target(),
                },
                Purpose::GetPeers { info_hash, .. } => QueryKind::GetPeers {
                    info_hash,
                    noseed: false,
                    scrape: false,
                },
            };
            if !self.send_query(addr, kind, Pending::Lookup(lid)) {
                if let Some(run) = self.lookups.get_mut(&lid) {
                    run.lookup.on_failure(addr);
                }
            }
        }
        if self.lookups.get(&lid).is_some_and(|r| r.lookup.is_done()) {
            self.finish_lookup(lid);
        }
    }

    fn finish_lookup(&mut self, lid: LookupId) {
        let Some(run) = self.lookups.get_mut(&lid) else {
            return;
        };
        self.stats.lookups_done += 1;
        if self.bootstrap_lookup == Some(lid) {
            self.bootstrap_lookup = None;
            // Kademlia's join: having found our neighbours, refresh every
            // bucket farther out (a few per maintenance round).
            self.table.mark_all_stale();
        }
        let internal = matches!(run.purpose, Purpose::FindNode { internal: true });
        if !internal {
            self.events.push_back(Event::LookupDone {
                lookup: lid,
                target: run.lookup.target(),
                nodes_replied: run.lookup.replied(),
            });
        }
        let Purpose::GetPeers {
            info_hash,
            announce: Some(args),
        } = run.purpose
        else {
            self.lookups.remove(&lid);
            return;
        };
        let targets = run.lookup.closest_with_tokens(K);
        run.announcing = Some(0);
        let mut sent = 0;
        for (node, token) in targets {
            let kind = QueryKind::AnnouncePeer {
                info_hash,
                port: args.port,
                implied_port: args.implied_port,
                token,
                seed: args.seed,
            };
            if self.send_query(node.addr, kind, Pending::Announce(lid)) {
                sent += 1;
            }
        }
        if let Some(run) = self.lookups.get_mut(&lid) {
            run.announcing = Some(sent);
        }
        if sent == 0 {
            self.finish_announce(lid);
        }
    }

    fn announce_answered(&mut self, lid: LookupId, accepted: bool) {
        let Some(run) = self.lookups.get_mut(&lid) else {
            return;
        };
        let Some(pending) = run.announcing.as_mut() else {
            return;
        };
        *pending = pending.saturating_sub(1);
        if accepted {
            run.announced += 1;
        }
        if *pending == 0 {
            self.finish_announce(lid);
        }
    }

    fn finish_announce(&mut self, lid: LookupId) {
        let Some(run) = self.lookups.remove(&lid) else {
            return;
        };
        if let Purpose::GetPeers { info_hash, .. } = run.purpose {
            self.stats.announces_done += 1;
            self.events.push_back(Event::AnnounceDone {
                lookup: lid,
                info_hash,
                nodes_announced: run.announced,
            });
        }
    }

    /// Queues a query; `false` (and counted) if the queue is full or no
    /// transaction id is free.
    fn send_query(&mut self, to: SocketAddr, kind: QueryKind, pending: Pending) -> bool {
        if self.queue.len() >= MAX_QUEUED {
            self.stats.queries_dropped += 1;
            return false;
        }
        let Some(tid) = (0..16)
            .map(|_| rng::next(&mut self.rng) as u16)
            .find(|t| !self.transactions.contains_key(t))
        else {
            self.stats.queries_dropped += 1;
            return false;
        };
        let s = &mut self.stats;
        match kind {
            QueryKind::Ping => s.queries_out_ping += 1,
            QueryKind::FindNode { .. } => s.queries_out_find_node += 1,
            QueryKind::GetPeers { .. } => s.queries_out_get_peers += 1,
            QueryKind::AnnouncePeer { .. } => s.queries_out_announce_peer += 1,
            _ => {}
        }
        let msg = Message {
            transaction: tid.to_be_bytes().to_vec(),
            version: self.config.version.map(|v| v.to_vec()),
            ip: None,
            read_only: self.config.read_only,
            body: Body::Query(Query {
                id: self.id,
                kind,
                want: Default::default(),
            }),
        };
        self.transactions.insert(
            tid,
            Transaction {
                to,
                sent: None,
                pending,
            },
        );
        self.queue.push_back(Queued {
            tid,
            to,
            bytes: msg.to_bytes(),
        });
        true
    }

    /// Moves queued queries out as fast as the pacer allows; their timeout
    /// starts now.
    fn flush(&mut self, now: Duration) {
        while !self.queue.is_empty() && self.query_pacer.try_take(now) {
            let q = self.queue.pop_front().expect("not empty");
            if let Some(t) = self.transactions.get_mut(&q.tid) {
                t.sent = Some(now);
                self.out.push_back(Transmit {
                    to: q.to,
                    bytes: q.bytes,
                });
            }
        }
    }
}

#[cfg(test)]
mod sim_tests;
#[cfg(test)]
mod tests;
