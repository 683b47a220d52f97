//! 160-bit node ids, the XOR metric, and BEP 42's ids derived from the
//! node's external address.

use std::fmt;
use std::net::IpAddr;

/// Bytes in a node id or an info hash.
pub const ID_LEN: usize = 20;

/// Bits in a node id.
pub const ID_BITS: usize = ID_LEN * 8;

/// A node id, or an info hash: both live in the same 160-bit space.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct NodeId(pub [u8; ID_LEN]);

/// The XOR distance between two ids; compares as a 160-bit big-endian
/// number, so smaller is closer.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub struct Distance(pub [u8; ID_LEN]);

impl Distance {
    /// The greatest distance: sorts after every real one (an entry whose
    /// id is not known yet, such as a bootstrap node).
    pub const MAX: Distance = Distance([0xff; ID_LEN]);
}

impl NodeId {
    /// The id from a slice of exactly [`ID_LEN`] bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<NodeId> {
        bytes.try_into().ok().map(NodeId)
    }

    /// A uniformly random id.
    pub fn random(rng: &mut fastrand::Rng) -> NodeId {
        let mut id = [0u8; ID_LEN];
        rng.fill(&mut id);
        NodeId(id)
    }

    /// The XOR distance to `other`.
    pub fn distance(&self, other: &NodeId) -> Distance {
        // Two wide XORs rather than a loop of 20: this runs for every
        // candidate of every lookup and every node of every answer.
        let (a_hi, a_lo) = self.halves();
        let (b_hi, b_lo) = other.halves();
        let mut d = [0u8; ID_LEN];
        d[..16].copy_from_slice(&(a_hi ^ b_hi).to_be_bytes());
        d[16..].copy_from_slice(&(a_lo ^ b_lo).to_be_bytes());
        Distance(d)
    }

    fn halves(&self) -> (u128, u32) {
        let [a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15, b0, b1, b2, b3] =
            self.0;
        (
            u128::from_be_bytes([
                a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15,
            ]),
            u32::from_be_bytes([b0, b1, b2, b3]),
        )
    }

    /// Bit `i`, counted from the most significant bit of the first byte.
    /// Bits past the end read as 0.
    pub fn bit(&self, i: usize) -> bool {
        self.0
            .get(i / 8)
            .is_some_and(|b| b & (0x80 >> (i % 8)) != 0)
    }

    /// How many leading bits `self` and `other` share (160 when equal).
    pub fn common_prefix(&self, other: &NodeId) -> usize {
        for (i, (a, b)) in self.0.iter().zip(other.0.iter()).enumerate() {
            let x = a ^ b;
            if x != 0 {
                return i * 8 + x.leading_zeros() as usize;
            }
        }
        ID_BITS
    }

    /// A random id sharing exactly the first `bits` bits with `self` and
    /// differing at bit `bits` (so it falls in the bucket of ids at that
    /// prefix length). With `bits >= 160`, `self`.
    pub fn random_at_prefix(&self, bits: usize, rng: &mut fastrand::Rng) -> NodeId {
        if bits >= ID_BITS {
            return *self;
        }
        let mut id = NodeId::random(rng);
        for i in 0..bits {
            set_bit(&mut id, i, self.bit(i));
        }
        set_bit(&mut id, bits, !self.bit(bits));
        id
    }

    /// An id for a node whose external address is `ip` (BEP 42): the
    /// first 21 bits come from a CRC32-C of the masked address and three
    /// random bits, which also sit in the last byte; the rest is random.
    pub fn for_ip(ip: IpAddr, rng: &mut fastrand::Rng) -> NodeId {
        let mut id = NodeId::random(rng);
        let crc = bep42_crc(ip, id.0[19]);
        id.0[0] = (crc >> 24) as u8;
        id.0[1] = (crc >> 16) as u8;
        id.0[2] = ((crc >> 8) as u8 & 0xf8) | (id.0[2] & 0x07);
        id
    }

    /// Whether this id is one BEP 42 allows a node at `ip` to use.
    /// Local addresses (loopback, private, link-local) pass: BEP 42
    /// exempts them, as their nodes cannot know their external address.
    pub fn matches_ip(&self, ip: IpAddr) -> bool {
        if is_local(ip) {
            return true;
        }
        let crc = bep42_crc(ip, self.0[19]);
        self.0[0] == (crc >> 24) as u8
            && self.0[1] == (crc >> 16) as u8
            && self.0[2] & 0xf8 == (crc >> 8) as u8 & 0xf8
    }
}

