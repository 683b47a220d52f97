use super::*;

const IH: [u8; 20] = [
    0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f,
    0x10, 0x11, 0x12, 0x13,
];
const OTHER_IH: [u8; 20] = [0x77; 20];
const XA: &str = "0102030405060708090a0b0c0d0e0f1011121314";
const XB: &str = "c8237ed9348fea45a0fb56b10c67c21d78d32e89";

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn key(s: &str) -> [u8; 20] {
    unhex(s).try_into().unwrap()
}

fn secrets(private: [u8; 20], pad_len: usize) -> Secrets {
    Secrets {
        private_key: private,
        pad: (0..pad_len).map(|i| (i * 7 + 3) as u8).collect(),
    }
}

/// A plaintext BitTorrent handshake, the usual IA.
fn bt_handshake() -> Vec<u8> {
    let mut v = PLAIN_PREFIX.to_vec();
    v.extend_from_slice(&[0; 8]);
    v.extend_from_slice(&IH);
    v.extend_from_slice(b"-TR0000-abcdefghijkl");
    v
}

fn lookup(h: &[u8; 20]) -> Option<[u8; 20]> {
    [IH, OTHER_IH].into_iter().find(|ih| req2_hash(ih) == *h)
}

#[derive(Clone, Copy, Debug)]
enum Split {
    Whole,
    Bytes,
    Random(u64),
}

fn splitter(split: Split) -> Box<dyn FnMut(Vec<u8>) -> Vec<Vec<u8>>> {
    match split {
        Split::Whole => Box::new(|c| vec![c]),
        Split::Bytes => Box::new(|c| c.iter().map(|b| vec![*b]).collect()),
        Split::Random(seed) => {
            let mut rng = fastrand::Rng::with_seed(seed);
            Box::new(move |c| {
                let mut out = Vec::new();
                let mut rest = &c[..];
                while !rest.is_empty() {
                    let n = rng.usize(1..=rest.len().min(200));
                    let (a, b) = rest.split_at(n);
                    out.push(a.to_vec());
                    rest = b;
                }
                out
            })
        }
    }
}

fn pair(ip: Policy, rp: Policy, pads: (usize, usize), ia: Vec<u8>) -> (Initiator, Responder) {
    let i = Initiator::new(IH, ip, secrets(key(XA), pads.0), ia).unwrap();
    let r = Responder::new(rp, secrets(key(XB), pads.1)).unwrap();
    (i, r)
}

fn run(
    i: &mut Initiator,
    r: &mut Responder,
    split: Split,
) -> Result<(Established, Established), MseError> {
    let mut t = Transcript::default();
    let mut s = splitter(split);
    Ok(run_pair(i, r, &[IH, OTHER_IH], &mut *s, &mut t)?.expect("handshake stalled"))
}

/// Application data in both directions, several messages each.
fn check_roundtrip(a: &mut Established, b: &mut Established) {
    for round in 0..3u8 {
        send_one(a, b, round);
        send_one(b, a, round ^ 0x80);
    }
}

fn send_one(from: &mut Established, to: &mut Established, salt: u8) {
    let plain: Vec<u8> = (0..100u8).map(|x| x ^ salt).collect();
    let mut wire = plain.clone();
    if let Some(c) = from.cipher.as_mut() {
        c.encrypt(&mut wire);
        assert_ne!(wire, plain);
    } else {
        assert_eq!(wire, plain);
    }
    if let Some(c) = to.cipher.as_mut() {
        c.decrypt(&mut wire);
    }
    assert_eq!(wire, plain);
}

fn expected_method(ip: Policy, rp: Policy) -> u32 {
    use Policy::*;
    match (ip, rp) {
        (Required, _) | (_, Required) | (_, Preferred) => CRYPTO_RC4,
        (_, Tolerated) => CRYPTO_PLAINTEXT,
    }
}

const POLICIES: [Policy; 3] = [Policy::Required, Policy::Preferred, Policy::Tolerated];

