//! Web seeds (BEP 19): a torrent's HTTP(S) mirrors as a source beside its
//! peers, on helper threads.
//!
//! Why threads and not the data plane: mirrors need TLS and HTTP, the data
//! plane has neither, and a download from mirrors is a few long, sequential
//! streams rather than thousands of small requests. Each connection thread
//! reserves a run of whole consecutive pieces in the picker (so mirrors and
//! peers never fight over blocks), reads it with one range request per file
//! it spans on a keep-alive connection, straight into piece buffers, hashes
//! each piece and hands it to a worker, which writes it exactly as a piece
//! from peers. Pad files are zeros and never fetched.
//!
//! A mirror is judged on its own: a bad piece excludes that piece for it and
//! gives its file a strike, two strikes drop the file (a single-file torrent:
//! the mirror); 404 drops one file, a busy answer or a failure backs the
//! mirror off. Nothing a mirror does touches the peers' bans.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::hash::sha1;
use crate::io::announce::pem_certificates;
use crate::io::plane::control::PieceSink;
use crate::io::storage::Torrent;
use crate::policy::bitfield::Bitfield;
use crate::policy::picker::PeerKey;
use crate::policy::piece_buf::PieceBuf;
use crate::proto::info_hash::InfoHash;
use crate::proto::layout::Segment;
use crate::proto::webseed::{
    classify, web_seeds_of, Answer, AnswerHeaders, WebSeedUrl, MAX_REDIRECTS,
};
use crate::session::PeerSource;

/// Picker keys of web seed connections: apart from the workers' keys.
const WEB_SEED_KEYS: PeerKey = 1 << 63;

/// Bytes of a file we read and drop to reach the start asked for, when a
/// mirror ignores ranges, before calling it a mirror that ignores ranges.
const MAX_DISCARD: u64 = 48 << 10;

/// A bad piece from a mirror is a strike against its file; this many drop
/// the file for that mirror.
const STRIKES_PER_FILE: u32 = 2;

/// First backoff after a failure; it doubles up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_secs(30);
const MAX_BACKOFF: Duration = Duration::from_secs(30 * 60);

/// A mirror must send at least `MIN_BYTES_PER_WINDOW` in every
/// `SLOW_WINDOW` of a run, or the run is given up (cause `slow`) and its
/// pieces go to others: a mirror trickling a byte now and then never trips
/// the per-read timeout, and would hold its run, and the download, forever.
const SLOW_WINDOW: Duration = Duration::from_secs(30);
const MIN_BYTES_PER_WINDOW: u64 = 256 << 10;

/// Runs of a mirror that ignores ranges (it sends whole files) are this
/// many times the usual longest run: long, so that it streams, but bounded.
const WHOLE_FILE_RUN_FACTOR: u64 = 4;

/// How long a redirect target is used before the mirror's own URL is
/// tried again (targets such as signed links expire).
const REDIRECT_TTL: Duration = Duration::from_secs(600);

/// Web seed settings.
#[derive(Debug, Clone)]
pub struct WebSeedConfig {
    /// Connections to one mirror at most.
    pub per_server: usize,
    /// Connections to the mirrors of one torrent at most.
    pub per_torrent: usize,
    /// Certificates (PEM) trusted besides the system's roots.
    pub extra_roots_pem: Option<Vec<u8>>,
    /// Time to connect (TLS included).
    pub connect_timeout: Duration,
    /// Time to wait for an answer, or for more of a body.
    pub read_timeout: Duration,
    /// Largest run of pieces one request asks for.
    pub max_run_bytes: u64,
}

impl Default for WebSeedConfig {
    fn default() -> Self {
        WebSeedConfig {
            per_server: 2,
            per_torrent: 8,
            extra_roots_pem: None,
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(20),
            max_run_bytes: 16 << 20,
        }
    }
}

