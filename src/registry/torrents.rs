//! Torrents as the daemon knows them, and the verification of their data.
//!
//! There is no peer engine: a torrent is its metainfo, where its data
//! lives, whether the user wants it running, and which pieces on disk
//! match their hashes. Verification is cut into slices of a byte budget so
//! that the single-threaded daemon keeps answering clients meanwhile.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sha1::{Digest, Sha1};

use super::metainfo::{Metainfo, Tracker};

/// Where a torrent is in its life, as the protocol's `state` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Not running.
    Paused,
    /// Running, known by its info hash alone: its metadata (the info
    /// dictionary) is being fetched from peers.
    FetchingMetadata,
    /// Running, waiting for its turn to be checked.
    WaitingCheck,
    /// Its data is being hashed.
    Checking,
    /// Running, some pieces missing or bad.
    Downloading,
    /// Running, every piece good.
    Seeding,
}

/// An error that stops a torrent, with the protocol's codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TorrentError {
    /// `io-parent`, `io-permissions`, `io-space`, `io-resource`, `io-other`…
    pub code: &'static str,
    /// What happened, for a person.
    pub message: String,
}

impl TorrentError {
    fn from_io(e: &io::Error, path: &Path) -> TorrentError {
        TorrentError::from_kind(
            e.kind(),
            e.raw_os_error(),
            format!("{}: {e}", path.display()),
        )
    }

    /// The protocol's `io-*` error for an io error of this kind.
    pub fn from_kind(kind: io::ErrorKind, raw: Option<i32>, message: String) -> TorrentError {
        let code = match kind {
            io::ErrorKind::NotFound => "io-parent",
            io::ErrorKind::PermissionDenied => "io-permissions",
            io::ErrorKind::StorageFull => "io-space",
            io::ErrorKind::OutOfMemory => "io-resource",
            _ if raw == Some(nix::libc::EMFILE) => "io-resource",
            _ => "io-other",
        };
        TorrentError { code, message }
    }
}

/// Trackers a torrent's hints may carry at most.
pub const MAX_HINT_TRACKERS: usize = 64;

/// Peer addresses a torrent's hints may carry at most.
pub const MAX_HINT_PEERS: usize = 200;

/// Longest display name kept from hints, in bytes.
pub const MAX_HINT_NAME: usize = 1024;

/// What is known of a torrent besides its metainfo: what a magnet link
/// carried. Before the metadata arrives it is all there is; after, its
/// trackers are in the metainfo file written then.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hints {
    /// A display name (`dn`).
    pub name: Option<String>,
    /// Tracker URLs (`tr`), each its own tier.
    pub trackers: Vec<String>,
    /// Peers to try first (`x.pe`).
    pub peers: Vec<std::net::SocketAddr>,
}

impl Hints {
    /// The hints cut to their bounds.
    pub fn bounded(mut self) -> Hints {
        if let Some(n) = &mut self.name {
            if n.len() > MAX_HINT_NAME {
                let mut cut = MAX_HINT_NAME;
                while !n.is_char_boundary(cut) {
                    cut -= 1;
                }
                n.truncate(cut);
            }
        }
        self.trackers.truncate(MAX_HINT_TRACKERS);
        self.peers.truncate(MAX_HINT_PEERS);
        self
    }
}

/// Where the DHT node stands, as the core last reported it (`get-dht`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DhtReport {
    /// The node runs.
    pub running: bool,
    /// Good nodes in the table(s).
    pub good_nodes: usize,
    /// Questionable nodes.
    pub questionable_nodes: usize,
    /// Buckets.
    pub buckets: usize,
    /// Lookups running and queued.
    pub lookups: usize,
    /// Datagrams in.
    pub packets_in: u64,
    /// Datagrams out.
    pub packets_out: u64,
    /// Info hashes we store peers for.
    pub stored_hashes: usize,
    /// Queries answered.
    pub queries_answered: u64,
    /// Queries refused by the rate limits.
    pub queries_refused: u64,
}

/// Connected peers by how they came to us (the protocol's `peers-from`,
/// with tripcd's `dht`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeersFrom {
    /// Remembered, or named by a magnet link.
    pub cache: u32,
    /// Found through the DHT.
    pub dht: u32,
    /// They connected to us.
    pub incoming: u32,
    /// Peer exchange.
    pub pex: u32,
    /// A tracker named them.
    pub tracker: u32,
}

