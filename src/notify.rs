//! Telling a service manager how the daemon is doing: systemd's notify
//! protocol (`sd_notify(3)`), written by hand since it is a few lines.
//!
//! With `NOTIFY_SOCKET` set, the daemon sends datagrams of `KEY=value`
//! lines to it: `READY=1` once it serves, `STATUS=…` every
//! [`STATUS_EVERY`] while the text changes, `WATCHDOG=1` every half
//! `WATCHDOG_USEC` when a watchdog is asked for, and `STOPPING=1` when
//! shutdown begins.
//!
//! Deciding what to send when is [`Schedule`], sans-IO (time comes in as
//! arguments); [`Notifier`] adds the socket. The reactor calls
//! [`Notifier::handle_timeout`] from its loop at
//! [`Notifier::poll_timeout`]: there is no thread.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use log::{debug, warn};

/// How often the STATUS text is refreshed (sent only when it changed).
pub const STATUS_EVERY: Duration = Duration::from_secs(5);

/// Shortest watchdog ping interval, whatever `WATCHDOG_USEC` says: a tiny
/// value must not turn the loop into a busy loop.
const MIN_WATCHDOG_PING: Duration = Duration::from_millis(10);

/// Longest `sun_path` (108 bytes with its terminating zero).
const MAX_SOCKET_PATH: usize = 107;

/// Longest STATUS text sent: ours are short, this only bounds the datagram.
const MAX_STATUS: usize = 512;

/// The figures of a STATUS line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Figures {
    /// IPC clients connected.
    pub clients: usize,
    /// Torrents known.
    pub torrents: usize,
    /// Running, some pieces missing.
    pub downloading: usize,
    /// Running, every piece good.
    pub seeding: usize,
    /// Waiting for or in verification.
    pub checking: usize,
    /// Not running, without an error.
    pub stopped: usize,
    /// Stopped by an error.
    pub failed: usize,
    /// Payload bytes/s received, all torrents together.
    pub download_rate: u64,
    /// Payload bytes/s sent, all torrents together.
    pub upload_rate: u64,
}

