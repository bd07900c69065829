//! Command-line arguments. Every flag can also come from a `RINGSEED_*`
//! environment variable (handy in a systemd `EnvironmentFile`).

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use ringseed_engine::io::dht::DhtConfig;
use ringseed_engine::io::plane::control::PlaneConfig;
use ringseed_engine::io::plane::transport::Encryption;
use ringseed_engine::io::plane::IoMode;
use ringseed_engine::io::webseed::WebSeedConfig;
use ringseed_engine::policy::peer_session::SessionConfig;

/// Exit statuses that scripts can rely on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Everything worked.
    Success = 0,
    /// Bad input or an I/O failure; the message says which.
    Error = 1,
    // 2 is clap's: the command line itself is wrong.
    /// `verify`: the data does not match the torrent.
    Mismatch = 3,
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit as u8)
    }
}

/// ringseed: a BitTorrent engine for seeding large files to many peers.
#[derive(Debug, Parser)]
#[command(
    name = "ringseed",
    version,
    about,
    after_help = "Exit status: 0 success, 1 error (bad input, I/O), 2 bad command line, \
                  3 data does not match the torrent (verify)."
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Make a .torrent from a file or a directory.
    Create(CreateArgs),
    /// Show what a .torrent file holds.
    Info(InfoArgs),
    /// Check data against a .torrent, every piece, on all cores.
    Verify(VerifyArgs),
    /// Seed .torrent files, files or directories until stopped (Ctrl-C).
    Seed(SeedArgs),
    /// Download a torrent (a .torrent file or a magnet link), verified
    /// piece by piece; with --seed, go on seeding it.
    Download(DownloadArgs),
    /// Run a BitTorrent tracker (UDP and/or HTTP) until stopped (Ctrl-C).
    Tracker(TrackerArgs),
    /// Drive simulated peers against a seeder (or UDP announces against a
    /// tracker) and report throughput, latency and the target's cost.
    Loadtest(LoadtestArgs),
    /// Run as a service: seed what watched directories hold, follow their
    /// changes, resume without hashing, report metrics (see `config default`).
    Daemon(DaemonArgs),
    /// Control a running daemon over its Unix socket.
    Ctl(CtlArgs),
    /// The daemon's configuration file.
    Config(ConfigArgs),
    /// Run a local DHT of many nodes on loopback addresses, for tests and
    /// benchmarks (nothing leaves the machine), until stopped.
    DhtSwarm(DhtSwarmArgs),
}

/// Arguments of `ringseed dht-swarm`.
#[derive(Debug, Args)]
pub struct DhtSwarmArgs {
    /// Nodes in the swarm.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub nodes: usize,
    /// The first node's address; node i is on this address plus i (each
    /// node its own address: a routing table keeps one node per IP). Must
    /// be loopback.
    #[arg(long, value_name = "IP", default_value = "127.0.1.1")]
    pub first_ip: std::net::Ipv4Addr,
    /// The UDP port of every node.
    #[arg(long, value_name = "PORT", default_value_t = 6881)]
    pub port: u16,
    /// Replies each node sends per second at most (its defence; raise it
    /// to measure what a node can answer).
    #[arg(long, value_name = "N", default_value_t = 250)]
    pub replies_per_second: u32,
    /// Queries each node answers per second per source address.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub source_queries_per_second: u32,
}

