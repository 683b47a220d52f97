//! HTTP tracker announces, sans-IO: the request URL (BEP 3, with
//! `compact=1` from BEP 23) and the reading of a reply (compact or
//! dictionary peers, and BEP 7 `peers6`).
//!
//! A reply comes from a server we do not control, often a misconfigured
//! one (an HTML error page, a captive portal), so anything unexpected is
//! an error value with a message a person can act on, and everything kept
//! from it is bounded: peer counts, text lengths, intervals.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use crate::codec::bencode::{Reader, Value};

/// Most peers kept from one reply (compact, dictionary and `peers6`
/// together). A tracker may list thousands; we could not use them anyway.
pub const MAX_PEERS: usize = 500;

/// Longest text (failure reason, warning) kept from a reply, in chars.
/// It ends up in status replies and logs.
pub const MAX_TEXT: usize = 512;

/// Longest `tracker id` kept; it is echoed in every later announce URL.
pub const MAX_TRACKER_ID: usize = 256;

/// Longest interval honoured. A tracker saying "come back in ten years"
/// would silence the torrent; this also keeps `Instant + interval` far
/// from overflow.
pub const MAX_INTERVAL: Duration = Duration::from_secs(6 * 3600);

/// The `event` parameter of an announce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AnnounceEvent {
    /// The first announce after the torrent starts.
    Started,
    /// The download finished while running (sent once).
    Completed,
    /// The torrent stops; the tracker can forget us.
    Stopped,
}

impl AnnounceEvent {
    /// The parameter's value on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            AnnounceEvent::Started => "started",
            AnnounceEvent::Completed => "completed",
            AnnounceEvent::Stopped => "stopped",
        }
    }
}

/// What one announce tells the tracker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnounceRequest {
    /// The torrent's SHA-1 info hash.
    pub info_hash: [u8; 20],
    /// Our peer id.
    pub peer_id: [u8; 20],
    /// The port we accept peer connections on.
    pub port: u16,
    /// Bytes uploaded since the `started` announce.
    pub uploaded: u64,
    /// Bytes downloaded since the `started` announce.
    pub downloaded: u64,
    /// Bytes still missing.
    pub left: u64,
    /// The event, or `None` for a regular announce.
    pub event: Option<AnnounceEvent>,
    /// How many peers we would like.
    pub numwant: u32,
    /// A random per-session key, so the tracker recognises us if our IP
    /// changes.
    pub key: u32,
    /// The `tracker id` the tracker gave us earlier, echoed back.
    pub trackerid: Option<Vec<u8>>,
    /// Ask for compact peers (BEP 23). Every tracker we know of honours it.
    pub compact: bool,
}

/// Characters BEP 3 (via RFC 3986) lets through unescaped.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Appends `bytes` percent-encoded: unreserved characters as they are,
/// everything else as `%XX` (upper-case hex).
pub fn percent_encode_into(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in bytes {
        if is_unreserved(b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
}

/// `base` without its fragment, ready for one more query parameter: `?`
/// or `&` appended as its query needs; `room` bytes spare for them.
pub(super) fn with_query(base: &str, room: usize) -> String {
    let base = base.split('#').next().unwrap_or(base);
    let mut url = String::with_capacity(base.len() + room);
    url.push_str(base);
    if !base.contains('?') {
        url.push('?');
    } else if !base.ends_with('?') && !base.ends_with('&') {
        url.push('&');
    }
    url
}

/// The announce URL: `base` with the request's parameters appended.
///
/// `base` may carry a query of its own (private trackers put a passkey
/// there), so parameters are joined with `&` then; a fragment is dropped
/// since it is never sent.
pub fn announce_url(base: &str, req: &AnnounceRequest) -> String {
    let mut url = with_query(base, 256);
    url.push_str("info_hash=");
    percent_encode_into(&mut url, &req.info_hash);
    url.push_str("&peer_id=");
    percent_encode_into(&mut url, &req.peer_id);
    // `write!` to a String cannot fail; `push_str(&format!())` avoids the
    // unused Result without an unwrap.
    url.push_str(&format!(
        "&port={}&uploaded={}&downloaded={}&left={}",
        req.port, req.uploaded, req.downloaded, req.left
    ));
    url.push_str(if req.compact {
        "&compact=1"
    } else {
        "&compact=0"
    });
    url.push_str("&no_peer_id=1");
    if let Some(event) = req.event {
        url.push_str("&event=");
        url.push_str(event.as_str());
    }
    url.push_str(&format!("&numwant={}&key={:08X}", req.numwant, req.key));
    if let Some(id) = &req.trackerid {
        url.push_str("&trackerid=");
        percent_encode_into(&mut url, id);
    }
    url
}

/// A tracker's reply to an announce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnnounceReply {
    /// The tracker refused (`failure reason`), e.g. an unregistered
    /// torrent. The text is cleaned and bounded.
    Failure(String),
    /// The tracker accepted the announce.
    Success(Announced),
}

/// The useful content of a successful reply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Announced {
    /// `warning message`: the announce worked but the tracker has a
    /// complaint worth showing.
    pub warning: Option<String>,
    /// `interval`, capped at [`MAX_INTERVAL`]; `None` if absent or negative.
    pub interval: Option<Duration>,
    /// `min interval`, capped likewise.
    pub min_interval: Option<Duration>,
    /// `tracker id`, to echo in later announces.
    pub tracker_id: Option<Vec<u8>>,
    /// Seeders (`complete`).
    pub complete: Option<u32>,
    /// Leechers (`incomplete`).
    pub incomplete: Option<u32>,
    /// Peers, IPv4 and IPv6, at most [`MAX_PEERS`], no duplicates, no
    /// port 0.
    pub peers: Vec<SocketAddr>,
}

