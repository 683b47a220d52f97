//! The swarm: every running torrent's peers, sans-IO. It ties the peer
//! wire ([`crate::peer`]) to the domain logic ([`crate::engine`]): what to
//! request from whom, which blocks to serve, hashing finished pieces,
//! striking and banning peers that send bad data, choking.
//!
//! Bytes and time come in, bytes and decisions go out, like the IPC
//! server: [`Swarm::accept`] / [`Swarm::poll_dial`] / [`Swarm::dialed`]
//! for connections, [`Swarm::receive`] for their bytes,
//! [`Swarm::output`] for what to send, [`Swarm::poll_close`] for what to
//! close, [`Swarm::poll_event`] for what the registry must learn (pieces
//! verified, storage errors), [`Swarm::poll_timeout`] and
//! [`Swarm::handle_timeout`] for timers.

mod link;
mod metadata;
mod peer;
mod session;
mod suspects;

pub use session::Stage;

pub use peer::{Dial, Source, Transport};
use peer::{Peer, PexLink};
use suspects::Suspects;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use log::{debug, info, warn};
use slab::Slab;

use crate::engine::bandwidth::TokenBucket;
use crate::engine::disk::{DiskRequest, Outcome, PieceDone};
use crate::engine::picker::{PeerKey, Picker};
use crate::peer::conn::{PeerConn, PeerError, MAX_PEER_REQUESTS};
use crate::peer::extension::{ExtendedHandshake, LocalHandshake, HANDSHAKE_EXT_ID};
use crate::peer::metadata::{FetchEvent, OUR_UT_METADATA_ID};
use crate::peer::mse::{self, Policy, Secrets};
use crate::peer::pex::{PexFlags, PexMessage, PexState, OUR_UT_PEX_ID, UT_PEX};
use crate::peer::wire::{Handshake, Message};
use crate::registry::{PeerInfo, Torrent};
use link::Link;
use session::{ServeError, Session};

/// The handshake's reserved bit for the extension protocol (BEP 10).
const EXTENSION_BIT: (usize, u8) = (5, 0x10);

/// The handshake's reserved bit for the DHT (BEP 5).
const DHT_BIT: (usize, u8) = (7, 0x01);

/// The reserved bits of our handshake: the extension protocol (BEP 10),
/// the fast extension (BEP 6), and the DHT (BEP 5) when ours runs for
/// this torrent.
fn our_reserved(dht: bool) -> [u8; 8] {
    let mut reserved = [0; 8];
    reserved[EXTENSION_BIT.0] |= EXTENSION_BIT.1;
    crate::peer::fast::set_reserved_bit(&mut reserved);
    if dht {
        reserved[DHT_BIT.0] |= DHT_BIT.1;
    }
    reserved
}

/// Our extension handshake for a peer of session `s`: peer exchange
/// unless private or off, the metadata exchange unless private, with the
/// info dictionary's size once known.
fn extension_handshake(s: &Session, manners: &Manners) -> Vec<u8> {
    let mut offered = Vec::with_capacity(2);
    if !s.private && manners.pex {
        offered.push((UT_PEX, OUR_UT_PEX_ID));
    }
    let (metadata, metadata_size) = s.metadata.offer();
    offered.extend(metadata);
    LocalHandshake {
        client: CLIENT_NAME,
        reqq: MAX_PEER_REQUESTS as u32,
        listen_port: Some(manners.listen_port).filter(|p| *p != 0),
        extensions: &offered,
        metadata_size,
    }
    .encode()
}

/// What we call ourselves in the extension handshake.
const CLIENT_NAME: &str = concat!("tripcd ", env!("CARGO_PKG_VERSION"));

/// Addresses remembered as plaintext-only (they dropped our MSE
/// handshake); forgotten all at once past this many.
const MAX_PLAIN_ONLY: usize = 4096;

/// Output queued to a peer beyond which we stop serving it blocks until
/// it reads (its requests wait in its queue).
const UPLOAD_SOFT_LIMIT: usize = 512 << 10;

/// Limits on connections.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connected peers in all.
    pub max_peers: usize,
    /// Connected peers per torrent.
    pub max_peers_per_torrent: usize,
    /// Outgoing connections not yet established.
    pub max_half_open: usize,
    /// Bytes of unfinished pieces held in memory per torrent.
    pub max_partial_bytes: u64,
}

/// The daemon-wide settings the swarm follows, changeable at any time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Manners {
    /// Payload bytes/s received in all, `None` for no limit.
    pub download_limit: Option<u64>,
    /// Payload bytes/s sent in all, `None` for no limit.
    pub upload_limit: Option<u64>,
    /// Peer exchange on torrents that are not private.
    pub pex: bool,
    /// Message stream encryption.
    pub encryption: Policy,
    /// Our peer port, told to peers in the extension handshake (0: none).
    pub listen_port: u16,
    /// Our DHT node's port, while the DHT runs: offered in the handshake
    /// and told to peers that run one (BEP 5).
    pub dht_port: Option<u16>,
}

impl Default for Manners {
    fn default() -> Manners {
        Manners {
            download_limit: None,
            upload_limit: None,
            pex: true,
            encryption: Policy::Preferred,
            listen_port: 0,
            dht_port: None,
        }
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_peers: 240,
            max_peers_per_torrent: 60,
            max_half_open: 16,
            max_partial_bytes: 64 << 20,
        }
    }
}