#[test]
fn policy_matrix_every_split() {
    let splits = [
        Split::Whole,
        Split::Bytes,
        Split::Random(1),
        Split::Random(2),
        Split::Random(3),
    ];
    for ip in POLICIES {
        for rp in POLICIES {
            for split in splits {
                for pads in [(0, 0), (17, 300), (MAX_PAD, MAX_PAD)] {
                    let (mut i, mut r) = pair(ip, rp, pads, bt_handshake());
                    let ctx = format!("{ip:?}/{rp:?} {split:?} {pads:?}");
                    let (mut a, mut b) = run(&mut i, &mut r, split).expect(&ctx);
                    let rc4 = expected_method(ip, rp) == CRYPTO_RC4;
                    assert_eq!(a.cipher.is_some(), rc4, "{ctx}");
                    assert_eq!(b.cipher.is_some(), rc4, "{ctx}");
                    assert_eq!(a.info_hash, IH, "{ctx}");
                    assert_eq!(b.info_hash, IH, "{ctx}");
                    assert_eq!(b.initial_payload, bt_handshake(), "{ctx}");
                    assert!(a.initial_payload.is_empty(), "{ctx}");
                    assert!(a.remainder.is_empty() && b.remainder.is_empty(), "{ctx}");
                    check_roundtrip(&mut a, &mut b);
                }
            }
        }
    }
}

#[test]
fn buffers_stay_within_spec_bounds() {
    let (mut i, mut r) = pair(
        Policy::Required,
        Policy::Required,
        (MAX_PAD, MAX_PAD),
        vec![7; MAX_IA],
    );
    let mut max_i = 0;
    let mut max_r = 0;
    for _ in 0..4 {
        while let Some(c) = i.poll_output() {
            for b in c {
                r.handle_input(&[b], lookup).unwrap();
                max_r = max_r.max(r.buffered());
            }
        }
        while let Some(c) = r.poll_output() {
            for b in c {
                i.handle_input(&[b]).unwrap();
                max_i = max_i.max(i.buffered());
            }
        }
    }
    assert!(max_r <= DH_LEN.max(REQ1_WINDOW).max(MAX_IA), "{max_r}");
    assert!(max_i <= DH_LEN.max(VC_WINDOW), "{max_i}");
    let b = r.poll_done().unwrap();
    assert_eq!(b.initial_payload, vec![7; MAX_IA]);
    assert!(i.poll_done().is_some());
}

/// Expected bytes computed by an independent Python script (big-int `pow`,
/// `hashlib.sha1`, a textbook RC4 dropping 1024 bytes) from the spec.
#[test]
fn known_answer_transcript() {
    let ia = b"hello IA".to_vec();
    let mut i = Initiator::new(IH, Policy::Preferred, secrets(key(XA), 0), ia).unwrap();
    let mut r = Responder::new(Policy::Required, secrets(key(XB), 0)).unwrap();
    let mut t = Transcript::default();
    let (mut a, mut b) = run_pair(&mut i, &mut r, &[IH], &mut |c| vec![c], &mut t)
        .unwrap()
        .unwrap();
    let ya = "96e112dab29e8c5272accb9b17b26887ce54a144a4e3b697c7d159b7a817e556\
              b0918db2b4c658e02a87f7e5fb14b18a553e084cbf3dad2d30f16596ccb982d4\
              06258c61b30c5c1dae2ddc60bdbd48d79896312aad63238c39e1a633821eb693";
    let yb = "db1b4c59bb6951c73f7813cf0fb22cad03c69f3844d5603d67d216bfcc8ca0be\
              39e18e22a57e99e7755c9dd6c4109a3aa7d06a071f05423578bc465dc228bd06\
              d9becfc69ca7a2ac02cdc8b0df3315158da15873b5c7f8b1fe73ee940f72119a";
    let step3 = "cf65627c5f54b5ac731d8015d073845c461bd4771f8197c5f977ca3214b94a84\
                 21582a18b33b4d3b12368dc2ca65532cb58a2a3cd5487d44ae5eb1b389ec7fc7";
    let step4 = "0ac70fd2b1fe32aa521d40169782";
    assert_eq!(t.to_responder, vec![unhex(ya), unhex(step3)]);
    assert_eq!(t.to_initiator, vec![unhex(yb), unhex(step4)]);
    let mut ping = b"ping".to_vec();
    a.cipher.as_mut().unwrap().encrypt(&mut ping);
    assert_eq!(ping, unhex("5eead639"));
    let mut pong = b"pong".to_vec();
    b.cipher.as_mut().unwrap().encrypt(&mut pong);
    assert_eq!(pong, unhex("d3ffa8da"));
}

