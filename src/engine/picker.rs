//! Piece picking: which blocks to request from which peer.
//!
//! Order of preference: unrequested blocks of pieces already in progress
//! (finish what we started, bounding memory), then rarest pieces first with a
//! random tie-break, then, once every missing block is requested ("endgame"),
//! duplicate requests to a second peer so one slow peer cannot stall the end.
//!
//! Efficiency: pieces that are neither had nor in progress live in buckets
//! indexed by availability, with a position index so an availability change
//! is an O(1) swap-remove + push. A pick walks buckets from rarest upwards
//! and scans each bucket from a random offset, so there is no sort per call;
//! the worst case (a peer that has none of the rare pieces) is linear in the
//! number of missing pieces, which is fine for ~100k pieces.

use std::collections::BTreeMap;

use super::bitfield::Bitfield;
use super::geometry::Geometry;
pub use super::geometry::{Block, BLOCK_SIZE};

/// Largest piece length the picker accepts; in-progress pieces are kept in
/// memory, so a hostile metainfo must not make us allocate gigabytes.
pub const MAX_PIECE_LENGTH: u64 = 64 * 1024 * 1024;

/// Peers that may hold a request for the same block at once (endgame).
const MAX_HOLDERS: usize = 2;

/// Bytes of spare piece buffers a picker keeps for reuse (at least one
/// buffer is kept, whatever the piece size).
pub const MAX_SPARE_BYTES: usize = 16 << 20;

const NOT_IN_BUCKET: u32 = u32::MAX;

/// Identifies a peer connection to the picker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerKey(pub usize);

/// Outcome of [`Picker::block_received`].
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// Not a block we want (unknown, malformed or already received).
    Ignored,
    /// Stored; the piece is not complete yet.
    Stored,
    /// The last block of `piece` arrived; `data` must now be hash-checked and
    /// the result reported with [`Picker::piece_verified`] or
    /// [`Picker::piece_failed`].
    PieceDone {
        /// Piece index.
        piece: u32,
        /// The whole piece.
        data: Vec<u8>,
        /// Peers that supplied at least one block (for banning on failure).
        contributors: Vec<PeerKey>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Wanted, not started; lives in an availability bucket.
    Missing,
    /// Being downloaded; lives in `partial`.
    Partial,
    /// All blocks received, waiting for the hash check.
    Verifying,
    /// Verified.
    Have,
}

#[derive(Clone, Debug, Default)]
struct BlockState {
    received: bool,
    from: Option<PeerKey>,
    holders: [Option<PeerKey>; MAX_HOLDERS],
}

impl BlockState {
    fn holder_count(&self) -> usize {
        self.holders.iter().flatten().count()
    }
    fn held_by(&self, peer: PeerKey) -> bool {
        self.holders.contains(&Some(peer))
    }
    fn remove_holder(&mut self, peer: PeerKey) -> bool {
        let mut removed = false;
        for h in &mut self.holders {
            if *h == Some(peer) {
                *h = None;
                removed = true;
            }
        }
        removed
    }
    fn add_holder(&mut self, peer: PeerKey) -> bool {
        if self.held_by(peer) {
            return false;
        }
        match self.holders.iter_mut().find(|h| h.is_none()) {
            Some(slot) => {
                *slot = Some(peer);
                true
            }
            None => false,
        }
    }
}

struct Partial {
    data: Vec<u8>,
    blocks: Vec<BlockState>,
    /// Blocks neither received nor requested by anyone.
    unrequested: usize,
    received: usize,
}

/// Decides what to request; keeps in-progress pieces' bytes in memory.
pub struct Picker {
    geometry: Geometry,
    state: Vec<State>,
    availability: Vec<u32>,
    /// `buckets[a]` holds the `Missing` pieces with availability `a`.
    buckets: Vec<Vec<u32>>,
    /// Position of each piece in its bucket, or `NOT_IN_BUCKET`.
    pos: Vec<u32>,
    missing_count: usize,
    partial: BTreeMap<u32, Partial>,
    partial_bytes: u64,
    /// Bytes of pieces complete in memory and not yet verified (on their
    /// way through the disk thread); they count against the bound too.
    verifying_bytes: u64,
    max_partial_bytes: u64,
    /// Piece buffers handed back after verification, for the next pieces:
    /// each new piece would otherwise take fresh zeroed memory.
    spare: Vec<Vec<u8>>,
    have: Bitfield,
    missing_bytes: u64,
    cancels: Vec<(PeerKey, Block)>,
}

