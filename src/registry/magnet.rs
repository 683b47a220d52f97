//! Magnet links (BEP 9): `magnet:?xt=urn:btih:<hash>&dn=<name>&tr=<url>
//! &x.pe=<peer>`, parsed into what a torrent without metadata starts
//! from, and written back.
//!
//! The link comes from a user or a web page, so it is hostile like any
//! input: its length is bounded before it is read, as are the trackers
//! and peers kept from it, and every refusal says why.
//!
//! Choices, with the references' behaviour:
//! - Keys are matched without regard to case, and a `.N` suffix of
//!   digits is dropped (`tr.1`, `xt.2`), as libtorrent does; unknown keys
//!   are ignored.
//! - Every value is percent-decoded. `+` becomes a space in `dn` only:
//!   libtorrent turns every `+` into a space, Transmission none. Sites
//!   that encode a name as a form encode spaces so, while in a tracker
//!   URL a `+` is data (a passkey, a path) and a space is never valid.
//!   A malformed escape refuses the link when it is in `xt`, and drops
//!   the value elsewhere.
//! - `xt`: `urn:btih:` (any case) with 40 hex digits or 32 base32
//!   characters (RFC 4648 alphabet, any case). A `urn:btmh:` (BitTorrent
//!   v2) beside a `btih` is a hybrid torrent: its v1 hash is used and the
//!   v2 one ignored (we speak v1 only; libtorrent keeps both). An `xt` of
//!   another namespace (`urn:ed2k:`, `urn:sha1:`, …) beside a `btih` is
//!   ignored, as both references ignore it; alone, it refuses the link,
//!   as does a `btmh` alone. The same `btih` twice is one torrent; two
//!   different ones refuse the link (the references keep the last
//!   silently, which hides a mistake).
//! - `dn`: the last one wins, as in libtorrent and Transmission. Invalid
//!   UTF-8 and control characters are replaced (the name goes into
//!   logs and status replies).
//! - `tr`: each is its own tier, in link order (libtorrent and
//!   Transmission do so). Only URLs we can announce to are kept (`http`,
//!   `https`, `udp`, with a host), each once, at most [`MAX_TRACKERS`].
//! - `x.pe`: `a.b.c.d:port` or `[v6]:port`. A bad one is skipped, not an
//!   error: peer addresses are hints (the tracker and other peers find
//!   the swarm anyway) and libtorrent skips them too. Host names are
//!   skipped (resolving is not this module's business), and so are
//!   addresses with a scope id (it names an interface of the machine the
//!   link was made on), port 0, unspecified, multicast and broadcast
//!   addresses. At most [`MAX_PEERS`].

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use super::metainfo::{hex, parse_hash, Tracker};

/// The longest link accepted. Real ones are under a few kilobytes even
/// with dozens of trackers; this is ten times the largest seen and keeps
/// the parse's work trivial.
pub const MAX_URI_LEN: usize = 64 << 10;

/// Trackers kept from one link; the rest are ignored. Public lists
/// pasted into links reach a few dozen; announcing to more is load on
/// trackers, not more peers.
pub const MAX_TRACKERS: usize = 64;

/// Peer addresses kept from one link; the rest are ignored. `x.pe` is
/// meant for the link's author and a few others, not a peer list.
pub const MAX_PEERS: usize = 64;

/// The longest `xt` namespace quoted back in an error message.
const MAX_QUOTED: usize = 32;

/// What a magnet link says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Magnet {
    /// The v1 info hash.
    pub info_hash: [u8; 20],
    /// The display name (`dn`), to show until the metadata arrives.
    pub name: Option<String>,
    /// Tracker URLs (`tr`), in link order, one tier each.
    pub trackers: Vec<String>,
    /// Peers to try first (`x.pe`).
    pub peers: Vec<SocketAddr>,
}

