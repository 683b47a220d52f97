//! Any bytes as bencode: what decodes re-encodes canonically, and the
//! canonical form decodes to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tripcd::codec::decode;

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = decode(data) {
        if let Ok(bytes) = v.to_bencode() {
            let back = decode(&bytes).expect("canonical output decodes");
            assert_eq!(back.to_bencode().unwrap(), bytes);
        }
    }
});
