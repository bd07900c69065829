//! The load tester: thousands of simulated peers against a seeder, and a
//! UDP announce/scrape load against a tracker.
//!
//! Peers run like the engine: one thread per core, each with its own
//! io_uring and the peers it opened. A simulated peer connects (from its own
//! loopback address when the target is on loopback, so per-IP limits see
//! distinct peers), handshakes, says it is interested, and once unchoked
//! keeps `pipeline` block requests outstanding in the chosen pattern, within
//! its rate cap. Each block's request-to-block latency goes into an HDR
//! histogram; a sample of pieces is assembled and checked against the
//! torrent's hashes, so a fast but wrong seeder is caught. With `mse` set,
//! every peer dials with message stream encryption (RC4 for the whole
//! stream, or plaintext after the handshake), as clients set to require
//! encryption do.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::hash::{sha1, Sha1Digest};
use crate::io::plane::epoll::Epoll;
use crate::io::plane::uring::Uring;
use crate::io::plane::{Backend, Completion, IoMode, Op, PlaneKind, UserData};
use crate::policy::load_pattern::{LoadPattern, Pattern};
use crate::policy::rate_limit::TokenBucket;
use crate::proto::info_hash::InfoHash;
use crate::proto::mse::{Cipher, MseHandshake};
use crate::proto::tracker::{Announce, Event, UdpReply, UdpRequest};
use crate::proto::wire::{self, BlockRequest, Handshake, Message, Reserved, HANDSHAKE_LEN};
use crate::rng;

/// Receive buffer of a simulated peer: a whole block message and more.
const RECV_BUF: usize = 64 << 10;
/// Timer period: ramp-up, rate caps, live counters.
const TICK: Duration = Duration::from_millis(20);

/// What to run against a seeder.
#[derive(Debug, Clone)]
pub struct PeerLoad {
    /// The seeder.
    pub target: SocketAddr,
    /// The torrent's info-hash.
    pub info_hash: InfoHash,
    /// Its piece hashes (for the checked sample).
    pub piece_hashes: Arc<Vec<Sha1Digest>>,
    /// Bytes per piece.
    pub piece_length: u64,
    /// Bytes in the torrent.
    pub total_length: u64,
    /// Simulated peers.
    pub peers: usize,
    /// How long to run (after which every peer closes).
    pub duration: Duration,
    /// Connections are opened evenly over this time.
    pub ramp_up: Duration,
    /// What peers ask for.
    pub pattern: Pattern,
    /// Requests each peer keeps outstanding.
    pub pipeline: usize,
    /// Bytes per second each peer may request, 0 for no cap.
    pub rate_per_peer: u64,
    /// Fraction of pieces checked against their hash.
    pub verify_fraction: f64,
    /// Threads (one io_uring or epoll instance each).
    pub threads: usize,
    /// Which backend the threads run on (the data plane's `--io`).
    pub io: IoMode,
    /// Cores to pin the threads to, in turn; empty for no pinning.
    pub cores: Vec<usize>,
    /// Give each peer its own source address in 127.0.0.0/8 (for a target
    /// on loopback).
    pub spread_sources: bool,
    /// Dial with message stream encryption, offering these crypto_provide
    /// bits (`proto::mse::CRYPTO_RC4`, `CRYPTO_PLAINTEXT`); `None`: plain.
    pub mse: Option<u32>,
}

/// Counters that move while the test runs (flushed by each thread per tick).
#[derive(Debug, Default)]
pub struct LiveCounters {
    /// Payload bytes of blocks received.
    pub bytes: AtomicU64,
    /// Blocks received.
    pub blocks: AtomicU64,
    /// Connections established.
    pub connected: AtomicU64,
    /// Connections that failed to open.
    pub failed: AtomicU64,
    /// Established connections the target closed.
    pub closed: AtomicU64,
}

/// The outcome of a peer load.
#[derive(Debug, Clone)]
pub struct PeerLoadReport {
    /// How long it ran.
    pub elapsed: Duration,
    /// Connections established.
    pub connections_made: u64,
    /// Connections refused or timed out.
    pub connections_failed: u64,
    /// Established connections the target closed before the end.
    pub connections_closed_by_target: u64,
    /// Handshakes completed (the target knew the torrent).
    pub handshakes: u64,
    /// Peers the target unchoked.
    pub unchoked: u64,
    /// Payload bytes received.
    pub bytes: u64,
    /// Blocks received.
    pub blocks: u64,
    /// Requests the target rejected (BEP 6).
    pub rejected: u64,
    /// Pieces assembled and found to match their hash.
    pub pieces_verified: u64,
    /// Pieces assembled that did not match: a wrong seeder.
    pub verify_failures: u64,
    /// Request-to-block latency, microseconds.
    pub latency_us: Histogram<u64>,
}

