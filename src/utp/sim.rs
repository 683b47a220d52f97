//! A simulated link between two endpoints, for tests: a fake clock, a
//! seeded generator, and paths that lose, duplicate, reorder, delay and
//! queue datagrams.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{Config, Endpoint};

/// One direction of the link.
#[derive(Debug, Clone)]
pub struct Path {
    /// Propagation delay.
    pub delay: Duration,
    /// Extra delay drawn uniformly from `[0, jitter)`: reorders packets.
    pub jitter: Duration,
    /// Probability of losing a datagram.
    pub loss: f64,
    /// Probability of delivering a datagram twice.
    pub dup: f64,
    /// Bottleneck rate in bytes per second (`None`: infinite).
    pub rate: Option<u64>,
    /// Bytes the bottleneck queue holds before it drops (drop-tail).
    pub queue_limit: usize,
    /// Datagrams dropped by the queue or by `loss`.
    pub dropped: u64,
    /// Departure times and sizes of what is queued at the bottleneck.
    queue: VecDeque<(Instant, usize)>,
    queued: usize,
}

impl Path {
    /// A path with a fixed delay and nothing else.
    pub fn clean(delay: Duration) -> Path {
        Path {
            delay,
            jitter: Duration::ZERO,
            loss: 0.0,
            dup: 0.0,
            rate: None,
            queue_limit: usize::MAX,
            dropped: 0,
            queue: VecDeque::new(),
            queued: 0,
        }
    }

    /// A path that loses, duplicates and reorders.
    pub fn lossy(delay: Duration, jitter: Duration, loss: f64, dup: f64) -> Path {
        Path {
            jitter,
            loss,
            dup,
            ..Path::clean(delay)
        }
    }

    /// A bottleneck of `rate` bytes per second with a drop-tail queue.
    pub fn bottleneck(rate: u64, queue_limit: usize, delay: Duration) -> Path {
        Path {
            rate: Some(rate),
            queue_limit,
            ..Path::clean(delay)
        }
    }

    fn drain_queue(&mut self, now: Instant) {
        while let Some(&(t, size)) = self.queue.front() {
            if t > now {
                break;
            }
            self.queue.pop_front();
            self.queued -= size;
        }
    }

    /// Queuing delay a packet offered now would wait.
    pub fn queue_delay(&mut self, now: Instant) -> Duration {
        self.drain_queue(now);
        self.queue
            .back()
            .map_or(Duration::ZERO, |&(t, _)| t.saturating_duration_since(now))
    }

    /// Offers a datagram of `size` bytes at `now`; returns when it (and a
    /// duplicate) arrive, or nothing if it is lost.
    pub fn offer(
        &mut self,
        size: usize,
        now: Instant,
        rng: &mut fastrand::Rng,
    ) -> [Option<Instant>; 2] {
        if self.loss > 0.0 && rng.f64() < self.loss {
            self.dropped += 1;
            return [None, None];
        }
        let mut depart = now;
        if let Some(rate) = self.rate {
            self.drain_queue(now);
            if self.queued + size > self.queue_limit {
                self.dropped += 1;
                return [None, None];
            }
            let start = self.queue.back().map_or(now, |&(t, _)| t.max(now));
            depart = start + Duration::from_nanos(size as u64 * 1_000_000_000 / rate);
            self.queue.push_back((depart, size));
            self.queued += size;
        }
        let jitter = |rng: &mut fastrand::Rng, j: Duration| {
            if j.is_zero() {
                Duration::ZERO
            } else {
                Duration::from_nanos(rng.u64(..j.as_nanos() as u64))
            }
        };
        let first = depart + self.delay + jitter(rng, self.jitter);
        let second = (self.dup > 0.0 && rng.f64() < self.dup)
            .then(|| depart + self.delay + jitter(rng, self.jitter));
        [Some(first), second]
    }
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Flight {
    at: Instant,
    order: u64,
    to_b: bool,
    bytes: Vec<u8>,
}

/// Two endpoints, `a` and `b`, joined by `forward` (a to b) and `back`.
#[derive(Debug)]
pub struct Sim {
    /// The fake clock.
    pub now: Instant,
    /// When the simulation began.
    pub start: Instant,
    /// The endpoint that usually connects.
    pub a: Endpoint,
    /// The endpoint that usually accepts.
    pub b: Endpoint,
    /// `a`'s address.
    pub a_addr: SocketAddr,
    /// `b`'s address.
    pub b_addr: SocketAddr,
    /// From `a` to `b`.
    pub forward: Path,
    /// From `b` to `a`.
    pub back: Path,
    /// Drop every datagram from a to b while set (a cut link).
    pub cut: bool,
    /// Datagrams from a to b before they enter `forward`; returning false
    /// drops one (for targeted losses).
    pub filter: Option<fn(&[u8]) -> bool>,
    /// Draws the path's losses, duplicates and delays.
    pub rng: fastrand::Rng,
    /// Datagrams addressed to neither endpoint (answers to forged ones).
    pub elsewhere: u64,
    wire: BinaryHeap<Reverse<Flight>>,
    order: u64,
    buf: Vec<u8>,
}

impl Sim {
    /// Endpoints with configurations `a` and `b`, seeded from `seed`.
    pub fn new(a: Config, b: Config, seed: u64, forward: Path, back: Path) -> Sim {
        let start = Instant::now();
        Sim {
            now: start,
            start,
            a: Endpoint::new(a, fastrand::Rng::with_seed(seed), start),
            b: Endpoint::new(b, fastrand::Rng::with_seed(seed ^ 0x5eed), start),
            a_addr: "10.0.0.1:6881".parse().unwrap(),
            b_addr: "10.0.0.2:6881".parse().unwrap(),
            forward,
            back,
            cut: false,
            filter: None,
            rng: fastrand::Rng::with_seed(seed.wrapping_mul(31)),
            elsewhere: 0,
            wire: BinaryHeap::new(),
            order: 0,
            buf: Vec::new(),
        }
    }