/// Arguments of `ringseed daemon`. Each key of the config file can also be
/// set by a `RINGSEED_<KEY>` variable (see `ringseed config default`);
/// these flags win over both.
#[derive(Debug, Clone, Args)]
pub struct DaemonArgs {
    /// The TOML config file [default: none; built-in defaults].
    #[arg(short, long, value_name = "FILE", env = "RINGSEED_CONFIG")]
    pub config: Option<PathBuf>,
    /// BitTorrent address and port (`listen`).
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<std::net::SocketAddr>,
    /// A directory of data files to make torrents of and seed (a
    /// `[[data_dir]]`); repeat for more.
    #[arg(long, value_name = "DIR")]
    pub watch: Vec<PathBuf>,
    /// A directory of .torrent files, data beside them (a
    /// `[[torrent_dir]]`); repeat for more.
    #[arg(long, value_name = "DIR")]
    pub watch_torrents: Vec<PathBuf>,
    /// The state directory (`state_dir`).
    #[arg(long, value_name = "DIR")]
    pub state: Option<PathBuf>,
    /// Address of /metrics and /status, "" for none (`metrics`).
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<String>,
    /// The control socket (`control_socket`).
    #[arg(long, value_name = "PATH")]
    pub control_socket: Option<PathBuf>,
    /// Data-plane workers, 0 for one per core (`workers`).
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// Data plane: auto, uring or epoll (`io`).
    #[arg(long, value_name = "MODE")]
    pub io: Option<IoMode>,
    /// Log level or directives (`log_level`).
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
}

/// Arguments of `ringseed ctl`.
#[derive(Debug, Args)]
pub struct CtlArgs {
    /// The daemon's control socket [default: $RINGSEED_CONTROL_SOCKET,
    /// /run/ringseed/control.sock if it exists, else the one in the state
    /// directory].
    #[arg(long, value_name = "PATH", env = "RINGSEED_CONTROL_SOCKET")]
    pub socket: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: crate::daemon::control::Request,
}

/// Arguments of `ringseed config`.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: ConfigCommand,
}

/// Commands of `ringseed config`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the default configuration, every key commented.
    Default,
    /// Check a configuration file (with the environment's overrides) and
    /// print the settings it gives.
    Check {
        /// The file.
        file: PathBuf,
    },
}

/// Arguments of `ringseed download`.
#[derive(Debug, Args)]
pub struct DownloadArgs {
    /// A .torrent file or a magnet link.
    #[arg(value_name = "SOURCE")]
    pub source: String,
    /// Directory to download into (the torrent's file or top directory goes
    /// inside it; nothing is ever written outside it).
    #[arg(
        short = 'o',
        long = "output",
        value_name = "DIR",
        env = "RINGSEED_OUTPUT_DIR"
    )]
    pub output: PathBuf,
    /// A peer to connect to, besides those from trackers and `x.pe`; repeat
    /// for more.
    #[arg(
        long = "peer",
        value_name = "ADDR:PORT",
        env = "RINGSEED_PEERS",
        value_delimiter = ','
    )]
    pub peers: Vec<std::net::SocketAddr>,
    /// Go on seeding once the download is complete, in the same process
    /// (no restart, no rehash), until stopped.
    #[arg(long, env = "RINGSEED_SEED")]
    pub seed: bool,
    /// Fetch only the files whose path in the torrent (or file name)
    /// matches this glob pattern, e.g. `*.iso`; repeat for more.
    #[arg(
        long = "only",
        value_name = "PATTERN",
        env = "RINGSEED_ONLY",
        value_delimiter = ','
    )]
    pub only: Vec<String>,
    /// Address and port to listen on for peers; port 0 picks a free one
    /// (announced to trackers).
    #[arg(
        value_name = "ADDR:PORT",
        long,
        default_value = "[::]:0",
        env = "RINGSEED_LISTEN"
    )]
    pub listen: std::net::SocketAddr,
    #[command(flatten)]
    pub plane: PlaneArgs,
    /// Where resume data and torrents fetched from magnet links are kept
    /// [default: $XDG_STATE_HOME/ringseed or ~/.local/state/ringseed].
    #[arg(long, value_name = "DIR", env = "RINGSEED_STATE")]
    pub state: Option<PathBuf>,
    /// Do not announce to trackers (peers come from --peer and `x.pe`).
    #[arg(long, env = "RINGSEED_NO_ANNOUNCE")]
    pub no_announce: bool,
    #[command(flatten)]
    pub dht: DhtArgs,
    #[command(flatten)]
    pub web_seeds: WebSeedArgs,
    /// PEM file of root certificates to trust for HTTPS trackers.
    #[arg(long, value_name = "FILE", env = "RINGSEED_TRACKER_CA")]
    pub tracker_ca: Option<PathBuf>,
    /// Peers we upload to at once while downloading (tit-for-tat); 0 = all.
    #[arg(
        value_name = "N",
        long,
        default_value_t = 8,
        env = "RINGSEED_LEECH_UPLOAD_SLOTS"
    )]
    pub upload_slots: usize,
    /// Upload limit in bytes per second (K/M/G suffixes); 0 = none.
    #[arg(value_name = "RATE", long, default_value = "0", value_parser = parse_rate, env = "RINGSEED_MAX_UPLOAD_RATE")]
    pub max_upload_rate: u64,
    /// How long to try to fetch a magnet link's metadata, in seconds.
    #[arg(
        value_name = "SECONDS",
        long,
        default_value_t = 120,
        env = "RINGSEED_METADATA_TIMEOUT"
    )]
    pub metadata_timeout: u64,
    /// Give up (exit status 1, resume data kept) when no byte of data has
    /// arrived for this many seconds; 0 waits for peers forever, as other
    /// clients do.
    #[arg(
        value_name = "SECONDS",
        long,
        default_value_t = 0,
        env = "RINGSEED_STALL_TIMEOUT"
    )]
    pub stall_timeout: u64,
    #[command(flatten)]
    pub hashing: HashingArgs,
}

