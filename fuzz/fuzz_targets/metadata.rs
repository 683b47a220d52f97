//! BEP 9 metadata: any bytes through the `ut_metadata` codec, then a
//! `MetadataFetch` driven by up to six peers sending arbitrary offers,
//! honest, corrupted and made-up pieces, rejects and departures, with the
//! clock stepping on. Never a panic; what the fetch asks is in range and
//! never of a peer it refused; what it holds stays within the size; time
//! moves on after each timeout; and `Done` is only ever the real info
//! dictionary.
//!
//! Input: byte 0 picks the info dictionary (1 piece, 3, or 6 with a
//! one-byte last); then steps of four bytes: an operation, a peer, and
//! two arguments.
#![no_main]

use std::collections::BTreeSet;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use sha1::{Digest, Sha1};
use tripcd::peer::metadata::{
    answer_request, piece_count, piece_len, FetchEvent, MetadataFetch, MetadataMessage, ServeLimit,
    MAX_METADATA_SIZE, MAX_OUTSTANDING, MAX_PIECES, PIECE_SIZE,
};

struct Info {
    bytes: Vec<u8>,
    hash: [u8; 20],
}

fn infos() -> &'static [Info; 3] {
    static INFOS: OnceLock<[Info; 3]> = OnceLock::new();
    INFOS.get_or_init(|| {
        [1000, 40_000, 5 * PIECE_SIZE + 1].map(|len| {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let hash = Sha1::digest(&bytes).into();
            Info { bytes, hash }
        })
    })
}

fn piece_of(info: &[u8], piece: u32) -> &[u8] {
    let start = (piece as usize * PIECE_SIZE).min(info.len());
    let len = piece_len(info.len() as u32, piece);
    &info[start..start + len]
}

struct Run<'a> {
    f: MetadataFetch,
    info: &'a Info,
    now: Instant,
    refused: BTreeSet<usize>,
}

impl Run<'_> {
    fn size_of(&self, pick: u8) -> u32 {
        let real = self.info.bytes.len() as u32;
        match pick % 8 {
            0 => 0,
            1 | 2 => real,
            3 => real + 1,
            4 => MAX_METADATA_SIZE + 1,
            5 => MAX_METADATA_SIZE,
            6 => u32::from(pick) * 300,
            _ => u32::MAX,
        }
    }

    fn refused(&mut self, peer: usize, r: Result<(), impl std::fmt::Debug>) {
        if r.is_err() {
            self.refused.insert(peer);
        }
    }

    fn data(&mut self, peer: usize, piece: u32, total: u32, bytes: &[u8]) {
        let r = self.f.handle_data(peer, piece, total, bytes, self.now);
        self.refused(peer, r);
    }

    fn step(&mut self, op: u8, peer: usize, a: u8, b: u8) {
        let real = self.info.bytes.len() as u32;
        match op % 9 {
            0 => {
                let r = self.f.peer_offers(peer, self.size_of(a), self.now);
                self.refused(peer, r);
            }
            1 => self.poll(peer),
            2 => {
                let piece = u32::from(a) % (piece_count(real) as u32 + 1);
                let bytes = piece_of(&self.info.bytes, piece).to_vec();
                self.data(peer, piece, real, &bytes);
            }
            3 => {
                let piece = u32::from(a) % (piece_count(real) as u32 + 1);
                let mut bytes = piece_of(&self.info.bytes, piece).to_vec();
                let at = usize::from(b) * 64 % bytes.len().max(1);
                if let Some(x) = bytes.get_mut(at) {
                    *x ^= 1 | b;
                }
                self.data(peer, piece, real, &bytes);
            }
            4 => {
                let bytes = vec![b; usize::from(b) * 65 % (PIECE_SIZE + 2)];
                let total = self.size_of(a >> 3);
                self.data(peer, u32::from(a & 7), total, &bytes);
            }
            5 => self.f.handle_reject(peer, u32::from(a % 8), self.now),
            6 => {
                self.f.peer_gone(peer);
                self.refused.remove(&peer);
            }
            7 => self.tick(Duration::from_millis(
                u64::from(a) * 250 + u64::from(b) * 64_000,
            )),
            _ => self.serve(peer, a, b),
        }
    }

    /// Serves our own copy through the codec, and feeds the answer back
    /// as if the peer had sent it.
    fn serve(&mut self, peer: usize, a: u8, b: u8) {
        let mut limit = ServeLimit::new();
        let msg = answer_request(
            Some(&self.info.bytes),
            b & 1 == 1,
            u32::from(a % 8),
            &mut limit,
            self.now,
        );
        let mut payload = Vec::new();
        msg.encode(&mut payload);
        match MetadataMessage::parse(&payload) {
            Ok(Some(MetadataMessage::Data {
                piece,
                total_size,
                data,
            })) => {
                assert_eq!(data, piece_of(&self.info.bytes, piece));
                let data = data.to_vec();
                self.data(peer, piece, total_size, &data);
            }
            Ok(Some(MetadataMessage::Reject { piece })) => {
                self.f.handle_reject(peer, piece, self.now)
            }
            other => panic!("our own answer reads back as {other:?}"),
        }
    }

    fn poll(&mut self, peer: usize) {
        let mut asked = 0;
        while let Some(piece) = self.f.poll_request(peer, self.now) {
            asked += 1;
            assert!(asked <= MAX_OUTSTANDING, "too many requests at once");
            assert!(!self.refused.contains(&peer), "asked a refused peer");
            let size = self.f.size().expect("a request has a size");
            assert!((piece as usize) < piece_count(size));
        }
    }

    fn tick(&mut self, by: Duration) {
        self.now += by;
        if self.f.poll_timeout().is_some_and(|t| t <= self.now) {
            self.f.handle_timeout(self.now);
            assert!(
                self.f.poll_timeout().is_none_or(|t| t > self.now),
                "timer would spin"
            );
        }
    }

    fn check(&mut self) {
        assert!(self.f.slot_count() <= MAX_PIECES);
        let size = self.f.size().unwrap_or(0) as usize;
        assert!(self.f.held_bytes() <= size);
        while let Some(e) = self.f.poll_event() {
            match e {
                FetchEvent::Done(bytes) => {
                    assert_eq!(bytes, self.info.bytes);
                    assert_eq!(<[u8; 20]>::from(Sha1::digest(&bytes)), self.info.hash);
                }
                FetchEvent::Drop { peer, .. } => {
                    self.refused.insert(peer);
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = MetadataMessage::parse(data);
    let Some((pick, steps)) = data.split_first() else {
        return;
    };
    let info = &infos()[usize::from(*pick % 3)];
    let mut run = Run {
        f: MetadataFetch::new(info.hash),
        info,
        now: Instant::now(),
        refused: BTreeSet::new(),
    };
    for s in steps.chunks_exact(4) {
        run.step(s[0], usize::from(s[1] % 6), s[2], s[3]);
        run.check();
    }
});
