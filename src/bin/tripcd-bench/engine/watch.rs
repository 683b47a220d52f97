//! Timing one loopback transfer (`tripcd-bench engine watch`).
//!
//! The clock starts just before the leecher is told to download and stops
//! when the leecher says it has the whole torrent, verified. Progress is
//! the size on disk of the leecher's data file (`st_blocks * 512`; every
//! client writes it sparse), read the same way for every client so that
//! the curves compare; clients report progress to their controllers at
//! very different rates (tripcd's status is refreshed once a second).

use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use tripcd::client::Client;
use tripcd::codec::Value;

use super::ipc::IpcLoad;
use super::Run;

/// Arguments of `engine watch`.
#[derive(clap::Args, Debug)]
pub struct WatchArgs {
    /// Name of the pair of clients (tripcd, aria2, libtorrent)
    #[arg(long)]
    pair: String,
    /// The torrent's size in MiB
    #[arg(long)]
    size_mib: u64,
    /// Which round of the benchmark this is
    #[arg(long, default_value_t = 1)]
    run: u32,
    /// The leecher's data file, whose size on disk is sampled
    #[arg(long)]
    file: PathBuf,
    /// The seeder's pid (its CPU time is read from /proc)
    #[arg(long)]
    seeder_pid: u32,
    /// How the end of the download is noticed
    #[arg(long, value_enum)]
    until: Until,
    /// With --until tripcd: the leeching daemon's socket
    #[arg(long, required_if_eq("until", "tripcd"))]
    socket: Option<PathBuf>,
    /// With --until tripcd: the leeching daemon's pid
    #[arg(long, required_if_eq("until", "tripcd"))]
    leecher_pid: Option<u32>,
    /// With --until tripcd: IPC clients keeping a tagged noop in flight
    /// during the whole transfer (0: none)
    #[arg(long, default_value_t = 50)]
    ipc_clients: usize,
    /// Milliseconds between samples of the data file
    #[arg(long, default_value_t = 100)]
    interval_ms: u64,
    /// Give up (exit status 1) after this many seconds
    #[arg(long, default_value_t = 1800.0)]
    timeout: f64,
    /// Where to write the run's JSON record
    #[arg(long)]
    out: PathBuf,
    /// The command that starts the download
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

/// How the end of a download is noticed.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Until {
    /// COMMAND is the leecher; the download ends when it exits with
    /// status 0 (aria2c --seed-time=0)
    Exit,
    /// COMMAND is the leecher; it prints `ready` when set up, starts on
    /// `go` from its stdin, prints `done` once it has the torrent
    /// verified, and exits when its stdin closes (benches/lt_pair.py)
    Line,
    /// COMMAND adds the torrent to the tripcd at --socket; the download
    /// ends when every torrent there is seeding
    Tripcd,
}

/// Seconds to wait for a `line` leecher to say `ready`, and for any
/// leecher to go away after the transfer.
const SETUP_SECS: u64 = 120;

/// How often tripcd's state is asked for: finer than the sampling, so
/// the end is known to within a few milliseconds.
const STATE_POLL: Duration = Duration::from_millis(5);

/// Linux reports CPU times in these ticks per second (USER_HZ, fixed at
/// 100 on every architecture it runs on).
const TICKS_PER_SEC: f64 = 100.0;

/// utime + stime in seconds from the text of `/proc/PID/stat`. The
/// command name (field 2) may hold spaces and parentheses, so fields are
/// counted from the last `)`.
pub fn parse_proc_cpu(stat: &str) -> Option<f64> {
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    // Field 3 (state) is the first after the name; utime and stime are
    // fields 14 and 15.
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / TICKS_PER_SEC)
}

/// CPU seconds process `pid` has used so far.
fn proc_cpu(pid: u32) -> io::Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_proc_cpu(&stat).ok_or_else(|| io::Error::other(format!("unreadable /proc/{pid}/stat")))
}

/// The one-minute load average.
fn load1() -> Option<f64> {
    let s = fs::read_to_string("/proc/loadavg").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// Bytes of `path` on disk (0 while it does not exist).
fn disk_bytes(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.blocks() * 512).unwrap_or(0)
}

/// CPU seconds of the children this process has waited for.
fn children_cpu() -> io::Result<f64> {
    use nix::sys::resource::{getrusage, UsageWho};
    let u = getrusage(UsageWho::RUSAGE_CHILDREN).map_err(io::Error::from)?;
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    Ok(secs(u.user_time()) + secs(u.system_time()))
}

