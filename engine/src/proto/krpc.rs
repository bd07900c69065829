//! KRPC, the DHT's message format (BEP 5): bencoded dictionaries in single
//! UDP datagrams, with the compact node and peer formats, the IPv6 keys of
//! BEP 32 (`nodes6`, `want`), the `ip` key of BEP 42, BEP 33 scrapes (`BFsd`,
//! `BFpe` bloom filters), BEP 43 read-only (`ro`) and BEP 51
//! `sample_infohashes`.
//!
//! Bytes in, values out and back; nothing here knows about routing tables
//! or clocks. [`Message::decode`] reads hostile datagrams: it is bounded in
//! size ([`MAX_MESSAGE_LEN`]), never panics, and tolerates what real nodes
//! send (unknown keys, compact lists with a ragged tail, odd `values`
//! entries) while refusing what it cannot use (a missing `t`, an id that is
//! not 20 bytes). What it accepts re-encodes to bytes that decode the same.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::bencode::{self, DecodeError, OwnedValue, Value};
use super::info_hash::InfoHash;
use crate::hash::sha1;

/// Datagrams longer than this are refused before parsing. A full reply
/// (100 IPv4 peers, or 8 nodes of each family, or two bloom filters) is
/// well under 1,500 bytes; anything near 64 KiB is an attack or a bug.
pub const MAX_MESSAGE_LEN: usize = 4096;

/// Transaction ids longer than this are refused: ours are 2 bytes and real
/// clients use 2 to 8, and we echo what we are sent.
pub const MAX_TRANSACTION_LEN: usize = 32;

/// KRPC error code: generic error.
pub const ERROR_GENERIC: i64 = 201;
/// KRPC error code: server error.
pub const ERROR_SERVER: i64 = 202;
/// KRPC error code: protocol error (malformed packet, bad token).
pub const ERROR_PROTOCOL: i64 = 203;
/// KRPC error code: method unknown.
pub const ERROR_METHOD_UNKNOWN: i64 = 204;

/// A 160-bit node id, in the same space as info-hashes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[repr(transparent)]
pub struct NodeId(pub [u8; 20]);

impl NodeId {
    /// The id as a 128-bit and a 32-bit number, for whole-word XOR.
    fn words(&self) -> (u128, u32) {
        let mut hi = [0u8; 16];
        let mut lo = [0u8; 4];
        hi.copy_from_slice(&self.0[..16]);
        lo.copy_from_slice(&self.0[16..]);
        (u128::from_be_bytes(hi), u32::from_be_bytes(lo))
    }

    /// The XOR distance to `other`; distances compare as big-endian numbers
    /// (lexicographically).
    pub fn distance(&self, other: &NodeId) -> [u8; 20] {
        let ((a, b), (c, d)) = (self.words(), other.words());
        let mut out = [0u8; 20];
        out[..16].copy_from_slice(&(a ^ c).to_be_bytes());
        out[16..].copy_from_slice(&(b ^ d).to_be_bytes());
        out
    }

    /// How many leading bits `self` and `other` share (160 if equal).
    pub fn common_prefix_len(&self, other: &NodeId) -> usize {
        let ((a, b), (c, d)) = (self.words(), other.words());
        if a != c {
            (a ^ c).leading_zeros() as usize
        } else {
            128 + (b ^ d).leading_zeros() as usize
        }
    }

    /// The bit at `index` (0 is the most significant).
    pub fn bit(&self, index: usize) -> bool {
        self.0[index / 8] & (0x80 >> (index % 8)) != 0
    }

    /// `self` with the bit at `index` set to `value`.
    pub fn with_bit(mut self, index: usize, value: bool) -> Self {
        let mask = 0x80 >> (index % 8);
        if value {
            self.0[index / 8] |= mask;
        } else {
            self.0[index / 8] &= !mask;
        }
        self
    }
}

impl From<InfoHash> for NodeId {
    fn from(h: InfoHash) -> Self {
        NodeId(h.0)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

/// A node's contact: its id and UDP address ("compact node info").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NodeInfo {
    /// The node's id.
    pub id: NodeId,
    /// Where it listens.
    pub addr: SocketAddr,
}

/// One KRPC datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// `t`: chosen by the querier and echoed in the reply.
    pub transaction: Vec<u8>,
    /// `v`: the sender's client and version (BEP 20 style), if it says.
    pub version: Option<Vec<u8>>,
    /// `ip` (BEP 42): in replies, the querier's address as the replier saw
    /// it; votes for our external address.
    pub ip: Option<SocketAddr>,
    /// `ro` (BEP 43): the querier is read-only and must not be added to
    /// routing tables.
    pub read_only: bool,
    /// What the message is.
    pub body: Body,
}

