//! Real clients download real bytes from `ringseed seed`: libtorrent-rasterbar
//! (one leecher, four at once, and one that starts from a magnet link alone),
//! aria2c and transmission-cli through opentracker, where ringseed announces
//! itself (HTTP), and a libtorrent client that finds it over UDP. Every download is
//! checked by sha256.
//!
//! They need Debian's python3-libtorrent, aria2, transmission-cli and
//! opentracker; `cargo test` skips them, `scripts/test` (and CI) runs them.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use ringseed_engine::io::announce::{ClientConfig, TrackerClient};

fn payload(len: usize, extra_create_args: &[&str]) -> Payload {
    Payload::new(len, 99, "1M", extra_create_args)
}

impl Payload {
    fn seed(&self) -> SeedProcess {
        SeedProcess::start(&[&self.torrent, &"--data", &self.seed_dir()])
    }

    fn leech_dir(&self, name: &str) -> PathBuf {
        let d = self.dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}

#[test]
#[ignore = "needs python3-libtorrent: run by scripts/test"]
fn libtorrent_downloads_256_mib_from_ringseed() {
    require_libtorrent();
    let p = payload(256 << 20, &[]);
    let seeder = p.seed();
    let dir = p.leech_dir("lt");
    let leecher = spawn_lt_leecher(&p.torrent, &dir, Some(seeder.addr), "127.0.0.11");
    wait_leecher(leecher);
    p.assert_downloaded(&dir);
    assert!(seeder.stop().success(), "ringseed stops cleanly on SIGINT");
}

#[test]
#[ignore = "needs python3-libtorrent: run by scripts/test"]
fn four_libtorrent_leechers_at_once() {
    require_libtorrent();
    let p = payload(96 << 20, &[]);
    let seeder = p.seed();
    let leechers: Vec<(PathBuf, Child)> = (0..4)
        .map(|i| {
            let dir = p.leech_dir(&format!("lt{i}"));
            let bind = format!("127.0.0.{}", 11 + i);
            let child = spawn_lt_leecher(&p.torrent, &dir, Some(seeder.addr), &bind);
            (dir, child)
        })
        .collect();
    for (dir, child) in leechers {
        wait_leecher(child);
        p.assert_downloaded(&dir);
    }
    assert!(seeder.stop().success());
}

#[test]
#[ignore = "needs python3-libtorrent: run by scripts/test"]
fn libtorrent_from_a_magnet_link_gets_the_metadata_from_us() {
    require_libtorrent();
    let p = payload(24 << 20, &[]);
    let seeder = p.seed();
    let magnet = seeder.magnet();
    assert!(magnet.starts_with("magnet:?xt=urn:btih:"));
    let dir = p.leech_dir("magnet");
    wait_leecher(spawn_lt_leecher(
        &magnet,
        &dir,
        Some(seeder.addr),
        "127.0.0.21",
    ));
    p.assert_downloaded(&dir);
}

/// libtorrent forced to encrypt (`rc4`: the whole stream; `plaintext`: the
/// handshake only) downloads from `ringseed seed`, which answers the MSE
/// handshake on its one port. Both sides report the transport they used.
fn libtorrent_requiring_encryption_downloads(level: &str, seed_args: &[&str]) -> String {
    require_libtorrent();
    let p = payload(64 << 20, &[]);
    let data = p.seed_dir();
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&p.torrent, &"--data", &data];
    args.extend(seed_args.iter().map(|a| a as &dyn AsRef<std::ffi::OsStr>));
    let seeder = SeedProcess::start(&args);
    let dir = p.leech_dir("lt");
    let leecher = spawn_lt_leecher_with(
        &p.torrent,
        &dir,
        Some(seeder.addr),
        "127.0.0.11",
        &["--encryption", level],
    );
    let out = wait_leecher(leecher);
    p.assert_downloaded(&dir);
    let seen = figures_of(&out, "encryption ");
    assert!(
        seen["none"] == 0 && seen[level] >= 1,
        "libtorrent saw {seen:?}"
    );
    let (status, seed_out) = seeder.stop_with_output();
    assert!(status.success());
    seed_out
}

