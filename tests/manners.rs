//! Swarm manners between real tripcd processes on loopback: speed limits,
//! peer exchange, and message stream encryption in every mode pair.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::tracker::TestTracker;
use common::{add, multi_torrent, noise, status, wait_for_state, Daemon, HANG};
use tripc_test_support::*;
use tripcd::codec::Value;

/// Helpers of this file.
mod tripc_test_support {
    use super::*;

    /// A daemon announcing to trackers, its peer port free and set.
    pub fn daemon(state: &Path) -> (Daemon, u16) {
        let d = Daemon::start_in(state, &["--announce", "true"]);
        let port = common::free_port();
        d.client()
            .request("port", &Value::Int(port.into()))
            .expect("port set");
        (d, port)
    }

    /// One file of `size` bytes in 32 KiB pieces.
    pub fn torrent(tracker: &TestTracker, name: &str, size: usize) -> (Vec<u8>, Vec<u8>) {
        let data = noise(7, size);
        let t = multi_torrent(name, &[("data.bin", &data)], 32 << 10, &tracker.url());
        (t, data)
    }

    /// The same torrent marked private (BEP 27): `private` is the last
    /// key of `info`, which is the last key of the file.
    pub fn privatised(torrent: &[u8]) -> Vec<u8> {
        let (body, end) = torrent.split_at(torrent.len() - 2);
        assert_eq!(end, b"ee");
        [body, b"7:privatei1e", end].concat()
    }

    pub fn info_hash(torrent: &[u8]) -> [u8; 20] {
        tripcd::registry::Metainfo::parse(torrent)
            .expect("a torrent")
            .info_hash
    }

