//! The tracker worker against real loopback sockets: the test tracker, a
//! port where nothing listens, a server that never answers, canned HTTP
//! responses (redirects, errors, chunked bodies), name resolution jobs,
//! and HTTPS with a throwaway CA (trusted, untrusted, wrong name,
//! redirects across schemes, and the native root store following
//! `SSL_CERT_FILE`).

mod common;

use std::env;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::tls::{make_ca, make_ca_for, TestCa};
use common::tracker::TestTracker;
use mio::{Events, Poll, Token, Waker};
use tripcd::tracker::worker::{fetch, Tls};
use tripcd::tracker::{
    announce_url, parse_announce, AnnounceEvent, AnnounceReply, AnnounceRequest, Announced,
    Announcer, Job, JobKind, JobOutput, JobResult, TrackerError, TrackerWorker,
};

const WAKER: Token = Token(0);

/// A reactor stand-in: a poll, and the worker waking it.
struct Reactor {
    poll: Poll,
    events: Events,
    worker: TrackerWorker,
}

impl Reactor {
    fn new() -> Reactor {
        let poll = Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).unwrap());
        Reactor {
            poll,
            events: Events::with_capacity(8),
            worker: TrackerWorker::spawn(waker),
        }
    }

    /// Waits for the next result, sleeping in `poll` until the worker
    /// wakes us (generous bound: only a hang fails the test).
    fn next_result(&mut self) -> JobResult {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(r) = self.worker.try_recv() {
                return r;
            }
            let left = end.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no result from the worker");
            self.poll.poll(&mut self.events, Some(left)).unwrap();
        }
    }

    /// Runs one job through the worker and returns its outcome.
    fn run(&mut self, kind: JobKind, timeout: Duration) -> Result<JobOutput, TrackerError> {
        self.worker.submit(Job {
            id: 7,
            kind,
            timeout,
        });
        let r = self.next_result();
        assert_eq!(r.id, 7);
        r.result
    }

    /// GETs `url` through the worker: the body, or why there is none.
    fn fetch(&mut self, url: String, timeout: Duration) -> Result<Vec<u8>, TrackerError> {
        self.run(JobKind::Fetch(url), timeout).map(|out| match out {
            JobOutput::Body(body) => body,
            other => panic!("a fetch gave {other:?}"),
        })
    }

    /// Resolves `host` through the worker.
    fn resolve(&mut self, host: &str, port: u16) -> Result<Vec<SocketAddr>, TrackerError> {
        self.run(JobKind::Resolve(host.to_string(), port), LONG)
            .map(|out| match out {
                JobOutput::Addrs(addrs) => addrs,
                other => panic!("a resolve gave {other:?}"),
            })
    }
}

fn request(
    info_hash: [u8; 20],
    port: u16,
    event: Option<AnnounceEvent>,
    left: u64,
) -> AnnounceRequest {
    let mut peer_id = *b"-TR0001-000000000000";
    peer_id[19] = u8::try_from(port % 256).unwrap();
    AnnounceRequest {
        info_hash,
        peer_id,
        port,
        uploaded: 10,
        downloaded: 20,
        left,
        event,
        numwant: 50,
        key: 0x1234_abcd,
        trackerid: None,
        compact: true,
    }
}

