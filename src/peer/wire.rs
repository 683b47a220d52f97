//! The peer wire protocol of BEP 3 as pure functions over bytes: the
//! handshake, and length-prefixed messages read straight from the input
//! buffer (piece data is borrowed, never copied) or appended to an output
//! buffer.

use std::fmt;

/// The protocol string of the handshake, with its length byte.
pub const PROTOCOL: &[u8; 20] = b"\x13BitTorrent protocol";

/// Bytes in a handshake.
pub const HANDSHAKE_LEN: usize = 68;

/// Largest request accepted from a peer (others are refused, as the
/// common clients do).
pub const MAX_REQUEST_LEN: u32 = 128 << 10;

/// Largest message accepted when the torrent is not known yet: a piece
/// message of the largest request, plus its header.
pub const MAX_MESSAGE_LEN: usize = MAX_REQUEST_LEN as usize + 9;

/// The handshake both sides send first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handshake {
    /// Extension bits (BEP 4); all ours are zero for now.
    pub reserved: [u8; 8],
    /// The torrent.
    pub info_hash: [u8; 20],
    /// Who is speaking.
    pub peer_id: [u8; 20],
}

/// A block of a piece (what a request, a cancel and a piece name), and the
/// block size everyone requests (BEP 3 practice).
pub use crate::engine::geometry::{Block, BLOCK_SIZE};

/// One message, borrowing its variable parts from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    /// Zero-length message.
    KeepAlive,
    /// Id 0.
    Choke,
    /// Id 1.
    Unchoke,
    /// Id 2.
    Interested,
    /// Id 3.
    NotInterested,
    /// Id 4: the sender has this piece now.
    Have(u32),
    /// Id 5: the pieces the sender has, sent first.
    Bitfield(&'a [u8]),
    /// Id 6.
    Request(Block),
    /// Id 7: a block's data.
    Piece {
        /// Piece index.
        piece: u32,
        /// Offset inside the piece.
        begin: u32,
        /// The bytes.
        data: &'a [u8],
    },
    /// Id 8.
    Cancel(Block),
    /// Id 9: the sender's DHT port (BEP 5).
    Port(u16),
    /// Id 0x0D (BEP 6): "you might like this piece".
    SuggestPiece(u32),
    /// Id 0x0E (BEP 6): the sender has every piece (instead of a bitfield).
    HaveAll,
    /// Id 0x0F (BEP 6): the sender has no piece (instead of a bitfield).
    HaveNone,
    /// Id 0x10 (BEP 6): the sender will not serve this request.
    RejectRequest(Block),
    /// Id 0x11 (BEP 6): the receiver may request this piece while choked.
    AllowedFast(u32),
    /// Id 20: the extension protocol of BEP 10 (used by PEX later).
    Extended {
        /// Extended message id.
        id: u8,
        /// Its bencoded payload (and anything after).
        payload: &'a [u8],
    },
    /// Any other id: skipped.
    Unknown {
        /// The id.
        id: u8,
    },
}

/// Why bytes from a peer are not the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// The handshake does not start with the protocol string.
    NotBitTorrent,
    /// A message announces more bytes than allowed.
    TooLong {
        /// Announced length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// A fixed-size message has another size.
    BadLength {
        /// Message id.
        id: u8,
        /// Its length (id byte included).
        len: usize,
    },
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::NotBitTorrent => f.write_str("not a BitTorrent handshake"),
            WireError::TooLong { len, limit } => {
                write!(f, "message of {len} bytes over the {limit}-byte limit")
            }
            WireError::BadLength { id, len } => {
                write!(f, "message id {id} with a wrong length of {len} bytes")
            }
        }
    }
}

impl std::error::Error for WireError {}

/// Appends our handshake.
pub fn write_handshake(out: &mut Vec<u8>, h: &Handshake) {
    out.extend_from_slice(PROTOCOL);
    out.extend_from_slice(&h.reserved);
    out.extend_from_slice(&h.info_hash);
    out.extend_from_slice(&h.peer_id);
}

