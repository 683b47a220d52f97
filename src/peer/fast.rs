//! The fast extension (BEP 6): the reserved bit and the canonical
//! allowed-fast set, as pure functions. Its five messages are variants of
//! [`super::wire::Message`]; the connection ([`super::conn`]) enforces
//! its rules.
//!
//! # Rules the connection must enforce once both sides set the bit
//!
//! - **Every request gets exactly one answer**, a piece or a
//!   `reject_request`, even after a cancel (the request may still be
//!   served) and across a choke: choking no longer discards requests
//!   silently, so on choking we send a `reject_request` for each queued
//!   request not in the peer's allowed-fast set, and a request arriving
//!   while we choke the peer is rejected unless its piece is allowed fast.
//!   Every request we will not serve (out of bandwidth, a piece we lack)
//!   is rejected too.
//! - **On our side**, a choke no longer drops our outstanding requests:
//!   they stay until answered by a piece or a reject. A reject for a block
//!   we never requested (or already had answered) closes the connection
//!   (BEP 6: SHOULD); a piece never requested closes it as today (MUST).
//! - **`have_all` / `have_none`** replace the bitfield: exactly one of
//!   bitfield, `have_all`, `have_none` comes first after the handshake
//!   (the BEP 10 handshake may come before it, as for the bitfield now);
//!   either of them later, or twice, closes the connection. We send
//!   `have_all` when seeding and `have_none` when we have nothing, instead
//!   of a bitfield (or of nothing, as now).
//! - **`allowed_fast`** means "ask for this piece even while choked". A
//!   piece index out of range closes the connection; the pieces are kept
//!   (at most [`MAX_ALLOWED_FAST`] per peer, the rest ignored) and the
//!   picker may request them while choked. It says nothing about whether
//!   the sender has the piece.
//! - **What we give**: [`allowed_fast_set`] of [`ALLOWED_FAST_COUNT`]
//!   pieces for the peer's address, sent (leaving out the pieces the peer
//!   has) once, when the peer first says it is interested, as libtorrent
//!   does (it saves messages for pieces the peer already has). We serve
//!   those pieces while choking, but only while the peer has fewer than
//!   [`ALLOWED_FAST_COUNT`] pieces (BEP 6: "a starting peer"); past that,
//!   requests for them are rejected like any other.
//! - **`suggest_piece`** is advice: an index out of range closes the
//!   connection; otherwise it may be ignored (the picker stays rarest
//!   first).
//! - Any of the five messages from a peer that did not set the bit closes
//!   the connection (BEP 6: MUST).

use std::net::IpAddr;

use sha1::{Digest, Sha1};

/// The byte of the handshake's reserved field that holds the bit.
pub const RESERVED_BYTE: usize = 7;
/// The fast extension's bit in [`RESERVED_BYTE`] (BEP 6:
/// `reserved[7] |= 0x04`).
pub const RESERVED_BIT: u8 = 0x04;

/// How many pieces we let a choked peer fetch: libtorrent's default
/// (`allowed_fast_set_size`). BEP 6 suggests 10, but every piece of the
/// set is upload given away without reciprocation to anyone who connects,
/// and 5 pieces are enough for a new peer to have something to trade.
pub const ALLOWED_FAST_COUNT: usize = 5;

/// The most allowed-fast pieces generated for, or kept from, one peer.
/// It bounds the work of [`allowed_fast_set`] and the memory a peer's
/// `allowed_fast` messages take; a peer offering more is generous, not
/// useful.
pub const MAX_ALLOWED_FAST: usize = 32;

/// SHA-1 rounds [`allowed_fast_set`] runs at most (each yields five
/// indices). With at most [`MAX_ALLOWED_FAST`] wanted out of more
/// pieces, a few dozen rounds suffice even for the smallest torrents;
/// this only makes the loop's end certain.
const MAX_ROUNDS: usize = 1024;

/// Sets the fast extension's bit in our handshake's reserved bytes.
pub fn set_reserved_bit(reserved: &mut [u8; 8]) {
    reserved[RESERVED_BYTE] |= RESERVED_BIT;
}

/// Whether a handshake's reserved bytes offer the fast extension (it is
/// on only when both handshakes do).
pub fn offers_fast(reserved: &[u8; 8]) -> bool {
    reserved[RESERVED_BYTE] & RESERVED_BIT != 0
}

