//! What the `wire` and `mse` fuzz targets and the capture test
//! (`tests/capture.rs`, which makes their seeds) must agree on: the
//! torrent, how a swarm is set up from a seed's control byte, the order
//! of calls in one round, and the seed formats. Included by path from
//! both sides, so that a captured seed replays byte for byte.
//!
//! Seeds: a few control bytes, then `n` (one byte) and `n` big-endian u32
//! cut offsets into the stream that follows; the stream is delivered in
//! the `n + 1` pieces the sorted cuts make (an offset past the end is the
//! end; equal cuts make empty pieces, delivered as such).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use std::time::Instant;

use sha1::{Digest, Sha1};
use tripcd::codec::Value;
use tripcd::engine::geometry::Geometry;
use tripcd::peer::mse::Policy;
use tripcd::registry::{Metainfo, Phase, Torrent};
use tripcd::swarm::{Dial, Limits, Manners, Swarm, Transport};

/// Pieces of 20 KiB: a 16 KiB block and a 4 KiB one each.
pub const PIECE_LENGTH: u64 = 20 << 10;

/// The torrent's directory name.
pub const NAME: &str = "fuzz";

/// Fake time between two rounds.
pub const STEP: Duration = Duration::from_millis(10);

/// The port every swarm says it listens on (for peer exchange).
pub const LISTEN_PORT: u16 = 6881;

/// The rate of both limits when a control byte asks for limits, bytes/s.
pub const LIMIT_RATE: u64 = 100 << 10;

/// Where the dialled side listens, as the dialler sees it.
pub const ACCEPTOR_ADDR: ([u8; 4], u16) = ([127, 0, 0, 1], LISTEN_PORT);

/// Where a dialler connects from, as the accepting side sees it (the
/// `i`th dialler of a capture; the fuzz targets use the first).
pub fn dialer_addr(i: u8) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 2 + i], 40000 + u16::from(i)))
}

/// The random generator's seed of the accepting swarm; a dialler's is
/// this plus one plus its index (distinct peer ids).
pub const ACCEPTOR_RNG: u64 = 1;

/// The three files: across a piece boundary, a tiny one, a short last
/// piece (21 004 bytes: a piece of two blocks, one of 524 bytes). Small,
/// so that a whole transfer fits in one fuzz input.
pub fn files() -> Vec<Vec<u8>> {
    let mut x = 7u32;
    let mut noise = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (x >> 16) as u8
            })
            .collect()
    };
    vec![noise(9_000), noise(3), noise(12_001)]
}

/// The torrent's metainfo.
pub fn metainfo() -> Metainfo {
    let all: Vec<u8> = files().concat();
    let pieces: Vec<u8> = all
        .chunks(PIECE_LENGTH as usize)
        .flat_map(|c| <[u8; 20]>::from(Sha1::digest(c)))
        .collect();
    let files = files()
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
        ("name", Value::str(NAME)),
        ("piece length", Value::Int(PIECE_LENGTH as i64)),
        ("pieces", Value::Bytes(pieces)),
    ]);
    let bytes = Value::dict([("info", info)]).to_bencode().expect("encodes");
    Metainfo::parse(&bytes).expect("a valid torrent")
}

/// The torrent's geometry, as a connection checks it.
pub fn shape(meta: &Metainfo) -> Geometry {
    meta.geometry
}

/// Writes the torrent's data under `dir`, as a seeder has it.
pub fn write_files(dir: &Path) {
    let d = dir.join(NAME);
    std::fs::create_dir_all(&d).expect("data directory");
    for (i, data) in files().iter().enumerate() {
        std::fs::write(d.join(format!("f{i}")), data).expect("data file");
    }
}

/// Which pieces a side has, from bits 2-3 of a control byte: none, all,
/// the even ones, the odd ones.
pub fn have(control: u8, pieces: usize) -> Vec<bool> {
    (0..pieces)
        .map(|i| match (control >> 2) & 3 {
            0 => false,
            1 => true,
            2 => i % 2 == 0,
            _ => i % 2 == 1,
        })
        .collect()
}

/// The torrent as the registry hands it to the swarm: data in `dir`,
/// the pieces of [`have`] verified.
pub fn torrent(meta: &Metainfo, dir: &Path, control: u8) -> Torrent {
    Torrent {
        id: 1,
        info_hash: meta.info_hash,
        meta: Some(meta.clone()),
        hints: Default::default(),
        saved_path: dir.join("x.torrent"),
        directory: dir.to_path_buf(),
        running: true,
        phase: Phase::Downloading,
        verified: have(control, meta.pieces.len()),
        completed: 0,
        error: None,
        transfer: Default::default(),
        dates: Default::default(),
        labels: Vec::new(),
        totals_at_open: (0, 0),
    }
}

