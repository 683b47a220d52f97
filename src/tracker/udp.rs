//! UDP trackers (BEP 15), sans-IO: the packets, and [`UdpClient`], the
//! state machine that runs connect/announce/scrape exchanges over one
//! socket the caller owns.
//!
//! The client never touches a socket or a clock: datagrams go in through
//! [`handle_datagram`](UdpClient::handle_datagram), packets to send come
//! out of [`poll_transmit`](UdpClient::poll_transmit), the time is passed
//! in, and [`poll_timeout`](UdpClient::poll_timeout) says when to call
//! [`handle_timeout`](UdpClient::handle_timeout) next.
//!
//! Anyone can send us a datagram, so a packet only counts if it comes from
//! the tracker's address with the transaction id of a request we have
//! outstanding and the action we expect; anything else is logged and
//! dropped without disturbing the exchange. Everything held is bounded:
//! exchanges in flight, queued results, cached connection ids, hashes per
//! scrape, peers and text from a reply.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::announce::{
    clean_text, compact_peers, AnnounceEvent, AnnounceRequest, Announced, Scraped, TrackerError,
    MAX_INTERVAL,
};

/// The magic constant of a connect request.
pub const PROTOCOL_ID: u64 = 0x0417_2710_1980;

/// Action of a connect request and reply.
pub const ACTION_CONNECT: u32 = 0;
/// Action of an announce request and reply.
pub const ACTION_ANNOUNCE: u32 = 1;
/// Action of a scrape request and reply.
pub const ACTION_SCRAPE: u32 = 2;
/// Action of an error reply.
pub const ACTION_ERROR: u32 = 3;

/// Most info hashes in one scrape: BEP 15's limit, which keeps the request
/// and the reply inside one unfragmented datagram.
pub const MAX_SCRAPE_HASHES: usize = 74;

/// How long a connection id may be used after it was obtained (BEP 15).
pub const CONNECTION_ID_LIFETIME: Duration = Duration::from_secs(60);

/// Most exchanges in flight at once, counting finished ones whose result
/// has not been collected yet.
pub const MAX_IN_FLIGHT: usize = 1024;

/// Most trackers whose connection id is remembered at once.
pub const MAX_CACHED_CONNECTIONS: usize = 1024;

/// Length of a connect request.
pub const CONNECT_LEN: usize = 16;
/// Length of an announce request.
pub const ANNOUNCE_LEN: usize = 98;

/// The retransmission delay doubles at most this many times; BEP 15 gives
/// up after 8, and the cap keeps `base * 2^n` from overflowing.
const MAX_DOUBLINGS: u32 = 16;

/// The shortest retransmission base honoured: with zero, a packet would be
/// due again the moment it was sent and `poll_transmit` would never end.
const MIN_RETRANSMIT_BASE: Duration = Duration::from_millis(1);

/// The longest exchange timeout honoured, so that `start + timeout` stays
/// representable.
const MAX_EXCHANGE_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// A connect request.
pub fn encode_connect(txid: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(CONNECT_LEN);
    out.extend_from_slice(&PROTOCOL_ID.to_be_bytes());
    out.extend_from_slice(&ACTION_CONNECT.to_be_bytes());
    out.extend_from_slice(&txid.to_be_bytes());
    out
}

/// The event field of an announce.
fn event_code(event: Option<AnnounceEvent>) -> u32 {
    match event {
        None => 0,
        Some(AnnounceEvent::Completed) => 1,
        Some(AnnounceEvent::Started) => 2,
        Some(AnnounceEvent::Stopped) => 3,
    }
}

/// An announce request on connection `connection_id`. The IP field is 0
/// (the tracker uses the packet's source); `trackerid` and `compact` are
/// HTTP notions and not sent.
pub fn encode_announce(connection_id: u64, txid: u32, req: &AnnounceRequest) -> Vec<u8> {
    // num_want is signed on the wire (-1: the tracker's default); a larger
    // value would read as negative.
    let num_want = req.numwant.min(i32::MAX.unsigned_abs());
    let mut out = Vec::with_capacity(ANNOUNCE_LEN);
    out.extend_from_slice(&connection_id.to_be_bytes());
    out.extend_from_slice(&ACTION_ANNOUNCE.to_be_bytes());
    out.extend_from_slice(&txid.to_be_bytes());
    out.extend_from_slice(&req.info_hash);
    out.extend_from_slice(&req.peer_id);
    out.extend_from_slice(&req.downloaded.to_be_bytes());
    out.extend_from_slice(&req.left.to_be_bytes());
    out.extend_from_slice(&req.uploaded.to_be_bytes());
    out.extend_from_slice(&event_code(req.event).to_be_bytes());
    out.extend_from_slice(&0u32.to_be_bytes());
    out.extend_from_slice(&req.key.to_be_bytes());
    out.extend_from_slice(&num_want.to_be_bytes());
    out.extend_from_slice(&req.port.to_be_bytes());
    out
}

/// A scrape request for `hashes`; only the first [`MAX_SCRAPE_HASHES`] are
/// sent ([`UdpClient::start`] refuses more).
pub fn encode_scrape(connection_id: u64, txid: u32, hashes: &[[u8; 20]]) -> Vec<u8> {
    let hashes = hashes.get(..MAX_SCRAPE_HASHES).unwrap_or(hashes);
    let mut out = Vec::with_capacity(16 + 20 * hashes.len());
    out.extend_from_slice(&connection_id.to_be_bytes());
    out.extend_from_slice(&ACTION_SCRAPE.to_be_bytes());
    out.extend_from_slice(&txid.to_be_bytes());
    for hash in hashes {
        out.extend_from_slice(hash);
    }
    out
}

/// A tracker's datagram, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// Reply to a connect: the connection id to use for a minute.
    Connect {
        /// The transaction id echoed.
        txid: u32,
        /// The id to put in announces and scrapes.
        connection_id: u64,
    },
    /// Reply to an announce.
    Announce {
        /// The transaction id echoed.
        txid: u32,
        /// When to announce again, capped at [`MAX_INTERVAL`].
        interval: Duration,
        /// Peers still downloading.
        leechers: u32,
        /// Peers with the whole torrent.
        seeders: u32,
        /// Peers, bounded and cleaned by [`compact_peers`].
        peers: Vec<SocketAddr>,
    },
    /// Reply to a scrape: one entry per hash asked, in order.
    Scrape {
        /// The transaction id echoed.
        txid: u32,
        /// The figures, at most [`MAX_SCRAPE_HASHES`].
        scraped: Vec<Scraped>,
    },
    /// The tracker refused a request.
    Error {
        /// The transaction id echoed.
        txid: u32,
        /// The tracker's text, cleaned and bounded.
        message: String,
    },
}

impl Response {
    /// The transaction id the datagram answers.
    pub fn txid(&self) -> u32 {
        match self {
            Response::Connect { txid, .. }
            | Response::Announce { txid, .. }
            | Response::Scrape { txid, .. }
            | Response::Error { txid, .. } => *txid,
        }
    }

    /// The reply's kind, for log lines.
    fn kind(&self) -> &'static str {
        match self {
            Response::Connect { .. } => "connect",
            Response::Announce { .. } => "announce",
            Response::Scrape { .. } => "scrape",
            Response::Error { .. } => "error",
        }
    }
}

/// Why a datagram is not a tracker reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketError {
    /// Shorter than its action needs: the action (if the packet got that
    /// far) and the length.
    TooShort {
        /// The action read, if any.
        action: Option<u32>,
        /// The datagram's length.
        len: usize,
    },
    /// An action BEP 15 does not define.
    UnknownAction(u32),
}

impl fmt::Display for PacketError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PacketError::TooShort { action: None, len } => {
                write!(f, "a {len}-byte datagram is too short for a tracker reply")
            }
            PacketError::TooShort {
                action: Some(action),
                len,
            } => write!(
                f,
                "a {len}-byte datagram is too short for a reply with action {action}"
            ),
            PacketError::UnknownAction(action) => {
                write!(f, "unknown action {action} in a tracker reply")
            }
        }
    }
}

impl std::error::Error for PacketError {}

/// Big-endian reads that fail instead of panicking on short input.
struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn u32(&mut self) -> Option<u32> {
        let (head, rest) = self.rest.split_first_chunk::<4>()?;
        self.rest = rest;
        Some(u32::from_be_bytes(*head))
    }

    fn u64(&mut self) -> Option<u64> {
        let (head, rest) = self.rest.split_first_chunk::<8>()?;
        self.rest = rest;
        Some(u64::from_be_bytes(*head))
    }

    fn rest(&self) -> &'a [u8] {
        self.rest
    }
}

