//! The IPC front: one Unix-socket client of Transmission's bencoded
//! protocol, its [`Session`] running messages against the command service.

use super::{Env, FrontConn};
use crate::session::Session;

/// One IPC client.
pub struct IpcConn {
    session: Session,
}

impl IpcConn {
    /// Client `serial`, accepting payloads up to `max_message` bytes; its
    /// output already holds the version message.
    pub fn new(serial: u64, max_message: usize) -> IpcConn {
        IpcConn {
            session: Session::new(serial, max_message),
        }
    }
}

impl FrontConn for IpcConn {
    fn receive(&mut self, bytes: &[u8], env: &mut Env<'_>) -> Result<(), String> {
        self.session
            .receive(bytes, env.svc)
            .map_err(|e| e.to_string())
    }

    fn output(&self) -> &[u8] {
        self.session.output()
    }

    fn consume_output(&mut self, n: usize) {
        self.session.consume_output(n);
    }

    fn queued_output(&self) -> usize {
        self.session.queued_output()
    }

    fn is_held(&self) -> bool {
        self.session.is_held()
    }

    fn release(&mut self, commit: &Result<(), String>, bind: Option<&str>) {
        self.session.release(commit, bind);
    }

    fn is_backpressured(&self) -> bool {
        self.session.is_backpressured()
    }

    fn has_pending_input(&self) -> bool {
        self.session.has_pending_input()
    }

    fn greeted(&self) -> bool {
        self.session.version().is_some()
    }
}