/// Wire target modes (bits 0-1 of its control byte).
pub mod mode {
    /// A swarm accepts the connection.
    pub const SWARM_IN: u8 = 0;
    /// A swarm dials (plaintext).
    pub const SWARM_OUT: u8 = 1;
    /// A bare incoming `PeerConn`.
    pub const BARE_IN: u8 = 2;
    /// A bare outgoing `PeerConn`.
    pub const BARE_OUT: u8 = 3;
}

/// A swarm's settings from a wire control byte: bits 4-5 the encryption
/// policy (Preferred, Required, Tolerated, Preferred; always Tolerated
/// for a dialling swarm, so that it dials in plaintext and replays
/// deterministically: its MSE keys would come from the system), bit 6
/// peer exchange, bit 7 both speed limits at [`LIMIT_RATE`].
pub fn manners(control: u8) -> Manners {
    let dialing = control & 3 == mode::SWARM_OUT;
    let encryption = match (control >> 4) & 3 {
        _ if dialing => Policy::Tolerated,
        1 => Policy::Required,
        2 => Policy::Tolerated,
        _ => Policy::Preferred,
    };
    let limit = (control & 0x80 != 0).then_some(LIMIT_RATE);
    Manners {
        download_limit: limit,
        upload_limit: limit,
        pex: control & 0x40 != 0,
        encryption,
        listen_port: LISTEN_PORT,
        dht_port: None,
    }
}

/// A swarm with the seed `rng`, following `control`'s manners, running
/// the torrent (data in `dir`).
pub fn swarm(rng: u64, control: u8, meta: &Metainfo, dir: &Path, now: Instant) -> Swarm {
    let mut r = fastrand::Rng::with_seed(rng);
    let mut s = Swarm::new(tripcd::swarm::new_peer_id(&mut r), Limits::default(), r);
    s.set_manners(manners(control), now);
    s.start(&torrent(meta, dir, control), now)
        .expect("the torrent's geometry is fine");
    s
}

/// Dials the acceptor: the connection's key.
pub fn dial(s: &mut Swarm, now: Instant) -> usize {
    s.add_peers(
        1,
        &[SocketAddr::from(ACCEPTOR_ADDR)],
        tripcd::swarm::Source::Tracker,
    );
    let Dial { key, .. } = s.poll_dial(now).expect("a candidate to dial");
    s.dialed(key, true, now);
    key
}

/// What the swarm sends to `key` now (one `output`, as the reactor's
/// one write per turn), taken as sent.
pub fn take_output(s: &mut Swarm, key: usize, now: Instant) -> Vec<u8> {
    let out = s.output(key).to_vec();
    s.consume_output(key, out.len(), now);
    out
}

/// Bytes arrive: the swarm reads no more than its download allowance,
/// as the reactor does; the rest waits in `held` (the kernel's buffer).
pub fn feed(s: &mut Swarm, key: usize, held: &mut Vec<u8>, chunk: &[u8], now: Instant) {
    held.extend_from_slice(chunk);
    let n = held.len().min(s.read_allowance(now));
    let bytes: Vec<u8> = held.drain(..n).collect();
    s.receive(key, &bytes, now);
}

/// The end of a swarm's round: its pieces hashed and written at once
/// (as the disk thread would), timers, then closes (as the reactor
/// closes at one point). The keys closed.
pub fn end_round(s: &mut Swarm, now: Instant) -> Vec<usize> {
    let mut writer = tripcd::engine::disk::PieceWriter::new();
    while let Some(req) = s.poll_disk() {
        if let Some(tripcd::engine::disk::DiskDone::Piece(done)) = writer.handle(req) {
            s.disk_done(done, now);
        }
    }
    s.handle_timeout(now);
    let mut gone = Vec::new();
    while let Some(k) = s.poll_close() {
        gone.push(k);
        s.closed(k);
    }
    while s.poll_event().is_some() {}
    gone
}