impl PeerLoadReport {
    fn new() -> Self {
        PeerLoadReport {
            elapsed: Duration::ZERO,
            connections_made: 0,
            connections_failed: 0,
            connections_closed_by_target: 0,
            handshakes: 0,
            unchoked: 0,
            bytes: 0,
            blocks: 0,
            rejected: 0,
            pieces_verified: 0,
            verify_failures: 0,
            latency_us: Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds"),
        }
    }

    fn merge(&mut self, o: &PeerLoadReport) {
        self.connections_made += o.connections_made;
        self.connections_failed += o.connections_failed;
        self.connections_closed_by_target += o.connections_closed_by_target;
        self.handshakes += o.handshakes;
        self.unchoked += o.unchoked;
        self.bytes += o.bytes;
        self.blocks += o.blocks;
        self.rejected += o.rejected;
        self.pieces_verified += o.pieces_verified;
        self.verify_failures += o.verify_failures;
        let _ = self.latency_us.add(&o.latency_us);
    }
}

#[derive(Debug, PartialEq, Eq)]
enum PeerState {
    Connecting,
    Handshake,
    Active,
    Closed,
}

struct Outstanding {
    req: BlockRequest,
    sent: Instant,
}

struct SimPeer {
    fd: OwnedFd,
    /// Read by the connect op until it completes.
    target: Box<socket2::SockAddr>,
    state: PeerState,
    recv: Vec<u8>,
    recv_len: usize,
    recv_in_flight: bool,
    /// The bytes of the send in flight.
    sending: Vec<u8>,
    /// The send's header and its one iovec (over `sending`).
    msg: Box<(libc::msghdr, libc::iovec)>,
    send_in_flight: bool,
    /// Bytes queued while a send is in flight.
    queued: Vec<u8>,
    connect_in_flight: bool,
    unchoked: bool,
    /// The target announced BEP 6: a choke does not drop our requests.
    target_fast: bool,
    outstanding: VecDeque<Outstanding>,
    pattern: LoadPattern,
    bucket: Option<TokenBucket>,
    /// A piece being assembled to check: (piece, bytes, blocks received).
    checking: Option<(u32, Vec<u8>, u32)>,
    /// Its MSE handshake, while it runs.
    mse: Option<Box<MseHandshake>>,
    /// RC4 of what it sends and receives, after an MSE handshake that chose
    /// it.
    encrypt: Option<Cipher>,
    decrypt: Option<Cipher>,
}

impl SimPeer {
    fn in_flight(&self) -> bool {
        self.recv_in_flight || self.send_in_flight || self.connect_in_flight
    }
}

/// The source address of peer `index` when sources are spread over
/// 127.0.0.0/8 (127.1.0.1, 127.1.0.2, ...; never 127.0.0.1).
fn source_address(index: usize) -> IpAddr {
    let n = index as u32;
    IpAddr::V4(Ipv4Addr::new(
        127,
        1 + (n / 250 / 250 % 250) as u8,
        (n / 250 % 250) as u8,
        (n % 250 + 1) as u8,
    ))
}

/// Runs the peer load until its duration ends or `stop` is set; `live` is
/// updated as it goes.
pub fn run_peer_load(
    load: &PeerLoad,
    live: &LiveCounters,
    stop: &AtomicBool,
) -> io::Result<PeerLoadReport> {
    let threads = load.threads.max(1);
    let (kind, _) = crate::io::plane::choose(load.io)
        .map_err(|e| io::Error::new(io::ErrorKind::Unsupported, e.0))?;
    let started = Instant::now();
    let reports = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let core = (!load.cores.is_empty()).then(|| load.cores[t % load.cores.len()]);
                scope.spawn(move || {
                    if let Some(core) = core {
                        core_affinity::set_for_current(core_affinity::CoreId { id: core });
                    }
                    let peers: Vec<usize> = (t..load.peers).step_by(threads).collect();
                    match kind {
                        PlaneKind::Uring => {
                            let entries =
                                (peers.len() * 2 + 64).next_power_of_two().clamp(256, 32768) as u32;
                            LoadThread::new(Uring::new(entries)?, load, peers, live, stop).run()
                        }
                        PlaneKind::Epoll => {
                            LoadThread::new(Epoll::new()?, load, peers, live, stop).run()
                        }
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(io::Error::other("a load thread panicked")))
            })
            .collect::<Vec<_>>()
    });
    let mut total = PeerLoadReport::new();
    for r in reports {
        total.merge(&r?);
    }
    total.elapsed = started.elapsed();
    Ok(total)
}

