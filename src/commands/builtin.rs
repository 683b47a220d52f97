//! Built-in keys that do not concern torrents: settings, `noop`,
//! `get-supported`, `quit`.

use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

use super::{Builtin, Ctx, Reply};
use crate::codec::Value;
use crate::registry::{Encryption, Settings};

/// Key, lowest protocol version, handler.
pub(super) const BUILTINS: &[(&str, u8, Builtin)] = &[
    ("noop", 2, noop),
    ("quit", 1, quit),
    ("get-supported", 2, get_supported),
    ("port", 2, set_port),
    ("get-port", 2, get_port),
    ("automap", 2, set_automap),
    ("get-automap", 2, get_automap),
    ("autostart", 2, set_autostart),
    ("get-autostart", 2, get_autostart),
    ("pex", 2, set_pex),
    ("get-pex", 2, get_pex),
    ("dht", 2, set_dht),
    ("get-dht", 2, get_dht),
    ("get-dht-stats", 2, get_dht_stats),
    ("downlimit", 2, set_downlimit),
    ("get-downlimit", 2, get_downlimit),
    ("uplimit", 2, set_uplimit),
    ("get-uplimit", 2, get_uplimit),
    ("directory", 2, set_directory),
    ("get-directory", 2, get_directory),
    ("encryption", 2, set_encryption),
    ("get-encryption", 2, get_encryption),
];

fn noop(_: &mut Ctx<'_>, _: &Value) -> Reply {
    Reply::Done
}

fn quit(ctx: &mut Ctx<'_>, _: &Value) -> Reply {
    ctx.control.quit = true;
    Reply::Done
}

fn get_supported(ctx: &mut Ctx<'_>, value: &Value) -> Reply {
    let Some(keys) = value.as_list() else {
        return Reply::BadFormat;
    };
    let mut supported = Vec::with_capacity(keys.len());
    for key in keys {
        let Some(k) = key.as_bytes() else {
            return Reply::BadFormat;
        };
        if ctx.table.contains(k) {
            supported.push(key.clone());
        }
    }
    Reply::data("supported", Value::List(supported))
}

/// Applies an integer setting, or answers bad-format.
fn set_int(ctx: &mut Ctx<'_>, value: &Value, apply: fn(&mut Settings, i64) -> bool) -> Reply {
    match value.as_int() {
        Some(i) => {
            let mut ok = true;
            ctx.registry.update_settings(|s| ok = apply(s, i));
            if ok {
                Reply::Done
            } else {
                Reply::BadFormat
            }
        }
        None => Reply::BadFormat,
    }
}

fn set_port(ctx: &mut Ctx<'_>, v: &Value) -> Reply {
    set_int(ctx, v, |s, i| match u16::try_from(i) {
        Ok(p) => {
            s.port = p;
            true
        }
        Err(_) => false,
    })
}

fn set_automap(ctx: &mut Ctx<'_>, v: &Value) -> Reply {
    set_int(ctx, v, |s, i| {
        s.automap = i != 0;
        true
    })
}

fn set_autostart(ctx: &mut Ctx<'_>, v: &Value) -> Reply {
    set_int(ctx, v, |s, i| {
        s.autostart = i != 0;
        true
    })
}

fn set_pex(ctx: &mut Ctx<'_>, v: &Value) -> Reply {
    set_int(ctx, v, |s, i| {
        s.pex = i != 0;
        true
    })
}

/// tripcd's own, in the style of `pex`: the DHT on (1) or off (0).
fn set_dht(ctx: &mut Ctx<'_>, v: &Value) -> Reply {
    set_int(ctx, v, |s, i| {
        s.dht = i != 0;
        true
    })
}

fn set_downlimit(ctx: &mut Ctx<'_>, v: &Value) -> Reply {
    set_int(ctx, v, |s, i| {
        s.downlimit = i;
        true
    })
}

fn set_uplimit(ctx: &mut Ctx<'_>, v: &Value) -> Reply {
    set_int(ctx, v, |s, i| {
        s.uplimit = i;
        true
    })
}

fn set_directory(ctx: &mut Ctx<'_>, v: &Value) -> Reply {
    let Some(dir) = v.as_bytes() else {
        return Reply::BadFormat;
    };
    if dir.first() != Some(&b'/') {
        return Reply::Failed(format!(
            "directory must be an absolute path, not {:?}",
            String::from_utf8_lossy(dir)
        ));
    }
    if dir.contains(&0) {
        return Reply::Failed("directory contains a NUL byte".into());
    }
    let dir = PathBuf::from(std::ffi::OsString::from_vec(dir.to_vec()));
    ctx.registry.update_settings(|s| s.directory = dir);
    Reply::Done
}

