//! Hashing every piece of a torrent on all cores: used to create torrents and
//! to verify data before seeding.
//!
//! Threads claim batches of consecutive pieces (a few MiB, so each thread
//! reads sequentially) from one atomic counter, and ask the kernel to read
//! ahead the batch that will be claimed next, so disk reads overlap hashing.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::hash::{Sha1Digest, Sha1Hasher};
use crate::io::files::{DataPaths, FileProblem, PieceReader};
use crate::proto::layout::Layout;

/// Bytes a thread hashes per claim: large enough for sequential reads, small
/// enough that threads finish together.
const BATCH_BYTES: u64 = 4 << 20;

/// Bytes read per `pread` while hashing: small enough to stay in L2 between
/// the copy and the hash (measured in docs/BENCHMARKS.md).
const READ_CHUNK: usize = 64 << 10;

/// Receives progress from hashing threads.
pub trait Progress: Sync {
    /// `bytes` more bytes were hashed.
    fn advance(&self, bytes: u64);

    /// Whether the caller no longer wants the result: hashing threads stop
    /// at their next batch (pieces not hashed then count as unreadable).
    fn cancelled(&self) -> bool {
        false
    }
}

impl Progress for () {
    fn advance(&self, _bytes: u64) {}
}

/// How many threads to hash with: `requested`, or one per core.
pub fn thread_count(requested: Option<NonZeroUsize>) -> usize {
    requested
        .or_else(|| std::thread::available_parallelism().ok())
        .map_or(1, NonZeroUsize::get)
}

/// The digest of every piece, `None` where the piece could not be read.
pub fn hash_pieces(
    layout: &Layout,
    paths: &DataPaths,
    threads: usize,
    progress: &dyn Progress,
) -> (Vec<Option<Sha1Digest>>, Vec<(usize, FileProblem)>) {
    let reader = PieceReader::open(layout, paths);
    let num_pieces = layout.num_pieces();
    let pieces_per_batch =
        (BATCH_BYTES / layout.piece_length()).clamp(1, u64::from(u32::MAX)) as u32;
    let num_batches = num_pieces.div_ceil(pieces_per_batch);
    let batch_range = |b: u32| {
        let first = b * pieces_per_batch;
        first..(first + pieces_per_batch).min(num_pieces)
    };
    let next_batch = AtomicU32::new(0);
    let threads = threads.clamp(1, num_batches.max(1) as usize);

    let per_thread: Vec<Vec<(u32, Option<Sha1Digest>)>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    let mut scratch = vec![0u8; READ_CHUNK];
                    loop {
                        let b = next_batch.fetch_add(1, Ordering::Relaxed);
                        if b >= num_batches || progress.cancelled() {
                            break;
                        }
                        let ahead = b + threads as u32;
                        if ahead < num_batches {
                            let r = batch_range(ahead);
                            reader.prefetch(
                                layout.piece_range(r.start).start
                                    ..layout.piece_range(r.end - 1).end,
                            );
                        }
                        for piece in batch_range(b) {
                            let mut h = Sha1Hasher::new();
                            let digest = reader
                                .read_piece_chunks(piece, &mut scratch, |chunk| h.update(chunk))
                                .ok()
                                .map(|()| h.finish());
                            progress.advance(layout.piece_len(piece));
                            out.push((piece, digest));
                        }
                    }
                    out
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("hashing thread panicked"))
            .collect()
    });

    let mut digests = vec![None; num_pieces as usize];
    for (piece, digest) in per_thread.into_iter().flatten() {
        digests[piece as usize] = digest;
    }
    (digests, reader.problems().to_vec())
}

/// The outcome of checking data against a torrent's piece hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Number of pieces in the torrent.
    pub num_pieces: u32,
    /// Pieces whose data is missing or does not match, ascending.
    pub bad_pieces: Vec<u32>,
    /// Files (by index) that hold a byte of a bad piece, pad files excluded.
    pub damaged_files: Vec<usize>,
    /// Files that are missing, of the wrong size or unreadable.
    pub file_problems: Vec<(usize, FileProblem)>,
}

impl VerifyReport {
    /// Number of pieces that matched.
    pub fn good_pieces(&self) -> u32 {
        self.num_pieces - self.bad_pieces.len() as u32
    }

    /// Whether every piece matched.
    pub fn is_complete(&self) -> bool {
        self.bad_pieces.is_empty()
    }
}

/// Checks every piece of the data at `paths` against `expected`.
pub fn verify(
    layout: &Layout,
    expected: &[Sha1Digest],
    paths: &DataPaths,
    threads: usize,
    progress: &dyn Progress,
) -> VerifyReport {
    assert_eq!(
        expected.len(),
        layout.num_pieces() as usize,
        "one hash per piece"
    );
    let (digests, file_problems) = hash_pieces(layout, paths, threads, progress);
    let bad_pieces: Vec<u32> = digests
        .iter()
        .zip(expected)
        .enumerate()
        .filter(|(_, (got, want))| got.as_ref() != Some(want))
        .map(|(i, _)| i as u32)
        .collect();
    let damaged_files = (0..layout.num_files())
        .filter(|&f| !layout.is_pad(f))
        .filter(|&f| {
            let pieces = layout.pieces_of_file(f);
            let first_bad = bad_pieces.partition_point(|&p| p < pieces.start);
            bad_pieces.get(first_bad).is_some_and(|&p| p < pieces.end)
        })
        .collect();
    VerifyReport {
        num_pieces: layout.num_pieces(),
        bad_pieces,
        damaged_files,
        file_problems,
    }
}
