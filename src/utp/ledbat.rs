//! LEDBAT congestion control (RFC 6817) as libtorrent 2.0 runs it
//! (`utp_stream.cpp`, `do_ledbat`), with the choices that file leaves to
//! settings made here as constants:
//!
//! - **Target delay** 100 ms, libtorrent's `utp_target_delay` default
//!   (RFC 6817 allows at most 100 ms).
//! - **Delay samples**: the peer's `timestamp_difference` on each packet
//!   is our one-way delay plus the offset of the two clocks. The offset
//!   cancels against the *base delay*, the least sample seen: we keep the
//!   minimum of each minute over [`BASE_HISTORY`] minutes (RFC 6817's
//!   10), so a route change or clock drift is forgotten within ten
//!   minutes. The queuing delay is the least of the last
//!   [`CURRENT_FILTER`] samples minus the base, never more than the round
//!   trip of the packets being acknowledged (libtorrent's sanity clamp).
//!   When the peer's base (the other direction) falls, its clock runs
//!   slower than ours and ours is raised by as much, up to 10 ms, as both
//!   libtorrent and libutp do.
//! - **Gain**: per round trip, the window moves by at most
//!   `max(3000 bytes, one packet) × (target − delay) / target`; 3000 is
//!   libtorrent's `utp_gain_factor`, and one packet is RFC 6817's
//!   `GAIN = 1` when packets are larger than that (loopback). Each ACK
//!   applies its share, `acked / in_flight`, of that. Growth applies only
//!   while the sender fills the window (libtorrent's `cwnd_saturated`), so
//!   an application-limited flow does not inflate it; shrinking always
//!   applies.
//! - **Slow start** as libtorrent does: the window grows by the bytes
//!   acknowledged until a delay sample reaches the target (the threshold
//!   becomes half the window), a loss, or the threshold set by an earlier
//!   loss or timeout.
//! - **Loss** halves the window (libtorrent's `utp_loss_multiplier` 50),
//!   once per window of data: the connection only reports a loss of a
//!   packet sent after the previous cut.
//! - **Timeout**: the window falls to the minimum and slow start begins
//!   again with the threshold at half the old window.
//! - **Minimum window** 2 packets (RFC 6817's floor; libtorrent's 1 packet
//!   leaves a lone packet waiting for a delayed ACK).
//! - **Maximum window** the connection's send buffer (nothing beyond it
//!   can be in flight); the peer's advertised window is applied on top of
//!   it by the connection when it sends.

use std::time::{Duration, Instant};

/// RFC 6817's BASE_HISTORY: minutes of per-minute minimums kept.
pub const BASE_HISTORY: usize = 10;

/// How long one base-history slot covers.
pub const BASE_SLOT: Duration = Duration::from_secs(60);

/// Delay samples whose minimum is the current delay: filters out a single
/// sample delayed by something other than the queue (libtorrent keeps 3).
pub const CURRENT_FILTER: usize = 3;

/// The queuing delay LEDBAT aims for (libtorrent's default).
pub const TARGET_DELAY: Duration = Duration::from_millis(100);

/// libtorrent's `utp_gain_factor`: most bytes the window grows per round
/// trip at zero queuing delay (with packets larger than this, one packet).
pub const GAIN_BYTES: u64 = 3000;

/// The window never goes below this many packets.
pub const MIN_WINDOW_PACKETS: u64 = 2;

/// The largest drift correction applied at once: a larger fall of the
/// peer's base is a route change, not drift (libtorrent and libutp: 10 ms).
const MAX_DRIFT_STEP_US: u32 = 10_000;

/// Fixed-point shift for the window (16 bits of fraction, as libtorrent),
/// so that the small per-ACK gains of small packets add up.
const FRAC: u32 = 16;

/// Whether `a` comes before `b` on the 32-bit microsecond circle.
fn before(a: u32, b: u32) -> bool {
    (b.wrapping_sub(a) as i32) > 0
}

