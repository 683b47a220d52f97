//! Shared by the integration tests: the real daemon on a temporary socket,
//! raw connections, and the vectors of `tests/data/cases.jsonl`.

#![allow(dead_code)]

pub mod fakepeer;
pub mod tls;
pub mod tracker;

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tripcd::client::{Client, ClientError, FrameReader};
use tripcd::codec::{decode, split_frame, Value};

/// Upper bound on any single wait, so that a broken daemon fails a test
/// instead of hanging it. Never a condition for passing.
pub const HANG: Duration = Duration::from_secs(60);

/// The daemon binary, running on a temporary state directory.
pub struct Daemon {
    child: Option<Child>,
    pub state: PathBuf,
    pub socket: PathBuf,
    pub log: Arc<Mutex<Vec<String>>>,
    lines: Receiver<String>,
}

impl Daemon {
    /// Starts tripcd in `state` with extra arguments, and waits until it
    /// says it is ready. `Err` carries its stderr if it exits instead.
    pub fn try_start(state: &Path, args: &[&str]) -> Result<Daemon, String> {
        Daemon::try_start_env(state, args, &[])
    }

    /// [`Daemon::try_start`] with extra environment variables.
    pub fn try_start_env(
        state: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Daemon, String> {
        let socket = match args.iter().position(|a| *a == "--socket") {
            Some(i) => PathBuf::from(args[i + 1]),
            None => state.join("socket"),
        };
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tripcd"));
        cmd.arg("--state-dir").arg(state);
        if !args.contains(&"--download-dir") {
            cmd.arg("--download-dir").arg(state.join("downloads"));
        }
        // Peers on loopback only, as every test's traffic; the fixtures
        // name trackers on the Internet: no announces unless a test asks.
        if !args.contains(&"--peer-bind") {
            cmd.args(["--peer-bind", "127.0.0.1"]);
        }
        if !args.contains(&"--announce") {
            cmd.args(["--announce", "false"]);
        }
        // The DHT's default routers are on the Internet: none unless a
        // test gives its own.
        if !args
            .iter()
            .any(|a| a.starts_with("--dht") || *a == "--no-dht")
        {
            cmd.arg("--no-dht");
        }
        // Tests run side by side: none takes the RPC's default port
        // unless it gives its own address.
        if !args
            .iter()
            .any(|a| a.starts_with("--rpc") || *a == "--no-rpc")
        {
            cmd.arg("--no-rpc");
        }
        let mut child = cmd
            .args(args)
            .env("RUST_LOG", "debug")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tripcd");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = channel();
        let log2 = Arc::clone(&log);
        // Drain stderr for the whole run so the daemon never blocks on it.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                log2.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        let mut d = Daemon {
            child: Some(child),
            state: state.to_path_buf(),
            socket,
            log,
            lines: rx,
        };
        match d.wait_for_log(" ready on ") {
            Some(_) => Ok(d),
            None => {
                let status = d.child.as_mut().and_then(|c| c.wait().ok());
                d.child = None;
                Err(format!("{status:?}: {}", d.log.lock().unwrap().join("\n")))
            }
        }
    }

    /// Starts tripcd in `state`, panicking if it does not come up.
    pub fn start_in(state: &Path, args: &[&str]) -> Daemon {
        Daemon::try_start(state, args).unwrap_or_else(|e| panic!("tripcd did not start: {e}"))
    }

