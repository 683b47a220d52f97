//! Real byte streams between real sans-IO peers: swarms transferring the
//! fuzz torrent in plaintext (either side dialling, with speed limits,
//! between two partial peers, and peer exchange among three), and MSE
//! handshakes with fixed secrets carrying such a stream encrypted. Each
//! test checks its transfer. With `TRIPCD_CAPTURE_DIR` set, each also
//! writes what every side received, round by round, as seeds of the
//! `wire` and `mse` fuzz targets (`fuzz/run` does this; the seed format
//! and the setup shared with the targets are in `fuzz/common/setup.rs`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Instant;

use tripcd::peer::mse::{Established, Initiator, Policy, Responder, Secrets};
use tripcd::peer::pex::{PexMessage, OUR_UT_PEX_ID};
use tripcd::peer::wire::{parse_handshake, split_message, Message, HANDSHAKE_LEN, MAX_MESSAGE_LEN};
use tripcd::registry::Metainfo;
use tripcd::swarm::{Swarm, Transport};

// The capture uses the part of the shared code that makes seeds.
#[allow(dead_code)]
#[path = "../fuzz/common/setup.rs"]
mod setup;

use setup::{mode, INITIATOR_KEY as XA, RESPONDER_KEY as XB};

/// Where seeds go, if anywhere: `$TRIPCD_CAPTURE_DIR/<target>/`.
fn capture_dir(target: &str) -> Option<PathBuf> {
    let dir = Path::new(&std::env::var_os("TRIPCD_CAPTURE_DIR")?).join(target);
    std::fs::create_dir_all(&dir).expect("capture directory");
    Some(dir)
}

/// Writes a seed for `target` named `name`, if capturing.
fn seed(target: &str, name: &str, bytes: &[u8]) {
    if let Some(dir) = capture_dir(target) {
        std::fs::write(dir.join(name), bytes).expect("seed written");
    }
}

/// What one dialler and the acceptor received from each other, one
/// chunk per round (maybe empty).
#[derive(Default, Clone)]
struct Recorded {
    to_acceptor: Vec<Vec<u8>>,
    to_dialer: Vec<Vec<u8>>,
}

/// A swarm with its own copy of the data.
struct Side {
    swarm: Swarm,
    control: u8,
    _dir: tempfile::TempDir,
}

fn side(rng: u64, control: u8, meta: &Metainfo, now: Instant) -> Side {
    let dir = tempfile::tempdir().unwrap();
    // Every side has the bytes; what it has verified is the control's.
    setup::write_files(dir.path());
    Side {
        swarm: setup::swarm(rng, control, meta, dir.path(), now),
        control,
        _dir: dir,
    }
}

/// The acceptor and its diallers (the `i`th connects from
/// `setup::dialer_addr(i)`), pumped in rounds as the fuzz targets replay
/// them: each dialler's output to the acceptor, the acceptor's answer,
/// then every side's timers and closes. Until every side has the whole
/// torrent and a few rounds more, or a connection closes.
fn run(acceptor: u8, dialers: &[u8]) -> (Vec<Recorded>, Side, Vec<Side>) {
    let acceptor = acceptor & !3 | mode::SWARM_IN;
    let meta = setup::metainfo();
    let mut now = Instant::now();
    let mut a = side(setup::ACCEPTOR_RNG, acceptor, &meta, now);
    let mut ds: Vec<Side> = dialers
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let c = c & !3 | mode::SWARM_OUT;
            side(setup::ACCEPTOR_RNG + 1 + i as u64, c, &meta, now)
        })
        .collect();
    let mut keys = Vec::new();
    for (i, d) in ds.iter_mut().enumerate() {
        let kd = setup::dial(&mut d.swarm, now);
        let ka = a
            .swarm
            .accept(setup::dialer_addr(i as u8), Transport::Tcp, now)
            .unwrap();
        keys.push((kd, ka));
    }
    let mut rec = vec![Recorded::default(); ds.len()];
    let mut held = vec![(Vec::new(), Vec::new()); ds.len()];
    let mut after = 0;
    for _ in 0..250 {
        for (i, d) in ds.iter_mut().enumerate() {
            let (kd, ka) = keys[i];
            let (to_a, to_d) = &mut held[i];
            let ab = setup::take_output(&mut d.swarm, kd, now);
            setup::feed(&mut a.swarm, ka, to_a, &ab, now);
            let ba = setup::take_output(&mut a.swarm, ka, now);
            setup::feed(&mut d.swarm, kd, to_d, &ba, now);
            rec[i].to_acceptor.push(ab);
            rec[i].to_dialer.push(ba);
        }
        let mut closed = false;
        for d in &mut ds {
            closed |= !setup::end_round(&mut d.swarm, now).is_empty();
        }
        closed |= !setup::end_round(&mut a.swarm, now).is_empty();
        now += setup::STEP;
        if closed {
            break;
        }
        let all = a.swarm.is_complete(1) && ds.iter().all(|d| d.swarm.is_complete(1));
        if all {
            after += 1;
            if after > 3 {
                break;
            }
        }
    }
    (rec, a, ds)
}

