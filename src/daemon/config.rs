//! The daemon's configuration: a TOML file, overlaid by `RINGSEED_*`
//! environment variables, overlaid by flags. Unknown keys are errors, and
//! every error names where the bad value came from (file, key, variable).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use serde::{Deserialize, Deserializer, Serialize};

use ringseed_engine::io::plane::transport::Encryption;
use ringseed_engine::io::plane::IoMode;

use crate::cli::{parse_rate, DaemonArgs};

/// The commented default configuration, as `ringseed config default`
/// prints it. A test parses it, so it stays valid and complete.
pub const DEFAULT_CONFIG: &str = include_str!("default.toml");

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// BitTorrent listen address.
    pub listen: SocketAddr,
    /// Data-plane workers; 0 is one per core.
    pub workers: usize,
    /// The data plane: `auto` (io_uring where allowed, else epoll),
    /// `uring` or `epoll`.
    pub io: String,
    /// Message stream encryption (MSE): `off`, `allow`, `prefer` or
    /// `require`.
    pub encryption: String,
    /// With MSE, encrypt the whole stream (RC4), never only the handshake.
    pub encrypt_payload: bool,
    /// Peer exchange (BEP 11) for public torrents.
    pub pex: bool,
    /// Where resume data and made torrents live; empty: `$STATE_DIRECTORY`,
    /// else the user's state directory.
    pub state_dir: PathBuf,
    /// Prometheus `/metrics` and JSON `/status` address; empty: off.
    pub metrics: String,
    /// The control socket of `ringseed ctl`; empty:
    /// `$RUNTIME_DIRECTORY/control.sock`, else `STATE/control.sock`.
    pub control_socket: PathBuf,
    /// Octal file mode of the control socket: who may control the daemon.
    pub control_socket_mode: String,
    /// `error`, `warn`, `info`, `debug` or `trace`, or per-module
    /// directives such as `info,ringseed::daemon=debug`.
    pub log_level: String,
    /// A full rescan of every directory this often (inotify catches changes
    /// at once; the rescan is the safety net).
    pub rescan_secs: u64,
    /// A new data file must be unchanged this long before a torrent is made
    /// of it (it may still be being copied).
    pub settle_secs: u64,
    /// SIGTERM: how long trackers get to hear `stopped` before we exit.
    pub stop_timeout_secs: u64,
    /// Hashing threads for checks and new torrents; 0 is one per core.
    pub verify_threads: usize,
    /// Announce to the torrents' trackers.
    pub announce: bool,
    /// Limits, applied live on reload.
    pub limits: Limits,
    /// The built-in tracker.
    pub tracker: Tracker,
    /// The mainline DHT.
    pub dht: Dht,
    /// Directories of data files to make torrents of.
    pub data_dir: Vec<DataDir>,
    /// Directories of .torrent files whose data is found by name.
    pub torrent_dir: Vec<TorrentDir>,
}

/// Limits of the data plane.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Bytes per second for the whole process (K/M/G suffixes); 0 is none.
    #[serde(deserialize_with = "rate")]
    pub max_upload_rate: u64,
    /// Peers served at once; 0 is every interested peer.
    pub upload_slots: usize,
    /// Connections in all; 0 is no limit.
    pub max_connections: usize,
    /// Connections per torrent; 0 is no limit.
    pub max_connections_per_torrent: usize,
    /// Connections per peer IP address; 0 is no limit.
    pub max_connections_per_ip: usize,
}

/// The built-in tracker.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Tracker {
    /// UDP and HTTP address of the tracker; empty: no tracker.
    pub listen: String,
}

/// The mainline DHT (BEP 5).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Dht {
    /// Join it; applied live on reload.
    pub enabled: bool,
    /// UDP port of the DHT nodes; 0 is the BitTorrent port.
    pub port: u16,
    /// Bootstrap nodes (`HOST:PORT`); a string is a comma-separated list,
    /// and "none" is none.
    #[serde(deserialize_with = "node_list")]
    pub bootstrap: Vec<String>,
    /// BEP 43: query only, answer nothing.
    pub read_only: bool,
}

