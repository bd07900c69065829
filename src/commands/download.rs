//! `ringseed download`: fetch a torrent (from a .torrent file or a magnet
//! link) on the same data plane that seeds, verify every piece, keep resume
//! data, and with `--seed` go on seeding without a restart.

use std::collections::HashSet;
use std::io::{IsTerminal, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use ringseed_engine::io::announce::{ClientConfig, TrackerClient};
use ringseed_engine::io::files::DataPaths;
use ringseed_engine::io::hasher::{thread_count, verify};
use ringseed_engine::io::plane::control::{new_peer_id, PlaneConfig};
use ringseed_engine::io::resume::{stamps, ResumeData};
use ringseed_engine::io::storage::Torrent;
use ringseed_engine::policy::bitfield::Bitfield;
use ringseed_engine::policy::download::DownloadConfig;
use ringseed_engine::proto::bencode::OwnedValue;
use ringseed_engine::proto::layout::Layout;
use ringseed_engine::proto::tracker::{Announce, Event};
use ringseed_engine::session::{ResumeTarget, Session, SessionConfig};
use ringseed_engine::{MagnetLink, Metainfo};

use crate::cli::{DownloadArgs, Exit};
use crate::display::{human_bytes, HashProgress};
use crate::setup::{raise_open_file_limit, state_dir, GOODBYE};

/// Peers given on the command line or in `x.pe` are dialed again this
/// often while we are connected to none (they may have restarted).
const REDIAL_EVERY: Duration = Duration::from_secs(10);

pub fn run(args: DownloadArgs) -> anyhow::Result<Exit> {
    raise_open_file_limit();
    let state = state_dir(args.state.as_deref());
    let threads = thread_count(args.hashing.threads);
    let stop = stop_flag()?;

    let config = PlaneConfig {
        leech_upload_slots: args.upload_slots,
        max_upload_rate: args.max_upload_rate,
        ..args.plane.config(args.listen)
    };
    let trackers = if args.no_announce {
        None
    } else {
        Some(client_config(&args)?)
    };
    // The data plane starts first: a magnet link's metadata is fetched on it.
    let mut session = Session::start(
        SessionConfig {
            dht: args.dht.config(args.listen, &state),
            plane: config,
            trackers,
            web_seeds: args.web_seeds.config()?,
        },
        Vec::new(),
    )?;
    let (metainfo, extra_peers) = load_source(&args, &state, &session)?;
    let paths = DataPaths::in_save_dir(&metainfo.info, &args.output);
    let layout = Layout::new(&metainfo.info);
    let selected = select_files(&metainfo, &args.only)?;
    let mut wanted = Bitfield::new(layout.num_pieces());
    for (index, &chosen) in selected.iter().enumerate() {
        if chosen && !layout.is_pad(index) {
            for piece in layout.pieces_of_file(index) {
                wanted.set(piece);
            }
        }
    }
    let resume_path = state
        .join("resume")
        .join(format!("{}.resume", metainfo.info_hash));
    let have = resume_or_check(&metainfo, &layout, &paths, &resume_path, threads)?;

    println!(
        "downloading {} ({}, {} pieces of {}) info-hash {} into {}",
        metainfo.info.name,
        human_bytes(metainfo.total_length()),
        layout.num_pieces(),
        human_bytes(metainfo.info.piece_length),
        metainfo.info_hash,
        args.output.display()
    );
    let torrent = Torrent::open_for_download(
        metainfo.clone(),
        &paths,
        &selected,
        have,
        wanted,
        DownloadConfig::default(),
    )
    .with_context(|| format!("cannot download into {}", args.output.display()))?;
    let start_have = torrent.download().map_or(0, |d| d.picker.have().count());
    session.add_download(
        Arc::clone(&torrent),
        ResumeTarget {
            paths: paths.clone(),
            path: resume_path.clone(),
        },
    )?;
    println!("data plane: {}", session.data_plane());
    if let Some(dht) = session.dht_status() {
        println!("dht: udp port {}", dht.port);
    }
    println!("listening on {}", session.local_addr());
    if start_have > 0 {
        println!(
            "resumed: {start_have} of {} pieces already verified",
            layout.num_pieces()
        );
    }
    std::io::stdout().flush()?;

    let mut peers: Vec<SocketAddr> = args.peers.clone();
    peers.extend(extra_peers);
    session.dial(metainfo.info_hash, &peers);

    let started = Instant::now();
    let mut bar = Progress::new(metainfo.total_length());
    let mut last_dial = Instant::now();
    let mut announced_complete = false;
    let stall_timeout = Duration::from_secs(args.stall_timeout);
    // The last time data arrived, and how much had then.
    let mut last_data = (Instant::now(), 0u64);
    let outcome = loop {
        std::thread::sleep(Duration::from_millis(250));
        let stats = session.stats();
        let t = &stats.torrents[0];
        let progress = t.download.clone().expect("opened for download");
        bar.update(&progress, t.stats.peers);
        if let Some(error) = &t.error {
            break Err(error.clone());
        }
        if progress.complete && !announced_complete {
            announced_complete = true;
            bar.finish();
            let secs = started.elapsed().as_secs_f64();
            println!(
                "complete: {} verified in {secs:.1} s ({}/s)",
                metainfo.info.name,
                human_bytes((progress.counters.bytes_received as f64 / secs.max(1e-3)) as u64)
            );
            print_summary(&progress);
            if let Some(dht) = session.dht_status() {
                print_dht_summary(&dht);
            }
            session.completed(metainfo.info_hash);
            if !args.seed {
                break Ok(());
            }
            println!("seeding {}; Ctrl-C stops", metainfo.info.name);
            std::io::stdout().flush()?;
        }
        if stop.load(Ordering::Relaxed) {
            break if announced_complete {
                Ok(())
            } else {
                Err("interrupted".into())
            };
        }
        let received = progress.counters.bytes_received;
        if received != last_data.1 {
            last_data = (Instant::now(), received);
        }
        if !announced_complete && !stall_timeout.is_zero() && last_data.0.elapsed() >= stall_timeout
        {
            break Err(format!(
                "stalled: no data for {} s (--stall-timeout), {} peer(s) connected",
                stall_timeout.as_secs(),
                t.stats.peers
            ));
        }
        if t.stats.peers == 0 && last_dial.elapsed() >= REDIAL_EVERY && !peers.is_empty() {
            last_dial = Instant::now();
            session.dial(metainfo.info_hash, &peers);
        }
    };
    bar.finish();
    for line in crate::display::web_seed_lines(&session.web_seed_status()) {
        println!("{line}");
    }
    let (stats, _) = session
        .shutdown(GOODBYE)
        .context("a worker failed while stopping")?;
    // Every worker's counters are in once it stopped.
    let totals = crate::daemon::status::figures(&stats.total);
    println!("{}", crate::display::transport_line(&totals));
    println!("{}", crate::display::pex_line(&totals));
    match outcome {
        Ok(()) => {
            if args.seed {
                println!(
                    "stopped: sent {} to peers",
                    human_bytes(stats.total.bytes_sent)
                );
            }
            Ok(Exit::Success)
        }
        Err(reason) => {
            if let Some(p) = stats.torrents.first().and_then(|t| t.download.as_ref()) {
                print_summary(p);
                eprintln!(
                    "ringseed: {}: {reason}; {} of {} pieces verified, resume data saved in {} \
                     (run the same command again to resume)",
                    metainfo.info.name,
                    p.pieces_have,
                    layout.num_pieces(),
                    resume_path.display()
                );
            }
            Ok(Exit::Error)
        }
    }
}

/// The line tests and scripts read: what this run received and why some
/// of it was wasted.
fn print_summary(p: &ringseed_engine::io::plane::control::DownloadProgress) {
    let banned: Vec<String> = p.banned.iter().map(|ip| ip.to_string()).collect();
    println!(
        "summary: received={} wasted={} wasted_hash_failed={} wasted_discarded={} \
         wasted_duplicate={} hash_failures={} pieces_verified={} banned={}",
        p.counters.bytes_received,
        p.counters.wasted(),
        p.counters.bytes_hash_failed,
        p.counters.bytes_discarded,
        p.counters.bytes_duplicate,
        p.counters.hash_failures,
        p.counters.pieces_verified,
        if banned.is_empty() {
            "-".to_owned()
        } else {
            banned.join(",")
        }
    );
}

/// What the DHT did for this download: the line benchmarks read.
fn print_dht_summary(dht: &ringseed_engine::io::dht::DhtStatus) {
    let (mut queries, mut peers) = (0, 0);
    for s in [&dht.v4, &dht.v6].into_iter().flatten() {
        queries += s.queries_out_ping
            + s.queries_out_find_node
            + s.queries_out_get_peers
            + s.queries_out_announce_peer;
        peers += s.peers_found;
    }
    println!("dht: queries_sent={queries} peers_found={peers}");
}

/// SIGINT and SIGTERM set the returned flag.
fn stop_flag() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("cannot install signal handlers")?;
    }
    Ok(stop)
}

