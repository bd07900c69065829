//! The built-in tracker: UDP (BEP 15) and HTTP (`/announce`, `/scrape`,
//! `/stats`), one SO_REUSEPORT socket of each kind per worker thread, swarms
//! sharded by info-hash so announces of different torrents never wait for
//! each other.
//!
//! UDP connection ids are a keyed SipHash of the client's IP address and the
//! current minute, so a spoofed source (which never sees our reply) cannot
//! forge one and the server keeps no per-client state; an id stays valid
//! for two minutes, from any port of that address (NATs change ports).
//!
//! HTTP is served by an event loop per worker (see [`http`]), so slow or
//! silent clients hold connection slots, not threads.

mod http;

pub use http::REQUEST_DEADLINE;

use std::collections::HashSet;
use std::hash::BuildHasher;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use socket2::{Socket, Type};

use crate::io::net::{canonical, reuseport_socket};
use crate::io::plane::{self, IoMode};
use crate::policy::swarm::{PeerRequest, SwarmTable, DEFAULT_NUMWANT};
use crate::proto::info_hash::InfoHash;
use crate::proto::tracker::{UdpReply, UdpRequest};

/// Swarms tracked at most (over all shards): bounds memory whatever
/// clients announce.
const MAX_SWARMS: usize = 1_000_000;

/// Default bound on open HTTP connections: far above what announces need
/// (each is open for a round trip), well below a raised descriptor limit.
pub const DEFAULT_MAX_HTTP_CONNECTIONS: usize = 4096;

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
    /// The HTTP event loops' backend (as the data plane's `--io`).
    pub io: IoMode,
    /// HTTP connections open at most (over all workers); when full, the
    /// oldest goes.
    pub max_http_connections: usize,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig {
            udp: None,
            http: None,
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            whitelist: None,
            interval: Duration::from_secs(1800),
            io: IoMode::Auto,
            max_http_connections: DEFAULT_MAX_HTTP_CONNECTIONS,
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
    /// HTTP connections closed unanswered: past their deadline, or the
    /// oldest when every slot was taken.
    pub timed_out: AtomicU64,
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
            Some(addr) => {
                let (kind, why) = plane::choose(config.io)
                    .map_err(|e| io::Error::new(io::ErrorKind::Unsupported, e.0))?;
                if let Some(why) = why {
                    tracing::debug!("HTTP tracker on epoll: {}", why.0);
                }
                let cap = config.max_http_connections.div_ceil(workers);
                Some(spawn_workers(
                    addr,
                    Type::STREAM,
                    workers,
                    &state,
                    move |socket, state| http::serve(kind, socket.into(), state, cap),
                )?)
            }
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
    serve: impl Fn(Socket, Arc<State>) + Clone + Send + 'static,
) -> io::Result<SocketAddr> {
    let protocol = if kind == Type::DGRAM { "udp" } else { "http" };
    for i in 0..workers {
        let socket = reuseport_socket(addr, kind)?;
        if kind == Type::STREAM {
            socket.listen(1024)?;
        }
        // Worker 0 picks the port (if 0) that the others share.
        addr = socket.local_addr()?.as_socket().unwrap_or(addr);
        let (state, serve) = (Arc::clone(state), serve.clone());
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