/// Why web seeds cannot start.
#[derive(Debug, thiserror::Error)]
pub enum WebSeedError {
    /// The extra certificates hold no certificate.
    #[error("no certificate in the web seed CA file")]
    NoCertificate,
}

/// The web seeds of the Session's torrents being downloaded; cheap to
/// clone (the Session keeps one for status, its sources list another).
#[derive(Clone)]
pub struct WebSeeds {
    inner: Arc<Inner>,
}

struct Inner {
    config: WebSeedConfig,
    agent: ureq::Agent,
    sink: PieceSink,
    torrents: Mutex<HashMap<InfoHash, Running>>,
    next_key: AtomicU64,
}

struct Running {
    torrent: Arc<Torrent>,
    stop: Arc<AtomicBool>,
    mirrors: Vec<Arc<Mirror>>,
}

/// One mirror of one torrent: its URLs, what it lacks, how it behaved.
struct Mirror {
    url: WebSeedUrl,
    /// The URL of each file on it (`None`: a pad file).
    file_urls: Vec<Option<String>>,
    state: Mutex<MirrorState>,
    connections: AtomicUsize,
    bytes: AtomicU64,
    requests: AtomicU64,
    /// Bytes per second of its last run on any connection, 0 before one.
    rate: AtomicU64,
}

#[derive(Default)]
struct MirrorState {
    phase: Phase,
    errors: BTreeMap<&'static str, u64>,
    failures_in_a_row: u32,
    /// Files not on this mirror (404) or dropped for bad data.
    missing_files: HashSet<usize>,
    /// Strikes (bad pieces) per file.
    strikes: HashMap<usize, u32>,
    /// Pieces it sent bad: fetched from others.
    excluded: HashSet<u32>,
    /// Where a file was redirected, and until when that holds.
    redirects: HashMap<usize, (String, Instant)>,
    ignores_ranges: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
enum Phase {
    #[default]
    Active,
    BackingOff {
        until: Instant,
        cause: &'static str,
    },
    Dropped {
        cause: &'static str,
    },
}

/// What one web seed did, for status lines and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSeedStatus {
    /// Its URL, without credentials.
    pub url: String,
    /// `active`, `backing off N s (cause)` or `dropped (cause)`.
    pub state: String,
    /// Bytes of pieces it delivered (verified or not).
    pub bytes: u64,
    /// Requests sent.
    pub requests: u64,
    /// Connections now.
    pub connections: usize,
    /// Files dropped for it (missing there, or bad data).
    pub files_dropped: usize,
    /// It answers range requests with the whole file.
    pub ignores_ranges: bool,
    /// Errors by cause: `connect`, `tls`, `timeout`, `dns`, `io`,
    /// `http_4xx`, `http_5xx`, `http_404`, `http_410_416`, `busy`, `bad_range`,
    /// `bad_length`, `bad_redirect`, `redirect_limit`, `range_ignored`,
    /// `hash_fail`.
    pub errors: BTreeMap<String, u64>,
}

/// The web seeds of one torrent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TorrentWebSeeds {
    /// The torrent.
    pub info_hash: InfoHash,
    /// Its name.
    pub name: String,
    /// Each web seed, in the torrent's order.
    pub seeds: Vec<WebSeedStatus>,
}