impl Figures {
    /// The STATUS text, e.g. `3 clients, 2 torrents (1 downloading, 1
    /// seeding), down 1.2 MiB/s, up 300 KiB/s`.
    pub fn line(&self) -> String {
        let plural = |n: usize, one: &str| {
            if n == 1 {
                format!("1 {one}")
            } else {
                format!("{n} {one}s")
            }
        };
        let parts: Vec<String> = [
            (self.downloading, "downloading"),
            (self.seeding, "seeding"),
            (self.checking, "checking"),
            (self.stopped, "stopped"),
            (self.failed, "failed"),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect();
        let torrents = if parts.is_empty() {
            plural(self.torrents, "torrent")
        } else {
            format!(
                "{} ({})",
                plural(self.torrents, "torrent"),
                parts.join(", ")
            )
        };
        format!(
            "{}, {torrents}, down {}, up {}",
            plural(self.clients, "client"),
            human_rate(self.download_rate),
            human_rate(self.upload_rate)
        )
    }
}

/// A rate for people: `512 B/s`, `300 KiB/s`, `1.2 MiB/s`, `3.0 GiB/s`.
pub fn human_rate(bytes_per_sec: u64) -> String {
    const KIB: u64 = 1 << 10;
    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;
    let b = bytes_per_sec;
    if b < KIB {
        format!("{b} B/s")
    } else if b < MIB {
        // Rounded, and never shown as 1024 KiB/s.
        format!("{} KiB/s", ((b + KIB / 2) / KIB).min(1023))
    } else if b < GIB {
        format!("{:.1} MiB/s", b as f64 / MIB as f64)
    } else {
        format!("{:.1} GiB/s", b as f64 / GIB as f64)
    }
}

/// What to tell the service manager, and when; no I/O.
#[derive(Debug)]
pub struct Schedule {
    /// Ping interval (half the manager's watchdog timeout), if any.
    watchdog: Option<Duration>,
    next_status: Option<Instant>,
    next_watchdog: Option<Instant>,
    /// The STATUS text last sent.
    last_status: String,
    ready: bool,
    stopping: bool,
}

/// A STATUS line: one line, bounded.
fn status_field(text: &str) -> String {
    let mut s: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if s.len() > MAX_STATUS {
        let mut end = MAX_STATUS;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    format!("STATUS={s}")
}

impl Schedule {
    /// A schedule pinging the watchdog every `watchdog`, if given.
    pub fn new(watchdog: Option<Duration>) -> Schedule {
        Schedule {
            watchdog: watchdog.map(|w| w.max(MIN_WATCHDOG_PING)),
            next_status: None,
            next_watchdog: None,
            last_status: String::new(),
            ready: false,
            stopping: false,
        }
    }

    /// The daemon serves from `now` on: the datagram saying so, with the
    /// first STATUS (and a first watchdog ping). `None` if already said.
    pub fn ready(&mut self, now: Instant, status: String) -> Option<String> {
        if self.ready || self.stopping {
            return None;
        }
        self.ready = true;
        let mut msg = format!("READY=1\n{}", status_field(&status));
        self.last_status = status;
        self.next_status = now.checked_add(STATUS_EVERY);
        if let Some(w) = self.watchdog {
            msg.push_str("\nWATCHDOG=1");
            self.next_watchdog = now.checked_add(w);
        }
        Some(msg)
    }

    /// When [`Schedule::handle_timeout`] next has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [self.next_status, self.next_watchdog]
            .into_iter()
            .flatten()
            .min()
    }

    /// What is due at `now`, as one datagram: a watchdog ping, the STATUS
    /// text if it changed (`status` is asked only when one is due).
    pub fn handle_timeout(
        &mut self,
        now: Instant,
        status: impl FnOnce() -> String,
    ) -> Option<String> {
        let mut lines = Vec::new();
        if self.next_watchdog.is_some_and(|t| now >= t) {
            lines.push("WATCHDOG=1".to_string());
            self.next_watchdog = self.watchdog.and_then(|w| now.checked_add(w));
        }
        if self.next_status.is_some_and(|t| now >= t) {
            self.next_status = now.checked_add(STATUS_EVERY);
            let s = status();
            if s != self.last_status {
                lines.push(status_field(&s));
                self.last_status = s;
            }
        }
        (!lines.is_empty()).then(|| lines.join("\n"))
    }

    /// Shutdown begins: the datagram saying so (once). Watchdog pings go
    /// on, the STATUS text stays `stopping`.
    pub fn stopping(&mut self) -> Option<String> {
        if self.stopping {
            return None;
        }
        self.stopping = true;
        self.next_status = None;
        self.last_status = "stopping".into();
        Some("STOPPING=1\nSTATUS=stopping".into())
    }
}

/// Where the datagrams go, as `NOTIFY_SOCKET` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A socket file.
    Path(PathBuf),
    /// A name in Linux's abstract namespace (`@name`; the name without
    /// the `@`).
    Abstract(Vec<u8>),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Path(p) => write!(f, "{}", p.display()),
            Target::Abstract(name) => write!(f, "@{}", String::from_utf8_lossy(name)),
        }
    }
}

/// Parses `NOTIFY_SOCKET`: an absolute path, or `@name`. Other forms
/// (`vsock:…`, relative paths) are refused with the reason.
pub fn parse_notify_socket(value: &OsStr) -> Result<Target, String> {
    let bytes = value.as_bytes();
    let shown = value.to_string_lossy();
    if bytes.len() > MAX_SOCKET_PATH {
        return Err(format!(
            "NOTIFY_SOCKET is too long for a socket address: {shown}"
        ));
    }
    match bytes.first() {
        Some(b'/') => Ok(Target::Path(PathBuf::from(value))),
        Some(b'@') if bytes.len() > 1 => Ok(Target::Abstract(bytes[1..].to_vec())),
        _ => Err(format!(
            "NOTIFY_SOCKET={shown:?} is neither an absolute path nor @name; not notifying"
        )),
    }
}