/// How `ringseed loadtest`'s peers dial.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LoadEncryption {
    /// Plain BitTorrent.
    Off,
    /// MSE, offering RC4 for the whole stream only.
    Rc4,
    /// MSE, offering plaintext after the handshake only.
    Plaintext,
    /// MSE, offering both (the seeder chooses).
    Both,
}

impl LoadEncryption {
    /// The crypto_provide bits offered, if MSE is used.
    pub fn mse_methods(self) -> Option<u32> {
        use ringseed_engine::proto::mse::{CRYPTO_PLAINTEXT, CRYPTO_RC4};
        match self {
            LoadEncryption::Off => None,
            LoadEncryption::Rc4 => Some(CRYPTO_RC4),
            LoadEncryption::Plaintext => Some(CRYPTO_PLAINTEXT),
            LoadEncryption::Both => Some(CRYPTO_RC4 | CRYPTO_PLAINTEXT),
        }
    }
}

/// What `ringseed loadtest` loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LoadMode {
    /// Simulated peers against a seeder.
    Peers,
    /// UDP announces and scrapes against a tracker.
    Tracker,
    /// DHT `get_peers` queries against one DHT node, from `--peers`
    /// source addresses each keeping `--window` outstanding.
    Dht,
}

/// Arguments of `ringseed loadtest`.
#[derive(Debug, Args)]
pub struct LoadtestArgs {
    /// The seeder (or, with `--mode tracker`, the tracker's UDP address).
    #[arg(long, value_name = "ADDR:PORT", env = "RINGSEED_TARGET")]
    pub target: std::net::SocketAddr,
    /// The torrent the target seeds (for a tracker: its info-hash is
    /// announced instead of random ones).
    #[arg(long, value_name = "FILE", env = "RINGSEED_TORRENT")]
    pub torrent: Option<PathBuf>,
    /// What to load.
    #[arg(long, value_enum, default_value = "peers", env = "RINGSEED_MODE")]
    pub mode: LoadMode,
    /// Simulated peers (each one connection; up to the open-file limit).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 100,
        env = "RINGSEED_PEERS_COUNT"
    )]
    pub peers: usize,
    /// How long to run, in seconds.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 10.0,
        env = "RINGSEED_DURATION"
    )]
    pub duration: f64,
    /// Open the connections evenly over this many seconds.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 0.0,
        env = "RINGSEED_RAMP_UP"
    )]
    pub ramp_up: f64,
    /// Which pieces peers ask for: random (like rarest first), sequential,
    /// hot (everyone wants the same few), idle (connect and wait).
    #[arg(long, default_value = "random", env = "RINGSEED_PATTERN")]
    pub pattern: ringseed_engine::policy::load_pattern::Pattern,
    /// Requests each peer keeps outstanding.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 16,
        env = "RINGSEED_PIPELINE"
    )]
    pub pipeline: usize,
    /// Download rate cap of each peer (K/M/G suffixes); 0 = none.
    #[arg(long, value_name = "RATE", default_value = "0", value_parser = parse_rate, env = "RINGSEED_RATE_PER_PEER")]
    pub rate_per_peer: u64,
    /// Fraction of pieces (0 to 1) fetched whole and checked against the
    /// torrent's hashes; a mismatch makes the exit status 3.
    #[arg(
        long,
        value_name = "FRACTION",
        default_value_t = 0.0,
        env = "RINGSEED_VERIFY"
    )]
    pub verify: f64,
    /// Load threads, one io_uring (or epoll instance) each [default: one
    /// per core].
    #[arg(long, value_name = "N", env = "RINGSEED_THREADS")]
    pub threads: Option<NonZeroUsize>,
    /// The load threads' backend: auto, uring or epoll, as the data plane's.
    #[arg(value_name = "MODE", long, default_value = "auto", env = "RINGSEED_IO")]
    pub io: IoMode,
    /// Cores to pin the load threads to (e.g. `2,3`) [default: with
    /// --target-pid, the cores none of the target's threads may use].
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        env = "RINGSEED_CORES"
    )]
    pub cores: Vec<usize>,
    /// A local target's PID: report its CPU seconds, RSS and CPU per GiB.
    #[arg(long, value_name = "PID", env = "RINGSEED_TARGET_PID")]
    pub target_pid: Option<u32>,
    /// Announce every simulated peer to this tracker (HTTP, HTTPS or UDP)
    /// before it connects, as a real peer would.
    #[arg(long, value_name = "URL", env = "RINGSEED_ANNOUNCE")]
    pub announce: Option<String>,
    /// Connect every peer from 127.0.0.1 instead of its own 127.x.y.z
    /// (only matters for a target on loopback).
    #[arg(long, env = "RINGSEED_SAME_SOURCE")]
    pub same_source: bool,
    /// Peers dial with message stream encryption: rc4 (offer RC4 only, as
    /// Transmission and libtorrent do when set to encrypt everything),
    /// plaintext (offer only an encrypted handshake), both (offer either),
    /// or off (plain BitTorrent).
    #[arg(
        long,
        value_enum,
        default_value = "off",
        env = "RINGSEED_LOAD_ENCRYPTION"
    )]
    pub encryption: LoadEncryption,
    /// Tracker mode: info-hashes to announce at random (without --torrent).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 1000,
        env = "RINGSEED_INFO_HASHES"
    )]
    pub info_hashes: usize,
    /// Tracker mode: requests each thread keeps outstanding; DHT mode:
    /// queries each source keeps outstanding.
    #[arg(long, value_name = "N", default_value_t = 64, env = "RINGSEED_WINDOW")]
    pub window: usize,
    /// Tracker mode: fraction of requests that are scrapes.
    #[arg(
        long,
        value_name = "FRACTION",
        default_value_t = 0.1,
        env = "RINGSEED_SCRAPE_FRACTION"
    )]
    pub scrape_fraction: f64,
    /// Print the final report as JSON on stdout.
    #[arg(long, env = "RINGSEED_JSON")]
    pub json: bool,
}