impl WebSeeds {
    /// Web seeds with `config`, handing pieces to `sink`.
    pub fn new(config: WebSeedConfig, sink: PieceSink) -> Result<Self, WebSeedError> {
        let mut builder = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_connect(Some(config.connect_timeout))
            .timeout_recv_response(Some(config.read_timeout))
            .timeout_per_read(Some(config.read_timeout))
            .max_idle_connections_per_host(config.per_server.max(1) * 2)
            .user_agent(concat!("ringseed/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = &config.extra_roots_pem {
            builder = builder.tls_config(tls_with_extra_roots(pem)?);
        }
        Ok(WebSeeds {
            inner: Arc::new(Inner {
                config,
                agent: builder.build().into(),
                sink,
                torrents: Mutex::default(),
                next_key: AtomicU64::new(0),
            }),
        })
    }

    fn torrents(&self) -> std::sync::MutexGuard<'_, HashMap<InfoHash, Running>> {
        self.inner
            .torrents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// What each torrent's web seeds did (torrents that have some).
    pub fn status(&self) -> Vec<TorrentWebSeeds> {
        let mut out: Vec<TorrentWebSeeds> = self
            .torrents()
            .values()
            .map(|r| TorrentWebSeeds {
                info_hash: r.torrent.metainfo.info_hash,
                name: r.torrent.metainfo.info.name.clone(),
                seeds: r.mirrors.iter().map(|m| m.status()).collect(),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    fn stop_torrent(&self, info_hash: &InfoHash) {
        if let Some(r) = self.torrents().get(info_hash) {
            r.stop.store(true, Ordering::Release);
        }
    }
}

/// The system's CA bundle, where distributions keep it (Debian and Ubuntu,
/// Fedora and RHEL, openSUSE, Alpine and others).
const SYSTEM_CA_BUNDLES: [&str; 4] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// TLS that trusts the system's CA bundle and the certificates in `pem`.
/// (Without extra certificates, ureq's built-in web PKI roots are used:
/// ureq can trust either a given list or its own, not both.)
fn tls_with_extra_roots(pem: &[u8]) -> Result<ureq::tls::TlsConfig, WebSeedError> {
    let extra = pem_certificates(pem);
    if extra.is_empty() {
        return Err(WebSeedError::NoCertificate);
    }
    let system = SYSTEM_CA_BUNDLES
        .iter()
        .find_map(|path| std::fs::read(path).ok())
        .unwrap_or_else(|| {
            tracing::warn!(
                "no system CA bundle found ({}): HTTPS web seeds are trusted only by the --web-seed-ca certificates",
                SYSTEM_CA_BUNDLES.join(", ")
            );
            Vec::new()
        });
    let mut roots = pem_certificates(&system);
    roots.extend(extra);
    Ok(ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::Specific(Arc::new(roots)))
        .build())
}

impl PeerSource for WebSeeds {
    fn add(&mut self, torrent: &Arc<Torrent>) {
        let info_hash = torrent.metainfo.info_hash;
        if !torrent.is_downloading() {
            return;
        }
        let (urls, skipped) = web_seeds_of(&torrent.metainfo);
        for why in skipped {
            tracing::warn!("{}: {why}", torrent.metainfo.info.name);
        }
        if urls.is_empty() {
            return;
        }
        self.stop_torrent(&info_hash);
        let mirrors: Vec<Arc<Mirror>> = urls
            .into_iter()
            .map(|url| {
                Arc::new(Mirror {
                    file_urls: url.file_urls(&torrent.metainfo.info),
                    url,
                    state: Mutex::default(),
                    connections: AtomicUsize::new(0),
                    bytes: AtomicU64::new(0),
                    requests: AtomicU64::new(0),
                    rate: AtomicU64::new(0),
                })
            })
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let config = &self.inner.config;
        let threads = config
            .per_torrent
            .min(mirrors.len() * config.per_server)
            .max(1);
        let fetch = Arc::new(Fetch {
            torrent: Arc::clone(torrent),
            mirrors: mirrors.clone(),
            stop: Arc::clone(&stop),
            agent: self.inner.agent.clone(),
            sink: self.inner.sink.clone(),
            config: config.clone(),
            threads,
        });
        for i in 0..threads {
            let fetch = Arc::clone(&fetch);
            let key = WEB_SEED_KEYS | self.inner.next_key.fetch_add(1, Ordering::Relaxed);
            let spawned = std::thread::Builder::new()
                .name(format!("ringseed-web{i}"))
                .spawn(move || fetch.connection(key));
            if let Err(e) = spawned {
                tracing::warn!("cannot start a web seed thread: {e}");
            }
        }
        self.torrents().insert(
            info_hash,
            Running {
                torrent: Arc::clone(torrent),
                stop,
                mirrors,
            },
        );
    }

    fn remove(&mut self, info_hash: InfoHash) {
        self.stop_torrent(&info_hash);
        self.torrents().remove(&info_hash);
    }

    fn completed(&mut self, info_hash: InfoHash) {
        // Kept for status; the threads end.
        self.stop_torrent(&info_hash);
    }

    fn stop(self: Box<Self>) {
        // Threads end at their next piece or read deadline; none holds
        // anything the Session must wait for (pieces go through the workers).
        for r in self.torrents().values() {
            r.stop.store(true, Ordering::Release);
        }
    }
}

impl Mirror {
    fn state(&self) -> std::sync::MutexGuard<'_, MirrorState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn status(&self) -> WebSeedStatus {
        let s = self.state();
        let state = match &s.phase {
            Phase::Active => "active".to_owned(),
            Phase::BackingOff { until, cause } => format!(
                "backing off {} s ({cause})",
                until.saturating_duration_since(Instant::now()).as_secs()
            ),
            Phase::Dropped { cause } => format!("dropped ({cause})"),
        };
        WebSeedStatus {
            url: self.url.redacted(),
            state,
            bytes: self.bytes.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            connections: self.connections.load(Ordering::Relaxed),
            files_dropped: s.missing_files.len(),
            ignores_ranges: s.ignores_ranges,
            errors: s
                .errors
                .iter()
                .map(|(k, v)| ((*k).to_owned(), *v))
                .collect(),
        }
    }

    /// Whether a connection may use it now.
    fn usable(&self) -> bool {
        let mut s = self.state();
        match s.phase {
            Phase::Active => true,
            Phase::BackingOff { until, .. } if until <= Instant::now() => {
                s.phase = Phase::Active;
                true
            }
            _ => false,
        }
    }

    /// The pieces it can serve: all but those of files it lacks and those
    /// it sent bad.
    fn has(&self, torrent: &Torrent) -> Bitfield {
        let layout = &torrent.layout;
        let mut has = Bitfield::full(layout.num_pieces());
        let s = self.state();
        for &file in &s.missing_files {
            for piece in layout.pieces_of_file(file) {
                has.clear(piece);
            }
        }
        for &piece in &s.excluded {
            has.clear(piece);
        }
        has
    }

    /// Where to ask for `file` now: a live redirect target, else its URL.
    fn url_for(&self, file: usize) -> Option<String> {
        let mut s = self.state();
        if let Some((to, until)) = s.redirects.get(&file) {
            if *until > Instant::now() {
                return Some(to.clone());
            }
            s.redirects.remove(&file);
        }
        self.file_urls.get(file).cloned().flatten()
    }

    /// Records what ended a run, and what follows for the mirror.
    fn on_failure(&self, failure: &Failure, torrent: &Torrent) {
        let mut s = self.state();
        *s.errors.entry(failure.cause()).or_default() += 1;
        match failure {
            Failure::Stopped => {}
            Failure::Missing { file, .. } => {
                s.missing_files.insert(*file);
                s.redirects.remove(file);
            }
            Failure::Busy(wait) => {
                s.phase = Phase::BackingOff {
                    until: Instant::now() + *wait,
                    cause: "busy",
                };
            }
            Failure::BadPiece { piece } => {
                s.excluded.insert(*piece);
                let range = torrent.layout.piece_range(*piece);
                for segment in torrent.layout.segments(range) {
                    if segment.pad {
                        continue;
                    }
                    let strikes = s.strikes.entry(segment.file).or_default();
                    *strikes += 1;
                    if *strikes >= STRIKES_PER_FILE {
                        s.missing_files.insert(segment.file);
                    }
                }
            }
            Failure::Failed(cause) => {
                s.failures_in_a_row += 1;
                let wait = FIRST_BACKOFF
                    .saturating_mul(1 << (s.failures_in_a_row - 1).min(10))
                    .min(MAX_BACKOFF);
                s.phase = Phase::BackingOff {
                    until: Instant::now() + wait,
                    cause,
                };
            }
        }
        let files = self.file_urls.iter().filter(|u| u.is_some()).count();
        if s.missing_files.len() >= files && !matches!(s.phase, Phase::Dropped { .. }) {
            let cause = if s.strikes.values().any(|&n| n >= STRIKES_PER_FILE) {
                "bad data"
            } else {
                "no files"
            };
            s.phase = Phase::Dropped { cause };
        }
    }
}

/// Why a run ended early.
#[derive(Debug)]
enum Failure {
    /// The download ended or the torrent was removed.
    Stopped,
    /// The mirror lacks the file.
    Missing { file: usize, status: u16 },
    /// The mirror asked us to wait.
    Busy(Duration),
    /// A piece from it failed its hash check.
    BadPiece { piece: u32 },
    /// Anything else, by cause.
    Failed(&'static str),
}

impl Failure {
    fn cause(&self) -> &'static str {
        match self {
            Failure::Stopped => "stopped",
            Failure::Missing { status: 404, .. } => "http_404",
            Failure::Missing {
                status: 410 | 416, ..
            } => "http_410_416",
            Failure::Missing { .. } => "missing",
            Failure::Busy(_) => "busy",
            Failure::BadPiece { .. } => "hash_fail",
            Failure::Failed(cause) => cause,
        }
    }
}

fn transport_cause(e: &ureq::Error) -> &'static str {
    match e {
        ureq::Error::Timeout(_) => "timeout",
        ureq::Error::HostNotFound => "dns",
        ureq::Error::ConnectionFailed => "connect",
        ureq::Error::Tls(_) | ureq::Error::Rustls(_) | ureq::Error::Pem(_) => "tls",
        ureq::Error::Io(e) => io_cause(e),
        _ => "io",
    }
}

fn io_cause(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => "timeout",
        std::io::ErrorKind::ConnectionRefused => "connect",
        _ => "io",
    }
}

