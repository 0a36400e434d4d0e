//! Per-shard operational metrics (docs/operations.md, "Metrics").
//!
//! Every figure here is owned by one shard: plain integers and HDR histograms behind the
//! shard's own `RefCell`, touched only by the shard thread. The data path never takes a lock,
//! never issues an atomic read-modify-write and never allocates for a metric. A scrape sends
//! `Request::Metrics` to each shard; the shard answers with a [`ShardMetricsSnapshot`] (a copy,
//! built between two requests), and the scraping thread merges and encodes the copies.
//!
//! Extending: a subsystem that lives on the shard (consumer groups, work queues) adds its
//! figures without touching the wire format or the encoders: describe the family once in
//! [`EXTRA_FAMILIES`] and push [`Sample`]s for it from `Shard::collect_samples` (shard.rs) or from
//! a shard extension's `collect_samples` (the broker's work queues).
//! `shardline stats` prints every extra family, and `/metrics` exports it with its labels.

use std::time::Duration;

use hdrhistogram::Histogram;

/// Largest latency a histogram keeps apart (larger values are clamped to this).
pub const LATENCY_NS_MAX: u64 = 60_000_000_000;
/// Largest size a byte histogram keeps apart.
pub const SIZE_BYTES_MAX: u64 = 1 << 34;
/// Relative precision of every histogram: 2 significant digits (error below 1%).
const SIGNIFICANT_DIGITS: u8 = 2;

/// An HDR histogram of non-negative integers (nanoseconds or bytes) with its exact sum.
#[derive(Debug, Clone)]
pub struct Recorder {
    histogram: Histogram<u64>,
    sum: u64,
}

impl Recorder {
    #[allow(clippy::expect_used)] // constant arguments; a failure is a programming error
    fn new(max: u64) -> Recorder {
        let histogram = Histogram::new_with_bounds(1, max, SIGNIFICANT_DIGITS)
            .expect("histogram bounds are constants: low 1, high >= 2, 2 significant digits");
        Recorder { histogram, sum: 0 }
    }

    pub fn latency() -> Recorder {
        Recorder::new(LATENCY_NS_MAX)
    }

    pub fn size() -> Recorder {
        Recorder::new(SIZE_BYTES_MAX)
    }

    /// Records one value (clamped into the histogram's range).
    pub fn record(&mut self, value: u64) {
        self.histogram.saturating_record(value.max(1));
        self.sum = self.sum.saturating_add(value);
    }

    pub fn record_duration(&mut self, d: Duration) {
        self.record(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    /// A copy for the scraper: only the occupied buckets.
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            buckets: self
                .histogram
                .iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_since_last_iteration()))
                .collect(),
            sum: self.sum,
        }
    }
}

/// A histogram as occupied buckets: `(highest value of the bucket, count)`, ascending. Exact
/// to the recorder's precision; merged across shards by concatenation and [`Self::merge`].
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct HistogramSnapshot {
    pub buckets: Vec<(u64, u64)>,
    /// Exact sum of the recorded values.
    pub sum: u64,
}

impl HistogramSnapshot {
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.1).sum()
    }

    /// Adds `other`'s counts (bucket boundaries are the same for equal precision).
    pub fn merge(&mut self, other: &HistogramSnapshot) {
        let mut all: Vec<(u64, u64)> = self
            .buckets
            .iter()
            .chain(other.buckets.iter())
            .copied()
            .collect();
        all.sort_unstable_by_key(|b| b.0);
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(all.len());
        for (value, count) in all {
            match merged.last_mut() {
                Some(last) if last.0 == value => last.1 += count,
                _ => merged.push((value, count)),
            }
        }
        self.buckets = merged;
        self.sum = self.sum.saturating_add(other.sum);
    }

    /// The value at quantile `q` (0..=1): the smallest bucket value with at least `q` of the
    /// samples at or below it; 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        let count = self.count();
        if count == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for &(value, n) in &self.buckets {
            seen += n;
            if seen >= rank {
                return value;
            }
        }
        self.buckets.last().map_or(0, |b| b.0)
    }

    /// Cumulative counts at the given upper bounds (Prometheus `le` buckets, `+Inf` excluded).
    pub fn cumulative(&self, bounds: &[u64]) -> Vec<u64> {
        let mut out = Vec::with_capacity(bounds.len());
        let mut i = 0;
        let mut seen = 0;
        for &bound in bounds {
            while i < self.buckets.len() && self.buckets[i].0 <= bound {
                seen += self.buckets[i].1;
                i += 1;
            }
            out.push(seen);
        }
        out
    }
}

