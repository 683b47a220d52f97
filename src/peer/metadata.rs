//! The metadata exchange of BEP 9 (`ut_metadata`), sans-IO: the message
//! codec, [`MetadataFetch`] (one torrent's info dictionary fetched from
//! many peers, with time passed in), and serving our own info dictionary
//! ([`answer_request`], [`ServeLimit`]).
//!
//! Everything a peer says is hostile. The sizes it announces are checked
//! against [`MAX_METADATA_SIZE`] and against the other peers'; every piece
//! must be exactly as long as the size says; memory is spent only on
//! pieces as they arrive (a lying size costs a table of at most
//! [`MAX_PIECES`] empty slots, never a buffer of that size); and when the
//! assembled bytes fail the info hash, the peers that sent bad pieces are
//! found by asking other peers for the same pieces and comparing, then
//! reported and never asked again.
//!
//! # What the lead must add to the extension handshake (`pex.rs`)
//!
//! - Ours (`LocalHandshake`): when the torrent is not private, `m` gains
//!   `ut_metadata` = [`OUR_UT_METADATA_ID`] (2, as libtorrent; it sorts
//!   before `ut_pex`), and, when we have the info dictionary, a top-level
//!   `metadata_size` = its length in bytes (it sorts between `m` and `p`):
//!   `d1:md11:ut_metadatai2e6:ut_pexi1ee13:metadata_sizei31235e1:p…`.
//!   A private torrent offers neither: libtorrent and Transmission both
//!   leave `ut_metadata` out of private torrents (BEP 27 and BEP 9 are
//!   silent; a private torrent's metadata comes with its .torrent file).
//! - Theirs (`ExtendedHandshake`): keep `metadata_size` (first
//!   occurrence, integers only) as `Option<i64>`, and an accessor
//!   `ut_metadata()` = `extension_id(UT_METADATA)`. Pass it to
//!   [`MetadataFetch::peer_offers`] as `u32`: a negative value as 0 (no
//!   metadata), one over `u32::MAX` as `u32::MAX` (refused as too large).
//!
//! # Wiring
//!
//! Our `ut_metadata` messages come in as extended id
//! [`OUR_UT_METADATA_ID`]; we send with the peer's id. A fetch's owner
//! calls [`MetadataFetch::poll_request`] for each of its peers after any
//! `handle_*` call and at [`MetadataFetch::poll_timeout`], sends each
//! request, and acts on [`MetadataFetch::poll_event`]: `Done` gives the
//! verified info dictionary (wrap it as `d4:info…e` with the magnet's
//! trackers for `Metainfo::parse`), `Drop` names a peer to disconnect. An
//! `Err` from `handle_data` or `peer_offers` means the same: drop that
//! peer. Our requests' data answers are refused by the codec if over 16
//! KiB; the wire's message limit bounds the rest.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use sha1::{Digest, Sha1};

use crate::codec::bencode::{DecodeError, Reader};

/// The extension name in the handshake's `m` dict.
pub const UT_METADATA: &str = "ut_metadata";
/// The extended id we ask peers to use for `ut_metadata` messages to us
/// (libtorrent's choice; `ut_pex` has 1).
pub const OUR_UT_METADATA_ID: u8 = 2;

/// Bytes in every metadata piece but the last (BEP 9).
pub const PIECE_SIZE: usize = 16 << 10;

/// The largest info dictionary fetched: libtorrent's default
/// `max_metadata_size`. The daemon accepts metainfo files of up to
/// `MAX_METAINFO_BYTES` (32 MiB); 30 MiB of info dictionary leaves room
/// for the wrapping dict and tracker list of the file we then save, so
/// whatever we fetch can be added.
pub const MAX_METADATA_SIZE: u32 = 30 << 20;

/// Pieces of the largest info dictionary: the most slots a fetch holds.
pub const MAX_PIECES: usize = (MAX_METADATA_SIZE as usize).div_ceil(PIECE_SIZE);

/// The largest `ut_metadata` payload accepted: a full piece and its
/// dictionary (libtorrent refuses more than 17 KiB too).
pub const MAX_PAYLOAD: usize = PIECE_SIZE + 1024;

/// Requests outstanding to one peer at a time (libtorrent's 2): enough
/// to keep it busy, few enough to spread pieces over peers.
pub const MAX_OUTSTANDING: usize = 2;