/// The canonical allowed-fast set of BEP 6: the first `k` distinct
/// indices drawn from a SHA-1 chain seeded with the peer's address and
/// the info hash, for a torrent of `pieces` pieces. `k` is capped at
/// [`MAX_ALLOWED_FAST`]; when it reaches `pieces`, every piece is in the
/// set.
///
/// IPv4 addresses are masked to their /24, as BEP 6 gives it (so that a
/// peer with many addresses on one network gets one set). BEP 6 has no
/// provision for IPv6; libtorrent hashes the whole 16-byte address, and
/// so do we (a set for an IPv6 peer is what libtorrent would give it).
/// An IPv4-mapped IPv6 address counts as its IPv4 address, so a peer
/// has one set however a dual-stack socket reports it. (libtorrent today
/// hashes IPv4 addresses unmasked too: its sets differ from BEP 6's, which
/// is harmless, since only the sender computes the set.)
pub fn allowed_fast_set(ip: IpAddr, info_hash: &[u8; 20], pieces: u32, k: usize) -> Vec<u32> {
    let k = k.min(MAX_ALLOWED_FAST);
    if pieces as usize <= k {
        return (0..pieces).collect();
    }
    let mut x = match ip.to_canonical() {
        IpAddr::V4(v4) => (u32::from(v4) & 0xFFFF_FF00).to_be_bytes().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    x.extend_from_slice(info_hash);
    let mut set = Vec::with_capacity(k);
    for _ in 0..MAX_ROUNDS {
        let hash: [u8; 20] = Sha1::digest(&x).into();
        for word in hash.chunks_exact(4) {
            if set.len() >= k {
                return set;
            }
            let y = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
            let index = y % pieces;
            if !set.contains(&index) {
                set.push(index);
            }
        }
        x = hash.to_vec();
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn bep_6_test_vectors() {
        let ip = IpAddr::from([80, 4, 4, 200]);
        let hash = [0xaa; 20];
        assert_eq!(
            allowed_fast_set(ip, &hash, 1313, 7),
            vec![1059, 431, 808, 1217, 287, 376, 1188]
        );
        assert_eq!(
            allowed_fast_set(ip, &hash, 1313, 9),
            vec![1059, 431, 808, 1217, 287, 376, 1188, 353, 508]
        );
        // The /24 is what counts.
        assert_eq!(
            allowed_fast_set(IpAddr::from([80, 4, 4, 1]), &hash, 1313, 7),
            allowed_fast_set(ip, &hash, 1313, 7)
        );
        let mapped = IpAddr::V6(Ipv4Addr::new(80, 4, 4, 200).to_ipv6_mapped());
        assert_eq!(
            allowed_fast_set(mapped, &hash, 1313, 9),
            allowed_fast_set(ip, &hash, 1313, 9)
        );
        assert_ne!(
            allowed_fast_set(IpAddr::from([80, 4, 5, 200]), &hash, 1313, 7),
            allowed_fast_set(ip, &hash, 1313, 7)
        );
    }

    #[test]
    fn ipv6_hashes_the_whole_address() {
        let hash = [0x11; 20];
        let a: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let b: Ipv6Addr = "2001:db8::2".parse().unwrap();
        let mut seed = a.octets().to_vec();
        seed.extend_from_slice(&hash);
        let first: [u8; 20] = Sha1::digest(&seed).into();
        let want = u32::from_be_bytes([first[0], first[1], first[2], first[3]]) % 1000;
        let set = allowed_fast_set(IpAddr::V6(a), &hash, 1000, 5);
        assert_eq!(set.len(), 5);
        assert_eq!(set[0], want);
        assert_ne!(set, allowed_fast_set(IpAddr::V6(b), &hash, 1000, 5));
    }

    #[test]
    fn small_torrents_and_large_k_are_bounded() {
        let ip = IpAddr::from([10, 0, 0, 1]);
        let hash = [3; 20];
        assert_eq!(allowed_fast_set(ip, &hash, 0, 5), Vec::<u32>::new());
        assert_eq!(allowed_fast_set(ip, &hash, 3, 5), vec![0, 1, 2]);
        assert_eq!(allowed_fast_set(ip, &hash, 5, 5), vec![0, 1, 2, 3, 4]);
        let set = allowed_fast_set(ip, &hash, 6, 5);
        assert_eq!(set.len(), 5);
        assert!(set.iter().all(|i| *i < 6));
        let mut big = allowed_fast_set(ip, &hash, 40, 1_000_000);
        assert_eq!(big.len(), MAX_ALLOWED_FAST);
        big.sort_unstable();
        big.dedup();
        assert_eq!(big.len(), MAX_ALLOWED_FAST);
        assert_eq!(allowed_fast_set(ip, &hash, 1313, 0), Vec::<u32>::new());
    }

    #[test]
    fn the_reserved_bit() {
        let mut r = [0u8; 8];
        assert!(!offers_fast(&r));
        r[5] = 0x10; // BEP 10's bit is another one
        assert!(!offers_fast(&r));
        set_reserved_bit(&mut r);
        assert_eq!(r, [0, 0, 0, 0, 0, 0x10, 0, 0x04]);
        assert!(offers_fast(&r));
        assert!(offers_fast(&[0xff; 8]));
        assert!(!offers_fast(&[0, 0, 0, 0, 0, 0, 0, 0xfb]));
    }
}