    /// Blocks until a log line containing `needle` appears (lines already
    /// seen count); `None` if the daemon's stderr closes first.
    pub fn wait_for_log(&mut self, needle: &str) -> Option<String> {
        if let Some(l) = self.log.lock().unwrap().iter().find(|l| l.contains(needle)) {
            return Some(l.clone());
        }
        loop {
            match self.lines.recv_timeout(HANG) {
                Ok(line) if line.contains(needle) => return Some(line),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    /// [`Daemon::wait_for_log`] for the first line containing any of
    /// `needles`.
    pub fn wait_for_any(&mut self, needles: &[&str]) -> Option<String> {
        let hit = |l: &str| needles.iter().any(|n| l.contains(n));
        if let Some(l) = self.log.lock().unwrap().iter().find(|l| hit(l)) {
            return Some(l.clone());
        }
        loop {
            match self.lines.recv_timeout(HANG) {
                Ok(line) if hit(&line) => return Some(line),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    /// Whether any log line so far contains `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// A version 2 client.
    pub fn client(&self) -> Client {
        let mut c = Client::connect(&self.socket).expect("connect");
        c.set_timeout(Some(HANG)).unwrap();
        c
    }

    /// A raw connection that has read the greeting (nothing sent yet).
    pub fn raw(&self) -> Raw {
        let mut r = Raw::connect(&self.socket);
        let greeting = r.frame().expect("greeting");
        assert!(greeting.contains("7:version"), "{greeting}");
        r
    }

    /// Sends a signal to the daemon.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), sig).unwrap();
    }

    /// Waits for the daemon to exit.
    pub fn wait(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        child.wait().expect("wait")
    }

    /// `kill -9`, then reap.
    pub fn kill9(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGKILL);
        self.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A raw protocol connection: bytes out, whole frames in.
pub struct Raw {
    pub stream: UnixStream,
    reader: FrameReader,
}

impl Raw {
    pub fn connect(socket: &Path) -> Raw {
        let stream = UnixStream::connect(socket).expect("connect");
        stream.set_read_timeout(Some(HANG)).unwrap();
        Raw {
            stream,
            reader: FrameReader::new(),
        }
    }

    /// Writes bytes; `false` if the daemon already closed the connection.
    pub fn send(&mut self, bytes: &[u8]) -> bool {
        match self.stream.write_all(bytes) {
            Ok(()) => true,
            Err(e) if matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset) => {
                false
            }
            Err(e) => panic!("write: {e}"),
        }
    }

    /// Sends the version message offering 1..=max.
    pub fn handshake(&mut self, max: i64) {
        assert!(self.send(&tripcd::client::version_frame(1, max)));
    }

    /// The next frame, header included, as text; `None` at end of stream
    /// (a reset counts: the daemon closed with our bytes unread).
    pub fn frame(&mut self) -> Option<String> {
        match self.reader.read_payload(&mut self.stream) {
            Ok(p) => Some(format!("{:08X}{}", p.len(), String::from_utf8_lossy(&p))),
            Err(ClientError::Closed) => None,
            Err(ClientError::Io(e)) if e.kind() == ErrorKind::ConnectionReset => None,
            Err(e) => panic!("read: {e}"),
        }
    }

    /// Every frame until the daemon closes the connection.
    pub fn frames_until_closed(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(f) = self.frame() {
            out.push(f);
        }
        out
    }

    /// Sends a tagged noop and returns every frame before its reply: on a
    /// version 2 connection, a deterministic "what did the daemon send,
    /// and is it still open" without waiting on a clock.
    pub fn frames_before_probe(&mut self) -> Option<Vec<String>> {
        const PROBE: &str = "00000012l4:noop0:i987654ee";
        let reply = "00000017l9:succeeded0:i987654ee";
        if !self.send(PROBE.as_bytes()) {
            return None;
        }
        let mut out = Vec::new();
        loop {
            let f = self.frame()?;
            if f == reply {
                return Some(out);
            }
            out.push(f);
        }
    }
}

/// One vector from `cases.jsonl`.
#[derive(Debug, Clone)]
pub struct Case {
    pub name: String,
    pub handshake: i64,
    pub send: Vec<u8>,
    pub expect: Vec<String>,
    pub after: String,
}

/// Every vector.
pub fn cases() -> Vec<Case> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/cases.jsonl");
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            Case {
                name: v["name"].as_str().unwrap().into(),
                handshake: v["handshake"].as_i64().unwrap(),
                send: v["send"].as_str().unwrap().as_bytes().to_vec(),
                expect: v["expect"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| e.as_str().unwrap().to_string())
                    .collect(),
                after: v["after"].as_str().unwrap().into(),
            }
        })
        .collect()
}

/// Whether a frame meets an expectation: equal bytes, or the vectors'
/// `FAILED_WITH_REASON tag=N` (a `failed` with a non-empty reason).
pub fn matches(expect: &str, got: &str) -> bool {
    match expect.strip_prefix("FAILED_WITH_REASON tag=") {
        Some(tag) => {
            let Ok(Some(r)) = split_frame(got.as_bytes(), usize::MAX) else {
                return false;
            };
            let Ok(v) = decode(&got.as_bytes()[r]) else {
                return false;
            };
            let Some(l) = v.as_list() else { return false };
            l.len() == 3
                && l[0] == Value::str("failed")
                && l[1].as_bytes().is_some_and(|r| !r.is_empty())
                && l[2] == Value::Int(tag.parse().unwrap())
        }
        None => expect == got,
    }
}

/// Asserts the frames a case produced.
pub fn assert_frames(case: &Case, how: &str, got: &[String]) {
    assert_eq!(
        got.len(),
        case.expect.len(),
        "{} ({how}): expected {:?}, got {got:?}",
        case.name,
        case.expect
    );
    for (e, g) in case.expect.iter().zip(got) {
        assert!(
            matches(e, g),
            "{} ({how}): expected {e}, got {g}",
            case.name
        );
    }
}

/// Path to a fixture file.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/fixtures")
        .join(name)
}

/// Writes a single-file torrent for `data` (stored as `dir/name`) and
/// returns the metainfo's path.
pub fn make_torrent(dir: &Path, name: &str, data: &[u8], piece_length: usize) -> PathBuf {
    use sha1::{Digest, Sha1};
    std::fs::write(dir.join(name), data).unwrap();
    let mut pieces = Vec::new();
    for chunk in data.chunks(piece_length) {
        pieces.extend_from_slice(&Sha1::digest(chunk));
    }
    let info = Value::dict([
        ("length", Value::Int(data.len() as i64)),
        ("name", Value::str(name)),
        ("piece length", Value::Int(piece_length as i64)),
        ("pieces", Value::Bytes(pieces)),
    ]);
    let meta = Value::dict([
        ("announce", Value::str("http://tracker.test:8000/announce")),
        ("info", info),
    ]);
    let path = dir.join(format!("{name}.torrent"));
    std::fs::write(&path, meta.to_bencode().unwrap()).unwrap();
    path
}

/// One client of a real sans-IO [`tripcd::server::Server`], driven as the
/// reactor drives it, with no socket: for the vector and property tests.
pub struct Core {
    pub server: tripcd::server::Server,
    pub id: tripcd::server::ClientId,
    _dir: tempfile::TempDir,
}

impl Core {
    /// A server on a fresh state directory, one client connected, its
    /// greeting taken.
    pub fn new() -> Core {
        let dir = tempfile::tempdir().unwrap();
        let reg = tripcd::registry::Registry::open(
            dir.path(),
            tripcd::registry::Settings::defaults("/downloads".into()),
        )
        .unwrap();
        let svc = tripcd::service::Service::new(reg);
        let mut server = tripcd::server::Server::new(svc, tripcd::config::Config::default());
        let now = std::time::Instant::now();
        let id = server
            .connect(tripcd::front::FrontKind::Ipc, None, now)
            .unwrap();
        let greeting = server.output(id).to_vec();
        assert_eq!(greeting, tripcd::session::greeting());
        server.consume_output(id, greeting.len());
        Core {
            server,
            id,
            _dir: dir,
        }
    }