/// Arguments of `ringseed tracker`.
#[derive(Debug, Args)]
pub struct TrackerArgs {
    /// UDP (BEP 15) address to serve on.
    #[arg(long, value_name = "ADDR:PORT", env = "RINGSEED_TRACKER_UDP")]
    pub udp: Option<std::net::SocketAddr>,
    /// HTTP address to serve `/announce`, `/scrape` and `/stats` on.
    #[arg(long, value_name = "ADDR:PORT", env = "RINGSEED_TRACKER_HTTP")]
    pub http: Option<std::net::SocketAddr>,
    /// Track only the info-hashes in this file (40 hex digits a line, `#`
    /// comments); others get a failure reason.
    #[arg(long, value_name = "FILE", env = "RINGSEED_WHITELIST")]
    pub whitelist: Option<PathBuf>,
    /// Threads per protocol, each with its own socket [default: one per core].
    #[arg(long, value_name = "N", env = "RINGSEED_WORKERS")]
    pub workers: Option<NonZeroUsize>,
    /// The HTTP event loops' backend: auto, uring or epoll (as `seed --io`).
    #[arg(value_name = "MODE", long, default_value = "auto", env = "RINGSEED_IO")]
    pub io: IoMode,
    /// HTTP connections open at most; when all are taken, the oldest is
    /// closed for the newcomer (each has 3 s for its request and reply).
    #[arg(
        long,
        value_name = "N",
        default_value_t = ringseed_engine::io::tracker_server::DEFAULT_MAX_HTTP_CONNECTIONS,
        env = "RINGSEED_TRACKER_MAX_CONNECTIONS"
    )]
    pub max_connections: usize,
    /// Announce interval told to clients, in seconds.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 1800,
        env = "RINGSEED_INTERVAL"
    )]
    pub interval: u64,
}