/// Replays one connection of a swarm set up from `control` (accepting
/// from [`dialer_addr`]`(0)` or dialling [`ACCEPTOR_ADDR`]), `pieces`
/// arriving one a round, round for round as `tests/capture.rs` records
/// them: the acceptor reads then answers, the dialler sends then
/// reads; then the end of the round. Stops when the connection closes.
/// The swarm, the connection's key, and what it sent each round.
pub fn replay(
    control: u8,
    pieces: &[&[u8]],
    meta: &Metainfo,
    dir: &Path,
    mut now: Instant,
) -> (Swarm, usize, Vec<Vec<u8>>) {
    let dialing = control & 3 == mode::SWARM_OUT;
    let mut s = swarm(ACCEPTOR_RNG + u64::from(dialing), control, meta, dir, now);
    let key = if dialing {
        dial(&mut s, now)
    } else {
        s.accept(dialer_addr(0), Transport::Tcp, now)
            .expect("room for one peer")
    };
    let mut sent = Vec::new();
    let mut held = Vec::new();
    for p in pieces {
        if dialing {
            sent.push(take_output(&mut s, key, now));
            feed(&mut s, key, &mut held, p, now);
        } else {
            feed(&mut s, key, &mut held, p, now);
            sent.push(take_output(&mut s, key, now));
        }
        let gone = end_round(&mut s, now);
        now += STEP;
        if gone.contains(&key) {
            break;
        }
    }
    (s, key, sent)
}

/// A seed: `head` (the control bytes), then the cuts between `chunks`,
/// then the chunks. Trailing empty chunks are left out; at most 256
/// chunks.
pub fn encode(head: &[u8], chunks: &[Vec<u8>]) -> Vec<u8> {
    let mut chunks = chunks;
    while let Some((last, rest)) = chunks.split_last() {
        if !last.is_empty() {
            break;
        }
        chunks = rest;
    }
    let cuts = chunks.len().saturating_sub(1);
    assert!(cuts <= 255, "{} chunks: too many for a seed", chunks.len());
    let mut out = head.to_vec();
    out.push(cuts as u8);
    let mut at = 0u32;
    for c in chunks.iter().take(cuts) {
        at += c.len() as u32;
        out.extend_from_slice(&at.to_be_bytes());
    }
    for c in chunks {
        out.extend_from_slice(c);
    }
    out
}

/// A seed read back: its `head_len` control bytes and the pieces of its
/// stream; `None` when too short for its own header.
pub fn decode(data: &[u8], head_len: usize) -> Option<(&[u8], Vec<&[u8]>)> {
    let head = data.get(..head_len)?;
    let n = usize::from(*data.get(head_len)?);
    let cuts_at = head_len + 1;
    let cut_bytes = data.get(cuts_at..cuts_at + 4 * n)?;
    let stream = &data[cuts_at + 4 * n..];
    let mut cuts: Vec<usize> = cut_bytes
        .chunks_exact(4)
        .map(|c| (u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize).min(stream.len()))
        .collect();
    cuts.sort_unstable();
    let mut pieces = Vec::with_capacity(n + 1);
    let mut from = 0;
    for to in cuts.into_iter().chain([stream.len()]) {
        pieces.push(&stream[from..to]);
        from = to;
    }
    Some((head, pieces))
}

/// The `mse` target's control bytes before the cuts: flags and the bare
/// connection's control byte.
pub const MSE_HEAD: usize = 2;

/// The fixed MSE private keys of the capture and the `mse` target, so
/// that a seed replays. Short on purpose: the handshake takes the same
/// steps with any key, and a 16-bit exponent makes each run's two
/// Diffie-Hellman exponentiations ten times cheaper than real ones.
pub const INITIATOR_KEY: [u8; 20] = short_key(0x9e37);
/// See [`INITIATOR_KEY`].
pub const RESPONDER_KEY: [u8; 20] = short_key(0x7f4a);

const fn short_key(k: u16) -> [u8; 20] {
    let mut key = [0u8; 20];
    let b = k.to_be_bytes();
    key[18] = b[0];
    key[19] = b[1];
    key
}

/// `mse` flags: bit 0 we initiate (else we respond), bits 1-2 our
/// policy (Required, Preferred, Tolerated, Preferred), bit 3 `poll_done`
/// only after every second input, bits 4-7 our pad's length in 32-byte
/// steps.
pub fn mse_flags(initiate: bool, policy: Policy, lazy: bool, pad_steps: u8) -> u8 {
    let p = match policy {
        Policy::Required => 0,
        Policy::Preferred => 1,
        Policy::Tolerated => 2,
    };
    u8::from(initiate) | p << 1 | u8::from(lazy) << 3 | (pad_steps & 15) << 4
}

/// The policy of `mse` flags.
pub fn mse_policy(flags: u8) -> Policy {
    match (flags >> 1) & 3 {
        0 => Policy::Required,
        2 => Policy::Tolerated,
        _ => Policy::Preferred,
    }
}

/// A pad of `len` bytes (its bytes do not matter; fixed, for replay).
pub fn pad(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + 3) as u8).collect()
}
