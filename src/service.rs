//! The command service: the table, the state it acts on and the scripts,
//! one floor above both the built-in handlers and the scripts. It runs
//! every message of every connection, and it alone decides whether a
//! reply waits for the disk.

use std::cell::{Ref, RefCell, RefMut};
use std::path::Path;
use std::rc::Rc;
use std::time::Instant;

use crate::codec::Value;
use crate::commands::{CommandTable, Control, Ctx, Handler};
use crate::registry::Registry;
use crate::reply::{Dispatch, Dispatched, Reply};
use crate::scripts::{Limits, LoadError, Scripts};

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
        self.table = CommandTable::with_script_keys(scripts.keys());
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

    /// Runs the hooks of a peer of torrent `id` connecting or going away.
    pub fn peer_event(&mut self, id: u64, address: &str, connected: bool) {
        if let Some(scripts) = &mut self.scripts {
            scripts.fire_peer(id, address, connected);
        }
    }

    /// The registry itself, for the torrent core that shares it.
    pub fn shared_registry(&self) -> Rc<RefCell<Registry>> {
        Rc::clone(&self.registry)
    }

    /// The registry, to read.
    pub fn registry(&self) -> Ref<'_, Registry> {
        self.registry.borrow()
    }

    /// The registry, to change.
    pub fn registry_mut(&self) -> RefMut<'_, Registry> {
        self.registry.borrow_mut()
    }

    fn run(&mut self, handler: Handler, value: &Value, tagged: bool) -> Reply {
        match handler {
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

impl Dispatch for Service {
    /// Runs one message. The reply waits for the commit exactly when the
    /// handler (built-in or script) moved the registry's change counter:
    /// a read-only reply never waits, whatever other clients changed.
    fn dispatch(&mut self, version: u8, key: &[u8], value: &Value, tagged: bool) -> Dispatched {
        let Some(cmd) = self.table.get(key).copied() else {
            return Reply::NotSupported.into();
        };
        if cmd.min_version > version {
            return Reply::NotSupported.into();
        }
        let before = {
            let reg = self.registry.borrow();
            (reg.changes(), reg.settings().port)
        };
        let reply = self.run(cmd.handler, value, tagged);
        let reg = self.registry.borrow();
        Dispatched {
            reply,
            durable: reg.changes() != before.0,
            rebinds: reg.settings().port != before.1,
        }
    }

    fn quitting(&self) -> bool {
        self.control.quit
    }
}
