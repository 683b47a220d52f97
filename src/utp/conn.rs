//! One uTP connection: sequence numbers, the send buffer and what is in
//! flight, the receive and reorder buffers, RTT and retransmission, and
//! LEDBAT. The endpoint routes packets to it and collects what it wants
//! to send and report.
//!
//! Data lives once in the send buffer, a byte queue holding everything
//! unacknowledged or unsent; a packet in flight is a record of its stream
//! offset and length, kept in a queue indexed by `seq − una`, so an ACK,
//! a selective ACK bit or a retransmission finds its packet in O(1) and
//! nothing is allocated per packet once the queues have grown.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::ledbat::Ledbat;
use super::packet::{self, Header, Packet, PacketType, HEADER_LEN, MAX_SACK_LEN};
use super::types::{seq_lt, CloseReason, Config, ConnId, ConnStats, State, FIN_WAIT};

/// Most packets in flight: libutp's outgoing limit (1024, one kept for its
/// FIN), which is also the span libutp's and our reorder buffers accept.
pub const MAX_IN_FLIGHT: usize = 1023;

/// How far ahead of the next expected packet one is still held: 1024,
/// libutp's `REORDER_BUFFER_MAX_SIZE` (so a SACK of 128 bytes covers all).
pub const MAX_REORDER: usize = 1024;

/// How much older than the oldest unacknowledged packet the ACK of the
/// packet confirming a handshake may be (libtorrent's and libutp's 3).
const HANDSHAKE_ACK_SLACK: usize = 3;

/// How much older an ACK on an established connection may be. libtorrent
/// and libutp drop a packet whose ACK is more than 3 behind, payload and
/// all, which turns every reordered DATA packet of a two-way transfer into
/// a retransmission; a stale ACK here just acknowledges nothing. An ACK of
/// a packet never sent, or from further back than a window can reach, is
/// still refused.
const ACK_SLACK: usize = MAX_IN_FLIGHT + 1;

/// Duplicate ACKs, or packets selectively acknowledged after a hole, that
/// make the hole a loss (TCP's and libutp's 3).
const DUP_ACK_LIMIT: u32 = 3;

/// Fast retransmits one selective ACK may trigger (libutp's 4): more would
/// be a burst into a path that just lost packets.
const MAX_FAST_RESENDS: usize = 4;

/// RTO before any round trip is measured (RFC 6298 §2.1).
const INITIAL_RTO: Duration = Duration::from_secs(1);

/// Shortest RTO: Linux TCP's 200 ms (RFC 6298 asks 1 s, libtorrent uses
/// 500 ms); a tail loss on a fast path costs no more than this.
const MIN_RTO: Duration = Duration::from_millis(200);

/// Longest RTO, backoff included (libtorrent and libutp cap at 60 s).
const MAX_RTO: Duration = Duration::from_secs(60);

/// Expiries of the retransmission timer in a row, with nothing heard from
/// the peer in between, that kill the connection: six retransmissions,
/// with backoff from 200 ms at least 25 s of silence (libutp gives up
/// after 4 with its 1 s minimum: 15 s).
const MAX_TIMEOUTS: u32 = 7;

/// SYNs sent without an answer before giving up (1 s, 2 s, 4 s, 8 s:
/// 15 s, about libutp's and libtorrent's connect timeouts).
const MAX_SYN_SENDS: u32 = 4;

/// An incoming connection whose peer sends nothing after its SYN this long
/// is forgotten: the initiators retransmit a SYN after 3 s and give up
/// after 9 s (libtorrent) or 21 s (libutp).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);

/// A keep-alive goes out after this long without sending: libutp's 29 s,
/// measured on home NATs, so their UDP mappings stay open.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(29);

/// Sends of our FIN, once the peer has finished, after which we stop
/// waiting for its ACK: libtorrent forgets a connection as soon as its own
/// FIN is acknowledged, so our FIN may find nobody (libtorrent sends a
/// FIN at most 3 times too: `utp_fin_resends` 2).
const FIN_SENDS_AFTER_PEER_FIN: u16 = 3;

/// The first zero-window probe goes out this long after the window closed
/// (then every RTO while it stays closed).
const PERSIST_INTERVAL: Duration = Duration::from_millis(500);

/// Free reorder buffers an endpoint keeps for reuse (each as large as the
/// largest packet it held): enough for steady reordering on a few
/// connections without allocating, without holding a burst's memory.
pub const POOL_MAX: usize = 256;

/// Whether `a` is `b` or after it.
fn seq_ge(a: u16, b: u16) -> bool {
    !seq_lt(a, b)
}

/// Microseconds since `epoch`, as the 32-bit timestamp uTP carries (0 is
/// "no timestamp", so it becomes 1).
pub fn timestamp(now: Instant, epoch: Instant) -> u32 {
    let us = now.saturating_duration_since(epoch).as_micros() as u32;
    us.max(1)
}

/// RTT and RTO as RFC 6298 computes them, from packets sent once (Karn).
#[derive(Debug, Clone, Copy)]
struct Rtt {
    srtt: Option<Duration>,
    rttvar: Duration,
    rto: Duration,
}

impl Rtt {
    fn new() -> Rtt {
        Rtt {
            srtt: None,
            rttvar: Duration::ZERO,
            rto: INITIAL_RTO,
        }
    }