/// The three kinds of KRPC message (`y` = `q`, `r`, `e`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// A query.
    Query(Query),
    /// A reply to a query.
    Response(Response),
    /// An error reply to a query.
    Error(ErrorReply),
}

/// A query (`y` = `q`): a method and its arguments `a`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// `a.id`: the querier's node id.
    pub id: NodeId,
    /// The method and its own arguments.
    pub kind: QueryKind,
    /// `a.want` (BEP 32): which families of nodes the querier wants.
    pub want: Want,
}

/// The methods, with their arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryKind {
    /// `ping`.
    Ping,
    /// `find_node`: the nodes closest to `target`.
    FindNode {
        /// The id looked for.
        target: NodeId,
    },
    /// `get_peers`: peers of a torrent, or the nodes closest to it.
    GetPeers {
        /// The torrent.
        info_hash: InfoHash,
        /// BEP 33 `noseed`: leave seeds out of `values`.
        noseed: bool,
        /// BEP 33 `scrape`: include the `BFsd`/`BFpe` bloom filters.
        scrape: bool,
    },
    /// `announce_peer`: the querier is a peer of the torrent.
    AnnouncePeer {
        /// The torrent.
        info_hash: InfoHash,
        /// The peer's TCP port (ignored when `implied_port`).
        port: u16,
        /// Use the query's UDP source port as the peer's port.
        implied_port: bool,
        /// The token from an earlier `get_peers` reply.
        token: Vec<u8>,
        /// BEP 33 `seed`: the peer is a seed.
        seed: bool,
    },
    /// `sample_infohashes` (BEP 51): a sample of the info-hashes stored.
    SampleInfohashes {
        /// Where to look for closer nodes.
        target: NodeId,
    },
    /// A method we do not know (answered with error 204).
    Other {
        /// Its name as sent.
        method: Vec<u8>,
    },
}

impl QueryKind {
    /// The method name on the wire.
    pub fn method(&self) -> &[u8] {
        match self {
            QueryKind::Ping => b"ping",
            QueryKind::FindNode { .. } => b"find_node",
            QueryKind::GetPeers { .. } => b"get_peers",
            QueryKind::AnnouncePeer { .. } => b"announce_peer",
            QueryKind::SampleInfohashes { .. } => b"sample_infohashes",
            QueryKind::Other { method } => method,
        }
    }
}

/// BEP 32 `want`: which node families a reply should carry. Neither set
/// means "the family the query came over".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Want {
    /// `n4`: IPv4 nodes (`nodes`).
    pub v4: bool,
    /// `n6`: IPv6 nodes (`nodes6`).
    pub v6: bool,
}

/// A reply (`y` = `r`). KRPC replies do not name their method, so this holds
/// every key any of our methods can return; the querier knows from the
/// transaction which ones to expect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// `r.id`: the replier's node id.
    pub id: NodeId,
    /// `nodes`: close IPv4 nodes.
    pub nodes: Vec<NodeInfo>,
    /// `nodes6` (BEP 32): close IPv6 nodes.
    pub nodes6: Vec<NodeInfo>,
    /// `token`: to send back with `announce_peer`.
    pub token: Option<Vec<u8>>,
    /// `values`: peers of the torrent, IPv4 and IPv6 mixed.
    pub values: Vec<SocketAddr>,
    /// BEP 33 `BFsd` and `BFpe`: bloom filters of seeds and peers.
    pub scrape: Option<Box<Scrape>>,
    /// BEP 51 `interval`, `num`, `samples`.
    pub samples: Option<Samples>,
}

impl Response {
    /// A reply carrying only the replier's id (to ping and announce_peer).
    pub fn with_id(id: NodeId) -> Self {
        Response {
            id,
            nodes: Vec::new(),
            nodes6: Vec::new(),
            token: None,
            values: Vec::new(),
            scrape: None,
            samples: None,
        }
    }
}

/// BEP 33 scrape filters of one torrent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scrape {
    /// `BFsd`: the seeds.
    pub seeds: BloomFilter,
    /// `BFpe`: the other peers.
    pub peers: BloomFilter,
}

