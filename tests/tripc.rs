//! `tripc` against the real daemon, for every flag.

mod common;

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{fixture, Daemon, HANG};
use nix::errno::Errno;
use nix::sys::socket::{AddressFamily, Backlog, SockFlag, SockType, UnixAddr};
use tripcd::codec::Value;

const HELLO: &str = "c67a91b952cb2ce1b3ff7effb92db48eceafedf8";
const MULTI: &str = "02585f0ad555131b783e82ac08f9c134cfb8f7b0";

fn tripc(d: &Daemon, cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tripc"))
        .arg("--socket")
        .arg(&d.socket)
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run tripc")
}

fn ok(d: &Daemon, cwd: &Path, args: &[&str]) -> String {
    let out = tripc(d, cwd, args);
    assert!(
        out.status.success(),
        "tripc {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn fails(d: &Daemon, cwd: &Path, args: &[&str]) -> String {
    let out = tripc(d, cwd, args);
    assert!(!out.status.success(), "tripc {args:?} should fail");
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "one-line reason: {err:?}");
    err
}

fn get(d: &Daemon, key: &str) -> Value {
    d.client()
        .request(key, &Value::empty())
        .unwrap()
        .unwrap()
        .value
}

fn list_json(d: &Daemon) -> serde_json::Value {
    serde_json::from_str(&ok(d, Path::new("/"), &["-l", "--json"])).unwrap()
}

/// Lists until no torrent is being checked (each call is a round trip).
fn settled(d: &Daemon) -> serde_json::Value {
    loop {
        let l = list_json(d);
        let busy = l.as_array().unwrap().iter().any(|t| {
            let s = t["state"].as_str().unwrap();
            s == "checking" || s == "waiting to checking"
        });
        if !busy {
            return l;
        }
    }
}

#[test]
fn add_with_relative_paths_then_list_and_info() {
    let state = tempfile::tempdir().unwrap();
    let d = Daemon::start_in(
        state.path(),
        &["--download-dir", fixture("data").to_str().unwrap()],
    );
    let fixtures = fixture("");
    let out = ok(
        &d,
        &fixtures,
        &["-a", "hello.torrent", "multi.torrent", "-i"],
    );
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("added ") && lines[0].contains("/hello.torrent as torrent 1"));
    assert!(lines[1].contains("/multi.torrent as torrent 2"));
    assert_eq!(
        lines[2].split_whitespace().collect::<Vec<_>>(),
        ["ID", "HASH", "NAME"]
    );
    assert_eq!(
        lines[3].split_whitespace().collect::<Vec<_>>(),
        ["1", HELLO, "hello.txt"]
    );
    assert_eq!(
        lines[4].split_whitespace().collect::<Vec<_>>(),
        ["2", MULTI, "multi"]
    );

    let l = settled(&d);
    assert_eq!(l[0]["name"], "hello.txt");
    assert_eq!(l[0]["state"], "seeding");
    assert_eq!(l[0]["progress"], 100.0);
    assert_eq!(l[1]["size"], 51600);

    let table = ok(&d, Path::new("/"), &["-l"]);
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0],
        ["ID", "NAME", "SIZE", "STATE", "DONE", "DOWN", "UP", "ETA"]
    );
    assert_eq!(
        rows[1],
        [
            "1",
            "hello.txt",
            "48.8",
            "KiB",
            "seeding",
            "100.0%",
            "0",
            "B/s",
            "0",
            "B/s",
            "-"
        ]
    );
    // Columns line up: every row has its state where the header has STATE.
    let col = table.lines().next().unwrap().find("STATE").unwrap();
    for line in table.lines().skip(1) {
        assert_eq!(&line[col..col + 7], "seeding", "{line}");
    }

    let info: serde_json::Value =
        serde_json::from_str(&ok(&d, Path::new("/"), &["-i", "--json"])).unwrap();
    assert_eq!(info[1]["hash"], MULTI);
}

