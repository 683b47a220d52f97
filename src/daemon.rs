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
use crate::config::SYSTEM_WEB_DIR;
use crate::front::rpc::{RpcFront, RpcOptions};
use crate::front::FrontKind;
use crate::http::guard::parse_list;
use crate::http::{GuardConfig, Limits, PasswordHash};
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
    let mut listeners = if own_socket {
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
            .map(|a| front_of(a, &access, config))
            .collect::<Result<_, _>>()?
    };
    if own_socket && !config.no_rpc {
        listeners.extend(bind_rpc(config)?);
    }
    let serving: Vec<String> = listeners
        .iter()
        .map(|l| match l.kind {
            FrontKind::Ipc => l.description.clone(),
            FrontKind::Rpc => format!("{} (RPC and web interface)", l.description),
        })
        .collect();
    let mut server = Server::new(svc, config.clone());
    if let Some(l) = listeners.iter().find(|l| l.kind == FrontKind::Rpc) {
        server.set_rpc(rpc_front(config, rpc_port(l))?);
    }
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
/// IPC's, a TCP socket the RPC's.
fn front_of(a: Activated, access: &Policy, config: &Config) -> Result<FrontListener, DaemonError> {
    match a.socket {
        ActivatedSocket::Unix(l) => Ok(FrontListener {
            socket: ListenSocket::Unix(mio::net::UnixListener::from_std(l)),
            kind: FrontKind::Ipc,
            admit: Admit::Credentials(access.clone()),
            description: a.description,
        }),
        ActivatedSocket::Tcp(_) if config.no_rpc => Err(DaemonError(format!(
            "{} is a TCP socket for the RPC, but --no-rpc was given",
            a.description
        ))),
        ActivatedSocket::Tcp(l) => Ok(FrontListener {
            socket: ListenSocket::Tcp(mio::net::TcpListener::from_std(l)),
            kind: FrontKind::Rpc,
            admit: Admit::Anyone,
            description: a.description,
        }),
    }
}

/// The RPC's listening socket at `--rpc-bind`. The address given by
/// default is best effort (another daemon may hold 9091: the IPC still
/// serves, and the log says why the RPC does not); one given explicitly
/// must bind.
fn bind_rpc(config: &Config) -> Result<Option<FrontListener>, DaemonError> {
    let addr = config.rpc_bind;
    match mio::net::TcpListener::bind(addr) {
        Ok(l) => {
            let description = l.local_addr().map_or(addr, |a| a).to_string();
            Ok(Some(FrontListener {
                socket: ListenSocket::Tcp(l),
                kind: FrontKind::Rpc,
                admit: Admit::Anyone,
                description,
            }))
        }
        Err(e) if addr == crate::config::defaults().rpc_bind => {
            warn!("RPC: cannot listen on {addr}: {e}; serving the IPC only (see --rpc-bind, --no-rpc)");
            Ok(None)
        }
        Err(e) => Err(err(format!("cannot listen for RPC clients on {addr}"), e)),
    }
}

/// The port an RPC listener is bound to.
fn rpc_port(l: &FrontListener) -> u16 {
    match &l.socket {
        ListenSocket::Tcp(t) => t.local_addr().map_or(0, |a| a.port()),
        ListenSocket::Unix(_) => 0,
    }
}

/// The RPC front of `config`: its guards (with the password read from
/// its file) and the web interface's folder.
fn rpc_front(config: &Config, port: u16) -> Result<RpcFront, DaemonError> {
    let mut seed = [0u8; 8];
    getrandom::getrandom(&mut seed).map_err(|e| err("no system randomness for the RPC", e))?;
    let mut rng = fastrand::Rng::with_seed(u64::from_le_bytes(seed));
    let password = match &config.rpc_password_file {
        Some(path) => Some(read_password(path, &mut rng)?),
        None => None,
    };
    let list = |text: &str| parse_list(text);
    let web_dir = config.web_dir();
    let looked_in = match &web_dir {
        Some(d) => d.display().to_string(),
        None => format!(
            "{} (give --web-dir or TRANSMISSION_WEB_HOME)",
            SYSTEM_WEB_DIR
        ),
    };
    let options = RpcOptions {
        guard: GuardConfig {
            rpc_url: config.rpc_url.clone(),
            username: config.rpc_username.clone(),
            password,
            host_whitelist: Some(list(&config.rpc_host_whitelist)),
            address_whitelist: Some(list(&config.rpc_whitelist)),
            lockout_after: (config.rpc_lockout > 0).then_some(config.rpc_lockout),
        },
        web_dir,
        web_looked_in: looked_in,
        limits: Limits::default(),
        port,
    };
    Ok(RpcFront::new(options, &mut rng, std::time::Instant::now()))
}

/// The RPC password from `path`: a stored hash, or a password in clear
/// (hashed now, with a warning saying how to store a hash instead).
fn read_password(path: &Path, rng: &mut fastrand::Rng) -> Result<PasswordHash, DaemonError> {
    let text = fs::read_to_string(path).map_err(|e| {
        err(
            format!("cannot read --rpc-password-file {}", path.display()),
            e,
        )
    })?;
    let value = text.trim_end_matches(['\n', '\r']);
    if value.is_empty() {
        return Err(DaemonError(format!(
            "--rpc-password-file {} is empty",
            path.display()
        )));
    }
    if value.parse::<PasswordHash>().is_err() {
        warn!(
            "RPC: {} holds a password in clear; store its hash instead (tripcd --hash-password < {0})",
            path.display()
        );
    }
    Ok(PasswordHash::from_setting(value, rng))
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
