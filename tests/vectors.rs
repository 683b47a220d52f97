//! Every vector of `tests/data/cases.jsonl`, through the sans-IO session
//! (the real server core: whole, one byte at a time, cut at every point) and over a real socket
//! against the real daemon binary (whole and one byte per write).

mod common;

use common::{assert_frames, cases, Case, Core, Daemon, Raw};
use tripcd::codec::{split_frame, PROTOCOL_MAX};

/// Runs a case through one client of the real server core, its bytes cut
/// into `pieces`. Returns frames, failed, quit.
fn run_sans_io(case: &Case, pieces: &[&[u8]]) -> (Vec<String>, bool, bool) {
    let mut core = Core::new();
    let mut out = Vec::new();
    if case.handshake > 0 {
        let hs = tripcd::client::version_frame(1, case.handshake);
        core.feed(&hs, &mut out);
    }
    for piece in pieces {
        if core.failed() || core.quit() {
            break; // the reactor closes the connection here
        }
        core.feed(piece, &mut out);
    }
    let mut frames = Vec::new();
    let mut rest = &out[..];
    while let Ok(Some(r)) = split_frame(rest, PROTOCOL_MAX) {
        frames.push(String::from_utf8_lossy(&rest[..r.end]).into_owned());
        rest = &rest[r.end..];
    }
    assert!(rest.is_empty(), "{}: partial frame in output", case.name);
    (frames, core.failed(), core.quit())
}

fn check_sans_io(case: &Case, pieces: &[&[u8]], how: &str) {
    let (frames, failed, quit) = run_sans_io(case, pieces);
    assert_frames(case, how, &frames);
    let after = match (failed, quit) {
        (true, _) => "closed",
        (false, true) => "daemon-exits",
        (false, false) => "open",
    };
    assert_eq!(after, case.after, "{} ({how})", case.name);
}

#[test]
fn sans_io_whole_and_one_byte_at_a_time() {
    let cases = cases();
    assert_eq!(cases.len(), 58, "every vector is here");
    for case in &cases {
        check_sans_io(case, &[&case.send], "whole");
        let bytes: Vec<&[u8]> = case.send.chunks(1).collect();
        check_sans_io(case, &bytes, "bytewise");
    }
}

#[test]
fn sans_io_at_every_split_point() {
    for case in &cases() {
        for cut in 0..=case.send.len() {
            let (a, b) = case.send.split_at(cut);
            check_sans_io(case, &[a, b], &format!("split at {cut}"));
        }
    }
}

/// Runs a case against a fresh daemon over its socket.
fn check_socket(case: &Case, bytewise: bool) {
    let how = if bytewise {
        "socket, bytewise"
    } else {
        "socket"
    };
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Daemon::start_in(dir.path(), &[]);
    let mut raw = Raw::connect(&daemon.socket);
    // Like transmission-remote: our version at once, then the server's.
    if case.handshake > 0 {
        raw.handshake(case.handshake);
    }
    let greeting = raw.frame().expect("greeting");
    assert_eq!(greeting.as_bytes(), tripcd::session::greeting());
    let mut open = true;
    if bytewise {
        for b in case.send.chunks(1) {
            if !raw.send(b) {
                open = false;
                break;
            }
        }
    } else {
        open = raw.send(&case.send);
    }
    match case.after.as_str() {
        "closed" => {
            let frames = raw.frames_until_closed();
            assert_frames(case, how, &frames);
        }
        "daemon-exits" => {
            let frames = raw.frames_until_closed();
            assert_frames(case, how, &frames);
            let status = daemon.wait();
            assert!(status.success(), "{} ({how}): exit {status:?}", case.name);
            assert!(!daemon.socket.exists(), "socket file removed at exit");
            return;
        }
        "open" => {
            assert!(open, "{} ({how}): closed while sending", case.name);
            // Cases that handshake themselves all settle on version 2.
            if case.handshake != 1 {
                let frames = raw
                    .frames_before_probe()
                    .unwrap_or_else(|| panic!("{} ({how}): connection closed", case.name));
                assert_frames(case, how, &frames);
            } else {
                // Version 1 has no replies to probe with: a bad header
                // makes the daemon close the connection once it has run
                // everything before it, and nothing may come back first.
                assert!(raw.send(b"ZZZZZZZZ"));
                let frames = raw.frames_until_closed();
                assert_frames(case, how, &frames);
            }
        }
        other => panic!("unknown after: {other}"),
    }
    // Whatever happened to that client, the daemon still serves others.
    let mut other = daemon.raw();
    other.handshake(2);
    assert_eq!(
        other.frames_before_probe(),
        Some(vec![]),
        "{} ({how})",
        case.name
    );
}

#[test]
fn every_vector_over_the_socket() {
    let _ports = common::fixed_ports();
    for case in &cases() {
        check_socket(case, false);
    }
}

#[test]
fn every_vector_over_the_socket_one_byte_per_write() {
    let _ports = common::fixed_ports();
    for case in &cases() {
        check_socket(case, true);
    }
}

#[test]
fn v1_port_is_really_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_in(dir.path(), &[]);
    let mut v1 = daemon.raw();
    v1.handshake(1);
    assert!(v1.send(b"0000000Ed4:porti9091ee"));
    assert!(v1.send(b"ZZZZZZZZ"));
    assert_eq!(v1.frames_until_closed(), Vec::<String>::new());
    let mut c = daemon.client();
    let port = c
        .request("get-port", &tripcd::codec::Value::empty())
        .unwrap();
    assert_eq!(port.unwrap().value, tripcd::codec::Value::Int(9090));
}