/// What the registry (or the log) must learn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwarmEvent {
    /// A piece arrived, matched its hash and is on disk.
    PieceVerified {
        /// Torrent id.
        torrent: u64,
        /// Piece index.
        piece: u32,
    },
    /// The torrent's data could not be written or read.
    StorageFailed {
        /// Torrent id.
        torrent: u64,
        /// The file, and what the system said.
        error: String,
        /// The io error's kind, for the protocol's `io-*` code.
        kind: std::io::ErrorKind,
    },
    /// A peer finished its handshake for a torrent.
    PeerConnected {
        /// Torrent id.
        torrent: u64,
        /// Its address.
        addr: SocketAddr,
    },
    /// A torrent's info dictionary arrived from peers and matched its
    /// info hash.
    MetadataFetched {
        /// Torrent id.
        torrent: u64,
        /// The info dictionary's bytes.
        info: Vec<u8>,
    },
    /// A peer runs a DHT node at `addr` (its `port` message, BEP 5).
    DhtNode {
        /// The node's address.
        addr: SocketAddr,
    },
    /// A peer of a torrent went away.
    PeerDisconnected {
        /// Torrent id.
        torrent: u64,
        /// Its address.
        addr: SocketAddr,
    },
}

/// Figures of one torrent for `get-status`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Stats {
    /// Payload bytes/s received over the last seconds.
    pub download_rate: f64,
    /// Payload bytes/s sent over the last seconds.
    pub upload_rate: f64,
    /// Bytes/s of pieces peers announce (`have`) over the last seconds.
    pub swarm_rate: f64,
    /// Connected peers.
    pub peers: u32,
    /// Peers sending to us (unchoked us, and we want their pieces).
    pub peers_sending: u32,
    /// Peers we send to (we unchoked them, and they want ours).
    pub peers_receiving: u32,
    /// Connected peers by source: incoming, tracker, cache, pex, dht
    /// (indexed by [`Source`]).
    pub peers_from: [u32; 5],
    /// Payload bytes received in this run.
    pub downloaded: u64,
    /// Payload bytes sent in this run.
    pub uploaded: u64,
    /// Bytes still missing.
    pub left: u64,
    /// How much of the info dictionary is in, 0 to 100 (100 once known).
    pub metadata_percent: u8,
    /// Peers that offer the metadata (BEP 9), while it is fetched.
    pub metadata_peers: u32,
}

/// Every running torrent's peers.
pub struct Swarm {
    peer_id: [u8; 20],
    limits: Limits,
    rng: fastrand::Rng,
    sessions: HashMap<u64, Session>,
    by_hash: HashMap<[u8; 20], u64>,
    peers: Slab<Peer>,
    half_open: usize,
    /// Who sent bad data, and who is banned for it.
    suspects: Suspects,
    to_close: Vec<usize>,
    events: VecDeque<SwarmEvent>,
    manners: Manners,
    /// The upload limit, over all torrents.
    up: TokenBucket,
    /// The download limit, over all torrents.
    down: TokenBucket,
    /// Peers with requests to serve, in turn: one block each per round,
    /// so that under a limit every peer gets its share.
    upload_queue: VecDeque<usize>,
    /// Bytes the queue's first peer waits for, when the limit starved it.
    upload_need: usize,
    /// HASH('req2', info_hash) of every running torrent, for incoming
    /// MSE handshakes.
    by_req2: HashMap<[u8; 20], [u8; 20]>,
    /// Peers that dropped our MSE handshake: dialled in plaintext next.
    plain_only: HashSet<SocketAddr>,
    /// Pieces to hash and write, and sessions whose files to close, for
    /// the disk thread (in order).
    disk: VecDeque<DiskRequest>,
    /// The torrent of each running session instance.
    by_instance: HashMap<u64, u64>,
    /// Session instances started so far.
    instances: u64,
}

/// Fresh secrets for one MSE handshake: the private key from the
/// system's random source, the padding's length and bytes from `rng`
/// (they only need to look random).
fn mse_secrets(rng: &mut fastrand::Rng) -> Secrets {
    let mut key = [0u8; 20];
    if let Err(e) = getrandom::getrandom(&mut key) {
        warn!("no system randomness ({e}): an MSE key from the fallback generator");
        rng.fill(&mut key);
    }
    if key == [0; 20] {
        key[19] = 1;
    }
    let mut pad = vec![0u8; rng.usize(..=mse::MAX_PAD)];
    rng.fill(&mut pad);
    Secrets {
        private_key: key,
        pad,
    }
}

/// Whether serving one block went through.
enum Served {
    /// A block was queued; the peer may have more.
    One,
    /// Nothing to serve now (no request, or its output is full).
    Idle,
    /// The upload limit is spent for now; the block needs this many
    /// bytes of it.
    Starved(usize),
}

/// A client's name from an Azureus-style peer id (`-TR3000-...` gives
/// `TR 3000`), or "" for other styles.
fn client_name(id: &[u8; 20]) -> String {
    let tag = &id[..8];
    let ok = tag[0] == b'-' && tag[7] == b'-' && tag[1..7].iter().all(u8::is_ascii_alphanumeric);
    if !ok {
        return String::new();
    }
    format!(
        "{} {}",
        String::from_utf8_lossy(&tag[1..3]),
        String::from_utf8_lossy(&tag[3..7])
    )
}

/// A fresh peer id: `-TP0100-` (Azureus style: client TP, version 0.1.0.0)
/// and 12 random bytes.
pub fn new_peer_id(rng: &mut fastrand::Rng) -> [u8; 20] {
    let mut id = [0u8; 20];
    id[..8].copy_from_slice(b"-TP0100-");
    for b in &mut id[8..] {
        *b = rng.alphanumeric() as u8;
    }
    id
}

impl Swarm {
    /// A swarm speaking as `peer_id`.
    pub fn new(peer_id: [u8; 20], limits: Limits, rng: fastrand::Rng) -> Swarm {
        let now = Instant::now();
        Swarm {
            peer_id,
            limits,
            rng,
            sessions: HashMap::new(),
            by_hash: HashMap::new(),
            peers: Slab::new(),
            half_open: 0,
            suspects: Suspects::default(),
            to_close: Vec::new(),
            events: VecDeque::new(),
            manners: Manners::default(),
            up: TokenBucket::unlimited(now),
            down: TokenBucket::unlimited(now),
            upload_queue: VecDeque::new(),
            upload_need: 0,
            by_req2: HashMap::new(),
            plain_only: HashSet::new(),
            disk: VecDeque::new(),
            by_instance: HashMap::new(),
            instances: 0,
        }
    }

