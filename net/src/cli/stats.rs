//! `shardline stats`: every figure of the Metrics api as readable tables, and the per-topic
//! rates that `shardline top` refreshes (docs/operations.md, "stats and top").

use std::collections::BTreeMap;
use std::fmt::Write as _;

use shardline_engine::metrics::{HistogramSnapshot, family_spec};

use crate::protocol::{ApiKey, MetricsResponse, ShardMetrics, code_name};
use crate::server::histogram_snapshot;

/// `1.5 KiB`, `3.2 MiB`...
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// A duration in nanoseconds, with the unit that keeps 3 digits: `850us`, `1.25ms`, `2.0s`.
pub fn duration_ns(ns: u64) -> String {
    match ns {
        0 => "-".to_string(),
        n if n < 1_000 => format!("{n}ns"),
        n if n < 1_000_000 => format!("{}us", n / 1_000),
        n if n < 1_000_000_000 => format!("{:.2}ms", n as f64 / 1e6),
        n => format!("{:.2}s", n as f64 / 1e9),
    }
}

/// `p50/p99/p999` of a histogram of nanoseconds.
pub fn percentiles(h: &HistogramSnapshot) -> String {
    if h.count() == 0 {
        return "-".to_string();
    }
    format!(
        "{}/{}/{}",
        duration_ns(h.quantile(0.5)),
        duration_ns(h.quantile(0.99)),
        duration_ns(h.quantile(0.999))
    )
}

/// Rows of aligned columns; the first row is the header.
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table {
            rows: vec![header.iter().map(|h| (*h).to_string()).collect()],
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self, out: &mut String) {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|s| s.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for row in &self.rows {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                let pad = widths[i].saturating_sub(cell.chars().count());
                line.push_str(cell);
                if i + 1 < row.len() {
                    line.push_str(&" ".repeat(pad + 2));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
    }
}

fn hit_ratio(s: &ShardMetrics) -> String {
    let reads = s.cache_hits + s.cache_misses;
    if reads == 0 {
        return "-".to_string();
    }
    format!("{:.1}%", 100.0 * s.cache_hits as f64 / reads as f64)
}

fn api_name(key: u16) -> &'static str {
    ApiKey::from_u16(key).map_or("unknown", ApiKey::name)
}

/// The whole snapshot as text: shards, latencies, partitions, requests, errors, extras.
#[allow(
    clippy::too_many_lines,
    reason = "the sections of one report, printed in order"
)]
pub fn render(m: &MetricsResponse) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "uptime {:.1} s, resident memory {}, {} shards, {} partitions\n",
        m.uptime_ms as f64 / 1000.0,
        bytes(m.resident_bytes),
        m.shards.len(),
        m.shards
            .iter()
            .map(|s| u64::from(s.partitions))
            .sum::<u64>()
    );
    let mut t = Table::new(&[
        "SHARD",
        "PARTITIONS",
        "CONNS",
        "CACHE",
        "UNFLUSHED",
        "CACHE HIT",
        "FLUSHES",
        "FSYNCS",
        "FLUSHED",
    ]);
    for s in &m.shards {
        t.row(vec![
            s.shard.to_string(),
            s.partitions.to_string(),
            format!("{} ({} refused)", s.connections_open, s.connections_refused),
            bytes(s.cache_bytes),
            bytes(s.unflushed_bytes),
            hit_ratio(s),
            s.flushes.to_string(),
            s.syncs.to_string(),
            bytes(s.flushed_bytes),
        ]);
    }
    t.render(&mut out);
    out.push('\n');
    let mut t = Table::new(&[
        "SHARD",
        "APPEND durable p50/p99/p999",
        "APPEND memory",
        "FLUSH WRITE",
        "FSYNC",
        "FLUSH SIZE p50/p99",
        "BATCH SIZE p50",
    ]);
    for s in &m.shards {
        let sized = |h: &crate::protocol::Histogram| histogram_snapshot(h);
        let flush = sized(&s.flush_bytes);
        t.row(vec![
            s.shard.to_string(),
            percentiles(&histogram_snapshot(&s.append_durable_ns)),
            percentiles(&histogram_snapshot(&s.append_memory_ns)),
            percentiles(&histogram_snapshot(&s.flush_write_ns)),
            percentiles(&histogram_snapshot(&s.fsync_ns)),
            if flush.count() == 0 {
                "-".into()
            } else {
                format!(
                    "{}/{}",
                    bytes(flush.quantile(0.5)),
                    bytes(flush.quantile(0.99))
                )
            },
            bytes(sized(&s.batch_bytes).quantile(0.5)),
        ]);
    }
    t.render(&mut out);
    if !m.partitions.is_empty() {
        out.push('\n');
        let mut t = Table::new(&[
            "TOPIC",
            "PARTITION",
            "SHARD",
            "LOG START",
            "LOG END",
            "DURABLE",
            "SIZE",
            "SEGMENTS",
            "PRODUCED",
            "PRODUCED BYTES",
            "FETCHED",
            "FETCHED BYTES",
        ]);
        let segments = family_values(m, "shardline_partition_segments");
        for p in m.partitions.iter().filter(|p| !is_internal(&p.topic)) {
            t.row(vec![
                p.topic.clone(),
                p.partition.to_string(),
                p.shard.to_string(),
                p.log_start.to_string(),
                p.high_watermark.to_string(),
                p.durable_offset.to_string(),
                bytes(p.size_bytes),
                segments
                    .get(&[p.topic.clone(), p.partition.to_string()][..])
                    .map_or_else(|| "-".to_string(), i64::to_string),
                p.produced_records.to_string(),
                bytes(p.produced_bytes),
                p.fetched_records.to_string(),
                bytes(p.fetched_bytes),
            ]);
        }
        t.render(&mut out);
    }
    render_requests(m, &mut out);
    render_groups(m, &mut out);
    render_queues(m, &mut out);
    render_samples(m, &mut out);
    out
}

