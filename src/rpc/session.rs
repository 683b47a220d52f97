//! The session methods (the spec's section 4) and tripcd's own
//! `tripcd-script-call`.
//!
//! Settings tripcd has are read and written in the registry, the same
//! ones the IPC's keys change (`port`, `downlimit`, `uplimit`,
//! `encryption`, `pex`, `automap`, `autostart`, `directory`) and `dht`.
//! Features tripcd does not have are answered with the value that says
//! so (off, empty, 0: no alternative speeds, blocklist, queues, seed
//! limits, incomplete folder, partial-file names, external scripts, uTP
//! or local peer discovery yet), and setting them to anything else is
//! refused, naming the setting; setting them to that value is accepted
//! (a client writing back what it read). Read-only and unknown names in
//! `session-set` are passed over, as Transmission does.

use std::os::unix::ffi::OsStrExt;

use super::call::{
    absolute_path, check_fixed, Call, Context, Fixed, Outcome, RPC_VERSION, RPC_VERSION_MINIMUM,
    RPC_VERSION_SEMVER,
};
use super::json::{Args, Out};
use crate::codec::json::{from_json, to_json};
use crate::commands::Handler;
use crate::registry::{Encryption, Registry, Settings};
use crate::reply::{Dispatch, Reply};

/// Names one `session-get` may ask for at most: every one there is
/// (about 70) three times over.
pub const MAX_SESSION_FIELDS: usize = 256;

/// The largest speed limit accepted, in KiB/s (4 TiB/s: no limit in
/// practice, and far from overflowing once in bytes).
const MAX_SPEED_LIMIT: i64 = u32::MAX as i64;

/// What a session field's value is read from.
struct Session<'a> {
    reg: &'a Registry,
    ctx: &'a Context<'a>,
}

type Field = fn(&Session<'_>, &mut Out);

/// A limit as the RPC shows it: its number (kept while off) and whether
/// it is on.
fn limit_view(limit: i64, kept: u64) -> (u64, bool) {
    match u64::try_from(limit) {
        Ok(v) => (v, true),
        Err(_) => (kept, false),
    }
}

fn s<'a>(r: &Session<'a>) -> &'a Settings {
    r.reg.settings()
}

