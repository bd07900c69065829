//! One data-plane worker: a thread pinned to a core, with its own io_uring,
//! its own SO_REUSEPORT listener and the connections it accepted. Nothing on
//! its per-block path takes a lock or writes memory another worker writes.
//!
//! Anatomy of seeding a block:
//! 1. a multishot accept yields a socket; a receive is armed on it;
//! 2. the handshake names a torrent; we answer with ours, the extension
//!    handshake and `have_all` (or a bitfield);
//! 3. `request` messages are validated by the `PeerSession` and queued;
//! 4. `try_send` pops queued requests (within the rate limit), builds for
//!    each a 13-byte header iovec and iovecs into the file mapping, and
//!    submits them with control messages as one `sendmsg`: adjacent requests
//!    share one submission;
//! 5. if a block's pages are not in the page cache, they are prefetched
//!    (`MADV_WILLNEED`, exactly those pages) and the send is marked
//!    `IOSQE_ASYNC`, so any wait for the disk happens in an io-wq kernel
//!    thread, never on this thread;
//! 6. a short send is resumed where it stopped; `EFAULT` means a file was
//!    truncated under us: the torrent is marked errored and its peers
//!    dropped, and the worker goes on.
//!
//! Anatomy of receiving a block (a torrent being downloaded):
//! 1. the picker, shared by the workers and locked per batch, gives each
//!    unchoking peer as many requests as its measured rate calls for;
//! 2. a `piece` message is matched to its request by the session, and its
//!    bytes are copied into the piece's buffer (the only copy);
//! 3. a complete piece goes to the checking pool, off this thread;
//! 4. a good piece comes back and is written with one `Write` op per file
//!    it spans; once written it counts as verified, and every worker sends
//!    `have` to its peers at its next tick. A bad piece is fetched again
//!    and its senders are remembered (see `policy::download`).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use slab::Slab;

use super::conn::{Conn, Phase};
use super::{Backend, Completion, Op, UserData};
use crate::io::piece_check::CheckJob;
use crate::io::seeder::{SeedConfig, Shared, WorkerMessage};
use crate::io::storage::Torrent;
use crate::policy::bitfield::Bitfield;
use crate::policy::choker::{Candidate, Choker, LeechChoker};
use crate::policy::download::CompletePiece;
use crate::policy::peer_session::{Event, PeerSession, SessionEnd, TorrentView};
use crate::policy::picker::PeerKey;
use crate::policy::rate_limit::{worker_share, TokenBucket};
use crate::proto::info_hash::InfoHash;
use crate::proto::wire::{self, Handshake, Reserved, PIECE_HEADER_LEN};
use crate::stats::StatsDelta;

/// Most bytes of blocks in one `sendmsg`: large sends are cheapest per byte
/// on loopback (28-30 Gbit/s at 256 KiB vs ~23 at 16 KiB).
const MAX_SEND_BYTES: u64 = 256 << 10;
/// Most iovecs in one `sendmsg` batch (well under IOV_MAX).
const MAX_SEND_IOVECS: usize = 128;
/// IOV_MAX on Linux: a single block spanning more files than this (a
/// torrent of thousands of tiny files) cannot be sent and is refused.
const IOV_MAX: usize = 1024;
/// Control bytes queued while a send is in flight above which we stop
/// reading from the peer until the send completes (backpressure).
const OUTPUT_HIGH_WATER: usize = 256 << 10;
/// Control bytes a peer may make us queue at all: beyond this it is
/// flooding us (e.g. metadata requests without reading the replies).
const OUTPUT_LIMIT: usize = 4 << 20;
/// Timer period: rate-limit refills and housekeeping.
const TICK: Duration = Duration::from_millis(100);
/// Stats flush, file checks, keep-alives and idle checks.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(1);
/// A keep-alive after this long without sending.
const KEEPALIVE_AFTER: Duration = Duration::from_secs(90);
/// A peer silent this long is dropped.
const IDLE_TIMEOUT: Duration = Duration::from_secs(240);
/// How long a peer has to complete its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);
/// Receive buffer of a connection of a torrent being downloaded: room for
/// many blocks per receive.
const DOWNLOAD_RECV_BUF: usize = 256 << 10;

/// Views a seeded torrent as what a session needs.
struct View<'a>(&'a Torrent);

impl TorrentView for View<'_> {
    fn num_pieces(&self) -> u32 {
        self.0.layout.num_pieces()
    }
    fn piece_len(&self, piece: u32) -> u32 {
        self.0.layout.piece_len(piece) as u32
    }
    fn info_bytes(&self) -> &[u8] {
        &self.0.metainfo.info_bytes
    }
    fn have_piece(&self, piece: u32) -> bool {
        self.0.have_piece(piece)
    }
    fn have_pieces(&self) -> Option<Bitfield> {
        self.0.have_pieces()
    }
}

/// A verified piece being written: its buffer is read by the kernel until
/// every segment's write has completed.
struct PieceWrite {
    torrent: Arc<Torrent>,
    piece: CompletePiece,
    /// (fd, file offset, offset in the piece, length) still to write.
    segments: Vec<(RawFd, u64, usize, usize)>,
    /// Segments whose write is in flight.
    in_flight: usize,
    error: Option<io::Error>,
}

/// What a worker remembers of a torrent being downloaded.
#[derive(Default)]
struct LeechProgress {
    /// Verified pieces already announced to our peers.
    announced: usize,
    /// The ban epoch last acted on.
    ban_epoch: u64,
    /// The download was complete when last seen.
    complete: bool,
}

/// A worker and everything it owns, on either backend.
pub struct Worker<B: Backend> {
    index: usize,
    backend: B,
    listener: OwnedFd,
    conns: Slab<Conn>,
    next_generation: u32,
    shared: Arc<Shared>,
    config: Arc<SeedConfig>,
    choker: Choker,
    leech_choker: LeechChoker,
    bucket: TokenBucket,
    /// Where the wake-up eventfd read lands.
    wake_buf: Box<u64>,
    wake_fd: RawFd,
    started: Instant,
    last_housekeeping: Duration,
    last_rechoke: Duration,
    /// Ops submitted and not yet completed.
    in_flight: usize,
    accept_armed: bool,
    shutting_down: bool,
    /// Connections with requests waiting for rate-limit tokens.
    throttled: Vec<usize>,
    delta: StatsDelta,
    torrent_deltas: HashMap<InfoHash, (Arc<Torrent>, StatsDelta)>,
    rng: u64,
    peer_id: [u8; 20],
    /// Completions taken before `run` (by `check_accept`).
    early: Vec<Completion>,
    /// Complete pieces go here to be checked.
    check_tx: crossbeam_channel::Sender<CheckJob>,
    /// Verified pieces being written.
    writes: Slab<PieceWrite>,
    /// Torrents being downloaded that this worker has peers of.
    leeching: HashMap<InfoHash, LeechProgress>,
    last_rate_tick: Duration,
    /// Outgoing connections not yet established.
    half_open: usize,
    /// This worker's copy of the torrents served, kept current by
    /// `messages`: finding a torrent never takes a lock.
    torrents: HashMap<InfoHash, Arc<Torrent>>,
    messages: crossbeam_channel::Receiver<WorkerMessage>,
    /// Whether the upload bucket refused a send since the last housekeeping.
    rate_wanted: bool,
    /// Unchoked peers per torrent as last added to the gauges.
    reported_unchoked: HashMap<*const Torrent, (Arc<Torrent>, i64)>,
}

