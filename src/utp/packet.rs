//! The BEP 29 packet: a 20-byte header, a chain of extensions, a payload.
//!
//! ```text
//! 0       4       8               16              24              32
//! +-------+-------+---------------+---------------+---------------+
//! | type  | ver   | extension     | connection_id                 |
//! +-------+-------+---------------+---------------+---------------+
//! | timestamp_microseconds                                        |
//! +---------------+---------------+---------------+---------------+
//! | timestamp_difference_microseconds                             |
//! +---------------+---------------+---------------+---------------+
//! | wnd_size                                                      |
//! +---------------+---------------+---------------+---------------+
//! | seq_nr                        | ack_nr                        |
//! +---------------+---------------+---------------+---------------+
//! ```
//!
//! Each extension is `[next extension type, length, length bytes]`; the
//! header's `extension` byte names the first. Only the selective ACK
//! (type 1) means anything here; any other is skipped by its length
//! (libutp's type 2 "extension bits", libtorrent's type 3 close reason).
//!
//! Decoding borrows from the datagram and never allocates; encoding
//! appends to a caller's buffer.

use std::fmt;

/// Length of the fixed header.
pub const HEADER_LEN: usize = 20;

/// The only protocol version (BEP 29).
pub const VERSION: u8 = 1;

/// Extension type of the selective ACK.
pub const EXT_SACK: u8 = 1;

/// The largest selective ACK bitmask we send, in bytes: 1024 bits, the
/// span of our reorder buffer (`MAX_REORDER`), so one SACK can describe
/// everything we hold out of order.
pub const MAX_SACK_LEN: usize = 128;

/// The five packet types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketType {
    /// Payload.
    Data = 0,
    /// The sender's last sequence number: no payload after it.
    Fin = 1,
    /// An ACK, carrying no sequence number of its own.
    State = 2,
    /// Ends the connection at once.
    Reset = 3,
    /// Opens a connection.
    Syn = 4,
}

impl PacketType {
    fn from_nibble(n: u8) -> Option<PacketType> {
        Some(match n {
            0 => PacketType::Data,
            1 => PacketType::Fin,
            2 => PacketType::State,
            3 => PacketType::Reset,
            4 => PacketType::Syn,
            _ => return None,
        })
    }
}

/// The fixed header's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// What the packet is.
    pub ty: PacketType,
    /// The receiver's id for the connection (for a SYN: the id the sender
    /// will receive on).
    pub connection_id: u16,
    /// The sender's clock when it sent the packet, in microseconds (only
    /// differences mean anything; 0 means "none").
    pub timestamp_us: u32,
    /// The sender's receive time minus our timestamp on the last packet it
    /// got from us: our one-way delay plus the clocks' offset.
    pub timestamp_diff_us: u32,
    /// Bytes the sender can still take in.
    pub wnd_size: u32,
    /// The packet's sequence number (for a STATE: the sender's next one).
    pub seq_nr: u16,
    /// The last sequence number the sender received in order.
    pub ack_nr: u16,
}

/// A decoded packet, borrowing from the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<'a> {
    /// The fixed header.
    pub header: Header,
    /// The selective ACK bitmask, if there was one: bit 0 of byte 0 (the
    /// least significant) stands for `ack_nr + 2`.
    pub sack: Option<&'a [u8]>,
    /// What follows the extensions.
    pub payload: &'a [u8],
}

/// Why a datagram is not a uTP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// Shorter than the fixed header.
    TooShort(usize),
    /// A version other than 1.
    BadVersion(u8),
    /// A type nibble above 4.
    BadType(u8),
    /// An extension's two-byte head or its body runs past the end.
    ExtensionTruncated,
    /// A selective ACK of length 0, which describes nothing.
    EmptySack,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::TooShort(len) => {
                write!(f, "{len} bytes is shorter than a uTP header")
            }
            DecodeError::BadVersion(v) => write!(f, "uTP version {v}"),
            DecodeError::BadType(t) => write!(f, "uTP packet type {t}"),
            DecodeError::ExtensionTruncated => f.write_str("uTP extension past the end"),
            DecodeError::EmptySack => f.write_str("empty uTP selective ACK"),
        }
    }
}

impl std::error::Error for DecodeError {}