/// The web seeds of one torrent being downloaded, shared by its threads.
struct Fetch {
    torrent: Arc<Torrent>,
    mirrors: Vec<Arc<Mirror>>,
    stop: Arc<AtomicBool>,
    agent: ureq::Agent,
    sink: PieceSink,
    config: WebSeedConfig,
    threads: usize,
}

/// A connection's claim on a mirror, given back when dropped.
struct Claim<'a>(&'a Mirror);

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Fetch {
    fn done(&self) -> bool {
        self.stop.load(Ordering::Acquire)
            || !self.torrent.is_downloading()
            || self.torrent.is_errored()
    }

    /// A usable mirror with a free connection slot, the least busy first
    /// (ties: the torrent's order, rotated by `key` so threads spread).
    fn claim(&self, key: PeerKey) -> Option<Claim<'_>> {
        let n = self.mirrors.len();
        let start = (key as usize) % n;
        let mut best: Option<&Mirror> = None;
        for i in 0..n {
            let m = &self.mirrors[(start + i) % n];
            let busy = m.connections.load(Ordering::Acquire);
            if busy >= self.config.per_server || !m.usable() {
                continue;
            }
            if best.is_none_or(|b| busy < b.connections.load(Ordering::Acquire)) {
                best = Some(m);
            }
        }
        let m = best?;
        // Another thread may have taken the last slot since it was read.
        m.connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.config.per_server).then_some(n + 1)
            })
            .ok()?;
        Some(Claim(m))
    }

    fn all_dropped(&self) -> bool {
        self.mirrors
            .iter()
            .all(|m| matches!(m.state().phase, Phase::Dropped { .. }))
    }

    /// One connection: runs of pieces from whichever mirror is free, until
    /// the download ends or every mirror is dropped.
    fn connection(&self, key: PeerKey) {
        while !self.done() && !self.all_dropped() {
            let Some(claim) = self.claim(key) else {
                std::thread::sleep(Duration::from_millis(250));
                continue;
            };
            let mirror = claim.0;
            let mut after = None;
            loop {
                if self.done() || !mirror.usable() {
                    break;
                }
                let has = mirror.has(&self.torrent);
                let max_pieces = self.run_pieces(mirror);
                let run = {
                    let Some(mut d) = self.torrent.download() else {
                        return;
                    };
                    d.pick_run(key, &has, max_pieces, after)
                };
                if run.is_empty() {
                    // Nothing for this mirror now (peers have the rest, or
                    // memory is short): look again soon.
                    drop(claim);
                    std::thread::sleep(Duration::from_millis(200));
                    break;
                }
                let started = Instant::now();
                let mut reader = RunReader::new(self, mirror, key, run.clone());
                let result = reader.read_all();
                reader.release();
                match result {
                    Ok(()) => {
                        mirror.state().failures_in_a_row = 0;
                        let bytes = self.torrent.layout.piece_range(run.start).start;
                        let end = self.torrent.layout.piece_range(run.end - 1).end;
                        let secs = started.elapsed().as_secs_f64().max(1e-3);
                        let rate = ((end - bytes) as f64 / secs) as u64;
                        mirror.rate.store(rate.max(1), Ordering::Relaxed);
                        after = Some(run.end - 1);
                    }
                    Err(failure) => {
                        if !matches!(failure, Failure::Stopped) {
                            tracing::debug!("web seed {}: {:?}", mirror.url.redacted(), failure);
                        }
                        mirror.on_failure(&failure, &self.torrent);
                        break;
                    }
                }
            }
        }
    }

    /// Pieces in the next run: about 10 s at the mirror's rate, from
    /// 1 MiB (at least a piece) to `max_run_bytes`, and no more than a
    /// share of what is missing so that the tail is spread. A mirror that
    /// ignores ranges reads whole files, so it gets longer runs.
    fn run_pieces(&self, mirror: &Mirror) -> usize {
        let rate = Some(mirror.rate.load(Ordering::Relaxed)).filter(|&r| r > 0);
        let piece = self.torrent.layout.piece_length().max(1);
        let missing = self
            .torrent
            .download()
            .map_or(0, |d| d.picker.bytes_missing());
        let ceiling = if mirror.state().ignores_ranges {
            self.config.max_run_bytes * WHOLE_FILE_RUN_FACTOR
        } else {
            self.config.max_run_bytes
        };
        let floor = piece.max(1 << 20);
        let bytes = rate
            .map_or(4 << 20, |r| r.saturating_mul(10))
            .clamp(floor, ceiling.max(floor))
            .min(missing / (2 * self.threads as u64).max(1))
            .max(piece);
        (bytes / piece).clamp(1, u32::MAX as u64) as usize
    }
}