/// One torrent in the registry.
#[derive(Debug, Clone)]
pub struct Torrent {
    /// Id, unique while the daemon runs.
    pub id: u64,
    /// The torrent's identity: the SHA-1 of its info dictionary.
    pub info_hash: [u8; 20],
    /// The parsed metainfo, once known: a torrent added by its info hash
    /// alone has none until its metadata arrives from peers.
    pub meta: Option<Metainfo>,
    /// What a magnet link carried.
    pub hints: Hints,
    /// The daemon's own copy of the metainfo file.
    pub saved_path: PathBuf,
    /// The directory holding the torrent's data.
    pub directory: PathBuf,
    /// The user wants it running.
    pub running: bool,
    /// Where it is now.
    pub phase: Phase,
    /// Per piece: verified good on disk.
    pub verified: Vec<bool>,
    /// Bytes of verified pieces (kept in step with `verified`).
    pub completed: u64,
    /// Set when the data could not be read.
    pub error: Option<TorrentError>,
    /// What the engine reports of it (all zero while it does not run).
    pub transfer: Transfer,
    /// When things happened to it.
    pub dates: Dates,
    /// The user's labels, in the order given (set over the RPC).
    pub labels: Vec<String>,
    /// Its traffic totals (downloaded, uploaded) when this run of the
    /// daemon came to know it: this session's traffic is the difference.
    pub totals_at_open: (u64, u64),
}

/// When things happened to a torrent, in wall-clock seconds since the
/// epoch (0: never). The registry stamps them with the time it was last
/// given ([`super::Registry::set_wall_clock`]); it reads no clock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dates {
    /// Added (kept across restarts).
    pub added: i64,
    /// Last started, in this run of the daemon.
    pub started: i64,
    /// Became complete (kept across restarts).
    pub done: i64,
    /// Last moved data (kept across restarts).
    pub activity: i64,
    /// Last edited by a user: labels, location (kept across restarts).
    pub edited: i64,
    /// Last changed in any way a client sees (in this run).
    pub changed: i64,
}

impl Dates {
    /// The latest of them all: what "recently active" is judged by.
    pub fn latest(&self) -> i64 {
        [
            self.added,
            self.started,
            self.done,
            self.activity,
            self.edited,
            self.changed,
        ]
        .into_iter()
        .max()
        .unwrap_or(0)
    }
}

/// A torrent's traffic as the engine last reported it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Transfer {
    /// Payload bytes received since the torrent was added (kept across
    /// restarts).
    pub downloaded: u64,
    /// Payload bytes sent since the torrent was added (kept across
    /// restarts).
    pub uploaded: u64,
    /// Payload bytes/s received over the last seconds.
    pub download_rate: u64,
    /// Payload bytes/s sent over the last seconds.
    pub upload_rate: u64,
    /// Bytes/s of pieces that peers announced over the last seconds.
    pub swarm_rate: u64,
    /// Connected peers.
    pub peers: u32,
    /// Peers we receive from.
    pub peers_downloading: u32,
    /// Peers we send to.
    pub peers_uploading: u32,
    /// Connected peers by source.
    pub peers_from: PeersFrom,
    /// Seconds to completion at the current rate, -1 when unknown.
    pub eta: i64,
    /// How much of the info dictionary is fetched, 0 to 100 (100 once the
    /// metadata is known).
    pub metadata_percent: u8,
    /// Peers offering the metadata while it is fetched.
    pub metadata_peers: u32,
    /// The tracker in use: tier and position in it.
    pub tracker: Option<(usize, usize)>,
    /// Its last scrape: seeders, leechers, completed downloads (-1 when
    /// unknown).
    pub scrape: [i64; 3],
    /// Stopped, with its `stopped` announce still in flight.
    pub stopping: bool,
    /// The connected peers, as last reported (for scripts' `peers(id)`).
    pub peer_list: Vec<PeerInfo>,
    /// The tracker's complaint, if its last answer was one:
    /// `tracker-error` or `tracker-warning`, and its text.
    pub tracker_message: Option<(&'static str, String)>,
}

/// One connected peer, as the engine last reported it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PeerInfo {
    /// `ip:port`.
    pub address: String,
    /// Its client, from its peer id (Azureus style `-XX1234-`), or "".
    pub client: String,
    /// Payload bytes/s it sends us.
    pub download_rate: u64,
    /// Payload bytes/s we send it.
    pub upload_rate: u64,
    /// Share of the pieces it has, 0 to 1.
    pub progress: f64,
    /// We want its pieces.
    pub interested: bool,
    /// It chokes us.
    pub choked: bool,
    /// It wants our pieces.
    pub peer_interested: bool,
    /// We choke it.
    pub peer_choked: bool,
    /// It connected to us.
    pub incoming: bool,
}