/// Reads a handshake: `None` until all 68 bytes are there; a wrong
/// protocol string is refused as soon as its bytes arrive.
pub fn parse_handshake(buf: &[u8]) -> Result<Option<Handshake>, WireError> {
    let seen = buf.len().min(PROTOCOL.len());
    if buf[..seen] != PROTOCOL[..seen] {
        return Err(WireError::NotBitTorrent);
    }
    if buf.len() < HANDSHAKE_LEN {
        return Ok(None);
    }
    let mut h = Handshake {
        reserved: [0; 8],
        info_hash: [0; 20],
        peer_id: [0; 20],
    };
    h.reserved.copy_from_slice(&buf[20..28]);
    h.info_hash.copy_from_slice(&buf[28..48]);
    h.peer_id.copy_from_slice(&buf[48..68]);
    Ok(Some(h))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(x)
}

/// Splits the next message off `buf`: `None` when it is not all there,
/// else the message and the bytes it took. The announced length is judged
/// against `max_len` from the 4-byte header alone, before the body is
/// buffered.
pub fn split_message(
    buf: &[u8],
    max_len: usize,
) -> Result<Option<(Message<'_>, usize)>, WireError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32_at(buf, 0) as usize;
    if len > max_len {
        return Err(WireError::TooLong {
            len,
            limit: max_len,
        });
    }
    if buf.len() < 4 + len {
        return Ok(None);
    }
    if len == 0 {
        return Ok(Some((Message::KeepAlive, 4)));
    }
    let body = &buf[4..4 + len];
    let id = body[0];
    let fixed = |want: usize| {
        if len == want {
            Ok(())
        } else {
            Err(WireError::BadLength { id, len })
        }
    };
    let block = || Block {
        piece: u32_at(body, 1),
        begin: u32_at(body, 5),
        length: u32_at(body, 9),
    };
    let msg = match id {
        0 => fixed(1).map(|()| Message::Choke)?,
        1 => fixed(1).map(|()| Message::Unchoke)?,
        2 => fixed(1).map(|()| Message::Interested)?,
        3 => fixed(1).map(|()| Message::NotInterested)?,
        4 => fixed(5).map(|()| Message::Have(u32_at(body, 1)))?,
        5 => Message::Bitfield(&body[1..]),
        6 => fixed(13).map(|()| Message::Request(block()))?,
        7 => {
            if len < 9 {
                return Err(WireError::BadLength { id, len });
            }
            Message::Piece {
                piece: u32_at(body, 1),
                begin: u32_at(body, 5),
                data: &body[9..],
            }
        }
        8 => fixed(13).map(|()| Message::Cancel(block()))?,
        9 => fixed(3).map(|()| Message::Port(u16::from_be_bytes([body[1], body[2]])))?,
        0x0D => fixed(5).map(|()| Message::SuggestPiece(u32_at(body, 1)))?,
        0x0E => fixed(1).map(|()| Message::HaveAll)?,
        0x0F => fixed(1).map(|()| Message::HaveNone)?,
        0x10 => fixed(13).map(|()| Message::RejectRequest(block()))?,
        0x11 => fixed(5).map(|()| Message::AllowedFast(u32_at(body, 1)))?,
        20 => {
            if len < 2 {
                return Err(WireError::BadLength { id, len });
            }
            Message::Extended {
                id: body[1],
                payload: &body[2..],
            }
        }
        _ => Message::Unknown { id },
    };
    Ok(Some((msg, 4 + len)))
}

fn header(out: &mut Vec<u8>, len: usize, id: u8) {
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.push(id);
}

fn write_block(out: &mut Vec<u8>, id: u8, b: &Block) {
    header(out, 13, id);
    out.extend_from_slice(&b.piece.to_be_bytes());
    out.extend_from_slice(&b.begin.to_be_bytes());
    out.extend_from_slice(&b.length.to_be_bytes());
}

