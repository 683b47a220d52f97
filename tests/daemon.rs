//! The daemon's life over real sockets: start-up checks, persistence,
//! signals, quit, idle clients, isolation between clients.

mod common;

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};

use common::{Daemon, Raw};
use nix::sys::signal::Signal;
use tripcd::codec::Value;

fn get(d: &Daemon, key: &str) -> Value {
    d.client()
        .request(key, &Value::empty())
        .unwrap()
        .expect("data reply")
        .value
}

#[test]
fn a_second_daemon_on_the_same_state_directory_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let first = Daemon::start_in(dir.path(), &[]);
    let other_socket = dir.path().join("other.sock");
    let err = Daemon::try_start(dir.path(), &["--socket", other_socket.to_str().unwrap()])
        .err()
        .expect("second daemon must not start");
    assert!(
        err.contains(&format!(
            "another tripcd (pid {}) is using state directory",
            first.pid()
        )),
        "{err}"
    );
    // The first one is untouched.
    assert_eq!(get(&first, "get-port"), Value::Int(9090));
}

#[test]
fn a_stale_socket_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("socket");
    drop(UnixListener::bind(&socket).unwrap()); // leaves the file, nobody listening
    let mut d = Daemon::start_in(dir.path(), &[]);
    assert!(d.wait_for_log("removing stale socket").is_some());
    assert_eq!(get(&d, "get-pex"), Value::Int(1));
}

#[test]
fn a_live_socket_is_never_stolen() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let first = Daemon::start_in(a.path(), &[]);
    let err = Daemon::try_start(b.path(), &["--socket", first.socket.to_str().unwrap()])
        .err()
        .expect("must not steal");
    assert!(err.contains("another daemon is listening on"), "{err}");
    assert_eq!(get(&first, "get-port"), Value::Int(9090));
}

#[test]
fn a_socket_path_that_is_not_a_socket_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("precious");
    std::fs::write(&path, b"keep me").unwrap();
    let err = Daemon::try_start(dir.path(), &["--socket", path.to_str().unwrap()])
        .err()
        .expect("must refuse");
    assert!(err.contains("exists and is not a socket"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
}

#[test]
fn settings_survive_a_clean_restart() {
    let _ports = common::fixed_ports();
    let dir = tempfile::tempdir().unwrap();
    let mut d = Daemon::start_in(dir.path(), &[]);
    let mut c = d.client();
    for (key, value) in [
        ("port", Value::Int(51413)),
        ("automap", Value::Int(1)),
        ("autostart", Value::Int(0)),
        ("pex", Value::Int(0)),
        ("downlimit", Value::Int(100)),
        ("uplimit", Value::Int(20)),
        ("directory", Value::str("/srv/seeds")),
        ("encryption", Value::str("plaintext")),
    ] {
        assert_eq!(c.request(key, &value).unwrap(), None, "{key}");
    }
    d.signal(Signal::SIGTERM);
    assert!(d.wait().success());
    assert!(!d.socket.exists(), "socket removed at exit");
    let d = Daemon::start_in(dir.path(), &[]);
    assert_eq!(get(&d, "get-port"), Value::Int(51413));
    assert_eq!(get(&d, "get-automap"), Value::Int(1));
    assert_eq!(get(&d, "get-autostart"), Value::Int(0));
    assert_eq!(get(&d, "get-pex"), Value::Int(0));
    assert_eq!(get(&d, "get-downlimit"), Value::Int(100));
    assert_eq!(get(&d, "get-uplimit"), Value::Int(20));
    assert_eq!(get(&d, "get-directory"), Value::str("/srv/seeds"));
    // The spelling survives too, not only the mode.
    assert_eq!(get(&d, "get-encryption"), Value::str("plaintext"));
}

/// Protocol 1.06's `encryption` and 1.20's `tolerated` spelling: each is
/// echoed as sent, the last spelling wins, anything else is bad-format and
/// changes nothing, and the choice outlives the daemon.
#[test]
fn encryption_echoes_the_spelling_used_last_and_persists() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = Daemon::start_in(dir.path(), &[]);
    assert_eq!(get(&d, "get-encryption"), Value::str("preferred"));
    let mut c = d.client();
    for mode in ["required", "preferred", "plaintext", "tolerated"] {
        assert_eq!(c.request("encryption", &Value::str(mode)).unwrap(), None);
        let reply = c.call("get-encryption", &Value::empty()).unwrap();
        assert_eq!(reply.key, "encryption");
        assert_eq!(reply.value, Value::str(mode));
    }
    assert_eq!(get(&d, "get-encryption"), Value::str("tolerated"));
    assert_eq!(
        c.request("encryption", &Value::str("plaintext")).unwrap(),
        None
    );
    assert_eq!(get(&d, "get-encryption"), Value::str("plaintext"));
    for bad in [
        Value::str("none"),
        Value::str("Required"),
        Value::str(""),
        Value::Int(1),
        Value::List(vec![Value::str("required")]),
    ] {
        assert_eq!(
            c.call("encryption", &bad).unwrap().key,
            "bad-format",
            "{bad:?}"
        );
    }
    assert_eq!(get(&d, "get-encryption"), Value::str("plaintext"));
    let supported = c
        .call(
            "get-supported",
            &Value::List(vec![
                Value::str("encryption"),
                Value::str("get-encryption"),
                Value::str("verify"),
            ]),
        )
        .unwrap();
    assert_eq!(supported.key, "supported");
    assert_eq!(
        supported.value,
        Value::List(vec![
            Value::str("encryption"),
            Value::str("get-encryption"),
            Value::str("verify"),
        ])
    );
    assert_eq!(
        c.request("encryption", &Value::str("tolerated")).unwrap(),
        None
    );
    drop(c);
    d.signal(Signal::SIGTERM);
    assert!(d.wait().success());
    let d = Daemon::start_in(dir.path(), &[]);
    assert_eq!(get(&d, "get-encryption"), Value::str("tolerated"));
}

