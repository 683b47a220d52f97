//! One peer connection's protocol state, without any I/O: the shape of
//! the IPC session. Bytes in with [`PeerConn::receive`], messages out of
//! [`PeerConn::poll_message`] (borrowed from the input buffer, so a
//! block's data is not copied again), bytes to send in
//! [`PeerConn::output`], timers through [`PeerConn::poll_timeout`] and
//! [`PeerConn::handle_timeout`].
//!
//! The connection checks what it can check alone: the handshake, the
//! order and size of the bitfield, piece indices and request ranges
//! against the torrent's geometry, requests it never made. What to request
//! and whom to serve is the owner's decision.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use crate::codec::outbuf::OutBuf;
use crate::engine::geometry::{BlockError, Geometry};

use super::fast::{self, ALLOWED_FAST_COUNT, MAX_ALLOWED_FAST};

use super::wire::{
    parse_handshake, reserve_piece, split_message, write_handshake, write_message, Block,
    Handshake, Message, WireError, HANDSHAKE_LEN, MAX_REQUEST_LEN,
};

/// A peer must complete its handshake this soon after connecting.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);

/// A peer silent this long (not even a keep-alive) is dropped.
pub const INACTIVITY_TIMEOUT: Duration = Duration::from_secs(180);

/// We send a keep-alive after this long without sending anything.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(100);

/// Requests a peer may queue with us; more is abuse. Transmission 3.00
/// pipelines more than 500 at loopback speed, so the allowance is
/// libtorrent's (2000 blocks: 32 MiB of requests, 24 KiB of memory).
pub const MAX_PEER_REQUESTS: usize = 2000;

/// Output a peer may leave unread before it is dropped (it never reads).
pub const MAX_OUTPUT: usize = 4 << 20;

/// Unparsed input held for a peer before the reader stops (pieces are
/// parsed as they arrive, so only a peer sending before its torrent is
/// known gets near it).
pub const MAX_INPUT: usize = 1 << 20;

/// Cancelled requests remembered, so that a block already on its way when
/// we cancelled it is tolerated.
const CANCELLED_MEMORY: usize = 256;

/// `have`s kept from a peer before the torrent's geometry is known (they
/// are checked once it is): a peer with much to announce sends a
/// bitfield, and what is past this is dropped, not held.
pub const MAX_EARLY_HAVES: usize = 8192;

/// Why a peer connection must be closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerError {
    /// The bytes are not the protocol.
    Wire(WireError),
    /// The handshake names another torrent than the one we dialled for.
    WrongTorrent,
    /// The peer is ourselves.
    SelfConnection,
    /// No handshake in time.
    HandshakeTimeout,
    /// Nothing received for too long.
    Inactive,
    /// A bitfield of the wrong size, with spare bits set, or not first.
    BadBitfield(&'static str),
    /// A piece index, or a request range, outside the torrent.
    OutOfRange(&'static str),
    /// More than [`MAX_PEER_REQUESTS`] requests queued.
    TooManyRequests,
    /// A block we never asked for.
    Unrequested(Block),
    /// Over [`MAX_OUTPUT`] bytes unread.
    OutputOverflow,
    /// Both sides have every piece: nothing to exchange.
    BothSeeds,
    /// Already connected to this peer (same peer id) for the torrent.
    Duplicate,
    /// A fast extension message (BEP 6) from a peer that did not offer
    /// the extension.
    FastNotOffered,
    /// `have_all` or `have_none` anywhere but first (BEP 6).
    LatePieceSet,
    /// A `reject_request` for a block never requested (BEP 6).
    UnrequestedReject(Block),
}

impl fmt::Display for PeerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerError::Wire(e) => e.fmt(f),
            PeerError::WrongTorrent => f.write_str("handshake for another torrent"),
            PeerError::SelfConnection => f.write_str("connected to ourselves"),
            PeerError::HandshakeTimeout => f.write_str("no handshake in time"),
            PeerError::Inactive => f.write_str("silent for too long"),
            PeerError::BadBitfield(why) => write!(f, "bad bitfield: {why}"),
            PeerError::OutOfRange(what) => write!(f, "{what} out of range"),
            PeerError::TooManyRequests => {
                write!(f, "more than {MAX_PEER_REQUESTS} requests queued")
            }
            PeerError::Unrequested(b) => write!(
                f,
                "sent a block never requested (piece {} offset {} length {})",
                b.piece, b.begin, b.length
            ),
            PeerError::OutputOverflow => write!(f, "over {MAX_OUTPUT} bytes unread"),
            PeerError::BothSeeds => f.write_str("both are seeds"),
            PeerError::Duplicate => f.write_str("already connected to this peer"),
            PeerError::FastNotOffered => {
                f.write_str("a fast extension message, the extension not offered")
            }
            PeerError::LatePieceSet => f.write_str("have_all or have_none after other messages"),
            PeerError::UnrequestedReject(b) => write!(
                f,
                "rejected a block never requested (piece {} offset {} length {})",
                b.piece, b.begin, b.length
            ),
        }
    }
}

impl std::error::Error for PeerError {}

impl From<WireError> for PeerError {
    fn from(e: WireError) -> Self {
        PeerError::Wire(e)
    }
}

/// A block the peer names must lie inside the torrent.
fn check_block(g: &Geometry, b: &Block) -> Result<(), PeerError> {
    g.check_block(b, MAX_REQUEST_LEN).map_err(|e| {
        PeerError::OutOfRange(match e {
            BlockError::Piece => "piece index",
            BlockError::Length => "block length",
            BlockError::End => "block end",
        })
    })
}

/// Where the connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Waiting for the peer's handshake.
    Handshake,
    /// Handshake read; the owner must [`PeerConn::attach`].
    Pending,
    /// Messages flow; `first` until the first message is read.
    Open { first: bool },
}

/// One peer connection's protocol state and buffers.
pub struct PeerConn {
    stage: Stage,
    ours: Option<Handshake>,
    theirs: Option<Handshake>,
    /// The handshake was handed to the owner.
    handshake_taken: bool,
    geometry: Option<Geometry>,
    input: Vec<u8>,
    /// Bytes of `input` already consumed (compacted at the next receive).
    read: usize,
    output: OutBuf,
    connected_at: Instant,
    last_received: Instant,
    last_sent: Instant,
    /// What the messages of both sides established: kept apart from the
    /// input buffer, so a message borrowed from the buffer can update it.
    x: Exchange,
    /// Piece payload bytes sent.
    pub uploaded: u64,
}