impl Default for Dht {
    fn default() -> Self {
        Dht {
            enabled: true,
            port: 0,
            bootstrap: ringseed_engine::io::dht::DEFAULT_BOOTSTRAP
                .iter()
                .map(|s| s.to_string())
                .collect(),
            read_only: false,
        }
    }
}

/// A list of `HOST:PORT`s, or one string of them separated by commas
/// (`RINGSEED_DHT_BOOTSTRAP=a:1,b:2`); "none" is the empty list.
fn node_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        List(Vec<String>),
        Text(String),
    }
    Ok(match Raw::deserialize(d)? {
        Raw::List(list) => list,
        Raw::Text(t) if t.trim() == "none" => Vec::new(),
        Raw::Text(t) => t
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
    })
}

/// A directory of data: each file or directory in it becomes a torrent.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataDir {
    /// The directory.
    pub path: PathBuf,
    /// Where the .torrent files and `magnets.txt` are written; empty:
    /// `STATE/published`.
    pub publish: PathBuf,
    /// Tracker URLs put in the torrents, one tier each.
    pub trackers: Vec<String>,
    /// BEP 19 web seeds put in the torrents (e.g. the mirror's HTTP URL of
    /// the directory).
    pub web_seeds: Vec<String>,
    /// The BEP 27 private flag.
    pub private: bool,
    /// Piece size in bytes (K/M suffixes); 0 picks one by size.
    #[serde(deserialize_with = "rate")]
    pub piece_size: u64,
}

/// A directory of .torrent files (as distributions publish them).
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TorrentDir {
    /// The directory.
    pub path: PathBuf,
    /// Where their data is: each torrent's file (or top directory) is
    /// looked for by name in these, in order; empty: `path` itself.
    pub data: Vec<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "[::]:6881".parse().expect("a valid address"),
            workers: 0,
            io: "auto".into(),
            encryption: "allow".into(),
            encrypt_payload: false,
            pex: true,
            state_dir: PathBuf::new(),
            metrics: "127.0.0.1:9881".into(),
            control_socket: PathBuf::new(),
            control_socket_mode: "0660".into(),
            log_level: "info".into(),
            rescan_secs: 60,
            settle_secs: 2,
            stop_timeout_secs: 20,
            verify_threads: 0,
            announce: true,
            limits: Limits::default(),
            tracker: Tracker::default(),
            dht: Dht::default(),
            data_dir: Vec::new(),
            torrent_dir: Vec::new(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_upload_rate: 0,
            upload_slots: 0,
            max_connections: 0,
            max_connections_per_torrent: 0,
            max_connections_per_ip: 8,
        }
    }
}

/// A byte count or rate: an integer, or a string such as `"100M"`.
fn rate<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Int(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Int(n) => Ok(n),
        Raw::Text(t) => parse_rate(&t).map_err(serde::de::Error::custom),
    }
}