/// BEP 51 sample of the info-hashes a node stores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Samples {
    /// `interval`: seconds before the same node should be asked again.
    pub interval: u32,
    /// `num`: how many info-hashes the node stores in all.
    pub num: u64,
    /// `samples`: some of them.
    pub hashes: Vec<InfoHash>,
}

/// An error reply (`y` = `e`): `[code, message]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorReply {
    /// 201 generic, 202 server, 203 protocol, 204 method unknown.
    pub code: i64,
    /// Human-readable text (lossily decoded).
    pub message: String,
}

/// The BEP 33 bloom filter: 2,048 bits, two hash functions over SHA-1 of
/// the peer's IP address. Filters of several nodes merge by OR, and the
/// count of distinct addresses is estimated from the zero bits.
#[derive(Clone, PartialEq, Eq)]
pub struct BloomFilter(pub [u8; 256]);

impl Default for BloomFilter {
    fn default() -> Self {
        BloomFilter([0; 256])
    }
}

impl fmt::Debug for BloomFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BloomFilter(~{:.0})", self.estimate())
    }
}

impl BloomFilter {
    const BITS: usize = 2048;

    /// Adds an address (its 4 or 16 bytes, as BEP 33 says).
    pub fn insert(&mut self, ip: IpAddr) {
        let hash = match ip {
            IpAddr::V4(ip) => sha1(&ip.octets()),
            IpAddr::V6(ip) => sha1(&ip.octets()),
        };
        let index1 = (usize::from(hash[0]) | usize::from(hash[1]) << 8) % Self::BITS;
        let index2 = (usize::from(hash[2]) | usize::from(hash[3]) << 8) % Self::BITS;
        for index in [index1, index2] {
            self.0[index / 8] |= 1 << (index % 8);
        }
    }

    /// Merges `other` into `self` (set union).
    pub fn merge(&mut self, other: &BloomFilter) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a |= b;
        }
    }

    /// The estimated number of distinct addresses inserted (BEP 33's
    /// formula; a full filter estimates about 6,000).
    pub fn estimate(&self) -> f64 {
        let m = Self::BITS as f64;
        let set: u32 = self.0.iter().map(|b| b.count_ones()).sum();
        // One zero bit kept so that a full filter gives a finite number.
        let zeros = (m - f64::from(set)).max(1.0);
        (zeros / m).ln() / (2.0 * (1.0 - 1.0 / m).ln())
    }
}

/// Why a datagram is not a KRPC message we can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KrpcError {
    /// Longer than [`MAX_MESSAGE_LEN`]; not parsed.
    #[error("KRPC message of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// The datagram's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not bencode.
    #[error("KRPC message: {0}")]
    Bencode(#[from] DecodeError),
    /// A key missing, of the wrong type or of the wrong size.
    #[error("KRPC message: field `{field}` {problem}")]
    BadField {
        /// The key, dotted from the top (`a.id`).
        field: &'static str,
        /// What is wrong.
        problem: String,
    },
}

fn bad(field: &'static str, problem: impl Into<String>) -> KrpcError {
    KrpcError::BadField {
        field,
        problem: problem.into(),
    }
}

fn bytes_field<'a>(
    dict: &Value<'a>,
    key: &str,
    field: &'static str,
) -> Result<&'a [u8], KrpcError> {
    let v = dict.get(key).ok_or_else(|| bad(field, "is missing"))?;
    v.as_bytes()
        .ok_or_else(|| bad(field, format!("is a {}, not a byte string", v.type_name())))
}

fn id20(dict: &Value<'_>, key: &str, field: &'static str) -> Result<[u8; 20], KrpcError> {
    let b = bytes_field(dict, key, field)?;
    <[u8; 20]>::try_from(b).map_err(|_| bad(field, format!("has {} bytes, not 20", b.len())))
}

/// An integer flag: present and non-zero.
fn flag(dict: &Value<'_>, key: &str) -> bool {
    dict.get(key)
        .and_then(|v| v.as_int())
        .is_some_and(|i| i != 0)
}

