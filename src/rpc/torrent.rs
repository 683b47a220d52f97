//! The torrent methods (the spec's section 3): what they read, and how
//! they change the registry through the same methods the IPC's handlers
//! call (`Registry::add`, `add_file`, `add_by_hash`, `start`, `stop`,
//! `verify`, `remove`), so that scripts' hooks fire for either front.

use std::collections::HashMap;
use std::path::PathBuf;

use base64::Engine as _;

use super::call::{absolute_path, check_fixed, Call, Fixed, Outcome, PendingAdd};
use super::data::{self, DataRemoval};
use super::fields::{self, Row, Writer};
use super::ids::{clip, Selection, RECENTLY_ACTIVE_SECS};
use super::json::Args;
use crate::registry::magnet::Magnet;
use crate::registry::metainfo::{parse_hash, MAX_METAINFO_BYTES};
use crate::registry::{AddError, Hints, Registry, MAX_LABELS, MAX_LABEL_BYTES};

/// Field names one `torrent-get` may list at most: every field there is
/// (about 80) three times over; duplicates are answered once.
pub const MAX_FIELDS: usize = 256;

/// File indices one argument may list at most (`files-wanted` and its
/// kin): a torrent's files are bounded by the metainfo limit, and real
/// ones stay under this.
pub const MAX_FILE_INDICES: usize = 100_000;

/// The selection of a method's `ids` argument, resolved.
fn selected(c: &Call<'_, '_>) -> Result<Vec<u64>, String> {
    let selection = Selection::parse(c.args.get("ids"))?;
    Ok(selection.resolve(&c.svc.registry(), c.ctx.wall_secs()))
}

/// Applies `act` to every selected torrent.
fn act(c: &mut Call<'_, '_>, act: fn(&mut Registry, u64)) -> Result<Outcome, String> {
    let ids = selected(c)?;
    let mut reg = c.svc.registry_mut();
    for id in ids {
        act(&mut reg, id);
    }
    Ok(Outcome::Done)
}

/// `torrent-start` and `torrent-start-now` (the same: no queue holds a
/// started torrent back). A torrent stopped by an error starts again.
pub(super) fn start(c: &mut Call<'_, '_>) -> Result<Outcome, String> {
    act(c, Registry::start)
}

/// `torrent-stop`.
pub(super) fn stop(c: &mut Call<'_, '_>) -> Result<Outcome, String> {
    act(c, Registry::stop)
}

/// `torrent-verify`: a check of the data is queued (running torrents move
/// no data until it ends).
pub(super) fn verify(c: &mut Call<'_, '_>) -> Result<Outcome, String> {
    act(c, Registry::verify)
}

/// `torrent-reannounce`: the running torrents with trackers are handed to
/// the front, which asks the core to announce them now.
pub(super) fn reannounce(c: &mut Call<'_, '_>) -> Result<Outcome, String> {
    let ids = selected(c)?;
    let reg = c.svc.registry();
    let due: Vec<u64> = ids
        .into_iter()
        .filter(|id| {
            reg.torrents()
                .get(*id)
                .is_some_and(|t| t.running && !t.tiers().is_empty())
        })
        .collect();
    drop(reg);
    c.reannounce = due;
    Ok(Outcome::Done)
}

/// `torrent-remove`; with `delete-local-data`, the torrents' files are
/// handed to the front to delete once the removal is durable.
pub(super) fn remove(c: &mut Call<'_, '_>) -> Result<Outcome, String> {
    let delete = c.args.bool("delete-local-data")?.unwrap_or(false);
    let ids = selected(c)?;
    let mut reg = c.svc.registry_mut();
    for id in ids {
        if delete {
            if let Some(r) = reg.torrents().get(id).and_then(DataRemoval::of) {
                c.delete_data.push(r);
            }
        }
        reg.remove(id);
    }
    Ok(Outcome::Done)
}

/// `queue-move-*`: refused, after the `ids` are read.
pub(super) fn queue_move(c: &mut Call<'_, '_>) -> Result<Outcome, String> {
    Selection::parse(c.args.get("ids"))?;
    Err("tripcd keeps no queue: every started torrent runs at once".into())
}

/// `torrent-rename-path`: refused.
pub(super) fn rename_path(_: &mut Call<'_, '_>) -> Result<Outcome, String> {
    Err("tripcd cannot rename a torrent's files (torrent-rename-path)".into())
}

