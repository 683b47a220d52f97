//! One client's HTTP/1.1 server connection, without any I/O: bytes in
//! with [`HttpConn::receive`], requests out of [`HttpConn::poll_request`],
//! responses in with [`HttpConn::respond`] (in request order), bytes to
//! send in [`HttpConn::output`], timers through
//! [`HttpConn::poll_timeout`] and [`HttpConn::handle_timeout`].
//!
//! Pipelined requests are parsed up to [`Limits::max_in_flight`] ahead and
//! answered in order; a response waits until every earlier one is
//! written. A malformed or oversized request gets its status (after the
//! responses owed before it) and the connection closes after it, as do
//! `Connection: close` and HTTP/1.0 without keep-alive.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::codec::outbuf::OutBuf;

use super::chunked::Chunked;
use super::error::HttpError;
use super::request::{parse_head, Framing, Head, Method, Request, Version};
use super::response::{HttpDate, Response, CONTINUE};

/// Largest request head (request line and header fields). Browsers send
/// under 2 KiB, but every cookie set for `localhost` by any other local
/// web app comes along to this port too; 32 KiB holds several large ones
/// (nginx's default allows 4 × 8 KiB lines, Node 16 KiB in all).
pub const MAX_HEAD: usize = 32 * 1024;

/// Most header fields in a head. Browsers send about 15.
pub const MAX_HEADERS: usize = 64;

/// Longest request target (path and query). Transmission's paths are
/// short; RFC 9112 3 asks for at least 8000 octets of request line.
pub const MAX_TARGET: usize = 8 * 1024;

/// Largest request body. `torrent-add` may carry a metainfo file as
/// base64 (`metainfo`): the daemon accepts metainfo up to 32 MiB
/// (`registry::metainfo::MAX_METAINFO_BYTES`), which is 42.7 MiB of
/// base64; an encoder escaping `/` as `\/` adds up to 1/64 of that again,
/// and the JSON around it is a few KiB. 48 MiB covers all of it.
pub const MAX_BODY: usize = 48 << 20;

/// Requests parsed but not yet answered, per connection. Browsers do not
/// pipeline and clients send one RPC call at a time; a few more lets a
/// pipelining client keep its connection busy.
pub const MAX_IN_FLIGHT: usize = 8;

/// Output queued before the connection stops reading new requests. One
/// large reply (a `torrent-get` of thousands of torrents, a static file)
/// may exceed it; the bound stops a client that sends requests without
/// reading the answers.
pub const MAX_OUTPUT: usize = 4 << 20;

/// Input held unparsed (pipelined requests waiting while
/// [`MAX_IN_FLIGHT`] are out) before the owner is told it overran: four
/// times the reactor's read budget of 256 KiB per client per turn, so
/// one turn's reads after `wants_input()` turned false always fit.
pub const MAX_UNPARSED: usize = 1 << 20;

/// A connection idle this long between requests is closed. The web
/// interface polls every few seconds; libcurl and browsers reopen a
/// closed keep-alive connection silently.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Time allowed for a request head once its first byte came: a real
/// client sends its head in one segment, a slowloris trickling a byte a
/// second is cut off here.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Time allowed for a body beyond what its size needs at
/// [`BODY_MIN_RATE`].
pub const BODY_GRACE: Duration = Duration::from_secs(10);

/// Slowest body upload tolerated, in bytes per second: 64 KiB/s lets a
/// 48 MiB body take 13 minutes, and a small one a trickling client must
/// finish within [`BODY_GRACE`].
pub const BODY_MIN_RATE: u64 = 64 * 1024;

/// Output pending with nothing written for this long: the client stopped
/// reading, and the connection is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Output buffer capacity kept while idle; a larger one is given back.
const OUTPUT_KEEP: usize = 64 * 1024;

