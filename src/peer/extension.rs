//! The extension protocol (BEP 10): the extended message framing and the
//! extension handshake, which tells a peer what extensions we speak
//! (peer exchange, metadata exchange) under which ids.
//!
//! Everything read here comes from a peer and is hostile: parsing walks
//! the bencode with the zero-copy [`Reader`], keeps at most a fixed number
//! of entries, and ignores what it does not understand. Memory kept does
//! not grow with the input.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::codec::bencode::{DecodeError, Reader};

/// The peer wire message id of every extension message.
pub const EXTENDED_MSG_ID: u8 = 20;
/// The extended message id of the extension handshake.
pub const HANDSHAKE_EXT_ID: u8 = 0;

/// At most this many entries of a peer's `m` dict are kept.
pub const MAX_EXTENSIONS: usize = 64;
/// Extension names longer than this are ignored.
pub const MAX_EXT_NAME: usize = 64;
/// A peer's client name (`v`) is cut to this many bytes.
pub const MAX_CLIENT_NAME: usize = 64;
/// A peer's `reqq` is clamped to this: we never queue more requests than
/// this on one peer, whatever it claims to accept.
pub const MAX_REQQ: u32 = 2048;

/// Why an extension message was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtensionError {
    /// The payload is not bencode.
    Bencode(DecodeError),
    /// The payload is bencode but not a dict.
    NotADict,
    /// An extended message without its extended id.
    Empty,
    /// A payload too large for one message.
    TooLarge,
}

impl From<DecodeError> for ExtensionError {
    fn from(e: DecodeError) -> ExtensionError {
        ExtensionError::Bencode(e)
    }
}

impl fmt::Display for ExtensionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExtensionError::Bencode(e) => write!(f, "extension message: {e}"),
            ExtensionError::NotADict => f.write_str("extension message is not a dict"),
            ExtensionError::Empty => f.write_str("extension message without an extended id"),
            ExtensionError::TooLarge => f.write_str("extension message too large"),
        }
    }
}

impl std::error::Error for ExtensionError {}

/// Splits the body of an extended message (what follows message id 20)
/// into the extended id and its payload.
pub fn split_extended(body: &[u8]) -> Result<(u8, &[u8]), ExtensionError> {
    body.split_first()
        .map(|(id, rest)| (*id, rest))
        .ok_or(ExtensionError::Empty)
}

/// Appends one whole extended message: length prefix, id 20, `ext_id`,
/// `payload`. On error `out` is unchanged.
pub fn write_extended(out: &mut Vec<u8>, ext_id: u8, payload: &[u8]) -> Result<(), ExtensionError> {
    let len = payload
        .len()
        .checked_add(2)
        .and_then(|l| u32::try_from(l).ok())
        .ok_or(ExtensionError::TooLarge)?;
    out.extend_from_slice(&len.to_be_bytes());
    out.push(EXTENDED_MSG_ID);
    out.push(ext_id);
    out.extend_from_slice(payload);
    Ok(())
}

/// A bencoded string.
pub(crate) fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(b.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(b);
}

/// A bencoded integer.
pub(crate) fn put_int(out: &mut Vec<u8>, i: i64) {
    out.push(b'i');
    out.extend_from_slice(i.to_string().as_bytes());
    out.push(b'e');
}

/// Our extension handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalHandshake<'a> {
    /// Our client name and version (`v`).
    pub client: &'a str,
    /// How many outstanding requests we accept (`reqq`).
    pub reqq: u32,
    /// Our listen port (`p`), if peers can connect to us.
    pub listen_port: Option<u16>,
    /// The extensions offered (`m`): each name with the extended id we
    /// want its messages to us to carry.
    pub extensions: &'a [(&'a str, u8)],
    /// Bytes in the torrent's info dictionary (BEP 9's `metadata_size`),
    /// when we have it to give.
    pub metadata_size: Option<u32>,
}

