//! A blocking client: connect, handshake, tagged requests matched to their
//! replies, typed errors. Used by `tripc`, the load tool and the tests.
//!
//! With a timeout ([`Client::connect_timeout`]) no step can block for
//! longer than it: connecting (a listener whose backlog is full makes a
//! Unix connect wait), the daemon's version message, and each request's
//! sending and answer (a deadline for the whole answer, not for each read,
//! so a daemon trickling bytes cannot stretch it).

use std::fmt;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr};

use crate::codec::{split_frame, Value, PROTOCOL_MAX};
use crate::message::{self, Version};

/// What the client was waiting for when its time ran out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Connecting to this socket (the listener accepts nobody).
    Connect(PathBuf),
    /// The daemon's version message, after connecting.
    Handshake,
    /// Sending the message with this key (the daemon reads nothing).
    Send(String),
    /// The answer to the message with this key.
    Answer(String),
    /// A read with no more context (a bare [`FrameReader`]).
    Read,
}

/// Why a request did not get the answer it wanted.
#[derive(Debug)]
pub enum ClientError {
    /// No daemon at the socket.
    Connect {
        /// The socket tried.
        socket: PathBuf,
        /// What connect said.
        source: io::Error,
    },
    /// The server speaks no version we do.
    Version(String),
    /// Reading or writing failed.
    Io(io::Error),
    /// The server closed the connection.
    Closed,
    /// No answer in time.
    Timeout {
        /// What was waited for.
        step: Step,
        /// The bound that ran out, when the client set it.
        after: Option<Duration>,
    },
    /// The server sent something that is not the protocol.
    Protocol(String),
    /// `failed`, with the server's reason.
    Failed(String),
    /// `not-supported` for this key.
    NotSupported(String),
    /// `bad-format` for this key.
    BadFormat(String),
}

impl ClientError {
    /// A timeout gets the step it happened in; other errors pass.
    fn during(self, step: Step, after: Option<Duration>) -> ClientError {
        match self {
            ClientError::Timeout { .. } => ClientError::Timeout { step, after },
            other => other,
        }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Connect { socket, source } => write!(
                f,
                "cannot connect: {source}; is tripcd running? socket: {}",
                socket.display()
            ),
            ClientError::Version(m) => write!(f, "version mismatch: {m}"),
            ClientError::Io(e) => write!(f, "connection error: {e}"),
            ClientError::Closed => write!(f, "the daemon closed the connection"),
            ClientError::Timeout { step, after } => {
                f.write_str("timed out")?;
                if let Some(after) = after {
                    // `as_secs_f64` prints 3 s as "3", half a second as "0.5".
                    write!(f, " after {} s", after.as_secs_f64())?;
                }
                match step {
                    Step::Connect(socket) => write!(f, " connecting to {}", socket.display()),
                    Step::Handshake => f.write_str(" waiting for the daemon's version handshake"),
                    Step::Send(key) => write!(f, " sending {key} (the daemon reads nothing)"),
                    Step::Answer(key) => write!(f, " waiting for the answer to {key}"),
                    Step::Read => f.write_str(" waiting for the daemon"),
                }
            }
            ClientError::Protocol(m) => write!(f, "protocol error: {m}"),
            ClientError::Failed(m) => write!(f, "failed: {m}"),
            ClientError::NotSupported(k) => write!(f, "the daemon does not support {k:?}"),
            ClientError::BadFormat(k) => write!(f, "the daemon found the value of {k:?} malformed"),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ClientError::Timeout {
                step: Step::Read,
                after: None,
            },
            io::ErrorKind::UnexpectedEof => ClientError::Closed,
            _ => ClientError::Io(e),
        }
    }
}

/// A message received: key, value and tag (if any).
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The key, e.g. `succeeded` or `info`.
    pub key: String,
    /// The value.
    pub value: Value,
    /// The tag, if the message carried one.
    pub tag: Option<i64>,
}

/// Reads frames from a stream, keeping partial ones between calls.
pub struct FrameReader {
    buf: Vec<u8>,
}

impl Default for FrameReader {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameReader {
    /// An empty reader.
    pub fn new() -> FrameReader {
        FrameReader { buf: Vec::new() }
    }

    /// The next whole payload. `Closed` on a clean end of stream.
    pub fn read_payload(&mut self, stream: &mut impl Read) -> Result<Vec<u8>, ClientError> {
        self.next_payload(|chunk| stream.read(chunk))
    }

    /// [`FrameReader::read_payload`] giving up at `deadline` (`None`: the
    /// stream's own timeouts), however the bytes trickle in.
    fn read_payload_by(
        &mut self,
        stream: &mut UnixStream,
        deadline: Option<Instant>,
    ) -> Result<Vec<u8>, ClientError> {
        self.next_payload(|chunk| {
            if deadline.is_some() {
                stream.set_read_timeout(time_left(deadline)?)?;
            }
            stream.read(chunk)
        })
    }