#[test]
fn an_acknowledged_setting_survives_kill_9() {
    let _ports = common::fixed_ports();
    let dir = tempfile::tempdir().unwrap();
    let mut d = Daemon::start_in(dir.path(), &[]);
    let mut c = d.client();
    assert_eq!(c.request("port", &Value::Int(6881)).unwrap(), None);
    d.kill9();
    let d = Daemon::start_in(dir.path(), &[]);
    assert_eq!(get(&d, "get-port"), Value::Int(6881));
}

#[test]
fn sigint_exits_cleanly_too() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = Daemon::start_in(dir.path(), &[]);
    let _idle = d.raw();
    d.signal(Signal::SIGINT);
    assert!(d.wait().success());
    assert!(!d.socket.exists());
}

#[test]
fn sighup_and_sigpipe_do_not_stop_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = Daemon::start_in(dir.path(), &[]);
    d.signal(Signal::SIGHUP);
    assert!(d.wait_for_log("SIGHUP").is_some());
    d.signal(Signal::SIGPIPE);
    // A client that vanishes with replies owed makes writes fail with EPIPE.
    let mut r = d.raw();
    r.handshake(2);
    let mut burst = Vec::new();
    for _ in 0..2000 {
        burst.extend_from_slice(b"00000011l8:get-port0:i1ee");
    }
    assert!(r.send(&burst));
    drop(r);
    assert_eq!(get(&d, "get-port"), Value::Int(9090));
}

#[test]
fn tagged_quit_answers_then_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = Daemon::start_in(dir.path(), &[]);
    let mut bystander = d.raw();
    bystander.handshake(2);
    assert_eq!(bystander.frames_before_probe(), Some(vec![]));
    let mut r = d.raw();
    r.handshake(2);
    assert!(r.send(b"0000000Dl4:quit0:i9ee"));
    assert_eq!(r.frames_until_closed(), vec!["00000012l9:succeeded0:i9ee"]);
    assert_eq!(bystander.frames_until_closed(), Vec::<String>::new());
    assert!(d.wait().success());
    assert!(!d.socket.exists());
}

