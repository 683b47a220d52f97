//! The extension protocol (BEP 10) handshake and peer exchange (BEP 11,
//! `ut_pex`): a sans-IO codec and the per-connection PEX state.
//!
//! Everything read here comes from a peer and is hostile: parsing walks
//! the bencode with the zero-copy [`Reader`], keeps at most a fixed number
//! of entries, and ignores (or, for PEX, refuses with an error value) what
//! it does not understand. Memory kept does not grow with the input.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::time::{Duration, Instant};

use crate::codec::bencode::{DecodeError, Reader};

/// The peer wire message id of every extension message.
pub const EXTENDED_MSG_ID: u8 = 20;
/// The extended message id of the extension handshake.
pub const HANDSHAKE_EXT_ID: u8 = 0;
/// The extension name of peer exchange.
pub const UT_PEX: &str = "ut_pex";
/// The extended id we ask peers to use for `ut_pex` messages to us.
pub const OUR_UT_PEX_ID: u8 = 1;

/// At most this many entries of a peer's `m` dict are kept.
pub const MAX_EXTENSIONS: usize = 64;
/// Extension names longer than this are ignored.
pub const MAX_EXT_NAME: usize = 64;
/// A peer's client name (`v`) is cut to this many bytes.
pub const MAX_CLIENT_NAME: usize = 64;
/// A peer's `reqq` is clamped to this: we never queue more requests than
/// this on one peer, whatever it claims to accept.
pub const MAX_REQQ: u32 = 2048;

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

/// Why an extension message was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PexError {
    /// The payload is not bencode.
    Bencode(DecodeError),
    /// The payload is bencode but not a dict.
    NotADict,
    /// A PEX field of the wrong type, or a compact list whose length is
    /// not a multiple of its entry size.
    BadField(&'static str),
    /// An extended message without its extended id.
    Empty,
    /// A payload too large for one message.
    TooLarge,
}

impl From<DecodeError> for PexError {
    fn from(e: DecodeError) -> PexError {
        PexError::Bencode(e)
    }
}

impl fmt::Display for PexError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PexError::Bencode(e) => write!(f, "extension message: {e}"),
            PexError::NotADict => f.write_str("extension message is not a dict"),
            PexError::BadField(k) => write!(f, "extension message: malformed {k:?}"),
            PexError::Empty => f.write_str("extension message without an extended id"),
            PexError::TooLarge => f.write_str("extension message too large"),
        }
    }
}

impl std::error::Error for PexError {}

/// Splits the body of an extended message (what follows message id 20)
/// into the extended id and its payload.
pub fn split_extended(body: &[u8]) -> Result<(u8, &[u8]), PexError> {
    body.split_first()
        .map(|(id, rest)| (*id, rest))
        .ok_or(PexError::Empty)
}

/// Appends one whole extended message: length prefix, id 20, `ext_id`,
/// `payload`. On error `out` is unchanged.
pub fn write_extended(out: &mut Vec<u8>, ext_id: u8, payload: &[u8]) -> Result<(), PexError> {
    let len = payload
        .len()
        .checked_add(2)
        .and_then(|l| u32::try_from(l).ok())
        .ok_or(PexError::TooLarge)?;
    out.extend_from_slice(&len.to_be_bytes());
    out.push(EXTENDED_MSG_ID);
    out.push(ext_id);
    out.extend_from_slice(payload);
    Ok(())
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(b.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(b);
}

fn put_int(out: &mut Vec<u8>, i: i64) {
    out.push(b'i');
    out.extend_from_slice(i.to_string().as_bytes());
    out.push(b'e');
}

/// Our extension handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalHandshake<'a> {
    /// Our client name and version (`v`).
    pub client: &'a str,
    /// How many outstanding requests we accept (`reqq`).
    pub reqq: u32,
    /// Our listen port (`p`), if peers can connect to us.
    pub listen_port: Option<u16>,
    /// The torrent is private (BEP 27): peer exchange is not offered.
    pub private: bool,
}

impl LocalHandshake<'_> {
    /// The bencoded payload (keys in canonical order).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.client.len());
        out.push(b'd');
        put_bytes(&mut out, b"m");
        out.push(b'd');
        if !self.private {
            put_bytes(&mut out, UT_PEX.as_bytes());
            put_int(&mut out, i64::from(OUR_UT_PEX_ID));
        }
        out.push(b'e');
        if let Some(p) = self.listen_port {
            put_bytes(&mut out, b"p");
            put_int(&mut out, i64::from(p));
        }
        put_bytes(&mut out, b"reqq");
        put_int(&mut out, i64::from(self.reqq));
        put_bytes(&mut out, b"v");
        put_bytes(&mut out, self.client.as_bytes());
        out.push(b'e');
        out
    }
}

