//! The standard load scenarios against the real daemon and, in the same
//! run, against the echo reference server, printed as one table.
//!
//! `cargo bench --bench load` (release build). Each figure is the median of
//! `TRIPCD_BENCH_RUNS` runs (default 3) of `TRIPCD_BENCH_SECONDS` seconds
//! (default 5). `TRIPCD_BENCH_ONLY=noop-50` (a substring of a scenario's
//! name) runs only some. The daemon runs with the repository's example
//! scripts, so a script key is measured beside `noop`. Every measurement
//! is one run of the `tripcd-bench` binary (`load`/`idle --json`), the very
//! tool users run, which keeps its load generator private to it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tripcd::codec::Value;

/// The figures of one run that the table shows, as `tripcd-bench --json`
/// prints them.
#[derive(Debug, Clone)]
struct Report {
    throughput: f64,
    p99_us: u64,
    p999_us: u64,
    max_us: u64,
    errors: u64,
    rss_kib: Option<u64>,
    bytes_per_connection: Option<f64>,
}

impl Report {
    /// Reads the JSON object of `tripcd-bench load|idle --json`.
    fn parse(text: &str) -> Report {
        let j: serde_json::Value = serde_json::from_str(text.trim())
            .unwrap_or_else(|e| panic!("tripcd-bench printed no JSON ({e}): {text}"));
        let figure = |k: &str| {
            j[k].as_u64()
                .unwrap_or_else(|| panic!("no figure {k} in {j}"))
        };
        Report {
            throughput: figure("throughput") as f64,
            p99_us: figure("p99_us"),
            p999_us: figure("p999_us"),
            max_us: figure("max_us"),
            errors: figure("errors"),
            rss_kib: j["rss_kib"].as_u64(),
            bytes_per_connection: j["bytes_per_connection"].as_f64(),
        }
    }
}

/// `tripcd-bench SUBCOMMAND`, to be given its arguments.
fn tool(subcommand: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tripcd-bench"));
    cmd.arg(subcommand);
    cmd
}

