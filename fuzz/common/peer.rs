//! For the `wire` and `mse` fuzz targets: a bare [`PeerConn`] driven as
//! the swarm drives one (handshake, accept, attach, messages, requests,
//! serving, timers), checking each promise of `src/peer/conn.rs` against
//! a second reading of the same bytes with the codec; and a checker of
//! the bytes we send.

use std::collections::HashSet;
use std::time::Instant;

use tripcd::engine::geometry::Geometry;
use tripcd::peer::conn::{
    PeerConn, PeerError, HANDSHAKE_TIMEOUT, INACTIVITY_TIMEOUT, KEEPALIVE_INTERVAL,
    MAX_INPUT, MAX_PEER_REQUESTS,
};
use tripcd::peer::extension::{ExtendedHandshake, LocalHandshake, HANDSHAKE_EXT_ID};
use tripcd::peer::pex::{PexMessage, OUR_UT_PEX_ID, UT_PEX};
use tripcd::peer::wire::{
    parse_handshake, split_message, write_message, Block, Handshake, Message, BLOCK_SIZE,
    HANDSHAKE_LEN, MAX_MESSAGE_LEN, MAX_REQUEST_LEN, PROTOCOL,
};

/// Output we let queue before serving stops, as the swarm's soft limit.
const SOFT_LIMIT: usize = 512 << 10;

/// The extension protocol's reserved bit (BEP 10).
const EXTENSION_BIT: (usize, u8) = (5, 0x10);

/// Our peer id in the bare modes.
pub const OUR_ID: [u8; 20] = *b"-FZ0000-fuzzfuzzfuzz";

/// The torrent as both sides of a bare connection know it.
pub struct Torrent {
    /// Its info hash.
    pub info_hash: [u8; 20],
    /// Its geometry.
    pub shape: Geometry,
    /// All its bytes.
    pub data: Vec<u8>,
}

impl Torrent {
    /// The bytes of block `b` (a valid one).
    pub fn block(&self, b: &Block) -> &[u8] {
        let start = b.piece as usize * self.shape.piece_length() as usize + b.begin as usize;
        &self.data[start..start + b.length as usize]
    }

    /// Whether `b` lies inside the torrent and is a length we accept.
    pub fn valid(&self, b: &Block) -> bool {
        b.piece < self.shape.pieces()
            && b.length > 0
            && b.length <= MAX_REQUEST_LEN
            && b.begin as u64 + b.length as u64 <= self.shape.piece_size(b.piece)
    }

    fn bitfield_len(&self) -> usize {
        (self.shape.pieces() as usize).div_ceil(8)
    }

    fn spare_mask(&self) -> u8 {
        let spare = (8 - self.shape.pieces() % 8) % 8;
        ((1u16 << spare) - 1) as u8
    }
}

