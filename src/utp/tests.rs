//! Endpoints over the simulated link: transfers under loss, reordering
//! and duplication, wrap-around, FIN and RESET, the bounds, and LEDBAT at
//! a bottleneck.

use std::time::{Duration, Instant};

use super::endpoint::{RESET_BURST, RESET_RATE};
use super::packet::{self, Header, PacketType};
use super::sim::{Path, Sim};
use super::*;

const MS: Duration = Duration::from_millis(1);

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..len).map(|_| rng.u8(..)).collect()
}

/// One side of a transfer, driven as the peer-wire code would drive it.
#[derive(Debug, Default)]
struct Side {
    id: Option<ConnId>,
    out: Vec<u8>,
    written: usize,
    got: Vec<u8>,
    closed: Option<CloseReason>,
    close_called: bool,
    saw_eof: bool,
    /// Stop reading (to test the receive window).
    paused: bool,
    /// The connection's figures when last seen.
    last_stats: Option<ConnStats>,
}

impl Side {
    fn new(out: Vec<u8>) -> Side {
        Side {
            out,
            ..Side::default()
        }
    }

    fn read(&mut self, ep: &mut Endpoint) {
        let Some(id) = self.id else { return };
        if self.paused {
            return;
        }
        let mut buf = [0u8; 8192];
        loop {
            let n = ep.recv(id, &mut buf);
            if n == 0 {
                break;
            }
            self.got.extend_from_slice(&buf[..n]);
        }
        if ep.eof(id) {
            self.saw_eof = true;
        }
    }

    fn drive(&mut self, ep: &mut Endpoint) {
        while let Some((id, ev)) = ep.poll_event() {
            match ev {
                Event::Incoming { .. } => {
                    assert!(self.id.is_none(), "one connection expected");
                    self.id = Some(id);
                }
                Event::Readable => self.read(ep),
                Event::Closed(r) => {
                    assert_eq!(Some(id), self.id);
                    self.closed = Some(r);
                }
                Event::Connected | Event::Writable => {}
            }
        }
        let Some(id) = self.id else { return };
        if self.closed.is_some() {
            return;
        }
        self.read(ep);
        while self.written < self.out.len() {
            let n = ep.send(id, &self.out[self.written..]);
            if n == 0 {
                break;
            }
            self.written += n;
        }
        if self.written == self.out.len() && !self.close_called {
            ep.close(id);
            self.close_called = true;
        }
    }
}

/// Runs a transfer both ways until both sides are closed; returns them.
fn transfer(sim: &mut Sim, a_data: Vec<u8>, b_data: Vec<u8>, limit: Duration) -> (Side, Side) {
    let mut a = Side::new(a_data);
    let mut b = Side::new(b_data);
    a.id = Some(sim.a.connect(sim.b_addr, sim.now).unwrap());
    let deadline = sim.now + limit;
    while a.closed.is_none() || b.closed.is_none() {
        assert!(
            sim.now < deadline,
            "transfer did not finish in {limit:?}: a {}/{} got {}, b {}/{} got {}; a {:?} b {:?}",
            a.written,
            a.out.len(),
            a.got.len(),
            b.written,
            b.out.len(),
            b.got.len(),
            a.id.and_then(|id| sim.a.conn_stats(id)),
            b.id.and_then(|id| sim.b.conn_stats(id)),
        );
        a.drive(&mut sim.a);
        b.drive(&mut sim.b);
        if let Some(s) = a.id.and_then(|id| sim.a.conn_stats(id)) {
            a.last_stats = Some(s);
        }
        sim.step(100 * MS);
    }
    (a, b)
}

fn check_transfer(sim: &mut Sim, len: usize, limit: Duration) -> (Side, Side) {
    let a_data = pattern(len, 1);
    let b_data = pattern(len / 2, 2);
    let (a, b) = transfer(sim, a_data.clone(), b_data.clone(), limit);
    assert_eq!(a.closed, Some(CloseReason::Finished));
    assert_eq!(b.closed, Some(CloseReason::Finished));
    assert!(
        b.got == a_data,
        "a to b: {} of {} bytes",
        b.got.len(),
        a_data.len()
    );
    assert!(
        a.got == b_data,
        "b to a: {} of {} bytes",
        a.got.len(),
        b_data.len()
    );
    assert!(a.saw_eof && b.saw_eof);
    eprintln!(
        "{len} bytes in {:?} simulated: a {:?}, forward lost {}",
        sim.elapsed(),
        a.last_stats,
        sim.forward.dropped
    );
    assert_eq!(sim.a.stats().connections, 0);
    assert_eq!(sim.b.stats().connections, 0);
    (a, b)
}

