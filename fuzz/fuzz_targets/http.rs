//! Bytes from a hostile HTTP client, cut at points the input chooses and
//! spread over time, into one `HttpConn`: every request it yields goes
//! through the RPC guard, then to a fake RPC (an echo) or the real file
//! server over a small web directory, and is answered (some late). It
//! must never panic or hang: a connection not yet finished always has a
//! request out with us or a timer, and runs down to closed once time
//! passes. What it sends must be a well-framed sequence of responses,
//! one per request it yielded, in order, plus its own refusals.
//!
//! Input: a setup byte (bit 0: small limits, bit 1: a password, bit 2:
//! client outside the whitelist, bit 3: Host check off), then pieces:
//! a length byte, a control byte (bits 0-1: time step 0, 0.3 s, 3 s or
//! 70 s; bit 2: write only half the output; bit 3: end of input after
//! this piece; bit 4: hold this round's answers), and that many bytes.
#![no_main]

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use tripcd::http::guard::parse_list;
use tripcd::http::{
    Guard, GuardConfig, HttpConn, HttpDate, Limits, Method, PasswordHash, Request, Response,
    Verdict, WebFiles,
};

struct World {
    _dir: tempfile::TempDir,
    files: WebFiles,
}

thread_local! {
    // A small web directory, on tmpfs where there is one.
    static WORLD: RefCell<World> = RefCell::new({
        let dir = tempfile::tempdir_in("/dev/shm").or_else(|_| tempfile::tempdir()).unwrap();
        let root = dir.path().join("web");
        std::fs::create_dir_all(root.join("javascript")).unwrap();
        std::fs::write(root.join("index.html"), "<html></html>").unwrap();
        std::fs::write(root.join("javascript/main.js"), "main();").unwrap();
        std::fs::write(dir.path().join("secret"), "SECRET").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), root.join("out")).unwrap();
        let files = WebFiles::open(&root).unwrap();
        World { _dir: dir, files }
    });
}

fn small_limits() -> Limits {
    Limits {
        max_head: 256,
        max_headers: 8,
        max_target: 64,
        max_body: 1024,
        max_in_flight: 2,
        max_output: 512,
        max_unparsed: 2048,
        ..Limits::default()
    }
}

/// The owner's side: the guard, the answers not yet given, what the
/// connection sent, and which polled requests were `HEAD`.
struct Owner {
    guard: Guard,
    peer: IpAddr,
    held: VecDeque<Response>,
    sent: Vec<u8>,
    heads: VecDeque<bool>,
}

impl Owner {
    fn answer(&mut self, req: &Request, files: &mut WebFiles, now: Instant) -> Response {
        match self.guard.check(req, self.peer, now) {
            Verdict::Rpc => Response::json(req.body.clone()),
            Verdict::Web(sub) => {
                let r = files.serve(req, &sub);
                assert!(!r.body().windows(6).any(|w| w == b"SECRET"), "{sub}");
                r
            }
            Verdict::Respond(r) => r,
        }
    }

    /// Polls every request, answering or holding; gives held answers
    /// unless `hold`, and polls again, since answering frees room for
    /// pipelined requests.
    fn serve(&mut self, c: &mut HttpConn, files: &mut WebFiles, now: Instant, hold: bool) {
        loop {
            while let Some(req) = c.poll_request() {
                self.heads.push_back(req.method == Method::Head);
                let r = self.answer(&req, files, now);
                self.held.push_back(r);
            }
            if hold || self.held.is_empty() {
                return;
            }
            while let Some(r) = self.held.pop_front() {
                c.respond(r).unwrap();
            }
        }
    }

    fn write(&mut self, c: &mut HttpConn, half: bool) {
        let out = c.output();
        let n = if half { out.len() / 2 } else { out.len() };
        self.sent.extend_from_slice(&out[..n]);
        c.consume(n);
    }
}