    fn sample(&mut self, r: Duration) {
        match self.srtt {
            None => {
                self.srtt = Some(r);
                self.rttvar = r / 2;
            }
            Some(s) => {
                let diff = s.abs_diff(r);
                self.rttvar = (self.rttvar * 3 + diff) / 4;
                self.srtt = Some((s * 7 + r) / 8);
            }
        }
        let srtt = self.srtt.unwrap_or(r);
        self.rto = (srtt + self.rttvar * 4).clamp(MIN_RTO, MAX_RTO);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Syn,
    Data,
    Fin,
}

/// A packet sent and not yet acknowledged cumulatively.
#[derive(Debug, Clone, Copy)]
struct Sent {
    kind: Kind,
    /// Stream offset of its payload.
    offset: u64,
    len: u32,
    sent_at: Instant,
    transmissions: u16,
    /// Selectively acknowledged.
    acked: bool,
    /// Counted in `in_flight`.
    in_flight: bool,
    /// Declared lost, waiting to go again.
    need_resend: bool,
    /// A fast retransmit: goes even if the window is full.
    fast: bool,
}

/// Where a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Our SYN is out.
    SynSent,
    /// We answered the peer's SYN; nothing else from it yet.
    SynReceived,
    /// Established.
    Connected,
    /// Over.
    Dead(CloseReason),
}

/// Events a call produced, for the endpoint to queue.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pending {
    /// The peer's handshake completed (`Event::Incoming`).
    pub incoming: bool,
    /// Our SYN was answered (`Event::Connected`).
    pub connected: bool,
    /// Data or the peer's FIN arrived (`Event::Readable`).
    pub readable: bool,
    /// Room returned after a short `send` (`Event::Writable`).
    pub writable: bool,
}

/// One connection.
#[derive(Debug)]
pub struct Conn {
    /// The owner's name for it.
    pub id: ConnId,
    /// The peer.
    pub addr: SocketAddr,
    /// The connection id on packets to us.
    pub recv_id: u16,
    /// The connection id on packets we send.
    pub send_id: u16,
    /// Where it is.
    pub phase: Phase,
    /// The owner knows of it (an outgoing connection, or `Incoming` sent).
    pub announced: bool,
    /// Events for the endpoint to queue.
    pub pending: Pending,
    /// In the endpoint's transmit queue.
    pub queued: bool,
    epoch: Instant,
    packet_size: usize,
    // --- sending
    seq_nr: u16,
    una: u16,
    sent: VecDeque<Sent>,
    in_flight: u64,
    send_buf: VecDeque<u8>,
    send_cap: usize,
    /// Stream offset of `send_buf[0]`.
    send_base: u64,
    /// Stream offset of the first byte never sent.
    send_next: u64,
    resend_pending: usize,
    /// No record before this sequence number needs resending.
    resend_cursor: u16,
    /// Fast retransmits only for packets from this one on.
    fast_resend_seq: u16,
    /// The window is cut only for a loss of a packet after this one.
    loss_seq: u16,
    dup_acks: u32,
    /// Nagle: an undersized data packet in flight.
    small_seq: Option<u16>,
    write_closed: bool,
    fin_seq: Option<u16>,
    fin_acked_at: Option<Instant>,
    peer_wnd: u64,
    ledbat: Ledbat,
    rtt: Rtt,
    timeouts: u32,
    rto_deadline: Option<Instant>,
    persist_deadline: Option<Instant>,
    probe_due: bool,
    writable_wanted: bool,
    // --- receiving
    ack_nr: u16,
    /// `reorder[i]` holds packet `ack_nr + 1 + i` if it arrived early.
    reorder: VecDeque<Option<Vec<u8>>>,
    reorder_count: usize,
    reorder_bytes: usize,
    recv_buf: VecDeque<u8>,
    recv_cap: usize,
    peer_fin: Option<u16>,
    eof: bool,
    eof_signalled: bool,
    readable_armed: bool,
    /// The peer's SYN, to answer its retransmission again.
    pub syn_seq: u16,
    reply_micro: u32,
    ack_due: bool,
    keepalive_due: bool,
    last_adv_wnd: u32,
    // --- time
    created: Instant,
    last_recv: Instant,
    last_send: Instant,
    idle_timeout: Duration,
    stats: ConnStats,
}

impl Conn {
    fn new(id: ConnId, addr: SocketAddr, config: &Config, epoch: Instant, now: Instant) -> Conn {
        let packet_size = config.packet_size_for(addr);
        // Whatever the configuration, a buffer holds a few packets.
        let send_cap = config.send_buffer.max(4 * packet_size);
        let recv_cap = config.recv_buffer.max(4 * packet_size);
        let mss = packet_size - HEADER_LEN;
        Conn {
            id,
            addr,
            recv_id: 0,
            send_id: 0,
            phase: Phase::SynSent,
            announced: false,
            pending: Pending::default(),
            queued: false,
            epoch,
            packet_size,
            seq_nr: 0,
            una: 0,
            sent: VecDeque::new(),
            in_flight: 0,
            send_buf: VecDeque::new(),
            send_cap,
            send_base: 0,
            send_next: 0,
            resend_pending: 0,
            resend_cursor: 0,
            fast_resend_seq: 0,
            loss_seq: 0,
            dup_acks: 0,
            small_seq: None,
            write_closed: false,
            fin_seq: None,
            fin_acked_at: None,
            peer_wnd: mss as u64,
            ledbat: Ledbat::new(mss, send_cap, config.target_delay),
            rtt: Rtt::new(),
            timeouts: 0,
            rto_deadline: None,
            persist_deadline: None,
            probe_due: false,
            writable_wanted: false,
            ack_nr: 0,
            reorder: VecDeque::new(),
            reorder_count: 0,
            reorder_bytes: 0,
            recv_buf: VecDeque::new(),
            recv_cap,
            peer_fin: None,
            eof: false,
            eof_signalled: false,
            readable_armed: false,
            syn_seq: 0,
            reply_micro: 0,
            ack_due: false,
            keepalive_due: false,
            last_adv_wnd: 0,
            created: now,
            last_recv: now,
            last_send: now,
            idle_timeout: config.idle_timeout,
            stats: ConnStats {
                packet_size,
                ..ConnStats::default()
            },
        }
    }