fn lossy_sim(loss: f64, seed: u64) -> Sim {
    let path = || Path::lossy(20 * MS, 10 * MS, loss, 0.02);
    Sim::new(Config::default(), Config::default(), seed, path(), path())
}

#[test]
fn transfer_without_loss() {
    let mut sim = lossy_sim(0.0, 1);
    check_transfer(&mut sim, 4 << 20, Duration::from_secs(60));
}

#[test]
fn transfer_at_1_percent_loss() {
    let mut sim = lossy_sim(0.01, 2);
    check_transfer(&mut sim, 3 << 20, Duration::from_secs(300));
}

#[test]
fn transfer_at_5_percent_loss() {
    let mut sim = lossy_sim(0.05, 3);
    check_transfer(&mut sim, 2 << 20, Duration::from_secs(600));
}

#[test]
fn transfer_at_20_percent_loss() {
    let mut sim = lossy_sim(0.20, 4);
    let (a, _) = check_transfer(&mut sim, 1 << 20, Duration::from_secs(3600));
    assert!(a.got.len() == 1 << 19);
}

#[test]
fn transfer_across_sequence_wrap_around() {
    let mut sim = lossy_sim(0.02, 5);
    sim.a.force_isn(65_500);
    sim.b.force_isn(65_530);
    // 2 MiB is 1500 packets each way: well past 65535.
    check_transfer(&mut sim, 2 << 20, Duration::from_secs(600));
}

#[test]
fn transfer_with_large_loopback_packets() {
    for size in [16 * 1024, MAX_PACKET_SIZE] {
        let config = Config {
            loopback_packet_size: size,
            recv_buffer: 4 << 20,
            send_buffer: 4 << 20,
            ..Config::default()
        };
        let path = || Path::lossy(MS / 10, MS / 10, 0.01, 0.01);
        let mut sim = Sim::new(config.clone(), config, 6, path(), path());
        sim.a_addr = "127.0.0.1:6881".parse().unwrap();
        sim.b_addr = "127.0.0.1:6882".parse().unwrap();
        let (a, _) = check_transfer(&mut sim, 8 << 20, Duration::from_secs(120));
        let stats = sim.a.stats();
        assert!(stats.packets_out < 2_000, "{size}: {stats:?} {:?}", a.id);
    }
}

/// Decodes what an endpoint would send next, for checks on the wire.
fn next_packet(ep: &mut Endpoint, now: Instant) -> Option<(std::net::SocketAddr, Vec<u8>)> {
    let mut out = Vec::new();
    let to = ep.poll_transmit(now, &mut out)?;
    Some((to, out))
}

#[test]
fn handshake_on_the_wire_is_what_libtorrent_and_libutp_expect() {
    let mut sim = lossy_sim(0.0, 7);
    let a = sim.a.connect(sim.b_addr, sim.now).unwrap();
    let (_, syn) = next_packet(&mut sim.a, sim.now).unwrap();
    let syn = packet::decode(&syn).unwrap().header;
    assert_eq!(syn.ty, PacketType::Syn);
    assert_eq!(syn.ack_nr, 0);
    assert!(syn.wnd_size > 0);
    let mut raw = Vec::new();
    packet::encode(&mut raw, &syn, &[]);
    sim.b.handle_datagram(sim.a_addr, &raw, sim.now);
    let (_, state) = next_packet(&mut sim.b, sim.now).unwrap();
    let state = packet::decode(&state).unwrap().header;
    // The responder sends on the SYN's id; the initiator sends on id + 1.
    assert_eq!(state.ty, PacketType::State);
    assert_eq!(state.connection_id, syn.connection_id);
    assert_eq!(state.ack_nr, syn.seq_nr);
    // The owner hears of the connection only once the peer proves itself.
    assert!(sim.b.poll_event().is_none());
    let mut raw = Vec::new();
    packet::encode(&mut raw, &state, &[]);
    sim.a.handle_datagram(sim.b_addr, &raw, sim.now);
    assert_eq!(sim.a.poll_event(), Some((a, Event::Connected)));
    assert_eq!(sim.a.send(a, b"hello"), 5);
    let (_, data) = next_packet(&mut sim.a, sim.now).unwrap();
    let data = packet::decode(&data).unwrap();
    assert_eq!(data.header.ty, PacketType::Data);
    assert_eq!(data.header.connection_id, syn.connection_id.wrapping_add(1));
    assert_eq!(data.header.seq_nr, syn.seq_nr.wrapping_add(1));
    // The first data acknowledges the STATE's sequence number minus one:
    // the responder's first DATA will carry the STATE's seq_nr.
    assert_eq!(data.header.ack_nr, state.seq_nr.wrapping_sub(1));
    assert_eq!(data.payload, b"hello");
    let mut raw = Vec::new();
    packet::encode(&mut raw, &data.header, &[]);
    raw.extend_from_slice(b"hello");
    sim.b.handle_datagram(sim.a_addr, &raw, sim.now);
    let (b, ev) = sim.b.poll_event().unwrap();
    assert_eq!(ev, Event::Incoming { from: sim.a_addr });
    assert_eq!(sim.b.poll_event(), Some((b, Event::Readable)));
    assert_eq!(sim.b.send(b, b"world"), 5);
    let (_, reply) = next_packet(&mut sim.b, sim.now).unwrap();
    let reply = packet::decode(&reply).unwrap().header;
    assert_eq!(reply.seq_nr, state.seq_nr);
    assert_eq!(reply.ack_nr, data.header.seq_nr);
}