/// The leecher, in whichever form the chosen end needs.
enum Leecher {
    Exit {
        pid: u32,
        exited: Receiver<io::Result<ExitStatus>>,
    },
    Line {
        child: Child,
        stdin: Option<ChildStdin>,
        lines: Receiver<String>,
    },
    Tripcd {
        pid: u32,
        client: Client,
        torrents: Vec<Value>,
    },
}

fn command_of(args: &[String]) -> io::Result<Command> {
    let (program, rest) = args
        .split_first()
        .ok_or_else(|| io::Error::other("no command given"))?;
    let mut cmd = Command::new(program);
    cmd.args(rest);
    Ok(cmd)
}

fn spawn_error(args: &[String], e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("cannot run {}: {e}", args.join(" ")))
}

impl Leecher {
    /// Everything that may come before the clock starts.
    fn prepare(args: &WatchArgs) -> io::Result<Leecher> {
        match args.until {
            // aria2c starts in a few milliseconds: it is started on the
            // clock.
            Until::Exit => Ok(Leecher::Exit {
                pid: 0,
                exited: mpsc::channel().1,
            }),
            Until::Line => {
                let mut child = command_of(&args.command)?
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .spawn()
                    .map_err(|e| spawn_error(&args.command, e))?;
                let stdin = child.stdin.take();
                let stdout = child
                    .stdout
                    .take()
                    .ok_or_else(|| io::Error::other("no stdout"))?;
                let (tx, lines) = mpsc::channel();
                std::thread::spawn(move || {
                    for line in BufReader::new(stdout).lines() {
                        let Ok(line) = line else { break };
                        if tx.send(line.trim().to_string()).is_err() {
                            break;
                        }
                    }
                });
                let deadline = Instant::now() + Duration::from_secs(SETUP_SECS);
                loop {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match lines.recv_timeout(left) {
                        Ok(l) if l == "ready" => break,
                        Ok(_) => {}
                        Err(_) => {
                            let _ = child.kill();
                            let _ = child.wait();
                            return Err(io::Error::other("the leecher never said `ready`"));
                        }
                    }
                }
                Ok(Leecher::Line {
                    child,
                    stdin,
                    lines,
                })
            }
            Until::Tripcd => {
                let socket = args.socket.as_deref().unwrap_or(Path::new(""));
                let client = Client::connect_timeout(socket, Duration::from_secs(10))
                    .map_err(|e| io::Error::other(format!("{}: {e}", socket.display())))?;
                Ok(Leecher::Tripcd {
                    pid: args.leecher_pid.unwrap_or(0),
                    client,
                    torrents: Vec::new(),
                })
            }
        }
    }

    /// The leecher's pid while it runs (0: not started yet).
    fn pid(&self) -> u32 {
        match self {
            Leecher::Exit { pid, .. } | Leecher::Tripcd { pid, .. } => *pid,
            Leecher::Line { child, .. } => child.id(),
        }
    }

    /// Tells the leecher to download (the clock is running).
    fn start(&mut self, args: &WatchArgs) -> io::Result<()> {
        match self {
            Leecher::Exit { pid, exited } => {
                let mut child = command_of(&args.command)?
                    .stdin(Stdio::null())
                    .spawn()
                    .map_err(|e| spawn_error(&args.command, e))?;
                *pid = child.id();
                let (tx, rx) = mpsc::channel();
                std::thread::spawn(move || {
                    let _ = tx.send(child.wait());
                });
                *exited = rx;
                Ok(())
            }
            Leecher::Line { stdin, .. } => {
                let s = stdin.as_mut().ok_or_else(|| io::Error::other("no stdin"))?;
                s.write_all(b"go\n")?;
                s.flush()
            }
            Leecher::Tripcd { .. } => {
                let status = command_of(&args.command)?
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .status()
                    .map_err(|e| spawn_error(&args.command, e))?;
                if !status.success() {
                    return Err(io::Error::other(format!(
                        "{} failed: {status}",
                        args.command.join(" ")
                    )));
                }
                Ok(())
            }
        }
    }

