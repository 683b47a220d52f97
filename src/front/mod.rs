//! The fronts: the protocols clients drive the daemon with, side by side
//! on one loop and one torrent core. Each client connection, whatever its
//! protocol, is a [`FrontConn`]: bytes in, bytes out, its replies to
//! changes held until the server's commit releases them. The server holds
//! them all in one table and applies one commit rule to every kind; the
//! reactor only moves their bytes.
//!
//! Access control belongs to each front: the Unix-socket IPC admits by the
//! peer's credentials when it connects (the reactor reads them, see
//! [`crate::access`]).

pub mod ipc;

use std::time::Instant;

use crate::service::Service;

/// Which protocol a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrontKind {
    /// Transmission's bencoded IPC over a Unix socket.
    Ipc,
}

impl FrontKind {
    /// Its name in logs.
    pub fn name(self) -> &'static str {
        match self {
            FrontKind::Ipc => "IPC",
        }
    }
}

/// One client connection of some front, sans-IO.
pub trait FrontConn {
    /// Bytes from the client (none: go on with input already buffered).
    /// Requests run against `svc` as they complete; an error is a protocol
    /// error: the client is closed once its earlier replies are written.
    fn receive(&mut self, bytes: &[u8], svc: &mut Service, now: Instant) -> Result<(), String>;

    /// Bytes to send.
    fn output(&self) -> &[u8];

    /// `n` bytes of [`FrontConn::output`] were written.
    fn consume_output(&mut self, n: usize);

    /// Bytes queued for the client, held replies not counted.
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

    /// The connection's own timers; `true`: close it.
    fn handle_timeout(&mut self, _now: Instant) -> bool {
        false
    }

    /// Once the output is written, close (the protocol said so).
    fn close_after_output(&self) -> bool {
        false
    }
}

/// A new connection of `kind` for client `serial` (log lines name it).
pub fn open(kind: FrontKind, serial: u64, max_message: usize) -> Box<dyn FrontConn> {
    match kind {
        FrontKind::Ipc => Box::new(ipc::IpcConn::new(serial, max_message)),
    }
}
