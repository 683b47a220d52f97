//! The routing table (BEP 5): k-buckets of [`K`] nodes over the id space,
//! only the bucket holding our own id ever split, each with a cache of
//! replacements, nodes good, questionable or bad by BEP 5's 15-minute
//! rules.
//!
//! Only nodes that answered one of our queries are entered: a query
//! from a stranger may be forged, so it never adds or evicts anyone
//! (the node pings a stranger instead, and its reply counts). An
//! address that answers with an id other than the one we hold for it,
//! or an id that turns up at a second address, is not trusted: the first
//! evicts the entry (the node blacklists the address), the second is
//! ignored while the first holder is alive.
//!
//! Bound: at most [`MAX_BUCKETS`] buckets of [`K`] live entries and
//! [`REPLACEMENTS`] replacements, 2,560 entries in all; a table sees about
//! log2(network size / 8) buckets in practice (about 20 on the real DHT).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::id::{Distance, NodeId, ID_BITS};
use super::krpc::CompactNode;

/// Nodes per bucket, and nodes a lookup converges on (BEP 5's K).
pub const K: usize = 8;

/// Replacement entries cached per bucket: as many as a bucket holds, so a
/// bucket whose nodes all leave can be refilled at once.
pub const REPLACEMENTS: usize = 8;

/// The most buckets: one per bit of prefix shared with our id. Reaching
/// more than about 30 would take ids forged to sit next to ours.
pub const MAX_BUCKETS: usize = ID_BITS;

/// A node is good while it answered within this long (BEP 5).
pub const GOOD_FOR: Duration = Duration::from_secs(15 * 60);

/// A bucket unchanged for this long is refreshed (BEP 5).
pub const REFRESH_AFTER: Duration = Duration::from_secs(15 * 60);

/// Queries failed in a row that make a node bad. BEP 5 says "multiple";
/// jech/dht replaces a node after 3. On a 5%-loss network three losses in
/// a row happen once in 8,000 queries.
pub const BAD_AFTER: u8 = 3;

/// A questionable node pinged is not pinged again before this: long
/// enough for the ping to time out.
pub const PING_AGAIN_AFTER: Duration = Duration::from_secs(60);

/// What BEP 5 makes of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Answered within [`GOOD_FOR`], or answered once and queried us
    /// within [`GOOD_FOR`].
    Good,
    /// Quiet for [`GOOD_FOR`], or failed a query since its last answer.
    Questionable,
    /// Failed [`BAD_AFTER`] queries in a row.
    Bad,
}

/// One node in the table. Every entry answered us at least once.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The node's id.
    pub id: NodeId,
    /// Its address.
    pub addr: SocketAddr,
    /// When it last answered one of our queries.
    pub last_reply: Instant,
    /// When it last queried us.
    pub last_query: Option<Instant>,
    /// Queries failed since its last answer.
    pub failures: u8,
    /// When we last pinged it for being questionable.
    pub pinged: Option<Instant>,
}

impl Entry {
    /// The node's status at `now`.
    pub fn status(&self, now: Instant) -> Status {
        let recent = |t: Instant| now.saturating_duration_since(t) < GOOD_FOR;
        if self.failures >= BAD_AFTER {
            Status::Bad
        } else if self.failures == 0
            && (recent(self.last_reply) || self.last_query.is_some_and(recent))
        {
            Status::Good
        } else {
            Status::Questionable
        }
    }

    fn compact(&self) -> CompactNode {
        CompactNode {
            id: self.id,
            addr: self.addr,
        }
    }
}

#[derive(Debug, Clone)]
struct Bucket {
    live: Vec<Entry>,
    replacements: Vec<Entry>,
    /// When a node was added, replaced, or answered (BEP 5's "last
    /// changed"); a refresh resets it too, so that one is not retried at
    /// once.
    last_changed: Instant,
}

impl Bucket {
    fn new(now: Instant) -> Bucket {
        Bucket {
            live: Vec::with_capacity(K),
            replacements: Vec::new(),
            last_changed: now,
        }
    }
}

