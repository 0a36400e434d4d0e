//! A run's result: the JSON document (`--json`, reports, `compare`) and the human table.
//!
//! The JSON has the fields docs and tools rely on (DESIGN.md, "Command line contracts"):
//! `driver`, `workload` (every parameter), `sent`, `acked`, `received`, `errors`, `duration_s`,
//! `throughput_msgs_per_s`, `throughput_mb_per_s`, `publish_latency_us` and `e2e_latency_us`
//! (each `{p50, p90, p99, p999, p9999, max, mean}`), and besides them the
//! OpenMessaging-Benchmark `TestResult` fields (`aggregatedPublishLatency99pct` and friends)
//! with OMB's units: publish and end-to-end latency in milliseconds, publish delay in
//! microseconds. OMB's `workload` is a name; ours is the parameter object (the name is
//! `workload.name`), which DESIGN.md fixed first.
//!
//! Counting rules: `sent`, `acked`, `received` and `errors` cover the whole run including the
//! warm-up (they check integrity); latencies and throughput cover the measurement window only.
//! MB is 10^6 bytes of message values.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::runner::RunTimes;
use crate::stats::{self, LatencySummary, PerSecond, SpectrumPoint};
use crate::workload::{AckLevel, Workload};

/// Counters summed over threads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Counters {
    pub sent: u64,
    pub acked: u64,
    pub received: u64,
    /// Failed produce requests (in messages) and failed deliveries.
    pub errors: u64,
    pub duplicates: u64,
    pub gaps: u64,
    pub out_of_order: u64,
    pub malformed: u64,
    pub corrupt: u64,
    /// Open loop: messages due that could not be sent before the drain deadline.
    pub unsent: u64,
    pub acked_in_window: u64,
    pub received_in_window: u64,
    pub first_error: Option<String>,
    pub pinned_threads: u64,
}

/// The merged histograms and series of a run.
pub struct Measured {
    pub publish: Histogram<u64>,
    pub delay: Histogram<u64>,
    pub send_to_ack: Histogram<u64>,
    pub publish_corrected: Option<Histogram<u64>>,
    pub e2e: Histogram<u64>,
    pub acked_per_second: PerSecond,
    pub received_per_second: PerSecond,
    pub errors_per_second: PerSecond,
}

/// Per-second samples since the start of the run (warm-up included).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TimeSeries {
    pub interval_s: f64,
    pub warmup_end_s: f64,
    pub end_s: f64,
    pub acked_msgs: Vec<u64>,
    pub received_msgs: Vec<u64>,
    pub errors: Vec<u64>,
}

