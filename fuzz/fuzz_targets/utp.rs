//! Hostile datagrams into uTP endpoints. The input is first decoded as one
//! bare packet (what decodes must re-encode to the same packet); then it
//! is a program driving two endpoints that talk to each other over a wire
//! the input controls (drops, duplicates, byte flips), interleaved with
//! datagrams from a few other addresses, time steps, connects, sends,
//! receives, closes and resets. Nothing may panic; every bound must hold;
//! everything an endpoint sends must decode and fit its packet size.
#![no_main]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use tripcd::utp::packet::{decode, encode};
use tripcd::utp::{Config, ConnId, Endpoint, Event, MAX_PACKET_SIZE};

/// Reads the program one byte at a time; 0 once it is used up.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        let Some((&b, rest)) = self.0.split_first() else {
            return 0;
        };
        self.0 = rest;
        b
    }

    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }
}

fn config(packet: u8) -> Config {
    Config {
        max_connections: 6,
        max_half_open: 3,
        max_half_open_incoming: 2,
        send_buffer: 16 * 1024,
        recv_buffer: 16 * 1024,
        // Loopback addresses below: this is their size.
        loopback_packet_size: 548 + usize::from(packet) * 256,
        ..Config::default()
    }
}

fn addr(i: u8) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1 + i % 4], 6881))
}

/// Checks the bare decoder: a packet re-encodes to itself.
fn bare(data: &[u8]) {
    let Ok(p) = decode(data) else { return };
    let mut out = Vec::new();
    let sack = p.sack.unwrap_or(&[]);
    encode(&mut out, &p.header, sack);
    out.extend_from_slice(p.payload);
    let again = decode(&out).expect("re-encoded packet decodes");
    assert_eq!(again.header, p.header);
    assert_eq!(again.sack, p.sack);
    assert_eq!(again.payload, p.payload);
}

struct World {
    now: Instant,
    eps: [Endpoint; 2],
    ids: [Vec<ConnId>; 2],
    /// Datagrams on their way from one endpoint to the other.
    wire: [VecDeque<Vec<u8>>; 2],
    out: Vec<u8>,
    buf: Vec<u8>,
}

impl World {
    fn check(&self, side: usize) {
        let ep = &self.eps[side];
        let s = ep.stats();
        let c = ep.config();
        assert!(s.connections <= c.max_connections, "{s:?}");
        assert!(s.half_open <= c.max_half_open + c.max_half_open_incoming, "{s:?}");
        for &id in &self.ids[side] {
            assert!(ep.readable_len(id) <= 2 * c.recv_buffer.max(4 * MAX_PACKET_SIZE));
            assert!(ep.send_buffer_room(id) <= c.send_buffer.max(4 * MAX_PACKET_SIZE));
        }
    }

    /// Everything side `side` wants to send, onto the wire (or dropped if
    /// it is for an address nobody here has).
    fn flush(&mut self, side: usize) {
        let peer = addr(1 - side as u8);
        let mut sent = 0;
        while let Some(to) = self.eps[side].poll_transmit(self.now, &mut self.out) {
            let p = decode(&self.out).expect("we send what we can decode");
            assert!(self.out.len() <= MAX_PACKET_SIZE);
            assert!(p.sack.is_none_or(|s| s.len() % 4 == 0));
            if to == peer && self.wire[side].len() < 4096 {
                self.wire[side].push_back(self.out.clone());
            }
            sent += 1;
            // Bounded: a round never produces more than its buffers allow.
            assert!(sent < 100_000);
        }
    }

    fn events(&mut self, side: usize) {
        while let Some((id, ev)) = self.eps[side].poll_event() {
            match ev {
                Event::Incoming { .. } => self.ids[side].push(id),
                Event::Closed(_) => {
                    assert_eq!(self.eps[side].state(id), None);
                    self.ids[side].retain(|&i| i != id);
                }
                Event::Connected | Event::Readable | Event::Writable => {}
            }
        }
    }

    fn pick(&self, side: usize, b: u8) -> Option<ConnId> {
        let ids = &self.ids[side];
        (!ids.is_empty()).then(|| ids[usize::from(b) % ids.len()])
    }

    fn deliver(&mut self, side: usize, how: u8) {
        let Some(mut d) = self.wire[side].pop_front() else {
            return;
        };
        match how % 8 {
            0 => return, // lost
            1 => self.wire[side].push_back(d.clone()), // duplicated, later
            2 => {
                // One byte changed.
                if !d.is_empty() {
                    let i = usize::from(how) * 7 % d.len();
                    d[i] ^= how | 1;
                }
            }
            3 => {
                // Reordered behind the next.
                self.wire[side].push_back(d);
                return;
            }
            _ => {}
        }
        let from = addr(side as u8);
        self.eps[1 - side].handle_datagram(from, &d, self.now);
    }

    fn step(&mut self, input: &mut Input<'_>) {
        let op = input.byte();
        let side = usize::from(op & 1);
        match op >> 1 {
            // A datagram from one of a few addresses.
            0..=15 => {
                let from = addr(input.byte());
                let len = usize::from(input.byte()) * 2;
                let d = input.bytes(len).to_vec();
                self.eps[side].handle_datagram(from, &d, self.now);
            }
            16..=47 => {
                let how = input.byte();
                self.deliver(side, how);
            }
            48..=63 => {
                let ms = u64::from(input.byte());
                self.now += Duration::from_millis(ms * ms);
                for s in 0..2 {
                    if self.eps[s].poll_timeout().is_some_and(|t| t <= self.now) {
                        self.eps[s].handle_timeout(self.now);
                    }
                }
            }
            64..=71 => {
                let to = addr(input.byte());
                if let Ok(id) = self.eps[side].connect(to, self.now) {
                    self.ids[side].push(id);
                }
            }
            72..=95 => {
                if let Some(id) = self.pick(side, input.byte()) {
                    let n = usize::from(input.byte()) * 64;
                    self.buf.resize(n, 0x5a);
                    self.eps[side].send(id, &self.buf);
                }
            }
            96..=111 => {
                if let Some(id) = self.pick(side, input.byte()) {
                    self.buf.resize(usize::from(input.byte()) * 64, 0);
                    let n = self.eps[side].recv(id, &mut self.buf);
                    assert!(n <= self.buf.len());
                }
            }
            112..=119 => {
                if let Some(id) = self.pick(side, input.byte()) {
                    self.eps[side].close(id);
                }
            }
            _ => {
                if let Some(id) = self.pick(side, input.byte()) {
                    self.eps[side].reset(id);
                    assert_eq!(self.eps[side].state(id), None);
                    self.ids[side].retain(|&i| i != id);
                }
            }
        }
        for s in 0..2 {
            self.flush(s);
            self.events(s);
            self.check(s);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    bare(data);
    let mut input = Input(data);
    let packet = input.byte();
    let now = Instant::now();
    let mk = |seed| Endpoint::new(config(packet), fastrand::Rng::with_seed(seed), now);
    let mut w = World {
        now,
        eps: [mk(1), mk(2)],
        ids: [Vec::new(), Vec::new()],
        wire: [VecDeque::new(), VecDeque::new()],
        out: Vec::new(),
        buf: Vec::new(),
    };
    // Bounded by the input: every op consumes at least one byte.
    while !input.0.is_empty() {
        w.step(&mut input);
    }
});
