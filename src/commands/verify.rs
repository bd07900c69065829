//! `ringseed verify`: check data against a .torrent on all cores.

use std::time::Instant;

use ringseed_engine::io::files::{DataPaths, FileProblem};
use ringseed_engine::io::hasher::{thread_count, verify};
use ringseed_engine::proto::layout::Layout;
use serde_json::json;

use crate::cli::{Exit, VerifyArgs};
use crate::display::{human_bytes, HashProgress};

pub fn run(args: VerifyArgs) -> anyhow::Result<Exit> {
    let m = crate::setup::load_torrent(&args.torrent)?;
    if !args.data.exists() {
        anyhow::bail!("data path {} does not exist", args.data.display());
    }
    let layout = Layout::new(&m.info);
    let paths = DataPaths::locate(&m.info, &args.data);
    let threads = thread_count(args.hashing.threads);

    let started = Instant::now();
    let progress = HashProgress::new("verifying", layout.total_length());
    let report = verify(&layout, &m.info.pieces, &paths, threads, &progress);
    progress.finish();
    let elapsed = started.elapsed().as_secs_f64();
    let rate = layout.total_length() as f64 / elapsed.max(1e-9);

    let problem_text = |p: &FileProblem| match p {
        FileProblem::Missing => "missing".to_owned(),
        FileProblem::WrongSize { expected, actual } => {
            format!("size {actual}, expected {expected}")
        }
        FileProblem::Unreadable(e) => format!("unreadable: {e}"),
    };
    if args.json {
        let problems: Vec<_> = report
            .file_problems
            .iter()
            .map(|(f, p)| json!({ "path": paths.files[*f], "problem": problem_text(p) }))
            .collect();
        let damaged: Vec<_> = report
            .damaged_files
            .iter()
            .map(|&f| &paths.files[f])
            .collect();
        println!(
            "{}",
            json!({
                "info_hash": m.info_hash.to_hex(),
                "complete": report.is_complete(),
                "num_pieces": report.num_pieces,
                "good_pieces": report.good_pieces(),
                "bad_pieces": report.bad_pieces,
                "damaged_files": damaged,
                "file_problems": problems,
                "bytes": layout.total_length(),
                "seconds": elapsed,
                "bytes_per_second": rate,
                "threads": threads,
                "sha1_backend": ringseed_engine::hash::sha1_backend(),
            })
        );
    } else {
        println!(
            "{}: {}/{} pieces good ({} in {elapsed:.2} s, {}/s, {threads} threads, sha1 {})",
            if report.is_complete() { "OK" } else { "FAILED" },
            report.good_pieces(),
            report.num_pieces,
            human_bytes(layout.total_length()),
            human_bytes(rate as u64),
            ringseed_engine::hash::sha1_backend(),
        );
        for (f, p) in &report.file_problems {
            println!("  {}: {}", paths.files[*f].display(), problem_text(p));
        }
        for &f in &report.damaged_files {
            println!("  damaged: {}", paths.files[f].display());
        }
    }
    Ok(if report.is_complete() {
        Exit::Success
    } else {
        Exit::Mismatch
    })
}