#[test]
fn a_retransmitted_syn_is_answered_again_not_a_second_connection() {
    let mut sim = lossy_sim(0.0, 8);
    let a = sim.a.connect(sim.b_addr, sim.now).unwrap();
    let (_, syn) = next_packet(&mut sim.a, sim.now).unwrap();
    sim.b.handle_datagram(sim.a_addr, &syn, sim.now);
    // The STATE is lost.
    assert!(next_packet(&mut sim.b, sim.now).is_some());
    // The SYN comes again after the initial RTO.
    sim.now += Duration::from_secs(1);
    sim.a.handle_timeout(sim.now);
    let (_, again) = next_packet(&mut sim.a, sim.now).unwrap();
    assert_eq!(
        again,
        syn[..4]
            .iter()
            .chain(&again[4..])
            .copied()
            .collect::<Vec<_>>()
    );
    sim.b.handle_datagram(sim.a_addr, &again, sim.now);
    assert_eq!(sim.b.stats().connections, 1);
    let (_, state) = next_packet(&mut sim.b, sim.now).unwrap();
    sim.a.handle_datagram(sim.b_addr, &state, sim.now);
    assert_eq!(sim.a.poll_event(), Some((a, Event::Connected)));
}

#[test]
fn data_before_fin_is_delivered_even_when_the_fin_arrives_first() {
    let mut sim = lossy_sim(0.0, 9);
    // Reorder everything heavily: FINs overtake data.
    sim.forward = Path::lossy(10 * MS, 200 * MS, 0.0, 0.0);
    let (_, b) = check_transfer(&mut sim, 300_000, Duration::from_secs(60));
    assert!(b.saw_eof);
}

#[test]
fn reset_by_the_owner_reaches_the_peer() {
    let mut sim = lossy_sim(0.0, 10);
    let mut a = Side::new(pattern(100_000, 3));
    let mut b = Side::new(Vec::new());
    b.close_called = true; // b does not close: it resets
    a.id = Some(sim.a.connect(sim.b_addr, sim.now).unwrap());
    while b.got.len() < 10_000 {
        a.drive(&mut sim.a);
        b.drive(&mut sim.b);
        sim.step(10 * MS);
    }
    let bid = b.id.unwrap();
    sim.b.reset(bid);
    assert_eq!(sim.b.state(bid), None);
    assert_eq!(sim.b.poll_event(), None);
    for _ in 0..100 {
        a.drive(&mut sim.a);
        sim.step(10 * MS);
    }
    assert_eq!(a.closed, Some(CloseReason::Reset));
    assert_eq!(sim.a.stats().connections, 0);
}

#[test]
fn a_peer_that_lost_the_connection_answers_with_a_reset() {
    let mut sim = lossy_sim(0.0, 11);
    let mut a = Side::new(pattern(1 << 20, 4));
    let mut b = Side::new(Vec::new());
    b.close_called = true;
    a.id = Some(sim.a.connect(sim.b_addr, sim.now).unwrap());
    while b.got.len() < 10_000 {
        a.drive(&mut sim.a);
        b.drive(&mut sim.b);
        sim.step(10 * MS);
    }
    // b restarts: a fresh endpoint knows nothing of the connection.
    sim.b = Endpoint::new(Config::default(), fastrand::Rng::with_seed(99), sim.now);
    for _ in 0..200 {
        a.drive(&mut sim.a);
        sim.step(10 * MS);
    }
    assert_eq!(a.closed, Some(CloseReason::Reset));
    assert!(sim.b.stats().resets_sent >= 1);
}

#[test]
fn a_refused_connection_is_reported_as_refused() {
    let b_config = Config {
        accept_incoming: false,
        ..Config::default()
    };
    let mut sim = Sim::new(
        Config::default(),
        b_config,
        12,
        Path::clean(MS),
        Path::clean(MS),
    );
    let a = sim.a.connect(sim.b_addr, sim.now).unwrap();
    sim.run_until(sim.now + Duration::from_secs(1));
    assert_eq!(
        sim.a.poll_event(),
        Some((a, Event::Closed(CloseReason::Refused)))
    );
    assert_eq!(sim.b.stats().syns_refused, 1);
}

