//! tripcd under a service manager, without one: socket activation
//! (`LISTEN_FDS`), readiness and status (`NOTIFY_SOCKET`), the journal's
//! log format (`JOURNAL_STREAM`); and under `systemd-socket-activate`
//! when it is installed. Real daemons, real sockets, deterministic waits.

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::{daemon_from, Daemon, Raw, HANG};
use nix::sys::signal::Signal;

const TRIPCD: &str = env!("CARGO_BIN_EXE_tripcd");

/// Runs tripcd through `sh`, which sets `LISTEN_PID` to its own pid and
/// execs tripcd (the pid stays): what a service manager does.
const WITH_LISTEN_PID: &str = r#"LISTEN_PID=$$; export LISTEN_PID; exec "$0" "$@""#;

/// The arguments every daemon here gets: a state directory, loopback
/// peers, no announces.
fn daemon_args(cmd: &mut Command, state: &Path) {
    cmd.arg("--state-dir")
        .arg(state)
        .arg("--download-dir")
        .arg(state.join("downloads"))
        .args([
            "--peer-bind",
            "127.0.0.1",
            "--announce",
            "false",
            "--no-dht",
            "--no-rpc",
        ])
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    for var in [
        "LISTEN_PID",
        "LISTEN_FDS",
        "LISTEN_FDNAMES",
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
        "JOURNAL_STREAM",
    ] {
        cmd.env_remove(var);
    }
}

/// tripcd (through the `sh` wrapper) with `fd` as its fd 3 and
/// `LISTEN_FDS` as given.
fn activated(state: &Path, fd: RawFd, listen_fds: &str) -> Command {
    activated_fds(state, &[fd], listen_fds)
}