#[test]
fn a_magnet_link_is_added_and_listed_while_its_metadata_is_fetched() {
    let state = tempfile::tempdir().unwrap();
    let d = Daemon::start_in(state.path(), &[]);
    let uri = format!("magnet:?xt=urn:btih:{HELLO}&dn=greeting");
    let out = ok(&d, Path::new("/"), &["-a", &uri, "-l"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "added the magnet link as torrent 1");
    let row: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(row[..3], ["1", "greeting", "0"]);
    assert!(
        row.contains(&"downloading") && row.contains(&"0.0%"),
        "{row:?}"
    );
    assert_eq!(lines[3], "    fetching metadata from 0 peers (0%)");
    let l = list_json(&d);
    assert_eq!(l[0]["metadata_percent"], 0);
    let err = fails(&d, Path::new("/"), &["-a", "magnet:?dn=nothing"]);
    assert!(err.contains("magnet"), "{err}");
}

#[test]
fn start_stop_remove_by_hash_in_any_case_and_all() {
    let state = tempfile::tempdir().unwrap();
    let d = Daemon::start_in(
        state.path(),
        &["--download-dir", fixture("data").to_str().unwrap()],
    );
    let f = fixture("");
    ok(&d, &f, &["-a", "hello.torrent", "-a", "multi.torrent"]);
    settled(&d);
    let out = ok(&d, &f, &["-S", &HELLO.to_uppercase()]);
    assert_eq!(out.trim(), format!("stop: torrent 1 ({HELLO})"));
    let l = settled(&d);
    assert_eq!(
        (l[0]["state"].as_str(), l[1]["state"].as_str()),
        (Some("paused"), Some("seeding"))
    );
    ok(&d, &f, &["--stop", "all"]);
    assert_eq!(settled(&d)[1]["state"], "paused");
    ok(&d, &f, &["-s", HELLO]);
    assert_eq!(settled(&d)[0]["state"], "seeding");
    ok(&d, &f, &["--start", "ALL"]);
    assert_eq!(settled(&d)[1]["state"], "seeding");
    ok(&d, &f, &["-r", MULTI]);
    assert_eq!(settled(&d).as_array().unwrap().len(), 1);
    ok(&d, &f, &["--remove", "all"]);
    assert_eq!(settled(&d).as_array().unwrap().len(), 0);
    assert!(fixture("data/multi/a.bin").exists(), "data kept");
    let err = fails(&d, &f, &["-s", HELLO]);
    assert!(err.contains("no torrent has info hash"), "{err}");
    let err = fails(&d, &f, &["-s", "nothex"]);
    assert!(err.contains("40-digit hex"), "{err}");
}

/// `-v/--verify`: data damaged after the first check is found again.
#[test]
fn verify_by_hash_and_all() {
    let state = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let copy = data.path().join("hello.txt");
    std::fs::copy(fixture("data/hello.txt"), &copy).unwrap();
    let d = Daemon::start_in(
        state.path(),
        &["--download-dir", data.path().to_str().unwrap()],
    );
    let f = fixture("");
    ok(&d, &f, &["-a", "hello.torrent"]);
    assert_eq!(settled(&d)[0]["state"], "seeding");
    let mut bytes = std::fs::read(&copy).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&copy, bytes).unwrap();
    let out = ok(&d, &f, &["-v", HELLO]);
    assert_eq!(out.trim(), format!("verify: torrent 1 ({HELLO})"));
    let l = settled(&d);
    assert_eq!(l[0]["state"], "downloading");
    assert_eq!(l[0]["completed"], 50_000 - 16_384);
    std::fs::copy(fixture("data/hello.txt"), &copy).unwrap();
    let out = ok(&d, &f, &["--verify", "all"]);
    assert_eq!(out.trim(), "verify: all torrents");
    assert_eq!(settled(&d)[0]["state"], "seeding");
}