/// A piece request unanswered this long goes to another peer. A peer
/// sending 2 KiB/s answers two 16 KiB pieces well within it.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// Timeouts in a row after which a peer is reported to be dropped: one
/// may be a slow moment, two with nothing between is a peer that does
/// not answer.
pub const MAX_TIMEOUTS: u32 = 2;

/// Requests timed out but still accepted if answered late, per peer.
const MAX_LATE: usize = 4;

/// A peer that rejected a request is not asked again for this long
/// (libtorrent's pause): it has no metadata, or is limiting us.
pub const REJECT_BACKOFF: Duration = Duration::from_secs(60);

/// Peers a fetch keeps track of; further offers are ignored. More than
/// any torrent's connection limit.
pub const MAX_FETCH_PEERS: usize = 256;

/// How many agreeing peers a piece needs at most. Normally one copy of
/// each piece is taken; each time the assembled bytes fail the info hash,
/// every piece needs one more peer agreeing with it (a strict majority of
/// its copies), up to this. Three lets two honest peers outvote a liar
/// and a third break any tie.
pub const MAX_AGREEMENT: usize = 3;

/// Peers asked for one piece at most; past this with no majority, the
/// round starts over.
const MAX_VOTERS: usize = 2 * MAX_AGREEMENT + 1;

/// Events kept until polled.
const MAX_EVENTS: usize = 2 * MAX_FETCH_PEERS;

/// Requests served to one peer per minute; beyond, we reject. About 4
/// MiB a minute: an ordinary info dictionary (well under 1 MiB) in one go,
/// the largest in minutes, while a peer asking for the same pieces again
/// and again costs us at most that much upload.
pub const MAX_REQUESTS_PER_MINUTE: u32 = 250;

/// Why a `ut_metadata` payload was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataError {
    /// Over [`MAX_PAYLOAD`] bytes.
    TooLong {
        /// Its length.
        len: usize,
    },
    /// The dictionary is not bencode.
    Bencode(DecodeError),
    /// The payload does not start with a dictionary.
    NotADict,
    /// A required key is missing.
    Missing(&'static str),
    /// A known key whose value is not an integer in range.
    BadField(&'static str),
    /// Bytes after the dictionary of a request or a reject.
    TrailingData,
    /// A data message's piece over [`PIECE_SIZE`].
    PieceTooLong {
        /// Its length.
        len: usize,
    },
}

impl From<DecodeError> for MetadataError {
    fn from(e: DecodeError) -> MetadataError {
        MetadataError::Bencode(e)
    }
}

impl fmt::Display for MetadataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetadataError::TooLong { len } => {
                write!(f, "ut_metadata message of {len} bytes, over {MAX_PAYLOAD}")
            }
            MetadataError::Bencode(e) => write!(f, "ut_metadata message: {e}"),
            MetadataError::NotADict => f.write_str("ut_metadata message is not a dict"),
            MetadataError::Missing(k) => write!(f, "ut_metadata message without {k:?}"),
            MetadataError::BadField(k) => write!(f, "ut_metadata message: malformed {k:?}"),
            MetadataError::TrailingData => {
                f.write_str("ut_metadata request or reject with data after it")
            }
            MetadataError::PieceTooLong { len } => {
                write!(f, "ut_metadata piece of {len} bytes, over {PIECE_SIZE}")
            }
        }
    }
}

impl std::error::Error for MetadataError {}

/// One `ut_metadata` message, borrowing a data message's piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetadataMessage<'a> {
    /// `msg_type` 0: asks for a piece.
    Request {
        /// The piece index.
        piece: u32,
    },
    /// `msg_type` 1: a piece, and the size of the whole.
    Data {
        /// The piece index.
        piece: u32,
        /// The info dictionary's size in bytes.
        total_size: u32,
        /// The piece's bytes (what follows the dictionary).
        data: &'a [u8],
    },
    /// `msg_type` 2: the sender will not send that piece.
    Reject {
        /// The piece index.
        piece: u32,
    },
}

