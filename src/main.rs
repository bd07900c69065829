//! `ringseed`: the command-line front end. It parses arguments, wires the
//! engine up and maps outcomes to exit codes; everything else is in
//! `ringseed-engine`.

mod cli;
mod commands;
mod daemon;
mod display;
mod logging;
mod setup;

use std::process::ExitCode;

use clap::Parser;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Returns the calling thread's free mimalloc pages to the system.
fn purge_allocator() {
    // SAFETY: mi_collect only walks the calling thread's own heap.
    unsafe { libmimalloc_sys::mi_collect(true) };
}

fn main() -> ExitCode {
    ringseed_engine::memory::set_purge(purge_allocator);
    let cli = cli::Cli::parse();
    // The daemon sets up its logs from its config; every other command logs
    // the engine's warnings and errors (a torrent errored, a peer banned).
    if !matches!(cli.command, cli::Command::Daemon(_)) {
        let level = std::env::var("RINGSEED_LOG_LEVEL").unwrap_or_else(|_| "info".into());
        if let Err(e) = logging::init(&level) {
            eprintln!("ringseed: error: {e:#}");
            return cli::Exit::Error.into();
        }
    }
    match commands::run(cli) {
        Ok(code) => code.into(),
        Err(err) => {
            // `{:#}` prints the cause chain once: "outer: cause: root cause".
            eprintln!("ringseed: error: {err:#}");
            cli::Exit::Error.into()
        }
    }
}
