//! The chokers: who gets upload slots.
//!
//! A seed has nothing to gain from tit-for-tat, so its slots rotate
//! round-robin ([`Choker`]): a peer that has been served its quota (bytes or
//! time) while others wait gives its slot to the peer that has waited
//! longest, and one optimistic slot goes to a random waiting peer, so every
//! interested peer is served in turn.
//!
//! While downloading, slots go to the peers that give us the most
//! ([`LeechChoker`], BEP 3's tit-for-tat), plus one optimistic slot that
//! moves every 30 s so that newcomers get a chance to prove themselves.

use std::collections::HashSet;
use std::time::Duration;

/// Choker settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChokerConfig {
    /// Regular upload slots; 0 means every peer is unchoked, always.
    pub upload_slots: usize,
    /// A slot holder that has received this many bytes since its unchoke
    /// rotates out when someone is waiting.
    pub rotate_after_bytes: u64,
    /// ...or that has held its slot this long.
    pub rotate_after: Duration,
    /// How often the optimistic slot moves.
    pub optimistic_every: Duration,
}

impl Default for ChokerConfig {
    fn default() -> Self {
        ChokerConfig {
            upload_slots: 0,
            rotate_after_bytes: 16 << 20,
            rotate_after: Duration::from_secs(60),
            optimistic_every: Duration::from_secs(30),
        }
    }
}

/// What the choker needs to know of a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// The caller's key for the peer.
    pub key: u64,
    /// Whether the peer wants data.
    pub interested: bool,
    /// Whether we currently unchoke it.
    pub unchoked: bool,
    /// Bytes served since its last unchoke.
    pub served_since_unchoke: u64,
    /// When it was last choked or unchoked (time since an arbitrary origin).
    pub since: Duration,
    /// Bytes of blocks it sent us since the last round.
    pub received: u64,
}

/// The choker's memory between rounds.
#[derive(Debug, Clone, Default)]
pub struct Choker {
    config: ChokerConfig,
    optimistic: Option<u64>,
    optimistic_since: Option<Duration>,
}

impl Choker {
    /// A choker with `config`.
    pub fn new(config: ChokerConfig) -> Self {
        Choker {
            config,
            ..Default::default()
        }
    }

    /// New settings from the next round on (a reload).
    pub fn set_config(&mut self, config: ChokerConfig) {
        self.config = config;
    }

    /// Between rounds: the waiting peers (interested, choked; longest
    /// waiting first) that free slots can take now, so a peer that arrives
    /// when a slot is free is served at once, not at the next round. Only
    /// `key`, `interested`, `unchoked` and `since` of `peers` are read.
    pub fn fill_free_slots(&self, peers: &[Candidate]) -> Vec<u64> {
        if self.config.upload_slots == 0 {
            return Vec::new();
        }
        let holders = peers.iter().filter(|p| p.interested && p.unchoked).count();
        // The regular slots and the optimistic one.
        let slots = self.config.upload_slots + 1;
        let free = slots.saturating_sub(holders);
        let mut waiting: Vec<&Candidate> = peers
            .iter()
            .filter(|p| p.interested && !p.unchoked)
            .collect();
        waiting.sort_by_key(|p| (p.since, p.key));
        waiting.into_iter().take(free).map(|p| p.key).collect()
    }