/// OpenMessaging Benchmark `TestResult` fields (camelCase, OMB units).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct OmbFields {
    pub message_size: u64,
    pub topics: u32,
    pub partitions: u32,
    pub producers_per_topic: u32,
    pub consumers_per_topic: u32,
    /// Per-second samples over the measurement window (OMB samples every 10 s).
    pub publish_rate: Vec<f64>,
    pub publish_error_rate: Vec<f64>,
    pub consume_rate: Vec<f64>,
    pub backlog: Vec<i64>,
    // Publish latency, milliseconds.
    pub aggregated_publish_latency_avg: f64,
    #[serde(rename = "aggregatedPublishLatency50pct")]
    pub aggregated_publish_latency_50pct: f64,
    #[serde(rename = "aggregatedPublishLatency75pct")]
    pub aggregated_publish_latency_75pct: f64,
    #[serde(rename = "aggregatedPublishLatency95pct")]
    pub aggregated_publish_latency_95pct: f64,
    #[serde(rename = "aggregatedPublishLatency99pct")]
    pub aggregated_publish_latency_99pct: f64,
    #[serde(rename = "aggregatedPublishLatency999pct")]
    pub aggregated_publish_latency_999pct: f64,
    #[serde(rename = "aggregatedPublishLatency9999pct")]
    pub aggregated_publish_latency_9999pct: f64,
    #[serde(rename = "aggregatedPublishLatency99999pct")]
    pub aggregated_publish_latency_99999pct: f64,
    pub aggregated_publish_latency_max: f64,
    // Publish delay, microseconds.
    pub aggregated_publish_delay_latency_avg: f64,
    #[serde(rename = "aggregatedPublishDelayLatency50pct")]
    pub aggregated_publish_delay_latency_50pct: u64,
    #[serde(rename = "aggregatedPublishDelayLatency75pct")]
    pub aggregated_publish_delay_latency_75pct: u64,
    #[serde(rename = "aggregatedPublishDelayLatency95pct")]
    pub aggregated_publish_delay_latency_95pct: u64,
    #[serde(rename = "aggregatedPublishDelayLatency99pct")]
    pub aggregated_publish_delay_latency_99pct: u64,
    #[serde(rename = "aggregatedPublishDelayLatency999pct")]
    pub aggregated_publish_delay_latency_999pct: u64,
    #[serde(rename = "aggregatedPublishDelayLatency9999pct")]
    pub aggregated_publish_delay_latency_9999pct: u64,
    #[serde(rename = "aggregatedPublishDelayLatency99999pct")]
    pub aggregated_publish_delay_latency_99999pct: u64,
    pub aggregated_publish_delay_latency_max: u64,
    // End to end, milliseconds.
    pub aggregated_end_to_end_latency_avg: f64,
    #[serde(rename = "aggregatedEndToEndLatency50pct")]
    pub aggregated_end_to_end_latency_50pct: f64,
    #[serde(rename = "aggregatedEndToEndLatency75pct")]
    pub aggregated_end_to_end_latency_75pct: f64,
    #[serde(rename = "aggregatedEndToEndLatency95pct")]
    pub aggregated_end_to_end_latency_95pct: f64,
    #[serde(rename = "aggregatedEndToEndLatency99pct")]
    pub aggregated_end_to_end_latency_99pct: f64,
    #[serde(rename = "aggregatedEndToEndLatency999pct")]
    pub aggregated_end_to_end_latency_999pct: f64,
    #[serde(rename = "aggregatedEndToEndLatency9999pct")]
    pub aggregated_end_to_end_latency_9999pct: f64,
    #[serde(rename = "aggregatedEndToEndLatency99999pct")]
    pub aggregated_end_to_end_latency_99999pct: f64,
    pub aggregated_end_to_end_latency_max: f64,
    /// Percentile ("50.0") to milliseconds.
    pub aggregated_publish_latency_quantiles: BTreeMap<String, f64>,
    /// Percentile to microseconds.
    pub aggregated_publish_delay_latency_quantiles: BTreeMap<String, u64>,
    /// Percentile to milliseconds.
    pub aggregated_end_to_end_latency_quantiles: BTreeMap<String, f64>,
}

/// Everything a run reports.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunResult {
    pub driver: String,
    /// What an acknowledgement meant on this broker with this run's `acks` (its fsync setting).
    pub durability: String,
    pub workload: Workload,
    /// `"open-loop"` (latency from intended send times) or `"closed-loop"`.
    pub latency_mode: String,
    pub sent: u64,
    pub acked: u64,
    pub received: u64,
    pub errors: u64,
    pub duplicates: u64,
    pub gaps: u64,
    pub out_of_order: u64,
    pub malformed: u64,
    pub corrupt: u64,
    pub unsent: u64,
    pub first_error: Option<String>,
    pub pinned_threads: u64,
    /// Length of the measurement window (warm-up excluded).
    pub duration_s: f64,
    pub warmup_s: f64,
    /// Acknowledged messages per second in the measurement window.
    pub throughput_msgs_per_s: f64,
    pub throughput_mb_per_s: f64,
    /// Received messages per second in the measurement window.
    pub consume_throughput_msgs_per_s: f64,
    pub consume_throughput_mb_per_s: f64,
    /// Ack time minus intended send time.
    pub publish_latency_us: LatencySummary,
    /// Actual minus intended send time (open loop: how late the sender was).
    pub publish_delay_us: LatencySummary,
    /// Ack time minus the actual send time of the built batch (what most peers' tools report as
    /// publish latency; it leaves out queueing before the send).
    #[serde(default)]
    pub send_to_ack_latency_us: LatencySummary,
    /// Receive time minus the send time in the message header.
    pub e2e_latency_us: LatencySummary,
    /// Closed loop only: publish latency corrected for coordinated omission.
    pub publish_latency_corrected_us: Option<LatencySummary>,
    pub publish_latency_spectrum_us: Vec<SpectrumPoint>,
    pub e2e_latency_spectrum_us: Vec<SpectrumPoint>,
    pub timeseries: TimeSeries,
    #[serde(flatten)]
    pub omb: OmbFields,
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn trimmed(counts: &[u64], min_len: usize) -> Vec<u64> {
    let last = counts.iter().rposition(|&c| c > 0).map_or(0, |i| i + 1);
    counts[..last.max(min_len).min(counts.len())].to_vec()
}

