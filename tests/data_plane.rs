//! Where io_uring is blocked: `ringseed seed` under a seccomp filter that
//! fails the io_uring syscalls with EPERM, as Docker's default profile does.
//! `--io auto` falls back to the epoll data plane, says why, and serves a
//! real client; `--io uring` refuses to start and says what to change. (The
//! daemon's case is in tests/daemon.rs; the rest of the suite runs on both
//! planes through `RINGSEED_IO`, see scripts/test.)

mod common;

use std::fs::File;

use common::*;

#[test]
fn uring_under_a_seccomp_filter_refuses_and_says_what_to_change() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("data.bin");
    write_data(&file, 1 << 20, 5);
    let mut cmd = ringseed();
    deny_io_uring(&mut cmd)
        .args(["seed", "--io", "uring", "--listen", "127.0.0.1:0"])
        .arg("--state")
        .arg(dir.path().join("state"))
        .arg(&file);
    let out = run(&mut cmd);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("io_uring is forbidden"), "{stderr}");
    assert!(stderr.contains("seccomp"), "{stderr}");
    assert!(stderr.contains("--io auto"), "{stderr}");
}

#[test]
fn an_unknown_data_plane_is_refused_naming_it() {
    let out = run(ringseed().args(["seed", "--io", "kqueue", "x"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("kqueue"), "{stderr}");
}

#[test]
#[ignore = "needs python3-libtorrent: run by scripts/test"]
fn auto_under_a_seccomp_filter_serves_libtorrent_on_epoll() {
    require_libtorrent();
    let p = Payload::new(48 << 20, 21, "256K", &[]);
    let log_path = p.dir.path().join("seed.log");
    let mut cmd = ringseed();
    deny_io_uring(&mut cmd)
        .env_remove("RINGSEED_IO")
        .stderr(File::create(&log_path).unwrap());
    let seeder =
        SeedProcess::start_from(cmd, "127.0.0.1:0", &[&p.torrent, &"--data", &p.seed_dir()]);
    assert!(seeder.banner.contains("epoll workers"), "{}", seeder.banner);
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("running the epoll data plane"), "{log}");
    assert!(log.contains("seccomp"), "{log}");

    let dir = p.dir.path().join("lt");
    std::fs::create_dir_all(&dir).unwrap();
    wait_leecher(spawn_lt_leecher(
        &p.torrent,
        &dir,
        Some(seeder.addr),
        "127.0.0.11",
    ));
    p.assert_downloaded(&dir);
    assert!(seeder.stop().success());
}