/// Every session field, sorted by name.
const FIELDS: &[(&str, Field)] = &[
    // No alternative ("turtle") speed limits.
    ("alt-speed-down", |_, o| o.int(0)),
    ("alt-speed-enabled", |_, o| o.bool(false)),
    ("alt-speed-time-begin", |_, o| o.int(0)),
    ("alt-speed-time-day", |_, o| o.int(0)),
    ("alt-speed-time-enabled", |_, o| o.bool(false)),
    ("alt-speed-time-end", |_, o| o.int(0)),
    ("alt-speed-up", |_, o| o.int(0)),
    // No blocklist.
    ("blocklist-enabled", |_, o| o.bool(false)),
    ("blocklist-size", |_, o| o.int(0)),
    ("blocklist-url", |_, o| o.str("")),
    // No write cache: pieces are hashed from memory and written directly.
    ("cache-size-mb", |_, o| o.int(0)),
    ("config-dir", |r, o| {
        o.bytes(r.reg.dir().as_os_str().as_bytes())
    }),
    ("default-trackers", |_, o| o.str("")),
    ("dht-enabled", |r, o| o.bool(s(r).dht)),
    ("download-dir", |r, o| {
        o.bytes(s(r).directory.as_os_str().as_bytes())
    }),
    // -1 when it cannot be read, as Transmission.
    ("download-dir-free-space", |r, o| {
        let free = (r.ctx.free_space)(&s(r).directory)
            .map_or(-1, |d| i64::try_from(d.free).unwrap_or(i64::MAX));
        o.int(free)
    }),
    // No queues.
    ("download-queue-enabled", |_, o| o.bool(false)),
    ("download-queue-size", |_, o| o.int(0)),
    ("encryption", |r, o| o.str(encryption_name(s(r).encryption))),
    // No idle-seeding limit.
    ("idle-seeding-limit", |_, o| o.int(0)),
    ("idle-seeding-limit-enabled", |_, o| o.bool(false)),
    // Data goes to its final folder from the start.
    ("incomplete-dir", |_, o| o.str("")),
    ("incomplete-dir-enabled", |_, o| o.bool(false)),
    // No local peer discovery yet.
    ("lpd-enabled", |_, o| o.bool(false)),
    ("peer-limit-global", |r, o| o.uint(r.ctx.peer_limit_global)),
    ("peer-limit-per-torrent", |r, o| {
        o.uint(r.ctx.peer_limit_per_torrent)
    }),
    ("peer-port", |r, o| o.uint(s(r).port.into())),
    ("peer-port-random-on-start", |_, o| o.bool(false)),
    ("pex-enabled", |r, o| o.bool(s(r).pex)),
    // The IPC's `automap` setting (kept; see the report).
    ("port-forwarding-enabled", |r, o| o.bool(s(r).automap)),
    ("queue-stalled-enabled", |_, o| o.bool(false)),
    ("queue-stalled-minutes", |_, o| o.int(0)),
    // Files have their final names while they download.
    ("rename-partial-files", |_, o| o.bool(false)),
    ("rpc-authentication-required", |r, o| {
        o.bool(r.ctx.rpc.authentication_required)
    }),
    ("rpc-enabled", |r, o| o.bool(r.ctx.rpc.enabled)),
    ("rpc-host-whitelist", |r, o| {
        o.str(&r.ctx.rpc.host_whitelist.join(","))
    }),
    ("rpc-host-whitelist-enabled", |r, o| {
        o.bool(r.ctx.rpc.host_whitelist_enabled)
    }),
    ("rpc-port", |r, o| o.uint(r.ctx.rpc.port.into())),
    ("rpc-url", |r, o| o.str(&r.ctx.rpc.url)),
    ("rpc-version", |_, o| o.int(RPC_VERSION)),
    ("rpc-version-minimum", |_, o| o.int(RPC_VERSION_MINIMUM)),
    ("rpc-version-semver", |_, o| o.str(RPC_VERSION_SEMVER)),
    ("rpc-whitelist", |r, o| {
        o.str(&r.ctx.rpc.whitelist.join(","))
    }),
    ("rpc-whitelist-enabled", |r, o| {
        o.bool(r.ctx.rpc.whitelist_enabled)
    }),
    // Rhai hooks instead of external scripts.
    ("script-torrent-added-enabled", |_, o| o.bool(false)),
    ("script-torrent-added-filename", |_, o| o.str("")),
    ("script-torrent-done-enabled", |_, o| o.bool(false)),
    ("script-torrent-done-filename", |_, o| o.str("")),
    ("script-torrent-done-seeding-enabled", |_, o| o.bool(false)),
    ("script-torrent-done-seeding-filename", |_, o| o.str("")),
    ("seed-queue-enabled", |_, o| o.bool(false)),
    ("seed-queue-size", |_, o| o.int(0)),
    // No seed ratio limit.
    ("seedRatioLimit", |_, o| o.real(0.0)),
    ("seedRatioLimited", |_, o| o.bool(false)),
    ("session-id", |r, o| o.str(r.ctx.session_id)),
    ("speed-limit-down", |r, o| {
        o.uint(limit_view(s(r).downlimit, s(r).downlimit_kept).0)
    }),
    ("speed-limit-down-enabled", |r, o| {
        o.bool(limit_view(s(r).downlimit, s(r).downlimit_kept).1)
    }),
    ("speed-limit-up", |r, o| {
        o.uint(limit_view(s(r).uplimit, s(r).uplimit_kept).0)
    }),
    ("speed-limit-up-enabled", |r, o| {
        o.bool(limit_view(s(r).uplimit, s(r).uplimit_kept).1)
    }),
    ("start-added-torrents", |r, o| o.bool(s(r).autostart)),
    ("tcp-enabled", |_, o| o.bool(true)),
    // The file a torrent was added from is never deleted.
    ("trash-original-torrent-files", |_, o| o.bool(false)),
    ("units", units),
    // No uTP yet.
    ("utp-enabled", |_, o| o.bool(false)),
    ("version", |r, o| o.str(r.ctx.version)),
];

/// The spec's spelling: both of the IPC's spellings of plaintext allowed
/// are `tolerated`.
fn encryption_name(e: Encryption) -> &'static str {
    match e {
        Encryption::Required => "required",
        Encryption::Preferred => "preferred",
        Encryption::Plaintext | Encryption::Tolerated => "tolerated",
    }
}