/// The torrent, and peers to dial from a magnet link's `x.pe`.
fn load_source(
    args: &DownloadArgs,
    state: &Path,
    session: &Session,
) -> anyhow::Result<(Metainfo, Vec<SocketAddr>)> {
    if !args.source.starts_with("magnet:") {
        return Ok((
            crate::setup::load_torrent(Path::new(&args.source))?,
            Vec::new(),
        ));
    }
    let magnet = MagnetLink::parse(&args.source).context("invalid magnet link")?;
    let x_pe: Vec<SocketAddr> = magnet
        .peers
        .iter()
        .filter_map(|p| p.to_socket_addrs().ok()?.next())
        .collect();
    // A torrent fetched before is not fetched again.
    let saved = state
        .join("torrents")
        .join(format!("{}.torrent", magnet.info_hash));
    if saved.is_file() {
        if let Ok(m) = crate::setup::load_torrent(&saved) {
            if m.info_hash == magnet.info_hash {
                return Ok((m, x_pe));
            }
        }
    }
    let mut peers = args.peers.clone();
    peers.extend(&x_pe);
    if !args.no_announce {
        peers.extend(tracker_peers(&magnet, args));
    }
    let peers = dedup(peers);
    eprintln!(
        "fetching the torrent's metadata from {} peer(s)...",
        peers.len()
    );
    let info = session.fetch_metadata(
        magnet.info_hash,
        &peers,
        Duration::from_secs(args.metadata_timeout),
    )?;
    let bytes = torrent_file(&info, &magnet.trackers, &magnet.web_seeds);
    let metainfo =
        Metainfo::from_bytes(&bytes).context("the peers' metadata is not a valid torrent")?;
    std::fs::create_dir_all(saved.parent().expect("has a parent"))
        .with_context(|| format!("cannot create {}", state.display()))?;
    std::fs::write(&saved, &bytes).with_context(|| format!("cannot write {}", saved.display()))?;
    println!("metadata fetched; torrent saved as {}", saved.display());
    Ok((metainfo, x_pe))
}

