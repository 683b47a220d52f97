//! Choking: which interested peers we upload to (BEP 3 tit-for-tat).

use std::time::{Duration, Instant};

use super::picker::PeerKey;

/// Regular unchoke slots.
pub const REGULAR_SLOTS: usize = 4;
/// How often the regular slots are recomputed.
pub const RECHOKE_INTERVAL: Duration = Duration::from_secs(10);
/// How often the optimistic slot moves on.
pub const OPTIMISTIC_INTERVAL: Duration = Duration::from_secs(30);
/// Peers connected for less than this get a better optimistic chance, since
/// they have nothing to trade yet.
pub const NEW_PEER_AGE: Duration = Duration::from_secs(60);
/// Weight of a new peer in the optimistic draw.
const NEW_PEER_WEIGHT: u64 = 3;

/// What the choker needs to know about one peer.
#[derive(Clone, Debug)]
pub struct PeerChokeInfo {
    /// Peer identity.
    pub key: PeerKey,
    /// The peer is interested in our pieces.
    pub interested: bool,
    /// The peer has every piece.
    pub is_seed: bool,
    /// Bytes/s we receive from the peer.
    pub download_rate: f64,
    /// Bytes/s we send to the peer.
    pub upload_rate: f64,
    /// When the connection was established.
    pub connected_at: Instant,
    /// Whether we currently unchoke the peer.
    pub unchoked: bool,
}

/// Periodic choke/unchoke decisions.
#[derive(Debug)]
pub struct Choker {
    next_rechoke: Instant,
    next_optimistic: Instant,
    optimistic: Option<PeerKey>,
    forced: bool,
    /// When the last rechoke ran (a forced rechoke is due since then).
    last: Instant,
}

impl Choker {
    /// A choker whose first rechoke is due at `now`.
    pub fn new(now: Instant) -> Self {
        Choker {
            next_rechoke: now,
            next_optimistic: now,
            optimistic: None,
            forced: true,
            last: now,
        }
    }

    /// When `rechoke` should next be called. With `force` pending this is
    /// the previous deadline, i.e. already due.
    pub fn poll_timeout(&self) -> Instant {
        if self.forced {
            self.last
        } else {
            self.next_rechoke
        }
    }

    /// Rechoke on the next call regardless of the timer (peer joined or
    /// left, interest changed).
    pub fn force(&mut self) {
        self.forced = true;
    }

    /// The current optimistic unchoke, if any.
    pub fn optimistic(&self) -> Option<PeerKey> {
        self.optimistic
    }

