//! The event loop: one mio `Poll`, one listening Unix socket, a slab of
//! connections. It only moves bytes between sockets and the sans-IO
//! [`Session`]s, and drives timers, signals and the registry's slices of
//! background work.
//!
//! One loop turn:
//! 1. wait for readiness (not at all when work is pending);
//! 2. accept, and read from every ready connection into a shared scratch
//!    buffer, running complete messages as they arrive;
//! 3. run one bounded slice of torrent verification;
//! 4. commit every change of the turn in one durable write, then release
//!    the replies that waited for it;
//! 5. write out every connection's output (many replies, one syscall);
//! 6. close the connections queued for closing: the one safe point.

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use log::{debug, error, info, trace, warn};
use mio::net::{UnixListener, UnixStream};
use mio::{Events, Interest, Poll, Token};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;

use crate::access::{Peer, Policy};
use crate::commands::Service;
use crate::session::Session;

const LISTENER: Token = Token(usize::MAX - 1);
const SIGNALS: Token = Token(usize::MAX - 2);

/// Size of the shared read buffer.
const SCRATCH: usize = 64 << 10;

/// Bytes read from one client per loop turn, so that one flooding client
/// cannot starve the others; the rest is read on the next turn.
pub const READ_BUDGET_PER_TURN: usize = 256 << 10;

/// How long shutdown waits for clients to take their last replies.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(5);

/// Bytes hashed per step of a verification slice: small enough that the
/// slice ends close to its time budget (about 0.2 ms of SHA-1 here).
const CHECK_STEP: u64 = 256 << 10;

/// Tunables of the loop.
#[derive(Debug, Clone)]
pub struct ReactorConfig {
    /// Largest payload accepted from a client.
    pub max_message: usize,
    /// Close clients silent for this long (`None`: never).
    pub idle_timeout: Option<Duration>,
    /// Longest time one slice of verification may hold the loop.
    pub check_slice: Duration,
    /// Who may connect.
    pub access: Policy,
    /// Clients served at once; more are accepted and closed at once.
    pub max_clients: usize,
    /// Close clients that have not sent their version this long after
    /// connecting (`None`: never).
    pub handshake_timeout: Option<Duration>,
    /// Unread replies a client may leave queued before it is disconnected.
    pub max_output: usize,
    /// Bytes read from one client per loop turn (fairness).
    pub read_budget: usize,
}

/// Why the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// A client sent `quit`.
    Quit,
    /// SIGINT or SIGTERM.
    Signal(i32),
}

struct Conn {
    stream: UnixStream,
    session: Session,
    serial: u64,
    connected_at: Instant,
    last_active: Instant,
    /// Read readiness not yet used up (readiness is edge-triggered).
    readable: bool,
    /// Closing: no more input; close once output is written.
    closing: bool,
    /// WRITABLE interest is registered.
    write_interest: bool,
    /// Listed in `Reactor::dirty` this turn.
    dirty: bool,
}

/// The event loop and everything it owns.
pub struct Reactor {
    poll: Poll,
    listener: Option<UnixListener>,
    signals: Signals,
    conns: Slab<Conn>,
    svc: Service,
    config: ReactorConfig,
    scratch: Vec<u8>,
    /// Connections to drive this turn (ready, or with work left over).
    dirty: Vec<usize>,
    /// Connections to drive again next turn without waiting for an event.
    again: Vec<usize>,
    next_serial: u64,
    next_sweep: Option<Instant>,
    accept_paused_until: Option<Instant>,
    /// Longest verification slice since the queue last ran dry (logged
    /// then, so the bound on pauses is visible in the log).
    longest_slice: Duration,
    /// After a failed commit, when to try again unasked (a client's
    /// change still triggers a commit at once).
    retry_commit: Option<Instant>,
}

impl Reactor {
    /// A reactor serving `listener` with `svc`.
    pub fn new(listener: UnixListener, svc: Service, config: ReactorConfig) -> io::Result<Reactor> {
        let poll = Poll::new()?;
        let mut listener = listener;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        Ok(Reactor {
            poll,
            listener: Some(listener),
            signals,
            conns: Slab::new(),
            svc,
            config,
            scratch: vec![0; SCRATCH],
            dirty: Vec::new(),
            again: Vec::new(),
            next_serial: 1,
            next_sweep: None,
            accept_paused_until: None,
            longest_slice: Duration::ZERO,
            retry_commit: None,
        })
    }

