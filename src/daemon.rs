//! Start-up and shutdown around the reactor: the state directory and its
//! lock, the socket file (or the socket a service manager passed), the
//! open-file limit, the service manager's notifications.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::Path;

use log::{info, warn};
use nix::fcntl::{Flock, FlockArg};
use nix::sys::stat::{umask, Mode};

use crate::access::Policy;
pub use crate::config::Config;
use crate::front::FrontKind;
use crate::notify::Notifier;
use crate::reactor::{Admit, Exit, FrontListener, ListenSocket, Reactor};
use crate::registry::{Registry, Settings};
use crate::server::Server;
use crate::service::Service;
use crate::sys::{Activated, ActivatedSocket};

/// Why the daemon could not start or run.
#[derive(Debug)]
pub struct DaemonError(pub String);

impl fmt::Display for DaemonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DaemonError {}

fn err(context: impl fmt::Display, e: impl fmt::Display) -> DaemonError {
    DaemonError(format!("{context}: {e}"))
}

/// Runs the daemon until `quit` or SIGINT/SIGTERM.
///
/// Under a service manager: serves the socket it passed (`LISTEN_FDS`)
/// instead of binding one, and reports readiness, status and watchdog
/// pings to `NOTIFY_SOCKET` (see [`crate::notify`]).
pub fn run(config: &Config) -> Result<Exit, DaemonError> {
    // First, before any descriptor is opened: fd 3 and up may be the
    // manager's.
    let activated = crate::sys::take_activated_listeners().map_err(DaemonError)?;
    let notifier = Notifier::from_env();
    if !config.has_paths() {
        return Err(DaemonError(
            "HOME is not set; give --state-dir and --download-dir".into(),
        ));
    }
    let state_dir = config.state_dir();
    let socket = config.socket();
    create_private_dir(state_dir)?;
    let _lock = lock_state_dir(state_dir)?;
    let registry = Registry::open(state_dir, Settings::defaults(config.download_dir()))
        .map_err(|e| DaemonError(e.to_string()))?;
    let mut svc = Service::new(registry);
    load_scripts(config, &mut svc)?;
    let capacity = raise_fd_limit();
    let max_clients = config.max_clients.unwrap_or(capacity).min(capacity) as usize;
    let access = Policy {
        own_uid: nix::unistd::getuid().as_raw(),
        allow_uids: config.allow_uids.clone(),
        allow_gids: config.allow_gids.clone(),
    };
    // Passed sockets belong to the manager: their paths, modes and groups
    // are the .socket unit's, and they are never removed here.
    let own_socket = activated.is_empty();
    let listeners = if own_socket {
        let group = config.socket_group.as_deref().map(group_id).transpose()?;
        vec![FrontListener {
            socket: ListenSocket::Unix(bind(&socket, config.socket_mode, group)?),
            kind: FrontKind::Ipc,
            admit: Admit::Credentials(access),
            description: socket.display().to_string(),
        }]
    } else {
        activated
            .into_iter()
            .map(|a| front_of(a, &access))
            .collect::<Result<_, _>>()?
    };
    let serving: Vec<String> = listeners
        .iter()
        .map(|l| match l.kind {
            FrontKind::Ipc => l.description.clone(),
        })
        .collect();
    let server = Server::new(svc, config.clone());
    let result = Reactor::new(listeners, server, max_clients).and_then(|mut reactor| {
        // Only now are signals handled: "ready" means SIGTERM is safe.
        info!(
            "tripcd {} ready on {} (state in {}, room for about {capacity} clients, serving at most {max_clients})",
            env!("CARGO_PKG_VERSION"),
            serving.join(", "),
            state_dir.display(),
        );
        if let Some(n) = notifier {
            reactor.notify_ready(n);
        }
        reactor.run()
    });
    // The socket goes whatever happened, so the next start finds no stale
    // file; a passed one stays, for the manager to hand over again.
    if own_socket {
        if let Err(e) = fs::remove_file(&socket) {
            warn!("cannot remove {}: {e}", socket.display());
        }
    }
    let exit = result.map_err(|e| err("event loop failed", e))?;
    info!("tripcd stopped ({exit:?})");
    Ok(exit)
}

/// The front a passed socket serves, by its kind: a Unix socket is the
/// IPC's. A TCP socket has no front yet.
fn front_of(a: Activated, access: &Policy) -> Result<FrontListener, DaemonError> {
    match a.socket {
        ActivatedSocket::Unix(l) => Ok(FrontListener {
            socket: ListenSocket::Unix(mio::net::UnixListener::from_std(l)),
            kind: FrontKind::Ipc,
            admit: Admit::Credentials(access.clone()),
            description: a.description,
        }),
        ActivatedSocket::Tcp(_) => Err(DaemonError(format!(
            "{} is a TCP socket: tripcd serves only its Unix-socket IPC from passed sockets",
            a.description
        ))),
    }
}

