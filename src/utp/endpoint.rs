//! The endpoint: every connection of one UDP socket, found by the
//! sender's address and connection id, with the bounds on how many there
//! are, the events queue, and the RESETs for packets nobody owns.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use slab::Slab;

use super::conn::{timestamp, Conn, Phase};
use super::packet::{self, Header, Packet, PacketType};
use super::types::{CloseReason, Config, ConnId, ConnStats, EndpointStats, Event, State, UtpError};

/// RESETs for packets of unknown connections, per second. Anyone can send
/// us a packet with a forged source address, so without a limit we would
/// be a reflector; stray packets after a restart need only a few.
pub const RESET_RATE: u64 = 50;

/// RESETs that may go out at once before the rate applies.
pub const RESET_BURST: u32 = 20;

/// Packets the endpoint itself has queued (RESETs): beyond this they are
/// dropped, the peer then times out instead.
pub const MAX_CONTROL: usize = 256;

/// How long a finished connection still acknowledges what its peer sends
/// (its FIN again, when our last ACK was lost): libtorrent retransmits
/// after at least 500 ms and libutp after 1 s, a few times each.
pub const TIME_WAIT: Duration = Duration::from_secs(20);

/// Attempts at a random connection id not in use with an address before
/// `connect` gives up (at most `max_connections` of 65,536 are taken).
const ID_ATTEMPTS: usize = 64;

/// A token bucket refilled with whole tokens as time passes.
#[derive(Debug)]
struct Bucket {
    tokens: u32,
    last: Instant,
}

