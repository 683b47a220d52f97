use super::*;

/// An info dictionary's worth of bytes (not bencode: the fetch never
/// looks inside) and its hash.
fn info(len: usize) -> (Vec<u8>, [u8; 20]) {
    let bytes: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
    let hash = Sha1::digest(&bytes).into();
    (bytes, hash)
}

fn piece_of(info: &[u8], piece: u32) -> &[u8] {
    let start = piece as usize * PIECE_SIZE;
    &info[start..start + piece_len(info.len() as u32, piece)]
}

fn events(f: &mut MetadataFetch) -> Vec<FetchEvent> {
    std::iter::from_fn(|| f.poll_event()).collect()
}

fn drops(ev: &[FetchEvent]) -> Vec<(PeerKey, Misbehaviour)> {
    ev.iter()
        .filter_map(|e| match e {
            FetchEvent::Drop { peer, reason } => Some((*peer, reason.clone())),
            FetchEvent::Done(_) => None,
        })
        .collect()
}

fn done(ev: &[FetchEvent]) -> Option<&[u8]> {
    ev.iter().find_map(|e| match e {
        FetchEvent::Done(b) => Some(&b[..]),
        FetchEvent::Drop { .. } => None,
    })
}

/// How a fake peer answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Acts {
    Honest,
    /// Honest but for the pieces whose bits are set: one bit flipped.
    Corrupt(u32),
    Silent,
}

/// Asks every peer for what the fetch wants, then lets each answer, as
/// requests cross answers on the network. Returns how many went out.
fn step(f: &mut MetadataFetch, info: &[u8], peers: &[(PeerKey, Acts)], now: Instant) -> usize {
    let size = info.len() as u32;
    let mut asked = Vec::new();
    for &(k, act) in peers {
        while let Some(piece) = f.poll_request(k, now) {
            asked.push((k, act, piece));
        }
    }
    for &(k, act, piece) in &asked {
        let mut bytes = piece_of(info, piece).to_vec();
        match act {
            Acts::Silent => continue,
            Acts::Corrupt(mask) if piece < 32 && mask >> piece & 1 == 1 => bytes[0] ^= 1,
            Acts::Corrupt(_) | Acts::Honest => {}
        }
        f.handle_data(k, piece, size, &bytes, now).unwrap();
    }
    asked.len()
}

/// Runs the fetch against `peers` (who have offered already), moving the
/// clock to each timeout when nothing else happens.
fn run(
    f: &mut MetadataFetch,
    info: &[u8],
    peers: &[(PeerKey, Acts)],
    mut now: Instant,
) -> Vec<FetchEvent> {
    let mut ev = Vec::new();
    for _ in 0..200 {
        if f.is_done() {
            break;
        }
        if step(f, info, peers, now) == 0 {
            let Some(t) = f.poll_timeout() else {
                break;
            };
            now = now.max(t);
            f.handle_timeout(now);
        }
        ev.extend(events(f));
    }
    ev.extend(events(f));
    ev
}

fn fetch_with(info: &[u8], hash: [u8; 20], keys: &[PeerKey], now: Instant) -> MetadataFetch {
    let mut f = MetadataFetch::new(hash);
    for k in keys {
        f.peer_offers(*k, info.len() as u32, now).unwrap();
    }
    f
}

