//! [`Dht`]: one KRPC node, sans-IO. Datagrams and the time go in; the
//! datagrams to send, the next timer and events come out.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::codec::{self, Value};

use super::id::{is_local, NodeId};
use super::krpc::{
    self, Body, CompactNode, ErrorCode, ErrorReply, Message, Method, ParseError, Query, Reply, Want,
};
use super::limit::{Limiter, Rate};
use super::lookup::{Kind, LookupId, Search, MAX_PEERS_PER_LOOKUP, SHORT_TIMEOUT};
use super::storage::{Storage, Tokens};
use super::table::{Answered, Queried, Table, TableStats, K};

/// How often housekeeping runs: bucket refreshes, pings of questionable
/// nodes, storage expiry, token rotation, re-bootstrap.
pub const TICK: Duration = Duration::from_secs(5);

/// A query unanswered this long has failed (libtorrent waits 15 s,
/// jech/dht retries after 10 s; real answers come within a second or two).
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Most queries of ours awaiting an answer. 32 lookups × ([`super::lookup::ALPHA`] + the
/// slow ones they moved past) stay well under it; pings get what is left.
pub const MAX_OUTSTANDING: usize = 512;

/// Most lookups running at once; more wait in a queue.
pub const MAX_LOOKUPS: usize = 32;

/// Most lookups waiting to run. Past this a lookup ends at once, having
/// found nothing (its `LookupDone` says `busy`).
pub const MAX_QUEUED_LOOKUPS: usize = 256;

/// Most datagrams waiting for `poll_transmit`; past this, answers are
/// not sent and queries not made.
pub const MAX_TRANSMITS: usize = 1024;

/// Most events waiting for `poll_event`; past this, `Peers` events are
/// dropped (the lead polls every loop turn).
pub const MAX_EVENTS: usize = 4096;

/// Most peers in one `get_peers` answer (libtorrent sends up to 100); the
/// amplification bound may cut it further.
pub const MAX_VALUES: usize = 50;

/// An answer is at most this many times the size of its query: `values`
/// are cut to fit. The smallest `get_peers` query is 94 bytes; its answer
/// with 8 nodes and a token is about 300, so there is room for about 50
/// values. A forged query can make us send no more than this factor to
/// its victim, and the rate limits bound how often.
pub const AMPLIFICATION: usize = 8;

/// Questionable nodes pinged per [`TICK`].
pub const PINGS_PER_TICK: usize = 8;

/// Bucket-refresh lookups running at once.
pub const MAX_REFRESHES: usize = 2;

/// Bootstrap addresses remembered.
pub const MAX_ROUTERS: usize = 32;

/// With fewer than [`K`] nodes, bootstrap again this often.
pub const BOOTSTRAP_RETRY: Duration = Duration::from_secs(60);

/// Distinct nodes that must name the same external address in their
/// answers' `ip` before we believe it (BEP 42).
pub const VOTES_NEEDED: usize = 5;

/// Candidate external addresses tracked at once.
pub const MAX_VOTE_CANDIDATES: usize = 8;

/// Votes do not change our id more often than this: a few lying nodes
/// must not make us flap.
pub const ID_CHANGE_INTERVAL: Duration = Duration::from_secs(30 * 60);

/// Transaction ids of our queries: 4 random bytes, matched with the
/// address the query went to.
const TXID_LEN: usize = 4;

/// What a node can be told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Queries answered per second, all sources together.
    pub overall_rate: Rate,
    /// Queries answered per second from one source (an IP address; a
    /// full socket address on loopback, where every test node shares
    /// 127.0.0.1).
    pub per_source_rate: Rate,
    /// libtorrent's `dht_restrict_routing_ips` and
    /// `dht_restrict_search_ips`: one routing-table entry per IP and per
    /// /24 (/64) in a bucket, one lookup candidate per /24 (/64).
    /// Loopback addresses are always exempt.
    pub restrict_ips: bool,
    /// libtorrent's `dht_enforce_node_id`: ids that BEP 42 says do not
    /// match their address are not entered in the table, and their
    /// queries get error 201.
    pub enforce_node_id: bool,
    /// The socket is dual-stack: queries ask for both families (BEP 32
    /// `want`), and IPv6 nodes get a table of their own.
    pub ipv6: bool,
    /// `v`, our client version (BEP 20-style: two letters, two bytes).
    pub version: [u8; 4],
}

impl Default for Config {
    fn default() -> Config {
        Config {
            // jech/dht answers 100 a second with bursts of 400; we allow
            // more overall so that a busy node near many hashes keeps up.
            overall_rate: Rate {
                per_second: 500,
                burst: 1000,
            },
            // libtorrent blocks an IP past 5 a second for 10 s; a lookup
            // asks one node once, so 20 is already generous.
            per_source_rate: Rate {
                per_second: 20,
                burst: 100,
            },
            restrict_ips: true,
            enforce_node_id: false,
            ipv6: false,
            version: *b"TP\x00\x01",
        }
    }
}

/// What a node reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DhtEvent {
    /// Peers a lookup found, as they arrive (each once per lookup).
    Peers {
        /// The lookup.
        lookup: LookupId,
        /// Its info hash.
        info_hash: NodeId,
        /// Peers not reported before in this lookup.
        peers: Vec<SocketAddr>,
    },
    /// A lookup ended.
    LookupDone(LookupDone),
    /// Our node id changed (BEP 42, a new external address): save the
    /// state again.
    IdChanged {
        /// The id before.
        old: NodeId,
        /// The id now.
        new: NodeId,
    },
}

