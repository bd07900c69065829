//! What the daemon seeds and where each torrent comes from: the sources in
//! the watched directories (and those added with `ringseed ctl add`), the
//! state of each (waiting, checking, seeding, failed), and the decisions a
//! scan makes: seed a new source, recheck a changed one, drop a gone one.
//!
//! Scans stat files and compare stamps (size, mtime, inode); hashing runs on
//! the job thread ([`run_job`]). A source whose stamps match its resume
//! data is seeded at once, without hashing (fast resume).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringseed_engine::create::{collect_files, create, CreateOptions};
use ringseed_engine::io::files::DataPaths;
use ringseed_engine::io::hasher::{verify, Progress};
use ringseed_engine::io::resume::{stamps, FileStamp, ResumeData};
use ringseed_engine::io::storage::Torrent;
use ringseed_engine::policy::bitfield::Bitfield;
use ringseed_engine::proto::layout::Layout;
use ringseed_engine::{InfoHash, Metainfo};

use super::config::Config;
use crate::display::piece_ranges;

/// Where a torrent comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A .torrent file whose data is looked for by name in `data_dirs`.
    TorrentFile {
        /// The .torrent file.
        path: PathBuf,
        /// Where its data may be.
        data_dirs: Vec<PathBuf>,
    },
    /// A file or directory that ringseed makes a torrent of.
    Data {
        /// The file or directory.
        path: PathBuf,
        /// How the torrent is made.
        options: MakeOptions,
        /// Where its .torrent and magnet link are published.
        publish: PathBuf,
    },
}

/// How a torrent of a data directory's entry is made.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MakeOptions {
    /// One tier per tracker.
    pub trackers: Vec<String>,
    /// BEP 19 web seeds.
    pub web_seeds: Vec<String>,
    /// BEP 27.
    pub private: bool,
    /// 0: by size.
    pub piece_size: u64,
}

impl Source {
    /// The file or directory the source is (its identity in the catalog).
    pub fn path(&self) -> &Path {
        match self {
            Source::TorrentFile { path, .. } | Source::Data { path, .. } => path,
        }
    }
}

/// The identity of every file a source's state was computed from.
pub type Fingerprint = Vec<(PathBuf, Option<FileStamp>)>;

/// Where a source stands.
#[derive(Debug, Clone)]
pub enum State {
    /// Not ready to be checked: the reason (data not found, still being
    /// copied...).
    Waiting(String),
    /// Queued for hashing, or being hashed: bytes done of `total`.
    Checking {
        /// Whether the job thread has started it.
        started: Arc<AtomicBool>,
        /// Set to stop the job: its result would be thrown away.
        cancel: Arc<AtomicBool>,
        /// Bytes hashed so far.
        done: Arc<AtomicU64>,
        /// Bytes to hash.
        total: u64,
    },
    /// Served.
    Seeding,
    /// Cannot be served: why (garbage .torrent, data that does not match...).
    Failed(String),
}

impl State {
    /// A one-word name for status output.
    pub fn name(&self) -> &'static str {
        match self {
            State::Waiting(_) => "waiting",
            State::Checking { started, .. } if !started.load(Ordering::Relaxed) => "queued",
            State::Checking { .. } => "checking",
            State::Seeding => "seeding",
            State::Failed(_) => "failed",
        }
    }
}

/// One source and what became of it.
#[derive(Debug)]
pub struct Item {
    /// Where it comes from.
    pub source: Source,
    /// Where it stands.
    pub state: State,
    /// The stamps the state was computed from (a change means a recheck).
    pub fingerprint: Fingerprint,
    /// The torrent served for it, if any (kept during a recheck).
    pub torrent: Option<Arc<Torrent>>,
    /// The last job started for it: results of older jobs are ignored.
    pub generation: u64,
    /// For data sources: when the current stamps were first seen (they
    /// must stay unchanged for `settle_secs`).
    pub settling_since: Option<(Fingerprint, Instant)>,
    /// For .torrent sources: the parsed file and the stamp it was read at,
    /// so a scan does not parse unchanged files again.
    pub parsed: Option<(Option<FileStamp>, Arc<Metainfo>)>,
    /// For data sources: why its .torrent could not be published (retried
    /// at each scan).
    pub publish_error: Option<String>,
    /// The source that keeps this one from being served (same info-hash,
    /// or same published name): it is looked at again when that one stops.
    pub blocked_by: Option<PathBuf>,
}

impl Item {
    /// A source just found: nothing known about it yet.
    pub fn new(source: Source) -> Self {
        Item {
            source,
            state: State::Waiting("new".into()),
            fingerprint: Vec::new(),
            torrent: None,
            generation: 0,
            settling_since: None,
            parsed: None,
            publish_error: None,
            blocked_by: None,
        }
    }