    /// One round at time `now`: returns `(key, unchoke)` for each peer whose
    /// state should change. `pick(n)` returns a random index below `n`.
    pub fn rechoke(
        &mut self,
        now: Duration,
        peers: &[Candidate],
        pick: &mut dyn FnMut(usize) -> usize,
    ) -> Vec<(u64, bool)> {
        let mut unchoke: HashSet<u64> = HashSet::new();
        if self.config.upload_slots == 0 {
            // Nobody waits for a slot, so nobody is choked: a peer that turns
            // interested later is served at once, not at the next round.
            unchoke.extend(peers.iter().map(|p| p.key));
            self.optimistic = None;
        } else {
            let is_waiting = |p: &&Candidate| p.interested && !p.unchoked;
            let mut waiting: Vec<&Candidate> = peers.iter().filter(is_waiting).collect();
            // Longest-waiting first.
            waiting.sort_by_key(|p| (p.since, p.key));
            let mut waiting = waiting.into_iter().map(|p| p.key);

            // Current holders (not the optimistic one), least served first so
            // that the most served rotate out first.
            let mut holders: Vec<&Candidate> = peers
                .iter()
                .filter(|p| p.interested && p.unchoked && Some(p.key) != self.optimistic)
                .collect();
            holders.sort_by_key(|p| (p.served_since_unchoke, p.key));
            let due = |p: &Candidate| {
                p.served_since_unchoke >= self.config.rotate_after_bytes
                    || now.saturating_sub(p.since) >= self.config.rotate_after
            };
            let mut rotating_out = Vec::new();
            for p in holders.into_iter() {
                if unchoke.len() < self.config.upload_slots && !due(p) {
                    unchoke.insert(p.key);
                } else {
                    rotating_out.push(p.key);
                }
            }
            // Free slots go to the longest waiting, then back to due holders
            // if nobody waits.
            while unchoke.len() < self.config.upload_slots {
                match waiting.next() {
                    Some(k) => unchoke.insert(k),
                    None => break,
                };
            }
            let mut rotating_out = rotating_out.into_iter();
            while unchoke.len() < self.config.upload_slots {
                match rotating_out.next() {
                    Some(k) => unchoke.insert(k),
                    None => break,
                };
            }

            // The optimistic slot: kept until its period ends, then given to
            // a random peer that got no regular slot.
            let still_there = self
                .optimistic
                .is_some_and(|k| peers.iter().any(|p| p.key == k && p.interested));
            let period_over = self
                .optimistic_since
                .is_none_or(|t| now.saturating_sub(t) >= self.config.optimistic_every);
            if !still_there || period_over {
                let without_slot = |p: &&Candidate| p.interested && !unchoke.contains(&p.key);
                // Peers that are choked now come first: a holder that just
                // rotated out should not win the slot straight back.
                let mut choices: Vec<u64> = peers
                    .iter()
                    .filter(without_slot)
                    .filter(|p| !p.unchoked || Some(p.key) == self.optimistic)
                    .map(|p| p.key)
                    .collect();
                if choices.is_empty() {
                    choices = peers.iter().filter(without_slot).map(|p| p.key).collect();
                }
                // Move the slot on, unless its holder is the only choice.
                if choices.len() > 1 {
                    choices.retain(|k| Some(*k) != self.optimistic);
                }
                self.optimistic = (!choices.is_empty()).then(|| choices[pick(choices.len())]);
                self.optimistic_since = Some(now);
            }
            unchoke.extend(self.optimistic);
        }

        changes(peers, &unchoke)
    }
}

/// `(key, unchoke)` for each peer whose state differs from the decision.
fn changes(peers: &[Candidate], unchoke: &HashSet<u64>) -> Vec<(u64, bool)> {
    peers
        .iter()
        .filter_map(|p| {
            let want = unchoke.contains(&p.key);
            (want != p.unchoked).then_some((p.key, want))
        })
        .collect()
}

/// The tit-for-tat choker of torrents being downloaded.
#[derive(Debug, Clone, Default)]
pub struct LeechChoker {
    slots: usize,
    optimistic: Option<u64>,
    optimistic_since: Option<Duration>,
}

/// How often the optimistic unchoke moves while downloading.
const LEECH_OPTIMISTIC_EVERY: Duration = Duration::from_secs(30);

impl LeechChoker {
    /// A choker with `slots` regular slots; 0 means no peer is ever choked.
    pub fn new(slots: usize) -> Self {
        LeechChoker {
            slots,
            ..Default::default()
        }
    }

    /// New slots from the next round on (a reload).
    pub fn set_slots(&mut self, slots: usize) {
        self.slots = slots;
    }