struct LoadThread<'a, B: Backend> {
    load: &'a PeerLoad,
    live: &'a LiveCounters,
    stop: &'a AtomicBool,
    backend: B,
    /// Global index of each peer of this thread, in connect order.
    indexes: Vec<usize>,
    peers: Vec<Option<SimPeer>>,
    next_connect: usize,
    in_flight: usize,
    started: Instant,
    report: PeerLoadReport,
    flushed: (u64, u64, u64, u64, u64),
    rng: u64,
}

impl<'a, B: Backend> LoadThread<'a, B> {
    /// A thread's share of the peers on `backend` (made on this thread).
    fn new(
        backend: B,
        load: &'a PeerLoad,
        indexes: Vec<usize>,
        live: &'a LiveCounters,
        stop: &'a AtomicBool,
    ) -> Self {
        LoadThread {
            load,
            live,
            stop,
            backend,
            peers: (0..indexes.len()).map(|_| None).collect(),
            indexes,
            next_connect: 0,
            in_flight: 0,
            started: Instant::now(),
            report: PeerLoadReport::new(),
            flushed: (0, 0, 0, 0, 0),
            rng: rng::seeded(),
        }
    }

    /// Hands an op to the backend.
    ///
    /// # Safety
    ///
    /// As [`Backend::push`]: every op of this module points into a peer's
    /// heap buffers (its receive buffer, its send buffer and message header,
    /// its target address), which are neither moved nor freed until the op
    /// completes: a peer is dropped only with no op in flight, and `Drop`
    /// waits for every op before the thread returns.
    unsafe fn push(&mut self, op: Op, data: UserData) {
        // SAFETY: the caller's contract, which is `Backend::push`'s.
        unsafe { self.backend.push(op, data.pack()) };
        self.in_flight += 1;
    }

    fn run(mut self) -> io::Result<PeerLoadReport> {
        self.arm_tick();
        let end = self.started + self.load.duration;
        let mut completions: Vec<Completion> = Vec::with_capacity(1024);
        loop {
            completions.clear();
            self.backend.wait(&mut completions, true)?;
            let mut ending = false;
            for &Completion {
                user_data, result, ..
            } in &completions
            {
                self.in_flight -= 1;
                match UserData::unpack(user_data) {
                    UserData::Connect { key, .. } => self.on_connect(key as usize, result),
                    UserData::Recv { key, .. } => self.on_recv(key as usize, result),
                    UserData::Send { key, .. } => self.on_send(key as usize, result),
                    UserData::Tick => {
                        if Instant::now() >= end || self.stop.load(Ordering::Relaxed) {
                            // Handle the rest of the batch first: its ops
                            // are done and must be counted.
                            ending = true;
                        } else {
                            self.on_tick();
                        }
                    }
                    _ => {}
                }
            }
            if ending {
                return self.finish();
            }
        }
    }

    fn arm_tick(&mut self) {
        // SAFETY: a timeout points to nothing of ours.
        unsafe { self.push(Op::Timeout { after: TICK }, UserData::Tick) };
    }

    fn random(&mut self) -> u64 {
        rng::next(&mut self.rng)
    }

    fn on_tick(&mut self) {
        self.arm_tick();
        // Ramp-up: connections due by now.
        let elapsed = self.started.elapsed();
        let due = if self.load.ramp_up.is_zero() {
            self.indexes.len()
        } else {
            let share = elapsed.as_secs_f64() / self.load.ramp_up.as_secs_f64();
            ((self.indexes.len() as f64 * share).ceil() as usize).min(self.indexes.len())
        };
        while self.next_connect < due {
            let key = self.next_connect;
            self.next_connect += 1;
            self.connect(key);
        }
        // Rate-capped peers get new tokens.
        if self.load.rate_per_peer > 0 {
            for key in 0..self.peers.len() {
                self.fill_requests(key);
            }
        }
        self.flush_live();
    }

