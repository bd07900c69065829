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

/// Raises this process's soft open-file limit to its hard limit, for tests
/// that hold thousands of client sockets; returns the new soft limit.
fn raise_own_open_file_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit on a struct we own.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
    limit.rlim_cur
}

/// One HTTP exchange with `addr`; the whole reply.
fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    String::from_utf8_lossy(&reply).into_owned()
}

/// Regression: the HTTP tracker served one connection at a time per
/// worker, each for up to 5 s, so 2,000 slow clients stopped it answering.
/// Now 2,000 clients trickling their requests a byte at a time hold 2,000
/// slots of the event loops; a real announce is answered among them, not
/// after them, and each slow client is closed at its deadline.
#[test]
fn two_thousand_slow_http_clients_do_not_delay_an_announce() {
    const SLOW: usize = 2000;
    let limit = raise_own_open_file_limit();
    assert!(
        limit > SLOW as u64 + 200,
        "this test needs {} open files; the hard limit is {limit}",
        SLOW + 200
    );
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut tracker = spawn_until_line(
        ringseed().args(["tracker", "--http", &listen, "--workers", "2"]),
        "tracker on http",
    );
    let addr: std::net::SocketAddr = listen.parse().unwrap();
    let slow: Vec<TcpStream> = (0..SLOW)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    // Each slow client sends a byte of its request every 300 ms, as long as
    // the server keeps it.
    let trickling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let trickler = {
        let trickling = std::sync::Arc::clone(&trickling);
        std::thread::spawn(move || {
            use std::io::Write;
            let mut slow = slow;
            let request = b"GET /announce?info_hash=";
            let mut sent = 0;
            while trickling.load(std::sync::atomic::Ordering::Relaxed) {
                for c in &mut slow {
                    let _ = c.write(&request[sent % request.len()..][..1]);
                }
                sent += 1;
                std::thread::sleep(Duration::from_millis(300));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let announce = format!("/announce?info_hash={}&port=6881&left=0", "%22".repeat(20));
    let asked = Instant::now();
    let reply = http_get(addr, &announce);
    let waited = asked.elapsed();
    eprintln!("announce answered in {waited:?} among {SLOW} slow clients");
    assert!(reply.contains("8:interval"), "{reply}");
    assert!(
        waited < ringseed_engine::io::tracker_server::REQUEST_DEADLINE,
        "the announce waited {waited:?} behind slow clients"
    );
    // Past their deadline, the slow clients are closed, counted.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stats = http_get(addr, "/stats");
        let timed_out: u64 = stats
            .split("\"timed_out\":")
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no timed_out in {stats}"));
        if timed_out == SLOW as u64 {
            break;
        }
        assert!(
            timed_out < SLOW as u64 && Instant::now() < deadline,
            "{stats}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    trickling.store(false, std::sync::atomic::Ordering::Relaxed);
    trickler.join().unwrap();
    // SAFETY: signalling our own child by its PID.
    unsafe { libc::kill(tracker.id() as i32, libc::SIGTERM) };
    assert!(tracker.wait().unwrap().success());
}

/// Regression: a torrent of 100,000 files failed with `Too many open files`
/// in `seed` and `download` (one descriptor per file for the life of the
/// torrent). Now a mapped file needs no descriptor and reads and writes take
/// theirs from a bounded pool: the whole torrent is made, seeded and
/// downloaded, every byte compared, with at most 4,096 open files.
#[test]
fn a_torrent_of_100_000_files_seeds_and_downloads_under_ulimit_n_4096() {
    const FILES: usize = 100_000;
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("mirror");
    // 100 directories of 1,000 files of 1 to 700 bytes (35 MB), some larger
    // than a block so that both mapped and read files are served.
    let size = |i: usize| {
        if i % 1000 == 0 {
            40_000
        } else {
            i * 37 % 700 + 1
        }
    };
    let path = |i: usize| tree.join(format!("d{:02}/f{i:05}", i / 1000));
    for i in 0..FILES {
        write_data(&path(i), size(i), i as u64);
    }
    let torrent = dir.path().join("mirror.torrent");
    let mut create = ringseed();
    limit_open_files(&mut create, 4096)
        .args(["create"])
        .arg(&tree)
        .arg("-o")
        .arg(&torrent);
    create.args(["--piece-size", "256K"]);
    run_ok(&mut create);

    let mut seed = ringseed();
    limit_open_files(&mut seed, 4096);
    let seeder = SeedProcess::start_from(
        seed,
        "127.0.0.1:0",
        &[&torrent, &"--data", &tree, &"--no-announce"],
    );
    let out = dir.path().join("out");
    let mut download = ringseed();
    limit_open_files(&mut download, 4096)
        .arg("download")
        .arg(&torrent)
        .arg("-o")
        .arg(&out)
        .arg("--state")
        .arg(dir.path().join("state"))
        .args(["--listen", "127.0.0.1:0", "--no-announce"])
        .args(["--peer", &seeder.addr.to_string()]);
    let stdout = run_ok(&mut download);
    assert!(stdout.contains("complete:"), "{stdout}");
    assert!(seeder.stop().success());
    for i in 0..FILES {
        let relative = path(i).strip_prefix(&tree).unwrap().to_path_buf();
        let got = std::fs::read(out.join("mirror").join(&relative))
            .unwrap_or_else(|e| panic!("{}: {e}", relative.display()));
        assert_eq!(
            got,
            std::fs::read(path(i)).unwrap(),
            "{}",
            relative.display()
        );
    }
}