const OMB_PERCENTILES: [f64; 10] = [
    50.0, 75.0, 90.0, 95.0, 99.0, 99.9, 99.99, 99.999, 99.9999, 100.0,
];

impl OmbFields {
    fn build(w: &Workload, times: &RunTimes, m: &Measured, window: (usize, usize)) -> Self {
        let (a, b) = window;
        let slice = |s: &PerSecond| -> Vec<f64> {
            s.counts()
                .get(a..b.min(s.counts().len()))
                .unwrap_or(&[])
                .iter()
                .map(|&c| c as f64)
                .collect()
        };
        let mut backlog = Vec::new();
        let mut level: i64 = 0;
        for (i, (x, y)) in m
            .acked_per_second
            .counts()
            .iter()
            .zip(m.received_per_second.counts())
            .enumerate()
        {
            level += *x as i64 - *y as i64;
            if (a..b).contains(&i) {
                backlog.push(level);
            }
        }
        let _ = times;
        let (p, d, e) = (&m.publish, &m.delay, &m.e2e);
        let pct = |h: &Histogram<u64>, q: f64| stats::percentile(h, q);
        OmbFields {
            message_size: w.message_size,
            topics: 1,
            partitions: w.partitions,
            producers_per_topic: w.producers,
            consumers_per_topic: w.consumers,
            publish_rate: slice(&m.acked_per_second),
            publish_error_rate: slice(&m.errors_per_second),
            consume_rate: slice(&m.received_per_second),
            backlog,
            aggregated_publish_latency_avg: stats::mean(p) / 1000.0,
            aggregated_publish_latency_50pct: ms(pct(p, 50.0)),
            aggregated_publish_latency_75pct: ms(pct(p, 75.0)),
            aggregated_publish_latency_95pct: ms(pct(p, 95.0)),
            aggregated_publish_latency_99pct: ms(pct(p, 99.0)),
            aggregated_publish_latency_999pct: ms(pct(p, 99.9)),
            aggregated_publish_latency_9999pct: ms(pct(p, 99.99)),
            aggregated_publish_latency_99999pct: ms(pct(p, 99.999)),
            aggregated_publish_latency_max: ms(if p.is_empty() { 0 } else { p.max() }),
            aggregated_publish_delay_latency_avg: stats::mean(d),
            aggregated_publish_delay_latency_50pct: pct(d, 50.0),
            aggregated_publish_delay_latency_75pct: pct(d, 75.0),
            aggregated_publish_delay_latency_95pct: pct(d, 95.0),
            aggregated_publish_delay_latency_99pct: pct(d, 99.0),
            aggregated_publish_delay_latency_999pct: pct(d, 99.9),
            aggregated_publish_delay_latency_9999pct: pct(d, 99.99),
            aggregated_publish_delay_latency_99999pct: pct(d, 99.999),
            aggregated_publish_delay_latency_max: if d.is_empty() { 0 } else { d.max() },
            aggregated_end_to_end_latency_avg: stats::mean(e) / 1000.0,
            aggregated_end_to_end_latency_50pct: ms(pct(e, 50.0)),
            aggregated_end_to_end_latency_75pct: ms(pct(e, 75.0)),
            aggregated_end_to_end_latency_95pct: ms(pct(e, 95.0)),
            aggregated_end_to_end_latency_99pct: ms(pct(e, 99.0)),
            aggregated_end_to_end_latency_999pct: ms(pct(e, 99.9)),
            aggregated_end_to_end_latency_9999pct: ms(pct(e, 99.99)),
            aggregated_end_to_end_latency_99999pct: ms(pct(e, 99.999)),
            aggregated_end_to_end_latency_max: ms(if e.is_empty() { 0 } else { e.max() }),
            aggregated_publish_latency_quantiles: OMB_PERCENTILES
                .iter()
                .map(|&q| (format!("{q:?}"), ms(pct(p, q))))
                .collect(),
            aggregated_publish_delay_latency_quantiles: OMB_PERCENTILES
                .iter()
                .map(|&q| (format!("{q:?}"), pct(d, q)))
                .collect(),
            aggregated_end_to_end_latency_quantiles: OMB_PERCENTILES
                .iter()
                .map(|&q| (format!("{q:?}"), ms(pct(e, q))))
                .collect(),
        }
    }
}

