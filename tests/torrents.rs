//! Torrents through the real daemon: adding, info and status, lookup,
//! verification of local data, start/stop/remove, persistence.

mod common;

use std::path::Path;

use common::{fixture, make_torrent, Daemon};
use tripcd::client::{Client, ClientError};
use tripcd::codec::Value;

const HELLO_HASH: &str = "c67a91b952cb2ce1b3ff7effb92db48eceafedf8";
const MULTI_HASH: &str = "02585f0ad555131b783e82ac08f9c134cfb8f7b0";

fn s(v: &str) -> Value {
    Value::str(v)
}

fn list(items: &[&str]) -> Value {
    Value::List(items.iter().map(|i| s(i)).collect())
}

fn path_value(p: &Path) -> Value {
    s(p.to_str().unwrap())
}

/// Adds with addfile-detailed; returns the id.
fn add(c: &mut Client, file: &Path, directory: &Path, autostart: i64) -> i64 {
    let req = Value::dict([
        ("autostart", Value::Int(autostart)),
        ("directory", path_value(directory)),
        ("file", path_value(file)),
    ]);
    let reply = c.request("addfile-detailed", &req).unwrap().unwrap();
    assert_eq!(reply.key, "info");
    let l = reply.value.as_list().unwrap();
    assert_eq!(l.len(), 1);
    l[0].get("id").and_then(Value::as_int).unwrap()
}

fn status(c: &mut Client, id: i64, types: &[&str]) -> Value {
    let req = Value::dict([
        ("id", Value::List(vec![Value::Int(id)])),
        ("type", list(types)),
    ]);
    let reply = c.request("get-status", &req).unwrap().unwrap();
    assert_eq!(reply.key, "status");
    reply.value.as_list().unwrap()[0].clone()
}

