//! The event loop: one mio `Poll`, the listening Unix socket, one stream
//! per client. It only moves bytes between sockets and the sans-IO
//! [`Server`], handles readiness, signals and the timer, and applies the
//! server's decisions (close, write interest). The order of a loop turn is
//! the server's (see [`crate::server`]).

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use log::{debug, error, info, trace, warn};
use mio::net::{TcpListener, TcpStream, UdpSocket, UnixListener, UnixStream};
use mio::{Events, Interest, Poll, Token};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;

use crate::access::{Peer, Policy};
use crate::engine::disk::{self, DiskWorker};
use crate::notify::Notifier;
use crate::server::{ClientId, Server};
use crate::tracker::worker::TrackerWorker;

const LISTENER: Token = Token(usize::MAX - 1);
const SIGNALS: Token = Token(usize::MAX - 2);
const PEER_LISTENER: Token = Token(usize::MAX - 3);
const WAKER: Token = Token(usize::MAX - 4);
const UDP4: Token = Token(usize::MAX - 5);
const UDP6: Token = Token(usize::MAX - 6);

/// Datagrams read from the tracker sockets per turn (the rest wait for
/// the next turn, so a flood cannot hold the loop).
const UDP_READ_BUDGET: usize = 256;

/// How long quitting waits for `stopped` announces.
const STOP_ANNOUNCE_WAIT: Duration = Duration::from_secs(2);

/// Peer connections' tokens start here (IPC clients' are below).
const PEER_BASE: usize = usize::MAX / 2;

/// Bytes read from one peer per loop turn, so that one fast peer cannot
/// starve the others (or the IPC clients).
const PEER_READ_BUDGET: usize = 1 << 20;

/// Bytes written to one peer per loop turn: each write refills the
/// peer's queue from disk, so a fast reader could otherwise hold the loop
/// (and the IPC clients) for as long as it keeps reading.
const PEER_WRITE_BUDGET: usize = 1 << 20;

/// A loop turn this long is logged (debug) with where its time went.
const LONG_TURN: Duration = Duration::from_millis(5);

/// Size of the shared read buffer.
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

/// A client's socket and what the reactor knows of its readiness. Its
/// slot is the server's [`ClientId`], which is also its mio token.
struct Conn {
    stream: UnixStream,
    /// Read readiness not yet used up (readiness is edge-triggered).
    readable: bool,
    /// WRITABLE interest is registered.
    write_interest: bool,
    /// Listed in `Reactor::dirty` this turn.
    dirty: bool,
}

/// A peer's socket.
struct PeerSock {
    stream: TcpStream,
    /// Outgoing and not yet established.
    connecting: bool,
    readable: bool,
    write_interest: bool,
    /// Listed in `peers_again`: its input is read once in the turn's peer
    /// part, so a peer gets one read budget a turn (and one entry in the
    /// list).
    again: bool,
}

/// The event loop and the sockets it owns.
pub struct Reactor {
    poll: Poll,
    listener: Option<UnixListener>,
    signals: Signals,
    /// Sockets by client id (the server hands the ids out).
    conns: Vec<Option<Conn>>,
    server: Server,
    access: Policy,
    max_clients: usize,
    scratch: Vec<u8>,
    /// Clients to drive this turn (ready, or with work left over).
    dirty: Vec<ClientId>,
    /// Clients to drive again next turn without waiting for an event.
    again: Vec<ClientId>,
    accept_paused_until: Option<Instant>,
    /// The peer port's listener and the port it is bound to.
    peer_listener: Option<(TcpListener, u16)>,
    /// Peer sockets by the swarm's key.
    peers: Vec<Option<PeerSock>>,
    /// A peer's write budget ran out with output still queued: the next
    /// turn comes at once (every turn tries every peer's output).
    peers_unflushed: bool,
    /// Peers to read in this turn's peer part: readable, or with input
    /// left over from the last turn (read budget used up).
    peers_again: Vec<usize>,
    /// Readable peers waiting for the download limit, first come first
    /// read.
    peers_starved: Vec<usize>,
    /// The tracker worker: HTTP off the loop, results back through the
    /// waker.
    trackers: TrackerWorker,
    /// The thread that hashes and writes downloaded pieces.
    disk: DiskWorker,
    /// The UDP tracker sockets, IPv4 and IPv6 (each when it could be
    /// opened).
    udp4: Option<UdpSocket>,
    udp6: Option<UdpSocket>,
    /// Datagrams may be waiting on the UDP sockets.
    udp_readable: bool,
    /// The service manager's notify socket, once ready was said.
    notifier: Option<Notifier>,
}