    /// Bytes in; turn after turn (commit, release, output) until no
    /// complete input waits; what the client would read is appended to
    /// `out`.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        let s = &mut self.server;
        let now = std::time::Instant::now();
        s.receive(self.id, bytes, now);
        loop {
            s.end_turn(now);
            if let Some(port) = s.poll_bind() {
                s.bind_result(port, Ok(()), now); // no socket: every bind works
            }
            let o = s.output(self.id).to_vec();
            s.consume_output(self.id, o.len());
            out.extend(o);
            if !s.flushed(self.id).more_input {
                break;
            }
            s.receive(self.id, &[], now);
        }
    }

    /// `quit` was received.
    pub fn quit(&self) -> bool {
        self.server.quit_requested()
    }

    /// The connection is closing for a protocol error (or a hang-up).
    pub fn failed(&self) -> bool {
        !self.quit() && !self.server.wants_input(self.id)
    }
}

/// A metainfo file for `files` (name, bytes) under a directory `name`,
/// announcing to `announce`, in pieces of `piece_length`.
pub fn multi_torrent(
    name: &str,
    files: &[(&str, &[u8])],
    piece_length: usize,
    announce: &str,
) -> Vec<u8> {
    tiered_torrent(name, files, piece_length, &[&[announce]])
}

/// [`multi_torrent`] with tiers of trackers (BEP 12 `announce-list`;
/// `announce` is the first tracker of the first tier).
pub fn tiered_torrent(
    name: &str,
    files: &[(&str, &[u8])],
    piece_length: usize,
    tiers: &[&[&str]],
) -> Vec<u8> {
    use sha1::{Digest, Sha1};
    let all: Vec<u8> = files.iter().flat_map(|(_, d)| d.iter().copied()).collect();
    let pieces: Vec<u8> = all
        .chunks(piece_length)
        .flat_map(|c| <[u8; 20]>::from(Sha1::digest(c)))
        .collect();
    let list = files
        .iter()
        .map(|(n, d)| {
            Value::dict([
                ("length", Value::Int(d.len() as i64)),
                ("path", Value::List(vec![Value::str(n)])),
            ])
        })
        .collect();
    let info = Value::dict([
        ("files", Value::List(list)),
        ("name", Value::str(name)),
        ("piece length", Value::Int(piece_length as i64)),
        ("pieces", Value::Bytes(pieces)),
    ]);
    let announce = tiers.first().and_then(|t| t.first()).copied().unwrap_or("");
    let mut top = vec![("announce", Value::str(announce)), ("info", info)];
    if tiers.len() > 1 || tiers.iter().any(|t| t.len() > 1) {
        let list = tiers
            .iter()
            .map(|t| Value::List(t.iter().map(|u| Value::str(u)).collect()))
            .collect();
        top.push(("announce-list", Value::List(list)));
    }
    Value::dict(top).to_bencode().expect("encodes")
}