    /// Follows the settings: limits take effect at once; turning peer
    /// exchange off stops it with every peer.
    pub fn set_manners(&mut self, m: Manners, now: Instant) {
        if m == self.manners {
            return;
        }
        self.up.set_rate(m.upload_limit, now);
        self.down.set_rate(m.download_limit, now);
        if !m.pex {
            for (_, p) in self.peers.iter_mut() {
                p.pex = None;
            }
        }
        self.manners = m;
    }

    /// The settings followed.
    pub fn manners(&self) -> Manners {
        self.manners
    }

    /// Bytes the reactor may read from peers now (the download limit);
    /// `usize::MAX` without one.
    pub fn read_allowance(&self, now: Instant) -> usize {
        self.down.available(now)
    }

    /// When reading may go on, after [`Swarm::read_allowance`] said 0.
    pub fn read_wake(&self, now: Instant) -> Option<Instant> {
        self.down.poll_timeout(now)
    }

    /// Our peer id.
    pub fn peer_id(&self) -> [u8; 20] {
        self.peer_id
    }

    /// Whether torrent `id` has a running session.
    pub fn is_running(&self, id: u64) -> bool {
        self.sessions.contains_key(&id)
    }

    /// Ids of the running sessions.
    pub fn running(&self) -> Vec<u64> {
        self.sessions.keys().copied().collect()
    }

    /// Starts moving data for `t` (its verified pieces as the registry
    /// knows them). `None` if its geometry cannot be handled.
    pub fn start(&mut self, t: &Torrent, now: Instant) -> Option<()> {
        if self.sessions.contains_key(&t.id) {
            return Some(());
        }
        let s = Session::new(t, self.instances + 1, self.limits.max_partial_bytes, now)?;
        self.instances += 1;
        self.by_instance.insert(s.instance, t.id);
        self.by_hash.insert(t.info_hash, t.id);
        self.by_req2
            .insert(mse::req2_hash(&t.info_hash), t.info_hash);
        self.sessions.insert(t.id, s);
        // A magnet link's peers are tried first.
        self.add_peers(t.id, &t.hints.peers, Source::Cache);
        info!("torrent {}: session started", t.id);
        Some(())
    }

    /// Stops torrent `id`: its peers are closed, its files released.
    pub fn stop(&mut self, id: u64) {
        let Some(s) = self.sessions.remove(&id) else {
            return;
        };
        self.by_hash.remove(&s.info_hash);
        self.by_req2.remove(&mse::req2_hash(&s.info_hash));
        // Its pieces at the disk thread are written, their answers dropped.
        self.by_instance.remove(&s.instance);
        self.suspects.forget_torrent(id);
        self.disk.push_back(DiskRequest::Forget {
            session: s.instance,
        });
        for key in s.peers {
            self.close(key.0, "torrent stopped");
        }
        info!("torrent {id}: session stopped");
    }

    /// Torrent `id`'s info hash, if its session runs.
    pub fn info_hash(&self, id: u64) -> Option<[u8; 20]> {
        self.sessions.get(&id).map(|s| s.info_hash)
    }

    /// Where torrent `id`'s session is, if it runs.
    pub fn stage(&self, id: u64) -> Option<Stage> {
        self.sessions.get(&id).map(Session::stage)
    }

    /// Torrent `id`'s metadata arrived (`t` has it): its peers learn the
    /// geometry, and what they said they have is checked against it (a
    /// peer that lied is closed). Nothing moves until its data is checked
    /// ([`Swarm::set_pieces`]). `false` if `t` has no metadata or its
    /// session does not run.
    pub fn set_geometry(&mut self, t: &Torrent, now: Instant) -> bool {
        let Some(s) = self.sessions.get_mut(&t.id) else {
            return false;
        };
        if !s.set_geometry(t) {
            return false;
        }
        let Some(g) = s.geometry else {
            return false;
        };
        // Peers hear of our metadata (a second extension handshake, as
        // BEP 10 allows); a private torrent stops peer exchange.
        let ours = extension_handshake(s, &self.manners);
        let mut failed = Vec::new();
        for k in s.peers.clone() {
            let Some(p) = self.peers.get_mut(k.0) else {
                continue;
            };
            if p.conn.handshake().is_none() || p.dialing {
                continue;
            }
            if s.private {
                p.pex = None;
            }
            p.conn.extended(HANDSHAKE_EXT_ID, &ours, now);
            match p.conn.set_geometry(g) {
                Ok(()) => s.count_peer(&p.conn, &mut p.has),
                Err(e) => failed.push((k.0, e)),
            }
        }
        for (k, e) in failed {
            self.close(k, &e.to_string());
        }
        true
    }

    /// Torrent `id`'s data is checked (`t` says which pieces are good): its
    /// pieces move. Peers hear what we have (as `have`s: a bitfield may
    /// only come first) and are counted by the picker. `false` if its
    /// geometry is beyond this engine (the session then stays idle).
    pub fn set_pieces(&mut self, t: &Torrent, now: Instant) -> bool {
        let Some(s) = self.sessions.get_mut(&t.id) else {
            return false;
        };
        if !s.set_pieces(t) {
            return false;
        }
        let have: Vec<u32> = s
            .have_bitfield()
            .map(|b| b.iter_set().map(|i| i as u32).collect())
            .unwrap_or_default();
        for k in s.peers.clone() {
            let Some(p) = self.peers.get_mut(k.0) else {
                continue;
            };
            if p.conn.handshake().is_none() || p.dialing {
                continue;
            }
            for &piece in &have {
                p.conn.have(piece, now);
            }
            s.count_peer(&p.conn, &mut p.has);
            s.update_interest(&mut p.conn, &p.has, now);
        }
        s.choker.force();
        self.request_more_all(t.id, now);
        true
    }

