//! Message Stream Encryption / Protocol Encryption (MSE/PE), sans-IO.
//!
//! The obfuscation handshake of Vuze, libtorrent and Transmission: a 768-bit
//! Diffie-Hellman exchange, SHA-1 key derivation, then RC4 with the first
//! 1024 bytes of keystream dropped. It hides the BitTorrent protocol from
//! naive traffic shaping; it authenticates nobody.
//!
//! On the wire (A = [`Initiator`], B = [`Responder`]):
//! 1. A→B: Ya, PadA
//! 2. B→A: Yb, PadB
//! 3. A→B: HASH('req1', S), HASH('req2', SKEY) xor HASH('req3', S),
//!    ENCRYPT(VC, crypto_provide, len(PadC), PadC, len(IA)), ENCRYPT(IA)
//! 4. B→A: ENCRYPT(VC, crypto_select, len(PadD), PadD), then the payload
//!    stream, RC4 or plaintext as selected.
//!
//! Both roles take bytes through `handle_input` and give bytes through
//! `poll_output` and the result through `poll_done`. There is no clock: the
//! caller bounds the handshake's duration. Every buffer is bounded by the
//! spec's own limits ([`MAX_PAD`], [`MAX_IA`]); a violation is an
//! [`MseError`], never a panic.

use std::collections::VecDeque;
use std::fmt;

use num_bigint::BigUint;
use rc4::consts::U20;
use rc4::{Key, KeyInit, Rc4, StreamCipher};
use sha1::{Digest, Sha1};

/// Length of a Diffie-Hellman public key or shared secret on the wire.
pub const DH_LEN: usize = 96;
/// Largest PadA/PadB/PadC/PadD the spec allows.
pub const MAX_PAD: usize = 512;
/// Largest initial payload (IA) we send or accept. The spec sets no limit;
/// a BitTorrent handshake (68 bytes) fits with plenty of room.
pub const MAX_IA: usize = 1024;
/// crypto_provide/crypto_select bit: plaintext payload stream.
pub const CRYPTO_PLAINTEXT: u32 = 0x01;
/// crypto_provide/crypto_select bit: RC4 payload stream.
pub const CRYPTO_RC4: u32 = 0x02;

/// Verification constant: 8 zero bytes, encrypted, marks where sync is.
const VC: [u8; 8] = [0; 8];
/// RC4's early keystream is biased; the spec drops this much.
const RC4_DISCARD: usize = 1024;
/// What a plaintext BitTorrent connection starts with.
const PLAIN_PREFIX: &[u8; 20] = b"\x13BitTorrent protocol";
/// Ya/Yb then at most `MAX_PAD` bytes of PadA before req1 (20 bytes).
const REQ1_WINDOW: usize = MAX_PAD + 20;
/// Yb then at most `MAX_PAD` bytes of PadB before the encrypted VC.
const VC_WINDOW: usize = MAX_PAD + VC.len();
/// VC, crypto_provide, len(PadC).
const PROVIDE_LEN: usize = 8 + 4 + 2;
/// crypto_select, len(PadD) (after the VC the initiator scanned for).
const SELECT_LEN: usize = 4 + 2;

/// The 768-bit MODP prime of the spec (the Oakley group 1 prime).
const P_HEX: &str = "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A63A36210000000000090563";
const P_BYTES: [u8; DH_LEN] = decode_hex_96(P_HEX);
/// The generator.
const G: u32 = 2;

/// Compile-time hex decoding so the prime is checked at build time.
const fn decode_hex_96(s: &str) -> [u8; DH_LEN] {
    const fn nibble(c: u8) -> u8 {
        match c {
            b'0'..=b'9' => c - b'0',
            b'A'..=b'F' => c - b'A' + 10,
            _ => panic!("bad hex digit in constant"),
        }
    }
    let b = s.as_bytes();
    assert!(b.len() == 2 * DH_LEN, "constant has the wrong length");
    let mut out = [0u8; DH_LEN];
    let mut i = 0;
    while i < DH_LEN {
        out[i] = (nibble(b[2 * i]) << 4) | nibble(b[2 * i + 1]);
        i += 1;
    }
    out
}

/// Which payload encryption we provide (initiator) or accept (responder).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// RC4 only.
    Required,
    /// RC4 or plaintext; a responder picks RC4 when both are offered.
    Preferred,
    /// RC4 or plaintext; a responder picks plaintext when both are offered.
    Tolerated,
}