/// Protocol 1.06's spellings and 1.20's `tolerated`; the spelling is kept,
/// so `get-encryption` echoes the one used last.
fn set_encryption(ctx: &mut Ctx<'_>, v: &Value) -> Reply {
    match v.as_bytes().and_then(Encryption::parse) {
        Some(mode) => {
            ctx.registry.update_settings(|s| s.encryption = mode);
            Reply::Done
        }
        None => Reply::BadFormat,
    }
}

fn get_port(ctx: &mut Ctx<'_>, _: &Value) -> Reply {
    Reply::data("port", Value::Int(ctx.registry.settings().port.into()))
}

fn get_automap(ctx: &mut Ctx<'_>, _: &Value) -> Reply {
    Reply::data(
        "automap",
        Value::Int(ctx.registry.settings().automap.into()),
    )
}

fn get_autostart(ctx: &mut Ctx<'_>, _: &Value) -> Reply {
    Reply::data(
        "autostart",
        Value::Int(ctx.registry.settings().autostart.into()),
    )
}

fn get_pex(ctx: &mut Ctx<'_>, _: &Value) -> Reply {
    Reply::data("pex", Value::Int(ctx.registry.settings().pex.into()))
}

fn get_dht(ctx: &mut Ctx<'_>, _: &Value) -> Reply {
    Reply::data("dht", Value::Int(ctx.registry.settings().dht.into()))
}

/// Where the DHT node stands, as the core last reported it (about once a
/// second, and at every change it hears of).
fn get_dht_stats(ctx: &mut Ctx<'_>, _: &Value) -> Reply {
    let d = ctx.registry.dht();
    let int = |n: u64| Value::Int(i64::try_from(n).unwrap_or(i64::MAX));
    Reply::data(
        "dht-stats",
        Value::dict([
            ("buckets", int(d.buckets as u64)),
            ("good-nodes", int(d.good_nodes as u64)),
            ("lookups", int(d.lookups as u64)),
            ("packets-in", int(d.packets_in)),
            ("packets-out", int(d.packets_out)),
            ("queries-answered", int(d.queries_answered)),
            ("queries-refused", int(d.queries_refused)),
            ("questionable-nodes", int(d.questionable_nodes as u64)),
            ("running", Value::Int(d.running.into())),
            ("stored-hashes", int(d.stored_hashes as u64)),
        ]),
    )
}

fn get_downlimit(ctx: &mut Ctx<'_>, _: &Value) -> Reply {
    Reply::data("downlimit", Value::Int(ctx.registry.settings().downlimit))
}

fn get_uplimit(ctx: &mut Ctx<'_>, _: &Value) -> Reply {
    Reply::data("uplimit", Value::Int(ctx.registry.settings().uplimit))
}

fn get_directory(ctx: &mut Ctx<'_>, _: &Value) -> Reply {
    let dir = ctx.registry.settings().directory.as_os_str().as_bytes();
    Reply::data("directory", Value::Bytes(dir.to_vec()))
}

fn get_encryption(ctx: &mut Ctx<'_>, _: &Value) -> Reply {
    let mode = ctx.registry.settings().encryption;
    Reply::data("encryption", Value::str(mode.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::{CommandTable, Control};
    use crate::registry::Registry;

    /// Runs `handler` on a registry, as the dispatcher would.
    fn run(reg: &mut Registry, handler: super::super::Builtin, value: &Value) -> Reply {
        let table = CommandTable::builtin();
        let mut control = Control::default();
        let mut ctx = Ctx {
            registry: reg,
            table: &table,
            control: &mut control,
            tagged: true,
        };
        handler(&mut ctx, value)
    }

    #[test]
    fn encryption_echoes_the_spelling_used_last() {
        let dir = tempfile::tempdir().unwrap();
        let mut reg = Registry::open(dir.path(), Settings::defaults("/dl".into())).unwrap();
        let get = |reg: &mut Registry| run(reg, get_encryption, &Value::empty());
        let mode = |m: &str| Reply::data("encryption", Value::str(m));
        assert_eq!(get(&mut reg), mode("preferred"));
        for word in [
            "required",
            "tolerated",
            "plaintext",
            "preferred",
            "tolerated",
        ] {
            assert_eq!(
                run(&mut reg, set_encryption, &Value::str(word)),
                Reply::Done
            );
            assert_eq!(get(&mut reg), mode(word));
        }
        for bad in [
            Value::str("none"),
            Value::str("Required"),
            Value::Int(1),
            Value::List(vec![]),
        ] {
            assert_eq!(run(&mut reg, set_encryption, &bad), Reply::BadFormat);
        }
        assert_eq!(get(&mut reg), mode("tolerated"), "unchanged by refusals");
    }
}