/// One torrent's figures from a scrape (or from an announce reply's
/// `complete`/`incomplete`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Scraped {
    /// Peers with the whole torrent.
    pub seeders: u32,
    /// Peers still downloading.
    pub leechers: u32,
    /// Downloads the tracker saw complete (`downloaded` in HTTP scrapes).
    pub completed: u32,
}

/// Peers from a compact list: 6-byte entries (IPv4 address, port) or, with
/// `v6`, 18-byte entries (IPv6 address, port), big endian. Bounded by
/// [`MAX_PEERS`], without duplicates or unusable addresses; a trailing
/// partial entry is ignored.
pub fn compact_peers(bytes: &[u8], v6: bool) -> Vec<SocketAddr> {
    let mut peers = PeerSet::new();
    if v6 {
        peers.add_compact6(bytes);
    } else {
        peers.add_compact4(bytes);
    }
    peers.peers
}

/// Why an announce produced no reply we can use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrackerError {
    /// The announce URL cannot be used: the reason.
    BadUrl(String),
    /// Something we do not do (yet).
    Unsupported(&'static str),
    /// The host name did not resolve: host and reason.
    Resolve(String, String),
    /// No address of the host accepted a connection: host and the last
    /// connection error.
    Connect(String, String),
    /// The TLS session with an `https` tracker failed: host (with its port
    /// when not the default) and a reason a person can act on (unknown
    /// certificate authority, name mismatch, handshake refused, no root
    /// certificates on this machine).
    Tls(String, String),
    /// The job's time ran out (resolving, connecting, or waiting for the
    /// reply).
    Timeout,
    /// The connection broke while talking to the tracker.
    Io(String),
    /// The server's reply is not HTTP we understand: the reason.
    BadResponse(String),
    /// A non-success HTTP status and its reason phrase.
    Http(u16, String),
    /// A redirect without a usable `Location`.
    BadRedirect(String),
    /// More redirects than we follow (or a loop).
    TooManyRedirects(usize),
    /// The reply's header or body exceeded our limit: which, and the limit.
    TooLarge(&'static str, usize),
    /// The body is not a bencoded dictionary: a description with its first
    /// bytes.
    Garbage(String),
    /// The worker thread is gone (the engine is shutting down).
    WorkerGone,
    /// A UDP tracker did not answer before the exchange's deadline: the
    /// number of packets sent.
    UdpTimeout(u32),
    /// Too many UDP tracker exchanges are in flight: the limit.
    TooBusy(usize),
    /// The request cannot be sent as asked: the reason.
    BadRequest(String),
}

impl fmt::Display for TrackerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrackerError::BadUrl(why) => write!(f, "bad tracker URL: {why}"),
            TrackerError::Unsupported(what) => f.write_str(what),
            TrackerError::Resolve(host, why) => {
                write!(f, "could not resolve tracker host {host:?}: {why}")
            }
            TrackerError::Connect(host, why) => {
                write!(f, "could not connect to tracker {host}: {why}")
            }
            TrackerError::Tls(host, why) => write!(f, "TLS with tracker {host} failed: {why}"),
            TrackerError::Timeout => f.write_str("tracker did not answer in time"),
            TrackerError::Io(why) => write!(f, "connection to tracker failed: {why}"),
            TrackerError::BadResponse(why) => {
                write!(f, "tracker sent a malformed HTTP response: {why}")
            }
            TrackerError::Http(status, reason) if reason.is_empty() => {
                write!(f, "tracker replied with HTTP status {status}")
            }
            TrackerError::Http(status, reason) => {
                write!(f, "tracker replied with HTTP status {status} ({reason})")
            }
            TrackerError::BadRedirect(why) => write!(f, "tracker sent a bad redirect: {why}"),
            TrackerError::TooManyRedirects(n) => {
                write!(f, "tracker redirected more than {n} times")
            }
            TrackerError::TooLarge(what, limit) => {
                write!(
                    f,
                    "tracker's reply {what} exceeds our limit of {limit} bytes"
                )
            }
            TrackerError::Garbage(what) => write!(f, "tracker replied with {what}"),
            TrackerError::WorkerGone => f.write_str("tracker worker has shut down"),
            TrackerError::UdpTimeout(1) => {
                f.write_str("UDP tracker did not answer (1 packet sent)")
            }
            TrackerError::UdpTimeout(n) => {
                write!(f, "UDP tracker did not answer ({n} packets sent)")
            }
            TrackerError::TooBusy(limit) => write!(
                f,
                "too many UDP tracker requests in flight (at most {limit})"
            ),
            TrackerError::BadRequest(why) => write!(f, "cannot send tracker request: {why}"),
        }
    }
}