impl Torrent {
    /// Where file `index` of this torrent lives on disk (its directory
    /// while the files are not known).
    pub fn file_path(&self, index: usize) -> PathBuf {
        let mut p = self.directory.clone();
        let Some(meta) = &self.meta else {
            return p;
        };
        if meta.multi_file {
            p.push(std::ffi::OsStr::from_bytes(&meta.name));
        }
        if let Some(f) = meta.files.get(index) {
            for part in &f.path {
                p.push(std::ffi::OsStr::from_bytes(part));
            }
        }
        p
    }

    /// The info hash as 40 lower-case hex digits.
    pub fn hash_hex(&self) -> String {
        super::metainfo::hex(&self.info_hash)
    }

    /// Its name: the metainfo's, else the hints' display name, else the
    /// info hash in hex.
    pub fn name(&self) -> Vec<u8> {
        match (&self.meta, &self.hints.name) {
            (Some(m), _) => m.name.clone(),
            (None, Some(n)) => n.as_bytes().to_vec(),
            (None, None) => self.hash_hex().into_bytes(),
        }
    }

    /// Bytes in all (0 while the metadata is not known).
    pub fn total_size(&self) -> u64 {
        self.meta.as_ref().map_or(0, Metainfo::total_size)
    }

    /// Its tracker tiers: the metainfo's, or before it the hints' (each
    /// its own tier).
    pub fn tiers(&self) -> std::borrow::Cow<'_, [Vec<Tracker>]> {
        match &self.meta {
            Some(m) => std::borrow::Cow::Borrowed(&m.tiers),
            None => std::borrow::Cow::Owned(
                self.hints
                    .trackers
                    .iter()
                    .filter_map(|u| Tracker::parse(u))
                    .map(|t| vec![t])
                    .collect(),
            ),
        }
    }

    /// BEP 27: peers only from the tracker (unknown before the metadata,
    /// which is what says it).
    pub fn is_private(&self) -> bool {
        self.meta.as_ref().is_some_and(|m| m.private)
    }

    fn set_verified(&mut self, piece: usize, good: bool) {
        let Some(meta) = &self.meta else {
            return;
        };
        let size = meta.geometry.piece_size(piece as u32);
        if let Some(slot) = self.verified.get_mut(piece) {
            if *slot != good {
                if good {
                    self.completed += size;
                } else {
                    self.completed -= size;
                }
                *slot = good;
            }
        }
    }

    fn clear_verified(&mut self) {
        self.verified.iter_mut().for_each(|v| *v = false);
        self.completed = 0;
    }

    /// Sets verified pieces from a bitfield (most significant bit first),
    /// as kept in the state file.
    pub fn load_bitfield(&mut self, bits: &[u8]) {
        for piece in 0..self.verified.len() {
            let good = bits
                .get(piece / 8)
                .is_some_and(|b| b & (0x80 >> (piece % 8)) != 0);
            self.set_verified(piece, good);
        }
    }

    /// Verified pieces as a bitfield (most significant bit first).
    pub fn bitfield(&self) -> Vec<u8> {
        let mut bits = vec![0u8; self.verified.len().div_ceil(8)];
        for (piece, _) in self.verified.iter().enumerate().filter(|(_, v)| **v) {
            bits[piece / 8] |= 0x80 >> (piece % 8);
        }
        bits
    }

    fn settle(&mut self) {
        self.phase = if !self.running {
            Phase::Paused
        } else if self.meta.is_none() {
            Phase::FetchingMetadata
        } else if self.completed == self.total_size() && self.error.is_none() {
            Phase::Seeding
        } else {
            Phase::Downloading
        };
    }
}

/// What a slice of verification work produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckEvent {
    /// Verification of torrent `id` finished.
    Finished {
        /// The torrent.
        id: u64,
        /// Bytes of good pieces.
        completed: u64,
        /// Every piece is good.
        complete: bool,
    },
    /// Verification stopped on an error that now marks the torrent.
    Failed {
        /// The torrent.
        id: u64,
        /// Its error.
        error: TorrentError,
    },
}

impl std::fmt::Display for CheckEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CheckEvent::Finished {
                id,
                completed,
                complete,
            } => write!(
                f,
                "torrent {id} verified: {completed} bytes in good pieces ({})",
                if *complete { "complete" } else { "incomplete" }
            ),
            CheckEvent::Failed { id, error } => write!(
                f,
                "torrent {id} verification failed: {} ({})",
                error.message, error.code
            ),
        }
    }
}

