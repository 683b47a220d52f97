//! Token buckets capping the queries a node answers: one for all
//! queries, one per source.
//!
//! A source is an IP address, except on loopback, where every local node
//! shares 127.0.0.1 (tests, local swarms) and the full socket address is
//! the source instead (the swarm keys its bans the same way).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

/// Most sources with a bucket of their own. A new source past this waits
/// until idle buckets are swept (every [`super::node::TICK`]); the
/// overall bucket still bounds the work.
pub const MAX_SOURCES: usize = 4096;

/// Tokens count in nanotokens: a refill of `rate × elapsed_ns` is exact,
/// with no rounding drift at any rate or call frequency.
const NANOS: u128 = 1_000_000_000;

/// A rate: `per_second` on average, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Queries per second, sustained.
    pub per_second: u32,
    /// Queries allowed at once after a quiet spell.
    pub burst: u32,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: u128,
    last: Instant,
}

impl Bucket {
    fn full(rate: Rate, now: Instant) -> Bucket {
        Bucket {
            tokens: u128::from(rate.burst) * NANOS,
            last: now,
        }
    }

    fn refill(&mut self, rate: Rate, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_nanos();
        let cap = u128::from(rate.burst) * NANOS;
        self.tokens = self
            .tokens
            .saturating_add(elapsed.saturating_mul(u128::from(rate.per_second)))
            .min(cap);
        self.last = now;
    }

    fn take(&mut self, rate: Rate, now: Instant) -> bool {
        self.refill(rate, now);
        if self.tokens >= NANOS {
            self.tokens -= NANOS;
            true
        } else {
            false
        }
    }

    fn is_full(&self, rate: Rate, now: Instant) -> bool {
        let mut b = *self;
        b.refill(rate, now);
        b.tokens >= u128::from(rate.burst) * NANOS
    }
}

/// What a source is keyed by.
fn source_key(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_loopback() {
        addr
    } else {
        SocketAddr::new(addr.ip().to_canonical(), 0)
    }
}

/// The overall and per-source buckets.
#[derive(Debug)]
pub struct Limiter {
    overall_rate: Rate,
    per_source_rate: Rate,
    overall: Bucket,
    sources: HashMap<SocketAddr, Bucket>,
}

impl Limiter {
    /// Full buckets at `now`.
    pub fn new(overall: Rate, per_source: Rate, now: Instant) -> Limiter {
        Limiter {
            overall_rate: overall,
            per_source_rate: per_source,
            overall: Bucket::full(overall, now),
            sources: HashMap::new(),
        }
    }

    /// Whether a query from `from` may be answered now; takes a token
    /// from both buckets if so.
    pub fn allow(&mut self, from: SocketAddr, now: Instant) -> bool {
        let key = source_key(from);
        let rate = self.per_source_rate;
        let room = self.sources.len() < MAX_SOURCES;
        let bucket = match self.sources.get_mut(&key) {
            Some(b) => b,
            None if room => self.sources.entry(key).or_insert(Bucket::full(rate, now)),
            None => return false,
        };
        bucket.refill(rate, now);
        if bucket.tokens < NANOS || !self.overall.take(self.overall_rate, now) {
            return false;
        }
        bucket.tokens -= NANOS;
        true
    }

    /// Forgets sources whose bucket is full again: they cost nothing to
    /// recreate.
    pub fn sweep(&mut self, now: Instant) {
        let rate = self.per_source_rate;
        self.sources.retain(|_, b| !b.is_full(rate, now));
    }

    /// Sources tracked.
    pub fn sources(&self) -> usize {
        self.sources.len()
    }
}

/// The time one token takes to come back at `rate` (for tests).
#[cfg(test)]
fn period(rate: Rate) -> std::time::Duration {
    std::time::Duration::from_nanos(1_000_000_000 / u64::from(rate.per_second.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn per_source_and_overall_caps() {
        let t0 = Instant::now();
        let per = Rate {
            per_second: 10,
            burst: 20,
        };
        let all = Rate {
            per_second: 50,
            burst: 50,
        };
        let mut l = Limiter::new(all, per, t0);
        let a: SocketAddr = "10.0.0.1:1".parse().unwrap();
        let a2: SocketAddr = "10.0.0.1:2".parse().unwrap();
        let allowed = (0..30).filter(|_| l.allow(a, t0)).count();
        assert_eq!(allowed, 20, "the burst");
        assert!(!l.allow(a2, t0), "another port of the same IP shares it");
        // Loopback ports are separate sources.
        let lo = |p| SocketAddr::from(([127, 0, 0, 1], p));
        assert!((0..20).all(|_| l.allow(lo(1), t0)));
        assert!(l.allow(lo(2), t0));
        // The overall bucket: 50 at once, then 50 a second.
        let total = 20 + 20 + 1;
        let more = (3..100).filter(|p| l.allow(lo(*p), t0)).count();
        assert_eq!(total + more, 50);
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!((100..200).filter(|p| l.allow(lo(*p), t1)).count(), 50);
        assert!(l.allow(a, t1 + period(all)), "one token back each");
        assert!(!l.allow(a, t1 + period(all)));
        // Idle sources are swept once refilled.
        l.sweep(t1 + Duration::from_secs(2));
        assert_eq!(l.sources(), 0);
    }
}
