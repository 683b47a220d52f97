//! A small tracker for integration tests (std only): it serves HTTP
//! `GET /announce` and `GET /scrape`, and the UDP tracker protocol (BEP
//! 15: connect, announce, scrape) on a port of its own; keeps a swarm per
//! info hash, answers with compact (or dictionary) peers, and records
//! every announce so tests can check what the engine sent. It can
//! misbehave on demand: drop UDP packets, answer garbage, or never answer.
//!
//! Every test peer is 127.0.0.1, so peers are keyed by (IP, announced
//! port), not by IP alone.

#![allow(dead_code)] // each test binary uses a different part

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Largest request head read.
const MAX_REQUEST: usize = 16 * 1024;

/// One announce as the tracker received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announce {
    /// `info_hash`.
    pub info_hash: [u8; 20],
    /// `peer_id` (raw bytes).
    pub peer_id: Vec<u8>,
    /// The connection's source address.
    pub ip: IpAddr,
    /// `port`.
    pub port: u16,
    /// `event` (`"started"`, `"completed"`, `"stopped"`), if sent.
    pub event: Option<String>,
    /// `left` (0 if absent).
    pub left: u64,
    /// `uploaded` (0 if absent).
    pub uploaded: u64,
    /// `downloaded` (0 if absent).
    pub downloaded: u64,
    /// `numwant`, if sent.
    pub numwant: Option<u32>,
    /// `compact` was not `0`.
    pub compact: bool,
    /// `key`, if sent.
    pub key: Option<String>,
    /// `trackerid`, if sent.
    pub trackerid: Option<Vec<u8>>,
    /// It came over UDP.
    pub udp: bool,
}

/// How the tracker answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Properly.
    #[default]
    Normal,
    /// With bytes that are no tracker reply (HTTP: an HTML page with
    /// status 200; UDP: a short junk datagram).
    Garbage,
    /// Never: HTTP connections are accepted and left hanging, UDP
    /// requests ignored.
    Hang,
}

#[derive(Debug, Clone)]
struct Peer {
    peer_id: Vec<u8>,
    left: u64,
}

#[derive(Default)]
struct State {
    swarms: HashMap<[u8; 20], HashMap<SocketAddr, Peer>>,
    announces: Vec<Announce>,
    interval: u32,
    min_interval: Option<u32>,
    failure: Option<String>,
    warning: Option<String>,
    tracker_id: Option<Vec<u8>>,
    /// Per info hash: the only ports anyone is told of.
    restrict_all: HashMap<[u8; 20], Vec<u16>>,
    /// Per (info hash, asker's port): the only ports that asker is told of.
    restrict_for: HashMap<([u8; 20], u16), Vec<u16>>,
    mode: Mode,
    /// UDP packets still to drop unanswered.
    udp_drop: usize,
    /// UDP packets received (dropped ones included).
    udp_packets: usize,
    /// UDP connection ids handed out.
    connections: HashSet<u64>,
    /// `completed` events per info hash (scrape's `downloaded`).
    completed: HashMap<[u8; 20], u32>,
    /// Added to each torrent's `completed` count.
    base_completed: u32,
    /// Scrapes received, HTTP and UDP, by info hash.
    scrapes: Vec<[u8; 20]>,
}

/// A running test tracker; it stops when dropped.
pub struct TestTracker {
    addr: SocketAddr,
    udp_addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

impl TestTracker {
    /// Binds 127.0.0.1 on free TCP and UDP ports and serves on
    /// background threads.
    pub fn start() -> TestTracker {
        TestTracker::start_with(None)
    }

