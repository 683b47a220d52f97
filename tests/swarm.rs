//! Swarms of real tripcd processes on loopback, found through a test
//! tracker: one seeds, two leech a multi-file torrent with an odd last
//! piece, and every file arrives byte-identical.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::tracker::TestTracker;
use common::{add, multi_torrent, noise, status, wait_for_state, Daemon, HANG};
use tripcd::codec::Value;

/// Files of the test torrent: across piece boundaries, one tiny, and a
/// short last piece (piece length 32 KiB).
fn files() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("a.bin", noise(1, 300_000)),
        ("tiny", noise(2, 5)),
        ("b.bin", noise(3, 700_001)),
    ]
}

fn torrent(tracker: &TestTracker) -> Vec<u8> {
    let files = files();
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, d)| (*n, d.as_slice())).collect();
    multi_torrent("swarm", &refs, 32 << 10, &tracker.url())
}

/// A daemon announcing to trackers, its peer port free and set.
fn daemon(state: &Path) -> Daemon {
    daemon_on_port(state).0
}

/// [`daemon`], and its peer port.
fn daemon_on_port(state: &Path) -> (Daemon, u16) {
    common::announcing_daemon(state)
}

fn assert_same_files(dir: &Path) {
    for (name, data) in files() {
        let got = std::fs::read(dir.join("swarm").join(name)).unwrap();
        assert!(got == data, "{name} differs");
    }
}

