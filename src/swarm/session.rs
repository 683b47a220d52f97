//! One running torrent: its picker, storage, choker, peers and figures.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use slab::Slab;

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

pub(super) struct Session {
    pub id: u64,
    /// This run of the torrent: the disk thread's answers name it, so that
    /// those for an earlier run are told apart.
    pub instance: u64,
    pub info_hash: [u8; 20],
    /// BEP 27: peers come from the tracker only (no peer exchange).
    pub private: bool,
    geometry: Geometry,
    hashes: Vec<[u8; 20]>,
    pub picker: Picker,
    storage: Storage,
    /// The files, shared with the pieces sent to the disk thread.
    files: Arc<Files>,
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
    /// Session `instance` for `t`, or `None` if its geometry is out of
    /// bounds.
    pub fn new(
        t: &Torrent,
        instance: u64,
        max_partial_bytes: u64,
        now: Instant,
    ) -> Option<Session> {
        let meta = &t.meta;
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
        Some(Session {
            id: t.id,
            instance,
            info_hash: meta.info_hash,
            private: meta.private,
            geometry,
            hashes: meta.pieces.clone(),
            picker,
            storage: Storage::new(layout, paths),
            files,
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

    /// A peer's handshake is done: tell it what we have.
    pub fn attach(&mut self, conn: &mut PeerConn, has: &mut Bitfield) {
        *has = Bitfield::new(self.geometry.pieces() as usize);
        let ours = self.picker.have_bitfield();
        let bits = (ours.count() > 0).then(|| ours.as_bytes());
        conn.attach(self.geometry, bits);
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
        match msg {
            Message::Bitfield(bits) => {
                let theirs = Bitfield::from_bytes(bits, self.geometry.pieces() as usize)
                    .ok_or(PeerError::BadBitfield("wrong size"))?;
                if has.count() == 0 {
                    *has = theirs;
                    self.picker.peer_bitfield(has);
                } else {
                    // A late one (the connection allows it): only new
                    // pieces count, availability being a plain count.
                    for i in theirs.iter_set() {
                        if !has.get(i) {
                            has.set(i, true);
                            self.picker.peer_have(i as u32);
                        }
                    }
                }
            }
            // Counted once per piece: availability is a plain count.
            Message::Have(i) if !has.get(i as usize) => {
                has.set(i as usize, true);
                self.picker.peer_have(i);
                self.swarm.add(self.geometry.piece_size(i), now);
            }
            Message::Interested | Message::NotInterested => self.choker.force(),
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
                } = self.picker.block_received(key, block, data)
                {
                    self.finish_piece(piece, data, contributors, fx);
                }
                fx.cancels.extend(self.picker.take_cancels());
            }
            _ => {}
        }
        Ok(())
    }

    /// A piece whose last block arrived goes to the disk thread, which
    /// hashes it and writes it if good (see [`Session::piece_checked`]).
    fn finish_piece(&mut self, piece: u32, data: Vec<u8>, from: Vec<PeerKey>, fx: &mut Effects) {
        let Some(expected) = self.hashes.get(piece as usize).copied() else {
            self.picker.piece_failed(piece);
            return;
        };
        let job = PieceJob {
            session: self.instance,
            piece,
            data,
            expected,
            files: Arc::clone(&self.files),
        };
        fx.finished.push((job, from));
    }

    /// The disk thread's answer for `piece`: verified and written, failed
    /// its hash (fetched again; the owner strikes its senders), or not
    /// written.
    pub fn piece_checked(&mut self, done: PieceDone, fx: &mut Effects) {
        match done.outcome {
            Outcome::Written => {
                self.picker.piece_verified(done.piece);
                fx.verified.push(done.piece);
            }
            Outcome::BadHash => {
                log::info!(
                    "torrent {}: piece {} failed its hash; fetching it again",
                    self.id,
                    done.piece
                );
                self.picker.piece_failed(done.piece);
            }
            Outcome::Failed(e) => {
                self.picker.piece_failed(done.piece);
                fx.storage_error = Some(e);
            }
        }
        self.picker.recycle(done.data);
    }

    /// Whether the peer has a piece we lack.
    fn wants_from(&self, has: &Bitfield) -> bool {
        let ours = self.picker.have_bitfield().as_bytes();
        has.as_bytes()
            .iter()
            .zip(ours)
            .any(|(theirs, ours)| theirs & !ours != 0)
    }

    pub fn update_interest(&self, conn: &mut PeerConn, has: &Bitfield, now: Instant) {
        let want = !self.picker.is_complete() && self.wants_from(has);
        conn.set_interested(want, now);
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
        if conn.peer_choking() || !conn.am_interested() {
            return;
        }
        let target = Picker::request_queue_len(meter.rate(now));
        let outstanding = conn.outstanding();
        if outstanding >= target {
            return;
        }
        let mut blocks = Vec::new();
        self.picker
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
        if !self.picker.have_bitfield().get(b.piece as usize) {
            return Err(ServeError::Peer(PeerError::OutOfRange(
                "request for a piece we do not have",
            )));
        }
        // Straight from disk into the output (a failed read queues
        // nothing).
        let storage = &mut self.storage;
        conn.serve_piece(b, now, |buf| storage.read(b.piece, b.begin, buf))
            .map_err(ServeError::Storage)?;
        let len = b.length as u64;
        self.uploaded += len;
        self.up.add(len, now);
        meter.add(len, now);
        Ok(())
    }

    pub fn peer_gone(&mut self, key: PeerKey, has: &Bitfield) {
        if has.len() == self.geometry.pieces() as usize {
            self.picker.peer_left(has);
        }
        self.picker.peer_gone(key);
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
        let seeding = self.picker.is_complete();
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