#[test]
fn diffie_hellman_agrees_and_matches_reference() {
    let (xa, xb) = (key(XA), key(XB));
    let (ya, yb) = (public_key(&xa), public_key(&xb));
    assert_eq!(shared_secret(&xa, &yb), shared_secret(&xb, &ya));
    // Same S computed as (G^xa)^xb directly with big integers.
    let p = BigUint::from_bytes_be(&P_BYTES);
    let direct = BigUint::from(2u32)
        .modpow(&BigUint::from_bytes_be(&xa), &p)
        .modpow(&BigUint::from_bytes_be(&xb), &p);
    assert_eq!(shared_secret(&xa, &yb).unwrap(), to_dh_bytes(&direct));
    // Python: pow(yb, xa, P).
    let s = "6e883711e876b95ac69934a98a75d878169113639e28b1dc6b3b478e10dccf3e\
             65409b54af426b43f45a564a52e2660caeda1d36380b3a4ed7a1bd73667e0cca\
             6022d89e46bc8af46b02e2507874d3f87d4f954c43b292c10b48055502ceb21d";
    assert_eq!(shared_secret(&xa, &yb).unwrap().to_vec(), unhex(s));
    // Tiny exponents: G^1 = 2, G^256 = 2^256, left-padded to 96 bytes.
    let mut one = [0u8; 20];
    one[19] = 1;
    let mut two = [0u8; DH_LEN];
    two[95] = 2;
    assert_eq!(public_key(&one), two);
    let mut x256 = [0u8; 20];
    x256[18] = 1;
    let mut y256 = [0u8; DH_LEN];
    y256[DH_LEN - 33] = 1;
    assert_eq!(public_key(&x256), y256);
    assert_eq!(p.bits(), 768);
}

#[test]
fn degenerate_public_keys_are_refused() {
    let x = key(XA);
    let p = BigUint::from_bytes_be(&P_BYTES);
    let bad = [
        BigUint::from(0u32),
        BigUint::from(1u32),
        &p - 1u32,
        p.clone(),
        &p + 5u32,
    ];
    for y in bad {
        let mut bytes = [0u8; DH_LEN];
        let raw = y.to_bytes_be();
        bytes[DH_LEN - raw.len()..].copy_from_slice(&raw);
        assert_eq!(shared_secret(&x, &bytes), Err(MseError::InvalidPublicKey));
    }
    assert_eq!(
        shared_secret(&x, &[0xff; DH_LEN]),
        Err(MseError::InvalidPublicKey)
    );
    assert!(shared_secret(&x, &to_dh_bytes(&(&p - 2u32))).is_ok());
    // And through the state machine: a responder fed Ya = 1.
    let mut r = Responder::new(Policy::Preferred, secrets(key(XB), 0)).unwrap();
    let mut ya = [0u8; DH_LEN];
    ya[95] = 1;
    assert_eq!(r.handle_input(&ya, lookup), Err(MseError::InvalidPublicKey));
    assert!(r.poll_output().is_none());
}

/// A reference RC4, for checking the crate's keystream and the discard.
fn ref_rc4(key: &[u8], skip: usize, data: &mut [u8]) {
    let mut s: [u8; 256] = std::array::from_fn(|i| i as u8);
    let mut j = 0u8;
    for i in 0..256 {
        j = j.wrapping_add(s[i]).wrapping_add(key[i % key.len()]);
        s.swap(i, j as usize);
    }
    let (mut i, mut j) = (0u8, 0u8);
    let mut next = || {
        i = i.wrapping_add(1);
        j = j.wrapping_add(s[i as usize]);
        s.swap(i as usize, j as usize);
        s[s[i as usize].wrapping_add(s[j as usize]) as usize]
    };
    for _ in 0..skip {
        next();
    }
    for b in data {
        *b ^= next();
    }
}

#[test]
fn rc4_stream_drops_1024_bytes() {
    let mut v = b"Plaintext".to_vec();
    ref_rc4(b"Key", 0, &mut v);
    assert_eq!(v, unhex("bbf316e8d940af0ad3"));
    let s = [9u8; DH_LEN];
    let mut ours = vec![0u8; 64];
    stream(b"keyA", &s, &IH).apply_keystream(&mut ours);
    let mut reference = vec![0u8; 64];
    ref_rc4(&sha1_of(&[b"keyA", &s, &IH]), 1024, &mut reference);
    assert_eq!(ours, reference);
}