#[test]
fn an_unanswered_syn_times_out() {
    let mut sim = lossy_sim(0.0, 13);
    sim.cut = true;
    let a = sim.a.connect(sim.b_addr, sim.now).unwrap();
    sim.run_until(sim.now + Duration::from_secs(60));
    assert_eq!(
        sim.a.poll_event(),
        Some((a, Event::Closed(CloseReason::TimedOut)))
    );
    // 1 + 2 + 4 + 8 s.
    assert_eq!(sim.a.stats().packets_out, 4);
}

#[test]
fn a_cut_link_times_the_connection_out() {
    let mut sim = lossy_sim(0.0, 14);
    let mut a = Side::new(pattern(1 << 20, 5));
    let mut b = Side::new(Vec::new());
    b.close_called = true;
    a.id = Some(sim.a.connect(sim.b_addr, sim.now).unwrap());
    while b.got.len() < 100_000 {
        a.drive(&mut sim.a);
        b.drive(&mut sim.b);
        sim.step(10 * MS);
    }
    sim.cut = true;
    let cut_at = sim.now;
    while a.closed.is_none() {
        a.drive(&mut sim.a);
        sim.step(Duration::from_secs(1));
        assert!(sim.now - cut_at < Duration::from_secs(120));
    }
    assert_eq!(a.closed, Some(CloseReason::TimedOut));
    let lasted = sim.now - cut_at;
    assert!(lasted > Duration::from_secs(10), "{lasted:?}");
}

#[test]
fn an_idle_connection_sends_keepalives_and_a_silent_peer_is_dropped() {
    let mut sim = lossy_sim(0.0, 15);
    let a = sim.a.connect(sim.b_addr, sim.now).unwrap();
    sim.a.send(a, b"x");
    let mut b = Side::new(Vec::new());
    b.close_called = true;
    for _ in 0..10 {
        b.drive(&mut sim.b);
        sim.step(10 * MS);
    }
    let before = sim.a.stats().packets_out;
    sim.run_until(sim.now + Duration::from_secs(120));
    let keepalives = sim.a.stats().packets_out - before;
    // Every 29 s of silence, each way; the peer takes them as valid.
    assert_eq!(keepalives, 4);
    assert_eq!(sim.a.state(a), Some(State::Connected));
    // Now b goes silent for good.
    sim.b = Endpoint::new(
        Config {
            accept_incoming: false,
            ..Config::default()
        },
        fastrand::Rng::with_seed(1),
        sim.now,
    );
    sim.back.loss = 1.0;
    sim.run_until(sim.now + Duration::from_secs(400));
    assert_eq!(sim.a.poll_event().map(|e| e.1), Some(Event::Connected));
    assert_eq!(
        sim.a.poll_event(),
        Some((a, Event::Closed(CloseReason::Idle)))
    );
}

#[test]
fn a_closed_receive_window_is_probed_and_reopens() {
    let config = Config {
        recv_buffer: 64 * 1024,
        ..Config::default()
    };
    let mut sim = Sim::new(
        Config::default(),
        config,
        16,
        Path::clean(5 * MS),
        Path::clean(5 * MS),
    );
    let data = pattern(1 << 20, 6);
    let mut a = Side::new(data.clone());
    let mut b = Side::new(Vec::new());
    // Not half-closed: FIN_WAIT would end it while paused.
    b.close_called = true;
    b.paused = true;
    a.id = Some(sim.a.connect(sim.b_addr, sim.now).unwrap());
    for _ in 0..500 {
        a.drive(&mut sim.a);
        b.drive(&mut sim.b);
        sim.step(10 * MS);
    }
    let stats = sim.a.conn_stats(a.id.unwrap()).unwrap();
    assert!(stats.peer_window < 1400, "{stats:?}");
    assert_eq!(sim.b.readable_len(b.id.unwrap()), 64 * 1024);
    // Probes keep the connection alive, unlike retransmissions.
    sim.run_until(sim.now + Duration::from_secs(60));
    assert_eq!(sim.a.state(a.id.unwrap()), Some(State::Closing));
    b.paused = false;
    let deadline = sim.now + Duration::from_secs(60);
    while b.got.len() < data.len() {
        a.drive(&mut sim.a);
        b.drive(&mut sim.b);
        sim.step(10 * MS);
        assert!(sim.now < deadline, "{} of {}", b.got.len(), data.len());
    }
    assert!(b.got == data);
}

