//! The tracker client: HTTP(S) and UDP announces and scrapes, and the
//! announcer thread that keeps every seeded torrent registered with its
//! trackers. It runs on a control thread of its own, so DNS lookups and
//! slow trackers never touch a data-plane worker.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::policy::tiers::TrackerTiers;
use crate::proto::info_hash::InfoHash;
use crate::proto::tracker::{
    parse_http_announce, parse_http_scrape, scrape_url, udp_retransmit_timeout, Announce,
    AnnounceReply, Event, ScrapeStats, TrackerError, UdpReply, UdpRequest,
};
use crate::rng::{self, random_u64};

/// Largest tracker reply we read.
const MAX_REPLY: u64 = 1 << 20;
/// BEP 15: a connection id may be used for one minute.
const CONNECTION_ID_LIFETIME: Duration = Duration::from_secs(60);

/// Why an announce or scrape failed.
#[derive(Debug, thiserror::Error)]
pub enum AnnounceError {
    /// The URL is not http://, https:// or udp://, or has no host.
    #[error("unsupported tracker URL {0:?}")]
    BadUrl(String),
    /// An HTTP tracker could not be reached or answered with an error.
    #[error("HTTP tracker {url}: {message}")]
    Http {
        /// The tracker.
        url: String,
        /// What happened.
        message: String,
    },
    /// A UDP tracker could not be reached.
    #[error("UDP tracker {url}")]
    Udp {
        /// The tracker.
        url: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A UDP tracker did not answer after every retransmission.
    #[error("UDP tracker {url} did not answer after {attempts} attempts")]
    Timeout {
        /// The tracker.
        url: String,
        /// How many packets were sent.
        attempts: u32,
    },
    /// The tracker answered, but with a failure or garbage.
    #[error(transparent)]
    Tracker(#[from] TrackerError),
}

/// Settings of the tracker client.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Timeout of one HTTP request.
    pub http_timeout: Duration,
    /// Retransmissions of a UDP request (BEP 15 allows 8: over an hour).
    pub udp_retries: u32,
    /// Scale of the UDP timeouts: BEP 15 says 15 s * 2^n; tests shorten it.
    pub udp_timeout_scale: f64,
    /// Root certificates (PEM) to trust for HTTPS trackers instead of the
    /// built-in web PKI roots: for a tracker with its own CA, and tests.
    pub roots_pem: Option<Vec<u8>>,
    /// When set, UDP waits give up within a second (shutdown).
    pub cancel: Option<Arc<AtomicBool>>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            http_timeout: Duration::from_secs(20),
            udp_retries: 3,
            udp_timeout_scale: 1.0,
            roots_pem: None,
            cancel: None,
        }
    }
}

/// Talks to trackers, one request at a time (a blocking client for a
/// control thread).
pub struct TrackerClient {
    config: ClientConfig,
    http: ureq::Agent,
    udp: HashMap<SocketAddr, UdpTracker>,
}

/// Per UDP tracker: our socket (one source port, as trackers may tie
/// connection ids to it) and the last connection id with when we got it.
struct UdpTracker {
    socket: Arc<UdpSocket>,
    connection: Option<(u64, Instant)>,
}

/// The certificates in `pem` (other items skipped), for an HTTPS client's
/// roots: the tracker client's and the web seeds'.
pub(crate) fn pem_certificates(pem: &[u8]) -> Vec<ureq::tls::Certificate<'static>> {
    ureq::tls::parse_pem(pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c.to_owned()),
            _ => None,
        })
        .collect()
}

impl TrackerClient {
    /// A client with `config`.
    pub fn new(config: ClientConfig) -> Result<Self, AnnounceError> {
        let mut builder = ureq::Agent::config_builder()
            .timeout_global(Some(config.http_timeout))
            .http_status_as_error(false)
            .user_agent(concat!("ringseed/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = &config.roots_pem {
            let roots = pem_certificates(pem);
            if roots.is_empty() {
                return Err(AnnounceError::BadUrl(
                    "no certificate in the given roots".into(),
                ));
            }
            let tls = ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::Specific(Arc::new(roots)))
                .build();
            builder = builder.tls_config(tls);
        }
        Ok(TrackerClient {
            config,
            http: builder.build().into(),
            udp: HashMap::new(),
        })
    }

