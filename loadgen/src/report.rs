//! `--report DIR`: the result JSON, an `index.html`, and SVG charts drawn with plotters (pure
//! Rust, no fonts needed at build time: the SVG backend emits text elements).
//!
//! - `latency-spectrum.svg`: publish and end-to-end latency against percentile on HdrHistogram's
//!   "nines" axis (x = -log10(1 - q): 0 = p0, 1 = p90, 2 = p99, 3 = p99.9 ...), log-scale y.
//! - `throughput.svg`: acknowledged and received messages per second over the run.
//! - `compare-spectrum.svg` (from `compare`): every run's spectra in one chart.

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::result::RunResult;
use crate::stats::SpectrumPoint;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("writing {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("drawing {path}: {message}")]
    Chart { path: PathBuf, message: String },
}

const WIDTH: u32 = 960;
const HEIGHT: u32 = 540;
/// Highest "nines" the x axis shows (six nines, p99.9999).
const NINES_MAX: f64 = 6.0;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ReportError + '_ {
    move |source| ReportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn chart_err<E: std::fmt::Debug>(path: &Path) -> impl Fn(E) -> ReportError + '_ {
    move |e| ReportError::Chart {
        path: path.to_path_buf(),
        message: format!("{e:?}"),
    }
}

/// `q` in 0..=1 to the nines axis; the maximum (q = 1) lands one nine past the last sample.
fn nines(percentile: f64, count_nines_max: f64) -> f64 {
    let q = percentile / 100.0;
    if q >= 1.0 {
        count_nines_max
    } else {
        (-(1.0 - q).log10()).min(count_nines_max)
    }
}

fn nines_label(x: f64) -> String {
    if (x - x.round()).abs() > 1e-6 || x < -1e-6 {
        return String::new();
    }
    match x.round() as i32 {
        0 => "p0".into(),
        1 => "p90".into(),
        2 => "p99".into(),
        n => format!("p99.{}", "9".repeat((n - 2) as usize)),
    }
}

fn us_label(v: f64) -> String {
    if v >= 1_000_000.0 {
        format!("{:.0} s", v / 1e6)
    } else if v >= 1_000.0 {
        format!("{:.0} ms", v / 1e3)
    } else {
        format!("{v:.0} us")
    }
}

/// One line of a spectrum chart.
pub struct SpectrumSeries<'a> {
    pub label: String,
    pub points: &'a [SpectrumPoint],
    pub color: usize,
    pub dashed: bool,
}