/// Appends `msg`.
pub fn write_message(out: &mut Vec<u8>, msg: &Message<'_>) {
    match msg {
        Message::KeepAlive => out.extend_from_slice(&[0; 4]),
        Message::Choke => header(out, 1, 0),
        Message::Unchoke => header(out, 1, 1),
        Message::Interested => header(out, 1, 2),
        Message::NotInterested => header(out, 1, 3),
        Message::Have(i) => {
            header(out, 5, 4);
            out.extend_from_slice(&i.to_be_bytes());
        }
        Message::Bitfield(bits) => {
            header(out, 1 + bits.len(), 5);
            out.extend_from_slice(bits);
        }
        Message::Request(b) => write_block(out, 6, b),
        Message::Piece { piece, begin, data } => {
            reserve_piece(out, *piece, *begin, data.len()).copy_from_slice(data);
        }
        Message::Cancel(b) => write_block(out, 8, b),
        Message::Port(p) => {
            header(out, 3, 9);
            out.extend_from_slice(&p.to_be_bytes());
        }
        Message::SuggestPiece(i) => {
            header(out, 5, 0x0D);
            out.extend_from_slice(&i.to_be_bytes());
        }
        Message::HaveAll => header(out, 1, 0x0E),
        Message::HaveNone => header(out, 1, 0x0F),
        Message::RejectRequest(b) => write_block(out, 0x10, b),
        Message::AllowedFast(i) => {
            header(out, 5, 0x11);
            out.extend_from_slice(&i.to_be_bytes());
        }
        Message::Extended { id, payload } => {
            header(out, 2 + payload.len(), 20);
            out.push(*id);
            out.extend_from_slice(payload);
        }
        // Never sent: nothing to say for an id we do not know.
        Message::Unknown { .. } => {}
    }
}

