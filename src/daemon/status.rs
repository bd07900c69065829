//! The daemon's figures at one moment, as JSON (`/status`, `ringseed ctl
//! status --json`) and as Prometheus text (`/metrics`): one structure, two
//! renderings, so they never disagree.

use std::fmt::Write;

use ringseed_engine::stats::StatsSnapshot;
use serde::{Deserialize, Serialize};

/// Everything the daemon reports.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Status {
    /// ringseed's version.
    pub version: String,
    /// Seconds since the daemon started.
    pub uptime_secs: u64,
    /// The BitTorrent listen address.
    pub listen: String,
    /// The data plane that runs: `uring` or `epoll`.
    pub data_plane: String,
    /// Why `io = "auto"` runs epoll, if it does.
    pub data_plane_fallback: Option<String>,
    /// Sums over the workers.
    pub totals: Figures,
    /// Per worker.
    pub workers: Vec<WorkerStatus>,
    /// Per source.
    pub torrents: Vec<TorrentStatus>,
    /// Per tracker of each torrent.
    pub trackers: Vec<TrackerStatus>,
    /// Directories that cannot be read, with why.
    pub directory_errors: Vec<DirectoryError>,
    /// Bytes hashed to check or make torrents since the start.
    pub bytes_hashed: u64,
    /// Pieces that did not match their hash in checks since the start.
    pub hash_failures: u64,
    /// The DHT, when it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dht: Option<DhtFigures>,
}

/// The DHT's state and counters.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DhtFigures {
    /// UDP port of its nodes.
    pub port: u16,
    /// Torrents announced.
    pub announcing: usize,
    /// Our IPv4 address as the network reports it.
    pub external_v4: Option<String>,
    /// Per node: `ipv4`, `ipv6`.
    pub nodes: Vec<DhtNodeFigures>,
}

/// One DHT node (one address family).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DhtNodeFigures {
    /// `ipv4` or `ipv6`.
    pub family: String,
    /// Nodes in its routing table.
    pub routing_nodes: u64,
    /// Queries received, by type.
    pub queries_in: std::collections::BTreeMap<String, u64>,
    /// Queries sent, by type.
    pub queries_out: std::collections::BTreeMap<String, u64>,
    /// Replies received.
    pub replies_in: u64,
    /// Replies sent.
    pub replies_out: u64,
    /// Error messages received and sent.
    pub errors: u64,
    /// Queries that timed out.
    pub timeouts: u64,
    /// Lookups started.
    pub lookups: u64,
    /// Announces completed.
    pub announces: u64,
    /// Peers found by lookups.
    pub peers_found: u64,
    /// Peers stored for others now.
    pub stored_peers: u64,
    /// Torrents with peers stored for others now.
    pub stored_torrents: u64,
    /// Datagrams dropped: malformed, oversized or from an unexpected source.
    pub dropped: u64,
    /// Queries not answered for the source's rate limit.
    pub rate_limited: u64,
}

impl DhtNodeFigures {
    /// The figures of one node's counters.
    pub fn of(family: &str, s: &ringseed_engine::policy::dht::DhtStats) -> Self {
        let map = |pairs: &[(&str, u64)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect::<std::collections::BTreeMap<_, _>>()
        };
        DhtNodeFigures {
            family: family.into(),
            routing_nodes: s.routing_nodes,
            queries_in: map(&[
                ("ping", s.queries_in_ping),
                ("find_node", s.queries_in_find_node),
                ("get_peers", s.queries_in_get_peers),
                ("announce_peer", s.queries_in_announce_peer),
                ("sample_infohashes", s.queries_in_sample_infohashes),
                ("other", s.queries_in_other),
            ]),
            queries_out: map(&[
                ("ping", s.queries_out_ping),
                ("find_node", s.queries_out_find_node),
                ("get_peers", s.queries_out_get_peers),
                ("announce_peer", s.queries_out_announce_peer),
            ]),
            replies_in: s.replies_in,
            replies_out: s.replies_out,
            errors: s.errors_in + s.errors_out,
            timeouts: s.timeouts,
            lookups: s.lookups_started,
            announces: s.announces_done,
            peers_found: s.peers_found,
            stored_peers: s.stored_peers,
            stored_torrents: s.stored_torrents,
            dropped: s.dropped_malformed + s.dropped_oversized + s.dropped_wrong_source,
            rate_limited: s.rate_limited,
        }
    }
}

