//! The daemon's state: settings and torrents, and their persistence.
//!
//! Nothing here knows about frames or sockets. Changes are made in memory
//! and recorded in a journal; [`Registry::commit`] makes all changes since
//! the last commit durable at once (the reactor calls it once per loop
//! turn), or undoes them all if the disk refuses.
//!
//! State directory layout:
//! - `settings.benc`: the settings dict;
//! - `torrents.benc`: a list of `{hash, directory, running, verified,
//!   downloaded, uploaded, added, done, activity, edited, labels?}` (and a
//!   magnet's hints for a torrent still fetching its metadata);
//! - `torrents/<hash>.torrent`: the daemon's copy of each metainfo file;
//! - `lock`: the running daemon's pid, held with `flock`.

pub mod magnet;
pub mod metainfo;
pub mod settings;
pub mod store;
pub mod torrents;

use std::fmt;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use log::{error, info, warn};

use crate::codec::{decode, EncodeError, Value};
pub use metainfo::{Metainfo, MetainfoError};
pub use settings::{Encryption, Settings};
pub use torrents::{
    CheckEvent, Dates, DhtReport, Hints, PeerInfo, PeersFrom, Phase, Torrent, TorrentError,
    Torrents, Transfer,
};

/// A state directory that cannot be used at all.
#[derive(Debug)]
pub struct OpenError(pub String);

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for OpenError {}

/// Why a commit failed; every change since the last commit was undone.
#[derive(Debug)]
pub enum CommitError {
    /// A file of the state directory could not be written or synced.
    Write {
        /// The file (or directory) concerned.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    /// The state could not be encoded (a bug, not the disk).
    Encode(EncodeError),
}

impl fmt::Display for CommitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommitError::Write { path, source } => {
                write!(f, "cannot save state: {}: {source}", path.display())
            }
            CommitError::Encode(e) => write!(f, "cannot save state: {e}"),
        }
    }
}

impl std::error::Error for CommitError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CommitError::Write { source, .. } => Some(source),
            CommitError::Encode(e) => Some(e),
        }
    }
}

impl From<EncodeError> for CommitError {
    fn from(e: EncodeError) -> Self {
        CommitError::Encode(e)
    }
}

/// Why a torrent could not be added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddError {
    /// The metainfo file could not be read.
    Read(String),
    /// The metainfo is not valid.
    Metainfo {
        /// The file it came from, if it came from a file.
        path: Option<PathBuf>,
        /// What is wrong with it.
        error: MetainfoError,
    },
    /// The data directory is not an absolute path.
    RelativeDirectory(String),
    /// A magnet link that cannot be used.
    Magnet(magnet::MagnetError),
}

impl fmt::Display for AddError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddError::Read(m) => f.write_str(m),
            AddError::Metainfo { path: None, error } => write!(f, "bad metainfo: {error}"),
            AddError::Metainfo {
                path: Some(p),
                error,
            } => write!(f, "bad metainfo: {}: {error}", p.display()),
            AddError::RelativeDirectory(d) => write!(f, "directory is not absolute: {d}"),
            AddError::Magnet(e) => write!(f, "bad magnet link: {e}"),
        }
    }
}

/// Something that happened to the state, reported (when asked for, see
/// [`Registry::record_events`]) once it is durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A torrent was added.
    Added {
        /// Its id.
        id: u64,
    },
    /// A torrent was started (its check queued).
    Started {
        /// Its id.
        id: u64,
    },
    /// A torrent was stopped.
    Stopped {
        /// Its id.
        id: u64,
    },
    /// A torrent was removed.
    Removed {
        /// Its id.
        id: u64,
        /// Its info hash, hex.
        hash: String,
        /// Its name.
        name: String,
    },
    /// A check of local data ended.
    Verified(CheckEvent),
    /// A torrent known by its info hash alone got its metadata.
    Metadata {
        /// Its id.
        id: u64,
    },
    /// A download completed: every piece is verified.
    Completed {
        /// Its id.
        id: u64,
    },
    /// A setting changed.
    SettingChanged {
        /// Its protocol key (`port`, `directory`, ...).
        name: &'static str,
    },
}

/// How to undo one change that has not been committed yet.
enum Undo {
    Settings(Box<Settings>),
    Added(u64),
    Removed(Box<Torrent>),
    Running(u64, bool),
    Verify(u64),
    Metadata(u64),
    Labels(u64, Vec<String>),
    Directory(u64, PathBuf),
}

/// Removals remembered for [`Registry::removed_since`], at most: a client
/// polling for recent changes learns of at least this many removed at
/// once (the RPC's `removed`; ten thousand torrents removed in one go
/// still fit).
pub const MAX_REMOVALS_KEPT: usize = 10_000;

/// How long a removal is remembered, in seconds: twice the RPC's window
/// for "recently active" (60 s), so a poll that comes late still hears.
pub const REMOVALS_KEPT_SECS: i64 = 120;

/// Labels a torrent may carry at most, and the longest label in bytes:
/// labels are a user's tags, a handful each (Transmission sets no bound;
/// these keep one request from growing the state file without end).
pub const MAX_LABELS: usize = 64;
/// The longest label, in bytes.
pub const MAX_LABEL_BYTES: usize = 256;

