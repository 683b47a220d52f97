//! Bytes from a client, in two pieces, through the real server core (its
//! sessions, command table and turn): it must never panic, and what it
//! sends must be whole frames.
#![no_main]

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use tripcd::codec::{split_frame, PROTOCOL_MAX};
use tripcd::config::Config;
use tripcd::registry::{Registry, Settings};
use tripcd::server::Server;
use tripcd::service::Service;

thread_local! {
    // One service for the whole run; its state directory is on tmpfs
    // where one exists, so commits cost no real fsync.
    static SERVER: RefCell<(tempfile::TempDir, Server)> = RefCell::new({
        let dir = tempfile::tempdir_in("/dev/shm").or_else(|_| tempfile::tempdir()).unwrap();
        let reg = Registry::open(dir.path(), Settings::defaults("/downloads".into())).unwrap();
        (dir, Server::new(Service::new(reg), Config::default()))
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
    SERVER.with(|cell| {
        let (_, server) = &mut *cell.borrow_mut();
        server.service_mut().control.quit = false;
        let now = std::time::Instant::now();
        let id = server
            .connect(tripcd::front::FrontKind::Ipc, None, now)
            .expect("the IPC front is always served");
        let mut out = Vec::new();
        for piece in [&stream[..cut], &stream[cut..]] {
            server.receive(id, piece, now);
            loop {
                server.end_turn(now);
                if let Some(port) = server.poll_bind() {
                    server.bind_result(port, Ok(()), now);
                }
                out.extend_from_slice(server.output(id));
                let n = server.output(id).len();
                server.consume_output(id, n);
                // After `quit` nothing more runs (the reactor stops),
                // though complete input may still wait.
                if server.quit_requested() || !server.flushed(id).more_input {
                    break;
                }
                server.receive(id, &[], now);
            }
            if !server.wants_input(id) {
                break;
            }
        }
        server.disconnect(id);
        let mut rest = &out[..];
        while !rest.is_empty() {
            let r = split_frame(rest, PROTOCOL_MAX)
                .expect("our own frames are valid")
                .expect("and whole");
            rest = &rest[r.end..];
        }
    });
});
