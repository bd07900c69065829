//! When to announce each torrent to the DHT: every torrent, every 15 to 30
//! minutes, spread out so that thousands of torrents never start their
//! lookups in one burst, and with no cap on how many torrents take part
//! (libtorrent's `active_dht_limit` silently left torrents out).
//!
//! Announces are paced: one per `min_interval / torrents` (at most a
//! second's worth at once), so the whole set is covered once per
//! `min_interval` at a steady rate. New
//! torrents go first, in the order they were added (a restart with 10,000
//! torrents announces them all within the first 15 minutes, evenly). After
//! an announce the torrent is due again after `min_interval` plus a random
//! jitter up to `max_interval`, so torrents added together drift apart.
//! If the caller cannot keep up (it should only take an announce when the
//! DHT has room for another lookup), torrents wait in due order: late,
//! never dropped.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use crate::proto::info_hash::InfoHash;
use crate::rng;

/// The announce schedule of a set of torrents.
#[derive(Debug, Clone)]
pub struct AnnounceSchedule {
    min_interval: Duration,
    max_interval: Duration,
    /// Torrents not announced yet, first added first.
    fresh: VecDeque<InfoHash>,
    /// Announced torrents by when they are due again.
    due: BTreeSet<(Duration, InfoHash)>,
    /// Each torrent's due time (`None` while in `fresh`).
    members: HashMap<InfoHash, Option<Duration>>,
    /// No announce before this (the pacing).
    next_slot: Duration,
}

impl AnnounceSchedule {
    /// A schedule announcing every `min_interval` to `max_interval`
    /// (BEP 5 suggests 15 to 30 minutes).
    pub fn new(min_interval: Duration, max_interval: Duration) -> Self {
        AnnounceSchedule {
            min_interval,
            max_interval: max_interval.max(min_interval),
            fresh: VecDeque::new(),
            due: BTreeSet::new(),
            members: HashMap::new(),
            next_slot: Duration::ZERO,
        }
    }

    /// Adds a torrent; it is announced before the ones already announced.
    pub fn add(&mut self, info_hash: InfoHash) {
        if self.members.contains_key(&info_hash) {
            return;
        }
        self.members.insert(info_hash, None);
        self.fresh.push_back(info_hash);
    }

    /// Removes a torrent.
    pub fn remove(&mut self, info_hash: &InfoHash) {
        match self.members.remove(info_hash) {
            Some(Some(at)) => {
                self.due.remove(&(at, *info_hash));
            }
            Some(None) => self.fresh.retain(|h| h != info_hash),
            None => {}
        }
    }

    /// Torrents in the schedule.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the schedule is empty.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    fn spacing(&self) -> Duration {
        self.min_interval / u32::try_from(self.members.len().max(1)).unwrap_or(u32::MAX)
    }

    /// The torrent to announce now, if one is due and the pacing allows;
    /// it is rescheduled as announced. Call again until `None`.
    pub fn next_due(&mut self, now: Duration, rng_state: &mut u64) -> Option<InfoHash> {
        if now < self.next_slot {
            return None;
        }
        let info_hash = if let Some(h) = self.fresh.pop_front() {
            h
        } else {
            let &(at, h) = self.due.first()?;
            if at > now {
                return None;
            }
            self.due.remove(&(at, h));
            h
        };
        let spread = self.max_interval - self.min_interval;
        let jitter = Duration::from_millis(rng::next(rng_state) % (spread.as_millis() as u64 + 1));
        let at = now + self.min_interval + jitter;
        self.due.insert((at, info_hash));
        self.members.insert(info_hash, Some(at));
        // Slots follow each other at the spacing; a caller that was away
        // catches up with at most one second's worth at once.
        let floor = now.saturating_sub(Duration::from_secs(1));
        self.next_slot = self.next_slot.max(floor) + self.spacing();
        Some(info_hash)
    }

    /// When [`AnnounceSchedule::next_due`] may next return a torrent.
    pub fn poll_at(&self) -> Option<Duration> {
        let first = if !self.fresh.is_empty() {
            Duration::ZERO
        } else {
            self.due.first()?.0
        };
        Some(first.max(self.next_slot))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ih(n: u32) -> InfoHash {
        let mut h = [0u8; 20];
        h[..4].copy_from_slice(&n.to_be_bytes());
        InfoHash(h)
    }

    const MIN: Duration = Duration::from_secs(15 * 60);
    const MAX: Duration = Duration::from_secs(30 * 60);

    /// Runs the schedule second by second and returns, per second, how many
    /// announces were handed out, and per torrent their times.
    fn run(s: &mut AnnounceSchedule, secs: u64) -> (Vec<usize>, HashMap<InfoHash, Vec<u64>>) {
        let mut state = 99;
        let mut per_sec = Vec::new();
        let mut times: HashMap<InfoHash, Vec<u64>> = HashMap::new();
        for t in 0..secs {
            let now = Duration::from_secs(t);
            let mut n = 0;
            while let Some(h) = s.next_due(now, &mut state) {
                times.entry(h).or_default().push(t);
                n += 1;
            }
            per_sec.push(n);
        }
        (per_sec, times)
    }

    #[test]
    fn ten_thousand_torrents_start_without_a_storm_and_none_is_left_out() {
        let mut s = AnnounceSchedule::new(MIN, MAX);
        for i in 0..10_000 {
            s.add(ih(i));
        }
        let (per_sec, times) = run(&mut s, 3600);
        // About 11 a second, never a burst.
        assert!(
            per_sec.iter().all(|&n| n <= 12),
            "{:?}",
            per_sec.iter().max()
        );
        // Every torrent announced within the first 15 minutes (plus one
        // slot), then again 15-30 minutes after each announce.
        assert_eq!(times.len(), 10_000);
        for ts in times.values() {
            assert!(ts[0] <= 901, "{}", ts[0]);
            for w in ts.windows(2) {
                assert!(w[1] - w[0] >= 900, "{w:?}");
                // Late only by the pacing.
                assert!(w[1] - w[0] <= 1800 + 60, "{w:?}");
            }
            assert!(ts.len() >= 2);
        }
    }

    #[test]
    fn new_torrents_go_first_and_removed_ones_never_come_back() {
        let mut s = AnnounceSchedule::new(MIN, MAX);
        let mut state = 1;
        s.add(ih(1));
        assert_eq!(s.next_due(Duration::ZERO, &mut state), Some(ih(1)));
        s.add(ih(2));
        s.add(ih(3));
        s.remove(&ih(3));
        let later = Duration::from_secs(3600);
        // ih(1) is overdue, but the new ih(2) goes first.
        assert_eq!(s.next_due(later, &mut state), Some(ih(2)));
        let mut rest = Vec::new();
        for t in 0..7200 {
            if let Some(h) = s.next_due(later + Duration::from_secs(t), &mut state) {
                rest.push(h);
            }
        }
        assert!(rest.contains(&ih(1)));
        assert!(!rest.contains(&ih(3)));
        assert_eq!(s.len(), 2);
    }
}