/// Every bound of a connection; [`Limits::default`] has the constants
/// above, which suit the RPC server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest head, bytes ([`MAX_HEAD`]); over it: 431 (414 when the
    /// request line alone is longer).
    pub max_head: usize,
    /// Most header fields ([`MAX_HEADERS`]); over it: 431.
    pub max_headers: usize,
    /// Longest request target ([`MAX_TARGET`]); over it: 414.
    pub max_target: usize,
    /// Largest body ([`MAX_BODY`]); over it: 413.
    pub max_body: usize,
    /// Requests parsed and not yet answered ([`MAX_IN_FLIGHT`]).
    pub max_in_flight: usize,
    /// Output queued before reading pauses ([`MAX_OUTPUT`]).
    pub max_output: usize,
    /// Unparsed input held ([`MAX_UNPARSED`]).
    pub max_unparsed: usize,
    /// Idle time between requests ([`IDLE_TIMEOUT`]).
    pub idle_timeout: Duration,
    /// Time for a head after its first byte ([`HEAD_TIMEOUT`]); over it: 408.
    pub head_timeout: Duration,
    /// Body time beyond its size's need ([`BODY_GRACE`]); over it: 408.
    pub body_grace: Duration,
    /// Slowest body rate, bytes per second ([`BODY_MIN_RATE`]).
    pub body_min_rate: u64,
    /// Time without output progress ([`WRITE_TIMEOUT`]).
    pub write_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_head: MAX_HEAD,
            max_headers: MAX_HEADERS,
            max_target: MAX_TARGET,
            max_body: MAX_BODY,
            max_in_flight: MAX_IN_FLIGHT,
            max_output: MAX_OUTPUT,
            max_unparsed: MAX_UNPARSED,
            idle_timeout: IDLE_TIMEOUT,
            head_timeout: HEAD_TIMEOUT,
            body_grace: BODY_GRACE,
            body_min_rate: BODY_MIN_RATE,
            write_timeout: WRITE_TIMEOUT,
        }
    }
}

impl Limits {
    /// The deadline for a body of `len` bytes whose head ended at `start`.
    fn body_deadline(&self, start: Instant, len: usize) -> Instant {
        let secs = u64::try_from(len).unwrap_or(u64::MAX) / self.body_min_rate.max(1);
        start + self.body_grace + Duration::from_secs(secs.min(86_400))
    }
}

/// Where the reader is.
#[derive(Debug)]
enum Read {
    /// Waiting for (the rest of) a head.
    Head,
    /// `left` body bytes to go, delimited by `Content-Length`.
    Body { left: usize, deadline: Instant },
    /// A chunked body, begun at `start`.
    Chunked { decoder: Chunked, start: Instant },
    /// No more requests are read: after a request that closes the
    /// connection, an error, or the end of input.
    Stopped,
}

/// Where one request's answer is.
#[derive(Debug)]
enum SlotState {
    /// The body is still arriving.
    Reading,
    /// Complete, waiting in the queue for [`HttpConn::poll_request`].
    Queued,
    /// Handed to the owner, waiting for [`HttpConn::respond`].
    Waiting,
    /// Answered, waiting for the responses before it.
    Ready(Response),
}

/// One request's place in the response order.
#[derive(Debug)]
struct Slot {
    /// A `HEAD` request: the response goes without its body.
    head_only: bool,
    /// The connection closes after this response.
    close: bool,
    /// An HTTP/1.0 client asked to keep the connection.
    keep_alive_10: bool,
    /// `100 Continue` is owed before the body comes.
    continue_owed: bool,
    state: SlotState,
}

/// One client's HTTP/1.1 server connection, sans-IO.
#[derive(Debug)]
pub struct HttpConn {
    limits: Limits,
    /// Received bytes not yet parsed.
    input: Vec<u8>,
    /// Bytes of `input` already scanned for the end of the head.
    scanned: usize,
    read: Read,
    /// The request whose body is arriving.
    current: Option<Request>,
    /// The request being read closes the connection.
    stop_after: bool,
    /// Every request not yet answered on the wire, in order.
    slots: VecDeque<Slot>,
    /// Complete requests not yet polled.
    ready: VecDeque<Request>,
    /// Requests polled and not yet answered.
    unanswered: usize,
    out: OutBuf,
    date: Option<HttpDate>,
    /// No more requests will be read; close once the owed responses are
    /// written.
    closing: bool,
    /// A response that closes the connection was written: later ones are
    /// dropped.
    discard: bool,
    /// Close now, written or not.
    dead: bool,
    error: Option<HttpError>,
    /// The latest time seen (for calls that take none).
    clock: Instant,
    /// The last time anything was received, answered or written.
    last_activity: Instant,
    /// When the first byte of the head being read arrived.
    head_started: Option<Instant>,
    /// When output last made progress (or became pending).
    write_since: Instant,
}