    /// Like [`TestTracker::start`], with HTTP wrapped by `wrap` (HTTPS).
    pub fn start_with(wrap: Option<Wrap>) -> TestTracker {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind test tracker");
        let addr = listener.local_addr().expect("test tracker address");
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind test UDP tracker");
        let udp_addr = udp.local_addr().expect("test UDP tracker address");
        udp.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("UDP read timeout");
        let state = Arc::new(Mutex::new(State {
            interval: 1800,
            ..State::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let http = {
            let state = Arc::clone(&state);
            let stop = Arc::clone(&stop);
            thread::Builder::new()
                .name("test-tracker".into())
                .spawn(move || serve(&listener, &state, &stop, wrap.as_ref()))
                .expect("spawn test tracker")
        };
        let udp = {
            let state = Arc::clone(&state);
            let stop = Arc::clone(&stop);
            thread::Builder::new()
                .name("test-udp-tracker".into())
                .spawn(move || serve_udp(&udp, &state, &stop))
                .expect("spawn test UDP tracker")
        };
        TestTracker {
            addr,
            udp_addr,
            state,
            stop,
            threads: vec![http, udp],
        }
    }

    /// Like [`TestTracker::start`], serving HTTPS with `config` (use
    /// [`TestTracker::https_url`]). A client that fails the handshake is
    /// dropped, as a real server would.
    pub fn start_tls(config: Arc<rustls::ServerConfig>) -> TestTracker {
        let wrap: Wrap = Box::new(move |tcp| {
            let tls = super::tls::accept(tcp, &config).ok()?;
            Some(Box::new(tls) as Box<dyn Stream>)
        });
        TestTracker::start_with(Some(wrap))
    }

    /// `http://127.0.0.1:PORT/announce`.
    pub fn url(&self) -> String {
        format!("http://{}/announce", self.addr)
    }

    /// `https://127.0.0.1:PORT/announce` (for a tracker started with a
    /// TLS wrap).
    pub fn https_url(&self) -> String {
        format!("https://{}/announce", self.addr)
    }

    /// `udp://127.0.0.1:PORT/announce`.
    pub fn udp_url(&self) -> String {
        format!("udp://{}/announce", self.udp_addr)
    }

    /// How the tracker answers from now on.
    pub fn set_mode(&self, mode: Mode) {
        lock(&self.state).mode = mode;
    }

    /// Drops the next `n` UDP packets unanswered.
    pub fn drop_udp(&self, n: usize) {
        lock(&self.state).udp_drop = n;
    }

    /// UDP packets received so far (dropped ones included).
    pub fn udp_packets(&self) -> usize {
        lock(&self.state).udp_packets
    }

    /// Scrapes received so far (HTTP and UDP), by info hash.
    pub fn scrapes(&self) -> Vec<[u8; 20]> {
        lock(&self.state).scrapes.clone()
    }

    /// Puts a (fake) peer in the swarm of `info_hash`, as if it had
    /// announced with `left` bytes to go.
    pub fn add_peer(&self, info_hash: [u8; 20], addr: SocketAddr, left: u64) {
        lock(&self.state)
            .swarms
            .entry(info_hash)
            .or_default()
            .insert(
                addr,
                Peer {
                    peer_id: vec![b'F'; 20],
                    left,
                },
            );
    }

    /// Sets the count of completed downloads every torrent starts with
    /// (scrape's `downloaded`; `completed` announces add to it).
    pub fn set_completed(&self, n: u32) {
        lock(&self.state).base_completed = n;
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every announce received so far, in order.
    pub fn announces(&self) -> Vec<Announce> {
        lock(&self.state).announces.clone()
    }

    /// Waits (polling) until at least `n` announces arrived or `timeout`
    /// passed, and returns them all.
    pub fn wait_for_announces(&self, n: usize, timeout: Duration) -> Vec<Announce> {
        let end = Instant::now() + timeout;
        loop {
            let all = self.announces();
            if all.len() >= n || Instant::now() >= end {
                return all;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// The peers currently in the swarm of `info_hash`.
    pub fn swarm(&self, info_hash: [u8; 20]) -> Vec<SocketAddr> {
        let mut peers: Vec<SocketAddr> = lock(&self.state)
            .swarms
            .get(&info_hash)
            .map(|s| s.keys().copied().collect())
            .unwrap_or_default();
        peers.sort();
        peers
    }

    /// The `interval` of replies (1800 by default).
    pub fn set_interval(&self, secs: u32) {
        lock(&self.state).interval = secs;
    }

    /// The `min interval` of replies (none by default).
    pub fn set_min_interval(&self, secs: Option<u32>) {
        lock(&self.state).min_interval = secs;
    }

    /// Makes every reply a `failure reason` (or back to normal with `None`).
    /// Failed announces are still recorded, but do not change the swarm.
    pub fn set_failure(&self, reason: Option<&str>) {
        lock(&self.state).failure = reason.map(str::to_string);
    }

    /// Adds a `warning message` to every successful reply.
    pub fn set_warning(&self, warning: Option<&str>) {
        lock(&self.state).warning = warning.map(str::to_string);
    }

    /// Adds a `tracker id` to every successful reply.
    pub fn set_tracker_id(&self, id: Option<&[u8]>) {
        lock(&self.state).tracker_id = id.map(<[u8]>::to_vec);
    }

    /// In the swarm of `info_hash`, tells every peer only of the peers
    /// announcing one of the ports in `only`.
    pub fn restrict(&self, info_hash: [u8; 20], only: Vec<u16>) {
        lock(&self.state).restrict_all.insert(info_hash, only);
    }

    /// In the swarm of `info_hash`, tells the peer announcing port `asker`
    /// only of the peers announcing one of the ports in `only`.
    pub fn restrict_for(&self, info_hash: [u8; 20], asker: u16, only: Vec<u16>) {
        lock(&self.state)
            .restrict_for
            .insert((info_hash, asker), only);
    }
}

impl Drop for TestTracker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A byte stream the tracker can serve HTTP over.
pub trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// Wraps an accepted connection (e.g. in TLS); `None` drops it.
pub type Wrap = Box<dyn Fn(TcpStream) -> Option<Box<dyn Stream>> + Send>;

fn serve(listener: &TcpListener, state: &Mutex<State>, stop: &AtomicBool, wrap: Option<&Wrap>) {
    // Connections of a hanging tracker, held open until it stops.
    let mut held = Vec::new();
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(conn) = conn else { continue };
        if lock(state).mode == Mode::Hang {
            held.push(conn);
            continue;
        }
        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = conn.set_write_timeout(Some(Duration::from_secs(2)));
        let Ok(peer) = conn.peer_addr() else { continue };
        let mut conn: Box<dyn Stream> = match wrap {
            Some(wrap) => match wrap(conn) {
                Some(c) => c,
                None => continue,
            },
            None => Box::new(conn),
        };
        let (status, body) = match read_request(&mut conn) {
            Some(_) if lock(state).mode == Mode::Garbage => (
                "200 OK",
                b"<html><body>Service Temporarily Unavailable</body></html>".to_vec(),
            ),
            Some(target) => respond(&target, peer.ip(), state),
            None => ("400 Bad Request", b"bad request".to_vec()),
        };
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n",
            body.len()
        );
        let _ = conn.write_all(head.as_bytes());
        let _ = conn.write_all(&body);
        let _ = conn.flush();
    }
}

/// Reads the request head and returns the target of a `GET`.
fn read_request(conn: &mut impl Read) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut chunk).ok()?;
        if n == 0 || buf.len() > MAX_REQUEST {
            return None;
        }
        buf.extend_from_slice(chunk.get(..n)?);
    }
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.lines().next()?.split(' ');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("GET"), Some(target), Some(v)) if v.starts_with("HTTP/1.") => {
            Some(target.to_string())
        }
        _ => None,
    }
}

fn unhex(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// Percent-decodes a query component (`+` is a space, as forms have it).
fn percent_decode(s: &str) -> Vec<u8> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let hi = bytes.get(i + 1).copied().and_then(unhex);
                let lo = bytes.get(i + 2).copied().and_then(unhex);
                if let (Some(hi), Some(lo)) = (hi, lo) {
                    out.push(hi << 4 | lo);
                    i += 3;
                    continue;
                }
                out.push(b);
            }
            b'+' => out.push(b' '),
            _ => out.push(b),
        }
        i += 1;
    }
    out
}

