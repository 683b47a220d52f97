//! The stored password hash and the credential check's cache and rate
//! limit.

use std::time::Duration;

use sha1::{Digest as _, Sha1};

use super::Clock;
use crate::http::auth::{AuthOutcome, Authenticator, KDF_BURST, KDF_REFILL, VERIFIED_CACHE};
use crate::http::PasswordHash;

/// Few rounds: the tests check logic, not cost.
const ROUNDS: u32 = 10;

fn rng() -> fastrand::Rng {
    fastrand::Rng::with_seed(7)
}

fn basic(user: &str, password: &str) -> Vec<u8> {
    use base64::Engine as _;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {token}").into_bytes()
}

#[test]
fn a_hash_verifies_its_password_only_and_survives_its_stored_form() {
    let h = PasswordHash::with_iterations("s3cret", ROUNDS, &mut rng());
    assert!(h.verify(b"s3cret"));
    assert!(!h.verify(b"s3cre") && !h.verify(b"s3cret ") && !h.verify(b""));
    let stored = h.to_string();
    assert!(stored.starts_with("$pbkdf2-sha256$i=10$"), "{stored}");
    assert!(!stored.contains("s3cret"));
    let back: PasswordHash = stored.parse().unwrap();
    assert_eq!(back, h);
    assert!(back.verify(b"s3cret"));
    // Two hashes of one password differ by their salt.
    let other = PasswordHash::with_iterations("s3cret", ROUNDS, &mut rng());
    assert_ne!(
        other.to_string(),
        PasswordHash::with_iterations("s3cret", ROUNDS, &mut fastrand::Rng::with_seed(8))
            .to_string()
    );
    // Debug names the scheme, not the hash.
    let debug = format!("{h:?}");
    assert_eq!(debug, "PasswordHash(pbkdf2-sha256, 10 rounds)");
}