impl HttpConn {
    /// A connection accepted at `now`. Limits of zero that would stall
    /// it (no request in flight, no header, no rate) are raised to one.
    pub fn new(limits: Limits, now: Instant) -> HttpConn {
        let limits = Limits {
            max_in_flight: limits.max_in_flight.max(1),
            max_headers: limits.max_headers.max(1),
            body_min_rate: limits.body_min_rate.max(1),
            ..limits
        };
        HttpConn {
            limits,
            input: Vec::new(),
            scanned: 0,
            read: Read::Head,
            current: None,
            stop_after: false,
            slots: VecDeque::new(),
            ready: VecDeque::new(),
            unanswered: 0,
            out: OutBuf::new(OUTPUT_KEEP),
            date: None,
            closing: false,
            discard: false,
            dead: false,
            error: None,
            clock: now,
            last_activity: now,
            head_started: None,
            write_since: now,
        }
    }

    /// The `Date` every response written from now on carries. Call it
    /// with the wall clock each loop turn before handing bytes or
    /// responses in; without it responses carry no `Date`.
    pub fn set_date(&mut self, date: HttpDate) {
        self.date = Some(date);
    }

    /// Bytes read from the client at `now`. An error says why the
    /// connection is closing (only the first time): the response for it,
    /// if it has a status, is queued after those owed; write the output,
    /// then close when [`should_close`](Self::should_close) says so.
    pub fn receive(&mut self, bytes: &[u8], now: Instant) -> Result<(), HttpError> {
        self.tick(now);
        if bytes.is_empty() {
            return Ok(());
        }
        self.last_activity = now;
        let mut bytes = bytes;
        while !bytes.is_empty() && !self.dead && !matches!(self.read, Read::Stopped) {
            bytes = self.take_body_directly(bytes);
            // Parsed as they come, so a large read of a head and its body
            // needs no more than the body's buffer.
            let room = self.limits.max_unparsed.saturating_sub(self.input.len());
            if room == 0 && !bytes.is_empty() {
                return self.fail(HttpError::InputOverflow);
            }
            let (now_part, later) = bytes.split_at(room.min(bytes.len()));
            if matches!(self.read, Read::Head)
                && self.head_started.is_none()
                && !now_part.is_empty()
            {
                self.head_started = Some(now);
            }
            self.input.extend_from_slice(now_part);
            self.pump()?;
            bytes = later;
        }
        Ok(())
    }

    /// The peer closed its sending side: nothing more will come. A
    /// request half received is dropped; those complete are still
    /// answered.
    pub fn end_of_input(&mut self) {
        if matches!(self.read, Read::Body { .. } | Read::Chunked { .. }) {
            self.current = None;
            self.slots.pop_back();
        }
        self.stop_reading();
        self.flush();
    }

    /// The next complete request, in order. Each one polled must be
    /// answered with [`respond`](Self::respond).
    pub fn poll_request(&mut self) -> Option<Request> {
        if self.discard {
            return None;
        }
        let request = self.ready.pop_front()?;
        if let Some(slot) = self
            .slots
            .iter_mut()
            .find(|s| matches!(s.state, SlotState::Queued))
        {
            slot.state = SlotState::Waiting;
        }
        self.unanswered += 1;
        Some(request)
    }

    /// A complete request waits to be polled (after a response made room
    /// for a pipelined one, say).
    pub fn has_request(&self) -> bool {
        !self.discard && !self.ready.is_empty()
    }

    /// Answers the oldest polled request not yet answered. Its bytes go
    /// out once every earlier response has. `NoRequest` when every
    /// polled request is already answered (the owner's mistake; nothing
    /// is queued). Answering makes room, so pipelined requests behind it
    /// may be parsed now: poll again. One that is malformed closes the
    /// connection as in [`receive`](Self::receive), seen through
    /// [`error`](Self::error) rather than returned.
    pub fn respond(&mut self, response: Response) -> Result<(), HttpError> {
        if self.unanswered == 0 {
            return Err(HttpError::NoRequest);
        }
        self.unanswered -= 1;
        self.last_activity = self.clock;
        if let Some(slot) = self
            .slots
            .iter_mut()
            .find(|s| matches!(s.state, SlotState::Waiting))
        {
            slot.state = SlotState::Ready(response);
        }
        self.flush();
        // A refusal found now is queued and kept in `error`.
        let _ = self.pump();
        Ok(())
    }

