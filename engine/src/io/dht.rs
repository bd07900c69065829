//! The DHT's I/O: one UDP socket per address family on the BitTorrent port
//! (BEP 32: an IPv4 node and an IPv6 node, as libtorrent runs them), and a
//! thread of its own that moves datagrams between them and the sans-IO
//! nodes of [`crate::policy::dht`]. It announces every public torrent the
//! Session runs (spread over the interval by [`AnnounceSchedule`]), looks
//! peers up for the torrents it downloads and the magnet links it fetches,
//! hands the peers found to the data plane's [`Dialer`], pings the nodes
//! peers name in BEP 5 `port` messages, and saves the routing table (node
//! id included) rarely: at most once an hour, and when it stops.
//!
//! The thread blocks in `poll` on both sockets until a datagram, the next
//! timer of a node, or [`POLL_AT_MOST`]: it costs nothing when idle and
//! never touches a data-plane worker (measured choice: the DHT's few
//! hundred datagrams a second are not worth a ring's completion routing).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::io::files::write_atomic;
use crate::io::plane::control::Dialer;
use crate::policy::dht::node_id::random_id_for_ip;
use crate::policy::dht::routing::SavedTable;
use crate::policy::dht::schedule::AnnounceSchedule;
use crate::policy::dht::{Config, Dht, DhtStats, Event};
use crate::proto::info_hash::InfoHash;
use crate::proto::krpc::NodeId;
use crate::rng;

/// The well-known public routers, used when the routing table is empty and
/// no other bootstrap nodes are configured.
pub const DEFAULT_BOOTSTRAP: &[&str] = &[
    "router.bittorrent.com:6881",
    "router.utorrent.com:6881",
    "dht.transmissionbt.com:6881",
    "dht.libtorrent.org:25401",
];

/// The longest the thread sleeps: commands and peers' `port` messages wait
/// at most this long.
const POLL_AT_MOST: Duration = Duration::from_millis(100);
/// How often a downloaded torrent (or a fetched magnet link) is looked up
/// again while it wants peers.
const LOOKUP_EVERY: Duration = Duration::from_secs(60);
/// A magnet link with no other source is looked up more often.
const FETCH_LOOKUP_EVERY: Duration = Duration::from_secs(15);
/// Announces of seeded torrents are spread between these intervals.
const ANNOUNCE_MIN: Duration = Duration::from_secs(15 * 60);
/// See [`ANNOUNCE_MIN`].
const ANNOUNCE_MAX: Duration = Duration::from_secs(25 * 60);
/// Lookups a node runs at once for announces; more wait (late, not lost).
const MAX_ANNOUNCE_LOOKUPS: usize = 16;
/// An announce or lookup that reached no node (the table was empty) is
/// tried again after this, doubling up to [`RETRY_AT_MOST`]: a node that
/// joins later need not wait for the next round.
const RETRY_FIRST: Duration = Duration::from_secs(5);
/// See [`RETRY_FIRST`].
const RETRY_AT_MOST: Duration = Duration::from_secs(300);
/// The routing table is written at most this often (and on stop).
const SAVE_EVERY: Duration = Duration::from_secs(3600);
/// With an empty table, the bootstrap names are resolved again this often
/// (the network may have come back).
const RESOLVE_AGAIN_EVERY: Duration = Duration::from_secs(60);
/// Largest datagram read: one more than the nodes accept, so oversized
/// ones are seen and counted.
const RECV_BUF: usize = 4097;

/// Settings of the DHT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhtConfig {
    /// UDP port of both nodes; 0: the BitTorrent port.
    pub port: u16,
    /// Bootstrap nodes, `HOST:PORT`.
    pub bootstrap: Vec<String>,
    /// BEP 43: query only, answer nothing.
    pub read_only: bool,
    /// Where the routing tables are saved (`dht.dat`, `dht6.dat`); `None`:
    /// not saved.
    pub state_dir: Option<PathBuf>,
    /// The IPv4 address to bind (the BitTorrent listen address's, when it
    /// is one).
    pub bind_v4: Ipv4Addr,
    /// Run an IPv6 node too (where the host has IPv6).
    pub ipv6: bool,
}

impl Default for DhtConfig {
    fn default() -> Self {
        DhtConfig {
            port: 0,
            bootstrap: DEFAULT_BOOTSTRAP.iter().map(|s| s.to_string()).collect(),
            read_only: false,
            state_dir: None,
            bind_v4: Ipv4Addr::UNSPECIFIED,
            ipv6: true,
        }
    }
}