    /// Recomputes the unchoke set if due; returns only the peers whose state
    /// changes, as `(peer, unchoke)`.
    pub fn rechoke(
        &mut self,
        peers: &[PeerChokeInfo],
        seeding: bool,
        now: Instant,
        rng: &mut fastrand::Rng,
    ) -> Vec<(PeerKey, bool)> {
        if !self.forced && now < self.next_rechoke {
            return Vec::new();
        }
        self.forced = false;
        self.last = now;
        self.next_rechoke = now + RECHOKE_INTERVAL;

        // Uploading to a seed is pointless while we seed; while leeching a
        // seed is never interested anyway.
        let eligible = |p: &&PeerChokeInfo| p.interested && !(seeding && p.is_seed);
        let rate = |p: &PeerChokeInfo| {
            if seeding {
                p.upload_rate
            } else {
                p.download_rate
            }
        };
        let mut ranked: Vec<&PeerChokeInfo> = peers.iter().filter(eligible).collect();
        // Deterministic order among equal rates; NaN rates sort last.
        ranked.sort_by(|a, b| {
            rate(b)
                .partial_cmp(&rate(a))
                .unwrap_or_else(|| rate(a).is_nan().cmp(&rate(b).is_nan()))
                .then(a.key.cmp(&b.key))
        });
        let regular: Vec<PeerKey> = ranked.iter().take(REGULAR_SLOTS).map(|p| p.key).collect();

        let current_ok = self
            .optimistic
            .is_some_and(|k| ranked.iter().any(|p| p.key == k) && !regular.contains(&k));
        if !current_ok || now >= self.next_optimistic {
            let pool: Vec<&&PeerChokeInfo> = ranked
                .iter()
                .filter(|p| !regular.contains(&p.key) && Some(p.key) != self.optimistic)
                .collect();
            let weight = |p: &PeerChokeInfo| {
                if now.saturating_duration_since(p.connected_at) < NEW_PEER_AGE {
                    NEW_PEER_WEIGHT
                } else {
                    1
                }
            };
            let total: u64 = pool.iter().map(|p| weight(p)).sum();
            if total > 0 {
                let mut r = rng.u64(..total);
                for p in &pool {
                    let w = weight(p);
                    if r < w {
                        self.optimistic = Some(p.key);
                        break;
                    }
                    r -= w;
                }
                self.next_optimistic = now + OPTIMISTIC_INTERVAL;
            } else if !current_ok {
                self.optimistic = None;
            }
        }

        peers
            .iter()
            .filter_map(|p| {
                let want = regular.contains(&p.key) || Some(p.key) == self.optimistic;
                (want != p.unchoked).then_some((p.key, want))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(k: usize, down: f64, base: Instant) -> PeerChokeInfo {
        PeerChokeInfo {
            key: PeerKey(k),
            interested: true,
            is_seed: false,
            download_rate: down,
            upload_rate: 0.0,
            connected_at: base,
            unchoked: false,
        }
    }

    /// Applies changes to the peer list, as the engine would.
    fn apply(peers: &mut [PeerChokeInfo], changes: &[(PeerKey, bool)]) {
        for (k, u) in changes {
            if let Some(p) = peers.iter_mut().find(|p| p.key == *k) {
                p.unchoked = *u;
            }
        }
    }

    fn unchoked(peers: &[PeerChokeInfo]) -> Vec<usize> {
        peers
            .iter()
            .filter(|p| p.unchoked)
            .map(|p| p.key.0)
            .collect()
    }

    #[test]
    fn top_four_by_download_plus_optimistic() {
        let base = Instant::now();
        let now = base + Duration::from_secs(100);
        let mut peers: Vec<_> = (0..8).map(|k| peer(k, k as f64 * 10.0, base)).collect();
        peers[7].interested = false;
        let mut c = Choker::new(now);
        let mut rng = fastrand::Rng::with_seed(0);
        let ch = c.rechoke(&peers, false, now, &mut rng);
        apply(&mut peers, &ch);
        let u = unchoked(&peers);
        assert_eq!(u.len(), 5);
        for k in [3, 4, 5, 6] {
            assert!(u.contains(&k));
        }
        let opt = c.optimistic().unwrap().0;
        assert!(opt < 3);
        assert!(!u.contains(&7));
        // Changes only: nothing new when rechoked again without change.
        c.force();
        assert!(c.rechoke(&peers, false, now, &mut rng).is_empty());
    }

    #[test]
    fn timer_and_force() {
        let base = Instant::now();
        let mut peers: Vec<_> = (0..3).map(|k| peer(k, 1.0, base)).collect();
        let mut c = Choker::new(base);
        let mut rng = fastrand::Rng::with_seed(0);
        let ch = c.rechoke(&peers, false, base, &mut rng);
        apply(&mut peers, &ch);
        assert_eq!(c.poll_timeout(), base + RECHOKE_INTERVAL);
        peers.push(peer(9, 100.0, base));
        let t = base + Duration::from_secs(5);
        assert!(c.rechoke(&peers, false, t, &mut rng).is_empty());
        c.force();
        let ch = c.rechoke(&peers, false, t, &mut rng);
        assert_eq!(ch, vec![(PeerKey(9), true)]);
        apply(&mut peers, &ch);
        // Peer 0 stops being interested: choked at the next interval.
        peers[0].interested = false;
        let ch = c.rechoke(&peers, false, t + RECHOKE_INTERVAL, &mut rng);
        assert_eq!(ch, vec![(PeerKey(0), false)]);
    }

    #[test]
    fn seeding_uses_upload_rate_and_skips_seeds() {
        let base = Instant::now();
        let now = base + Duration::from_secs(100);
        let mut peers: Vec<_> = (0..7)
            .map(|k| {
                let mut p = peer(k, 1000.0 - k as f64, base);
                p.upload_rate = k as f64;
                p
            })
            .collect();
        peers[6].is_seed = true;
        let mut c = Choker::new(now);
        let ch = c.rechoke(&peers, true, now, &mut fastrand::Rng::with_seed(1));
        apply(&mut peers, &ch);
        let u = unchoked(&peers);
        for k in [2, 3, 4, 5] {
            assert!(u.contains(&k), "{u:?}");
        }
        assert!(!u.contains(&6));
        assert_eq!(u.len(), 5);
    }

    #[test]
    fn optimistic_rotates_every_30s() {
        let base = Instant::now();
        let mut peers: Vec<_> = (0..10)
            .map(|k| peer(k, if k < 4 { 100.0 } else { 0.0 }, base))
            .collect();
        let mut c = Choker::new(base);
        let mut rng = fastrand::Rng::with_seed(5);
        let mut t = base;
        let ch = c.rechoke(&peers, false, t, &mut rng);
        apply(&mut peers, &ch);
        let first = c.optimistic().unwrap();
        for _ in 0..2 {
            t += RECHOKE_INTERVAL;
            c.rechoke(&peers, false, t, &mut rng);
            assert_eq!(c.optimistic(), Some(first));
        }
        t += RECHOKE_INTERVAL;
        let ch = c.rechoke(&peers, false, t, &mut rng);
        let second = c.optimistic().unwrap();
        assert_ne!(second, first);
        assert!(ch.contains(&(first, false)));
        assert!(ch.contains(&(second, true)));
        // Optimistic peer leaving triggers an immediate replacement on force.
        peers.retain(|p| p.key != second);
        c.force();
        c.rechoke(&peers, false, t, &mut rng);
        assert!(c.optimistic().is_some_and(|k| k != second));
    }

    #[test]
    fn new_peers_weighted() {
        let base = Instant::now();
        let now = base + Duration::from_secs(120);
        let mut new_wins = 0;
        for seed in 0..400 {
            let mut peers: Vec<_> = (0..4).map(|k| peer(k, 100.0, base)).collect();
            peers.push(peer(10, 0.0, base)); // old
            peers.push(peer(11, 0.0, now - Duration::from_secs(10))); // new
            let mut c = Choker::new(now);
            c.rechoke(&peers, false, now, &mut fastrand::Rng::with_seed(seed));
            if c.optimistic() == Some(PeerKey(11)) {
                new_wins += 1;
            }
        }
        // Expected 3/4 of 400 = 300.
        assert!((260..340).contains(&new_wins), "{new_wins}");
    }

    #[test]
    fn no_peers_no_changes() {
        let now = Instant::now();
        let mut c = Choker::new(now);
        assert!(c
            .rechoke(&[], false, now, &mut fastrand::Rng::with_seed(0))
            .is_empty());
        assert_eq!(c.optimistic(), None);
    }
}