/// Why a magnet link was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MagnetError {
    /// Longer than [`MAX_URI_LEN`].
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// It does not start with `magnet:?`.
    NotMagnet,
    /// No `xt` at all.
    NoInfoHash,
    /// Only a `urn:btmh:` hash: a torrent of BitTorrent v2 alone.
    V2Only,
    /// Only `xt`s of a namespace other than `urn:btih:`.
    UnknownNamespace(String),
    /// Two different `urn:btih:` hashes.
    TwoInfoHashes,
    /// A `urn:btih:` value that is not a hash.
    BadInfoHash(&'static str),
    /// A malformed percent escape in this key's value.
    BadEscape(&'static str),
}

impl fmt::Display for MagnetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MagnetError::TooLong { len } => write!(
                f,
                "magnet link of {len} bytes, over the limit of {MAX_URI_LEN}"
            ),
            MagnetError::NotMagnet => f.write_str("not a magnet link (no \"magnet:?\")"),
            MagnetError::NoInfoHash => f.write_str("magnet link without an info hash (xt)"),
            MagnetError::V2Only => f.write_str("BitTorrent v2 (btmh) magnets are not supported"),
            MagnetError::UnknownNamespace(ns) => write!(
                f,
                "magnet link names its content by {ns:?}, not by a BitTorrent info hash (urn:btih:)"
            ),
            MagnetError::TwoInfoHashes => {
                f.write_str("magnet link names two different torrents (two urn:btih: hashes)")
            }
            MagnetError::BadInfoHash(why) => write!(f, "magnet link's info hash: {why}"),
            MagnetError::BadEscape(key) => {
                write!(f, "magnet link: malformed percent escape in {key}")
            }
        }
    }
}

impl std::error::Error for MagnetError {}

/// The keys we read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Xt,
    Dn,
    Tr,
    Peer,
    Other,
}

/// What one `xt` names.
enum Topic {
    V1([u8; 20]),
    V2,
    Other(String),
}

impl Magnet {
    /// Parses a magnet link (surrounding whitespace is ignored).
    pub fn parse(uri: &str) -> Result<Magnet, MagnetError> {
        if uri.len() > MAX_URI_LEN {
            return Err(MagnetError::TooLong { len: uri.len() });
        }
        let uri = uri.trim_matches(|c: char| c.is_ascii_whitespace());
        let query = uri
            .get(..8)
            .filter(|s| s.eq_ignore_ascii_case("magnet:?"))
            .and_then(|_| uri.get(8..))
            .ok_or(MagnetError::NotMagnet)?;
        let mut m = Magnet {
            info_hash: [0; 20],
            name: None,
            trackers: Vec::new(),
            peers: Vec::new(),
        };
        let (mut v1, mut v2, mut other) = (None, false, None);
        for part in query.split('&') {
            let Some((key, value)) = part.split_once('=') else {
                continue;
            };
            match key_of(key) {
                Key::Xt => match topic(value)? {
                    Topic::V1(h) if v1.is_some_and(|seen| seen != h) => {
                        return Err(MagnetError::TwoInfoHashes)
                    }
                    Topic::V1(h) => v1 = Some(h),
                    Topic::V2 => v2 = true,
                    Topic::Other(ns) => {
                        other.get_or_insert(ns);
                    }
                },
                Key::Dn => {
                    if let Some(b) = percent_decode(value, true) {
                        m.name = clean_name(&b);
                    }
                }
                Key::Tr => m.add_tracker(value),
                Key::Peer => m.add_peer(value),
                Key::Other => {}
            }
        }
        m.info_hash = match (v1, v2, other) {
            (Some(h), _, _) => h,
            (None, true, _) => return Err(MagnetError::V2Only),
            (None, false, Some(ns)) => return Err(MagnetError::UnknownNamespace(ns)),
            (None, false, None) => return Err(MagnetError::NoInfoHash),
        };
        Ok(m)
    }

    fn add_tracker(&mut self, value: &str) {
        if self.trackers.len() >= MAX_TRACKERS {
            return;
        }
        let Some(url) = percent_decode(value, false).and_then(|b| String::from_utf8(b).ok()) else {
            return;
        };
        if usable_tracker(&url) && !self.trackers.contains(&url) {
            self.trackers.push(url);
        }
    }

    fn add_peer(&mut self, value: &str) {
        if self.peers.len() >= MAX_PEERS {
            return;
        }
        let Some(text) = percent_decode(value, false).and_then(|b| String::from_utf8(b).ok())
        else {
            return;
        };
        let Ok(addr) = text.parse::<SocketAddr>() else {
            return;
        };
        if let SocketAddr::V6(v6) = addr {
            if v6.scope_id() != 0 {
                return;
            }
        }
        let addr = SocketAddr::new(addr.ip().to_canonical(), addr.port());
        if usable_peer(&addr) && !self.peers.contains(&addr) {
            self.peers.push(addr);
        }
    }

