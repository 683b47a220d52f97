//! Speed limits as token buckets: pure logic, the time passed in.
//!
//! A [`TokenBucket`] holds the bytes that may move now; it refills
//! continuously at the configured rate up to a small capacity, so that a
//! limit is smooth at the one-second scale instead of allowing a second's
//! worth of burst. An [`Allocator`] splits one bucket between many takers
//! (peers) round-robin in block-sized quanta, so that one greedy peer
//! cannot starve the others.

use std::time::{Duration, Instant};

/// One request block: the unit a low limit still has to move in one go.
pub const BLOCK: usize = 16 * 1024;

/// Tokens are counted in byte-nanoseconds (bytes × 10⁹): a refill of
/// `rate × elapsed_ns` is then an exact integer at every rate and every
/// interval, so no rounding drift accumulates over a long run.
const NANOS: u128 = 1_000_000_000;

/// The burst a bucket of `rate` bytes/s may hold, in bytes: a tenth of a
/// second of rate (smooth at one-second scale), but at least one block so
/// that a low limit still lets whole blocks through. Zero for a zero rate,
/// which then moves nothing at all.
fn capacity_for(rate: u64) -> u128 {
    if rate == 0 {
        0
    } else {
        u128::from(rate / 10).max(BLOCK as u128)
    }
}

/// A speed limit: bytes per second or unlimited.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Bytes per second; `None` is unlimited.
    rate: Option<u64>,
    /// Available tokens in byte-nanoseconds, as of `last`.
    tokens: u128,
    /// When `tokens` was last brought up to date.
    last: Instant,
}

impl TokenBucket {
    /// A bucket of `rate` bytes per second (`None`: unlimited), starting
    /// full so that a fresh transfer need not wait for its first block.
    pub fn new(rate: Option<u64>, now: Instant) -> TokenBucket {
        TokenBucket {
            rate,
            tokens: rate.map_or(0, |r| capacity_for(r) * NANOS),
            last: now,
        }
    }

    /// An unlimited bucket.
    pub fn unlimited(now: Instant) -> TokenBucket {
        TokenBucket::new(None, now)
    }

    /// The rate in bytes per second, `None` when unlimited.
    pub fn rate(&self) -> Option<u64> {
        self.rate
    }

    /// The most bytes the bucket grants at once, `None` when unlimited.
    pub fn capacity(&self) -> Option<usize> {
        self.rate.map(|r| to_usize(capacity_for(r)))
    }

    /// Changes the rate, effective at once. Tokens earned so far are
    /// earned at the old rate, then cut to the new capacity so that a
    /// lowered limit never lets a burst of old tokens through; leaving
    /// unlimited starts full at the new capacity.
    pub fn set_rate(&mut self, rate: Option<u64>, now: Instant) {
        if rate == self.rate {
            return;
        }
        self.refill(now);
        let was_limited = self.rate.is_some();
        self.rate = rate;
        if let Some(r) = rate {
            let cap = capacity_for(r) * NANOS;
            self.tokens = if was_limited {
                self.tokens.min(cap)
            } else {
                cap
            };
        }
    }

    /// The bytes that could be taken at `now`, `usize::MAX` when
    /// unlimited.
    pub fn available(&self, now: Instant) -> usize {
        match self.rate {
            None => usize::MAX,
            Some(r) => to_usize(self.tokens_at(r, now) / NANOS),
        }
    }

    /// Grants up to `want` bytes at `now` and removes them from the
    /// bucket. Unlimited grants all of `want`.
    pub fn take(&mut self, want: usize, now: Instant) -> usize {
        if self.rate.is_none() {
            return want;
        }
        self.refill(now);
        let grant = (self.tokens / NANOS).min(want as u128);
        self.tokens -= grant * NANOS;
        to_usize(grant)
    }

    /// Gives back bytes granted but not used (a socket took fewer than
    /// granted), up to the capacity.
    pub fn refund(&mut self, bytes: usize, now: Instant) {
        if let Some(r) = self.rate {
            self.refill(now);
            let cap = capacity_for(r) * NANOS;
            self.tokens = self
                .tokens
                .saturating_add((bytes as u128).saturating_mul(NANOS))
                .min(cap);
        }
    }