/// Parses `WATCHDOG_USEC` and `WATCHDOG_PID`: the ping interval (half the
/// timeout), `Ok(None)` when no watchdog is asked of this process, `Err`
/// with a warning for values that make no sense.
pub fn parse_watchdog(
    usec: Option<&OsStr>,
    pid: Option<&OsStr>,
    own_pid: u32,
) -> Result<Option<Duration>, String> {
    let Some(usec) = usec else {
        return Ok(None);
    };
    if let Some(pid) = pid {
        match pid.to_str().and_then(|p| p.parse::<u32>().ok()) {
            Some(p) if p == own_pid => {}
            // Set for another process (this one inherited it): not ours.
            Some(_) => return Ok(None),
            None => {
                return Err(format!(
                    "WATCHDOG_PID={:?} is not a process id; no watchdog pings",
                    pid.to_string_lossy()
                ))
            }
        }
    }
    match usec.to_str().and_then(|u| u.parse::<u64>().ok()) {
        Some(0) => Ok(None),
        Some(u) => Ok(Some(Duration::from_micros(u) / 2)),
        None => Err(format!(
            "WATCHDOG_USEC={:?} is not a number of microseconds; no watchdog pings",
            usec.to_string_lossy()
        )),
    }
}

/// The schedule and the socket it sends through.
#[derive(Debug)]
pub struct Notifier {
    schedule: Schedule,
    socket: UnixDatagram,
    target: Target,
    /// A failure was logged at warn already (later ones go to debug).
    warned: bool,
}

impl Notifier {
    /// A notifier sending to `target`, pinging every `watchdog` if given.
    pub fn new(target: Target, watchdog: Option<Duration>) -> io::Result<Notifier> {
        let socket = UnixDatagram::unbound()?;
        // A manager that stops reading must not stall the loop.
        socket.set_nonblocking(true)?;
        Ok(Notifier {
            schedule: Schedule::new(watchdog),
            socket,
            target,
            warned: false,
        })
    }