/// A daemon announcing to trackers, its peer port free and set.
pub fn announcing_daemon(state: &Path) -> (Daemon, u16) {
    let d = Daemon::start_in(state, &["--announce", "true"]);
    let port = free_port();
    d.client()
        .request("port", &Value::Int(port.into()))
        .expect("port set");
    (d, port)
}

/// Repeatable noise.
pub fn noise(seed: u32, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// A TCP port free on loopback just now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Adds `torrent` (metainfo bytes) with its data in `dir`, started.
pub fn add(c: &mut Client, torrent: &[u8], dir: &Path) -> i64 {
    add_with(c, torrent, dir, true)
}

/// Adds `torrent` with its data in `dir`, started or not.
pub fn add_with(c: &mut Client, torrent: &[u8], dir: &Path, start: bool) -> i64 {
    let req = Value::dict([
        ("autostart", Value::Int(start.into())),
        ("data", Value::Bytes(torrent.to_vec())),
        ("directory", Value::str(dir.to_str().expect("utf-8 path"))),
    ]);
    let reply = c.request("addfile-detailed", &req).unwrap().unwrap();
    reply.value.as_list().unwrap()[0]
        .get("id")
        .and_then(Value::as_int)
        .unwrap()
}

/// One status field of torrent `id` (`Int(-2)` when absent).
pub fn status(c: &mut Client, id: i64, ty: &str) -> Value {
    let req = Value::dict([
        ("id", Value::List(vec![Value::Int(id)])),
        ("type", Value::List(vec![Value::str(ty)])),
    ]);
    let reply = c.request("get-status", &req).unwrap().unwrap();
    reply.value.as_list().unwrap()[0]
        .get(ty)
        .cloned()
        .unwrap_or(Value::Int(-2))
}

/// Waits until torrent `id` of `c` says `state` (bounded by [`HANG`], which
/// only turns a hang into a failure).
pub fn wait_for_state(c: &mut Client, id: i64, state: &str) {
    let start = Instant::now();
    loop {
        let now = status(c, id, "state");
        if now.as_str() == Some(state) {
            return;
        }
        assert!(start.elapsed() < HANG, "still {now:?}, not {state}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Held by a test that sets a fixed peer port (51413, 6881...), which the
/// daemon really binds: two such tests at once in one test binary would
/// take each other's port.
pub fn fixed_ports() -> std::sync::MutexGuard<'static, ()> {
    static PORTS: Mutex<()> = Mutex::new(());
    PORTS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A [`Daemon`] around a child already spawned (tripcd, or a program that
/// execs it), whose stderr is `stderr`; nothing is waited for: the caller
/// waits for the log line it needs. `socket` is where clients connect.
pub fn daemon_from(
    child: Child,
    stderr: impl std::io::Read + Send + 'static,
    state: &Path,
    socket: &Path,
) -> Daemon {
    let log = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = channel();
    let log2 = Arc::clone(&log);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            log2.lock().unwrap().push(line.clone());
            let _ = tx.send(line);
        }
    });
    Daemon {
        child: Some(child),
        state: state.to_path_buf(),
        socket: socket.to_path_buf(),
        log,
        lines: rx,
    }
}
