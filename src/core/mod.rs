//! The torrent core: every torrent's state and what moves it, without any
//! I/O and without knowing which front a change came from. It holds the
//! registry (shared with the command service, which changes it), the
//! swarm of running torrents' peers, their trackers, the verification of
//! local data and the disk thread's results.
//!
//! The reactor drives it as quinn-proto's endpoint is driven: bytes and
//! time in through `handle_*`, bytes and decisions out through `poll_*`,
//! and [`Core::poll_timeout`] says when to call [`Core::handle_timeout`].
//! Fronts change the registry; [`Core::sync`] (run after each commit)
//! follows those changes: torrents started, stopped, removed, settings.
//! What the fronts' scripts must hear of comes out of [`Core::poll_event`].

mod announce;
mod datagrams;
mod discovery;
mod report;

pub use datagrams::{classify, Datagram, DatagramStats};
pub use report::Tally;

use announce::{Announcing, Totals};
use discovery::Discovery;

use std::cell::{Ref, RefCell, RefMut};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use log::{debug, info, trace, warn};

use crate::engine::disk::{DiskDone, DiskRequest};
use crate::engine::tree::DataTree;
use crate::peer::mse::Policy;
use crate::registry::{Encryption, Phase, Registry, Settings as State, Torrent, TorrentError};
use crate::swarm::{self, Dial, Stage, Swarm, SwarmEvent, Transport};
use crate::tracker::trackers::{self, TrackerEvent};
use crate::tracker::udp::Transmit;
use crate::tracker::worker::{Job, JobResult};

/// Bytes hashed per step of a verification slice: small enough that the
/// slice ends close to its time budget (about 0.2 ms of SHA-1 here).
const CHECK_STEP: u64 = 256 << 10;

/// How often the engine's figures (rates, peers) are copied for
/// `get-status`.
const REPORT_EVERY: Duration = Duration::from_secs(1);

/// How often pieces verified by the engine are saved (a restart checks the
/// data again anyway; this only shortens that check's surprises).
const SAVE_PROGRESS_EVERY: Duration = Duration::from_secs(30);

/// The registry, shared by the core and the command service on the one
/// thread; borrowed for the length of one call, never across a script
/// call.
pub type SharedRegistry = Rc<RefCell<Registry>>;

/// What the core is told at start: limits and switches of the daemon's
/// configuration that concern torrents.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Announce to trackers (off in tests that have none).
    pub announce: bool,
    /// Longest one tracker request may take.
    pub tracker_timeout: Duration,
    /// Longest verification slice per loop turn.
    pub check_slice: Duration,
    /// Connection limits.
    pub limits: swarm::Limits,
    /// The DHT may run (it runs while the `dht` setting says so too).
    pub dht: bool,
    /// The DHT's bootstrap routers, `HOST:PORT`.
    pub dht_routers: Vec<(String, u16)>,
    /// Where the DHT's routing table is kept (none: not kept).
    pub state_dir: Option<std::path::PathBuf>,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            announce: true,
            tracker_timeout: trackers::Settings::default().timeout,
            check_slice: Duration::from_millis(5),
            limits: swarm::Limits::default(),
            dht: false,
            dht_routers: Vec::new(),
            state_dir: None,
        }
    }
}

/// What happened in the core that the fronts' scripts hear of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoreEvent {
    /// A peer finished its handshake for torrent `torrent`.
    PeerConnected {
        /// Torrent id.
        torrent: u64,
        /// Its address.
        addr: SocketAddr,
    },
    /// A peer of torrent `torrent` went away.
    PeerDisconnected {
        /// Torrent id.
        torrent: u64,
        /// Its address.
        addr: SocketAddr,
    },
    /// A [`Core::delete_data`] is done, or why not all of it.
    DataDeleted {
        /// As given.
        ticket: u64,
        /// What could not be deleted.
        result: Result<(), String>,
    },
}

