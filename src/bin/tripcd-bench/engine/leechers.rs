//! `tripcd-bench engine leechers`: many simulated leechers against one
//! seeding daemon, for its IPC latency and its memory per connection.
//!
//! Each leecher is a plain TCP connection speaking just enough of the
//! peer wire (BEP 3, plaintext): the handshake, `interested`, and while
//! unchoked a pipeline of requests for random blocks, whose data is
//! counted and dropped. All of them run on one mio loop in this process.
//! The run has two parts:
//! 1. at rest: every leecher connected and handshaken (the daemon has sent
//!    its bitfield), nobody interested; the daemon's resident memory then,
//!    against before, gives the memory per connection;
//! 2. under load: every leecher interested, the daemon's choker serving
//!    its unchoked few at full speed, while IPC clients keep a tagged
//!    `noop` in flight each; their latency is the figure.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use serde_json::json;

use tripcd::engine::geometry::Geometry;
use tripcd::registry::Metainfo;

use super::ipc::IpcLoad;
use crate::load::rss_kib;

/// Arguments of `engine leechers`.
#[derive(clap::Args, Debug)]
pub struct LeechersArgs {
    /// The seeding daemon's peer address
    #[arg(long)]
    peer: SocketAddr,
    /// The torrent it seeds (for the info hash and the pieces)
    #[arg(long)]
    torrent: PathBuf,
    /// The daemon's IPC socket (for the latency load)
    #[arg(long)]
    socket: PathBuf,
    /// The daemon's pid (for its resident memory)
    #[arg(long)]
    pid: u32,
    /// Leechers
    #[arg(short = 'c', long, default_value_t = 200)]
    connections: usize,
    /// IPC clients, each keeping one tagged noop in flight
    #[arg(long, default_value_t = 50)]
    ipc_clients: usize,
    /// Seconds under load
    #[arg(short = 't', long, default_value_t = 10.0)]
    seconds: f64,
    /// Requests each unchoked leecher keeps in flight
    #[arg(long, default_value_t = 64)]
    pipeline: usize,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

/// Requested block size.
const BLOCK: u32 = 16 << 10;

/// Largest message accepted from the daemon: a block and its header.
const MAX_MESSAGE: usize = BLOCK as usize + 13;

/// Seconds to wait for every leecher's handshake and bitfield.
const SETUP_SECS: u64 = 60;

/// One simulated leecher.
struct Leecher {
    stream: TcpStream,
    input: Vec<u8>,
    output: Vec<u8>,
    /// The daemon's handshake arrived.
    shaken: bool,
    /// Its bitfield (or a have) arrived: the connection is at rest.
    settled: bool,
    unchoked: bool,
    in_flight: usize,
    /// Next block to ask for (a cursor from a random start).
    next: u64,
    dead: bool,
}

/// The torrent, as far as requests go.
struct Shape {
    geometry: Geometry,
    info_hash: [u8; 20],
}

impl Shape {
    /// Blocks in the torrent, numbered across pieces.
    fn blocks(&self) -> u64 {
        self.geometry.total().div_ceil(BLOCK as u64)
    }
    /// (piece, begin, length) of block `i` (pieces are whole blocks).
    fn block(&self, i: u64) -> (u32, u32, u32) {
        let at = i * BLOCK as u64;
        let pl = self.geometry.piece_length();
        let len = (self.geometry.total() - at).min(BLOCK as u64);
        ((at / pl) as u32, (at % pl) as u32, len as u32)
    }
}

fn handshake(info_hash: &[u8; 20], n: usize) -> Vec<u8> {
    let mut h = vec![19];
    h.extend_from_slice(b"BitTorrent protocol");
    h.extend_from_slice(&[0; 8]);
    h.extend_from_slice(info_hash);
    let id = format!("-LB0001-{n:012}");
    h.extend_from_slice(&id.as_bytes()[..20]);
    h
}

fn message(out: &mut Vec<u8>, id: u8, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32 + 1).to_be_bytes());
    out.push(id);
    out.extend_from_slice(payload);
}

/// What the run measured.
struct Figures {
    connected: usize,
    rss_before_kib: u64,
    rss_rest_kib: u64,
    rss_load_kib: u64,
    received: u64,
    load_seconds: f64,
    lost: usize,
}

struct Sim {
    poll: Poll,
    leechers: Vec<Leecher>,
    shape: Shape,
    pipeline: usize,
    received: u64,
}