    /// The notifier `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`
    /// ask for, if any; the variables are removed from the environment
    /// (nothing this process starts should speak for it). Call before
    /// other threads exist. Bad values are logged and ignored.
    pub fn from_env() -> Option<Notifier> {
        let socket = std::env::var_os("NOTIFY_SOCKET");
        let usec = std::env::var_os("WATCHDOG_USEC");
        let pid = std::env::var_os("WATCHDOG_PID");
        for name in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
            std::env::remove_var(name);
        }
        let target = match parse_notify_socket(socket.as_deref()?) {
            Ok(t) => t,
            Err(e) => {
                warn!("{e}");
                return None;
            }
        };
        let watchdog = parse_watchdog(usec.as_deref(), pid.as_deref(), std::process::id())
            .unwrap_or_else(|e| {
                warn!("{e}");
                None
            });
        match Notifier::new(target, watchdog) {
            Ok(n) => {
                debug!(
                    "notifying {}{}",
                    n.target,
                    match watchdog {
                        Some(w) => format!(", watchdog pings every {} ms", w.as_millis()),
                        None => String::new(),
                    }
                );
                Some(n)
            }
            Err(e) => {
                warn!("cannot open a socket to notify the service manager: {e}");
                None
            }
        }
    }

    /// Says the daemon is ready, with its first STATUS text.
    pub fn ready(&mut self, now: Instant, status: String) {
        if let Some(msg) = self.schedule.ready(now, status) {
            self.send(&msg);
        }
    }

    /// When [`Notifier::handle_timeout`] next has something to send.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.schedule.poll_timeout()
    }

    /// Sends what is due at `now` (`status` gives the STATUS text).
    pub fn handle_timeout(&mut self, now: Instant, status: impl FnOnce() -> String) {
        if let Some(msg) = self.schedule.handle_timeout(now, status) {
            self.send(&msg);
        }
    }

    /// Says shutdown has begun.
    pub fn stopping(&mut self) {
        if let Some(msg) = self.schedule.stopping() {
            self.send(&msg);
        }
    }

    fn send(&mut self, msg: &str) {
        let sent = match &self.target {
            Target::Path(p) => self.socket.send_to(msg.as_bytes(), p),
            Target::Abstract(name) => {
                abstract_addr(name).and_then(|addr| self.socket.send_to_addr(msg.as_bytes(), &addr))
            }
        };
        match sent {
            Ok(_) => {}
            Err(e) if !self.warned => {
                self.warned = true;
                warn!(
                    "cannot notify the service manager at {}: {e} (not said again)",
                    self.target
                );
            }
            Err(e) => debug!("cannot notify {}: {e}", self.target),
        }
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn abstract_addr(name: &[u8]) -> io::Result<std::os::unix::net::SocketAddr> {
    #[cfg(target_os = "android")]
    use std::os::android::net::SocketAddrExt;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt;
    std::os::unix::net::SocketAddr::from_abstract_name(name)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn abstract_addr(_name: &[u8]) -> io::Result<std::os::unix::net::SocketAddr> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract socket addresses exist only on Linux",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    #[test]
    fn status_lines_read_well() {
        let f = Figures {
            clients: 3,
            torrents: 2,
            downloading: 1,
            seeding: 1,
            download_rate: 1_258_291,
            upload_rate: 300 << 10,
            ..Figures::default()
        };
        assert_eq!(
            f.line(),
            "3 clients, 2 torrents (1 downloading, 1 seeding), down 1.2 MiB/s, up 300 KiB/s"
        );
        let one = Figures {
            clients: 1,
            torrents: 1,
            failed: 1,
            ..Figures::default()
        };
        assert_eq!(
            one.line(),
            "1 client, 1 torrent (1 failed), down 0 B/s, up 0 B/s"
        );
        assert_eq!(
            Figures::default().line(),
            "0 clients, 0 torrents, down 0 B/s, up 0 B/s"
        );
    }

    #[test]
    fn rates_pick_their_unit() {
        assert_eq!(human_rate(0), "0 B/s");
        assert_eq!(human_rate(1023), "1023 B/s");
        assert_eq!(human_rate(1024), "1 KiB/s");
        assert_eq!(human_rate(1536), "2 KiB/s");
        assert_eq!(human_rate((1 << 20) - 1), "1023 KiB/s");
        assert_eq!(human_rate(1 << 20), "1.0 MiB/s");
        assert_eq!(human_rate(3 << 30), "3.0 GiB/s");
        assert_eq!(human_rate(u64::MAX), "17179869184.0 GiB/s");
    }

    #[test]
    fn nothing_is_sent_before_ready() {
        let base = Instant::now();
        let mut s = Schedule::new(Some(Duration::from_millis(100)));
        assert_eq!(s.poll_timeout(), None);
        assert_eq!(s.handle_timeout(at(base, 10_000), || "x".into()), None);
    }

    #[test]
    fn ready_then_status_every_few_seconds_when_it_changed() {
        let base = Instant::now();
        let mut s = Schedule::new(None);
        assert_eq!(
            s.ready(base, "idle".into()).as_deref(),
            Some("READY=1\nSTATUS=idle")
        );
        assert_eq!(s.ready(base, "idle".into()), None, "said once");
        assert_eq!(s.poll_timeout(), Some(base + STATUS_EVERY));
        // Not yet due: the text is not even asked for.
        assert_eq!(
            s.handle_timeout(at(base, 4_999), || panic!("asked early")),
            None
        );
        // Due but unchanged: nothing sent, next one scheduled.
        assert_eq!(s.handle_timeout(at(base, 5_000), || "idle".into()), None);
        assert_eq!(s.poll_timeout(), Some(at(base, 10_000)));
        // Changed: sent, control characters flattened.
        assert_eq!(
            s.handle_timeout(at(base, 10_002), || "busy\nnow".into())
                .as_deref(),
            Some("STATUS=busy now")
        );
        assert_eq!(s.poll_timeout(), Some(at(base, 15_002)));
    }

    #[test]
    fn the_watchdog_is_pinged_at_its_interval_until_the_end() {
        let base = Instant::now();
        let mut s = Schedule::new(Some(Duration::from_millis(100)));
        let ready = s.ready(base, "s".into()).unwrap();
        assert!(ready.starts_with("READY=1\n") && ready.ends_with("\nWATCHDOG=1"));
        assert_eq!(s.poll_timeout(), Some(at(base, 100)));
        assert_eq!(s.handle_timeout(at(base, 99), || "s".into()), None);
        assert_eq!(
            s.handle_timeout(at(base, 130), || "s".into()).as_deref(),
            Some("WATCHDOG=1")
        );
        // The next ping counts from when this one went.
        assert_eq!(s.poll_timeout(), Some(at(base, 230)));
        assert_eq!(s.stopping().as_deref(), Some("STOPPING=1\nSTATUS=stopping"));
        assert_eq!(s.stopping(), None, "said once");
        assert_eq!(s.poll_timeout(), Some(at(base, 230)), "no more STATUS");
        assert_eq!(
            s.handle_timeout(at(base, 10_000), || panic!("no STATUS after stopping"))
                .as_deref(),
            Some("WATCHDOG=1")
        );
        // Ready after stopping is not said.
        assert_eq!(s.ready(at(base, 10_001), "s".into()), None);
    }

    #[test]
    fn tiny_and_huge_watchdog_intervals_are_safe() {
        let base = Instant::now();
        let mut s = Schedule::new(Some(Duration::from_nanos(1)));
        s.ready(base, String::new());
        assert_eq!(s.poll_timeout(), Some(base + MIN_WATCHDOG_PING));
        // Far beyond what an Instant can hold: no ping, no panic.
        let mut s = Schedule::new(Some(Duration::from_micros(u64::MAX)));
        s.ready(base, String::new());
        assert_eq!(s.poll_timeout(), Some(base + STATUS_EVERY));
    }

    #[test]
    fn status_text_is_bounded() {
        let long = "é".repeat(1000);
        let f = status_field(&long);
        assert!(f.len() <= "STATUS=".len() + MAX_STATUS);
        assert!(f.starts_with("STATUS=é"));
    }

    #[test]
    fn notify_socket_values() {
        let p = |s: &str| parse_notify_socket(OsStr::new(s));
        assert_eq!(
            p("/run/systemd/notify"),
            Ok(Target::Path("/run/systemd/notify".into()))
        );
        assert_eq!(p("@sd/notify"), Ok(Target::Abstract(b"sd/notify".to_vec())));
        for bad in ["", "@", "relative/path", "vsock:2:1234"] {
            assert!(p(bad).is_err(), "{bad:?}");
        }
        assert!(p(&format!("/{}", "a".repeat(200))).is_err());
    }

    #[test]
    fn watchdog_values() {
        let w = |usec: Option<&str>, pid: Option<&str>| {
            parse_watchdog(usec.map(OsStr::new), pid.map(OsStr::new), 42)
        };
        assert_eq!(w(None, None), Ok(None));
        assert_eq!(w(None, Some("42")), Ok(None));
        assert_eq!(
            w(Some("200000"), None),
            Ok(Some(Duration::from_millis(100)))
        );
        assert_eq!(
            w(Some("200000"), Some("42")),
            Ok(Some(Duration::from_millis(100)))
        );
        assert_eq!(w(Some("200000"), Some("43")), Ok(None), "another's");
        assert_eq!(w(Some("0"), None), Ok(None));
        assert!(w(Some("-1"), None).is_err());
        assert!(w(Some("2s"), None).is_err());
        assert!(w(Some("200000"), Some("me")).is_err());
    }

    /// A real datagram socket gets what the schedule decides.
    fn received(target: Target, server: &UnixDatagram) -> Vec<String> {
        server
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let base = Instant::now();
        let mut n = Notifier::new(target, Some(Duration::from_millis(100))).unwrap();
        n.ready(base, "up".into());
        n.handle_timeout(at(base, 100), || "up".into());
        n.stopping();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        for _ in 0..3 {
            let len = server.recv(&mut buf).unwrap();
            got.push(String::from_utf8_lossy(&buf[..len]).into_owned());
        }
        got
    }

    #[test]
    fn datagrams_reach_a_socket_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        assert_eq!(
            received(Target::Path(path), &server),
            [
                "READY=1\nSTATUS=up\nWATCHDOG=1",
                "WATCHDOG=1",
                "STOPPING=1\nSTATUS=stopping"
            ]
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn datagrams_reach_an_abstract_socket() {
        let name = format!("tripcd-notify-test-{}", std::process::id());
        let addr = abstract_addr(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&addr).unwrap();
        let got = received(Target::Abstract(name.into_bytes()), &server);
        assert_eq!(got.len(), 3);
        assert!(got[0].starts_with("READY=1\n"));
    }

    #[test]
    fn a_missing_manager_is_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let mut n = Notifier::new(Target::Path(dir.path().join("nobody")), None).unwrap();
        n.ready(Instant::now(), "up".into());
        assert!(n.warned);
        n.stopping();
    }
}