    /// The link: the hash in lower-case hex, then `dn`, every `tr` and
    /// every `x.pe`. Names and URLs are percent-encoded but for RFC 3986's
    /// unreserved characters; peer addresses are written as they are, as
    /// libtorrent writes them (and reads them: it does not decode them).
    pub fn to_uri(&self) -> String {
        let mut s = String::with_capacity(64);
        s.push_str("magnet:?xt=urn:btih:");
        s.push_str(&hex(&self.info_hash));
        if let Some(name) = &self.name {
            s.push_str("&dn=");
            percent_encode(&mut s, name);
        }
        for t in &self.trackers {
            s.push_str("&tr=");
            percent_encode(&mut s, t);
        }
        for p in &self.peers {
            s.push_str("&x.pe=");
            s.push_str(&p.to_string());
        }
        s
    }
}

/// The key, case-folded, without a `.N` suffix of digits.
fn key_of(key: &str) -> Key {
    let base = match key.split_once('.') {
        Some((base, n)) if n.bytes().all(|b| b.is_ascii_digit()) => base,
        _ => key,
    };
    let is = |k: &str| base.eq_ignore_ascii_case(k);
    if is("xt") {
        Key::Xt
    } else if is("dn") {
        Key::Dn
    } else if is("tr") {
        Key::Tr
    } else if is("x.pe") {
        Key::Peer
    } else {
        Key::Other
    }
}

/// Reads one `xt` value.
fn topic(value: &str) -> Result<Topic, MagnetError> {
    let v = percent_decode(value, false).ok_or(MagnetError::BadEscape("xt"))?;
    let urn = v.get(..4).filter(|p| p.eq_ignore_ascii_case(b"urn:"));
    let Some(rest) = urn.and_then(|_| v.get(4..)) else {
        return Ok(Topic::Other(quote(&v)));
    };
    let (ns, id) = match rest.iter().position(|b| *b == b':') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    if ns.eq_ignore_ascii_case(b"btih") {
        info_hash(id).map(Topic::V1)
    } else if ns.eq_ignore_ascii_case(b"btmh") {
        Ok(Topic::V2)
    } else {
        Ok(Topic::Other(format!("urn:{}", quote(ns))))
    }
}

/// A short, printable quote of untrusted bytes for an error message.
fn quote(b: &[u8]) -> String {
    String::from_utf8_lossy(b.get(..MAX_QUOTED).unwrap_or(b))
        .chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

fn info_hash(id: &[u8]) -> Result<[u8; 20], MagnetError> {
    match id.len() {
        40 => parse_hash(id).ok_or(MagnetError::BadInfoHash("not 40 hexadecimal digits")),
        32 => base32_hash(id).ok_or(MagnetError::BadInfoHash("not 32 base32 characters")),
        _ => Err(MagnetError::BadInfoHash(
            "not 40 hex digits or 32 base32 characters",
        )),
    }
}

/// 32 characters of RFC 4648 base32 (any case, no padding): 160 bits.
fn base32_hash(id: &[u8]) -> Option<[u8; 20]> {
    let mut out = [0u8; 20];
    let (mut acc, mut bits, mut at) = (0u32, 0u32, 0usize);
    for &c in id {
        let v = match c.to_ascii_uppercase() {
            u @ b'A'..=b'Z' => u - b'A',
            d @ b'2'..=b'7' => d - b'2' + 26,
            _ => return None,
        };
        acc = (acc << 5) | u32::from(v);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            *out.get_mut(at)? = (acc >> bits) as u8;
            at += 1;
            acc &= (1 << bits) - 1;
        }
    }
    (at == 20).then_some(out)
}

/// Percent-decodes `s`; `None` for a `%` not followed by two hex digits.
/// With `plus`, `+` is a space.
fn percent_decode(s: &str, plus: bool) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        match c {
            b'%' => {
                let digit = |at: usize| b.get(at).and_then(|d| char::from(*d).to_digit(16));
                out.push((digit(i + 1)? * 16 + digit(i + 2)?) as u8);
                i += 3;
            }
            b'+' if plus => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    Some(out)
}

/// Appends `s` percent-encoded but for RFC 3986's unreserved characters.
fn percent_encode(out: &mut String, s: &str) {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(DIGITS[usize::from(b >> 4)]));
            out.push(char::from(DIGITS[usize::from(b & 15)]));
        }
    }
}