/// Appends a piece message's header and `len` zero bytes, and returns
/// those bytes to be filled (from disk, with no copy in between).
pub fn reserve_piece(out: &mut Vec<u8>, piece: u32, begin: u32, len: usize) -> &mut [u8] {
    header(out, 9 + len, 7);
    out.extend_from_slice(&piece.to_be_bytes());
    out.extend_from_slice(&begin.to_be_bytes());
    let start = out.len();
    out.resize(start + len, 0);
    &mut out[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_messages() -> Vec<Message<'static>> {
        let b = Block {
            piece: 3,
            begin: 16384,
            length: 16384,
        };
        vec![
            Message::KeepAlive,
            Message::Choke,
            Message::Unchoke,
            Message::Interested,
            Message::NotInterested,
            Message::Have(7),
            Message::Bitfield(&[0xF0, 0x80]),
            Message::Request(b),
            Message::Piece {
                piece: 1,
                begin: 0,
                data: b"some block data",
            },
            Message::Cancel(b),
            Message::Port(6881),
            Message::SuggestPiece(9),
            Message::HaveAll,
            Message::HaveNone,
            Message::RejectRequest(b),
            Message::AllowedFast(0x0102_0304),
            Message::Extended {
                id: 0,
                payload: b"d1:md6:ut_pexi1eee",
            },
        ]
    }

    #[test]
    fn every_message_round_trips() {
        for m in all_messages() {
            let mut out = Vec::new();
            write_message(&mut out, &m);
            let (back, used) = split_message(&out, MAX_MESSAGE_LEN).unwrap().unwrap();
            assert_eq!((back, used), (m, out.len()));
            // Every shorter prefix is "need more".
            for cut in 0..out.len() {
                assert_eq!(split_message(&out[..cut], MAX_MESSAGE_LEN), Ok(None));
            }
        }
    }

    #[test]
    fn the_length_is_judged_from_the_header_alone() {
        let header = 5_000_000u32.to_be_bytes();
        assert_eq!(
            split_message(&header, MAX_MESSAGE_LEN),
            Err(WireError::TooLong {
                len: 5_000_000,
                limit: MAX_MESSAGE_LEN
            })
        );
    }

    #[test]
    fn fixed_size_messages_with_another_size_are_refused() {
        for (id, len) in [
            (0u8, 2usize),
            (4, 4),
            (4, 6),
            (6, 12),
            (8, 14),
            (9, 2),
            (7, 8),
            (0x0D, 4),
            (0x0E, 2),
            (0x0F, 5),
            (0x10, 12),
            (0x10, 14),
            (0x11, 1),
        ] {
            let mut b = (len as u32).to_be_bytes().to_vec();
            b.push(id);
            b.resize(4 + len, 0);
            assert_eq!(
                split_message(&b, MAX_MESSAGE_LEN),
                Err(WireError::BadLength { id, len }),
                "id {id} len {len}"
            );
        }
    }

    #[test]
    fn the_fast_extension_has_exact_bytes() {
        let block = Block {
            piece: 1,
            begin: 0x4000,
            length: 0x4000,
        };
        for (msg, bytes) in [
            (Message::SuggestPiece(7), vec![0, 0, 0, 5, 0x0D, 0, 0, 0, 7]),
            (Message::HaveAll, vec![0, 0, 0, 1, 0x0E]),
            (Message::HaveNone, vec![0, 0, 0, 1, 0x0F]),
            (
                Message::RejectRequest(block),
                vec![0, 0, 0, 13, 0x10, 0, 0, 0, 1, 0, 0, 0x40, 0, 0, 0, 0x40, 0],
            ),
            (
                Message::AllowedFast(0x0102_0304),
                vec![0, 0, 0, 5, 0x11, 1, 2, 3, 4],
            ),
        ] {
            let mut out = Vec::new();
            write_message(&mut out, &msg);
            assert_eq!(out, bytes, "{msg:?}");
        }
    }

    #[test]
    fn unknown_ids_are_skipped_whole() {
        let mut b = vec![0, 0, 0, 4, 99, 1, 2, 3];
        write_message(&mut b, &Message::Have(1));
        let (m, used) = split_message(&b, MAX_MESSAGE_LEN).unwrap().unwrap();
        assert_eq!((m, used), (Message::Unknown { id: 99 }, 8));
        let (m, _) = split_message(&b[used..], MAX_MESSAGE_LEN).unwrap().unwrap();
        assert_eq!(m, Message::Have(1));
    }

    #[test]
    fn handshakes_round_trip_and_a_wrong_protocol_is_refused_early() {
        let h = Handshake {
            reserved: [0, 0, 0, 0, 0, 0x10, 0, 0],
            info_hash: [7; 20],
            peer_id: *b"-TP0100-abcdefghijkl",
        };
        let mut out = Vec::new();
        write_handshake(&mut out, &h);
        assert_eq!(out.len(), HANDSHAKE_LEN);
        assert_eq!(parse_handshake(&out), Ok(Some(h)));
        for cut in 0..HANDSHAKE_LEN {
            assert_eq!(parse_handshake(&out[..cut]), Ok(None));
        }
        assert_eq!(
            parse_handshake(b"GET / HTTP/1.1\r\n"),
            Err(WireError::NotBitTorrent)
        );
        assert_eq!(parse_handshake(b"\x13Bit"), Ok(None));
        assert_eq!(parse_handshake(b"\x12"), Err(WireError::NotBitTorrent));
    }

    #[test]
    fn reserve_piece_leaves_room_for_the_block() {
        let mut out = Vec::new();
        reserve_piece(&mut out, 2, 32, 4).copy_from_slice(b"abcd");
        let (m, _) = split_message(&out, MAX_MESSAGE_LEN).unwrap().unwrap();
        assert_eq!(
            m,
            Message::Piece {
                piece: 2,
                begin: 32,
                data: b"abcd"
            }
        );
    }
}