/// Families shown in tables of their own (the rest are listed generically).
const TABLED_FAMILIES: [&str; 11] = [
    "shardline_partition_segments",
    "shardline_group_committed_offset",
    "shardline_group_lag",
    "shardline_group_members",
    "shardline_queue_depth",
    "shardline_queue_inflight",
    "shardline_queue_oldest_age_seconds",
    "shardline_queue_redeliveries",
    "shardline_queue_dead_lettered",
    "shardline_queue_purged",
    "shardline_queue_dlq_messages",
];

/// The samples of one family: label values -> value.
fn family_values<'m>(m: &'m MetricsResponse, family: &str) -> BTreeMap<&'m [String], i64> {
    m.samples
        .iter()
        .filter(|s| s.family == family)
        .map(|s| (s.labels.as_slice(), s.value))
        .collect()
}

/// Consumer groups: committed offset and lag per partition.
fn render_groups(m: &MetricsResponse, out: &mut String) {
    let lag = family_values(m, "shardline_group_lag");
    if lag.is_empty() {
        return;
    }
    let committed = family_values(m, "shardline_group_committed_offset");
    out.push('\n');
    let mut t = Table::new(&["GROUP", "TOPIC", "PARTITION", "COMMITTED", "LAG"]);
    for (labels, value) in &lag {
        let mut row: Vec<String> = labels.to_vec();
        row.resize(3, String::new());
        row.push(committed.get(labels).map_or("-".into(), i64::to_string));
        row.push(value.to_string());
        t.row(row);
    }
    t.render(out);
}

/// Work queues: one row per queue partition.
fn render_queues(m: &MetricsResponse, out: &mut String) {
    let depth = family_values(m, "shardline_queue_depth");
    if depth.is_empty() {
        return;
    }
    let columns = [
        "shardline_queue_inflight",
        "shardline_queue_oldest_age_seconds",
        "shardline_queue_redeliveries",
        "shardline_queue_dead_lettered",
        "shardline_queue_purged",
    ]
    .map(|f| family_values(m, f));
    // DLQ records by source queue (summed over the dead-letter topic's partitions).
    let mut dlq: BTreeMap<&str, i64> = BTreeMap::new();
    for (labels, v) in family_values(m, "shardline_queue_dlq_messages") {
        if let Some(q) = labels.first() {
            *dlq.entry(q.as_str()).or_default() += v;
        }
    }
    out.push('\n');
    let mut t = Table::new(&[
        "QUEUE",
        "PARTITION",
        "DEPTH",
        "IN FLIGHT",
        "OLDEST AGE s",
        "REDELIVERED",
        "DEAD-LETTERED",
        "PURGED",
        "DLQ RECORDS",
    ]);
    for (labels, value) in &depth {
        let mut row: Vec<String> = labels.to_vec();
        row.resize(2, String::new());
        row.push(value.to_string());
        for c in &columns {
            row.push(c.get(labels).map_or("-".into(), i64::to_string));
        }
        let queue = labels.first().map_or("", String::as_str);
        row.push(dlq.get(queue).map_or("-".into(), i64::to_string));
        t.row(row);
    }
    t.render(out);
}

