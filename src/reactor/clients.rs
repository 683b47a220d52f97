//! The fronts' sockets: listeners of each kind, one stream per client, the
//! admission of each front (peer credentials for the Unix socket), and
//! moving bytes between the streams and the server.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::{debug, error, info, trace, warn};
use mio::event::Source;
use mio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use mio::{Interest, Poll, Registry, Token};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

use super::tokens;
use crate::access::{Peer, Policy};
use crate::front::FrontKind;
use crate::server::{ClientId, Server};

/// A front's listening socket.
pub enum ListenSocket {
    /// A Unix stream socket.
    Unix(UnixListener),
    /// A TCP socket.
    Tcp(TcpListener),
}

/// Who a front lets in.
pub enum Admit {
    /// Unix socket peers whose credentials the policy admits.
    Credentials(Policy),
    /// Anyone who can reach the socket (the front checks what it must).
    Anyone,
}

/// A listener, the front it serves and its admission rule.
pub struct FrontListener {
    /// The socket.
    pub socket: ListenSocket,
    /// The protocol its clients speak.
    pub kind: FrontKind,
    /// Who may stay.
    pub admit: Admit,
    /// Where it listens, for the log.
    pub description: String,
}

/// A client's stream, of whichever kind its listener has.
pub(super) enum ClientStream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Read for ClientStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            ClientStream::Unix(s) => s.read(buf),
            ClientStream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for ClientStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            ClientStream::Unix(s) => s.write(buf),
            ClientStream::Tcp(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Source for ClientStream {
    fn register(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            ClientStream::Unix(s) => s.register(r, t, i),
            ClientStream::Tcp(s) => s.register(r, t, i),
        }
    }

    fn reregister(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            ClientStream::Unix(s) => s.reregister(r, t, i),
            ClientStream::Tcp(s) => s.reregister(r, t, i),
        }
    }

    fn deregister(&mut self, r: &Registry) -> io::Result<()> {
        match self {
            ClientStream::Unix(s) => s.deregister(r),
            ClientStream::Tcp(s) => s.deregister(r),
        }
    }
}

impl Source for ListenSocket {
    fn register(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            ListenSocket::Unix(s) => s.register(r, t, i),
            ListenSocket::Tcp(s) => s.register(r, t, i),
        }
    }

    fn reregister(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            ListenSocket::Unix(s) => s.reregister(r, t, i),
            ListenSocket::Tcp(s) => s.reregister(r, t, i),
        }
    }

    fn deregister(&mut self, r: &Registry) -> io::Result<()> {
        match self {
            ListenSocket::Unix(s) => s.deregister(r),
            ListenSocket::Tcp(s) => s.deregister(r),
        }
    }
}

/// A client's socket and what the reactor knows of its readiness. Its
/// slot is the server's [`ClientId`], which is also its mio token.
struct Conn {
    stream: ClientStream,
    /// Read readiness not yet used up (readiness is edge-triggered).
    readable: bool,
    /// WRITABLE interest is registered.
    write_interest: bool,
    /// Listed in `Clients::dirty` this turn.
    dirty: bool,
}

/// Lists `id` to be driven this turn, once.
fn mark(dirty: &mut Vec<ClientId>, conn: &mut Conn, id: ClientId) {
    if !conn.dirty {
        conn.dirty = true;
        dirty.push(id);
    }
}

/// The fronts' listeners and every client's stream.
pub(super) struct Clients {
    listeners: Vec<FrontListener>,
    /// Sockets by client id (the server hands the ids out).
    conns: Vec<Option<Conn>>,
    max_clients: usize,
    scratch: Vec<u8>,
    /// Clients to drive this turn (ready, or with work left over).
    dirty: Vec<ClientId>,
    /// Clients to drive again next turn without waiting for an event.
    again: Vec<ClientId>,
    accept_paused_until: Option<Instant>,
}

impl Clients {
    /// The fronts' `listeners`, registered with `poll`; at most
    /// `max_clients` clients at once.
    pub fn new(
        mut listeners: Vec<FrontListener>,
        poll: &Poll,
        max_clients: usize,
        scratch: usize,
    ) -> io::Result<Clients> {
        if listeners.len() > tokens::MAX_LISTENERS {
            return Err(io::Error::other(format!(
                "{} listeners: at most {}",
                listeners.len(),
                tokens::MAX_LISTENERS
            )));
        }
        for (i, l) in listeners.iter_mut().enumerate() {
            poll.registry()
                .register(&mut l.socket, tokens::listener(i), Interest::READABLE)?;
        }
        Ok(Clients {
            listeners,
            conns: Vec::new(),
            max_clients,
            scratch: vec![0; scratch],
            dirty: Vec::new(),
            again: Vec::new(),
            accept_paused_until: None,
        })
    }

    /// Readiness of client `id`: it is driven this turn.
    pub fn event(&mut self, id: ClientId, event: &mio::event::Event) {
        let readable = event.is_readable() || event.is_read_closed() || event.is_error();
        if let Some(conn) = self.conns.get_mut(id).and_then(Option::as_mut) {
            conn.readable |= readable;
            mark(&mut self.dirty, conn, id);
        }
    }

    /// Whether a turn must come at once (input left over).
    pub fn busy(&self) -> bool {
        !self.again.is_empty()
    }