/// How a lookup went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupDone {
    /// The lookup.
    pub id: LookupId,
    /// Its target: the info hash, or the id a `find_node` looked for.
    pub info_hash: NodeId,
    /// What it was.
    pub kind: Kind,
    /// Distinct peers found.
    pub peers: usize,
    /// Nodes that acknowledged our `announce_peer`.
    pub announced_to: usize,
    /// The closest nodes that answered, closest first: up to [`K`] per
    /// family (IPv4 first).
    pub closest: Vec<CompactNode>,
    /// Referral steps from our table to the closest node found.
    pub hops: u32,
    /// Queries sent (announces included).
    pub queries: u32,
    /// Answers received.
    pub replies: u32,
    /// Queries that timed out.
    pub timeouts: u32,
    /// From start to end.
    pub elapsed: Duration,
    /// It never ran: too many lookups were waiting already.
    pub busy: bool,
}

/// Counters and sizes, for status output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DhtStats {
    /// Our id.
    pub id: NodeId,
    /// The IPv4 table.
    pub table: TableStats,
    /// The IPv6 table.
    pub table6: TableStats,
    /// Lookups running.
    pub lookups: usize,
    /// Lookups waiting to run.
    pub lookups_queued: usize,
    /// Our queries awaiting an answer.
    pub outstanding: usize,
    /// Datagrams handed in.
    pub packets_in: u64,
    /// Datagrams handed out.
    pub packets_out: u64,
    /// Datagrams dropped, all reasons: the next four, and bad sources.
    pub dropped: u64,
    /// Not KRPC, malformed replies, oversize.
    pub malformed: u64,
    /// Replies to no query of ours, or from another address.
    pub unsolicited: u64,
    /// Datagrams not sent: the transmit queue was full.
    pub send_dropped: u64,
    /// Info hashes stored.
    pub stored_hashes: usize,
    /// Peers stored.
    pub stored_peers: usize,
    /// Queries answered (errors included).
    pub queries_answered: u64,
    /// Queries refused by a rate limit (not answered).
    pub queries_refused: u64,
    /// Error replies sent.
    pub errors_sent: u64,
    /// Queries we sent.
    pub queries_sent: u64,
    /// Our queries that timed out.
    pub timeouts: u64,
    /// Answers whose id contradicted what we held for the address.
    pub lies: u64,
}

/// Why saved state could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateError {
    /// Not bencode.
    Bencode(codec::DecodeError),
    /// Bencode, but not a dict with a 20-byte `id` and whole compact
    /// `nodes`/`nodes6`.
    Shape(&'static str),
}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateError::Bencode(e) => write!(f, "DHT state: {e}"),
            StateError::Shape(what) => write!(f, "DHT state: {what}"),
        }
    }
}

impl std::error::Error for StateError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Ping,
    Search(LookupId),
    Announce(LookupId),
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    seq: u64,
    addr: SocketAddr,
    id: Option<NodeId>,
    purpose: Purpose,
}

#[derive(Debug)]
struct Active {
    target: NodeId,
    kind: Kind,
    /// Bootstrap or refresh: no events.
    internal: bool,
    searches: [Search; 2],
    announcing: bool,
    /// Announces awaiting an answer.
    pending_announces: usize,
    announced_to: usize,
    started: Instant,
    queries: u32,
    replies: u32,
    timeouts: u32,
    peers: HashSet<SocketAddr>,
}

#[derive(Debug, Clone, Copy)]
struct Queued {
    id: LookupId,
    target: NodeId,
    kind: Kind,
    internal: bool,
    only: Option<usize>,
}

/// Which table an address belongs to: 0 for IPv4 (IPv4-mapped included),
/// 1 for IPv6.
fn family(addr: SocketAddr) -> usize {
    usize::from(addr.ip().to_canonical().is_ipv6())
}

/// The address with an IPv4-mapped IPv6 address as plain IPv4, as a
/// dual-stack socket reports IPv4 senders: one node, one address.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// Whether an address can be a node: a port, a unicast address.
fn usable(addr: SocketAddr) -> bool {
    let ip = addr.ip().to_canonical();
    let broadcast = matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
    addr.port() != 0 && !ip.is_unspecified() && !ip.is_multicast() && !broadcast
}

/// A DHT node.
pub struct Dht {
    config: Config,
    id: NodeId,
    rng: fastrand::Rng,
    tables: [Table; 2],
    storage: Storage,
    tokens: Tokens,
    limiter: Limiter,
    outstanding: HashMap<[u8; TXID_LEN], Pending>,
    /// Our queries in the order sent (so by deadline), cleaned lazily.
    sent_order: VecDeque<(Instant, [u8; TXID_LEN], u64)>,
    /// The same for search queries, for the short timeout.
    slow_order: VecDeque<(Instant, [u8; TXID_LEN], u64)>,
    seq: u64,
    /// Addresses with a ping of ours pending, so that one is sent once.
    pinging: HashSet<SocketAddr>,
    lookups: BTreeMap<LookupId, Active>,
    queued: VecDeque<Queued>,
    next_lookup: u64,
    bootstrap_lookup: Option<LookupId>,
    routers: Vec<SocketAddr>,
    last_bootstrap: Option<Instant>,
    refreshes: HashSet<LookupId>,
    next_tick: Instant,
    transmits: VecDeque<(SocketAddr, Vec<u8>)>,
    events: VecDeque<DhtEvent>,
    external: Option<IpAddr>,
    votes: Vec<(IpAddr, Vec<SocketAddr>)>,
    last_id_change: Option<Instant>,
    /// The latest time given: `stats()` and `save()` judge node status
    /// as of then (the node never reads a clock).
    clock: Instant,
    stats: DhtStats,
}

impl fmt::Debug for Dht {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dht")
            .field("id", &self.id)
            .field("nodes", &self.tables[0].len())
            .field("lookups", &self.lookups.len())
            .finish_non_exhaustive()
    }
}

