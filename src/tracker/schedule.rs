//! When one torrent announces to one tracker, and with which event: pure
//! logic, the clock passed in.
//!
//! The life of an [`Announcer`]: [`start`](Announcer::start) makes a
//! `started` announce due at once; each successful reply schedules the next
//! regular announce after the tracker's interval; [`completed`]
//! (Announcer::completed) makes a `completed` announce due (once per run);
//! [`stop`](Announcer::stop) makes a `stopped` announce due, after which
//! nothing more is sent. Failures retry with exponential back-off. At most
//! one announce is in flight: the caller asks [`poll_announce`]
//! (Announcer::poll_announce) what to send, then reports the outcome with
//! [`handle_reply`](Announcer::handle_reply) or
//! [`handle_error`](Announcer::handle_error).

use std::time::{Duration, Instant};

use super::announce::{AnnounceEvent, AnnounceReply, TrackerError, MAX_INTERVAL};

/// The interval used when the tracker gives none.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1800);

/// The shortest interval honoured, whatever the tracker says: announcing
/// more often only loads the tracker.
pub const MIN_INTERVAL_FLOOR: Duration = Duration::from_secs(30);

/// The first retry delay after a failure; it doubles with each failure in
/// a row.
pub const FIRST_RETRY: Duration = Duration::from_secs(30);

/// The longest retry delay.
pub const MAX_RETRY: Duration = Duration::from_secs(30 * 60);

/// Where the announcer is in the torrent's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Not started, or stopped and done with the tracker.
    Idle,
    /// Running: `started`, then regular announces (and `completed`).
    Running,
    /// Stopped: one `stopped` announce to go.
    Stopping,
}

/// The announce schedule of one torrent on one tracker, plus what the
/// tracker last told us (for status fields).
#[derive(Debug, Clone)]
pub struct Announcer {
    phase: Phase,
    /// The tracker acknowledged our `started` in this run.
    started_ok: bool,
    /// `completed` is owed to the tracker.
    completed_pending: bool,
    /// `completed()` was already called in this run.
    completed_seen: bool,
    /// A tracker acknowledged an announce of this run, so a `stopped` is
    /// worth sending.
    contacted: bool,
    /// When the next announce is due (meaningless while one is in flight).
    due: Option<Instant>,
    /// The event of the announce in flight (`Some(None)`: a regular one).
    in_flight: Option<Option<AnnounceEvent>>,
    /// Failures in a row, for the back-off.
    failures: u32,
    interval: Option<Duration>,
    min_interval: Option<Duration>,
    tracker_id: Option<Vec<u8>>,
    last_error: Option<String>,
    last_warning: Option<String>,
    seeders: Option<u32>,
    leechers: Option<u32>,
    last_peer_count: usize,
    last_success: Option<Instant>,
}

impl Default for Announcer {
    fn default() -> Self {
        Self::new()
    }
}

impl Announcer {
    /// An idle announcer: nothing is sent until [`start`](Self::start).
    pub fn new() -> Self {
        Announcer {
            phase: Phase::Idle,
            started_ok: false,
            completed_pending: false,
            completed_seen: false,
            contacted: false,
            due: None,
            in_flight: None,
            failures: 0,
            interval: None,
            min_interval: None,
            tracker_id: None,
            last_error: None,
            last_warning: None,
            seeders: None,
            leechers: None,
            last_peer_count: 0,
            last_success: None,
        }
    }

    /// The torrent starts: a `started` announce is due now (or as soon as
    /// an announce still in flight from a previous run returns).
    pub fn start(&mut self, now: Instant) {
        if self.phase == Phase::Running {
            return;
        }
        self.phase = Phase::Running;
        self.started_ok = false;
        self.completed_pending = false;
        self.completed_seen = false;
        self.failures = 0;
        self.due = Some(now);
    }

    /// The torrent stops: a `stopped` announce is due now if the tracker
    /// may know of us; otherwise the announcer goes idle at once.
    pub fn stop(&mut self, now: Instant) {
        if self.phase != Phase::Running {
            return;
        }
        if self.contacted || self.in_flight.is_some() {
            self.phase = Phase::Stopping;
            self.due = Some(now);
        } else {
            self.phase = Phase::Idle;
            self.due = None;
        }
    }