impl Policy {
    /// The crypto_provide bits (and the set of selections we accept).
    fn bits(self) -> u32 {
        match self {
            Policy::Required => CRYPTO_RC4,
            Policy::Preferred | Policy::Tolerated => CRYPTO_RC4 | CRYPTO_PLAINTEXT,
        }
    }

    /// The responder's choice among the methods the initiator offered.
    fn select(self, offered: u32) -> Result<u32, MseError> {
        let common = offered & self.bits();
        let prefer_plain = self == Policy::Tolerated;
        if prefer_plain && common & CRYPTO_PLAINTEXT != 0 {
            Ok(CRYPTO_PLAINTEXT)
        } else if common & CRYPTO_RC4 != 0 {
            Ok(CRYPTO_RC4)
        } else if common & CRYPTO_PLAINTEXT != 0 {
            Ok(CRYPTO_PLAINTEXT)
        } else {
            Err(MseError::NoCommonMethod { offered })
        }
    }
}

/// Randomness for one handshake, filled by the caller from a CSPRNG.
#[derive(Clone)]
pub struct Secrets {
    /// Our DH private key Xa/Xb (160 bits; the spec asks for at least 128).
    pub private_key: [u8; 20],
    /// PadA/PadB: random bytes, at most [`MAX_PAD`]. Random length too, so
    /// the first flight's size gives nothing away.
    pub pad: Vec<u8>,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secrets")
            .field("pad_len", &self.pad.len())
            .finish_non_exhaustive()
    }
}

/// Why a handshake failed. Peers are hostile: every variant is an ordinary
/// outcome, to be answered by closing the connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MseError {
    /// Our own pad is longer than [`MAX_PAD`] (a caller bug).
    LocalPadTooLong(usize),
    /// Our own initial payload is longer than [`MAX_IA`] (a caller bug).
    LocalPayloadTooLong(usize),
    /// Our private key is zero, which would make the public key 1.
    WeakPrivateKey,
    /// The peer's DH public key is 0, 1, P-1 or not below P.
    InvalidPublicKey,
    /// The responder found no HASH('req1', S) within PadA's bound.
    SyncNotFound,
    /// The initiator found no encrypted VC within PadB's bound.
    VcNotFound,
    /// The decrypted VC after req2/req3 was not zero.
    BadVc,
    /// The lookup knows no torrent for the peer's req2 hash.
    UnknownTorrent,
    /// The initiator offered no method our policy accepts.
    NoCommonMethod {
        /// The peer's crypto_provide.
        offered: u32,
    },
    /// The responder selected a method we did not offer, or not exactly one.
    BadSelect {
        /// The peer's crypto_select.
        selected: u32,
        /// Our crypto_provide.
        offered: u32,
    },
    /// PadC or PadD is longer than [`MAX_PAD`].
    PadTooLong(usize),
    /// The initial payload is longer than [`MAX_IA`].
    PayloadTooLong(usize),
    /// Input arrived after the result was taken with `poll_done`.
    Finished,
}

impl fmt::Display for MseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MseError::LocalPadTooLong(n) => write!(
                f,
                "Our padding is {n} bytes long, more than the {MAX_PAD} allowed."
            ),
            MseError::LocalPayloadTooLong(n) => write!(
                f,
                "Our initial payload is {n} bytes long, more than the {MAX_IA} allowed."
            ),
            MseError::WeakPrivateKey => write!(f, "Our Diffie-Hellman private key is zero."),
            MseError::InvalidPublicKey => {
                write!(f, "The peer sent an invalid Diffie-Hellman public key.")
            }
            MseError::SyncNotFound => write!(
                f,
                "The peer's request hash was not found within {MAX_PAD} bytes of padding."
            ),
            MseError::VcNotFound => write!(
                f,
                "The peer's verification constant was not found within {MAX_PAD} bytes of padding."
            ),
            MseError::BadVc => write!(f, "The peer's verification constant is wrong."),
            MseError::UnknownTorrent => write!(f, "The peer asked for a torrent we do not have."),
            MseError::NoCommonMethod { offered } => write!(
                f,
                "No common crypto method: the peer offered {offered:#x}, which our policy does not accept."
            ),
            MseError::BadSelect { selected, offered } => write!(
                f,
                "The peer selected crypto method {selected:#x}, which is not one of the {offered:#x} we offered."
            ),
            MseError::PadTooLong(n) => write!(
                f,
                "The peer's padding is {n} bytes long, more than the {MAX_PAD} allowed."
            ),
            MseError::PayloadTooLong(n) => write!(
                f,
                "The peer's initial payload is {n} bytes long, more than the {MAX_IA} allowed."
            ),
            MseError::Finished => write!(f, "The handshake is already finished."),
        }
    }
}