/// Speed limits are KiB/s (the daemon's unit); sizes and memory as
/// Transmission shows them.
fn units(_: &Session<'_>, o: &mut Out) {
    let list = |o: &mut Out, names: [&str; 4]| {
        o.open_array();
        for n in names {
            o.str(n);
        }
        o.close_array();
    };
    o.open_object();
    o.key("speed-units");
    list(o, ["KiB/s", "MiB/s", "GiB/s", "TiB/s"]);
    o.int_member("speed-bytes", 1024);
    o.key("size-units");
    list(o, ["kB", "MB", "GB", "TB"]);
    o.int_member("size-bytes", 1000);
    o.key("memory-units");
    list(o, ["KiB", "MiB", "GiB", "TiB"]);
    o.int_member("memory-bytes", 1024);
    o.close_object();
}

/// Every session field's name.
#[cfg(test)]
pub(super) fn field_names() -> impl Iterator<Item = &'static str> {
    FIELDS.iter().map(|(n, _)| *n)
}

fn field(name: &str) -> Option<(&'static str, Field)> {
    FIELDS
        .binary_search_by(|(n, _)| (*n).cmp(name))
        .ok()
        .and_then(|i| FIELDS.get(i).copied())
}

/// `session-get`: every field, or those `fields` names (unknown names
/// are passed over).
pub(super) fn get(c: &mut Call<'_, '_>) -> Result<Outcome, String> {
    let wanted: Vec<(&str, Field)> = match c.args.strings("fields", MAX_SESSION_FIELDS)? {
        None => FIELDS.to_vec(),
        Some(names) => {
            let mut w: Vec<(&str, Field)> = Vec::with_capacity(names.len());
            for (name, f) in names.iter().filter_map(|n| field(n)) {
                if !w.iter().any(|(n, _)| *n == name) {
                    w.push((name, f));
                }
            }
            w
        }
    };
    let reg = c.svc.registry();
    let session = Session {
        reg: &reg,
        ctx: c.ctx,
    };
    for (name, f) in wanted {
        c.out.key(name);
        f(&session, c.out);
    }
    Ok(Outcome::Done)
}

/// Settings tripcd has one value for (see the module's doc).
const FIXED: &[(&str, Fixed, &str)] = &[
    (
        "alt-speed-down",
        Fixed::Int(&[0]),
        "alternative speed limits",
    ),
    (
        "alt-speed-enabled",
        Fixed::Bool(false),
        "alternative speed limits",
    ),
    (
        "alt-speed-time-begin",
        Fixed::Int(&[0]),
        "alternative speed limits",
    ),
    (
        "alt-speed-time-day",
        Fixed::Int(&[0]),
        "alternative speed limits",
    ),
    (
        "alt-speed-time-enabled",
        Fixed::Bool(false),
        "alternative speed limits",
    ),
    (
        "alt-speed-time-end",
        Fixed::Int(&[0]),
        "alternative speed limits",
    ),
    ("alt-speed-up", Fixed::Int(&[0]), "alternative speed limits"),
    ("blocklist-enabled", Fixed::Bool(false), "blocklist"),
    ("blocklist-url", Fixed::Str(""), "blocklist"),
    ("cache-size-mb", Fixed::Int(&[0]), "write cache"),
    ("default-trackers", Fixed::Str(""), "default trackers"),
    (
        "download-queue-enabled",
        Fixed::Bool(false),
        "download queue",
    ),
    ("download-queue-size", Fixed::Int(&[0]), "download queue"),
    ("idle-seeding-limit", Fixed::Int(&[0]), "idle-seeding limit"),
    (
        "idle-seeding-limit-enabled",
        Fixed::Bool(false),
        "idle-seeding limit",
    ),
    (
        "incomplete-dir",
        Fixed::Str(""),
        "folder for incomplete torrents",
    ),
    (
        "incomplete-dir-enabled",
        Fixed::Bool(false),
        "folder for incomplete torrents",
    ),
    (
        "lpd-enabled",
        Fixed::Bool(false),
        "local peer discovery yet",
    ),
    (
        "peer-port-random-on-start",
        Fixed::Bool(false),
        "random peer port",
    ),
    ("queue-stalled-enabled", Fixed::Bool(false), "queue"),
    ("queue-stalled-minutes", Fixed::Int(&[0]), "queue"),
    (
        "rename-partial-files",
        Fixed::Bool(false),
        "partial-file names",
    ),
    (
        "script-torrent-added-enabled",
        Fixed::Bool(false),
        "external scripts (it has Rhai hooks)",
    ),
    (
        "script-torrent-added-filename",
        Fixed::Str(""),
        "external scripts (it has Rhai hooks)",
    ),
    (
        "script-torrent-done-enabled",
        Fixed::Bool(false),
        "external scripts (it has Rhai hooks)",
    ),
    (
        "script-torrent-done-filename",
        Fixed::Str(""),
        "external scripts (it has Rhai hooks)",
    ),
    (
        "script-torrent-done-seeding-enabled",
        Fixed::Bool(false),
        "external scripts (it has Rhai hooks)",
    ),
    (
        "script-torrent-done-seeding-filename",
        Fixed::Str(""),
        "external scripts (it has Rhai hooks)",
    ),
    ("seed-queue-enabled", Fixed::Bool(false), "seed queue"),
    ("seed-queue-size", Fixed::Int(&[0]), "seed queue"),
    ("seedRatioLimit", Fixed::Real(0.0), "seed ratio limit"),
    ("seedRatioLimited", Fixed::Bool(false), "seed ratio limit"),
    ("tcp-enabled", Fixed::Bool(true), "way to turn TCP off"),
    (
        "trash-original-torrent-files",
        Fixed::Bool(false),
        "deleting of added torrent files",
    ),
    ("utp-enabled", Fixed::Bool(false), "uTP yet"),
];