fn success(body: &[u8]) -> Announced {
    match parse_announce(body) {
        Ok(AnnounceReply::Success(a)) => a,
        other => panic!("expected success, got {other:?}"),
    }
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

const HASH: [u8; 20] = [0xab; 20];
const LONG: Duration = Duration::from_secs(10);

#[test]
fn announces_to_the_test_tracker_and_gets_the_other_peers() {
    let tracker = TestTracker::start();
    let mut r = Reactor::new();
    for port in [1001, 1002, 1003] {
        let url = announce_url(
            &tracker.url(),
            &request(HASH, port, Some(AnnounceEvent::Started), 100),
        );
        let a = success(&r.fetch(url, LONG).unwrap());
        assert_eq!(a.interval, Some(Duration::from_secs(1800)));
        assert_eq!(a.peers.len(), usize::from(port - 1001), "the others only");
        assert!(!a.peers.contains(&local(port)));
    }
    // A seeder's stop removes it from the swarm.
    let url = announce_url(
        &tracker.url(),
        &request(HASH, 1001, Some(AnnounceEvent::Stopped), 0),
    );
    r.fetch(url, LONG).unwrap();
    let url = announce_url(&tracker.url(), &request(HASH, 1003, None, 0));
    let a = success(&r.fetch(url, LONG).unwrap());
    assert_eq!(a.peers, vec![local(1002)]);
    assert_eq!((a.complete, a.incomplete), (Some(1), Some(1)));

    let seen = tracker.announces();
    assert_eq!(seen.len(), 5);
    let first = &seen[0];
    assert_eq!(first.info_hash, HASH);
    assert_eq!(
        (first.port, first.left, first.uploaded, first.downloaded),
        (1001, 100, 10, 20)
    );
    assert_eq!(first.event.as_deref(), Some("started"));
    assert_eq!(first.key.as_deref(), Some("1234ABCD"));
    assert_eq!(first.numwant, Some(50));
    assert!(first.compact);
    assert_eq!(seen[3].event.as_deref(), Some("stopped"));
    assert_eq!(seen[4].event, None);
    assert_eq!(tracker.swarm(HASH), vec![local(1002), local(1003)]);
}

#[test]
fn dictionary_peers_restrictions_failure_and_warning() {
    let tracker = TestTracker::start();
    let mut r = Reactor::new();
    for port in [2001, 2002, 2003] {
        let url = announce_url(&tracker.url(), &request(HASH, port, None, 5));
        r.fetch(url, LONG).unwrap();
    }
    let mut req = request(HASH, 2003, None, 5);
    req.compact = false;
    let a = success(&r.fetch(announce_url(&tracker.url(), &req), LONG).unwrap());
    assert_eq!(a.peers, vec![local(2001), local(2002)]);

    tracker.restrict(HASH, vec![2001]);
    tracker.restrict_for(HASH, 2001, vec![2003]);
    let a = success(
        &r.fetch(
            announce_url(&tracker.url(), &request(HASH, 2002, None, 5)),
            LONG,
        )
        .unwrap(),
    );
    assert_eq!(a.peers, vec![local(2001)]);
    let a = success(
        &r.fetch(
            announce_url(&tracker.url(), &request(HASH, 2001, None, 5)),
            LONG,
        )
        .unwrap(),
    );
    assert_eq!(a.peers, vec![local(2003)]);

    tracker.set_warning(Some("be nice"));
    tracker.set_interval(60);
    tracker.set_min_interval(Some(45));
    tracker.set_tracker_id(Some(b"T1"));
    let a = success(
        &r.fetch(
            announce_url(&tracker.url(), &request(HASH, 2002, None, 5)),
            LONG,
        )
        .unwrap(),
    );
    assert_eq!(a.warning.as_deref(), Some("be nice"));
    assert_eq!(a.interval, Some(Duration::from_secs(60)));
    assert_eq!(a.min_interval, Some(Duration::from_secs(45)));
    assert_eq!(a.tracker_id.as_deref(), Some(&b"T1"[..]));

    tracker.set_failure(Some("torrent not registered"));
    let body = r
        .fetch(
            announce_url(&tracker.url(), &request(HASH, 2002, None, 5)),
            LONG,
        )
        .unwrap();
    assert_eq!(
        parse_announce(&body),
        Ok(AnnounceReply::Failure("torrent not registered".into()))
    );
}

#[test]
fn the_announcer_drives_started_completed_and_stopped() {
    let tracker = TestTracker::start();
    tracker.set_tracker_id(Some(b"abc"));
    let mut r = Reactor::new();
    let mut ann = Announcer::new();
    let mut left = 100;
    let step = |ann: &mut Announcer, r: &mut Reactor, left: u64| {
        let now = Instant::now();
        let event = ann.poll_announce(now).expect("an announce is due");
        let mut req = request(HASH, 3001, event, left);
        req.trackerid = ann.tracker_id().map(<[u8]>::to_vec);
        match r.fetch(announce_url(&tracker.url(), &req), LONG) {
            Ok(body) => ann.handle_reply(&parse_announce(&body).unwrap(), Instant::now()),
            Err(e) => ann.handle_error(&e, Instant::now()),
        }
    };
    ann.start(Instant::now());
    step(&mut ann, &mut r, left);
    assert_eq!(ann.tracker_id(), Some(&b"abc"[..]));
    assert_eq!(ann.seeders(), Some(0));
    assert_eq!(ann.leechers(), Some(1));
    left = 0;
    ann.completed(Instant::now());
    step(&mut ann, &mut r, left);
    ann.completed(Instant::now());
    assert_eq!(
        ann.poll_announce(Instant::now()),
        None,
        "completed only once"
    );
    ann.stop(Instant::now());
    step(&mut ann, &mut r, left);
    assert!(ann.is_idle());

    let seen = tracker.announces();
    let events: Vec<_> = seen.iter().map(|a| a.event.as_deref()).collect();
    assert_eq!(
        events,
        [Some("started"), Some("completed"), Some("stopped")]
    );
    assert_eq!(seen[0].trackerid, None);
    assert_eq!(seen[1].trackerid.as_deref(), Some(&b"abc"[..]));
    assert!(tracker.swarm(HASH).is_empty());
}

#[test]
fn connection_refused_is_an_error() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut r = Reactor::new();
    let err = r
        .fetch(format!("http://127.0.0.1:{port}/announce"), LONG)
        .unwrap_err();
    assert!(matches!(err, TrackerError::Connect(..)), "{err:?}");
    assert!(
        err.to_string()
            .starts_with("could not connect to tracker 127.0.0.1:"),
        "{err}"
    );
}

