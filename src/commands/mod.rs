//! The command table: message keys mapped to handlers.
//!
//! Built-in keys and script keys live in one table, so `get-supported` and
//! dispatch always agree. A handler sees the decoded value and the daemon's
//! state, and says what to answer with a [`Reply`]; the session turns that
//! into bytes following the reply rules (PROTOCOL.md 3). The handlers know
//! nothing of scripts: the service above both runs them.

mod builtin;
mod torrents;

use std::collections::HashMap;

use crate::codec::Value;
use crate::registry::Registry;
pub use crate::reply::Reply;

/// Requests to the daemon itself, made by handlers and acted on by the
/// reactor at the end of the loop turn.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Control {
    /// `quit` was received: flush, save and exit.
    pub quit: bool,
}

/// What a handler may touch.
pub struct Ctx<'a> {
    /// Settings and torrents.
    pub registry: &'a mut Registry,
    /// The table itself (for `get-supported`).
    pub table: &'a CommandTable,
    /// Requests to the daemon.
    pub control: &'a mut Control,
    /// The message carries a tag (some replies differ, PROTOCOL.md 4).
    pub tagged: bool,
}

/// A built-in handler.
pub type Builtin = fn(&mut Ctx<'_>, &Value) -> Reply;

/// What runs for a key.
#[derive(Clone, Copy)]
pub enum Handler {
    /// Compiled into the daemon.
    Builtin(Builtin),
    /// The script key with this index among the scripts' keys.
    Script(usize),
}

/// One entry of the table.
#[derive(Clone, Copy)]
pub struct Command {
    /// The lowest protocol version the key acts on.
    pub min_version: u8,
    /// What runs.
    pub handler: Handler,
}

/// Keys to commands.
#[derive(Clone, Default)]
pub struct CommandTable {
    map: HashMap<Box<[u8]>, Command>,
}

impl CommandTable {
    /// A table holding every built-in key.
    pub fn builtin() -> CommandTable {
        let mut t = CommandTable::default();
        for (key, min_version, f) in builtin::BUILTINS.iter().chain(torrents::BUILTINS) {
            t.map.insert(
                key.as_bytes().into(),
                Command {
                    min_version: *min_version,
                    handler: Handler::Builtin(*f),
                },
            );
        }
        t
    }

    /// The built-ins plus script keys, each with its index among the
    /// scripts' keys (a script key never shadows a built-in: loading the
    /// scripts refuses that).
    pub fn with_script_keys<'a>(keys: impl Iterator<Item = (usize, &'a str)>) -> CommandTable {
        let mut t = CommandTable::builtin();
        for (index, key) in keys {
            t.map.entry(key.as_bytes().into()).or_insert(Command {
                min_version: 2,
                handler: Handler::Script(index),
            });
        }
        t
    }

    /// The command for `key`.
    pub fn get(&self, key: &[u8]) -> Option<&Command> {
        self.map.get(key)
    }

    /// Whether `key` is handled.
    pub fn contains(&self, key: &[u8]) -> bool {
        self.map.contains_key(key)
    }

    /// Every key, sorted (for logs and listings).
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .map
            .keys()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect();
        keys.sort();
        keys
    }
}