impl LocalHandshake<'_> {
    /// The bencoded payload (keys in canonical order).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.client.len());
        out.push(b'd');
        put_bytes(&mut out, b"m");
        out.push(b'd');
        let mut offered = self.extensions.to_vec();
        offered.sort_unstable();
        offered.dedup_by(|a, b| a.0 == b.0);
        for (name, id) in offered {
            put_bytes(&mut out, name.as_bytes());
            put_int(&mut out, i64::from(id));
        }
        out.push(b'e');
        if let Some(n) = self.metadata_size {
            put_bytes(&mut out, b"metadata_size");
            put_int(&mut out, i64::from(n));
        }
        if let Some(p) = self.listen_port {
            put_bytes(&mut out, b"p");
            put_int(&mut out, i64::from(p));
        }
        put_bytes(&mut out, b"reqq");
        put_int(&mut out, i64::from(self.reqq));
        put_bytes(&mut out, b"v");
        put_bytes(&mut out, self.client.as_bytes());
        out.push(b'e');
        out
    }
}

/// A peer's extension handshake, bounded. A later handshake from the
/// same peer replaces the earlier one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtendedHandshake {
    /// The `m` entries kept, first occurrence of each name, in input
    /// order; id 0 means the peer disabled that extension.
    pub extensions: Vec<(String, u8)>,
    /// The client name (`v`), cut to [`MAX_CLIENT_NAME`] bytes, control
    /// characters replaced: it goes into logs.
    pub client: Option<String>,
    /// The peer's listen port (`p`), if valid.
    pub listen_port: Option<u16>,
    /// How many outstanding requests it accepts (`reqq`), clamped to
    /// 1..=[`MAX_REQQ`].
    pub reqq: Option<u32>,
    /// Our address as the peer sees it (`yourip`).
    pub your_ip: Option<IpAddr>,
    /// Bytes in the torrent's info dictionary, as the peer says
    /// (`metadata_size`, BEP 9): positive, checked by whoever uses it.
    pub metadata_size: Option<u32>,
}

impl ExtendedHandshake {
    /// Parses a handshake payload. Unknown keys and known keys of the
    /// wrong type are ignored (BEP 10 asks for tolerance); input that is
    /// not a bencoded dict is an error.
    pub fn parse(payload: &[u8]) -> Result<ExtendedHandshake, ExtensionError> {
        let mut hs = ExtendedHandshake::default();
        let mut r = Reader::new(payload);
        if r.peek() != Some(b'd') {
            return Err(ExtensionError::NotADict);
        }
        r.begin_dict()?;
        let mut seen_m = false;
        while !r.at_end()? {
            let key = r.key()?;
            match key {
                b"m" if !seen_m => {
                    seen_m = true;
                    parse_m(&mut r, &mut hs.extensions)?;
                }
                b"v" if hs.client.is_none() => {
                    hs.client = read_bytes(&mut r)?.map(clean_name);
                }
                b"p" if hs.listen_port.is_none() => {
                    hs.listen_port = read_int(&mut r)?
                        .and_then(|p| u16::try_from(p).ok())
                        .filter(|p| *p != 0);
                }
                b"reqq" if hs.reqq.is_none() => {
                    hs.reqq = read_int(&mut r)?
                        .filter(|q| *q > 0)
                        .map(|q| u32::try_from(q).unwrap_or(u32::MAX).min(MAX_REQQ));
                }
                b"metadata_size" if hs.metadata_size.is_none() => {
                    hs.metadata_size = read_int(&mut r)?
                        .and_then(|n| u32::try_from(n).ok())
                        .filter(|n| *n > 0);
                }
                b"yourip" if hs.your_ip.is_none() => {
                    hs.your_ip = read_bytes(&mut r)?.and_then(ip_from_bytes);
                }
                _ => {
                    r.skip()?;
                }
            }
        }
        r.finish()?;
        Ok(hs)
    }

    /// The id the peer wants for extension `name`; `None` if it does not
    /// support it or disabled it.
    pub fn extension_id(&self, name: &str) -> Option<u8> {
        self.extensions
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, id)| *id)
            .filter(|id| *id != 0)
    }
}