#[test]
fn one_lost_packet_is_fast_retransmitted() {
    let mut sim = Sim::new(
        Config::default(),
        Config::default(),
        17,
        Path::clean(20 * MS),
        Path::clean(20 * MS),
    );
    // Drops the DATA packet with payload starting at offset 500 KiB of the
    // stream: recognisable by its first bytes.
    fn filter(bytes: &[u8]) -> bool {
        let Ok(p) = packet::decode(bytes) else {
            return true;
        };
        !(p.header.ty == PacketType::Data && p.payload.starts_with(&MARK))
    }
    const MARK: [u8; 8] = *b"LOSTLOST";
    let mut data = pattern(1 << 20, 7);
    let at = 500 * 1024 - (500 * 1024 % (1400 - 20));
    data[at..at + 8].copy_from_slice(&MARK);
    sim.filter = Some(filter);
    let mut a = Side::new(data.clone());
    let mut b = Side::new(Vec::new());
    a.id = Some(sim.a.connect(sim.b_addr, sim.now).unwrap());
    let mut lost_once = false;
    while b.closed.is_none() || a.closed.is_none() {
        a.drive(&mut sim.a);
        b.drive(&mut sim.b);
        if let Some(s) = a.id.and_then(|id| sim.a.conn_stats(id)) {
            if s.fast_retransmits > 0 && !lost_once {
                lost_once = true;
                // The retransmission must pass.
                sim.filter = None;
                assert_eq!(s.timeouts, 0);
            }
        }
        sim.step(10 * MS);
        assert!(sim.elapsed() < Duration::from_secs(60));
    }
    assert!(lost_once);
    assert!(b.got == data);
}

#[test]
fn half_open_and_connection_bounds_refuse_connects() {
    let config = Config {
        max_connections: 5,
        max_half_open: 3,
        ..Config::default()
    };
    let mut sim = Sim::new(
        config,
        Config::default(),
        18,
        Path::clean(MS),
        Path::clean(MS),
    );
    let now = sim.now;
    for _ in 0..3 {
        sim.a.connect(sim.b_addr, now).unwrap();
    }
    assert_eq!(
        sim.a.connect(sim.b_addr, now),
        Err(UtpError::TooManyHalfOpen)
    );
    assert_eq!(sim.a.stats().half_open, 3);
    sim.run_until(now + 10 * MS);
    assert_eq!(sim.a.stats().half_open, 0);
    for _ in 0..2 {
        sim.a.connect(sim.b_addr, sim.now).unwrap();
    }
    assert_eq!(
        sim.a.connect(sim.b_addr, sim.now),
        Err(UtpError::TooManyConnections)
    );
}

fn syn_from(id: u16, seq: u16) -> Vec<u8> {
    let h = Header {
        ty: PacketType::Syn,
        connection_id: id,
        timestamp_us: 1,
        timestamp_diff_us: 0,
        wnd_size: 1 << 20,
        seq_nr: seq,
        ack_nr: 0,
    };
    let mut out = Vec::new();
    packet::encode(&mut out, &h, &[]);
    out
}

#[test]
fn a_syn_flood_from_many_addresses_stays_within_bounds() {
    let config = Config {
        max_connections: 40,
        max_half_open_incoming: 8,
        ..Config::default()
    };
    let t0 = Instant::now();
    let mut ep = Endpoint::new(config, fastrand::Rng::with_seed(19), t0);
    let mut out = Vec::new();
    let mut answers = 0;
    for i in 0..20_000u32 {
        let from =
            std::net::SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 1000));
        ep.handle_datagram(from, &syn_from(i as u16, 7), t0 + MS * (i / 100));
        while ep.poll_transmit(t0, &mut out).is_some() {
            answers += 1;
        }
        let s = ep.stats();
        assert!(s.connections <= 8 && s.half_open <= 8, "{s:?}");
        assert!(ep.poll_timeout().is_some());
    }
    // No owner events: nobody proved an address.
    assert_eq!(ep.poll_event(), None);
    assert_eq!(answers, 20_000);
    assert_eq!(ep.stats().syns_evicted, 20_000 - 8);
    // A real peer still gets in during the flood.
    let mut sim = Sim::new(
        Config::default(),
        Config::default(),
        20,
        Path::clean(MS),
        Path::clean(MS),
    );
    sim.b = ep;
    sim.now = t0 + Duration::from_secs(1);
    let mut a = Side::new(pattern(10_000, 8));
    let mut b = Side::new(Vec::new());
    a.id = Some(sim.a.connect(sim.b_addr, sim.now).unwrap());
    while b.got.len() < 10_000 {
        a.drive(&mut sim.a);
        b.drive(&mut sim.b);
        sim.step(MS);
        let from = std::net::SocketAddr::from(([11, 0, 0, 1], sim.rng.u16(..)));
        sim.b.handle_datagram(from, &syn_from(1, 1), sim.now);
        assert!(sim.elapsed() < Duration::from_secs(10));
    }
}