impl Config {
    /// Reads the configuration: `file` (if any), then the environment, then
    /// the flags of `args`.
    pub fn load(args: &DaemonArgs) -> anyhow::Result<Self> {
        let mut table = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read the config file {}", path.display()))?;
                let table: toml::Table =
                    toml::from_str(&text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
                // Type and key errors here carry the file's line and column.
                Config::from_table(table.clone())
                    .map_err(|e| anyhow!("{}: {e}", path.display()))?;
                table
            }
            None => toml::Table::new(),
        };
        overlay_env(&mut table, std::env::vars())?;
        let mut config = Config::from_table(table)?;
        config.apply_flags(args);
        config.validate()?;
        Ok(config)
    }

    fn from_table(table: toml::Table) -> Result<Self, toml::de::Error> {
        toml::Value::Table(table).try_into()
    }

    fn apply_flags(&mut self, args: &DaemonArgs) {
        if let Some(listen) = args.listen {
            self.listen = listen;
        }
        if let Some(state) = &args.state {
            self.state_dir = state.clone();
        }
        if let Some(metrics) = &args.metrics {
            self.metrics = metrics.clone();
        }
        if let Some(socket) = &args.control_socket {
            self.control_socket = socket.clone();
        }
        if let Some(workers) = args.workers {
            self.workers = workers;
        }
        if let Some(io) = args.io {
            self.io = io.to_string();
        }
        if let Some(level) = &args.log_level {
            self.log_level = level.clone();
        }
        for dir in &args.watch {
            if !self.data_dir.iter().any(|d| &d.path == dir) {
                self.data_dir.push(DataDir {
                    path: dir.clone(),
                    ..DataDir::default()
                });
            }
        }
        for dir in &args.watch_torrents {
            if !self.torrent_dir.iter().any(|d| &d.path == dir) {
                self.torrent_dir.push(TorrentDir {
                    path: dir.clone(),
                    ..TorrentDir::default()
                });
            }
        }
    }

    /// The data plane asked for.
    pub fn io_mode(&self) -> anyhow::Result<IoMode> {
        self.io.parse().map_err(|e| anyhow!("key `io`: {e}"))
    }

    /// The encryption policy asked for.
    pub fn encryption_policy(&self) -> anyhow::Result<Encryption> {
        self.encryption
            .parse()
            .map_err(|e| anyhow!("key `encryption`: {e}"))
    }

    /// Checks what serde cannot: values that must parse or be non-empty.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !self.metrics.is_empty() {
            self.metrics_addr()?;
        }
        if !self.tracker.listen.is_empty() {
            self.tracker_addr()?;
        }
        self.socket_mode()?;
        self.io_mode()?;
        self.encryption_policy()?;
        crate::logging::parse_filter(&self.log_level)
            .map_err(|e| anyhow!("key `log_level`: {:?}: {e}", self.log_level))?;
        for (i, d) in self.data_dir.iter().enumerate() {
            if d.path.as_os_str().is_empty() {
                anyhow::bail!("data_dir[{i}]: key `path` is missing");
            }
            let p = d.piece_size;
            if p != 0 && (p < 16 << 10 || !p.is_power_of_two()) {
                anyhow::bail!(
                    "data_dir[{i}]: `piece_size` {p} is not a power of two of at least 16 KiB"
                );
            }
            // Its magnets.txt would become a source, and change with it.
            if self.publish_dir(d) == d.path {
                anyhow::bail!(
                    "data_dir[{i}]: `publish` is the data directory {} itself; use another",
                    d.path.display()
                );
            }
        }
        for (i, d) in self.torrent_dir.iter().enumerate() {
            if d.path.as_os_str().is_empty() {
                anyhow::bail!("torrent_dir[{i}]: key `path` is missing");
            }
        }
        Ok(())
    }

    /// The metrics address, if metrics are on.
    pub fn metrics_addr(&self) -> anyhow::Result<Option<SocketAddr>> {
        if self.metrics.is_empty() {
            return Ok(None);
        }
        self.metrics
            .parse()
            .map(Some)
            .map_err(|e| anyhow!("key `metrics`: {:?} is not an ADDR:PORT: {e}", self.metrics))
    }

    /// The built-in tracker's address, if it is on.
    pub fn tracker_addr(&self) -> anyhow::Result<Option<SocketAddr>> {
        if self.tracker.listen.is_empty() {
            return Ok(None);
        }
        self.tracker.listen.parse().map(Some).map_err(|e| {
            anyhow!(
                "key `tracker.listen`: {:?} is not an ADDR:PORT: {e}",
                self.tracker.listen
            )
        })
    }

    /// The control socket's file mode.
    pub fn socket_mode(&self) -> anyhow::Result<u32> {
        u32::from_str_radix(self.control_socket_mode.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| {
                anyhow!(
                    "key `control_socket_mode`: {:?} is not an octal file mode like \"0660\"",
                    self.control_socket_mode
                )
            })
    }

    /// The state directory: the key, else systemd's `$STATE_DIRECTORY`,
    /// else the user's.
    pub fn state_dir(&self) -> PathBuf {
        if !self.state_dir.as_os_str().is_empty() {
            return self.state_dir.clone();
        }
        if let Some(dir) = std::env::var_os("STATE_DIRECTORY").filter(|v| !v.is_empty()) {
            // systemd may list several, separated by colons: the first is ours.
            let first = dir
                .to_string_lossy()
                .split(':')
                .next()
                .unwrap_or("")
                .to_owned();
            return PathBuf::from(first);
        }
        crate::setup::state_dir(None)
    }

    /// The control socket path (see [`Config::control_socket`]).
    pub fn control_socket(&self) -> PathBuf {
        default_control_socket(&self.control_socket, &self.state_dir())
    }

    /// Where the torrents of data directory `d` are published.
    pub fn publish_dir(&self, d: &DataDir) -> PathBuf {
        if d.publish.as_os_str().is_empty() {
            self.state_dir().join("published")
        } else {
            d.publish.clone()
        }
    }
}

