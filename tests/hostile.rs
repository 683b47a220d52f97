//! Misbehaving peers against real tripcd processes: a scripted fake peer
//! (a plain TCP socket in the test, the wire written by hand) sends
//! oversize and misshapen messages, asks for pieces that are not there,
//! sends blocks nobody asked for, serves corrupt data, never reads,
//! trickles its handshake, or floods the peer port with connections.
//! Each time the peer is cut off or contained, the daemon keeps answering
//! IPC, and an honest download through it completes.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::fakepeer::{self, FakePeer, Got};
use common::tracker::TestTracker;
use common::{add, announcing_daemon, multi_torrent, noise, status, wait_for_state, Daemon, HANG};
use tempfile::TempDir;
use tripcd::codec::Value;

/// A torrent of one file, `name/data.bin`.
struct Tor {
    meta: Vec<u8>,
    data: Vec<u8>,
    hash: [u8; 20],
    name: String,
    piece_len: usize,
}

impl Tor {
    fn new(tracker: &TestTracker, name: &str, size: usize, piece_len: usize) -> Tor {
        let data = noise(size as u32 ^ 0x5eed, size);
        let meta = multi_torrent(name, &[("data.bin", &data)], piece_len, &tracker.url());
        let hash = tripcd::registry::Metainfo::parse(&meta)
            .expect("a torrent")
            .info_hash;
        Tor {
            meta,
            data,
            hash,
            name: name.to_string(),
            piece_len,
        }
    }

    fn pieces(&self) -> usize {
        self.data.len().div_ceil(self.piece_len)
    }

    /// The bytes of a block.
    fn block(&self, piece: u32, begin: u32, len: u32) -> &[u8] {
        let start = piece as usize * self.piece_len + begin as usize;
        &self.data[start..start + len as usize]
    }

    /// A download directory holding `data` as this torrent's file.
    fn dir_with(&self, data: &[u8]) -> TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(&self.name)).unwrap();
        std::fs::write(dir.path().join(&self.name).join("data.bin"), data).unwrap();
        dir
    }
}

/// A tripcd announcing to the test tracker, which tells it only of the
/// peers on the ports it `sees`; its directories live as long as it.
struct Node {
    d: Daemon,
    port: u16,
    id: i64,
    data: TempDir,
    _state: TempDir,
}

impl Node {
    /// A tripcd with `settings` applied, then `tor` added with its data
    /// in `data` (started).
    fn start(
        tracker: &TestTracker,
        tor: &Tor,
        data: TempDir,
        sees: &[u16],
        settings: &[(&str, Value)],
    ) -> Node {
        let state = tempfile::tempdir().unwrap();
        let (d, port) = announcing_daemon(state.path());
        for (k, v) in settings {
            d.client().request(k, v).expect(k);
        }
        tracker.restrict_for(tor.hash, port, sees.to_vec());
        let id = add(&mut d.client(), &tor.meta, data.path());
        Node {
            d,
            port,
            id,
            data,
            _state: state,
        }
    }

    /// A seeder of `tor` (checked, seeding).
    fn seeder(tracker: &TestTracker, tor: &Tor, sees: &[u16], settings: &[(&str, Value)]) -> Node {
        let n = Node::start(tracker, tor, tor.dir_with(&tor.data), sees, settings);
        n.wait_for_state("seeding");
        n
    }

    /// A leecher of `tor`, starting from nothing.
    fn leecher(tracker: &TestTracker, tor: &Tor, sees: &[u16]) -> Node {
        Node::start(tracker, tor, tempfile::tempdir().unwrap(), sees, &[])
    }

    fn wait_for_state(&self, state: &str) {
        wait_for_state(&mut self.d.client(), self.id, state);
    }

    fn status(&self, ty: &str) -> Value {
        status(&mut self.d.client(), self.id, ty)
    }

    /// The download finished with every byte right.
    fn assert_complete(&self, tor: &Tor) {
        self.wait_for_state("seeding");
        let got = std::fs::read(self.data.path().join(&tor.name).join("data.bin")).unwrap();
        assert!(got == tor.data, "the downloaded data differs");
    }

    /// IPC answers: a `noop`, and `get-status` of the torrent.
    fn assert_ipc(&self) {
        let mut c = self.d.client();
        assert_eq!(c.request("noop", &Value::empty()).expect("noop"), None);
        let state = status(&mut c, self.id, "state");
        assert!(state.as_str().is_some(), "get-status: {state:?}");
    }