impl<'a> MetadataMessage<'a> {
    /// Parses a payload (what follows the extended id). `None` for a
    /// `msg_type` we do not know, which BEP 9 says to ignore. Unknown keys
    /// are skipped; a known key's first occurrence counts.
    pub fn parse(payload: &'a [u8]) -> Result<Option<MetadataMessage<'a>>, MetadataError> {
        if payload.len() > MAX_PAYLOAD {
            return Err(MetadataError::TooLong { len: payload.len() });
        }
        let mut r = Reader::new(payload);
        if r.peek() != Some(b'd') {
            return Err(MetadataError::NotADict);
        }
        r.begin_dict()?;
        let mut fields: [Option<i64>; 3] = [None; 3];
        while !r.at_end()? {
            let key = r.key()?;
            let slot = match key {
                b"msg_type" => 0,
                b"piece" => 1,
                b"total_size" => 2,
                _ => {
                    r.skip()?;
                    continue;
                }
            };
            let name = ["msg_type", "piece", "total_size"][slot];
            if r.peek() != Some(b'i') {
                return Err(MetadataError::BadField(name));
            }
            let value = r.value()?.as_int();
            if let Some(f) = fields.get_mut(slot) {
                if f.is_none() {
                    *f = value;
                }
            }
        }
        let rest = payload.get(r.position()..).unwrap_or(&[]);
        let [msg_type, piece, total_size] = fields;
        let msg_type = msg_type.ok_or(MetadataError::Missing("msg_type"))?;
        if !(0..=2).contains(&msg_type) {
            return Ok(None);
        }
        let piece = to_u32(piece, "piece")?;
        let msg = match msg_type {
            0 => MetadataMessage::Request { piece },
            2 => MetadataMessage::Reject { piece },
            1 => {
                if rest.len() > PIECE_SIZE {
                    return Err(MetadataError::PieceTooLong { len: rest.len() });
                }
                return Ok(Some(MetadataMessage::Data {
                    piece,
                    total_size: to_u32(total_size, "total_size")?,
                    data: rest,
                }));
            }
            _ => return Ok(None),
        };
        if !rest.is_empty() {
            return Err(MetadataError::TrailingData);
        }
        Ok(Some(msg))
    }

    /// The piece the message is about.
    pub fn piece(&self) -> u32 {
        match self {
            MetadataMessage::Request { piece }
            | MetadataMessage::Reject { piece }
            | MetadataMessage::Data { piece, .. } => *piece,
        }
    }

    /// Appends the payload: the dictionary (keys in canonical order), then
    /// a data message's piece.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let (msg_type, total_size, data) = match self {
            MetadataMessage::Request { .. } => (0, None, &[][..]),
            MetadataMessage::Data {
                total_size, data, ..
            } => (1, Some(*total_size), *data),
            MetadataMessage::Reject { .. } => (2, None, &[][..]),
        };
        out.extend_from_slice(b"d8:msg_typei");
        out.extend_from_slice(msg_type.to_string().as_bytes());
        out.extend_from_slice(b"e5:piecei");
        out.extend_from_slice(self.piece().to_string().as_bytes());
        out.push(b'e');
        if let Some(n) = total_size {
            out.extend_from_slice(b"10:total_sizei");
            out.extend_from_slice(n.to_string().as_bytes());
            out.push(b'e');
        }
        out.push(b'e');
        out.extend_from_slice(data);
    }

    /// Appends the whole peer wire message: length prefix, id 20,
    /// `ext_id` (the peer's id for `ut_metadata`), the payload. The piece
    /// is copied once, straight into `out`.
    pub fn write_extended(&self, out: &mut Vec<u8>, ext_id: u8) {
        let start = out.len();
        out.extend_from_slice(&[0, 0, 0, 0, super::extension::EXTENDED_MSG_ID, ext_id]);
        self.encode(out);
        let len = (out.len() - start - 4) as u32;
        out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    }
}

fn to_u32(v: Option<i64>, name: &'static str) -> Result<u32, MetadataError> {
    let v = v.ok_or(MetadataError::Missing(name))?;
    u32::try_from(v).map_err(|_| MetadataError::BadField(name))
}

/// Pieces of an info dictionary of `size` bytes.
pub fn piece_count(size: u32) -> usize {
    (size as usize).div_ceil(PIECE_SIZE)
}

/// Bytes in piece `piece` of an info dictionary of `size` bytes: 16 KiB
/// but for the last, which holds exactly what is left.
pub fn piece_len(size: u32, piece: u32) -> usize {
    let start = (piece as usize).saturating_mul(PIECE_SIZE);
    (size as usize).saturating_sub(start).min(PIECE_SIZE)
}

/// A peer, as the fetch's owner names it (a slab key, say).
pub type PeerKey = usize;