    /// Addresses learned for torrent `id` (from a tracker, PEX...).
    pub fn add_peers(&mut self, id: u64, addrs: &[SocketAddr], source: Source) {
        if let Some(s) = self.sessions.get_mut(&id) {
            for a in addrs {
                if !self.suspects.is_banned(*a) {
                    s.add_candidate(*a, source);
                }
            }
        }
    }

    /// Figures for `get-status`.
    pub fn stats(&self, id: u64, now: Instant) -> Option<Stats> {
        let s = self.sessions.get(&id)?;
        let mut st = Stats {
            download_rate: s.down.rate(now),
            upload_rate: s.up.rate(now),
            swarm_rate: s.swarm.rate(now),
            downloaded: s.downloaded,
            uploaded: s.uploaded,
            left: s.missing_bytes(),
            metadata_percent: s.metadata.percent(),
            ..Stats::default()
        };
        for p in s.peers.iter().filter_map(|k| self.peers.get(k.0)) {
            if p.dialing {
                continue;
            }
            st.peers += 1;
            st.peers_from[p.source as usize] += 1;
            if s.metadata.is_fetching() && p.ut_metadata.is_some() {
                st.metadata_peers += 1;
            }
            if !p.conn.peer_choking() && p.conn.am_interested() {
                st.peers_sending += 1;
            }
            if !p.conn.am_choking() && p.conn.peer_interested() {
                st.peers_receiving += 1;
            }
        }
        Some(st)
    }

    /// The connected peers of torrent `id`.
    pub fn peer_list(&self, id: u64, now: Instant) -> Vec<PeerInfo> {
        let Some(s) = self.sessions.get(&id) else {
            return Vec::new();
        };
        let pieces = s.geometry.map_or(1, |g| g.pieces().max(1)) as f64;
        s.peers
            .iter()
            .filter_map(|k| self.peers.get(k.0))
            .filter_map(|p| {
                let h = p.conn.handshake()?;
                Some(PeerInfo {
                    address: p.addr.to_string(),
                    client: client_name(&h.peer_id),
                    download_rate: p.down.rate(now) as u64,
                    upload_rate: p.up.rate(now) as u64,
                    progress: p.has.count() as f64 / pieces,
                    interested: p.conn.am_interested(),
                    choked: p.conn.peer_choking(),
                    peer_interested: p.conn.peer_interested(),
                    peer_choked: p.conn.am_choking(),
                    incoming: p.source == Source::Incoming,
                })
            })
            .collect()
    }

    /// Payload bytes received and sent by torrent `id` since the last
    /// call (for totals kept across restarts).
    pub fn take_transferred(&mut self, id: u64) -> (u64, u64) {
        let Some(s) = self.sessions.get_mut(&id) else {
            return (0, 0);
        };
        let delta = (s.downloaded - s.reported.0, s.uploaded - s.reported.1);
        s.reported = (s.downloaded, s.uploaded);
        delta
    }

    /// A peer connected to us from `addr` over `transport`; `None` when it
    /// is refused (banned, or too many peers).
    pub fn accept(
        &mut self,
        addr: SocketAddr,
        transport: Transport,
        now: Instant,
    ) -> Option<usize> {
        if self.suspects.is_banned(addr) || self.peers.len() >= self.limits.max_peers {
            return None;
        }
        let peer = Peer::new(
            PeerConn::incoming(now),
            Link::incoming(),
            addr,
            transport,
            now,
        );
        Some(self.peers.insert(peer))
    }

    /// The next connection to open, if the limits allow one.
    pub fn poll_dial(&mut self, now: Instant) -> Option<Dial> {
        if self.half_open >= self.limits.max_half_open || self.peers.len() >= self.limits.max_peers
        {
            return None;
        }
        let per_torrent = self.limits.max_peers_per_torrent;
        let (id, s) = self
            .sessions
            .iter_mut()
            .find(|(_, s)| s.peers.len() < per_torrent && s.wants_peers())?;
        let id = *id;
        let (addr, source) = s.next_candidate()?;
        let info_hash = s.info_hash;
        let private = s.private;
        let link = match self.manners.encryption {
            Policy::Tolerated => Link::plain(),
            Policy::Preferred if self.plain_only.contains(&addr) => Link::plain(),
            policy => match Link::initiate(info_hash, policy, mse_secrets(&mut self.rng)) {
                Ok(link) => link,
                Err(e) => {
                    warn!("peer {addr}: {e}");
                    return None;
                }
            },
        };
        let transport = Transport::Tcp;
        let conn = PeerConn::outgoing(self.our_handshake(info_hash, private), now);
        let mut peer = Peer::new(conn, link, addr, transport, now);
        peer.listen = Some(addr);
        peer.torrent = Some(id);
        peer.source = source;
        peer.dialing = true;
        let key = self.peers.insert(peer);
        if let Some(s) = self.sessions.get_mut(&id) {
            s.peers.push(PeerKey(key));
        }
        self.half_open += 1;
        Some(Dial {
            key,
            addr,
            transport,
        })
    }

    /// Our handshake for a torrent: the extension protocol offered.
    fn our_handshake(&self, info_hash: [u8; 20], private: bool) -> Handshake {
        Handshake {
            reserved: our_reserved(self.manners.dht_port.is_some() && !private),
            info_hash,
            peer_id: self.peer_id,
        }
    }