impl std::error::Error for TrackerError {}

/// A short, printable rendering of the start of `body`, for messages.
fn snippet(body: &[u8]) -> String {
    const SHOWN: usize = 40;
    let cut = body.len().min(SHOWN);
    let head = body.get(..cut).unwrap_or(body);
    let mut s: String = String::from_utf8_lossy(head)
        .chars()
        .flat_map(char::escape_debug)
        .collect();
    if body.len() > SHOWN {
        s.push_str("...");
    }
    s
}

pub(super) fn garbage(body: &[u8], what: &str) -> TrackerError {
    if body.is_empty() {
        return TrackerError::Garbage("an empty body instead of a bencoded dictionary".into());
    }
    TrackerError::Garbage(format!(
        "something that is not a bencoded dictionary ({what}; first bytes: \"{}\")",
        snippet(body)
    ))
}

/// Text from a reply, made safe to show: lossy UTF-8, control characters
/// replaced, at most [`MAX_TEXT`] chars.
pub(super) fn clean_text(bytes: &[u8]) -> String {
    let mut out: String = String::from_utf8_lossy(bytes)
        .chars()
        .take(MAX_TEXT)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let trimmed = out.trim_end().len();
    out.truncate(trimmed);
    out
}

/// Decodes one bencoded value filling `body`, tolerating trailing
/// whitespace (some trackers end their reply with a newline).
pub(super) fn decode_tolerant(body: &[u8]) -> Result<Value, TrackerError> {
    let mut reader = Reader::new(body);
    let value = reader.value().map_err(|e| garbage(body, &e.to_string()))?;
    let rest = body.get(reader.position()..).unwrap_or_default();
    if !rest.iter().all(u8::is_ascii_whitespace) {
        return Err(garbage(body, "trailing bytes after the dictionary"));
    }
    Ok(value)
}

/// The `failure reason` of `body`, if it is a bencoded dictionary with
/// one. The worker uses it to pass on refusals sent with an HTTP error
/// status.
pub fn failure_reason(body: &[u8]) -> Option<String> {
    let value = decode_tolerant(body).ok()?;
    value
        .get("failure reason")
        .and_then(Value::as_bytes)
        .map(clean_text)
}