fn failure(reason: &str) -> Vec<u8> {
    let mut out = b"d14:failure reason".to_vec();
    bytes(&mut out, reason.as_bytes());
    out.push(b'e');
    out
}

fn bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(format!("{}:", b.len()).as_bytes());
    out.extend_from_slice(b);
}

fn int(out: &mut Vec<u8>, i: u64) {
    out.extend_from_slice(format!("i{i}e").as_bytes());
}

/// What the tracker tells an announcing peer.
struct Answer {
    interval: u32,
    min_interval: Option<u32>,
    seeders: usize,
    leechers: usize,
    /// Other peers, sorted, at most `numwant`.
    peers: Vec<(SocketAddr, Vec<u8>)>,
    tracker_id: Option<Vec<u8>>,
    warning: Option<String>,
}

/// Records `announce` and updates the swarm: the answer, or the failure
/// reason set by the test.
fn register(st: &mut State, announce: &Announce) -> Result<Answer, String> {
    st.announces.push(announce.clone());
    if let Some(reason) = st.failure.clone() {
        return Err(reason);
    }
    let info_hash = announce.info_hash;
    let me = SocketAddr::new(announce.ip, announce.port);
    match announce.event.as_deref() {
        Some("stopped") => {
            st.swarms.entry(info_hash).or_default().remove(&me);
        }
        event => {
            if event == Some("completed") {
                *st.completed.entry(info_hash).or_default() += 1;
            }
            st.swarms.entry(info_hash).or_default().insert(
                me,
                Peer {
                    peer_id: announce.peer_id.clone(),
                    left: announce.left,
                },
            );
        }
    }
    let (seeders, leechers) = counts(st, &info_hash);
    let only = st
        .restrict_for
        .get(&(info_hash, announce.port))
        .or_else(|| st.restrict_all.get(&info_hash));
    let mut peers: Vec<(SocketAddr, Vec<u8>)> = st
        .swarms
        .get(&info_hash)
        .into_iter()
        .flatten()
        .filter(|(addr, _)| **addr != me)
        .filter(|(addr, _)| only.is_none_or(|o| o.contains(&addr.port())))
        .map(|(addr, p)| (*addr, p.peer_id.clone()))
        .collect();
    peers.sort();
    peers.truncate(announce.numwant.map_or(50, |n| n as usize));
    Ok(Answer {
        interval: st.interval,
        min_interval: st.min_interval,
        seeders,
        leechers,
        peers,
        tracker_id: st.tracker_id.clone(),
        warning: st.warning.clone(),
    })
}