/// tripcd with `fds` as its fds 3, 4, ... and `LISTEN_FDS` as given.
fn activated_fds(state: &Path, fds: &[RawFd], listen_fds: &str) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(WITH_LISTEN_PID).arg(TRIPCD);
    daemon_args(&mut cmd, state);
    cmd.env("LISTEN_FDS", listen_fds);
    let fds = fds.to_vec();
    // SAFETY: only async-signal-safe calls (dup, dup2, fcntl) between fork
    // and exec.
    unsafe {
        cmd.pre_exec(move || {
            // Out of the way first, so that placing one cannot clobber
            // another still to be placed.
            let mut moved = [0; 8];
            for (i, &fd) in fds.iter().enumerate() {
                moved[i] = nix::libc::fcntl(fd, nix::libc::F_DUPFD_CLOEXEC, 100);
                if moved[i] < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (i, _) in fds.iter().enumerate() {
                if nix::libc::dup2(moved[i], 3 + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // Nothing else where the manager's sockets would be (cargo's
            // jobserver pipes, say, are inherited there).
            for fd in 3 + fds.len() as i32..3 + 17 {
                nix::libc::close(fd);
            }
            Ok(())
        });
    }
    cmd
}

fn spawn(mut cmd: Command, state: &Path, socket: &Path) -> Daemon {
    cmd.stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    daemon_from(child, stderr, state, socket)
}

fn is_socket(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

/// A client's version handshake and a noop, answered.
fn answers(socket: &Path) {
    let mut raw = Raw::connect(socket);
    let greeting = raw.frame().expect("greeting");
    assert!(greeting.contains("7:version"), "{greeting}");
    raw.handshake(2);
    assert!(
        raw.frames_before_probe().is_some(),
        "the noop was not answered"
    );
}

#[test]
fn an_activated_socket_is_served_and_left_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let path = dir.path().join("activated.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let mut cmd = activated(&state, listener.as_raw_fd(), "1");
    // As a unit file would say it: the passed socket wins, and its file
    // is neither probed nor replaced nor removed.
    cmd.arg("--socket").arg(&path);
    let mut d = spawn(cmd, &state, &path);
    let ready = d.wait_for_log(" ready on ").expect("tripcd did not start");
    assert!(
        ready.contains(&format!(
            "ready on {} (socket from systemd)",
            path.display()
        )),
        "{ready}"
    );
    answers(&path);
    answers(&path);
    // No socket of its own.
    assert!(!state.join("socket").exists());

    d.signal(Signal::SIGTERM);
    assert!(d.wait().success());
    // The file is the manager's: still there, and the socket still listens
    // (the test holds it), so the next daemon can take over.
    assert!(is_socket(&path), "tripcd removed the passed socket");
    UnixStream::connect(&path).expect("the passed socket still listens");
    assert!(!d.logged("cannot remove"));
}

#[test]
fn several_activated_sockets_are_all_served() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let a = dir.path().join("a.sock");
    let b = dir.path().join("b.sock");
    let (la, lb) = (
        UnixListener::bind(&a).unwrap(),
        UnixListener::bind(&b).unwrap(),
    );
    let mut cmd = activated_fds(&state, &[la.as_raw_fd(), lb.as_raw_fd()], "2");
    cmd.env("LISTEN_FDNAMES", "system:user");
    let mut d = spawn(cmd, &state, &a);
    let ready = d.wait_for_log(" ready on ").expect("tripcd did not start");
    assert!(
        ready.contains(&format!(
            "ready on {} (socket \"system\" from systemd), {} (socket \"user\" from systemd)",
            a.display(),
            b.display()
        )),
        "{ready}"
    );
    answers(&a);
    answers(&b);
    d.signal(Signal::SIGTERM);
    assert!(d.wait().success());
    assert!(is_socket(&a) && is_socket(&b), "the passed sockets stay");
}

/// tripcd with fd 3 as given: it must refuse to start.
fn refused(fd: RawFd, listen_fds: &str) -> (Output, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let out = activated(&state, fd, listen_fds)
        .stderr(Stdio::piped())
        .output()
        .expect("run tripcd");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started anyway:\n{log}");
    assert!(!log.contains(" ready on "), "{log}");
    assert!(!state.join("socket").exists(), "bound its own socket");
    (out, state)
}

fn error_line(out: &Output) -> String {
    let log = String::from_utf8_lossy(&out.stderr);
    log.lines()
        .find(|l| l.starts_with("tripcd: "))
        .unwrap_or_else(|| panic!("no error line:\n{log}"))
        .to_string()
}

#[test]
fn anything_but_a_listening_unix_stream_socket_at_fd_3_is_refused() {
    let dir = tempfile::tempdir().unwrap();

    let file = File::create(dir.path().join("plain")).unwrap();
    let (out, _) = refused(file.as_raw_fd(), "1");
    assert!(
        error_line(&out).contains("fd 3 from the service manager is not a socket"),
        "{}",
        error_line(&out)
    );

    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let (out, _) = refused(udp.as_raw_fd(), "1");
    assert!(
        error_line(&out).contains("is a datagram socket, not a stream socket"),
        "{}",
        error_line(&out)
    );

    let (a, _b) = UnixStream::pair().unwrap();
    let (out, _) = refused(a.as_raw_fd(), "1");
    assert!(
        error_line(&out).contains("is a Unix stream socket that is not listening"),
        "{}",
        error_line(&out)
    );

    // Two sockets announced, one passed.
    let listener = UnixListener::bind(dir.path().join("sock")).unwrap();
    let (out, _) = refused(listener.as_raw_fd(), "2");
    assert!(
        error_line(&out).contains("LISTEN_FDS=2 but fd 4 is not open"),
        "{}",
        error_line(&out)
    );
    let (out, _) = refused(listener.as_raw_fd(), "one");
    assert!(
        error_line(&out).contains("LISTEN_FDS=\"one\" is not a number"),
        "{}",
        error_line(&out)
    );
}

#[test]
fn a_passed_tcp_socket_is_the_rpcs_and_refused_with_no_rpc() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let ipc = dir.path().join("ipc.sock");
    let unix = UnixListener::bind(&ipc).unwrap();
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = tcp.local_addr().unwrap();
    let mut cmd = activated_fds(&state, &[unix.as_raw_fd(), tcp.as_raw_fd()], "2");
    cmd.arg("--rpc");
    let mut d = spawn(cmd, &state, &ipc);
    let ready = d.wait_for_log(" ready on ").expect("tripcd did not start");
    assert!(ready.contains("(RPC and web interface)"), "{ready}");
    answers(&ipc);
    // The RPC's CSRF guard answers first.
    let mut http = std::net::TcpStream::connect(addr).unwrap();
    http.write_all(
        b"POST /transmission/rpc HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\n{}",
    )
    .unwrap();
    let mut head = [0u8; 12];
    http.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 409");
    d.signal(Signal::SIGTERM);
    assert!(d.wait().success());

    // daemon_args gives --no-rpc.
    let out = activated(&state, tcp.as_raw_fd(), "1")
        .stderr(Stdio::piped())
        .output()
        .expect("run tripcd");
    assert!(!out.status.success());
    assert!(
        error_line(&out).contains("is a TCP socket for the RPC, but --no-rpc was given"),
        "{}",
        error_line(&out)
    );
}

#[test]
fn activation_variables_for_another_process_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let listener = UnixListener::bind(dir.path().join("other.sock")).unwrap();
    let fd = listener.as_raw_fd();
    let mut cmd = Command::new(TRIPCD);
    daemon_args(&mut cmd, &state);
    // Our pid, not the daemon's: variables it merely inherited.
    cmd.env("LISTEN_PID", std::process::id().to_string())
        .env("LISTEN_FDS", "1");
    // SAFETY: dup2 only, between fork and exec.
    unsafe {
        cmd.pre_exec(move || match nix::libc::dup2(fd, 3) {
            -1 => Err(std::io::Error::last_os_error()),
            _ => Ok(()),
        });
    }
    let socket = state.join("socket");
    let mut d = spawn(cmd, &state, &socket);
    let ready = d.wait_for_log(" ready on ").expect("tripcd did not start");
    assert!(
        ready.contains(&format!("ready on {} (state", socket.display())),
        "{ready}"
    );
    assert!(d.logged("is not this process"));
    answers(&socket);
    d.signal(Signal::SIGTERM);
    assert!(d.wait().success());
    assert!(!socket.exists(), "its own socket is removed as before");
}

