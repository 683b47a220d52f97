//! The load generator and the reference server it is measured against.
//!
//! [`run_load`] opens N connections on one mio loop, does the handshake on
//! each, then keeps D tagged requests in flight per connection for a
//! while, checking that every reply carries the tag of the oldest request
//! in flight (replies come in order). [`run_idle`] only holds handshaken
//! connections, to measure the daemon's memory per connection.
//! [`EchoServer`] answers `succeeded` with the tag to every frame and does
//! nothing else: the practical limit of this protocol on the machine.

pub mod soak;
pub mod torrents;

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::net::{UnixListener, UnixStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use tripcd::client::{encode_message, version_frame};
use tripcd::codec::{split_frame, Value, PROTOCOL_MAX};
use tripcd::message;

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// The daemon's socket.
    pub socket: PathBuf,
    /// Connections to open.
    pub connections: usize,
    /// Requests in flight per connection.
    pub depth: usize,
    /// How long to send requests (after every connection is handshaken).
    pub duration: Duration,
    /// The key to send.
    pub key: String,
    /// Its value.
    pub value: Value,
    /// The daemon's pid, to report its memory.
    pub pid: Option<u32>,
    /// Print a progress line every second on stderr.
    pub progress: bool,
}

/// What a run measured.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Connections handshaken.
    pub connections: usize,
    /// Requests in flight per connection.
    pub depth: usize,
    /// Replies received during the measured window.
    pub requests: u64,
    /// Replies with a wrong tag or key, and connections lost.
    pub errors: u64,
    /// Length of the measured window.
    pub seconds: f64,
    /// Replies per second.
    pub throughput: f64,
    /// Latency percentiles and maximum, in microseconds.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Maximum.
    pub max_us: u64,
    /// Connections (with handshake) per second while connecting.
    pub connect_rate: f64,
    /// The daemon's resident memory at the end, in KiB.
    pub rss_kib: Option<u64>,
    /// The daemon's resident memory before connecting, in KiB.
    pub rss_before_kib: Option<u64>,
}

impl Report {
    /// Memory the daemon added per connection, in bytes.
    pub fn bytes_per_connection(&self) -> Option<f64> {
        let (a, b) = (self.rss_before_kib?, self.rss_kib?);
        (self.connections > 0)
            .then(|| (b.saturating_sub(a) * 1024) as f64 / self.connections as f64)
    }