/// A display name: invalid UTF-8 and control characters replaced; empty
/// means none.
fn clean_name(b: &[u8]) -> Option<String> {
    let name: String = String::from_utf8_lossy(b)
        .chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect();
    (!name.is_empty()).then_some(name)
}

/// A tracker we can announce to: a scheme we speak, a host, and nothing
/// that cannot go into a request line.
fn usable_tracker(url: &str) -> bool {
    let scheme_ok = url.split_once("://").is_some_and(|(scheme, _)| {
        ["http", "https", "udp"]
            .iter()
            .any(|s| scheme.eq_ignore_ascii_case(s))
    });
    scheme_ok
        && !url.bytes().any(|b| b.is_ascii_control() || b == b' ')
        && Tracker::parse(url).is_some()
}

/// Whether an address could be a peer at all.
fn usable_peer(a: &SocketAddr) -> bool {
    let ip_ok = match a.ip() {
        IpAddr::V4(ip) => !ip.is_unspecified() && !ip.is_multicast() && !ip.is_broadcast(),
        IpAddr::V6(ip) => !ip.is_unspecified() && !ip.is_multicast(),
    };
    ip_ok && a.port() != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "c12fe1c06bba254a9dc9f519b335aa7c1367a88a";

    fn hash() -> [u8; 20] {
        parse_hash(HEX.as_bytes()).unwrap()
    }

    fn parse(s: &str) -> Result<Magnet, MagnetError> {
        Magnet::parse(s)
    }

    #[test]
    fn a_typical_link() {
        let m = parse(&format!(
            "magnet:?xt=urn:btih:{HEX}&dn=Big+Buck%20Bunny\
             &tr=udp%3A%2F%2Ftracker.example.org%3A1337%2Fannounce\
             &tr=https://t.example.net/announce?passkey=a+b\
             &x.pe=10.0.0.1:6881&x.pe=[2001:db8::1]:51413&ws=http://seed/"
        ))
        .unwrap();
        assert_eq!(m.info_hash, hash());
        assert_eq!(m.name.as_deref(), Some("Big Buck Bunny"));
        assert_eq!(
            m.trackers,
            vec![
                "udp://tracker.example.org:1337/announce",
                "https://t.example.net/announce?passkey=a+b"
            ]
        );
        assert_eq!(
            m.peers,
            vec![
                "10.0.0.1:6881".parse::<SocketAddr>().unwrap(),
                "[2001:db8::1]:51413".parse().unwrap()
            ]
        );
        assert_eq!(parse(&m.to_uri()).unwrap(), m);
    }

    #[test]
    fn hex_and_base32_in_any_case() {
        for xt in [
            HEX.to_string(),
            HEX.to_uppercase(),
            // RFC 4648 base32 of the same 20 bytes.
            "YEX6DQDLXISUVHOJ6UM3GNNKPQJWPKEK".to_string(),
            "yex6dqdlxisuvhoj6um3gnnkpqjwpkek".to_string(),
        ] {
            let m = parse(&format!("magnet:?xt=urn:btih:{xt}")).unwrap();
            assert_eq!(m.info_hash, hash(), "{xt}");
            assert_eq!((m.name, m.trackers.len(), m.peers.len()), (None, 0, 0));
        }
        // Scheme, urn prefix and keys in any case; a numbered key; escapes
        // in xt.
        let m = parse(&format!("MAGNET:?XT.1=URN:BTIH:{HEX}&DN.2=x")).unwrap();
        assert_eq!((m.info_hash, m.name.as_deref()), (hash(), Some("x")));
        let m = parse(&format!("magnet:?xt=urn%3Abtih%3A{HEX}")).unwrap();
        assert_eq!(m.info_hash, hash());
        assert_eq!(
            parse(&format!("  magnet:?xt=urn:btih:{HEX}\n"))
                .unwrap()
                .info_hash,
            hash()
        );
    }

    #[test]
    fn base32_decodes_bit_for_bit() {
        assert_eq!(base32_hash(&[b'A'; 32]), Some([0; 20]));
        assert_eq!(base32_hash(&[b'7'; 32]), Some([0xff; 20]));
        assert_eq!(base32_hash(b"77777777777777777777777777777771"), None);
        let mut one = [b'A'; 32];
        one[31] = b'B';
        let mut want = [0u8; 20];
        want[19] = 1;
        assert_eq!(base32_hash(&one), Some(want));
    }

    #[test]
    fn refusals_name_their_reason() {
        let cases: Vec<(String, MagnetError)> = vec![
            (
                "http://example.com/?xt=urn:btih:x".into(),
                MagnetError::NotMagnet,
            ),
            ("magnet:xt=urn:btih:x".into(), MagnetError::NotMagnet),
            ("magnet".into(), MagnetError::NotMagnet),
            ("".into(), MagnetError::NotMagnet),
            ("magnet:?dn=x&tr=udp://t:1".into(), MagnetError::NoInfoHash),
            ("magnet:?".into(), MagnetError::NoInfoHash),
            (
                format!("magnet:?xt=urn:btmh:1220{}", "ab".repeat(32)),
                MagnetError::V2Only,
            ),
            (
                "magnet:?xt=urn:ed2k:31D6CFE0D16AE931B73C59D7E0C089C0".into(),
                MagnetError::UnknownNamespace("urn:ed2k".into()),
            ),
            (
                "magnet:?xt=http://x".into(),
                MagnetError::UnknownNamespace("http://x".into()),
            ),
            (
                format!("magnet:?xt=urn:btih:{HEX}&xt=urn:btih:{}", "0".repeat(40)),
                MagnetError::TwoInfoHashes,
            ),
            (
                format!("magnet:?xt=urn:btih:{}", "g".repeat(40)),
                MagnetError::BadInfoHash("not 40 hexadecimal digits"),
            ),
            (
                format!("magnet:?xt=urn:btih:{}", "1".repeat(32)),
                MagnetError::BadInfoHash("not 32 base32 characters"),
            ),
            (
                format!("magnet:?xt=urn:btih:{}", &HEX[..39]),
                MagnetError::BadInfoHash("not 40 hex digits or 32 base32 characters"),
            ),
            (
                "magnet:?xt=urn:btih:".into(),
                MagnetError::BadInfoHash("not 40 hex digits or 32 base32 characters"),
            ),
            (
                format!("magnet:?xt=urn:btih:{HEX}%2"),
                MagnetError::BadEscape("xt"),
            ),
            (
                format!("magnet:?xt=urn:btih:{HEX}%zz"),
                MagnetError::BadEscape("xt"),
            ),
        ];
        for (uri, want) in cases {
            assert_eq!(parse(&uri), Err(want.clone()), "{uri}");
            assert!(!want.to_string().is_empty());
        }
        assert_eq!(
            MagnetError::V2Only.to_string(),
            "BitTorrent v2 (btmh) magnets are not supported"
        );
        let long = format!("magnet:?xt=urn:btih:{HEX}&dn={}", "a".repeat(MAX_URI_LEN));
        assert_eq!(parse(&long), Err(MagnetError::TooLong { len: long.len() }));
    }

    #[test]
    fn hybrids_duplicates_and_foreign_topics() {
        let btmh = format!("urn:btmh:1220{}", "cd".repeat(32));
        for uri in [
            format!("magnet:?xt={btmh}&xt=urn:btih:{HEX}"),
            format!("magnet:?xt=urn:btih:{HEX}&xt={btmh}"),
            format!(
                "magnet:?xt=urn:btih:{HEX}&xt=urn:btih:{}",
                HEX.to_uppercase()
            ),
            format!("magnet:?xt=urn:ed2k:abc&xt=urn:btih:{HEX}&xt=urn:sha1:xyz"),
            format!("magnet:?xt=urn:btmh:garbage&xt=urn:btih:{HEX}"),
        ] {
            assert_eq!(parse(&uri).unwrap().info_hash, hash(), "{uri}");
        }
        // Without a btih, the btmh is the reason given, over a foreign topic.
        assert_eq!(
            parse(&format!("magnet:?xt=urn:sha1:x&xt={btmh}")),
            Err(MagnetError::V2Only)
        );
    }

    #[test]
    fn the_last_name_wins_and_names_are_cleaned() {
        let base = format!("magnet:?xt=urn:btih:{HEX}");
        let name = |q: &str| parse(&format!("{base}&{q}")).unwrap().name;
        assert_eq!(name("dn=first&dn=second").as_deref(), Some("second"));
        assert_eq!(name("dn=a%2Bb+c").as_deref(), Some("a+b c"));
        assert_eq!(name("dn=%E2%9C%93%FF").as_deref(), Some("\u{2713}\u{fffd}"));
        assert_eq!(name("dn=a%0Ab%00").as_deref(), Some("a\u{fffd}b\u{fffd}"));
        assert_eq!(name("dn="), None);
        // A bad escape drops that dn only.
        assert_eq!(name("dn=good&dn=bad%2"), Some("good".into()));
        assert_eq!(name("dn"), None, "no '=': ignored");
    }

    #[test]
    fn trackers_are_filtered_deduplicated_and_bounded() {
        let base = format!("magnet:?xt=urn:btih:{HEX}");
        let trackers = |q: &str| parse(&format!("{base}&{q}")).unwrap().trackers;
        assert_eq!(
            trackers(
                "tr=wss://tracker.webtorrent.dev&tr=udp://a:1/announce&tr=ftp://x/\
                 &tr=http://&tr=not a url&tr=udp://a:1/announce&tr.1=HTTP://b/ann\
                 &tr=http://c/%zz&tr=http://c/%20x&tr=http://d/%FF&tr=udp://e:x/"
            ),
            vec!["udp://a:1/announce", "HTTP://b/ann"]
        );
        let many: Vec<String> = (0..100)
            .map(|i| format!("tr=http://t{i}.example/announce"))
            .collect();
        let t = trackers(&many.join("&"));
        assert_eq!(t.len(), MAX_TRACKERS);
        assert_eq!(t[0], "http://t0.example/announce");
        assert_eq!(t[MAX_TRACKERS - 1], "http://t63.example/announce");
    }

    #[test]
    fn bad_peers_are_skipped() {
        let base = format!("magnet:?xt=urn:btih:{HEX}");
        let peers = |q: &str| parse(&format!("{base}&{q}")).unwrap().peers;
        let p = peers(
            "x.pe=1.2.3.4:1&x.pe=1.2.3.4:0&x.pe=0.0.0.0:5&x.pe=224.0.0.1:5\
             &x.pe=255.255.255.255:5&x.pe=host.example:80&x.pe=1.2.3.4\
             &x.pe=1.2.3.4:65536&x.pe=[::1]:7&x.pe=::1:7&x.pe=[fe80::1%252]:7\
             &x.pe=%5B2001:db8::5%5D:9&x.pe=[::ffff:1.2.3.4]:1&x.pe=1.2.3.4:1\
             &x.pe=[ff02::1]:5&x.pe=%zz",
        );
        let want: Vec<SocketAddr> = ["1.2.3.4:1", "[::1]:7", "[2001:db8::5]:9"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(p, want);
        let many: Vec<String> = (0..100).map(|i| format!("x.pe=10.0.0.{i}:1")).collect();
        assert_eq!(peers(&many.join("&")).len(), MAX_PEERS);
    }

    #[test]
    fn written_links_are_exact_and_read_back() {
        let m = Magnet {
            info_hash: hash(),
            name: Some("a b/ü&=+".into()),
            trackers: vec!["udp://t.example:80/announce?x=1&y=2".into()],
            peers: vec![
                "[2001:db8::1]:80".parse().unwrap(),
                "1.2.3.4:5".parse().unwrap(),
            ],
        };
        assert_eq!(
            m.to_uri(),
            format!(
                "magnet:?xt=urn:btih:{HEX}&dn=a%20b%2F%C3%BC%26%3D%2B\
                 &tr=udp%3A%2F%2Ft.example%3A80%2Fannounce%3Fx%3D1%26y%3D2\
                 &x.pe=[2001:db8::1]:80&x.pe=1.2.3.4:5"
            )
        );
        assert_eq!(parse(&m.to_uri()).unwrap(), m);
        let bare = Magnet {
            info_hash: [0xab; 20],
            name: None,
            trackers: vec![],
            peers: vec![],
        };
        assert_eq!(
            bare.to_uri(),
            format!("magnet:?xt=urn:btih:{}", "ab".repeat(20))
        );
        assert_eq!(parse(&bare.to_uri()).unwrap(), bare);
    }

    #[test]
    fn unknown_keys_and_empty_parts_are_ignored() {
        let m = parse(&format!(
            "magnet:?&&xt=urn:btih:{HEX}&&so=0,2-4&ws=http://w/&kt=a+b&xl=123&=x&tr.x=udp://a:1"
        ))
        .unwrap();
        assert_eq!(m.info_hash, hash());
        assert!(m.trackers.is_empty(), "tr.x is not tr");
    }
}
