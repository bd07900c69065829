//! The engine as one Session: the data plane, and the peer sources that
//! feed it (trackers today; the DHT, peer exchange and web seeds register
//! here as more [`PeerSource`]s). `ringseed seed`, `download` and the daemon
//! are front ends over it: they decide which torrents run, the Session runs
//! them.
//!
//! A torrent added to the Session is served by the data plane and handed
//! to every source, which finds peers for it and hands them to the data
//! plane's dialer. A torrent removed is dropped from the data plane and from
//! every source (trackers hear `stopped`).

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::io::announce::{
    AnnounceError, AnnounceTarget, Announcer, ClientConfig, TrackerStatus, Transfer,
};
use crate::io::dht::{DhtConfig, DhtService, DhtStatus};
use crate::io::files::DataPaths;
use crate::io::plane::control::{Dialer, Observer, Plane, PlaneConfig, PlaneError, PlaneStats};
use crate::io::plane::shared::MetadataError;
use crate::io::plane::PlaneKind;
use crate::io::resume::save_download;
use crate::io::storage::Torrent;
use crate::io::webseed::{TorrentWebSeeds, WebSeedConfig, WebSeedError, WebSeeds};
use crate::proto::info_hash::InfoHash;

/// Finds peers for the torrents of a Session and hands them to its dialer.
pub trait PeerSource: Send {
    /// A torrent to find peers for (or one whose metadata changed).
    fn add(&mut self, torrent: &Arc<Torrent>);
    /// A torrent no longer run: say goodbye where the protocol wants it.
    fn remove(&mut self, info_hash: InfoHash);
    /// A torrent's download completed.
    fn completed(&mut self, _info_hash: InfoHash) {}
    /// Ends the source, saying goodbye for every torrent; may block on the
    /// network (the Session bounds how long it waits).
    fn stop(self: Box<Self>);
}

/// What a Session runs with.
#[derive(Debug, Clone, Default)]
pub struct SessionConfig {
    /// The data plane's settings.
    pub plane: PlaneConfig,
    /// Announce to the torrents' trackers with this client; `None`: never.
    pub trackers: Option<ClientConfig>,
    /// Join the mainline DHT with these settings; `None`: never.
    pub dht: Option<DhtConfig>,
    /// Download from the torrents' web seeds (BEP 19) with these
    /// settings; `None`: never.
    pub web_seeds: Option<WebSeedConfig>,
}

