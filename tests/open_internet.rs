//! Attacks on a seeder exposed to the internet, as regressions (issue 13):
//! whatever slow, silent or numerous clients do, a real peer is served.
//! The in-process cases (the connection cap, a trickled handshake) are in
//! tests/seed_wire.rs; these need a whole process and its descriptor limit.

mod common;

use std::fs::File;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

/// `ringseed seed` of a 4 MiB payload with at most 128 open files, its log
/// (stderr) in a file, no per-address limit (every client is 127.0.0.1),
/// and `extra` on its command line.
fn seed_with_128_files(
    extra: &[&dyn AsRef<std::ffi::OsStr>],
) -> (Payload, SeedProcess, std::path::PathBuf) {
    let p = Payload::new(4 << 20, 17, "256K", &[]);
    let log_path = p.dir.path().join("seed.log");
    let mut cmd = ringseed();
    limit_open_files(&mut cmd, 128).stderr(File::create(&log_path).unwrap());
    let data = p.seed_dir();
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![
        &p.torrent,
        &"--data",
        &data,
        &"--max-connections-per-ip",
        &"0",
    ];
    args.extend_from_slice(extra);
    let seeder = SeedProcess::start_from(cmd, "127.0.0.1:0", &args);
    (p, seeder, log_path)
}

/// `ringseed download` of `p` from `seeder` alone; checks every byte.
fn download_from(p: &Payload, seeder: &SeedProcess) {
    let out = p.dir.path().join("out");
    let state = p.dir.path().join("state");
    let peer = seeder.addr.to_string();
    download_ok(
        &p.torrent,
        &out,
        &state,
        &[&"--peer", &peer, &"--no-announce"],
    );
    p.assert_downloaded(&out);
}

/// Regression: 1,100 silent connections against a seeder with `ulimit -n
/// 1024` locked out every real peer, and the log got ten `accept failed:
/// Too many open files` lines a second. The connection cap now follows the
/// open-file limit (each worker its share), and at the cap the oldest
/// connections still in their handshake make room.
#[test]
fn silent_clients_beyond_the_open_file_limit_do_not_lock_out_a_real_peer() {
    let (p, seeder, log_path) = seed_with_128_files(&[]);
    let silent: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect(seeder.addr).unwrap())
        .collect();
    // The attack holds: the real peer comes once the silent clients have
    // been there a while (a connection younger than a second is not evicted,
    // so a burst cannot evict itself).
    std::thread::sleep(Duration::from_millis(1500));
    let attack = Instant::now();
    download_from(&p, &seeder);
    // Served at its first try: before it would dial again (10 s), and before
    // the silent clients' own handshake deadline freed their slots.
    let served_after = attack.elapsed();
    assert!(
        served_after < Duration::from_secs(8),
        "the real peer waited {served_after:?}"
    );
    drop(silent);
    assert!(seeder.stop().success());
    // A burst may briefly take descriptors beyond the cap (accepted, then
    // refused); reports of it stay bounded.
    let log = std::fs::read_to_string(&log_path).unwrap();
    let reports = log.matches("accept failed").count();
    assert!(reports <= 6, "{reports} reports of failed accepts:\n{log}");
}

/// When descriptors run out anyway (a cap set above the open-file limit),
/// the cap comes down to what the process holds (with a warning), the
/// oldest connections still in their handshake go, failed accepts are
/// logged at a bounded rate, and the real peer is served. (It may have to
/// dial again to get in: that is the price of a cap above the limit.)
#[test]
fn out_of_descriptors_the_oldest_handshakes_go_and_a_real_peer_is_served() {
    // A cap above the descriptor limit: descriptors run out first.
    let (p, seeder, log_path) = seed_with_128_files(&[&"--max-connections", &"1000"]);
    // More silent clients than the seeder has descriptors.
    let silent: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect(seeder.addr).unwrap())
        .collect();
    download_from(&p, &seeder);
    drop(silent);
    let (status, _) = seeder.stop_with_output();
    assert!(status.success());
    let log = std::fs::read_to_string(&log_path).unwrap();
    let reports = log.matches("accept failed").count();
    assert!(reports >= 1, "descriptors never ran out:\n{log}");
    assert!(
        log.contains("out of file descriptors: at most"),
        "the cap did not come down:\n{log}"
    );
    // Two workers, one report each per 10 s at most.
    assert!(reports <= 6, "{reports} reports of failed accepts:\n{log}");
}

/// A tracker that accepts connections and never answers.
fn silent_tracker() -> (std::net::TcpListener, String) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/announce", listener.local_addr().unwrap());
    (listener, url)
}

/// Regression: with a tracker that never answers, `seed` took 14 s to stop
/// on SIGTERM and `download` ran 20 s past the end of its data; the last
/// announces get a short, bounded wait.
#[test]
fn an_unresponsive_tracker_does_not_hold_up_the_exit() {
    let (tracker, url) = silent_tracker();
    let p = Payload::new(1 << 20, 23, "256K", &["--tracker", &url]);
    let seeder = SeedProcess::start(&[&p.torrent, &"--data", &p.seed_dir()]);
    // The seeder's `started` announce is in flight: the tracker took it.
    let (_announce, _) = tracker.accept().unwrap();

    let out = p.dir.path().join("out");
    let state = p.dir.path().join("state");
    let peer = seeder.addr.to_string();
    let mut download = DownloadProcess::start(&p.torrent, &out, &state, &[&"--peer", &peer]);
    download.wait_for_line("complete:", Duration::from_secs(60));
    let completed = Instant::now();
    let (status, stdout, stderr) = download.wait(Duration::from_secs(60));
    assert!(status.success(), "{stdout}\n{stderr}");
    let after = completed.elapsed();
    assert!(
        after < Duration::from_secs(5),
        "download exited {after:?} after completing"
    );
    p.assert_downloaded(&out);

    let stopping = Instant::now();
    assert!(seeder.stop().success());
    let took = stopping.elapsed();
    assert!(took < Duration::from_secs(5), "seed took {took:?} to stop");
}
