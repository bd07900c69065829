//! A token bucket for the upload rate limit. Each worker holds its own
//! bucket with its share of the global rate, so no lock is shared; shares
//! follow demand once a second ([`worker_share`]).

use std::time::Duration;

/// Bytes that may be sent now; refilled continuously at `rate` per second
/// up to `burst`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: u64,
    burst: u64,
    tokens: u64,
    last: Duration,
    /// Bytes taken since `take_used` was last called.
    used: u64,
}

impl TokenBucket {
    /// A full bucket refilled at `rate` bytes per second; 0 means no limit.
    /// The burst is a tenth of a second of rate, at least 256 KiB (one large
    /// batch of blocks).
    pub fn new(rate: u64, now: Duration) -> Self {
        let burst = (rate / 10).max(256 << 10);
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            last: now,
            used: 0,
        }
    }

    /// Changes the rate (and burst), keeping the tokens there are.
    pub fn set_rate(&mut self, rate: u64) {
        self.rate = rate;
        self.burst = (rate / 10).max(256 << 10);
        self.tokens = self.tokens.min(self.burst);
    }

    /// Bytes taken since the last call.
    pub fn take_used(&mut self) -> u64 {
        std::mem::take(&mut self.used)
    }

    /// Whether a limit is set at all.
    pub fn is_limited(&self) -> bool {
        self.rate != 0
    }

    fn refill(&mut self, now: Duration) {
        let elapsed = now.saturating_sub(self.last);
        let add = (elapsed.as_nanos() * u128::from(self.rate) / 1_000_000_000) as u64;
        if add > 0 {
            self.tokens = (self.tokens + add).min(self.burst);
            self.last = now;
        }
    }

    /// Takes `bytes` if that many are available at `now`.
    pub fn try_take(&mut self, bytes: u64, now: Duration) -> bool {
        if self.rate == 0 {
            return true;
        }
        self.refill(now);
        if self.tokens >= bytes {
            self.tokens -= bytes;
            self.used += bytes;
            true
        } else {
            false
        }
    }
}

/// A worker's share of the process's `rate` (0: none), given how many of
/// the `workers` want more than an equal share (`wanting`, counting this
/// one if `this_wants`): a worker wants more if its bucket refused a send,
/// or it sent more than an equal share, in the last second (so a worker
/// given the whole rate keeps it while it uses it). Workers that want more split the rate; the
/// others keep an equal share so a new peer starts at once. One peer on one
/// worker thus gets the whole rate, and the process exceeds it only while
/// an idle worker starts sending, for at most a second, by that share.
pub fn worker_share(rate: u64, workers: usize, wanting: usize, this_wants: bool) -> u64 {
    let workers = workers.max(1) as u64;
    if rate == 0 {
        return 0;
    }
    if this_wants && wanting > 0 {
        rate / wanting as u64
    } else {
        rate.div_ceil(workers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_follow_demand() {
        // Nobody busy: equal shares.
        assert_eq!(worker_share(1000, 4, 0, false), 250);
        // One busy worker (one fast peer) gets it all.
        assert_eq!(worker_share(1000, 4, 1, true), 1000);
        assert_eq!(worker_share(1000, 4, 1, false), 250);
        // Two busy ones split it.
        assert_eq!(worker_share(1000, 4, 2, true), 500);
        // No limit stays no limit.
        assert_eq!(worker_share(0, 4, 2, true), 0);
    }

    #[test]
    fn a_new_rate_keeps_the_tokens_up_to_the_new_burst() {
        let mut b = TokenBucket::new(100 << 20, Duration::ZERO);
        b.set_rate(1 << 20);
        // The burst is now 256 KiB: no more than that is left.
        assert!(b.try_take(256 << 10, Duration::ZERO));
        assert!(!b.try_take(1, Duration::ZERO));
    }

    #[test]
    fn unlimited_always_allows() {
        let mut b = TokenBucket::new(0, Duration::ZERO);
        assert!(!b.is_limited());
        assert!(b.try_take(u64::MAX, Duration::ZERO));
    }

    #[test]
    fn refills_at_the_rate_up_to_the_burst() {
        // 10 MB/s: burst 1 MB.
        let mut b = TokenBucket::new(10_000_000, Duration::ZERO);
        assert!(b.try_take(1_000_000, Duration::ZERO));
        assert!(!b.try_take(1, Duration::ZERO));
        // 50 ms later: 500 KB.
        let t = Duration::from_millis(50);
        assert!(!b.try_take(600_000, t));
        assert!(b.try_take(500_000, t));
        // A long idle time refills only up to the burst.
        let t = Duration::from_secs(100);
        assert!(!b.try_take(1_000_001, t));
        assert!(b.try_take(1_000_000, t));
    }

    #[test]
    fn sustained_rate_matches_the_limit() {
        let mut b = TokenBucket::new(1_000_000, Duration::ZERO);
        let mut sent = 0u64;
        for ms in 0..=10_000u64 {
            while b.try_take(16384, Duration::from_millis(ms)) {
                sent += 16384;
            }
        }
        // 10 s at 1 MB/s plus the initial burst (256 KiB).
        let expected = 10_000_000 + (256 << 10);
        assert!(sent <= expected && sent + 16384 * 2 >= expected, "{sent}");
    }
}
