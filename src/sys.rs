//! Small process-level helpers shared by the daemon and the load tool,
//! and what a service manager hands the daemon: a listening socket
//! (socket activation) and a journal stream.

use std::ffi::OsStr;
use std::os::fd::RawFd;

/// Raises this process's open-file soft limit to the hard limit; returns
/// the limit in force.
pub fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 0;
    };
    if hard > soft && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        hard
    } else {
        soft
    }
}

/// Connections the kernel queues on the peer port before we accept them.
/// std and mio listen with 128; a burst of connection attempts (a swarm
/// finding us at once, or a flood) overflows that within milliseconds and
/// the kernel drops SYNs, which the dialer only retries a second later.
/// The kernel caps it at `net.core.somaxconn`.
pub const PEER_BACKLOG: i32 = 4096;

/// A non-blocking TCP listener on `addr` (`SO_REUSEADDR`, as mio's own)
/// with a queue of `backlog` connections.
pub fn tcp_listener(
    addr: std::net::SocketAddr,
    backlog: i32,
) -> std::io::Result<std::net::TcpListener> {
    use nix::sys::socket::{
        bind, listen, setsockopt, socket, sockopt::ReuseAddr, AddressFamily, Backlog, SockFlag,
        SockType, SockaddrStorage,
    };
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    setsockopt(&fd, ReuseAddr, &true)?;
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrStorage::from(addr),
    )?;
    let backlog = Backlog::new(backlog).unwrap_or(Backlog::MAXCONN);
    listen(&fd, backlog)?;
    Ok(std::net::TcpListener::from(fd))
}

/// The first descriptor a service manager passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

/// What `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES` say, before the
/// descriptor is looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// No socket for this process; with a warning when the variables were
    /// set but are not for it, or malformed.
    Nothing(Option<String>),
    /// One socket at fd 3, with its name when the manager gave one.
    One(Option<String>),
}

/// Reads the socket activation variables (sans-IO: the values and this
/// process's id come in). Variables meant for this process that do not
/// describe exactly one socket are an error: serving anything else than
/// what the manager expects would leave its clients waiting.
pub fn parse_listen_env(
    pid: Option<&OsStr>,
    fds: Option<&OsStr>,
    names: Option<&OsStr>,
    own_pid: u32,
) -> Result<Listen, String> {
    let shown = |v: &OsStr| format!("{:?}", v.to_string_lossy());
    let Some(pid) = pid else {
        return Ok(Listen::Nothing(fds.or(names).map(|_| {
            "LISTEN_FDS or LISTEN_FDNAMES set without LISTEN_PID; ignored".to_string()
        })));
    };
    match pid.to_str().and_then(|p| p.parse::<u32>().ok()) {
        Some(p) if p == own_pid => {}
        Some(p) => {
            return Ok(Listen::Nothing(Some(format!(
                "LISTEN_PID={p} is not this process ({own_pid}); its sockets are ignored"
            ))))
        }
        None => {
            return Ok(Listen::Nothing(Some(format!(
                "LISTEN_PID={} is not a process id; ignored",
                shown(pid)
            ))))
        }
    }
    let Some(fds) = fds else {
        return Err("LISTEN_PID names this process but LISTEN_FDS is not set".into());
    };
    match fds.to_str().and_then(|n| n.parse::<u32>().ok()) {
        Some(0) => Ok(Listen::Nothing(Some(
            "LISTEN_FDS=0: no socket passed; binding our own".into(),
        ))),
        Some(1) => {
            // Absent, empty or "unknown" (systemd's word for unnamed):
            // no name.
            let name = names
                .and_then(OsStr::to_str)
                .filter(|n| !n.is_empty() && *n != "unknown" && !n.contains(':'))
                .map(str::to_string);
            Ok(Listen::One(name))
        }
        Some(n) => Err(format!(
            "LISTEN_FDS={n}: tripcd serves exactly one socket; give the service one"
        )),
        None => Err(format!("LISTEN_FDS={} is not a number", shown(fds))),
    }
}

/// A listening socket passed by a service manager.
#[derive(Debug)]
pub struct Activated {
    /// Non-blocking, close-on-exec.
    pub listener: std::os::unix::net::UnixListener,
    /// Where it listens, for the log: its path, or its name.
    pub description: String,
}