/// The check in progress: which piece, how far into it, and open files.
struct Check {
    id: u64,
    piece: usize,
    offset: u64,
    hasher: Sha1,
    piece_ok: bool,
    open: Option<(usize, Option<File>)>,
}

/// All torrents, ordered by id, and the verification queue.
#[derive(Default)]
pub struct Torrents {
    by_id: BTreeMap<u64, Torrent>,
    by_hash: HashMap<[u8; 20], u64>,
    next_id: u64,
    queue: VecDeque<u64>,
    current: Option<Check>,
    buf: Vec<u8>,
}

/// Largest single read while verifying.
const READ_CHUNK: usize = 256 << 10;

impl Torrents {
    /// An empty registry; ids start at 1.
    pub fn new() -> Torrents {
        Torrents {
            next_id: 1,
            ..Torrents::default()
        }
    }

    /// Number of torrents.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// No torrents at all.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Torrents in ascending id order.
    pub fn iter(&self) -> impl Iterator<Item = &Torrent> {
        self.by_id.values()
    }

    /// The torrent with this id.
    pub fn get(&self, id: u64) -> Option<&Torrent> {
        self.by_id.get(&id)
    }

    /// The id of the torrent with this info hash.
    pub fn lookup(&self, hash: &[u8; 20]) -> Option<u64> {
        self.by_hash.get(hash).copied()
    }

    /// Adds a torrent and returns its new id. The caller has checked that
    /// the hash is not present.
    pub fn insert(&mut self, meta: Metainfo, saved_path: PathBuf, directory: PathBuf) -> u64 {
        let info_hash = meta.info_hash;
        self.insert_record(
            info_hash,
            Some(meta),
            Hints::default(),
            saved_path,
            directory,
        )
    }

    /// Adds a torrent known by its info hash alone (what a magnet link
    /// says), and returns its new id. The caller has checked that the hash
    /// is not present.
    pub fn insert_pending(
        &mut self,
        info_hash: [u8; 20],
        hints: Hints,
        saved_path: PathBuf,
        directory: PathBuf,
    ) -> u64 {
        self.insert_record(info_hash, None, hints.bounded(), saved_path, directory)
    }

