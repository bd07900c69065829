//! Logs through `tracing`, on stderr. Under systemd (`JOURNAL_STREAM` set)
//! lines carry no timestamp and no colour, since journald adds its own. The
//! level can change at run time (reload, `ringseed ctl log-level`).

use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, Layer, Registry};

/// Changes the level of the logs installed by [`init`].
#[derive(Clone)]
pub struct LogLevel(reload::Handle<Targets, Registry>);

impl LogLevel {
    /// Sets new directives (see [`parse_filter`]).
    pub fn set(&self, directives: &str) -> anyhow::Result<()> {
        let filter = parse_filter(directives)
            .map_err(|e| anyhow::anyhow!("log level {directives:?}: {e}"))?;
        self.0
            .reload(filter)
            .map_err(|e| anyhow::anyhow!("cannot change the log level: {e}"))
    }
}

/// Parses `info`, or `warn,ringseed::daemon=debug`: a default level and
/// levels per module.
pub fn parse_filter(directives: &str) -> Result<Targets, String> {
    // `Targets` takes a bare word as a module name ("verbose" would mean
    // "module verbose, every level" and silence everything else): each
    // directive must name a level.
    if directives.trim().is_empty() {
        return Err("empty (use \"off\" for no logs)".into());
    }
    for directive in directives.split(',').map(str::trim) {
        let level = directive.rsplit_once('=').map_or(directive, |(_, l)| l);
        level
            .parse::<tracing_subscriber::filter::LevelFilter>()
            .map_err(|_| {
                format!("{directive:?} names no level (error, warn, info, debug, trace or off)")
            })?;
    }
    directives.parse::<Targets>().map_err(|e| e.to_string())
}

/// Installs the logger for the process with `directives`.
pub fn init(directives: &str) -> anyhow::Result<LogLevel> {
    let filter =
        parse_filter(directives).map_err(|e| anyhow::anyhow!("log level {directives:?}: {e}"))?;
    let (filter, handle) = reload::Layer::new(filter);
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let output = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(!journald && std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let output = if journald {
        output.without_time().boxed()
    } else {
        output.boxed()
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(output)
        .try_init()
        .map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))?;
    Ok(LogLevel(handle))
}

#[cfg(test)]
mod tests {
    use super::parse_filter;

    #[test]
    fn every_directive_names_a_level() {
        for good in [
            "info",
            "warn,ringseed::daemon=debug",
            "off",
            "ringseed_engine=trace",
        ] {
            assert!(parse_filter(good).is_ok(), "{good}");
        }
        for bad in ["verbose", "infoo", "info,ringseed=loud", ""] {
            assert!(parse_filter(bad).is_err(), "{bad}");
        }
    }
}