    fn next_payload(
        &mut self,
        mut read: impl FnMut(&mut [u8]) -> io::Result<usize>,
    ) -> Result<Vec<u8>, ClientError> {
        loop {
            match split_frame(&self.buf, PROTOCOL_MAX) {
                Ok(Some(range)) => {
                    let payload = self.buf[range.clone()].to_vec();
                    self.buf.drain(..range.end);
                    return Ok(payload);
                }
                Ok(None) => {}
                Err(e) => return Err(ClientError::Protocol(e.to_string())),
            }
            let mut chunk = [0u8; 16 << 10];
            let n = match read(&mut chunk) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            if n == 0 {
                return Err(ClientError::Closed);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// `timeout` from now (`None`: no bound, also when it is too far to
/// represent).
fn deadline_in(timeout: Option<Duration>) -> Option<Instant> {
    timeout.and_then(|t| Instant::now().checked_add(t))
}

/// What is left until `deadline`, as a socket timeout; `TimedOut` once
/// nothing is (a socket timeout of zero would mean no timeout at all).
fn time_left(deadline: Option<Instant>) -> io::Result<Option<Duration>> {
    match deadline {
        None => Ok(None),
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                Err(io::ErrorKind::TimedOut.into())
            } else {
                Ok(Some(left))
            }
        }
    }
}

/// Writes all of `bytes` by `deadline`: the write timeout shrinks as the
/// deadline nears, so partial writes cannot add up past it.
fn write_by(
    stream: &mut UnixStream,
    mut bytes: &[u8],
    deadline: Option<Instant>,
) -> io::Result<()> {
    while !bytes.is_empty() {
        if deadline.is_some() {
            stream.set_write_timeout(time_left(deadline)?)?;
        }
        match stream.write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = bytes.get(n..).unwrap_or_default(),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Connects to `socket`, waiting at most `timeout` (`None`: as long as
/// it takes).
///
/// A Unix connect blocks while the listener's backlog is full. Linux
/// bounds that wait by the socket's send timeout and then fails with
/// `EAGAIN`, so the connect is a blocking one with `SO_SNDTIMEO` set: the
/// kernel wakes it the moment the listener accepts. (A non-blocking
/// connect would fail with `EAGAIN` at once, and the unconnected socket
/// polls writable, so there would be nothing to wait on but a retry loop.)
pub fn connect_stream(socket: &Path, timeout: Option<Duration>) -> Result<UnixStream, ClientError> {
    let refused = |source: io::Error| ClientError::Connect {
        socket: socket.to_path_buf(),
        source,
    };
    let timed_out = || ClientError::Timeout {
        step: Step::Connect(socket.to_path_buf()),
        after: timeout,
    };
    let Some(limit) = timeout else {
        return UnixStream::connect(socket).map_err(refused);
    };
    let addr = UnixAddr::new(socket).map_err(|e| refused(e.into()))?;
    let fd = nix::sys::socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| refused(e.into()))?;
    let stream = UnixStream::from(fd);
    let deadline = deadline_in(Some(limit));
    loop {
        let left = time_left(deadline).map_err(|_| timed_out())?;
        stream.set_write_timeout(left).map_err(refused)?;
        match nix::sys::socket::connect(stream.as_raw_fd(), &addr) {
            Ok(()) => break,
            // A signal cut the wait short: wait out the rest.
            Err(Errno::EINTR) => continue,
            // EINPROGRESS is how other socket families say it.
            Err(Errno::EAGAIN | Errno::EINPROGRESS) => return Err(timed_out()),
            Err(e) => return Err(refused(e.into())),
        }
    }
    stream.set_write_timeout(None).map_err(refused)?;
    Ok(stream)
}

/// Parses a version 2 message payload (the one parser the daemon uses).
pub fn parse_message(payload: &[u8]) -> Result<Message, ClientError> {
    let m = message::parse(payload).map_err(|e| ClientError::Protocol(e.to_string()))?;
    Ok(Message {
        key: String::from_utf8_lossy(m.key).into_owned(),
        value: m.value,
        tag: m.tag,
    })
}

/// Encodes a version 2 message frame.
pub fn encode_message(key: &str, value: &Value, tag: Option<i64>) -> Vec<u8> {
    message::frame(key, value, tag)
}

/// The client's version message offering `min..=max`.
pub fn version_frame(min: i64, max: i64) -> Vec<u8> {
    Version {
        min,
        max,
        label: format!("tripc {}", env!("CARGO_PKG_VERSION")),
    }
    .frame()
}

/// A connection to tripcd speaking version 2.
pub struct Client {
    stream: UnixStream,
    reader: FrameReader,
    next_tag: i64,
    server_label: String,
    /// The bound on each request's sending and answer.
    timeout: Option<Duration>,
}

impl Client {
    /// Connects, sends our version at once (as the protocol asks) and
    /// waits for the server's, with no time limit.
    pub fn connect(socket: &Path) -> Result<Client, ClientError> {
        Client::open(socket, None)
    }

    /// [`Client::connect`] where connecting, the version handshake and
    /// later each request's answer (until [`Client::set_timeout`]) take
    /// at most `timeout` each; [`ClientError::Timeout`] says which did not.
    pub fn connect_timeout(socket: &Path, timeout: Duration) -> Result<Client, ClientError> {
        Client::open(socket, Some(timeout))
    }

    fn open(socket: &Path, timeout: Option<Duration>) -> Result<Client, ClientError> {
        let stream = connect_stream(socket, timeout)?;
        let mut client = Client {
            stream,
            reader: FrameReader::new(),
            next_tag: 1,
            server_label: String::new(),
            timeout,
        };
        let handshake = |e: ClientError| e.during(Step::Handshake, timeout);
        let deadline = deadline_in(timeout);
        write_by(&mut client.stream, &version_frame(1, 2), deadline)
            .map_err(|e| handshake(e.into()))?;
        let payload = client
            .reader
            .read_payload_by(&mut client.stream, deadline)
            .map_err(handshake)?;
        let server = Version::parse(&payload).map_err(|e| ClientError::Protocol(e.to_string()))?;
        if !(server.min..=server.max).contains(&2) {
            return Err(ClientError::Version(format!(
                "the server speaks {}..{}, tripc needs 2",
                server.min, server.max
            )));
        }
        client.server_label = server.label;
        Ok(client)
    }

    /// The server's label from its version message.
    pub fn server_label(&self) -> &str {
        &self.server_label
    }

    /// Gives up on a reply after `timeout` (`None`: wait forever).
    pub fn set_timeout(&mut self, timeout: Option<Duration>) -> Result<(), ClientError> {
        // On the stream too, for reads and writes through `stream()`.
        self.stream.set_read_timeout(timeout)?;
        self.stream.set_write_timeout(timeout)?;
        self.timeout = timeout;
        Ok(())
    }

    /// Sends a tagged message and returns the reply carrying its tag, as
    /// it came (`failed` and friends included). Untagged data messages
    /// that arrive meanwhile are skipped; with a timeout, the reply must
    /// come within it all the same.
    pub fn call(&mut self, key: &str, value: &Value) -> Result<Message, ClientError> {
        let tag = self.next_tag;
        self.next_tag = if tag == i64::MAX { 1 } else { tag + 1 };
        let timeout = self.timeout;
        let deadline = deadline_in(timeout);
        write_by(
            &mut self.stream,
            &encode_message(key, value, Some(tag)),
            deadline,
        )
        .map_err(|e| ClientError::from(e).during(Step::Send(key.to_string()), timeout))?;
        loop {
            let payload = self
                .reader
                .read_payload_by(&mut self.stream, deadline)
                .map_err(|e| e.during(Step::Answer(key.to_string()), timeout))?;
            let msg = parse_message(&payload)?;
            if msg.tag == Some(tag) {
                return Ok(msg);
            }
        }
    }

    /// Like [`Client::call`], turning `failed`, `not-supported` and
    /// `bad-format` into errors. `succeeded` gives `None`, data replies
    /// their key and value.
    pub fn request(&mut self, key: &str, value: &Value) -> Result<Option<Message>, ClientError> {
        let msg = self.call(key, value)?;
        match msg.key.as_str() {
            "succeeded" => Ok(None),
            "failed" => Err(ClientError::Failed(
                msg.value.as_str().unwrap_or("").to_string(),
            )),
            "not-supported" => Err(ClientError::NotSupported(key.to_string())),
            "bad-format" => Err(ClientError::BadFormat(key.to_string())),
            _ => Ok(Some(msg)),
        }
    }

    /// Sends a message without a tag (no reply unless it has data).
    pub fn send_untagged(&mut self, key: &str, value: &Value) -> Result<(), ClientError> {
        let timeout = self.timeout;
        write_by(
            &mut self.stream,
            &encode_message(key, value, None),
            deadline_in(timeout),
        )
        .map_err(|e| ClientError::from(e).during(Step::Send(key.to_string()), timeout))
    }

    /// The underlying stream.
    pub fn stream(&mut self) -> &mut UnixStream {
        &mut self.stream
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{bind, listen, Backlog};
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixListener;

    /// Upper bound on a wait that should end by itself; a hang guard only.
    const HANG: Duration = Duration::from_secs(60);

    /// A listener with a backlog of 0 that accepts nobody, filled with
    /// pending connections until the kernel turns the next one away.
    /// The fillers are returned to keep them pending.
    fn full_listener(path: &Path) -> (OwnedFd, Vec<OwnedFd>) {
        let addr = UnixAddr::new(path).unwrap();
        let new_socket = |flags| {
            nix::sys::socket::socket(AddressFamily::Unix, SockType::Stream, flags, None).unwrap()
        };
        let listener = new_socket(SockFlag::SOCK_CLOEXEC);
        bind(listener.as_raw_fd(), &addr).unwrap();
        listen(&listener, Backlog::new(0).unwrap()).unwrap();
        let mut fillers = Vec::new();
        for _ in 0..1000 {
            let s = new_socket(SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK);
            match nix::sys::socket::connect(s.as_raw_fd(), &addr) {
                Ok(()) => fillers.push(s),
                Err(Errno::EAGAIN) => return (listener, fillers),
                Err(e) => panic!("filling the backlog: {e}"),
            }
        }
        panic!("the backlog never filled");
    }

    #[test]
    fn connecting_to_a_full_backlog_times_out_then_succeeds_once_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("socket");
        let (listener, _fillers) = full_listener(&path);
        let limit = Duration::from_millis(200);
        let t0 = Instant::now();
        match connect_stream(&path, Some(limit)) {
            Err(ClientError::Timeout { step, after }) => {
                assert_eq!(step, Step::Connect(path.clone()));
                assert_eq!(after, Some(limit));
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
        assert!(t0.elapsed() < HANG);
        // One accepted makes room: the same bounded connect now succeeds.
        let _accepted = nix::sys::socket::accept(listener.as_raw_fd()).unwrap();
        assert!(connect_stream(&path, Some(HANG)).is_ok());
    }

    #[test]
    fn connect_errors_name_the_socket_and_zero_time_is_a_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nobody");
        for limit in [None, Some(HANG)] {
            match connect_stream(&path, limit) {
                Err(ClientError::Connect { socket, source }) => {
                    assert_eq!(socket, path);
                    assert_eq!(source.kind(), io::ErrorKind::NotFound);
                }
                other => panic!("{limit:?}: {other:?}"),
            }
        }
        let _listener = UnixListener::bind(&path).unwrap();
        assert!(matches!(
            connect_stream(&path, Some(Duration::ZERO)),
            Err(ClientError::Timeout {
                step: Step::Connect(_),
                ..
            })
        ));
    }

    #[test]
    fn a_server_that_never_speaks_times_out_the_handshake() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("socket");
        let listener = UnixListener::bind(&path).unwrap();
        let limit = Duration::from_millis(100);
        // Accepted or merely pending, the connection hears nothing.
        let held = std::thread::spawn(move || listener.accept());
        let err = Client::connect_timeout(&path, limit).err().unwrap();
        assert_eq!(
            err.to_string(),
            "timed out after 0.1 s waiting for the daemon's version handshake"
        );
        drop(held.join().unwrap());
    }

    /// A server that greets, then sends untagged messages every few
    /// milliseconds for up to `HANG` and never answers: a per-read timeout
    /// would never fire, the deadline does.
    #[test]
    fn a_trickling_server_cannot_stretch_an_answer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("socket");
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(&version_frame(1, 2)).unwrap();
            let t0 = Instant::now();
            while t0.elapsed() < HANG {
                let noise = encode_message("noise", &Value::empty(), None);
                if s.write_all(&noise).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        let limit = Duration::from_millis(300);
        let mut c = Client::connect_timeout(&path, limit).unwrap();
        match c.call("get-status", &Value::empty()) {
            Err(ClientError::Timeout { step, after }) => {
                assert_eq!(step, Step::Answer("get-status".into()));
                assert_eq!(after, Some(limit));
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
        drop(c);
        server.join().unwrap();
    }

    #[test]
    fn timeouts_say_what_was_waited_for() {
        let t = |step, after| ClientError::Timeout { step, after }.to_string();
        let three = Some(Duration::from_secs(3));
        assert_eq!(
            t(Step::Connect("/run/s".into()), three),
            "timed out after 3 s connecting to /run/s"
        );
        assert_eq!(
            t(Step::Answer("get-status".into()), three),
            "timed out after 3 s waiting for the answer to get-status"
        );
        assert_eq!(
            t(Step::Send("quit".into()), three),
            "timed out after 3 s sending quit (the daemon reads nothing)"
        );
        assert_eq!(t(Step::Read, None), "timed out waiting for the daemon");
        let e: ClientError = io::Error::from(io::ErrorKind::WouldBlock).into();
        let e = e.during(Step::Handshake, three);
        assert!(matches!(
            e,
            ClientError::Timeout {
                step: Step::Handshake,
                ..
            }
        ));
        assert!(matches!(
            ClientError::Closed.during(Step::Handshake, three),
            ClientError::Closed
        ));
    }
}
