//! .torrent files across implementations: torrents made by mktorrent and
//! transmission-create parse with the info-hash libtorrent computes, and
//! torrents made by `ringseed create` are accepted by transmission-show and
//! libtorrent with the same info-hash, and libtorrent finds every piece valid.
//!
//! These need Debian's mktorrent, transmission-cli and python3-libtorrent;
//! `cargo test` skips them, `scripts/test` (and CI) runs them.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use ringseed_engine::io::files::DataPaths;
use ringseed_engine::io::hasher::verify;
use ringseed_engine::proto::layout::Layout;
use ringseed_engine::Metainfo;

fn parse(path: &Path) -> Metainfo {
    Metainfo::from_bytes(&std::fs::read(path).unwrap())
        .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()))
}

/// ringseed's info-hash equals libtorrent's, and ringseed's own check of the
/// data finds every piece valid.
fn assert_agrees_with_libtorrent(torrent: &Path, data: &Path) -> Metainfo {
    let m = parse(torrent);
    let lt_hash = lt_tool(&[&"info-hash", &torrent]);
    assert_eq!(
        m.info_hash.to_hex(),
        lt_hash.trim(),
        "{}",
        torrent.display()
    );
    let layout = Layout::new(&m.info);
    let report = verify(
        &layout,
        &m.info.pieces,
        &DataPaths::locate(&m.info, data),
        2,
        &(),
    );
    assert!(
        report.is_complete(),
        "{}: bad pieces {:?}",
        torrent.display(),
        report.bad_pieces
    );
    m
}

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let single = dir.join("single.bin");
    write_data(&single, 3_333_333, 11);
    vec![single, write_tree(dir)]
}

#[test]
#[ignore = "needs mktorrent, transmission-cli, python3-libtorrent: run by scripts/test"]
fn mktorrent_torrents_parse_with_libtorrents_info_hash() {
    require_program("mktorrent", "mktorrent");
    require_libtorrent();
    let dir = tempfile::tempdir().unwrap();
    for input in inputs(dir.path()) {
        // mktorrent's -l is log2 of the piece length (15..=28): 32 KiB to 1 MiB.
        for log2 in [15, 16, 18, 20] {
            let torrent = dir.path().join(format!("mk-{log2}.torrent"));
            let _ = std::fs::remove_file(&torrent);
            run_ok(
                Command::new("mktorrent")
                    .args([
                        "-a",
                        "http://127.0.0.1:6969/announce",
                        "-w",
                        "http://127.0.0.1/ws",
                    ])
                    .args([
                        "-l",
                        &log2.to_string(),
                        "-c",
                        "made by mktorrent",
                        "-p",
                        "-o",
                    ])
                    .arg(&torrent)
                    .arg(&input),
            );
            let m = assert_agrees_with_libtorrent(&torrent, &input);
            assert_eq!(m.info.piece_length, 1 << log2);
            assert!(m.info.private);
            assert_eq!(m.tracker_urls(), ["http://127.0.0.1:6969/announce"]);
            assert_eq!(m.web_seeds, ["http://127.0.0.1/ws"]);
            assert_eq!(m.comment.as_deref(), Some("made by mktorrent"));
        }
    }
}

#[test]
#[ignore = "needs mktorrent, transmission-cli, python3-libtorrent: run by scripts/test"]
fn transmission_create_torrents_parse_with_libtorrents_info_hash() {
    require_program("transmission-create", "transmission-cli");
    require_libtorrent();
    let dir = tempfile::tempdir().unwrap();
    for input in inputs(dir.path()) {
        for kib in [16, 64, 1024] {
            let torrent = dir.path().join(format!("tr-{kib}.torrent"));
            let _ = std::fs::remove_file(&torrent);
            run_ok(
                Command::new("transmission-create")
                    .args(["-t", "udp://127.0.0.1:6969", "-s", &kib.to_string(), "-o"])
                    .arg(&torrent)
                    .arg(&input),
            );
            let m = assert_agrees_with_libtorrent(&torrent, &input);
            assert_eq!(m.info.piece_length, kib << 10);
            assert_eq!(m.tracker_urls(), ["udp://127.0.0.1:6969"]);
        }
    }
}

#[test]
#[ignore = "needs mktorrent, transmission-cli, python3-libtorrent: run by scripts/test"]
fn ringseed_torrents_are_accepted_by_transmission_and_libtorrent() {
    require_program("transmission-show", "transmission-cli");
    require_libtorrent();
    let dir = tempfile::tempdir().unwrap();
    for input in inputs(dir.path()) {
        for piece_size in ["16K", "256K", "1M", "auto"] {
            let torrent = dir.path().join(format!("rs-{piece_size}.torrent"));
            run_ok(
                ringseed()
                    .arg("create")
                    .arg(&input)
                    .arg("-o")
                    .arg(&torrent)
                    .args(["--piece-size", piece_size, "--force"])
                    .args([
                        "-t",
                        "http://127.0.0.1:6969/announce",
                        "-t",
                        "udp://127.0.0.1:6969",
                    ]),
            );
            let m = parse(&torrent);
            let hex = m.info_hash.to_hex();

            let lt_hash = lt_tool(&[&"info-hash", &torrent]);
            assert_eq!(
                lt_hash.trim(),
                hex,
                "libtorrent's info-hash of {piece_size}"
            );

            let show = run_ok(Command::new("transmission-show").arg(&torrent));
            assert!(
                show.to_lowercase().contains(&hex),
                "transmission-show does not report {hex}:\n{show}"
            );
            for f in &m.info.files {
                let name = f.path.file_name().unwrap().to_str().unwrap();
                assert!(
                    show.contains(name),
                    "transmission-show lists {name}:\n{show}"
                );
            }

            // libtorrent checks the data itself: every piece must be valid.
            let save_dir = input.parent().unwrap();
            let checked = lt_tool(&[&"check", &torrent, &save_dir]);
            let (have, total) = checked.trim().split_once(' ').unwrap();
            assert_eq!(
                have, total,
                "libtorrent found pieces invalid ({piece_size}): {checked}"
            );
            assert_eq!(total.parse::<usize>().unwrap(), m.info.num_pieces());
        }
    }
}