#[test]
fn transmissions_salted_sha1_is_accepted() {
    // As Transmission writes it: '{', hex SHA-1 of password then salt,
    // the salt.
    let salt = "aZ3.x/9q";
    let digest = Sha1::digest(format!("hunter2{salt}").as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let stored = format!("{{{hex}{salt}");
    let h: PasswordHash = stored.parse().unwrap();
    assert!(h.is_legacy());
    assert!(h.verify(b"hunter2"));
    assert!(!h.verify(b"hunter3"));
    assert_eq!(h.to_string(), stored);
    // Upper-case hex reads too.
    let upper = format!("{{{}{salt}", hex.to_uppercase());
    assert!(upper.parse::<PasswordHash>().unwrap().verify(b"hunter2"));
}

#[test]
fn a_setting_is_a_stored_hash_or_a_password_in_clear() {
    let h = PasswordHash::with_iterations("pw", ROUNDS, &mut rng());
    let from_stored = PasswordHash::from_setting(&h.to_string(), &mut rng());
    assert_eq!(from_stored, h);
    // In clear: hashed now, at the default rounds (about 4 s unoptimised;
    // one check only).
    let from_clear = PasswordHash::from_setting("pw", &mut rng());
    assert!(from_clear
        .to_string()
        .starts_with("$pbkdf2-sha256$i=100000$"));
    assert!(from_clear.verify(b"pw") && !from_clear.is_legacy());
}

#[test]
fn malformed_stored_hashes_are_refused() {
    let good = PasswordHash::with_iterations("pw", ROUNDS, &mut rng()).to_string();
    let parts: Vec<&str> = good.split('$').collect();
    let (salt, hash) = (parts[3], parts[4]);
    for bad in [
        String::new(),
        "pw".to_string(),
        format!("$pbkdf2-sha1$i=10${salt}${hash}"),
        format!("$pbkdf2-sha256$i=0${salt}${hash}"),
        format!("$pbkdf2-sha256$i=1000001${salt}${hash}"),
        format!("$pbkdf2-sha256$i=-1${salt}${hash}"),
        format!("$pbkdf2-sha256$10${salt}${hash}"),
        format!("$pbkdf2-sha256$i=10${salt}"),
        format!("$pbkdf2-sha256$i=10${salt}${hash}$"),
        format!("$pbkdf2-sha256$i=10$!!${hash}"),
        format!("$pbkdf2-sha256$i=10${salt}{salt}${hash}"),
        format!("$pbkdf2-sha256$i=10${salt}${}", &hash[..hash.len() - 4]),
        "{0123".to_string(),
        format!("{{{}", "zz".repeat(20)),
        format!("{{{}{}", "00".repeat(20), "s".repeat(65)),
    ] {
        assert!(bad.parse::<PasswordHash>().is_err(), "{bad:?}");
    }
}

fn authenticator(clock: &Clock) -> Authenticator {
    let h = PasswordHash::with_iterations("right", ROUNDS, &mut rng());
    Authenticator::new("admin", h, &mut rng(), clock.at(0.0))
}

#[test]
fn credentials_right_wrong_missing_and_malformed() {
    let clock = Clock::new();
    let mut a = authenticator(&clock);
    let now = clock.at(0.0);
    assert_eq!(a.check(None, now), AuthOutcome::Denied);
    assert_eq!(a.check(Some(b"Bearer abc"), now), AuthOutcome::Denied);
    assert_eq!(a.check(Some(b"Basic"), now), AuthOutcome::Denied);
    assert_eq!(a.check(Some(b"Basic !!!"), now), AuthOutcome::Denied);
    assert_eq!(
        a.check(Some(&basic("admin", "wrong")), now),
        AuthOutcome::Denied
    );
    assert_eq!(
        a.check(Some(&basic("root", "right")), clock.at(10.0)),
        AuthOutcome::Denied
    );
    assert_eq!(
        a.check(Some(&basic("admin", "right")), clock.at(20.0)),
        AuthOutcome::Allowed
    );
    // The scheme in any case, padding optional (RFC 7617 clients vary).
    let lower = String::from_utf8(basic("admin", "right"))
        .unwrap()
        .replacen("Basic", "basic", 1);
    assert_eq!(
        a.check(Some(lower.as_bytes()), clock.at(20.0)),
        AuthOutcome::Allowed
    );
    let unpadded = {
        use base64::Engine as _;
        let t = base64::engine::general_purpose::STANDARD_NO_PAD.encode("admin:right");
        format!("Basic {t}")
    };
    assert_eq!(
        a.check(Some(unpadded.as_bytes()), clock.at(20.0)),
        AuthOutcome::Allowed
    );
    // A password may hold ':'; the name may not.
    let h = PasswordHash::with_iterations("a:b", ROUNDS, &mut rng());
    let mut b = Authenticator::new("u", h, &mut rng(), now);
    assert_eq!(b.check(Some(&basic("u", "a:b")), now), AuthOutcome::Allowed);
    // Too long to be worth hashing.
    let long = basic("admin", &"x".repeat(2000));
    assert_eq!(a.check(Some(&long), clock.at(30.0)), AuthOutcome::Denied);
}

#[test]
fn wrong_passwords_are_rate_limited_and_right_ones_cached() {
    let clock = Clock::new();
    let mut a = authenticator(&clock);
    let right = basic("admin", "right");
    // One success, cached.
    assert_eq!(a.check(Some(&right), clock.at(0.0)), AuthOutcome::Allowed);
    // A burst of wrong ones at one instant: KDF_BURST hashed, then 429.
    for i in 0..KDF_BURST {
        let wrong = basic("admin", &format!("guess{i}"));
        assert_eq!(
            a.check(Some(&wrong), clock.at(1.0)),
            AuthOutcome::Denied,
            "{i}"
        );
    }
    let wrong = basic("admin", "guess-more");
    assert_eq!(
        a.check(Some(&wrong), clock.at(1.0)),
        AuthOutcome::Throttled(KDF_REFILL)
    );
    // Uncached right credentials are throttled too (they need the KDF)...
    let other_form = String::from_utf8(right.clone())
        .unwrap()
        .replacen("Basic", "BASIC", 1);
    assert!(matches!(
        a.check(Some(other_form.as_bytes()), clock.at(1.5)),
        AuthOutcome::Throttled(_)
    ));
    // ...but the cached value still passes, at no cost.
    assert_eq!(a.check(Some(&right), clock.at(1.5)), AuthOutcome::Allowed);
    // One token per KDF_REFILL comes back.
    let later = 1.0 + KDF_REFILL.as_secs_f64();
    assert_eq!(a.check(Some(&wrong), clock.at(later)), AuthOutcome::Denied);
    assert_eq!(
        a.check(Some(&wrong), clock.at(later + 0.5)),
        AuthOutcome::Throttled(KDF_REFILL - Duration::from_millis(500))
    );
    // A success gives its token back: the bucket is not drained by
    // right credentials.
    let refill = later + KDF_REFILL.as_secs_f64();
    assert_eq!(
        a.check(Some(other_form.as_bytes()), clock.at(refill)),
        AuthOutcome::Allowed
    );
    assert_eq!(a.check(Some(&wrong), clock.at(refill)), AuthOutcome::Denied);
    // A long quiet spell fills the bucket, and no more.
    let quiet = refill + 1000.0;
    for i in 0..KDF_BURST {
        let wrong = basic("admin", &format!("again{i}"));
        assert_eq!(
            a.check(Some(&wrong), clock.at(quiet)),
            AuthOutcome::Denied,
            "{i}"
        );
    }
    assert!(matches!(
        a.check(Some(&wrong), clock.at(quiet)),
        AuthOutcome::Throttled(_)
    ));
}

#[test]
fn the_verified_cache_is_bounded() {
    let clock = Clock::new();
    let h = PasswordHash::with_iterations("pw", ROUNDS, &mut rng());
    let mut a = Authenticator::new("u", h, &mut rng(), clock.at(0.0));
    // Distinct header values for one credential: extra spaces after the
    // scheme. Each needs the KDF once; space them out for the bucket.
    let value = |i: usize| {
        let b = String::from_utf8(basic("u", "pw")).unwrap();
        b.replacen(' ', &" ".repeat(i + 1), 1).into_bytes()
    };
    let mut t = 0.0;
    for i in 0..=VERIFIED_CACHE {
        t += KDF_REFILL.as_secs_f64();
        assert_eq!(a.check(Some(&value(i)), clock.at(t)), AuthOutcome::Allowed);
    }
    // Drain the bucket with wrong guesses: only cached values pass now.
    for i in 0..KDF_BURST {
        let wrong = basic("u", &format!("no{i}"));
        a.check(Some(&wrong), clock.at(t));
    }
    for i in 1..=VERIFIED_CACHE {
        assert_eq!(
            a.check(Some(&value(i)), clock.at(t)),
            AuthOutcome::Allowed,
            "{i}"
        );
    }
    assert!(
        matches!(
            a.check(Some(&value(0)), clock.at(t)),
            AuthOutcome::Throttled(_)
        ),
        "the oldest was evicted"
    );
}
