//! Starting, observing and stopping the data plane: one pinned worker
//! thread per core, each with its own io_uring (or epoll instance, where
//! io_uring is blocked) and SO_REUSEPORT listener, sharing the torrents, and
//! the pool that checks downloaded pieces.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use socket2::{Socket, Type};

use crate::io::net::reuseport_socket;

use crate::io::piece_check;
use crate::io::plane::epoll::Epoll;
use crate::io::plane::shared::{CheckJob, Checked, MetadataFetch, Shared, WorkerMessage};
pub use crate::io::plane::shared::{Limits, PlaneConfig, DEFAULT_PORT, LISTEN_BACKLOG};
use crate::io::plane::uring::Uring;
use crate::io::plane::worker::Worker;
use crate::io::plane::{Backend, IoMode, PlaneKind};
use crate::io::storage::Torrent;
use crate::policy::download::{CompletePiece, DownloadCounters};
use crate::proto::info_hash::InfoHash;
use crate::rng::random_u64;
use crate::stats::{Counters, StatsSnapshot};

/// Why the data plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum PlaneError {
    /// The io_uring data plane was asked for (`--io uring`) and cannot run
    /// here; the message says why and what to change.
    #[error("the io_uring data plane cannot run here: {0}; or run with --io auto (or epoll)")]
    IoUringUnavailable(String),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A worker thread could not be started.
    #[error("cannot start worker {index}")]
    Worker {
        /// Worker index.
        index: usize,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Peers taken from one tracker reply.
pub const MAX_DIALS_PER_CALL: usize = 50;
/// Peers waiting to be dialed, per worker.
pub const MAX_DIAL_QUEUE: usize = 500;

/// Whether a peer address could be a peer at all: not unspecified,
/// multicast or broadcast, and not port 0.
fn dialable(addr: &SocketAddr) -> bool {
    let ip_ok = match addr.ip() {
        IpAddr::V4(v4) => !(v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast()),
        IpAddr::V6(v6) => !(v6.is_unspecified() || v6.is_multicast()),
    };
    ip_ok && addr.port() != 0
}

/// Hands peers to the workers to connect to; cheap to clone, usable from
/// any thread (the tracker announcer uses it).
#[derive(Clone)]
pub struct Dialer {
    shared: Arc<Shared>,
}

impl Dialer {
    /// A dialer over `shared` (for a worker: peers learned by peer exchange).
    pub(super) fn new(shared: Arc<Shared>) -> Dialer {
        Dialer { shared }
    }

    /// The DHT nodes peers told us of (BEP 5 `port`) since the last call:
    /// the DHT pings them, one way to join it.
    pub fn take_dht_nodes(&self) -> Vec<SocketAddr> {
        self.shared.take_dht_nodes()
    }

    /// Asks the workers to connect to `peers` for torrent `info_hash`,
    /// spread over the workers; unknown torrents (neither served nor
    /// fetched) are ignored.
    /// At most [`MAX_DIALS_PER_CALL`] peers are taken, addresses nobody can
    /// be reached at are skipped, and each worker queues at most
    /// [`MAX_DIAL_QUEUE`]: a tracker reply cannot make us open thousands of
    /// connections.
    pub fn dial(&self, info_hash: InfoHash, peers: &[SocketAddr]) {
        if peers.is_empty() || !self.shared.wants_peers(&info_hash) {
            return;
        }
        let workers = self.shared.dial_queues.len();
        let usable = peers
            .iter()
            .filter(|p| dialable(p))
            .take(MAX_DIALS_PER_CALL);
        for peer in usable {
            // One worker per address, so that it can tell whether it is
            // connected to it already.
            let w = worker_for(peer, workers);
            let mut queue = self.shared.dial_queues[w]
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if queue.len() < MAX_DIAL_QUEUE {
                queue.push((info_hash, *peer));
            }
        }
        for w in 0..workers.min(peers.len()) {
            self.shared.wake(w);
        }
    }
}

/// Hands pieces fetched and hashed outside the data plane (web seeds) to
/// the workers, which record the verdict and write good pieces through
/// their rings, exactly as for pieces from peers; cheap to clone.
#[derive(Clone)]
pub struct PieceSink {
    shared: Arc<Shared>,
}

impl PieceSink {
    /// `piece` of `torrent`, whose hash check gave `good`.
    pub fn deliver(&self, torrent: Arc<Torrent>, piece: CompletePiece, good: bool) {
        self.shared.hand_checked(Checked {
            torrent,
            piece,
            good,
        });
    }
}

fn worker_for(addr: &SocketAddr, workers: usize) -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    addr.hash(&mut h);
    (h.finish() % workers as u64) as usize
}