/// What the DHT is asked to do, from the Session's thread.
enum Command {
    /// Announce `info_hash` (a seed, or a download that also looks up).
    Announce { info_hash: InfoHash, seed: bool },
    /// Look `info_hash` up repeatedly (a magnet link's metadata).
    Find(InfoHash),
    /// Stop announcing and looking up `info_hash`.
    Forget(InfoHash),
    /// Nodes to ping (`HOST:PORT`: a torrent's `nodes` key).
    AddNodes(Vec<String>),
    /// Save and end.
    Stop,
}

/// The DHT's counters and state, per family, for status and metrics.
#[derive(Debug, Clone, Default)]
pub struct DhtStatus {
    /// The UDP port of the nodes.
    pub port: u16,
    /// The IPv4 node's counters.
    pub v4: Option<DhtStats>,
    /// The IPv6 node's counters.
    pub v6: Option<DhtStats>,
    /// Torrents announced.
    pub announcing: usize,
    /// Our external IPv4 address, as the network sees it.
    pub external_v4: Option<IpAddr>,
}

/// The running DHT: its thread and a handle to command it.
pub struct DhtService {
    commands: Sender<Command>,
    thread: Option<JoinHandle<()>>,
    status: Arc<Mutex<DhtStatus>>,
    port: u16,
}

impl DhtService {
    /// Binds the sockets on `config.port` (or `bt_port`) and starts the
    /// thread; found peers go to `dialer`, announces name TCP `bt_port`.
    pub fn start(config: DhtConfig, bt_port: u16, dialer: Dialer) -> io::Result<Self> {
        let port = if config.port == 0 {
            bt_port
        } else {
            config.port
        };
        let v4 = bind(SocketAddr::new(config.bind_v4.into(), port))?;
        let port = v4.local_addr()?.port();
        let v6 = if config.ipv6 {
            // No IPv6 here: the IPv4 node alone.
            bind(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port)).ok()
        } else {
            None
        };
        let status = Arc::new(Mutex::new(DhtStatus {
            port,
            ..DhtStatus::default()
        }));
        let (tx, rx) = mpsc::channel();
        let (resolved_tx, resolved_rx) = mpsc::channel();
        let mut nodes = vec![Node::new(v4, false, &config)];
        if let Some(v6) = v6 {
            nodes.push(Node::new(v6, true, &config));
        }
        let run = Runner {
            nodes,
            commands: rx,
            dialer,
            bt_port,
            bootstrap: config.bootstrap.clone(),
            status: Arc::clone(&status),
            started: Instant::now(),
            schedule: AnnounceSchedule::new(ANNOUNCE_MIN, ANNOUNCE_MAX),
            seeds: HashMap::new(),
            lookups: HashMap::new(),
            retries: HashMap::new(),
            rng: rng::seeded(),
            last_save: Instant::now(),
            last_resolve: None,
            resolved_tx,
            resolved_rx,
            bootstrapping: false,
        };
        let thread = std::thread::Builder::new()
            .name("ringseed-dht".into())
            .spawn(move || run.run())?;
        Ok(DhtService {
            commands: tx,
            thread: Some(thread),
            status,
            port,
        })
    }

    /// The UDP port of the nodes (for the BEP 5 `port` message).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Announces `info_hash` from now on (`seed`: we have it all), looking
    /// its peers up at the same time.
    pub fn announce(&self, info_hash: InfoHash, seed: bool) {
        let _ = self.commands.send(Command::Announce { info_hash, seed });
    }

    /// Looks `info_hash` up every few seconds until [`forget`](Self::forget)
    /// (a magnet link whose metadata is fetched).
    pub fn find(&self, info_hash: InfoHash) {
        let _ = self.commands.send(Command::Find(info_hash));
    }

    /// Stops announcing and looking up `info_hash`.
    pub fn forget(&self, info_hash: InfoHash) {
        let _ = self.commands.send(Command::Forget(info_hash));
    }

    /// Pings `nodes` (`HOST:PORT`, names resolved off the DHT's thread):
    /// a way in (BEP 5: a trackerless torrent's `nodes` key).
    pub fn add_nodes(&self, nodes: &[String]) {
        if !nodes.is_empty() {
            let _ = self.commands.send(Command::AddNodes(nodes.to_vec()));
        }
    }

    /// Counters and state now.
    pub fn status(&self) -> DhtStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Saves the routing tables and stops the thread.
    pub fn stop(mut self) {
        let _ = self.commands.send(Command::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for DhtService {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Stop);
    }
}

/// A UDP socket on `addr` (IPv6 only, for `[::]`), non-blocking.
fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// One family's node and socket.
struct Node {
    socket: UdpSocket,
    dht: Dht,
    ipv6: bool,
    /// Where its table is saved.
    save_path: Option<PathBuf>,
    /// Its table had entries at the last look (see `retry_when_joined`).
    had_nodes: bool,
}