    /// The log line saying why the connection from `peer` was closed.
    fn closing_reason(&mut self, peer: SocketAddr) -> String {
        let needle = format!("peer {peer}: closing: ");
        let line = self
            .d
            .wait_for_log(&needle)
            .unwrap_or_else(|| panic!("no `{needle}` in the log"));
        line[line.find(&needle).unwrap() + needle.len()..].to_string()
    }
}

/// One 128 KiB block plus the 9-byte piece header: the longest message a
/// peer may send while the torrent's bitfield is shorter (issue 18).
const MAX_MESSAGE: usize = (128 << 10) + 9;

/// Oversize messages, bitfields of the wrong size and fixed-size messages
/// of another size each get the connection closed with the reason logged;
/// a message of exactly the limit is not too long. IPC answers all along
/// and the download then completes from an honest seeder.
#[test]
fn oversize_and_misshapen_messages_close_the_connection() {
    let tracker = TestTracker::start();
    let tor = Tor::new(&tracker, "oversize", 600_000, 32 << 10);
    assert_eq!(tor.pieces(), 19, "a bitfield of 3 bytes, 5 spare bits");
    let mut leecher = Node::leecher(&tracker, &tor, &[]);
    leecher.wait_for_state("downloading");

    let mut huge_piece = ((1u32 << 20) + 9).to_be_bytes().to_vec();
    huge_piece.extend_from_slice(&[7, 0, 0, 0, 0, 0, 0, 0, 0]);
    let attacks: Vec<(&str, Vec<u8>, String)> = vec![
        (
            "a piece message of 1 MiB",
            huge_piece,
            format!(
                "message of {} bytes over the {MAX_MESSAGE}-byte limit",
                (1 << 20) + 9
            ),
        ),
        (
            "a length prefix of 4 GiB",
            vec![0xFF, 0xFF, 0xFF, 0xFF, 7],
            format!(
                "message of {} bytes over the {MAX_MESSAGE}-byte limit",
                u32::MAX
            ),
        ),
        (
            "a bitfield of 200 000 bytes",
            fakepeer::frame(fakepeer::BITFIELD, &vec![0xFF; 200_000]),
            format!("message of 200001 bytes over the {MAX_MESSAGE}-byte limit"),
        ),
        (
            "a bitfield a byte too long",
            fakepeer::frame(fakepeer::BITFIELD, &[0xFF, 0xFF, 0xE0, 0]),
            "bad bitfield: wrong size".into(),
        ),
        (
            "a bitfield a byte too short",
            fakepeer::frame(fakepeer::BITFIELD, &[0xFF, 0xFF]),
            "bad bitfield: wrong size".into(),
        ),
        (
            "a bitfield with a spare bit set",
            fakepeer::frame(fakepeer::BITFIELD, &[0xFF, 0xFF, 0xF0]),
            "bad bitfield: spare bits set".into(),
        ),
        (
            "a have of 6 bytes",
            fakepeer::frame(fakepeer::HAVE, &[0, 0, 0, 1, 0]),
            "message id 4 with a wrong length of 6 bytes".into(),
        ),
        (
            // Exactly the limit: not too long, but nobody asked for it.
            "a piece message of exactly the limit",
            fakepeer::piece(0, 0, &vec![0; 128 << 10]),
            "sent a block never requested (piece 0 offset 0 length 131072)".into(),
        ),
    ];
    for (what, bytes, reason) in attacks {
        let (mut f, _) = FakePeer::handshake(leecher.port, &tor.hash);
        f.send(&bytes);
        f.wait_closed();
        let why = leecher.closing_reason(f.addr());
        assert_eq!(why, reason, "{what}");
        leecher.assert_ipc();
    }
    assert_eq!(leecher.status("completed").as_int(), Some(0));

    let _seeder = Node::seeder(&tracker, &tor, &[leecher.port], &[]);
    leecher.assert_complete(&tor);
    leecher.assert_ipc();
}