impl Dht {
    /// A node with `id`, or a random one (BEP 42's once an external
    /// address is known: see [`Dht::set_external_address`]).
    pub fn new(config: Config, id: Option<NodeId>, mut rng: fastrand::Rng, now: Instant) -> Dht {
        let id = id.unwrap_or_else(|| NodeId::random(&mut rng));
        let tokens = Tokens::new(&mut rng, now);
        let limiter = Limiter::new(config.overall_rate, config.per_source_rate, now);
        let restrict = config.restrict_ips;
        Dht {
            config,
            id,
            rng,
            tables: [Table::new(id, restrict, now), Table::new(id, restrict, now)],
            storage: Storage::new(),
            tokens,
            limiter,
            outstanding: HashMap::new(),
            sent_order: VecDeque::new(),
            slow_order: VecDeque::new(),
            seq: 0,
            pinging: HashSet::new(),
            lookups: BTreeMap::new(),
            queued: VecDeque::new(),
            next_lookup: 0,
            bootstrap_lookup: None,
            routers: Vec::new(),
            last_bootstrap: None,
            refreshes: HashSet::new(),
            next_tick: now + TICK,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            external: None,
            votes: Vec::new(),
            last_id_change: None,
            clock: now,
            stats: DhtStats::default(),
        }
    }

    /// Our node id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    // ---- input -------------------------------------------------------

    /// A datagram from `from`. Anything malformed, oversize, unasked for
    /// or from an unusable address is dropped, logged and counted.
    /// Addresses are taken and given in canonical form: an IPv4-mapped
    /// sender is IPv4, and datagrams to IPv4 nodes name plain IPv4
    /// addresses (a dual-stack socket maps them back).
    pub fn handle_datagram(&mut self, from: SocketAddr, bytes: &[u8], now: Instant) {
        let from = canonical(from);
        self.set_clock(now);
        self.stats.packets_in += 1;
        if !usable(from) {
            self.drop_packet(from, "an unusable source address");
            return;
        }
        match krpc::decode(bytes) {
            Ok(msg) => match msg.body {
                Body::Query(ref q) => {
                    let q = q.clone();
                    self.on_query(from, &msg, q, bytes.len(), now);
                }
                Body::Reply(_) | Body::Error(_) => self.on_answer(from, msg, now),
            },
            Err(ParseError::Answer {
                txid,
                code,
                problem,
            }) => {
                if self.limiter.allow(from, now) {
                    log::debug!("DHT query from {from}: {problem}");
                    self.send_error(from, txid, code, &problem.to_string());
                } else {
                    self.stats.queries_refused += 1;
                }
            }
            Err(ParseError::Drop(problem)) => {
                self.stats.malformed += 1;
                self.drop_packet(from, &problem.to_string());
            }
        }
        self.run_queue(now);
    }

    fn drop_packet(&mut self, from: SocketAddr, why: &str) {
        self.stats.dropped += 1;
        log::debug!("DHT datagram from {from} dropped: {why}");
    }

    // ---- answering queries --------------------------------------------

    fn on_query(&mut self, from: SocketAddr, msg: &Message, q: Query, len: usize, now: Instant) {
        if !self.limiter.allow(from, now) {
            self.stats.queries_refused += 1;
            return;
        }
        if q.id == self.id {
            self.drop_packet(from, "a query claiming our own id");
            return;
        }
        if self.config.enforce_node_id && !q.id.matches_ip(from.ip()) {
            let text = "node id does not match your address (BEP 42)";
            self.send_error(from, msg.txid.clone(), ErrorCode::Generic, text);
            return;
        }
        if !msg.read_only {
            self.note_querier(q.id, from, now);
        }
        let answer = match &q.method {
            Method::Ping => Ok(Reply::bare(self.id)),
            Method::FindNode { target } => Ok(self.nodes_reply(target, q.want, from, now)),
            Method::GetPeers { info_hash } => {
                Ok(self.get_peers_reply(info_hash, q.want, from, now))
            }
            Method::AnnouncePeer {
                info_hash,
                port,
                implied_port,
                token,
            } => self.store_announce(*info_hash, *port, *implied_port, token, from, now),
        };
        match answer {
            Ok(reply) => self.send_reply(from, msg.txid.clone(), reply, len),
            Err((code, text)) => self.send_error(from, msg.txid.clone(), code, text),
        }
    }

    /// A node queried us: its query keeps it good if known; a stranger
    /// whose bucket has room is pinged (its answer, not its query, can
    /// enter it).
    fn note_querier(&mut self, id: NodeId, from: SocketAddr, now: Instant) {
        let f = family(from);
        if f == 1 && !self.config.ipv6 {
            return;
        }
        if self.config.enforce_node_id && !id.matches_ip(from.ip()) {
            return;
        }
        if self.tables[f].queried(id, from, now) == Queried::Wanted {
            self.ping(from, Some(id), now);
        }
    }

    fn nodes_reply(
        &self,
        target: &NodeId,
        want: Option<Want>,
        from: SocketAddr,
        now: Instant,
    ) -> Reply {
        let want = want.unwrap_or(Want {
            v4: family(from) == 0,
            v6: family(from) == 1,
        });
        let mut reply = Reply::bare(self.id);
        if want.v4 {
            reply.nodes = self.tables[0].closest(target, K, now);
        }
        if want.v6 {
            reply.nodes6 = self.tables[1].closest(target, K, now);
        }
        reply
    }