    fn insert_record(
        &mut self,
        info_hash: [u8; 20],
        meta: Option<Metainfo>,
        hints: Hints,
        saved_path: PathBuf,
        directory: PathBuf,
    ) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let pieces = meta.as_ref().map_or(0, |m| m.pieces.len());
        self.by_hash.insert(info_hash, id);
        self.by_id.insert(
            id,
            Torrent {
                id,
                info_hash,
                meta,
                hints,
                saved_path,
                directory,
                running: false,
                phase: Phase::Paused,
                verified: vec![false; pieces],
                completed: 0,
                error: None,
                transfer: Transfer {
                    eta: -1,
                    scrape: [-1; 3],
                    ..Transfer::default()
                },
                dates: Dates::default(),
                labels: Vec::new(),
                totals_at_open: (0, 0),
            },
        );
        id
    }

    /// Puts back a torrent taken out by [`Torrents::take`], under its old id
    /// (used to undo a change that could not be made durable).
    pub fn restore(&mut self, mut torrent: Torrent) {
        self.by_hash.insert(torrent.info_hash, torrent.id);
        let id = torrent.id;
        let running = torrent.running;
        torrent.running = false;
        torrent.phase = Phase::Paused;
        self.by_id.insert(id, torrent);
        if running {
            self.start(id);
        }
    }

    /// Restores a torrent's verified pieces from the state file's bitfield.
    pub fn load_bitfield(&mut self, id: u64, bits: &[u8]) {
        if let Some(t) = self.by_id.get_mut(&id) {
            t.load_bitfield(bits);
        }
    }

    /// Removes a torrent, stopping any check of it.
    pub fn take(&mut self, id: u64) -> Option<Torrent> {
        let t = self.by_id.remove(&id)?;
        self.by_hash.remove(&t.info_hash);
        self.cancel_check(id);
        Some(t)
    }

    /// Starts a torrent: queues a check of its data. Returns whether its
    /// running flag changed.
    pub fn start(&mut self, id: u64) -> bool {
        let Some(t) = self.by_id.get_mut(&id) else {
            return false;
        };
        let changed = !t.running;
        if changed || t.error.is_some() {
            t.running = true;
            t.error = None;
            let check = t.meta.is_some();
            // Nothing to check before the metadata.
            t.phase = if check {
                Phase::WaitingCheck
            } else {
                Phase::FetchingMetadata
            };
            self.cancel_check(id);
            if check {
                self.queue.push_back(id);
            }
        }
        changed
    }

    /// Adds what `hints` names that torrent `id` does not know yet
    /// (trackers, peers; a name if it has none), while its metadata is
    /// not known. Returns whether anything was added.
    pub fn merge_hints(&mut self, id: u64, hints: Hints) -> bool {
        let Some(t) = self.by_id.get_mut(&id).filter(|t| t.meta.is_none()) else {
            return false;
        };
        let before = t.hints.clone();
        let h = &mut t.hints;
        if h.name.is_none() {
            h.name = hints.name;
        }
        for tr in hints.trackers {
            if !h.trackers.contains(&tr) {
                h.trackers.push(tr);
            }
        }
        for p in hints.peers {
            if !h.peers.contains(&p) {
                h.peers.push(p);
            }
        }
        *h = std::mem::take(h).bounded();
        t.hints != before
    }

    /// The torrent's metadata arrived (and matched its info hash): it
    /// gains its pieces and files, and a running one checks the data
    /// already in its folder. Returns whether it changed (not when it had
    /// metadata already).
    pub fn set_metadata(&mut self, id: u64, meta: Metainfo) -> bool {
        let Some(t) = self.by_id.get_mut(&id) else {
            return false;
        };
        if t.meta.is_some() || meta.info_hash != t.info_hash {
            return false;
        }
        t.verified = vec![false; meta.pieces.len()];
        t.completed = 0;
        t.meta = Some(meta);
        if t.running {
            t.phase = Phase::WaitingCheck;
            self.queue.push_back(id);
        }
        true
    }

    /// Takes back a [`Torrents::set_metadata`] that could not be made
    /// durable: known by its info hash alone again.
    pub fn unset_metadata(&mut self, id: u64) {
        self.cancel_check(id);
        if let Some(t) = self.by_id.get_mut(&id) {
            t.meta = None;
            t.verified.clear();
            t.completed = 0;
            t.settle();
        }
    }

    /// Queues a check of a torrent's data again (protocol 1.20's
    /// `verify`), whether it runs or not; a running torrent moves no data
    /// until the check ends. Returns whether a check was queued (not when
    /// one is already queued or under way).
    pub fn verify(&mut self, id: u64) -> bool {
        let Some(t) = self.by_id.get_mut(&id) else {
            return false;
        };
        if t.meta.is_none() || matches!(t.phase, Phase::WaitingCheck | Phase::Checking) {
            return false;
        }
        t.phase = Phase::WaitingCheck;
        self.queue.push_back(id);
        true
    }

    /// Checks a torrent's data again from the start, abandoning a check
    /// under way or queued (its data moved). Returns whether a check was
    /// queued (not before the metadata is known).
    pub fn recheck(&mut self, id: u64) -> bool {
        self.cancel_check(id);
        let Some(t) = self.by_id.get_mut(&id) else {
            return false;
        };
        if t.meta.is_none() {
            return false;
        }
        t.phase = Phase::WaitingCheck;
        self.queue.push_back(id);
        true
    }

    /// Takes back a [`Torrents::verify`] whose check has not begun.
    pub fn unverify(&mut self, id: u64) {
        self.cancel_check(id);
        if let Some(t) = self.by_id.get_mut(&id) {
            t.settle();
        }
    }

    /// Stops a torrent, abandoning any check. Returns whether its running
    /// flag changed.
    pub fn stop(&mut self, id: u64) -> bool {
        let Some(t) = self.by_id.get_mut(&id) else {
            return false;
        };
        let changed = t.running;
        t.running = false;
        t.phase = Phase::Paused;
        self.cancel_check(id);
        changed
    }

    fn cancel_check(&mut self, id: u64) {
        self.queue.retain(|q| *q != id);
        if self.current.as_ref().is_some_and(|c| c.id == id) {
            self.current = None;
        }
    }

    /// A piece downloaded and checked by the engine. Returns whether the
    /// torrent just became complete (then it is seeding).
    pub fn piece_verified(&mut self, id: u64, piece: usize) -> bool {
        let Some(t) = self.by_id.get_mut(&id) else {
            return false;
        };
        let was = t.completed == t.total_size();
        t.set_verified(piece, true);
        if t.phase == Phase::Downloading {
            t.settle();
        }
        !was && t.completed == t.total_size()
    }

    /// The engine's report of torrent `id`, for `get-status`.
    pub fn transfer_mut(&mut self, id: u64) -> Option<&mut Transfer> {
        self.by_id.get_mut(&id).map(|t| &mut t.transfer)
    }

    /// The engine could not use the torrent's data: it stops moving data
    /// and shows the error until started again.
    pub fn set_error(&mut self, id: u64, error: TorrentError) {
        if let Some(t) = self.by_id.get_mut(&id) {
            t.error = Some(error);
        }
    }

    /// How far the check of torrent `id` got, 0 to 1: `None` when it is
    /// neither checked nor waiting for a check.
    pub fn check_progress(&self, id: u64) -> Option<f64> {
        match &self.current {
            Some(c) if c.id == id => {
                let pieces = self.by_id.get(&id)?.verified.len().max(1);
                Some(c.piece.min(pieces) as f64 / pieces as f64)
            }
            _ => self.queue.contains(&id).then_some(0.0),
        }
    }

    /// The torrent itself, to change what only the registry may.
    pub(super) fn get_mut(&mut self, id: u64) -> Option<&mut Torrent> {
        self.by_id.get_mut(&id)
    }

    /// There is verification work to do.
    pub fn has_work(&self) -> bool {
        self.current.is_some() || !self.queue.is_empty()
    }

    /// Hashes up to about `budget` bytes of queued verification work (at
    /// least one read, so work always progresses) and reports checks that
    /// ended.
    pub fn work(&mut self, budget: u64) -> Vec<CheckEvent> {
        let mut events = Vec::new();
        let mut spent = 0u64;
        while spent < budget.max(1) {
            if self.current.is_none() {
                let Some(id) = self.queue.pop_front() else {
                    break;
                };
                if let Some(ev) = self.begin_check(id) {
                    events.push(ev);
                }
                continue;
            }
            match self.step(budget.max(1) - spent) {
                Ok((n, ev)) => {
                    spent += n.max(1);
                    events.extend(ev);
                }
                Err((id, error)) => {
                    self.current = None;
                    if let Some(t) = self.by_id.get_mut(&id) {
                        t.error = Some(error.clone());
                        t.settle();
                    }
                    events.push(CheckEvent::Failed { id, error });
                }
            }
        }
        events
    }

    /// Starts checking `id`, or fails it at once if its directory is gone.
    fn begin_check(&mut self, id: u64) -> Option<CheckEvent> {
        let t = self.by_id.get_mut(&id)?;
        if t.meta.is_none() {
            t.settle();
            return None;
        }
        if let Err(e) = std::fs::read_dir(&t.directory) {
            let error = TorrentError::from_io(&e, &t.directory);
            t.error = Some(error.clone());
            t.settle();
            return Some(CheckEvent::Failed { id, error });
        }
        t.clear_verified();
        t.phase = Phase::Checking;
        self.current = Some(Check {
            id,
            piece: 0,
            offset: 0,
            hasher: Sha1::new(),
            piece_ok: true,
            open: None,
        });
        None
    }

    /// Hashes one read's worth of the current piece. Returns the bytes
    /// consumed and, when the check ended, its event.
    #[allow(clippy::type_complexity)]
    fn step(&mut self, budget: u64) -> Result<(u64, Option<CheckEvent>), (u64, TorrentError)> {
        let Some(check) = self.current.as_mut() else {
            return Ok((0, None));
        };
        let id = check.id;
        let Some(t) = self.by_id.get_mut(&id) else {
            self.current = None;
            return Ok((0, None));
        };
        let Some(meta) = &t.meta else {
            self.current = None;
            return Ok((0, None));
        };
        let pieces = meta.pieces.len();
        if check.piece >= pieces {
            let total = meta.total_size();
            self.current = None;
            t.settle();
            let complete = t.completed == total;
            return Ok((
                0,
                Some(CheckEvent::Finished {
                    id,
                    completed: t.completed,
                    complete,
                }),
            ));
        }
        let piece_size = meta.geometry.piece_size(check.piece as u32);
        let want = (piece_size - check.offset)
            .min(READ_CHUNK as u64)
            .min(budget.max(1)) as usize;
        let absolute = meta.geometry.piece_start(check.piece as u32) + check.offset;
        let (file_index, file_offset) = locate(&meta.files, absolute);
        let file_len = meta.files.get(file_index).map_or(0, |f| f.length);
        // A read never crosses into the next file.
        let want = want.min((file_len - file_offset) as usize).max(1);
        if check.open.as_ref().map(|(i, _)| *i) != Some(file_index) {
            let path = t.file_path(file_index);
            let file = match File::open(&path) {
                Ok(f) => Some(f),
                // Missing data is not an error: nothing to verify there.
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err((id, TorrentError::from_io(&e, &path))),
            };
            check.open = Some((file_index, file));
        }
        self.buf.resize(READ_CHUNK, 0);
        let chunk = &mut self.buf[..want];
        match check.open.as_ref().and_then(|(_, f)| f.as_ref()) {
            Some(f) if check.piece_ok => match f.read_exact_at(chunk, file_offset) {
                Ok(()) => check.hasher.update(&*chunk),
                // Short file: this piece cannot be good.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => check.piece_ok = false,
                Err(e) => return Err((id, TorrentError::from_io(&e, &t.file_path(file_index)))),
            },
            _ => check.piece_ok = false,
        }
        check.offset += want as u64;
        if check.offset == piece_size {
            let digest: [u8; 20] = std::mem::take(&mut check.hasher).finalize().into();
            let good = check.piece_ok && meta.pieces.get(check.piece) == Some(&digest);
            t.set_verified(check.piece, good);
            check.piece += 1;
            check.offset = 0;
            check.piece_ok = true;
        }
        Ok((want as u64, None))
    }
}