/// Plays the initiator by hand, so tests can send what no correct
/// initiator sends. Returns the responder and S after Yb arrived.
fn fake_initiator(rp: Policy) -> (Responder, [u8; DH_LEN]) {
    let xa = key(XA);
    let mut r = Responder::new(rp, secrets(key(XB), 33)).unwrap();
    r.handle_input(&public_key(&xa), lookup).unwrap();
    let out = r.poll_output().unwrap();
    assert_eq!(out.len(), DH_LEN + 33);
    let yb: [u8; DH_LEN] = out[..DH_LEN].try_into().unwrap();
    let s = shared_secret(&xa, &yb).unwrap();
    (r, s)
}

struct Step3<'a> {
    ih: [u8; 20],
    vc: [u8; 8],
    provide: u32,
    pad_c_len: u16,
    pad_c: &'a [u8],
    ia_len: u16,
    ia: &'a [u8],
}

impl Default for Step3<'_> {
    fn default() -> Self {
        Step3 {
            ih: IH,
            vc: VC,
            provide: CRYPTO_RC4,
            pad_c_len: 0,
            pad_c: &[],
            ia_len: 0,
            ia: &[],
        }
    }
}

fn build_step3(s: &[u8; DH_LEN], f: &Step3) -> Vec<u8> {
    let mut m = sha1_of(&[b"req1", s]).to_vec();
    m.extend_from_slice(&xor20(&req2_hash(&f.ih), &sha1_of(&[b"req3", s])));
    let mut secret = f.vc.to_vec();
    secret.extend_from_slice(&f.provide.to_be_bytes());
    secret.extend_from_slice(&f.pad_c_len.to_be_bytes());
    secret.extend_from_slice(f.pad_c);
    secret.extend_from_slice(&f.ia_len.to_be_bytes());
    secret.extend_from_slice(f.ia);
    stream(b"keyA", s, &IH).apply_keystream(&mut secret);
    m.extend_from_slice(&secret);
    m
}

#[test]
fn required_responder_refuses_plaintext_only_initiator() {
    let (mut r, s) = fake_initiator(Policy::Required);
    let m = build_step3(
        &s,
        &Step3 {
            provide: CRYPTO_PLAINTEXT,
            ..Default::default()
        },
    );
    let e = r.handle_input(&m, lookup).unwrap_err();
    assert_eq!(e, MseError::NoCommonMethod { offered: 1 });
    assert!(e.to_string().contains("No common crypto method"));
    // Dead from now on, and says so again.
    assert_eq!(r.handle_input(b"x", lookup), Err(e));
    assert!(r.poll_output().is_none());
}

#[test]
fn responder_ignores_unknown_provide_bits() {
    let (mut r, s) = fake_initiator(Policy::Preferred);
    let m = build_step3(
        &s,
        &Step3 {
            provide: 0xffff_fff0 | CRYPTO_PLAINTEXT,
            ..Default::default()
        },
    );
    r.handle_input(&m, lookup).unwrap();
    assert!(r.poll_done().unwrap().cipher.is_none());
}

#[test]
fn crafted_step3_violations() {
    let long_ia = vec![0u8; MAX_IA + 1];
    let cases: Vec<(Step3, MseError)> = vec![
        (
            Step3 {
                vc: [0, 0, 0, 0, 0, 0, 0, 1],
                ..Default::default()
            },
            MseError::BadVc,
        ),
        (
            Step3 {
                ih: [0x42; 20],
                ..Default::default()
            },
            MseError::UnknownTorrent,
        ),
        (
            Step3 {
                pad_c_len: 513,
                ..Default::default()
            },
            MseError::PadTooLong(513),
        ),
        (
            Step3 {
                ia_len: (MAX_IA + 1) as u16,
                ia: &long_ia,
                ..Default::default()
            },
            MseError::PayloadTooLong(MAX_IA + 1),
        ),
        (
            Step3 {
                provide: 0,
                ..Default::default()
            },
            MseError::NoCommonMethod { offered: 0 },
        ),
    ];
    for (f, want) in cases {
        for split in [Split::Whole, Split::Bytes] {
            let (mut r, s) = fake_initiator(Policy::Preferred);
            let mut res = Ok(());
            for piece in splitter(split)(build_step3(&s, &f)) {
                res = r.handle_input(&piece, lookup);
                if res.is_err() {
                    break;
                }
            }
            assert_eq!(res, Err(want.clone()), "{split:?}");
            assert!(r.poll_done().is_none());
        }
    }
}