    fn start_seq(&mut self, isn: u16) {
        self.seq_nr = isn;
        self.una = isn;
        self.resend_cursor = isn;
        self.fast_resend_seq = isn;
        self.loss_seq = isn.wrapping_sub(1);
    }

    /// A connection we open: receives on `recv_id`, sends on `recv_id + 1`
    /// (BEP 29); its SYN (sequence number `isn`) goes out at the first
    /// `poll_transmit`.
    pub fn outgoing(
        id: ConnId,
        addr: SocketAddr,
        recv_id: u16,
        isn: u16,
        config: &Config,
        epoch: Instant,
        now: Instant,
    ) -> Conn {
        let mut c = Conn::new(id, addr, config, epoch, now);
        c.recv_id = recv_id;
        c.send_id = recv_id.wrapping_add(1);
        c.announced = true;
        c.start_seq(isn);
        c
    }

    /// A connection the peer opened with `syn`: we send on its id and
    /// receive on the next; our STATE answer goes out at the next
    /// `poll_transmit` with sequence number `isn`, which our first DATA
    /// will carry too.
    pub fn incoming(
        id: ConnId,
        addr: SocketAddr,
        syn: &Header,
        isn: u16,
        config: &Config,
        epoch: Instant,
        now: Instant,
    ) -> Conn {
        let mut c = Conn::new(id, addr, config, epoch, now);
        c.recv_id = syn.connection_id.wrapping_add(1);
        c.send_id = syn.connection_id;
        c.phase = Phase::SynReceived;
        c.start_seq(isn);
        c.ack_nr = syn.seq_nr;
        c.syn_seq = syn.seq_nr;
        // libtorrent's SYN says 0; its first DATA will say the truth.
        if syn.wnd_size > 0 {
            c.peer_wnd = u64::from(syn.wnd_size);
        }
        c.note_timestamp(syn, now);
        c.ack_due = true;
        c
    }

    /// The owner's view of the stage.
    pub fn state(&self) -> State {
        match self.phase {
            Phase::Dead(r) => State::Closed(r),
            Phase::SynSent | Phase::SynReceived => State::Connecting,
            Phase::Connected if self.write_closed => State::Closing,
            Phase::Connected => State::Connected,
        }
    }

    /// Being set up: counts against the half-open bounds.
    pub fn is_half_open(&self) -> bool {
        matches!(self.phase, Phase::SynSent | Phase::SynReceived)
    }

    /// Over (its `Closed` event may still be pending).
    pub fn is_dead(&self) -> bool {
        matches!(self.phase, Phase::Dead(_))
    }

    fn mss(&self) -> usize {
        self.packet_size - HEADER_LEN
    }

    fn die(&mut self, reason: CloseReason, pool: &mut Vec<Vec<u8>>) {
        if self.is_dead() {
            return;
        }
        log::debug!("{} to {}: {reason}", self.id, self.addr);
        self.phase = Phase::Dead(reason);
        self.sent = VecDeque::new();
        self.send_buf = VecDeque::new();
        self.in_flight = 0;
        for slot in self.reorder.drain(..).flatten() {
            give_back(pool, slot);
        }
        self.reorder_count = 0;
        self.reorder_bytes = 0;
        self.rto_deadline = None;
        self.persist_deadline = None;
    }

    // ----- the stream

    /// Queues what fits of `data`; 0 once closed or full (`Writable`
    /// follows when room returns).
    pub fn send(&mut self, data: &[u8]) -> usize {
        if self.write_closed || self.is_dead() {
            return 0;
        }
        let n = data.len().min(self.room());
        self.send_buf.extend(&data[..n]);
        if n < data.len() {
            self.writable_wanted = true;
        }
        n
    }

    /// Bytes `send` would take.
    pub fn room(&self) -> usize {
        if self.write_closed || self.is_dead() {
            return 0;
        }
        self.send_cap.saturating_sub(self.send_buf.len())
    }

    /// Bytes `recv` would give.
    pub fn readable_len(&self) -> usize {
        self.recv_buf.len()
    }

    /// Copies received bytes out in order. Returns whether the window
    /// opened enough that the peer should hear of it.
    pub fn recv(&mut self, out: &mut [u8]) -> (usize, bool) {
        let n = out.len().min(self.recv_buf.len());
        let (a, b) = self.recv_buf.as_slices();
        let from_a = n.min(a.len());
        out[..from_a].copy_from_slice(&a[..from_a]);
        out[from_a..n].copy_from_slice(&b[..n - from_a]);
        self.recv_buf.drain(..n);
        if self.recv_buf.is_empty() {
            self.readable_armed = false;
        }
        let update = n > 0 && self.window_update_due();
        if update {
            self.ack_due = true;
        }
        (n, update)
    }

    /// The peer finished and all it sent was read.
    pub fn eof(&self) -> bool {
        self.eof && self.recv_buf.is_empty()
    }

    /// No more sending: the FIN follows the queued data.
    pub fn close(&mut self) {
        self.write_closed = true;
        self.writable_wanted = false;
    }

    /// The RESET that tells the peer we are gone.
    pub fn reset_header(&self, now: Instant) -> Header {
        Header {
            ty: PacketType::Reset,
            connection_id: self.send_id,
            timestamp_us: timestamp(now, self.epoch),
            timestamp_diff_us: self.reply_micro,
            wnd_size: 0,
            seq_nr: self.seq_nr,
            ack_nr: self.ack_nr,
        }
    }