/// Lag of each topic: for every group, its lag summed over the topic's partitions; the
/// largest over the groups (the consumer furthest behind).
pub fn topic_lag(m: &MetricsResponse) -> BTreeMap<String, u64> {
    let mut by_group: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for s in m
        .samples
        .iter()
        .filter(|s| s.family == "shardline_group_lag")
    {
        if let [group, topic, ..] = s.labels.as_slice() {
            *by_group.entry((topic, group)).or_default() += u64::try_from(s.value).unwrap_or(0);
        }
    }
    let mut out: BTreeMap<String, u64> = BTreeMap::new();
    for ((topic, _), lag) in by_group {
        let e = out.entry(topic.to_string()).or_default();
        *e = (*e).max(lag);
    }
    out
}

fn render_requests(m: &MetricsResponse, out: &mut String) {
    let mut requests: BTreeMap<&str, u64> = BTreeMap::new();
    let mut errors: BTreeMap<(&str, u16), u64> = BTreeMap::new();
    for s in &m.shards {
        for r in &s.requests {
            *requests.entry(api_name(r.api_key)).or_default() += r.count;
        }
        for e in &s.errors {
            *errors.entry((api_name(e.api_key), e.code)).or_default() += e.count;
        }
    }
    out.push('\n');
    let mut t = Table::new(&["API", "REQUESTS"]);
    for (api, n) in &requests {
        t.row(vec![(*api).to_string(), n.to_string()]);
    }
    t.render(out);
    if !errors.is_empty() {
        out.push('\n');
        let mut t = Table::new(&["API", "ERROR", "CODE", "COUNT"]);
        for ((api, code), n) in &errors {
            t.row(vec![
                (*api).to_string(),
                code_name(*code).to_string(),
                code.to_string(),
                n.to_string(),
            ]);
        }
        t.render(out);
    }
}

/// Extra families (authentication, quotas...) as one table: metric (without the `shardline_`
/// prefix), labels, value.
fn render_samples(m: &MetricsResponse, out: &mut String) {
    let rest: Vec<_> = m
        .samples
        .iter()
        .filter(|s| !TABLED_FAMILIES.contains(&s.family.as_str()))
        .filter(|s| !s.labels.iter().any(|l| is_internal(l)))
        .collect();
    if rest.is_empty() {
        return;
    }
    out.push('\n');
    let mut t = Table::new(&["METRIC", "LABELS", "VALUE"]);
    for s in rest {
        let names = family_spec(&s.family).map_or(&[][..], |f| f.labels);
        let labels: Vec<String> = s
            .labels
            .iter()
            .enumerate()
            .map(|(i, v)| match names.get(i) {
                Some(n) => format!("{n}={v}"),
                None => v.clone(),
            })
            .collect();
        let name = s.family.strip_prefix("shardline_").unwrap_or(&s.family);
        t.row(vec![
            name.to_string(),
            if labels.is_empty() {
                "-".to_string()
            } else {
                labels.join(" ")
            },
            s.value.to_string(),
        ]);
    }
    t.render(out);
}

/// Internal topics (the offsets log) are left out of the tables, as `topic list` leaves them out.
/// Internal topics: the offsets log, the queues' ack logs (`__queue-acks/...`): names that
/// start with `__`, Kafka's convention.
fn is_internal(topic: &str) -> bool {
    shardline_engine::groups::is_internal(topic) || topic.starts_with("__")
}

/// Per-topic totals of one snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TopicTotals {
    pub partitions: u32,
    pub log_end: u64,
    pub size_bytes: u64,
    pub produced_records: u64,
    pub produced_bytes: u64,
    pub fetched_records: u64,
    pub fetched_bytes: u64,
}

