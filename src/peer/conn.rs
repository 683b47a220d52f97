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
    /// Before the geometry is known: the peer's bitfield as received, and
    /// its `have`s, checked once it is.
    early_bitfield: Option<Vec<u8>>,
    early_haves: Vec<u32>,
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
            early_bitfield: None,
            early_haves: Vec::new(),
        }
    }

    /// What a message changes while the torrent's geometry is unknown
    /// (its metadata is being fetched): what the peer has is kept to be
    /// checked later; it cannot have been asked for anything.
    fn update_early(&mut self, msg: &Message<'_>) -> Result<(), PeerError> {
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
            Message::Piece { piece, begin, data } => {
                return Err(PeerError::Unrequested(Block {
                    piece,
                    begin,
                    length: data.len() as u32,
                }))
            }
            // We choke it until we have data: requests are dropped.
            Message::Request(_) => {}
            _ => self.update_choking(msg),
        }
        Ok(())
    }

    fn update_choking(&mut self, msg: &Message<'_>) {
        match msg {
            Message::Choke => {
                self.peer_choking = true;
                // BEP 3: choking discards our outstanding requests. A block
                // already on its way is still tolerated, as for a cancel.
                for b in self.requested.drain() {
                    remember(&mut self.cancelled, b);
                    self.dropped.push(b);
                }
            }
            Message::Unchoke => self.peer_choking = false,
            Message::Interested => self.peer_interested = true,
            Message::NotInterested => self.peer_interested = false,
            _ => {}
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
        for i in std::mem::take(&mut self.early_haves) {
            if i >= g.pieces() {
                return Err(PeerError::OutOfRange("have index"));
            }
            self.set_have(i);
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
            Message::Request(b) => self.peer_request(b, g)?,
            Message::Cancel(b) if self.peer_requested.remove(&b) => {
                self.peer_requests.retain(|r| *r != b);
            }
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
            _ => {}
        }
        Ok(())
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
        if self.am_choking {
            // Common practice: requests while choked are dropped.
            return Ok(());
        }
        if self.peer_requests.len() >= MAX_PEER_REQUESTS {
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
        if let Some(bits) = our_bitfield {
            write_message(self.output.tail(), &Message::Bitfield(bits));
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
            None => self.x.update_early(&msg)?,
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
            self.x.peer_requests.clear();
            self.x.peer_requested.clear();
            self.send(&Message::Choke, now);
        }
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
}