#[test]
fn resolves_localhost_through_the_worker() {
    let mut r = Reactor::new();
    let addrs = r.resolve("localhost", 6969).unwrap();
    assert!(!addrs.is_empty());
    assert!(addrs.iter().all(|a| a.port() == 6969), "{addrs:?}");
    let loopback: [SocketAddr; 2] = [local(6969), "[::1]:6969".parse().unwrap()];
    assert!(addrs.iter().any(|a| loopback.contains(a)), "{addrs:?}");
}

#[test]
fn ip_literals_resolve_to_themselves() {
    let mut r = Reactor::new();
    assert_eq!(r.resolve("127.0.0.1", 80), Ok(vec![local(80)]));
    assert_eq!(
        r.resolve("::1", 6881),
        Ok(vec!["[::1]:6881".parse().unwrap()])
    );
}

/// Accepts connections and holds them without answering, until dropped.
struct Silent {
    addr: SocketAddr,
}

impl Silent {
    fn start() -> Silent {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        thread::spawn(move || {
            let mut held = Vec::new();
            for c in l.incoming().flatten() {
                held.push(c);
                if held.len() > 16 {
                    return;
                }
            }
        });
        Silent { addr }
    }
}

#[test]
fn a_server_that_never_answers_times_out() {
    let silent = Silent::start();
    let mut r = Reactor::new();
    let err = r
        .fetch(
            format!("http://{}/announce", silent.addr),
            Duration::from_secs(1),
        )
        .unwrap_err();
    assert_eq!(err, TrackerError::Timeout);
}

#[test]
fn a_hanging_tracker_does_not_delay_the_others() {
    let silent = Silent::start();
    let tracker = TestTracker::start();
    let mut r = Reactor::new();
    r.worker.submit(Job {
        id: 1,
        kind: JobKind::Fetch(format!("http://{}/announce", silent.addr)),
        timeout: Duration::from_secs(5),
    });
    r.worker.submit(Job {
        id: 2,
        kind: JobKind::Fetch(announce_url(&tracker.url(), &request(HASH, 4001, None, 1))),
        timeout: LONG,
    });
    let first = r.next_result();
    assert_eq!(first.id, 2);
    assert!(first.result.is_ok());
    assert!(r.worker.threads() >= 2);
    let second = r.next_result();
    assert_eq!((second.id, second.result), (1, Err(TrackerError::Timeout)));
}