impl<B: Backend> Worker<B> {
    /// A worker on `backend`, which must have been created on the calling
    /// thread (the worker thread: a ring is single-issuer).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        index: usize,
        backend: B,
        listener: OwnedFd,
        wake_fd: RawFd,
        shared: Arc<Shared>,
        config: Arc<SeedConfig>,
        check_tx: crossbeam_channel::Sender<CheckJob>,
        messages: crossbeam_channel::Receiver<WorkerMessage>,
    ) -> Self {
        let now = Duration::ZERO;
        let workers = config.workers.max(1) as u64;
        let rate_share = config.max_upload_rate.div_ceil(workers);
        let torrents = shared.catalog().clone();
        Worker {
            index,
            backend,
            listener,
            conns: Slab::with_capacity(1024),
            next_generation: 1,
            choker: Choker::new(config.choker_share(index)),
            leech_choker: LeechChoker::new(config.leech_slots_share(index)),
            bucket: TokenBucket::new(rate_share, now),
            wake_buf: Box::new(0),
            wake_fd,
            started: Instant::now(),
            last_housekeeping: now,
            last_rechoke: now,
            in_flight: 0,
            accept_armed: false,
            shutting_down: false,
            throttled: Vec::new(),
            delta: StatsDelta::default(),
            torrent_deltas: HashMap::new(),
            rng: random_u64() | 1,
            early: Vec::new(),
            check_tx,
            writes: Slab::new(),
            leeching: HashMap::new(),
            last_rate_tick: now,
            half_open: 0,
            torrents,
            messages,
            reported_unchoked: HashMap::new(),
            rate_wanted: false,
            peer_id: shared.peer_id,
            shared,
            config,
        }
    }

    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// Arms the multishot accept and checks that the kernel takes it:
    /// kernels before 5.19 refuse it at once with `EINVAL`.
    pub fn check_accept(&mut self) -> io::Result<()> {
        self.arm_accept();
        let mut early = Vec::new();
        self.backend.wait(&mut early, false)?;
        let refused = early
            .iter()
            .find(|c| UserData::unpack(c.user_data) == UserData::Accept && c.result < 0)
            .map(|c| c.result);
        self.early = early;
        if let Some(result) = refused {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "multishot accept is not supported ({}): ringseed needs Linux 5.19 or newer",
                    io::Error::from_raw_os_error(-result)
                ),
            ));
        }
        Ok(())
    }

    /// Runs until shutdown is requested and every op has completed.
    pub fn run(mut self) -> io::Result<()> {
        if !self.accept_armed {
            self.arm_accept();
        }
        self.arm_tick();
        self.arm_wake();
        let mut completions: Vec<Completion> = std::mem::take(&mut self.early);
        completions.reserve(1024);
        loop {
            if completions.is_empty() {
                self.backend.wait(&mut completions, true)?;
            }
            self.delta.ring_completions += completions.len() as u64;
            for c in std::mem::take(&mut completions) {
                self.complete(UserData::unpack(c.user_data), c.result, c.more);
            }
            if self.shutting_down && self.in_flight == 0 {
                self.flush_stats();
                return Ok(());
            }
        }
    }

    /// Hands an op to the backend.
    ///
    /// # Safety
    ///
    /// As [`Backend::push`]: what `op` points to lives, unmoved, until its
    /// completion is handled. Every op of this module points into a
    /// connection's heap buffers (see `conn`'s docs: not moved, resized or
    /// freed while the op's `in_flight` flag is set), the boxed wake buffer,
    /// or a piece write owned by `writes` until its completion; `Drop` waits
    /// for every op still in flight if `run` ends early.
    unsafe fn push(&mut self, op: Op, data: UserData) {
        // SAFETY: the caller's contract, which is `Backend::push`'s.
        unsafe { self.backend.push(op, data.pack()) };
        self.in_flight += 1;
        self.delta.ring_submissions += 1;
    }

    fn arm_accept(&mut self) {
        if self.shutting_down {
            return;
        }
        let listener = self.listener.as_raw_fd();
        // SAFETY: the listener lives as long as the worker.
        unsafe { self.push(Op::Accept { listener }, UserData::Accept) };
        self.accept_armed = true;
    }

    fn arm_tick(&mut self) {
        // SAFETY: a timeout points to nothing of ours.
        unsafe { self.push(Op::Timeout { after: TICK }, UserData::Tick) };
    }

    fn arm_wake(&mut self) {
        let buf: *mut u64 = &mut *self.wake_buf;
        let op = Op::Read {
            fd: self.wake_fd,
            buf: buf.cast(),
            len: 8,
        };
        // SAFETY: `wake_buf` is boxed and lives as long as the worker (and
        // is leaked by `Drop` if its read cannot be waited for); the eventfd
        // outlives every worker.
        unsafe { self.push(op, UserData::Wake) };
    }

    fn complete(&mut self, data: UserData, result: i32, more: bool) {
        // A multishot accept stays in flight while `more` is set.
        let still_armed = matches!(data, UserData::Accept) && more;
        if !still_armed {
            self.in_flight -= 1;
        }
        match data {
            UserData::Accept => {
                if !still_armed {
                    self.accept_armed = false;
                }
                self.on_accept(result);
                // After an error (out of descriptors, memory...) re-arm at
                // the next tick rather than spin on it.
                if !self.accept_armed && result >= 0 {
                    self.arm_accept();
                }
            }
            UserData::Recv { key, generation } => self.on_recv(key, generation, result),
            UserData::Send { key, generation } => self.on_send(key, generation, result),
            UserData::Tick => self.on_tick(),
            UserData::Connect { key, generation } => self.on_connect(key, generation, result),
            UserData::Write { key, segment } => {
                self.on_write(key as usize, segment as usize, result)
            }
            UserData::Wake => {
                if self.shared.stop.load(Ordering::Acquire) {
                    self.begin_shutdown();
                } else {
                    self.arm_wake();
                    self.take_messages();
                    self.take_checked();
                    self.dial_queued();
                }
            }
            UserData::Ignore => {}
        }
    }

    /// Applies what the control side sent: torrents added or removed, new
    /// settings.
    fn take_messages(&mut self) {
        while let Ok(message) = self.messages.try_recv() {
            match message {
                WorkerMessage::AddTorrent(t) => {
                    self.torrents.insert(t.metainfo.info_hash, t);
                }
                // Its peers go at the next housekeeping (it is retired).
                WorkerMessage::RemoveTorrent(h) => {
                    self.torrents.remove(&h);
                }
                WorkerMessage::Reconfigure(config) => {
                    let now = self.now();
                    let workers = config.workers.max(1) as u64;
                    self.bucket = TokenBucket::new(config.max_upload_rate.div_ceil(workers), now);
                    self.choker.set_config(config.choker_share(self.index));
                    self.leech_choker
                        .set_slots(config.leech_slots_share(self.index));
                    self.config = config;
                }
            }
        }
    }

    fn on_accept(&mut self, result: i32) {
        if result < 0 {
            if result != -libc::ECANCELED {
                let err = io::Error::from_raw_os_error(-result);
                tracing::error!("worker {}: accept failed: {err}", self.index);
            }
            return;
        }
        // SAFETY: a successful accept returns a new descriptor that nothing
        // else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(result) };
        if self.shutting_down {
            return;
        }
        let Some(addr) = peer_addr(&fd) else { return };
        if !self.shared.limits.try_admit(addr.ip(), &self.config) {
            self.delta.dropped_connections += 1;
            return;
        }
        let _ = socket2::SockRef::from(&fd).set_tcp_nodelay(true);
        self.delta.connections_accepted += 1;
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1) & 0x00ff_ffff;
        let now = self.now();
        let key = self.conns.insert(Conn::new(fd, generation, addr, now));
        self.arm_recv(key);
    }

    /// Opens the connections the dial queue asks for (peers from trackers).
    fn dial_queued(&mut self) {
        let room = self.config.max_half_open.saturating_sub(self.half_open);
        let queued: Vec<(InfoHash, SocketAddr)> = {
            let mut queue = self.shared.dial_queues[self.index]
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            // The rest waits for connects to finish (see `on_tick`).
            let n = room.min(queue.len());
            queue.drain(..n).collect()
        };
        for (info_hash, addr) in queued {
            if self.shutting_down {
                return;
            }
            let banned = self
                .torrents
                .get(&info_hash)
                .is_some_and(|t| t.download().is_some_and(|d| d.is_banned(&addr.ip())));
            if banned {
                continue;
            }
            // Already connected to it (either way): once is enough.
            if self.conns.iter().any(|(_, c)| c.addr == addr) {
                continue;
            }
            if !self.shared.limits.try_admit(addr.ip(), &self.config) {
                self.delta.dropped_connections += 1;
                continue;
            }
            let socket = match socket2::Socket::new(
                socket2::Domain::for_address(addr),
                socket2::Type::STREAM.cloexec(),
                Some(socket2::Protocol::TCP),
            ) {
                Ok(s) => s,
                Err(_) => {
                    self.shared.limits.leave(addr.ip());
                    continue;
                }
            };
            let _ = socket.set_tcp_nodelay(true);
            let generation = self.next_generation;
            self.next_generation = self.next_generation.wrapping_add(1) & 0x00ff_ffff;
            let now = self.now();
            let mut conn = Conn::new(socket.into(), generation, addr, now);
            conn.outgoing = Some(info_hash);
            let target = Box::new(socket2::SockAddr::from(addr));
            let op = Op::Connect {
                fd: conn.fd.as_raw_fd(),
                addr: target.as_ptr().cast(),
                len: target.len(),
            };
            conn.connect_to = Some(target);
            conn.connect_in_flight = true;
            self.half_open += 1;
            let key = self.conns.insert(conn);
            let data = UserData::Connect {
                key: key as u32,
                generation,
            };
            // SAFETY: the address is boxed in `connect_to`, kept until the
            // connect completes (`connect_in_flight`).
            unsafe { self.push(op, data) };
        }
    }

    fn on_connect(&mut self, key: u32, generation: u32, result: i32) {
        let peer_id = self.peer_id;
        let now = self.now();
        let Some(conn) = self
            .conns
            .get_mut(key as usize)
            .filter(|c| c.generation == generation)
        else {
            return;
        };
        conn.connect_in_flight = false;
        conn.connect_to = None;
        // The handshake timeout counts from here, not from the dial.
        conn.last_heard = now;
        self.half_open -= 1;
        let key = key as usize;
        if result < 0 || conn.closing {
            self.close(key, None);
            return;
        }
        // We speak first: our handshake names the torrent we dialed for.
        let info_hash = conn
            .outgoing
            .expect("a connect op belongs to an outgoing connection");
        Handshake {
            reserved: Reserved::OURS,
            info_hash,
            peer_id,
        }
        .encode(&mut conn.send.control);
        self.arm_recv(key);
        self.try_send(key);
    }

    fn arm_recv(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        if conn.closing || conn.recv.in_flight {
            return;
        }
        let spare = conn.recv.buf.len() - conn.recv.len;
        debug_assert!(spare > 0);
        let op = Op::Recv {
            fd: conn.fd.as_raw_fd(),
            buf: conn.recv.buf[conn.recv.len..].as_mut_ptr(),
            len: spare as u32,
        };
        let data = UserData::Recv {
            key: key as u32,
            generation: conn.generation,
        };
        conn.recv.in_flight = true;
        // SAFETY: `recv.buf[len..]` is lent to the kernel while
        // `recv.in_flight` is set: not moved, resized or read until then.
        unsafe { self.push(op, data) };
    }

    fn conn_mut(&mut self, key: u32, generation: u32) -> Option<&mut Conn> {
        self.conns
            .get_mut(key as usize)
            .filter(|c| c.generation == generation)
    }

    fn on_recv(&mut self, key: u32, generation: u32, result: i32) {
        let now = self.now();
        let Some(conn) = self.conn_mut(key, generation) else {
            return;
        };
        conn.recv.in_flight = false;
        let key = key as usize;
        if conn.closing {
            self.close(key, None);
            return;
        }
        if result <= 0 {
            // 0: the peer closed; < 0: reset or another socket error.
            self.close(key, None);
            return;
        }
        conn.recv.len += result as usize;
        conn.last_heard = now;
        if let Err(end) = self.process_input(key) {
            self.close(key, Some(end));
            return;
        }
        self.try_send(key);
        self.resume_recv(key);
    }

    /// Arms the next receive unless the peer has made us queue too much:
    /// while a send is in flight and control output piles up, we stop
    /// reading (the send's completion resumes); past the hard limit the
    /// peer is flooding us and is dropped.
    fn resume_recv(&mut self, key: usize) {
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        let pending = match &conn.phase {
            Phase::Active { session, .. } => session.pending_output().len(),
            Phase::Handshake => 0,
        };
        if pending > OUTPUT_LIMIT {
            self.close(key, Some(CloseReason::Violation));
        } else if !(conn.send.in_flight && pending > OUTPUT_HIGH_WATER) {
            self.arm_recv(key);
        }
    }

    /// Parses what has arrived: the handshake, then messages.
    fn process_input(&mut self, key: usize) -> Result<(), CloseReason> {
        let now = self.now();
        let shared = Arc::clone(&self.shared);
        let config = Arc::clone(&self.config);
        let unchoked_leeching = match self.conns[key].phase {
            Phase::Handshake => unchoked_leeching_peers(&self.conns),
            Phase::Active { .. } => 0,
        };
        let conn = &mut self.conns[key];
        let mut consumed = 0;
        if matches!(conn.phase, Phase::Handshake) {
            let hs = match Handshake::decode(&conn.recv.buf[..conn.recv.len]) {
                Ok(None) => return Ok(()),
                Ok(Some(hs)) => hs,
                Err(_) => return Err(CloseReason::NotBitTorrent),
            };
            if conn.outgoing.is_some_and(|h| h != hs.info_hash) {
                return Err(CloseReason::UnknownTorrent);
            }
            if hs.peer_id == self.peer_id {
                // We dialed ourselves (our own address from a tracker).
                return Err(CloseReason::UnknownTorrent);
            }
            let torrent = self
                .torrents
                .get(&hs.info_hash)
                .filter(|t| !t.is_errored())
                .ok_or(CloseReason::UnknownTorrent)?;
            if torrent
                .download()
                .is_some_and(|d| d.is_banned(&conn.addr.ip()))
            {
                return Err(CloseReason::Banned);
            }
            if !shared.limits.try_join_torrent(torrent, &config) {
                return Err(CloseReason::Limit);
            }
            if conn.outgoing.is_none() {
                // Incoming: answer with ours (an outgoing one sent it first).
                let ours = Handshake {
                    reserved: Reserved::OURS,
                    info_hash: hs.info_hash,
                    peer_id: self.peer_id,
                };
                ours.encode(&mut conn.send.control);
            }
            let session = PeerSession::new(
                &hs,
                Some(conn.addr.ip()),
                &View(torrent),
                config.session.clone(),
            );
            if session.is_leeching() {
                // Pieces verified before this worker saw the torrent are in
                // the greeting's bitfield, not owed as `have`s.
                let verified = torrent.download().map_or(0, |d| d.verified_count());
                self.leeching
                    .entry(hs.info_hash)
                    .or_insert_with(|| LeechProgress {
                        announced: verified,
                        ..LeechProgress::default()
                    });
                if conn.recv.buf.len() < DOWNLOAD_RECV_BUF {
                    conn.recv.buf.resize(DOWNLOAD_RECV_BUF, 0);
                }
            }
            conn.phase = Phase::Active {
                torrent: Arc::clone(torrent),
                session: Box::new(session),
            };
            let torrent = Arc::clone(torrent);
            torrent_delta(&mut self.torrent_deltas, &torrent).peers += 1;
            self.delta.peers += 1;
            consumed = wire::HANDSHAKE_LEN;
            let free_slot = if torrent.is_downloading() {
                // Tit-for-tat needs a round to measure; until the choker's
                // next round, a free slot goes to whoever comes.
                let share = config.leech_slots_share(self.index);
                share == 0 || unchoked_leeching < share
            } else {
                config.upload_slots == 0
            };
            if free_slot {
                // Without slot limits there is nothing to wait for: unchoke
                // now instead of at the next choker round.
                if let Phase::Active { session, .. } = &mut conn.phase {
                    session.set_choking(false);
                }
                conn.choke_changed = self.started.elapsed();
            }
        }
        let peer = peer_key(self.index, key, conn.generation);
        let ip = conn.addr.ip();
        let Phase::Active { torrent, session } = &mut conn.phase else {
            unreachable!("handshake handled above")
        };
        let max_frame = max_frame_len(torrent);
        let mut complete_pieces = Vec::new();
        let result = loop {
            match wire::decode(&conn.recv.buf[consumed..conn.recv.len], max_frame) {
                Ok(Some((msg, used))) => {
                    match session.on_message(msg, &View(torrent)) {
                        Ok(Event::None | Event::MayRequest) => {}
                        Ok(event) => {
                            let mut received = 0;
                            if let Some(mut download) = torrent.download() {
                                match event {
                                    Event::HasPiece(piece) => {
                                        download.picker.add_peer_piece(piece);
                                        if download.picker.wants(piece) {
                                            session.set_interested(true);
                                        }
                                    }
                                    Event::HasPieces(has) => {
                                        download.picker.add_peer(&has);
                                        let interesting = download.picker.is_interesting(&has);
                                        session.set_interested(interesting);
                                    }
                                    Event::Block { req, data } => {
                                        received = u64::from(req.length);
                                        session.block_arrived(now);
                                        complete_pieces
                                            .extend(download.on_block(peer, ip, &req, data));
                                    }
                                    Event::Lost(reqs) => {
                                        for req in &reqs {
                                            download.picker.release(peer, req);
                                        }
                                    }
                                    Event::None | Event::MayRequest => {}
                                }
                            }
                            if received > 0 {
                                self.delta.blocks_received += 1;
                                self.delta.bytes_received += received;
                            }
                        }
                        Err(end) => {
                            break Err(match end {
                                SessionEnd::Violation(_) => CloseReason::Violation,
                                SessionEnd::PeerIsSeed => CloseReason::PeerIsSeed,
                            });
                        }
                    }
                    consumed += used;
                }
                Ok(None) => break Ok(()),
                Err(_) => break Err(CloseReason::Violation),
            }
        };
        for piece in complete_pieces {
            let job = CheckJob {
                torrent: Arc::clone(torrent),
                piece,
                worker: self.index,
            };
            // The pool lives as long as any worker.
            let _ = self.check_tx.send(job);
        }
        if result.is_ok() && session.is_leeching() {
            request_more(
                torrent,
                session,
                peer,
                self.started.elapsed(),
                &mut self.rng,
            );
        }
        // Keep the unparsed tail at the front; grow the buffer if the next
        // frame is larger than it (bounded by `max_frame`).
        conn.recv.buf.copy_within(consumed..conn.recv.len, 0);
        conn.recv.len -= consumed;
        if result.is_ok() && conn.recv.len >= 4 {
            // `decode` accepted this prefix, so `need` is within `max_frame`.
            let prefix = &conn.recv.buf[..4];
            let need = 4 + u32::from_be_bytes(prefix.try_into().expect("4 bytes")) as usize;
            debug_assert!(need <= 4 + max_frame as usize);
            if need > conn.recv.buf.len() {
                conn.recv.buf.resize(need, 0);
            }
        }
        result
    }

    /// Starts a send if the connection has anything to send and none is in
    /// flight.
    fn try_send(&mut self, key: usize) {
        let now = self.now();
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.closing || conn.send.in_flight {
            return;
        }
        let send = &mut conn.send;
        let mut cold = false;
        let mut throttled = false;
        let mut payload = 0u64;
        if let Phase::Active { torrent, session } = &mut conn.phase {
            if torrent.is_errored() {
                return;
            }
            session.drain_output_into(&mut send.control);
            // Room for the control iovec, then 2+ iovecs per block.
            while payload < MAX_SEND_BYTES {
                let Some(req) = session.pop_request() else {
                    break;
                };
                // A header, the block's file segments, and the control iovec.
                let needed = 2 + torrent.block_segments(&req);
                if needed > IOV_MAX {
                    session.reject(req);
                    continue;
                }
                if send.blocks > 0 && send.iov.len() + needed > MAX_SEND_IOVECS {
                    session.unpop_request(req);
                    break;
                }
                if !self.bucket.try_take(u64::from(req.length), now) {
                    self.rate_wanted = true;
                    session.unpop_request(req);
                    throttled = true;
                    break;
                }
                send.headers
                    .push(wire::piece_header(req.piece, req.offset, req.length));
                if !torrent.is_resident(&req) {
                    self.delta.cache_misses += 1;
                    let covered = conn.prefetched.is_some_and(|(piece, start, end)| {
                        piece == req.piece && req.offset >= start && req.offset + req.length <= end
                    });
                    if !covered {
                        self.delta.prefetches += 1;
                        let end = torrent.prefetch(&req);
                        conn.prefetched = Some((req.piece, req.offset, end));
                    }
                    cold = true;
                }
                // Header iovecs are filled in below, once `headers` stops
                // growing (its buffer may move while it grows).
                send.iov.push(libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: PIECE_HEADER_LEN,
                });
                torrent.block_iovecs(&req, &mut send.iov);
                payload += u64::from(req.length);
                send.blocks += 1;
            }
            if send.blocks > 0 {
                send.torrent = Some(Arc::clone(torrent));
            }
        }
        if throttled {
            self.throttled.push(key);
        }
        if send.control.is_empty() && send.blocks == 0 {
            return;
        }
        // Fill in header pointers now that `headers` is final.
        let mut headers = send.headers.iter();
        for v in send.iov.iter_mut().filter(|v| v.iov_base.is_null()) {
            let h = headers.next().expect("one header per null iovec");
            v.iov_base = h.as_ptr() as *mut libc::c_void;
        }
        if !send.control.is_empty() {
            send.iov.insert(
                0,
                libc::iovec {
                    iov_base: send.control.as_mut_ptr().cast(),
                    iov_len: send.control.len(),
                },
            );
        }
        send.remaining = send.iov.iter().map(|v| v.iov_len).sum();
        send.cold = cold;
        conn.last_sent = now;
        self.submit_send(key);
    }

    fn submit_send(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        conn.send.prepare();
        let op = Op::SendMsg {
            fd: conn.fd.as_raw_fd(),
            msg: &*conn.send.msg,
            // Pages are being read from disk: the backend waits for them
            // off this thread.
            cold: conn.send.cold,
        };
        let data = UserData::Send {
            key: key as u32,
            generation: conn.generation,
        };
        conn.send.in_flight = true;
        // SAFETY: the msghdr, iovecs, headers and control bytes are the
        // connection's heap buffers, untouched while `send.in_flight` is
        // set; `send.torrent` keeps the mapping alive.
        unsafe { self.push(op, data) };
    }

    fn on_send(&mut self, key: u32, generation: u32, result: i32) {
        let Some(conn) = self.conn_mut(key, generation) else {
            return;
        };
        conn.send.in_flight = false;
        let key = key as usize;
        if result < 0 {
            if result == -libc::EFAULT {
                // The kernel could not read the mapping: a file shrank.
                if let Some(t) = conn.send.torrent.clone() {
                    if t.check_files() {
                        t.set_errored("a file could not be read while sending".into());
                    }
                }
            }
            self.close(key, None);
            return;
        }
        let sent = result as usize;
        self.delta.bytes_sent += sent as u64;
        // Counted to the connection's own torrent (not to one by the same
        // info-hash that replaced it); disjoint fields, no `Arc` clone.
        if let Some(t) = self.conns[key].torrent() {
            torrent_delta(&mut self.torrent_deltas, t).bytes_sent += sent as u64;
        }
        let conn = &mut self.conns[key];
        if conn.closing {
            self.close(key, None);
            return;
        }
        if sent < conn.send.remaining {
            // The socket buffer filled up: send the rest, still in io-wq if
            // its pages were cold.
            conn.send.advance(sent);
            self.submit_send(key);
            return;
        }
        let blocks = conn.send.blocks;
        // A piece header's length field is 9 + the block length.
        let block_bytes: u64 = conn
            .send
            .headers
            .iter()
            .map(|h| u64::from(u32::from_be_bytes([h[0], h[1], h[2], h[3]]) - 9))
            .sum();
        conn.served_since_unchoke += block_bytes;
        conn.send.reset();
        self.delta.blocks_sent += blocks;
        if let Some(t) = self.conns[key].torrent() {
            torrent_delta(&mut self.torrent_deltas, t).blocks_sent += blocks;
        }
        self.try_send(key);
        // Reading may have paused for this send to complete.
        if !self.conns[key].recv.in_flight {
            self.resume_recv(key);
        }
    }

    /// Closes a connection: now if no op is in flight, else once they
    /// complete (the socket is shut down so they do soon).
    fn close(&mut self, key: usize, reason: Option<CloseReason>) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if !conn.closing {
            conn.closing = true;
            match reason {
                Some(CloseReason::Violation) => self.delta.protocol_errors += 1,
                Some(CloseReason::NotBitTorrent) => self.delta.not_bittorrent += 1,
                Some(CloseReason::Limit | CloseReason::TorrentErrored | CloseReason::Banned) => {
                    self.delta.dropped_connections += 1
                }
                _ => {}
            }
            if reason == Some(CloseReason::Violation) {
                if let Some(t) = conn.torrent() {
                    torrent_delta(&mut self.torrent_deltas, t).protocol_errors += 1;
                }
            }
        }
        if conn.has_ops_in_flight() {
            // SAFETY: shutting down a socket we own; in-flight ops complete
            // with an error or 0 and the buffers stay alive until then.
            unsafe { libc::shutdown(conn.fd.as_raw_fd(), libc::SHUT_RDWR) };
            if conn.connect_in_flight {
                // A connect in SYN_SENT may not notice the shutdown.
                let target = UserData::Connect {
                    key: key as u32,
                    generation: conn.generation,
                };
                let op = Op::Cancel {
                    target: target.pack(),
                    fd: conn.fd.as_raw_fd(),
                };
                // SAFETY: a cancellation points to nothing of ours.
                unsafe { self.push(op, UserData::Ignore) };
            }
            return;
        }
        let conn = self.conns.remove(key);
        self.backend.forget_fd(conn.fd.as_raw_fd());
        self.shared.limits.leave(conn.addr.ip());
        if let Phase::Active {
            torrent,
            mut session,
        } = conn.phase
        {
            if session.is_leeching() {
                let peer = peer_key(self.index, key, conn.generation);
                let lost = session.withdraw_all(false);
                if let (Some(mut download), Some(leech)) = (torrent.download(), session.leech()) {
                    for req in &lost {
                        download.picker.release(peer, req);
                    }
                    download.picker.remove_peer(&leech.peer_has);
                }
            }
            let counters = session.counters();
            let d = torrent_delta(&mut self.torrent_deltas, &torrent);
            d.peers -= 1;
            d.rejected_requests += counters.rejected_requests;
            d.metadata_pieces_served += counters.metadata_pieces_served;
            self.delta.peers -= 1;
            self.delta.rejected_requests += counters.rejected_requests;
            self.delta.metadata_pieces_served += counters.metadata_pieces_served;
            self.shared.limits.leave_torrent(&torrent);
        }
        // Dropping `conn` closes the socket.
    }

    /// Takes the verdicts of the checking pool: writes good pieces, has
    /// bad ones fetched again.
    fn take_checked(&mut self) {
        let checked = std::mem::take(
            &mut *self.shared.checked[self.index]
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for c in checked {
            let piece = c.piece.piece;
            let banned = {
                let Some(mut download) = c.torrent.download() else {
                    continue;
                };
                if !c.good {
                    download.on_hash_failed(piece, &c.piece.data)
                } else if self.shutting_down || c.torrent.is_errored() {
                    // Not written, so not verified: fetched next time.
                    download.on_write_failed(piece);
                    Vec::new()
                } else {
                    download.on_hash_passed(piece, &c.piece.data)
                }
            };
            if !banned.is_empty() {
                for ip in &banned {
                    tracing::warn!(
                        "banned {ip} from {}: it sent data that failed the hash check",
                        c.torrent.metainfo.info.name
                    );
                }
                c.torrent.note_ban();
            }
            if c.good && !self.shutting_down && !c.torrent.is_errored() {
                self.write_piece(c.torrent, c.piece);
            } else if let Some(mut download) = c.torrent.download() {
                download.recycle(c.piece.data);
            }
        }
    }

    /// Writes a verified piece through the ring, one op per file it spans.
    fn write_piece(&mut self, torrent: Arc<Torrent>, piece: CompletePiece) {
        let Some(segments) = torrent.piece_writes(piece.piece) else {
            torrent.set_errored(format!("piece {} has no file to go to", piece.piece));
            return;
        };
        let count = segments.len();
        let key = self.writes.insert(PieceWrite {
            torrent,
            piece,
            segments,
            in_flight: 0,
            error: None,
        });
        if count == 0 {
            // All in pad files: nothing to write.
            self.finish_write(key);
        }
        for segment in 0..count {
            self.submit_write(key, segment);
        }
    }

    fn submit_write(&mut self, key: usize, segment: usize) {
        let w = &mut self.writes[key];
        let (fd, file_offset, at, len) = w.segments[segment];
        // The buffer is `w.piece.data`, owned by `self.writes` until every
        // write of the piece has completed (`finish_write`).
        let op = Op::Write {
            fd,
            buf: w.piece.data[at..].as_ptr(),
            len: len as u32,
            offset: file_offset,
        };
        let data = UserData::Write {
            key: key as u32,
            segment: segment as u32,
        };
        w.in_flight += 1;
        // SAFETY: the piece's buffer is owned by `writes` until every write
        // of it has completed; its torrent's `Arc` keeps the file open.
        unsafe { self.push(op, data) };
    }

    fn on_write(&mut self, key: usize, segment: usize, result: i32) {
        let Some(w) = self.writes.get_mut(key) else {
            return;
        };
        w.in_flight -= 1;
        let (_, _, _, len) = w.segments[segment];
        if result < 0 {
            w.error.get_or_insert(io::Error::from_raw_os_error(-result));
        } else if result == 0 && len > 0 {
            w.error
                .get_or_insert(io::Error::from(io::ErrorKind::WriteZero));
        } else if (result as usize) < len && w.error.is_none() {
            // A short write: write the rest.
            let n = result as usize;
            let seg = &mut w.segments[segment];
            seg.1 += n as u64;
            seg.2 += n;
            seg.3 -= n;
            self.submit_write(key, segment);
            return;
        }
        if w.in_flight == 0 {
            self.finish_write(key);
        }
    }

    /// Every write of a piece has completed: it is verified, or, if a
    /// write failed (disk full, I/O error), the torrent stops with that
    /// error and the piece stays missing.
    fn finish_write(&mut self, key: usize) {
        let w = self.writes.remove(key);
        let piece = w.piece.piece;
        let Some(mut download) = w.torrent.download() else {
            return;
        };
        match w.error {
            Some(e) => {
                download.recycle(w.piece.data);
                download.on_write_failed(piece);
                drop(download);
                w.torrent
                    .set_errored(format!("cannot write piece {piece} to disk: {e}"));
            }
            None => {
                // Verified first: once the download is done, the buffer is
                // not kept.
                w.torrent.mark_verified(&mut download, piece);
                download.recycle(w.piece.data);
            }
        }
    }

    /// Per tick, for each torrent being downloaded: `have` for pieces
    /// verified since the last tick, interest, endgame cancels, bans, more
    /// requests; and the switch to seeding once complete.
    fn leech_tick(&mut self, now: Duration) {
        let hashes: Vec<InfoHash> = self.leeching.keys().copied().collect();
        for info_hash in hashes {
            let Some(torrent) = self.torrents.get(&info_hash).cloned() else {
                continue;
            };
            let progress = self.leeching.get_mut(&info_hash).expect("listed above");
            let (new_pieces, banned, endgame) = {
                let Some(download) = torrent.download() else {
                    continue;
                };
                let new_pieces = download.verified_since(progress.announced).to_vec();
                let epoch = torrent.ban_epoch();
                let banned: Vec<std::net::IpAddr> = if epoch != progress.ban_epoch {
                    progress.ban_epoch = epoch;
                    download.banned().copied().collect()
                } else {
                    Vec::new()
                };
                (new_pieces, banned, download.picker.in_endgame())
            };
            progress.announced += new_pieces.len();
            let complete = torrent.is_complete();
            let became_complete = complete && !progress.complete;
            progress.complete = complete;
            if complete && !became_complete && new_pieces.is_empty() {
                self.leeching.remove(&info_hash);
                continue;
            }
            let keys: Vec<usize> = self
                .conns
                .iter()
                .filter(|(_, c)| {
                    !c.closing && c.torrent().is_some_and(|t| Arc::ptr_eq(t, &torrent))
                })
                .map(|(k, _)| k)
                .collect();
            let mut to_close = Vec::new();
            for &key in &keys {
                let conn = &mut self.conns[key];
                let peer = peer_key(self.index, key, conn.generation);
                if banned.contains(&conn.addr.ip()) {
                    to_close.push((key, CloseReason::Banned));
                    continue;
                }
                let Phase::Active { session, .. } = &mut conn.phase else {
                    continue;
                };
                for &piece in &new_pieces {
                    session.announce_have(piece);
                }
                if !session.is_leeching() {
                    continue;
                }
                if became_complete {
                    if session.peer_is_seed() {
                        to_close.push((key, CloseReason::BothSeeds));
                    } else {
                        session.finish_download();
                    }
                    continue;
                }
                if !new_pieces.is_empty() || endgame {
                    let Some(download) = torrent.download() else {
                        continue;
                    };
                    let leech = session.leech().expect("leeching");
                    let interesting = download.picker.is_interesting(&leech.peer_has);
                    let done: Vec<_> = if endgame {
                        leech
                            .outstanding
                            .iter()
                            .filter(|o| download.picker.is_received(&o.req))
                            .map(|o| o.req)
                            .collect()
                    } else {
                        Vec::new()
                    };
                    drop(download);
                    session.set_interested(interesting);
                    for req in &done {
                        session.cancel(req);
                    }
                }
                request_more(&torrent, session, peer, now, &mut self.rng);
            }
            for (key, reason) in to_close {
                self.close(key, Some(reason));
            }
            for key in keys {
                self.try_send(key);
            }
        }
    }

    fn on_tick(&mut self) {
        let now = self.now();
        if self.shutting_down {
            return;
        }
        self.arm_tick();
        self.shared.heartbeat(self.index);
        if !self.accept_armed {
            // Re-arm after running out of descriptors, at most once a tick.
            self.arm_accept();
        }
        if !self.leeching.is_empty() {
            self.leech_tick(now);
        }
        if self.half_open < self.config.max_half_open {
            // Dials held back by the half-open limit.
            self.dial_queued();
        }
        for key in std::mem::take(&mut self.throttled) {
            self.try_send(key);
        }
        if now.saturating_sub(self.last_rechoke) >= self.config.rechoke_every {
            self.last_rechoke = now;
            self.rechoke(now);
        }
        if now.saturating_sub(self.last_housekeeping) >= HOUSEKEEPING_EVERY {
            self.last_housekeeping = now;
            self.housekeeping(now);
        }
    }

    /// Moves this worker's share of the upload rate to where the demand is
    /// (see `worker_share`).
    fn rebalance_rate(&mut self) {
        let rate = self.config.max_upload_rate;
        if rate == 0 {
            return;
        }
        let used = self.bucket.take_used();
        let wanted = std::mem::take(&mut self.rate_wanted)
            || used > rate.div_ceil(self.config.workers.max(1) as u64);
        self.shared.rate_wanted[self.index].store(wanted, Ordering::Relaxed);
        let wanting = self
            .shared
            .rate_wanted
            .iter()
            .filter(|w| w.load(Ordering::Relaxed))
            .count();
        self.bucket
            .set_rate(worker_share(rate, self.config.workers, wanting, wanted));
    }

    fn housekeeping(&mut self, now: Duration) {
        self.rebalance_rate();
        if self.index == 0 {
            // One worker checks file sizes for everyone.
            for t in self.torrents.values() {
                t.check_files();
            }
        }
        let mut to_close = Vec::new();
        let mut to_send = Vec::new();
        let elapsed = now.saturating_sub(self.last_rate_tick);
        self.last_rate_tick = now;
        for (key, conn) in self.conns.iter_mut() {
            if conn.closing {
                continue;
            }
            let silent = now.saturating_sub(conn.last_heard);
            match &mut conn.phase {
                Phase::Handshake
                    if conn.connect_in_flight && silent >= self.config.connect_timeout =>
                {
                    to_close.push((key, CloseReason::Idle))
                }
                Phase::Handshake if silent >= HANDSHAKE_TIMEOUT => {
                    to_close.push((key, CloseReason::Idle))
                }
                Phase::Handshake => {}
                Phase::Active { torrent, .. } if torrent.is_errored() => {
                    to_close.push((key, CloseReason::TorrentErrored))
                }
                Phase::Active { .. } if silent >= IDLE_TIMEOUT => {
                    to_close.push((key, CloseReason::Idle))
                }
                Phase::Active { session, torrent } => {
                    if session.is_leeching() {
                        session.tick(elapsed);
                        let lost = session.check_snub(now, self.config.request_timeout);
                        if !lost.is_empty() {
                            let peer = peer_key(self.index, key, conn.generation);
                            if let Some(mut download) = torrent.download() {
                                for req in &lost {
                                    download.picker.release(peer, req);
                                }
                            }
                            to_send.push(key);
                        }
                    }
                    if now.saturating_sub(conn.last_sent) >= KEEPALIVE_AFTER
                        && session.pending_output().is_empty()
                    {
                        session.keep_alive();
                        to_send.push(key);
                    }
                }
            }
        }
        for (key, reason) in to_close {
            self.close(key, Some(reason));
        }
        for key in to_send {
            self.try_send(key);
        }
        self.flush_stats();
    }

    fn flush_stats(&mut self) {
        self.count_unchoked();
        if !self.delta.is_empty() {
            self.shared.worker_stats[self.index].add(&self.delta);
            self.delta = StatsDelta::default();
        }
        for (torrent, delta) in self.torrent_deltas.values_mut() {
            if !delta.is_empty() {
                torrent.stats.add(delta);
                *delta = StatsDelta::default();
            }
        }
        self.torrent_deltas
            .retain(|_, (t, _)| Arc::strong_count(t) > 1);
    }

    /// Turns the number of peers unchoked now, per torrent and in all, into
    /// gauge changes since the last flush.
    fn count_unchoked(&mut self) {
        // Keyed by the torrent itself: a replacement shares the info-hash.
        let mut now: HashMap<*const Torrent, (Arc<Torrent>, i64)> = HashMap::new();
        for (_, c) in self.conns.iter() {
            if let Phase::Active { session, torrent } = &c.phase {
                if !c.closing && !session.is_choking() {
                    now.entry(Arc::as_ptr(torrent))
                        .or_insert_with(|| (Arc::clone(torrent), 0))
                        .1 += 1;
                }
            }
        }
        let total: i64 = now.values().map(|(_, n)| n).sum();
        self.delta.unchoked += total - self.reported_unchoked.values().map(|(_, n)| n).sum::<i64>();
        for (hash, (torrent, n)) in &now {
            let before = self.reported_unchoked.get(hash).map_or(0, |(_, n)| *n);
            if *n != before {
                torrent_delta(&mut self.torrent_deltas, torrent).unchoked += n - before;
            }
        }
        let gone: Vec<(Arc<Torrent>, i64)> = self
            .reported_unchoked
            .iter()
            .filter(|(hash, _)| !now.contains_key(*hash))
            .map(|(_, (t, n))| (Arc::clone(t), *n))
            .collect();
        for (torrent, before) in gone {
            torrent_delta(&mut self.torrent_deltas, &torrent).unchoked -= before;
        }
        self.reported_unchoked = now;
    }

    /// Seeded torrents rotate slots round-robin; downloaded ones reward
    /// the peers that give us the most (tit-for-tat).
    fn rechoke(&mut self, now: Duration) {
        let mut seeding = Vec::new();
        let mut leeching = Vec::new();
        for (key, c) in self.conns.iter_mut().filter(|(_, c)| !c.closing) {
            let Phase::Active { session, torrent } = &mut c.phase else {
                continue;
            };
            let candidate = Candidate {
                key: key as u64,
                interested: session.is_interested(),
                unchoked: !session.is_choking(),
                served_since_unchoke: c.served_since_unchoke,
                since: c.choke_changed,
                received: session.take_received_since_rechoke(),
            };
            if torrent.is_downloading() {
                leeching.push(candidate);
            } else {
                seeding.push(candidate);
            }
        }
        let mut rng = self.rng;
        let mut decisions = self
            .choker
            .rechoke(now, &seeding, &mut |n| next_random(&mut rng, n));
        decisions.extend(
            self.leech_choker
                .rechoke(now, &leeching, &mut |n| next_random(&mut rng, n)),
        );
        self.rng = rng;
        for (key, unchoke) in decisions {
            let conn = &mut self.conns[key as usize];
            if let Phase::Active { session, .. } = &mut conn.phase {
                session.set_choking(!unchoke);
                conn.choke_changed = now;
                conn.served_since_unchoke = 0;
            }
            self.try_send(key as usize);
        }
    }

    fn begin_shutdown(&mut self) {
        if self.shutting_down {
            return;
        }
        self.shutting_down = true;
        if self.accept_armed {
            let op = Op::Cancel {
                target: UserData::Accept.pack(),
                fd: self.listener.as_raw_fd(),
            };
            // SAFETY: a cancellation points to nothing of ours.
            unsafe { self.push(op, UserData::Ignore) };
        }
        // The pending tick completes within one period; nothing re-arms it.
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.close(key, None);
        }
    }
}