/// Reads the `m` dict into `out`, bounded; anything but a dict is
/// skipped.
fn parse_m(r: &mut Reader<'_>, out: &mut Vec<(String, u8)>) -> Result<(), ExtensionError> {
    if r.peek() != Some(b'd') {
        r.skip()?;
        return Ok(());
    }
    r.begin_dict()?;
    while !r.at_end()? {
        let name = r.key()?;
        let id = read_int(r)?;
        if out.len() >= MAX_EXTENSIONS || name.len() > MAX_EXT_NAME {
            continue;
        }
        let (Some(id), Ok(name)) = (
            id.and_then(|i| u8::try_from(i).ok()),
            std::str::from_utf8(name),
        ) else {
            continue;
        };
        if !out.iter().any(|(n, _)| n == name) {
            out.push((name.to_owned(), id));
        }
    }
    Ok(())
}

/// An integer value, or `None` (skipped) if the value is something else.
fn read_int(r: &mut Reader<'_>) -> Result<Option<i64>, ExtensionError> {
    if r.peek() == Some(b'i') {
        Ok(r.value()?.as_int())
    } else {
        r.skip()?;
        Ok(None)
    }
}

/// A string value without copying, or `None` (skipped) if the value is
/// something else.
fn read_bytes<'a>(r: &mut Reader<'a>) -> Result<Option<&'a [u8]>, ExtensionError> {
    if matches!(r.peek(), Some(b'0'..=b'9')) {
        Ok(Some(r.bytes()?))
    } else {
        r.skip()?;
        Ok(None)
    }
}