    /// The download finished while running: a `completed` announce is due
    /// now (after `started` has been acknowledged). Only the first call of
    /// a run counts.
    pub fn completed(&mut self, now: Instant) {
        if self.phase != Phase::Running || self.completed_seen {
            return;
        }
        self.completed_seen = true;
        self.completed_pending = true;
        if self.started_ok {
            self.due = Some(now);
        }
    }

    /// A user asked for an announce now (Transmission's "ask the tracker
    /// for more peers"): due at once, but no sooner than the tracker's
    /// `min interval` after the last success, which trackers enforce.
    pub fn announce_now(&mut self, now: Instant) {
        if self.phase != Phase::Running {
            return;
        }
        let earliest = self
            .last_success
            .and_then(|t| t.checked_add(self.min_interval.unwrap_or(Duration::ZERO)))
            .unwrap_or(now);
        self.due = Some(now.max(earliest));
    }

    /// The event the next announce carries.
    fn next_event(&self) -> Option<AnnounceEvent> {
        match self.phase {
            Phase::Stopping => Some(AnnounceEvent::Stopped),
            _ if !self.started_ok => Some(AnnounceEvent::Started),
            _ if self.completed_pending => Some(AnnounceEvent::Completed),
            _ => None,
        }
    }

    /// When [`poll_announce`](Self::poll_announce) next has something to
    /// send; `None` while idle or while an announce is in flight.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.phase == Phase::Idle || self.in_flight.is_some() {
            return None;
        }
        self.due
    }

    /// If an announce is due at `now`, marks it in flight and returns its
    /// event (`Some(None)`: a regular announce). `None`: nothing to send.
    pub fn poll_announce(&mut self, now: Instant) -> Option<Option<AnnounceEvent>> {
        let due = self.poll_timeout()?;
        if due > now {
            return None;
        }
        let event = self.next_event();
        self.in_flight = Some(event);
        Some(event)
    }

    /// An announce is in flight.
    pub fn in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// The interval until the next regular announce: the tracker's (or the
    /// default), no shorter than its `min interval` or our floor.
    pub fn effective_interval(&self) -> Duration {
        self.interval
            .unwrap_or(DEFAULT_INTERVAL)
            .max(self.min_interval.unwrap_or(Duration::ZERO))
            .max(MIN_INTERVAL_FLOOR)
            .min(MAX_INTERVAL)
    }

    /// The delay before retrying after `failures` failures in a row.
    fn backoff(failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(16);
        FIRST_RETRY.saturating_mul(1 << doublings).min(MAX_RETRY)
    }

    /// Schedules the next announce after one finished: at once if an
    /// event is owed (and the tracker is not failing), else after `delay`.
    fn after(&mut self, now: Instant, delay: Duration) {
        let pending = self.phase == Phase::Stopping
            || (self.phase == Phase::Running && self.next_event().is_some() && self.failures == 0);
        self.due = if pending {
            Some(now)
        } else {
            now.checked_add(delay)
        };
    }

    /// The tracker answered the announce in flight.
    pub fn handle_reply(&mut self, reply: &AnnounceReply, now: Instant) {
        let Some(event) = self.in_flight.take() else {
            return;
        };
        let announced = match reply {
            AnnounceReply::Failure(reason) => {
                self.on_failure(event, reason.clone(), now);
                return;
            }
            AnnounceReply::Success(a) => a,
        };
        self.failures = 0;
        self.contacted = true;
        self.last_error = None;
        self.last_warning.clone_from(&announced.warning);
        self.last_success = Some(now);
        self.last_peer_count = announced.peers.len();
        if announced.interval.is_some() {
            self.interval = announced.interval;
        }
        if announced.min_interval.is_some() {
            self.min_interval = announced.min_interval;
        }
        if announced.tracker_id.is_some() {
            self.tracker_id.clone_from(&announced.tracker_id);
        }
        if announced.complete.is_some() {
            self.seeders = announced.complete;
        }
        if announced.incomplete.is_some() {
            self.leechers = announced.incomplete;
        }
        match event {
            Some(AnnounceEvent::Started) if self.phase == Phase::Running => self.started_ok = true,
            Some(AnnounceEvent::Completed) => self.completed_pending = false,
            Some(AnnounceEvent::Stopped) => return self.stopped_done(),
            _ => {}
        }
        self.after(now, self.effective_interval());
    }

    /// The announce in flight failed (no usable reply).
    pub fn handle_error(&mut self, error: &TrackerError, now: Instant) {
        self.handle_failure(error.to_string(), now);
    }

    /// The announce in flight failed (an error, or the tracker's refusal):
    /// `text` says why. A retry follows after the back-off.
    pub fn handle_failure(&mut self, text: String, now: Instant) {
        let Some(event) = self.in_flight.take() else {
            return;
        };
        self.on_failure(event, text, now);
    }

    /// The announce in flight failed and another tracker is there to try:
    /// the same announce is due again at once, without back-off (BEP 12's
    /// fallback). A `stopped` announce is not retried elsewhere.
    pub fn retry_elsewhere(&mut self, text: String, now: Instant) {
        let Some(event) = self.in_flight.take() else {
            return;
        };
        if event == Some(AnnounceEvent::Stopped) {
            return self.on_failure(event, text, now);
        }
        self.last_error = Some(text);
        self.due = Some(now);
    }

    /// Announces now go to a tracker that has not seen this run's
    /// `started`: the next one carries it again.
    pub fn new_tracker(&mut self) {
        if self.phase == Phase::Running {
            self.started_ok = false;
        }
    }

    /// The announce now in flight carries `started`, or would if sent now.
    pub fn started_acknowledged(&self) -> bool {
        self.started_ok
    }

    fn on_failure(&mut self, event: Option<AnnounceEvent>, text: String, now: Instant) {
        self.last_error = Some(text);
        if event == Some(AnnounceEvent::Stopped)
            || (self.phase == Phase::Stopping && !self.contacted)
        {
            // Also: stopped while an announce was in flight, which failed,
            // and no tracker has ever heard of us this run: nothing to
            // take back.
            // No retries for `stopped`: the tracker forgets us by itself,
            // and a stopped torrent should not keep a connection going.
            return self.stopped_done();
        }
        self.failures = self.failures.saturating_add(1);
        self.after(now, Self::backoff(self.failures));
    }

    /// A `stopped` announce finished, one way or the other.
    fn stopped_done(&mut self) {
        if self.phase == Phase::Stopping {
            self.phase = Phase::Idle;
            self.due = None;
            self.contacted = false;
        }
        // Otherwise the torrent was restarted while `stopped` was in
        // flight: `start` already made `started` due.
    }

    /// The `tracker id` to echo in announces.
    pub fn tracker_id(&self) -> Option<&[u8]> {
        self.tracker_id.as_deref()
    }

    /// The last error (or failure reason), cleared by a success.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// The warning of the last successful reply.
    pub fn last_warning(&self) -> Option<&str> {
        self.last_warning.as_deref()
    }

    /// Seeders, as the tracker last reported (`complete`).
    pub fn seeders(&self) -> Option<u32> {
        self.seeders
    }

    /// Leechers, as the tracker last reported (`incomplete`).
    pub fn leechers(&self) -> Option<u32> {
        self.leechers
    }

    /// Peers in the last successful reply.
    pub fn last_peer_count(&self) -> usize {
        self.last_peer_count
    }

    /// When the last successful reply arrived.
    pub fn last_success(&self) -> Option<Instant> {
        self.last_success
    }

    /// Failures in a row since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Whether the announcer has nothing more to do (never started, or
    /// stopped and the `stopped` announce done).
    pub fn is_idle(&self) -> bool {
        self.phase == Phase::Idle && self.in_flight.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracker::announce::Announced;
    use AnnounceEvent::{Completed, Started, Stopped};

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn ok(interval: Option<u64>) -> AnnounceReply {
        AnnounceReply::Success(Announced {
            interval: interval.map(secs),
            ..Announced::default()
        })
    }

    /// Sends what is due at `now`, asserting it is `expected`.
    fn send(a: &mut Announcer, now: Instant, expected: Option<AnnounceEvent>) {
        assert_eq!(a.poll_announce(now), Some(expected));
        assert!(a.in_flight());
        assert_eq!(a.poll_timeout(), None, "nothing else while in flight");
        assert_eq!(a.poll_announce(now), None);
    }

    #[test]
    fn another_tracker_is_tried_at_once_and_hears_started_again() {
        let t0 = Instant::now();
        let mut a = Announcer::new();
        a.start(t0);
        send(&mut a, t0, Some(Started));
        a.retry_elsewhere("refused".into(), t0 + secs(1));
        assert_eq!(a.last_error(), Some("refused"));
        assert_eq!(a.failures(), 0, "no back-off for a fallback");
        send(&mut a, t0 + secs(1), Some(Started));
        a.handle_reply(&ok(Some(600)), t0 + secs(2));
        assert!(a.started_acknowledged());
        send(&mut a, t0 + secs(602), None);
        // The tracker dies; the next one must hear `started`.
        a.retry_elsewhere("gone".into(), t0 + secs(603));
        a.new_tracker();
        send(&mut a, t0 + secs(603), Some(Started));
        a.handle_failure("gone too".into(), t0 + secs(604));
        assert_eq!(a.failures(), 1);
        assert_eq!(a.poll_timeout(), Some(t0 + secs(604) + FIRST_RETRY));
        // `stopped` is never retried elsewhere.
        a.handle_reply(&ok(None), t0 + secs(604)); // nothing in flight: ignored
        send(&mut a, t0 + secs(634), Some(Started));
        a.handle_reply(&ok(None), t0 + secs(635));
        a.stop(t0 + secs(636));
        send(&mut a, t0 + secs(636), Some(Stopped));
        a.retry_elsewhere("down".into(), t0 + secs(637));
        assert!(a.is_idle());
    }

    #[test]
    fn idle_until_started_then_started_at_once() {
        let t0 = Instant::now();
        let mut a = Announcer::new();
        assert!(a.is_idle());
        assert_eq!(a.poll_timeout(), None);
        assert_eq!(a.poll_announce(t0 + secs(9999)), None);
        a.start(t0);
        assert_eq!(a.poll_timeout(), Some(t0));
        send(&mut a, t0, Some(Started));
    }

    #[test]
    fn regular_announces_follow_the_interval() {
        let t0 = Instant::now();
        let mut a = Announcer::new();
        a.start(t0);
        send(&mut a, t0, Some(Started));
        a.handle_reply(&ok(Some(600)), t0 + secs(1));
        assert_eq!(a.poll_timeout(), Some(t0 + secs(601)));
        assert_eq!(a.poll_announce(t0 + secs(600)), None);
        send(&mut a, t0 + secs(601), None);
        // No interval given: the last one stands.
        a.handle_reply(&ok(None), t0 + secs(602));
        assert_eq!(a.poll_timeout(), Some(t0 + secs(1202)));
    }

    #[test]
    fn the_interval_is_clamped() {
        let t0 = Instant::now();
        let mut a = Announcer::new();
        assert_eq!(a.effective_interval(), DEFAULT_INTERVAL);
        a.start(t0);
        send(&mut a, t0, Some(Started));
        a.handle_reply(&ok(Some(5)), t0);
        assert_eq!(a.poll_timeout(), Some(t0 + MIN_INTERVAL_FLOOR));
        send(&mut a, t0 + secs(30), None);
        let reply = AnnounceReply::Success(Announced {
            interval: Some(secs(60)),
            min_interval: Some(secs(300)),
            ..Announced::default()
        });
        a.handle_reply(&reply, t0 + secs(30));
        assert_eq!(a.effective_interval(), secs(300));
        assert_eq!(a.poll_timeout(), Some(t0 + secs(330)));
    }

    #[test]
    fn completed_is_sent_once_after_started() {
        let t0 = Instant::now();
        let mut a = Announcer::new();
        a.start(t0);
        send(&mut a, t0, Some(Started));
        // Completes while `started` is in flight: owed once it is acked.
        a.completed(t0 + secs(1));
        a.handle_reply(&ok(Some(1800)), t0 + secs(2));
        assert_eq!(a.poll_timeout(), Some(t0 + secs(2)));
        send(&mut a, t0 + secs(2), Some(Completed));
        a.completed(t0 + secs(3)); // a second call does nothing
        a.handle_reply(&ok(Some(1800)), t0 + secs(3));
        assert_eq!(a.poll_timeout(), Some(t0 + secs(1803)));
        send(&mut a, t0 + secs(1803), None);
    }

    #[test]
    fn completed_retries_until_acknowledged() {
        let t0 = Instant::now();
        let mut a = Announcer::new();
        a.start(t0);
        send(&mut a, t0, Some(Started));
        a.handle_reply(&ok(Some(1800)), t0);
        a.completed(t0 + secs(10));
        assert_eq!(a.poll_timeout(), Some(t0 + secs(10)));
        send(&mut a, t0 + secs(10), Some(Completed));
        a.handle_error(&TrackerError::Timeout, t0 + secs(11));
        assert_eq!(a.poll_timeout(), Some(t0 + secs(41)));
        send(&mut a, t0 + secs(41), Some(Completed));
        a.handle_reply(&ok(Some(1800)), t0 + secs(42));
        send(&mut a, t0 + secs(1842), None);
    }

    #[test]
    fn completed_before_start_or_when_idle_is_ignored() {
        let t0 = Instant::now();
        let mut a = Announcer::new();
        a.completed(t0);
        a.start(t0);
        send(&mut a, t0, Some(Started));
        a.handle_reply(&ok(Some(100)), t0);
        assert_eq!(a.poll_timeout(), Some(t0 + secs(100)));
        send(&mut a, t0 + secs(100), None);
    }

    #[test]
    fn failures_back_off_exponentially_and_reset_on_success() {
        let t0 = Instant::now();
        let mut a = Announcer::new();
        a.start(t0);
        let mut now = t0;
        let mut delays = Vec::new();
        for _ in 0..8 {
            send(&mut a, now, Some(Started));
            a.handle_error(&TrackerError::Connect("t:80".into(), "refused".into()), now);
            let next = a.poll_timeout().unwrap();
            delays.push((next - now).as_secs());
            now = next;
        }
        assert_eq!(delays, [30, 60, 120, 240, 480, 960, 1800, 1800]);
        assert_eq!(a.failures(), 8);
        assert_eq!(
            a.last_error(),
            Some("could not connect to tracker t:80: refused")
        );
        send(&mut a, now, Some(Started));
        a.handle_reply(&ok(Some(900)), now);
        assert_eq!(a.failures(), 0);
        assert_eq!(a.last_error(), None);
        assert_eq!(a.poll_timeout(), Some(now + secs(900)));
        send(&mut a, now + secs(900), None);
        a.handle_error(&TrackerError::Timeout, now + secs(900));
        assert_eq!(a.poll_timeout(), Some(now + secs(930)));
    }

    #[test]
    fn a_failure_reason_counts_as_a_failure() {
        let t0 = Instant::now();
        let mut a = Announcer::new();
        a.start(t0);
        send(&mut a, t0, Some(Started));
        a.handle_reply(&AnnounceReply::Failure("unregistered torrent".into()), t0);
        assert_eq!(a.last_error(), Some("unregistered torrent"));
        assert_eq!(a.poll_timeout(), Some(t0 + FIRST_RETRY));
        send(&mut a, t0 + FIRST_RETRY, Some(Started));
    }

    #[test]
    fn stop_sends_stopped_then_nothing_more() {
        let t0 = Instant::now();
        let mut a = Announcer::new();
        a.start(t0);
        send(&mut a, t0, Some(Started));
        a.handle_reply(&ok(Some(1800)), t0);
        a.stop(t0 + secs(5));
        assert_eq!(a.poll_timeout(), Some(t0 + secs(5)));
        send(&mut a, t0 + secs(5), Some(Stopped));
        a.handle_reply(&ok(Some(1800)), t0 + secs(6));
        assert!(a.is_idle());
        assert_eq!(a.poll_timeout(), None);
        assert_eq!(a.poll_announce(t0 + secs(99999)), None);
        a.completed(t0 + secs(7));
        assert_eq!(a.poll_timeout(), None);
    }

    #[test]
    fn a_failed_stopped_is_not_retried() {
        let t0 = Instant::now();
        let mut a = Announcer::new();
        a.start(t0);
        send(&mut a, t0, Some(Started));
        a.handle_reply(&ok(None), t0);
        a.stop(t0);
        send(&mut a, t0, Some(Stopped));
        a.handle_error(&TrackerError::Timeout, t0 + secs(1));
        assert!(a.is_idle());
        assert_eq!(a.last_error(), Some("tracker did not answer in time"));
    }

    #[test]
    fn stop_while_in_flight_sends_stopped_after_the_reply() {
        let t0 = Instant::now();
        let mut a = Announcer::new();
        a.start(t0);
        send(&mut a, t0, Some(Started));
        a.stop(t0 + secs(1));
        assert_eq!(a.poll_timeout(), None, "still one in flight");
        a.handle_reply(&ok(None), t0 + secs(2));
        assert_eq!(a.poll_timeout(), Some(t0 + secs(2)));
        send(&mut a, t0 + secs(2), Some(Stopped));
        a.handle_reply(&ok(None), t0 + secs(3));
        assert!(a.is_idle());
    }

    #[test]
    fn a_tracker_that_never_heard_of_us_gets_no_stopped() {
        let t0 = Instant::now();
        let mut a = Announcer::new();
        a.start(t0);
        send(&mut a, t0, Some(Started));
        a.handle_error(&TrackerError::Timeout, t0 + secs(1));
        a.stop(t0 + secs(2));
        assert!(a.is_idle(), "its started failed: nothing to take back");
        // Stopped while `started` is in flight, which then fails: idle too.
        a.start(t0 + secs(3));
        send(&mut a, t0 + secs(3), Some(Started));
        a.stop(t0 + secs(4));
        assert!(!a.is_idle());
        a.handle_error(&TrackerError::Timeout, t0 + secs(5));
        assert!(a.is_idle());
        assert_eq!(a.poll_timeout(), None);
    }

    #[test]
    fn stop_before_anything_was_sent_goes_idle_silently() {
        let t0 = Instant::now();
        let mut a = Announcer::new();
        a.start(t0);
        a.stop(t0);
        assert!(a.is_idle());
        assert_eq!(a.poll_announce(t0), None);
    }

    #[test]
    fn restart_sends_started_again() {
        let t0 = Instant::now();
        let mut a = Announcer::new();
        a.start(t0);
        send(&mut a, t0, Some(Started));
        a.handle_reply(&ok(None), t0);
        a.stop(t0 + secs(1));
        send(&mut a, t0 + secs(1), Some(Stopped));
        // Restarted while `stopped` is in flight.
        a.start(t0 + secs(2));
        assert_eq!(a.poll_timeout(), None);
        a.handle_reply(&ok(None), t0 + secs(3));
        assert!(!a.is_idle());
        assert_eq!(a.poll_timeout(), Some(t0 + secs(2)));
        send(&mut a, t0 + secs(3), Some(Started));
        a.handle_reply(&ok(None), t0 + secs(3));
        // A new run may complete again.
        a.completed(t0 + secs(4));
        send(&mut a, t0 + secs(4), Some(Completed));
    }

    #[test]
    fn remembers_tracker_id_stats_and_warning() {
        let t0 = Instant::now();
        let mut a = Announcer::new();
        a.start(t0);
        send(&mut a, t0, Some(Started));
        let reply = AnnounceReply::Success(Announced {
            warning: Some("slow down".into()),
            tracker_id: Some(b"tid".to_vec()),
            complete: Some(4),
            incomplete: Some(9),
            peers: vec!["10.0.0.1:1".parse().unwrap()],
            ..Announced::default()
        });
        a.handle_reply(&reply, t0 + secs(1));
        assert_eq!(a.tracker_id(), Some(&b"tid"[..]));
        assert_eq!((a.seeders(), a.leechers()), (Some(4), Some(9)));
        assert_eq!(a.last_warning(), Some("slow down"));
        assert_eq!(a.last_peer_count(), 1);
        assert_eq!(a.last_success(), Some(t0 + secs(1)));
        // A later reply without them keeps the id and counts, clears the
        // warning.
        send(&mut a, t0 + secs(1801), None);
        a.handle_reply(&ok(None), t0 + secs(1801));
        assert_eq!(a.tracker_id(), Some(&b"tid"[..]));
        assert_eq!(a.seeders(), Some(4));
        assert_eq!(a.last_warning(), None);
    }

    #[test]
    fn stray_outcomes_without_an_announce_in_flight_are_ignored() {
        let t0 = Instant::now();
        let mut a = Announcer::new();
        a.start(t0);
        a.handle_error(&TrackerError::Timeout, t0);
        a.handle_reply(&AnnounceReply::Failure("x".into()), t0);
        assert_eq!(a.last_error(), None);
        assert_eq!(a.poll_timeout(), Some(t0));
    }
}
