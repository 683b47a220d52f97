//! The command table: message keys mapped to handlers.
//!
//! Built-in keys and script keys live in one table, so `get-supported` and
//! dispatch always agree. A handler sees the decoded value and the daemon's
//! state, and says what to answer with a [`Reply`]; the session turns that
//! into bytes following the reply rules (PROTOCOL.md 3).

mod builtin;
mod torrents;

pub(crate) use torrents::full_description;

use std::borrow::Cow;
use std::cell::{Ref, RefCell, RefMut};
use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;
use std::time::Instant;

use crate::codec::Value;
use crate::registry::Registry;
use crate::scripts::{Limits, LoadError, Scripts};

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
    /// A change was made; send the inner reply once it is durable (or
    /// `failed` if it could not be saved). Replies after it on the same
    /// connection wait too, keeping request order.
    Durable(Box<Reply>),
}

impl Reply {
    /// A data reply with a static key.
    pub fn data(key: &'static str, value: Value) -> Reply {
        Reply::Data(Cow::Borrowed(key), value)
    }

    /// `Done` once durable.
    pub fn durable_done() -> Reply {
        Reply::Durable(Box::new(Reply::Done))
    }
}

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
    /// The script key with this index in [`Scripts::keys`].
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

    /// The built-ins plus the keys of `scripts` (which never shadow a
    /// built-in: loading refuses that).
    pub fn with_scripts(scripts: &Scripts) -> CommandTable {
        let mut t = CommandTable::builtin();
        for (index, key) in scripts.keys() {
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

/// The table and the state it acts on: what every connection's messages
/// are dispatched against.
pub struct Service {
    /// Keys to handlers.
    pub table: CommandTable,
    /// Settings and torrents, shared with the scripts' host functions.
    /// Single-threaded; borrowed only for the length of one call, never
    /// across a script call.
    registry: Rc<RefCell<Registry>>,
    /// Requests to the daemon.
    pub control: Control,
    /// The scripts, if any are loaded.
    scripts: Option<Scripts>,
    /// When the service started (scripts' `uptime()`).
    started: Instant,
}

impl Service {
    /// A service with the built-in table.
    pub fn new(registry: Registry) -> Service {
        Service {
            table: CommandTable::builtin(),
            registry: Rc::new(RefCell::new(registry)),
            control: Control::default(),
            scripts: None,
            started: Instant::now(),
        }
    }

    /// Loads the scripts of `dir` and adds their keys to the table.
    /// Returns the script files loaded.
    pub fn load_scripts(&mut self, dir: &Path, limits: Limits) -> Result<Vec<String>, LoadError> {
        let builtins = CommandTable::builtin();
        let scripts = Scripts::load(dir, limits, Rc::clone(&self.registry), self.started, &|k| {
            builtins.contains(k.as_bytes())
        })?;
        Ok(self.install(scripts))
    }

    /// Loads the scripts again (SIGHUP). On error the scripts in force
    /// stay, and the error says why.
    pub fn reload_scripts(&mut self) -> Result<Vec<String>, LoadError> {
        let Some(old) = &self.scripts else {
            return Ok(Vec::new());
        };
        let builtins = CommandTable::builtin();
        let scripts = old.reload(&|k| builtins.contains(k.as_bytes()))?;
        Ok(self.install(scripts))
    }

    fn install(&mut self, scripts: Scripts) -> Vec<String> {
        self.table = CommandTable::with_scripts(&scripts);
        self.registry
            .borrow_mut()
            .record_events(scripts.has_hooks());
        let files = scripts.files().iter().map(|f| f.to_string()).collect();
        self.scripts = Some(scripts);
        files
    }

    /// Runs the hooks of events committed since the last call.
    pub fn run_hooks(&mut self) {
        let Some(scripts) = &mut self.scripts else {
            return;
        };
        let events = self.registry.borrow_mut().take_events();
        if !events.is_empty() {
            scripts.fire_registry_events(events);
        }
    }

    /// Runs the hooks of a client connecting (`true`) or going away.
    pub fn client_event(&mut self, id: u64, connected: bool) {
        if let Some(scripts) = &mut self.scripts {
            scripts.fire_client(id, connected);
        }
    }

    /// The registry, to read.
    pub fn registry(&self) -> Ref<'_, Registry> {
        self.registry.borrow()
    }

    /// The registry, to change.
    pub fn registry_mut(&self) -> RefMut<'_, Registry> {
        self.registry.borrow_mut()
    }

    /// Runs one message on a connection speaking `version`.
    pub fn dispatch(&mut self, version: u8, key: &[u8], value: &Value, tagged: bool) -> Reply {
        let Some(cmd) = self.table.get(key).copied() else {
            return Reply::NotSupported;
        };
        if cmd.min_version > version {
            return Reply::NotSupported;
        }
        match cmd.handler {
            Handler::Builtin(f) => {
                let mut registry = self.registry.borrow_mut();
                let mut ctx = Ctx {
                    registry: &mut registry,
                    table: &self.table,
                    control: &mut self.control,
                    tagged,
                };
                f(&mut ctx, value)
            }
            // No borrow of the registry is held here: the script's host
            // functions take their own.
            Handler::Script(index) => match &mut self.scripts {
                Some(scripts) => scripts.call(index, value),
                None => Reply::NotSupported,
            },
        }
    }
}