    /// When at least one block can be taken again: the reactor's timer.
    /// `None` when unlimited, when a block is available already, or when
    /// the rate is zero (nothing comes until the rate changes).
    pub fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        self.when_available(BLOCK, now).filter(|t| *t > now)
    }

    /// When `bytes` (cut to the capacity) can be taken: `now` if they can
    /// already, `None` when unlimited or when the rate is zero.
    pub fn when_available(&self, bytes: usize, now: Instant) -> Option<Instant> {
        let rate = self.rate.filter(|r| *r > 0)?;
        let have = self.tokens_at(rate, now);
        let need = (bytes as u128).min(capacity_for(rate)) * NANOS;
        if have >= need {
            return Some(now);
        }
        let rate = u128::from(rate);
        let wait_ns = (need - have).div_ceil(rate);
        let wait = Duration::from_nanos(u64::try_from(wait_ns).unwrap_or(u64::MAX));
        // Tokens were counted up to the later of `now` and `last`.
        let base = now.max(self.last);
        Some(base.checked_add(wait).unwrap_or(base))
    }

    /// The tokens at `now` without changing the bucket. Time running
    /// backwards (an earlier `now` than seen before) adds nothing.
    fn tokens_at(&self, rate: u64, now: Instant) -> u128 {
        let elapsed = now.saturating_duration_since(self.last).as_nanos();
        let cap = capacity_for(rate) * NANOS;
        self.tokens
            .saturating_add(u128::from(rate).saturating_mul(elapsed))
            .min(cap)
    }

    fn refill(&mut self, now: Instant) {
        if let Some(r) = self.rate {
            self.tokens = self.tokens_at(r, now);
        }
        self.last = self.last.max(now);
    }
}

fn to_usize(n: u128) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// Shares one bucket between many takers in a turn: round-robin in
/// quanta of one block, remembering across turns whose turn is next and
/// how much of its quantum is still owed. Over any run of turns two
/// greedy takers' totals differ by at most one quantum, and the result
/// depends only on the inputs (deterministic).
#[derive(Debug, Clone)]
pub struct Allocator<K> {
    quantum: usize,
    /// The taker the next turn starts with.
    cursor: Option<K>,
    /// Its index, used when that taker is gone from the next turn's list.
    cursor_index: usize,
    /// What is left of the cursor taker's quantum; 0 means a whole one.
    carry: usize,
}

impl<K: Clone + Eq> Default for Allocator<K> {
    fn default() -> Self {
        Allocator::new()
    }
}

impl<K: Clone + Eq> Allocator<K> {
    /// An allocator sharing in quanta of one [`BLOCK`].
    pub fn new() -> Allocator<K> {
        Allocator::with_quantum(BLOCK)
    }

    /// An allocator sharing in quanta of `quantum` bytes (at least 1).
    pub fn with_quantum(quantum: usize) -> Allocator<K> {
        Allocator {
            quantum: quantum.max(1),
            cursor: None,
            cursor_index: 0,
            carry: 0,
        }
    }

    /// Takes from `bucket` what it can grant of `wants` at `now` and
    /// splits it: one `(key, granted)` per entry of `wants`, in the same
    /// order. Keys should be distinct.
    pub fn share(
        &mut self,
        bucket: &mut TokenBucket,
        wants: &[(K, usize)],
        now: Instant,
    ) -> Vec<(K, usize)> {
        let total = wants
            .iter()
            .fold(0usize, |acc, (_, w)| acc.saturating_add(*w));
        let budget = bucket.available(now).min(total);
        let grants = self.split(budget, wants);
        let given = grants.iter().fold(0usize, |acc, g| acc.saturating_add(*g));
        bucket.take(given, now);
        wants
            .iter()
            .zip(grants)
            .map(|((k, _), g)| (k.clone(), g))
            .collect()
    }