fn duration_of(value: Option<&Value>) -> Option<Duration> {
    let secs = value?.as_int()?;
    let secs = u64::try_from(secs).ok()?;
    Some(Duration::from_secs(secs).min(MAX_INTERVAL))
}

fn count_of(value: Option<&Value>) -> Option<u32> {
    let n = value?.as_int()?;
    u32::try_from(n.max(0)).ok().or(Some(u32::MAX))
}

/// Collects peers, bounded and without duplicates.
struct PeerSet {
    peers: Vec<SocketAddr>,
    seen: HashSet<SocketAddr>,
}

impl PeerSet {
    fn new() -> Self {
        PeerSet {
            peers: Vec::new(),
            seen: HashSet::new(),
        }
    }

    fn full(&self) -> bool {
        self.peers.len() >= MAX_PEERS
    }

    fn add(&mut self, ip: IpAddr, port: u16) {
        // Port 0 and unspecified/broadcast/multicast addresses cannot be
        // connected to; a tracker listing them is confused or hostile.
        let unusable = match ip {
            IpAddr::V4(v4) => v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast(),
            IpAddr::V6(v6) => v6.is_unspecified() || v6.is_multicast(),
        };
        if port == 0 || unusable || self.full() {
            return;
        }
        let addr = SocketAddr::new(ip, port);
        if self.seen.insert(addr) {
            self.peers.push(addr);
        }
    }

    /// Compact IPv4 peers: 4 address bytes then 2 port bytes, big endian.
    /// A trailing partial entry is ignored.
    fn add_compact4(&mut self, bytes: &[u8]) {
        for entry in bytes.chunks_exact(6) {
            if self.full() {
                return;
            }
            if let [a, b, c, d, p0, p1] = *entry {
                self.add(
                    IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
                    u16::from_be_bytes([p0, p1]),
                );
            }
        }
    }

    /// Compact IPv6 peers (BEP 7): 16 address bytes then 2 port bytes.
    fn add_compact6(&mut self, bytes: &[u8]) {
        for entry in bytes.chunks_exact(18) {
            if self.full() {
                return;
            }
            let mut octets = [0u8; 16];
            let (addr, port) = entry.split_at(16);
            octets.copy_from_slice(addr);
            if let [p0, p1] = *port {
                self.add(
                    IpAddr::V6(Ipv6Addr::from(octets)),
                    u16::from_be_bytes([p0, p1]),
                );
            }
        }
    }

    /// Dictionary peers: `ip` as text (IPv4 or IPv6), `port`. Host names
    /// are skipped (resolving them is not worth a blocking lookup), as is
    /// any malformed entry.
    fn add_dicts(&mut self, list: &[Value]) {
        for entry in list {
            if self.full() {
                return;
            }
            let ip = entry
                .get("ip")
                .and_then(Value::as_str)
                .and_then(|s| s.trim().parse::<IpAddr>().ok());
            let port = entry
                .get("port")
                .and_then(Value::as_int)
                .and_then(|p| u16::try_from(p).ok());
            if let (Some(ip), Some(port)) = (ip, port) {
                self.add(ip, port);
            }
        }
    }
}

/// A reply body (announce or scrape) as a bencoded dictionary, or
/// `Err` with the tracker's `failure reason`, cleaned.
pub(super) fn reply_dict(body: &[u8]) -> Result<Result<Value, String>, TrackerError> {
    let value = decode_tolerant(body)?;
    if value.as_dict().is_none() {
        return Err(garbage(body, "bencode, but not a dictionary"));
    }
    if let Some(reason) = value.get("failure reason") {
        let text = reason
            .as_bytes()
            .map(clean_text)
            .unwrap_or_else(|| "(failure reason is not a string)".into());
        return Ok(Err(text));
    }
    Ok(Ok(value))
}

