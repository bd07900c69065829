//! One data-plane worker: a thread pinned to a core, with its own backend
//! (an io_uring, or an epoll instance), its own SO_REUSEPORT listener and
//! the connections it accepted. Nothing on its per-block path takes a lock
//! or writes memory another worker writes. It never calls the kernel for a
//! connection itself: it pushes `Op`s and handles their completions.
//!
//! Anatomy of seeding a block:
//! 1. a multishot accept yields a socket; a receive is armed on it;
//! 2. the received bytes go to the connection's `PeerConnection`: the
//!    handshake names a torrent; we answer with ours, the extension
//!    handshake and `have_all` (or a bitfield);
//! 3. `request` messages are validated by its `PeerSession` and queued;
//! 4. `try_send` asks the `PeerConnection` for a `SendPlan` (control bytes,
//!    then queued requests within the rate limit and the send's room), and
//!    the connection's `Transport` renders it: for TCP a 13-byte header
//!    iovec and iovecs into the file mapping per block, submitted with the
//!    control bytes as one `sendmsg`: adjacent requests share one
//!    submission;
//! 5. if a block's pages are not in the page cache, they are prefetched
//!    (`MADV_WILLNEED`, exactly those pages) and the send is marked cold,
//!    so any wait for the disk happens in an io-wq kernel thread (io_uring)
//!    or a helper thread (epoll), never on this thread;
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

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use slab::Slab;

use super::conn::{Conn, Dial};
use super::control::Dialer;
use super::peer::{our_reserved, CloseReason, Env, LeechNews, PeerConnection, SendRoom, Tally};
use super::transport::{self, mse_methods, Arrived, Inbound, Transport, TransportKind};
use super::{Backend, Completion, Op, UserData};
use crate::io::net::peer_addr;
use crate::io::plane::shared::{
    CheckJob, MetadataFetch, PlaneConfig, Refusal, Shared, WorkerMessage,
};
use crate::io::storage::{FileSegment, Torrent};
use crate::policy::choker::{Choker, LeechChoker};
use crate::policy::download::CompletePiece;
use crate::policy::pex::{PexEntry, MAX_TOLD};
use crate::policy::picker::PeerKey;
use crate::policy::rate_limit::{worker_share, TokenBucket};
use crate::proto::info_hash::InfoHash;
use crate::proto::pex::FLAG_ENCRYPTION;
use crate::rng;

/// The `Env` a connection borrows from worker `$w` for one call: a macro,
/// not a method, so the borrow is of the fields it names and the worker's
/// connections stay free to lend.
macro_rules! env {
    ($w:expr) => {
        Env {
            worker: $w.index,
            now: $w.started.elapsed(),
            peer_id: $w.peer_id,
            config: &$w.config,
            limits: &$w.shared.limits,
            torrents: &$w.torrents,
            fetching: &$w.fetching,
            tally: &mut $w.tally,
            rng: &mut $w.rng,
        }
    };
}

/// Most bytes of blocks in one `sendmsg`: large sends are cheapest per byte
/// on loopback (28-30 Gbit/s at 256 KiB vs ~23 at 16 KiB).
const MAX_SEND_BYTES: u64 = 256 << 10;
/// Most bytes of blocks in one send of an encrypted stream: its buffer is
/// written by the read, rewritten by RC4 and read by the send, and stays in
/// the core's cache between them only if it is small.
const MAX_ENCRYPTED_SEND_BYTES: u64 = 32 << 10;
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
/// A connection in its handshake is evicted for a new one only once it is
/// this old (a burst of new connections does not evict each other).
const EVICT_AFTER: Duration = Duration::from_secs(1);
/// Connections being closed (holding descriptors) past which a full worker
/// refuses new connections instead of evicting more.
const EVICTIONS_IN_FLIGHT: usize = 8;
/// Connections in their handshake closed when an accept finds no
/// descriptor left.
const EVICT_ON_EMFILE: usize = 8;
/// Failed accepts are logged at most this often (with their count).
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(10);

/// How long the peers learned through peer exchange are remembered (and
/// not dialed again for it): 30 minutes, then the 200-per-torrent budget
/// starts afresh.
const FORGET_EXCHANGED_EVERY: Duration = Duration::from_secs(30 * 60);
/// Timer period: rate-limit refills and housekeeping.
const TICK: Duration = Duration::from_millis(100);
/// Stats flush, file checks, keep-alives and idle checks.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(1);
/// Segment writes of one piece in flight at most (each holds a descriptor).
const WRITES_PER_PIECE: usize = 8;
/// Files of each torrent whose size and identity housekeeping checks.
const FILES_CHECKED_EVERY_SECOND: usize = 64;
/// Receive buffer of a connection of a torrent being downloaded: room for
/// many blocks per receive.
const DOWNLOAD_RECV_BUF: usize = 256 << 10;