/// Why a Session could not start.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The data plane.
    #[error(transparent)]
    Plane(#[from] PlaneError),
    /// The web seeds' settings.
    #[error(transparent)]
    WebSeeds(#[from] WebSeedError),
    /// The tracker client.
    #[error("cannot start announcing to trackers")]
    Trackers(#[source] AnnounceError),
}

/// Resume data of a download is saved this often while it runs, when it
/// completes, and when the Session stops.
pub const RESUME_EVERY: Duration = Duration::from_secs(30);

/// Where a downloaded torrent's resume data is kept.
#[derive(Debug, Clone)]
pub struct ResumeTarget {
    /// The torrent's files.
    pub paths: DataPaths,
    /// The resume file.
    pub path: PathBuf,
}

/// A download whose resume data the Session keeps.
struct Kept {
    torrent: Arc<Torrent>,
    target: ResumeTarget,
    last_save: Instant,
    saved_complete: bool,
}

impl Kept {
    fn save(&mut self) {
        self.last_save = Instant::now();
        if let Err(e) = save_download(&self.torrent, &self.target.paths, &self.target.path) {
            tracing::warn!(
                "cannot save resume data to {}: {e} (the next start checks the data again)",
                self.target.path.display()
            );
        }
    }
}

/// The thread that saves resume data on cadence.
struct Resumer {
    kept: Arc<Mutex<Vec<Kept>>>,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Resumer {
    fn start() -> io::Result<Self> {
        let kept: Arc<Mutex<Vec<Kept>>> = Arc::default();
        let (stop, stopped) = mpsc::channel::<()>();
        let list = Arc::clone(&kept);
        let thread = std::thread::Builder::new()
            .name("ringseed-resume".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(Duration::from_secs(1))
                {
                    let mut kept = list.lock().unwrap_or_else(|e| e.into_inner());
                    for k in kept.iter_mut() {
                        let complete = k.torrent.is_complete();
                        if complete && !k.saved_complete {
                            k.saved_complete = true;
                            k.save();
                        } else if !complete && k.last_save.elapsed() >= RESUME_EVERY {
                            k.save();
                        }
                    }
                }
            })?;
        Ok(Resumer {
            kept,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, Vec<Kept>> {
        self.kept.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops the thread; the last saves are the caller's, once nothing is
    /// written any more.
    fn stop(&mut self) {
        self.stop = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The running engine.
pub struct Session {
    plane: Plane,
    trackers: Option<Arc<Announcer>>,
    web_seeds: Option<WebSeeds>,
    /// The DHT, when it runs: a peer source that can be switched on and
    /// off while the Session runs (the daemon's reload).
    dht: Option<DhtService>,
    /// The data plane's settings as last applied (the DHT's port is added
    /// to them).
    plane_config: PlaneConfig,
    sources: Vec<Box<dyn PeerSource>>,
    resume: Option<Resumer>,
}

impl Session {
    /// Starts the data plane and the peer sources, and runs `torrents`.
    pub fn start(config: SessionConfig, torrents: Vec<Arc<Torrent>>) -> Result<Self, SessionError> {
        let plane = Plane::start(config.plane.clone(), Vec::new())?;
        let mut session = Session {
            trackers: None,
            web_seeds: None,
            dht: None,
            plane_config: config.plane,
            sources: Vec::new(),
            resume: None,
            plane,
        };
        if let Some(dht) = config.dht {
            session.start_dht(dht);
        }
        if let Some(client) = config.trackers {
            let announcer = Arc::new(start_announcer(&session.plane, client)?);
            session.trackers = Some(Arc::clone(&announcer));
            session.sources.push(Box::new(Trackers(announcer)));
        }
        if let Some(config) = config.web_seeds {
            let web_seeds = WebSeeds::new(config, session.plane.piece_sink())?;
            session.web_seeds = Some(web_seeds.clone());
            session.sources.push(Box::new(web_seeds));
        }
        for torrent in torrents {
            session.add_torrent(torrent);
        }
        Ok(session)
    }

    /// Runs `torrent` from now on: served by the data plane, announced by
    /// every source. One with the same info-hash (an older copy of its
    /// files) is retired: its peers are dropped and reconnect.
    pub fn add_torrent(&mut self, torrent: Arc<Torrent>) {
        self.plane.add_torrent(Arc::clone(&torrent));
        if let Some(dht) = &self.dht {
            dht_add(dht, &torrent);
        }
        for source in &mut self.sources {
            source.add(&torrent);
        }
    }

    /// Runs `torrent`, being downloaded, whose resume data the Session
    /// saves every [`RESUME_EVERY`], when it completes, and when the Session
    /// stops.
    pub fn add_download(&mut self, torrent: Arc<Torrent>, resume: ResumeTarget) -> io::Result<()> {
        if self.resume.is_none() {
            self.resume = Some(Resumer::start()?);
        }
        if let Some(r) = &self.resume {
            r.kept().push(Kept {
                torrent: Arc::clone(&torrent),
                target: resume,
                last_save: Instant::now(),
                saved_complete: false,
            });
        }
        self.add_torrent(torrent);
        Ok(())
    }

    /// Stops running the torrent with `info_hash`; returns it if it ran.
    pub fn remove_torrent(&mut self, info_hash: &InfoHash) -> Option<Arc<Torrent>> {
        if let Some(r) = &self.resume {
            r.kept()
                .retain(|k| k.torrent.metainfo.info_hash != *info_hash);
        }
        if let Some(dht) = &self.dht {
            dht.forget(*info_hash);
        }
        for source in &mut self.sources {
            source.remove(*info_hash);
        }
        self.plane.remove_torrent(info_hash)
    }

    /// A torrent's download completed: the sources that care are told.
    pub fn completed(&mut self, info_hash: InfoHash) {
        if let (Some(dht), Some(torrent)) = (&self.dht, self.plane.observer().torrent(&info_hash)) {
            dht_add(dht, &torrent);
        }
        for source in &mut self.sources {
            source.completed(info_hash);
        }
    }

    /// Connects to `peers` for `info_hash` (peers given by the user or in a
    /// magnet link).
    pub fn dial(&self, info_hash: InfoHash, peers: &[SocketAddr]) {
        self.plane.dialer().dial(info_hash, peers);
    }

    /// Fetches the info dictionary of `info_hash` (a magnet link) on the
    /// data plane, from `peers` and from whoever connects for it, for at most
    /// `timeout`. Peers are dialed again every few seconds while we are not
    /// connected to them (a peer may turn us away while it starts); it gives
    /// up early once every peer has failed a few times. The result hashes to
    /// `info_hash`.
    pub fn fetch_metadata(
        &self,
        info_hash: InfoHash,
        peers: &[SocketAddr],
        timeout: Duration,
    ) -> Result<Vec<u8>, MetadataError> {
        /// Dials of the peers again this often.
        const REDIAL_EVERY: Duration = Duration::from_secs(2);
        /// Failed attempts per peer before giving up early.
        const ATTEMPTS_PER_PEER: usize = 3;
        if peers.is_empty() && self.dht.is_none() {
            return Err(MetadataError::NoPeers);
        }
        let fetch = self.plane.fetch_metadata(info_hash);
        if let Some(dht) = &self.dht {
            dht.find(info_hash);
        }
        let started = Instant::now();
        let deadline = started + timeout;
        let info = loop {
            self.dial(info_hash, peers);
            let left = deadline.saturating_duration_since(Instant::now());
            // With the DHT, more peers may come: only the deadline ends it.
            let all_failed = self.dht.is_none() && fetch.each_failed(peers, ATTEMPTS_PER_PEER);
            if left.is_zero() || all_failed {
                break None;
            }
            if let Some(info) = fetch.wait(left.min(REDIAL_EVERY)) {
                break Some(info);
            }
        };
        self.plane.stop_fetch(&fetch);
        if let Some(dht) = &self.dht {
            dht.forget(info_hash);
        }
        info.ok_or_else(|| fetch.error(started.elapsed()))
    }

    /// A handle that hands peers to the data plane, for a source's thread.
    pub fn dialer(&self) -> Dialer {
        self.plane.dialer()
    }

    /// Applies new data-plane settings live (limits, slots, timeouts).
    pub fn reconfigure(&mut self, config: PlaneConfig) {
        self.plane_config = config.clone();
        let mut config = config;
        config.session.dht_port = self.dht.as_ref().map(DhtService::port);
        self.plane.reconfigure(config);
    }

    /// Joins the DHT (if not in it yet) and announces every public torrent
    /// run; a failure (the UDP port taken) is logged, and the Session runs
    /// on without it.
    pub fn start_dht(&mut self, config: DhtConfig) {
        if self.dht.is_some() {
            return;
        }
        let bt_port = self.plane.local_addr().port();
        match DhtService::start(config, bt_port, self.plane.dialer()) {
            Ok(service) => {
                for torrent in self.plane.torrents() {
                    dht_add(&service, &torrent);
                }
                self.dht = Some(service);
                // Peers that run a DHT hear where ours listens.
                self.reconfigure(self.plane_config.clone());
            }
            Err(e) => tracing::warn!("cannot start the DHT: {e}; running without it"),
        }
    }

    /// Leaves the DHT (saving its routing table), if in it.
    pub fn stop_dht(&mut self) {
        if let Some(dht) = self.dht.take() {
            dht.stop();
            self.reconfigure(self.plane_config.clone());
        }
    }

    /// The DHT's counters, if it runs.
    pub fn dht_status(&self) -> Option<DhtStatus> {
        self.dht.as_ref().map(|d| d.status())
    }

    /// The last outcome of every tracker of every torrent.
    pub fn tracker_status(&self) -> Vec<TrackerStatus> {
        self.trackers.as_ref().map_or_else(Vec::new, |a| a.status())
    }

    /// Counters now.
    pub fn stats(&self) -> PlaneStats {
        self.plane.stats()
    }

    /// A handle that reads counters and liveness from any thread.
    pub fn observer(&self) -> Observer {
        self.plane.observer()
    }

    /// The address peers connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.plane.local_addr()
    }

    /// What the web seeds of the torrents being downloaded did.
    pub fn web_seed_status(&self) -> Vec<TorrentWebSeeds> {
        self.web_seeds
            .as_ref()
            .map_or_else(Vec::new, WebSeeds::status)
    }

    /// The data plane that runs.
    pub fn data_plane(&self) -> PlaneKind {
        self.plane.data_plane()
    }

    /// Why `--io auto` runs epoll rather than io_uring, if it does.
    pub fn fallback_reason(&self) -> Option<&str> {
        self.plane.fallback_reason()
    }

    /// Whether every worker ran its tick within `max_age`.
    pub fn workers_alive(&self, max_age: Duration) -> bool {
        self.plane.workers_alive(max_age)
    }

    /// Stops the sources first (trackers hear `stopped`, for at most
    /// `goodbye`: returns false if some did not finish in time), then the
    /// data plane; returns the final counters.
    pub fn shutdown(mut self, goodbye: Duration) -> io::Result<(PlaneStats, bool)> {
        let mut sources = std::mem::take(&mut self.sources);
        self.trackers = None;
        self.web_seeds = None;
        if let Some(dht) = self.dht.take() {
            sources.push(Box::new(DhtSource(dht)));
        }
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("ringseed-goodbye".into())
            .spawn(move || {
                for source in sources {
                    source.stop();
                }
                let _ = tx.send(());
            })?;
        let in_time = rx.recv_timeout(goodbye).is_ok();
        let resume = self.resume.take();
        let stats = self.plane.shutdown()?;
        // The workers are stopped: nothing is written any more, so the saved
        // file stamps match the files and the next start needs no recheck.
        if let Some(mut r) = resume {
            r.stop();
            for k in r.kept().iter_mut() {
                k.save();
            }
        }
        Ok((stats, in_time))
    }
}

/// Starts the announcer for the torrents `plane` runs: transfer figures come
/// from each torrent's counters and download state, and the peers trackers
/// return are dialed (leechers behind a NAT can only be reached that way).
fn start_announcer(plane: &Plane, client: ClientConfig) -> Result<Announcer, SessionError> {
    let observer = plane.observer();
    let transfer = Arc::new(move |h: &InfoHash| {
        let Some(t) = observer.torrent(h) else {
            return Transfer::default();
        };
        let stats = t.stats.snapshot();
        Transfer {
            uploaded: stats.bytes_sent,
            downloaded: stats.bytes_received,
            left: t.download().map_or(0, |d| d.picker.bytes_missing()),
        }
    });
    let dialer = plane.dialer();
    let on_peers = Arc::new(move |h: &InfoHash, peers: &[SocketAddr]| dialer.dial(*h, peers));
    Announcer::start(
        Vec::new(),
        plane.peer_id(),
        plane.local_addr().port(),
        client,
        transfer,
        Some(on_peers),
    )
    .map_err(SessionError::Trackers)
}

/// Announces `torrent` on the DHT (BEP 5), and looks it up while it is
/// downloaded; a private torrent (BEP 27) never touches the DHT.
fn dht_add(dht: &DhtService, torrent: &Torrent) {
    if !torrent.metainfo.info.private {
        dht.add_nodes(&torrent.metainfo.nodes);
        dht.announce(torrent.metainfo.info_hash, !torrent.is_downloading());
    }
}

/// The DHT as a peer source, for the goodbye at shutdown (it saves its
/// routing table); while the Session runs it is called directly, since it
/// can be switched on and off.
struct DhtSource(DhtService);

impl PeerSource for DhtSource {
    fn add(&mut self, torrent: &Arc<Torrent>) {
        dht_add(&self.0, torrent);
    }

    fn remove(&mut self, info_hash: InfoHash) {
        self.0.forget(info_hash);
    }

    fn completed(&mut self, info_hash: InfoHash) {
        self.0.announce(info_hash, true);
    }

    fn stop(self: Box<Self>) {
        self.0.stop();
    }
}

/// The torrents' trackers (BEP 3, 12, 15) as a peer source.
struct Trackers(Arc<Announcer>);

impl PeerSource for Trackers {
    fn add(&mut self, torrent: &Arc<Torrent>) {
        if !torrent.metainfo.trackers.is_empty() {
            self.0.add(AnnounceTarget {
                info_hash: torrent.metainfo.info_hash,
                tiers: torrent.metainfo.trackers.clone(),
            });
        }
    }

    fn remove(&mut self, info_hash: InfoHash) {
        self.0.remove(info_hash);
    }

    fn completed(&mut self, info_hash: InfoHash) {
        self.0.completed(info_hash);
    }

    fn stop(self: Box<Self>) {
        // The Session dropped its own handle first: this is the last one.
        if let Ok(announcer) = Arc::try_unwrap(self.0) {
            announcer.stop();
        }
    }
}