    /// The STATE a finished connection answers its peer with.
    pub fn final_ack(&self, now: Instant) -> Header {
        let mut h = self.header(PacketType::State, self.seq_nr, now);
        h.wnd_size = 0;
        h
    }

    /// The latest instant this connection was called with.
    pub fn last_seen(&self) -> Instant {
        self.last_recv.max(self.last_send)
    }

    /// The connection's figures.
    pub fn stats(&self) -> ConnStats {
        ConnStats {
            rtt: self.rtt.srtt,
            rto: self.rto(),
            cwnd: self.ledbat.cwnd(),
            bytes_in_flight: self.in_flight,
            peer_window: self.peer_wnd,
            send_buffered: self.send_buf.len(),
            recv_buffered: self.recv_buf.len(),
            queuing_delay: self.ledbat.queuing_delay(),
            ..self.stats
        }
    }

    fn recv_window(&self) -> u32 {
        let used = self.recv_buf.len() + self.reorder_bytes;
        u32::try_from(self.recv_cap.saturating_sub(used)).unwrap_or(u32::MAX)
    }

    /// Whether reading opened the window enough to tell the peer: from
    /// less than two packets to at least two, or by half the buffer.
    fn window_update_due(&self) -> bool {
        let now = self.recv_window() as usize;
        let last = self.last_adv_wnd as usize;
        let two = 2 * self.mss();
        (last < two && now >= two) || now >= last + self.recv_cap / 2
    }

    fn rto(&self) -> Duration {
        let backoff = 1u32 << self.timeouts.min(16);
        self.rtt.rto.saturating_mul(backoff).min(MAX_RTO)
    }

    // ----- incoming packets

    /// The peer's SYN came again: answer it again.
    pub fn syn_again(&mut self) {
        self.ack_due = true;
    }

    /// Whether both sides are done but for the ACK of our FIN: the peer
    /// finished and everything else we sent was acknowledged.
    fn only_fin_outstanding(&self) -> bool {
        self.eof && self.fin_seq.is_some() && self.sent.len() <= 1
    }

    /// The peer reset the connection. After both FINs that is libutp
    /// having forgotten a connection it finished: a clean end.
    pub fn on_reset(&mut self, pool: &mut Vec<Vec<u8>>) {
        let reason = match self.phase {
            Phase::SynSent => CloseReason::Refused,
            _ if self.only_fin_outstanding() => CloseReason::Finished,
            _ => CloseReason::Reset,
        };
        self.die(reason, pool);
    }

    fn note_timestamp(&mut self, h: &Header, now: Instant) {
        if h.timestamp_us != 0 {
            self.reply_micro = timestamp(now, self.epoch).wrapping_sub(h.timestamp_us);
            self.ledbat.their_delay_sample(self.reply_micro, now);
        }
    }

    /// Whether `ack_nr` acknowledges nothing we have not sent and is not
    /// older than `slack` packets before the oldest unacknowledged one.
    fn ack_valid(&self, ack_nr: u16, slack: usize) -> bool {
        let behind_last = self.seq_nr.wrapping_sub(1).wrapping_sub(ack_nr) as usize;
        behind_last <= self.sent.len() + slack
    }

    /// A packet for this connection (not a RESET, not a SYN). Returns
    /// false if it was dropped.
    pub fn handle(&mut self, pkt: &Packet<'_>, now: Instant, pool: &mut Vec<Vec<u8>>) -> bool {
        let h = &pkt.header;
        match self.phase {
            Phase::Dead(_) => return false,
            Phase::SynSent => {
                // Only an answer to our SYN counts (libtorrent and libutp).
                if h.ack_nr != self.una || self.sent.is_empty() {
                    return false;
                }
                self.ack_nr = h.seq_nr.wrapping_sub(1);
                self.phase = Phase::Connected;
                self.pending.connected = true;
            }
            Phase::SynReceived => {
                if !self.ack_valid(h.ack_nr, HANDSHAKE_ACK_SLACK) {
                    return false;
                }
                self.phase = Phase::Connected;
                self.announced = true;
                self.pending.incoming = true;
            }
            Phase::Connected => {
                if !self.ack_valid(h.ack_nr, ACK_SLACK) {
                    return false;
                }
            }
        }
        self.stats.packets_in += 1;
        self.last_recv = now;
        self.timeouts = 0;
        self.note_timestamp(h, now);
        self.peer_wnd = u64::from(h.wnd_size);
        // uTorrent sent INT_MAX for "no sample" (libtorrent skips it).
        let sample = if h.timestamp_diff_us == i32::MAX as u32 {
            0
        } else {
            h.timestamp_diff_us
        };
        self.ledbat.our_delay_sample(sample, now);
        self.process_acks(pkt, now);
        match h.ty {
            PacketType::Data => self.on_data(h.seq_nr, pkt.payload, pool),
            PacketType::Fin => self.on_fin(h.seq_nr),
            _ => {}
        }
        if self.writable_wanted && self.room() * 4 >= self.send_cap {
            self.writable_wanted = false;
            self.pending.writable = true;
        }
        if self.fin_acked_at.is_some() && self.eof {
            self.die(CloseReason::Finished, pool);
        }
        true
    }