    /// Seconds since the start, for messages.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// Puts everything both endpoints want to send on the wire.
    pub fn flush(&mut self) {
        for from_a in [true, false] {
            loop {
                let ep = if from_a { &mut self.a } else { &mut self.b };
                let Some(to) = ep.poll_transmit(self.now, &mut self.buf) else {
                    break;
                };
                let expected = if from_a { self.b_addr } else { self.a_addr };
                if to != expected {
                    self.elsewhere += 1;
                    continue;
                }
                if from_a && (self.cut || self.filter.is_some_and(|f| !f(&self.buf))) {
                    continue;
                }
                let path = if from_a {
                    &mut self.forward
                } else {
                    &mut self.back
                };
                for at in path
                    .offer(self.buf.len(), self.now, &mut self.rng)
                    .into_iter()
                    .flatten()
                {
                    self.order += 1;
                    self.wire.push(Reverse(Flight {
                        at,
                        order: self.order,
                        to_b: from_a,
                        bytes: self.buf.clone(),
                    }));
                }
            }
        }
    }

    fn deliver_due(&mut self) {
        while self.wire.peek().is_some_and(|f| f.0.at <= self.now) {
            let Some(Reverse(f)) = self.wire.pop() else {
                break;
            };
            if f.to_b {
                self.b.handle_datagram(self.a_addr, &f.bytes, self.now);
            } else {
                self.a.handle_datagram(self.b_addr, &f.bytes, self.now);
            }
        }
    }

    /// Fires due timers of both endpoints.
    pub fn timers(&mut self) {
        for ep in [&mut self.a, &mut self.b] {
            if ep.poll_timeout().is_some_and(|t| t <= self.now) {
                ep.handle_timeout(self.now);
            }
        }
    }

    /// The next instant something happens on its own.
    pub fn next_event(&self) -> Option<Instant> {
        [
            self.wire.peek().map(|f| f.0.at),
            self.a.poll_timeout(),
            self.b.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Sends what is due, moves the clock to the next event (at most
    /// `max` ahead), and delivers and fires what is due then.
    pub fn step(&mut self, max: Duration) {
        self.flush();
        let limit = self.now + max;
        let next = self.next_event().map_or(limit, |t| t.min(limit));
        self.now = next.max(self.now);
        self.deliver_due();
        self.timers();
        self.flush();
    }

    /// Moves the clock to `t` by steps, with nothing else driving.
    pub fn run_until(&mut self, t: Instant) {
        while self.now < t {
            self.step(t - self.now);
        }
    }
}
