//! The swarm driven without sockets: two or three swarms, bytes moved
//! between them by hand, the clock faked.

use super::*;
use crate::codec::Value;
use crate::registry::{Metainfo, Phase};
use sha1::{Digest, Sha1};
use std::path::Path;
use std::time::Duration;

const PIECE: u64 = 32 << 10;

/// Files of a multi-file torrent with an odd last piece.
fn files() -> Vec<Vec<u8>> {
    let mut x = 7u32;
    let mut noise = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (x >> 16) as u8
            })
            .collect()
    };
    vec![noise(50_000), noise(3), noise(100_001)]
}

fn metainfo(data: &[Vec<u8>]) -> Metainfo {
    let all: Vec<u8> = data.concat();
    let pieces: Vec<u8> = all
        .chunks(PIECE as usize)
        .flat_map(|c| <[u8; 20]>::from(Sha1::digest(c)))
        .collect();
    let files = data
        .iter()
        .enumerate()
        .map(|(i, d)| {
            Value::dict([
                ("length", Value::Int(d.len() as i64)),
                ("path", Value::List(vec![Value::str(&format!("f{i}"))])),
            ])
        })
        .collect();
    let info = Value::dict([
        ("files", Value::List(files)),
        ("name", Value::str("multi")),
        ("piece length", Value::Int(PIECE as i64)),
        ("pieces", Value::Bytes(pieces)),
    ]);
    Metainfo::parse(&Value::dict([("info", info)]).to_bencode().unwrap()).unwrap()
}

