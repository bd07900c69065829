//! What the control side of the data plane (`control`), its workers and
//! the piece-checking pool share: settings, connection limits, the messages
//! workers are sent, the counters and queues they exchange. A leaf: it
//! depends on none of them, so none depends on another through it.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::transport::Encryption;
use super::{IoMode, PlaneKind};
use crate::io::net::canonical;
use crate::io::storage::Torrent;
use crate::policy::choker::ChokerConfig;
use crate::policy::download::CompletePiece;
use crate::policy::peer_session::SessionConfig;
use crate::policy::pex::PexEntry;
use crate::proto::info_hash::InfoHash;
use crate::stats::Counters;

/// The default BitTorrent port.
pub const DEFAULT_PORT: u16 = 6881;

/// Listen backlog of each worker's socket. The kernel caps it at
/// `net.core.somaxconn` (4096 here); a backlog of 128 dropped SYNs and
/// capped accepts at ~600/s in our load tests.
pub const LISTEN_BACKLOG: i32 = 4096;

/// Settings of the data plane.
#[derive(Debug, Clone)]
pub struct PlaneConfig {
    /// Where to listen; `[::]` listens on IPv4 and IPv6.
    pub listen: SocketAddr,
    /// Worker threads (one per core is best).
    pub workers: usize,
    /// Pin worker *i* to core *i*.
    pub pin_workers: bool,
    /// Upload slots for the whole process, 0 for unlimited; split among
    /// workers, each getting at least one.
    pub upload_slots: usize,
    /// Bytes per second for the whole process, 0 for unlimited; each worker
    /// has a token bucket whose share follows demand (see
    /// `policy::rate_limit::worker_share`).
    pub max_upload_rate: u64,
    /// Connections for the whole process; 0 for as many as the open-file
    /// limit allows with headroom for files, trackers and control sockets
    /// (see [`PlaneConfig::connection_cap`]).
    pub max_connections: usize,
    /// Connections per torrent, 0 for unlimited.
    pub max_connections_per_torrent: usize,
    /// Connections per peer IP address, 0 for unlimited.
    pub max_connections_per_ip: usize,
    /// How often the choker runs.
    pub rechoke_every: Duration,
    /// Choker settings other than the slots.
    pub choker: ChokerConfig,
    /// Per-connection protocol settings.
    pub session: SessionConfig,
    /// Submission queue entries per ring.
    pub ring_entries: u32,
    /// Upload slots for peers of torrents being downloaded (tit-for-tat),
    /// for the whole process; 0 for unlimited.
    pub leech_upload_slots: usize,
    /// A peer that sends no block for this long while we wait for some is
    /// snubbed: its requests go to other peers.
    pub request_timeout: Duration,
    /// Outgoing connections not yet established, per worker.
    pub max_half_open: usize,
    /// How long an outgoing connection may take to be established.
    pub connect_timeout: Duration,
    /// How long a peer has to complete its handshake, counted from the
    /// connection's start, not from its last byte: a peer trickling one byte
    /// at a time cannot hold a connection longer.
    pub handshake_timeout: Duration,
    /// Which data plane to run (io_uring, epoll, or the best this host
    /// allows).
    pub io: IoMode,
    /// Message stream encryption: refused, accepted, preferred or required.
    pub encryption: Encryption,
    /// With MSE, RC4 for the whole stream, never plaintext after the
    /// handshake (which keeps zero-copy sends and is chosen when the peer
    /// offers both, unless this is set).
    pub encrypt_payload: bool,
}

impl Default for PlaneConfig {
    fn default() -> Self {
        PlaneConfig {
            listen: SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), DEFAULT_PORT),
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            pin_workers: true,
            upload_slots: 0,
            max_upload_rate: 0,
            max_connections: 0,
            max_connections_per_torrent: 0,
            max_connections_per_ip: 8,
            rechoke_every: Duration::from_secs(10),
            choker: ChokerConfig::default(),
            session: SessionConfig::default(),
            ring_entries: 4096,
            leech_upload_slots: 8,
            request_timeout: Duration::from_secs(20),
            max_half_open: 32,
            connect_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(20),
            io: IoMode::Auto,
            encryption: Encryption::default(),
            encrypt_payload: false,
        }
    }
}

