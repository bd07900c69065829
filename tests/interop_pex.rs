//! Peer exchange (BEP 11, ut_pex) with libtorrent: `ringseed download`,
//! given one peer, finds the others through it; and a libtorrent peer
//! finds ringseed's other peers through ringseed. No tracker, no DHT, no
//! web seed: peer exchange is the only way. Every download is checked by
//! sha256.
//!
//! They need Debian's python3-libtorrent; `cargo test` skips them,
//! `scripts/test` (and CI) runs them.

mod common;

use std::io::{BufRead, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// tests/support/lt_pex.py in `mode` for `p`, with its stdin and stdout
/// piped; returns it and its "ready" ports.
fn lt_pex(
    mode: &str,
    p: &Payload,
    ips: [&str; 3],
) -> (
    Stopper,
    std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
    Vec<u16>,
) {
    require_libtorrent();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/lt_pex.py");
    let mut child = Command::new(SYSTEM_PYTHON)
        .arg(script)
        .arg(mode)
        .arg(&p.torrent)
        .arg(p.seed_dir())
        .args(ips)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start lt_pex.py");
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = lines.next().and_then(Result::ok).unwrap_or_default();
    let ports: Vec<u16> = ready
        .strip_prefix("ready ")
        .unwrap_or_else(|| panic!("lt_pex.py {mode} did not get ready: {ready:?}"))
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    (Stopper(child), lines, ports)
}

fn pex_figures(stdout: &str) -> std::collections::HashMap<String, u64> {
    figures_of(stdout, "pex: ")
}

#[test]
#[ignore = "needs python3-libtorrent: run by scripts/test"]
fn ringseed_finds_the_swarm_through_one_libtorrent_peer() {
    let p = Payload::new(16 << 20, 81, "256K", &[]);
    let (mut swarm, mut lines, ports) =
        lt_pex("teach", &p, ["127.0.0.2", "127.0.0.3", "127.0.0.4"]);
    let a = format!("127.0.0.2:{}", ports[0]);
    let out = p.dir.path().join("out");
    let stdout = download_ok(
        &p.torrent,
        &out,
        &p.dir.path().join("state"),
        &[
            &"--no-announce",
            &"--no-dht",
            &"--no-web-seeds",
            &"--peer",
            &a,
        ],
    );
    p.assert_downloaded(&out);
    let pex = pex_figures(&stdout);
    assert!(pex["received"] >= 1, "{stdout}");
    assert!(pex["peers_dialed"] >= 2, "{stdout}");
    // SAFETY: signalling our own child by its PID.
    unsafe { libc::kill(swarm.0.id() as i32, libc::SIGTERM) };
    let learned = lines.next().and_then(Result::ok).unwrap_or_default();
    let _ = swarm.0.wait();
    assert_eq!(
        learned, "learned B=1 C=1",
        "ringseed never reached B and C:\n{stdout}"
    );
}

#[test]
#[ignore = "needs python3-libtorrent: run by scripts/test"]
fn a_libtorrent_peer_finds_ringseeds_other_peers_through_it() {
    let p = Payload::new(16 << 20, 82, "256K", &[]);
    let (mut swarm, mut lines, ports) =
        lt_pex("learn", &p, ["127.0.0.5", "127.0.0.6", "127.0.0.7"]);
    let (x, y) = (
        format!("127.0.0.5:{}", ports[0]),
        format!("127.0.0.6:{}", ports[1]),
    );
    let out = p.dir.path().join("out");
    let d = DownloadProcess::start(
        &p.torrent,
        &out,
        &p.dir.path().join("state"),
        &[
            &"--no-announce",
            &"--no-dht",
            &"--no-web-seeds",
            &"--peer",
            &x,
            &"--peer",
            &y,
        ],
    );
    let stdin = swarm.0.stdin.as_mut().unwrap();
    writeln!(stdin, "connect 127.0.0.1:{}", d.addr.port()).unwrap();
    let learned = lines.next().and_then(Result::ok).unwrap_or_default();
    let (status, stdout, stderr) = d.wait(Duration::from_secs(240));
    assert!(status.success(), "{stdout}\n{stderr}");
    p.assert_downloaded(&out);
    assert!(pex_figures(&stdout)["sent"] >= 1, "{stdout}");
    assert_eq!(
        learned, "learned X=1 Y=1",
        "ringseed's PEX did not reach libtorrent:\n{stdout}"
    );
}