/// Counters of the whole data plane at one moment.
#[derive(Debug, Clone)]
pub struct PlaneStats {
    /// Sum over workers.
    pub total: StatsSnapshot,
    /// Per worker.
    pub workers: Vec<StatsSnapshot>,
    /// Per torrent: info-hash, name, counters, error if it failed.
    pub torrents: Vec<TorrentStats>,
    /// The data plane that runs.
    pub data_plane: PlaneKind,
}

/// A torrent's counters.
#[derive(Debug, Clone)]
pub struct TorrentStats {
    /// The torrent.
    pub info_hash: InfoHash,
    /// Its name.
    pub name: String,
    /// Its counters.
    pub stats: StatsSnapshot,
    /// Why it stopped being served, if it did.
    pub error: Option<String>,
    /// What is worth an operator's attention short of an error (a file
    /// renamed over or deleted while seeded).
    pub warning: Option<String>,
    /// Progress, for a torrent opened for download.
    pub download: Option<DownloadProgress>,
}

/// Where a download stands.
#[derive(Debug, Clone)]
pub struct DownloadProgress {
    /// Pieces verified.
    pub pieces_have: u32,
    /// Selected pieces still missing.
    pub pieces_missing: u32,
    /// Bytes of selected pieces still missing.
    pub bytes_missing: u64,
    /// Every selected piece is verified.
    pub complete: bool,
    /// Counters.
    pub counters: DownloadCounters,
    /// Addresses banned for sending bad data.
    pub banned: Vec<IpAddr>,
}

impl DownloadProgress {
    /// The progress of `torrent`, if it was opened for download.
    pub fn of(torrent: &Torrent) -> Option<Self> {
        let d = torrent.download()?;
        let mut banned: Vec<IpAddr> = d.banned().copied().collect();
        banned.sort();
        Some(DownloadProgress {
            pieces_have: d.picker.have().count(),
            pieces_missing: d.picker.missing(),
            bytes_missing: d.picker.bytes_missing(),
            complete: d.picker.is_done(),
            counters: d.counters,
            banned,
        })
    }
}

/// The running data plane.
pub struct Plane {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<io::Result<()>>>,
    checkers: Vec<JoinHandle<()>>,
    local_addr: SocketAddr,
    ring_entries: u32,
    pin_workers: bool,
    io: IoMode,
    /// Why `auto` did not pick io_uring, if it did not.
    fallback: Option<String>,
}

impl Plane {
    /// Binds the listeners and starts the workers; returns once every
    /// worker has its ring and is accepting.
    pub fn start(config: PlaneConfig, torrents: Vec<Arc<Torrent>>) -> Result<Self, PlaneError> {
        let (kind, fallback) =
            crate::io::plane::choose(config.io).map_err(|e| PlaneError::IoUringUnavailable(e.0))?;
        if let Some(why) = &fallback {
            tracing::warn!("running the epoll data plane: io_uring is unavailable: {why}");
        }
        let workers = config.workers.max(1);
        let peer_id = new_peer_id();
        let wake_fds = (0..workers)
            .map(|index| eventfd().map_err(|source| PlaneError::Worker { index, source }))
            .collect::<Result<Vec<_>, _>>()?;
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..workers)
            .map(|_| crossbeam_channel::unbounded::<WorkerMessage>())
            .unzip();
        let shared = Arc::new(Shared {
            fetching: Mutex::default(),
            catalog: Mutex::new(
                torrents
                    .into_iter()
                    .map(|t| (t.metainfo.info_hash, t))
                    .collect(),
            ),
            messages: senders,
            heartbeats: (0..workers).map(|_| AtomicU64::new(0)).collect(),
            epoch: Instant::now(),
            rate_wanted: (0..workers).map(|_| AtomicBool::new(false)).collect(),
            stop: AtomicBool::new(false),
            worker_stats: (0..workers).map(|_| Counters::default()).collect(),
            limits: Limits::default(),
            peer_id,
            data_plane: kind,
            wake_fds,
            dial_queues: (0..workers).map(|_| Mutex::default()).collect(),
            checked: (0..workers).map(|_| Mutex::default()).collect(),
            pex_views: (0..workers).map(|_| Mutex::default()).collect(),
            dht_nodes: Mutex::default(),
        });
        shared.limits.set_cap(config.connection_cap());
        let (check_tx, check_rx) = crossbeam_channel::unbounded::<CheckJob>();

