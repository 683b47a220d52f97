//! Magnet links through the real daemon: `addmagnet` answers at once, the
//! torrent persists with what its link carried (across `kill -9`), its
//! metadata comes from peers (BEP 9), its data follows, and hostile peers
//! lying about the metadata change nothing for the honest ones.

mod common;

use std::path::Path;

use common::fakepeer::{frame, FakePeer};
use common::tracker::TestTracker;
use common::{add, multi_torrent, noise, status, wait_for_state, Daemon};
use tripcd::client::Client;
use tripcd::codec::Value;
use tripcd::registry::Metainfo;

fn files() -> Vec<(&'static str, Vec<u8>)> {
    vec![("a.bin", noise(11, 200_000)), ("b.bin", noise(12, 90_001))]
}

/// A torrent of [`files`] in pieces of 16 KiB (its info dictionary is
/// small: one metadata piece).
fn torrent(announce: &str) -> Vec<u8> {
    let files = files();
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, d)| (*n, d.as_slice())).collect();
    multi_torrent("magnetic", &refs, 16 << 10, announce)
}

fn hex(hash: &[u8; 20]) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

fn addmagnet(c: &mut Client, uri: &str) -> Result<i64, String> {
    let reply = c
        .request("addmagnet", &Value::List(vec![Value::str(uri)]))
        .map_err(|e| e.to_string())?
        .ok_or("no reply")?;
    Ok(reply.value.as_list().unwrap()[0]
        .get("id")
        .and_then(Value::as_int)
        .unwrap())
}

fn info(c: &mut Client, id: i64, ty: &str) -> Value {
    let req = Value::dict([
        ("id", Value::List(vec![Value::Int(id)])),
        ("type", Value::List(vec![Value::str(ty)])),
    ]);
    let reply = c.request("get-info", &req).unwrap().unwrap();
    reply.value.as_list().unwrap()[0]
        .get(ty)
        .cloned()
        .unwrap_or(Value::Int(-2))
}

/// A seeder of [`torrent`] with `announce`: its daemon, port and data.
fn seeder(announce: &str, args: &[&str]) -> (Daemon, u16, tempfile::TempDir, tempfile::TempDir) {
    let data = tempfile::tempdir().unwrap();
    std::fs::create_dir(data.path().join("magnetic")).unwrap();
    for (name, bytes) in files() {
        std::fs::write(data.path().join("magnetic").join(name), bytes).unwrap();
    }
    let state = tempfile::tempdir().unwrap();
    let d = Daemon::start_in(state.path(), args);
    let port = common::free_port();
    let mut c = d.client();
    c.request("port", &Value::Int(port.into())).unwrap();
    let id = add(&mut c, &torrent(announce), data.path());
    wait_for_state(&mut c, id, "seeding");
    (d, port, data, state)
}

fn assert_same_files(dir: &Path) {
    for (name, bytes) in files() {
        let got = std::fs::read(dir.join("magnetic").join(name)).unwrap();
        assert!(got == bytes, "{name} differs");
    }
}

#[test]
fn a_magnet_answers_at_once_and_persists_with_what_its_link_carried() {
    let state = tempfile::tempdir().unwrap();
    let mut d = Daemon::start_in(state.path(), &[]);
    let mut c = d.client();
    let hash = [0xab_u8; 20];
    let uri = format!(
        "magnet:?xt=urn:btih:{}&dn=A%20Film&tr=http%3A%2F%2Ftracker.test%2Fannounce\
         &tr=udp%3A%2F%2Fother.test%3A6969&x.pe=127.0.0.1:1",
        hex(&hash)
    );
    let id = addmagnet(&mut c, &uri).unwrap();
    assert_eq!(addmagnet(&mut c, &uri).unwrap(), id, "a duplicate");
    assert_eq!(info(&mut c, id, "hash").as_str(), Some(hex(&hash).as_str()));
    assert_eq!(info(&mut c, id, "name").as_str(), Some("A Film"));
    assert_eq!(info(&mut c, id, "size"), Value::Int(0));
    let trackers = info(&mut c, id, "trackers");
    assert_eq!(
        trackers.as_list().map(<[Value]>::len),
        Some(2),
        "{trackers:?}"
    );
    assert_eq!(status(&mut c, id, "state").as_str(), Some("downloading"));
    assert_eq!(status(&mut c, id, "metadata-percent"), Value::Int(0));

    // Refusals name their reason; nothing is added.
    let bad = c
        .request(
            "addmagnet",
            &Value::List(vec![Value::str("magnet:?xt=urn:btmh:1220ab")]),
        )
        .unwrap_err()
        .to_string();
    assert!(bad.contains("v2"), "{bad}");
    let bad = c
        .request(
            "addmagnet",
            &Value::List(vec![Value::str("http://example.test/x")]),
        )
        .unwrap_err()
        .to_string();
    assert!(bad.contains("magnet"), "{bad}");

    // Killed and started again: the same torrent, still fetching.
    d.kill9();
    let d = Daemon::start_in(state.path(), &[]);
    let mut c = d.client();
    let reply = c.request(
        "get-info-all",
        &Value::List(vec![Value::str("name"), Value::str("hash")]),
    );
    let all = reply.unwrap().unwrap().value;
    let all = all.as_list().unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].get("name").and_then(Value::as_str), Some("A Film"));
    let id = all[0].get("id").and_then(Value::as_int).unwrap();
    assert_eq!(
        info(&mut c, id, "trackers").as_list().map(<[Value]>::len),
        Some(2)
    );
    assert_eq!(status(&mut c, id, "state").as_str(), Some("downloading"));
}

