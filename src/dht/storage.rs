//! What the node keeps as a responder: peers announced to it per info
//! hash, with expiry and bounds, and the write tokens that make an
//! announce prove it comes from the address it names.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use sha1::{Digest, Sha1};

use super::id::NodeId;

/// An announced peer is forgotten after this (BEP 5 leaves it open;
/// libtorrent and jech/dht keep peers 30 minutes, and announcers
/// re-announce every 15 to 30).
pub const PEER_TTL: Duration = Duration::from_secs(30 * 60);

/// Most info hashes stored: libtorrent's `dht_max_torrents` default. A
/// node close to many popular hashes on the real DHT holds a few hundred.
pub const MAX_HASHES: usize = 2000;

/// Most peers stored per info hash. A reply carries at most
/// [`super::node::MAX_VALUES`], so more would only be a larger sample.
pub const MAX_PEERS_PER_HASH: usize = 256;

/// Most peers stored in all: about 600 KiB at the bound.
pub const MAX_PEERS: usize = 16_384;

/// The token secret changes this often; the previous one stays valid, so
/// a token is accepted 5 to 10 minutes after it was issued (BEP 5).
pub const TOKEN_ROTATION: Duration = Duration::from_secs(5 * 60);

/// Bytes of a token we issue: 64 bits cannot be guessed, and a short
/// token keeps replies small (libtorrent sends 4, jech/dht 8).
pub const TOKEN_LEN: usize = 8;

#[derive(Debug, Clone, Copy)]
struct Stored {
    addr: SocketAddr,
    at: Instant,
}

/// The store would exceed a bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

/// Peers announced to us, per info hash.
#[derive(Debug, Default)]
pub struct Storage {
    torrents: HashMap<NodeId, Vec<Stored>>,
    total: usize,
}

impl Storage {
    /// An empty store.
    pub fn new() -> Storage {
        Storage::default()
    }

    /// Whether an announce for `hash` could be stored now: the hash is
    /// known, or there is room for a new one. A `get_peers` for a hash we
    /// cannot take gets no token, so its announce goes to our neighbours
    /// (libtorrent's rule).
    pub fn can_store(&self, hash: &NodeId) -> bool {
        self.torrents.contains_key(hash)
            || (self.torrents.len() < MAX_HASHES && self.total < MAX_PEERS)
    }

    /// Stores (or refreshes) `addr` as a peer of `hash`. A hash at its
    /// bound drops its oldest peer for the new one.
    pub fn store(&mut self, hash: NodeId, addr: SocketAddr, now: Instant) -> Result<(), Full> {
        if let Some(peers) = self.torrents.get_mut(&hash) {
            if let Some(p) = peers.iter_mut().find(|p| p.addr == addr) {
                p.at = now;
                return Ok(());
            }
            if peers.len() >= MAX_PEERS_PER_HASH {
                if let Some(oldest) = peers.iter_mut().min_by_key(|p| p.at) {
                    *oldest = Stored { addr, at: now };
                }
                return Ok(());
            }
            if self.total >= MAX_PEERS {
                return Err(Full);
            }
            peers.push(Stored { addr, at: now });
            self.total += 1;
            return Ok(());
        }
        if !self.can_store(&hash) {
            return Err(Full);
        }
        self.torrents.insert(hash, vec![Stored { addr, at: now }]);
        self.total += 1;
        Ok(())
    }

    /// Up to `max` live peers of `hash` in the family of `v6`, from a
    /// random starting point so that repeated asks see different ones.
    pub fn peers(
        &self,
        hash: &NodeId,
        v6: bool,
        max: usize,
        now: Instant,
        rng: &mut fastrand::Rng,
    ) -> Vec<SocketAddr> {
        let Some(peers) = self.torrents.get(hash) else {
            return Vec::new();
        };
        let start = rng.usize(..peers.len().max(1));
        peers
            .iter()
            .cycle()
            .skip(start)
            .take(peers.len())
            .filter(|p| now.saturating_duration_since(p.at) < PEER_TTL)
            .filter(|p| p.addr.ip().to_canonical().is_ipv6() == v6)
            .map(|p| p.addr)
            .take(max)
            .collect()
    }

    /// Forgets peers older than [`PEER_TTL`], and hashes left with none.
    pub fn expire(&mut self, now: Instant) {
        let mut total = 0;
        self.torrents.retain(|_, peers| {
            peers.retain(|p| now.saturating_duration_since(p.at) < PEER_TTL);
            total += peers.len();
            !peers.is_empty()
        });
        self.total = total;
    }

    /// Info hashes stored.
    pub fn hashes(&self) -> usize {
        self.torrents.len()
    }

    /// Peers stored, all hashes together.
    pub fn len(&self) -> usize {
        self.total
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }
}

/// Write tokens: SHA-1(secret || ip), cut to [`TOKEN_LEN`], from a secret
/// replaced every [`TOKEN_ROTATION`], the previous one still accepted.
#[derive(Debug)]
pub struct Tokens {
    secret: [u8; 20],
    previous: [u8; 20],
    rotated: Instant,
}

impl Tokens {
    /// Fresh secrets at `now`.
    pub fn new(rng: &mut fastrand::Rng, now: Instant) -> Tokens {
        let mut t = Tokens {
            secret: [0; 20],
            previous: [0; 20],
            rotated: now,
        };
        rng.fill(&mut t.secret);
        rng.fill(&mut t.previous);
        t
    }

