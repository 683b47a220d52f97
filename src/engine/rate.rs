//! Sliding-window transfer rate meter.

use std::time::{Duration, Instant};

/// Width of one bucket.
const BUCKET: Duration = Duration::from_secs(1);
/// Number of buckets; the window is `BUCKETS * BUCKET` long.
const BUCKETS: usize = 5;

/// Bytes per second averaged over the last few seconds.
///
/// Buckets are keyed by whole seconds since `start`, so the meter needs no
/// clock of its own and costs O(1) memory.
#[derive(Clone, Debug)]
pub struct RateMeter {
    start: Instant,
    /// `(second index, bytes)`; a slot is stale when its index is too old.
    buckets: [(u64, u64); BUCKETS],
}

impl RateMeter {
    /// A meter whose first bucket starts at `now`.
    pub fn new(now: Instant) -> Self {
        RateMeter {
            start: now,
            buckets: [(u64::MAX, 0); BUCKETS],
        }
    }

    fn tick(&self, now: Instant) -> u64 {
        (now.saturating_duration_since(self.start).as_millis() / BUCKET.as_millis()) as u64
    }

    /// Records `bytes` transferred at `now`.
    pub fn add(&mut self, bytes: u64, now: Instant) {
        let t = self.tick(now);
        let slot = &mut self.buckets[(t % BUCKETS as u64) as usize];
        if slot.0 != t {
            *slot = (t, 0);
        }
        slot.1 = slot.1.saturating_add(bytes);
    }

    /// Average bytes/second over the window ending at `now`.
    ///
    /// The current (partial) second counts, and the divisor is the elapsed
    /// part of the window so a fresh meter is not under-reported.
    pub fn rate(&self, now: Instant) -> f64 {
        let t = self.tick(now);
        let oldest = t.saturating_sub(BUCKETS as u64 - 1);
        let total: u64 = self
            .buckets
            .iter()
            .filter(|(i, _)| *i != u64::MAX && *i >= oldest && *i <= t)
            .map(|(_, b)| *b)
            .sum();
        let elapsed = now.saturating_duration_since(self.start);
        let window = (BUCKET * BUCKETS as u32).min(elapsed.max(BUCKET));
        total as f64 / window.as_secs_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steady_rate() {
        let base = Instant::now();
        let mut m = RateMeter::new(base);
        for s in 0..10 {
            m.add(1000, base + Duration::from_secs(s));
        }
        let r = m.rate(base + Duration::from_millis(9500));
        assert!((r - 1000.0).abs() < 1.0, "{r}");
    }

    #[test]
    fn young_meter_not_underreported() {
        let base = Instant::now();
        let mut m = RateMeter::new(base);
        m.add(500, base + Duration::from_millis(100));
        assert_eq!(m.rate(base + Duration::from_millis(200)), 500.0);
    }

    #[test]
    fn decays_to_zero() {
        let base = Instant::now();
        let mut m = RateMeter::new(base);
        m.add(5000, base);
        assert!(m.rate(base + Duration::from_secs(4)) > 0.0);
        assert_eq!(m.rate(base + Duration::from_secs(5)), 0.0);
        assert_eq!(m.rate(base + Duration::from_secs(60)), 0.0);
        // Slot reuse after wrap-around does not resurrect old bytes.
        m.add(100, base + Duration::from_secs(10));
        assert_eq!(m.rate(base + Duration::from_secs(10)), 20.0);
    }
}