/// Reads one run of pieces from a mirror into piece buffers, hashing and
/// delivering each as it fills.
struct RunReader<'a> {
    fetch: &'a Fetch,
    mirror: &'a Mirror,
    key: PeerKey,
    run: Range<u32>,
    /// The piece being filled, its buffer and how much of it is filled.
    piece: u32,
    buffer: Option<PieceBuf>,
    filled: usize,
    /// Bytes read since `window_start` (see [`SLOW_WINDOW`]).
    window_start: Instant,
    window_bytes: u64,
}

impl<'a> RunReader<'a> {
    fn new(fetch: &'a Fetch, mirror: &'a Mirror, key: PeerKey, run: Range<u32>) -> Self {
        RunReader {
            fetch,
            mirror,
            key,
            piece: run.start,
            run,
            buffer: None,
            filled: 0,
            window_start: Instant::now(),
            window_bytes: 0,
        }
    }

    /// Reads from a mirror's `body` into `buf`, giving the run up when the
    /// mirror has been too slow for a whole window.
    fn read_body(&mut self, body: &mut impl Read, buf: &mut [u8]) -> Result<usize, Failure> {
        let n = body.read(buf).map_err(|e| Failure::Failed(io_cause(&e)))?;
        if n == 0 {
            return Err(Failure::Failed("io"));
        }
        self.window_bytes += n as u64;
        if self.window_start.elapsed() >= SLOW_WINDOW {
            if self.window_bytes < MIN_BYTES_PER_WINDOW {
                return Err(Failure::Failed("slow"));
            }
            self.window_start = Instant::now();
            self.window_bytes = 0;
        }
        Ok(n)
    }