    fn get_peers_reply(
        &mut self,
        hash: &NodeId,
        want: Option<Want>,
        from: SocketAddr,
        now: Instant,
    ) -> Reply {
        let mut reply = self.nodes_reply(hash, want, from, now);
        if self.storage.can_store(hash) {
            reply.token = Some(self.tokens.make(from.ip(), now, &mut self.rng));
        }
        let v6 = family(from) == 1;
        reply.values = self.storage.peers(hash, v6, MAX_VALUES, now, &mut self.rng);
        reply
    }

    fn store_announce(
        &mut self,
        hash: NodeId,
        port: u16,
        implied: bool,
        token: &[u8],
        from: SocketAddr,
        now: Instant,
    ) -> Result<Reply, (ErrorCode, &'static str)> {
        if !self.tokens.check(token, from.ip(), now, &mut self.rng) {
            return Err((ErrorCode::Protocol, "bad token"));
        }
        let port = if implied { from.port() } else { port };
        if port == 0 {
            return Err((ErrorCode::Protocol, "port 0"));
        }
        let peer = SocketAddr::new(from.ip().to_canonical(), port);
        self.storage
            .store(hash, peer, now)
            .map_err(|_| (ErrorCode::Server, "storage full"))?;
        Ok(Reply::bare(self.id))
    }

    fn send_reply(&mut self, to: SocketAddr, txid: Vec<u8>, mut reply: Reply, query_len: usize) {
        let budget = query_len.saturating_mul(AMPLIFICATION);
        loop {
            let msg = Message {
                txid: txid.clone(),
                version: Some(self.config.version.to_vec()),
                ip: Some(to),
                read_only: false,
                body: Body::Reply(reply.clone()),
            };
            let bytes = msg.to_bytes();
            if bytes.len() <= budget || reply.values.is_empty() {
                self.stats.queries_answered += 1;
                self.push_transmit(to, bytes);
                return;
            }
            // Each value costs its compact bytes plus "6:" or "18:".
            let per = if family(to) == 0 { 8 } else { 21 };
            let cut = (bytes.len() - budget).div_ceil(per).max(1);
            let keep = reply.values.len().saturating_sub(cut);
            reply.values.truncate(keep);
        }
    }

    fn send_error(&mut self, to: SocketAddr, txid: Vec<u8>, code: ErrorCode, text: &str) {
        let msg = Message {
            txid,
            version: Some(self.config.version.to_vec()),
            ip: None,
            read_only: false,
            body: Body::Error(ErrorReply {
                code: code as i64,
                text: text.as_bytes().to_vec(),
            }),
        };
        self.stats.queries_answered += 1;
        self.stats.errors_sent += 1;
        self.push_transmit(to, msg.to_bytes());
    }

    fn push_transmit(&mut self, to: SocketAddr, bytes: Vec<u8>) -> bool {
        if self.transmits.len() >= MAX_TRANSMITS {
            self.stats.send_dropped += 1;
            return false;
        }
        self.transmits.push_back((to, bytes));
        true
    }

    // ---- answers to our queries ----------------------------------------

    fn on_answer(&mut self, from: SocketAddr, msg: Message, now: Instant) {
        let Some(txid) = <[u8; TXID_LEN]>::try_from(msg.txid.as_slice()).ok() else {
            self.stats.unsolicited += 1;
            self.drop_packet(from, "an answer to no query of ours");
            return;
        };
        let pending = match self.outstanding.get(&txid) {
            Some(p) if p.addr == from => *p,
            Some(p) => {
                let expected = p.addr;
                self.stats.unsolicited += 1;
                self.drop_packet(from, &format!("an answer meant to come from {expected}"));
                return;
            }
            None => {
                self.stats.unsolicited += 1;
                self.drop_packet(from, "an answer to no query of ours");
                return;
            }
        };
        self.outstanding.remove(&txid);
        if pending.purpose == Purpose::Ping {
            self.pinging.remove(&from);
        }
        match msg.body {
            Body::Reply(reply) => self.on_reply(pending, reply, msg.ip, now),
            Body::Error(e) => {
                log::debug!(
                    "DHT error {} from {from}: {}",
                    e.code,
                    String::from_utf8_lossy(&e.text)
                );
                self.query_failed(pending, now);
            }
            Body::Query(_) => {}
        }
    }

    fn on_reply(&mut self, pending: Pending, reply: Reply, ip: Option<SocketAddr>, now: Instant) {
        let from = pending.addr;
        let expected_ok = pending.id.is_none_or(|id| id == reply.id);
        let entered = self.enter(reply.id, from, now);
        if entered == Answered::Lied || reply.id == self.id || !expected_ok {
            if entered == Answered::Lied {
                self.stats.lies += 1;
            }
            log::debug!(
                "DHT node {from} answered as {:?}, not as expected",
                reply.id
            );
            self.lookup_failed(pending, now);
            return;
        }
        if let Some(ip) = ip {
            self.vote(ip.ip(), from, now);
        }
        match pending.purpose {
            Purpose::Ping => {}
            Purpose::Search(lid) => self.search_reply(lid, from, reply, now),
            Purpose::Announce(lid) => {
                if let Some(l) = self.lookups.get_mut(&lid) {
                    l.replies += 1;
                    l.pending_announces = l.pending_announces.saturating_sub(1);
                    l.announced_to += 1;
                }
                self.drive(lid, now);
            }
        }
    }

    /// Enters a node that answered, in its family's table.
    fn enter(&mut self, id: NodeId, from: SocketAddr, now: Instant) -> Answered {
        let f = family(from);
        if f == 1 && !self.config.ipv6 {
            return Answered::Ignored;
        }
        if self.config.enforce_node_id && !id.matches_ip(from.ip()) {
            return Answered::Ignored;
        }
        self.tables[f].answered(id, from, now)
    }