    fn flush_live(&mut self) {
        let r = &self.report;
        let now = (
            r.bytes,
            r.blocks,
            r.connections_made,
            r.connections_failed,
            r.connections_closed_by_target,
        );
        let (b, k, c, f, x) = self.flushed;
        self.live.bytes.fetch_add(now.0 - b, Ordering::Relaxed);
        self.live.blocks.fetch_add(now.1 - k, Ordering::Relaxed);
        self.live.connected.fetch_add(now.2 - c, Ordering::Relaxed);
        self.live.failed.fetch_add(now.3 - f, Ordering::Relaxed);
        self.live.closed.fetch_add(now.4 - x, Ordering::Relaxed);
        self.flushed = now;
    }

    fn connect(&mut self, key: usize) {
        let target = self.load.target;
        let socket = match socket2::Socket::new(
            socket2::Domain::for_address(target),
            socket2::Type::STREAM.cloexec(),
            Some(socket2::Protocol::TCP),
        ) {
            Ok(s) => s,
            Err(_) => {
                self.report.connections_failed += 1;
                return;
            }
        };
        let _ = socket.set_tcp_nodelay(true);
        if self.load.spread_sources && target.is_ipv4() {
            let source = SocketAddr::new(source_address(self.indexes[key]), 0);
            if socket.bind(&source.into()).is_err() {
                self.report.connections_failed += 1;
                return;
            }
        }
        let start = self.random();
        let peer = SimPeer {
            fd: socket.into(),
            target: Box::new(target.into()),
            state: PeerState::Connecting,
            recv: vec![0; RECV_BUF],
            recv_len: 0,
            recv_in_flight: false,
            sending: Vec::new(),
            // SAFETY: msghdr and iovec are plain C structs; all-zero is
            // their empty value.
            msg: Box::new(unsafe { std::mem::zeroed() }),
            send_in_flight: false,
            queued: Vec::new(),
            connect_in_flight: true,
            unchoked: false,
            target_fast: false,
            outstanding: VecDeque::new(),
            pattern: LoadPattern::new(
                self.load.pattern,
                self.load.piece_length,
                self.load.total_length,
                self.load.verify_fraction,
                start,
            ),
            bucket: (self.load.rate_per_peer > 0)
                .then(|| TokenBucket::new(self.load.rate_per_peer, self.started.elapsed())),
            checking: None,
            mse: None,
            encrypt: None,
            decrypt: None,
        };
        let op = Op::Connect {
            fd: peer.fd.as_raw_fd(),
            addr: peer.target.as_ptr().cast(),
            len: peer.target.len(),
        };
        self.peers[key] = Some(peer);
        let data = UserData::Connect {
            key: key as u32,
            generation: 0,
        };
        // SAFETY: the target address is boxed in the peer, kept until the
        // connect completes.
        unsafe { self.push(op, data) };
    }

    fn on_connect(&mut self, key: usize, result: i32) {
        let Some(peer) = self.peers[key].as_mut() else {
            return;
        };
        peer.connect_in_flight = false;
        if result < 0 || peer.state == PeerState::Closed {
            self.report.connections_failed += 1;
            self.drop_peer(key);
            return;
        }
        self.report.connections_made += 1;
        peer.state = PeerState::Handshake;
        let mut hello = Vec::with_capacity(HANDSHAKE_LEN + 5);
        let mut peer_id = *b"-RSLOAD-000000000000";
        let index = self.indexes[key];
        peer_id[8..].copy_from_slice(format!("{index:012}").as_bytes());
        Handshake {
            reserved: Reserved::OURS,
            info_hash: self.load.info_hash,
            peer_id,
        }
        .encode(&mut hello);
        if let Some(methods) = self.load.mse {
            // Our handshake travels inside MSE's; `interested` once it is
            // done.
            let mut mse = MseHandshake::initiator(
                self.load.info_hash.0,
                methods,
                hello,
                &mut rng::fill_random,
            );
            mse.take_output(&mut peer.queued);
            peer.mse = Some(Box::new(mse));
            self.start_send(key);
        } else {
            wire::encode(&Message::Interested, &mut hello);
            self.queue_send(key, &hello);
        }
        self.arm_recv(key);
    }

    /// Queues `bytes` (encrypted, if the stream is).
    fn queue_send(&mut self, key: usize, bytes: &[u8]) {
        let Some(peer) = self.peers[key].as_mut() else {
            return;
        };
        let at = peer.queued.len();
        peer.queued.extend_from_slice(bytes);
        if let Some(cipher) = &mut peer.encrypt {
            cipher.apply(&mut peer.queued[at..]);
        }
        self.start_send(key);
    }