#[test]
fn frames_sent_just_before_hanging_up_still_run() {
    let _ports = common::fixed_ports();
    // transmission-remote writes and may close at once.
    let dir = tempfile::tempdir().unwrap();
    let mut d = Daemon::start_in(dir.path(), &[]);
    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.write_all(&tripcd::client::version_frame(1, 1)).unwrap();
    s.write_all(b"0000000Ad4:quit0:e").unwrap();
    drop(s);
    assert!(d.wait().success());

    // Half-close: the replies still come back before the daemon closes.
    let d = Daemon::start_in(dir.path(), &[]);
    let mut r = d.raw();
    r.handshake(2);
    assert!(r.send(b"00000012l4:porti51413ei2ee00000011l8:get-port0:i3ee"));
    r.stream.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(
        r.frames_until_closed(),
        vec!["00000012l9:succeeded0:i2ee", "00000012l4:porti51413ei3ee"]
    );
}

#[test]
fn idle_clients_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = Daemon::start_in(dir.path(), &["--idle-timeout", "1"]);
    let mut r = d.raw();
    r.handshake(2);
    // Blocks until the daemon closes the connection.
    assert_eq!(r.frames_until_closed(), Vec::<String>::new());
    assert!(d.wait_for_log("idle for 1s, closing").is_some());
    assert_eq!(get(&d, "get-port"), Value::Int(9090));
}

#[test]
fn one_clients_protocol_error_never_disturbs_another() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = Daemon::start_in(dir.path(), &[]);
    let mut good = d.raw();
    good.handshake(2);
    // Half a frame, left pending while the other client misbehaves.
    assert!(good.send(b"00000012l4:porti5"));
    let mut bad = d.raw();
    bad.handshake(2);
    assert!(bad.send(b"0000000Fl4:noop0:i5eeXX"));
    assert_eq!(bad.frames_until_closed(), Vec::<String>::new());
    assert!(good.send(b"1413ei2ee"));
    assert_eq!(good.frame().unwrap(), "00000012l9:succeeded0:i2ee");
    let line = d.wait_for_log("protocol error").unwrap();
    assert!(
        line.contains("WARN") && line.contains("client 2:"),
        "{line}"
    );
}

#[test]
fn over_limit_frames_are_refused_from_the_header() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start_in(dir.path(), &["--max-message", "64"]);
    let mut r = d.raw();
    r.handshake(2);
    // 65 bytes announced: closed without sending the payload.
    assert!(r.send(b"00000041"));
    assert_eq!(r.frames_until_closed(), Vec::<String>::new());
    let mut ok = d.raw();
    ok.handshake(2);
    assert_eq!(ok.frames_before_probe(), Some(vec![]));
}

#[test]
fn many_clients_pipelining_get_every_reply_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start_in(dir.path(), &[]);
    let mut clients: Vec<Raw> = (0..200).map(|_| Raw::connect(&d.socket)).collect();
    for c in &mut clients {
        c.handshake(2);
        let mut burst = Vec::new();
        for tag in 1..=50 {
            burst.extend(tripcd::client::encode_message(
                "noop",
                &Value::empty(),
                Some(tag),
            ));
        }
        assert!(c.send(&burst));
    }
    for c in &mut clients {
        assert!(c.frame().unwrap().contains("7:version"));
        for tag in 1..=50 {
            let want = tripcd::client::encode_message("succeeded", &Value::empty(), Some(tag));
            assert_eq!(c.frame().unwrap().as_bytes(), want.as_slice());
        }
    }
}

#[test]
fn concurrent_setting_changes_are_all_acknowledged_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = Daemon::start_in(dir.path(), &[]);
    let mut clients: Vec<Raw> = (0..50).map(|_| d.raw()).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.handshake(2);
        let msg = tripcd::client::encode_message("uplimit", &Value::Int(i as i64), Some(7));
        assert!(c.send(&msg));
    }
    for c in &mut clients {
        assert_eq!(c.frame().unwrap(), "00000012l9:succeeded0:i7ee");
    }
    let last = get(&d, "get-uplimit");
    d.kill9();
    let d = Daemon::start_in(dir.path(), &[]);
    assert_eq!(get(&d, "get-uplimit"), last);
}