/// `torrent-get`.
pub(super) fn get(c: &mut Call<'_, '_>) -> Result<Outcome, String> {
    let selection = Selection::parse(c.args.get("ids"))?;
    let names = c
        .args
        .strings("fields", MAX_FIELDS)?
        .ok_or("no fields specified")?;
    let table = match c.args.str("format")? {
        None | Some("objects") => false,
        Some("table") => true,
        Some(_) => return Err("argument \"format\" must be \"objects\" or \"table\"".into()),
    };
    let mut wanted: Vec<(&'static str, Writer)> = Vec::with_capacity(names.len());
    for (name, w) in names.iter().filter_map(|n| fields::lookup(n)) {
        if !wanted.iter().any(|(n, _)| *n == name) {
            wanted.push((name, w));
        }
    }
    let now = c.ctx.wall_secs();
    let reg = c.svc.registry();
    let ids = selection.resolve(&reg, now);
    let positions = wanted
        .iter()
        .any(|(n, _)| *n == "queuePosition")
        .then(|| positions(&reg));
    let out = &mut *c.out;
    out.key("torrents");
    out.open_array();
    if table {
        out.open_array();
        for (name, _) in &wanted {
            out.str(name);
        }
        out.close_array();
    }
    for id in ids {
        if out.over() {
            break;
        }
        let Some(t) = reg.torrents().get(id) else {
            continue;
        };
        let row = Row {
            t,
            position: positions
                .as_ref()
                .and_then(|p| p.get(&id))
                .copied()
                .unwrap_or(0),
            peer_limit: c.ctx.peer_limit_per_torrent,
            check: reg.torrents().check_progress(id),
        };
        if table {
            out.open_array();
            for (_, w) in &wanted {
                w(&row, out);
            }
            out.close_array();
        } else {
            out.open_object();
            for (name, w) in &wanted {
                out.key(name);
                w(&row, out);
            }
            out.close_object();
        }
    }
    out.close_array();
    if selection.is_recent() {
        out.key("removed");
        out.open_array();
        for id in reg.removed_since(now.saturating_sub(RECENTLY_ACTIVE_SECS)) {
            out.uint(id);
        }
        out.close_array();
    }
    Ok(Outcome::Done)
}

/// Each torrent's place in id order.
fn positions(reg: &Registry) -> HashMap<u64, usize> {
    reg.torrents()
        .iter()
        .enumerate()
        .map(|(i, t)| (t.id, i))
        .collect()
}

/// Where a torrent to add comes from.
enum Source {
    Bytes(Vec<u8>),
    File(PathBuf),
    Magnet(Magnet),
}

/// `torrent-add`.
pub(super) fn add(c: &mut Call<'_, '_>) -> Result<Outcome, String> {
    let a = c.args;
    let filename = a.str("filename")?.filter(|s| !s.is_empty());
    let metainfo = a.str("metainfo")?.filter(|s| !s.is_empty());
    let options = PendingAdd {
        tag: None,
        directory: a
            .str("download-dir")?
            .map(|d| absolute_path("download-dir", d))
            .transpose()?,
        paused: a.bool("paused")?,
        labels: labels(a)?,
        cookies: a.str("cookies")?.map(str::to_string),
    };
    refuse_per_file_choices(a, None)?;
    let peer_limit = a.int("peer-limit")?;
    if peer_limit.is_some_and(|n| u64::try_from(n).ok() != Some(c.ctx.peer_limit_per_torrent)) {
        return Err(format!(
            "tripcd has no per-torrent peer limit (peer-limit): each torrent may have {} peers",
            c.ctx.peer_limit_per_torrent
        ));
    }
    if a.int("bandwidthPriority")?.is_some_and(|p| p != 0) {
        return Err("tripcd has no bandwidth priorities (bandwidthPriority)".into());
    }
    let source = match (filename, metainfo) {
        (Some(_), Some(_)) => return Err("give filename or metainfo, not both".into()),
        (None, None) => return Err("no filename or metainfo specified".into()),
        (None, Some(b64)) => Source::Bytes(decode_metainfo(b64)?),
        (Some(name), None) => match classify(name)? {
            Named::Url(url) => {
                let options = PendingAdd {
                    tag: c.tag,
                    ..options
                };
                return Ok(Outcome::Fetch(url, options));
            }
            Named::Source(s) => s,
        },
    };
    add_source(c, source, options)
}

/// Adds what a fetch brought ([`super::finish_fetch`]).
pub(super) fn add_fetched(
    c: &mut Call<'_, '_>,
    fetched: Result<Vec<u8>, String>,
    options: PendingAdd,
) -> Result<Outcome, String> {
    let bytes = fetched.map_err(|e| format!("could not fetch the torrent: {e}"))?;
    if bytes.len() > MAX_METAINFO_BYTES {
        return Err(format!(
            "the fetched torrent is {} bytes, over the metainfo limit of {MAX_METAINFO_BYTES}",
            bytes.len()
        ));
    }
    add_source(c, Source::Bytes(bytes), options)
}

/// What a `filename` names.
enum Named {
    Url(String),
    Source(Source),
}

fn classify(name: &str) -> Result<Named, String> {
    let lower = name.get(..8).unwrap_or(name).to_ascii_lowercase();
    if lower.starts_with("magnet:") {
        return Magnet::parse(name)
            .map(|m| Named::Source(Source::Magnet(m)))
            .map_err(|e| format!("bad magnet link: {e}"));
    }
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return Ok(Named::Url(name.to_string()));
    }
    // A bare info hash, as Transmission takes it: a link without hints.
    if let Some(info_hash) = parse_hash(name.as_bytes()) {
        return Ok(Named::Source(Source::Magnet(Magnet {
            info_hash,
            name: None,
            trackers: Vec::new(),
            peers: Vec::new(),
        })));
    }
    if name.contains("://") {
        return Err(format!(
            "cannot fetch {:?}: only http and https URLs are fetched",
            clip(name)
        ));
    }
    absolute_path("filename", name)
        .map(|p| Named::Source(Source::File(p)))
        .map_err(|_| {
            format!(
                "filename must be an absolute path, an http(s) URL or a magnet link, not {:?}",
                clip(name)
            )
        })
}

