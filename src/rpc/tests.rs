//! Bytes in, exact JSON out, no sockets: every method, its errors, and
//! the durability flags, against a real registry in a temporary folder.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, UNIX_EPOCH};

use base64::Engine as _;
use serde_json::{json, Value};

use super::*;
use crate::codec::Value as Benc;
use crate::registry::{Registry, Settings};
use crate::reply::{Dispatch, Reply};

const HELLO: &str = "c67a91b952cb2ce1b3ff7effb92db48eceafedf8";
const MULTI: &str = "02585f0ad555131b783e82ac08f9c134cfb8f7b0";
/// The fake wall clock: 2023-11-14.
const WALL: u64 = 1_700_000_000;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixture_path(name)).unwrap()
}

fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(format!(
        "{}/tests/data/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A service over a fresh state folder, and the context a front gives.
struct Fx {
    dir: tempfile::TempDir,
    svc: Service,
    t0: Instant,
    /// Seconds past [`WALL`] and past `t0`.
    elapsed: u64,
    rpc: RpcSettings,
    bound: bool,
}

impl Fx {
    fn new() -> Fx {
        let dir = tempfile::tempdir().unwrap();
        let reg =
            Registry::open(&dir.path().join("state"), Settings::defaults("/dl".into())).unwrap();
        Fx {
            dir,
            svc: Service::new(reg),
            t0: Instant::now(),
            elapsed: 0,
            rpc: RpcSettings {
                enabled: true,
                port: 9091,
                url: "/transmission/".into(),
                authentication_required: true,
                whitelist_enabled: true,
                whitelist: vec!["127.0.0.1".into(), "::1".into()],
                host_whitelist_enabled: false,
                host_whitelist: Vec::new(),
            },
            bound: true,
        }
    }

    fn handle(&mut self, body: &[u8]) -> Handled {
        let free = |_: &Path| {
            Ok(DiskSpace {
                free: 1_000,
                total: 5_000,
            })
        };
        let ctx = Context {
            now: self.t0 + Duration::from_secs(self.elapsed),
            wall: UNIX_EPOCH + Duration::from_secs(WALL + self.elapsed),
            started: self.t0,
            version: "tripcd 0.1.0",
            free_space: &free,
            rpc: &self.rpc,
            session_id: "abc123",
            peer_port_bound: self.bound,
            peer_limit_global: 200,
            peer_limit_per_torrent: 50,
        };
        dispatch(&mut self.svc, body, &ctx)
    }

    fn finish(&mut self, fetched: Result<Vec<u8>, String>, request: PendingAdd) -> RpcReply {
        let free = |_: &Path| Err(std::io::Error::other("unused"));
        let ctx = Context {
            now: self.t0,
            wall: UNIX_EPOCH + Duration::from_secs(WALL + self.elapsed),
            started: self.t0,
            version: "tripcd 0.1.0",
            free_space: &free,
            rpc: &self.rpc,
            session_id: "abc123",
            peer_port_bound: self.bound,
            peer_limit_global: 200,
            peer_limit_per_torrent: 50,
        };
        finish_fetch(&mut self.svc, fetched, request, &ctx)
    }

    fn call(&mut self, body: &str) -> RpcReply {
        match self.handle(body.as_bytes()) {
            Handled::Reply(r) => r,
            Handled::Fetch { url, .. } => panic!("asked to fetch {url}"),
        }
    }

    /// The reply as text.
    fn text(&mut self, body: &str) -> String {
        String::from_utf8(self.call(body).body).unwrap()
    }

    /// The reply parsed.
    fn json(&mut self, body: &str) -> Value {
        serde_json::from_slice(&self.call(body).body).unwrap()
    }

    /// The `result` of a request, checking that it changed nothing.
    fn refused(&mut self, body: &str) -> String {
        let before = self.svc.registry().changes();
        let r = self.call(body);
        assert!(!r.durable, "{body}");
        assert_eq!(self.svc.registry().changes(), before, "{body}");
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["arguments"], json!({}), "{body}");
        let result = v["result"].as_str().unwrap().to_string();
        assert_ne!(result, "success", "{body}");
        result
    }

    fn add(&mut self, name: &str, paused: bool) -> u64 {
        let body = json!({"method": "torrent-add", "arguments": {
            "metainfo": b64(&fixture(name)), "paused": paused}});
        let v = self.json(&body.to_string());
        assert_eq!(v["result"], "success", "{v}");
        v["arguments"]["torrent-added"]["id"].as_u64().unwrap()
    }

    fn commit(&mut self) {
        self.svc.registry_mut().commit().unwrap();
    }

    /// Runs queued checks to their end.
    fn check_all(&mut self) {
        while self.svc.registry().has_work() {
            self.svc.registry_mut().work(1 << 20);
        }
    }

    fn get(&mut self, fields: &[&str], ids: Value) -> Value {
        let mut args = json!({ "fields": fields });
        if !ids.is_null() {
            args["ids"] = ids;
        }
        let v = self.json(&json!({"method": "torrent-get", "arguments": args}).to_string());
        assert_eq!(v["result"], "success", "{v}");
        v["arguments"]["torrents"].clone()
    }
}

// --- the envelope ---

#[test]
fn malformed_requests_are_refused_with_a_reason_and_their_tag() {
    let mut fx = Fx::new();
    assert_eq!(
        fx.text(r#"{"method":"session-stats""#),
        r#"{"arguments":{},"result":"request is not valid JSON: EOF while parsing an object at line 1 column 25"}"#
    );
    assert_eq!(
        fx.text("[1]"),
        r#"{"arguments":{},"result":"request is not a JSON object"}"#
    );
    assert_eq!(
        fx.text(r#"{"tag":5}"#),
        r#"{"arguments":{},"result":"no method name","tag":5}"#
    );
    assert_eq!(
        fx.text(r#"{"method":7,"tag":-1}"#),
        r#"{"arguments":{},"result":"method must be a string","tag":-1}"#
    );
    assert_eq!(
        fx.text(r#"{"method":"torrent-fly","tag":9}"#),
        r#"{"arguments":{},"result":"method name not recognized","tag":9}"#
    );
    assert_eq!(
        fx.text(r#"{"method":"session-stats","tag":"x"}"#),
        r#"{"arguments":{},"result":"tag must be an integer"}"#
    );
    assert_eq!(
        fx.text(r#"{"method":"session-stats","tag":1.5}"#),
        r#"{"arguments":{},"result":"tag must be an integer"}"#
    );
    assert_eq!(
        fx.text(r#"{"method":"session-stats","arguments":[],"tag":3}"#),
        r#"{"arguments":{},"result":"arguments must be an object","tag":3}"#
    );
    assert_eq!(fx.svc.registry().changes(), 0);
}

#[test]
fn oversized_and_overly_complex_requests_are_refused_before_parsing() {
    let mut fx = Fx::new();
    let many = format!(
        r#"{{"method":"torrent-get","arguments":{{"ids":[{}]}}}}"#,
        vec!["0"; json::MAX_JSON_VALUES].join(",")
    );
    assert_eq!(
        fx.text(&many),
        format!(
            r#"{{"arguments":{{}},"result":"request of more than {} JSON values"}}"#,
            json::MAX_JSON_VALUES
        )
    );
    let huge = vec![b' '; MAX_REQUEST_BYTES + 1];
    let Handled::Reply(r) = fx.handle(&huge) else {
        panic!()
    };
    assert!(String::from_utf8(r.body)
        .unwrap()
        .contains("over the 50331648 allowed"));
}

#[test]
fn a_tag_is_echoed_and_an_absent_one_stays_absent() {
    let mut fx = Fx::new();
    assert_eq!(
        fx.text(r#"{"method":"session-get","arguments":{"fields":["rpc-version"]},"tag":912313}"#),
        r#"{"arguments":{"rpc-version":17},"result":"success","tag":912313}"#
    );
    assert_eq!(
        fx.text(r#"{"method":"session-get","arguments":{"fields":["rpc-version","version"]}}"#),
        r#"{"arguments":{"rpc-version":17,"version":"tripcd 0.1.0"},"result":"success"}"#
    );
    // A web client writes every number as a double.
    assert_eq!(
        fx.text(r#"{"method":"session-get","arguments":{"fields":[]},"tag":4.0}"#),
        r#"{"arguments":{},"result":"success","tag":4}"#
    );
}

#[test]
fn the_failed_reply_says_only_why() {
    assert_eq!(
        String::from_utf8(failed(Some(3), "cannot save state: disk full")).unwrap(),
        r#"{"arguments":{},"result":"cannot save state: disk full","tag":3}"#
    );
    assert_eq!(
        String::from_utf8(failed(None, "a \"quoted\"\nline")).unwrap(),
        r#"{"arguments":{},"result":"a \"quoted\"\nline"}"#
    );
}

// --- torrent-add ---

#[test]
fn torrent_add_from_base64_then_a_duplicate() {
    let mut fx = Fx::new();
    let body = json!({"method": "torrent-add", "tag": 7, "arguments": {
        "metainfo": b64(&fixture("hello.torrent")), "paused": true, "download-dir": "/data"}});
    let r = fx.call(&body.to_string());
    assert!(r.durable && !r.rebinds);
    assert_eq!(
        String::from_utf8(r.body).unwrap(),
        format!(
            r#"{{"arguments":{{"torrent-added":{{"id":1,"name":"hello.txt","hashString":"{HELLO}"}}}},"result":"success","tag":7}}"#
        )
    );
    let t = fx.svc.registry().torrents().get(1).unwrap().clone();
    assert!(!t.running);
    assert_eq!(t.directory, PathBuf::from("/data"));
    assert_eq!(t.dates.added, WALL as i64);
    let r = fx.call(&body.to_string());
    assert!(!r.durable, "a duplicate changes nothing");
    assert_eq!(
        String::from_utf8(r.body).unwrap(),
        format!(
            r#"{{"arguments":{{"torrent-duplicate":{{"id":1,"name":"hello.txt","hashString":"{HELLO}"}}}},"result":"success","tag":7}}"#
        )
    );
}

#[test]
fn torrent_add_from_a_file_a_magnet_a_bare_hash_and_a_url() {
    let mut fx = Fx::new();
    let path = fixture_path("multi.torrent");
    let body = json!({"method": "torrent-add", "arguments": {"filename": path, "paused": 0}});
    let v = fx.json(&body.to_string());
    assert_eq!(v["arguments"]["torrent-added"]["hashString"], MULTI);

    let link = format!(
        "magnet:?xt=urn:btih:{HELLO}&dn=hello+link&tr=udp%3A%2F%2Ft.example%3A1%2Fannounce"
    );
    let body = json!({"method": "torrent-add", "arguments": {"filename": link, "labels": [" a ", "b", "a"]}});
    let r = fx.call(&body.to_string());
    assert!(r.durable);
    assert_eq!(
        String::from_utf8(r.body).unwrap(),
        format!(
            r#"{{"arguments":{{"torrent-added":{{"id":2,"name":"hello link","hashString":"{HELLO}"}}}},"result":"success"}}"#
        )
    );
    let t = fx.svc.registry().torrents().get(2).unwrap().clone();
    assert!(t.meta.is_none() && t.running, "the setting starts it");
    assert_eq!(t.labels, ["a", "b"]);
    assert_eq!(t.hints.trackers, ["udp://t.example:1/announce"]);

    let body = json!({"method": "torrent-add", "arguments": {"filename": HELLO.to_uppercase()}});
    let v = fx.json(&body.to_string());
    assert_eq!(v["arguments"]["torrent-duplicate"]["id"], 2);

    let body = json!({"method": "torrent-add", "tag": 11, "arguments": {
        "filename": "https://example.org/x.torrent", "paused": true,
        "download-dir": "/srv", "cookies": "a=b", "labels": ["tv"]}});
    let Handled::Fetch { url, request } = fx.handle(body.to_string().as_bytes()) else {
        panic!("no fetch")
    };
    assert_eq!(url, "https://example.org/x.torrent");
    assert_eq!((request.tag(), request.cookies()), (Some(11), Some("a=b")));
    let failed = fx.finish(Err("HTTP 404".into()), request.clone());
    assert!(!failed.durable);
    assert_eq!(
        String::from_utf8(failed.body).unwrap(),
        r#"{"arguments":{},"result":"could not fetch the torrent: HTTP 404","tag":11}"#
    );
    let r = fx.finish(Ok(b"not bencode".to_vec()), request.clone());
    assert!(String::from_utf8(r.body)
        .unwrap()
        .contains(r#""result":"bad metainfo"#));
    let mut big = fixture("hello.torrent");
    big.resize(crate::registry::metainfo::MAX_METAINFO_BYTES + 1, b' ');
    let r = fx.finish(Ok(big), request.clone());
    assert!(String::from_utf8(r.body)
        .unwrap()
        .contains("over the metainfo limit"));
    let mut fx2 = Fx::new();
    let r = fx2.finish(Ok(fixture("hello.torrent")), request);
    assert!(r.durable);
    assert_eq!(
        String::from_utf8(r.body).unwrap(),
        format!(
            r#"{{"arguments":{{"torrent-added":{{"id":1,"name":"hello.txt","hashString":"{HELLO}"}}}},"result":"success","tag":11}}"#
        )
    );
    let t = fx2.svc.registry().torrents().get(1).unwrap().clone();
    assert_eq!(
        (t.running, t.directory, t.labels),
        (false, PathBuf::from("/srv"), vec!["tv".to_string()])
    );
}

#[test]
fn torrent_add_refusals() {
    let mut fx = Fx::new();
    let hello = b64(&fixture("hello.torrent"));
    let cases: Vec<(Value, &str)> = vec![
        (json!({}), "no filename or metainfo specified"),
        (json!({"filename": ""}), "no filename or metainfo specified"),
        (json!({"filename": 5}), "argument \"filename\" must be a string"),
        (json!({"metainfo": []}), "argument \"metainfo\" must be a string"),
        (json!({"metainfo": hello, "filename": "/x"}), "give filename or metainfo, not both"),
        (json!({"metainfo": "!!!"}), "argument \"metainfo\" is not base64: Invalid symbol 33, offset 0."),
        (json!({"metainfo": b64(b"d4:infoi1ee")}), "bad metainfo: info is not a dictionary"),
        (json!({"metainfo": hello, "paused": "yes"}), "argument \"paused\" must be a boolean"),
        (json!({"metainfo": hello, "paused": 2}), "argument \"paused\" must be a boolean"),
        (json!({"metainfo": hello, "download-dir": "rel"}), "argument \"download-dir\" is not an absolute path: \"rel\""),
        (json!({"metainfo": hello, "download-dir": 1}), "argument \"download-dir\" must be a string"),
        (json!({"metainfo": hello, "labels": "a"}), "argument \"labels\" must be an array"),
        (json!({"metainfo": hello, "labels": [1]}), "argument \"labels\" must be an array of strings"),
        (json!({"metainfo": hello, "labels": [" "]}), "labels cannot be empty"),
        (json!({"metainfo": hello, "labels": ["a,b"]}), "labels cannot contain comma (,) character"),
        (json!({"metainfo": hello, "cookies": 1}), "argument \"cookies\" must be a string"),
        (json!({"metainfo": hello, "peer-limit": 7}), "tripcd has no per-torrent peer limit (peer-limit): each torrent may have 50 peers"),
        (json!({"metainfo": hello, "peer-limit": "7"}), "argument \"peer-limit\" must be an integer"),
        (json!({"metainfo": hello, "bandwidthPriority": 1}), "tripcd has no bandwidth priorities (bandwidthPriority)"),
        (json!({"metainfo": hello, "files-unwanted": [0]}), "tripcd downloads whole torrents at one priority (files-unwanted)"),
        (json!({"metainfo": hello, "priority-high": [0]}), "tripcd downloads whole torrents at one priority (priority-high)"),
        (json!({"metainfo": hello, "files-wanted": ["0"]}), "argument \"files-wanted\" must be an array of integers"),
        (json!({"filename": "relative.torrent"}), "filename must be an absolute path, an http(s) URL or a magnet link, not \"relative.torrent\""),
        (json!({"filename": "ftp://x/y"}), "cannot fetch \"ftp://x/y\": only http and https URLs are fetched"),
        (json!({"filename": "magnet:?dn=x"}), "bad magnet link: magnet link without an info hash (xt)"),
        (json!({"filename": "/nonexistent/x.torrent"}), "file not found: /nonexistent/x.torrent"),
    ];
    for (args, want) in cases {
        let body = json!({"method": "torrent-add", "arguments": args}).to_string();
        assert_eq!(fx.refused(&body), want, "{body}");
    }
    assert!(fx.svc.registry().torrents().is_empty());
    // What is so already is accepted.
    let body = json!({"method": "torrent-add", "arguments": {"metainfo": hello,
        "peer-limit": 50, "bandwidthPriority": 0, "files-wanted": [0], "priority-normal": [],
        "files-unwanted": []}});
    assert_eq!(fx.json(&body.to_string())["result"], "success");
}

// --- torrent-get ---

#[test]
fn torrent_get_objects_and_table() {
    let mut fx = Fx::new();
    fx.add("hello.torrent", true);
    fx.add("multi.torrent", true);
    let body = r#"{"method":"torrent-get","tag":39693,"arguments":{"fields":["id","name","totalSize","id","nonsense"],"ids":[2,1]}}"#;
    let r = fx.call(body);
    assert!(!r.durable);
    assert_eq!(
        String::from_utf8(r.body).unwrap(),
        r#"{"arguments":{"torrents":[{"id":2,"name":"multi","totalSize":51600},{"id":1,"name":"hello.txt","totalSize":50000}]},"result":"success","tag":39693}"#
    );
    let body = r#"{"method":"torrent-get","arguments":{"fields":["id","name","status"],"format":"table"}}"#;
    assert_eq!(
        fx.text(body),
        r#"{"arguments":{"torrents":[["id","name","status"],[1,"hello.txt",0],[2,"multi",0]]},"result":"success"}"#
    );
    let body = r#"{"method":"torrent-get","arguments":{"fields":["id"],"format":"objects"}}"#;
    assert_eq!(
        fx.text(body),
        r#"{"arguments":{"torrents":[{"id":1},{"id":2}]},"result":"success"}"#
    );
}

#[test]
fn torrent_get_ids_in_every_form() {
    let mut fx = Fx::new();
    fx.add("hello.torrent", true);
    fx.add("multi.torrent", true);
    let ids = |fx: &mut Fx, ids: Value| -> Vec<u64> {
        fx.get(&["id"], ids)
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(ids(&mut fx, Value::Null), [1, 2]);
    assert_eq!(ids(&mut fx, json!(2)), [2]);
    assert_eq!(ids(&mut fx, json!(2.0)), [2]);
    assert_eq!(ids(&mut fx, json!(9)), Vec::<u64>::new());
    assert_eq!(ids(&mut fx, json!(-1)), Vec::<u64>::new());
    assert_eq!(ids(&mut fx, json!(MULTI)), [2]);
    assert_eq!(
        ids(&mut fx, json!([HELLO.to_uppercase(), 2, 1, 2, 77])),
        [1, 2]
    );
    assert_eq!(ids(&mut fx, json!([])), Vec::<u64>::new());
    assert_eq!(ids(&mut fx, json!("recently-active")), [1, 2]);

    for (bad, want) in [
        (
            json!(true),
            "argument \"ids\" must be an id, an info hash, a list of them, or \"recently-active\"",
        ),
        (
            json!({}),
            "argument \"ids\" must be an id, an info hash, a list of them, or \"recently-active\"",
        ),
        (
            json!(1.5),
            "argument \"ids\" must be an id, an info hash, a list of them, or \"recently-active\"",
        ),
        (
            json!([1, null]),
            "argument \"ids\" must be an id, an info hash, a list of them, or \"recently-active\"",
        ),
        (
            json!("recent"),
            "argument \"ids\": \"recent\" is neither a torrent id nor an info hash",
        ),
        (
            json!(["abc"]),
            "argument \"ids\": \"abc\" is neither a torrent id nor an info hash",
        ),
    ] {
        let body = json!({"method": "torrent-get", "arguments": {"fields": ["id"], "ids": bad}});
        assert_eq!(fx.refused(&body.to_string()), want);
    }
    let body = json!({"method": "torrent-get", "arguments": {"fields": ["id"], "ids": vec![1; ids::MAX_IDS + 1]}});
    assert_eq!(
        fx.refused(&body.to_string()),
        "argument \"ids\" names 100001 torrents, more than the 100000 allowed"
    );
}

#[test]
fn torrent_get_argument_errors() {
    let mut fx = Fx::new();
    for (args, want) in [
        (json!({}), "no fields specified"),
        (
            json!({"fields": "id"}),
            "argument \"fields\" must be an array",
        ),
        (
            json!({"fields": ["id", 3]}),
            "argument \"fields\" must be an array of strings",
        ),
        (
            json!({"fields": ["id"], "format": "csv"}),
            "argument \"format\" must be \"objects\" or \"table\"",
        ),
        (
            json!({"fields": ["id"], "format": 1}),
            "argument \"format\" must be a string",
        ),
    ] {
        let body = json!({"method": "torrent-get", "arguments": args}).to_string();
        assert_eq!(fx.refused(&body), want, "{body}");
    }
    let body = json!({"method": "torrent-get", "arguments": {"fields": vec!["id"; 257]}});
    assert_eq!(
        fx.refused(&body.to_string()),
        "argument \"fields\" has 257 elements, more than the 256 allowed"
    );
}

#[test]
fn recently_active_lists_changes_of_the_last_minute_and_removals() {
    let mut fx = Fx::new();
    fx.add("hello.torrent", true);
    fx.add("multi.torrent", true);
    fx.elapsed = 61;
    let recent =
        r#"{"method":"torrent-get","arguments":{"fields":["id"],"ids":"recently-active"}}"#;
    assert_eq!(
        fx.text(recent),
        r#"{"arguments":{"torrents":[],"removed":[]},"result":"success"}"#
    );
    fx.call(r#"{"method":"torrent-start","arguments":{"ids":[2]}}"#);
    fx.call(r#"{"method":"torrent-remove","arguments":{"ids":1}}"#);
    assert_eq!(
        fx.text(recent),
        r#"{"arguments":{"torrents":[{"id":2}],"removed":[1]},"result":"success"}"#
    );
    fx.elapsed = 122;
    assert_eq!(
        fx.text(recent),
        r#"{"arguments":{"torrents":[],"removed":[]},"result":"success"}"#
    );
    // Moving data is activity now.
    fx.svc.registry_mut().transfer_mut(2).unwrap().upload_rate = 5;
    assert_eq!(
        fx.text(recent),
        r#"{"arguments":{"torrents":[{"id":2}],"removed":[]},"result":"success"}"#
    );
}

/// The fields the 3.00 web interface asks for (torrent.js: Metadata,
/// Stats, InfoExtra, StatsExtra).
const WEB_UI_FIELDS: &[&str] = &[
    "id",
    "addedDate",
    "name",
    "totalSize",
    "error",
    "errorString",
    "eta",
    "isFinished",
    "isStalled",
    "leftUntilDone",
    "metadataPercentComplete",
    "peersConnected",
    "peersGettingFromUs",
    "peersSendingToUs",
    "percentDone",
    "queuePosition",
    "rateDownload",
    "rateUpload",
    "recheckProgress",
    "seedRatioMode",
    "seedRatioLimit",
    "sizeWhenDone",
    "status",
    "trackers",
    "downloadDir",
    "uploadedEver",
    "uploadRatio",
    "webseedsSendingToUs",
    "comment",
    "creator",
    "dateCreated",
    "files",
    "hashString",
    "isPrivate",
    "pieceCount",
    "pieceSize",
    "activityDate",
    "corruptEver",
    "desiredAvailable",
    "downloadedEver",
    "fileStats",
    "haveUnchecked",
    "haveValid",
    "peers",
    "startDate",
    "trackerStats",
];

#[test]
fn every_field_of_the_web_interface_is_answered_with_and_without_metadata() {
    let mut fx = Fx::new();
    fx.add("hello.torrent", false);
    let link = format!("magnet:?xt=urn:btih:{MULTI}&dn=from+a+link");
    let body = json!({"method": "torrent-add", "arguments": {"filename": link}});
    assert_eq!(fx.json(&body.to_string())["result"], "success");
    let every: Vec<&str> = fields::FIELDS.iter().map(|(n, _)| *n).collect();
    for names in [WEB_UI_FIELDS, &every[..]] {
        for t in fx.get(names, Value::Null).as_array().unwrap() {
            let got: Vec<&str> = t.as_object().unwrap().keys().map(String::as_str).collect();
            let mut want = names.to_vec();
            want.sort_unstable();
            assert_eq!(got, want);
        }
    }
    let magnet = &fx.get(&every, json!(2))[0];
    assert_eq!(magnet["name"], "from a link");
    assert_eq!(magnet["status"], 4, "fetching its metadata: downloading");
    assert_eq!(magnet["metadataPercentComplete"], 0);
    assert_eq!(magnet["percentDone"], 0);
    assert_eq!(magnet["totalSize"], 0);
    assert_eq!(magnet["pieces"], "");
    assert_eq!(magnet["files"], json!([]));
    assert_eq!(magnet["file-count"], 0);
    assert_eq!(magnet["trackers"], json!([]));
    assert_eq!(
        magnet["magnetLink"],
        format!("magnet:?xt=urn:btih:{MULTI}&dn=from%20a%20link")
    );
}

#[test]
fn a_torrent_in_detail() {
    let mut fx = Fx::new();
    let data = fixture_path("data");
    let body = json!({"method": "torrent-add", "arguments": {
        "metainfo": b64(&fixture("hello.torrent")), "download-dir": data}});
    fx.call(&body.to_string());
    assert_eq!(
        fx.get(&["status", "recheckProgress"], Value::Null)[0],
        json!({"status": 1, "recheckProgress": 0})
    );
    fx.check_all();
    let names = [
        "status",
        "percentDone",
        "haveValid",
        "leftUntilDone",
        "pieces",
        "pieceCount",
        "pieceSize",
        "files",
        "fileStats",
        "priorities",
        "wanted",
        "trackers",
        "magnetLink",
        "trackerList",
        "isPrivate",
        "comment",
        "creator",
        "dateCreated",
        "uploadRatio",
        "eta",
        "error",
        "doneDate",
        "startDate",
        "primary-mime-type",
        "downloadDir",
        "peer-limit",
        "queuePosition",
    ];
    let t = &fx.get(&names, Value::Null)[0];
    let tracker = "http://tracker.example.org:6969/announce";
    let backup = "udp://backup.example.net:1337/announce";
    assert_eq!(
        *t,
        json!({
            "status": 6, "percentDone": 1, "haveValid": 50000, "leftUntilDone": 0,
            "pieces": "8A==", "pieceCount": 4, "pieceSize": 16384,
            "files": [{"bytesCompleted": 50000, "length": 50000, "name": "hello.txt"}],
            "fileStats": [{"bytesCompleted": 50000, "priority": 0, "wanted": true}],
            "priorities": [0], "wanted": [1],
            "trackers": [
                {"announce": tracker, "id": 0, "scrape": "http://tracker.example.org:6969/scrape", "tier": 0},
                {"announce": backup, "id": 1, "scrape": backup, "tier": 1},
            ],
            "magnetLink": format!("magnet:?xt=urn:btih:{HELLO}&dn=hello.txt&tr=http%3A%2F%2Ftracker.example.org%3A6969%2Fannounce&tr=udp%3A%2F%2Fbackup.example.net%3A1337%2Fannounce"),
            "trackerList": format!("{tracker}\n\n{backup}\n"),
            "isPrivate": false, "comment": "fixture: single file", "creator": "mkvectors",
            "dateCreated": 1700000000, "uploadRatio": 0, "eta": -1, "error": 0,
            "doneDate": WALL, "startDate": WALL, "primary-mime-type": "text/plain",
            "downloadDir": data, "peer-limit": 50, "queuePosition": 0,
        })
    );
    // The engine's figures, as the core reports them.
    {
        let mut reg = fx.svc.registry_mut();
        let x = reg.transfer_mut(1).unwrap();
        x.uploaded = 25_000;
        x.tracker = Some((0, 0));
        x.scrape = [3, 4, 5];
        x.tracker_message = Some(("tracker-warning", "slow down".into()));
        x.peers = 1;
        x.peer_list = vec![crate::registry::PeerInfo {
            address: "[::1]:6881".into(),
            client: "Transmission 4.0.6".into(),
            upload_rate: 900,
            progress: 0.5,
            interested: false,
            choked: true,
            peer_interested: true,
            peer_choked: false,
            incoming: true,
            ..Default::default()
        }];
    }
    let t = &fx.get(
        &[
            "uploadRatio",
            "error",
            "errorString",
            "peers",
            "trackerStats",
            "peersConnected",
        ],
        Value::Null,
    )[0];
    assert_eq!(t["uploadRatio"], 0.5);
    assert_eq!(
        (t["error"].clone(), t["errorString"].clone()),
        (json!(1), json!("slow down"))
    );
    assert_eq!(
        t["peers"],
        json!([{"address": "::1", "clientIsChoked": true, "clientIsInterested": false,
            "clientName": "Transmission 4.0.6", "flagStr": "UI", "isDownloadingFrom": false,
            "isEncrypted": false, "isIncoming": true, "isUTP": false, "isUploadingTo": true,
            "peerIsChoked": false, "peerIsInterested": true, "port": 6881, "progress": 0.5,
            "rateToClient": 0, "rateToPeer": 900}])
    );
    let stats = t["trackerStats"].as_array().unwrap();
    assert_eq!(
        (
            stats[0]["seederCount"].clone(),
            stats[0]["leecherCount"].clone(),
            stats[0]["downloadCount"].clone()
        ),
        (json!(3), json!(4), json!(5))
    );
    assert_eq!(stats[0]["lastAnnounceResult"], "slow down");
    assert_eq!(stats[0]["hasAnnounced"], true);
    assert_eq!(stats[0]["announceState"], 1);
    assert_eq!(stats[0]["host"], "http://tracker.example.org:6969");
    assert_eq!(stats[0]["isBackup"], false);
    assert_eq!(stats[1]["seederCount"], -1);
    assert_eq!(stats[1]["hasAnnounced"], false);
    assert_eq!(stats[1]["host"], "udp://backup.example.net:1337");
}

#[test]
fn files_of_a_torrent_of_several_files_and_partial_progress() {
    let mut fx = Fx::new();
    let dir = fx.dir.path().join("data");
    copy_dir(&fixture_path("data/multi"), &dir.join("multi"));
    // Piece 0 (bytes 0..32768) bad: a.bin whole and 7168 bytes of b.txt.
    let mut a = std::fs::read(dir.join("multi/a.bin")).unwrap();
    a[0] ^= 1;
    std::fs::write(dir.join("multi/a.bin"), a).unwrap();
    let body = json!({"method": "torrent-add", "arguments": {
        "metainfo": b64(&fixture("multi.torrent")), "download-dir": dir, "paused": true}});
    fx.call(&body.to_string());
    fx.call(r#"{"method":"torrent-verify"}"#);
    fx.check_all();
    let t = &fx.get(
        &[
            "files",
            "fileStats",
            "haveValid",
            "percentDone",
            "status",
            "isPrivate",
            "pieces",
        ],
        Value::Null,
    )[0];
    assert_eq!(
        *t,
        json!({
            "files": [
                {"bytesCompleted": 0, "length": 25600, "name": "multi/a.bin"},
                {"bytesCompleted": 18832, "length": 26000, "name": "multi/docs/b.txt"},
            ],
            "fileStats": [
                {"bytesCompleted": 0, "priority": 0, "wanted": true},
                {"bytesCompleted": 18832, "priority": 0, "wanted": true},
            ],
            "haveValid": 18832, "percentDone": 0.3650, "status": 0, "isPrivate": true,
            "pieces": "QA==",
        })
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

// --- actions ---

#[test]
fn actions_change_the_registry_and_their_replies_wait_for_the_commit() {
    let mut fx = Fx::new();
    fx.add("hello.torrent", true);
    fx.add("multi.torrent", true);
    fx.commit();
    let r = fx.call(r#"{"method":"torrent-start","arguments":{"ids":[1]},"tag":1}"#);
    assert!(r.durable && !r.rebinds);
    assert_eq!(r.tag, Some(1));
    assert_eq!(
        String::from_utf8(r.body).unwrap(),
        r#"{"arguments":{},"result":"success","tag":1}"#
    );
    assert!(fx.svc.registry().torrents().get(1).unwrap().running);
    let r = fx.call(r#"{"method":"torrent-start-now","arguments":{"ids":[1]}}"#);
    assert!(!r.durable, "already running: nothing changed");
    let r = fx.call(r#"{"method":"torrent-stop"}"#);
    assert!(r.durable);
    assert!(fx.svc.registry().torrents().iter().all(|t| !t.running));
    let r = fx.call(r#"{"method":"torrent-verify","arguments":{"ids":2}}"#);
    assert!(r.durable);
    assert_eq!(fx.get(&["status"], json!(2))[0]["status"], 1);
    let r = fx.call(r#"{"method":"torrent-get","arguments":{"fields":["id"]}}"#);
    assert!(!r.durable, "a read never waits");
    for m in [
        "torrent-start",
        "torrent-stop",
        "torrent-verify",
        "torrent-reannounce",
        "torrent-remove",
    ] {
        let body = json!({"method": m, "arguments": {"ids": {}}}).to_string();
        assert!(
            fx.refused(&body).starts_with("argument \"ids\" must be"),
            "{m}"
        );
    }
    let body = r#"{"method":"torrent-remove","arguments":{"ids":[1],"delete-local-data":"no"}}"#;
    assert_eq!(
        fx.refused(body),
        "argument \"delete-local-data\" must be a boolean"
    );
    let r = fx.call(r#"{"method":"torrent-remove","arguments":{"ids":[1,2]}}"#);
    assert!(r.durable && r.delete_data.is_empty());
    assert!(fx.svc.registry().torrents().is_empty());
}

#[test]
fn reannounce_names_running_torrents_with_trackers() {
    let mut fx = Fx::new();
    fx.add("hello.torrent", false);
    fx.add("multi.torrent", true);
    let body = json!({"method": "torrent-add", "arguments": {"filename": format!("magnet:?xt=urn:btih:{}", "11".repeat(20))}});
    fx.call(&body.to_string());
    let r = fx.call(r#"{"method":"torrent-reannounce"}"#);
    assert!(!r.durable);
    assert_eq!(r.reannounce, [1], "2 is stopped, 3 has no tracker");
    assert_eq!(
        String::from_utf8(r.body).unwrap(),
        r#"{"arguments":{},"result":"success"}"#
    );
}

#[test]
fn removing_with_its_data_deletes_only_the_torrents_files_and_follows_no_link() {
    let mut fx = Fx::new();
    let dir = fx.dir.path().join("data");
    copy_dir(&fixture_path("data/multi"), &dir.join("multi"));
    std::fs::write(dir.join("multi/mine.txt"), b"the user's").unwrap();
    std::fs::write(dir.join("hello.txt"), b"not the torrent's folder").unwrap();
    // b.txt's folder is a link to a folder outside: never followed.
    let outside = fx.dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("b.txt"), b"precious").unwrap();
    std::fs::remove_dir_all(dir.join("multi/docs")).unwrap();
    std::os::unix::fs::symlink(&outside, dir.join("multi/docs")).unwrap();
    let body = json!({"method": "torrent-add", "arguments": {
        "metainfo": b64(&fixture("multi.torrent")), "download-dir": dir, "paused": true}});
    fx.call(&body.to_string());
    let link = format!("magnet:?xt=urn:btih:{HELLO}");
    fx.call(&json!({"method": "torrent-add", "arguments": {"filename": link}}).to_string());

    let r = fx
        .call(r#"{"method":"torrent-remove","arguments":{"ids":[1,2],"delete-local-data":true}}"#);
    assert!(r.durable);
    assert_eq!(
        r.delete_data.len(),
        1,
        "the magnet torrent has no known files"
    );
    assert_eq!(r.delete_data[0].torrent(), 1);
    assert!(
        dir.join("multi/a.bin").exists(),
        "nothing deleted before the front says"
    );
    let err = r.delete_data[0].run().unwrap_err();
    assert!(
        err.starts_with("torrent 1: 1 file(s) not deleted; the first: "),
        "{err}"
    );
    assert!(
        err.ends_with(
            "multi/docs/b.txt: a symbolic link or a file stands where a folder should; left alone"
        ),
        "{err}"
    );
    assert!(!dir.join("multi/a.bin").exists());
    assert_eq!(std::fs::read(outside.join("b.txt")).unwrap(), b"precious");
    assert!(dir.join("multi/mine.txt").exists());
    assert!(dir.join("hello.txt").exists());
    // Run again: what is gone is fine.
    std::fs::remove_file(dir.join("multi/docs")).unwrap();
    r.delete_data[0].run().unwrap();
    std::fs::remove_file(dir.join("multi/mine.txt")).unwrap();
    r.delete_data[0].run().unwrap();
    assert!(!dir.join("multi").exists(), "its empty folder goes too");
}

#[test]
fn set_location_moves_the_files_or_only_points_there() {
    let mut fx = Fx::new();
    let old = fx.dir.path().join("old");
    copy_dir(&fixture_path("data/multi"), &old.join("multi"));
    let body = json!({"method": "torrent-add", "arguments": {
        "metainfo": b64(&fixture("multi.torrent")), "download-dir": old, "paused": true}});
    fx.call(&body.to_string());
    fx.commit();
    let new = fx.dir.path().join("new");
    let body = json!({"method": "torrent-set-location", "arguments": {"ids": [1], "location": new, "move": true}});
    let r = fx.call(&body.to_string());
    assert!(r.durable);
    assert_eq!(
        String::from_utf8(r.body).unwrap(),
        r#"{"arguments":{},"result":"success"}"#
    );
    assert!(new.join("multi/docs/b.txt").exists() && new.join("multi/a.bin").exists());
    assert!(!old.join("multi").exists());
    fx.check_all();
    assert_eq!(
        fx.get(&["downloadDir", "percentDone", "editDate"], Value::Null)[0],
        json!({"downloadDir": new, "percentDone": 1, "editDate": WALL})
    );

    // A file in the way: nothing moves.
    copy_dir(&fixture_path("data/multi"), &old.join("multi"));
    std::fs::remove_file(old.join("multi/a.bin")).unwrap();
    let body =
        json!({"method": "torrent-set-location", "arguments": {"location": old, "move": true}});
    let err = fx.refused(&body.to_string());
    assert!(
        err.starts_with("cannot move ") && err.ends_with("a file of that name is there already"),
        "{err}"
    );
    assert!(new.join("multi/a.bin").exists() && new.join("multi/docs/b.txt").exists());
    // Without moving: only pointed there, and checked again.
    let body = json!({"method": "torrent-set-location", "arguments": {"location": old}});
    assert!(fx.call(&body.to_string()).durable);
    fx.check_all();
    assert_eq!(
        fx.get(&["percentDone"], Value::Null)[0]["percentDone"],
        0.3650
    );
    for (args, want) in [
        (json!({}), "no location"),
        (
            json!({"location": 1}),
            "argument \"location\" must be a string",
        ),
        (
            json!({"location": "x"}),
            "argument \"location\" is not an absolute path: \"x\"",
        ),
        (
            json!({"location": "/x", "move": "y"}),
            "argument \"move\" must be a boolean",
        ),
    ] {
        let body = json!({"method": "torrent-set-location", "arguments": args}).to_string();
        assert_eq!(fx.refused(&body), want);
    }
}

#[test]
fn torrent_set_keeps_labels_and_refuses_what_tripcd_has_not() {
    let mut fx = Fx::new();
    fx.add("hello.torrent", true);
    fx.add("multi.torrent", true);
    fx.commit();
    let r = fx.call(r#"{"method":"torrent-set","arguments":{"ids":[1],"labels":["tv","hd"],"honorsSessionLimits":true,"seedRatioMode":0,"priority-normal":[0],"unknownKey":1}}"#);
    assert!(r.durable);
    assert_eq!(
        String::from_utf8(r.body).unwrap(),
        r#"{"arguments":{},"result":"success"}"#
    );
    assert_eq!(
        fx.get(&["labels"], json!(1))[0]["labels"],
        json!(["tv", "hd"])
    );
    fx.commit();
    let r = fx.call(r#"{"method":"torrent-set","arguments":{"ids":[1],"labels":["tv","hd"]}}"#);
    assert!(!r.durable, "the same labels change nothing");
    for (args, want) in [
        (
            json!({"downloadLimit": 100}),
            "tripcd has no per-torrent speed limits (downloadLimit)",
        ),
        (
            json!({"downloadLimited": true}),
            "tripcd has no per-torrent speed limits (downloadLimited)",
        ),
        (
            json!({"uploadLimited": 1}),
            "tripcd has no per-torrent speed limits (uploadLimited)",
        ),
        (
            json!({"seedRatioLimit": 2.5}),
            "tripcd has no a seed ratio limit (seedRatioLimit)",
        ),
        (
            json!({"seedRatioMode": 1}),
            "tripcd has no a seed ratio limit (seedRatioMode)",
        ),
        (
            json!({"seedIdleMode": 1}),
            "tripcd has no an idle-seeding limit (seedIdleMode)",
        ),
        (
            json!({"bandwidthPriority": -1}),
            "tripcd has no bandwidth priorities (bandwidthPriority)",
        ),
        (
            json!({"group": "slow"}),
            "tripcd has no bandwidth groups (group)",
        ),
        (
            json!({"honorsSessionLimits": false}),
            "tripcd has no exemptions from the session's limits (honorsSessionLimits)",
        ),
        (
            json!({"peer-limit": 10}),
            "tripcd has no per-torrent peer limit (peer-limit): each torrent may have 50 peers",
        ),
        (
            json!({"queuePosition": 0}),
            "tripcd keeps no queue (queuePosition)",
        ),
        (
            json!({"queuePosition": "0"}),
            "argument \"queuePosition\" must be an integer",
        ),
        (
            json!({"trackerAdd": ["http://x/announce"]}),
            "tripcd cannot edit a torrent's trackers (trackerAdd)",
        ),
        (
            json!({"trackerList": ""}),
            "tripcd cannot edit a torrent's trackers (trackerList)",
        ),
        (
            json!({"files-unwanted": []}),
            "tripcd downloads whole torrents at one priority (files-unwanted)",
        ),
        (
            json!({"priority-low": [0]}),
            "tripcd downloads whole torrents at one priority (priority-low)",
        ),
        (
            json!({"files-wanted": [1]}),
            "file index out of range (files-wanted)",
        ),
        (
            json!({"files-wanted": [-1]}),
            "file index out of range (files-wanted)",
        ),
        (
            json!({"labels": [1]}),
            "argument \"labels\" must be an array of strings",
        ),
        (
            json!({"labels": vec!["x"; 65]}),
            "argument \"labels\" has 65 elements, more than the 64 allowed",
        ),
        (
            json!({"location": "here"}),
            "argument \"location\" is not an absolute path: \"here\"",
        ),
        (
            json!({"seedRatioLimit": "1"}),
            "argument \"seedRatioLimit\" must be a number",
        ),
    ] {
        let mut args = args;
        args["ids"] = json!([1]);
        let body = json!({"method": "torrent-set", "arguments": args}).to_string();
        assert_eq!(fx.refused(&body), want, "{body}");
    }
    assert_eq!(
        fx.get(&["labels"], json!(1))[0]["labels"],
        json!(["tv", "hd"])
    );
    let body =
        json!({"method": "torrent-set", "arguments": {"ids": [2], "location": "/elsewhere"}});
    assert!(fx.call(&body.to_string()).durable);
    assert_eq!(
        fx.get(&["downloadDir"], json!(2))[0]["downloadDir"],
        "/elsewhere"
    );
}

#[test]
fn queue_moves_renames_and_groups_are_refused_or_empty() {
    let mut fx = Fx::new();
    fx.add("hello.torrent", true);
    for m in [
        "queue-move-top",
        "queue-move-up",
        "queue-move-down",
        "queue-move-bottom",
    ] {
        let body = json!({"method": m, "arguments": {"ids": [1]}}).to_string();
        assert_eq!(
            fx.refused(&body),
            "tripcd keeps no queue: every started torrent runs at once"
        );
        let body = json!({"method": m, "arguments": {"ids": false}}).to_string();
        assert!(fx.refused(&body).starts_with("argument \"ids\""));
    }
    let body =
        r#"{"method":"torrent-rename-path","arguments":{"ids":[1],"path":"hello.txt","name":"x"}}"#;
    assert_eq!(
        fx.refused(body),
        "tripcd cannot rename a torrent's files (torrent-rename-path)"
    );
    assert_eq!(
        fx.text(r#"{"method":"group-get"}"#),
        r#"{"arguments":{"group":[]},"result":"success"}"#
    );
    assert_eq!(
        fx.text(r#"{"method":"group-get","arguments":{"group":["a"]}}"#),
        r#"{"arguments":{"group":[]},"result":"success"}"#
    );
    assert_eq!(
        fx.refused(r#"{"method":"group-get","arguments":{"group":5}}"#),
        "argument \"group\" must be a string or an array of strings"
    );
    assert_eq!(
        fx.refused(r#"{"method":"group-set","arguments":{"name":"a"}}"#),
        "tripcd has no bandwidth groups (group-set)"
    );
}

// --- session ---

#[test]
fn session_get_answers_every_field_or_those_asked_for() {
    let mut fx = Fx::new();
    let all = fx.json(r#"{"method":"session-get"}"#);
    let keys: Vec<&str> = all["arguments"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut want: Vec<&str> = session::field_names().collect();
    want.sort_unstable();
    assert_eq!(keys, want);
    // What the 3.00 web interface's preferences dialog and
    // transmission-remote -si read.
    for k in [
        "alt-speed-down",
        "alt-speed-time-begin",
        "alt-speed-time-day",
        "alt-speed-time-enabled",
        "alt-speed-time-end",
        "alt-speed-up",
        "blocklist-enabled",
        "blocklist-size",
        "blocklist-url",
        "dht-enabled",
        "download-dir",
        "encryption",
        "idle-seeding-limit",
        "idle-seeding-limit-enabled",
        "lpd-enabled",
        "peer-limit-global",
        "peer-limit-per-torrent",
        "peer-port",
        "peer-port-random-on-start",
        "pex-enabled",
        "port-forwarding-enabled",
        "rename-partial-files",
        "seedRatioLimit",
        "seedRatioLimited",
        "speed-limit-down",
        "speed-limit-down-enabled",
        "speed-limit-up",
        "speed-limit-up-enabled",
        "start-added-torrents",
        "utp-enabled",
        "alt-speed-enabled",
        "cache-size-mb",
        "config-dir",
        "rpc-version",
        "rpc-version-minimum",
        "version",
    ] {
        assert!(keys.contains(&k), "{k}");
    }
    let body = r#"{"method":"session-get","arguments":{"fields":["peer-port","speed-limit-down","speed-limit-down-enabled","encryption","dht-enabled","download-dir","start-added-torrents","rpc-version-semver","config-dir","download-dir-free-space","units","session-id","rpc-whitelist","nope","peer-port"]}}"#;
    let state = fx.svc.registry().dir().display().to_string();
    assert_eq!(
        fx.text(body),
        format!(
            r#"{{"arguments":{{"peer-port":9090,"speed-limit-down":100,"speed-limit-down-enabled":false,"encryption":"preferred","dht-enabled":true,"download-dir":"/dl","start-added-torrents":true,"rpc-version-semver":"5.3.0","config-dir":"{state}","download-dir-free-space":1000,"units":{{"speed-units":["KiB/s","MiB/s","GiB/s","TiB/s"],"speed-bytes":1024,"size-units":["kB","MB","GB","TB"],"size-bytes":1000,"memory-units":["KiB","MiB","GiB","TiB"],"memory-bytes":1024}},"session-id":"abc123","rpc-whitelist":"127.0.0.1,::1"}},"result":"success"}}"#
        )
    );
    assert_eq!(
        fx.refused(r#"{"method":"session-get","arguments":{"fields":[1]}}"#),
        "argument \"fields\" must be an array of strings"
    );
}

#[test]
fn session_set_changes_settings_in_one_update_and_moves_the_port() {
    let mut fx = Fx::new();
    let r = fx.call(r#"{"method":"session-set","arguments":{"peer-port":51413,"speed-limit-down":250,"speed-limit-up-enabled":true,"encryption":"required","pex-enabled":false,"dht-enabled":0,"start-added-torrents":false,"download-dir":"/srv/dl","port-forwarding-enabled":true,"version":"ignored","units":{},"alt-speed-enabled":false,"utp-enabled":false},"tag":2}"#);
    assert!(r.durable && r.rebinds);
    assert_eq!(
        String::from_utf8(r.body).unwrap(),
        r#"{"arguments":{},"result":"success","tag":2}"#
    );
    assert_eq!(fx.svc.registry().changes(), 1, "one change");
    let s = fx.svc.registry().settings().clone();
    assert_eq!(
        (s.port, s.downlimit, s.downlimit_kept, s.uplimit),
        (51413, -1, 250, 100)
    );
    assert_eq!(
        (s.encryption, s.pex, s.dht, s.autostart, s.automap),
        (
            crate::registry::Encryption::Required,
            false,
            false,
            false,
            true
        )
    );
    assert_eq!(s.directory, PathBuf::from("/srv/dl"));
    let r = fx.call(r#"{"method":"session-set","arguments":{"speed-limit-down-enabled":true}}"#);
    assert!(r.durable && !r.rebinds);
    assert_eq!(
        fx.svc.registry().settings().downlimit,
        250,
        "the kept number"
    );
    fx.call(r#"{"method":"session-set","arguments":{"speed-limit-down":300}}"#);
    assert_eq!(fx.svc.registry().settings().downlimit, 300);
    fx.call(r#"{"method":"session-set","arguments":{"speed-limit-down-enabled":false,"speed-limit-up":5}}"#);
    let v = fx.json(r#"{"method":"session-get","arguments":{"fields":["speed-limit-down","speed-limit-down-enabled","speed-limit-up","speed-limit-up-enabled"]}}"#);
    assert_eq!(
        v["arguments"],
        json!({"speed-limit-down": 300, "speed-limit-down-enabled": false, "speed-limit-up": 5, "speed-limit-up-enabled": true})
    );
    assert_eq!(fx.svc.registry().settings().uplimit, 5);
    // The IPC's spelling of "tolerated" is kept.
    fx.svc
        .registry_mut()
        .update_settings(|s| s.encryption = crate::registry::Encryption::Plaintext);
    let r = fx.call(r#"{"method":"session-set","arguments":{"encryption":"tolerated"}}"#);
    assert!(!r.durable);
    let v = fx.json(r#"{"method":"session-get","arguments":{"fields":["encryption"]}}"#);
    assert_eq!(v["arguments"]["encryption"], "tolerated");
    let r = fx.call(r#"{"method":"session-set","arguments":{}}"#);
    assert!(!r.durable);
}

#[test]
fn session_set_refuses_wrong_types_and_missing_features_whole() {
    let mut fx = Fx::new();
    for (args, want) in [
        (
            json!({"peer-port": 70000}),
            "argument \"peer-port\" must be between 0 and 65535",
        ),
        (
            json!({"peer-port": "1"}),
            "argument \"peer-port\" must be an integer",
        ),
        (
            json!({"speed-limit-down": -5}),
            "argument \"speed-limit-down\" must be between 0 and 4294967295 (KiB/s)",
        ),
        (
            json!({"speed-limit-up": 1.5}),
            "argument \"speed-limit-up\" must be an integer",
        ),
        (
            json!({"speed-limit-up-enabled": "on"}),
            "argument \"speed-limit-up-enabled\" must be a boolean",
        ),
        (
            json!({"speed-limit-down-enabled": null}),
            "argument \"speed-limit-down-enabled\" must be a boolean",
        ),
        (
            json!({"encryption": "none"}),
            "argument \"encryption\" must be \"required\", \"preferred\" or \"tolerated\"",
        ),
        (
            json!({"encryption": 1}),
            "argument \"encryption\" must be a string",
        ),
        (
            json!({"pex-enabled": []}),
            "argument \"pex-enabled\" must be a boolean",
        ),
        (
            json!({"dht-enabled": 3}),
            "argument \"dht-enabled\" must be a boolean",
        ),
        (
            json!({"start-added-torrents": {}}),
            "argument \"start-added-torrents\" must be a boolean",
        ),
        (
            json!({"port-forwarding-enabled": "1"}),
            "argument \"port-forwarding-enabled\" must be a boolean",
        ),
        (
            json!({"download-dir": "dl"}),
            "argument \"download-dir\" is not an absolute path: \"dl\"",
        ),
        (
            json!({"download-dir": "/a\u{0}b"}),
            "argument \"download-dir\" contains a NUL byte",
        ),
        (
            json!({"alt-speed-enabled": true}),
            "tripcd has no alternative speed limits (alt-speed-enabled)",
        ),
        (
            json!({"alt-speed-up": 50}),
            "tripcd has no alternative speed limits (alt-speed-up)",
        ),
        (
            json!({"blocklist-enabled": true}),
            "tripcd has no blocklist (blocklist-enabled)",
        ),
        (
            json!({"utp-enabled": true}),
            "tripcd has no uTP yet (utp-enabled)",
        ),
        (
            json!({"lpd-enabled": true}),
            "tripcd has no local peer discovery yet (lpd-enabled)",
        ),
        (
            json!({"seedRatioLimited": true}),
            "tripcd has no seed ratio limit (seedRatioLimited)",
        ),
        (
            json!({"incomplete-dir-enabled": true}),
            "tripcd has no folder for incomplete torrents (incomplete-dir-enabled)",
        ),
        (
            json!({"script-torrent-done-enabled": true}),
            "tripcd has no external scripts (it has Rhai hooks) (script-torrent-done-enabled)",
        ),
        (
            json!({"download-queue-size": 5}),
            "tripcd has no download queue (download-queue-size)",
        ),
        (
            json!({"cache-size-mb": "4"}),
            "argument \"cache-size-mb\" must be an integer",
        ),
        (
            json!({"peer-limit-global": 10}),
            "tripcd's peer limits are set on its command line (peer-limit-global is 200)",
        ),
        (
            json!({"peer-limit-per-torrent": 10}),
            "tripcd's peer limits are set on its command line (peer-limit-per-torrent is 50)",
        ),
        // One bad setting refuses the others with it.
        (
            json!({"peer-port": 1, "utp-enabled": true}),
            "tripcd has no uTP yet (utp-enabled)",
        ),
    ] {
        let body = json!({"method": "session-set", "arguments": args}).to_string();
        assert_eq!(fx.refused(&body), want, "{body}");
    }
    assert_eq!(fx.svc.registry().settings().port, 9090);
    let r = fx.call(r#"{"method":"session-set","arguments":{"peer-limit-global":200,"blocklist-enabled":false,"seedRatioLimit":0}}"#);
    assert!(!r.durable, "what is so already");
    assert_eq!(
        String::from_utf8(r.body).unwrap(),
        r#"{"arguments":{},"result":"success"}"#
    );
}

#[test]
fn session_stats_free_space_port_test_blocklist_and_close() {
    let mut fx = Fx::new();
    fx.add("hello.torrent", false);
    fx.add("multi.torrent", true);
    {
        let mut reg = fx.svc.registry_mut();
        let x = reg.transfer_mut(1).unwrap();
        x.download_rate = 10;
        x.upload_rate = 3;
        x.downloaded = 1000;
        x.uploaded = 200;
    }
    fx.elapsed = 30;
    assert_eq!(
        fx.text(r#"{"method":"session-stats"}"#),
        r#"{"arguments":{"activeTorrentCount":1,"downloadSpeed":10,"pausedTorrentCount":1,"torrentCount":2,"uploadSpeed":3,"cumulative-stats":{"downloadedBytes":1000,"filesAdded":2,"secondsActive":30,"sessionCount":1,"uploadedBytes":200},"current-stats":{"downloadedBytes":1000,"filesAdded":2,"secondsActive":30,"sessionCount":1,"uploadedBytes":200}},"result":"success"}"#
    );
    assert_eq!(
        fx.text(r#"{"method":"free-space","arguments":{"path":"/srv"}}"#),
        r#"{"arguments":{"path":"/srv","size-bytes":1000,"total_size":5000},"result":"success"}"#
    );
    assert_eq!(
        fx.refused(r#"{"method":"free-space"}"#),
        "directory path argument is missing"
    );
    assert_eq!(
        fx.refused(r#"{"method":"free-space","arguments":{"path":"srv"}}"#),
        "argument \"path\" is not an absolute path: \"srv\""
    );
    assert_eq!(
        fx.refused(r#"{"method":"free-space","arguments":{"path":7}}"#),
        "argument \"path\" must be a string"
    );
    assert_eq!(
        fx.refused(r#"{"method":"port-test"}"#),
        "not tested: tripcd asks no outside service whether peer port 9090 can be reached; it is bound here"
    );
    fx.bound = false;
    assert_eq!(
        fx.text(r#"{"method":"port-test","tag":1}"#),
        r#"{"arguments":{"port-is-open":false},"result":"success","tag":1}"#
    );
    assert_eq!(
        fx.refused(r#"{"method":"blocklist-update"}"#),
        "tripcd has no blocklist (blocklist-update)"
    );
    assert!(!fx.svc.quitting());
    let r = fx.call(r#"{"method":"session-close"}"#);
    assert!(!r.durable);
    assert_eq!(
        String::from_utf8(r.body).unwrap(),
        r#"{"arguments":{},"result":"success"}"#
    );
    assert!(fx.svc.quitting());
}

// --- scripts, and the IPC beside ---

#[test]
fn script_keys_are_called_and_hooks_fire_for_rpc_changes() {
    let mut fx = Fx::new();
    let scripts = fx.dir.path().join("scripts");
    std::fs::create_dir(&scripts).unwrap();
    std::fs::write(
        scripts.join("t.rhai"),
        r#"
        on_event("torrent-added", |ev| { this.added = ev.id; });
        on_message("last-added", |v| reply("added", this.added ?? 0));
        on_message("echo", |v| v);
        on_message("nope", |v| failed("no such luck"));
        on_message("shape", |v| bad_format());
        on_message("quiet", |v| ());
        "#,
    )
    .unwrap();
    fx.svc.load_scripts(&scripts, Default::default()).unwrap();
    let call = |fx: &mut Fx, key: &str, value: Value| {
        let body =
            json!({"method": "tripcd-script-call", "arguments": {"key": key, "value": value}});
        fx.text(&body.to_string())
    };
    assert_eq!(
        call(&mut fx, "echo", json!({"a": [1, "x", true, null]})),
        r#"{"arguments":{"key":"echo","value":{"a":[1,"x",1,""]}},"result":"success"}"#
    );
    assert_eq!(
        call(&mut fx, "quiet", json!(1)),
        r#"{"arguments":{},"result":"success"}"#
    );
    assert_eq!(
        call(&mut fx, "nope", json!(1)),
        r#"{"arguments":{},"result":"no such luck"}"#
    );
    assert_eq!(
        call(&mut fx, "shape", json!(1)),
        r#"{"arguments":{},"result":"script key \"shape\" refused the value's shape (bad-format)"}"#
    );
    assert_eq!(
        call(&mut fx, "get-port", json!(1)),
        r#"{"arguments":{},"result":"no script handles key \"get-port\""}"#
    );
    assert_eq!(
        call(&mut fx, "missing", json!(1)),
        r#"{"arguments":{},"result":"no script handles key \"missing\""}"#
    );
    assert_eq!(
        call(&mut fx, "echo", json!(1.5)),
        r#"{"arguments":{},"result":"argument \"value\": 1.5 is not a 64-bit integer"}"#
    );
    assert_eq!(
        fx.refused(r#"{"method":"tripcd-script-call","arguments":{"value":1}}"#),
        "argument \"key\" is missing"
    );
    // A torrent added over the RPC: the hook hears of it once committed.
    fx.add("hello.torrent", true);
    fx.commit();
    fx.svc.run_hooks();
    assert_eq!(
        call(&mut fx, "last-added", json!("")),
        r#"{"arguments":{"key":"added","value":1},"result":"success"}"#
    );
}

#[test]
fn a_change_over_the_rpc_is_seen_over_the_ipc_in_the_same_turn_and_back() {
    let mut fx = Fx::new();
    fx.add("hello.torrent", true);
    let r = fx.call(r#"{"method":"torrent-start","arguments":{"ids":[1]}}"#);
    assert!(r.durable);
    let status = Benc::dict([
        ("id", Benc::List(vec![Benc::Int(1)])),
        (
            "type",
            Benc::List(vec![Benc::str("running"), Benc::str("state")]),
        ),
    ]);
    let d = fx.svc.dispatch(2, b"get-status", &status, true);
    assert!(!d.durable);
    assert_eq!(
        d.reply,
        Reply::data(
            "status",
            Benc::List(vec![Benc::dict([
                ("id", Benc::Int(1)),
                ("running", Benc::Int(1)),
                ("state", Benc::str("waiting to checking")),
            ])])
        )
    );
    let d = fx.svc.dispatch(2, b"port", &Benc::Int(6881), true);
    assert!(d.durable && d.rebinds);
    let v = fx.json(r#"{"method":"session-get","arguments":{"fields":["peer-port"]}}"#);
    assert_eq!(v["arguments"]["peer-port"], 6881);
    fx.svc.dispatch(2, b"stop-all", &Benc::empty(), true);
    assert_eq!(fx.get(&["status"], json!(1))[0]["status"], 0);
}

#[test]
fn a_reply_over_its_limit_is_refused_whole() {
    let mut fx = Fx::new();
    fx.add("hello.torrent", true);
    let free = |_: &Path| Err(std::io::Error::other("unused"));
    let ctx = Context {
        now: fx.t0,
        wall: UNIX_EPOCH + Duration::from_secs(WALL),
        started: fx.t0,
        version: "v",
        free_space: &free,
        rpc: &fx.rpc,
        session_id: "",
        peer_port_bound: true,
        peer_limit_global: 1,
        peer_limit_per_torrent: 1,
    };
    let mut call_with = |limit: usize| {
        let args = json!({"fields": ["id", "name", "trackerStats"]});
        let map = args.as_object().unwrap().clone();
        run(
            &mut fx.svc,
            &ctx,
            Some(1),
            torrent::get,
            Args::new(Some(&map)),
            limit,
        )
    };
    let Handled::Reply(r) = call_with(100) else {
        panic!()
    };
    assert_eq!(
        String::from_utf8(r.body).unwrap(),
        r#"{"arguments":{},"result":"the reply would be over 100 bytes: ask for fewer torrents or fields","tag":1}"#
    );
    let Handled::Reply(r) = call_with(MAX_REPLY_BYTES) else {
        panic!()
    };
    assert!(String::from_utf8(r.body)
        .unwrap()
        .ends_with(r#""result":"success","tag":1}"#));
}

/// A metainfo file of one 1-byte file, distinct per `n`.
fn tiny_torrent(n: usize) -> Vec<u8> {
    let info = Benc::dict([
        ("length", Benc::Int(1)),
        ("name", Benc::str(&format!("t{n}"))),
        ("piece length", Benc::Int(16384)),
        ("pieces", Benc::Bytes(vec![0; 20])),
    ]);
    Benc::dict([
        ("announce", Benc::str("http://tracker.example.org/announce")),
        ("info", info),
    ])
    .to_bencode()
    .unwrap()
}

#[test]
fn ten_thousand_torrents_in_one_torrent_get() {
    let mut fx = Fx::new();
    for n in 0..10_000 {
        fx.svc
            .registry_mut()
            .add(tiny_torrent(n), None, Some(false))
            .unwrap();
    }
    let body = r#"{"method":"torrent-get","arguments":{"fields":["id","name","status","percentDone","rateDownload"]}}"#;
    let start = Instant::now();
    let r = fx.call(body);
    let took = start.elapsed();
    eprintln!(
        "torrent-get of 10,000 torrents, 5 fields: {:.2} ms, {} bytes",
        took.as_secs_f64() * 1000.0,
        r.body.len()
    );
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    let list = v["arguments"]["torrents"].as_array().unwrap();
    assert_eq!(list.len(), 10_000);
    assert_eq!(
        list[9_999],
        json!({"id": 10000, "name": "t9999", "status": 0, "percentDone": 0, "rateDownload": 0})
    );
    // The web interface's full poll of all of them fits too.
    let body = json!({"method": "torrent-get", "arguments": {"fields": WEB_UI_FIELDS}}).to_string();
    let start = Instant::now();
    let r = fx.call(&body);
    eprintln!(
        "torrent-get of 10,000 torrents, the web interface's {} fields: {:.2} ms, {} bytes",
        WEB_UI_FIELDS.len(),
        start.elapsed().as_secs_f64() * 1000.0,
        r.body.len()
    );
    assert!(String::from_utf8_lossy(&r.body).ends_with(r#""result":"success"}"#));
}
