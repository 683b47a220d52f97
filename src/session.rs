//! One client connection's protocol state, without any I/O.
//!
//! Bytes go in with [`Session::receive`]; the bytes to send come out of
//! [`Session::output`]. In between: framing, the version handshake,
//! version 1 and version 2 messages, tags, and the reply rules of
//! PROTOCOL.md 3. Replies to changes that must be durable first are held
//! (with everything after them, to keep request order) until the reactor
//! reports the commit with [`Session::release`].

use std::sync::OnceLock;

use log::{debug, error, warn};

use crate::codec::bencode::write_message_frame;
use crate::codec::{decode, split_frame, write_frame, DecodeError, FrameError, Reader, Value};
use crate::commands::{Reply, Service};

/// Lowest and highest protocol versions spoken.
pub const VERSIONS: (i64, i64) = (1, 2);

/// Output queued beyond this stops the processing of further input until
/// the client reads (a pipelining client is slowed down, not dropped).
pub const OUTPUT_SOFT_LIMIT: usize = 256 << 10;

/// The version message sent on accept.
pub fn greeting() -> &'static [u8] {
    static GREETING: OnceLock<Vec<u8>> = OnceLock::new();
    GREETING.get_or_init(|| {
        let version = Value::dict([
            (
                "label",
                Value::from(format!("tripcd {}", env!("CARGO_PKG_VERSION"))),
            ),
            ("max", Value::Int(VERSIONS.1)),
            ("min", Value::Int(VERSIONS.0)),
        ]);
        let payload = Value::dict([("version", version)])
            .to_bencode()
            .unwrap_or_default();
        let mut out = Vec::new();
        write_frame(&mut out, &payload);
        out
    })
}

