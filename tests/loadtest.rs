//! `ringseed loadtest` against real targets: a ringseed seed (throughput,
//! latency, checked pieces, the target's CPU and RSS; plain and encrypted
//! peers), idle connections, a
//! seeder that lies (caught by the checked sample), and UDP trackers (the
//! built-in one and opentracker).

mod common;

use std::process::Stdio;

use common::*;

fn loadtest(args: &[&dyn AsRef<std::ffi::OsStr>]) -> (Option<i32>, serde_json::Value, String) {
    let mut cmd = ringseed();
    cmd.arg("loadtest").arg("--json");
    for a in args {
        cmd.arg(a);
    }
    let out = run(&mut cmd);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("no JSON report ({e}):\n{stdout}\n{stderr}"));
    (out.status.code(), json, stderr)
}

fn seeded(len: usize) -> (tempfile::TempDir, std::path::PathBuf, SeedProcess) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("payload.iso");
    write_data(&data, len, 5);
    let torrent = dir.path().join("payload.torrent");
    create_torrent(&data, &torrent, &["--piece-size", "256K"]);
    let seed = SeedProcess::start(&[&torrent, &"--data", &dir.path(), &"--no-announce"]);
    (dir, torrent, seed)
}

#[test]
fn simulated_peers_download_checked_pieces_from_a_ringseed_seed() {
    let (_dir, torrent, seed) = seeded(8 << 20);
    let pid = seed.pid();
    let (code, r, stderr) = loadtest(&[
        &"--target",
        &seed.addr.to_string(),
        &"--torrent",
        &torrent,
        &"--peers",
        &"50",
        &"--duration",
        &"2",
        &"--verify",
        &"0.5",
        &"--target-pid",
        &pid.to_string(),
    ]);
    assert_eq!(code, Some(0), "{r}\n{stderr}");
    assert_eq!(r["connections_made"], 50, "{r}");
    assert_eq!(r["handshakes"], 50, "{r}");
    assert_eq!(r["unchoked"], 50, "{r}");
    assert_eq!(r["connections_failed"], 0);
    assert!(r["blocks"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(
        r["bytes"].as_u64().unwrap(),
        r["blocks"].as_u64().unwrap() * 16384,
        "256 KiB pieces: every block is 16 KiB"
    );
    assert!(r["pieces_verified"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["verify_failures"], 0);
    assert!(r["latency_us"]["p50"].as_u64().unwrap() > 0);
    assert!(
        r["latency_us"]["p99"].as_u64() >= r["latency_us"]["p50"].as_u64(),
        "{r}"
    );
    assert!(r["target_process"]["rss_kib"].as_u64().unwrap() > 0, "{r}");
    assert!(r["target_process"]["cpu_s"].as_f64().unwrap() > 0.0, "{r}");
    assert!(stderr.contains("connected 50"), "live lines: {stderr}");
}

#[test]
fn encrypted_peers_get_checked_pieces_over_rc4_and_over_an_obfuscated_handshake() {
    let (_dir, torrent, seed) = seeded(4 << 20);
    for encryption in ["rc4", "plaintext"] {
        let (code, r, stderr) = loadtest(&[
            &"--target",
            &seed.addr.to_string(),
            &"--torrent",
            &torrent,
            &"--peers",
            &"10",
            &"--duration",
            &"1",
            &"--verify",
            &"1",
            &"--encryption",
            &encryption,
        ]);
        assert_eq!(code, Some(0), "{r}\n{stderr}");
        assert_eq!(r["handshakes"], 10, "{encryption}: {r}");
        assert!(r["pieces_verified"].as_u64().unwrap() > 0, "{r}");
        assert_eq!(r["verify_failures"], 0, "{r}");
    }
    let (status, out) = seed.stop_with_output();
    assert!(status.success());
    let counts = figures_of(&out, "connections: ");
    assert_eq!(
        (counts["mse_rc4"], counts["mse_plaintext"], counts["plain"]),
        (10, 10, 0),
        "{out}"
    );
}

#[test]
fn idle_peers_connect_and_ask_for_nothing() {
    let (_dir, torrent, seed) = seeded(1 << 20);
    let (code, r, _) = loadtest(&[
        &"--target",
        &seed.addr.to_string(),
        &"--torrent",
        &torrent,
        &"--peers",
        &"200",
        &"--pattern",
        &"idle",
        &"--duration",
        &"1.5",
        &"--ramp-up",
        &"0.5",
    ]);
    assert_eq!(code, Some(0));
    assert_eq!(r["handshakes"], 200, "{r}");
    assert_eq!(r["blocks"], 0, "{r}");
}

#[test]
fn an_unknown_torrent_gets_no_handshake() {
    let (dir, _, seed) = seeded(1 << 20);
    let other = dir.path().join("other.bin");
    write_data(&other, 1 << 20, 6);
    let other_torrent = dir.path().join("other.torrent");
    create_torrent(&other, &other_torrent, &[]);
    let (code, r, _) = loadtest(&[
        &"--target",
        &seed.addr.to_string(),
        &"--torrent",
        &other_torrent,
        &"--peers",
        &"5",
        &"--duration",
        &"1",
    ]);
    assert_eq!(code, Some(0));
    assert_eq!(r["handshakes"], 0, "{r}");
    assert_eq!(r["connections_closed_by_target"], 5, "{r}");
}

#[test]
#[ignore = "needs python3: run by scripts/test"]
fn a_lying_seeder_is_caught_by_the_checked_sample() {
    require_program("python3", "python3");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("payload.iso");
    write_data(&data, 2 << 20, 8);
    let torrent = dir.path().join("payload.torrent");
    create_torrent(&data, &torrent, &["--piece-size", "64K"]);
    let addr = format!("127.0.0.91:{}", free_port());
    let mut liar = lying_seed(&torrent, &data, &addr, &["--corrupt-fraction", "0.5"]);
    let (code, r, stderr) = loadtest(&[
        &"--target",
        &addr,
        &"--torrent",
        &torrent,
        &"--peers",
        &"4",
        &"--duration",
        &"2",
        &"--verify",
        &"1",
        &"--pattern",
        &"sequential",
    ]);
    // SAFETY: signalling our own child by its PID.
    unsafe { libc::kill(liar.id() as i32, libc::SIGTERM) };
    let _ = liar.wait();
    assert_eq!(code, Some(3), "a mismatch is exit status 3: {r}");
    assert!(r["verify_failures"].as_u64().unwrap() > 0, "{r}");
    assert!(stderr.contains("do not match"), "{stderr}");
}

#[test]
fn tracker_mode_loads_the_built_in_tracker() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut tracker = spawn_until_line(
        ringseed()
            .args(["tracker", "--udp", &addr])
            .stderr(Stdio::null()),
        "tracker on udp://",
    );
    let (code, r, _) = loadtest(&[
        &"--mode",
        &"tracker",
        &"--target",
        &addr,
        &"--duration",
        &"1",
        &"--target-pid",
        &tracker.id().to_string(),
    ]);
    // SAFETY: signalling our own child by its PID.
    unsafe { libc::kill(tracker.id() as i32, libc::SIGTERM) };
    let _ = tracker.wait();
    assert_eq!(code, Some(0), "{r}");
    assert!(r["announces"].as_u64().unwrap() > 100, "{r}");
    assert!(r["scrapes"].as_u64().unwrap() > 0, "{r}");
    assert!(r["responses_per_s"].as_f64().unwrap() > 0.0);
    assert!(!r["target_cpu_s"].is_null());
}

#[test]
#[ignore = "needs opentracker: run by scripts/test"]
fn tracker_mode_loads_opentracker() {
    // Debian's opentracker tracks only its whitelist (and drops announces
    // of other torrents): announce a whitelisted torrent.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("payload.iso");
    write_data(&data, 1 << 16, 9);
    let torrent = dir.path().join("payload.torrent");
    create_torrent(&data, &torrent, &[]);
    let hash = info_json(&torrent)["info_hash"]
        .as_str()
        .unwrap()
        .to_owned();
    let port = free_port();
    let _tracker = OpenTracker::start("127.0.0.1", port, &hash);
    let (code, r, _) = loadtest(&[
        &"--mode",
        &"tracker",
        &"--target",
        &format!("127.0.0.1:{port}"),
        &"--torrent",
        &torrent,
        &"--duration",
        &"1",
    ]);
    assert_eq!(code, Some(0), "{r}");
    assert!(r["announces"].as_u64().unwrap() > 100, "{r}");
    assert_eq!(r["errors"], 0, "{r}");
}

#[test]
fn peers_announce_through_the_tracker_before_they_connect() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("payload.iso");
    write_data(&data, 1 << 20, 10);
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/announce");
    let torrent = dir.path().join("payload.torrent");
    create_torrent(&data, &torrent, &["-t", &url]);
    let seed = SeedProcess::start(&[
        &torrent,
        &"--data",
        &dir.path(),
        &"--run-tracker",
        &format!("127.0.0.1:{port}"),
    ]);
    let metainfo =
        ringseed_engine::Metainfo::from_bytes(&std::fs::read(&torrent).unwrap()).unwrap();
    // The seeder's own announce has gone through: the tracker knows it.
    wait_until_seeded(&url, metainfo.info_hash.0);
    let (code, r, _) = loadtest(&[
        &"--target",
        &seed.addr.to_string(),
        &"--torrent",
        &torrent,
        &"--peers",
        &"20",
        &"--duration",
        &"1",
        &"--announce",
        &url,
    ]);
    assert_eq!(code, Some(0), "{r}");
    assert_eq!(r["announces"]["ok"], 20, "{r}");
    assert_eq!(r["announces"]["failed"], 0, "{r}");
    assert!(
        r["announces"]["peers_returned"].as_u64().unwrap() > 0,
        "the tracker knew the seeder and the other simulated peers: {r}"
    );
    assert_eq!(r["handshakes"], 20, "{r}");
}