/// Arguments of `ringseed create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The file or directory to share.
    pub path: PathBuf,
    /// Where to write the .torrent [default: NAME.torrent in the current directory].
    #[arg(short, long, env = "RINGSEED_OUTPUT")]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub trackers: TrackerUrlArgs,
    /// Web seed URL (BEP 19); repeat for several.
    #[arg(
        short,
        long = "web-seed",
        value_name = "URL",
        env = "RINGSEED_WEB_SEEDS",
        value_delimiter = ','
    )]
    pub web_seeds: Vec<String>,
    /// Piece size: `auto` (256 KiB to 16 MiB, at most ~2048 pieces), or bytes
    /// with an optional K/M suffix (powers of 1024), a multiple of 16 KiB.
    #[arg(short = 'l', long, default_value = "auto", env = "RINGSEED_PIECE_SIZE", value_parser = parse_piece_size)]
    pub piece_size: PieceSize,
    /// Mark the torrent private (BEP 27): peers only from its trackers.
    #[arg(short, long, env = "RINGSEED_PRIVATE")]
    pub private: bool,
    /// A comment stored in the torrent.
    #[arg(short, long, env = "RINGSEED_COMMENT")]
    pub comment: Option<String>,
    /// Leave out the creation date, so the same data gives the same file.
    #[arg(long, env = "RINGSEED_NO_DATE")]
    pub no_date: bool,
    /// Overwrite the output file if it exists.
    #[arg(short, long, env = "RINGSEED_FORCE")]
    pub force: bool,
    #[command(flatten)]
    pub hashing: HashingArgs,
}

/// Arguments of `ringseed info`.
#[derive(Debug, Args)]
pub struct InfoArgs {
    /// The .torrent file.
    pub torrent: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long, env = "RINGSEED_JSON")]
    pub json: bool,
}

/// Arguments of `ringseed verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The .torrent file.
    pub torrent: PathBuf,
    /// The data: the downloaded file or directory itself, or the directory
    /// that holds it.
    pub data: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long, env = "RINGSEED_JSON")]
    pub json: bool,
    #[command(flatten)]
    pub hashing: HashingArgs,
}

