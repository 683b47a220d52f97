//! Any bytes as a .torrent: parsed or refused with a reason, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tripcd::registry::Metainfo;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Metainfo::parse(data) {
        // What a parsed torrent promises: pieces cover the size exactly.
        let total: u64 = (0..m.geometry.pieces()).map(|i| m.geometry.piece_size(i)).sum();
        assert_eq!(m.pieces.len(), m.geometry.pieces() as usize);
        assert_eq!(total, m.total_size());
    }
});