impl Picker {
    /// A picker for a torrent of this geometry, of which `have` are
    /// already verified. At most `max_partial_bytes` of in-progress pieces
    /// are held in memory (but one piece is always allowed, so progress is
    /// possible). `None` if the pieces are too large to hold in memory
    /// (over [`MAX_PIECE_LENGTH`]) or `have` is of the wrong length.
    pub fn new(geometry: Geometry, have: &Bitfield, max_partial_bytes: u64) -> Option<Self> {
        let pieces = geometry.pieces();
        if geometry.piece_length() > MAX_PIECE_LENGTH || have.len() != pieces as usize {
            return None;
        }
        let total = geometry.total();
        let n = pieces as usize;
        let mut p = Picker {
            geometry,
            state: vec![State::Missing; n],
            availability: vec![0; n],
            buckets: vec![Vec::new()],
            pos: vec![NOT_IN_BUCKET; n],
            missing_count: 0,
            partial: BTreeMap::new(),
            partial_bytes: 0,
            verifying_bytes: 0,
            max_partial_bytes,
            spare: Vec::new(),
            have: Bitfield::new(n),
            missing_bytes: total,
            cancels: Vec::new(),
        };
        for i in 0..pieces {
            if have.get(i as usize) {
                p.state[i as usize] = State::Have;
                p.have.set(i as usize, true);
                p.missing_bytes -= p.piece_size(i);
            } else {
                p.bucket_insert(i);
            }
        }
        Some(p)
    }

    /// Size of piece `i` (0 if out of range).
    pub fn piece_size(&self, i: u32) -> u64 {
        self.geometry.piece_size(i)
    }

    /// The torrent's geometry.
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    fn bucket_insert(&mut self, piece: u32) {
        let a = self.availability[piece as usize] as usize;
        if self.buckets.len() <= a {
            self.buckets.resize_with(a + 1, Vec::new);
        }
        self.pos[piece as usize] = self.buckets[a].len() as u32;
        self.buckets[a].push(piece);
        self.missing_count += 1;
    }

    fn bucket_remove(&mut self, piece: u32) {
        let p = self.pos[piece as usize];
        if p == NOT_IN_BUCKET {
            return;
        }
        let a = self.availability[piece as usize] as usize;
        let bucket = &mut self.buckets[a];
        bucket.swap_remove(p as usize);
        if let Some(&moved) = bucket.get(p as usize) {
            self.pos[moved as usize] = p;
        }
        self.pos[piece as usize] = NOT_IN_BUCKET;
        self.missing_count -= 1;
    }

    fn change_availability(&mut self, piece: u32, up: bool) {
        let Some(&a) = self.availability.get(piece as usize) else {
            return;
        };
        let new = if up {
            a.saturating_add(1)
        } else {
            a.saturating_sub(1)
        };
        if new == a {
            return;
        }
        let in_bucket = self.pos[piece as usize] != NOT_IN_BUCKET;
        if in_bucket {
            self.bucket_remove(piece);
        }
        self.availability[piece as usize] = new;
        if in_bucket {
            self.bucket_insert(piece);
        }
    }

    /// A peer announced its bitfield. The caller must call this once per
    /// peer (and `peer_have` only for pieces not already announced), since
    /// availability is a plain count.
    pub fn peer_bitfield(&mut self, bf: &Bitfield) {
        for i in bf.iter_set().take(self.geometry.pieces() as usize) {
            self.change_availability(i as u32, true);
        }
    }

    /// A peer announced a new piece.
    pub fn peer_have(&mut self, piece: u32) {
        self.change_availability(piece, true);
    }

    /// A peer with bitfield `bf` disconnected (call `peer_gone` as well).
    pub fn peer_left(&mut self, bf: &Bitfield) {
        for i in bf.iter_set().take(self.geometry.pieces() as usize) {
            self.change_availability(i as u32, false);
        }
    }

    /// Number of peers known to have `piece`.
    pub fn availability(&self, piece: u32) -> u32 {
        self.availability.get(piece as usize).copied().unwrap_or(0)
    }

    /// Appends up to `want` blocks for `peer` (which has `peer_has`) to
    /// `out`, marking them requested by `peer`: first what is left of
    /// pieces in progress, then new pieces rarest first, then (endgame)
    /// duplicates of blocks others hold.
    pub fn pick(
        &mut self,
        peer: PeerKey,
        peer_has: &Bitfield,
        want: usize,
        rng: &mut fastrand::Rng,
        out: &mut Vec<Block>,
    ) {
        let mut want = self.pick_in_progress(peer, peer_has, want, out);
        while want > 0 {
            let Some(piece) = self.rarest_for(peer_has, rng) else {
                break;
            };
            if !self.start_piece(piece) {
                break;
            }
            want = self.pick_in_piece(piece, peer, want, out);
        }
        if want > 0 && self.in_endgame() {
            self.pick_duplicates(peer, peer_has, want, out);
        }
    }

