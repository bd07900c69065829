//! `ringseed daemon`: the mirror operator's service. It seeds what the
//! watched directories hold (and what `ringseed ctl add` adds), follows
//! their changes, resumes without hashing after a restart, talks to
//! systemd, and reports through `/metrics`, `/status` and the control
//! socket.
//!
//! One main loop owns every decision; the other threads (signals, inotify,
//! hashing jobs, control and metrics servers) only send it [`Event`]s. The
//! data plane is the same `Plane` as `ringseed seed`, told about torrents
//! as they come and go.

pub mod catalog;
pub mod config;
pub mod control;
pub mod status;
mod systemd;
mod watch;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::Context;
use ringseed_engine::create::CreateOptions;
use ringseed_engine::io::dht::DhtConfig;
use ringseed_engine::io::files::{write_atomic, DataPaths};
use ringseed_engine::io::hasher::thread_count;
use ringseed_engine::io::plane::control::PlaneConfig;
use ringseed_engine::io::storage::Torrent;
use ringseed_engine::io::tracker_server::{TrackerConfig, TrackerServer};
use ringseed_engine::policy::peer_session::SessionConfig as PeerSessionConfig;
use ringseed_engine::session::{Session, SessionConfig};
use ringseed_engine::{InfoHash, MagnetLink, Metainfo};
use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

use self::catalog::{
    data_fingerprint, desired_sources, locate, paths_fingerprint, run_job, settled, stamp, Item,
    Items, Job, JobDone, MakeOptions, Ready, Source, State, StateFiles, Work,
};
use self::config::Config;
use self::control::{Query, Reply, Request};
use self::status::{
    figures, DhtFigures, DhtNodeFigures, DirectoryError, Status, TorrentStatus, TrackerStatus,
    WorkerStatus,
};
use self::systemd::Systemd;
use self::watch::Watcher;
use crate::cli::{DaemonArgs, Exit};
use crate::logging::{self, LogLevel};

/// What the main loop reacts to.
pub enum Event {
    /// SIGHUP, SIGTERM or SIGINT.
    Signal(i32),
    /// Something changed in a watched directory.
    Changed,
    /// A hashing job ended.
    JobDone(Box<JobDone>),
    /// A question from the control socket or the metrics endpoint.
    Query(Query, mpsc::Sender<Reply>),
}

/// A worker whose tick is older than this is stuck: no watchdog ping.
const WORKER_STUCK_AFTER: Duration = Duration::from_secs(5);
/// How often the main loop looks at the time when nothing happens.
const TICK: Duration = Duration::from_millis(250);
/// Changes are gathered this long before a scan (a copy makes many events).
const DEBOUNCE: Duration = Duration::from_millis(200);
/// At most this many directories are watched (inotify watches cost kernel
/// memory; deeper trees are still seen by the periodic rescan).
const MAX_WATCHED_DIRS: usize = 8192;
/// How often directories that cannot be read are looked for.
const MISSING_DIR_SCAN: Duration = Duration::from_secs(5);
/// How often systemd's STATUS= line is refreshed.
const STATUS_EVERY: Duration = Duration::from_secs(5);

