//! IPC latency under load for as long as a transfer lasts.
//!
//! Like `tripcd-bench load -d 1 -k noop`, but it runs until told to stop
//! instead of for a fixed time: nobody knows in advance how long a
//! transfer takes, and the figures should cover all of it and nothing
//! else. Each client keeps one tagged `noop` in flight; a reply must carry
//! the tag of the request (else it counts as an error).

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::net::UnixStream;
use mio::{Events, Interest, Poll, Token};
use serde_json::json;

use tripcd::client::{encode_message, version_frame};
use tripcd::codec::{split_frame, Value, PROTOCOL_MAX};
use tripcd::message;

/// What the clients measured.
#[derive(Debug, Clone, PartialEq)]
pub struct IpcReport {
    /// Clients that took part.
    pub clients: usize,
    /// Replies received.
    pub requests: u64,
    /// Replies with a wrong tag or an error key, and clients lost.
    pub errors: u64,
    /// How long the load ran, in seconds (rounded to milliseconds).
    pub seconds: f64,
    /// Median latency, in microseconds.
    pub p50_us: u64,
    /// 99th percentile latency, in microseconds.
    pub p99_us: u64,
    /// Longest latency, in microseconds.
    pub max_us: u64,
}

impl IpcReport {
    /// The report as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "clients": self.clients,
            "requests": self.requests,
            "errors": self.errors,
            "seconds": self.seconds,
            "p50_us": self.p50_us,
            "p99_us": self.p99_us,
            "max_us": self.max_us,
        })
    }

    /// Reads [`IpcReport::to_json`]'s output.
    pub fn from_json(j: &serde_json::Value) -> Option<IpcReport> {
        let u = |k: &str| j.get(k).and_then(serde_json::Value::as_u64);
        Some(IpcReport {
            clients: usize::try_from(u("clients")?).ok()?,
            requests: u("requests")?,
            errors: u("errors")?,
            seconds: j.get("seconds")?.as_f64()?,
            p50_us: u("p50_us")?,
            p99_us: u("p99_us")?,
            max_us: u("max_us")?,
        })
    }
}

/// Load running on its own thread; [`IpcLoad::finish`] stops it.
pub struct IpcLoad {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<io::Result<IpcReport>>,
}

impl IpcLoad {
    /// Connects and handshakes `clients` clients (so that connecting is
    /// not measured), then starts sending on a new thread.
    pub fn start(socket: &Path, clients: usize) -> io::Result<IpcLoad> {
        let mut streams = Vec::with_capacity(clients);
        for _ in 0..clients {
            streams.push(handshake(socket)?);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("ipc-load".into())
            .spawn(move || drive(streams, &flag))?;
        Ok(IpcLoad { stop, thread })
    }

    /// Stops sending and returns the figures.
    pub fn finish(self) -> io::Result<IpcReport> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| io::Error::other("the IPC load thread panicked"))?
    }
}

/// A blocking connection, version handshake done, made non-blocking.
fn handshake(socket: &Path) -> io::Result<UnixStream> {
    let mut s = StdUnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(&version_frame(1, 2))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match split_frame(&buf, PROTOCOL_MAX) {
            Ok(Some(_)) => break,
            Ok(None) => {}
            Err(e) => return Err(io::Error::other(format!("bad version frame: {e}"))),
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::other("the daemon closed during the handshake"));
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
    }
    s.set_nonblocking(true)?;
    Ok(UnixStream::from_std(s))
}

/// One client's state: what came in, what is to go out, the request in
/// flight.
struct Conn {
    stream: UnixStream,
    input: Vec<u8>,
    output: Vec<u8>,
    in_flight: Option<(i64, Instant)>,
    next_tag: i64,
    dead: bool,
}

impl Conn {
    fn send_next(&mut self, now: Instant) {
        let tag = self.next_tag;
        self.next_tag = self.next_tag.wrapping_add(1).max(1);
        self.output
            .extend_from_slice(&encode_message("noop", &Value::empty(), Some(tag)));
        self.in_flight = Some((tag, now));
    }

