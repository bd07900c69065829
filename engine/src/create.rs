//! Making .torrent files from a file or a directory.

use std::path::{Path, PathBuf};

use crate::io::files::DataPaths;
use crate::io::files::FileProblem;
use crate::io::hasher::{hash_pieces, Progress};
use crate::proto::bencode::OwnedValue;
use crate::proto::layout::Layout;
use crate::proto::metainfo::{Metainfo, MetainfoError};

/// Smallest piece length chosen automatically.
pub const MIN_AUTO_PIECE_LENGTH: u64 = 256 << 10;
/// Largest piece length chosen automatically.
pub const MAX_AUTO_PIECE_LENGTH: u64 = 16 << 20;
/// Automatic piece lengths keep the piece count at or under this, so the
/// hashes of a .torrent stay within ~40 KiB.
pub const TARGET_MAX_PIECES: u64 = 2048;

/// The smallest power of two between 256 KiB and 16 MiB that keeps `total`
/// within [`TARGET_MAX_PIECES`] pieces.
pub fn auto_piece_length(total: u64) -> u64 {
    let mut length = MIN_AUTO_PIECE_LENGTH;
    while length < MAX_AUTO_PIECE_LENGTH && total.div_ceil(length) > TARGET_MAX_PIECES {
        length *= 2;
    }
    length
}

/// Why a torrent could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// Walking the input failed.
    #[error("cannot read {path}")]
    Io {
        /// The path that failed.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The input holds no bytes to share.
    #[error("{path} holds no data: a torrent needs at least one non-empty file")]
    Empty {
        /// The input path.
        path: PathBuf,
    },
    /// The input has a name no torrent can carry.
    #[error("{path} has a name that is not UTF-8")]
    BadName {
        /// The offending path.
        path: PathBuf,
    },
    /// A file changed or vanished while it was hashed.
    #[error("{path} changed while it was hashed ({problem:?})")]
    Changed {
        /// The file.
        path: PathBuf,
        /// What was found.
        problem: FileProblem,
    },
    /// A piece length that is zero or not a multiple of 16 KiB.
    #[error("piece length {0} must be a positive multiple of 16384")]
    BadPieceLength(u64),
    /// The built torrent did not parse back (a bug, reported rather than hidden).
    #[error("created torrent is invalid")]
    Invalid(#[from] MetainfoError),
}

/// Settings of a torrent to create; `Default` gives an automatic piece size
/// and no trackers.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// Tracker tiers, one URL each unless grouped by the caller.
    pub trackers: Vec<Vec<String>>,
    /// BEP 19 web seeds.
    pub web_seeds: Vec<String>,
    /// Piece length; `None` picks one with [`auto_piece_length`].
    pub piece_length: Option<u64>,
    /// BEP 27 private flag.
    pub private: bool,
    /// Free text.
    pub comment: Option<String>,
    /// `created by`.
    pub created_by: Option<String>,
    /// Seconds since the epoch; `None` leaves the field out (reproducible).
    pub creation_date: Option<i64>,
    /// Hashing threads; 0 means one per core.
    pub threads: usize,
}

/// A torrent made by [`create`]: the file's bytes and their parse.
#[derive(Debug, Clone)]
pub struct CreatedTorrent {
    /// The .torrent file.
    pub bytes: Vec<u8>,
    /// The same, parsed.
    pub metainfo: Metainfo,
}

/// The files a torrent made of `path` would hold, in torrent order, with
/// their paths relative to the torrent's top directory.
pub fn collect_files(path: &Path) -> Result<Vec<(PathBuf, u64)>, CreateError> {
    let io_err = |p: &Path| {
        let p = p.to_path_buf();
        move |source| CreateError::Io { path: p, source }
    };
    let meta = std::fs::metadata(path).map_err(io_err(path))?;
    if !meta.is_dir() {
        return Ok(vec![(PathBuf::new(), meta.len())]);
    }
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = path.join(&rel);
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .map_err(io_err(&dir))?
            .collect::<Result<_, _>>()
            .map_err(io_err(&dir))?;
        entries.sort_by_key(|e| e.file_name());
        // Directories go on the stack in reverse so they pop in name order,
        // after this directory's files: a stable, sorted walk.
        let mut subdirs = Vec::new();
        for entry in entries {
            let child = rel.join(entry.file_name());
            let meta = std::fs::metadata(entry.path()).map_err(io_err(&entry.path()))?;
            if meta.is_dir() {
                subdirs.push(child);
            } else if meta.is_file() {
                out.push((child, meta.len()));
            }
        }
        stack.extend(subdirs.into_iter().rev());
    }
    out.sort();
    Ok(out)
}

