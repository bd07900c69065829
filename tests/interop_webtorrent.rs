//! ringseed against webtorrent-cli (npm, TCP only), in both directions,
//! sha256-checked. webtorrent once stalled on ringseed: it requests only
//! after an `unchoke` that follows its `interested` (issue 13).
//!
//! webtorrent-cli has no switch for DHT, trackers, LSD, uTP or a peer to
//! dial: tests/support/webtorrent/ preloads a wrapper that turns them off,
//! adds the peers of `WT_PEERS`, and refuses any connection, datagram or
//! name lookup that is not for loopback (`wt-local: BLOCKED`, which fails
//! the test).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Where scripts/install-test-deps puts webtorrent-cli.
fn webtorrent_cli() -> PathBuf {
    let prefix = std::env::var_os("RINGSEED_WEBTORRENT_PREFIX").map_or_else(
        || PathBuf::from("/opt/ringseed-test-deps/webtorrent"),
        PathBuf::from,
    );
    prefix.join("node_modules/webtorrent-cli/bin/cmd.js")
}

/// `webtorrent ARGS` through the loopback-only preload, its stderr in
/// `log`; panics with a clear message if webtorrent-cli is not installed.
fn webtorrent(args: &[&dyn AsRef<std::ffi::OsStr>], peers: &str, log: &Path) -> Command {
    require_program("node", "nodejs");
    let cli = webtorrent_cli();
    assert!(
        cli.exists(),
        "webtorrent-cli is not installed at {}: run scripts/install-test-deps",
        cli.display()
    );
    let preload =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/webtorrent/register.mjs");
    let mut cmd = Command::new("node");
    cmd.arg("--import").arg(preload).arg(cli);
    for a in args {
        cmd.arg(a);
    }
    cmd.env("WT_PEERS", peers)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    cmd
}

/// Waits for `child` to exit within `timeout`; kills it (by its PID) and
/// panics with its log otherwise.
fn wait_for(mut child: Child, timeout: Duration, log: &Path) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "webtorrent did not finish in {timeout:?}:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Panics if the preload refused a connection that would have left the
/// machine.
fn assert_stayed_local(log: &Path) {
    let text = std::fs::read_to_string(log).unwrap();
    assert!(
        !text.contains("BLOCKED"),
        "webtorrent tried to leave loopback:\n{text}"
    );
}

/// Two ports nobody listens on: webtorrent's torrent port and the HTTP
/// port its CLI always opens (two CLIs on its default 8000 crash).
fn two_ports() -> (u16, u16) {
    (free_port(), free_port())
}

#[test]
#[ignore = "needs webtorrent-cli: run by scripts/test"]
fn webtorrent_downloads_from_ringseed_from_a_torrent_file_and_a_magnet() {
    let p = Payload::new((24 << 20) + 12345, 41, "256K", &[]);
    let seeder = SeedProcess::start(&[&p.torrent, &"--data", &p.seed_dir(), &"--no-announce"]);
    let peer = seeder.addr.to_string();
    for (case, source) in [
        ("torrent", p.torrent.display().to_string()),
        ("magnet", seeder.magnet()),
    ] {
        let out = p.dir.path().join(format!("wt-{case}"));
        let log = p.dir.path().join(format!("wt-{case}.log"));
        let (torrent_port, http_port) = two_ports();
        let child = webtorrent(
            &[
                &"download",
                &source,
                &"-o",
                &out,
                &"--torrent-port",
                &torrent_port.to_string(),
                &"-p",
                &http_port.to_string(),
                &"-q",
            ],
            &peer,
            &log,
        )
        .spawn()
        .expect("start webtorrent");
        let status = wait_for(child, Duration::from_secs(120), &log);
        assert!(
            status.success(),
            "webtorrent ({case}) failed:\n{}",
            std::fs::read_to_string(&log).unwrap()
        );
        p.assert_downloaded(&out);
        assert_stayed_local(&log);
    }
    assert!(seeder.stop().success());
}

#[test]
#[ignore = "needs webtorrent-cli: run by scripts/test"]
fn ringseed_downloads_from_a_webtorrent_seeder() {
    let p = Payload::new((24 << 20) + 777, 43, "256K", &[]);
    let log = p.dir.path().join("wt-seed.log");
    let (torrent_port, http_port) = two_ports();
    // webtorrent checks the data against ringseed's torrent, then seeds it.
    let mut seeder = webtorrent(
        &[
            &"seed",
            &p.torrent,
            &"-o",
            &p.seed_dir(),
            &"--keep-seeding",
            &"--torrent-port",
            &torrent_port.to_string(),
            &"-p",
            &http_port.to_string(),
            &"-q",
        ],
        "",
        &log,
    )
    .spawn()
    .expect("start webtorrent");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("listening on TCP")
    {
        assert!(
            Instant::now() < deadline && seeder.try_wait().unwrap().is_none(),
            "webtorrent never listened:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = p.dir.path().join("out");
    let stdout = download_ok(
        &p.torrent,
        &out,
        &p.dir.path().join("state"),
        &[
            &"--peer",
            &format!("127.0.0.1:{torrent_port}"),
            &"--no-announce",
            &"--stall-timeout",
            &"60",
        ],
    );
    assert!(stdout.contains("complete:"), "{stdout}");
    p.assert_downloaded(&out);
    let _ = seeder.kill();
    let _ = seeder.wait();
    assert_stayed_local(&log);
}