    /// Announces to the tracker at `url`.
    pub fn announce(
        &mut self,
        url: &str,
        announce: &Announce,
    ) -> Result<AnnounceReply, AnnounceError> {
        if url.starts_with("http://") || url.starts_with("https://") {
            let body = self.http_get(url, &announce.http_url(url))?;
            Ok(parse_http_announce(&body)?)
        } else if url.starts_with("udp://") {
            let (socket, tracker) = self.udp_socket(url)?;
            let reply =
                self.udp_exchange(url, &socket, tracker, |connection_id, transaction_id| {
                    UdpRequest::Announce {
                        connection_id,
                        transaction_id,
                        announce: announce.clone(),
                    }
                })?;
            match reply {
                UdpReply::Announce {
                    interval,
                    leechers,
                    seeders,
                    peers,
                    ..
                } => Ok(AnnounceReply {
                    interval,
                    complete: Some(seeders),
                    incomplete: Some(leechers),
                    peers,
                    ..Default::default()
                }),
                other => Err(unexpected(other)),
            }
        } else {
            Err(AnnounceError::BadUrl(url.to_owned()))
        }
    }

    /// Scrapes `info_hashes` from the tracker at `url` (BEP 48, BEP 15).
    pub fn scrape(
        &mut self,
        url: &str,
        info_hashes: &[InfoHash],
    ) -> Result<HashMap<InfoHash, ScrapeStats>, AnnounceError> {
        if url.starts_with("http://") || url.starts_with("https://") {
            let base = scrape_url(url).ok_or_else(|| AnnounceError::BadUrl(url.to_owned()))?;
            let mut full = base.clone();
            for (i, h) in info_hashes.iter().enumerate() {
                full.push(if i == 0 && !base.contains('?') {
                    '?'
                } else {
                    '&'
                });
                full.push_str("info_hash=");
                full.extend(percent_encoding::percent_encode(
                    &h.0,
                    percent_encoding::NON_ALPHANUMERIC,
                ));
            }
            let body = self.http_get(url, &full)?;
            Ok(parse_http_scrape(&body)?)
        } else if url.starts_with("udp://") {
            let (socket, tracker) = self.udp_socket(url)?;
            let hashes = info_hashes.to_vec();
            let reply =
                self.udp_exchange(url, &socket, tracker, |connection_id, transaction_id| {
                    UdpRequest::Scrape {
                        connection_id,
                        transaction_id,
                        info_hashes: hashes.clone(),
                    }
                })?;
            match reply {
                UdpReply::Scrape { stats, .. } if stats.len() == info_hashes.len() => {
                    Ok(info_hashes.iter().copied().zip(stats).collect())
                }
                other => Err(unexpected(other)),
            }
        } else {
            Err(AnnounceError::BadUrl(url.to_owned()))
        }
    }

    fn cancelled(&self) -> bool {
        self.config
            .cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
    }

