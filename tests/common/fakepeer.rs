//! A scripted peer for the hostile-peer tests: a plain blocking
//! [`TcpStream`] speaking the BitTorrent wire (BEP 3) by hand. It does not
//! use tripcd's own codec, so that a mistake shared by tripcd's encoder and
//! decoder cannot hide.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::HANG;

/// The handshake's first 20 bytes.
pub const PROTOCOL: &[u8; 20] = b"\x13BitTorrent protocol";

/// Message ids.
pub const CHOKE: u8 = 0;
pub const UNCHOKE: u8 = 1;
pub const INTERESTED: u8 = 2;
pub const NOT_INTERESTED: u8 = 3;
pub const HAVE: u8 = 4;
pub const BITFIELD: u8 = 5;
pub const REQUEST: u8 = 6;
pub const PIECE: u8 = 7;
pub const CANCEL: u8 = 8;

/// Largest message the fake peer buffers from tripcd (it never sends
/// more than a 128 KiB block and its header).
const MAX_READ: usize = 1 << 20;

/// A 68-byte handshake, no extension bits.
pub fn handshake_bytes(info_hash: &[u8; 20], peer_id: &[u8; 20]) -> Vec<u8> {
    let mut out = PROTOCOL.to_vec();
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(info_hash);
    out.extend_from_slice(peer_id);
    out
}

/// A fresh peer id, unique in this process (tripcd refuses a second
/// connection with the same id for a torrent).
pub fn peer_id() -> [u8; 20] {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut id = *b"-FK0001-000000000000";
    id[8..20].copy_from_slice(format!("{:012}", n).as_bytes());
    id
}

/// A message: length prefix, id, payload.
pub fn frame(id: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = ((payload.len() + 1) as u32).to_be_bytes().to_vec();
    out.push(id);
    out.extend_from_slice(payload);
    out
}

/// A `request` (or, with `id` [`CANCEL`], a cancel) for a block.
pub fn block_msg(id: u8, piece: u32, begin: u32, length: u32) -> Vec<u8> {
    let mut p = piece.to_be_bytes().to_vec();
    p.extend_from_slice(&begin.to_be_bytes());
    p.extend_from_slice(&length.to_be_bytes());
    frame(id, &p)
}

/// A `request`.
pub fn request(piece: u32, begin: u32, length: u32) -> Vec<u8> {
    block_msg(REQUEST, piece, begin, length)
}

/// A `piece` message carrying `data`.
pub fn piece(piece: u32, begin: u32, data: &[u8]) -> Vec<u8> {
    let mut p = piece.to_be_bytes().to_vec();
    p.extend_from_slice(&begin.to_be_bytes());
    p.extend_from_slice(data);
    frame(PIECE, &p)
}

/// The bitfield of a peer that has every one of `pieces` pieces (spare
/// bits clear).
pub fn full_bitfield(pieces: usize) -> Vec<u8> {
    let mut bits = vec![0xFF; pieces.div_ceil(8)];
    if !pieces.is_multiple_of(8) {
        if let Some(last) = bits.last_mut() {
            *last = 0xFF << (8 - pieces % 8);
        }
    }
    bits
}

/// `(piece, begin, length)` of a `request` or `cancel` payload.
pub fn parse_block(payload: &[u8]) -> (u32, u32, u32) {
    assert_eq!(
        payload.len(),
        12,
        "a block message of {} bytes",
        payload.len()
    );
    let at =
        |i: usize| u32::from_be_bytes([payload[i], payload[i + 1], payload[i + 2], payload[i + 3]]);
    (at(0), at(4), at(8))
}

/// What one read gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Got {
    /// A message: its id and payload.
    Msg(u8, Vec<u8>),
    /// A zero-length message.
    KeepAlive,
    /// tripcd closed the connection (end of stream or reset).
    Closed,
    /// Nothing within the time given.
    TimedOut,
}

