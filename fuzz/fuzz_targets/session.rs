//! Bytes from a client, in two pieces, through a session and the real
//! command table: it must never panic, and what it sends must be whole
//! frames.
#![no_main]

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use tripcd::codec::{split_frame, PROTOCOL_MAX};
use tripcd::commands::Service;
use tripcd::registry::{Registry, Settings};
use tripcd::session::{serve_alone, Session};

thread_local! {
    // One service for the whole run; its state directory is on tmpfs
    // where one exists, so commits cost no real fsync.
    static SERVICE: RefCell<(tempfile::TempDir, Service)> = RefCell::new({
        let dir = tempfile::tempdir_in("/dev/shm").or_else(|_| tempfile::tempdir()).unwrap();
        let reg = Registry::open(dir.path(), Settings::defaults("/downloads".into())).unwrap();
        (dir, Service::new(reg))
    });
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Some((&cut, body)) = rest.split_first() else {
        return;
    };
    let mut stream = match mode % 3 {
        0 => tripcd::client::version_frame(1, 2),
        1 => tripcd::client::version_frame(1, 1),
        _ => Vec::new(),
    };
    stream.extend_from_slice(body);
    let cut = (cut as usize).min(stream.len());
    SERVICE.with(|cell| {
        let (_, svc) = &mut *cell.borrow_mut();
        svc.control.quit = false;
        let mut s = Session::new(1, 1 << 20);
        let mut out = Vec::new();
        for piece in [&stream[..cut], &stream[cut..]] {
            if serve_alone(&mut s, svc, piece, &mut out).is_err() || svc.control.quit {
                break;
            }
        }
        let mut rest = &out[..];
        while !rest.is_empty() {
            let r = split_frame(rest, PROTOCOL_MAX)
                .expect("our own frames are valid")
                .expect("and whole");
            rest = &rest[r.end..];
        }
    });
});
