//! A simulated network of sans-IO nodes in one process: a fake clock, and
//! a network that drops and delays datagrams with a seeded rng. Test
//! code only.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use super::{Config, Dht, DhtEvent, LookupDone, NodeId};

/// One datagram in flight, or a node's timer.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Due {
    /// (destination node, source address, bytes).
    Datagram(usize, SocketAddr, Vec<u8>),
    /// A node's `poll_timeout` as it was when queued.
    Timer(usize),
}

/// The network and its nodes.
pub struct Net {
    /// The nodes, by index.
    pub nodes: Vec<Dht>,
    /// Node `i`'s address.
    pub addrs: Vec<SocketAddr>,
    /// Whether node `i` is still up: datagrams to a node that left are
    /// lost, and it runs no timers.
    pub alive: Vec<bool>,
    by_addr: HashMap<SocketAddr, usize>,
    /// The fake clock.
    pub now: Instant,
    rng: fastrand::Rng,
    queue: BinaryHeap<Reverse<(Instant, u64, Due)>>,
    seq: u64,
    /// Datagrams lost, in thousandths.
    pub loss_per_mille: u32,
    /// One-way delay range.
    pub delay: (Duration, Duration),
    /// Datagrams sent in all.
    pub sent: u64,
    /// Events each node reported, not yet taken.
    pub events: Vec<Vec<DhtEvent>>,
    /// The timer queued for each node, so that an unchanged one is not
    /// queued again.
    timers: Vec<Option<Instant>>,
    buf: Vec<u8>,
}

/// Node `i`'s address: one private /24 per node, so that the IP
/// restriction (on, as by default) is exercised without refusing anyone.
pub fn addr_of(i: usize) -> SocketAddr {
    let ip = Ipv4Addr::new(10, (i >> 8) as u8, i as u8, 1);
    SocketAddr::new(IpAddr::V4(ip), 6881)
}

impl Net {
    /// `n` nodes, none joined yet. Loss and delay as given.
    pub fn new(n: usize, seed: u64, loss_per_mille: u32, delay: (Duration, Duration)) -> Net {
        let now = Instant::now();
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut nodes = Vec::with_capacity(n);
        let mut addrs = Vec::with_capacity(n);
        for i in 0..n {
            let node_rng = fastrand::Rng::with_seed(rng.u64(..));
            nodes.push(Dht::new(Config::default(), None, node_rng, now));
            addrs.push(addr_of(i));
        }
        let by_addr = addrs.iter().enumerate().map(|(i, a)| (*a, i)).collect();
        Net {
            nodes,
            addrs,
            alive: vec![true; n],
            by_addr,
            now,
            rng,
            queue: BinaryHeap::new(),
            seq: 0,
            loss_per_mille,
            delay,
            sent: 0,
            events: (0..n).map(|_| Vec::new()).collect(),
            timers: vec![None; n],
            buf: Vec::new(),
        }
    }

    fn push(&mut self, at: Instant, due: Due) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq, due)));
    }

    /// Sends what node `i` has to send, collects its events and queues
    /// its timer.
    pub fn flush(&mut self, i: usize) {
        let from = self.addrs[i];
        while let Some(to) = self.nodes[i].poll_transmit(&mut self.buf) {
            self.sent += 1;
            if self.rng.u32(..1000) < self.loss_per_mille {
                continue;
            }
            let Some(&j) = self.by_addr.get(&to) else {
                continue;
            };
            let (lo, hi) = self.delay;
            let span = (hi - lo).as_micros() as u64;
            let at = self.now + lo + Duration::from_micros(self.rng.u64(..=span));
            let bytes = self.buf.clone();
            self.push(at, Due::Datagram(j, from, bytes));
        }
        while let Some(e) = self.nodes[i].poll_event() {
            self.events[i].push(e);
        }
        if let Some(t) = self.nodes[i].poll_timeout() {
            let t = t.max(self.now);
            if self.timers[i].is_none_or(|q| t < q) {
                self.timers[i] = Some(t);
                self.push(t, Due::Timer(i));
            }
        }
    }

    /// Runs events until the clock reaches `until`.
    pub fn run_until(&mut self, until: Instant) {
        while let Some(Reverse((at, _, _))) = self.queue.peek() {
            if *at > until {
                break;
            }
            let Some(Reverse((at, _, due))) = self.queue.pop() else {
                break;
            };
            self.now = self.now.max(at);
            match due {
                Due::Datagram(j, from, bytes) => {
                    if self.alive[j] {
                        self.nodes[j].handle_datagram(from, &bytes, self.now);
                        self.flush(j);
                    }
                }
                Due::Timer(i) => {
                    if self.timers[i] != Some(at) {
                        continue; // superseded by an earlier one
                    }
                    self.timers[i] = None;
                    if self.alive[i] {
                        if self.nodes[i].poll_timeout().is_some_and(|t| t <= self.now) {
                            self.nodes[i].handle_timeout(self.now);
                        }
                        self.flush(i);
                    }
                }
            }
        }
        self.now = self.now.max(until);
    }

    /// Runs for `d` of simulated time.
    pub fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        self.run_until(until);
    }

    /// Node `i` joins through `through`, at the current time.
    pub fn join(&mut self, i: usize, through: &[usize]) {
        let addrs: Vec<SocketAddr> = through.iter().map(|&j| self.addrs[j]).collect();
        self.nodes[i].bootstrap(&addrs, self.now);
        self.flush(i);
    }

    /// Takes node `i`'s `LookupDone` for `lookup`, if it came.
    pub fn take_done(&mut self, i: usize, lookup: super::LookupId) -> Option<LookupDone> {
        let at = self.events[i]
            .iter()
            .position(|e| matches!(e, DhtEvent::LookupDone(d) if d.id == lookup))?;
        match self.events[i].remove(at) {
            DhtEvent::LookupDone(d) => Some(d),
            _ => None,
        }
    }

    /// The ids of the `k` live nodes closest to `target` (the truth a
    /// lookup is judged against).
    pub fn truth(&self, target: &NodeId, k: usize) -> Vec<NodeId> {
        let mut ids: Vec<NodeId> = (0..self.nodes.len())
            .filter(|&i| self.alive[i])
            .map(|i| self.nodes[i].id())
            .collect();
        ids.sort_by_cached_key(|id| id.distance(target));
        ids.truncate(k);
        ids
    }

    /// A random number from the network's rng (for test choices).
    pub fn pick(&mut self, n: usize) -> usize {
        self.rng.usize(..n)
    }

    /// A random id from the network's rng.
    pub fn random_id(&mut self) -> NodeId {
        NodeId::random(&mut self.rng)
    }
}