    fn search_reply(&mut self, lid: LookupId, from: SocketAddr, reply: Reply, now: Instant) {
        let own = self.id;
        let Some(l) = self.lookups.get_mut(&lid) else {
            return;
        };
        let target = l.target;
        let Some(depth) = l.searches[family(from)].answered(&target, from, reply.id, reply.token)
        else {
            return;
        };
        l.replies += 1;
        let referred = reply
            .nodes
            .iter()
            .map(|n| (0, n))
            .chain(reply.nodes6.iter().map(|n| (1, n)));
        for (f, n) in referred {
            if n.id != own && usable(n.addr) && family(n.addr) == f && (f == 0 || self.config.ipv6)
            {
                l.searches[f].add(&target, Some(n.id), n.addr, depth + 1);
            }
        }
        let mut fresh = Vec::new();
        if l.kind != Kind::FindNode {
            for p in reply.values.into_iter().filter(|p| usable(*p)) {
                if l.peers.len() < MAX_PEERS_PER_LOOKUP && l.peers.insert(p) {
                    fresh.push(p);
                }
            }
        }
        if !fresh.is_empty() && !l.internal && self.events.len() < MAX_EVENTS {
            self.events.push_back(DhtEvent::Peers {
                lookup: lid,
                info_hash: target,
                peers: fresh,
            });
        }
        self.drive(lid, now);
    }

    /// An error answer, or a timeout.
    fn query_failed(&mut self, pending: Pending, now: Instant) {
        self.lookup_failed(pending, now);
    }

    fn lookup_failed(&mut self, pending: Pending, now: Instant) {
        match pending.purpose {
            Purpose::Ping => {}
            Purpose::Search(lid) => {
                if let Some(l) = self.lookups.get_mut(&lid) {
                    l.searches[family(pending.addr)].failed(pending.addr);
                }
                self.drive(lid, now);
            }
            Purpose::Announce(lid) => {
                if let Some(l) = self.lookups.get_mut(&lid) {
                    l.pending_announces = l.pending_announces.saturating_sub(1);
                }
                self.drive(lid, now);
            }
        }
    }

    // ---- external address (BEP 42) -------------------------------------

    /// Our external address, as the lead learnt it (a tracker, a peer's
    /// `yourip`, configuration). A public address our id does not match
    /// gives us a new BEP 42 id at once; see [`Dht::change_id`].
    pub fn set_external_address(&mut self, ip: IpAddr, now: Instant) {
        let ip = ip.to_canonical();
        self.external = Some(ip);
        self.votes.clear();
        if !is_local(ip) && !self.id.matches_ip(ip) {
            let new = NodeId::for_ip(ip, &mut self.rng);
            self.change_id(new, now);
        }
    }

    /// The external address we believe we have, if any.
    pub fn external_address(&self) -> Option<IpAddr> {
        self.external
    }

    /// An answer from `from` said we are at `ip`.
    fn vote(&mut self, ip: IpAddr, from: SocketAddr, now: Instant) {
        let ip = ip.to_canonical();
        if is_local(ip) || Some(ip) == self.external {
            return;
        }
        let voter = if from.ip().is_loopback() {
            from
        } else {
            SocketAddr::new(from.ip().to_canonical(), 0)
        };
        let at = match self.votes.iter().position(|(c, _)| *c == ip) {
            Some(at) => at,
            None => {
                if self.votes.len() >= MAX_VOTE_CANDIDATES {
                    self.votes.remove(0);
                }
                self.votes.push((ip, Vec::new()));
                self.votes.len() - 1
            }
        };
        let Some((_, voters)) = self.votes.get_mut(at) else {
            return;
        };
        if !voters.contains(&voter) {
            voters.push(voter);
        }
        if voters.len() < VOTES_NEEDED {
            return;
        }
        self.votes.clear();
        let recent = self
            .last_id_change
            .is_some_and(|t| now.saturating_duration_since(t) < ID_CHANGE_INTERVAL);
        log::info!("DHT: our external address is {ip}");
        self.external = Some(ip);
        if !self.id.matches_ip(ip) && !recent {
            let new = NodeId::for_ip(ip, &mut self.rng);
            self.change_id(new, now);
        }
    }

    /// Takes a new id: the tables are rebuilt around it (every node
    /// kept), lookups and stored peers go on, and a lookup of the new id
    /// tells our new neighbours about us. Tokens stay valid: they depend
    /// on the querier's address, not our id.
    fn change_id(&mut self, new: NodeId, now: Instant) {
        let old = self.id;
        log::info!("DHT: node id {old} -> {new}");
        self.id = new;
        self.last_id_change = Some(now);
        for t in &mut self.tables {
            *t = t.rebuilt(new, now);
        }
        self.push_event(DhtEvent::IdChanged { old, new });
        self.start(new, Kind::FindNode, true, None, now);
    }

    fn push_event(&mut self, e: DhtEvent) {
        if self.events.len() < MAX_EVENTS || !matches!(e, DhtEvent::Peers { .. }) {
            self.events.push_back(e);
        }
    }

    // ---- our queries ---------------------------------------------------

    fn new_txid(&mut self) -> [u8; TXID_LEN] {
        loop {
            let t = self.rng.u32(..).to_be_bytes();
            if !self.outstanding.contains_key(&t) {
                return t;
            }
        }
    }

    fn free_slots(&self) -> usize {
        MAX_OUTSTANDING
            .saturating_sub(self.outstanding.len())
            .min(MAX_TRANSMITS.saturating_sub(self.transmits.len()))
    }

