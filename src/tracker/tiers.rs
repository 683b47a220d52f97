//! Which tracker of a torrent to use (BEP 12, `announce-list`): pure
//! logic, the randomness passed in.
//!
//! Trackers are shuffled within each tier once; announces go to the
//! current one; a tracker that answers moves to the front of its tier; a
//! failure moves on to the next tracker, through the tier and then the
//! next tiers. Positions are reported in the file's order (`tracker` in
//! `get-status`), whatever the shuffle did.

/// Most trackers used per torrent (the rest are ignored): a file listing
/// thousands must not make us announce to thousands.
pub const MAX_TRACKERS: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    url: String,
    /// Tier and index within it, in the file's order.
    position: (usize, usize),
}

/// A torrent's trackers in the order they are tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackerList {
    tiers: Vec<Vec<Entry>>,
    /// The tracker in use: tier and index in our order.
    tier: usize,
    index: usize,
    /// Failures in a row, to tell when every tracker has had its chance.
    failed_in_row: usize,
}

impl TrackerList {
    /// The list of `tiers` of URLs (empty tiers skipped, at most
    /// [`MAX_TRACKERS`] in all), each tier shuffled with `rng`. `None`
    /// when there is no tracker.
    pub fn new(tiers: &[Vec<String>], rng: &mut fastrand::Rng) -> Option<TrackerList> {
        let mut left = MAX_TRACKERS;
        let mut ours = Vec::new();
        for (t, tier) in tiers.iter().enumerate() {
            let mut entries: Vec<Entry> = tier
                .iter()
                .take(left)
                .enumerate()
                .map(|(i, url)| Entry {
                    url: url.clone(),
                    position: (t, i),
                })
                .collect();
            left -= entries.len();
            if entries.is_empty() {
                continue;
            }
            rng.shuffle(&mut entries);
            ours.push(entries);
        }
        if ours.is_empty() {
            return None;
        }
        Some(TrackerList {
            tiers: ours,
            tier: 0,
            index: 0,
            failed_in_row: 0,
        })
    }

    fn current_entry(&self) -> Option<&Entry> {
        self.tiers.get(self.tier)?.get(self.index)
    }

    /// The URL of the tracker in use.
    pub fn current(&self) -> &str {
        self.current_entry().map_or("", |e| e.url.as_str())
    }

    /// Tier and index in the file of the tracker in use.
    pub fn position(&self) -> (usize, usize) {
        self.current_entry().map_or((0, 0), |e| e.position)
    }

    /// Trackers in the list.
    pub fn len(&self) -> usize {
        self.tiers.iter().map(Vec::len).sum()
    }

    /// Whether the list is empty (never, once built).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The tracker in use answered: it moves to the front of its tier.
    pub fn succeeded(&mut self) {
        self.failed_in_row = 0;
        if let Some(tier) = self.tiers.get_mut(self.tier) {
            if self.index < tier.len() {
                let entry = tier.remove(self.index);
                tier.insert(0, entry);
                self.index = 0;
            }
        }
    }

    /// The tracker in use failed: the next one is in use now. `true` when
    /// some tracker has not failed since the last success (so trying the
    /// next at once makes sense); `false` when every one has, and the
    /// caller should back off before trying again.
    pub fn failed(&mut self) -> bool {
        self.index += 1;
        if self
            .tiers
            .get(self.tier)
            .is_none_or(|t| self.index >= t.len())
        {
            self.index = 0;
            self.tier += 1;
            if self.tier >= self.tiers.len() {
                self.tier = 0;
            }
        }
        self.failed_in_row += 1;
        if self.failed_in_row >= self.len() {
            self.failed_in_row = 0;
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(tiers: &[&[&str]]) -> Vec<Vec<String>> {
        tiers
            .iter()
            .map(|t| t.iter().map(|s| s.to_string()).collect())
            .collect()
    }

    #[test]
    fn no_trackers_no_list() {
        let mut rng = fastrand::Rng::with_seed(1);
        assert_eq!(TrackerList::new(&[], &mut rng), None);
        assert_eq!(TrackerList::new(&urls(&[&[], &[]]), &mut rng), None);
    }

    #[test]
    fn failures_walk_the_tiers_in_order_then_ask_for_a_back_off() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut l = TrackerList::new(&urls(&[&["a1", "a2"], &[], &["c1"]]), &mut rng).unwrap();
        assert_eq!(l.len(), 3);
        let first = l.current().to_string();
        assert!(first.starts_with('a'));
        assert!(l.failed());
        let second = l.current().to_string();
        assert!(second.starts_with('a') && second != first);
        assert!(l.failed());
        assert_eq!(l.current(), "c1");
        // The empty tier is skipped but positions keep the file's numbers.
        assert_eq!(l.position(), (2, 0));
        assert!(!l.failed(), "all three failed: back off");
        assert_eq!(l.current(), first, "and start again from the top");
        assert!(l.failed());
    }

    #[test]
    fn a_tracker_that_answers_moves_to_the_front_of_its_tier() {
        let mut rng = fastrand::Rng::with_seed(3);
        let mut l = TrackerList::new(&urls(&[&["a", "b", "c"], &["d"]]), &mut rng).unwrap();
        let order: Vec<String> = (0..3)
            .map(|_| {
                let u = l.current().to_string();
                l.failed();
                u
            })
            .collect();
        assert_eq!(l.current(), "d");
        assert!(!l.failed());
        // Back at the top: the third of the tier answers this time.
        l.failed();
        l.failed();
        assert_eq!(l.current(), order[2]);
        l.succeeded();
        assert_eq!(l.index, 0);
        assert_eq!(l.current(), order[2]);
        let pos = l.position();
        assert_eq!(pos.0, 0);
        assert_eq!(["a", "b", "c"][pos.1], order[2]);
        // Its failure moves on to the others of the tier first.
        assert!(l.failed());
        assert_eq!(l.current(), order[0]);
    }

    #[test]
    fn the_shuffle_is_within_tiers_and_varies() {
        let tiers = urls(&[&["a", "b", "c", "d", "e"], &["z"]]);
        let mut firsts = std::collections::HashSet::new();
        for seed in 0..40 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut l = TrackerList::new(&tiers, &mut rng).unwrap();
            firsts.insert(l.current().to_string());
            for _ in 0..5 {
                assert_ne!(l.current(), "z");
                l.failed();
            }
            assert_eq!(l.current(), "z");
        }
        assert!(firsts.len() > 2, "{firsts:?}");
    }

    #[test]
    fn at_most_max_trackers_are_kept() {
        let many: Vec<String> = (0..MAX_TRACKERS + 10).map(|i| format!("u{i}")).collect();
        let mut rng = fastrand::Rng::with_seed(1);
        let l = TrackerList::new(&[many.clone(), many], &mut rng).unwrap();
        assert_eq!(l.len(), MAX_TRACKERS);
    }
}
