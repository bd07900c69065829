//! A torrent's files, mapped read-only, and how a block becomes the
//! addresses the kernel sends from; for a torrent being downloaded, also
//! the files' creation, where a verified piece is written, and the shared
//! download state.
//!
//! # Why the mappings never raise SIGBUS
//!
//! A mapping of a file that is later truncated raises SIGBUS when *user
//! space* touches a page past the new end. ringseed never reads these
//! mappings itself: it only hands their addresses to the kernel (in
//! `sendmsg` iovecs, `mincore`, `madvise`). A kernel copy that faults on such
//! a page fails the system call with `EFAULT` instead, which the data plane
//! turns into "torrent errored". Hashing reads files with `pread`, never
//! through a mapping. The mappings are `MmapRaw`, which offers raw pointers
//! only, so no `&[u8]` over them can be made by accident.
//!
//! # No descriptor per file
//!
//! A file's descriptor is closed once it is mapped (the mapping keeps the
//! inode alive), so seeding holds none. What needs one (writing a verified
//! piece, reading a block that is copied into a buffer, `fdatasync`) takes
//! it from the process's [`FilePool`], reopening by path and checking that
//! the path still names the inode that was mapped. Files smaller than a
//! block, and files beyond the process's mapping budget (half of
//! `vm.max_map_count`), are not mapped: their blocks are copied with
//! positioned reads. A file renamed over or deleted while seeding is
//! reported once; its blocks go on being sent from the old inode's mapping.

use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Range;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use memmap2::{MmapOptions, MmapRaw};

use crate::io::file_pool::{self, Access, FilePool, Identity, PoolError};
use crate::io::files::DataPaths;
use crate::policy::bitfield::Bitfield;
use crate::policy::download::{Download, DownloadConfig};
use crate::policy::piece_buf::PieceBuf;
use crate::proto::layout::Layout;
use crate::proto::metainfo::Metainfo;
use crate::proto::wire::{BlockRequest, MAX_REQUEST_LEN};
use crate::stats::Counters;

/// Zeros for pad files (BEP 47), which are never stored; a block is at most
/// [`MAX_REQUEST_LEN`] bytes.
static ZEROS: [u8; MAX_REQUEST_LEN as usize] = [0; MAX_REQUEST_LEN as usize];

/// Most bytes read ahead for one cold block (within its piece).
pub const PREFETCH_MAX: u32 = 1 << 20;

/// Files smaller than this are read, not mapped: a mapping costs a VMA and
/// a page-table walk for less than one block.
const MAP_AT_LEAST: u64 = 16 << 10;

/// Mappings this process makes at most: half of `vm.max_map_count` (the
/// rest is for the allocator, libraries and threads' stacks).
fn mapping_budget() -> usize {
    static BUDGET: OnceLock<usize> = OnceLock::new();
    *BUDGET.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/vm/max_map_count")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .unwrap_or(65530)
            / 2
    })
}

/// Files written since the last sync above which one `syncfs` per
/// filesystem replaces an `fdatasync` per file.
const SYNC_EACH_AT_MOST: usize = 64;

/// Mappings of data files alive now.
static MAPPINGS: AtomicUsize = AtomicUsize::new(0);

/// One part of a piece or block in one file, for a positioned read or
/// write: which file, where in it, where in the piece or block, how many
/// bytes. Its descriptor is taken ([`Torrent::segment_file`]) only when
/// its op is submitted, so a piece spanning 1,000 files never holds 1,000.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSegment {
    /// The file's index in the torrent.
    pub file: usize,
    /// Offset in the file.
    pub file_offset: u64,
    /// Offset in the piece or block.
    pub at: usize,
    /// Bytes.
    pub len: usize,
}