/// The messages of a stream after its handshake, which names the torrent.
fn messages(all: &[u8]) -> Vec<Message<'_>> {
    let h = parse_handshake(all).unwrap().expect("a handshake first");
    assert_eq!(h.info_hash, setup::metainfo().info_hash);
    let mut rest = &all[HANDSHAKE_LEN..];
    let mut out = Vec::new();
    while let Some((m, used)) = split_message(rest, MAX_MESSAGE_LEN).unwrap() {
        out.push(m);
        rest = &rest[used..];
    }
    assert!(rest.is_empty(), "whole messages only");
    out
}

fn pieces_in(msgs: &[Message<'_>]) -> u64 {
    msgs.iter()
        .map(|m| match m {
            Message::Piece { data, .. } => data.len() as u64,
            _ => 0,
        })
        .sum()
}

/// A fresh swarm set up as `side` and fed what `side` received, as the
/// wire target feeds it, sends what `side` sent, round for round, and
/// ends as complete: the seed replays exactly.
fn assert_replays(side: &Side, received: &[Vec<u8>], sent: &[Vec<u8>]) {
    let dir = tempfile::tempdir().unwrap();
    setup::write_files(dir.path());
    let pieces: Vec<&[u8]> = received.iter().map(Vec::as_slice).collect();
    let meta = setup::metainfo();
    let (s, _, again) = setup::replay(side.control, &pieces, &meta, dir.path(), Instant::now());
    assert!(again == sent[..again.len()], "the replay sends the same");
    assert_eq!(s.is_complete(1), side.swarm.is_complete(1));
}

/// Seeds of the wire target from one dialler's recording: each side's
/// input through a swarm (replayed exactly), and through a bare
/// connection with a few owner behaviours.
fn wire_seeds(name: &str, acceptor: u8, dialer: u8, r: &Recorded) {
    let swarm_in = acceptor & !3 | mode::SWARM_IN;
    let swarm_out = dialer & !3 | mode::SWARM_OUT;
    seed(
        "wire",
        &format!("{name}-swarm-in"),
        &setup::encode(&[swarm_in], &r.to_acceptor),
    );
    seed(
        "wire",
        &format!("{name}-swarm-out"),
        &setup::encode(&[swarm_out], &r.to_dialer),
    );
    for owner in [0x30u8, 0xF0] {
        let bare_in = (acceptor & 0x0C) | owner | mode::BARE_IN;
        let bare_out = (dialer & 0x0C) | owner | mode::BARE_OUT;
        seed(
            "wire",
            &format!("{name}-bare-in-{owner:02x}"),
            &setup::encode(&[bare_in], &r.to_acceptor),
        );
        seed(
            "wire",
            &format!("{name}-bare-out-{owner:02x}"),
            &setup::encode(&[bare_out], &r.to_dialer),
        );
    }
}

const ALL: u8 = 1 << 2;
const EVEN: u8 = 2 << 2;
const ODD: u8 = 3 << 2;
const TOLERATED: u8 = 2 << 4;
const PEX: u8 = 0x40;
const LIMITS: u8 = 0x80;

/// The torrent's size.
fn total() -> u64 {
    setup::metainfo().total_size()
}

#[test]
fn a_leecher_dialling_a_seeder_gets_everything_in_plaintext() {
    let (rec, seeder, leechers) = run(ALL | PEX, &[PEX]);
    assert!(leechers[0].swarm.is_complete(1));
    let st = leechers[0].swarm.stats(1, Instant::now()).unwrap();
    assert_eq!(st.downloaded, total());
    let to_leecher = rec[0].to_dialer.concat();
    let to_leecher = messages(&to_leecher);
    // Both speak the fast extension: a seed says have_all (BEP 6).
    assert!(
        matches!(to_leecher[0], Message::HaveAll),
        "{:?}",
        to_leecher[0]
    );
    assert_eq!(pieces_in(&to_leecher), total(), "each block once");
    let to_seeder = rec[0].to_acceptor.concat();
    let to_seeder = messages(&to_seeder);
    assert!(to_seeder.iter().any(|m| matches!(m, Message::Request(_))));
    assert!(to_seeder.iter().any(|m| matches!(m, Message::Have(_))));
    assert!(to_seeder
        .iter()
        .any(|m| matches!(m, Message::Extended { id: 0, .. })));
    wire_seeds(
        "leecher-dials-seeder",
        seeder.control,
        leechers[0].control,
        &rec[0],
    );
}

#[test]
fn a_seeder_dialling_a_leecher_serves_it() {
    let (rec, leecher, seeders) = run(PEX, &[ALL | PEX]);
    assert!(leecher.swarm.is_complete(1));
    assert_eq!(pieces_in(&messages(&rec[0].to_acceptor.concat())), total());
    wire_seeds(
        "seeder-dials-leecher",
        leecher.control,
        seeders[0].control,
        &rec[0],
    );
}

#[test]
fn under_speed_limits_the_transfer_still_completes() {
    let (rec, seeder, leechers) = run(ALL | LIMITS, &[LIMITS]);
    assert!(leechers[0].swarm.is_complete(1));
    // At 100 KiB/s, 21 KB take rounds: the stream came in pieces.
    let busy = rec[0].to_dialer.iter().filter(|c| !c.is_empty()).count();
    assert!(busy > 2, "{busy} chunks");
    assert_replays(&leechers[0], &rec[0].to_dialer, &rec[0].to_acceptor);
    wire_seeds("limited", seeder.control, leechers[0].control, &rec[0]);
}

#[test]
fn two_partial_peers_complete_each_other() {
    let (rec, a, ds) = run(EVEN | TOLERATED, &[ODD]);
    assert!(a.swarm.is_complete(1) && ds[0].swarm.is_complete(1));
    // Each sent the other the piece it lacked: piece 1 (odd) to the
    // acceptor, piece 0 (even) to the dialler.
    let shape = setup::shape(&setup::metainfo());
    let to_a = pieces_in(&messages(&rec[0].to_acceptor.concat()));
    let to_d = pieces_in(&messages(&rec[0].to_dialer.concat()));
    assert_eq!((to_a, to_d), (shape.piece_size(1), shape.piece_size(0)));
    assert_replays(&a, &rec[0].to_acceptor, &rec[0].to_dialer);
    assert_replays(&ds[0], &rec[0].to_dialer, &rec[0].to_acceptor);
    wire_seeds("partial", a.control, ds[0].control, &rec[0]);
}

#[test]
fn peer_exchange_tells_one_leecher_of_the_other() {
    let (rec, seeder, leechers) = run(ALL | PEX, &[PEX, PEX]);
    assert!(leechers.iter().all(|l| l.swarm.is_complete(1)));
    let other = SocketAddr::new(setup::dialer_addr(1).ip(), setup::LISTEN_PORT);
    let to_first = rec[0].to_dialer.concat();
    let told = messages(&to_first).iter().any(|m| match m {
        Message::Extended { id, payload } if *id == OUR_UT_PEX_ID => PexMessage::parse(payload)
            .unwrap()
            .added
            .iter()
            .any(|(a, _)| *a == other),
        _ => false,
    });
    assert!(told, "the seeder named the second leecher to the first");
    // Only the first leecher's rounds replay exactly (the fuzz target
    // dials as it); the seeder's input from both is a seed all the same.
    assert_replays(&leechers[0], &rec[0].to_dialer, &rec[0].to_acceptor);
    wire_seeds("pex-0", seeder.control, leechers[0].control, &rec[0]);
    let r1 = &rec[1];
    let swarm_in = seeder.control & !3 | mode::SWARM_IN;
    seed(
        "wire",
        "pex-1-swarm-in",
        &setup::encode(&[swarm_in], &r1.to_acceptor),
    );
}

/// Runs an MSE handshake to its end, each flight delivered whole:
/// (to the responder, to the initiator, the initiator's result, the
/// responder's).
fn handshake(
    i: &mut Initiator,
    r: &mut Responder,
    ih: [u8; 20],
) -> (Vec<Vec<u8>>, Vec<Vec<u8>>, Established, Established) {
    let lookup = |h: &[u8; 20]| (tripcd::peer::mse::req2_hash(&ih) == *h).then_some(ih);
    let (mut to_r, mut to_i) = (Vec::new(), Vec::new());
    for _ in 0..4 {
        while let Some(o) = i.poll_output() {
            r.handle_input(&o, lookup).unwrap();
            to_r.push(o);
        }
        while let Some(o) = r.poll_output() {
            i.handle_input(&o).unwrap();
            to_i.push(o);
        }
    }
    let (a, b) = (
        i.poll_done().expect("initiator done"),
        r.poll_done().expect("responder done"),
    );
    (to_r, to_i, a, b)
}

#[test]
fn mse_handshakes_carry_a_real_transfer_encrypted() {
    use Policy::{Preferred, Required, Tolerated};
    let ih = setup::metainfo().info_hash;
    let (rec, _, _) = run(ALL | PEX, &[PEX]);
    let plain_ab = rec[0].to_acceptor.clone();
    let plain_ba = rec[0].to_dialer.clone();
    let bt_handshake = plain_ab[0][..HANDSHAKE_LEN].to_vec();
    let pairs = [
        (Required, Required, true),
        (Preferred, Preferred, true),
        (Preferred, Tolerated, false),
        (Tolerated, Preferred, true),
        (Tolerated, Tolerated, false),
        (Preferred, Required, true),
    ];
    for (n, (ip, rp, rc4)) in pairs.into_iter().enumerate() {
        for with_ia in [false, true] {
            let ia = if with_ia {
                bt_handshake.clone()
            } else {
                Vec::new()
            };
            let secrets = |key, len| Secrets {
                private_key: key,
                pad: setup::pad(len),
            };
            let mut i = Initiator::new(ih, ip, secrets(XA, 40 + n), ia.clone()).unwrap();
            let mut r = Responder::new(rp, secrets(XB, 50 + n)).unwrap();
            let (mut to_r, mut to_i, mut ei, mut er) = handshake(&mut i, &mut r, ih);
            let name = format!("{ip:?}-{rp:?}{}", if with_ia { "-ia" } else { "" });
            assert_eq!(ei.cipher.is_some(), rc4, "{name}");
            assert_eq!(er.cipher.is_some(), rc4, "{name}");
            assert_eq!((ei.info_hash, er.info_hash), (ih, ih));
            assert_eq!(er.initial_payload, ia, "{name}: the IA arrives");
            // The transfer's plaintext, as the link would send it.
            let mut skip = ia.len();
            let mut got = er.initial_payload.clone();
            for c in &plain_ab {
                let cut = skip.min(c.len());
                skip -= cut;
                let mut c = c[cut..].to_vec();
                if let Some(x) = &mut ei.cipher {
                    x.encrypt(&mut c);
                }
                let mut back = c.clone();
                if let Some(x) = &mut er.cipher {
                    x.decrypt(&mut back);
                }
                got.extend_from_slice(&back);
                to_r.push(c);
            }
            assert!(
                got == plain_ab.concat(),
                "{name}: the responder reads the stream"
            );
            for c in &plain_ba {
                let mut c = c.clone();
                if let Some(x) = &mut er.cipher {
                    x.encrypt(&mut c);
                }
                to_i.push(c);
            }
            let flags_r = setup::mse_flags(false, rp, false, 3);
            let flags_i = setup::mse_flags(true, ip, n % 2 == 1, 2);
            // The responder serves (it has all, unchokes); the
            // initiator asks for every block.
            let head = |flags, bare| [flags, bare];
            let bare_r = ALL | 0x10;
            let bare_i = 0x30;
            seed(
                "mse",
                &format!("respond-{name}"),
                &setup::encode(&head(flags_r, bare_r), &to_r),
            );
            if !with_ia {
                seed(
                    "mse",
                    &format!("initiate-{name}"),
                    &setup::encode(&head(flags_i, bare_i), &to_i),
                );
            }
        }
    }
}
