//! Swarm manners between real tripcd processes on loopback: speed limits,
//! peer exchange, and message stream encryption in every mode pair.

mod common;

use std::time::{Duration, Instant};

use common::tracker::TestTracker;
use common::{add, multi_torrent, noise, status, wait_for_state, Daemon, HANG};
use support::*;
use tripcd::codec::Value;

/// Helpers of this file.
mod support {
    use super::*;

    pub use common::announcing_daemon as daemon;

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

/// A tripcd with some settings, and its peer port; its directories
/// live as long as it.
struct Peer {
    d: Daemon,
    port: u16,
    id: i64,
    _dirs: [tempfile::TempDir; 2],
}

/// A tripcd with `settings` applied, then seeding `t` from `data`; the
/// tracker tells it of nobody.
fn seeder(tracker: &TestTracker, t: &[u8], data: &[u8], settings: &[(&str, Value)]) -> Peer {
    let meta = tripcd::registry::Metainfo::parse(t).expect("a torrent");
    let name = String::from_utf8_lossy(&meta.name).into_owned();
    let state = tempfile::tempdir().unwrap();
    let (d, port) = daemon(state.path());
    for (k, v) in settings {
        set(&d, k, v.clone());
    }
    tracker.restrict_for(info_hash(t), port, vec![]);
    let dir = seed_dir(&name, data);
    let mut c = d.client();
    let id = add(&mut c, t, dir.path());
    wait_for_state(&mut c, id, "seeding");
    Peer {
        d,
        port,
        id,
        _dirs: [state, dir],
    }
}

/// A tripcd with `settings` applied, then added `t` to download, the
/// tracker telling it only of the peers on `ports`.
fn leecher(tracker: &TestTracker, t: &[u8], settings: &[(&str, Value)], ports: &[u16]) -> Peer {
    let state = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (d, port) = daemon(state.path());
    for (k, v) in settings {
        set(&d, k, v.clone());
    }
    tracker.restrict_for(info_hash(t), port, ports.to_vec());
    let id = add(&mut d.client(), t, dir.path());
    Peer {
        d,
        port,
        id,
        _dirs: [state, dir],
    }
}

/// Seconds a leecher takes to download `size` bytes from a seeder, with
/// these settings of the seeder's and the leecher's.
fn timed_transfer(
    size: usize,
    seeder_settings: &[(&str, Value)],
    leecher_settings: &[(&str, Value)],
) -> f64 {
    let tracker = TestTracker::start();
    let (t, data) = torrent(&tracker, "limited", size);
    let s = seeder(&tracker, &t, &data, seeder_settings);
    let start = Instant::now();
    let l = leecher(&tracker, &t, leecher_settings, &[s.port]);
    wait_for_state(&mut l.d.client(), l.id, "seeding");
    let secs = start.elapsed().as_secs_f64();
    let got = std::fs::read(l._dirs[1].path().join("limited").join("data.bin")).unwrap();
    assert!(got == data, "the data arrived intact");
    secs
}

/// A transfer of 512 KiB is slower limited to 128 KiB/s (the seeder's
/// `uplimit` or the leecher's `downlimit`) than without a limit. The
/// buckets hold one 16 KiB block to start with and the rest can only come
/// at the rate: a lower bound on the time, safe on any machine (a slow
/// one takes longer, never shorter). The accuracy is measured by
/// `benches/manners.sh`, not asserted here.
fn limited_is_slower(key: &str, on_seeder: bool) {
    let size = 512 << 10;
    let free = timed_transfer(size, &[], &[]);
    let limit = [(key, Value::Int(128))];
    let limited = if on_seeder {
        timed_transfer(size, &limit, &[])
    } else {
        timed_transfer(size, &[], &limit)
    };
    let least = (size as f64 / 1024.0 - 16.0) / 128.0;
    assert!(limited >= least, "{key}: {limited} s, at least {least} s");
    assert!(
        limited > free,
        "{key}: {limited} s limited, {free} s unlimited"
    );
}

#[test]
fn a_download_limit_makes_the_transfer_slower_than_unlimited() {
    limited_is_slower("downlimit", false);
}

#[test]
fn an_upload_limit_makes_the_transfer_slower_than_unlimited() {
    limited_is_slower("uplimit", true);
}

/// At 4 KiB/s the transfer would outlast the test's bound: lifting the
/// limit over IPC mid-transfer is what lets it finish.
#[test]
fn a_limit_lifted_over_ipc_lets_the_transfer_finish() {
    let tracker = TestTracker::start();
    let (t, data) = torrent(&tracker, "lifted", 512 << 10);
    let s = seeder(&tracker, &t, &data, &[]);
    let l = leecher(&tracker, &t, &[("downlimit", Value::Int(4))], &[s.port]);
    wait_status(&l.d, l.id, "download-total", |v| {
        v.as_int().is_some_and(|n| n > 0)
    });
    let mut c = l.d.client();
    assert_eq!(status(&mut c, l.id, "state").as_str(), Some("downloading"));
    set(&l.d, "downlimit", Value::Int(-1));
    wait_for_state(&mut c, l.id, "seeding");
}

/// Three daemons: `a` seeds, `b` leeches slowly from `a` (so that they
/// stay connected), and the tracker tells `c` only of `a`.
struct Three {
    _tracker: TestTracker,
    a: Peer,
    _b: Peer,
    c: Peer,
}

fn three(private: bool) -> Three {
    let tracker = TestTracker::start();
    let (t, data) = torrent(&tracker, "pex", 256 << 10);
    let t = if private { privatised(&t) } else { t };
    let a = seeder(&tracker, &t, &data, &[]);
    let b = leecher(&tracker, &t, &[("downlimit", Value::Int(4))], &[a.port]);
    // `b` is connected to `a` before `c` comes.
    wait_status(&b.d, b.id, "peers-total", |v| v.as_int() == Some(1));
    wait_status(&a.d, a.id, "peers-total", |v| v.as_int() == Some(1));
    let c = leecher(&tracker, &t, &[], &[a.port]);
    Three {
        _tracker: tracker,
        a,
        _b: b,
        c,
    }
}

#[test]
fn peer_exchange_tells_a_third_peer_of_the_second() {
    let t = three(false);
    let start = Instant::now();
    while from_pex(&t.c.d, t.c.id) < 1 {
        assert!(start.elapsed() < HANG, "no peer from pex");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(t.a.d.logged("peer exchange sent"), "the first peer sent it");
}

#[test]
fn a_private_torrent_never_uses_peer_exchange() {
    let mut t = three(true);
    // A public torrent's exchange reaches `c` before its first block (it
    // follows the extension handshake in the same rechoke): by the time
    // `c` is done, it would have happened.
    wait_for_state(&mut t.c.d.client(), t.c.id, "seeding");
    assert_eq!(from_pex(&t.c.d, t.c.id), 0);
    assert!(
        !t.c.d.logged("peer exchange named"),
        "nothing was exchanged"
    );
    assert!(!t.a.d.logged("peer exchange sent"), "nothing was offered");
    assert!(t.c.d.wait_for_log("handshake done").is_some());
}

/// How a dialer in mode `dialer` and a listener in mode `listener` got
/// on: the dialer's log line of the handshake (`encrypted` or
/// `plaintext`), or `refused`.
fn pair(dialer: &str, listener: &str) -> &'static str {
    let tracker = TestTracker::start();
    let (t, data) = torrent(&tracker, "mse", 96 << 10);
    let mut l = seeder(&tracker, &t, &data, &[("encryption", Value::str(listener))]);
    let mut d = leecher(
        &tracker,
        &t,
        &[("encryption", Value::str(dialer))],
        &[l.port],
    );
    let line =
        l.d.wait_for_any(&["handshake done for torrent", "encryption is required"])
            .unwrap_or_default();
    if line.contains("encryption is required") {
        return "refused";
    }
    wait_for_state(&mut d.d.client(), d.id, "seeding");
    let theirs =
        d.d.wait_for_log("handshake done for torrent")
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
