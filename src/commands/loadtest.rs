//! `ringseed loadtest`: simulated peers against a seeder, or UDP announces
//! against a tracker; a live line per second, then a table or JSON.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use ringseed_engine::io::dht_load::{run_dht_load, DhtLoad};
use ringseed_engine::io::loadtest::{
    run_peer_load, run_tracker_load, LiveCounters, PeerLoad, TrackerLoad,
};
use ringseed_engine::InfoHash;
use serde_json::json;

use crate::cli::{Exit, LoadMode, LoadtestArgs};
use crate::display::human_bytes;
use crate::setup::raise_open_file_limit;

pub fn run(args: LoadtestArgs) -> anyhow::Result<Exit> {
    raise_open_file_limit();
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("cannot install signal handlers")?;
    }
    if !(0.0..=1.0).contains(&args.verify) || !(0.0..=1.0).contains(&args.scrape_fraction) {
        bail!("--verify and --scrape-fraction are fractions from 0 to 1");
    }
    if !(args.duration > 0.0 && args.ramp_up >= 0.0) {
        bail!("--duration must be positive and --ramp-up not negative");
    }
    match args.mode {
        LoadMode::Peers => peers(&args, &stop),
        LoadMode::Tracker => tracker(&args, &stop),
        LoadMode::Dht => dht(&args, &stop),
    }
}

/// The cores none of the target's pinned threads run on, to pin the load
/// threads to (empty when the target's pinned threads cover every core, or
/// none is pinned: then nothing is pinned, and the load shares the cores).
fn free_cores(pid: u32) -> Vec<usize> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut used = vec![false; cores];
    let mut pinned = false;
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    for task in tasks.flatten() {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        let Some(list) = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        else {
            continue;
        };
        // "0-3,6": ranges and single cores.
        let mut allowed = vec![false; cores];
        for part in list.trim().split(',') {
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            if let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) {
                let end = (b + 1).min(cores);
                if a < end {
                    allowed[a..end].iter_mut().for_each(|u| *u = true);
                }
            }
        }
        // Threads free to run anywhere (a control thread, mostly idle)
        // follow the pinned ones; the pinned workers are what to avoid.
        if allowed.iter().any(|a| !a) {
            pinned = true;
            for (u, a) in used.iter_mut().zip(&allowed) {
                *u |= *a;
            }
        }
    }
    if !pinned {
        eprintln!("the target's threads are not pinned: the load threads are not pinned either");
        return Vec::new();
    }
    let free: Vec<usize> = (0..cores).filter(|&c| !used[c]).collect();
    if free.is_empty() {
        eprintln!("the target may run on every core: the load threads are not pinned");
    }
    free
}

/// CPU seconds (user + system, all threads) and RSS / peak RSS (KiB) of a
/// process, from /proc.
fn process_figures(pid: u32) -> anyhow::Result<(f64, u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat (is --target-pid right?)"))?;
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15 of the file, 11 and 12 here.
    let ticks: u64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum())
        .unwrap_or(0);
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok((ticks as f64 / hz, kib("VmRSS:"), kib("VmHWM:")))
}

fn percentiles(h: &Histogram<u64>) -> serde_json::Value {
    json!({
        "p50": h.value_at_quantile(0.50),
        "p90": h.value_at_quantile(0.90),
        "p99": h.value_at_quantile(0.99),
        "p999": h.value_at_quantile(0.999),
        "max": h.max(),
        "mean": (h.mean() * 10.0).round() / 10.0,
        "samples": h.len(),
    })
}