    /// Unrequested blocks of pieces already in progress; returns how many
    /// are still wanted.
    fn pick_in_progress(
        &mut self,
        peer: PeerKey,
        peer_has: &Bitfield,
        mut want: usize,
        out: &mut Vec<Block>,
    ) -> usize {
        let geometry = self.geometry;
        for (&piece, part) in self.partial.iter_mut() {
            if want == 0 {
                break;
            }
            if part.unrequested == 0 || !peer_has.get(piece as usize) {
                continue;
            }
            for (idx, b) in part.blocks.iter_mut().enumerate() {
                if want == 0 {
                    break;
                }
                if !b.received && b.holder_count() == 0 {
                    b.add_holder(peer);
                    part.unrequested -= 1;
                    want -= 1;
                    out.push(geometry.block(piece, idx));
                }
            }
        }
        want
    }

    /// Takes `piece` into progress with a buffer of its size, if the bound
    /// on pieces in memory allows.
    fn start_piece(&mut self, piece: u32) -> bool {
        let size = self.piece_size(piece);
        let held = self.partial_bytes + self.verifying_bytes;
        // One piece is always allowed when nothing is held, so a piece
        // larger than the bound still makes progress.
        if held > 0 && held + size > self.max_partial_bytes {
            return false;
        }
        self.bucket_remove(piece);
        self.state[piece as usize] = State::Partial;
        self.partial_bytes += size;
        let n = self.geometry.blocks_in(piece);
        // A spare buffer's old bytes are all overwritten: a piece is only
        // done once every block has arrived.
        let data = match self.spare.pop() {
            Some(mut buf) => {
                buf.resize(size as usize, 0);
                buf
            }
            None => vec![0; size as usize],
        };
        self.partial.insert(
            piece,
            Partial {
                data,
                blocks: vec![BlockState::default(); n],
                unrequested: n,
                received: 0,
            },
        );
        true
    }

    /// The first blocks of a piece just started, for `peer`; returns how
    /// many are still wanted.
    fn pick_in_piece(
        &mut self,
        piece: u32,
        peer: PeerKey,
        mut want: usize,
        out: &mut Vec<Block>,
    ) -> usize {
        let geometry = self.geometry;
        let Some(part) = self.partial.get_mut(&piece) else {
            return want;
        };
        for idx in 0..part.blocks.len().min(want) {
            part.blocks[idx].add_holder(peer);
            part.unrequested -= 1;
            want -= 1;
            out.push(geometry.block(piece, idx));
        }
        want
    }

    /// Endgame: duplicates of outstanding requests held by other peers.
    fn pick_duplicates(
        &mut self,
        peer: PeerKey,
        peer_has: &Bitfield,
        mut want: usize,
        out: &mut Vec<Block>,
    ) {
        let geometry = self.geometry;
        for (&piece, part) in self.partial.iter_mut() {
            if want == 0 {
                break;
            }
            if !peer_has.get(piece as usize) {
                continue;
            }
            for (idx, b) in part.blocks.iter_mut().enumerate() {
                if want == 0 {
                    break;
                }
                if !b.received && b.holder_count() < MAX_HOLDERS && b.add_holder(peer) {
                    want -= 1;
                    out.push(geometry.block(piece, idx));
                }
            }
        }
    }

    /// The rarest `Missing` piece `peer_has` has, random among equals.
    fn rarest_for(&self, peer_has: &Bitfield, rng: &mut fastrand::Rng) -> Option<u32> {
        // Availability 0 pieces can still be picked if this peer has them
        // (e.g. it announced before we counted); harmless.
        for bucket in &self.buckets {
            if bucket.is_empty() {
                continue;
            }
            let start = rng.usize(..bucket.len());
            let (a, b) = bucket.split_at(start);
            if let Some(&p) = b.iter().chain(a).find(|&&p| peer_has.get(p as usize)) {
                return Some(p);
            }
        }
        None
    }

    /// Whether every missing block has been requested, so duplicates are
    /// allowed.
    pub fn in_endgame(&self) -> bool {
        self.missing_count == 0
            && !self.partial.is_empty()
            && self.partial.values().all(|p| p.unrequested == 0)
    }

