//! One running torrent: its picker, storage, choker, peers and figures.

use std::collections::{HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use slab::Slab;

use super::metadata;
use super::peer::{Peer, Source};
use crate::engine::bitfield::Bitfield;
use crate::engine::choker::{Choker, PeerChokeInfo};
use crate::engine::disk::{Files, Outcome, PieceDone, PieceJob};
use crate::engine::geometry::Block;
use crate::engine::geometry::Geometry;
use crate::engine::picker::{PeerKey, Picker, Received};
use crate::engine::rate::RateMeter;
use crate::engine::storage::{Layout, Storage, StorageError};
use crate::peer::conn::{PeerConn, PeerError};
use crate::peer::fast::{allowed_fast_set, ALLOWED_FAST_COUNT};
use crate::peer::wire::Message;
use crate::registry::Torrent;

/// Addresses remembered per torrent (tracker answers, PEX), so that a
/// hostile tracker cannot grow memory without bound.
const MAX_CANDIDATES: usize = 1000;

/// What handling a peer's messages decided beyond that peer.
#[derive(Default)]
pub(super) struct Effects {
    /// Pieces verified and written.
    pub verified: Vec<u32>,
    /// Pieces complete in memory, for the disk thread to check and write,
    /// with the peers that sent their blocks.
    pub finished: Vec<(PieceJob, Vec<PeerKey>)>,
    /// Endgame duplicates to cancel: (peer, block).
    pub cancels: Vec<(PeerKey, Block)>,
    /// Writing a verified piece failed.
    pub storage_error: Option<StorageError>,
}

/// Why serving a peer stopped.
pub(super) enum ServeError {
    /// Our data could not be read.
    Storage(StorageError),
    /// The peer asked for a piece we do not have.
    Peer(PeerError),
}

/// What a session has once its metadata is known and its data checked:
/// the pieces to pick, check, write and serve.
pub(super) struct Pieces {
    hashes: Vec<[u8; 20]>,
    pub picker: Picker,
    storage: Storage,
    /// The files, shared with the pieces sent to the disk thread.
    files: Arc<Files>,
}

impl Pieces {
    /// The pieces of `t` (its metainfo known), those verified marked had;
    /// `None` if its geometry is beyond this engine.
    fn new(t: &Torrent, max_partial_bytes: u64) -> Option<Pieces> {
        let meta = t.meta.as_ref()?;
        let geometry = meta.geometry;
        let mut have = Bitfield::new(geometry.pieces() as usize);
        for (i, v) in t.verified.iter().enumerate() {
            have.set(i, *v);
        }
        let picker = Picker::new(geometry, &have, max_partial_bytes)?;
        let layout = Layout {
            geometry,
            files: meta.files.iter().map(|f| f.length).collect(),
        };
        let paths: Vec<_> = (0..meta.files.len()).map(|i| t.file_path(i)).collect();
        let files = Arc::new(Files {
            layout: layout.clone(),
            paths: paths.clone(),
        });
        Some(Pieces {
            hashes: meta.pieces.clone(),
            picker,
            storage: Storage::new(layout, paths),
            files,
        })
    }
}

/// Where a session is: known by its info hash alone, its geometry known
/// while its data is checked, or moving data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// No metadata yet: peers are dialled and greeted, nothing more.
    Fetching,
    /// The metadata arrived and the data in the folder is being checked:
    /// peers stay, nothing is requested or served.
    Checking,
    /// Pieces are requested and served.
    Moving,
}

pub(super) struct Session {
    pub id: u64,
    /// This run of the torrent: the disk thread's answers name it, so that
    /// those for an earlier run are told apart.
    pub instance: u64,
    pub info_hash: [u8; 20],
    /// BEP 27: peers come from the tracker only (no peer exchange).
    pub private: bool,
    /// The torrent's geometry, once its metadata is known.
    pub geometry: Option<Geometry>,
    /// Its pieces, once its data is checked.
    pub pieces: Option<Pieces>,
    /// Its metadata: fetched from peers, or served to them.
    pub metadata: metadata::Exchange,
    max_partial_bytes: u64,
    pub choker: Choker,
    pub peers: Vec<PeerKey>,
    candidates: VecDeque<(SocketAddr, Source)>,
    known: HashSet<SocketAddr>,
    pub down: RateMeter,
    pub up: RateMeter,
    pub swarm: RateMeter,
    pub downloaded: u64,
    pub uploaded: u64,
    /// `downloaded` and `uploaded` when last taken by the owner.
    pub reported: (u64, u64),
}

