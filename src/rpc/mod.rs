//! Transmission's JSON RPC, the method layer: a request's bytes in, the
//! reply's bytes out, run against the same command service as the IPC
//! (the same registry, the same scripts' hooks, the same commit rule).
//! No HTTP here: the HTTP front hands each `POST /transmission/rpc` body
//! to [`dispatch`] and writes the [`RpcReply`] back.
//!
//! The dialect is Transmission 4.0.6's (`rpc-version` 17), which keeps
//! the names every older client sends (the 3.00 web interface,
//! transmission-remote). A request is `{"method", "arguments", "tag"}`;
//! the reply is `{"arguments", "result", "tag"}` with `result` `success`
//! or what went wrong, and `tag` echoed when given. A request that is not
//! JSON, names an unknown method or gives an argument of the wrong type
//! changes nothing and says why.
//!
//! Whether the reply waits for the disk is decided as
//! [`crate::service::Service`] decides it for the IPC: exactly when the
//! registry's change counter moved while the method ran; it waits for the
//! peer port's bind too when the port setting moved.
//!
//! tripcd's own method `tripcd-script-call` (`{"key", "value"}`) runs a
//! script key, JSON in and out through [`crate::codec::json`].

mod call;
mod data;
mod fields;
mod ids;
mod json;
mod session;
mod torrent;

#[cfg(test)]
mod tests;

use serde_json::Value;

use crate::service::Service;
use call::{Call, Method, Outcome};
pub use call::{
    Context, DiskSpace, PendingAdd, RpcSettings, RPC_VERSION, RPC_VERSION_MINIMUM,
    RPC_VERSION_SEMVER,
};
pub use data::DataRemoval;
use json::{Args, Out};

/// The largest request body read, in bytes: a base64 metainfo file at
/// the metainfo limit (32 MiB, so 43 MiB encoded) and room for the rest.
/// The HTTP layer's body limit is the same.
pub const MAX_REQUEST_BYTES: usize = 48 << 20;

/// The largest reply written, in bytes. The web interface's fullest poll
/// of 10,000 torrents (the 46 fields of its list and inspector, two
/// trackers' stats each) is about 16 MB; this is four times that. A reply
/// that would be larger is refused, with a result saying to ask for less.
pub const MAX_REPLY_BYTES: usize = 64 << 20;

/// A reply, and what the front must do with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcReply {
    /// The JSON response.
    pub body: Vec<u8>,
    /// The request's tag, for [`failed`] when a held reply must be
    /// rewritten.
    pub tag: Option<i64>,
    /// The method changed the registry: hold the reply until the turn's
    /// commit, and if that fails send [`failed`] with its reason instead.
    pub durable: bool,
    /// The method moved the peer port: hold the reply until the port is
    /// bound again too, and send [`failed`] with the reason if it was not.
    pub rebinds: bool,
    /// Torrents to announce now (`torrent-reannounce`): the core's
    /// business, asked for when the reply is sent.
    pub reannounce: Vec<u64>,
    /// Data to delete once the removal is durable and the core has
    /// stopped the torrents (`torrent-remove` with `delete-local-data`):
    /// run each, and if one fails, send [`failed`] with its reason.
    pub delete_data: Vec<DataRemoval>,
}

/// What [`dispatch`] made of a request.
#[derive(Debug)]
pub enum Handled {
    /// The reply.
    Reply(RpcReply),
    /// `torrent-add` of an http(s) URL: fetch it (at most
    /// [`crate::registry::metainfo::MAX_METAINFO_BYTES`], with
    /// [`PendingAdd::cookies`] if any), then call [`finish_fetch`].
    Fetch {
        /// What to fetch.
        url: String,
        /// The rest of the request.
        request: PendingAdd,
    },
}

/// Every method, sorted by name.
const METHODS: &[(&str, Method)] = &[
    ("blocklist-update", session::blocklist_update),
    ("free-space", session::free_space),
    ("group-get", session::group_get),
    ("group-set", session::group_set),
    ("port-test", session::port_test),
    ("queue-move-bottom", torrent::queue_move),
    ("queue-move-down", torrent::queue_move),
    ("queue-move-top", torrent::queue_move),
    ("queue-move-up", torrent::queue_move),
    ("session-close", session::close),
    ("session-get", session::get),
    ("session-set", session::set),
    ("session-stats", session::stats),
    ("torrent-add", torrent::add),
    ("torrent-get", torrent::get),
    ("torrent-reannounce", torrent::reannounce),
    ("torrent-remove", torrent::remove),
    ("torrent-rename-path", torrent::rename_path),
    ("torrent-set", torrent::set),
    ("torrent-set-location", torrent::set_location),
    ("torrent-start", torrent::start),
    ("torrent-start-now", torrent::start),
    ("torrent-stop", torrent::stop),
    ("torrent-verify", torrent::verify),
    ("tripcd-script-call", session::script_call),
];

fn method(name: &str) -> Option<Method> {
    METHODS
        .binary_search_by(|(n, _)| (*n).cmp(name))
        .ok()
        .and_then(|i| METHODS.get(i))
        .map(|(_, m)| *m)
}

/// The reply prefix before the arguments: `{"arguments":`.
const ARGUMENTS_AT: usize = 13;