impl std::error::Error for MseError {}

/// One RC4 keystream, keyed and with the first 1024 bytes dropped.
type Stream = Rc4<U20>;

/// The two RC4 streams of an established connection.
pub struct Cipher {
    enc: Stream,
    dec: Stream,
}

impl Cipher {
    /// Encrypts bytes we send, in place. Call on every byte, in order.
    pub fn encrypt(&mut self, data: &mut [u8]) {
        self.enc.apply_keystream(data);
    }

    /// Decrypts bytes we received, in place. Call on every byte, in order.
    pub fn decrypt(&mut self, data: &mut [u8]) {
        self.dec.apply_keystream(data);
    }
}

impl fmt::Debug for Cipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Cipher { .. }")
    }
}

/// A finished handshake.
#[derive(Debug)]
pub struct Established {
    /// The torrent the connection is for.
    pub info_hash: [u8; 20],
    /// The streams to use from now on; `None` when plaintext was selected.
    pub cipher: Option<Cipher>,
    /// Payload bytes received after the handshake, already decrypted.
    pub remainder: Vec<u8>,
    /// Responder: the initiator's IA, decrypted. Initiator: empty.
    pub initial_payload: Vec<u8>,
}

/// Whether a connection we accepted starts with a plaintext BitTorrent
/// handshake: `Some(true)` if so, `Some(false)` if the bytes seen so far rule
/// it out (try MSE), `None` if too few bytes were seen to tell.
pub fn is_plain_handshake(first_bytes: &[u8]) -> Option<bool> {
    let n = first_bytes.len().min(PLAIN_PREFIX.len());
    if first_bytes.get(..n) != PLAIN_PREFIX.get(..n) {
        Some(false)
    } else if n == PLAIN_PREFIX.len() {
        Some(true)
    } else {
        None
    }
}

/// HASH('req2', info_hash): what an initiator sends (masked) to name the
/// torrent. A responder's lookup maps it back to the info hash.
pub fn req2_hash(info_hash: &[u8; 20]) -> [u8; 20] {
    sha1_of(&[b"req2", info_hash])
}

fn sha1_of(parts: &[&[u8]]) -> [u8; 20] {
    let mut h = Sha1::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

fn xor20(a: &[u8; 20], b: &[u8; 20]) -> [u8; 20] {
    let mut out = [0u8; 20];
    for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
        *o = x ^ y;
    }
    out
}

/// Left-pads to 96 bytes; callers pass values below P, which fit.
fn to_dh_bytes(n: &BigUint) -> [u8; DH_LEN] {
    let bytes = n.to_bytes_be();
    let mut out = [0u8; DH_LEN];
    for (o, b) in out.iter_mut().rev().zip(bytes.iter().rev()) {
        *o = *b;
    }
    out
}

/// Y = G^X mod P.
fn public_key(private_key: &[u8; 20]) -> [u8; DH_LEN] {
    let p = BigUint::from_bytes_be(&P_BYTES);
    let x = BigUint::from_bytes_be(private_key);
    to_dh_bytes(&BigUint::from(G).modpow(&x, &p))
}

/// S = Y_peer^X mod P, refusing the public keys that force a known S.
fn shared_secret(
    private_key: &[u8; 20],
    their_public: &[u8; DH_LEN],
) -> Result<[u8; DH_LEN], MseError> {
    let p = BigUint::from_bytes_be(&P_BYTES);
    let y = BigUint::from_bytes_be(their_public);
    let one = BigUint::from(1u32);
    if y <= one || y >= &p - &one {
        return Err(MseError::InvalidPublicKey);
    }
    let x = BigUint::from_bytes_be(private_key);
    Ok(to_dh_bytes(&y.modpow(&x, &p)))
}

/// RC4 keyed with HASH(label, S, SKEY), first 1024 bytes dropped.
fn stream(label: &[u8], s: &[u8; DH_LEN], skey: &[u8; 20]) -> Stream {
    let key = sha1_of(&[label, s, skey]);
    let mut c = Stream::new(&Key::<U20>::from(key));
    let mut junk = [0u8; RC4_DISCARD];
    c.apply_keystream(&mut junk);
    c
}

fn check_local(secrets: &Secrets) -> Result<(), MseError> {
    if secrets.pad.len() > MAX_PAD {
        return Err(MseError::LocalPadTooLong(secrets.pad.len()));
    }
    if secrets.private_key == [0; 20] {
        return Err(MseError::WeakPrivateKey);
    }
    Ok(())
}