#[test]
fn every_setting_flag_in_the_order_given() {
    let state = tempfile::tempdir().unwrap();
    let d = Daemon::start_in(state.path(), &[]);
    let cwd = state.path();
    // Later flags win: the original client reversed them, tripc does not.
    ok(
        &d,
        cwd,
        &[
            "-p", "1000", "-p", "2000", "-e", "-E", "-M", "-m", "-d", "5", "-D", "-U", "-u", "7",
        ],
    );
    assert_eq!(get(&d, "get-port"), Value::Int(2000));
    assert_eq!(get(&d, "get-pex"), Value::Int(0));
    assert_eq!(get(&d, "get-automap"), Value::Int(1));
    assert_eq!(get(&d, "get-downlimit"), Value::Int(-1));
    assert_eq!(get(&d, "get-uplimit"), Value::Int(7));
    ok(
        &d,
        cwd,
        &[
            "--port",
            "51413",
            "--enable-pex",
            "--no-port-mapping",
            "--download-limit",
            "100",
            "--upload-unlimited",
        ],
    );
    assert_eq!(get(&d, "get-port"), Value::Int(51413));
    assert_eq!(get(&d, "get-pex"), Value::Int(1));
    assert_eq!(get(&d, "get-automap"), Value::Int(0));
    assert_eq!(get(&d, "get-downlimit"), Value::Int(100));
    assert_eq!(get(&d, "get-uplimit"), Value::Int(-1));
    ok(
        &d,
        cwd,
        &[
            "--disable-pex",
            "--port-mapping",
            "--download-unlimited",
            "--upload-limit",
            "3",
        ],
    );
    assert_eq!(get(&d, "get-pex"), Value::Int(0));
    assert_eq!(get(&d, "get-automap"), Value::Int(1));
    assert_eq!(get(&d, "get-downlimit"), Value::Int(-1));
    assert_eq!(get(&d, "get-uplimit"), Value::Int(3));
    // A relative folder is made absolute.
    ok(&d, cwd, &["-f", "dl"]);
    assert_eq!(
        get(&d, "get-directory"),
        Value::str(cwd.join("dl").to_str().unwrap())
    );
    ok(&d, cwd, &["--folder", "/srv/seeds"]);
    assert_eq!(get(&d, "get-directory"), Value::str("/srv/seeds"));
    let err = fails(&d, cwd, &["-p", "70000"]);
    assert!(err.contains("70000"), "{err}");
}

