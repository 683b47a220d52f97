//! Peer exchange (BEP 11, `ut_pex`) over the extension protocol
//! ([`super::extension`]): a sans-IO codec and the per-connection state.
//!
//! Everything read here comes from a peer and is hostile: parsing walks
//! the bencode with the zero-copy [`Reader`], keeps at most a fixed number
//! of entries, and refuses with an error value what it does not
//! understand. Memory kept does not grow with the input.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::time::{Duration, Instant};

use super::extension::put_bytes;
use crate::codec::bencode::{DecodeError, Reader};

/// The extension name of peer exchange.
pub const UT_PEX: &str = "ut_pex";
/// The extended id we ask peers to use for `ut_pex` messages to us.
pub const OUR_UT_PEX_ID: u8 = 1;

/// At most this many added (and as many dropped) peers are taken from one
/// received PEX message; the rest is ignored.
pub const MAX_PEERS_PER_MESSAGE: usize = 200;
/// PEX messages go to one peer at most this often (BEP 11).
pub const PEX_INTERVAL: Duration = Duration::from_secs(60);
/// At most this many added peers in one message we send (BEP 11).
pub const MAX_ADDED: usize = 50;
/// At most this many dropped peers in one message we send (BEP 11).
pub const MAX_DROPPED: usize = 50;
/// Received PEX messages closer together than this are ignored: a peer
/// should send one a minute, and this leaves room for jitter while
/// stopping a peer from flooding our peer list.
pub const MIN_RECEIVE_INTERVAL: Duration = Duration::from_secs(45);

/// Why a `ut_pex` message was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PexError {
    /// The payload is not bencode.
    Bencode(DecodeError),
    /// The payload is bencode but not a dict.
    NotADict,
    /// A field of the wrong type, or a compact list whose length is not a
    /// multiple of its entry size.
    BadField(&'static str),
}

impl From<DecodeError> for PexError {
    fn from(e: DecodeError) -> PexError {
        PexError::Bencode(e)
    }
}

impl fmt::Display for PexError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PexError::Bencode(e) => write!(f, "peer exchange message: {e}"),
            PexError::NotADict => f.write_str("peer exchange message is not a dict"),
            PexError::BadField(k) => write!(f, "peer exchange message: malformed {k:?}"),
        }
    }
}

impl std::error::Error for PexError {}

/// The BEP 11 flags of one added peer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct PexFlags(pub u8);

impl PexFlags {
    /// Prefers encrypted connections.
    pub const ENCRYPTION: u8 = 0x01;
    /// A seed (or upload-only).
    pub const SEED: u8 = 0x02;
    /// Supports uTP.
    pub const UTP: u8 = 0x04;
    /// Supports `ut_holepunch`.
    pub const HOLEPUNCH: u8 = 0x08;
    /// Reachable: we connected to it, so it accepts connections.
    pub const REACHABLE: u8 = 0x10;

    /// Whether all bits of `bit` are set.
    pub fn contains(self, bit: u8) -> bool {
        self.0 & bit == bit
    }
}

/// One `ut_pex` message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PexMessage {
    /// Peers newly connected, with their flags.
    pub added: Vec<(SocketAddr, PexFlags)>,
    /// Peers no longer connected.
    pub dropped: Vec<SocketAddr>,
}

/// The `ut_pex` keys in canonical (sorted) order.
const PEX_KEYS: [&str; 6] = [
    "added", "added.f", "added6", "added6.f", "dropped", "dropped6",
];

