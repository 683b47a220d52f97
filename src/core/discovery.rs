//! The core's DHT (BEP 5): a node on the peer port's UDP socket, its
//! bootstrap routers resolved on the tracker worker, its state saved in
//! the state directory, and every running public torrent looked up and
//! announced every 30 minutes. What it finds comes out as peers for the
//! swarm.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use log::{debug, info, warn};

use crate::dht::{self, Dht, DhtEvent, DhtStats, LookupId, NodeId};
use crate::registry::{store, DhtReport as Report};
use crate::tracker::worker::{Job, JobKind, JobOutput, JobResult};

/// How often each running public torrent is announced (BEP 5 practice:
/// libtorrent and Transmission announce every 15 to 30 minutes).
pub const ANNOUNCE_EVERY: Duration = Duration::from_secs(30 * 60);

/// A lookup that could announce to nobody (the table still empty, just
/// started) is tried again this soon, then twice as late each time, up to
/// [`ANNOUNCE_EVERY`].
const RETRY_FIRST: Duration = Duration::from_secs(10);

/// How often the routing table is saved while the daemon runs (besides
/// at shutdown and when our id changes), so a crash loses little.
const SAVE_EVERY: Duration = Duration::from_secs(10 * 60);

/// How long a name lookup of a bootstrap router may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(15);

/// A bootstrap that found nobody is tried again this long after.
const REBOOTSTRAP_AFTER: Duration = Duration::from_secs(60);

/// Tracker worker job ids of the DHT's name lookups carry this bit (the
/// trackers' own count up from 1).
pub const JOB_BIT: u64 = 1 << 63;

/// The file the routing table is kept in.
const STATE_FILE: &str = "dht.benc";

/// A running public torrent the DHT looks up.
struct Tracked {
    torrent: u64,
    next: Instant,
    /// How long after a lookup that reached nobody the next one comes.
    retry: Duration,
}

/// The DHT as the core runs it.
pub struct Discovery {
    node: Option<Dht>,
    config: dht::Config,
    /// `HOST:PORT` of the bootstrap routers.
    routers: Vec<(String, u16)>,
    /// Name lookups to hand to the worker, and those in flight.
    jobs: VecDeque<Job>,
    resolving: usize,
    next_job: u64,
    /// When to bootstrap again if the table is still empty.
    rebootstrap: Option<Instant>,
    /// Torrents announced, by info hash.
    tracked: HashMap<[u8; 20], Tracked>,
    /// Lookups in flight, for the torrent they are for.
    lookups: HashMap<LookupId, u64>,
    /// Our peer port, announced.
    port: u16,
    state: Option<PathBuf>,
    next_save: Option<Instant>,
    peers: VecDeque<(u64, Vec<SocketAddr>)>,
}

impl Discovery {
    /// A DHT not running yet (see [`Discovery::set_running`]), bootstrapped
    /// from `routers`, its state kept in `state_dir` (none in tests).
    pub fn new(routers: Vec<(String, u16)>, state_dir: Option<PathBuf>) -> Discovery {
        Discovery {
            node: None,
            config: dht::Config::default(),
            routers,
            jobs: VecDeque::new(),
            resolving: 0,
            next_job: 0,
            rebootstrap: None,
            tracked: HashMap::new(),
            lookups: HashMap::new(),
            port: 0,
            state: state_dir.map(|d| d.join(STATE_FILE)),
            next_save: None,
            peers: VecDeque::new(),
        }
    }

    /// Starts the node (from its saved state when there is one) or stops
    /// it (saving its state).
    pub fn set_running(&mut self, on: bool, now: Instant) {
        match (on, self.node.is_some()) {
            (true, false) => self.start(now),
            (false, true) => {
                self.save();
                self.node = None;
                self.lookups.clear();
                self.jobs.clear();
                info!("DHT stopped");
            }
            _ => {}
        }
    }

    fn start(&mut self, now: Instant) {
        let rng = fastrand::Rng::new();
        let saved = self
            .state
            .as_ref()
            .and_then(|p| store::read_optional(p).ok().flatten());
        let node = match saved.map(|b| Dht::load(self.config.clone(), &b, rng.clone(), now)) {
            Some(Ok(node)) => node,
            Some(Err(e)) => {
                warn!("DHT state not usable ({e}); starting afresh");
                Dht::new(self.config.clone(), None, rng, now)
            }
            None => Dht::new(self.config.clone(), None, rng, now),
        };
        info!("DHT started (node {})", hex(&node.id()));
        self.node = Some(node);
        self.next_save = Some(now + SAVE_EVERY);
        self.bootstrap(now);
        for t in self.tracked.values_mut() {
            t.next = now;
        }
    }

    /// Resolves the routers (on the worker) to bootstrap from.
    fn bootstrap(&mut self, now: Instant) {
        for (host, port) in &self.routers {
            self.next_job += 1;
            self.jobs.push_back(Job {
                id: JOB_BIT | self.next_job,
                kind: JobKind::Resolve(host.clone(), *port),
                timeout: RESOLVE_TIMEOUT,
            });
        }
        self.rebootstrap = Some(now + REBOOTSTRAP_AFTER);
    }

    /// Our peer port, for announces.
    pub fn set_port(&mut self, port: u16) {
        self.port = port;
    }

    /// A running public torrent: looked up at once, then every
    /// [`ANNOUNCE_EVERY`].
    pub fn track(&mut self, torrent: u64, info_hash: [u8; 20], now: Instant) {
        self.tracked.entry(info_hash).or_insert(Tracked {
            torrent,
            next: now,
            retry: RETRY_FIRST,
        });
    }