    /// A block arrived from `peer`. Endgame duplicates held by other peers
    /// are queued for [`Picker::take_cancels`].
    pub fn block_received(&mut self, peer: PeerKey, block: Block, data: &[u8]) -> Received {
        let idx = (block.begin / BLOCK_SIZE) as usize;
        // Validate against the piece's geometry before touching state; the
        // partial lookup also guarantees the block index is in range.
        match self.partial.get(&block.piece) {
            Some(part) if idx < part.blocks.len() => {}
            _ => return Received::Ignored,
        }
        if !block.begin.is_multiple_of(BLOCK_SIZE)
            || self.geometry.block(block.piece, idx) != block
            || data.len() != block.length as usize
        {
            return Received::Ignored;
        }
        let Some(part) = self.partial.get_mut(&block.piece) else {
            return Received::Ignored;
        };
        let Some(b) = part.blocks.get_mut(idx) else {
            return Received::Ignored;
        };
        if b.received {
            b.remove_holder(peer);
            return Received::Ignored;
        }
        // Unrequested data is accepted: the piece is hash-checked anyway and
        // its memory is already allocated.
        if b.holder_count() == 0 {
            part.unrequested -= 1;
        }
        for other in b.holders.iter().flatten() {
            if *other != peer {
                self.cancels.push((*other, block));
            }
        }
        b.holders = [None; MAX_HOLDERS];
        b.received = true;
        b.from = Some(peer);
        part.received += 1;
        let begin = block.begin as usize;
        if let Some(dst) = part.data.get_mut(begin..begin + data.len()) {
            dst.copy_from_slice(data);
        }
        if part.received < part.blocks.len() {
            return Received::Stored;
        }
        let Some(part) = self.partial.remove(&block.piece) else {
            return Received::Ignored;
        };
        self.partial_bytes -= part.data.len() as u64;
        self.verifying_bytes += part.data.len() as u64;
        self.state[block.piece as usize] = State::Verifying;
        let mut contributors: Vec<PeerKey> = part.blocks.iter().filter_map(|b| b.from).collect();
        contributors.sort();
        contributors.dedup();
        Received::PieceDone {
            piece: block.piece,
            data: part.data,
            contributors,
        }
    }

    /// Cancels to send: `(peer, block)` for endgame duplicates that another
    /// peer satisfied.
    pub fn take_cancels(&mut self) -> Vec<(PeerKey, Block)> {
        std::mem::take(&mut self.cancels)
    }

    /// The hash check of `piece` passed.
    pub fn piece_verified(&mut self, piece: u32) {
        if self.state.get(piece as usize) == Some(&State::Verifying) {
            self.mark_have(piece);
        }
    }

    /// The hash check of `piece` failed: it goes back to the pool.
    pub fn piece_failed(&mut self, piece: u32) {
        if self.state.get(piece as usize) == Some(&State::Verifying) {
            self.verifying_bytes -= self.piece_size(piece);
            self.state[piece as usize] = State::Missing;
            self.bucket_insert(piece);
        }
    }

    /// A buffer of a finished piece, kept for a next piece while the
    /// spares hold less than [`MAX_SPARE_BYTES`] (and one always).
    pub fn recycle(&mut self, buf: Vec<u8>) {
        let spare: usize = self.spare.iter().map(Vec::capacity).sum();
        let fits = self.spare.is_empty() || spare + buf.capacity() <= MAX_SPARE_BYTES;
        if fits && buf.capacity() as u64 >= self.geometry.piece_length().min(self.geometry.total())
        {
            self.spare.push(buf);
        }
    }

    /// We have `piece` by other means (e.g. a resume check). Outstanding
    /// requests for it are queued as cancels.
    pub fn have(&mut self, piece: u32) {
        match self.state.get(piece as usize) {
            None | Some(State::Have) => return,
            Some(State::Missing) => self.bucket_remove(piece),
            Some(State::Partial) => {
                if let Some(part) = self.partial.remove(&piece) {
                    self.partial_bytes -= part.data.len() as u64;
                    for (idx, b) in part.blocks.iter().enumerate() {
                        for h in b.holders.iter().flatten() {
                            self.cancels.push((*h, self.geometry.block(piece, idx)));
                        }
                    }
                }
            }
            Some(State::Verifying) => {}
        }
        self.mark_have(piece);
    }

    fn mark_have(&mut self, piece: u32) {
        if self.state[piece as usize] == State::Verifying {
            self.verifying_bytes -= self.piece_size(piece);
        }
        self.state[piece as usize] = State::Have;
        self.have.set(piece as usize, true);
        self.missing_bytes -= self.piece_size(piece);
    }

    /// `peer` will not answer these requests (choked us, rejected them).
    pub fn requests_dropped(&mut self, peer: PeerKey, blocks: &[Block]) {
        for block in blocks {
            let Some(part) = self.partial.get_mut(&block.piece) else {
                continue;
            };
            let Some(b) = part.blocks.get_mut((block.begin / BLOCK_SIZE) as usize) else {
                continue;
            };
            if !b.received && b.remove_holder(peer) && b.holder_count() == 0 {
                part.unrequested += 1;
            }
        }
    }