#[test]
fn one_seeds_and_two_leech_a_multi_file_torrent() {
    let tracker = TestTracker::start();
    let torrent = torrent(&tracker);

    let seed_dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(seed_dir.path().join("swarm")).unwrap();
    for (name, data) in files() {
        std::fs::write(seed_dir.path().join("swarm").join(name), data).unwrap();
    }
    let seed_state = tempfile::tempdir().unwrap();
    let seeder = daemon(seed_state.path());
    let mut s = seeder.client();
    let sid = add(&mut s, &torrent, seed_dir.path());
    wait_for_state(&mut s, sid, "seeding");

    let mut leechers = Vec::new();
    for _ in 0..2 {
        let state = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        let d = daemon(state.path());
        let mut c = d.client();
        let id = add(&mut c, &torrent, data.path());
        leechers.push((state, data, d, c, id));
    }
    for (_, data, _, c, id) in &mut leechers {
        wait_for_state(c, *id, "seeding");
        assert_same_files(data.path());
        let total = status(c, *id, "download-total");
        assert!(total.as_int().unwrap() > 0, "downloaded {total:?}");
    }
    // The seeder sent data, and the tracker heard `completed` from each
    // leecher, once.
    let start = Instant::now();
    while status(&mut s, sid, "upload-total").as_int().unwrap_or(0) == 0 {
        assert!(start.elapsed() < HANG);
        std::thread::sleep(Duration::from_millis(50));
    }
    let start = Instant::now();
    loop {
        let completed = tracker
            .announces()
            .iter()
            .filter(|a| a.event.as_deref() == Some("completed"))
            .count();
        if completed >= 2 {
            assert_eq!(completed, 2);
            break;
        }
        assert!(start.elapsed() < HANG, "{completed} completed announces");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The example script `scripts/ratio.rhai` stops a torrent once it has
/// uploaded twice its size: a seeder serves two leechers in turn (the
/// tracker tells them only of the seeder), then stops seeding; its
/// `get-peers` then lists no peer.
#[test]
fn the_ratio_script_stops_a_torrent_that_uploaded_twice_its_size() {
    let tracker = TestTracker::start();
    let torrent = torrent(&tracker);
    let hash = tripcd::registry::Metainfo::parse(&torrent)
        .unwrap()
        .info_hash;

    let seed_dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(seed_dir.path().join("swarm")).unwrap();
    for (name, data) in files() {
        std::fs::write(seed_dir.path().join("swarm").join(name), data).unwrap();
    }
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts");
    let seed_state = tempfile::tempdir().unwrap();
    let seeder = Daemon::start_in(
        seed_state.path(),
        &[
            "--announce",
            "true",
            "--scripts",
            scripts.to_str().unwrap(),
            "--script-timeout-ms",
            "10000",
        ],
    );
    let seed_port = common::free_port();
    let mut s = seeder.client();
    s.request("port", &Value::Int(seed_port.into())).unwrap();
    tracker.restrict(hash, vec![seed_port]);
    let sid = add(&mut s, &torrent, seed_dir.path());
    wait_for_state(&mut s, sid, "seeding");

    for round in 0..2 {
        let state = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        let d = daemon(state.path());
        let mut c = d.client();
        let id = add(&mut c, &torrent, data.path());
        wait_for_state(&mut c, id, "seeding");
        assert_same_files(data.path());
        if round == 0 {
            assert_eq!(status(&mut s, sid, "state").as_str(), Some("seeding"));
        }
    }
    // Twice the size uploaded: the script stops it.
    wait_for_state(&mut s, sid, "paused");
    let size: i64 = files().iter().map(|(_, d)| d.len() as i64).sum();
    let up = status(&mut s, sid, "upload-total").as_int().unwrap();
    assert!(up >= 2 * size, "uploaded {up} of {size}");
    let peers = s.call("get-peers", &Value::Int(sid)).unwrap();
    assert_eq!(peers.key, "peers");
    assert_eq!(peers.value, Value::List(vec![]), "stopped: no peers");
}

/// A seeder whose data went bad after its check serves corrupt pieces:
/// the leecher, told first only of it, strikes it three times and bans it;
/// then an honest seeder (which learns of the leecher) completes the
/// download.
#[test]
fn a_peer_serving_corrupt_data_is_banned_and_the_download_completes() {
    let tracker = TestTracker::start();
    let torrent = torrent(&tracker);
    let hash = tripcd::registry::Metainfo::parse(&torrent)
        .unwrap()
        .info_hash;
    let seeder = |rotten: bool| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("swarm")).unwrap();
        for (name, data) in files() {
            std::fs::write(dir.path().join("swarm").join(name), data).unwrap();
        }
        let state = tempfile::tempdir().unwrap();
        let (d, port) = daemon_on_port(state.path());
        let mut c = d.client();
        let id = add(&mut c, &torrent, dir.path());
        wait_for_state(&mut c, id, "seeding");
        if rotten {
            // Checked good, then rotten on disk: every piece it sends fails.
            for (name, data) in files() {
                let bad: Vec<u8> = data.iter().map(|b| !b).collect();
                std::fs::write(dir.path().join("swarm").join(name), bad).unwrap();
            }
        }
        (dir, state, d, port)
    };
    let (_cd, _cs, _corrupt, corrupt_port) = seeder(true);

    let state = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let (mut leecher, leecher_port) = daemon_on_port(state.path());
    tracker.restrict_for(hash, leecher_port, vec![corrupt_port]);
    let mut c = leecher.client();
    let id = add(&mut c, &torrent, data.path());
    let line = leecher
        .wait_for_log("pieces failed their hash with its data")
        .expect("the corrupt seeder is banned");
    assert!(
        line.contains(&format!("banning 127.0.0.1:{corrupt_port}")),
        "{line}"
    );
    assert_eq!(status(&mut c, id, "completed").as_int(), Some(0));

    let (_hd, _hs, _honest, _) = seeder(false);
    wait_for_state(&mut c, id, "seeding");
    assert_same_files(data.path());
}