fn clean_name(b: &[u8]) -> String {
    let cut = b.get(..MAX_CLIENT_NAME).unwrap_or(b);
    String::from_utf8_lossy(cut)
        .chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

fn ip_from_bytes(b: &[u8]) -> Option<IpAddr> {
    if let Ok(v4) = <[u8; 4]>::try_from(b) {
        Some(IpAddr::V4(Ipv4Addr::from(v4)))
    } else if let Ok(v6) = <[u8; 16]>::try_from(b) {
        Some(IpAddr::V6(Ipv6Addr::from(v6)))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_handshake_has_exact_bytes() {
        let hs = LocalHandshake {
            client: "tripcd 0.1",
            reqq: 250,
            listen_port: Some(6881),
            extensions: &[("ut_pex", 1)],
            metadata_size: None,
        };
        assert_eq!(
            hs.encode(),
            b"d1:md6:ut_pexi1ee1:pi6881e4:reqqi250e1:v10:tripcd 0.1e".to_vec()
        );
        let back = ExtendedHandshake::parse(&hs.encode()).unwrap();
        assert_eq!(back.extension_id("ut_pex"), Some(1));
        assert_eq!(back.listen_port, Some(6881));
        assert_eq!(back.reqq, Some(250));
        assert_eq!(back.client.as_deref(), Some("tripcd 0.1"));
    }

    #[test]
    fn offered_extensions_are_sorted_and_metadata_size_told() {
        let hs = LocalHandshake {
            client: "t",
            reqq: 5,
            listen_port: None,
            extensions: &[],
            metadata_size: None,
        };
        assert_eq!(hs.encode(), b"d1:mde4:reqqi5e1:v1:te".to_vec());
        let hs = LocalHandshake {
            extensions: &[("ut_pex", 1), ("ut_metadata", 2), ("ut_pex", 9)],
            metadata_size: Some(31_000),
            ..hs
        };
        assert_eq!(
            hs.encode(),
            b"d1:md11:ut_metadatai2e6:ut_pexi1ee13:metadata_sizei31000e4:reqqi5e1:v1:te".to_vec()
        );
        let back = ExtendedHandshake::parse(&hs.encode()).unwrap();
        assert_eq!(back.metadata_size, Some(31_000));
        assert_eq!(back.extension_id("ut_pex"), Some(1));
    }

    #[test]
    fn parses_a_typical_foreign_handshake() {
        let input = b"d1:md11:ut_metadatai3e6:ut_pexi2ee13:metadata_sizei1234e\
            1:pi51413e4:reqqi500e1:v14:uTorrent 3.5.56:yourip4:\x7f\x00\x00\x01e";
        let hs = ExtendedHandshake::parse(input).unwrap();
        assert_eq!(hs.extension_id("ut_pex"), Some(2));
        assert_eq!(hs.metadata_size, Some(1234));
        assert_eq!(hs.extension_id("ut_metadata"), Some(3));
        assert_eq!(hs.extension_id("lt_donthave"), None);
        assert_eq!(hs.listen_port, Some(51413));
        assert_eq!(hs.reqq, Some(500));
        assert_eq!(hs.client.as_deref(), Some("uTorrent 3.5.5"));
        assert_eq!(hs.your_ip, Some(IpAddr::from([127, 0, 0, 1])));
    }

    #[test]
    fn handshake_fields_out_of_range_or_of_the_wrong_type_are_ignored() {
        let hs = ExtendedHandshake::parse(
            b"d1:md1:ai0e1:bi256e1:ci-1e1:dli1ee1:ei255ee\
              1:pi0e4:reqqi0e1:vi5e6:yourip3:abce",
        )
        .unwrap();
        assert_eq!(hs.extension_id("a"), None, "0 is disabled");
        assert_eq!(
            hs.extensions,
            vec![("a".to_string(), 0), ("e".to_string(), 255)]
        );
        assert_eq!(
            (hs.listen_port, hs.reqq, hs.client, hs.your_ip),
            (None, None, None, None)
        );

        let hs =
            ExtendedHandshake::parse(b"d1:mi5e1:pi70000e4:reqqi99999999999e1:x4:junke").unwrap();
        assert!(hs.extensions.is_empty());
        assert_eq!(hs.listen_port, None);
        assert_eq!(hs.reqq, Some(MAX_REQQ));
    }

    #[test]
    fn handshake_parsing_is_bounded() {
        let mut input = b"d1:md".to_vec();
        for i in 0..1000 {
            let name = format!("x{i:04}");
            put_bytes(&mut input, name.as_bytes());
            put_int(&mut input, 7);
        }
        put_bytes(&mut input, &[b'n'; MAX_EXT_NAME + 1]);
        put_int(&mut input, 9);
        input.extend_from_slice(b"e1:v");
        put_bytes(&mut input, &[b'A'; 10_000]);
        input.push(b'e');
        let hs = ExtendedHandshake::parse(&input).unwrap();
        assert_eq!(hs.extensions.len(), MAX_EXTENSIONS);
        assert_eq!(hs.client.unwrap().len(), MAX_CLIENT_NAME);

        let hs = ExtendedHandshake::parse(b"d1:v5:a\nb\x00ce").unwrap();
        assert_eq!(hs.client.as_deref(), Some("a\u{fffd}b\u{fffd}c"));
    }

    #[test]
    fn malformed_handshakes_are_errors() {
        assert_eq!(ExtendedHandshake::parse(b""), Err(ExtensionError::NotADict));
        assert_eq!(
            ExtendedHandshake::parse(b"li1ee"),
            Err(ExtensionError::NotADict)
        );
        for bad in [
            &b"d1:md6:ut_pexi1e"[..],
            b"d1:pi01ee",
            b"d1:pi1eei1e",
            b"di1ei2ee",
        ] {
            assert!(
                matches!(
                    ExtendedHandshake::parse(bad),
                    Err(ExtensionError::Bencode(_))
                ),
                "{bad:?}"
            );
        }
        let mut deep = b"d1:x".to_vec();
        deep.extend(vec![b'l'; 100_000]);
        assert!(matches!(
            ExtendedHandshake::parse(&deep),
            Err(ExtensionError::Bencode(_))
        ));
    }

    #[test]
    fn extended_framing() {
        let mut out = vec![9];
        write_extended(&mut out, 3, b"de").unwrap();
        assert_eq!(out, vec![9, 0, 0, 0, 4, 20, 3, b'd', b'e']);
        assert_eq!(split_extended(&out[5..]), Ok((20, &out[6..])));
        assert_eq!(split_extended(&out[6..]), Ok((3, &b"de"[..])));
        assert_eq!(split_extended(&[]), Err(ExtensionError::Empty));
    }
}
