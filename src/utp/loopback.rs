//! Measurements over real loopback UDP sockets, for the reactor's choices
//! (socket buffers, datagrams per turn, packet size): ignored tests that
//! report, run by hand. Test code only: the module itself has no socket.
//!
//! `cargo test --release --lib utp::loopback -- --ignored --nocapture`

use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use nix::sys::socket::{setsockopt, sockopt};

use super::{Config, Endpoint, Event, MAX_PACKET_SIZE};

/// One side: its socket, its endpoint, and a datagram the socket would
/// not take yet.
struct Node {
    sock: UdpSocket,
    ep: Endpoint,
    held: Option<(SocketAddr, Vec<u8>)>,
}

impl Node {
    fn new(config: Config, seed: u64, sock_buf: Option<usize>, now: Instant) -> Node {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_nonblocking(true).unwrap();
        if let Some(size) = sock_buf {
            setsockopt(&sock, sockopt::RcvBuf, &size).unwrap();
            setsockopt(&sock, sockopt::SndBuf, &size).unwrap();
        }
        Node {
            sock,
            ep: Endpoint::new(config, fastrand::Rng::with_seed(seed), now),
            held: None,
        }
    }

    /// Reads up to `batch` datagrams into the endpoint.
    fn read(&mut self, buf: &mut [u8], batch: usize) {
        for _ in 0..batch {
            match self.sock.recv_from(buf) {
                Ok((n, from)) => self.ep.handle_datagram(from, &buf[..n], Instant::now()),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// Sends what the endpoint has, until the socket is full.
    fn write(&mut self, out: &mut Vec<u8>) {
        loop {
            let (to, bytes) = match self.held.take() {
                Some((to, bytes)) => (to, bytes),
                None => match self.ep.poll_transmit(Instant::now(), out) {
                    Some(to) => (to, std::mem::take(out)),
                    None => return,
                },
            };
            match self.sock.send_to(&bytes, to) {
                Ok(_) => *out = bytes,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.held = Some((to, bytes));
                    return;
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    fn timers(&mut self) {
        let now = Instant::now();
        if self.ep.poll_timeout().is_some_and(|t| t <= now) {
            self.ep.handle_timeout(now);
        }
    }
}

/// Moves `total` bytes from one node to the other, one thread doing both.
fn run(packet: usize, sock_buf: Option<usize>, conn_buf: usize, batch: usize, total: u64) {
    let config = Config {
        loopback_packet_size: packet,
        send_buffer: conn_buf,
        recv_buffer: conn_buf,
        ..Config::default()
    };
    let now = Instant::now();
    let mut a = Node::new(config.clone(), 1, sock_buf, now);
    let mut b = Node::new(config, 2, sock_buf, now);
    let id = a.ep.connect(b.sock.local_addr().unwrap(), now).unwrap();
    let chunk = vec![0x42u8; 256 * 1024];
    let mut buf = vec![0u8; MAX_PACKET_SIZE + 1];
    let mut out = Vec::with_capacity(MAX_PACKET_SIZE);
    let mut app = vec![0u8; 256 * 1024];
    let (mut received, mut b_id) = (0u64, None);
    let started = Instant::now();
    while received < total {
        assert!(started.elapsed() < Duration::from_secs(120), "stalled");
        while a.ep.send(id, &chunk) > 0 {}
        a.write(&mut out);
        b.read(&mut buf, batch);
        while let Some((i, ev)) = b.ep.poll_event() {
            if let Event::Incoming { .. } = ev {
                b_id = Some(i);
            }
        }
        if let Some(bid) = b_id {
            loop {
                let n = b.ep.recv(bid, &mut app);
                if n == 0 {
                    break;
                }
                received += n as u64;
            }
        }
        b.write(&mut out);
        a.read(&mut buf, batch);
        while a.ep.poll_event().is_some() {}
        a.timers();
        b.timers();
    }
    let secs = started.elapsed().as_secs_f64();
    let s = a.ep.conn_stats(id).unwrap();
    eprintln!(
        "packet {packet:>5} sockbuf {:>8} window {:>4} KiB batch {batch:>3}: {:>6.0} MiB/s, rtt {:?}, cwnd {} KiB, {} retransmits, {} timeouts",
        sock_buf.map_or("default".to_string(), |b| b.to_string()),
        conn_buf >> 10,
        total as f64 / (1 << 20) as f64 / secs,
        s.rtt.unwrap_or_default(),
        s.cwnd / 1024,
        s.retransmits,
        s.timeouts,
    );
}

#[test]
#[ignore]
fn loopback_throughput() {
    for packet in [1400, 16 * 1024, MAX_PACKET_SIZE] {
        for sock_buf in [None, Some(1 << 20), Some(4 << 20)] {
            for conn_buf in [1 << 20, 4 << 20] {
                run(packet, sock_buf, conn_buf, 64, 256 << 20);
            }
        }
    }
    for batch in [1, 8, 256] {
        run(MAX_PACKET_SIZE, Some(1 << 20), 1 << 20, batch, 256 << 20);
    }
}