/// Runs `cmd` to its end and returns what it printed; its errors go to
/// the bench's stderr, and a failure stops the bench.
fn output_of(mut cmd: Command) -> String {
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .expect("spawn tripcd-bench");
    assert!(out.status.success(), "{cmd:?}: {}", out.status);
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// The JSON for the empty string, the value of `noop`.
const EMPTY: &str = r#""""#;

/// A server process (tripcd or the echo reference), killed on drop.
struct Server {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    fn tripcd() -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("socket");
        let mut child = Command::new(env!("CARGO_BIN_EXE_tripcd"))
            .arg("--state-dir")
            .arg(dir.path())
            .arg("--download-dir")
            .arg(dir.path().join("dl"))
            .args(["--idle-timeout", "0"])
            .args([
                "--announce",
                "false",
                "--no-dht",
                "--no-rpc",
                "--peer-bind",
                "127.0.0.1",
            ])
            .arg("--scripts")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts"))
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tripcd");
        // Wait for "ready", then keep draining its log on a thread.
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        for line in lines.by_ref() {
            let line = line.expect("log");
            if line.contains(" ready on ") {
                eprintln!("{line}");
                break;
            }
        }
        std::thread::spawn(move || lines.for_each(drop));
        Server {
            child,
            socket,
            _dir: dir,
        }
    }

    fn echo() -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("socket");
        let child = Command::new(env!("CARGO_BIN_EXE_tripcd-bench"))
            .arg("echo")
            .arg("--socket")
            .arg(&socket)
            .spawn()
            .expect("spawn tripcd-bench echo");
        // It prints nothing when ready: the socket file appearing is the sign.
        while !socket.exists() {
            std::thread::sleep(Duration::from_millis(10));
        }
        Server {
            child,
            socket,
            _dir: dir,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One `tripcd-bench load` run of `seconds` against the server at
/// `socket`; `value` is JSON.
fn run(
    socket: &Path,
    pid: u32,
    conns: usize,
    depth: usize,
    seconds: f64,
    key: &str,
    value: &str,
) -> Report {
    let mut cmd = tool("load");
    cmd.arg("--socket")
        .arg(socket)
        .args(["-c", &conns.to_string(), "-d", &depth.to_string()])
        .args(["-t", &seconds.to_string(), "-k", key, "-v", value])
        .args(["--pid", &pid.to_string(), "--quiet", "--json"]);
    Report::parse(&output_of(cmd))
}

/// The run with the median throughput.
fn median(mut runs: Vec<Report>) -> Report {
    runs.sort_by(|a, b| a.throughput.total_cmp(&b.throughput));
    runs.swap_remove(runs.len() / 2)
}

fn cell(r: &Report) -> String {
    format!("{:>9.0}/s p99 {:>6} us", r.throughput, r.p99_us)
}

/// Writes `size` bytes of xorshift noise (incompressible, repeatable).
fn write_noise(path: &Path, size: usize) {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..size / block.len() {
        for b in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&block).expect("write");
    }
}

/// Polls torrent `id` until its check ends in `seeding`.
fn wait_until_seeding(c: &mut tripcd::client::Client, id: i64) {
    let ask = Value::dict([
        ("id", Value::List(vec![Value::Int(id)])),
        ("type", Value::List(vec![Value::str("state")])),
    ]);
    loop {
        let st = c
            .request("get-status", &ask)
            .expect("status")
            .expect("data");
        let state = st
            .value
            .as_list()
            .and_then(|l| l.first())
            .and_then(|t| t.get("state"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if state == "seeding" {
            return;
        }
        assert!(
            state != "downloading" && state != "paused",
            "check ended in {state}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Verification of a 1 GiB single-file torrent (256 KiB pieces, data in
/// the page cache) while 50 clients send tagged noops: how fast tripcd
/// hashes, against `sha1sum` on the same file, and the longest wait a
/// client saw meanwhile.
fn verify_scenario() -> String {
    use tripcd::client::Client;
    const SIZE: usize = 1 << 30;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("big.bin");
    write_noise(&data, SIZE);
    let mb = SIZE as f64 / 1e6;
    let start = std::time::Instant::now();
    let sha1sum = Command::new("sha1sum")
        .arg(&data)
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
        .then(|| start.elapsed().as_secs_f64());
    let mut mktorrent = tool("mktorrent");
    mktorrent
        .arg(&data)
        .args(["--piece-length", &(256 << 10).to_string()]);
    output_of(mktorrent);
    let torrent = std::fs::read(dir.path().join("big.bin.torrent")).expect("torrent");

    let daemon = Server::tripcd();
    let socket = daemon.socket.clone();
    let pid = daemon.pid();
    let load = std::thread::spawn(move || run(&socket, pid, 50, 1, 3.0, "noop", EMPTY));
    std::thread::sleep(Duration::from_millis(500));
    let mut c = Client::connect(&daemon.socket).expect("connect");
    let add = Value::dict([
        ("autostart", Value::Int(1)),
        ("data", Value::Bytes(torrent)),
        (
            "directory",
            Value::str(dir.path().to_str().expect("utf-8 path")),
        ),
    ]);
    let start = std::time::Instant::now();
    c.request("addfile-detailed", &add).expect("add");
    wait_until_seeding(&mut c, 1);
    let check = start.elapsed().as_secs_f64();
    let during = load.join().expect("load thread");
    format!(
        "verify-1gib: tripcd checked 1 GiB in {check:.2} s ({:.0} MB/s); sha1sum {}\n\
         50 clients sending noop meanwhile: p99 {} us, p99.9 {} us, longest wait {} us",
        mb / check,
        sha1sum.map_or("not found".to_string(), |t| format!(
            "{t:.2} s ({:.0} MB/s)",
            mb / t
        )),
        during.p99_us,
        during.p999_us,
        during.max_us
    )
}

/// One row of the table: a scenario's medians, tripcd and echo.
type Row = (&'static str, Report, Report);

/// The request scenarios: name, connections, depth, key, value (JSON).
fn scenarios() -> [(&'static str, usize, usize, &'static str, &'static str); 5] {
    let statuses = r#"["state","completed","running","error","eta","tracker"]"#;
    [
        ("noop-50-d1", 50, 1, "noop", EMPTY),
        ("noop-50-d16", 50, 16, "noop", EMPTY),
        ("script-get-uptime-50-d16", 50, 16, "get-uptime", EMPTY),
        ("noop-10000-d1", 10_000, 1, "noop", EMPTY),
        (
            "status-all-10000-torrents",
            1,
            1,
            "get-status-all",
            statuses,
        ),
    ]
}

/// Adds `n` synthetic paused torrents with `tripcd-bench populate`;
/// returns how many were new.
fn populate(socket: &Path, n: u64) -> u64 {
    let mut cmd = tool("populate");
    cmd.arg("--socket")
        .arg(socket)
        .args(["-n", &n.to_string(), "--quiet", "--json"]);
    let out = output_of(cmd);
    let j: serde_json::Value = serde_json::from_str(out.trim()).expect("populate JSON");
    j["added"].as_u64().expect("populate's added count")
}

/// Runs the request scenarios whose name contains `only`, each `runs`
/// times against tripcd and the echo server, interleaved.
fn request_scenarios(only: &str, runs: usize) -> Vec<Row> {
    let seconds = env_or("TRIPCD_BENCH_SECONDS", 5.0);
    let mut table = Vec::new();
    for (name, conns, depth, key, value) in scenarios() {
        if !name.contains(only) {
            continue;
        }
        let daemon = Server::tripcd();
        if name.starts_with("status") {
            let n = populate(&daemon.socket, 10_000);
            eprintln!("{name}: {n} torrents added");
        }
        let echo = Server::echo();
        let mut ours = Vec::new();
        let mut refs = Vec::new();
        for i in 0..runs {
            let on = |s: &Server| run(&s.socket, s.pid(), conns, depth, seconds, key, value);
            ours.push(on(&daemon));
            refs.push(on(&echo));
            eprintln!(
                "{name} run {}: tripcd {} | echo {}",
                i + 1,
                cell(&ours[i]),
                cell(&refs[i])
            );
        }
        table.push((name, median(ours), median(refs)));
    }
    table
}

/// Memory of `n` idle handshaken connections: tripcd, then echo.
fn idle_scenario() -> (usize, Report, Report) {
    let n = env_or("TRIPCD_BENCH_IDLE", 19_000);
    let measure = |s: &Server| {
        let mut cmd = tool("idle");
        cmd.arg("--socket")
            .arg(&s.socket)
            .args(["-c", &n.to_string(), "--pid", &s.pid().to_string()])
            .args(["--hold", "0", "--quiet", "--json"]);
        Report::parse(&output_of(cmd))
    };
    let daemon = Server::tripcd();
    let ours = measure(&daemon);
    drop(daemon);
    let echo = Server::echo();
    let refs = measure(&echo);
    (n, ours, refs)
}

fn print_table(table: &[Row], idle: Option<(usize, Report, Report)>, runs: usize) {
    println!();
    println!(
        "{:<27} {:>12} {:>10} {:>10} | {:>12} {:>10} {:>10} | {:>6} {:>9}",
        "scenario",
        "tripcd req/s",
        "p99 us",
        "max us",
        "echo req/s",
        "p99 us",
        "max us",
        "ratio",
        "p99 ratio"
    );
    for (name, ours, refs) in table {
        // The echo server answers get-status-all without building
        // anything: a ratio against it would mean nothing.
        let comparable = !name.starts_with("status");
        let ratio = |x: f64| {
            if comparable {
                format!("{x:.2}")
            } else {
                "-".to_string()
            }
        };
        println!(
            "{:<27} {:>12.0} {:>10} {:>10} | {:>12.0} {:>10} {:>10} | {:>6} {:>9}{}",
            name,
            ours.throughput,
            ours.p99_us,
            ours.max_us,
            refs.throughput,
            refs.p99_us,
            refs.max_us,
            ratio(ours.throughput / refs.throughput.max(1.0)),
            ratio(ours.p99_us as f64 / refs.p99_us.max(1) as f64),
            if ours.errors + refs.errors > 0 {
                format!("  ({} errors)", ours.errors + refs.errors)
            } else {
                String::new()
            }
        );
    }
    if let Some((n, ours, refs)) = idle {
        println!(
            "{:<27} {:>12} {:>21} | {:>12} {:>21} |",
            format!("idle-{n}"),
            format!("{} KiB", ours.rss_kib.unwrap_or(0)),
            format!("{:.0} B/conn", ours.bytes_per_connection.unwrap_or(0.0)),
            format!("{} KiB", refs.rss_kib.unwrap_or(0)),
            format!("{:.0} B/conn", refs.bytes_per_connection.unwrap_or(0.0)),
        );
    }
    println!(
        "(median of {runs} runs of {}s; ratio = tripcd / echo)",
        env_or("TRIPCD_BENCH_SECONDS", 5.0)
    );
}

fn main() {
    // `cargo bench` passes --bench; nothing else is taken.
    let runs: usize = env_or("TRIPCD_BENCH_RUNS", 3).max(1);
    let only = std::env::var("TRIPCD_BENCH_ONLY").unwrap_or_default();
    // The servers started here inherit the raised limit.
    tripcd::sys::raise_fd_limit();
    let table = request_scenarios(&only, runs);
    let idle = "idle-19000".contains(&only).then(idle_scenario);
    let verify = "verify-1gib".contains(&only).then(verify_scenario);
    print_table(&table, idle, runs);
    if let Some(v) = verify {
        println!("\n{v}");
    }
}
