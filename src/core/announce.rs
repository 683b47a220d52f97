//! Announcing for the core: running torrents' trackers started and
//! stopped with them, the sizes announces report as `left`, and the
//! `stopping` state a stopped torrent shows while its `stopped` announce
//! is in flight. What trackers answer comes out as [`TrackerEvent`]s for
//! the core to apply.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::registry::{Registry, Torrent};
use crate::tracker::trackers::{self, Progress, TrackerEvent, Trackers};
use crate::tracker::udp::Transmit;
use crate::tracker::worker::{Job, JobResult};

/// Longest a stopped torrent shows `stopping` while its `stopped` announce
/// is in flight.
const STOPPING_BOUND: Duration = Duration::from_secs(5);

/// What a torrent whose size is not known yet (no metadata) announces as
/// `left`: not 0, which would make it a seed to the tracker (and some
/// give seeds no seeds), but a piece's worth, as libtorrent does.
const LEFT_UNKNOWN: u64 = 16 << 10;

/// A torrent's totals, for its announces.
#[derive(Debug, Clone, Copy, Default)]
pub struct Totals {
    /// Payload bytes sent since it was added.
    pub uploaded: u64,
    /// Payload bytes received since it was added.
    pub downloaded: u64,
    /// Bytes of verified pieces.
    pub completed: u64,
}

/// Every running torrent's trackers.
pub struct Announcing {
    /// Announce at all (off in tests that have no tracker).
    enabled: bool,
    trackers: Trackers,
    /// Bytes in each running torrent, for an announce's `left`.
    sizes: HashMap<u64, u64>,
    /// Torrents showing `stopping`, until when at most.
    stopping: HashMap<u64, Instant>,
}

impl Announcing {
    /// Trackers reached within `timeout` per request; none at all unless
    /// `enabled`.
    pub fn new(enabled: bool, timeout: Duration) -> Announcing {
        let settings = trackers::Settings {
            timeout,
            ..trackers::Settings::default()
        };
        Announcing {
            enabled,
            trackers: Trackers::new(settings, fastrand::Rng::new()),
            sizes: HashMap::new(),
            stopping: HashMap::new(),
        }
    }

    /// A torrent started moving data: its trackers start too.
    pub fn start(&mut self, t: &Torrent, now: Instant) {
        if !self.enabled {
            return;
        }
        let tiers: Vec<Vec<String>> = t
            .tiers()
            .iter()
            .map(|tier| tier.iter().map(|tr| tr.url.clone()).collect())
            .collect();
        if t.meta.is_some() {
            self.sizes.insert(t.id, t.total_size());
        }
        self.trackers.start(t.id, t.info_hash, &tiers, now);
    }

    /// A running torrent learned its size (its metadata arrived).
    pub fn set_size(&mut self, id: u64, size: u64) {
        self.sizes.insert(id, size);
    }

    /// A torrent stopped: `stopped` goes to its trackers, and it shows
    /// `stopping` meanwhile.
    pub fn stop(&mut self, id: u64, now: Instant) {
        self.trackers.stop(id, now);
        if self.trackers.busy(id) {
            self.stopping.insert(id, now + STOPPING_BOUND);
        }
    }

    /// A torrent was removed: `stopped` goes out, nothing is kept.
    pub fn forget(&mut self, id: u64, now: Instant) {
        self.trackers.stop(id, now);
        self.sizes.remove(&id);
    }

    /// Every torrent stops (shutdown).
    pub fn stop_all(&mut self, now: Instant) {
        self.trackers.stop_all(now);
    }

    /// Torrent `id` completed: `completed` goes out.
    pub fn completed(&mut self, id: u64, now: Instant) {
        self.trackers.completed(id, now);
    }

    /// A user asked torrent `id` to announce now.
    pub fn announce_now(&mut self, id: u64, now: Instant) {
        self.trackers.announce_now(id, now);
    }

    /// Whether announces or scrapes are due (they need fresh totals).
    pub fn due(&self, now: Instant) -> bool {
        self.trackers.due(now)
    }

    /// Starts what is due; `totals` tells each torrent's bytes uploaded,
    /// downloaded and verified (`left` follows from its size).
    pub fn start_due(
        &mut self,
        now: Instant,
        peer_id: [u8; 20],
        port: u16,
        totals: impl Fn(u64) -> Totals,
    ) {
        let sizes = &self.sizes;
        let progress = |id: u64| {
            let t = totals(id);
            Progress {
                uploaded: t.uploaded,
                downloaded: t.downloaded,
                left: sizes
                    .get(&id)
                    .map_or(LEFT_UNKNOWN, |s| s.saturating_sub(t.completed)),
            }
        };
        self.trackers.start_due(now, peer_id, port, progress);
    }

    /// The next job for the tracker worker.
    pub fn poll_job(&mut self) -> Option<Job> {
        self.trackers.poll_job()
    }

    /// The next datagram for a UDP tracker.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        self.trackers.poll_transmit(now)
    }

    /// What the worker did with a job.
    pub fn handle_job_result(&mut self, r: JobResult, now: Instant) {
        self.trackers.handle_job_result(r, now);
    }

    /// Whether a datagram is a reply a UDP tracker owes us.
    pub fn expects(&self, from: SocketAddr, data: &[u8]) -> bool {
        self.trackers.expects_datagram(from, data)
    }

    /// A UDP tracker's reply.
    pub fn handle_datagram(&mut self, from: SocketAddr, data: &[u8], now: Instant) {
        self.trackers.handle_datagram(from, data, now);
    }

    /// Retransmissions and deadlines.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.trackers.handle_timeout(now);
    }

    /// What the trackers said: peers, status.
    pub fn poll_event(&mut self) -> Option<TrackerEvent> {
        self.trackers.poll_event()
    }

    /// When something is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.trackers.poll_timeout(),
            self.stopping.values().min().copied(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Announces still to send or in flight (shutdown waits for them).
    pub fn announcing(&self) -> bool {
        self.trackers.announcing()
    }

    /// A stopped torrent says `stopping` while its `stopped` announce is
    /// in flight, for [`STOPPING_BOUND`] at most.
    pub fn show_stopping(&mut self, now: Instant, reg: &mut Registry) {
        let trackers = &self.trackers;
        self.stopping.retain(|id, until| {
            let busy = now < *until && trackers.busy(*id);
            if let Some(x) = reg.transfer_mut(*id) {
                x.stopping = busy;
            }
            busy
        });
    }
}