#[test]
fn resets_for_unknown_connections_are_rate_limited() {
    let t0 = Instant::now();
    let mut ep = Endpoint::new(Config::default(), fastrand::Rng::with_seed(21), t0);
    let from: std::net::SocketAddr = "10.1.1.1:5000".parse().unwrap();
    let h = Header {
        ty: PacketType::Data,
        connection_id: 4242,
        timestamp_us: 1,
        timestamp_diff_us: 0,
        wnd_size: 0,
        seq_nr: 9,
        ack_nr: 3,
    };
    let mut data = Vec::new();
    packet::encode(&mut data, &h, &[]);
    data.extend_from_slice(b"stray");
    let count = |ep: &mut Endpoint, now| {
        let mut out = Vec::new();
        let mut n = 0;
        while let Some(to) = ep.poll_transmit(now, &mut out) {
            let r = packet::decode(&out).unwrap().header;
            assert_eq!(
                (to, r.ty, r.connection_id, r.ack_nr),
                (from, PacketType::Reset, 4242, 9)
            );
            n += 1;
        }
        n
    };
    for _ in 0..1000 {
        ep.handle_datagram(from, &data, t0);
    }
    assert_eq!(count(&mut ep, t0), RESET_BURST as usize);
    // Then one stray packet a millisecond for ten seconds: the rate.
    let mut sent = 0;
    for ms in 1..=10_000u32 {
        ep.handle_datagram(from, &data, t0 + MS * ms);
        sent += count(&mut ep, t0);
    }
    assert_eq!(sent, 10 * RESET_RATE as usize);
    assert_eq!(
        ep.stats().resets_suppressed,
        11_000 - RESET_BURST as u64 - 10 * RESET_RATE
    );
    // A RESET is never answered.
    let mut reset = Vec::new();
    packet::encode(
        &mut reset,
        &Header {
            ty: PacketType::Reset,
            ..h
        },
        &[],
    );
    ep.handle_datagram(from, &reset, t0 + Duration::from_secs(5));
    assert_eq!(count(&mut ep, t0), 0);
}

#[test]
fn malformed_datagrams_are_counted_and_dropped() {
    let t0 = Instant::now();
    let mut ep = Endpoint::new(Config::default(), fastrand::Rng::with_seed(22), t0);
    let from: std::net::SocketAddr = "10.1.1.1:5000".parse().unwrap();
    for bad in [&b""[..], b"d1:ad2:id20:", &[0x01; 19], &[0x11, 9, 0, 0][..]] {
        ep.handle_datagram(from, bad, t0);
    }
    assert_eq!(ep.stats().invalid, 4);
    assert_eq!(ep.poll_transmit(t0, &mut Vec::new()), None);
}

#[test]
fn a_clean_path_is_filled_quickly() {
    let mut sim = Sim::new(
        Config::default(),
        Config::default(),
        23,
        Path::clean(20 * MS),
        Path::clean(20 * MS),
    );
    let data = pattern(8 << 20, 9);
    let (a, b) = transfer(&mut sim, data.clone(), Vec::new(), Duration::from_secs(60));
    assert!(b.got == data);
    eprintln!("clean: {:?} {:?}", sim.elapsed(), a.last_stats);
}

/// A loss-based (Reno-like) sender sharing the forward bottleneck: one
/// 1400-byte packet per window slot, +1 packet per window per round trip,
/// halved on a loss (once per round trip).
struct Reno {
    cwnd: f64,
    ssthresh: f64,
    in_flight: usize,
    /// (when, delivered): an ACK or a loss detected then.
    events: std::collections::BinaryHeap<std::cmp::Reverse<(Instant, bool)>>,
    last_cut: Instant,
    active: bool,
}

const RENO_PACKET: usize = 1400;

impl Reno {
    fn new(now: Instant) -> Reno {
        Reno {
            cwnd: 2.0,
            ssthresh: f64::MAX,
            in_flight: 0,
            events: Default::default(),
            last_cut: now,
            active: false,
        }
    }

    fn next_event(&self) -> Option<Instant> {
        self.events.peek().map(|e| e.0 .0)
    }

    fn run(&mut self, sim: &mut Sim, back_delay: Duration, rtt: Duration) {
        let now = sim.now;
        while let Some(&std::cmp::Reverse((t, delivered))) = self.events.peek() {
            if t > now {
                break;
            }
            self.events.pop();
            self.in_flight -= 1;
            if delivered {
                self.cwnd += if self.cwnd < self.ssthresh {
                    1.0
                } else {
                    1.0 / self.cwnd
                };
            } else if now - self.last_cut > rtt {
                self.ssthresh = (self.cwnd / 2.0).max(2.0);
                self.cwnd = self.ssthresh;
                self.last_cut = now;
            }
        }
        while self.active && (self.in_flight as f64) < self.cwnd {
            self.in_flight += 1;
            let event = match sim.forward.offer(RENO_PACKET, now, &mut sim.rng)[0] {
                Some(arrival) => (arrival + back_delay, true),
                // Detected by duplicate ACKs about a round trip later.
                None => (now + rtt, false),
            };
            self.events.push(std::cmp::Reverse(event));
        }
    }
}