    fn http_get(&self, tracker: &str, url: &str) -> Result<Vec<u8>, AnnounceError> {
        let err = |message: String| AnnounceError::Http {
            url: tracker.to_owned(),
            message,
        };
        let mut response = self.http.get(url).call().map_err(|e| err(e.to_string()))?;
        let status = response.status();
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_REPLY)
            .read_to_vec()
            .map_err(|e| err(e.to_string()))?;
        if !status.is_success() {
            // Trackers send `failure reason` with error statuses too.
            if let Err(TrackerError::Failure(reason)) = parse_http_announce(&body) {
                return Err(TrackerError::Failure(reason).into());
            }
            return Err(err(format!("HTTP status {status}")));
        }
        Ok(body)
    }

    fn udp_socket(&mut self, url: &str) -> Result<(Arc<UdpSocket>, SocketAddr), AnnounceError> {
        let host_port = url
            .strip_prefix("udp://")
            .and_then(|rest| rest.split('/').next())
            .filter(|h| !h.is_empty())
            .ok_or_else(|| AnnounceError::BadUrl(url.to_owned()))?;
        let udp_err = |source| AnnounceError::Udp {
            url: url.to_owned(),
            source,
        };
        let tracker = host_port
            .to_socket_addrs()
            .map_err(udp_err)?
            .next()
            .ok_or_else(|| AnnounceError::BadUrl(url.to_owned()))?;
        if let Some(known) = self.udp.get(&tracker) {
            return Ok((Arc::clone(&known.socket), tracker));
        }
        let bind: SocketAddr = if tracker.is_ipv6() {
            "[::]:0".parse().expect("valid")
        } else {
            "0.0.0.0:0".parse().expect("valid")
        };
        let socket = UdpSocket::bind(bind).map_err(udp_err)?;
        socket.connect(tracker).map_err(udp_err)?;
        let socket = Arc::new(socket);
        self.udp.insert(
            tracker,
            UdpTracker {
                socket: Arc::clone(&socket),
                connection: None,
            },
        );
        Ok((socket, tracker))
    }

    /// Connects (or reuses a fresh connection id), sends the request built
    /// by `build(connection_id, transaction_id)` and waits for its reply,
    /// retransmitting with BEP 15's backoff.
    fn udp_exchange(
        &mut self,
        url: &str,
        socket: &UdpSocket,
        tracker: SocketAddr,
        build: impl Fn(u64, u32) -> UdpRequest,
    ) -> Result<UdpReply, AnnounceError> {
        let fresh = self
            .udp
            .get(&tracker)
            .and_then(|t| t.connection)
            .filter(|(_, at)| at.elapsed() < CONNECTION_ID_LIFETIME)
            .map(|(id, _)| id);
        let connection_id = match fresh {
            Some(id) => id,
            None => {
                let reply = self.udp_round_trip(url, socket, tracker, &|_, t| {
                    UdpRequest::Connect { transaction_id: t }
                })?;
                let UdpReply::Connect { connection_id, .. } = reply else {
                    return Err(unexpected(reply));
                };
                if let Some(t) = self.udp.get_mut(&tracker) {
                    t.connection = Some((connection_id, Instant::now()));
                }
                connection_id
            }
        };
        let reply = self.udp_round_trip(url, socket, tracker, &|_, t| build(connection_id, t));
        if reply.is_err() {
            // The id may have expired on the tracker's side.
            if let Some(t) = self.udp.get_mut(&tracker) {
                t.connection = None;
            }
        }
        reply
    }

    fn udp_round_trip(
        &self,
        url: &str,
        socket: &UdpSocket,
        tracker: SocketAddr,
        build: &dyn Fn(u64, u32) -> UdpRequest,
    ) -> Result<UdpReply, AnnounceError> {
        let udp_err = |source| AnnounceError::Udp {
            url: url.to_owned(),
            source,
        };
        let transaction_id = random_u64() as u32;
        let mut packet = Vec::with_capacity(128);
        build(0, transaction_id).encode(&mut packet);
        let mut buf = vec![0u8; 65536];
        for attempt in 0..=self.config.udp_retries {
            if self.cancelled() {
                break;
            }
            socket.send(&packet).map_err(udp_err)?;
            let wait = udp_retransmit_timeout(attempt).mul_f64(self.config.udp_timeout_scale);
            let deadline = Instant::now() + wait;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() || self.cancelled() {
                    break;
                }
                // Wake at least once a second to notice a cancellation.
                let wait = left.min(Duration::from_secs(1));
                socket.set_read_timeout(Some(wait)).map_err(udp_err)?;
                let n = match socket.recv(&mut buf) {
                    Ok(n) => n,
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) =>
                    {
                        continue
                    }
                    Err(e) => return Err(udp_err(e)),
                };
                let reply = match UdpReply::decode(&buf[..n], tracker.is_ipv6()) {
                    Ok(r) => r,
                    Err(_) => continue, // garbage: keep waiting for ours
                };
                let id = match &reply {
                    UdpReply::Connect { transaction_id, .. }
                    | UdpReply::Announce { transaction_id, .. }
                    | UdpReply::Scrape { transaction_id, .. }
                    | UdpReply::Error { transaction_id, .. } => *transaction_id,
                };
                if id != transaction_id {
                    continue;
                }
                if let UdpReply::Error { message, .. } = reply {
                    return Err(TrackerError::Failure(message).into());
                }
                return Ok(reply);
            }
        }
        Err(AnnounceError::Timeout {
            url: url.to_owned(),
            attempts: self.config.udp_retries + 1,
        })
    }
}

fn unexpected(reply: UdpReply) -> AnnounceError {
    TrackerError::BadPacket(format!("unexpected reply {reply:?}")).into()
}

/// What the announcer knows of one tracker of one torrent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackerStatus {
    /// The torrent.
    pub info_hash: InfoHash,
    /// The tracker.
    pub url: String,
    /// Outcome of the last announce: peers received, or the error.
    pub last: Option<Result<usize, String>>,
    /// The tracker's `warning message`, if any.
    pub warning: Option<String>,
    /// Seeds and leechers the tracker reported.
    pub swarm: Option<(u32, u32)>,
    /// Announces it answered.
    pub successes: u64,
    /// Announces that failed (no answer, or an error reply).
    pub failures: u64,
}

/// A torrent the announcer keeps registered.
#[derive(Debug, Clone)]
pub struct AnnounceTarget {
    /// The torrent.
    pub info_hash: InfoHash,
    /// Its tracker tiers.
    pub tiers: Vec<Vec<String>>,
}

