//! The built-in tracker: UDP (BEP 15) and HTTP (`/announce`, `/scrape`,
//! `/stats`), one SO_REUSEPORT socket of each kind per worker thread, swarms
//! sharded by info-hash so announces of different torrents never wait for
//! each other.
//!
//! UDP connection ids are a keyed SipHash of the client's IP address and the
//! current minute, so a spoofed source (which never sees our reply) cannot
//! forge one and the server keeps no per-client state; an id stays valid
//! for two minutes, from any port of that address (NATs change ports).

use std::collections::HashSet;
use std::hash::BuildHasher;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use percent_encoding::percent_decode_str;
use socket2::{Socket, Type};

use crate::io::net::{canonical, reuseport_socket};

use crate::policy::swarm::{PeerRequest, SwarmTable, DEFAULT_NUMWANT};
use crate::proto::bencode::OwnedValue;
use crate::proto::info_hash::InfoHash;
use crate::proto::tracker::{write_compact_peers, Event, ScrapeStats, UdpReply, UdpRequest};

/// Largest HTTP request we read.
const MAX_HTTP_REQUEST: usize = 8192;
/// Time a client has to send its whole HTTP request.
const HTTP_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Swarms tracked at most (over all shards): bounds memory whatever
/// clients announce.
const MAX_SWARMS: usize = 1_000_000;

/// Settings of the tracker.
#[derive(Debug, Clone)]
pub struct TrackerConfig {
    /// UDP address, if any.
    pub udp: Option<SocketAddr>,
    /// HTTP address, if any.
    pub http: Option<SocketAddr>,
    /// Threads per protocol (each with its own socket).
    pub workers: usize,
    /// Only these torrents are tracked, if set.
    pub whitelist: Option<HashSet<InfoHash>>,
    /// Announce interval told to clients.
    pub interval: Duration,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig {
            udp: None,
            http: None,
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            whitelist: None,
            interval: Duration::from_secs(1800),
        }
    }
}

/// Counters of the tracker.
#[derive(Debug, Default)]
pub struct TrackerCounters {
    /// Announces answered.
    pub announces: AtomicU64,
    /// Scrapes answered.
    pub scrapes: AtomicU64,
    /// UDP connects answered.
    pub connects: AtomicU64,
    /// Requests refused (not whitelisted, bad connection id).
    pub refused: AtomicU64,
    /// Requests that did not parse (dropped or answered with an error).
    pub malformed: AtomicU64,
}

struct State {
    shards: Vec<Mutex<SwarmTable>>,
    started: Instant,
    id_key: std::hash::RandomState,
    whitelist: Option<HashSet<InfoHash>>,
    interval: Duration,
    counters: TrackerCounters,
}

impl State {
    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    fn shard(&self, h: &InfoHash) -> std::sync::MutexGuard<'_, SwarmTable> {
        let i = usize::from(h.0[0]) % self.shards.len();
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    fn connection_id(&self, from: SocketAddr, minute: u64) -> u64 {
        self.id_key.hash_one((from.ip(), minute))
    }

    fn connection_id_valid(&self, from: SocketAddr, id: u64) -> bool {
        let minute = self.now().as_secs() / 60;
        id == self.connection_id(from, minute)
            || (minute > 0 && id == self.connection_id(from, minute - 1))
    }

    /// A different place in the swarm for each announce.
    fn random_start(&self, from: SocketAddr) -> usize {
        self.id_key
            .hash_one((from, self.started.elapsed().as_nanos())) as usize
    }

    fn tracked(&self, h: &InfoHash) -> bool {
        self.whitelist.as_ref().is_none_or(|w| w.contains(h))
    }

    fn peer_ttl(&self) -> Duration {
        self.interval * 2 + Duration::from_secs(60)
    }
}

/// The running tracker.
pub struct TrackerServer {
    udp_addr: Option<SocketAddr>,
    http_addr: Option<SocketAddr>,
    state: Arc<State>,
}