/// Decodes a tracker's datagram. `v6` says the tracker's address is IPv6,
/// which makes announce peers 18-byte entries (BEP 15). Trailing bytes past
/// a fixed-size reply are ignored, as is a partial peer or scrape entry.
pub fn parse_response(data: &[u8], v6: bool) -> Result<Response, PacketError> {
    let mut cur = Cursor { rest: data };
    let len = data.len();
    let (Some(action), Some(txid)) = (cur.u32(), cur.u32()) else {
        return Err(PacketError::TooShort { action: None, len });
    };
    let short = PacketError::TooShort {
        action: Some(action),
        len,
    };
    match action {
        ACTION_CONNECT => {
            let connection_id = cur.u64().ok_or(short)?;
            Ok(Response::Connect {
                txid,
                connection_id,
            })
        }
        ACTION_ANNOUNCE => {
            let (Some(interval), Some(leechers), Some(seeders)) = (cur.u32(), cur.u32(), cur.u32())
            else {
                return Err(short);
            };
            Ok(Response::Announce {
                txid,
                interval: Duration::from_secs(u64::from(interval)).min(MAX_INTERVAL),
                leechers,
                seeders,
                peers: compact_peers(cur.rest(), v6),
            })
        }
        ACTION_SCRAPE => {
            let scraped = cur
                .rest()
                .chunks_exact(12)
                .take(MAX_SCRAPE_HASHES)
                .map(|entry| {
                    let mut e = Cursor { rest: entry };
                    Scraped {
                        seeders: e.u32().unwrap_or(0),
                        completed: e.u32().unwrap_or(0),
                        leechers: e.u32().unwrap_or(0),
                    }
                })
                .collect();
            Ok(Response::Scrape { txid, scraped })
        }
        ACTION_ERROR => Ok(Response::Error {
            txid,
            message: clean_text(cur.rest()),
        }),
        other => Err(PacketError::UnknownAction(other)),
    }
}

/// Whether `addr` is really IPv6 (an IPv4-mapped address, as a dual-stack
/// socket reports IPv4 peers, is IPv4).
fn is_v6(addr: SocketAddr) -> bool {
    matches!(addr.ip().to_canonical(), IpAddr::V6(_))
}

/// Whether a datagram from `from` comes from `tracker`, ignoring IPv4
/// mapping and IPv6 flow info.
fn same_peer(from: SocketAddr, tracker: SocketAddr) -> bool {
    from.port() == tracker.port() && from.ip().to_canonical() == tracker.ip().to_canonical()
}

/// What an exchange asks a UDP tracker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UdpRequest {
    /// An announce.
    Announce(AnnounceRequest),
    /// A scrape of 1 to [`MAX_SCRAPE_HASHES`] torrents.
    Scrape(Vec<[u8; 20]>),
}

/// How a UDP tracker answered an exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UdpReply {
    /// The announce worked. `interval`, `complete` and `incomplete` are
    /// always set; there is no warning, minimum interval or tracker id in
    /// UDP.
    Announced(Announced),
    /// The scrape worked: one entry per hash asked, in order (fewer if the
    /// tracker sent fewer).
    Scraped(Vec<Scraped>),
    /// The tracker refused with an error reply: its text.
    Failure(String),
}

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// The tracker's address.
    pub destination: SocketAddr,
    /// The packet.
    pub payload: Vec<u8>,
}

/// One outstanding request (connect, announce or scrape) and its
/// retransmission schedule.
#[derive(Debug, Clone, Copy)]
struct Txn {
    txid: u32,
    /// When to send (again); `None` once that time is not representable.
    next_send: Option<Instant>,
    /// Times sent: the `n` of `base * 2^n`.
    sent: u32,
}

impl Txn {
    fn new(txid: u32, now: Instant) -> Txn {
        Txn {
            txid,
            next_send: Some(now),
            sent: 0,
        }
    }

    fn due(&self, now: Instant) -> bool {
        self.next_send.is_some_and(|t| t <= now)
    }

    /// Records a send at `now`: the next one is due `base * 2^n` later.
    fn record_send(&mut self, now: Instant, base: Duration) {
        let wait = base.saturating_mul(1 << self.sent.min(MAX_DOUBLINGS));
        self.next_send = now.checked_add(wait);
        self.sent = self.sent.saturating_add(1);
    }
}

/// Where an exchange is.
#[derive(Debug)]
enum Step {
    /// Waiting for its tracker's connect transaction (in `connects`).
    Connecting,
    /// Sending the request itself.
    Requesting {
        connection_id: u64,
        /// When the connection id was obtained, for its lifetime.
        obtained: Instant,
        /// The id was obtained during this exchange (not from the cache).
        fresh: bool,
        txn: Txn,
    },
}

/// One announce or scrape, from `start` to its result.
#[derive(Debug)]
struct Exchange {
    tracker: SocketAddr,
    request: UdpRequest,
    deadline: Instant,
    step: Step,
    /// Packets sent for it (shared connects included), for the timeout
    /// message.
    packets: u32,
    /// The one reconnect after an error on a cached connection id is
    /// still available.
    may_reconnect: bool,
}

/// A connect transaction, shared by the exchanges waiting on it.
#[derive(Debug)]
struct ConnectTxn {
    txn: Txn,
    /// Exchange ids; never empty (the transaction goes with the last).
    waiters: Vec<u64>,
}

/// Who is waiting for a transaction id's reply.
#[derive(Debug, Clone, Copy)]
enum Owner {
    Connect(SocketAddr),
    Exchange(u64),
}

#[derive(Debug, Clone, Copy)]
struct CachedId {
    id: u64,
    obtained: Instant,
}

fn still_valid(obtained: Instant, now: Instant) -> bool {
    now.saturating_duration_since(obtained) < CONNECTION_ID_LIFETIME
}

/// The client side of BEP 15 for any number of trackers and exchanges.
///
/// Connection ids are cached per tracker address for
/// [`CONNECTION_ID_LIFETIME`], and exchanges waiting for the same
/// tracker's connection share one connect. A request unanswered after
/// `base * 2^n` is sent again (n from 0, doubling each time, restarting at
/// 0 for the request after the connect); an exchange that is not answered
/// by `start + exchange_timeout` ends with [`TrackerError::UdpTimeout`].
#[derive(Debug)]
pub struct UdpClient {
    rng: fastrand::Rng,
    base: Duration,
    timeout: Duration,
    /// By id; a BTreeMap so that packets due together go out in a
    /// deterministic order.
    exchanges: BTreeMap<u64, Exchange>,
    connects: BTreeMap<SocketAddr, ConnectTxn>,
    txids: HashMap<u32, Owner>,
    cache: HashMap<SocketAddr, CachedId>,
    results: VecDeque<(u64, Result<UdpReply, TrackerError>)>,
}

impl UdpClient {
    /// A client with no exchanges. `rng` draws transaction ids;
    /// `retransmit_base` is BEP 15's 15 s (at least 1 ms is used);
    /// `exchange_timeout` bounds each exchange, connect included (at most
    /// a day is used).
    pub fn new(rng: fastrand::Rng, retransmit_base: Duration, exchange_timeout: Duration) -> Self {
        UdpClient {
            rng,
            base: retransmit_base.max(MIN_RETRANSMIT_BASE),
            timeout: exchange_timeout.min(MAX_EXCHANGE_TIMEOUT),
            exchanges: BTreeMap::new(),
            connects: BTreeMap::new(),
            txids: HashMap::new(),
            cache: HashMap::new(),
            results: VecDeque::new(),
        }
    }