    /// Voids the item's job, if one is queued or running (it stops hashing
    /// at its next batch, and its result is ignored).
    pub fn supersede(&mut self) {
        if let State::Checking { cancel, .. } = &self.state {
            cancel.store(true, Ordering::Relaxed);
        }
        self.generation += 1;
    }

    /// The torrent's name, or the source's file name until it has one.
    pub fn name(&self) -> String {
        match &self.torrent {
            Some(t) => t.metainfo.info.name.clone(),
            None => self
                .source
                .path()
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
        }
    }
}

/// Hashing work for the job thread.
pub struct Job {
    /// The source's path.
    pub key: PathBuf,
    /// The item's generation when the job was made.
    pub generation: u64,
    /// The stamps the job's inputs had.
    pub fingerprint: Fingerprint,
    /// Bytes hashed so far.
    pub progress: Arc<AtomicU64>,
    /// Set when the job thread takes it.
    pub started: Arc<AtomicBool>,
    /// Set when its result is no longer wanted.
    pub cancel: Arc<AtomicBool>,
    /// What to do.
    pub work: Work,
}

/// What a job does.
pub enum Work {
    /// Verify the data of a .torrent.
    Check {
        /// The torrent.
        metainfo: Box<Metainfo>,
        /// Its data.
        paths: DataPaths,
    },
    /// Make a torrent of a file or directory.
    Make {
        /// The file or directory.
        path: PathBuf,
        /// How.
        options: CreateOptions,
    },
}

/// A job's result.
pub struct JobDone {
    /// The source's path.
    pub key: PathBuf,
    /// The job's generation.
    pub generation: u64,
    /// The stamps the job's inputs had.
    pub fingerprint: Fingerprint,
    /// Bytes hashed.
    pub hashed: u64,
    /// The torrent and its data, with the .torrent file's bytes if the job
    /// made it; or why not.
    pub outcome: Result<Ready, Failure>,
}

/// Why a job found nothing to serve.
pub struct Failure {
    /// For the operator.
    pub reason: String,
    /// Pieces that did not match their hash.
    pub bad_pieces: u64,
}

/// A source ready to be served.
pub struct Ready {
    /// The torrent.
    pub metainfo: Metainfo,
    /// Its data.
    pub paths: DataPaths,
    /// The .torrent file, if it was just made.
    pub made: Option<Vec<u8>>,
}

struct AtomicProgress {
    done: Arc<AtomicU64>,
    cancel: Arc<AtomicBool>,
}

impl Progress for AtomicProgress {
    fn advance(&self, bytes: u64) {
        self.done.fetch_add(bytes, Ordering::Relaxed);
    }

    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }
}

/// Runs a job with `threads` hashing threads (on the job thread).
pub fn run_job(job: Job, threads: usize) -> JobDone {
    job.started.store(true, Ordering::Relaxed);
    let progress = AtomicProgress {
        done: Arc::clone(&job.progress),
        cancel: Arc::clone(&job.cancel),
    };
    let outcome = match job.work {
        Work::Check { metainfo, paths } => {
            let layout = Layout::new(&metainfo.info);
            let report = verify(&layout, &metainfo.info.pieces, &paths, threads, &progress);
            if report.is_complete() {
                Ok(Ready {
                    metainfo: *metainfo,
                    paths,
                    made: None,
                })
            } else {
                Err(Failure {
                    reason: format!(
                        "{} of {} pieces do not match the data (bad pieces: {})",
                        report.bad_pieces.len(),
                        report.num_pieces,
                        piece_ranges(&report.bad_pieces, 20)
                    ),
                    bad_pieces: report.bad_pieces.len() as u64,
                })
            }
        }
        Work::Make { path, options } => {
            let options = CreateOptions { threads, ..options };
            match create(&path, &options, &progress) {
                Ok(made) => Ok(Ready {
                    paths: DataPaths::locate(&made.metainfo.info, &path),
                    metainfo: made.metainfo,
                    made: Some(made.bytes),
                }),
                Err(e) => Err(Failure {
                    reason: format!("cannot make a torrent of it: {e}"),
                    bad_pieces: 0,
                }),
            }
        }
    };
    JobDone {
        key: job.key,
        generation: job.generation,
        fingerprint: job.fingerprint,
        hashed: job.progress.load(Ordering::Relaxed),
        outcome,
    }
}

/// Whether a directory entry is a source at all: not hidden (rsync's and
/// many tools' temporary files start with a dot) and not a partial file.
fn is_candidate(name: &str) -> bool {
    !name.starts_with('.')
        && !name.ends_with('~')
        && !name.ends_with(".part")
        && !name.ends_with(".tmp")
}