#[test]
fn max_pad_c_is_accepted() {
    let pad = [0x5a; MAX_PAD];
    let (mut r, s) = fake_initiator(Policy::Required);
    let m = build_step3(
        &s,
        &Step3 {
            pad_c_len: MAX_PAD as u16,
            pad_c: &pad,
            ia_len: 3,
            ia: b"abc",
            ..Default::default()
        },
    );
    r.handle_input(&m, lookup).unwrap();
    assert_eq!(r.poll_done().unwrap().initial_payload, b"abc");
}

#[test]
fn wrong_info_hash_is_unknown_torrent() {
    let mut i = Initiator::new([0x99; 20], Policy::Preferred, secrets(key(XA), 5), vec![]).unwrap();
    let mut r = Responder::new(Policy::Preferred, secrets(key(XB), 5)).unwrap();
    let e = run(&mut i, &mut r, Split::Random(9)).unwrap_err();
    assert_eq!(e, MseError::UnknownTorrent);
    assert!(e.to_string().contains("torrent"));
}

#[test]
fn other_known_torrent_is_found() {
    let mut i = Initiator::new(OTHER_IH, Policy::Preferred, secrets(key(XA), 5), vec![1]).unwrap();
    let mut r = Responder::new(Policy::Preferred, secrets(key(XB), 5)).unwrap();
    let (a, b) = run(&mut i, &mut r, Split::Whole).unwrap();
    assert_eq!((a.info_hash, b.info_hash), (OTHER_IH, OTHER_IH));
}

#[test]
fn garbage_instead_of_ya_fails_within_bound() {
    let mut rng = fastrand::Rng::with_seed(7);
    let mut r = Responder::new(Policy::Preferred, secrets(key(XB), 0)).unwrap();
    let mut fed = 0;
    let err = loop {
        let b = [rng.u8(..)];
        fed += 1;
        if let Err(e) = r.handle_input(&b, lookup) {
            break e;
        }
        assert!(fed <= DH_LEN + REQ1_WINDOW, "no error after {fed} bytes");
        assert!(r.buffered() <= REQ1_WINDOW);
    };
    assert_eq!(err, MseError::SyncNotFound);
    assert_eq!(fed, DH_LEN + REQ1_WINDOW);
    // Given all at once, the extra bytes are not even buffered.
    let mut r = Responder::new(Policy::Preferred, secrets(key(XB), 0)).unwrap();
    let junk: Vec<u8> = (0..10_000).map(|_| rng.u8(..)).collect();
    assert_eq!(r.handle_input(&junk, lookup), Err(MseError::SyncNotFound));
    // Yb was queued before the failure; a dead responder sends nothing.
    assert!(r.poll_output().is_none());
}

/// Plays the responder by hand: returns the initiator (Yb not yet fed) and S.
fn fake_responder(ip: Policy) -> (Initiator, [u8; DH_LEN], Vec<u8>) {
    let xb = key(XB);
    let mut i = Initiator::new(IH, ip, secrets(key(XA), 0), b"IA".to_vec()).unwrap();
    let ya: [u8; DH_LEN] = i.poll_output().unwrap().try_into().unwrap();
    let s = shared_secret(&xb, &ya).unwrap();
    (i, s, public_key(&xb).to_vec())
}

fn build_step4(s: &[u8; DH_LEN], select: u32, pad_d_len: u16, pad_d: &[u8]) -> Vec<u8> {
    let mut m = VC.to_vec();
    m.extend_from_slice(&select.to_be_bytes());
    m.extend_from_slice(&pad_d_len.to_be_bytes());
    m.extend_from_slice(pad_d);
    stream(b"keyB", s, &IH).apply_keystream(&mut m);
    m
}

#[test]
fn crafted_step4_violations() {
    let cases = [
        (
            Policy::Required,
            CRYPTO_PLAINTEXT,
            0,
            MseError::BadSelect {
                selected: 1,
                offered: 2,
            },
        ),
        (
            Policy::Preferred,
            3,
            0,
            MseError::BadSelect {
                selected: 3,
                offered: 3,
            },
        ),
        (
            Policy::Preferred,
            0,
            0,
            MseError::BadSelect {
                selected: 0,
                offered: 3,
            },
        ),
        (
            Policy::Preferred,
            8,
            0,
            MseError::BadSelect {
                selected: 8,
                offered: 3,
            },
        ),
        (
            Policy::Preferred,
            CRYPTO_RC4,
            513,
            MseError::PadTooLong(513),
        ),
    ];
    for (ip, select, pad_len, want) in cases {
        let (mut i, s, mut msg) = fake_responder(ip);
        msg.extend_from_slice(&[1, 2, 3]); // PadB
        msg.extend_from_slice(&build_step4(&s, select, pad_len, &[]));
        assert_eq!(i.handle_input(&msg), Err(want.clone()));
        assert!(!want.to_string().is_empty());
    }
}