/// Datagrams received on `sock` until one contains `needle`, each wait
/// bounded.
fn until(sock: &UnixDatagram, needle: &str) -> Vec<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = sock
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no {needle:?} (after {got:?}): {e}"));
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        let done = msg.lines().any(|l| l == needle);
        got.push(msg);
        if done {
            return got;
        }
    }
}

#[test]
fn readiness_status_watchdog_and_stopping_are_notified() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(HANG)).unwrap();
    let state = dir.path().join("state");
    let mut d = Daemon::try_start_env(
        &state,
        &[],
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "200000"),
        ],
    )
    .unwrap();
    let got = until(&sock, "READY=1");
    assert_eq!(got.len(), 1, "READY comes first: {got:?}");
    assert!(
        got[0]
            .lines()
            .any(|l| l == "STATUS=0 clients, 0 torrents, down 0 B/s, up 0 B/s"),
        "{got:?}"
    );
    // Pings every 100 ms: three in a row, each within the bound.
    for _ in 0..3 {
        until(&sock, "WATCHDOG=1");
    }
    answers(&d.socket);

    d.signal(Signal::SIGTERM);
    let got = until(&sock, "STOPPING=1");
    assert!(got.last().unwrap().contains("STATUS=stopping"), "{got:?}");
    assert!(d.wait().success());
    assert!(!d.logged("cannot notify"));
}

#[test]
fn the_status_counts_torrents() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    {
        let mut d = Daemon::start_in(&state, &[]);
        let mut c = d.client();
        for name in ["a", "b"] {
            let t = common::make_torrent(&data, name, name.as_bytes(), 16384);
            common::add_with(&mut c, &std::fs::read(t).unwrap(), &data, false);
        }
        d.signal(Signal::SIGTERM);
        assert!(d.wait().success());
    }
    let path = dir.path().join("notify");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(HANG)).unwrap();
    let mut d =
        Daemon::try_start_env(&state, &[], &[("NOTIFY_SOCKET", path.to_str().unwrap())]).unwrap();
    let got = until(&sock, "READY=1");
    assert!(
        got[0]
            .lines()
            .any(|l| l == "STATUS=0 clients, 2 torrents (2 stopped), down 0 B/s, up 0 B/s"),
        "{got:?}"
    );
    d.signal(Signal::SIGTERM);
    assert!(d.wait().success());
}

#[test]
fn notifications_reach_an_abstract_socket() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("tripcd-service-test-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let sock = UnixDatagram::bind_addr(&addr).unwrap();
    sock.set_read_timeout(Some(HANG)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut d =
        Daemon::try_start_env(dir.path(), &[], &[("NOTIFY_SOCKET", &format!("@{name}"))]).unwrap();
    until(&sock, "READY=1");
    d.signal(Signal::SIGTERM);
    until(&sock, "STOPPING=1");
    assert!(d.wait().success());
}

#[test]
fn a_missing_notify_socket_is_only_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let gone = dir.path().join("nobody-listens");
    let mut d = Daemon::try_start_env(
        &dir.path().join("state"),
        &[],
        &[("NOTIFY_SOCKET", gone.to_str().unwrap())],
    )
    .unwrap();
    d.wait_for_log("cannot notify the service manager")
        .expect("the failure is logged");
    answers(&d.socket);
    d.signal(Signal::SIGTERM);
    assert!(d.wait().success());
    let warnings = d
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("cannot notify the service manager"))
        .count();
    assert_eq!(warnings, 1, "logged once");
}