/// Why a torrent's data could not be opened for seeding.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A file could not be opened or mapped.
    #[error("cannot open {path} for seeding")]
    Open {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A file to download into could not be created.
    #[error("cannot create {path}")]
    Create {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The disk has no room for a file of the download.
    #[error("not enough disk space for {path}: it needs {needed} bytes")]
    NoSpace {
        /// The file.
        path: std::path::PathBuf,
        /// Its size.
        needed: u64,
    },
    /// A file is shorter than the torrent says.
    #[error("{path} has {actual} bytes, the torrent needs {expected}")]
    Short {
        /// The file.
        path: std::path::PathBuf,
        /// Size the torrent says.
        expected: u64,
        /// Size on disk.
        actual: u64,
    },
}

/// One file of a torrent: its path, the inode it was when opened, and its
/// mapping (none for small files or past the mapping budget).
struct DataFile {
    path: PathBuf,
    identity: Identity,
    map: Option<MmapRaw>,
    len: u64,
    /// Written since the last `sync_data`.
    dirty: AtomicBool,
    /// Found renamed over or deleted (reported once).
    gone: AtomicBool,
}

impl DataFile {
    /// Takes the identity of `file` and maps its first `len` bytes
    /// read-only if it is large enough and the budget allows; the
    /// descriptor is closed when `file` is dropped.
    fn open(path: &std::path::Path, file: File, len: u64) -> io::Result<Self> {
        let identity = Identity::of(&file)?;
        let budget = mapping_budget();
        let map = if len >= MAP_AT_LEAST
            && MAPPINGS
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < budget).then_some(n + 1)
                })
                .is_ok()
        {
            match MmapOptions::new()
                .len(len as usize)
                .map_raw_read_only(&file)
            {
                Ok(map) => {
                    // Seeding reads are random: the kernel's fault readahead
                    // would read up to 32x what is asked (the libtorrent 2.0
                    // trap). We prefetch exactly the blocks we send instead
                    // (`prefetch`). A failed hint costs only performance.
                    let _ = map.advise(memmap2::Advice::Random);
                    Some(map)
                }
                Err(e) => {
                    MAPPINGS.fetch_sub(1, Ordering::AcqRel);
                    return Err(e);
                }
            }
        } else {
            None
        };
        Ok(DataFile {
            path: path.to_owned(),
            identity,
            map,
            len,
            dirty: AtomicBool::new(false),
            gone: AtomicBool::new(false),
        })
    }
}

impl Drop for DataFile {
    fn drop(&mut self) {
        if self.map.take().is_some() {
            MAPPINGS.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// A torrent of the data plane: its metainfo, its files mapped read-only,
/// its counters, whether it has failed, and while it is being downloaded,
/// the shared download state. Shared by every worker.
pub struct Torrent {
    /// The torrent.
    pub metainfo: Metainfo,
    /// Its piece/file geometry.
    pub layout: Layout,
    /// One entry per file; `None` for pad and empty files.
    files: Vec<Option<DataFile>>,
    /// Its key in the [`FilePool`].
    owner: u64,
    /// How its files are opened from the pool.
    access: Access,
    /// Where the periodic size check goes on (`check_some_files`).
    check_cursor: AtomicUsize,
    errored: AtomicBool,
    error: Mutex<Option<String>>,
    warning: Mutex<Option<String>>,
    /// Counters, summed over workers.
    pub stats: Counters,
    /// Connections past the handshake now (for the per-torrent limit).
    pub(crate) connections: AtomicUsize,
    /// Set while the torrent is being downloaded.
    download: Option<DownloadState>,
}

/// What a torrent being downloaded adds: the shared download state (locked
/// per received block or batch of requests, never on the seeding path) and
/// lock-free views of it for the serving path.
struct DownloadState {
    state: Mutex<Download>,
    /// Verified pieces, readable without the lock.
    have: Vec<AtomicU64>,
    complete: AtomicBool,
    /// Every piece is verified (not only the selected ones): a seed.
    all: AtomicBool,
    /// Bumped when an address is banned, so workers look for its peers.
    ban_epoch: AtomicU64,
    /// Aligned pieces are written with `O_DIRECT`; cleared for good when
    /// the filesystem refuses it.
    direct_writes: AtomicBool,
}

impl std::fmt::Debug for Torrent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Torrent")
            .field("info_hash", &self.metainfo.info_hash)
            .field("name", &self.metainfo.info.name)
            .field("errored", &self.error())
            .finish()
    }
}

impl Torrent {
    /// Maps every file of `metainfo` found at `paths`. The data should have
    /// been verified first; only sizes are checked here.
    pub fn open(metainfo: Metainfo, paths: &DataPaths) -> Result<Arc<Self>, StorageError> {
        let layout = Layout::new(&metainfo.info);
        let mut files = Vec::with_capacity(paths.files.len());
        for (index, path) in paths.files.iter().enumerate() {
            let range = layout.file_range(index);
            let expected = range.end - range.start;
            if layout.is_pad(index) || expected == 0 {
                files.push(None);
                continue;
            }
            let open_err = |source| StorageError::Open {
                path: path.clone(),
                source,
            };
            let file = File::open(path).map_err(open_err)?;
            let actual = file.metadata().map_err(open_err)?.len();
            if actual < expected {
                return Err(StorageError::Short {
                    path: path.clone(),
                    expected,
                    actual,
                });
            }
            files.push(Some(
                DataFile::open(path, file, expected).map_err(open_err)?,
            ));
        }
        Ok(Torrent::new(metainfo, layout, files, None))
    }

    fn new(
        metainfo: Metainfo,
        layout: Layout,
        files: Vec<Option<DataFile>>,
        download: Option<DownloadState>,
    ) -> Arc<Self> {
        Arc::new(Torrent {
            metainfo,
            layout,
            files,
            owner: file_pool::owner_id(),
            access: if download.is_some() {
                Access::Write
            } else {
                Access::Read
            },
            check_cursor: AtomicUsize::new(0),
            errored: AtomicBool::new(false),
            error: Mutex::new(None),
            warning: Mutex::new(None),
            stats: Counters::default(),
            connections: AtomicUsize::new(0),
            download,
        })
    }

