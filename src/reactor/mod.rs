//! The event loop: one mio `Poll` for everything. It only moves bytes
//! between sockets and the sans-IO [`Server`] (and its torrent core),
//! handles readiness, signals and the timer, and applies the server's
//! decisions (close, write interest). The order of a loop turn is the
//! server's (see [`crate::server`]).
//!
//! Its parts, each owning its sockets: `clients.rs`, the fronts'
//! listeners and client streams; `peers.rs`, peer streams over TCP;
//! `port.rs`, the peer port (its TCP listener and UDP sockets);
//! `tokens.rs`, whose each mio token is. The disk thread and the tracker
//! worker are the reactor's own.

mod clients;
mod peers;
mod port;
mod tokens;

use std::io;
use std::time::{Duration, Instant, SystemTime};

use log::{debug, info, warn};
use mio::{Events, Interest, Poll};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;

use crate::engine::disk::{self, DiskWorker};
use crate::notify::Notifier;
use crate::server::{ClientId, Server};
use crate::tracker::worker::TrackerWorker;
use clients::Clients;
pub use clients::{Admit, FrontListener, ListenSocket};
use peers::Peers;
use port::PeerPort;
use tokens::{Owner, PEER_LISTENER, SIGNALS, UDP4, UDP6, WAKER};

/// How long quitting waits for `stopped` announces.
const STOP_ANNOUNCE_WAIT: Duration = Duration::from_secs(2);

/// A loop turn this long is logged (debug) with where its time went.
const LONG_TURN: Duration = Duration::from_millis(5);

/// Size of each part's read buffer (a datagram fits whole).
const SCRATCH: usize = 64 << 10;

/// How long shutdown waits for clients to take their last replies.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(5);

/// Why the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// A client sent `quit`.
    Quit,
    /// SIGINT or SIGTERM.
    Signal(i32),
}

/// The event loop and the sockets it owns.
pub struct Reactor {
    poll: Poll,
    signals: Signals,
    server: Server,
    clients: Clients,
    peers: Peers,
    port: PeerPort,
    /// The tracker worker: HTTP off the loop, results back through the
    /// waker.
    trackers: TrackerWorker,
    /// The thread that hashes and writes downloaded pieces.
    disk: DiskWorker,
    /// The service manager's notify socket, once ready was said.
    notifier: Option<Notifier>,
}

impl Reactor {
    /// A reactor serving the fronts' `listeners` for `server`, at most
    /// `max_clients` clients at once.
    pub fn new(
        listeners: Vec<FrontListener>,
        server: Server,
        max_clients: usize,
    ) -> io::Result<Reactor> {
        let poll = Poll::new()?;
        let clients = Clients::new(listeners, &poll, max_clients, SCRATCH)?;
        let waker = std::sync::Arc::new(mio::Waker::new(poll.registry(), WAKER)?);
        let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        let port = PeerPort::new(server.config().peer_bind, SCRATCH);
        Ok(Reactor {
            poll,
            signals,
            server,
            clients,
            peers: Peers::new(SCRATCH),
            port,
            disk: {
                let waker = std::sync::Arc::clone(&waker);
                DiskWorker::spawn(move || waker.wake())?
            },
            trackers: TrackerWorker::spawn(waker),
            notifier: None,
        })
    }

    /// The server (for inspection after the loop ends).
    pub fn server(&self) -> &Server {
        &self.server
    }

    /// Tells the service manager (through `notifier`) that the daemon is
    /// ready, and keeps it informed from the loop: STATUS, watchdog pings,
    /// STOPPING when shutdown begins.
    pub fn notify_ready(&mut self, mut notifier: Notifier) {
        notifier.ready(Instant::now(), self.server.status_line());
        self.notifier = Some(notifier);
    }

    /// Sends what the notifier owes the service manager by `now`.
    fn notify(&mut self, now: Instant) {
        if let Some(n) = self.notifier.as_mut() {
            let server = &self.server;
            n.handle_timeout(now, || server.status_line());
        }
    }