    fn process_acks(&mut self, pkt: &Packet<'_>, now: Instant) {
        let h = &pkt.header;
        let before = self.in_flight;
        let mut acked = 0u64;
        let mut min_rtt = u32::MAX;
        let n = h.ack_nr.wrapping_sub(self.una).wrapping_add(1) as usize;
        let n = if n <= self.sent.len() { n } else { 0 };
        for _ in 0..n {
            if let Some(r) = self.sent.pop_front() {
                self.una = self.una.wrapping_add(1);
                self.retire(r, now, &mut acked, &mut min_rtt);
            }
        }
        if let Some(sack) = pkt.sack {
            self.apply_sack(h.ack_nr, sack, now, &mut acked, &mut min_rtt);
        }
        self.pop_acked_front(now, &mut acked, &mut min_rtt);
        self.release_acked_bytes();
        let progress = acked > 0 || n > 0;
        if progress {
            self.dup_acks = 0;
            self.rto_deadline = (!self.sent.is_empty()).then(|| now + self.rto());
            if acked > 0 {
                self.ledbat.on_ack(acked, before, self.in_flight, min_rtt);
            }
        } else if h.ty == PacketType::State
            && pkt.sack.is_none()
            && !self.sent.is_empty()
            && h.ack_nr == self.una.wrapping_sub(1)
        {
            self.dup_acks += 1;
            if self.dup_acks == DUP_ACK_LIMIT {
                let una = self.una;
                if seq_ge(una, self.fast_resend_seq) && self.mark_lost(0, true) {
                    self.fast_resend_seq = una.wrapping_add(1);
                    self.on_loss(una);
                }
            }
        }
        // Keep the markers inside the live range, so that comparisons on
        // the 16-bit circle stay meaningful.
        if seq_lt(self.fast_resend_seq, self.una) {
            self.fast_resend_seq = self.una;
        }
        if seq_lt(self.loss_seq, self.una.wrapping_sub(1)) {
            self.loss_seq = self.una.wrapping_sub(1);
        }
        if seq_lt(self.resend_cursor, self.una) {
            self.resend_cursor = self.una;
        }
    }

    /// Accounts for an acknowledged record (cumulatively or selectively).
    fn retire(&mut self, r: Sent, now: Instant, acked: &mut u64, min_rtt: &mut u32) {
        if r.acked {
            return;
        }
        if r.in_flight {
            self.in_flight -= u64::from(r.len);
        }
        if r.need_resend {
            self.resend_pending -= 1;
        }
        *acked += u64::from(r.len);
        let rtt = now.saturating_duration_since(r.sent_at);
        *min_rtt = (*min_rtt).min(u32::try_from(rtt.as_micros()).unwrap_or(u32::MAX));
        if r.transmissions == 1 {
            self.rtt.sample(rtt);
        }
        match r.kind {
            Kind::Fin => self.fin_acked_at = Some(now),
            Kind::Syn | Kind::Data => {}
        }
    }

    fn pop_acked_front(&mut self, now: Instant, acked: &mut u64, min_rtt: &mut u32) {
        while self.sent.front().is_some_and(|r| r.acked) {
            if let Some(r) = self.sent.pop_front() {
                self.una = self.una.wrapping_add(1);
                self.retire(r, now, acked, min_rtt);
            }
        }
    }

    /// Drops the send buffer's bytes that nothing in flight needs.
    fn release_acked_bytes(&mut self) {
        let base = self.sent.front().map_or(self.send_next, |r| r.offset);
        let n = base.saturating_sub(self.send_base) as usize;
        let n = n.min(self.send_buf.len());
        self.send_buf.drain(..n);
        self.send_base += n as u64;
    }

    /// Applies a selective ACK (bit i: packet `ack_nr + 2 + i`), then
    /// declares lost the packets with DUP_ACK_LIMIT acknowledged ones after
    /// them, lowest first, at most MAX_FAST_RESENDS.
    fn apply_sack(
        &mut self,
        ack_nr: u16,
        sack: &[u8],
        now: Instant,
        acked: &mut u64,
        min_rtt: &mut u32,
    ) {
        let first = ack_nr.wrapping_add(2);
        // Bits for packets we sent; the rest mean nothing.
        let sent_span = self.seq_nr.wrapping_sub(first) as usize;
        let bits = (sack.len() * 8).min(if sent_span > 0x8000 { 0 } else { sent_span });
        let mut set = 0u32;
        for i in 0..bits {
            if sack[i / 8] & (1 << (i % 8)) == 0 {
                continue;
            }
            set += 1;
            let idx = first.wrapping_add(i as u16).wrapping_sub(self.una) as usize;
            if let Some(r) = self.sent.get(idx).copied() {
                if !r.acked {
                    self.retire(r, now, acked, min_rtt);
                    if let Some(slot) = self.sent.get_mut(idx) {
                        slot.acked = true;
                        slot.in_flight = false;
                        slot.need_resend = false;
                    }
                }
            }
        }
        self.sack_losses(ack_nr, sack, bits, set);
    }

    fn sack_losses(&mut self, ack_nr: u16, sack: &[u8], bits: usize, mut above: u32) {
        let mut resent = 0;
        // Position -1 is ack_nr + 1, the hole the ACK stops at.
        for i in -1..bits as isize {
            if i >= 0 && sack[i as usize / 8] & (1 << (i as usize % 8)) != 0 {
                above -= 1;
                continue;
            }
            if above < DUP_ACK_LIMIT || resent == MAX_FAST_RESENDS {
                break;
            }
            let seq = ack_nr.wrapping_add((i + 2) as u16);
            if seq_lt(seq, self.fast_resend_seq) {
                continue;
            }
            let idx = seq.wrapping_sub(self.una) as usize;
            if self.mark_lost(idx, true) {
                resent += 1;
                self.fast_resend_seq = seq.wrapping_add(1);
                self.on_loss(seq);
            }
        }
    }

    /// Declares record `idx` lost if it is in flight; returns whether.
    fn mark_lost(&mut self, idx: usize, fast: bool) -> bool {
        let Some(r) = self.sent.get_mut(idx) else {
            return false;
        };
        if !r.in_flight {
            return false;
        }
        r.in_flight = false;
        r.need_resend = true;
        r.fast = fast;
        self.in_flight -= u64::from(r.len);
        self.resend_pending += 1;
        let seq = self.una.wrapping_add(idx as u16);
        if seq_lt(seq, self.resend_cursor) {
            self.resend_cursor = seq;
        }
        true
    }

