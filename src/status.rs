//! The protocol's view of a torrent: the info and status types of
//! PROTOCOL.md 5 and their values. Read by the command handlers and by the
//! scripts' host functions alike.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::codec::Value;
use crate::registry::metainfo::Tracker;
use crate::registry::{Phase, Torrent};

/// Every info type of PROTOCOL.md 5, sorted.
pub const INFO_TYPES: &[&str] = &[
    "comment", "creator", "date", "files", "hash", "name", "path", "private", "saved", "size",
    "trackers",
];

/// Every status type of PROTOCOL.md 5, sorted.
pub const STATUS_TYPES: &[&str] = &[
    "completed",
    "download-speed",
    "download-total",
    "download-valid",
    "error",
    "error-message",
    "eta",
    "metadata-peers",
    "metadata-percent",
    "peers-downloading",
    "peers-from",
    "peers-total",
    "peers-uploading",
    "running",
    "scrape-completed",
    "scrape-leechers",
    "scrape-seeders",
    "state",
    "swarm-speed",
    "tracker",
    "upload-speed",
    "upload-total",
];

/// Everything `get-info` and `get-status` can say of a torrent, in one
/// dict with its `id` (what scripts see).
pub fn full_description(t: &Torrent) -> Value {
    let mut pairs: Vec<(&'static str, Value)> = vec![("id", Value::Int(t.id as i64))];
    for &ty in INFO_TYPES {
        if let Some(v) = info_field(t, ty) {
            pairs.push((ty, v));
        }
    }
    for &ty in STATUS_TYPES {
        if let Some(v) = status_field(t, ty) {
            pairs.push((ty, v));
        }
    }
    pairs.sort_unstable_by_key(|(k, _)| *k);
    Value::dict(pairs)
}

fn bytes(b: &[u8]) -> Value {
    Value::Bytes(b.to_vec())
}

fn path_value(p: &Path) -> Value {
    bytes(p.as_os_str().as_bytes())
}

fn tracker_value(t: &Tracker) -> Value {
    let mut pairs = vec![
        ("address", Value::str(&t.address)),
        ("announce", Value::str(&t.announce)),
        ("port", Value::Int(t.port.into())),
    ];
    if let Some(s) = &t.scrape {
        pairs.push(("scrape", Value::str(s)));
    }
    Value::dict(pairs)
}

/// The value of one info type, or `None` for an unknown type (skipped).
/// A torrent still fetching its metadata has its hints' name and
/// trackers, no files and size 0.
pub fn info_field(t: &Torrent, ty: &str) -> Option<Value> {
    let m = t.meta.as_ref();
    let text = |f: fn(&crate::registry::Metainfo) -> &[u8]| bytes(m.map_or(&[][..], f));
    Some(match ty {
        "hash" => Value::from(t.hash_hex()),
        "name" => Value::Bytes(t.name()),
        "path" => path_value(&t.saved_path),
        "saved" => Value::Int(1),
        "private" => Value::Int(t.is_private().into()),
        "trackers" => Value::List(
            t.tiers()
                .iter()
                .map(|tier| Value::List(tier.iter().map(tracker_value).collect()))
                .collect(),
        ),
        "comment" => text(|m| &m.comment),
        "creator" => text(|m| &m.creator),
        "date" => Value::Int(m?.creation_date?),
        "size" => Value::Int(t.total_size() as i64),
        "files" => Value::List(
            m.map(|m| m.files.as_slice())
                .unwrap_or_default()
                .iter()
                .map(|f| {
                    Value::dict([
                        ("name", Value::Bytes(f.display_path())),
                        ("size", Value::Int(f.length as i64)),
                    ])
                })
                .collect(),
        ),
        _ => return None,
    })
}

/// The protocol's name for a phase.
pub fn state_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Paused => "paused",
        // The protocol has no word for it: data is being fetched.
        Phase::FetchingMetadata => "downloading",
        Phase::WaitingCheck => "waiting to checking",
        Phase::Checking => "checking",
        Phase::Downloading => "downloading",
        Phase::Seeding => "seeding",
    }
}

/// What is wrong with a torrent, as the protocol's code (`io-*`,
/// `tracker-error`, `tracker-warning`) and a message: a data error stops
/// the torrent and comes first; a tracker's complaint is shown while the
/// torrent goes on. Shared by the IPC's `error` fields and the RPC's.
pub fn complaint(t: &Torrent) -> Option<(&'static str, &str)> {
    match (&t.error, &t.transfer.tracker_message) {
        (Some(e), _) => Some((e.code, e.message.as_str())),
        (None, Some((code, m))) => Some((code, m.as_str())),
        (None, None) => None,
    }
}

/// The value of one status type, or `None` for an unknown type. Traffic
/// figures are the engine's last report (zero while it does not run).
pub fn status_field(t: &Torrent, ty: &str) -> Option<Value> {
    let x = &t.transfer;
    let int = |n: u64| Value::Int(i64::try_from(n).unwrap_or(i64::MAX));
    Some(match ty {
        "completed" | "download-valid" => int(t.completed),
        "download-speed" => int(x.download_rate),
        "download-total" => int(x.downloaded),
        "upload-speed" => int(x.upload_rate),
        "upload-total" => int(x.uploaded),
        "swarm-speed" => int(x.swarm_rate),
        "peers-downloading" => Value::Int(x.peers_downloading.into()),
        "peers-uploading" => Value::Int(x.peers_uploading.into()),
        "peers-total" => Value::Int(x.peers.into()),
        "peers-from" => Value::dict([
            ("cache", Value::Int(x.peers_from.cache.into())),
            // tripcd's own: peers the DHT found.
            ("dht", Value::Int(x.peers_from.dht.into())),
            ("incoming", Value::Int(x.peers_from.incoming.into())),
            ("pex", Value::Int(x.peers_from.pex.into())),
            ("tracker", Value::Int(x.peers_from.tracker.into())),
        ]),
        "eta" => Value::Int(x.eta),
        // tripcd's own: the peers a magnet's metadata comes from, and how
        // much of it is in.
        "metadata-peers" => Value::Int(x.metadata_peers.into()),
        "metadata-percent" => Value::Int(if t.meta.is_some() {
            100
        } else {
            x.metadata_percent.into()
        }),
        "scrape-seeders" => Value::Int(x.scrape[0]),
        "scrape-leechers" => Value::Int(x.scrape[1]),
        "scrape-completed" => Value::Int(x.scrape[2]),
        "error" => Value::str(complaint(t).map_or("", |(code, _)| code)),
        "error-message" => Value::str(complaint(t).map_or("", |(_, m)| m)),
        "running" => Value::Int(t.running.into()),
        "state" => Value::str(if !t.running && x.stopping {
            "stopping"
        } else {
            state_name(t.phase)
        }),
        "tracker" => {
            let (tier, i) = x.tracker.unwrap_or((0, 0));
            tracker_value(t.tiers().get(tier)?.get(i)?)
        }
        _ => return None,
    })
}