/// A bulk uTP flow from a to b over `sim.forward`, with a Reno flow
/// active during `reno_on`; returns, per `phases` boundary, the uTP bytes
/// received and the time-averaged queuing delay of the bottleneck.
fn bottleneck_run(
    sim: &mut Sim,
    phases: &[Duration],
    reno_on: (Duration, Duration),
) -> Vec<(u64, Duration)> {
    let chunk = pattern(64 * 1024, 10);
    let a = sim.a.connect(sim.b_addr, sim.now).unwrap();
    let mut b = None;
    let mut reno = Reno::new(sim.now);
    let back_delay = sim.back.delay;
    let rtt = sim.forward.delay + back_delay;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    for &end in phases {
        let (mut bytes, mut delay_sum, mut time) = (0u64, 0f64, 0f64);
        while sim.elapsed() < end {
            while sim.a.send(a, &chunk) > 0 {}
            while sim.a.poll_event().is_some() {}
            while let Some((id, ev)) = sim.b.poll_event() {
                if let Event::Incoming { .. } = ev {
                    b = Some(id);
                }
            }
            if let Some(b) = b {
                loop {
                    let n = sim.b.recv(b, &mut buf);
                    if n == 0 {
                        break;
                    }
                    bytes += n as u64;
                }
            }
            let t = sim.elapsed();
            reno.active = t >= reno_on.0 && t < reno_on.1;
            reno.run(sim, back_delay, rtt);
            let queued = sim.forward.queue_delay(sim.now);
            let before = sim.now;
            let max = reno.next_event().map_or(10 * MS, |e| {
                e.saturating_duration_since(sim.now).min(10 * MS)
            });
            sim.step(max.max(Duration::from_micros(100)));
            let dt = (sim.now - before).as_secs_f64();
            delay_sum += queued.as_secs_f64() * dt;
            time += dt;
        }
        out.push((bytes, Duration::from_secs_f64(delay_sum / time.max(1e-9))));
    }
    assert_eq!(sim.a.state(a), Some(State::Connected));
    out
}

const RATE: u64 = 500_000;

fn bottleneck_sim(queue: usize) -> Sim {
    Sim::new(
        Config::default(),
        Config::default(),
        24,
        Path::bottleneck(RATE, queue, 20 * MS),
        Path::clean(20 * MS),
    )
}

#[test]
fn ledbat_keeps_the_queue_near_the_target_delay() {
    // A queue of 2 s: nothing is lost, only delay tells LEDBAT to stop.
    let mut sim = bottleneck_sim(2 * RATE as usize);
    let s = Duration::from_secs;
    let r = bottleneck_run(&mut sim, &[s(20), s(80)], (s(1000), s(1000)));
    let (bytes, delay) = r[1];
    let share = bytes as f64 / (RATE as f64 * 60.0);
    eprintln!("alone: {share:.3} of the link, queuing delay {delay:?}; slow start {r:?}");
    assert!(share > 0.95, "{share}");
    assert!(delay > 70 * MS && delay < 120 * MS, "{delay:?}");
    assert_eq!(sim.forward.dropped, 0);
}

#[test]
fn ledbat_yields_to_a_loss_based_flow_and_recovers() {
    // A queue of 400 ms: the Reno flow fills it, LEDBAT sees 100+ ms.
    let mut sim = bottleneck_sim(RATE as usize * 2 / 5);
    let s = Duration::from_secs;
    let r = bottleneck_run(
        &mut sim,
        &[s(20), s(40), s(100), s(110), s(140)],
        (s(40), s(100)),
    );
    let share = |(bytes, _): (u64, Duration), secs: f64| bytes as f64 / (RATE as f64 * secs);
    let alone = share(r[1], 20.0);
    let competing = share(r[2], 60.0);
    let after = share(r[4], 30.0);
    eprintln!(
        "alone {alone:.3}, with Reno {competing:.3} (queue {:?}), after {after:.3} (queue {:?})",
        r[2].1, r[4].1
    );
    assert!(alone > 0.9, "{alone}");
    assert!(competing < 0.1, "{competing}");
    assert!(
        r[2].1 > 150 * MS,
        "the competitor filled the queue: {:?}",
        r[2].1
    );
    assert!(after > 0.9, "{after}");
    assert!(r[4].1 < 130 * MS, "{:?}", r[4].1);
}

