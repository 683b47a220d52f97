//! Local peer discovery (BEP 14), sans-IO: the `BT-SEARCH` announce's
//! codec, and [`Lpd`], which decides what to multicast when and turns
//! neighbours' announces into peers. The reactor owns the sockets (one
//! per family, joined to the group, bound to port 6771) and moves
//! datagrams in and out.
//!
//! Everything received is hostile, from anyone on the network: a
//! datagram over [`MAX_DATAGRAM`] bytes or with more than [`MAX_HASHES`]
//! info hashes is refused whole; datagrams are counted before they are
//! parsed, per source and overall, and dropped past the limits; the
//! events waiting are bounded.
//!
//! What we send follows BEP 14 and Transmission: every public torrent is
//! announced every [`ANNOUNCE_INTERVAL`], as many hashes per datagram as
//! fit in [`MAX_DATAGRAM`] bytes, and no more than one datagram per family
//! each [`MIN_SEND_INTERVAL`]; when more torrents are due than fit, the
//! longest waiting go first. Private torrents are never announced, and
//! announces for them are ignored (BEP 27 names LSD among the peer sources
//! a private torrent must not use). libtorrent sends one hash per datagram
//! (three times, 2 and 4 s apart); both its form and Transmission's batches
//! parse here.
//!
//! The parser is as tolerant as real senders need: header names in any
//! case, LF or CRLF line ends, spaces around values, unknown headers
//! ignored, the closing blank lines optional, hex digits in any case. It
//! is strict where it matters: the request line must be
//! `BT-SEARCH * HTTP/1.x`, the port present and valid, every header line a
//! `name: value`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::time::{Duration, Instant};

use crate::registry::metainfo::{hex, parse_hash};

/// The port of both multicast groups.
pub const LPD_PORT: u16 = 6771;
/// The IPv4 group (organisation-local scope).
pub const GROUP_V4: Ipv4Addr = Ipv4Addr::new(239, 192, 152, 143);
/// The IPv6 group (site-local scope).
pub const GROUP_V6: Ipv6Addr = Ipv6Addr::new(0xff15, 0, 0, 0, 0, 0, 0xefc0, 0x988f);

/// The `Host` header of each family, as BEP 14 gives it.
const HOST_V4: &str = "239.192.152.143:6771";
const HOST_V6: &str = "[ff15::efc0:988f]:6771";

/// The largest datagram sent or accepted. BEP 14 asks senders batching
/// hashes to stay under 1400 bytes (no fragmentation); Transmission reads
/// no more than this either.
pub const MAX_DATAGRAM: usize = 1400;
/// The most `Infohash` headers accepted in one datagram, valid or not. A
/// valid line takes at least 50 bytes, so no honest datagram of
/// [`MAX_DATAGRAM`] bytes has more than 27; many short bad ones are junk.
pub const MAX_HASHES: usize = 28;
/// Our cookie is cut to this many characters (Transmission's has 12,
/// libtorrent's at most 8 hex digits).
pub const MAX_COOKIE: usize = 32;

/// Each public torrent is announced this often (BEP 14).
pub const ANNOUNCE_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// At most one datagram per family this often (BEP 14: "no more than 1
/// announce per minute", against multicast storms on large networks).
pub const MIN_SEND_INTERVAL: Duration = Duration::from_secs(60);
/// Each torrent's next announce is pushed back by up to this much, at
/// random, so that daemons started together (after a power cut) do not
/// stay in step.
pub const ANNOUNCE_JITTER: Duration = Duration::from_secs(10);

/// Received datagrams are counted over windows this long.
pub const RATE_WINDOW: Duration = Duration::from_secs(10);
/// Datagrams accepted from one address per window: a sender should
/// announce once a minute, libtorrent sends three datagrams per torrent,
/// and one a second leaves room for a neighbour starting many torrents.
pub const MAX_PER_SOURCE: u32 = 10;
/// Datagrams accepted from everyone per window: Transmission's cap of
/// ten a second. Past it we are in a very crowded group or under attack,
/// and dropping announces costs only a later discovery.
pub const MAX_PER_WINDOW: u32 = 100;
/// Peer events kept until polled; more are dropped.
pub const MAX_EVENTS: usize = 1024;
/// Datagrams kept until polled (one per family and send); an owner that
/// does not poll loses the oldest.
const MAX_QUEUED: usize = 4;

