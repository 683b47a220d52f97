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
    /// `exchange_timeout` bounds each exchange, connect included.
    pub fn new(rng: fastrand::Rng, retransmit_base: Duration, exchange_timeout: Duration) -> Self {
        UdpClient {
            rng,
            base: retransmit_base.max(MIN_RETRANSMIT_BASE),
            timeout: exchange_timeout,
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
        // A deadline past what `Instant` can hold is a nonsense timeout;
        // it ends the exchange at once rather than panicking.
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
                "ignoring UDP tracker {} reply from {from}: no request with transaction id {txid:#010x}",
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
                log::debug!("UDP tracker {tracker} refused a cached connection id ({message}); reconnecting");
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