fn peers(args: &LoadtestArgs, stop: &Arc<AtomicBool>) -> anyhow::Result<Exit> {
    let Some(torrent) = &args.torrent else {
        bail!("--torrent is needed to load a seeder (--mode peers)");
    };
    let metainfo = crate::setup::load_torrent(torrent)?;
    let threads = args.threads.map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get()),
        |n| n.get(),
    );
    let load = PeerLoad {
        target: args.target,
        info_hash: metainfo.info_hash,
        piece_hashes: Arc::new(metainfo.info.pieces.clone()),
        piece_length: metainfo.info.piece_length,
        total_length: metainfo.total_length(),
        peers: args.peers,
        duration: Duration::from_secs_f64(args.duration),
        ramp_up: Duration::from_secs_f64(args.ramp_up),
        pattern: args.pattern,
        pipeline: args.pipeline.max(1),
        rate_per_peer: args.rate_per_peer,
        verify_fraction: args.verify,
        threads,
        io: args.io,
        cores: if args.cores.is_empty() {
            args.target_pid.map(free_cores).unwrap_or_default()
        } else {
            args.cores.clone()
        },
        spread_sources: !args.same_source && args.target.ip().is_loopback(),
        mse: args.encryption.mse_methods(),
    };
    let announced = match &args.announce {
        Some(url) => Some(announce_peers(url, &metainfo, args.peers, threads)?),
        None => None,
    };
    let before = args.target_pid.map(process_figures).transpose()?;
    let live = Arc::new(LiveCounters::default());
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let target_pid = args.target_pid;
    let reporter = {
        let live = Arc::clone(&live);
        std::thread::spawn(move || live_lines(&live, done_rx, target_pid))
    };
    let result = run_peer_load(&load, &live, stop);
    let _ = done_tx.send(());
    let busiest = reporter.join().unwrap_or_default();
    let report = result.context("the load failed")?;
    let after = args.target_pid.map(process_figures).transpose()?;

    let secs = report.elapsed.as_secs_f64().max(1e-9);
    let gib = report.bytes as f64 / (1u64 << 30) as f64;
    let target = match (args.target_pid, before, after) {
        (Some(pid), Some((cpu0, rss0, _)), Some((cpu1, rss, hwm))) => {
            // Memory per connection: the target's RSS at the moment most
            // peers were connected, less its RSS before the load.
            let per_conn = (busiest.connected > 0)
                .then(|| busiest.rss_kib.saturating_sub(rss0) * 1024 / busiest.connected);
            json!({
                "pid": pid,
                "cpu_s": ((cpu1 - cpu0) * 100.0).round() / 100.0,
                "cpu_s_per_gib": if gib > 0.0 { ((cpu1 - cpu0) / gib * 1000.0).round() / 1000.0 } else { 0.0 },
                "rss_before_kib": rss0,
                "rss_kib": rss,
                "peak_rss_kib": hwm,
                "rss_at_most_connections_kib": busiest.rss_kib,
                "most_connections": busiest.connected,
                "rss_per_connection_bytes": per_conn,
            })
        }
        _ => serde_json::Value::Null,
    };
    let out = json!({
        "mode": "peers",
        "target": args.target.to_string(),
        "pattern": format!("{:?}", args.pattern).to_lowercase(),
        "peers": args.peers,
        "pipeline": load.pipeline,
        "duration_s": (secs * 1000.0).round() / 1000.0,
        "connections_made": report.connections_made,
        "connections_failed": report.connections_failed,
        "connections_closed_by_target": report.connections_closed_by_target,
        "handshakes": report.handshakes,
        "unchoked": report.unchoked,
        "bytes": report.bytes,
        "blocks": report.blocks,
        "rejected": report.rejected,
        "throughput_mb_s": (report.bytes as f64 / secs / 1e6 * 10.0).round() / 10.0,
        "blocks_per_s": (report.blocks as f64 / secs).round(),
        "latency_us": percentiles(&report.latency_us),
        "pieces_verified": report.pieces_verified,
        "verify_failures": report.verify_failures,
        "target_process": target,
        "announces": announced.map(|(ok, failed, peers)| json!({
            "ok": ok,
            "failed": failed,
            "peers_returned": peers,
        })),
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "{} peers against {} for {secs:.1} s ({} pattern, {} requests each)",
            args.peers,
            args.target,
            out["pattern"].as_str().unwrap_or(""),
            load.pipeline
        );
        println!(
            "connections  made {}  failed {}  closed by target {}  handshakes {}  unchoked {}",
            report.connections_made,
            report.connections_failed,
            report.connections_closed_by_target,
            report.handshakes,
            report.unchoked
        );
        println!(
            "throughput   {}/s ({} MB/s), {} blocks/s, {} received, {} rejected",
            human_bytes((report.bytes as f64 / secs) as u64),
            out["throughput_mb_s"],
            out["blocks_per_s"],
            human_bytes(report.bytes),
            report.rejected
        );
        let l = &out["latency_us"];
        println!(
            "latency µs   p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            l["p50"], l["p90"], l["p99"], l["p999"], l["max"]
        );
        if let Some((ok, failed, peers)) = announced {
            println!("announces    {ok} ok, {failed} failed, {peers} peers returned");
        }
        if args.verify > 0.0 {
            println!(
                "checked      {} pieces good, {} bad",
                report.pieces_verified, report.verify_failures
            );
        }
        if !target.is_null() {
            println!(
                "target       pid {}: {} CPU s, {} CPU s per GiB, RSS {} KiB (peak {} KiB)",
                target["pid"],
                target["cpu_s"],
                target["cpu_s_per_gib"],
                target["rss_kib"],
                target["peak_rss_kib"]
            );
        }
    }
    if report.verify_failures > 0 {
        eprintln!(
            "ringseed: the target sent {} piece(s) that do not match the torrent's hashes",
            report.verify_failures
        );
        return Ok(Exit::Mismatch);
    }
    Ok(Exit::Success)
}

