//! Built-in torrent keys: adding, listing, looking up, starting, stopping,
//! removing, and the info and status dictionaries (PROTOCOL.md 4 and 5).

use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

use log::info;

use super::{Builtin, Ctx, Reply};
use crate::codec::{IntoKey, Value};
use crate::registry::metainfo::parse_hash;
use crate::registry::{Registry, Torrent};
use crate::status::{info_field, status_field, INFO_TYPES, STATUS_TYPES};

/// Key, lowest protocol version, handler.
pub(super) const BUILTINS: &[(&str, u8, Builtin)] = &[
    ("addfiles", 1, addfiles),
    ("addfile-detailed", 2, addfile_detailed),
    ("addmagnet", 2, addmagnet),
    ("get-info", 2, get_info),
    ("get-info-all", 2, get_info_all),
    ("get-status", 2, get_status),
    ("get-status-all", 2, get_status_all),
    ("lookup", 2, lookup),
    ("start", 2, start),
    ("start-all", 2, start_all),
    ("stop", 2, stop),
    ("stop-all", 2, stop_all),
    ("remove", 2, remove),
    ("remove-all", 2, remove_all),
    ("verify", 2, verify),
];

fn path_of(bytes: &[u8]) -> PathBuf {
    PathBuf::from(std::ffi::OsString::from_vec(bytes.to_vec()))
}

fn id_list(ids: &[u64]) -> Value {
    Value::List(
        ids.iter()
            .map(|id| Value::dict([("id", Value::Int(*id as i64))]))
            .collect(),
    )
}