#[test]
fn dropping_the_worker_does_not_wait_for_a_stuck_job() {
    let silent = Silent::start();
    let mut r = Reactor::new();
    r.worker.submit(Job {
        id: 1,
        kind: JobKind::Fetch(format!("http://{}/announce", silent.addr)),
        timeout: Duration::from_secs(60),
    });
    thread::sleep(Duration::from_millis(50));
    let before = Instant::now();
    drop(r);
    assert!(before.elapsed() < Duration::from_secs(30));
}

/// Answers connection `i` with `responses[i]`, then closes it.
fn canned(responses: Vec<Vec<u8>>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        for response in responses {
            let Ok((mut c, _)) = l.accept() else { return };
            let mut head = Vec::new();
            let mut buf = [0u8; 512];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match c.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let _ = c.write_all(&response);
        }
    });
    addr
}

#[test]
fn follows_redirects_relative_and_absolute() {
    let tracker = TestTracker::start();
    let target = announce_url(&tracker.url(), &request(HASH, 5001, None, 1));
    let addr = canned(vec![
        b"HTTP/1.1 302 Found\r\nLocation: /moved?x=1\r\nContent-Length: 0\r\n\r\n".to_vec(),
        format!("HTTP/1.1 301 Moved\r\nLocation: {target}\r\nContent-Length: 0\r\n\r\n")
            .into_bytes(),
    ]);
    let mut r = Reactor::new();
    let body = r.fetch(format!("http://{addr}/announce"), LONG).unwrap();
    success(&body);
    assert_eq!(tracker.announces().len(), 1);
}

#[test]
fn too_many_redirects_is_an_error() {
    let mut responses = Vec::new();
    for _ in 0..7 {
        responses
            .push(b"HTTP/1.1 302 Found\r\nLocation: /again\r\nContent-Length: 0\r\n\r\n".to_vec());
    }
    let addr = canned(responses);
    let mut r = Reactor::new();
    let err = r.fetch(format!("http://{addr}/a"), LONG).unwrap_err();
    assert_eq!(err, TrackerError::TooManyRedirects(5));
}

#[test]
fn http_errors_and_bodies() {
    let addr = canned(vec![
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found".to_vec(),
        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 33\r\n\r\nd14:failure reason11:bad passkeye".to_vec(),
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nd8:i\r\nb\r\nntervali5ee\r\n0\r\n\r\n".to_vec(),
        b"HTTP/1.0 200 OK\r\n\r\n<html>oops</html>".to_vec(),
        b"HTTP/1.1 302 Found\r\nContent-Length: 0\r\n\r\n".to_vec(),
    ]);
    let mut r = Reactor::new();
    let url = format!("http://{addr}/announce");
    assert_eq!(
        r.fetch(url.clone(), LONG),
        Err(TrackerError::Http(404, "Not Found".into()))
    );
    let body = r.fetch(url.clone(), LONG).unwrap();
    assert_eq!(
        parse_announce(&body),
        Ok(AnnounceReply::Failure("bad passkey".into()))
    );
    let body = r.fetch(url.clone(), LONG).unwrap();
    assert_eq!(success(&body).interval, Some(Duration::from_secs(5)));
    let body = r.fetch(url.clone(), LONG).unwrap();
    let err = parse_announce(&body).unwrap_err();
    assert!(
        err.to_string()
            .contains("first bytes: \"<html>oops</html>\""),
        "{err}"
    );
    assert!(matches!(
        r.fetch(url, LONG),
        Err(TrackerError::BadRedirect(_))
    ));
}

#[test]
fn the_test_tracker_refuses_bad_announces() {
    let tracker = TestTracker::start();
    let mut r = Reactor::new();
    let base = tracker.url();
    let body = r
        .fetch(format!("{base}?info_hash=short&peer_id=x&port=1"), LONG)
        .unwrap();
    assert_eq!(
        parse_announce(&body),
        Ok(AnnounceReply::Failure("invalid info_hash".into()))
    );
    let other = base.replace("/announce", "/nowhere");
    assert_eq!(
        r.fetch(other, LONG),
        Err(TrackerError::Http(404, "Not Found".into()))
    );
    // A raw client that sends junk gets a 400 and the tracker keeps going.
    let mut c = TcpStream::connect(tracker.addr()).unwrap();
    c.write_all(b"JUNK\r\n\r\n").unwrap();
    let mut reply = String::new();
    c.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    let url = announce_url(&base, &request(HASH, 6001, None, 1));
    success(&r.fetch(url, LONG).unwrap());
}

