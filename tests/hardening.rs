//! Who may connect, bounded resources, and faults, through the real
//! daemon.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use common::{Daemon, Raw};
use tripcd::client::Client;
use tripcd::codec::Value;

/// The `i`-th of a population of distinct torrents: one 16 KiB file whose
/// piece hash makes the info hash distinct. No data exists for it.
fn synthetic_torrent(i: u64) -> Vec<u8> {
    use sha1::{Digest, Sha1};
    let info = Value::dict([
        ("length", Value::Int(16384)),
        ("name", Value::str(&format!("synthetic-{i:06}.bin"))),
        ("piece length", Value::Int(16384)),
        (
            "pieces",
            Value::Bytes(Sha1::digest(i.to_be_bytes()).to_vec()),
        ),
    ]);
    let meta = Value::dict([
        (
            "announce",
            Value::str("http://tracker.invalid:6969/announce"),
        ),
        ("info", info),
    ]);
    meta.to_bencode().unwrap()
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn noop_works(d: &Daemon) {
    let mut c = d.client();
    assert_eq!(c.call("noop", &Value::empty()).unwrap().key, "succeeded");
}

#[test]
fn the_socket_is_private_by_default_and_takes_the_mode_and_group_asked() {
    let state = tempfile::tempdir().unwrap();
    let d = Daemon::start_in(state.path(), &[]);
    let meta = std::fs::metadata(&d.socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    drop(d);

    let gid = nix::unistd::getgid().as_raw();
    let group = if is_root() { 65534 } else { gid };
    let d = Daemon::start_in(
        state.path(),
        &["--socket-mode", "660", "--socket-group", &group.to_string()],
    );
    let meta = std::fs::metadata(&d.socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), group);
    drop(d);

    let err = Daemon::try_start(state.path(), &["--socket-group", "no-such-group-here"])
        .err()
        .expect("refused");
    assert!(err.contains("no such group: no-such-group-here"), "{err}");
}

/// Runs `tripc -l` as uid/gid 65534 against `socket`, from a copy of the
/// binary in `open` (the checkout itself may be closed to other users).
fn tripc_as_nobody(open: &Path, socket: &Path) -> std::process::Output {
    use std::os::unix::process::CommandExt;
    let tripc = open.join("tripc");
    if !tripc.exists() {
        std::fs::copy(env!("CARGO_BIN_EXE_tripc"), &tripc).unwrap();
        std::fs::set_permissions(&tripc, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    Command::new(&tripc)
        .args(["--timeout", "30", "--socket"])
        .arg(socket)
        .arg("-l")
        .uid(65534)
        .gid(65534)
        .output()
        .expect("run tripc")
}

#[test]
fn another_users_client_is_refused_before_the_handshake_unless_allowed() {
    if !is_root() {
        eprintln!("skipped: acting as another user needs root");
        return;
    }
    // A socket others can reach: only the credentials check stands.
    let state = tempfile::tempdir().unwrap();
    let open = tempfile::tempdir().unwrap();
    std::fs::set_permissions(open.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = open.path().join("socket");
    let s = socket.to_str().unwrap();

    let mut d = Daemon::start_in(state.path(), &["--socket", s, "--socket-mode", "666"]);
    let out = tripc_as_nobody(open.path(), &socket);
    assert!(!out.status.success(), "{out:?}");
    let line = d.wait_for_log("refused a client: uid 65534").unwrap();
    assert!(line.contains("gid 65534 pid "), "{line}");
    noop_works(&d);
    drop(d);

    for allow in [["--allow-uid", "65534"], ["--allow-gid", "65534"]] {
        let mut args = vec!["--socket", s, "--socket-mode", "666"];
        args.extend(allow);
        let d = Daemon::start_in(state.path(), &args);
        let out = tripc_as_nobody(open.path(), &socket);
        assert!(
            out.status.success(),
            "{allow:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!d.logged("refused a client"));
    }
}

#[test]
fn past_max_clients_new_connections_are_closed_at_once() {
    let state = tempfile::tempdir().unwrap();
    let mut d = Daemon::start_in(state.path(), &["--max-clients", "2"]);
    let mut one = d.client();
    let two = d.client();
    // The third is accepted and closed: not even a greeting.
    let mut third = Raw::connect(&d.socket);
    assert_eq!(third.frame(), None);
    d.wait_for_log("refused a client: 2 clients connected")
        .unwrap();
    assert_eq!(one.call("noop", &Value::empty()).unwrap().key, "succeeded");

    // Room again once one leaves (its going is seen in a later turn).
    drop(two);
    let mut refused = 0;
    let mut again = loop {
        let mut r = Raw::connect(&d.socket);
        match r.frame() {
            Some(_) => break r,
            None => refused += 1,
        }
    };
    again.handshake(2);
    assert_eq!(again.frames_before_probe().map(|f| f.len()), Some(0));
    eprintln!("{refused} attempts refused before the slot was free");
}

#[test]
fn a_client_that_never_sends_its_version_is_closed() {
    let state = tempfile::tempdir().unwrap();
    let mut d = Daemon::start_in(state.path(), &["--handshake-timeout", "1"]);
    let mut ok = d.client();
    let mut silent = d.raw(); // has the greeting, sends nothing
    assert_eq!(silent.frame(), None, "closed by the daemon");
    d.wait_for_log("no version after 1000 ms, closing").unwrap();
    // A client that did its handshake is not touched.
    assert_eq!(ok.call("noop", &Value::empty()).unwrap().key, "succeeded");
}

#[test]
fn a_client_that_reads_nothing_is_disconnected_past_max_output() {
    let state = tempfile::tempdir().unwrap();
    let mut d = Daemon::start_in(state.path(), &["--max-output", "100000"]);
    // get-supported echoes each supported key asked: 300,000 "noop"s ask
    // for a 1.8 MB reply, far past the limit and the socket's buffer.
    let keys = Value::List(vec![Value::str("noop"); 300_000]);
    let mut greedy = Raw::connect(&d.socket);
    greedy.frame().unwrap();
    greedy.handshake(2);
    assert!(greedy.send(&tripcd::client::encode_message(
        "get-supported",
        &keys,
        Some(1)
    )));
    let line = d
        .wait_for_log("over --max-output 100000: disconnecting")
        .unwrap();
    assert!(line.contains("bytes of replies unread"), "{line}");
    noop_works(&d);

    // The default limit lets the same reply through to a client that reads.
    let state = tempfile::tempdir().unwrap();
    let d = Daemon::start_in(state.path(), &[]);
    let mut c = d.client();
    let r = c.call("get-supported", &keys).unwrap();
    assert_eq!(r.value.as_list().map(<[Value]>::len), Some(300_000));
}

#[test]
fn a_flood_from_one_client_does_not_starve_another() {
    // One client writes 2 MB of pipelined requests in one go and reads
    // nothing until another client has had its answer. That answer comes
    // (the flood is read a budget at a time, and reading stops while its
    // replies wait), and then the flood gets every one of its replies.
    let state = tempfile::tempdir().unwrap();
    let d = Daemon::start_in(state.path(), &[]);
    let n = 90_000;
    let mut flood = Vec::new();
    for tag in 1..=n {
        flood.extend(tripcd::client::encode_message(
            "noop",
            &Value::empty(),
            Some(tag),
        ));
    }
    let mut a = Raw::connect(&d.socket);
    a.frame().unwrap();
    a.handshake(2);
    let mut writer = a.stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        use std::io::Write;
        writer.write_all(&flood).unwrap();
    });
    noop_works(&d);
    let mut last = 0;
    for _ in 0..n + 1 {
        let f = a.frame().unwrap();
        if f.contains("7:version") {
            continue;
        }
        last += 1;
        let tag = format!("i{last}ee");
        assert!(f.ends_with(&tag), "{f} out of order, wanted {tag}");
        if last == n {
            break;
        }
    }
    sender.join().unwrap();
    assert_eq!(last, n);
}

#[test]
fn kill_9_in_a_burst_of_acknowledged_adds_loses_none() {
    let state = tempfile::tempdir().unwrap();
    let mut d = Daemon::start_in(state.path(), &[]);
    let mut c = d.client();
    // 400 adds pipelined; the daemon is killed as soon as 150 are
    // acknowledged, with the rest in flight.
    let n = 400;
    let mut burst = Vec::new();
    for i in 0..n {
        let v = Value::dict([
            ("autostart", Value::Int(0)),
            ("data", Value::Bytes(synthetic_torrent(i))),
        ]);
        burst.extend(tripcd::client::encode_message(
            "addfile-detailed",
            &v,
            Some(i as i64 + 1),
        ));
    }
    use std::io::Write;
    c.stream().write_all(&burst).unwrap();
    let mut reader = tripcd::client::FrameReader::new();
    let mut acked = Vec::new();
    while acked.len() < 150 {
        let p = reader.read_payload(c.stream()).unwrap();
        let m = tripcd::client::parse_message(&p).unwrap();
        assert_eq!(m.key, "info", "{m:?}");
        acked.push(m.tag.unwrap() as u64 - 1);
    }
    d.kill9();

    let d = Daemon::start_in(state.path(), &[]);
    let mut c = d.client();
    let hashes: Vec<Value> = acked
        .iter()
        .map(|&i| {
            let m = tripcd::registry::Metainfo::parse(&synthetic_torrent(i)).unwrap();
            Value::str(&m.hash_hex())
        })
        .collect();
    let found = c.call("lookup", &Value::List(hashes)).unwrap();
    assert_eq!(
        found.value.as_list().unwrap().len(),
        acked.len(),
        "every acknowledged add is there after kill -9"
    );
}

#[test]
fn a_failed_write_answers_failed_and_the_daemon_keeps_serving() {
    let _ports = common::fixed_ports();
    let state = tempfile::tempdir().unwrap();
    let d = Daemon::start_in(state.path(), &[]);
    let mut c = d.client();
    assert_eq!(c.call("port", &Value::Int(6000)).unwrap().key, "succeeded");
    // The settings file's temporary name taken by a directory: the next
    // save cannot be written, as on a full or read-only disk.
    let blocker = state.path().join(".settings.benc.tmp");
    std::fs::create_dir(&blocker).unwrap();
    let r = c.call("port", &Value::Int(7000)).unwrap();
    assert_eq!(r.key, "failed");
    assert!(
        r.value.as_str().unwrap().contains("cannot save state"),
        "{r:?}"
    );
    // Nothing changed, and everyone is still served.
    let port = c.call("get-port", &Value::empty()).unwrap();
    assert_eq!(port.value, Value::Int(6000));
    noop_works(&d);
    std::fs::remove_dir(&blocker).unwrap();
    assert_eq!(c.call("port", &Value::Int(7000)).unwrap().key, "succeeded");
}

#[test]
fn a_corrupt_state_file_is_set_aside_with_a_clear_log_line() {
    let _ports = common::fixed_ports();
    let state = tempfile::tempdir().unwrap();
    let d = Daemon::start_in(state.path(), &[]);
    let mut c: Client = d.client();
    c.call("port", &Value::Int(6001)).unwrap();
    drop(c);
    drop(d);
    let settings = state.path().join("settings.benc");
    let bytes = std::fs::read(&settings).unwrap();
    std::fs::write(&settings, &bytes[..bytes.len() / 2]).unwrap();

    let mut d = Daemon::start_in(state.path(), &[]);
    let line = d.wait_for_log("is corrupt").unwrap();
    assert!(
        line.contains("settings.benc") && line.contains("kept as"),
        "{line}"
    );
    let aside: Vec<String> = std::fs::read_dir(state.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("settings.benc.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1);
    let kept = std::fs::read(state.path().join(&aside[0])).unwrap();
    assert_eq!(kept, &bytes[..bytes.len() / 2], "kept as it was");
    noop_works(&d);
}

/// A small tmpfs, unmounted on drop; `None` where mounting is not allowed.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(SmallDisk { dir })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

#[test]
fn a_full_disk_answers_failed_and_the_daemon_keeps_serving() {
    let _ports = common::fixed_ports();
    let Some(disk) = SmallDisk::mount("1m") else {
        eprintln!("skipped: cannot mount a tmpfs here (the simulated failure test still runs)");
        return;
    };
    let state = disk.dir.path().join("state");
    let d = Daemon::start_in(&state, &[]);
    let mut c = d.client();
    assert_eq!(c.call("port", &Value::Int(6000)).unwrap().key, "succeeded");

    // Full: a filler takes every block left.
    let filler = disk.dir.path().join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 4096];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }
    let r = c.call("port", &Value::Int(7000)).unwrap();
    assert_eq!(r.key, "failed", "{r:?}");
    assert!(
        r.value
            .as_str()
            .unwrap()
            .contains("No space left on device"),
        "{r:?}"
    );
    assert_eq!(
        c.call("get-port", &Value::empty()).unwrap().value,
        Value::Int(6000)
    );
    noop_works(&d);
    std::fs::remove_file(&filler).unwrap();
    assert_eq!(c.call("port", &Value::Int(7000)).unwrap().key, "succeeded");

    // The daemon goes before the disk is unmounted.
    drop(c);
    drop(d);
}
