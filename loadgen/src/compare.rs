//! `shardline-loadgen compare A.json B.json ...`: runs side by side, each value followed by
//! its ratio to the first run's.

use std::io::Write;

use crate::result::RunResult;

/// One metric across runs, formatted.
pub struct Row {
    pub name: String,
    pub cells: Vec<String>,
}

type Metric = (&'static str, fn(&RunResult) -> f64);

const METRICS: &[Metric] = &[
    ("throughput msgs/s", |r| r.throughput_msgs_per_s),
    ("throughput MB/s", |r| r.throughput_mb_per_s),
    ("consume msgs/s", |r| r.consume_throughput_msgs_per_s),
    ("publish p50 us", |r| r.publish_latency_us.p50 as f64),
    ("publish p99 us", |r| r.publish_latency_us.p99 as f64),
    ("publish p99.9 us", |r| r.publish_latency_us.p999 as f64),
    ("publish p99.99 us", |r| r.publish_latency_us.p9999 as f64),
    ("publish max us", |r| r.publish_latency_us.max as f64),
    ("publish mean us", |r| r.publish_latency_us.mean),
    ("e2e p50 us", |r| r.e2e_latency_us.p50 as f64),
    ("e2e p99 us", |r| r.e2e_latency_us.p99 as f64),
    ("e2e p99.9 us", |r| r.e2e_latency_us.p999 as f64),
    ("e2e p99.99 us", |r| r.e2e_latency_us.p9999 as f64),
    ("e2e max us", |r| r.e2e_latency_us.max as f64),
    ("e2e mean us", |r| r.e2e_latency_us.mean),
    ("sent", |r| r.sent as f64),
    ("acked", |r| r.acked as f64),
    ("received", |r| r.received as f64),
    ("errors", |r| r.errors as f64),
];

fn ratio(v: f64, base: f64) -> String {
    if base == 0.0 {
        if v == 0.0 { "=".into() } else { "-".into() }
    } else {
        format!("x{:.2}", v / base)
    }
}

/// The comparison table: descriptive rows, then one row per metric.
pub fn rows(runs: &[(String, RunResult)]) -> Vec<Row> {
    let text = |name: &str, f: &dyn Fn(&RunResult) -> String| Row {
        name: name.into(),
        cells: runs.iter().map(|(_, r)| f(r)).collect(),
    };
    let mut out = vec![
        text("driver", &|r| r.driver.clone()),
        text("durability", &|r| r.durability.clone()),
        text("workload", &|r| r.workload.name.clone()),
        text("mode", &|r| r.latency_mode.clone()),
        text("acks", &|r| r.workload.acks.as_str().into()),
        text("message bytes x batch", &|r| {
            format!("{} x {}", r.workload.message_size, r.workload.batch)
        }),
    ];
    let base = runs.first().map(|(_, r)| r);
    for (name, f) in METRICS {
        let b = base.map_or(0.0, f);
        out.push(Row {
            name: (*name).into(),
            cells: runs
                .iter()
                .enumerate()
                .map(|(i, (_, r))| {
                    let v = f(r);
                    if i == 0 {
                        format!("{v:.0}")
                    } else {
                        format!("{v:.0} ({})", ratio(v, b))
                    }
                })
                .collect(),
        });
    }
    out
}

/// Prints the comparison table.
pub fn write_table(out: &mut dyn Write, runs: &[(String, RunResult)]) -> std::io::Result<()> {
    let rows = rows(runs);
    let name_w = rows.iter().map(|r| r.name.len()).max().unwrap_or(0) + 2;
    let mut widths: Vec<usize> = runs.iter().map(|(l, _)| l.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(&r.cells) {
            *w = (*w).max(c.len());
        }
    }
    write!(out, "{:<name_w$}", "")?;
    for ((label, _), w) in runs.iter().zip(&widths) {
        write!(out, "  {label:>w$}")?;
    }
    writeln!(out)?;
    for r in &rows {
        write!(out, "{:<name_w$}", r.name)?;
        for (c, w) in r.cells.iter().zip(&widths) {
            write!(out, "  {c:>w$}")?;
        }
        writeln!(out)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_are_relative_to_the_first_run() {
        let a = RunResult {
            throughput_msgs_per_s: 1000.0,
            ..Default::default()
        };
        let b = RunResult {
            throughput_msgs_per_s: 1500.0,
            ..Default::default()
        };
        let rows = rows(&[("a".into(), a), ("b".into(), b)]);
        let t = rows.iter().find(|r| r.name == "throughput msgs/s").unwrap();
        assert_eq!(
            t.cells,
            vec!["1000".to_string(), "1500 (x1.50)".to_string()]
        );
        let e = rows.iter().find(|r| r.name == "errors").unwrap();
        assert_eq!(e.cells[1], "0 (=)");
    }
}
