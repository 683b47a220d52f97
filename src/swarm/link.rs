//! The byte stream under one peer connection: plaintext, or RC4 after a
//! message stream encryption handshake ([`crate::peer::mse`]). An
//! incoming connection is sniffed first: a plaintext BitTorrent
//! handshake, or the start of MSE. The connection above
//! ([`PeerConn`]) always sees plaintext.

use std::time::Instant;

use crate::peer::conn::PeerConn;
use crate::peer::mse::{self, Cipher, Established, Initiator, Policy, Responder, Secrets};

/// Output moved from the connection and encrypted at once. Bounded, so
/// that the connection's own queue still tells how much waits (the
/// upload soft limit reads it).
const CHUNK: usize = 64 << 10;

enum State {
    /// No encryption.
    Plain,
    /// Incoming, too few bytes yet to tell plaintext from MSE.
    Sniffing(Vec<u8>),
    /// Our MSE handshake on a connection we dialled.
    Initiating(Box<Initiator>),
    /// The peer's MSE handshake on a connection it opened.
    Responding(Box<Responder>),
    /// RC4 both ways.
    Rc4(Box<Cipher>),
}

/// One connection's transport.
pub(super) struct Link {
    state: State,
    /// Bytes ready for the socket ahead of the connection's output: the
    /// MSE handshake, then encrypted output.
    wire: Vec<u8>,
    /// Bytes of `wire` already sent.
    sent: usize,
    /// Decryption buffer.
    scratch: Vec<u8>,
    /// We dialled with MSE offering plaintext as well: if the peer drops
    /// the handshake, it may be a plaintext-only client worth a retry.
    pub may_fall_back: bool,
    /// The torrent an MSE handshake was for: the BitTorrent handshake
    /// that follows must name the same one.
    pub mse_torrent: Option<[u8; 20]>,
}

/// Gets the torrent an initiator names through HASH('req2', info_hash).
pub(super) type Lookup<'a> = &'a dyn Fn(&[u8; 20]) -> Option<[u8; 20]>;

impl Link {
    fn new(state: State) -> Link {
        Link {
            state,
            wire: Vec::new(),
            sent: 0,
            scratch: Vec::new(),
            may_fall_back: false,
            mse_torrent: None,
        }
    }

    /// A plaintext connection.
    pub fn plain() -> Link {
        Link::new(State::Plain)
    }

    /// A connection a peer opened: plaintext or MSE, to be seen.
    pub fn incoming() -> Link {
        Link::new(State::Sniffing(Vec::new()))
    }

    /// A connection we dialled for `info_hash`, starting MSE under
    /// `policy`.
    pub fn initiate(info_hash: [u8; 20], policy: Policy, secrets: Secrets) -> Result<Link, String> {
        let mut i = Initiator::new(info_hash, policy, secrets, Vec::new()).map_err(mse_text)?;
        let mut link = Link::new(State::Plain);
        link.wire
            .extend(std::iter::from_fn(|| i.poll_output()).flatten());
        link.state = State::Initiating(Box::new(i));
        link.may_fall_back = policy != Policy::Required;
        Ok(link)
    }

    /// The stream is RC4-encrypted.
    pub fn is_encrypted(&self) -> bool {
        matches!(self.state, State::Rc4(_))
    }

    /// Our MSE handshake as initiator has not finished.
    pub fn is_initiating(&self) -> bool {
        matches!(self.state, State::Initiating(_))
    }

    /// Bytes from the socket: the stream's plaintext goes to `conn`. An
    /// error says why the connection must close.
    pub fn receive(
        &mut self,
        bytes: &[u8],
        conn: &mut PeerConn,
        policy: Policy,
        secrets: &mut dyn FnMut() -> Secrets,
        lookup: Lookup<'_>,
        now: Instant,
    ) -> Result<(), String> {
        let done = match &mut self.state {
            State::Plain => {
                conn.receive(bytes, now);
                return Ok(());
            }
            State::Rc4(c) => {
                self.scratch.clear();
                self.scratch.extend_from_slice(bytes);
                c.decrypt(&mut self.scratch);
                conn.receive(&self.scratch, now);
                return Ok(());
            }
            State::Sniffing(held) => {
                held.extend_from_slice(bytes);
                match mse::is_plain_handshake(held) {
                    None => return Ok(()),
                    Some(true) if policy == Policy::Required => {
                        return Err("a plaintext handshake, and encryption is required".into())
                    }
                    Some(true) => {
                        let held = std::mem::take(held);
                        self.state = State::Plain;
                        conn.receive(&held, now);
                        return Ok(());
                    }
                    Some(false) => {
                        let held = std::mem::take(held);
                        let mut r = Responder::new(policy, secrets()).map_err(mse_text)?;
                        r.handle_input(&held, lookup).map_err(mse_text)?;
                        self.wire
                            .extend(std::iter::from_fn(|| r.poll_output()).flatten());
                        let done = r.poll_done();
                        self.state = State::Responding(Box::new(r));
                        done
                    }
                }
            }
            State::Initiating(i) => {
                i.handle_input(bytes).map_err(mse_text)?;
                self.wire
                    .extend(std::iter::from_fn(|| i.poll_output()).flatten());
                i.poll_done()
            }
            State::Responding(r) => {
                r.handle_input(bytes, lookup).map_err(mse_text)?;
                self.wire
                    .extend(std::iter::from_fn(|| r.poll_output()).flatten());
                r.poll_done()
            }
        };
        if let Some(e) = done {
            self.established(e, conn, now);
        }
        Ok(())
    }

    fn established(&mut self, e: Established, conn: &mut PeerConn, now: Instant) {
        self.may_fall_back = false;
        self.mse_torrent = Some(e.info_hash);
        self.state = match e.cipher {
            Some(c) => State::Rc4(Box::new(c)),
            None => State::Plain,
        };
        conn.receive(&e.initial_payload, now);
        conn.receive(&e.remainder, now);
    }

    /// Bytes to send: the handshake's, then the connection's (encrypted
    /// in chunks when the stream is).
    pub fn output<'a>(&'a mut self, conn: &'a mut PeerConn) -> &'a [u8] {
        if self.sent >= self.wire.len() {
            self.wire.clear();
            self.sent = 0;
            match &mut self.state {
                State::Plain => return conn.output(),
                State::Rc4(c) => {
                    let out = conn.output();
                    let n = out.len().min(CHUNK);
                    if n > 0 {
                        self.wire.extend_from_slice(&out[..n]);
                        conn.consume_output(n);
                        c.encrypt(&mut self.wire);
                    }
                }
                // The connection's output waits for the handshake's end.
                _ => {}
            }
        }
        &self.wire[self.sent..]
    }

    /// `n` bytes of [`Link::output`] were sent.
    pub fn consume(&mut self, n: usize, conn: &mut PeerConn) {
        if self.sent < self.wire.len() {
            self.sent = (self.sent + n).min(self.wire.len());
        } else if matches!(self.state, State::Plain) {
            conn.consume_output(n);
        }
    }
}

fn mse_text(e: mse::MseError) -> String {
    format!("encryption handshake: {e}")
}