#[test]
#[ignore = "needs python3-libtorrent: run by scripts/test"]
fn libtorrent_requiring_rc4_downloads_from_ringseed() {
    let out = libtorrent_requiring_encryption_downloads("rc4", &[]);
    let counts = figures_of(&out, "connections: ");
    assert!(counts["mse_rc4"] >= 1 && counts["plain"] == 0, "{out}");
}

#[test]
#[ignore = "needs python3-libtorrent: run by scripts/test"]
fn libtorrent_encrypting_the_handshake_only_downloads_zero_copy_from_ringseed() {
    let out = libtorrent_requiring_encryption_downloads("plaintext", &[]);
    let counts = figures_of(&out, "connections: ");
    assert!(
        counts["mse_plaintext"] >= 1 && counts["mse_rc4"] == 0,
        "{out}"
    );
}

#[test]
#[ignore = "needs python3-libtorrent: run by scripts/test"]
fn a_seed_that_requires_encryption_serves_libtorrent_over_rc4() {
    let out = libtorrent_requiring_encryption_downloads("rc4", &["--encryption", "require"]);
    let counts = figures_of(&out, "connections: ");
    assert!(counts["mse_rc4"] >= 1 && counts["plain"] == 0, "{out}");
}

#[test]
#[ignore = "needs transmission-cli and opentracker: run by scripts/test"]
fn transmission_cli_requiring_encryption_downloads_from_ringseed() {
    require_program("transmission-cli", "transmission-cli");
    let ns = NetNs::create();
    // A seed that refuses plain peers: the download can only be encrypted.
    let (p, _tracker, seeder) = tracked_payload_seeded_with(
        Tracker::Open,
        "http",
        &ns.host_ip,
        24 << 20,
        &["--encryption", "require"],
    );
    // -er: Transmission's "encryption required" (settings.json `encryption: 2`).
    transmission_download_with(&p, &ns, &["-er"]);
    let (status, out) = seeder.stop_with_output();
    assert!(status.success());
    let counts = figures_of(&out, "connections: ");
    assert!(counts["mse_rc4"] >= 1 && counts["plain"] == 0, "{out}");
}

fn info_hash_of(torrent: &Path) -> ([u8; 20], String) {
    let m = ringseed_engine::Metainfo::from_bytes(&std::fs::read(torrent).unwrap()).unwrap();
    (m.info_hash.0, m.info_hash.to_hex())
}

/// Which tracker a test's swarm meets at.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tracker {
    /// Debian's opentracker, in whitelist mode.
    Open,
    /// The tracker built into `ringseed seed --run-tracker`.
    Embedded,
}

/// Makes a payload whose torrent names a tracker on `ip` (over `scheme`,
/// "http" or "udp"), seeds it on `ip`, and waits until the seeder has
/// announced itself there: the tracker's scrape counts it as a seed.
fn tracked_payload(
    tracker: Tracker,
    scheme: &str,
    ip: &str,
    len: usize,
) -> (Payload, Option<OpenTracker>, SeedProcess) {
    tracked_payload_seeded_with(tracker, scheme, ip, len, &[])
}