/// What [`Table::answered`] did with a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answered {
    /// Entered in a bucket.
    Added,
    /// Already there (live or replacement), now refreshed.
    Refreshed,
    /// Its bucket is full of nodes that are not bad: cached as a
    /// replacement.
    Cached,
    /// Not entered: our own id, an address refused, or an id another
    /// address holds.
    Ignored,
    /// The address answered with an id other than the one held for it:
    /// the entry is gone, and the address should not be trusted.
    Lied,
}

/// What we know of a node that queried us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queried {
    /// In the table (its query keeps it good).
    Known,
    /// Unknown, and its bucket would take it: worth a ping.
    Wanted,
    /// Unknown or inconsistent, and not wanted.
    Ignored,
}

/// Counts for [`super::DhtStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableStats {
    /// Live entries that are good.
    pub good: usize,
    /// Live entries that are questionable.
    pub questionable: usize,
    /// Live entries that are bad (kept until something replaces them).
    pub bad: usize,
    /// Buckets.
    pub buckets: usize,
    /// Replacement entries.
    pub replacements: usize,
}

/// A routing table for one address family.
#[derive(Debug, Clone)]
pub struct Table {
    own: NodeId,
    buckets: Vec<Bucket>,
    /// Every entry, live or replacement, by address.
    addrs: HashMap<SocketAddr, NodeId>,
    /// libtorrent's `dht_restrict_routing_ips`: one entry per IP address
    /// and one per /24 (/64) in a bucket, loopback exempt.
    restrict_ips: bool,
}

/// The key the IP restriction compares: the address, or its /24 (/64)
/// prefix.
fn ip_prefix(ip: IpAddr) -> Vec<u8> {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.octets()[..3].to_vec(),
        IpAddr::V6(v6) => v6.octets()[..8].to_vec(),
    }
}

impl Table {
    /// An empty table around `own`.
    pub fn new(own: NodeId, restrict_ips: bool, now: Instant) -> Table {
        Table {
            own,
            buckets: vec![Bucket::new(now)],
            addrs: HashMap::new(),
            restrict_ips,
        }
    }

    /// Our id.
    pub fn own_id(&self) -> NodeId {
        self.own
    }

    /// The same nodes around a new id (after a BEP 42 change): every
    /// entry is entered again, live ones first.
    pub fn rebuilt(&self, own: NodeId, now: Instant) -> Table {
        let mut t = Table::new(own, self.restrict_ips, now);
        let live = self.buckets.iter().flat_map(|b| b.live.iter());
        let cached = self.buckets.iter().flat_map(|b| b.replacements.iter());
        for e in live.chain(cached) {
            t.insert(e.clone(), now);
        }
        t
    }

    fn bucket_index(&self, id: &NodeId) -> usize {
        self.own
            .common_prefix(id)
            .min(self.buckets.len().saturating_sub(1))
    }

    /// Looks up an entry by id: (bucket, in live?, position).
    fn find(&self, id: &NodeId) -> Option<(usize, bool, usize)> {
        let b = self.bucket_index(id);
        let bucket = self.buckets.get(b)?;
        if let Some(i) = bucket.live.iter().position(|e| e.id == *id) {
            return Some((b, true, i));
        }
        let i = bucket.replacements.iter().position(|e| e.id == *id)?;
        Some((b, false, i))
    }

    fn entry_mut(&mut self, id: &NodeId) -> Option<&mut Entry> {
        let (b, live, i) = self.find(id)?;
        let bucket = self.buckets.get_mut(b)?;
        if live {
            bucket.live.get_mut(i)
        } else {
            bucket.replacements.get_mut(i)
        }
    }

    /// The entry for `id`, if held (live or replacement).
    pub fn get(&self, id: &NodeId) -> Option<&Entry> {
        let (b, live, i) = self.find(id)?;
        let bucket = self.buckets.get(b)?;
        if live {
            bucket.live.get(i)
        } else {
            bucket.replacements.get(i)
        }
    }

