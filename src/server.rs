//! The server core: every client's session, the command service and the
//! registry, and the order of a loop turn, without any I/O.
//!
//! The reactor moves bytes and readiness; this decides everything else.
//! Time comes in as arguments, never from a clock (quinn-proto's
//! `Connection` is the model): bytes in with [`Server::receive`], output
//! out with [`Server::output`], decisions out with [`Server::poll_close`]
//! and [`Server::flushed`], and [`Server::poll_timeout`] says when to call
//! [`Server::handle_timeout`].
//!
//! One loop turn, as the reactor drives it:
//! 1. [`Server::connect`] for new clients, [`Server::receive`] for what
//!    ready clients sent (messages run as they complete);
//! 2. [`Server::end_turn`]: commit every change of the turn in one durable
//!    write, release the replies that waited for it, run the hooks;
//! 3. the reactor writes each client's output and reports
//!    [`Server::flushed`];
//! 4. [`Server::run_slice`]: one bounded slice of verification (after the
//!    flush, so no reply waits behind it);
//! 5. [`Server::handle_timeout`], then the reactor closes what
//!    [`Server::poll_close`] names: the one safe point for closing.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use slab::Slab;

use std::net::SocketAddr;

use crate::config::Config;
use crate::engine::disk::{DiskRequest, PieceDone};
use crate::peer::mse::Policy;
use crate::registry::{Encryption, Phase, Settings, TorrentError};
use crate::service::Service;
use crate::session::Session;
use crate::swarm::{self, Swarm, SwarmEvent};
use crate::tracker::trackers::{self, Progress, TrackerEvent, Trackers};
use crate::tracker::udp::Transmit;
use crate::tracker::worker::{Job, JobResult};

/// A client's handle: stable while it is connected, reused after.
pub type ClientId = usize;

/// Bytes hashed per step of a verification slice: small enough that the
/// slice ends close to its time budget (about 0.2 ms of SHA-1 here).
const CHECK_STEP: u64 = 256 << 10;

/// How often the engine's figures (rates, peers) are copied for
/// `get-status`.
const REPORT_EVERY: Duration = Duration::from_secs(1);

/// How often pieces verified by the engine are saved (a restart checks the
/// data again anyway; this only shortens that check's surprises).
const SAVE_PROGRESS_EVERY: Duration = Duration::from_secs(30);

/// Longest a stopped torrent shows `stopping` while its `stopped` announce
/// is in flight.
const STOPPING_BOUND: Duration = Duration::from_secs(5);

/// How long to wait before retrying a failed commit unasked (a client's
/// change still triggers a commit at once).
const COMMIT_RETRY: Duration = Duration::from_secs(1);

struct Client {
    session: Session,
    serial: u64,
    connected_at: Instant,
    last_active: Instant,
    /// No more input; close once output is written.
    closing: bool,
}

/// What the reactor should do with a client after writing its output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flushed {
    /// Output is still waiting: keep write interest.
    pub pending_output: bool,
    /// The client may be read from (not closing, not over its output).
    pub wants_input: bool,
    /// Complete input waits in the session: drive it again next turn.
    pub more_input: bool,
}

/// The sans-IO server: sessions, service, the turn's order.
pub struct Server {
    svc: Service,
    config: Config,
    clients: Slab<Client>,
    /// Clients whose replies wait for this turn's commit.
    held: Vec<ClientId>,
    /// Clients to close at the end of the turn.
    to_close: Vec<ClientId>,
    next_serial: u64,
    next_sweep: Option<Instant>,
    /// After a failed commit, when to try again unasked.
    retry_commit: Option<Instant>,
    /// Longest verification slice since the queue last ran dry (logged
    /// then, so the bound on pauses is visible in the log).
    longest_slice: Duration,
    /// Every running torrent's peers.
    swarm: Swarm,
    /// Torrents may have started or stopped: compare with the swarm.
    sync_due: bool,
    /// The registry's change counter when the swarm was last synced.
    synced_changes: u64,
    next_report: Option<Instant>,
    next_progress_save: Option<Instant>,
    /// Every running torrent's trackers.
    trackers: Trackers,
    /// Bytes in each running torrent, for an announce's `left`.
    sizes: HashMap<u64, u64>,
    /// Torrents showing `stopping`, until when at most.
    stopping: HashMap<u64, Instant>,
    /// The peer port last bound (or tried).
    bound_port: Option<u16>,
    /// Clients whose replies wait for the peer port's bind, and the
    /// commit's outcome they also carry.
    awaiting_bind: Vec<ClientId>,
    bind_commit: Result<(), String>,
}

impl Server {
    /// A server running `svc` with the limits of `config`.
    pub fn new(svc: Service, config: Config) -> Server {
        let mut rng = fastrand::Rng::new();
        let peer_id = swarm::new_peer_id(&mut rng);
        let limits = swarm::Limits {
            max_peers: usize::try_from(config.max_peers).unwrap_or(usize::MAX),
            max_peers_per_torrent: usize::try_from(config.max_peers_per_torrent)
                .unwrap_or(usize::MAX),
            max_half_open: usize::try_from(config.max_half_open).unwrap_or(usize::MAX),
            ..swarm::Limits::default()
        };
        let swarm = Swarm::new(peer_id, limits, rng);
        Server::with_swarm(svc, config, swarm)
    }