    /// An outgoing connection is established (`true`) or failed.
    pub fn dialed(&mut self, key: usize, ok: bool, now: Instant) {
        let Some(p) = self.peers.get_mut(key) else {
            return;
        };
        if p.dialing {
            p.dialing = false;
            self.half_open = self.half_open.saturating_sub(1);
        }
        p.connected_at = now;
        if !ok {
            // Nobody there: no plaintext retry either.
            p.link.may_fall_back = false;
            self.close(key, "connection failed");
        }
    }

    /// Bytes from peer `key`: runs its messages.
    pub fn receive(&mut self, key: usize, bytes: &[u8], now: Instant) {
        let Some(p) = self.peers.get_mut(key) else {
            return;
        };
        if p.closing {
            return;
        }
        // The download limit counts what is read (payload and the little
        // framing around it): the reactor reads no more than allowed.
        self.down.take(bytes.len(), now);
        let by_req2 = &self.by_req2;
        let rng = &mut self.rng;
        let fed = p.link.receive(
            bytes,
            &mut p.conn,
            self.manners.encryption,
            &mut || mse_secrets(rng),
            &|h| by_req2.get(h).copied(),
            now,
        );
        if let Err(e) = fed {
            self.close(key, &e);
            return;
        }
        if let Err(e) = self.drive(key, now) {
            self.close(key, &e.to_string());
        } else if self.peers.get(key).is_some_and(|p| !p.conn.wants_input()) {
            self.close(key, "sends more than it lets us parse");
        }
        self.want_upload(key);
        self.pump_uploads(now);
    }

    /// Lists `key` in the upload queue if it has requests and room.
    fn want_upload(&mut self, key: usize) {
        if let Some(p) = self.peers.get_mut(key) {
            let ready = p.conn.peer_request_count() > 0
                && p.conn.queued_output() < UPLOAD_SOFT_LIMIT
                && !p.closing;
            if ready && !p.uploading {
                p.uploading = true;
                self.upload_queue.push_back(key);
            }
        }
    }

    /// Serves queued peers one block each in turn while the upload limit
    /// allows; a peer starved of tokens is first when they come back.
    fn pump_uploads(&mut self, now: Instant) {
        while let Some(key) = self.upload_queue.pop_front() {
            match self.serve_block(key, now) {
                Ok(Served::One) => self.upload_queue.push_back(key),
                Ok(Served::Starved(need)) => {
                    self.upload_queue.push_front(key);
                    self.upload_need = need;
                    return;
                }
                Ok(Served::Idle) => {
                    if let Some(p) = self.peers.get_mut(key) {
                        p.uploading = false;
                    }
                }
                Err((id, e)) => {
                    if let Some(p) = self.peers.get_mut(key) {
                        p.uploading = false;
                    }
                    match e {
                        ServeError::Peer(e) => self.close(key, &e.to_string()),
                        ServeError::Storage(e) => self.events_storage(id, e),
                    }
                }
            }
        }
    }

    fn serve_block(&mut self, key: usize, now: Instant) -> Result<Served, (u64, ServeError)> {
        let Some(p) = self.peers.get_mut(key) else {
            return Ok(Served::Idle);
        };
        if p.closing || p.conn.queued_output() >= UPLOAD_SOFT_LIMIT {
            return Ok(Served::Idle);
        }
        let Some(len) = p.conn.peek_peer_request().map(|b| b.length as usize) else {
            return Ok(Served::Idle);
        };
        let Some(s) = p.torrent.and_then(|id| self.sessions.get_mut(&id)) else {
            return Ok(Served::Idle);
        };
        // A block larger than the bucket holds goes when it is full.
        let need = self.up.capacity().map_or(len, |c| len.min(c));
        if self.up.available(now) < need {
            return Ok(Served::Starved(need));
        }
        self.up.take(len, now);
        s.serve_block(&mut p.conn, &mut p.up, now)
            .map(|()| Served::One)
            .map_err(|e| (s.id, e))
    }

    fn drive(&mut self, key: usize, now: Instant) -> Result<(), PeerError> {
        if self
            .peers
            .get(key)
            .is_some_and(|p| p.conn.handshake().is_none())
        {
            self.handshake(key, now)?;
        }
        let Some(p) = self.peers.get_mut(key) else {
            return Ok(());
        };
        let Some(id) = p.torrent else {
            return Ok(());
        };
        let Some(s) = self.sessions.get_mut(&id) else {
            return Ok(());
        };
        let mut effects = session::Effects::default();
        let mut extended = Vec::new();
        let mut dht_nodes = Vec::new();
        while let Some(msg) = p.conn.poll_message()? {
            if let Message::Extended { id, payload } = msg {
                // Bounded by the largest message a peer may send.
                extended.push((id, payload.to_vec()));
                continue;
            }
            if let Message::HaveAll | Message::HaveNone | Message::RejectRequest(_) = msg {
                debug!("peer {}: {msg:?}", p.addr);
            }
            if let Message::Port(port) = msg {
                if port != 0 && self.manners.dht_port.is_some() && !s.private {
                    dht_nodes.push(SocketAddr::new(p.addr.ip(), port));
                }
            }
            s.handle(
                PeerKey(key),
                msg,
                &mut p.has,
                &mut p.down,
                now,
                &mut effects,
            )?;
        }
        for b in p.conn.take_dropped_requests() {
            s.requests_dropped(PeerKey(key), &[b]);
        }
        s.give_allowed_fast(&mut p.conn, &p.has, p.addr.ip(), now);
        s.update_interest(&mut p.conn, &p.has, now);
        s.request_more(
            PeerKey(key),
            &mut p.conn,
            &p.has,
            &p.down,
            &mut self.rng,
            now,
        );
        let both_seeds = s.is_complete() && p.conn.peer_is_seed();
        self.apply(id, effects, now);
        for addr in dht_nodes {
            self.events.push_back(SwarmEvent::DhtNode { addr });
        }
        for (ext, payload) in extended {
            self.extended(key, id, ext, &payload, now);
        }
        if both_seeds {
            // Seeds are not interested in seeds.
            return Err(PeerError::BothSeeds);
        }
        Ok(())
    }

