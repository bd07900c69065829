//! What every front end (`seed`, `download`, the daemon) sets up the same
//! way: the state directory, the open-file limit, the tracker client, and
//! reading .torrent files.

use std::path::{Path, PathBuf};

use ringseed_engine::io::announce::ClientConfig;

/// How long trackers get to hear `stopped` (and `completed`) when `seed` or
/// `download` stops: an unresponsive tracker must not hold up the exit (it
/// held `seed` 14 s and `download` 20 s; issue 13). The daemon has its own
/// `stop_timeout_secs`.
pub const GOODBYE: std::time::Duration = std::time::Duration::from_secs(2);

/// Reads and parses a .torrent file, naming it in any error.
pub fn load_torrent(path: &std::path::Path) -> anyhow::Result<ringseed_engine::Metainfo> {
    use anyhow::Context;
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    ringseed_engine::Metainfo::from_bytes(&bytes)
        .with_context(|| format!("{} is not a valid .torrent", path.display()))
}

/// `--state`, else `$XDG_STATE_HOME/ringseed`, else `~/.local/state/ringseed`.
pub fn state_dir(flag: Option<&Path>) -> PathBuf {
    if let Some(dir) = flag {
        return dir.to_path_buf();
    }
    if let Some(xdg) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(xdg).join("ringseed");
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/state/ringseed"),
        None => PathBuf::from(".ringseed-state"),
    }
}

/// Raises the soft open-file limit to the hard one: every peer is a
/// descriptor.
pub fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// The tracker client's settings: the built-in web PKI roots, or the
/// certificates of `tracker_ca` (a tracker with its own CA).
pub fn tracker_client_config(tracker_ca: Option<&Path>) -> anyhow::Result<ClientConfig> {
    use anyhow::Context;
    let roots_pem = tracker_ca
        .map(|path| std::fs::read(path).with_context(|| format!("cannot read {}", path.display())))
        .transpose()?;
    Ok(ClientConfig {
        roots_pem,
        ..ClientConfig::default()
    })
}
