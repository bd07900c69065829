//! The `ringseed` binary as a user runs it: create, info and verify, and
//! their errors and exit codes.

mod common;

use common::*;

#[test]
fn create_info_verify_single_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("image.iso");
    write_data(&data, 5_000_000, 7);
    let torrent = dir.path().join("image.torrent");
    let out = create_torrent(
        &data,
        &torrent,
        &[
            "-t",
            "http://127.0.0.1:1/announce",
            "-t",
            "udp://127.0.0.1:2",
            "-w",
            "http://127.0.0.1:3/image.iso",
            "--comment",
            "hi",
            "--private",
        ],
    );
    assert!(out.contains("magnet:?xt=urn:btih:"), "{out}");

    let info = info_json(&torrent);
    let hash = info["info_hash"].as_str().unwrap();
    assert_eq!(hash.len(), 40);
    assert!(hash
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    assert_eq!(info["name"], "image.iso");
    assert_eq!(info["total_size"], 5_000_000);
    assert_eq!(info["piece_length"], 256 * 1024);
    assert_eq!(info["num_pieces"], 20);
    assert_eq!(info["files"][0]["path"], "image.iso");
    assert_eq!(info["files"][0]["length"], 5_000_000);
    assert_eq!(
        info["trackers"],
        serde_json::json!(["http://127.0.0.1:1/announce", "udp://127.0.0.1:2"])
    );
    assert_eq!(
        info["web_seeds"],
        serde_json::json!(["http://127.0.0.1:3/image.iso"])
    );
    assert_eq!(info["private"], true);
    assert_eq!(info["comment"], "hi");
    assert!(info["magnet"].as_str().unwrap().contains(hash));

    let text = run_ok(ringseed().arg("info").arg(&torrent));
    assert!(text.contains(hash) && text.contains("image.iso"), "{text}");

    // The data itself, or the directory that holds it.
    for path in [&data, &dir.path().to_path_buf()] {
        let out = run_ok(ringseed().arg("verify").arg(&torrent).arg(path));
        assert!(out.starts_with("OK: 20/20 pieces good"), "{out}");
    }
}

#[test]
fn verify_reports_bad_pieces_and_damaged_files_with_exit_3() {
    let dir = tempfile::tempdir().unwrap();
    let tree = write_tree(dir.path());
    let torrent = dir.path().join("tree.torrent");
    create_torrent(&tree, &torrent, &["-l", "64K"]);
    let info = info_json(&torrent);
    let paths: Vec<_> = info["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].clone())
        .collect();
    assert_eq!(
        paths,
        [
            "tree/a.bin",
            "tree/b/c.bin",
            "tree/b/d/e.bin",
            "tree/empty",
            "tree/z.txt"
        ]
    );

    // Flip one byte in the middle of e.bin.
    let victim = tree.join("b/d/e.bin");
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[1_500_000] ^= 0xff;
    std::fs::write(&victim, bytes).unwrap();

    let out = run(ringseed()
        .args(["verify", "--json"])
        .arg(&torrent)
        .arg(&tree));
    assert_eq!(out.status.code(), Some(3));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["complete"], false);
    let total = report["num_pieces"].as_u64().unwrap();
    assert_eq!(report["good_pieces"].as_u64().unwrap(), total - 1);
    // (1_234_567 + 16_383 + 1_500_000) / 65536 = piece 41.
    assert_eq!(report["bad_pieces"], serde_json::json!([41]));
    let damaged = report["damaged_files"].as_array().unwrap();
    assert_eq!(damaged.len(), 1);
    assert!(damaged[0].as_str().unwrap().ends_with("b/d/e.bin"));

    // A missing file: its pieces fail and the file is named.
    std::fs::remove_file(tree.join("a.bin")).unwrap();
    let out = run(ringseed().arg("verify").arg(&torrent).arg(&tree));
    assert_eq!(out.status.code(), Some(3));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("a.bin: missing"), "{text}");
}

