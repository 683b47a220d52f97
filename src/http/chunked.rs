//! The chunked request body decoder (RFC 9112 7.1), incremental over the
//! connection's unparsed input.
//!
//! Strict where leniency would let a proxy in front and this server
//! disagree on where a body ends: every line ends in CRLF, a size is one
//! to sixteen hex digits, chunk data is followed by CRLF. Extensions are
//! skipped, trailer fields are read and dropped; both are bounded.

use super::error::HttpError;

/// Longest chunk-size line accepted, extensions included. Clients send
/// none (a size is at most 16 digits); 1 KiB leaves room for any real one.
pub const MAX_CHUNK_LINE: usize = 1024;

const LINE_TOO_LONG: &str = "chunk line too long";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a chunk-size line.
    Size,
    /// This many data bytes of the current chunk to go.
    Data(usize),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// Trailer lines after the last chunk, this many bytes of them so far.
    Trailer(usize),
    /// The body is complete.
    Done,
}

/// One chunked body's decoding state.
#[derive(Debug)]
pub struct Chunked {
    state: State,
    /// Data bytes announced by the chunk sizes so far.
    announced: usize,
}

impl Chunked {
    /// A decoder at the start of a body.
    pub fn new() -> Chunked {
        Chunked {
            state: State::Size,
            announced: 0,
        }
    }

    /// Body bytes announced so far (the sizes of the chunks begun).
    pub fn announced(&self) -> usize {
        self.announced
    }

    /// Whether the last chunk and the trailer have been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes from `input`, appending data to `body`, and returns how many
    /// bytes of `input` it used. Stops at the end of the body or when a
    /// line is incomplete. `max_body` bounds the data; `max_trailer` the
    /// trailer section.
    pub fn decode(
        &mut self,
        input: &[u8],
        body: &mut Vec<u8>,
        max_body: usize,
        max_trailer: usize,
    ) -> Result<usize, HttpError> {
        let mut pos = 0;
        loop {
            let rest = input.get(pos..).unwrap_or_default();
            match self.state {
                State::Done => return Ok(pos),
                State::Size => {
                    let Some(line) = crlf_line(rest, MAX_CHUNK_LINE)? else {
                        return Ok(pos);
                    };
                    pos += line.len() + 2;
                    let size = parse_size(line)?;
                    if size > max_body.saturating_sub(self.announced) {
                        return Err(HttpError::BodyTooLarge);
                    }
                    self.announced += size;
                    self.state = if size == 0 {
                        State::Trailer(0)
                    } else {
                        State::Data(size)
                    };
                }
                State::Data(left) => {
                    if rest.is_empty() {
                        return Ok(pos);
                    }
                    let take = left.min(rest.len());
                    body.extend_from_slice(rest.get(..take).unwrap_or_default());
                    pos += take;
                    self.state = match left - take {
                        0 => State::DataEnd,
                        n => State::Data(n),
                    };
                }
                State::DataEnd => match rest.get(..2) {
                    None if rest.first().is_none_or(|&b| b == b'\r') => return Ok(pos),
                    Some(b"\r\n") => {
                        pos += 2;
                        self.state = State::Size;
                    }
                    _ => return Err(HttpError::BadRequest("chunk longer than its size")),
                },
                State::Trailer(seen) => {
                    let room = max_trailer.saturating_sub(seen);
                    let line = crlf_line(rest, room).map_err(|e| match e {
                        HttpError::BadRequest(LINE_TOO_LONG) => HttpError::HeadTooLarge,
                        e => e,
                    })?;
                    let Some(line) = line else {
                        return Ok(pos);
                    };
                    pos += line.len() + 2;
                    self.state = if line.is_empty() {
                        State::Done
                    } else {
                        State::Trailer(seen + line.len() + 2)
                    };
                }
            }
        }
    }
}

impl Default for Chunked {
    fn default() -> Self {
        Chunked::new()
    }
}

/// The line at the start of `buf` without its CRLF, `None` while it is
/// incomplete; an error when it is longer than `max` or ends in a bare LF.
fn crlf_line(buf: &[u8], max: usize) -> Result<Option<&[u8]>, HttpError> {
    let window = buf.get(..max.saturating_add(2)).unwrap_or(buf);
    match window.iter().position(|&b| b == b'\n') {
        Some(nl) => match nl
            .checked_sub(1)
            .and_then(|cr| buf.get(cr).map(|&b| (cr, b)))
        {
            Some((cr, b'\r')) => Ok(buf.get(..cr)),
            _ => Err(HttpError::BadRequest("chunk line without CRLF")),
        },
        None if window.len() > max.saturating_add(1) => Err(HttpError::BadRequest(LINE_TOO_LONG)),
        None => Ok(None),
    }
}

/// A chunk size: 1 to 16 hex digits, then optional whitespace and
/// `;extensions`, which are ignored.
fn parse_size(line: &[u8]) -> Result<usize, HttpError> {
    let bad = HttpError::BadRequest("bad chunk size");
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    let (hex, after) = line.split_at(digits);
    let after = after.trim_ascii_start();
    if hex.is_empty() || hex.len() > 16 || !(after.is_empty() || after.starts_with(b";")) {
        return Err(bad);
    }
    let text = std::str::from_utf8(hex).map_err(|_| bad.clone())?;
    let size = u64::from_str_radix(text, 16).map_err(|_| bad)?;
    // Too large for memory is too large for the limit.
    Ok(usize::try_from(size).unwrap_or(usize::MAX))
}