    /// `peer` disconnected: all its requests return to the pool. Linear in
    /// the in-progress blocks, which `max_partial_bytes` bounds.
    pub fn peer_gone(&mut self, peer: PeerKey) {
        for part in self.partial.values_mut() {
            for b in &mut part.blocks {
                if !b.received && b.remove_holder(peer) && b.holder_count() == 0 {
                    part.unrequested += 1;
                }
            }
        }
        self.cancels.retain(|(p, _)| *p != peer);
    }

    /// Verified pieces.
    pub fn have_bitfield(&self) -> &Bitfield {
        &self.have
    }

    /// Whether every piece is verified.
    pub fn is_complete(&self) -> bool {
        self.have.is_full()
    }

    /// Bytes not yet verified.
    pub fn missing_bytes(&self) -> u64 {
        self.missing_bytes
    }

    /// Bytes currently held for in-progress pieces.
    pub fn partial_bytes(&self) -> u64 {
        self.partial_bytes
    }

    /// Bytes of complete pieces waiting for their hash check.
    pub fn verifying_bytes(&self) -> u64 {
        self.verifying_bytes
    }

    /// How many requests to keep outstanding to a peer sending at
    /// `rate_bytes_per_s`: about 2.5 s worth, so the pipe never drains
    /// while a round trip is in flight; clamped to 8..=500.
    pub fn request_queue_len(rate_bytes_per_s: f64) -> usize {
        let n = (rate_bytes_per_s * 2.5 / BLOCK_SIZE as f64) as usize;
        n.clamp(8, 500)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `p` picks for peer `peer` with a seeded generator.
    fn picked(p: &mut Picker, peer: usize, has: &Bitfield, want: usize, seed: u64) -> Vec<Block> {
        let mut out = Vec::new();
        p.pick(
            PeerKey(peer),
            has,
            want,
            &mut fastrand::Rng::with_seed(seed),
            &mut out,
        );
        out
    }

    const B: u64 = BLOCK_SIZE as u64;

    fn picker(piece_length: u64, total: u64, max_partial: u64) -> Picker {
        let n = total.div_ceil(piece_length) as usize;
        let g = Geometry::new(piece_length, total).unwrap();
        Picker::new(g, &Bitfield::new(n), max_partial).unwrap()
    }

    fn bf(n: usize, set: &[usize]) -> Bitfield {
        let mut b = Bitfield::new(n);
        for &i in set {
            b.set(i, true);
        }
        b
    }

    fn data(block: &Block) -> Vec<u8> {
        vec![block.piece as u8 ^ (block.begin / BLOCK_SIZE) as u8; block.length as usize]
    }

    #[test]
    fn rejects_bad_geometry() {
        let g = |pl, total| Geometry::new(pl, total).unwrap();
        assert!(Picker::new(g(MAX_PIECE_LENGTH + 1, 10), &Bitfield::new(1), 1 << 20).is_none());
        assert!(Picker::new(g(B, 10 * B), &Bitfield::new(9), 1 << 20).is_none());
        assert!(Geometry::new(1, u64::MAX).is_none(), "too many pieces");
    }

    #[test]
    fn rarest_first() {
        let mut p = picker(B, 4 * B, 1 << 30);
        p.peer_bitfield(&bf(4, &[0, 1, 2, 3]));
        p.peer_bitfield(&bf(4, &[0, 1, 3]));
        p.peer_bitfield(&bf(4, &[0, 3]));
        // Availability: 0:3 1:2 2:1 3:3
        let all = bf(4, &[0, 1, 2, 3]);
        let mut rng = fastrand::Rng::with_seed(1);
        let mut out = Vec::new();
        p.pick(PeerKey(9), &all, 2, &mut rng, &mut out);
        assert_eq!(out.iter().map(|b| b.piece).collect::<Vec<_>>(), vec![2, 1]);
        p.peer_have(0);
        p.peer_left(&bf(4, &[3]));
        p.peer_left(&bf(4, &[3]));
        out.clear();
        p.pick(PeerKey(9), &all, 1, &mut rng, &mut out);
        assert_eq!(out[0].piece, 3);
        assert_eq!(p.availability(3), 1);
        assert_eq!(p.availability(0), 4);
    }

    #[test]
    fn random_tie_break_across_seeds() {
        let mut seen = std::collections::HashSet::new();
        for seed in 0..50 {
            let mut p = picker(B, 20 * B, 1 << 30);
            let all = Bitfield::full(20);
            p.peer_bitfield(&all);
            let out = picked(&mut p, 0, &all, 1, seed);
            seen.insert(out[0].piece);
        }
        assert!(seen.len() >= 8, "{seen:?}");
    }

    #[test]
    fn only_pieces_the_peer_has() {
        let mut p = picker(B, 10 * B, 1 << 30);
        let has = bf(10, &[7]);
        p.peer_bitfield(&has);
        let out = picked(&mut p, 0, &has, 5, 0);
        assert_eq!(
            out,
            vec![Block {
                piece: 7,
                begin: 0,
                length: BLOCK_SIZE
            }]
        );
    }

    #[test]
    fn partial_first_and_blocks_split_across_peers() {
        let mut p = picker(4 * B, 40 * B, 1 << 30);
        let all = Bitfield::full(10);
        p.peer_bitfield(&all);
        let mut rng = fastrand::Rng::with_seed(3);
        let mut a = Vec::new();
        p.pick(PeerKey(1), &all, 1, &mut rng, &mut a);
        let first = a[0].piece;
        let mut b = Vec::new();
        p.pick(PeerKey(2), &all, 3, &mut rng, &mut b);
        assert!(b.iter().all(|x| x.piece == first));
        assert_eq!(
            b.iter().map(|x| x.begin).collect::<Vec<_>>(),
            vec![BLOCK_SIZE, 2 * BLOCK_SIZE, 3 * BLOCK_SIZE]
        );
        let mut c = Vec::new();
        p.pick(PeerKey(2), &all, 1, &mut rng, &mut c);
        assert_ne!(c[0].piece, first);
    }

    #[test]
    fn memory_bound() {
        let mut p = picker(2 * B, 20 * B, 5 * B);
        let all = Bitfield::full(10);
        p.peer_bitfield(&all);
        let out = picked(&mut p, 0, &all, 100, 0);
        // Two pieces (4 blocks) fit in 5 blocks' worth; a third does not.
        assert_eq!(out.len(), 4);
        assert_eq!(p.partial_bytes(), 4 * B);
        // A completed piece holds its memory until its hash check is done
        // (the disk thread has it); then a new piece may start.
        let piece = out[0].piece;
        for blk in out.iter().filter(|b| b.piece == piece) {
            let _ = p.block_received(PeerKey(0), *blk, &data(blk));
        }
        assert_eq!((p.partial_bytes(), p.verifying_bytes()), (2 * B, 2 * B));
        assert!(picked(&mut p, 0, &all, 100, 0).is_empty());
        p.piece_verified(piece);
        assert_eq!(p.verifying_bytes(), 0);
        let more = picked(&mut p, 0, &all, 100, 0);
        assert_eq!(more.len(), 2);
    }

    #[test]
    fn a_failed_check_frees_its_memory_too() {
        let mut p = picker(2 * B, 4 * B, 2 * B);
        let all = Bitfield::full(2);
        p.peer_bitfield(&all);
        let out = picked(&mut p, 0, &all, 100, 0);
        assert_eq!(out.len(), 2);
        for blk in &out {
            let _ = p.block_received(PeerKey(0), *blk, &data(blk));
        }
        assert_eq!(p.verifying_bytes(), 2 * B);
        p.piece_failed(out[0].piece);
        assert_eq!(p.verifying_bytes(), 0);
        assert_eq!(picked(&mut p, 0, &all, 100, 0).len(), 2);
    }

    #[test]
    fn finished_buffers_are_reused_up_to_a_bound() {
        let mut p = picker(2 * B, 8 * B, 1 << 30);
        let all = Bitfield::full(4);
        p.peer_bitfield(&all);
        // Receives every block of `blocks`, one piece: its buffer.
        let complete = |p: &mut Picker, blocks: &[Block]| {
            blocks
                .iter()
                .find_map(|b| match p.block_received(PeerKey(0), *b, &data(b)) {
                    Received::PieceDone { data, .. } => Some(data),
                    _ => None,
                })
                .expect("a piece done")
        };
        let first = picked(&mut p, 0, &all, 2, 0);
        let buf = complete(&mut p, &first);
        let ptr = buf.as_ptr();
        p.recycle(buf);
        // The next piece is built in the same memory.
        let next = picked(&mut p, 0, &all, 2, 0);
        let again = complete(&mut p, &next);
        assert_eq!(again.as_ptr(), ptr);
        assert_eq!(again, [data(&next[0]), data(&next[1])].concat());
        // Too small a buffer is not kept; spares stop at the bound.
        p.recycle(vec![0; 10]);
        assert!(p.spare.is_empty());
        for _ in 0..(MAX_SPARE_BYTES / (2 * B as usize) + 5) {
            p.recycle(vec![0; 2 * B as usize]);
        }
        assert_eq!(p.spare.len(), MAX_SPARE_BYTES / (2 * B as usize));
    }

    #[test]
    fn one_piece_always_allowed() {
        let mut p = picker(4 * B, 8 * B, B);
        let all = Bitfield::full(2);
        let out = picked(&mut p, 0, &all, 100, 0);
        assert_eq!(out.len(), 4);
    }

    #[test]
    fn piece_done_verified_and_complete() {
        let mut p = picker(2 * B, 2 * B, 1 << 30);
        let all = Bitfield::full(1);
        let mut out = picked(&mut p, 0, &all, 1, 0);
        p.pick(
            PeerKey(1),
            &all,
            1,
            &mut fastrand::Rng::with_seed(0),
            &mut out,
        );
        assert_eq!(
            p.block_received(PeerKey(0), out[0], &data(&out[0])),
            Received::Stored
        );
        // Duplicate / malformed deliveries are ignored.
        assert_eq!(
            p.block_received(PeerKey(0), out[0], &data(&out[0])),
            Received::Ignored
        );
        assert_eq!(
            p.block_received(PeerKey(1), out[1], &[0; 3]),
            Received::Ignored
        );
        let bogus = Block {
            piece: 5,
            begin: 0,
            length: BLOCK_SIZE,
        };
        assert_eq!(
            p.block_received(PeerKey(1), bogus, &data(&bogus)),
            Received::Ignored
        );
        let odd = Block {
            piece: 0,
            begin: 7,
            length: 10,
        };
        assert_eq!(
            p.block_received(PeerKey(1), odd, &[0; 10]),
            Received::Ignored
        );
        let far = Block {
            piece: 0,
            begin: 9 * BLOCK_SIZE,
            length: BLOCK_SIZE,
        };
        assert_eq!(
            p.block_received(PeerKey(1), far, &data(&far)),
            Received::Ignored
        );
        match p.block_received(PeerKey(1), out[1], &data(&out[1])) {
            Received::PieceDone {
                piece,
                data: d,
                contributors,
            } => {
                assert_eq!(piece, 0);
                assert_eq!(d.len(), 2 * B as usize);
                assert_eq!(d[0], 0);
                assert_eq!(d[B as usize], 1);
                assert_eq!(contributors, vec![PeerKey(0), PeerKey(1)]);
            }
            r => panic!("{r:?}"),
        }
        assert!(!p.is_complete());
        assert_eq!(p.missing_bytes(), 2 * B);
        p.piece_verified(0);
        assert!(p.is_complete());
        assert_eq!(p.missing_bytes(), 0);
        let none = picked(&mut p, 0, &all, 10, 0);
        assert!(none.is_empty());
    }

    #[test]
    fn endgame_duplicates_and_cancels() {
        let mut p = picker(B, 2 * B, 1 << 30);
        let all = Bitfield::full(2);
        let mut rng = fastrand::Rng::with_seed(0);
        let mut a = Vec::new();
        p.pick(PeerKey(1), &all, 10, &mut rng, &mut a);
        assert_eq!(a.len(), 2);
        assert!(p.in_endgame());
        // Same peer gets nothing new.
        let mut again = Vec::new();
        p.pick(PeerKey(1), &all, 10, &mut rng, &mut again);
        assert!(again.is_empty());
        let mut b = Vec::new();
        p.pick(PeerKey(2), &all, 10, &mut rng, &mut b);
        assert_eq!(b.len(), 2);
        // At most two holders per block.
        let mut c = Vec::new();
        p.pick(PeerKey(3), &all, 10, &mut rng, &mut c);
        assert!(c.is_empty());
        assert!(matches!(
            p.block_received(PeerKey(2), b[0], &data(&b[0])),
            Received::PieceDone { .. }
        ));
        assert_eq!(p.take_cancels(), vec![(PeerKey(1), b[0])]);
        assert!(p.take_cancels().is_empty());
        // Late duplicate from peer 1 is ignored.
        assert_eq!(
            p.block_received(PeerKey(1), b[0], &data(&b[0])),
            Received::Ignored
        );
        // Peer 2 gone: block 1 still held by peer 1, so peer 3 may duplicate.
        p.peer_gone(PeerKey(2));
        p.pick(PeerKey(3), &all, 10, &mut rng, &mut c);
        let rest: Vec<Block> = a.iter().copied().filter(|x| *x != b[0]).collect();
        assert_eq!(c, rest);
    }

    #[test]
    fn failed_piece_refetched() {
        let mut p = picker(B, 3 * B, 1 << 30);
        let has = bf(3, &[1]);
        let mut out = Vec::new();
        let mut rng = fastrand::Rng::with_seed(0);
        p.pick(PeerKey(0), &has, 5, &mut rng, &mut out);
        assert!(matches!(
            p.block_received(PeerKey(0), out[0], &data(&out[0])),
            Received::PieceDone { piece: 1, .. }
        ));
        let mut none = Vec::new();
        p.pick(PeerKey(0), &has, 5, &mut rng, &mut none);
        assert!(none.is_empty(), "verifying pieces are not picked");
        p.piece_failed(1);
        p.pick(PeerKey(0), &has, 5, &mut rng, &mut none);
        assert_eq!(none, out);
        assert_eq!(p.missing_bytes(), 3 * B);
    }

    #[test]
    fn dropped_and_gone_return_blocks() {
        let mut p = picker(4 * B, 4 * B, 1 << 30);
        let all = Bitfield::full(1);
        let mut rng = fastrand::Rng::with_seed(0);
        let mut a = Vec::new();
        p.pick(PeerKey(1), &all, 2, &mut rng, &mut a);
        let mut b = Vec::new();
        p.pick(PeerKey(2), &all, 2, &mut rng, &mut b);
        assert!(p.in_endgame());
        p.requests_dropped(PeerKey(1), &a[..1]);
        assert!(!p.in_endgame());
        p.peer_gone(PeerKey(2));
        let mut c = Vec::new();
        p.pick(PeerKey(3), &all, 10, &mut rng, &mut c);
        // The three free blocks first, then (now in endgame) a duplicate of
        // the block peer 1 still holds.
        assert_eq!(c, vec![a[0], b[0], b[1], a[1]]);
    }

    #[test]
    fn short_last_piece_and_block() {
        let total = 2 * 2 * B + B + 100;
        let mut p = picker(2 * B, total, 1 << 30);
        assert_eq!(p.piece_size(2), B + 100);
        let has = bf(3, &[2]);
        let out = picked(&mut p, 0, &has, 10, 0);
        assert_eq!(
            out,
            vec![
                Block {
                    piece: 2,
                    begin: 0,
                    length: BLOCK_SIZE
                },
                Block {
                    piece: 2,
                    begin: BLOCK_SIZE,
                    length: 100
                },
            ]
        );
        let wrong = Block {
            piece: 2,
            begin: BLOCK_SIZE,
            length: BLOCK_SIZE,
        };
        assert_eq!(
            p.block_received(PeerKey(0), wrong, &data(&wrong)),
            Received::Ignored
        );
        let _ = p.block_received(PeerKey(0), out[0], &data(&out[0]));
        match p.block_received(PeerKey(0), out[1], &data(&out[1])) {
            Received::PieceDone { data, .. } => assert_eq!(data.len(), (B + 100) as usize),
            r => panic!("{r:?}"),
        }
        p.piece_verified(2);
        assert_eq!(p.missing_bytes(), 4 * B);
    }

    #[test]
    fn nothing_to_pick() {
        let mut p = picker(B, 4 * B, 1 << 30);
        let mut out = Vec::new();
        let mut rng = fastrand::Rng::with_seed(0);
        p.pick(PeerKey(0), &Bitfield::new(4), 10, &mut rng, &mut out);
        assert!(out.is_empty());
        p.pick(PeerKey(0), &Bitfield::full(4), 0, &mut rng, &mut out);
        assert!(out.is_empty());
        assert!(!p.in_endgame());
        for i in 0..4 {
            p.have(i);
        }
        p.have(99);
        assert!(p.is_complete());
        p.pick(PeerKey(0), &Bitfield::full(4), 10, &mut rng, &mut out);
        assert!(out.is_empty());
        // A complete start has nothing missing.
        let p = Picker::new(Geometry::new(B, 4 * B).unwrap(), &Bitfield::full(4), 0).unwrap();
        assert!(p.is_complete());
        assert_eq!(p.missing_bytes(), 0);
    }

    #[test]
    fn have_cancels_outstanding() {
        let mut p = picker(B, B, 1 << 30);
        let all = Bitfield::full(1);
        let out = picked(&mut p, 4, &all, 1, 0);
        p.have(0);
        assert_eq!(p.take_cancels(), vec![(PeerKey(4), out[0])]);
        assert_eq!(p.partial_bytes(), 0);
        assert!(p.is_complete());
    }

    #[test]
    fn queue_len() {
        assert_eq!(Picker::request_queue_len(0.0), 8);
        assert_eq!(Picker::request_queue_len(f64::NAN), 8);
        assert_eq!(Picker::request_queue_len(1e12), 500);
        assert_eq!(Picker::request_queue_len(16384.0 * 40.0), 100);
    }

    #[test]
    fn many_pieces_scale() {
        let n = 100_000u64;
        let mut p = picker(B, n * B, 64 * B);
        let all = Bitfield::full(n as usize);
        for _ in 0..3 {
            p.peer_bitfield(&all);
        }
        let mut rng = fastrand::Rng::with_seed(0);
        let mut out = Vec::new();
        p.pick(PeerKey(0), &all, 64, &mut rng, &mut out);
        assert_eq!(out.len(), 64);
        p.peer_left(&all);
        assert_eq!(p.availability(5), 2);
    }
}
