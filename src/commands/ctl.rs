//! `ringseed ctl`: commands to a running daemon over its control socket;
//! `ringseed config`: the daemon's configuration file.

use std::path::PathBuf;

use crate::cli::{ConfigArgs, ConfigCommand, CtlArgs, DaemonArgs, Exit};
use crate::daemon::config::{default_control_socket, Config, DEFAULT_CONFIG};
use crate::daemon::control::{call, Request};
use crate::display::human_bytes;

/// Where the installed service's socket is (systemd's RuntimeDirectory).
const SERVICE_SOCKET: &str = "/run/ringseed/control.sock";

pub fn run(args: CtlArgs) -> anyhow::Result<Exit> {
    // `ringseed ctl status | head` ends quietly, like other Unix tools,
    // rather than panic on a closed pipe.
    // SAFETY: restoring the default disposition of SIGPIPE; this command
    // writes only to stdout and its one socket, which it never reads after
    // the peer is gone.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let socket = args.socket.unwrap_or_else(|| {
        let service = PathBuf::from(SERVICE_SOCKET);
        if service.exists() {
            service
        } else {
            default_control_socket(&PathBuf::new(), &Config::default().state_dir())
        }
    });
    let json = matches!(args.command, Request::Status { json: true });
    let request = match args.command {
        // Relative paths are relative to us, not to the daemon.
        Request::Add { path, data } => {
            let absolute = |p: PathBuf| std::path::absolute(&p).unwrap_or(p);
            Request::Add {
                path: absolute(path),
                data: data.map(absolute),
            }
        }
        // A path is one for the daemon too; a name or hash is left alone.
        Request::Remove { target } if std::path::Path::new(&target).exists() => Request::Remove {
            target: std::path::absolute(&target)
                .map_or(target, |p| p.to_string_lossy().into_owned()),
        },
        other => other,
    };
    let reply = call(&socket, &request)?;
    if !reply.ok {
        eprintln!("ringseed: error: {}", reply.message);
        return Ok(Exit::Error);
    }
    match reply.status {
        Some(status) if json => println!("{}", serde_json::to_string_pretty(&status)?),
        Some(status) => {
            println!("{}", reply.message);
            if let Some(dht) = &status.dht {
                let nodes: Vec<String> = dht
                    .nodes
                    .iter()
                    .map(|n| format!("{} {}", n.routing_nodes, n.family))
                    .collect();
                println!(
                    "dht: udp port {}, {} nodes known, {} torrents announced",
                    dht.port,
                    nodes.join(" + "),
                    dht.announcing
                );
            }
            println!("{}", crate::display::transport_line(&status.totals));
            println!("{}", crate::display::pex_line(&status.totals));
            println!(
                "{:<9} {:>6} {:>6} {:>10}  {:<40}  NAME",
                "STATE", "DONE", "PEERS", "SENT", "INFO-HASH"
            );
            for t in &status.torrents {
                let get = |k: &str| t.figures.get(k).copied().unwrap_or(0);
                let done = match (t.state.as_str(), t.progress) {
                    ("seeding", _) => "100%".to_owned(),
                    (_, Some(p)) => format!("{:.0}%", p * 100.0),
                    _ => "-".to_owned(),
                };
                println!(
                    "{:<9} {:>6} {:>6} {:>10}  {:<40}  {}",
                    t.state,
                    done,
                    get("peers"),
                    human_bytes(get("bytes_sent")),
                    t.info_hash.as_deref().unwrap_or("-"),
                    t.name
                );
                if let Some(reason) = &t.reason {
                    println!("          {reason}");
                }
            }
            for d in &status.directory_errors {
                println!("cannot read {}: {}", d.path, d.error);
            }
        }
        None => println!("{}", reply.message),
    }
    Ok(Exit::Success)
}

pub fn config(args: ConfigArgs) -> anyhow::Result<Exit> {
    match args.command {
        ConfigCommand::Default => print!("{DEFAULT_CONFIG}"),
        ConfigCommand::Check { file } => {
            let config = Config::load(&DaemonArgs {
                config: Some(file.clone()),
                listen: None,
                watch: Vec::new(),
                watch_torrents: Vec::new(),
                state: None,
                metrics: None,
                control_socket: None,
                workers: None,
                io: None,
                log_level: None,
            })?;
            // The settings in effect, environment overrides included.
            println!("# {}: valid; the settings it gives:", file.display());
            print!("{}", toml::to_string(&config)?);
        }
    }
    Ok(Exit::Success)
}
