//! `ringseed tracker`: a UDP and HTTP tracker until SIGINT or SIGTERM.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{bail, Context};
use ringseed_engine::io::tracker_server::{TrackerConfig, TrackerServer};
use ringseed_engine::InfoHash;

use crate::cli::{Exit, TrackerArgs};

pub fn run(args: TrackerArgs) -> anyhow::Result<Exit> {
    crate::setup::raise_open_file_limit();
    if args.udp.is_none() && args.http.is_none() {
        bail!("nothing to serve: give --udp ADDR:PORT and/or --http ADDR:PORT");
    }
    let whitelist = match &args.whitelist {
        Some(path) => Some(read_whitelist(path)?),
        None => None,
    };
    let config = TrackerConfig {
        udp: args.udp,
        http: args.http,
        workers: args
            .workers
            .map_or_else(|| TrackerConfig::default().workers, |n| n.get()),
        whitelist,
        interval: Duration::from_secs(args.interval.max(1)),
        io: args.io,
        max_http_connections: args.max_connections.max(1),
    };
    let server = start(config)?;
    super::seed::wait_for_stop_signal()?;
    let c = server.counters();
    use std::sync::atomic::Ordering::Relaxed;
    println!(
        "stopped: {} announces, {} scrapes, {} refused, {} malformed, {} timed out",
        c.announces.load(Relaxed),
        c.scrapes.load(Relaxed),
        c.refused.load(Relaxed),
        c.malformed.load(Relaxed),
        c.timed_out.load(Relaxed)
    );
    Ok(Exit::Success)
}

/// Starts the tracker and prints where it serves.
pub fn start(config: TrackerConfig) -> anyhow::Result<TrackerServer> {
    let server = TrackerServer::start(config).context("cannot start the tracker")?;
    if let Some(addr) = server.udp_addr() {
        println!("tracker on udp://{addr}/announce");
    }
    if let Some(addr) = server.http_addr() {
        println!("tracker on http://{addr}/announce (stats: http://{addr}/stats)");
    }
    Ok(server)
}

fn read_whitelist(path: &std::path::Path) -> anyhow::Result<HashSet<InfoHash>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = HashSet::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let hash = InfoHash::parse(line)
            .with_context(|| format!("{} line {}: not an info-hash", path.display(), n + 1))?;
        out.insert(hash);
    }
    Ok(out)
}
