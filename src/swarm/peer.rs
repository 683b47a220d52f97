//! One peer as the swarm holds it: its connection and the stream under
//! it, where it came from and how its bytes travel, what it has, and its
//! rates.

use std::net::SocketAddr;
use std::time::Instant;

use super::link::Link;
use crate::engine::bitfield::Bitfield;
use crate::engine::rate::RateMeter;
use crate::peer::conn::PeerConn;
use crate::peer::metadata::ServeLimit;
use crate::peer::pex::PexState;

/// How a peer came to us (the protocol's `peers-from`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// It connected to us.
    Incoming,
    /// A tracker named it.
    Tracker,
    /// Remembered from an earlier session.
    Cache,
    /// Peer exchange.
    Pex,
    /// The DHT.
    Dht,
}

/// How a peer's bytes travel: a property of each peer, chosen when it is
/// dialled (or by the listener it came through), so that the limits count
/// every kind and peer exchange can say which a peer speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// A TCP stream.
    Tcp,
}

impl Transport {
    /// What peer exchange says of a peer reached this way (BEP 11).
    pub(super) fn pex_flags(self) -> u8 {
        match self {
            Transport::Tcp => 0,
        }
    }
}

/// A connection to open: the peer's key, where, and over what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dial {
    /// The peer's key (its handle in every later call).
    pub key: usize,
    /// Its address.
    pub addr: SocketAddr,
    /// The transport to dial it over.
    pub transport: Transport,
}

/// Peer exchange with one peer: the id it gave `ut_pex`, and the state.
pub(super) struct PexLink {
    pub(super) id: u8,
    pub(super) state: PexState,
}

pub(super) struct Peer {
    pub(super) conn: PeerConn,
    /// The stream under `conn`: plaintext or encrypted.
    pub(super) link: Link,
    pub(super) addr: SocketAddr,
    /// How its bytes travel.
    pub(super) transport: Transport,
    /// Where it accepts connections: the address dialled, or for an
    /// incoming peer its address with the port its extension handshake
    /// gave (what peer exchange passes on).
    pub(super) listen: Option<SocketAddr>,
    pub(super) pex: Option<PexLink>,
    /// Listed in the swarm's upload queue.
    pub(super) uploading: bool,
    pub(super) torrent: Option<u64>,
    pub(super) source: Source,
    /// Outgoing, not connected yet.
    pub(super) dialing: bool,
    /// The pieces it has, for the picker.
    pub(super) has: Bitfield,
    pub(super) down: RateMeter,
    pub(super) up: RateMeter,
    pub(super) connected_at: Instant,
    pub(super) closing: bool,
    /// Its id for `ut_metadata` (BEP 9), if it speaks it.
    pub(super) ut_metadata: Option<u8>,
    /// Its allowance of metadata pieces served.
    pub(super) metadata_limit: ServeLimit,
}

impl Peer {
    /// A peer at `addr`, not yet of any torrent (incoming until the caller
    /// says otherwise).
    pub(super) fn new(
        conn: PeerConn,
        link: Link,
        addr: SocketAddr,
        transport: Transport,
        now: Instant,
    ) -> Peer {
        Peer {
            conn,
            link,
            addr,
            transport,
            listen: None,
            pex: None,
            uploading: false,
            torrent: None,
            source: Source::Incoming,
            dialing: false,
            has: Bitfield::new(0),
            down: RateMeter::new(now),
            up: RateMeter::new(now),
            connected_at: now,
            closing: false,
            ut_metadata: None,
            metadata_limit: ServeLimit::new(),
        }
    }
}