/// A torrent's transfer figures, as announced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transfer {
    /// Bytes uploaded so far.
    pub uploaded: u64,
    /// Bytes downloaded so far.
    pub downloaded: u64,
    /// Bytes missing (0 for a seed).
    pub left: u64,
}

/// Reads a torrent's transfer figures at announce time.
pub type TransferFn = Arc<dyn Fn(&InfoHash) -> Transfer + Send + Sync>;

/// Receives the peers a tracker returned for a torrent (e.g. to dial them).
pub type PeersFn = Arc<dyn Fn(&InfoHash, &[SocketAddr]) + Send + Sync>;

/// The announcer thread.
pub struct Announcer {
    stop: mpsc::Sender<Command>,
    cancel: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    status: Arc<Mutex<Vec<TrackerStatus>>>,
}

/// What the announcer thread is told.
enum Command {
    /// A download completed: announce `completed` now.
    Completed(InfoHash),
    /// Keep this torrent registered too (announce `started` now).
    Add(AnnounceTarget),
    /// Send `stopped` for this torrent and forget it.
    Remove(InfoHash),
    /// Send `stopped` and end.
    Stop,
}

struct Registration {
    target: AnnounceTarget,
    tiers: TrackerTiers,
    next: Instant,
    started: bool,
    failures: u32,
    tracker_id: Option<String>,
}