    fn read_all(&mut self) -> Result<(), Failure> {
        let layout = &self.fetch.torrent.layout;
        let bytes =
            layout.piece_range(self.run.start).start..layout.piece_range(self.run.end - 1).end;
        let segments: Vec<Segment> = layout.segments(bytes).collect();
        for segment in segments {
            if segment.pad {
                let mut left = segment.len;
                while left > 0 {
                    let space = self.space()?;
                    let n = (space.len() as u64).min(left) as usize;
                    space[..n].fill(0);
                    self.advance(n)?;
                    left -= n as u64;
                }
            } else {
                self.read_segment(&segment)?;
            }
        }
        Ok(())
    }

    /// The rest of the current piece's buffer (taken from the download's
    /// budget when the piece starts).
    fn space(&mut self) -> Result<&mut [u8], Failure> {
        if self.buffer.is_none() {
            if self.fetch.done() {
                return Err(Failure::Stopped);
            }
            // Within the memory budget, like peers' pieces: wait while the
            // disk catches up.
            loop {
                let Some(mut d) = self.fetch.torrent.download() else {
                    return Err(Failure::Stopped);
                };
                if !d.over_memory_budget() {
                    self.buffer = Some(d.take_piece_buffer(self.piece));
                    self.filled = 0;
                    break;
                }
                drop(d);
                std::thread::sleep(Duration::from_millis(20));
                if self.fetch.done() {
                    return Err(Failure::Stopped);
                }
                // Waiting on our disk is not the mirror's slowness.
                self.window_start = Instant::now();
                self.window_bytes = 0;
            }
        }
        let buffer = self.buffer.as_mut().expect("taken above");
        Ok(&mut buffer[self.filled..])
    }