    /// Waits up to `wait` for the end of the download; true once it came.
    fn done_within(&mut self, wait: Duration) -> io::Result<bool> {
        match self {
            Leecher::Exit { exited, .. } => match exited.recv_timeout(wait) {
                Ok(Ok(status)) if status.success() => Ok(true),
                Ok(Ok(status)) => Err(io::Error::other(format!("the leecher failed: {status}"))),
                Ok(Err(e)) => Err(e),
                Err(RecvTimeoutError::Timeout) => Ok(false),
                Err(RecvTimeoutError::Disconnected) => {
                    Err(io::Error::other("lost track of the leecher"))
                }
            },
            Leecher::Line { lines, .. } => match lines.recv_timeout(wait) {
                Ok(l) => Ok(l == "done"),
                Err(RecvTimeoutError::Timeout) => Ok(false),
                Err(RecvTimeoutError::Disconnected) => {
                    Err(io::Error::other("the leecher exited before `done`"))
                }
            },
            Leecher::Tripcd {
                client, torrents, ..
            } => {
                std::thread::sleep(wait.min(STATE_POLL));
                let reply = client
                    .call("get-status-all", &Value::List(vec![Value::str("state")]))
                    .map_err(|e| io::Error::other(format!("get-status-all: {e}")))?;
                *torrents = reply.value.as_list().unwrap_or_default().to_vec();
                Ok(all_seeding(&reply.value))
            }
        }
    }