/// A leecher killed with -9 halfway resumes after a restart without
/// fetching again the pieces it had: the first seeder has only the first
/// file, so the leecher stops at those pieces, deterministically.
#[test]
fn a_leecher_killed_halfway_resumes_without_downloading_twice() {
    let tracker = TestTracker::start();
    let torrent = torrent(&tracker);
    let total: i64 = files().iter().map(|(_, d)| d.len() as i64).sum();
    let seed = |only_first: bool| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("swarm")).unwrap();
        for (i, (name, data)) in files().into_iter().enumerate() {
            if i == 0 || !only_first {
                std::fs::write(dir.path().join("swarm").join(name), data).unwrap();
            }
        }
        let state = tempfile::tempdir().unwrap();
        let d = daemon(state.path());
        let mut c = d.client();
        add(&mut c, &torrent, dir.path());
        (dir, state, d, c)
    };
    let (_d1, _s1, partial, mut p) = seed(true);
    wait_for_state(&mut p, 1, "downloading");
    let has = status(&mut p, 1, "completed").as_int().unwrap();
    assert!(
        has > 0 && has < total,
        "partial seeder has {has} of {total}"
    );

    let state = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut leecher = daemon(state.path());
    let mut c = leecher.client();
    let id = add(&mut c, &torrent, data.path());
    let start = Instant::now();
    while status(&mut c, id, "completed").as_int().unwrap() < has {
        assert!(
            start.elapsed() < HANG,
            "the leecher did not get what the seeder has"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    leecher.kill9();
    drop(partial);

    // Restarted: its check finds the pieces on disk, and only the rest is
    // downloaded, from a full seeder.
    let mut leecher = Daemon::start_in(state.path(), &["--announce", "true"]);
    let mut c = leecher.client();
    wait_for_state(&mut c, id, "downloading");
    let found = status(&mut c, id, "completed").as_int().unwrap();
    assert_eq!(found, has, "the check finds what was verified before");
    let before = status(&mut c, id, "download-total").as_int().unwrap();
    let (_d2, _s2, _full, _f) = seed(false);
    wait_for_state(&mut c, id, "seeding");
    assert_same_files(data.path());
    let fetched = status(&mut c, id, "download-total").as_int().unwrap() - before;
    assert!(
        fetched <= total - has + (64 << 10),
        "fetched {fetched} bytes after the restart; {} were missing",
        total - has
    );
    leecher.kill9();
}

/// Moving the peer port re-binds at once; a port that cannot be bound is
/// answered `failed` with the reason (and logged), a free one succeeds.
#[test]
fn a_port_that_cannot_be_bound_is_answered_failed() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let state = tempfile::tempdir().unwrap();
    let mut d = Daemon::start_in(state.path(), &[]);
    let mut c = d.client();
    let reply = c.call("port", &Value::Int(port.into())).unwrap();
    assert_eq!(reply.key, "failed");
    let why = reply.value.as_str().unwrap_or("");
    assert!(
        why.contains(&format!("cannot listen for peers on port {port}")),
        "{why}"
    );
    d.wait_for_log("cannot listen for peers on 127.0.0.1")
        .unwrap();
    let free = common::free_port();
    let reply = c.call("port", &Value::Int(free.into())).unwrap();
    assert_eq!(reply.key, "succeeded");
    d.wait_for_log(&format!("listening for peers on 127.0.0.1:{free}"))
        .unwrap();
    assert!(std::net::TcpStream::connect(("127.0.0.1", free)).is_ok());
}

/// A stopped torrent says `stopping` while its `stopped` announce waits
/// (here a tracker that accepts and never answers), then `paused` once the
/// 5 s bound passes.
#[test]
fn a_stop_shows_stopping_while_its_announce_waits() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/announce", silent.local_addr().unwrap());
    let files = files();
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, d)| (*n, d.as_slice())).collect();
    let torrent = multi_torrent("swarm", &refs, 32 << 10, &url);
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("swarm")).unwrap();
    for (name, data) in &files {
        std::fs::write(dir.path().join("swarm").join(name), data).unwrap();
    }
    let state = tempfile::tempdir().unwrap();
    let d = daemon(state.path());
    let mut c = d.client();
    let id = add(&mut c, &torrent, dir.path());
    wait_for_state(&mut c, id, "seeding");
    c.request("stop", &Value::List(vec![Value::Int(id)]))
        .unwrap();
    assert_eq!(status(&mut c, id, "state").as_str(), Some("stopping"));
    wait_for_state(&mut c, id, "paused");
    drop(silent);
}

/// `--max-peers 1`: a second peer connection is closed at once while the
/// first waits for its handshake (for up to 20 s).
#[test]
fn past_max_peers_a_connection_is_closed_at_once() {
    use std::io::Read;
    let state = tempfile::tempdir().unwrap();
    let mut d = Daemon::start_in(state.path(), &["--max-peers", "1"]);
    let port = common::free_port();
    d.client()
        .request("port", &Value::Int(port.into()))
        .unwrap();
    let mut first = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let me = first.local_addr().unwrap();
    d.wait_for_log(&format!("peer {me}: accepted")).unwrap();
    let mut second = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    second.set_read_timeout(Some(HANG)).unwrap();
    let mut buf = [0u8; 1];
    assert_eq!(second.read(&mut buf).unwrap_or(0), 0, "closed at once");
    let me = second.local_addr().unwrap();
    d.wait_for_log(&format!("peer {me}: refused")).unwrap();
    first
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let err = first.read(&mut buf).unwrap_err();
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "the first is still open: {err}"
    );
}