/// A `session-set`, read and checked whole before anything changes.
#[derive(Default)]
struct SessionSet {
    port: Option<u16>,
    down: (Option<u64>, Option<bool>),
    up: (Option<u64>, Option<bool>),
    encryption: Option<Encryption>,
    pex: Option<bool>,
    dht: Option<bool>,
    automap: Option<bool>,
    autostart: Option<bool>,
    directory: Option<std::path::PathBuf>,
}

fn speed(a: Args<'_>, key: &str) -> Result<Option<u64>, String> {
    match a.int(key)? {
        None => Ok(None),
        Some(v) if (0..=MAX_SPEED_LIMIT).contains(&v) => Ok(u64::try_from(v).ok()),
        Some(_) => Err(format!(
            "argument \"{key}\" must be between 0 and {MAX_SPEED_LIMIT} (KiB/s)"
        )),
    }
}

fn parse_set(a: Args<'_>, ctx: &Context<'_>) -> Result<SessionSet, String> {
    for (key, fixed, feature) in FIXED {
        check_fixed(a, key, *fixed, feature)?;
    }
    for (key, value) in [
        ("peer-limit-global", ctx.peer_limit_global),
        ("peer-limit-per-torrent", ctx.peer_limit_per_torrent),
    ] {
        if a.int(key)?
            .is_some_and(|n| u64::try_from(n).ok() != Some(value))
        {
            return Err(format!(
                "tripcd's peer limits are set on its command line ({key} is {value})"
            ));
        }
    }
    let port = match a.int("peer-port")? {
        None => None,
        Some(p) => Some(
            u16::try_from(p)
                .map_err(|_| "argument \"peer-port\" must be between 0 and 65535".to_string())?,
        ),
    };
    let encryption = match a.str("encryption")? {
        None => None,
        Some("required") => Some(Encryption::Required),
        Some("preferred") => Some(Encryption::Preferred),
        Some("tolerated") => Some(Encryption::Tolerated),
        Some(_) => {
            return Err(
                "argument \"encryption\" must be \"required\", \"preferred\" or \"tolerated\""
                    .into(),
            )
        }
    };
    Ok(SessionSet {
        port,
        down: (
            speed(a, "speed-limit-down")?,
            a.bool("speed-limit-down-enabled")?,
        ),
        up: (
            speed(a, "speed-limit-up")?,
            a.bool("speed-limit-up-enabled")?,
        ),
        encryption,
        pex: a.bool("pex-enabled")?,
        dht: a.bool("dht-enabled")?,
        automap: a.bool("port-forwarding-enabled")?,
        autostart: a.bool("start-added-torrents")?,
        directory: a
            .str("download-dir")?
            .map(|d| absolute_path("download-dir", d))
            .transpose()?,
    })
}