impl Announcer {
    /// Starts announcing `targets` as `peer_id` listening on `port`; the
    /// peers trackers return go to `on_peers`.
    pub fn start(
        targets: Vec<AnnounceTarget>,
        peer_id: [u8; 20],
        port: u16,
        config: ClientConfig,
        transfer: TransferFn,
        on_peers: Option<PeersFn>,
    ) -> Result<Self, AnnounceError> {
        let cancel = Arc::new(AtomicBool::new(false));
        // Regular announces give up at once on shutdown; `stopped` goes out
        // with one short attempt per tracker, so exiting takes seconds.
        let quick = ClientConfig {
            http_timeout: Duration::from_secs(5),
            udp_retries: 0,
            udp_timeout_scale: 1.0 / 15.0,
            cancel: None,
            ..config.clone()
        };
        let mut client = TrackerClient::new(ClientConfig {
            cancel: Some(Arc::clone(&cancel)),
            ..config
        })?;
        let mut quick_client = TrackerClient::new(quick)?;
        let status = Arc::new(Mutex::new(Vec::new()));
        let (stop, commands) = mpsc::channel::<Command>();
        let key = random_u64() as u32;
        let mut state = rng::seeded();
        let mut pick = move |n: usize| rng::next_below(&mut state, n);
        let mut register = move |target: AnnounceTarget| {
            Some(Registration {
                tiers: TrackerTiers::new(target.tiers.clone(), &mut pick),
                target,
                next: Instant::now(),
                started: false,
                failures: 0,
                tracker_id: None,
            })
            .filter(|r| !r.tiers.is_empty())
        };
        let mut registrations: Vec<Registration> =
            targets.into_iter().filter_map(&mut register).collect();
        let shared_status = Arc::clone(&status);
        let thread_cancel = Arc::clone(&cancel);
        let handle = std::thread::Builder::new()
            .name("ringseed-announce".into())
            .spawn(move || {
                // `only`: announce this torrent only, whether due or not.
                let mut announce_all =
                    |regs: &mut Vec<Registration>,
                     only_due: bool,
                     only: Option<InfoHash>,
                     event: Option<Event>| {
                        for r in regs.iter_mut() {
                            if only_due && r.next > Instant::now() {
                                continue;
                            }
                            if only.is_some_and(|h| h != r.target.info_hash) {
                                continue;
                            }
                            if event == Some(Event::Stopped) && !r.started {
                                continue;
                            }
                            let figures = transfer(&r.target.info_hash);
                            let request = Announce {
                                info_hash: r.target.info_hash,
                                peer_id,
                                port,
                                uploaded: figures.uploaded,
                                downloaded: figures.downloaded,
                                left: figures.left,
                                event: event.unwrap_or(if r.started {
                                    Event::None
                                } else {
                                    Event::Started
                                }),
                                numwant: Some(50),
                                key,
                                tracker_id: r.tracker_id.clone(),
                            };
                            let mut answered = None;
                            for (tier, index, url) in r.tiers.in_order() {
                                let stopping = event == Some(Event::Stopped);
                                if !stopping && thread_cancel.load(Ordering::Relaxed) {
                                    return;
                                }
                                let outcome = if stopping {
                                    quick_client.announce(&url, &request)
                                } else {
                                    client.announce(&url, &request)
                                };
                                let mut all =
                                    shared_status.lock().unwrap_or_else(|e| e.into_inner());
                                let entry = match all.iter().position(|s: &TrackerStatus| {
                                    s.info_hash == r.target.info_hash && s.url == url
                                }) {
                                    Some(i) => &mut all[i],
                                    None => {
                                        all.push(TrackerStatus {
                                            info_hash: r.target.info_hash,
                                            url: url.clone(),
                                            last: None,
                                            warning: None,
                                            swarm: None,
                                            successes: 0,
                                            failures: 0,
                                        });
                                        all.last_mut().expect("just pushed")
                                    }
                                };
                                match outcome {
                                    Ok(reply) => {
                                        entry.last = Some(Ok(reply.peers.len()));
                                        entry.successes += 1;
                                        entry.warning = reply.warning.clone();
                                        entry.swarm = reply.complete.zip(reply.incomplete);
                                        answered = Some((tier, index, reply));
                                        break;
                                    }
                                    Err(e) => {
                                        entry.last = Some(Err(e.to_string()));
                                        entry.failures += 1;
                                    }
                                }
                            }
                            match answered {
                                Some((tier, index, reply)) => {
                                    let wants_peers = event != Some(Event::Stopped);
                                    if let Some(f) = on_peers.as_ref().filter(|_| wants_peers) {
                                        f(&r.target.info_hash, &reply.peers);
                                    }
                                    r.tiers.promote(tier, index);
                                    r.started = true;
                                    r.failures = 0;
                                    if reply.tracker_id.is_some() {
                                        r.tracker_id = reply.tracker_id;
                                    }
                                    let interval =
                                        reply.interval.max(reply.min_interval.unwrap_or(0)).max(30);
                                    r.next =
                                        Instant::now() + Duration::from_secs(u64::from(interval));
                                }
                                None => {
                                    // Back off: 15 s, 30 s, ... up to 30 minutes.
                                    let wait = 15u64 << r.failures.min(7);
                                    r.failures += 1;
                                    r.next = Instant::now() + Duration::from_secs(wait.min(1800));
                                }
                            }
                        }
                    };
                loop {
                    announce_all(&mut registrations, true, None, None);
                    let next = registrations.iter().map(|r| r.next).min();
                    let wait = next.map_or(Duration::from_secs(3600), |n| {
                        n.saturating_duration_since(Instant::now())
                    });
                    match commands.recv_timeout(wait) {
                        Err(mpsc::RecvTimeoutError::Timeout) => continue,
                        Ok(Command::Completed(h)) => {
                            announce_all(&mut registrations, false, Some(h), Some(Event::Completed))
                        }
                        Ok(Command::Add(target)) => {
                            let h = target.info_hash;
                            registrations.retain(|r| r.target.info_hash != h);
                            // Trackers it no longer lists leave the status.
                            shared_status
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .retain(|s| {
                                    s.info_hash != h
                                        || target.tiers.iter().flatten().any(|u| *u == s.url)
                                });
                            registrations.extend(register(target));
                        }
                        Ok(Command::Remove(h)) => {
                            announce_all(&mut registrations, false, Some(h), Some(Event::Stopped));
                            registrations.retain(|r| r.target.info_hash != h);
                            shared_status
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .retain(|s| s.info_hash != h);
                        }
                        Ok(Command::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                }
                announce_all(&mut registrations, false, None, Some(Event::Stopped));
            })
            .map_err(|source| AnnounceError::Udp {
                url: "(announcer thread)".into(),
                source,
            })?;
        Ok(Announcer {
            stop,
            cancel,
            handle: Some(handle),
            status,
        })
    }

    /// The last outcome of every tracker.
    pub fn status(&self) -> Vec<TrackerStatus> {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Announces `completed` for `info_hash` now (its download finished).
    pub fn completed(&self, info_hash: InfoHash) {
        let _ = self.stop.send(Command::Completed(info_hash));
    }

    /// Registers one more torrent (or re-registers one with new trackers);
    /// it is announced `started` at once.
    pub fn add(&self, target: AnnounceTarget) {
        let _ = self.stop.send(Command::Add(target));
    }

    /// Announces `stopped` for `info_hash` and forgets it.
    pub fn remove(&self, info_hash: InfoHash) {
        let _ = self.stop.send(Command::Remove(info_hash));
    }

    /// Sends `stopped` to the trackers that know us, and ends the thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
        let _ = self.stop.send(Command::Stop);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Announcer {
    fn drop(&mut self) {
        self.shutdown();
    }
}
