//! Rhai scripts through the real daemon: custom keys, replies, the host
//! API, hooks, every sandbox limit, and reloading on SIGHUP.

mod common;

use std::path::{Path, PathBuf};

use common::{fixture, Daemon};
use nix::sys::signal::Signal;
use tripcd::client::{Client, Message};
use tripcd::codec::Value;

fn s(v: &str) -> Value {
    Value::str(v)
}

fn list(items: &[&str]) -> Value {
    Value::List(items.iter().map(|i| s(i)).collect())
}

/// A state directory with a scripts directory holding `scripts`.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new(scripts: &[(&str, &str)]) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("scripts")).unwrap();
        let me = Setup { dir };
        for (name, text) in scripts {
            me.write(name, text);
        }
        me
    }

    fn scripts(&self) -> PathBuf {
        self.dir.path().join("scripts")
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.scripts().join(name), text).unwrap();
    }

    fn start(&self, args: &[&str]) -> Daemon {
        Daemon::start_in(self.dir.path(), &untimed(args))
    }

    fn try_start(&self, args: &[&str]) -> Result<Daemon, String> {
        Daemon::try_start(self.dir.path(), &untimed(args))
    }
}

/// `args` with a wall-clock guard no test can reach (unless the test sets
/// its own): tests must not depend on the speed of the machine.
fn untimed<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut v = args.to_vec();
    if !v.contains(&"--script-timeout-ms") {
        v.extend(["--script-timeout-ms", "60000"]);
    }
    v
}

/// A whole frame around `payload`.
fn frame(payload: &str) -> Vec<u8> {
    let mut out = Vec::new();
    tripcd::codec::write_frame(&mut out, payload.as_bytes());
    out
}

fn call(c: &mut Client, key: &str, value: Value) -> Message {
    c.call(key, &value).unwrap()
}

fn failed_reason(m: &Message) -> String {
    assert_eq!(m.key, "failed", "{m:?}");
    m.value.as_str().unwrap().to_string()
}

/// Another client is answered: the daemon is still serving.
fn still_serving(d: &Daemon) {
    let mut other = d.client();
    assert_eq!(call(&mut other, "noop", Value::empty()).key, "succeeded");
}

fn repo_scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts")
}

#[test]
fn the_example_scripts_work() {
    let state = tempfile::tempdir().unwrap();
    let dir = repo_scripts();
    let mut d = Daemon::start_in(
        state.path(),
        &untimed(&["--scripts", dir.to_str().unwrap()]),
    );
    let mut c = d.client();

    let supported = call(
        &mut c,
        "get-supported",
        list(&[
            "get-uptime",
            "get-stats",
            "get-verifications",
            "noop",
            "nope",
        ]),
    );
    assert_eq!(
        supported.value,
        list(&["get-uptime", "get-stats", "get-verifications", "noop"])
    );

    let up = call(&mut c, "get-uptime", Value::empty());
    assert_eq!(up.key, "uptime");
    assert!(up.value.as_int().is_some_and(|n| n >= 0), "{up:?}");

    // Two torrents whose data is all there: both verify complete, and the
    // hook logs each and keeps them.
    let data = fixture("data");
    call(&mut c, "directory", s(data.to_str().unwrap()));
    for name in ["hello.torrent", "multi.torrent"] {
        let f = fixture(name);
        assert_eq!(
            call(&mut c, "addfiles", list(&[f.to_str().unwrap()])).key,
            "info"
        );
    }
    d.wait_for_log("script verified.rhai: torrent 1 verified: complete")
        .unwrap();
    d.wait_for_log("script verified.rhai: torrent 2 verified: complete")
        .unwrap();

    let stats = call(&mut c, "get-stats", Value::empty());
    assert_eq!(stats.key, "stats");
    let seeding = Value::dict([
        ("count", Value::Int(2)),
        ("size", Value::Int(50_000 + 51_600)),
        ("state", s("seeding")),
    ]);
    let all = Value::dict([
        ("count", Value::Int(2)),
        ("size", Value::Int(101_600)),
        ("state", s("all")),
    ]);
    assert_eq!(
        stats.value.to_bencode().unwrap(),
        Value::List(vec![seeding, all]).to_bencode().unwrap()
    );

    let v = call(&mut c, "get-verifications", Value::empty());
    assert_eq!(v.key, "verifications");
    let ids: Vec<i64> = v
        .value
        .as_list()
        .unwrap()
        .iter()
        .map(|e| e.get("id").and_then(Value::as_int).unwrap())
        .collect();
    assert_eq!(ids, [1, 2]);
}