    /// A directory holding the torrent's data, as a seeder has it.
    pub fn seed_dir(name: &str, data: &[u8]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(name)).unwrap();
        std::fs::write(dir.path().join(name).join("data.bin"), data).unwrap();
        dir
    }

    pub fn set(d: &Daemon, key: &str, value: Value) {
        d.client().request(key, &value).expect(key);
    }

    /// Polls `get-status` until `ok` holds of `ty`'s value.
    pub fn wait_status(d: &Daemon, id: i64, ty: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let mut c = d.client();
        let start = Instant::now();
        loop {
            let v = status(&mut c, id, ty);
            if ok(&v) {
                return v;
            }
            assert!(start.elapsed() < HANG, "{ty} still {v:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Peers of torrent `id` learned through peer exchange.
    pub fn from_pex(d: &Daemon, id: i64) -> i64 {
        let mut c = d.client();
        let v = status(&mut c, id, "peers-from");
        v.get("pex")
            .and_then(Value::as_int)
            .expect("peers-from.pex")
    }
}

/// Seconds a leecher takes to download `size` bytes from a seeder, the
/// leecher's `downlimit` and the seeder's `uplimit` as given (KiB/s).
fn timed_transfer(size: usize, downlimit: i64, uplimit: i64) -> f64 {
    let tracker = TestTracker::start();
    let (t, data) = torrent(&tracker, "limited", size);
    let seed_data = seed_dir("limited", &data);
    let seed_state = tempfile::tempdir().unwrap();
    let (seeder, _) = daemon(seed_state.path());
    set(&seeder, "uplimit", Value::Int(uplimit));
    let mut s = seeder.client();
    let sid = add(&mut s, &t, seed_data.path());
    wait_for_state(&mut s, sid, "seeding");

    let state = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (leecher, _) = daemon(state.path());
    set(&leecher, "downlimit", Value::Int(downlimit));
    let mut c = leecher.client();
    let start = Instant::now();
    let id = add(&mut c, &t, dir.path());
    wait_for_state(&mut c, id, "seeding");
    let secs = start.elapsed().as_secs_f64();
    let got = std::fs::read(dir.path().join("limited").join("data.bin")).unwrap();
    assert!(got == data, "the data arrived intact");
    secs
}

/// The buckets hold one 16 KiB block to start with; the rest can only
/// come at the rate. A lower bound on the time is safe on any machine (a
/// slow one takes longer, never shorter); the accuracy is measured by
/// `benches/limits.sh`, not asserted here.
fn least_seconds(size: usize, kib_s: i64) -> f64 {
    (size as f64 / 1024.0 - 16.0) / kib_s as f64
}

#[test]
fn a_download_limit_makes_the_transfer_slower_than_unlimited() {
    let size = 512 << 10;
    let free = timed_transfer(size, -1, -1);
    let limited = timed_transfer(size, 128, -1);
    let least = least_seconds(size, 128);
    assert!(limited >= least, "{limited} s, at least {least} s");
    assert!(limited > free, "{limited} s limited, {free} s unlimited");
}

#[test]
fn an_upload_limit_makes_the_transfer_slower_than_unlimited() {
    let size = 512 << 10;
    let free = timed_transfer(size, -1, -1);
    let limited = timed_transfer(size, -1, 128);
    let least = least_seconds(size, 128);
    assert!(limited >= least, "{limited} s, at least {least} s");
    assert!(limited > free, "{limited} s limited, {free} s unlimited");
}

/// At 4 KiB/s the transfer would outlast the test's bound: lifting the
/// limit over IPC mid-transfer is what lets it finish.
#[test]
fn a_limit_lifted_over_ipc_lets_the_transfer_finish() {
    let tracker = TestTracker::start();
    let size = 512 << 10;
    let (t, data) = torrent(&tracker, "lifted", size);
    let seed_data = seed_dir("lifted", &data);
    let seed_state = tempfile::tempdir().unwrap();
    let (seeder, _) = daemon(seed_state.path());
    let mut s = seeder.client();
    let sid = add(&mut s, &t, seed_data.path());
    wait_for_state(&mut s, sid, "seeding");

    let state = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (leecher, _) = daemon(state.path());
    set(&leecher, "downlimit", Value::Int(4));
    let mut c = leecher.client();
    let id = add(&mut c, &t, dir.path());
    wait_status(&leecher, id, "download-total", |v| {
        v.as_int().is_some_and(|n| n > 0)
    });
    assert_eq!(status(&mut c, id, "state").as_str(), Some("downloading"));
    set(&leecher, "downlimit", Value::Int(-1));
    wait_for_state(&mut c, id, "seeding");
}

/// Three daemons: `a` seeds, `b` leeches slowly from `a` (so that they
/// stay connected), and the tracker tells `c` only of `a`.
struct Three {
    _tracker: TestTracker,
    _dirs: Vec<tempfile::TempDir>,
    a: Daemon,
    _b: Daemon,
    c: Daemon,
    c_id: i64,
}

fn three(private: bool) -> Three {
    let tracker = TestTracker::start();
    let (t, data) = torrent(&tracker, "pex", 256 << 10);
    let t = if private { privatised(&t) } else { t };
    let hash = info_hash(&t);
    let mut dirs = Vec::new();

    let seed_data = seed_dir("pex", &data);
    let a_state = tempfile::tempdir().unwrap();
    let (a, a_port) = daemon(a_state.path());
    tracker.restrict_for(hash, a_port, vec![]);
    let mut ac = a.client();
    let a_id = add(&mut ac, &t, seed_data.path());
    wait_for_state(&mut ac, a_id, "seeding");

    let b_state = tempfile::tempdir().unwrap();
    let b_data = tempfile::tempdir().unwrap();
    let (b, b_port) = daemon(b_state.path());
    tracker.restrict_for(hash, b_port, vec![a_port]);
    set(&b, "downlimit", Value::Int(4));
    let b_id = add(&mut b.client(), &t, b_data.path());
    // `b` is connected to `a` before `c` comes.
    wait_status(&b, b_id, "peers-total", |v| v.as_int() == Some(1));
    wait_status(&a, a_id, "peers-total", |v| v.as_int() == Some(1));

    let c_state = tempfile::tempdir().unwrap();
    let c_data = tempfile::tempdir().unwrap();
    let (c, c_port) = daemon(c_state.path());
    tracker.restrict_for(hash, c_port, vec![a_port]);
    let c_id = add(&mut c.client(), &t, c_data.path());
    dirs.extend([seed_data, a_state, b_state, b_data, c_state, c_data]);
    Three {
        _tracker: tracker,
        _dirs: dirs,
        a,
        _b: b,
        c,
        c_id,
    }
}

#[test]
fn peer_exchange_tells_a_third_peer_of_the_second() {
    let t = three(false);
    let start = Instant::now();
    while from_pex(&t.c, t.c_id) < 1 {
        assert!(start.elapsed() < HANG, "no peer from pex");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(t.a.logged("peer exchange sent"), "the first peer sent it");
}

#[test]
fn a_private_torrent_never_uses_peer_exchange() {
    let mut t = three(true);
    // A public torrent's exchange reaches `c` before its first block (it
    // follows the extension handshake in the same rechoke): by the time
    // `c` is done, it would have happened.
    wait_for_state(&mut t.c.client(), t.c_id, "seeding");
    assert_eq!(from_pex(&t.c, t.c_id), 0);
    assert!(!t.c.logged("peer exchange named"), "nothing was exchanged");
    assert!(!t.a.logged("peer exchange sent"), "nothing was offered");
    assert!(t.c.wait_for_log("handshake done").is_some());
}

/// How a dialer in mode `dialer` and a listener in mode `listener` got
/// on: the dialer's log line of the handshake (`encrypted` or
/// `plaintext`), or `refused`.
fn pair(dialer: &str, listener: &str) -> &'static str {
    let tracker = TestTracker::start();
    let (t, data) = torrent(&tracker, "mse", 96 << 10);
    let hash = info_hash(&t);
    let seed_data = seed_dir("mse", &data);
    let l_state = tempfile::tempdir().unwrap();
    let (mut l, l_port) = daemon(l_state.path());
    set(&l, "encryption", Value::str(listener));
    tracker.restrict_for(hash, l_port, vec![]);
    let mut lc = l.client();
    let lid = add(&mut lc, &t, seed_data.path());
    wait_for_state(&mut lc, lid, "seeding");

    let d_state = tempfile::tempdir().unwrap();
    let d_data = tempfile::tempdir().unwrap();
    let (mut d, d_port) = daemon(d_state.path());
    set(&d, "encryption", Value::str(dialer));
    tracker.restrict_for(hash, d_port, vec![l_port]);
    let mut dc = d.client();
    let did = add(&mut dc, &t, d_data.path());
    let line = l
        .wait_for_any(&["handshake done for torrent", "encryption is required"])
        .unwrap_or_default();
    if line.contains("encryption is required") {
        return "refused";
    }
    wait_for_state(&mut dc, did, "seeding");
    let theirs = d
        .wait_for_log("handshake done for torrent")
        .unwrap_or_default();
    let how = |l: &str| {
        if l.ends_with("(encrypted)") {
            "encrypted"
        } else if l.ends_with("(plaintext)") {
            "plaintext"
        } else {
            panic!("no handshake line: {l:?}")
        }
    };
    assert_eq!(how(&line), how(&theirs), "both ends agree");
    how(&line)
}

/// Modes as 1.06 and 1.20 spell them: `plaintext` and `tolerated` are one
/// mode, which accepts both kinds of connection (PROTOCOL.md 7).
#[test]
fn a_required_dialer_connects_encrypted_to_every_mode() {
    assert_eq!(pair("required", "required"), "encrypted");
    assert_eq!(pair("required", "preferred"), "encrypted");
    assert_eq!(pair("required", "plaintext"), "encrypted");
}

#[test]
fn a_preferred_dialer_encrypts_unless_the_listener_prefers_plaintext() {
    assert_eq!(pair("preferred", "required"), "encrypted");
    assert_eq!(pair("preferred", "preferred"), "encrypted");
    assert_eq!(pair("preferred", "tolerated"), "plaintext");
}

#[test]
fn a_plaintext_dialer_is_refused_by_required_and_plain_elsewhere() {
    assert_eq!(pair("plaintext", "required"), "refused");
    assert_eq!(pair("tolerated", "preferred"), "plaintext");
    assert_eq!(pair("plaintext", "tolerated"), "plaintext");
}