/// A peer's extension handshake, bounded. A later handshake from the
/// same peer replaces the earlier one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtendedHandshake {
    /// The `m` entries kept, first occurrence of each name, in input
    /// order; id 0 means the peer disabled that extension.
    pub extensions: Vec<(String, u8)>,
    /// The client name (`v`), cut to [`MAX_CLIENT_NAME`] bytes, control
    /// characters replaced: it goes into logs.
    pub client: Option<String>,
    /// The peer's listen port (`p`), if valid.
    pub listen_port: Option<u16>,
    /// How many outstanding requests it accepts (`reqq`), clamped to
    /// 1..=[`MAX_REQQ`].
    pub reqq: Option<u32>,
    /// Our address as the peer sees it (`yourip`).
    pub your_ip: Option<IpAddr>,
}

impl ExtendedHandshake {
    /// Parses a handshake payload. Unknown keys and known keys of the
    /// wrong type are ignored (BEP 10 asks for tolerance); input that is
    /// not a bencoded dict is an error.
    pub fn parse(payload: &[u8]) -> Result<ExtendedHandshake, PexError> {
        let mut hs = ExtendedHandshake::default();
        let mut r = Reader::new(payload);
        if r.peek() != Some(b'd') {
            return Err(PexError::NotADict);
        }
        r.begin_dict()?;
        let mut seen_m = false;
        while !r.at_end()? {
            let key = r.key()?;
            match key {
                b"m" if !seen_m => {
                    seen_m = true;
                    parse_m(&mut r, &mut hs.extensions)?;
                }
                b"v" if hs.client.is_none() => {
                    hs.client = read_bytes(&mut r)?.map(clean_name);
                }
                b"p" if hs.listen_port.is_none() => {
                    hs.listen_port = read_int(&mut r)?
                        .and_then(|p| u16::try_from(p).ok())
                        .filter(|p| *p != 0);
                }
                b"reqq" if hs.reqq.is_none() => {
                    hs.reqq = read_int(&mut r)?
                        .filter(|q| *q > 0)
                        .map(|q| u32::try_from(q).unwrap_or(u32::MAX).min(MAX_REQQ));
                }
                b"yourip" if hs.your_ip.is_none() => {
                    hs.your_ip = read_bytes(&mut r)?.and_then(ip_from_bytes);
                }
                _ => {
                    r.skip()?;
                }
            }
        }
        r.finish()?;
        Ok(hs)
    }

    /// The id the peer wants for extension `name`; `None` if it does not
    /// support it or disabled it.
    pub fn extension_id(&self, name: &str) -> Option<u8> {
        self.extensions
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, id)| *id)
            .filter(|id| *id != 0)
    }

    /// The id to send `ut_pex` messages to this peer with.
    pub fn ut_pex(&self) -> Option<u8> {
        self.extension_id(UT_PEX)
    }
}

/// Reads the `m` dict into `out`, bounded; anything but a dict is
/// skipped.
fn parse_m(r: &mut Reader<'_>, out: &mut Vec<(String, u8)>) -> Result<(), PexError> {
    if r.peek() != Some(b'd') {
        r.skip()?;
        return Ok(());
    }
    r.begin_dict()?;
    while !r.at_end()? {
        let name = r.key()?;
        let id = read_int(r)?;
        if out.len() >= MAX_EXTENSIONS || name.len() > MAX_EXT_NAME {
            continue;
        }
        let (Some(id), Ok(name)) = (
            id.and_then(|i| u8::try_from(i).ok()),
            std::str::from_utf8(name),
        ) else {
            continue;
        };
        if !out.iter().any(|(n, _)| n == name) {
            out.push((name.to_owned(), id));
        }
    }
    Ok(())
}

/// An integer value, or `None` (skipped) if the value is something else.
fn read_int(r: &mut Reader<'_>) -> Result<Option<i64>, PexError> {
    if r.peek() == Some(b'i') {
        Ok(r.value()?.as_int())
    } else {
        r.skip()?;
        Ok(None)
    }
}

/// A string value without copying, or `None` (skipped) if the value is
/// something else.
fn read_bytes<'a>(r: &mut Reader<'a>) -> Result<Option<&'a [u8]>, PexError> {
    if matches!(r.peek(), Some(b'0'..=b'9')) {
        Ok(Some(r.bytes()?))
    } else {
        r.skip()?;
        Ok(None)
    }
}

