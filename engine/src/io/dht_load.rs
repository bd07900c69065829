//! `loadtest --mode dht`: `get_peers` queries (random info-hashes) at one DHT
//! node from many sources, each keeping a window of queries outstanding, to
//! measure how many the node answers and what each costs it. Sources are
//! distinct loopback addresses (127.1.x.y), as a node's per-source limits
//! would otherwise measure themselves.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::proto::info_hash::InfoHash;
use crate::proto::krpc::{Body, Message, NodeId, Query, QueryKind, Want};
use crate::rng;

/// A query unanswered for this long is lost.
const LOST_AFTER: Duration = Duration::from_secs(1);

/// The load.
#[derive(Debug, Clone)]
pub struct DhtLoad {
    /// The node.
    pub target: SocketAddr,
    /// How long.
    pub duration: Duration,
    /// Source addresses (sockets).
    pub sources: usize,
    /// Queries each source keeps outstanding.
    pub window: usize,
}

/// What came of it.
#[derive(Debug, Clone, Default)]
pub struct DhtLoadReport {
    /// Queries sent.
    pub sent: u64,
    /// Replies received.
    pub replies: u64,
    /// Error replies received.
    pub errors: u64,
    /// Queries never answered (within [`LOST_AFTER`]).
    pub lost: u64,
    /// How long it ran.
    pub elapsed: Duration,
}

struct Source {
    socket: UdpSocket,
    id: NodeId,
    next_tid: u16,
    outstanding: HashMap<u16, Instant>,
}

/// Runs `load` until its duration ends or `stop` is set.
pub fn run_dht_load(load: &DhtLoad, stop: &AtomicBool) -> io::Result<DhtLoadReport> {
    let mut state = rng::seeded();
    let mut sources = Vec::with_capacity(load.sources);
    for i in 0..load.sources.max(1) {
        let ip: IpAddr = if load.target.ip().is_loopback() && load.target.is_ipv4() {
            Ipv4Addr::new(127, 1, (i / 250) as u8, (i % 250 + 1) as u8).into()
        } else if load.target.is_ipv4() {
            Ipv4Addr::UNSPECIFIED.into()
        } else {
            std::net::Ipv6Addr::UNSPECIFIED.into()
        };
        let socket = UdpSocket::bind(SocketAddr::new(ip, 0))?;
        socket.set_nonblocking(true)?;
        let mut id = [0u8; 20];
        for chunk in id.chunks_mut(8) {
            chunk.copy_from_slice(&rng::next(&mut state).to_le_bytes()[..chunk.len()]);
        }
        sources.push(Source {
            socket,
            id: NodeId(id),
            next_tid: 0,
            outstanding: HashMap::new(),
        });
    }
    let mut report = DhtLoadReport::default();
    let started = Instant::now();
    let mut buf = vec![0u8; 4096];
    let mut out = Vec::with_capacity(256);
    while started.elapsed() < load.duration && !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        for s in &mut sources {
            let before = s.outstanding.len();
            s.outstanding
                .retain(|_, sent| now.duration_since(*sent) < LOST_AFTER);
            report.lost += (before - s.outstanding.len()) as u64;
            while s.outstanding.len() < load.window.max(1) {
                let mut hash = [0u8; 20];
                for chunk in hash.chunks_mut(8) {
                    chunk.copy_from_slice(&rng::next(&mut state).to_le_bytes()[..chunk.len()]);
                }
                let tid = s.next_tid;
                s.next_tid = s.next_tid.wrapping_add(1);
                let query = Message {
                    transaction: tid.to_be_bytes().to_vec(),
                    version: None,
                    ip: None,
                    read_only: true,
                    body: Body::Query(Query {
                        id: s.id,
                        kind: QueryKind::GetPeers {
                            info_hash: InfoHash(hash),
                            noseed: false,
                            scrape: false,
                        },
                        want: Want::default(),
                    }),
                };
                out.clear();
                query.encode(&mut out);
                if s.socket.send_to(&out, load.target).is_err() {
                    break;
                }
                s.outstanding.insert(tid, now);
                report.sent += 1;
            }
        }
        let mut fds: Vec<libc::pollfd> = sources
            .iter()
            .map(|s| libc::pollfd {
                fd: s.socket.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: `fds` is a live array of `fds.len()` pollfds we own.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 10) };
        for s in &mut sources {
            while let Ok((n, _)) = s.socket.recv_from(&mut buf) {
                let Ok(reply) = Message::decode(&buf[..n]) else {
                    continue;
                };
                let Ok(tid) = <[u8; 2]>::try_from(reply.transaction.as_slice()) else {
                    continue;
                };
                if s.outstanding.remove(&u16::from_be_bytes(tid)).is_some() {
                    match reply.body {
                        Body::Response(_) => report.replies += 1,
                        Body::Error(_) => report.errors += 1,
                        Body::Query(_) => {}
                    }
                }
            }
        }
    }
    report.elapsed = started.elapsed();
    report.lost += sources
        .iter()
        .map(|s| s.outstanding.len() as u64)
        .sum::<u64>();
    Ok(report)
}