/// Settings and torrents, with their on-disk home.
pub struct Registry {
    dir: PathBuf,
    settings: Settings,
    torrents: Torrents,
    journal: Vec<Undo>,
    /// Torrent state changed without a journal entry (verification
    /// results): worth saving, nothing to undo.
    torrents_dirty: bool,
    settings_dirty: bool,
    new_copies: Vec<(PathBuf, Vec<u8>)>,
    old_copies: Vec<PathBuf>,
    /// Whether to keep [`Event`]s for [`Registry::take_events`].
    recording: bool,
    /// Events of changes not yet committed (dropped if undone).
    pending_events: Vec<Event>,
    /// Events of committed changes, not yet taken.
    events: Vec<Event>,
    /// Changes made since the registry was opened (undone ones included):
    /// the dispatcher compares it around a handler to know whether the
    /// reply must wait for the commit.
    changes: u64,
    /// Pieces verified by the engine since the last save.
    unsaved_progress: bool,
    /// Commits that wrote something, since the registry was opened.
    commits: u64,
    /// The wall-clock time last given, in seconds since the epoch: what
    /// torrents' dates are stamped with.
    wall: Option<i64>,
    /// Torrents removed lately (id, when), oldest first, bounded.
    removals: std::collections::VecDeque<(u64, i64)>,
    /// The DHT node, as the core last reported it.
    dht: DhtReport,
}

const SETTINGS_FILE: &str = "settings.benc";
const TORRENTS_FILE: &str = "torrents.benc";
const COPIES_DIR: &str = "torrents";

impl Registry {
    /// Opens (creating if needed) a state directory and loads what it
    /// holds. A file that cannot be understood is set aside with an error
    /// in the log, never overwritten; the daemon then starts without it.
    pub fn open(dir: &Path, defaults: Settings) -> Result<Registry, OpenError> {
        let fail = |what: &str, e: io::Error| OpenError(format!("{what} {}: {e}", dir.display()));
        std::fs::create_dir_all(dir.join(COPIES_DIR))
            .map_err(|e| fail("cannot create state directory", e))?;
        let mut reg = Registry {
            dir: dir.to_path_buf(),
            settings: defaults.clone(),
            torrents: Torrents::new(),
            journal: Vec::new(),
            torrents_dirty: false,
            settings_dirty: false,
            new_copies: Vec::new(),
            old_copies: Vec::new(),
            recording: false,
            pending_events: Vec::new(),
            events: Vec::new(),
            changes: 0,
            unsaved_progress: false,
            commits: 0,
            wall: None,
            removals: std::collections::VecDeque::new(),
            dht: DhtReport::default(),
        };
        if let Some(v) = reg.load_file(SETTINGS_FILE)? {
            match Settings::from_value(&v, defaults) {
                Ok(s) => reg.settings = s,
                Err(why) => reg.set_aside(SETTINGS_FILE, &why)?,
            }
        }
        if let Some(v) = reg.load_file(TORRENTS_FILE)? {
            if let Err(why) = reg.load_torrents(&v) {
                reg.torrents = Torrents::new();
                reg.set_aside(TORRENTS_FILE, &why)?;
            }
        }
        Ok(reg)
    }

    fn load_file(&self, name: &str) -> Result<Option<Value>, OpenError> {
        let path = self.dir.join(name);
        let bytes = store::read_optional(&path)
            .map_err(|e| OpenError(format!("cannot read {}: {e}", path.display())))?;
        let Some(bytes) = bytes else {
            return Ok(None);
        };
        match decode(&bytes) {
            Ok(v) => Ok(Some(v)),
            Err(e) => {
                self.set_aside(name, &e.to_string())?;
                Ok(None)
            }
        }
    }

    fn set_aside(&self, name: &str, why: &str) -> Result<(), OpenError> {
        let path = self.dir.join(name);
        let aside = store::set_aside(&path).map_err(|e| {
            OpenError(format!(
                "{} is corrupt ({why}) and cannot be moved aside: {e}",
                path.display()
            ))
        })?;
        error!(
            "{} is corrupt ({why}); kept as {} and starting without it",
            path.display(),
            aside.display()
        );
        Ok(())
    }

    fn load_torrents(&mut self, v: &Value) -> Result<(), String> {
        let list = v.as_list().ok_or("not a list")?;
        for (i, entry) in list.iter().enumerate() {
            let hash = entry
                .get("hash")
                .and_then(Value::as_bytes)
                .and_then(|h| <[u8; 20]>::try_from(h).ok())
                .ok_or(format!("entry {i} has no 20-byte hash"))?;
            let directory = entry
                .get("directory")
                .and_then(Value::as_bytes)
                .ok_or(format!("entry {i} has no directory"))?;
            let running = entry.get("running").and_then(Value::as_int).unwrap_or(0) != 0;
            let total = |k: &str| {
                let n = entry.get(k).and_then(Value::as_int).unwrap_or(0);
                u64::try_from(n).unwrap_or(0)
            };
            let (downloaded, uploaded) = (total("downloaded"), total("uploaded"));
            let date = |k: &str| entry.get(k).and_then(Value::as_int).unwrap_or(0);
            let verified = entry
                .get("verified")
                .and_then(Value::as_bytes)
                .unwrap_or_default();
            let copy = self.copy_path(&hash);
            let pending = entry.get("pending").and_then(Value::as_int).unwrap_or(0) != 0;
            // A torrent still fetching its metadata has no copy yet; one
            // whose metadata arrived just before a crash may have one
            // already, which then wins.
            let meta = match std::fs::read(&copy) {
                Err(e) if pending && e.kind() == io::ErrorKind::NotFound => None,
                read => {
                    let parsed = read
                        .map_err(|e| e.to_string())
                        .and_then(|b| Metainfo::parse(&b).map_err(|e| e.to_string()));
                    match parsed {
                        Ok(m) if m.info_hash == hash => Some(m),
                        Ok(_) => {
                            error!(
                                "{}: hash does not match its name; torrent skipped",
                                copy.display()
                            );
                            continue;
                        }
                        Err(e) => {
                            error!("{}: {e}; torrent skipped", copy.display());
                            continue;
                        }
                    }
                }
            };
            if self.torrents.lookup(&hash).is_some() {
                warn!(
                    "torrent {} listed twice in state; keeping the first",
                    metainfo::hex(&hash)
                );
                continue;
            }
            let dir = PathBuf::from(std::ffi::OsString::from_vec(directory.to_vec()));
            let id = match meta {
                Some(meta) => self.torrents.insert(meta, copy, dir),
                None => self
                    .torrents
                    .insert_pending(hash, hints_of(entry), copy, dir),
            };
            self.torrents.load_bitfield(id, verified);
            if let Some(t) = self.torrents.get_mut(id) {
                t.transfer.downloaded = downloaded;
                t.transfer.uploaded = uploaded;
                t.totals_at_open = (downloaded, uploaded);
                t.dates.added = date("added");
                t.dates.done = date("done");
                t.dates.activity = date("activity");
                t.dates.edited = date("edited");
                t.labels = labels_of(entry);
            }
            if running {
                // It was running: check its data again.
                self.torrents.start(id);
            }
        }
        info!("loaded {} torrents", self.torrents.len());
        Ok(())
    }