    /// Runs the MSE handshake on what arrived; `Err` ends the connection.
    /// Once it is done, `recv` holds what followed it, in clear.
    fn negotiate(&mut self, key: usize) -> Result<(), ()> {
        let Some(peer) = self.peers[key].as_mut() else {
            return Err(());
        };
        let Some(mse) = peer.mse.as_mut() else {
            return Ok(());
        };
        let result = mse.receive(&peer.recv[..peer.recv_len], &|_| None);
        mse.take_output(&mut peer.queued);
        peer.recv_len = 0;
        let done = result.map_err(|_| ())?;
        if let Some(done) = done {
            peer.mse = None;
            peer.encrypt = done.encrypt;
            peer.decrypt = done.decrypt;
            if done.payload.len() > peer.recv.len() {
                peer.recv.resize(done.payload.len(), 0);
            }
            peer.recv[..done.payload.len()].copy_from_slice(&done.payload);
            peer.recv_len = done.payload.len();
            let mut interested = Vec::new();
            wire::encode(&Message::Interested, &mut interested);
            self.queue_send(key, &interested);
        } else {
            self.start_send(key);
        }
        Ok(())
    }

    fn start_send(&mut self, key: usize) {
        let Some(peer) = self.peers[key].as_mut() else {
            return;
        };
        if peer.send_in_flight || peer.queued.is_empty() || peer.state == PeerState::Closed {
            return;
        }
        std::mem::swap(&mut peer.sending, &mut peer.queued);
        peer.queued.clear();
        let (msg, iov) = &mut *peer.msg;
        iov.iov_base = peer.sending.as_mut_ptr().cast();
        iov.iov_len = peer.sending.len();
        msg.msg_iov = iov;
        msg.msg_iovlen = 1;
        let op = Op::SendMsg {
            fd: peer.fd.as_raw_fd(),
            msg,
            cold: false,
        };
        let data = UserData::Send {
            key: key as u32,
            generation: 0,
        };
        peer.send_in_flight = true;
        // SAFETY: `sending` and the boxed header are not touched until the
        // send completes (`send_in_flight`).
        unsafe { self.push(op, data) };
    }

    fn on_send(&mut self, key: usize, result: i32) {
        let Some(peer) = self.peers[key].as_mut() else {
            return;
        };
        peer.send_in_flight = false;
        if result <= 0 || peer.state == PeerState::Closed {
            self.close(key, true);
            return;
        }
        let sent = result as usize;
        if sent < peer.sending.len() {
            // Put the rest first in line.
            let mut rest = peer.sending.split_off(sent);
            rest.append(&mut peer.queued);
            peer.queued = rest;
        }
        self.start_send(key);
    }

    fn arm_recv(&mut self, key: usize) {
        let Some(peer) = self.peers[key].as_mut() else {
            return;
        };
        if peer.recv_in_flight || peer.state == PeerState::Closed {
            return;
        }
        let spare = peer.recv.len() - peer.recv_len;
        let op = Op::Recv {
            fd: peer.fd.as_raw_fd(),
            buf: peer.recv[peer.recv_len..].as_mut_ptr(),
            len: spare as u32,
        };
        let data = UserData::Recv {
            key: key as u32,
            generation: 0,
        };
        peer.recv_in_flight = true;
        // SAFETY: `recv[recv_len..]` is lent until the receive completes
        // (`recv_in_flight`).
        unsafe { self.push(op, data) };
    }

    fn on_recv(&mut self, key: usize, result: i32) {
        let Some(peer) = self.peers[key].as_mut() else {
            return;
        };
        peer.recv_in_flight = false;
        if result <= 0 || peer.state == PeerState::Closed {
            self.close(key, true);
            return;
        }
        let fresh = peer.recv_len..peer.recv_len + result as usize;
        peer.recv_len = fresh.end;
        if let Some(cipher) = &mut peer.decrypt {
            cipher.apply(&mut peer.recv[fresh]);
        }
        if self.negotiate(key).is_err() || self.process(key).is_err() {
            self.close(key, true);
            return;
        }
        self.fill_requests(key);
        self.arm_recv(key);
    }