/// The state both sides' messages build up.
struct Exchange {
    /// We choke them (BEP 3: both sides start choking, not interested).
    am_choking: bool,
    /// We are interested in them.
    am_interested: bool,
    /// They choke us.
    peer_choking: bool,
    /// They are interested in us.
    peer_interested: bool,
    have: Vec<u8>,
    have_count: u32,
    peer_requests: VecDeque<Block>,
    /// The blocks in `peer_requests`, to refuse duplicates without a scan.
    peer_requested: HashSet<Block>,
    requested: HashSet<Block>,
    cancelled: VecDeque<Block>,
    dropped: Vec<Block>,
    last_piece_wanted: bool,
    /// Piece payload bytes received.
    downloaded: u64,
    /// Both sides offered the fast extension (BEP 6).
    fast: bool,
    /// Requests we will not serve, to answer with `reject_request` (fast
    /// extension only; at most one queue's worth).
    to_reject: Vec<Block>,
    /// Pieces the peer lets us request while it chokes us.
    allowed_in: Vec<u32>,
    /// Pieces we let the peer request while we choke it.
    allowed_out: Vec<u32>,
    /// We computed the peer's allowed-fast set (it is done once).
    allowed_given: bool,
    /// Before the geometry is known: the peer's bitfield as received (or
    /// `have_all`), its `have`s and `allowed_fast`s, checked once it is.
    early_bitfield: Option<Vec<u8>>,
    early_all: bool,
    early_haves: Vec<u32>,
    early_allowed: Vec<u32>,
}

impl Exchange {
    fn new() -> Exchange {
        Exchange {
            am_choking: true,
            am_interested: false,
            peer_choking: true,
            peer_interested: false,
            have: Vec::new(),
            have_count: 0,
            peer_requests: VecDeque::new(),
            peer_requested: HashSet::new(),
            requested: HashSet::new(),
            cancelled: VecDeque::new(),
            dropped: Vec::new(),
            last_piece_wanted: true,
            downloaded: 0,
            fast: false,
            to_reject: Vec::new(),
            allowed_in: Vec::new(),
            allowed_out: Vec::new(),
            allowed_given: false,
            early_bitfield: None,
            early_all: false,
            early_haves: Vec::new(),
            early_allowed: Vec::new(),
        }
    }

    /// What a message changes while the torrent's geometry is unknown
    /// (its metadata is being fetched): what the peer has is kept to be
    /// checked later; it cannot have been asked for anything, and we
    /// choke it.
    fn update_early(&mut self, msg: &Message<'_>, first: bool) -> Result<(), PeerError> {
        match *msg {
            Message::Have(i) => {
                if self.early_haves.len() < MAX_EARLY_HAVES {
                    self.early_haves.push(i);
                }
            }
            Message::Bitfield(bits) => match &mut self.early_bitfield {
                Some(held) if held.len() == bits.len() => {
                    for (mine, theirs) in held.iter_mut().zip(bits) {
                        *mine |= theirs;
                    }
                }
                Some(_) => return Err(PeerError::BadBitfield("its size changed")),
                None => self.early_bitfield = Some(bits.to_vec()),
            },
            Message::HaveAll | Message::HaveNone => {
                self.piece_set_first(first)?;
                self.early_all = matches!(msg, Message::HaveAll);
            }
            Message::AllowedFast(i) => {
                self.need_fast()?;
                if self.early_allowed.len() < MAX_ALLOWED_FAST {
                    self.early_allowed.push(i);
                }
            }
            Message::SuggestPiece(_) => self.need_fast()?,
            Message::RejectRequest(b) => self.rejected(b)?,
            Message::Piece { piece, begin, data } => {
                return Err(PeerError::Unrequested(Block {
                    piece,
                    begin,
                    length: data.len() as u32,
                }))
            }
            Message::Request(b) => self.refuse(b),
            Message::Cancel(b) => self.peer_cancel(b),
            _ => self.update_choking(msg),
        }
        Ok(())
    }