#[test]
fn garbage_after_yb_fails_within_bound() {
    let (mut i, _s, yb) = fake_responder(Policy::Preferred);
    i.handle_input(&yb).unwrap();
    assert!(i.poll_output().is_some(), "step 3 sent after Yb");
    let mut rng = fastrand::Rng::with_seed(3);
    let mut fed = 0;
    let err = loop {
        fed += 1;
        if let Err(e) = i.handle_input(&[rng.u8(..)]) {
            break e;
        }
        assert!(fed <= VC_WINDOW);
    };
    assert_eq!(err, MseError::VcNotFound);
    assert_eq!(fed, VC_WINDOW);
    assert!(err.to_string().contains("verification constant"));
}

#[test]
fn initiator_remainder_is_decrypted_payload() {
    for (rp, rc4) in [(Policy::Required, true), (Policy::Tolerated, false)] {
        // PadD and payload arrive in the same read as step 4.
        let (mut i, s, mut msg) = fake_responder(Policy::Preferred);
        msg.extend_from_slice(&[9; MAX_PAD]); // PadB at its maximum
        let select = if rc4 { CRYPTO_RC4 } else { CRYPTO_PLAINTEXT };
        let mut enc = stream(b"keyB", &s, &IH);
        let mut tail = VC.to_vec();
        tail.extend_from_slice(&select.to_be_bytes());
        tail.extend_from_slice(&4u16.to_be_bytes());
        tail.extend_from_slice(b"padd");
        enc.apply_keystream(&mut tail);
        let mut payload = b"payload bytes".to_vec();
        if rc4 {
            enc.apply_keystream(&mut payload);
        }
        msg.extend_from_slice(&tail);
        msg.extend_from_slice(&payload);
        i.handle_input(&msg).unwrap();
        // More bytes before poll_done are kept, decrypted, too.
        let mut more = b" and more".to_vec();
        if rc4 {
            enc.apply_keystream(&mut more);
        }
        i.handle_input(&more).unwrap();
        let a = i.poll_done().unwrap();
        assert_eq!(a.remainder, b"payload bytes and more", "{rp:?}");
        assert_eq!(a.cipher.is_some(), rc4);
        assert_eq!(i.handle_input(b"late"), Err(MseError::Finished));
    }
}

#[test]
fn responder_remainder_is_decrypted_payload() {
    for (ip, rp) in [
        (Policy::Required, Policy::Required),
        (Policy::Tolerated, Policy::Tolerated),
    ] {
        // Twin responders with equal secrets behave identically: the first
        // completes the handshake so the initiator can produce payload, the
        // second receives step 3 and that payload in one read.
        let (mut i, mut r1) = pair(ip, rp, (10, 20), bt_handshake());
        let mut r2 = Responder::new(rp, secrets(key(XB), 20)).unwrap();
        let mut to_r = Vec::new();
        for _ in 0..4 {
            while let Some(c) = i.poll_output() {
                r1.handle_input(&c, lookup).unwrap();
                to_r.push(c);
            }
            while let Some(c) = r1.poll_output() {
                i.handle_input(&c).unwrap();
            }
        }
        let mut a = i.poll_done().unwrap();
        let mut payload = b"after the IA".to_vec();
        if let Some(c) = a.cipher.as_mut() {
            c.encrypt(&mut payload);
        }
        let ya = to_r.remove(0);
        r2.handle_input(&ya, lookup).unwrap();
        let mut rest = to_r.concat();
        rest.extend_from_slice(&payload);
        r2.handle_input(&rest, lookup).unwrap();
        let mut b = r2.poll_done().unwrap();
        assert_eq!(b.remainder, b"after the IA", "{ip:?}/{rp:?}");
        assert_eq!(b.initial_payload, bt_handshake());
        check_roundtrip(&mut a, &mut b);
    }
}