    /// A server with the swarm given (tests fix its randomness).
    pub fn with_swarm(svc: Service, config: Config, swarm: Swarm) -> Server {
        let settings = trackers::Settings {
            timeout: Duration::from_secs(config.tracker_timeout),
            ..trackers::Settings::default()
        };
        let trackers = Trackers::new(settings, fastrand::Rng::new());
        Server {
            svc,
            config,
            clients: Slab::new(),
            held: Vec::new(),
            to_close: Vec::new(),
            next_serial: 1,
            next_sweep: None,
            retry_commit: None,
            longest_slice: Duration::ZERO,
            swarm,
            sync_due: true,
            synced_changes: 0,
            next_report: None,
            next_progress_save: None,
            trackers,
            sizes: HashMap::new(),
            stopping: HashMap::new(),
            bound_port: None,
            awaiting_bind: Vec::new(),
            bind_commit: Ok(()),
        }
    }

    /// The command service (state, scripts).
    pub fn service(&self) -> &Service {
        &self.svc
    }

    /// The command service, to change (scripts reload, tests).
    pub fn service_mut(&mut self) -> &mut Service {
        &mut self.svc
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Clients connected.
    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// A `quit` was received: the reactor flushes and stops.
    pub fn quit_requested(&self) -> bool {
        self.svc.control.quit
    }

    /// A new client. Its output already holds the version message.
    pub fn connect(&mut self, now: Instant) -> ClientId {
        let serial = self.next_serial;
        self.next_serial += 1;
        debug!("client {serial}: connected");
        let id = self.clients.insert(Client {
            session: Session::new(serial, self.config.max_message()),
            serial,
            connected_at: now,
            last_active: now,
            closing: false,
        });
        self.svc.client_event(serial, true);
        if let (None, Some(period)) = (self.next_sweep, self.sweep_period()) {
            self.next_sweep = Some(now + period);
        }
        id
    }

    /// Bytes from client `id` (none: go on with input already buffered).
    /// Messages run as they complete; a protocol error closes the client
    /// once its earlier replies are written.
    pub fn receive(&mut self, id: ClientId, bytes: &[u8], now: Instant) {
        let Some(c) = self.clients.get_mut(id) else {
            return;
        };
        if c.closing {
            return;
        }
        if !bytes.is_empty() {
            c.last_active = now;
        }
        if let Err(e) = c.session.receive(bytes, &mut self.svc) {
            warn!("client {}: protocol error: {e}; closing", c.serial);
            c.closing = true;
        }
        if c.session.is_held() && !self.held.contains(&id) {
            self.held.push(id);
        }
    }

    /// The client hung up (or its socket failed): no more input. What it
    /// sent before is still run, and its replies written if it reads.
    pub fn hang_up(&mut self, id: ClientId) {
        if let Some(c) = self.clients.get_mut(id) {
            debug!("client {}: hung up", c.serial);
            c.closing = true;
        }
    }

    /// Whether the reactor should read more from client `id` now.
    pub fn wants_input(&self, id: ClientId) -> bool {
        self.clients
            .get(id)
            .is_some_and(|c| !c.closing && !c.session.is_backpressured())
            && !self.quit_requested()
    }

    /// The end of the turn's input: commit what changed (once for the
    /// whole turn), release the replies that waited for it, run the hooks
    /// of what is now durable (what they change is committed next turn).
    pub fn end_turn(&mut self, now: Instant) {
        let held = std::mem::take(&mut self.held);
        let retry_due = self.retry_commit.is_none_or(|t| now >= t);
        if (self.svc.registry().needs_commit() && retry_due) || !held.is_empty() {
            let result = self.svc.registry_mut().commit().map_err(|e| e.to_string());
            self.retry_commit = result.is_err().then(|| now + COMMIT_RETRY);
            if self.poll_bind().is_some() {
                // The peer port moved: its replies wait for the bind too.
                self.awaiting_bind.extend(held);
                self.bind_commit = result;
            } else {
                self.release(held, &result, None);
            }
        }
        self.svc.run_hooks();
        self.sync_swarm(now);
    }

    fn release(&mut self, held: Vec<ClientId>, commit: &Result<(), String>, bind: Option<&str>) {
        for id in held {
            if let Some(c) = self.clients.get_mut(id) {
                c.session.release(commit, bind);
            }
        }
    }

    /// The peer port to listen on, when it is not the one bound (or
    /// tried) last: the reactor binds it and calls
    /// [`Server::bind_result`].
    pub fn poll_bind(&self) -> Option<u16> {
        let port = self.svc.registry().settings().port;
        (self.bound_port != Some(port)).then_some(port)
    }

    /// The outcome of binding `port`: replies that moved the port are
    /// sent now, `failed` with the reason if it could not be bound (the
    /// setting stays; the next change of it tries again).
    pub fn bind_result(&mut self, port: u16, result: Result<(), String>) {
        self.bound_port = Some(port);
        let held = std::mem::take(&mut self.awaiting_bind);
        let commit = std::mem::replace(&mut self.bind_commit, Ok(()));
        let bind = result
            .err()
            .map(|e| format!("cannot listen for peers on port {port}: {e}"));
        self.release(held, &commit, bind.as_deref());
    }

    /// Starts and stops the swarm's sessions to match the registry: a
    /// torrent moves data while it runs, its data checked, with no error.
    fn sync_swarm(&mut self, now: Instant) {
        let changes = self.svc.registry().changes();
        if !self.sync_due && changes == self.synced_changes {
            return;
        }
        self.sync_due = false;
        self.synced_changes = changes;
        let reg = self.svc.registry();
        self.swarm.set_manners(manners(reg.settings()), now);
        for t in reg.torrents().iter() {
            let run = t.running
                && t.error.is_none()
                && matches!(t.phase, Phase::Downloading | Phase::Seeding);
            if run && !self.swarm.is_running(t.id) {
                if self.swarm.start(t, now).is_none() {
                    warn!("torrent {}: its geometry is beyond this engine", t.id);
                    continue;
                }
                if self.config.announce {
                    let tiers: Vec<Vec<String>> = t
                        .meta
                        .tiers
                        .iter()
                        .map(|tier| tier.iter().map(|tr| tr.url.clone()).collect())
                        .collect();
                    self.sizes.insert(t.id, t.meta.total_size());
                    self.trackers.start(t.id, t.meta.info_hash, &tiers, now);
                }
            }
            if !run && self.swarm.is_running(t.id) {
                self.swarm.stop(t.id);
                self.trackers.stop(t.id, now);
                if self.trackers.busy(t.id) {
                    self.stopping.insert(t.id, now + STOPPING_BOUND);
                }
            }
        }
        for id in self.swarm.running() {
            if reg.torrents().get(id).is_none() {
                self.swarm.stop(id);
                self.trackers.stop(id, now);
                self.sizes.remove(&id);
            }
        }
        drop(reg);
        self.drain_trackers();
        self.show_stopping(now);
        if self.next_report.is_none() && !self.swarm.running().is_empty() {
            self.next_report = Some(now);
        }
    }

    /// A stopped torrent says `stopping` while its `stopped` announce is
    /// in flight, for [`STOPPING_BOUND`] at most.
    fn show_stopping(&mut self, now: Instant) {
        let trackers = &self.trackers;
        let mut reg = self.svc.registry_mut();
        self.stopping.retain(|id, until| {
            let busy = now < *until && trackers.busy(*id);
            if let Some(x) = reg.transfer_mut(*id) {
                x.stopping = busy;
            }
            busy
        });
    }

    /// Applies what the swarm learned: verified pieces, data errors.
    fn drain_swarm(&mut self, now: Instant) {
        while let Some(e) = self.swarm.poll_event() {
            let mut reg = self.svc.registry_mut();
            match e {
                SwarmEvent::PieceVerified { torrent, piece } => {
                    if reg.piece_verified(torrent, piece as usize) {
                        info!("torrent {torrent}: download complete, seeding");
                        self.trackers.completed(torrent, now);
                    }
                }
                SwarmEvent::StorageFailed {
                    torrent,
                    error,
                    kind,
                } => {
                    reg.data_error(torrent, TorrentError::from_kind(kind, None, error));
                    self.sync_due = true;
                }
                SwarmEvent::PeerConnected { torrent, addr } => {
                    debug!("torrent {torrent}: peer {addr} connected");
                    drop(reg);
                    // Hooks see the figures as of now.
                    self.report(now);
                    self.svc.peer_event(torrent, &addr.to_string(), true);
                }
                SwarmEvent::PeerDisconnected { torrent, addr } => {
                    debug!("torrent {torrent}: peer {addr} gone");
                    drop(reg);
                    self.report(now);
                    self.svc.peer_event(torrent, &addr.to_string(), false);
                }
            }
        }
    }

    /// Copies the swarm's figures where `get-status` reads them.
    fn report(&mut self, now: Instant) {
        let mut reg = self.svc.registry_mut();
        for id in self.swarm.running() {
            let (down, up) = self.swarm.take_transferred(id);
            let (Some(st), Some(x)) = (self.swarm.stats(id, now), reg.transfer_mut(id)) else {
                continue;
            };
            x.downloaded += down;
            x.uploaded += up;
            x.download_rate = st.download_rate as u64;
            x.upload_rate = st.upload_rate as u64;
            x.swarm_rate = st.swarm_rate as u64;
            x.peers = st.peers;
            x.peers_downloading = st.peers_sending;
            x.peers_uploading = st.peers_receiving;
            let [incoming, tracker, cache, pex] = st.peers_from;
            x.peers_from = [cache, incoming, pex, tracker];
            x.peer_list = self.swarm.peer_list(id, now);
            x.eta = if st.left > 0 && st.download_rate >= 1.0 {
                (st.left as f64 / st.download_rate).ceil() as i64
            } else {
                -1
            };
            if down + up > 0 {
                reg.note_progress();
            }
        }
        // Stopped torrents show no traffic.
        let idle: Vec<u64> = reg
            .torrents()
            .iter()
            .filter(|t| {
                !self.swarm.is_running(t.id)
                    && t.transfer.peers + t.transfer.download_rate as u32 > 0
            })
            .map(|t| t.id)
            .collect();
        for id in idle {
            if let Some(x) = reg.transfer_mut(id) {
                x.download_rate = 0;
                x.upload_rate = 0;
                x.swarm_rate = 0;
                x.peers = 0;
                x.peers_downloading = 0;
                x.peers_uploading = 0;
                x.peers_from = [0; 4];
                x.peer_list.clear();
                x.eta = -1;
            }
        }
    }

    /// A peer connected from `addr`: its handle, or `None` to refuse it.
    pub fn peer_accept(&mut self, addr: SocketAddr, now: Instant) -> Option<usize> {
        self.swarm.accept(addr, now)
    }

    /// The next outgoing peer connection to open.
    pub fn poll_dial(&mut self, now: Instant) -> Option<(usize, SocketAddr)> {
        self.swarm.poll_dial(now)
    }

    /// An outgoing connection was established (`true`) or failed.
    pub fn peer_dialed(&mut self, key: usize, ok: bool, now: Instant) {
        self.swarm.dialed(key, ok, now);
    }

    /// Bytes the reactor may read from peers now (the download limit);
    /// when 0, it waits for [`Server::peer_read_wake`].
    pub fn peer_read_allowance(&self, now: Instant) -> usize {
        self.swarm.read_allowance(now)
    }

    /// When reading from peers may go on after the allowance ran out.
    pub fn peer_read_wake(&self, now: Instant) -> Option<Instant> {
        self.swarm.read_wake(now)
    }

    /// Bytes from peer `key`.
    pub fn peer_receive(&mut self, key: usize, bytes: &[u8], now: Instant) {
        self.swarm.receive(key, bytes, now);
        self.drain_swarm(now);
    }

    /// Bytes to send to peer `key`.
    pub fn peer_output(&mut self, key: usize) -> &[u8] {
        self.swarm.output(key)
    }

    /// `n` bytes of [`Server::peer_output`] were sent.
    pub fn peer_consume(&mut self, key: usize, n: usize, now: Instant) {
        self.swarm.consume_output(key, n, now);
        self.drain_swarm(now);
    }

    /// The next request for the disk thread (a piece to hash and write, or
    /// a session's files to close); its answers go to
    /// [`Server::disk_done`].
    pub fn poll_disk(&mut self) -> Option<DiskRequest> {
        self.swarm.poll_disk()
    }

    /// The disk thread checked (and maybe wrote) a piece.
    pub fn disk_done(&mut self, done: PieceDone, now: Instant) {
        self.swarm.disk_done(done, now);
        self.drain_swarm(now);
    }

    /// Peer `key` hung up.
    pub fn peer_hang_up(&mut self, key: usize) {
        self.swarm.hang_up(key);
    }

    /// The next peer to close; then [`Server::peer_closed`].
    pub fn poll_peer_close(&mut self) -> Option<usize> {
        self.swarm.poll_close()
    }

    /// Peer `key`'s socket is closed.
    pub fn peer_closed(&mut self, key: usize) {
        self.swarm.closed(key);
    }

    /// The next job for the tracker worker (an HTTP(S) request or a
    /// name to resolve); the reactor brings back its [`JobResult`].
    pub fn poll_tracker_job(&mut self, now: Instant) -> Option<Job> {
        self.start_announces(now);
        self.trackers.poll_job()
    }

    /// The next datagram for a UDP tracker.
    pub fn poll_tracker_transmit(&mut self, now: Instant) -> Option<Transmit> {
        self.start_announces(now);
        self.trackers.poll_transmit(now)
    }

    /// Starts the announces and scrapes that are due, with fresh totals.
    fn start_announces(&mut self, now: Instant) {
        if !self.trackers.due(now) {
            return;
        }
        // Fresh totals for `uploaded`, `downloaded` and `left`.
        self.report(now);
        let reg = self.svc.registry();
        let sizes = &self.sizes;
        let progress = |id: u64| match reg.torrents().get(id) {
            Some(t) => Progress {
                uploaded: t.transfer.uploaded,
                downloaded: t.transfer.downloaded,
                left: sizes.get(&id).map_or(0, |s| s.saturating_sub(t.completed)),
            },
            None => Progress::default(),
        };
        let port = reg.settings().port;
        self.trackers
            .start_due(now, self.swarm.peer_id(), port, progress);
        drop(reg);
        self.drain_trackers();
    }

    /// What the tracker worker did with a job.
    pub fn tracker_result(&mut self, r: JobResult, now: Instant) {
        self.trackers.handle_job_result(r, now);
        self.drain_trackers();
        self.show_stopping(now);
    }

    /// A datagram from a UDP tracker (or anyone) on the tracker socket.
    pub fn tracker_datagram(&mut self, from: SocketAddr, data: &[u8], now: Instant) {
        self.trackers.handle_datagram(from, data, now);
        self.drain_trackers();
        self.show_stopping(now);
    }

    /// Applies what the trackers said: peers to the swarm, status to the
    /// registry.
    fn drain_trackers(&mut self) {
        while let Some(e) = self.trackers.poll_event() {
            match e {
                TrackerEvent::Peers { torrent, peers } => {
                    debug!("torrent {torrent}: tracker named {} peers", peers.len());
                    self.swarm
                        .add_peers(torrent, &peers, swarm::Source::Tracker);
                }
                TrackerEvent::Status { torrent, status } => {
                    if let Some(x) = self.svc.registry_mut().transfer_mut(torrent) {
                        x.tracker = Some(status.position);
                        x.scrape = status.scrape;
                        x.tracker_message = status.message;
                    }
                }
            }
        }
    }

    /// The trackers' timers: UDP retransmissions and deadlines.
    pub fn tracker_timers(&mut self, now: Instant) {
        self.trackers.handle_timeout(now);
        self.drain_trackers();
        self.show_stopping(now);
    }

    /// Announces still to send or in flight (shutdown waits for them).
    pub fn announcing(&self) -> bool {
        self.trackers.announcing()
    }

    /// Announced addresses for torrent `id` (from a tracker).
    pub fn add_peers(&mut self, id: u64, addrs: &[SocketAddr], source: swarm::Source) {
        self.swarm.add_peers(id, addrs, source);
    }

    /// The swarm (tests, status).
    pub fn swarm(&self) -> &Swarm {
        &self.swarm
    }

    /// Output waiting for client `id`.
    pub fn output(&self, id: ClientId) -> &[u8] {
        self.clients.get(id).map_or(&[], |c| c.session.output())
    }

    /// `n` bytes of [`Server::output`] were written.
    pub fn consume_output(&mut self, id: ClientId, n: usize) {
        if let Some(c) = self.clients.get_mut(id) {
            c.session.consume_output(n);
        }
    }

    /// The reactor wrote what it could for `id`: decides whether the
    /// client is done (queued for [`Server::poll_close`]) or goes on.
    pub fn flushed(&mut self, id: ClientId) -> Flushed {
        let done = Flushed {
            pending_output: false,
            wants_input: false,
            more_input: false,
        };
        let Some(c) = self.clients.get(id) else {
            return done;
        };
        let pending_output = !c.session.output().is_empty();
        if c.closing && !pending_output && !c.session.is_held() {
            self.to_close.push(id);
            return done;
        }
        // Input stops being read past the soft limit; this catches a
        // client that asked for more than the hard limit and reads none.
        if c.session.queued_output() > self.config.max_output() {
            warn!(
                "client {}: {} bytes of replies unread, over --max-output {}: disconnecting",
                c.serial,
                c.session.queued_output(),
                self.config.max_output()
            );
            self.to_close.push(id);
            return done;
        }
        // After `quit` nothing more is read: the reactor ends the loop.
        let wants_input = !c.closing && !c.session.is_backpressured() && !self.quit_requested();
        Flushed {
            pending_output,
            wants_input,
            more_input: wants_input && c.session.has_pending_input(),
        }
    }

    /// Runs verification for at most the configured slice, in steps of
    /// [`CHECK_STEP`] bytes, stopping before a step that would likely
    /// overrun (the previous step's time is the estimate); the first step
    /// always runs. `clock` tells
    /// the time: the slice's bound is about time actually spent.
    pub fn run_slice(&mut self, clock: &mut dyn FnMut() -> Instant) {
        if !self.svc.registry().has_work() {
            return;
        }
        let budget = self.config.check_slice();
        let start = clock();
        let mut step = None;
        let mut events = Vec::new();
        while self.svc.registry().has_work() {
            let t = clock();
            // At least one step per slice, so that work always advances.
            if step.is_some_and(|step| t.saturating_duration_since(start) + step > budget) {
                break;
            }
            events.extend(self.svc.registry_mut().work(CHECK_STEP));
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
        if !self.svc.registry().has_work() {
            info!(
                "verification queue empty; longest slice {:.2} ms",
                self.longest_slice.as_secs_f64() * 1000.0
            );
            self.longest_slice = Duration::ZERO;
        }
    }

    /// When the server next needs a turn without any input: `now` when
    /// work is waiting, `None` when only input can bring work.
    pub fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        let reg = self.svc.registry();
        if self.sync_due || reg.has_work() || (reg.needs_commit() && self.retry_commit.is_none()) {
            return Some(now);
        }
        [
            self.next_sweep,
            self.retry_commit,
            self.swarm.poll_timeout(now),
            self.next_report,
            self.next_progress_save,
            self.trackers.poll_timeout(),
            self.stopping.values().min().copied(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Timers: closes clients idle for longer than the idle timeout, and
    /// those that have not sent their version within the handshake
    /// timeout (their output is abandoned).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.sync_swarm(now);
        self.tracker_timers(now);
        self.swarm.handle_timeout(now);
        self.drain_swarm(now);
        if self.next_report.is_some_and(|t| now >= t) {
            self.report(now);
            let running = !self.swarm.running().is_empty();
            self.next_report = running.then(|| now + REPORT_EVERY);
        }
        self.save_progress(now);
        if self.next_sweep.is_none_or(|t| now < t) {
            return;
        }
        let Some(period) = self.sweep_period() else {
            self.next_sweep = None;
            return;
        };
        let idle = self.config.idle_timeout();
        let handshake = self.config.handshake_timeout();
        for (id, c) in self.clients.iter() {
            if let Some(t) = handshake.filter(|t| {
                c.session.version().is_none() && now.duration_since(c.connected_at) >= *t
            }) {
                info!(
                    "client {}: no version after {} ms, closing",
                    c.serial,
                    t.as_millis()
                );
                self.to_close.push(id);
            } else if let Some(t) = idle.filter(|t| now.duration_since(c.last_active) >= *t) {
                info!("client {}: idle for {}s, closing", c.serial, t.as_secs());
                self.to_close.push(id);
            }
        }
        self.next_sweep = (!self.clients.is_empty()).then(|| now + period);
    }

    /// Verified pieces and traffic totals are saved every
    /// [`SAVE_PROGRESS_EVERY`], not every turn: a commit syncs the disk.
    fn save_progress(&mut self, now: Instant) {
        let unsaved = self.svc.registry().has_unsaved_progress();
        match self.next_progress_save {
            None if unsaved => self.next_progress_save = Some(now + SAVE_PROGRESS_EVERY),
            Some(t) if now >= t => {
                self.svc.registry_mut().save_progress();
                self.next_progress_save = None;
            }
            _ => {}
        }
    }

    /// The next client to close (its output, if any, is abandoned). The
    /// reactor closes its socket and then calls [`Server::disconnect`].
    pub fn poll_close(&mut self) -> Option<ClientId> {
        self.to_close.pop()
    }

    /// Client `id` is gone: forget it.
    pub fn disconnect(&mut self, id: ClientId) {
        if let Some(c) = self.clients.try_remove(id) {
            debug!("client {}: closed", c.serial);
            self.svc.client_event(c.serial, false);
        }
        self.held.retain(|h| *h != id);
        self.to_close.retain(|h| *h != id);
    }

    /// The clients connected now.
    pub fn clients(&self) -> Vec<ClientId> {
        self.clients.iter().map(|(id, _)| id).collect()
    }

    /// Shutting down: no more input from anyone; every change is saved and
    /// every held reply released, so what clients are owed can be written.
    pub fn begin_shutdown(&mut self, now: Instant) {
        for (_, c) in self.clients.iter_mut() {
            c.closing = true;
        }
        self.report(now);
        for id in self.swarm.running() {
            self.swarm.stop(id);
        }
        self.trackers.stop_all(now);
        self.svc.registry_mut().save_progress();
        let result = self.svc.registry_mut().commit().map_err(|e| e.to_string());
        if let Err(e) = &result {
            log::error!("final save failed: {e}");
        }
        let mut held = std::mem::take(&mut self.held);
        held.append(&mut self.awaiting_bind);
        self.release(held, &result, None);
    }

    /// One line on what the daemon is doing, for a service manager's
    /// STATUS: clients, torrents by state, total rates (as last reported).
    pub fn status_line(&self) -> String {
        let reg = self.svc.registry();
        let mut f = crate::notify::Figures {
            clients: self.clients.len(),
            ..Default::default()
        };
        for t in reg.torrents().iter() {
            f.torrents += 1;
            f.download_rate = f.download_rate.saturating_add(t.transfer.download_rate);
            f.upload_rate = f.upload_rate.saturating_add(t.transfer.upload_rate);
            let count = match t.phase {
                _ if t.error.is_some() => &mut f.failed,
                Phase::Paused => &mut f.stopped,
                Phase::WaitingCheck | Phase::Checking => &mut f.checking,
                Phase::Downloading => &mut f.downloading,
                Phase::Seeding => &mut f.seeding,
            };
            *count += 1;
        }
        f.line()
    }

    /// Reloads the scripts (on SIGHUP), logging the outcome.
    pub fn reload_scripts(&mut self) {
        match self.svc.reload_scripts() {
            Ok(files) => info!(
                "SIGHUP: reloaded {} script(s): {}",
                files.len(),
                files.join(", ")
            ),
            Err(e) => warn!("SIGHUP: reload failed, previous scripts kept: {e}"),
        }
    }

    /// How often to look for clients past a timeout, if any is set.
    fn sweep_period(&self) -> Option<Duration> {
        [self.config.idle_timeout(), self.config.handshake_timeout()]
            .into_iter()
            .flatten()
            .min()
            .map(|t| (t / 4).clamp(Duration::from_millis(10), Duration::from_secs(1)))
    }
}

/// What the swarm must follow of the settings: limits in KiB/s become
/// bytes/s (negative: none).
fn manners(s: &Settings) -> swarm::Manners {
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{split_frame, Value, PROTOCOL_MAX};
    use crate::message::{frame, Version};
    use crate::registry::{Registry, Settings};
    use crate::scripts::Limits;

    fn server(dir: &std::path::Path) -> Server {
        let reg = Registry::open(dir, Settings::defaults("/downloads".into())).unwrap();
        let config = Config {
            idle_timeout: 60,
            handshake_timeout: 10,
            ..Config::default()
        };
        Server::new(Service::new(reg), config)
    }

    /// The end of a turn as the reactor runs it, its binds succeeding.
    fn end(s: &mut Server, now: Instant) {
        s.end_turn(now);
        if let Some(port) = s.poll_bind() {
            s.bind_result(port, Ok(()));
        }
    }

    fn hello() -> Vec<u8> {
        Version {
            min: 1,
            max: 2,
            label: "test".into(),
        }
        .frame()
    }

    /// Takes the client's output as frames (what a socket would get).
    fn take(s: &mut Server, id: ClientId) -> Vec<String> {
        let out = s.output(id).to_vec();
        s.consume_output(id, out.len());
        let mut frames = Vec::new();
        let mut rest = &out[..];
        while let Ok(Some(r)) = split_frame(rest, PROTOCOL_MAX) {
            frames.push(String::from_utf8_lossy(&rest[..r.end]).into_owned());
            rest = &rest[r.end..];
        }
        assert!(rest.is_empty(), "partial frame");
        frames
    }

    fn connect(s: &mut Server, now: Instant) -> ClientId {
        let id = s.connect(now);
        s.receive(id, &hello(), now);
        take(s, id); // the greeting
        id
    }

    #[test]
    fn after_quit_no_more_input_is_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = server(dir.path());
        let t0 = Instant::now();
        let a = connect(&mut s, t0);
        let mut bytes = frame("quit", &Value::empty(), None);
        bytes.extend(frame("noop", &Value::empty(), None));
        s.receive(a, &bytes, t0);
        end(&mut s, t0);
        assert!(s.quit_requested());
        let f = s.flushed(a);
        assert!(!f.wants_input && !f.more_input, "{f:?}");
        assert!(!s.wants_input(a));
    }

    #[test]
    fn a_turn_holds_changes_until_the_commit_and_read_only_replies_never() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = server(dir.path());
        let t0 = Instant::now();
        let a = connect(&mut s, t0);
        let b = connect(&mut s, t0);

        // Turn 1: A changes the port and asks for it; B only reads.
        let mut bytes = frame("port", &Value::Int(7), Some(1));
        bytes.extend(frame("get-port", &Value::empty(), Some(2)));
        s.receive(a, &bytes, t0);
        s.receive(b, &frame("get-port", &Value::empty(), Some(3)), t0);
        assert!(
            take(&mut s, a).is_empty(),
            "A's replies wait for the commit"
        );
        assert_eq!(
            take(&mut s, b),
            ["0000000El4:porti7ei3ee"],
            "B's read-only reply is not held by A's change"
        );
        end(&mut s, t0);
        assert_eq!(
            take(&mut s, a),
            ["00000012l9:succeeded0:i1ee", "0000000El4:porti7ei2ee"]
        );
        assert_eq!(
            Registry::open(dir.path(), Settings::defaults("/d".into()))
                .map(|r| r.settings().port)
                .ok(),
            Some(7),
            "durable"
        );

        // Turn 2: the disk refuses; A's change is answered failed and
        // undone, and a retry is scheduled a second later.
        let t1 = t0 + Duration::from_millis(10);
        std::fs::create_dir(dir.path().join(".settings.benc.tmp")).unwrap();
        s.receive(a, &frame("port", &Value::Int(8), Some(4)), t1);
        end(&mut s, t1);
        let out = take(&mut s, a);
        assert_eq!(out.len(), 1);
        assert!(
            out[0].contains("l6:failed") && out[0].contains("cannot save state"),
            "{out:?}"
        );
        assert_eq!(s.service().registry().settings().port, 7, "undone");
        assert!(!s.service().registry().needs_commit());
        // Noop turns do not commit again, and the server is idle.
        end(&mut s, t1);
        assert!(s.poll_timeout(t1).is_some_and(|t| t > t1));

        // Turn 3: the disk is back; the same change goes through.
        std::fs::remove_dir(dir.path().join(".settings.benc.tmp")).unwrap();
        s.receive(a, &frame("port", &Value::Int(8), Some(5)), t1);
        end(&mut s, t1);
        assert_eq!(take(&mut s, a), ["00000012l9:succeeded0:i5ee"]);
        assert_eq!(s.service().registry().settings().port, 8);
        assert_eq!(
            s.flushed(a),
            Flushed {
                pending_output: false,
                wants_input: true,
                more_input: false
            }
        );
    }

    #[test]
    fn a_read_only_script_reply_is_not_held_by_another_clients_change() {
        let dir = tempfile::tempdir().unwrap();
        let scripts = tempfile::tempdir().unwrap();
        std::fs::write(
            scripts.path().join("peek.rhai"),
            r#"on_message("peek", |v| reply("peek", settings().port));"#,
        )
        .unwrap();
        let mut s = server(dir.path());
        s.service_mut()
            .load_scripts(scripts.path(), Limits::default())
            .unwrap();
        let t0 = Instant::now();
        let a = connect(&mut s, t0);
        let b = connect(&mut s, t0);
        s.receive(a, &frame("port", &Value::Int(7), Some(1)), t0);
        s.receive(b, &frame("peek", &Value::empty(), Some(2)), t0);
        assert_eq!(take(&mut s, b), ["0000000El4:peeki7ei2ee"]);
        end(&mut s, t0);
        assert_eq!(take(&mut s, a), ["00000012l9:succeeded0:i1ee"]);
    }

    #[test]
    fn scripts_see_a_torrents_peers() {
        let dir = tempfile::tempdir().unwrap();
        let scripts = tempfile::tempdir().unwrap();
        std::fs::write(
            scripts.path().join("p.rhai"),
            r#"on_message("p", |id| { let p = peers(id); [p.len(), p[0].address, p[0].progress] });"#,
        )
        .unwrap();
        let mut s = server(dir.path());
        s.service_mut()
            .load_scripts(scripts.path(), Limits::default())
            .unwrap();
        let torrent = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/fixtures/hello.torrent"
        ))
        .unwrap();
        let id = s
            .service_mut()
            .registry_mut()
            .add(torrent, None, Some(false))
            .unwrap();
        s.service_mut()
            .registry_mut()
            .transfer_mut(id)
            .unwrap()
            .peer_list = vec![crate::registry::PeerInfo {
            address: "127.0.0.1:6881".into(),
            progress: 0.25,
            ..Default::default()
        }];
        let t0 = Instant::now();
        let a = connect(&mut s, t0);
        s.receive(a, &frame("p", &Value::Int(id as i64), Some(1)), t0);
        assert_eq!(
            take(&mut s, a),
            ["00000023l1:pli1e14:127.0.0.1:6881i250eei1ee"]
        );
    }

    #[test]
    fn clients_are_closed_by_the_timers_and_after_their_last_reply() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = server(dir.path());
        let t0 = Instant::now();
        let quiet = s.connect(t0); // never sends its version
        let talker = connect(&mut s, t0);
        end(&mut s, t0);
        let deadline = s.poll_timeout(t0).unwrap();
        assert!(deadline > t0);
        s.handle_timeout(t0 + Duration::from_secs(11));
        assert_eq!(s.poll_close(), Some(quiet), "no version within 10 s");
        assert_eq!(s.poll_close(), None);
        s.disconnect(quiet);

        // A client that hangs up after a request is answered, then closed.
        s.receive(talker, &frame("get-port", &Value::empty(), Some(1)), t0);
        s.hang_up(talker);
        end(&mut s, t0);
        assert!(!s.wants_input(talker));
        let f = s.flushed(talker);
        assert!(f.pending_output);
        assert_eq!(s.poll_close(), None, "not before its reply is written");
        assert_eq!(take(&mut s, talker), ["00000011l4:porti9090ei1ee"]);
        s.flushed(talker);
        assert_eq!(s.poll_close(), Some(talker));
        s.disconnect(talker);
        assert_eq!(s.client_count(), 0);
    }

    #[test]
    fn verification_slices_follow_the_clock_given() {
        let dir = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        std::fs::write(data.path().join("hello.txt"), b"hello").unwrap();
        let mut s = server(dir.path());
        let torrent = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/fixtures/hello.torrent"
        ))
        .unwrap();
        s.service_mut()
            .registry_mut()
            .add(torrent, Some(data.path().to_path_buf()), Some(true))
            .unwrap();
        let t0 = Instant::now();
        assert_eq!(s.poll_timeout(t0), Some(t0), "work waits");
        // A clock that jumps a whole slice per reading: one step only.
        let mut t = t0;
        let mut clock = || {
            t += Duration::from_millis(6);
            t
        };
        while s.service().registry().has_work() {
            s.run_slice(&mut clock);
        }
        assert!(!s.service().registry().has_work());
        // Checked and complete: it seeds, so the swarm runs it.
        end(&mut s, t0);
        assert!(s.swarm().is_running(1));
    }
}
