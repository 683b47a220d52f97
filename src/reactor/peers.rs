//! The peers' sockets: the peer port's TCP listener, dialing, and moving
//! bytes between TCP streams and the torrent core under the per-turn
//! budgets and the download limit. (Peers over uTP travel in datagrams,
//! see `udp.rs`; the core holds their streams.)

use std::io::{self, Read, Write};
use std::time::Instant;

use log::{debug, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Poll};

use super::tokens;
use crate::server::Server;
use crate::swarm::{Dial, Transport};

/// Bytes read from one peer per loop turn, so that one fast peer cannot
/// starve the others (or the IPC clients).
const PEER_READ_BUDGET: usize = 1 << 20;

/// Bytes written to one peer per loop turn: each write refills the
/// peer's queue from disk, so a fast reader could otherwise hold the loop
/// (and the IPC clients) for as long as it keeps reading.
const PEER_WRITE_BUDGET: usize = 1 << 20;

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

/// Every peer's TCP stream, and which of them to read or write next.
pub(super) struct Peers {
    /// Sockets by the swarm's key.
    socks: Vec<Option<PeerSock>>,
    /// A peer's write budget ran out with output still queued: the next
    /// turn comes at once (every turn tries every peer's output).
    unflushed: bool,
    /// Peers to read in this turn's peer part: readable, or with input
    /// left over from the last turn (read budget used up).
    again: Vec<usize>,
    /// Readable peers waiting for the download limit, first come first
    /// read.
    starved: Vec<usize>,
    scratch: Vec<u8>,
}

impl Peers {
    /// No peers yet; reads go through a buffer of `scratch` bytes.
    pub fn new(scratch: usize) -> Peers {
        Peers {
            socks: Vec::new(),
            unflushed: false,
            again: Vec::new(),
            starved: Vec::new(),
            scratch: vec![0; scratch],
        }
    }

    /// Whether a turn must come at once (input or output left over).
    pub fn busy(&self) -> bool {
        !self.again.is_empty() || self.unflushed
    }

    /// Whether peers wait for the download limit.
    pub fn starved(&self) -> bool {
        !self.starved.is_empty()
    }

    /// Accepts the peers waiting on the peer port's TCP `listener`.
    pub fn accept(
        &mut self,
        listener: &TcpListener,
        poll: &Poll,
        server: &mut Server,
        now: Instant,
    ) {
        loop {
            match listener.accept() {
                Ok((stream, addr)) => {
                    match server.core_mut().accept_peer(addr, Transport::Tcp, now) {
                        Some(key) => {
                            debug!("peer {addr}: accepted");
                            self.add_peer(key, stream, false, poll, server);
                            self.read_peer(key, server, now);
                        }
                        None => debug!("peer {addr}: refused (banned, or --max-peers reached)"),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    warn!("accepting a peer failed: {e}");
                    return;
                }
            }
        }
    }

    /// Opens the connection the core decided on.
    fn dial(&mut self, d: Dial, poll: &Poll, server: &mut Server, now: Instant) {
        match d.transport {
            Transport::Tcp => match TcpStream::connect(d.addr) {
                Ok(stream) => self.add_peer(d.key, stream, true, poll, server),
                Err(e) => {
                    debug!("peer {}: cannot connect: {e}", d.addr);
                    server.core_mut().handle_dialed(d.key, false, now);
                }
            },
        }
    }

    fn add_peer(
        &mut self,
        key: usize,
        mut stream: TcpStream,
        connecting: bool,
        poll: &Poll,
        server: &mut Server,
    ) {
        let interest = Interest::READABLE | Interest::WRITABLE;
        if let Err(e) = poll
            .registry()
            .register(&mut stream, tokens::peer(key), interest)
        {
            warn!("cannot register a peer: {e}");
            server.core_mut().handle_peer_hang_up(key);
            return;
        }
        let _ = stream.set_nodelay(true);
        if self.socks.len() <= key {
            self.socks.resize_with(key + 1, || None);
        }
        self.socks[key] = Some(PeerSock {
            stream,
            connecting,
            readable: !connecting,
            write_interest: true,
            again: false,
        });
    }

    /// Readiness of peer `key`.
    pub fn event(
        &mut self,
        key: usize,
        event: &mio::event::Event,
        server: &mut Server,
        now: Instant,
    ) {
        let Some(p) = self.socks.get_mut(key).and_then(Option::as_mut) else {
            return;
        };
        if p.connecting {
            if !(event.is_writable() || event.is_error() || event.is_write_closed()) {
                return;
            }
            let ok = p.stream.take_error().ok().flatten().is_none() && p.stream.peer_addr().is_ok();
            p.connecting = false;
            server.core_mut().handle_dialed(key, ok, now);
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
                self.again.push(key);
            }
        }
    }

