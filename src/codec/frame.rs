//! Framing: 8 ASCII hex digits giving the payload length, then the payload.
//!
//! [`split_frame`] is a pure function over the bytes received so far. It
//! looks only at the 8 header bytes until the whole payload is there, so a
//! large frame arriving in small pieces costs nothing per piece beyond the
//! copy into the buffer (no rescans, no quadratic behaviour).

use std::fmt;
use std::ops::Range;

/// Bytes in a frame header.
pub const HEADER_LEN: usize = 8;

/// The largest payload the protocol allows (2^31 - 8).
pub const PROTOCOL_MAX: usize = 0x7FFF_FFF8;

/// Why a byte stream is not a valid sequence of frames. Every one is a
/// protocol error: the connection is closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// A header byte that is not an ASCII hex digit, at this header offset.
    BadHeader {
        /// Index of the bad byte within the 8 header bytes.
        index: usize,
        /// The byte itself.
        byte: u8,
    },
    /// A header announcing a zero-length payload.
    Empty,
    /// A header announcing more than the limit (or the protocol's maximum).
    TooLong {
        /// The announced length.
        len: usize,
        /// The limit in force.
        limit: usize,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::BadHeader { index, byte } => write!(
                f,
                "bad frame header: byte {index} is {:?}, not a hex digit",
                char::from(*byte).escape_default().to_string()
            ),
            FrameError::Empty => write!(f, "frame announces an empty payload"),
            FrameError::TooLong { len, limit } => {
                write!(f, "frame announces {len} bytes, over the limit of {limit}")
            }
        }
    }
}

impl std::error::Error for FrameError {}

fn hex_value(b: u8) -> Option<usize> {
    match b {
        b'0'..=b'9' => Some(usize::from(b - b'0')),
        b'a'..=b'f' => Some(usize::from(b - b'a' + 10)),
        b'A'..=b'F' => Some(usize::from(b - b'A' + 10)),
        _ => None,
    }
}

/// Looks for one frame at the start of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed, or the payload's range in
/// `buf` (the frame ends where the range does). A header is judged as soon
/// as its bytes arrive: a non-hex byte is refused even before all 8 are
/// here, and a bad length before any payload is buffered. `limit` is capped
/// at [`PROTOCOL_MAX`].
pub fn split_frame(buf: &[u8], limit: usize) -> Result<Option<Range<usize>>, FrameError> {
    let limit = limit.min(PROTOCOL_MAX);
    let mut len = 0usize;
    for (index, &byte) in buf.iter().take(HEADER_LEN).enumerate() {
        let digit = hex_value(byte).ok_or(FrameError::BadHeader { index, byte })?;
        len = (len << 4) | digit;
    }
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len > limit {
        return Err(FrameError::TooLong { len, limit });
    }
    if buf.len() - HEADER_LEN < len {
        return Ok(None);
    }
    Ok(Some(HEADER_LEN..HEADER_LEN + len))
}

/// Appends a frame header for a payload of `len` bytes (upper-case hex).
pub fn write_header(out: &mut Vec<u8>, len: usize) {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    let mut header = [0u8; HEADER_LEN];
    for (i, slot) in header.iter_mut().enumerate() {
        let shift = 4 * (HEADER_LEN - 1 - i);
        *slot = DIGITS[(len >> shift) & 0xF];
    }
    out.extend_from_slice(&header);
}

/// Appends one whole frame carrying `payload`.
pub fn write_frame(out: &mut Vec<u8>, payload: &[u8]) {
    write_header(out, payload.len());
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = 16 << 20;

    #[test]
    fn parses_a_whole_frame_and_reports_its_range() {
        let buf = b"0000000Dl4:noop0:i1eeREST";
        let r = split_frame(buf, LIMIT).unwrap().unwrap();
        assert_eq!(&buf[r.clone()], b"l4:noop0:i1ee");
        assert_eq!(r.end, 21);
    }

    #[test]
    fn accepts_any_case() {
        for h in [&b"0000000dl4:noop0:i1ee"[..], b"0000000Dl4:noop0:i1ee"] {
            assert!(split_frame(h, LIMIT).unwrap().is_some());
        }
        assert_eq!(
            split_frame(b"0000aBcD", 1 << 10),
            Err(FrameError::TooLong {
                len: 0xABCD,
                limit: 1 << 10
            })
        );
        let r = split_frame(b"0000000a0123456789", LIMIT).unwrap().unwrap();
        assert_eq!(r, 8..18);
    }

    #[test]
    fn every_split_point_needs_more_until_complete() {
        let buf = b"00000012l9:succeeded0:i1ee";
        for cut in 0..buf.len() {
            assert_eq!(split_frame(&buf[..cut], LIMIT), Ok(None), "cut at {cut}");
        }
        assert_eq!(split_frame(buf, LIMIT), Ok(Some(8..buf.len())));
    }

    #[test]
    fn refuses_bad_headers_as_soon_as_seen() {
        for (h, index, byte) in [
            (&b"0000001G"[..], 7, b'G'),
            (b" 000000C", 0, b' '),
            (b"+000000C", 0, b'+'),
            (b"-000000C", 0, b'-'),
            (b"0x00000C", 1, b'x'),
            (b"0x", 1, b'x'),
        ] {
            assert_eq!(
                split_frame(h, LIMIT),
                Err(FrameError::BadHeader { index, byte }),
                "{:?}",
                String::from_utf8_lossy(h)
            );
        }
    }

    #[test]
    fn refuses_zero_and_over_limit_from_the_header_alone() {
        assert_eq!(split_frame(b"00000000", LIMIT), Err(FrameError::Empty));
        assert_eq!(
            split_frame(b"00000101", 256),
            Err(FrameError::TooLong {
                len: 257,
                limit: 256
            })
        );
        assert_eq!(split_frame(b"00000100", 256), Ok(None));
        assert_eq!(
            split_frame(b"7FFFFFF9", usize::MAX),
            Err(FrameError::TooLong {
                len: 0x7FFF_FFF9,
                limit: PROTOCOL_MAX
            })
        );
        assert_eq!(
            split_frame(b"FFFFFFFF", usize::MAX),
            Err(FrameError::TooLong {
                len: 0xFFFF_FFFF,
                limit: PROTOCOL_MAX
            })
        );
    }

    #[test]
    fn writes_upper_case_headers() {
        let mut out = Vec::new();
        write_frame(&mut out, &[b'x'; 0xAB]);
        assert_eq!(&out[..8], b"000000AB");
        let mut out = Vec::new();
        write_header(&mut out, 0x7FFF_FFF8);
        assert_eq!(out, b"7FFFFFF8");
    }
}