    /// Sends a query; false if the outstanding or transmit bound is hit.
    fn send_query(
        &mut self,
        to: SocketAddr,
        id: Option<NodeId>,
        method: Method,
        purpose: Purpose,
        now: Instant,
    ) -> bool {
        if self.free_slots() == 0 {
            return false;
        }
        let txid = self.new_txid();
        let want = match method {
            Method::FindNode { .. } | Method::GetPeers { .. } if self.config.ipv6 => {
                Some(Want { v4: true, v6: true })
            }
            _ => None,
        };
        let msg = Message {
            txid: txid.to_vec(),
            version: Some(self.config.version.to_vec()),
            ip: None,
            read_only: false,
            body: Body::Query(Query {
                id: self.id,
                method,
                want,
            }),
        };
        if !self.push_transmit(to, msg.to_bytes()) {
            return false;
        }
        self.seq += 1;
        let seq = self.seq;
        self.outstanding.insert(
            txid,
            Pending {
                seq,
                addr: to,
                id,
                purpose,
            },
        );
        self.sent_order.push_back((now, txid, seq));
        if matches!(purpose, Purpose::Search(_)) {
            self.slow_order.push_back((now, txid, seq));
        }
        self.compact_orders();
        self.stats.queries_sent += 1;
        true
    }

    /// Keeps the deadline queues within twice [`MAX_OUTSTANDING`]:
    /// answered queries leave entries behind until their deadline, and a
    /// fast exchange of pings and answers would otherwise pile them up.
    fn compact_orders(&mut self) {
        let outstanding = &self.outstanding;
        let live = |e: &(Instant, [u8; TXID_LEN], u64)| {
            outstanding.get(&e.1).is_some_and(|p| p.seq == e.2)
        };
        for order in [&mut self.sent_order, &mut self.slow_order] {
            if order.len() > 2 * MAX_OUTSTANDING {
                order.retain(live);
            }
        }
    }

    fn ping(&mut self, to: SocketAddr, id: Option<NodeId>, now: Instant) {
        if usable(to)
            && !self.pinging.contains(&to)
            && self.send_query(to, id, Method::Ping, Purpose::Ping, now)
        {
            self.pinging.insert(to);
        }
    }

    /// A node a peer told us of (BEP 5's `port` message): it is pinged,
    /// and entered only if it answers.
    pub fn add_node(&mut self, addr: SocketAddr, now: Instant) {
        let addr = canonical(addr);
        let f = family(addr);
        if (f == 1 && !self.config.ipv6) || self.tables[f].id_at(addr).is_some() {
            return;
        }
        self.ping(addr, None, now);
    }

    /// Joins the network through `nodes` (resolved bootstrap addresses,
    /// remembered for re-bootstrapping while the table is nearly empty):
    /// a lookup of our own id.
    pub fn bootstrap(&mut self, nodes: &[SocketAddr], now: Instant) {
        let nodes: Vec<SocketAddr> = nodes
            .iter()
            .map(|n| canonical(*n))
            .filter(|n| usable(*n))
            .collect();
        for &n in &nodes {
            if !self.routers.contains(&n) && self.routers.len() < MAX_ROUTERS {
                self.routers.push(n);
            }
        }
        let running = self
            .bootstrap_lookup
            .filter(|l| self.lookups.contains_key(l));
        match running {
            Some(lid) => {
                if let Some(l) = self.lookups.get_mut(&lid) {
                    for &n in &nodes {
                        let f = family(n);
                        l.searches[f].add(&l.target, None, n, 0);
                    }
                }
                self.drive(lid, now);
            }
            None => {
                self.last_bootstrap = Some(now);
                let lid = self.start(self.id, Kind::FindNode, true, None, now);
                self.bootstrap_lookup = Some(lid);
            }
        }
    }

    /// Looks for peers of `info_hash`; they come as [`DhtEvent::Peers`],
    /// then a [`DhtEvent::LookupDone`].
    pub fn get_peers(&mut self, info_hash: NodeId, now: Instant) -> LookupId {
        self.start(info_hash, Kind::GetPeers, false, None, now)
    }

    /// Looks for peers of `info_hash`, then announces us (at `port`, or
    /// the source port of our datagrams with `None`) to the closest
    /// nodes that gave a token.
    pub fn announce(&mut self, info_hash: NodeId, port: Option<u16>, now: Instant) -> LookupId {
        self.start(info_hash, Kind::Announce(port), false, None, now)
    }

    /// Looks for the nodes closest to `target`; the result is in its
    /// [`DhtEvent::LookupDone`].
    pub fn find_node(&mut self, target: NodeId, now: Instant) -> LookupId {
        self.start(target, Kind::FindNode, false, None, now)
    }

    fn start(
        &mut self,
        target: NodeId,
        kind: Kind,
        internal: bool,
        only: Option<usize>,
        now: Instant,
    ) -> LookupId {
        self.next_lookup += 1;
        let id = LookupId(self.next_lookup);
        let q = Queued {
            id,
            target,
            kind,
            internal,
            only,
        };
        if self.lookups.len() < MAX_LOOKUPS {
            self.activate(q, now);
        } else if self.queued.len() < MAX_QUEUED_LOOKUPS {
            self.queued.push_back(q);
        } else if !internal {
            self.push_event(DhtEvent::LookupDone(LookupDone {
                id,
                info_hash: target,
                kind,
                peers: 0,
                announced_to: 0,
                closest: Vec::new(),
                hops: 0,
                queries: 0,
                replies: 0,
                timeouts: 0,
                elapsed: Duration::ZERO,
                busy: true,
            }));
        }
        id
    }