impl Node {
    /// The node of `socket`'s family, from its saved table if there is one
    /// (same id: the network keeps knowing us), else with a random id.
    fn new(socket: UdpSocket, ipv6: bool, config: &DhtConfig) -> Node {
        let save_path = config
            .state_dir
            .as_ref()
            .map(|d| d.join(if ipv6 { "dht6.dat" } else { "dht.dat" }));
        let dht_config = Config {
            ipv6,
            read_only: config.read_only,
            version: Some(*b"RS01"),
            ..Config::default()
        };
        let seed = rng::seeded();
        let saved = save_path
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|bytes| SavedTable::decode(&bytes).ok());
        let dht = match saved {
            Some(saved) => Dht::restore(dht_config, &saved, Duration::ZERO, seed),
            None => {
                let mut state = seed;
                let mut id = [0u8; 20];
                for chunk in id.chunks_mut(8) {
                    let r = rng::next(&mut state).to_le_bytes();
                    chunk.copy_from_slice(&r[..chunk.len()]);
                }
                Dht::new(dht_config, NodeId(id), Duration::ZERO, seed)
            }
        };
        Node {
            socket,
            dht,
            ipv6,
            save_path,
            had_nodes: false,
        }
    }

    fn save(&self) {
        if let Some(path) = &self.save_path {
            if let Err(e) = write_atomic(path, &self.dht.save()) {
                tracing::warn!(
                    "cannot save the DHT routing table to {}: {e}",
                    path.display()
                );
            }
        }
    }
}

/// A repeated lookup of a torrent we want peers for.
struct Lookup {
    every: Duration,
    next: Duration,
    /// Peers came since the last lookup started.
    found: bool,
    /// Lookups in a row that found none: the next comes sooner (5 s,
    /// doubling up to `every`), as peers may be announcing right now.
    misses: u32,
}

impl Lookup {
    fn every(every: Duration) -> Lookup {
        Lookup {
            every,
            next: Duration::ZERO,
            found: false,
            misses: 0,
        }
    }
}

/// The thread's state.
struct Runner {
    nodes: Vec<Node>,
    commands: Receiver<Command>,
    dialer: Dialer,
    bt_port: u16,
    bootstrap: Vec<String>,
    status: Arc<Mutex<DhtStatus>>,
    started: Instant,
    schedule: AnnounceSchedule,
    /// Announced torrents: whether we seed them.
    seeds: HashMap<InfoHash, bool>,
    lookups: HashMap<InfoHash, Lookup>,
    /// Announces that reached nobody, per torrent and family: when to try
    /// again, and the wait after that.
    retries: HashMap<(InfoHash, bool), (Duration, Duration)>,
    rng: u64,
    last_save: Instant,
    last_resolve: Option<Instant>,
    /// Names resolved off this thread: the addresses, and whether they are
    /// bootstrap routers (else nodes to ping).
    resolved_tx: Sender<(Vec<SocketAddr>, bool)>,
    resolved_rx: Receiver<(Vec<SocketAddr>, bool)>,
    /// The bootstrap names are being resolved.
    bootstrapping: bool,
}

impl Runner {
    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    fn run(mut self) {
        self.resolve_and_bootstrap();
        let mut buf = vec![0u8; RECV_BUF];
        loop {
            if !self.take_commands() {
                break;
            }
            self.take_resolved();
            let now = self.now();
            let heard = self.dialer.take_dht_nodes();
            for node in &mut self.nodes {
                for addr in heard.iter().filter(|a| a.is_ipv6() == node.ipv6) {
                    node.dht.add_node(now, *addr);
                }
                node.dht.tick(now);
            }
            self.retry_when_joined(now);
            self.announce_due(now);
            self.flush();
            self.maybe_save_and_resolve();
            self.publish_status();
            let wait = self
                .nodes
                .iter()
                .map(|n| n.dht.next_tick(now))
                .min()
                .unwrap_or(POLL_AT_MOST)
                .min(POLL_AT_MOST);
            self.wait_readable(wait);
            self.receive(&mut buf);
        }
        for node in &self.nodes {
            node.save();
        }
    }