/// Base64, with or without padding and line breaks, as browsers and
/// tools write it.
fn decode_metainfo(b64: &str) -> Result<Vec<u8>, String> {
    if b64.len() > MAX_METAINFO_BYTES / 3 * 4 + 4096 {
        return Err(format!(
            "argument \"metainfo\" is over the metainfo limit of {MAX_METAINFO_BYTES} bytes"
        ));
    }
    let clean: Vec<u8> = b64.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    engine
        .decode(&clean)
        .map_err(|e| format!("argument \"metainfo\" is not base64: {e}"))
}

fn add_source(c: &mut Call<'_, '_>, source: Source, o: PendingAdd) -> Result<Outcome, String> {
    let autostart = o.paused.map(|p| !p);
    let mut reg = c.svc.registry_mut();
    let before = reg.torrents().len();
    let added = match source {
        Source::Bytes(b) => reg.add(b, o.directory, autostart),
        Source::File(p) => reg.add_file(&p, o.directory, autostart),
        Source::Magnet(m) => {
            let hints = Hints {
                name: m.name,
                trackers: m.trackers,
                peers: m.peers,
            };
            reg.add_by_hash(m.info_hash, hints, o.directory, autostart)
        }
    };
    let id = added.map_err(|e: AddError| e.to_string())?;
    let new = reg.torrents().len() > before;
    if new {
        if let Some(labels) = o.labels {
            reg.set_labels(id, labels);
        }
    }
    let Some(t) = reg.torrents().get(id) else {
        return Err("the torrent was added and is gone".into());
    };
    let out = &mut *c.out;
    out.key(if new {
        "torrent-added"
    } else {
        "torrent-duplicate"
    });
    out.open_object();
    out.uint_member("id", id);
    out.key("name");
    out.bytes(&t.name());
    out.str_member("hashString", &t.hash_hex());
    out.close_object();
    Ok(Outcome::Done)
}

/// `labels`: each trimmed, neither empty nor holding a comma (as
/// Transmission requires), bounded, each once.
fn labels(a: Args<'_>) -> Result<Option<Vec<String>>, String> {
    let Some(list) = a.strings("labels", MAX_LABELS)? else {
        return Ok(None);
    };
    let mut out: Vec<String> = Vec::with_capacity(list.len());
    for l in list {
        let l = l.trim();
        if l.is_empty() {
            return Err("labels cannot be empty".into());
        }
        if l.contains(',') {
            return Err("labels cannot contain comma (,) character".into());
        }
        if l.len() > MAX_LABEL_BYTES {
            return Err(format!("labels are at most {MAX_LABEL_BYTES} bytes"));
        }
        if !out.iter().any(|o| o == l) {
            out.push(l.to_string());
        }
    }
    Ok(Some(out))
}

/// Per-file choices tripcd cannot make (it downloads whole torrents at
/// one priority): `files-unwanted`, `priority-high` and `priority-low`
/// naming any file are refused; `files-wanted` and `priority-normal` say
/// what is so already. Indices are checked against `files` when known.
fn refuse_per_file_choices(a: Args<'_>, files: Option<usize>) -> Result<(), String> {
    for key in ["files-wanted", "priority-normal"] {
        if let Some(list) = a.ints(key, MAX_FILE_INDICES)? {
            check_indices(key, &list, files)?;
        }
    }
    for key in ["files-unwanted", "priority-high", "priority-low"] {
        let Some(list) = a.ints(key, MAX_FILE_INDICES)? else {
            continue;
        };
        check_indices(key, &list, files)?;
        // An empty list means every file.
        if !list.is_empty() || files.is_some_and(|n| n > 0) {
            return Err(format!(
                "tripcd downloads whole torrents at one priority ({key})"
            ));
        }
    }
    Ok(())
}