impl<B: Backend> Drop for Worker<B> {
    /// A worker leaves `run` with ops in flight only on an error or a panic;
    /// those ops point into buffers owned here. Cancel them all and wait for
    /// their completions before anything is freed; if even that fails, leak
    /// the buffers rather than let the kernel write into freed memory.
    fn drop(&mut self) {
        if self.in_flight == 0 {
            return;
        }
        for (_, conn) in self.conns.iter() {
            // SAFETY: shutting down sockets we own; nothing is freed here.
            unsafe { libc::shutdown(conn.fd.as_raw_fd(), libc::SHUT_RDWR) };
        }
        self.in_flight = self.backend.cancel_all_and_wait(self.in_flight);
        if self.in_flight > 0 {
            std::mem::forget(std::mem::take(&mut self.conns));
            std::mem::forget(std::mem::replace(&mut self.wake_buf, Box::new(0)));
            std::mem::forget(std::mem::take(&mut self.writes));
        }
    }
}

/// Why a connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CloseReason {
    Violation,
    /// The first bytes were not a BitTorrent handshake (an encrypted MSE
    /// handshake, which clients retry in plain text, or not BitTorrent).
    NotBitTorrent,
    UnknownTorrent,
    PeerIsSeed,
    Limit,
    TorrentErrored,
    Idle,
    /// The peer's address sent us bad data too often.
    Banned,
    /// Both sides are seeds.
    BothSeeds,
}