fn dedup(peers: Vec<SocketAddr>) -> Vec<SocketAddr> {
    let mut seen = HashSet::new();
    peers.into_iter().filter(|p| seen.insert(*p)).collect()
}

/// A .torrent file around `info` (kept byte for byte: its hash is the
/// info-hash) with the magnet link's trackers and web seeds (`ws=`).
fn torrent_file(info: &[u8], trackers: &[String], web_seeds: &[String]) -> Vec<u8> {
    let mut root = OwnedValue::dict();
    if let Some(first) = trackers.first() {
        root.insert("announce", OwnedValue::bytes(first));
        let tiers = trackers
            .iter()
            .map(|t| OwnedValue::List(vec![OwnedValue::bytes(t)]))
            .collect();
        root.insert("announce-list", OwnedValue::List(tiers));
    }
    if !web_seeds.is_empty() {
        let urls = web_seeds.iter().map(OwnedValue::bytes).collect();
        root.insert("url-list", OwnedValue::List(urls));
    }
    let mut bytes = root.to_bytes();
    bytes.pop(); // the dictionary's closing `e`: `info` sorts last
    bytes.extend_from_slice(b"4:info");
    bytes.extend_from_slice(info);
    bytes.push(b'e');
    bytes
}

/// Peers from one announce to each tracker of a magnet link (we have no
/// info dictionary yet, so the data plane cannot start).
fn tracker_peers(magnet: &MagnetLink, args: &DownloadArgs) -> Vec<SocketAddr> {
    let Ok(mut client) = TrackerClient::new(client_config(args).unwrap_or_default()) else {
        return Vec::new();
    };
    let mut peers = Vec::new();
    let peer_id = new_peer_id();
    for url in &magnet.trackers {
        let request = Announce {
            info_hash: magnet.info_hash,
            peer_id,
            port: 0,
            uploaded: 0,
            downloaded: 0,
            left: 1,
            event: Event::Started,
            numwant: Some(50),
            key: 0,
            tracker_id: None,
        };
        match client.announce(url, &request) {
            Ok(reply) => peers.extend(reply.peers),
            Err(e) => eprintln!("tracker {url}: {e}"),
        }
    }
    peers
}