        // Bind worker 0 first: with port 0 it picks the port the others share.
        let mut listeners = Vec::with_capacity(workers);
        let mut addr = config.listen;
        for _ in 0..workers {
            let socket = listen(addr).map_err(|source| PlaneError::Listen { addr, source })?;
            addr = socket
                .local_addr()
                .ok()
                .and_then(|a| a.as_socket())
                .unwrap_or(addr);
            listeners.push(OwnedFd::from(socket));
        }

        let mut config = PlaneConfig { workers, ..config };
        // Sent as `p` in extension handshakes: peers pass our address on
        // (ut_pex) only when we dialed them if they know our port.
        config.session.listen_port = Some(addr.port());
        let config = Arc::new(config);
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        // Built first so that any early return below stops (via `Drop`) the
        // workers already started.
        let mut plane = Plane {
            shared: Arc::clone(&shared),
            workers: Vec::with_capacity(workers),
            // The checkers end when the workers, which hold the senders, do.
            checkers: piece_check::spawn(workers, check_rx, Arc::clone(&shared)),
            local_addr: addr,
            ring_entries: config.ring_entries,
            pin_workers: config.pin_workers,
            io: config.io,
            fallback: fallback.map(|why| why.0),
        };
        for ((index, listener), messages) in listeners.into_iter().enumerate().zip(receivers) {
            let wake_raw = shared.wake_fds[index].as_raw_fd();
            let shared = Arc::clone(&shared);
            let config = Arc::clone(&config);
            let core = config
                .pin_workers
                .then(|| cores.get(index % cores.len().max(1)).copied())
                .flatten();
            let ready = ready_tx.clone();
            let check_tx = check_tx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("ringseed-w{index}"))
                .spawn(move || {
                    if let Some(core) = core {
                        core_affinity::set_for_current(core);
                    }
                    let parts = WorkerParts {
                        index,
                        listener,
                        wake_fd: wake_raw,
                        shared,
                        config,
                        check_tx,
                        messages,
                    };
                    match kind {
                        PlaneKind::Uring => {
                            let entries = parts.config.ring_entries;
                            run_worker(Uring::new(entries), parts, ready)
                        }
                        PlaneKind::Epoll => run_worker(Epoll::new(), parts, ready),
                    }
                })
                .map_err(|source| PlaneError::Worker { index, source })?;
            plane.workers.push(handle);
        }
        drop(ready_tx);
        drop(check_tx);
        for _ in 0..workers {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    let _ = plane.stop_workers();
                    return Err(match kind {
                        PlaneKind::Uring => PlaneError::IoUringUnavailable(e.to_string()),
                        PlaneKind::Epoll => PlaneError::Worker {
                            index: 0,
                            source: e,
                        },
                    });
                }
                Err(_) => break,
            }
        }
        Ok(plane)
    }

    /// Starts fetching the metadata of `info_hash` (a magnet link):
    /// connections for it, dialed or incoming, ask their peer for it.
    pub fn fetch_metadata(&self, info_hash: InfoHash) -> Arc<MetadataFetch> {
        let fetch = Arc::new(MetadataFetch::new(info_hash));
        self.shared
            .fetching
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(info_hash);
        self.shared
            .broadcast(|| WorkerMessage::FetchMetadata(Arc::clone(&fetch)));
        fetch
    }

    /// Ends a fetch: its connections close at the workers' next
    /// housekeeping.
    pub fn stop_fetch(&self, fetch: &MetadataFetch) {
        fetch.finish();
        let h = fetch.info_hash;
        self.shared
            .fetching
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&h);
        self.shared.broadcast(|| WorkerMessage::StopFetch(h));
    }

    /// The data plane that runs.
    pub fn data_plane(&self) -> PlaneKind {
        self.shared.data_plane
    }

    /// A handle that hands checked pieces to the workers to write.
    pub fn piece_sink(&self) -> PieceSink {
        PieceSink {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Why `--io auto` runs epoll rather than io_uring, if it does.
    pub fn fallback_reason(&self) -> Option<&str> {
        self.fallback.as_deref()
    }

    /// The address the workers listen on (with the real port if 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle to hand peers to the workers (for the tracker announcer).
    pub fn dialer(&self) -> Dialer {
        Dialer {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Our peer id, as sent in handshakes and announces.
    pub fn peer_id(&self) -> [u8; 20] {
        self.shared.peer_id
    }

    /// The torrents served now.
    pub fn torrents(&self) -> Vec<Arc<Torrent>> {
        self.shared.catalog().values().cloned().collect()
    }

    /// Serves `torrent` from now on. One with the same info-hash (an older
    /// copy of its files) is retired: its peers are dropped and reconnect
    /// to the new one.
    pub fn add_torrent(&self, torrent: Arc<Torrent>) {
        let old = self
            .shared
            .catalog()
            .insert(torrent.metainfo.info_hash, Arc::clone(&torrent));
        if let Some(old) = old {
            old.retire();
        }
        self.shared
            .broadcast(|| WorkerMessage::AddTorrent(Arc::clone(&torrent)));
    }

    /// Stops serving `info_hash`: its peers are dropped at the workers'
    /// next housekeeping, and its files are unmapped once the last send
    /// from them completes. Returns the torrent if it was served.
    pub fn remove_torrent(&self, info_hash: &InfoHash) -> Option<Arc<Torrent>> {
        let torrent = self.shared.catalog().remove(info_hash)?;
        torrent.retire();
        self.shared
            .broadcast(|| WorkerMessage::RemoveTorrent(*info_hash));
        Some(torrent)
    }

    /// Applies new settings live: limits, slots, timeouts. The listen
    /// address, the number of workers and the ring size cannot change
    /// without a restart and keep their old values.
    pub fn reconfigure(&self, mut config: PlaneConfig) {
        config.session.listen_port = Some(self.local_addr.port());
        let config = Arc::new(PlaneConfig {
            listen: self.local_addr,
            workers: self.shared.messages.len(),
            ring_entries: self.ring_entries,
            pin_workers: self.pin_workers,
            io: self.io,
            ..config
        });
        self.shared.limits.set_cap(config.connection_cap());
        self.shared
            .broadcast(|| WorkerMessage::Reconfigure(Arc::clone(&config)));
    }

    /// Whether every worker ran its tick within `max_age` (a worker stuck
    /// in a syscall or a loop stops ticking).
    pub fn workers_alive(&self, max_age: Duration) -> bool {
        let max = max_age.as_millis() as u64;
        !self.workers.iter().any(|h| h.is_finished())
            && self
                .observer()
                .heartbeat_ages()
                .iter()
                .all(|&age| age <= max)
    }

    /// Counters now (updated by the workers once a second).
    pub fn stats(&self) -> PlaneStats {
        self.observer().stats()
    }

    /// A handle that reads counters and liveness from any thread.
    pub fn observer(&self) -> Observer {
        Observer {
            shared: Arc::clone(&self.shared),
        }
    }
    fn stop_workers(&mut self) -> io::Result<()> {
        self.shared.stop.store(true, Ordering::Release);
        for index in 0..self.shared.wake_fds.len() {
            self.shared.wake(index);
        }
        let mut result = Ok(());
        for handle in self.workers.drain(..) {
            match handle.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => result = Err(e),
                Err(_) => result = Err(io::Error::other("a worker panicked")),
            }
        }
        for handle in self.checkers.drain(..) {
            let _ = handle.join();
        }
        result
    }

    /// Closes every connection, stops the workers and returns the final
    /// counters (the workers flush theirs as they stop).
    pub fn shutdown(mut self) -> io::Result<PlaneStats> {
        self.stop_workers()?;
        Ok(self.stats())
    }
}

/// Reads the data plane's counters and liveness; cheap to clone, usable
/// from any thread (metrics, status).
#[derive(Clone)]
pub struct Observer {
    shared: Arc<Shared>,
}

impl Observer {
    /// Counters now (updated by the workers once a second).
    pub fn stats(&self) -> PlaneStats {
        let workers: Vec<StatsSnapshot> = self
            .shared
            .worker_stats
            .iter()
            .map(Counters::snapshot)
            .collect();
        let mut total = StatsSnapshot::default();
        for w in &workers {
            total += *w;
        }
        let mut torrents: Vec<TorrentStats> = self
            .shared
            .catalog()
            .values()
            .map(|t| TorrentStats {
                info_hash: t.metainfo.info_hash,
                name: t.metainfo.info.name.clone(),
                stats: t.stats.snapshot(),
                error: t.error(),
                warning: t.warning(),
                download: DownloadProgress::of(t),
            })
            .collect();
        torrents.sort_by(|a, b| a.name.cmp(&b.name));
        PlaneStats {
            total,
            workers,
            torrents,
            data_plane: self.shared.data_plane,
        }
    }

    /// The torrent with `info_hash`, if it is served.
    pub fn torrent(&self, info_hash: &InfoHash) -> Option<Arc<Torrent>> {
        self.shared.catalog().get(info_hash).cloned()
    }

    /// Milliseconds since each worker last ran its tick.
    pub fn heartbeat_ages(&self) -> Vec<u64> {
        let now = self.shared.epoch.elapsed().as_millis() as u64;
        self.shared
            .heartbeats
            .iter()
            .map(|h| now.saturating_sub(h.load(Ordering::Relaxed)))
            .collect()
    }
}

impl Drop for Plane {
    fn drop(&mut self) {
        let _ = self.stop_workers();
    }
}

/// What a worker thread is given to build its worker on its backend.
struct WorkerParts {
    index: usize,
    listener: OwnedFd,
    wake_fd: std::os::fd::RawFd,
    shared: Arc<Shared>,
    config: Arc<PlaneConfig>,
    check_tx: crossbeam_channel::Sender<CheckJob>,
    messages: crossbeam_channel::Receiver<WorkerMessage>,
}

/// Builds a worker on `backend` (created on this thread), reports whether it
/// is ready, and runs it.
fn run_worker<B: Backend>(
    backend: io::Result<B>,
    parts: WorkerParts,
    ready: std::sync::mpsc::Sender<io::Result<()>>,
) -> io::Result<()> {
    let worker = backend.and_then(|backend| {
        let mut worker = Worker::new(
            parts.index,
            backend,
            parts.listener,
            parts.wake_fd,
            parts.shared,
            parts.config,
            parts.check_tx,
            parts.messages,
        );
        worker.check_accept().map(|()| worker)
    });
    match worker {
        Ok(worker) => {
            let _ = ready.send(Ok(()));
            worker.run()
        }
        Err(e) => {
            let kind = e.kind();
            let _ = ready.send(Err(e));
            Err(io::Error::from(kind))
        }
    }
}

/// A listening socket shared by the workers (SO_REUSEPORT), IPv4 and IPv6.
fn listen(addr: SocketAddr) -> io::Result<Socket> {
    let socket = reuseport_socket(addr, Type::STREAM)?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket)
}

/// A new peer id, Azureus-style: client and version, then 12 random
/// characters.
pub fn new_peer_id() -> [u8; 20] {
    let mut peer_id = *b"-RS0100-000000000000";
    let mut random = random_u64();
    for b in &mut peer_id[8..] {
        *b = b"0123456789abcdefghijklmnopqrstuvwxyz"[(random % 36) as usize];
        random = (random / 36) ^ random.rotate_left(17);
    }
    peer_id
}

fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the result is checked before use.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
