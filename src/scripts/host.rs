//! What the scripts' host functions share with the daemon, and the names
//! of the events they may hook: the part of the scripts module that both
//! the engine's setup and the host API read.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Instant;

use rhai::{FnPtr, Map};

use super::convert::to_dynamic;
use crate::codec::Value;
use crate::registry::Registry;

/// Events scripts can hook, by the name `on_event` takes.
pub const EVENTS: &[&str] = &[
    "torrent-added",
    "torrent-started",
    "torrent-metadata",
    "torrent-stopped",
    "torrent-completed",
    "torrent-removed",
    "verification-finished",
    "setting-changed",
    "client-connected",
    "client-disconnected",
    "peer-connected",
    "peer-disconnected",
];

/// What the host functions share with the daemon.
pub(super) struct Host {
    pub(super) registry: Rc<RefCell<Registry>>,
    /// When the call in progress must stop.
    pub(super) deadline: Cell<Option<Instant>>,
    /// When the daemon started (for `uptime()`).
    pub(super) started: Instant,
    /// File name of the script running, for log lines.
    pub(super) current: RefCell<Rc<str>>,
    /// Registrations made by the top level of the script loading now;
    /// `None` once loading is over (registering then is an error).
    pub(super) collecting: RefCell<Option<Collected>>,
}

#[derive(Default)]
pub(super) struct Collected {
    pub(super) keys: Vec<(String, FnPtr)>,
    pub(super) hooks: Vec<(String, FnPtr)>,
}

/// A sorted view of settings for scripts.
pub(super) fn settings_map(reg: &Registry) -> Map {
    let mut m = BTreeMap::new();
    if let Value::Dict(pairs) = reg.settings().to_value() {
        for (k, v) in pairs {
            m.insert(String::from_utf8_lossy(&k).as_ref().into(), to_dynamic(&v));
        }
    }
    m
}