    fn read_peer(&mut self, key: usize, server: &mut Server, now: Instant) {
        let Some(p) = self.socks.get_mut(key).and_then(Option::as_mut) else {
            return;
        };
        let mut budget = PEER_READ_BUDGET;
        while p.readable && !p.connecting {
            if budget == 0 {
                if !p.again {
                    p.again = true;
                    self.again.push(key);
                }
                return;
            }
            // The download limit is applied here: unread bytes stay in
            // the kernel, and TCP slows the sender down.
            let allowed = server.core().peer_read_allowance(now);
            if allowed == 0 {
                if !self.starved.contains(&key) {
                    self.starved.push(key);
                }
                return;
            }
            let cap = budget.min(self.scratch.len()).min(allowed);
            match p.stream.read(&mut self.scratch[..cap]) {
                Ok(0) => {
                    p.readable = false;
                    server.core_mut().handle_peer_hang_up(key);
                }
                Ok(n) => {
                    budget -= n;
                    server
                        .core_mut()
                        .handle_peer_data(key, &self.scratch[..n], now);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => p.readable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    debug!("peer {key}: read failed: {e}");
                    p.readable = false;
                    server.core_mut().handle_peer_hang_up(key);
                }
            }
        }
    }

    fn flush_peer(&mut self, key: usize, poll: &Poll, server: &mut Server, now: Instant) {
        let Some(p) = self.socks.get_mut(key).and_then(Option::as_mut) else {
            return;
        };
        if p.connecting {
            return;
        }
        let core = server.core_mut();
        let mut budget = PEER_WRITE_BUDGET;
        loop {
            let out = core.peer_output(key);
            if out.is_empty() {
                break;
            }
            if budget == 0 {
                self.unflushed = true;
                break;
            }
            match p.stream.write(&out[..out.len().min(budget)]) {
                Ok(0) => {
                    core.handle_peer_hang_up(key);
                    return;
                }
                Ok(n) => {
                    budget -= n;
                    core.handle_peer_sent(key, n, now);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    debug!("peer {key}: write failed: {e}");
                    core.handle_peer_hang_up(key);
                    return;
                }
            }
        }
        let pending = !core.peer_output(key).is_empty();
        if pending != p.write_interest {
            let interest = if pending {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            let token = tokens::peer(key);
            if poll
                .registry()
                .reregister(&mut p.stream, token, interest)
                .is_err()
            {
                core.handle_peer_hang_up(key);
                return;
            }
            p.write_interest = pending;
        }
    }

    /// Reads the peers that are readable (or have input left over),
    /// within their budgets and the download limit.
    pub fn read(&mut self, server: &mut Server, now: Instant) {
        if !self.starved.is_empty() && server.core().peer_read_allowance(now) > 0 {
            for key in std::mem::take(&mut self.starved) {
                self.read_peer(key, server, now);
            }
        }
        for key in std::mem::take(&mut self.again) {
            if let Some(p) = self.socks.get_mut(key).and_then(Option::as_mut) {
                p.again = false;
            }
            self.read_peer(key, server, now);
        }
    }

    /// Opens the connections the core decides on, writes every peer's
    /// output within its budget, and closes what the core closed.
    pub fn write(&mut self, poll: &Poll, server: &mut Server, now: Instant) {
        while let Some(d) = server.core_mut().poll_dial(now) {
            self.dial(d, poll, server, now);
        }
        self.unflushed = false;
        for key in 0..self.socks.len() {
            if self.socks[key].is_some() {
                self.flush_peer(key, poll, server, now);
            }
        }
        while let Some(key) = server.core_mut().poll_peer_close() {
            if let Some(mut p) = self.socks.get_mut(key).and_then(Option::take) {
                let _ = poll.registry().deregister(&mut p.stream);
            }
            self.again.retain(|k| *k != key);
            self.starved.retain(|k| *k != key);
            server.core_mut().handle_peer_closed(key);
        }
    }
}
