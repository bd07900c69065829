//! `ringseed download` from real seeders: libtorrent-rasterbar (from a
//! .torrent and from a magnet link alone), transmission-daemon, and aria2c
//! found through opentracker. Every download is checked by sha256.
//!
//! They need Debian's python3-libtorrent, transmission-daemon, aria2 and
//! opentracker; `cargo test` skips them, `scripts/test` (and CI) runs them.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn payload(len: usize, extra_create_args: &[&str]) -> Payload {
    Payload::new(len, 31, "256K", extra_create_args)
}

impl Payload {
    /// `ringseed download` of it into `out/`, checked, with no one banned;
    /// returns its stdout.
    fn download(
        &self,
        source: &dyn AsRef<std::ffi::OsStr>,
        args: &[&dyn AsRef<std::ffi::OsStr>],
    ) -> String {
        let out = self.dir.path().join("out");
        let stdout = download_ok(source, &out, &self.dir.path().join("state"), args);
        self.assert_downloaded(&out);
        assert_eq!(summary(&stdout)["banned"], "-");
        stdout
    }
}

/// tests/support/lt_seed.py on `addr`, once it is seeding.
fn lt_seed(p: &Payload, addr: &str) -> Stopper {
    lt_seed_with(p, addr, "default")
}

/// Like `lt_seed`, with lt_seed.py's `--encryption` policy.
fn lt_seed_with(p: &Payload, addr: &str, encryption: &str) -> Stopper {
    spawn_lt_seeder(&p.torrent, &p.seed_dir(), addr, encryption)
}

#[test]
#[ignore = "needs python3-libtorrent: run by scripts/test"]
fn downloads_from_a_libtorrent_seeder() {
    let p = payload(64 << 20, &[]);
    let addr = format!("127.0.0.81:{}", free_port());
    let _seed = lt_seed(&p, &addr);
    p.download(&p.torrent, &[&"--peer", &addr]);
}

/// `ringseed download --encryption require` from a libtorrent seeder that
/// requires encryption at `level`; returns the download's stdout.
fn encrypted_download_from_libtorrent(level: &str, ip: &str, args: &[&str]) -> String {
    let p = payload(32 << 20, &[]);
    let addr = format!("{ip}:{}", free_port());
    let _seed = lt_seed_with(&p, &addr, level);
    let mut all: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"--peer", &addr];
    all.extend(args.iter().map(|a| a as &dyn AsRef<std::ffi::OsStr>));
    p.download(&p.torrent, &all)
}

#[test]
#[ignore = "needs python3-libtorrent: run by scripts/test"]
fn requiring_encryption_downloads_from_a_libtorrent_seeder_over_rc4() {
    let out = encrypted_download_from_libtorrent("rc4", "127.0.0.83", &["--encryption", "require"]);
    let counts = figures_of(&out, "connections: ");
    assert!(counts["mse_rc4"] >= 1 && counts["plain"] == 0, "{out}");
}

#[test]
#[ignore = "needs python3-libtorrent: run by scripts/test"]
fn requiring_encryption_downloads_from_a_libtorrent_seeder_encrypting_the_handshake_only() {
    let out =
        encrypted_download_from_libtorrent("plaintext", "127.0.0.84", &["--encryption", "require"]);
    let counts = figures_of(&out, "connections: ");
    assert!(
        counts["mse_plaintext"] >= 1 && counts["mse_rc4"] == 0,
        "{out}"
    );
}

#[test]
#[ignore = "needs python3-libtorrent: run by scripts/test"]
fn the_default_policy_retries_encrypted_when_a_libtorrent_seeder_requires_it() {
    // Dialed in plain text first, libtorrent hangs up; the second dial is
    // encrypted.
    let out = encrypted_download_from_libtorrent("rc4", "127.0.0.85", &[]);
    let counts = figures_of(&out, "connections: ");
    assert!(counts["mse_rc4"] >= 1, "{out}");
}

#[test]
#[ignore = "needs python3-libtorrent: run by scripts/test"]
fn a_magnet_link_against_a_libtorrent_seeder() {
    let p = payload(16 << 20, &[]);
    let addr = format!("127.0.0.82:{}", free_port());
    let _seed = lt_seed(&p, &addr);
    let hash = info_json(&p.torrent)["info_hash"]
        .as_str()
        .unwrap()
        .to_owned();
    let magnet = format!("magnet:?xt=urn:btih:{hash}&dn=payload.iso&x.pe={addr}");
    p.download(&magnet, &[]);
}

#[test]
#[ignore = "needs transmission-daemon: run by scripts/test"]
fn downloads_from_a_transmission_daemon_seeder() {
    let p = payload(32 << 20, &[]);
    let (daemon, port) = transmission_daemon_seed(&p, 1);
    p.download(&p.torrent, &[&"--peer", &format!("127.0.0.1:{port}")]);
    drop(daemon);
}

#[test]
#[ignore = "needs transmission-daemon: run by scripts/test"]
fn requiring_encryption_downloads_from_a_transmission_daemon_that_requires_it() {
    let p = payload(32 << 20, &[]);
    // `encryption: 2`: Transmission's "required"; it picks RC4.
    let (daemon, port) = transmission_daemon_seed(&p, 2);
    let out = p.download(
        &p.torrent,
        &[
            &"--peer",
            &format!("127.0.0.1:{port}"),
            &"--encryption",
            &"require",
        ],
    );
    let counts = figures_of(&out, "connections: ");
    assert!(counts["mse_rc4"] >= 1 && counts["plain"] == 0, "{out}");
    drop(daemon);
}