    /// Starts exchange `id` (the caller's id, echoed with the result) with
    /// the tracker at `tracker`. The first packet is due at once.
    ///
    /// Fails if `id` is in flight or its result is uncollected, if
    /// [`MAX_IN_FLIGHT`] is reached, or if a scrape has no hash or more
    /// than [`MAX_SCRAPE_HASHES`].
    pub fn start(
        &mut self,
        id: u64,
        tracker: SocketAddr,
        request: UdpRequest,
        now: Instant,
    ) -> Result<(), TrackerError> {
        if self.exchanges.contains_key(&id) || self.results.iter().any(|(r, _)| *r == id) {
            return Err(TrackerError::BadRequest(format!(
                "exchange id {id} is already in use"
            )));
        }
        if self.exchanges.len() + self.results.len() >= MAX_IN_FLIGHT {
            return Err(TrackerError::TooBusy(MAX_IN_FLIGHT));
        }
        if let UdpRequest::Scrape(hashes) = &request {
            if hashes.is_empty() {
                return Err(TrackerError::BadRequest(
                    "a scrape needs at least one info hash".into(),
                ));
            }
            if hashes.len() > MAX_SCRAPE_HASHES {
                return Err(TrackerError::BadRequest(format!(
                    "a UDP scrape takes at most {MAX_SCRAPE_HASHES} info hashes, not {}",
                    hashes.len()
                )));
            }
        }
        // Only reachable with an `Instant` near the end of its range; the
        // exchange then ends at once rather than panicking.
        let deadline = now.checked_add(self.timeout).unwrap_or(now);
        self.exchanges.insert(
            id,
            Exchange {
                tracker,
                request,
                deadline,
                step: Step::Connecting,
                packets: 0,
                may_reconnect: true,
            },
        );
        self.begin(id, now);
        Ok(())
    }

    /// Forgets exchange `id`, and its result if not yet collected. A shared
    /// connect goes on for the other exchanges waiting on it.
    pub fn cancel(&mut self, id: u64) {
        self.detach(id);
        self.results.retain(|(r, _)| *r != id);
    }

    /// Whether `data` from `from` looks like the reply to one of our
    /// requests: a known action, and a transaction id outstanding with
    /// that tracker. The peer port's one UDP socket also carries DHT and
    /// uTP traffic; this tells tracker replies apart from them (as
    /// Transmission's `tr-udp.cc` does) without parsing further.
    pub fn expects(&self, from: SocketAddr, data: &[u8]) -> bool {
        let (Some(action), Some(txid)) = (data.get(..4), data.get(4..8)) else {
            return false;
        };
        let action = u32::from_be_bytes([action[0], action[1], action[2], action[3]]);
        let txid = u32::from_be_bytes([txid[0], txid[1], txid[2], txid[3]]);
        if action > 3 {
            return false;
        }
        match self.txids.get(&txid) {
            Some(Owner::Connect(tracker)) => same_peer(from, *tracker),
            Some(Owner::Exchange(id)) => self
                .exchanges
                .get(id)
                .is_some_and(|e| same_peer(from, e.tracker)),
            None => false,
        }
    }

    /// A datagram received from `from`. Anything that is not the expected
    /// reply to an outstanding request is logged and ignored.
    pub fn handle_datagram(&mut self, from: SocketAddr, data: &[u8], now: Instant) {
        let response = match parse_response(data, is_v6(from)) {
            Ok(response) => response,
            Err(e) => {
                log::debug!("ignoring UDP datagram from {from}: {e}");
                return;
            }
        };
        let txid = response.txid();
        match self.txids.get(&txid).copied() {
            None => log::debug!(
                "ignoring UDP tracker {} reply from {from}: unknown transaction id {txid:#x}",
                response.kind()
            ),
            Some(Owner::Connect(tracker)) => {
                if !same_peer(from, tracker) {
                    log::debug!("ignoring UDP datagram from {from}: expected it from {tracker}");
                    return;
                }
                match response {
                    Response::Connect { connection_id, .. } => {
                        self.connected(tracker, connection_id, now)
                    }
                    Response::Error { message, .. } => self.connect_refused(tracker, &message),
                    other => log::debug!(
                        "ignoring UDP tracker {} reply from {from} to a connect",
                        other.kind()
                    ),
                }
            }
            Some(Owner::Exchange(id)) => self.exchange_reply(id, from, response, now),
        }
    }