/// The torrent core.
pub struct Core {
    registry: SharedRegistry,
    settings: Settings,
    /// Every running torrent's peers.
    swarm: Swarm,
    /// Every running torrent's trackers.
    announcing: Announcing,
    /// Torrents may have started or stopped: compare with the swarm.
    sync_due: bool,
    /// The registry's change counter when the swarm was last synced.
    synced_changes: u64,
    next_report: Option<Instant>,
    next_progress_save: Option<Instant>,
    /// Longest verification slice since the queue last ran dry (logged
    /// then, so the bound on pauses is visible in the log).
    longest_slice: Duration,
    events: VecDeque<CoreEvent>,
    /// File deletions for the disk thread, after the swarm's requests.
    deletions: VecDeque<DiskRequest>,
    /// Datagrams on the peer port, by kind.
    datagrams: DatagramStats,
    /// The DHT.
    discovery: Discovery,
}

impl Core {
    /// A core over `registry`, with a swarm of its own.
    pub fn new(registry: SharedRegistry, settings: Settings) -> Core {
        let mut rng = fastrand::Rng::new();
        let peer_id = swarm::new_peer_id(&mut rng);
        let swarm = Swarm::new(peer_id, settings.limits, rng);
        Core::with_swarm(registry, settings, swarm)
    }

    /// A core with the swarm given (tests fix its randomness).
    pub fn with_swarm(registry: SharedRegistry, settings: Settings, swarm: Swarm) -> Core {
        Core {
            announcing: Announcing::new(settings.announce, settings.tracker_timeout),
            discovery: Discovery::new(settings.dht_routers.clone(), settings.state_dir.clone()),
            registry,
            settings,
            swarm,
            sync_due: true,
            synced_changes: 0,
            next_report: None,
            next_progress_save: None,
            longest_slice: Duration::ZERO,
            events: VecDeque::new(),
            deletions: VecDeque::new(),
            datagrams: DatagramStats::default(),
        }
    }