/// The sources configured now, and the directories that could not be read
/// (with why).
pub fn desired_sources(
    config: &Config,
    added: &[Source],
    removed: &[PathBuf],
) -> (Vec<Source>, Vec<(PathBuf, String)>) {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let mut entries = |dir: &Path| -> Vec<PathBuf> {
        match std::fs::read_dir(dir) {
            Ok(list) => {
                let mut paths: Vec<PathBuf> = list
                    .filter_map(Result::ok)
                    .filter(|e| e.file_name().to_str().is_some_and(is_candidate))
                    .map(|e| e.path())
                    .collect();
                paths.sort();
                paths
            }
            Err(e) => {
                errors.push((dir.to_path_buf(), e.to_string()));
                Vec::new()
            }
        }
    };
    for d in &config.torrent_dir {
        let data_dirs = if d.data.is_empty() {
            vec![d.path.clone()]
        } else {
            d.data.clone()
        };
        for path in entries(&d.path) {
            if path.extension().is_some_and(|e| e == "torrent") && path.is_file() {
                out.push(Source::TorrentFile {
                    path,
                    data_dirs: data_dirs.clone(),
                });
            }
        }
    }
    for d in &config.data_dir {
        let options = MakeOptions {
            trackers: d.trackers.clone(),
            web_seeds: d.web_seeds.clone(),
            private: d.private,
            piece_size: d.piece_size,
        };
        for path in entries(&d.path) {
            let usable = path.extension().is_none_or(|e| e != "torrent")
                && (path.is_file() || path.is_dir());
            if usable {
                out.push(Source::Data {
                    path,
                    options: options.clone(),
                    publish: config.publish_dir(d),
                });
            }
        }
    }
    for source in added {
        if !out.iter().any(|s| s.path() == source.path()) {
            out.push(source.clone());
        }
    }
    out.retain(|s| !removed.iter().any(|r| r == s.path()));
    (out, errors)
}

/// `roots` and every directory below them (symlinks not followed; hidden
/// ones skipped), sorted, at most `max`.
pub fn directory_tree(roots: Vec<PathBuf>, max: usize) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    let mut stack = roots;
    while let Some(dir) = stack.pop() {
        if out.len() >= max || out.contains(&dir) {
            continue;
        }
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                let hidden = e.file_name().to_str().is_none_or(|n| n.starts_with('.'));
                if !hidden && e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
        }
        out.push(dir);
    }
    out.sort();
    out
}

/// The stamp of one file now.
pub fn stamp(path: &Path) -> Option<FileStamp> {
    let paths = DataPaths {
        files: vec![path.to_path_buf()],
    };
    stamps(&paths).pop().flatten()
}

/// The stamps of a data source's files now (a directory is walked).
pub fn data_fingerprint(path: &Path) -> Result<Fingerprint, String> {
    let files = collect_files(path).map_err(|e| e.to_string())?;
    Ok(files
        .into_iter()
        .map(|(rel, _)| {
            let file = if rel.as_os_str().is_empty() {
                path.to_path_buf()
            } else {
                path.join(rel)
            };
            let s = stamp(&file);
            (file, s)
        })
        .collect())
}

/// Whether a file of `old` was modified where it is (same inode, new size
/// or mtime), rather than replaced by a rename: a mapping of it then shows
/// the new bytes, which no longer match the torrent's hashes.
pub fn changed_in_place(old: &Fingerprint, new: &Fingerprint) -> bool {
    old.iter().any(|(path, before)| {
        let Some(before) = before else { return false };
        new.iter().any(|(p, now)| {
            p == path && now.is_some_and(|now| now.inode == before.inode && now != *before)
        })
    })
}

/// The stamps of a torrent's data files, pad files left out.
pub fn paths_fingerprint(metainfo: &Metainfo, paths: &DataPaths) -> Fingerprint {
    metainfo
        .info
        .files
        .iter()
        .zip(&paths.files)
        .filter(|(f, _)| !f.pad)
        .map(|(_, p)| (p.clone(), stamp(p)))
        .collect()
}

/// Finds a torrent's data in `data_dirs`: the first where every file
/// exists with the right size.
pub fn locate(metainfo: &Metainfo, data_dirs: &[PathBuf]) -> Result<DataPaths, String> {
    for dir in data_dirs {
        let paths = DataPaths::in_save_dir(&metainfo.info, dir);
        let complete = metainfo
            .info
            .files
            .iter()
            .zip(&paths.files)
            .filter(|(f, _)| !f.pad)
            .all(|(f, p)| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.len() == f.length));
        if complete {
            return Ok(paths);
        }
    }
    let dirs: Vec<String> = data_dirs.iter().map(|d| d.display().to_string()).collect();
    Err(format!(
        "data not found: no {:?} of the right size in {}",
        metainfo.info.name,
        dirs.join(", ")
    ))
}