impl Bucket {
    fn take(&mut self, now: Instant) -> bool {
        let per_token = Duration::from_micros(1_000_000 / RESET_RATE);
        let elapsed = now.saturating_duration_since(self.last);
        let earned = (elapsed.as_micros() / per_token.as_micros()) as u64;
        if earned > 0 {
            self.tokens = (u64::from(self.tokens) + earned).min(u64::from(RESET_BURST)) as u32;
            self.last = if self.tokens == RESET_BURST {
                now
            } else {
                self.last + per_token * earned as u32
            };
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

/// What a finished connection leaves to acknowledge its peer's last
/// packets with.
#[derive(Debug, Clone, Copy)]
struct TimeWait {
    ack: Header,
    until: Instant,
}

/// Per-slot bookkeeping beside the connection.
#[derive(Debug)]
struct Slot {
    conn: Conn,
    outgoing: bool,
    counted_half_open: bool,
    readable_queued: bool,
    writable_queued: bool,
}

/// Every uTP connection on one socket. See the [module](super) docs.
#[derive(Debug)]
pub struct Endpoint {
    config: Config,
    rng: fastrand::Rng,
    epoch: Instant,
    slots: Slab<Slot>,
    generations: Vec<u32>,
    by_key: HashMap<(SocketAddr, u16), usize>,
    ready: VecDeque<usize>,
    events: VecDeque<(ConnId, Event)>,
    control: VecDeque<(SocketAddr, Header)>,
    half_open_in: VecDeque<usize>,
    half_open_out: usize,
    time_wait: HashMap<(SocketAddr, u16), TimeWait>,
    /// Keys of `time_wait` in the order they expire (all wait as long).
    time_wait_order: VecDeque<((SocketAddr, u16), Instant)>,
    resets: Bucket,
    pool: Vec<Vec<u8>>,
    scratch: Vec<usize>,
    stats: EndpointStats,
    #[cfg(test)]
    isn: Option<u16>,
}

impl Endpoint {
    /// An endpoint with no connections. Timestamps count microseconds from
    /// `now`; `rng` draws connection ids and sequence numbers.
    pub fn new(config: Config, rng: fastrand::Rng, now: Instant) -> Endpoint {
        Endpoint {
            config,
            rng,
            epoch: now,
            slots: Slab::new(),
            generations: Vec::new(),
            by_key: HashMap::new(),
            ready: VecDeque::new(),
            events: VecDeque::new(),
            control: VecDeque::new(),
            half_open_in: VecDeque::new(),
            half_open_out: 0,
            time_wait: HashMap::new(),
            time_wait_order: VecDeque::new(),
            resets: Bucket {
                tokens: RESET_BURST,
                last: now,
            },
            pool: Vec::new(),
            scratch: Vec::new(),
            stats: EndpointStats::default(),
            #[cfg(test)]
            isn: None,
        }
    }

    /// Tests: every new connection starts at sequence number `isn`.
    #[cfg(test)]
    pub(crate) fn force_isn(&mut self, isn: u16) {
        self.isn = Some(isn);
    }

    fn next_isn(&mut self) -> u16 {
        #[cfg(test)]
        if let Some(isn) = self.isn {
            return isn;
        }
        self.rng.u16(..)
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    fn id_of(&self, index: usize) -> ConnId {
        ConnId::new(index, self.generations.get(index).copied().unwrap_or(0))
    }

    fn slot(&self, id: ConnId) -> Option<&Slot> {
        self.slots.get(id.index()).filter(|s| s.conn.id == id)
    }

    fn slot_mut(&mut self, id: ConnId) -> Option<&mut Slot> {
        self.slots.get_mut(id.index()).filter(|s| s.conn.id == id)
    }

    fn insert(
        &mut self,
        outgoing: bool,
        conn_for: impl FnOnce(ConnId, &Config, Instant) -> Conn,
    ) -> usize {
        let entry = self.slots.vacant_entry();
        let index = entry.key();
        if self.generations.len() <= index {
            self.generations.resize(index + 1, 0);
        }
        let id = ConnId::new(index, self.generations[index]);
        entry.insert(Slot {
            conn: conn_for(id, &self.config, self.epoch),
            outgoing,
            counted_half_open: true,
            readable_queued: false,
            writable_queued: false,
        });
        index
    }

    /// Opens a connection to `addr`; its SYN goes out at the next
    /// `poll_transmit`. Data may be sent at once (it waits for the answer).
    pub fn connect(&mut self, addr: SocketAddr, now: Instant) -> Result<ConnId, UtpError> {
        if self.slots.len() >= self.config.max_connections {
            return Err(UtpError::TooManyConnections);
        }
        if self.half_open_out >= self.config.max_half_open {
            return Err(UtpError::TooManyHalfOpen);
        }
        let recv_id = (0..ID_ATTEMPTS)
            .map(|_| self.rng.u16(..))
            .find(|r| !self.by_key.contains_key(&(addr, *r)))
            .ok_or(UtpError::TooManyConnections)?;
        let isn = self.next_isn();
        let index = self.insert(true, |id, config, epoch| {
            Conn::outgoing(id, addr, recv_id, isn, config, epoch, now)
        });
        self.by_key.insert((addr, recv_id), index);
        self.half_open_out += 1;
        self.queue(index);
        Ok(self.id_of(index))
    }

    /// A datagram from `from`. Anything that is not uTP, or not for a
    /// connection we have, is counted and dropped (or answered with a
    /// rate-limited RESET).
    pub fn handle_datagram(&mut self, from: SocketAddr, bytes: &[u8], now: Instant) {
        self.stats.packets_in += 1;
        let pkt = match packet::decode(bytes) {
            Ok(p) => p,
            Err(e) => {
                self.stats.invalid += 1;
                log::debug!("uTP datagram from {from}: {e}");
                return;
            }
        };
        match pkt.header.ty {
            PacketType::Reset => self.handle_reset(from, &pkt.header),
            PacketType::Syn => self.handle_syn(from, &pkt.header, now),
            _ => self.handle_packet(from, &pkt, now),
        }
    }

    fn handle_packet(&mut self, from: SocketAddr, pkt: &Packet<'_>, now: Instant) {
        let key = (from, pkt.header.connection_id);
        let Some(&index) = self.by_key.get(&key) else {
            self.stats.dropped += 1;
            if let Some(tw) = self.time_wait.get(&key) {
                if pkt.header.ty != PacketType::State && self.control.len() < MAX_CONTROL {
                    self.control.push_back((from, tw.ack));
                }
                return;
            }
            self.reset_unknown(from, &pkt.header, pkt.header.connection_id, now);
            return;
        };
        let Some(slot) = self.slots.get_mut(index) else {
            return;
        };
        if !slot.conn.handle(pkt, now, &mut self.pool) {
            self.stats.dropped += 1;
        }
        self.after(index);
    }

    fn handle_reset(&mut self, from: SocketAddr, h: &Header) {
        let id = h.connection_id;
        // Ours by our receive id (BEP 29); or by our send id, as libutp
        // answers packets of connections it no longer knows.
        let found = [
            (id, false),
            (id.wrapping_sub(1), true),
            (id.wrapping_add(1), true),
        ]
        .into_iter()
        .find_map(|(recv, by_send)| {
            let index = *self.by_key.get(&(from, recv))?;
            let conn = &self.slots.get(index)?.conn;
            (!by_send || conn.send_id == id).then_some(index)
        });
        let Some(index) = found else {
            self.stats.dropped += 1;
            return;
        };
        if let Some(slot) = self.slots.get_mut(index) {
            slot.conn.on_reset(&mut self.pool);
        }
        self.after(index);
    }

    fn handle_syn(&mut self, from: SocketAddr, h: &Header, now: Instant) {
        let key = (from, h.connection_id.wrapping_add(1));
        if let Some(&index) = self.by_key.get(&key) {
            // The peer's SYN again (our answer was lost): answer again.
            match self.slots.get_mut(index) {
                Some(s) if !s.outgoing && s.conn.syn_seq == h.seq_nr => s.conn.syn_again(),
                _ => {
                    self.stats.dropped += 1;
                    return;
                }
            }
            self.after(index);
            return;
        }
        if self.config.accept_incoming
            && (self.slots.len() >= self.config.max_connections
                || self.half_open_in.len() >= self.config.max_half_open_incoming)
        {
            self.evict_half_open();
        }
        if !self.config.accept_incoming
            || self.slots.len() >= self.config.max_connections
            || self.half_open_in.len() >= self.config.max_half_open_incoming
        {
            self.stats.syns_refused += 1;
            self.reset_unknown(from, h, h.connection_id, now);
            return;
        }
        let isn = self.next_isn();
        let index = self.insert(false, |id, config, epoch| {
            Conn::incoming(id, from, h, isn, config, epoch, now)
        });
        self.by_key.insert(key, index);
        self.half_open_in.push_back(index);
        self.queue(index);
    }

    /// Drops the oldest incoming connection still half-open, silently (its
    /// peer never proved its address; the owner never heard of it).
    fn evict_half_open(&mut self) {
        while let Some(index) = self.half_open_in.pop_front() {
            let Some(slot) = self.slots.get_mut(index) else {
                continue;
            };
            if slot.conn.phase != Phase::SynReceived {
                continue;
            }
            slot.counted_half_open = false;
            self.stats.syns_evicted += 1;
            self.forget(index);
            return;
        }
    }

    /// Answers a packet nobody owns with a RESET carrying `id`, within the
    /// rate limit.
    fn reset_unknown(&mut self, to: SocketAddr, h: &Header, id: u16, now: Instant) {
        if !self.resets.take(now) || self.control.len() >= MAX_CONTROL {
            self.stats.resets_suppressed += 1;
            return;
        }
        let reset = Header {
            ty: PacketType::Reset,
            connection_id: id,
            timestamp_us: timestamp(now, self.epoch),
            timestamp_diff_us: 0,
            wnd_size: 0,
            seq_nr: self.rng.u16(..),
            ack_nr: h.seq_nr,
        };
        self.control.push_back((to, reset));
    }

    /// Puts a connection in the transmit queue.
    fn queue(&mut self, index: usize) {
        if let Some(slot) = self.slots.get_mut(index) {
            if !slot.conn.queued {
                slot.conn.queued = true;
                self.ready.push_back(index);
            }
        }
    }

    /// After a connection was called: its events, its half-open status,
    /// its death, and its place in the transmit queue.
    fn after(&mut self, index: usize) {
        let id = self.id_of(index);
        let Some(slot) = self.slots.get_mut(index) else {
            return;
        };
        if slot.counted_half_open && !slot.conn.is_half_open() {
            slot.counted_half_open = false;
            if slot.outgoing {
                self.half_open_out -= 1;
            } else {
                self.half_open_in.retain(|&i| i != index);
            }
        }
        let p = std::mem::take(&mut slot.conn.pending);
        let mut ev = [None; 4];
        if slot.conn.announced {
            if p.incoming {
                ev[0] = Some(Event::Incoming {
                    from: slot.conn.addr,
                });
            }
            if p.connected {
                ev[1] = Some(Event::Connected);
            }
            if p.readable && !slot.readable_queued {
                slot.readable_queued = true;
                ev[2] = Some(Event::Readable);
            }
            if p.writable && !slot.writable_queued {
                slot.writable_queued = true;
                ev[3] = Some(Event::Writable);
            }
        }
        self.events
            .extend(ev.into_iter().flatten().map(|e| (id, e)));
        let Phase::Dead(reason) = slot.conn.phase else {
            self.queue(index);
            return;
        };
        let (addr, recv_id, announced) = (slot.conn.addr, slot.conn.recv_id, slot.conn.announced);
        self.by_key.remove(&(addr, recv_id));
        if reason == CloseReason::Finished {
            let last = slot.conn.last_seen();
            let ack = slot.conn.final_ack(last);
            self.enter_time_wait((addr, recv_id), ack, last);
        }
        if announced {
            self.events.push_back((id, Event::Closed(reason)));
        } else {
            self.free(index);
        }
    }

    /// Sends a finished connection's last ACK and keeps it to acknowledge
    /// retransmissions for TIME_WAIT; at most `max_connections` wait.
    fn enter_time_wait(&mut self, key: (SocketAddr, u16), ack: Header, now: Instant) {
        if self.control.len() < MAX_CONTROL {
            self.control.push_back((key.0, ack));
        }
        while self.time_wait_order.len() >= self.config.max_connections {
            self.expire_time_wait(None);
        }
        let until = now + TIME_WAIT;
        self.time_wait.insert(key, TimeWait { ack, until });
        self.time_wait_order.push_back((key, until));
    }

    /// Ends the oldest time-wait (`None`), or those ended by `now`.
    fn expire_time_wait(&mut self, now: Option<Instant>) {
        while let Some(&(key, until)) = self.time_wait_order.front() {
            if now.is_some_and(|now| until > now) {
                return;
            }
            self.time_wait_order.pop_front();
            if self.time_wait.get(&key).is_some_and(|tw| tw.until == until) {
                self.time_wait.remove(&key);
            }
            if now.is_none() {
                return;
            }
        }
    }

    /// Removes a live connection without telling anyone.
    fn forget(&mut self, index: usize) {
        if let Some(slot) = self.slots.get(index) {
            let key = (slot.conn.addr, slot.conn.recv_id);
            self.by_key.remove(&key);
        }
        self.free(index);
    }

    fn free(&mut self, index: usize) {
        if !self.slots.contains(index) {
            return;
        }
        let slot = self.slots.remove(index);
        if slot.conn.queued {
            self.ready.retain(|&i| i != index);
        }
        if slot.counted_half_open {
            if slot.outgoing {
                self.half_open_out -= 1;
            } else {
                self.half_open_in.retain(|&i| i != index);
            }
        }
        if let Some(g) = self.generations.get_mut(index) {
            *g = g.wrapping_add(1);
        }
        slot.conn.release(&mut self.pool);
    }

    /// Writes the next datagram into `out` (cleared first) and returns its
    /// destination; `None` when nothing is due. Call until `None` after
    /// each batch of datagrams and each stream call.
    pub fn poll_transmit(&mut self, now: Instant, out: &mut Vec<u8>) -> Option<SocketAddr> {
        out.clear();
        if let Some((to, h)) = self.control.pop_front() {
            packet::encode(out, &h, &[]);
            self.stats.packets_out += 1;
            if h.ty == PacketType::Reset {
                self.stats.resets_sent += 1;
            }
            return Some(to);
        }
        while let Some(index) = self.ready.pop_front() {
            let Some(slot) = self.slots.get_mut(index) else {
                continue;
            };
            if !slot.conn.queued {
                continue;
            }
            slot.conn.queued = false;
            if slot.conn.poll_transmit(now, out) {
                slot.conn.queued = true;
                self.ready.push_back(index);
                self.stats.packets_out += 1;
                return Some(slot.conn.addr);
            }
        }
        None
    }

    /// The earliest instant `handle_timeout` has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let conns = self.slots.iter().filter_map(|(_, s)| s.conn.next_timeout());
        let waits = self.time_wait_order.front().map(|&(_, until)| until);
        conns.chain(waits).min()
    }

    /// Fires the timers due at `now`: retransmissions, keep-alives,
    /// zero-window probes, and the deaths of idle, unanswered or finished
    /// connections.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.expire_time_wait(Some(now));
        let mut due = std::mem::take(&mut self.scratch);
        due.clear();
        due.extend(
            self.slots
                .iter()
                .filter(|(_, s)| s.conn.next_timeout().is_some_and(|t| t <= now))
                .map(|(i, _)| i),
        );
        for &index in &due {
            if let Some(slot) = self.slots.get_mut(index) {
                slot.conn.handle_timeout(now, &mut self.pool);
            }
            self.after(index);
        }
        self.scratch = due;
    }

    /// The next event, if any. After `Closed` the id is forgotten.
    pub fn poll_event(&mut self) -> Option<(ConnId, Event)> {
        let (id, event) = self.events.pop_front()?;
        match event {
            Event::Readable => {
                if let Some(s) = self.slot_mut(id) {
                    s.readable_queued = false;
                }
            }
            Event::Writable => {
                if let Some(s) = self.slot_mut(id) {
                    s.writable_queued = false;
                }
            }
            Event::Closed(_) => {
                if self.slot(id).is_some() {
                    self.free(id.index());
                }
            }
            Event::Incoming { .. } | Event::Connected => {}
        }
        Some((id, event))
    }

    /// Queues what fits of `data` in the send buffer; returns how much (0
    /// when full or closed, with `Writable` to follow when room returns).
    pub fn send(&mut self, id: ConnId, data: &[u8]) -> usize {
        let Some(slot) = self.slot_mut(id) else {
            return 0;
        };
        let n = slot.conn.send(data);
        if n > 0 {
            self.queue(id.index());
        }
        n
    }

    /// Copies received bytes, in order, into `buf`; returns how many.
    pub fn recv(&mut self, id: ConnId, buf: &mut [u8]) -> usize {
        let Some(slot) = self.slot_mut(id) else {
            return 0;
        };
        let (n, update) = slot.conn.recv(buf);
        if update {
            self.queue(id.index());
        }
        n
    }

    /// Bytes ready to `recv`.
    pub fn readable_len(&self, id: ConnId) -> usize {
        self.slot(id).map_or(0, |s| s.conn.readable_len())
    }

    /// Whether the peer has finished and everything it sent was read.
    pub fn eof(&self, id: ConnId) -> bool {
        self.slot(id).is_some_and(|s| s.conn.eof())
    }

    /// Bytes `send` would take now.
    pub fn send_buffer_room(&self, id: ConnId) -> usize {
        self.slot(id).map_or(0, |s| s.conn.room())
    }

    /// Ends our sending: the FIN goes after the queued data (at a later
    /// `poll_transmit`, which gives it its time). Receiving goes on until
    /// the peer's FIN; `Closed(Finished)` follows both.
    pub fn close(&mut self, id: ConnId) {
        if let Some(slot) = self.slot_mut(id) {
            slot.conn.close();
            self.queue(id.index());
        }
    }

    /// Aborts: the peer gets a RESET, the connection and its pending
    /// events are forgotten at once.
    pub fn reset(&mut self, id: ConnId) {
        let Some(slot) = self.slot(id) else {
            return;
        };
        if !slot.conn.is_dead() {
            let h = slot.conn.reset_header(slot.conn.last_seen());
            if self.control.len() < MAX_CONTROL {
                self.control.push_back((slot.conn.addr, h));
            } else {
                self.stats.resets_suppressed += 1;
            }
        }
        self.events.retain(|(i, _)| *i != id);
        self.forget(id.index());
    }

    /// The connection's stage; `None` once forgotten.
    pub fn state(&self, id: ConnId) -> Option<State> {
        self.slot(id).map(|s| s.conn.state())
    }

    /// The peer's address.
    pub fn peer_addr(&self, id: ConnId) -> Option<SocketAddr> {
        self.slot(id).map(|s| s.conn.addr)
    }

    /// One connection's figures.
    pub fn conn_stats(&self, id: ConnId) -> Option<ConnStats> {
        self.slot(id).map(|s| s.conn.stats())
    }

    /// The endpoint's figures.
    pub fn stats(&self) -> EndpointStats {
        EndpointStats {
            connections: self.slots.len(),
            half_open: self.half_open_out + self.half_open_in.len(),
            ..self.stats
        }
    }
}