    /// Opens a torrent to download into `paths`: creates the directories
    /// and the files that hold any wanted piece (files selected for
    /// download get their space reserved now, so a full disk shows here and
    /// not in the middle; others are sparse and only receive the edges of
    /// wanted pieces), and maps them. `have` are the pieces already
    /// verified (from resume data or a check), `wanted` those to fetch.
    pub fn open_for_download(
        metainfo: Metainfo,
        paths: &DataPaths,
        selected: &[bool],
        have: Bitfield,
        wanted: Bitfield,
        config: DownloadConfig,
    ) -> Result<Arc<Self>, StorageError> {
        let layout = Layout::new(&metainfo.info);
        let mut files = Vec::with_capacity(paths.files.len());
        for (index, path) in paths.files.iter().enumerate() {
            let range = layout.file_range(index);
            let expected = range.end - range.start;
            let touched = layout.pieces_of_file(index).any(|p| wanted.get(p));
            let is_selected = selected.get(index).copied().unwrap_or(true);
            if layout.is_pad(index) || !(touched || (is_selected && expected == 0)) {
                files.push(None);
                continue;
            }
            let create_err = |source| StorageError::Create {
                path: path.clone(),
                source,
            };
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(create_err)?;
            }
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .map_err(create_err)?;
            if expected == 0 {
                files.push(None);
                continue;
            }
            let actual = file.metadata().map_err(create_err)?.len();
            if is_selected {
                reserve(&file, expected).map_err(|e| match e.raw_os_error() {
                    Some(libc::ENOSPC) | Some(libc::EDQUOT) => StorageError::NoSpace {
                        path: path.clone(),
                        needed: expected,
                    },
                    _ => create_err(e),
                })?;
            }
            if actual < expected {
                file.set_len(expected).map_err(create_err)?;
            }
            files.push(Some(
                DataFile::open(path, file, expected).map_err(create_err)?,
            ));
        }
        // A verified piece counts only if every file it spans is open: with
        // `--only`, pieces of unselected files may be verified on disk but
        // cannot be served (a missing mapping would send zeros).
        let mut have = have;
        let unservable: Vec<u32> = have
            .ones()
            .filter(|&piece| {
                layout
                    .segments(layout.piece_range(piece))
                    .any(|seg| !seg.pad && files[seg.file].is_none())
            })
            .collect();
        for piece in unservable {
            have.clear(piece);
        }
        let words = (layout.num_pieces() as usize).div_ceil(64);
        let have_words = have.words().to_vec();
        let download = Download::new(
            layout.piece_length(),
            layout.total_length(),
            have,
            wanted,
            config,
        );
        let complete = download.picker.is_done();
        let all = download.picker.have().is_full();
        let download = DownloadState {
            state: Mutex::new(download),
            have: (0..words)
                .map(|i| AtomicU64::new(have_words.get(i).copied().unwrap_or(0)))
                .collect(),
            complete: AtomicBool::new(complete),
            all: AtomicBool::new(all),
            ban_epoch: AtomicU64::new(0),
            direct_writes: AtomicBool::new(true),
        };
        Ok(Torrent::new(metainfo, layout, files, Some(download)))
    }

    /// Whether every selected piece is verified (true for a seed).
    pub fn is_complete(&self) -> bool {
        !self.is_downloading()
    }

    /// Whether the torrent is being downloaded (and not yet complete).
    pub fn is_downloading(&self) -> bool {
        self.download
            .as_ref()
            .is_some_and(|d| !d.complete.load(Ordering::Acquire))
    }