/// Removes and returns the first `N` bytes, if there are that many.
fn take_array<const N: usize>(buf: &mut Vec<u8>) -> Option<[u8; N]> {
    let head: [u8; N] = buf.get(..N)?.try_into().ok()?;
    buf.drain(..N);
    Some(head)
}

/// Removes and returns the first `n` bytes, if there are that many.
fn take_vec(buf: &mut Vec<u8>, n: usize) -> Option<Vec<u8>> {
    if buf.len() < n {
        return None;
    }
    Some(buf.drain(..n).collect())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn be_u16(b: &[u8]) -> usize {
    match b {
        [hi, lo, ..] => usize::from(u16::from_be_bytes([*hi, *lo])),
        _ => 0,
    }
}

fn be_u32(b: &[u8]) -> u32 {
    match b {
        [a, b, c, d, ..] => u32::from_be_bytes([*a, *b, *c, *d]),
        _ => 0,
    }
}

/// Handshake over: the rest of the buffer is payload, decrypted if RC4.
fn establish(
    info_hash: [u8; 20],
    selected: u32,
    enc: Stream,
    mut dec: Stream,
    buf: &mut Vec<u8>,
    initial_payload: Vec<u8>,
) -> Established {
    let mut remainder = std::mem::take(buf);
    let cipher = if selected == CRYPTO_RC4 {
        dec.apply_keystream(&mut remainder);
        Some(Cipher { enc, dec })
    } else {
        None
    };
    Established {
        info_hash,
        cipher,
        remainder,
        initial_payload,
    }
}

/// Input that arrives after the handshake but before `poll_done`: payload.
fn append_remainder(done: &mut Established, data: &[u8]) {
    let start = done.remainder.len();
    done.remainder.extend_from_slice(data);
    if let (Some(c), Some(tail)) = (done.cipher.as_mut(), done.remainder.get_mut(start..)) {
        c.decrypt(tail);
    }
}

/// A role's in-progress handshake state.
trait Phase {
    /// How many buffered bytes this state may use before it decides; this is
    /// what keeps the buffer bounded.
    fn need(&self) -> usize;
}

/// What one role-specific transition did.
enum Step<S> {
    /// More input is needed; the state is unchanged.
    Wait(S),
    /// A transition happened; try the next state at once.
    Next(S),
    /// The handshake is complete.
    Done(Box<Established>),
}

/// Where a handshake is, seen from the shared driver.
enum Stage<S> {
    Running(S),
    Done(Box<Established>),
    /// The result was taken with `poll_done`.
    Finished,
    /// Dead; the error is returned again on any later input.
    Failed(MseError),
}

/// Input/output buffers the role-specific transitions work on.
struct Io {
    buf: Vec<u8>,
    out: VecDeque<Vec<u8>>,
}

/// The part both roles share: buffering bounded by [`Phase::need`], the
/// terminal stages, and the error path. The roles supply only transitions.
struct Driver<S> {
    io: Io,
    stage: Stage<S>,
}

impl<S: Phase> Driver<S> {
    fn new(first: S, out: VecDeque<Vec<u8>>) -> Driver<S> {
        Driver {
            io: Io {
                buf: Vec::new(),
                out,
            },
            stage: Stage::Running(first),
        }
    }

    /// Feeds `data` through `advance` (one transition on the buffer, if it
    /// allows one), buffering no more than the current state needs.
    fn handle_input(
        &mut self,
        mut data: &[u8],
        mut advance: impl FnMut(S, &mut Io) -> Result<Step<S>, MseError>,
    ) -> Result<(), MseError> {
        loop {
            // `Finished` is only a placeholder while the state is moved out.
            let state = match std::mem::replace(&mut self.stage, Stage::Finished) {
                Stage::Running(state) => state,
                Stage::Done(mut done) => {
                    append_remainder(&mut done, data);
                    self.stage = Stage::Done(done);
                    return Ok(());
                }
                Stage::Finished => return Err(MseError::Finished),
                Stage::Failed(e) => {
                    self.stage = Stage::Failed(e.clone());
                    return Err(e);
                }
            };
            let state = match advance(state, &mut self.io) {
                Ok(Step::Wait(state)) => state,
                Ok(Step::Next(next)) => {
                    self.stage = Stage::Running(next);
                    continue;
                }
                Ok(Step::Done(done)) => {
                    self.stage = Stage::Done(done);
                    continue;
                }
                Err(e) => {
                    // Dead: nothing more to send, nothing to keep.
                    self.io.buf = Vec::new();
                    self.io.out.clear();
                    self.stage = Stage::Failed(e.clone());
                    return Err(e);
                }
            };
            let want = state.need().saturating_sub(self.io.buf.len());
            self.stage = Stage::Running(state);
            if data.is_empty() {
                return Ok(());
            }
            let (now, later) = data.split_at(want.min(data.len()));
            self.io.buf.extend_from_slice(now);
            data = later;
        }
    }

    fn poll_output(&mut self) -> Option<Vec<u8>> {
        self.io.out.pop_front()
    }

    fn poll_done(&mut self) -> Option<Established> {
        match std::mem::replace(&mut self.stage, Stage::Finished) {
            Stage::Done(done) => Some(*done),
            other => {
                self.stage = other;
                None
            }
        }
    }

    fn buffered(&self) -> usize {
        self.io.buf.len()
    }
}

enum IState {
    /// Ya and PadA are queued; waiting for Yb.
    AwaitYb,
    /// Step 3 is queued; scanning PadB for ENCRYPT(VC).
    ScanVc {
        enc: Stream,
        dec: Stream,
        vc: [u8; 8],
    },
    AwaitSelect {
        enc: Stream,
        dec: Stream,
    },
    AwaitPadD {
        enc: Stream,
        dec: Stream,
        selected: u32,
        len: usize,
    },
}

impl Phase for IState {
    fn need(&self) -> usize {
        match self {
            IState::AwaitYb => DH_LEN,
            IState::ScanVc { .. } => VC_WINDOW,
            IState::AwaitSelect { .. } => SELECT_LEN,
            IState::AwaitPadD { len, .. } => *len,
        }
    }
}

/// What the initiator's transitions need besides the buffers.
struct InitiatorRole {
    info_hash: [u8; 20],
    provide: u32,
    private_key: [u8; 20],
    initial_payload: Vec<u8>,
}

/// The side that connected: knows the torrent, speaks first.
pub struct Initiator {
    role: InitiatorRole,
    driver: Driver<IState>,
}

impl fmt::Debug for Initiator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Initiator")
            .field("provide", &self.role.provide)
            .field("buffered", &self.driver.buffered())
            .finish_non_exhaustive()
    }
}