/// Why a datagram is not an announce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LpdError {
    /// Over [`MAX_DATAGRAM`] bytes.
    TooLong {
        /// Its length.
        len: usize,
    },
    /// The first line is not `BT-SEARCH * HTTP/1.x`.
    NotAnnounce,
    /// A header line without a colon.
    BadHeader,
    /// No `Port` header.
    NoPort,
    /// A `Port` that is not a number from 1 to 65535.
    BadPort,
    /// More than [`MAX_HASHES`] `Infohash` headers.
    TooManyHashes,
}

impl fmt::Display for LpdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LpdError::TooLong { len } => {
                write!(f, "LSD datagram of {len} bytes, over {MAX_DATAGRAM}")
            }
            LpdError::NotAnnounce => f.write_str("not a BT-SEARCH announce"),
            LpdError::BadHeader => f.write_str("LSD announce: a header line without a colon"),
            LpdError::NoPort => f.write_str("LSD announce without a port"),
            LpdError::BadPort => f.write_str("LSD announce with an invalid port"),
            LpdError::TooManyHashes => {
                write!(f, "LSD announce with more than {MAX_HASHES} info hashes")
            }
        }
    }
}

impl std::error::Error for LpdError {}

/// One announce, borrowing its cookie from the datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announce<'a> {
    /// The sender's BitTorrent listen port.
    pub port: u16,
    /// The torrents it takes part in: valid hashes only, each once
    /// (malformed and all-zero ones are skipped, as libtorrent does).
    pub info_hashes: Vec<[u8; 20]>,
    /// Its cookie, to recognise our own announces looped back.
    pub cookie: Option<&'a [u8]>,
}

impl<'a> Announce<'a> {
    /// Parses a datagram.
    pub fn parse(datagram: &'a [u8]) -> Result<Announce<'a>, LpdError> {
        if datagram.len() > MAX_DATAGRAM {
            return Err(LpdError::TooLong {
                len: datagram.len(),
            });
        }
        let mut lines = datagram
            .split(|b| *b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
        if !lines.next().is_some_and(is_request_line) {
            return Err(LpdError::NotAnnounce);
        }
        let (mut port, mut cookie, mut hashes, mut lines_seen) = (None, None, Vec::new(), 0);
        for line in lines.take_while(|l| !l.is_empty()) {
            let colon = line.iter().position(|b| *b == b':');
            let (name, value) = colon
                .map(|i| (trim(&line[..i]), trim(&line[i + 1..])))
                .ok_or(LpdError::BadHeader)?;
            if name.eq_ignore_ascii_case(b"infohash") {
                lines_seen += 1;
                if lines_seen > MAX_HASHES {
                    return Err(LpdError::TooManyHashes);
                }
                if let Some(h) = parse_hash(value).filter(|h| *h != [0; 20]) {
                    if !hashes.contains(&h) {
                        hashes.push(h);
                    }
                }
            } else if name.eq_ignore_ascii_case(b"port") && port.is_none() {
                port = Some(parse_port(value).ok_or(LpdError::BadPort)?);
            } else if name.eq_ignore_ascii_case(b"cookie") && cookie.is_none() {
                cookie = Some(value);
            }
        }
        Ok(Announce {
            port: port.ok_or(LpdError::NoPort)?,
            info_hashes: hashes,
            cookie,
        })
    }
}

fn is_request_line(line: &[u8]) -> bool {
    const START: &[u8] = b"BT-SEARCH * HTTP/1.";
    line.get(..START.len())
        .is_some_and(|s| s.eq_ignore_ascii_case(START))
        && line
            .get(START.len()..)
            .is_some_and(|minor| !minor.is_empty() && minor.iter().all(u8::is_ascii_digit))
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|c| !matches!(c, b' ' | b'\t'));
    let end = b.iter().rposition(|c| !matches!(c, b' ' | b'\t'));
    match (start, end) {
        (Some(s), Some(e)) => &b[s..=e],
        _ => &[],
    }
}

fn parse_port(b: &[u8]) -> Option<u16> {
    if b.is_empty() || b.len() > 5 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = b.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
    u16::try_from(n).ok().filter(|p| *p != 0)
}

/// An address family of the multicast groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// [`GROUP_V4`].
    V4,
    /// [`GROUP_V6`].
    V6,
}