impl TrackerServer {
    /// Binds the sockets and starts the threads (which run for the life of
    /// the process).
    pub fn start(config: TrackerConfig) -> io::Result<Self> {
        let workers = config.workers.max(1);
        let state = Arc::new(State {
            shards: (0..workers * 16)
                .map(|_| Mutex::new(SwarmTable::with_max_swarms(MAX_SWARMS / (workers * 16))))
                .collect(),
            started: Instant::now(),
            id_key: std::hash::RandomState::new(),
            whitelist: config.whitelist,
            interval: config.interval,
            counters: TrackerCounters::default(),
        });
        let udp_addr = match config.udp {
            Some(addr) => Some(spawn_workers(
                addr,
                Type::DGRAM,
                workers,
                &state,
                |socket, state| udp_loop(&socket.into(), &state),
            )?),
            None => None,
        };
        let http_addr = match config.http {
            Some(addr) => Some(spawn_workers(
                addr,
                Type::STREAM,
                workers,
                &state,
                |socket, state| http_loop(&socket.into(), &state),
            )?),
            None => None,
        };
        let expiring = Arc::clone(&state);
        std::thread::Builder::new()
            .name("ringseed-tracker-expiry".into())
            .spawn(move || loop {
                std::thread::park_timeout(Duration::from_secs(60));
                let (now, ttl) = (expiring.now(), expiring.peer_ttl());
                for shard in &expiring.shards {
                    shard
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .expire(now, ttl);
                }
            })?;
        Ok(TrackerServer {
            udp_addr,
            http_addr,
            state,
        })
    }

    /// The UDP address, with its real port.
    pub fn udp_addr(&self) -> Option<SocketAddr> {
        self.udp_addr
    }

    /// The HTTP address, with its real port.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The counters.
    pub fn counters(&self) -> &TrackerCounters {
        &self.state.counters
    }
}

/// Binds `workers` SO_REUSEPORT sockets of `kind` to `addr` (listening, for
/// TCP) and serves each on a thread of its own; returns the address bound
/// (with its real port if 0 was asked).
fn spawn_workers(
    mut addr: SocketAddr,
    kind: Type,
    workers: usize,
    state: &Arc<State>,
    serve: fn(Socket, Arc<State>),
) -> io::Result<SocketAddr> {
    let protocol = if kind == Type::DGRAM { "udp" } else { "http" };
    for i in 0..workers {
        let socket = reuseport_socket(addr, kind)?;
        if kind == Type::STREAM {
            socket.listen(1024)?;
        }
        // Worker 0 picks the port (if 0) that the others share.
        addr = socket.local_addr()?.as_socket().unwrap_or(addr);
        let state = Arc::clone(state);
        std::thread::Builder::new()
            .name(format!("ringseed-{protocol}-tracker-{i}"))
            .spawn(move || serve(socket, state))?;
    }
    Ok(addr)
}

fn udp_loop(socket: &UdpSocket, state: &State) {
    let mut buf = [0u8; 2048];
    let mut out = Vec::with_capacity(1500);
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf) else {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        let from = canonical(from);
        out.clear();
        let reply = udp_answer(&buf[..n], from, state);
        if let Some(reply) = reply {
            reply.encode(&mut out, from.is_ipv6());
            let _ = socket.send_to(&out, from);
        }
    }
}

