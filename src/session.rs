//! One client connection's protocol state, without any I/O.
//!
//! Bytes go in with [`Session::receive`]; the bytes to send come out of
//! [`Session::output`]. In between: framing, the version handshake,
//! version 1 and version 2 messages, tags, and the reply rules of
//! PROTOCOL.md 3. Messages are run by a [`Dispatch`] (the daemon's command
//! service). Replies to changes that must be durable first are held (with
//! everything after them, to keep request order) until the server reports
//! the commit with [`Session::release`].

use std::sync::OnceLock;

use log::{debug, warn};

use crate::codec::outbuf::OutBuf;
use crate::codec::{decode, split_frame, FrameError, Value};
use crate::message::{self, MessageError, Version, VERSIONS};
pub use crate::reply::Dispatch;
use crate::reply::{Dispatched, Reply};

/// Output queued beyond this stops the processing of further input until
/// the client reads (a pipelining client is slowed down, not dropped).
pub const OUTPUT_SOFT_LIMIT: usize = 256 << 10;

/// The version message sent on accept.
pub fn greeting() -> &'static [u8] {
    static GREETING: OnceLock<Vec<u8>> = OnceLock::new();
    GREETING.get_or_init(|| {
        Version {
            min: VERSIONS.0,
            max: VERSIONS.1,
            label: format!("tripcd {}", env!("CARGO_PKG_VERSION")),
        }
        .frame()
    })
}