/// A peer that asks a leecher for a piece the leecher has gets it; asking
/// for one it lacks gets the connection closed.
#[test]
fn a_request_for_a_piece_we_do_not_have_closes_the_connection() {
    let tracker = TestTracker::start();
    let tor = Tor::new(&tracker, "partial", 512 << 10, 32 << 10);
    // The first half on disk, the second zeroed: pieces 0-7 of 16 check.
    let mut half = tor.data.clone();
    half[256 << 10..].fill(0);
    let mut leecher = Node::start(&tracker, &tor, tor.dir_with(&half), &[], &[]);
    leecher.wait_for_state("downloading");
    assert_eq!(leecher.status("completed").as_int(), Some(256 << 10));

    let (mut f, _) = FakePeer::handshake(leecher.port, &tor.hash);
    assert_eq!(f.wait_for(fakepeer::BITFIELD), vec![0xFF, 0]);
    assert!(f.send(&fakepeer::frame(fakepeer::INTERESTED, &[])));
    f.wait_for(fakepeer::UNCHOKE);
    // A piece it has: served.
    assert!(f.send(&fakepeer::request(7, 16 << 10, 16 << 10)));
    let got = f.wait_for(fakepeer::PIECE);
    assert_eq!(got[..8], [0, 0, 0, 7, 0, 0, 0x40, 0]);
    assert!(
        got[8..] == *tor.block(7, 16 << 10, 16 << 10),
        "the block's bytes"
    );
    // One it lacks: closed.
    assert!(f.send(&fakepeer::request(8, 0, 16 << 10)));
    f.wait_closed();
    let why = leecher.closing_reason(f.addr());
    assert!(why.contains("request for a piece we do not have"), "{why}");
    leecher.assert_ipc();

    let _seeder = Node::seeder(&tracker, &tor, &[leecher.port], &[]);
    leecher.assert_complete(&tor);
}

/// A block sent before any request, and a block at an offset never
/// requested (while real requests wait), each close the connection; the
/// download completes from an honest seeder.
#[test]
fn a_block_never_requested_closes_the_connection() {
    let tracker = TestTracker::start();
    let tor = Tor::new(&tracker, "unasked", 300_000, 32 << 10);
    let mut leecher = Node::leecher(&tracker, &tor, &[]);
    leecher.wait_for_state("downloading");

    // Unasked: right bytes, but nobody requested them.
    let (mut f, _) = FakePeer::handshake(leecher.port, &tor.hash);
    assert!(f.send(&fakepeer::piece(0, 0, tor.block(0, 0, 16 << 10))));
    f.wait_closed();
    assert_eq!(
        leecher.closing_reason(f.addr()),
        "sent a block never requested (piece 0 offset 0 length 16384)"
    );

    // A seed the leecher requests from, answering with another block.
    let (mut f, _) = FakePeer::handshake(leecher.port, &tor.hash);
    assert!(f.send(&fakepeer::frame(
        fakepeer::BITFIELD,
        &fakepeer::full_bitfield(tor.pieces())
    )));
    assert!(f.send(&fakepeer::frame(fakepeer::UNCHOKE, &[])));
    let (piece, begin, len) = fakepeer::parse_block(&f.wait_for(fakepeer::REQUEST));
    assert_eq!(begin % (16 << 10), 0, "blocks of 16 KiB");
    assert!(len > 0);
    assert!(f.send(&fakepeer::piece(piece, begin + 1, &[0; 100])));
    f.wait_closed();
    assert_eq!(
        leecher.closing_reason(f.addr()),
        format!(
            "sent a block never requested (piece {piece} offset {} length 100)",
            begin + 1
        )
    );
    leecher.assert_ipc();
    assert_eq!(leecher.status("completed").as_int(), Some(0));

    let _seeder = Node::seeder(&tracker, &tor, &[leecher.port], &[]);
    leecher.assert_complete(&tor);
}

/// A fake seeder answers every request with wrong bytes: each piece fails
/// its hash, and after three the peer is banned and cut off. Nothing bad
/// is kept; the download then completes from an honest tripcd seeder.
#[test]
fn a_peer_sending_corrupt_blocks_is_banned_after_three_strikes() {
    let tracker = TestTracker::start();
    let tor = Tor::new(&tracker, "corrupt", 400_000, 32 << 10);
    let mut leecher = Node::leecher(&tracker, &tor, &[]);
    leecher.wait_for_state("downloading");

    let (mut f, _) = FakePeer::handshake(leecher.port, &tor.hash);
    let me = f.addr();
    assert!(f.send(&fakepeer::frame(
        fakepeer::BITFIELD,
        &fakepeer::full_bitfield(tor.pieces())
    )));
    assert!(f.send(&fakepeer::frame(fakepeer::UNCHOKE, &[])));
    let mut served = 0;
    loop {
        match f.next(HANG) {
            Got::Msg(fakepeer::REQUEST, p) => {
                let (piece, begin, len) = fakepeer::parse_block(&p);
                let bad: Vec<u8> = tor.block(piece, begin, len).iter().map(|b| !b).collect();
                if !f.send(&fakepeer::piece(piece, begin, &bad)) {
                    break;
                }
                served += 1;
            }
            Got::Msg(..) | Got::KeepAlive => {}
            Got::Closed => break,
            Got::TimedOut => panic!("the leecher neither requested more nor closed"),
        }
    }
    let ban = leecher
        .d
        .wait_for_log("pieces failed their hash with its data")
        .expect("a ban");
    assert!(ban.contains(&format!("banning {me}: 3 pieces")), "{ban}");
    assert_eq!(leecher.closing_reason(me), "banned");
    let failed = leecher
        .d
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("failed its hash; fetching it again"))
        .count();
    assert!(failed >= 3, "{failed} pieces failed");
    assert!(served >= 6, "two blocks a piece, three pieces: {served}");
    assert_eq!(leecher.status("completed").as_int(), Some(0));
    leecher.assert_ipc();

    let _seeder = Node::seeder(&tracker, &tor, &[leecher.port], &[]);
    leecher.assert_complete(&tor);
}