    fn copy_path(&self, hash: &[u8; 20]) -> PathBuf {
        self.dir
            .join(COPIES_DIR)
            .join(format!("{}.torrent", metainfo::hex(hash)))
    }

    fn journal(&mut self, undo: Undo) {
        self.journal.push(undo);
        self.changes += 1;
    }

    /// How many changes were made so far: it moves exactly when a handler
    /// changed something that a commit must make durable.
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// The DHT node as last reported.
    pub fn dht(&self) -> &DhtReport {
        &self.dht
    }

    /// The core's report of the DHT node (not state to save).
    pub fn set_dht(&mut self, report: DhtReport) {
        self.dht = report;
    }

    /// Commits that wrote something since the registry was opened.
    pub fn commits(&self) -> u64 {
        self.commits
    }

    /// The wall-clock time, in seconds since the epoch, that changes from
    /// now on are dated with (the daemon gives it once per loop turn; the
    /// registry reads no clock). The first time, torrents that started
    /// running when the state was loaded are dated as started now.
    pub fn set_wall_clock(&mut self, secs: i64) {
        if self.wall.is_none() {
            let running: Vec<u64> = self
                .torrents
                .iter()
                .filter(|t| t.running && t.dates.started == 0)
                .map(|t| t.id)
                .collect();
            for id in running {
                if let Some(t) = self.torrents.get_mut(id) {
                    t.dates.started = secs;
                }
            }
        }
        self.wall = Some(secs);
        while self
            .removals
            .front()
            .is_some_and(|(_, at)| *at < secs.saturating_sub(REMOVALS_KEPT_SECS))
        {
            self.removals.pop_front();
        }
    }

    fn now(&self) -> i64 {
        self.wall.unwrap_or(0)
    }

    /// Dates torrent `id` as changed now, through `also` more of its dates.
    fn touch(&mut self, id: u64, also: impl FnOnce(&mut Dates, i64)) {
        let now = self.now();
        if let Some(t) = self.torrents.get_mut(id) {
            t.dates.changed = now;
            also(&mut t.dates, now);
        }
    }

