//! Who sent bad data: the one owner of the bad-piece bookkeeping. A piece
//! on its way to the hash check remembers the addresses that sent its
//! blocks; a piece that fails strikes each of them for that torrent; an
//! address struck [`MAX_STRIKES`] times is banned for the session, from
//! every torrent.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

/// Strikes (pieces that failed their hash with a block from this address)
/// before an address is banned for the session.
pub const MAX_STRIKES: u8 = 3;

/// What a ban applies to: the whole IP address, except on loopback, where
/// every local peer shares one address (local swarms, tests) and the full
/// socket address is banned instead.
pub fn ban_key(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_loopback() {
        addr
    } else {
        SocketAddr::new(addr.ip(), 0)
    }
}

/// Pieces under check with their senders, strikes, bans.
#[derive(Debug, Default)]
pub struct Suspects {
    /// (torrent, piece) at the hash check: the ban keys that sent it.
    checking: HashMap<(u64, u32), Vec<SocketAddr>>,
    /// (torrent, ban key): pieces failed.
    strikes: HashMap<(u64, SocketAddr), u8>,
    banned: HashSet<SocketAddr>,
}

impl Suspects {
    /// Whether `addr` is banned.
    pub fn is_banned(&self, addr: SocketAddr) -> bool {
        self.banned.contains(&ban_key(addr))
    }

    /// Piece `piece` of `torrent` goes to the hash check; `senders` sent
    /// its blocks.
    pub fn checking(&mut self, torrent: u64, piece: u32, senders: &[SocketAddr]) {
        let keys = senders.iter().map(|a| ban_key(*a)).collect();
        self.checking.insert((torrent, piece), keys);
    }

    /// The check of `piece` ended; if it failed (`good` false) its senders
    /// are struck. Returns the addresses banned by it.
    pub fn checked(&mut self, torrent: u64, piece: u32, good: bool) -> Vec<SocketAddr> {
        let senders = self.checking.remove(&(torrent, piece)).unwrap_or_default();
        if good {
            return Vec::new();
        }
        let mut banned = Vec::new();
        for who in senders {
            let strikes = self.strikes.entry((torrent, who)).or_insert(0);
            *strikes = strikes.saturating_add(1);
            if *strikes >= MAX_STRIKES && self.banned.insert(who) {
                log::info!("banning {who}: {MAX_STRIKES} pieces failed their hash with its data");
                banned.push(who);
            }
        }
        banned
    }

    /// The check of `piece` will not report (its session stopped).
    pub fn forget_torrent(&mut self, torrent: u64) {
        self.checking.retain(|(t, _), _| *t != torrent);
        self.strikes.retain(|(t, _), _| *t != torrent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_failed_pieces_ban_their_sender_and_good_ones_strike_nobody() {
        let a: SocketAddr = "10.0.0.1:6881".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:6881".parse().unwrap();
        let mut s = Suspects::default();
        for piece in 0..2 {
            s.checking(1, piece, &[a, b]);
            assert!(s.checked(1, piece, false).is_empty());
        }
        s.checking(1, 2, &[b]);
        assert!(
            s.checked(1, 2, true).is_empty(),
            "a good piece strikes nobody"
        );
        s.checking(1, 3, &[a]);
        assert_eq!(s.checked(1, 3, false), vec![ban_key(a)]);
        assert!(
            s.is_banned("10.0.0.1:9999".parse().unwrap()),
            "the whole address"
        );
        assert!(!s.is_banned(b));
        // Strikes are per torrent; a stopped torrent's are forgotten.
        s.checking(2, 0, &[b]);
        s.forget_torrent(2);
        assert!(s.checked(2, 0, false).is_empty());
    }

    #[test]
    fn loopback_bans_are_per_socket_address() {
        let a: SocketAddr = "127.0.0.1:1000".parse().unwrap();
        let mut s = Suspects::default();
        for piece in 0..3 {
            s.checking(1, piece, &[a]);
            s.checked(1, piece, false);
        }
        assert!(s.is_banned(a));
        assert!(!s.is_banned("127.0.0.1:1001".parse().unwrap()));
    }
}