    /// Whether torrent `id` may use peer exchange.
    fn pex_allowed(&self, id: u64) -> bool {
        self.manners.pex && self.sessions.get(&id).is_some_and(|s| !s.private)
    }

    /// An extension protocol message from peer `key` of torrent `id`.
    fn extended(&mut self, key: usize, id: u64, ext: u8, payload: &[u8], now: Instant) {
        let result = match ext {
            HANDSHAKE_EXT_ID => self.extended_handshake(key, id, payload, now),
            OUR_UT_PEX_ID => {
                self.pex_message(key, id, payload, now);
                Ok(())
            }
            OUR_UT_METADATA_ID => match (self.peers.get_mut(key), self.sessions.get_mut(&id)) {
                (Some(p), Some(s)) => s.metadata.message(key, p, payload, now),
                _ => Ok(()),
            },
            _ => Ok(()),
        };
        if let Err(e) = result {
            self.close(key, &e);
        }
        self.metadata_events(id, now);
    }

    /// A peer's extension handshake (BEP 10): its listen port, its peer
    /// exchange and metadata exchange ids.
    fn extended_handshake(
        &mut self,
        key: usize,
        id: u64,
        payload: &[u8],
        now: Instant,
    ) -> Result<(), String> {
        let pex_allowed = self.pex_allowed(id);
        let Some(p) = self.peers.get_mut(key) else {
            return Ok(());
        };
        let hs = match ExtendedHandshake::parse(payload) {
            Ok(hs) => hs,
            Err(e) => {
                debug!("peer {}: extension handshake ignored: {e}", p.addr);
                return Ok(());
            }
        };
        if let (Source::Incoming, Some(port)) = (p.source, hs.listen_port) {
            p.listen = Some(SocketAddr::new(p.addr.ip(), port));
        }
        match (hs.extension_id(UT_PEX), &mut p.pex) {
            (Some(id), Some(x)) => x.id = id,
            (Some(id), None) if pex_allowed => {
                let mut state = PexState::new(p.addr, now);
                if let Some(l) = p.listen {
                    state.set_listen_port(l.port());
                }
                p.pex = Some(PexLink { id, state });
            }
            (None, _) => p.pex = None,
            _ => {}
        }
        match self.sessions.get_mut(&id) {
            Some(s) => s.metadata.peer_handshake(key, p, &hs, now),
            None => Ok(()),
        }
    }

    /// A peer exchange message (BEP 11): the peers it names, at most so
    /// often.
    fn pex_message(&mut self, key: usize, id: u64, payload: &[u8], now: Instant) {
        if !self.pex_allowed(id) {
            return;
        }
        let Some(p) = self.peers.get_mut(key) else {
            return;
        };
        let Some(x) = p.pex.as_mut() else {
            return;
        };
        if !x.state.accept_received(now) {
            debug!("peer {}: peer exchange too often, ignored", p.addr);
            return;
        }
        match PexMessage::parse(payload) {
            Ok(m) => {
                let addrs: Vec<SocketAddr> = m.added.iter().map(|(a, _)| *a).collect();
                debug!("peer {}: peer exchange named {} peers", p.addr, addrs.len());
                self.add_peers(id, &addrs, Source::Pex);
            }
            Err(e) => debug!("peer {}: peer exchange ignored: {e}", p.addr),
        }
    }

    /// What torrent `id`'s metadata fetch decided: the verified info
    /// dictionary for the registry, liars closed.
    fn metadata_events(&mut self, id: u64, now: Instant) {
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        let mut drops = Vec::new();
        while let Some(e) = s.metadata.poll_event() {
            match e {
                FetchEvent::Done(info) => {
                    self.events
                        .push_back(SwarmEvent::MetadataFetched { torrent: id, info });
                }
                FetchEvent::Drop { peer, reason } => drops.push((peer, reason)),
            }
        }
        for (k, why) in drops {
            self.close(k, &why.to_string());
        }
        // Requests freed by a drop or a timeout go to the others.
        if let Some(s) = self.sessions.get_mut(&id) {
            if s.metadata.is_fetching() {
                for k in s.peers.clone() {
                    if let Some(p) = self.peers.get_mut(k.0).filter(|p| !p.closing) {
                        s.metadata.ask(k.0, p, now);
                    }
                }
            }
        }
    }

    /// Sends peer exchange messages that are due: each peer hears of the
    /// torrent's other peers at most once a minute.
    fn exchange_peers(&mut self, now: Instant) {
        let ids: Vec<u64> = self.sessions.keys().copied().collect();
        for id in ids {
            if !self.pex_allowed(id) {
                continue;
            }
            let Some(s) = self.sessions.get(&id) else {
                continue;
            };
            let due = s.peers.iter().any(|k| {
                self.peers
                    .get(k.0)
                    .and_then(|p| p.pex.as_ref())
                    .is_some_and(|x| x.state.poll_timeout() <= now)
            });
            if !due {
                continue;
            }
            let connected: Vec<(SocketAddr, PexFlags)> = s
                .peers
                .iter()
                .filter_map(|k| self.peers.get(k.0))
                .filter(|p| p.conn.handshake().is_some() && !p.closing)
                .filter_map(|p| {
                    let mut flags = 0;
                    if p.link.is_encrypted() {
                        flags |= PexFlags::ENCRYPTION;
                    }
                    if p.conn.peer_is_seed() {
                        flags |= PexFlags::SEED;
                    }
                    if p.source != Source::Incoming {
                        flags |= PexFlags::REACHABLE;
                    }
                    flags |= p.transport.pex_flags();
                    Some((p.listen?, PexFlags(flags)))
                })
                .collect();
            for k in s.peers.clone() {
                let Some(p) = self.peers.get_mut(k.0) else {
                    continue;
                };
                let Some(x) = p.pex.as_mut() else {
                    continue;
                };
                if let Some(m) = x.state.poll_message(&connected, now) {
                    debug!(
                        "peer {}: peer exchange sent: {} added, {} dropped",
                        p.addr,
                        m.added.len(),
                        m.dropped.len()
                    );
                    p.conn.extended(x.id, &m.encode(), now);
                }
            }
        }
    }