/// Seeders and leechers in the swarm of `info_hash`.
fn counts(st: &State, info_hash: &[u8; 20]) -> (usize, usize) {
    let swarm = st.swarms.get(info_hash);
    let all = swarm.map_or(0, HashMap::len);
    let seeders = swarm.map_or(0, |s| s.values().filter(|p| p.left == 0).count());
    (seeders, all - seeders)
}

/// Scrape figures of `info_hash`: seeders, completed, leechers.
fn scrape_of(st: &mut State, info_hash: [u8; 20]) -> (usize, u32, usize) {
    st.scrapes.push(info_hash);
    let (seeders, leechers) = counts(st, &info_hash);
    let completed = st.completed.get(&info_hash).copied().unwrap_or(0) + st.base_completed;
    (seeders, completed, leechers)
}

/// Handles one `GET target`: the status line's text and the body.
fn respond(target: &str, ip: IpAddr, state: &Mutex<State>) -> (&'static str, Vec<u8>) {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let params: HashMap<String, Vec<u8>> = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| {
            (
                String::from_utf8_lossy(&percent_decode(k)).into_owned(),
                percent_decode(v),
            )
        })
        .collect();
    let info_hash = params
        .get("info_hash")
        .and_then(|h| <[u8; 20]>::try_from(h.as_slice()).ok());
    if path == "/scrape" {
        let Some(info_hash) = info_hash else {
            return ("200 OK", failure("invalid info_hash"));
        };
        let (seeders, completed, leechers) = scrape_of(&mut lock(state), info_hash);
        let mut out = b"d5:filesd".to_vec();
        bytes(&mut out, &info_hash);
        out.push(b'd');
        bytes(&mut out, b"complete");
        int(&mut out, seeders as u64);
        bytes(&mut out, b"downloaded");
        int(&mut out, u64::from(completed));
        bytes(&mut out, b"incomplete");
        int(&mut out, leechers as u64);
        out.extend_from_slice(b"eee");
        return ("200 OK", out);
    }
    if path != "/announce" {
        return ("404 Not Found", b"not found".to_vec());
    }
    let text = |k: &str| {
        params
            .get(k)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    let number = |k: &str| text(k).and_then(|v| v.parse::<u64>().ok());
    let Some(info_hash) = info_hash else {
        return ("200 OK", failure("invalid info_hash"));
    };
    let Some(peer_id) = params.get("peer_id").filter(|p| p.len() == 20) else {
        return ("200 OK", failure("invalid peer_id"));
    };
    let Some(port) = number("port").and_then(|p| u16::try_from(p).ok()) else {
        return ("200 OK", failure("invalid port"));
    };
    let announce = Announce {
        info_hash,
        peer_id: peer_id.clone(),
        ip,
        port,
        event: text("event").filter(|e| !e.is_empty()),
        left: number("left").unwrap_or(0),
        uploaded: number("uploaded").unwrap_or(0),
        downloaded: number("downloaded").unwrap_or(0),
        numwant: number("numwant").and_then(|n| u32::try_from(n).ok()),
        compact: text("compact").as_deref() != Some("0"),
        key: text("key"),
        trackerid: params.get("trackerid").cloned(),
        udp: false,
    };
    let no_peer_id = text("no_peer_id").as_deref() == Some("1");
    let answer = match register(&mut lock(state), &announce) {
        Ok(a) => a,
        Err(reason) => return ("200 OK", failure(&reason)),
    };

    // Keys in sorted order, as bencode wants.
    let mut out = b"d".to_vec();
    bytes(&mut out, b"complete");
    int(&mut out, answer.seeders as u64);
    bytes(&mut out, b"incomplete");
    int(&mut out, answer.leechers as u64);
    bytes(&mut out, b"interval");
    int(&mut out, u64::from(answer.interval));
    if let Some(min) = answer.min_interval {
        bytes(&mut out, b"min interval");
        int(&mut out, u64::from(min));
    }
    bytes(&mut out, b"peers");
    if announce.compact {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for (addr, _) in &answer.peers {
            match addr.ip() {
                IpAddr::V4(ip) => v4.extend_from_slice(&ip.octets()),
                IpAddr::V6(ip) => v6.extend_from_slice(&ip.octets()),
            }
            let target = if addr.is_ipv4() { &mut v4 } else { &mut v6 };
            target.extend_from_slice(&addr.port().to_be_bytes());
        }
        bytes(&mut out, &v4);
        if !v6.is_empty() {
            bytes(&mut out, b"peers6");
            bytes(&mut out, &v6);
        }
    } else {
        out.push(b'l');
        for (addr, id) in &answer.peers {
            out.push(b'd');
            bytes(&mut out, b"ip");
            bytes(&mut out, addr.ip().to_string().as_bytes());
            if !no_peer_id {
                bytes(&mut out, b"peer id");
                bytes(&mut out, id);
            }
            bytes(&mut out, b"port");
            int(&mut out, u64::from(addr.port()));
            out.push(b'e');
        }
        out.push(b'e');
    }
    if let Some(id) = &answer.tracker_id {
        bytes(&mut out, b"tracker id");
        bytes(&mut out, id);
    }
    if let Some(w) = &answer.warning {
        bytes(&mut out, b"warning message");
        bytes(&mut out, w.as_bytes());
    }
    out.push(b'e');
    ("200 OK", out)
}