impl PlaneConfig {
    /// The connections the process may hold: `max_connections`, or when it
    /// is 0, the open-file limit less a quarter of it (at least 64) kept for
    /// the torrents' files, trackers, the control and metrics sockets, the
    /// rings, and connections being closed; at least 8.
    pub fn connection_cap(&self) -> usize {
        if self.max_connections != 0 {
            return self.max_connections;
        }
        let nofile = open_file_limit();
        nofile.saturating_sub((nofile / 4).max(64)).max(8)
    }

    /// The choker settings of worker `index`: its share of the slots.
    pub fn choker_share(&self, index: usize) -> ChokerConfig {
        let workers = self.workers.max(1);
        let upload_slots = if self.upload_slots == 0 {
            0
        } else {
            (self.upload_slots / workers + usize::from(index < self.upload_slots % workers)).max(1)
        };
        ChokerConfig {
            upload_slots,
            ..self.choker
        }
    }
}

impl PlaneConfig {
    /// The tit-for-tat slots of worker `index` (0: unlimited).
    pub fn leech_slots_share(&self, index: usize) -> usize {
        let workers = self.workers.max(1);
        if self.leech_upload_slots == 0 {
            return 0;
        }
        (self.leech_upload_slots / workers + usize::from(index < self.leech_upload_slots % workers))
            .max(1)
    }
}

/// The soft limit on open files (RLIMIT_NOFILE), capped at 2^24.
pub fn open_file_limit() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 1024;
    }
    limit.rlim_cur.min(1 << 24) as usize
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The process holds its connection cap.
    Full,
    /// Its address holds its per-address cap.
    PerIp,
}

/// Connection limits, checked when a connection is accepted or completes
/// its handshake (never per block).
#[derive(Debug, Default)]
pub struct Limits {
    /// The process's connection cap (`PlaneConfig::connection_cap`, set
    /// when the plane starts and on reconfiguration); 0 until then.
    cap: AtomicUsize,
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

impl Limits {
    /// Admits a new connection from `ip`, or says why not. `room` lets it
    /// past a full process (the caller is evicting another connection to
    /// make room); the per-address cap always holds.
    pub fn try_admit(&self, ip: IpAddr, config: &PlaneConfig, room: bool) -> Result<(), Refusal> {
        let total = self.total.fetch_add(1, Ordering::Relaxed);
        let cap = self.cap.load(Ordering::Relaxed);
        if !room && cap != 0 && total >= cap {
            self.total.fetch_sub(1, Ordering::Relaxed);
            return Err(Refusal::Full);
        }
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let n = per_ip.entry(ip).or_insert(0);
        if config.max_connections_per_ip != 0 && *n >= config.max_connections_per_ip {
            drop(per_ip);
            self.total.fetch_sub(1, Ordering::Relaxed);
            return Err(Refusal::PerIp);
        }
        *n += 1;
        Ok(())
    }

    /// Sets the process's connection cap.
    pub fn set_cap(&self, cap: usize) {
        self.cap.store(cap, Ordering::Relaxed);
    }

    /// Descriptors ran out with `held` connections: the cap comes down to
    /// below that (at least 8), so each worker's share leaves the others
    /// room. Returns the new cap if it came down. A reconfiguration sets it
    /// again from the settings.
    pub fn lower_cap(&self, held: usize, headroom: usize) -> Option<usize> {
        let new = held.saturating_sub(headroom).max(8);
        let old = self.cap.load(Ordering::Relaxed);
        (old == 0 || new < old)
            .then(|| {
                self.cap
                    .compare_exchange(old, new, Ordering::Relaxed, Ordering::Relaxed)
                    .ok()
                    .map(|_| new)
            })
            .flatten()
    }

