//! `ringseed dht-swarm`: a local DHT of many nodes, for tests and
//! benchmarks; prints `ready FIRST_IP:PORT` once every node is bound, a
//! `stats` line every second, and a `swarm:` summary (with the torrents any
//! node stores) when stopped.

use std::io::Write;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context;
use ringseed_engine::io::dht_swarm::run_swarm;
use ringseed_engine::policy::dht::Config;

use crate::cli::{DhtSwarmArgs, Exit};

pub fn run(args: DhtSwarmArgs) -> anyhow::Result<Exit> {
    crate::setup::raise_open_file_limit();
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("cannot install signal handlers")?;
    }
    let config = Config {
        replies_per_second: args.replies_per_second,
        source_queries_per_second: args.source_queries_per_second,
        ..Config::default()
    };
    let report = run_swarm(
        args.nodes,
        args.first_ip,
        args.port,
        &config,
        &stop,
        &mut || {
            println!("ready {}:{}", args.first_ip, args.port);
            let _ = std::io::stdout().flush();
        },
        &mut |r| {
            // For benchmarks: the queries clients send into the swarm.
            println!(
                "stats routing_nodes={} queries_in={} replies_out={}",
                r.routing_nodes, r.queries_in, r.replies_out
            );
            let _ = std::io::stdout().flush();
        },
    )
    .context("cannot run the swarm")?;
    let stored: Vec<String> = report.stored.iter().map(|h| h.to_string()).collect();
    println!(
        "swarm: nodes={} routing_nodes={} queries_in={} replies_out={} stored={}",
        report.nodes,
        report.routing_nodes,
        report.queries_in,
        report.replies_out,
        if stored.is_empty() {
            "-".to_owned()
        } else {
            stored.join(",")
        }
    );
    Ok(Exit::Success)
}