/// Hashes `path` (a file or a directory) and builds its .torrent.
pub fn create(
    path: &Path,
    options: &CreateOptions,
    progress: &dyn Progress,
) -> Result<CreatedTorrent, CreateError> {
    // The name the user gave (a symlink is named as the link, as
    // mktorrent does); `.` and `..` are named after what they are.
    let given = path.file_name().map(std::path::PathBuf::from);
    let resolved = match given {
        Some(name) => name,
        None => path.canonicalize().map_err(|source| CreateError::Io {
            path: path.to_path_buf(),
            source,
        })?,
    };
    let name = resolved
        .file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .ok_or_else(|| CreateError::BadName {
            path: path.to_path_buf(),
        })?;
    let is_dir = path.is_dir();
    let files = collect_files(path)?;
    let total: u64 = files.iter().map(|(_, len)| len).sum();
    if total == 0 {
        return Err(CreateError::Empty {
            path: path.to_path_buf(),
        });
    }
    let piece_length = match options.piece_length {
        Some(len) if len == 0 || len % (16 << 10) != 0 => {
            return Err(CreateError::BadPieceLength(len))
        }
        Some(len) => len,
        None => auto_piece_length(total),
    };

    let layout = Layout::from_files(piece_length, files.iter().map(|(_, len)| (*len, false)));
    let paths = DataPaths {
        files: files
            .iter()
            .map(|(rel, _)| {
                if is_dir {
                    path.join(rel)
                } else {
                    path.to_path_buf()
                }
            })
            .collect(),
    };
    let threads = crate::io::hasher::thread_count(std::num::NonZeroUsize::new(options.threads));
    let (digests, problems) = hash_pieces(&layout, &paths, threads, progress);
    if let Some((file, problem)) = problems.into_iter().next() {
        return Err(CreateError::Changed {
            path: paths.files[file].clone(),
            problem,
        });
    }
    let mut pieces = Vec::with_capacity(digests.len() * 20);
    for (index, digest) in digests.iter().enumerate() {
        let digest = digest.ok_or_else(|| {
            // A piece that cannot be read means a file shrank after the walk.
            let file = layout
                .segments(layout.piece_range(index as u32))
                .next()
                .map_or(0, |s| s.file);
            CreateError::Changed {
                path: paths.files[file].clone(),
                problem: FileProblem::Unreadable("shorter than when listed".into()),
            }
        })?;
        pieces.extend_from_slice(&digest);
    }

    let mut info = OwnedValue::dict();
    info.insert("name", OwnedValue::bytes(&name));
    info.insert("piece length", OwnedValue::Int(piece_length as i64));
    info.insert("pieces", OwnedValue::Bytes(pieces));
    if options.private {
        info.insert("private", OwnedValue::Int(1));
    }
    if is_dir {
        let entries = files
            .iter()
            .map(|(rel, len)| {
                let components = rel
                    .components()
                    .map(|c| {
                        c.as_os_str()
                            .to_str()
                            .map(OwnedValue::bytes)
                            .ok_or_else(|| CreateError::BadName {
                                path: path.join(rel),
                            })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let mut entry = OwnedValue::dict();
                entry.insert("length", OwnedValue::Int(*len as i64));
                entry.insert("path", OwnedValue::List(components));
                Ok(entry)
            })
            .collect::<Result<Vec<_>, CreateError>>()?;
        info.insert("files", OwnedValue::List(entries));
    } else {
        info.insert("length", OwnedValue::Int(total as i64));
    }

    let mut root = OwnedValue::dict();
    let tiers: Vec<&Vec<String>> = options.trackers.iter().filter(|t| !t.is_empty()).collect();
    if let Some(first) = tiers.first() {
        root.insert("announce", OwnedValue::bytes(&first[0]));
        if tiers.len() > 1 || first.len() > 1 {
            let list = tiers
                .iter()
                .map(|tier| OwnedValue::List(tier.iter().map(OwnedValue::bytes).collect()))
                .collect();
            root.insert("announce-list", OwnedValue::List(list));
        }
    }
    match options.web_seeds.as_slice() {
        [] => {}
        [one] => root.insert("url-list", OwnedValue::bytes(one)),
        many => root.insert(
            "url-list",
            OwnedValue::List(many.iter().map(OwnedValue::bytes).collect()),
        ),
    }
    if let Some(comment) = &options.comment {
        root.insert("comment", OwnedValue::bytes(comment));
    }
    if let Some(created_by) = &options.created_by {
        root.insert("created by", OwnedValue::bytes(created_by));
    }
    if let Some(date) = options.creation_date {
        root.insert("creation date", OwnedValue::Int(date));
    }
    root.insert("info", info);

    let bytes = root.to_bytes();
    let metainfo = Metainfo::from_bytes(&bytes)?;
    Ok(CreatedTorrent { bytes, metainfo })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_piece_length_stays_within_bounds() {
        assert_eq!(auto_piece_length(1), 256 << 10);
        assert_eq!(auto_piece_length(512 << 20), 256 << 10);
        assert_eq!(auto_piece_length(2 << 30), 1 << 20);
        assert_eq!(auto_piece_length(4 << 30), 2 << 20);
        assert_eq!(auto_piece_length(1 << 50), 16 << 20);
    }

    /// Counts hashed bytes; cancelled from the start if asked.
    struct Counting(std::sync::atomic::AtomicU64, bool);

    impl Progress for Counting {
        fn advance(&self, bytes: u64) {
            self.0
                .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
        }
        fn cancelled(&self) -> bool {
            self.1
        }
    }

    #[test]
    fn a_cancelled_hash_stops_without_reading_the_data() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("data.bin");
        std::fs::write(&file, vec![7u8; 3 << 20]).unwrap();
        let options = CreateOptions {
            piece_length: Some(256 << 10),
            threads: 2,
            ..CreateOptions::default()
        };
        let full = Counting(Default::default(), false);
        assert!(create(&file, &options, &full).is_ok());
        assert_eq!(full.0.into_inner(), 3 << 20);
        let cancelled = Counting(Default::default(), true);
        assert!(create(&file, &options, &cancelled).is_err());
        assert_eq!(cancelled.0.into_inner(), 0);
    }
}