fn set_bit(id: &mut NodeId, i: usize, on: bool) {
    if let Some(b) = id.0.get_mut(i / 8) {
        let mask = 0x80 >> (i % 8);
        if on {
            *b |= mask;
        } else {
            *b &= !mask;
        }
    }
}

/// BEP 42's CRC: the address masked (4 bytes of IPv4, the first 8 of
/// IPv6), the three low bits of `rand` in its top bits.
fn bep42_crc(ip: IpAddr, rand: u8) -> u32 {
    let r = rand & 0x07;
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let mut b = v4.octets();
            for (x, m) in b.iter_mut().zip([0x03, 0x0f, 0x3f, 0xff]) {
                *x &= m;
            }
            b[0] |= r << 5;
            crc32c(&b)
        }
        IpAddr::V6(v6) => {
            let o = v6.octets();
            let mut b = [0u8; 8];
            let masks = [0x01, 0x03, 0x07, 0x0f, 0x1f, 0x3f, 0x7f, 0xff];
            for ((x, src), m) in b.iter_mut().zip(o.iter()).zip(masks) {
                *x = src & m;
            }
            b[0] |= r << 5;
            crc32c(&b)
        }
    }
}

/// CRC32-C (Castagnoli), bit by bit: it runs on 4 or 8 bytes, rarely.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Whether `ip` is an address only reachable locally: loopback, private
/// (RFC 1918, IPv6 unique local), link-local, or the shared CGNAT range.
/// BEP 42 does not apply to these, and a vote naming one is no use as an
/// external address.
pub fn is_local(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || (o[0] == 100 && o[1] & 0xc0 == 64)
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            v6.is_loopback() || s[0] & 0xfe00 == 0xfc00 || s[0] & 0xffc0 == 0xfe80
        }
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..6] {
            write!(f, "{b:02x}")?;
        }
        f.write_str("…")
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn bep42_test_vectors_match_and_derived_ids_verify() {
        // BEP 42's table: IP, rand, and the id's first 3 bytes and last.
        let vectors = [
            ("124.31.75.21", 1u8, "5fbfbf"),
            ("21.75.31.124", 86, "5a3ce9"),
            ("65.23.51.170", 22, "a5d432"),
            ("84.124.73.14", 65, "1b0321"),
            ("43.213.53.83", 90, "e56f6c"),
        ];
        let mut rng = fastrand::Rng::with_seed(1);
        for (ip, rand, prefix) in vectors {
            let ip: IpAddr = ip.parse().unwrap();
            let crc = bep42_crc(ip, rand);
            let want = hex(prefix);
            assert_eq!((crc >> 24) as u8, want[0], "{ip}");
            assert_eq!((crc >> 16) as u8, want[1], "{ip}");
            assert_eq!((crc >> 8) as u8 & 0xf8, want[2] & 0xf8, "{ip}");
            let mut id = NodeId::random(&mut rng);
            id.0[0] = want[0];
            id.0[1] = want[1];
            id.0[2] = want[2];
            id.0[19] = rand;
            assert!(id.matches_ip(ip));
            id.0[19] = rand ^ 1;
            assert!(!id.matches_ip(ip), "another rand, another prefix");
            let derived = NodeId::for_ip(ip, &mut rng);
            assert!(derived.matches_ip(ip));
            assert!(!derived.matches_ip("8.8.8.8".parse().unwrap()));
        }
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert!(NodeId::for_ip(v6, &mut rng).matches_ip(v6));
        let lan: IpAddr = "192.168.1.2".parse().unwrap();
        assert!(
            NodeId([0; 20]).matches_ip(lan),
            "local addresses are exempt"
        );
    }

    #[test]
    fn distance_prefix_and_bits() {
        let a = NodeId([0; 20]);
        let mut b = a;
        b.0[2] = 0x10;
        assert_eq!(a.common_prefix(&b), 19);
        assert_eq!(a.common_prefix(&a), 160);
        assert!(b.bit(19) && !b.bit(18) && !b.bit(500));
        assert!(a.distance(&b) < Distance::MAX);
        let mut c = a;
        c.0[0] = 1;
        assert!(a.distance(&b) < a.distance(&c));
        let mut rng = fastrand::Rng::with_seed(3);
        for bits in [0, 1, 7, 8, 100, 159] {
            let r = b.random_at_prefix(bits, &mut rng);
            assert_eq!(r.common_prefix(&b), bits);
        }
        assert_eq!(b.random_at_prefix(160, &mut rng), b);
    }
}