    /// The id held for `addr`, if any.
    pub fn id_at(&self, addr: SocketAddr) -> Option<NodeId> {
        self.addrs.get(&addr).copied()
    }

    /// A node answered one of our queries from `addr` with `id`.
    pub fn answered(&mut self, id: NodeId, addr: SocketAddr, now: Instant) -> Answered {
        if id == self.own {
            return Answered::Ignored;
        }
        match self.addrs.get(&addr) {
            Some(held) if *held != id => {
                let held = *held;
                self.remove(&held, now);
                return Answered::Lied;
            }
            Some(_) => {
                let b = self.bucket_index(&id);
                if let Some(e) = self.entry_mut(&id) {
                    e.last_reply = now;
                    e.failures = 0;
                    e.pinged = None;
                }
                if let Some(bucket) = self.buckets.get_mut(b) {
                    bucket.last_changed = now;
                }
                self.fill_from_replacements(b, now);
                return Answered::Refreshed;
            }
            None => {}
        }
        if self.find(&id).is_some() || self.ip_refused(&id, addr) {
            return Answered::Ignored;
        }
        let entry = Entry {
            id,
            addr,
            last_reply: now,
            last_query: None,
            failures: 0,
            pinged: None,
        };
        self.insert(entry, now)
    }

    /// Whether the IP restriction refuses `addr` for `id`'s bucket.
    fn ip_refused(&self, id: &NodeId, addr: SocketAddr) -> bool {
        if !self.restrict_ips || addr.ip().is_loopback() {
            return false;
        }
        let ip = addr.ip().to_canonical();
        if self.addrs.keys().any(|a| a.ip().to_canonical() == ip) {
            return true;
        }
        let prefix = ip_prefix(ip);
        let b = self.bucket_index(id);
        self.buckets.get(b).is_some_and(|bucket| {
            bucket
                .live
                .iter()
                .chain(bucket.replacements.iter())
                .any(|e| ip_prefix(e.addr.ip()) == prefix)
        })
    }

    /// Enters a node not held yet: a free slot, a bad node's slot, a
    /// split of our own bucket, or the replacement cache.
    fn insert(&mut self, entry: Entry, now: Instant) -> Answered {
        loop {
            let b = self.bucket_index(&entry.id);
            let count = self.buckets.len();
            let last = b + 1 == count;
            let Some(bucket) = self.buckets.get_mut(b) else {
                return Answered::Ignored;
            };
            if bucket.live.len() < K {
                self.addrs.insert(entry.addr, entry.id);
                bucket.live.push(entry);
                bucket.last_changed = now;
                return Answered::Added;
            }
            if let Some(i) = bucket
                .live
                .iter()
                .position(|e| e.status(now) == Status::Bad)
            {
                let gone = std::mem::replace(&mut bucket.live[i], entry.clone());
                bucket.last_changed = now;
                self.addrs.remove(&gone.addr);
                self.addrs.insert(entry.addr, entry.id);
                return Answered::Added;
            }
            if last && count < MAX_BUCKETS {
                self.split(now);
                continue;
            }
            if bucket.replacements.len() >= REPLACEMENTS {
                // The one heard from longest ago makes room.
                let oldest = (0..bucket.replacements.len())
                    .min_by_key(|&i| bucket.replacements[i].last_reply)
                    .unwrap_or(0);
                let gone = bucket.replacements.swap_remove(oldest);
                self.addrs.remove(&gone.addr);
            }
            self.addrs.insert(entry.addr, entry.id);
            bucket.replacements.push(entry);
            return Answered::Cached;
        }
    }

    /// Splits the last bucket (the one holding our id) in two.
    fn split(&mut self, now: Instant) {
        let index = self.buckets.len() - 1;
        let mut near = Bucket::new(now);
        if let Some(old) = self.buckets.get_mut(index) {
            near.last_changed = old.last_changed;
            let own = self.own;
            let goes = |e: &Entry| own.common_prefix(&e.id) > index;
            let (moved, kept): (Vec<_>, Vec<_>) = old.live.drain(..).partition(|e| goes(e));
            old.live = kept;
            near.live = moved;
            let (moved, kept): (Vec<_>, Vec<_>) = old.replacements.drain(..).partition(|e| goes(e));
            old.replacements = kept;
            near.replacements = moved;
        }
        self.buckets.push(near);
        self.fill_from_replacements(index, now);
        self.fill_from_replacements(index + 1, now);
    }