/// A data-plane worker.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkerStatus {
    /// Its index (and core, when pinned).
    pub index: usize,
    /// Milliseconds since it last ran its 100 ms tick.
    pub heartbeat_age_ms: u64,
    /// Its counters.
    pub figures: Figures,
}

/// One source: a torrent or what stops it from being one.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TorrentStatus {
    /// The torrent's name (the file name until it has a torrent).
    pub name: String,
    /// The .torrent file or data it comes from.
    pub source: String,
    /// `waiting`, `queued`, `checking`, `seeding` or `failed`.
    pub state: String,
    /// The info-hash, once known.
    pub info_hash: Option<String>,
    /// Total size, once known.
    pub size: Option<u64>,
    /// While checking: the fraction done, 0 to 1.
    pub progress: Option<f64>,
    /// Why it waits or failed.
    pub reason: Option<String>,
    /// What is worth attention short of failing (a seeded file renamed over
    /// or deleted: the old data is still served until it is re-added).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
    /// The magnet link, once known.
    pub magnet: Option<String>,
    /// Its counters.
    pub figures: Figures,
}

/// A tracker of a torrent.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TrackerStatus {
    /// The torrent.
    pub info_hash: String,
    /// The announce URL.
    pub url: String,
    /// Announces it answered.
    pub successes: u64,
    /// Announces that failed.
    pub failures: u64,
    /// The last error, if the last announce failed.
    pub last_error: Option<String>,
}

/// A directory that cannot be read.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DirectoryError {
    /// The directory.
    pub path: String,
    /// Why.
    pub error: String,
}

/// Counters of the data plane, by name (see `ringseed_engine::stats`).
pub type Figures = std::collections::BTreeMap<String, u64>;

/// The counters of `snapshot` by name.
pub fn figures(snapshot: &StatsSnapshot) -> Figures {
    snapshot
        .fields()
        .into_iter()
        .map(|f| (f.name.to_owned(), f.value))
        .collect()
}

/// Whether a counter is a gauge (a level) rather than a running total.
fn is_gauge(name: &str) -> bool {
    StatsSnapshot::default()
        .fields()
        .iter()
        .any(|f| f.name == name && f.gauge)
}

fn help(name: &str) -> &'static str {
    StatsSnapshot::default()
        .fields()
        .into_iter()
        .find(|f| f.name == name)
        .map_or("", |f| f.help)
}

/// Escapes a Prometheus label value.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// One metric family: its `# HELP`/`# TYPE` lines, then its samples.
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}