/// Counters and histograms of one shard (owned by the shard, see the module doc).
#[derive(Debug, Clone)]
pub struct ShardMetrics {
    /// Produce with `acks = durable`: from the append on the shard to the ack (fdatasync done).
    pub append_durable_ns: Recorder,
    /// Produce with `acks = leader` or `none`: the in-memory append on the shard.
    pub append_memory_ns: Recorder,
    /// Writes of one group commit (all its chunks, issued concurrently).
    pub flush_write_ns: Recorder,
    /// fdatasync of one group commit.
    pub fsync_ns: Recorder,
    /// Bytes written by one group commit (a carried partial last block counts again).
    pub flush_bytes: Recorder,
    /// Size of each appended record batch.
    pub batch_bytes: Recorder,
}

impl Default for ShardMetrics {
    fn default() -> Self {
        ShardMetrics {
            append_durable_ns: Recorder::latency(),
            append_memory_ns: Recorder::latency(),
            flush_write_ns: Recorder::latency(),
            fsync_ns: Recorder::latency(),
            flush_bytes: Recorder::size(),
            batch_bytes: Recorder::size(),
        }
    }
}

/// What a shard reports to a scrape: its counters, a copy of its histograms, and the state of
/// every partition it owns.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ShardMetricsSnapshot {
    pub stats: crate::api::ShardStats,
    /// Bytes appended and not yet taken by a flush (write chunks in memory).
    pub unflushed_bytes: u64,
    /// Reads (fetches and subscription pushes) served from the in-memory cache.
    pub cache_hits: u64,
    /// Reads that went to disk.
    pub cache_misses: u64,
    pub append_durable_ns: HistogramSnapshot,
    pub append_memory_ns: HistogramSnapshot,
    pub flush_write_ns: HistogramSnapshot,
    pub fsync_ns: HistogramSnapshot,
    pub flush_bytes: HistogramSnapshot,
    pub batch_bytes: HistogramSnapshot,
    pub partitions: Vec<crate::api::PartitionInfo>,
    /// Figures of the families in [`EXTRA_FAMILIES`].
    pub samples: Vec<Sample>,
}

impl ShardMetrics {
    /// Copies the histograms into `out`.
    pub fn fill(&self, out: &mut ShardMetricsSnapshot) {
        out.append_durable_ns = self.append_durable_ns.snapshot();
        out.append_memory_ns = self.append_memory_ns.snapshot();
        out.flush_write_ns = self.flush_write_ns.snapshot();
        out.fsync_ns = self.fsync_ns.snapshot();
        out.flush_bytes = self.flush_bytes.snapshot();
        out.batch_bytes = self.batch_bytes.snapshot();
    }
}

/// Whether a family only goes up (counter) or goes both ways (gauge).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum FamilyKind {
    Counter,
    Gauge,
}

/// A metric family exported through the generic path (see the module doc).
#[derive(Debug, Clone, Copy)]
pub struct FamilySpec {
    /// Full name, `shardline_` prefix included, without `_total` (added for counters).
    pub name: &'static str,
    pub help: &'static str,
    pub kind: FamilyKind,
    /// Label names, in the order every sample of the family gives their values.
    pub labels: &'static [&'static str],
}

/// One figure of an extra family: label values in the order of [`FamilySpec::labels`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Sample {
    pub family: &'static str,
    pub labels: Vec<String>,
    pub value: i64,
}

