//! A local DHT for tests and benchmarks: many ringseed DHT nodes in one
//! thread, node *i* on its own loopback address (the first address plus
//! *i*; one node per IP is all a routing table keeps), all on one port.
//! Each bootstraps from the first, so the network forms as it would from a
//! router. Nothing leaves the machine: only loopback addresses are used.

use std::collections::BTreeSet;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::policy::dht::{Config, Dht, DhtStats};
use crate::proto::info_hash::InfoHash;
use crate::proto::krpc::NodeId;
use crate::rng;

/// What the swarm did, summed over its nodes.
#[derive(Debug, Clone, Default)]
pub struct SwarmReport {
    /// Nodes in the swarm.
    pub nodes: usize,
    /// Routing-table entries over all nodes.
    pub routing_nodes: u64,
    /// Queries received over all nodes.
    pub queries_in: u64,
    /// Replies sent over all nodes.
    pub replies_out: u64,
    /// Torrents any node stores peers of.
    pub stored: BTreeSet<InfoHash>,
}

/// `count` nodes on `first`, `first + 1`, ... (each `:port`), each with
/// `config`; runs until `stop` is set. `ready` is called once every socket
/// is bound, `progress` with the figures so far once a second (queries
/// received: what clients of the swarm send into it).
pub fn run_swarm(
    count: usize,
    first: Ipv4Addr,
    port: u16,
    config: &Config,
    stop: &AtomicBool,
    ready: &mut dyn FnMut(),
    progress: &mut dyn FnMut(&SwarmReport),
) -> io::Result<SwarmReport> {
    let base = u32::from(first);
    let mut nodes = Vec::with_capacity(count);
    for i in 0..count {
        let ip = Ipv4Addr::from(base.saturating_add(i as u32));
        if !ip.is_loopback() || base.checked_add(i as u32).is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{ip} is not a loopback address: the swarm stays on this machine"),
            ));
        }
        let socket = UdpSocket::bind(SocketAddr::new(ip.into(), port))?;
        socket.set_nonblocking(true)?;
        let mut seed = rng::seeded();
        let mut id = [0u8; 20];
        for chunk in id.chunks_mut(8) {
            let r = rng::next(&mut seed).to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
        let dht = Dht::new(config.clone(), NodeId(id), Duration::ZERO, seed);
        nodes.push((socket, dht));
    }
    ready();
    let started = Instant::now();
    let first_addr = SocketAddr::new(first.into(), port);
    let second_addr = SocketAddr::new(Ipv4Addr::from(base.saturating_add(1)).into(), port);
    for (i, (_, dht)) in nodes.iter_mut().enumerate() {
        let router = if i == 0 { second_addr } else { first_addr };
        dht.bootstrap(Duration::ZERO, &[router]);
    }
    let mut buf = vec![0u8; 4097];
    let mut last_progress = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if last_progress.elapsed() >= Duration::from_secs(1) {
            last_progress = Instant::now();
            progress(&report_of(&nodes));
        }
        let now = started.elapsed();
        for (socket, dht) in &mut nodes {
            dht.tick(now);
            while let Some(t) = dht.poll_transmit() {
                let _ = socket.send_to(&t.bytes, t.to);
            }
            while dht.poll_event().is_some() {}
        }
        let wait = nodes
            .iter()
            .map(|(_, d)| d.next_tick(now))
            .min()
            .unwrap_or(Duration::from_millis(100))
            .min(Duration::from_millis(100));
        let mut fds: Vec<libc::pollfd> = nodes
            .iter()
            .map(|(s, _)| libc::pollfd {
                fd: s.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let ms = wait.as_millis().clamp(1, 100) as i32;
        // SAFETY: `fds` is a live array of `fds.len()` pollfds we own.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        let now = started.elapsed();
        for (i, (socket, dht)) in nodes.iter_mut().enumerate() {
            if fds[i].revents == 0 {
                continue;
            }
            while let Ok((n, from)) = socket.recv_from(&mut buf) {
                dht.receive(now, from, &buf[..n]);
            }
            while let Some(t) = dht.poll_transmit() {
                let _ = socket.send_to(&t.bytes, t.to);
            }
        }
    }
    Ok(report_of(&nodes))
}

/// The figures of `nodes` now.
fn report_of(nodes: &[(UdpSocket, Dht)]) -> SwarmReport {
    let mut report = SwarmReport {
        nodes: nodes.len(),
        ..SwarmReport::default()
    };
    for (_, dht) in nodes {
        let s: DhtStats = dht.stats();
        report.routing_nodes += s.routing_nodes;
        report.queries_in += s.queries_in_ping
            + s.queries_in_find_node
            + s.queries_in_get_peers
            + s.queries_in_announce_peer
            + s.queries_in_sample_infohashes
            + s.queries_in_other;
        report.replies_out += s.replies_out;
        report.stored.extend(dht.stored_info_hashes());
    }
    report
}
