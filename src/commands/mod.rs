//! One module per subcommand; each returns the exit status it earned.

mod create;
mod ctl;
mod dht_swarm;
mod download;
mod info;
mod loadtest;
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
        Command::Download(args) => download::run(args),
        Command::Tracker(args) => tracker::run(args),
        Command::DhtSwarm(args) => dht_swarm::run(args),
        Command::Loadtest(args) => loadtest::run(args),
        Command::Daemon(args) => crate::daemon::run(args),
        Command::Ctl(args) => ctl::run(args),
        Command::Config(args) => ctl::config(args),
    }
}