/// Sources added and removed with `ringseed ctl`, kept in the state
/// directory across restarts.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Overrides {
    added: Vec<Added>,
    removed: Vec<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Added {
    path: PathBuf,
    data: Option<PathBuf>,
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(args: DaemonArgs) -> anyhow::Result<Exit> {
    let config = Config::load(&args)?;
    let log = logging::init(&config.log_level)?;
    crate::setup::raise_open_file_limit();
    let state = StateFiles::new(config.state_dir());
    std::fs::create_dir_all(state.dir()).with_context(|| {
        format!(
            "cannot create the state directory {}",
            state.dir().display()
        )
    })?;
    let state_lock = lock_state(state.dir())?;
    let systemd = Systemd::from_env();

    // First, while this is the only thread: a second daemon on the same
    // state stops here, and the socket's mode is set as it is created.
    let control_path = config.control_socket();
    let listener = control::bind_control(&control_path, config.socket_mode()?)?;
    // No torrent yet: they are added as they go live.
    let trackers = if config.announce {
        Some(crate::setup::tracker_client_config(None)?)
    } else {
        None
    };
    let session = Session::start(
        SessionConfig {
            plane: plane_config(&config),
            trackers,
            dht: dht_config(&config),
            // The daemon seeds only: it downloads nothing from mirrors.
            web_seeds: None,
        },
        Vec::new(),
    )?;
    let (events_tx, events) = mpsc::channel::<Event>();
    let tracker = match config.tracker_addr()? {
        Some(addr) => {
            let server = TrackerServer::start(TrackerConfig {
                udp: Some(addr),
                http: Some(addr),
                io: config.io_mode().unwrap_or_default(),
                ..TrackerConfig::default()
            })
            .with_context(|| format!("cannot start the tracker on {addr}"))?;
            info!("tracker on udp://{addr}/announce and http://{addr}/announce");
            Some(server)
        }
        None => None,
    };

    spawn_signal_thread(events_tx.clone())?;
    let threads = thread_count(std::num::NonZeroUsize::new(config.verify_threads));
    let jobs = spawn_job_thread(events_tx.clone(), threads.max(1))?;
    control::serve_control(listener, control::asker(events_tx.clone(), Event::Query))?;
    let metrics = match config.metrics_addr()? {
        Some(addr) => Some(control::serve_metrics(
            addr,
            control::asker(events_tx.clone(), Event::Query),
        )?),
        None => None,
    };

    let overrides = load_overrides(&state);
    let mut daemon = Daemon {
        _state_lock: state_lock,
        args,
        config,
        log,
        state,
        session,
        _tracker: tracker,
        items: Items::new(),
        overrides,
        dir_errors: Vec::new(),
        jobs,
        next_generation: 1,
        bytes_hashed: 0,
        hash_failures: 0,
        started: Instant::now(),
        systemd,
        watcher: None,
        watched: Vec::new(),
        events_tx,
        changed_at: None,
        last_scan: Instant::now(),
        control_path,
        warned_unfindable: Default::default(),
    };
    daemon.scan();
    let addr = daemon.session.local_addr();
    info!(
        "listening on {addr}; control socket {}{}; {} data plane",
        daemon.control_path.display(),
        metrics.map_or_else(String::new, |m| format!("; metrics on http://{m}/metrics")),
        daemon.session.data_plane()
    );
    daemon.systemd.ready(&daemon.status_line());
    daemon.run(events)
}

/// The data plane's settings from the configuration.
fn plane_config(config: &Config) -> PlaneConfig {
    let defaults = PlaneConfig::default();
    PlaneConfig {
        listen: config.listen,
        workers: if config.workers == 0 {
            defaults.workers
        } else {
            config.workers
        },
        io: config.io_mode().unwrap_or_default(),
        encryption: config.encryption_policy().unwrap_or_default(),
        encrypt_payload: config.encrypt_payload,
        session: PeerSessionConfig {
            pex: config.pex,
            ..defaults.session.clone()
        },
        upload_slots: config.limits.upload_slots,
        max_upload_rate: config.limits.max_upload_rate,
        max_connections: config.limits.max_connections,
        max_connections_per_torrent: config.limits.max_connections_per_torrent,
        max_connections_per_ip: config.limits.max_connections_per_ip,
        ..defaults
    }
}

/// The DHT's settings, or `None` when `[dht] enabled` is false.
fn dht_config(config: &Config) -> Option<DhtConfig> {
    if !config.dht.enabled {
        return None;
    }
    Some(DhtConfig {
        port: config.dht.port,
        bootstrap: config.dht.bootstrap.clone(),
        read_only: config.dht.read_only,
        state_dir: Some(config.state_dir()),
        bind_v4: match config.listen.ip() {
            std::net::IpAddr::V4(v4) => v4,
            std::net::IpAddr::V6(_) => std::net::Ipv4Addr::UNSPECIFIED,
        },
        ipv6: config.listen.is_ipv6(),
    })
}

fn spawn_signal_thread(events: mpsc::Sender<Event>) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGHUP, SIGINT, SIGTERM])
        .context("cannot install signal handlers")?;
    std::thread::Builder::new()
        .name("ringseed-signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if events.send(Event::Signal(signal)).is_err() {
                    return;
                }
            }
        })?;
    Ok(())
}

/// The thread that hashes: one job at a time, each on every core.
fn spawn_job_thread(
    events: mpsc::Sender<Event>,
    threads: usize,
) -> anyhow::Result<mpsc::Sender<Job>> {
    let (tx, rx) = mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("ringseed-hash".into())
        .spawn(move || {
            for job in rx {
                let (key, generation, fingerprint) =
                    (job.key.clone(), job.generation, job.fingerprint.clone());
                let progress = Arc::clone(&job.progress);
                // A bug in hashing must fail that item, not every later one.
                let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    run_job(job, threads)
                }))
                .unwrap_or_else(|_| JobDone {
                    key,
                    generation,
                    fingerprint,
                    hashed: progress.load(Ordering::Relaxed),
                    outcome: Err(catalog::Failure {
                        reason: "hashing it failed (a bug: please report it)".into(),
                        bad_pieces: 0,
                    }),
                });
                if events.send(Event::JobDone(Box::new(done))).is_err() {
                    return;
                }
            }
        })?;
    Ok(tx)
}

/// Takes the state directory for this process (`STATE/lock`, flock): two
/// daemons on one state would make and delete each other's files.
fn lock_state(dir: &Path) -> anyhow::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let path = dir.join("lock");
    let file = std::fs::File::create(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    // SAFETY: flock on a descriptor we own; the lock lives as long as it.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        anyhow::bail!(
            "the state directory {} is in use by another ringseed daemon",
            dir.display()
        );
    }
    Ok(file)
}

fn load_overrides(state: &StateFiles) -> Overrides {
    let path = state.overrides();
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            warn!("{} is not valid ({e}); starting without it", path.display());
            Overrides::default()
        }),
        Err(_) => Overrides::default(),
    }
}

struct Daemon {
    /// Held while the daemon runs (see `lock_state`).
    _state_lock: std::fs::File,
    args: DaemonArgs,
    config: Config,
    log: LogLevel,
    state: StateFiles,
    session: Session,
    _tracker: Option<TrackerServer>,
    items: Items,
    overrides: Overrides,
    dir_errors: Vec<(PathBuf, String)>,
    jobs: mpsc::Sender<Job>,
    next_generation: u64,
    bytes_hashed: u64,
    hash_failures: u64,
    started: Instant,
    systemd: Systemd,
    watcher: Option<Watcher>,
    /// The directories `watcher` watches.
    watched: Vec<PathBuf>,
    events_tx: mpsc::Sender<Event>,
    changed_at: Option<Instant>,
    last_scan: Instant,
    control_path: PathBuf,
    /// Publish directories already warned about for torrents no client
    /// could find a peer for (warned once each).
    warned_unfindable: std::collections::HashSet<PathBuf>,
}