impl Message {
    /// Parses one datagram. Never panics, whatever the input.
    pub fn decode(bytes: &[u8]) -> Result<Message, KrpcError> {
        if bytes.len() > MAX_MESSAGE_LEN {
            return Err(KrpcError::TooLarge {
                len: bytes.len(),
                max: MAX_MESSAGE_LEN,
            });
        }
        let root = bencode::decode(bytes)?;
        if root.as_dict().is_none() {
            return Err(bad(
                "(root)",
                format!("is a {}, not a dictionary", root.type_name()),
            ));
        }
        let transaction = bytes_field(&root, "t", "t")?;
        if transaction.len() > MAX_TRANSACTION_LEN {
            return Err(bad("t", format!("has {} bytes", transaction.len())));
        }
        let version = root.get("v").and_then(|v| v.as_bytes()).map(<[u8]>::to_vec);
        let ip = root
            .get("ip")
            .and_then(|v| v.as_bytes())
            .and_then(parse_compact_addr);
        let read_only = flag(&root, "ro");
        let body = match bytes_field(&root, "y", "y")? {
            b"q" => Body::Query(decode_query(&root)?),
            b"r" => {
                let r = root.get("r").ok_or_else(|| bad("r", "is missing"))?;
                Body::Response(decode_response(r)?)
            }
            b"e" => Body::Error(decode_error(&root)?),
            other => return Err(bad("y", format!("is {:?}", String::from_utf8_lossy(other)))),
        };
        Ok(Message {
            transaction: transaction.to_vec(),
            version,
            ip,
            read_only,
            body,
        })
    }

    /// Appends the message's canonical encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut root = OwnedValue::dict();
        root.insert("t", OwnedValue::bytes(&self.transaction));
        if let Some(v) = &self.version {
            root.insert("v", OwnedValue::bytes(v));
        }
        if let Some(ip) = self.ip {
            let mut b = Vec::with_capacity(18);
            write_compact_addr(&mut b, ip);
            root.insert("ip", OwnedValue::Bytes(b));
        }
        if self.read_only {
            root.insert("ro", OwnedValue::Int(1));
        }
        match &self.body {
            Body::Query(q) => {
                root.insert("y", OwnedValue::bytes("q"));
                root.insert("q", OwnedValue::bytes(q.kind.method()));
                root.insert("a", encode_query_args(q));
            }
            Body::Response(r) => {
                root.insert("y", OwnedValue::bytes("r"));
                root.insert("r", encode_response(r));
            }
            Body::Error(e) => {
                root.insert("y", OwnedValue::bytes("e"));
                root.insert(
                    "e",
                    OwnedValue::List(vec![
                        OwnedValue::Int(e.code),
                        OwnedValue::bytes(e.message.as_bytes()),
                    ]),
                );
            }
        }
        root.encode(out);
    }

    /// The encoding as a new buffer.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }
}

fn decode_query(root: &Value<'_>) -> Result<Query, KrpcError> {
    let method = bytes_field(root, "q", "q")?;
    let a = root.get("a").ok_or_else(|| bad("a", "is missing"))?;
    if a.as_dict().is_none() {
        return Err(bad(
            "a",
            format!("is a {}, not a dictionary", a.type_name()),
        ));
    }
    let id = NodeId(id20(a, "id", "a.id")?);
    let kind = match method {
        b"ping" => QueryKind::Ping,
        b"find_node" => QueryKind::FindNode {
            target: NodeId(id20(a, "target", "a.target")?),
        },
        b"get_peers" => QueryKind::GetPeers {
            info_hash: InfoHash(id20(a, "info_hash", "a.info_hash")?),
            noseed: flag(a, "noseed"),
            scrape: flag(a, "scrape"),
        },
        b"announce_peer" => {
            let implied_port = flag(a, "implied_port");
            let port = match a.get("port").map(|v| v.as_int()) {
                Some(Some(p)) => {
                    u16::try_from(p).map_err(|_| bad("a.port", format!("{p} is out of range")))?
                }
                Some(None) => return Err(bad("a.port", "is not an integer")),
                // With implied_port the port key is redundant; some omit it.
                None if implied_port => 0,
                None => return Err(bad("a.port", "is missing")),
            };
            QueryKind::AnnouncePeer {
                info_hash: InfoHash(id20(a, "info_hash", "a.info_hash")?),
                port,
                implied_port,
                token: bytes_field(a, "token", "a.token")?.to_vec(),
                seed: flag(a, "seed"),
            }
        }
        b"sample_infohashes" => QueryKind::SampleInfohashes {
            target: NodeId(id20(a, "target", "a.target")?),
        },
        other => QueryKind::Other {
            method: other.to_vec(),
        },
    };
    let mut want = Want::default();
    if let Some(list) = a.get("want").and_then(|v| v.as_list()) {
        for item in list {
            match item.as_bytes() {
                Some(b"n4") => want.v4 = true,
                Some(b"n6") => want.v6 = true,
                _ => {}
            }
        }
    }
    Ok(Query { id, kind, want })
}

