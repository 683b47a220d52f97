//! What a handler answers, and whether the answer waits for the disk.
//!
//! A leaf: the command table, the scripts and the session all speak it,
//! and it knows none of them.

use std::borrow::Cow;

use crate::codec::Value;

/// What a handler answers. The session applies the tag rules: which of
/// these are sent on an untagged message, and with which key.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// Done; `succeeded` if tagged, nothing otherwise.
    Done,
    /// A data reply (`info`, `port`, …), sent tagged or not.
    Data(Cow<'static, str>, Value),
    /// Could not be done; `failed` with the reason if tagged, else logged.
    Failed(String),
    /// The value has the wrong shape; `bad-format` if tagged.
    BadFormat,
    /// The key is unknown or not for this protocol version.
    NotSupported,
}

impl Reply {
    /// A data reply with a static key.
    pub fn data(key: &'static str, value: Value) -> Reply {
        Reply::Data(Cow::Borrowed(key), value)
    }
}

/// A reply and whether its message changed the state: such a reply is
/// sent only once the change is durable (or `failed` if it could not be
/// saved), and replies after it on the same connection wait too.
///
/// The dispatcher decides `durable` in one place, from the registry's
/// change counter around the handler; handlers never say it themselves.
#[derive(Debug, Clone, PartialEq)]
pub struct Dispatched {
    /// The answer.
    pub reply: Reply,
    /// The handler changed the state: hold the answer until the commit.
    pub durable: bool,
    /// The handler moved the peer port: the answer also waits for the new
    /// port to be bound, and is `failed` if it could not be.
    pub rebinds: bool,
}

impl From<Reply> for Dispatched {
    fn from(reply: Reply) -> Dispatched {
        Dispatched {
            reply,
            durable: false,
            rebinds: false,
        }
    }
}

/// What runs a client's messages (the daemon's command service): the IPC
/// session calls it, and it knows no session.
pub trait Dispatch {
    /// Runs one message on a connection speaking `version`.
    fn dispatch(&mut self, version: u8, key: &[u8], value: &Value, tagged: bool) -> Dispatched;
    /// `quit` was received: stop running messages.
    fn quitting(&self) -> bool;
}