    /// What a message from the peer changes; `first` while no message
    /// other than keep-alives and extensions came before it.
    fn update(&mut self, msg: &Message<'_>, first: bool, g: &Geometry) -> Result<(), PeerError> {
        match *msg {
            Message::Choke | Message::Unchoke | Message::Interested | Message::NotInterested => {
                self.update_choking(msg)
            }
            Message::Have(i) => {
                if i >= g.pieces() {
                    return Err(PeerError::OutOfRange("have index"));
                }
                self.set_have(i);
            }
            Message::Bitfield(bits) => self.bitfield(bits, first, g)?,
            Message::HaveAll => {
                self.piece_set_first(first)?;
                self.set_all(g);
            }
            Message::HaveNone => self.piece_set_first(first)?,
            Message::Request(b) => self.peer_request(b, g)?,
            Message::Cancel(b) => self.peer_cancel(b),
            Message::Piece { piece, begin, data } => {
                let b = Block {
                    piece,
                    begin,
                    length: data.len() as u32,
                };
                self.last_piece_wanted = self.requested.remove(&b);
                if !self.last_piece_wanted && !self.cancelled.contains(&b) {
                    return Err(PeerError::Unrequested(b));
                }
                self.downloaded += data.len() as u64;
            }
            Message::RejectRequest(b) => self.rejected(b)?,
            Message::AllowedFast(i) => self.allowed_fast(i, g)?,
            Message::SuggestPiece(i) => {
                // Advice, not acted on: the picker stays rarest first.
                self.need_fast()?;
                if i >= g.pieces() {
                    return Err(PeerError::OutOfRange("suggested piece"));
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn update_choking(&mut self, msg: &Message<'_>) {
        match msg {
            Message::Choke => {
                self.peer_choking = true;
                // BEP 3: choking discards our outstanding requests (a block
                // already on its way is still tolerated, as for a cancel).
                // With the fast extension they stay, each to be answered
                // by its piece or a reject (BEP 6).
                if !self.fast {
                    for b in self.requested.drain() {
                        remember(&mut self.cancelled, b);
                        self.dropped.push(b);
                    }
                }
            }
            Message::Unchoke => self.peer_choking = false,
            Message::Interested => self.peer_interested = true,
            Message::NotInterested => self.peer_interested = false,
            _ => {}
        }
    }

    fn need_fast(&self) -> Result<(), PeerError> {
        if self.fast {
            Ok(())
        } else {
            Err(PeerError::FastNotOffered)
        }
    }

    /// `have_all` and `have_none` stand for the bitfield: first or never.
    fn piece_set_first(&self, first: bool) -> Result<(), PeerError> {
        self.need_fast()?;
        if first {
            Ok(())
        } else {
            Err(PeerError::LatePieceSet)
        }
    }

    fn set_all(&mut self, g: &Geometry) {
        for i in 0..g.pieces() {
            self.set_have(i);
        }
    }

    fn allowed_fast(&mut self, i: u32, g: &Geometry) -> Result<(), PeerError> {
        self.need_fast()?;
        if i >= g.pieces() {
            return Err(PeerError::OutOfRange("allowed fast piece"));
        }
        if self.allowed_in.len() < MAX_ALLOWED_FAST && !self.allowed_in.contains(&i) {
            self.allowed_in.push(i);
        }
        Ok(())
    }

    /// The peer will not serve `b`: it is free to be asked of others. A
    /// reject for a block we never asked for (or cancelled) breaks BEP 6.
    fn rejected(&mut self, b: Block) -> Result<(), PeerError> {
        self.need_fast()?;
        if self.requested.remove(&b) {
            self.dropped.push(b);
            Ok(())
        } else if self.cancelled.contains(&b) {
            Ok(())
        } else {
            Err(PeerError::UnrequestedReject(b))
        }
    }

    /// A request we will not serve: rejected under the fast extension,
    /// dropped otherwise (common practice).
    fn refuse(&mut self, b: Block) {
        if self.fast && self.to_reject.len() < MAX_PEER_REQUESTS {
            self.to_reject.push(b);
        }
    }

    fn peer_cancel(&mut self, b: Block) {
        if self.peer_requested.remove(&b) {
            self.peer_requests.retain(|r| *r != b);
            // BEP 6: a cancelled request is answered too.
            self.refuse(b);
        }
    }

    fn bitfield(&mut self, bits: &[u8], first: bool, g: &Geometry) -> Result<(), PeerError> {
        // BEP 3 wants it first; some clients (aria2 1.36) send one later
        // too. A late one only adds pieces, like `have`s.
        if bits.len() != self.have.len() {
            return Err(PeerError::BadBitfield("wrong size"));
        }
        let spare = (8 - g.pieces() % 8) % 8;
        let mask = ((1u16 << spare) - 1) as u8;
        if bits.last().is_some_and(|b| b & mask != 0) {
            return Err(PeerError::BadBitfield("spare bits set"));
        }
        for (mine, theirs) in self.have.iter_mut().zip(bits) {
            *mine |= theirs;
        }
        self.have_count = self.have.iter().map(|b| b.count_ones()).sum();
        if !first {
            log::debug!("a bitfield after other messages, taken as haves");
        }
        Ok(())
    }

    fn peer_request(&mut self, b: Block, g: &Geometry) -> Result<(), PeerError> {
        check_block(g, &b)?;
        // While we choke it, only a starting peer's allowed-fast pieces
        // are served (BEP 6).
        let allowed =
            self.allowed_out.contains(&b.piece) && (self.have_count as usize) < ALLOWED_FAST_COUNT;
        if self.am_choking && !allowed {
            self.refuse(b);
            return Ok(());
        }
        if self.peer_requests.len() >= MAX_PEER_REQUESTS {
            if self.fast {
                self.refuse(b);
                return Ok(());
            }
            return Err(PeerError::TooManyRequests);
        }
        if self.peer_requested.insert(b) {
            self.peer_requests.push_back(b);
        }
        Ok(())
    }

    fn set_have(&mut self, i: u32) {
        if let Some(byte) = self.have.get_mut(i as usize / 8) {
            let bit = 0x80 >> (i % 8);
            if *byte & bit == 0 {
                *byte |= bit;
                self.have_count += 1;
            }
        }
    }

    /// The geometry is known: what the peer said it has before is checked
    /// against it.
    fn check_early(&mut self, g: &Geometry) -> Result<(), PeerError> {
        self.have = vec![0; (g.pieces() as usize).div_ceil(8)];
        self.have_count = 0;
        if let Some(bits) = self.early_bitfield.take() {
            self.bitfield(&bits, true, g)?;
        }
        if self.early_all {
            self.set_all(g);
        }
        for i in std::mem::take(&mut self.early_haves) {
            if i >= g.pieces() {
                return Err(PeerError::OutOfRange("have index"));
            }
            self.set_have(i);
        }
        for i in std::mem::take(&mut self.early_allowed) {
            self.allowed_fast(i, g)?;
        }
        Ok(())
    }
}

impl PeerConn {
    fn new(ours: Option<Handshake>, now: Instant) -> PeerConn {
        let mut c = PeerConn {
            stage: Stage::Handshake,
            ours,
            theirs: None,
            handshake_taken: false,
            geometry: None,
            input: Vec::new(),
            read: 0,
            output: OutBuf::new(1 << 20),
            connected_at: now,
            last_received: now,
            last_sent: now,
            x: Exchange::new(),
            uploaded: 0,
        };
        if let Some(h) = ours {
            write_handshake(c.output.tail(), &h);
        }
        c
    }

    /// A connection we dialled for a torrent: our handshake goes first.
    pub fn outgoing(ours: Handshake, now: Instant) -> PeerConn {
        PeerConn::new(Some(ours), now)
    }

    /// A connection a peer opened: we wait for its handshake to learn the
    /// torrent, then [`PeerConn::accept`].
    pub fn incoming(now: Instant) -> PeerConn {
        PeerConn::new(None, now)
    }

    /// Whether the owner should read more: not while more than
    /// [`MAX_INPUT`] waits unparsed (a peer flooding before its torrent
    /// is attached).
    pub fn wants_input(&self) -> bool {
        self.input.len() - self.read <= MAX_INPUT
    }

    /// Bytes from the peer.
    pub fn receive(&mut self, bytes: &[u8], now: Instant) {
        if self.read > 0 {
            // One compaction per batch, not per message.
            self.input.drain(..self.read);
            self.read = 0;
        }
        self.input.extend_from_slice(bytes);
        if !bytes.is_empty() {
            self.last_received = now;
        }
    }

    /// The peer's handshake, once, when it has arrived. For a dialled
    /// connection it must name our torrent; a peer id equal to ours is a
    /// connection to ourselves.
    pub fn poll_handshake(&mut self) -> Result<Option<Handshake>, PeerError> {
        if self.stage == Stage::Handshake {
            let Some(h) = parse_handshake(&self.input[self.read..])? else {
                return Ok(None);
            };
            self.read += HANDSHAKE_LEN;
            if let Some(ours) = &self.ours {
                if ours.info_hash != h.info_hash {
                    return Err(PeerError::WrongTorrent);
                }
            }
            self.theirs = Some(h);
            self.stage = Stage::Pending;
        }
        if self.handshake_taken {
            return Ok(None);
        }
        let Some(h) = self.theirs else {
            return Ok(None);
        };
        if let Some(ours) = &self.ours {
            if ours.peer_id == h.peer_id {
                return Err(PeerError::SelfConnection);
            }
        }
        self.handshake_taken = true;
        Ok(Some(h))
    }

    /// The peer's handshake, if read.
    pub fn handshake(&self) -> Option<&Handshake> {
        self.theirs.as_ref()
    }

    /// Answers an incoming peer's handshake with ours. A peer id equal to
    /// ours is a connection to ourselves.
    pub fn accept(&mut self, ours: Handshake) -> Result<(), PeerError> {
        if self.theirs.is_some_and(|t| t.peer_id == ours.peer_id) {
            return Err(PeerError::SelfConnection);
        }
        if self.ours.is_none() {
            write_handshake(self.output.tail(), &ours);
            self.ours = Some(ours);
        }
        Ok(())
    }

    /// The torrent is known: its geometry (`None` while its metadata is
    /// being fetched: see [`PeerConn::set_geometry`]), and our bitfield to
    /// send (none when we have nothing, as is common).
    pub fn attach(&mut self, geometry: Option<Geometry>, our_bitfield: Option<&[u8]>) {
        if let Some(g) = geometry {
            self.x.have = vec![0; (g.pieces() as usize).div_ceil(8)];
            self.x.have_count = 0;
        }
        self.geometry = geometry;
        self.x.fast = match (&self.ours, &self.theirs) {
            (Some(o), Some(t)) => fast::offers_fast(&o.reserved) && fast::offers_fast(&t.reserved),
            _ => false,
        };
        // With the fast extension, have_all and have_none stand in for the
        // bitfield (and say "nothing" where we would stay silent).
        let all = match (our_bitfield, geometry) {
            (Some(bits), Some(g)) => bits.iter().map(|b| b.count_ones()).sum::<u32>() == g.pieces(),
            _ => false,
        };
        let first = match our_bitfield {
            _ if self.x.fast && all => Some(Message::HaveAll),
            None if self.x.fast => Some(Message::HaveNone),
            Some(bits) => Some(Message::Bitfield(bits)),
            None => None,
        };
        if let Some(m) = first {
            write_message(self.output.tail(), &m);
        }
        if self.stage == Stage::Pending {
            self.stage = Stage::Open { first: true };
        }
    }

    /// The torrent's metadata arrived after the peer was attached: what
    /// it said it has so far is checked against the geometry (an error
    /// closes it).
    pub fn set_geometry(&mut self, geometry: Geometry) -> Result<(), PeerError> {
        if self.geometry.is_some() {
            return Ok(());
        }
        self.x.check_early(&geometry)?;
        self.geometry = Some(geometry);
        Ok(())
    }

    /// The next message, after the connection's own state is updated and
    /// checked. Nothing before [`PeerConn::attach`].
    pub fn poll_message(&mut self) -> Result<Option<Message<'_>>, PeerError> {
        let Stage::Open { first } = self.stage else {
            return Ok(None);
        };
        // A piece message of the largest block we accept, and a bitfield
        // of this torrent, are the largest messages a peer may send.
        let max = (MAX_REQUEST_LEN as usize + 9).max(self.x.have.len() + 1);
        let Some((msg, used)) = split_message(&self.input[self.read..], max)? else {
            return Ok(None);
        };
        self.read += used;
        // The bitfield must come first, but keep-alives and extension
        // messages may precede it (BEP 10 handshakes sometimes do).
        let leading = matches!(
            msg,
            Message::KeepAlive | Message::Extended { .. } | Message::Unknown { .. }
        );
        if !leading {
            self.stage = Stage::Open { first: false };
        }
        match &self.geometry {
            Some(g) => self.x.update(&msg, first, g)?,
            None => self.x.update_early(&msg, first)?,
        }
        for b in self.x.to_reject.drain(..) {
            write_message(self.output.tail(), &Message::RejectRequest(b));
        }
        Ok(Some(msg))
    }

    /// We choke the peer.
    pub fn am_choking(&self) -> bool {
        self.x.am_choking
    }

    /// We are interested in the peer's pieces.
    pub fn am_interested(&self) -> bool {
        self.x.am_interested
    }

    /// The peer chokes us.
    pub fn peer_choking(&self) -> bool {
        self.x.peer_choking
    }

    /// The peer is interested in our pieces.
    pub fn peer_interested(&self) -> bool {
        self.x.peer_interested
    }

    /// Piece payload bytes received.
    pub fn downloaded(&self) -> u64 {
        self.x.downloaded
    }

    /// Whether the peer has piece `i`.
    pub fn peer_has(&self, i: u32) -> bool {
        self.x
            .have
            .get(i as usize / 8)
            .is_some_and(|b| b & (0x80 >> (i % 8)) != 0)
    }

    /// The peer's bitfield as received and updated by `have`.
    pub fn peer_bitfield(&self) -> &[u8] {
        &self.x.have
    }

    /// Pieces the peer has.
    pub fn peer_count(&self) -> u32 {
        self.x.have_count
    }

    /// The peer has every piece.
    pub fn peer_is_seed(&self) -> bool {
        self.geometry
            .is_some_and(|g| g.pieces() > 0 && self.x.have_count == g.pieces())
    }

    /// Whether the last piece message answered one of our requests (a
    /// late answer to a cancelled one is tolerated, and not wanted).
    pub fn last_piece_wanted(&self) -> bool {
        self.x.last_piece_wanted
    }

    /// Our requests the peer discarded by choking us: for the picker.
    pub fn take_dropped_requests(&mut self) -> Vec<Block> {
        std::mem::take(&mut self.x.dropped)
    }

    /// Our requests still unanswered.
    pub fn outstanding(&self) -> usize {
        self.x.requested.len()
    }

    /// Our unanswered requests (to give back when the peer goes).
    pub fn outstanding_requests(&self) -> impl Iterator<Item = &Block> {
        self.x.requested.iter()
    }

    /// The next block the peer asked for, to serve.
    pub fn next_peer_request(&mut self) -> Option<Block> {
        let b = self.x.peer_requests.pop_front()?;
        self.x.peer_requested.remove(&b);
        Some(b)
    }

    /// The block the peer asked for next, without taking it (to check
    /// that a speed limit allows it first).
    pub fn peek_peer_request(&self) -> Option<&Block> {
        self.x.peer_requests.front()
    }

    /// Requests the peer has queued.
    pub fn peer_request_count(&self) -> usize {
        self.x.peer_requests.len()
    }

    fn send(&mut self, msg: &Message<'_>, now: Instant) {
        write_message(self.output.tail(), msg);
        self.last_sent = now;
    }

    /// Chokes the peer; its queued requests are discarded (BEP 3).
    pub fn choke(&mut self, now: Instant) {
        if !self.x.am_choking {
            self.x.am_choking = true;
            self.send(&Message::Choke, now);
            // BEP 6: every queued request is answered; those of allowed
            // fast pieces still will be, with their piece.
            let queued = std::mem::take(&mut self.x.peer_requests);
            self.x.peer_requested.clear();
            for b in queued {
                if self.x.fast && self.x.allowed_out.contains(&b.piece) {
                    self.x.peer_requested.insert(b);
                    self.x.peer_requests.push_back(b);
                } else if self.x.fast {
                    self.send(&Message::RejectRequest(b), now);
                }
            }
        }
    }

    /// Tells the peer our DHT node's port (BEP 5).
    pub fn port(&mut self, port: u16, now: Instant) {
        self.send(&Message::Port(port), now);
    }

    /// Both sides speak the fast extension (BEP 6).
    pub fn is_fast(&self) -> bool {
        self.x.fast
    }

    /// Answers a request we will not serve (a piece we lack): a
    /// `reject_request` under the fast extension. `false` without it,
    /// where there is no way to say so.
    pub fn reject(&mut self, b: Block, now: Instant) -> bool {
        if self.x.fast {
            self.send(&Message::RejectRequest(b), now);
        }
        self.x.fast
    }

    /// Lets the peer request `pieces` while we choke it (`allowed_fast`,
    /// BEP 6; nothing without the extension). At most
    /// [`MAX_ALLOWED_FAST`] in all.
    pub fn allow_fast(&mut self, pieces: &[u32], now: Instant) {
        self.x.allowed_given = true;
        if !self.x.fast {
            return;
        }
        for &i in pieces {
            if self.x.allowed_out.len() >= MAX_ALLOWED_FAST || self.x.allowed_out.contains(&i) {
                continue;
            }
            self.x.allowed_out.push(i);
            self.send(&Message::AllowedFast(i), now);
        }
    }

    /// Whether we gave the peer its allowed-fast set already.
    pub fn gave_allowed_fast(&self) -> bool {
        self.x.allowed_given
    }

    /// Pieces the peer lets us request while it chokes us.
    pub fn allowed_fast(&self) -> &[u32] {
        &self.x.allowed_in
    }

    /// Unchokes the peer.
    pub fn unchoke(&mut self, now: Instant) {
        if self.x.am_choking {
            self.x.am_choking = false;
            self.send(&Message::Unchoke, now);
        }
    }

    /// Tells the peer we want what it has (or no longer do).
    pub fn set_interested(&mut self, on: bool, now: Instant) {
        if self.x.am_interested != on {
            self.x.am_interested = on;
            let msg = if on {
                Message::Interested
            } else {
                Message::NotInterested
            };
            self.send(&msg, now);
        }
    }

    /// Sends an extension protocol message (BEP 10): `id` 0 is the
    /// extension handshake, others the ids the peer gave its extensions.
    pub fn extended(&mut self, id: u8, payload: &[u8], now: Instant) {
        self.send(&Message::Extended { id, payload }, now);
    }

    /// Announces a piece we now have.
    pub fn have(&mut self, piece: u32, now: Instant) {
        self.send(&Message::Have(piece), now);
    }

    /// Asks for a block.
    pub fn request(&mut self, b: Block, now: Instant) {
        if self.x.requested.insert(b) {
            self.send(&Message::Request(b), now);
        }
    }

    /// Withdraws a request; a block already on its way is still taken.
    pub fn cancel(&mut self, b: Block, now: Instant) {
        if self.x.requested.remove(&b) {
            remember(&mut self.x.cancelled, b);
            self.send(&Message::Cancel(b), now);
        }
    }

    /// Appends a piece message for `b` whose data `fill` writes in place
    /// (from disk, straight into the output buffer). If `fill` fails,
    /// nothing is queued.
    pub fn serve_piece<E>(
        &mut self,
        b: Block,
        now: Instant,
        fill: impl FnOnce(&mut [u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let out = self.output.tail();
        let mark = out.len();
        if let Err(e) = fill(reserve_piece(out, b.piece, b.begin, b.length as usize)) {
            out.truncate(mark);
            return Err(e);
        }
        self.last_sent = now;
        self.uploaded += b.length as u64;
        Ok(())
    }

    /// Bytes waiting to be sent.
    pub fn output(&self) -> &[u8] {
        self.output.pending()
    }

    /// `n` bytes of [`PeerConn::output`] were sent.
    pub fn consume_output(&mut self, n: usize) {
        self.output.consume(n);
    }

    /// Bytes queued for the peer.
    pub fn queued_output(&self) -> usize {
        self.output.len()
    }

    /// The peer left more than [`MAX_OUTPUT`] unread: drop it.
    pub fn is_over_output_limit(&self) -> bool {
        self.queued_output() > MAX_OUTPUT
    }

    /// When [`PeerConn::handle_timeout`] must run next.
    pub fn poll_timeout(&self) -> Instant {
        let silence = match self.stage {
            Stage::Handshake => self.connected_at + HANDSHAKE_TIMEOUT,
            _ => self.last_received + INACTIVITY_TIMEOUT,
        };
        silence.min(self.last_sent + KEEPALIVE_INTERVAL)
    }

    /// Timers: the handshake's and silence's deadlines, and keep-alives.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), PeerError> {
        match self.stage {
            Stage::Handshake if now >= self.connected_at + HANDSHAKE_TIMEOUT => {
                return Err(PeerError::HandshakeTimeout)
            }
            Stage::Open { .. } | Stage::Pending
                if now >= self.last_received + INACTIVITY_TIMEOUT =>
            {
                return Err(PeerError::Inactive)
            }
            _ => {}
        }
        if matches!(self.stage, Stage::Open { .. }) && now >= self.last_sent + KEEPALIVE_INTERVAL {
            self.send(&Message::KeepAlive, now);
        }
        Ok(())
    }
}

/// Keeps `b` among the last [`CANCELLED_MEMORY`] withdrawn requests.
fn remember(cancelled: &mut VecDeque<Block>, b: Block) {
    if cancelled.len() >= CANCELLED_MEMORY {
        cancelled.pop_front();
    }
    cancelled.push_back(b);
}

/// A message without its borrowed parts, so that the connection can be
/// updated before the message is lent out again.
#[cfg(test)]
mod tests {
    use super::*;

    const HASH: [u8; 20] = [1; 20];
    // 5 pieces of 32 KiB, the last one 10 bytes.
    fn shape() -> Geometry {
        Geometry::new(32 << 10, 4 * (32 << 10) + 10).unwrap()
    }

    fn hs(id: u8) -> Handshake {
        Handshake {
            reserved: [0; 8],
            info_hash: HASH,
            peer_id: [id; 20],
        }
    }

    fn bytes(msgs: &[Message<'_>]) -> Vec<u8> {
        let mut out = Vec::new();
        for m in msgs {
            write_message(&mut out, m);
        }
        out
    }

    /// An open connection (we dialled peer 2), its output taken.
    fn open(t: Instant) -> PeerConn {
        let mut c = PeerConn::outgoing(hs(1), t);
        let mut theirs = Vec::new();
        write_handshake(&mut theirs, &hs(2));
        c.receive(&theirs, t);
        assert_eq!(c.poll_handshake(), Ok(Some(hs(2))));
        c.attach(Some(shape()), None);
        let n = c.output().len();
        c.consume_output(n);
        c
    }

    fn feed(c: &mut PeerConn, msgs: &[Message<'_>], t: Instant) -> Result<Vec<String>, PeerError> {
        c.receive(&bytes(msgs), t);
        let mut seen = Vec::new();
        while let Some(m) = c.poll_message()? {
            seen.push(format!("{m:?}"));
        }
        Ok(seen)
    }

    fn block(piece: u32, begin: u32, length: u32) -> Block {
        Block {
            piece,
            begin,
            length,
        }
    }

    #[test]
    fn a_stream_reads_the_same_at_every_split_point() {
        let t = Instant::now();
        let data = [7u8; 100];
        let msgs = [
            Message::Bitfield(&[0b1010_1000]),
            Message::Unchoke,
            Message::Interested,
            Message::Have(1),
            Message::KeepAlive,
            Message::Port(1),
            Message::Unknown { id: 77 },
            Message::Piece {
                piece: 4,
                begin: 0,
                data: &data[..10],
            },
        ];
        let mut stream = Vec::new();
        write_handshake(&mut stream, &hs(2));
        let mut body = bytes(&msgs[..6]);
        body.extend([0, 0, 0, 3, 77, 0, 0]); // unknown id 77, 2 bytes
        body.extend(bytes(&msgs[7..]));
        stream.extend(&body);
        let run = |cuts: &[usize]| -> Vec<String> {
            let mut c = PeerConn::outgoing(hs(1), t);
            c.request(block(4, 0, 10), t);
            let mut seen = Vec::new();
            let mut from = 0;
            for &to in cuts.iter().chain([&stream.len()]) {
                c.receive(&stream[from..to], t);
                from = to;
                if c.geometry.is_none() && c.poll_handshake().unwrap().is_some() {
                    c.attach(Some(shape()), None);
                }
                while let Some(m) = c.poll_message().unwrap() {
                    seen.push(format!("{m:?}"));
                }
            }
            seen
        };
        let whole = run(&[]);
        assert_eq!(whole.len(), 8, "{whole:?}");
        for cut in 0..=stream.len() {
            assert_eq!(run(&[cut]), whole, "cut at {cut}");
        }
        let bytewise: Vec<usize> = (1..stream.len()).collect();
        assert_eq!(run(&bytewise), whole);
    }

    #[test]
    fn an_incoming_peer_is_answered_only_once_the_owner_accepts() {
        let t = Instant::now();
        let mut c = PeerConn::incoming(t);
        assert!(c.output().is_empty());
        let mut theirs = Vec::new();
        write_handshake(&mut theirs, &hs(2));
        c.receive(&theirs[..30], t);
        assert_eq!(c.poll_handshake(), Ok(None));
        c.receive(&theirs[30..], t);
        // The owner looks the hash up; unknown: it drops the connection,
        // and nothing was sent.
        assert_eq!(c.poll_handshake(), Ok(Some(hs(2))));
        assert_eq!(c.poll_handshake(), Ok(None), "once");
        assert!(c.output().is_empty());
        assert_eq!(c.poll_message(), Ok(None), "nothing before attach");
        c.accept(hs(1)).unwrap();
        c.attach(Some(shape()), Some(&[0xF8]));
        let out = c.output().to_vec();
        assert_eq!(parse_handshake(&out), Ok(Some(hs(1))));
        assert_eq!(
            split_message(&out[68..], 1 << 20),
            Ok(Some((Message::Bitfield(&[0xF8]), 6)))
        );
        assert!(
            PeerConn::incoming(t).accept(hs(2)).is_ok(),
            "no handshake yet: nothing to compare"
        );
        let mut me = PeerConn::incoming(t);
        me.receive(&theirs, t);
        me.poll_handshake().unwrap();
        assert_eq!(me.accept(hs(2)), Err(PeerError::SelfConnection));
    }

    #[test]
    fn dialled_handshakes_must_name_our_torrent_and_not_be_ourselves() {
        let t = Instant::now();
        let mut other = hs(2);
        other.info_hash = [9; 20];
        let mut c = PeerConn::outgoing(hs(1), t);
        let mut b = Vec::new();
        write_handshake(&mut b, &other);
        c.receive(&b, t);
        assert_eq!(c.poll_handshake(), Err(PeerError::WrongTorrent));
        let mut c = PeerConn::outgoing(hs(1), t);
        let mut b = Vec::new();
        write_handshake(&mut b, &hs(1));
        c.receive(&b, t);
        assert_eq!(c.poll_handshake(), Err(PeerError::SelfConnection));
        let mut c = PeerConn::outgoing(hs(1), t);
        c.receive(b"GET /announce HTTP/1.1\r\n", t);
        assert_eq!(
            c.poll_handshake(),
            Err(PeerError::Wire(WireError::NotBitTorrent))
        );
    }

    #[test]
    fn bitfields_are_checked() {
        let t = Instant::now();
        let bad = |msgs: &[Message<'_>]| feed(&mut open(t), msgs, t).unwrap_err();
        assert_eq!(
            bad(&[Message::Bitfield(&[0xF8, 0])]),
            PeerError::BadBitfield("wrong size")
        );
        assert_eq!(
            bad(&[Message::Bitfield(&[0xFC])]),
            PeerError::BadBitfield("spare bits set")
        );
        let mut late = open(t);
        feed(
            &mut late,
            &[
                Message::Have(1),
                Message::Unchoke,
                Message::Bitfield(&[0x80]),
            ],
            t,
        )
        .unwrap();
        assert_eq!(late.peer_count(), 2, "a late bitfield adds to the haves");
        let mut c = open(t);
        feed(
            &mut c,
            &[
                Message::Bitfield(&[0xF0]),
                Message::Have(4),
                Message::Have(4),
            ],
            t,
        )
        .unwrap();
        assert!(c.peer_is_seed());
        assert_eq!(c.peer_count(), 5);
        assert_eq!(
            bad(&[Message::Have(5)]),
            PeerError::OutOfRange("have index")
        );
    }

    #[test]
    fn requests_are_range_checked_bounded_and_cancelled() {
        let t = Instant::now();
        let bad = |b: Block| {
            let mut c = open(t);
            c.unchoke(t);
            feed(&mut c, &[Message::Request(b)], t).unwrap_err()
        };
        assert_eq!(bad(block(5, 0, 16)), PeerError::OutOfRange("piece index"));
        assert_eq!(bad(block(4, 0, 11)), PeerError::OutOfRange("block end"));
        assert_eq!(bad(block(4, 10, 1)), PeerError::OutOfRange("block end"));
        assert_eq!(bad(block(0, 0, 0)), PeerError::OutOfRange("block length"));
        assert_eq!(
            bad(block(0, 0, (128 << 10) + 1)),
            PeerError::OutOfRange("block length")
        );

        let mut c = open(t);
        // Choked: requests are ignored.
        feed(&mut c, &[Message::Request(block(0, 0, 16))], t).unwrap();
        assert_eq!(c.next_peer_request(), None);
        c.unchoke(t);
        feed(
            &mut c,
            &[
                Message::Request(block(0, 0, 16)),
                Message::Request(block(1, 0, 16)),
                Message::Cancel(block(0, 0, 16)),
            ],
            t,
        )
        .unwrap();
        assert_eq!(c.next_peer_request(), Some(block(1, 0, 16)));
        assert_eq!(c.next_peer_request(), None);
        // A duplicate is queued once; once served, it may be asked again.
        let twice = [
            Message::Request(block(3, 0, 16)),
            Message::Request(block(3, 0, 16)),
        ];
        feed(&mut c, &twice, t).unwrap();
        assert_eq!(c.peer_request_count(), 1);
        assert_eq!(c.next_peer_request(), Some(block(3, 0, 16)));
        feed(&mut c, &twice[..1], t).unwrap();
        assert_eq!(c.next_peer_request(), Some(block(3, 0, 16)));
        feed(&mut c, &[Message::Request(block(2, 0, 16))], t).unwrap();
        c.choke(t);
        assert_eq!(c.peer_request_count(), 0, "choking discards the queue");

        let mut c = open(t);
        c.unchoke(t);
        let flood: Vec<Message<'_>> = (0..=MAX_PEER_REQUESTS as u32)
            .map(|i| Message::Request(block(i % 4, (i / 4) * 16, 16)))
            .collect();
        assert_eq!(feed(&mut c, &flood, t), Err(PeerError::TooManyRequests));
    }

    #[test]
    fn pieces_must_answer_requests_and_late_cancelled_ones_are_tolerated() {
        let t = Instant::now();
        let data = [1u8; 16];
        let piece = |b: Block| Message::Piece {
            piece: b.piece,
            begin: b.begin,
            data: &data[..b.length as usize],
        };
        let mut c = open(t);
        let (a, b) = (block(0, 0, 16), block(0, 16, 16));
        c.request(a, t);
        c.request(b, t);
        assert_eq!(c.outstanding(), 2);
        c.cancel(b, t);
        feed(&mut c, &[piece(a)], t).unwrap();
        assert!(c.last_piece_wanted());
        feed(&mut c, &[piece(b)], t).unwrap();
        assert!(!c.last_piece_wanted(), "late, after our cancel");
        assert_eq!(c.downloaded(), 32);
        assert_eq!(
            feed(&mut c, &[piece(block(1, 0, 16))], t),
            Err(PeerError::Unrequested(block(1, 0, 16)))
        );
        // Choked: our requests are dropped and handed back; one already
        // on its way is still taken.
        let mut c = open(t);
        c.request(a, t);
        feed(&mut c, &[Message::Unchoke, Message::Choke], t).unwrap();
        assert_eq!(c.take_dropped_requests(), vec![a]);
        assert_eq!(c.outstanding(), 0);
        feed(&mut c, &[piece(a)], t).unwrap();
        assert!(!c.last_piece_wanted());
    }

    #[test]
    fn oversized_messages_are_refused_from_their_header() {
        let t = Instant::now();
        let mut c = open(t);
        c.receive(&(10u32 << 20).to_be_bytes(), t);
        assert!(matches!(
            c.poll_message(),
            Err(PeerError::Wire(WireError::TooLong { .. }))
        ));
    }

    #[test]
    fn timers_close_silent_peers_and_send_keepalives() {
        let t = Instant::now();
        let mut c = PeerConn::incoming(t);
        assert_eq!(c.poll_timeout(), t + HANDSHAKE_TIMEOUT);
        assert_eq!(c.handle_timeout(t + Duration::from_secs(5)), Ok(()));
        assert_eq!(
            c.handle_timeout(t + HANDSHAKE_TIMEOUT),
            Err(PeerError::HandshakeTimeout)
        );

        let mut c = open(t);
        let later = t + KEEPALIVE_INTERVAL;
        assert_eq!(c.poll_timeout(), later);
        c.handle_timeout(later).unwrap();
        assert_eq!(c.output(), &[0, 0, 0, 0], "a keep-alive");
        c.receive(&[0, 0, 0, 0], later);
        assert_eq!(
            c.handle_timeout(t + INACTIVITY_TIMEOUT),
            Ok(()),
            "heard at 100 s"
        );
        assert_eq!(
            c.handle_timeout(later + INACTIVITY_TIMEOUT),
            Err(PeerError::Inactive)
        );
    }

    #[test]
    fn output_is_bounded() {
        let t = Instant::now();
        let mut c = open(t);
        c.unchoke(t);
        while !c.is_over_output_limit() {
            c.serve_piece(block(0, 0, 16 << 10), t, |_| Ok::<(), ()>(()))
                .unwrap();
        }
        assert!(c.queued_output() > MAX_OUTPUT);
        let n = c.queued_output();
        c.consume_output(n);
        assert!(!c.is_over_output_limit());
        assert_eq!(c.uploaded % (16 << 10), 0);
    }

    #[test]
    fn a_piece_whose_data_cannot_be_read_queues_nothing() {
        let t = Instant::now();
        let mut c = open(t);
        c.unchoke(t);
        let before = c.output().to_vec();
        let up = c.uploaded;
        let r = c.serve_piece(block(0, 0, 16 << 10), t, |buf| {
            buf[0] = 1;
            Err("disk gone")
        });
        assert_eq!(r, Err("disk gone"));
        assert_eq!((c.output(), c.uploaded), (&before[..], up));
        c.serve_piece(block(0, 0, 4), t, |buf| {
            buf.copy_from_slice(b"abcd");
            Ok::<(), ()>(())
        })
        .unwrap();
        assert!(c.output().ends_with(b"abcd"));
    }

    fn fast_hs(id: u8) -> Handshake {
        let mut h = hs(id);
        fast::set_reserved_bit(&mut h.reserved);
        h
    }

    /// A connection whose two sides offered the fast extension (`ours`
    /// holds what we have: none, all, or some).
    fn open_fast(t: Instant, ours: Option<&[u8]>) -> (PeerConn, Vec<u8>) {
        let mut c = PeerConn::outgoing(fast_hs(1), t);
        let mut theirs = Vec::new();
        write_handshake(&mut theirs, &fast_hs(2));
        c.receive(&theirs, t);
        assert_eq!(c.poll_handshake(), Ok(Some(fast_hs(2))));
        c.attach(Some(shape()), ours);
        let out = c.output()[HANDSHAKE_LEN..].to_vec();
        let n = c.output().len();
        c.consume_output(n);
        (c, out)
    }

    fn sent(c: &mut PeerConn) -> Vec<String> {
        let out = c.output().to_vec();
        c.consume_output(out.len());
        let mut seen = Vec::new();
        let mut rest = &out[..];
        while let Ok(Some((m, used))) = split_message(rest, 1 << 20) {
            seen.push(format!("{m:?}"));
            rest = &rest[used..];
        }
        seen
    }

    #[test]
    fn have_all_and_have_none_stand_for_our_bitfield_under_the_fast_extension() {
        let t = Instant::now();
        let bits = |m: Message<'_>| {
            let mut out = Vec::new();
            write_message(&mut out, &m);
            out
        };
        assert_eq!(open_fast(t, None).1, bits(Message::HaveNone));
        assert_eq!(open_fast(t, Some(&[0xF8])).1, bits(Message::HaveAll));
        assert_eq!(
            open_fast(t, Some(&[0xA0])).1,
            bits(Message::Bitfield(&[0xA0]))
        );
        assert!(open_fast(t, None).0.is_fast());
        assert!(!open(t).is_fast(), "one side did not offer it");
    }

    #[test]
    fn the_fast_extensions_rules_are_enforced() {
        let t = Instant::now();
        let (mut c, _) = open_fast(t, None);
        feed(&mut c, &[Message::HaveAll], t).unwrap();
        assert!(c.peer_is_seed());
        assert_eq!(
            feed(&mut c, &[Message::HaveNone], t),
            Err(PeerError::LatePieceSet)
        );
        let (mut c, _) = open_fast(t, None);
        assert_eq!(
            feed(&mut c, &[Message::Have(1), Message::HaveAll], t),
            Err(PeerError::LatePieceSet),
            "have_all after a have"
        );
        let (mut c, _) = open_fast(t, None);
        assert_eq!(
            feed(&mut c, &[Message::RejectRequest(block(0, 0, 16384))], t),
            Err(PeerError::UnrequestedReject(block(0, 0, 16384)))
        );
        let (mut c, _) = open_fast(t, None);
        assert_eq!(
            feed(&mut c, &[Message::AllowedFast(5)], t),
            Err(PeerError::OutOfRange("allowed fast piece"))
        );
        for m in [
            Message::HaveAll,
            Message::HaveNone,
            Message::AllowedFast(0),
            Message::SuggestPiece(0),
            Message::RejectRequest(block(0, 0, 16384)),
        ] {
            assert_eq!(
                feed(&mut open(t), &[m], t),
                Err(PeerError::FastNotOffered),
                "{m:?} without the extension"
            );
        }
    }

    #[test]
    fn with_the_fast_extension_every_request_is_answered() {
        let t = Instant::now();
        let (mut c, _) = open_fast(t, Some(&[0xF8]));
        // Choked: rejected at once.
        feed(&mut c, &[Message::Request(block(1, 0, 16384))], t).unwrap();
        assert_eq!(
            sent(&mut c),
            ["RejectRequest(Block { piece: 1, begin: 0, length: 16384 })"]
        );
        // Unchoked: queued; choking answers the queue with rejects.
        c.unchoke(t);
        feed(&mut c, &[Message::Request(block(2, 0, 16384))], t).unwrap();
        assert_eq!(c.peer_request_count(), 1);
        c.choke(t);
        assert_eq!(
            sent(&mut c),
            [
                "Unchoke",
                "Choke",
                "RejectRequest(Block { piece: 2, begin: 0, length: 16384 })"
            ]
        );
        assert_eq!(c.peer_request_count(), 0);
        // A cancelled request is answered too.
        c.unchoke(t);
        feed(&mut c, &[Message::Request(block(3, 0, 16384))], t).unwrap();
        feed(&mut c, &[Message::Cancel(block(3, 0, 16384))], t).unwrap();
        assert_eq!(
            sent(&mut c),
            [
                "Unchoke",
                "RejectRequest(Block { piece: 3, begin: 0, length: 16384 })"
            ]
        );
        // An allowed-fast piece is served while choked, to a starting peer.
        c.choke(t);
        c.allow_fast(&[4], t);
        sent(&mut c);
        feed(&mut c, &[Message::Request(block(4, 0, 10))], t).unwrap();
        assert_eq!(c.peer_request_count(), 1, "allowed fast");
        assert!(sent(&mut c).is_empty());
    }

    #[test]
    fn with_the_fast_extension_a_choke_keeps_our_requests_until_rejected() {
        let t = Instant::now();
        let (mut c, _) = open_fast(t, None);
        feed(
            &mut c,
            &[Message::HaveAll, Message::Unchoke, Message::AllowedFast(2)],
            t,
        )
        .unwrap();
        c.request(block(0, 0, 16384), t);
        c.request(block(0, 16384, 16384), t);
        feed(&mut c, &[Message::Choke], t).unwrap();
        assert_eq!(c.outstanding(), 2, "not discarded by the choke");
        assert!(c.take_dropped_requests().is_empty());
        feed(&mut c, &[Message::RejectRequest(block(0, 0, 16384))], t).unwrap();
        assert_eq!(c.outstanding(), 1);
        assert_eq!(c.take_dropped_requests(), vec![block(0, 0, 16384)]);
        assert_eq!(c.allowed_fast(), &[2]);
    }

    #[test]
    fn a_magnets_peer_may_send_have_all_before_the_geometry_is_known() {
        let t = Instant::now();
        let mut c = PeerConn::outgoing(fast_hs(1), t);
        let mut theirs = Vec::new();
        write_handshake(&mut theirs, &fast_hs(2));
        c.receive(&theirs, t);
        c.poll_handshake().unwrap();
        c.attach(None, None);
        feed(&mut c, &[Message::HaveAll, Message::AllowedFast(3)], t).unwrap();
        assert!(!c.peer_is_seed(), "nothing to count against yet");
        c.set_geometry(shape()).unwrap();
        assert!(c.peer_is_seed());
        assert_eq!(c.allowed_fast(), &[3]);
    }
}