    fn events_storage(&mut self, id: u64, e: crate::engine::storage::StorageError) {
        self.events.push_back(SwarmEvent::StorageFailed {
            torrent: id,
            kind: e.source.kind(),
            error: e.to_string(),
        });
    }

    /// What handling messages decided beyond the peer itself.
    fn apply(&mut self, id: u64, fx: session::Effects, now: Instant) {
        for piece in &fx.verified {
            self.events.push_back(SwarmEvent::PieceVerified {
                torrent: id,
                piece: *piece,
            });
        }
        if let Some(e) = fx.storage_error {
            self.events_storage(id, e);
        }
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        for (job, from) in fx.finished {
            let senders: Vec<SocketAddr> = from
                .iter()
                .filter_map(|k| self.peers.get(k.0).map(|p| p.addr))
                .collect();
            self.suspects.checking(id, job.piece, &senders);
            self.disk.push_back(DiskRequest::Piece(job));
        }
        for k in s.peers.clone() {
            let Some(p) = self.peers.get_mut(k.0) else {
                continue;
            };
            for piece in &fx.verified {
                if !p.dialing && p.conn.handshake().is_some() {
                    p.conn.have(*piece, now);
                }
            }
            for (who, b) in &fx.cancels {
                if *who == k {
                    p.conn.cancel(*b, now);
                }
            }
            if !fx.verified.is_empty() {
                s.update_interest(&mut p.conn, &p.has, now);
            }
        }
    }

    /// Closes every peer whose address is banned.
    fn close_banned(&mut self) {
        let banned: Vec<usize> = self
            .peers
            .iter()
            .filter(|(_, p)| self.suspects.is_banned(p.addr))
            .map(|(k, _)| k)
            .collect();
        for k in banned {
            self.close(k, "banned");
        }
    }

    /// The next request for the disk thread: a piece to hash and write, or
    /// a session whose files to close. The answers go to
    /// [`Swarm::disk_done`].
    pub fn poll_disk(&mut self) -> Option<DiskRequest> {
        self.disk.pop_front()
    }

    /// The disk thread checked (and maybe wrote) a piece. Answers for a
    /// session that has ended are dropped.
    pub fn disk_done(&mut self, done: PieceDone, now: Instant) {
        let Some(&id) = self.by_instance.get(&done.session) else {
            return;
        };
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        let piece = done.piece;
        let good = !matches!(done.outcome, Outcome::BadHash);
        let mut fx = session::Effects::default();
        s.piece_checked(done, &mut fx);
        self.apply(id, fx, now);
        if !self.suspects.checked(id, piece, good).is_empty() {
            self.close_banned();
        }
        // The piece's memory is free again: peers held back by the bound
        // on pieces in memory may be asked for more.
        self.request_more_all(id, now);
    }

    /// Tops up the requests to every peer of torrent `id`.
    fn request_more_all(&mut self, id: u64, now: Instant) {
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        for i in 0..s.peers.len() {
            let k = s.peers[i];
            let Some(p) = self.peers.get_mut(k.0) else {
                continue;
            };
            if p.closing || p.dialing || p.conn.handshake().is_none() {
                continue;
            }
            s.request_more(k, &mut p.conn, &p.has, &p.down, &mut self.rng, now);
        }
    }

    /// The handshake of `key`: for an incoming peer, find its torrent and
    /// answer; for a dialled one, check it.
    fn handshake(&mut self, key: usize, now: Instant) -> Result<(), PeerError> {
        let Some(p) = self.peers.get_mut(key) else {
            return Ok(());
        };
        let Some(h) = p.conn.poll_handshake()? else {
            return Ok(());
        };
        let id = match p.torrent {
            Some(id) => id,
            None => {
                // An MSE handshake named its torrent already (through
                // HASH('req2', ..)): the plaintext one must agree.
                if p.link.mse_torrent.is_some_and(|t| t != h.info_hash) {
                    return Err(PeerError::WrongTorrent);
                }
                let id = *self
                    .by_hash
                    .get(&h.info_hash)
                    .ok_or(PeerError::WrongTorrent)?;
                let s = self.sessions.get_mut(&id).ok_or(PeerError::WrongTorrent)?;
                if s.peers.len() >= self.limits.max_peers_per_torrent {
                    return Err(PeerError::OutOfRange("peers of this torrent (limit)"));
                }
                let dht = self.manners.dht_port.is_some() && !s.private;
                p.conn.accept(Handshake {
                    reserved: our_reserved(dht),
                    info_hash: h.info_hash,
                    peer_id: self.peer_id,
                })?;
                p.torrent = Some(id);
                s.peers.push(PeerKey(key));
                id
            }
        };
        let Some(s) = self.sessions.get_mut(&id) else {
            return Err(PeerError::WrongTorrent);
        };
        let twin = s.peers.iter().any(|k| {
            k.0 != key
                && self
                    .peers
                    .get(k.0)
                    .and_then(|q| q.conn.handshake())
                    .is_some_and(|q| q.peer_id == h.peer_id)
        });
        if twin {
            return Err(PeerError::Duplicate);
        }
        let Some(p) = self.peers.get_mut(key) else {
            return Ok(());
        };
        s.attach(&mut p.conn, &mut p.has);
        s.choker.force();
        p.connected_at = now;
        if h.reserved[EXTENSION_BIT.0] & EXTENSION_BIT.1 != 0 {
            let ours = extension_handshake(s, &self.manners);
            p.conn.extended(HANDSHAKE_EXT_ID, &ours, now);
        }
        // BEP 5: both run a DHT node: tell it where ours is.
        if let Some(port) = self.manners.dht_port.filter(|_| !s.private) {
            if h.reserved[DHT_BIT.0] & DHT_BIT.1 != 0 {
                p.conn.port(port, now);
            }
        }
        let how = if p.link.is_encrypted() {
            "encrypted"
        } else {
            "plaintext"
        };
        debug!("peer {}: handshake done for torrent {id} ({how})", p.addr);
        self.events.push_back(SwarmEvent::PeerConnected {
            torrent: id,
            addr: p.addr,
        });
        Ok(())
    }

