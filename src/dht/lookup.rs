//! Iterative lookups (Kademlia's node lookup as BEP 5 uses it for
//! `find_node` and `get_peers`): pure bookkeeping over candidates sorted
//! by distance to the target; the node sends what it is told to.
//!
//! [`ALPHA`] queries are kept in flight towards the closest candidates
//! not yet asked; each node is asked once; a query unanswered after
//! [`SHORT_TIMEOUT`] stops holding its slot (libtorrent's "short
//! timeout": the lookup moves on but a late answer still counts), and
//! one unanswered at the node's full timeout fails. The search ends when
//! the [`K`] closest candidates that did not fail have all answered.
//! One lookup runs a search per address family (BEP 32's two DHTs).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::id::{Distance, NodeId};
use super::krpc::CompactNode;
use super::table::K;

/// Queries in flight per search (Kademlia's alpha, BEP 5's choice too).
/// Fixed rather than adaptive: the short timeout already widens a search
/// stuck on slow nodes, which is what adaptive schemes are for.
pub const ALPHA: usize = 3;

/// After this a query stops holding one of the [`ALPHA`] slots: real
/// nodes answer in well under a second or not at all.
pub const SHORT_TIMEOUT: Duration = Duration::from_secs(2);

/// Most candidates a search keeps (libtorrent's bound): the farthest go
/// first. Convergence only ever needs the closest few dozen.
pub const MAX_CANDIDATES: usize = 100;

/// Most distinct peers a `get_peers` lookup reports.
pub const MAX_PEERS_PER_LOOKUP: usize = 1024;

/// A lookup's handle, echoed in its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LookupId(pub u64);

/// What a lookup is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `find_node` towards the target (bootstrap, bucket refresh).
    FindNode,
    /// `get_peers` for an info hash.
    GetPeers,
    /// `get_peers`, then `announce_peer` to the closest that gave tokens;
    /// `None` announces `implied_port`.
    Announce(Option<u16>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Fresh,
    Asked { at: Instant, slow: bool },
    Answered,
    Failed,
}

#[derive(Debug, Clone)]
struct Candidate {
    /// `None` until a bootstrap node (known only by address) answers.
    id: Option<NodeId>,
    addr: SocketAddr,
    distance: Distance,
    state: State,
    /// Referrals from our table to this node.
    depth: u32,
    token: Option<Vec<u8>>,
    /// A second query went out after the short timeout.
    retried: bool,
}

/// A query the node should send for a search.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ask {
    /// Where.
    pub addr: SocketAddr,
    /// The id expected to answer, when known.
    pub id: Option<NodeId>,
}

/// One family's candidates, closest first (unknown ids last).
#[derive(Debug, Clone, Default)]
pub struct Search {
    candidates: Vec<Candidate>,
    /// With the IP restriction on: one candidate per /24 (/64), loopback
    /// exempt (libtorrent's `dht_restrict_search_ips`).
    prefixes: Option<HashSet<Vec<u8>>>,
}

impl Search {
    /// An empty search; `restrict_ips` as in [`Search::prefixes`].
    pub fn new(restrict_ips: bool) -> Search {
        Search {
            candidates: Vec::new(),
            prefixes: restrict_ips.then(HashSet::new),
        }
    }

    /// Adds a candidate unless its id or address is already there (or
    /// its prefix, with the restriction). Returns whether it was added.
    pub fn add(
        &mut self,
        target: &NodeId,
        id: Option<NodeId>,
        addr: SocketAddr,
        depth: u32,
    ) -> bool {
        let dup = self
            .candidates
            .iter()
            .any(|c| c.addr == addr || (id.is_some() && c.id == id));
        if dup {
            return false;
        }
        if let Some(prefixes) = &mut self.prefixes {
            if !addr.ip().is_loopback() {
                let b = match addr.ip().to_canonical() {
                    std::net::IpAddr::V4(v4) => v4.octets()[..3].to_vec(),
                    std::net::IpAddr::V6(v6) => v6.octets()[..8].to_vec(),
                };
                if !prefixes.insert(b) {
                    return false;
                }
            }
        }
        let distance = id.map_or(Distance::MAX, |id| id.distance(target));
        let at = self.candidates.partition_point(|c| c.distance <= distance);
        if at >= MAX_CANDIDATES {
            return false;
        }
        self.candidates.insert(
            at,
            Candidate {
                id,
                addr,
                distance,
                state: State::Fresh,
                depth,
                token: None,
                retried: false,
            },
        );
        self.candidates.truncate(MAX_CANDIDATES);
        true
    }