impl PexMessage {
    /// Whether there is nothing to tell.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.dropped.is_empty()
    }

    /// The bencoded payload: IPv4 fields always, IPv6 fields only when
    /// there are IPv6 peers. IPv4-mapped IPv6 addresses go out as IPv4.
    pub fn encode(&self) -> Vec<u8> {
        let (mut a4, mut f4, mut a6, mut f6) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (addr, flags) in &self.added {
            match normalize(*addr) {
                SocketAddr::V4(s) => {
                    put_compact_v4(&mut a4, s);
                    f4.push(flags.0);
                }
                SocketAddr::V6(s) => {
                    put_compact_v6(&mut a6, s);
                    f6.push(flags.0);
                }
            }
        }
        let (mut d4, mut d6) = (Vec::new(), Vec::new());
        for addr in &self.dropped {
            match normalize(*addr) {
                SocketAddr::V4(s) => put_compact_v4(&mut d4, s),
                SocketAddr::V6(s) => put_compact_v6(&mut d6, s),
            }
        }
        let with_v6 = !a6.is_empty() || !d6.is_empty();
        let mut out = Vec::with_capacity(64 + a4.len() + a6.len() + d4.len() + d6.len());
        out.push(b'd');
        for (key, value) in PEX_KEYS.iter().zip([&a4, &f4, &a6, &f6, &d4, &d6]) {
            if key.contains('6') && !with_v6 {
                continue;
            }
            put_bytes(&mut out, key.as_bytes());
            put_bytes(&mut out, value);
        }
        out.push(b'e');
        out
    }

    /// Parses a `ut_pex` payload. At most [`MAX_PEERS_PER_MESSAGE`]
    /// added and as many dropped peers are taken; unusable entries (port
    /// 0, unspecified, multicast or broadcast address) and repeats are
    /// skipped; missing flags are 0. A known field that is not a string
    /// or not a whole number of entries is an error.
    pub fn parse(payload: &[u8]) -> Result<PexMessage, PexError> {
        let mut fields: [Option<&[u8]>; 6] = [None; 6];
        let mut r = Reader::new(payload);
        if r.peek() != Some(b'd') {
            return Err(PexError::NotADict);
        }
        r.begin_dict()?;
        while !r.at_end()? {
            let key = r.key()?;
            match PEX_KEYS.iter().position(|k| k.as_bytes() == key) {
                Some(i) => {
                    let name = PEX_KEYS.get(i).copied().unwrap_or("?");
                    // (At the end of input `bytes` reports the truncation.)
                    if matches!(r.peek(), Some(b) if !b.is_ascii_digit()) {
                        return Err(PexError::BadField(name));
                    }
                    let value = r.bytes()?;
                    if let Some(slot) = fields.get_mut(i) {
                        // The first occurrence wins, as in `Value::get`.
                        slot.get_or_insert(value);
                    }
                }
                None => {
                    r.skip()?;
                }
            }
        }
        r.finish()?;
        let [added, added_f, added6, added6_f, dropped, dropped6] =
            fields.map(|f| f.unwrap_or(&[]));
        let mut msg = PexMessage::default();
        for (list, flags, v6, name) in [
            (added, added_f, false, "added"),
            (added6, added6_f, true, "added6"),
        ] {
            for (i, addr) in compact(list, v6, name)?.enumerate() {
                if msg.added.len() >= MAX_PEERS_PER_MESSAGE {
                    break;
                }
                if let Some(a) = addr.filter(|a| !msg.added.iter().any(|(b, _)| b == a)) {
                    msg.added
                        .push((a, PexFlags(flags.get(i).copied().unwrap_or(0))));
                }
            }
        }
        for (list, v6, name) in [(dropped, false, "dropped"), (dropped6, true, "dropped6")] {
            for a in compact(list, v6, name)?.flatten() {
                if msg.dropped.len() >= MAX_PEERS_PER_MESSAGE {
                    break;
                }
                if !msg.dropped.contains(&a) {
                    msg.dropped.push(a);
                }
            }
        }
        Ok(msg)
    }
}

fn put_compact_v4(out: &mut Vec<u8>, s: SocketAddrV4) {
    out.extend_from_slice(&s.ip().octets());
    out.extend_from_slice(&s.port().to_be_bytes());
}

