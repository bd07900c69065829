//! Multi-tracker order (BEP 12): tiers tried in order, trackers shuffled
//! within a tier once, and the tracker that answers moved to the front of
//! its tier.

/// The trackers of one torrent, in the order to try them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackerTiers {
    tiers: Vec<Vec<String>>,
}

impl TrackerTiers {
    /// Tiers as the metainfo gives them; each tier is shuffled with
    /// `pick(n)`, a random index below `n`.
    pub fn new(mut tiers: Vec<Vec<String>>, pick: &mut dyn FnMut(usize) -> usize) -> Self {
        tiers.retain(|t| !t.is_empty());
        for tier in &mut tiers {
            // Fisher-Yates.
            for i in (1..tier.len()).rev() {
                tier.swap(i, pick(i + 1));
            }
        }
        TrackerTiers { tiers }
    }

    /// Whether there is any tracker.
    pub fn is_empty(&self) -> bool {
        self.tiers.is_empty()
    }

    /// Every tracker as `(tier, index, url)`, in the order to try them.
    pub fn in_order(&self) -> Vec<(usize, usize, String)> {
        self.tiers
            .iter()
            .enumerate()
            .flat_map(|(t, tier)| {
                tier.iter()
                    .enumerate()
                    .map(move |(i, url)| (t, i, url.clone()))
            })
            .collect()
    }

    /// The tracker at `(tier, index)` answered: it goes first in its tier.
    pub fn promote(&mut self, tier: usize, index: usize) {
        if let Some(t) = self.tiers.get_mut(tier) {
            if index < t.len() {
                let url = t.remove(index);
                t.insert(0, url);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiers() -> Vec<Vec<String>> {
        vec![
            vec!["a1".into(), "a2".into(), "a3".into()],
            vec![],
            vec!["b1".into()],
        ]
    }

    #[test]
    fn keeps_tier_order_and_shuffles_within_tiers() {
        // pick(n) = 0 moves the last element to the front at each step.
        let t = TrackerTiers::new(tiers(), &mut |_| 0);
        let order: Vec<_> = t.in_order().into_iter().map(|(_, _, u)| u).collect();
        assert_eq!(order, ["a2", "a3", "a1", "b1"]);
        let identity = TrackerTiers::new(tiers(), &mut |n| n - 1);
        let order: Vec<_> = identity
            .in_order()
            .into_iter()
            .map(|(t, _, u)| (t, u))
            .collect();
        assert_eq!(
            order,
            [
                (0, "a1".into()),
                (0, "a2".into()),
                (0, "a3".into()),
                (1, "b1".into())
            ]
        );
    }

    #[test]
    fn the_tracker_that_answers_goes_first() {
        let mut t = TrackerTiers::new(tiers(), &mut |n| n - 1);
        t.promote(0, 2);
        let order: Vec<_> = t.in_order().into_iter().map(|(_, _, u)| u).collect();
        assert_eq!(order, ["a3", "a1", "a2", "b1"]);
        t.promote(9, 9);
        assert!(!t.is_empty());
        assert!(TrackerTiers::new(vec![vec![]], &mut |_| 0).is_empty());
    }
}