/// Why a peer should be dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Misbehaviour {
    /// Its handshake's `metadata_size` is over [`MAX_METADATA_SIZE`].
    SizeTooLarge {
        /// What it said.
        size: u32,
    },
    /// A later handshake announced another size than the first.
    SizeChanged {
        /// The first size.
        was: u32,
        /// The new one.
        now: u32,
    },
    /// A data message's `total_size` is not the size it announced.
    TotalSizeMismatch {
        /// Its handshake's size.
        offered: u32,
        /// The data message's.
        total_size: u32,
    },
    /// A piece index past the last piece.
    PieceOutOfRange {
        /// The index.
        piece: u32,
    },
    /// A piece of the wrong length (all are 16 KiB but the last, which
    /// holds what is left).
    BadPieceLength {
        /// The index.
        piece: u32,
        /// Its length.
        len: usize,
        /// The length it must have.
        want: usize,
    },
    /// It left [`MAX_TIMEOUTS`] requests in a row unanswered.
    Unresponsive,
    /// It sent a piece other than the verified metadata's.
    BadData,
    /// It sent pieces that, put together, failed the info hash, and no
    /// other peer can tell which were wrong.
    FailedHash,
    /// It announced a `metadata_size` other than the verified one.
    WrongSize {
        /// What it announced.
        offered: u32,
        /// The info dictionary's size.
        actual: u32,
    },
}

impl fmt::Display for Misbehaviour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Misbehaviour::SizeTooLarge { size } => {
                write!(
                    f,
                    "metadata_size {size} over the limit of {MAX_METADATA_SIZE}"
                )
            }
            Misbehaviour::SizeChanged { was, now } => {
                write!(f, "metadata_size changed from {was} to {now}")
            }
            Misbehaviour::TotalSizeMismatch {
                offered,
                total_size,
            } => write!(
                f,
                "metadata total_size {total_size}, but {offered} announced"
            ),
            Misbehaviour::PieceOutOfRange { piece } => {
                write!(f, "metadata piece {piece} out of range")
            }
            Misbehaviour::BadPieceLength { piece, len, want } => {
                write!(f, "metadata piece {piece} of {len} bytes, not {want}")
            }
            Misbehaviour::Unresponsive => f.write_str("metadata requests unanswered"),
            Misbehaviour::BadData => f.write_str("sent metadata that fails the info hash"),
            Misbehaviour::FailedHash => f.write_str("metadata it sent failed the info hash"),
            Misbehaviour::WrongSize { offered, actual } => {
                write!(
                    f,
                    "metadata_size {offered}, but the metadata is {actual} bytes"
                )
            }
        }
    }
}

/// What a fetch tells its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchEvent {
    /// The info dictionary, verified against the info hash. Only drops
    /// of peers that lied follow it.
    Done(Vec<u8>),
    /// Disconnect this peer; it is never asked again.
    Drop {
        /// The peer.
        peer: PeerKey,
        /// What it did.
        reason: Misbehaviour,
    },
}

/// A request sent to a peer and not answered.
#[derive(Debug, Clone, Copy)]
struct Ask {
    piece: u32,
    /// Still within [`REQUEST_TIMEOUT`]; else late, but still taken.
    live: bool,
}

/// One peer offering metadata.
#[derive(Debug)]
struct Peer {
    /// Never reused: votes name peers by it, so a slab key handed to a
    /// new connection inherits nothing.
    id: u64,
    /// Its `metadata_size`; 0 while it has none.
    size: u32,
    banned: bool,
    asks: Vec<Ask>,
    timeouts: u32,
    resting_until: Option<Instant>,
}

/// The peers who sent one version of a piece.
#[derive(Debug)]
struct Copy {
    digest: [u8; 20],
    voters: Vec<u64>,
}

/// One 16 KiB slot of the info dictionary.
#[derive(Debug, Default)]
struct Slot {
    /// Versions received, most voted first once sorted by `leader`.
    copies: Vec<Copy>,
    /// The bytes of one version (the leading one when it is known).
    data: Option<([u8; 20], Box<[u8]>)>,
    /// The peer asked for it now, and until when.
    asked: Option<(PeerKey, Instant)>,
}

impl Slot {
    /// The version with the most voters (the first received on a tie).
    fn leader(&self) -> Option<&Copy> {
        self.copies
            .iter()
            .enumerate()
            .max_by_key(|(i, c)| (c.voters.len(), std::cmp::Reverse(*i)))
            .map(|(_, c)| c)
    }