    /// Ids of torrents removed at `since` or later (seconds since the
    /// epoch), as far as they are remembered ([`MAX_REMOVALS_KEPT`],
    /// [`REMOVALS_KEPT_SECS`]).
    pub fn removed_since(&self, since: i64) -> Vec<u64> {
        self.removals
            .iter()
            .filter(|(_, at)| *at >= since)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Torrent `id` moved data: dated as active now, its totals saved
    /// with the progress.
    pub fn note_activity(&mut self, id: u64) {
        self.unsaved_progress = true;
        self.touch(id, |d, now| d.activity = now);
    }

    /// Replaces torrent `id`'s labels (the caller checked them against
    /// [`MAX_LABELS`] and [`MAX_LABEL_BYTES`]). Unknown ids are ignored.
    pub fn set_labels(&mut self, id: u64, labels: Vec<String>) {
        let Some(t) = self.torrents.get_mut(id) else {
            return;
        };
        if t.labels == labels {
            return;
        }
        let old = std::mem::replace(&mut t.labels, labels);
        self.journal(Undo::Labels(id, old));
        self.touch(id, |d, now| d.edited = now);
    }

    /// Torrent `id`'s data now lives in `directory` (absolute; the caller
    /// moved the files, or they are expected there): its data is checked
    /// again there. Unknown ids are ignored.
    pub fn set_directory(&mut self, id: u64, directory: PathBuf) -> Result<(), AddError> {
        if !directory.is_absolute() {
            return Err(AddError::RelativeDirectory(directory.display().to_string()));
        }
        let Some(t) = self.torrents.get_mut(id) else {
            return Ok(());
        };
        if t.directory == directory {
            return Ok(());
        }
        let old = std::mem::replace(&mut t.directory, directory);
        self.journal(Undo::Directory(id, old));
        self.touch(id, |d, now| d.edited = now);
        // A check under way was reading the old place: start it over.
        self.torrents.recheck(id);
        Ok(())
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The settings in force.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Keep events of committed changes for [`Registry::take_events`]
    /// (off by default, so that nobody's unread events pile up).
    pub fn record_events(&mut self, on: bool) {
        self.recording = on;
        if !on {
            self.pending_events.clear();
            self.events.clear();
        }
    }

    /// Events of changes committed since the last call, in order.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    fn event(&mut self, e: Event) {
        if self.recording {
            self.pending_events.push(e);
        }
    }

    /// Changes the settings (pending until the next commit).
    pub fn update_settings(&mut self, change: impl FnOnce(&mut Settings)) {
        let mut next = self.settings.clone();
        change(&mut next);
        if next != self.settings {
            for name in self.settings.differences(&next) {
                self.event(Event::SettingChanged { name });
            }
            let old = std::mem::replace(&mut self.settings, next);
            self.journal(Undo::Settings(Box::new(old)));
            self.settings_dirty = true;
        }
    }

    /// The torrents.
    pub fn torrents(&self) -> &Torrents {
        &self.torrents
    }

    /// Adds a torrent from a metainfo file on disk. The file is read whole
    /// (bounded by the metainfo size limit) and copied into the state
    /// directory at the next commit, so the original may go away.
    pub fn add_file(
        &mut self,
        path: &Path,
        directory: Option<PathBuf>,
        autostart: Option<bool>,
    ) -> Result<u64, AddError> {
        let read_err = |e: io::Error| {
            AddError::Read(if e.kind() == io::ErrorKind::NotFound {
                format!("file not found: {}", path.display())
            } else {
                format!("cannot read {}: {e}", path.display())
            })
        };
        // Opened without blocking (a FIFO would wait for a writer), then
        // judged by what was opened: only a regular file is read (a
        // device like /dev/zero would never end), and at most one byte
        // past the limit (a file may grow after the check).
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NONBLOCK)
            .open(path)
            .map_err(read_err)?;
        let meta = file.metadata().map_err(read_err)?;
        if !meta.is_file() {
            return Err(AddError::Read(format!(
                "{} is not a regular file",
                path.display()
            )));
        }
        let limit = metainfo::MAX_METAINFO_BYTES as u64;
        let mut bytes = Vec::with_capacity(meta.len().min(limit) as usize);
        io::Read::read_to_end(&mut io::Read::take(file, limit + 1), &mut bytes)
            .map_err(read_err)?;
        if bytes.len() as u64 > limit {
            return Err(AddError::Read(format!(
                "{} is over the metainfo limit of {limit} bytes",
                path.display()
            )));
        }
        self.add(bytes, directory, autostart).map_err(|e| match e {
            AddError::Metainfo { error, .. } => AddError::Metainfo {
                path: Some(path.to_path_buf()),
                error,
            },
            other => other,
        })
    }

    /// Adds a torrent from metainfo bytes, or finds it if already present
    /// (its id is returned either way). `directory` defaults to the
    /// settings' directory, `autostart` to the setting.
    pub fn add(
        &mut self,
        bytes: Vec<u8>,
        directory: Option<PathBuf>,
        autostart: Option<bool>,
    ) -> Result<u64, AddError> {
        let meta =
            Metainfo::parse(&bytes).map_err(|error| AddError::Metainfo { path: None, error })?;
        if let Some(id) = self.torrents.lookup(&meta.info_hash) {
            return Ok(id);
        }
        let directory = directory.unwrap_or_else(|| self.settings.directory.clone());
        if !directory.is_absolute() {
            return Err(AddError::RelativeDirectory(directory.display().to_string()));
        }
        let copy = self.copy_path(&meta.info_hash);
        self.old_copies.retain(|p| *p != copy);
        self.new_copies.push((copy.clone(), bytes));
        let id = self.torrents.insert(meta, copy, directory);
        self.added(id, autostart);
        Ok(id)
    }

    /// Adds a torrent known by its info hash alone (a magnet link's
    /// `hints`), or finds it if already present (its id is returned either
    /// way). Its metainfo copy is written once the metadata arrives
    /// ([`Registry::set_metadata`]).
    pub fn add_by_hash(
        &mut self,
        info_hash: [u8; 20],
        hints: Hints,
        directory: Option<PathBuf>,
        autostart: Option<bool>,
    ) -> Result<u64, AddError> {
        if let Some(id) = self.torrents.lookup(&info_hash) {
            // Its metadata not known yet: what the link adds helps find
            // it (saved with the next commit).
            if self.torrents.merge_hints(id, hints) {
                self.torrents_dirty = true;
                self.changes += 1;
            }
            return Ok(id);
        }
        let directory = directory.unwrap_or_else(|| self.settings.directory.clone());
        if !directory.is_absolute() {
            return Err(AddError::RelativeDirectory(directory.display().to_string()));
        }
        let copy = self.copy_path(&info_hash);
        let id = self
            .torrents
            .insert_pending(info_hash, hints, copy, directory);
        self.added(id, autostart);
        Ok(id)
    }

    /// What follows the insertion of a new torrent: journalled, dated,
    /// told, started if asked.
    fn added(&mut self, id: u64, autostart: Option<bool>) {
        self.journal(Undo::Added(id));
        self.event(Event::Added { id });
        self.touch(id, |d, now| d.added = now);
        if autostart.unwrap_or(self.settings.autostart) && self.torrents.start(id) {
            self.touch(id, |d, now| d.started = now);
            self.event(Event::Started { id });
        }
    }