    fn activate(&mut self, q: Queued, now: Instant) {
        let restrict = self.config.restrict_ips;
        let mut l = Active {
            target: q.target,
            kind: q.kind,
            internal: q.internal,
            searches: [Search::new(restrict), Search::new(restrict)],
            announcing: false,
            pending_announces: 0,
            announced_to: 0,
            started: now,
            queries: 0,
            replies: 0,
            timeouts: 0,
            peers: HashSet::new(),
        };
        for f in 0..2 {
            if q.only.is_some_and(|o| o != f) {
                continue;
            }
            // Twice K seeds: a few stale ones do not stall the start.
            for n in self.tables[f].closest(&q.target, 2 * K, now) {
                l.searches[f].add(&q.target, Some(n.id), n.addr, 0);
            }
        }
        if self.tables.iter().map(Table::len).sum::<usize>() < K {
            for &r in &self.routers {
                l.searches[family(r)].add(&q.target, None, r, 0);
            }
        }
        self.lookups.insert(q.id, l);
        if q.only.is_some() {
            self.refreshes.insert(q.id);
        }
        self.drive(q.id, now);
    }

    /// Moves a lookup on: more queries, the announces, or its end.
    fn drive(&mut self, lid: LookupId, now: Instant) {
        let Some(mut l) = self.lookups.remove(&lid) else {
            return;
        };
        if !l.announcing {
            self.send_searches(lid, &mut l, now);
            if l.searches.iter().all(Search::finished) {
                l.announcing = true;
                if let Kind::Announce(port) = l.kind {
                    self.send_announces(lid, &mut l, port, now);
                }
            }
        }
        if l.announcing && l.pending_announces == 0 {
            self.finish(lid, l, now);
        } else {
            self.lookups.insert(lid, l);
        }
    }

    fn send_searches(&mut self, lid: LookupId, l: &mut Active, now: Instant) {
        for f in 0..2 {
            let asks = l.searches[f].next(now, self.free_slots());
            for ask in asks {
                let method = match l.kind {
                    Kind::FindNode => Method::FindNode { target: l.target },
                    _ => Method::GetPeers {
                        info_hash: l.target,
                    },
                };
                if self.send_query(ask.addr, ask.id, method, Purpose::Search(lid), now) {
                    l.queries += 1;
                } else {
                    l.searches[f].failed(ask.addr);
                }
            }
        }
    }

    fn send_announces(&mut self, lid: LookupId, l: &mut Active, port: Option<u16>, now: Instant) {
        let targets: Vec<_> = l.searches.iter().flat_map(Search::closest).collect();
        for (node, token) in targets {
            let Some(token) = token else { continue };
            let method = Method::AnnouncePeer {
                info_hash: l.target,
                port: port.unwrap_or(0),
                implied_port: port.is_none(),
                token,
            };
            if self.send_query(
                node.addr,
                Some(node.id),
                method,
                Purpose::Announce(lid),
                now,
            ) {
                l.queries += 1;
                l.pending_announces += 1;
            }
        }
    }

    fn finish(&mut self, lid: LookupId, l: Active, now: Instant) {
        self.refreshes.remove(&lid);
        if self.bootstrap_lookup == Some(lid) {
            self.bootstrap_lookup = None;
        }
        if l.internal {
            return;
        }
        let closest = l
            .searches
            .iter()
            .flat_map(Search::closest)
            .map(|(n, _)| n)
            .collect();
        let hops = l.searches.iter().map(Search::hops).max().unwrap_or(0);
        self.push_event(DhtEvent::LookupDone(LookupDone {
            id: lid,
            info_hash: l.target,
            kind: l.kind,
            peers: l.peers.len(),
            announced_to: l.announced_to,
            closest,
            hops,
            queries: l.queries,
            replies: l.replies,
            timeouts: l.timeouts,
            elapsed: now.saturating_duration_since(l.started),
            busy: false,
        }));
    }

    /// Starts queued lookups while there is room.
    fn run_queue(&mut self, now: Instant) {
        while self.lookups.len() < MAX_LOOKUPS {
            let Some(q) = self.queued.pop_front() else {
                return;
            };
            self.activate(q, now);
        }
    }

    // ---- time ----------------------------------------------------------