impl Daemon {
    fn run(mut self, events: mpsc::Receiver<Event>) -> anyhow::Result<Exit> {
        let mut last_ping = Instant::now();
        let mut last_status = Instant::now();
        loop {
            match events.recv_timeout(TICK) {
                Ok(Event::Signal(signal)) if signal == signal_hook::consts::SIGHUP => {
                    if let Err(e) = self.reload() {
                        error!("reload failed, the old configuration stays: {e:#}");
                    }
                }
                Ok(Event::Signal(_)) => break,
                Ok(Event::Changed) => {
                    self.changed_at.get_or_insert_with(Instant::now);
                }
                Ok(Event::JobDone(done)) => self.job_done(*done),
                Ok(Event::Query(query, reply)) => {
                    let _ = reply.send(self.answer(query));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            let settling = self.items.values().any(|i| i.settling_since.is_some());
            let rescan = Duration::from_secs(self.config.rescan_secs.max(1));
            let due = self.changed_at.is_some_and(|t| t.elapsed() >= DEBOUNCE)
                || (settling && self.last_scan.elapsed() >= Duration::from_secs(1))
                // A missing directory cannot be watched: look for it often.
                || (!self.dir_errors.is_empty() && self.last_scan.elapsed() >= MISSING_DIR_SCAN)
                || self.last_scan.elapsed() >= rescan;
            if due {
                self.scan();
            }
            if let Some(every) = self.systemd.watchdog_every() {
                if last_ping.elapsed() >= every && self.session.workers_alive(WORKER_STUCK_AFTER) {
                    self.systemd.watchdog();
                    last_ping = Instant::now();
                }
            }
            if last_status.elapsed() >= STATUS_EVERY {
                self.systemd.status(&self.status_line());
                last_status = Instant::now();
            }
        }
        self.stop()
    }

    /// Watches every directory the configuration names, and every
    /// directory below them (a directory torrent changes inside), and those
    /// holding sources added with `ctl`. The watcher is rebuilt only when
    /// that list changed, or when `force`d (a directory came back).
    fn watch(&mut self, force: bool) {
        let mut roots: Vec<PathBuf> = Vec::new();
        for d in &self.config.data_dir {
            roots.push(d.path.clone());
        }
        for d in &self.config.torrent_dir {
            roots.push(d.path.clone());
            roots.extend(d.data.iter().cloned());
        }
        for a in &self.overrides.added {
            roots.extend(a.path.parent().map(Path::to_path_buf));
            roots.extend(a.data.iter().cloned());
        }
        let dirs = catalog::directory_tree(roots, MAX_WATCHED_DIRS);
        if !force && self.watcher.is_some() && dirs == self.watched {
            return;
        }
        self.watcher = None;
        self.watched = dirs.clone();
        if dirs.is_empty() {
            return;
        }
        let events = std::sync::Mutex::new(self.events_tx.clone());
        let changed = move |_: &PathBuf| {
            let _ = events
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .send(Event::Changed);
        };
        let failed = |dir: &PathBuf, e: std::io::Error| {
            warn!(
                "cannot watch {}: {e} (it is looked for every {}s)",
                dir.display(),
                MISSING_DIR_SCAN.as_secs()
            )
        };
        match Watcher::start(dirs, changed, failed) {
            Ok(w) => self.watcher = Some(w),
            Err(e) => {
                warn!("inotify is unavailable ({e}); directories are rescanned every rescan_secs")
            }
        }
    }

    /// Compares what the directories hold with what is served, and acts.
    fn scan(&mut self) {
        self.changed_at = None;
        self.last_scan = Instant::now();
        let added: Vec<Source> = self
            .overrides
            .added
            .iter()
            .map(|a| self.added_source(a))
            .collect();
        let (desired, errors) = desired_sources(&self.config, &added, &self.overrides.removed);
        for (dir, e) in &errors {
            if !self.dir_errors.iter().any(|(d, old)| d == dir && old == e) {
                error!(
                    "cannot read {}: {e}; the rest is still served",
                    dir.display()
                );
            }
        }
        // A directory readable again (created, remounted) is watched again.
        let recovered = self
            .dir_errors
            .iter()
            .any(|(d, _)| !errors.iter().any(|(e, _)| e == d));
        self.dir_errors = errors;
        self.watch(recovered);
        self.recheck_errored();
        self.retry_publishing();
        let gone: Vec<PathBuf> = self
            .items
            .keys()
            .filter(|k| !desired.iter().any(|s| s.path() == k.as_path()))
            .cloned()
            .collect();
        for key in gone {
            // A source in a directory that cannot be read now is kept: an
            // unreadable directory is not an empty one.
            let unreadable = self
                .dir_errors
                .iter()
                .any(|(d, _)| key.parent() == Some(d.as_path()));
            if !unreadable {
                self.drop_item(&key);
            }
        }
        for source in desired {
            let key = source.path().to_path_buf();
            let item = self
                .items
                .entry(key.clone())
                .or_insert_with(|| Item::new(source.clone()));
            if item.source != source {
                // Its settings changed (e.g. trackers): make it again.
                item.source = source;
                item.fingerprint.clear();
            }
            self.refresh(&key);
        }
    }

    /// A torrent the workers stopped serving (a file truncated or unreadable
    /// under them) is dropped and its source looked at again.
    fn recheck_errored(&mut self) {
        let errored: Vec<(PathBuf, Arc<Torrent>)> = self
            .items
            .iter()
            .filter_map(|(k, i)| Some((k.clone(), Arc::clone(i.torrent.as_ref()?))))
            .filter(|(_, t)| t.is_errored())
            .collect();
        for (key, torrent) in errored {
            let reason = torrent.error().unwrap_or_default();
            error!("{}: {reason}; it is checked again", key.display());
            self.stop_serving(&key, &torrent);
            let item = self.items.get_mut(&key).expect("listed above");
            item.torrent = None;
            item.fingerprint.clear();
            item.supersede();
            item.state = State::Failed(reason);
        }
    }

    fn added_source(&self, added: &Added) -> Source {
        if added.path.extension().is_some_and(|e| e == "torrent") {
            let data = added
                .data
                .clone()
                .or_else(|| added.path.parent().map(Path::to_path_buf))
                .unwrap_or_default();
            Source::TorrentFile {
                path: added.path.clone(),
                data_dirs: vec![data],
            }
        } else {
            Source::Data {
                path: added.path.clone(),
                options: MakeOptions::default(),
                publish: self.state.dir().join("published"),
            }
        }
    }

    /// Looks at one source again: unchanged, it is left alone; new or
    /// changed, it is resumed or queued for hashing.
    fn refresh(&mut self, key: &Path) {
        let Some(item) = self.items.get(key) else {
            return;
        };
        match item.source.clone() {
            Source::TorrentFile { path, data_dirs } => {
                self.refresh_torrent_file(key, &path, &data_dirs)
            }
            Source::Data { path, options, .. } => self.refresh_data(key, &path, &options),
        }
    }

    fn refresh_torrent_file(&mut self, key: &Path, path: &Path, data_dirs: &[PathBuf]) {
        let torrent_stamp = stamp(path);
        let mut fingerprint = vec![(path.to_path_buf(), torrent_stamp)];
        let item = self.items.get_mut(key).expect("refreshed items exist");
        let cached = item
            .parsed
            .as_ref()
            .filter(|(s, _)| torrent_stamp.is_some() && *s == torrent_stamp)
            .map(|(_, m)| Arc::clone(m));
        let metainfo = match cached {
            Some(m) => m,
            None => {
                let loaded = std::fs::read(path)
                    .map_err(|e| format!("cannot read it: {e}"))
                    .and_then(|b| {
                        Metainfo::from_bytes(&b).map_err(|e| format!("not a valid .torrent: {e}"))
                    });
                match loaded {
                    Ok(m) => {
                        let m = Arc::new(m);
                        item.parsed = Some((torrent_stamp, Arc::clone(&m)));
                        m
                    }
                    Err(reason) => {
                        return self.set_unservable(key, fingerprint, State::Failed(reason))
                    }
                }
            }
        };
        let paths = match locate(&metainfo, data_dirs) {
            Ok(p) => p,
            Err(reason) => return self.set_unservable(key, fingerprint, State::Waiting(reason)),
        };
        fingerprint.extend(paths_fingerprint(&metainfo, &paths));
        let item = self.items.get_mut(key).expect("refreshed items exist");
        if item.fingerprint == fingerprint {
            return;
        }
        // The .torrent was rewritten (touched, copied again) but names the
        // same torrent and the data is unchanged: nothing to do.
        let same_torrent = item
            .torrent
            .as_ref()
            .is_some_and(|t| t.metainfo.info_hash == metainfo.info_hash);
        if same_torrent && item.fingerprint.get(1..) == fingerprint.get(1..) {
            item.fingerprint = fingerprint;
            return;
        }
        self.stop_if_changed_in_place(key, &fingerprint);
        if self.state.resumable(&metainfo, &paths) {
            info!(
                "{}: resumed without hashing (files unchanged)",
                metainfo.info.name
            );
            let ready = Ready {
                metainfo: (*metainfo).clone(),
                paths,
                made: None,
            };
            return self.go_live(key, fingerprint, ready, false);
        }
        let total = metainfo.total_length();
        self.start_job(
            key,
            fingerprint,
            total,
            Work::Check {
                metainfo: Box::new((*metainfo).clone()),
                paths,
            },
        );
    }

    fn refresh_data(&mut self, key: &Path, path: &Path, options: &MakeOptions) {
        let fingerprint = match data_fingerprint(path) {
            Ok(f) => f,
            Err(e) => {
                let reason = format!("cannot read it: {e}");
                return self.set_unservable(key, Vec::new(), State::Failed(reason));
            }
        };
        let settle = Duration::from_secs(self.config.settle_secs);
        let item = self.items.get_mut(key).expect("refreshed items exist");
        if item.fingerprint == fingerprint {
            item.settling_since = None;
            return;
        }
        self.stop_if_changed_in_place(key, &fingerprint);
        // Made before, and unchanged since: serve that torrent as it is,
        // with no wait (a restart is ready at once).
        if let Some(ready) = self.made_before(path, options) {
            info!(
                "{}: resumed without hashing (files unchanged)",
                ready.metainfo.info.name
            );
            return self.go_live(key, fingerprint, ready, false);
        }
        let item = self.items.get_mut(key).expect("refreshed items exist");
        if !settled(item, &fingerprint, settle) {
            if matches!(item.state, State::Checking { .. }) {
                // The job hashes what is being replaced: its result is void.
                item.supersede();
            }
            // A version already seeded stays seeded until the new one is
            // ready: its mapping keeps the old file's bytes.
            if !matches!(item.state, State::Seeding) {
                item.state = State::Waiting(format!(
                    "waiting for it to stay unchanged for {}s",
                    settle.as_secs()
                ));
            }
            return;
        }
        item.settling_since = None;
        let total = fingerprint
            .iter()
            .map(|(_, s)| s.map_or(0, |s| s.len))
            .sum();
        let options = CreateOptions {
            trackers: options.trackers.iter().map(|t| vec![t.clone()]).collect(),
            web_seeds: options.web_seeds.clone(),
            piece_length: (options.piece_size > 0).then_some(options.piece_size),
            private: options.private,
            created_by: Some(concat!("ringseed/", env!("CARGO_PKG_VERSION")).to_owned()),
            ..CreateOptions::default()
        };
        self.start_job(
            key,
            fingerprint,
            total,
            Work::Make {
                path: path.to_path_buf(),
                options,
            },
        );
    }

    /// A seeded file written where it is (`cp` over it, `rsync --inplace`)
    /// shows its new bytes through our mapping: stop serving it at once,
    /// rather than send bytes that fail the old hashes until the rehash.
    /// (A file replaced by a rename keeps being served: the mapping holds
    /// the old inode.)
    fn stop_if_changed_in_place(&mut self, key: &Path, fingerprint: &catalog::Fingerprint) {
        let item = self.items.get_mut(key).expect("refreshed items exist");
        if !matches!(item.state, State::Seeding)
            || !catalog::changed_in_place(&item.fingerprint, fingerprint)
        {
            return;
        }
        warn!(
            "{}: changed in place; not served until rehashed",
            key.display()
        );
        item.state = State::Waiting("changed in place; rehashing it".into());
        if let Some(old) = item.torrent.take() {
            self.stop_serving(key, &old);
        }
    }

    /// The torrent made earlier for `path`, if its options are still the
    /// configured ones and the files are unchanged since.
    fn made_before(&self, path: &Path, options: &MakeOptions) -> Option<Ready> {
        let bytes = std::fs::read(self.state.made(path)).ok()?;
        let metainfo = Metainfo::from_bytes(&bytes).ok()?;
        let trackers: Vec<String> = metainfo.trackers.iter().flatten().cloned().collect();
        let same_options = trackers == options.trackers
            && metainfo.web_seeds == options.web_seeds
            && metainfo.info.private == options.private
            && (options.piece_size == 0 || options.piece_size == metainfo.info.piece_length);
        let paths = DataPaths::locate(&metainfo.info, path);
        (same_options && self.state.resumable(&metainfo, &paths)).then_some(Ready {
            metainfo,
            paths,
            made: Some(bytes),
        })
    }

    /// A source that cannot be served now: stop serving it if it was, and
    /// say why (once per change).
    fn set_unservable(&mut self, key: &Path, fingerprint: catalog::Fingerprint, state: State) {
        let item = self.items.get_mut(key).expect("refreshed items exist");
        if item.fingerprint == fingerprint && item.state.name() == state.name() {
            return;
        }
        match &state {
            State::Failed(reason) => error!("{}: {reason}", key.display()),
            State::Waiting(reason) => warn!("{}: {reason}", key.display()),
            _ => {}
        }
        item.supersede();
        item.fingerprint = fingerprint;
        item.state = state;
        item.blocked_by = None;
        let old = item.torrent.take();
        if let Some(old) = old {
            self.stop_serving(key, &old);
        }
    }

    fn start_job(&mut self, key: &Path, fingerprint: catalog::Fingerprint, total: u64, work: Work) {
        let generation = self.next_generation;
        self.next_generation += 1;
        let progress = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let started = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let cancel = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let item = self.items.get_mut(key).expect("refreshed items exist");
        item.supersede();
        item.generation = generation;
        // The fingerprint is recorded now, so the scans during the job do
        // not queue it again; the job's result decides the state.
        item.fingerprint = fingerprint.clone();
        item.state = State::Checking {
            started: Arc::clone(&started),
            cancel: Arc::clone(&cancel),
            done: Arc::clone(&progress),
            total,
        };
        info!("{}: hashing {} bytes", key.display(), total);
        let job = Job {
            key: key.to_path_buf(),
            generation,
            fingerprint,
            progress,
            started,
            cancel,
            work,
        };
        if self.jobs.send(job).is_err() {
            error!("the hashing thread has ended");
        }
    }

    fn job_done(&mut self, done: JobDone) {
        self.bytes_hashed += done.hashed;
        let Some(item) = self.items.get_mut(&done.key) else {
            return;
        };
        if item.generation != done.generation {
            return;
        }
        // The files must be the ones that were hashed: one replaced while
        // the job ran is hashed again, never served under these hashes.
        let unchanged = done.fingerprint.iter().all(|(p, s)| stamp(p) == *s);
        if !unchanged {
            info!(
                "{}: changed while it was hashed; hashing it again",
                done.key.display()
            );
            item.fingerprint.clear();
            item.supersede();
            self.changed_at.get_or_insert_with(Instant::now);
            return;
        }
        match done.outcome {
            Ok(ready) => {
                if let Err(e) = self.state.save_resume(&ready.metainfo, &ready.paths) {
                    warn!("cannot save resume data: {e} (the next start hashes it again)");
                }
                self.go_live(&done.key, done.fingerprint, ready, true);
            }
            Err(failure) => {
                self.hash_failures += failure.bad_pieces;
                self.set_unservable(&done.key, done.fingerprint, State::Failed(failure.reason));
            }
        }
    }

    /// Serves a checked source (replacing the torrent it served before).
    fn go_live(
        &mut self,
        key: &Path,
        fingerprint: catalog::Fingerprint,
        ready: Ready,
        hashed: bool,
    ) {
        let Ready {
            metainfo,
            paths,
            made,
        } = ready;
        let name = metainfo.info.name.clone();
        // Two sources publishing the same file name in one directory would
        // overwrite (and on removal, delete) each other's .torrent.
        let source = &self.items[key].source;
        if let Source::Data { publish, .. } = source {
            let clash = self.items.iter().find(|(k, i)| {
                k.as_path() != key
                    && matches!(&i.source, Source::Data { publish: p, .. } if p == publish)
                    && i.torrent
                        .as_ref()
                        .is_some_and(|t| t.metainfo.info.name == name)
            });
            if let Some((other, _)) = clash {
                let other = other.clone();
                let reason = format!(
                    "{} already publishes {name}.torrent in {}",
                    other.display(),
                    publish.display()
                );
                return self.set_blocked(key, fingerprint, other, reason);
            }
        }
        let duplicate = self.items.iter().find(|(k, i)| {
            k.as_path() != key
                && i.torrent
                    .as_ref()
                    .is_some_and(|t| t.metainfo.info_hash == metainfo.info_hash)
        });
        if let Some((other, _)) = duplicate {
            let other = other.clone();
            let reason = format!(
                "the same torrent ({}) as {}, which is seeded",
                metainfo.info_hash,
                other.display()
            );
            return self.set_blocked(key, fingerprint, other, reason);
        }
        let torrent = match Torrent::open(metainfo, &paths) {
            Ok(t) => t,
            Err(e) => {
                let state = State::Failed(format!("cannot open its data: {e}"));
                return self.set_unservable(key, fingerprint, state);
            }
        };
        let item = self.items.get_mut(key).expect("live items exist");
        item.fingerprint = fingerprint;
        item.state = State::Seeding;
        item.blocked_by = None;
        let old = item.torrent.replace(Arc::clone(&torrent));
        let source = item.source.clone();
        if let Some(old) = old {
            if old.metainfo.info_hash != torrent.metainfo.info_hash {
                self.stop_serving(key, &old);
            }
        }
        self.session.add_torrent(Arc::clone(&torrent));
        if let (Source::Data { path, .. }, Some(bytes)) = (&source, made) {
            if hashed {
                if let Err(e) = write_atomic(&self.state.made(path), &bytes) {
                    warn!("cannot keep the torrent made of {}: {e}", path.display());
                }
            }
            self.publish(key, &bytes);
        }
        info!(
            "seeding {name} ({}) from {}",
            torrent.metainfo.info_hash,
            key.display()
        );
    }

    /// A source that cannot be served while `other` is: failed, and
    /// looked at again when `other` stops (see `stop_serving`).
    fn set_blocked(
        &mut self,
        key: &Path,
        fingerprint: catalog::Fingerprint,
        other: PathBuf,
        reason: String,
    ) {
        self.set_unservable(key, fingerprint, State::Failed(reason));
        if let Some(item) = self.items.get_mut(key) {
            item.blocked_by = Some(other);
        }
    }

    /// Stops serving `torrent` of source `key`: its peers are dropped,
    /// trackers hear `stopped`, and sources it blocked are looked at again.
    fn stop_serving(&mut self, key: &Path, torrent: &Arc<Torrent>) {
        // One item serves a given info-hash (see `go_live`).
        let h = torrent.metainfo.info_hash;
        self.session.remove_torrent(&h);
        info!("stopped seeding {} ({h})", torrent.metainfo.info.name);
        for other in self.items.values_mut() {
            if other.blocked_by.as_deref() == Some(key) {
                other.blocked_by = None;
                other.fingerprint.clear();
            }
        }
        self.changed_at.get_or_insert_with(Instant::now);
    }

    /// A source is gone (deleted, or its directory left the config).
    fn drop_item(&mut self, key: &Path) {
        let Some(mut item) = self.items.remove(key) else {
            return;
        };
        item.supersede();
        info!("{} is gone", key.display());
        if let Some(torrent) = &item.torrent {
            self.stop_serving(key, torrent);
            if let Source::Data { publish, .. } = &item.source {
                let out = publish.join(format!("{}.torrent", torrent.metainfo.info.name));
                let _ = std::fs::remove_file(out);
                self.publish_magnets(publish);
            }
        }
    }

    /// Writes a data source's .torrent to its publish directory, and the
    /// directory's magnets.txt. A failure is kept on the item (shown in its
    /// status, logged once) and retried at each scan.
    fn publish(&mut self, key: &Path, bytes: &[u8]) {
        let Some(item) = self.items.get(key) else {
            return;
        };
        let (Source::Data { publish, .. }, Some(torrent)) = (&item.source, &item.torrent) else {
            return;
        };
        let publish = publish.clone();
        let out = publish.join(format!("{}.torrent", torrent.metainfo.info.name));
        let m = &torrent.metainfo;
        if m.trackers.iter().all(Vec::is_empty)
            && m.web_seeds.is_empty()
            && self.warned_unfindable.insert(publish.clone())
        {
            warn!(
                "{} names no tracker and no web seed: a client can find this seeder only \
                 if it is given the address (a magnet link with x.pe=, or by hand), and \
                 some (rtorrent) refuse such a torrent; set `trackers` (and `web_seeds`) in \
                 the [[data_dir]] section (warned once for {})",
                out.display(),
                publish.display()
            );
        }
        let error = write_atomic(&out, bytes)
            .err()
            .map(|e| format!("cannot publish {}: {e}", out.display()));
        let item = self.items.get_mut(key).expect("looked up above");
        match &error {
            Some(e) if item.publish_error.as_ref() != Some(e) => {
                error!("{e}; retried at each scan")
            }
            None if item.publish_error.is_some() => info!("published {}", out.display()),
            _ => {}
        }
        item.publish_error = error;
        self.publish_magnets(&publish);
    }

    /// Publishes again what could not be published.
    fn retry_publishing(&mut self) {
        let failed: Vec<(PathBuf, PathBuf)> = self
            .items
            .iter()
            .filter(|(_, i)| i.publish_error.is_some() && i.torrent.is_some())
            .map(|(k, i)| (k.clone(), i.source.path().to_path_buf()))
            .collect();
        for (key, path) in failed {
            if let Ok(bytes) = std::fs::read(self.state.made(&path)) {
                self.publish(&key, &bytes);
            }
        }
    }

    /// Rewrites `publish/magnets.txt`: one magnet link per torrent made for
    /// that directory, sorted by name.
    fn publish_magnets(&self, publish: &Path) {
        let mut lines: Vec<(String, String)> = self
            .items
            .values()
            .filter(|i| matches!(&i.source, Source::Data { publish: p, .. } if p == publish))
            .filter_map(|i| i.torrent.as_ref())
            .map(|t| {
                (
                    t.metainfo.info.name.clone(),
                    MagnetLink::from_metainfo(&t.metainfo).to_string(),
                )
            })
            .collect();
        lines.sort();
        let text: String = lines.into_iter().map(|(_, m)| m + "\n").collect();
        let out = publish.join("magnets.txt");
        if let Err(e) = write_atomic(&out, text.as_bytes()) {
            error!("cannot write {}: {e}", out.display());
        }
    }

    /// Re-reads the configuration and applies what can change live.
    fn reload(&mut self) -> anyhow::Result<()> {
        self.systemd.reloading();
        let result = (|| {
            let new = Config::load(&self.args)?;
            self.log.set(&new.log_level)?;
            let fixed = [
                ("listen", new.listen != self.config.listen),
                ("workers", new.workers != self.config.workers),
                ("io", new.io != self.config.io),
                ("metrics", new.metrics != self.config.metrics),
                (
                    "control_socket",
                    new.control_socket != self.config.control_socket,
                ),
                ("tracker", new.tracker != self.config.tracker),
                ("state_dir", new.state_dir != self.config.state_dir),
                ("announce", new.announce != self.config.announce),
                (
                    "dht.port, dht.bootstrap, dht.read_only",
                    new.dht.enabled && self.config.dht.enabled && new.dht != self.config.dht,
                ),
                (
                    "verify_threads",
                    new.verify_threads != self.config.verify_threads,
                ),
            ];
            for (key, changed) in fixed {
                if changed {
                    warn!("`{key}` changed: it takes effect at the next restart");
                }
            }
            self.session.reconfigure(plane_config(&new));
            match (self.config.dht.enabled, dht_config(&new)) {
                (false, Some(dht)) => {
                    self.session.start_dht(dht);
                    info!("joined the DHT");
                }
                (true, None) => {
                    self.session.stop_dht();
                    info!("left the DHT");
                }
                _ => {}
            }
            self.config = new;
            self.scan();
            info!("configuration reloaded");
            Ok(())
        })();
        self.systemd.ready(&self.status_line());
        result
    }

    fn answer(&mut self, query: Query) -> Reply {
        let done = |message: String| Reply {
            ok: true,
            message,
            status: None,
        };
        let failed = |e: anyhow::Error| Reply {
            ok: false,
            message: format!("{e:#}"),
            status: None,
        };
        match query {
            Query::Status | Query::Control(Request::Status { .. }) => Reply {
                ok: true,
                message: self.status_line(),
                status: Some(self.status()),
            },
            Query::Control(Request::Reload) => match self.reload() {
                Ok(()) => done("configuration reloaded".into()),
                Err(e) => {
                    let e = e.context("reload failed, the old configuration stays");
                    error!("{e:#}");
                    failed(e)
                }
            },
            Query::Control(Request::LogLevel { level }) => match self.log.set(&level) {
                Ok(()) => done(format!("log level is now {level:?}")),
                Err(e) => failed(e),
            },
            Query::Control(Request::Add { path, data }) => match self.add(path, data) {
                Ok(m) => done(m),
                Err(e) => failed(e),
            },
            Query::Control(Request::Remove { target }) => match self.remove(&target) {
                Ok(m) => done(m),
                Err(e) => failed(e),
            },
        }
    }

    fn add(&mut self, path: PathBuf, data: Option<PathBuf>) -> anyhow::Result<String> {
        let path = path
            .canonicalize()
            .with_context(|| format!("cannot add {}", path.display()))?;
        let data = data
            .map(|d| {
                d.canonicalize()
                    .with_context(|| format!("cannot use {}", d.display()))
            })
            .transpose()?;
        self.overrides.removed.retain(|r| r != &path);
        let added = Added {
            path: path.clone(),
            data,
        };
        if !self.overrides.added.contains(&added) {
            self.overrides.added.retain(|a| a.path != path);
            self.overrides.added.push(added);
        }
        self.save_overrides()?;
        self.scan();
        let state = self.items.get(&path).map_or("unknown", |i| i.state.name());
        Ok(format!("added {} ({state})", path.display()))
    }

    fn remove(&mut self, target: &str) -> anyhow::Result<String> {
        let hash = target.to_ascii_lowercase();
        let path = std::path::absolute(target).unwrap_or_else(|_| PathBuf::from(target));
        let exact: Vec<PathBuf> = self
            .items
            .iter()
            .filter(|(key, item)| {
                **key == path
                    || item
                        .torrent
                        .as_ref()
                        .is_some_and(|t| t.metainfo.info_hash.to_string() == hash)
            })
            .map(|(k, _)| k.clone())
            .collect();
        let by_name: Vec<PathBuf> = self
            .items
            .iter()
            .filter(|(_, item)| item.name() == target)
            .map(|(k, _)| k.clone())
            .collect();
        let keys = if exact.is_empty() { by_name } else { exact };
        if keys.is_empty() {
            anyhow::bail!(
                "nothing matches {target:?} (give an info-hash, a name or a source path)"
            );
        }
        if keys.len() > 1 {
            let list: Vec<String> = keys.iter().map(|k| k.display().to_string()).collect();
            anyhow::bail!(
                "{target:?} names {} sources ({}): give the source path or the info-hash",
                keys.len(),
                list.join(", ")
            );
        }
        for key in &keys {
            let was_added = self.overrides.added.iter().any(|a| &a.path == key);
            self.overrides.added.retain(|a| &a.path != key);
            if !was_added && !self.overrides.removed.contains(key) {
                self.overrides.removed.push(key.clone());
            }
        }
        self.save_overrides()?;
        self.scan();
        let names: Vec<String> = keys.iter().map(|k| k.display().to_string()).collect();
        Ok(format!("removed {}", names.join(", ")))
    }

    fn save_overrides(&self) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec_pretty(&self.overrides)?;
        let path = self.state.overrides();
        write_atomic(&path, &bytes).with_context(|| format!("cannot save {}", path.display()))
    }

    fn status(&self) -> Status {
        let stats = self.session.stats();
        let by_hash: HashMap<InfoHash, _> = stats
            .torrents
            .iter()
            .map(|t| (t.info_hash, t.stats))
            .collect();
        let ages = self.session.observer().heartbeat_ages();
        let torrents = self
            .items
            .iter()
            .map(|(key, item)| {
                let t = item.torrent.as_ref();
                let (progress, reason) = match &item.state {
                    State::Checking { done, total, .. } => (
                        Some(done.load(Ordering::Relaxed) as f64 / (*total).max(1) as f64),
                        None,
                    ),
                    State::Waiting(r) | State::Failed(r) => (None, Some(r.clone())),
                    State::Seeding => (None, item.publish_error.clone()),
                };
                TorrentStatus {
                    name: item.name(),
                    source: key.display().to_string(),
                    state: item.state.name().into(),
                    info_hash: t.map(|t| t.metainfo.info_hash.to_string()),
                    size: t.map(|t| t.metainfo.total_length()),
                    progress,
                    reason,
                    warning: t.and_then(|t| t.warning()),
                    magnet: t.map(|t| MagnetLink::from_metainfo(&t.metainfo).to_string()),
                    figures: t
                        .and_then(|t| by_hash.get(&t.metainfo.info_hash))
                        .map(figures)
                        .unwrap_or_else(|| figures(&Default::default())),
                }
            })
            .collect();
        let trackers = self
            .session
            .tracker_status()
            .into_iter()
            .map(|t| TrackerStatus {
                info_hash: t.info_hash.to_string(),
                url: t.url,
                successes: t.successes,
                failures: t.failures,
                last_error: match t.last {
                    Some(Err(e)) => Some(e),
                    _ => None,
                },
            })
            .collect();
        let hashing_now: u64 = self
            .items
            .values()
            .map(|i| match &i.state {
                State::Checking { done, .. } => done.load(Ordering::Relaxed),
                _ => 0,
            })
            .sum();
        Status {
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_secs: self.started.elapsed().as_secs(),
            listen: self.session.local_addr().to_string(),
            data_plane: self.session.data_plane().to_string(),
            data_plane_fallback: self.session.fallback_reason().map(str::to_owned),
            totals: figures(&stats.total),
            workers: stats
                .workers
                .iter()
                .enumerate()
                .map(|(index, w)| WorkerStatus {
                    index,
                    heartbeat_age_ms: ages.get(index).copied().unwrap_or(0),
                    figures: figures(w),
                })
                .collect(),
            torrents,
            trackers,
            directory_errors: self
                .dir_errors
                .iter()
                .map(|(d, e)| DirectoryError {
                    path: d.display().to_string(),
                    error: e.clone(),
                })
                .collect(),
            bytes_hashed: self.bytes_hashed + hashing_now,
            hash_failures: self.hash_failures,
            dht: self.session.dht_status().map(|d| DhtFigures {
                port: d.port,
                announcing: d.announcing,
                external_v4: d.external_v4.map(|ip| ip.to_string()),
                nodes: [("ipv4", d.v4), ("ipv6", d.v6)]
                    .iter()
                    .filter_map(|(family, s)| s.as_ref().map(|s| DhtNodeFigures::of(family, s)))
                    .collect(),
            }),
        }
    }

    /// One line for `systemctl status` and `ringseed ctl status`.
    fn status_line(&self) -> String {
        let mut states: BTreeMap<&str, usize> = BTreeMap::new();
        for item in self.items.values() {
            *states.entry(item.state.name()).or_default() += 1;
        }
        let total = self.session.stats().total;
        let states: Vec<String> = states.iter().map(|(s, n)| format!("{n} {s}")).collect();
        format!(
            "{} | {} peers | sent {} | {} data plane",
            if states.is_empty() {
                "no torrents".to_owned()
            } else {
                states.join(", ")
            },
            total.peers,
            crate::display::human_bytes(total.bytes_sent),
            self.session.data_plane()
        )
    }

    /// SIGTERM: trackers hear `stopped` (within the deadline), then the
    /// workers close every connection.
    fn stop(mut self) -> anyhow::Result<Exit> {
        self.systemd.stopping();
        info!("stopping");
        self.watcher = None;
        let deadline = Duration::from_secs(self.config.stop_timeout_secs);
        let (stats, in_time) = self
            .session
            .shutdown(deadline)
            .context("a worker failed while stopping")?;
        if !in_time {
            warn!(
                "trackers did not all hear `stopped` within {}s; exiting anyway",
                deadline.as_secs()
            );
        }
        let _ = std::fs::remove_file(&self.control_path);
        info!(
            "stopped: sent {} to {} connections",
            crate::display::human_bytes(stats.total.bytes_sent),
            stats.total.connections_accepted
        );
        Ok(Exit::Success)
    }
}