/// Checks a stream we sent: our handshake (with `our_id`, for the
/// torrent), then whole, well-formed messages a correct peer accepts:
/// ranges inside the torrent, a bitfield of `have`, real data in pieces,
/// extension payloads that parse. `handshake_sent` is false when the
/// handshake went another way (MSE's initial payload).
pub fn check_sent(
    t: &Torrent,
    stream: &[u8],
    our_id: &[u8; 20],
    have: &[bool],
    handshake_sent: bool,
) {
    let mut rest = stream;
    if handshake_sent {
        if rest.is_empty() {
            return;
        }
        let h = parse_handshake(rest)
            .expect("our handshake is a handshake")
            .expect("and whole");
        assert_eq!(h.info_hash, t.info_hash, "our handshake names the torrent");
        assert_eq!(&h.peer_id, our_id);
        rest = &rest[HANDSHAKE_LEN..];
    }
    let mut first = true;
    while !rest.is_empty() {
        let (m, used) = split_message(rest, MAX_MESSAGE_LEN)
            .unwrap_or_else(|e| panic!("we sent a bad message: {e}"))
            .expect("we send whole messages");
        let mut again = Vec::new();
        write_message(&mut again, &m);
        assert_eq!(
            again,
            rest[..used],
            "our message re-encodes the same: {m:?}"
        );
        match m {
            Message::Bitfield(bits) => {
                assert!(first, "our bitfield comes first");
                assert_eq!(bits.len(), t.bitfield_len());
                for (i, h) in have.iter().enumerate() {
                    assert_eq!(bits[i / 8] & (0x80 >> (i % 8)) != 0, *h, "bit {i}");
                }
                assert_eq!(bits[bits.len() - 1] & t.spare_mask(), 0);
            }
            Message::HaveAll => {
                assert!(first, "have_all stands for the bitfield");
                assert!(have.iter().all(|h| *h), "have_all from a seed only");
            }
            Message::HaveNone => {
                assert!(first, "have_none stands for the bitfield");
                assert!(!have.iter().any(|h| *h), "have_none with nothing only");
            }
            Message::AllowedFast(i) => assert!(i < t.shape.pieces(), "allowed fast {i}"),
            Message::RejectRequest(b) => assert!(t.valid(&b), "{m:?} outside the torrent"),
            Message::Have(i) => assert!(i < t.shape.pieces(), "have {i}"),
            Message::Request(b) | Message::Cancel(b) => {
                assert!(t.valid(&b), "{m:?} outside the torrent");
                assert!(
                    b.length <= BLOCK_SIZE,
                    "we ask for blocks of at most 16 KiB"
                );
            }
            Message::Piece { piece, begin, data } => {
                let b = Block {
                    piece,
                    begin,
                    length: data.len() as u32,
                };
                assert!(t.valid(&b), "piece outside the torrent");
                assert!(t.block(&b) == data, "we sent wrong data for {b:?}");
            }
            Message::Extended { id, payload } => {
                if id == HANDSHAKE_EXT_ID {
                    ExtendedHandshake::parse(payload).expect("our extension handshake parses");
                } else {
                    PexMessage::parse(payload).expect("our peer exchange parses");
                }
            }
            Message::Unknown { .. } | Message::Port(_) | Message::SuggestPiece(_) => {
                panic!("we never send {m:?}")
            }
            _ => {}
        }
        first &= matches!(m, Message::Extended { .. } | Message::KeepAlive);
        rest = &rest[used..];
    }
}

/// A bare connection's owner. Its control byte: bits 2-3 what we have
/// (as [`super::setup::have`]), bit 4 unchoke at attach, bit 5 request
/// every block we lack at attach, bit 6 cancel our oldest request each
/// round, bit 7 choke and unchoke in turns each round.
pub struct Bare<'t> {
    t: &'t Torrent,
    conn: PeerConn,
    control: u8,
    have: Vec<bool>,
    outgoing: bool,
    /// Every byte received, read again with the codec.
    mirror: Vec<u8>,
    /// How far the mirror's reading got.
    at: usize,
    /// Every block we ever asked for.
    asked: HashSet<Block>,
    /// Our requests in order (some answered).
    queue: Vec<Block>,
    /// What we sent.
    sent: Vec<u8>,
    now: Instant,
    rounds: u32,
    /// Closed for this reason.
    pub closed: Option<PeerError>,
}