/// Like `tracked_payload`, with more arguments for `ringseed seed`.
fn tracked_payload_seeded_with(
    tracker: Tracker,
    scheme: &str,
    ip: &str,
    len: usize,
    seed_args: &[&str],
) -> (Payload, Option<OpenTracker>, SeedProcess) {
    // The tracker URL goes into the torrent, whose hash the whitelist needs:
    // pick the port first, then start the tracker on it.
    let port = free_port();
    let url = format!("{scheme}://{ip}:{port}/announce");
    let p = payload(len, &["-t", &url]);
    let (hash, hex) = info_hash_of(&p.torrent);
    let listen = format!("{ip}:0");
    let data = p.data.parent().unwrap().to_path_buf();
    let args: Vec<&dyn AsRef<std::ffi::OsStr>> = seed_args
        .iter()
        .map(|a| a as &dyn AsRef<std::ffi::OsStr>)
        .collect();
    let (open, seeder) = match tracker {
        Tracker::Open => {
            require_program("opentracker", "opentracker");
            let open = OpenTracker::start(ip, port, &hex);
            (
                Some(open),
                SeedProcess::start_on(
                    &listen,
                    &[
                        &[&p.torrent as &dyn AsRef<std::ffi::OsStr>, &"--data", &data],
                        &args[..],
                    ]
                    .concat(),
                ),
            )
        }
        Tracker::Embedded => {
            let tracker_addr = format!("{ip}:{port}");
            let seeder = SeedProcess::start_on(
                &listen,
                &[
                    &[
                        &p.torrent as &dyn AsRef<std::ffi::OsStr>,
                        &"--data",
                        &data,
                        &"--run-tracker",
                        &tracker_addr,
                    ],
                    &args[..],
                ]
                .concat(),
            );
            (None, seeder)
        }
    };
    wait_until_seeded(&url, hash);
    (p, open, seeder)
}

#[test]
#[ignore = "needs aria2 and opentracker: run by scripts/test"]
fn aria2c_downloads_through_opentracker() {
    require_program("aria2c", "aria2");
    let (p, _tracker, seeder) = tracked_payload(Tracker::Open, "http", "127.0.0.1", 48 << 20);
    let dir = p.leech_dir("aria2");
    aria2c_download(&p.torrent, &dir);
    p.assert_downloaded(&dir);
    assert!(seeder.stop().success());
}

#[test]
#[ignore = "needs transmission-cli and opentracker: run by scripts/test"]
fn transmission_cli_downloads_through_opentracker() {
    require_program("transmission-cli", "transmission-cli");
    // Transmission ignores peers on 127.0.0.0/8, so it runs in a network
    // namespace of its own and reaches tracker and seeder over a veth link.
    let ns = NetNs::create();
    let (p, _tracker, seeder) = tracked_payload(Tracker::Open, "http", &ns.host_ip, 24 << 20);
    transmission_download(&p, &ns);
    assert!(seeder.stop().success());
}

#[test]
#[ignore = "needs python3-libtorrent and opentracker: run by scripts/test"]
fn libtorrent_finds_ringseed_through_a_udp_tracker() {
    require_libtorrent();
    let (p, _tracker, seeder) = tracked_payload(Tracker::Open, "udp", "127.0.0.1", 16 << 20);
    let dir = p.leech_dir("lt-udp");
    // No --peer: the only way to the seeder is the UDP tracker.
    wait_leecher(spawn_lt_leecher(&p.torrent, &dir, None, "127.0.0.31"));
    p.assert_downloaded(&dir);
    assert!(seeder.stop().success());
}

#[test]
#[ignore = "needs opentracker: run by scripts/test"]
fn ringseed_announces_started_and_stopped_over_udp() {
    // `tracked_payload` returns once a UDP scrape counts ringseed as a seed.
    let (p, _tracker, seeder) = tracked_payload(Tracker::Open, "udp", "127.0.0.1", 1 << 20);
    assert!(seeder.stop().success());
    // A clean stop sends `stopped`: the tracker no longer counts the seed.
    let m = ringseed_engine::Metainfo::from_bytes(&std::fs::read(&p.torrent).unwrap()).unwrap();
    let mut client = TrackerClient::new(ClientConfig::default()).unwrap();
    let stats = client.scrape(m.tracker_urls()[0], &[m.info_hash]).unwrap();
    assert_eq!(stats[&m.info_hash].complete, 0, "stopped was announced");
}

