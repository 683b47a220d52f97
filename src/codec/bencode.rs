//! Bencode values: a strict, order-tolerant reader for input and a
//! canonical writer for output, both checked against bendy in tests.
//!
//! Why a writer of our own: bendy's encoder allocates for every dict key
//! and every integer (its state tracker keeps each key as a `Vec`), which
//! made a 4 MB `get-status-all` reply cost most of its time in malloc and
//! free. This writer appends straight into the connection's output buffer
//! and allocates nothing (bar sorting a dict built out of order).
//!
//! Why a reader of our own: bendy's decoder refuses dictionaries whose keys
//! are not sorted (`UnsortedKeys`), yet the protocol text's own version
//! example sends `min` before `max`, and torrent files in the wild do the
//! same. Everything else is as strict as bendy: no leading zeros, no `-0`,
//! no empty integers, no trailing bytes, string keys only.

use std::fmt;

/// How deeply lists and dicts may nest in input before it is refused. It
/// bounds the reader's recursion, so a hostile `llll…` cannot overflow the
/// stack.
pub const MAX_DEPTH: usize = 64;

/// One bencode value. Dicts keep their pairs in input order, duplicates
/// included (a version 1 message runs duplicate keys in order); output
/// sorts them.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Value {
    /// `i…e`
    Int(i64),
    /// `N:…`, any bytes.
    Bytes(Vec<u8>),
    /// `l…e`
    List(Vec<Value>),
    /// `d…e`, pairs in the order they were read or built.
    Dict(Vec<(Key, Value)>),
}

/// A dict key: borrowed for the fixed keys replies are built from (no
/// allocation per field of a large reply), owned for keys read from input.
pub type Key = std::borrow::Cow<'static, [u8]>;

/// What can be a dict key: `&'static str` and byte literals borrow,
/// `String`/`Vec<u8>` move in.
pub trait IntoKey {
    /// The key.
    fn into_key(self) -> Key;
}

impl IntoKey for &'static str {
    fn into_key(self) -> Key {
        Key::Borrowed(self.as_bytes())
    }
}

impl IntoKey for &'static [u8] {
    fn into_key(self) -> Key {
        Key::Borrowed(self)
    }
}

impl IntoKey for String {
    fn into_key(self) -> Key {
        Key::Owned(self.into_bytes())
    }
}

impl IntoKey for Vec<u8> {
    fn into_key(self) -> Key {
        Key::Owned(self)
    }
}

impl Value {
    /// A byte-string value from text.
    pub fn str(s: &str) -> Value {
        Value::Bytes(s.as_bytes().to_vec())
    }

    /// The empty string, the value of `succeeded` and friends.
    pub fn empty() -> Value {
        Value::Bytes(Vec::new())
    }

    /// A dict built from pairs with text keys.
    pub fn dict<I, K>(pairs: I) -> Value
    where
        I: IntoIterator<Item = (K, Value)>,
        K: IntoKey,
    {
        Value::Dict(pairs.into_iter().map(|(k, v)| (k.into_key(), v)).collect())
    }