    /// A strict majority of at least `need` voters, and its bytes held.
    fn settled(&self, need: usize) -> bool {
        let Some(lead) = self.leader() else {
            return false;
        };
        let n = lead.voters.len();
        n >= need
            && self
                .copies
                .iter()
                .all(|c| std::ptr::eq(c, lead) || c.voters.len() < n)
            && self.data.as_ref().is_some_and(|(d, _)| *d == lead.digest)
    }

    fn has_voter(&self, id: u64) -> bool {
        self.copies.iter().any(|c| c.voters.contains(&id))
    }

    fn voter_count(&self) -> usize {
        self.copies.iter().map(|c| c.voters.len()).sum()
    }

    fn vote(&mut self, id: u64, bytes: &[u8]) {
        let digest: [u8; 20] = Sha1::digest(bytes).into();
        match self.copies.iter_mut().find(|c| c.digest == digest) {
            Some(c) => c.voters.push(id),
            None => self.copies.push(Copy {
                digest,
                voters: vec![id],
            }),
        }
        let lead = self.leader().map(|c| c.digest);
        let have_lead = self.data.as_ref().map(|(d, _)| *d) == lead;
        if lead == Some(digest) && !have_lead {
            self.data = Some((digest, bytes.into()));
        }
    }

    fn remove_voter(&mut self, id: u64) {
        for c in &mut self.copies {
            c.voters.retain(|v| *v != id);
        }
        self.copies.retain(|c| !c.voters.is_empty());
        let known = |d: &[u8; 20]| self.copies.iter().any(|c| c.digest == *d);
        if self.data.as_ref().is_some_and(|(d, _)| !known(d)) {
            self.data = None;
        }
    }
}

/// Fetching one torrent's info dictionary from the peers that offer it.
#[derive(Debug)]
pub struct MetadataFetch {
    info_hash: [u8; 20],
    peers: BTreeMap<PeerKey, Peer>,
    next_id: u64,
    /// The size being fetched, 0 until some peer offers one.
    size: u32,
    slots: Vec<Slot>,
    /// Agreeing peers each piece needs this round.
    need: usize,
    events: VecDeque<FetchEvent>,
    done: bool,
}

impl MetadataFetch {
    /// A fetch of the info dictionary whose SHA-1 is `info_hash`.
    pub fn new(info_hash: [u8; 20]) -> MetadataFetch {
        MetadataFetch {
            info_hash,
            peers: BTreeMap::new(),
            next_id: 0,
            size: 0,
            slots: Vec::new(),
            need: 1,
            events: VecDeque::new(),
            done: false,
        }
    }