    fn position(&self, addr: SocketAddr) -> Option<usize> {
        self.candidates.iter().position(|c| c.addr == addr)
    }

    /// Whether `addr` is a candidate still waiting for an answer.
    pub fn is_asked(&self, addr: SocketAddr) -> bool {
        self.position(addr)
            .and_then(|i| self.candidates.get(i))
            .is_some_and(|c| matches!(c.state, State::Asked { .. }))
    }

    /// The queries to send now: the closest fresh candidates, while fewer
    /// than [`ALPHA`] hold a slot and fewer than [`K`] closer ones have
    /// answered. At most `budget`.
    pub fn next(&mut self, now: Instant, budget: usize) -> Vec<Ask> {
        let mut busy = self
            .candidates
            .iter()
            .filter(|c| matches!(c.state, State::Asked { slow: false, .. }))
            .count();
        let mut answered = 0;
        let mut out = Vec::new();
        for c in &mut self.candidates {
            if answered >= K || busy >= ALPHA || out.len() >= budget {
                break;
            }
            match c.state {
                State::Answered => answered += 1,
                State::Fresh => {
                    c.state = State::Asked {
                        at: now,
                        slow: false,
                    };
                    busy += 1;
                    out.push(Ask {
                        addr: c.addr,
                        id: c.id,
                    });
                }
                _ => {}
            }
        }
        out
    }

    /// Whether the search is over: the [`K`] closest candidates that did
    /// not fail have answered (or there are none left to ask).
    pub fn finished(&self) -> bool {
        self.candidates
            .iter()
            .filter(|c| c.state != State::Failed)
            .take(K)
            .all(|c| c.state == State::Answered)
    }

    /// Marks queries unanswered for [`SHORT_TIMEOUT`] at `now` as slow
    /// (they stop holding a slot, so the search can send more), and
    /// returns the ones to ask a second time: those among the [`K`]
    /// closest, once each. A lost datagram then costs the lookup two
    /// seconds instead of the node (jech/dht retransmits too; on a 2%-loss
    /// network one lookup in three loses a datagram to a closest node).
    pub fn mark_slow(&mut self, now: Instant) -> Vec<Ask> {
        let mut retries = Vec::new();
        let mut rank = 0;
        for c in &mut self.candidates {
            if c.state == State::Failed {
                continue;
            }
            rank += 1;
            if let State::Asked { at, slow: false } = c.state {
                if now.saturating_duration_since(at) >= SHORT_TIMEOUT {
                    c.state = State::Asked { at, slow: true };
                    if rank <= K && !c.retried {
                        c.retried = true;
                        retries.push(Ask {
                            addr: c.addr,
                            id: c.id,
                        });
                    }
                }
            }
        }
        retries
    }

    /// The earliest short timeout pending.
    pub fn next_slow(&self) -> Option<Instant> {
        self.candidates
            .iter()
            .filter_map(|c| match c.state {
                State::Asked { at, slow: false } => Some(at + SHORT_TIMEOUT),
                _ => None,
            })
            .min()
    }

    /// `addr` answered as `id` with `token`. Returns its depth, or `None`
    /// if it was not a candidate waiting for an answer.
    pub fn answered(
        &mut self,
        target: &NodeId,
        addr: SocketAddr,
        id: NodeId,
        token: Option<Vec<u8>>,
    ) -> Option<u32> {
        let i = self.position(addr)?;
        let mut c = self.candidates.remove(i);
        if !matches!(c.state, State::Asked { .. }) {
            self.candidates.insert(i, c);
            return None;
        }
        c.state = State::Answered;
        c.token = token;
        if c.id != Some(id) {
            c.id = Some(id);
            c.distance = id.distance(target);
        }
        let depth = c.depth;
        let at = self
            .candidates
            .partition_point(|x| x.distance <= c.distance);
        self.candidates.insert(at, c);
        Some(depth)
    }

    /// The query to `addr` failed (timed out, an error, or an answer from
    /// an id other than the one expected).
    pub fn failed(&mut self, addr: SocketAddr) {
        if let Some(c) = self.position(addr).and_then(|i| self.candidates.get_mut(i)) {
            if matches!(c.state, State::Asked { .. }) {
                c.state = State::Failed;
            }
        }
    }

    /// The closest candidates that answered, up to [`K`], with their
    /// tokens.
    pub fn closest(&self) -> Vec<(CompactNode, Option<Vec<u8>>)> {
        self.candidates
            .iter()
            .filter(|c| c.state == State::Answered)
            .take(K)
            .filter_map(|c| {
                Some((
                    CompactNode {
                        id: c.id?,
                        addr: c.addr,
                    },
                    c.token.clone(),
                ))
            })
            .collect()
    }

