//! The fronts: the protocols clients drive the daemon with, side by side
//! on one loop and one torrent core. Each client connection, whatever its
//! protocol, is a [`FrontConn`]: bytes in, bytes out, its replies to
//! changes held until the server's commit releases them, and
//! [`Effect`]s for what only the server can do (fetch a URL on the
//! worker, delete data on the disk thread, announce now). The server
//! holds them all in one table and applies one commit rule to every
//! kind; the reactor only moves their bytes.
//!
//! - [`ipc`]: Transmission's bencoded IPC over the Unix socket;
//! - [`rpc`]: Transmission's JSON RPC over HTTP/1.1 on TCP, and the web
//!   interface's files.
//!
//! Access control belongs to each front: the Unix-socket IPC admits by the
//! peer's credentials when it connects (the reactor reads them, see
//! [`crate::access`]); the RPC front checks every request (address and
//! Host whitelists, credentials, the CSRF session id).

pub mod ipc;
pub mod rpc;

use std::net::SocketAddr;
use std::time::{Instant, SystemTime};

use crate::engine::tree::DataTree;
use crate::service::Service;

/// Which protocol a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrontKind {
    /// Transmission's bencoded IPC over a Unix socket.
    Ipc,
    /// Transmission's JSON RPC over HTTP (and the web interface).
    Rpc,
}

impl FrontKind {
    /// Its name in logs.
    pub fn name(self) -> &'static str {
        match self {
            FrontKind::Ipc => "IPC",
            FrontKind::Rpc => "RPC",
        }
    }
}

/// Facts about the daemon a front may report (the RPC's `session-get`).
#[derive(Debug, Clone)]
pub struct Facts {
    /// When the daemon started.
    pub started: Instant,
    /// The peer port's sockets are bound now.
    pub peer_port_bound: bool,
    /// Peers connected in all, at most.
    pub peer_limit_global: u64,
    /// Peers connected per torrent, at most.
    pub peer_limit_per_torrent: u64,
}

/// What a connection runs its requests against.
pub struct Env<'a> {
    /// The command service: registry, scripts, control.
    pub svc: &'a mut Service,
    /// The RPC front's daemon-wide state, when the RPC is served.
    pub rpc: Option<&'a mut rpc::RpcFront>,
    /// Facts for reports.
    pub facts: &'a Facts,
    /// Now, for timers and durations.
    pub now: Instant,
    /// Now, for dates.
    pub wall: SystemTime,
}

/// Work a connection asks of the server, which owns the workers, the
/// disk thread's queue and the core.
#[derive(Debug)]
pub enum Effect {
    /// GET `url` (http or https) on the worker, at most `max_bytes` of
    /// body; the body or the reason comes back through
    /// [`FrontConn::fetched`] with `ticket`.
    Fetch {
        /// The connection's id for it.
        ticket: u64,
        /// What to fetch.
        url: String,
        /// A `Cookie` header value to send, as the client gave it.
        cookies: Option<String>,
        /// Largest body accepted.
        max_bytes: usize,
    },
    /// Delete a removed torrent's files, on the disk thread after its
    /// queued writes, once the core has stopped it; the outcome comes
    /// back through [`FrontConn::deleted`] with `ticket`.
    DeleteData {
        /// The connection's id for it.
        ticket: u64,
        /// The files.
        tree: DataTree,
    },
    /// Announce these torrents to their trackers now.
    Reannounce(Vec<u64>),
}

/// One client connection of some front, sans-IO.
pub trait FrontConn {
    /// Bytes from the client (none: go on with input already buffered).
    /// Requests run against `env` as they complete; an error is a
    /// protocol error: the client is closed once its earlier replies are
    /// written.
    fn receive(&mut self, bytes: &[u8], env: &mut Env<'_>) -> Result<(), String>;

    /// The client will send nothing more.
    fn end_of_input(&mut self) {}

    /// Bytes to send.
    fn output(&self) -> &[u8];

    /// `n` bytes of [`FrontConn::output`] were written.
    fn consume_output(&mut self, n: usize);

    /// Bytes queued for the client that count against the server's
    /// `--max-output`, held replies not counted.
    fn queued_output(&self) -> usize;

    /// Replies wait for the commit.
    fn is_held(&self) -> bool;

    /// The commit ended (`commit`), and if the peer port moved, its bind
    /// (`bind` says why it failed): held replies are released, failed
    /// where either failed.
    fn release(&mut self, commit: &Result<(), String>, bind: Option<&str>);

    /// Output is over the soft limit: read no more until it drains.
    fn is_backpressured(&self) -> bool;

    /// Complete input waits (to drive again next turn).
    fn has_pending_input(&self) -> bool;

    /// The client has said who it is as its protocol wants (the IPC's
    /// version message); the server's handshake timeout closes those that
    /// do not.
    fn greeted(&self) -> bool;

    /// The connection's own deadline, if it keeps one.
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    /// The connection's own timers; `true`: close it now.
    fn handle_timeout(&mut self, _now: Instant) -> bool {
        false
    }

    /// Once the output is written, close (the protocol said so).
    fn close_after_output(&self) -> bool {
        false
    }

    /// Work for the server.
    fn poll_effect(&mut self) -> Option<Effect> {
        None
    }

    /// What became of an [`Effect::Fetch`].
    fn fetched(&mut self, _ticket: u64, _result: Result<Vec<u8>, String>, _env: &mut Env<'_>) {}

    /// What became of an [`Effect::DeleteData`].
    fn deleted(&mut self, _ticket: u64, _result: Result<(), String>) {}
}

/// A client connection: the front's own type, kept inline for the IPC
/// (whose many idle monitors make its size the per-client memory) and
/// boxed for the larger HTTP connection.
pub enum Conn {
    /// An IPC client.
    Ipc(ipc::IpcConn),
    /// An RPC (HTTP) client.
    Rpc(Box<rpc::RpcConn>),
}

impl Conn {
    /// A new connection of `kind` for client `serial` (log lines name
    /// it), from `peer` when the socket has an address; `None` when
    /// `kind` cannot be served (no RPC front).
    pub fn open(
        kind: FrontKind,
        serial: u64,
        max_message: usize,
        peer: Option<SocketAddr>,
        rpc: Option<&rpc::RpcFront>,
        now: Instant,
    ) -> Option<Conn> {
        match kind {
            FrontKind::Ipc => Some(Conn::Ipc(ipc::IpcConn::new(serial, max_message))),
            FrontKind::Rpc => {
                let front = rpc?;
                Some(Conn::Rpc(Box::new(front.open(serial, peer, now))))
            }
        }
    }

    /// The connection as its front's trait.
    pub fn front(&self) -> &dyn FrontConn {
        match self {
            Conn::Ipc(c) => c,
            Conn::Rpc(c) => &**c,
        }
    }

    /// The connection as its front's trait, to change.
    pub fn front_mut(&mut self) -> &mut dyn FrontConn {
        match self {
            Conn::Ipc(c) => c,
            Conn::Rpc(c) => &mut **c,
        }
    }
}
