//! Watching directories with inotify: any entry created, written, renamed
//! or deleted wakes the daemon, which then rescans that directory. Events
//! only say "look again"; the scan decides what changed, so a lost or
//! coalesced event (queue overflow) costs nothing but a later rescan.

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use inotify::{Inotify, WatchMask};

/// A thread watching some directories; stops when dropped.
pub struct Watcher {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Watcher {
    /// Watches `dirs` and calls `changed(dir)` after events in one. Missing
    /// or unreadable directories are reported by `failed` and skipped (the
    /// periodic rescan finds them once they exist).
    pub fn start(
        dirs: Vec<PathBuf>,
        changed: impl Fn(&PathBuf) + Send + 'static,
        failed: impl Fn(&PathBuf, std::io::Error),
    ) -> std::io::Result<Self> {
        let mut inotify = Inotify::init()?;
        // MODIFY too: the first write into a seeded file must stop it being
        // served (see `stop_if_changed_in_place`), not the last one.
        let mask = WatchMask::CREATE
            | WatchMask::MODIFY
            | WatchMask::CLOSE_WRITE
            | WatchMask::MOVED_TO
            | WatchMask::MOVED_FROM
            | WatchMask::DELETE
            | WatchMask::ATTRIB
            | WatchMask::DELETE_SELF
            | WatchMask::MOVE_SELF;
        let mut watched = Vec::new();
        for dir in dirs {
            match inotify.watches().add(&dir, mask) {
                Ok(wd) => watched.push((wd, dir)),
                Err(e) => failed(&dir, e),
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = Arc::clone(&stop);
        let handle = std::thread::Builder::new()
            .name("ringseed-watch".into())
            .spawn(move || {
                let mut buffer = vec![0u8; 64 << 10];
                while !thread_stop.load(Ordering::Relaxed) {
                    let mut pfd = libc::pollfd {
                        fd: inotify.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd for the duration of the call.
                    let ready = unsafe { libc::poll(&mut pfd, 1, 500) };
                    if ready <= 0 {
                        continue;
                    }
                    let Ok(events) = inotify.read_events(&mut buffer) else {
                        continue;
                    };
                    let mut dirs: Vec<&PathBuf> = Vec::new();
                    let mut overflow = false;
                    for event in events {
                        overflow |= event.mask.contains(inotify::EventMask::Q_OVERFLOW);
                        if let Some((_, dir)) = watched.iter().find(|(wd, _)| *wd == event.wd) {
                            if !dirs.contains(&dir) {
                                dirs.push(dir);
                            }
                        }
                    }
                    if overflow {
                        dirs = watched.iter().map(|(_, d)| d).collect();
                    }
                    for dir in dirs {
                        changed(dir);
                    }
                }
            })?;
        Ok(Watcher {
            stop,
            handle: Some(handle),
        })
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