    /// The service (for inspection after the loop ends).
    pub fn service(&self) -> &Service {
        &self.svc
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
        let timeout = self.timeout(Instant::now());
        if let Err(e) = self.poll.poll(events, timeout) {
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(None);
            }
            return Err(e);
        }
        let now = Instant::now();
        let mut exit = None;
        for event in events.iter() {
            match event.token() {
                LISTENER => self.accept(now),
                SIGNALS => exit = exit.or(self.signals()),
                Token(key) => {
                    if let Some(conn) = self.conns.get_mut(key) {
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            conn.readable = true;
                        }
                        mark(&mut self.dirty, conn, key);
                    }
                }
            }
        }
        if self.accept_paused_until.is_some_and(|until| now >= until) {
            self.accept_paused_until = None;
            self.accept(now);
        }
        self.turn(now);
        if self.svc.control.quit {
            exit = exit.or(Some(Exit::Quit));
        }
        Ok(exit)
    }

    fn timeout(&self, now: Instant) -> Option<Duration> {
        if !self.again.is_empty()
            || self.svc.registry().has_work()
            || (self.svc.registry().needs_commit() && self.retry_commit.is_none())
        {
            return Some(Duration::ZERO);
        }
        let deadlines = [self.next_sweep, self.accept_paused_until, self.retry_commit];
        deadlines
            .iter()
            .flatten()
            .min()
            .map(|d| d.saturating_duration_since(now))
    }

    fn signals(&mut self) -> Option<Exit> {
        let mut exit = None;
        for sig in self.signals.pending() {
            match sig {
                SIGHUP => match self.svc.reload_scripts() {
                    Ok(files) => info!(
                        "SIGHUP: reloaded {} script(s): {}",
                        files.len(),
                        files.join(", ")
                    ),
                    Err(e) => warn!("SIGHUP: reload failed, previous scripts kept: {e}"),
                },
                sig => {
                    info!("signal {sig}: shutting down");
                    exit = Some(Exit::Signal(sig));
                }
            }
        }
        exit
    }

    /// Whether a new connection may stay: room left, and credentials the
    /// policy admits. Refusals are logged; the caller drops the stream,
    /// which closes it before any byte is exchanged.
    fn admit(&self, stream: &UnixStream) -> bool {
        if self.conns.len() >= self.config.max_clients {
            info!(
                "refused a client: {} clients connected (--max-clients)",
                self.conns.len()
            );
            return false;
        }
        let cred = match getsockopt(stream, PeerCredentials) {
            Ok(c) => c,
            Err(e) => {
                info!("refused a client: cannot read its credentials: {e}");
                return false;
            }
        };
        let peer = Peer {
            pid: cred.pid(),
            uid: cred.uid(),
            gid: cred.gid(),
        };
        if !self.config.access.admits(&peer) {
            info!(
                "refused a client: uid {} gid {} pid {} is not allowed (see --allow-uid, --allow-gid)",
                peer.uid, peer.gid, peer.pid
            );
            return false;
        }
        true
    }

    /// How often to look for clients past a timeout, if any is set.
    fn sweep_period(&self) -> Option<Duration> {
        [self.config.idle_timeout, self.config.handshake_timeout]
            .into_iter()
            .flatten()
            .min()
            .map(sweep_period)
    }

    fn accept(&mut self, now: Instant) {
        let Some(listener) = &self.listener else {
            return;
        };
        loop {
            match listener.accept() {
                Ok((mut stream, _)) => {
                    if !self.admit(&stream) {
                        continue; // dropping the stream closes it
                    }
                    let entry = self.conns.vacant_entry();
                    let key = entry.key();
                    if let Err(e) =
                        self.poll
                            .registry()
                            .register(&mut stream, Token(key), Interest::READABLE)
                    {
                        warn!("cannot register a new client: {e}");
                        continue;
                    }
                    let serial = self.next_serial;
                    self.next_serial += 1;
                    debug!("client {serial}: connected");
                    let conn = entry.insert(Conn {
                        stream,
                        session: Session::new(serial, self.config.max_message),
                        serial,
                        connected_at: now,
                        last_active: now,
                        // Data may have arrived with the connection.
                        readable: true,
                        closing: false,
                        write_interest: false,
                        dirty: false,
                    });
                    mark(&mut self.dirty, conn, key);
                    self.svc.client_event(serial, true);
                    if let (None, Some(period)) = (self.next_sweep, self.sweep_period()) {
                        self.next_sweep = Some(now + period);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Out of descriptors, most likely: leave the rest in the
                    // backlog and try again shortly.
                    warn!("accept failed: {e}; retrying in 100 ms");
                    self.accept_paused_until = Some(now + Duration::from_millis(100));
                    break;
                }
            }
        }
    }

    /// Steps 2 to 6 of a loop turn.
    fn turn(&mut self, now: Instant) {
        for key in std::mem::take(&mut self.again) {
            if let Some(conn) = self.conns.get_mut(key) {
                mark(&mut self.dirty, conn, key);
            }
        }
        let dirty = std::mem::take(&mut self.dirty);
        for &key in &dirty {
            self.drive(key, now);
        }

        // Replies wait for a commit only within the turn that made them
        // (every turn with one commits), so the held sessions are among
        // those driven now: no need to look at every connection.
        let held: Vec<usize> = dirty
            .iter()
            .copied()
            .filter(|&k| self.conns.get(k).is_some_and(|c| c.session.is_held()))
            .collect();
        let retry_due = self.retry_commit.is_none_or(|t| now >= t);
        if (self.svc.registry().needs_commit() && retry_due) || !held.is_empty() {
            let result = self.svc.registry_mut().commit();
            self.retry_commit = result.is_err().then(|| now + Duration::from_secs(1));
            for &key in &held {
                if let Some(conn) = self.conns.get_mut(key) {
                    conn.session.release(&result);
                }
            }
        }
        // Hooks see only what is durable; what they change is committed
        // next turn.
        self.svc.run_hooks();

        for key in dirty {
            self.flush(key);
        }

        // Hashing comes after the flush, so a reply made this turn never
        // waits behind a slice; what the slice changes is committed at
        // the start of the next turn (the loop does not sleep meanwhile).
        self.verify_slice();

        if self.next_sweep.is_some_and(|t| now >= t) {
            self.sweep(now);
        }
    }

    /// Runs verification for at most `check_slice`: in steps of
    /// [`CHECK_STEP`] bytes, stopping before a step that would likely
    /// overrun (the previous step's time is the estimate).
    fn verify_slice(&mut self) {
        if !self.svc.registry().has_work() {
            return;
        }
        let start = Instant::now();
        let mut step = Duration::ZERO;
        let mut events = Vec::new();
        while self.svc.registry().has_work() {
            let elapsed = start.elapsed();
            if elapsed > Duration::ZERO && elapsed + step > self.config.check_slice {
                break;
            }
            let t = Instant::now();
            events.extend(self.svc.registry_mut().work(CHECK_STEP));
            step = t.elapsed();
        }
        self.longest_slice = self.longest_slice.max(start.elapsed());
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

    /// Reads what the client sent (within this turn's budget) and runs it.
    fn drive(&mut self, key: usize, now: Instant) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        conn.dirty = false;
        if conn.closing {
            return;
        }
        let svc = &mut self.svc;
        if let Err(e) = conn.session.resume(svc) {
            protocol_error(conn, &e);
            return;
        }
        let mut budget = self.config.read_budget;
        while conn.readable && !conn.closing && !conn.session.is_backpressured() && budget > 0 {
            let cap = budget.min(self.scratch.len());
            match conn.stream.read(&mut self.scratch[..cap]) {
                Ok(0) => {
                    debug!("client {}: hung up", conn.serial);
                    conn.readable = false;
                    conn.closing = true;
                }
                Ok(n) => {
                    budget = budget.saturating_sub(n);
                    conn.last_active = now;
                    trace!("client {}: read {n} bytes", conn.serial);
                    if let Err(e) = conn.session.receive(&self.scratch[..n], svc) {
                        protocol_error(conn, &e);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => conn.readable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    debug!("client {}: read failed: {e}", conn.serial);
                    conn.readable = false;
                    conn.closing = true;
                }
            }
            if svc.control.quit {
                break;
            }
        }
    }

    /// Writes queued output; manages WRITABLE interest; closes the
    /// connection if it is done.
    fn flush(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let mut broken = false;
        while !conn.session.output().is_empty() {
            match conn.stream.write(conn.session.output()) {
                Ok(0) => {
                    broken = true;
                    break;
                }
                Ok(n) => {
                    trace!("client {}: wrote {n} bytes", conn.serial);
                    conn.session.consume_output(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    debug!("client {}: write failed: {e}", conn.serial);
                    broken = true;
                    break;
                }
            }
        }
        let pending = !conn.session.output().is_empty();
        if broken || (conn.closing && !pending && !conn.session.is_held()) {
            self.close(key);
            return;
        }
        // Input stops being read past the soft limit; this catches a
        // client that asked for more than the hard limit and reads none.
        if conn.session.queued_output() > self.config.max_output {
            warn!(
                "client {}: {} bytes of replies unread, over --max-output {}: disconnecting",
                conn.serial,
                conn.session.queued_output(),
                self.config.max_output
            );
            self.close(key);
            return;
        }
        if pending != conn.write_interest {
            let interest = if pending {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            if let Err(e) = self
                .poll
                .registry()
                .reregister(&mut conn.stream, Token(key), interest)
            {
                error!("client {}: cannot change interest: {e}", conn.serial);
                self.close(key);
                return;
            }
            conn.write_interest = pending;
        }
        // Input left waiting (read budget used up, or paused while output
        // was over the limit and now drained): come back next turn.
        if !conn.closing
            && !conn.session.is_backpressured()
            && (conn.readable || conn.session.has_pending_input())
        {
            self.again.push(key);
        }
    }

    fn close(&mut self, key: usize) {
        if let Some(mut conn) = self.conns.try_remove(key) {
            let _ = self.poll.registry().deregister(&mut conn.stream);
            debug!("client {}: closed", conn.serial);
            self.svc.client_event(conn.serial, false);
        }
        self.again.retain(|k| *k != key);
    }

    /// Closes clients idle for longer than the idle timeout, and those
    /// that have not sent their version within the handshake timeout.
    fn sweep(&mut self, now: Instant) {
        let Some(period) = self.sweep_period() else {
            return;
        };
        let (idle, handshake) = (self.config.idle_timeout, self.config.handshake_timeout);
        let mut stale = Vec::new();
        for (key, c) in self.conns.iter() {
            if handshake.is_some_and(|t| {
                c.session.version().is_none() && now.duration_since(c.connected_at) >= t
            }) {
                info!(
                    "client {}: no version after {} ms, closing",
                    c.serial,
                    handshake.map_or(0, |t| t.as_millis())
                );
                stale.push(key);
            } else if idle.is_some_and(|t| now.duration_since(c.last_active) >= t) {
                info!(
                    "client {}: idle for {}s, closing",
                    c.serial,
                    idle.map_or(0, |t| t.as_secs())
                );
                stale.push(key);
            }
        }
        for key in stale {
            self.close(key);
        }
        self.next_sweep = if self.conns.is_empty() {
            None
        } else {
            Some(now + period)
        };
    }

    /// Stops accepting, writes what clients are owed (for a while), saves,
    /// and closes everyone.
    fn shutdown(&mut self) {
        if let Some(mut l) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        for (_, conn) in self.conns.iter_mut() {
            conn.closing = true;
        }
        if let Err(e) = self.svc.registry_mut().commit() {
            error!("final save failed: {e}");
        }
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.flush(key);
        }
        let deadline = Instant::now() + SHUTDOWN_FLUSH;
        let mut events = Events::with_capacity(1024);
        while !self.conns.is_empty() {
            let now = Instant::now();
            if now >= deadline {
                warn!(
                    "{} client(s) did not take their last replies",
                    self.conns.len()
                );
                break;
            }
            if self.poll.poll(&mut events, Some(deadline - now)).is_err() {
                continue;
            }
            let keys: Vec<usize> = events
                .iter()
                .map(|e| e.token().0)
                .filter(|k| self.conns.contains(*k))
                .collect();
            for key in keys {
                self.flush(key);
            }
        }
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.close(key);
        }
    }
}

fn mark(dirty: &mut Vec<usize>, conn: &mut Conn, key: usize) {
    if !conn.dirty {
        conn.dirty = true;
        dirty.push(key);
    }
}

fn protocol_error(conn: &mut Conn, e: &crate::session::ProtocolError) {
    warn!("client {}: protocol error: {e}; closing", conn.serial);
    conn.closing = true;
}

fn sweep_period(idle: Duration) -> Duration {
    (idle / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{encode_message, parse_message, version_frame, FrameReader};
    use crate::codec::Value;
    use crate::registry::{Registry, Settings};
    use std::os::unix::net::UnixStream as StdStream;

    fn config(read_budget: usize) -> ReactorConfig {
        ReactorConfig {
            max_message: 1 << 20,
            idle_timeout: None,
            check_slice: Duration::from_millis(5),
            access: Policy::owner_only(nix::unistd::getuid().as_raw()),
            max_clients: 100,
            handshake_timeout: None,
            max_output: 64 << 20,
            read_budget,
        }
    }

    /// Client A floods N tagged noops, client B sends one; one loop turn
    /// runs. Returns how many of A's were answered in that turn, and
    /// whether B was.
    fn one_turn(read_budget: usize, n: i64) -> (i64, bool) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("socket");
        let listener = UnixListener::bind(&path).unwrap();
        let state = dir.path().join("state");
        let reg = Registry::open(&state, Settings::defaults(state.clone())).unwrap();
        let mut r = Reactor::new(listener, Service::new(reg), config(read_budget)).unwrap();

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
        while r.conns.len() < 2 {
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