    /// Bytes to send to peer `key`.
    pub fn output(&mut self, key: usize) -> &[u8] {
        match self.peers.get_mut(key) {
            Some(p) => p.link.output(&mut p.conn),
            None => &[],
        }
    }

    /// `n` bytes of [`Swarm::output`] were sent; serves more blocks if
    /// the peer is waiting for them.
    pub fn consume_output(&mut self, key: usize, n: usize, now: Instant) {
        let Some(p) = self.peers.get_mut(key) else {
            return;
        };
        p.link.consume(n, &mut p.conn);
        if p.conn.queued_output() < UPLOAD_SOFT_LIMIT / 2 {
            self.want_upload(key);
            self.pump_uploads(now);
        }
    }

    /// The peer hung up or its socket failed.
    pub fn hang_up(&mut self, key: usize) {
        self.close(key, "hung up");
    }

    fn close(&mut self, key: usize, why: &str) {
        if let Some(p) = self.peers.get_mut(key) {
            if !p.closing {
                debug!("peer {}: closing: {why}", p.addr);
                p.closing = true;
                self.to_close.push(key);
            }
        }
    }

    /// The next peer whose socket must be closed; then call
    /// [`Swarm::closed`].
    pub fn poll_close(&mut self) -> Option<usize> {
        self.to_close.pop()
    }

    /// Peer `key`'s socket is closed: forget it.
    pub fn closed(&mut self, key: usize) {
        let Some(p) = self.peers.try_remove(key) else {
            return;
        };
        if p.dialing {
            self.half_open = self.half_open.saturating_sub(1);
        }
        self.to_close.retain(|k| *k != key);
        if p.uploading {
            self.upload_queue.retain(|k| *k != key);
        }
        let Some(id) = p.torrent else {
            return;
        };
        if let Some(s) = self.sessions.get_mut(&id) {
            if p.link.may_fall_back && p.link.is_initiating() && !p.dialing {
                // Connected, then our MSE handshake was dropped: maybe a
                // client without encryption. Once more in plaintext.
                if self.plain_only.len() >= MAX_PLAIN_ONLY {
                    self.plain_only.clear();
                }
                self.plain_only.insert(p.addr);
                s.retry_candidate(p.addr, p.source);
                debug!("peer {}: encryption refused; trying plaintext", p.addr);
            }
            s.peer_gone(PeerKey(key), &p.has);
            if p.conn.handshake().is_some() {
                self.events.push_back(SwarmEvent::PeerDisconnected {
                    torrent: id,
                    addr: p.addr,
                });
            }
        }
    }

    /// What the registry or the log must learn.
    pub fn poll_event(&mut self) -> Option<SwarmEvent> {
        self.events.pop_front()
    }

    /// When [`Swarm::handle_timeout`] must next run.
    pub fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        let peers = self.peers.iter().map(|(_, p)| p.conn.poll_timeout());
        let pex = self
            .peers
            .iter()
            .filter_map(|(_, p)| p.pex.as_ref().map(|x| x.state.poll_timeout()));
        let chokers = self.sessions.values().map(|s| s.choker.poll_timeout());
        let metadata = self
            .sessions
            .values()
            .filter_map(|s| s.metadata.poll_timeout());
        // Woken when the starved peer's block is affordable: the bucket
        // may even hold it already (it refills between turns).
        let uploads = if self.upload_queue.is_empty() {
            None
        } else {
            self.up.when_available(self.upload_need, now)
        };
        peers
            .chain(pex)
            .chain(chokers)
            .chain(metadata)
            .chain(uploads)
            .min()
    }

    /// Timers: peers' deadlines and keep-alives, rechoking.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut failed = Vec::new();
        for (k, p) in self.peers.iter_mut() {
            if let Err(e) = p.conn.handle_timeout(now) {
                failed.push((k, e));
            }
        }
        for (k, e) in failed {
            self.close(k, &e.to_string());
        }
        for s in self.sessions.values_mut() {
            if s.metadata.poll_timeout().is_some_and(|t| t <= now) {
                s.metadata.handle_timeout(now);
            }
            if s.choker.poll_timeout() > now {
                continue;
            }
            s.rechoke(&mut self.peers, &mut self.rng, now);
        }
        for id in self.running() {
            self.metadata_events(id, now);
        }
        self.exchange_peers(now);
        self.pump_uploads(now);
    }

    /// Peers connected (handshaken or not) in all.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// Whether the piece picker of `id` has everything.
    pub fn is_complete(&self, id: u64) -> bool {
        self.sessions.get(&id).is_some_and(|s| s.is_complete())
    }

    /// The picker of `id` (tests and status).
    pub fn picker(&self, id: u64) -> Option<&Picker> {
        self.sessions
            .get(&id)
            .and_then(|s| s.pieces.as_ref())
            .map(|p| &p.picker)
    }
}

#[cfg(test)]
mod tests;