    /// A torrent stopped, or turned out private (BEP 27).
    pub fn untrack(&mut self, info_hash: &[u8; 20]) {
        if let Some(t) = self.tracked.remove(info_hash) {
            self.lookups.retain(|_, id| *id != t.torrent);
        }
    }

    /// A datagram for the DHT.
    pub fn handle_datagram(&mut self, from: SocketAddr, data: &[u8], now: Instant) -> bool {
        let Some(node) = self.node.as_mut() else {
            return false;
        };
        node.handle_datagram(
            SocketAddr::new(from.ip().to_canonical(), from.port()),
            data,
            now,
        );
        self.drain(now);
        true
    }

    /// A peer told us its DHT port (BEP 5's `port` message): pinged, and
    /// added if it answers.
    pub fn add_node(&mut self, addr: SocketAddr, now: Instant) {
        if let Some(node) = self.node.as_mut() {
            node.add_node(addr, now);
        }
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self, out: &mut Vec<u8>) -> Option<SocketAddr> {
        self.node.as_mut()?.poll_transmit(out)
    }

    /// The next name lookup for the worker.
    pub fn poll_job(&mut self) -> Option<Job> {
        let job = self.jobs.pop_front()?;
        self.resolving += 1;
        Some(job)
    }

    /// A worker result, if it is the DHT's (else it is given back).
    pub fn handle_job_result(&mut self, r: JobResult, now: Instant) -> Option<JobResult> {
        if r.id & JOB_BIT == 0 {
            return Some(r);
        }
        self.resolving = self.resolving.saturating_sub(1);
        match (r.result, self.node.as_mut()) {
            (Ok(JobOutput::Addrs(addrs)), Some(node)) => {
                debug!("DHT bootstrap: {} router addresses", addrs.len());
                node.bootstrap(&addrs, now);
            }
            (Err(e), _) => warn!("DHT bootstrap router: {e}"),
            _ => {}
        }
        None
    }

    /// Peers found for a torrent.
    pub fn poll_peers(&mut self) -> Option<(u64, Vec<SocketAddr>)> {
        self.peers.pop_front()
    }

    /// When [`Discovery::handle_timeout`] must run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let node = self.node.as_ref()?;
        let announce = self.tracked.values().map(|t| t.next).min();
        [
            node.poll_timeout(),
            announce,
            self.next_save,
            self.rebootstrap,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Timers: the node's, announces due, saving, bootstrapping again.
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(node) = self.node.as_mut() else {
            return;
        };
        if node.poll_timeout().is_some_and(|t| t <= now) {
            node.handle_timeout(now);
        }
        let port = (self.port != 0).then_some(self.port);
        for (hash, t) in self.tracked.iter_mut() {
            if t.next <= now {
                t.next = now + ANNOUNCE_EVERY;
                let lookup = node.announce(NodeId(*hash), port, now);
                self.lookups.insert(lookup, t.torrent);
            }
        }
        if self.next_save.is_some_and(|t| t <= now) {
            self.next_save = Some(now + SAVE_EVERY);
            self.save();
        }
        if self.rebootstrap.is_some_and(|t| t <= now) {
            let empty = self
                .node
                .as_ref()
                .is_some_and(|n| n.stats().table.good + n.stats().table.questionable == 0);
            self.rebootstrap = None;
            if empty && self.resolving == 0 {
                self.bootstrap(now);
            }
        }
        self.drain(now);
    }

    /// What the node decided: peers for the swarm, lookups done, a new id
    /// saved.
    fn drain(&mut self, now: Instant) {
        let mut save = false;
        while let Some(e) = self.node.as_mut().and_then(Dht::poll_event) {
            match e {
                DhtEvent::Peers { lookup, peers, .. } => {
                    if let Some(&torrent) = self.lookups.get(&lookup) {
                        self.peers.push_back((torrent, peers));
                    }
                }
                DhtEvent::LookupDone(done) => {
                    self.lookups.remove(&done.id);
                    if let Some(t) = self.tracked.get_mut(&done.info_hash.0) {
                        if done.announced_to == 0 {
                            t.next = t.next.min(now + t.retry);
                            t.retry = (t.retry * 2).min(ANNOUNCE_EVERY);
                        } else {
                            t.retry = RETRY_FIRST;
                        }
                    }
                    debug!(
                        "DHT lookup {} done: {} peers, announced to {}, {} hops",
                        hex(&done.info_hash),
                        done.peers,
                        done.announced_to,
                        done.hops
                    );
                }
                DhtEvent::IdChanged { .. } => save = true,
            }
        }
        if save {
            self.save();
        }
    }

    /// Writes the routing table to the state directory (atomically).
    pub fn save(&self) {
        let (Some(node), Some(path)) = (self.node.as_ref(), self.state.as_ref()) else {
            return;
        };
        if let Err(e) = store::write_atomic(path, &node.save()) {
            warn!("cannot save the DHT state to {}: {e}", path.display());
        }
    }

    /// Where the node stands.
    pub fn report(&self) -> Report {
        match self.node.as_ref() {
            Some(n) => report_of(&n.stats()),
            None => Report::default(),
        }
    }
}

fn report_of(s: &DhtStats) -> Report {
    Report {
        running: true,
        good_nodes: s.table.good + s.table6.good,
        questionable_nodes: s.table.questionable + s.table6.questionable,
        buckets: s.table.buckets + s.table6.buckets,
        lookups: s.lookups + s.lookups_queued,
        packets_in: s.packets_in,
        packets_out: s.packets_out,
        stored_hashes: s.stored_hashes,
        queries_answered: s.queries_answered,
        queries_refused: s.queries_refused,
    }
}

fn hex(id: &NodeId) -> String {
    crate::registry::metainfo::hex(&id.0)
}