#[test]
fn messages_have_exact_bytes_and_round_trip() {
    let cases: [(MetadataMessage<'_>, &[u8]); 3] = [
        (
            MetadataMessage::Request { piece: 0 },
            b"d8:msg_typei0e5:piecei0ee",
        ),
        (
            MetadataMessage::Data {
                piece: 1,
                total_size: 34256,
                data: b"xyz",
            },
            b"d8:msg_typei1e5:piecei1e10:total_sizei34256eexyz",
        ),
        (
            MetadataMessage::Reject { piece: 3 },
            b"d8:msg_typei2e5:piecei3ee",
        ),
    ];
    for (msg, bytes) in cases {
        let mut out = Vec::new();
        msg.encode(&mut out);
        assert_eq!(out, bytes, "{msg:?}");
        assert_eq!(MetadataMessage::parse(&out), Ok(Some(msg)));
        let mut wire = vec![7];
        msg.write_extended(&mut wire, 3);
        let len = (bytes.len() + 2) as u32;
        assert_eq!(wire[1..5], len.to_be_bytes());
        assert_eq!(wire[5..7], [20, 3]);
        assert_eq!(&wire[7..], bytes);
        let (m, used) = super::super::wire::split_message(&wire[1..], MAX_PAYLOAD + 2)
            .unwrap()
            .unwrap();
        assert_eq!(used, wire.len() - 1);
        assert_eq!(
            m,
            super::super::wire::Message::Extended {
                id: 3,
                payload: bytes
            }
        );
    }
    // A full piece fits; the data is what follows the dict, whatever it is.
    let full = vec![b'e'; PIECE_SIZE];
    let msg = MetadataMessage::Data {
        piece: 9,
        total_size: 1 << 20,
        data: &full,
    };
    let mut out = Vec::new();
    msg.encode(&mut out);
    assert!(out.len() <= MAX_PAYLOAD);
    assert_eq!(MetadataMessage::parse(&out), Ok(Some(msg)));
}

#[test]
fn parsing_tolerates_order_repeats_and_unknowns() {
    let parse = MetadataMessage::parse;
    assert_eq!(
        parse(b"d5:piecei4e1:xld1:yi1eee8:msg_typei0ee"),
        Ok(Some(MetadataMessage::Request { piece: 4 }))
    );
    assert_eq!(
        parse(b"d8:msg_typei0e8:msg_typei2e5:piecei1e5:piecei2ee"),
        Ok(Some(MetadataMessage::Request { piece: 1 })),
        "the first occurrence counts"
    );
    // BEP 9: an unknown msg_type is ignored, whatever else it carries.
    assert_eq!(parse(b"d8:msg_typei7ee"), Ok(None));
    assert_eq!(parse(b"d8:msg_typei-1e5:piecei0eejunk"), Ok(None));
    // total_size on a request is tolerated.
    assert_eq!(
        parse(b"d8:msg_typei2e5:piecei0e10:total_sizei5ee"),
        Ok(Some(MetadataMessage::Reject { piece: 0 }))
    );
}

#[test]
fn malformed_messages_are_refused() {
    let parse = MetadataMessage::parse;
    use MetadataError::*;
    let cases: Vec<(&[u8], MetadataError)> = vec![
        (b"", NotADict),
        (b"le", NotADict),
        (b"i1e", NotADict),
        (b"d5:piecei0ee", Missing("msg_type")),
        (b"d8:msg_typei0ee", Missing("piece")),
        (b"d8:msg_typei1e5:piecei0ee", Missing("total_size")),
        (b"d8:msg_type1:05:piecei0ee", BadField("msg_type")),
        (b"d8:msg_typei0e5:piece1:0e", BadField("piece")),
        (b"d8:msg_typei0e5:piecei-1ee", BadField("piece")),
        (b"d8:msg_typei0e5:piecei4294967296ee", BadField("piece")),
        (
            b"d8:msg_typei1e5:piecei0e10:total_sizei-5ee",
            BadField("total_size"),
        ),
        (b"d8:msg_typei0e5:piecei0eex", TrailingData),
        (b"d8:msg_typei2e5:piecei0eed", TrailingData),
    ];
    for (bytes, want) in cases {
        assert_eq!(
            parse(bytes),
            Err(want),
            "{:?}",
            String::from_utf8_lossy(bytes)
        );
    }
    for bad in [
        &b"d8:msg_typei0e5:piecei0e"[..],
        b"d8:msg_typei01e5:piecei0ee",
        b"di1ei2ee",
        b"d8:msg_typei0e5:piecei0e1:xl",
    ] {
        assert!(matches!(parse(bad), Err(Bencode(_))), "{bad:?}");
    }
    let mut deep = b"d1:x".to_vec();
    deep.extend(vec![b'l'; 1000]);
    assert!(matches!(parse(&deep), Err(Bencode(_))));
    let mut long = b"d8:msg_typei1e5:piecei0e10:total_sizei99999ee".to_vec();
    long.resize(long.len() + PIECE_SIZE + 1, 0);
    assert_eq!(
        parse(&long),
        Err(PieceTooLong {
            len: PIECE_SIZE + 1
        })
    );
    let huge = vec![b'd'; MAX_PAYLOAD + 1];
    assert_eq!(
        parse(&huge),
        Err(TooLong {
            len: MAX_PAYLOAD + 1
        })
    );
}

#[test]
fn piece_geometry() {
    assert_eq!((piece_count(1), piece_len(1, 0)), (1, 1));
    assert_eq!((piece_count(16384), piece_len(16384, 0)), (1, 16384));
    assert_eq!(piece_count(16385), 2);
    assert_eq!((piece_len(16385, 0), piece_len(16385, 1)), (16384, 1));
    assert_eq!(piece_len(16385, 2), 0);
    assert_eq!(piece_len(16385, u32::MAX), 0);
    assert_eq!(piece_count(MAX_METADATA_SIZE), MAX_PIECES);
    assert_eq!(MAX_PIECES, 1920);
}

#[test]
fn honest_peers_share_the_pieces_and_the_fetch_completes() {
    let now = Instant::now();
    let (info, hash) = info(40_000); // pieces of 16384, 16384, 7232
    let mut f = fetch_with(&info, hash, &[1, 2, 3], now);
    assert_eq!(f.size(), Some(40_000));
    assert_eq!(f.slot_count(), 3);
    assert_eq!(f.held_bytes(), 0, "nothing allocated before data");
    assert_eq!(f.poll_request(1, now), Some(0));
    assert_eq!(f.poll_request(1, now), Some(1));
    assert_eq!(f.poll_request(1, now), None, "at most {MAX_OUTSTANDING}");
    assert_eq!(f.poll_request(2, now), Some(2));
    assert_eq!(
        f.poll_request(3, now),
        None,
        "every piece is asked of someone"
    );
    assert_eq!(f.poll_timeout(), Some(now + REQUEST_TIMEOUT));
    for (peer, piece) in [(1, 1), (2, 2)] {
        f.handle_data(peer, piece, 40_000, piece_of(&info, piece), now)
            .unwrap();
    }
    assert_eq!(f.held_bytes(), 16384 + 7232);
    assert_eq!(events(&mut f), vec![]);
    f.handle_data(1, 0, 40_000, piece_of(&info, 0), now)
        .unwrap();
    assert_eq!(events(&mut f), vec![FetchEvent::Done(info.clone())]);
    assert!(f.is_done());
    assert_eq!(f.held_bytes(), 0, "handed over, not kept");
    assert_eq!(f.poll_request(3, now), None);
    assert_eq!(f.poll_timeout(), None);
    // Late answers after the end are ignored.
    f.handle_data(3, 0, 40_000, piece_of(&info, 0), now)
        .unwrap();
    assert_eq!(events(&mut f), vec![]);
}

#[test]
fn a_reject_moves_the_piece_and_rests_the_peer() {
    let now = Instant::now();
    let (info, hash) = info(1000);
    let mut f = fetch_with(&info, hash, &[1, 2], now);
    // A reject of something never asked does nothing.
    f.handle_reject(2, 0, now);
    assert_eq!(f.poll_request(1, now), Some(0));
    assert_eq!(f.poll_request(2, now), None);
    f.handle_reject(1, 0, now);
    assert_eq!(f.poll_request(2, now), Some(0));
    assert_eq!(f.poll_request(1, now), None);
    f.handle_reject(2, 0, now);
    // Both rest; the owner learns when to ask again.
    assert_eq!(f.poll_timeout(), Some(now + REJECT_BACKOFF));
    let later = now + REJECT_BACKOFF - Duration::from_millis(1);
    assert_eq!(f.poll_request(1, later), None);
    f.handle_timeout(now + REJECT_BACKOFF);
    assert_eq!(f.poll_timeout(), None);
    let t = now + REJECT_BACKOFF;
    assert_eq!(f.poll_request(1, t), Some(0));
    f.handle_data(1, 0, 1000, &info, t).unwrap();
    assert_eq!(done(&events(&mut f)), Some(&info[..]));
}

#[test]
fn a_peer_that_answers_nothing_is_reported_and_its_pieces_move() {
    let now = Instant::now();
    let (info, hash) = info(40_000);
    let mut f = fetch_with(&info, hash, &[1, 2], now);
    assert_eq!(f.poll_request(1, now), Some(0));
    assert_eq!(f.poll_request(1, now), Some(1));
    assert_eq!(f.poll_request(2, now), Some(2));
    f.handle_data(2, 2, 40_000, piece_of(&info, 2), now)
        .unwrap();
    assert_eq!(f.poll_request(2, now), None, "the others are asked of 1");
    f.handle_timeout(now + REQUEST_TIMEOUT - Duration::from_millis(1));
    assert_eq!(events(&mut f), vec![]);
    let t = now + REQUEST_TIMEOUT;
    f.handle_timeout(t);
    assert_eq!(
        events(&mut f),
        vec![FetchEvent::Drop {
            peer: 1,
            reason: Misbehaviour::Unresponsive
        }]
    );
    assert_eq!(f.poll_request(1, t), None, "never asked again");
    let ev = run(&mut f, &info, &[(1, Acts::Honest), (2, Acts::Honest)], t);
    assert_eq!(done(&ev), Some(&info[..]));
    assert!(drops(&ev).is_empty());
}

#[test]
fn a_late_answer_is_still_taken() {
    let now = Instant::now();
    let (info, hash) = info(1000);
    let mut f = fetch_with(&info, hash, &[1, 2], now);
    assert_eq!(f.poll_request(1, now), Some(0));
    let t = now + REQUEST_TIMEOUT;
    f.handle_timeout(t);
    assert_eq!(events(&mut f), vec![], "one timeout is not enough");
    assert_eq!(f.poll_request(2, t), Some(0));
    assert_eq!(f.poll_request(1, t), None, "already asked of it");
    f.handle_data(1, 0, 1000, &info, t).unwrap();
    assert_eq!(done(&events(&mut f)), Some(&info[..]));
}

#[test]
fn garbage_is_refused_and_the_honest_finish_the_fetch() {
    let now = Instant::now();
    let (info, hash) = info(40_000);
    let size = 40_000;
    let mut f = fetch_with(&info, hash, &[1, 2, 3, 4, 5, 6], now);
    let p0 = piece_of(&info, 0);
    let p2 = piece_of(&info, 2);
    let mut long_last = p2.to_vec();
    long_last.push(0);
    let cases: [(PeerKey, u32, u32, &[u8], Misbehaviour); 5] = [
        (
            1,
            0,
            size + 1,
            p0,
            Misbehaviour::TotalSizeMismatch {
                offered: size,
                total_size: size + 1,
            },
        ),
        (2, 3, size, p0, Misbehaviour::PieceOutOfRange { piece: 3 }),
        (
            3,
            0,
            size,
            &p0[1..],
            Misbehaviour::BadPieceLength {
                piece: 0,
                len: 16383,
                want: 16384,
            },
        ),
        (
            4,
            2,
            size,
            &long_last,
            Misbehaviour::BadPieceLength {
                piece: 2,
                len: 7233,
                want: 7232,
            },
        ),
        (
            5,
            2,
            size,
            &p0[..0],
            Misbehaviour::BadPieceLength {
                piece: 2,
                len: 0,
                want: 7232,
            },
        ),
    ];
    for (peer, piece, total, bytes, want) in cases {
        // Asked or not, a malformed piece is refused.
        let _ = f.poll_request(peer, now);
        assert_eq!(
            f.handle_data(peer, piece, total, bytes, now),
            Err(want),
            "peer {peer}"
        );
        assert_eq!(f.poll_request(peer, now), None, "peer {peer} is banned");
    }
    // A well-formed piece nobody asked for is ignored.
    f.handle_data(6, 1, size, piece_of(&info, 1), now).unwrap();
    assert_eq!(f.held_bytes(), 0);
    let honest = [(6, Acts::Honest)];
    let ev = run(&mut f, &info, &honest, now);
    assert_eq!(done(&ev), Some(&info[..]));
    assert!(drops(&ev).is_empty(), "already refused: {ev:?}");
}

#[test]
fn a_bad_piece_is_outvoted_and_its_sender_reported() {
    let now = Instant::now();
    let (info, hash) = info(40_000);
    let mut f = fetch_with(&info, hash, &[1, 2, 3], now);
    let peers = [
        (1, Acts::Corrupt(0b1)),
        (2, Acts::Honest),
        (3, Acts::Honest),
    ];
    let ev = run(&mut f, &info, &peers, now);
    assert_eq!(done(&ev), Some(&info[..]));
    assert_eq!(drops(&ev), vec![(1, Misbehaviour::BadData)]);
}

#[test]
fn a_liar_lying_again_when_asked_to_confirm_is_still_outvoted() {
    // Round one: the liar sends pieces 0 (bad) and 1. Round two, asked to
    // confirm piece 2, it lies again: a third peer breaks the tie.
    let now = Instant::now();
    let (info, hash) = info(5 * PIECE_SIZE);
    let mut f = fetch_with(&info, hash, &[7, 1, 2, 3], now);
    let peers = [
        (7, Acts::Corrupt(0b101)),
        (1, Acts::Honest),
        (2, Acts::Honest),
        (3, Acts::Honest),
    ];
    let ev = run(&mut f, &info, &peers, now);
    assert_eq!(done(&ev), Some(&info[..]));
    assert_eq!(drops(&ev), vec![(7, Misbehaviour::BadData)]);
}

#[test]
fn a_lone_liar_is_dropped_and_an_honest_peer_finishes() {
    let now = Instant::now();
    let (info, hash) = info(1000);
    let mut f = fetch_with(&info, hash, &[1], now);
    let ev = run(&mut f, &info, &[(1, Acts::Corrupt(0b1))], now);
    assert_eq!(drops(&ev), vec![(1, Misbehaviour::FailedHash)]);
    assert!(done(&ev).is_none());
    assert_eq!(f.poll_request(1, now), None);
    f.peer_offers(2, 1000, now).unwrap();
    let ev = run(&mut f, &info, &[(1, Acts::Honest), (2, Acts::Honest)], now);
    assert_eq!(done(&ev), Some(&info[..]));
}

#[test]
fn liars_agreeing_at_every_level_are_all_dropped() {
    let now = Instant::now();
    let (info, hash) = info(3 * PIECE_SIZE - 100);
    let mut f = fetch_with(&info, hash, &[1, 2, 3], now);
    let liars = [
        (1, Acts::Corrupt(0b1)),
        (2, Acts::Corrupt(0b1)),
        (3, Acts::Corrupt(0b1)),
    ];
    let ev = run(&mut f, &info, &liars, now);
    let mut d = drops(&ev);
    d.sort_by_key(|(k, _)| *k);
    assert_eq!(
        d,
        vec![
            (1, Misbehaviour::FailedHash),
            (2, Misbehaviour::FailedHash),
            (3, Misbehaviour::FailedHash)
        ]
    );
    assert_eq!(f.held_bytes(), 0, "their pieces are forgotten");
    f.peer_offers(4, info.len() as u32, now).unwrap();
    let ev = run(&mut f, &info, &[(4, Acts::Honest)], now);
    assert_eq!(done(&ev), Some(&info[..]));
}

#[test]
fn lying_sizes() {
    let now = Instant::now();
    let (info, hash) = info(40_000);
    let mut f = MetadataFetch::new(hash);
    // 0: no metadata yet, not an offence, not asked.
    f.peer_offers(1, 0, now).unwrap();
    assert_eq!((f.size(), f.poll_request(1, now)), (None, None));
    // Over the bound.
    assert_eq!(
        f.peer_offers(2, MAX_METADATA_SIZE + 1, now),
        Err(Misbehaviour::SizeTooLarge {
            size: MAX_METADATA_SIZE + 1
        })
    );
    assert_eq!(f.size(), None);
    assert_eq!(f.peer_offers(2, 40_000, now), Ok(()), "banned: ignored");
    assert_eq!(f.poll_request(2, now), None);
    // Changing its mind.
    f.peer_offers(3, 40_000, now).unwrap();
    assert_eq!(
        f.peer_offers(3, 40_001, now),
        Err(Misbehaviour::SizeChanged {
            was: 40_000,
            now: 40_001
        })
    );
    assert_eq!(f.poll_request(3, now), None);
    // The one without metadata gets some, and a minority says otherwise.
    f.peer_offers(1, 40_000, now).unwrap();
    f.peer_offers(4, 40_000, now).unwrap();
    f.peer_offers(5, 50_000, now).unwrap();
    assert_eq!(f.size(), Some(40_000));
    f.peer_offers(1, 0, now).unwrap();
    assert_eq!(f.size(), Some(40_000), "a later 0 changes nothing");
    let peers = [(1, Acts::Honest), (4, Acts::Honest), (5, Acts::Honest)];
    let ev = run(&mut f, &info, &peers, now);
    assert_eq!(done(&ev), Some(&info[..]));
    assert_eq!(
        drops(&ev),
        vec![(
            5,
            Misbehaviour::WrongSize {
                offered: 50_000,
                actual: 40_000
            }
        )]
    );
}

#[test]
fn the_majority_size_wins_and_a_switch_starts_over() {
    let now = Instant::now();
    let (fake, _) = info(50_000);
    let (info, hash) = info(40_000);
    let mut f = MetadataFetch::new(hash);
    f.peer_offers(1, 50_000, now).unwrap();
    assert_eq!(f.size(), Some(50_000));
    assert_eq!(f.poll_request(1, now), Some(0));
    f.handle_data(1, 0, 50_000, piece_of(&fake, 0), now)
        .unwrap();
    assert_eq!(f.held_bytes(), PIECE_SIZE);
    f.peer_offers(2, 40_000, now).unwrap();
    assert_eq!(f.size(), Some(50_000), "a tie keeps the first");
    f.peer_offers(3, 40_000, now).unwrap();
    assert_eq!(f.size(), Some(40_000));
    assert_eq!(f.held_bytes(), 0, "the old size's pieces are gone");
    assert_eq!(f.poll_request(1, now), None);
    // Its old request's answer is ignored.
    f.handle_data(1, 1, 50_000, piece_of(&fake, 1), now)
        .unwrap();
    let peers = [(1, Acts::Honest), (2, Acts::Honest), (3, Acts::Honest)];
    let ev = run(&mut f, &info, &peers, now);
    assert_eq!(done(&ev), Some(&info[..]));
    assert_eq!(
        drops(&ev),
        vec![(
            1,
            Misbehaviour::WrongSize {
                offered: 50_000,
                actual: 40_000
            }
        )]
    );
}

#[test]
fn memory_follows_the_pieces_received_not_the_size_announced() {
    let now = Instant::now();
    // Many fetches, each told the largest size: slots only.
    let mut fetches: Vec<MetadataFetch> = (0..100u8)
        .map(|i| {
            let mut f = MetadataFetch::new([i; 20]);
            f.peer_offers(1, MAX_METADATA_SIZE, now).unwrap();
            f
        })
        .collect();
    for f in &fetches {
        assert_eq!((f.slot_count(), f.held_bytes()), (MAX_PIECES, 0));
    }
    // A slot costs little: the table of the largest size is small.
    assert!(std::mem::size_of::<Slot>() * MAX_PIECES <= 256 << 10);
    // Pieces held grow only as they arrive, by their length.
    let f = &mut fetches[0];
    let block = vec![1u8; PIECE_SIZE];
    for n in 1..=10 {
        let piece = f.poll_request(1, now).unwrap();
        f.handle_data(1, piece, MAX_METADATA_SIZE, &block, now)
            .unwrap();
        assert_eq!(f.held_bytes(), n * PIECE_SIZE);
    }
}

#[test]
fn a_gone_peer_s_key_inherits_nothing() {
    let now = Instant::now();
    let (info, hash) = info(2 * PIECE_SIZE);
    let size = info.len() as u32;
    let mut f = fetch_with(&info, hash, &[1], now);
    assert_eq!(f.poll_request(1, now), Some(0));
    let mut bad = piece_of(&info, 0).to_vec();
    bad[5] ^= 0x80;
    f.handle_data(1, 0, size, &bad, now).unwrap();
    assert_eq!(f.poll_request(1, now), Some(1));
    f.peer_gone(1);
    assert_eq!(f.poll_timeout(), None, "its request was withdrawn");
    // A new connection under the same key, and another peer.
    f.peer_offers(1, size, now).unwrap();
    f.peer_offers(2, size, now).unwrap();
    let peers = [(1, Acts::Honest), (2, Acts::Honest)];
    let ev = run(&mut f, &info, &peers, now);
    assert_eq!(done(&ev), Some(&info[..]));
    assert!(drops(&ev).is_empty(), "the liar is gone: {ev:?}");
}

#[test]
fn a_gone_honest_peer_s_pieces_still_count() {
    let now = Instant::now();
    let (info, hash) = info(2 * PIECE_SIZE);
    let size = info.len() as u32;
    let mut f = fetch_with(&info, hash, &[1], now);
    assert_eq!(f.poll_request(1, now), Some(0));
    f.handle_data(1, 0, size, piece_of(&info, 0), now).unwrap();
    f.peer_gone(1);
    f.peer_offers(2, size, now).unwrap();
    assert_eq!(f.poll_request(2, now), Some(1));
    assert_eq!(f.poll_request(2, now), None);
    f.handle_data(2, 1, size, piece_of(&info, 1), now).unwrap();
    assert_eq!(done(&events(&mut f)), Some(&info[..]));
}

#[test]
fn serving_answers_rejects_and_limits() {
    let now = Instant::now();
    let (info, hash) = info(40_000);
    let mut limit = ServeLimit::new();
    for piece in 0..3 {
        assert_eq!(
            answer_request(Some(&info), false, piece, &mut limit, now),
            MetadataMessage::Data {
                piece,
                total_size: 40_000,
                data: piece_of(&info, piece)
            }
        );
    }
    let reject = |piece| MetadataMessage::Reject { piece };
    assert_eq!(
        answer_request(Some(&info), false, 3, &mut limit, now),
        reject(3)
    );
    assert_eq!(
        answer_request(Some(&info), false, u32::MAX, &mut limit, now),
        reject(u32::MAX)
    );
    assert_eq!(
        answer_request(Some(&info), true, 0, &mut limit, now),
        reject(0)
    );
    assert_eq!(answer_request(None, false, 0, &mut limit, now), reject(0));
    assert_eq!(
        answer_request(Some(&[][..]), false, 0, &mut limit, now),
        reject(0)
    );
    // The allowance: 3 served so far.
    let mut served = 3;
    while let MetadataMessage::Data { .. } = answer_request(Some(&info), false, 1, &mut limit, now)
    {
        served += 1;
        assert!(served <= MAX_REQUESTS_PER_MINUTE);
    }
    assert_eq!(served, MAX_REQUESTS_PER_MINUTE);
    let t = now + Duration::from_secs(59);
    assert_eq!(
        answer_request(Some(&info), false, 1, &mut limit, t),
        reject(1)
    );
    let t = now + Duration::from_secs(60);
    assert!(matches!(
        answer_request(Some(&info), false, 1, &mut limit, t),
        MetadataMessage::Data { .. }
    ));
    // Our own server feeds our own fetch, through the codec.
    let mut f = fetch_with(&info, hash, &[1], now);
    let mut limit = ServeLimit::new();
    while let Some(piece) = f.poll_request(1, now) {
        let mut req = Vec::new();
        MetadataMessage::Request { piece }.encode(&mut req);
        let Ok(Some(MetadataMessage::Request { piece })) = MetadataMessage::parse(&req) else {
            panic!("request round trip");
        };
        let mut answer = Vec::new();
        answer_request(Some(&info), false, piece, &mut limit, now).encode(&mut answer);
        let Ok(Some(MetadataMessage::Data {
            piece,
            total_size,
            data,
        })) = MetadataMessage::parse(&answer)
        else {
            panic!("data round trip");
        };
        f.handle_data(1, piece, total_size, data, now).unwrap();
    }
    assert_eq!(done(&events(&mut f)), Some(&info[..]));
}

#[test]
fn silent_peers_are_dropped_while_the_others_finish() {
    let now = Instant::now();
    let (info, hash) = info(7 * PIECE_SIZE + 1);
    let mut f = fetch_with(&info, hash, &[1, 2, 3], now);
    let peers = [(1, Acts::Silent), (2, Acts::Honest), (3, Acts::Silent)];
    let ev = run(&mut f, &info, &peers, now);
    assert_eq!(done(&ev), Some(&info[..]));
    let mut d = drops(&ev);
    d.sort_by_key(|(k, _)| *k);
    assert_eq!(
        d,
        vec![
            (1, Misbehaviour::Unresponsive),
            (3, Misbehaviour::Unresponsive)
        ]
    );
}
