//! Request bodies into the RPC's method layer over a registry holding a
//! few torrents (one running, one paused, one known by its hash alone,
//! with peers and tracker figures): it must never panic, and every reply
//! must be a JSON object with an `arguments` object and a `result` string.
//! Each run starts from the same committed state (reopened, never
//! committed again), so no run sees another's changes.
#![no_main]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use tripcd::registry::{Hints, PeerInfo, Registry, Settings};
use tripcd::rpc::{self, Context, DiskSpace, Handled, RpcSettings};
use tripcd::service::Service;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/../tests/data/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

thread_local! {
    // The committed state every run reopens; on tmpfs where one exists.
    static STATE: (tempfile::TempDir, PathBuf) = {
        let dir = tempfile::tempdir_in("/dev/shm").or_else(|_| tempfile::tempdir()).unwrap();
        let state = dir.path().join("state");
        // Data folders that do not exist: moves and checks find nothing.
        let data = dir.path().join("no-data");
        let mut reg = Registry::open(&state, Settings::defaults(data.clone())).unwrap();
        reg.set_wall_clock(1_700_000_000);
        reg.add(fixture("hello.torrent"), Some(data.clone()), Some(true)).unwrap();
        reg.add(fixture("multi.torrent"), Some(data.clone()), Some(false)).unwrap();
        let hints = Hints {
            name: Some("link".into()),
            trackers: vec!["udp://t.example:1/announce".into()],
            peers: vec!["127.0.0.1:6881".parse().unwrap()],
        };
        reg.add_by_hash([7; 20], hints, None, Some(true)).unwrap();
        reg.set_labels(2, vec!["a".into()]);
        reg.commit().unwrap();
        (dir, state)
    };
}

fn open(state: &Path) -> Service {
    let mut reg = Registry::open(state, Settings::defaults("/dl".into())).unwrap();
    let x = reg.transfer_mut(1).unwrap();
    x.download_rate = 1000;
    x.uploaded = 5;
    x.tracker = Some((1, 0));
    x.scrape = [1, 2, 3];
    x.tracker_message = Some(("tracker-error", "no".into()));
    x.peer_list = vec![PeerInfo {
        address: "10.0.0.1:1".into(),
        progress: 1.0,
        ..Default::default()
    }];
    Service::new(reg)
}

fn check(body: &[u8]) {
    let v: serde_json::Value = serde_json::from_slice(body).expect("a reply is JSON");
    assert!(v["arguments"].is_object(), "{v}");
    assert!(v["result"].is_string(), "{v}");
}

fuzz_target!(|data: &[u8]| {
    STATE.with(|(_, state)| {
        let mut svc = open(state);
        let t0 = Instant::now();
        let free = |_: &Path| Ok(DiskSpace { free: 1, total: 2 });
        let settings = RpcSettings::default();
        let ctx = Context {
            now: t0 + Duration::from_secs(30),
            wall: UNIX_EPOCH + Duration::from_secs(1_700_000_030),
            started: t0,
            version: "fuzz",
            free_space: &free,
            rpc: &settings,
            session_id: "id",
            peer_port_bound: data.len() % 2 == 0,
            peer_limit_global: 200,
            peer_limit_per_torrent: 50,
        };
        match rpc::dispatch(&mut svc, data, &ctx) {
            Handled::Reply(r) => check(&r.body),
            Handled::Fetch { request, .. } => {
                let fetched = if data.len() % 2 == 0 {
                    Ok(fixture("multi.torrent"))
                } else {
                    Err("unreachable".into())
                };
                check(&rpc::finish_fetch(&mut svc, fetched, request, &ctx).body);
            }
        }
    });
});