/// transmission-daemon seeding the payload on 127.0.0.1, with its
/// `encryption` setting (0 prefer plain, 1 prefer encrypted, 2 require);
/// returns it (stopped when dropped) and its peer port.
fn transmission_daemon_seed(p: &Payload, encryption: u8) -> (Stopper, u16) {
    require_program("transmission-daemon", "transmission-daemon");
    require_program("transmission-remote", "transmission-cli");
    let conf = p.dir.path().join("transmission");
    std::fs::create_dir_all(&conf).unwrap();
    let (port, rpc) = (free_port(), free_port());
    // Nothing may leave the machine: no DHT, LPD, PEX, uTP or port mapping.
    std::fs::write(
        conf.join("settings.json"),
        format!(
            r#"{{"dht-enabled": false, "lpd-enabled": false, "pex-enabled": false,
                "utp-enabled": false, "port-forwarding-enabled": false,
                "bind-address-ipv4": "127.0.0.1", "rpc-bind-address": "127.0.0.1",
                "rpc-port": {rpc}, "peer-port": {port}, "encryption": {encryption},
                "rpc-authentication-required": false}}"#
        ),
    )
    .unwrap();
    let daemon = Stopper(
        Command::new("transmission-daemon")
            .arg("-f")
            .arg("-g")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start transmission-daemon"),
    );
    let remote = |args: &[&dyn AsRef<std::ffi::OsStr>]| {
        let mut cmd = Command::new("transmission-remote");
        cmd.arg(format!("127.0.0.1:{rpc}"));
        for a in args {
            cmd.arg(a);
        }
        run(&mut cmd)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !remote(&[&"-l"]).status.success() {
        assert!(
            Instant::now() < deadline,
            "transmission-daemon did not start"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let added = remote(&[&"-a", &p.torrent, &"-w", &p.seed_dir()]);
    assert!(added.status.success(), "{added:?}");
    // It checks the data, then seeds.
    loop {
        let info = String::from_utf8_lossy(&remote(&[&"-t", &"1", &"-i"]).stdout).into_owned();
        if info.contains("Seeding") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "transmission-daemon never started seeding:\n{info}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    (daemon, port)
}

#[test]
#[ignore = "needs aria2 and opentracker: run by scripts/test"]
fn downloads_from_an_aria2c_seeder_found_through_opentracker() {
    require_program("aria2c", "aria2");
    // The tracker URL goes into the torrent, whose hash the whitelist needs.
    let tracker_port = free_port();
    let url = format!("http://127.0.0.1:{tracker_port}/announce");
    let p = payload(24 << 20, &["-t", &url]);
    let hash = info_json(&p.torrent)["info_hash"]
        .as_str()
        .unwrap()
        .to_owned();
    let _tracker = OpenTracker::start("127.0.0.1", tracker_port, &hash);
    let _aria2 = Stopper(
        Command::new("aria2c")
            .args([
                "--enable-dht=false",
                "--enable-dht6=false",
                "--bt-enable-lpd=false",
                "--enable-peer-exchange=false",
                "--disable-ipv6=true",
                "--check-integrity=true",
                "--seed-ratio=0.0",
                "--summary-interval=0",
                "--console-log-level=warn",
                "--listen-port",
                &free_port().to_string(),
                "--dir",
            ])
            .arg(p.seed_dir())
            .arg(&p.torrent)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start aria2c"),
    );
    // No --peer: the only way to aria2c is the tracker. aria2c announces
    // once its check is done; ringseed re-announces until it has peers.
    p.download(&p.torrent, &[]);
}

/// A multi-file torrent made by libtorrent with BEP 47 pad files: pad
/// bytes are hashed but never written, every real file arrives intact, and
/// libtorrent's own check of the download finds every piece good.
#[test]
#[ignore = "needs python3-libtorrent: run by scripts/test"]
fn a_libtorrent_torrent_with_pad_files_downloads_intact() {
    require_libtorrent();
    let dir = tempfile::tempdir().unwrap();
    let tree = write_tree(&dir.path().join("seed"));
    let torrent = dir.path().join("padded.torrent");
    lt_tool(&[&"create-padded", &tree, &torrent]);
    let files = info_json(&torrent)["files"].as_array().unwrap().clone();
    assert!(
        files.iter().any(|f| f["pad"] == true),
        "libtorrent added pad files"
    );
    let seed = SeedProcess::start(&[
        &torrent,
        &"--data",
        &dir.path().join("seed"),
        &"--no-announce",
    ]);
    let out = dir.path().join("out");
    download_ok(
        &torrent,
        &out,
        &dir.path().join("state"),
        &[&"--peer", &seed.addr.to_string()],
    );
    for f in files.iter().filter(|f| f["pad"] == false) {
        let path = f["path"].as_str().unwrap();
        let original = tree.parent().unwrap().join(path);
        assert_eq!(sha256(&out.join(path)), sha256(&original), "{path}");
    }
    assert!(
        !out.join("tree/.pad").exists(),
        "pad files are never written"
    );
    let checked = lt_tool(&[&"check", &torrent, &out]);
    let counts: Vec<&str> = checked.split_whitespace().collect();
    assert_eq!(
        counts[0], counts[1],
        "libtorrent finds every piece: {checked}"
    );
}
