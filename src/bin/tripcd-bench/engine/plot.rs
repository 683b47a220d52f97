//! The engine benchmark's chart: throughput over time, one line per pair
//! of clients, drawn with plotters into an SVG file.

use std::io;
use std::path::Path;

use plotters::prelude::*;

use super::{group, Run, MIB};

/// Seconds over which each point's rate is taken: long enough to smooth
/// the 100 ms sampling, short enough to show a stall.
const WINDOW_S: f64 = 0.3;

/// One line colour per pair, in listing order (tripcd, libtorrent, aria2,
/// then any other).
const COLOURS: [RGBColor; 5] = [
    RGBColor(214, 39, 40),
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(127, 127, 127),
];

/// Each pair's median run at `size` (by transfer time), in listing order.
pub fn median_runs(runs: &[Run], size: u64) -> Vec<&Run> {
    group(runs)
        .into_iter()
        .filter(|((s, _), _)| *s == size)
        .filter_map(|(_, mut rs)| {
            rs.sort_by(|a, b| a.seconds.total_cmp(&b.seconds));
            rs.get(rs.len() / 2).copied()
        })
        .collect()
}

/// (seconds, MiB/s) at each sample after the first: the bytes gained
/// over the last [`WINDOW_S`] (or since the start) over that time.
pub fn rates(samples: &[(f64, u64)]) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(samples.len());
    let mut j = 0;
    for (i, &(t, b)) in samples.iter().enumerate().skip(1) {
        while j + 1 < i && samples[j + 1].0 <= t - WINDOW_S {
            j += 1;
        }
        let (t0, b0) = samples[j];
        if t > t0 {
            out.push((t, b.saturating_sub(b0) as f64 / MIB / (t - t0)));
        }
    }
    out
}

fn draw_error<E: std::error::Error + Send + Sync + 'static>(
    e: DrawingAreaErrorKind<E>,
) -> io::Error {
    io::Error::other(format!("drawing the chart: {e}"))
}

/// Writes the chart of `runs` (one line each, labelled with its pair and
/// speed) to `path`.
pub fn throughput_chart(path: &Path, size_mib: u64, runs: &[&Run]) -> io::Result<()> {
    let series: Vec<(String, Vec<(f64, f64)>)> = runs
        .iter()
        .map(|r| {
            (
                format!("{} -> {} ({:.0} MiB/s)", r.pair, r.pair, r.mib_s()),
                rates(&r.samples),
            )
        })
        .collect();
    let x_max = runs.iter().map(|r| r.seconds).fold(0.0, f64::max).max(0.1) * 1.05;
    let y_max = series
        .iter()
        .flat_map(|(_, pts)| pts.iter().map(|p| p.1))
        .fold(0.0, f64::max)
        .max(1.0)
        * 1.1;

    let root = SVGBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_error)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Loopback transfer of {size_mib} MiB: throughput over time (median runs)"),
            ("sans-serif", 20),
        )
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)
        .map_err(draw_error)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the leecher started")
        .y_desc("MiB/s (data on the leecher's disk)")
        .draw()
        .map_err(draw_error)?;
    for (i, (label, pts)) in series.into_iter().enumerate() {
        let colour = COLOURS[i.min(COLOURS.len() - 1)];
        chart
            .draw_series(LineSeries::new(pts, colour.stroke_width(2)))
            .map_err(draw_error)?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(draw_error)?;
    root.present().map_err(draw_error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::run_of;
    use super::*;

    #[test]
    fn rates_over_a_window() {
        // 1 MiB every 0.1 s: 10 MiB/s throughout.
        let samples: Vec<(f64, u64)> = (0..20).map(|i| (i as f64 * 0.1, i << 20)).collect();
        let r = rates(&samples);
        assert_eq!(r.len(), 19);
        assert!(r.iter().all(|&(_, x)| (x - 10.0).abs() < 1e-6), "{r:?}");
        // A stall shows: nothing gained over the window.
        let mut stalled = samples.clone();
        for s in stalled.iter_mut().skip(10) {
            s.1 = 9 << 20;
        }
        assert_eq!(rates(&stalled).last().unwrap().1, 0.0);
        assert!(rates(&[(0.0, 0)]).is_empty());
    }

    #[test]
    fn the_median_run_of_each_pair() {
        let runs = vec![
            run_of("aria2", 64, 1, 3.0),
            run_of("tripcd", 64, 1, 1.0),
            run_of("tripcd", 64, 2, 3.0),
            run_of("tripcd", 64, 3, 2.0),
            run_of("tripcd", 128, 1, 9.0),
        ];
        let m = median_runs(&runs, 64);
        let got: Vec<_> = m.iter().map(|r| (r.pair.as_str(), r.run)).collect();
        assert_eq!(got, [("tripcd", 3), ("aria2", 1)]);
    }

    #[test]
    fn a_chart_is_an_svg_with_every_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.svg");
        let runs = [run_of("tripcd", 64, 1, 1.0), run_of("aria2", 64, 1, 3.0)];
        throughput_chart(&path, 64, &runs.iter().collect::<Vec<_>>()).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..40]);
        assert!(
            svg.contains("tripcd -&gt; tripcd (64 MiB/s)")
                || svg.contains("tripcd -> tripcd (64 MiB/s)")
        );
        assert!(svg.contains("aria2"));
        assert!(svg.matches("<polyline").count() >= 2);
    }
}
