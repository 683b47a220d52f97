//! The host API: what a script may call.
//!
//! | function | does |
//! |---|---|
//! | `on_message(key, fn)` | handle `key` (top level only) |
//! | `on_event(name, fn)` | hook an event of [`super::EVENTS`] (top level only) |
//! | `succeeded()`, `failed(reason)`, `bad_format()`, `reply(key, value)` | replies |
//! | `log(text)` | an info line in the daemon's log |
//! | `now()` | Unix time, seconds; `uptime()`: seconds since the daemon started |
//! | `settings()` | map of the settings (`port`, `directory`, ...) |
//! | `torrents()` | array of maps: every info and status field, and `id` |
//! | `torrent(id)` | one such map, or `()` |
//! | `start(id)`, `stop(id)` | act on a torrent; `false` if unknown |
//! | `peers(id)` | array of maps: `address`, `client`, `download_rate`, `upload_rate`, `progress` (thousandths), `interested`, `choked`, `peer_interested`, `peer_choked`, `incoming` |

use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

use log::info;
use rhai::{Array, Dynamic, Engine, EvalAltResult, FnPtr, NativeCallContext};

use super::convert::to_dynamic;
use super::host::{settings_map, Collected, Host, EVENTS};
use crate::status::full_description;

/// What a handler asks to send.
#[derive(Debug, Clone)]
pub enum ScriptReply {
    /// `succeeded` (tagged only).
    Succeeded,
    /// `failed` with a reason (tagged only).
    Failed(String),
    /// `bad-format` (tagged only).
    BadFormat,
    /// A data message with its own key.
    Data(String, Dynamic),
}

type Fallible<T> = Result<T, Box<EvalAltResult>>;

fn script_error(ctx: &NativeCallContext, msg: String) -> Box<EvalAltResult> {
    Box::new(EvalAltResult::ErrorRuntime(msg.into(), ctx.call_position()))
}

/// Registers every host function on `engine`.
pub(super) fn register(engine: &mut Engine, host: &Rc<Host>) {
    register_replies(engine);
    register_registration(engine, host);
    register_utilities(engine, host);
    register_state(engine, host);
}

/// `succeeded`, `failed`, `bad_format`, `reply`.
fn register_replies(engine: &mut Engine) {
    engine.register_type_with_name::<ScriptReply>("Reply");
    engine.register_fn("succeeded", || ScriptReply::Succeeded);
    engine.register_fn("failed", |why: Dynamic| {
        ScriptReply::Failed(why.to_string())
    });
    engine.register_fn("bad_format", || ScriptReply::BadFormat);
    engine.register_fn("reply", |key: &str, value: Dynamic| {
        ScriptReply::Data(key.to_string(), value)
    });
}

/// `on_message` and `on_event` (top level only).
fn register_registration(engine: &mut Engine, host: &Rc<Host>) {
    let h = Rc::clone(host);
    engine.register_fn(
        "on_message",
        move |ctx: NativeCallContext, key: &str, f: FnPtr| -> Fallible<()> {
            if key.is_empty() {
                return Err(script_error(
                    &ctx,
                    "on_message needs a non-empty key".into(),
                ));
            }
            collect(&h, &ctx, "on_message", |c| {
                c.keys.push((key.to_string(), f))
            })
        },
    );
    let h = Rc::clone(host);
    engine.register_fn(
        "on_event",
        move |ctx: NativeCallContext, name: &str, f: FnPtr| -> Fallible<()> {
            if !EVENTS.contains(&name) {
                return Err(script_error(
                    &ctx,
                    format!(
                        "unknown event \"{name}\"; events are: {}",
                        EVENTS.join(", ")
                    ),
                ));
            }
            collect(&h, &ctx, "on_event", |c| {
                c.hooks.push((name.to_string(), f))
            })
        },
    );
}

/// `log`, `now`, `uptime`.
fn register_utilities(engine: &mut Engine, host: &Rc<Host>) {
    let h = Rc::clone(host);
    engine.register_fn("log", move |msg: Dynamic| {
        info!("script {}: {msg}", h.current.borrow());
    });
    engine.register_fn("now", || -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64)
    });
    let h = Rc::clone(host);
    engine.register_fn("uptime", move || -> i64 {
        h.started.elapsed().as_secs() as i64
    });
}

