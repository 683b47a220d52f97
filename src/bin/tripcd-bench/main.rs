//! `tripcd-bench`: load generator, idle-connection holder and reference
//! server. Parses arguments and calls the private `load` module.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
mod engine;
mod load;

use load::{LoadConfig, Report};

/// Load generator for tripcd (and any Transmission IPC server).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Keep DEPTH tagged requests in flight on each of N connections
    Load {
        #[command(flatten)]
        common: Common,
        /// Requests in flight per connection
        #[arg(short = 'd', long, default_value_t = 1)]
        depth: usize,
        /// Seconds to send for
        #[arg(short = 't', long, default_value_t = 10.0)]
        seconds: f64,
        /// The key to send
        #[arg(short = 'k', long, default_value = "noop")]
        key: String,
        /// Its value, as JSON [default: ""]
        #[arg(short = 'v', long)]
        value: Option<String>,
    },
    /// Open N handshaken connections, report the daemon's memory, hold them
    Idle {
        #[command(flatten)]
        common: Common,
        /// Seconds to hold the connections after measuring
        #[arg(long, default_value_t = 0.0)]
        hold: f64,
    },
    /// Run the reference server (succeeded + tag to every frame)
    Echo {
        /// Socket to listen on
        #[arg(long)]
        socket: PathBuf,
    },
    /// Soak: valid traffic, garbage, slow readers and hang-ups at once,
    /// then check the daemon (exit status 1 if a check fails)
    Soak {
        /// The daemon's socket
        #[arg(long)]
        socket: PathBuf,
        /// The daemon's pid (its memory and descriptors are checked)
        #[arg(long)]
        pid: u32,
        /// Clients at once
        #[arg(short = 'c', long, default_value_t = 10_000)]
        clients: usize,
        /// Seconds of traffic
        #[arg(short = 't', long, default_value_t = 180.0)]
        seconds: f64,
    },
    /// Write a single-file .torrent for FILE (hashing it) to FILE.torrent
    Mktorrent {
        /// The data file
        file: PathBuf,
        /// Piece length in bytes
        #[arg(long, default_value_t = 262144)]
        piece_length: u64,
    },
    /// The engine benchmark: time loopback transfers, report them
    #[command(subcommand)]
    Engine(engine::EngineCmd),
    /// Add COUNT small distinct paused torrents (no data) to a daemon
    Populate {
        /// The daemon's socket
        #[arg(long)]
        socket: PathBuf,
        /// How many torrents
        #[arg(short = 'n', long, default_value_t = 10000)]
        count: u64,
        /// Print JSON ({"added": N, "sent": COUNT})
        #[arg(long)]
        json: bool,
        /// No progress line on stderr
        #[arg(long)]
        quiet: bool,
    },
}

#[derive(clap::Args, Debug)]
struct Common {
    /// The server's socket
    #[arg(long)]
    socket: PathBuf,
    /// Connections
    #[arg(short = 'c', long, default_value_t = 50)]
    connections: usize,
    /// The server's pid, to report its resident memory
    #[arg(long)]
    pid: Option<u32>,
    /// Print CSV (with a header line)
    #[arg(long)]
    csv: bool,
    /// Print JSON
    #[arg(long)]
    json: bool,
    /// No progress line on stderr
    #[arg(long)]
    quiet: bool,
}

fn print(common: &Common, r: &Report) {
    let text = if common.csv {
        format!("{}\n{}", Report::csv_header(), r.csv())
    } else if common.json {
        r.json().to_string()
    } else {
        r.text()
    };
    // A reader that went away (`| head`) is not worth a panic.
    let _ = writeln!(std::io::stdout(), "{text}");
}

/// What a command ended with.
enum Outcome {
    Done,
    /// A check failed (already printed): exit status 1.
    ChecksFailed,
}

fn main() -> ExitCode {
    let result = match Args::parse().cmd {
        Cmd::Load {
            common,
            depth,
            seconds,
            key,
            value,
        } => load(common, depth, seconds, key, value),
        Cmd::Idle { common, hold } => load::run_idle(
            &common.socket,
            common.connections,
            common.pid,
            Duration::from_secs_f64(hold.max(0.0)),
            !common.quiet,
        )
        .map(|r| print(&common, &r)),
        Cmd::Echo { socket } => load::EchoServer::bind(&socket).and_then(|mut s| s.run()),
        Cmd::Soak {
            socket,
            pid,
            clients,
            seconds,
        } => {
            return match soak(socket, pid, clients, seconds) {
                Ok(Outcome::Done) => ExitCode::SUCCESS,
                Ok(Outcome::ChecksFailed) => ExitCode::FAILURE,
                Err(e) => fail(e),
            }
        }
        Cmd::Mktorrent { file, piece_length } => {
            let mut out = file.clone().into_os_string();
            out.push(".torrent");
            load::torrents::torrent_for_file(&file, piece_length)
                .and_then(|t| std::fs::write(&out, t))
                .map(|()| println!("wrote {}", PathBuf::from(out).display()))
        }
        Cmd::Populate {
            socket,
            count,
            json,
            quiet,
        } => populate(&socket, count, json, quiet),
        Cmd::Engine(cmd) => engine::run(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("tripcd-bench: {e}");
    ExitCode::FAILURE
}

/// `load`: the value given as JSON, then the run.
fn load(
    common: Common,
    depth: usize,
    seconds: f64,
    key: String,
    value: Option<String>,
) -> std::io::Result<()> {
    let value = match value.map(|v| serde_json::from_str(&v)) {
        None => Ok(tripcd::codec::Value::empty()),
        Some(Ok(j)) => tripcd::codec::json::from_json(&j),
        Some(Err(e)) => Err(format!("value is not JSON: {e}")),
    }
    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let config = LoadConfig {
        socket: common.socket.clone(),
        connections: common.connections,
        depth: depth.max(1),
        duration: Duration::from_secs_f64(seconds.max(0.0)),
        key,
        value,
        pid: common.pid,
        progress: !common.quiet,
    };
    load::run_load(&config).map(|r| print(&common, &r))
}

/// `populate`: the adds, then how many were new.
fn populate(socket: &std::path::Path, count: u64, json: bool, quiet: bool) -> std::io::Result<()> {
    let n = load::torrents::populate(socket, count, !quiet)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let text = if json {
        serde_json::json!({ "added": n, "sent": count }).to_string()
    } else {
        format!("added {n} new torrents ({count} sent)")
    };
    // A reader that went away (`| head`) is not worth a panic.
    let _ = writeln!(std::io::stdout(), "{text}");
    Ok(())
}

/// `soak`: the run, its report, and each failed check.
fn soak(socket: PathBuf, pid: u32, clients: usize, seconds: f64) -> std::io::Result<Outcome> {
    let config = load::soak::SoakConfig {
        socket,
        pid,
        clients,
        duration: Duration::from_secs_f64(seconds.max(0.0)),
    };
    let report = load::soak::run_soak(&config)?;
    println!("{}", report.text());
    let failures = report.failures();
    if failures.is_empty() {
        println!("soak passed");
        return Ok(Outcome::Done);
    }
    for f in &failures {
        println!("FAILED: {f}");
    }
    Ok(Outcome::ChecksFailed)
}