fn put_compact_v6(out: &mut Vec<u8>, s: SocketAddrV6) {
    out.extend_from_slice(&s.ip().octets());
    out.extend_from_slice(&s.port().to_be_bytes());
}

/// The entries of a compact peer list, each `None` if unusable. The
/// length is checked first, so a malformed list is refused whole.
fn compact<'a>(
    data: &'a [u8],
    v6: bool,
    name: &'static str,
) -> Result<impl Iterator<Item = Option<SocketAddr>> + 'a, PexError> {
    let size = if v6 { 18 } else { 6 };
    if !data.len().is_multiple_of(size) {
        return Err(PexError::BadField(name));
    }
    Ok(data
        .chunks_exact(size)
        .map(|c| decode_compact(c).map(normalize).filter(usable)))
}

fn decode_compact(c: &[u8]) -> Option<SocketAddr> {
    if let Ok([a, b, c, d, p1, p2]) = <[u8; 6]>::try_from(c) {
        let ip = Ipv4Addr::new(a, b, c, d);
        return Some(SocketAddr::from((ip, u16::from_be_bytes([p1, p2]))));
    }
    let (ip, port) = c.split_first_chunk::<16>()?;
    let port = <[u8; 2]>::try_from(port).ok()?;
    Some(SocketAddr::from((
        Ipv6Addr::from(*ip),
        u16::from_be_bytes(port),
    )))
}

/// IPv4-mapped IPv6 addresses (from a dual-stack socket) as plain IPv4,
/// so that one peer has one address.
fn normalize(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(s) => match s.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::from((v4, s.port())),
            None => a,
        },
        SocketAddr::V4(_) => a,
    }
}

/// Whether an address could be a peer at all.
fn usable(a: &SocketAddr) -> bool {
    let ip_ok = match a.ip() {
        IpAddr::V4(ip) => !ip.is_unspecified() && !ip.is_multicast() && !ip.is_broadcast(),
        IpAddr::V6(ip) => !ip.is_unspecified() && !ip.is_multicast(),
    };
    ip_ok && a.port() != 0
}

/// Peer exchange with one connected peer whose handshake offered
/// `ut_pex` (never create one on a private torrent): what it was told,
/// when it may be told more, and a guard against it flooding us.
#[derive(Debug, Clone)]
pub struct PexState {
    /// The peer's connection address: never offered to itself.
    remote: SocketAddr,
    /// Its listen address, once its handshake told us the port.
    listen: Option<SocketAddr>,
    /// The peers this peer was told about and not told dropped since.
    /// Only addresses from the caller's (bounded) peer set get in.
    sent: BTreeSet<SocketAddr>,
    /// The earliest time of the next message.
    next_send: Instant,
    /// When a message from the peer was last accepted.
    last_received: Option<Instant>,
}

impl PexState {
    /// State for a peer connected at `remote`; the first message may go
    /// at once.
    pub fn new(remote: SocketAddr, now: Instant) -> PexState {
        PexState {
            remote: normalize(remote),
            listen: None,
            sent: BTreeSet::new(),
            next_send: now,
            last_received: None,
        }
    }

    /// Records the peer's listen port (its handshake's `p`), so that the
    /// peer is not offered to itself under that address either.
    pub fn set_listen_port(&mut self, port: u16) {
        self.listen = Some(SocketAddr::new(self.remote.ip(), port));
    }