/// Per-minute minimums of a stream of 32-bit delay samples.
#[derive(Debug, Clone)]
pub struct BaseDelay {
    slots: [u32; BASE_HISTORY],
    index: usize,
    slot_start: Option<Instant>,
    base: u32,
}

impl Default for BaseDelay {
    fn default() -> Self {
        BaseDelay {
            slots: [0; BASE_HISTORY],
            index: 0,
            slot_start: None,
            base: 0,
        }
    }
}

impl BaseDelay {
    /// Whether a sample has been seen.
    pub fn initialized(&self) -> bool {
        self.slot_start.is_some()
    }

    /// The least sample over the history (0 before the first).
    pub fn base(&self) -> u32 {
        self.base
    }

    /// Adds a sample taken at `now`; returns it minus the base.
    pub fn add(&mut self, sample: u32, now: Instant) -> u32 {
        let Some(start) = self.slot_start else {
            self.slots = [sample; BASE_HISTORY];
            self.base = sample;
            self.slot_start = Some(now);
            return 0;
        };
        // Step one slot per minute passed, at most the whole history.
        let mut start = start;
        let mut steps = 0;
        while now.saturating_duration_since(start) >= BASE_SLOT && steps < BASE_HISTORY {
            self.index = (self.index + 1) % BASE_HISTORY;
            self.slots[self.index] = sample;
            start += BASE_SLOT;
            steps += 1;
        }
        if steps > 0 {
            self.slot_start = Some(if steps == BASE_HISTORY { now } else { start });
            self.base = self.min_slot();
        }
        if before(sample, self.slots[self.index]) {
            self.slots[self.index] = sample;
        }
        if before(sample, self.base) {
            self.base = sample;
        }
        sample.wrapping_sub(self.base)
    }

    fn min_slot(&self) -> u32 {
        let mut m = self.slots[self.index];
        for &s in &self.slots {
            if before(s, m) {
                m = s;
            }
        }
        m
    }

    /// Raises the base (and every slot) by `by`: clock drift correction.
    pub fn shift(&mut self, by: u32) {
        for s in &mut self.slots {
            *s = s.wrapping_add(by);
        }
        self.base = self.base.wrapping_add(by);
    }
}

/// One connection's congestion window.
#[derive(Debug, Clone)]
pub struct Ledbat {
    /// Bytes, with FRAC bits of fraction.
    cwnd: i64,
    ssthresh: Option<u64>,
    slow_start: bool,
    mss: u64,
    max_cwnd: u64,
    target_us: u32,
    ours: BaseDelay,
    theirs: BaseDelay,
    recent: [u32; CURRENT_FILTER],
    recent_len: usize,
    recent_next: usize,
    /// The last queuing delay estimate, for stats.
    last_delay_us: Option<u32>,
}

impl Ledbat {
    /// A window for packets of `mss` payload bytes, at most `max_cwnd`
    /// bytes, starting at the minimum in slow start.
    pub fn new(mss: usize, max_cwnd: usize, target: Duration) -> Ledbat {
        let mss = mss.max(1) as u64;
        let min = mss * MIN_WINDOW_PACKETS;
        let target_us = u32::try_from(target.as_micros()).unwrap_or(u32::MAX).max(1);
        Ledbat {
            cwnd: (min as i64) << FRAC,
            ssthresh: None,
            slow_start: true,
            mss,
            max_cwnd: (max_cwnd as u64).max(min),
            target_us,
            ours: BaseDelay::default(),
            theirs: BaseDelay::default(),
            recent: [0; CURRENT_FILTER],
            recent_len: 0,
            recent_next: 0,
            last_delay_us: None,
        }
    }

    /// The window in bytes.
    pub fn cwnd(&self) -> u64 {
        (self.cwnd >> FRAC) as u64
    }

    /// Whether the window is still in slow start.
    pub fn in_slow_start(&self) -> bool {
        self.slow_start
    }