fn clean_name(b: &[u8]) -> String {
    let cut = b.get(..MAX_CLIENT_NAME).unwrap_or(b);
    String::from_utf8_lossy(cut)
        .chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

fn ip_from_bytes(b: &[u8]) -> Option<IpAddr> {
    if let Ok(v4) = <[u8; 4]>::try_from(b) {
        Some(IpAddr::V4(Ipv4Addr::from(v4)))
    } else if let Ok(v6) = <[u8; 16]>::try_from(b) {
        Some(IpAddr::V6(Ipv6Addr::from(v6)))
    } else {
        None
    }
}

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
    fn our_handshake_has_exact_bytes() {
        let hs = LocalHandshake {
            client: "tripcd 0.1",
            reqq: 250,
            listen_port: Some(6881),
            private: false,
        };
        assert_eq!(
            hs.encode(),
            b"d1:md6:ut_pexi1ee1:pi6881e4:reqqi250e1:v10:tripcd 0.1e".to_vec()
        );
        let back = ExtendedHandshake::parse(&hs.encode()).unwrap();
        assert_eq!(back.ut_pex(), Some(OUR_UT_PEX_ID));
        assert_eq!(back.listen_port, Some(6881));
        assert_eq!(back.reqq, Some(250));
        assert_eq!(back.client.as_deref(), Some("tripcd 0.1"));
    }

    #[test]
    fn a_private_torrent_never_offers_pex() {
        let hs = LocalHandshake {
            client: "t",
            reqq: 5,
            listen_port: None,
            private: true,
        };
        assert_eq!(hs.encode(), b"d1:mde4:reqqi5e1:v1:te".to_vec());
        assert_eq!(
            ExtendedHandshake::parse(&hs.encode()).unwrap().ut_pex(),
            None
        );
    }

    #[test]
    fn parses_a_typical_foreign_handshake() {
        let input = b"d1:md11:ut_metadatai3e6:ut_pexi2ee13:metadata_sizei1234e\
            1:pi51413e4:reqqi500e1:v14:uTorrent 3.5.56:yourip4:\x7f\x00\x00\x01e";
        let hs = ExtendedHandshake::parse(input).unwrap();
        assert_eq!(hs.ut_pex(), Some(2));
        assert_eq!(hs.extension_id("ut_metadata"), Some(3));
        assert_eq!(hs.extension_id("lt_donthave"), None);
        assert_eq!(hs.listen_port, Some(51413));
        assert_eq!(hs.reqq, Some(500));
        assert_eq!(hs.client.as_deref(), Some("uTorrent 3.5.5"));
        assert_eq!(hs.your_ip, Some(IpAddr::from([127, 0, 0, 1])));
    }

    #[test]
    fn handshake_fields_out_of_range_or_of_the_wrong_type_are_ignored() {
        let hs = ExtendedHandshake::parse(
            b"d1:md1:ai0e1:bi256e1:ci-1e1:dli1ee1:ei255ee\
              1:pi0e4:reqqi0e1:vi5e6:yourip3:abce",
        )
        .unwrap();
        assert_eq!(hs.extension_id("a"), None, "0 is disabled");
        assert_eq!(
            hs.extensions,
            vec![("a".to_string(), 0), ("e".to_string(), 255)]
        );
        assert_eq!(
            (hs.listen_port, hs.reqq, hs.client, hs.your_ip),
            (None, None, None, None)
        );

        let hs =
            ExtendedHandshake::parse(b"d1:mi5e1:pi70000e4:reqqi99999999999e1:x4:junke").unwrap();
        assert!(hs.extensions.is_empty());
        assert_eq!(hs.listen_port, None);
        assert_eq!(hs.reqq, Some(MAX_REQQ));
    }

    #[test]
    fn handshake_parsing_is_bounded() {
        let mut input = b"d1:md".to_vec();
        for i in 0..1000 {
            let name = format!("x{i:04}");
            put_bytes(&mut input, name.as_bytes());
            put_int(&mut input, 7);
        }
        put_bytes(&mut input, &[b'n'; MAX_EXT_NAME + 1]);
        put_int(&mut input, 9);
        input.extend_from_slice(b"e1:v");
        put_bytes(&mut input, &[b'A'; 10_000]);
        input.push(b'e');
        let hs = ExtendedHandshake::parse(&input).unwrap();
        assert_eq!(hs.extensions.len(), MAX_EXTENSIONS);
        assert_eq!(hs.client.unwrap().len(), MAX_CLIENT_NAME);

        let hs = ExtendedHandshake::parse(b"d1:v5:a\nb\x00ce").unwrap();
        assert_eq!(hs.client.as_deref(), Some("a\u{fffd}b\u{fffd}c"));
    }

    #[test]
    fn malformed_handshakes_are_errors() {
        assert_eq!(ExtendedHandshake::parse(b""), Err(PexError::NotADict));
        assert_eq!(ExtendedHandshake::parse(b"li1ee"), Err(PexError::NotADict));
        for bad in [
            &b"d1:md6:ut_pexi1e"[..],
            b"d1:pi01ee",
            b"d1:pi1eei1e",
            b"di1ei2ee",
        ] {
            assert!(
                matches!(ExtendedHandshake::parse(bad), Err(PexError::Bencode(_))),
                "{bad:?}"
            );
        }
        let mut deep = b"d1:x".to_vec();
        deep.extend(vec![b'l'; 100_000]);
        assert!(matches!(
            ExtendedHandshake::parse(&deep),
            Err(PexError::Bencode(_))
        ));
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

    #[test]
    fn extended_framing() {
        let mut out = vec![9];
        write_extended(&mut out, 3, b"de").unwrap();
        assert_eq!(out, vec![9, 0, 0, 0, 4, 20, 3, b'd', b'e']);
        assert_eq!(split_extended(&out[5..]), Ok((20, &out[6..])));
        assert_eq!(split_extended(&out[6..]), Ok((3, &b"de"[..])));
        assert_eq!(split_extended(&[]), Err(PexError::Empty));
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