    fn flush(&mut self) -> io::Result<()> {
        while !self.output.is_empty() {
            match self.stream.write(&self.output) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.output.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads what arrived; false when the connection is gone.
    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 << 10];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return false,
                Ok(n) => self
                    .input
                    .extend_from_slice(chunk.get(..n).unwrap_or_default()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }
}

/// Whether a reply payload answers request `tag` without an error.
fn good_reply(payload: &[u8], tag: i64) -> bool {
    match message::peek(payload) {
        Ok((key, got)) => {
            got == Some(tag) && !matches!(key, b"failed" | b"bad-format" | b"not-supported")
        }
        Err(_) => false,
    }
}

fn drive(streams: Vec<UnixStream>, stop: &AtomicBool) -> io::Result<IpcReport> {
    let mut poll = Poll::new()?;
    let mut conns = Vec::with_capacity(streams.len());
    let start = Instant::now();
    for (i, mut stream) in streams.into_iter().enumerate() {
        poll.registry().register(
            &mut stream,
            Token(i),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let mut c = Conn {
            stream,
            input: Vec::new(),
            output: Vec::new(),
            in_flight: None,
            next_tag: 1,
            dead: false,
        };
        c.send_next(start);
        c.dead = c.flush().is_err();
        conns.push(c);
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(io::Error::other)?;
    let (mut requests, mut errors) = (0u64, 0u64);
    let mut events = Events::with_capacity(1024);
    while !stop.load(Ordering::Relaxed) {
        poll.poll(&mut events, Some(Duration::from_millis(20)))?;
        let now = Instant::now();
        for ev in events.iter() {
            let Some(c) = conns.get_mut(ev.token().0) else {
                continue;
            };
            if c.dead {
                continue;
            }
            if !c.fill() {
                c.dead = true;
                errors += 1;
                continue;
            }
            let mut used = 0;
            while let Ok(Some(r)) =
                split_frame(c.input.get(used..).unwrap_or_default(), PROTOCOL_MAX)
            {
                let payload = c
                    .input
                    .get(used + r.start..used + r.end)
                    .unwrap_or_default();
                used += r.end;
                let Some((tag, sent)) = c.in_flight.take() else {
                    errors += 1;
                    continue;
                };
                if !good_reply(payload, tag) {
                    errors += 1;
                }
                requests += 1;
                let us = now.saturating_duration_since(sent).as_micros();
                hist.saturating_record(u64::try_from(us).unwrap_or(u64::MAX).max(1));
                c.send_next(now);
            }
            c.input.drain(..used.min(c.input.len()));
            if c.flush().is_err() {
                c.dead = true;
                errors += 1;
            }
        }
    }
    let seconds = (start.elapsed().as_secs_f64() * 1000.0).round() / 1000.0;
    Ok(IpcReport {
        clients: conns.len(),
        requests,
        errors,
        seconds,
        p50_us: hist.value_at_quantile(0.5),
        p99_us: hist.value_at_quantile(0.99),
        max_us: hist.max(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn reply_must_carry_the_tag() {
        let frame = |key: &str, tag| encode_message(key, &Value::empty(), tag);
        let payload = |f: &[u8]| f[8..].to_vec();
        assert!(good_reply(&payload(&frame("succeeded", Some(7))), 7));
        assert!(!good_reply(&payload(&frame("succeeded", Some(6))), 7));
        assert!(!good_reply(&payload(&frame("succeeded", None)), 7));
        assert!(!good_reply(&payload(&frame("not-supported", Some(7))), 7));
        assert!(!good_reply(b"garbage", 7));
    }

    /// A tiny server answering every frame with `succeeded` and its tag,
    /// one thread per client. Once it has answered 10 requests of the
    /// first client, that client had 9 replies before it sent the 10th,
    /// so the load stopped then has counted at least 9.
    #[test]
    fn runs_until_stopped_against_an_echo_server() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let listener = UnixListener::bind(&path).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let server = std::thread::spawn(move || {
            for i in 0..3 {
                let (mut s, _) = listener.accept().unwrap();
                let tx = tx.clone();
                std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let mut answered = 0;
                    loop {
                        let n = match s.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        buf.extend_from_slice(&chunk[..n]);
                        while let Ok(Some(r)) = split_frame(&buf, PROTOCOL_MAX) {
                            let reply = if answered == 0 {
                                version_frame(1, 2)
                            } else {
                                let (_, tag) = message::peek(&buf[r.clone()]).unwrap();
                                encode_message("succeeded", &Value::empty(), tag)
                            };
                            buf.drain(..r.end);
                            if s.write_all(&reply).is_err() {
                                return;
                            }
                            answered += 1;
                            if i == 0 && answered == 11 {
                                let _ = tx.send(());
                            }
                        }
                    }
                });
            }
        });
        let load = IpcLoad::start(&path, 3).unwrap();
        rx.recv().unwrap();
        let report = load.finish().unwrap();
        server.join().unwrap();
        assert_eq!(report.clients, 3);
        assert_eq!(report.errors, 0);
        assert!(report.requests >= 9, "{report:?}");
        assert!(report.max_us >= report.p99_us && report.p99_us >= report.p50_us);
        assert_eq!(IpcReport::from_json(&report.to_json()), Some(report));
    }
}