/// The reply to one UDP packet, or `None` to drop it.
fn udp_answer(packet: &[u8], from: SocketAddr, state: &State) -> Option<UdpReply> {
    let c = &state.counters;
    let request = match UdpRequest::decode(packet) {
        Ok(r) => r,
        Err(_) => {
            // Dropped, not answered: the source is unverified, and answering
            // garbage lets a spoofed packet start an endless error exchange
            // between two servers.
            c.malformed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
    };
    let refuse = |transaction_id, message: &str| {
        c.refused.fetch_add(1, Ordering::Relaxed);
        Some(UdpReply::Error {
            transaction_id,
            message: message.into(),
        })
    };
    match request {
        UdpRequest::Connect { transaction_id } => {
            c.connects.fetch_add(1, Ordering::Relaxed);
            let minute = state.now().as_secs() / 60;
            Some(UdpReply::Connect {
                transaction_id,
                connection_id: state.connection_id(from, minute),
            })
        }
        UdpRequest::Announce {
            connection_id,
            transaction_id,
            announce,
        } => {
            if !state.connection_id_valid(from, connection_id) {
                // Unverified source: drop (see above).
                c.refused.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            if !state.tracked(&announce.info_hash) {
                return refuse(transaction_id, "torrent not tracked here");
            }
            c.announces.fetch_add(1, Ordering::Relaxed);
            let peer = SocketAddr::new(from.ip(), announce.port);
            let outcome = state.shard(&announce.info_hash).announce(
                announce.info_hash,
                peer,
                announce.event,
                announce.left,
                PeerRequest {
                    // One UDP datagram of peers of the client's family.
                    numwant: Some(
                        announce
                            .numwant
                            .map_or(DEFAULT_NUMWANT, |n| n as usize)
                            .min(if from.is_ipv6() { 66 } else { 200 }),
                    ),
                    ipv6: Some(from.is_ipv6()),
                    start: state.random_start(from),
                },
                state.now(),
            );
            Some(UdpReply::Announce {
                transaction_id,
                interval: state.interval.as_secs() as u32,
                leechers: outcome.incomplete,
                seeders: outcome.complete,
                peers: outcome.peers,
            })
        }
        UdpRequest::Scrape {
            connection_id,
            transaction_id,
            info_hashes,
        } => {
            if !state.connection_id_valid(from, connection_id) {
                c.refused.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            c.scrapes.fetch_add(1, Ordering::Relaxed);
            let stats = info_hashes
                .iter()
                .take(74)
                .map(|h| state.shard(h).scrape(h))
                .collect();
            Some(UdpReply::Scrape {
                transaction_id,
                stats,
            })
        }
    }
}

fn http_loop(listener: &TcpListener, state: &State) {
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                let _ = serve_http(stream, state);
            }
            // Out of descriptors or memory: back off instead of spinning.
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn serve_http(mut stream: TcpStream, state: &State) -> io::Result<()> {
    let deadline = Instant::now() + HTTP_READ_TIMEOUT;
    stream.set_write_timeout(Some(HTTP_READ_TIMEOUT))?;
    let from = canonical(stream.peer_addr()?);
    let mut buf = vec![0u8; MAX_HTTP_REQUEST];
    let mut len = 0;
    let path = loop {
        if len == buf.len() {
            state.counters.malformed.fetch_add(1, Ordering::Relaxed);
            return respond(&mut stream, "431 Request Header Fields Too Large", b"");
        }
        // One deadline for the whole request, not per read: a client that
        // trickles bytes cannot hold the worker longer than that.
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        stream.set_read_timeout(Some(left))?;
        let n = stream.read(&mut buf[len..])?;
        if n == 0 {
            return Ok(());
        }
        len += n;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&buf[..len]) {
            Ok(httparse::Status::Complete(_)) => break request.path.unwrap_or("/").to_owned(),
            Ok(httparse::Status::Partial) => continue,
            Err(_) => {
                state.counters.malformed.fetch_add(1, Ordering::Relaxed);
                return respond(&mut stream, "400 Bad Request", b"");
            }
        }
    };
    let (route, query) = path.split_once('?').unwrap_or((&path, ""));
    let body = match route {
        "/announce" => http_announce(query, from, state),
        "/scrape" => http_scrape(query, state),
        "/stats" => {
            let c = &state.counters;
            let (swarms, peers) = state.shards.iter().fold((0, 0), |(s, p), shard| {
                let (s2, p2) = shard.lock().unwrap_or_else(|e| e.into_inner()).size();
                (s + s2, p + p2)
            });
            let json = format!(
                "{{\"announces\":{},\"scrapes\":{},\"connects\":{},\"refused\":{},\"malformed\":{},\"swarms\":{swarms},\"peers\":{peers}}}\n",
                c.announces.load(Ordering::Relaxed),
                c.scrapes.load(Ordering::Relaxed),
                c.connects.load(Ordering::Relaxed),
                c.refused.load(Ordering::Relaxed),
                c.malformed.load(Ordering::Relaxed),
            );
            return respond(&mut stream, "200 OK", json.as_bytes());
        }
        _ => return respond(&mut stream, "404 Not Found", b""),
    };
    respond(&mut stream, "200 OK", &body)
}

fn respond(stream: &mut TcpStream, status: &str, body: &[u8]) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)
}

/// The query parameters, percent-decoded to bytes; repeated keys kept.
fn query_params(query: &str) -> Vec<(&str, Vec<u8>)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k, percent_decode_str(v).collect())
        })
        .collect()
}