/// `fetch` trusting only `ca`, as the worker would with `ca` installed.
fn fetch_trusting(ca: &TestCa, url: &str, timeout: Duration) -> Result<Vec<u8>, TrackerError> {
    let tls = Tls::trusting(ca.roots()).unwrap();
    fetch(url, timeout, &AtomicBool::new(false), &tls)
}

/// Like [`canned`], over TLS with `config`. The server ends each
/// connection by closing the socket without a TLS close_notify, as many
/// servers do.
fn canned_tls(config: Arc<rustls::ServerConfig>, responses: Vec<Vec<u8>>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        for response in responses {
            let Ok((c, _)) = l.accept() else { return };
            c.set_read_timeout(Some(LONG)).unwrap();
            let Ok(mut c) = common::tls::accept(c, &config) else {
                continue;
            };
            let mut head = Vec::new();
            let mut buf = [0u8; 512];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match c.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let _ = c.write_all(&response);
            let _ = c.flush();
        }
    });
    addr
}

#[test]
fn announces_over_https_by_ip_and_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let ca = make_ca(dir.path());
    let tracker = TestTracker::start_tls(Arc::clone(&ca.server));
    assert!(tracker.https_url().starts_with("https://127.0.0.1:"));
    let url = announce_url(&tracker.https_url(), &request(HASH, 8001, None, 1));
    let a = success(&fetch_trusting(&ca, &url, LONG).unwrap());
    assert_eq!(a.interval, Some(Duration::from_secs(1800)));
    // By name: the certificate's DNS name is checked, not its IP.
    let by_name = url.replace("127.0.0.1", "localhost");
    let a = success(&fetch_trusting(&ca, &by_name, LONG).unwrap());
    assert!(a.peers.is_empty(), "the same peer again");
    assert_eq!(tracker.announces().len(), 2);
}

#[test]
fn an_https_body_may_end_with_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let ca = make_ca(dir.path());
    let addr = canned_tls(
        Arc::clone(&ca.server),
        vec![b"HTTP/1.0 200 OK\r\n\r\nd8:intervali7ee".to_vec()],
    );
    let body = fetch_trusting(&ca, &format!("https://{addr}/announce"), LONG).unwrap();
    assert_eq!(success(&body).interval, Some(Duration::from_secs(7)));
}

#[test]
fn an_untrusted_certificate_is_a_tls_error() {
    let dir = tempfile::tempdir().unwrap();
    let theirs = make_ca(&dir.path().join("theirs"));
    let ours = make_ca(&dir.path().join("ours"));
    let tracker = TestTracker::start_tls(Arc::clone(&theirs.server));
    let url = announce_url(&tracker.https_url(), &request(HASH, 8101, None, 1));
    let err = fetch_trusting(&ours, &url, LONG).unwrap_err();
    let host = tracker.addr().to_string();
    assert_eq!(
        err,
        TrackerError::Tls(
            host.clone(),
            "its certificate is signed by an unknown authority (not a trusted root)".into()
        )
    );
    assert!(err
        .to_string()
        .starts_with(&format!("TLS with tracker {host} failed: ")));
    assert!(tracker.announces().is_empty());
}

#[test]
fn a_certificate_for_another_name_is_a_tls_error() {
    let dir = tempfile::tempdir().unwrap();
    let ca = make_ca_for(dir.path(), &["tracker.example"]);
    let tracker = TestTracker::start_tls(Arc::clone(&ca.server));
    let url = announce_url(&tracker.https_url(), &request(HASH, 8201, None, 1));
    let err = fetch_trusting(&ca, &url, LONG).unwrap_err();
    assert_eq!(
        err,
        TrackerError::Tls(
            tracker.addr().to_string(),
            "its certificate is not valid for the name 127.0.0.1".into()
        )
    );
}