/// Reads a tracker's reply body.
pub fn parse_announce(body: &[u8]) -> Result<AnnounceReply, TrackerError> {
    let value = match reply_dict(body)? {
        Ok(value) => value,
        Err(text) => return Ok(AnnounceReply::Failure(text)),
    };
    let mut peers = PeerSet::new();
    match value.get("peers") {
        Some(Value::Bytes(b)) => peers.add_compact4(b),
        Some(Value::List(l)) => peers.add_dicts(l),
        // Absent or of another type: no peers from it, the rest stands.
        _ => {}
    }
    if let Some(b) = value.get("peers6").and_then(Value::as_bytes) {
        peers.add_compact6(b);
    }
    let tracker_id = value
        .get("tracker id")
        .and_then(Value::as_bytes)
        .filter(|id| !id.is_empty() && id.len() <= MAX_TRACKER_ID)
        .map(<[u8]>::to_vec);
    Ok(AnnounceReply::Success(Announced {
        warning: value
            .get("warning message")
            .and_then(Value::as_bytes)
            .map(clean_text),
        interval: duration_of(value.get("interval")),
        min_interval: duration_of(value.get("min interval")),
        tracker_id,
        complete: count_of(value.get("complete")),
        incomplete: count_of(value.get("incomplete")),
        peers: peers.peers,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> AnnounceRequest {
        AnnounceRequest {
            info_hash:
                *b"\x12\x34\x56\x78\x9a\xbc\xde\xf1\x23\x45\x67\x89\xab\xcd\xef\x12\x34\x56\x78\x9a",
            peer_id: *b"-TR0001-aB~.-_ %/?&=",
            port: 51413,
            uploaded: 1,
            downloaded: 2,
            left: 3,
            event: Some(AnnounceEvent::Started),
            numwant: 80,
            key: 0xbeef,
            trackerid: None,
            compact: true,
        }
    }

    #[test]
    fn builds_the_announce_url_with_every_parameter() {
        let url = announce_url("http://t.example/announce", &request());
        assert_eq!(
            url,
            "http://t.example/announce?info_hash=%124Vx%9A%BC%DE%F1%23Eg%89%AB%CD%EF%124Vx%9A\
             &peer_id=-TR0001-aB~.-_%20%25%2F%3F%26%3D&port=51413&uploaded=1&downloaded=2\
             &left=3&compact=1&no_peer_id=1&event=started&numwant=80&key=0000BEEF"
        );
    }

    #[test]
    fn appends_to_an_existing_query_and_echoes_the_tracker_id() {
        let mut req = request();
        req.event = None;
        req.compact = false;
        req.trackerid = Some(b"id 1".to_vec());
        let url = announce_url("http://t/a?passkey=xyz#frag", &req);
        assert!(
            url.starts_with("http://t/a?passkey=xyz&info_hash="),
            "{url}"
        );
        assert!(url.contains("&compact=0&"), "{url}");
        assert!(!url.contains("event="), "{url}");
        assert!(!url.contains("frag"), "{url}");
        assert!(url.ends_with("&trackerid=id%201"), "{url}");
        let url = announce_url("http://t/a?passkey=xyz&", &req);
        assert!(
            url.starts_with("http://t/a?passkey=xyz&info_hash="),
            "{url}"
        );
        let url = announce_url("http://t/a?", &req);
        assert!(url.starts_with("http://t/a?info_hash="), "{url}");
    }

    #[test]
    fn every_event_has_its_wire_name() {
        let names: Vec<_> = [
            AnnounceEvent::Started,
            AnnounceEvent::Completed,
            AnnounceEvent::Stopped,
        ]
        .iter()
        .map(|e| e.as_str())
        .collect();
        assert_eq!(names, ["started", "completed", "stopped"]);
    }

    fn success(body: &[u8]) -> Announced {
        match parse_announce(body) {
            Ok(AnnounceReply::Success(a)) => a,
            other => panic!("expected success, got {other:?}"),
        }
    }

    fn v4(a: u8, b: u8, c: u8, d: u8, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(a, b, c, d)), port)
    }

    #[test]
    fn reads_a_compact_reply_with_every_field() {
        let mut body = b"d8:completei5e10:incompletei7e8:intervali1800e12:min intervali60e\
5:peers18:"
            .to_vec();
        body.extend_from_slice(&[10, 0, 0, 1, 0x1a, 0xe1]);
        body.extend_from_slice(&[10, 0, 0, 2, 0, 0]); // port 0: skipped
        body.extend_from_slice(&[192, 168, 1, 9, 0, 80]);
        body.extend_from_slice(b"6:peers618:");
        body.extend_from_slice(&[0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 7]);
        body.extend_from_slice(b"10:tracker id3:abc15:warning message5:hello");
        body.push(b'e');
        let a = success(&body);
        assert_eq!(a.complete, Some(5));
        assert_eq!(a.incomplete, Some(7));
        assert_eq!(a.interval, Some(Duration::from_secs(1800)));
        assert_eq!(a.min_interval, Some(Duration::from_secs(60)));
        assert_eq!(a.tracker_id.as_deref(), Some(&b"abc"[..]));
        assert_eq!(a.warning.as_deref(), Some("hello"));
        assert_eq!(
            a.peers,
            vec![
                v4(10, 0, 0, 1, 6881),
                v4(192, 168, 1, 9, 80),
                "[2001:db8::1]:7".parse().unwrap(),
            ]
        );
    }

    #[test]
    fn reads_dictionary_peers_and_skips_malformed_ones() {
        let body = b"d8:intervali900e5:peersl\
d2:ip8:10.0.0.14:porti6881e7:peer id20:aaaaaaaaaaaaaaaaaaaae\
d2:ip11:2001:db8::24:porti51413ee\
d2:ip13:not.an.ip.org4:porti1ee\
d2:ip8:10.0.0.34:porti70000ee\
d2:ip8:10.0.0.44:porti-1ee\
d4:porti5ee\
i42e\
d2:ip8:10.0.0.54:port2:80e\
d2:ip8:10.0.0.14:porti6881ee\
d2:ip7:0.0.0.04:porti1ee\
ee";
        let a = success(body);
        assert_eq!(
            a.peers,
            vec![
                v4(10, 0, 0, 1, 6881),
                "[2001:db8::2]:51413".parse().unwrap()
            ]
        );
        assert_eq!(a.interval, Some(Duration::from_secs(900)));
        assert_eq!(a.complete, None);
    }

    #[test]
    fn a_failure_reason_is_a_failure_reply() {
        assert_eq!(
            parse_announce(b"d14:failure reason17:torrent not found8:intervali5ee"),
            Ok(AnnounceReply::Failure("torrent not found".into()))
        );
        assert_eq!(
            parse_announce(b"d14:failure reasoni3ee"),
            Ok(AnnounceReply::Failure(
                "(failure reason is not a string)".into()
            ))
        );
        assert_eq!(
            failure_reason(b"d14:failure reason3:bad\x01e\n"),
            None,
            "length mismatch makes it garbage"
        );
        assert_eq!(
            failure_reason(b"d14:failure reason4:ba\x01de\n").as_deref(),
            Some("ba d")
        );
        assert_eq!(failure_reason(b"d8:intervali5ee"), None);
    }

    #[test]
    fn garbage_is_an_error_a_person_understands() {
        let err = parse_announce(b"<html><body>502 Bad Gateway</body></html>").unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("tracker replied with something that is not a bencoded dictionary"),
            "{text}"
        );
        assert!(
            text.contains("first bytes: \"<html><body>502 Bad Gateway</body></html...\""),
            "{text}"
        );

        let text = parse_announce(b"li1ee").unwrap_err().to_string();
        assert!(
            text.contains("not a dictionary") && text.contains("\"li1ee\""),
            "{text}"
        );
        let text = parse_announce(b"").unwrap_err().to_string();
        assert!(text.contains("empty body"), "{text}");
        let text = parse_announce(b"d8:intervali5eeXX")
            .unwrap_err()
            .to_string();
        assert!(text.contains("trailing bytes"), "{text}");
        // Control bytes are escaped, not echoed raw into logs.
        let text = parse_announce(b"\x1b[31m\n").unwrap_err().to_string();
        assert!(text.contains("\\u{1b}[31m\\n"), "{text}");
    }

    #[test]
    fn tolerates_a_trailing_newline_and_odd_field_types() {
        let a = success(b"d8:intervali-5e8:completei-1e10:incompletei99999999999e5:peersi3ee\r\n");
        assert_eq!(a.interval, None);
        assert_eq!(a.complete, Some(0));
        assert_eq!(a.incomplete, Some(u32::MAX));
        assert!(a.peers.is_empty());
        let a = success(b"de");
        assert_eq!(a, Announced::default());
    }

    #[test]
    fn huge_intervals_are_capped() {
        let a = success(b"d8:intervali9223372036854775807e12:min intervali7200ee");
        assert_eq!(a.interval, Some(MAX_INTERVAL));
        assert_eq!(a.min_interval, Some(Duration::from_secs(7200)));
    }

    #[test]
    fn peers_are_bounded_and_deduplicated() {
        let mut body = b"d5:peers".to_vec();
        let n = MAX_PEERS + 100;
        body.extend_from_slice(format!("{}:", n * 6 + 4).as_bytes());
        for i in 0..n {
            let [hi, lo] = u16::try_from(i + 1).unwrap().to_be_bytes();
            body.extend_from_slice(&[10, 1, hi, lo, 0, 1]);
        }
        body.extend_from_slice(&[1, 2, 3, 4]); // a partial entry: ignored
        body.extend_from_slice(b"6:peers636:");
        body.extend_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 9]);
        body.extend_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 9]);
        body.push(b'e');
        let a = success(&body);
        assert_eq!(a.peers.len(), MAX_PEERS);
        assert_eq!(a.peers.first(), Some(&v4(10, 1, 0, 1, 1)));

        // Duplicates are dropped; IPv6 joins IPv4 below the bound.
        let mut body = b"d5:peers12:".to_vec();
        body.extend_from_slice(&[10, 0, 0, 1, 0, 1, 10, 0, 0, 1, 0, 1]);
        body.extend_from_slice(b"6:peers636:");
        body.extend_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 9]);
        body.extend_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 9]);
        body.push(b'e');
        let a = success(&body);
        assert_eq!(
            a.peers,
            vec![v4(10, 0, 0, 1, 1), "[fe80::1]:9".parse().unwrap()]
        );
    }

    #[test]
    fn texts_are_cleaned_and_bounded() {
        let long = "x".repeat(MAX_TEXT * 2);
        let body = format!("d15:warning message{}:{long}e", long.len());
        let a = success(body.as_bytes());
        assert_eq!(a.warning.map(|w| w.len()), Some(MAX_TEXT));
        let a = success(b"d15:warning message6:a\tb\xffc e");
        assert_eq!(a.warning.as_deref(), Some("a b\u{fffd}c"));
        // An oversized tracker id is not echoed back.
        let body = format!(
            "d10:tracker id{}:{}e",
            MAX_TRACKER_ID + 1,
            "i".repeat(MAX_TRACKER_ID + 1)
        );
        assert_eq!(success(body.as_bytes()).tracker_id, None);
    }

    #[test]
    fn every_error_displays_a_sentence() {
        let errors = [
            TrackerError::BadUrl("no scheme".into()),
            TrackerError::Unsupported("https trackers are not supported yet"),
            TrackerError::Resolve("t.example".into(), "no such host".into()),
            TrackerError::Connect("127.0.0.1:1".into(), "refused".into()),
            TrackerError::Tls("t.example".into(), "unknown issuer".into()),
            TrackerError::Timeout,
            TrackerError::Io("reset".into()),
            TrackerError::BadResponse("no status line".into()),
            TrackerError::Http(404, "Not Found".into()),
            TrackerError::Http(500, String::new()),
            TrackerError::BadRedirect("no Location".into()),
            TrackerError::TooManyRedirects(5),
            TrackerError::TooLarge("body", 10),
            TrackerError::Garbage("junk".into()),
            TrackerError::WorkerGone,
            TrackerError::UdpTimeout(1),
            TrackerError::UdpTimeout(3),
            TrackerError::TooBusy(1024),
            TrackerError::BadRequest("no info hash".into()),
        ];
        for e in errors {
            let text = e.to_string();
            assert!(text.len() > 10, "{text}");
        }
        assert_eq!(
            TrackerError::Http(404, "Not Found".into()).to_string(),
            "tracker replied with HTTP status 404 (Not Found)"
        );
        assert_eq!(
            TrackerError::Tls("t.example:8443".into(), "handshake refused".into()).to_string(),
            "TLS with tracker t.example:8443 failed: handshake refused"
        );
        assert_eq!(
            TrackerError::UdpTimeout(3).to_string(),
            "UDP tracker did not answer (3 packets sent)"
        );
    }
}