/// The daemon's files under the state directory.
#[derive(Debug, Clone)]
pub struct StateFiles {
    dir: PathBuf,
}

impl StateFiles {
    /// Files under `dir`.
    pub fn new(dir: PathBuf) -> Self {
        StateFiles { dir }
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Resume data of a torrent.
    pub fn resume(&self, h: &InfoHash) -> PathBuf {
        self.dir.join("resume").join(format!("{h}.resume"))
    }

    /// The .torrent made for a data source (named by its path).
    pub fn made(&self, source: &Path) -> PathBuf {
        self.dir.join("made").join(format!(
            "{:016x}.torrent",
            fnv1a(source.as_os_str().as_encoded_bytes())
        ))
    }

    /// Sources added and removed with `ringseed ctl`.
    pub fn overrides(&self) -> PathBuf {
        self.dir.join("overrides.json")
    }

    /// Records that `metainfo`'s data at `paths` was verified whole.
    pub fn save_resume(&self, metainfo: &Metainfo, paths: &DataPaths) -> std::io::Result<()> {
        ResumeData {
            info_hash: metainfo.info_hash,
            pieces: Bitfield::full(metainfo.info.num_pieces() as u32),
            files: stamps(paths),
        }
        .save(&self.resume(&metainfo.info_hash))
    }

    /// Whether `metainfo`'s data at `paths` is unchanged since it was
    /// verified whole (then it is served without hashing).
    pub fn resumable(&self, metainfo: &Metainfo, paths: &DataPaths) -> bool {
        let info = &metainfo.info;
        let saved = ResumeData::load(
            &self.resume(&metainfo.info_hash),
            &metainfo.info_hash,
            info.num_pieces() as u32,
            info.files.len(),
        );
        match saved {
            Ok(Some(r)) => r.pieces.is_full() && r.files == stamps(paths),
            Ok(None) => false,
            Err(e) => {
                tracing::warn!("{e}; the data is checked again");
                false
            }
        }
    }
}

/// FNV-1a: a stable name for a path (std's hasher may change between
/// releases, and these names live on disk).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The sources, keyed by path.
pub type Items = BTreeMap<PathBuf, Item>;

/// How long a data source must stay unchanged before it is hashed.
pub fn settled(item: &mut Item, now_stamps: &Fingerprint, settle: Duration) -> bool {
    match &item.settling_since {
        Some((seen, since)) if seen == now_stamps => since.elapsed() >= settle,
        _ => {
            item.settling_since = Some((now_stamps.clone(), Instant::now()));
            settle.is_zero()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_and_partial_names_are_not_sources() {
        assert!(is_candidate("debian-13.iso"));
        for name in [".debian-13.iso.Xy12", "x.iso.part", "x.iso~", "x.tmp"] {
            assert!(!is_candidate(name), "{name}");
        }
    }

    #[test]
    fn in_place_changes_are_told_from_renames() {
        let stamp = |inode, mtime_ns| {
            vec![(
                PathBuf::from("/d/x.iso"),
                Some(FileStamp {
                    len: 10,
                    mtime_ns,
                    inode,
                }),
            )]
        };
        assert!(changed_in_place(&stamp(1, 1), &stamp(1, 2)));
        assert!(!changed_in_place(&stamp(1, 1), &stamp(2, 2)));
        assert!(!changed_in_place(&stamp(1, 1), &stamp(1, 1)));
        assert!(!changed_in_place(
            &stamp(1, 1),
            &vec![(PathBuf::from("/d/x.iso"), None)]
        ));
    }

    #[test]
    fn state_names_are_stable_per_path() {
        let files = StateFiles::new("/s".into());
        assert_eq!(files.made(Path::new("/a/b")), files.made(Path::new("/a/b")));
        assert_ne!(files.made(Path::new("/a/b")), files.made(Path::new("/a/c")));
    }

    #[test]
    fn a_source_settles_only_after_its_stamps_stop_changing() {
        let mut item = Item::new(Source::TorrentFile {
            path: "/x".into(),
            data_dirs: Vec::new(),
        });
        let a = vec![(PathBuf::from("/x"), None)];
        let b = vec![(
            PathBuf::from("/x"),
            Some(FileStamp {
                len: 1,
                mtime_ns: 1,
                inode: 1,
            }),
        )];
        let wait = Duration::from_millis(30);
        assert!(!settled(&mut item, &a, wait));
        std::thread::sleep(wait);
        assert!(settled(&mut item, &a, wait));
        // A change starts the wait again.
        assert!(!settled(&mut item, &b, wait));
    }
}