    /// Moves the freshest replacements into free live slots, or over bad
    /// live entries.
    fn fill_from_replacements(&mut self, b: usize, now: Instant) {
        let Some(bucket) = self.buckets.get_mut(b) else {
            return;
        };
        while !bucket.replacements.is_empty() {
            let bad = bucket
                .live
                .iter()
                .position(|e| e.status(now) == Status::Bad);
            if bucket.live.len() >= K && bad.is_none() {
                return;
            }
            let best = (0..bucket.replacements.len())
                .max_by_key(|&i| bucket.replacements[i].last_reply)
                .unwrap_or(0);
            let entry = bucket.replacements.swap_remove(best);
            match bad {
                Some(i) if bucket.live.len() >= K => {
                    let gone = std::mem::replace(&mut bucket.live[i], entry);
                    self.addrs.remove(&gone.addr);
                }
                _ => bucket.live.push(entry),
            }
            bucket.last_changed = now;
        }
    }

    /// Removes a node, live or replacement, and fills its slot.
    fn remove(&mut self, id: &NodeId, now: Instant) {
        let Some((b, live, i)) = self.find(id) else {
            return;
        };
        let Some(bucket) = self.buckets.get_mut(b) else {
            return;
        };
        let gone = if live {
            bucket.live.swap_remove(i)
        } else {
            bucket.replacements.swap_remove(i)
        };
        self.addrs.remove(&gone.addr);
        self.fill_from_replacements(b, now);
    }

    /// A query to `id` at `addr` went unanswered. A replacement that
    /// fails is dropped; a live node that turns bad gives its slot to the
    /// freshest replacement.
    pub fn failed(&mut self, id: &NodeId, addr: SocketAddr, now: Instant) {
        let Some((b, live, _)) = self.find(id) else {
            return;
        };
        let Some(e) = self.entry_mut(id) else {
            return;
        };
        if e.addr != addr {
            return; // another node claiming the id; ours is not at fault
        }
        e.failures = e.failures.saturating_add(1);
        if !live {
            self.remove(id, now);
        } else if e.failures >= BAD_AFTER {
            self.fill_from_replacements(b, now);
        }
    }

    /// A node queried us. A known node's query keeps it good; an unknown
    /// one is worth a ping if its bucket has room or can split.
    pub fn queried(&mut self, id: NodeId, addr: SocketAddr, now: Instant) -> Queried {
        if id == self.own {
            return Queried::Ignored;
        }
        match self.addrs.get(&addr) {
            Some(held) if *held == id => {
                if let Some(e) = self.entry_mut(&id) {
                    e.last_query = Some(now);
                }
                return Queried::Known;
            }
            Some(_) => return Queried::Ignored,
            None => {}
        }
        if self.find(&id).is_some() || self.ip_refused(&id, addr) {
            return Queried::Ignored;
        }
        let b = self.bucket_index(&id);
        let last = b + 1 == self.buckets.len();
        let room = self.buckets.get(b).is_some_and(|bucket| {
            bucket.live.len() < K || bucket.live.iter().any(|e| e.status(now) != Status::Good)
        });
        if room || (last && self.buckets.len() < MAX_BUCKETS) {
            Queried::Wanted
        } else {
            Queried::Ignored
        }
    }

