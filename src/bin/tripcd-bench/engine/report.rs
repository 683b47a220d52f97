//! `tripcd-bench engine report`: a directory of runs (one JSON file each,
//! as `watch` writes them) into a markdown table, a CSV of every run, a
//! JSON summary and one throughput chart per torrent size.
//!
//! Each row is the median of a pair's runs at one size, column by column
//! (speed, time, CPU, IPC p99), except the IPC maximum, which is the worst
//! of all the runs: a latency bound is only as good as its worst case.

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::Path;

use serde_json::json;

use super::{group, plot, Run};

/// One pair at one size, summarised over its runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Which pair.
    pub pair: String,
    /// Torrent size in MiB.
    pub size_mib: u64,
    /// How many runs the row summarises.
    pub runs: usize,
    /// Median transfer speed, MiB/s.
    pub mib_s: f64,
    /// Median transfer time, seconds.
    pub seconds: f64,
    /// Median CPU seconds of the seeder.
    pub cpu_seeder_s: f64,
    /// Median CPU seconds of the leecher.
    pub cpu_leecher_s: f64,
    /// Median of the runs' IPC p99, microseconds (tripcd only).
    pub ipc_p99_us: Option<u64>,
    /// Worst IPC latency of all the runs, microseconds (tripcd only).
    pub ipc_max_us: Option<u64>,
    /// IPC errors in all the runs (tripcd only).
    pub ipc_errors: Option<u64>,
}

/// The median of `xs` (the mean of the middle two for an even count);
/// 0 for none.
pub fn median(xs: &mut [f64]) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    xs.sort_by(f64::total_cmp);
    let mid = xs.len() / 2;
    if xs.len() % 2 == 1 {
        xs[mid]
    } else {
        (xs[mid - 1] + xs[mid]) / 2.0
    }
}

/// One row per (size, pair).
pub fn rows(runs: &[Run]) -> Vec<Row> {
    group(runs)
        .into_iter()
        .map(|((size_mib, (_, pair)), rs)| {
            let med =
                |f: &dyn Fn(&Run) -> f64| median(&mut rs.iter().map(|r| f(r)).collect::<Vec<_>>());
            let ipcs: Vec<_> = rs.iter().filter_map(|r| r.ipc.as_ref()).collect();
            let (ipc_p99_us, ipc_max_us, ipc_errors) = if ipcs.is_empty() {
                (None, None, None)
            } else {
                let mut p99: Vec<f64> = ipcs.iter().map(|i| i.p99_us as f64).collect();
                (
                    Some(median(&mut p99).round() as u64),
                    ipcs.iter().map(|i| i.max_us).max(),
                    Some(ipcs.iter().map(|i| i.errors).sum()),
                )
            };
            Row {
                pair,
                size_mib,
                runs: rs.len(),
                mib_s: med(&|r| r.mib_s()),
                seconds: med(&|r| r.seconds),
                cpu_seeder_s: med(&|r| r.cpu_seeder_s),
                cpu_leecher_s: med(&|r| r.cpu_leecher_s),
                ipc_p99_us,
                ipc_max_us,
                ipc_errors,
            }
        })
        .collect()
}

/// tripcd's median speed over `reference`'s at each size where both ran.
pub fn ratios(rows: &[Row], reference: &str) -> Vec<(u64, f64)> {
    let speed = |pair: &str, size: u64| {
        rows.iter()
            .find(|r| r.pair == pair && r.size_mib == size)
            .map(|r| r.mib_s)
    };
    let mut sizes: Vec<u64> = rows.iter().map(|r| r.size_mib).collect();
    sizes.dedup();
    sizes
        .into_iter()
        .filter_map(|s| match (speed("tripcd", s), speed(reference, s)) {
            (Some(t), Some(r)) if r > 0.0 => Some((s, t / r)),
            _ => None,
        })
        .collect()
}

fn ms(us: Option<u64>) -> String {
    us.map_or("-".to_string(), |u| format!("{:.2}", u as f64 / 1000.0))
}