const REPLIES: &str = r#"
on_message("t-done", |v| ());
on_message("t-succeeded", |v| succeeded());
on_message("t-failed", |v| failed("not today"));
on_message("t-throw", |v| throw "boom");
on_message("t-error", |v| 1 / 0);
on_message("t-bad", |v| bad_format());
on_message("t-echo", |v| v);
on_message("t-reply", |v| reply("answer", [1, "two", #{ three: 3 }, blob(2, 255)]));
on_message("t-float", |v| 1.5);
on_message("t-count", |v| { this.n = (this.n ?? 0) + 1; this.n });
"#;

#[test]
fn script_keys_follow_the_reply_rules() {
    let setup = Setup::new(&[("replies.rhai", REPLIES)]);
    let mut d = setup.start(&[]);
    let mut c = d.client();

    assert_eq!(call(&mut c, "t-done", Value::empty()).key, "succeeded");
    assert_eq!(call(&mut c, "t-succeeded", Value::empty()).key, "succeeded");
    assert_eq!(
        failed_reason(&call(&mut c, "t-failed", Value::empty())),
        "not today"
    );
    assert_eq!(
        failed_reason(&call(&mut c, "t-throw", Value::empty())),
        "boom"
    );
    assert!(failed_reason(&call(&mut c, "t-error", Value::empty())).contains("Division by zero"));
    assert_eq!(call(&mut c, "t-bad", Value::empty()).key, "bad-format");
    assert!(failed_reason(&call(&mut c, "t-float", Value::empty())).contains("f64"));

    // Every bencode type goes to Rhai and back unchanged.
    let v = Value::dict([
        ("bytes", Value::Bytes(vec![0, 0xff, 7])),
        ("int", Value::Int(-42)),
        ("list", Value::List(vec![Value::Int(1), s("x")])),
        ("map", Value::dict([("k", s("v"))])),
        ("text", s("héllo")),
    ]);
    let echo = call(&mut c, "t-echo", v.clone());
    assert_eq!(echo.key, "t-echo");
    assert_eq!(echo.value.to_bencode().unwrap(), v.to_bencode().unwrap());

    let r = call(&mut c, "t-reply", Value::empty());
    assert_eq!(r.key, "answer");
    assert_eq!(
        r.value.to_bencode().unwrap(),
        b"li1e3:twod5:threei3ee2:\xff\xffe"
    );

    // State lives between calls.
    assert_eq!(call(&mut c, "t-count", Value::empty()).value, Value::Int(1));
    assert_eq!(call(&mut c, "t-count", Value::empty()).value, Value::Int(2));

    // Untagged: succeeded and failed are not sent (the failure is logged),
    // data is.
    let mut raw = d.raw();
    raw.handshake(2);
    for key in ["t-done", "t-failed", "t-count"] {
        assert!(raw.send(&frame(&format!("l{}:{key}0:e", key.len()))));
    }
    assert_eq!(
        raw.frames_before_probe().unwrap(),
        [String::from_utf8(frame("l7:t-counti3ee")).unwrap()]
    );
    d.wait_for_log("not today").unwrap();
}

#[test]
fn a_script_may_not_shadow_a_built_in_or_another_script() {
    let setup = Setup::new(&[("mine.rhai", r#"on_message("noop", |v| 1);"#)]);
    let err = setup.try_start(&[]).err().expect("refused");
    assert!(
        err.contains("mine.rhai") && err.contains("\"noop\" is a built-in key"),
        "{err}"
    );

    let setup = Setup::new(&[
        ("a.rhai", r#"on_message("x-key", |v| 1);"#),
        ("b.rhai", r#"on_message("x-key", |v| 2);"#),
    ]);
    let err = setup.try_start(&[]).err().expect("refused");
    assert!(
        err.contains("b.rhai") && err.contains("already handled by a.rhai"),
        "{err}"
    );

    let setup = Setup::new(&[(
        "twice.rhai",
        "on_message(\"y\", |v| 1);\non_message(\"y\", |v| 2);\n",
    )]);
    let err = setup.try_start(&[]).err().expect("refused");
    assert!(err.contains("already handled by twice.rhai"), "{err}");
}

#[test]
fn a_script_that_does_not_compile_stops_the_start_with_file_and_line() {
    let setup = Setup::new(&[("bad.rhai", "// fine\nlet x = 1;\nlet = ;\n")]);
    let err = setup.try_start(&[]).err().expect("refused");
    assert!(err.contains("bad.rhai:3:"), "{err}");

    // eval is not there to call.
    let setup = Setup::new(&[("ev.rhai", "on_message(\"e\", |v| eval(\"1\"));\n")]);
    let err = setup.try_start(&[]).err().expect("refused");
    assert!(err.contains("ev.rhai:1:") && err.contains("eval"), "{err}");

    // An unknown event is a mistake worth stopping for, too.
    let setup = Setup::new(&[("hook.rhai", "on_event(\"torrent-eaten\", |e| 1);\n")]);
    let err = setup.try_start(&[]).err().expect("refused");
    assert!(err.contains("unknown event \"torrent-eaten\""), "{err}");

    // An explicit scripts directory must exist.
    let state = tempfile::tempdir().unwrap();
    let missing = state.path().join("nowhere");
    let err = Daemon::try_start(state.path(), &["--scripts", missing.to_str().unwrap()])
        .err()
        .expect("refused");
    assert!(err.contains("does not exist"), "{err}");
}

#[test]
fn the_host_api_reads_settings_and_torrents_and_acts_on_them() {
    let setup = Setup::new(&[(
        "host.rhai",
        r#"
        on_message("h-port", |v| settings().port);
        on_message("h-now", |v| now());
        on_message("h-names", |v| torrents().map(|t| t.name));
        on_message("h-one", |v| torrent(v));
        on_message("h-stop", |v| stop(v));
        on_message("h-start", |v| start(v));
        on_message("h-log", |v| log(`hello ${v}`));
        "#,
    )]);
    let mut d = setup.start(&[]);
    let mut c = d.client();
    assert_eq!(call(&mut c, "port", Value::Int(5000)).key, "succeeded");
    assert_eq!(
        call(&mut c, "h-port", Value::empty()).value,
        Value::Int(5000)
    );
    assert!(
        call(&mut c, "h-now", Value::empty())
            .value
            .as_int()
            .unwrap()
            > 1_700_000_000
    );

    let data = fixture("data");
    call(&mut c, "directory", s(data.to_str().unwrap()));
    let hello = fixture("hello.torrent");
    let add = Value::dict([
        ("autostart", Value::Int(0)),
        ("file", s(hello.to_str().unwrap())),
    ]);
    assert_eq!(call(&mut c, "addfile-detailed", add).key, "info");
    assert_eq!(
        call(&mut c, "h-names", Value::empty()).value,
        list(&["hello.txt"])
    );
    let one = call(&mut c, "h-one", Value::Int(1)).value;
    assert_eq!(
        one.get("hash"),
        Some(&s("c67a91b952cb2ce1b3ff7effb92db48eceafedf8"))
    );
    assert_eq!(one.get("state"), Some(&s("paused")));
    assert_eq!(one.get("size"), Some(&Value::Int(50_000)));
    assert_eq!(call(&mut c, "h-one", Value::Int(9)).value, Value::empty());

    // start() through a script starts it for real (and durably).
    assert_eq!(call(&mut c, "h-start", Value::Int(1)).value, Value::Int(1));
    assert_eq!(call(&mut c, "h-start", Value::Int(9)).value, Value::Int(0));
    let running = Value::dict([
        ("id", Value::List(vec![Value::Int(1)])),
        ("type", list(&["running"])),
    ]);
    let st = call(&mut c, "get-status", running.clone()).value;
    assert_eq!(
        st.as_list().unwrap()[0].get("running"),
        Some(&Value::Int(1))
    );
    assert_eq!(call(&mut c, "h-stop", Value::Int(1)).value, Value::Int(1));
    let st = call(&mut c, "get-status", running).value;
    assert_eq!(
        st.as_list().unwrap()[0].get("running"),
        Some(&Value::Int(0))
    );

    assert_eq!(call(&mut c, "h-log", s("world")).key, "succeeded");
    d.wait_for_log("script host.rhai: hello world").unwrap();
}

const RECORDER: &str = r#"
// A closure made per call keeps its own `name` (one made in the loop
// would share the loop variable).
fn recorder(name) {
    |ev| {
        ev.event = name;
        if this.events == () { this.events = []; }
        this.events.push(ev);
    }
}
for name in ["torrent-added", "torrent-started", "torrent-stopped", "torrent-removed",
             "verification-finished", "setting-changed", "client-connected",
             "client-disconnected"] {
    on_event(name, recorder(name));
}
on_message("events", |v| { let e = this.events ?? []; this.events = []; e });
on_event("torrent-added", |ev| throw "a hook that fails");
"#;

fn events(c: &mut Client) -> Vec<Value> {
    call(c, "events", Value::empty())
        .value
        .as_list()
        .unwrap()
        .to_vec()
}

fn names(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e.get("event").and_then(Value::as_str).unwrap().to_string())
        .collect()
}

#[test]
fn hooks_see_every_event_and_their_errors_undo_nothing() {
    let setup = Setup::new(&[("recorder.rhai", RECORDER)]);
    let mut d = setup.start(&[]);
    let mut c = d.client();
    assert_eq!(names(&events(&mut c)), ["client-connected"]);

    assert_eq!(call(&mut c, "pex", Value::Int(0)).key, "succeeded");
    let e = events(&mut c);
    assert_eq!(names(&e), ["setting-changed"]);
    assert_eq!(e[0].get("name"), Some(&s("pex")));
    assert_eq!(e[0].get("value"), Some(&Value::Int(0)));

    // Added and started (the failing hook on added is logged, and the
    // torrent is there all the same), then the check finishes.
    let data = fixture("data");
    call(&mut c, "directory", s(data.to_str().unwrap()));
    events(&mut c);
    let hello = fixture("hello.torrent");
    assert_eq!(
        call(&mut c, "addfiles", list(&[hello.to_str().unwrap()])).key,
        "info"
    );
    d.wait_for_log("torrent 1 verified").unwrap();
    // One round trip after the check: its event has been committed.
    call(&mut c, "noop", Value::empty());
    let e = events(&mut c);
    assert_eq!(
        names(&e),
        ["torrent-added", "torrent-started", "verification-finished"]
    );
    assert_eq!(e[0].get("name"), Some(&s("hello.txt")));
    assert_eq!(e[2].get("completed"), Some(&Value::Int(50_000)));
    assert_eq!(e[2].get("complete"), Some(&Value::Int(1)));
    d.wait_for_log("hook \"torrent-added\" failed").unwrap();
    d.wait_for_log("a hook that fails").unwrap();
    let info = call(&mut c, "get-info-all", list(&["name"])).value;
    assert_eq!(info.as_list().unwrap().len(), 1, "the add stands");

    call(&mut c, "stop-all", Value::empty());
    call(&mut c, "remove", Value::List(vec![Value::Int(1)]));
    let e = events(&mut c);
    assert_eq!(names(&e), ["torrent-stopped", "torrent-removed"]);
    assert_eq!(
        e[1].get("hash"),
        Some(&s("c67a91b952cb2ce1b3ff7effb92db48eceafedf8"))
    );

    // Another client comes and goes.
    drop(d.client());
    // Its close is seen within the turns our next requests need.
    let mut seen = Vec::new();
    while !names(&seen).contains(&"client-disconnected".to_string()) {
        seen.extend(events(&mut c));
    }
    assert_eq!(names(&seen), ["client-connected", "client-disconnected"]);
}

/// Starts a daemon with one script key `k` running `body`, and `flags`.
fn limited(body: &str, flags: &[&str]) -> (Setup, Daemon) {
    let setup = Setup::new(&[(
        "limit.rhai",
        &format!("fn down(n) {{ if n == 0 {{ 0 }} else {{ down(n - 1) }} }}\non_message(\"k\", |v| {{ {body} }});\n"),
    )]);
    let d = setup.start(flags);
    (setup, d)
}

fn limit_hit(body: &str, flags: &[&str], reason: &str) {
    let (_setup, d) = limited(body, flags);
    let mut c = d.client();
    let why = failed_reason(&call(&mut c, "k", Value::empty()));
    assert!(why.contains(reason), "{body}: {why}");
    still_serving(&d);
    // The same connection goes on too.
    assert_eq!(call(&mut c, "noop", Value::empty()).key, "succeeded");

    // And without the flag the same script runs to its end: the limit is
    // what stopped it.
    if !flags.is_empty() {
        let (_setup, d) = limited(body, &[]);
        let mut c = d.client();
        let r = call(&mut c, "k", Value::empty());
        assert_eq!(r.key, "k", "{body}: {r:?}");
    }
}

#[test]
fn the_operation_limit_stops_a_busy_script() {
    limit_hit(
        "let x = 0; for i in 0..100000 { x += i; } x",
        &["--script-max-operations", "1000"],
        "too many operations",
    );
}

#[test]
fn the_wall_clock_guard_stops_an_endless_loop() {
    let (_setup, mut d) = limited(
        "loop {}",
        &["--script-max-operations", "0", "--script-timeout-ms", "20"],
    );
    let mut c = d.client();
    let why = failed_reason(&call(&mut c, "k", Value::empty()));
    assert!(why.contains("out of time"), "{why}");
    assert!(d
        .wait_for_log("key \"k\" failed after")
        .unwrap()
        .contains("out of time"));
    still_serving(&d);
}

#[test]
fn the_call_depth_limit_stops_deep_recursion() {
    limit_hit(
        "down(20)",
        &["--script-max-call-depth", "8"],
        "Stack overflow",
    );
}

#[test]
fn the_string_limit_stops_a_growing_string() {
    limit_hit(
        r#"let s = "x"; for i in 0..12 { s += s; } s.len()"#,
        &["--script-max-string", "1000"],
        "Length of string too large",
    );
}

#[test]
fn the_array_limit_stops_a_growing_array() {
    limit_hit(
        "let a = []; for i in 0..200 { a.push(i); } a.len()",
        &["--script-max-array", "100"],
        "Size of array/BLOB too large",
    );
}

#[test]
fn the_map_limit_stops_a_growing_map() {
    limit_hit(
        "let m = #{}; for i in 0..200 { m[`k${i}`] = i; } m.len()",
        &["--script-max-map", "50"],
        "Size of object map too large",
    );
}

#[test]
fn the_expression_depth_limit_refuses_a_deep_script_at_reload() {
    let deep = format!(
        "on_message(\"deep\", |v| {}1{});\n",
        "(".repeat(15),
        ")".repeat(15)
    );
    // Within the default limit it loads.
    let setup = Setup::new(&[("deep.rhai", &deep)]);
    let d = setup.start(&[]);
    let mut c = d.client();
    assert_eq!(call(&mut c, "deep", Value::empty()).value, Value::Int(1));
    drop(d);

    // With a tighter limit, a reload that brings it in fails; the scripts
    // in force stay and every connection keeps being served.
    let setup = Setup::new(&[("ok.rhai", "on_message(\"ok\", |v| 1);\n")]);
    let mut d = setup.start(&["--script-max-expr-depth", "10"]);
    let mut c = d.client();
    setup.write("deep.rhai", &deep);
    d.signal(Signal::SIGHUP);
    let line = d.wait_for_log("SIGHUP: reload failed").unwrap();
    assert!(line.contains("deep.rhai:1:"), "{line}");
    assert_eq!(call(&mut c, "ok", Value::empty()).value, Value::Int(1));
    assert_eq!(call(&mut c, "deep", Value::empty()).key, "not-supported");
    still_serving(&d);
}

#[test]
fn imports_stay_inside_the_scripts_directory_and_there_is_no_file_access() {
    let setup = Setup::new(&[
        (
            "main.rhai",
            r#"
            on_message("inside", |v| { import "lib" as lib; lib::twice(21) });
            on_message("outside", |v| { import "../secret" as s; 1 });
            on_message("file", |v| open_file("/etc/passwd"));
            "#,
        ),
        ("lib.rhai", "fn twice(x) { x * 2 }\n"),
    ]);
    std::fs::write(setup.dir.path().join("secret.rhai"), "fn f() { 1 }\n").unwrap();
    let d = setup.start(&[]);
    let mut c = d.client();
    assert_eq!(call(&mut c, "inside", Value::empty()).value, Value::Int(42));
    let why = failed_reason(&call(&mut c, "outside", Value::empty()));
    assert!(why.contains("inside the scripts directory"), "{why}");
    let why = failed_reason(&call(&mut c, "file", Value::empty()));
    assert!(why.contains("Function not found: open_file"), "{why}");
    still_serving(&d);
}

#[test]
fn sighup_reloads_scripts_without_dropping_a_connection() {
    let setup = Setup::new(&[
        ("a.rhai", "on_message(\"a-key\", |v| 1);\n"),
        (
            "keep.rhai",
            "on_message(\"count\", |v| { this.n = (this.n ?? 0) + 1; this.n });\n",
        ),
    ]);
    let mut d = setup.start(&[]);
    let mut c = d.client();
    assert_eq!(call(&mut c, "a-key", Value::empty()).value, Value::Int(1));
    assert_eq!(call(&mut c, "count", Value::empty()).value, Value::Int(1));

    std::fs::remove_file(setup.scripts().join("a.rhai")).unwrap();
    setup.write("b.rhai", "on_message(\"b-key\", |v| 2);\n");
    d.signal(Signal::SIGHUP);
    d.wait_for_log("SIGHUP: reloaded 2 script(s)").unwrap();

    // Same connection: the new key is there, the old one gone, and the
    // state of a script that stayed is kept.
    let sup = call(&mut c, "get-supported", list(&["a-key", "b-key", "count"]));
    assert_eq!(sup.value, list(&["b-key", "count"]));
    assert_eq!(call(&mut c, "a-key", Value::empty()).key, "not-supported");
    assert_eq!(call(&mut c, "b-key", Value::empty()).value, Value::Int(2));
    assert_eq!(call(&mut c, "count", Value::empty()).value, Value::Int(2));

    // A reload that fails keeps what is in force.
    setup.write("broken.rhai", "on_message(\n");
    d.signal(Signal::SIGHUP);
    let line = d.wait_for_log("SIGHUP: reload failed").unwrap();
    assert!(line.contains("broken.rhai"), "{line}");
    assert_eq!(call(&mut c, "b-key", Value::empty()).value, Value::Int(2));
}