fn client_config(args: &DownloadArgs) -> anyhow::Result<ClientConfig> {
    crate::setup::tracker_client_config(args.tracker_ca.as_deref())
}

/// Which files `--only` selects (all without it). Patterns match a file's
/// path in the torrent, or its name alone.
fn select_files(metainfo: &Metainfo, only: &[String]) -> anyhow::Result<Vec<bool>> {
    if only.is_empty() {
        return Ok(vec![true; metainfo.info.files.len()]);
    }
    let patterns = only
        .iter()
        .map(|p| {
            glob::Pattern::new(p).with_context(|| format!("--only {p:?} is not a valid pattern"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let selected: Vec<bool> = metainfo
        .info
        .files
        .iter()
        .map(|f| {
            let name = f.path.file_name().map(Path::new).unwrap_or(&f.path);
            !f.pad
                && patterns
                    .iter()
                    .any(|p| p.matches_path(&f.path) || p.matches_path(name))
        })
        .collect();
    if !selected.contains(&true) {
        bail!(
            "--only {} matches no file of {}",
            only.join(" "),
            metainfo.info.name
        );
    }
    Ok(selected)
}

/// The pieces already verified: from resume data whose file stamps still
/// match, else from a check of whatever data is there.
fn resume_or_check(
    metainfo: &Metainfo,
    layout: &Layout,
    paths: &DataPaths,
    resume_path: &Path,
    threads: usize,
) -> anyhow::Result<Bitfield> {
    let num_pieces = layout.num_pieces();
    let now = stamps(paths);
    match ResumeData::load(
        resume_path,
        &metainfo.info_hash,
        num_pieces,
        paths.files.len(),
    ) {
        Ok(Some(saved)) if saved.files == now => return Ok(saved.pieces),
        Ok(Some(_)) => eprintln!("the files changed since the resume data was saved: rechecking"),
        Ok(None) => {}
        Err(e) => eprintln!("ringseed: {e:#}; rechecking"),
    }
    let mut have = Bitfield::new(num_pieces);
    let any_data = now.iter().flatten().any(|s| s.len > 0);
    if !any_data {
        return Ok(have);
    }
    let progress = HashProgress::new("checking", layout.total_length());
    let report = verify(layout, &metainfo.info.pieces, paths, threads, &progress);
    progress.finish();
    let bad: HashSet<u32> = report.bad_pieces.iter().copied().collect();
    for piece in (0..num_pieces).filter(|p| !bad.contains(p)) {
        have.set(piece);
    }
    Ok(have)
}

/// The progress bar on a terminal, a line every 10 s otherwise.
struct Progress {
    bar: Option<ProgressBar>,
    total: u64,
    last_line: Instant,
    last: (Instant, u64),
    rate: f64,
}

impl Progress {
    fn new(total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{percent:>3}% [{bar:30}] {bytes}/{total_bytes} {msg} ETA {eta}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar
        });
        Progress {
            bar,
            total,
            last_line: Instant::now(),
            last: (Instant::now(), 0),
            rate: 0.0,
        }
    }

    fn update(&mut self, p: &ringseed_engine::io::plane::control::DownloadProgress, peers: u64) {
        let done = self.total - p.bytes_missing.min(self.total);
        let now = Instant::now();
        let received = p.counters.bytes_received;
        let dt = (now - self.last.0).as_secs_f64();
        if dt >= 1.0 {
            self.rate = (received - self.last.1.min(received)) as f64 / dt;
            self.last = (now, received);
        }
        let msg = format!("{}/s, {peers} peers", human_bytes(self.rate as u64));
        match &self.bar {
            Some(bar) => {
                bar.set_position(done);
                bar.set_message(msg);
            }
            None if self.last_line.elapsed() >= Duration::from_secs(10) => {
                self.last_line = now;
                eprintln!(
                    "{:.1}% {} of {}, {msg}",
                    done as f64 * 100.0 / self.total.max(1) as f64,
                    human_bytes(done),
                    human_bytes(self.total)
                );
            }
            None => {}
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
