//! The RPC password: stored hashed ([`PasswordHash`]), checked against
//! HTTP Basic credentials by an [`Authenticator`] that caches what
//! verified and rate-limits what must be hashed.
//!
//! PBKDF2-HMAC-SHA256 (RustCrypto's `pbkdf2`), salted, at
//! [`PBKDF2_ITERATIONS`]: about 10 ms per check on this machine's cores
//! (SHA extensions; `/tmp` bench of `pbkdf2_hmac::<Sha256>`), so one
//! check must not run per request on the single-threaded loop. A header
//! value that verified is remembered (as a keyed SHA-256 of it, never the
//! password), and checks that miss the cache draw on a small token
//! bucket, refunded when they succeed: a flood of wrong passwords costs
//! at most [`KDF_BURST`] evaluations at once, then one per
//! [`KDF_REFILL`] (0.5% of the loop here), and gets `429` past that.
//!
//! Transmission's own stored form (settings.json's `rpc-password` once
//! Transmission has run: `{`, the hex SHA-1 of password and salt, then
//! the salt) is accepted too: it verifies in one SHA-1.

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use sha1::{Digest as _, Sha1};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// PBKDF2 rounds for a new hash: 10 ms here with SHA extensions, about
/// 150 ms on a Raspberry Pi 4 (no SHA extensions), which bounds what a
/// check may cost the loop. OWASP's 600 000 would be 60 ms and 1 s.
/// The count is stored in the hash, so raising it later keeps old hashes.
pub const PBKDF2_ITERATIONS: u32 = 100_000;

/// Most rounds a stored hash may ask for: a settings file asking more
/// would stall the loop for seconds per check.
pub const MAX_ITERATIONS: u32 = 1_000_000;

/// Salt bytes of a new hash (NIST SP 800-132 asks at least 16).
const SALT_LEN: usize = 16;

/// PBKDF2 output bytes: SHA-256's size.
const HASH_LEN: usize = 32;

/// Longest salt accepted in Transmission's form (it writes 8 bytes).
const MAX_SSHA1_SALT: usize = 64;

/// Credential checks that may run at once before the bucket is empty.
pub const KDF_BURST: u32 = 4;

/// One more check is allowed per this long.
pub const KDF_REFILL: Duration = Duration::from_secs(2);

/// Distinct verified header values remembered: each client (browser,
/// `transmission-remote`, an *arr tool) sends one.
pub const VERIFIED_CACHE: usize = 16;

/// Longest `Authorization` value checked; longer ones fail without
/// hashing (a user name and password of a few hundred bytes fit).
const MAX_AUTHORIZATION: usize = 1024;

/// The PHC-style name of our scheme.
const PBKDF2_ID: &str = "pbkdf2-sha256";

/// Base64 of PHC strings: standard alphabet, no padding.
const PHC_B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD_NO_PAD;

/// A stored password hash.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash(Kind);

#[derive(Clone, PartialEq, Eq)]
enum Kind {
    /// `$pbkdf2-sha256$i=ROUNDS$SALT$HASH`, base64 without padding.
    Pbkdf2 {
        iterations: u32,
        salt: [u8; SALT_LEN],
        hash: [u8; HASH_LEN],
    },
    /// Transmission's `{` + hex SHA-1(password + salt) + salt.
    Ssha1 { digest: [u8; 20], salt: Vec<u8> },
}

/// Why a stored hash could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseHashError(&'static str);

impl fmt::Display for ParseHashError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not a stored password hash: {}", self.0)
    }
}

impl std::error::Error for ParseHashError {}

impl PasswordHash {
    /// Hashes `password` with a fresh salt at [`PBKDF2_ITERATIONS`].
    pub fn new(password: &str, rng: &mut fastrand::Rng) -> PasswordHash {
        PasswordHash::with_iterations(password, PBKDF2_ITERATIONS, rng)
    }

    /// Hashes `password` at `iterations` rounds (at least 1, at most
    /// [`MAX_ITERATIONS`]); tests use few.
    pub fn with_iterations(
        password: &str,
        iterations: u32,
        rng: &mut fastrand::Rng,
    ) -> PasswordHash {
        let iterations = iterations.clamp(1, MAX_ITERATIONS);
        let mut salt = [0u8; SALT_LEN];
        rng.fill(&mut salt);
        let hash = pbkdf2(password.as_bytes(), &salt, iterations);
        PasswordHash(Kind::Pbkdf2 {
            iterations,
            salt,
            hash,
        })
    }

