//! How the CLI shows things to people and scripts: sizes, progress bars, and
//! the text and JSON forms of a torrent.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use ringseed_engine::io::hasher::Progress;
use ringseed_engine::{MagnetLink, Metainfo};
use serde_json::json;

/// `1536` -> `1.50 KiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.2} {}", UNITS[unit])
    }
}

/// A byte-count progress bar on stderr, drawn only when stderr is a terminal.
pub struct HashProgress(ProgressBar);

impl HashProgress {
    /// A bar for `total` bytes, labelled `what`.
    pub fn new(what: &'static str, total: u64) -> Self {
        let target = if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(Some(total), target);
        bar.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_message(what);
        HashProgress(bar)
    }

    /// Removes the bar from the terminal.
    pub fn finish(&self) {
        self.0.finish_and_clear();
    }
}

impl Progress for HashProgress {
    fn advance(&self, bytes: u64) {
        self.0.inc(bytes);
    }
}

/// The `info --json` object; its field names are a stable interface.
pub fn torrent_json(m: &Metainfo) -> serde_json::Value {
    let files: Vec<_> = m
        .info
        .files
        .iter()
        .map(|f| json!({ "path": f.path.to_string_lossy(), "length": f.length, "pad": f.pad }))
        .collect();
    json!({
        "info_hash": m.info_hash.to_hex(),
        "name": m.info.name,
        "total_size": m.total_length(),
        "piece_length": m.info.piece_length,
        "num_pieces": m.info.num_pieces(),
        "files": files,
        "trackers": m.tracker_urls(),
        "tracker_tiers": m.trackers,
        "web_seeds": m.web_seeds,
        "http_seeds": m.http_seeds,
        "warnings": m.warnings,
        "private": m.info.private,
        "comment": m.comment,
        "created_by": m.created_by,
        "creation_date": m.creation_date,
        "magnet": MagnetLink::from_metainfo(m).to_string(),
    })
}

/// The human-readable summary of a torrent.
pub fn torrent_text(m: &Metainfo) -> String {
    let mut out = String::new();
    let mut line = |label: &str, value: String| out.push_str(&format!("{label:<14}{value}\n"));
    line("name:", m.info.name.clone());
    line("info-hash:", m.info_hash.to_hex());
    line(
        "total size:",
        format!(
            "{} ({} bytes)",
            human_bytes(m.total_length()),
            m.total_length()
        ),
    );
    line(
        "pieces:",
        format!(
            "{} x {}",
            m.info.num_pieces(),
            human_bytes(m.info.piece_length)
        ),
    );
    line("private:", if m.info.private { "yes" } else { "no" }.into());
    if let Some(comment) = &m.comment {
        line("comment:", comment.clone());
    }
    if let Some(by) = &m.created_by {
        line("created by:", by.clone());
    }
    if let Some(date) = m.creation_date {
        line("created:", format!("{date} (Unix time)"));
    }
    for (i, tier) in m.trackers.iter().enumerate() {
        line(&format!("tier {}:", i + 1), tier.join(" "));
    }
    for seed in &m.web_seeds {
        line("web seed:", seed.clone());
    }
    for seed in &m.http_seeds {
        line("http seed:", format!("{seed}  (BEP 17, not fetched from)"));
    }
    for warning in &m.warnings {
        line("warning:", warning.clone());
    }
    line("magnet:", MagnetLink::from_metainfo(m).to_string());
    out.push_str(&format!("files ({}):\n", m.info.files.len()));
    for f in &m.info.files {
        let pad = if f.pad { "  (pad)" } else { "" };
        out.push_str(&format!("  {:>16}  {}{pad}\n", f.length, f.path.display()));
    }
    out
}

/// `[0, 1, 2, 5, 7, 8]` -> `0-2, 5, 7-8`, at most `max` ranges shown.
pub fn piece_ranges(pieces: &[u32], max: usize) -> String {
    let mut ranges: Vec<(u32, u32)> = Vec::new();
    for &p in pieces {
        match ranges.last_mut() {
            Some((_, end)) if *end + 1 == p => *end = p,
            _ => ranges.push((p, p)),
        }
    }
    let mut parts: Vec<String> = ranges
        .iter()
        .take(max)
        .map(|&(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect();
    if ranges.len() > max {
        parts.push(format!("... ({} more ranges)", ranges.len() - max));
    }
    parts.join(", ")
}

/// Connections by transport since the start, and why encrypted handshakes
/// failed (the causes seen), from counters by name: the line `ctl status`,
/// `seed` and `download` print.
pub fn transport_line(totals: &std::collections::BTreeMap<String, u64>) -> String {
    let get = |k: &str| totals.get(k).copied().unwrap_or(0);
    let mut line = format!(
        "connections: plain={} mse_plaintext={} mse_rc4={}",
        get("connections_plain"),
        get("connections_mse_plaintext"),
        get("connections_mse_rc4")
    );
    let failures: Vec<String> = totals
        .iter()
        .filter(|&(k, &v)| v > 0 && (k.starts_with("mse_failed_") || k == "plaintext_refused"))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if !failures.is_empty() {
        line.push(' ');
        line.push_str(&failures.join(" "));
    }
    line
}

/// The `pex:` line of `seed`, `download` and `ctl status`: what peer
/// exchange (BEP 11) did.
pub fn pex_line(totals: &std::collections::BTreeMap<String, u64>) -> String {
    let get = |k: &str| totals.get(k).copied().unwrap_or(0);
    format!(
        "pex: sent={} received={} ignored={} peers_dialed={}",
        get("pex_sent"),
        get("pex_received"),
        get("pex_ignored"),
        get("pex_peers_dialed")
    )
}

/// One line per web seed, the lines `download` prints at exit and tests
/// read: `web seed: URL state=STATE bytes=N requests=N files_dropped=N
/// ignores_ranges=yes|no errors=CAUSE:N,...` (`errors=-` for none).
pub fn web_seed_lines(torrents: &[ringseed_engine::io::webseed::TorrentWebSeeds]) -> Vec<String> {
    torrents
        .iter()
        .flat_map(|t| &t.seeds)
        .map(|s| {
            let errors: Vec<String> = s.errors.iter().map(|(k, v)| format!("{k}:{v}")).collect();
            format!(
                "web seed: {} state={:?} bytes={} requests={} files_dropped={} ignores_ranges={} errors={}",
                s.url,
                s.state,
                s.bytes,
                s.requests,
                s.files_dropped,
                if s.ignores_ranges { "yes" } else { "no" },
                if errors.is_empty() { "-".to_owned() } else { errors.join(",") }
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(piece_ranges(&[0, 1, 2, 5, 7, 8], 10), "0-2, 5, 7-8");
        assert_eq!(piece_ranges(&[1, 3, 5], 2), "1, 3, ... (1 more ranges)");
        assert_eq!(piece_ranges(&[], 2), "");
    }

    #[test]
    fn sizes() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.50 KiB");
        assert_eq!(human_bytes(4 << 30), "4.00 GiB");
    }
}