/// Applies a limit's new number and switch (either may be absent).
fn set_limit(limit: &mut i64, kept: &mut u64, change: (Option<u64>, Option<bool>)) {
    let (mut value, mut on) = limit_view(*limit, *kept);
    if change.0.is_none() && change.1.is_none() {
        return;
    }
    if let Some(v) = change.0 {
        value = v;
    }
    if let Some(o) = change.1 {
        on = o;
    }
    *kept = value;
    *limit = if on {
        i64::try_from(value).unwrap_or(i64::MAX)
    } else {
        -1
    };
}

/// `session-set`: every change in one update of the settings.
pub(super) fn set(c: &mut Call<'_, '_>) -> Result<Outcome, String> {
    let set = parse_set(c.args, c.ctx)?;
    c.svc.registry_mut().update_settings(|s| {
        if let Some(p) = set.port {
            s.port = p;
        }
        set_limit(&mut s.downlimit, &mut s.downlimit_kept, set.down);
        set_limit(&mut s.uplimit, &mut s.uplimit_kept, set.up);
        if let Some(e) = set.encryption {
            // `tolerated` keeps the IPC's spelling when it means the same.
            if !(e.is_tolerated() && s.encryption.is_tolerated()) {
                s.encryption = e;
            }
        }
        let flags = [
            (set.pex, &mut s.pex),
            (set.dht, &mut s.dht),
            (set.automap, &mut s.automap),
            (set.autostart, &mut s.autostart),
        ];
        for (new, flag) in flags {
            if let Some(v) = new {
                *flag = v;
            }
        }
        if let Some(d) = set.directory {
            s.directory = d;
        }
    });
    Ok(Outcome::Done)
}

/// `session-stats`. Totals are those of the torrents present (tripcd
/// keeps no record of removed ones); "this session" counts from when
/// this run of the daemon came to know each torrent.
pub(super) fn stats(c: &mut Call<'_, '_>) -> Result<Outcome, String> {
    let reg = c.svc.registry();
    let start_secs = c
        .ctx
        .wall_secs()
        .saturating_sub(secs(c.ctx.now.saturating_duration_since(c.ctx.started)));
    let mut t = Stats::default();
    for tor in reg.torrents().iter() {
        let x = &tor.transfer;
        t.count += 1;
        t.running += u64::from(tor.running);
        t.down_rate = t.down_rate.saturating_add(x.download_rate);
        t.up_rate = t.up_rate.saturating_add(x.upload_rate);
        t.downloaded = t.downloaded.saturating_add(x.downloaded);
        t.uploaded = t.uploaded.saturating_add(x.uploaded);
        let (d0, u0) = tor.totals_at_open;
        t.session_downloaded = t
            .session_downloaded
            .saturating_add(x.downloaded.saturating_sub(d0));
        t.session_uploaded = t
            .session_uploaded
            .saturating_add(x.uploaded.saturating_sub(u0));
        t.added_now += u64::from(tor.dates.added >= start_secs && tor.dates.added > 0);
    }
    let active = secs(c.ctx.now.saturating_duration_since(c.ctx.started));
    let o = &mut *c.out;
    o.uint_member("activeTorrentCount", t.running);
    o.uint_member("downloadSpeed", t.down_rate);
    o.uint_member("pausedTorrentCount", t.count - t.running);
    o.uint_member("torrentCount", t.count);
    o.uint_member("uploadSpeed", t.up_rate);
    let block = |o: &mut Out, key: &str, down: u64, added: u64, up: u64| {
        o.key(key);
        o.open_object();
        o.uint_member("downloadedBytes", down);
        o.uint_member("filesAdded", added);
        // tripcd keeps no record of its earlier runs: this one's.
        o.int_member("secondsActive", active);
        o.int_member("sessionCount", 1);
        o.uint_member("uploadedBytes", up);
        o.close_object();
    };
    block(o, "cumulative-stats", t.downloaded, t.count, t.uploaded);
    block(
        o,
        "current-stats",
        t.session_downloaded,
        t.added_now,
        t.session_uploaded,
    );
    Ok(Outcome::Done)
}