/// Asks for the state until the check is over. Each question is a round
/// trip, and the daemon hashes a slice per loop turn, so this always ends.
fn settle(c: &mut Client, id: i64) -> Value {
    for _ in 0..1_000_000 {
        let st = status(
            c,
            id,
            &["state", "completed", "error", "error-message", "running"],
        );
        let state = st.get("state").and_then(Value::as_str).unwrap().to_string();
        if state != "checking" && state != "waiting to checking" {
            return st;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    panic!("verification never finished");
}

/// A copy of the fixtures' data directory that a test may change.
fn data_copy() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let src = fixture("data");
    std::fs::copy(src.join("hello.txt"), d.path().join("hello.txt")).unwrap();
    std::fs::create_dir_all(d.path().join("multi/docs")).unwrap();
    std::fs::copy(src.join("multi/a.bin"), d.path().join("multi/a.bin")).unwrap();
    std::fs::copy(
        src.join("multi/docs/b.txt"),
        d.path().join("multi/docs/b.txt"),
    )
    .unwrap();
    d
}

fn expected_info(name: &str) -> Value {
    let text = std::fs::read_to_string(fixture("expected.json")).unwrap();
    let all: serde_json::Value = serde_json::from_str(&text).unwrap();
    fn conv(v: &serde_json::Value) -> Value {
        match v {
            serde_json::Value::Number(n) => Value::Int(n.as_i64().unwrap()),
            serde_json::Value::String(s) => Value::str(s),
            serde_json::Value::Array(a) => Value::List(a.iter().map(conv).collect()),
            serde_json::Value::Object(o) => Value::Dict(
                o.iter()
                    .map(|(k, v)| (k.as_bytes().to_vec().into(), conv(v)))
                    .collect(),
            ),
            other => panic!("unexpected {other}"),
        }
    }
    conv(&all[name])
}

#[test]
fn info_fields_match_the_fixtures_exactly() {
    let state = tempfile::tempdir().unwrap();
    let d = Daemon::start_in(state.path(), &[]);
    let mut c = d.client();
    let data = fixture("data");
    let types = [
        "hash", "name", "path", "saved", "private", "trackers", "comment", "creator", "date",
        "size", "files", "bogus",
    ];
    for name in ["hello.torrent", "multi.torrent"] {
        let id = add(&mut c, &fixture(name), &data, 0);
        let req = Value::dict([
            ("id", Value::List(vec![Value::Int(id)])),
            ("type", list(&types)),
        ]);
        let info = c.request("get-info", &req).unwrap().unwrap().value;
        let got = &info.as_list().unwrap()[0];
        let want = expected_info(name);
        for key in [
            "hash", "name", "private", "trackers", "comment", "creator", "size", "files",
        ] {
            assert_eq!(got.get(key), want.get(key), "{name}: {key}");
        }
        assert_eq!(
            got.get("date"),
            want.get("date"),
            "{name}: date (absent when none)"
        );
        assert_eq!(got.get("id"), Some(&Value::Int(id)));
        assert_eq!(got.get("saved"), Some(&Value::Int(1)));
        assert_eq!(got.get("bogus"), None, "unknown types are skipped");
        // The daemon keeps its own copy, byte for byte.
        let copy = got.get("path").and_then(Value::as_str).unwrap();
        assert!(copy.starts_with(state.path().to_str().unwrap()), "{copy}");
        assert_eq!(
            std::fs::read(copy).unwrap(),
            std::fs::read(fixture(name)).unwrap()
        );
    }
}

#[test]
fn lookup_in_either_case_and_duplicates_keep_their_id() {
    let state = tempfile::tempdir().unwrap();
    let d = Daemon::start_in(state.path(), &[]);
    let mut c = d.client();
    let data = fixture("data");
    let a = add(&mut c, &fixture("hello.torrent"), &data, 0);
    let b = add(&mut c, &fixture("multi.torrent"), &data, 0);
    assert_eq!(
        add(&mut c, &fixture("hello.torrent"), &data, 0),
        a,
        "same torrent, same id"
    );
    let bytes = std::fs::read(fixture("multi.torrent")).unwrap();
    let reply = c
        .request(
            "addfile-detailed",
            &Value::dict([("data", Value::Bytes(bytes))]),
        )
        .unwrap()
        .unwrap();
    assert_eq!(
        reply.value,
        Value::List(vec![Value::dict([("id", Value::Int(b))])])
    );
    let upper = MULTI_HASH.to_uppercase();
    let reply = c
        .request(
            "lookup",
            &list(&[
                &upper,
                "0000000000000000000000000000000000000000",
                HELLO_HASH,
            ]),
        )
        .unwrap()
        .unwrap();
    assert_eq!(
        reply.value,
        Value::List(vec![
            Value::dict([("hash", s(MULTI_HASH)), ("id", Value::Int(b))]),
            Value::dict([("hash", s(HELLO_HASH)), ("id", Value::Int(a))]),
        ])
    );
    let all = c
        .request("get-info-all", &list(&["name"]))
        .unwrap()
        .unwrap()
        .value;
    assert_eq!(
        all,
        Value::List(vec![
            Value::dict([("id", Value::Int(a)), ("name", s("hello.txt"))]),
            Value::dict([("id", Value::Int(b)), ("name", s("multi"))]),
        ])
    );
}

#[test]
fn addfiles_on_both_versions() {
    let state = tempfile::tempdir().unwrap();
    let d = Daemon::start_in(state.path(), &[]);
    let mut c = d.client();
    let hello = fixture("hello.torrent");
    let missing = state.path().join("missing.torrent");
    let reply = c
        .request(
            "addfiles",
            &Value::List(vec![path_value(&hello), path_value(&missing)]),
        )
        .unwrap()
        .unwrap();
    assert_eq!(reply.key, "info");
    assert_eq!(
        reply.value,
        Value::List(vec![Value::dict([("id", Value::Int(1))])])
    );
    // Every path failed: tagged gets the reasons.
    match c.request(
        "addfiles",
        &Value::List(vec![path_value(&missing), s("relative.torrent")]),
    ) {
        Err(ClientError::Failed(why)) => {
            assert!(why.contains("file not found: "), "{why}");
            assert!(
                why.contains("not an absolute path: relative.torrent"),
                "{why}"
            );
        }
        other => panic!("{other:?}"),
    }
    // Version 1: no reply, but the torrent is added.
    let mut v1 = d.raw();
    v1.handshake(1);
    let multi = fixture("multi.torrent");
    let m = multi.to_str().unwrap();
    let payload = format!("d8:addfilesl{}:{m}ee", m.len());
    assert!(v1.send(format!("{:08X}{payload}", payload.len()).as_bytes()));
    assert!(v1.send(b"ZZZZZZZZ"));
    assert_eq!(v1.frames_until_closed(), Vec::<String>::new());
    let found = c
        .request("lookup", &list(&[MULTI_HASH]))
        .unwrap()
        .unwrap()
        .value;
    assert_eq!(found.as_list().unwrap().len(), 1);
}

#[test]
fn bad_files_get_reasons() {
    let state = tempfile::tempdir().unwrap();
    let d = Daemon::start_in(state.path(), &[]);
    let mut c = d.client();
    let bad = state.path().join("bad.torrent");
    std::fs::write(&bad, b"d8:announce3:abcXXX").unwrap();
    let cases = [
        (
            Value::dict([("file", path_value(&bad))]),
            "not bencode at byte 16",
        ),
        (
            Value::dict([("file", s("/nonexistent/x.torrent"))]),
            "file not found: /nonexistent/x.torrent",
        ),
        (
            Value::dict([(
                "data",
                s("d4:infod4:name1:x6:lengthi3e12:piece lengthi4e6:pieces3:abcee"),
            )]),
            "info.pieces length is not a multiple of 20",
        ),
        (
            Value::dict([("data", s("i1e")), ("directory", s("rel"))]),
            "directory is not absolute",
        ),
    ];
    for (req, want) in cases {
        match c.request("addfile-detailed", &req) {
            Err(ClientError::Failed(why)) => assert!(why.contains(want), "{why} vs {want}"),
            other => panic!("{req:?}: {other:?}"),
        }
    }
    for req in [
        Value::dict([("file", s("/x")), ("autostart", s("yes"))]),
        Value::dict([("file", Value::Int(3))]),
        Value::dict([("data", s("x")), ("directory", Value::Int(1))]),
        Value::List(vec![]),
    ] {
        assert!(
            matches!(
                c.request("addfile-detailed", &req),
                Err(ClientError::BadFormat(_))
            ),
            "{req:?}"
        );
    }
    let empty = c
        .request("get-info-all", &list(&[]))
        .unwrap()
        .unwrap()
        .value;
    assert_eq!(empty, Value::List(vec![]), "nothing was added");
}

#[test]
fn autostart_zero_stays_paused_and_verification_seeds() {
    let state = tempfile::tempdir().unwrap();
    let d = Daemon::start_in(state.path(), &[]);
    let mut c = d.client();
    let data = data_copy();
    let id = add(&mut c, &fixture("multi.torrent"), data.path(), 0);
    let st = status(&mut c, id, &["state", "running", "completed"]);
    assert_eq!(st.get("state"), Some(&s("paused")));
    assert_eq!(st.get("running"), Some(&Value::Int(0)));
    assert_eq!(st.get("completed"), Some(&Value::Int(0)));
    assert_eq!(
        c.request("start", &Value::List(vec![Value::Int(id)]))
            .unwrap(),
        None
    );
    let st = settle(&mut c, id);
    assert_eq!(st.get("state"), Some(&s("seeding")));
    assert_eq!(st.get("completed"), Some(&Value::Int(51600)));
    assert_eq!(st.get("error"), Some(&s("")));
    assert_eq!(st.get("running"), Some(&Value::Int(1)));
    // Values that need a peer engine are 0 or -1, never invented.
    let all = status(
        &mut c,
        id,
        &[
            "download-speed",
            "upload-total",
            "peers-total",
            "eta",
            "scrape-seeders",
            "peers-from",
            "tracker",
            "download-valid",
        ],
    );
    assert_eq!(all.get("download-speed"), Some(&Value::Int(0)));
    assert_eq!(all.get("upload-total"), Some(&Value::Int(0)));
    assert_eq!(all.get("peers-total"), Some(&Value::Int(0)));
    assert_eq!(all.get("eta"), Some(&Value::Int(-1)));
    assert_eq!(all.get("scrape-seeders"), Some(&Value::Int(-1)));
    assert_eq!(all.get("download-valid"), Some(&Value::Int(51600)));
    assert_eq!(
        all.get("tracker"),
        Some(&Value::dict([
            ("address", s("tracker.example.org")),
            ("announce", s("/a/announce.php")),
            ("port", Value::Int(80)),
            ("scrape", s("/a/scrape.php")),
        ]))
    );
}

#[test]
fn a_corrupted_piece_leaves_exactly_the_good_bytes() {
    let state = tempfile::tempdir().unwrap();
    let d = Daemon::start_in(state.path(), &[]);
    let mut c = d.client();
    let data = data_copy();
    let path = data.path().join("hello.txt");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[20_000] ^= 0xFF; // piece 1 of 4 (16 KiB pieces)
    std::fs::write(&path, bytes).unwrap();
    let id = add(&mut c, &fixture("hello.torrent"), data.path(), 1);
    let st = settle(&mut c, id);
    assert_eq!(st.get("state"), Some(&s("downloading")));
    assert_eq!(st.get("completed"), Some(&Value::Int(50_000 - 16_384)));
}

/// Protocol 1.20's `verify`: data damaged after a check is found by the
/// next one, for a running and for a paused torrent; unknown ids are
/// skipped; `get-supported` names it; the paused one is checked (it
/// never was) and stays paused.
#[test]
fn verify_checks_the_data_again() {
    let state = tempfile::tempdir().unwrap();
    let d = Daemon::start_in(state.path(), &[]);
    let mut c = d.client();
    let data = data_copy();
    let running = add(&mut c, &fixture("hello.torrent"), data.path(), 1);
    let paused = add(&mut c, &fixture("multi.torrent"), data.path(), 0);
    assert_eq!(settle(&mut c, running).get("state"), Some(&s("seeding")));
    let st = status(&mut c, paused, &["completed", "state"]);
    assert_eq!(
        st.get("completed"),
        Some(&Value::Int(0)),
        "paused: not checked"
    );
    let path = data.path().join("hello.txt");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[20_000] ^= 0xFF;
    std::fs::write(&path, bytes).unwrap();
    std::fs::write(data.path().join("multi/a.bin"), b"short").unwrap();
    let reply = c
        .call(
            "verify",
            &Value::List(vec![
                Value::Int(running),
                Value::Int(paused),
                Value::Int(99),
            ]),
        )
        .unwrap();
    assert_eq!(reply.key, "succeeded");
    let st = settle(&mut c, running);
    assert_eq!(st.get("state"), Some(&s("downloading")));
    assert_eq!(st.get("completed"), Some(&Value::Int(50_000 - 16_384)));
    let st = settle(&mut c, paused);
    assert_eq!(st.get("state"), Some(&s("paused")));
    let completed = st.get("completed").and_then(Value::as_int).unwrap();
    assert!(completed > 0, "checked: b.txt's pieces are good");
    assert_eq!(st.get("running"), Some(&Value::Int(0)));
    assert_eq!(c.call("verify", &s("1")).unwrap().key, "bad-format");
    let supported = c
        .request("get-supported", &list(&["verify"]))
        .unwrap()
        .unwrap();
    assert_eq!(supported.value, list(&["verify"]));
}

#[test]
fn missing_data_is_not_an_error_but_a_missing_directory_is() {
    let state = tempfile::tempdir().unwrap();
    let d = Daemon::start_in(state.path(), &[]);
    let mut c = d.client();
    let empty = tempfile::tempdir().unwrap();
    let id = add(&mut c, &fixture("hello.torrent"), empty.path(), 1);
    let st = settle(&mut c, id);
    assert_eq!(st.get("state"), Some(&s("downloading")));
    assert_eq!(st.get("completed"), Some(&Value::Int(0)));
    assert_eq!(st.get("error"), Some(&s("")));

    let gone = empty.path().join("gone");
    let id = add(&mut c, &fixture("multi.torrent"), &gone, 1);
    let st = settle(&mut c, id);
    assert_eq!(st.get("error"), Some(&s("io-parent")));
    let msg = st.get("error-message").and_then(Value::as_str).unwrap();
    assert!(msg.contains(gone.to_str().unwrap()), "{msg}");
}

#[test]
fn stop_and_remove_keep_the_data_and_drop_the_copy() {
    let state = tempfile::tempdir().unwrap();
    let d = Daemon::start_in(state.path(), &[]);
    let mut c = d.client();
    let data = data_copy();
    let id = add(&mut c, &fixture("hello.torrent"), data.path(), 1);
    settle(&mut c, id);
    assert_eq!(
        c.request("stop", &Value::List(vec![Value::Int(id)]))
            .unwrap(),
        None
    );
    let st = status(&mut c, id, &["state", "running"]);
    assert_eq!(st.get("state"), Some(&s("paused")));
    assert_eq!(st.get("running"), Some(&Value::Int(0)));
    let req = Value::dict([
        ("id", Value::List(vec![Value::Int(id)])),
        ("type", list(&["path"])),
    ]);
    let info = c.request("get-info", &req).unwrap().unwrap().value;
    let copy = info.as_list().unwrap()[0]
        .get("path")
        .and_then(Value::as_str)
        .unwrap()
        .to_string();
    assert!(Path::new(&copy).exists());
    // A bad id list changes nothing.
    assert!(matches!(
        c.request("remove", &Value::List(vec![Value::Int(id), s("x")])),
        Err(ClientError::BadFormat(_))
    ));
    assert_eq!(
        c.request("remove", &Value::List(vec![Value::Int(id), Value::Int(99)]))
            .unwrap(),
        None
    );
    assert!(!Path::new(&copy).exists(), "saved copy deleted");
    assert!(data.path().join("hello.txt").exists(), "data never deleted");
    let all = c
        .request("get-status-all", &list(&["state"]))
        .unwrap()
        .unwrap()
        .value;
    assert_eq!(all, Value::List(vec![]));
    // Ids are never reused while the daemon runs.
    let again = add(&mut c, &fixture("hello.torrent"), data.path(), 0);
    assert!(again > id);
}

#[test]
fn all_variants_act_on_every_torrent() {
    let state = tempfile::tempdir().unwrap();
    let d = Daemon::start_in(state.path(), &[]);
    let mut c = d.client();
    let data = data_copy();
    add(&mut c, &fixture("hello.torrent"), data.path(), 0);
    add(&mut c, &fixture("multi.torrent"), data.path(), 0);
    assert_eq!(c.request("start-all", &Value::empty()).unwrap(), None);
    for id in [1, 2] {
        assert_eq!(settle(&mut c, id).get("state"), Some(&s("seeding")));
    }
    assert_eq!(c.request("stop-all", &Value::empty()).unwrap(), None);
    let all = c
        .request("get-status-all", &list(&["state"]))
        .unwrap()
        .unwrap()
        .value;
    for t in all.as_list().unwrap() {
        assert_eq!(t.get("state"), Some(&s("paused")));
    }
    assert_eq!(c.request("remove-all", &Value::empty()).unwrap(), None);
    let all = c
        .request("get-info-all", &list(&[]))
        .unwrap()
        .unwrap()
        .value;
    assert_eq!(all, Value::List(vec![]));
}

#[test]
fn state_survives_a_restart_and_running_torrents_are_checked_again() {
    let state = tempfile::tempdir().unwrap();
    let data = data_copy();
    {
        let mut d = Daemon::start_in(state.path(), &[]);
        let mut c = d.client();
        add(&mut c, &fixture("hello.torrent"), data.path(), 0);
        let m = add(&mut c, &fixture("multi.torrent"), data.path(), 1);
        assert_eq!(settle(&mut c, m).get("state"), Some(&s("seeding")));
        d.signal(nix::sys::signal::Signal::SIGTERM);
        assert!(d.wait().success());
    }
    // Break the running torrent's data: the new check must see it.
    std::fs::remove_file(data.path().join("multi/a.bin")).unwrap();
    let d = Daemon::start_in(state.path(), &[]);
    let mut c = d.client();
    let found = c
        .request("lookup", &list(&[HELLO_HASH, MULTI_HASH]))
        .unwrap()
        .unwrap()
        .value;
    let ids: Vec<i64> = found
        .as_list()
        .unwrap()
        .iter()
        .map(|t| t.get("id").and_then(Value::as_int).unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
    assert_eq!(
        status(&mut c, ids[0], &["state"]).get("state"),
        Some(&s("paused"))
    );
    let st = settle(&mut c, ids[1]);
    assert_eq!(st.get("state"), Some(&s("downloading")));
    assert_eq!(st.get("completed"), Some(&Value::Int(51600 - 32768)));
    let req = Value::dict([
        ("id", Value::List(vec![Value::Int(ids[1])])),
        ("type", list(&["name"])),
    ]);
    let info = c.request("get-info", &req).unwrap().unwrap().value;
    assert_eq!(info.as_list().unwrap()[0].get("name"), Some(&s("multi")));
}

#[test]
fn an_acknowledged_add_survives_kill_9() {
    let state = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    let copy = src.path().join("hello.torrent");
    std::fs::copy(fixture("hello.torrent"), &copy).unwrap();
    let mut d = Daemon::start_in(state.path(), &[]);
    let mut c = d.client();
    add(&mut c, &copy, src.path(), 0);
    d.kill9();
    std::fs::remove_file(&copy).unwrap(); // the daemon kept its own copy
    let d = Daemon::start_in(state.path(), &[]);
    let mut c = d.client();
    let found = c
        .request("lookup", &list(&[HELLO_HASH]))
        .unwrap()
        .unwrap()
        .value;
    assert_eq!(found.as_list().unwrap().len(), 1);
}

#[test]
fn clients_are_answered_while_a_large_torrent_is_checked() {
    let state = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let big: Vec<u8> = (0..48u32 << 20).map(|i| (i % 251) as u8).collect();
    let file = make_torrent(data.path(), "big.bin", &big, 1 << 20);
    let d = Daemon::start_in(state.path(), &[]);
    let mut c = d.client();
    let id = add(&mut c, &file, data.path(), 1);
    let mut seen_checking = 0;
    let mut last_completed = 0;
    loop {
        let st = status(&mut c, id, &["state", "completed"]);
        let completed = st.get("completed").and_then(Value::as_int).unwrap();
        match st.get("state").and_then(Value::as_str).unwrap() {
            "checking" => {
                seen_checking += 1;
                assert!(completed >= last_completed, "completed only grows");
                last_completed = completed;
            }
            "waiting to checking" => {}
            "seeding" => {
                assert_eq!(completed, big.len() as i64);
                break;
            }
            other => panic!("unexpected state {other}"),
        }
    }
    assert!(
        seen_checking > 1,
        "answered {seen_checking} times during the check"
    );
}

#[test]
fn get_info_and_status_validate_their_values() {
    let state = tempfile::tempdir().unwrap();
    let d = Daemon::start_in(state.path(), &[]);
    let mut c = d.client();
    add(&mut c, &fixture("hello.torrent"), &fixture("data"), 0);
    // Missing type: id only. Non-int ids and unknown ids skipped, order kept.
    let req = Value::dict([(
        "id",
        Value::List(vec![Value::Int(5), s("x"), Value::Int(1), Value::Int(1)]),
    )]);
    let got = c.request("get-status", &req).unwrap().unwrap().value;
    assert_eq!(
        got,
        Value::List(vec![
            Value::dict([("id", Value::Int(1))]),
            Value::dict([("id", Value::Int(1))])
        ])
    );
    for bad in [
        Value::dict([("type", list(&["name"]))]),
        Value::dict([("id", Value::Int(1))]),
        Value::dict([("id", Value::List(vec![])), ("type", s("name"))]),
    ] {
        assert!(
            matches!(c.request("get-info", &bad), Err(ClientError::BadFormat(_))),
            "{bad:?}"
        );
    }
    assert!(matches!(
        c.request("get-status-all", &s("state")),
        Err(ClientError::BadFormat(_))
    ));
    assert!(matches!(
        c.request("start", &Value::Int(1)),
        Err(ClientError::BadFormat(_))
    ));
}