    /// A loss of packet `seq`: cut the window if it was sent after the
    /// last cut (once per window).
    fn on_loss(&mut self, seq: u16) {
        if seq_lt(self.loss_seq, seq) {
            self.ledbat.on_loss();
            self.loss_seq = self.seq_nr.wrapping_sub(1);
        }
    }

    fn on_data(&mut self, seq: u16, payload: &[u8], pool: &mut Vec<Vec<u8>>) {
        self.ack_due = true;
        if self.eof || self.peer_fin.is_some_and(|f| seq_ge(seq, f)) {
            return;
        }
        let d = seq.wrapping_sub(self.ack_nr.wrapping_add(1)) as usize;
        if d >= 0x8000 {
            return; // already delivered: the ACK above answers it
        }
        if d >= MAX_REORDER {
            self.ack_due = false;
            return;
        }
        if d == 0 {
            self.deliver_in_order(payload, pool);
        } else {
            self.hold(d, payload, pool);
        }
    }

    fn deliver_in_order(&mut self, payload: &[u8], pool: &mut Vec<Vec<u8>>) {
        // In-order data counts against what is read only, so a reorder
        // buffer filling the window can never lock out the packet it waits
        // for; memory stays within twice the buffer.
        if self.recv_buf.len() + payload.len() > self.recv_cap {
            return;
        }
        self.recv_buf.extend(payload);
        self.ack_nr = self.ack_nr.wrapping_add(1);
        self.reorder.pop_front();
        while let Some(Some(_)) = self.reorder.front() {
            if let Some(Some(buf)) = self.reorder.pop_front() {
                self.recv_buf.extend(&buf);
                self.reorder_count -= 1;
                self.reorder_bytes -= buf.len();
                give_back(pool, buf);
            }
            self.ack_nr = self.ack_nr.wrapping_add(1);
        }
        self.check_fin_reached();
        if !self.recv_buf.is_empty() && !self.readable_armed {
            self.readable_armed = true;
            self.pending.readable = true;
        }
    }

    fn hold(&mut self, d: usize, payload: &[u8], pool: &mut Vec<Vec<u8>>) {
        if self.recv_buf.len() + self.reorder_bytes + payload.len() > self.recv_cap {
            return;
        }
        if self.reorder.len() <= d {
            self.reorder.resize(d + 1, None);
        }
        let Some(slot) = self.reorder.get_mut(d) else {
            return;
        };
        if slot.is_some() {
            return;
        }
        let mut buf = pool.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(payload);
        *slot = Some(buf);
        self.reorder_count += 1;
        self.reorder_bytes += payload.len();
    }

    fn on_fin(&mut self, seq: u16) {
        self.ack_due = true;
        if self.eof || self.peer_fin.is_some() {
            return;
        }
        let d = seq.wrapping_sub(self.ack_nr.wrapping_add(1)) as usize;
        if d >= MAX_REORDER {
            return;
        }
        self.peer_fin = Some(seq);
        // Anything held past the FIN was never sent by an honest peer.
        for slot in self.reorder.drain(d.min(self.reorder.len())..).flatten() {
            self.reorder_count -= 1;
            self.reorder_bytes -= slot.len();
        }
        self.check_fin_reached();
    }

    fn check_fin_reached(&mut self) {
        if self.peer_fin == Some(self.ack_nr.wrapping_add(1)) && !self.eof {
            self.ack_nr = self.ack_nr.wrapping_add(1);
            self.eof = true;
        }
        if self.eof && !self.eof_signalled {
            self.eof_signalled = true;
            self.pending.readable = true;
        }
    }

    // ----- timers

    /// The earliest instant something is due.
    pub fn next_timeout(&self) -> Option<Instant> {
        let mut t = self.rto_deadline;
        let mut at = |d: Option<Instant>| {
            if let Some(d) = d {
                t = Some(t.map_or(d, |t| t.min(d)));
            }
        };
        match self.phase {
            Phase::Dead(_) => return None,
            Phase::SynReceived => at(Some(self.created + HANDSHAKE_TIMEOUT)),
            Phase::SynSent => {}
            Phase::Connected => {
                at(self.persist_deadline);
                at(Some(self.last_recv + self.idle_timeout));
                if self.fin_seq.is_none() {
                    at(Some(self.last_send + KEEPALIVE_INTERVAL));
                }
                at(self.fin_acked_at.map(|t| t + FIN_WAIT));
            }
        }
        t
    }

    /// Fires what is due at `now`; returns whether there may be something
    /// to send.
    pub fn handle_timeout(&mut self, now: Instant, pool: &mut Vec<Vec<u8>>) -> bool {
        match self.phase {
            Phase::Dead(_) => return false,
            Phase::SynReceived if now >= self.created + HANDSHAKE_TIMEOUT => {
                self.die(CloseReason::TimedOut, pool);
                return false;
            }
            _ => {}
        }
        if self.phase == Phase::Connected {
            if now >= self.last_recv + self.idle_timeout {
                self.die(CloseReason::Idle, pool);
                return false;
            }
            if self.fin_acked_at.is_some_and(|t| now >= t + FIN_WAIT) {
                self.die(CloseReason::Finished, pool);
                return false;
            }
            if self.fin_seq.is_none() && now >= self.last_send + KEEPALIVE_INTERVAL {
                self.keepalive_due = true;
            }
            if self.persist_deadline.is_some_and(|t| now >= t) {
                self.persist_deadline = None;
                self.probe_due = true;
            }
        }
        if self.rto_deadline.is_some_and(|t| now >= t) {
            self.on_rto(now, pool);
        }
        true
    }

