//! One module per subcommand; each returns the exit status it earned.

mod create;
mod info;
mod seed;
mod tracker;
mod verify;

use crate::cli::{Cli, Command, Exit};

/// Runs the chosen subcommand.
pub fn run(cli: Cli) -> anyhow::Result<Exit> {
    match cli.command {
        Command::Create(args) => create::run(args),
        Command::Info(args) => info::run(args),
        Command::Verify(args) => verify::run(args),
        Command::Seed(args) => seed::run(args),
        Command::Tracker(args) => tracker::run(args),
    }
}

/// Reads and parses a .torrent file, naming it in any error.
pub fn load_torrent(path: &std::path::Path) -> anyhow::Result<ringseed_engine::Metainfo> {
    use anyhow::Context;
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    ringseed_engine::Metainfo::from_bytes(&bytes)
        .with_context(|| format!("{} is not a valid .torrent", path.display()))
}
