//! The soak: many clients mixing valid traffic, garbage, slow reading and
//! abrupt disconnects for a while, then checks on the daemon: alive,
//! every valid request answered, descriptors and memory back near where
//! they started.
//!
//! Roles, by client index: 4 in 10 valid (a few tagged requests in
//! flight, replies checked by tag), 2 in 10 slow readers (many requests
//! in flight, a little read per tick), 2 in 10 garbage senders (a bad
//! frame, expect to be closed, reconnect), 2 in 10 abrupt (connect, half a
//! frame, hang up, again).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use mio::net::UnixStream;
use mio::{Events, Interest, Poll, Token};

use super::{raise_fd_limit, reply_tag, rss_kib};
use tripcd::client::{encode_message, version_frame};
use tripcd::codec::{split_frame, Value, PROTOCOL_MAX};

/// What to run.
#[derive(Debug, Clone)]
pub struct SoakConfig {
    /// The daemon's socket.
    pub socket: PathBuf,
    /// The daemon's pid (memory and descriptors are read from /proc).
    pub pid: u32,
    /// Clients at once.
    pub clients: usize,
    /// How long to run.
    pub duration: Duration,
}

/// What the soak saw.
#[derive(Debug, Clone, Default)]
pub struct SoakReport {
    /// Clients at once.
    pub clients: usize,
    /// Valid requests sent.
    pub requests: u64,
    /// Of them, answered with their tag, in order.
    pub answered: u64,
    /// Replies with a wrong tag, or valid clients the daemon closed.
    pub errors: u64,
    /// Garbage frames sent.
    pub garbage: u64,
    /// Of them, answered by the daemon closing the connection.
    pub garbage_closed: u64,
    /// Abrupt hang-ups (half a frame, then gone).
    pub abrupt: u64,
    /// Daemon RSS before, at the end of the traffic, and after the
    /// clients left (KiB).
    pub rss_kib: (u64, u64, u64),
    /// Daemon open descriptors before, at the end of traffic, after.
    pub fds: (usize, usize, usize),
    /// The daemon still answered after everything.
    pub alive: bool,
}

impl SoakReport {
    /// Whether the checks hold: alive, every valid request answered and
    /// no wrong reply, descriptors back to where they were, memory within
    /// a margin of it (the allocator keeps some pages).
    pub fn failures(&self) -> Vec<String> {
        let mut f = Vec::new();
        if !self.alive {
            f.push("the daemon does not answer".to_string());
        }
        if self.answered != self.requests {
            f.push(format!(
                "{} of {} valid requests unanswered",
                self.requests - self.answered,
                self.requests
            ));
        }
        if self.errors > 0 {
            f.push(format!(
                "{} wrong replies or dropped valid clients",
                self.errors
            ));
        }
        if self.fds.2 > self.fds.0 {
            f.push(format!(
                "descriptors: {} before, {} after",
                self.fds.0, self.fds.2
            ));
        }
        let (before, _, after) = self.rss_kib;
        if after > before * 2 + 16 * 1024 {
            f.push(format!("memory: {before} KiB before, {after} KiB after"));
        }
        f
    }