fn secs(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

#[derive(Default)]
struct Stats {
    count: u64,
    running: u64,
    down_rate: u64,
    up_rate: u64,
    downloaded: u64,
    uploaded: u64,
    session_downloaded: u64,
    session_uploaded: u64,
    added_now: u64,
}

/// `session-close`: the daemon quits, as on the IPC's `quit`.
pub(super) fn close(c: &mut Call<'_, '_>) -> Result<Outcome, String> {
    c.svc.control.quit = true;
    Ok(Outcome::Done)
}

/// `free-space`.
pub(super) fn free_space(c: &mut Call<'_, '_>) -> Result<Outcome, String> {
    let path = c
        .args
        .str("path")?
        .ok_or("directory path argument is missing")?;
    let dir = absolute_path("path", path)?;
    let space = (c.ctx.free_space)(&dir)
        .map_err(|e| format!("cannot read the free space of {}: {e}", dir.display()))?;
    c.out.str_member("path", path);
    c.out.uint_member("size-bytes", space.free);
    c.out.uint_member("total_size", space.total);
    Ok(Outcome::Done)
}

/// `port-test`: tripcd asks no outside service whether its port can be
/// reached. A port not even bound here is certainly closed; a bound one
/// may or may not be reachable, and the reply says it was not tested.
pub(super) fn port_test(c: &mut Call<'_, '_>) -> Result<Outcome, String> {
    let port = c.svc.registry().settings().port;
    if !c.ctx.peer_port_bound {
        c.out.bool_member("port-is-open", false);
        return Ok(Outcome::Done);
    }
    Err(format!(
        "not tested: tripcd asks no outside service whether peer port {port} can be reached; it is bound here"
    ))
}

/// `blocklist-update`: refused.
pub(super) fn blocklist_update(_: &mut Call<'_, '_>) -> Result<Outcome, String> {
    Err("tripcd has no blocklist (blocklist-update)".into())
}

/// `group-get`: there are no bandwidth groups.
pub(super) fn group_get(c: &mut Call<'_, '_>) -> Result<Outcome, String> {
    if let Some(g) = c.args.get("group") {
        let ok = g.is_string()
            || g.as_array()
                .is_some_and(|l| l.iter().all(|v| v.is_string()));
        if !ok {
            return Err("argument \"group\" must be a string or an array of strings".into());
        }
    }
    c.out.key("group");
    c.out.open_array();
    c.out.close_array();
    Ok(Outcome::Done)
}

/// `group-set`: refused.
pub(super) fn group_set(_: &mut Call<'_, '_>) -> Result<Outcome, String> {
    Err("tripcd has no bandwidth groups (group-set)".into())
}

/// `tripcd-script-call`: `{"key": K, "value": V}` runs script key K on V
/// (JSON as the IPC's values: numbers must be integers, booleans become
/// 0/1, null the empty string); the reply's arguments are `{"key",
/// "value"}` for a data reply, nothing for `succeeded`, and `result`
/// carries a failure. Only script keys: the built-in IPC keys have their
/// RPC methods.
pub(super) fn script_call(c: &mut Call<'_, '_>) -> Result<Outcome, String> {
    let key = c.args.str("key")?.ok_or("argument \"key\" is missing")?;
    let value = match c.args.get("value") {
        None => crate::codec::Value::empty(),
        Some(v) => from_json(v).map_err(|e| format!("argument \"value\": {e}"))?,
    };
    let is_script = c
        .svc
        .table
        .get(key.as_bytes())
        .is_some_and(|cmd| matches!(cmd.handler, Handler::Script(_)));
    if !is_script {
        return Err(format!("no script handles key {:?}", super::ids::clip(key)));
    }
    match c.svc.dispatch(2, key.as_bytes(), &value, true).reply {
        Reply::Done => Ok(Outcome::Done),
        Reply::Data(k, v) => {
            c.out.str_member("key", &k);
            c.out.key("value");
            c.out.value(&to_json(&v));
            Ok(Outcome::Done)
        }
        Reply::Failed(why) => Err(why),
        Reply::BadFormat => Err(format!(
            "script key {key:?} refused the value's shape (bad-format)"
        )),
        Reply::NotSupported => Err(format!("no script handles key {:?}", super::ids::clip(key))),
    }
}