    /// The last queuing delay estimate.
    pub fn queuing_delay(&self) -> Option<Duration> {
        self.last_delay_us
            .map(|us| Duration::from_micros(u64::from(us)))
    }

    fn min_cwnd(&self) -> u64 {
        self.mss * MIN_WINDOW_PACKETS
    }

    fn set_cwnd(&mut self, bytes: i64) {
        let min = (self.min_cwnd() as i64) << FRAC;
        let max = (self.max_cwnd as i64) << FRAC;
        self.cwnd = bytes.clamp(min, max);
    }

    /// The peer's `timestamp_difference` (our one-way delay plus the clock
    /// offset), received at `now`. 0 means the peer had no sample.
    pub fn our_delay_sample(&mut self, sample: u32, now: Instant) {
        if sample == 0 {
            return;
        }
        let delay = self.ours.add(sample, now);
        self.recent[self.recent_next] = delay;
        self.recent_next = (self.recent_next + 1) % CURRENT_FILTER;
        self.recent_len = (self.recent_len + 1).min(CURRENT_FILTER);
    }

    /// Our receive time minus the peer's send time (its one-way delay plus
    /// the offset): only its base matters, for drift correction.
    pub fn their_delay_sample(&mut self, sample: u32, now: Instant) {
        let had = self.theirs.initialized().then(|| self.theirs.base());
        self.theirs.add(sample, now);
        let Some(prev) = had else { return };
        let fell = prev.wrapping_sub(self.theirs.base());
        if fell > 0 && fell <= MAX_DRIFT_STEP_US && self.ours.initialized() {
            self.ours.shift(fell);
        }
    }

    /// The current queuing delay: the least recent sample, at most
    /// `max_us` (the round trip of what was just acknowledged).
    fn current_delay(&self, max_us: u32) -> Option<u32> {
        let recent = self.recent.get(..self.recent_len)?;
        recent.iter().min().map(|&d| d.min(max_us))
    }

    /// `acked` bytes were acknowledged, with `in_flight_before` in flight
    /// when the ACK arrived and `in_flight_after` after it; `min_rtt_us` is
    /// the shortest round trip among the packets it acknowledged.
    pub fn on_ack(
        &mut self,
        acked: u64,
        in_flight_before: u64,
        in_flight_after: u64,
        min_rtt_us: u32,
    ) {
        if acked == 0 {
            return;
        }
        let Some(delay) = self.current_delay(min_rtt_us) else {
            return;
        };
        self.last_delay_us = Some(delay);
        let target = i64::from(self.target_us);
        if i64::from(delay) >= target && self.slow_start {
            self.ssthresh = Some(self.cwnd() / 2);
            self.slow_start = false;
        }
        let cwnd = self.cwnd();
        // The share of a round trip this ACK stands for, and how far below
        // (positive) or above (negative) the target the delay is.
        let window_factor = ((acked << FRAC) / in_flight_before.max(acked).max(1)) as i64;
        let delay_factor = ((target - i64::from(delay)) << FRAC) / target;
        let gain_bytes = GAIN_BYTES.max(self.mss) as i64;
        let linear = ((window_factor * delay_factor) >> FRAC) * gain_bytes;
        let saturated = in_flight_after + acked + self.mss > cwnd;
        let gain = if linear < 0 {
            linear
        } else if !saturated {
            0
        } else if self.slow_start {
            let exponential = (acked as i64) << FRAC;
            match self.ssthresh {
                Some(t) if cwnd + acked > t => {
                    self.slow_start = false;
                    linear
                }
                _ => exponential.max(linear),
            }
        } else {
            linear
        };
        self.set_cwnd(self.cwnd.saturating_add(gain));
    }

    /// A packet was lost (reported at most once per window).
    pub fn on_loss(&mut self) {
        self.set_cwnd(self.cwnd / 2);
        if self.slow_start {
            self.ssthresh = Some(self.cwnd());
            self.slow_start = false;
        }
    }