    fn reg(&self) -> Ref<'_, Registry> {
        self.registry.borrow()
    }

    fn reg_mut(&self) -> RefMut<'_, Registry> {
        self.registry.borrow_mut()
    }

    /// Follows the registry after its changes were committed: torrents
    /// move data while they run, their data checked, with no error; one
    /// known by its info hash alone runs to fetch its metadata, and keeps
    /// its peers while the data is checked once the metadata arrived;
    /// settings reach the swarm.
    pub fn sync(&mut self, now: Instant) {
        let changes = self.reg().changes();
        if !self.sync_due && changes == self.synced_changes {
            return;
        }
        self.sync_due = false;
        self.synced_changes = changes;
        let reg = Rc::clone(&self.registry);
        let reg = reg.borrow();
        let dht = self.settings.dht && reg.settings().dht;
        self.discovery.set_running(dht, now);
        self.discovery.set_port(reg.settings().port);
        let mut manners = manners(reg.settings());
        manners.dht_port = dht.then_some(reg.settings().port);
        self.swarm.set_manners(manners, now);
        for t in reg.torrents().iter() {
            self.follow(t, now);
        }
        for id in self.swarm.running() {
            if let Some(hash) = self
                .swarm
                .info_hash(id)
                .filter(|_| reg.torrents().get(id).is_none())
            {
                self.swarm.stop(id);
                self.announcing.forget(id, now);
                self.discovery.untrack(&hash);
            }
        }
        drop(reg);
        self.drain_trackers(now);
        self.drain_discovery();
        if self.next_report.is_none() && !self.swarm.running().is_empty() {
            self.next_report = Some(now);
        }
    }

    /// Starts, moves on or stops torrent `t`'s session to match its phase.
    fn follow(&mut self, t: &Torrent, now: Instant) {
        let wanted = t.running && t.error.is_none();
        let checking = matches!(t.phase, Phase::WaitingCheck | Phase::Checking);
        let moving = matches!(t.phase, Phase::Downloading | Phase::Seeding);
        match self.swarm.stage(t.id) {
            None if wanted && (moving || t.phase == Phase::FetchingMetadata) => {
                if self.swarm.start(t, now).is_none() {
                    warn!("torrent {}: its geometry is beyond this engine", t.id);
                    return;
                }
                self.announcing.start(t, now);
                // BEP 27: a private torrent's peers come from its tracker.
                if !t.is_private() {
                    self.discovery.track(t.id, t.info_hash, now);
                }
            }
            // The metadata arrived: peers stay while the data is checked.
            Some(Stage::Fetching) if wanted && t.meta.is_some() => {
                self.swarm.set_geometry(t, now);
                if t.is_private() {
                    self.discovery.untrack(&t.info_hash);
                }
                self.announcing.set_size(t.id, t.total_size());
                if moving {
                    self.follow(t, now);
                }
            }
            Some(Stage::Checking) if wanted && moving => self.start_moving(t, now),
            // Peers a magnet link named since: to the swarm (known ones are
            // not dialled twice).
            Some(Stage::Fetching) if wanted && !moving && !checking => {
                self.swarm
                    .add_peers(t.id, &t.hints.peers, swarm::Source::Cache);
            }
            Some(Stage::Fetching | Stage::Checking) if wanted && (checking || !moving) => {}
            // A check asked for while moving data stops it until the check
            // ends; so does stopping, an error, or removal.
            Some(_) if !wanted || checking || t.phase == Phase::Paused => {
                self.swarm.stop(t.id);
                self.announcing.stop(t.id, now);
                self.discovery.untrack(&t.info_hash);
            }
            _ => {}
        }
    }

    /// The data of a torrent whose metadata arrived is checked: its pieces
    /// move.
    fn start_moving(&mut self, t: &Torrent, now: Instant) {
        if !self.swarm.set_pieces(t, now) {
            warn!("torrent {}: its geometry is beyond this engine", t.id);
        }
    }

    /// Torrent `id`'s info dictionary, fetched from peers and checked
    /// against its info hash: the registry gains its metainfo (made
    /// durable with the next commit) and the data already in its folder
    /// is checked.
    pub fn handle_metadata(&mut self, id: u64, info: &[u8]) {
        let result = self.reg_mut().set_metadata(id, info);
        match result {
            Ok(true) => {
                info!("torrent {id}: metadata complete ({} bytes)", info.len());
                self.sync_due = true;
            }
            Ok(false) => {}
            Err(e) => warn!("torrent {id}: metadata refused: {e}"),
        }
    }

    /// Applies what the swarm learned: verified pieces, data errors, peers
    /// come and gone.
    fn drain_swarm(&mut self, now: Instant) {
        while let Some(e) = self.swarm.poll_event() {
            match e {
                SwarmEvent::PieceVerified { torrent, piece } => {
                    if self.reg_mut().piece_verified(torrent, piece as usize) {
                        info!("torrent {torrent}: download complete, seeding");
                        self.announcing.completed(torrent, now);
                    }
                }
                SwarmEvent::StorageFailed {
                    torrent,
                    error,
                    kind,
                } => {
                    let error = TorrentError::from_kind(kind, None, error);
                    self.reg_mut().data_error(torrent, error);
                    self.sync_due = true;
                }
                SwarmEvent::PeerConnected { torrent, addr } => {
                    debug!("torrent {torrent}: peer {addr} connected");
                    // Hooks see the figures as of now.
                    self.report(now);
                    self.events
                        .push_back(CoreEvent::PeerConnected { torrent, addr });
                }
                SwarmEvent::MetadataFetched { torrent, info } => {
                    self.handle_metadata(torrent, &info);
                }
                SwarmEvent::DhtNode { addr } => self.discovery.add_node(addr, now),
                SwarmEvent::PeerDisconnected { torrent, addr } => {
                    debug!("torrent {torrent}: peer {addr} gone");
                    self.report(now);
                    self.events
                        .push_back(CoreEvent::PeerDisconnected { torrent, addr });
                }
            }
        }
    }

    /// What the fronts' scripts must hear of, in order.
    pub fn poll_event(&mut self) -> Option<CoreEvent> {
        self.events.pop_front()
    }

    /// A peer connected from `addr` over `transport`: its handle, or
    /// `None` to refuse it.
    pub fn accept_peer(
        &mut self,
        addr: SocketAddr,
        transport: Transport,
        now: Instant,
    ) -> Option<usize> {
        self.swarm.accept(addr, transport, now)
    }

    /// The next outgoing peer connection to open, and over what.
    pub fn poll_dial(&mut self, now: Instant) -> Option<Dial> {
        self.swarm.poll_dial(now)
    }

    /// An outgoing connection was established (`true`) or failed.
    pub fn handle_dialed(&mut self, key: usize, ok: bool, now: Instant) {
        self.swarm.dialed(key, ok, now);
    }

    /// Bytes the reactor may read from peers now (the download limit);
    /// when 0, it waits for [`Core::peer_read_wake`].
    pub fn peer_read_allowance(&self, now: Instant) -> usize {
        self.swarm.read_allowance(now)
    }

    /// When reading from peers may go on after the allowance ran out.
    pub fn peer_read_wake(&self, now: Instant) -> Option<Instant> {
        self.swarm.read_wake(now)
    }

    /// Bytes from peer `key`.
    pub fn handle_peer_data(&mut self, key: usize, bytes: &[u8], now: Instant) {
        self.swarm.receive(key, bytes, now);
        self.drain_swarm(now);
    }

    /// Bytes to send to peer `key`.
    pub fn peer_output(&mut self, key: usize) -> &[u8] {
        self.swarm.output(key)
    }

    /// `n` bytes of [`Core::peer_output`] were sent.
    pub fn handle_peer_sent(&mut self, key: usize, n: usize, now: Instant) {
        self.swarm.consume_output(key, n, now);
        self.drain_swarm(now);
    }

    /// Peer `key` hung up (or its socket failed).
    pub fn handle_peer_hang_up(&mut self, key: usize) {
        self.swarm.hang_up(key);
    }

    /// The next peer to close; then [`Core::handle_peer_closed`].
    pub fn poll_peer_close(&mut self) -> Option<usize> {
        self.swarm.poll_close()
    }

    /// Peer `key`'s socket is closed.
    pub fn handle_peer_closed(&mut self, key: usize) {
        self.swarm.closed(key);
    }

    /// The next request for the disk thread (a piece to hash and write, or
    /// a session's files to close); its answers go to
    /// [`Core::handle_disk_done`].
    pub fn poll_disk(&mut self) -> Option<DiskRequest> {
        // The swarm's first: a stopped torrent's last pieces and its
        // forget go before the deletion of its files.
        self.swarm
            .poll_disk()
            .or_else(|| self.deletions.pop_front())
    }

    /// What the disk thread finished: a piece checked (and maybe
    /// written), or files deleted.
    pub fn handle_disk_done(&mut self, done: DiskDone, now: Instant) {
        match done {
            DiskDone::Piece(piece) => {
                self.swarm.disk_done(piece, now);
                self.drain_swarm(now);
            }
            DiskDone::Deleted { ticket, result } => {
                self.events
                    .push_back(CoreEvent::DataDeleted { ticket, result });
            }
        }
    }

    /// A user asked torrent `id` to announce to its trackers now (the
    /// RPC's `torrent-reannounce`); stopped torrents do not.
    pub fn announce_now(&mut self, id: u64, now: Instant) {
        self.announcing.announce_now(id, now);
    }

    /// Deletes the files of `tree`, a removed torrent's, on the disk
    /// thread after whatever is queued there already (so after the
    /// pieces of the torrent's stopped session); the outcome comes back
    /// as [`CoreEvent::DataDeleted`] with `ticket`. Call it after the
    /// [`Core::sync`] that saw the removal.
    pub fn delete_data(&mut self, ticket: u64, tree: DataTree) {
        self.deletions
            .push_back(DiskRequest::Delete { ticket, tree });
    }

    /// Runs verification for at most the configured slice, in steps of
    /// [`CHECK_STEP`] bytes, stopping before a step that would likely
    /// overrun (the previous step's time is the estimate); the first step
    /// always runs. `clock` tells the time: the slice's bound is about
    /// time actually spent.
    pub fn run_check_slice(&mut self, clock: &mut dyn FnMut() -> Instant) {
        if !self.reg().has_work() {
            return;
        }
        let budget = self.settings.check_slice;
        let start = clock();
        let mut step = None;
        let mut events = Vec::new();
        while self.reg().has_work() {
            let t = clock();
            // At least one step per slice, so that work always advances.
            if step.is_some_and(|step| t.saturating_duration_since(start) + step > budget) {
                break;
            }
            events.extend(self.reg_mut().work(CHECK_STEP));
            step = Some(clock().saturating_duration_since(t));
        }
        self.longest_slice = self
            .longest_slice
            .max(clock().saturating_duration_since(start));
        if !events.is_empty() {
            // A check that ended may let a torrent move data.
            self.sync_due = true;
        }
        for ev in events {
            info!("{ev}");
        }
        if !self.reg().has_work() {
            info!(
                "verification queue empty; longest slice {:.2} ms",
                self.longest_slice.as_secs_f64() * 1000.0
            );
            self.longest_slice = Duration::ZERO;
        }
    }

    /// Whether the core needs a turn at once (work waits).
    pub fn is_busy(&self) -> bool {
        self.sync_due || self.reg().has_work()
    }

    /// When the core next needs [`Core::handle_timeout`] without any input.
    pub fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        if self.is_busy() {
            return Some(now);
        }
        [
            self.swarm.poll_timeout(now),
            self.next_report,
            self.next_progress_save,
            self.announcing.poll_timeout(),
            self.discovery.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Timers: the registry followed, trackers' and peers' deadlines,
    /// figures reported, progress saved.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.sync(now);
        self.handle_tracker_timers(now);
        if self.discovery.poll_timeout().is_some_and(|t| t <= now) {
            self.discovery.handle_timeout(now);
            self.drain_discovery();
        }
        self.swarm.handle_timeout(now);
        self.drain_swarm(now);
        if self.next_report.is_some_and(|t| now >= t) {
            self.report(now);
            let running = !self.swarm.running().is_empty();
            self.next_report = running.then(|| now + REPORT_EVERY);
        }
        self.save_progress(now);
    }

    /// Verified pieces and traffic totals are saved every
    /// [`SAVE_PROGRESS_EVERY`], not every turn: a commit syncs the disk.
    fn save_progress(&mut self, now: Instant) {
        let unsaved = self.reg().has_unsaved_progress();
        match self.next_progress_save {
            None if unsaved => self.next_progress_save = Some(now + SAVE_PROGRESS_EVERY),
            Some(t) if now >= t => {
                self.reg_mut().save_progress();
                self.next_progress_save = None;
            }
            _ => {}
        }
    }

    /// Shutting down: figures reported, every torrent stopped (trackers
    /// told), progress kept for the final commit.
    pub fn begin_shutdown(&mut self, now: Instant) {
        self.report(now);
        for id in self.swarm.running() {
            self.swarm.stop(id);
        }
        self.announcing.stop_all(now);
        self.discovery.save();
        self.reg_mut().save_progress();
    }

    /// Copies the swarm's figures where `get-status` reads them.
    fn report(&mut self, now: Instant) {
        report::report(&mut self.swarm, &mut self.registry.borrow_mut(), now);
    }

    /// Torrents by state and total rates, as last reported.
    pub fn tally(&self) -> Tally {
        report::tally(&self.reg())
    }

    /// The next job for the tracker worker (an HTTP(S) request or a name
    /// to resolve); the reactor brings back its [`JobResult`].
    pub fn poll_tracker_job(&mut self, now: Instant) -> Option<Job> {
        self.start_announces(now);
        self.announcing
            .poll_job()
            .or_else(|| self.discovery.poll_job())
    }

    /// What the tracker worker did with a job.
    pub fn handle_tracker_result(&mut self, r: JobResult, now: Instant) {
        if let Some(r) = self.discovery.handle_job_result(r, now) {
            self.announcing.handle_job_result(r, now);
            self.drain_trackers(now);
        }
        self.drain_discovery();
    }

    /// Peers the DHT found, to the swarm; its state where clients see it.
    fn drain_discovery(&mut self) {
        while let Some((torrent, peers)) = self.discovery.poll_peers() {
            debug!("torrent {torrent}: the DHT named {} peers", peers.len());
            self.swarm.add_peers(torrent, &peers, swarm::Source::Dht);
        }
        let report = self.discovery.report();
        self.reg_mut().set_dht(report);
    }

    /// The trackers' timers: UDP retransmissions and deadlines.
    pub fn handle_tracker_timers(&mut self, now: Instant) {
        self.announcing.handle_timeout(now);
        self.drain_trackers(now);
    }

    /// Announces still to send or in flight (shutdown waits for them).
    pub fn announcing(&self) -> bool {
        self.announcing.announcing()
    }

    /// Starts the announces and scrapes that are due, with fresh totals.
    fn start_announces(&mut self, now: Instant) {
        if !self.announcing.due(now) {
            return;
        }
        self.report(now);
        let reg = self.registry.borrow();
        let totals = |id: u64| match reg.torrents().get(id) {
            Some(t) => Totals {
                uploaded: t.transfer.uploaded,
                downloaded: t.transfer.downloaded,
                completed: t.completed,
            },
            None => Totals::default(),
        };
        let port = reg.settings().port;
        self.announcing
            .start_due(now, self.swarm.peer_id(), port, totals);
        drop(reg);
        self.drain_trackers(now);
    }

    /// Applies what the trackers said: peers to the swarm, status to the
    /// registry.
    fn drain_trackers(&mut self, now: Instant) {
        while let Some(e) = self.announcing.poll_event() {
            match e {
                TrackerEvent::Peers { torrent, peers } => {
                    debug!("torrent {torrent}: tracker named {} peers", peers.len());
                    self.swarm
                        .add_peers(torrent, &peers, swarm::Source::Tracker);
                }
                TrackerEvent::Status { torrent, status } => {
                    if let Some(x) = self.registry.borrow_mut().transfer_mut(torrent) {
                        x.tracker = Some(status.position);
                        x.scrape = status.scrape;
                        x.tracker_message = status.message;
                    }
                }
            }
        }
        self.announcing
            .show_stopping(now, &mut self.registry.borrow_mut());
    }

    /// A datagram from `from` on the peer port: to whichever protocol it
    /// is for.
    pub fn handle_datagram(&mut self, from: SocketAddr, data: &[u8], now: Instant) {
        match classify(data, self.announcing.expects(from, data)) {
            Datagram::Tracker => {
                self.datagrams.tracker += 1;
                self.announcing.handle_datagram(from, data, now);
                self.drain_trackers(now);
            }
            Datagram::Dht if self.discovery.handle_datagram(from, data, now) => {
                self.datagrams.dht += 1;
                self.drain_discovery();
            }
            kind => {
                // Its protocol is off: nobody takes it.
                trace!("{kind:?} datagram from {from} dropped: not served");
                self.datagrams.dropped += 1;
            }
        }
    }

    /// The next datagram to send from the peer port.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        self.start_announces(now);
        if let Some(t) = self.announcing.poll_transmit(now) {
            return Some(t);
        }
        let mut payload = Vec::new();
        let destination = self.discovery.poll_transmit(&mut payload)?;
        Some(Transmit {
            destination,
            payload,
        })
    }

    /// Datagrams received so far, by kind.
    pub fn datagram_stats(&self) -> DatagramStats {
        self.datagrams
    }

    /// Announced addresses for torrent `id` (tests).
    pub fn add_peers(&mut self, id: u64, addrs: &[SocketAddr], source: swarm::Source) {
        self.swarm.add_peers(id, addrs, source);
    }

    /// The swarm (tests, status).
    pub fn swarm(&self) -> &Swarm {
        &self.swarm
    }
}

/// What the swarm must follow of the settings: limits in KiB/s become
/// bytes/s (negative: none).
fn manners(s: &State) -> swarm::Manners {
    let limit = |kib: i64| u64::try_from(kib).ok().map(|k| k.saturating_mul(1024));
    swarm::Manners {
        download_limit: limit(s.downlimit),
        upload_limit: limit(s.uplimit),
        pex: s.pex,
        encryption: match s.encryption {
            Encryption::Required => Policy::Required,
            Encryption::Preferred => Policy::Preferred,
            Encryption::Plaintext | Encryption::Tolerated => Policy::Tolerated,
        },
        listen_port: s.port,
        dht_port: None,
    }
}

#[cfg(test)]
mod tests;