/// The largest frame a peer may send us: a bitfield of the torrent, or an
/// extension message (metadata requests are tiny; handshakes a few KiB).
fn max_frame_len(torrent: &Torrent) -> u32 {
    (torrent.layout.num_pieces().div_ceil(8) + 1).max(64 << 10)
}

fn peer_addr(fd: &OwnedFd) -> Option<SocketAddr> {
    let addr = socket2::SockRef::from(fd).peer_addr().ok()?.as_socket()?;
    // Show v4-mapped IPv6 addresses as plain IPv4.
    Some(match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => addr,
        },
        v4 => v4,
    })
}

/// A worker's tally for `torrent` in `deltas`. A torrent replaced by a newer
/// copy with the same info-hash gets its own tally (the old one is flushed).
fn torrent_delta<'a>(
    deltas: &'a mut HashMap<InfoHash, (Arc<Torrent>, StatsDelta)>,
    torrent: &Arc<Torrent>,
) -> &'a mut StatsDelta {
    let entry = deltas
        .entry(torrent.metainfo.info_hash)
        .or_insert_with(|| (Arc::clone(torrent), StatsDelta::default()));
    if !Arc::ptr_eq(&entry.0, torrent) {
        entry.0.stats.add(&entry.1);
        *entry = (Arc::clone(torrent), StatsDelta::default());
    }
    &mut entry.1
}