impl Session {
    /// Session `instance` for `t`: with its pieces when its metainfo is
    /// known (its data checked), else by its info hash alone. `None` if
    /// its geometry is out of bounds.
    pub fn new(
        t: &Torrent,
        instance: u64,
        max_partial_bytes: u64,
        now: Instant,
    ) -> Option<Session> {
        let pieces = match &t.meta {
            Some(_) => Some(Pieces::new(t, max_partial_bytes)?),
            None => None,
        };
        Some(Session {
            id: t.id,
            instance,
            info_hash: t.info_hash,
            private: t.is_private(),
            geometry: t.meta.as_ref().map(|m| m.geometry),
            pieces,
            metadata: metadata::Exchange::new(
                t.info_hash,
                t.meta.as_ref().map(|m| Arc::clone(&m.info)),
                t.is_private(),
            ),
            max_partial_bytes,
            choker: Choker::new(now),
            peers: Vec::new(),
            candidates: VecDeque::new(),
            known: HashSet::new(),
            down: RateMeter::new(now),
            up: RateMeter::new(now),
            swarm: RateMeter::new(now),
            downloaded: 0,
            uploaded: 0,
            reported: (0, 0),
        })
    }

    pub fn add_candidate(&mut self, addr: SocketAddr, source: Source) {
        if self.known.len() < MAX_CANDIDATES && self.known.insert(addr) {
            self.candidates.push_back((addr, source));
        }
    }

    /// Dials `addr` again next, though it is known (a plaintext retry).
    pub fn retry_candidate(&mut self, addr: SocketAddr, source: Source) {
        self.candidates.push_front((addr, source));
    }

    pub fn wants_peers(&self) -> bool {
        !self.candidates.is_empty()
    }

    pub fn next_candidate(&mut self) -> Option<(SocketAddr, Source)> {
        self.candidates.pop_front()
    }

    /// Where the session is.
    pub fn stage(&self) -> Stage {
        match (&self.geometry, &self.pieces) {
            (None, _) => Stage::Fetching,
            (Some(_), None) => Stage::Checking,
            (Some(_), Some(_)) => Stage::Moving,
        }
    }

    /// The metadata arrived: the torrent's geometry. `false` if it is
    /// beyond this engine.
    pub fn set_geometry(&mut self, t: &Torrent) -> bool {
        let Some(meta) = &t.meta else {
            return false;
        };
        self.private = meta.private;
        self.geometry = Some(meta.geometry);
        self.metadata.set_info(Arc::clone(&meta.info), meta.private);
        true
    }

    /// The data is checked: the pieces of `t` to move. `false` if its
    /// geometry is beyond this engine.
    pub fn set_pieces(&mut self, t: &Torrent) -> bool {
        self.pieces = Pieces::new(t, self.max_partial_bytes);
        self.pieces.is_some()
    }

    /// A peer's handshake is done: tell it what we have.
    pub fn attach(&mut self, conn: &mut PeerConn, has: &mut Bitfield) {
        *has = Bitfield::new(self.geometry.map_or(0, |g| g.pieces() as usize));
        let bits = self.pieces.as_ref().and_then(|p| {
            let ours = p.picker.have_bitfield();
            (ours.count() > 0).then(|| ours.as_bytes())
        });
        conn.attach(self.geometry, bits);
    }

    /// The peer's pieces, once its connection knows the geometry, as the
    /// picker counts them.
    pub fn count_peer(&mut self, conn: &PeerConn, has: &mut Bitfield) {
        let Some(g) = self.geometry else {
            return;
        };
        if let Some(theirs) = Bitfield::from_bytes(conn.peer_bitfield(), g.pieces() as usize) {
            *has = theirs;
            if let Some(p) = &mut self.pieces {
                p.picker.peer_bitfield(has);
            }
        }
    }

    /// Whether we have every piece.
    pub fn is_complete(&self) -> bool {
        self.pieces.as_ref().is_some_and(|p| p.picker.is_complete())
    }

    /// Bytes still missing (unknown before the data is checked: 0).
    pub fn missing_bytes(&self) -> u64 {
        self.pieces.as_ref().map_or(0, |p| p.picker.missing_bytes())
    }

    /// The pieces we have, once known.
    pub fn have_bitfield(&self) -> Option<&Bitfield> {
        self.pieces.as_ref().map(|p| p.picker.have_bitfield())
    }

