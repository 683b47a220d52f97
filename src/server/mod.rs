//! The server: every front's clients, the command service they share, the
//! torrent core, the commit rule and the order of a loop turn, without any
//! I/O.
//!
//! The reactor moves bytes and readiness; this decides everything else.
//! Time comes in as arguments, never from a clock (quinn-proto's
//! `Connection` is the model): bytes in with [`Server::receive`], output
//! out with [`Server::output`], decisions out with [`Server::poll_close`]
//! and [`Server::flushed`], and [`Server::poll_timeout`] says when to call
//! [`Server::handle_timeout`]. Peers, the disk thread, trackers and
//! datagrams go to the torrent core ([`Server::core_mut`]) directly.
//!
//! One loop turn, as the reactor drives it:
//! 1. [`Server::connect`] for new clients, [`Server::receive`] for what
//!    ready clients sent, whatever their front (messages run as they
//!    complete);
//! 2. [`Server::end_turn`]: commit every change of the turn, from every
//!    front, in one durable write, release the replies that waited for
//!    it, run the hooks, let the core follow the changes;
//! 3. the reactor writes each client's output and reports
//!    [`Server::flushed`];
//! 4. a bounded slice of verification (after the flush, so no reply
//!    waits behind it), then [`Server::handle_timeout`];
//! 5. the peers' part (the core), then [`Server::run_core_hooks`];
//! 6. the reactor closes what [`Server::poll_close`] names: the one safe
//!    point for closing.

mod errands;

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{debug, info, warn};
use slab::Slab;

use crate::config::Config;
use crate::core::{self, Core, CoreEvent};
use crate::front::rpc::RpcFront;
use crate::front::{Conn, Effect, Env, Facts, FrontKind};
use crate::service::Service;
use crate::tracker::worker::{Job, JobOutput, JobResult};
use errands::{Errands, Owner};

/// A client's handle: stable while it is connected, reused after.
pub type ClientId = usize;

/// How long to wait before retrying a failed commit unasked (a client's
/// change still triggers a commit at once).
const COMMIT_RETRY: Duration = Duration::from_secs(1);

struct Client {
    conn: Conn,
    kind: FrontKind,
    serial: u64,
    connected_at: Instant,
    last_active: Instant,
    /// No more input; close once output is written.
    closing: bool,
    /// Listed in `Server::touched`.
    touched: bool,
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

/// The commit rule, for every front: the changes of one turn are made
/// durable together, then the replies that waited for them are released
/// (after the peer port's bind, when a change moved it).
#[derive(Default)]
struct Commit {
    /// Clients whose replies wait for this turn's commit.
    held: Vec<ClientId>,
    /// After a failed commit, when to try again unasked.
    retry: Option<Instant>,
    /// The peer port last bound (or tried).
    bound_port: Option<u16>,
    /// Whether that bind succeeded.
    bound: bool,
    /// Clients whose replies wait for the peer port's bind, and the
    /// commit's outcome they also carry.
    awaiting_bind: Vec<ClientId>,
    bind_commit: Option<Result<(), String>>,
}

/// The sans-IO server: fronts' clients, service, core, the turn's order.
pub struct Server {
    svc: Service,
    config: Config,
    core: Core,
    clients: Slab<Client>,
    commit: Commit,
    /// Clients to close at the end of the turn.
    to_close: Vec<ClientId>,
    next_serial: u64,
    next_sweep: Option<Instant>,
    /// The RPC front's daemon-wide state, when it is served.
    rpc: Option<RpcFront>,
    /// Work the fronts asked for, in flight.
    errands: Errands,
    /// Clients given output outside their own turn (a fetch or deletion
    /// done, a held reply released late), for the reactor to write.
    touched: Vec<ClientId>,
    /// The wall clock at the start of the turn.
    wall: SystemTime,
    started: Instant,
}

/// What the fronts may report of the daemon now.
fn facts(config: &Config, commit: &Commit, started: Instant) -> Facts {
    Facts {
        started,
        peer_port_bound: commit.bound,
        peer_limit_global: config.max_peers,
        peer_limit_per_torrent: config.max_peers_per_torrent,
    }
}

/// The core's settings from the daemon's configuration.
fn core_settings(config: &Config) -> core::Settings {
    let limit = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    core::Settings {
        announce: config.announce,
        tracker_timeout: Duration::from_secs(config.tracker_timeout),
        check_slice: config.check_slice(),
        limits: crate::swarm::Limits {
            max_peers: limit(config.max_peers),
            max_peers_per_torrent: limit(config.max_peers_per_torrent),
            max_half_open: limit(config.max_half_open),
            ..crate::swarm::Limits::default()
        },
        dht: config.dht(),
        dht_routers: config
            .dht_bootstrap
            .iter()
            .map(|h| (h.host.clone(), h.port))
            .collect(),
        state_dir: config.has_paths().then(|| config.state_dir().to_path_buf()),
    }
}

impl Server {
    /// A server running `svc` with the limits of `config`.
    pub fn new(svc: Service, config: Config) -> Server {
        let core = Core::new(svc.shared_registry(), core_settings(&config));
        Server::with_core(svc, config, core)
    }

