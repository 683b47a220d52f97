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

/// Receive buffer asked for the peer port's UDP socket: DHT, UDP trackers
/// and (later) uTP share it, and a burst must not overflow it between two
/// loop turns. The kernel caps it at `net.core.rmem_max` unless we may
/// force it.
pub const UDP_RECV_BUFFER: usize = 4 << 20;

/// A non-blocking UDP socket bound to `addr`. An IPv6 one is IPv6-only, so
/// that an IPv4 socket can share its port.
pub fn udp_socket(addr: std::net::SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use nix::sys::socket::{
        bind, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage,
    };
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket(
        family,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    if addr.is_ipv6() {
        setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
    }
    // Root may exceed rmem_max; anyone else gets what the kernel allows.
    if setsockopt(&fd, sockopt::RcvBufForce, &UDP_RECV_BUFFER).is_err() {
        let _ = setsockopt(&fd, sockopt::RcvBuf, &UDP_RECV_BUFFER);
    }
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrStorage::from(addr),
    )?;
    Ok(std::net::UdpSocket::from(fd))
}

/// The first descriptor a service manager passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

/// Sockets a service manager may pass at most: one per front and family
/// is what the daemon can use; more is a unit file's mistake.
pub const MAX_LISTEN_FDS: u32 = 16;

/// What `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES` say, before the
/// descriptors are looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// No socket for this process; with a warning when the variables were
    /// set but are not for it, or malformed.
    Nothing(Option<String>),
    /// Sockets at fd 3 and up, each with its name when the manager gave
    /// names for all of them.
    Sockets(Vec<Option<String>>),
}

/// Reads the socket activation variables (sans-IO: the values and this
/// process's id come in). Variables meant for this process that are
/// malformed are an error: serving anything else than what the manager
/// expects would leave its clients waiting.
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
        Some(n) if n > MAX_LISTEN_FDS => Err(format!(
            "LISTEN_FDS={n}: tripcd serves at most {MAX_LISTEN_FDS} sockets"
        )),
        Some(n) => {
            // Names count only when there is one per socket; absent, empty
            // or "unknown" (systemd's word for unnamed) is no name.
            let list: Vec<&str> = names
                .and_then(OsStr::to_str)
                .map(|n| n.split(':').collect())
                .unwrap_or_default();
            let names = (0..n as usize)
                .map(|i| {
                    list.get(i)
                        .filter(|_| list.len() == n as usize)
                        .filter(|n| !n.is_empty() && **n != "unknown")
                        .map(|n| n.to_string())
                })
                .collect();
            Ok(Listen::Sockets(names))
        }
        None => Err(format!("LISTEN_FDS={} is not a number", shown(fds))),
    }
}

/// A listening socket passed by a service manager.
#[derive(Debug)]
pub enum ActivatedSocket {
    /// A Unix stream socket (non-blocking, close-on-exec).
    Unix(std::os::unix::net::UnixListener),
    /// A TCP socket (non-blocking, close-on-exec).
    Tcp(std::net::TcpListener),
}

/// A passed socket and how to name it.
#[derive(Debug)]
pub struct Activated {
    /// The socket.
    pub socket: ActivatedSocket,
    /// Its name (`FileDescriptorName=`), if the manager gave names.
    pub name: Option<String>,
    /// Where it listens, for the log: its path or address, and its name.
    pub description: String,
}

/// Takes the listening sockets a service manager passed at fd 3 and up,
/// if the environment says there are any for this process
/// (`sd_listen_fds(3)`). The variables are removed from the environment
/// once read. Call first thing, before any descriptor is opened (the
/// descriptors must still be the manager's) and before other threads
/// exist. `Err` when a socket is announced but its descriptor is not a
/// listening stream socket of the Unix or IP families.
pub fn take_activated_listeners() -> Result<Vec<Activated>, String> {
    const VARS: [&str; 3] = ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"];
    let [pid, fds, names] = VARS.map(std::env::var_os);
    for name in VARS {
        std::env::remove_var(name);
    }
    let names = match parse_listen_env(
        pid.as_deref(),
        fds.as_deref(),
        names.as_deref(),
        std::process::id(),
    )? {
        Listen::Nothing(None) => return Ok(Vec::new()),
        Listen::Nothing(Some(why)) => {
            log::warn!("{why}");
            return Ok(Vec::new());
        }
        Listen::Sockets(names) => names,
    };
    let count = names.len();
    let mut out = Vec::with_capacity(count);
    for (i, name) in names.into_iter().enumerate() {
        let fd = LISTEN_FDS_START + i as RawFd;
        let (socket, address) = adopt_listener(fd, count)?;
        let from = match &name {
            Some(n) => format!("socket {n:?} from systemd"),
            None => "socket from systemd".to_string(),
        };
        out.push(Activated {
            socket,
            description: format!("{address} ({from})"),
            name,
        });
    }
    Ok(out)
}