    /// A setting as Transmission's `rpc-password` holds it: a stored hash
    /// (ours or Transmission's `{...`) is taken as is, anything else is a
    /// password in clear, hashed now (the caller stores the result).
    pub fn from_setting(value: &str, rng: &mut fastrand::Rng) -> PasswordHash {
        value
            .parse()
            .unwrap_or_else(|_| PasswordHash::new(value, rng))
    }

    /// Whether `password` is the one hashed. Comparisons are constant in
    /// time; the cost is the KDF's.
    pub fn verify(&self, password: &[u8]) -> bool {
        match &self.0 {
            Kind::Pbkdf2 {
                iterations,
                salt,
                hash,
            } => pbkdf2(password, salt, *iterations).ct_eq(hash).into(),
            Kind::Ssha1 { digest, salt } => {
                let mut h = Sha1::new();
                h.update(password);
                h.update(salt);
                let got: [u8; 20] = h.finalize().into();
                got.ct_eq(digest).into()
            }
        }
    }

    /// Transmission's weak salted SHA-1: the owner may store a new hash
    /// after the password verifies.
    pub fn is_legacy(&self) -> bool {
        matches!(self.0, Kind::Ssha1 { .. })
    }
}

fn pbkdf2(password: &[u8], salt: &[u8], iterations: u32) -> [u8; HASH_LEN] {
    let mut out = [0u8; HASH_LEN];
    pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out);
    out
}

impl fmt::Display for PasswordHash {
    /// The stored form, which [`FromStr`] reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Kind::Pbkdf2 {
                iterations,
                salt,
                hash,
            } => write!(
                f,
                "${PBKDF2_ID}$i={iterations}${}${}",
                PHC_B64.encode(salt),
                PHC_B64.encode(hash)
            ),
            Kind::Ssha1 { digest, salt } => {
                f.write_str("{")?;
                for b in digest {
                    write!(f, "{b:02x}")?;
                }
                f.write_str(&String::from_utf8_lossy(salt))
            }
        }
    }
}

impl fmt::Debug for PasswordHash {
    /// Names the scheme only: a hash is not for logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Kind::Pbkdf2 { iterations, .. } => {
                write!(f, "PasswordHash({PBKDF2_ID}, {iterations} rounds)")
            }
            Kind::Ssha1 { .. } => f.write_str("PasswordHash(transmission-ssha1)"),
        }
    }
}

impl FromStr for PasswordHash {
    type Err = ParseHashError;

    fn from_str(s: &str) -> Result<PasswordHash, ParseHashError> {
        if let Some(rest) = s.strip_prefix('{') {
            return parse_ssha1(rest);
        }
        let mut parts = s.split('$');
        let (Some(""), Some(PBKDF2_ID), Some(rounds), Some(salt), Some(hash), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(ParseHashError("unknown form"));
        };
        let iterations = rounds
            .strip_prefix("i=")
            .and_then(|n| n.parse::<u32>().ok())
            .filter(|n| (1..=MAX_ITERATIONS).contains(n))
            .ok_or(ParseHashError("bad round count"))?;
        let salt = decode_exact::<SALT_LEN>(salt).ok_or(ParseHashError("bad salt"))?;
        let hash = decode_exact::<HASH_LEN>(hash).ok_or(ParseHashError("bad hash"))?;
        Ok(PasswordHash(Kind::Pbkdf2 {
            iterations,
            salt,
            hash,
        }))
    }
}

/// Transmission's form after its `{`: 40 hex digits, then the salt.
fn parse_ssha1(rest: &str) -> Result<PasswordHash, ParseHashError> {
    let hex = rest.get(..40).ok_or(ParseHashError("short digest"))?;
    let salt = rest.get(40..).unwrap_or_default();
    if salt.len() > MAX_SSHA1_SALT {
        return Err(ParseHashError("salt too long"));
    }
    let mut digest = [0u8; 20];
    for (i, byte) in digest.iter_mut().enumerate() {
        let pair = hex
            .get(2 * i..2 * i + 2)
            .ok_or(ParseHashError("short digest"))?;
        *byte = u8::from_str_radix(pair, 16).map_err(|_| ParseHashError("bad digest"))?;
    }
    Ok(PasswordHash(Kind::Ssha1 {
        digest,
        salt: salt.as_bytes().to_vec(),
    }))
}

fn decode_exact<const N: usize>(text: &str) -> Option<[u8; N]> {
    // Base64 of N bytes is under 2N characters; refuse more before decoding.
    if text.len() > 2 * N {
        return None;
    }
    PHC_B64.decode(text).ok()?.try_into().ok()
}

/// What a credential check decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthOutcome {
    /// The credentials are right.
    Allowed,
    /// Missing, malformed or wrong: `401`.
    Denied,
    /// Too many checks lately: `429`, try again after this long.
    Throttled(Duration),
}

