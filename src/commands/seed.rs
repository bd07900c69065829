//! `ringseed seed`: verify, then serve torrents until SIGINT or SIGTERM.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ringseed_engine::create::{collect_files, create, CreateOptions};
use ringseed_engine::io::files::DataPaths;
use ringseed_engine::io::hasher::{thread_count, verify};
use ringseed_engine::io::plane::control::PlaneConfig;
use ringseed_engine::io::storage::Torrent;
use ringseed_engine::io::tracker_server::TrackerConfig;
use ringseed_engine::proto::layout::Layout;
use ringseed_engine::session::{Session, SessionConfig};
use ringseed_engine::{MagnetLink, Metainfo};

use crate::cli::{Exit, SeedArgs};
use crate::display::{human_bytes, piece_ranges, HashProgress};
use crate::setup::{raise_open_file_limit, state_dir, tracker_client_config, GOODBYE};

pub fn run(args: SeedArgs) -> anyhow::Result<Exit> {
    // Before the Session starts: its first announce can reach a tracker at
    // once, and a SIGINT from then on must stop us cleanly (with
    // `stopped`), not kill us.
    let signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .context("cannot install signal handlers")?;
    raise_open_file_limit();
    let threads = thread_count(args.hashing.threads);
    let mut torrents = Vec::new();
    for path in &args.paths {
        let (metainfo, paths) = load_or_create(path, &args, threads)?;
        if !args.assume_valid {
            let layout = Layout::new(&metainfo.info);
            let progress = HashProgress::new("verifying", layout.total_length());
            let report = verify(&layout, &metainfo.info.pieces, &paths, threads, &progress);
            progress.finish();
            if !report.is_complete() {
                bail!(
                    "{} ({}): {} of {} pieces do not match the data, refusing to seed it \
                     (bad pieces: {}; use --assume-valid to seed anyway)",
                    metainfo.info.name,
                    path.display(),
                    report.bad_pieces.len(),
                    report.num_pieces,
                    piece_ranges(&report.bad_pieces, 20)
                );
            }
        }
        let torrent = Torrent::open(metainfo, &paths)
            .with_context(|| format!("cannot seed {}", path.display()))?;
        torrents.push(torrent);
    }

    let config = PlaneConfig {
        upload_slots: args.upload_slots,
        max_upload_rate: args.max_upload_rate,
        max_connections: args.max_connections,
        max_connections_per_torrent: args.max_connections_per_torrent,
        max_connections_per_ip: args.max_connections_per_ip,
        ..args.plane.config(args.listen)
    };
    let workers = config.workers;
    let trackers = if args.no_announce {
        None
    } else {
        Some(tracker_client_config(args.tracker_ca.as_deref())?)
    };
    let dht = args
        .dht
        .config(args.listen, &state_dir(args.state.as_deref()));
    let session = Session::start(
        SessionConfig {
            plane: config,
            trackers,
            dht,
            // Seeding has nothing to fetch.
            web_seeds: None,
        },
        torrents.clone(),
    )?;
    let addr = session.local_addr();
    let family = if addr.ip().is_unspecified() && addr.is_ipv6() {
        " (IPv4 and IPv6)"
    } else {
        ""
    };
    for t in &torrents {
        let m = &t.metainfo;
        println!(
            "seeding {} ({}, {} pieces of {}) info-hash {}",
            m.info.name,
            human_bytes(m.total_length()),
            m.info.num_pieces(),
            human_bytes(m.info.piece_length),
            m.info_hash
        );
        println!("  magnet: {}", MagnetLink::from_metainfo(m));
    }
    // The embedded tracker, if asked for, tracks exactly what we seed.
    let _tracker = match args.run_tracker {
        Some(addr) => Some(super::tracker::start(TrackerConfig {
            udp: Some(addr),
            http: Some(addr),
            whitelist: Some(torrents.iter().map(|t| t.metainfo.info_hash).collect()),
            io: args.plane.io,
            ..TrackerConfig::default()
        })?),
        None => None,
    };
    if let Some(dht) = session.dht_status() {
        println!("dht: udp port {}", dht.port);
    }
    let plane = session.data_plane();
    println!("listening on {addr}{family} with {workers} {plane} workers; Ctrl-C stops");
    std::io::stdout().flush()?;

    wait_for_signal(signals, &session)?;
    // Trackers hear that we leave before we stop answering peers.
    let (stats, _) = session
        .shutdown(GOODBYE)
        .context("a worker failed while stopping")?;
    println!(
        "stopped: sent {} in {} blocks to {} connections",
        human_bytes(stats.total.bytes_sent),
        stats.total.blocks_sent,
        stats.total.connections_accepted
    );
    let totals = crate::daemon::status::figures(&stats.total);
    println!("{}", crate::display::transport_line(&totals));
    println!("{}", crate::display::pex_line(&totals));
    Ok(Exit::Success)
}