    /// When [`Dht::handle_timeout`] should next run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let timeout = self.sent_order.front().map(|(t, _, _)| *t + QUERY_TIMEOUT);
        let slow = self.slow_order.front().map(|(t, _, _)| *t + SHORT_TIMEOUT);
        [Some(self.next_tick), timeout, slow]
            .into_iter()
            .flatten()
            .min()
    }

    /// Runs what is due at `now`: query timeouts, and every [`TICK`] the
    /// housekeeping.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.set_clock(now);
        self.expire_slow(now);
        self.expire_queries(now);
        if now >= self.next_tick {
            self.next_tick = now + TICK;
            self.housekeeping(now);
        }
        self.run_queue(now);
    }

    fn expire_slow(&mut self, now: Instant) {
        while let Some(&(sent, txid, seq)) = self.slow_order.front() {
            if sent + SHORT_TIMEOUT > now {
                break;
            }
            self.slow_order.pop_front();
            let Some(p) = self
                .outstanding
                .get(&txid)
                .filter(|p| p.seq == seq)
                .copied()
            else {
                continue;
            };
            if let Purpose::Search(lid) = p.purpose {
                self.retry_slow(lid, family(p.addr), now);
                self.drive(lid, now);
            }
        }
    }

    /// Marks a search's slow queries, and asks the closest of them again.
    fn retry_slow(&mut self, lid: LookupId, f: usize, now: Instant) {
        let Some(mut l) = self.lookups.remove(&lid) else {
            return;
        };
        let method = match l.kind {
            Kind::FindNode => Method::FindNode { target: l.target },
            _ => Method::GetPeers {
                info_hash: l.target,
            },
        };
        for ask in l.searches[f].mark_slow(now) {
            if self.send_query(ask.addr, ask.id, method.clone(), Purpose::Search(lid), now) {
                l.queries += 1;
            }
        }
        self.lookups.insert(lid, l);
    }

    fn expire_queries(&mut self, now: Instant) {
        while let Some(&(sent, txid, seq)) = self.sent_order.front() {
            if sent + QUERY_TIMEOUT > now {
                break;
            }
            self.sent_order.pop_front();
            let Some(p) = self
                .outstanding
                .get(&txid)
                .filter(|p| p.seq == seq)
                .copied()
            else {
                continue;
            };
            self.outstanding.remove(&txid);
            self.pinging.remove(&p.addr);
            self.stats.timeouts += 1;
            if let Some(id) = p.id {
                self.tables[family(p.addr)].failed(&id, p.addr, now);
            }
            if let Purpose::Search(lid) | Purpose::Announce(lid) = p.purpose {
                if let Some(l) = self.lookups.get_mut(&lid) {
                    l.timeouts += 1;
                }
            }
            self.query_failed(p, now);
        }
    }

    fn housekeeping(&mut self, now: Instant) {
        self.storage.expire(now);
        self.tokens.rotate(now, &mut self.rng);
        self.limiter.sweep(now);
        for f in 0..2 {
            while self.refreshes.len() < MAX_REFRESHES {
                let Some(target) = self.tables[f].refresh_due(now, &mut self.rng) else {
                    break;
                };
                self.start(target, Kind::FindNode, true, Some(f), now);
            }
            for (id, addr) in self.tables[f].to_ping(now, PINGS_PER_TICK) {
                self.ping(addr, Some(id), now);
            }
        }
        let few = self.tables.iter().map(Table::len).sum::<usize>() < K;
        let idle = self.bootstrap_lookup.is_none();
        let due = self
            .last_bootstrap
            .is_none_or(|t| now.saturating_duration_since(t) >= BOOTSTRAP_RETRY);
        if few && idle && due && !self.routers.is_empty() {
            let routers = self.routers.clone();
            self.bootstrap(&routers, now);
        }
    }

    // ---- output --------------------------------------------------------

    /// The next datagram to send, written into `out` (cleared first), and
    /// where to send it.
    pub fn poll_transmit(&mut self, out: &mut Vec<u8>) -> Option<SocketAddr> {
        let (to, bytes) = self.transmits.pop_front()?;
        out.clear();
        out.extend_from_slice(&bytes);
        self.stats.packets_out += 1;
        Some(to)
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<DhtEvent> {
        self.events.pop_front()
    }

    /// Counters and sizes.
    pub fn stats(&self) -> DhtStats {
        let mut s = self.stats.clone();
        let now = self.sample_now();
        s.id = self.id;
        s.table = self.tables[0].stats(now);
        s.table6 = self.tables[1].stats(now);
        s.lookups = self.lookups.len();
        s.lookups_queued = self.queued.len();
        s.outstanding = self.outstanding.len();
        s.stored_hashes = self.storage.hashes();
        s.stored_peers = self.storage.len();
        s.dropped = self.stats.dropped;
        s
    }

    fn sample_now(&self) -> Instant {
        self.clock
    }

    fn set_clock(&mut self, now: Instant) {
        self.clock = self.clock.max(now);
    }

    // ---- state ---------------------------------------------------------

    /// Our id and the good nodes, bencoded: `{"id": 20 bytes, "nodes":
    /// compact IPv4 nodes, "nodes6": compact IPv6 nodes}`.
    pub fn save(&self) -> Vec<u8> {
        let now = self.sample_now();
        let d = Value::dict([
            ("id", Value::Bytes(self.id.0.to_vec())),
            (
                "nodes",
                Value::Bytes(krpc::write_compact_nodes(&self.tables[0].good(now))),
            ),
            (
                "nodes6",
                Value::Bytes(krpc::write_compact_nodes(&self.tables[1].good(now))),
            ),
        ]);
        d.to_bencode().unwrap_or_default()
    }

    /// A node restored from [`Dht::save`]'s bytes: the same id, and a
    /// bootstrap through the saved nodes.
    pub fn load(
        config: Config,
        state: &[u8],
        rng: fastrand::Rng,
        now: Instant,
    ) -> Result<Dht, StateError> {
        let (id, nodes) = parse_state(state)?;
        let mut dht = Dht::new(config, Some(id), rng, now);
        let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
        dht.bootstrap(&addrs, now);
        Ok(dht)
    }
}

/// The id and nodes in saved state.
pub fn parse_state(state: &[u8]) -> Result<(NodeId, Vec<CompactNode>), StateError> {
    let v = codec::decode(state).map_err(StateError::Bencode)?;
    if v.as_dict().is_none() {
        return Err(StateError::Shape("not a dict"));
    }
    let id = v
        .get("id")
        .and_then(Value::as_bytes)
        .and_then(NodeId::from_slice)
        .ok_or(StateError::Shape("no 20-byte id"))?;
    let mut nodes = Vec::new();
    for (key, len) in [("nodes", krpc::NODE4_LEN), ("nodes6", krpc::NODE6_LEN)] {
        let Some(b) = v.get(key) else { continue };
        let b = b
            .as_bytes()
            .ok_or(StateError::Shape("nodes not a string"))?;
        let chunks = b.chunks_exact(len);
        if !chunks.remainder().is_empty() {
            return Err(StateError::Shape("a truncated node"));
        }
        for c in chunks {
            let (id, addr) = c.split_at(20);
            if let (Some(id), Some(addr)) = (NodeId::from_slice(id), krpc::compact_addr(addr)) {
                nodes.push(CompactNode { id, addr });
            }
        }
    }
    Ok((id, nodes))
}