    /// When accepting resumes after running out of descriptors.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.accept_paused_until
    }

    /// Accepts again on every listener once the pause is over.
    pub fn handle_timeout(&mut self, poll: &Poll, server: &mut Server, now: Instant) {
        if self.accept_paused_until.is_some_and(|until| now >= until) {
            self.accept_paused_until = None;
            for i in 0..self.listeners.len() {
                self.accept(i, poll, server, now);
            }
        }
    }

    /// The clients to drive this turn, marked (the ones with input left
    /// from the last turn among them).
    pub fn take_dirty(&mut self) -> Vec<ClientId> {
        for id in std::mem::take(&mut self.again) {
            if let Some(conn) = self.conns.get_mut(id).and_then(Option::as_mut) {
                mark(&mut self.dirty, conn, id);
            }
        }
        std::mem::take(&mut self.dirty)
    }

    /// Stops listening (shutdown).
    pub fn close_listeners(&mut self, poll: &Poll) {
        for mut l in std::mem::take(&mut self.listeners) {
            let _ = poll.registry().deregister(&mut l.socket);
        }
    }

    /// Whether a new connection may stay: room left, and (for a Unix
    /// socket front) credentials the policy admits. Refusals are logged;
    /// the caller drops the stream, which closes it before any byte is
    /// exchanged.
    fn admit(&self, server: &Server, admit: &Admit, stream: &ClientStream) -> bool {
        let clients = server.client_count();
        if clients >= self.max_clients {
            info!("refused a client: {clients} clients connected (--max-clients)");
            return false;
        }
        let (Admit::Credentials(policy), ClientStream::Unix(stream)) = (admit, stream) else {
            return true;
        };
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
        if !policy.admits(&peer) {
            info!(
                "refused a client: uid {} gid {} pid {} is not allowed (see --allow-uid, --allow-gid)",
                peer.uid, peer.gid, peer.pid
            );
            return false;
        }
        true
    }

    /// Accepts what listener `index` holds (until its backlog is empty).
    pub fn accept(&mut self, index: usize, poll: &Poll, server: &mut Server, now: Instant) {
        loop {
            let Some(l) = self.listeners.get(index) else {
                return;
            };
            let accepted = match &l.socket {
                ListenSocket::Unix(s) => s.accept().map(|(c, _)| (ClientStream::Unix(c), None)),
                ListenSocket::Tcp(s) => s.accept().map(|(c, a)| (ClientStream::Tcp(c), Some(a))),
            };
            match accepted {
                Ok((stream, peer)) => {
                    let kind = l.kind;
                    if self.admit(server, &l.admit, &stream) {
                        self.add_client(kind, stream, peer, poll, server, now);
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

    fn add_client(
        &mut self,
        kind: FrontKind,
        mut stream: ClientStream,
        peer: Option<SocketAddr>,
        poll: &Poll,
        server: &mut Server,
        now: Instant,
    ) {
        if let ClientStream::Tcp(s) = &stream {
            let _ = s.set_nodelay(true);
        }
        let Some(id) = server.connect(kind, peer, now) else {
            warn!("refused a {} client: that front is not served", kind.name());
            return;
        };
        if let Err(e) = poll
            .registry()
            .register(&mut stream, Token(id), Interest::READABLE)
        {
            warn!("cannot register a new client: {e}");
            server.disconnect(id);
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

    /// Reads what the client sent (within this turn's budget) and hands it
    /// to the server.
    pub fn drive(&mut self, id: ClientId, server: &mut Server, now: Instant) {
        let Some(conn) = self.conns.get_mut(id).and_then(Option::as_mut) else {
            return;
        };
        conn.dirty = false;
        // Input left buffered by an earlier turn runs first.
        server.receive(id, &[], now);
        let mut budget = server.config().read_budget();
        while conn.readable && budget > 0 && server.wants_input(id) {
            let cap = budget.min(self.scratch.len());
            match conn.stream.read(&mut self.scratch[..cap]) {
                Ok(0) => {
                    conn.readable = false;
                    server.hang_up(id);
                }
                Ok(n) => {
                    budget = budget.saturating_sub(n);
                    trace!("client {id}: read {n} bytes");
                    server.receive(id, &self.scratch[..n], now);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => conn.readable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    debug!("client {id}: read failed: {e}");
                    conn.readable = false;
                    server.hang_up(id);
                }
            }
        }
    }

    /// Writes queued output, then applies what the server decides: close,
    /// write interest, another turn for input left waiting.
    pub fn flush(&mut self, id: ClientId, poll: &Poll, server: &mut Server) {
        let Some(conn) = self.conns.get_mut(id).and_then(Option::as_mut) else {
            return;
        };
        loop {
            let out = server.output(id);
            if out.is_empty() {
                break;
            }
            match conn.stream.write(out) {
                Ok(0) => return self.close(id, poll, server),
                Ok(n) => {
                    trace!("client {id}: wrote {n} bytes");
                    server.consume_output(id, n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    debug!("client {id}: write failed: {e}");
                    return self.close(id, poll, server);
                }
            }
        }
        let f = server.flushed(id);
        if f.pending_output != conn.write_interest {
            let interest = if f.pending_output {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            if let Err(e) = poll
                .registry()
                .reregister(&mut conn.stream, Token(id), interest)
            {
                error!("client {id}: cannot change interest: {e}");
                return self.close(id, poll, server);
            }
            conn.write_interest = f.pending_output;
        }
        // Input left waiting (read budget used up, or paused while output
        // was over the limit and now drained): come back next turn.
        if f.wants_input && (conn.readable || f.more_input) {
            self.again.push(id);
        }
    }

    pub fn close(&mut self, id: ClientId, poll: &Poll, server: &mut Server) {
        if let Some(mut conn) = self.conns.get_mut(id).and_then(Option::take) {
            let _ = poll.registry().deregister(&mut conn.stream);
        }
        server.disconnect(id);
        self.again.retain(|k| *k != id);
    }
}