/// Walks the bytes sent: interim `100`s, then one response per polled
/// request in order (no body for `HEAD`), then the connection's own
/// refusals. Returns the bytes left over (a response cut short).
fn check_framing(mut sent: &[u8], mut heads: VecDeque<bool>) -> usize {
    while !sent.is_empty() {
        let Some(end) = sent.windows(4).position(|w| w == b"\r\n\r\n") else {
            return sent.len();
        };
        let head = std::str::from_utf8(&sent[..end]).expect("heads are text");
        assert!(head.starts_with("HTTP/1.1 "), "{head}");
        let status: u16 = head[9..12].parse().expect("a status");
        assert!((100..600).contains(&status), "{head}");
        let length = head
            .split("\r\n")
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .map(|n| n.parse::<usize>().expect("a length"));
        let rest = &sent[end + 4..];
        if status == 100 {
            assert!(length.is_none());
            sent = rest;
            continue;
        }
        let head_only = heads.pop_front().unwrap_or(false);
        let body = match (status, length) {
            (204 | 304, None) => 0,
            (_, Some(n)) if !head_only => n,
            (_, Some(_)) => 0,
            (_, None) => panic!("no length: {head}"),
        };
        if rest.len() < body {
            return sent.len();
        }
        sent = &rest[body..];
    }
    0
}

fuzz_target!(|data: &[u8]| {
    let Some((&setup, mut rest)) = data.split_first() else {
        return;
    };
    let base = Instant::now();
    let mut now = base;
    let limits = if setup & 1 != 0 { small_limits() } else { Limits::default() };
    let mut rng = fastrand::Rng::with_seed(u64::from(setup));
    let config = GuardConfig {
        username: "u".into(),
        password: (setup & 2 != 0).then(|| PasswordHash::with_iterations("p", 1, &mut rng)),
        host_whitelist: (setup & 8 == 0).then(|| parse_list("*.lan")),
        ..GuardConfig::default()
    };
    let peer: IpAddr = if setup & 4 != 0 { "10.0.0.1" } else { "127.0.0.1" }.parse().unwrap();
    let mut owner = Owner {
        guard: Guard::new(config, &mut rng, now),
        peer,
        held: VecDeque::new(),
        sent: Vec::new(),
        heads: VecDeque::new(),
    };
    let mut c = HttpConn::new(limits, now);
    c.set_date(HttpDate::from_unix_secs(1_700_000_000));
    WORLD.with(|world| {
        let files = &mut world.borrow_mut().files;
        while let [len, control, tail @ ..] = rest {
            let n = usize::from(*len).min(tail.len());
            let (piece, after) = tail.split_at(n);
            rest = after;
            now += [0.0, 0.3, 3.0, 70.0]
                .map(Duration::from_secs_f64)[usize::from(control & 3)];
            if c.poll_timeout().is_some_and(|t| t <= now) {
                let _ = c.handle_timeout(now);
            }
            if c.wants_input() {
                let _ = c.receive(piece, now);
            }
            if control & 8 != 0 {
                c.end_of_input();
            }
            owner.serve(&mut c, files, now, control & 16 != 0);
            owner.write(&mut c, control & 4 != 0);
            let waiting_on_us = !owner.held.is_empty();
            assert!(
                c.should_close() || waiting_on_us || c.poll_timeout().is_some(),
                "a live connection with nothing to wait for"
            );
            if c.should_close() {
                break;
            }
        }
        // Everything answered and written, time passing: it must close.
        for _ in 0..20 {
            owner.serve(&mut c, files, now, false);
            owner.write(&mut c, false);
            if c.should_close() {
                break;
            }
            now += Duration::from_secs(100);
            let _ = c.handle_timeout(now);
        }
        assert!(c.should_close(), "never closed");
    });
    let left = check_framing(&owner.sent, std::mem::take(&mut owner.heads));
    // Only a connection dropped mid-write may leave a response cut short.
    if left > 0 {
        assert!(c.error().is_some_and(|e| e.status().is_none()), "{left} bytes cut");
    }
});