    /// Whether the info dictionary was verified (and handed over).
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The size being fetched: the one most peers announce (the earliest
    /// on a tie, kept until another has strictly more).
    pub fn size(&self) -> Option<u32> {
        (self.size != 0).then_some(self.size)
    }

    /// Bytes of pieces held: what peers sent, never more than the size.
    pub fn held_bytes(&self) -> usize {
        self.slots
            .iter()
            .filter_map(|s| s.data.as_ref())
            .map(|(_, b)| b.len())
            .sum()
    }

    /// Slots allocated: the pieces of the size being fetched, at most
    /// [`MAX_PIECES`].
    pub fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<FetchEvent> {
        self.events.pop_front()
    }

    /// A peer's extension handshake offers `ut_metadata` with this
    /// `metadata_size` (0 when it has none yet: it is not asked, and may
    /// offer a size later). A size over [`MAX_METADATA_SIZE`], or other
    /// than one it offered before, is an error: drop the peer. Offers
    /// from peers past [`MAX_FETCH_PEERS`] are ignored.
    pub fn peer_offers(
        &mut self,
        peer: PeerKey,
        metadata_size: u32,
        _now: Instant,
    ) -> Result<(), Misbehaviour> {
        if self.done {
            return Ok(());
        }
        if !self.peers.contains_key(&peer) {
            if self.peers.len() >= MAX_FETCH_PEERS {
                return Ok(());
            }
            self.next_id += 1;
            let p = Peer {
                id: self.next_id,
                size: 0,
                banned: false,
                asks: Vec::new(),
                timeouts: 0,
                resting_until: None,
            };
            self.peers.insert(peer, p);
        }
        let Some(p) = self.peers.get_mut(&peer) else {
            return Ok(());
        };
        if p.banned || metadata_size == 0 || metadata_size == p.size {
            return Ok(());
        }
        let wrong = if metadata_size > MAX_METADATA_SIZE {
            Some(Misbehaviour::SizeTooLarge {
                size: metadata_size,
            })
        } else if p.size != 0 {
            Some(Misbehaviour::SizeChanged {
                was: p.size,
                now: metadata_size,
            })
        } else {
            None
        };
        if let Some(why) = wrong {
            self.ban(peer);
            return Err(why);
        }
        p.size = metadata_size;
        self.choose_size();
        Ok(())
    }

    /// The peer's connection is gone: its requests go to others. What it
    /// sent stays (it still counts towards agreement).
    pub fn peer_gone(&mut self, peer: PeerKey) {
        self.clear_asks(peer);
        self.peers.remove(&peer);
        self.choose_size();
    }

    /// The next piece to ask `peer` for, if any: a piece nobody is asked
    /// for and the peer has not sent, at most [`MAX_OUTSTANDING`] at a
    /// time, none while it rests after a reject.
    pub fn poll_request(&mut self, peer: PeerKey, now: Instant) -> Option<u32> {
        let size = self.size;
        let p = self.peers.get_mut(&peer)?;
        if self.done || p.banned || p.size != size || size == 0 {
            return None;
        }
        if p.resting_until.is_some_and(|t| now < t) {
            return None;
        }
        p.resting_until = None;
        let live = p.asks.iter().filter(|a| a.live).count();
        if live >= MAX_OUTSTANDING || p.asks.len() >= MAX_OUTSTANDING + MAX_LATE {
            return None;
        }
        let (id, asks) = (p.id, &p.asks);
        let need = self.need;
        let piece = self.slots.iter().enumerate().find_map(|(i, s)| {
            let free = s.asked.is_none() && !s.settled(need) && s.voter_count() < MAX_VOTERS;
            let fresh = !s.has_voter(id) && !asks.iter().any(|a| a.piece as usize == i);
            (free && fresh).then_some(i as u32)
        })?;
        if let Some(s) = self.slots.get_mut(piece as usize) {
            s.asked = Some((peer, now + REQUEST_TIMEOUT));
        }
        p.asks.push(Ask { piece, live: true });
        Some(piece)
    }

    /// A data message from `peer`. Its `total_size` must be the size the
    /// peer announced, the piece in range and of exactly its length; an
    /// error means drop the peer. A piece we did not ask it for (or asked
    /// and gave up on long ago) is ignored.
    pub fn handle_data(
        &mut self,
        peer: PeerKey,
        piece: u32,
        total_size: u32,
        bytes: &[u8],
        _now: Instant,
    ) -> Result<(), Misbehaviour> {
        if self.done {
            return Ok(());
        }
        let Some(p) = self.peers.get_mut(&peer) else {
            return Ok(());
        };
        if p.banned || p.size == 0 {
            return Ok(());
        }
        if let Err(why) = check_piece(p.size, piece, total_size, bytes.len()) {
            self.ban(peer);
            return Err(why);
        }
        let Some(at) = p.asks.iter().position(|a| a.piece == piece) else {
            return Ok(());
        };
        p.asks.remove(at);
        p.timeouts = 0;
        let id = p.id;
        if p.size != self.size {
            return Ok(());
        }
        if let Some(s) = self.slots.get_mut(piece as usize) {
            if s.asked.is_some_and(|(k, _)| k == peer) {
                s.asked = None;
            }
            s.vote(id, bytes);
        }
        self.after_vote();
        Ok(())
    }

    /// A reject from `peer`: the piece goes to another peer, and this one
    /// rests for [`REJECT_BACKOFF`]. A reject of a piece not asked for is
    /// ignored.
    pub fn handle_reject(&mut self, peer: PeerKey, piece: u32, now: Instant) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        let Some(at) = p.asks.iter().position(|a| a.piece == piece) else {
            return;
        };
        p.asks.remove(at);
        p.timeouts = 0;
        p.resting_until = Some(now + REJECT_BACKOFF);
        if let Some(s) = self.slots.get_mut(piece as usize) {
            if s.asked.is_some_and(|(k, _)| k == peer) {
                s.asked = None;
            }
        }
    }

