//! Resume data of a download: which pieces are verified, and the identity
//! of the files they were verified in (size, mtime, inode), so a restart
//! skips both the refetch and the rehash.
//!
//! Saved atomically (temporary file, fsync, rename, fsync of the
//! directory) after the data files themselves are flushed, so a crash or
//! `kill -9` at any moment leaves either the old or the new state, and
//! never one that counts a piece whose bytes are not on disk. If a file's
//! identity differs at the next start (it was written after the last save,
//! or changed by someone else) the torrent is rechecked instead: a recheck
//! finds the pieces written after the save too, so nothing verified is
//! fetched again.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::io::files::DataPaths;
use crate::io::storage::Torrent;
use crate::policy::bitfield::Bitfield;
use crate::proto::bencode::{decode, OwnedValue};
use crate::proto::info_hash::InfoHash;

/// The identity of a file when its pieces were counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    /// Size in bytes.
    pub len: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// Inode number (a file replaced by a rename has a new one).
    pub inode: u64,
}

/// What is saved for one torrent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeData {
    /// The torrent.
    pub info_hash: InfoHash,
    /// Verified pieces.
    pub pieces: Bitfield,
    /// Per file: its stamp, or `None` if it did not exist.
    pub files: Vec<Option<FileStamp>>,
}

/// Why resume data could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    /// The file could not be read.
    #[error("cannot read resume data {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The file is not resume data of this torrent.
    #[error("resume data {path} is invalid: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// The stamps of the files at `paths` now.
pub fn stamps(paths: &DataPaths) -> Vec<Option<FileStamp>> {
    paths
        .files
        .iter()
        .map(|p| {
            let m = std::fs::metadata(p).ok()?;
            Some(FileStamp {
                len: m.len(),
                mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
                inode: m.ino(),
            })
        })
        .collect()
}

impl ResumeData {
    /// The bencoded form.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut root = OwnedValue::dict();
        root.insert("info-hash", OwnedValue::bytes(self.info_hash.0));
        root.insert("num-pieces", OwnedValue::Int(i64::from(self.pieces.len())));
        root.insert("pieces", OwnedValue::bytes(self.pieces.to_wire()));
        let files = self
            .files
            .iter()
            .map(|f| match f {
                None => OwnedValue::List(Vec::new()),
                Some(s) => OwnedValue::List(vec![
                    OwnedValue::Int(s.len as i64),
                    OwnedValue::Int(s.mtime_ns),
                    OwnedValue::Int(s.inode as i64),
                ]),
            })
            .collect();
        root.insert("files", OwnedValue::List(files));
        root.to_bytes()
    }

    /// Parses resume data, checking that it is for `info_hash` with
    /// `num_pieces` pieces and `num_files` files.
    pub fn from_bytes(
        bytes: &[u8],
        info_hash: &InfoHash,
        num_pieces: u32,
        num_files: usize,
    ) -> Result<Self, String> {
        let root = decode(bytes).map_err(|e| e.to_string())?;
        let hash = root
            .get("info-hash")
            .and_then(|v| v.as_bytes())
            .ok_or("no info-hash")?;
        if hash != info_hash.0 {
            return Err("it is for another torrent".into());
        }
        let count = root.get("num-pieces").and_then(|v| v.as_int());
        if count != Some(i64::from(num_pieces)) {
            return Err(format!(
                "num-pieces {count:?}, the torrent has {num_pieces}"
            ));
        }
        let bits = root
            .get("pieces")
            .and_then(|v| v.as_bytes())
            .ok_or("no pieces")?;
        let pieces = Bitfield::from_wire(bits, num_pieces).ok_or("bad pieces bitfield")?;
        let list = root
            .get("files")
            .and_then(|v| v.as_list())
            .ok_or("no files")?;
        if list.len() != num_files {
            return Err(format!("{} files, the torrent has {num_files}", list.len()));
        }
        let mut files = Vec::with_capacity(num_files);
        for f in list {
            let items = f.as_list().ok_or("bad file entry")?;
            files.push(match items {
                [] => None,
                [len, mtime, inode] => Some(FileStamp {
                    len: len.as_int().ok_or("bad size")? as u64,
                    mtime_ns: mtime.as_int().ok_or("bad mtime")?,
                    inode: inode.as_int().ok_or("bad inode")? as u64,
                }),
                _ => return Err("bad file entry".into()),
            });
        }
        Ok(ResumeData {
            info_hash: *info_hash,
            pieces,
            files,
        })
    }

    /// Loads the resume data at `path`: `Ok(None)` if there is none.
    pub fn load(
        path: &Path,
        info_hash: &InfoHash,
        num_pieces: u32,
        num_files: usize,
    ) -> Result<Option<Self>, ResumeError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(ResumeError::Read {
                    path: path.to_owned(),
                    source,
                })
            }
        };
        Self::from_bytes(&bytes, info_hash, num_pieces, num_files)
            .map(Some)
            .map_err(|reason| ResumeError::Invalid {
                path: path.to_owned(),
                reason,
            })
    }

    /// Saves atomically to `path`: the old file stays until the new one is
    /// complete on disk.
    pub fn save(&self, path: &Path) -> io::Result<()> {
        crate::io::files::write_atomic(path, &self.to_bytes())
    }
}

/// Flushes a downloaded torrent's data, then saves which of its pieces are
/// verified to `path`. The pieces are taken before the flush: a piece
/// verified in between is left out (and found by the next check), never
/// counted unflushed. A failure costs a recheck at the next start, nothing
/// more.
pub fn save_download(torrent: &Torrent, paths: &DataPaths, path: &Path) -> io::Result<()> {
    let pieces = torrent
        .download()
        .map(|d| d.picker.have().clone())
        .unwrap_or_default();
    torrent.sync_data()?;
    ResumeData {
        info_hash: torrent.metainfo.info_hash,
        pieces,
        files: stamps(paths),
    }
    .save(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ResumeData {
        let mut pieces = Bitfield::new(10);
        pieces.set(3);
        pieces.set(9);
        ResumeData {
            info_hash: InfoHash([7; 20]),
            pieces,
            files: vec![
                Some(FileStamp {
                    len: 5,
                    mtime_ns: 1_700_000_000_123_456_789,
                    inode: 42,
                }),
                None,
            ],
        }
    }

    #[test]
    fn saves_and_loads_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/x.resume");
        let data = sample();
        data.save(&path).unwrap();
        assert!(!path.with_extension("resume.tmp").exists());
        let back = ResumeData::load(&path, &data.info_hash, 10, 2).unwrap();
        assert_eq!(back, Some(data));
        assert!(
            ResumeData::load(&dir.path().join("none"), &InfoHash([7; 20]), 10, 2)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn resume_data_of_another_torrent_or_shape_is_refused() {
        let data = sample();
        let bytes = data.to_bytes();
        assert!(ResumeData::from_bytes(&bytes, &InfoHash([8; 20]), 10, 2)
            .unwrap_err()
            .contains("another torrent"));
        assert!(ResumeData::from_bytes(&bytes, &data.info_hash, 11, 2).is_err());
        assert!(ResumeData::from_bytes(&bytes, &data.info_hash, 10, 3).is_err());
        assert!(ResumeData::from_bytes(b"garbage", &data.info_hash, 10, 2).is_err());
    }

    #[test]
    fn stamps_see_size_and_absence() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        std::fs::write(&a, b"12345").unwrap();
        let paths = DataPaths {
            files: vec![a, dir.path().join("missing")],
        };
        let s = stamps(&paths);
        assert_eq!(s[0].unwrap().len, 5);
        assert_eq!(s[1], None);
    }
}