impl Status {
    /// The Prometheus text exposition (version 0.0.4).
    pub fn to_prometheus(&self) -> String {
        let mut out = String::new();
        let names: Vec<String> = self.totals.keys().cloned().collect();
        for name in &names {
            let gauge = is_gauge(name);
            let (kind, suffix) = if gauge {
                ("gauge", "")
            } else {
                ("counter", "_total")
            };
            let total = self.totals.get(name).copied().unwrap_or(0) as f64;
            family(
                &mut out,
                &format!("ringseed_{name}{suffix}"),
                kind,
                help(name),
                &[(String::new(), total)],
            );
            let per_worker: Vec<(String, f64)> = self
                .workers
                .iter()
                .map(|w| {
                    (
                        format!("worker=\"{}\"", w.index),
                        w.figures.get(name).copied().unwrap_or(0) as f64,
                    )
                })
                .collect();
            family(
                &mut out,
                &format!("ringseed_worker_{name}{suffix}"),
                kind,
                &format!("{} Per worker.", help(name)),
                &per_worker,
            );
            let per_torrent: Vec<(String, f64)> = self
                .torrents
                .iter()
                .filter_map(|t| {
                    let hash = t.info_hash.as_ref()?;
                    Some((
                        format!("info_hash=\"{hash}\",name=\"{}\"", label(&t.name)),
                        t.figures.get(name).copied().unwrap_or(0) as f64,
                    ))
                })
                .collect();
            family(
                &mut out,
                &format!("ringseed_torrent_{name}{suffix}"),
                kind,
                &format!("{} Per torrent.", help(name)),
                &per_torrent,
            );
        }
        let states = ["waiting", "queued", "checking", "seeding", "failed"].map(|s| {
            let n = self.torrents.iter().filter(|t| t.state == s).count();
            (format!("state=\"{s}\""), n as f64)
        });
        family(
            &mut out,
            "ringseed_torrents",
            "gauge",
            "Sources by state.",
            &states,
        );
        let ages: Vec<(String, f64)> = self
            .workers
            .iter()
            .map(|w| {
                (
                    format!("worker=\"{}\"", w.index),
                    w.heartbeat_age_ms as f64 / 1000.0,
                )
            })
            .collect();
        family(
            &mut out,
            "ringseed_worker_heartbeat_age_seconds",
            "gauge",
            "Time since the worker last ran its tick (a stuck worker grows it).",
            &ages,
        );
        let mut announces = Vec::new();
        for t in &self.trackers {
            let base = format!("info_hash=\"{}\",url=\"{}\"", t.info_hash, label(&t.url));
            announces.push((format!("{base},result=\"ok\""), t.successes as f64));
            announces.push((format!("{base},result=\"error\""), t.failures as f64));
        }
        family(
            &mut out,
            "ringseed_tracker_announces_total",
            "counter",
            "Announces by tracker and result.",
            &announces,
        );
        family(
            &mut out,
            "ringseed_bytes_hashed_total",
            "counter",
            "Bytes hashed to check data or make torrents.",
            &[(String::new(), self.bytes_hashed as f64)],
        );
        family(
            &mut out,
            "ringseed_hash_failures_total",
            "counter",
            "Pieces that did not match their hash when checked.",
            &[(String::new(), self.hash_failures as f64)],
        );
        family(
            &mut out,
            "ringseed_directory_errors",
            "gauge",
            "Watched directories that cannot be read.",
            &[(String::new(), self.directory_errors.len() as f64)],
        );
        let planes: Vec<(String, f64)> = ["uring", "epoll"]
            .iter()
            .map(|p| {
                (
                    format!("plane=\"{p}\""),
                    f64::from(u8::from(self.data_plane == *p)),
                )
            })
            .collect();
        family(
            &mut out,
            "ringseed_data_plane",
            "gauge",
            "The data plane that runs (1) and the one that does not (0).",
            &planes,
        );
        if let Some(dht) = &self.dht {
            dht.metrics(&mut out);
        }
        family(
            &mut out,
            "ringseed_uptime_seconds",
            "gauge",
            "Seconds since the daemon started.",
            &[(String::new(), self.uptime_secs as f64)],
        );
        out
    }
}