#[test]
fn an_https_server_that_never_handshakes_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let ca = make_ca(dir.path());
    let silent = Silent::start();
    let timeout = Duration::from_millis(500);
    let start = Instant::now();
    let err = fetch_trusting(&ca, &format!("https://{}/announce", silent.addr), timeout);
    assert_eq!(err, Err(TrackerError::Timeout));
    // Generous: only a handshake that ignores the deadline fails this.
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[test]
fn redirects_between_http_and_https() {
    let dir = tempfile::tempdir().unwrap();
    let ca = make_ca(dir.path());
    let secure = TestTracker::start_tls(Arc::clone(&ca.server));
    let plain = TestTracker::start();

    // http -> https
    let target = announce_url(&secure.https_url(), &request(HASH, 8301, None, 1));
    let addr = canned(vec![format!(
        "HTTP/1.1 302 Found\r\nLocation: {target}\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes()]);
    success(&fetch_trusting(&ca, &format!("http://{addr}/announce"), LONG).unwrap());
    assert_eq!(secure.announces().len(), 1);

    // https -> http
    let target = announce_url(&plain.url(), &request(HASH, 8302, None, 1));
    let addr = canned_tls(
        Arc::clone(&ca.server),
        vec![
            format!("HTTP/1.1 301 Moved\r\nLocation: {target}\r\nContent-Length: 0\r\n\r\n")
                .into_bytes(),
        ],
    );
    success(&fetch_trusting(&ca, &format!("https://{addr}/announce"), LONG).unwrap());
    assert_eq!(plain.announces().len(), 1);
}

/// Set for [`child_announces_with_native_roots`]: the URL to announce to,
/// and what to expect (`trusted` or `no-roots`).
const CHILD_URL: &str = "TRIPCD_TEST_CHILD_URL";
const CHILD_EXPECT: &str = "TRIPCD_TEST_CHILD_EXPECT";

/// Runs only in a child process started by
/// [`native_roots_follow_ssl_cert_file`]: the native root store is loaded
/// once per process, from the environment, so each setting needs its own
/// process.
#[test]
#[ignore = "run by native_roots_follow_ssl_cert_file in a child process"]
fn child_announces_with_native_roots() {
    let url = env::var(CHILD_URL).expect("run by native_roots_follow_ssl_cert_file");
    let expect = env::var(CHILD_EXPECT).expect("run by native_roots_follow_ssl_cert_file");
    // Through the worker, as the daemon does: it uses the native roots.
    let mut r = Reactor::new();
    let result = r.fetch(url, LONG);
    match expect.as_str() {
        "trusted" => {
            success(&result.unwrap());
        }
        "no-roots" => match result {
            Err(TrackerError::Tls(_, why)) => {
                assert!(why.starts_with("no root certificates"), "{why}");
            }
            other => panic!("expected a TLS error, got {other:?}"),
        },
        other => panic!("unknown expectation {other:?}"),
    }
}

#[test]
fn native_roots_follow_ssl_cert_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = make_ca(dir.path());
    let empty = dir.path().join("empty.pem");
    fs::write(&empty, "").unwrap();
    let tracker = TestTracker::start_tls(Arc::clone(&ca.server));
    let url = announce_url(&tracker.https_url(), &request(HASH, 8401, None, 1));
    for (file, expect) in [(&ca.ca_file, "trusted"), (&empty, "no-roots")] {
        let out = Command::new(env::current_exe().unwrap())
            .args([
                "child_announces_with_native_roots",
                "--exact",
                "--ignored",
                "--test-threads=1",
            ])
            .env("SSL_CERT_FILE", file)
            .env_remove("SSL_CERT_DIR")
            .env(CHILD_URL, &url)
            .env(CHILD_EXPECT, expect)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "child ({expect}) failed:\n{stdout}\n{stderr}"
        );
        // The filter matched the child test, so it did run.
        assert!(stdout.contains("1 passed"), "{stdout}");
    }
    // Only the trusting child got as far as the tracker.
    assert_eq!(tracker.announces().len(), 1);
}