    /// One message from peer `key` (already checked by its connection).
    pub fn handle(
        &mut self,
        key: PeerKey,
        msg: Message<'_>,
        has: &mut Bitfield,
        meter: &mut RateMeter,
        now: Instant,
        fx: &mut Effects,
    ) -> Result<(), PeerError> {
        if let Message::Interested | Message::NotInterested = msg {
            self.choker.force();
        }
        // Before the geometry the connection keeps what the peer has.
        let (Some(g), Some(p)) = (self.geometry, self.pieces.as_mut()) else {
            return Ok(());
        };
        match msg {
            Message::Bitfield(bits) => {
                let theirs = Bitfield::from_bytes(bits, g.pieces() as usize)
                    .ok_or(PeerError::BadBitfield("wrong size"))?;
                if has.count() == 0 {
                    *has = theirs;
                    p.picker.peer_bitfield(has);
                } else {
                    // A late one (the connection allows it): only new
                    // pieces count, availability being a plain count.
                    for i in theirs.iter_set() {
                        if !has.get(i) {
                            has.set(i, true);
                            p.picker.peer_have(i as u32);
                        }
                    }
                }
            }
            // Counted like a full bitfield (the connection allows it only
            // first).
            Message::HaveAll if has.count() == 0 => {
                *has = Bitfield::full(g.pieces() as usize);
                p.picker.peer_bitfield(has);
            }
            // Counted once per piece: availability is a plain count.
            Message::Have(i) if !has.get(i as usize) => {
                has.set(i as usize, true);
                p.picker.peer_have(i);
                self.swarm.add(g.piece_size(i), now);
            }
            Message::Piece { piece, begin, data } => {
                let len = data.len() as u64;
                self.downloaded += len;
                self.down.add(len, now);
                meter.add(len, now);
                let block = Block {
                    piece,
                    begin,
                    length: data.len() as u32,
                };
                if let Received::PieceDone {
                    piece,
                    data,
                    contributors,
                } = p.picker.block_received(key, block, data)
                {
                    finish_piece(p, self.instance, piece, data, contributors, fx);
                }
                fx.cancels.extend(p.picker.take_cancels());
            }
            _ => {}
        }
        Ok(())
    }

    /// The disk thread's answer for `piece`: verified and written, failed
    /// its hash (fetched again; the owner strikes its senders), or not
    /// written.
    pub fn piece_checked(&mut self, done: PieceDone, fx: &mut Effects) {
        let Some(p) = self.pieces.as_mut() else {
            return;
        };
        match done.outcome {
            Outcome::Written => {
                p.picker.piece_verified(done.piece);
                fx.verified.push(done.piece);
            }
            Outcome::BadHash => {
                log::info!(
                    "torrent {}: piece {} failed its hash; fetching it again",
                    self.id,
                    done.piece
                );
                p.picker.piece_failed(done.piece);
            }
            Outcome::Failed(e) => {
                p.picker.piece_failed(done.piece);
                fx.storage_error = Some(e);
            }
        }
        p.picker.recycle(done.data);
    }

    /// Whether the peer has a piece we lack.
    fn wants_from(&self, has: &Bitfield) -> bool {
        let Some(ours) = self.have_bitfield() else {
            return false;
        };
        has.as_bytes()
            .iter()
            .zip(ours.as_bytes())
            .any(|(theirs, ours)| theirs & !ours != 0)
    }

    pub fn update_interest(&self, conn: &mut PeerConn, has: &Bitfield, now: Instant) {
        let want = !self.is_complete() && self.wants_from(has);
        conn.set_interested(want, now);
    }

    /// A fast peer that is interested and has next to nothing gets its
    /// allowed-fast set (BEP 6), once: the pieces of it we have and it
    /// lacks, which it may request while we choke it.
    pub fn give_allowed_fast(&self, conn: &mut PeerConn, has: &Bitfield, ip: IpAddr, now: Instant) {
        if !conn.is_fast() || !conn.peer_interested() || conn.gave_allowed_fast() {
            return;
        }
        let (Some(g), Some(ours)) = (self.geometry, self.have_bitfield()) else {
            return;
        };
        if has.count() >= ALLOWED_FAST_COUNT {
            return;
        }
        let set = allowed_fast_set(ip, &self.info_hash, g.pieces(), ALLOWED_FAST_COUNT);
        let give: Vec<u32> = set
            .into_iter()
            .filter(|&i| ours.get(i as usize) && !has.get(i as usize))
            .collect();
        conn.allow_fast(&give, now);
    }

    /// Requests the peer dropped by choking us are free to be asked of
    /// others.
    pub fn requests_dropped(&mut self, key: PeerKey, blocks: &[Block]) {
        if let Some(p) = &mut self.pieces {
            p.picker.requests_dropped(key, blocks);
        }
    }

