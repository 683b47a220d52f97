//! The uTP module's shared vocabulary: connection ids, events, states,
//! errors, the configuration and the figures, and sequence arithmetic.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use super::ledbat;

/// The datagram size used when `Config` says nothing else: the UDP payload
/// libtorrent starts its path MTU search at (1500-byte Ethernet MTU minus
/// IP, UDP and tunnel headers: 1404), leaving room for PPPoE (8 bytes),
/// IPv6 (40) and a small VPN or tunnel header without fragmenting. No path
/// MTU discovery is done: every packet has at most the connection's size.
pub const DEFAULT_PACKET_SIZE: usize = 1400;

/// The smallest datagram honoured: the header, a full selective ACK and
/// room for payload (IPv4's minimum reassembly size, 576, less IP and UDP).
pub const MIN_PACKET_SIZE: usize = 548;

/// The largest datagram honoured: the most an IPv4 UDP datagram carries
/// (loopback's 64 KiB MTU allows it).
pub const MAX_PACKET_SIZE: usize = 65_507;

/// Receive buffer of a connection by default: libtorrent's default
/// receive buffer, enough for 100 MiB/s at a 10 ms round trip.
pub const DEFAULT_RECV_BUFFER: usize = 1 << 20;

/// Send buffer of a connection by default (unacknowledged plus queued
/// bytes): as large as the peer's receive window can be used.
pub const DEFAULT_SEND_BUFFER: usize = 1 << 20;

/// Which connection; never reused within one endpoint's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(u64);

impl ConnId {
    pub(super) fn new(index: usize, generation: u32) -> ConnId {
        ConnId((u64::from(generation) << 32) | index as u64)
    }

    pub(super) fn index(self) -> usize {
        (self.0 & 0xffff_ffff) as usize
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "utp#{}.{}", self.0 & 0xffff_ffff, self.0 >> 32)
    }
}

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Both FINs were exchanged (or ours was acknowledged and the peer did
    /// not finish within [`FIN_WAIT`]).
    Finished,
    /// The peer sent a RESET.
    Reset,
    /// The peer answered our SYN with a RESET.
    Refused,
    /// Retransmissions (or SYNs) went unanswered.
    TimedOut,
    /// Nothing came from the peer for [`Config::idle_timeout`].
    Idle,
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CloseReason::Finished => "finished",
            CloseReason::Reset => "reset by the peer",
            CloseReason::Refused => "refused",
            CloseReason::TimedOut => "timed out",
            CloseReason::Idle => "idle",
        })
    }
}

/// What happened to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A peer connected to us and proved its address (its first packet
    /// after the SYN arrived). The owner may `close` or `reset` it.
    Incoming {
        /// The peer's address.
        from: SocketAddr,
    },
    /// Our connection was accepted.
    Connected,
    /// Data arrived while none was waiting, or the peer finished
    /// ([`Endpoint::eof`]). Edge-triggered: read until `recv` gives 0.
    Readable,
    /// A `send` took less than it was given, and the send buffer now has
    /// room (a quarter of it).
    Writable,
    /// The connection is over. Data still unread stays readable until this
    /// event is polled; the id is then forgotten.
    Closed(CloseReason),
}

/// A connection's stage, as the owner sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Our SYN is out, not yet answered.
    Connecting,
    /// Open both ways (the peer may have finished: see [`Endpoint::eof`]).
    Connected,
    /// `close` was called: queued data, then our FIN, are being delivered;
    /// data from the peer is still received.
    Closing,
    /// Over; [`Event::Closed`] is waiting to be polled.
    Closed(CloseReason),
}

/// Why `connect` refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UtpError {
    /// [`Config::max_connections`] reached.
    TooManyConnections,
    /// [`Config::max_half_open`] outgoing connections are being set up.
    TooManyHalfOpen,
}

impl fmt::Display for UtpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UtpError::TooManyConnections => f.write_str("too many uTP connections"),
            UtpError::TooManyHalfOpen => f.write_str("too many uTP connections being set up"),
        }
    }
}

impl std::error::Error for UtpError {}

/// After our FIN is acknowledged, how long the peer has to send its own
/// before the connection ends anyway (its data is then dropped): the
/// peers finish within a round trip of reading our FIN, and an owner that
/// closed does not usually read on.
pub const FIN_WAIT: Duration = Duration::from_secs(30);