/// The summary as a markdown table and a line of ratios per size.
pub fn markdown(rows: &[Row]) -> String {
    let mut s = String::from(
        "| size | pair | MiB/s | seconds | seeder CPU s | leecher CPU s | IPC p99 ms | IPC max ms | runs |\n\
         |---:|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let _ = writeln!(
            s,
            "| {} MiB | {} -> {} | {:.1} | {:.2} | {:.2} | {:.2} | {} | {} | {} |",
            r.size_mib,
            r.pair,
            r.pair,
            r.mib_s,
            r.seconds,
            r.cpu_seeder_s,
            r.cpu_leecher_s,
            ms(r.ipc_p99_us),
            ms(r.ipc_max_us),
            r.runs
        );
    }
    s.push('\n');
    let lt = ratios(rows, "libtorrent");
    let aria = ratios(rows, "aria2");
    let mut sizes: Vec<u64> = lt.iter().chain(&aria).map(|(s, _)| *s).collect();
    sizes.sort_unstable();
    sizes.dedup();
    for size in sizes {
        let find = |v: &[(u64, f64)]| {
            v.iter()
                .find(|(s, _)| *s == size)
                .map_or("-".to_string(), |(_, x)| format!("{x:.2}"))
        };
        let _ = writeln!(
            s,
            "{size} MiB: tripcd/libtorrent {}, tripcd/aria2 {}",
            find(&lt),
            find(&aria)
        );
    }
    s
}

const CSV_HEADER: &str = "pair,size_mib,run,seconds,mib_s,cpu_seeder_s,cpu_leecher_s,load1,\
                          ipc_clients,ipc_requests,ipc_errors,ipc_p50_us,ipc_p99_us,ipc_max_us";

/// Every run, one CSV line each (IPC columns empty where there was none).
pub fn csv(runs: &[Run]) -> String {
    let mut s = format!("{CSV_HEADER}\n");
    for r in runs {
        let opt = |x: Option<String>| x.unwrap_or_default();
        let ipc = r.ipc.as_ref();
        let _ = writeln!(
            s,
            "{},{},{},{:.4},{:.2},{:.2},{:.2},{},{},{},{},{},{},{}",
            r.pair,
            r.size_mib,
            r.run,
            r.seconds,
            r.mib_s(),
            r.cpu_seeder_s,
            r.cpu_leecher_s,
            opt(r.load1.map(|l| format!("{l:.2}"))),
            opt(ipc.map(|i| i.clients.to_string())),
            opt(ipc.map(|i| i.requests.to_string())),
            opt(ipc.map(|i| i.errors.to_string())),
            opt(ipc.map(|i| i.p50_us.to_string())),
            opt(ipc.map(|i| i.p99_us.to_string())),
            opt(ipc.map(|i| i.max_us.to_string())),
        );
    }
    s
}

/// The summary rows and ratios as JSON.
pub fn summary_json(rows: &[Row]) -> serde_json::Value {
    let ratio_json = |v: Vec<(u64, f64)>| {
        v.into_iter()
            .map(|(s, x)| (s.to_string(), json!((x * 1000.0).round() / 1000.0)))
            .collect::<serde_json::Map<_, _>>()
    };
    json!({
        "rows": rows.iter().map(|r| json!({
            "pair": r.pair,
            "size_mib": r.size_mib,
            "runs": r.runs,
            "mib_s": (r.mib_s * 10.0).round() / 10.0,
            "seconds": (r.seconds * 1000.0).round() / 1000.0,
            "cpu_seeder_s": r.cpu_seeder_s,
            "cpu_leecher_s": r.cpu_leecher_s,
            "ipc_p99_us": r.ipc_p99_us,
            "ipc_max_us": r.ipc_max_us,
            "ipc_errors": r.ipc_errors,
        })).collect::<Vec<_>>(),
        "ratio_to_libtorrent": ratio_json(ratios(rows, "libtorrent")),
        "ratio_to_aria2": ratio_json(ratios(rows, "aria2")),
    })
}

/// Reads every `DIR/runs/*.json`, sorted by name.
pub fn load_runs(dir: &Path) -> io::Result<Vec<Run>> {
    let runs_dir = dir.join("runs");
    let mut paths: Vec<_> = fs::read_dir(&runs_dir)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", runs_dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| {
            let text = fs::read_to_string(p)?;
            serde_json::from_str(&text)
                .ok()
                .as_ref()
                .and_then(Run::from_json)
                .ok_or_else(|| io::Error::other(format!("{}: not a run record", p.display())))
        })
        .collect()
}

