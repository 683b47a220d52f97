//! Any text as a magnet link: parsed or refused with a reason, never a
//! panic; what parses stays within its bounds, and the link written back
//! reads as the same magnet.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tripcd::registry::magnet::{Magnet, MAX_PEERS, MAX_TRACKERS, MAX_URI_LEN};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(m) = Magnet::parse(&text) else {
        return;
    };
    assert!(m.trackers.len() <= MAX_TRACKERS);
    assert!(m.peers.len() <= MAX_PEERS);
    let uri = m.to_uri();
    // Escapes triple a value's length: a link near the bound may write
    // back longer than it.
    if uri.len() <= MAX_URI_LEN {
        assert_eq!(Magnet::parse(&uri).as_ref(), Ok(&m), "{uri}");
    }
});