/// Bounds and choices of an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Connections at once, in every stage, including those closing and
    /// those whose `Closed` event is not yet polled.
    pub max_connections: usize,
    /// Outgoing connections whose SYN is not yet answered.
    pub max_half_open: usize,
    /// Incoming connections whose SYN we answered but whose peer has not
    /// yet sent anything else (possibly spoofed); when full, the oldest
    /// is dropped for a new one, so a SYN flood cannot lock peers out.
    pub max_half_open_incoming: usize,
    /// Answer SYNs at all.
    pub accept_incoming: bool,
    /// Per connection: bytes queued or unacknowledged.
    pub send_buffer: usize,
    /// Per connection: bytes received and not yet read, plus those held
    /// out of order (the window we advertise).
    pub recv_buffer: usize,
    /// Datagram size for a destination that is not loopback.
    pub packet_size: usize,
    /// Datagram size for a loopback destination (no fragmentation below
    /// 64 KiB there).
    pub loopback_packet_size: usize,
    /// LEDBAT's target queuing delay.
    pub target_delay: Duration,
    /// A connection from which nothing arrives this long is dropped.
    pub idle_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            // tripcd's 240 peers, with room for closing connections.
            max_connections: 500,
            // tripcd's --max-half-open default.
            max_half_open: 16,
            max_half_open_incoming: 32,
            accept_incoming: true,
            send_buffer: DEFAULT_SEND_BUFFER,
            recv_buffer: DEFAULT_RECV_BUFFER,
            packet_size: DEFAULT_PACKET_SIZE,
            loopback_packet_size: DEFAULT_PACKET_SIZE,
            target_delay: ledbat::TARGET_DELAY,
            // Longer than the peer layer's 180 s inactivity timeout, so
            // that this is only a backstop for silent peers.
            idle_timeout: Duration::from_secs(300),
        }
    }
}

impl Config {
    /// The datagram size of a connection with `addr`, chosen once when it
    /// is made, within [`MIN_PACKET_SIZE`] and [`MAX_PACKET_SIZE`].
    pub fn packet_size_for(&self, addr: SocketAddr) -> usize {
        let size = if addr.ip().to_canonical().is_loopback() {
            self.loopback_packet_size
        } else {
            self.packet_size
        };
        size.clamp(MIN_PACKET_SIZE, MAX_PACKET_SIZE)
    }
}

/// One connection's figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConnStats {
    /// Smoothed round trip (none before the first sample).
    pub rtt: Option<Duration>,
    /// Retransmission timeout now in force (backoff included).
    pub rto: Duration,
    /// Congestion window, bytes.
    pub cwnd: u64,
    /// Payload bytes sent and not yet acknowledged or declared lost.
    pub bytes_in_flight: u64,
    /// The peer's last advertised window, bytes.
    pub peer_window: u64,
    /// Packets sent again (timeouts and fast retransmits).
    pub retransmits: u64,
    /// Of those, fast retransmits (duplicate ACKs, selective ACKs).
    pub fast_retransmits: u64,
    /// Retransmission timer expiries.
    pub timeouts: u64,
    /// Datagrams received on this connection.
    pub packets_in: u64,
    /// Datagrams sent on this connection.
    pub packets_out: u64,
    /// Bytes queued or unacknowledged.
    pub send_buffered: usize,
    /// Bytes received, not yet read.
    pub recv_buffered: usize,
    /// The connection's datagram size.
    pub packet_size: usize,
    /// LEDBAT's last queuing delay estimate.
    pub queuing_delay: Option<Duration>,
}

/// The endpoint's figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EndpointStats {
    /// Datagrams handed in.
    pub packets_in: u64,
    /// Datagrams handed out.
    pub packets_out: u64,
    /// Datagrams that did not decode.
    pub invalid: u64,
    /// Packets dropped: unknown connection, bad ack, out of window, ...
    pub dropped: u64,
    /// RESETs sent.
    pub resets_sent: u64,
    /// RESETs not sent because of the rate limit or a full queue.
    pub resets_suppressed: u64,
    /// SYNs refused (bounds, or incoming connections off).
    pub syns_refused: u64,
    /// Half-open incoming connections dropped for a newer SYN.
    pub syns_evicted: u64,
    /// Connections now, every stage.
    pub connections: usize,
    /// Connections being set up now (both directions).
    pub half_open: usize,
}

/// Whether sequence number `a` comes before `b` (16-bit wrap-around).
pub fn seq_lt(a: u16, b: u16) -> bool {
    (b.wrapping_sub(a) as i16) > 0
}