    /// A server whose core's swarm is given (tests fix its randomness).
    pub fn with_swarm(svc: Service, config: Config, swarm: crate::swarm::Swarm) -> Server {
        let core = Core::with_swarm(svc.shared_registry(), core_settings(&config), swarm);
        Server::with_core(svc, config, core)
    }

    fn with_core(svc: Service, config: Config, core: Core) -> Server {
        Server {
            svc,
            config,
            core,
            clients: Slab::new(),
            commit: Commit::default(),
            to_close: Vec::new(),
            next_serial: 1,
            next_sweep: None,
            rpc: None,
            errands: Errands::default(),
            touched: Vec::new(),
            wall: UNIX_EPOCH,
            started: Instant::now(),
        }
    }

    /// Serves the JSON RPC front with `front`'s guards and files.
    pub fn set_rpc(&mut self, front: RpcFront) {
        self.rpc = Some(front);
    }

    /// The RPC front, if served.
    pub fn rpc(&self) -> Option<&RpcFront> {
        self.rpc.as_ref()
    }

    /// The wall clock now, once per turn before any input: for dates
    /// (the registry's, HTTP's).
    pub fn set_wall_clock(&mut self, wall: SystemTime) {
        self.wall = wall;
        let secs = wall.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        self.svc
            .registry_mut()
            .set_wall_clock(i64::try_from(secs).unwrap_or(i64::MAX));
    }

    /// The command service (state, scripts).
    pub fn service(&self) -> &Service {
        &self.svc
    }

    /// The command service, to change (scripts reload, tests).
    pub fn service_mut(&mut self) -> &mut Service {
        &mut self.svc
    }

    /// The torrent core.
    pub fn core(&self) -> &Core {
        &self.core
    }