/// Families exported through the generic path (docs/operations.md, "Metrics"): the shards
/// push per-partition figures of the subsystems they own (work queues, segments); the figures
/// that join two owners (a group's committed offset and the log end of the partition, a queue
/// and its dead-letter topic) are added on the scrape thread (`Engine::metrics_snapshot`).
pub const EXTRA_FAMILIES: &[FamilySpec] = &[
    FamilySpec {
        name: "shardline_partition_segments",
        help: "Segment files of the partition's log",
        kind: FamilyKind::Gauge,
        labels: &["topic", "partition"],
    },
    FamilySpec {
        name: "shardline_group_committed_offset",
        help: "Offset the consumer group committed (the next it will consume)",
        kind: FamilyKind::Gauge,
        labels: &["group", "topic", "partition"],
    },
    FamilySpec {
        name: "shardline_group_lag",
        help: "Messages of the partition after the group's committed offset (log end - committed)",
        kind: FamilyKind::Gauge,
        labels: &["group", "topic", "partition"],
    },
    FamilySpec {
        name: "shardline_group_members",
        help: "Live members of the consumer group",
        kind: FamilyKind::Gauge,
        labels: &["group"],
    },
    FamilySpec {
        name: "shardline_queue_depth",
        help: "Messages of the work-queue partition waiting for a consumer (in flight excluded)",
        kind: FamilyKind::Gauge,
        labels: &["queue", "partition"],
    },
    FamilySpec {
        name: "shardline_queue_inflight",
        help: "Messages of the work-queue partition leased to a consumer and not yet acked",
        kind: FamilyKind::Gauge,
        labels: &["queue", "partition"],
    },
    FamilySpec {
        name: "shardline_queue_oldest_age_seconds",
        help: "Age of the oldest message of the partition not yet acked or dead-lettered",
        kind: FamilyKind::Gauge,
        labels: &["queue", "partition"],
    },
    FamilySpec {
        name: "shardline_queue_redeliveries",
        help: "Deliveries after the first (nacked or timed-out messages handed out again)",
        kind: FamilyKind::Counter,
        labels: &["queue", "partition"],
    },
    FamilySpec {
        name: "shardline_queue_dead_lettered",
        help: "Messages moved to the dead-letter topic (or dropped without one)",
        kind: FamilyKind::Counter,
        labels: &["queue", "partition"],
    },
    FamilySpec {
        name: "shardline_queue_purged",
        help: "Messages discarded by QueuePurge",
        kind: FamilyKind::Counter,
        labels: &["queue", "partition"],
    },
    FamilySpec {
        name: "shardline_queue_dlq_messages",
        help: "Records in the queue's dead-letter topic (log end - log start of each of its partitions)",
        kind: FamilyKind::Gauge,
        labels: &["queue", "dead_letter_topic", "partition"],
    },
];

/// The spec of an extra family, by name.
pub fn family_spec(name: &str) -> Option<&'static FamilySpec> {
    EXTRA_FAMILIES.iter().find(|f| f.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_cumulative_buckets_follow_recorded_values() {
        let mut r = Recorder::latency();
        for v in 1..=1000u64 {
            r.record(v * 1000); // 1 us .. 1 ms
        }
        let s = r.snapshot();
        assert_eq!(s.count(), 1000);
        assert_eq!(s.sum, (1..=1000u64).map(|v| v * 1000).sum::<u64>());
        let p50 = s.quantile(0.5);
        assert!((495_000..=505_000).contains(&p50), "{p50}");
        let p99 = s.quantile(0.99);
        assert!((985_000..=1_000_000 + 10_000).contains(&p99), "{p99}");
        let c = s.cumulative(&[0, 100_000, 2_000_000]);
        assert_eq!(c[0], 0);
        assert!((99..=101).contains(&c[1]), "{c:?}");
        assert_eq!(c[2], 1000);
        assert_eq!(HistogramSnapshot::default().quantile(0.5), 0);
    }

    #[test]
    fn merge_adds_counts_and_sums() {
        let mut a = Recorder::size();
        let mut b = Recorder::size();
        a.record(100);
        a.record(5000);
        b.record(100);
        b.record(1 << 20);
        let mut m = a.snapshot();
        m.merge(&b.snapshot());
        assert_eq!(m.count(), 4);
        assert_eq!(m.sum, 100 + 5000 + 100 + (1 << 20));
        assert_eq!(
            m.buckets.first().map(|x| x.1),
            Some(2),
            "equal buckets merged"
        );
        assert!(m.buckets.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn out_of_range_values_are_clamped_not_lost() {
        let mut r = Recorder::latency();
        r.record(0);
        r.record(u64::MAX);
        assert_eq!(r.snapshot().count(), 2);
    }
}