impl<'t> Bare<'t> {
    /// A connection we dialled (`outgoing`) or one a peer opened.
    pub fn new(t: &'t Torrent, outgoing: bool, control: u8, now: Instant) -> Bare<'t> {
        let conn = if outgoing {
            PeerConn::outgoing(our_handshake(t), now)
        } else {
            PeerConn::incoming(now)
        };
        Bare {
            t,
            conn,
            control,
            have: super::setup::have(control, t.shape.pieces() as usize),
            outgoing,
            mirror: Vec::new(),
            at: 0,
            asked: HashSet::new(),
            queue: Vec::new(),
            sent: Vec::new(),
            now,
            rounds: 0,
            closed: None,
        }
    }

    /// One read's bytes, and all that follows from them: what we send
    /// then; `None` once the connection is closed.
    pub fn round(&mut self, bytes: &[u8]) -> Option<Vec<u8>> {
        if self.closed.is_some() {
            return None;
        }
        self.rounds += 1;
        self.conn.receive(bytes, self.now);
        self.mirror.extend_from_slice(bytes);
        if let Err(e) = self.drive() {
            self.closed = Some(e);
            return None;
        }
        self.now += super::setup::STEP;
        if let Err(e) = self.conn.handle_timeout(self.now) {
            self.closed = Some(e);
            return None;
        }
        Some(self.take_output())
    }

    /// After the last bytes: silence. A keep-alive is due first, then
    /// the connection must give up on the peer.
    pub fn finish(mut self) {
        if self.closed.is_none() {
            let open = self.conn.handshake().is_some();
            let start = self.now;
            if open {
                self.conn
                    .handle_timeout(start + KEEPALIVE_INTERVAL)
                    .expect("no timeout yet");
                self.take_output();
            }
            let late = start + INACTIVITY_TIMEOUT.max(HANDSHAKE_TIMEOUT) + KEEPALIVE_INTERVAL;
            let e = self
                .conn
                .handle_timeout(late)
                .expect_err("a silent peer is dropped");
            assert!(
                matches!(e, PeerError::Inactive | PeerError::HandshakeTimeout),
                "{e:?}"
            );
        }
        let handshake_sent = true;
        check_sent(self.t, &self.sent, &OUR_ID, &self.have, handshake_sent);
    }

    /// Bytes we send now (also kept for the final check).
    fn take_output(&mut self) -> Vec<u8> {
        let out = self.conn.output().to_vec();
        self.conn.consume_output(out.len());
        assert_eq!(self.conn.queued_output(), 0);
        self.sent.extend_from_slice(&out);
        out
    }

    fn drive(&mut self) -> Result<(), PeerError> {
        if self.conn.handshake().is_none() {
            assert_eq!(
                self.conn.poll_message(),
                Ok(None),
                "no message before attach"
            );
            let Some(h) = self.conn.poll_handshake()? else {
                // Bounded: a wrong protocol string is refused at once.
                let held = &self.mirror[self.at..];
                assert!(held.len() < HANDSHAKE_LEN);
                assert!(PROTOCOL.starts_with(&held[..held.len().min(20)]));
                return Ok(());
            };
            assert_eq!(parse_handshake(&self.mirror), Ok(Some(h)));
            self.at = HANDSHAKE_LEN;
            if h.info_hash != self.t.info_hash {
                assert!(
                    !self.outgoing,
                    "a dialled peer naming another torrent is refused"
                );
                return Err(PeerError::WrongTorrent);
            }
            if self.outgoing {
                assert_ne!(h.peer_id, OUR_ID, "ourselves: refused by the connection");
            } else {
                let accepted = self.conn.accept(our_handshake(self.t));
                if h.peer_id == OUR_ID {
                    assert_eq!(accepted, Err(PeerError::SelfConnection));
                }
                accepted?;
            }
            let bits = bitfield(&self.have);
            let any = self.have.iter().any(|h| *h);
            self.conn.attach(Some(self.t.shape), any.then_some(&bits[..]));
            if h.reserved[EXTENSION_BIT.0] & EXTENSION_BIT.1 != 0 {
                let ours = LocalHandshake {
                    client: "fuzz",
                    reqq: MAX_PEER_REQUESTS as u32,
                    listen_port: Some(super::setup::LISTEN_PORT),
                    extensions: &[(UT_PEX, OUR_UT_PEX_ID)],
                    metadata_size: None,
                };
                self.conn
                    .extended(HANDSHAKE_EXT_ID, &ours.encode(), self.now);
            }
            if self.control & 0x10 != 0 {
                self.conn.unchoke(self.now);
            }
            if self.control & 0x20 != 0 && !self.have.iter().all(|h| *h) {
                self.conn.set_interested(true, self.now);
                self.request_missing();
            }
        }
        self.messages()?;
        for b in self.conn.take_dropped_requests() {
            assert!(self.asked.contains(&b), "dropped a request we never made");
        }
        self.act();
        Ok(())
    }

    /// Every message, checked against the codec's own reading.
    fn messages(&mut self) -> Result<(), PeerError> {
        let max = (MAX_REQUEST_LEN as usize + 9).max(self.t.bitfield_len() + 1);
        loop {
            let was_choking = self.conn.am_choking();
            let msg = match self.conn.poll_message() {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => return Err(e),
            };
            let (again, used) = split_message(&self.mirror[self.at..], max)
                .expect("the codec agrees")
                .expect("and it is whole");
            assert_eq!(msg, again, "the connection and the codec read the same");
            let raw = &self.mirror[self.at..self.at + used];
            if !matches!(msg, Message::Unknown { .. }) {
                let mut enc = Vec::new();
                write_message(&mut enc, &msg);
                assert_eq!(enc, raw, "re-encodes to its bytes");
            }
            self.at += used;
            match msg {
                Message::Bitfield(bits) => {
                    assert_eq!(bits.len(), self.t.bitfield_len());
                    assert_eq!(bits[bits.len() - 1] & self.t.spare_mask(), 0);
                }
                Message::Have(i) => assert!(i < self.t.shape.pieces()),
                Message::Request(b) => {
                    assert!(
                        self.t.valid(&b),
                        "a request outside the torrent got through"
                    );
                    if was_choking {
                        assert_eq!(self.conn.peer_request_count(), 0, "dropped while choked");
                    }
                }
                Message::Piece { piece, begin, data } => {
                    let b = Block {
                        piece,
                        begin,
                        length: data.len() as u32,
                    };
                    assert!(
                        self.asked.contains(&b),
                        "a block we never asked for got through"
                    );
                }
                Message::Extended { id, payload } => {
                    // The swarm's parsers, on hostile payloads.
                    if id == HANDSHAKE_EXT_ID {
                        let _ = ExtendedHandshake::parse(payload);
                    } else if id == OUR_UT_PEX_ID {
                        let _ = PexMessage::parse(payload);
                    }
                }
                _ => {}
            }
            assert!(self.conn.peer_request_count() <= MAX_PEER_REQUESTS);
            let bits = self.conn.peer_bitfield();
            let count: u32 = bits.iter().map(|b| b.count_ones()).sum();
            assert_eq!(count, self.conn.peer_count());
            assert!(count <= self.t.shape.pieces());
        }
        // Bounded: what waits is less than one message of the largest
        // size allowed.
        let held = self.mirror.len() - self.at;
        assert!(held < 4 + max, "{held} bytes held unparsed");
        assert!(held <= MAX_INPUT && self.conn.wants_input());
        Ok(())
    }

    /// The owner's side: requests, serving, cancels, choking.
    fn act(&mut self) {
        let now = self.now;
        if self.control & 0x40 != 0 {
            if let Some(b) = self.queue.first().copied() {
                self.queue.remove(0);
                self.conn.cancel(b, now);
            }
        }
        if self.control & 0x80 != 0 {
            if self.rounds % 2 == 0 {
                self.conn.choke(now);
                assert_eq!(
                    self.conn.peer_request_count(),
                    0,
                    "choking drops their queue"
                );
            } else {
                self.conn.unchoke(now);
            }
        }
        while self.conn.queued_output() < SOFT_LIMIT {
            let Some(b) = self.conn.next_peer_request() else {
                break;
            };
            assert!(self.t.valid(&b));
            if !self.have[b.piece as usize] {
                // The swarm closes such a peer; here it is merely skipped.
                continue;
            }
            let data = self.t.block(&b);
            let before = self.conn.queued_output();
            // Now and then the disk fails: nothing may be queued then.
            let fail = b.begin % 3 == 1;
            let served = self.conn.serve_piece(b, now, |buf| {
                if fail {
                    return Err(());
                }
                buf.copy_from_slice(data);
                Ok(())
            });
            assert_eq!(served.is_err(), fail);
            if fail {
                assert_eq!(
                    self.conn.queued_output(),
                    before,
                    "a failed read queues nothing"
                );
            }
        }
    }

    /// Asks for every block of the pieces we lack, 16 KiB at a time.
    fn request_missing(&mut self) {
        for piece in 0..self.t.shape.pieces() {
            if self.have[piece as usize] {
                continue;
            }
            let size = self.t.shape.piece_size(piece) as u32;
            for begin in (0..size).step_by(BLOCK_SIZE as usize) {
                let b = Block {
                    piece,
                    begin,
                    length: BLOCK_SIZE.min(size - begin),
                };
                self.conn.request(b, self.now);
                self.asked.insert(b);
                self.queue.push(b);
            }
        }
        assert_eq!(self.conn.outstanding(), self.queue.len());
    }
}

fn our_handshake(t: &Torrent) -> Handshake {
    let mut reserved = [0; 8];
    reserved[EXTENSION_BIT.0] |= EXTENSION_BIT.1;
    Handshake {
        reserved,
        info_hash: t.info_hash,
        peer_id: OUR_ID,
    }
}

fn bitfield(have: &[bool]) -> Vec<u8> {
    let mut bits = vec![0u8; have.len().div_ceil(8)];
    for (i, h) in have.iter().enumerate() {
        if *h {
            bits[i / 8] |= 0x80 >> (i % 8);
        }
    }
    bits
}