    fn on_rto(&mut self, now: Instant, pool: &mut Vec<Vec<u8>>) {
        self.timeouts += 1;
        self.stats.timeouts += 1;
        let limit = if self.phase == Phase::SynSent {
            MAX_SYN_SENDS
        } else {
            MAX_TIMEOUTS
        };
        if self.timeouts >= limit {
            self.die(CloseReason::TimedOut, pool);
            return;
        }
        let fin_sends = self.sent.front().map_or(0, |r| r.transmissions);
        if self.only_fin_outstanding() && fin_sends >= FIN_SENDS_AFTER_PEER_FIN {
            self.die(CloseReason::Finished, pool);
            return;
        }
        // Into a closed window the timer sends probes: no congestion.
        if self.peer_wnd >= self.mss() as u64 {
            self.ledbat.on_timeout();
            self.loss_seq = self.seq_nr.wrapping_sub(1);
        }
        for idx in 0..self.sent.len() {
            self.mark_lost(idx, false);
        }
        if let Some(first) = self.sent.front_mut() {
            // The oldest goes at once, whatever the window.
            first.fast = true;
        }
        self.dup_acks = 0;
        self.rto_deadline = (!self.sent.is_empty()).then(|| now + self.rto());
    }

    // ----- sending

    /// Writes the next datagram due, if any, into `out` (cleared by the
    /// caller).
    pub fn poll_transmit(&mut self, now: Instant, out: &mut Vec<u8>) -> bool {
        let sent = match self.phase {
            Phase::Dead(_) => false,
            Phase::SynSent => self.transmit_syn(now, out),
            Phase::SynReceived => self.ack_due && self.transmit_state(now, out, false),
            Phase::Connected => {
                self.transmit_resend(now, out)
                    || self.transmit_data(now, out)
                    || self.transmit_fin(now, out)
                    || self.transmit_ack(now, out)
            }
        };
        if sent {
            self.stats.packets_out += 1;
            self.last_send = now;
            self.keepalive_due = false;
        }
        sent
    }

    fn header(&self, ty: PacketType, seq_nr: u16, now: Instant) -> Header {
        Header {
            ty,
            connection_id: self.send_id,
            timestamp_us: timestamp(now, self.epoch),
            timestamp_diff_us: self.reply_micro,
            wnd_size: self.recv_window(),
            seq_nr,
            ack_nr: self.ack_nr,
        }
    }

    /// The selective ACK we would send, in at most `room` bytes: one bit
    /// per packet from `ack_nr + 2`, a multiple of four bytes (BEP 29).
    fn sack_len(&self, room: usize) -> usize {
        if self.reorder_count == 0 || self.eof {
            return 0;
        }
        let span = self.reorder.len().saturating_sub(1);
        let want = span.div_ceil(32) * 4;
        let fits = room.saturating_sub(2) / 4 * 4;
        want.min(MAX_SACK_LEN).min(fits)
    }

    fn write_sack(&self, len: usize, into: &mut [u8; MAX_SACK_LEN]) {
        into[..len].fill(0);
        for (i, slot) in self.reorder.iter().skip(1).take(len * 8).enumerate() {
            if slot.is_some() {
                into[i / 8] |= 1 << (i % 8);
            }
        }
    }

    /// Encodes `h` with the selective ACK that fits beside `payload_len`.
    fn encode(&mut self, h: &Header, payload_len: usize, out: &mut Vec<u8>) {
        let room = self.packet_size.saturating_sub(HEADER_LEN + payload_len);
        let len = self.sack_len(room);
        let mut sack = [0u8; MAX_SACK_LEN];
        self.write_sack(len, &mut sack);
        packet::encode(out, h, &sack[..len]);
        self.last_adv_wnd = h.wnd_size;
        self.ack_due = false;
    }

    fn transmit_syn(&mut self, now: Instant, out: &mut Vec<u8>) -> bool {
        let resend = match self.sent.front() {
            None => false,
            Some(r) if r.need_resend => true,
            Some(_) => return false,
        };
        let mut h = self.header(PacketType::Syn, self.una, now);
        h.connection_id = self.recv_id;
        h.ack_nr = 0;
        packet::encode(out, &h, &[]);
        self.last_adv_wnd = h.wnd_size;
        if resend {
            self.stats.retransmits += 1;
            self.resend_record(0, now);
        } else {
            self.push_record(Kind::Syn, 0, now);
        }
        true
    }

    fn push_record(&mut self, kind: Kind, len: u32, now: Instant) {
        self.sent.push_back(Sent {
            kind,
            offset: self.send_next,
            len,
            sent_at: now,
            transmissions: 1,
            acked: false,
            in_flight: true,
            need_resend: false,
            fast: false,
        });
        self.seq_nr = self.seq_nr.wrapping_add(1);
        self.in_flight += u64::from(len);
        if self.rto_deadline.is_none() {
            self.rto_deadline = Some(now + self.rto());
        }
    }

    fn resend_record(&mut self, idx: usize, now: Instant) {
        if let Some(r) = self.sent.get_mut(idx) {
            r.need_resend = false;
            r.fast = false;
            r.in_flight = true;
            r.sent_at = now;
            r.transmissions = r.transmissions.saturating_add(1);
            self.in_flight += u64::from(r.len);
            self.resend_pending -= 1;
        }
        if self.rto_deadline.is_none() {
            self.rto_deadline = Some(now + self.rto());
        }
    }

    /// Bytes the windows allow in flight now.
    fn window(&self) -> u64 {
        self.ledbat.cwnd().min(self.peer_wnd)
    }