impl Sim {
    fn connect(args: &LeechersArgs, shape: Shape) -> io::Result<Sim> {
        let poll = Poll::new()?;
        let mut rng = fastrand::Rng::with_seed(7);
        let mut leechers = Vec::with_capacity(args.connections);
        for n in 0..args.connections {
            let mut stream = TcpStream::connect(args.peer)?;
            poll.registry().register(
                &mut stream,
                Token(n),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            leechers.push(Leecher {
                stream,
                input: Vec::new(),
                output: handshake(&shape.info_hash, n),
                shaken: false,
                settled: false,
                unchoked: false,
                in_flight: 0,
                next: rng.u64(..shape.blocks()),
                dead: false,
            });
        }
        Ok(Sim {
            poll,
            leechers,
            shape,
            pipeline: args.pipeline,
            received: 0,
        })
    }

    /// Runs the loop until `until` says stop or `deadline` passes.
    fn run(&mut self, deadline: Instant, until: &dyn Fn(&Sim) -> bool) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut buf = vec![0u8; 256 << 10];
        while !until(self) && Instant::now() < deadline {
            let wait = deadline.saturating_duration_since(Instant::now());
            self.poll
                .poll(&mut events, Some(wait.min(Duration::from_millis(50))))?;
            for e in events.iter() {
                let n = e.token().0;
                if e.is_readable() {
                    self.read(n, &mut buf);
                }
                self.flush(n);
            }
        }
        Ok(())
    }