/// Piece length of the never-reading test: 128 KiB requests at many
/// offsets of 256 KiB pieces make thousands of distinct requests.
const BIG_PIECE: usize = 256 << 10;

/// Distinct requests of 128 KiB (`i` in 0..2400).
fn big_request(i: u32) -> Vec<u8> {
    fakepeer::request(i % 8, (i / 8) * 256, 128 << 10)
}

/// A peer that requests far more than the output bound and never reads:
/// the seeder stops serving it once its queue to that peer is full (the
/// connection stays open, memory does not grow), while an honest leecher
/// downloads everything; more than 2000 queued requests then close it.
#[test]
fn a_peer_that_never_reads_is_not_served_beyond_a_bound() {
    let tracker = TestTracker::start();
    let tor = Tor::new(&tracker, "unread", 2 << 20, BIG_PIECE);
    let mut seeder = Node::seeder(&tracker, &tor, &[], &[]);
    let rss_before = fakepeer::rss(seeder.d.pid());

    let (mut f, _) = FakePeer::handshake(seeder.port, &tor.hash);
    let me = f.addr();
    assert_eq!(f.wait_for(fakepeer::BITFIELD), vec![0xFF]);
    assert!(f.send(&fakepeer::frame(fakepeer::INTERESTED, &[])));
    f.wait_for(fakepeer::UNCHOKE);
    // From here on it never reads. 1900 requests of 128 KiB: 237.5 MiB.
    let first = 1900;
    let burst: Vec<u8> = (0..first).flat_map(big_request).collect();
    assert!(f.send(&burst));
    let requested = first as u64 * (128 << 10);

    let leecher = Node::leecher(&tracker, &tor, &[seeder.port]);
    leecher.assert_complete(&tor);
    seeder.assert_ipc();

    // What the seeder queued in all: the honest leecher's share and what
    // the silent peer's socket buffers and output queue hold.
    let uploaded = seeder.status("upload-total").as_int().unwrap() as u64;
    let size = tor.data.len() as u64;
    assert!(
        uploaded <= 2 * size + (16 << 20),
        "uploaded {uploaded} bytes; the silent peer asked for {requested}"
    );
    let grown = fakepeer::rss(seeder.d.pid()).saturating_sub(rss_before);
    eprintln!(
        "never read: {requested} bytes requested; {uploaded} uploaded in all; \
         the seeder's resident memory grew by {grown} bytes"
    );
    assert!(grown < 64 << 20, "the seeder grew by {grown} bytes");
    assert!(
        !seeder.d.logged(&format!("peer {me}: closing")),
        "not closed, only no longer served"
    );

    // 500 more: over 2000 queued.
    let more: Vec<u8> = (first..first + 500).flat_map(big_request).collect();
    f.send(&more);
    assert_eq!(seeder.closing_reason(me), "more than 2000 requests queued");
    f.wait_closed();
    seeder.assert_ipc();
}

/// A handshake trickled a byte a second is cut off at the 20 s handshake
/// timeout, not before; meanwhile IPC answers and another peer downloads
/// the whole torrent from the same daemon.
#[test]
fn a_handshake_trickled_a_byte_a_second_times_out() {
    let tracker = TestTracker::start();
    let tor = Tor::new(&tracker, "trickle", 500_000, 32 << 10);
    let mut seeder = Node::seeder(&tracker, &tor, &[], &[]);

    let start = Instant::now();
    let mut f = FakePeer::connect(seeder.port);
    let me = f.addr();
    let mut writer = f.stream.try_clone().unwrap();
    let hs = fakepeer::handshake_bytes(&tor.hash, &fakepeer::peer_id());
    let trickle = std::thread::spawn(move || {
        use std::io::Write;
        let mut sent = 0;
        for b in hs {
            if writer.write_all(&[b]).is_err() {
                break;
            }
            sent += 1;
            std::thread::sleep(Duration::from_secs(1));
        }
        sent
    });
    seeder
        .d
        .wait_for_log(&format!("peer {me}: accepted"))
        .unwrap();

    let leecher = Node::leecher(&tracker, &tor, &[seeder.port]);
    leecher.assert_complete(&tor);
    seeder.assert_ipc();

    assert_eq!(seeder.closing_reason(me), "no handshake in time");
    assert!(
        f.wait_closed().is_empty(),
        "nothing sent before a handshake"
    );
    let took = start.elapsed();
    assert!(
        took >= tripcd::peer::conn::HANDSHAKE_TIMEOUT,
        "closed after {took:?}"
    );
    let sent = trickle.join().unwrap();
    assert!(sent < 68, "the whole handshake went through");
    seeder.assert_ipc();
}