/// Announces `peers` simulated peers (their load-test peer ids) to `url`
/// with `started`, from `threads` threads; returns (answered, failed,
/// peers the tracker returned in all).
fn announce_peers(
    url: &str,
    metainfo: &ringseed_engine::Metainfo,
    peers: usize,
    threads: usize,
) -> anyhow::Result<(u64, u64, u64)> {
    use ringseed_engine::io::announce::{ClientConfig, TrackerClient};
    use ringseed_engine::proto::tracker::{Announce, Event};
    let started = Instant::now();
    let totals = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads.max(1))
            .map(|t| {
                scope.spawn(move || {
                    let mut client = TrackerClient::new(ClientConfig::default())?;
                    let (mut ok, mut failed, mut returned) = (0u64, 0u64, 0u64);
                    for index in (t..peers).step_by(threads.max(1)) {
                        let mut peer_id = *b"-RSLOAD-000000000000";
                        peer_id[8..].copy_from_slice(format!("{index:012}").as_bytes());
                        let request = Announce {
                            info_hash: metainfo.info_hash,
                            peer_id,
                            port: 10_000 + (index % 50_000) as u16,
                            uploaded: 0,
                            downloaded: 0,
                            left: metainfo.total_length(),
                            event: Event::Started,
                            numwant: Some(50),
                            key: index as u32,
                            tracker_id: None,
                        };
                        match client.announce(url, &request) {
                            Ok(reply) => {
                                ok += 1;
                                returned += reply.peers.len() as u64;
                            }
                            Err(_) => failed += 1,
                        }
                    }
                    Ok::<_, ringseed_engine::io::announce::AnnounceError>((ok, failed, returned))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("announce thread"))
            .collect::<Vec<_>>()
    });
    let mut sum = (0, 0, 0);
    for t in totals {
        let (ok, failed, returned) = t.context("cannot announce")?;
        sum = (sum.0 + ok, sum.1 + failed, sum.2 + returned);
    }
    eprintln!(
        "announced {} peers to {url} in {:.1} s ({} failed)",
        sum.0,
        started.elapsed().as_secs_f64(),
        sum.1
    );
    Ok(sum)
}

/// The target's RSS when the most peers were connected.
#[derive(Debug, Default, Clone, Copy)]
struct Busiest {
    connected: u64,
    rss_kib: u64,
}

/// A line per second on stderr until `done`; samples the target's RSS.
fn live_lines(
    live: &LiveCounters,
    done: std::sync::mpsc::Receiver<()>,
    target_pid: Option<u32>,
) -> Busiest {
    let started = Instant::now();
    let mut last = (Instant::now(), 0u64, 0u64);
    let mut busiest = Busiest::default();
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
        done.recv_timeout(Duration::from_secs(1))
    {
        let bytes = live.bytes.load(Ordering::Relaxed);
        let blocks = live.blocks.load(Ordering::Relaxed);
        // Established minus lost: what is connected now.
        let connected = live
            .connected
            .load(Ordering::Relaxed)
            .saturating_sub(live.closed.load(Ordering::Relaxed));
        let rss = target_pid
            .and_then(|pid| process_figures(pid).ok())
            .map(|f| f.1);
        if let Some(rss) = rss {
            if connected >= busiest.connected {
                busiest = Busiest {
                    connected,
                    rss_kib: rss,
                };
            }
        }
        let dt = last.0.elapsed().as_secs_f64().max(1e-9);
        eprintln!(
            "{:>5.1} s  connected {}  failed {}  {}/s  {} blocks/s{}",
            started.elapsed().as_secs_f64(),
            connected,
            live.failed.load(Ordering::Relaxed),
            human_bytes(((bytes - last.1) as f64 / dt) as u64),
            ((blocks - last.2) as f64 / dt).round(),
            rss.map_or(String::new(), |r| format!("  target RSS {r} KiB"))
        );
        last = (Instant::now(), bytes, blocks);
    }
    busiest
}