    /// The connections one of `workers` workers may hold: its share of the
    /// process's cap (0: no cap). Each worker accepts on its own listener,
    /// so without a share one worker could take every descriptor and leave
    /// the other nothing to accept with, and nothing of its own to evict.
    pub fn worker_cap(&self, workers: usize) -> usize {
        self.cap.load(Ordering::Relaxed).div_ceil(workers.max(1))
    }

    /// Connections admitted now.
    pub fn connections(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// A connection admitted by `try_admit` closed.
    pub fn leave(&self, ip: IpAddr) {
        self.total.fetch_sub(1, Ordering::Relaxed);
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&ip);
            }
        }
    }

    /// Admits a handshaken connection to `torrent`, or refuses it.
    pub fn try_join_torrent(&self, torrent: &Torrent, config: &PlaneConfig) -> bool {
        let n = torrent.connections.fetch_add(1, Ordering::Relaxed);
        if config.max_connections_per_torrent != 0 && n >= config.max_connections_per_torrent {
            torrent.connections.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// A connection admitted by `try_join_torrent` closed.
    pub fn leave_torrent(&self, torrent: &Torrent) {
        torrent.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a worker is told by the control side: changes to the set of
/// torrents and to the settings. Workers keep their own copy of the torrent
/// set, so the serving path never takes a lock to find a torrent.
#[derive(Debug)]
pub enum WorkerMessage {
    /// Serve this torrent too (replacing one with the same info-hash).
    AddTorrent(Arc<Torrent>),
    /// Stop serving this torrent (it was retired: its peers are dropped).
    RemoveTorrent(InfoHash),
    /// New settings; the listen address, workers and ring size stay.
    Reconfigure(Arc<PlaneConfig>),
    /// Fetch this torrent's metadata from the peers of its info-hash.
    FetchMetadata(Arc<MetadataFetch>),
    /// Stop fetching the metadata of this info-hash.
    StopFetch(InfoHash),
}

/// Connections that fetch one magnet link's metadata at once. Each
/// assembles its own copy (up to `MAX_METADATA_SIZE`, 16 MiB), so this
/// bounds the memory a crowd of lying peers can make us hold (found by
/// black-box testing: 40 of them held 686 MB).
pub const MAX_METADATA_CONNECTIONS: usize = 4;

/// A magnet link's metadata being fetched on the data plane: connections
/// for its info-hash (dialed or incoming) ask their peer for it, and the
/// first one to assemble a dictionary that hashes to the info-hash hands it
/// here.
#[derive(Debug)]
pub struct MetadataFetch {
    /// The torrent.
    pub info_hash: InfoHash,
    state: Mutex<FetchState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct FetchState {
    info: Option<Vec<u8>>,
    /// Delivered, or given up: its connections end.
    finished: bool,
    /// Connections fetching it now.
    active: usize,
    /// Peers whose attempt failed, and the last failure.
    failures: usize,
    /// Failed attempts per peer address.
    failed_by_peer: HashMap<SocketAddr, usize>,
    last_error: Option<String>,
}

/// Why no peer gave us the metadata.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    /// No peer to ask.
    #[error("no peers to fetch the torrent's metadata from (give --peer, or a magnet link with trackers or x.pe)")]
    NoPeers,
    /// Every peer failed or the time ran out; the last peer's error.
    #[error("no peer delivered the torrent's metadata in {waited_secs} s of trying ({failures} attempt(s) failed; last error: {last})")]
    Failed {
        /// How long we tried, in seconds.
        waited_secs: u64,
        /// Peer attempts that failed.
        failures: usize,
        /// The last failure.
        last: String,
    },
}

impl MetadataFetch {
    /// A fetch of `info_hash`'s metadata.
    pub fn new(info_hash: InfoHash) -> Self {
        MetadataFetch {
            info_hash,
            state: Mutex::default(),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, FetchState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A connection assembled the verified dictionary.
    pub fn deliver(&self, info: Vec<u8>) {
        let mut state = self.lock();
        if !state.finished {
            state.info = Some(info);
            state.finished = true;
        }
        self.changed.notify_all();
    }

    /// A peer's attempt failed.
    pub fn failed(&self, peer: SocketAddr, why: &dyn std::fmt::Display) {
        let mut state = self.lock();
        state.failures += 1;
        *state.failed_by_peer.entry(peer).or_default() += 1;
        state.last_error = Some(format!("{peer}: {why}"));
    }

    /// Peer attempts that failed so far.
    pub fn failures(&self) -> usize {
        self.lock().failures
    }

    /// Whether every one of `peers` has failed at least `attempts` times
    /// (failures of other peers, such as incoming connections, do not
    /// count: one bad peer cannot end the fetch while others may answer).
    pub fn each_failed(&self, peers: &[SocketAddr], attempts: usize) -> bool {
        let state = self.lock();
        peers.iter().all(|p| {
            state
                .failed_by_peer
                .get(&canonical(*p))
                .copied()
                .unwrap_or(0)
                >= attempts
        })
    }

    /// Takes one of the [`MAX_METADATA_CONNECTIONS`] slots for a connection
    /// fetching the metadata; `false` when all are taken.
    pub fn try_start(&self) -> bool {
        let mut state = self.lock();
        if state.active >= MAX_METADATA_CONNECTIONS {
            return false;
        }
        state.active += 1;
        true
    }

    /// A connection that took a slot ended.
    pub fn ended(&self) {
        let mut state = self.lock();
        state.active = state.active.saturating_sub(1);
    }

    /// Whether it was delivered or given up.
    pub fn is_finished(&self) -> bool {
        self.lock().finished
    }

    /// Gives up: its connections end at their next housekeeping.
    pub fn finish(&self) {
        self.lock().finished = true;
    }

    /// Waits at most `timeout` for the dictionary; returns it if it came.
    pub fn wait(&self, timeout: Duration) -> Option<Vec<u8>> {
        let state = self.lock();
        let (mut state, _) = self
            .changed
            .wait_timeout_while(state, timeout, |s| s.info.is_none())
            .unwrap_or_else(|e| e.into_inner());
        state.info.take()
    }

    /// The error to report after trying for `waited`.
    pub fn error(&self, waited: Duration) -> MetadataError {
        let state = self.lock();
        MetadataError::Failed {
            waited_secs: waited.as_secs(),
            failures: state.failures,
            last: state
                .last_error
                .clone()
                .unwrap_or_else(|| "no peer answered".into()),
        }
    }
}

/// What the workers share: the catalog of torrents (for the control side),
/// counters each worker writes alone, limits, and the stop flag.
#[derive(Debug)]
pub struct Shared {
    /// The torrents served, by info-hash: the control side's copy. Workers
    /// keep their own, updated by [`WorkerMessage`]s.
    pub(super) catalog: Mutex<HashMap<InfoHash, Arc<Torrent>>>,
    /// Magnet links whose metadata is being fetched (peers may be dialed
    /// for them too).
    pub(super) fetching: Mutex<std::collections::HashSet<InfoHash>>,
    /// Messages to worker *i*.
    pub messages: Vec<crossbeam_channel::Sender<WorkerMessage>>,
    /// When worker *i* last ran its tick, in milliseconds since `epoch`
    /// (the watchdog's proof of life).
    pub heartbeats: Vec<AtomicU64>,
    /// The origin of `heartbeats`.
    pub epoch: Instant,
    /// Whether worker *i* hit its upload bucket in its last second: the
    /// rate limit's shares follow these (once a second, never per block).
    pub rate_wanted: Vec<AtomicBool>,
    /// Set to stop the workers.
    pub stop: AtomicBool,
    /// Counters of worker *i*, written by it alone.
    pub worker_stats: Vec<Counters>,
    /// Connection limits.
    pub limits: Limits,
    /// Our peer id.
    pub peer_id: [u8; 20],
    /// The data plane the workers run.
    pub data_plane: PlaneKind,
    /// Wake-up eventfd of worker *i* (shutdown, peers to dial).
    pub wake_fds: Vec<OwnedFd>,
    /// Peers worker *i* should connect to (control path, never per block).
    pub dial_queues: Vec<Mutex<Vec<(InfoHash, SocketAddr)>>>,
    /// Pieces checked for worker *i* (once per piece, never per block).
    pub checked: Vec<Mutex<Vec<Checked>>>,
    /// The peers worker *i* is connected to, per torrent, as peer exchange
    /// tells of them (at most [`MAX_TOLD`](crate::policy::pex::MAX_TOLD) each); published once a second.
    pub pex_views: Vec<Mutex<HashMap<InfoHash, Vec<PexEntry>>>>,
    /// DHT nodes peers told us of (BEP 5 `port`), for the DHT to ping; at
    /// most [`MAX_DHT_NODES_QUEUED`].
    pub(super) dht_nodes: Mutex<Vec<SocketAddr>>,
}

/// DHT nodes from `port` messages kept until the DHT takes them: more are
/// dropped (a DHT that is off never takes any).
pub const MAX_DHT_NODES_QUEUED: usize = 256;

impl Shared {
    /// Notes a peer's DHT node (from its `port` message).
    pub fn dht_node_heard(&self, node: SocketAddr) {
        let mut nodes = self.dht_nodes.lock().unwrap_or_else(|e| e.into_inner());
        if nodes.len() < MAX_DHT_NODES_QUEUED && !nodes.contains(&node) {
            nodes.push(node);
        }
    }

    /// Takes the DHT nodes peers told us of since the last call.
    pub fn take_dht_nodes(&self) -> Vec<SocketAddr> {
        std::mem::take(&mut *self.dht_nodes.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The control side's catalog of torrents.
    pub fn catalog(&self) -> MutexGuard<'_, HashMap<InfoHash, Arc<Torrent>>> {
        self.catalog.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether peers may be dialed for `info_hash`: a torrent served, or a
    /// magnet link whose metadata is being fetched.
    pub fn wants_peers(&self, info_hash: &InfoHash) -> bool {
        self.catalog().contains_key(info_hash)
            || self
                .fetching
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(info_hash)
    }

    /// Records that worker `index` is alive now.
    pub fn heartbeat(&self, index: usize) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.heartbeats[index].store(ms, Ordering::Relaxed);
    }

    /// Queues a checked piece for the worker that writes its torrent, and
    /// wakes it.
    ///
    /// All of a torrent's writes go through one ring: buffered writes to
    /// one file take its inode lock exclusively, so a second ring gains
    /// nothing and its io-wq thread spins on the lock (7% of a web seed
    /// download's CPU here), while one ring's io-wq queues them in turn.
    pub fn hand_checked(&self, checked: Checked) {
        let worker = self.writer_of(&checked.torrent);
        self.checked[worker]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(checked);
        self.wake(worker);
    }

    /// The worker that writes `torrent`'s pieces.
    fn writer_of(&self, torrent: &Torrent) -> usize {
        let hash = torrent.metainfo.info_hash.0;
        let key = u64::from_le_bytes(hash[..8].try_into().expect("20-byte hash"));
        (key % self.checked.len() as u64) as usize
    }

    /// Sends `message` to every worker and wakes them.
    pub fn broadcast(&self, message: impl Fn() -> WorkerMessage) {
        for (index, tx) in self.messages.iter().enumerate() {
            // A worker that ended has dropped its receiver: nothing to tell.
            let _ = tx.send(message());
            self.wake(index);
        }
    }

    /// Wakes worker `index` (its eventfd read completes).
    pub fn wake(&self, index: usize) {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes from a live u64 to an eventfd we own,
        // which lives as long as `self`.
        unsafe {
            libc::write(
                self.wake_fds[index].as_raw_fd(),
                (&one as *const u64).cast(),
                8,
            )
        };
    }
}

/// A piece to check.
pub struct CheckJob {
    /// Its torrent.
    pub torrent: Arc<Torrent>,
    /// The piece and its bytes.
    pub piece: CompletePiece,
}

/// A checked piece.
#[derive(Debug)]
pub struct Checked {
    /// Its torrent.
    pub torrent: Arc<Torrent>,
    /// The piece and its bytes.
    pub piece: CompletePiece,
    /// Whether it matches the torrent's hash.
    pub good: bool,
}