/// Runs `engine report DIR`.
pub fn run(dir: &Path) -> io::Result<()> {
    let runs = load_runs(dir)?;
    if runs.is_empty() {
        return Err(io::Error::other(format!(
            "{}: no runs to report",
            dir.join("runs").display()
        )));
    }
    let rows = rows(&runs);
    let md = markdown(&rows);
    fs::write(dir.join("summary.md"), &md)?;
    fs::write(
        dir.join("summary.json"),
        format!("{:#}\n", summary_json(&rows)),
    )?;
    fs::write(dir.join("runs.csv"), csv(&runs))?;
    let mut sizes: Vec<u64> = runs.iter().map(|r| r.size_mib).collect();
    sizes.sort_unstable();
    sizes.dedup();
    for size in sizes {
        let chosen = plot::median_runs(&runs, size);
        let path = dir.join(format!("engine-{size}.svg"));
        plot::throughput_chart(&path, size, &chosen)?;
    }
    print!("{md}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::run_of;
    use super::super::IpcReport;
    use super::*;

    fn ipc(p99: u64, max: u64) -> IpcReport {
        IpcReport {
            clients: 50,
            requests: 1000,
            errors: 0,
            seconds: 1.0,
            p50_us: 100,
            p99_us: p99,
            max_us: max,
        }
    }

    fn sample() -> Vec<Run> {
        let mut runs = vec![
            run_of("aria2", 512, 1, 4.0),
            run_of("aria2", 512, 2, 5.0),
            run_of("aria2", 512, 3, 4.5),
            run_of("libtorrent", 512, 1, 2.0),
            run_of("tripcd", 512, 1, 1.0),
            run_of("tripcd", 512, 2, 2.0),
            run_of("tripcd", 512, 3, 0.5),
        ];
        runs[4].ipc = Some(ipc(900, 2000));
        runs[5].ipc = Some(ipc(1500, 9000));
        runs[6].ipc = Some(ipc(1100, 3000));
        runs
    }

    #[test]
    fn medians() {
        assert_eq!(median(&mut []), 0.0);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn rows_are_medians_in_listing_order() {
        let rows = rows(&sample());
        let pairs: Vec<_> = rows.iter().map(|r| r.pair.as_str()).collect();
        assert_eq!(pairs, ["tripcd", "libtorrent", "aria2"]);
        let t = &rows[0];
        assert_eq!((t.runs, t.seconds, t.mib_s), (3, 1.0, 512.0));
        // p99: the median of the runs'; max: the worst of them.
        assert_eq!(
            (t.ipc_p99_us, t.ipc_max_us, t.ipc_errors),
            (Some(1100), Some(9000), Some(0))
        );
        assert_eq!(rows[2].seconds, 4.5);
        assert_eq!(rows[2].ipc_p99_us, None);
    }

    #[test]
    fn ratios_per_size() {
        let rows = rows(&sample());
        assert_eq!(ratios(&rows, "libtorrent"), vec![(512, 2.0)]);
        assert_eq!(ratios(&rows, "aria2"), vec![(512, 4.5)]);
        assert_eq!(ratios(&rows, "nobody"), vec![]);
        let md = markdown(&rows);
        assert!(
            md.contains("| 512 MiB | tripcd -> tripcd | 512.0 | 1.00 |"),
            "{md}"
        );
        assert!(
            md.contains("512 MiB: tripcd/libtorrent 2.00, tripcd/aria2 4.50"),
            "{md}"
        );
        let j = summary_json(&rows);
        assert_eq!(j["ratio_to_libtorrent"]["512"], json!(2.0));
    }

    #[test]
    fn csv_has_a_line_per_run() {
        let runs = sample();
        let text = csv(&runs);
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 1 + runs.len());
        let cols = lines[0].split(',').count();
        assert!(lines.iter().all(|l| l.split(',').count() == cols));
        assert!(
            lines[5].starts_with("tripcd,512,1,1.0000,512.00,"),
            "{}",
            lines[5]
        );
        assert!(
            lines[5].ends_with(",50,1000,0,100,900,2000"),
            "{}",
            lines[5]
        );
        assert!(lines[1].ends_with(",,,,,,"), "{}", lines[1]);
    }

    #[test]
    fn a_directory_becomes_table_csv_json_and_charts() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("runs")).unwrap();
        for (i, r) in sample().iter().enumerate() {
            fs::write(
                dir.path().join(format!("runs/{i}.json")),
                r.to_json().to_string(),
            )
            .unwrap();
        }
        fs::write(dir.path().join("runs/notes.txt"), "not a run").unwrap();
        run(dir.path()).unwrap();
        for f in ["summary.md", "summary.json", "runs.csv", "engine-512.svg"] {
            assert!(dir.path().join(f).exists(), "{f}");
        }
        fs::write(dir.path().join("runs/bad.json"), "{}").unwrap();
        assert!(run(dir.path()).is_err());
        let empty = tempfile::tempdir().unwrap();
        fs::create_dir(empty.path().join("runs")).unwrap();
        assert!(run(empty.path()).is_err());
    }
}