/// Checks `Authorization: Basic` values against one user name and
/// password hash, with the cache and rate limit described above.
pub struct Authenticator {
    username: String,
    hash: PasswordHash,
    /// Key of the cache's hashes, so they match no precomputed table.
    cache_key: [u8; 16],
    /// Keyed hashes of header values that verified, most recent last.
    verified: VecDeque<[u8; 32]>,
    /// Checks allowed now.
    tokens: u32,
    /// When the bucket last gained a token (or was full).
    refilled: Instant,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("username", &self.username)
            .field("hash", &self.hash)
            .field("cached", &self.verified.len())
            .field("tokens", &self.tokens)
            .finish()
    }
}

impl Authenticator {
    /// A checker for `username` and `hash`, with a full bucket at `now`.
    pub fn new(
        username: &str,
        hash: PasswordHash,
        rng: &mut fastrand::Rng,
        now: Instant,
    ) -> Authenticator {
        let mut cache_key = [0u8; 16];
        rng.fill(&mut cache_key);
        Authenticator {
            username: username.to_string(),
            hash,
            cache_key,
            verified: VecDeque::new(),
            tokens: KDF_BURST,
            refilled: now,
        }
    }

    /// Checks an `Authorization` header value (`None` when absent).
    pub fn check(&mut self, authorization: Option<&[u8]>, now: Instant) -> AuthOutcome {
        let Some(value) = authorization.map(<[u8]>::trim_ascii) else {
            return AuthOutcome::Denied;
        };
        if value.len() > MAX_AUTHORIZATION {
            return AuthOutcome::Denied;
        }
        let key = self.cache_hash(value);
        if let Some(i) = self.verified.iter().position(|k| bool::from(k.ct_eq(&key))) {
            // Most recently used last, so the oldest goes first.
            if let Some(k) = self.verified.remove(i) {
                self.verified.push_back(k);
            }
            return AuthOutcome::Allowed;
        }
        let Some(mut credentials) = basic_credentials(value) else {
            return AuthOutcome::Denied;
        };
        if let Some(wait) = self.take_token(now) {
            wipe(&mut credentials);
            return AuthOutcome::Throttled(wait);
        }
        let ok = self.verify(&credentials);
        wipe(&mut credentials);
        if !ok {
            return AuthOutcome::Denied;
        }
        // A success costs the bucket nothing.
        self.tokens = (self.tokens + 1).min(KDF_BURST);
        if self.verified.len() >= VERIFIED_CACHE {
            self.verified.pop_front();
        }
        self.verified.push_back(key);
        AuthOutcome::Allowed
    }

    /// `user:password` against ours. The password is hashed whether or
    /// not the name matches, so timing tells nothing of the name.
    fn verify(&self, credentials: &[u8]) -> bool {
        let colon = credentials.iter().position(|&b| b == b':');
        let (user, password) = match colon {
            Some(i) => (
                credentials.get(..i).unwrap_or_default(),
                credentials.get(i + 1..).unwrap_or_default(),
            ),
            None => (credentials, &b""[..]),
        };
        let name_ok: bool = user.ct_eq(self.username.as_bytes()).into();
        let password_ok = self.hash.verify(password);
        colon.is_some() && name_ok && password_ok
    }

    /// Takes a token, refilling first; the wait for one if none is left.
    fn take_token(&mut self, now: Instant) -> Option<Duration> {
        // At most KDF_BURST rounds: whole refill periods since the last.
        while self.tokens < KDF_BURST && now >= self.refilled + KDF_REFILL {
            self.tokens += 1;
            self.refilled += KDF_REFILL;
        }
        if self.tokens == 0 {
            return Some((self.refilled + KDF_REFILL).saturating_duration_since(now));
        }
        if self.tokens == KDF_BURST {
            // A full bucket gains nothing; its refill period starts now.
            self.refilled = now;
        }
        self.tokens -= 1;
        None
    }

    fn cache_hash(&self, value: &[u8]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.cache_key);
        h.update(value);
        h.finalize().into()
    }
}

/// The decoded `user:password` of a `Basic` value (scheme in any case).
fn basic_credentials(value: &[u8]) -> Option<Vec<u8>> {
    let (scheme, token) = value.split_at(value.iter().position(|&b| b == b' ')?);
    if !scheme.eq_ignore_ascii_case(b"basic") {
        return None;
    }
    base64::engine::general_purpose::STANDARD_PAD_INDIFFERENT
        .decode(token.trim_ascii())
        .ok()
}

/// Overwrites a buffer that held a password, so it does not linger in
/// freed memory.
fn wipe(buf: &mut [u8]) {
    buf.fill(0);
    std::hint::black_box(buf);
}