    /// Splits `budget` bytes between `wants`, one grant per entry.
    pub fn split(&mut self, mut budget: usize, wants: &[(K, usize)]) -> Vec<usize> {
        let n = wants.len();
        let mut grant = vec![0usize; n];
        let mut rem: Vec<usize> = wants.iter().map(|(_, w)| *w).collect();
        if n == 0 {
            return grant;
        }
        let q = self.quantum;
        let found = self
            .cursor
            .as_ref()
            .and_then(|c| wants.iter().position(|(k, _)| k == c));
        let (mut start, carry) = match found {
            Some(i) => (i, self.carry),
            None => (self.cursor_index % n, 0),
        };

        // First the rest of the quantum the cursor taker was cut off in.
        if carry > 0 {
            let want = rem.get(start).copied().unwrap_or(0);
            if want > 0 {
                let g = carry.min(want).min(budget);
                give(&mut grant, &mut rem, start, g);
                budget -= g;
                if budget == 0 && g < carry && g < want {
                    self.save(wants, start, carry - g);
                    return grant;
                }
                start = (start + 1) % n;
            }
        }

        loop {
            let active = rem.iter().filter(|r| **r > 0).count();
            if active == 0 || budget == 0 {
                break;
            }
            // Whole rounds everyone can take are order-free: give them at
            // once rather than quantum by quantum.
            let min_rem = rem.iter().copied().filter(|r| *r > 0).min().unwrap_or(0);
            let rounds = (budget / q.saturating_mul(active)).min(min_rem / q);
            if rounds > 0 {
                let each = rounds * q;
                for i in 0..n {
                    if rem.get(i).is_some_and(|r| *r > 0) {
                        give(&mut grant, &mut rem, i, each);
                        budget -= each;
                    }
                }
                continue;
            }
            // One round in turn order: either the budget runs out or some
            // taker with less than a quantum left is done.
            for j in 0..n {
                let i = (start + j) % n;
                let want = rem.get(i).copied().unwrap_or(0);
                if want == 0 {
                    continue;
                }
                let g = q.min(want).min(budget);
                give(&mut grant, &mut rem, i, g);
                budget -= g;
                if budget == 0 {
                    if g < q && g < want {
                        self.save(wants, i, q - g);
                    } else {
                        self.save(wants, (i + 1) % n, 0);
                    }
                    return grant;
                }
            }
        }
        self.save(wants, start, 0);
        grant
    }

    fn save(&mut self, wants: &[(K, usize)], index: usize, carry: usize) {
        self.cursor = wants.get(index).map(|(k, _)| k.clone());
        self.cursor_index = index;
        self.carry = carry;
    }
}