impl RunResult {
    pub fn build(driver: &str, w: &Workload, times: &RunTimes, c: Counters, m: &Measured) -> Self {
        let duration_s = w.duration.as_secs_f64();
        let per_s = |n: u64| n as f64 / duration_s;
        let mb = |msgs_per_s: f64| msgs_per_s * w.message_size as f64 / 1e6;
        let throughput = per_s(c.acked_in_window);
        let consume = per_s(c.received_in_window);
        let warmup_s = w.warmup.as_secs_f64();
        let secs = |us: u64| (us - times.start_us) as f64 / 1e6;
        let min_len = secs(times.end_us).ceil() as usize;
        let window = (
            secs(times.warmup_end_us).floor() as usize,
            secs(times.end_us).ceil() as usize,
        );
        RunResult {
            driver: driver.to_string(),
            durability: String::new(),
            workload: w.clone(),
            latency_mode: if w.rate.is_some() {
                "open-loop"
            } else {
                "closed-loop"
            }
            .into(),
            sent: c.sent,
            acked: c.acked,
            received: c.received,
            errors: c.errors,
            duplicates: c.duplicates,
            gaps: c.gaps,
            out_of_order: c.out_of_order,
            malformed: c.malformed,
            corrupt: c.corrupt,
            unsent: c.unsent,
            first_error: c.first_error.clone(),
            pinned_threads: c.pinned_threads,
            duration_s,
            warmup_s,
            throughput_msgs_per_s: throughput,
            throughput_mb_per_s: mb(throughput),
            consume_throughput_msgs_per_s: consume,
            consume_throughput_mb_per_s: mb(consume),
            publish_latency_us: LatencySummary::of(&m.publish),
            publish_delay_us: LatencySummary::of(&m.delay),
            send_to_ack_latency_us: LatencySummary::of(&m.send_to_ack),
            e2e_latency_us: LatencySummary::of(&m.e2e),
            publish_latency_corrected_us: m.publish_corrected.as_ref().map(LatencySummary::of),
            publish_latency_spectrum_us: stats::spectrum(&m.publish),
            e2e_latency_spectrum_us: stats::spectrum(&m.e2e),
            timeseries: TimeSeries {
                interval_s: 1.0,
                warmup_end_s: secs(times.warmup_end_us),
                end_s: secs(times.end_us),
                acked_msgs: trimmed(m.acked_per_second.counts(), min_len),
                received_msgs: trimmed(m.received_per_second.counts(), min_len),
                errors: trimmed(m.errors_per_second.counts(), min_len),
            },
            omb: OmbFields::build(w, times, m, window),
        }
    }

