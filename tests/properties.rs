//! Property tests: canonical bencode survives a round trip both ways, and
//! however a valid stream is cut, the server core answers it the same.

use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
mod common;

use common::Core;
use tripcd::codec::{decode, split_frame, Value, PROTOCOL_MAX};

/// Canonical values: dict keys unique and sorted (a `BTreeMap` gives both).
fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        any::<i64>().prop_map(Value::Int),
        vec(any::<u8>(), 0..24).prop_map(Value::Bytes),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..8).prop_map(Value::List),
            btree_map(vec(any::<u8>(), 0..8), inner, 0..8)
                .prop_map(|m| { Value::Dict(m.into_iter().map(|(k, v)| (k.into(), v)).collect()) }),
        ]
    })
}

proptest! {
    #[test]
    fn canonical_values_round_trip(v in value()) {
        let bytes = v.to_bencode().unwrap();
        let back = decode(&bytes).unwrap();
        prop_assert_eq!(&back, &v);
        prop_assert_eq!(back.to_bencode().unwrap(), bytes);
    }

    #[test]
    fn anything_decoded_reencodes_to_a_canonical_form_that_is_stable(
        bytes in vec(any::<u8>(), 0..64)
    ) {
        if let Ok(v) = decode(&bytes) {
            let once = v.to_bencode();
            if let Ok(once) = once {
                let twice = decode(&once).unwrap().to_bencode().unwrap();
                prop_assert_eq!(once, twice);
            }
        }
    }
}

/// A message of a valid stream: key, value, tag.
fn message() -> impl Strategy<Value = (String, Value, Option<i64>)> {
    let key = prop_oneof![
        Just("noop"),
        Just("get-port"),
        Just("port"),
        Just("get-supported"),
        Just("get-info-all"),
        Just("lookup"),
        Just("no-such-key"),
        Just("pex"),
    ];
    (key, value(), proptest::option::of(any::<i64>())).prop_map(|(k, v, t)| (k.to_string(), v, t))
}

/// What the real server core answers to `stream` fed in the given pieces.
fn answers(stream: &[u8], cuts: &[usize]) -> (Vec<u8>, bool) {
    let mut core = Core::new();
    let mut out = Vec::new();
    let mut start = 0;
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
    points.sort_unstable();
    points.push(stream.len());
    for end in points {
        if end < start || core.failed() || core.quit() {
            continue;
        }
        core.feed(&stream[start..end], &mut out);
        start = end;
    }
    (out, core.failed())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn any_split_of_a_valid_stream_gets_the_same_replies(
        msgs in vec(message(), 1..12),
        cuts in vec(any::<usize>(), 0..16),
    ) {
        let mut stream = tripcd::client::version_frame(1, 2);
        for (k, v, t) in &msgs {
            stream.extend(tripcd::client::encode_message(k, v, *t));
        }
        let (whole, whole_failed) = answers(&stream, &[]);
        let (split, split_failed) = answers(&stream, &cuts);
        prop_assert_eq!(whole_failed, split_failed);
        prop_assert!(!whole_failed, "a valid stream is never a protocol error");
        prop_assert_eq!(&split, &whole);
        // And the replies are whole frames.
        let mut rest = &whole[..];
        while !rest.is_empty() {
            let r = split_frame(rest, PROTOCOL_MAX).unwrap().unwrap();
            rest = &rest[r.end..];
        }
    }
}
