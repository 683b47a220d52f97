//! JSON for the RPC: a bounded writer that appends a reply straight into
//! its buffer (a 10,000-torrent `torrent-get` is written without building
//! a tree first), and typed readers of a request's arguments whose errors
//! name the argument.

use std::fmt::Write as _;

use serde_json::{Map, Value};

/// Values (array elements, object members, scalars) a request may hold
/// at most, counted before it is parsed. A parsed value costs 32 bytes or
/// more, so a 48 MiB body of `[0,0,...]` would otherwise take about
/// 800 MB; a million values is ten times the largest real request (the
/// web interface naming 10,000 torrents by id and hash) and at most about
/// 50 MB parsed.
pub const MAX_JSON_VALUES: usize = 1 << 20;

/// Counts the values of a JSON text without parsing it: the structural
/// commas, colons and opening brackets outside strings, plus one. An
/// over-estimate for texts with empty containers, which is the safe side.
pub fn value_count(body: &[u8]) -> usize {
    let mut n = 1usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in body {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
        } else {
            match b {
                b'"' => in_string = true,
                b',' | b'[' | b'{' => n = n.saturating_add(1),
                _ => {}
            }
        }
    }
    n
}

/// A JSON text being written, with the separators kept right, and a limit
/// on its size that [`Out::over`] reports (the writer stops growing once
/// over it: what is written then is thrown away by the caller).
pub struct Out {
    buf: Vec<u8>,
    limit: usize,
    /// Per open container: something was written in it already.
    filled: Vec<bool>,
    /// A key was just written: its value needs no separator.
    after_key: bool,
}

impl Out {
    /// An empty text of at most `limit` bytes.
    pub fn new(limit: usize) -> Out {
        Out {
            buf: Vec::with_capacity(256),
            limit,
            filled: Vec::new(),
            after_key: false,
        }
    }

    /// Over the size limit: stop, the text will be thrown away.
    pub fn over(&self) -> bool {
        self.buf.len() > self.limit
    }

    /// Cuts the text back to `len` bytes, with `depth` containers open (to
    /// write `{}` over a failed method's partial arguments, just after
    /// their key).
    pub fn truncate(&mut self, len: usize, depth: usize) {
        self.buf.truncate(len);
        self.filled.truncate(depth);
        self.after_key = self.buf.last() == Some(&b':');
    }

    /// The text.
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    fn sep(&mut self) {
        if std::mem::take(&mut self.after_key) {
            return;
        }
        if let Some(filled) = self.filled.last_mut() {
            if *filled {
                self.buf.push(b',');
            }
            *filled = true;
        }
    }

    /// `{`.
    pub fn open_object(&mut self) {
        self.sep();
        self.buf.push(b'{');
        self.filled.push(false);
    }

    /// `}`.
    pub fn close_object(&mut self) {
        self.buf.push(b'}');
        self.filled.pop();
    }

    /// `[`.
    pub fn open_array(&mut self) {
        self.sep();
        self.buf.push(b'[');
        self.filled.push(false);
    }

    /// `]`.
    pub fn close_array(&mut self) {
        self.buf.push(b']');
        self.filled.pop();
    }

    /// A member's key; its value follows.
    pub fn key(&mut self, key: &str) {
        self.sep();
        self.escaped(key);
        self.buf.push(b':');
        self.after_key = true;
    }

    /// A string.
    pub fn str(&mut self, s: &str) {
        self.sep();
        self.escaped(s);
    }

    /// Bytes as a string: what is not UTF-8 is replaced (names and paths
    /// come from torrent files and may be in any encoding).
    pub fn bytes(&mut self, b: &[u8]) {
        self.str(&String::from_utf8_lossy(b));
    }

    /// An integer.
    pub fn int(&mut self, i: i64) {
        self.sep();
        let _ = write!(Fmt(&mut self.buf), "{i}");
    }

    /// An unsigned integer, as JSON has no bound (clients read up to
    /// 2^53 exactly, which byte counts stay below).
    pub fn uint(&mut self, u: u64) {
        self.sep();
        let _ = write!(Fmt(&mut self.buf), "{u}");
    }

    /// A real: whole numbers without decimals, others with four, as
    /// Transmission writes them; not-a-number and infinities (never meant)
    /// as 0.
    pub fn real(&mut self, f: f64) {
        self.sep();
        let f = if f.is_finite() { f } else { 0.0 };
        if (f - f.trunc()).abs() < 0.00001 {
            let _ = write!(Fmt(&mut self.buf), "{:.0}", f);
        } else {
            let _ = write!(Fmt(&mut self.buf), "{:.4}", f);
        }
    }

    /// `true` or `false`.
    pub fn bool(&mut self, b: bool) {
        self.sep();
        self.buf
            .extend_from_slice(if b { b"true" } else { b"false" });
    }

    /// `key: string`.
    pub fn str_member(&mut self, key: &str, value: &str) {
        self.key(key);
        self.str(value);
    }

    /// `key: integer`.
    pub fn int_member(&mut self, key: &str, value: i64) {
        self.key(key);
        self.int(value);
    }

