//! The core without sockets: a registry of its own, the clock faked.

use super::*;
use crate::registry::{Hints, Metainfo, Registry, Settings as RegSettings};
use std::time::Duration;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/data/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn core(dir: &std::path::Path, announce: bool) -> Core {
    std::fs::create_dir_all(dir.join("dl")).unwrap();
    let reg = Registry::open(dir, RegSettings::defaults(dir.join("dl"))).unwrap();
    let settings = Settings {
        announce,
        dht: true,
        ..Settings::default()
    };
    Core::new(Rc::new(RefCell::new(reg)), settings)
}

/// Commits, then lets the core follow, as the server's turn does.
fn end_turn(c: &mut Core, now: Instant) {
    c.reg_mut().commit().unwrap();
    c.sync(now);
}

#[test]
fn a_torrent_added_by_its_hash_runs_fetching_then_gains_geometry_and_pieces() {
    let dir = tempfile::tempdir().unwrap();
    let meta = Metainfo::parse(&fixture("hello.torrent")).unwrap();
    let now = Instant::now();
    let mut c = core(dir.path(), false);
    let id = c
        .reg_mut()
        .add_by_hash(meta.info_hash, Hints::default(), None, Some(true))
        .unwrap();
    end_turn(&mut c, now);
    assert_eq!(c.swarm().stage(id), Some(Stage::Fetching));

    // Persisted: a restarted core runs it the same way.
    drop(c);
    let mut c = core(dir.path(), false);
    c.sync(now);
    assert_eq!(c.swarm().stage(id), Some(Stage::Fetching));

    c.handle_metadata(id, &meta.info);
    end_turn(&mut c, now);
    assert_eq!(c.swarm().stage(id), Some(Stage::Checking), "peers kept");
    let mut t = now;
    while c.is_busy() {
        c.run_check_slice(&mut || {
            t += Duration::from_millis(1);
            t
        });
        end_turn(&mut c, now);
    }
    assert_eq!(c.swarm().stage(id), Some(Stage::Moving));
    assert_eq!(
        c.registry.borrow().torrents().get(id).unwrap().phase,
        Phase::Downloading,
        "nothing in its folder yet"
    );
    assert!(dir
        .path()
        .join("torrents")
        .join(format!("{}.torrent", meta.hash_hex()))
        .exists());
}

#[test]
fn each_kind_of_datagram_on_the_peer_port_reaches_its_handler() {
    let dir = tempfile::tempdir().unwrap();
    let hello = Metainfo::parse(&fixture("hello.torrent")).unwrap();
    let tracker: SocketAddr = "127.0.0.1:6969".parse().unwrap();
    let torrent = Metainfo::from_info(&hello.info, &[format!("udp://{tracker}/announce")]);
    let now = Instant::now();
    let mut c = core(dir.path(), true);
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("hello.txt"), b"hello").unwrap();
    c.reg_mut()
        .add(torrent, Some(data.path().to_path_buf()), Some(true))
        .unwrap();
    end_turn(&mut c, now);
    while c.is_busy() {
        c.run_check_slice(&mut Instant::now);
        end_turn(&mut c, now);
    }

    // Our connect request, and the tracker's answer to it (BEP 15).
    let connect = c.poll_transmit(now).expect("a connect to the UDP tracker");
    assert_eq!(connect.destination, tracker);
    let mut reply = vec![0, 0, 0, 0];
    reply.extend_from_slice(&connect.payload[12..16]);
    reply.extend_from_slice(&0x0123_4567_89ab_cdef_u64.to_be_bytes());
    c.handle_datagram(tracker, &reply, now);
    assert_eq!(c.datagram_stats().tracker, 1);
    let announce = c
        .poll_transmit(now)
        .expect("the announce follows the connect");
    assert_eq!(
        &announce.payload[..8],
        &0x0123_4567_89ab_cdef_u64.to_be_bytes()
    );

    // The same reply again, or from elsewhere, is no tracker's any more.
    c.handle_datagram(tracker, &reply, now);
    c.handle_datagram("127.0.0.1:7000".parse().unwrap(), &reply, now);
    // A KRPC query: the DHT answers it.
    let node: SocketAddr = "127.0.0.1:7001".parse().unwrap();
    let ping = b"d1:ad2:id20:aaaaaaaaaaaaaaaaaaaae1:q4:ping1:t2:aa1:y1:qe";
    c.handle_datagram(node, ping, now);
    let to_node: Vec<Vec<u8>> = std::iter::from_fn(|| c.poll_transmit(now))
        .filter(|t| t.destination == node)
        .map(|t| t.payload)
        .collect();
    assert!(
        to_node.iter().any(|p| p.windows(6).any(|w| w == b"1:y1:r")),
        "the DHT's answer: {to_node:?}"
    );
    // A uTP SYN.
    c.handle_datagram(node, &[0x41, 1, 0, 0, 0, 0, 0, 0], now);
    let st = c.datagram_stats();
    assert_eq!((st.tracker, st.dht), (1, 1));
    assert_eq!(st.utp + st.dropped, 3);
}