    /// Everything that makes the run a failure; empty if it passed.
    pub fn failures(&self) -> Vec<String> {
        let mut f = Vec::new();
        if self.errors > 0 {
            f.push(format!(
                "{} errors (first: {})",
                self.errors,
                self.first_error.as_deref().unwrap_or("?")
            ));
        }
        if self.workload.consumers > 0 && self.received < self.acked {
            f.push(format!(
                "received {} < acked {}: {} acknowledged messages never arrived within the \
                 {:.0} s drain",
                self.received,
                self.acked,
                self.acked - self.received,
                self.workload.drain_timeout.as_secs_f64()
            ));
        }
        for (n, what) in [
            (self.duplicates, "duplicate deliveries"),
            (self.gaps, "offsets skipped (gaps)"),
            (self.out_of_order, "messages out of sequence"),
            (self.malformed, "malformed messages"),
            (self.corrupt, "corrupt deliveries"),
        ] {
            if n > 0 {
                f.push(format!("{n} {what}"));
            }
        }
        if self.acked == 0 {
            f.push("nothing was acknowledged".into());
        }
        f
    }

    /// Writes the JSON document to `path`.
    pub fn write_json(&self, path: &Path) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, text + "\n")
    }

    pub fn read_json(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("parsing {}: {e}", path.display()))
    }

    /// The human-readable table.
    pub fn write_table(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let w = &self.workload;
        writeln!(
            out,
            "shardline-loadgen: driver {}, {}",
            self.driver,
            w.describe()
        )?;
        if !self.durability.is_empty() {
            writeln!(out, "durability: {}", self.durability)?;
        }
        writeln!(out)?;
        writeln!(out, "{:<24}{:>14}{:>12}", "throughput", "msgs/s", "MB/s")?;
        writeln!(
            out,
            "{:<24}{:>14.0}{:>12.1}",
            "publish (acked)", self.throughput_msgs_per_s, self.throughput_mb_per_s
        )?;
        writeln!(
            out,
            "{:<24}{:>14.0}{:>12.1}",
            "consume (received)",
            self.consume_throughput_msgs_per_s,
            self.consume_throughput_mb_per_s
        )?;
        writeln!(out)?;
        writeln!(
            out,
            "{:<24}{:>9}{:>9}{:>9}{:>9}{:>9}{:>10}{:>10}{:>10}",
            "latency (us)", "p50", "p90", "p99", "p99.9", "p99.99", "max", "mean", "samples"
        )?;
        let mut row = |name: &str, s: &LatencySummary| {
            writeln!(
                out,
                "{name:<24}{:>9}{:>9}{:>9}{:>9}{:>9}{:>10}{:>10.0}{:>10}",
                s.p50, s.p90, s.p99, s.p999, s.p9999, s.max, s.mean, s.count
            )
        };
        row("publish", &self.publish_latency_us)?;
        if w.rate.is_some() {
            row("publish delay", &self.publish_delay_us)?;
        }
        row("send-to-ack", &self.send_to_ack_latency_us)?;
        if let Some(c) = &self.publish_latency_corrected_us {
            row("publish (CO-corrected)", c)?;
        }
        row("end-to-end", &self.e2e_latency_us)?;
        writeln!(out)?;
        writeln!(
            out,
            "sent {}  acked {}  received {}  errors {}  duplicates {}  gaps {}  out-of-order {}{}",
            self.sent,
            self.acked,
            self.received,
            self.errors,
            self.duplicates,
            self.gaps,
            self.out_of_order,
            if self.unsent > 0 {
                format!("  unsent (behind schedule) {}", self.unsent)
            } else {
                String::new()
            }
        )?;
        writeln!(
            out,
            "measured {:.1} s after {:.1} s warm-up; latency mode {}{}",
            self.duration_s,
            self.warmup_s,
            self.latency_mode,
            if self.workload.acks == AckLevel::None {
                "; acks none: 'acked' counts messages handed to the broker"
            } else {
                ""
            }
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RunResult {
        let w = Workload::default();
        let times = RunTimes::new(0, &w);
        let mut m = Measured {
            publish: stats::new_histogram(),
            delay: stats::new_histogram(),
            send_to_ack: stats::new_histogram(),
            publish_corrected: Some(stats::new_histogram()),
            e2e: stats::new_histogram(),
            acked_per_second: PerSecond::new(times.seconds_max()),
            received_per_second: PerSecond::new(times.seconds_max()),
            errors_per_second: PerSecond::new(times.seconds_max()),
        };
        for v in 1..=1000 {
            m.publish.record(v * 10).unwrap();
            m.e2e.record(v * 20).unwrap();
        }
        m.acked_per_second.add(3_000_000, 1000);
        m.received_per_second.add(3_000_000, 1000);
        let c = Counters {
            sent: 1000,
            acked: 1000,
            received: 1000,
            acked_in_window: 1000,
            received_in_window: 1000,
            ..Default::default()
        };
        RunResult::build("embedded", &w, &times, c, &m)
    }

    /// The fields DESIGN.md and OMB tooling rely on; the integration test checks the same list
    /// on a real run's file.
    pub(crate) const REQUIRED_FIELDS: &[&str] = &[
        "driver",
        "workload",
        "sent",
        "acked",
        "received",
        "errors",
        "duration_s",
        "throughput_msgs_per_s",
        "throughput_mb_per_s",
        "publish_latency_us",
        "e2e_latency_us",
        "aggregatedPublishLatency50pct",
        "aggregatedPublishLatency75pct",
        "aggregatedPublishLatency95pct",
        "aggregatedPublishLatency99pct",
        "aggregatedPublishLatency999pct",
        "aggregatedPublishLatency9999pct",
        "aggregatedPublishLatencyMax",
        "aggregatedPublishDelayLatency50pct",
        "aggregatedPublishDelayLatency75pct",
        "aggregatedPublishDelayLatency95pct",
        "aggregatedPublishDelayLatency99pct",
        "aggregatedPublishDelayLatency999pct",
        "aggregatedPublishDelayLatency9999pct",
        "aggregatedPublishDelayLatencyMax",
        "aggregatedEndToEndLatency50pct",
        "aggregatedEndToEndLatency75pct",
        "aggregatedEndToEndLatency95pct",
        "aggregatedEndToEndLatency99pct",
        "aggregatedEndToEndLatency999pct",
        "aggregatedEndToEndLatency9999pct",
        "aggregatedEndToEndLatencyMax",
    ];

    #[test]
    fn json_has_every_required_field_with_the_right_units() {
        let r = sample();
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        for f in REQUIRED_FIELDS {
            assert!(v.get(f).is_some(), "missing {f}");
        }
        for f in ["publish_latency_us", "e2e_latency_us"] {
            for k in ["p50", "p90", "p99", "p999", "p9999", "max", "mean"] {
                assert!(v[f].get(k).is_some(), "missing {f}.{k}");
            }
        }
        for k in [
            "name",
            "duration_s",
            "warmup_s",
            "rate",
            "producers",
            "consumers",
            "partitions",
            "message_size",
            "batch",
            "acks",
            "inflight",
        ] {
            assert!(v["workload"].get(k).is_some(), "missing workload.{k}");
        }
        // OMB: publish latency in ms, our own fields in us.
        let p50_us = v["publish_latency_us"]["p50"].as_u64().unwrap();
        let p50_ms = v["aggregatedPublishLatency50pct"].as_f64().unwrap();
        assert!((p50_ms * 1000.0 - p50_us as f64).abs() < 1e-6);
        assert_eq!(v["workload"]["acks"], "durable");
        assert_eq!(v["publishRate"].as_array().unwrap().len(), 10);
    }

    #[test]
    fn json_round_trips() {
        let r = sample();
        let text = serde_json::to_string(&r).unwrap();
        let back: RunResult = serde_json::from_str(&text).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn failures_name_what_went_wrong() {
        let mut r = sample();
        assert!(r.failures().is_empty(), "{:?}", r.failures());
        r.received = 990;
        r.errors = 2;
        r.first_error = Some("boom".into());
        let f = r.failures().join("; ");
        assert!(
            f.contains("received 990 < acked 1000") && f.contains("boom"),
            "{f}"
        );
    }

    #[test]
    fn table_mentions_every_latency() {
        let mut out = Vec::new();
        sample().write_table(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        for s in [
            "publish",
            "end-to-end",
            "p99.99",
            "msgs/s",
            "MB/s",
            "CO-corrected",
            "errors 0",
        ] {
            assert!(text.contains(s), "{s} missing in\n{text}");
        }
    }
}
