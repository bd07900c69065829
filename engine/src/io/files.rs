//! Finding a torrent's files on disk and reading pieces from them with
//! positioned reads (no mmap here: a file truncated under us gives a short
//! read, never SIGBUS).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::io::file_pool::{self, Access, FilePool};

use crate::proto::layout::Layout;
use crate::proto::metainfo::Info;

/// The on-disk path of every file of a torrent, in torrent order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataPaths {
    /// One path per file of the torrent (pad files included; never opened).
    pub files: Vec<PathBuf>,
}

impl DataPaths {
    /// Places the torrent under `save_dir`, as clients do: the file (or top
    /// directory) `info.name` inside `save_dir`.
    pub fn in_save_dir(info: &Info, save_dir: &Path) -> Self {
        DataPaths {
            files: info.files.iter().map(|f| save_dir.join(&f.path)).collect(),
        }
    }

    /// Finds the data from what a user points at: the save directory that
    /// holds `info.name`, or the data itself (the file of a single-file
    /// torrent, the top directory of a multi-file one) under any name.
    pub fn locate(info: &Info, path: &Path) -> Self {
        if path.is_dir() && path.join(&info.name).exists() {
            return Self::in_save_dir(info, path);
        }
        if info.multi_file {
            // `path` is the top directory itself: strip the leading `name`.
            let files = info
                .files
                .iter()
                .map(|f| path.join(f.path.strip_prefix(&info.name).unwrap_or(&f.path)))
                .collect();
            DataPaths { files }
        } else {
            DataPaths {
                files: vec![path.to_path_buf()],
            }
        }
    }
}

/// Replaces `path` with `bytes` atomically (temporary file, fsync, rename,
/// fsync of the directory): a crash leaves the old file or the new one,
/// never a torn one. The directory is created if missing.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(path.file_name().unwrap_or_default());
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    // The rename itself must survive a crash.
    std::fs::File::open(dir)?.sync_all()
}

/// A problem with one file found while opening it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileProblem {
    /// The file does not exist.
    Missing,
    /// The file exists but has the wrong size.
    WrongSize {
        /// Size the torrent says.
        expected: u64,
        /// Size on disk.
        actual: u64,
    },
    /// The file could not be opened or read.
    Unreadable(String),
}

/// The torrent's files, read with positioned reads. Files are opened from
/// the process's [`FilePool`] as pieces need them, so a torrent of 100,000
/// files is hashed with a few descriptors.
pub struct PieceReader<'l> {
    layout: &'l Layout,
    /// The path of each usable file; `None` for pad, empty, missing or
    /// unreadable ones.
    paths: Vec<Option<PathBuf>>,
    /// Its key in the pool.
    owner: u64,
    problems: Vec<(usize, FileProblem)>,
}

impl Drop for PieceReader<'_> {
    fn drop(&mut self) {
        FilePool::global().forget_owner(self.owner);
    }
}

impl<'l> PieceReader<'l> {
    /// Looks at every non-pad file (its size); files that cannot be used
    /// are recorded as problems and the pieces that need them will fail to
    /// read.
    pub fn open(layout: &'l Layout, paths: &DataPaths) -> Self {
        let mut usable = Vec::with_capacity(paths.files.len());
        let mut problems = Vec::new();
        for (index, path) in paths.files.iter().enumerate() {
            let expected = {
                let r = layout.file_range(index);
                r.end - r.start
            };
            if layout.is_pad(index) || expected == 0 {
                usable.push(None);
                continue;
            }
            match std::fs::metadata(path) {
                Ok(m) if m.is_file() => {
                    if m.len() != expected {
                        problems.push((
                            index,
                            FileProblem::WrongSize {
                                expected,
                                actual: m.len(),
                            },
                        ));
                    }
                    usable.push(Some(path.clone()));
                }
                Ok(_) => {
                    problems.push((index, FileProblem::Unreadable("not a file".into())));
                    usable.push(None);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    problems.push((index, FileProblem::Missing));
                    usable.push(None);
                }
                Err(e) => {
                    problems.push((index, FileProblem::Unreadable(e.to_string())));
                    usable.push(None);
                }
            }
        }
        PieceReader {
            layout,
            paths: usable,
            owner: file_pool::owner_id(),
            problems,
        }
    }

    /// File `index`, open (from the pool).
    fn file(&self, index: usize) -> io::Result<Arc<File>> {
        let path = self.paths[index].as_ref().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("file {index} is unavailable"),
            )
        })?;
        FilePool::global()
            .get((self.owner, index as u32), path, Access::Read, None)
            .map_err(io::Error::other)
    }

    /// Problems found when opening, by file index.
    pub fn problems(&self) -> &[(usize, FileProblem)] {
        &self.problems
    }

    /// Reads piece `index` in chunks of `scratch.len()` bytes, handing each
    /// chunk to `sink` in order. Pad files read as zeros. Fails if a file is
    /// missing, short or unreadable.
    ///
    /// Small chunks matter for hashing: a chunk that fits in the L2 cache is
    /// still there when the hasher reads it, so the copy out of the page
    /// cache costs little more than reading it in place would.
    pub fn read_piece_chunks(
        &self,
        index: u32,
        scratch: &mut [u8],
        mut sink: impl FnMut(&[u8]),
    ) -> io::Result<()> {
        assert!(!scratch.is_empty(), "scratch buffer must not be empty");
        for seg in self.layout.segments(self.layout.piece_range(index)) {
            let file = if seg.pad {
                None
            } else {
                Some(self.file(seg.file)?)
            };
            let mut done = 0u64;
            while done < seg.len {
                let n = (seg.len - done).min(scratch.len() as u64) as usize;
                let chunk = &mut scratch[..n];
                match &file {
                    None => chunk.fill(0),
                    Some(file) => file.read_exact_at(chunk, seg.file_offset + done)?,
                }
                sink(chunk);
                done += n as u64;
            }
        }
        Ok(())
    }

    /// Asks the kernel to start reading `range` of the torrent in the
    /// background, so the read that follows finds it in the page cache.
    pub fn prefetch(&self, range: std::ops::Range<u64>) {
        for seg in self.layout.segments(range) {
            if seg.pad {
                continue;
            }
            if let Ok(file) = self.file(seg.file) {
                // SAFETY: plain syscall on an fd we own; it reads no memory of ours.
                unsafe {
                    libc::posix_fadvise(
                        file.as_raw_fd(),
                        seg.file_offset as libc::off_t,
                        seg.len as libc::off_t,
                        libc::POSIX_FADV_WILLNEED,
                    );
                }
            }
        }
    }
}