#[test]
fn constructor_refuses_bad_local_input() {
    let big_pad = Secrets {
        private_key: key(XA),
        pad: vec![0; MAX_PAD + 1],
    };
    assert_eq!(
        Initiator::new(IH, Policy::Required, big_pad.clone(), vec![]).unwrap_err(),
        MseError::LocalPadTooLong(MAX_PAD + 1)
    );
    assert_eq!(
        Responder::new(Policy::Required, big_pad).unwrap_err(),
        MseError::LocalPadTooLong(MAX_PAD + 1)
    );
    assert_eq!(
        Initiator::new(
            IH,
            Policy::Required,
            secrets(key(XA), 0),
            vec![0; MAX_IA + 1]
        )
        .unwrap_err(),
        MseError::LocalPayloadTooLong(MAX_IA + 1)
    );
    assert_eq!(
        Responder::new(Policy::Required, secrets([0; 20], 0)).unwrap_err(),
        MseError::WeakPrivateKey
    );
    let dbg = format!("{:?}", secrets(key(XA), 3));
    assert!(!dbg.contains("private"), "{dbg}");
}

#[test]
fn initiator_first_flight_is_ya_and_pad() {
    let (mut i, _) = pair(Policy::Required, Policy::Required, (100, 0), vec![]);
    let first = i.poll_output().unwrap();
    assert_eq!(first.len(), DH_LEN + 100);
    assert_eq!(first[..DH_LEN], public_key(&key(XA)));
    assert!(i.poll_output().is_none());
    assert!(i.poll_done().is_none());
    // Nothing more until Yb is complete.
    i.handle_input(&[0x55; DH_LEN - 1]).unwrap();
    assert!(i.poll_output().is_none());
}

#[test]
fn plain_handshake_detection() {
    assert_eq!(is_plain_handshake(b""), None);
    assert_eq!(is_plain_handshake(b"\x13"), None);
    assert_eq!(is_plain_handshake(b"\x13BitTorrent proto"), None);
    assert_eq!(is_plain_handshake(b"\x13BitTorrent protocol"), Some(true));
    assert_eq!(is_plain_handshake(&bt_handshake()), Some(true));
    assert_eq!(is_plain_handshake(b"\x14"), Some(false));
    assert_eq!(is_plain_handshake(b"\x13BitTorrent Protocol"), Some(false));
    assert_eq!(is_plain_handshake(&public_key(&key(XA))), Some(false));
}

#[test]
fn transcript_replays_deterministically() {
    let (mut i, mut r) = pair(
        Policy::Preferred,
        Policy::Preferred,
        (40, 50),
        bt_handshake(),
    );
    let t = capture_transcript(&mut i, &mut r, &[IH]).unwrap().unwrap();
    assert_eq!(t.to_responder.len(), 2);
    assert_eq!(t.to_initiator.len(), 2);
    // Both results were taken by the capture.
    assert_eq!(i.handle_input(b"x"), Err(MseError::Finished));
    assert_eq!(r.handle_input(b"x", lookup), Err(MseError::Finished));
    // A fresh responder with the same secrets, fed the recorded chunks,
    // answers byte for byte what was recorded: the seed is self-consistent.
    let mut r2 = Responder::new(Policy::Preferred, secrets(key(XB), 50)).unwrap();
    let mut answered = Vec::new();
    for c in &t.to_responder {
        r2.handle_input(c, lookup).unwrap();
        while let Some(o) = r2.poll_output() {
            answered.push(o);
        }
    }
    assert_eq!(answered, t.to_initiator);
    assert_eq!(r2.poll_done().unwrap().initial_payload, bt_handshake());
}

#[test]
fn errors_read_as_sentences() {
    let all = [
        MseError::LocalPadTooLong(600),
        MseError::LocalPayloadTooLong(2000),
        MseError::WeakPrivateKey,
        MseError::InvalidPublicKey,
        MseError::SyncNotFound,
        MseError::VcNotFound,
        MseError::BadVc,
        MseError::UnknownTorrent,
        MseError::NoCommonMethod { offered: 1 },
        MseError::BadSelect {
            selected: 1,
            offered: 2,
        },
        MseError::PadTooLong(600),
        MseError::PayloadTooLong(2000),
        MseError::Finished,
    ];
    for e in all {
        let s = e.to_string();
        assert!(s.ends_with('.'), "{s}");
        assert!(s.chars().next().unwrap().is_uppercase(), "{s}");
    }
}