/// Takes the listening socket a service manager passed at fd 3, if the
/// environment says there is one for this process (`sd_listen_fds(3)`).
/// The variables are removed from the environment once read. Call first
/// thing, before any descriptor is opened (fd 3 must still be the
/// manager's) and before other threads exist. `Err` when a socket is
/// announced but fd 3 is not a listening Unix stream socket.
pub fn take_activated_listener() -> Result<Option<Activated>, String> {
    const VARS: [&str; 3] = ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"];
    let [pid, fds, names] = VARS.map(std::env::var_os);
    for name in VARS {
        std::env::remove_var(name);
    }
    let name = match parse_listen_env(
        pid.as_deref(),
        fds.as_deref(),
        names.as_deref(),
        std::process::id(),
    )? {
        Listen::Nothing(None) => return Ok(None),
        Listen::Nothing(Some(why)) => {
            log::warn!("{why}");
            return Ok(None);
        }
        Listen::One(name) => name,
    };
    let (listener, path) = adopt_listener(LISTEN_FDS_START)?;
    let from = match name {
        Some(n) => format!("socket {n:?} from systemd"),
        None => "socket from systemd".to_string(),
    };
    let description = match path {
        Some(p) => format!("{p} ({from})"),
        None => from,
    };
    Ok(Some(Activated {
        listener,
        description,
    }))
}

/// Takes ownership of `fd` once it is known to be a listening Unix stream
/// socket; returns it ready for the reactor, and its address if it has
/// one.
fn adopt_listener(fd: RawFd) -> Result<(std::os::unix::net::UnixListener, Option<String>), String> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    use nix::sys::socket::{getsockname, getsockopt, sockopt, AddressFamily, SockType};
    use nix::sys::socket::{SockaddrLike, SockaddrStorage};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    // SAFETY: F_GETFD only reads the flags of a descriptor number; it
    // fails with EBADF when nothing is open there.
    if unsafe { nix::libc::fcntl(fd, nix::libc::F_GETFD) } < 0 {
        return Err(format!(
            "LISTEN_FDS=1 but fd {fd} is not open: the service manager passed no socket"
        ));
    }
    // SAFETY: fd is open (just checked), the manager handed it to this
    // process, and nothing else in it has used it: this runs before the
    // daemon opens anything, and the variables that announced it are gone.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    match getsockopt(&owned, sockopt::SockType) {
        Ok(SockType::Stream) => {}
        Ok(other) => {
            let kind = match other {
                SockType::Datagram => "a datagram".to_string(),
                SockType::SeqPacket => "a seqpacket".to_string(),
                SockType::Raw => "a raw".to_string(),
                other => format!("a {other:?}"),
            };
            return Err(format!(
                "fd {fd} from the service manager is {kind} socket, not a stream socket \
                 (use ListenStream= in the .socket unit)"
            ));
        }
        Err(nix::errno::Errno::ENOTSOCK) => {
            return Err(format!(
                "fd {fd} from the service manager is not a socket (LISTEN_FDS=1)"
            ))
        }
        Err(e) => {
            return Err(format!(
                "cannot inspect fd {fd} from the service manager: {e}"
            ))
        }
    }
    let addr = getsockname::<SockaddrStorage>(owned.as_raw_fd())
        .map_err(|e| format!("cannot read the address of fd {fd}: {e}"))?;
    let Some(unix) = addr.as_unix_addr() else {
        let family = match addr.family() {
            Some(AddressFamily::Inet) => "an IPv4".to_string(),
            Some(AddressFamily::Inet6) => "an IPv6".to_string(),
            Some(f) => format!("a {f:?}"),
            None => "an unknown".to_string(),
        };
        return Err(format!(
            "fd {fd} from the service manager is {family} socket, not a Unix socket \
             (use a path in ListenStream=)"
        ));
    };
    let path = if let Some(p) = unix.path() {
        Some(p.display().to_string())
    } else {
        unix.as_abstract()
            .map(|name| format!("@{}", String::from_utf8_lossy(name)))
    };
    match getsockopt(&owned, sockopt::AcceptConn) {
        Ok(true) => {}
        Ok(false) => {
            return Err(format!(
                "fd {fd} from the service manager is a Unix stream socket that is not listening"
            ))
        }
        Err(e) => {
            return Err(format!(
                "cannot inspect fd {fd} from the service manager: {e}"
            ))
        }
    }
    // Clients' streams must not leak into anything started later, nor
    // block the loop.
    fcntl(&owned, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))
        .map_err(|e| format!("cannot set close-on-exec on fd {fd}: {e}"))?;
    let listener = std::os::unix::net::UnixListener::from(owned);
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("cannot make fd {fd} non-blocking: {e}"))?;
    Ok((listener, path))
}

