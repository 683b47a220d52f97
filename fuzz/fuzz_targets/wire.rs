//! Bytes from a hostile peer, cut into pieces at points the input
//! chooses, into one peer connection: through a real sans-IO swarm (the
//! server's core: link, connection, session, picker, storage, choker,
//! peer exchange), accepting or dialling, or into a bare `PeerConn`
//! driven as the swarm drives it. It must never panic; a bare
//! connection must buffer no more than its bounds and agree with the
//! codec on every message; what we send must be well-formed and true.
//!
//! Input: a control byte (see `common/setup.rs`: bits 0-1 the mode),
//! then the cuts and the stream (`setup::decode`). Seeds come from
//! `tests/capture.rs`, which records two real swarms talking.
#![no_main]

use std::cell::RefCell;
use std::path::PathBuf;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use tripcd::peer::mse::{is_plain_handshake, DH_LEN};
use tripcd::registry::Metainfo;

// Each target uses part of the shared code.
#[allow(dead_code)]
#[path = "../common/setup.rs"]
mod setup;

#[allow(dead_code)]
#[path = "../common/peer.rs"]
mod peer;

use setup::mode;

/// Built once: the torrent, and its data on tmpfs where there is one
/// (every swarm serves from it; a leecher's verified pieces are written
/// back over it with the same bytes).
struct World {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    meta: Metainfo,
    torrent: peer::Torrent,
}

thread_local! {
    static WORLD: RefCell<World> = RefCell::new({
        let dir = tempfile::tempdir_in("/dev/shm").or_else(|_| tempfile::tempdir()).unwrap();
        setup::write_files(dir.path());
        let meta = setup::metainfo();
        let torrent = peer::Torrent {
            info_hash: meta.info_hash,
            shape: setup::shape(&meta),
            data: setup::files().concat(),
        };
        World { dir: dir.path().to_path_buf(), _dir: dir, meta, torrent }
    });
}

fuzz_target!(|data: &[u8]| {
    let Some((head, pieces)) = setup::decode(data, 1) else {
        return;
    };
    let control = head[0];
    WORLD.with(|w| {
        let w = &*w.borrow();
        match control & 3 {
            mode::SWARM_IN | mode::SWARM_OUT => through_swarm(w, control, &pieces),
            m => {
                let mut bare =
                    peer::Bare::new(&w.torrent, m == mode::BARE_OUT, control, Instant::now());
                for p in &pieces {
                    if bare.round(p).is_none() {
                        break;
                    }
                }
                bare.finish();
            }
        }
    });
});

/// One connection of a real swarm, driven as the reactor drives it,
/// round for round as `tests/capture.rs` recorded it.
fn through_swarm(w: &World, control: u8, pieces: &[&[u8]]) {
    let dialing = control & 3 == mode::SWARM_OUT;
    let pieces = if dialing {
        pieces.to_vec()
    } else {
        short_of_ya(pieces)
    };
    let (s, _, sent) = setup::replay(control, &pieces, &w.meta, &w.dir, Instant::now());
    // An MSE responder never has a whole Ya to answer: what we sent is
    // plaintext.
    let sent = sent.concat();
    let have = setup::have(control, w.meta.pieces.len());
    peer::check_sent(&w.torrent, &sent, &s.peer_id(), &have, true);
}

/// An incoming stream that is not a plaintext handshake goes to the MSE
/// responder: cut it short of a whole Ya. Past that, two 768-bit modular
/// exponentiations cost more than all the rest of a run, and the mse
/// target fuzzes the responder itself.
fn short_of_ya<'a>(pieces: &[&'a [u8]]) -> Vec<&'a [u8]> {
    let head: Vec<u8> = pieces
        .iter()
        .flat_map(|p| p.iter())
        .take(20)
        .copied()
        .collect();
    if is_plain_handshake(&head) != Some(false) {
        return pieces.to_vec();
    }
    let mut left = DH_LEN - 1;
    let mut out = Vec::new();
    for p in pieces {
        let n = p.len().min(left);
        out.push(&p[..n]);
        left -= n;
    }
    out
}