    /// Applies the commands waiting; false once told to stop (or the
    /// Session is gone).
    fn take_commands(&mut self) -> bool {
        loop {
            match self.commands.try_recv() {
                Ok(Command::Announce { info_hash, seed }) => {
                    let new = self.seeds.insert(info_hash, seed).is_none();
                    if new {
                        // New torrents first: the schedule puts them ahead.
                        self.schedule.add(info_hash);
                    }
                    if !seed {
                        self.lookups
                            .entry(info_hash)
                            .or_insert(Lookup::every(LOOKUP_EVERY));
                    } else {
                        self.lookups.remove(&info_hash);
                    }
                }
                Ok(Command::Find(info_hash)) => {
                    self.lookups
                        .insert(info_hash, Lookup::every(FETCH_LOOKUP_EVERY));
                }
                Ok(Command::Forget(info_hash)) => {
                    self.seeds.remove(&info_hash);
                    self.schedule.remove(&info_hash);
                    self.lookups.remove(&info_hash);
                    self.retries.retain(|(h, _), _| *h != info_hash);
                }
                Ok(Command::AddNodes(names)) => self.resolve(names, false),
                Ok(Command::Stop) | Err(TryRecvError::Disconnected) => return false,
                Err(TryRecvError::Empty) => return true,
            }
        }
    }

    /// A node whose table just got its first entries retries at once what
    /// reached nobody (its backoff may have grown long while it was alone).
    fn retry_when_joined(&mut self, now: Duration) {
        for node in &mut self.nodes {
            let has_nodes = node.dht.stats().routing_nodes > 0;
            if has_nodes && !node.had_nodes {
                for ((_, ipv6), (at, wait)) in &mut self.retries {
                    if *ipv6 == node.ipv6 {
                        *at = now;
                        *wait = RETRY_FIRST;
                    }
                }
                for lookup in self.lookups.values_mut() {
                    lookup.next = now;
                    lookup.misses = 0;
                }
            }
            node.had_nodes = has_nodes;
        }
    }

    /// Starts the announces and lookups that are due.
    fn announce_due(&mut self, now: Duration) {
        while self
            .nodes
            .iter()
            .all(|n| n.dht.lookups_running() < MAX_ANNOUNCE_LOOKUPS)
        {
            let Some(info_hash) = self.schedule.next_due(now, &mut self.rng) else {
                break;
            };
            let seed = self.seeds.get(&info_hash).copied().unwrap_or(true);
            for node in &mut self.nodes {
                node.dht.announce(now, info_hash, self.bt_port, false, seed);
            }
        }
        for node in &mut self.nodes {
            for ((info_hash, ipv6), (at, wait)) in &mut self.retries {
                // Retries wait for room too: 1,000 torrents that reached
                // nobody must not all start the moment nodes appear.
                if node.dht.lookups_running() >= MAX_ANNOUNCE_LOOKUPS {
                    break;
                }
                if *ipv6 == node.ipv6 && now >= *at {
                    *at = now + *wait;
                    let seed = self.seeds.get(info_hash).copied().unwrap_or(true);
                    node.dht
                        .announce(now, *info_hash, self.bt_port, false, seed);
                }
            }
        }
        for (info_hash, lookup) in &mut self.lookups {
            if now >= lookup.next {
                lookup.next = now + lookup.every;
                lookup.found = false;
                for node in &mut self.nodes {
                    node.dht.get_peers(now, *info_hash);
                }
            }
        }
    }

    /// Sends what the nodes want sent and acts on their events.
    fn flush(&mut self) {
        let now = self.now();
        for node in &mut self.nodes {
            while let Some(t) = node.dht.poll_transmit() {
                // A full socket buffer or an unreachable address loses the
                // datagram, as the network could: the node's timeouts cover it.
                let _ = node.socket.send_to(&t.bytes, t.to);
            }
            while let Some(event) = node.dht.poll_event() {
                match event {
                    Event::Peers {
                        info_hash, peers, ..
                    } => {
                        if let Some(l) = self.lookups.get_mut(&info_hash) {
                            l.found = true;
                        }
                        self.dialer.dial(info_hash, &peers);
                    }
                    Event::ExternalAddress { ip, id_matches } => {
                        tracing::info!("DHT: our external address is {ip}");
                        if !id_matches {
                            let id = random_id_for_ip(ip, &mut self.rng);
                            node.dht.set_id(now, id);
                            node.save();
                        }
                    }
                    Event::AnnounceDone {
                        info_hash,
                        nodes_announced,
                        ..
                    } => {
                        let key = (info_hash, node.ipv6);
                        if nodes_announced > 0 || !self.seeds.contains_key(&info_hash) {
                            self.retries.remove(&key);
                        } else {
                            let wait = self
                                .retries
                                .get(&key)
                                .map_or(RETRY_FIRST, |&(_, w)| (w * 2).min(RETRY_AT_MOST));
                            self.retries.insert(key, (now + wait, wait));
                        }
                    }
                    Event::LookupDone {
                        target,
                        nodes_replied,
                        ..
                    } => {
                        // Nobody to ask yet, or no peer yet: ask again soon,
                        // not a round later.
                        if let Some(l) = self.lookups.get_mut(&InfoHash(target.0)) {
                            if nodes_replied == 0 || !l.found {
                                let wait = (RETRY_FIRST * 2u32.pow(l.misses.min(6))).min(l.every);
                                l.misses += 1;
                                l.next = l.next.min(now + wait);
                            } else {
                                l.misses = 0;
                            }
                        }
                    }
                }
            }
        }
    }