    /// When [`MetadataFetch::handle_timeout`] must run: the first request
    /// deadline or end of a rest.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.done {
            return None;
        }
        let asked = self.slots.iter().filter_map(|s| s.asked.map(|(_, t)| t));
        let rests = self.peers.values().filter_map(|p| p.resting_until);
        asked.chain(rests).min()
    }

    /// Timers: unanswered requests go back to be asked of another peer;
    /// a peer with [`MAX_TIMEOUTS`] in a row is reported; rests end.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.done {
            return;
        }
        for p in self.peers.values_mut() {
            if p.resting_until.is_some_and(|t| t <= now) {
                p.resting_until = None;
            }
        }
        let mut late = Vec::new();
        for (i, s) in self.slots.iter_mut().enumerate() {
            if let Some((peer, deadline)) = s.asked {
                if deadline <= now {
                    s.asked = None;
                    late.push((peer, i as u32));
                }
            }
        }
        for (peer, piece) in late {
            self.timed_out(peer, piece);
        }
    }

    fn timed_out(&mut self, peer: PeerKey, piece: u32) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        if let Some(a) = p.asks.iter_mut().find(|a| a.piece == piece) {
            a.live = false;
        }
        if p.asks.iter().filter(|a| !a.live).count() > MAX_LATE {
            if let Some(oldest) = p.asks.iter().position(|a| !a.live) {
                p.asks.remove(oldest);
            }
        }
        p.timeouts += 1;
        if p.timeouts >= MAX_TIMEOUTS {
            self.report(peer, Misbehaviour::Unresponsive);
        }
    }

    /// Picks the size most live peers announce; a change starts over.
    fn choose_size(&mut self) {
        if self.done {
            return;
        }
        let mut counts: Vec<(u32, usize, u64)> = Vec::new();
        for p in self.peers.values().filter(|p| !p.banned && p.size != 0) {
            match counts.iter_mut().find(|(s, _, _)| *s == p.size) {
                Some((_, n, first)) => {
                    *n += 1;
                    *first = (*first).min(p.id);
                }
                None => counts.push((p.size, 1, p.id)),
            }
        }
        let current = counts
            .iter()
            .find(|(s, _, _)| *s == self.size)
            .map_or(0, |c| c.1);
        let best = counts
            .iter()
            .max_by_key(|(_, n, first)| (*n, std::cmp::Reverse(*first)));
        if let Some(&(size, n, _)) = best {
            if n > current {
                self.restart(size);
            }
        }
    }

    /// Starts over with `size`: a fresh table of empty slots.
    fn restart(&mut self, size: u32) {
        self.size = size;
        self.slots = (0..piece_count(size)).map(|_| Slot::default()).collect();
        self.need = 1;
        for p in self.peers.values_mut() {
            p.asks.clear();
        }
    }

    fn after_vote(&mut self) {
        let need = self.need;
        if self
            .slots
            .iter()
            .any(|s| s.voter_count() >= MAX_VOTERS && !s.settled(need))
        {
            // No majority among as many peers as we ask: start the round
            // over rather than ask everyone.
            self.restart(self.size);
            return;
        }
        if !self.slots.is_empty() && self.slots.iter().all(|s| s.settled(need)) {
            self.verify();
        }
    }

    /// Every piece has its majority: put them together and check.
    fn verify(&mut self) {
        let mut bytes = Vec::with_capacity(self.size as usize);
        for s in &self.slots {
            if let Some((_, b)) = &s.data {
                bytes.extend_from_slice(b);
            }
        }
        if <[u8; 20]>::from(Sha1::digest(&bytes)) == self.info_hash {
            self.succeed(bytes);
            return;
        }
        let mut contributors: Vec<u64> = self
            .slots
            .iter()
            .filter_map(|s| s.leader())
            .flat_map(|c| c.voters.iter().copied())
            .collect();
        contributors.sort_unstable();
        contributors.dedup();
        if contributors.len() == 1 || self.need >= MAX_AGREEMENT {
            // Only these peers can be wrong (one alone, or a majority
            // that agreed at the highest level: colluding, or all lying
            // about the size).
            for id in contributors {
                self.distrust(id, Misbehaviour::FailedHash);
            }
            if self.need >= MAX_AGREEMENT {
                self.restart(self.size);
            }
        } else {
            self.need += 1;
        }
    }

    /// Hands the verified bytes over, then reports every peer that sent
    /// a piece other than these, or announced another size.
    fn succeed(&mut self, bytes: Vec<u8>) {
        let actual = self.size;
        let mut liars = Vec::new();
        for s in &self.slots {
            let lead = s.leader().map(|c| c.digest);
            for c in s.copies.iter().filter(|c| Some(c.digest) != lead) {
                liars.extend(c.voters.iter().copied());
            }
        }
        // From here on the size is settled: banning changes nothing.
        self.done = true;
        self.events.push_back(FetchEvent::Done(bytes));
        for id in liars {
            self.distrust(id, Misbehaviour::BadData);
        }
        let wrong: Vec<(PeerKey, u32)> = self
            .peers
            .iter()
            .filter(|(_, p)| !p.banned && p.size != 0 && p.size != actual)
            .map(|(k, p)| (*k, p.size))
            .collect();
        for (peer, offered) in wrong {
            self.report(peer, Misbehaviour::WrongSize { offered, actual });
        }
        self.slots = Vec::new();
        self.peers.clear();
    }

    /// Forgets what peer `id` sent, and reports it if still connected.
    fn distrust(&mut self, id: u64, reason: Misbehaviour) {
        for s in &mut self.slots {
            s.remove_voter(id);
        }
        let live = self.peers.iter().find(|(_, p)| p.id == id).map(|(k, _)| *k);
        if let Some(peer) = live {
            self.report(peer, reason);
        }
    }

    /// Bans `peer` and tells the owner to drop it (once).
    fn report(&mut self, peer: PeerKey, reason: Misbehaviour) {
        if self.peers.get(&peer).is_some_and(|p| !p.banned) {
            self.ban(peer);
            if self.events.len() < MAX_EVENTS {
                self.events.push_back(FetchEvent::Drop { peer, reason });
            }
        }
    }

    /// Never asks `peer` again, and forgets what it sent.
    fn ban(&mut self, peer: PeerKey) {
        self.clear_asks(peer);
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        p.banned = true;
        let id = p.id;
        for s in &mut self.slots {
            s.remove_voter(id);
        }
        self.choose_size();
    }

    fn clear_asks(&mut self, peer: PeerKey) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.asks.clear();
        }
        for s in &mut self.slots {
            if s.asked.is_some_and(|(k, _)| k == peer) {
                s.asked = None;
            }
        }
    }
}