impl Initiator {
    /// Starts a handshake for `info_hash`; Ya and PadA are queued at once.
    /// `initial_payload` (IA, usually the BitTorrent handshake) rides in
    /// step 3, saving a round trip.
    pub fn new(
        info_hash: [u8; 20],
        policy: Policy,
        secrets: Secrets,
        initial_payload: Vec<u8>,
    ) -> Result<Initiator, MseError> {
        check_local(&secrets)?;
        if initial_payload.len() > MAX_IA {
            return Err(MseError::LocalPayloadTooLong(initial_payload.len()));
        }
        let mut first = public_key(&secrets.private_key).to_vec();
        first.extend_from_slice(&secrets.pad);
        Ok(Initiator {
            role: InitiatorRole {
                info_hash,
                provide: policy.bits(),
                private_key: secrets.private_key,
                initial_payload,
            },
            driver: Driver::new(IState::AwaitYb, VecDeque::from([first])),
        })
    }

    /// Feeds bytes received from the peer. After an error the initiator is
    /// dead and returns the same error again. Once the handshake is done,
    /// input up to `poll_done` is payload, added (decrypted) to the
    /// remainder: call `poll_done` after each call.
    pub fn handle_input(&mut self, data: &[u8]) -> Result<(), MseError> {
        let role = &mut self.role;
        self.driver
            .handle_input(data, |state, io| role.advance(state, io))
    }

    /// Bytes to send to the peer, in order.
    pub fn poll_output(&mut self) -> Option<Vec<u8>> {
        self.driver.poll_output()
    }

    /// The result, once; later input is an error. Drain `poll_output` too.
    pub fn poll_done(&mut self) -> Option<Established> {
        self.driver.poll_done()
    }

    #[cfg(test)]
    fn buffered(&self) -> usize {
        self.driver.buffered()
    }
}