fn failure(reason: &str) -> Vec<u8> {
    let mut d = OwnedValue::dict();
    d.insert("failure reason", OwnedValue::bytes(reason));
    d.to_bytes()
}

fn http_announce(query: &str, from: SocketAddr, state: &State) -> Vec<u8> {
    let params = query_params(query);
    let get = |k: &str| {
        params
            .iter()
            .find(|(key, _)| *key == k)
            .map(|(_, v)| v.as_slice())
    };
    let number = |k: &str| -> Option<u64> { std::str::from_utf8(get(k)?).ok()?.parse().ok() };
    let info_hash = get("info_hash").and_then(|v| <[u8; 20]>::try_from(v).ok());
    let (Some(info_hash), Some(port), Some(left)) = (info_hash, number("port"), number("left"))
    else {
        state.counters.malformed.fetch_add(1, Ordering::Relaxed);
        return failure("missing or malformed info_hash, port or left");
    };
    let Ok(port) = u16::try_from(port) else {
        state.counters.malformed.fetch_add(1, Ordering::Relaxed);
        return failure("port out of range");
    };
    let info_hash = InfoHash(info_hash);
    if !state.tracked(&info_hash) {
        state.counters.refused.fetch_add(1, Ordering::Relaxed);
        return failure("torrent not tracked here");
    }
    let event = match get("event") {
        Some(b"started") => Event::Started,
        Some(b"completed") => Event::Completed,
        Some(b"stopped") => Event::Stopped,
        _ => Event::None,
    };
    state.counters.announces.fetch_add(1, Ordering::Relaxed);
    let peer = SocketAddr::new(from.ip(), port);
    let outcome = state.shard(&info_hash).announce(
        info_hash,
        peer,
        event,
        left,
        PeerRequest {
            numwant: number("numwant").map(|n| n as usize),
            ipv6: None,
            start: state.random_start(from),
        },
        state.now(),
    );
    let mut reply = OwnedValue::dict();
    reply.insert("interval", OwnedValue::Int(state.interval.as_secs() as i64));
    reply.insert(
        "min interval",
        OwnedValue::Int((state.interval.as_secs() / 2) as i64),
    );
    reply.insert("complete", OwnedValue::Int(i64::from(outcome.complete)));
    reply.insert("incomplete", OwnedValue::Int(i64::from(outcome.incomplete)));
    if get("compact") == Some(b"0") {
        let list = outcome
            .peers
            .iter()
            .map(|p| {
                let mut d = OwnedValue::dict();
                d.insert("ip", OwnedValue::bytes(p.ip().to_string()));
                d.insert("port", OwnedValue::Int(i64::from(p.port())));
                d
            })
            .collect();
        reply.insert("peers", OwnedValue::List(list));
    } else {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        write_compact_peers(&outcome.peers, &mut v4, &mut v6);
        reply.insert("peers", OwnedValue::Bytes(v4));
        if !v6.is_empty() {
            reply.insert("peers6", OwnedValue::Bytes(v6));
        }
    }
    reply.to_bytes()
}

fn http_scrape(query: &str, state: &State) -> Vec<u8> {
    let mut files = OwnedValue::dict();
    let mut count = 0;
    for (key, value) in query_params(query) {
        if key != "info_hash" {
            continue;
        }
        let Ok(hash) = <[u8; 20]>::try_from(value.as_slice()) else {
            state.counters.malformed.fetch_add(1, Ordering::Relaxed);
            return failure("malformed info_hash");
        };
        let h = InfoHash(hash);
        let ScrapeStats {
            complete,
            downloaded,
            incomplete,
        } = state.shard(&h).scrape(&h);
        let mut d = OwnedValue::dict();
        d.insert("complete", OwnedValue::Int(i64::from(complete)));
        d.insert("downloaded", OwnedValue::Int(i64::from(downloaded)));
        d.insert("incomplete", OwnedValue::Int(i64::from(incomplete)));
        if let OwnedValue::Dict(entries) = &mut files {
            entries.insert(hash.to_vec(), d);
        }
        count += 1;
        if count == 100 {
            break;
        }
    }
    state.counters.scrapes.fetch_add(1, Ordering::Relaxed);
    let mut reply = OwnedValue::dict();
    reply.insert("files", files);
    reply.to_bytes()
}