/// Connections of torrents being downloaded that we unchoke.
fn unchoked_leeching_peers(conns: &Slab<Conn>) -> usize {
    conns
        .iter()
        .filter(|(_, c)| match &c.phase {
            Phase::Active { torrent, session } => {
                !c.closing && torrent.is_downloading() && !session.is_choking()
            }
            Phase::Handshake => false,
        })
        .count()
}

/// The key of connection `key` of worker `worker` in the shared picker.
fn peer_key(worker: usize, key: usize, generation: u32) -> PeerKey {
    (worker as u64) << 56 | u64::from(generation & 0x00ff_ffff) << 32 | key as u64
}

/// A random index below `n` from a xorshift generator.
fn next_random(rng: &mut u64, n: usize) -> usize {
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    (*rng % n.max(1) as u64) as usize
}

/// Tops up a downloading session's requests from the shared picker.
fn request_more(
    torrent: &Torrent,
    session: &mut PeerSession,
    peer: PeerKey,
    now: Duration,
    rng: &mut u64,
) {
    let Some((room, pieces)) = session.request_room() else {
        return;
    };
    let reqs = match torrent.download() {
        // The disk is behind: finish the pieces started (which frees their
        // buffers), start none.
        Some(mut download) if download.over_memory_budget() => {
            download.picker.pick_started(peer, &pieces, room)
        }
        Some(mut download) => download
            .picker
            .pick(peer, &pieces, room, &mut |n| next_random(rng, n)),
        None => return,
    };
    if !reqs.is_empty() {
        session.request(&reqs, now);
    }
}

/// A random u64 from the kernel, for seeding per-worker generators.
pub fn random_u64() -> u64 {
    let mut buf = [0u8; 8];
    // SAFETY: getrandom writes at most `buf.len()` bytes into `buf`.
    unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    u64::from_ne_bytes(buf)
}