/// The file holding byte `absolute` of the torrent, and the offset in it.
/// Zero-length files hold nothing and are passed over.
fn locate(files: &[super::metainfo::FileEntry], absolute: u64) -> (usize, u64) {
    let mut start = 0u64;
    for (i, f) in files.iter().enumerate() {
        if absolute < start + f.length {
            return (i, absolute - start);
        }
        start += f.length;
    }
    (files.len().saturating_sub(1), 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn torrent_of(data: &[&[u8]], piece_length: u64, dir: &Path) -> Metainfo {
        // Build metainfo for files a0, a1, … holding `data`.
        let all: Vec<u8> = data.concat();
        let mut pieces = Vec::new();
        for chunk in all.chunks(piece_length as usize) {
            let h: [u8; 20] = Sha1::digest(chunk).into();
            pieces.extend_from_slice(&h);
        }
        let mut files = Vec::new();
        for (i, d) in data.iter().enumerate() {
            files.push(crate::codec::Value::dict([
                ("length", crate::codec::Value::Int(d.len() as i64)),
                (
                    "path",
                    crate::codec::Value::List(vec![crate::codec::Value::str(&format!("a{i}"))]),
                ),
            ]));
            std::fs::create_dir_all(dir.join("t")).unwrap();
            std::fs::write(dir.join("t").join(format!("a{i}")), d).unwrap();
        }
        let info = crate::codec::Value::dict([
            ("files", crate::codec::Value::List(files)),
            ("name", crate::codec::Value::str("t")),
            (
                "piece length",
                crate::codec::Value::Int(piece_length as i64),
            ),
            ("pieces", crate::codec::Value::Bytes(pieces)),
        ]);
        let file = crate::codec::Value::dict([("info", info)]);
        Metainfo::parse(&file.to_bencode().unwrap()).unwrap()
    }

    fn run_to_end(ts: &mut Torrents, budget: u64) -> Vec<CheckEvent> {
        let mut events = Vec::new();
        let mut turns = 0;
        while ts.has_work() {
            events.extend(ts.work(budget));
            turns += 1;
            assert!(turns < 100_000, "verification does not progress");
        }
        events
    }

    #[test]
    fn good_data_seeds_across_file_boundaries_and_any_budget() {
        let dir = tempfile::tempdir().unwrap();
        let meta = torrent_of(&[&[1u8; 100], &[], &[2u8; 37], &[3u8; 64]], 32, dir.path());
        for budget in [1, 7, 32, 1 << 20] {
            let mut ts = Torrents::new();
            let id = ts.insert(meta.clone(), "/x".into(), dir.path().into());
            ts.start(id);
            assert_eq!(ts.get(id).unwrap().phase, Phase::WaitingCheck);
            let events = run_to_end(&mut ts, budget);
            assert_eq!(
                events,
                vec![CheckEvent::Finished {
                    id,
                    completed: 201,
                    complete: true
                }]
            );
            assert_eq!(ts.get(id).unwrap().phase, Phase::Seeding);
        }
    }

    #[test]
    fn verify_queues_once_and_unverify_takes_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let meta = torrent_of(&[&[1u8; 100]], 32, dir.path());
        let mut ts = Torrents::new();
        let id = ts.insert(meta, "/x".into(), dir.path().into());
        ts.start(id);
        run_to_end(&mut ts, 1 << 20);
        assert_eq!(ts.get(id).unwrap().phase, Phase::Seeding);
        assert!(ts.verify(id));
        assert!(!ts.verify(id), "already waiting");
        assert!(!ts.verify(id + 1), "unknown");
        assert_eq!(ts.get(id).unwrap().phase, Phase::WaitingCheck);
        ts.unverify(id);
        assert_eq!(ts.get(id).unwrap().phase, Phase::Seeding);
        assert!(!ts.has_work());
        // A paused torrent is checked and stays paused.
        ts.stop(id);
        std::fs::write(dir.path().join("t/a0"), [0u8; 100]).unwrap();
        assert!(ts.verify(id));
        let events = run_to_end(&mut ts, 1 << 20);
        assert_eq!(
            events,
            vec![CheckEvent::Finished {
                id,
                completed: 0,
                complete: false
            }]
        );
        assert_eq!(ts.get(id).unwrap().phase, Phase::Paused);
    }

    #[test]
    fn a_bad_piece_leaves_exactly_the_good_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let meta = torrent_of(&[&[1u8; 100]], 32, dir.path());
        let mut corrupt = vec![1u8; 100];
        corrupt[40] = 9; // inside piece 1 (bytes 32..64)
        std::fs::write(dir.path().join("t/a0"), &corrupt).unwrap();
        let mut ts = Torrents::new();
        let id = ts.insert(meta, "/x".into(), dir.path().into());
        ts.start(id);
        ts.work(40);
        assert_eq!(ts.get(id).unwrap().phase, Phase::Checking);
        assert_eq!(ts.get(id).unwrap().completed, 32, "completed grows");
        run_to_end(&mut ts, 40);
        let t = ts.get(id).unwrap();
        assert_eq!(t.phase, Phase::Downloading);
        assert_eq!(t.completed, 100 - 32);
        assert_eq!(t.verified, vec![true, false, true, true]);
        assert_eq!(t.bitfield(), vec![0b1011_0000]);
    }

    #[test]
    fn missing_files_verify_nothing_without_error() {
        let dir = tempfile::tempdir().unwrap();
        let meta = torrent_of(&[&[1u8; 64], &[2u8; 64]], 32, dir.path());
        std::fs::remove_file(dir.path().join("t/a1")).unwrap();
        let mut ts = Torrents::new();
        let id = ts.insert(meta, "/x".into(), dir.path().into());
        ts.start(id);
        run_to_end(&mut ts, 1 << 20);
        let t = ts.get(id).unwrap();
        assert_eq!(
            (t.phase, t.completed, t.error.clone()),
            (Phase::Downloading, 64, None)
        );
    }

    #[test]
    fn missing_directory_is_an_io_parent_error() {
        let dir = tempfile::tempdir().unwrap();
        let meta = torrent_of(&[&[1u8; 64]], 32, dir.path());
        let mut ts = Torrents::new();
        let id = ts.insert(meta, "/x".into(), dir.path().join("nope"));
        ts.start(id);
        let events = run_to_end(&mut ts, 1 << 20);
        let t = ts.get(id).unwrap();
        assert_eq!(t.error.as_ref().unwrap().code, "io-parent");
        assert!(matches!(events[0], CheckEvent::Failed { .. }));
        assert_eq!(t.phase, Phase::Downloading);
    }

    #[test]
    fn stopping_cancels_the_check_and_ids_are_not_reused() {
        let dir = tempfile::tempdir().unwrap();
        let meta = torrent_of(&[&[1u8; 64]], 32, dir.path());
        let mut ts = Torrents::new();
        let id = ts.insert(meta.clone(), "/x".into(), dir.path().into());
        ts.start(id);
        ts.work(1);
        ts.stop(id);
        assert!(!ts.has_work());
        assert_eq!(ts.get(id).unwrap().phase, Phase::Paused);
        ts.take(id);
        let id2 = ts.insert(meta, "/x".into(), dir.path().into());
        assert_eq!(id2, id + 1);
    }

    #[test]
    fn bitfield_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let meta = torrent_of(&[&[1u8; 300]], 32, dir.path());
        let mut ts = Torrents::new();
        let id = ts.insert(meta, "/x".into(), dir.path().into());
        let t = ts.by_id.get_mut(&id).unwrap();
        t.load_bitfield(&[0b1000_0001, 0b1000_0000]);
        assert_eq!(
            t.completed,
            3 * 32,
            "pieces 0, 7 and 8 (the short last piece is 9)"
        );
        assert_eq!(t.bitfield(), vec![0b1000_0001, 0b1000_0000]);
    }
}