    fn read(&mut self, n: usize, buf: &mut [u8]) {
        loop {
            let Some(l) = self.leechers.get_mut(n) else {
                return;
            };
            if l.dead {
                return;
            }
            match l.stream.read(buf) {
                Ok(0) => {
                    l.dead = true;
                    return;
                }
                Ok(k) => {
                    l.input.extend_from_slice(&buf[..k]);
                    self.parse(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    l.dead = true;
                    return;
                }
            }
        }
    }

    fn parse(&mut self, n: usize) {
        let l = &mut self.leechers[n];
        let mut at = 0;
        if !l.shaken {
            if l.input.len() < 68 {
                return;
            }
            l.shaken = true;
            at = 68;
        }
        let mut got = 0u64;
        while l.input.len() >= at + 4 {
            let len = u32::from_be_bytes([
                l.input[at],
                l.input[at + 1],
                l.input[at + 2],
                l.input[at + 3],
            ]) as usize;
            if len > MAX_MESSAGE.max(self.shape.blocks() as usize / 8 + 64) {
                l.dead = true;
                return;
            }
            if l.input.len() < at + 4 + len {
                break;
            }
            match l.input.get(at + 4) {
                Some(0) => {
                    l.unchoked = false;
                    l.in_flight = 0;
                }
                Some(1) => l.unchoked = true,
                Some(4) | Some(5) => l.settled = true,
                Some(7) => {
                    got += len.saturating_sub(9) as u64;
                    l.in_flight = l.in_flight.saturating_sub(1);
                }
                _ => {}
            }
            at += 4 + len;
        }
        l.input.drain(..at);
        self.received += got;
        self.top_up(n);
    }

    /// Keeps the pipeline of an unchoked, interested leecher full.
    fn top_up(&mut self, n: usize) {
        let blocks = self.shape.blocks();
        let l = &mut self.leechers[n];
        if !l.unchoked {
            return;
        }
        while l.in_flight < self.pipeline {
            let (piece, begin, len) = self.shape.block(l.next % blocks);
            l.next = l.next.wrapping_add(1);
            let mut p = [0u8; 12];
            p[..4].copy_from_slice(&piece.to_be_bytes());
            p[4..8].copy_from_slice(&begin.to_be_bytes());
            p[8..].copy_from_slice(&len.to_be_bytes());
            message(&mut l.output, 6, &p);
            l.in_flight += 1;
        }
    }

    fn flush(&mut self, n: usize) {
        let Some(l) = self.leechers.get_mut(n) else {
            return;
        };
        while !l.output.is_empty() && !l.dead {
            match l.stream.write(&l.output) {
                Ok(0) => l.dead = true,
                Ok(k) => {
                    l.output.drain(..k);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => l.dead = true,
            }
        }
    }

    /// Every leecher says it is interested.
    fn interested(&mut self) {
        for n in 0..self.leechers.len() {
            message(&mut self.leechers[n].output, 2, &[]);
            self.flush(n);
        }
    }

    fn settled(&self) -> usize {
        self.leechers
            .iter()
            .filter(|l| l.settled && !l.dead)
            .count()
    }

    fn lost(&self) -> usize {
        self.leechers.iter().filter(|l| l.dead).count()
    }
}

fn measure(args: &LeechersArgs) -> io::Result<(Figures, super::IpcReport)> {
    let bytes = std::fs::read(&args.torrent)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", args.torrent.display())))?;
    let meta = Metainfo::parse(&bytes).map_err(|e| io::Error::other(format!("torrent: {e}")))?;
    let shape = Shape {
        geometry: meta.geometry,
        info_hash: meta.info_hash,
    };
    let rss = |what: &str| {
        rss_kib(args.pid)
            .ok_or_else(|| io::Error::other(format!("no RSS of pid {} ({what})", args.pid)))
    };
    let rss_before_kib = rss("before")?;
    let mut sim = Sim::connect(args, shape)?;
    let want = args.connections;
    sim.run(Instant::now() + Duration::from_secs(SETUP_SECS), &|s| {
        s.settled() + s.lost() >= want
    })?;
    let connected = sim.settled();
    if connected == 0 {
        return Err(io::Error::other("no leecher got the daemon's bitfield"));
    }
    // A moment for the daemon to finish with the connections' setup.
    sim.run(Instant::now() + Duration::from_millis(500), &|_| false)?;
    let rss_rest_kib = rss("at rest")?;

    let ipc = IpcLoad::start(&args.socket, args.ipc_clients)?;
    let start = Instant::now();
    sim.interested();
    sim.run(start + Duration::from_secs_f64(args.seconds), &|_| false)?;
    let load_seconds = start.elapsed().as_secs_f64();
    let rss_load_kib = rss("under load")?;
    let report = ipc.finish()?;
    Ok((
        Figures {
            connected,
            rss_before_kib,
            rss_rest_kib,
            rss_load_kib,
            received: sim.received,
            load_seconds,
            lost: sim.lost(),
        },
        report,
    ))
}

/// Runs `engine leechers`.
pub fn run(args: &LeechersArgs) -> io::Result<()> {
    let (f, ipc) = measure(args)?;
    let per_conn =
        (f.rss_rest_kib.saturating_sub(f.rss_before_kib) as f64 * 1024.0) / f.connected as f64;
    let mib_s = f.received as f64 / (1 << 20) as f64 / f.load_seconds;
    if args.json {
        let mut j = json!({
            "leechers": f.connected,
            "lost": f.lost,
            "rss_before_kib": f.rss_before_kib,
            "rss_rest_kib": f.rss_rest_kib,
            "rss_load_kib": f.rss_load_kib,
            "bytes_per_connection_at_rest": per_conn.round(),
            "seconds": (f.load_seconds * 1000.0).round() / 1000.0,
            "upload_mib_s": (mib_s * 10.0).round() / 10.0,
        });
        j["ipc"] = ipc.to_json();
        println!("{j}");
    } else {
        println!(
            "{} leechers ({} lost): daemon RSS {} KiB before, {} KiB at rest ({:.1} KiB per connection), \
             {} KiB under load; seeded {:.1} MiB/s for {:.1} s; IPC ({} clients) p50 {} us, p99 {} us, \
             max {} us, {} replies, {} errors",
            f.connected,
            f.lost,
            f.rss_before_kib,
            f.rss_rest_kib,
            per_conn / 1024.0,
            f.rss_load_kib,
            mib_s,
            f.load_seconds,
            ipc.clients,
            ipc.p50_us,
            ipc.p99_us,
            ipc.max_us,
            ipc.requests,
            ipc.errors
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_cover_the_torrent_with_a_short_last_one() {
        let s = Shape {
            geometry: Geometry::new(2 * BLOCK as u64, 3 * BLOCK as u64 + 10).unwrap(),
            info_hash: [0; 20],
        };
        assert_eq!(s.blocks(), 4);
        assert_eq!(s.block(0), (0, 0, BLOCK));
        assert_eq!(s.block(1), (0, BLOCK, BLOCK));
        assert_eq!(s.block(3), (1, BLOCK, 10));
    }

    #[test]
    fn handshakes_carry_the_hash_and_distinct_ids() {
        let a = handshake(&[9; 20], 1);
        let b = handshake(&[9; 20], 2);
        assert_eq!(a.len(), 68);
        assert_eq!(&a[28..48], &[9; 20]);
        assert_ne!(a[48..], b[48..]);
    }
}