impl InitiatorRole {
    /// One transition if the buffer allows it.
    fn advance(&mut self, state: IState, io: &mut Io) -> Result<Step<IState>, MseError> {
        match state {
            IState::AwaitYb => {
                let Some(yb) = take_array::<DH_LEN>(&mut io.buf) else {
                    return Ok(Step::Wait(IState::AwaitYb));
                };
                let s = shared_secret(&self.private_key, &yb)?;
                let mut enc = stream(b"keyA", &s, &self.info_hash);
                let mut dec = stream(b"keyB", &s, &self.info_hash);
                let ia = std::mem::take(&mut self.initial_payload);
                let mut msg = Vec::with_capacity(40 + PROVIDE_LEN + 2 + ia.len());
                msg.extend_from_slice(&sha1_of(&[b"req1", &s]));
                msg.extend_from_slice(&xor20(
                    &req2_hash(&self.info_hash),
                    &sha1_of(&[b"req3", &s]),
                ));
                let mut secret = Vec::with_capacity(PROVIDE_LEN + 2 + ia.len());
                secret.extend_from_slice(&VC);
                secret.extend_from_slice(&self.provide.to_be_bytes());
                secret.extend_from_slice(&0u16.to_be_bytes()); // no PadC
                let ia_len =
                    u16::try_from(ia.len()).map_err(|_| MseError::LocalPayloadTooLong(ia.len()))?;
                secret.extend_from_slice(&ia_len.to_be_bytes());
                secret.extend_from_slice(&ia);
                enc.apply_keystream(&mut secret);
                msg.extend_from_slice(&secret);
                io.out.push_back(msg);
                let mut vc = VC;
                dec.apply_keystream(&mut vc);
                Ok(Step::Next(IState::ScanVc { enc, dec, vc }))
            }
            IState::ScanVc { enc, dec, vc } => match find(&io.buf, &vc) {
                Some(at) => {
                    io.buf.drain(..at + vc.len());
                    Ok(Step::Next(IState::AwaitSelect { enc, dec }))
                }
                None if io.buf.len() >= VC_WINDOW => Err(MseError::VcNotFound),
                None => Ok(Step::Wait(IState::ScanVc { enc, dec, vc })),
            },
            IState::AwaitSelect { enc, mut dec } => {
                let Some(mut head) = take_array::<SELECT_LEN>(&mut io.buf) else {
                    return Ok(Step::Wait(IState::AwaitSelect { enc, dec }));
                };
                dec.apply_keystream(&mut head);
                let selected = be_u32(&head);
                let len = be_u16(head.get(4..).unwrap_or_default());
                let one_bit = selected == CRYPTO_RC4 || selected == CRYPTO_PLAINTEXT;
                if !one_bit || selected & self.provide == 0 {
                    return Err(MseError::BadSelect {
                        selected,
                        offered: self.provide,
                    });
                }
                if len > MAX_PAD {
                    return Err(MseError::PadTooLong(len));
                }
                Ok(Step::Next(IState::AwaitPadD {
                    enc,
                    dec,
                    selected,
                    len,
                }))
            }
            IState::AwaitPadD {
                enc,
                mut dec,
                selected,
                len,
            } => {
                let Some(mut pad) = take_vec(&mut io.buf, len) else {
                    return Ok(Step::Wait(IState::AwaitPadD {
                        enc,
                        dec,
                        selected,
                        len,
                    }));
                };
                // Decrypted only to keep the stream in step.
                dec.apply_keystream(&mut pad);
                let done = establish(self.info_hash, selected, enc, dec, &mut io.buf, Vec::new());
                Ok(Step::Done(Box::new(done)))
            }
        }
    }
}

enum RState {
    AwaitYa,
    /// Yb and PadB are queued; scanning PadA for HASH('req1', S).
    ScanReq1 {
        s: Box<[u8; DH_LEN]>,
        req1: [u8; 20],
    },
    AwaitReq2 {
        s: Box<[u8; DH_LEN]>,
    },
    AwaitProvide {
        info_hash: [u8; 20],
        enc: Stream,
        dec: Stream,
    },
    AwaitPadC {
        info_hash: [u8; 20],
        enc: Stream,
        dec: Stream,
        selected: u32,
        len: usize,
    },
    AwaitIa {
        info_hash: [u8; 20],
        enc: Stream,
        dec: Stream,
        selected: u32,
        len: usize,
    },
}

impl Phase for RState {
    fn need(&self) -> usize {
        match self {
            RState::AwaitYa => DH_LEN,
            RState::ScanReq1 { .. } => REQ1_WINDOW,
            RState::AwaitReq2 { .. } => 20,
            RState::AwaitProvide { .. } => PROVIDE_LEN,
            RState::AwaitPadC { len, .. } => len + 2,
            RState::AwaitIa { len, .. } => *len,
        }
    }
}