fn be16(b: &[u8], at: usize) -> u16 {
    let mut a = [0u8; 2];
    if let Some(s) = b.get(at..at + 2) {
        a.copy_from_slice(s);
    }
    u16::from_be_bytes(a)
}

fn be32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        a.copy_from_slice(s);
    }
    u32::from_be_bytes(a)
}

/// Decodes one datagram.
///
/// A selective ACK of any non-zero length is accepted. BEP 29 asks for a
/// multiple of four bytes, but libtorrent 2.0 sends `ceil(span / 8)` bytes
/// (`utp_stream.cpp`, `send_pkt`), so rejecting the others would drop its
/// packets, data included, whenever it holds packets out of order. Only
/// the first selective ACK counts; later ones are skipped.
pub fn decode(bytes: &[u8]) -> Result<Packet<'_>, DecodeError> {
    let Some(head) = bytes.get(..HEADER_LEN) else {
        return Err(DecodeError::TooShort(bytes.len()));
    };
    let version = head[0] & 0x0f;
    if version != VERSION {
        return Err(DecodeError::BadVersion(version));
    }
    let ty = PacketType::from_nibble(head[0] >> 4).ok_or(DecodeError::BadType(head[0] >> 4))?;
    let header = Header {
        ty,
        connection_id: be16(head, 2),
        timestamp_us: be32(head, 4),
        timestamp_diff_us: be32(head, 8),
        wnd_size: be32(head, 12),
        seq_nr: be16(head, 16),
        ack_nr: be16(head, 18),
    };
    let mut next = head[1];
    let mut rest = &bytes[HEADER_LEN..];
    let mut sack = None;
    // Each round consumes at least two bytes, so this ends.
    while next != 0 {
        let [kind_next, len, tail @ ..] = rest else {
            return Err(DecodeError::ExtensionTruncated);
        };
        let len = usize::from(*len);
        if tail.len() < len {
            return Err(DecodeError::ExtensionTruncated);
        }
        let (body, after) = tail.split_at(len);
        if next == EXT_SACK && sack.is_none() {
            if len == 0 {
                return Err(DecodeError::EmptySack);
            }
            sack = Some(body);
        }
        next = *kind_next;
        rest = after;
    }
    Ok(Packet {
        header,
        sack,
        payload: rest,
    })
}

