//! `tripcd-bench engine`: the measuring half of the engine benchmark
//! (`benches/engine.sh` runs the clients; this times them and draws).
//!
//! `watch` times one loopback transfer: it starts the leecher's download,
//! samples the size on disk of the leecher's data file every ~100 ms,
//! notices the end the way the client allows (tripcd: its state over IPC;
//! aria2c: its exit; our libtorrent script: a `done` line), and reads the
//! CPU time of both sides. During a tripcd transfer it also keeps tagged
//! `noop` requests going from many IPC clients for exactly as long as the
//! transfer lasts. Each run becomes one JSON file; `report` turns a
//! directory of them into a markdown table, a CSV of every run and one SVG
//! chart per size.

mod ipc;
mod leechers;
mod plot;
mod report;
mod watch;

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;

use clap::Subcommand;
use serde_json::json;

pub use ipc::IpcReport;

/// Bytes in a MiB.
const MIB: f64 = 1048576.0;

/// The engine benchmark's subcommands.
#[derive(Subcommand, Debug)]
pub enum EngineCmd {
    /// Time one transfer: run COMMAND to start the leecher's download,
    /// sample its data file until the download is verified, write a JSON
    /// record of the run
    Watch(watch::WatchArgs),
    /// Many simulated leechers against one seeding tripcd: its memory per
    /// connection at rest, and IPC latency while it seeds to them
    Leechers(leechers::LeechersArgs),
    /// Read DIR/runs/*.json; write DIR/summary.md, DIR/runs.csv and
    /// DIR/engine-<size>.svg (print the summary)
    Report {
        /// The results directory
        dir: PathBuf,
    },
}

/// Runs an engine subcommand.
pub fn run(cmd: EngineCmd) -> io::Result<()> {
    match cmd {
        EngineCmd::Watch(args) => watch::run(&args),
        EngineCmd::Report { dir } => report::run(&dir),
        EngineCmd::Leechers(args) => leechers::run(&args),
    }
}

/// The order pairs are listed in: ours first, then the references.
const PAIR_ORDER: [&str; 4] = ["tripcd", "tripcd-rc4", "libtorrent", "aria2"];

/// Where `pair` goes in the listing.
fn pair_rank(pair: &str) -> (usize, String) {
    let rank = PAIR_ORDER
        .iter()
        .position(|p| *p == pair)
        .unwrap_or(PAIR_ORDER.len());
    (rank, pair.to_string())
}

/// Runs grouped by (size, pair), sizes ascending, pairs in listing order.
pub fn group(runs: &[Run]) -> BTreeMap<(u64, (usize, String)), Vec<&Run>> {
    let mut groups: BTreeMap<_, Vec<&Run>> = BTreeMap::new();
    for r in runs {
        groups
            .entry((r.size_mib, pair_rank(&r.pair)))
            .or_default()
            .push(r);
    }
    groups
}

/// One measured transfer, as `watch` writes it and `report` reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// Which pair of clients: `tripcd`, `aria2`, `libtorrent`.
    pub pair: String,
    /// The torrent's size in MiB.
    pub size_mib: u64,
    /// Which round of the benchmark (1-based).
    pub run: u32,
    /// Seconds from the start of the leecher's download to its end.
    pub seconds: f64,
    /// CPU seconds (user + system) the seeder used meanwhile.
    pub cpu_seeder_s: f64,
    /// CPU seconds (user + system) the leecher used meanwhile.
    pub cpu_leecher_s: f64,
    /// The one-minute load average when the transfer started.
    pub load1: Option<f64>,
    /// IPC latency under load during the transfer (tripcd only).
    pub ipc: Option<IpcReport>,
    /// (seconds since the start, bytes of the data file on disk).
    pub samples: Vec<(f64, u64)>,
}

impl Run {
    /// Transfer speed in MiB/s (0 for a run of no duration).
    pub fn mib_s(&self) -> f64 {
        if self.seconds > 0.0 {
            self.size_mib as f64 / self.seconds
        } else {
            0.0
        }
    }

    /// The record as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        let round = |x: f64, digits: i32| {
            let f = 10f64.powi(digits);
            (x * f).round() / f
        };
        json!({
            "pair": self.pair,
            "size_mib": self.size_mib,
            "run": self.run,
            "seconds": round(self.seconds, 4),
            "mib_s": round(self.mib_s(), 2),
            "cpu_seeder_s": round(self.cpu_seeder_s, 2),
            "cpu_leecher_s": round(self.cpu_leecher_s, 2),
            "load1": self.load1,
            "ipc": self.ipc.as_ref().map(IpcReport::to_json),
            "samples": self
                .samples
                .iter()
                .map(|&(t, b)| json!([round(t, 4), b]))
                .collect::<Vec<_>>(),
        })
    }

    /// Reads a record written by [`Run::to_json`]; `None` if a field is
    /// missing or of the wrong type.
    pub fn from_json(j: &serde_json::Value) -> Option<Run> {
        let f = |k: &str| j.get(k).and_then(serde_json::Value::as_f64);
        let samples = j
            .get("samples")?
            .as_array()?
            .iter()
            .map(|s| Some((s.get(0)?.as_f64()?, s.get(1)?.as_u64()?)))
            .collect::<Option<Vec<_>>>()?;
        let ipc = match j.get("ipc") {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => Some(IpcReport::from_json(v)?),
        };
        Some(Run {
            pair: j.get("pair")?.as_str()?.to_string(),
            size_mib: j.get("size_mib")?.as_u64()?,
            run: u32::try_from(j.get("run")?.as_u64()?).ok()?,
            seconds: f("seconds")?,
            cpu_seeder_s: f("cpu_seeder_s")?,
            cpu_leecher_s: f("cpu_leecher_s")?,
            load1: f("load1"),
            ipc,
            samples,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn run_of(pair: &str, size_mib: u64, run: u32, seconds: f64) -> Run {
        Run {
            pair: pair.to_string(),
            size_mib,
            run,
            seconds,
            cpu_seeder_s: 1.5,
            cpu_leecher_s: 2.25,
            load1: Some(0.5),
            ipc: None,
            samples: vec![
                (0.0, 0),
                (seconds / 2.0, size_mib << 19),
                (seconds, size_mib << 20),
            ],
        }
    }

    #[test]
    fn speed_is_size_over_time() {
        let r = run_of("tripcd", 512, 1, 2.0);
        assert_eq!(r.mib_s(), 256.0);
        assert_eq!(run_of("x", 512, 1, 0.0).mib_s(), 0.0);
    }

    #[test]
    fn json_round_trip() {
        let mut r = run_of("tripcd", 64, 2, 0.5);
        r.ipc = Some(IpcReport {
            clients: 50,
            requests: 1000,
            errors: 0,
            seconds: 0.5,
            p50_us: 100,
            p99_us: 900,
            max_us: 2000,
        });
        let back = Run::from_json(&r.to_json()).unwrap();
        assert_eq!(back, r);
        let mut plain = run_of("aria2", 64, 1, 0.25);
        plain.load1 = None;
        assert_eq!(Run::from_json(&plain.to_json()).unwrap(), plain);
    }

    #[test]
    fn json_missing_fields_are_none() {
        let mut j = run_of("tripcd", 64, 1, 1.0).to_json();
        j.as_object_mut().unwrap().remove("seconds");
        assert!(Run::from_json(&j).is_none());
        let mut j = run_of("tripcd", 64, 1, 1.0).to_json();
        j["samples"] = json!([[0.0, "x"]]);
        assert!(Run::from_json(&j).is_none());
        assert!(Run::from_json(&json!("nope")).is_none());
    }
}
