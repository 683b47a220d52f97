//! The version 2 message `[key, value, tag?]` and the version handshake,
//! in one place for the daemon's session, the client library and the load
//! tool (PROTOCOL.md 2 and 3).

use std::fmt;

use crate::codec::bencode::write_message_frame;
use crate::codec::{decode, write_frame, DecodeError, Reader, Value};

/// Lowest and highest protocol versions the daemon speaks.
pub const VERSIONS: (i64, i64) = (1, 2);

/// Why a payload is not a well-formed message or version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageError {
    /// Not strict bencode.
    Decode(DecodeError),
    /// Bencode of the wrong shape; says which.
    Shape(&'static str),
    /// A version message with no usable range; says why.
    Version(String),
}

impl fmt::Display for MessageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MessageError::Decode(e) => e.fmt(f),
            MessageError::Shape(m) => f.write_str(m),
            MessageError::Version(m) => write!(f, "handshake: {m}"),
        }
    }
}

impl std::error::Error for MessageError {}

impl From<DecodeError> for MessageError {
    fn from(e: DecodeError) -> Self {
        MessageError::Decode(e)
    }
}

/// A version 2 message, its key borrowed from the payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Message<'a> {
    /// The key.
    pub key: &'a [u8],
    /// The value.
    pub value: Value,
    /// The tag; a tag <= 0 counts as none (as the original did).
    pub tag: Option<i64>,
}

/// Parses a version 2 message strictly: a list of a string key, a value
/// and an optional integer tag; later elements are ignored but must be
/// bencode.
///
/// A list that stops right after its value, without its closing `e`, is
/// read as an untagged `[key, value]`: the vector `noop-untagged`
/// (cases.jsonl) requires it, and vectors win over the text. Anything else
/// unterminated is an error.
pub fn parse(payload: &[u8]) -> Result<Message<'_>, MessageError> {
    let (key, value, tag) = read(payload, true)?;
    Ok(Message {
        key,
        value: value.unwrap_or_else(Value::empty),
        tag,
    })
}

/// The key and tag of a message, its value checked but not decoded (for a
/// load generator reading large replies).
pub fn peek(payload: &[u8]) -> Result<(&[u8], Option<i64>), MessageError> {
    let (key, _, tag) = read(payload, false)?;
    Ok((key, tag))
}

type Parts<'a> = (&'a [u8], Option<Value>, Option<i64>);

fn read(payload: &[u8], decode_value: bool) -> Result<Parts<'_>, MessageError> {
    let shape = |m| Err(MessageError::Shape(m));
    let mut r = Reader::new(payload);
    if r.peek() != Some(b'l') {
        // Check it is bencode at all, for a precise error.
        r.skip()?;
        r.finish()?;
        return shape("version 2 message is not a list");
    }
    r.begin_list()?;
    if r.at_end()? {
        return shape("message list is empty");
    }
    let key = match r.peek() {
        Some(b'0'..=b'9') => r.bytes()?,
        _ => {
            r.skip()?;
            return shape("message key is not a string");
        }
    };
    if r.at_end()? {
        return shape("message has no value");
    }
    let value = if decode_value {
        Some(r.value()?)
    } else {
        r.skip()?;
        None
    };
    if r.peek().is_none() {
        return Ok((key, value, None));
    }
    let mut tag = None;
    if !r.at_end()? {
        match r.value()? {
            Value::Int(t) => tag = Some(t),
            _ => return shape("message tag is not an integer"),
        }
        while !r.at_end()? {
            r.skip()?;
        }
    }
    r.finish()?;
    Ok((key, value, tag.filter(|t| *t > 0)))
}

/// Appends one frame holding `[key, value(, tag)]`. A value too large for
/// the protocol is replaced by a `failed` message saying so.
pub fn write(out: &mut Vec<u8>, key: &[u8], value: &Value, tag: Option<i64>) {
    if let Err(e) = write_message_frame(out, key, value, tag) {
        log::error!(
            "cannot encode a {} message: {e}",
            String::from_utf8_lossy(key)
        );
        let reason = Value::str("internal error: message could not be encoded");
        // A short string always encodes.
        let _ = write_message_frame(out, b"failed", &reason, tag);
    }
}

/// One frame holding `[key, value(, tag)]`.
pub fn frame(key: &str, value: &Value, tag: Option<i64>) -> Vec<u8> {
    let mut out = Vec::new();
    write(&mut out, key.as_bytes(), value, tag);
    out
}

/// What a version message offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// Lowest version spoken.
    pub min: i64,
    /// Highest version spoken.
    pub max: i64,
    /// The sender's name (`label`), "" when absent.
    pub label: String,
}