/// The control socket: `configured`, else `$RUNTIME_DIRECTORY/control.sock`,
/// else `state/control.sock`.
pub fn default_control_socket(configured: &Path, state: &Path) -> PathBuf {
    if !configured.as_os_str().is_empty() {
        return configured.to_path_buf();
    }
    match std::env::var_os("RUNTIME_DIRECTORY").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir.to_string_lossy().split(':').next().unwrap_or(""))
            .join("control.sock"),
        None => state.join("control.sock"),
    }
}

/// Sets every scalar key of the configuration that has a `RINGSEED_<KEY>`
/// variable (`RINGSEED_LIMITS_MAX_UPLOAD_RATE` for `limits.max_upload_rate`;
/// `RINGSEED_WATCH` adds data directories, separated by colons). Values are
/// TOML (`100`, `true`, `"x"`); anything that is not is taken as a string.
fn overlay_env(
    table: &mut toml::Table,
    vars: impl Iterator<Item = (String, String)>,
) -> anyhow::Result<()> {
    let defaults: toml::Table = toml::from_str(DEFAULT_CONFIG).expect("the default config parses");
    let mut keys = Vec::new();
    scalar_keys(&defaults, "", &mut keys);
    for (name, value) in vars {
        let Some(rest) = name.strip_prefix("RINGSEED_") else {
            continue;
        };
        if rest == "WATCH" || rest == "WATCH_TORRENTS" {
            let (section, key) = if rest == "WATCH" {
                ("data_dir", "path")
            } else {
                ("torrent_dir", "path")
            };
            let list = table
                .entry(section)
                .or_insert_with(|| toml::Value::Array(Vec::new()));
            if let toml::Value::Array(list) = list {
                for dir in value.split(':').filter(|d| !d.is_empty()) {
                    let mut entry = toml::Table::new();
                    entry.insert(key.into(), toml::Value::String(dir.into()));
                    list.push(toml::Value::Table(entry));
                }
            }
            continue;
        }
        let Some(path) = keys
            .iter()
            .find(|k| k.replace('.', "_").to_ascii_uppercase() == rest)
        else {
            continue;
        };
        let parsed = format!("v = {value}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.clone()));
        let mut target = &mut *table;
        let mut parts: Vec<&str> = path.split('.').collect();
        let last = parts.pop().expect("a key has a name");
        for part in parts {
            target = target
                .entry(part)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .ok_or_else(|| anyhow!("{name}: `{part}` is not a table in the config"))?;
        }
        target.insert(last.into(), parsed);
        Config::from_table(table.clone())
            .map_err(|e| anyhow!("environment variable {name}={value:?}: {e}"))?;
    }
    Ok(())
}

/// The dotted names of every scalar key of `table` (not arrays of tables).
fn scalar_keys(table: &toml::Table, prefix: &str, out: &mut Vec<String>) {
    for (key, value) in table {
        let path = format!("{prefix}{key}");
        match value {
            toml::Value::Table(t) => scalar_keys(t, &format!("{path}."), out),
            toml::Value::Array(a) if a.iter().any(|v| v.is_table()) => {}
            _ => out.push(path),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_config_parses_to_the_defaults() {
        let table: toml::Table = toml::from_str(DEFAULT_CONFIG).unwrap();
        let parsed = Config::from_table(table).unwrap();
        assert_eq!(
            Config {
                data_dir: Vec::new(),
                torrent_dir: Vec::new(),
                ..parsed.clone()
            },
            Config::default()
        );
        // The examples it carries are valid entries.
        assert!(parsed.validate().is_ok());
    }

    #[test]
    fn every_key_is_in_the_default_config() {
        // Each field of Config shows up in the commented file, so the file
        // documents every key.
        for key in [
            "listen",
            "workers",
            "io",
            "encryption",
            "encrypt_payload",
            "pex",
            "state_dir",
            "metrics",
            "control_socket",
            "control_socket_mode",
            "log_level",
            "rescan_secs",
            "settle_secs",
            "stop_timeout_secs",
            "verify_threads",
            "announce",
            "max_upload_rate",
            "upload_slots",
            "max_connections",
            "max_connections_per_torrent",
            "max_connections_per_ip",
            "[tracker]",
            "[dht]",
            "enabled",
            "bootstrap",
            "read_only",
            "[[data_dir]]",
            "publish",
            "trackers",
            "web_seeds",
            "private",
            "piece_size",
            "[[torrent_dir]]",
            "data",
        ] {
            assert!(DEFAULT_CONFIG.contains(key), "{key} is not documented");
        }
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let table: toml::Table = toml::from_str("listn = \"[::]:1\"").unwrap();
        let err = Config::from_table(table).unwrap_err().to_string();
        assert!(err.contains("listn"), "{err}");
        let table: toml::Table = toml::from_str("[limits]\nmax_upload_rate = \"fast\"").unwrap();
        let err = Config::from_table(table).unwrap_err().to_string();
        assert!(err.contains("fast"), "{err}");
    }

    #[test]
    fn environment_overrides_keys_and_adds_watch_dirs() {
        let mut table: toml::Table = toml::from_str("workers = 3").unwrap();
        let vars = [
            ("RINGSEED_WORKERS", "5"),
            ("RINGSEED_LIMITS_MAX_UPLOAD_RATE", "10M"),
            ("RINGSEED_METRICS", "127.0.0.1:1"),
            ("RINGSEED_WATCH", "/a:/b"),
            ("HOME", "/root"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        overlay_env(&mut table, vars.into_iter()).unwrap();
        let config = Config::from_table(table).unwrap();
        assert_eq!(config.workers, 5);
        assert_eq!(config.limits.max_upload_rate, 10 << 20);
        assert_eq!(config.metrics, "127.0.0.1:1");
        let dirs: Vec<_> = config.data_dir.iter().map(|d| d.path.clone()).collect();
        assert_eq!(dirs, [PathBuf::from("/a"), PathBuf::from("/b")]);

        let mut table = toml::Table::new();
        let bad = [("RINGSEED_WORKERS".to_owned(), "many".to_owned())];
        let err = overlay_env(&mut table, bad.into_iter())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("RINGSEED_WORKERS") && err.contains("many"),
            "{err}"
        );
    }

    #[test]
    fn bad_modes_and_addresses_are_errors() {
        let config = Config {
            control_socket_mode: "rw".into(),
            ..Config::default()
        };
        assert!(config.validate().unwrap_err().to_string().contains("rw"));
        let config = Config {
            metrics: "localhost".into(),
            ..Config::default()
        };
        assert!(config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("localhost"));
    }
}