    /// Lines for a person.
    pub fn text(&self) -> String {
        format!(
            "clients {}  valid requests {}  answered {}  errors {}\n\
             garbage frames {} (connection closed by the daemon: {})  abrupt hang-ups {}\n\
             daemon RSS {} KiB before, {} KiB under load, {} KiB after\n\
             daemon descriptors {} before, {} under load, {} after\n\
             daemon alive: {}",
            self.clients,
            self.requests,
            self.answered,
            self.errors,
            self.garbage,
            self.garbage_closed,
            self.abrupt,
            self.rss_kib.0,
            self.rss_kib.1,
            self.rss_kib.2,
            self.fds.0,
            self.fds.1,
            self.fds.2,
            self.alive
        )
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Valid,
    Slow,
    Garbage,
    Abrupt,
}

fn role(i: usize) -> Role {
    match i % 10 {
        0..=3 => Role::Valid,
        4 | 5 => Role::Slow,
        6 | 7 => Role::Garbage,
        _ => Role::Abrupt,
    }
}

struct Client {
    role: Role,
    stream: Option<UnixStream>,
    input: Vec<u8>,
    output: Vec<u8>,
    greeted: bool,
    in_flight: VecDeque<i64>,
    next_tag: i64,
    readable: bool,
    /// A garbage client has sent its bad frame on this connection.
    spent: bool,
}

/// Open descriptors of `pid`.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// What valid clients ask, in turn.
fn requests() -> [(&'static str, Value); 4] {
    [
        ("noop", Value::empty()),
        ("get-port", Value::empty()),
        ("pex", Value::Int(1)),
        ("get-status-all", Value::List(vec![Value::str("state")])),
    ]
}

impl Client {
    fn new(i: usize) -> Client {
        Client {
            role: role(i),
            stream: None,
            input: Vec::new(),
            output: Vec::new(),
            greeted: false,
            in_flight: VecDeque::new(),
            next_tag: 1,
            readable: false,
            spent: false,
        }
    }

    /// Connects client `i` and queues its version.
    fn connect(&mut self, socket: &std::path::Path, poll: &Poll, i: usize) -> io::Result<()> {
        match UnixStream::connect(socket) {
            Ok(mut s) => {
                poll.registry()
                    .register(&mut s, Token(i), Interest::READABLE)?;
                self.stream = Some(s);
                self.input.clear();
                self.output = version_frame(1, 2);
                self.greeted = false;
                self.readable = true;
                self.spent = false;
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                Err(io::Error::other("the daemon refuses connections"))
            }
            Err(e) => Err(e),
        }
    }

    /// Reads all that is there, or 512 bytes a tick for slow clients.
    /// Returns whether the daemon closed the connection.
    fn read(&mut self, ending: bool) -> bool {
        let Some(stream) = self.stream.as_mut() else {
            return false;
        };
        if !self.readable && self.role != Role::Slow {
            return false;
        }
        let limit = if self.role == Role::Slow && !ending {
            512
        } else {
            usize::MAX
        };
        let mut got = 0;
        let mut buf = [0u8; 16 << 10];
        while got < limit {
            let want = buf.len().min(limit - got);
            match stream.read(&mut buf[..want]) {
                Ok(0) => return true,
                Ok(n) => {
                    got += n;
                    self.input.extend_from_slice(&buf[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.readable = false;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return true,
            }
        }
        false
    }

    /// Matches the replies read against the tags in flight.
    fn take_replies(&mut self, report: &mut SoakReport) {
        let mut used = 0;
        while let Ok(Some(r)) = split_frame(&self.input[used..], PROTOCOL_MAX) {
            let payload = &self.input[used + r.start..used + r.end];
            used += r.end;
            if !self.greeted {
                self.greeted = true;
                continue;
            }
            match (self.in_flight.pop_front(), reply_tag(payload, None)) {
                (Some(want), Some(got)) if want == got => report.answered += 1,
                _ => report.errors += 1,
            }
        }
        self.input.drain(..used);
    }

    /// The daemon closed us: expected for garbage, an error for others.
    fn closed(&mut self, poll: &Poll, report: &mut SoakReport) {
        match self.role {
            Role::Garbage => report.garbage_closed += 1,
            Role::Abrupt => {}
            Role::Valid | Role::Slow => report.errors += 1,
        }
        report.errors += self.in_flight.len() as u64;
        self.in_flight.clear();
        if let Some(mut s) = self.stream.take() {
            let _ = poll.registry().deregister(&mut s);
        }
    }

    /// Queues what this client's role sends next; an abrupt client writes
    /// half a frame and hangs up here.
    fn send(&mut self, i: usize, poll: &Poll, report: &mut SoakReport) {
        match self.role {
            Role::Valid | Role::Slow => {
                let requests = requests();
                let depth = if self.role == Role::Valid { 4 } else { 64 };
                while self.in_flight.len() < depth {
                    let (key, value) = &requests[(self.next_tag as usize + i) % requests.len()];
                    self.output
                        .extend(encode_message(key, value, Some(self.next_tag)));
                    self.in_flight.push_back(self.next_tag);
                    self.next_tag += 1;
                    report.requests += 1;
                }
            }
            Role::Garbage if !self.spent => {
                self.spent = true;
                // Half the time a bad header, half a bad payload.
                if self.next_tag % 2 == 0 {
                    self.output.extend_from_slice(b"zz000010l4:noop0:e");
                } else {
                    self.output.extend_from_slice(b"00000006i12xee");
                }
                self.next_tag += 1;
                report.garbage += 1;
            }
            Role::Abrupt => {
                if let Some(mut stream) = self.stream.take() {
                    // Half a frame, then gone.
                    let _ = stream.write(b"00000011l4:noop0:i");
                    report.abrupt += 1;
                    let _ = poll.registry().deregister(&mut stream);
                }
            }
            _ => {}
        }
    }

    /// Writes what is queued, as far as the socket takes it.
    fn flush(&mut self) {
        let Some(stream) = self.stream.as_mut() else {
            return;
        };
        while !self.output.is_empty() {
            match stream.write(&self.output) {
                Ok(n) => {
                    self.output.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break, // seen as closed on the next read
            }
        }
    }

    /// One tick of client `i`: (re)connect when due, read, match replies,
    /// send more.
    fn tick(
        &mut self,
        i: usize,
        tick: usize,
        ending: bool,
        config: &SoakConfig,
        poll: &Poll,
        report: &mut SoakReport,
    ) -> io::Result<()> {
        // Everyone connects at the start; garbage and abrupt clients come
        // back again and again, every tenth tick, spread out.
        let due = matches!(self.role, Role::Valid | Role::Slow) || tick % 10 == i % 10;
        if self.stream.is_none() && !ending && due {
            self.connect(&config.socket, poll, i)?;
        }
        if self.stream.is_none() {
            return Ok(());
        }
        let closed = self.read(ending);
        self.take_replies(report);
        if closed {
            self.closed(poll, report);
            return Ok(());
        }
        if self.greeted && !ending {
            self.send(i, poll, report);
        }
        self.flush();
        Ok(())
    }
}

/// Runs the soak.
pub fn run_soak(config: &SoakConfig) -> io::Result<SoakReport> {
    raise_fd_limit();
    let mut report = SoakReport {
        clients: config.clients,
        ..SoakReport::default()
    };
    let rss_before = rss_kib(config.pid).unwrap_or(0);
    let fds_before = fd_count(config.pid);
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(4096);
    let mut clients: Vec<Client> = (0..config.clients).map(Client::new).collect();
    let start = Instant::now();
    let mut end_deadline = None;
    for tick in 1.. {
        if end_deadline.is_none() && start.elapsed() >= config.duration {
            end_deadline = Some(Instant::now() + Duration::from_secs(60));
            report.rss_kib.1 = rss_kib(config.pid).unwrap_or(0);
            report.fds.1 = fd_count(config.pid);
        }
        let ending = end_deadline.is_some();
        if let Some(deadline) = end_deadline {
            let waiting = clients
                .iter()
                .any(|c| c.stream.is_some() && !c.in_flight.is_empty());
            if !waiting || Instant::now() >= deadline {
                break;
            }
        }
        for (i, c) in clients.iter_mut().enumerate() {
            c.tick(i, tick, ending, config, &poll, &mut report)?;
        }
        poll.poll(&mut events, Some(Duration::from_millis(50)))?;
        for ev in events.iter() {
            if let Some(c) = clients.get_mut(ev.token().0) {
                c.readable = true;
            }
        }
    }
    drop(clients);
    settle(config, &mut report, fds_before, rss_before);
    Ok(report)
}

/// The daemon should answer, and give back what the clients held once it
/// has seen them go (it closes a descriptor in the turn that reads the
/// hang-up).
fn settle(config: &SoakConfig, report: &mut SoakReport, fds_before: usize, rss_before: u64) {
    report.alive = tripcd::client::Client::connect(&config.socket)
        .and_then(|mut c| c.call("noop", &Value::empty()))
        .is_ok_and(|m| m.key == "succeeded");
    let settle = Instant::now();
    while fd_count(config.pid) > fds_before && settle.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(100));
    }
    report.fds.0 = fds_before;
    report.fds.2 = fd_count(config.pid);
    report.rss_kib.0 = rss_before;
    report.rss_kib.2 = rss_kib(config.pid).unwrap_or(0);
}
