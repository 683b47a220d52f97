//! Trackers as users meet them, against real tripcd processes: a dead
//! first tier, a UDP tracker that loses packets, one that answers garbage,
//! one that never answers (beside a healthy one), and scrapes.
//!
//! Nothing here waits for a timer to fire at a given moment: each test
//! polls the daemon until what it expects shows (bounded by [`HANG`],
//! which only turns a hang into a failure), and tracker timeouts are made
//! short with `--tracker-timeout` so the polls end soon.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::tracker::{Announce, Mode, Stream, TestTracker, Wrap};
use common::{add, add_with, noise, status, tiered_torrent, wait_for_state, Daemon, HANG};
use tripcd::client::Client;
use tripcd::codec::Value;

/// A seeding torrent's data: the file written in `dir`, and the metainfo
/// announcing to `tiers`. `seed` makes torrents differ.
fn seeded(dir: &Path, seed: u32, tiers: &[&[&str]]) -> Vec<u8> {
    let data = noise(seed, 100_000);
    let name = format!("t{seed}");
    std::fs::create_dir_all(dir.join(&name)).unwrap();
    std::fs::write(dir.join(&name).join("a.bin"), &data).unwrap();
    tiered_torrent(&name, &[("a.bin", &data)], 32 << 10, tiers)
}

/// A daemon that announces, its peer port set.
fn daemon(state: &Path, extra: &[&str]) -> Daemon {
    let mut args = vec!["--announce", "true"];
    args.extend_from_slice(extra);
    let d = Daemon::start_in(state, &args);
    d.client()
        .request("port", &Value::Int(common::free_port().into()))
        .expect("port set");
    d
}

