//! A blocking client: connect, handshake, tagged requests matched to their
//! replies, typed errors. Used by `tripc`, the load tool and the tests.

use std::fmt;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::codec::{split_frame, Value, PROTOCOL_MAX};
use crate::message::{self, Version};

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
    Timeout,
    /// The server sent something that is not the protocol.
    Protocol(String),
    /// `failed`, with the server's reason.
    Failed(String),
    /// `not-supported` for this key.
    NotSupported(String),
    /// `bad-format` for this key.
    BadFormat(String),
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
            ClientError::Timeout => write!(f, "no answer from the daemon in time"),
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
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ClientError::Timeout,
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
            let n = match stream.read(&mut chunk) {
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
}

impl Client {
    /// Connects, sends our version at once (as the protocol asks) and
    /// waits for the server's.
    pub fn connect(socket: &Path) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
            socket: socket.to_path_buf(),
            source,
        })?;
        let mut client = Client {
            stream,
            reader: FrameReader::new(),
            next_tag: 1,
            server_label: String::new(),
        };
        client.stream.write_all(&version_frame(1, 2))?;
        let payload = client.reader.read_payload(&mut client.stream)?;
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
        self.stream.set_read_timeout(timeout)?;
        self.stream.set_write_timeout(timeout)?;
        Ok(())
    }

    /// Sends a tagged message and returns the reply carrying its tag, as
    /// it came (`failed` and friends included). Untagged data messages
    /// that arrive meanwhile are skipped.
    pub fn call(&mut self, key: &str, value: &Value) -> Result<Message, ClientError> {
        let tag = self.next_tag;
        self.next_tag = if tag == i64::MAX { 1 } else { tag + 1 };
        self.stream
            .write_all(&encode_message(key, value, Some(tag)))?;
        loop {
            let payload = self.reader.read_payload(&mut self.stream)?;
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
        self.stream.write_all(&encode_message(key, value, None))?;
        Ok(())
    }

    /// The underlying stream.
    pub fn stream(&mut self) -> &mut UnixStream {
        &mut self.stream
    }
}