    /// Parses what arrived; `Err` ends the connection.
    fn process(&mut self, key: usize) -> Result<(), ()> {
        let now = Instant::now();
        let hashes = Arc::clone(&self.load.piece_hashes);
        let Some(peer) = self.peers[key].as_mut() else {
            return Err(());
        };
        let mut at = 0;
        if peer.state == PeerState::Handshake {
            match Handshake::decode(&peer.recv[..peer.recv_len]) {
                Ok(None) => return Ok(()),
                Ok(Some(hs)) if hs.info_hash == self.load.info_hash => {
                    peer.target_fast = hs.reserved.fast();
                }
                _ => return Err(()),
            }
            peer.state = PeerState::Active;
            self.report.handshakes += 1;
            at = HANDSHAKE_LEN;
        }
        loop {
            let msg = match wire::decode(&peer.recv[at..peer.recv_len], RECV_BUF as u32 - 4) {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(_) => return Err(()),
            };
            let (msg, used) = msg;
            match msg {
                Message::Unchoke => {
                    if !peer.unchoked {
                        self.report.unchoked += 1;
                    }
                    peer.unchoked = true;
                }
                Message::Choke => {
                    peer.unchoked = false;
                    if !peer.target_fast {
                        // BEP 3: a choke drops every request.
                        peer.outstanding.clear();
                        peer.checking = None;
                    }
                }
                Message::RejectRequest(req) => {
                    if let Some(i) = peer.outstanding.iter().position(|o| o.req == req) {
                        peer.outstanding.remove(i);
                        self.report.rejected += 1;
                        if peer.checking.as_ref().is_some_and(|c| c.0 == req.piece) {
                            peer.checking = None;
                        }
                    }
                }
                Message::Piece {
                    piece,
                    offset,
                    data,
                } => {
                    let req = BlockRequest {
                        piece,
                        offset,
                        length: data.len() as u32,
                    };
                    if let Some(i) = peer.outstanding.iter().position(|o| o.req == req) {
                        let o = peer.outstanding.remove(i).expect("found");
                        let micros = now.duration_since(o.sent).as_micros() as u64;
                        let _ = self.report.latency_us.record(micros.max(1));
                        self.report.blocks += 1;
                        self.report.bytes += data.len() as u64;
                        if let Some((p, buf, got)) = peer.checking.as_mut() {
                            if *p == piece {
                                let start = offset as usize;
                                buf[start..start + data.len()].copy_from_slice(data);
                                *got += 1;
                                let blocks = buf.len().div_ceil(16 << 10) as u32;
                                if *got == blocks {
                                    if hashes.get(piece as usize) == Some(&sha1(buf)) {
                                        self.report.pieces_verified += 1;
                                    } else {
                                        self.report.verify_failures += 1;
                                    }
                                    peer.checking = None;
                                }
                            }
                        }
                    }
                }
                _ => {}
            }
            at += used;
        }
        peer.recv.copy_within(at..peer.recv_len, 0);
        peer.recv_len -= at;
        Ok(())
    }

    /// Keeps `pipeline` requests outstanding, within the rate cap.
    fn fill_requests(&mut self, key: usize) {
        let now = self.started.elapsed();
        let mut state = self.rng;
        let Some(peer) = self.peers[key].as_mut() else {
            return;
        };
        if peer.state != PeerState::Active || !peer.unchoked {
            return;
        }
        let mut out = Vec::new();
        let sent = Instant::now();
        while peer.outstanding.len() < self.load.pipeline {
            // Tokens first (for a whole block; the torrent's last block is
            // shorter), so that the pattern never skips a block: a checked
            // piece must get all of its blocks.
            if let Some(bucket) = peer.bucket.as_mut() {
                if !bucket.try_take(u64::from(crate::policy::picker::BLOCK_LEN), now) {
                    break;
                }
            }
            let mut random = || rng::next(&mut state);
            let Some(next) = peer.pattern.next(&mut random) else {
                break;
            };
            if next.starts_piece && next.verify && peer.checking.is_none() {
                let len = self.load.piece_length.min(
                    self.load.total_length - u64::from(next.req.piece) * self.load.piece_length,
                ) as usize;
                peer.checking = Some((next.req.piece, vec![0; len], 0));
            }
            peer.outstanding.push_back(Outstanding {
                req: next.req,
                sent,
            });
            wire::encode(&Message::Request(next.req), &mut out);
        }
        self.rng = state;
        if !out.is_empty() {
            self.queue_send(key, &out);
        }
    }