impl Family {
    /// The group's address and port, where the datagram goes.
    pub fn group(self) -> SocketAddr {
        match self {
            Family::V4 => SocketAddr::from((GROUP_V4, LPD_PORT)),
            Family::V6 => SocketAddr::from((GROUP_V6, LPD_PORT)),
        }
    }

    fn host(self) -> &'static str {
        match self {
            Family::V4 => HOST_V4,
            Family::V6 => HOST_V6,
        }
    }
}

/// One line of an announce per info hash.
const HASH_LINE: usize = "Infohash: \r\n".len() + 40;

/// Appends an announce of `hashes` to `family`'s group.
pub fn write_announce(
    out: &mut Vec<u8>,
    family: Family,
    port: u16,
    hashes: &[[u8; 20]],
    cookie: &str,
) {
    out.extend_from_slice(b"BT-SEARCH * HTTP/1.1\r\nHost: ");
    out.extend_from_slice(family.host().as_bytes());
    out.extend_from_slice(b"\r\nPort: ");
    out.extend_from_slice(port.to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in hashes {
        out.extend_from_slice(b"Infohash: ");
        out.extend_from_slice(hex(h).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !cookie.is_empty() {
        out.extend_from_slice(b"cookie: ");
        out.extend_from_slice(cookie.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n\r\n");
}

/// What local peer discovery found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LpdEvent {
    /// A neighbour takes part in one of our public torrents.
    Peer {
        /// The torrent.
        info_hash: [u8; 20],
        /// The datagram's source address with the announced port.
        addr: SocketAddr,
    },
}

/// One torrent we know of.
#[derive(Debug, Clone, Copy)]
struct Entry {
    private: bool,
    /// When it is next to be announced.
    due: Instant,
}

/// Local peer discovery for every torrent of the daemon.
#[derive(Debug)]
pub struct Lpd {
    cookie: String,
    port: u16,
    rng: fastrand::Rng,
    families: [bool; 2],
    torrents: BTreeMap<[u8; 20], Entry>,
    last_send: Option<Instant>,
    transmit: VecDeque<(SocketAddr, Vec<u8>)>,
    events: VecDeque<LpdEvent>,
    window: Instant,
    received: u32,
    sources: HashMap<IpAddr, u32>,
}

impl Lpd {
    /// Discovery announcing our listen `port` (0: not listening, nothing
    /// is announced) with `cookie` (only its characters in `[A-Za-z0-9._-]`
    /// kept, at most [`MAX_COOKIE`]; see [`Lpd::random_cookie`]), on both
    /// families. `rng` spreads the announces.
    pub fn new(cookie: &str, port: u16, rng: fastrand::Rng, now: Instant) -> Lpd {
        let cookie = cookie
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            .take(MAX_COOKIE)
            .collect();
        Lpd {
            cookie,
            port,
            rng,
            families: [true, true],
            torrents: BTreeMap::new(),
            last_send: None,
            transmit: VecDeque::new(),
            events: VecDeque::new(),
            window: now,
            received: 0,
            sources: HashMap::new(),
        }
    }

    /// A fresh cookie: 12 letters and digits, as Transmission makes it.
    pub fn random_cookie(rng: &mut fastrand::Rng) -> String {
        (0..12).map(|_| rng.alphanumeric()).collect()
    }

    /// The cookie in use.
    pub fn cookie(&self) -> &str {
        &self.cookie
    }

    /// Our listen port changed (0: not listening).
    pub fn set_port(&mut self, port: u16) {
        self.port = port;
    }

    /// Which families' groups to announce to (those with a socket).
    pub fn set_families(&mut self, v4: bool, v6: bool) {
        self.families = [v4, v6];
    }

    /// The daemon's torrents, with whether each is private. Torrents
    /// already known keep their schedule; new ones are due at once (the
    /// send interval still holds).
    pub fn set_torrents(&mut self, torrents: &[([u8; 20], bool)], now: Instant) {
        let mut next = BTreeMap::new();
        for (hash, private) in torrents {
            let due = self.torrents.get(hash).map_or(now, |e| e.due);
            next.insert(
                *hash,
                Entry {
                    private: *private,
                    due,
                },
            );
        }
        self.torrents = next;
    }

    /// The next datagram to send: its bytes appended to `out`, and the
    /// group to send them to.
    pub fn poll_transmit(&mut self, out: &mut Vec<u8>) -> Option<SocketAddr> {
        let (to, bytes) = self.transmit.pop_front()?;
        out.extend_from_slice(&bytes);
        Some(to)
    }

    /// The next peer found.
    pub fn poll_event(&mut self) -> Option<LpdEvent> {
        self.events.pop_front()
    }

    fn public(&self) -> impl Iterator<Item = (&[u8; 20], &Entry)> {
        self.torrents.iter().filter(|(_, e)| !e.private)
    }

    /// When [`Lpd::handle_timeout`] has an announce to send; `None` while
    /// there is nothing to announce (no public torrent, no port, no
    /// family).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.port == 0 || self.families == [false, false] {
            return None;
        }
        let due = self.public().map(|(_, e)| e.due).min()?;
        Some(match self.last_send {
            Some(t) => due.max(t + MIN_SEND_INTERVAL),
            None => due,
        })
    }

    /// Sends what is due: one datagram per family with the torrents
    /// waiting longest, as many as fit.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.poll_timeout().is_none_or(|t| now < t) {
            return;
        }
        let mut due: Vec<([u8; 20], Instant)> = self
            .public()
            .filter(|(_, e)| e.due <= now)
            .map(|(h, e)| (*h, e.due))
            .collect();
        due.sort_by_key(|(h, t)| (*t, *h));
        due.truncate(self.hashes_per_datagram());
        let hashes: Vec<[u8; 20]> = due.into_iter().map(|(h, _)| h).collect();
        for (family, on) in [Family::V4, Family::V6].into_iter().zip(self.families) {
            if !on {
                continue;
            }
            let mut bytes = Vec::with_capacity(MAX_DATAGRAM);
            write_announce(&mut bytes, family, self.port, &hashes, &self.cookie);
            if self.transmit.len() >= MAX_QUEUED {
                self.transmit.pop_front();
            }
            self.transmit.push_back((family.group(), bytes));
        }
        for h in &hashes {
            let jitter = self.jitter();
            if let Some(e) = self.torrents.get_mut(h) {
                e.due = now + ANNOUNCE_INTERVAL + jitter;
            }
        }
        self.last_send = Some(now);
    }

    fn jitter(&mut self) -> Duration {
        Duration::from_millis(self.rng.u64(..=ANNOUNCE_JITTER.as_millis() as u64))
    }

    /// How many hash lines fit beside the longer family's header.
    fn hashes_per_datagram(&self) -> usize {
        let mut header = Vec::new();
        write_announce(&mut header, Family::V6, self.port, &[], &self.cookie);
        (MAX_DATAGRAM.saturating_sub(header.len()) / HASH_LINE).clamp(1, MAX_HASHES)
    }

    /// A datagram received on a group's socket from `from`. Announces for
    /// our public torrents become [`LpdEvent::Peer`]s; our own (by
    /// cookie), malformed ones, and those past the rate limits are
    /// dropped.
    pub fn handle_datagram(&mut self, from: SocketAddr, bytes: &[u8], now: Instant) {
        let ip = from.ip().to_canonical();
        if !self.count(ip, now) {
            return;
        }
        let Ok(a) = Announce::parse(bytes) else {
            return;
        };
        let ours = !self.cookie.is_empty() && a.cookie == Some(self.cookie.as_bytes());
        if ours || ip.is_unspecified() || ip.is_multicast() {
            return;
        }
        let addr = match (from, ip) {
            // A link-local neighbour is reached through the interface it
            // came in on.
            (SocketAddr::V6(f), IpAddr::V6(v6)) => {
                SocketAddr::V6(SocketAddrV6::new(v6, a.port, 0, f.scope_id()))
            }
            _ => SocketAddr::new(ip, a.port),
        };
        for info_hash in a.info_hashes {
            let wanted = self.torrents.get(&info_hash).is_some_and(|e| !e.private);
            if wanted && self.events.len() < MAX_EVENTS {
                self.events.push_back(LpdEvent::Peer { info_hash, addr });
            }
        }
    }

    /// Counts a datagram from `ip`: whether it is within the limits.
    fn count(&mut self, ip: IpAddr, now: Instant) -> bool {
        if now.saturating_duration_since(self.window) >= RATE_WINDOW {
            self.window = now;
            self.received = 0;
            self.sources.clear();
        }
        if self.received >= MAX_PER_WINDOW {
            return false;
        }
        // The table holds at most MAX_PER_WINDOW sources.
        self.received += 1;
        let n = self.sources.entry(ip).or_insert(0);
        *n += 1;
        *n <= MAX_PER_SOURCE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: [u8; 20] = [0xab; 20];
    const B: [u8; 20] = [0x01; 20];

    fn t0() -> Instant {
        Instant::now()
    }

    fn lpd(now: Instant) -> Lpd {
        Lpd::new("ourCookie1", 6881, fastrand::Rng::with_seed(7), now)
    }

    fn sent(l: &mut Lpd) -> Vec<(SocketAddr, String)> {
        let mut out = Vec::new();
        loop {
            let mut buf = Vec::new();
            let Some(to) = l.poll_transmit(&mut buf) else {
                return out;
            };
            out.push((to, String::from_utf8(buf).unwrap()));
        }
    }

    fn hashes_in(text: &str) -> Vec<[u8; 20]> {
        Announce::parse(text.as_bytes()).unwrap().info_hashes
    }

    #[test]
    fn announces_have_exact_bytes_and_parse_back() {
        let mut out = Vec::new();
        write_announce(&mut out, Family::V4, 6881, &[A, B], "abc");
        let want = format!(
            "BT-SEARCH * HTTP/1.1\r\nHost: 239.192.152.143:6771\r\nPort: 6881\r\n\
             Infohash: {}\r\nInfohash: {}\r\ncookie: abc\r\n\r\n\r\n",
            "ab".repeat(20),
            "01".repeat(20)
        );
        assert_eq!(String::from_utf8(out.clone()).unwrap(), want);
        assert_eq!(
            Announce::parse(&out),
            Ok(Announce {
                port: 6881,
                info_hashes: vec![A, B],
                cookie: Some(&b"abc"[..]),
            })
        );
        let mut out = Vec::new();
        write_announce(&mut out, Family::V6, 1, &[A], "");
        assert!(out.starts_with(b"BT-SEARCH * HTTP/1.1\r\nHost: [ff15::efc0:988f]:6771\r\n"));
        assert!(!String::from_utf8_lossy(&out).contains("cookie"));
        assert_eq!(
            Family::V6.group(),
            "[ff15::efc0:988f]:6771".parse().unwrap()
        );
        assert_eq!(Family::V4.group(), "239.192.152.143:6771".parse().unwrap());
    }

    #[test]
    fn what_real_clients_send_parses() {
        // libtorrent: one lower-case hash, a hex cookie.
        let lt = format!(
            "BT-SEARCH * HTTP/1.1\r\nHost: 239.192.152.143:6771\r\nPort: 6881\r\n\
             Infohash: {}\r\ncookie: 5d3f2a1\r\n\r\n\r\n",
            "ab".repeat(20)
        );
        let a = Announce::parse(lt.as_bytes()).unwrap();
        assert_eq!(
            (a.port, a.info_hashes, a.cookie),
            (6881, vec![A], Some(&b"5d3f2a1"[..]))
        );
        // Transmission: upper-case hashes, several.
        let tr = format!(
            "BT-SEARCH * HTTP/1.1\r\nHost: [ff15::efc0:988f]:6771\r\nPort: 51413\r\n\
             Infohash: {}\r\nInfohash: {}\r\ncookie: Ab3dEf9hIjKl\r\n\r\n\r\n",
            "AB".repeat(20),
            "01".repeat(20)
        );
        assert_eq!(hashes_in(&tr), vec![A, B]);
        // Bare LF, any case, loose spaces, unknown headers, no blank lines.
        let loose = format!(
            "bt-search * http/1.0\nHOST:239.192.152.143:6771\nport:  80 \nX-Other: y\n\
             INFOHASH:\t{}\ninfohash: {}",
            "Ab".repeat(20),
            "ab".repeat(20)
        );
        let a = Announce::parse(loose.as_bytes()).unwrap();
        assert_eq!((a.port, a.info_hashes, a.cookie), (80, vec![A], None));
        // What follows the blank line is not headers.
        let body = format!(
            "BT-SEARCH * HTTP/1.1\r\nPort: 1\r\n\r\nInfohash: {}\r\n",
            "ab".repeat(20)
        );
        assert_eq!(hashes_in(&body), Vec::<[u8; 20]>::new());
        // Bad and zero hashes are skipped, not fatal.
        let skip = format!(
            "BT-SEARCH * HTTP/1.1\r\nPort: 1\r\nInfohash: {}\r\nInfohash: xyz\r\n\
             Infohash: {}\r\nInfohash: {}1\r\n",
            "0".repeat(40),
            "01".repeat(20),
            "01".repeat(20)
        );
        assert_eq!(hashes_in(&skip), vec![B]);
    }

    #[test]
    fn malformed_announces_are_refused() {
        let h = "ab".repeat(20);
        for (text, want) in [
            (
                "M-SEARCH * HTTP/1.1\r\nPort: 1\r\n".to_string(),
                LpdError::NotAnnounce,
            ),
            (
                "BT-SEARCH * HTTP/1.\r\nPort: 1\r\n".into(),
                LpdError::NotAnnounce,
            ),
            (
                "BT-SEARCH * HTTP/2.0\r\nPort: 1\r\n".into(),
                LpdError::NotAnnounce,
            ),
            (
                "BT-SEARCH *  HTTP/1.1\r\nPort: 1\r\n".into(),
                LpdError::NotAnnounce,
            ),
            ("".into(), LpdError::NotAnnounce),
            (
                format!("BT-SEARCH * HTTP/1.1\r\nInfohash: {h}\r\n"),
                LpdError::NoPort,
            ),
            (
                "BT-SEARCH * HTTP/1.1\r\nPort 1\r\n".into(),
                LpdError::BadHeader,
            ),
            (
                "BT-SEARCH * HTTP/1.1\r\nPort: 0\r\n".into(),
                LpdError::BadPort,
            ),
            (
                "BT-SEARCH * HTTP/1.1\r\nPort: 65536\r\n".into(),
                LpdError::BadPort,
            ),
            (
                "BT-SEARCH * HTTP/1.1\r\nPort: -1\r\n".into(),
                LpdError::BadPort,
            ),
            (
                "BT-SEARCH * HTTP/1.1\r\nPort: 1a\r\n".into(),
                LpdError::BadPort,
            ),
            (
                "BT-SEARCH * HTTP/1.1\r\nPort:\r\n".into(),
                LpdError::BadPort,
            ),
            (
                "BT-SEARCH * HTTP/1.1\r\nPort: 000001\r\n".into(),
                LpdError::BadPort,
            ),
        ] {
            assert_eq!(Announce::parse(text.as_bytes()), Err(want), "{text:?}");
        }
        let mut many = "BT-SEARCH * HTTP/1.1\nPort: 1\n".to_string();
        for _ in 0..MAX_HASHES - 1 {
            many.push_str("infohash: x\n");
        }
        many.push_str(&format!("infohash:{h}\n"));
        assert_eq!(hashes_in(&many).len(), 1, "{MAX_HASHES} lines are fine");
        many.push_str("infohash: x\n");
        assert_eq!(
            Announce::parse(many.as_bytes()),
            Err(LpdError::TooManyHashes)
        );
        let long = vec![b'a'; MAX_DATAGRAM + 1];
        assert_eq!(
            Announce::parse(&long),
            Err(LpdError::TooLong {
                len: MAX_DATAGRAM + 1
            })
        );
        assert_eq!(
            Announce::parse(b"BT-SEARCH * HTTP/1.1\r\nPort: 65535")
                .unwrap()
                .port,
            65535
        );
    }

    #[test]
    fn public_torrents_are_announced_on_both_families_every_five_minutes() {
        let t = t0();
        let mut l = lpd(t);
        assert_eq!(l.poll_timeout(), None, "nothing to announce");
        l.set_torrents(&[(A, false), (B, true)], t);
        assert_eq!(l.poll_timeout(), Some(t));
        l.handle_timeout(t);
        let out = sent(&mut l);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].0, Family::V4.group());
        assert_eq!(out[1].0, Family::V6.group());
        for (_, text) in &out {
            assert_eq!(hashes_in(text), vec![A], "never the private one");
            assert!(text.contains("Port: 6881\r\n") && text.contains("cookie: ourCookie1\r\n"));
        }
        // Next: five minutes on, within the jitter.
        let next = l.poll_timeout().unwrap();
        assert!(next >= t + ANNOUNCE_INTERVAL && next <= t + ANNOUNCE_INTERVAL + ANNOUNCE_JITTER);
        l.handle_timeout(next - Duration::from_millis(1));
        assert!(sent(&mut l).is_empty());
        l.handle_timeout(next);
        assert_eq!(sent(&mut l).len(), 2);
        // One family only; no port: nothing.
        l.set_families(true, false);
        let next = l.poll_timeout().unwrap();
        l.handle_timeout(next);
        assert_eq!(sent(&mut l).len(), 1);
        l.set_port(0);
        assert_eq!(l.poll_timeout(), None);
        l.set_torrents(&[(B, true)], next);
        l.set_port(1);
        assert_eq!(l.poll_timeout(), None, "private only");
    }

    #[test]
    fn many_torrents_are_batched_at_most_once_a_minute() {
        let t = t0();
        let mut l = lpd(t);
        l.set_families(true, false);
        let all: Vec<([u8; 20], bool)> = (0..60u8).map(|i| ([i + 1; 20], false)).collect();
        l.set_torrents(&all, t);
        let mut seen = Vec::new();
        let mut now = t;
        for round in 0..3 {
            assert_eq!(l.poll_timeout(), Some(now), "round {round}");
            l.handle_timeout(now);
            let out = sent(&mut l);
            assert_eq!(out.len(), 1);
            assert!(out[0].1.len() <= MAX_DATAGRAM);
            let hs = hashes_in(&out[0].1);
            assert!(!hs.is_empty() && hs.len() <= MAX_HASHES);
            seen.extend(hs);
            // Not again within the minute, though torrents are still due.
            l.handle_timeout(now + Duration::from_secs(59));
            assert!(sent(&mut l).is_empty());
            now += MIN_SEND_INTERVAL;
        }
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 60, "every torrent within three datagrams");
        // A torrent added later keeps the others' schedules and is next.
        l.set_torrents(&[all[0], ([0xee; 20], false)], now);
        l.handle_timeout(now);
        assert_eq!(hashes_in(&sent(&mut l)[0].1), vec![[0xee; 20]]);
    }

    #[test]
    fn neighbours_become_peers() {
        let t = t0();
        let mut l = lpd(t);
        l.set_torrents(&[(A, false), (B, true)], t);
        let from: SocketAddr = "192.168.1.7:6771".parse().unwrap();
        let mut d = Vec::new();
        write_announce(&mut d, Family::V4, 51413, &[A, B, [9; 20]], "theirs");
        l.handle_datagram(from, &d, t);
        assert_eq!(
            l.poll_event(),
            Some(LpdEvent::Peer {
                info_hash: A,
                addr: "192.168.1.7:51413".parse().unwrap()
            })
        );
        assert_eq!(l.poll_event(), None, "not the private or unknown ones");
        // Our own, looped back.
        let mut own = Vec::new();
        write_announce(&mut own, Family::V4, 6881, &[A], l.cookie());
        l.handle_datagram(from, &own, t);
        assert_eq!(l.poll_event(), None);
        // A mapped source address is its IPv4 address.
        let mapped: SocketAddr = "[::ffff:10.0.0.2]:6771".parse().unwrap();
        l.handle_datagram(mapped, &d, t);
        assert_eq!(
            l.poll_event(),
            Some(LpdEvent::Peer {
                info_hash: A,
                addr: "10.0.0.2:51413".parse().unwrap()
            })
        );
        // A link-local source keeps its interface.
        let link: SocketAddr = "[fe80::7%3]:6771".parse().unwrap();
        l.handle_datagram(link, &d, t);
        let Some(LpdEvent::Peer {
            addr: SocketAddr::V6(v6),
            ..
        }) = l.poll_event()
        else {
            panic!("an IPv6 peer");
        };
        assert_eq!(
            (v6.ip().segments()[0], v6.port(), v6.scope_id()),
            (0xfe80, 51413, 3)
        );
        // Garbage is dropped.
        l.handle_datagram(from, b"\x00\xffjunk", t);
        assert_eq!(l.poll_event(), None);
        // The cookie is cleaned and bounded.
        let l2 = Lpd::new("a b\r\nc", 1, fastrand::Rng::with_seed(1), t);
        assert_eq!(l2.cookie(), "abc");
        let c = Lpd::random_cookie(&mut fastrand::Rng::with_seed(2));
        assert_eq!(c.len(), 12);
        assert!(c.chars().all(|ch| ch.is_ascii_alphanumeric()));
    }

    #[test]
    fn sources_are_rate_limited() {
        let t = t0();
        let mut l = lpd(t);
        l.set_torrents(&[(A, false)], t);
        let mut d = Vec::new();
        write_announce(&mut d, Family::V4, 1, &[A], "x");
        let one: SocketAddr = "10.0.0.1:6771".parse().unwrap();
        let count = |l: &mut Lpd| std::iter::from_fn(|| l.poll_event()).count();
        for _ in 0..MAX_PER_SOURCE + 5 {
            l.handle_datagram(one, &d, t);
        }
        assert_eq!(count(&mut l), MAX_PER_SOURCE as usize);
        // Another source still gets through; the window ends.
        l.handle_datagram("10.0.0.2:6771".parse().unwrap(), &d, t);
        assert_eq!(count(&mut l), 1);
        l.handle_datagram(one, &d, t + RATE_WINDOW);
        assert_eq!(count(&mut l), 1);
        // Overall: many sources share the window's allowance.
        let t2 = t + 2 * RATE_WINDOW;
        for i in 0..300u32 {
            let from = SocketAddr::from(([10, 1, (i >> 8) as u8, i as u8], 6771));
            l.handle_datagram(from, &d, t2);
        }
        assert_eq!(count(&mut l), MAX_PER_WINDOW as usize);
        // Malformed datagrams count too (they cost the parse).
        let t3 = t + 3 * RATE_WINDOW;
        for _ in 0..MAX_PER_SOURCE {
            l.handle_datagram(one, b"junk", t3);
        }
        l.handle_datagram(one, &d, t3);
        assert_eq!(count(&mut l), 0);
    }

    #[test]
    fn events_are_bounded() {
        let t = t0();
        let mut l = lpd(t);
        let torrents: Vec<([u8; 20], bool)> = (0..20u8).map(|i| ([i + 1; 20], false)).collect();
        l.set_torrents(&torrents, t);
        let hs: Vec<[u8; 20]> = torrents.iter().map(|(h, _)| *h).collect();
        let mut d = Vec::new();
        write_announce(&mut d, Family::V4, 1, &hs, "x");
        for w in 0..10u32 {
            for i in 0..MAX_PER_WINDOW {
                let from = SocketAddr::from(([10, 2, w as u8, i as u8], 6771));
                l.handle_datagram(from, &d, t + w * RATE_WINDOW);
            }
        }
        assert_eq!(std::iter::from_fn(|| l.poll_event()).count(), MAX_EVENTS);
    }
}