/// CPU cost of the sans-IO code alone: two endpoints on loopback
/// addresses, datagrams handed straight across, a fake clock advancing
/// 20 µs per round. Reports MiB/s and CPU time per MiB; run with
/// `cargo test --release --lib utp::tests::throughput -- --ignored --nocapture`.
#[test]
#[ignore]
fn throughput_in_memory() {
    const TOTAL: u64 = 512 << 20;
    for size in [DEFAULT_PACKET_SIZE, 16 * 1024, MAX_PACKET_SIZE] {
        let config = Config {
            loopback_packet_size: size,
            send_buffer: 4 << 20,
            recv_buffer: 4 << 20,
            ..Config::default()
        };
        let t0 = Instant::now();
        let mut now = t0;
        let a_addr: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b_addr: std::net::SocketAddr = "127.0.0.1:2".parse().unwrap();
        let mut a = Endpoint::new(config.clone(), fastrand::Rng::with_seed(1), now);
        let mut b = Endpoint::new(config, fastrand::Rng::with_seed(2), now);
        let id = a.connect(b_addr, now).unwrap();
        let chunk = pattern(256 * 1024, 11);
        let mut buf = vec![0u8; 256 * 1024];
        let mut out = Vec::with_capacity(MAX_PACKET_SIZE);
        let (mut received, mut b_id, mut check) = (0u64, None, 0u64);
        let started = std::time::Instant::now();
        while received < TOTAL {
            while a.send(
                id,
                &chunk[(received as usize + a.send_buffer_room(id)) % 4096..],
            ) > 0
            {}
            while a.poll_transmit(now, &mut out).is_some() {
                b.handle_datagram(a_addr, &out, now);
            }
            while b.poll_transmit(now, &mut out).is_some() {
                a.handle_datagram(b_addr, &out, now);
            }
            while let Some((i, _)) = b.poll_event() {
                b_id = Some(i);
            }
            while a.poll_event().is_some() {}
            if let Some(bid) = b_id {
                loop {
                    let n = b.recv(bid, &mut buf);
                    if n == 0 {
                        break;
                    }
                    check = check.wrapping_add(u64::from(buf[n - 1]));
                    received += n as u64;
                }
            }
            now += Duration::from_micros(20);
            if a.poll_timeout().is_some_and(|t| t <= now) {
                a.handle_timeout(now);
            }
        }
        let cpu = started.elapsed();
        let stats = a.conn_stats(id).unwrap();
        let mib = TOTAL as f64 / (1 << 20) as f64;
        eprintln!(
            "packet {size:>5}: {:>6.0} MiB/s, {:>5.0} µs CPU per MiB ({} packets out, {} retransmits, check {check})",
            mib / cpu.as_secs_f64(),
            cpu.as_secs_f64() * 1e6 / mib,
            stats.packets_out,
            stats.retransmits,
        );
        assert_eq!(stats.retransmits, 0);
    }
}

/// b finishes first; a reads everything, then closes after b forgot the
/// connection (as libtorrent does once its FIN is acknowledged, silently,
/// or as libutp does, answering with a RESET). Either way a ends Finished.
fn close_after_the_peer_forgot(silent: bool) {
    let mut sim = lossy_sim(0.0, 25);
    let data = pattern(50_000, 12);
    let mut a = Side::new(Vec::new());
    a.close_called = true; // a closes by hand below
    let mut b = Side::new(data.clone());
    a.id = Some(sim.a.connect(sim.b_addr, sim.now).unwrap());
    sim.a.send(a.id.unwrap(), b"hi");
    while !a.saw_eof {
        a.drive(&mut sim.a);
        b.drive(&mut sim.b);
        sim.step(10 * MS);
        assert!(sim.elapsed() < Duration::from_secs(30));
    }
    // a's ACK of b's FIN reaches b; then b forgets the connection.
    sim.run_until(sim.now + Duration::from_secs(1));
    assert!(a.got == data);
    assert_eq!(sim.b.state(b.id.unwrap()), Some(State::Closing));
    if silent {
        sim.cut = true;
    } else {
        sim.b = Endpoint::new(Config::default(), fastrand::Rng::with_seed(5), sim.now);
    }
    sim.a.close(a.id.unwrap());
    while a.closed.is_none() {
        a.drive(&mut sim.a);
        sim.step(100 * MS);
        assert!(sim.elapsed() < Duration::from_secs(60));
    }
    assert_eq!(a.closed, Some(CloseReason::Finished));
}

#[test]
fn our_fin_to_a_peer_that_forgot_silently_still_finishes() {
    close_after_the_peer_forgot(true);
}

#[test]
fn our_fin_answered_with_a_reset_after_the_peer_finished_still_finishes() {
    close_after_the_peer_forgot(false);
}