    /// Every figure, by name, as machines read them (`None`: not measured).
    fn fields(&self) -> [(&'static str, serde_json::Value); 13] {
        use serde_json::json;
        [
            ("connections", json!(self.connections)),
            ("depth", json!(self.depth)),
            ("requests", json!(self.requests)),
            ("errors", json!(self.errors)),
            ("seconds", json!((self.seconds * 1000.0).round() / 1000.0)),
            ("throughput", json!(self.throughput.round() as u64)),
            ("p50_us", json!(self.p50_us)),
            ("p99_us", json!(self.p99_us)),
            ("p999_us", json!(self.p999_us)),
            ("max_us", json!(self.max_us)),
            ("connect_rate", json!(self.connect_rate.round() as u64)),
            ("rss_kib", json!(self.rss_kib)),
            (
                "bytes_per_connection",
                json!(self.bytes_per_connection().map(|b| b.round() as u64)),
            ),
        ]
    }

    /// CSV header matching [`Report::csv`].
    pub fn csv_header() -> String {
        Report::default().fields().map(|(name, _)| name).join(",")
    }

    /// One CSV line (an unmeasured figure is empty).
    pub fn csv(&self) -> String {
        self.fields()
            .map(|(_, v)| {
                if v.is_null() {
                    String::new()
                } else {
                    v.to_string()
                }
            })
            .join(",")
    }

    /// A JSON object.
    pub fn json(&self) -> serde_json::Value {
        serde_json::Value::Object(
            self.fields()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        )
    }

    /// Lines for a person.
    pub fn text(&self) -> String {
        if self.depth == 0 {
            let mut s = format!(
                "held {} handshaken connections (connect rate {:.0}/s)",
                self.connections, self.connect_rate
            );
            if let (Some(a), Some(b)) = (self.rss_before_kib, self.rss_kib) {
                s.push_str(&format!(
                    "\ndaemon RSS {a} KiB before, {b} KiB with them: {:.0} bytes per connection",
                    self.bytes_per_connection().unwrap_or(0.0)
                ));
            }
            return s;
        }
        let mut s = format!(
            "connections {}  depth {}  replies {}  errors {}  in {:.2}s\n\
             throughput {:.0}/s  latency p50 {}us  p99 {}us  p99.9 {}us  max {}us\n\
             connect rate {:.0}/s",
            self.connections,
            self.depth,
            self.requests,
            self.errors,
            self.seconds,
            self.throughput,
            self.p50_us,
            self.p99_us,
            self.p999_us,
            self.max_us,
            self.connect_rate
        );
        if let Some(rss) = self.rss_kib {
            s.push_str(&format!("\ndaemon RSS {rss} KiB"));
            if let Some(b) = self.bytes_per_connection() {
                s.push_str(&format!(" ({b:.0} bytes per connection)"));
            }
        }
        s
    }
}

/// The resident memory of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

pub use tripcd::sys::raise_fd_limit;

struct LoadConn {
    stream: UnixStream,
    input: Vec<u8>,
    output: Vec<u8>,
    sent: usize,
    handshaken: bool,
    in_flight: VecDeque<(i64, Instant)>,
    next_tag: i64,
    dead: bool,
}

impl LoadConn {
    /// Reads what arrived, records each reply's latency, and (unless
    /// stopping) sends a new request for each.
    fn serve(
        &mut self,
        counters: &mut Counters,
        stopping: bool,
        frame_for: &dyn Fn(i64) -> Vec<u8>,
    ) {
        match read_into(&mut self.stream, &mut self.input) {
            Ok(true) => {}
            Ok(false) | Err(_) => {
                self.dead = true;
                counters.errors += 1 + self.in_flight.len() as u64;
                self.in_flight.clear();
                return;
            }
        }
        let mut used = 0;
        let now = Instant::now();
        while let Ok(Some(r)) = split_frame(&self.input[used..], PROTOCOL_MAX) {
            let payload = &self.input[used + r.start..used + r.end];
            used += r.end;
            let Some((want, sent_at)) = self.in_flight.pop_front() else {
                counters.errors += 1;
                continue;
            };
            if reply_tag(payload, None) != Some(want) {
                counters.errors += 1;
            }
            let us = now.duration_since(sent_at).as_micros() as u64;
            counters.hist.saturating_record(us.max(1));
            counters.replies += 1;
            if !stopping {
                let tag = self.next_tag;
                self.next_tag += 1;
                self.output.extend_from_slice(&frame_for(tag));
                self.in_flight.push_back((tag, now));
            }
        }
        self.input.drain(..used);
        if self.flush().is_err() {
            self.dead = true;
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        while self.sent < self.output.len() {
            match self.stream.write(&self.output[self.sent..]) {
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.sent == self.output.len() {
            self.output.clear();
            self.sent = 0;
        }
        Ok(())
    }
}

struct Counters {
    hist: Histogram<u64>,
    replies: u64,
    errors: u64,
}

impl Counters {
    /// The figures of a run that started at `start`.
    fn report(
        &self,
        config: &LoadConfig,
        connections: usize,
        start: Instant,
        connect_rate: f64,
        rss_before: Option<u64>,
    ) -> Report {
        let seconds = start.elapsed().as_secs_f64();
        let h = &self.hist;
        Report {
            connections,
            depth: config.depth,
            requests: self.replies,
            errors: self.errors,
            seconds,
            throughput: self.replies as f64 / seconds,
            p50_us: h.value_at_quantile(0.5),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            connect_rate,
            rss_kib: config.pid.and_then(rss_kib),
            rss_before_kib: rss_before,
        }
    }
}

/// Connects `n` clients and handshakes each; returns them and the
/// connect rate.
fn connect_all(
    poll: &mut Poll,
    socket: &Path,
    n: usize,
    progress: bool,
) -> io::Result<(Slab<LoadConn>, f64)> {
    let mut conns = Slab::with_capacity(n);
    let mut events = Events::with_capacity(4096);
    let start = Instant::now();
    let mut handshaken = 0;
    let hello = version_frame(1, 2);
    let mut last_progress = Instant::now();
    while handshaken < n {
        // Open as many as the backlog takes, then serve handshakes.
        while conns.len() < n {
            match UnixStream::connect(socket) {
                Ok(mut stream) => {
                    let entry = conns.vacant_entry();
                    poll.registry().register(
                        &mut stream,
                        Token(entry.key()),
                        Interest::READABLE | Interest::WRITABLE,
                    )?;
                    entry.insert(LoadConn {
                        stream,
                        input: Vec::new(),
                        output: hello.clone(),
                        sent: 0,
                        handshaken: false,
                        in_flight: VecDeque::new(),
                        next_tag: 1,
                        dead: false,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        poll.poll(&mut events, Some(Duration::from_millis(10)))?;
        for ev in events.iter() {
            let Some(c) = conns.get_mut(ev.token().0) else {
                continue;
            };
            c.flush()?;
            if c.handshaken {
                continue;
            }
            read_into(&mut c.stream, &mut c.input)?;
            if let Ok(Some(r)) = split_frame(&c.input, PROTOCOL_MAX) {
                c.input.drain(..r.end);
                c.handshaken = true;
                handshaken += 1;
            }
        }
        if progress && last_progress.elapsed() >= Duration::from_secs(1) {
            eprint!("\rconnected {handshaken}/{n}   ");
            last_progress = Instant::now();
        }
    }
    let rate = n as f64 / start.elapsed().as_secs_f64().max(1e-9);
    if progress {
        eprintln!("\rconnected {n}/{n} ({rate:.0}/s)");
    }
    Ok((conns, rate))
}

fn read_into(stream: &mut UnixStream, buf: &mut Vec<u8>) -> io::Result<bool> {
    let mut chunk = [0u8; 64 << 10];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(false),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// The tag of a reply frame's payload, if it is a `[key, value, tag]` list
/// whose key is not an error.
fn reply_tag(payload: &[u8], expect_key: Option<&[u8]>) -> Option<i64> {
    let (key, tag) = message::peek(payload).ok()?;
    if let Some(want) = expect_key {
        if key != want {
            return None;
        }
    } else if matches!(key, b"failed" | b"bad-format" | b"not-supported") {
        return None;
    }
    tag
}

/// Runs the load and reports.
pub fn run_load(config: &LoadConfig) -> io::Result<Report> {
    raise_fd_limit();
    let rss_before = config.pid.and_then(rss_kib);
    let mut poll = Poll::new()?;
    let (mut conns, connect_rate) = connect_all(
        &mut poll,
        &config.socket,
        config.connections,
        config.progress,
    )?;
    for (key, c) in conns.iter_mut() {
        poll.registry().reregister(
            &mut c.stream,
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        )?;
    }
    let mut counters = Counters {
        hist: Histogram::new_with_bounds(1, 60_000_000, 3).map_err(io::Error::other)?,
        replies: 0,
        errors: 0,
    };
    // A template frame; only the tag changes.
    let frames_for = |tag: i64| encode_message(&config.key, &config.value, Some(tag));
    let start = Instant::now();
    fill_pipelines(&mut conns, config.depth, start, &frames_for)?;
    drive(
        &mut poll,
        &mut conns,
        &mut counters,
        config,
        start,
        &frames_for,
    )?;
    Ok(counters.report(config, conns.len(), start, connect_rate, rss_before))
}

/// Puts `depth` requests in flight on every connection, all sent at
/// `start`.
fn fill_pipelines(
    conns: &mut Slab<LoadConn>,
    depth: usize,
    start: Instant,
    frames_for: &dyn Fn(i64) -> Vec<u8>,
) -> io::Result<()> {
    for (_, c) in conns.iter_mut() {
        for _ in 0..depth {
            let tag = c.next_tag;
            c.next_tag += 1;
            c.output.extend_from_slice(&frames_for(tag));
            c.in_flight.push_back((tag, start));
        }
        c.flush()?;
    }
    Ok(())
}

/// Serves replies, each answered with a new request, until the run's
/// duration has passed; then waits for the requests in flight, at most
/// 10 s (replies that never came are errors).
fn drive(
    poll: &mut Poll,
    conns: &mut Slab<LoadConn>,
    counters: &mut Counters,
    config: &LoadConfig,
    start: Instant,
    frames_for: &dyn Fn(i64) -> Vec<u8>,
) -> io::Result<()> {
    let mut events = Events::with_capacity(4096);
    let deadline = start + config.duration;
    let mut last_progress = Instant::now();
    let mut stopping = false;
    loop {
        let now = Instant::now();
        if !stopping && now >= deadline {
            stopping = true;
        }
        if stopping && conns.iter().all(|(_, c)| c.in_flight.is_empty() || c.dead) {
            break;
        }
        if stopping && now >= deadline + Duration::from_secs(10) {
            // Replies that never came are errors.
            counters.errors += conns
                .iter()
                .map(|(_, c)| c.in_flight.len() as u64)
                .sum::<u64>();
            break;
        }
        poll.poll(&mut events, Some(Duration::from_millis(100)))?;
        for ev in events.iter() {
            let Some(c) = conns.get_mut(ev.token().0) else {
                continue;
            };
            if c.dead {
                continue;
            }
            c.serve(counters, stopping, frames_for);
        }
        if config.progress && last_progress.elapsed() >= Duration::from_secs(1) {
            let secs = start.elapsed().as_secs_f64();
            eprint!(
                "\r{:.0}s  {} replies  {:.0}/s  errors {}   ",
                secs,
                counters.replies,
                counters.replies as f64 / secs,
                counters.errors
            );
            last_progress = Instant::now();
        }
    }
    if config.progress {
        eprintln!();
    }
    Ok(())
}

/// Opens and handshakes `n` connections, measures the daemon's memory,
/// then holds them until `hold` has passed.
pub fn run_idle(
    socket: &Path,
    n: usize,
    pid: Option<u32>,
    hold: Duration,
    progress: bool,
) -> io::Result<Report> {
    raise_fd_limit();
    let rss_before = pid.and_then(rss_kib);
    let mut poll = Poll::new()?;
    let (conns, connect_rate) = connect_all(&mut poll, socket, n, progress)?;
    // Let the daemon finish its turn, then read its memory.
    std::thread::sleep(Duration::from_millis(200));
    let rss = pid.and_then(rss_kib);
    std::thread::sleep(hold);
    drop(conns);
    Ok(Report {
        connections: n,
        connect_rate,
        rss_kib: rss,
        rss_before_kib: rss_before,
        ..Report::default()
    })
}

/// The reference server: the version handshake, then `succeeded` with the
/// tag for every frame. Same I/O pattern as tripcd (one scratch buffer,
/// replies batched into one write per read), none of its work.
pub struct EchoServer {
    poll: Poll,
    listener: UnixListener,
    conns: Slab<(UnixStream, Vec<u8>, Vec<u8>, bool)>,
}

const ECHO_LISTENER: Token = Token(usize::MAX - 1);

impl EchoServer {
    /// Binds `socket`.
    pub fn bind(socket: &Path) -> io::Result<EchoServer> {
        let _ = std::fs::remove_file(socket);
        let poll = Poll::new()?;
        let mut listener = UnixListener::bind(socket)?;
        poll.registry()
            .register(&mut listener, ECHO_LISTENER, Interest::READABLE)?;
        raise_fd_limit();
        Ok(EchoServer {
            poll,
            listener,
            conns: Slab::new(),
        })
    }

    /// Serves until the process ends.
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut scratch = vec![0u8; 64 << 10];
        let greeting = tripcd::session::greeting().to_vec();
        loop {
            self.poll.poll(&mut events, None)?;
            for ev in events.iter() {
                if ev.token() == ECHO_LISTENER {
                    while let Ok((mut s, _)) = self.listener.accept() {
                        let e = self.conns.vacant_entry();
                        self.poll.registry().register(
                            &mut s,
                            Token(e.key()),
                            Interest::READABLE,
                        )?;
                        let _ = s.write(&greeting);
                        e.insert((s, Vec::new(), Vec::new(), false));
                    }
                    continue;
                }
                let key = ev.token().0;
                let Some((stream, input, out, greeted)) = self.conns.get_mut(key) else {
                    continue;
                };
                let mut closed = false;
                loop {
                    match stream.read(&mut scratch) {
                        Ok(0) => {
                            closed = true;
                            break;
                        }
                        Ok(n) => input.extend_from_slice(&scratch[..n]),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(_) => {
                            closed = true;
                            break;
                        }
                    }
                }
                let mut used = 0;
                while let Ok(Some(r)) = split_frame(&input[used..], PROTOCOL_MAX) {
                    let payload = &input[used + r.start..used + r.end];
                    used += r.end;
                    if !*greeted {
                        *greeted = true;
                        continue;
                    }
                    let tag = reply_tag_any(payload);
                    message::write(out, b"succeeded", &Value::empty(), tag);
                }
                input.drain(..used);
                // Blocking write of the batch: the reference never queues.
                let mut off = 0;
                while off < out.len() {
                    match stream.write(&out[off..]) {
                        Ok(n) => off += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            std::thread::yield_now();
                        }
                        Err(_) => {
                            closed = true;
                            break;
                        }
                    }
                }
                out.clear();
                if closed {
                    let (mut s, ..) = self.conns.remove(key);
                    let _ = self.poll.registry().deregister(&mut s);
                }
            }
        }
    }
}

/// The third element of a `[key, value, tag]` list, if any.
fn reply_tag_any(payload: &[u8]) -> Option<i64> {
    message::peek(payload).ok()?.1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_tags_are_read_and_errors_refused() {
        assert_eq!(reply_tag(b"l9:succeeded0:i42ee", None), Some(42));
        assert_eq!(reply_tag(b"l6:failed3:whyi42ee", None), None);
        assert_eq!(reply_tag(b"l4:porti1ei3ee", Some(b"port")), Some(3));
        assert_eq!(reply_tag_any(b"l4:noop0:i7ee"), Some(7));
        assert_eq!(reply_tag_any(b"l4:noop0:e"), None);
    }

    #[test]
    fn load_and_idle_against_the_reference_server() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("echo.sock");
        let mut server = EchoServer::bind(&socket).unwrap();
        std::thread::spawn(move || server.run());
        let report = run_load(&LoadConfig {
            socket: socket.clone(),
            connections: 8,
            depth: 4,
            duration: Duration::from_millis(200),
            key: "noop".into(),
            value: Value::empty(),
            pid: Some(std::process::id()),
            progress: false,
        })
        .unwrap();
        assert_eq!(report.connections, 8);
        assert_eq!(report.errors, 0);
        assert!(report.requests >= 32, "{report:?}");
        assert!(report.rss_kib.is_some());
        let idle = run_idle(&socket, 20, None, Duration::ZERO, false).unwrap();
        assert_eq!(idle.connections, 20);
    }
}