    /// The integer, if this is one.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The bytes, if this is a string.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// The string, if this is a string holding UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        self.as_bytes().and_then(|b| std::str::from_utf8(b).ok())
    }

    /// The elements, if this is a list.
    pub fn as_list(&self) -> Option<&[Value]> {
        match self {
            Value::List(l) => Some(l),
            _ => None,
        }
    }

    /// The pairs, if this is a dict.
    pub fn as_dict(&self) -> Option<&[(Key, Value)]> {
        match self {
            Value::Dict(d) => Some(d),
            _ => None,
        }
    }

    /// The first value stored under `key`, if this is a dict that has it.
    /// The first, as the original daemon's lookup did, when a key repeats.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.as_dict()?
            .iter()
            .find(|(k, _)| k.as_ref() == key.as_bytes())
            .map(|(_, v)| v)
    }

    /// The canonical bencoding of this value (keys sorted as raw bytes).
    pub fn to_bencode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::new();
        self.write_to(&mut out)?;
        Ok(out)
    }

    /// Appends the canonical bencoding of this value to `out`. On error
    /// `out` may hold part of the value; callers truncate.
    pub fn write_to(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        self.write_at(out, 0)
    }

    fn write_at(&self, out: &mut Vec<u8>, depth: usize) -> Result<(), EncodeError> {
        match self {
            Value::Int(i) => write_int(out, *i),
            Value::Bytes(b) => write_bytes(out, b),
            Value::List(items) => {
                check_depth(depth)?;
                out.push(b'l');
                for item in items {
                    item.write_at(out, depth + 1)?;
                }
                out.push(b'e');
            }
            Value::Dict(pairs) => {
                check_depth(depth)?;
                out.push(b'd');
                // Handlers build most dicts in order already: checking is
                // cheaper than sorting, and sorting references keeps the
                // value as built.
                if pairs.windows(2).all(|w| w[0].0 < w[1].0) {
                    for (k, v) in pairs {
                        write_bytes(out, k);
                        v.write_at(out, depth + 1)?;
                    }
                } else {
                    let mut sorted: Vec<&(Key, Value)> = pairs.iter().collect();
                    sorted.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                    if let Some(w) = sorted.windows(2).find(|w| w[0].0 == w[1].0) {
                        return Err(EncodeError::RepeatedKey(
                            String::from_utf8_lossy(&w[0].0).into_owned(),
                        ));
                    }
                    for (k, v) in sorted {
                        write_bytes(out, k);
                        v.write_at(out, depth + 1)?;
                    }
                }
                out.push(b'e');
            }
        }
        Ok(())
    }
}

/// Output nests at most this deep; deeper means a bug building a reply.
const MAX_OUTPUT_DEPTH: usize = MAX_DEPTH * 4;

fn check_depth(depth: usize) -> Result<(), EncodeError> {
    if depth >= MAX_OUTPUT_DEPTH {
        return Err(EncodeError::TooDeep);
    }
    Ok(())
}

/// Appends `n` in decimal without allocating.
fn write_decimal(out: &mut Vec<u8>, n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let mut n = n;
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

fn write_int(out: &mut Vec<u8>, i: i64) {
    out.push(b'i');
    if i < 0 {
        out.push(b'-');
    }
    write_decimal(out, i.unsigned_abs());
    out.push(b'e');
}

fn write_bytes(out: &mut Vec<u8>, b: &[u8]) {
    write_decimal(out, b.len() as u64);
    out.push(b':');
    out.extend_from_slice(b);
}

/// Appends the canonical bencoding of a version 2 message `[key, value]`
/// or `[key, value, tag]`, without building the outer list as a [`Value`].
/// On error `out` is left as it was.
pub fn write_message(
    out: &mut Vec<u8>,
    key: &[u8],
    value: &Value,
    tag: Option<i64>,
) -> Result<(), EncodeError> {
    let start = out.len();
    out.push(b'l');
    write_bytes(out, key);
    if let Err(e) = value.write_at(out, 1) {
        out.truncate(start);
        return Err(e);
    }
    if let Some(t) = tag {
        write_int(out, t);
    }
    out.push(b'e');
    Ok(())
}

/// The canonical bencoding of a version 2 message `[key, value]` or
/// `[key, value, tag]`.
pub fn encode_message(key: &[u8], value: &Value, tag: Option<i64>) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::new();
    write_message(&mut out, key, value, tag)?;
    Ok(out)
}

/// Appends one whole frame holding the message `[key, value(, tag)]`,
/// encoded in place (no intermediate buffer). On error `out` is left as
/// it was; a payload over the protocol's limit is an error too.
pub fn write_message_frame(
    out: &mut Vec<u8>,
    key: &[u8],
    value: &Value,
    tag: Option<i64>,
) -> Result<(), EncodeError> {
    use super::frame::{HEADER_LEN, PROTOCOL_MAX};
    let start = out.len();
    out.extend_from_slice(&[b'0'; HEADER_LEN]);
    write_message(out, key, value, tag).inspect_err(|_| out.truncate(start))?;
    let len = out.len() - start - HEADER_LEN;
    if len > PROTOCOL_MAX {
        out.truncate(start);
        return Err(EncodeError::TooLarge(len));
    }
    let mut header = Vec::with_capacity(HEADER_LEN);
    super::frame::write_header(&mut header, len);
    out[start..start + HEADER_LEN].copy_from_slice(&header);
    Ok(())
}