    /// Waits until a socket is readable or `wait` has passed.
    fn wait_readable(&self, wait: Duration) {
        let mut fds: Vec<libc::pollfd> = self
            .nodes
            .iter()
            .map(|n| libc::pollfd {
                fd: n.socket.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let ms = wait.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: `fds` is a live array of `fds.len()` pollfds we own.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    }

    /// Hands every datagram waiting to its node.
    fn receive(&mut self, buf: &mut [u8]) {
        let now = self.now();
        for node in &mut self.nodes {
            while let Ok((n, from)) = node.socket.recv_from(buf) {
                node.dht.receive(now, from, &buf[..n]);
            }
        }
        self.flush();
    }

    /// Resolves the bootstrap names on a thread of their own (a DNS lookup
    /// may take seconds: datagrams, commands and a stop wait for nothing);
    /// the nodes bootstrap when the addresses come (`take_resolved`).
    fn resolve_and_bootstrap(&mut self) {
        self.last_resolve = Some(Instant::now());
        let names: Vec<String> = self
            .bootstrap
            .iter()
            .filter(|b| !b.is_empty())
            .cloned()
            .collect();
        if names.is_empty() {
            // No routers: a restored table (or nodes peers name) is all.
            let now = self.now();
            for node in &mut self.nodes {
                node.dht.bootstrap(now, &[]);
            }
            return;
        }
        self.resolve(names, true);
    }

    /// Resolves `names` (`HOST:PORT`) on a thread of their own; the
    /// addresses are bootstrapped from (`bootstrap`) or pinged when they
    /// come (`take_resolved`).
    fn resolve(&mut self, names: Vec<String>, bootstrap: bool) {
        let tx = self.resolved_tx.clone();
        let _ = std::thread::Builder::new()
            .name("ringseed-dht-dns".into())
            .spawn(move || {
                let addrs: Vec<SocketAddr> = names
                    .iter()
                    .flat_map(|b| match b.to_socket_addrs() {
                        Ok(found) => found.collect::<Vec<_>>(),
                        Err(e) => {
                            tracing::debug!("DHT node {b}: {e}");
                            Vec::new()
                        }
                    })
                    .collect();
                let _ = tx.send((addrs, bootstrap));
            });
        if bootstrap {
            self.bootstrapping = true;
        }
    }

    /// Bootstraps from (or pings) the addresses resolved, as they come.
    fn take_resolved(&mut self) {
        while let Ok((addrs, bootstrap)) = self.resolved_rx.try_recv() {
            let now = self.now();
            for node in &mut self.nodes {
                let mine: Vec<SocketAddr> = addrs
                    .iter()
                    .copied()
                    .filter(|a| a.is_ipv6() == node.ipv6)
                    .collect();
                if bootstrap {
                    node.dht.bootstrap(now, &mine);
                } else {
                    for addr in mine {
                        node.dht.add_node(now, addr);
                    }
                }
            }
            if bootstrap {
                self.bootstrapping = false;
            }
        }
    }

    fn maybe_save_and_resolve(&mut self) {
        if self.last_save.elapsed() >= SAVE_EVERY {
            self.last_save = Instant::now();
            for node in &self.nodes {
                node.save();
            }
        }
        let empty = self.nodes.iter().all(|n| n.dht.stats().routing_nodes == 0);
        if empty
            && !self.bootstrapping
            && self
                .last_resolve
                .is_none_or(|t| t.elapsed() >= RESOLVE_AGAIN_EVERY)
        {
            self.resolve_and_bootstrap();
        }
    }

    fn publish_status(&self) {
        let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
        s.v4 = self.nodes.iter().find(|n| !n.ipv6).map(|n| n.dht.stats());
        s.v6 = self.nodes.iter().find(|n| n.ipv6).map(|n| n.dht.stats());
        s.announcing = self.seeds.len();
        s.external_v4 = self
            .nodes
            .iter()
            .find(|n| !n.ipv6)
            .and_then(|n| n.dht.external_address());
    }
}