/// Why a connection must be closed (PROTOCOL.md 1, "protocol error").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    /// The byte stream is not frames.
    Frame(FrameError),
    /// A payload is not strict bencode.
    Decode(DecodeError),
    /// The handshake failed.
    Handshake(String),
    /// A message has the wrong shape for the connection's version.
    Shape(&'static str),
}

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProtocolError::Frame(e) => e.fmt(f),
            ProtocolError::Decode(e) => e.fmt(f),
            ProtocolError::Handshake(m) => write!(f, "handshake: {m}"),
            ProtocolError::Shape(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for ProtocolError {}

impl From<FrameError> for ProtocolError {
    fn from(e: FrameError) -> Self {
        ProtocolError::Frame(e)
    }
}

impl From<DecodeError> for ProtocolError {
    fn from(e: DecodeError) -> Self {
        ProtocolError::Decode(e)
    }
}

/// Output waiting for a commit.
enum Held {
    /// Encoded frames.
    Frames(Vec<u8>),
    /// A reply to send once the change is durable.
    Pending { reply: Reply, tag: Option<i64> },
}

/// One connection's protocol state and buffers.
pub struct Session {
    id: u64,
    max_message: usize,
    version: Option<u8>,
    input: Vec<u8>,
    output: Vec<u8>,
    sent: usize,
    held: Vec<Held>,
    /// Bytes (roughly) in `held`, counted as they are added.
    held_bytes: usize,
    failed: bool,
}

impl Session {
    /// A new connection `id` (for log lines) accepting payloads up to
    /// `max_message` bytes. Its output already holds the version message.
    pub fn new(id: u64, max_message: usize) -> Session {
        Session {
            id,
            max_message,
            version: None,
            input: Vec::new(),
            output: greeting().to_vec(),
            sent: 0,
            held: Vec::new(),
            held_bytes: 0,
            failed: false,
        }
    }

    /// The protocol version agreed, once the handshake is done.
    pub fn version(&self) -> Option<u8> {
        self.version
    }

    /// Takes bytes from the client and runs every complete message, until
    /// the output passes [`OUTPUT_SOFT_LIMIT`] (the rest waits in the input
    /// buffer for [`Session::resume`]) or a protocol error ends the
    /// connection. After an error, further input is ignored.
    pub fn receive(&mut self, bytes: &[u8], svc: &mut Service) -> Result<(), ProtocolError> {
        if self.failed {
            return Ok(());
        }
        if self.input.is_empty() {
            // The common case: parse straight from the caller's buffer and
            // keep only an incomplete tail.
            let used = self.run_frames(bytes, svc)?;
            self.input.extend_from_slice(&bytes[used..]);
        } else {
            self.input.extend_from_slice(bytes);
            self.resume(svc)?;
        }
        Ok(())
    }

    /// Runs messages already buffered (after output drained).
    pub fn resume(&mut self, svc: &mut Service) -> Result<(), ProtocolError> {
        if self.failed || self.input.is_empty() {
            return Ok(());
        }
        let input = std::mem::take(&mut self.input);
        let result = self.run_frames(&input, svc);
        let used = match &result {
            Ok(used) => *used,
            Err(_) => input.len(),
        };
        // One compaction per batch, not per frame.
        let mut input = input;
        input.drain(..used);
        if input.is_empty() && input.capacity() > 64 << 10 {
            input = Vec::new(); // give back a large frame's memory
        }
        self.input = input;
        result.map(|_| ())
    }

    /// Whether complete input waits to be run.
    pub fn has_pending_input(&self) -> bool {
        !self.failed
            && matches!(
                split_frame(&self.input, self.max_message),
                Ok(Some(_)) | Err(_)
            )
    }

    /// Bytes buffered from the client and not yet run.
    pub fn buffered_input(&self) -> usize {
        self.input.len()
    }

    fn run_frames(&mut self, buf: &[u8], svc: &mut Service) -> Result<usize, ProtocolError> {
        let mut used = 0;
        while !self.is_backpressured() && !svc.control.quit {
            let rest = &buf[used..];
            let frame = split_frame(rest, self.max_message).map_err(|e| self.fail(e.into()))?;
            let Some(range) = frame else { break };
            let payload = &rest[range.clone()];
            log::trace!(
                "client {}: <- {}",
                self.id,
                String::from_utf8_lossy(payload)
            );
            self.handle_payload(payload, svc)
                .map_err(|e| self.fail(e))?;
            used += range.end;
        }
        Ok(used)
    }

    fn fail(&mut self, e: ProtocolError) -> ProtocolError {
        self.failed = true;
        e
    }

    fn handle_payload(&mut self, payload: &[u8], svc: &mut Service) -> Result<(), ProtocolError> {
        match self.version {
            None => self.handshake(payload),
            Some(1) => self.run_v1(payload, svc),
            Some(_) => self.run_v2(payload, svc),
        }
    }

    fn handshake(&mut self, payload: &[u8]) -> Result<(), ProtocolError> {
        let hs = |m: &str| ProtocolError::Handshake(m.to_string());
        let msg = decode(payload)?;
        if msg.as_dict().is_none() {
            return Err(hs("first message is not a version dict"));
        }
        let v = msg
            .get("version")
            .ok_or_else(|| hs("first message has no version"))?;
        let (min, max) = match v {
            Value::Int(n) => (*n, *n),
            Value::Dict(_) => match (v.get("min"), v.get("max")) {
                (Some(Value::Int(min)), Some(Value::Int(max))) => (*min, *max),
                _ => return Err(hs("version needs integer min and max")),
            },
            _ => return Err(hs("version is neither an integer nor a dict")),
        };
        if min < 1 || max < min {
            return Err(ProtocolError::Handshake(format!(
                "bad version range {min}..{max}"
            )));
        }
        if min > VERSIONS.1 || max < VERSIONS.0 {
            return Err(ProtocolError::Handshake(format!(
                "no common version: client {min}..{max}, server {}..{}",
                VERSIONS.0, VERSIONS.1
            )));
        }
        let version = max.min(VERSIONS.1) as u8;
        debug!("client {}: speaking version {version}", self.id);
        self.version = Some(version);
        Ok(())
    }

    fn run_v1(&mut self, payload: &[u8], svc: &mut Service) -> Result<(), ProtocolError> {
        let msg = decode(payload)?;
        let Value::Dict(pairs) = msg else {
            return Err(ProtocolError::Shape("version 1 message is not a dict"));
        };
        for (key, value) in &pairs {
            if svc.control.quit {
                break;
            }
            // Version 1 has no replies at all; failures are only logged.
            match svc.dispatch(1, key, value, false) {
                Reply::Failed(why) => self.log_untagged_failure(key, &why),
                Reply::Durable(inner) => {
                    if let Reply::Failed(why) = *inner {
                        self.log_untagged_failure(key, &why);
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn run_v2(&mut self, payload: &[u8], svc: &mut Service) -> Result<(), ProtocolError> {
        let mut r = Reader::new(payload);
        if r.peek() != Some(b'l') {
            // Check it is bencode at all, for a precise log line.
            r.skip()?;
            r.finish()?;
            return Err(ProtocolError::Shape("version 2 message is not a list"));
        }
        r.begin_list()?;
        if r.at_end()? {
            return Err(ProtocolError::Shape("message list is empty"));
        }
        let key = match r.peek() {
            Some(b'0'..=b'9') => r.bytes()?,
            _ => {
                r.skip()?;
                return Err(ProtocolError::Shape("message key is not a string"));
            }
        };
        if r.at_end()? {
            return Err(ProtocolError::Shape("message has no value"));
        }
        let value = r.value()?;
        let mut tag = None;
        // A list that stops right after its value, without its closing
        // `e`, is read as an untagged [key, value]: the vector
        // `noop-untagged` (cases.jsonl) requires it, and vectors win over
        // the text. Anything else unterminated is still an error.
        if r.peek().is_none() {
            let reply = svc.dispatch(2, key, &value, false);
            self.emit(key, reply, None);
            return Ok(());
        }
        if !r.at_end()? {
            match r.value()? {
                Value::Int(t) => tag = Some(t),
                _ => return Err(ProtocolError::Shape("message tag is not an integer")),
            }
            // Elements after the tag are ignored, but must be bencode.
            while !r.at_end()? {
                r.skip()?;
            }
        }
        r.finish()?;
        // A tag <= 0 counts as no tag (as the original did).
        let tag = tag.filter(|t| *t > 0);
        let reply = svc.dispatch(2, key, &value, tag.is_some());
        self.emit(key, reply, tag);
        Ok(())
    }

    fn log_untagged_failure(&self, key: &[u8], why: &str) {
        warn!(
            "client {}: untagged {} failed: {why}",
            self.id,
            String::from_utf8_lossy(key)
        );
    }

    /// Queues what `reply` sends for a message with this tag.
    fn emit(&mut self, key: &[u8], reply: Reply, tag: Option<i64>) {
        let empty = Value::empty();
        let failed;
        let (reply_key, value): (&str, &Value) = match &reply {
            Reply::Durable(_) => {
                if let Reply::Durable(inner) = reply {
                    self.held.push(Held::Pending { reply: *inner, tag });
                    self.held_bytes += 32;
                }
                return;
            }
            Reply::Data(k, v) => (k, v),
            Reply::Done if tag.is_some() => ("succeeded", &empty),
            Reply::NotSupported if tag.is_some() => ("not-supported", &empty),
            Reply::BadFormat if tag.is_some() => ("bad-format", &empty),
            Reply::Failed(why) if tag.is_some() => {
                failed = Value::str(why);
                ("failed", &failed)
            }
            Reply::BadFormat => return self.log_untagged_failure(key, "bad format"),
            Reply::Failed(why) => return self.log_untagged_failure(key, why),
            Reply::Done | Reply::NotSupported => return,
        };
        // Replies go straight into the output buffer, or behind a held
        // change into the frames that wait for it.
        if matches!(self.held.last(), Some(Held::Pending { .. })) {
            self.held.push(Held::Frames(Vec::new()));
        }
        let out = match self.held.last_mut() {
            Some(Held::Frames(f)) => f,
            _ => &mut self.output,
        };
        let before = out.len();
        if let Err(e) = write_message_frame(out, reply_key.as_bytes(), value, tag) {
            error!("client {}: {e}", self.id);
            let reason = Value::str("internal error: reply could not be encoded");
            // A short string always encodes.
            let _ = write_message_frame(out, b"failed", &reason, tag);
        }
        let written = out.len() - before;
        if !self.held.is_empty() {
            self.held_bytes += written;
        }
    }

    /// Whether replies wait for a commit.
    pub fn is_held(&self) -> bool {
        !self.held.is_empty()
    }

    /// Sends the held replies now that the commit is done: as they were on
    /// success, or `failed` with the reason for each held change.
    pub fn release(&mut self, commit: &Result<(), String>) {
        self.held_bytes = 0;
        for held in std::mem::take(&mut self.held) {
            match held {
                Held::Frames(f) => self.output.extend_from_slice(&f),
                Held::Pending { reply, tag } => {
                    let reply = match commit {
                        Ok(()) => reply,
                        Err(why) => Reply::Failed(why.clone()),
                    };
                    self.emit(b"(change)", reply, tag);
                }
            }
        }
    }

    /// Bytes waiting to be written to the client.
    pub fn output(&self) -> &[u8] {
        &self.output[self.sent..]
    }

    /// Records that `n` bytes of [`Session::output`] were written.
    pub fn consume_output(&mut self, n: usize) {
        self.sent = (self.sent + n).min(self.output.len());
        if self.sent == self.output.len() {
            self.output.clear();
            self.sent = 0;
            if self.output.capacity() > 64 << 10 {
                self.output = Vec::new(); // idle connections keep no big buffer
            }
        }
    }

    /// Queued output (written or held) is over the soft limit.
    pub fn is_backpressured(&self) -> bool {
        self.output.len() - self.sent + self.held_bytes > OUTPUT_SOFT_LIMIT
    }

    /// Bytes queued for the client, written or held.
    pub fn queued_output(&self) -> usize {
        self.output.len() - self.sent
    }
}

/// What the reactor does for one connection on its own, for tests and
/// fuzzing: hand `bytes` to the session, then turn after turn commit what
/// changed, release held replies, append the output to `out`, and resume
/// while input waits. Stops at a protocol error (returned) or at `quit`.
pub fn serve_alone(
    s: &mut Session,
    svc: &mut Service,
    bytes: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), ProtocolError> {
    let mut result = s.receive(bytes, svc);
    loop {
        if s.is_held() || svc.registry().needs_commit() {
            let r = svc.registry_mut().commit();
            s.release(&r);
        }
        out.extend_from_slice(s.output());
        let n = s.output().len();
        s.consume_output(n);
        if result.is_err() || !s.has_pending_input() || svc.control.quit {
            return result;
        }
        result = s.resume(svc);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{Registry, Settings};

    fn service(dir: &std::path::Path) -> Service {
        let reg = Registry::open(dir, Settings::defaults("/downloads".into())).unwrap();
        Service::new(reg)
    }

    /// What the reactor does at the end of a loop turn.
    fn end_turn(s: &mut Session, svc: &mut Service) {
        if s.is_held() || svc.registry().needs_commit() {
            let r = svc.registry_mut().commit();
            s.release(&r);
        }
    }

    fn take_output(s: &mut Session) -> Vec<u8> {
        let out = s.output().to_vec();
        s.consume_output(out.len());
        out
    }

    fn frames(mut bytes: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(Some(r)) = split_frame(bytes, crate::codec::PROTOCOL_MAX) {
            out.push(String::from_utf8_lossy(&bytes[..r.end]).into_owned());
            bytes = &bytes[r.end..];
        }
        assert!(bytes.is_empty(), "partial frame in output");
        out
    }

    #[test]
    fn greeting_is_the_documented_version_message() {
        let g = String::from_utf8(greeting().to_vec()).unwrap();
        let label = format!("tripcd {}", env!("CARGO_PKG_VERSION"));
        let payload = format!(
            "d7:versiond5:label{}:{label}3:maxi2e3:mini1eee",
            label.len()
        );
        assert_eq!(g, format!("{:08X}{payload}", payload.len()));
    }

    #[test]
    fn durable_replies_wait_for_the_commit_and_keep_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut svc = service(dir.path());
        let mut s = Session::new(1, 1 << 20);
        take_output(&mut s);
        s.receive(&crate::client::version_frame(1, 2), &mut svc)
            .unwrap();
        let mut bytes = crate::client::encode_message("port", &Value::Int(7), Some(1));
        bytes.extend(crate::client::encode_message(
            "noop",
            &Value::empty(),
            Some(2),
        ));
        s.receive(&bytes, &mut svc).unwrap();
        assert!(s.output().is_empty(), "nothing before the commit");
        assert!(s.is_held());
        end_turn(&mut s, &mut svc);
        assert_eq!(
            frames(&take_output(&mut s)),
            vec!["00000012l9:succeeded0:i1ee", "00000012l9:succeeded0:i2ee"]
        );
    }

    #[test]
    fn a_failed_commit_answers_failed_and_undoes_the_change() {
        let dir = tempfile::tempdir().unwrap();
        let mut svc = service(dir.path());
        let mut s = Session::new(1, 1 << 20);
        take_output(&mut s);
        s.receive(&crate::client::version_frame(2, 2), &mut svc)
            .unwrap();
        // A directory where the temporary settings file must go.
        std::fs::create_dir(dir.path().join(".settings.benc.tmp")).unwrap();
        let mut bytes = crate::client::encode_message("port", &Value::Int(7), Some(1));
        bytes.extend(crate::client::encode_message(
            "get-port",
            &Value::empty(),
            Some(2),
        ));
        bytes.extend(crate::client::encode_message("port", &Value::Int(8), None));
        s.receive(&bytes, &mut svc).unwrap();
        end_turn(&mut s, &mut svc);
        let out = frames(&take_output(&mut s));
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(out[0][8..].starts_with("l6:failed"), "{}", out[0]);
        assert!(out[0].contains("cannot save state"), "{}", out[0]);
        assert_eq!(svc.registry().settings().port, 9090, "change undone");
        std::fs::remove_dir(dir.path().join(".settings.benc.tmp")).unwrap();
        s.receive(
            &crate::client::encode_message("port", &Value::Int(7), Some(3)),
            &mut svc,
        )
        .unwrap();
        end_turn(&mut s, &mut svc);
        assert_eq!(
            frames(&take_output(&mut s)),
            vec!["00000012l9:succeeded0:i3ee"]
        );
        assert_eq!(svc.registry().settings().port, 7);
    }

    #[test]
    fn output_over_the_soft_limit_pauses_input_until_drained() {
        let dir = tempfile::tempdir().unwrap();
        let mut svc = service(dir.path());
        let mut s = Session::new(1, 1 << 20);
        take_output(&mut s);
        s.receive(&crate::client::version_frame(1, 2), &mut svc)
            .unwrap();
        let one = crate::client::encode_message("get-port", &Value::empty(), Some(1));
        let n = OUTPUT_SOFT_LIMIT / 10;
        let burst: Vec<u8> = one.iter().copied().cycle().take(one.len() * n).collect();
        s.receive(&burst, &mut svc).unwrap();
        assert!(s.is_backpressured());
        assert!(s.has_pending_input());
        let mut replies = frames(&take_output(&mut s)).len();
        while s.has_pending_input() {
            s.resume(&mut svc).unwrap();
            replies += frames(&take_output(&mut s)).len();
        }
        assert_eq!(replies, n);
        assert_eq!(s.buffered_input(), 0);
    }

    #[test]
    fn nothing_runs_after_a_protocol_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut svc = service(dir.path());
        let mut s = Session::new(1, 1 << 20);
        take_output(&mut s);
        s.receive(&crate::client::version_frame(1, 2), &mut svc)
            .unwrap();
        let mut bytes = b"0000000Fl4:noop0:i5eeXX".to_vec();
        bytes.extend(crate::client::encode_message(
            "port",
            &Value::Int(1),
            Some(1),
        ));
        assert!(s.receive(&bytes, &mut svc).is_err());
        assert!(
            s.receive(b"garbage", &mut svc).is_ok(),
            "ignored after the error"
        );
        assert_eq!(svc.registry().settings().port, 9090);
        assert!(s.output().is_empty());
    }

    #[test]
    fn version_1_runs_duplicate_keys_in_order_and_ignores_v2_keys() {
        let dir = tempfile::tempdir().unwrap();
        let mut svc = service(dir.path());
        let mut s = Session::new(1, 1 << 20);
        take_output(&mut s);
        s.receive(&crate::client::version_frame(1, 1), &mut svc)
            .unwrap();
        let fixture = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/fixtures/hello.torrent"
        );
        let add = format!("l{}:{fixture}e", fixture.len());
        let payload = format!("d4:porti1e8:addfiles{add}8:addfiles{add}4:quit0:e");
        let mut frame = Vec::new();
        write_frame(&mut frame, payload.as_bytes());
        s.receive(&frame, &mut svc).unwrap();
        end_turn(&mut s, &mut svc);
        assert_eq!(svc.registry().torrents().len(), 1);
        assert_eq!(svc.registry().settings().port, 9090);
        assert!(svc.control.quit);
        assert!(s.output().is_empty());
    }
}