    /// `n` more bytes of the current piece are in; a full piece is hashed
    /// and delivered.
    fn advance(&mut self, n: usize) -> Result<(), Failure> {
        self.filled += n;
        let full = self.buffer.as_ref().is_some_and(|b| self.filled == b.len());
        if !full {
            return Ok(());
        }
        let data = self.buffer.take().expect("full");
        let piece = self.piece;
        self.piece += 1;
        self.mirror
            .bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        let torrent = &self.fetch.torrent;
        let expected = torrent.metainfo.info.pieces.get(piece as usize).copied();
        let good = expected == Some(sha1(&data));
        let complete = {
            let Some(mut d) = torrent.download() else {
                return Err(Failure::Stopped);
            };
            d.on_whole_piece(self.key, piece, data)
        };
        if let Some(complete) = complete {
            self.fetch.sink.deliver(Arc::clone(torrent), complete, good);
        }
        if good {
            Ok(())
        } else {
            Err(Failure::BadPiece { piece })
        }
    }

    /// Gives back what the run did not deliver: the piece being filled and
    /// the pieces after it.
    fn release(&mut self) {
        let Some(mut d) = self.fetch.torrent.download() else {
            return;
        };
        if let Some(buffer) = self.buffer.take() {
            d.recycle(buffer);
        }
        d.release_run(self.key, self.piece..self.run.end);
    }