fn load_scripts(config: &Config, svc: &mut Service) -> Result<(), DaemonError> {
    let dir = match &config.scripts {
        Some(dir) if !dir.is_dir() => {
            return Err(DaemonError(format!(
                "scripts directory {} does not exist",
                dir.display()
            )))
        }
        Some(dir) => dir.clone(),
        None => config.state_dir().join("scripts"),
    };
    let files = svc
        .load_scripts(&dir, config.script_limits.clone())
        .map_err(|e| DaemonError(format!("script error: {e}")))?;
    if !files.is_empty() {
        info!(
            "loaded {} script(s) from {}: {}",
            files.len(),
            dir.display(),
            files.join(", ")
        );
    }
    Ok(())
}

fn create_private_dir(dir: &Path) -> Result<(), DaemonError> {
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| err(format_args!("cannot create {}", dir.display()), e))?;
    }
    Ok(())
}

/// Takes the state directory's lock, or says which process holds it.
fn lock_state_dir(dir: &Path) -> Result<Flock<File>, DaemonError> {
    let path = dir.join("lock");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|e| err(format_args!("cannot open {}", path.display()), e))?;
    let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
            let pid = fs::read_to_string(&path).unwrap_or_default();
            return Err(DaemonError(format!(
                "another tripcd (pid {}) is using state directory {}",
                pid.trim(),
                dir.display()
            )));
        }
        Err((_, e)) => return Err(err(format_args!("cannot lock {}", path.display()), e)),
    };
    lock.set_len(0)
        .and_then(|_| writeln!(&*lock, "{}", std::process::id()))
        .and_then(|_| lock.sync_all())
        .map_err(|e| err(format_args!("cannot write {}", path.display()), e))?;
    Ok(lock)
}

/// Binds the socket, replacing a stale socket file left by a dead daemon.
/// A live socket is never stolen, and a path that is not a socket is never
/// deleted.
fn bind(
    path: &Path,
    mode: u32,
    group: Option<nix::unistd::Gid>,
) -> Result<mio::net::UnixListener, DaemonError> {
    if let Some(parent) = path.parent() {
        create_private_dir(parent)?;
    }
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => match StdUnixStream::connect(path) {
            Ok(_) => {
                return Err(DaemonError(format!(
                    "another daemon is listening on {}",
                    path.display()
                )))
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                info!("removing stale socket {}", path.display());
                fs::remove_file(path)
                    .map_err(|e| err(format_args!("cannot remove {}", path.display()), e))?;
            }
            Err(e) => return Err(err(format_args!("cannot probe {}", path.display()), e)),
        },
        Ok(_) => {
            return Err(DaemonError(format!(
                "{} exists and is not a socket; not touching it",
                path.display()
            )))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(format_args!("cannot inspect {}", path.display()), e)),
    }
    // The socket is born owner-only (no window in which others could
    // connect), then given the mode and group asked for.
    let old_umask = umask(Mode::from_bits_truncate(0o177));
    let bound = mio::net::UnixListener::bind(path);
    umask(old_umask);
    let listener =
        bound.map_err(|e| err(format_args!("cannot listen on {}", path.display()), e))?;
    if let Some(gid) = group {
        nix::unistd::chown(path, None, Some(gid))
            .map_err(|e| err(format_args!("cannot set group of {}", path.display()), e))?;
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o777))
        .map_err(|e| err(format_args!("cannot set mode of {}", path.display()), e))?;
    Ok(listener)
}

/// A group by name or number.
fn group_id(name: &str) -> Result<nix::unistd::Gid, DaemonError> {
    if let Ok(n) = name.parse::<u32>() {
        return Ok(nix::unistd::Gid::from_raw(n));
    }
    match nix::unistd::Group::from_name(name) {
        Ok(Some(g)) => Ok(g.gid),
        Ok(None) => Err(DaemonError(format!("no such group: {name}"))),
        Err(e) => Err(err(format_args!("cannot look up group {name}"), e)),
    }
}

/// Raises the open-file soft limit to the hard limit and returns how many
/// clients that leaves room for.
fn raise_fd_limit() -> u64 {
    // Descriptors the daemon keeps for itself: stdio, epoll, listener,
    // signal pipe, lock, files read while verifying.
    crate::sys::raise_fd_limit().saturating_sub(16)
}