    /// The shared download state, if this torrent was opened for download.
    /// Locked per received block or batch of requests.
    pub fn download(&self) -> Option<MutexGuard<'_, Download>> {
        self.download
            .as_ref()
            .map(|d| d.state.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Whether piece `piece` is verified, so it may be served (lock-free).
    pub fn have_piece(&self, piece: u32) -> bool {
        match &self.download {
            None => true,
            Some(d) if d.all.load(Ordering::Acquire) => true,
            Some(d) => {
                d.have[piece as usize / 64].load(Ordering::Acquire) & (1 << (piece % 64)) != 0
            }
        }
    }

    /// The verified pieces, or `None` when we have them all.
    pub fn have_pieces(&self) -> Option<Bitfield> {
        let d = self.download.as_ref()?;
        if d.all.load(Ordering::Acquire) {
            return None;
        }
        let mut b = Bitfield::new(self.layout.num_pieces());
        for piece in 0..self.layout.num_pieces() {
            if self.have_piece(piece) {
                b.set(piece);
            }
        }
        Some(b)
    }

    /// Records that `piece` is verified and written; returns true if that
    /// completed the download. Call with the download state locked (`state`).
    pub fn mark_verified(&self, state: &mut Download, piece: u32) -> bool {
        let Some(d) = &self.download else {
            return false;
        };
        // Its files need a sync before resume data may count it: flagged
        // before the piece shows as verified, so a save that sees the piece
        // also sees the flag (see `sync_data`).
        for seg in self.layout.segments(self.layout.piece_range(piece)) {
            if let Some(f) = &self.files[seg.file] {
                f.dirty.store(true, Ordering::Release);
            }
        }
        state.on_written(piece);
        d.have[piece as usize / 64].fetch_or(1 << (piece % 64), Ordering::AcqRel);
        if state.picker.have().is_full() {
            d.all.store(true, Ordering::Release);
        }
        if state.picker.is_done() && !d.complete.swap(true, Ordering::AcqRel) {
            return true;
        }
        false
    }

    /// Counts a ban, so that every worker drops the banned peers.
    pub fn note_ban(&self) {
        if let Some(d) = &self.download {
            d.ban_epoch.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Changes whenever an address is banned.
    pub fn ban_epoch(&self) -> u64 {
        self.download
            .as_ref()
            .map_or(0, |d| d.ban_epoch.load(Ordering::Acquire))
    }

    /// Where the bytes of `piece` go, one segment per file it spans, pad
    /// files skipped. `None` if a file it needs was not created.
    pub fn piece_writes(&self, piece: u32) -> Option<Vec<FileSegment>> {
        self.file_segments(self.layout.piece_range(piece))
    }

    /// The bytes of `range` (of the torrent) as one segment per file; pad
    /// files are left out. `None` if a file that holds some was not opened.
    fn file_segments(&self, range: Range<u64>) -> Option<Vec<FileSegment>> {
        let mut at = 0usize;
        let mut out = Vec::new();
        for seg in self.layout.segments(range) {
            let len = seg.len as usize;
            if !seg.pad {
                self.files[seg.file].as_ref()?;
                out.push(FileSegment {
                    file: seg.file,
                    file_offset: seg.file_offset,
                    at,
                    len,
                });
            }
            at += len;
        }
        Some(out)
    }

    /// The file of `segment`, open (from the process's [`FilePool`]); hold
    /// it until the segment's op completes.
    pub fn segment_file(&self, segment: &FileSegment) -> Result<Arc<File>, String> {
        self.descriptor(segment.file)
    }

    /// A descriptor to write `segment` of `piece` with `O_DIRECT`, straight
    /// from the piece's memory to the disk, when its place in its file and
    /// its length are aligned (the piece's buffer is) and the filesystem
    /// takes it; `None`: write it through the page cache
    /// ([`Torrent::segment_file`]). Buffered writes cost a copy into the
    /// page cache, the largest CPU cost of a download (docs/BENCHMARKS.md).
    pub fn segment_file_direct(
        &self,
        segment: &FileSegment,
        piece: &PieceBuf,
    ) -> Option<Arc<File>> {
        const ALIGN: u64 = PieceBuf::ALIGN as u64;
        let aligned = (piece.as_ptr() as u64 + segment.at as u64) % ALIGN == 0
            && segment.file_offset % ALIGN == 0
            && segment.len as u64 % ALIGN == 0;
        let d = self.download.as_ref()?;
        if !aligned || !d.direct_writes.load(Ordering::Relaxed) {
            return None;
        }
        let f = self.files[segment.file].as_ref()?;
        let key = (self.owner, segment.file as u32);
        match FilePool::global().get(key, &f.path, Access::Direct, Some(f.identity)) {
            Ok(file) => Some(file),
            Err(PoolError::Open { source, .. }) if source.raw_os_error() == Some(libc::EINVAL) => {
                self.no_direct_writes(&source);
                None
            }
            // Anything else (the file gone, out of descriptors) shows again
            // on the buffered path, which reports it.
            Err(_) => None,
        }
    }

    /// The filesystem refused a direct write (`EINVAL`: no `O_DIRECT`, or
    /// an alignment it does not take): every later write of this torrent
    /// goes through the page cache.
    pub fn no_direct_writes(&self, why: &io::Error) {
        if let Some(d) = &self.download {
            if d.direct_writes.swap(false, Ordering::Relaxed) {
                tracing::debug!(
                    "torrent {}: writes go through the page cache: O_DIRECT refused ({why})",
                    self.metainfo.info.name
                );
            }
        }
    }

    /// An open descriptor of file `index`, from the pool.
    fn descriptor(&self, index: usize) -> Result<Arc<File>, String> {
        let Some(f) = &self.files[index] else {
            return Err(format!("file {index} of the torrent was not created"));
        };
        let key = (self.owner, index as u32);
        FilePool::global()
            .get(key, &f.path, self.access, Some(f.identity))
            .map_err(|e| {
                if let PoolError::Replaced(_) = e {
                    self.note_gone(f);
                    if f.map.is_none() {
                        // Its blocks were read, not mapped: they are gone.
                        self.set_errored(e.to_string());
                    }
                }
                e.to_string()
            })
    }

    /// Reports once that `f` was renamed over or deleted.
    fn note_gone(&self, f: &DataFile) {
        if !f.gone.swap(true, Ordering::AcqRel) {
            let serving = if f.map.is_some() {
                "its blocks are still sent from the copy mapped when the torrent was opened"
            } else {
                "its blocks cannot be read any more"
            };
            let warning = format!(
                "{} was renamed over or deleted; {serving} (reload the torrent to serve the new file)",
                f.path.display()
            );
            tracing::warn!("torrent {}: {warning}", self.metainfo.info.name);
            let mut w = self.warning.lock().unwrap_or_else(|e| e.into_inner());
            w.get_or_insert(warning);
        }
    }

    /// The first thing worth an operator's attention that is not an error
    /// (a file renamed over or deleted under a seeded torrent).
    pub fn warning(&self) -> Option<String> {
        self.warning.lock().ok().and_then(|w| w.clone())
    }

    /// Flushes written data of every file to disk (before resume data that
    /// counts it as verified is saved): `fdatasync` of each file written
    /// since the last time, or past [`SYNC_EACH_AT_MOST`] of them, one
    /// `syncfs` per filesystem (100,000 `fdatasync`s took 40 s here).
    pub fn sync_data(&self) -> io::Result<()> {
        let dirty: Vec<usize> = (0..self.files.len())
            .filter(|&i| {
                self.files[i]
                    .as_ref()
                    .is_some_and(|f| f.dirty.swap(false, Ordering::AcqRel))
            })
            .collect();
        let result = if dirty.len() <= SYNC_EACH_AT_MOST {
            dirty.iter().try_for_each(|&index| {
                self.descriptor(index)
                    .map_err(io::Error::other)?
                    .sync_data()
            })
        } else {
            self.sync_filesystems(&dirty)
        };
        if result.is_err() {
            // Not known to be on disk: the next save tries again.
            for &index in &dirty {
                if let Some(f) = &self.files[index] {
                    f.dirty.store(true, Ordering::Release);
                }
            }
        }
        result
    }

    /// One `syncfs` per filesystem holding some of `files`, through the
    /// first of them there that opens.
    fn sync_filesystems(&self, files: &[usize]) -> io::Result<()> {
        let mut devices: Vec<u64> = files
            .iter()
            .filter_map(|&i| self.files[i].as_ref().map(|f| f.identity.dev))
            .collect();
        devices.sort_unstable();
        devices.dedup();
        for dev in devices {
            let mut on_dev = files.iter().filter(|&&i| {
                self.files[i]
                    .as_ref()
                    .is_some_and(|f| f.identity.dev == dev)
            });
            let file = on_dev
                .find_map(|&i| self.descriptor(i).ok())
                .ok_or_else(|| io::Error::other("no written file of the torrent opens"))?;
            // SAFETY: plain syscall on an open descriptor; no memory is
            // passed.
            if unsafe { libc::syncfs(file.as_raw_fd()) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// Whether the torrent has failed (a file shrank or vanished).
    pub fn is_errored(&self) -> bool {
        self.errored.load(Ordering::Acquire)
    }

    /// Why the torrent failed, if it did.
    pub fn error(&self) -> Option<String> {
        self.error.lock().ok().and_then(|e| e.clone())
    }

    /// Marks the torrent failed; its peers are dropped by their workers. The
    /// first reason is kept and logged once, whichever worker noticed first.
    pub fn set_errored(&self, reason: String) {
        let mut error = self.error.lock().unwrap_or_else(|e| e.into_inner());
        if error.is_none() {
            tracing::error!(
                "torrent {} ({}) errored: {reason}",
                self.metainfo.info_hash,
                self.metainfo.info.name
            );
            *error = Some(reason);
        }
        self.errored.store(true, Ordering::Release);
    }

    /// Takes the torrent out of service without an error report (it was
    /// removed, or replaced by a newer copy): workers drop its peers and
    /// refuse new ones, exactly as for an errored torrent.
    pub fn retire(&self) {
        let mut error = self.error.lock().unwrap_or_else(|e| e.into_inner());
        error.get_or_insert_with(|| "removed".to_owned());
        self.errored.store(true, Ordering::Release);
    }

    /// Checks that no file shrank below what the torrent needs; marks the
    /// torrent errored and returns false if one did. A file renamed over or
    /// deleted is reported once (its mapping still holds the old data).
    pub fn check_files(&self) -> bool {
        self.check_some_files(self.files.len())
    }

    /// Like [`check_files`](Self::check_files) for the next `count` files
    /// only, going round: the periodic check of a torrent of 100,000 files
    /// costs a few `stat`s a tick, not 100,000.
    pub fn check_some_files(&self, count: usize) -> bool {
        if self.is_errored() {
            return false;
        }
        let n = self.files.len();
        if n == 0 {
            return true;
        }
        let start = self.check_cursor.fetch_add(count.min(n), Ordering::Relaxed) % n;
        (0..count.min(n)).all(|k| self.check_file((start + k) % n))
    }

    /// Checks file `index` alone (`stat` by path): false, with the torrent
    /// errored, if it shrank below what the torrent needs; a file renamed
    /// over or deleted is reported once.
    pub fn check_file(&self, index: usize) -> bool {
        let Some(f) = &self.files[index] else {
            return true;
        };
        match std::fs::metadata(&f.path) {
            Ok(m) if m.dev() != f.identity.dev || m.ino() != f.identity.ino => self.note_gone(f),
            Ok(m) if m.len() >= f.len => {}
            Ok(m) => {
                self.set_errored(format!(
                    "{} was truncated to {} bytes (the torrent needs {})",
                    f.path.display(),
                    m.len(),
                    f.len
                ));
                return false;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => self.note_gone(f),
            Err(e) => {
                self.set_errored(format!("{}: {e}", f.path.display()));
                return false;
            }
        }
        true
    }

    /// Torrent byte range of a validated request.
    fn block_range(&self, req: &BlockRequest) -> Range<u64> {
        let start = self.layout.piece_range(req.piece).start + u64::from(req.offset);
        start..start + u64::from(req.length)
    }

    /// Appends the iovecs of a block's bytes (one per file it spans) to
    /// `out`. The request must have been validated against the torrent (the
    /// session does that); the addresses stay valid while `self` lives.
    pub fn block_iovecs(&self, req: &BlockRequest, out: &mut Vec<libc::iovec>) {
        debug_assert!(!self.block_needs_copy(req), "{req:?} is not mapped");
        for seg in self.layout.segments(self.block_range(req)) {
            let base = match &self.files[seg.file] {
                Some(DataFile { map: Some(map), .. }) if !seg.pad => {
                    // SAFETY: `seg` lies inside file `seg.file` (layout
                    // arithmetic), whose mapping is `f.len` bytes long, so the
                    // offset stays inside the mapping. The pointer is only
                    // given to the kernel, never read here (module docs).
                    unsafe { map.as_ptr().add(seg.file_offset as usize) }
                }
                _ => ZEROS.as_ptr(),
            };
            out.push(libc::iovec {
                iov_base: base as *mut libc::c_void,
                iov_len: seg.len as usize,
            });
        }
    }

    /// The positioned reads that copy a block's bytes into a buffer: (file
    /// descriptor, offset in the file, offset in the block, length), one per
    /// file it spans; pad files are left out (their bytes are zeros, which
    /// the caller writes where no segment lands). For blocks sent from a
    /// buffer rather than from the
    /// mapping; reading with the kernel, not through the mapping, so a
    /// truncated file shows as a short read, never as SIGBUS.
    pub fn block_reads(&self, req: &BlockRequest) -> Option<Vec<FileSegment>> {
        self.file_segments(self.block_range(req))
    }

    /// Whether some of a block's bytes are in a file that is not mapped
    /// (small, or past the mapping budget): it must be copied, not sent
    /// from the mapping. Pad files need no mapping.
    pub fn block_needs_copy(&self, req: &BlockRequest) -> bool {
        self.layout
            .segments(self.block_range(req))
            .any(|seg| !seg.pad && matches!(&self.files[seg.file], Some(f) if f.map.is_none()))
    }

    /// How many iovecs the block's bytes need (one per file it spans).
    pub fn block_segments(&self, req: &BlockRequest) -> usize {
        self.layout.segments(self.block_range(req)).count()
    }

    /// Whether every page of a block is in the page cache, so sending it
    /// cannot stall on a disk read.
    pub fn is_resident(&self, req: &BlockRequest) -> bool {
        self.mapped_ranges(req)
            .all(|(addr, len)| pages_resident(addr, len))
    }

    /// Starts reading a cold block's pages from disk in the background, with
    /// the rest of its piece up to [`PREFETCH_MAX`]: peers fetch a piece's
    /// blocks in order, so one larger read replaces many 16 KiB ones, while
    /// nothing beyond the piece is read (the mappings have fault readahead
    /// off).
    /// Returns the piece offset up to which reads were started.
    pub fn prefetch(&self, req: &BlockRequest) -> u32 {
        let piece_end = self.layout.piece_len(req.piece) as u32;
        let length = (piece_end - req.offset).min(PREFETCH_MAX.max(req.length));
        let ahead = BlockRequest { length, ..*req };
        for (addr, len) in self.mapped_ranges(&ahead) {
            let (start, len) = page_span(addr, len);
            // SAFETY: the span covers pages of a live mapping of ours;
            // MADV_WILLNEED only schedules reads and touches no memory of
            // this process. A failure only loses the hint.
            unsafe {
                libc::madvise(start as *mut libc::c_void, len, libc::MADV_WILLNEED);
            }
        }
        req.offset + length
    }

    /// (address, length) of the mapped parts of a block (not pad files).
    fn mapped_ranges(&self, req: &BlockRequest) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.layout
            .segments(self.block_range(req))
            .filter_map(move |seg| match &self.files[seg.file] {
                Some(DataFile { map: Some(map), .. }) if !seg.pad => Some((
                    map.as_ptr() as usize + seg.file_offset as usize,
                    seg.len as usize,
                )),
                _ => None,
            })
    }
}

impl Drop for Torrent {
    fn drop(&mut self) {
        FilePool::global().forget_owner(self.owner);
    }
}

/// Reserves `len` bytes of disk for `file`, so later writes cannot fail for
/// lack of space. Filesystems without `fallocate` get nothing reserved.
fn reserve(file: &File, len: u64) -> io::Result<()> {
    // SAFETY: plain syscall on a descriptor we own; no memory is passed.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len as libc::off_t) };
    match rc {
        0 | libc::EOPNOTSUPP | libc::EINVAL => Ok(()),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no memory effects.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096)
}

/// The page-aligned span that covers `[addr, addr + len)`.
fn page_span(addr: usize, len: usize) -> (usize, usize) {
    let page = page_size();
    let start = addr & !(page - 1);
    let end = (addr + len).div_ceil(page) * page;
    (start, end - start)
}

fn pages_resident(addr: usize, len: usize) -> bool {
    let page = page_size();
    let (mut start, span) = page_span(addr, len);
    let end = start + span;
    let mut vec = [0u8; 64];
    while start < end {
        let chunk = (end - start).min(vec.len() * page);
        // SAFETY: `start..start + chunk` are whole pages of a live mapping
        // of ours; `vec` has room for one byte per page of `chunk`
        // (chunk <= 64 pages). mincore reads page tables, not the pages.
        let rc = unsafe { libc::mincore(start as *mut libc::c_void, chunk, vec.as_mut_ptr()) };
        if rc != 0 || vec[..chunk / page].iter().any(|b| b & 1 == 0) {
            return false;
        }
        start += chunk;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::create::{create, CreateOptions};

    fn seed_torrent(dir: &std::path::Path, len: usize) -> (Arc<Torrent>, Vec<u8>) {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 % 253) as u8).collect();
        let path = dir.join("f.bin");
        std::fs::write(&path, &data).unwrap();
        let options = CreateOptions {
            piece_length: Some(32768),
            ..Default::default()
        };
        let created = create(&path, &options, &()).unwrap();
        let paths = DataPaths::in_save_dir(&created.metainfo.info, dir);
        (Torrent::open(created.metainfo, &paths).unwrap(), data)
    }

    /// Gathers what the kernel would send, through `preadv`-like copying
    /// done by the kernel itself (`process_vm_readv` is overkill: a pipe
    /// write copies from the iovecs in kernel mode, like `sendmsg`).
    fn kernel_copy(iov: &[libc::iovec]) -> io::Result<Vec<u8>> {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for two descriptors.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let total: usize = iov.iter().map(|v| v.iov_len).sum();
        // SAFETY: enlarging a pipe we own.
        unsafe { libc::fcntl(fds[1], libc::F_SETPIPE_SZ, 1 << 20) };
        // SAFETY: the iovecs point into live mappings or ZEROS; the kernel
        // copies from them and reports EFAULT for pages it cannot read.
        let n = unsafe { libc::writev(fds[1], iov.as_ptr(), iov.len() as i32) };
        let result = if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            let mut out = vec![0u8; n as usize];
            // SAFETY: reading into a buffer of the right size.
            let r = unsafe { libc::read(fds[0], out.as_mut_ptr().cast(), out.len()) };
            assert_eq!(r, n);
            assert_eq!(n as usize, total);
            Ok(out)
        };
        // SAFETY: closing our own pipe.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
        result
    }

    #[test]
    fn aligned_segments_of_a_download_are_written_past_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let (seeded, data) = seed_torrent(dir.path(), 100_000);
        let out = dir.path().join("out");
        let paths = DataPaths::in_save_dir(&seeded.metainfo.info, &out);
        let pieces = seeded.layout.num_pieces();
        let t = Torrent::open_for_download(
            seeded.metainfo.clone(),
            &paths,
            &[true],
            Bitfield::new(pieces),
            Bitfield::full(pieces),
            DownloadConfig::default(),
        )
        .unwrap();
        assert!(
            seeded
                .segment_file_direct(
                    &seeded.piece_writes(0).unwrap()[0],
                    &PieceBuf::zeroed(32768)
                )
                .is_none(),
            "a seeded torrent writes nothing"
        );
        // Piece 1: 32 KiB at offset 32 KiB, all aligned.
        let segment = &t.piece_writes(1).unwrap()[0];
        let piece = PieceBuf::copy_of(&data[32768..65536]);
        let file = t.segment_file_direct(segment, &piece);
        // The test's filesystem may refuse O_DIRECT (tmpfs before 6.6):
        // then the torrent says so and writes through the page cache.
        let Some(file) = file else {
            assert!(!t
                .download
                .as_ref()
                .unwrap()
                .direct_writes
                .load(Ordering::Relaxed));
            return;
        };
        use std::os::unix::fs::FileExt;
        file.write_all_at(&piece, segment.file_offset).unwrap();
        let written = std::fs::read(&paths.files[0]).unwrap();
        assert_eq!(&written[32768..65536], &data[32768..65536]);
        // The last piece (100,000 - 98,304 bytes) is not a multiple of 4 KiB.
        let last = &t.piece_writes(pieces - 1).unwrap()[0];
        assert!(t
            .segment_file_direct(last, &PieceBuf::zeroed(last.len))
            .is_none());
        // Nor is a segment that starts inside a piece at an odd place.
        let odd = FileSegment {
            at: 100,
            file_offset: 100,
            len: 4096,
            file: 0,
        };
        assert!(t.segment_file_direct(&odd, &piece).is_none());
    }

    #[test]
    fn blocks_map_to_the_right_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let (t, data) = seed_torrent(dir.path(), 100_000);
        let req = BlockRequest {
            piece: 1,
            offset: 16384,
            length: 16384,
        };
        let mut iov = Vec::new();
        t.block_iovecs(&req, &mut iov);
        let start = 32768 + 16384;
        assert_eq!(kernel_copy(&iov).unwrap(), &data[start..start + 16384]);
        t.prefetch(&req);
        assert!(t.is_resident(&req), "just written, so in the page cache");
        assert!(t.check_files());
    }

    #[test]
    fn a_truncated_file_gives_efault_not_sigbus_and_errors_the_torrent() {
        let dir = tempfile::tempdir().unwrap();
        let (t, _) = seed_torrent(dir.path(), 100_000);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join("f.bin"))
            .unwrap();
        f.set_len(10_000).unwrap();
        let req = BlockRequest {
            piece: 2,
            offset: 0,
            length: 16384,
        };
        let mut iov = Vec::new();
        t.block_iovecs(&req, &mut iov);
        let err = kernel_copy(&iov).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EFAULT));
        assert!(!t.is_resident(&req));
        assert!(!t.check_files());
        assert!(t.is_errored());
        assert!(t.error().unwrap().contains("truncated to 10000 bytes"));
    }

    #[test]
    fn a_file_renamed_over_is_reported_once_and_its_old_data_still_served() {
        let dir = tempfile::tempdir().unwrap();
        let (t, data) = seed_torrent(dir.path(), 100_000);
        let new = dir.path().join("new.bin");
        std::fs::write(&new, vec![0xee; 100_000]).unwrap();
        std::fs::rename(&new, dir.path().join("f.bin")).unwrap();
        assert!(t.check_files(), "not an error: the old inode is mapped");
        let warning = t.warning().expect("reported");
        assert!(warning.contains("renamed over or deleted"), "{warning}");
        let req = BlockRequest {
            piece: 0,
            offset: 0,
            length: 16384,
        };
        let mut iov = Vec::new();
        t.block_iovecs(&req, &mut iov);
        assert_eq!(kernel_copy(&iov).unwrap(), &data[..16384]);
        // Reading it again by path would read another file: refused.
        let reads = t.block_reads(&req).unwrap();
        assert!(t.segment_file(&reads[0]).is_err());
        assert!(!t.is_errored());
    }

    #[test]
    fn small_files_are_read_not_mapped_and_hold_no_descriptor() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("tree");
        std::fs::create_dir(&root).unwrap();
        for i in 0..40 {
            std::fs::write(root.join(format!("{i:02}")), vec![i as u8; 1000]).unwrap();
        }
        let options = CreateOptions {
            piece_length: Some(16384),
            ..Default::default()
        };
        let created = create(&root, &options, &()).unwrap();
        let paths = DataPaths::in_save_dir(&created.metainfo.info, dir.path());
        let t = Torrent::open(created.metainfo, &paths).unwrap();
        let req = BlockRequest {
            piece: 0,
            offset: 0,
            length: 16384,
        };
        assert!(t.block_needs_copy(&req));
        let reads = t.block_reads(&req).unwrap();
        let mut block = vec![0u8; 16384];
        for r in &reads {
            use std::os::unix::fs::FileExt;
            t.segment_file(r)
                .unwrap()
                .read_exact_at(&mut block[r.at..r.at + r.len], r.file_offset)
                .unwrap();
        }
        assert_eq!(&block[..1000], &[0u8; 1000][..]);
        assert_eq!(&block[1000..2000], &[1u8; 1000][..]);
        assert!(t.files.iter().flatten().all(|f| f.map.is_none()));
    }
}