    /// The next message for this peer, if one is due at `now` and there
    /// is something to tell. `connected` is the torrent's current peers
    /// (their listen addresses, with flags); the message holds at most
    /// [`MAX_ADDED`] of them not yet sent and at most [`MAX_DROPPED`]
    /// sent ones no longer there. Added go in `connected`'s order,
    /// dropped in address order; what does not fit goes next time.
    pub fn poll_message(
        &mut self,
        connected: &[(SocketAddr, PexFlags)],
        now: Instant,
    ) -> Option<PexMessage> {
        if now < self.next_send {
            return None;
        }
        // Even when there is nothing to say: a due time in the past would
        // make the reactor spin.
        self.next_send = now.checked_add(PEX_INTERVAL).unwrap_or(now);
        let mut current = BTreeSet::new();
        let mut msg = PexMessage::default();
        for (addr, flags) in connected {
            let addr = normalize(*addr);
            if !usable(&addr) || self.is_self(addr) || !current.insert(addr) {
                continue;
            }
            if msg.added.len() < MAX_ADDED && !self.sent.contains(&addr) {
                msg.added.push((addr, *flags));
            }
        }
        msg.dropped = self
            .sent
            .difference(&current)
            .take(MAX_DROPPED)
            .copied()
            .collect();
        if msg.is_empty() {
            return None;
        }
        for a in &msg.dropped {
            self.sent.remove(a);
        }
        self.sent.extend(msg.added.iter().map(|(a, _)| *a));
        Some(msg)
    }

    /// When [`PexState::poll_message`] may next produce a message.
    pub fn poll_timeout(&self) -> Instant {
        self.next_send
    }

    /// Whether a PEX message received from the peer at `now` should be
    /// used (and if so records it): no more than one per
    /// [`MIN_RECEIVE_INTERVAL`].
    pub fn accept_received(&mut self, now: Instant) -> bool {
        let ok = self
            .last_received
            .is_none_or(|t| now.saturating_duration_since(t) >= MIN_RECEIVE_INTERVAL);
        if ok {
            self.last_received = Some(now);
        }
        ok
    }

    /// How many peers this peer currently knows from us.
    pub fn sent_count(&self) -> usize {
        self.sent.len()
    }

    fn is_self(&self, a: SocketAddr) -> bool {
        a == self.remote || Some(a) == self.listen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn pex_message_has_exact_bytes_and_round_trips() {
        let msg = PexMessage {
            added: vec![(v4("1.2.3.4:6881"), PexFlags(0x12))],
            dropped: vec![v4("5.6.7.8:80")],
        };
        let bytes = msg.encode();
        assert_eq!(
            bytes,
            b"d5:added6:\x01\x02\x03\x04\x1a\xe17:added.f1:\x127:dropped6:\x05\x06\x07\x08\x00\x50e"
                .to_vec()
        );
        assert_eq!(PexMessage::parse(&bytes).unwrap(), msg);
        assert!(PexFlags(0x12).contains(PexFlags::SEED));
        assert!(!PexFlags(0x12).contains(PexFlags::UTP));

        let msg = PexMessage {
            added: vec![
                (v4("[2001:db8::1]:443"), PexFlags(PexFlags::UTP)),
                (v4("9.9.9.9:1"), PexFlags(0)),
            ],
            dropped: vec![v4("[2001:db8::2]:8080")],
        };
        let bytes = msg.encode();
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.starts_with("d5:added6:"), "{text}");
        assert!(text.contains("6:added618:"), "{text}");
        assert!(text.contains("8:added6.f1:\x04"), "{text}");
        assert!(text.contains("7:dropped0:8:dropped618:"), "{text}");
        let back = PexMessage::parse(&bytes).unwrap();
        // IPv4 first, then IPv6.
        assert_eq!(back.added, vec![msg.added[1], msg.added[0]]);
        assert_eq!(back.dropped, msg.dropped);
        // Empty message.
        assert_eq!(
            PexMessage::default().encode(),
            b"d5:added0:7:added.f0:7:dropped0:e".to_vec()
        );
    }

    #[test]
    fn mapped_addresses_go_out_as_ipv4() {
        let msg = PexMessage {
            added: vec![(v4("[::ffff:1.2.3.4]:6881"), PexFlags(0))],
            dropped: vec![],
        };
        let back = PexMessage::parse(&msg.encode()).unwrap();
        assert_eq!(back.added, vec![(v4("1.2.3.4:6881"), PexFlags(0))]);
    }