/// `settings`, `torrents`, `torrent`, `peers`, `start`, `stop`.
fn register_state(engine: &mut Engine, host: &Rc<Host>) {
    let h = Rc::clone(host);
    engine.register_fn(
        "settings",
        move |ctx: NativeCallContext| -> Fallible<Dynamic> {
            let reg = h.registry.try_borrow().map_err(|_| busy(&ctx))?;
            Ok(Dynamic::from_map(settings_map(&reg)))
        },
    );
    let h = Rc::clone(host);
    engine.register_fn(
        "torrents",
        move |ctx: NativeCallContext| -> Fallible<Array> {
            let reg = h.registry.try_borrow().map_err(|_| busy(&ctx))?;
            Ok(reg
                .torrents()
                .iter()
                .map(|t| to_dynamic(&full_description(t)))
                .collect())
        },
    );
    let h = Rc::clone(host);
    engine.register_fn(
        "torrent",
        move |ctx: NativeCallContext, id: i64| -> Fallible<Dynamic> {
            let reg = h.registry.try_borrow().map_err(|_| busy(&ctx))?;
            Ok(u64::try_from(id)
                .ok()
                .and_then(|id| reg.torrents().get(id))
                .map_or(Dynamic::UNIT, |t| to_dynamic(&full_description(t))))
        },
    );
    let h = Rc::clone(host);
    engine.register_fn(
        "peers",
        move |ctx: NativeCallContext, id: i64| -> Fallible<Array> {
            let reg = h.registry.try_borrow().map_err(|_| busy(&ctx))?;
            let Some(t) = u64::try_from(id).ok().and_then(|id| reg.torrents().get(id)) else {
                return Ok(Array::new());
            };
            Ok(t.transfer.peer_list.iter().map(peer_map).collect())
        },
    );
    let h = Rc::clone(host);
    engine.register_fn(
        "add_magnet",
        move |ctx: NativeCallContext, uri: &str| -> Fallible<i64> {
            let mut reg = h.registry.try_borrow_mut().map_err(|_| busy(&ctx))?;
            let added = reg.add_magnet(uri, None, None);
            added.map(|id| id as i64).map_err(|e| e.to_string().into())
        },
    );
    for (name, act) in [("start", true), ("stop", false)] {
        let h = Rc::clone(host);
        engine.register_fn(
            name,
            move |ctx: NativeCallContext, id: i64| -> Fallible<bool> {
                let mut reg = h.registry.try_borrow_mut().map_err(|_| busy(&ctx))?;
                let Some(id) = u64::try_from(id)
                    .ok()
                    .filter(|id| reg.torrents().get(*id).is_some())
                else {
                    return Ok(false);
                };
                if act {
                    reg.start(id);
                } else {
                    reg.stop(id);
                }
                Ok(true)
            },
        );
    }
}

/// A peer as scripts see it.
fn peer_map(p: &crate::registry::PeerInfo) -> Dynamic {
    let mut m = rhai::Map::new();
    let int = |n: u64| Dynamic::from_int(i64::try_from(n).unwrap_or(i64::MAX));
    m.insert("address".into(), p.address.clone().into());
    m.insert("client".into(), p.client.clone().into());
    m.insert("download_rate".into(), int(p.download_rate));
    m.insert("upload_rate".into(), int(p.upload_rate));
    // Thousandths, an integer: the protocol has no floats to send.
    m.insert("progress".into(), int((p.progress * 1000.0).round() as u64));
    m.insert("interested".into(), p.interested.into());
    m.insert("choked".into(), p.choked.into());
    m.insert("peer_interested".into(), p.peer_interested.into());
    m.insert("peer_choked".into(), p.peer_choked.into());
    m.insert("incoming".into(), p.incoming.into());
    Dynamic::from_map(m)
}

/// Records a registration made by a script's top level; anywhere else
/// (inside a handler) registering is an error.
fn collect(
    host: &Host,
    ctx: &NativeCallContext,
    what: &str,
    add: impl FnOnce(&mut Collected),
) -> Fallible<()> {
    match host.collecting.borrow_mut().as_mut() {
        Some(c) => {
            add(c);
            Ok(())
        }
        None => Err(script_error(
            ctx,
            format!("{what} is only allowed at a script's top level"),
        )),
    }
}

fn busy(ctx: &NativeCallContext) -> Box<EvalAltResult> {
    script_error(
        ctx,
        "the registry is busy (a host function called back into a script)".into(),
    )
}