/// Draws latency-vs-percentile spectra into an SVG file.
pub fn spectrum_chart(
    path: &Path,
    title: &str,
    series: &[SpectrumSeries<'_>],
) -> Result<(), ReportError> {
    let values = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.value_us));
    let lo = values.clone().filter(|&v| v > 0).min().unwrap_or(1).max(1) as f64;
    let hi = values.max().unwrap_or(10).max(10) as f64;
    // The x extent: enough nines for the deepest sample below the maximum, plus one for max.
    let deepest = series
        .iter()
        .flat_map(|s| s.points.iter())
        .filter(|p| p.percentile < 100.0)
        .map(|p| nines(p.percentile, NINES_MAX))
        .fold(1.0_f64, f64::max);
    let x_max = (deepest.ceil() + 1.0).min(NINES_MAX);
    let root = SVGBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(chart_err(path))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x_max, (lo / 1.5..hi * 1.5).log_scale())
        .map_err(chart_err(path))?;
    chart
        .configure_mesh()
        .x_labels(x_max as usize + 1)
        .x_label_formatter(&|x| nines_label(*x))
        .y_label_formatter(&|y| us_label(*y))
        .x_desc("percentile")
        .y_desc("latency")
        .draw()
        .map_err(chart_err(path))?;
    for s in series {
        let color = Palette99::pick(s.color).to_rgba();
        let pts: Vec<(f64, f64)> = s
            .points
            .iter()
            .map(|p| (nines(p.percentile, x_max), p.value_us.max(1) as f64))
            .collect();
        let style = ShapeStyle::from(color).stroke_width(2);
        let drawn = if s.dashed {
            chart.draw_series(DashedLineSeries::new(pts, 8, 5, style))
        } else {
            chart.draw_series(LineSeries::new(pts, style))
        };
        drawn
            .map_err(chart_err(path))?
            .label(s.label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(chart_err(path))?;
    root.present().map_err(chart_err(path))?;
    Ok(())
}

/// Draws messages per second over time, with the measurement window marked.
pub fn throughput_chart(path: &Path, r: &RunResult) -> Result<(), ReportError> {
    let ts = &r.timeseries;
    let len = ts.acked_msgs.len().max(ts.received_msgs.len()).max(1);
    let hi = ts
        .acked_msgs
        .iter()
        .chain(&ts.received_msgs)
        .copied()
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let root = SVGBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(chart_err(path))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("throughput (messages per second)", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..len as f64, 0.0..hi * 1.15)
        .map_err(chart_err(path))?;
    chart
        .configure_mesh()
        .x_desc("seconds since start")
        .y_desc("msgs/s")
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()
        .map_err(chart_err(path))?;
    // Sample i covers [i, i+1) s: plot it at its midpoint.
    let line = |v: &[u64]| -> Vec<(f64, f64)> {
        v.iter()
            .enumerate()
            .map(|(i, &c)| (i as f64 + 0.5, c as f64))
            .collect()
    };
    for (label, values, color) in [
        ("acked", &ts.acked_msgs, 0usize),
        ("received", &ts.received_msgs, 1),
    ] {
        let c = Palette99::pick(color).to_rgba();
        chart
            .draw_series(LineSeries::new(line(values), c.stroke_width(2)))
            .map_err(chart_err(path))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    for x in [ts.warmup_end_s, ts.end_s] {
        chart
            .draw_series(DashedLineSeries::new(
                vec![(x, 0.0), (x, hi * 1.15)],
                6,
                4,
                ShapeStyle::from(BLACK.mix(0.5)),
            ))
            .map_err(chart_err(path))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(chart_err(path))?;
    root.present().map_err(chart_err(path))?;
    Ok(())
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn html_page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{t}</title>\n<style>\
         body{{font-family:sans-serif;margin:2em;max-width:1000px}}\
         table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;\
         text-align:right}}th:first-child,td:first-child{{text-align:left}}\
         .fail{{color:#b00;font-weight:bold}}</style></head>\n<body><h1>{t}</h1>\n{body}\
         </body></html>\n",
        t = escape(title)
    )
}

fn latency_rows(r: &RunResult) -> Vec<(&'static str, crate::stats::LatencySummary)> {
    let mut rows = vec![("publish", r.publish_latency_us)];
    if r.workload.rate.is_some() {
        rows.push(("publish delay", r.publish_delay_us));
    }
    rows.push(("send-to-ack", r.send_to_ack_latency_us));
    if let Some(c) = r.publish_latency_corrected_us {
        rows.push(("publish (CO-corrected)", c));
    }
    rows.push(("end-to-end", r.e2e_latency_us));
    rows
}

/// Writes `result.json`, the charts and `index.html` for one run into `dir`.
pub fn write_run_report(dir: &Path, r: &RunResult) -> Result<(), ReportError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let json = dir.join("result.json");
    r.write_json(&json).map_err(io_err(&json))?;
    spectrum_chart(
        &dir.join("latency-spectrum.svg"),
        &format!("latency spectrum: {} ({})", r.workload.name, r.latency_mode),
        &[
            SpectrumSeries {
                label: "publish".into(),
                points: &r.publish_latency_spectrum_us,
                color: 0,
                dashed: false,
            },
            SpectrumSeries {
                label: "end-to-end".into(),
                points: &r.e2e_latency_spectrum_us,
                color: 1,
                dashed: false,
            },
        ],
    )?;
    throughput_chart(&dir.join("throughput.svg"), r)?;

    let mut body = format!("<p>{}</p>\n", escape(&r.workload.describe()));
    let failures = r.failures();
    if failures.is_empty() {
        body.push_str("<p>Integrity checks passed.</p>\n");
    } else {
        for f in &failures {
            body.push_str(&format!("<p class=\"fail\">FAILED: {}</p>\n", escape(f)));
        }
    }
    body.push_str(&format!(
        "<table><tr><th>throughput</th><th>msgs/s</th><th>MB/s</th></tr>\
         <tr><td>publish (acked)</td><td>{:.0}</td><td>{:.1}</td></tr>\
         <tr><td>consume (received)</td><td>{:.0}</td><td>{:.1}</td></tr></table>\n",
        r.throughput_msgs_per_s,
        r.throughput_mb_per_s,
        r.consume_throughput_msgs_per_s,
        r.consume_throughput_mb_per_s
    ));
    body.push_str(
        "<h2>latency (microseconds)</h2><table><tr><th></th><th>p50</th><th>p90</th>\
         <th>p99</th><th>p99.9</th><th>p99.99</th><th>max</th><th>mean</th></tr>\n",
    );
    for (name, s) in latency_rows(r) {
        body.push_str(&format!(
            "<tr><td>{name}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{:.0}</td></tr>\n",
            s.p50, s.p90, s.p99, s.p999, s.p9999, s.max, s.mean
        ));
    }
    body.push_str(&format!(
        "</table>\n<p>sent {} / acked {} / received {} / errors {} / duplicates {} / gaps {} / \
         out of order {} / unsent {}</p>\n",
        r.sent, r.acked, r.received, r.errors, r.duplicates, r.gaps, r.out_of_order, r.unsent
    ));
    body.push_str(
        "<img src=\"latency-spectrum.svg\" alt=\"latency spectrum\">\n\
         <img src=\"throughput.svg\" alt=\"throughput over time\">\n\
         <p><a href=\"result.json\">result.json</a></p>\n",
    );
    let index = dir.join("index.html");
    std::fs::write(&index, html_page("Shardline load test", &body)).map_err(io_err(&index))
}

/// Writes `compare-spectrum.svg` and `index.html` comparing `runs` (label, result) into `dir`.
pub fn write_compare_report(dir: &Path, runs: &[(String, RunResult)]) -> Result<(), ReportError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let mut series = Vec::new();
    for (i, (label, r)) in runs.iter().enumerate() {
        series.push(SpectrumSeries {
            label: format!("{label} publish"),
            points: &r.publish_latency_spectrum_us,
            color: i,
            dashed: false,
        });
        series.push(SpectrumSeries {
            label: format!("{label} end-to-end"),
            points: &r.e2e_latency_spectrum_us,
            color: i,
            dashed: true,
        });
    }
    spectrum_chart(
        &dir.join("compare-spectrum.svg"),
        "latency spectrum (solid: publish, dashed: end-to-end)",
        &series,
    )?;
    let mut body = String::from("<table>\n<tr><th>metric</th>");
    for (label, _) in runs {
        body.push_str(&format!("<th>{}</th>", escape(label)));
    }
    body.push_str("</tr>\n");
    for row in crate::compare::rows(runs) {
        body.push_str(&format!("<tr><td>{}</td>", escape(&row.name)));
        for cell in &row.cells {
            body.push_str(&format!("<td>{}</td>", escape(cell)));
        }
        body.push_str("</tr>\n");
    }
    body.push_str("</table>\n<img src=\"compare-spectrum.svg\" alt=\"latency spectra\">\n");
    let index = dir.join("index.html");
    std::fs::write(&index, html_page("Shardline load test comparison", &body))
        .map_err(io_err(&index))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nines_axis_maps_percentiles() {
        assert_eq!(nines(0.0, 6.0), 0.0);
        assert!((nines(90.0, 6.0) - 1.0).abs() < 1e-9);
        assert!((nines(99.9, 6.0) - 3.0).abs() < 1e-9);
        assert_eq!(nines(100.0, 4.0), 4.0);
        assert_eq!(nines_label(0.0), "p0");
        assert_eq!(nines_label(3.0), "p99.9");
        assert_eq!(nines_label(2.5), "");
    }

    #[test]
    fn spectrum_chart_writes_an_svg() {
        let dir = tempfile::tempdir().unwrap();
        let mut h = crate::stats::new_histogram();
        for v in 1..=10_000u64 {
            h.record(v).unwrap();
        }
        let pts = crate::stats::spectrum(&h);
        let path = dir.path().join("s.svg");
        spectrum_chart(
            &path,
            "t",
            &[SpectrumSeries {
                label: "x".into(),
                points: &pts,
                color: 0,
                dashed: true,
            }],
        )
        .unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("p99.9"),
            "{}",
            &svg[..200]
        );
    }
}