fn torrent(meta: &Metainfo, dir: &Path, complete: bool) -> Torrent {
    Torrent {
        id: 1,
        info_hash: meta.info_hash,
        meta: Some(meta.clone()),
        hints: Default::default(),
        saved_path: dir.join("x.torrent"),
        directory: dir.to_path_buf(),
        running: true,
        phase: Phase::Downloading,
        verified: vec![complete; meta.pieces.len()],
        completed: 0,
        error: None,
        transfer: Default::default(),
        dates: Default::default(),
        labels: Vec::new(),
        totals_at_open: (0, 0),
    }
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn swarm(seed: u64) -> Swarm {
    let mut rng = fastrand::Rng::with_seed(seed);
    Swarm::new(new_peer_id(&mut rng), Limits::default(), rng)
}

/// One round: bytes both ways between `a`'s peer `ka` and `b`'s peer
/// `kb`, then both swarms' timers. `b` reads no more than its download
/// allowance, as the reactor does; the rest waits in `held` (the
/// kernel's buffer). Whether anything moved.
fn step(
    a: &mut Swarm,
    ka: usize,
    b: &mut Swarm,
    kb: usize,
    now: Instant,
    held: &mut Vec<u8>,
) -> bool {
    let ab = a.output(ka).to_vec();
    a.consume_output(ka, ab.len(), now);
    held.extend_from_slice(&ab);
    let n = held.len().min(b.read_allowance(now));
    let chunk: Vec<u8> = held.drain(..n).collect();
    b.receive(kb, &chunk, now);
    let ba = b.output(kb).to_vec();
    b.consume_output(kb, ba.len(), now);
    a.receive(ka, &ba, now);
    run_disk(a, now);
    run_disk(b, now);
    a.handle_timeout(now);
    b.handle_timeout(now);
    !(ab.is_empty() && ba.is_empty())
}

/// Runs the swarm's disk requests at once, as the disk thread would.
fn run_disk(s: &mut Swarm, now: Instant) {
    let mut writer = crate::engine::disk::PieceWriter::new();
    while let Some(req) = s.poll_disk() {
        if let Some(crate::engine::disk::DiskDone::Piece(done)) = writer.handle(req) {
            s.disk_done(done, now);
        }
    }
}

/// Runs rounds 10 ms of fake time apart until nothing moves.
fn pump(a: &mut Swarm, ka: usize, b: &mut Swarm, kb: usize, now: &mut Instant) -> usize {
    let mut held = Vec::new();
    for rounds in 1..=10_000 {
        let moved = step(a, ka, b, kb, *now, &mut held);
        *now += Duration::from_millis(10);
        if !moved && rounds > 2 {
            return rounds;
        }
    }
    10_000
}

#[test]
fn peer_limits_bound_dials_and_accepts() {
    let meta = metainfo(&files());
    let dir = tempfile::tempdir().unwrap();
    let now = Instant::now();
    let limits = Limits {
        max_peers: 3,
        max_peers_per_torrent: 2,
        max_half_open: 1,
        ..Limits::default()
    };
    let mut rng = fastrand::Rng::with_seed(4);
    let mut s = Swarm::new(new_peer_id(&mut rng), limits, rng);
    s.start(&torrent(&meta, dir.path(), false), now).unwrap();
    let many: Vec<SocketAddr> = (1..=6).map(addr).collect();
    s.add_peers(1, &many, Source::Tracker);
    let Dial { key: k1, .. } = s.poll_dial(now).expect("a first dial");
    assert_eq!(s.poll_dial(now), None, "one half-open at a time");
    s.dialed(k1, true, now);
    let Dial { key: k2, .. } = s.poll_dial(now).expect("a second dial");
    s.dialed(k2, true, now);
    assert_eq!(s.poll_dial(now), None, "two peers per torrent");
    assert!(
        s.accept(addr(50), Transport::Tcp, now).is_some(),
        "a third peer in all"
    );
    assert_eq!(
        s.accept(addr(51), Transport::Tcp, now),
        None,
        "past three in all"
    );
}

#[test]
fn a_leecher_downloads_every_file_from_a_seeder_without_sockets() {
    let data = files();
    let meta = metainfo(&data);
    let mut now = Instant::now();
    let Pair {
        mut seeder,
        mut leecher,
        dirs: [_seed_dir, leech_dir],
    } = pair(Manners::default(), Manners::default(), now);

    leecher.add_peers(1, &[addr(1000)], Source::Tracker);
    let Dial {
        key: to_seeder,
        addr: to,
        ..
    } = leecher.poll_dial(now).unwrap();
    assert_eq!(to, addr(1000));
    assert_eq!(leecher.poll_dial(now), None, "one candidate only");
    leecher.dialed(to_seeder, true, now);
    let from_leecher = seeder.accept(addr(2000), Transport::Tcp, now).unwrap();
    pump(&mut leecher, to_seeder, &mut seeder, from_leecher, &mut now);

    let mut verified = Vec::new();
    while let Some(e) = leecher.poll_event() {
        if let SwarmEvent::PieceVerified { piece, .. } = e {
            verified.push(piece);
        }
    }
    verified.sort_unstable();
    assert_eq!(verified, (0..meta.pieces.len() as u32).collect::<Vec<_>>());
    assert!(leecher.is_complete(1));
    for (i, d) in data.iter().enumerate() {
        let got = std::fs::read(leech_dir.path().join("multi").join(format!("f{i}"))).unwrap();
        assert!(got == *d, "file {i} differs");
    }
    let st = leecher.stats(1, now).unwrap();
    assert_eq!(
        st.downloaded,
        data.iter().map(|d| d.len() as u64).sum::<u64>()
    );
    assert_eq!(st.left, 0);
    assert_eq!((st.peers, st.peers_from[Source::Tracker as usize]), (1, 1));
    let st = seeder.stats(1, now).unwrap();
    assert_eq!(st.uploaded, 150_004);
    assert_eq!(st.peers_from[Source::Incoming as usize], 1);
    // Two seeds have nothing to say to each other: the seeder closes.
    assert!(seeder.poll_close().is_some() || leecher.poll_close().is_some());
}

#[test]
fn a_peer_sending_corrupt_pieces_is_struck_then_banned() {
    let data = files();
    let meta = metainfo(&data);
    let mut bad = data.clone();
    bad[0][5] ^= 0xFF; // piece 0 is corrupt at this seeder
    let bad_dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(bad_dir.path().join("multi")).unwrap();
    for (i, d) in bad.iter().enumerate() {
        std::fs::write(bad_dir.path().join("multi").join(format!("f{i}")), d).unwrap();
    }
    let leech_dir = tempfile::tempdir().unwrap();
    let mut now = Instant::now();
    let mut leecher = swarm(3);
    leecher
        .start(&torrent(&meta, leech_dir.path(), false), now)
        .unwrap();
    // The liar believes its data good (its verified flags say so).
    let mut liar = swarm(10);
    liar.start(&torrent(&meta, bad_dir.path(), true), now)
        .unwrap();
    let k_leecher = leecher.accept(addr(3000), Transport::Tcp, now).unwrap();
    liar.add_peers(1, &[addr(4000)], Source::Tracker);
    let Dial { key: k_liar, .. } = liar.poll_dial(now).unwrap();
    liar.dialed(k_liar, true, now);
    pump(&mut liar, k_liar, &mut leecher, k_leecher, &mut now);
    // Piece 0 failed from it three times: banned, and closed.
    assert_eq!(leecher.poll_close(), Some(k_leecher));
    leecher.closed(k_leecher);
    assert!(
        leecher.accept(addr(3000), Transport::Tcp, now).is_none(),
        "banned"
    );
    assert!(!leecher.is_complete(1), "piece 0 never verified");
    let have = leecher.picker(1).unwrap().have_bitfield().count();
    assert_eq!(have, meta.pieces.len() - 1);

    // An honest seeder finishes the download.
    let good_dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(good_dir.path().join("multi")).unwrap();
    for (i, d) in data.iter().enumerate() {
        std::fs::write(good_dir.path().join("multi").join(format!("f{i}")), d).unwrap();
    }
    let mut honest = swarm(11);
    honest
        .start(&torrent(&meta, good_dir.path(), true), now)
        .unwrap();
    let k_leecher = leecher.accept(addr(5000), Transport::Tcp, now).unwrap();
    honest.add_peers(1, &[addr(4000)], Source::Tracker);
    let Dial { key: k_honest, .. } = honest.poll_dial(now).unwrap();
    honest.dialed(k_honest, true, now);
    pump(&mut honest, k_honest, &mut leecher, k_leecher, &mut now);
    assert!(leecher.is_complete(1));
    let got = std::fs::read(leech_dir.path().join("multi").join("f0")).unwrap();
    assert!(got == data[0]);
}

#[test]
fn peer_ids_are_azureus_style() {
    let id = new_peer_id(&mut fastrand::Rng::with_seed(1));
    assert!(id.starts_with(b"-TP0100-"));
    assert!(id[8..].iter().all(u8::is_ascii_alphanumeric));
}

/// A seeder and a leecher of [`files`], started, each following its
/// manners; the directories live as long as the pair.
struct Pair {
    seeder: Swarm,
    leecher: Swarm,
    /// The seeder's and the leecher's data directories.
    dirs: [tempfile::TempDir; 2],
}

fn pair(seeder_manners: Manners, leecher_manners: Manners, now: Instant) -> Pair {
    let data = files();
    let meta = metainfo(&data);
    let seed_dir = tempfile::tempdir().unwrap();
    let dir = seed_dir.path().join("multi");
    std::fs::create_dir_all(&dir).unwrap();
    for (i, d) in data.iter().enumerate() {
        std::fs::write(dir.join(format!("f{i}")), d).unwrap();
    }
    let leech_dir = tempfile::tempdir().unwrap();
    let mut seeder = with_manners(1, seeder_manners, now);
    let mut leecher = with_manners(2, leecher_manners, now);
    seeder
        .start(&torrent(&meta, seed_dir.path(), true), now)
        .unwrap();
    leecher
        .start(&torrent(&meta, leech_dir.path(), false), now)
        .unwrap();
    Pair {
        seeder,
        leecher,
        dirs: [seed_dir, leech_dir],
    }
}

fn with_manners(seed: u64, m: Manners, now: Instant) -> Swarm {
    let mut s = swarm(seed);
    s.set_manners(m, now);
    s
}

fn encryption(policy: Policy) -> Manners {
    Manners {
        encryption: policy,
        ..Manners::default()
    }
}

/// The leecher dials the seeder: (leecher's key, seeder's key).
fn dial(leecher: &mut Swarm, seeder: &mut Swarm, now: Instant) -> (usize, usize) {
    leecher.add_peers(1, &[addr(1000)], Source::Tracker);
    let Dial { key: k, .. } = leecher.poll_dial(now).expect("a dial");
    leecher.dialed(k, true, now);
    (
        k,
        seeder
            .accept(addr(2000), Transport::Tcp, now)
            .expect("accepted"),
    )
}

/// Like [`pump`], but runs until `done` (or a bound of simulated
/// minutes): waiting for tokens moves nothing for a while.
fn pump_until(
    a: &mut Swarm,
    ka: usize,
    b: &mut Swarm,
    kb: usize,
    now: &mut Instant,
    done: impl Fn(&Swarm, &Swarm) -> bool,
) {
    let mut held = Vec::new();
    for _ in 0..100_000 {
        step(a, ka, b, kb, *now, &mut held);
        if done(a, b) {
            return;
        }
        *now += Duration::from_millis(10);
    }
    panic!("not done after 1000 simulated seconds");
}

#[test]
fn every_encryption_pair_connects_except_plaintext_dialling_required() {
    use Policy::{Preferred, Required, Tolerated};
    for dialer in [Required, Preferred, Tolerated] {
        for listener in [Required, Preferred, Tolerated] {
            let mut now = Instant::now();
            let mut p = pair(encryption(listener), encryption(dialer), now);
            let (kl, ks) = dial(&mut p.leecher, &mut p.seeder, now);
            pump(&mut p.leecher, kl, &mut p.seeder, ks, &mut now);
            let name = format!("{dialer:?} dialling {listener:?}");
            if (dialer, listener) == (Tolerated, Required) {
                assert_eq!(p.seeder.poll_close(), Some(ks), "{name}: refused");
                assert!(!p.leecher.is_complete(1), "{name}");
                continue;
            }
            assert!(p.leecher.is_complete(1), "{name}: downloads");
            // Plaintext when the dialer does not offer RC4 first, or the
            // listener prefers plaintext among what was offered.
            let encrypted = dialer != Tolerated && (dialer, listener) != (Preferred, Tolerated);
            assert_eq!(p.leecher.peers[kl].link.is_encrypted(), encrypted, "{name}");
            assert_eq!(p.seeder.peers[ks].link.is_encrypted(), encrypted, "{name}");
        }
    }
}

#[test]
fn a_peer_dropping_our_encrypted_handshake_is_dialled_again_in_plaintext() {
    let mut now = Instant::now();
    let mut p = pair(
        encryption(Policy::Tolerated),
        encryption(Policy::Preferred),
        now,
    );
    let leecher = &mut p.leecher;
    leecher.add_peers(1, &[addr(1000)], Source::Tracker);
    let Dial { key: k, .. } = leecher.poll_dial(now).unwrap();
    leecher.dialed(k, true, now);
    // A client without MSE reads no BitTorrent handshake and hangs up.
    let first = leecher.output(k).to_vec();
    assert_eq!(mse::is_plain_handshake(&first), Some(false));
    leecher.hang_up(k);
    while let Some(k) = leecher.poll_close() {
        leecher.closed(k);
    }
    let Dial {
        key: k, addr: to, ..
    } = leecher.poll_dial(now).expect("dialled again");
    assert_eq!(to, addr(1000));
    leecher.dialed(k, true, now);
    assert_eq!(mse::is_plain_handshake(leecher.output(k)), Some(true));
    let ks = p.seeder.accept(addr(2000), Transport::Tcp, now).unwrap();
    pump(&mut p.leecher, k, &mut p.seeder, ks, &mut now);
    assert!(p.leecher.is_complete(1));
    assert!(!p.leecher.peers[k].link.is_encrypted());
}

#[test]
fn a_connection_refused_outright_is_not_retried_in_plaintext() {
    let now = Instant::now();
    let mut p = pair(Manners::default(), encryption(Policy::Preferred), now);
    let leecher = &mut p.leecher;
    leecher.add_peers(1, &[addr(1000)], Source::Tracker);
    let Dial { key: k, .. } = leecher.poll_dial(now).unwrap();
    leecher.dialed(k, false, now);
    while let Some(k) = leecher.poll_close() {
        leecher.closed(k);
    }
    assert_eq!(leecher.poll_dial(now), None);
}

/// Simulated time for the leecher to finish with the given manners.
fn transfer_time(seeder_manners: Manners, leecher_manners: Manners) -> Duration {
    let start = Instant::now();
    let mut now = start;
    let mut p = pair(seeder_manners, leecher_manners, now);
    let (kl, ks) = dial(&mut p.leecher, &mut p.seeder, now);
    pump_until(&mut p.seeder, ks, &mut p.leecher, kl, &mut now, |_, l| {
        l.is_complete(1)
    });
    now - start
}

#[test]
fn limits_hold_the_transfer_to_their_rate() {
    let total = files().iter().map(|d| d.len() as f64).sum::<f64>();
    let rate = 32 << 10;
    let limited = |up: bool| Manners {
        upload_limit: up.then_some(rate),
        download_limit: (!up).then_some(rate),
        ..Manners::default()
    };
    let free = transfer_time(Manners::default(), Manners::default());
    // The bucket starts with one block: the rest comes at the rate (the
    // download side also counts the messages' framing).
    let block = crate::engine::bandwidth::BLOCK as f64;
    let least = (total - block) / rate as f64;
    for (what, t) in [
        ("upload", transfer_time(limited(true), Manners::default())),
        (
            "download",
            transfer_time(Manners::default(), limited(false)),
        ),
    ] {
        let secs = t.as_secs_f64();
        assert!(secs >= least, "{what}: {secs} s, at least {least} s");
        assert!(
            secs <= least * 1.1 + 0.2,
            "{what}: {secs} s, about {least} s"
        );
        assert!(t > free * 10, "{what}: {t:?} against {free:?} unlimited");
    }
}

#[test]
fn a_limit_lifted_mid_transfer_takes_effect_at_once() {
    let mut now = Instant::now();
    let slow = Manners {
        upload_limit: Some(1024),
        ..Manners::default()
    };
    let mut p = pair(slow, Manners::default(), now);
    let (kl, ks) = dial(&mut p.leecher, &mut p.seeder, now);
    pump_until(&mut p.seeder, ks, &mut p.leecher, kl, &mut now, |_, l| {
        l.stats(1, Instant::now()).is_some_and(|s| s.downloaded > 0)
    });
    let lifted = now;
    p.seeder.set_manners(Manners::default(), now);
    pump_until(&mut p.seeder, ks, &mut p.leecher, kl, &mut now, |_, l| {
        l.is_complete(1)
    });
    assert!(now - lifted < Duration::from_secs(1), "{:?}", now - lifted);
}

#[test]
fn an_mse_handshake_for_one_torrent_cannot_open_another() {
    let now = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let a = metainfo(&files());
    let mut other = files();
    other[0][0] ^= 1;
    let b = metainfo(&other);
    let mut seeder = swarm(1);
    seeder.start(&torrent(&a, dir.path(), true), now).unwrap();
    let mut tb = torrent(&b, dir.path(), true);
    tb.id = 2;
    seeder.start(&tb, now).unwrap();

    // The encrypted request names torrent A; the BitTorrent handshake
    // inside it names B.
    let run = |named: [u8; 20], seeder: &mut Swarm, port: u16| {
        let mut hs = Vec::new();
        crate::peer::wire::write_handshake(
            &mut hs,
            &Handshake {
                reserved: [0; 8],
                info_hash: named,
                peer_id: [7; 20],
            },
        );
        let mut rng = fastrand::Rng::with_seed(3);
        let mut i =
            mse::Initiator::new(a.info_hash, Policy::Preferred, mse_secrets(&mut rng), hs).unwrap();
        let key = seeder.accept(addr(port), Transport::Tcp, now).unwrap();
        for _ in 0..10 {
            while let Some(out) = i.poll_output() {
                seeder.receive(key, &out, now);
            }
            let back = seeder.output(key).to_vec();
            seeder.consume_output(key, back.len(), now);
            if !back.is_empty() && i.handle_input(&back).is_err() {
                break;
            }
        }
        key
    };
    let key = run(b.info_hash, &mut seeder, 7000);
    assert_eq!(seeder.poll_close(), Some(key), "closed: wrong torrent");
    // The same handshake naming A is served.
    let key = run(a.info_hash, &mut seeder, 7001);
    assert_eq!(seeder.poll_close(), None);
    assert!(seeder.peers[key].link.is_encrypted());
}

/// A torrent known by its info hash alone: as `torrent` made it before its
/// metadata arrived.
fn pending(meta: &Metainfo, dir: &Path) -> Torrent {
    Torrent {
        meta: None,
        phase: Phase::FetchingMetadata,
        verified: Vec::new(),
        ..torrent(meta, dir, false)
    }
}

#[test]
fn a_session_without_metadata_greets_peers_then_gains_geometry_and_downloads() {
    let data = files();
    let meta = metainfo(&data);
    let mut now = Instant::now();
    let Pair {
        mut seeder,
        mut leecher,
        dirs: [_seed_dir, leech_dir],
    } = pair(Manners::default(), Manners::default(), now);
    // The leecher knows the torrent by its info hash alone.
    leecher.stop(1);
    leecher
        .start(&pending(&meta, leech_dir.path()), now)
        .unwrap();
    assert_eq!(leecher.stage(1), Some(Stage::Fetching));
    leecher.add_peers(1, &[addr(1000)], Source::Tracker);
    let Dial { key: k, .. } = leecher.poll_dial(now).unwrap();
    leecher.dialed(k, true, now);
    let from = seeder.accept(addr(2000), Transport::Tcp, now).unwrap();
    pump(&mut leecher, k, &mut seeder, from, &mut now);
    // Handshakes done, the seeder's bitfield held: nothing requested.
    assert_eq!(leecher.stats(1, now).unwrap().peers, 1);
    assert_eq!(leecher.stats(1, now).unwrap().downloaded, 0);
    assert!(leecher.picker(1).is_none());

    // The metadata arrives: the geometry first (the data being checked),
    // then the pieces once the check found nothing.
    let checking = Torrent {
        phase: Phase::Checking,
        verified: vec![false; meta.pieces.len()],
        ..torrent(&meta, leech_dir.path(), false)
    };
    assert!(leecher.set_geometry(&checking, now));
    assert_eq!(leecher.stage(1), Some(Stage::Checking));
    assert_eq!(leecher.stats(1, now).unwrap().peers, 1, "the peer stays");
    assert!(leecher.set_pieces(&torrent(&meta, leech_dir.path(), false), now));
    assert_eq!(leecher.stage(1), Some(Stage::Moving));
    pump(&mut leecher, k, &mut seeder, from, &mut now);
    assert!(leecher.is_complete(1));
    for (i, d) in data.iter().enumerate() {
        let got = std::fs::read(leech_dir.path().join("multi").join(format!("f{i}"))).unwrap();
        assert!(got == *d, "file {i} differs");
    }
}

#[test]
fn a_peer_whose_early_bitfield_does_not_fit_the_geometry_is_closed() {
    let data = files();
    let meta = metainfo(&data);
    let now = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut s = swarm(9);
    s.start(&pending(&meta, dir.path()), now).unwrap();
    let k = s.accept(addr(3000), Transport::Tcp, now).unwrap();
    let mut bytes = Vec::new();
    crate::peer::wire::write_handshake(
        &mut bytes,
        &Handshake {
            reserved: [0; 8],
            info_hash: meta.info_hash,
            peer_id: [7; 20],
        },
    );
    // Five pieces: one byte of bitfield would do; two is a lie.
    crate::peer::wire::write_message(&mut bytes, &Message::Bitfield(&[0xff, 0xff]));
    s.receive(k, &bytes, now);
    assert_eq!(s.poll_close(), None, "unknown geometry: held, not judged");
    let checking = Torrent {
        phase: Phase::Checking,
        verified: vec![false; meta.pieces.len()],
        ..torrent(&meta, dir.path(), false)
    };
    assert!(s.set_geometry(&checking, now));
    assert_eq!(s.poll_close(), Some(k));
}

#[test]
fn a_magnets_session_fetches_the_metadata_from_its_peer_and_the_seeder_serves_it() {
    let data = files();
    let meta = metainfo(&data);
    let mut now = Instant::now();
    let Pair {
        mut seeder,
        mut leecher,
        dirs: [_seed_dir, leech_dir],
    } = pair(Manners::default(), Manners::default(), now);
    leecher.stop(1);
    leecher
        .start(&pending(&meta, leech_dir.path()), now)
        .unwrap();
    leecher.add_peers(1, &[addr(1000)], Source::Tracker);
    let Dial { key: k, .. } = leecher.poll_dial(now).unwrap();
    leecher.dialed(k, true, now);
    let from = seeder.accept(addr(2000), Transport::Tcp, now).unwrap();
    pump(&mut leecher, k, &mut seeder, from, &mut now);
    let fetched: Vec<Vec<u8>> = std::iter::from_fn(|| leecher.poll_event())
        .filter_map(|e| match e {
            SwarmEvent::MetadataFetched { info, .. } => Some(info),
            _ => None,
        })
        .collect();
    assert_eq!(
        fetched,
        vec![meta.info.to_vec()],
        "the info dictionary, once"
    );
    let st = leecher.stats(1, now).unwrap();
    assert_eq!(st.metadata_percent, 100);
    assert_eq!(st.downloaded, 0);
}