    /// Runs until `quit` or a terminating signal, then flushes queued
    /// replies, saves state and closes every client.
    pub fn run(&mut self) -> io::Result<Exit> {
        let mut events = Events::with_capacity(1024);
        let exit = loop {
            if let Some(exit) = self.step(&mut events)? {
                break exit;
            }
        };
        self.shutdown();
        Ok(exit)
    }

    /// One loop turn: wait for readiness (or a timer), then serve.
    fn step(&mut self, events: &mut Events) -> io::Result<Option<Exit>> {
        let now = Instant::now();
        if let Err(e) = self.poll.poll(events, self.timeout(now)) {
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(None);
            }
            return Err(e);
        }
        let now = Instant::now();
        self.server.set_wall_clock(SystemTime::now());
        let mut exit = None;
        for event in events.iter() {
            match tokens::owner(event.token()) {
                Owner::Reserved(SIGNALS) => exit = exit.or(self.signals()),
                Owner::Reserved(PEER_LISTENER) => {
                    if let Some(l) = self.port.listener() {
                        self.peers.accept(l, &self.poll, &mut self.server, now);
                    }
                }
                Owner::Reserved(UDP4 | UDP6) => self.port.set_readable(),
                // Tracker and disk results are taken every turn.
                Owner::Reserved(_) => {}
                Owner::Listener(i) => self.clients.accept(i, &self.poll, &mut self.server, now),
                Owner::Peer(key) => self.peers.event(key, event, &mut self.server, now),
                Owner::Client(id) => self.clients.event(id, event),
            }
        }
        self.clients
            .handle_timeout(&self.poll, &mut self.server, now);
        self.turn(now);
        self.notify(now);
        if self.server.quit_requested() {
            exit = exit.or(Some(Exit::Quit));
        }
        Ok(exit)
    }

    fn timeout(&self, now: Instant) -> Option<Duration> {
        if self.clients.busy() || self.peers.busy() || self.port.busy() {
            return Some(Duration::ZERO);
        }
        let core = self.server.core();
        let starved = if !self.peers.starved() {
            None
        } else if core.peer_read_allowance(now) > 0 {
            Some(now)
        } else {
            core.peer_read_wake(now)
        };
        [
            self.server.poll_timeout(now),
            self.clients.poll_timeout(),
            starved,
            self.notifier.as_ref().and_then(Notifier::poll_timeout),
        ]
        .into_iter()
        .flatten()
        .min()
        .map(|d| d.saturating_duration_since(now))
    }

    fn signals(&mut self) -> Option<Exit> {
        let mut exit = None;
        for sig in self.signals.pending() {
            match sig {
                SIGHUP => self.server.reload_scripts(),
                sig => {
                    info!("signal {sig}: shutting down");
                    exit = Some(Exit::Signal(sig));
                }
            }
        }
        exit
    }

    /// A loop turn after readiness: read and run, end the turn (commit,
    /// held replies, hooks), write, verify a slice, timers, peers, closes.
    fn turn(&mut self, now: Instant) {
        let dirty = self.clients.take_dirty();
        for &id in &dirty {
            self.clients.drive(id, &mut self.server, now);
        }
        let t_input = Instant::now();
        self.server.end_turn(now);
        // Replies that moved the peer port wait for its bind: bind before
        // writing this turn's output.
        self.port.follow(&self.poll, &mut self.server, now);
        for &id in &dirty {
            self.clients.flush(id, &self.poll, &mut self.server);
        }
        let t_ipc = Instant::now();
        self.server.core_mut().run_check_slice(&mut Instant::now);
        self.server.handle_timeout(now);
        let t_timers = Instant::now();
        self.peer_turn(now);
        self.server.run_core_hooks(now);
        for id in self.server.take_touched() {
            self.clients.flush(id, &self.poll, &mut self.server);
        }
        while let Some(id) = self.server.poll_close() {
            self.clients.close(id, &self.poll, &mut self.server);
        }
        let end = Instant::now();
        // What a slow turn spent its time on: every IPC client waits for it.
        if end.duration_since(now) >= LONG_TURN {
            let ms = |a: Instant, b: Instant| b.duration_since(a).as_secs_f64() * 1000.0;
            debug!(
                "long turn: {:.1} ms (IPC input {:.1}, commit and replies {:.1}, checking and timers {:.1}, peers {:.1})",
                ms(now, end),
                ms(now, t_input),
                ms(t_input, t_ipc),
                ms(t_ipc, t_timers),
                ms(t_timers, end)
            );
        }
    }

    /// The peers' part of a turn: input read within the budgets and the
    /// download limit, the disk thread's answers in and its work out, the
    /// peer port following the `port` setting, trackers and datagrams,
    /// new dials, output written, closes applied.
    fn peer_turn(&mut self, now: Instant) {
        self.peers.read(&mut self.server, now);
        self.disk_turn(now);
        self.port.follow(&self.poll, &mut self.server, now);
        self.trackers_turn(now);
        self.port.exchange(&mut self.server, now);
        self.peers.write(&self.poll, &mut self.server, now);
    }

    /// Pieces checked by the disk thread in; pieces finished this turn out
    /// to it.
    fn disk_turn(&mut self, now: Instant) {
        while let Some(d) = self.disk.try_recv() {
            self.server.core_mut().handle_disk_done(d, now);
        }
        while let Some(req) = self.server.core_mut().poll_disk() {
            if let Some(d) = self.disk.submit(req) {
                self.server.core_mut().handle_disk_done(d, now);
            }
        }
    }

    /// Tracker traffic that goes through the worker: jobs out, results in.
    fn trackers_turn(&mut self, now: Instant) {
        while let Some(r) = self.trackers.try_recv() {
            self.server.handle_tracker_result(r, now);
        }
        while let Some(job) = self.server.poll_tracker_job(now) {
            self.trackers.submit(job);
        }
    }

    /// Stops accepting, writes what clients are owed (for a while), saves,
    /// and closes everyone.
    fn shutdown(&mut self) {
        if let Some(n) = self.notifier.as_mut() {
            n.stopping();
        }
        self.clients.close_listeners(&self.poll);
        // Pieces at the disk thread are still recorded (for a while).
        self.disk_turn(Instant::now());
        for d in self.disk.finish(disk::FINISH_WAIT) {
            self.server.core_mut().handle_disk_done(d, Instant::now());
        }
        self.server.begin_shutdown(Instant::now());
        self.peer_turn(Instant::now());
        for id in self.server.clients() {
            self.clients.flush(id, &self.poll, &mut self.server);
        }
        // `stopped` announces, for a bounded time.
        let stop_by = Instant::now() + STOP_ANNOUNCE_WAIT;
        let mut events = Events::with_capacity(64);
        while self.server.core().announcing() && Instant::now() < stop_by {
            let now = Instant::now();
            self.server.core_mut().handle_tracker_timers(now);
            self.trackers_turn(now);
            self.port.exchange(&mut self.server, now);
            let _ = self.poll.poll(&mut events, Some(Duration::from_millis(50)));
            // Readiness is not dispatched here: just try the sockets.
            self.port.set_readable();
            self.notify(Instant::now());
        }
        if self.server.core().announcing() {
            warn!("quitting without every tracker's answer to stopped");
        }
        let deadline = Instant::now() + SHUTDOWN_FLUSH;
        let mut events = Events::with_capacity(1024);
        while self.server.client_count() > 0 {
            while let Some(id) = self.server.poll_close() {
                self.clients.close(id, &self.poll, &mut self.server);
            }
            let now = Instant::now();
            if self.server.client_count() == 0 {
                break;
            }
            if now >= deadline {
                warn!(
                    "{} client(s) did not take their last replies",
                    self.server.client_count()
                );
                break;
            }
            // Watchdog pings go on while clients drain.
            let wake = self
                .notifier
                .as_ref()
                .and_then(Notifier::poll_timeout)
                .map_or(deadline, |t| t.min(deadline));
            let polled = self
                .poll
                .poll(&mut events, Some(wake.saturating_duration_since(now)));
            self.notify(Instant::now());
            if polled.is_err() {
                continue;
            }
            let ids: Vec<ClientId> = events.iter().map(|e| e.token().0).collect();
            for id in ids {
                self.clients.flush(id, &self.poll, &mut self.server);
            }
        }
        for id in self.server.clients() {
            self.clients.close(id, &self.poll, &mut self.server);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::Policy;
    use crate::client::{encode_message, parse_message, version_frame, FrameReader};
    use crate::codec::Value;
    use crate::registry::{Registry, Settings};
    use crate::service::Service;
    use mio::net::UnixListener;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream as StdStream;

    /// Client A floods N tagged noops, client B sends one; one loop turn
    /// runs. Returns how many of A's were answered in that turn, and
    /// whether B was.
    fn one_turn(read_budget: usize, n: i64) -> (i64, bool) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("socket");
        let listener = UnixListener::bind(&path).unwrap();
        let state = dir.path().join("state");
        let reg = Registry::open(&state, Settings::defaults(state.clone())).unwrap();
        let config = crate::config::Config {
            read_budget: read_budget as u64,
            idle_timeout: 0,
            handshake_timeout: 0,
            no_dht: true,
            ..Default::default()
        };
        let server = Server::new(Service::new(reg), config);
        let access = Policy::owner_only(nix::unistd::getuid().as_raw());
        let listener = FrontListener {
            socket: ListenSocket::Unix(listener),
            kind: crate::front::FrontKind::Ipc,
            admit: Admit::Credentials(access),
            description: path.display().to_string(),
        };
        let mut r = Reactor::new(vec![listener], server, 100).unwrap();

        let mut a = StdStream::connect(&path).unwrap();
        let mut b = StdStream::connect(&path).unwrap();
        let mut flood = version_frame(1, 2);
        for tag in 1..=n {
            flood.extend(encode_message("noop", &Value::empty(), Some(tag)));
        }
        a.write_all(&flood).unwrap();
        b.write_all(&version_frame(1, 2)).unwrap();
        b.write_all(&encode_message("noop", &Value::empty(), Some(7)))
            .unwrap();

        // Both are in the backlog with their bytes: the turn that accepts
        // them also serves them.
        let mut events = Events::with_capacity(64);
        while r.server.client_count() < 2 {
            r.step(&mut events).unwrap();
        }

        let count = |s: &mut StdStream| {
            s.set_nonblocking(true).unwrap();
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf); // stops at WouldBlock
            let mut frames = FrameReader::new();
            let mut cursor = &buf[..];
            let mut tags = Vec::new();
            while let Ok(p) = frames.read_payload(&mut cursor) {
                if let Ok(m) = parse_message(&p) {
                    tags.extend(m.tag);
                }
            }
            tags
        };
        let a_tags = count(&mut a);
        let b_tags = count(&mut b);
        (a_tags.len() as i64, b_tags == [7])
    }

    #[test]
    fn a_flooding_client_gets_one_budget_per_turn_and_the_other_is_served() {
        let n = 4000; // about 90 KB of requests: fits the socket buffers
        let (answered, other) = one_turn(4096, n);
        assert!(other, "the second client was served in the same turn");
        assert!(
            answered > 0 && answered < n / 4,
            "{answered} of {n} answered in one turn with a 4 KiB budget"
        );
        // Without a budget the same turn serves the whole flood: the
        // budget is what made the difference above.
        let (answered, other) = one_turn(usize::MAX, n);
        assert!(other);
        assert_eq!(answered, n);
    }
}