    #[test]
    fn parsing_takes_at_most_200_and_skips_unusable_entries() {
        let mut added = Vec::new();
        for i in 0..300u32 {
            added.extend_from_slice(&[10, 0, (i >> 8) as u8, i as u8, 0x1a, 0xe1]);
        }
        let mut input = b"d5:added".to_vec();
        put_bytes(&mut input, &added);
        put_bytes(&mut input, b"dropped");
        put_bytes(&mut input, &added);
        input.push(b'e');
        let msg = PexMessage::parse(&input).unwrap();
        assert_eq!(msg.added.len(), MAX_PEERS_PER_MESSAGE);
        assert_eq!(msg.dropped.len(), MAX_PEERS_PER_MESSAGE);
        assert_eq!(msg.added[199].0, v4("10.0.0.199:6881"));

        let bad = [
            [1, 2, 3, 4, 0, 0],         // port 0
            [0, 0, 0, 0, 0, 1],         // unspecified
            [224, 0, 0, 1, 0, 1],       // multicast
            [255, 255, 255, 255, 0, 1], // broadcast
            [1, 2, 3, 4, 0, 1],         // fine
            [1, 2, 3, 4, 0, 1],         // repeat
            [1, 2, 3, 5, 0, 1],         // fine, no flag byte left
        ];
        let mut input = b"d7:added.f6:abcdef5:added".to_vec();
        put_bytes(&mut input, bad.as_flattened());
        let mut v6 = Vec::new();
        v6.extend_from_slice(&[0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1]);
        v6.extend_from_slice(&[0; 18]);
        v6.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        v6.extend_from_slice(&[0, 7]);
        input.extend_from_slice(b"6:added6");
        put_bytes(&mut input, &v6);
        input.extend_from_slice(b"3:zzzli1eee");
        let msg = PexMessage::parse(&input).unwrap();
        assert_eq!(
            msg.added,
            vec![
                (v4("1.2.3.4:1"), PexFlags(b'e')),
                (v4("1.2.3.5:1"), PexFlags(0)),
                (v4("[::1]:7"), PexFlags(0)),
            ]
        );
    }

    #[test]
    fn malformed_pex_messages_are_errors() {
        assert_eq!(PexMessage::parse(b"le"), Err(PexError::NotADict));
        assert_eq!(
            PexMessage::parse(b"d5:added5:abcdee"),
            Err(PexError::BadField("added"))
        );
        assert_eq!(
            PexMessage::parse(b"d8:dropped66:abcdefe"),
            Err(PexError::BadField("dropped6"))
        );
        assert_eq!(
            PexMessage::parse(b"d5:addedi1ee"),
            Err(PexError::BadField("added"))
        );
        for bad in [
            &b"d5:added"[..],
            b"d5:added6:abcdef",
            b"d5:added0:e0:",
            b"d5:added99:x",
        ] {
            assert!(
                matches!(PexMessage::parse(bad), Err(PexError::Bencode(_))),
                "{bad:?}"
            );
        }
        assert_eq!(PexMessage::parse(b"de"), Ok(PexMessage::default()));
    }

    fn peers(addrs: &[&str]) -> Vec<(SocketAddr, PexFlags)> {
        addrs.iter().map(|a| (v4(a), PexFlags(0))).collect()
    }

    fn addrs(msg: &PexMessage) -> Vec<String> {
        msg.added.iter().map(|(a, _)| a.to_string()).collect()
    }

