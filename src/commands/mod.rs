//! One module per subcommand; each returns the exit status it earned.

mod create;
mod ctl;
mod download;
mod info;
mod loadtest;
mod seed;
mod tracker;
mod verify;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ringseed_engine::io::announce::{AnnounceTarget, Announcer, ClientConfig, Transfer};
use ringseed_engine::io::seeder::Seeder;
use ringseed_engine::InfoHash;

use crate::cli::{Cli, Command, Exit};

/// Runs the chosen subcommand.
pub fn run(cli: Cli) -> anyhow::Result<Exit> {
    match cli.command {
        Command::Create(args) => create::run(args),
        Command::Info(args) => info::run(args),
        Command::Verify(args) => verify::run(args),
        Command::Seed(args) => seed::run(args),
        Command::Download(args) => download::run(args),
        Command::Tracker(args) => tracker::run(args),
        Command::Loadtest(args) => loadtest::run(args),
        Command::Daemon(args) => crate::daemon::run(args),
        Command::Ctl(args) => ctl::run(args),
        Command::Config(args) => ctl::config(args),
    }
}

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

/// Announces `targets` (and any added later) for the torrents `seeder`
/// serves: uploads are read from its counters, and the peers trackers
/// return are dialed (leechers behind a NAT can only be reached that way).
pub fn announce_seeding(
    seeder: &Seeder,
    targets: Vec<AnnounceTarget>,
    config: ClientConfig,
) -> anyhow::Result<Announcer> {
    let observer = seeder.observer();
    let transfer = Arc::new(move |h: &InfoHash| Transfer {
        uploaded: observer
            .torrent(h)
            .map_or(0, |t| t.stats.snapshot().bytes_sent),
        ..Transfer::default()
    });
    let dialer = seeder.dialer();
    let on_peers = Arc::new(move |h: &InfoHash, peers: &[SocketAddr]| dialer.dial(*h, peers));
    Ok(Announcer::start(
        targets,
        seeder.peer_id(),
        seeder.local_addr().port(),
        config,
        transfer,
        Some(on_peers),
    )?)
}