/// Runs one request body against the service.
pub fn dispatch(svc: &mut Service, body: &[u8], ctx: &Context<'_>) -> Handled {
    let request = match parse(body) {
        Ok(r) => r,
        Err((tag, why)) => return Handled::Reply(refusal(tag, &why)),
    };
    svc.registry_mut().set_wall_clock(ctx.wall_secs());
    let Some(method) = method(&request.method) else {
        return Handled::Reply(refusal(request.tag, "method name not recognized"));
    };
    let args = Args::new(request.arguments.as_ref().and_then(Value::as_object));
    run(svc, ctx, request.tag, method, args, MAX_REPLY_BYTES)
}

/// Adds the torrent fetched for a `torrent-add` ([`Handled::Fetch`]), or
/// says why it could not be fetched.
pub fn finish_fetch(
    svc: &mut Service,
    fetched: Result<Vec<u8>, String>,
    request: PendingAdd,
    ctx: &Context<'_>,
) -> RpcReply {
    svc.registry_mut().set_wall_clock(ctx.wall_secs());
    let tag = request.tag();
    let handled = run(
        svc,
        ctx,
        tag,
        move |call| torrent::add_fetched(call, fetched, request),
        Args::new(None),
        MAX_REPLY_BYTES,
    );
    match handled {
        Handled::Reply(r) => r,
        // add_fetched never asks for another fetch.
        Handled::Fetch { request, .. } => refusal(request.tag(), "fetch loop refused"),
    }
}

/// The reply to a request whose change could not be made durable (or
/// whose port could not be bound, or whose data could not be deleted):
/// `result` says why, nothing else is claimed.
pub fn failed(tag: Option<i64>, reason: &str) -> Vec<u8> {
    refusal(tag, reason).body
}

/// Runs `method` with the durability rule around it, its reply at most
/// `limit` bytes.
fn run(
    svc: &mut Service,
    ctx: &Context<'_>,
    tag: Option<i64>,
    method: impl FnOnce(&mut Call<'_, '_>) -> Result<Outcome, String>,
    args: Args<'_>,
    limit: usize,
) -> Handled {
    let before = {
        let reg = svc.registry();
        (reg.changes(), reg.settings().port)
    };
    let mut out = Out::new(limit);
    out.open_object();
    out.key("arguments");
    out.open_object();
    let mut call = Call {
        svc,
        ctx,
        args,
        tag,
        out: &mut out,
        reannounce: Vec::new(),
        delete_data: Vec::new(),
    };
    let outcome = method(&mut call);
    let (reannounce, delete_data) = (call.reannounce, call.delete_data);
    let result = match outcome {
        Ok(Outcome::Fetch(url, request)) => return Handled::Fetch { url, request },
        Ok(Outcome::Done) if out.over() => Err(format!(
            "the reply would be over {limit} bytes: ask for fewer torrents or fields"
        )),
        Ok(Outcome::Done) => Ok(()),
        Err(e) => Err(e),
    };
    if result.is_err() {
        // A failed method's partial arguments are not sent.
        out.truncate(ARGUMENTS_AT, 1);
        out.open_object();
    }
    out.close_object();
    out.str_member(
        "result",
        result.as_ref().err().map_or("success", String::as_str),
    );
    if let Some(tag) = tag {
        out.int_member("tag", tag);
    }
    out.close_object();
    let reg = svc.registry();
    Handled::Reply(RpcReply {
        body: out.into_bytes(),
        tag,
        durable: reg.changes() != before.0,
        rebinds: reg.settings().port != before.1,
        reannounce,
        delete_data,
    })
}

/// A reply saying only why nothing was done.
fn refusal(tag: Option<i64>, why: &str) -> RpcReply {
    let mut out = Out::new(usize::MAX);
    out.open_object();
    out.key("arguments");
    out.open_object();
    out.close_object();
    out.str_member("result", why);
    if let Some(tag) = tag {
        out.int_member("tag", tag);
    }
    out.close_object();
    RpcReply {
        body: out.into_bytes(),
        tag,
        durable: false,
        rebinds: false,
        reannounce: Vec::new(),
        delete_data: Vec::new(),
    }
}

/// A request's envelope.
struct Request {
    method: String,
    arguments: Option<Value>,
    tag: Option<i64>,
}

/// Reads the envelope; an error carries the tag when it could be read.
fn parse(body: &[u8]) -> Result<Request, (Option<i64>, String)> {
    if body.len() > MAX_REQUEST_BYTES {
        return Err((
            None,
            format!(
                "request of {} bytes, over the {MAX_REQUEST_BYTES} allowed",
                body.len()
            ),
        ));
    }
    if json::value_count(body) > json::MAX_JSON_VALUES {
        return Err((
            None,
            format!("request of more than {} JSON values", json::MAX_JSON_VALUES),
        ));
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| (None, format!("request is not valid JSON: {e}")))?;
    let Value::Object(mut map) = v else {
        return Err((None, "request is not a JSON object".into()));
    };
    let tag = match map.get("tag") {
        None => None,
        Some(t) => Some(json::as_int(t).ok_or((None, "tag must be an integer".to_string()))?),
    };
    let method = match map.remove("method") {
        Some(Value::String(m)) => m,
        Some(_) => return Err((tag, "method must be a string".into())),
        None => return Err((tag, "no method name".into())),
    };
    let arguments = map.remove("arguments");
    if arguments.as_ref().is_some_and(|a| !a.is_object()) {
        return Err((tag, "arguments must be an object".into()));
    }
    Ok(Request {
        method,
        arguments,
        tag,
    })
}