#[test]
fn bad_input_gets_one_clear_error_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &[u8], &str); 4] = [
        ("garbage.torrent", b"hello", "invalid bencode at byte 0"),
        ("truncated.torrent", b"d4:infod4:name", "unexpected end of input"),
        ("wrong-type.torrent", b"d4:infoi1ee", "field `info` at byte 7 is a integer"),
        (
            "traversal.torrent",
            b"d4:infod5:filesld6:lengthi1e4:pathl2:..6:passwdeee4:name1:x12:piece lengthi16384e6:pieces20:aaaaaaaaaaaaaaaaaaaaee",
            "unsafe file path \"..\"",
        ),
    ];
    for (name, bytes, expected) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let out = run(ringseed().arg("info").arg(&path));
        assert_eq!(out.status.code(), Some(1), "{name}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{name}: {stderr}");
        assert!(stderr.contains(name), "error names the file: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "printed once: {stderr}");
    }
    let out = run(ringseed()
        .arg("info")
        .arg(dir.path().join("absent.torrent")));
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn create_refuses_to_overwrite_and_bad_piece_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("f");
    write_data(&data, 100_000, 1);
    let torrent = dir.path().join("f.torrent");
    std::fs::write(&torrent, b"keep me").unwrap();
    let out = run(ringseed().arg("create").arg(&data).arg("-o").arg(&torrent));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(std::fs::read(&torrent).unwrap(), b"keep me");
    create_torrent(&data, &torrent, &["--force"]);
    assert_eq!(info_json(&torrent)["total_size"], 100_000);

    let out = run(ringseed()
        .arg("create")
        .arg(&data)
        .args(["--piece-size", "1000"]));
    assert_eq!(
        out.status.code(),
        Some(2),
        "a bad flag value is a usage error"
    );

    let empty = dir.path().join("empty");
    std::fs::write(&empty, b"").unwrap();
    let out = run(ringseed()
        .arg("create")
        .arg(&empty)
        .arg("-o")
        .arg(dir.path().join("e.torrent")));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("holds no data"));
}

#[test]
fn flags_come_from_the_environment_too() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("f");
    write_data(&data, 300_000, 2);
    let torrent = dir.path().join("env.torrent");
    run_ok(
        ringseed()
            .arg("create")
            .arg(&data)
            .env("RINGSEED_OUTPUT", &torrent)
            .env("RINGSEED_PIECE_SIZE", "32K")
            .env("RINGSEED_TRACKERS", "http://a/announce,http://b/announce"),
    );
    let info = info_json(&torrent);
    assert_eq!(info["piece_length"], 32768);
    assert_eq!(info["trackers"].as_array().unwrap().len(), 2);
}

#[test]
fn created_torrents_are_reproducible_without_a_date() {
    let dir = tempfile::tempdir().unwrap();
    let tree = write_tree(dir.path());
    let make = |out: &str| {
        let path = dir.path().join(out);
        create_torrent(&tree, &path, &["--no-date"]);
        std::fs::read(path).unwrap()
    };
    assert_eq!(make("1.torrent"), make("2.torrent"));
}

#[test]
fn seed_refuses_data_that_does_not_match_and_names_the_bad_pieces() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("f.iso");
    write_data(&data, 1 << 20, 3);
    let torrent = dir.path().join("f.torrent");
    create_torrent(&data, &torrent, &["-l", "64K"]);
    let mut bytes = std::fs::read(&data).unwrap();
    bytes[5 * 65536 + 10] ^= 1;
    bytes[9 * 65536] ^= 1;
    std::fs::write(&data, bytes).unwrap();
    let out = run(ringseed()
        .arg("seed")
        .arg(&torrent)
        .args(["--listen", "127.0.0.1:0"]));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("2 of 16 pieces do not match"), "{stderr}");
    assert!(stderr.contains("bad pieces: 5, 9"), "{stderr}");
    assert!(stderr.contains("--assume-valid"), "{stderr}");
}

#[test]
fn seed_makes_a_torrent_for_a_plain_file_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("release.iso");
    write_data(&data, 3 << 20, 4);
    let state = dir.path().join("state");
    let seeder = SeedProcess::start(&[&data, &"--state", &state, &"--workers", &"1"]);
    assert!(
        seeder.banner.contains("seeding release.iso"),
        "{}",
        seeder.banner
    );
    assert!(seeder.magnet().starts_with("magnet:?xt=urn:btih:"));
    let made: Vec<_> = std::fs::read_dir(state.join("torrents")).unwrap().collect();
    assert_eq!(
        made.len(),
        1,
        "one .torrent written under the state directory"
    );
    let info = info_json(&made[0].as_ref().unwrap().path());
    assert_eq!(info["name"], "release.iso");
    assert!(seeder
        .magnet()
        .contains(info["info_hash"].as_str().unwrap()));

    let mut child = seeder.into_child();
    // SAFETY: signalling our own child by its PID.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success(), "SIGTERM is a clean stop");
}