/// A verified piece being written: its buffer is read by the kernel until
/// every segment's write has completed.
struct PieceWrite {
    torrent: Arc<Torrent>,
    piece: CompletePiece,
    /// What is still to write.
    segments: Vec<FileSegment>,
    /// The file of each segment whose write is in flight, held open until
    /// it completes.
    files: Vec<Option<Arc<std::fs::File>>>,
    /// Whether that file is open with `O_DIRECT`.
    direct: Vec<bool>,
    /// The next segment to submit: at most [`WRITES_PER_PIECE`] are in
    /// flight, so a piece spanning 1,000 files holds a few descriptors.
    next: usize,
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
    config: Arc<PlaneConfig>,
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
    /// When to give memory back after a burst of connections.
    burst: crate::memory::BurstWatch,
    /// Connections with requests waiting for rate-limit tokens.
    throttled: Vec<usize>,
    tally: Tally,
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
    /// Connections marked closing and not yet removed (their descriptors
    /// are still open).
    closing: usize,
    /// When a failed accept was last logged, and failures since.
    last_accept_log: Option<Duration>,
    accept_errors_unlogged: u64,
    /// This worker's copy of the torrents served, kept current by
    /// `messages`: finding a torrent never takes a lock.
    torrents: HashMap<InfoHash, Arc<Torrent>>,
    /// Magnet links whose metadata connections of this worker fetch.
    fetching: HashMap<InfoHash, Arc<MetadataFetch>>,
    /// The torrents of `torrents` and `fetching` by the key an MSE peer
    /// names them by (HASH('req2', info-hash)), rebuilt when they change.
    skeys: HashMap<[u8; 20], InfoHash>,
    /// Dials that failed before the peer's handshake, to try once more the
    /// other way (plain text or MSE): (torrent, peer, encrypted).
    redials: Vec<(InfoHash, SocketAddr, bool)>,
    /// Peers learned through peer exchange, per torrent (at most
    /// [`MAX_TOLD`] each), so that no one source fills the dial queue and
    /// no peer is dialed twice for it; forgotten every
    /// [`FORGET_EXCHANGED_EVERY`], so that a long-running seed keeps
    /// learning as its swarm changes.
    exchanged: HashMap<InfoHash, HashSet<SocketAddr>>,
    /// When `exchanged` was last forgotten.
    exchanged_since: Duration,
    /// Hands peers learned through peer exchange to the workers.
    dialer: Dialer,
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
        config: Arc<PlaneConfig>,
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
            burst: Default::default(),
            throttled: Vec::new(),
            tally: Tally::default(),
            rng: rng::seeded(),
            early: Vec::new(),
            check_tx,
            writes: Slab::new(),
            leeching: HashMap::new(),
            last_rate_tick: now,
            half_open: 0,
            closing: 0,
            last_accept_log: None,
            accept_errors_unlogged: 0,
            skeys: torrents
                .keys()
                .map(|h| (transport::skey_of(h), *h))
                .collect(),
            redials: Vec::new(),
            exchanged: HashMap::new(),
            exchanged_since: Duration::ZERO,
            dialer: Dialer::new(Arc::clone(&shared)),
            torrents,
            fetching: HashMap::new(),
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
            self.tally.worker.ring_completions += completions.len() as u64;
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
        self.tally.worker.ring_submissions += 1;
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
            UserData::BlockRead { key, generation } => self.on_block_read(key, generation, result),
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
                    let h = t.metainfo.info_hash;
                    self.skeys.insert(transport::skey_of(&h), h);
                    self.torrents.insert(h, t);
                }
                // Its peers go at the next housekeeping (it is retired).
                WorkerMessage::RemoveTorrent(h) => {
                    self.torrents.remove(&h);
                    self.forget_skey(&h);
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
                WorkerMessage::FetchMetadata(fetch) => {
                    let h = fetch.info_hash;
                    self.skeys.insert(transport::skey_of(&h), h);
                    self.fetching.insert(h, fetch);
                }
                // Its connections end at the next housekeeping.
                WorkerMessage::StopFetch(h) => {
                    self.fetching.remove(&h);
                    self.forget_skey(&h);
                }
            }
        }
    }

    /// Drops the MSE key of `info_hash` unless a torrent or a metadata
    /// fetch still answers to it.
    fn forget_skey(&mut self, info_hash: &InfoHash) {
        if !self.torrents.contains_key(info_hash) && !self.fetching.contains_key(info_hash) {
            self.skeys.remove(&transport::skey_of(info_hash));
        }
    }

    fn on_accept(&mut self, result: i32) {
        if result < 0 {
            if result != -libc::ECANCELED {
                self.accept_failed(-result);
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
        // This worker's share of the cap, then the process's.
        let worker_cap = self.shared.limits.worker_cap(self.config.workers);
        let live = self.conns.len() - self.closing;
        let admitted = if worker_cap != 0 && live >= worker_cap {
            Err(Refusal::Full)
        } else {
            self.shared.limits.try_admit(addr.ip(), &self.config, false)
        };
        // Full: the oldest connection still in its handshake goes first, so
        // silent or trickling clients cannot hold every slot. Connections
        // being closed still hold descriptors: past a few, new ones wait.
        let admitted = match admitted {
            Err(Refusal::Full)
                if self.closing < EVICTIONS_IN_FLIGHT
                    && self.evict_oldest_handshakes(1, EVICT_AFTER) > 0 =>
            {
                self.shared.limits.try_admit(addr.ip(), &self.config, true)
            }
            other => other,
        };
        if admitted.is_err() {
            self.tally.worker.dropped_connections += 1;
            return;
        }
        let _ = socket2::SockRef::from(&fd).set_tcp_nodelay(true);
        self.tally.worker.connections_accepted += 1;
        let key = self.insert_conn(fd, addr, None, Transport::incoming());
        self.arm_recv(key);
    }

    /// An accept failed (`errno`): counted, logged at most every
    /// [`ACCEPT_LOG_EVERY`], and when descriptors ran out, the oldest
    /// connections still in their handshake are closed to free some (the
    /// accept is armed again at the next tick).
    fn accept_failed(&mut self, errno: i32) {
        self.tally.worker.accept_errors += 1;
        self.accept_errors_unlogged += 1;
        let now = self.now();
        if self
            .last_accept_log
            .is_none_or(|t| now.saturating_sub(t) >= ACCEPT_LOG_EVERY)
        {
            let err = io::Error::from_raw_os_error(errno);
            tracing::error!(
                "worker {}: accept failed: {err} ({} time(s) since the last report)",
                self.index,
                self.accept_errors_unlogged
            );
            self.last_accept_log = Some(now);
            self.accept_errors_unlogged = 0;
        }
        if errno == libc::EMFILE || errno == libc::ENFILE {
            // The cap was above what descriptors allow: bring it down to
            // what the process holds, so each worker keeps to its share and
            // none is left with no descriptor to accept with.
            let limits = &self.shared.limits;
            let headroom = EVICT_ON_EMFILE * self.config.workers.max(1);
            if let Some(cap) = limits.lower_cap(limits.connections(), headroom) {
                tracing::warn!(
                    "out of file descriptors: at most {cap} connections from now on (raise \
                     the open-file limit, LimitNOFILE= in systemd, or lower max_connections)"
                );
            }
            self.evict_oldest_handshakes(EVICT_ON_EMFILE, Duration::ZERO);
        }
    }

    /// Closes up to `n` of this worker's connections that are still in
    /// their handshake and at least `min_age` old, oldest first; returns how
    /// many.
    fn evict_oldest_handshakes(&mut self, n: usize, min_age: Duration) -> usize {
        let now = self.now();
        let mut candidates: Vec<(Duration, usize)> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                !c.closing
                    && !c.connect_in_flight
                    && c.peer.in_handshake()
                    && now.saturating_sub(c.peer.opened()) >= min_age
            })
            .map(|(k, c)| (c.peer.opened(), k))
            .collect();
        candidates.sort_unstable();
        candidates.truncate(n);
        for &(_, key) in &candidates {
            self.close(key, Some(CloseReason::Evicted));
        }
        candidates.len()
    }

    /// Adds a connection to the slab: a new generation, a peer connection
    /// keyed for the pickers by (worker, generation, slot).
    fn insert_conn(
        &mut self,
        fd: OwnedFd,
        addr: SocketAddr,
        outgoing: Option<InfoHash>,
        transport: Transport,
    ) -> usize {
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1) & 0x00ff_ffff;
        let now = self.now();
        let entry = self.conns.vacant_entry();
        let peer = PeerConnection::new(
            addr,
            peer_key(self.index, entry.key(), generation),
            outgoing,
            now,
        );
        let key = entry.key();
        entry.insert(Conn::new(fd, generation, transport, peer));
        key
    }

    /// Opens the connections the dial queue asks for (peers from trackers,
    /// the DHT, `--peer`), after the second attempts of failed dials.
    fn dial_queued(&mut self) {
        let room = self.config.max_half_open.saturating_sub(self.half_open);
        let first = self.config.encryption.dial_encrypted();
        // Second attempts, unless a reload turned fallbacks off or the
        // torrent is gone meanwhile.
        if !self.config.encryption.falls_back() {
            self.redials.clear();
        }
        let (torrents, fetching) = (&self.torrents, &self.fetching);
        self.redials
            .retain(|(h, _, _)| torrents.contains_key(h) || fetching.contains_key(h));
        let mut queued: Vec<(InfoHash, SocketAddr, Dial)> = self
            .redials
            .drain(..room.min(self.redials.len()))
            .map(|(h, addr, encrypted)| {
                let dial = Dial {
                    encrypted,
                    fall_back: false,
                };
                (h, addr, dial)
            })
            .collect();
        {
            let mut queue = self.shared.dial_queues[self.index]
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            // The rest waits for connects to finish (see `on_tick`).
            let n = (room - queued.len()).min(queue.len());
            let dial = Dial {
                encrypted: first,
                fall_back: self.config.encryption.falls_back(),
            };
            queued.extend(queue.drain(..n).map(|(h, addr)| (h, addr, dial)));
        }
        for (info_hash, addr, dial) in queued {
            if self.shutting_down {
                return;
            }
            self.dial(info_hash, addr, dial);
        }
    }

    /// Opens a connection to `addr` for `info_hash`.
    fn dial(&mut self, info_hash: InfoHash, addr: SocketAddr, dial: Dial) {
        let banned = self
            .torrents
            .get(&info_hash)
            .is_some_and(|t| t.download().is_some_and(|d| d.is_banned(&addr.ip())));
        if banned {
            return;
        }
        // Already connected to it (either way): once is enough.
        if self.conns.iter().any(|(_, c)| c.peer.addr() == addr) {
            return;
        }
        if self
            .shared
            .limits
            .try_admit(addr.ip(), &self.config, false)
            .is_err()
        {
            self.tally.worker.dropped_connections += 1;
            return;
        }
        let socket = match socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM.cloexec(),
            Some(socket2::Protocol::TCP),
        ) {
            Ok(s) => s,
            Err(_) => {
                self.shared.limits.leave(addr.ip());
                return;
            }
        };
        let _ = socket.set_tcp_nodelay(true);
        // The transport is chosen once connected (an MSE dial carries our
        // handshake, which is made then).
        let key = self.insert_conn(socket.into(), addr, Some(info_hash), Transport::plain());
        let conn = &mut self.conns[key];
        conn.dial = Some(dial);
        let target = Box::new(socket2::SockAddr::from(addr));
        let op = Op::Connect {
            fd: conn.fd.as_raw_fd(),
            addr: target.as_ptr().cast(),
            len: target.len(),
        };
        conn.connect_to = Some(target);
        conn.connect_in_flight = true;
        self.half_open += 1;
        let data = UserData::Connect {
            key: key as u32,
            generation: conn.generation,
        };
        // SAFETY: the address is boxed in `connect_to`, kept until the
        // connect completes (`connect_in_flight`).
        unsafe { self.push(op, data) };
    }

    fn on_connect(&mut self, key: u32, generation: u32, result: i32) {
        let peer_id = self.peer_id;
        let now = self.now();
        let reserved = our_reserved(&self.config);
        let methods = mse_methods(self.config.encrypt_payload);
        let Some(conn) = self
            .conns
            .get_mut(key as usize)
            .filter(|c| c.generation == generation)
        else {
            return;
        };
        conn.connect_in_flight = false;
        conn.connect_to = None;
        conn.peer.connected(peer_id, reserved, now);
        let closing = conn.closing;
        self.half_open -= 1;
        if result < 0 || closing {
            // Nobody listens there: no second attempt either.
            conn.dial = None;
            self.close(key as usize, None);
            return;
        }
        if let (Some(dial), Some(info_hash)) = (conn.dial, conn.peer.outgoing()) {
            if dial.encrypted {
                let greeting = conn.peer.take_greeting();
                conn.transport =
                    Transport::dial_encrypted(info_hash, methods, greeting, &mut rng::fill_random);
            }
        }
        let key = key as usize;
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
        let Some(conn) = self
            .conns
            .get_mut(key as usize)
            .filter(|c| c.generation == generation)
        else {
            return;
        };
        conn.recv.in_flight = false;
        let key = key as usize;
        if conn.closing || result <= 0 {
            // 0: the peer closed; < 0: reset or another socket error.
            self.close(key, None);
            return;
        }
        conn.recv.len += result as usize;
        let inbound = Inbound {
            encryption: self.config.encryption,
            methods: mse_methods(self.config.encrypt_payload),
            skeys: &self.skeys,
            random: &mut rng::fill_random,
            tally: &mut self.tally.worker,
        };
        match conn
            .transport
            .receive(&mut conn.recv, result as usize, inbound)
        {
            Arrived::Close(reason) => {
                self.close(key, Some(reason));
                return;
            }
            Arrived::Pending => {}
            Arrived::Ready => {
                if let Some(h) = conn.transport.proven_torrent() {
                    if conn.peer.in_handshake() {
                        conn.peer.proven_torrent(h);
                    }
                }
                if conn.recv.len > 0 {
                    if let Some(reason) = self.process_input(key) {
                        self.close(key, Some(reason));
                        return;
                    }
                }
            }
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
        let pending = conn.peer.pending_output();
        if pending > OUTPUT_LIMIT {
            self.close(key, Some(CloseReason::Violation));
        } else if !(conn.send.in_flight && pending > OUTPUT_HIGH_WATER) {
            self.arm_recv(key);
        }
    }

    /// Hands what has arrived to the peer connection; returns why to close
    /// it, if it must be.
    fn process_input(&mut self, key: usize) -> Option<CloseReason> {
        // Only a handshake needs how many peers of downloaded torrents we
        // unchoke, and only while this worker downloads something: a
        // seeding box never pays for the scan.
        let count = if self.conns[key].peer.in_handshake() && !self.leeching.is_empty() {
            self.conns
                .iter()
                .filter(|(_, c)| {
                    !c.closing
                        && c.peer
                            .unchoked_torrent()
                            .is_some_and(|t| t.is_downloading())
                })
                .count()
        } else {
            0
        };
        let mut env = env!(self);
        let conn = &mut self.conns[key];
        let received = conn.peer.receive(
            &conn.recv.buf[..conn.recv.len],
            &mut env,
            count,
            &self.check_tx,
        );
        if let Some(joined) = &received.joined {
            transport::count_joined(&mut self.tally.worker, conn.transport.kind());
            if joined.leeching {
                self.leeching
                    .entry(joined.info_hash)
                    .or_insert_with(|| LeechProgress {
                        announced: joined.verified,
                        ..LeechProgress::default()
                    });
            }
        }
        if let Some(node) = received.dht_node {
            self.shared.dht_node_heard(node);
        }
        if let Some((info_hash, peers)) = &received.exchanged {
            self.dial_exchanged(*info_hash, peers);
        }
        let conn = &mut self.conns[key];
        let need = match &received.joined {
            Some(j) if j.leeching => received.need.max(DOWNLOAD_RECV_BUF),
            _ => received.need,
        };
        conn.recv.consume(received.consumed, need);
        received.close
    }

    /// Starts a send if the connection has anything to send and none is in
    /// flight.
    fn try_send(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.closing || conn.send.in_flight || conn.send.reading {
            return;
        }
        if conn
            .transport
            .take_handshake_output(&mut conn.send.plan.control)
        {
            // The transport's own handshake, as it is; the peer's turn
            // comes when it is sent.
            conn.send.render_iovecs();
            self.submit_send(key);
            return;
        }
        if !conn.transport.ready_to_send() {
            return;
        }
        let mut env = env!(self);
        let copy_all = conn.transport.copies_blocks();
        let room = SendRoom {
            bytes: if copy_all {
                MAX_ENCRYPTED_SEND_BYTES
            } else {
                MAX_SEND_BYTES
            },
            // One iovec stays for the control bytes.
            segments: MAX_SEND_IOVECS - 1,
            segments_per_block: IOV_MAX - 1,
            copy_all,
        };
        let throttled = conn
            .peer
            .plan_send(&mut conn.send.plan, room, &mut self.bucket, &mut env);
        if throttled {
            self.rate_wanted = true;
            self.throttled.push(key);
        }
        if conn.send.plan.is_empty() {
            return;
        }
        if conn.send.plan.copied.contains(&true) {
            // Some blocks leave from a buffer: read them first.
            if !conn.send.plan_reads() {
                self.close(key, Some(CloseReason::TorrentErrored));
                return;
            }
            if !conn.send.reads.is_empty() {
                self.submit_block_read(key);
                return;
            }
        }
        conn.transport.render(&mut conn.send);
        self.submit_send(key);
    }

    /// Starts the next read of a copied block's bytes (the last listed).
    fn submit_block_read(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        let read = conn.send.reads.last().expect("a read to do");
        let torrent = conn.send.plan.torrent.as_ref().expect("reads of a torrent");
        let file = match torrent.segment_file(read) {
            Ok(file) => file,
            Err(why) => {
                tracing::debug!("cannot read a block to send: {why}");
                self.close(key, Some(CloseReason::TorrentErrored));
                return;
            }
        };
        let op = Op::ReadAt {
            fd: file.as_raw_fd(),
            buf: conn.send.copy[read.at..].as_mut_ptr(),
            len: read.len as u32,
            offset: read.file_offset,
        };
        let data = UserData::BlockRead {
            key: key as u32,
            generation: conn.generation,
        };
        conn.send.reading = true;
        conn.send.reading_file = Some(file);
        // SAFETY: `send.copy` was sized before the first read and is not
        // touched until `send.reading` is clear; `send.reading_file` holds
        // the file open until the read completes.
        unsafe { self.push(op, data) };
    }

    fn on_block_read(&mut self, key: u32, generation: u32, result: i32) {
        let Some(conn) = self.conn_mut(key, generation) else {
            return;
        };
        conn.send.reading = false;
        conn.send.reading_file = None;
        let key = key as usize;
        if conn.closing {
            self.close(key, None);
            return;
        }
        if result <= 0 {
            // 0: the file ends early (truncated); < 0: an I/O error. Only
            // that file is checked: a `stat` per file of a 100,000-file
            // torrent would stall this worker.
            if let Some(t) = conn.send.plan.torrent.clone() {
                let file = conn.send.reads.last().map(|r| r.file);
                if result < 0 || file.is_none_or(|f| t.check_file(f)) {
                    t.set_errored("a file could not be read while sending".into());
                }
            }
            self.close(key, Some(CloseReason::TorrentErrored));
            return;
        }
        let n = result as usize;
        let read = conn.send.reads.last_mut().expect("the read that completed");
        if n < read.len {
            // A short read: read the rest.
            read.file_offset += n as u64;
            read.at += n;
            read.len -= n;
        } else {
            conn.send.reads.pop();
        }
        if conn.send.reads.is_empty() {
            conn.transport.render(&mut conn.send);
            self.submit_send(key);
        } else {
            self.submit_block_read(key);
        }
    }

    fn submit_send(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        conn.send.prepare();
        let op = Op::SendMsg {
            fd: conn.fd.as_raw_fd(),
            msg: &*conn.send.msg,
            // Pages are being read from disk: the backend waits for them
            // off this thread.
            cold: conn.send.plan.cold,
        };
        let data = UserData::Send {
            key: key as u32,
            generation: conn.generation,
        };
        conn.send.in_flight = true;
        // SAFETY: the msghdr, iovecs, headers and control bytes are the
        // connection's heap buffers, untouched while `send.in_flight` is
        // set; the plan's torrent keeps the mapping alive.
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
                // The kernel could not read the mapping: a file shrank. A
                // few files are checked here (to name it, if it is one of
                // them); housekeeping goes round the rest.
                if let Some(t) = conn.send.plan.torrent.clone() {
                    if t.check_some_files(FILES_CHECKED_EVERY_SECOND) {
                        t.set_errored("a file could not be read while sending".into());
                    }
                }
            }
            self.close(key, None);
            return;
        }
        let sent = result as usize;
        self.tally.worker.bytes_sent += sent as u64;
        // Counted to the connection's own torrent (not to one by the same
        // info-hash that replaced it).
        let conn = &mut self.conns[key];
        if let Some(t) = conn.peer.torrent() {
            self.tally.torrent(t).bytes_sent += sent as u64;
        }
        if conn.closing {
            self.close(key, None);
            return;
        }
        if sent < conn.send.remaining {
            // The socket buffer filled up: send the rest, still off the
            // worker if its pages were cold.
            conn.send.advance(sent);
            self.submit_send(key);
            return;
        }
        conn.peer.sent(&conn.send.plan);
        let blocks = conn.send.plan.blocks.len() as u64;
        conn.send.reset();
        self.tally.worker.blocks_sent += blocks;
        if let Some(t) = conn.peer.torrent() {
            self.tally.torrent(t).blocks_sent += blocks;
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
            self.closing += 1;
            let worker = &mut self.tally.worker;
            match reason {
                Some(CloseReason::Violation) => worker.protocol_errors += 1,
                Some(CloseReason::NotBitTorrent) => worker.not_bittorrent += 1,
                Some(CloseReason::Limit | CloseReason::TorrentErrored | CloseReason::Banned) => {
                    worker.dropped_connections += 1
                }
                Some(CloseReason::Evicted) => worker.evicted_handshakes += 1,
                _ => {}
            }
            if reason == Some(CloseReason::Violation) {
                if let Some(t) = conn.peer.torrent() {
                    self.tally.torrent(t).protocol_errors += 1;
                }
            }
            // Our own closes (shutdown, eviction) are not the peer's failure.
            if conn.transport.negotiating()
                && !self.shutting_down
                && !matches!(reason, Some(CloseReason::Encryption | CloseReason::Evicted))
            {
                self.tally.worker.mse_failed_incomplete += 1;
            }
            // A dial that got through but not to the peer's handshake may be
            // a peer that wants the other transport: it is dialed once more.
            let retry = !conn.connect_in_flight
                && !self.shutting_down
                && conn.peer.in_handshake()
                && matches!(
                    reason,
                    None | Some(
                        CloseReason::Idle | CloseReason::NotBitTorrent | CloseReason::Encryption
                    )
                );
            if !retry {
                conn.dial = None;
            } else if conn.dial.is_some_and(|d| d.fall_back) {
                // Tried again the other way: not yet a failed attempt.
                conn.peer.retried();
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
        self.closing -= 1;
        if let (Some(dial), Some(info_hash)) = (conn.dial, conn.peer.outgoing()) {
            if dial.fall_back {
                self.redials
                    .push((info_hash, conn.peer.addr(), !dial.encrypted));
            }
        }
        self.backend.forget_fd(conn.fd.as_raw_fd());
        self.shared.limits.leave(conn.peer.addr().ip());
        conn.peer
            .close(&mut self.tally, &self.shared.limits, &self.fetching);
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
            files: vec![None; count],
            direct: vec![false; count],
            segments,
            next: 0,
            in_flight: 0,
            error: None,
        });
        self.submit_writes(key);
    }

    /// Submits the piece's next segments, up to [`WRITES_PER_PIECE`] in
    /// flight; finishes the piece once all are done (or one failed).
    fn submit_writes(&mut self, key: usize) {
        loop {
            let w = &mut self.writes[key];
            if w.error.is_some() || w.next == w.segments.len() {
                if w.in_flight == 0 {
                    self.finish_write(key);
                }
                return;
            }
            if w.in_flight >= WRITES_PER_PIECE {
                return;
            }
            let segment = w.next;
            w.next += 1;
            self.open_and_submit(key, segment, true);
        }
    }

    /// Opens the file of a piece's segment, for a direct write where
    /// `direct_allowed` and the torrent can, and submits its write.
    fn open_and_submit(&mut self, key: usize, segment: usize, direct_allowed: bool) {
        let w = &mut self.writes[key];
        let seg = &w.segments[segment];
        let direct = direct_allowed
            .then(|| w.torrent.segment_file_direct(seg, &w.piece.data))
            .flatten();
        w.direct[segment] = direct.is_some();
        let file = match direct {
            Some(file) => Ok(file),
            None => w.torrent.segment_file(seg),
        };
        match file {
            Ok(file) => {
                w.files[segment] = Some(file);
                self.submit_write(key, segment);
            }
            // `submit_writes` finishes the piece once nothing is in flight.
            Err(why) => {
                w.error.get_or_insert(io::Error::other(why));
            }
        }
    }

    fn submit_write(&mut self, key: usize, segment: usize) {
        let w = &mut self.writes[key];
        let seg = &w.segments[segment];
        let file = w.files[segment].as_ref().expect("opened when submitted");
        // The buffer is `w.piece.data`, owned by `self.writes` until every
        // write of the piece has completed (`finish_write`).
        let op = Op::Write {
            fd: file.as_raw_fd(),
            buf: w.piece.data[seg.at..].as_ptr(),
            len: seg.len as u32,
            offset: seg.file_offset,
        };
        let data = UserData::Write {
            key: key as u32,
            segment: segment as u32,
        };
        w.in_flight += 1;
        // SAFETY: the piece's buffer is owned by `writes` until every write
        // of it has completed; `files[segment]` holds the file open until
        // this write completes.
        unsafe { self.push(op, data) };
    }

    fn on_write(&mut self, key: usize, segment: usize, result: i32) {
        let Some(w) = self.writes.get_mut(key) else {
            return;
        };
        w.in_flight -= 1;
        let len = w.segments[segment].len;
        if result == -libc::EINVAL && w.direct[segment] && w.error.is_none() {
            // The filesystem takes no O_DIRECT (or not this alignment):
            // this and every later write go through the page cache.
            w.torrent
                .no_direct_writes(&io::Error::from_raw_os_error(libc::EINVAL));
            self.open_and_submit(key, segment, false);
            self.submit_writes(key);
            return;
        }
        if result < 0 {
            w.error.get_or_insert(io::Error::from_raw_os_error(-result));
        } else if result == 0 && len > 0 {
            w.error
                .get_or_insert(io::Error::from(io::ErrorKind::WriteZero));
        } else if (result as usize) < len && w.error.is_none() {
            // A short write: write the rest.
            let n = result as usize;
            let seg = &mut w.segments[segment];
            seg.file_offset += n as u64;
            seg.at += n;
            seg.len -= n;
            // The rest may not be aligned: written through the page cache.
            self.open_and_submit(key, segment, false);
            self.submit_writes(key);
            return;
        }
        w.files[segment] = None;
        self.submit_writes(key);
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
                    !c.closing && c.peer.torrent().is_some_and(|t| Arc::ptr_eq(t, &torrent))
                })
                .map(|(k, _)| k)
                .collect();
            let news = LeechNews {
                new_pieces: &new_pieces,
                banned: &banned,
                became_complete,
                endgame,
            };
            let mut to_close = Vec::new();
            for &key in &keys {
                if let Some(reason) = self.conns[key].peer.leech_tick(&news, now, &mut self.rng) {
                    to_close.push((key, reason));
                }
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

    /// Dials peers a peer told us of: those new to this worker for the
    /// torrent, up to [`MAX_TOLD`] per torrent.
    fn dial_exchanged(&mut self, info_hash: InfoHash, peers: &[SocketAddr]) {
        if !self.torrents.contains_key(&info_hash) {
            return;
        }
        let known = self.exchanged.entry(info_hash).or_default();
        let fresh: Vec<SocketAddr> = peers
            .iter()
            .filter(|p| known.len() < MAX_TOLD && known.insert(**p))
            .copied()
            .collect();
        self.tally.worker.pex_peers_dialed += fresh.len() as u64;
        self.dialer.dial(info_hash, &fresh);
    }

    /// What peer exchange tells of this worker's peers, published for the
    /// other workers; returns the union of every worker's, per torrent.
    fn exchange_views(&mut self) -> HashMap<InfoHash, Vec<PexEntry>> {
        let mut mine: HashMap<InfoHash, Vec<PexEntry>> = HashMap::new();
        for (_, c) in self.conns.iter().filter(|(_, c)| !c.closing) {
            let Some((info_hash, (addr, mut flags))) = c.peer.pex_entry() else {
                continue;
            };
            if matches!(
                c.transport.kind(),
                Some(TransportKind::MsePlaintext | TransportKind::MseRc4)
            ) {
                flags |= FLAG_ENCRYPTION;
            }
            let entries = mine.entry(info_hash).or_default();
            if entries.len() < MAX_TOLD {
                entries.push((addr, flags));
            }
        }
        *self.shared.pex_views[self.index]
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = mine.clone();
        for (index, view) in self.shared.pex_views.iter().enumerate() {
            if index == self.index {
                continue;
            }
            let view = view.lock().unwrap_or_else(|e| e.into_inner());
            for (info_hash, entries) in view.iter() {
                let all = mine.entry(*info_hash).or_default();
                all.extend(entries.iter().take(MAX_TOLD.saturating_sub(all.len())));
            }
        }
        mine
    }

    fn housekeeping(&mut self, now: Duration) {
        self.rebalance_rate();
        let pex_views = self.exchange_views();
        self.exchanged.retain(|h, _| self.torrents.contains_key(h));
        if now.saturating_sub(self.exchanged_since) >= FORGET_EXCHANGED_EVERY {
            self.exchanged.clear();
            self.exchanged_since = now;
        }
        self.fill_free_seed_slots(now);
        if self.burst.should_purge(self.conns.len()) {
            // A burst of connections is over: give its memory back.
            self.conns.shrink_to_fit();
            crate::memory::purge_this_thread();
        }
        if self.index == 0 {
            // One worker checks file sizes for everyone, a few files of each
            // torrent a second (a torrent may have 100,000).
            for t in self.torrents.values() {
                t.check_some_files(FILES_CHECKED_EVERY_SECOND);
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
            // A buffer kept for copied blocks goes back at most once a
            // second, between sends: an idle encrypted peer holds none, a
            // busy one allocates it again once a second.
            if !conn.send.in_flight && !conn.send.reading && conn.send.copy.capacity() > 0 {
                conn.send.release_copy();
            }
            let (close, send) = conn.peer.housekeeping(
                now,
                elapsed,
                conn.connect_in_flight,
                &self.config,
                &pex_views,
            );
            self.tally.worker.pex_sent += conn.peer.take_pex_sent();
            if let Some(reason) = close {
                to_close.push((key, reason));
            } else if send {
                to_send.push(key);
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
        if !self.tally.worker.is_empty() {
            self.shared.worker_stats[self.index].add(&self.tally.worker);
            self.tally.worker = Default::default();
        }
        for (torrent, delta) in self.tally.torrents.values_mut() {
            if !delta.is_empty() {
                torrent.stats.add(delta);
                *delta = Default::default();
            }
        }
        self.tally
            .torrents
            .retain(|_, (t, _)| Arc::strong_count(t) > 1);
    }

    /// Turns the number of peers unchoked now, per torrent and in all, into
    /// gauge changes since the last flush.
    fn count_unchoked(&mut self) {
        // Keyed by the torrent itself: a replacement shares the info-hash.
        let mut now: HashMap<*const Torrent, (Arc<Torrent>, i64)> = HashMap::new();
        for (_, c) in self.conns.iter().filter(|(_, c)| !c.closing) {
            if let Some(torrent) = c.peer.unchoked_torrent() {
                now.entry(Arc::as_ptr(torrent))
                    .or_insert_with(|| (Arc::clone(torrent), 0))
                    .1 += 1;
            }
        }
        let total: i64 = now.values().map(|(_, n)| n).sum();
        self.tally.worker.unchoked +=
            total - self.reported_unchoked.values().map(|(_, n)| n).sum::<i64>();
        for (hash, (torrent, n)) in &now {
            let before = self.reported_unchoked.get(hash).map_or(0, |(_, n)| *n);
            if *n != before {
                self.tally.torrent(torrent).unchoked += n - before;
            }
        }
        let gone: Vec<(Arc<Torrent>, i64)> = self
            .reported_unchoked
            .iter()
            .filter(|(hash, _)| !now.contains_key(*hash))
            .map(|(_, (t, n))| (Arc::clone(t), *n))
            .collect();
        for (torrent, before) in gone {
            self.tally.torrent(&torrent).unchoked -= before;
        }
        self.reported_unchoked = now;
    }

    /// Seeded torrents rotate slots round-robin; downloaded ones reward
    /// the peers that give us the most (tit-for-tat).
    fn rechoke(&mut self, now: Duration) {
        let mut seeding = Vec::new();
        let mut leeching = Vec::new();
        for (key, c) in self.conns.iter_mut().filter(|(_, c)| !c.closing) {
            match c.peer.candidate(key as u64) {
                Some((candidate, true)) => leeching.push(candidate),
                Some((candidate, false)) => seeding.push(candidate),
                None => {}
            }
        }
        let rng = &mut self.rng;
        let mut decisions = self
            .choker
            .rechoke(now, &seeding, &mut |n| rng::next_below(rng, n));
        decisions.extend(
            self.leech_choker
                .rechoke(now, &leeching, &mut |n| rng::next_below(rng, n)),
        );
        for (key, unchoke) in decisions {
            self.conns[key as usize].peer.set_unchoked(unchoke, now);
            self.try_send(key as usize);
        }
    }

    /// Seeding with slot limits: peers waiting while slots are free get one
    /// now rather than at the next round (up to `rechoke_every` later).
    fn fill_free_seed_slots(&mut self, now: Duration) {
        if self.config.upload_slots == 0 {
            return;
        }
        let seeding: Vec<_> = self
            .conns
            .iter()
            .filter(|(_, c)| !c.closing)
            .filter_map(|(key, c)| c.peer.seeding_candidate(key as u64))
            .collect();
        for key in self.choker.fill_free_slots(&seeding) {
            self.conns[key as usize].peer.set_unchoked(true, now);
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

/// The key of connection `key` of worker `worker` in the shared picker.
fn peer_key(worker: usize, key: usize, generation: u32) -> PeerKey {
    (worker as u64) << 56 | u64::from(generation & 0x00ff_ffff) << 32 | key as u64
}