    /// Bytes to write to the client.
    pub fn output(&self) -> &[u8] {
        if self.dead {
            return &[];
        }
        self.out.pending()
    }

    /// `n` bytes of [`output`](Self::output) were written.
    pub fn consume(&mut self, n: usize) {
        if n > 0 {
            self.out.consume(n);
            self.write_since = self.clock;
            self.last_activity = self.clock;
        }
    }

    /// Whether the owner should read from the client now: false while
    /// [`Limits::max_in_flight`] requests wait for answers, while output
    /// is over [`Limits::max_output`], and once closing.
    pub fn wants_input(&self) -> bool {
        let reading_body = matches!(self.read, Read::Body { .. } | Read::Chunked { .. });
        let room = reading_body || self.slots.len() < self.limits.max_in_flight;
        !self.dead
            && !matches!(self.read, Read::Stopped)
            && room
            && self.out.len() <= self.limits.max_output
            && self.input.len() < self.limits.max_unparsed
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.dead || self.should_close() {
            return None;
        }
        let write = (!self.out.is_empty()).then(|| self.write_since + self.limits.write_timeout);
        let read = match &self.read {
            Read::Head if self.slots.len() >= self.limits.max_in_flight => None,
            Read::Head => match self.head_started {
                Some(t) => Some(t + self.limits.head_timeout),
                None if self.is_idle() => Some(self.last_activity + self.limits.idle_timeout),
                None => None,
            },
            Read::Body { deadline, .. } => Some(*deadline),
            Read::Chunked { decoder, start } => {
                Some(self.limits.body_deadline(*start, decoder.announced()))
            }
            Read::Stopped => None,
        };
        match (write, read) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Runs the timers due at `now`: a stalled writer or an idle
    /// connection closes at once (`WriteStalled`, `IdleTimeout`); a head
    /// or body too slow gets `408` and closes after it.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), HttpError> {
        self.tick(now);
        if self.dead || self.should_close() {
            return Ok(());
        }
        if !self.out.is_empty() && now >= self.write_since + self.limits.write_timeout {
            return self.fail(HttpError::WriteStalled);
        }
        let Some(due) = self.poll_timeout() else {
            return Ok(());
        };
        if now < due {
            return Ok(());
        }
        match self.read {
            Read::Head if self.head_started.is_some() => self.fail(HttpError::HeadTimeout),
            Read::Head => self.fail(HttpError::IdleTimeout),
            Read::Body { .. } | Read::Chunked { .. } => self.fail(HttpError::BodyTimeout),
            Read::Stopped => Ok(()),
        }
    }

    /// No more requests will be read: the connection closes once what is
    /// owed is written.
    pub fn is_closing(&self) -> bool {
        self.closing || self.dead
    }

    /// The owner should close the socket now: closing and every owed
    /// byte written, or dead (a timeout or overrun that drops the rest).
    pub fn should_close(&self) -> bool {
        self.dead
            || (self.closing && self.out.is_empty() && (self.discard || self.slots.is_empty()))
    }

    /// Why the connection is closing, if it is for an error.
    pub fn error(&self) -> Option<&HttpError> {
        self.error.as_ref()
    }

    /// Nothing is being read, answered or written.
    fn is_idle(&self) -> bool {
        self.slots.is_empty() && self.out.is_empty() && self.input.is_empty()
    }

    fn tick(&mut self, now: Instant) {
        self.clock = self.clock.max(now);
    }