    /// The torrent core, for the reactor's peers, disk, trackers and
    /// datagrams.
    pub fn core_mut(&mut self) -> &mut Core {
        &mut self.core
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

    /// A new client of front `kind`, from `peer` when its socket has an
    /// address. Its output already holds whatever the protocol sends
    /// first (the IPC's version message). `None`: the front is not served.
    pub fn connect(
        &mut self,
        kind: FrontKind,
        peer: Option<SocketAddr>,
        now: Instant,
    ) -> Option<ClientId> {
        let serial = self.next_serial;
        let max = self.config.max_message();
        let conn = Conn::open(kind, serial, max, peer, self.rpc.as_ref(), now)?;
        self.next_serial += 1;
        debug!("client {serial}: connected ({})", kind.name());
        let id = self.clients.insert(Client {
            conn,
            kind,
            serial,
            connected_at: now,
            last_active: now,
            closing: false,
            touched: false,
        });
        self.svc.client_event(serial, true);
        if let (None, Some(period)) = (self.next_sweep, self.sweep_period()) {
            self.next_sweep = Some(now + period);
        }
        Some(id)
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
        let facts = facts(&self.config, &self.commit, self.started);
        let mut env = Env {
            svc: &mut self.svc,
            rpc: self.rpc.as_mut(),
            facts: &facts,
            now,
            wall: self.wall,
        };
        if let Err(e) = c.conn.front_mut().receive(bytes, &mut env) {
            warn!("client {}: protocol error: {e}; closing", c.serial);
            c.closing = true;
        }
        self.after_conn(id, now);
    }

    /// After a connection ran: its replies held for the commit are
    /// noted, and the work it asked for is taken.
    fn after_conn(&mut self, id: ClientId, now: Instant) {
        let Some(c) = self.clients.get_mut(id) else {
            return;
        };
        let serial = c.serial;
        if c.conn.front().is_held() && !self.commit.held.contains(&id) {
            self.commit.held.push(id);
        }
        while let Some(effect) = c.conn.front_mut().poll_effect() {
            match effect {
                Effect::Fetch {
                    ticket,
                    url,
                    cookies,
                    max_bytes,
                } => {
                    let owner = Owner {
                        client: id,
                        serial,
                        ticket,
                    };
                    self.errands.fetch(owner, url, cookies, max_bytes);
                }
                Effect::DeleteData { ticket, tree } => {
                    let owner = Owner {
                        client: id,
                        serial,
                        ticket,
                    };
                    self.errands.delete(owner, tree);
                }
                Effect::Reannounce(ids) => {
                    for torrent in ids {
                        self.core.announce_now(torrent, now);
                    }
                }
            }
        }
    }

    /// Notes that client `id` may have output the reactor has not been
    /// told of.
    fn touch(&mut self, id: ClientId) {
        if let Some(c) = self.clients.get_mut(id) {
            if !c.touched {
                c.touched = true;
                self.touched.push(id);
            }
        }
    }

    /// Clients given output outside their own reads (write them).
    pub fn take_touched(&mut self) -> Vec<ClientId> {
        let ids = std::mem::take(&mut self.touched);
        for &id in &ids {
            if let Some(c) = self.clients.get_mut(id) {
                c.touched = false;
            }
        }
        ids
    }

    /// The client `owner` names, if it is still the one connected.
    fn owner_conn(&mut self, owner: Owner) -> Option<&mut Client> {
        self.clients
            .get_mut(owner.client)
            .filter(|c| c.serial == owner.serial)
    }

    /// The next job for the tracker worker: the core's (announces,
    /// names to resolve), then the fronts' (`.torrent` downloads).
    pub fn poll_tracker_job(&mut self, now: Instant) -> Option<Job> {
        self.core
            .poll_tracker_job(now)
            .or_else(|| self.errands.poll_job())
    }

    /// What the tracker worker did with a job, to whoever asked.
    pub fn handle_tracker_result(&mut self, r: JobResult, now: Instant) {
        // Ours carry errands::JOB_BIT, which the core's never do.
        let Some(owner) = self.errands.fetched(r.id) else {
            self.core.handle_tracker_result(r, now);
            return;
        };
        let result = match r.result {
            Ok(JobOutput::Body(body)) => Ok(body),
            Ok(JobOutput::Addrs(_)) => Err("the worker answered a download with addresses".into()),
            Err(e) => Err(e.to_string()),
        };
        let facts = facts(&self.config, &self.commit, self.started);
        let wall = self.wall;
        let Some(c) = self
            .clients
            .get_mut(owner.client)
            .filter(|c| c.serial == owner.serial)
        else {
            return;
        };
        let mut env = Env {
            svc: &mut self.svc,
            rpc: self.rpc.as_mut(),
            facts: &facts,
            now,
            wall,
        };
        c.conn.front_mut().fetched(owner.ticket, result, &mut env);
        self.after_conn(owner.client, now);
        self.touch(owner.client);
    }

    /// The client hung up (or its socket failed): no more input. What it
    /// sent before is still run, and its replies written if it reads.
    pub fn hang_up(&mut self, id: ClientId) {
        if let Some(c) = self.clients.get_mut(id) {
            debug!("client {}: hung up", c.serial);
            c.closing = true;
            c.conn.front_mut().end_of_input();
        }
    }

    /// Whether the reactor should read more from client `id` now.
    pub fn wants_input(&self, id: ClientId) -> bool {
        self.clients
            .get(id)
            .is_some_and(|c| !c.closing && !c.conn.front().is_backpressured())
            && !self.quit_requested()
    }

    /// The end of the turn's input: commit what changed (once for the
    /// whole turn, whichever fronts changed it), release the replies that
    /// waited for it, run the hooks of what is now durable (what they
    /// change is committed next turn), and let the core follow.
    pub fn end_turn(&mut self, now: Instant) {
        let held = std::mem::take(&mut self.commit.held);
        let retry_due = self.commit.retry.is_none_or(|t| now >= t);
        if (self.svc.registry().needs_commit() && retry_due) || !held.is_empty() {
            let result = self.svc.registry_mut().commit().map_err(|e| e.to_string());
            self.commit.retry = result.is_err().then(|| now + COMMIT_RETRY);
            if self.poll_bind().is_some() {
                // The peer port moved: its replies wait for the bind too.
                self.commit.awaiting_bind.extend(held);
                self.commit.bind_commit = Some(result);
            } else {
                self.release(held, &result, None, now);
            }
        }
        self.svc.run_hooks();
        self.core.sync(now);
        // The sync stopped the removed torrents: their files may go,
        // after their queued writes.
        for (ticket, tree) in self.errands.take_due() {
            self.core.delete_data(ticket, tree);
        }
    }

    fn release(
        &mut self,
        held: Vec<ClientId>,
        commit: &Result<(), String>,
        bind: Option<&str>,
        now: Instant,
    ) {
        for id in held {
            if let Some(c) = self.clients.get_mut(id) {
                c.conn.front_mut().release(commit, bind);
                self.after_conn(id, now);
                self.touch(id);
            }
        }
    }

    /// The peer port to listen on, when it is not the one bound (or
    /// tried) last: the reactor binds it and calls
    /// [`Server::bind_result`].
    pub fn poll_bind(&self) -> Option<u16> {
        let port = self.svc.registry().settings().port;
        (self.commit.bound_port != Some(port)).then_some(port)
    }

    /// The outcome of binding `port`: replies that moved the port are
    /// sent now, `failed` with the reason if it could not be bound (the
    /// setting stays; the next change of it tries again).
    pub fn bind_result(&mut self, port: u16, result: Result<(), String>, now: Instant) {
        self.commit.bound_port = Some(port);
        self.commit.bound = result.is_ok();
        let held = std::mem::take(&mut self.commit.awaiting_bind);
        let commit = self.commit.bind_commit.take().unwrap_or(Ok(()));
        let bind = result
            .err()
            .map(|e| format!("cannot listen for peers on port {port}: {e}"));
        self.release(held, &commit, bind.as_deref(), now);
    }

    /// Runs the hooks of what the core reported (peers come and gone):
    /// after the turn's peer part, so no script runs inside it.
    pub fn run_core_hooks(&mut self, now: Instant) {
        while let Some(e) = self.core.poll_event() {
            match e {
                CoreEvent::PeerConnected { torrent, addr } => {
                    self.svc.peer_event(torrent, &addr.to_string(), true)
                }
                CoreEvent::PeerDisconnected { torrent, addr } => {
                    self.svc.peer_event(torrent, &addr.to_string(), false)
                }
                CoreEvent::DataDeleted { ticket, result } => {
                    let Some(owner) = self.errands.deleted(ticket) else {
                        continue;
                    };
                    if let Some(c) = self.owner_conn(owner) {
                        c.conn.front_mut().deleted(owner.ticket, result);
                        self.after_conn(owner.client, now);
                        self.touch(owner.client);
                    }
                }
            }
        }
    }

    /// Output waiting for client `id`.
    pub fn output(&self, id: ClientId) -> &[u8] {
        self.clients
            .get(id)
            .map_or(&[], |c| c.conn.front().output())
    }

    /// `n` bytes of [`Server::output`] were written.
    pub fn consume_output(&mut self, id: ClientId, n: usize) {
        if let Some(c) = self.clients.get_mut(id) {
            c.conn.front_mut().consume_output(n);
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
        let conn = c.conn.front();
        let pending_output = !conn.output().is_empty();
        let finished = c.closing || conn.close_after_output();
        if finished && !pending_output && !conn.is_held() {
            self.to_close.push(id);
            return done;
        }
        // Input stops being read past the soft limit; this catches a
        // client that asked for more than the hard limit and reads none.
        if conn.queued_output() > self.config.max_output() {
            warn!(
                "client {}: {} bytes of replies unread, over --max-output {}: disconnecting",
                c.serial,
                conn.queued_output(),
                self.config.max_output()
            );
            self.to_close.push(id);
            return done;
        }
        // After `quit` nothing more is read: the reactor ends the loop.
        let wants_input = !finished && !conn.is_backpressured() && !self.quit_requested();
        Flushed {
            pending_output,
            wants_input,
            more_input: wants_input && conn.has_pending_input(),
        }
    }

    /// When the server next needs a turn without any input: `now` when
    /// work is waiting, `None` when only input can bring work.
    pub fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        let uncommitted = self.svc.registry().needs_commit() && self.commit.retry.is_none();
        if uncommitted {
            return Some(now);
        }
        let fronts = self
            .clients
            .iter()
            .filter_map(|(_, c)| c.conn.front().poll_timeout());
        [
            self.next_sweep,
            self.commit.retry,
            self.core.poll_timeout(now),
        ]
        .into_iter()
        .flatten()
        .chain(fronts)
        .min()
    }

    /// Timers: the core's, the fronts' own, and the sweep that closes
    /// clients idle for longer than the idle timeout and those that have
    /// not said who they are within the handshake timeout (their output
    /// is abandoned).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.core.handle_timeout(now);
        for (id, c) in self.clients.iter_mut() {
            let conn = c.conn.front_mut();
            if conn.poll_timeout().is_some_and(|t| now >= t) && conn.handle_timeout(now) {
                self.to_close.push(id);
            }
        }
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
            if let Some(t) = handshake
                .filter(|t| !c.conn.front().greeted() && now.duration_since(c.connected_at) >= *t)
            {
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
        self.commit.held.retain(|h| *h != id);
        self.commit.awaiting_bind.retain(|h| *h != id);
        self.to_close.retain(|h| *h != id);
    }

    /// The clients connected now.
    pub fn clients(&self) -> Vec<ClientId> {
        self.clients.iter().map(|(id, _)| id).collect()
    }

    /// The front client `id` came through.
    pub fn kind(&self, id: ClientId) -> Option<FrontKind> {
        self.clients.get(id).map(|c| c.kind)
    }

    /// Shutting down: no more input from anyone; every change is saved and
    /// every held reply released, so what clients are owed can be written.
    pub fn begin_shutdown(&mut self, now: Instant) {
        for (_, c) in self.clients.iter_mut() {
            c.closing = true;
        }
        self.core.begin_shutdown(now);
        let result = self.svc.registry_mut().commit().map_err(|e| e.to_string());
        if let Err(e) = &result {
            log::error!("final save failed: {e}");
        }
        let mut held = std::mem::take(&mut self.commit.held);
        held.append(&mut self.commit.awaiting_bind);
        self.release(held, &result, None, now);
    }

    /// One line on what the daemon is doing, for a service manager's
    /// STATUS: clients, torrents by state, total rates (as last reported).
    pub fn status_line(&self) -> String {
        let t = self.core.tally();
        crate::notify::Figures {
            clients: self.clients.len(),
            torrents: t.torrents,
            downloading: t.downloading,
            seeding: t.seeding,
            checking: t.checking,
            stopped: t.stopped,
            failed: t.failed,
            download_rate: t.download_rate,
            upload_rate: t.upload_rate,
        }
        .line()
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
            s.bind_result(port, Ok(()), now);
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
        let id = s.connect(FrontKind::Ipc, None, now).unwrap();
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
        let quiet = s.connect(FrontKind::Ipc, None, t0).unwrap(); // never sends its version
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
            s.core_mut().run_check_slice(&mut clock);
        }
        assert!(!s.service().registry().has_work());
        // Checked and complete: it seeds, so the swarm runs it.
        end(&mut s, t0);
        assert!(s.core().swarm().is_running(1));
    }