/// Takes ownership of `fd` (one of `count` passed) once it is known to be
/// a listening stream socket, Unix or TCP; returns it ready for the
/// reactor, with its address for the log.
fn adopt_listener(fd: RawFd, count: usize) -> Result<(ActivatedSocket, String), String> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    use nix::sys::socket::{getsockname, getsockopt, sockopt, AddressFamily, SockType};
    use nix::sys::socket::{SockaddrLike, SockaddrStorage};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    // SAFETY: F_GETFD only reads the flags of a descriptor number; it
    // fails with EBADF when nothing is open there.
    if unsafe { nix::libc::fcntl(fd, nix::libc::F_GETFD) } < 0 {
        return Err(format!(
            "LISTEN_FDS={count} but fd {fd} is not open: the service manager passed no socket there"
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
                "fd {fd} from the service manager is not a socket (LISTEN_FDS={count})"
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
    let (kind, address) = match (addr.as_unix_addr(), addr.family()) {
        (Some(unix), _) => {
            let path = if let Some(p) = unix.path() {
                p.display().to_string()
            } else if let Some(name) = unix.as_abstract() {
                format!("@{}", String::from_utf8_lossy(name))
            } else {
                "an unnamed Unix socket".to_string()
            };
            ("a Unix stream socket", path)
        }
        (None, Some(AddressFamily::Inet | AddressFamily::Inet6)) => {
            let shown = addr
                .as_sockaddr_in()
                .map(|a| std::net::SocketAddr::from(std::net::SocketAddrV4::from(*a)))
                .or_else(|| {
                    addr.as_sockaddr_in6()
                        .map(|a| std::net::SocketAddr::from(std::net::SocketAddrV6::from(*a)))
                })
                .map_or_else(|| "a TCP socket".to_string(), |a| a.to_string());
            ("a TCP socket", shown)
        }
        (None, family) => {
            let family = match family {
                Some(f) => format!("a {f:?}"),
                None => "an unknown".to_string(),
            };
            return Err(format!(
                "fd {fd} from the service manager is {family} socket, not a Unix or TCP socket"
            ));
        }
    };
    match getsockopt(&owned, sockopt::AcceptConn) {
        Ok(true) => {}
        Ok(false) => {
            return Err(format!(
                "fd {fd} from the service manager is {kind} that is not listening"
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
    let nonblocking =
        |r: std::io::Result<()>| r.map_err(|e| format!("cannot make fd {fd} non-blocking: {e}"));
    let socket = if addr.as_unix_addr().is_some() {
        let l = std::os::unix::net::UnixListener::from(owned);
        nonblocking(l.set_nonblocking(true))?;
        ActivatedSocket::Unix(l)
    } else {
        let l = std::net::TcpListener::from(owned);
        nonblocking(l.set_nonblocking(true))?;
        ActivatedSocket::Tcp(l)
    };
    Ok((socket, address))
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
        let one = |n: Option<&str>| Ok(Listen::Sockets(vec![n.map(str::to_string)]));
        assert_eq!(parse(None, None, None), Ok(Listen::Nothing(None)));
        assert_eq!(parse(Some("42"), Some("1"), None), one(None));
        assert_eq!(parse(Some("42"), Some("1"), Some("")), one(None));
        assert_eq!(parse(Some("42"), Some("1"), Some("unknown")), one(None));
        assert_eq!(
            parse(Some("42"), Some("1"), Some("tripcd.socket")),
            one(Some("tripcd.socket"))
        );
        // Names that do not match the count are not used.
        assert_eq!(parse(Some("42"), Some("1"), Some("a:b")), one(None));
        assert_eq!(
            parse(Some("42"), Some("2"), Some("ipc:rpc")),
            Ok(Listen::Sockets(vec![
                Some("ipc".into()),
                Some("rpc".into())
            ]))
        );
        assert_eq!(
            parse(Some("42"), Some("3"), Some("ipc:rpc")),
            Ok(Listen::Sockets(vec![None, None, None]))
        );
        assert!(matches!(
            parse(Some("42"), Some("0"), None),
            Ok(Listen::Nothing(Some(_)))
        ));
        for bad in [None, Some("17"), Some("x"), Some("-1"), Some("")] {
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