fn addfiles(ctx: &mut Ctx<'_>, value: &Value) -> Reply {
    let Some(paths) = value.as_list() else {
        return Reply::BadFormat;
    };
    if paths.iter().any(|p| p.as_bytes().is_none()) {
        return Reply::BadFormat;
    }
    let mut ids = Vec::new();
    let mut failures = Vec::new();
    for p in paths.iter().filter_map(Value::as_bytes) {
        let path = path_of(p);
        if !path.is_absolute() {
            failures.push(format!("not an absolute path: {}", path.display()));
            continue;
        }
        match ctx.registry.add_file(&path, None, None) {
            Ok(id) => {
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
            Err(e) => failures.push(e.to_string()),
        }
    }
    for f in &failures {
        info!("addfiles: {f}");
    }
    if ids.is_empty() && !failures.is_empty() && ctx.tagged {
        return Reply::Failed(failures.join("; "));
    }
    Reply::data("info", id_list(&ids))
}

/// tripcd's own key (the protocol has none for magnet links): a list of
/// magnet URIs, answered as `addfiles` is, with the ids of the torrents
/// they name (a duplicate answers with the id it has).
fn addmagnet(ctx: &mut Ctx<'_>, value: &Value) -> Reply {
    let Some(uris) = value.as_list() else {
        return Reply::BadFormat;
    };
    let Some(uris) = uris.iter().map(Value::as_str).collect::<Option<Vec<_>>>() else {
        return Reply::BadFormat;
    };
    let mut ids = Vec::new();
    let mut failures = Vec::new();
    for uri in uris {
        match ctx.registry.add_magnet(uri, None, None) {
            Ok(id) if !ids.contains(&id) => ids.push(id),
            Ok(_) => {}
            Err(e) => failures.push(e.to_string()),
        }
    }
    for f in &failures {
        info!("addmagnet: {f}");
    }
    if ids.is_empty() && !failures.is_empty() && ctx.tagged {
        return Reply::Failed(failures.join("; "));
    }
    Reply::data("info", id_list(&ids))
}

fn addfile_detailed(ctx: &mut Ctx<'_>, value: &Value) -> Reply {
    if value.as_dict().is_none() {
        return Reply::BadFormat;
    }
    let file = value.get("file");
    let data = value.get("data");
    let directory = match value.get("directory") {
        None => None,
        Some(Value::Bytes(d)) => {
            let d = path_of(d);
            if !d.is_absolute() {
                return Reply::Failed(format!("directory is not absolute: {}", d.display()));
            }
            Some(d)
        }
        Some(_) => return Reply::BadFormat,
    };
    let autostart = match value.get("autostart") {
        None => None,
        Some(Value::Int(i)) => Some(*i != 0),
        Some(_) => return Reply::BadFormat,
    };
    let added = match (file, data) {
        (Some(Value::Bytes(f)), None) => {
            let path = path_of(f);
            if !path.is_absolute() {
                return Reply::Failed(format!("not an absolute path: {}", path.display()));
            }
            ctx.registry.add_file(&path, directory, autostart)
        }
        (None, Some(Value::Bytes(d))) => ctx.registry.add(d.clone(), directory, autostart),
        _ => return Reply::BadFormat,
    };
    match added {
        Ok(id) => Reply::data("info", id_list(&[id])),
        Err(e) => Reply::Failed(e.to_string()),
    }
}

/// Ids and types of a `get-info`/`get-status` request, or `None` for
/// bad-format. Non-integer ids are skipped (PROTOCOL.md 4).
fn ids_and_types(value: &Value) -> Option<(Vec<u64>, &[Value])> {
    value.as_dict()?;
    let ids = value.get("id")?.as_list()?;
    let types = match value.get("type") {
        None => &[][..],
        Some(t) => t.as_list()?,
    };
    let ids = ids
        .iter()
        .filter_map(Value::as_int)
        .filter_map(|i| u64::try_from(i).ok())
        .collect();
    Some((ids, types))
}

type Describe = fn(&Torrent, &str) -> Option<Value>;

/// One dict per known torrent, with `id` and each known requested type.
/// Types are resolved, deduplicated and sorted once, so each torrent's
/// dict is built in canonical order with borrowed keys.
fn describe(
    reg: &Registry,
    ids: impl Iterator<Item = u64>,
    types: &[Value],
    known: &[&'static str],
    f: Describe,
) -> Value {
    let mut keys: Vec<&'static str> = types
        .iter()
        .filter_map(Value::as_str)
        .filter_map(|ty| known.iter().find(|k| **k == ty).copied())
        .chain(["id"])
        .collect();
    keys.sort_unstable();
    keys.dedup();
    let list = ids
        .filter_map(|id| reg.torrents().get(id))
        .map(|t| {
            let mut pairs = Vec::with_capacity(keys.len());
            for &key in &keys {
                let value = match key {
                    "id" => Some(Value::Int(t.id as i64)),
                    _ => f(t, key),
                };
                if let Some(v) = value {
                    pairs.push((key.into_key(), v));
                }
            }
            Value::Dict(pairs)
        })
        .collect();
    Value::List(list)
}

/// What `get-info` and `get-status` (and their `-all`) share: the reply
/// key, the known types and how to read one.
struct Kind {
    reply: &'static str,
    known: &'static [&'static str],
    field: Describe,
}

const INFO: Kind = Kind {
    reply: "info",
    known: INFO_TYPES,
    field: info_field,
};

const STATUS: Kind = Kind {
    reply: "status",
    known: STATUS_TYPES,
    field: status_field,
};

/// `get-info`/`get-status`: the torrents of a `{id, type}` dict.
fn some(ctx: &Ctx<'_>, value: &Value, kind: &Kind) -> Reply {
    match ids_and_types(value) {
        Some((ids, types)) => Reply::data(
            kind.reply,
            describe(ctx.registry, ids.into_iter(), types, kind.known, kind.field),
        ),
        None => Reply::BadFormat,
    }
}

/// `get-info-all`/`get-status-all`: every torrent, a list of types.
fn all(ctx: &Ctx<'_>, value: &Value, kind: &Kind) -> Reply {
    match value.as_list() {
        Some(types) => {
            let ids = ctx.registry.ids();
            Reply::data(
                kind.reply,
                describe(ctx.registry, ids.into_iter(), types, kind.known, kind.field),
            )
        }
        None => Reply::BadFormat,
    }
}

fn get_info(ctx: &mut Ctx<'_>, value: &Value) -> Reply {
    some(ctx, value, &INFO)
}

fn get_info_all(ctx: &mut Ctx<'_>, value: &Value) -> Reply {
    all(ctx, value, &INFO)
}

fn get_status(ctx: &mut Ctx<'_>, value: &Value) -> Reply {
    some(ctx, value, &STATUS)
}

fn get_status_all(ctx: &mut Ctx<'_>, value: &Value) -> Reply {
    all(ctx, value, &STATUS)
}

fn lookup(ctx: &mut Ctx<'_>, value: &Value) -> Reply {
    let Some(hashes) = value.as_list() else {
        return Reply::BadFormat;
    };
    let mut parsed = Vec::with_capacity(hashes.len());
    for h in hashes {
        match h.as_bytes().and_then(parse_hash) {
            Some(h) => parsed.push(h),
            None => return Reply::BadFormat,
        }
    }
    let found = parsed
        .iter()
        .filter_map(|h| ctx.registry.torrents().lookup(h))
        .map(|id| {
            let hash = ctx
                .registry
                .torrents()
                .get(id)
                .map(|t| t.hash_hex())
                .unwrap_or_default();
            Value::dict([("hash", Value::from(hash)), ("id", Value::Int(id as i64))])
        })
        .collect();
    Reply::data("info", Value::List(found))
}

/// The ids of a `start`/`stop`/`remove` list; a non-integer is
/// bad-format, and then nothing is done.
fn act_on_ids(ctx: &mut Ctx<'_>, value: &Value, act: fn(&mut Registry, u64)) -> Reply {
    let Some(list) = value.as_list() else {
        return Reply::BadFormat;
    };
    if list.iter().any(|v| v.as_int().is_none()) {
        return Reply::BadFormat;
    }
    for id in list.iter().filter_map(Value::as_int) {
        if let Ok(id) = u64::try_from(id) {
            act(ctx.registry, id);
        }
    }
    Reply::Done
}

fn act_on_all(ctx: &mut Ctx<'_>, act: fn(&mut Registry, u64)) -> Reply {
    for id in ctx.registry.ids() {
        act(ctx.registry, id);
    }
    Reply::Done
}

fn start(ctx: &mut Ctx<'_>, v: &Value) -> Reply {
    act_on_ids(ctx, v, Registry::start)
}

fn stop(ctx: &mut Ctx<'_>, v: &Value) -> Reply {
    act_on_ids(ctx, v, Registry::stop)
}

fn remove(ctx: &mut Ctx<'_>, v: &Value) -> Reply {
    act_on_ids(ctx, v, Registry::remove)
}

/// Protocol 1.20: checks the listed torrents' data again.
fn verify(ctx: &mut Ctx<'_>, v: &Value) -> Reply {
    act_on_ids(ctx, v, Registry::verify)
}

fn start_all(ctx: &mut Ctx<'_>, _: &Value) -> Reply {
    act_on_all(ctx, Registry::start)
}

fn stop_all(ctx: &mut Ctx<'_>, _: &Value) -> Reply {
    act_on_all(ctx, Registry::stop)
}

fn remove_all(ctx: &mut Ctx<'_>, _: &Value) -> Reply {
    act_on_all(ctx, Registry::remove)
}