    /// Up to `n` live nodes that are not bad, closest to `target` first.
    ///
    /// With `c` the prefix `target` shares with our id, XOR order visits
    /// buckets as groups: bucket `c` first (its nodes agree with the
    /// target at bit `c`), then every bucket past `c` (they all differ
    /// from it first at bit `c`), then buckets `c - 1` down to 0 (each
    /// differs first at its own index, nearer the end of the id). Only the
    /// groups needed are sorted.
    pub fn closest(&self, target: &NodeId, n: usize, now: Instant) -> Vec<CompactNode> {
        let c = self.bucket_index(target);
        let groups = std::iter::once(c..c + 1)
            .chain(std::iter::once(c + 1..self.buckets.len()))
            .chain((0..c).rev().map(|i| i..i + 1));
        let mut out = Vec::with_capacity(n);
        let mut group: Vec<(Distance, &Entry)> = Vec::new();
        for range in groups {
            if out.len() >= n {
                break;
            }
            group.clear();
            let buckets = self.buckets.get(range).unwrap_or(&[]);
            let live = buckets.iter().flat_map(|b| b.live.iter());
            group.extend(
                live.filter(|e| e.status(now) != Status::Bad)
                    .map(|e| (e.id.distance(target), e)),
            );
            group.sort_unstable_by_key(|(d, _)| *d);
            let room = n - out.len();
            out.extend(group.iter().take(room).map(|(_, e)| e.compact()));
        }
        out
    }

    /// The good live nodes (for saving the table).
    pub fn good(&self, now: Instant) -> Vec<CompactNode> {
        self.buckets
            .iter()
            .flat_map(|b| b.live.iter())
            .filter(|e| e.status(now) == Status::Good)
            .map(Entry::compact)
            .collect()
    }

    /// A random target in the first bucket unchanged for
    /// [`REFRESH_AFTER`], whose clock restarts.
    pub fn refresh_due(&mut self, now: Instant, rng: &mut fastrand::Rng) -> Option<NodeId> {
        let last = self.buckets.len() - 1;
        let (i, bucket) = self
            .buckets
            .iter_mut()
            .enumerate()
            .find(|(_, b)| now.saturating_duration_since(b.last_changed) >= REFRESH_AFTER)?;
        bucket.last_changed = now;
        Some(if i == last {
            // Our own bucket: any id sharing its prefix with ours.
            let mut id = NodeId::random(rng);
            for bit in 0..i {
                if id.bit(bit) != self.own.bit(bit) {
                    id.0[bit / 8] ^= 0x80 >> (bit % 8);
                }
            }
            id
        } else {
            self.own.random_at_prefix(i, rng)
        })
    }

    /// When the next bucket refresh falls due.
    pub fn next_refresh(&self) -> Option<Instant> {
        self.buckets
            .iter()
            .map(|b| b.last_changed + REFRESH_AFTER)
            .min()
    }

    /// Up to `max` questionable live nodes not pinged within
    /// [`PING_AGAIN_AFTER`]: pinging them finds which are bad (BEP 5 pings
    /// them when a bucket is full; we ping them anyway, so that a bucket
    /// whose nodes left turns bad and takes new ones). Each is marked
    /// pinged.
    pub fn to_ping(&mut self, now: Instant, max: usize) -> Vec<(NodeId, SocketAddr)> {
        let mut out = Vec::new();
        let live = self.buckets.iter_mut().flat_map(|b| b.live.iter_mut());
        for e in live {
            if out.len() >= max {
                break;
            }
            let due = e
                .pinged
                .is_none_or(|t| now.saturating_duration_since(t) >= PING_AGAIN_AFTER);
            if due && e.status(now) == Status::Questionable {
                e.pinged = Some(now);
                out.push((e.id, e.addr));
            }
        }
        out
    }

    /// Counts by status, buckets and replacements.
    pub fn stats(&self, now: Instant) -> TableStats {
        let mut s = TableStats {
            buckets: self.buckets.len(),
            ..TableStats::default()
        };
        for b in &self.buckets {
            s.replacements += b.replacements.len();
            for e in &b.live {
                match e.status(now) {
                    Status::Good => s.good += 1,
                    Status::Questionable => s.questionable += 1,
                    Status::Bad => s.bad += 1,
                }
            }
        }
        s
    }