    /// The retransmission timer expired.
    pub fn on_timeout(&mut self) {
        self.ssthresh = Some((self.cwnd() / 2).max(self.min_cwnd()));
        self.slow_start = true;
        self.set_cwnd(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_is_the_minimum_and_forgets_after_the_history() {
        let t0 = Instant::now();
        let mut b = BaseDelay::default();
        assert_eq!(b.add(1000, t0), 0);
        assert_eq!(b.add(1500, t0), 500);
        assert_eq!(b.add(900, t0 + Duration::from_secs(1)), 0);
        // Minutes later the low sample is still the base.
        for m in 1..BASE_HISTORY as u64 {
            assert_eq!(b.add(5000, t0 + BASE_SLOT * m as u32), 5000 - 900);
        }
        // Past the history it is gone.
        let later = t0 + BASE_SLOT * (BASE_HISTORY as u32 + 1);
        assert_eq!(b.add(5000, later), 0);
        assert_eq!(b.base(), 5000);
    }

    #[test]
    fn base_handles_wrap_around() {
        let t0 = Instant::now();
        let mut b = BaseDelay::default();
        b.add(u32::MAX - 100, t0);
        // 200 µs later on the circle: past zero.
        assert_eq!(b.add(99, t0), 200);
        assert_eq!(b.base(), u32::MAX - 100);
    }

    #[test]
    fn slow_start_ends_at_the_target_and_the_window_settles() {
        let t0 = Instant::now();
        let mut l = Ledbat::new(1000, 1 << 30, TARGET_DELAY);
        l.our_delay_sample(50_000, t0);
        // Zero queuing delay: exponential growth, or the linear gain if
        // larger (libtorrent takes the max).
        let before = l.cwnd();
        l.our_delay_sample(50_000, t0);
        l.on_ack(before, before, 0, 10_000);
        assert_eq!(l.cwnd(), before + before.max(GAIN_BYTES));
        l.on_ack(l.cwnd(), l.cwnd(), 0, 10_000);
        assert_eq!(l.cwnd(), 2 * (before + GAIN_BYTES));
        assert!(l.in_slow_start());
        // 150 ms of queue: slow start ends and the window shrinks.
        for _ in 0..CURRENT_FILTER {
            l.our_delay_sample(200_000, t0);
        }
        let w = l.cwnd();
        l.on_ack(1000, w, w, 1_000_000);
        assert!(!l.in_slow_start());
        assert!(l.cwnd() < w);
    }

    #[test]
    fn loss_halves_and_timeout_resets_to_the_minimum() {
        let mut l = Ledbat::new(1000, 1 << 30, TARGET_DELAY);
        l.set_cwnd(100_000 << FRAC);
        l.on_loss();
        assert_eq!(l.cwnd(), 50_000);
        assert!(!l.in_slow_start());
        l.on_timeout();
        assert_eq!(l.cwnd(), 2000);
        assert!(l.in_slow_start());
        l.on_loss();
        assert_eq!(l.cwnd(), 2000, "never below two packets");
    }

    #[test]
    fn an_application_limited_flow_does_not_grow() {
        let t0 = Instant::now();
        let mut l = Ledbat::new(1000, 1 << 30, TARGET_DELAY);
        l.set_cwnd(100_000 << FRAC);
        l.our_delay_sample(1, t0);
        l.our_delay_sample(1, t0);
        l.on_ack(1000, 1000, 0, 1000);
        assert_eq!(l.cwnd(), 100_000);
    }

    #[test]
    fn drift_correction_raises_our_base() {
        let t0 = Instant::now();
        let mut l = Ledbat::new(1000, 1 << 30, TARGET_DELAY);
        l.our_delay_sample(10_000, t0);
        l.their_delay_sample(50_000, t0);
        l.their_delay_sample(45_000, t0);
        assert_eq!(l.ours.base(), 15_000);
        // A fall larger than 10 ms is not drift.
        l.their_delay_sample(10_000, t0);
        assert_eq!(l.ours.base(), 15_000);
    }
}