/// Arguments of `ringseed seed`.
#[derive(Debug, Args)]
pub struct SeedArgs {
    /// What to seed: .torrent files (data under --data or beside the
    /// .torrent), or files and directories (a torrent is made for each and
    /// written under --state).
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Address and port to listen on; `[::]` is IPv4 and IPv6.
    #[arg(
        value_name = "ADDR:PORT",
        long,
        default_value = "[::]:6881",
        env = "RINGSEED_LISTEN"
    )]
    pub listen: std::net::SocketAddr,
    #[command(flatten)]
    pub plane: PlaneArgs,
    /// Where the data of .torrent arguments is: the directory that holds
    /// each torrent's file or top directory.
    #[arg(long, value_name = "DIR", env = "RINGSEED_DATA")]
    pub data: Option<PathBuf>,
    /// Where torrents made for file and directory arguments are written
    /// [default: $XDG_STATE_HOME/ringseed or ~/.local/state/ringseed].
    #[arg(long, value_name = "DIR", env = "RINGSEED_STATE")]
    pub state: Option<PathBuf>,
    /// Seed without checking the data first (a wrong piece is then served
    /// as it is, and peers will discard it).
    #[arg(long, env = "RINGSEED_ASSUME_VALID")]
    pub assume_valid: bool,
    #[command(flatten)]
    pub trackers: TrackerUrlArgs,
    /// Also run a tracker (HTTP and UDP on this address) for the torrents
    /// seeded here, and only for them.
    #[arg(long, value_name = "ADDR:PORT", env = "RINGSEED_RUN_TRACKER")]
    pub run_tracker: Option<std::net::SocketAddr>,
    /// Do not announce to the torrents' trackers (peers must find us
    /// another way, e.g. `x.pe` in a magnet link).
    #[arg(long, env = "RINGSEED_NO_ANNOUNCE")]
    pub no_announce: bool,
    #[command(flatten)]
    pub dht: DhtArgs,
    /// PEM file of root certificates to trust for HTTPS trackers instead of
    /// the built-in web PKI roots (a tracker with its own CA).
    #[arg(long, value_name = "FILE", env = "RINGSEED_TRACKER_CA")]
    pub tracker_ca: Option<PathBuf>,
    /// Peers served at once, for the whole process; 0 = every interested peer.
    #[arg(
        value_name = "N",
        long,
        default_value_t = 0,
        env = "RINGSEED_UPLOAD_SLOTS"
    )]
    pub upload_slots: usize,
    /// Upload limit in bytes per second (K/M/G suffixes, powers of 1024); 0 = none.
    #[arg(value_name = "RATE", long, default_value = "0", value_parser = parse_rate, env = "RINGSEED_MAX_UPLOAD_RATE")]
    pub max_upload_rate: u64,
    /// Connections for the whole process; 0 = the open-file limit less a
    /// quarter (at least 32) kept for files, trackers and sockets. At the
    /// cap, the oldest connection still in its handshake makes room.
    #[arg(
        value_name = "N",
        long,
        default_value_t = 0,
        env = "RINGSEED_MAX_CONNECTIONS"
    )]
    pub max_connections: usize,
    /// Connections per torrent; 0 = no limit.
    #[arg(
        value_name = "N",
        long,
        default_value_t = 0,
        env = "RINGSEED_MAX_CONNECTIONS_PER_TORRENT"
    )]
    pub max_connections_per_torrent: usize,
    /// Connections per peer IP address; 0 = no limit.
    #[arg(
        value_name = "N",
        long,
        default_value_t = 8,
        env = "RINGSEED_MAX_CONNECTIONS_PER_IP"
    )]
    pub max_connections_per_ip: usize,
    #[command(flatten)]
    pub hashing: HashingArgs,
}

/// The data plane's flags, shared by `seed` and `download`.
#[derive(Debug, Args)]
pub struct PlaneArgs {
    /// Data-plane worker threads, each pinned to a core [default: one per core].
    #[arg(value_name = "N", long, env = "RINGSEED_WORKERS")]
    pub workers: Option<NonZeroUsize>,
    /// Data plane: auto (io_uring where this host allows it, else epoll,
    /// with a warning that says why), uring (or fail), or epoll.
    #[arg(value_name = "MODE", long, default_value = "auto", env = "RINGSEED_IO")]
    pub io: IoMode,
    /// Message stream encryption (MSE) with peers: allow (answer plain and
    /// encrypted peers; dial plain, then encrypted if the peer hangs up),
    /// prefer (dial encrypted, then plain), require (encrypted only, both
    /// ways) or off (plain only).
    #[arg(
        value_name = "POLICY",
        long,
        default_value = "allow",
        env = "RINGSEED_ENCRYPTION"
    )]
    pub encryption: Encryption,
    /// With MSE, encrypt the whole stream (RC4) even when the peer would
    /// take plain text after the handshake (which keeps zero-copy sends).
    #[arg(long, env = "RINGSEED_ENCRYPT_PAYLOAD")]
    pub encrypt_payload: bool,
    /// No peer exchange (BEP 11 ut_pex): neither tell peers of other peers
    /// nor dial the peers they tell of. Private torrents never exchange.
    #[arg(long, env = "RINGSEED_NO_PEX")]
    pub no_pex: bool,
}