impl DhtFigures {
    /// The `ringseed_dht_*` families.
    fn metrics(&self, out: &mut String) {
        let per_node = |f: &dyn Fn(&DhtNodeFigures) -> u64| -> Vec<(String, f64)> {
            self.nodes
                .iter()
                .map(|n| (format!("family=\"{}\"", n.family), f(n) as f64))
                .collect()
        };
        let by_type = |f: &dyn Fn(&DhtNodeFigures) -> &std::collections::BTreeMap<String, u64>| {
            let mut samples = Vec::new();
            for n in &self.nodes {
                for (kind, count) in f(n) {
                    samples.push((
                        format!("family=\"{}\",type=\"{kind}\"", n.family),
                        *count as f64,
                    ));
                }
            }
            samples
        };
        family(
            out,
            "ringseed_dht_nodes",
            "gauge",
            "Nodes in the DHT routing table.",
            &per_node(&|n| n.routing_nodes),
        );
        family(
            out,
            "ringseed_dht_queries_in_total",
            "counter",
            "DHT queries received, by type.",
            &by_type(&|n| &n.queries_in),
        );
        family(
            out,
            "ringseed_dht_queries_out_total",
            "counter",
            "DHT queries sent, by type.",
            &by_type(&|n| &n.queries_out),
        );
        type Field = fn(&DhtNodeFigures) -> u64;
        let counters: [(&str, &str, Field); 9] = [
            ("replies_in_total", "DHT replies received.", |n| {
                n.replies_in
            }),
            ("replies_out_total", "DHT replies sent.", |n| n.replies_out),
            (
                "errors_total",
                "DHT error messages received and sent.",
                |n| n.errors,
            ),
            ("timeouts_total", "DHT queries that timed out.", |n| {
                n.timeouts
            }),
            ("lookups_total", "DHT lookups started.", |n| n.lookups),
            ("announces_total", "DHT announces completed.", |n| {
                n.announces
            }),
            ("peers_found_total", "Peers found by DHT lookups.", |n| {
                n.peers_found
            }),
            (
                "dropped_total",
                "DHT datagrams dropped (malformed, oversized, unexpected source).",
                |n| n.dropped,
            ),
            (
                "rate_limited_total",
                "DHT queries refused for their source's rate.",
                |n| n.rate_limited,
            ),
        ];
        for (name, help, f) in counters {
            family(
                out,
                &format!("ringseed_dht_{name}"),
                "counter",
                help,
                &per_node(&f),
            );
        }
        family(
            out,
            "ringseed_dht_stored_peers",
            "gauge",
            "Peers the DHT stores for others.",
            &per_node(&|n| n.stored_peers),
        );
        family(
            out,
            "ringseed_dht_stored_torrents",
            "gauge",
            "Torrents the DHT stores peers of for others.",
            &per_node(&|n| n.stored_torrents),
        );
        family(
            out,
            "ringseed_dht_announcing",
            "gauge",
            "Torrents this node announces.",
            &[(String::new(), self.announcing as f64)],
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_has_a_family_per_counter_with_labels() {
        let snapshot = StatsSnapshot {
            bytes_sent: 42,
            peers: 3,
            ..StatsSnapshot::default()
        };
        let status = Status {
            data_plane: "epoll".into(),
            totals: figures(&snapshot),
            workers: vec![WorkerStatus {
                index: 0,
                heartbeat_age_ms: 100,
                figures: figures(&snapshot),
            }],
            torrents: vec![TorrentStatus {
                name: "a \"quoted\" name".into(),
                state: "seeding".into(),
                info_hash: Some("ab".repeat(20)),
                figures: figures(&snapshot),
                ..TorrentStatus::default()
            }],
            ..Status::default()
        };
        let text = status.to_prometheus();
        assert!(text
            .contains("# TYPE ringseed_bytes_sent_total counter\nringseed_bytes_sent_total 42\n"));
        assert!(text.contains("# TYPE ringseed_peers gauge\nringseed_peers 3\n"));
        assert!(text.contains("ringseed_worker_bytes_sent_total{worker=\"0\"} 42\n"));
        assert!(
            text.contains("name=\"a \\\"quoted\\\" name\"} 42\n"),
            "{text}"
        );
        assert!(text.contains("ringseed_torrents{state=\"seeding\"} 1\n"));
        assert!(text.contains("ringseed_data_plane{plane=\"epoll\"} 1\n"));
        assert!(text.contains("ringseed_data_plane{plane=\"uring\"} 0\n"));
        // Every sample line is `name{labels} value` or `name value`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