fn check_indices(key: &str, list: &[i64], files: Option<usize>) -> Result<(), String> {
    let Some(n) = files else {
        return Ok(());
    };
    if list
        .iter()
        .any(|i| usize::try_from(*i).map_or(true, |i| i >= n))
    {
        return Err(format!("file index out of range ({key})"));
    }
    Ok(())
}

/// What `torrent-set` asks for, checked before anything is changed.
struct TorrentSet {
    labels: Option<Vec<String>>,
    location: Option<PathBuf>,
}

/// Settings tripcd has one value for: accepted when they ask for it (a
/// client setting what it just read), refused otherwise, naming the
/// field.
const FIXED: &[(&str, Fixed, &str)] = &[
    (
        "bandwidthPriority",
        Fixed::Int(&[0]),
        "bandwidth priorities",
    ),
    (
        "downloadLimit",
        Fixed::Int(&[0]),
        "per-torrent speed limits",
    ),
    (
        "downloadLimited",
        Fixed::Bool(false),
        "per-torrent speed limits",
    ),
    ("uploadLimit", Fixed::Int(&[0]), "per-torrent speed limits"),
    (
        "uploadLimited",
        Fixed::Bool(false),
        "per-torrent speed limits",
    ),
    (
        "honorsSessionLimits",
        Fixed::Bool(true),
        "exemptions from the session's limits",
    ),
    ("seedIdleLimit", Fixed::Int(&[0]), "an idle-seeding limit"),
    // 0: the session's (none), 2: unlimited.
    ("seedIdleMode", Fixed::Int(&[0, 2]), "an idle-seeding limit"),
    ("seedRatioLimit", Fixed::Real(0.0), "a seed ratio limit"),
    ("seedRatioMode", Fixed::Int(&[0, 2]), "a seed ratio limit"),
    ("group", Fixed::Str(""), "bandwidth groups"),
];

fn parse_set(c: &Call<'_, '_>, ids: &[u64]) -> Result<TorrentSet, String> {
    let a = c.args;
    for (key, fixed, feature) in FIXED {
        check_fixed(a, key, *fixed, feature)?;
    }
    let limit = c.ctx.peer_limit_per_torrent;
    if a.int("peer-limit")?
        .is_some_and(|n| u64::try_from(n).ok() != Some(limit))
    {
        return Err(format!(
            "tripcd has no per-torrent peer limit (peer-limit): each torrent may have {limit} peers"
        ));
    }
    if a.has("queuePosition") {
        a.int("queuePosition")?;
        return Err("tripcd keeps no queue (queuePosition)".into());
    }
    for key in [
        "trackerAdd",
        "trackerRemove",
        "trackerReplace",
        "trackerList",
    ] {
        if a.has(key) {
            return Err(format!("tripcd cannot edit a torrent's trackers ({key})"));
        }
    }
    let reg = c.svc.registry();
    for id in ids {
        let files = reg
            .torrents()
            .get(*id)
            .map(|t| t.meta.as_ref().map_or(0, |m| m.files.len()));
        refuse_per_file_choices(a, files)?;
    }
    Ok(TorrentSet {
        labels: labels(a)?,
        location: a
            .str("location")?
            .map(|l| absolute_path("location", l))
            .transpose()?,
    })
}

/// `torrent-set`: labels and location (the data expected there, checked
/// again); the rest is refused unless it asks for what is so already.
/// Arguments tripcd does not know are passed over, as Transmission does.
pub(super) fn set(c: &mut Call<'_, '_>) -> Result<Outcome, String> {
    let ids = selected(c)?;
    let set = parse_set(c, &ids)?;
    let mut reg = c.svc.registry_mut();
    for id in ids {
        if let Some(labels) = &set.labels {
            reg.set_labels(id, labels.clone());
        }
        if let Some(dir) = &set.location {
            reg.set_directory(id, dir.clone())
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(Outcome::Done)
}

/// `torrent-set-location`: with `move`, the files are moved there first
/// (renamed, on the same file system); either way the data is checked
/// again in its new place.
pub(super) fn set_location(c: &mut Call<'_, '_>) -> Result<Outcome, String> {
    let location = c.args.str("location")?.ok_or("no location")?;
    let location = absolute_path("location", location)?;
    let moving = c.args.bool("move")?.unwrap_or(false);
    let ids = selected(c)?;
    for id in ids {
        if moving {
            let reg = c.svc.registry();
            if let Some(t) = reg.torrents().get(id) {
                data::move_files(t, &location)?;
            }
        }
        c.svc
            .registry_mut()
            .set_directory(id, location.clone())
            .map_err(|e| e.to_string())?;
    }
    Ok(Outcome::Done)
}