impl PlaneArgs {
    /// The data plane's settings: these flags, listening on `listen`, the
    /// rest at their defaults.
    pub fn config(&self, listen: std::net::SocketAddr) -> PlaneConfig {
        let defaults = PlaneConfig::default();
        PlaneConfig {
            listen,
            workers: self.workers.map_or(defaults.workers, NonZeroUsize::get),
            io: self.io,
            encryption: self.encryption,
            encrypt_payload: self.encrypt_payload,
            session: SessionConfig {
                pex: !self.no_pex,
                ..defaults.session
            },
            ..defaults
        }
    }
}

/// The DHT flags of `seed` and `download`.
#[derive(Debug, Args)]
pub struct DhtArgs {
    /// Stay out of the DHT (BEP 5): no announces, no lookups, no node.
    #[arg(long, env = "RINGSEED_NO_DHT")]
    pub no_dht: bool,
    /// A DHT bootstrap node; repeat for several, `none` for none [default:
    /// the well-known public routers]. The routing table saved under
    /// --state is tried first.
    #[arg(
        long = "dht-bootstrap",
        value_name = "HOST:PORT",
        env = "RINGSEED_DHT_BOOTSTRAP",
        value_delimiter = ','
    )]
    pub bootstrap: Vec<String>,
}

impl DhtArgs {
    /// The DHT's settings for a process listening on `listen` with its
    /// state in `state`, or `None` with `--no-dht`.
    pub fn config(
        &self,
        listen: std::net::SocketAddr,
        state: &std::path::Path,
    ) -> Option<DhtConfig> {
        if self.no_dht {
            return None;
        }
        let defaults = DhtConfig::default();
        let bootstrap = match self.bootstrap.as_slice() {
            [] => defaults.bootstrap,
            [none] if none == "none" => Vec::new(),
            given => given.to_vec(),
        };
        let bind_v4 = match listen.ip() {
            std::net::IpAddr::V4(v4) => v4,
            std::net::IpAddr::V6(_) => std::net::Ipv4Addr::UNSPECIFIED,
        };
        Some(DhtConfig {
            bootstrap,
            state_dir: Some(state.to_path_buf()),
            bind_v4,
            // An IPv6 node where the listener takes IPv6.
            ipv6: listen.is_ipv6(),
            ..defaults
        })
    }
}

/// The web seed flags of `download`.
#[derive(Debug, Args)]
pub struct WebSeedArgs {
    /// Do not fetch from the torrent's web seeds (BEP 19 `url-list`, magnet
    /// `ws=`): peers only.
    #[arg(long, env = "RINGSEED_NO_WEB_SEEDS")]
    pub no_web_seeds: bool,
    /// PEM file of certificates to trust for HTTPS web seeds, besides the
    /// system's roots (a mirror with its own CA).
    #[arg(long, value_name = "FILE", env = "RINGSEED_WEB_SEED_CA")]
    pub web_seed_ca: Option<PathBuf>,
    /// Connections to one web seed at most.
    #[arg(
        value_name = "N",
        long,
        default_value_t = 2,
        value_parser = clap::value_parser!(u16).range(1..=16),
        env = "RINGSEED_WEB_SEED_CONNECTIONS"
    )]
    pub web_seed_connections: u16,
}

impl WebSeedArgs {
    /// The web seeds' settings, or `None` with `--no-web-seeds`.
    pub fn config(&self) -> anyhow::Result<Option<WebSeedConfig>> {
        use anyhow::Context;
        if self.no_web_seeds {
            return Ok(None);
        }
        let extra_roots_pem = self
            .web_seed_ca
            .as_ref()
            .map(|path| {
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
            })
            .transpose()?;
        Ok(Some(WebSeedConfig {
            per_server: usize::from(self.web_seed_connections),
            extra_roots_pem,
            ..WebSeedConfig::default()
        }))
    }
}