    fn transmit_resend(&mut self, now: Instant, out: &mut Vec<u8>) -> bool {
        if self.resend_pending == 0 {
            return false;
        }
        // The cursor only moves forward between losses, so the scan is
        // amortised over the packets it passes.
        let mut idx = self.resend_cursor.wrapping_sub(self.una) as usize;
        if idx >= self.sent.len() {
            idx = 0;
        }
        while self.sent.get(idx).is_some_and(|r| !r.need_resend) {
            idx += 1;
        }
        let Some(r) = self.sent.get(idx).copied() else {
            // The count and the records disagree: trust the records.
            debug_assert!(
                false,
                "resend_pending {} with none marked",
                self.resend_pending
            );
            self.resend_pending = 0;
            return false;
        };
        self.resend_cursor = self.una.wrapping_add(idx as u16);
        let fits = self.in_flight + u64::from(r.len) <= self.window();
        if !(r.fast || fits || self.in_flight == 0) {
            return false;
        }
        let seq = self.una.wrapping_add(idx as u16);
        let ty = match r.kind {
            Kind::Data => PacketType::Data,
            Kind::Fin => PacketType::Fin,
            Kind::Syn => PacketType::Syn,
        };
        let h = self.header(ty, seq, now);
        self.encode(&h, r.len as usize, out);
        self.copy_payload(r.offset, r.len as usize, out);
        self.stats.retransmits += 1;
        if r.fast {
            self.stats.fast_retransmits += 1;
        }
        self.resend_record(idx, now);
        true
    }

    fn copy_payload(&self, offset: u64, len: usize, out: &mut Vec<u8>) {
        let start = offset.saturating_sub(self.send_base) as usize;
        let (a, b) = self.send_buf.as_slices();
        let end = (start + len).min(a.len() + b.len());
        if start < a.len() {
            out.extend_from_slice(&a[start..end.min(a.len())]);
        }
        if end > a.len() {
            out.extend_from_slice(&b[start.max(a.len()) - a.len()..end - a.len()]);
        }
    }

    fn unsent(&self) -> usize {
        (self.send_base + self.send_buf.len() as u64 - self.send_next) as usize
    }

    /// Nagle: an undersized packet waits while another is unacknowledged.
    fn small_in_flight(&self) -> bool {
        self.small_seq.is_some_and(|s| {
            let idx = s.wrapping_sub(self.una) as usize;
            self.sent.get(idx).is_some_and(|r| !r.acked)
        })
    }

    fn transmit_data(&mut self, now: Instant, out: &mut Vec<u8>) -> bool {
        let avail = self.unsent();
        // New data never overtakes a retransmission waiting for the window.
        let blocked = self.resend_pending > 0 || self.sent.len() >= MAX_IN_FLIGHT;
        if avail == 0 || self.fin_seq.is_some() || blocked {
            return false;
        }
        let sack_room = self.sack_len(self.packet_size - HEADER_LEN);
        let max_payload = self.mss() - if sack_room > 0 { sack_room + 2 } else { 0 };
        let mut len = avail.min(max_payload);
        if self.in_flight + len as u64 > self.window() {
            if self.in_flight > 0 {
                return false;
            }
            // Nothing in flight: the congestion window always allows a
            // packet; the peer's window may call for a smaller one, or a
            // probe when it is closed.
            if self.peer_wnd > 0 {
                len = len.min(self.peer_wnd as usize);
            } else if self.probe_due {
                self.probe_due = false;
            } else {
                if self.persist_deadline.is_none() {
                    self.persist_deadline = Some(now + self.rto().max(PERSIST_INTERVAL));
                }
                return false;
            }
        }
        let undersized = len < max_payload;
        if undersized && !self.write_closed && self.small_in_flight() {
            return false;
        }
        self.persist_deadline = None;
        let h = self.header(PacketType::Data, self.seq_nr, now);
        self.encode(&h, len, out);
        self.copy_payload(self.send_next, len, out);
        if undersized {
            self.small_seq = Some(self.seq_nr);
        }
        self.push_record(Kind::Data, len as u32, now);
        self.send_next += len as u64;
        true
    }

    fn transmit_fin(&mut self, now: Instant, out: &mut Vec<u8>) -> bool {
        if !self.write_closed || self.fin_seq.is_some() || self.unsent() > 0 {
            return false;
        }
        let seq = self.seq_nr;
        let h = self.header(PacketType::Fin, seq, now);
        self.encode(&h, 0, out);
        self.fin_seq = Some(seq);
        self.push_record(Kind::Fin, 0, now);
        true
    }

    fn transmit_ack(&mut self, now: Instant, out: &mut Vec<u8>) -> bool {
        if self.ack_due {
            return self.transmit_state(now, out, false);
        }
        if self.keepalive_due {
            return self.transmit_state(now, out, true);
        }
        false
    }

    /// A STATE: it carries our next sequence number, which it does not
    /// consume. A keep-alive acknowledges one packet less, as libutp's
    /// does, so that no peer counts it as a duplicate ACK.
    fn transmit_state(&mut self, now: Instant, out: &mut Vec<u8>, keepalive: bool) -> bool {
        let mut h = self.header(PacketType::State, self.seq_nr, now);
        if keepalive {
            h.ack_nr = h.ack_nr.wrapping_sub(1);
        }
        self.encode(&h, 0, out);
        true
    }

    /// The receive buffer and what is held out of order go back.
    pub fn release(mut self, pool: &mut Vec<Vec<u8>>) {
        for slot in self.reorder.drain(..).flatten() {
            give_back(pool, slot);
        }
    }
}

/// Returns a reorder buffer to the pool, unless the pool is full.
fn give_back(pool: &mut Vec<Vec<u8>>, buf: Vec<u8>) {
    if pool.len() < POOL_MAX {
        pool.push(buf);
    }
}