    /// One round: the interested peers that sent us the most since the last
    /// round keep or get the regular slots, one other gets the optimistic
    /// slot. Returns `(key, unchoke)` for each change.
    pub fn rechoke(
        &mut self,
        now: Duration,
        peers: &[Candidate],
        pick: &mut dyn FnMut(usize) -> usize,
    ) -> Vec<(u64, bool)> {
        let mut unchoke: HashSet<u64> = HashSet::new();
        if self.slots == 0 {
            unchoke.extend(peers.iter().map(|p| p.key));
        } else {
            let mut interested: Vec<&Candidate> = peers.iter().filter(|p| p.interested).collect();
            // Best givers first; on equal terms, those unchoked already keep
            // their slot (no flapping).
            interested.sort_by_key(|p| (std::cmp::Reverse(p.received), !p.unchoked, p.key));
            unchoke.extend(interested.iter().take(self.slots).map(|p| p.key));
            let still_there = self
                .optimistic
                .is_some_and(|k| interested.iter().any(|p| p.key == k) && !unchoke.contains(&k));
            let period_over = self
                .optimistic_since
                .is_none_or(|t| now.saturating_sub(t) >= LEECH_OPTIMISTIC_EVERY);
            if !still_there || period_over {
                let choices: Vec<u64> = interested
                    .iter()
                    .filter(|p| !unchoke.contains(&p.key))
                    .map(|p| p.key)
                    .collect();
                self.optimistic = (!choices.is_empty()).then(|| choices[pick(choices.len())]);
                self.optimistic_since = Some(now);
            }
            unchoke.extend(self.optimistic);
        }
        changes(peers, &unchoke)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(key: u64, unchoked: bool, served: u64, since_s: u64) -> Candidate {
        Candidate {
            key,
            interested: true,
            unchoked,
            served_since_unchoke: served,
            since: Duration::from_secs(since_s),
            received: 0,
        }
    }

    #[test]
    fn tit_for_tat_unchokes_the_best_givers_plus_one_optimistic() {
        let mut c = LeechChoker::new(2);
        let mut peers: Vec<Candidate> = (1..=5).map(|k| peer(k, false, 0, 0)).collect();
        for (p, received) in peers.iter_mut().zip([10, 500, 300, 0, 20]) {
            p.received = received;
        }
        let mut first = |_: usize| 0;
        let mut got = c.rechoke(Duration::ZERO, &peers, &mut first);
        got.sort();
        // Peers 2 and 3 gave most; the optimistic slot goes to the first of
        // the others (5, then 1, then 4 by what they gave).
        assert_eq!(got, vec![(2, true), (3, true), (5, true)]);
        for p in peers.iter_mut() {
            p.unchoked = matches!(p.key, 2 | 3 | 5);
        }
        // Peer 5 now gives most and earns a regular slot; 3 gave nothing and
        // loses its one; the optimistic slot, freed by 5, goes to 1.
        peers[4].received = 1000;
        peers[2].received = 0;
        let mut got = c.rechoke(Duration::from_secs(10), &peers, &mut first);
        got.sort();
        assert_eq!(got, vec![(1, true), (3, false)]);
    }

    #[test]
    fn tit_for_tat_without_slot_limit_chokes_nobody() {
        let mut c = LeechChoker::new(0);
        let peers = [peer(1, false, 0, 0), peer(2, true, 0, 0)];
        assert_eq!(
            c.rechoke(Duration::ZERO, &peers, &mut never),
            vec![(1, true)]
        );
    }

    fn never(_: usize) -> usize {
        0
    }

    fn config(slots: usize) -> ChokerConfig {
        ChokerConfig {
            upload_slots: slots,
            rotate_after_bytes: 1000,
            rotate_after: Duration::from_secs(60),
            optimistic_every: Duration::from_secs(30),
        }
    }

    #[test]
    fn unlimited_slots_never_choke_anyone() {
        let mut c = Choker::new(config(0));
        let mut uninterested = peer(3, true, 0, 0);
        uninterested.interested = false;
        let mut choked_uninterested = peer(4, false, 0, 0);
        choked_uninterested.interested = false;
        let peers = [
            peer(1, false, 0, 0),
            peer(2, true, 0, 0),
            uninterested,
            choked_uninterested,
        ];
        let decisions = c.rechoke(Duration::from_secs(10), &peers, &mut never);
        // An uninterested peer stays unchoked: when it turns interested its
        // requests are served at once (magnet peers fetch metadata first).
        assert_eq!(decisions, [(1, true), (4, true)]);
    }

    #[test]
    fn slots_fill_longest_waiting_first_plus_one_optimistic() {
        let mut c = Choker::new(config(2));
        let peers = [
            peer(1, false, 0, 5),
            peer(2, false, 0, 1),
            peer(3, false, 0, 3),
            peer(4, false, 0, 9),
        ];
        // Regular: 2 (waited since 1 s) and 3 (since 3 s); optimistic: pick(2)=index 1 of [1, 4] = 4.
        let decisions = c.rechoke(Duration::from_secs(10), &peers, &mut |n| n - 1);
        assert_eq!(decisions, [(2, true), (3, true), (4, true)]);
    }

    #[test]
    fn holders_rotate_out_after_their_quota_when_others_wait() {
        let mut c = Choker::new(config(1));
        let t = Duration::from_secs(100);
        // 1 holds the slot and has been served its quota; 2 waits.
        let peers = [peer(1, true, 5000, 90), peer(2, false, 0, 10)];
        let decisions = c.rechoke(t, &peers, &mut never);
        // 2 takes the regular slot; 1 is the only candidate left for the
        // optimistic slot and keeps being served.
        assert!(decisions.contains(&(2, true)), "{decisions:?}");
        assert!(!decisions.iter().any(|d| d.0 == 1), "{decisions:?}");

        // With a third peer waiting, 1 loses its slot to the rotation.
        let mut c = Choker::new(config(1));
        let peers = [
            peer(1, true, 5000, 90),
            peer(2, false, 0, 10),
            peer(3, false, 0, 20),
        ];
        let decisions = c.rechoke(t, &peers, &mut never);
        assert_eq!(decisions, [(1, false), (2, true), (3, true)]);
    }

    #[test]
    fn a_holder_under_quota_keeps_its_slot() {
        let mut c = Choker::new(config(1));
        let peers = [peer(1, true, 10, 95), peer(2, false, 0, 10)];
        let decisions = c.rechoke(Duration::from_secs(100), &peers, &mut never);
        // 1 keeps the regular slot; 2 gets the optimistic one.
        assert_eq!(decisions, [(2, true)]);
    }

    #[test]
    fn optimistic_slot_moves_only_when_its_period_ends() {
        let mut c = Choker::new(config(1));
        let mut peers = vec![
            peer(1, true, 0, 0),
            peer(2, false, 0, 0),
            peer(3, false, 0, 0),
        ];
        let d = c.rechoke(Duration::from_secs(0), &peers, &mut never);
        assert_eq!(d, [(2, true)]);
        peers[1].unchoked = true;
        // 10 s later: same optimistic peer.
        assert!(c
            .rechoke(Duration::from_secs(10), &peers, &mut never)
            .is_empty());
        // 30 s later: it moves to 3.
        let d = c.rechoke(Duration::from_secs(30), &peers, &mut never);
        assert_eq!(d, [(2, false), (3, true)]);
    }

    #[test]
    fn every_peer_is_served_in_turn() {
        // Six peers, two slots, each served its quota every round: within a
        // few rounds every peer has had a slot.
        let mut c = Choker::new(config(2));
        let mut peers: Vec<Candidate> = (0..6).map(|k| peer(k, false, 0, 0)).collect();
        let mut served = [false; 6];
        for round in 1..=6u64 {
            let now = Duration::from_secs(round * 10);
            let mut next = 0;
            for (key, unchoke) in c.rechoke(now, &peers, &mut |n| {
                next = (next + 1) % n;
                next
            }) {
                let p = &mut peers[key as usize];
                p.unchoked = unchoke;
                p.since = now;
                p.served_since_unchoke = 0;
            }
            for p in peers.iter_mut().filter(|p| p.unchoked) {
                served[p.key as usize] = true;
                p.served_since_unchoke += 2000;
            }
        }
        assert_eq!(served, [true; 6]);
    }

    #[test]
    fn free_slots_are_filled_between_rounds_longest_waiting_first() {
        let choker = Choker::new(ChokerConfig {
            upload_slots: 2,
            ..ChokerConfig::default()
        });
        let peer = |key, interested, unchoked, since| Candidate {
            key,
            interested,
            unchoked,
            served_since_unchoke: 0,
            since: Duration::from_secs(since),
            received: 0,
        };
        // One holder of three slots (two regular, one optimistic); three
        // waiting; one not interested.
        let peers = [
            peer(1, true, true, 0),
            peer(2, true, false, 5),
            peer(3, true, false, 2),
            peer(4, false, false, 1),
            peer(5, true, false, 9),
        ];
        assert_eq!(choker.fill_free_slots(&peers), vec![3, 2]);
        let unlimited = Choker::new(ChokerConfig::default());
        assert!(
            unlimited.fill_free_slots(&peers).is_empty(),
            "nobody is choked"
        );
    }
}