/// One scripted connection to tripcd.
pub struct FakePeer {
    /// The socket (blocking).
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl FakePeer {
    /// Connects to tripcd's peer port on loopback; nothing sent.
    pub fn connect(port: u16) -> FakePeer {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the peer port");
        let _ = stream.set_nodelay(true);
        FakePeer {
            stream,
            buf: Vec::new(),
        }
    }

    /// Connects, sends a handshake for `info_hash` and reads tripcd's,
    /// which must name the same torrent; returns the peer id tripcd gave.
    pub fn handshake(port: u16, info_hash: &[u8; 20]) -> (FakePeer, [u8; 20]) {
        let mut f = FakePeer::connect(port);
        assert!(f.send(&handshake_bytes(info_hash, &peer_id())), "sent");
        f.stream.set_read_timeout(Some(HANG)).unwrap();
        let mut theirs = [0u8; 68];
        f.stream
            .read_exact(&mut theirs)
            .expect("tripcd's handshake");
        assert_eq!(&theirs[..20], PROTOCOL, "a BitTorrent handshake");
        assert_eq!(&theirs[28..48], info_hash, "for our torrent");
        let mut id = [0u8; 20];
        id.copy_from_slice(&theirs[48..68]);
        (f, id)
    }

    /// [`FakePeer::handshake`], offering the extension protocol (BEP 10).
    pub fn handshake_ext(port: u16, info_hash: &[u8; 20]) -> (FakePeer, [u8; 20]) {
        let mut f = FakePeer::connect(port);
        let mut hs = handshake_bytes(info_hash, &peer_id());
        hs[20 + 5] |= 0x10;
        assert!(f.send(&hs), "sent");
        f.stream.set_read_timeout(Some(HANG)).unwrap();
        let mut theirs = [0u8; 68];
        f.stream
            .read_exact(&mut theirs)
            .expect("tripcd's handshake");
        assert_eq!(&theirs[28..48], info_hash, "for our torrent");
        let mut id = [0u8; 20];
        id.copy_from_slice(&theirs[48..68]);
        (f, id)
    }

    /// Reads until an extension message (BEP 10) with extended id `ext`
    /// comes, and returns its payload.
    pub fn wait_for_extended(&mut self, ext: u8) -> Vec<u8> {
        loop {
            let body = self.wait_for(20);
            if body.first() == Some(&ext) {
                return body[1..].to_vec();
            }
        }
    }

    /// Our address, as tripcd names us in its log.
    pub fn addr(&self) -> SocketAddr {
        self.stream.local_addr().expect("local address")
    }

    /// Writes bytes; `false` if tripcd already closed the connection.
    pub fn send(&mut self, bytes: &[u8]) -> bool {
        match self.stream.write_all(bytes) {
            Ok(()) => true,
            Err(e) if closed(&e) => false,
            Err(e) => panic!("write to tripcd: {e}"),
        }
    }

    /// The next message, waiting up to `timeout`.
    pub fn next(&mut self, timeout: Duration) -> Got {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(got) = self.split() {
                return got;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Got::TimedOut;
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            let mut chunk = [0u8; 64 << 10];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Got::Closed,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Got::TimedOut
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if closed(&e) => return Got::Closed,
                Err(e) => panic!("read from tripcd: {e}"),
            }
        }
    }

    /// A whole message off the buffer, if there is one.
    fn split(&mut self) -> Option<Got> {
        let head: [u8; 4] = self.buf.get(..4)?.try_into().ok()?;
        let len = u32::from_be_bytes(head) as usize;
        assert!(len <= MAX_READ, "tripcd sent a message of {len} bytes");
        if self.buf.len() < 4 + len {
            return None;
        }
        let body: Vec<u8> = self.buf.drain(..4 + len).skip(4).collect();
        Some(match body.split_first() {
            None => Got::KeepAlive,
            Some((id, payload)) => Got::Msg(*id, payload.to_vec()),
        })
    }

    /// Reads until a message with `id` comes and returns its payload
    /// (others are skipped); panics if tripcd closes or [`HANG`] passes.
    pub fn wait_for(&mut self, id: u8) -> Vec<u8> {
        let start = Instant::now();
        loop {
            let left = HANG.saturating_sub(start.elapsed());
            match self.next(left) {
                Got::Msg(i, payload) if i == id => return payload,
                Got::Msg(..) | Got::KeepAlive => {}
                other => panic!("waiting for message {id}: {other:?}"),
            }
        }
    }

    /// Reads until tripcd closes the connection, and returns the ids of
    /// the messages that came before; panics if it is still open after
    /// [`HANG`].
    pub fn wait_closed(&mut self) -> Vec<u8> {
        let start = Instant::now();
        let mut seen = Vec::new();
        loop {
            let left = HANG.saturating_sub(start.elapsed());
            match self.next(left) {
                Got::Closed => return seen,
                Got::Msg(id, _) => seen.push(id),
                Got::KeepAlive => {}
                Got::TimedOut => panic!("tripcd kept the connection open; it sent {seen:?}"),
            }
        }
    }
}

/// Whether an I/O error means the other side closed the connection.
pub fn closed(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::BrokenPipe
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::UnexpectedEof
    )
}

/// Sets `SO_LINGER` to zero: closing sends a reset at once and leaves
/// no `TIME_WAIT` behind (a flood of thousands of connections would
/// otherwise hold thousands of local ports for a minute).
pub fn reset_on_close(s: &TcpStream) {
    let l = nix::libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    nix::sys::socket::setsockopt(s, nix::sys::socket::sockopt::Linger, &l).expect("SO_LINGER");
}

/// Resident memory of process `pid` in bytes (`VmRSS` of
/// `/proc/PID/status`).
pub fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS");
    kb * 1024
}
