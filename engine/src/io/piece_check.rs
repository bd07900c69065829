//! Hashing of downloaded pieces, off the network path: a worker that
//! completes a piece hands it to this pool and goes on; the verdict goes
//! to the worker that writes the torrent (its queue, then a wake-up),
//! which writes a good piece through its ring or has a bad one fetched
//! again.

use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::Receiver;

use crate::hash::sha1;
use crate::io::plane::shared::{CheckJob, Checked, Shared};

/// Starts `threads` hashing threads that serve `jobs` until every sender is
/// gone.
pub fn spawn(threads: usize, jobs: Receiver<CheckJob>, shared: Arc<Shared>) -> Vec<JoinHandle<()>> {
    (0..threads.max(1))
        .filter_map(|i| {
            let jobs = jobs.clone();
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(format!("ringseed-check{i}"))
                .spawn(move || {
                    for job in jobs {
                        let expected = job
                            .torrent
                            .metainfo
                            .info
                            .pieces
                            .get(job.piece.piece as usize);
                        let good = expected == Some(&sha1(&job.piece.data));
                        shared.hand_checked(Checked {
                            torrent: job.torrent,
                            piece: job.piece,
                            good,
                        });
                    }
                })
                .ok()
        })
        .collect()
}