    /// Live entries in all buckets.
    pub fn len(&self) -> usize {
        self.buckets.iter().map(|b| b.live.len()).sum()
    }

    /// Whether no node is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Live entries per bucket, nearest bucket last (for tests).
    #[cfg(test)]
    fn shape(&self) -> Vec<usize> {
        self.buckets.iter().map(|b| b.live.len()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(n: u32) -> SocketAddr {
        SocketAddr::from(([10, (n >> 16) as u8, (n >> 8) as u8, n as u8], 6881))
    }

    /// An id sharing exactly `prefix` bits with the all-zero id.
    fn at(prefix: usize, tail: u8) -> NodeId {
        let mut id = NodeId([0; 20]);
        id.0[prefix / 8] |= 0x80 >> (prefix % 8);
        id.0[19] |= tail;
        id
    }

    fn table(now: Instant) -> Table {
        Table::new(NodeId([0; 20]), false, now)
    }

    #[test]
    fn only_our_bucket_splits_and_full_far_buckets_cache() {
        let now = Instant::now();
        let mut t = table(now);
        // Eight far nodes (prefix 0) fill the first bucket.
        for i in 0..8u8 {
            assert_eq!(
                t.answered(at(0, i + 1), addr(i.into()), now),
                Answered::Added
            );
        }
        assert_eq!(t.shape(), vec![8]);
        // A node with a longer prefix splits our bucket and is entered.
        assert_eq!(t.answered(at(3, 1), addr(100), now), Answered::Added);
        assert_eq!(t.shape(), vec![8, 1]);
        // A ninth far node goes to the replacements: bucket 0 no longer
        // holds our id, so it never splits again.
        assert_eq!(t.answered(at(0, 20), addr(20), now), Answered::Cached);
        assert_eq!(t.stats(now).replacements, 1);
        // Our own bucket keeps splitting as near nodes arrive.
        for i in 0..8u8 {
            t.answered(at(5 + usize::from(i), 1), addr(200 + u32::from(i)), now);
        }
        let shape = t.shape();
        assert_eq!(shape[0], 8);
        assert!(shape.len() > 2, "{shape:?}");
        assert_eq!(t.len(), 17);
        assert_eq!(
            t.answered(NodeId([0; 20]), addr(999), now),
            Answered::Ignored
        );
    }

    #[test]
    fn good_questionable_bad_and_replacement() {
        let t0 = Instant::now();
        let mut t = table(t0);
        t.answered(at(3, 0), addr(50), t0); // keeps bucket 0 from holding our id
        for i in 0..8u8 {
            t.answered(at(0, i + 1), addr(i.into()), t0);
        }
        let spare = at(0, 30);
        assert_eq!(t.answered(spare, addr(30), t0), Answered::Cached);
        let victim = at(0, 1);
        assert_eq!(t.get(&victim).unwrap().status(t0), Status::Good);
        // Quiet for 15 minutes: questionable; a query from it alone keeps
        // it good.
        let later = t0 + GOOD_FOR;
        assert_eq!(t.get(&victim).unwrap().status(later), Status::Questionable);
        assert_eq!(t.queried(victim, addr(0), later), Queried::Known);
        assert_eq!(t.get(&victim).unwrap().status(later), Status::Good);
        // One failure: questionable; BAD_AFTER in a row: bad, replaced by
        // the cached node.
        t.failed(&victim, addr(0), later);
        assert_eq!(t.get(&victim).unwrap().status(later), Status::Questionable);
        for _ in 1..BAD_AFTER {
            t.failed(&victim, addr(0), later);
        }
        assert!(t.get(&victim).is_none(), "the bad node gave its slot");
        assert_eq!(t.closest(&spare, 1, later)[0].id, spare, "now live");
        assert_eq!(t.stats(later).replacements, 0);
        // An answer clears failures.
        let other = at(0, 2);
        t.failed(&other, addr(1), later);
        t.answered(other, addr(1), later);
        assert_eq!(t.get(&other).unwrap().status(later), Status::Good);
        // With no replacement a bad node stays (not offered) until a new
        // node takes its slot.
        let third = at(0, 3);
        for _ in 0..BAD_AFTER {
            t.failed(&third, addr(2), later);
        }
        assert_eq!(t.stats(later).bad, 1);
        assert!(!t.closest(&third, 8, later).iter().any(|n| n.id == third));
        assert_eq!(t.answered(at(0, 40), addr(40), later), Answered::Added);
        assert!(t.get(&third).is_none());
    }

    #[test]
    fn lying_addresses_and_stolen_ids_are_not_trusted() {
        let now = Instant::now();
        let mut t = table(now);
        let a = at(2, 1);
        assert_eq!(t.answered(a, addr(1), now), Answered::Added);
        // The same id from another address is ignored.
        assert_eq!(t.answered(a, addr(2), now), Answered::Ignored);
        assert_eq!(t.get(&a).unwrap().addr, addr(1));
        // A failure reported against the impostor's address does not count.
        t.failed(&a, addr(2), now);
        assert_eq!(t.get(&a).unwrap().failures, 0);
        // The address answering with a new id: the entry goes.
        assert_eq!(t.answered(at(2, 9), addr(1), now), Answered::Lied);
        assert!(t.get(&a).is_none() && t.is_empty());
        // A query never evicts: only answers do.
        t.answered(a, addr(1), now);
        assert_eq!(t.queried(at(2, 7), addr(1), now), Queried::Ignored);
        assert!(t.get(&a).is_some());
    }

    #[test]
    fn ip_restriction_spares_loopback() {
        let now = Instant::now();
        let mut t = Table::new(NodeId([0; 20]), true, now);
        let a: SocketAddr = "10.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "10.0.0.1:2".parse().unwrap();
        let c: SocketAddr = "10.0.0.9:2".parse().unwrap();
        assert_eq!(t.answered(at(0, 1), a, now), Answered::Added);
        assert_eq!(t.answered(at(1, 1), b, now), Answered::Ignored, "same IP");
        assert_eq!(
            t.answered(at(0, 2), c, now),
            Answered::Ignored,
            "same /24 and bucket"
        );
        for port in 1..5 {
            let lo = SocketAddr::from(([127, 0, 0, 1], port));
            assert_eq!(t.answered(at(2, port as u8), lo, now), Answered::Added);
        }
    }

    #[test]
    fn closest_and_refresh() {
        let now = Instant::now();
        let mut t = table(now);
        let mut rng = fastrand::Rng::with_seed(5);
        let mut all = Vec::new();
        for i in 0..300u32 {
            let id = NodeId::random(&mut rng);
            t.answered(id, addr(i), now);
            all.push(id);
        }
        let target = NodeId::random(&mut rng);
        let got = t.closest(&target, 8, now);
        assert_eq!(got.len(), 8);
        assert!(got
            .windows(2)
            .all(|w| w[0].id.distance(&target) < w[1].id.distance(&target)));
        // The closest held is the closest live one.
        let mut held: Vec<NodeId> = t
            .buckets
            .iter()
            .flat_map(|b| b.live.iter().map(|e| e.id))
            .collect();
        for target in (0..50)
            .map(|_| NodeId::random(&mut rng))
            .chain(all.iter().copied().take(50))
        {
            held.sort_by_key(|id| id.distance(&target));
            let got: Vec<NodeId> = t.closest(&target, 8, now).iter().map(|n| n.id).collect();
            assert_eq!(
                got,
                held[..8].to_vec(),
                "the bucket walk agrees with sorting all"
            );
        }
        assert!(t.refresh_due(now, &mut rng).is_none());
        let later = now + REFRESH_AFTER;
        let mut targets = 0;
        while let Some(target) = t.refresh_due(later, &mut rng) {
            let b = t.bucket_index(&target);
            assert!(t.buckets[b].last_changed == later);
            targets += 1;
        }
        assert_eq!(targets, t.buckets.len());
        assert_eq!(t.next_refresh(), Some(later + REFRESH_AFTER));
    }
}
