//! A small HTTP tracker for integration tests (std only): it serves
//! `GET /announce`, keeps a swarm per info hash, answers with compact (or
//! dictionary) peers, and records every announce so tests can check what
//! the engine sent.
//!
//! Every test peer is 127.0.0.1, so peers are keyed by (IP, announced
//! port), not by IP alone.

#![allow(dead_code)] // each test binary uses a different part

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
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
}

/// A running test tracker; it stops when dropped.
pub struct TestTracker {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

impl TestTracker {
    /// Binds 127.0.0.1 on a free port and serves on a background thread.
    pub fn start() -> TestTracker {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind test tracker");
        let addr = listener.local_addr().expect("test tracker address");
        let state = Arc::new(Mutex::new(State {
            interval: 1800,
            ..State::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let state = Arc::clone(&state);
            let stop = Arc::clone(&stop);
            thread::Builder::new()
                .name("test-tracker".into())
                .spawn(move || serve(&listener, &state, &stop))
                .expect("spawn test tracker")
        };
        TestTracker {
            addr,
            state,
            stop,
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT/announce`.
    pub fn url(&self) -> String {
        format!("http://{}/announce", self.addr)
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
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(listener: &TcpListener, state: &Mutex<State>, stop: &AtomicBool) {
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(mut conn) = conn else { continue };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = conn.set_write_timeout(Some(Duration::from_secs(2)));
        let Ok(peer) = conn.peer_addr() else { continue };
        let (status, body) = match read_request(&mut conn) {
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
    }
}

/// Reads the request head and returns the target of a `GET`.
fn read_request(conn: &mut TcpStream) -> Option<String> {
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

/// Handles one `GET target`: the status line's text and the body.
fn respond(target: &str, ip: IpAddr, state: &Mutex<State>) -> (&'static str, Vec<u8>) {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if path != "/announce" {
        return ("404 Not Found", b"not found".to_vec());
    }
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
    let text = |k: &str| {
        params
            .get(k)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    let number = |k: &str| text(k).and_then(|v| v.parse::<u64>().ok());
    let Some(info_hash) = params
        .get("info_hash")
        .and_then(|h| <[u8; 20]>::try_from(h.as_slice()).ok())
    else {
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
    };
    let no_peer_id = text("no_peer_id").as_deref() == Some("1");

    let mut st = lock(state);
    st.announces.push(announce.clone());
    if let Some(reason) = st.failure.clone() {
        return ("200 OK", failure(&reason));
    }
    let me = SocketAddr::new(ip, port);
    let swarm = st.swarms.entry(info_hash).or_default();
    if announce.event.as_deref() == Some("stopped") {
        swarm.remove(&me);
    } else {
        swarm.insert(
            me,
            Peer {
                peer_id: peer_id.clone(),
                left: announce.left,
            },
        );
    }
    let seeders = swarm.values().filter(|p| p.left == 0).count();
    let leechers = swarm.len() - seeders;
    let only = st
        .restrict_for
        .get(&(info_hash, port))
        .or_else(|| st.restrict_all.get(&info_hash));
    let mut others: Vec<(SocketAddr, Vec<u8>)> = st
        .swarms
        .get(&info_hash)
        .into_iter()
        .flatten()
        .filter(|(addr, _)| **addr != me)
        .filter(|(addr, _)| only.is_none_or(|o| o.contains(&addr.port())))
        .map(|(addr, p)| (*addr, p.peer_id.clone()))
        .collect();
    others.sort();
    let want = announce.numwant.map_or(50, |n| n as usize);
    others.truncate(want);

    // Keys in sorted order, as bencode wants.
    let mut out = b"d".to_vec();
    bytes(&mut out, b"complete");
    int(&mut out, seeders as u64);
    bytes(&mut out, b"incomplete");
    int(&mut out, leechers as u64);
    bytes(&mut out, b"interval");
    int(&mut out, u64::from(st.interval));
    if let Some(min) = st.min_interval {
        bytes(&mut out, b"min interval");
        int(&mut out, u64::from(min));
    }
    bytes(&mut out, b"peers");
    if announce.compact {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for (addr, _) in &others {
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
        for (addr, id) in &others {
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
    if let Some(id) = &st.tracker_id {
        bytes(&mut out, b"tracker id");
        bytes(&mut out, id);
    }
    if let Some(w) = &st.warning {
        bytes(&mut out, b"warning message");
        bytes(&mut out, w.as_bytes());
    }
    out.push(b'e');
    ("200 OK", out)
}
