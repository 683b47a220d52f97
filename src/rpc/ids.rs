//! Which torrents a request names (the spec's 3.1): absent is every
//! torrent; a number is one id; a list holds ids and info hashes; the
//! string `recently-active` is those changed lately; another string is
//! one info hash, as Transmission reads it.

use serde_json::Value;

use super::json::as_int;
use crate::registry::metainfo::parse_hash;
use crate::registry::{Registry, Torrent};

/// Ids and hashes one request may name at most: ten times the 10,000
/// torrents the web interface must handle, listed by both.
pub const MAX_IDS: usize = 100_000;

/// How recent a change makes a torrent "recently active", in seconds:
/// Transmission's window, which the web interface's polling relies on.
pub const RECENTLY_ACTIVE_SECS: i64 = 60;

/// One element of an `ids` list: a torrent id or an info hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Name {
    /// A torrent id (not one if negative).
    Id(i64),
    /// An info hash.
    Hash([u8; 20]),
}

/// The torrents a request names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Every torrent.
    All,
    /// Those changed in the last [`RECENTLY_ACTIVE_SECS`], or moving data.
    RecentlyActive,
    /// These, in the order named.
    Named(Vec<Name>),
}

impl Selection {
    /// Reads the `ids` argument.
    pub fn parse(ids: Option<&Value>) -> Result<Selection, String> {
        let Some(v) = ids else {
            return Ok(Selection::All);
        };
        match v {
            Value::String(s) if s == "recently-active" => Ok(Selection::RecentlyActive),
            Value::Array(list) => {
                if list.len() > MAX_IDS {
                    return Err(format!(
                        "argument \"ids\" names {} torrents, more than the {MAX_IDS} allowed",
                        list.len()
                    ));
                }
                list.iter()
                    .map(name)
                    .collect::<Result<_, _>>()
                    .map(Selection::Named)
            }
            other => name(other).map(|n| Selection::Named(vec![n])),
        }
    }

    /// Whether it is `recently-active` (whose `torrent-get` also lists
    /// the torrents removed lately).
    pub fn is_recent(&self) -> bool {
        *self == Selection::RecentlyActive
    }

    /// The ids of the torrents selected that exist, in id order for
    /// `All` and `RecentlyActive`, else in the order named (each once).
    /// `now` is the wall clock in seconds.
    pub fn resolve(&self, reg: &Registry, now: i64) -> Vec<u64> {
        let torrents = reg.torrents();
        match self {
            Selection::All => torrents.iter().map(|t| t.id).collect(),
            Selection::RecentlyActive => torrents
                .iter()
                .filter(|t| recently_active(t, now))
                .map(|t| t.id)
                .collect(),
            Selection::Named(names) => {
                let mut seen = std::collections::HashSet::with_capacity(names.len());
                names
                    .iter()
                    .filter_map(|n| match *n {
                        Name::Id(i) => u64::try_from(i)
                            .ok()
                            .filter(|id| torrents.get(*id).is_some()),
                        Name::Hash(h) => torrents.lookup(&h),
                    })
                    .filter(|id| seen.insert(*id))
                    .collect()
            }
        }
    }
}

/// Changed in the last minute (added, started, stopped, checked,
/// completed, edited, moved data), or moving data now.
pub fn recently_active(t: &Torrent, now: i64) -> bool {
    t.dates.latest() >= now.saturating_sub(RECENTLY_ACTIVE_SECS)
        || t.transfer.download_rate > 0
        || t.transfer.upload_rate > 0
}

fn name(v: &Value) -> Result<Name, String> {
    if let Some(i) = as_int(v) {
        return Ok(Name::Id(i));
    }
    match v {
        Value::String(s) => parse_hash(s.as_bytes()).map(Name::Hash).ok_or_else(|| {
            format!(
                "argument \"ids\": {:?} is neither a torrent id nor an info hash",
                clip(s)
            )
        }),
        _ => Err(
            "argument \"ids\" must be an id, an info hash, a list of them, or \"recently-active\""
                .into(),
        ),
    }
}

/// A string quoted back in an error, cut to a readable length.
pub fn clip(s: &str) -> &str {
    const QUOTED: usize = 64;
    if s.len() <= QUOTED {
        return s;
    }
    let mut cut = QUOTED;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    &s[..cut]
}