impl From<i64> for Value {
    fn from(i: i64) -> Value {
        Value::Int(i)
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::str(s)
    }
}

impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::Bytes(s.into_bytes())
    }
}

impl From<Vec<Value>> for Value {
    fn from(l: Vec<Value>) -> Value {
        Value::List(l)
    }
}

/// Shows values the way the protocol text does: strings quoted, lists in
/// parentheses, dicts in braces. Used in log lines and error messages.
impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Int(i) => write!(f, "{i}"),
            Value::Bytes(b) => write!(f, "{:?}", String::from_utf8_lossy(b)),
            Value::List(l) => {
                f.write_str("(")?;
                for (n, v) in l.iter().enumerate() {
                    if n > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{v:?}")?;
                }
                f.write_str(")")
            }
            Value::Dict(d) => {
                f.write_str("{")?;
                for (n, (k, v)) in d.iter().enumerate() {
                    if n > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{:?}: {v:?}", String::from_utf8_lossy(k))?;
                }
                f.write_str("}")
            }
        }
    }
}

/// A value that cannot be sent: a dict built with a repeated key, nesting
/// deeper than output allows, or a frame over the protocol's limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncodeError {
    /// A dict holds this key twice.
    RepeatedKey(String),
    /// Nesting deeper than output allows.
    TooDeep,
    /// A frame of this many bytes, over the protocol's limit.
    TooLarge(usize),
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("cannot encode reply: ")?;
        match self {
            EncodeError::RepeatedKey(k) => write!(f, "dict key {k:?} repeats"),
            EncodeError::TooDeep => write!(f, "nesting deeper than {MAX_OUTPUT_DEPTH}"),
            EncodeError::TooLarge(n) => {
                write!(f, "reply of {n} bytes exceeds the protocol's limit")
            }
        }
    }
}

impl std::error::Error for EncodeError {}

/// Why input is not bencode, and the byte offset where that was seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// Offset of the offending byte from the start of the input.
    pub offset: usize,
    /// What was wrong there.
    pub kind: DecodeErrorKind,
}

/// The ways input can fail to be strict bencode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeErrorKind {
    /// The input ended inside a value.
    UnexpectedEnd,
    /// A byte that cannot start or continue a value here.
    UnexpectedByte(u8),
    /// `ie`, `i-e`, `i-0e`, or a leading zero.
    BadInteger,
    /// An integer outside the 64-bit signed range.
    IntegerOverflow,
    /// A string length with a leading zero, or longer than the input.
    BadLength,
    /// A dict key that is not a string.
    NonStringKey,
    /// Lists and dicts nested deeper than [`MAX_DEPTH`].
    TooDeep,
    /// Bytes left over after one complete value.
    TrailingBytes,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            DecodeErrorKind::UnexpectedEnd => "input ends inside a value".to_string(),
            DecodeErrorKind::UnexpectedByte(b) => {
                format!(
                    "unexpected byte {:?}",
                    char::from(b).escape_default().to_string()
                )
            }
            DecodeErrorKind::BadInteger => "malformed integer".to_string(),
            DecodeErrorKind::IntegerOverflow => "integer out of range".to_string(),
            DecodeErrorKind::BadLength => "malformed string length".to_string(),
            DecodeErrorKind::NonStringKey => "dict key is not a string".to_string(),
            DecodeErrorKind::TooDeep => format!("nested deeper than {MAX_DEPTH}"),
            DecodeErrorKind::TrailingBytes => "trailing bytes after the value".to_string(),
        };
        write!(f, "not bencode at byte {}: {what}", self.offset)
    }
}

impl std::error::Error for DecodeError {}

/// Decodes exactly one value that fills `input`.
pub fn decode(input: &[u8]) -> Result<Value, DecodeError> {
    let mut reader = Reader::new(input);
    let value = reader.value()?;
    reader.finish()?;
    Ok(value)
}