/// Checks a data message against the size its sender announced.
fn check_piece(size: u32, piece: u32, total_size: u32, len: usize) -> Result<(), Misbehaviour> {
    if total_size != size {
        return Err(Misbehaviour::TotalSizeMismatch {
            offered: size,
            total_size,
        });
    }
    if piece as usize >= piece_count(size) {
        return Err(Misbehaviour::PieceOutOfRange { piece });
    }
    let want = piece_len(size, piece);
    if len != want {
        return Err(Misbehaviour::BadPieceLength { piece, len, want });
    }
    Ok(())
}

/// One peer's allowance of metadata requests served, per minute.
#[derive(Debug, Clone, Default)]
pub struct ServeLimit {
    window: Option<Instant>,
    served: u32,
}

impl ServeLimit {
    /// A fresh allowance.
    pub fn new() -> ServeLimit {
        ServeLimit::default()
    }

    /// Whether one more request may be served at `now` (and counts it).
    fn allow(&mut self, now: Instant) -> bool {
        let fresh = self
            .window
            .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(60));
        if fresh {
            self.window = Some(now);
            self.served = 0;
        }
        if self.served >= MAX_REQUESTS_PER_MINUTE {
            return false;
        }
        self.served += 1;
        true
    }
}

/// Our answer to a peer's request for `piece` of our info dictionary
/// `info` (`None` while we are fetching it ourselves): the data, or a
/// reject when we have no metadata (BEP 9: MUST), the piece is out of
/// range, the torrent is private (we do not offer `ut_metadata` there,
/// as libtorrent and Transmission do not), or the peer is past
/// [`MAX_REQUESTS_PER_MINUTE`].
pub fn answer_request<'a>(
    info: Option<&'a [u8]>,
    private: bool,
    piece: u32,
    limit: &mut ServeLimit,
    now: Instant,
) -> MetadataMessage<'a> {
    let reject = MetadataMessage::Reject { piece };
    let Some(info) = info.filter(|_| !private) else {
        return reject;
    };
    let Ok(total_size) = u32::try_from(info.len()) else {
        return reject;
    };
    let start = (piece as usize).saturating_mul(PIECE_SIZE);
    let Some(data) = info.get(start..start.saturating_add(piece_len(total_size, piece))) else {
        return reject;
    };
    if data.is_empty() || !limit.allow(now) {
        return reject;
    }
    MetadataMessage::Data {
        piece,
        total_size,
        data,
    }
}

#[cfg(test)]
mod tests;