/// What the responder's transitions need besides the buffers.
struct ResponderRole {
    policy: Policy,
    private_key: [u8; 20],
    pad: Vec<u8>,
}

/// The side that accepted: learns the torrent from the initiator's req2.
pub struct Responder {
    role: ResponderRole,
    driver: Driver<RState>,
}

impl fmt::Debug for Responder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Responder")
            .field("policy", &self.role.policy)
            .field("buffered", &self.driver.buffered())
            .finish_non_exhaustive()
    }
}

impl Responder {
    /// Waits for Ya. Feed it every byte received, including those looked at
    /// by [`is_plain_handshake`].
    pub fn new(policy: Policy, secrets: Secrets) -> Result<Responder, MseError> {
        check_local(&secrets)?;
        Ok(Responder {
            role: ResponderRole {
                policy,
                private_key: secrets.private_key,
                pad: secrets.pad,
            },
            driver: Driver::new(RState::AwaitYa, VecDeque::new()),
        })
    }

    /// Feeds bytes received from the peer. `lookup` maps HASH('req2', ih)
    /// (see [`req2_hash`]) to the info hash of a torrent we serve. After an
    /// error the responder is dead and returns the same error again. Once the
    /// handshake is done, input up to `poll_done` is payload, added
    /// (decrypted) to the remainder: call `poll_done` after each call.
    pub fn handle_input(
        &mut self,
        data: &[u8],
        lookup: impl Fn(&[u8; 20]) -> Option<[u8; 20]>,
    ) -> Result<(), MseError> {
        let role = &mut self.role;
        self.driver
            .handle_input(data, |state, io| role.advance(state, io, &lookup))
    }

    /// Bytes to send to the peer, in order.
    pub fn poll_output(&mut self) -> Option<Vec<u8>> {
        self.driver.poll_output()
    }

    /// The result, once; later input is an error. Drain `poll_output` too:
    /// step 4 is queued when the handshake completes.
    pub fn poll_done(&mut self) -> Option<Established> {
        self.driver.poll_done()
    }

    #[cfg(test)]
    fn buffered(&self) -> usize {
        self.driver.buffered()
    }
}

impl ResponderRole {
    /// One transition if the buffer allows it.
    fn advance(
        &mut self,
        state: RState,
        io: &mut Io,
        lookup: &impl Fn(&[u8; 20]) -> Option<[u8; 20]>,
    ) -> Result<Step<RState>, MseError> {
        match state {
            RState::AwaitYa => {
                let Some(ya) = take_array::<DH_LEN>(&mut io.buf) else {
                    return Ok(Step::Wait(RState::AwaitYa));
                };
                let s = shared_secret(&self.private_key, &ya)?;
                let mut msg = public_key(&self.private_key).to_vec();
                msg.extend_from_slice(&std::mem::take(&mut self.pad));
                io.out.push_back(msg);
                let req1 = sha1_of(&[b"req1", &s]);
                Ok(Step::Next(RState::ScanReq1 {
                    s: Box::new(s),
                    req1,
                }))
            }
            RState::ScanReq1 { s, req1 } => match find(&io.buf, &req1) {
                Some(at) => {
                    io.buf.drain(..at + req1.len());
                    Ok(Step::Next(RState::AwaitReq2 { s }))
                }
                None if io.buf.len() >= REQ1_WINDOW => Err(MseError::SyncNotFound),
                None => Ok(Step::Wait(RState::ScanReq1 { s, req1 })),
            },
            RState::AwaitReq2 { s } => {
                let Some(masked) = take_array::<20>(&mut io.buf) else {
                    return Ok(Step::Wait(RState::AwaitReq2 { s }));
                };
                let req2 = xor20(&masked, &sha1_of(&[b"req3", &s[..]]));
                let info_hash = lookup(&req2).ok_or(MseError::UnknownTorrent)?;
                let dec = stream(b"keyA", &s, &info_hash);
                let enc = stream(b"keyB", &s, &info_hash);
                Ok(Step::Next(RState::AwaitProvide {
                    info_hash,
                    enc,
                    dec,
                }))
            }
            RState::AwaitProvide {
                info_hash,
                enc,
                mut dec,
            } => {
                let Some(mut head) = take_array::<PROVIDE_LEN>(&mut io.buf) else {
                    return Ok(Step::Wait(RState::AwaitProvide {
                        info_hash,
                        enc,
                        dec,
                    }));
                };
                dec.apply_keystream(&mut head);
                if head.get(..8) != Some(&VC[..]) {
                    return Err(MseError::BadVc);
                }
                let offered = be_u32(head.get(8..).unwrap_or_default());
                let len = be_u16(head.get(12..).unwrap_or_default());
                // Refuse early: no point reading PadC and IA first.
                let selected = self.policy.select(offered)?;
                if len > MAX_PAD {
                    return Err(MseError::PadTooLong(len));
                }
                Ok(Step::Next(RState::AwaitPadC {
                    info_hash,
                    enc,
                    dec,
                    selected,
                    len,
                }))
            }
            RState::AwaitPadC {
                info_hash,
                enc,
                mut dec,
                selected,
                len,
            } => {
                let Some(mut pad_and_len) = take_vec(&mut io.buf, len + 2) else {
                    return Ok(Step::Wait(RState::AwaitPadC {
                        info_hash,
                        enc,
                        dec,
                        selected,
                        len,
                    }));
                };
                dec.apply_keystream(&mut pad_and_len);
                let ia_len = be_u16(pad_and_len.get(len..).unwrap_or_default());
                if ia_len > MAX_IA {
                    return Err(MseError::PayloadTooLong(ia_len));
                }
                Ok(Step::Next(RState::AwaitIa {
                    info_hash,
                    enc,
                    dec,
                    selected,
                    len: ia_len,
                }))
            }
            RState::AwaitIa {
                info_hash,
                mut enc,
                mut dec,
                selected,
                len,
            } => {
                let Some(mut ia) = take_vec(&mut io.buf, len) else {
                    return Ok(Step::Wait(RState::AwaitIa {
                        info_hash,
                        enc,
                        dec,
                        selected,
                        len,
                    }));
                };
                dec.apply_keystream(&mut ia);
                let mut msg = Vec::with_capacity(8 + SELECT_LEN);
                msg.extend_from_slice(&VC);
                msg.extend_from_slice(&selected.to_be_bytes());
                msg.extend_from_slice(&0u16.to_be_bytes()); // no PadD
                enc.apply_keystream(&mut msg);
                io.out.push_back(msg);
                let done = establish(info_hash, selected, enc, dec, &mut io.buf, ia);
                Ok(Step::Done(Box::new(done)))
            }
        }
    }
}