/// A magnet naming the seeder in `x.pe` and no tracker at all: the
/// metadata, then the data, come from it.
#[test]
fn a_magnet_with_only_a_peer_hint_gets_metadata_and_data_from_that_peer() {
    let (_seed, port, _sdata, _sstate) = seeder("http://127.0.0.1:9/announce", &[]);
    let hash = Metainfo::parse(&torrent("http://127.0.0.1:9/announce"))
        .unwrap()
        .info_hash;
    let state = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut d = Daemon::start_in(
        state.path(),
        &["--download-dir", data.path().to_str().unwrap()],
    );
    let mut c = d.client();
    let uri = format!("magnet:?xt=urn:btih:{}&x.pe=127.0.0.1:{port}", hex(&hash));
    let id = addmagnet(&mut c, &uri).unwrap();
    wait_for_state(&mut c, id, "seeding");
    assert_same_files(data.path());
    assert_eq!(info(&mut c, id, "name").as_str(), Some("magnetic"));
    assert_eq!(status(&mut c, id, "metadata-percent"), Value::Int(100));
    assert!(d.wait_for_log("metadata complete").is_some());
    let copy = state
        .path()
        .join("torrents")
        .join(format!("{}.torrent", hex(&hash)));
    let saved = Metainfo::parse(&std::fs::read(copy).unwrap()).unwrap();
    assert_eq!(saved.info_hash, hash);
}

/// A magnet naming only the tracker: peers from it, then metadata, data.
#[test]
fn a_magnet_with_only_a_tracker_finds_its_swarm_there() {
    let tracker = TestTracker::start();
    let (_seed, _port, _sdata, _sstate) = seeder(&tracker.url(), &["--announce", "true"]);
    let hash = Metainfo::parse(&torrent(&tracker.url())).unwrap().info_hash;
    let state = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let (d, _) = {
        let d = Daemon::start_in(
            state.path(),
            &[
                "--announce",
                "true",
                "--download-dir",
                data.path().to_str().unwrap(),
            ],
        );
        let port = common::free_port();
        d.client()
            .request("port", &Value::Int(port.into()))
            .unwrap();
        (d, port)
    };
    let mut c = d.client();
    let tr: String = tracker
        .url()
        .bytes()
        .map(|b| match b {
            b':' => "%3A".to_string(),
            b'/' => "%2F".to_string(),
            b => (b as char).to_string(),
        })
        .collect();
    let id = addmagnet(
        &mut c,
        &format!("magnet:?xt=urn:btih:{}&tr={tr}", hex(&hash)),
    )
    .unwrap();
    wait_for_state(&mut c, id, "seeding");
    assert_same_files(data.path());
}

/// Liars about the metadata (a size over the bound, a size that changes,
/// pieces of garbage) are dropped; an honest seeder completes the fetch;
/// the daemon answers its clients throughout.
#[test]
fn peers_lying_about_the_metadata_are_dropped_and_the_honest_one_serves_it() {
    let (_seed, seed_port, _sdata, _sstate) = seeder("http://127.0.0.1:9/announce", &[]);
    let meta = Metainfo::parse(&torrent("http://127.0.0.1:9/announce")).unwrap();
    let state = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let d = Daemon::start_in(
        state.path(),
        &["--download-dir", data.path().to_str().unwrap()],
    );
    let mut c = d.client();
    let port = common::free_port();
    c.request("port", &Value::Int(port.into())).unwrap();
    // No peer known: the liars connect first.
    let uri = format!("magnet:?xt=urn:btih:{}", hex(&meta.info_hash));
    let id = addmagnet(&mut c, &uri).unwrap();

    let ext = |id: u8, payload: &[u8]| {
        let mut body = vec![id];
        body.extend_from_slice(payload);
        frame(20, &body)
    };
    let liar = |size: &str| {
        let (mut p, _) = FakePeer::handshake_ext(port, &meta.info_hash);
        let hs = format!("d1:md11:ut_metadatai3ee13:metadata_size{size}e");
        assert!(p.send(&ext(0, hs.as_bytes())));
        p
    };
    liar("i999999999e").wait_closed();
    let mut changing = liar("i100e");
    assert!(changing.send(&ext(0, b"d1:md11:ut_metadatai3ee13:metadata_sizei200ee")));
    changing.wait_closed();
    // One that answers our request with garbage of the right size.
    let mut garbage = liar(&format!("i{}e", meta.info.len()));
    let request = garbage.wait_for_extended(3);
    assert!(
        String::from_utf8_lossy(&request).contains("msg_type"),
        "a request"
    );
    let mut bad = b"d8:msg_typei1e5:piecei0e10:total_sizei".to_vec();
    bad.extend_from_slice(format!("{}ee", meta.info.len()).as_bytes());
    bad.extend(std::iter::repeat_n(b'x', meta.info.len()));
    assert!(garbage.send(&ext(2, &bad)));

    // The IPC answers meanwhile.
    assert_eq!(status(&mut c, id, "state").as_str(), Some("downloading"));
    // The garbage fails the info hash: its only sender is dropped.
    garbage.wait_closed();
    // The honest seeder, named by the same link again: the fetch
    // completes from it, then the data.
    let seed = format!(
        "magnet:?xt=urn:btih:{}&x.pe=127.0.0.1:{seed_port}",
        hex(&meta.info_hash)
    );
    assert_eq!(addmagnet(&mut c, &seed).unwrap(), id, "the same torrent");
    wait_for_state(&mut c, id, "seeding");
    assert_same_files(data.path());
}