/// Appends `header`, and a selective ACK extension holding `sack` if it is
/// not empty, to `out`. The payload, if any, goes after.
pub fn encode(out: &mut Vec<u8>, header: &Header, sack: &[u8]) {
    let has_sack = !sack.is_empty();
    out.push(((header.ty as u8) << 4) | VERSION);
    out.push(if has_sack { EXT_SACK } else { 0 });
    out.extend_from_slice(&header.connection_id.to_be_bytes());
    out.extend_from_slice(&header.timestamp_us.to_be_bytes());
    out.extend_from_slice(&header.timestamp_diff_us.to_be_bytes());
    out.extend_from_slice(&header.wnd_size.to_be_bytes());
    out.extend_from_slice(&header.seq_nr.to_be_bytes());
    out.extend_from_slice(&header.ack_nr.to_be_bytes());
    if has_sack {
        out.push(0);
        // Callers keep it within MAX_SACK_LEN; the cap keeps the length
        // byte true regardless.
        let sack = &sack[..sack.len().min(255)];
        out.push(sack.len() as u8);
        out.extend_from_slice(sack);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(ty: PacketType) -> Header {
        Header {
            ty,
            connection_id: 0xbeef,
            timestamp_us: 0x0102_0304,
            timestamp_diff_us: 0xfffe_fdfc,
            wnd_size: 1 << 20,
            seq_nr: 65535,
            ack_nr: 7,
        }
    }

    const TYPES: [PacketType; 5] = [
        PacketType::Data,
        PacketType::Fin,
        PacketType::State,
        PacketType::Reset,
        PacketType::Syn,
    ];

    #[test]
    fn every_type_round_trips_with_and_without_sack_and_payload() {
        for ty in TYPES {
            for sack in [&[][..], &[0x05, 0, 0, 0x80][..], &[0xff; 8][..]] {
                for payload in [&b""[..], &b"hello"[..]] {
                    let mut out = Vec::new();
                    encode(&mut out, &header(ty), sack);
                    out.extend_from_slice(payload);
                    let p = decode(&out).unwrap();
                    assert_eq!(p.header, header(ty));
                    assert_eq!(p.sack, (!sack.is_empty()).then_some(sack));
                    assert_eq!(p.payload, payload);
                }
            }
        }
    }

    #[test]
    fn header_layout_is_bep_29() {
        let mut out = Vec::new();
        encode(&mut out, &header(PacketType::Syn), &[]);
        assert_eq!(
            out,
            [
                0x41, 0, 0xbe, 0xef, 1, 2, 3, 4, 0xff, 0xfe, 0xfd, 0xfc, 0, 0x10, 0, 0, 0xff, 0xff,
                0, 7
            ]
        );
    }

    #[test]
    fn short_headers_are_errors() {
        let mut out = Vec::new();
        encode(&mut out, &header(PacketType::Data), &[]);
        for cut in 0..HEADER_LEN {
            assert_eq!(decode(&out[..cut]), Err(DecodeError::TooShort(cut)));
        }
    }

    #[test]
    fn bad_version_and_type_are_errors() {
        let mut out = Vec::new();
        encode(&mut out, &header(PacketType::Data), &[]);
        for v in (0..16).filter(|&v| v != 1) {
            out[0] = v;
            assert_eq!(decode(&out), Err(DecodeError::BadVersion(v)));
        }
        for t in 5..16u8 {
            out[0] = (t << 4) | 1;
            assert_eq!(decode(&out), Err(DecodeError::BadType(t)));
        }
    }

    #[test]
    fn every_truncation_inside_the_extensions_is_an_error() {
        let mut out = Vec::new();
        encode(&mut out, &header(PacketType::State), &[1, 2, 3, 4]);
        for cut in HEADER_LEN..out.len() {
            assert_eq!(
                decode(&out[..cut]),
                Err(DecodeError::ExtensionTruncated),
                "{cut}"
            );
        }
        assert!(decode(&out).is_ok());
    }

    #[test]
    fn an_extension_length_past_the_end_is_an_error() {
        let mut out = Vec::new();
        encode(&mut out, &header(PacketType::Data), &[]);
        out[1] = 9; // an unknown extension
        out.extend_from_slice(&[0, 200, 1, 2, 3]);
        assert_eq!(decode(&out), Err(DecodeError::ExtensionTruncated));
    }

    #[test]
    fn unknown_extensions_are_skipped_by_length() {
        let mut out = Vec::new();
        encode(&mut out, &header(PacketType::Data), &[]);
        // libutp's extension bits (2), then libtorrent's close reason (3),
        // then a SACK, then the payload.
        out[1] = 2;
        out.extend_from_slice(&[3, 8, 0, 0, 0, 0, 0, 0, 0, 0]);
        out.extend_from_slice(&[1, 4, 0, 0, 0, 5]);
        out.extend_from_slice(&[0, 4, 0xaa, 0, 0, 0]);
        out.extend_from_slice(b"data");
        let p = decode(&out).unwrap();
        assert_eq!(p.sack, Some(&[0xaa, 0, 0, 0][..]));
        assert_eq!(p.payload, b"data");
    }

    #[test]
    fn sack_lengths_libtorrent_sends_are_accepted_and_empty_is_an_error() {
        // libtorrent sends ceil(span / 8) bytes: 1, 2, 3 ... all happen.
        for len in 1..=9u8 {
            let mut out = Vec::new();
            encode(
                &mut out,
                &header(PacketType::State),
                &vec![0x01; len.into()],
            );
            assert_eq!(decode(&out).unwrap().sack.unwrap().len(), usize::from(len));
        }
        let mut out = Vec::new();
        encode(&mut out, &header(PacketType::State), &[]);
        out[1] = EXT_SACK;
        out.extend_from_slice(&[0, 0]);
        assert_eq!(decode(&out), Err(DecodeError::EmptySack));
    }

    #[test]
    fn every_split_point_of_a_valid_packet_decodes_or_errors_without_panicking() {
        let mut out = Vec::new();
        encode(&mut out, &header(PacketType::Data), &[0x0f, 0, 0, 0]);
        out.extend_from_slice(b"payload bytes");
        let payload_start = out.len() - 13;
        for cut in 0..=out.len() {
            let r = decode(&out[..cut]);
            if cut >= payload_start {
                assert_eq!(r.unwrap().payload, &out[payload_start..cut]);
            } else {
                assert!(r.is_err(), "{cut}");
            }
        }
    }
}