    /// Adds a torrent from a magnet link (its info hash, name, trackers and
    /// peers), or finds it if already present, as
    /// [`Registry::add_by_hash`].
    pub fn add_magnet(
        &mut self,
        uri: &str,
        directory: Option<PathBuf>,
        autostart: Option<bool>,
    ) -> Result<u64, AddError> {
        let m = magnet::Magnet::parse(uri).map_err(AddError::Magnet)?;
        let hints = Hints {
            name: m.name,
            trackers: m.trackers,
            peers: m.peers,
        };
        self.add_by_hash(m.info_hash, hints, directory, autostart)
    }

    /// The info dictionary of torrent `id` arrived from peers (the caller
    /// checked its SHA-1 against the info hash): its metainfo file is
    /// written with the next commit, with the trackers its hints named,
    /// and a running torrent checks the data already in its folder.
    /// Returns whether the torrent gained its metadata now.
    pub fn set_metadata(&mut self, id: u64, info: &[u8]) -> Result<bool, MetainfoError> {
        let Some(t) = self.torrents.get(id) else {
            return Ok(false);
        };
        if t.meta.is_some() {
            return Ok(false);
        }
        let bytes = Metainfo::from_info(info, &t.hints.trackers);
        let meta = Metainfo::parse(&bytes)?;
        if meta.info_hash != t.info_hash {
            return Err(MetainfoError::Invalid(
                "the info dictionary does not match the info hash".into(),
            ));
        }
        let copy = t.saved_path.clone();
        if !self.torrents.set_metadata(id, meta) {
            return Ok(false);
        }
        self.old_copies.retain(|p| *p != copy);
        self.new_copies.push((copy, bytes));
        self.journal(Undo::Metadata(id));
        self.event(Event::Metadata { id });
        self.touch(id, |_, _| {});
        Ok(true)
    }

    /// Starts a torrent (queues a check of its data). Unknown ids are
    /// ignored.
    pub fn start(&mut self, id: u64) {
        if self.torrents.start(id) {
            self.journal(Undo::Running(id, false));
            self.event(Event::Started { id });
            self.touch(id, |d, now| d.started = now);
        }
    }

    /// Checks a torrent's data again (queued like any check). Unknown ids,
    /// and torrents already waiting for or under a check, are ignored.
    pub fn verify(&mut self, id: u64) {
        if self.torrents.verify(id) {
            // No event: scripts hear of the check when it ends.
            self.journal(Undo::Verify(id));
            self.touch(id, |_, _| {});
        }
    }

    /// Stops a torrent. Unknown ids are ignored.
    pub fn stop(&mut self, id: u64) {
        if self.torrents.stop(id) {
            self.journal(Undo::Running(id, true));
            self.event(Event::Stopped { id });
            self.touch(id, |_, _| {});
        }
    }

    /// Forgets a torrent; its saved metainfo copy is deleted once that is
    /// committed. Downloaded data is never touched.
    pub fn remove(&mut self, id: u64) {
        if let Some(t) = self.torrents.take(id) {
            self.new_copies.retain(|(p, _)| *p != t.saved_path);
            self.old_copies.push(t.saved_path.clone());
            self.event(Event::Removed {
                id,
                hash: t.hash_hex(),
                name: String::from_utf8_lossy(&t.name()).into_owned(),
            });
            self.journal(Undo::Removed(Box::new(t)));
            if self.removals.len() >= MAX_REMOVALS_KEPT {
                self.removals.pop_front();
            }
            self.removals.push_back((id, self.now()));
        }
    }

    /// The engine verified a downloaded piece. It is kept in memory and
    /// saved with the next commit (a restart checks the data again
    /// anyway, so nothing is lost meanwhile). Returns whether the torrent
    /// just became complete.
    pub fn piece_verified(&mut self, id: u64, piece: usize) -> bool {
        self.unsaved_progress = true;
        let done = self.torrents.piece_verified(id, piece);
        if done {
            self.event(Event::Completed { id });
            self.touch(id, |d, now| d.done = now);
        }
        done
    }

    /// Traffic totals moved: save them with the progress.
    pub fn note_progress(&mut self) {
        self.unsaved_progress = true;
    }

    /// Verified pieces wait to be saved.
    pub fn has_unsaved_progress(&self) -> bool {
        self.unsaved_progress
    }

    /// Saves the progress with the next commit.
    pub fn save_progress(&mut self) {
        if std::mem::take(&mut self.unsaved_progress) {
            self.torrents_dirty = true;
        }
    }

    /// The engine's report of torrent `id` (rates, peers, totals). The
    /// totals are saved with the next commit.
    pub fn transfer_mut(&mut self, id: u64) -> Option<&mut Transfer> {
        self.torrents.transfer_mut(id)
    }

    /// The engine could not read or write a torrent's data.
    pub fn data_error(&mut self, id: u64, error: TorrentError) {
        error!("torrent {id}: {}: {}", error.code, error.message);
        self.torrents.set_error(id, error);
    }

    /// Ids of every torrent, ascending.
    pub fn ids(&self) -> Vec<u64> {
        self.torrents.iter().map(|t| t.id).collect()
    }

    /// Verification work is waiting.
    pub fn has_work(&self) -> bool {
        self.torrents.has_work()
    }