/// The bytes of one in-memory handshake, in the chunks they were delivered
/// in: seeds for a fuzz target that feeds a `Responder` or an `Initiator`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Transcript {
    /// Initiator → responder.
    pub to_responder: Vec<Vec<u8>>,
    /// Responder → initiator.
    pub to_initiator: Vec<Vec<u8>>,
}

/// Runs `initiator` against `responder` through in-memory pipes, delivering
/// each output whole. The responder serves the torrents in `known`. Both
/// results are taken (`poll_done`) and dropped. `Ok(None)` if the handshake stalled (cannot happen between two correct
/// peers; there for the types).
pub fn capture_transcript(
    initiator: &mut Initiator,
    responder: &mut Responder,
    known: &[[u8; 20]],
) -> Result<Option<Transcript>, MseError> {
    let mut transcript = Transcript::default();
    let done = run_pair(
        initiator,
        responder,
        known,
        &mut |c| vec![c],
        &mut transcript,
    )?;
    Ok(done.map(|_| transcript))
}

/// The in-memory pipe behind [`capture_transcript`]; `split` cuts each
/// output into the pieces delivered.
fn run_pair(
    initiator: &mut Initiator,
    responder: &mut Responder,
    known: &[[u8; 20]],
    split: &mut dyn FnMut(Vec<u8>) -> Vec<Vec<u8>>,
    transcript: &mut Transcript,
) -> Result<Option<(Established, Established)>, MseError> {
    let lookup = |h: &[u8; 20]| known.iter().find(|ih| req2_hash(ih) == *h).copied();
    // Four flights; a few spare rounds and we stop regardless.
    for _ in 0..8 {
        let mut moved = false;
        while let Some(chunk) = initiator.poll_output() {
            moved = true;
            for piece in split(chunk) {
                responder.handle_input(&piece, lookup)?;
                transcript.to_responder.push(piece);
            }
        }
        while let Some(chunk) = responder.poll_output() {
            moved = true;
            for piece in split(chunk) {
                initiator.handle_input(&piece)?;
                transcript.to_initiator.push(piece);
            }
        }
        if !moved {
            break;
        }
    }
    Ok(match (initiator.poll_done(), responder.poll_done()) {
        (Some(a), Some(b)) => Some((a, b)),
        _ => None,
    })
}

#[cfg(test)]
mod tests;
