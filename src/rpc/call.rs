//! What every method sees: the context given by the front, the call in
//! progress, and the argument checks the methods share.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::data::DataRemoval;
use super::json::{Args, Out};
use crate::service::Service;

/// The RPC version spoken (Transmission 4.0's).
pub const RPC_VERSION: i64 = 17;

/// The oldest RPC version whose clients this one serves (Transmission
/// 4.0's figure: nothing removed since 14).
pub const RPC_VERSION_MINIMUM: i64 = 14;

/// `rpc-version-semver` for version 17.
pub const RPC_VERSION_SEMVER: &str = "5.3.0";

/// Free and total bytes of a file system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskSpace {
    /// Bytes free to an unprivileged user.
    pub free: u64,
    /// Bytes in all.
    pub total: u64,
}

/// How the HTTP front is set up, shown read-only by `session-get` (the
/// names of Transmission's settings file).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RpcSettings {
    /// `rpc-enabled`.
    pub enabled: bool,
    /// `rpc-port`.
    pub port: u16,
    /// `rpc-url`: the path prefix, e.g. `/transmission/`.
    pub url: String,
    /// `rpc-authentication-required`.
    pub authentication_required: bool,
    /// `rpc-whitelist-enabled`.
    pub whitelist_enabled: bool,
    /// `rpc-whitelist`: the client addresses allowed, as patterns.
    pub whitelist: Vec<String>,
    /// `rpc-host-whitelist-enabled`.
    pub host_whitelist_enabled: bool,
    /// `rpc-host-whitelist`: the host names allowed.
    pub host_whitelist: Vec<String>,
}

/// What the method layer needs besides the service: the time, and facts
/// the front and the daemon own.
pub struct Context<'a> {
    /// Now, for durations.
    pub now: Instant,
    /// Now, for dates.
    pub wall: SystemTime,
    /// When the daemon started (`session-stats`' seconds active).
    pub started: Instant,
    /// The daemon's `version` string.
    pub version: &'a str,
    /// The free and total space of the file system holding a path
    /// (`free-space`; a statvfs(2), which is the front's to make).
    pub free_space: &'a dyn Fn(&Path) -> io::Result<DiskSpace>,
    /// The HTTP front's settings.
    pub rpc: &'a RpcSettings,
    /// The session id the HTTP front's CSRF guard hands out.
    pub session_id: &'a str,
    /// The peer port's sockets are bound now.
    pub peer_port_bound: bool,
    /// Peers connected in all, at most.
    pub peer_limit_global: u64,
    /// Peers connected per torrent, at most.
    pub peer_limit_per_torrent: u64,
}

impl Context<'_> {
    /// The wall clock in seconds since the epoch (0 before it).
    pub fn wall_secs(&self) -> i64 {
        self.wall
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
    }
}

/// What a method did besides writing its arguments.
pub enum Outcome {
    /// Answered.
    Done,
    /// A URL to fetch before the torrent can be added.
    Fetch(String, PendingAdd),
}

/// One method call in progress.
pub struct Call<'a, 'c> {
    pub svc: &'a mut Service,
    pub ctx: &'a Context<'c>,
    pub args: Args<'a>,
    /// The request's tag.
    pub tag: Option<i64>,
    /// The reply's `arguments` object, open.
    pub out: &'a mut Out,
    pub reannounce: Vec<u64>,
    pub delete_data: Vec<DataRemoval>,
}

/// A method: writes its arguments into the open object, or says what
/// went wrong.
pub type Method = fn(&mut Call<'_, '_>) -> Result<Outcome, String>;

/// The options of a `torrent-add` that apply once its metainfo is at
/// hand (kept across a fetch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingAdd {
    pub(super) tag: Option<i64>,
    pub(super) directory: Option<PathBuf>,
    pub(super) paused: Option<bool>,
    pub(super) labels: Option<Vec<String>>,
    pub(super) cookies: Option<String>,
}

impl PendingAdd {
    /// The request's tag.
    pub fn tag(&self) -> Option<i64> {
        self.tag
    }

    /// Cookies to send with the fetch (`NAME=VALUE; ...`), as the client
    /// gave them.
    pub fn cookies(&self) -> Option<&str> {
        self.cookies.as_deref()
    }
}

/// The one value a fixed setting takes.
#[derive(Clone, Copy)]
pub enum Fixed {
    /// An integer, one of these.
    Int(&'static [i64]),
    /// A boolean.
    Bool(bool),
    /// A number.
    Real(f64),
    /// A string.
    Str(&'static str),
}

/// Checks `key`, if given, against its one value.
pub fn check_fixed(a: Args<'_>, key: &str, fixed: Fixed, feature: &str) -> Result<(), String> {
    let same = match fixed {
        Fixed::Int(ok) => a.int(key)?.map(|v| ok.contains(&v)),
        Fixed::Bool(ok) => a.bool(key)?.map(|v| v == ok),
        Fixed::Real(ok) => a.real(key)?.map(|v| v == ok),
        Fixed::Str(ok) => a.str(key)?.map(|v| v == ok),
    };
    match same {
        Some(false) => Err(format!("tripcd has no {feature} ({key})")),
        _ => Ok(()),
    }
}

/// A path argument: absolute, no NUL byte.
pub fn absolute_path(key: &str, p: &str) -> Result<PathBuf, String> {
    if p.contains('\0') {
        return Err(format!("argument \"{key}\" contains a NUL byte"));
    }
    let path = PathBuf::from(p);
    if !path.is_absolute() {
        return Err(format!(
            "argument \"{key}\" is not an absolute path: {:?}",
            super::ids::clip(p)
        ));
    }
    Ok(path)
}
