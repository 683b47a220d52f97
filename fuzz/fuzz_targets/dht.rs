//! Hostile datagrams into a DHT node: the KRPC decoder alone (what
//! decodes re-encodes to the same message), and a node's
//! `handle_datagram` fed datagrams from a few sources, answers to its own
//! queries (the input supplies the body, the target the transaction id
//! it cannot guess), time steps and lookups. It must never panic, and
//! everything it sends must be well-formed KRPC within the bounds.
//!
//! Input: a seed byte, then records `[kind, len, len bytes]`: kind % 8
//! is 0-3 a datagram from source `kind % 4`, 4 a time step, 5 a lookup,
//! 6 an answer to the last query sent to source `len % 4`, 7 a node to
//! add or bootstrap from.
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use tripcd::dht::krpc::{self, Body, MAX_DATAGRAM};
use tripcd::dht::node::{MAX_LOOKUPS, MAX_OUTSTANDING};
use tripcd::dht::{Config, Dht, NodeId};

const SOURCES: [&str; 4] = ["127.0.0.1:6881", "127.0.0.1:6882", "203.0.113.7:51413", "[2001:db8::1]:6881"];

struct Harness {
    dht: Dht,
    now: Instant,
    sources: Vec<SocketAddr>,
    /// The last query the node sent to each source: its transaction id.
    last_query: [Option<Vec<u8>>; 4],
    out: Vec<u8>,
}

impl Harness {
    /// Drains what the node sends and checks it.
    fn drain(&mut self) {
        while let Some(to) = self.dht.poll_transmit(&mut self.out) {
            assert!(self.out.len() <= MAX_DATAGRAM, "we send {} bytes", self.out.len());
            let msg = krpc::decode(&self.out).expect("we send valid KRPC");
            if let (Body::Query(_), Some(i)) = (&msg.body, self.sources.iter().position(|s| *s == to)) {
                self.last_query[i] = Some(msg.txid.clone());
            }
        }
        while self.dht.poll_event().is_some() {}
        let s = self.dht.stats();
        assert!(s.outstanding <= MAX_OUTSTANDING);
        assert!(s.lookups <= MAX_LOOKUPS);
    }
}

fn check_codec(data: &[u8]) {
    if let Ok(m) = krpc::decode(data) {
        let bytes = m.to_bytes();
        assert_eq!(krpc::decode(&bytes).expect("our encoding decodes"), m);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, mut rest)) = data.split_first() else {
        return;
    };
    check_codec(rest);
    let now = Instant::now();
    let config = Config {
        ipv6: seed & 1 != 0,
        enforce_node_id: seed & 2 != 0,
        ..Config::default()
    };
    let mut h = Harness {
        dht: Dht::new(config, None, fastrand::Rng::with_seed(u64::from(seed)), now),
        now,
        sources: SOURCES.iter().map(|s| s.parse().unwrap()).collect(),
        last_query: Default::default(),
        out: Vec::new(),
    };
    let boot = [h.sources[0], h.sources[2], h.sources[3]];
    h.dht.bootstrap(&boot[..1 + usize::from(seed >> 6) % 3], now);
    h.drain();
    while let [kind, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (body, next) = tail.split_at(n);
        rest = next;
        match kind % 8 {
            k @ 0..=3 => {
                check_codec(body);
                h.dht.handle_datagram(h.sources[usize::from(k)], body, h.now);
            }
            4 => {
                let step = u64::from(body.first().copied().unwrap_or(1)) * 250;
                h.now += Duration::from_millis(step);
                h.dht.handle_timeout(h.now);
            }
            5 => {
                let mut id = NodeId([0; 20]);
                for (b, x) in id.0.iter_mut().zip(body) {
                    *b = *x;
                }
                match len % 3 {
                    0 => h.dht.get_peers(id, h.now),
                    1 => h.dht.announce(id, (len % 2 == 0).then_some(6881), h.now),
                    _ => h.dht.find_node(id, h.now),
                };
            }
            6 => {
                let i = usize::from(*len % 4);
                if let Some(txid) = h.last_query[i].clone() {
                    // The input is the value of `r` (or of `e`, for odd kinds).
                    let key = if kind & 8 != 0 { "e" } else { "r" };
                    let mut msg = format!("d1:{key}").into_bytes();
                    msg.extend_from_slice(body);
                    msg.extend_from_slice(format!("1:t{}:", txid.len()).as_bytes());
                    msg.extend_from_slice(&txid);
                    msg.extend_from_slice(format!("1:y1:{key}e").as_bytes());
                    h.dht.handle_datagram(h.sources[i], &msg, h.now);
                }
            }
            _ => {
                let i = usize::from(*len % 4);
                if len & 4 != 0 {
                    h.dht.add_node(h.sources[i], h.now);
                } else {
                    h.dht.bootstrap(&[h.sources[i]], h.now);
                }
            }
        }
        h.drain();
    }
    let state = h.dht.save();
    let back = Dht::load(Config::default(), &state, fastrand::Rng::with_seed(1), h.now).expect("our state loads");
    assert_eq!(back.id(), h.dht.id());
    let _ = Dht::load(Config::default(), rest, fastrand::Rng::with_seed(1), h.now);
});