    /// The next datagram due at `now` (a first send or a retransmission),
    /// if any; call until `None`. Exchanges past their deadline end first.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        self.expire(now);
        self.renew_stale(now);
        let base = self.base;
        if let Some((&tracker, connect)) = self
            .connects
            .iter_mut()
            .find(|(_, connect)| connect.txn.due(now))
        {
            connect.txn.record_send(now, base);
            let payload = encode_connect(connect.txn.txid);
            for waiter in &connect.waiters {
                if let Some(exchange) = self.exchanges.get_mut(waiter) {
                    exchange.packets = exchange.packets.saturating_add(1);
                }
            }
            return Some(Transmit {
                destination: tracker,
                payload,
            });
        }
        self.exchanges.values_mut().find_map(|exchange| {
            let Step::Requesting {
                connection_id, txn, ..
            } = &mut exchange.step
            else {
                return None;
            };
            if !txn.due(now) {
                return None;
            }
            txn.record_send(now, base);
            exchange.packets = exchange.packets.saturating_add(1);
            let payload = match &exchange.request {
                UdpRequest::Announce(req) => encode_announce(*connection_id, txn.txid, req),
                UdpRequest::Scrape(hashes) => encode_scrape(*connection_id, txn.txid, hashes),
            };
            Some(Transmit {
                destination: exchange.tracker,
                payload,
            })
        })
    }

    /// The earliest instant something is due: a send, a retransmission or
    /// a deadline. `None` with nothing in flight.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let connects = self.connects.values().filter_map(|c| c.txn.next_send);
        let exchanges = self.exchanges.values().flat_map(|e| {
            let send = match &e.step {
                Step::Requesting { txn, .. } => txn.next_send,
                Step::Connecting => None,
            };
            [Some(e.deadline), send].into_iter().flatten()
        });
        connects.chain(exchanges).min()
    }

    /// Ends the exchanges whose deadline has come and drops expired
    /// connection ids. Retransmissions then come from `poll_transmit`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.expire(now);
        self.cache.retain(|_, c| still_valid(c.obtained, now));
    }

    /// A finished exchange: its id and outcome.
    pub fn poll_result(&mut self) -> Option<(u64, Result<UdpReply, TrackerError>)> {
        self.results.pop_front()
    }

    /// Exchanges started and not yet finished.
    pub fn in_flight(&self) -> usize {
        self.exchanges.len()
    }

    /// A transaction id no outstanding request uses, registered to `owner`.
    fn new_txid(&mut self, owner: Owner) -> u32 {
        // At most MAX_IN_FLIGHT * 2 ids are taken out of 2^32, so this
        // loops more than once about never.
        loop {
            let txid = self.rng.u32(..);
            if let std::collections::hash_map::Entry::Vacant(slot) = self.txids.entry(txid) {
                slot.insert(owner);
                return txid;
            }
        }
    }

    /// Moves exchange `id` to its request, with a cached connection id if
    /// there is one, else to (a shared) connect.
    fn begin(&mut self, id: u64, now: Instant) {
        let Some(tracker) = self.exchanges.get(&id).map(|e| e.tracker) else {
            return;
        };
        let cached = self
            .cache
            .get(&tracker)
            .copied()
            .filter(|c| still_valid(c.obtained, now));
        match cached {
            Some(c) => self.request_with(id, c.id, c.obtained, false, now),
            None => self.join_connect(id, tracker, now),
        }
    }

    /// Puts exchange `id` on connection `connection_id`, its request due
    /// at once with n back at 0.
    fn request_with(
        &mut self,
        id: u64,
        connection_id: u64,
        obtained: Instant,
        fresh: bool,
        now: Instant,
    ) {
        self.drop_request_txid(id);
        if !self.exchanges.contains_key(&id) {
            return;
        }
        let txid = self.new_txid(Owner::Exchange(id));
        if let Some(exchange) = self.exchanges.get_mut(&id) {
            exchange.step = Step::Requesting {
                connection_id,
                obtained,
                fresh,
                txn: Txn::new(txid, now),
            };
        }
    }

    /// Makes exchange `id` wait for `tracker`'s connect, starting one if
    /// none is outstanding.
    fn join_connect(&mut self, id: u64, tracker: SocketAddr, now: Instant) {
        self.drop_request_txid(id);
        let Some(exchange) = self.exchanges.get_mut(&id) else {
            return;
        };
        exchange.step = Step::Connecting;
        if let Some(connect) = self.connects.get_mut(&tracker) {
            if !connect.waiters.contains(&id) {
                connect.waiters.push(id);
            }
            return;
        }
        let txid = self.new_txid(Owner::Connect(tracker));
        self.connects.insert(
            tracker,
            ConnectTxn {
                txn: Txn::new(txid, now),
                waiters: vec![id],
            },
        );
    }

    /// Unregisters the transaction id of exchange `id`'s request, if it is
    /// at that step.
    fn drop_request_txid(&mut self, id: u64) {
        if let Some(Exchange {
            step: Step::Requesting { txn, .. },
            ..
        }) = self.exchanges.get(&id)
        {
            self.txids.remove(&txn.txid);
        }
    }

    /// Removes exchange `id` and everything that refers to it.
    fn detach(&mut self, id: u64) -> Option<Exchange> {
        self.drop_request_txid(id);
        let exchange = self.exchanges.remove(&id)?;
        if matches!(exchange.step, Step::Connecting) {
            if let Some(connect) = self.connects.get_mut(&exchange.tracker) {
                connect.waiters.retain(|w| *w != id);
                if connect.waiters.is_empty() {
                    let txid = connect.txn.txid;
                    self.connects.remove(&exchange.tracker);
                    self.txids.remove(&txid);
                }
            }
        }
        Some(exchange)
    }

    /// Ends exchange `id` with `result`.
    fn finish(&mut self, id: u64, result: Result<UdpReply, TrackerError>) {
        if self.detach(id).is_some() {
            self.results.push_back((id, result));
        }
    }

    /// Ends the exchanges whose deadline is `now` or earlier.
    fn expire(&mut self, now: Instant) {
        let late: Vec<(u64, u32)> = self
            .exchanges
            .iter()
            .filter(|(_, e)| e.deadline <= now)
            .map(|(id, e)| (*id, e.packets))
            .collect();
        for (id, packets) in late {
            self.finish(id, Err(TrackerError::UdpTimeout(packets)));
        }
    }

    /// Sends exchanges whose retransmission is due on an expired
    /// connection id back to get a new one.
    fn renew_stale(&mut self, now: Instant) {
        let stale: Vec<u64> = self
            .exchanges
            .iter()
            .filter(|(_, e)| match &e.step {
                Step::Requesting { obtained, txn, .. } => {
                    txn.due(now) && !still_valid(*obtained, now)
                }
                Step::Connecting => false,
            })
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            self.begin(id, now);
        }
    }

    /// `tracker` answered its connect: remember the id and send the
    /// waiting requests.
    fn connected(&mut self, tracker: SocketAddr, connection_id: u64, now: Instant) {
        let Some(connect) = self.connects.remove(&tracker) else {
            return;
        };
        self.txids.remove(&connect.txn.txid);
        self.remember(tracker, connection_id, now);
        for id in connect.waiters {
            self.request_with(id, connection_id, now, true, now);
        }
    }

    /// `tracker` answered its connect with an error: every waiting
    /// exchange fails with its text.
    fn connect_refused(&mut self, tracker: SocketAddr, message: &str) {
        let Some(connect) = self.connects.remove(&tracker) else {
            return;
        };
        self.txids.remove(&connect.txn.txid);
        for id in connect.waiters {
            self.finish(id, Ok(UdpReply::Failure(message.to_string())));
        }
    }

    fn remember(&mut self, tracker: SocketAddr, id: u64, now: Instant) {
        self.cache.retain(|_, c| still_valid(c.obtained, now));
        if self.cache.len() >= MAX_CACHED_CONNECTIONS && !self.cache.contains_key(&tracker) {
            let oldest = self
                .cache
                .iter()
                .min_by_key(|(_, c)| c.obtained)
                .map(|(addr, _)| *addr);
            if let Some(addr) = oldest {
                self.cache.remove(&addr);
            }
        }
        self.cache.insert(tracker, CachedId { id, obtained: now });
    }

    /// The reply to exchange `id`'s announce or scrape.
    fn exchange_reply(&mut self, id: u64, from: SocketAddr, response: Response, now: Instant) {
        let Some(exchange) = self.exchanges.get_mut(&id) else {
            return;
        };
        let tracker = exchange.tracker;
        if !same_peer(from, tracker) {
            log::debug!("ignoring UDP datagram from {from}: expected it from {tracker}");
            return;
        }
        let Step::Requesting {
            connection_id,
            fresh,
            ..
        } = exchange.step
        else {
            return;
        };
        let result = match (&exchange.request, response) {
            (
                UdpRequest::Announce(_),
                Response::Announce {
                    interval,
                    leechers,
                    seeders,
                    peers,
                    ..
                },
            ) => UdpReply::Announced(Announced {
                interval: Some(interval),
                complete: Some(seeders),
                incomplete: Some(leechers),
                peers,
                ..Announced::default()
            }),
            (UdpRequest::Scrape(hashes), Response::Scrape { mut scraped, .. }) => {
                scraped.truncate(hashes.len());
                UdpReply::Scraped(scraped)
            }
            (_, Response::Error { message, .. }) if !fresh && exchange.may_reconnect => {
                // The id came from the cache: the tracker may have
                // restarted and forgotten it. Try once with a new one.
                log::debug!(
                    "UDP tracker {tracker} refused a cached connection id ({message}); \
                     reconnecting"
                );
                exchange.may_reconnect = false;
                if self
                    .cache
                    .get(&tracker)
                    .is_some_and(|c| c.id == connection_id)
                {
                    self.cache.remove(&tracker);
                }
                self.begin(id, now);
                return;
            }
            (_, Response::Error { message, .. }) => UdpReply::Failure(message),
            (_, other) => {
                log::debug!(
                    "ignoring UDP tracker {} reply from {from}: wrong action for this request",
                    other.kind()
                );
                return;
            }
        };
        self.finish(id, Ok(result));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr, UdpSocket};

    const BASE: Duration = Duration::from_secs(15);
    const TIMEOUT: Duration = Duration::from_secs(60);

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn client() -> UdpClient {
        UdpClient::new(fastrand::Rng::with_seed(7), BASE, TIMEOUT)
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn request() -> AnnounceRequest {
        AnnounceRequest {
            info_hash: [0xaa; 20],
            peer_id: *b"-TR0001-abcdefghijkl",
            port: 51413,
            uploaded: 3,
            downloaded: 1,
            left: 2,
            event: Some(AnnounceEvent::Started),
            numwant: 50,
            key: 0xdead_beef,
            trackerid: None,
            compact: true,
        }
    }

    fn be32(p: &[u8], at: usize) -> u32 {
        u32::from_be_bytes(p[at..at + 4].try_into().unwrap())
    }

    fn be64(p: &[u8], at: usize) -> u64 {
        u64::from_be_bytes(p[at..at + 8].try_into().unwrap())
    }

    fn header(action: u32, txid: u32) -> Vec<u8> {
        let mut out = action.to_be_bytes().to_vec();
        out.extend_from_slice(&txid.to_be_bytes());
        out
    }

    fn connect_reply(txid: u32, id: u64) -> Vec<u8> {
        let mut out = header(ACTION_CONNECT, txid);
        out.extend_from_slice(&id.to_be_bytes());
        out
    }

    fn announce_reply(
        txid: u32,
        interval: u32,
        leechers: u32,
        seeders: u32,
        peers: &[u8],
    ) -> Vec<u8> {
        let mut out = header(ACTION_ANNOUNCE, txid);
        for n in [interval, leechers, seeders] {
            out.extend_from_slice(&n.to_be_bytes());
        }
        out.extend_from_slice(peers);
        out
    }

    fn scrape_reply(txid: u32, entries: &[(u32, u32, u32)]) -> Vec<u8> {
        let mut out = header(ACTION_SCRAPE, txid);
        for &(s, c, l) in entries {
            for n in [s, c, l] {
                out.extend_from_slice(&n.to_be_bytes());
            }
        }
        out
    }

    fn error_reply(txid: u32, text: &[u8]) -> Vec<u8> {
        let mut out = header(ACTION_ERROR, txid);
        out.extend_from_slice(text);
        out
    }

    /// A tracker good enough to talk to the client: it hands out
    /// connection ids, accepts only those, and logs what it receives.
    struct FakeTracker {
        addr: SocketAddr,
        next_id: u64,
        accepted: Vec<u64>,
        /// Connect packets still to drop.
        drop_connects: usize,
        /// Announce/scrape packets still to drop.
        drop_requests: usize,
        /// Refuse announces and scrapes with this text.
        refuse: Option<&'static [u8]>,
        peers: Vec<u8>,
        /// (time, action, connection id) of every packet received.
        log: Vec<(Instant, u32, u64)>,
    }

    impl FakeTracker {
        fn new(addr: SocketAddr) -> Self {
            FakeTracker {
                addr,
                next_id: 0x1000,
                accepted: Vec::new(),
                drop_connects: 0,
                drop_requests: 0,
                refuse: None,
                peers: vec![10, 0, 0, 1, 0x1a, 0xe1, 10, 0, 0, 2, 0x1a, 0xe2],
                log: Vec::new(),
            }
        }

        fn handle(&mut self, p: &[u8], now: Instant) -> Option<Vec<u8>> {
            let (conn, action, txid) = (be64(p, 0), be32(p, 8), be32(p, 12));
            self.log.push((now, action, conn));
            if action == ACTION_CONNECT {
                assert_eq!((p.len(), conn), (CONNECT_LEN, PROTOCOL_ID));
                if self.drop_connects > 0 {
                    self.drop_connects -= 1;
                    return None;
                }
                self.next_id += 1;
                self.accepted.push(self.next_id);
                return Some(connect_reply(txid, self.next_id));
            }
            if self.drop_requests > 0 {
                self.drop_requests -= 1;
                return None;
            }
            if !self.accepted.contains(&conn) {
                return Some(error_reply(txid, b"Connection ID missmatch.\0"));
            }
            if let Some(text) = self.refuse {
                return Some(error_reply(txid, text));
            }
            match action {
                ACTION_ANNOUNCE => {
                    assert_eq!(p.len(), ANNOUNCE_LEN);
                    Some(announce_reply(txid, 1800, 3, 5, &self.peers))
                }
                ACTION_SCRAPE => {
                    let n = u32::try_from((p.len() - 16) / 20).unwrap();
                    let entries: Vec<_> = (1..=n).map(|i| (i, i * 10, i * 100)).collect();
                    Some(scrape_reply(txid, &entries))
                }
                other => panic!("unexpected action {other}"),
            }
        }

        /// (seconds since `t0`, action) of every packet received.
        fn times(&self, t0: Instant) -> Vec<(u64, u32)> {
            self.log
                .iter()
                .map(|(t, a, _)| (t.duration_since(t0).as_secs(), *a))
                .collect()
        }
    }

    /// Hands everything due at `now` to the tracker and its replies back.
    fn pump(c: &mut UdpClient, t: &mut FakeTracker, now: Instant) {
        while let Some(tx) = c.poll_transmit(now) {
            assert_eq!(tx.destination, t.addr);
            if let Some(reply) = t.handle(&tx.payload, now) {
                c.handle_datagram(t.addr, &reply, now);
            }
        }
    }

    /// Runs the client's timers from `start` until it is idle or the next
    /// event is past `until`; returns the time reached.
    fn run(c: &mut UdpClient, t: &mut FakeTracker, start: Instant, until: Instant) -> Instant {
        let mut now = start;
        for _ in 0..1000 {
            c.handle_timeout(now);
            pump(c, t, now);
            match c.poll_timeout() {
                Some(next) if next <= until => {
                    assert!(next > now, "poll_timeout did not move on");
                    now = next;
                }
                _ => return now,
            }
        }
        panic!("the client never settled");
    }

    fn results(c: &mut UdpClient) -> Vec<(u64, Result<UdpReply, TrackerError>)> {
        std::iter::from_fn(|| c.poll_result()).collect()
    }

    fn announced(result: Option<(u64, Result<UdpReply, TrackerError>)>) -> (u64, Announced) {
        match result {
            Some((id, Ok(UdpReply::Announced(a)))) => (id, a),
            other => panic!("expected an announce reply, got {other:?}"),
        }
    }

    #[test]
    fn encodes_a_connect_request() {
        assert_eq!(
            encode_connect(0xdead_beef),
            [0, 0, 0x04, 0x17, 0x27, 0x10, 0x19, 0x80, 0, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef]
        );
    }

    #[test]
    fn encodes_an_announce_request() {
        let packet = encode_announce(0x0102_0304_0506_0708, 0x0a0b_0c0d, &request());
        let mut expected = vec![1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 1, 0x0a, 0x0b, 0x0c, 0x0d];
        expected.extend_from_slice(&[0xaa; 20]);
        expected.extend_from_slice(b"-TR0001-abcdefghijkl");
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 1]); // downloaded
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 2]); // left
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 3]); // uploaded
        expected.extend_from_slice(&[0, 0, 0, 2]); // started
        expected.extend_from_slice(&[0, 0, 0, 0]); // ip
        expected.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]); // key
        expected.extend_from_slice(&[0, 0, 0, 50]); // num_want
        expected.extend_from_slice(&[0xc8, 0xd5]); // port 51413
        assert_eq!(packet, expected);
        assert_eq!(packet.len(), ANNOUNCE_LEN);

        let mut req = request();
        for (event, code) in [
            (None, 0),
            (Some(AnnounceEvent::Completed), 1),
            (Some(AnnounceEvent::Started), 2),
            (Some(AnnounceEvent::Stopped), 3),
        ] {
            req.event = event;
            assert_eq!(be32(&encode_announce(0, 0, &req), 80), code);
        }
        // num_want is signed on the wire: never sent negative by accident.
        req.numwant = u32::MAX;
        assert_eq!(be32(&encode_announce(0, 0, &req), 92), 0x7fff_ffff);
    }

    #[test]
    fn encodes_a_scrape_request() {
        let packet = encode_scrape(9, 0x11, &[[1; 20], [2; 20]]);
        let mut expected = vec![0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 2, 0, 0, 0, 0x11];
        expected.extend_from_slice(&[1; 20]);
        expected.extend_from_slice(&[2; 20]);
        assert_eq!(packet, expected);
        let many = vec![[3; 20]; MAX_SCRAPE_HASHES + 6];
        assert_eq!(
            encode_scrape(9, 0x11, &many).len(),
            16 + 20 * MAX_SCRAPE_HASHES
        );
    }

    #[test]
    fn parses_every_reply_kind() {
        assert_eq!(
            parse_response(&[0, 0, 0, 0, 0, 0, 0, 7, 1, 2, 3, 4, 5, 6, 7, 8], false),
            Ok(Response::Connect {
                txid: 7,
                connection_id: 0x0102_0304_0506_0708
            })
        );
        let peers = [10, 0, 0, 1, 0x1a, 0xe1, 10, 0, 0, 2, 0, 0, 1, 2, 3];
        assert_eq!(
            parse_response(&announce_reply(8, 1800, 3, 5, &peers), false),
            Ok(Response::Announce {
                txid: 8,
                interval: secs(1800),
                leechers: 3,
                seeders: 5,
                // port 0 skipped, partial entry ignored
                peers: vec![addr("10.0.0.1:6881")],
            })
        );
        let mut peers6 = vec![0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 7];
        peers6.extend_from_slice(&[0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 8]);
        match parse_response(&announce_reply(8, 60, 0, 0, &peers6), true) {
            Ok(Response::Announce { peers, .. }) => assert_eq!(
                peers,
                vec![addr("[2001:db8::1]:7"), addr("[2001:db8::2]:8")]
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            parse_response(&scrape_reply(9, &[(1, 2, 3), (4, 5, 6)]), false),
            Ok(Response::Scrape {
                txid: 9,
                scraped: vec![
                    Scraped {
                        seeders: 1,
                        completed: 2,
                        leechers: 3
                    },
                    Scraped {
                        seeders: 4,
                        completed: 5,
                        leechers: 6
                    },
                ]
            })
        );
        assert_eq!(
            parse_response(&error_reply(10, b"bad\x1b[31m torrent\0"), false),
            Ok(Response::Error {
                txid: 10,
                message: "bad [31m torrent".into()
            })
        );
        assert_eq!(
            parse_response(&error_reply(10, b""), false),
            Ok(Response::Error {
                txid: 10,
                message: String::new()
            })
        );
    }

    #[test]
    fn bounds_what_a_reply_yields() {
        match parse_response(&announce_reply(1, u32::MAX, 0, 0, &[]), false) {
            Ok(Response::Announce { interval, .. }) => assert_eq!(interval, MAX_INTERVAL),
            other => panic!("{other:?}"),
        }
        let entries = vec![(1, 1, 1); 200];
        match parse_response(&scrape_reply(1, &entries), false) {
            Ok(Response::Scrape { scraped, .. }) => assert_eq!(scraped.len(), MAX_SCRAPE_HASHES),
            other => panic!("{other:?}"),
        }
        let long = vec![b'x'; 5000];
        match parse_response(&error_reply(1, &long), false) {
            Ok(Response::Error { message, .. }) => {
                assert_eq!(message.len(), super::super::announce::MAX_TEXT)
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn short_and_unknown_packets_are_errors() {
        assert_eq!(
            parse_response(&[], false),
            Err(PacketError::TooShort {
                action: None,
                len: 0
            })
        );
        assert_eq!(
            parse_response(&[0, 0, 0, 0, 0, 0, 0], false),
            Err(PacketError::TooShort {
                action: None,
                len: 7
            })
        );
        let connect = connect_reply(1, 2);
        assert_eq!(
            parse_response(&connect[..15], false),
            Err(PacketError::TooShort {
                action: Some(0),
                len: 15
            })
        );
        let announce = announce_reply(1, 2, 3, 4, &[]);
        assert_eq!(
            parse_response(&announce[..19], false),
            Err(PacketError::TooShort {
                action: Some(1),
                len: 19
            })
        );
        assert_eq!(
            parse_response(&header(4, 1), false),
            Err(PacketError::UnknownAction(4))
        );
        assert_eq!(
            PacketError::TooShort {
                action: Some(1),
                len: 19
            }
            .to_string(),
            "a 19-byte datagram is too short for a reply with action 1"
        );
        assert!(PacketError::TooShort {
            action: None,
            len: 3
        }
        .to_string()
        .contains("too short"));
        assert!(PacketError::UnknownAction(9).to_string().contains("9"));
        // Every prefix of every kind, and random junk: errors, no panics.
        let mut rng = fastrand::Rng::with_seed(1);
        let samples = [
            connect_reply(1, 2),
            announce_reply(1, 2, 3, 4, &[1; 40]),
            scrape_reply(1, &[(1, 2, 3)]),
            error_reply(1, b"no"),
        ];
        for sample in &samples {
            for cut in 0..=sample.len() {
                let _ = parse_response(&sample[..cut], rng.bool());
            }
        }
        for _ in 0..2000 {
            let len = rng.usize(..64);
            let junk: Vec<u8> = (0..len).map(|_| rng.u8(..4)).collect();
            let _ = parse_response(&junk, rng.bool());
        }
    }

    #[test]
    fn a_full_announce_exchange() {
        let t0 = Instant::now();
        let mut tracker = FakeTracker::new(addr("10.0.0.1:6969"));
        let mut c = client();
        c.start(1, tracker.addr, UdpRequest::Announce(request()), t0)
            .unwrap();
        assert_eq!(c.in_flight(), 1);
        assert_eq!(c.poll_timeout(), Some(t0));
        pump(&mut c, &mut tracker, t0);
        let (id, a) = announced(c.poll_result());
        assert_eq!(id, 1);
        assert_eq!(
            a,
            Announced {
                interval: Some(secs(1800)),
                complete: Some(5),
                incomplete: Some(3),
                peers: vec![addr("10.0.0.1:6881"), addr("10.0.0.2:6882")],
                ..Announced::default()
            }
        );
        assert_eq!(
            tracker.times(t0),
            [(0, ACTION_CONNECT), (0, ACTION_ANNOUNCE)]
        );
        assert_eq!(tracker.log[1].2, 0x1001, "announce uses the id given");
        assert_eq!(c.in_flight(), 0);
        assert_eq!(c.poll_timeout(), None);
        assert_eq!(c.poll_result(), None);
        assert!(c.txids.is_empty() && c.connects.is_empty());
    }

    #[test]
    fn retransmits_after_base_then_doubling() {
        let t0 = Instant::now();
        let mut tracker = FakeTracker::new(addr("10.0.0.1:6969"));
        tracker.drop_connects = 2;
        let mut c = client();
        c.start(1, tracker.addr, UdpRequest::Announce(request()), t0)
            .unwrap();
        let first = c.poll_transmit(t0).unwrap();
        assert_eq!(c.poll_transmit(t0), None);
        assert_eq!(c.poll_timeout(), Some(t0 + BASE));
        assert_eq!(c.poll_transmit(t0 + BASE - Duration::from_millis(1)), None);
        let second = c.poll_transmit(t0 + BASE).unwrap();
        assert_eq!(second, first, "a retransmission repeats the packet");
        assert_eq!(c.poll_timeout(), Some(t0 + 3 * BASE));
        c.cancel(1);

        c.start(2, tracker.addr, UdpRequest::Announce(request()), t0)
            .unwrap();
        run(&mut c, &mut tracker, t0, t0 + secs(600));
        assert_eq!(
            tracker.times(t0),
            [
                (0, ACTION_CONNECT),
                (15, ACTION_CONNECT),
                (45, ACTION_CONNECT),
                (45, ACTION_ANNOUNCE)
            ]
        );
        assert_eq!(announced(c.poll_result()).0, 2);
    }

    #[test]
    fn the_deadline_ends_the_exchange() {
        let t0 = Instant::now();
        let mut tracker = FakeTracker::new(addr("10.0.0.1:6969"));
        tracker.drop_connects = usize::MAX;
        let mut c = client();
        c.start(1, tracker.addr, UdpRequest::Announce(request()), t0)
            .unwrap();
        let end = run(&mut c, &mut tracker, t0, t0 + secs(600));
        assert_eq!(end, t0 + TIMEOUT);
        assert_eq!(
            tracker.times(t0),
            [
                (0, ACTION_CONNECT),
                (15, ACTION_CONNECT),
                (45, ACTION_CONNECT)
            ]
        );
        let got = results(&mut c);
        assert_eq!(got, [(1, Err(TrackerError::UdpTimeout(3)))]);
        assert_eq!(
            TrackerError::UdpTimeout(3).to_string(),
            "UDP tracker did not answer (3 packets sent)"
        );
        assert_eq!(c.poll_timeout(), None);
        assert_eq!(c.poll_transmit(t0 + secs(1000)), None);
        assert!(c.txids.is_empty() && c.connects.is_empty());
    }

    #[test]
    fn the_request_step_restarts_backoff_but_keeps_the_deadline() {
        let t0 = Instant::now();
        let mut tracker = FakeTracker::new(addr("10.0.0.1:6969"));
        tracker.drop_connects = 2;
        tracker.drop_requests = usize::MAX;
        let mut c = UdpClient::new(fastrand::Rng::with_seed(3), BASE, secs(120));
        c.start(1, tracker.addr, UdpRequest::Announce(request()), t0)
            .unwrap();
        run(&mut c, &mut tracker, t0, t0 + secs(600));
        assert_eq!(
            tracker.times(t0),
            [
                (0, ACTION_CONNECT),
                (15, ACTION_CONNECT),
                (45, ACTION_CONNECT),
                (45, ACTION_ANNOUNCE),
                (60, ACTION_ANNOUNCE),
                (90, ACTION_ANNOUNCE),
            ]
        );
        assert_eq!(results(&mut c), [(1, Err(TrackerError::UdpTimeout(6)))]);
    }

    #[test]
    fn reuses_the_connection_id_for_a_minute() {
        let t0 = Instant::now();
        let mut tracker = FakeTracker::new(addr("10.0.0.1:6969"));
        let mut c = client();
        for (id, at) in [(1, 0), (2, 59), (3, 60), (4, 61)] {
            c.start(
                id,
                tracker.addr,
                UdpRequest::Announce(request()),
                t0 + secs(at),
            )
            .unwrap();
            pump(&mut c, &mut tracker, t0 + secs(at));
            assert_eq!(announced(c.poll_result()).0, id);
        }
        let log: Vec<_> = tracker
            .log
            .iter()
            .map(|(t, a, conn)| (t.duration_since(t0).as_secs(), *a, *conn))
            .collect();
        assert_eq!(
            log,
            [
                (0, ACTION_CONNECT, PROTOCOL_ID),
                (0, ACTION_ANNOUNCE, 0x1001),
                (59, ACTION_ANNOUNCE, 0x1001),
                (60, ACTION_CONNECT, PROTOCOL_ID),
                (60, ACTION_ANNOUNCE, 0x1002),
                (61, ACTION_ANNOUNCE, 0x1002),
            ]
        );
        // Expired ids are dropped, not kept forever.
        assert_eq!(c.cache.len(), 1);
        c.handle_timeout(t0 + secs(120));
        assert!(c.cache.is_empty());
    }

    #[test]
    fn an_id_expiring_during_retransmission_is_renewed() {
        let t0 = Instant::now();
        let mut tracker = FakeTracker::new(addr("10.0.0.1:6969"));
        let mut c = client();
        c.start(1, tracker.addr, UdpRequest::Announce(request()), t0)
            .unwrap();
        pump(&mut c, &mut tracker, t0);
        results(&mut c);
        tracker.drop_requests = 1;
        c.start(
            2,
            tracker.addr,
            UdpRequest::Announce(request()),
            t0 + secs(50),
        )
        .unwrap();
        run(&mut c, &mut tracker, t0 + secs(50), t0 + secs(600));
        assert_eq!(
            tracker.times(t0)[2..],
            [
                (50, ACTION_ANNOUNCE),
                (65, ACTION_CONNECT),
                (65, ACTION_ANNOUNCE)
            ]
        );
        assert_eq!(tracker.log[4].2, 0x1002);
        assert_eq!(announced(c.poll_result()).0, 2);
    }

    #[test]
    fn exchanges_to_one_tracker_share_a_connect() {
        let t0 = Instant::now();
        let mut tracker = FakeTracker::new(addr("10.0.0.1:6969"));
        tracker.drop_connects = 1;
        let mut c = client();
        c.start(1, tracker.addr, UdpRequest::Announce(request()), t0)
            .unwrap();
        c.start(2, tracker.addr, UdpRequest::Scrape(vec![[1; 20]]), t0)
            .unwrap();
        pump(&mut c, &mut tracker, t0);
        // A third joins the connect in flight, and the first leaves it.
        c.start(
            3,
            tracker.addr,
            UdpRequest::Announce(request()),
            t0 + secs(5),
        )
        .unwrap();
        pump(&mut c, &mut tracker, t0 + secs(5));
        c.cancel(1);
        run(&mut c, &mut tracker, t0 + secs(5), t0 + secs(600));
        assert_eq!(
            tracker.times(t0),
            [
                (0, ACTION_CONNECT),
                (15, ACTION_CONNECT),
                (15, ACTION_SCRAPE),
                (15, ACTION_ANNOUNCE),
            ]
        );
        let ids: Vec<u64> = results(&mut c)
            .into_iter()
            .map(|(id, r)| {
                assert!(r.is_ok());
                id
            })
            .collect();
        assert_eq!(ids, [2, 3]);

        // When every waiter leaves, the connect goes too.
        c.cache.clear();
        c.start(4, tracker.addr, UdpRequest::Announce(request()), t0)
            .unwrap();
        assert_eq!(c.connects.len(), 1);
        c.cancel(4);
        assert!(c.connects.is_empty() && c.txids.is_empty());
        assert_eq!(c.poll_timeout(), None);
        assert_eq!(c.poll_transmit(t0), None);
    }

    #[test]
    fn foreign_and_malformed_packets_are_ignored() {
        let t0 = Instant::now();
        let tracker = addr("10.0.0.1:6969");
        let mut c = client();
        c.start(1, tracker, UdpRequest::Announce(request()), t0)
            .unwrap();
        let connect = c.poll_transmit(t0).unwrap().payload;
        let txid = be32(&connect, 12);
        let other_port = addr("10.0.0.1:6970");
        let other_host = addr("10.0.0.2:6969");
        let junk = [
            (other_port, connect_reply(txid, 5)),
            (other_host, connect_reply(txid, 5)),
            (other_host, error_reply(txid, b"go away")),
            (tracker, connect_reply(txid ^ 1, 5)),
            (tracker, connect_reply(txid, 5)[..15].to_vec()),
            (tracker, announce_reply(txid, 1, 1, 1, &[])),
            (tracker, scrape_reply(txid, &[])),
            (tracker, header(7, txid)),
            (tracker, Vec::new()),
        ];
        for (from, packet) in &junk {
            c.handle_datagram(*from, packet, t0);
        }
        assert_eq!(c.poll_result(), None);
        assert_eq!(c.poll_transmit(t0), None, "still connecting");
        c.handle_datagram(tracker, &connect_reply(txid, 5), t0);
        let announce = c.poll_transmit(t0).unwrap().payload;
        assert_eq!(be64(&announce, 0), 5);
        let txid = be32(&announce, 12);
        for packet in [
            connect_reply(txid, 6),
            scrape_reply(txid, &[(1, 1, 1)]),
            announce_reply(txid, 1, 1, 1, &[])[..19].to_vec(),
        ] {
            c.handle_datagram(tracker, &packet, t0);
        }
        c.handle_datagram(other_port, &announce_reply(txid, 1, 1, 1, &[]), t0);
        assert_eq!(c.poll_result(), None);
        assert_eq!(c.in_flight(), 1);
        // A dual-stack socket reports the tracker as IPv4-mapped: that is
        // still the tracker.
        c.handle_datagram(
            addr("[::ffff:10.0.0.1]:6969"),
            &announce_reply(txid, 1, 1, 1, &[]),
            t0,
        );
        let (_, a) = announced(c.poll_result());
        assert_eq!(a.interval, Some(secs(1)));
        // A duplicate of the reply finds nothing.
        c.handle_datagram(tracker, &announce_reply(txid, 1, 1, 1, &[]), t0);
        assert_eq!(c.poll_result(), None);
    }

    #[test]
    fn an_error_reply_is_a_failure() {
        let t0 = Instant::now();
        let mut tracker = FakeTracker::new(addr("10.0.0.1:6969"));
        tracker.refuse = Some(b"unregistered torrent\n");
        let mut c = client();
        c.start(1, tracker.addr, UdpRequest::Announce(request()), t0)
            .unwrap();
        pump(&mut c, &mut tracker, t0);
        assert_eq!(
            results(&mut c),
            [(1, Ok(UdpReply::Failure("unregistered torrent".into())))]
        );
        // A fresh connection id: no reconnect.
        assert_eq!(
            tracker.times(t0),
            [(0, ACTION_CONNECT), (0, ACTION_ANNOUNCE)]
        );

        // An error to a connect fails every exchange waiting on it.
        let tracker = addr("10.0.0.9:80");
        c.start(2, tracker, UdpRequest::Announce(request()), t0)
            .unwrap();
        c.start(3, tracker, UdpRequest::Scrape(vec![[1; 20]]), t0)
            .unwrap();
        let connect = c.poll_transmit(t0).unwrap().payload;
        assert_eq!(c.poll_transmit(t0), None);
        c.handle_datagram(tracker, &error_reply(be32(&connect, 12), b"busy"), t0);
        assert_eq!(
            results(&mut c),
            [
                (2, Ok(UdpReply::Failure("busy".into()))),
                (3, Ok(UdpReply::Failure("busy".into())))
            ]
        );
        assert!(c.txids.is_empty() && c.connects.is_empty() && c.exchanges.is_empty());
    }

    #[test]
    fn an_error_on_a_cached_id_reconnects_once() {
        let t0 = Instant::now();
        let mut tracker = FakeTracker::new(addr("10.0.0.1:6969"));
        let mut c = client();
        c.start(1, tracker.addr, UdpRequest::Announce(request()), t0)
            .unwrap();
        pump(&mut c, &mut tracker, t0);
        results(&mut c);
        // The tracker restarts and forgets the id.
        tracker.accepted.clear();
        c.start(
            2,
            tracker.addr,
            UdpRequest::Announce(request()),
            t0 + secs(10),
        )
        .unwrap();
        pump(&mut c, &mut tracker, t0 + secs(10));
        assert_eq!(announced(c.poll_result()).0, 2);
        assert_eq!(
            tracker.times(t0)[2..],
            [
                (10, ACTION_ANNOUNCE),
                (10, ACTION_CONNECT),
                (10, ACTION_ANNOUNCE)
            ]
        );
        assert_eq!(c.cache.get(&tracker.addr).map(|e| e.id), Some(0x1002));

        // A tracker that refuses anyway: one reconnect, then the failure.
        tracker.refuse = Some(b"torrent banned");
        c.start(
            3,
            tracker.addr,
            UdpRequest::Announce(request()),
            t0 + secs(20),
        )
        .unwrap();
        pump(&mut c, &mut tracker, t0 + secs(20));
        assert_eq!(
            results(&mut c),
            [(3, Ok(UdpReply::Failure("torrent banned".into())))]
        );
        assert_eq!(
            tracker.times(t0)[5..],
            [
                (20, ACTION_ANNOUNCE),
                (20, ACTION_CONNECT),
                (20, ACTION_ANNOUNCE)
            ]
        );
    }

    #[test]
    fn an_ipv6_tracker_sends_18_byte_peers() {
        let t0 = Instant::now();
        let mut tracker = FakeTracker::new(SocketAddr::new(
            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1).into(),
            6969,
        ));
        tracker.peers = vec![
            0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9, 0x1a, 0xe1,
        ];
        let mut c = client();
        c.start(1, tracker.addr, UdpRequest::Announce(request()), t0)
            .unwrap();
        pump(&mut c, &mut tracker, t0);
        assert_eq!(
            announced(c.poll_result()).1.peers,
            [addr("[2001:db8::9]:6881")]
        );

        // An IPv4-mapped tracker address is IPv4: 6-byte peers.
        let mut tracker = FakeTracker::new(addr("[::ffff:10.0.0.1]:6969"));
        c.start(2, tracker.addr, UdpRequest::Announce(request()), t0)
            .unwrap();
        pump(&mut c, &mut tracker, t0);
        assert_eq!(
            announced(c.poll_result()).1.peers,
            [addr("10.0.0.1:6881"), addr("10.0.0.2:6882")]
        );
    }

    #[test]
    fn scrapes_several_hashes() {
        let t0 = Instant::now();
        let mut tracker = FakeTracker::new(addr("10.0.0.1:6969"));
        let mut c = client();
        let hashes = vec![[1; 20], [2; 20], [3; 20]];
        c.start(1, tracker.addr, UdpRequest::Scrape(hashes.clone()), t0)
            .unwrap();
        let connect = c.poll_transmit(t0).unwrap().payload;
        c.handle_datagram(tracker.addr, &connect_reply(be32(&connect, 12), 77), t0);
        let scrape = c.poll_transmit(t0).unwrap().payload;
        assert_eq!(scrape, encode_scrape(77, be32(&scrape, 12), &hashes));
        // Extra entries beyond the hashes asked are dropped.
        let reply = scrape_reply(
            be32(&scrape, 12),
            &[(1, 2, 3), (4, 5, 6), (7, 8, 9), (0, 0, 0)],
        );
        c.handle_datagram(tracker.addr, &reply, t0);
        let expected: Vec<Scraped> = [(1, 2, 3), (4, 5, 6), (7, 8, 9)]
            .iter()
            .map(|&(seeders, completed, leechers)| Scraped {
                seeders,
                completed,
                leechers,
            })
            .collect();
        assert_eq!(results(&mut c), [(1, Ok(UdpReply::Scraped(expected)))]);

        // Through the fake tracker, with the cached id.
        c.start(2, tracker.addr, UdpRequest::Scrape(hashes), t0)
            .unwrap();
        tracker.accepted.push(77);
        pump(&mut c, &mut tracker, t0);
        match c.poll_result() {
            Some((2, Ok(UdpReply::Scraped(s)))) => assert_eq!(s.len(), 3),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn everything_is_bounded() {
        let t0 = Instant::now();
        let tracker = addr("10.0.0.1:6969");
        let mut c = client();
        let too_many = vec![[0; 20]; MAX_SCRAPE_HASHES + 1];
        let err = c
            .start(1, tracker, UdpRequest::Scrape(too_many), t0)
            .unwrap_err();
        assert!(err.to_string().contains("at most 74 info hashes"), "{err}");
        assert!(matches!(
            c.start(1, tracker, UdpRequest::Scrape(Vec::new()), t0),
            Err(TrackerError::BadRequest(_))
        ));
        let most = vec![[0; 20]; MAX_SCRAPE_HASHES];
        c.start(1, tracker, UdpRequest::Scrape(most), t0).unwrap();
        assert!(matches!(
            c.start(1, tracker, UdpRequest::Announce(request()), t0),
            Err(TrackerError::BadRequest(_))
        ));
        for id in 2..=MAX_IN_FLIGHT as u64 {
            c.start(id, tracker, UdpRequest::Announce(request()), t0)
                .unwrap();
        }
        assert_eq!(c.in_flight(), MAX_IN_FLIGHT);
        assert_eq!(
            c.start(0, tracker, UdpRequest::Announce(request()), t0),
            Err(TrackerError::TooBusy(MAX_IN_FLIGHT))
        );
        // All share one connect: one packet.
        assert!(c.poll_transmit(t0).is_some());
        assert_eq!(c.poll_transmit(t0), None);
        // Finished but uncollected results still count.
        c.handle_timeout(t0 + TIMEOUT);
        assert_eq!(c.in_flight(), 0);
        assert_eq!(c.results.len(), MAX_IN_FLIGHT);
        assert!(c
            .start(0, tracker, UdpRequest::Announce(request()), t0 + TIMEOUT)
            .is_err());
        assert!(
            c.start(5, tracker, UdpRequest::Announce(request()), t0 + TIMEOUT)
                .is_err(),
            "an uncollected result keeps its id"
        );
        c.cancel(5);
        assert_eq!(c.results.len(), MAX_IN_FLIGHT - 1);
        c.start(5, tracker, UdpRequest::Announce(request()), t0 + TIMEOUT)
            .unwrap();
        c.cancel(5);
        assert!(c.txids.is_empty() && c.connects.is_empty());

        // Connection ids of many trackers: bounded, oldest dropped first.
        let mut c = client();
        let n = MAX_CACHED_CONNECTIONS + 10;
        for i in 0..n {
            let now = t0 + Duration::from_millis(i as u64);
            let port = u16::try_from(1000 + i).unwrap();
            let tracker = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port);
            c.start(1, tracker, UdpRequest::Announce(request()), now)
                .unwrap();
            let connect = c.poll_transmit(now).unwrap().payload;
            c.handle_datagram(tracker, &connect_reply(be32(&connect, 12), 1), now);
            c.cancel(1);
        }
        assert_eq!(c.cache.len(), MAX_CACHED_CONNECTIONS);
        assert!(!c.cache.contains_key(&addr("127.0.0.1:1000")));
        assert!(c.cache.contains_key(&addr("127.0.0.1:1010")));
        assert!(c.txids.is_empty() && c.exchanges.is_empty());
        c.handle_timeout(t0 + secs(120));
        assert!(c.cache.is_empty());
    }

    #[test]
    fn odd_settings_neither_hang_nor_panic() {
        let t0 = Instant::now();
        let tracker = addr("10.0.0.1:6969");
        // A zero base would make a packet due again the moment it is sent.
        let mut c = UdpClient::new(fastrand::Rng::with_seed(1), Duration::ZERO, TIMEOUT);
        c.start(1, tracker, UdpRequest::Announce(request()), t0)
            .unwrap();
        assert!(c.poll_transmit(t0).is_some());
        assert_eq!(c.poll_transmit(t0), None);
        // A zero timeout ends the exchange before anything is sent.
        let mut c = UdpClient::new(fastrand::Rng::with_seed(1), BASE, Duration::ZERO);
        c.start(1, tracker, UdpRequest::Announce(request()), t0)
            .unwrap();
        assert_eq!(c.poll_transmit(t0), None);
        assert_eq!(results(&mut c), [(1, Err(TrackerError::UdpTimeout(0)))]);
        // Huge durations: no overflow; the timeout is capped at a day.
        let mut c = UdpClient::new(fastrand::Rng::with_seed(1), Duration::MAX, Duration::MAX);
        c.start(1, tracker, UdpRequest::Announce(request()), t0)
            .unwrap();
        assert!(c.poll_transmit(t0).is_some());
        assert_eq!(c.poll_timeout(), Some(t0 + MAX_EXCHANGE_TIMEOUT));
        assert_eq!(c.poll_transmit(t0 + secs(1_000_000)), None);
        assert_eq!(results(&mut c), [(1, Err(TrackerError::UdpTimeout(1)))]);
    }

    #[test]
    fn talks_over_real_sockets_on_loopback() {
        let client_socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tracker_socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        for s in [&client_socket, &tracker_socket] {
            s.set_read_timeout(Some(secs(5))).unwrap();
        }
        let mut tracker = FakeTracker::new(tracker_socket.local_addr().unwrap());
        let t0 = Instant::now();
        let mut c = client();
        c.start(1, tracker.addr, UdpRequest::Announce(request()), t0)
            .unwrap();
        let mut buf = [0u8; 2048];
        while c.poll_result().is_none() {
            let tx = c.poll_transmit(t0).expect("something to send");
            client_socket.send_to(&tx.payload, tx.destination).unwrap();
            let (n, from) = tracker_socket.recv_from(&mut buf).unwrap();
            assert_eq!(from, client_socket.local_addr().unwrap());
            let reply = tracker.handle(&buf[..n], t0).unwrap();
            tracker_socket.send_to(&reply, from).unwrap();
            let (n, from) = client_socket.recv_from(&mut buf).unwrap();
            c.handle_datagram(from, &buf[..n], t0);
            if tracker.log.len() == 2 {
                break;
            }
        }
        let (id, a) = announced(c.poll_result());
        assert_eq!((id, a.peers.len()), (1, 2));
    }
}