/// A UDP socket for tracker traffic on `ip` (any port), registered.
fn tracker_socket(poll: &Poll, ip: IpAddr, token: Token) -> Option<UdpSocket> {
    let bound = UdpSocket::bind(SocketAddr::new(ip, 0)).and_then(|mut s| {
        poll.registry()
            .register(&mut s, token, Interest::READABLE)?;
        Ok(s)
    });
    match bound {
        Ok(s) => Some(s),
        Err(e) => {
            // Only UDP trackers of that family are lost; they time out
            // with a clear error.
            warn!("no UDP tracker socket on {ip}: {e}");
            None
        }
    }
}

impl Reactor {
    /// A reactor serving `listener` for `server`; at most `max_clients`
    /// at once, each admitted by `access`.
    pub fn new(
        listener: UnixListener,
        server: Server,
        access: Policy,
        max_clients: usize,
    ) -> io::Result<Reactor> {
        let poll = Poll::new()?;
        let mut listener = listener;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = std::sync::Arc::new(mio::Waker::new(poll.registry(), WAKER)?);
        let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        // Tracker traffic leaves from the peer address when one is set, so
        // it takes the same route as the peers.
        let (ip4, ip6) = match server.config().peer_bind {
            IpAddr::V4(ip) if !ip.is_unspecified() => (IpAddr::V4(ip), None),
            IpAddr::V6(ip) if !ip.is_unspecified() => (IpAddr::V4(Ipv4Addr::UNSPECIFIED), Some(ip)),
            _ => (
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                Some(Ipv6Addr::UNSPECIFIED),
            ),
        };
        let udp4 = tracker_socket(&poll, ip4, UDP4);
        let udp6 = ip6.and_then(|ip| tracker_socket(&poll, IpAddr::V6(ip), UDP6));
        Ok(Reactor {
            poll,
            listener: Some(listener),
            signals,
            conns: Vec::new(),
            server,
            access,
            max_clients,
            scratch: vec![0; SCRATCH],
            dirty: Vec::new(),
            again: Vec::new(),
            accept_paused_until: None,
            peer_listener: None,
            peers: Vec::new(),
            peers_again: Vec::new(),
            peers_unflushed: false,
            peers_starved: Vec::new(),
            disk: {
                let waker = std::sync::Arc::clone(&waker);
                DiskWorker::spawn(move || waker.wake())?
            },
            trackers: TrackerWorker::spawn(waker),
            udp4,
            udp6,
            udp_readable: false,
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
        let mut exit = None;
        for event in events.iter() {
            match event.token() {
                LISTENER => self.accept(now),
                SIGNALS => exit = exit.or(self.signals()),
                PEER_LISTENER => self.accept_peers(now),
                WAKER => {} // tracker and disk results are taken every turn
                UDP4 | UDP6 => self.udp_readable = true,
                Token(t) if t >= PEER_BASE => self.peer_event(t - PEER_BASE, event, now),
                Token(id) => {
                    let readable =
                        event.is_readable() || event.is_read_closed() || event.is_error();
                    if let Some(conn) = self.conns.get_mut(id).and_then(Option::as_mut) {
                        conn.readable |= readable;
                        mark(&mut self.dirty, conn, id);
                    }
                }
            }
        }
        if self.accept_paused_until.is_some_and(|until| now >= until) {
            self.accept_paused_until = None;
            self.accept(now);
        }
        self.turn(now);
        self.notify(now);
        if self.server.quit_requested() {
            exit = exit.or(Some(Exit::Quit));
        }
        Ok(exit)
    }

    fn timeout(&self, now: Instant) -> Option<Duration> {
        if !self.again.is_empty()
            || !self.peers_again.is_empty()
            || self.peers_unflushed
            || self.udp_readable
        {
            return Some(Duration::ZERO);
        }
        let starved = if self.peers_starved.is_empty() {
            None
        } else if self.server.peer_read_allowance(now) > 0 {
            Some(now)
        } else {
            self.server.peer_read_wake(now)
        };
        [
            self.server.poll_timeout(now),
            self.accept_paused_until,
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

    /// Whether a new connection may stay: room left, and credentials the
    /// policy admits. Refusals are logged; the caller drops the stream,
    /// which closes it before any byte is exchanged.
    fn admit(&self, stream: &UnixStream) -> bool {
        let clients = self.server.client_count();
        if clients >= self.max_clients {
            info!("refused a client: {clients} clients connected (--max-clients)");
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
        if !self.access.admits(&peer) {
            info!(
                "refused a client: uid {} gid {} pid {} is not allowed (see --allow-uid, --allow-gid)",
                peer.uid, peer.gid, peer.pid
            );
            return false;
        }
        true
    }

    fn accept(&mut self, now: Instant) {
        loop {
            let Some(listener) = &self.listener else {
                return;
            };
            match listener.accept() {
                Ok((stream, _)) => {
                    if self.admit(&stream) {
                        self.add_client(stream, now);
                    } // else dropping the stream closes it
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

    fn add_client(&mut self, mut stream: UnixStream, now: Instant) {
        let id = self.server.connect(now);
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut stream, Token(id), Interest::READABLE)
        {
            warn!("cannot register a new client: {e}");
            self.server.disconnect(id);
            return;
        }
        if self.conns.len() <= id {
            self.conns.resize_with(id + 1, || None);
        }
        let conn = self.conns[id].insert(Conn {
            stream,
            // Data may have arrived with the connection.
            readable: true,
            write_interest: false,
            dirty: false,
        });
        mark(&mut self.dirty, conn, id);
    }

    /// A loop turn after readiness: read and run, end the turn (commit,
    /// held replies, hooks), write, verify a slice, timers, closes.
    fn turn(&mut self, now: Instant) {
        for id in std::mem::take(&mut self.again) {
            if let Some(conn) = self.conns.get_mut(id).and_then(Option::as_mut) {
                mark(&mut self.dirty, conn, id);
            }
        }
        let dirty = std::mem::take(&mut self.dirty);
        for &id in &dirty {
            self.drive(id, now);
        }
        let t_input = Instant::now();
        self.server.end_turn(now);
        // Replies that moved the peer port wait for its bind: bind before
        // writing this turn's output.
        self.follow_port();
        for &id in &dirty {
            self.flush(id);
        }
        let t_ipc = Instant::now();
        self.server.run_slice(&mut Instant::now);
        self.server.handle_timeout(now);
        let t_timers = Instant::now();
        self.peer_turn(now);
        while let Some(id) = self.server.poll_close() {
            self.close(id);
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

    /// The peers' part of a turn: the listener follows the `port`
    /// setting, new dials, output written, closes applied.
    fn peer_turn(&mut self, now: Instant) {
        if !self.peers_starved.is_empty() && self.server.peer_read_allowance(now) > 0 {
            for key in std::mem::take(&mut self.peers_starved) {
                self.read_peer(key, now);
            }
        }
        for key in std::mem::take(&mut self.peers_again) {
            if let Some(p) = self.peers.get_mut(key).and_then(Option::as_mut) {
                p.again = false;
            }
            self.read_peer(key, now);
        }
        self.disk_turn(now);
        self.follow_port();
        self.trackers_turn(now);
        while let Some((key, addr)) = self.server.poll_dial(now) {
            match TcpStream::connect(addr) {
                Ok(stream) => self.add_peer(key, stream, true),
                Err(e) => {
                    debug!("peer {addr}: cannot connect: {e}");
                    self.server.peer_dialed(key, false, now);
                }
            }
        }
        self.peers_unflushed = false;
        for key in 0..self.peers.len() {
            if self.peers[key].is_some() {
                self.flush_peer(key, now);
            }
        }
        while let Some(key) = self.server.poll_peer_close() {
            if let Some(mut p) = self.peers.get_mut(key).and_then(Option::take) {
                let _ = self.poll.registry().deregister(&mut p.stream);
            }
            self.peers_again.retain(|k| *k != key);
            self.peers_starved.retain(|k| *k != key);
            self.server.peer_closed(key);
        }
    }

    /// Pieces checked by the disk thread in; pieces finished this turn out
    /// to it.
    fn disk_turn(&mut self, now: Instant) {
        while let Some(d) = self.disk.try_recv() {
            self.server.disk_done(d, now);
        }
        while let Some(req) = self.server.poll_disk() {
            if let Some(d) = self.disk.submit(req) {
                self.server.disk_done(d, now);
            }
        }
    }

    /// Tracker traffic: jobs out to the worker and its results in;
    /// datagrams in from the UDP sockets and out to UDP trackers.
    fn trackers_turn(&mut self, now: Instant) {
        while let Some(r) = self.trackers.try_recv() {
            self.server.tracker_result(r, now);
        }
        if self.udp_readable {
            self.read_datagrams(now);
        }
        while let Some(job) = self.server.poll_tracker_job(now) {
            self.trackers.submit(job);
        }
        while let Some(t) = self.server.poll_tracker_transmit(now) {
            let socket = match t.destination {
                SocketAddr::V4(_) => self.udp4.as_ref(),
                SocketAddr::V6(_) => self.udp6.as_ref(),
            };
            let Some(socket) = socket else {
                debug!("no UDP socket for tracker {}", t.destination);
                continue;
            };
            // A datagram not sent is like one lost: the retransmission
            // timer covers both.
            if let Err(e) = socket.send_to(&t.payload, t.destination) {
                debug!("UDP tracker {}: cannot send: {e}", t.destination);
            }
        }
    }

    /// Reads what the UDP tracker sockets hold, up to the turn's budget.
    fn read_datagrams(&mut self, now: Instant) {
        let mut budget = UDP_READ_BUDGET;
        for socket in [self.udp4.as_ref(), self.udp6.as_ref()]
            .into_iter()
            .flatten()
        {
            while budget > 0 {
                match socket.recv_from(&mut self.scratch) {
                    Ok((n, from)) => {
                        budget -= 1;
                        let data = self.scratch.get(..n).unwrap_or_default();
                        self.server.tracker_datagram(from, data, now);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        // E.g. an ICMP error queued on the socket: it
                        // concerns one datagram, not the socket.
                        debug!("UDP tracker socket: {e}");
                        budget -= 1;
                    }
                }
            }
        }
        // Budget left: both sockets are drained.
        self.udp_readable = budget == 0;
    }

    /// Binds the peer listener to the `port` setting when it changed, and
    /// tells the server how that went.
    fn follow_port(&mut self) {
        let Some(port) = self.server.poll_bind() else {
            return;
        };
        if let Some((mut l, old)) = self.peer_listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
            info!("peer port {old} closed");
        }
        let addr = SocketAddr::new(self.server.config().peer_bind, port);
        let bound = crate::sys::tcp_listener(addr, crate::sys::PEER_BACKLOG).and_then(|l| {
            let mut l = TcpListener::from_std(l);
            self.poll
                .registry()
                .register(&mut l, PEER_LISTENER, Interest::READABLE)?;
            Ok(l)
        });
        match bound {
            Ok(l) => {
                info!("listening for peers on {addr}");
                self.peer_listener = Some((l, port));
                self.server.bind_result(port, Ok(()));
            }
            Err(e) => {
                error!("cannot listen for peers on {addr}: {e}");
                self.server.bind_result(port, Err(e.to_string()));
            }
        }
    }

    fn accept_peers(&mut self, now: Instant) {
        loop {
            let Some((listener, _)) = &self.peer_listener else {
                return;
            };
            match listener.accept() {
                Ok((stream, addr)) => match self.server.peer_accept(addr, now) {
                    Some(key) => {
                        debug!("peer {addr}: accepted");
                        self.add_peer(key, stream, false);
                        self.read_peer(key, now);
                    }
                    None => debug!("peer {addr}: refused (banned, or --max-peers reached)"),
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    warn!("accepting a peer failed: {e}");
                    return;
                }
            }
        }
    }

    fn add_peer(&mut self, key: usize, mut stream: TcpStream, connecting: bool) {
        let interest = Interest::READABLE | Interest::WRITABLE;
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut stream, Token(PEER_BASE + key), interest)
        {
            warn!("cannot register a peer: {e}");
            self.server.peer_hang_up(key);
            return;
        }
        let _ = stream.set_nodelay(true);
        if self.peers.len() <= key {
            self.peers.resize_with(key + 1, || None);
        }
        self.peers[key] = Some(PeerSock {
            stream,
            connecting,
            readable: !connecting,
            write_interest: true,
            again: false,
        });
    }

    fn peer_event(&mut self, key: usize, event: &mio::event::Event, now: Instant) {
        let Some(p) = self.peers.get_mut(key).and_then(Option::as_mut) else {
            return;
        };
        if p.connecting {
            if !(event.is_writable() || event.is_error() || event.is_write_closed()) {
                return;
            }
            let ok = p.stream.take_error().ok().flatten().is_none() && p.stream.peer_addr().is_ok();
            p.connecting = false;
            self.server.peer_dialed(key, ok, now);
            if !ok {
                return;
            }
        }
        // Read in the turn's peer part, after the IPC clients were served
        // and answered: a reply never waits for a batch of peer data.
        if event.is_readable() || event.is_read_closed() || event.is_error() {
            p.readable = true;
            if !p.again {
                p.again = true;
                self.peers_again.push(key);
            }
        }
    }

    fn read_peer(&mut self, key: usize, now: Instant) {
        let Some(p) = self.peers.get_mut(key).and_then(Option::as_mut) else {
            return;
        };
        let mut budget = PEER_READ_BUDGET;
        while p.readable && !p.connecting {
            if budget == 0 {
                if !p.again {
                    p.again = true;
                    self.peers_again.push(key);
                }
                return;
            }
            // The download limit is applied here: unread bytes stay in
            // the kernel, and TCP slows the sender down.
            let allowed = self.server.peer_read_allowance(now);
            if allowed == 0 {
                if !self.peers_starved.contains(&key) {
                    self.peers_starved.push(key);
                }
                return;
            }
            let cap = budget.min(self.scratch.len()).min(allowed);
            match p.stream.read(&mut self.scratch[..cap]) {
                Ok(0) => {
                    p.readable = false;
                    self.server.peer_hang_up(key);
                }
                Ok(n) => {
                    budget -= n;
                    self.server.peer_receive(key, &self.scratch[..n], now);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => p.readable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    debug!("peer {key}: read failed: {e}");
                    p.readable = false;
                    self.server.peer_hang_up(key);
                }
            }
        }
    }

    fn flush_peer(&mut self, key: usize, now: Instant) {
        let Some(p) = self.peers.get_mut(key).and_then(Option::as_mut) else {
            return;
        };
        if p.connecting {
            return;
        }
        let mut budget = PEER_WRITE_BUDGET;
        loop {
            let out = self.server.peer_output(key);
            if out.is_empty() {
                break;
            }
            if budget == 0 {
                self.peers_unflushed = true;
                break;
            }
            match p.stream.write(&out[..out.len().min(budget)]) {
                Ok(0) => {
                    self.server.peer_hang_up(key);
                    return;
                }
                Ok(n) => {
                    budget -= n;
                    self.server.peer_consume(key, n, now);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    debug!("peer {key}: write failed: {e}");
                    self.server.peer_hang_up(key);
                    return;
                }
            }
        }
        let pending = !self.server.peer_output(key).is_empty();
        if pending != p.write_interest {
            let interest = if pending {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            let token = Token(PEER_BASE + key);
            if self
                .poll
                .registry()
                .reregister(&mut p.stream, token, interest)
                .is_err()
            {
                self.server.peer_hang_up(key);
                return;
            }
            p.write_interest = pending;
        }
    }

    /// Reads what the client sent (within this turn's budget) and hands it
    /// to the server.
    fn drive(&mut self, id: ClientId, now: Instant) {
        let Some(conn) = self.conns.get_mut(id).and_then(Option::as_mut) else {
            return;
        };
        conn.dirty = false;
        // Input left buffered by an earlier turn runs first.
        self.server.receive(id, &[], now);
        let mut budget = self.server.config().read_budget();
        while conn.readable && budget > 0 && self.server.wants_input(id) {
            let cap = budget.min(self.scratch.len());
            match conn.stream.read(&mut self.scratch[..cap]) {
                Ok(0) => {
                    conn.readable = false;
                    self.server.hang_up(id);
                }
                Ok(n) => {
                    budget = budget.saturating_sub(n);
                    trace!("client {id}: read {n} bytes");
                    self.server.receive(id, &self.scratch[..n], now);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => conn.readable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    debug!("client {id}: read failed: {e}");
                    conn.readable = false;
                    self.server.hang_up(id);
                }
            }
        }
    }

    /// Writes queued output, then applies what the server decides: close,
    /// write interest, another turn for input left waiting.
    fn flush(&mut self, id: ClientId) {
        let Some(conn) = self.conns.get_mut(id).and_then(Option::as_mut) else {
            return;
        };
        loop {
            let out = self.server.output(id);
            if out.is_empty() {
                break;
            }
            match conn.stream.write(out) {
                Ok(0) => return self.close(id),
                Ok(n) => {
                    trace!("client {id}: wrote {n} bytes");
                    self.server.consume_output(id, n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    debug!("client {id}: write failed: {e}");
                    return self.close(id);
                }
            }
        }
        let f = self.server.flushed(id);
        if f.pending_output != conn.write_interest {
            let interest = if f.pending_output {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            if let Err(e) = self
                .poll
                .registry()
                .reregister(&mut conn.stream, Token(id), interest)
            {
                error!("client {id}: cannot change interest: {e}");
                return self.close(id);
            }
            conn.write_interest = f.pending_output;
        }
        // Input left waiting (read budget used up, or paused while output
        // was over the limit and now drained): come back next turn.
        if f.wants_input && (conn.readable || f.more_input) {
            self.again.push(id);
        }
    }

    fn close(&mut self, id: ClientId) {
        if let Some(mut conn) = self.conns.get_mut(id).and_then(Option::take) {
            let _ = self.poll.registry().deregister(&mut conn.stream);
        }
        self.server.disconnect(id);
        self.again.retain(|k| *k != id);
    }

    /// Stops accepting, writes what clients are owed (for a while), saves,
    /// and closes everyone.
    fn shutdown(&mut self) {
        if let Some(n) = self.notifier.as_mut() {
            n.stopping();
        }
        if let Some(mut l) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        // Pieces at the disk thread are still recorded (for a while).
        self.disk_turn(Instant::now());
        for d in self.disk.finish(disk::FINISH_WAIT) {
            self.server.disk_done(d, Instant::now());
        }
        self.server.begin_shutdown(Instant::now());
        self.peer_turn(Instant::now());
        for id in self.server.clients() {
            self.flush(id);
        }
        // `stopped` announces, for a bounded time.
        let stop_by = Instant::now() + STOP_ANNOUNCE_WAIT;
        let mut events = Events::with_capacity(64);
        while self.server.announcing() && Instant::now() < stop_by {
            let now = Instant::now();
            self.server.tracker_timers(now);
            self.trackers_turn(now);
            let _ = self.poll.poll(&mut events, Some(Duration::from_millis(50)));
            // Readiness is not dispatched here: just try the sockets.
            self.udp_readable = true;
            self.notify(Instant::now());
        }
        if self.server.announcing() {
            warn!("quitting without every tracker's answer to stopped");
        }
        let deadline = Instant::now() + SHUTDOWN_FLUSH;
        let mut events = Events::with_capacity(1024);
        while self.server.client_count() > 0 {
            while let Some(id) = self.server.poll_close() {
                self.close(id);
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
                self.flush(id);
            }
        }
        for id in self.server.clients() {
            self.close(id);
        }
    }
}

fn mark(dirty: &mut Vec<ClientId>, conn: &mut Conn, id: ClientId) {
    if !conn.dirty {
        conn.dirty = true;
        dirty.push(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{encode_message, parse_message, version_frame, FrameReader};
    use crate::codec::Value;
    use crate::registry::{Registry, Settings};
    use crate::service::Service;
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
            ..Default::default()
        };
        let server = Server::new(Service::new(reg), config);
        let access = Policy::owner_only(nix::unistd::getuid().as_raw());
        let mut r = Reactor::new(listener, server, access, 100).unwrap();

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