/// Parses `JOURNAL_STREAM`: `device:inode`, both decimal.
pub fn parse_journal_stream(value: &str) -> Option<(u64, u64)> {
    let (dev, ino) = value.split_once(':')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

/// Whether stderr is journald's stream (`JOURNAL_STREAM` names its device
/// and inode, as `sd_journal_stream_fd(3)` describes): then log lines
/// carry syslog priorities and no timestamps. A stderr redirected
/// elsewhere keeps the usual format.
pub fn stderr_is_journal() -> bool {
    let Some((dev, ino)) = std::env::var("JOURNAL_STREAM")
        .ok()
        .as_deref()
        .and_then(parse_journal_stream)
    else {
        return false;
    };
    match nix::sys::stat::fstat(std::io::stderr()) {
        #[allow(clippy::unnecessary_cast)] // the field types differ by target
        Ok(st) => st.st_dev as u64 == dev && st.st_ino as u64 == ino,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The queue holds far more than std's 128: 1000 connections complete
    /// with nobody accepting (past the queue, the kernel would drop their
    /// SYNs and the connects would time out).
    #[test]
    fn the_peer_listener_queues_a_thousand_connections() {
        let l = tcp_listener("127.0.0.1:0".parse().unwrap(), PEER_BACKLOG).unwrap();
        let addr = l.local_addr().unwrap();
        let held: Vec<_> = (0..1000)
            .map(|i| {
                std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5))
                    .unwrap_or_else(|e| panic!("connection {i}: {e}"))
            })
            .collect();
        assert_eq!(held.len(), 1000);
    }

    fn parse(pid: Option<&str>, fds: Option<&str>, names: Option<&str>) -> Result<Listen, String> {
        parse_listen_env(
            pid.map(OsStr::new),
            fds.map(OsStr::new),
            names.map(OsStr::new),
            42,
        )
    }

    #[test]
    fn activation_variables_for_this_process() {
        assert_eq!(parse(None, None, None), Ok(Listen::Nothing(None)));
        assert_eq!(parse(Some("42"), Some("1"), None), Ok(Listen::One(None)));
        assert_eq!(
            parse(Some("42"), Some("1"), Some("")),
            Ok(Listen::One(None))
        );
        assert_eq!(
            parse(Some("42"), Some("1"), Some("unknown")),
            Ok(Listen::One(None))
        );
        assert_eq!(
            parse(Some("42"), Some("1"), Some("tripcd.socket")),
            Ok(Listen::One(Some("tripcd.socket".into())))
        );
        // Names that do not match the count are not used.
        assert_eq!(
            parse(Some("42"), Some("1"), Some("a:b")),
            Ok(Listen::One(None))
        );
        assert!(matches!(
            parse(Some("42"), Some("0"), None),
            Ok(Listen::Nothing(Some(_)))
        ));
        for bad in [None, Some("2"), Some("x"), Some("-1"), Some("")] {
            assert!(parse(Some("42"), bad, None).is_err(), "LISTEN_FDS={bad:?}");
        }
    }

    #[test]
    fn activation_variables_for_others_are_ignored_with_a_warning() {
        for (pid, fds) in [
            (Some("43"), Some("1")),
            (Some("x"), Some("1")),
            (Some(""), Some("1")),
            (None, Some("1")),
            (Some("43"), Some("garbage")),
        ] {
            assert!(
                matches!(parse(pid, fds, None), Ok(Listen::Nothing(Some(_)))),
                "{pid:?} {fds:?}"
            );
        }
        assert!(matches!(
            parse(None, None, Some("n")),
            Ok(Listen::Nothing(Some(_)))
        ));
    }

    #[test]
    fn journal_stream_values() {
        assert_eq!(parse_journal_stream("8:12345"), Some((8, 12345)));
        for bad in ["", "8", "8:", ":1", "a:b", "8:1:2", "-1:2"] {
            assert_eq!(parse_journal_stream(bad), None, "{bad:?}");
        }
    }
}