    /// `key: unsigned integer`.
    pub fn uint_member(&mut self, key: &str, value: u64) {
        self.key(key);
        self.uint(value);
    }

    /// `key: boolean`.
    pub fn bool_member(&mut self, key: &str, value: bool) {
        self.key(key);
        self.bool(value);
    }

    /// `key: real`.
    pub fn real_member(&mut self, key: &str, value: f64) {
        self.key(key);
        self.real(value);
    }

    /// A JSON value as it is (a script's reply).
    pub fn value(&mut self, v: &Value) {
        self.sep();
        // Writing into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut self.buf, v);
    }

    fn escaped(&mut self, s: &str) {
        self.buf.push(b'"');
        let bytes = s.as_bytes();
        let mut start = 0;
        for (i, &b) in bytes.iter().enumerate() {
            let esc: &[u8] = match b {
                b'"' => b"\\\"",
                b'\\' => b"\\\\",
                b'\n' => b"\\n",
                b'\r' => b"\\r",
                b'\t' => b"\\t",
                0..=0x1f => b"",
                _ => continue,
            };
            self.buf.extend_from_slice(&bytes[start..i]);
            if esc.is_empty() {
                let _ = write!(Fmt(&mut self.buf), "\\u{:04x}", b);
            } else {
                self.buf.extend_from_slice(esc);
            }
            start = i + 1;
        }
        self.buf.extend_from_slice(&bytes[start..]);
        self.buf.push(b'"');
    }
}

/// `fmt::Write` into a byte buffer.
struct Fmt<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Fmt<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// A request's `arguments`, read with the type each argument must have:
/// a wrong type is an error naming the argument, never a default.
#[derive(Clone, Copy)]
pub struct Args<'a> {
    map: Option<&'a Map<String, Value>>,
}

/// Integers JSON texts may carry exactly as doubles (web clients write
/// every number as one).
const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_991.0;

impl<'a> Args<'a> {
    /// The arguments object (`None`: the request had none).
    pub fn new(map: Option<&'a Map<String, Value>>) -> Args<'a> {
        Args { map }
    }

    /// The raw value of `key`.
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.map?.get(key)
    }

    /// Whether `key` is present.
    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// A boolean: `true`/`false`, and as Transmission reads them, 0/1 and
    /// the strings "true"/"false" (the 3.00 web interface sends `paused: 0`).
    pub fn bool(&self, key: &str) -> Result<Option<bool>, String> {
        self.get(key)
            .map(|v| as_bool(v).ok_or_else(|| wrong(key, "a boolean")))
            .transpose()
    }

    /// An integer (a JSON number without a fractional part).
    pub fn int(&self, key: &str) -> Result<Option<i64>, String> {
        self.get(key)
            .map(|v| as_int(v).ok_or_else(|| wrong(key, "an integer")))
            .transpose()
    }

    /// A number.
    pub fn real(&self, key: &str) -> Result<Option<f64>, String> {
        self.get(key)
            .map(|v| v.as_f64().ok_or_else(|| wrong(key, "a number")))
            .transpose()
    }

    /// A string.
    pub fn str(&self, key: &str) -> Result<Option<&'a str>, String> {
        self.get(key)
            .map(|v| v.as_str().ok_or_else(|| wrong(key, "a string")))
            .transpose()
    }

    /// An array of at most `max` elements.
    pub fn array(&self, key: &str, max: usize) -> Result<Option<&'a [Value]>, String> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let list = v.as_array().ok_or_else(|| wrong(key, "an array"))?;
        if list.len() > max {
            return Err(format!(
                "argument \"{key}\" has {} elements, more than the {max} allowed",
                list.len()
            ));
        }
        Ok(Some(list))
    }

    /// An array of at most `max` strings.
    pub fn strings(&self, key: &str, max: usize) -> Result<Option<Vec<&'a str>>, String> {
        let Some(list) = self.array(key, max)? else {
            return Ok(None);
        };
        list.iter()
            .map(|v| v.as_str().ok_or_else(|| wrong(key, "an array of strings")))
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// An array of at most `max` integers.
    pub fn ints(&self, key: &str, max: usize) -> Result<Option<Vec<i64>>, String> {
        let Some(list) = self.array(key, max)? else {
            return Ok(None);
        };
        list.iter()
            .map(|v| as_int(v).ok_or_else(|| wrong(key, "an array of integers")))
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }
}

/// A JSON value as a boolean, Transmission's way.
pub fn as_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s == "true" => Some(true),
        Value::String(s) if s == "false" => Some(false),
        _ => match as_int(v) {
            Some(0) => Some(false),
            Some(1) => Some(true),
            _ => None,
        },
    }
}

/// A JSON number without a fractional part, within what it can carry
/// exactly.
pub fn as_int(v: &Value) -> Option<i64> {
    let n = v.as_number()?;
    if let Some(i) = n.as_i64() {
        return Some(i);
    }
    let f = n.as_f64()?;
    (f.fract() == 0.0 && f.abs() <= MAX_SAFE_INTEGER).then_some(f as i64)
}

fn wrong(key: &str, what: &str) -> String {
    format!("argument \"{key}\" must be {what}")
}
