//! Giving memory back to the system after a burst: when thousands of
//! connections close, their buffers are freed, but an allocator keeps the
//! pages of each thread's heap for reuse, and a daemon would stay fat for
//! months. The allocator is the binary's choice, so the binary registers
//! how to purge a thread's heap; workers call it when their connections
//! have dropped by [`PURGE_AFTER_DROP`] since their peak.

use std::sync::OnceLock;

/// Connections a worker must have lost since its peak before it purges.
pub const PURGE_AFTER_DROP: usize = 256;

static PURGE: OnceLock<fn()> = OnceLock::new();

/// Registers how to return the calling thread's free memory to the system
/// (for mimalloc, `mi_collect(true)`). Only the first call counts.
pub fn set_purge(purge: fn()) {
    let _ = PURGE.set(purge);
}

/// Returns the calling thread's free memory to the system, if the binary
/// said how.
pub fn purge_this_thread() {
    if let Some(purge) = PURGE.get() {
        purge();
    }
}

/// Tracks one thread's connection count to say when a purge is worth it.
#[derive(Debug, Default)]
pub struct BurstWatch {
    peak: usize,
}

impl BurstWatch {
    /// Notes `live` connections now; true when they have fallen by
    /// [`PURGE_AFTER_DROP`] since the peak (which then starts again here).
    pub fn should_purge(&mut self, live: usize) -> bool {
        self.peak = self.peak.max(live);
        if self.peak >= live + PURGE_AFTER_DROP {
            self.peak = live;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_purge_follows_a_large_drop_once() {
        let mut w = BurstWatch::default();
        assert!(!w.should_purge(100));
        assert!(!w.should_purge(5000));
        assert!(!w.should_purge(4800), "a small drop");
        assert!(w.should_purge(10));
        assert!(!w.should_purge(10), "once per drop");
        assert!(!w.should_purge(200));
        assert!(!w.should_purge(0), "less than the threshold below its peak");
    }
}