pub fn topic_totals(m: &MetricsResponse) -> BTreeMap<String, TopicTotals> {
    let mut out: BTreeMap<String, TopicTotals> = BTreeMap::new();
    for p in m.partitions.iter().filter(|p| !is_internal(&p.topic)) {
        let t = out.entry(p.topic.clone()).or_default();
        t.partitions += 1;
        t.log_end += p.high_watermark;
        t.size_bytes += p.size_bytes;
        t.produced_records += p.produced_records;
        t.produced_bytes += p.produced_bytes;
        t.fetched_records += p.fetched_records;
        t.fetched_bytes += p.fetched_bytes;
    }
    out
}

/// The samples recorded between two snapshots of one histogram.
pub fn histogram_delta(now: &HistogramSnapshot, before: &HistogramSnapshot) -> HistogramSnapshot {
    let previous: BTreeMap<u64, u64> = before.buckets.iter().copied().collect();
    HistogramSnapshot {
        buckets: now
            .buckets
            .iter()
            .filter_map(|&(v, c)| {
                let d = c.saturating_sub(previous.get(&v).copied().unwrap_or(0));
                (d > 0).then_some((v, d))
            })
            .collect(),
        sum: now.sum.saturating_sub(before.sum),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::PartitionMetrics;

    #[test]
    fn units_read_naturally() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(duration_ns(850_000), "850us");
        assert_eq!(duration_ns(1_250_000), "1.25ms");
    }

    #[test]
    fn render_lists_every_partition_and_request() {
        let m = MetricsResponse {
            shards: vec![ShardMetrics {
                requests: vec![crate::protocol::ApiCount {
                    api_key: 7,
                    count: 3,
                }],
                ..Default::default()
            }],
            partitions: vec![PartitionMetrics {
                topic: "orders".into(),
                partition: 1,
                produced_records: 42,
                ..Default::default()
            }],
            ..Default::default()
        };
        let text = render(&m);
        assert!(text.contains("orders"), "{text}");
        assert!(
            text.lines()
                .any(|l| l.starts_with("Produce") && l.ends_with('3')),
            "{text}"
        );
        assert_eq!(topic_totals(&m)["orders"].produced_records, 42);
    }

    #[test]
    fn groups_and_queues_get_tables_and_top_shows_the_largest_group_lag() {
        let sample = |family: &str, labels: &[&str], value: i64| crate::protocol::MetricSample {
            family: family.into(),
            labels: labels.iter().map(|l| (*l).to_string()).collect(),
            value,
        };
        let m = MetricsResponse {
            samples: vec![
                sample("shardline_group_lag", &["a", "t", "0"], 3),
                sample("shardline_group_lag", &["a", "t", "1"], 4),
                sample("shardline_group_lag", &["b", "t", "0"], 5),
                sample("shardline_group_committed_offset", &["a", "t", "0"], 17),
                sample("shardline_queue_depth", &["q", "0"], 9),
                sample("shardline_queue_inflight", &["q", "0"], 2),
                sample("shardline_queue_dlq_messages", &["q", "q.dlq", "0"], 1),
                sample("shardline_queue_dlq_messages", &["q", "q.dlq", "1"], 2),
                sample("shardline_partition_segments", &["t", "0"], 1),
            ],
            ..Default::default()
        };
        let text = render(&m);
        let row = |start: &str| {
            text.lines()
                .find(|l| l.starts_with(start))
                .map(|l| l.split_whitespace().collect::<Vec<_>>())
                .unwrap_or_else(|| panic!("no {start} row in {text}"))
        };
        assert_eq!(row("a  "), vec!["a", "t", "0", "17", "3"]);
        assert_eq!(
            row("q  "),
            vec!["q", "0", "9", "2", "-", "-", "-", "-", "3"]
        );
        assert!(
            !text.contains("{topic="),
            "no raw metric lines (segments are a column of the partition table): {text}"
        );
        assert!(
            !text.contains("shardline_group_lag{"),
            "tabled, not listed: {text}"
        );
        assert_eq!(topic_lag(&m)["t"], 7, "group a: 3 + 4, more than b's 5");
    }

    #[test]
    fn delta_keeps_only_new_samples() {
        let before = HistogramSnapshot {
            buckets: vec![(10, 2), (20, 1)],
            sum: 40,
        };
        let now = HistogramSnapshot {
            buckets: vec![(10, 2), (20, 3), (30, 1)],
            sum: 100,
        };
        let d = histogram_delta(&now, &before);
        assert_eq!(d.buckets, vec![(20, 2), (30, 1)]);
        assert_eq!(d.sum, 60);
    }
}