    /// Closes a peer (now, or once its ops complete).
    fn close(&mut self, key: usize, by_target: bool) {
        let Some(peer) = self.peers[key].as_mut() else {
            return;
        };
        if peer.state != PeerState::Closed {
            if by_target && matches!(peer.state, PeerState::Handshake | PeerState::Active) {
                self.report.connections_closed_by_target += 1;
            }
            peer.state = PeerState::Closed;
            // SAFETY: shutting down a socket we own; ops in flight complete.
            unsafe { libc::shutdown(peer.fd.as_raw_fd(), libc::SHUT_RDWR) };
        }
        self.drop_peer(key);
    }

    /// Frees a peer once no op of it is in flight.
    fn drop_peer(&mut self, key: usize) {
        if self.peers[key].as_ref().is_some_and(|p| !p.in_flight()) {
            if let Some(peer) = self.peers[key].take() {
                self.backend.forget_fd(peer.fd.as_raw_fd());
            }
        } else if let Some(p) = self.peers[key].as_mut() {
            p.state = PeerState::Closed;
        }
    }

    /// Ends the run: closes every peer; `Drop` waits for every op before
    /// any buffer is freed.
    fn finish(mut self) -> io::Result<PeerLoadReport> {
        self.flush_live();
        for p in self.peers.iter_mut().flatten() {
            p.state = PeerState::Closed;
        }
        Ok(std::mem::replace(&mut self.report, PeerLoadReport::new()))
    }
}

impl<B: Backend> Drop for LoadThread<'_, B> {
    /// Ops in flight point into `peers`: shut the sockets down, cancel the
    /// ops and wait for them before anything is freed, or leak the buffers
    /// if even that fails (after an error or a panic in `run`).
    fn drop(&mut self) {
        if self.in_flight == 0 {
            return;
        }
        for p in self.peers.iter().flatten() {
            // SAFETY: shutting down sockets we own; nothing is freed here.
            unsafe { libc::shutdown(p.fd.as_raw_fd(), libc::SHUT_RDWR) };
        }
        self.in_flight = self.backend.cancel_all_and_wait(self.in_flight);
        if self.in_flight > 0 {
            std::mem::forget(std::mem::take(&mut self.peers));
        }
    }
}

/// What to run against a tracker.
#[derive(Debug, Clone)]
pub struct TrackerLoad {
    /// The tracker's UDP address.
    pub target: SocketAddr,
    /// Info-hashes announced (at random).
    pub info_hashes: Vec<InfoHash>,
    /// How long to run.
    pub duration: Duration,
    /// Threads, each with its own socket.
    pub threads: usize,
    /// Requests each thread keeps outstanding.
    pub window: usize,
    /// Fraction of requests that are scrapes (the rest are announces).
    pub scrape_fraction: f64,
}

/// The outcome of a tracker load.
#[derive(Debug, Clone)]
pub struct TrackerLoadReport {
    /// How long it ran.
    pub elapsed: Duration,
    /// Requests sent (announces and scrapes).
    pub sent: u64,
    /// Announce replies.
    pub announces: u64,
    /// Scrape replies.
    pub scrapes: u64,
    /// Error replies (e.g. a torrent the tracker does not track).
    pub errors: u64,
    /// Requests that got no answer in time.
    pub timeouts: u64,
    /// Request-to-reply latency, microseconds.
    pub latency_us: Histogram<u64>,
}

/// Runs a UDP announce/scrape load (BEP 15) until its duration ends or
/// `stop` is set.
pub fn run_tracker_load(load: &TrackerLoad, stop: &AtomicBool) -> io::Result<TrackerLoadReport> {
    let started = Instant::now();
    let results = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..load.threads.max(1))
            .map(|t| scope.spawn(move || tracker_thread(load, t, stop)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(io::Error::other("a load thread panicked")))
            })
            .collect::<Vec<_>>()
    });
    let mut total = TrackerLoadReport {
        elapsed: Duration::ZERO,
        sent: 0,
        announces: 0,
        scrapes: 0,
        errors: 0,
        timeouts: 0,
        latency_us: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
    };
    for r in results {
        let r = r?;
        total.sent += r.sent;
        total.announces += r.announces;
        total.scrapes += r.scrapes;
        total.errors += r.errors;
        total.timeouts += r.timeouts;
        let _ = total.latency_us.add(&r.latency_us);
    }
    total.elapsed = started.elapsed();
    Ok(total)
}