    /// A server serving the RPC front too, at its defaults.
    fn with_rpc(dir: &std::path::Path) -> Server {
        use crate::front::rpc::RpcOptions;
        let mut s = server(dir);
        let options = RpcOptions {
            guard: crate::http::GuardConfig::default(),
            web_dir: None,
            web_looked_in: "nowhere".into(),
            limits: crate::http::Limits::default(),
            port: 9091,
        };
        let front = RpcFront::new(options, &mut fastrand::Rng::with_seed(7), Instant::now());
        s.set_rpc(front);
        s
    }

    /// An RPC call's bytes.
    fn post(session_id: &str, body: &str) -> Vec<u8> {
        format!(
            "POST /transmission/rpc HTTP/1.1\r\nHost: localhost:9091\r\n\
             X-Transmission-Session-Id: {session_id}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    /// Takes an HTTP client's output as text.
    fn take_text(s: &mut Server, id: ClientId) -> String {
        let out = s.output(id).to_vec();
        s.consume_output(id, out.len());
        String::from_utf8(out).unwrap()
    }

    /// An RPC client past the CSRF guard: its session id.
    fn rpc_client(s: &mut Server, now: Instant) -> (ClientId, String) {
        let id = s.connect(FrontKind::Rpc, None, now).unwrap();
        s.receive(id, &post("", "{}"), now);
        let text = take_text(s, id);
        assert!(text.starts_with("HTTP/1.1 409"), "{text}");
        let sid = text
            .lines()
            .find_map(|l| l.strip_prefix("X-Transmission-Session-Id: "))
            .unwrap()
            .trim()
            .to_string();
        (id, sid)
    }

    #[test]
    fn two_fronts_of_different_kinds_are_served_in_one_turn_with_one_commit() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = with_rpc(dir.path());
        let t0 = Instant::now();
        let ipc = connect(&mut s, t0);
        let (rpc, sid) = rpc_client(&mut s, t0);
        end(&mut s, t0);
        let before = s.service().registry().commits();
        s.receive(ipc, &frame("downlimit", &Value::Int(70), Some(1)), t0);
        let set = r#"{"method":"session-set","arguments":{"speed-limit-up":80,"speed-limit-up-enabled":true},"tag":5}"#;
        s.receive(rpc, &post(&sid, set), t0);
        assert!(take(&mut s, ipc).is_empty(), "held for the commit");
        assert!(s.output(rpc).is_empty(), "held for the commit");
        end(&mut s, t0);
        assert_eq!(s.service().registry().commits(), before + 1, "one commit");
        assert_eq!(take(&mut s, ipc), ["00000012l9:succeeded0:i1ee"]);
        let text = take_text(&mut s, rpc);
        assert!(
            text.starts_with("HTTP/1.1 200")
                && text.ends_with(r#"{"arguments":{},"result":"success","tag":5}"#),
            "{text}"
        );
        let reg = Registry::open(dir.path(), Settings::defaults("/d".into())).unwrap();
        assert_eq!((reg.settings().downlimit, reg.settings().uplimit), (70, 80));
        // Each front sees the other's change in the same state.
        s.receive(ipc, &frame("get-uplimit", &Value::empty(), Some(2)), t0);
        assert_eq!(take(&mut s, ipc), ["00000012l7:uplimiti80ei2ee"]);
        let get = r#"{"method":"session-get","arguments":{"fields":["speed-limit-down"]}}"#;
        s.receive(rpc, &post(&sid, get), t0);
        assert!(take_text(&mut s, rpc).contains(r#""speed-limit-down":70"#));
    }

    #[test]
    fn a_failed_commit_fails_the_rpc_reply_and_undoes_the_change() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = with_rpc(dir.path());
        let t0 = Instant::now();
        let (rpc, sid) = rpc_client(&mut s, t0);
        std::fs::create_dir(dir.path().join(".settings.benc.tmp")).unwrap();
        let set = r#"{"method":"session-set","arguments":{"peer-port":7000},"tag":9}"#;
        s.receive(rpc, &post(&sid, set), t0);
        end(&mut s, t0);
        let text = take_text(&mut s, rpc);
        assert!(
            text.contains(r#""result":"cannot save state"#) && text.contains(r#""tag":9"#),
            "{text}"
        );
        assert_ne!(s.service().registry().settings().port, 7000, "undone");
    }

    #[test]
    fn removing_with_local_data_answers_once_the_disk_thread_deleted_it() {
        let dir = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        std::fs::write(data.path().join("hello.txt"), b"hello").unwrap();
        let mut s = with_rpc(dir.path());
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
        end(&mut s, t0);
        let (rpc, sid) = rpc_client(&mut s, t0);
        let remove = r#"{"method":"torrent-remove","arguments":{"ids":[1],"delete-local-data":true},"tag":3}"#;
        s.receive(rpc, &post(&sid, remove), t0);
        end(&mut s, t0);
        assert!(s.output(rpc).is_empty(), "waits for the deletion");
        assert!(data.path().join("hello.txt").exists());
        // The disk thread's part, done here in order.
        let mut writer = crate::engine::disk::PieceWriter::new();
        while let Some(req) = s.core_mut().poll_disk() {
            if let Some(done) = writer.handle(req) {
                s.core_mut().handle_disk_done(done, t0);
            }
        }
        s.run_core_hooks(t0);
        assert_eq!(s.take_touched(), [rpc]);
        assert!(!data.path().join("hello.txt").exists(), "deleted");
        let text = take_text(&mut s, rpc);
        assert!(
            text.ends_with(r#"{"arguments":{},"result":"success","tag":3}"#),
            "{text}"
        );
    }
}