fn tracker(args: &LoadtestArgs, stop: &Arc<AtomicBool>) -> anyhow::Result<Exit> {
    let info_hashes: Vec<InfoHash> = match &args.torrent {
        Some(t) => vec![crate::setup::load_torrent(t)?.info_hash],
        None => (0..args.info_hashes.max(1))
            .map(|i| InfoHash(ringseed_engine::hash::sha1(&(i as u64).to_le_bytes())))
            .collect(),
    };
    let threads = args.threads.map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get()),
        |n| n.get(),
    );
    let load = TrackerLoad {
        target: args.target,
        info_hashes,
        duration: Duration::from_secs_f64(args.duration),
        threads,
        window: args.window.max(1),
        scrape_fraction: args.scrape_fraction,
    };
    let before = args.target_pid.map(process_figures).transpose()?;
    let report = run_tracker_load(&load, stop).context("the tracker load failed")?;
    let after = args.target_pid.map(process_figures).transpose()?;
    let secs = report.elapsed.as_secs_f64().max(1e-9);
    let answered = report.announces + report.scrapes + report.errors;
    let out = json!({
        "mode": "tracker",
        "target": args.target.to_string(),
        "duration_s": (secs * 1000.0).round() / 1000.0,
        "sent": report.sent,
        "announces": report.announces,
        "scrapes": report.scrapes,
        "errors": report.errors,
        "timeouts": report.timeouts,
        "responses_per_s": (answered as f64 / secs).round(),
        "latency_us": percentiles(&report.latency_us),
        "target_cpu_s": match (before, after) {
            (Some((a, _, _)), Some((b, _, _))) => json!(((b - a) * 100.0).round() / 100.0),
            _ => serde_json::Value::Null,
        },
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "tracker {} for {secs:.1} s: {} responses/s ({} announces, {} scrapes, {} errors, {} timeouts of {} sent)",
            args.target, out["responses_per_s"], report.announces, report.scrapes, report.errors, report.timeouts, report.sent
        );
        let l = &out["latency_us"];
        println!(
            "latency µs p50 {}  p99 {}  max {}",
            l["p50"], l["p99"], l["max"]
        );
    }
    if answered == 0 {
        bail!("the tracker at {} never answered", args.target);
    }
    Ok(Exit::Success)
}

fn dht(args: &LoadtestArgs, stop: &Arc<AtomicBool>) -> anyhow::Result<Exit> {
    let load = DhtLoad {
        target: args.target,
        duration: Duration::from_secs_f64(args.duration),
        sources: args.peers.max(1),
        window: args.window.max(1),
    };
    let before = args.target_pid.map(process_figures).transpose()?;
    let report = run_dht_load(&load, stop).context("the DHT load failed")?;
    let after = args.target_pid.map(process_figures).transpose()?;
    let secs = report.elapsed.as_secs_f64().max(1e-9);
    let cpu = match (before, after) {
        (Some((a, _, _)), Some((b, _, _))) => Some(b - a),
        _ => None,
    };
    let out = json!({
        "mode": "dht",
        "target": args.target.to_string(),
        "duration_s": (secs * 1000.0).round() / 1000.0,
        "sent": report.sent,
        "replies": report.replies,
        "errors": report.errors,
        "lost": report.lost,
        "replies_per_s": (report.replies as f64 / secs).round(),
        "target_cpu_s": cpu.map(|c| (c * 100.0).round() / 100.0),
        "target_cpu_us_per_reply": cpu
            .filter(|_| report.replies > 0)
            .map(|c| (c * 1e6 / report.replies as f64 * 10.0).round() / 10.0),
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "dht {} for {secs:.1} s: {} replies/s ({} replies, {} errors, {} lost of {} sent); target CPU {} s, {} µs per reply",
            args.target,
            out["replies_per_s"],
            report.replies,
            report.errors,
            report.lost,
            report.sent,
            out["target_cpu_s"],
            out["target_cpu_us_per_reply"]
        );
    }
    if report.replies == 0 {
        bail!("the DHT node at {} never answered", args.target);
    }
    Ok(Exit::Success)
}