/// The flood: this many connection attempts, paced at [`FLOOD_RATE`] a
/// second (so it lasts at least 2 s) from [`FLOOD_THREADS`] threads.
const FLOOD_ATTEMPTS: u32 = 10_000;
const FLOOD_RATE: u32 = 5000;
const FLOOD_THREADS: u32 = 4;

/// Connect-and-drop [`FLOOD_ATTEMPTS`] times against `port`; each socket
/// is closed with a reset at once. A connection attempt may wait as long
/// as the kernel keeps retrying its SYN, so the count does not depend on
/// how fast this machine is. Returns (connected, failed, elapsed).
fn flood(port: u16) -> (u32, u32, Duration) {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let per_thread = FLOOD_ATTEMPTS / FLOOD_THREADS;
    let gap = Duration::from_secs(1) / (FLOOD_RATE / FLOOD_THREADS);
    let start = Instant::now();
    let threads: Vec<_> = (0..FLOOD_THREADS)
        .map(|_| {
            std::thread::spawn(move || {
                let (mut ok, mut failed) = (0, 0);
                for i in 0..per_thread {
                    let due = start + gap * i;
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    match std::net::TcpStream::connect_timeout(&addr, HANG) {
                        Ok(s) => {
                            fakepeer::reset_on_close(&s);
                            ok += 1;
                        }
                        Err(_) => failed += 1,
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    let (ok, failed) = threads
        .into_iter()
        .map(|t| t.join().unwrap())
        .fold((0, 0), |(a, b), (c, d)| (a + c, b + d));
    (ok, failed, start.elapsed())
}

/// 10,000 connection attempts at 5000 a second against a seeder's peer
/// port: every one is accepted (none waits out the kernel's queue), IPC
/// answers during the flood, a download in progress through it completes,
/// and a leecher that comes after downloads too.
#[test]
fn a_connection_flood_does_not_stop_the_daemon() {
    let tracker = TestTracker::start();
    let tor = Tor::new(&tracker, "flood", 3 << 20, 32 << 10);
    // 1 MiB/s up: the first download spans the flood.
    let mut seeder = Node::seeder(&tracker, &tor, &[], &[("uplimit", Value::Int(1024))]);
    let during = Node::leecher(&tracker, &tor, &[seeder.port]);
    seeder.d.wait_for_log("handshake done for torrent").unwrap();
    let fds_before = open_fds(seeder.d.pid());

    let port = seeder.port;
    let done = Arc::new(AtomicBool::new(false));
    let done2 = Arc::clone(&done);
    let flooder = std::thread::spawn(move || {
        let r = flood(port);
        done2.store(true, Ordering::SeqCst);
        r
    });
    let mut answers = 0;
    let mut slowest = Duration::ZERO;
    while !done.load(Ordering::SeqCst) {
        let t = Instant::now();
        seeder.assert_ipc();
        slowest = slowest.max(t.elapsed());
        answers += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    let (connected, failed, took) = flooder.join().unwrap();
    eprintln!(
        "flood: {connected} connected, {failed} failed in {took:?}; \
         {answers} IPC answers meanwhile, the slowest in {slowest:?}"
    );
    assert!(answers > 0);
    assert_eq!((connected, failed), (FLOOD_ATTEMPTS, 0));

    during.assert_complete(&tor);
    seeder
        .d
        .client()
        .request("uplimit", &Value::Int(-1))
        .unwrap();
    let after = Node::leecher(&tracker, &tor, &[seeder.port]);
    after.assert_complete(&tor);
    seeder.assert_ipc();
    // The flood's sockets are all closed: no descriptor leaked.
    let start = Instant::now();
    loop {
        let open = open_fds(seeder.d.pid());
        if open <= fds_before + 4 {
            break;
        }
        assert!(
            start.elapsed() < HANG,
            "{open} descriptors open, {fds_before} before the flood"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Descriptors process `pid` has open.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc fd")
        .count()
}