    /// Rotates as many times as are due by `now` (twice or more means
    /// both secrets are new).
    pub fn rotate(&mut self, now: Instant, rng: &mut fastrand::Rng) {
        let mut turns = 0;
        while now.saturating_duration_since(self.rotated) >= TOKEN_ROTATION && turns < 2 {
            self.previous = self.secret;
            rng.fill(&mut self.secret);
            self.rotated += TOKEN_ROTATION;
            turns += 1;
        }
        if now.saturating_duration_since(self.rotated) >= TOKEN_ROTATION {
            self.rotated = now;
        }
    }

    /// When the next rotation is due.
    pub fn next_rotation(&self) -> Instant {
        self.rotated + TOKEN_ROTATION
    }

    /// The token for a querier at `ip`.
    pub fn make(&mut self, ip: IpAddr, now: Instant, rng: &mut fastrand::Rng) -> Vec<u8> {
        self.rotate(now, rng);
        token(&self.secret, ip)
    }

    /// Whether `token` is one we issued to `ip` within the window.
    pub fn check(
        &mut self,
        token: &[u8],
        ip: IpAddr,
        now: Instant,
        rng: &mut fastrand::Rng,
    ) -> bool {
        self.rotate(now, rng);
        token == token_of(&self.secret, ip) || token == token_of(&self.previous, ip)
    }
}

fn token_of(secret: &[u8; 20], ip: IpAddr) -> [u8; TOKEN_LEN] {
    let mut h = Sha1::new();
    h.update(secret);
    match ip.to_canonical() {
        IpAddr::V4(v4) => h.update(v4.octets()),
        IpAddr::V6(v6) => h.update(v6.octets()),
    }
    let digest = h.finalize();
    let mut out = [0u8; TOKEN_LEN];
    out.copy_from_slice(&digest[..TOKEN_LEN]);
    out
}

fn token(secret: &[u8; 20], ip: IpAddr) -> Vec<u8> {
    token_of(secret, ip).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(n: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, (n >> 8) as u8, n as u8], 6881))
    }

    #[test]
    fn peers_expire_and_bounds_hold() {
        let t0 = Instant::now();
        let mut s = Storage::new();
        let mut rng = fastrand::Rng::with_seed(1);
        let h = NodeId([1; 20]);
        s.store(h, peer(1), t0).unwrap();
        s.store(h, peer(1), t0).unwrap();
        assert_eq!(s.len(), 1, "the same peer twice is one");
        assert_eq!(s.peers(&h, false, 10, t0, &mut rng), vec![peer(1)]);
        assert!(
            s.peers(&h, true, 10, t0, &mut rng).is_empty(),
            "other family"
        );
        let later = t0 + PEER_TTL;
        assert!(
            s.peers(&h, false, 10, later, &mut rng).is_empty(),
            "expired, even before the sweep"
        );
        s.expire(later);
        assert_eq!((s.hashes(), s.len()), (0, 0));
        // Per hash: the oldest makes room.
        for n in 0..MAX_PEERS_PER_HASH as u16 + 10 {
            s.store(h, peer(n), t0 + Duration::from_secs(n.into()))
                .unwrap();
        }
        assert_eq!(s.len(), MAX_PEERS_PER_HASH);
        assert!(!s.peers(&h, false, 1000, t0, &mut rng).contains(&peer(0)));
        assert_eq!(s.peers(&h, false, 50, t0, &mut rng).len(), 50);
        // Hashes: new ones are refused once full, known ones still taken.
        let mut s = Storage::new();
        for i in 0..MAX_HASHES {
            let mut id = NodeId([0; 20]);
            id.0[..8].copy_from_slice(&(i as u64).to_be_bytes());
            s.store(id, peer(1), t0).unwrap();
        }
        assert!(!s.can_store(&h));
        assert_eq!(s.store(h, peer(1), t0), Err(Full));
        assert!(s.can_store(&NodeId([0; 20])));
        s.store(NodeId([0; 20]), peer(2), t0).unwrap();
    }

    #[test]
    fn overall_peer_bound() {
        let t0 = Instant::now();
        let mut s = Storage::new();
        let per = MAX_PEERS_PER_HASH;
        let hashes = MAX_PEERS / per;
        for i in 0..hashes {
            for n in 0..per {
                s.store(NodeId([i as u8; 20]), peer(n as u16), t0).unwrap();
            }
        }
        assert_eq!(s.len(), MAX_PEERS);
        assert_eq!(s.store(NodeId([0xee; 20]), peer(1), t0), Err(Full));
        // Within a full hash the oldest is replaced, the total unchanged.
        s.store(NodeId([0; 20]), peer(9999), t0).unwrap();
        assert_eq!(s.len(), MAX_PEERS);
    }

    #[test]
    fn tokens_last_one_to_two_rotations() {
        let t0 = Instant::now();
        let mut rng = fastrand::Rng::with_seed(2);
        let mut t = Tokens::new(&mut rng, t0);
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        let other: IpAddr = "10.1.2.4".parse().unwrap();
        let tok = t.make(ip, t0, &mut rng);
        assert_eq!(tok.len(), TOKEN_LEN);
        assert!(t.check(&tok, ip, t0, &mut rng));
        assert!(!t.check(&tok, other, t0, &mut rng), "bound to the address");
        let min = |m: u64| t0 + Duration::from_secs(60 * m);
        assert!(t.check(&tok, ip, min(9), &mut rng));
        assert!(!t.check(&tok, ip, min(11), &mut rng));
        // Issued just before a rotation: good for a little over 5 minutes.
        let tok = t.make(ip, min(14), &mut rng);
        assert!(t.check(&tok, ip, min(19), &mut rng));
        assert!(!t.check(&tok, ip, min(21), &mut rng));
        // A long sleep invalidates everything at once.
        let tok = t.make(ip, min(21), &mut rng);
        assert!(!t.check(&tok, ip, min(300), &mut rng));
        assert!(t.next_rotation() > min(300));
    }
}