/// `--encryption` sends the spelling given (1.20's `tolerated` too);
/// clap refuses any other before the daemon is asked.
#[test]
fn encryption_is_sent_as_spelled_and_bad_modes_are_refused() {
    let state = tempfile::tempdir().unwrap();
    let d = Daemon::start_in(state.path(), &[]);
    let cwd = state.path();
    assert_eq!(get(&d, "get-encryption"), Value::str("preferred"));
    let out = ok(&d, cwd, &["--encryption", "tolerated"]);
    assert_eq!(out.trim(), "encryption set to tolerated");
    assert_eq!(get(&d, "get-encryption"), Value::str("tolerated"));
    // In the order given, with the other settings flags.
    ok(
        &d,
        cwd,
        &[
            "--encryption",
            "required",
            "-p",
            "7000",
            "--encryption",
            "plaintext",
        ],
    );
    assert_eq!(get(&d, "get-encryption"), Value::str("plaintext"));
    assert_eq!(get(&d, "get-port"), Value::Int(7000));
    let j: serde_json::Value =
        serde_json::from_str(&ok(&d, cwd, &["--json", "--encryption", "preferred"])).unwrap();
    assert_eq!(
        j,
        serde_json::json!({"ok": true, "done": "encryption set to preferred"})
    );
    for bad in ["none", "Required", ""] {
        let out = tripc(&d, cwd, &["--encryption", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{err:?}");
        assert!(err.contains("--encryption"), "{err}");
    }
    assert_eq!(get(&d, "get-encryption"), Value::str("preferred"));
}

#[test]
fn call_sends_any_key_with_a_json_value() {
    let state = tempfile::tempdir().unwrap();
    let d = Daemon::start_in(state.path(), &[]);
    let cwd = state.path();
    assert_eq!(ok(&d, cwd, &["call", "get-port"]).trim(), "port 9090");
    assert_eq!(
        ok(
            &d,
            cwd,
            &["call", "get-supported", r#"["noop", "bogus", "lookup"]"#]
        )
        .trim(),
        r#"supported ["noop","lookup"]"#
    );
    let j: serde_json::Value =
        serde_json::from_str(&ok(&d, cwd, &["--json", "call", "uplimit", "12"])).unwrap();
    assert_eq!(j, serde_json::json!({"key": "succeeded", "value": ""}));
    let err = fails(&d, cwd, &["call", "bogus"]);
    assert!(err.contains("does not support \"bogus\""), "{err}");
    let err = fails(&d, cwd, &["call", "port", r#""x""#]);
    assert!(err.contains("malformed"), "{err}");
    let err = fails(&d, cwd, &["call", "directory", r#""rel""#]);
    assert!(
        err.contains("failed: directory must be an absolute path"),
        "{err}"
    );
    let err = fails(&d, cwd, &["call", "port", "{not json"]);
    assert!(err.contains("not JSON"), "{err}");
}

/// A refused `call` is said once, on stderr; stdout has nothing, or the
/// reply as JSON with `--json`.
#[test]
fn a_failed_call_is_reported_once() {
    let state = tempfile::tempdir().unwrap();
    let d = Daemon::start_in(state.path(), &[]);
    let cwd = state.path();
    for (args, key) in [
        (&["call", "directory", r#""rel""#][..], "failed"),
        (&["call", "port", r#""x""#], "bad-format"),
        (&["call", "bogus"], "not-supported"),
    ] {
        let out = tripc(&d, cwd, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "", "{args:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{err:?}");
        assert!(err.starts_with("tripc: "), "{err}");

        let json: Vec<&str> = [&["--json"][..], args].concat();
        let out = tripc(&d, cwd, &json);
        assert_eq!(out.status.code(), Some(1), "{json:?}");
        let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(reply["key"], key, "{json:?}");
        assert_eq!(String::from_utf8(out.stderr).unwrap().lines().count(), 1);
    }
    let out = tripc(&d, cwd, &["call", "directory", r#""rel""#]);
    assert_eq!(
        String::from_utf8(out.stderr).unwrap(),
        "tripc: failed: directory must be an absolute path, not \"rel\"\n"
    );
}

/// A torrent whose data folder cannot exist (its parent is a regular
/// file: an io error even for root) shows `error` as its state and the
/// daemon's code and message on a line under its row.
#[test]
fn list_shows_a_data_error() {
    let state = tempfile::tempdir().unwrap();
    let file = state.path().join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let dir = file.join("data");
    let d = Daemon::start_in(state.path(), &["--download-dir", dir.to_str().unwrap()]);
    ok(&d, &fixture(""), &["-a", "hello.torrent"]);
    let l = settled(&d);
    assert_eq!(l[0]["error"], "io-other", "{l}");
    let message = l[0]["error_message"].as_str().unwrap().to_string();
    assert!(message.contains("Not a directory"), "{message}");
    assert!(message.contains(dir.to_str().unwrap()), "{message}");

    let table = ok(&d, Path::new("/"), &["-l"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        row[..5],
        ["1", "hello.txt", "48.8", "KiB", "error"],
        "{table}"
    );
    let col = lines[0].find("STATE").unwrap();
    assert_eq!(&lines[1][col..col + 6], "error ", "{table}");
    assert_eq!(lines[2], format!("    io-other: {message}"));
}

/// Runs tripc against `socket` with a one-second timeout. A tripc still
/// running after `HANG` is killed and fails the test (a hang guard only:
/// no timing is asserted).
fn tripc_timing_out(socket: &Path, args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tripc"))
        .arg("--socket")
        .arg(socket)
        .args(["--timeout", "1"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tripc");
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > HANG {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tripc hung");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
    (out.status.code(), String::from_utf8(out.stderr).unwrap())
}

#[test]
fn a_server_that_accepts_and_never_speaks_times_out_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("socket");
    let listener = UnixListener::bind(&socket).unwrap();
    let held = std::thread::spawn(move || listener.accept().map(|(s, _)| s));
    let (code, err) = tripc_timing_out(&socket, &["-l"]);
    assert_eq!(code, Some(4), "{err}");
    assert_eq!(
        err,
        "tripc: timed out after 1 s waiting for the daemon's version handshake\n"
    );
    drop(held.join().unwrap());
}

#[test]
fn a_server_that_greets_and_never_answers_times_out_the_answer() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("socket");
    let listener = UnixListener::bind(&socket).unwrap();
    let held = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.write_all(&tripcd::client::version_frame(1, 2)).unwrap();
        s
    });
    let (code, err) = tripc_timing_out(&socket, &["-l"]);
    assert_eq!(code, Some(5), "{err}");
    assert_eq!(
        err,
        "tripc: timed out after 1 s waiting for the answer to get-info-all\n"
    );
    drop(held.join().unwrap());
}

/// A listener with a backlog of 0 that never accepts, filled until the
/// kernel turns connections away: a blocking connect would wait forever.
#[test]
fn a_listener_with_a_full_backlog_times_out_the_connect() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("socket");
    let addr = UnixAddr::new(&socket).unwrap();
    let new_socket = |flags| -> OwnedFd {
        nix::sys::socket::socket(AddressFamily::Unix, SockType::Stream, flags, None).unwrap()
    };
    let listener = new_socket(SockFlag::SOCK_CLOEXEC);
    nix::sys::socket::bind(listener.as_raw_fd(), &addr).unwrap();
    nix::sys::socket::listen(&listener, Backlog::new(0).unwrap()).unwrap();
    let mut fillers = Vec::new();
    loop {
        assert!(fillers.len() < 1000, "the backlog never filled");
        let s = new_socket(SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK);
        match nix::sys::socket::connect(s.as_raw_fd(), &addr) {
            Ok(()) => fillers.push(s),
            Err(Errno::EAGAIN) => break,
            Err(e) => panic!("filling the backlog: {e}"),
        }
    }
    let (code, err) = tripc_timing_out(&socket, &["-l"]);
    assert_eq!(code, Some(3), "{err}");
    assert_eq!(
        err,
        format!(
            "tripc: timed out after 1 s connecting to {}\n",
            socket.display()
        )
    );
}

#[test]
fn a_zero_timeout_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_tripc"))
        .args(["--timeout", "0", "-l"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err:?}");
    assert!(err.contains("--timeout"), "{err}");
}

#[test]
fn quit_stops_the_daemon_and_errors_are_one_line() {
    let state = tempfile::tempdir().unwrap();
    let mut d = Daemon::start_in(state.path(), &[]);
    let cwd = state.path();
    assert_eq!(ok(&d, cwd, &["-q"]).trim(), "daemon told to quit");
    assert!(d.wait().success());
    let err = fails(&d, cwd, &["-l"]);
    assert!(err.contains("is tripcd running? socket:"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_tripc")).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "nothing to do");
}

#[test]
fn completions_for_every_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(env!("CARGO_BIN_EXE_tripc"))
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains("download-limit"), "{shell}");
    }
    let help = Command::new(env!("CARGO_BIN_EXE_tripc"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    assert!(help.contains("Examples:"));
    assert!(help.contains("Exit status:"));
    assert!(!help.contains(" man "), "the man subcommand is hidden");
}

/// `tripc man`: the man page in roff, from the clap definitions.
#[test]
fn man_page() {
    let out = Command::new(env!("CARGO_BIN_EXE_tripc"))
        .arg("man")
        .output()
        .unwrap();
    assert!(out.status.success());
    let page = String::from_utf8(out.stdout).unwrap();
    // clap_mangen defines the apostrophe string `Aq` before the title.
    let title = page
        .lines()
        .find(|l| !l.starts_with(".ie ") && !l.starts_with(".el "))
        .unwrap();
    assert!(title.starts_with(".TH tripc 1 "), "{title}");
    assert!(page.contains(r"\fB\-\-timeout\fR"), "{page}");
    assert!(page.contains(".SH OPTIONS"));
}
