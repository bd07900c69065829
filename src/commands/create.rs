//! `ringseed create`: hash a file or directory into a .torrent.

use std::io::Write;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use ringseed_engine::create::{collect_files, create, CreateOptions};
use ringseed_engine::MagnetLink;

use crate::cli::{CreateArgs, Exit, PieceSize};
use crate::display::{human_bytes, HashProgress};

pub fn run(args: CreateArgs) -> anyhow::Result<Exit> {
    let total: u64 = collect_files(&args.path)?.iter().map(|(_, len)| len).sum();
    let options = CreateOptions {
        trackers: args.trackers.tiers(),
        web_seeds: args.web_seeds.clone(),
        piece_length: match args.piece_size {
            PieceSize::Auto => None,
            PieceSize::Bytes(n) => Some(n),
        },
        private: args.private,
        comment: args.comment.clone(),
        created_by: Some(concat!("ringseed/", env!("CARGO_PKG_VERSION")).to_owned()),
        creation_date: (!args.no_date).then(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64)
        }),
        threads: args.hashing.threads.map_or(0, |n| n.get()),
    };

    let output = match &args.output {
        Some(path) => path.clone(),
        None => {
            let name = args.path.canonicalize()?;
            let name = name.file_name().unwrap_or(name.as_os_str());
            format!("{}.torrent", name.to_string_lossy()).into()
        }
    };
    if output.exists() && !args.force {
        bail!("{} exists (use --force to overwrite)", output.display());
    }

    let started = Instant::now();
    let progress = HashProgress::new("hashing", total);
    let created = create(&args.path, &options, &progress)
        .with_context(|| format!("cannot create a torrent of {}", args.path.display()))?;
    progress.finish();
    let elapsed = started.elapsed().as_secs_f64();

    let m = &created.metainfo;
    write_atomically(&output, &created.bytes)?;

    println!("created {}", output.display());
    println!("info-hash:    {}", m.info_hash);
    println!(
        "data:         {} in {} file(s), {} pieces of {}",
        human_bytes(m.total_length()),
        m.info.files.len(),
        m.info.num_pieces(),
        human_bytes(m.info.piece_length)
    );
    println!(
        "hashed in:    {elapsed:.2} s ({}/s)",
        human_bytes((m.total_length() as f64 / elapsed.max(1e-9)) as u64)
    );
    println!("magnet:       {}", MagnetLink::from_metainfo(m));
    Ok(Exit::Success)
}

/// Writes `bytes` to a temporary file beside `path`, then renames it, so a
/// crash never leaves a half-written .torrent.
fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(".".as_ref());
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name()
            .map_or("torrent".into(), |n| n.to_string_lossy()),
        std::process::id()
    ));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("cannot write {}", path.display()))
}