impl Version {
    /// The version message frame: `{"version": {"label", "max", "min"}}`.
    pub fn frame(&self) -> Vec<u8> {
        let v = Value::dict([(
            "version",
            Value::dict([
                ("label", Value::str(&self.label)),
                ("max", Value::Int(self.max)),
                ("min", Value::Int(self.min)),
            ]),
        )]);
        let mut out = Vec::new();
        write_frame(&mut out, &v.to_bencode().unwrap_or_default());
        out
    }

    /// Reads a version message: `version` either an integer or a dict with
    /// integer `min` and `max` (and an optional `label`).
    pub fn parse(payload: &[u8]) -> Result<Version, MessageError> {
        let bad = |m: &str| MessageError::Version(m.to_string());
        let msg = decode(payload)?;
        if msg.as_dict().is_none() {
            return Err(bad("first message is not a version dict"));
        }
        let v = msg
            .get("version")
            .ok_or_else(|| bad("first message has no version"))?;
        let (min, max) = match v {
            Value::Int(n) => (*n, *n),
            Value::Dict(_) => match (v.get("min"), v.get("max")) {
                (Some(Value::Int(min)), Some(Value::Int(max))) => (*min, *max),
                _ => return Err(bad("version needs integer min and max")),
            },
            _ => return Err(bad("version is neither an integer nor a dict")),
        };
        let label = v
            .get("label")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        Ok(Version { min, max, label })
    }

    /// The highest version both this offer and `ours` speak.
    pub fn agree(&self, ours: (i64, i64)) -> Result<i64, MessageError> {
        let (min, max) = (self.min, self.max);
        if min < 1 || max < min {
            return Err(MessageError::Version(format!(
                "bad version range {min}..{max}"
            )));
        }
        if min > ours.1 || max < ours.0 {
            return Err(MessageError::Version(format!(
                "no common version: {min}..{max} offered, {}..{} spoken",
                ours.0, ours.1
            )));
        }
        Ok(max.min(ours.1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_parse_with_and_without_tags() {
        let m = parse(b"l4:noop0:i5ee").unwrap();
        assert_eq!((m.key, m.tag), (&b"noop"[..], Some(5)));
        assert_eq!(parse(b"l4:noop0:e").unwrap().tag, None);
        assert_eq!(parse(b"l4:noop0:i0ee").unwrap().tag, None, "tag 0 is none");
        assert_eq!(parse(b"l4:noop0:").unwrap().tag, None, "unterminated");
        assert_eq!(parse(b"l4:noop0:i5e3:xyze").unwrap().tag, Some(5));
        assert_eq!(peek(b"l4:porti7ei3ee").unwrap(), (&b"port"[..], Some(3)));
        assert!(
            peek(b"l4:porti7xi3ee").is_err(),
            "the value is still checked"
        );
    }

    #[test]
    fn misshapen_messages_say_why() {
        let shape = |p: &[u8]| match parse(p) {
            Err(MessageError::Shape(m)) => m,
            other => panic!("{other:?}"),
        };
        assert_eq!(shape(b"d1:ai1ee"), "version 2 message is not a list");
        assert_eq!(shape(b"le"), "message list is empty");
        assert_eq!(shape(b"li1ei2ee"), "message key is not a string");
        assert_eq!(shape(b"l4:noope"), "message has no value");
        assert_eq!(shape(b"l4:noop0:1:xe"), "message tag is not an integer");
        assert!(matches!(
            parse(b"l4:noop0:i5e"),
            Err(MessageError::Decode(_))
        ));
    }

    #[test]
    fn frames_round_trip() {
        let f = frame("noop", &Value::empty(), Some(3));
        assert_eq!(f, b"0000000Dl4:noop0:i3ee");
        let m = parse(&f[8..]).unwrap();
        assert_eq!((m.key, m.tag), (&b"noop"[..], Some(3)));
    }

    #[test]
    fn versions_are_read_and_agreed() {
        let ours = Version {
            min: 1,
            max: 2,
            label: "x".into(),
        };
        let v = Version::parse(&ours.frame()[8..]).unwrap();
        assert_eq!(v, ours);
        assert_eq!(v.agree(VERSIONS), Ok(2));
        let one = Version::parse(b"d7:versioni1ee").unwrap();
        assert_eq!(one.agree(VERSIONS), Ok(1));
        let three = Version::parse(b"d7:versioni3ee").unwrap();
        assert!(three.agree(VERSIONS).is_err());
        assert!(Version::parse(b"d7:versiond3:mini2eee").is_err());
        assert!(Version::parse(b"le").is_err());
    }
}