    /// While a `Content-Length` body is being read and nothing is
    /// buffered before it, its bytes go straight into the body (a
    /// 43 MiB upload is copied once, not twice). Returns what is left.
    fn take_body_directly<'a>(&mut self, bytes: &'a [u8]) -> &'a [u8] {
        let (Read::Body { left, .. }, Some(req)) = (&mut self.read, &mut self.current) else {
            return bytes;
        };
        if !self.input.is_empty() {
            return bytes;
        }
        let take = (*left).min(bytes.len());
        let (now, later) = bytes.split_at(take);
        req.body.extend_from_slice(now);
        *left -= take;
        later
    }

    /// Parses what it can, then writes what it can.
    fn pump(&mut self) -> Result<(), HttpError> {
        let result = self.advance();
        self.flush();
        match result {
            Ok(()) => Ok(()),
            Err(e) => self.fail(e),
        }
    }

    /// Parses requests from `input` until it runs out, a request must
    /// wait for room, or reading stops.
    fn advance(&mut self) -> Result<(), HttpError> {
        let mut pos = 0;
        let result = loop {
            match self.step(pos) {
                Ok(Some(next)) => pos = next,
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        // Compact once per batch, not per request.
        // `scanned` counts from the start of the head, which stays first.
        self.input.drain(..pos.min(self.input.len()));
        if matches!(self.read, Read::Stopped) {
            self.input.clear();
        }
        result
    }

    /// One parsing step from `input[pos..]`: the new position, or `None`
    /// when nothing more can be done now.
    fn step(&mut self, pos: usize) -> Result<Option<usize>, HttpError> {
        let rest = self.input.get(pos..).unwrap_or_default();
        match &mut self.read {
            Read::Stopped => Ok(None),
            Read::Head => {
                if self.slots.len() >= self.limits.max_in_flight || rest.is_empty() {
                    return Ok(None);
                }
                // RFC 9112 2.2: empty lines before a request line are
                // ignored (old clients send CRLF after a POST body).
                let blank = rest
                    .iter()
                    .take_while(|&&b| b == b'\r' || b == b'\n')
                    .count();
                if blank > 0 {
                    self.scanned = self.scanned.saturating_sub(blank);
                    return Ok(Some(pos + blank));
                }
                let Some(end) = self.head_end(pos)? else {
                    return Ok(None);
                };
                let head_bytes = self.input.get(pos..pos + end).unwrap_or_default();
                let head = parse_head(
                    head_bytes,
                    self.limits.max_target,
                    self.limits.max_headers,
                    self.limits.max_body,
                )?;
                self.scanned = 0;
                let pos = pos + end;
                self.start_request(head, pos);
                Ok(Some(pos))
            }
            Read::Body { left, .. } => {
                let take = (*left).min(rest.len());
                if let Some(req) = self.current.as_mut() {
                    req.body
                        .extend_from_slice(rest.get(..take).unwrap_or_default());
                }
                *left -= take;
                if *left == 0 {
                    self.complete_request(pos + take);
                    return Ok(Some(pos + take));
                }
                Ok((take > 0).then_some(pos + take))
            }
            Read::Chunked { decoder, .. } => {
                let Some(req) = self.current.as_mut() else {
                    return Err(HttpError::BadRequest("no request for the body"));
                };
                let used = decoder.decode(
                    rest,
                    &mut req.body,
                    self.limits.max_body,
                    self.limits.max_head,
                )?;
                if decoder.is_done() {
                    self.complete_request(pos + used);
                    return Ok(Some(pos + used));
                }
                Ok((used > 0).then_some(pos + used))
            }
        }
    }

    /// The length of the head starting at `input[pos..]`, once its blank
    /// line is in; scans only bytes not scanned before. Too long: 414 if
    /// the request line alone is, else 431.
    fn head_end(&mut self, pos: usize) -> Result<Option<usize>, HttpError> {
        let rest = self.input.get(pos..).unwrap_or_default();
        let max = self.limits.max_head;
        let window = rest.get(..max).unwrap_or(rest);
        let from = self.scanned.saturating_sub(2).min(window.len());
        let found = find_blank_line(window, from);
        self.scanned = window.len();
        match found {
            Some(end) => Ok(Some(end)),
            None if rest.len() >= max => {
                if window.contains(&b'\n') {
                    Err(HttpError::HeadTooLarge)
                } else {
                    Err(HttpError::UriTooLong)
                }
            }
            None => Ok(None),
        }
    }

    /// A head is parsed: the request gets its place in the response order
    /// and its body is read next. `pos` is where the body starts.
    fn start_request(&mut self, head: Head, pos: usize) {
        let Head {
            request,
            framing,
            expects_continue,
            keep_alive,
        } = head;
        let body_waiting = self.input.len() <= pos;
        let wants_continue = expects_continue && request.version == Version::Http11 && body_waiting;
        self.head_started = None;
        self.stop_after = !keep_alive;
        self.slots.push_back(Slot {
            head_only: request.method == Method::Head,
            close: !keep_alive,
            keep_alive_10: keep_alive && request.version == Version::Http10,
            continue_owed: false,
            state: SlotState::Reading,
        });
        self.current = Some(request);
        self.read = match framing {
            Framing::Length(0) => {
                self.complete_request(pos);
                return;
            }
            Framing::Length(left) => Read::Body {
                left,
                deadline: self.limits.body_deadline(self.clock, left),
            },
            Framing::Chunked => Read::Chunked {
                decoder: Chunked::new(),
                start: self.clock,
            },
        };
        if let Some(slot) = self.slots.back_mut() {
            slot.continue_owed = wants_continue;
        }
    }

    /// The current request's body is complete: it joins the queue.
    /// `pos` is where the next head starts.
    fn complete_request(&mut self, pos: usize) {
        if let Some(slot) = self.slots.back_mut() {
            slot.state = SlotState::Queued;
            // The body came without waiting: the client needs no 100.
            slot.continue_owed = false;
        }
        if let Some(req) = self.current.take() {
            self.ready.push_back(req);
        }
        if self.stop_after {
            self.stop_reading();
        } else {
            self.read = Read::Head;
            // Pipelined bytes already here start the next head's clock.
            self.head_started = (self.input.len() > pos).then_some(self.clock);
        }
    }

    fn stop_reading(&mut self) {
        self.read = Read::Stopped;
        self.closing = true;
        self.head_started = None;
        self.input.clear();
        self.scanned = 0;
    }

    /// The connection fails with `err`: its response (if it has a
    /// status) takes the place of the request being read, or comes after
    /// those owed; nothing more is read.
    fn fail(&mut self, err: HttpError) -> Result<(), HttpError> {
        if self.error.is_some() || self.dead {
            return Ok(());
        }
        self.error = Some(err.clone());
        match err.status() {
            None => self.dead = true,
            Some(status) => {
                let response = Response::html(status, "").closing();
                let reading = self
                    .slots
                    .back()
                    .is_some_and(|s| matches!(s.state, SlotState::Reading));
                if reading {
                    self.current = None;
                    self.slots.pop_back();
                }
                self.slots.push_back(Slot {
                    head_only: false,
                    close: true,
                    keep_alive_10: false,
                    continue_owed: false,
                    state: SlotState::Ready(response),
                });
                self.stop_reading();
                self.flush();
            }
        }
        Err(err)
    }

    /// Writes every response whose turn has come (and a `100 Continue`
    /// owed by the first request still reading).
    fn flush(&mut self) {
        while let Some(slot) = self.slots.front_mut() {
            if slot.continue_owed {
                slot.continue_owed = false;
                if !self.discard {
                    self.queue_bytes(CONTINUE);
                }
                continue;
            }
            if !matches!(slot.state, SlotState::Ready(_)) {
                break;
            }
            let Some(slot) = self.slots.pop_front() else {
                break;
            };
            let SlotState::Ready(response) = slot.state else {
                break;
            };
            if self.discard {
                continue;
            }
            let last = matches!(self.read, Read::Stopped) && self.slots.is_empty();
            let close = slot.close || response.is_closing() || last;
            let was_empty = self.out.is_empty();
            response.write(
                self.out.tail(),
                slot.head_only,
                close,
                slot.keep_alive_10,
                self.date.as_ref(),
            );
            if was_empty {
                self.write_since = self.clock;
            }
            if close {
                self.discard = true;
                self.ready.clear();
                self.current = None;
                self.stop_reading();
            }
        }
    }

    fn queue_bytes(&mut self, bytes: &[u8]) {
        if self.out.is_empty() {
            self.write_since = self.clock;
        }
        self.out.tail().extend_from_slice(bytes);
    }
}

/// The index just past the blank line that ends a head in `buf` (CRLF
/// or bare LF line ends, as `httparse` accepts), searching from `from`.
fn find_blank_line(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(off) = buf.get(i..)?.iter().position(|&b| b == b'\n') {
        let nl = i + off;
        match (buf.get(nl + 1), buf.get(nl + 2)) {
            (Some(b'\n'), _) => return Some(nl + 2),
            (Some(b'\r'), Some(b'\n')) => return Some(nl + 3),
            _ => i = nl + 1,
        }
    }
    None
}