fn encode_query_args(q: &Query) -> OwnedValue {
    let mut a = OwnedValue::dict();
    a.insert("id", OwnedValue::bytes(q.id.0));
    match &q.kind {
        QueryKind::Ping | QueryKind::Other { .. } => {}
        QueryKind::FindNode { target } | QueryKind::SampleInfohashes { target } => {
            a.insert("target", OwnedValue::bytes(target.0));
        }
        QueryKind::GetPeers {
            info_hash,
            noseed,
            scrape,
        } => {
            a.insert("info_hash", OwnedValue::bytes(info_hash.0));
            if *noseed {
                a.insert("noseed", OwnedValue::Int(1));
            }
            if *scrape {
                a.insert("scrape", OwnedValue::Int(1));
            }
        }
        QueryKind::AnnouncePeer {
            info_hash,
            port,
            implied_port,
            token,
            seed,
        } => {
            a.insert("info_hash", OwnedValue::bytes(info_hash.0));
            a.insert("port", OwnedValue::Int(i64::from(*port)));
            if *implied_port {
                a.insert("implied_port", OwnedValue::Int(1));
            }
            a.insert("token", OwnedValue::bytes(token));
            if *seed {
                a.insert("seed", OwnedValue::Int(1));
            }
        }
    }
    if q.want.v4 || q.want.v6 {
        let mut list = Vec::new();
        if q.want.v4 {
            list.push(OwnedValue::bytes("n4"));
        }
        if q.want.v6 {
            list.push(OwnedValue::bytes("n6"));
        }
        a.insert("want", OwnedValue::List(list));
    }
    a
}

fn decode_response(r: &Value<'_>) -> Result<Response, KrpcError> {
    if r.as_dict().is_none() {
        return Err(bad(
            "r",
            format!("is a {}, not a dictionary", r.type_name()),
        ));
    }
    let mut resp = Response::with_id(NodeId(id20(r, "id", "r.id")?));
    if let Some(v) = r.get("nodes") {
        let b = v
            .as_bytes()
            .ok_or_else(|| bad("r.nodes", "is not a byte string"))?;
        resp.nodes = parse_compact_nodes(b, false);
    }
    if let Some(v) = r.get("nodes6") {
        let b = v
            .as_bytes()
            .ok_or_else(|| bad("r.nodes6", "is not a byte string"))?;
        resp.nodes6 = parse_compact_nodes(b, true);
    }
    if let Some(v) = r.get("token") {
        let b = v
            .as_bytes()
            .ok_or_else(|| bad("r.token", "is not a byte string"))?;
        resp.token = Some(b.to_vec());
    }
    if let Some(v) = r.get("values") {
        let list = v
            .as_list()
            .ok_or_else(|| bad("r.values", "is not a list"))?;
        // Entries of other sizes are skipped: one bad peer should not cost
        // the others.
        resp.values = list
            .iter()
            .filter_map(|item| item.as_bytes().and_then(parse_compact_addr))
            .collect();
    }
    let filter = |key| {
        r.get(key)
            .and_then(|v| v.as_bytes())
            .and_then(|b| <[u8; 256]>::try_from(b).ok())
            .map(BloomFilter)
    };
    if let (Some(seeds), Some(peers)) = (filter("BFsd"), filter("BFpe")) {
        resp.scrape = Some(Box::new(Scrape { seeds, peers }));
    }
    if let Some(v) = r.get("samples") {
        let b = v
            .as_bytes()
            .ok_or_else(|| bad("r.samples", "is not a byte string"))?;
        let int = |key| r.get(key).and_then(|v| v.as_int()).unwrap_or(0);
        resp.samples = Some(Samples {
            interval: u32::try_from(int("interval").max(0)).unwrap_or(u32::MAX),
            num: u64::try_from(int("num").max(0)).unwrap_or(0),
            hashes: b
                .chunks_exact(20)
                .map(|c| InfoHash(c.try_into().expect("20 bytes")))
                .collect(),
        });
    }
    Ok(resp)
}

