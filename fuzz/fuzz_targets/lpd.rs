//! Any bytes as LSD datagrams from several neighbours over time into one
//! `Lpd`: never a panic; what we send is a well-formed announce of our
//! public torrents within the datagram bound; peers found are for our
//! public torrents, at the sender's address.
//!
//! Input: the whole input is first parsed as one datagram; then it is
//! read as steps of a control byte and a length byte followed by that
//! many bytes. Control bits 0-2 pick the source, bit 3 a step of time
//! (bits 4-7 times 10 s), and a control of 0xff changes the torrents.
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use tripcd::lpd::{Announce, Lpd, LpdEvent, MAX_DATAGRAM};

const SOURCES: [&str; 8] = [
    "192.168.1.2:6771",
    "192.168.1.3:6771",
    "10.0.0.9:40000",
    "[fe80::1]:6771",
    "[2001:db8::7]:6771",
    "[::ffff:192.168.1.2]:6771",
    "0.0.0.0:6771",
    "224.0.0.1:6771",
];

fn torrents(seed: u8) -> Vec<([u8; 20], bool)> {
    (0..(seed % 40))
        .map(|i| ([i.wrapping_mul(7).wrapping_add(1); 20], (i ^ seed) % 3 == 0))
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let _ = Announce::parse(data);
    let t0 = Instant::now();
    let mut now = t0;
    let mut l = Lpd::new("fuzzcookie", 6881, fastrand::Rng::with_seed(1), now);
    let mut set = torrents(data.first().copied().unwrap_or(0));
    l.set_torrents(&set, now);
    let mut rest = data;
    while let [ctrl, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (bytes, next) = tail.split_at(n);
        rest = next;
        if *ctrl == 0xff {
            set = torrents(*len);
            l.set_torrents(&set, now);
            continue;
        }
        if ctrl & 8 != 0 {
            now += Duration::from_secs(10 * u64::from(ctrl >> 4));
        }
        let from: SocketAddr = SOURCES[usize::from(ctrl & 7)].parse().unwrap();
        l.handle_datagram(from, bytes, now);
        while let Some(LpdEvent::Peer { info_hash, addr }) = l.poll_event() {
            assert!(set.iter().any(|(h, p)| *h == info_hash && !p));
            assert_eq!(addr.ip(), from.ip().to_canonical());
            assert_ne!(addr.port(), 0);
        }
        if l.poll_timeout().is_some_and(|t| t <= now) {
            l.handle_timeout(now);
        }
        let mut out = Vec::new();
        while l.poll_transmit(&mut out).is_some() {
            assert!(out.len() <= MAX_DATAGRAM);
            let a = Announce::parse(&out).expect("what we send parses");
            assert_eq!(a.port, 6881);
            assert!(!a.info_hashes.is_empty());
            for h in &a.info_hashes {
                assert!(
                    set.iter().any(|(s, p)| s == h && !p),
                    "only public torrents"
                );
            }
            out.clear();
        }
    }
});