    #[test]
    fn pex_state_sends_diffs_once_a_minute() {
        let t0 = Instant::now();
        let mut st = PexState::new(v4("10.0.0.1:50000"), t0);
        st.set_listen_port(6881);
        let mut set = peers(&[
            "10.0.0.1:50000", // the peer itself, as connected
            "10.0.0.1:6881",  // the peer itself, by listen port
            "10.0.0.2:6881",
            "10.0.0.3:6881",
            "10.0.0.3:6881", // repeat
            "10.0.0.4:0",    // unusable
        ]);
        assert_eq!(st.poll_timeout(), t0);
        let m = st.poll_message(&set, t0).unwrap();
        assert_eq!(addrs(&m), vec!["10.0.0.2:6881", "10.0.0.3:6881"]);
        assert!(m.dropped.is_empty());
        assert_eq!(st.poll_timeout(), t0 + PEX_INTERVAL);

        // Changes within the minute wait for it.
        set.retain(|(a, _)| *a != v4("10.0.0.2:6881"));
        set.push((v4("10.0.0.5:6881"), PexFlags(PexFlags::SEED)));
        assert_eq!(st.poll_message(&set, t0 + Duration::from_secs(59)), None);
        let m = st.poll_message(&set, t0 + PEX_INTERVAL).unwrap();
        assert_eq!(
            m.added,
            vec![(v4("10.0.0.5:6881"), PexFlags(PexFlags::SEED))]
        );
        assert_eq!(m.dropped, vec![v4("10.0.0.2:6881")]);
        assert_eq!(st.sent_count(), 2);

        // Nothing new: no message, and the timer still moves on.
        let t2 = t0 + 2 * PEX_INTERVAL;
        assert_eq!(st.poll_message(&set, t2), None);
        assert_eq!(st.poll_timeout(), t2 + PEX_INTERVAL);
        assert_eq!(st.poll_message(&set, t2 + PEX_INTERVAL), None);
    }

    #[test]
    fn pex_state_sends_at_most_50_each_way() {
        let t0 = Instant::now();
        let mut st = PexState::new(v4("[::ffff:192.168.0.1]:7000"), t0);
        let many: Vec<(SocketAddr, PexFlags)> = (0..120u8)
            .map(|i| (SocketAddr::from(([10, 1, 0, i], 6881)), PexFlags(0)))
            .chain([(v4("192.168.0.1:7000"), PexFlags(0))]) // itself, unmapped
            .collect();
        let mut total = 0;
        for minute in 0..3 {
            let m = st.poll_message(&many, t0 + minute * PEX_INTERVAL).unwrap();
            assert!(m.added.len() <= MAX_ADDED);
            assert!(!m.added.iter().any(|(a, _)| a.port() == 7000));
            total += m.added.len();
        }
        assert_eq!(total, 120);
        assert_eq!(st.poll_message(&many, t0 + 3 * PEX_INTERVAL), None);
        // All gone: dropped 50 at a time, only once each.
        let mut dropped = BTreeSet::new();
        for minute in 4..7 {
            let m = st.poll_message(&[], t0 + minute * PEX_INTERVAL).unwrap();
            assert!(m.dropped.len() <= MAX_DROPPED);
            assert!(m.dropped.iter().all(|a| dropped.insert(*a)));
        }
        assert_eq!(dropped.len(), 120);
        assert_eq!(st.sent_count(), 0);
        // Peers never sent (they did not fit) are never dropped either.
        let mut st2 = PexState::new(v4("192.168.0.1:7000"), t0);
        assert_eq!(st2.poll_message(&many, t0).unwrap().added.len(), 50);
        let m = st2.poll_message(&many[..60], t0 + PEX_INTERVAL).unwrap();
        assert_eq!(m.added.len(), 10);
        assert!(m.dropped.is_empty());
    }

    #[test]
    fn received_messages_are_rate_limited() {
        let t0 = Instant::now();
        let mut st = PexState::new(v4("10.0.0.1:1"), t0);
        assert!(st.accept_received(t0));
        assert!(!st.accept_received(t0 + Duration::from_secs(1)));
        assert!(!st.accept_received(t0 + Duration::from_secs(44)));
        assert!(st.accept_received(t0 + MIN_RECEIVE_INTERVAL));
        assert!(!st.accept_received(t0));
    }
}
