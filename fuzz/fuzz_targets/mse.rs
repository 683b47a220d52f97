//! Bytes from a hostile peer, cut into pieces at points the input
//! chooses, into the MSE/PE handshake: a `Responder` (the peer dialled
//! us) or an `Initiator` (we dialled), under every policy, with fixed
//! secrets so that a seed replays. Once the handshake is done, the rest
//! goes through the established cipher into a bare `PeerConn` (see
//! `common/peer.rs`), as the swarm's link does. Never a panic; errors
//! are answers, and stay answers.
//!
//! Input: flags and the bare connection's control byte
//! (`setup::MSE_HEAD`), then the cuts and the stream (`setup::decode`).
//! The torrent is the capture's, the keys `setup::INITIATOR_KEY` and
//! `setup::RESPONDER_KEY`. Seeds come from `tests/capture.rs`.
#![no_main]

use std::cell::RefCell;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use tripcd::peer::mse::{
    req2_hash, Established, Initiator, MseError, Policy, Responder, Secrets, DH_LEN, MAX_IA,
};

#[allow(dead_code)]
#[path = "../common/setup.rs"]
mod setup;

#[allow(dead_code)]
#[path = "../common/peer.rs"]
mod peer;

thread_local! {
    static TORRENT: RefCell<peer::Torrent> = RefCell::new({
        let meta = setup::metainfo();
        peer::Torrent {
            info_hash: meta.info_hash,
            shape: setup::shape(&meta),
            data: setup::files().concat(),
        }
    });
}

/// Either role, behind one face.
enum Side {
    Respond(Box<Responder>),
    Initiate(Box<Initiator>),
}

impl Side {
    fn input(&mut self, bytes: &[u8], ih: [u8; 20]) -> Result<(), MseError> {
        match self {
            Side::Respond(r) => r.handle_input(bytes, |h| (req2_hash(&ih) == *h).then_some(ih)),
            Side::Initiate(i) => i.handle_input(bytes),
        }
    }

    fn output(&mut self) -> Option<Vec<u8>> {
        match self {
            Side::Respond(r) => r.poll_output(),
            Side::Initiate(i) => i.poll_output(),
        }
    }

    fn done(&mut self) -> Option<Established> {
        match self {
            Side::Respond(r) => r.poll_done(),
            Side::Initiate(i) => i.poll_done(),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((head, pieces)) = setup::decode(data, setup::MSE_HEAD) else {
        return;
    };
    let (flags, bare_control) = (head[0], head[1]);
    let initiate = flags & 1 != 0;
    let key = if initiate {
        setup::INITIATOR_KEY
    } else {
        setup::RESPONDER_KEY
    };
    let policy = setup::mse_policy(flags);
    let lazy = flags & 8 != 0;
    let pad = setup::pad(usize::from(flags >> 4) * 32);
    let secrets = Secrets {
        private_key: key,
        pad: pad.clone(),
    };
    let ih = TORRENT.with(|t| t.borrow().info_hash);
    let side = if initiate {
        Initiator::new(ih, policy, secrets, Vec::new()).map(|i| Side::Initiate(Box::new(i)))
    } else {
        Responder::new(policy, secrets).map(|r| Side::Respond(Box::new(r)))
    };
    let mut side = side.expect("our secrets are fine");
    TORRENT.with(|t| {
        let t = &*t.borrow();
        run(
            t,
            &mut side,
            &pieces,
            ih,
            initiate,
            policy,
            lazy,
            &pad,
            bare_control,
        );
    });
});

#[allow(clippy::too_many_arguments)]
fn run(
    t: &peer::Torrent,
    side: &mut Side,
    pieces: &[&[u8]],
    ih: [u8; 20],
    initiate: bool,
    policy: Policy,
    lazy: bool,
    pad: &[u8],
    bare_control: u8,
) {
    // Our flights: Ya or Yb with our pad first, then one fixed-size
    // message (step 3 with no PadC or IA: 56 bytes; step 4 with no
    // PadD: 14 bytes).
    let mut flights = 0;
    let mut check_flights = |side: &mut Side| {
        while let Some(o) = side.output() {
            flights += 1;
            match flights {
                1 => {
                    assert_eq!(o.len(), DH_LEN + pad.len());
                    assert_eq!(&o[DH_LEN..], pad);
                }
                2 => assert_eq!(o.len(), if initiate { 56 } else { 14 }),
                n => panic!("flight {n}"),
            }
        }
    };
    check_flights(side);
    let mut open: Option<(Option<tripcd::peer::mse::Cipher>, peer::Bare<'_>)> = None;
    for (i, p) in pieces.iter().enumerate() {
        if let Some((cipher, bare)) = &mut open {
            let mut plain = p.to_vec();
            if let Some(c) = cipher {
                c.decrypt(&mut plain);
            }
            let Some(mut out) = bare.round(&plain) else {
                break;
            };
            if let Some(c) = cipher {
                c.encrypt(&mut out);
            }
            continue;
        }
        if let Err(e) = side.input(p, ih) {
            assert_eq!(side.input(b"more", ih), Err(e), "dead, with the same error");
            assert_eq!(side.output(), None, "and nothing to send");
            return;
        }
        check_flights(side);
        if lazy && i % 2 == 0 {
            // Input before `poll_done` is payload, kept for it.
            continue;
        }
        let Some(e) = side.done() else {
            continue;
        };
        assert_eq!(e.info_hash, ih, "the torrent we know or dialled for");
        if policy == Policy::Required {
            assert!(e.cipher.is_some(), "required means RC4");
        }
        if initiate {
            assert!(e.initial_payload.is_empty(), "the initiator receives no IA");
        } else {
            assert!(e.initial_payload.len() <= MAX_IA);
        }
        assert_eq!(side.input(b"", ih), Err(MseError::Finished));
        let mut bare = peer::Bare::new(t, initiate, bare_control, Instant::now());
        let mut first = e.initial_payload;
        first.extend_from_slice(&e.remainder);
        let mut cipher = e.cipher;
        let alive = bare.round(&first).map(|mut out| {
            if let Some(c) = &mut cipher {
                c.encrypt(&mut out);
            }
        });
        open = Some((cipher, bare));
        if alive.is_none() {
            break;
        }
    }
    if let Some((_, bare)) = open {
        bare.finish();
    }
}