    /// Reads the file bytes of `segment` into the pieces, with as many
    /// requests as the mirror needs (a short part is asked again for the
    /// rest).
    fn read_segment(&mut self, segment: &Segment) -> Result<(), Failure> {
        let file = segment.file;
        let file_len = {
            let r = self.fetch.torrent.layout.file_range(file);
            r.end - r.start
        };
        let mut offset = segment.file_offset;
        let end = segment.file_offset + segment.len;
        while offset < end {
            let whole = offset == 0 && end == file_len;
            let asked = (!whole).then_some(offset..end);
            let (answer, body) = self.get(file, asked, file_len)?;
            let mut body = body.into_reader();
            let (from, to) = match answer {
                Answer::Part { range } => (range.start, range.end),
                Answer::WholeFile => {
                    if offset > MAX_DISCARD {
                        let mut s = self.mirror.state();
                        if !s.ignores_ranges {
                            s.ignores_ranges = true;
                            *s.errors.entry("range_ignored").or_default() += 1;
                        }
                    }
                    let mut scratch = vec![0u8; 64 << 10];
                    let mut skip = offset;
                    while skip > 0 {
                        let want = (scratch.len() as u64).min(skip) as usize;
                        skip -= self.read_body(&mut body, &mut scratch[..want])? as u64;
                    }
                    (offset, end)
                }
                _ => unreachable!("get returns only answers with a body"),
            };
            let mut left = to - from;
            while left > 0 {
                let want = (self.space()?.len() as u64).min(left) as usize;
                // The buffer is taken out for the read so that `self` can
                // keep the window's count; `space` put it there.
                let mut buffer = self.buffer.take().expect("space() took one");
                let read = self.read_body(&mut body, &mut buffer[self.filled..self.filled + want]);
                self.buffer = Some(buffer);
                let n = read?;
                left -= n as u64;
                self.advance(n)?;
            }
            offset = to;
        }
        Ok(())
    }

    /// GETs `asked` bytes (`None`: all) of `file`, following redirects; an
    /// answer with a body the caller reads, or why not.
    fn get(
        &mut self,
        file: usize,
        asked: Option<Range<u64>>,
        file_len: u64,
    ) -> Result<(Answer, ureq::Body), Failure> {
        let original = self
            .mirror
            .url_for(file)
            .ok_or(Failure::Missing { file, status: 0 })?;
        let mut url = original.clone();
        for _ in 0..=MAX_REDIRECTS {
            let mut request = self.fetch.agent.get(&url);
            if let Some(r) = &asked {
                request = request.header("Range", format!("bytes={}-{}", r.start, r.end - 1));
            }
            self.mirror.requests.fetch_add(1, Ordering::Relaxed);
            let response = request
                .call()
                .map_err(|e| Failure::Failed(transport_cause(&e)))?;
            let header = |name: &str| {
                response
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            let (range, length, location, retry) = (
                header("content-range"),
                header("content-length").and_then(|l| l.trim().parse().ok()),
                header("location"),
                header("retry-after"),
            );
            let headers = AnswerHeaders {
                content_range: range.as_deref(),
                content_length: length,
                location: location.as_deref(),
                retry_after: retry.as_deref(),
            };
            let status = response.status().as_u16();
            match classify(&url, status, &headers, asked.clone(), file_len) {
                Ok(Answer::Redirect(to)) => url = to,
                Ok(Answer::Missing(status)) => return Err(Failure::Missing { file, status }),
                Ok(Answer::Busy(wait)) => return Err(Failure::Busy(wait)),
                Ok(answer) => {
                    if url != original {
                        self.mirror
                            .state()
                            .redirects
                            .insert(file, (url, Instant::now() + REDIRECT_TTL));
                    }
                    return Ok((answer, response.into_body()));
                }
                Err(e) => return Err(Failure::Failed(e.cause())),
            }
        }
        Err(Failure::Failed("redirect_limit"))
    }
}