/// Why a connection must be closed (PROTOCOL.md 1, "protocol error").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    /// The byte stream is not frames.
    Frame(FrameError),
    /// A payload is not a message (or version) of the right shape.
    Message(MessageError),
}

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProtocolError::Frame(e) => e.fmt(f),
            ProtocolError::Message(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ProtocolError {}

impl From<FrameError> for ProtocolError {
    fn from(e: FrameError) -> Self {
        ProtocolError::Frame(e)
    }
}

impl From<MessageError> for ProtocolError {
    fn from(e: MessageError) -> Self {
        ProtocolError::Message(e)
    }
}

impl From<crate::codec::DecodeError> for ProtocolError {
    fn from(e: crate::codec::DecodeError) -> Self {
        ProtocolError::Message(MessageError::Decode(e))
    }
}

/// Output waiting for a commit.
enum Held {
    /// Encoded frames.
    Frames(Vec<u8>),
    /// A reply to send once the change is durable (and, if it moved the
    /// peer port, bound).
    Pending {
        reply: Reply,
        tag: Option<i64>,
        rebinds: bool,
    },
}

/// One connection's protocol state and buffers.
pub struct Session {
    id: u64,
    max_message: usize,
    version: Option<u8>,
    input: Vec<u8>,
    output: OutBuf,
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
            output: {
                let mut o = OutBuf::new(64 << 10); // idle connections keep no big buffer
                o.tail().extend_from_slice(greeting());
                o
            },
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
    /// buffer: call again with no bytes to go on) or a protocol error ends
    /// the connection. After an error, further input is ignored.
    pub fn receive(&mut self, bytes: &[u8], svc: &mut dyn Dispatch) -> Result<(), ProtocolError> {
        if self.failed {
            return Ok(());
        }
        if self.input.is_empty() {
            // The common case: parse straight from the caller's buffer and
            // keep only an incomplete tail.
            let used = self.run_frames(bytes, svc)?;
            self.input.extend_from_slice(&bytes[used..]);
            return Ok(());
        }
        self.input.extend_from_slice(bytes);
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

    fn run_frames(&mut self, buf: &[u8], svc: &mut dyn Dispatch) -> Result<usize, ProtocolError> {
        let mut used = 0;
        while !self.is_backpressured() && !svc.quitting() {
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

    fn handle_payload(
        &mut self,
        payload: &[u8],
        svc: &mut dyn Dispatch,
    ) -> Result<(), ProtocolError> {
        match self.version {
            None => {
                let version = Version::parse(payload)?.agree(VERSIONS)? as u8;
                debug!("client {}: speaking version {version}", self.id);
                self.version = Some(version);
                Ok(())
            }
            Some(1) => self.run_v1(payload, svc),
            Some(_) => {
                let msg = message::parse(payload)?;
                let done = svc.dispatch(2, msg.key, &msg.value, msg.tag.is_some());
                self.emit(msg.key, done, msg.tag);
                Ok(())
            }
        }
    }

    fn run_v1(&mut self, payload: &[u8], svc: &mut dyn Dispatch) -> Result<(), ProtocolError> {
        let msg = decode(payload)?;
        let Value::Dict(pairs) = msg else {
            return Err(MessageError::Shape("version 1 message is not a dict").into());
        };
        for (key, value) in &pairs {
            if svc.quitting() {
                break;
            }
            // Version 1 has no replies at all; failures are only logged.
            if let Reply::Failed(why) = svc.dispatch(1, key, value, false).reply {
                self.log_untagged_failure(key, &why);
            }
        }
        Ok(())
    }

    fn log_untagged_failure(&self, key: &[u8], why: &str) {
        warn!(
            "client {}: untagged {} failed: {why}",
            self.id,
            String::from_utf8_lossy(key)
        );
    }

    /// Queues what `done` sends for a message with this tag: now, or held
    /// until the commit when it made a change.
    fn emit(&mut self, key: &[u8], done: Dispatched, tag: Option<i64>) {
        if done.durable {
            self.held.push(Held::Pending {
                reply: done.reply,
                tag,
                rebinds: done.rebinds,
            });
            self.held_bytes += 32;
            return;
        }
        self.send(key, done.reply, tag);
    }

    /// Queues the frame of `reply` (after any held output).
    fn send(&mut self, key: &[u8], reply: Reply, tag: Option<i64>) {
        let empty = Value::empty();
        let failed;
        let (reply_key, value): (&str, &Value) = match &reply {
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
            _ => self.output.tail(),
        };
        let before = out.len();
        message::write(out, reply_key.as_bytes(), value, tag);
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
    /// success, or `failed` with the reason for each held change; a change
    /// of the peer port is also `failed` if the port could not be bound.
    pub fn release<E: std::fmt::Display>(&mut self, commit: &Result<(), E>, bind: Option<&str>) {
        self.held_bytes = 0;
        for held in std::mem::take(&mut self.held) {
            match held {
                Held::Frames(f) => self.output.tail().extend_from_slice(&f),
                Held::Pending {
                    reply,
                    tag,
                    rebinds,
                } => {
                    let reply = match (commit, bind) {
                        (Err(why), _) => Reply::Failed(why.to_string()),
                        (Ok(()), Some(why)) if rebinds => Reply::Failed(why.to_string()),
                        (Ok(()), _) => reply,
                    };
                    self.send(b"(change)", reply, tag);
                }
            }
        }
    }

    /// Bytes waiting to be written to the client.
    pub fn output(&self) -> &[u8] {
        self.output.pending()
    }

    /// Records that `n` bytes of [`Session::output`] were written.
    pub fn consume_output(&mut self, n: usize) {
        self.output.consume(n);
    }

    /// Queued output (written or held) is over the soft limit.
    pub fn is_backpressured(&self) -> bool {
        self.output.len() + self.held_bytes > OUTPUT_SOFT_LIMIT
    }

    /// Bytes queued for the client, written or held.
    pub fn queued_output(&self) -> usize {
        self.output.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::frame;

    /// A dispatcher standing in for the service: `noop` answers at once,
    /// `change` makes a change (its reply waits for the commit), `get`
    /// answers data, `fail` fails, `quit` quits.
    #[derive(Default)]
    struct Fake {
        quit: bool,
        seen: Vec<(u8, String)>,
    }

    impl Dispatch for Fake {
        fn dispatch(&mut self, version: u8, key: &[u8], _: &Value, _: bool) -> Dispatched {
            let key = String::from_utf8_lossy(key).into_owned();
            self.seen.push((version, key.clone()));
            let (reply, durable) = match key.as_str() {
                "noop" => (Reply::Done, false),
                "change" => (Reply::Done, true),
                "get" => (Reply::data("port", Value::Int(9090)), false),
                "fail" => (Reply::Failed("no".into()), false),
                "quit" => {
                    self.quit = true;
                    (Reply::Done, false)
                }
                _ => (Reply::NotSupported, false),
            };
            Dispatched {
                reply,
                durable,
                rebinds: false,
            }
        }

        fn quitting(&self) -> bool {
            self.quit
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

    fn version(min: i64, max: i64) -> Vec<u8> {
        Version {
            min,
            max,
            label: "test".into(),
        }
        .frame()
    }

    fn session(max: i64, d: &mut Fake) -> Session {
        let mut s = Session::new(1, 1 << 20);
        take_output(&mut s);
        s.receive(&version(1, max), d).unwrap();
        s
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
    fn durable_replies_wait_for_the_release_and_keep_order() {
        let mut d = Fake::default();
        let mut s = session(2, &mut d);
        let mut bytes = frame("change", &Value::empty(), Some(1));
        bytes.extend(frame("noop", &Value::empty(), Some(2)));
        s.receive(&bytes, &mut d).unwrap();
        assert!(s.output().is_empty(), "nothing before the commit");
        assert!(s.is_held());
        s.release::<String>(&Ok(()), None);
        assert_eq!(
            frames(&take_output(&mut s)),
            vec!["00000012l9:succeeded0:i1ee", "00000012l9:succeeded0:i2ee"]
        );
    }

    #[test]
    fn a_failed_commit_answers_failed_for_the_change_only() {
        let mut d = Fake::default();
        let mut s = session(2, &mut d);
        let mut bytes = frame("change", &Value::empty(), Some(1));
        bytes.extend(frame("get", &Value::empty(), Some(2)));
        s.receive(&bytes, &mut d).unwrap();
        s.release(&Err("disk full"), None);
        assert_eq!(
            frames(&take_output(&mut s)),
            vec![
                "00000018l6:failed9:disk fulli1ee",
                "00000011l4:porti9090ei2ee"
            ]
        );
    }

    #[test]
    fn output_over_the_soft_limit_pauses_input_until_drained() {
        let mut d = Fake::default();
        let mut s = session(2, &mut d);
        let one = frame("get", &Value::empty(), Some(1));
        let n = OUTPUT_SOFT_LIMIT / 10;
        let burst: Vec<u8> = one.iter().copied().cycle().take(one.len() * n).collect();
        s.receive(&burst, &mut d).unwrap();
        assert!(s.is_backpressured());
        assert!(s.has_pending_input());
        let mut replies = frames(&take_output(&mut s)).len();
        while s.has_pending_input() {
            s.receive(&[], &mut d).unwrap();
            replies += frames(&take_output(&mut s)).len();
        }
        assert_eq!(replies, n);
        assert_eq!(s.buffered_input(), 0);
    }

    #[test]
    fn nothing_runs_after_a_protocol_error() {
        let mut d = Fake::default();
        let mut s = session(2, &mut d);
        let mut bytes = b"0000000Fl4:noop0:i5eeXX".to_vec();
        bytes.extend(frame("noop", &Value::empty(), Some(1)));
        assert!(s.receive(&bytes, &mut d).is_err());
        assert!(
            s.receive(b"garbage", &mut d).is_ok(),
            "ignored after the error"
        );
        assert!(d.seen.is_empty(), "{:?}", d.seen);
        assert!(s.output().is_empty());
    }

    #[test]
    fn version_1_runs_duplicate_keys_in_order_and_stops_at_quit() {
        let mut d = Fake::default();
        let mut s = session(1, &mut d);
        let payload = b"d4:noop0:4:noop0:4:quit0:4:noop0:e";
        let mut f = Vec::new();
        crate::codec::write_frame(&mut f, payload);
        s.receive(&f, &mut d).unwrap();
        let keys: Vec<_> = d.seen.iter().map(|(v, k)| (*v, k.as_str())).collect();
        assert_eq!(keys, [(1, "noop"), (1, "noop"), (1, "quit")]);
        assert!(s.output().is_empty(), "version 1 has no replies");
    }

    #[test]
    fn untagged_failures_send_nothing() {
        let mut d = Fake::default();
        let mut s = session(2, &mut d);
        let mut bytes = frame("fail", &Value::empty(), None);
        bytes.extend(frame("nope", &Value::empty(), None));
        bytes.extend(frame("fail", &Value::empty(), Some(4)));
        s.receive(&bytes, &mut d).unwrap();
        assert_eq!(
            frames(&take_output(&mut s)),
            vec!["00000011l6:failed2:noi4ee"]
        );
    }
}