/// BEP 15's magic in a connect request.
const UDP_PROTOCOL_ID: u64 = 0x0417_2710_1980;

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn be64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn serve_udp(socket: &UdpSocket, state: &Mutex<State>, stop: &AtomicBool) {
    let mut buf = [0u8; 2048];
    let mut next_connection = 0x1122_3344_5566_7788u64;
    while !stop.load(Ordering::SeqCst) {
        let Ok((n, from)) = socket.recv_from(&mut buf) else {
            continue; // the read timeout: look at `stop` again
        };
        let packet = buf.get(..n).unwrap_or_default();
        let mut st = lock(state);
        st.udp_packets += 1;
        if st.udp_drop > 0 {
            st.udp_drop -= 1;
            continue;
        }
        let reply = match st.mode {
            Mode::Hang => continue,
            Mode::Garbage => b"garbage!".to_vec(),
            Mode::Normal => {
                next_connection = next_connection.wrapping_mul(31).wrapping_add(7);
                match udp_reply(&mut st, packet, from, next_connection) {
                    Some(r) => r,
                    None => continue,
                }
            }
        };
        drop(st);
        let _ = socket.send_to(&reply, from);
    }
}

/// The answer to one UDP request (`None`: not a request).
fn udp_reply(st: &mut State, p: &[u8], from: SocketAddr, fresh: u64) -> Option<Vec<u8>> {
    let connection = be64(p, 0)?;
    let action = be32(p, 8)?;
    let txid = be32(p, 12)?;
    let mut out = Vec::new();
    let error = |out: &mut Vec<u8>, text: &str| {
        out.extend_from_slice(&3u32.to_be_bytes());
        out.extend_from_slice(&txid.to_be_bytes());
        out.extend_from_slice(text.as_bytes());
    };
    if action == 0 {
        if connection != UDP_PROTOCOL_ID {
            return None;
        }
        st.connections.insert(fresh);
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(&txid.to_be_bytes());
        out.extend_from_slice(&fresh.to_be_bytes());
        return Some(out);
    }
    if !st.connections.contains(&connection) {
        error(&mut out, "Connection ID missmatch.");
        return Some(out);
    }
    match action {
        1 => {
            let info_hash: [u8; 20] = p.get(16..36)?.try_into().ok()?;
            let event = match be32(p, 80)? {
                1 => Some("completed".to_string()),
                2 => Some("started".to_string()),
                3 => Some("stopped".to_string()),
                _ => None,
            };
            let numwant = be32(p, 92)?;
            let announce = Announce {
                info_hash,
                peer_id: p.get(36..56)?.to_vec(),
                ip: from.ip(),
                port: u16::from_be_bytes(p.get(96..98)?.try_into().ok()?),
                event,
                downloaded: be64(p, 56)?,
                left: be64(p, 64)?,
                uploaded: be64(p, 72)?,
                numwant: (numwant != u32::MAX).then_some(numwant),
                compact: true,
                key: Some(format!("{:08X}", be32(p, 88)?)),
                trackerid: None,
                udp: true,
            };
            match register(st, &announce) {
                Ok(a) => {
                    out.extend_from_slice(&1u32.to_be_bytes());
                    out.extend_from_slice(&txid.to_be_bytes());
                    out.extend_from_slice(&a.interval.to_be_bytes());
                    out.extend_from_slice(&(a.leechers as u32).to_be_bytes());
                    out.extend_from_slice(&(a.seeders as u32).to_be_bytes());
                    for (addr, _) in &a.peers {
                        if let IpAddr::V4(ip) = addr.ip() {
                            out.extend_from_slice(&ip.octets());
                            out.extend_from_slice(&addr.port().to_be_bytes());
                        }
                    }
                }
                Err(reason) => error(&mut out, &reason),
            }
        }
        2 => {
            out.extend_from_slice(&2u32.to_be_bytes());
            out.extend_from_slice(&txid.to_be_bytes());
            for hash in p.get(16..)?.chunks_exact(20) {
                let (seeders, completed, leechers) = scrape_of(st, hash.try_into().ok()?);
                for n in [seeders as u32, completed, leechers as u32] {
                    out.extend_from_slice(&n.to_be_bytes());
                }
            }
        }
        _ => error(&mut out, "unknown action"),
    }
    Some(out)
}