/// Real clients meet ringseed at ringseed's own tracker, over UDP and over
/// HTTP: libtorrent on loopback, transmission-cli from its own network
/// namespace (it ignores loopback peers), and aria2c over HTTP only: aria2
/// runs UDP trackers over its DHT socket ("udp is not supported yet"
/// without DHT), and DHT stays off in every client we start.
#[test]
#[ignore = "needs python3-libtorrent, aria2, transmission-cli: run by scripts/test"]
fn real_clients_meet_ringseed_at_its_own_tracker() {
    require_libtorrent();
    require_program("aria2c", "aria2");
    require_program("transmission-cli", "transmission-cli");
    for scheme in ["udp", "http"] {
        let (p, _, seeder) = tracked_payload(Tracker::Embedded, scheme, "127.0.0.1", 8 << 20);
        let dir = p.leech_dir("lt");
        wait_leecher(spawn_lt_leecher(&p.torrent, &dir, None, "127.0.0.41"));
        p.assert_downloaded(&dir);
        if scheme == "http" {
            let dir = p.leech_dir("aria2");
            aria2c_download(&p.torrent, &dir);
            p.assert_downloaded(&dir);
        }
        assert!(seeder.stop().success(), "{scheme}");

        let ns = NetNs::create();
        let (p, _, seeder) = tracked_payload(Tracker::Embedded, scheme, &ns.host_ip, 8 << 20);
        transmission_download(&p, &ns);
        assert!(seeder.stop().success(), "{scheme}");
    }
}

/// Downloads `torrent` into `dir` with aria2c (DHT, LPD, PEX off).
fn aria2c_download(torrent: &Path, dir: &Path) {
    let out = Command::new("aria2c")
        .args([
            "--enable-dht=false",
            "--enable-dht6=false",
            "--bt-enable-lpd=false",
            "--enable-peer-exchange=false",
            "--disable-ipv6=true",
            "--seed-time=0",
            "--bt-stop-timeout=120",
            "--summary-interval=0",
            "--console-log-level=warn",
            "--listen-port",
            &free_port().to_string(),
            "--dir",
        ])
        .arg(dir)
        .arg(torrent)
        .output()
        .expect("run aria2c");
    assert!(
        out.status.success(),
        "aria2c failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Downloads the payload with transmission-cli running in `ns`, and checks it.
fn transmission_download(p: &Payload, ns: &NetNs) {
    transmission_download_with(p, ns, &[]);
}

/// Like `transmission_download`, with more transmission-cli arguments.
fn transmission_download_with(p: &Payload, ns: &NetNs, extra: &[&str]) {
    let dir = p.leech_dir("transmission");
    let config = p.leech_dir("transmission-config");
    // Nothing may leave the machine: no DHT, LPD, PEX, uTP or port mapping.
    std::fs::write(
        config.join("settings.json"),
        r#"{"dht-enabled": false, "lpd-enabled": false, "pex-enabled": false,
            "utp-enabled": false, "port-forwarding-enabled": false,
            "bind-address-ipv4": "NS_IP", "bind-address-ipv6": "::1",
            "rename-partial-files": false}"#
            .replace("NS_IP", &ns.ns_ip),
    )
    .unwrap();
    let marker = p.dir.path().join("transmission-finished");
    let script = p.dir.path().join("on-finish.sh");
    std::fs::write(
        &script,
        format!("#!/bin/sh\ntouch '{}'\n", marker.display()),
    )
    .unwrap();
    run_ok(Command::new("chmod").arg("+x").arg(&script));
    let mut child = ns
        .command("transmission-cli")
        .arg("-g")
        .arg(&config)
        .arg("-w")
        .arg(&dir)
        .args(extra)
        .args(["-p", &free_port().to_string(), "-f"])
        .arg(&script)
        .arg(&p.torrent)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start transmission-cli");
    // transmission-cli seeds forever; its --finish script marks completion.
    let deadline = Instant::now() + Duration::from_secs(240);
    while !marker.exists() {
        if Instant::now() > deadline {
            // SAFETY: signalling our own child by its PID.
            unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
            let _ = child.wait();
            panic!("transmission-cli did not finish in time");
        }
        std::thread::park_timeout(Duration::from_millis(200));
    }
    // SAFETY: signalling our own child by its PID.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    p.assert_downloaded(&dir);
}