/// A cursor over bencoded input. Besides whole values it can walk a list
/// one element at a time, which the session uses for version 2 messages so
/// that the outer list is never built.
pub struct Reader<'a> {
    input: &'a [u8],
    pos: usize,
    depth: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `input`.
    pub fn new(input: &'a [u8]) -> Self {
        Reader {
            input,
            pos: 0,
            depth: 0,
        }
    }

    /// The offset of the next unread byte.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// The next byte, without consuming it.
    pub fn peek(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    fn err(&self, kind: DecodeErrorKind) -> DecodeError {
        DecodeError {
            offset: self.pos,
            kind,
        }
    }

    fn unexpected(&self) -> DecodeError {
        match self.peek() {
            Some(b) => self.err(DecodeErrorKind::UnexpectedByte(b)),
            None => self.err(DecodeErrorKind::UnexpectedEnd),
        }
    }

    /// Succeeds only if every byte has been consumed.
    pub fn finish(&self) -> Result<(), DecodeError> {
        if self.pos == self.input.len() {
            Ok(())
        } else {
            Err(self.err(DecodeErrorKind::TrailingBytes))
        }
    }

    /// Consumes the `l` that opens a list.
    pub fn begin_list(&mut self) -> Result<(), DecodeError> {
        if self.peek() == Some(b'l') {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.unexpected())
        }
    }

    /// Consumes the `d` that opens a dict.
    pub fn begin_dict(&mut self) -> Result<(), DecodeError> {
        if self.peek() == Some(b'd') {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.unexpected())
        }
    }

    /// Reads a dict key: a string, or [`DecodeErrorKind::NonStringKey`].
    pub fn key(&mut self) -> Result<&'a [u8], DecodeError> {
        if matches!(self.peek(), Some(b'0'..=b'9')) {
            self.bytes()
        } else {
            Err(self.err(DecodeErrorKind::NonStringKey))
        }
    }

    /// Consumes the `e` closing a list or dict if it is next, and says so.
    pub fn at_end(&mut self) -> Result<bool, DecodeError> {
        match self.peek() {
            Some(b'e') => {
                self.pos += 1;
                Ok(true)
            }
            Some(_) => Ok(false),
            None => Err(self.err(DecodeErrorKind::UnexpectedEnd)),
        }
    }

    /// Reads one string without copying it.
    pub fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let start = self.pos;
        let len = self.length()?;
        let end = self
            .pos
            .checked_add(len)
            .filter(|end| *end <= self.input.len())
            .ok_or(DecodeError {
                offset: start,
                kind: DecodeErrorKind::BadLength,
            })?;
        let s = &self.input[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// The decimal length before a string's `:`, consumed with the colon.
    fn length(&mut self) -> Result<usize, DecodeError> {
        let start = self.pos;
        let mut len: usize = 0;
        while let Some(b @ b'0'..=b'9') = self.peek() {
            if self.pos > start && len == 0 {
                return Err(self.err(DecodeErrorKind::BadLength)); // leading zero
            }
            len = len
                .checked_mul(10)
                .and_then(|l| l.checked_add(usize::from(b - b'0')))
                .ok_or(self.err(DecodeErrorKind::BadLength))?;
            self.pos += 1;
        }
        if self.pos == start {
            return Err(self.unexpected());
        }
        if self.peek() != Some(b':') {
            return Err(self.unexpected());
        }
        self.pos += 1;
        Ok(len)
    }

    fn int(&mut self) -> Result<i64, DecodeError> {
        let start = self.pos;
        self.pos += 1; // 'i'
        let negative = self.peek() == Some(b'-');
        if negative {
            self.pos += 1;
        }
        let digits_start = self.pos;
        // Accumulate negatively so that i64::MIN is representable.
        let mut n: i64 = 0;
        while let Some(b @ b'0'..=b'9') = self.peek() {
            n = n
                .checked_mul(10)
                .and_then(|n| n.checked_sub(i64::from(b - b'0')))
                .ok_or(DecodeError {
                    offset: start,
                    kind: DecodeErrorKind::IntegerOverflow,
                })?;
            self.pos += 1;
        }
        let digits = &self.input[digits_start..self.pos];
        let bad = digits.is_empty()
            || (digits.len() > 1 && digits[0] == b'0')
            || (negative && digits == b"0");
        if self.peek() != Some(b'e') {
            return Err(self.unexpected());
        }
        if bad {
            return Err(DecodeError {
                offset: start,
                kind: DecodeErrorKind::BadInteger,
            });
        }
        self.pos += 1;
        if negative {
            Ok(n)
        } else {
            n.checked_neg().ok_or(DecodeError {
                offset: start,
                kind: DecodeErrorKind::IntegerOverflow,
            })
        }
    }

    fn enter(&mut self) -> Result<(), DecodeError> {
        if self.depth >= MAX_DEPTH {
            return Err(self.err(DecodeErrorKind::TooDeep));
        }
        self.depth += 1;
        self.pos += 1;
        Ok(())
    }

    /// Reads one whole value.
    pub fn value(&mut self) -> Result<Value, DecodeError> {
        match self.peek() {
            Some(b'i') => self.int().map(Value::Int),
            Some(b'0'..=b'9') => self.bytes().map(|b| Value::Bytes(b.to_vec())),
            Some(b'l') => {
                self.enter()?;
                let mut items = Vec::new();
                while !self.at_end()? {
                    items.push(self.value()?);
                }
                self.depth -= 1;
                Ok(Value::List(items))
            }
            Some(b'd') => {
                self.enter()?;
                let mut pairs = Vec::new();
                while !self.at_end()? {
                    let key = Key::Owned(self.key()?.to_vec());
                    let value = self.value()?;
                    pairs.push((key, value));
                }
                self.depth -= 1;
                Ok(Value::Dict(pairs))
            }
            _ => Err(self.unexpected()),
        }
    }

    /// Skips one whole value, checking it as strictly as [`Reader::value`]
    /// but building nothing. Returns the bytes it spanned.
    pub fn skip(&mut self) -> Result<&'a [u8], DecodeError> {
        let start = self.pos;
        match self.peek() {
            Some(b'i') => {
                self.int()?;
            }
            Some(b'0'..=b'9') => {
                self.bytes()?;
            }
            Some(b'l') => {
                self.enter()?;
                while !self.at_end()? {
                    self.skip()?;
                }
                self.depth -= 1;
            }
            Some(b'd') => {
                self.enter()?;
                while !self.at_end()? {
                    self.key()?;
                    self.skip()?;
                }
                self.depth -= 1;
            }
            _ => return Err(self.unexpected()),
        }
        Ok(&self.input[start..self.pos])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// bendy's encoding of `v`: the oracle our writer is checked against.
    fn bendy_encode(v: &Value) -> Vec<u8> {
        use bendy::encoding::{Encoder, SingleItemEncoder};
        fn emit(v: &Value, e: SingleItemEncoder) -> Result<(), bendy::encoding::Error> {
            match v {
                Value::Int(i) => e.emit_int(*i),
                Value::Bytes(b) => e.emit_bytes(b),
                Value::List(items) => e.emit_list(|list| {
                    for item in items {
                        list.emit_with(|e| emit(item, e))?;
                    }
                    Ok(())
                }),
                Value::Dict(pairs) => e.emit_unsorted_dict(|dict| {
                    for (k, v) in pairs {
                        dict.emit_pair_with(k, |e| emit(v, e))?;
                    }
                    Ok(())
                }),
            }
        }
        let mut enc = Encoder::new().with_max_depth(1000);
        enc.emit_with(|e| emit(v, e)).unwrap();
        enc.get_output().unwrap()
    }

    /// Deterministic pseudo-random values with unique keys per dict.
    fn arbitrary(seed: &mut u64, depth: usize) -> Value {
        let mut next = || {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            *seed
        };
        let pick = next() % if depth > 3 { 2 } else { 4 };
        match pick {
            0 => Value::Int(match next() % 4 {
                0 => i64::MIN,
                1 => i64::MAX,
                2 => 0,
                _ => next() as i64 >> (next() % 64),
            }),
            1 => Value::Bytes((0..next() % 12).map(|_| next() as u8).collect()),
            2 => Value::List(
                (0..next() % 5)
                    .map(|_| arbitrary(seed, depth + 1))
                    .collect(),
            ),
            _ => {
                let n = next() % 6;
                let mut keys: Vec<Vec<u8>> = (0..n)
                    .map(|_| {
                        (0..next() % 4)
                            .map(|_| b"ab\x00\xff"[next() as usize % 4])
                            .collect()
                    })
                    .collect();
                keys.sort();
                keys.dedup();
                // Out of order on purpose, half the time.
                if next() % 2 == 0 {
                    keys.reverse();
                }
                Value::Dict(
                    keys.into_iter()
                        .map(|k| (k.into(), arbitrary(seed, depth + 1)))
                        .collect(),
                )
            }
        }
    }

    #[test]
    fn the_writer_agrees_with_bendy_and_the_reader_reads_it_back() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..5000 {
            let v = arbitrary(&mut seed, 0);
            let ours = v.to_bencode().unwrap();
            assert_eq!(ours, bendy_encode(&v), "{v:?}");
            let back = decode(&ours).unwrap();
            assert_eq!(back.to_bencode().unwrap(), ours);
            let mut framed = Vec::new();
            write_message_frame(&mut framed, b"k", &v, Some(3)).unwrap();
            assert_eq!(
                &framed[8..],
                &encode_message(b"k", &v, Some(3)).unwrap()[..]
            );
        }
    }

    #[test]
    fn a_repeated_key_or_deep_nesting_is_refused_and_output_left_intact() {
        let dup = Value::Dict(vec![
            (b"b".to_vec().into(), 1.into()),
            (b"a".to_vec().into(), 2.into()),
            (b"b".to_vec().into(), 3.into()),
        ]);
        let mut out = b"keep".to_vec();
        assert!(write_message_frame(&mut out, b"x", &dup, None).is_err());
        assert_eq!(out, b"keep");
        let mut deep = Value::Int(1);
        for _ in 0..MAX_OUTPUT_DEPTH + 1 {
            deep = Value::List(vec![deep]);
        }
        assert!(deep.to_bencode().is_err());
        assert!(write_message(&mut out, b"x", &deep, None).is_err());
        assert_eq!(out, b"keep");
    }

    fn ok(input: &str) -> Value {
        decode(input.as_bytes()).unwrap_or_else(|e| panic!("{input:?}: {e}"))
    }

    fn err(input: &[u8]) -> DecodeErrorKind {
        match decode(input) {
            Ok(v) => panic!("{:?} decoded to {v:?}", String::from_utf8_lossy(input)),
            Err(e) => e.kind,
        }
    }

    #[test]
    fn decodes_every_kind() {
        assert_eq!(ok("i0e"), Value::Int(0));
        assert_eq!(ok("i-42e"), Value::Int(-42));
        assert_eq!(ok("i9223372036854775807e"), Value::Int(i64::MAX));
        assert_eq!(ok("i-9223372036854775808e"), Value::Int(i64::MIN));
        assert_eq!(ok("0:"), Value::empty());
        assert_eq!(ok("4:spam"), Value::str("spam"));
        assert_eq!(
            ok("l4:spami1ee"),
            Value::List(vec![Value::str("spam"), Value::Int(1)])
        );
        assert_eq!(ok("le"), Value::List(vec![]));
        assert_eq!(ok("de"), Value::Dict(vec![]));
    }

    #[test]
    fn dict_keys_in_any_order_and_duplicates_kept() {
        let v = ok("d3:mini1e3:maxi2e3:mini3ee");
        let pairs = v.as_dict().unwrap();
        let keys: Vec<&[u8]> = pairs.iter().map(|(k, _)| k.as_ref()).collect();
        assert_eq!(keys, vec![&b"min"[..], b"max", b"min"]);
        assert_eq!(v.get("min"), Some(&Value::Int(1)), "first occurrence wins");
        assert_eq!(v.get("max"), Some(&Value::Int(2)));
        assert_eq!(v.get("label"), None);
    }

    #[test]
    fn refuses_malformed_integers() {
        assert_eq!(err(b"ie"), DecodeErrorKind::BadInteger);
        assert_eq!(err(b"i-e"), DecodeErrorKind::BadInteger);
        assert_eq!(err(b"i-0e"), DecodeErrorKind::BadInteger);
        assert_eq!(err(b"i05e"), DecodeErrorKind::BadInteger);
        assert_eq!(err(b"i-05e"), DecodeErrorKind::BadInteger);
        assert_eq!(err(b"i+5e"), DecodeErrorKind::UnexpectedByte(b'+'));
        assert_eq!(err(b"i5"), DecodeErrorKind::UnexpectedEnd);
        assert_eq!(err(b"i5xe"), DecodeErrorKind::UnexpectedByte(b'x'));
        assert_eq!(
            err(b"i9223372036854775808e"),
            DecodeErrorKind::IntegerOverflow
        );
        assert_eq!(
            err(b"i-9223372036854775809e"),
            DecodeErrorKind::IntegerOverflow
        );
    }

    #[test]
    fn refuses_malformed_strings() {
        assert_eq!(err(b"05:hello"), DecodeErrorKind::BadLength);
        assert_eq!(err(b"5:hell"), DecodeErrorKind::BadLength);
        assert_eq!(err(b"5hello"), DecodeErrorKind::UnexpectedByte(b'h'));
        assert_eq!(err(b"5"), DecodeErrorKind::UnexpectedEnd);
        assert_eq!(
            err(b"99999999999999999999999:x"),
            DecodeErrorKind::BadLength
        );
    }

    #[test]
    fn refuses_bad_structure() {
        assert_eq!(err(b""), DecodeErrorKind::UnexpectedEnd);
        assert_eq!(err(b"l4:spam"), DecodeErrorKind::UnexpectedEnd);
        assert_eq!(err(b"di1e0:e"), DecodeErrorKind::NonStringKey);
        assert_eq!(err(b"d1:ae"), DecodeErrorKind::UnexpectedByte(b'e'));
        assert_eq!(err(b"i1ei2e"), DecodeErrorKind::TrailingBytes);
        assert_eq!(err(b"e"), DecodeErrorKind::UnexpectedByte(b'e'));
        assert_eq!(err(b"x"), DecodeErrorKind::UnexpectedByte(b'x'));
    }

    #[test]
    fn bounds_nesting_instead_of_overflowing_the_stack() {
        let deep = vec![b'l'; 1_000_000];
        assert_eq!(err(&deep), DecodeErrorKind::TooDeep);
        let mut ok_depth = vec![b'l'; MAX_DEPTH];
        ok_depth.extend(vec![b'e'; MAX_DEPTH]);
        assert!(decode(&ok_depth).is_ok());
        let mut reader = Reader::new(&deep);
        assert_eq!(reader.skip().unwrap_err().kind, DecodeErrorKind::TooDeep);
    }

    #[test]
    fn error_offsets_point_at_the_fault() {
        let e = decode(b"l4:spami05ee").unwrap_err();
        assert_eq!(e.offset, 7);
        assert_eq!(e.to_string(), "not bencode at byte 7: malformed integer");
    }

    #[test]
    fn encodes_canonically_with_sorted_keys() {
        let v = Value::dict([
            ("min", Value::Int(1)),
            ("max", Value::Int(2)),
            ("label", Value::str("tripcd")),
        ]);
        assert_eq!(
            v.to_bencode().unwrap(),
            b"d5:label6:tripcd3:maxi2e3:mini1ee".to_vec()
        );
        // Raw byte order, not text order: "Z" (0x5a) sorts before "a".
        let v = Value::dict([("a", Value::Int(1)), ("Z", Value::Int(2))]);
        assert_eq!(v.to_bencode().unwrap(), b"d1:Zi2e1:ai1ee".to_vec());
    }

    #[test]
    fn encoding_refuses_duplicate_keys() {
        let v = Value::dict([("a", Value::Int(1)), ("a", Value::Int(2))]);
        assert!(v.to_bencode().is_err());
    }

    #[test]
    fn skip_spans_exactly_one_value() {
        let mut r = Reader::new(b"d1:ali1ei2eee4:tail");
        assert_eq!(r.skip().unwrap(), b"d1:ali1ei2eee");
        assert_eq!(r.bytes().unwrap(), b"tail");
        r.finish().unwrap();
    }

    #[test]
    fn canonical_input_round_trips() {
        for s in [
            "i0e",
            "i-1e",
            "le",
            "de",
            "d1:ai1e1:bl1:cee",
            "l0:d0:0:ee",
            "d7:versiond5:label12:tripcd 0.1.03:maxi2e3:mini1eee",
        ] {
            assert_eq!(ok(s).to_bencode().unwrap(), s.as_bytes(), "{s}");
        }
    }
}