    /// Runs one slice of verification, about `budget` bytes of hashing.
    pub fn work(&mut self, budget: u64) -> Vec<CheckEvent> {
        let events = self.torrents.work(budget);
        if !events.is_empty() {
            self.torrents_dirty = true;
            for e in &events {
                self.event(Event::Verified(e.clone()));
                match *e {
                    CheckEvent::Finished {
                        id, complete: true, ..
                    } => self.touch(id, |d, now| {
                        if d.done == 0 {
                            d.done = now;
                        }
                    }),
                    CheckEvent::Finished { id, .. } | CheckEvent::Failed { id, .. } => {
                        self.touch(id, |_, _| {})
                    }
                }
            }
        }
        events
    }

    /// Something changed since the last commit.
    pub fn needs_commit(&self) -> bool {
        !self.journal.is_empty() || self.torrents_dirty || self.settings_dirty
    }

    /// Makes every change since the last commit durable. On failure every
    /// journalled change is undone, so memory matches the disk again, and
    /// the reason is returned.
    pub fn commit(&mut self) -> Result<(), CommitError> {
        if !self.needs_commit() {
            return Ok(());
        }
        match self.write() {
            Ok(()) => {
                for old in std::mem::take(&mut self.old_copies) {
                    if let Err(e) = std::fs::remove_file(&old) {
                        if e.kind() != io::ErrorKind::NotFound {
                            warn!("cannot delete {}: {e}", old.display());
                        }
                    }
                }
                self.journal.clear();
                self.torrents_dirty = false;
                self.settings_dirty = false;
                self.events.append(&mut self.pending_events);
                self.commits += 1;
                Ok(())
            }
            Err(e) => {
                error!("{e}; undoing {} change(s)", self.journal.len());
                self.rollback();
                Err(e)
            }
        }
    }

    fn write(&mut self) -> Result<(), CommitError> {
        let failed = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CommitError::Write { path, source }
        };
        for (path, bytes) in &self.new_copies {
            store::replace_file(path, bytes).map_err(failed(path))?;
        }
        let copies = self.dir.join(COPIES_DIR);
        if !self.new_copies.is_empty() {
            store::sync_dir(&copies).map_err(failed(&copies))?;
        }
        if self.settings_dirty {
            let bytes = self.settings.to_value().to_bencode()?;
            let path = self.dir.join(SETTINGS_FILE);
            store::write_atomic(&path, &bytes).map_err(failed(&path))?;
        }
        if self.torrents_dirty || self.journal.iter().any(|u| !matches!(u, Undo::Settings(_))) {
            let bytes = self.torrents_value().to_bencode()?;
            let path = self.dir.join(TORRENTS_FILE);
            store::write_atomic(&path, &bytes).map_err(failed(&path))?;
        }
        self.new_copies.clear();
        Ok(())
    }

    fn rollback(&mut self) {
        for undo in std::mem::take(&mut self.journal).into_iter().rev() {
            match undo {
                Undo::Settings(old) => self.settings = *old,
                Undo::Added(id) => {
                    self.torrents.take(id);
                }
                Undo::Removed(t) => {
                    self.removals.retain(|(id, _)| *id != t.id);
                    self.torrents.restore(*t)
                }
                Undo::Running(id, true) => {
                    self.torrents.start(id);
                }
                Undo::Running(id, false) => {
                    self.torrents.stop(id);
                }
                // Undone in the turn that queued it: the check has not
                // begun (checks run after the commit).
                Undo::Verify(id) => self.torrents.unverify(id),
                Undo::Metadata(id) => self.torrents.unset_metadata(id),
                Undo::Labels(id, old) => {
                    if let Some(t) = self.torrents.get_mut(id) {
                        t.labels = old;
                    }
                }
                Undo::Directory(id, old) => {
                    if let Some(t) = self.torrents.get_mut(id) {
                        t.directory = old;
                    }
                    // The check queued for the new place is gone; the data
                    // in the old one is checked again.
                    self.torrents.recheck(id);
                }
            }
        }
        self.new_copies.clear();
        self.old_copies.clear();
        self.settings_dirty = false;
        // What was undone did not happen; verification results stand
        // (they are kept in memory and saved by a later commit).
        self.pending_events
            .retain(|e| matches!(e, Event::Verified(_)));
    }

    fn torrents_value(&self) -> Value {
        Value::List(self.torrents.iter().map(torrent_value).collect())
    }
}

/// A torrent's entry in `torrents.benc`. One still fetching its metadata
/// says so (`pending`) and keeps what its magnet link carried.
fn torrent_value(t: &Torrent) -> Value {
    let mut pairs = vec![
        (
            "directory",
            Value::Bytes(t.directory.as_os_str().as_bytes().to_vec()),
        ),
        ("hash", Value::Bytes(t.info_hash.to_vec())),
        ("running", Value::Int(t.running.into())),
        ("downloaded", Value::Int(t.transfer.downloaded as i64)),
        ("uploaded", Value::Int(t.transfer.uploaded as i64)),
        ("verified", Value::Bytes(t.bitfield())),
        ("added", Value::Int(t.dates.added)),
        ("done", Value::Int(t.dates.done)),
        ("activity", Value::Int(t.dates.activity)),
        ("edited", Value::Int(t.dates.edited)),
    ];
    if !t.labels.is_empty() {
        pairs.push((
            "labels",
            Value::List(t.labels.iter().map(|l| Value::str(l)).collect()),
        ));
    }
    if t.meta.is_none() {
        pairs.push(("pending", Value::Int(1)));
        if let Some(n) = &t.hints.name {
            pairs.push(("name", Value::str(n)));
        }
        let list = |items: Vec<String>| Value::List(items.iter().map(|s| Value::str(s)).collect());
        pairs.push(("trackers", list(t.hints.trackers.clone())));
        pairs.push((
            "peers",
            list(t.hints.peers.iter().map(|p| p.to_string()).collect()),
        ));
    }
    Value::dict(pairs)
}

