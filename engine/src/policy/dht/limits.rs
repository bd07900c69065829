//! Packet-rate limits: a pacer for what we send, and per-source buckets for
//! what we answer, in a bounded map so spoofed floods cannot grow it.
//!
//! Both are token buckets counted in thousandths of a packet so that low
//! rates refill smoothly under a fine-grained clock.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

/// A token bucket of packets: `rate` per second, up to `burst` at once.
#[derive(Debug, Clone)]
pub struct Pacer {
    rate: u64,
    burst_milli: u64,
    milli: u64,
    last: Duration,
}

impl Pacer {
    /// A full bucket; a `rate` of 0 means no limit.
    pub fn new(rate: u32, burst: u32, now: Duration) -> Self {
        let burst_milli = u64::from(burst.max(1)) * 1000;
        Pacer {
            rate: u64::from(rate),
            burst_milli,
            milli: burst_milli,
            last: now,
        }
    }

    fn refill(&mut self, now: Duration) {
        let elapsed = now.saturating_sub(self.last);
        // Milli-packets earned: rate/s x elapsed ms.
        let add = (elapsed.as_millis() as u64).saturating_mul(self.rate);
        if add > 0 {
            self.milli = (self.milli + add).min(self.burst_milli);
            self.last = now;
        }
    }

    /// Takes one packet if the bucket has one at `now`.
    pub fn try_take(&mut self, now: Duration) -> bool {
        if self.rate == 0 {
            return true;
        }
        self.refill(now);
        if self.milli >= 1000 {
            self.milli -= 1000;
            true
        } else {
            false
        }
    }

    /// When the next packet will be available (`now` if one is).
    pub fn next_available(&self, now: Duration) -> Duration {
        if self.rate == 0 || self.milli >= 1000 {
            return now;
        }
        let missing = 1000 - self.milli;
        self.last + Duration::from_millis(missing.div_ceil(self.rate))
    }

    /// Whether the bucket is full at `now` (the source has been quiet).
    fn is_full(&mut self, now: Duration) -> bool {
        self.refill(now);
        self.milli >= self.burst_milli
    }
}

/// The key a source is limited under: its IPv4 address, or its IPv6 /64,
/// since one host may hold a whole /64.
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let mut o = v6.octets();
            o[8..].fill(0);
            IpAddr::from(o)
        }
    }
}

/// Per-source query limits. At most `max_sources` buckets are kept; when the
/// map is full and idle buckets cannot be dropped, unknown sources share one
/// overflow bucket, so a flood from many addresses is limited as one.
#[derive(Debug)]
pub struct SourceLimiter {
    rate: u32,
    burst: u32,
    max_sources: usize,
    sources: HashMap<IpAddr, Pacer>,
    overflow: Pacer,
}

impl SourceLimiter {
    /// `rate` queries a second per source, bursts of `burst`.
    pub fn new(rate: u32, burst: u32, max_sources: usize, now: Duration) -> Self {
        SourceLimiter {
            rate,
            burst,
            max_sources,
            sources: HashMap::new(),
            overflow: Pacer::new(rate.saturating_mul(4), burst.saturating_mul(4), now),
        }
    }

    /// Whether a query from `ip` may be answered at `now`.
    pub fn allow(&mut self, ip: IpAddr, now: Duration) -> bool {
        let key = source_key(ip);
        if let Some(p) = self.sources.get_mut(&key) {
            return p.try_take(now);
        }
        if self.sources.len() >= self.max_sources {
            self.prune(now);
        }
        if self.sources.len() >= self.max_sources {
            return self.overflow.try_take(now);
        }
        let mut p = Pacer::new(self.rate, self.burst, now);
        let ok = p.try_take(now);
        self.sources.insert(key, p);
        ok
    }

    /// Forgets sources whose bucket has refilled: they behave as new ones.
    pub fn prune(&mut self, now: Duration) {
        self.sources.retain(|_, p| !p.is_full(now));
    }

    /// Sources tracked.
    pub fn len(&self) -> usize {
        self.sources.len()
    }

    /// Whether no source is tracked.
    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn pacer_allows_the_burst_then_the_rate() {
        let mut p = Pacer::new(10, 5, Duration::ZERO);
        let t0 = Duration::from_secs(1);
        // Full after a second idle: the burst of 5.
        assert_eq!((0..20).filter(|_| p.try_take(t0)).count(), 5);
        assert_eq!(p.next_available(t0), t0 + 100 * MS);
        assert!(!p.try_take(t0 + 99 * MS));
        assert!(p.try_take(t0 + 100 * MS));
        // Over 10 seconds, about 10 a second.
        let sent = (0..10_000u64)
            .filter(|i| p.try_take(t0 + 100 * MS + *i as u32 * MS))
            .count();
        assert!((99..=101).contains(&sent), "{sent}");
    }

    #[test]
    fn sources_are_limited_apart_and_the_map_is_bounded() {
        let now = Duration::from_secs(10);
        let mut l = SourceLimiter::new(2, 4, 100, Duration::ZERO);
        let a: IpAddr = "203.0.113.1".parse().unwrap();
        let b: IpAddr = "203.0.113.2".parse().unwrap();
        assert_eq!((0..10).filter(|_| l.allow(a, now)).count(), 4);
        assert_eq!((0..10).filter(|_| l.allow(b, now)).count(), 4);
        assert!(l.allow(a, now + Duration::from_millis(500)));
        // A flood from a thousand addresses keeps the map bounded and is
        // limited by the shared overflow bucket.
        let allowed = (0..1000u32)
            .filter(|i| l.allow(IpAddr::from(i.to_be_bytes()), now))
            .count();
        assert!(l.len() <= 100);
        assert!(allowed <= 100 + 16, "{allowed}");
        // IPv6 sources share a bucket per /64.
        let x: IpAddr = "2001:db8::1".parse().unwrap();
        let y: IpAddr = "2001:db8::2".parse().unwrap();
        let mut l = SourceLimiter::new(1, 2, 100, Duration::ZERO);
        assert!(l.allow(x, now));
        assert!(l.allow(y, now));
        assert!(!l.allow(x, now));
    }
}
