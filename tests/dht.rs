//! The DHT through real daemons on loopback: a torrent seeded by one
//! tripcd is found by another from a magnet link naming no tracker and no
//! peer, through a third that only routes; the node's figures, its
//! switch, and its table kept across a restart.

mod common;

use common::{add, multi_torrent, noise, status, wait_for_state, Daemon};
use tripcd::client::Client;
use tripcd::codec::Value;
use tripcd::registry::Metainfo;

fn files() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("one.bin", noise(21, 150_000)),
        ("two.bin", noise(22, 33_333)),
    ]
}

fn torrent() -> Vec<u8> {
    let files = files();
    let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, d)| (*n, d.as_slice())).collect();
    multi_torrent(
        "trackerless",
        &refs,
        16 << 10,
        "http://127.0.0.1:9/announce",
    )
}

fn hex(hash: &[u8; 20]) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

/// A daemon whose DHT bootstraps from `router` (`host:port`), on a peer
/// port of its own; the port.
fn node(state: &std::path::Path, router: &str, extra: &[&str]) -> (Daemon, u16) {
    let mut args = vec!["--dht-bootstrap", router];
    args.extend_from_slice(extra);
    let d = Daemon::start_in(state, &args);
    let port = common::free_port();
    d.client()
        .request("port", &Value::Int(port.into()))
        .expect("port set");
    (d, port)
}

fn dht_stats(c: &mut Client) -> Value {
    c.request("get-dht-stats", &Value::empty())
        .unwrap()
        .unwrap()
        .value
}

#[test]
fn a_trackerless_magnet_finds_its_seeder_through_the_dht() {
    // C only routes: the others bootstrap from it.
    let c_state = tempfile::tempdir().unwrap();
    let (router, router_port) = node(c_state.path(), "127.0.0.1:9", &[]);
    let via = format!("127.0.0.1:{router_port}");

    let seed_data = tempfile::tempdir().unwrap();
    std::fs::create_dir(seed_data.path().join("trackerless")).unwrap();
    for (name, bytes) in files() {
        std::fs::write(seed_data.path().join("trackerless").join(name), bytes).unwrap();
    }
    let a_state = tempfile::tempdir().unwrap();
    let (seeder, _) = node(a_state.path(), &via, &[]);
    let mut a = seeder.client();
    let aid = add(&mut a, &torrent(), seed_data.path());
    wait_for_state(&mut a, aid, "seeding");

    let b_data = tempfile::tempdir().unwrap();
    let b_state = tempfile::tempdir().unwrap();
    let (leecher, _) = node(
        b_state.path(),
        &via,
        &["--download-dir", b_data.path().to_str().unwrap()],
    );
    let mut b = leecher.client();
    let hash = Metainfo::parse(&torrent()).unwrap().info_hash;
    let uri = format!("magnet:?xt=urn:btih:{}", hex(&hash));
    let reply = b
        .request("addmagnet", &Value::List(vec![Value::str(&uri)]))
        .unwrap()
        .unwrap();
    let bid = reply.value.as_list().unwrap()[0]
        .get("id")
        .and_then(Value::as_int)
        .unwrap();
    wait_for_state(&mut b, bid, "seeding");
    for (name, bytes) in files() {
        let got = std::fs::read(b_data.path().join("trackerless").join(name)).unwrap();
        assert!(got == bytes, "{name} differs");
    }
    // The seeder came from the DHT (no tracker, no hint named it).
    let mut leecher = leecher;
    assert!(leecher.wait_for_log("the DHT named").is_some());
    assert!(status(&mut b, bid, "peers-from").get("dht").is_some());

    let st = dht_stats(&mut b);
    assert_eq!(st.get("running").and_then(Value::as_int), Some(1));
    assert!(
        st.get("good-nodes").and_then(Value::as_int).unwrap_or(0) >= 1,
        "{st:?}"
    );
    assert!(st.get("packets-in").and_then(Value::as_int).unwrap_or(0) > 0);
    drop(router);
}

#[test]
fn the_dht_switch_is_a_setting_and_the_table_is_kept() {
    let state = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    let (peer, peer_port) = node(other.path(), "127.0.0.1:9", &[]);
    let (d, _) = node(state.path(), &format!("127.0.0.1:{peer_port}"), &[]);
    let mut c = d.client();
    assert_eq!(
        c.request("get-dht", &Value::empty())
            .unwrap()
            .unwrap()
            .value,
        Value::Int(1),
        "on by default"
    );
    // Bootstrapped: the peer answered, and is in the table.
    let start = std::time::Instant::now();
    while dht_stats(&mut c).get("good-nodes").and_then(Value::as_int) != Some(1) {
        assert!(start.elapsed() < common::HANG, "{:?}", dht_stats(&mut c));
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    c.request("dht", &Value::Int(0)).unwrap();
    assert_eq!(
        dht_stats(&mut c).get("running").and_then(Value::as_int),
        Some(0)
    );
    // Switched off, the table was saved; a restart with the switch on
    // again loads it.
    assert!(state.path().join("dht.benc").exists());
    c.request("dht", &Value::Int(1)).unwrap();
    drop(c);
    drop(d);
    drop(peer);
    let d = Daemon::start_in(state.path(), &["--dht-bootstrap", "127.0.0.1:9"]);
    let mut c = d.client();
    assert_eq!(
        c.request("get-dht", &Value::empty())
            .unwrap()
            .unwrap()
            .value,
        Value::Int(1),
        "persisted"
    );
    let off = tempfile::tempdir().unwrap();
    let d2 = Daemon::start_in(off.path(), &["--no-dht"]);
    let st = dht_stats(&mut d2.client());
    assert_eq!(
        st.get("running").and_then(Value::as_int),
        Some(0),
        "--no-dht wins"
    );
}