/// The labels an entry of `torrents.benc` kept, bounded as when set.
fn labels_of(entry: &Value) -> Vec<String> {
    entry
        .get("labels")
        .and_then(Value::as_list)
        .unwrap_or_default()
        .iter()
        .filter_map(Value::as_str)
        .filter(|l| !l.is_empty() && l.len() <= MAX_LABEL_BYTES)
        .take(MAX_LABELS)
        .map(str::to_string)
        .collect()
}

/// The hints an entry of `torrents.benc` kept (what is malformed in it is
/// left out: it came from our own file, but a hand-edited one must not
/// stop the daemon).
fn hints_of(entry: &Value) -> Hints {
    let strings = |key: &str| -> Vec<String> {
        entry
            .get(key)
            .and_then(Value::as_list)
            .unwrap_or_default()
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
    };
    Hints {
        name: entry
            .get("name")
            .and_then(Value::as_str)
            .map(str::to_string),
        trackers: strings("trackers"),
        peers: strings("peers")
            .iter()
            .filter_map(|p| p.parse().ok())
            .collect(),
    }
    .bounded()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!(
            "{}/tests/data/fixtures/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    fn open(dir: &Path) -> Registry {
        Registry::open(dir, Settings::defaults("/dl".into())).unwrap()
    }

    #[test]
    fn settings_survive_a_reopen_only_once_committed() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = open(dir.path());
        r.update_settings(|s| s.port = 1234);
        assert!(r.needs_commit());
        drop(r);
        assert_eq!(open(dir.path()).settings().port, 9090);
        let mut r = open(dir.path());
        r.update_settings(|s| s.port = 1234);
        r.commit().unwrap();
        assert!(!r.needs_commit());
        assert_eq!(open(dir.path()).settings().port, 1234);
    }

    #[test]
    fn torrents_survive_a_reopen_and_duplicates_keep_their_id() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = open(dir.path());
        let a = r.add(fixture("hello.torrent"), None, Some(false)).unwrap();
        let b = r
            .add(fixture("multi.torrent"), Some("/data".into()), Some(false))
            .unwrap();
        assert_eq!(r.add(fixture("hello.torrent"), None, None).unwrap(), a);
        r.commit().unwrap();
        r.remove(a);
        r.commit().unwrap();
        assert!(!r
            .copy_path(
                &Metainfo::parse(&fixture("hello.torrent"))
                    .unwrap()
                    .info_hash
            )
            .exists());
        let r2 = open(dir.path());
        let ts: Vec<_> = r2.torrents().iter().collect();
        assert_eq!(ts.len(), 1);
        assert_eq!(ts[0].id, 1, "renumbered after a restart");
        assert_eq!(ts[0].directory, PathBuf::from("/data"));
        assert_eq!(ts[0].name(), b"multi");
        assert!(b > a);
    }

    #[test]
    fn a_failed_commit_undoes_every_change() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = open(dir.path());
        let id = r.add(fixture("hello.torrent"), None, Some(false)).unwrap();
        r.commit().unwrap();
        r.update_settings(|s| s.port = 1);
        r.remove(id);
        r.add(fixture("multi.torrent"), None, Some(false)).unwrap();
        // Make the state directory unwritable: a file where the copies go.
        let copies = dir.path().join(COPIES_DIR);
        std::fs::rename(&copies, dir.path().join("moved")).unwrap();
        std::fs::write(&copies, b"not a dir").unwrap();
        assert!(r.commit().is_err());
        assert_eq!(r.settings().port, 9090);
        let names: Vec<_> = r.torrents().iter().map(|t| t.name()).collect();
        assert_eq!(names, vec![b"hello.txt".to_vec()]);
        assert_eq!(r.torrents().iter().next().unwrap().id, id);
    }

    #[test]
    fn corrupt_files_are_set_aside_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(SETTINGS_FILE), b"d4:porti1e").unwrap();
        std::fs::write(dir.path().join(TORRENTS_FILE), b"i5e").unwrap();
        let r = open(dir.path());
        assert_eq!(r.settings().port, 9090);
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(names[0].starts_with("settings.benc.corrupt-"));
        assert!(names[1].starts_with("torrents"));
        assert!(names
            .iter()
            .any(|n| n.starts_with("torrents.benc.corrupt-")));
    }

    fn hints() -> Hints {
        Hints {
            name: Some("hello from a link".into()),
            trackers: vec!["udp://tracker.test:6969/announce".into()],
            peers: vec![
                "127.0.0.1:6881".parse().unwrap(),
                "[::1]:6882".parse().unwrap(),
            ],
        }
    }

    #[test]
    fn a_torrent_known_by_its_hash_alone_persists_and_gains_its_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Metainfo::parse(&fixture("hello.torrent")).unwrap();
        let mut r = open(dir.path());
        let id = r
            .add_by_hash(meta.info_hash, hints(), None, Some(true))
            .unwrap();
        assert_eq!(
            r.add_by_hash(meta.info_hash, Hints::default(), None, None),
            Ok(id),
            "a duplicate is found, not added"
        );
        r.commit().unwrap();
        assert!(!r.copy_path(&meta.info_hash).exists(), "no metainfo yet");

        // A restart keeps what the link carried.
        let mut r = open(dir.path());
        let t = r.torrents().iter().next().unwrap();
        let id = t.id;
        assert!(t.meta.is_none());
        assert_eq!(t.hints, hints());
        assert_eq!((t.running, t.phase), (true, Phase::FetchingMetadata));
        assert_eq!(t.name(), b"hello from a link");
        assert_eq!(t.tiers()[0][0].address, "tracker.test");
        assert_eq!(t.total_size(), 0);

        // A wrong info dictionary is refused; the right one gives the
        // torrent its pieces and a check of its folder.
        let other = Metainfo::parse(&fixture("multi.torrent")).unwrap();
        assert!(r.set_metadata(id, &other.info).is_err());
        assert_eq!(r.set_metadata(id, &meta.info), Ok(true));
        assert_eq!(r.set_metadata(id, &meta.info), Ok(false), "once");
        let t = r.torrents().get(id).unwrap();
        assert_eq!(t.phase, Phase::WaitingCheck);
        assert_eq!(t.meta.as_ref().unwrap().info, meta.info);
        assert_eq!(t.tiers()[0][0].url, "udp://tracker.test:6969/announce");
        r.commit().unwrap();
        assert!(r.copy_path(&meta.info_hash).exists());

        let r = open(dir.path());
        let t = r.torrents().iter().next().unwrap();
        assert_eq!(t.meta.as_ref().map(|m| m.info_hash), Some(meta.info_hash));
        assert_eq!(t.name(), b"hello.txt");
        assert_eq!(t.phase, Phase::WaitingCheck, "running: checked again");
    }

    #[test]
    fn only_regular_files_within_the_limit_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = open(dir.path());
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        for (path, want) in [
            (
                fifo.clone(),
                format!("{} is not a regular file", fifo.display()),
            ),
            (
                "/dev/zero".into(),
                "/dev/zero is not a regular file".to_string(),
            ),
            (
                dir.path().to_path_buf(),
                format!("{} is not a regular file", dir.path().display()),
            ),
        ] {
            assert_eq!(r.add_file(&path, None, None), Err(AddError::Read(want)));
        }
        let big = dir.path().join("big.torrent");
        let f = std::fs::File::create(&big).unwrap();
        f.set_len(metainfo::MAX_METAINFO_BYTES as u64 + 1).unwrap();
        assert!(
            matches!(r.add_file(&big, None, None), Err(AddError::Read(m)) if m.contains("over the metainfo limit"))
        );
    }

    #[test]
    fn dates_labels_and_directory_are_kept_and_undone() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = open(dir.path());
        r.set_wall_clock(1_000);
        let id = r.add(fixture("hello.torrent"), None, Some(true)).unwrap();
        let t = r.torrents().get(id).unwrap();
        assert_eq!(
            (t.dates.added, t.dates.started, t.dates.done),
            (1_000, 1_000, 0)
        );
        r.set_labels(id, vec!["a".into(), "b c".into()]);
        r.commit().unwrap();
        r.set_wall_clock(1_010);
        r.note_activity(id);
        r.save_progress();
        r.commit().unwrap();

        // A failed commit takes labels and directory back.
        r.set_labels(id, vec!["x".into()]);
        r.set_directory(id, "/elsewhere".into()).unwrap();
        assert!(r.set_directory(id, "rel".into()).is_err());
        // torrents.benc cannot be replaced by a non-empty directory.
        let file = dir.path().join(TORRENTS_FILE);
        std::fs::rename(&file, dir.path().join("kept")).unwrap();
        std::fs::create_dir(&file).unwrap();
        std::fs::write(file.join("x"), b"").unwrap();
        assert!(r.commit().is_err());
        let t = r.torrents().get(id).unwrap();
        assert_eq!(t.labels, ["a", "b c"]);
        assert_eq!(t.directory, PathBuf::from("/dl"));
        std::fs::remove_dir_all(&file).unwrap();
        std::fs::rename(dir.path().join("kept"), &file).unwrap();

        let mut r = open(dir.path());
        let t = r.torrents().iter().next().unwrap();
        let id = t.id;
        assert_eq!(t.labels, ["a", "b c"]);
        assert_eq!((t.dates.added, t.dates.activity), (1_000, 1_010));
        assert_eq!(t.dates.started, 0, "dated by the first clock given");
        r.set_wall_clock(2_000);
        assert_eq!(r.torrents().get(id).unwrap().dates.started, 2_000);
        r.remove(id);
        assert_eq!(r.removed_since(1_990), [id]);
        assert!(r.removed_since(2_001).is_empty());
        r.set_wall_clock(2_000 + REMOVALS_KEPT_SECS + 1);
        assert!(r.removed_since(0).is_empty(), "forgotten after a while");
    }

    #[test]
    fn metadata_that_cannot_be_saved_is_taken_back() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Metainfo::parse(&fixture("hello.torrent")).unwrap();
        let mut r = open(dir.path());
        let id = r
            .add_by_hash(meta.info_hash, hints(), None, Some(true))
            .unwrap();
        r.commit().unwrap();
        assert_eq!(r.set_metadata(id, &meta.info), Ok(true));
        let copies = dir.path().join(COPIES_DIR);
        std::fs::rename(&copies, dir.path().join("moved")).unwrap();
        std::fs::write(&copies, b"not a dir").unwrap();
        assert!(r.commit().is_err());
        let t = r.torrents().get(id).unwrap();
        assert!(t.meta.is_none());
        assert_eq!(t.phase, Phase::FetchingMetadata);
        assert!(!r.has_work(), "no check of what is not known");
    }
}