/// Loads a .torrent and finds its data, or makes a torrent for a file or
/// directory and writes it under the state directory.
fn load_or_create(
    path: &Path,
    args: &SeedArgs,
    threads: usize,
) -> anyhow::Result<(Metainfo, DataPaths)> {
    let is_torrent = path.extension().is_some_and(|e| e == "torrent") && path.is_file();
    if is_torrent {
        let metainfo = crate::setup::load_torrent(path)?;
        let beside = path.parent().filter(|p| !p.as_os_str().is_empty());
        let data_dir = args.data.as_deref().or(beside).unwrap_or(Path::new("."));
        let paths = DataPaths::locate(&metainfo.info, data_dir);
        return Ok((metainfo, paths));
    }

    let total: u64 = collect_files(path)?.iter().map(|(_, len)| len).sum();
    let options = CreateOptions {
        trackers: args.trackers.tiers(),
        created_by: Some(concat!("ringseed/", env!("CARGO_PKG_VERSION")).to_owned()),
        threads,
        ..CreateOptions::default()
    };
    let progress = HashProgress::new("hashing", total);
    let created = create(path, &options, &progress)
        .with_context(|| format!("cannot create a torrent of {}", path.display()))?;
    progress.finish();
    let state = state_dir(args.state.as_deref());
    let torrents_dir = state.join("torrents");
    std::fs::create_dir_all(&torrents_dir)
        .with_context(|| format!("cannot create {}", torrents_dir.display()))?;
    let out = torrents_dir.join(format!(
        "{}.{}.torrent",
        created.metainfo.info.name, created.metainfo.info_hash
    ));
    std::fs::write(&out, &created.bytes)
        .with_context(|| format!("cannot write {}", out.display()))?;
    println!("created {}", out.display());
    // The data was just hashed: it is as verified as it gets.
    let paths = DataPaths::locate(&created.metainfo.info, path);
    Ok((created.metainfo, paths))
}

/// Blocks until SIGINT or SIGTERM.
pub fn wait_for_stop_signal() -> anyhow::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .context("cannot install signal handlers")?;
    signals.forever().next();
    Ok(())
}

/// Shows a live status line on a terminal (a line a minute otherwise) until
/// SIGINT or SIGTERM.
fn wait_for_signal(
    mut signals: signal_hook::iterator::Signals,
    session: &Session,
) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::channel();
    let handle = signals.handle();
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            let _ = tx.send(signal);
        }
    });
    let terminal = std::io::stderr().is_terminal();
    let period = if terminal {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(60)
    };
    let mut last = (Instant::now(), session.stats().total.bytes_sent);
    let result = loop {
        match rx.recv_timeout(period) {
            Ok(_) => break Ok(()),
            Err(mpsc::RecvTimeoutError::Disconnected) => break Ok(()),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        let stats = session.stats();
        let now = Instant::now();
        let rate = (stats.total.bytes_sent - last.1) as f64 / (now - last.0).as_secs_f64();
        last = (now, stats.total.bytes_sent);
        let errored: Vec<_> = stats
            .torrents
            .iter()
            .filter(|t| t.error.is_some())
            .collect();
        let trackers = session.tracker_status();
        let failing = trackers
            .iter()
            .filter(|t| matches!(t.last, Some(Err(_))))
            .count();
        let tracker_note = if trackers.is_empty() {
            String::new()
        } else {
            format!(
                " | trackers {} ok, {failing} failing",
                trackers.len() - failing
            )
        };
        for t in trackers.iter() {
            if let Some(Err(e)) = &t.last {
                if !terminal {
                    eprintln!("tracker {}: {e}", t.url);
                }
            }
            if let Some(w) = &t.warning {
                eprintln!("tracker {} warns: {w}", t.url);
            }
        }
        let line = format!(
            "peers {} | up {}/s | sent {} | blocks {} | errors {}{}{tracker_note}",
            stats.total.peers,
            human_bytes(rate as u64),
            human_bytes(stats.total.bytes_sent),
            stats.total.blocks_sent,
            stats.total.protocol_errors,
            if errored.is_empty() {
                String::new()
            } else {
                format!(" | {} torrent(s) errored", errored.len())
            }
        );
        if terminal {
            eprint!("\r\x1b[2K{line}");
        } else {
            eprintln!("{line}");
        }
    };
    if terminal {
        eprintln!();
    }
    handle.close();
    result
}
