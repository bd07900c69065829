//! A bounded pool of open files, shared by the whole process: the writes of
//! downloads, the reads of blocks copied into buffers, and the reads of
//! hashing open their files here, so a torrent of 100,000 files needs a
//! handful of descriptors, not 100,000 (seeding from a mapping needs none:
//! a mapping outlives its descriptor). libtorrent's `file_pool_size` and
//! Transmission's open-file cache are the same idea.
//!
//! A descriptor is handed out as an `Arc`: an I/O op in flight holds one,
//! so evicting an entry never closes a descriptor the kernel is using (nor
//! lets its number be reused under a pending write).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// Descriptors the pool keeps open at most (ops in flight may hold a few
/// more until they complete). Far more than any access pattern reuses
/// (reads and writes come a piece at a time), far below a descriptor limit.
pub const CAPACITY: usize = 128;

/// Which file: the owner's id (see [`owner_id`]) and the file's index.
pub type FileKey = (u64, u32);

/// A new id for an owner of pool entries (a torrent, a hashing run).
pub fn owner_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// How a file is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read-only.
    Read,
    /// Read and write (downloads); the file must exist.
    Write,
    /// Write past the page cache (`O_DIRECT`): whole aligned blocks from
    /// aligned memory (a downloaded piece, see `PieceBuf`). Kept apart from
    /// the file's other descriptor, which it does not replace.
    Direct,
}

/// Which file a path must still be: device and inode, as when it was
/// mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
}

impl Identity {
    /// The identity of an open file.
    pub fn of(file: &File) -> io::Result<Self> {
        let m = file.metadata()?;
        Ok(Identity {
            dev: m.dev(),
            ino: m.ino(),
        })
    }
}

/// Why the pool could not hand out a descriptor.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The file could not be opened.
    #[error("cannot open {path}: {source}")]
    Open {
        /// The path.
        path: String,
        /// Why.
        source: io::Error,
    },
    /// The path now names another file (renamed over) or none (deleted).
    #[error("{0} was replaced or deleted")]
    Replaced(String),
}

struct Entry {
    fd: Arc<File>,
    access: Access,
    last_use: u64,
}

/// The pool.
pub struct FilePool {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// By file, and whether opened for [`Access::Direct`].
    open: HashMap<(FileKey, bool), Entry>,
    clock: u64,
    opened: u64,
}

impl FilePool {
    /// A pool of at most `capacity` descriptors.
    pub fn new(capacity: usize) -> Self {
        FilePool {
            capacity: capacity.max(1),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// The process's pool.
    pub fn global() -> &'static FilePool {
        static POOL: OnceLock<FilePool> = OnceLock::new();
        POOL.get_or_init(|| FilePool::new(CAPACITY))
    }

    /// A descriptor of `path` (file `key`) open for `access`, from the pool
    /// or newly opened (then the least recently used entry may be closed).
    /// With `identity`, a newly opened file must be that one.
    pub fn get(
        &self,
        key: FileKey,
        path: &Path,
        access: Access,
        identity: Option<Identity>,
    ) -> Result<Arc<File>, PoolError> {
        {
            let mut inner = self.lock();
            inner.clock += 1;
            let now = inner.clock;
            if let Some(e) = inner.open.get_mut(&(key, access == Access::Direct)) {
                if e.access == access || access == Access::Read {
                    e.last_use = now;
                    return Ok(Arc::clone(&e.fd));
                }
            }
        }
        // Opened outside the lock: a slow disk holds up no other file.
        let file = match access {
            Access::Read => File::open(path),
            Access::Write => OpenOptions::new().read(true).write(true).open(path),
            Access::Direct => OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(path),
        };
        let file = file.map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound && identity.is_some() {
                PoolError::Replaced(path.display().to_string())
            } else {
                PoolError::Open {
                    path: path.display().to_string(),
                    source,
                }
            }
        })?;
        if let Some(expected) = identity {
            let actual = Identity::of(&file).map_err(|source| PoolError::Open {
                path: path.display().to_string(),
                source,
            })?;
            if actual != expected {
                return Err(PoolError::Replaced(path.display().to_string()));
            }
        }
        let fd = Arc::new(file);
        let mut inner = self.lock();
        inner.opened += 1;
        let slot = (key, access == Access::Direct);
        if inner.open.len() >= self.capacity && !inner.open.contains_key(&slot) {
            if let Some(oldest) = inner
                .open
                .iter()
                .min_by_key(|(_, e)| e.last_use)
                .map(|(k, _)| *k)
            {
                inner.open.remove(&oldest);
            }
        }
        let now = inner.clock;
        inner.open.insert(
            slot,
            Entry {
                fd: Arc::clone(&fd),
                access,
                last_use: now,
            },
        );
        Ok(fd)
    }

    /// Closes the pool's descriptors of `owner` (a torrent going away).
    pub fn forget_owner(&self, owner: u64) {
        self.lock().open.retain(|((o, _), _), _| *o != owner);
    }

    /// Descriptors open in the pool now.
    pub fn open_count(&self) -> usize {
        self.lock().open.len()
    }

    /// Files opened since the start (each miss of the pool).
    pub fn opened(&self) -> u64 {
        self.lock().opened
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_keeps_at_most_its_capacity_and_reuses_what_it_holds() {
        let dir = tempfile::tempdir().unwrap();
        let pool = FilePool::new(2);
        let paths: Vec<_> = (0..3)
            .map(|i| {
                let p = dir.path().join(format!("f{i}"));
                std::fs::write(&p, b"x").unwrap();
                p
            })
            .collect();
        let a = pool.get((1, 0), &paths[0], Access::Read, None).unwrap();
        let again = pool.get((1, 0), &paths[0], Access::Read, None).unwrap();
        assert!(Arc::ptr_eq(&a, &again), "reused, not reopened");
        pool.get((1, 1), &paths[1], Access::Read, None).unwrap();
        pool.get((1, 2), &paths[2], Access::Read, None).unwrap();
        assert_eq!(pool.open_count(), 2);
        assert_eq!(pool.opened(), 3);
        // The evicted descriptor is still usable by whoever holds it.
        let mut buf = [0u8; 1];
        use std::os::unix::fs::FileExt;
        assert_eq!(a.read_at(&mut buf, 0).unwrap(), 1);
        pool.forget_owner(1);
        assert_eq!(pool.open_count(), 0);
    }

    #[test]
    fn a_replaced_or_deleted_file_is_not_opened_in_its_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"old").unwrap();
        let identity = Identity::of(&File::open(&path).unwrap()).unwrap();
        let pool = FilePool::new(4);
        assert!(pool
            .get((2, 0), &path, Access::Read, Some(identity))
            .is_ok());
        pool.forget_owner(2);
        let tmp = dir.path().join("new");
        std::fs::write(&tmp, b"new").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert!(matches!(
            pool.get((2, 0), &path, Access::Read, Some(identity)),
            Err(PoolError::Replaced(_))
        ));
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            pool.get((2, 0), &path, Access::Read, Some(identity)),
            Err(PoolError::Replaced(_))
        ));
    }
}