    /// Keeps enough requests in flight to fill the link to this peer.
    pub fn request_more(
        &mut self,
        key: PeerKey,
        conn: &mut PeerConn,
        has: &Bitfield,
        meter: &RateMeter,
        rng: &mut fastrand::Rng,
        now: Instant,
    ) {
        let Some(p) = &mut self.pieces else {
            return;
        };
        if !conn.am_interested() {
            return;
        }
        // Choked, a fast peer's allowed-fast pieces may still be asked
        // for (BEP 6).
        let restricted;
        let has = if !conn.peer_choking() {
            has
        } else if conn.allowed_fast().is_empty() {
            return;
        } else {
            let mut only = Bitfield::new(has.len());
            for &i in conn.allowed_fast() {
                only.set(i as usize, has.get(i as usize));
            }
            restricted = only;
            &restricted
        };
        let target = Picker::request_queue_len(meter.rate(now));
        let outstanding = conn.outstanding();
        if outstanding >= target {
            return;
        }
        let mut blocks = Vec::new();
        p.picker
            .pick(key, has, target - outstanding, rng, &mut blocks);
        for b in blocks {
            conn.request(b, now);
        }
    }

    /// Serves the peer's next queued request (the caller checked the
    /// output's room and the upload limit).
    pub fn serve_block(
        &mut self,
        conn: &mut PeerConn,
        meter: &mut RateMeter,
        now: Instant,
    ) -> Result<(), ServeError> {
        let Some(b) = conn.next_peer_request() else {
            return Ok(());
        };
        let Some(p) = self
            .pieces
            .as_mut()
            .filter(|p| p.picker.have_bitfield().get(b.piece as usize))
        else {
            // A fast peer is told; any other has broken the rules.
            if conn.reject(b, now) {
                log::debug!("reject_request sent: piece {} (we lack it)", b.piece);
                return Ok(());
            }
            return Err(ServeError::Peer(PeerError::OutOfRange(
                "request for a piece we do not have",
            )));
        };
        // Straight from disk into the output (a failed read queues
        // nothing).
        let storage = &mut p.storage;
        conn.serve_piece(b, now, |buf| storage.read(b.piece, b.begin, buf))
            .map_err(ServeError::Storage)?;
        let len = b.length as u64;
        self.uploaded += len;
        self.up.add(len, now);
        meter.add(len, now);
        Ok(())
    }

    pub fn peer_gone(&mut self, key: PeerKey, has: &Bitfield) {
        self.metadata.peer_gone(key.0);
        if let (Some(g), Some(p)) = (self.geometry, &mut self.pieces) {
            if has.len() == g.pieces() as usize {
                p.picker.peer_left(has);
            }
            p.picker.peer_gone(key);
        }
        self.peers.retain(|k| *k != key);
        self.choker.force();
    }

    /// Chooses whom to upload to and applies it.
    pub fn rechoke(&mut self, peers: &mut Slab<Peer>, rng: &mut fastrand::Rng, now: Instant) {
        let infos: Vec<PeerChokeInfo> = self
            .peers
            .iter()
            .filter_map(|k| peers.get(k.0).map(|p| (k, p)))
            .filter(|(_, p)| !p.dialing && p.conn.handshake().is_some())
            .map(|(k, p)| PeerChokeInfo {
                key: *k,
                interested: p.conn.peer_interested(),
                is_seed: p.conn.peer_is_seed(),
                download_rate: p.down.rate(now),
                upload_rate: p.up.rate(now),
                connected_at: p.connected_at,
                unchoked: !p.conn.am_choking(),
            })
            .collect();
        let seeding = self.is_complete();
        for (key, unchoke) in self.choker.rechoke(&infos, seeding, now, rng) {
            if let Some(p) = peers.get_mut(key.0) {
                if unchoke {
                    p.conn.unchoke(now);
                } else {
                    p.conn.choke(now);
                }
            }
        }
    }
}

/// A piece whose last block arrived goes to the disk thread, which hashes
/// it and writes it if good (see [`Session::piece_checked`]).
fn finish_piece(
    p: &mut Pieces,
    instance: u64,
    piece: u32,
    data: Vec<u8>,
    from: Vec<PeerKey>,
    fx: &mut Effects,
) {
    let Some(expected) = p.hashes.get(piece as usize).copied() else {
        p.picker.piece_failed(piece);
        return;
    };
    let job = PieceJob {
        session: instance,
        piece,
        data,
        expected,
        files: Arc::clone(&p.files),
    };
    fx.finished.push((job, from));
}