/// Polls until `check` holds for torrent `id`'s status field `ty`.
fn wait_for(c: &mut Client, id: i64, ty: &str, check: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let v = status(c, id, ty);
        if check(&v) {
            return v;
        }
        assert!(start.elapsed() < HANG, "{ty} still {v:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls until the tracker recorded an announce matching `check`.
fn wait_for_announce(tracker: &TestTracker, check: impl Fn(&Announce) -> bool) -> Announce {
    let start = Instant::now();
    loop {
        if let Some(a) = tracker.announces().into_iter().find(&check) {
            return a;
        }
        assert!(start.elapsed() < HANG, "{:?}", tracker.announces());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The torrent's info hash, from `get-info`.
fn info_hash(c: &mut Client, id: i64) -> [u8; 20] {
    let req = Value::dict([
        ("id", Value::List(vec![Value::Int(id)])),
        ("type", Value::List(vec![Value::str("hash")])),
    ]);
    let reply = c.request("get-info", &req).unwrap().unwrap();
    let hex = reply.value.as_list().unwrap()[0]
        .get("hash")
        .and_then(Value::as_str)
        .unwrap()
        .to_string();
    let mut out = [0u8; 20];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
    }
    out
}

fn tracker_port(c: &mut Client, id: i64) -> i64 {
    status(c, id, "tracker")
        .get("port")
        .and_then(Value::as_int)
        .unwrap_or(-1)
}

fn start(c: &mut Client, id: i64) {
    c.request("start", &Value::List(vec![Value::Int(id)]))
        .unwrap();
}

fn stop(c: &mut Client, id: i64) {
    c.request("stop", &Value::List(vec![Value::Int(id)]))
        .unwrap();
}

/// Tier 1 is a port where nothing listens: the announce falls back to
/// tier 2 at once, `tracker` names it, the error clears; the announce
/// carries `numwant`, `compact` and a `key` that stays the same, and the
/// `tracker id` comes back in the `stopped` announce.
#[test]
fn a_dead_first_tier_falls_back_to_the_next() {
    let tracker = TestTracker::start();
    tracker.set_tracker_id(Some(b"tid-1"));
    let dead = format!("http://127.0.0.1:{}/announce", common::free_port());
    let dir = tempfile::tempdir().unwrap();
    let torrent = seeded(dir.path(), 1, &[&[&dead], &[&tracker.url()]]);
    let state = tempfile::tempdir().unwrap();
    let d = daemon(state.path(), &[]);
    let mut c = d.client();
    let id = add(&mut c, &torrent, dir.path());
    let started = wait_for_announce(&tracker, |a| a.event.as_deref() == Some("started"));
    assert!(!started.udp);
    assert!(started.compact);
    assert_eq!(started.numwant, Some(50));
    assert_eq!(started.left, 0, "a seeder");
    let port = i64::from(tracker.addr().port());
    wait_for(&mut c, id, "tracker", |t| {
        t.get("port").and_then(Value::as_int) == Some(port)
    });
    wait_for(&mut c, id, "error", |e| e.as_str() == Some(""));
    stop(&mut c, id);
    let stopped = wait_for_announce(&tracker, |a| a.event.as_deref() == Some("stopped"));
    assert_eq!(stopped.key, started.key);
    assert!(started.key.is_some());
    assert_eq!(stopped.trackerid.as_deref(), Some(&b"tid-1"[..]));
}

/// A UDP tracker that drops the first two packets (both connect
/// requests): the retransmissions get through, the announce arrives, and
/// the UDP scrape fills the figures.
#[test]
fn a_udp_tracker_that_drops_the_first_two_packets() {
    let tracker = TestTracker::start();
    tracker.drop_udp(2);
    tracker.set_completed(7);
    let dir = tempfile::tempdir().unwrap();
    let torrent = seeded(dir.path(), 2, &[&[&tracker.udp_url()]]);
    let state = tempfile::tempdir().unwrap();
    // Retransmissions 2 s apart, then 4 s: this test takes about 6 s.
    let d = daemon(state.path(), &["--tracker-timeout", "8"]);
    let mut c = d.client();
    let id = add(&mut c, &torrent, dir.path());
    let started = wait_for_announce(&tracker, |a| a.event.as_deref() == Some("started"));
    assert!(started.udp);
    assert!(tracker.udp_packets() >= 4, "2 dropped, connect, announce");
    assert_eq!(started.numwant, Some(50));
    wait_for(&mut c, id, "scrape-completed", |v| v.as_int() == Some(7));
    assert_eq!(status(&mut c, id, "scrape-seeders").as_int(), Some(1));
    assert_eq!(status(&mut c, id, "scrape-leechers").as_int(), Some(0));
    assert_eq!(status(&mut c, id, "error").as_str(), Some(""));
    assert!(!tracker.scrapes().is_empty());
    stop(&mut c, id);
    wait_for_announce(&tracker, |a| a.event.as_deref() == Some("stopped") && a.udp);
}

/// An HTTP tracker answering an HTML page: the torrent shows a tracker
/// error a person understands, and goes on.
#[test]
fn a_tracker_replying_garbage_is_a_tracker_error() {
    let tracker = TestTracker::start();
    tracker.set_mode(Mode::Garbage);
    let dir = tempfile::tempdir().unwrap();
    let torrent = seeded(dir.path(), 3, &[&[&tracker.url()]]);
    let state = tempfile::tempdir().unwrap();
    let d = daemon(state.path(), &[]);
    let mut c = d.client();
    let id = add(&mut c, &torrent, dir.path());
    wait_for(&mut c, id, "error", |e| e.as_str() == Some("tracker-error"));
    let text = status(&mut c, id, "error-message");
    let text = text.as_str().unwrap();
    assert!(
        text.contains("not a bencoded dictionary") && text.contains("<html>"),
        "{text}"
    );
    assert_eq!(status(&mut c, id, "state").as_str(), Some("seeding"));
    // `tripc -l` shows it under the torrent's row.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tripc"))
        .arg("--socket")
        .arg(&d.socket)
        .arg("-l")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    let line = out
        .lines()
        .find(|l| l.contains("tracker-error"))
        .unwrap_or("");
    assert!(
        line.starts_with("    tracker-error: tracker replied with something that is not"),
        "{out}"
    );
}

/// Trackers that never answer, HTTP (accepts, never replies) and UDP:
/// each torrent on them shows an error once the timeout passes, and a
/// torrent on a healthy tracker announces meanwhile.
#[test]
fn a_tracker_that_never_answers_does_not_hold_up_others() {
    let silent = TestTracker::start();
    silent.set_mode(Mode::Hang);
    let healthy = TestTracker::start();
    let dir = tempfile::tempdir().unwrap();
    let on_http = seeded(dir.path(), 4, &[&[&silent.url()]]);
    let on_udp = seeded(dir.path(), 5, &[&[&silent.udp_url()]]);
    let on_healthy = seeded(dir.path(), 6, &[&[&healthy.url()]]);
    let state = tempfile::tempdir().unwrap();
    let d = daemon(state.path(), &["--tracker-timeout", "3"]);
    let mut c = d.client();
    let a = add(&mut c, &on_http, dir.path());
    let b = add(&mut c, &on_udp, dir.path());
    let h = add(&mut c, &on_healthy, dir.path());
    wait_for_announce(&healthy, |a| a.event.as_deref() == Some("started"));
    wait_for(&mut c, h, "error", |e| e.as_str() == Some(""));
    for id in [a, b] {
        wait_for(&mut c, id, "error", |e| e.as_str() == Some("tracker-error"));
        let text = status(&mut c, id, "error-message");
        assert!(
            text.as_str().unwrap().contains("did not answer"),
            "{text:?}"
        );
    }
    assert!(
        silent.udp_packets() >= 2,
        "the UDP connect was retransmitted"
    );
    assert_eq!(status(&mut c, h, "error").as_str(), Some(""));
}

/// An HTTP scrape fills `scrape-seeders`, `scrape-leechers` and
/// `scrape-completed` (-1 before anything is known).
#[test]
fn scrape_figures_appear_in_get_status() {
    let tracker = TestTracker::start();
    tracker.set_completed(5);
    let dir = tempfile::tempdir().unwrap();
    let torrent = seeded(dir.path(), 7, &[&[&tracker.url()]]);
    let state = tempfile::tempdir().unwrap();
    let d = daemon(state.path(), &[]);
    let mut c = d.client();
    let id = add_with(&mut c, &torrent, dir.path(), false);
    for ty in ["scrape-seeders", "scrape-leechers", "scrape-completed"] {
        assert_eq!(status(&mut c, id, ty).as_int(), Some(-1), "{ty}");
    }
    let hash = info_hash(&mut c, id);
    // Two leechers the daemon cannot reach (nothing listens there).
    for port in [common::free_port(), common::free_port()] {
        tracker.add_peer(hash, ([127, 0, 0, 1], port).into(), 1000);
    }
    start(&mut c, id);
    wait_for_state(&mut c, id, "seeding");
    wait_for(&mut c, id, "scrape-completed", |v| v.as_int() == Some(5));
    assert_eq!(status(&mut c, id, "scrape-seeders").as_int(), Some(1));
    assert_eq!(status(&mut c, id, "scrape-leechers").as_int(), Some(2));
    assert!(tracker.scrapes().contains(&hash));
    assert_eq!(tracker_port(&mut c, id), i64::from(tracker.addr().port()));
}

/// An HTTPS tracker whose certificate the system trusts (here through
/// `SSL_CERT_FILE`, as on a machine with a private CA installed).
#[test]
fn an_https_tracker_is_announced_to() {
    let certs = tempfile::tempdir().unwrap();
    let ca = common::tls::make_ca(certs.path());
    let config = ca.server.clone();
    let wrap: Wrap = Box::new(move |tcp| {
        let tls = common::tls::accept(tcp, &config).ok()?;
        Some(Box::new(tls) as Box<dyn Stream>)
    });
    let tracker = TestTracker::start_with(Some(wrap));
    let dir = tempfile::tempdir().unwrap();
    let torrent = seeded(dir.path(), 8, &[&[&tracker.https_url()]]);
    let state = tempfile::tempdir().unwrap();
    let ca_file = ca.ca_file.to_str().unwrap();
    let cert_dir = certs.path().to_str().unwrap();
    let args = ["--announce", "true"];
    let env = [("SSL_CERT_FILE", ca_file), ("SSL_CERT_DIR", cert_dir)];
    let d = Daemon::try_start_env(state.path(), &args, &env).unwrap();
    let mut c = d.client();
    c.request("port", &Value::Int(common::free_port().into()))
        .unwrap();
    let id = add(&mut c, &torrent, dir.path());
    wait_for_announce(&tracker, |a| a.event.as_deref() == Some("started"));
    wait_for(&mut c, id, "scrape-seeders", |v| v.as_int() == Some(1));
    assert_eq!(status(&mut c, id, "error").as_str(), Some(""));
}