fn tracker_thread(
    load: &TrackerLoad,
    thread: usize,
    stop: &AtomicBool,
) -> io::Result<TrackerLoadReport> {
    let bind: SocketAddr = if load.target.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(bind)?;
    socket.connect(load.target)?;
    socket.set_read_timeout(Some(Duration::from_millis(50)))?;
    let mut report = TrackerLoadReport {
        elapsed: Duration::ZERO,
        sent: 0,
        announces: 0,
        scrapes: 0,
        errors: 0,
        timeouts: 0,
        latency_us: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
    };
    let mut state = rng::seeded();
    let mut random = move || rng::next(&mut state);
    let end = Instant::now() + load.duration;
    let mut out = Vec::with_capacity(128);
    let mut buf = vec![0u8; 4096];
    let mut connection: Option<(u64, Instant)> = None;
    let mut pending: std::collections::HashMap<u32, Instant> = std::collections::HashMap::new();
    let mut next_tid = (thread as u32) << 24;
    while Instant::now() < end && !stop.load(Ordering::Relaxed) {
        // A connection id lasts a minute (BEP 15); renew it before that.
        let conn_id = match connection {
            Some((id, at)) if at.elapsed() < Duration::from_secs(50) => id,
            _ => {
                next_tid = next_tid.wrapping_add(1);
                out.clear();
                UdpRequest::Connect {
                    transaction_id: next_tid,
                }
                .encode(&mut out);
                socket.send(&out)?;
                match socket.recv(&mut buf) {
                    Ok(n) => {
                        if let Ok(UdpReply::Connect { connection_id, .. }) =
                            UdpReply::decode(&buf[..n], load.target.is_ipv6())
                        {
                            connection = Some((connection_id, Instant::now()));
                        }
                    }
                    Err(_) => report.timeouts += 1,
                }
                pending.clear();
                continue;
            }
        };
        while pending.len() < load.window {
            next_tid = next_tid.wrapping_add(1);
            let info_hash = load.info_hashes[(random() % load.info_hashes.len() as u64) as usize];
            out.clear();
            let scrape = (random() % 1_000_000) as f64 / 1e6 < load.scrape_fraction;
            if scrape {
                UdpRequest::Scrape {
                    connection_id: conn_id,
                    transaction_id: next_tid,
                    info_hashes: vec![info_hash],
                }
                .encode(&mut out);
            } else {
                let mut peer_id = [0u8; 20];
                peer_id[..8].copy_from_slice(&random().to_le_bytes());
                peer_id[8..16].copy_from_slice(&random().to_le_bytes());
                UdpRequest::Announce {
                    connection_id: conn_id,
                    transaction_id: next_tid,
                    announce: Announce {
                        info_hash,
                        peer_id,
                        port: (random() % 60_000 + 1024) as u16,
                        uploaded: 0,
                        downloaded: 0,
                        left: random() % 2 * 1_000_000,
                        event: Event::Started,
                        numwant: Some(50),
                        key: random() as u32,
                        tracker_id: None,
                    },
                }
                .encode(&mut out);
            }
            socket.send(&out)?;
            report.sent += 1;
            pending.insert(next_tid, Instant::now());
        }
        match socket.recv(&mut buf) {
            Ok(n) => {
                let reply = UdpReply::decode(&buf[..n], load.target.is_ipv6());
                let tid = match &reply {
                    Ok(UdpReply::Announce { transaction_id, .. }) => {
                        report.announces += 1;
                        *transaction_id
                    }
                    Ok(UdpReply::Scrape { transaction_id, .. }) => {
                        report.scrapes += 1;
                        *transaction_id
                    }
                    Ok(UdpReply::Error { transaction_id, .. }) => {
                        report.errors += 1;
                        *transaction_id
                    }
                    _ => continue,
                };
                if let Some(sent) = pending.remove(&tid) {
                    let _ = report
                        .latency_us
                        .record((sent.elapsed().as_micros() as u64).max(1));
                }
            }
            Err(_) => {
                // Nothing for 50 ms: what is pending is lost.
                report.timeouts += pending.len() as u64;
                pending.clear();
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_distinct_loopback_addresses_never_127_0_0_1() {
        let a: std::collections::HashSet<IpAddr> = (0..20_000).map(source_address).collect();
        assert_eq!(a.len(), 20_000);
        assert!(a.iter().all(|ip| match ip {
            IpAddr::V4(v4) => v4.is_loopback() && *v4 != Ipv4Addr::LOCALHOST,
            IpAddr::V6(_) => false,
        }));
    }
}