/// tripcd with stderr on a fresh pipe and `JOURNAL_STREAM` naming that
/// pipe (or, if `matching` is false, something else).
fn with_journal_stream(state: &Path, args: &[&str], matching: bool) -> Daemon {
    let (read, write): (OwnedFd, OwnedFd) = nix::unistd::pipe().unwrap();
    let st = nix::sys::stat::fstat(&write).unwrap();
    let stream = if matching {
        format!("{}:{}", st.st_dev, st.st_ino)
    } else {
        format!("{}:{}", st.st_dev, st.st_ino + 1)
    };
    let mut cmd = Command::new(TRIPCD);
    daemon_args(&mut cmd, state);
    cmd.args(args)
        .env("JOURNAL_STREAM", stream)
        .stderr(Stdio::from(write));
    let child = cmd.spawn().expect("spawn");
    // Our copy of the write end goes with the command: stderr ends when
    // tripcd exits.
    drop(cmd);
    daemon_from(child, File::from(read), state, &state.join("socket"))
}

#[test]
fn logs_carry_syslog_priorities_and_no_timestamps_for_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut d = with_journal_stream(&state, &[], true);
    let ready = d.wait_for_log(" ready on ").expect("tripcd did not start");
    assert!(ready.starts_with("<6>tripcd::daemon: tripcd "), "{ready}");
    answers(&d.socket);
    d.signal(Signal::SIGTERM);
    assert!(d.wait().success());
    d.wait_for_log("tripcd stopped").expect("the last line");
    let log = d.log.lock().unwrap().clone();
    for line in &log {
        let prefixed = ["<3>", "<4>", "<6>", "<7>"]
            .iter()
            .any(|p| line.starts_with(p));
        assert!(prefixed && line[3..].starts_with("tripcd"), "{line:?}");
    }
    assert!(
        log.iter().any(|l| l.starts_with("<7>")),
        "debug lines: {log:?}"
    );

    // A start-up error is an error for the journal too.
    let mut d = with_journal_stream(&state, &["--scripts", "/nonexistent/dir"], true);
    assert!(!d.wait().success());
    let line = d.wait_for_log("<3>tripcd: ").expect("an error line");
    assert_eq!(
        line,
        "<3>tripcd: scripts directory /nonexistent/dir does not exist"
    );
}

#[test]
fn logs_keep_their_format_when_stderr_is_not_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = with_journal_stream(dir.path(), &[], false);
    let ready = d.wait_for_log(" ready on ").expect("tripcd did not start");
    // env_logger's own: `[<timestamp> INFO  tripcd::daemon] …`.
    assert!(ready.starts_with('['), "{ready}");
    assert!(ready.contains("INFO"), "{ready}");
    d.signal(Signal::SIGTERM);
    assert!(d.wait().success());
}

#[test]
fn under_systemd_socket_activate() {
    let Some(program) = which("systemd-socket-activate") else {
        eprintln!("note: systemd-socket-activate is not installed; skipping");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let path = dir.path().join("sock");
    let mut cmd = Command::new(program);
    cmd.arg("-l").arg(&path).arg(TRIPCD);
    daemon_args(&mut cmd, &state);
    cmd.arg("--socket").arg(&path);
    let mut d = spawn(cmd, &state, &path);
    // It listens, then starts tripcd at the first connection.
    d.wait_for_log("Listening on")
        .expect("systemd-socket-activate did not listen");
    let mut raw = Raw::connect(&path);
    let ready = d.wait_for_log(" ready on ").expect("tripcd did not start");
    assert!(
        ready.contains(&format!(
            "ready on {} (socket from systemd)",
            path.display()
        )),
        "{ready}"
    );
    let greeting = raw.frame().expect("greeting");
    assert!(greeting.contains("7:version"), "{greeting}");
    raw.handshake(2);
    assert!(raw.frames_before_probe().is_some());
    answers(&path);
    d.signal(Signal::SIGTERM);
    assert!(d.wait().success());
    assert!(is_socket(&path), "tripcd removed the passed socket");
}

/// A program on PATH.
fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Packaging builds the manual page from the clap definitions.
#[test]
fn the_manual_page_is_generated_from_the_options() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tripcd"))
        .arg("--generate-man")
        .output()
        .expect("run tripcd");
    assert!(out.status.success());
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(page.contains(".TH tripcd 8"), "{page}");
    assert!(page.contains("max\\-peers\\-per\\-torrent"), "{page}");
}