    /// Lets the leecher go (a `line` leecher exits when its stdin closes).
    fn close(self) {
        if let Leecher::Line {
            mut child, stdin, ..
        } = self
        {
            drop(stdin);
            let deadline = Instant::now() + Duration::from_secs(SETUP_SECS);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Whether a `get-status-all` reply lists torrents, all seeding.
pub fn all_seeding(status: &Value) -> bool {
    let list = status.as_list().unwrap_or_default();
    !list.is_empty()
        && list
            .iter()
            .all(|t| t.get("state").and_then(Value::as_str) == Some("seeding"))
}

/// Runs `engine watch`: one transfer timed, its record written.
pub fn run(args: &WatchArgs) -> io::Result<()> {
    let run = measure(args)?;
    let json = run.to_json();
    fs::write(&args.out, format!("{json}\n"))
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", args.out.display())))?;
    let mut line = format!(
        "{} {} MiB run {}: {:.2} s, {:.1} MiB/s, CPU s seeder {:.2} leecher {:.2}",
        run.pair,
        run.size_mib,
        run.run,
        run.seconds,
        run.mib_s(),
        run.cpu_seeder_s,
        run.cpu_leecher_s
    );
    if let Some(ipc) = &run.ipc {
        line.push_str(&format!(
            ", IPC p99 {} us max {} us ({} replies, {} errors)",
            ipc.p99_us, ipc.max_us, ipc.requests, ipc.errors
        ));
    }
    println!("{line}");
    Ok(())
}

fn measure(args: &WatchArgs) -> io::Result<Run> {
    let mut leecher = Leecher::prepare(args)?;
    let ipc = match (&leecher, args.socket.as_deref()) {
        (Leecher::Tripcd { .. }, Some(socket)) if args.ipc_clients > 0 => {
            Some(IpcLoad::start(socket, args.ipc_clients)?)
        }
        _ => None,
    };
    let load1 = load1();
    let cpu_seeder0 = proc_cpu(args.seeder_pid)?;
    let cpu_leecher0 = match leecher.pid() {
        0 => 0.0,
        pid => proc_cpu(pid)?,
    };
    let t0 = Instant::now();
    let mut samples = vec![(0.0, disk_bytes(&args.file))];
    leecher.start(args)?;
    let interval = Duration::from_millis(args.interval_ms.max(1));
    let deadline = t0 + Duration::from_secs_f64(args.timeout.max(0.0));
    let mut next = t0 + interval;
    let ended = loop {
        let now = Instant::now();
        if now >= next {
            samples.push((now.duration_since(t0).as_secs_f64(), disk_bytes(&args.file)));
            while next <= now {
                next += interval;
            }
        }
        if now >= deadline {
            break Err(io::Error::other(format!("no end after {} s", args.timeout)));
        }
        match leecher.done_within(next.saturating_duration_since(now)) {
            Ok(true) => break Ok(Instant::now()),
            Ok(false) => {}
            Err(e) => break Err(e),
        }
    };
    let t1 = match ended {
        Ok(t1) => t1,
        Err(e) => {
            if let Some(ipc) = ipc {
                let _ = ipc.finish();
            }
            if let Leecher::Tripcd { torrents, .. } = &leecher {
                eprintln!("tripcd's torrents at the end: {torrents:?}");
            }
            leecher.close();
            return Err(e);
        }
    };
    // CPU first: the leecher may be about to exit, the seeder goes on.
    let cpu_seeder1 = proc_cpu(args.seeder_pid)?;
    let cpu_leecher1 = match &leecher {
        Leecher::Exit { .. } => children_cpu()?,
        other => proc_cpu(other.pid())?,
    };
    let seconds = t1.duration_since(t0).as_secs_f64();
    samples.push((seconds, disk_bytes(&args.file)));
    let ipc = ipc.map(IpcLoad::finish).transpose()?;
    leecher.close();
    Ok(Run {
        pair: args.pair.clone(),
        size_mib: args.size_mib,
        run: args.run,
        seconds,
        cpu_seeder_s: (cpu_seeder1 - cpu_seeder0).max(0.0),
        cpu_leecher_s: (cpu_leecher1 - cpu_leecher0).max(0.0),
        load1,
        ipc,
        samples,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn cpu_from_proc_stat() {
        // A name with a space and a parenthesis; utime 250, stime 50.
        let stat = "1234 (a b) c) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0";
        assert_eq!(parse_proc_cpu(stat), Some(3.0));
        assert_eq!(parse_proc_cpu("1234 (x) S 1 2"), None);
        assert_eq!(parse_proc_cpu("no parenthesis"), None);
        let own = fs::read_to_string("/proc/self/stat").unwrap();
        assert!(parse_proc_cpu(&own).is_some());
    }

    #[test]
    fn seeding_means_all_listed_torrents_seed() {
        let t = |s: &str| Value::dict([("id", Value::Int(1)), ("state", Value::str(s))]);
        assert!(all_seeding(&Value::List(vec![t("seeding")])));
        assert!(!all_seeding(&Value::List(vec![
            t("seeding"),
            t("downloading")
        ])));
        assert!(!all_seeding(&Value::List(vec![])));
        assert!(!all_seeding(&Value::Int(3)));
    }

    #[test]
    fn disk_bytes_of_sparse_and_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        assert_eq!(disk_bytes(&p), 0);
        let f = fs::File::create(&p).unwrap();
        f.set_len(1 << 30).unwrap();
        // A hole is not data.
        assert!(disk_bytes(&p) < 1 << 20);
    }

    /// Parses `engine watch` arguments as clap would.
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: WatchArgs,
    }

    fn args(dir: &Path, until: &str, script: &str) -> WatchArgs {
        let file = dir.join("data");
        let out = dir.join("run.json");
        let pid = std::process::id().to_string();
        Cli::parse_from([
            "watch",
            "--pair",
            "test",
            "--size-mib",
            "1",
            "--file",
            file.to_str().unwrap(),
            "--seeder-pid",
            &pid,
            "--until",
            until,
            "--interval-ms",
            "5",
            "--out",
            out.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            script,
            "sh",
            file.to_str().unwrap(),
        ])
        .args
    }

    #[test]
    fn exit_mode_times_a_child() {
        let dir = tempfile::tempdir().unwrap();
        let a = args(dir.path(), "exit", "head -c 1048576 /dev/zero > \"$1\"");
        run(&a).unwrap();
        let j: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&a.out).unwrap()).unwrap();
        let r = Run::from_json(&j).unwrap();
        assert_eq!(r.pair, "test");
        assert!(r.seconds > 0.0);
        assert!(r.samples.len() >= 2);
        assert_eq!(r.samples.last().unwrap().1, 1 << 20);
        assert!(r.ipc.is_none());
    }

    #[test]
    fn exit_mode_failure_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(run(&args(dir.path(), "exit", "exit 3")).is_err());
    }

    #[test]
    fn line_mode_waits_for_ready_go_done() {
        let dir = tempfile::tempdir().unwrap();
        // Writing before `go` would show in the first sample.
        let script = "echo starting; echo ready; read go; \
                      head -c 1048576 /dev/zero > \"$1\"; echo done; read end";
        let a = args(dir.path(), "line", script);
        let r = measure(&a).unwrap();
        assert_eq!(r.samples.first().unwrap().1, 0);
        assert_eq!(r.samples.last().unwrap().1, 1 << 20);
    }

    #[test]
    fn line_mode_exit_before_done_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(measure(&args(dir.path(), "line", "echo ready; read go")).is_err());
        assert!(measure(&args(dir.path(), "line", "exit 0")).is_err());
    }
}