fn give(grant: &mut [usize], rem: &mut [usize], i: usize, g: usize) {
    if let (Some(gr), Some(r)) = (grant.get_mut(i), rem.get_mut(i)) {
        *gr += g;
        *r -= g;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: usize = 1024;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn greedy_taker_gets_the_rate_over_twenty_seconds() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(Some(100 * KIB as u64), t0);
        let mut total = 0;
        for step in 1..=2000 {
            total += b.take(usize::MAX, t0 + ms(10 * step));
        }
        let expected = 2000 * KIB;
        let diff = total.abs_diff(expected);
        assert!(diff * 100 <= expected, "{total} vs {expected}");
    }

    #[test]
    fn capacity_is_a_tenth_of_a_second_but_at_least_a_block() {
        let t0 = Instant::now();
        assert_eq!(
            TokenBucket::new(Some(10_000_000), t0).capacity(),
            Some(1_000_000)
        );
        assert_eq!(TokenBucket::new(Some(1024), t0).capacity(), Some(BLOCK));
        assert_eq!(TokenBucket::new(None, t0).capacity(), None);
    }

    #[test]
    fn idling_never_stores_more_than_capacity() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(Some(1_000_000), t0);
        assert_eq!(b.take(usize::MAX, t0), 100_000);
        assert_eq!(b.take(usize::MAX, t0 + Duration::from_secs(3600)), 100_000);
        assert_eq!(b.take(usize::MAX, t0 + Duration::from_secs(3600)), 0);
        // Half a capacity's time refills half.
        assert_eq!(
            b.take(usize::MAX, t0 + Duration::from_secs(3600) + ms(50)),
            50_000
        );
    }

    #[test]
    fn rate_change_takes_effect_in_the_next_take() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(Some(1_000_000), t0);
        b.take(usize::MAX, t0);
        // Lowered: the full old bucket is cut to the new capacity.
        b.set_rate(Some(200_000), t0 + Duration::from_secs(1));
        assert_eq!(b.take(usize::MAX, t0 + Duration::from_secs(1)), 20_000);
        // The next 10 ms earn at the new rate.
        assert_eq!(b.take(usize::MAX, t0 + ms(1010)), 2_000);
        // Raised: earns at the new rate at once, no retroactive credit.
        b.set_rate(Some(2_000_000), t0 + ms(1010));
        assert_eq!(b.take(usize::MAX, t0 + ms(1020)), 20_000);
        // Zero moves nothing and needs no timer.
        b.set_rate(Some(0), t0 + ms(1020));
        assert_eq!(b.take(usize::MAX, t0 + Duration::from_secs(99)), 0);
        assert_eq!(b.poll_timeout(t0 + Duration::from_secs(99)), None);
    }

    #[test]
    fn leaving_unlimited_grants_no_more_than_the_new_capacity() {
        let t0 = Instant::now();
        let mut b = TokenBucket::unlimited(t0);
        b.set_rate(Some(1_000_000), t0 + Duration::from_secs(100));
        assert_eq!(b.take(usize::MAX, t0 + Duration::from_secs(100)), 100_000);
        b.set_rate(None, t0 + Duration::from_secs(100));
        assert_eq!(b.take(5, t0 + Duration::from_secs(100)), 5);
    }

    #[test]
    fn unlimited_grants_everything_and_needs_no_timer() {
        let t0 = Instant::now();
        let mut b = TokenBucket::unlimited(t0);
        assert_eq!(b.take(usize::MAX, t0), usize::MAX);
        assert_eq!(b.take(123, t0), 123);
        assert_eq!(b.available(t0), usize::MAX);
        assert_eq!(b.poll_timeout(t0), None);
    }

    #[test]
    fn a_low_limit_moves_whole_blocks_on_its_timer() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(Some(1024), t0);
        let mut now = t0;
        let mut total = 0;
        let mut grants = 0;
        while now < t0 + Duration::from_secs(1600) {
            if let Some(t) = b.poll_timeout(now) {
                assert!(t > now);
                now = t;
            }
            let g = b.take(BLOCK, now);
            assert_eq!(g, BLOCK, "a timer wake-up finds a whole block");
            total += g;
            grants += 1;
        }
        // Initial full bucket + 1 KiB/s over 1600 s.
        assert_eq!(grants, 101);
        assert_eq!(total, BLOCK + 1600 * 1024);
        // Polled often it still averages the rate.
        let mut b = TokenBucket::new(Some(1024), t0);
        let total: usize = (0..=16_000).map(|i| b.take(BLOCK, t0 + ms(100 * i))).sum();
        assert_eq!(total, BLOCK + 1600 * 1024);
    }

    #[test]
    fn poll_timeout_is_when_a_block_is_back() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(Some(100 * KIB as u64), t0);
        assert_eq!(b.poll_timeout(t0), None);
        b.take(usize::MAX, t0);
        assert_eq!(b.poll_timeout(t0), Some(t0 + ms(160)));
        assert_eq!(b.poll_timeout(t0 + ms(100)), Some(t0 + ms(160)));
        assert_eq!(b.take(BLOCK, t0 + ms(159)), BLOCK - 102 - 1);
        b.refund(BLOCK, t0 + ms(159));
        assert_eq!(b.available(t0 + ms(159)), BLOCK);
    }

    /// A waiter is woken when its bytes are there, and at once when they
    /// already are (a timer that said "nothing to wait for" here stalled
    /// uploads for up to a second).
    #[test]
    fn when_available_is_now_once_the_bytes_are_there() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(Some(100 * KIB as u64), t0);
        b.take(usize::MAX, t0);
        assert_eq!(b.when_available(BLOCK, t0), Some(t0 + ms(160)));
        assert_eq!(b.when_available(BLOCK, t0 + ms(200)), Some(t0 + ms(200)));
        // More than the capacity waits for a full bucket only.
        assert_eq!(b.when_available(1 << 30, t0), Some(t0 + ms(160)));
        assert_eq!(TokenBucket::unlimited(t0).when_available(1, t0), None);
        assert_eq!(TokenBucket::new(Some(0), t0).when_available(1, t0), None);
    }

    #[test]
    fn time_running_backwards_adds_nothing() {
        let t0 = Instant::now();
        let base = t0 + Duration::from_secs(10);
        let mut b = TokenBucket::new(Some(100_000), base);
        b.take(usize::MAX, base);
        assert_eq!(b.take(usize::MAX, t0), 0);
        assert_eq!(b.take(usize::MAX, base + ms(10)), 1_000);
    }

    #[test]
    fn two_greedy_takers_stay_within_one_quantum() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(Some(100 * KIB as u64), t0);
        let mut a = Allocator::new();
        let (mut x, mut y) = (0usize, 0usize);
        for step in 0..2000 {
            let g = a.share(
                &mut b,
                &[("x", usize::MAX), ("y", usize::MAX)],
                t0 + ms(10 * step),
            );
            assert_eq!(g.len(), 2);
            x += g[0].1;
            y += g[1].1;
            assert!(x.abs_diff(y) <= BLOCK, "step {step}: {x} vs {y}");
        }
        assert!(x + y >= 1999 * KIB);
    }

    #[test]
    fn an_uneven_budget_alternates_instead_of_favouring_the_first() {
        let mut a = Allocator::<u8>::new();
        let wants = [(1, usize::MAX), (2, usize::MAX)];
        let (mut x, mut y) = (0, 0);
        for _ in 0..100 {
            let g = a.split(BLOCK + BLOCK / 2, &wants);
            x += g[0];
            y += g[1];
            assert!(x.abs_diff(y) <= BLOCK);
        }
        assert_eq!(x, y);
    }

    #[test]
    fn modest_takers_are_satisfied_and_the_rest_goes_to_the_greedy() {
        let mut a = Allocator::new();
        let wants = [
            ("small", 1000),
            ("big", usize::MAX),
            ("none", 0),
            ("mid", 40_000),
        ];
        let g = a.split(100_000, &wants);
        assert_eq!(g, vec![1000, 59_000, 0, 40_000]);
        // Enough for all.
        let g = a.split(1_000_000, &[("a", 5), ("b", 7)]);
        assert_eq!(g, vec![5, 7]);
    }

    #[test]
    fn sharing_is_deterministic_and_takes_from_the_bucket() {
        let t0 = Instant::now();
        let run = || {
            let mut b = TokenBucket::new(Some(50_000), t0);
            let mut a = Allocator::new();
            let mut out = Vec::new();
            for step in 0..50 {
                let wants: Vec<(u32, usize)> =
                    (0..5).map(|k| (k, (k as usize + step) * 3000)).collect();
                out.push(a.share(&mut b, &wants, t0 + ms(100 * step as u64)));
            }
            (out, b.available(t0 + ms(4900)))
        };
        let (first, left) = run();
        assert_eq!(first, run().0);
        let granted: usize = first.iter().flatten().map(|(_, g)| g).sum();
        // Start full (16 KiB) plus 50 kB/s over 4.9 s, less what is left.
        assert_eq!(granted + left, BLOCK + 245_000);
    }

    #[test]
    fn a_departed_cursor_taker_does_not_stall_the_rotation() {
        let mut a = Allocator::new();
        let g = a.split(BLOCK / 2, &[("a", usize::MAX), ("b", usize::MAX)]);
        assert_eq!(g, vec![BLOCK / 2, 0]);
        // "a" left while owed half a quantum: "b" (now first) is served.
        let g = a.split(BLOCK, &[("b", usize::MAX), ("c", usize::MAX)]);
        assert_eq!(g, vec![BLOCK, 0]);
        let g = a.split(BLOCK, &[("b", usize::MAX), ("c", usize::MAX)]);
        assert_eq!(g, vec![0, BLOCK]);
        assert!(a.split(BLOCK, &[]).is_empty());
    }
}