fn encode_response(r: &Response) -> OwnedValue {
    let mut d = OwnedValue::dict();
    d.insert("id", OwnedValue::bytes(r.id.0));
    if !r.nodes.is_empty() {
        let mut b = Vec::with_capacity(26 * r.nodes.len());
        write_compact_nodes(&mut b, &r.nodes, false);
        d.insert("nodes", OwnedValue::Bytes(b));
    }
    if !r.nodes6.is_empty() {
        let mut b = Vec::with_capacity(38 * r.nodes6.len());
        write_compact_nodes(&mut b, &r.nodes6, true);
        d.insert("nodes6", OwnedValue::Bytes(b));
    }
    if let Some(token) = &r.token {
        d.insert("token", OwnedValue::bytes(token));
    }
    if !r.values.is_empty() {
        let values = r
            .values
            .iter()
            .map(|&p| {
                let mut b = Vec::with_capacity(18);
                write_compact_addr(&mut b, p);
                OwnedValue::Bytes(b)
            })
            .collect();
        d.insert("values", OwnedValue::List(values));
    }
    if let Some(s) = &r.scrape {
        d.insert("BFsd", OwnedValue::bytes(s.seeds.0));
        d.insert("BFpe", OwnedValue::bytes(s.peers.0));
    }
    if let Some(s) = &r.samples {
        d.insert("interval", OwnedValue::Int(i64::from(s.interval)));
        d.insert(
            "num",
            OwnedValue::Int(i64::try_from(s.num).unwrap_or(i64::MAX)),
        );
        let mut b = Vec::with_capacity(20 * s.hashes.len());
        for h in &s.hashes {
            b.extend_from_slice(&h.0);
        }
        d.insert("samples", OwnedValue::Bytes(b));
    }
    d
}

fn decode_error(root: &Value<'_>) -> Result<ErrorReply, KrpcError> {
    let e = root.get("e").ok_or_else(|| bad("e", "is missing"))?;
    let list = e.as_list().ok_or_else(|| bad("e", "is not a list"))?;
    let code = list
        .first()
        .and_then(|v| v.as_int())
        .ok_or_else(|| bad("e", "does not start with an integer code"))?;
    let message = list
        .get(1)
        .and_then(|v| v.as_bytes())
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default();
    Ok(ErrorReply { code, message })
}

/// Parses "compact IP-address/port info": 6 bytes (IPv4) or 18 (IPv6).
pub fn parse_compact_addr(bytes: &[u8]) -> Option<SocketAddr> {
    match bytes.len() {
        6 => {
            let ip = Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]);
            Some(SocketAddr::new(
                ip.into(),
                u16::from_be_bytes([bytes[4], bytes[5]]),
            ))
        }
        18 => {
            let ip = Ipv6Addr::from(<[u8; 16]>::try_from(&bytes[..16]).ok()?);
            Some(SocketAddr::new(
                ip.into(),
                u16::from_be_bytes([bytes[16], bytes[17]]),
            ))
        }
        _ => None,
    }
}

/// Appends the compact form of `addr` (6 or 18 bytes).
pub fn write_compact_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    match addr.ip() {
        IpAddr::V4(ip) => out.extend_from_slice(&ip.octets()),
        IpAddr::V6(ip) => out.extend_from_slice(&ip.octets()),
    }
    out.extend_from_slice(&addr.port().to_be_bytes());
}

/// Parses concatenated compact node infos: 26 bytes each for IPv4, 38 for
/// IPv6. A ragged tail is ignored, as most implementations do.
pub fn parse_compact_nodes(bytes: &[u8], ipv6: bool) -> Vec<NodeInfo> {
    let size = if ipv6 { 38 } else { 26 };
    bytes
        .chunks_exact(size)
        .filter_map(|c| {
            Some(NodeInfo {
                id: NodeId(c[..20].try_into().ok()?),
                addr: parse_compact_addr(&c[20..])?,
            })
        })
        .collect()
}

/// Appends compact node infos of one family (`ipv6` or not); nodes of the
/// other family are skipped, since they have no place in this list.
pub fn write_compact_nodes(out: &mut Vec<u8>, nodes: &[NodeInfo], ipv6: bool) {
    for n in nodes.iter().filter(|n| n.addr.is_ipv6() == ipv6) {
        out.extend_from_slice(&n.id.0);
        write_compact_addr(out, n.addr);
    }
}

#[cfg(test)]
mod tests;