/// Parses a byte rate or size: `0`, `500K`, `100M`, `1G` (powers of 1024).
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let lower = text.trim().to_ascii_lowercase();
    let trimmed = lower
        .trim_end_matches("/s")
        .trim_end_matches("ib")
        .trim_end_matches('b');
    let (digits, shift) = match trimmed.chars().last() {
        Some('k') => (&trimmed[..trimmed.len() - 1], 10),
        Some('m') => (&trimmed[..trimmed.len() - 1], 20),
        Some('g') => (&trimmed[..trimmed.len() - 1], 30),
        _ => (trimmed, 0),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| format!("{text:?} is not a rate like 0, 500K or 100M"))
}

/// Trackers to put in torrents that ringseed makes.
#[derive(Debug, Args)]
pub struct TrackerUrlArgs {
    /// Tracker announce URL to write into the torrents ringseed makes; repeat
    /// for backups (each becomes its own tier).
    #[arg(
        short = 't',
        long = "tracker",
        value_name = "URL",
        env = "RINGSEED_TRACKERS",
        value_delimiter = ','
    )]
    pub urls: Vec<String>,
}

impl TrackerUrlArgs {
    /// One tier per URL, in the order given.
    pub fn tiers(&self) -> Vec<Vec<String>> {
        self.urls.iter().map(|u| vec![u.clone()]).collect()
    }
}

/// Options shared by the commands that hash data.
#[derive(Debug, Args)]
pub struct HashingArgs {
    /// Hashing threads [default: one per core].
    #[arg(value_name = "N", long, env = "RINGSEED_THREADS")]
    pub threads: Option<NonZeroUsize>,
}

/// `--piece-size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceSize {
    /// Chosen from the total size.
    Auto,
    /// Exactly this many bytes.
    Bytes(u64),
}

fn parse_piece_size(text: &str) -> Result<PieceSize, String> {
    if text.eq_ignore_ascii_case("auto") {
        return Ok(PieceSize::Auto);
    }
    let lower = text.to_ascii_lowercase();
    let trimmed = lower.trim_end_matches("ib").trim_end_matches('b');
    let (digits, multiplier) = match trimmed.char_indices().last() {
        Some((i, 'k')) => (&trimmed[..i], 1u64 << 10),
        Some((i, 'm')) => (&trimmed[..i], 1 << 20),
        _ => (trimmed, 1),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not `auto` or a size like 262144, 256K or 4M"))?;
    let bytes = n
        .checked_mul(multiplier)
        .filter(|b| *b > 0 && b % (16 << 10) == 0)
        .ok_or_else(|| format!("{text:?} is not a positive multiple of 16 KiB"))?;
    Ok(PieceSize::Bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("0"), Ok(0));
        assert_eq!(parse_rate("500K"), Ok(500 << 10));
        assert_eq!(parse_rate("100MiB/s"), Ok(100 << 20));
        assert_eq!(parse_rate("1g"), Ok(1 << 30));
        assert!(parse_rate("fast").is_err());
    }

    #[test]
    fn piece_sizes() {
        assert_eq!(parse_piece_size("auto"), Ok(PieceSize::Auto));
        assert_eq!(parse_piece_size("262144"), Ok(PieceSize::Bytes(262144)));
        assert_eq!(parse_piece_size("256K"), Ok(PieceSize::Bytes(262144)));
        assert_eq!(parse_piece_size("4MiB"), Ok(PieceSize::Bytes(4 << 20)));
        assert_eq!(parse_piece_size("1m"), Ok(PieceSize::Bytes(1 << 20)));
        assert!(parse_piece_size("1000").is_err());
        assert!(parse_piece_size("0").is_err());
        assert!(parse_piece_size("lots").is_err());
    }
}