    /// The referral depth of the closest node that answered (0 when it
    /// came from our own table).
    pub fn hops(&self) -> u32 {
        self.candidates
            .iter()
            .find(|c| c.state == State::Answered)
            .map_or(0, |c| c.depth)
    }

    /// Candidates held.
    pub fn len(&self) -> usize {
        self.candidates.len()
    }

    /// Whether no candidate is held.
    pub fn is_empty(&self) -> bool {
        self.candidates.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(n: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], n))
    }

    /// An id at distance `d` (in its last byte) from the zero target.
    fn id(d: u8) -> NodeId {
        let mut id = NodeId([0; 20]);
        id.0[19] = d;
        id
    }

    #[test]
    fn alpha_in_flight_closest_first_and_each_once() {
        let t = NodeId([0; 20]);
        let now = Instant::now();
        let mut s = Search::new(false);
        for d in 1..=20u8 {
            assert!(s.add(&t, Some(id(d)), addr(d.into()), 0));
        }
        assert!(!s.add(&t, Some(id(3)), addr(99), 0), "same id");
        assert!(!s.add(&t, Some(id(99)), addr(3), 0), "same address");
        let first = s.next(now, 100);
        assert_eq!(
            first.iter().map(|a| a.addr).collect::<Vec<_>>(),
            vec![addr(1), addr(2), addr(3)]
        );
        assert!(s.next(now, 100).is_empty(), "alpha slots full");
        // A slow query frees its slot but still may answer; it is asked
        // once more.
        assert_eq!(s.mark_slow(now + SHORT_TIMEOUT).len(), 3);
        assert!(s.mark_slow(now + SHORT_TIMEOUT * 2).is_empty());
        assert_eq!(s.next(now, 100).len(), 3);
        assert_eq!(s.answered(&t, addr(1), id(1), Some(b"t".to_vec())), Some(0));
        assert_eq!(s.answered(&t, addr(1), id(1), None), None, "answered once");
        s.failed(addr(2));
        assert!(!s.finished());
        // Everyone asked answers: done when the 8 closest live answered.
        for _ in 0..10 {
            for a in s.next(now, 100) {
                s.answered(&t, a.addr, a.id.unwrap(), None);
            }
            let pending: Vec<u16> = (3..=20).collect();
            for p in pending {
                if s.is_asked(addr(p)) {
                    s.answered(&t, addr(p), id(p as u8), None);
                }
            }
        }
        assert!(s.finished());
        let closest = s.closest();
        assert_eq!(closest.len(), K);
        assert_eq!(closest[0].0.id, id(1));
        assert_eq!(closest[0].1.as_deref(), Some(&b"t"[..]));
        assert!(!closest.iter().any(|(n, _)| n.id == id(2)), "failed");
        assert_eq!(closest[K - 1].0.id, id(9));
    }

    #[test]
    fn unknown_ids_sort_last_until_they_answer_and_bounds_hold() {
        let t = NodeId([0; 20]);
        let now = Instant::now();
        let mut s = Search::new(false);
        assert!(s.add(&t, None, addr(1), 0));
        assert!(s.add(&t, Some(id(200)), addr(2), 0));
        let asked = s.next(now, 1);
        assert_eq!(
            asked,
            vec![Ask {
                addr: addr(2),
                id: Some(id(200))
            }]
        );
        let asked = s.next(now, 5);
        assert_eq!(asked[0].addr, addr(1));
        s.answered(&t, addr(1), id(5), None);
        assert_eq!(s.closest()[0].0.id, id(5), "re-sorted by its real id");
        for n in 0..300u16 {
            let mut i = NodeId([0xff; 20]);
            i.0[..2].copy_from_slice(&n.to_be_bytes());
            s.add(&t, Some(i), addr(1000 + n), 1);
        }
        assert_eq!(s.len(), MAX_CANDIDATES);
        let mut r = Search::new(true);
        assert!(r.add(&t, Some(id(1)), "10.0.0.1:1".parse().unwrap(), 0));
        assert!(
            !r.add(&t, Some(id(2)), "10.0.0.2:1".parse().unwrap(), 0),
            "same /24"
        );
        assert!(r.add(&t, Some(id(3)), addr(5), 0) && r.add(&t, Some(id(4)), addr(6), 0));
        assert!(Search::new(false).finished(), "nothing to ask");
    }
}
