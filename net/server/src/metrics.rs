//! Connection and request counters of the server, and the gathering of one
//! [`MetricsResponse`] from them and the engine (docs/operations.md, "Metrics").
//!
//! Counters are per shard: each shard's connection tasks touch only their shard's slot, with
//! `Relaxed` atomics on a cache line of its own, so cores never contend. Errors (rare) go to a
//! per-shard map behind an uncontended mutex. A scrape reads everything from another thread.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use shardline_engine::Engine;
use shardline_engine::metrics::{HistogramSnapshot, ShardMetricsSnapshot};

use crate::protocol::{
    API_KEY_LIMIT, ApiCount, ErrorCount, Histogram, HistogramBucket, MetricSample, MetricsResponse,
    PartitionMetrics, Response, ShardMetrics, code,
};

/// Counter slot for api keys at or above [`API_KEY_LIMIT`] (unknown to this build).
const API_UNKNOWN_SLOT: usize = API_KEY_LIMIT;

/// Counters of the connections and requests one shard serves.
#[repr(align(128))]
struct ShardNet {
    connections_open: AtomicU64,
    connections_accepted: AtomicU64,
    connections_refused: AtomicU64,
    /// By api key; the last slot counts keys this build does not know.
    requests: [AtomicU64; API_KEY_LIMIT + 1],
    /// (api key, error code) -> count.
    errors: Mutex<BTreeMap<(u16, u16), u64>>,
}

impl ShardNet {
    fn new() -> Self {
        ShardNet {
            connections_open: AtomicU64::new(0),
            connections_accepted: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
            requests: std::array::from_fn(|_| AtomicU64::new(0)),
            errors: Mutex::new(BTreeMap::new()),
        }
    }
}

/// The server's counters, one slot per shard.
pub(crate) struct NetMetrics {
    shards: Vec<ShardNet>,
}

impl NetMetrics {
    pub(crate) fn new(shard_count: usize) -> Self {
        NetMetrics {
            shards: (0..shard_count.max(1)).map(|_| ShardNet::new()).collect(),
        }
    }

    fn slot(&self, shard: usize) -> &ShardNet {
        // Shard ids are below the count the server was started with; clamp defensively.
        &self.shards[shard.min(self.shards.len() - 1)]
    }

    /// A connection was accepted on `shard` (and refused at once when over the limit).
    pub(crate) fn connection_opened(&self, shard: usize, refused: bool) {
        let s = self.slot(shard);
        s.connections_accepted.fetch_add(1, Ordering::Relaxed);
        s.connections_open.fetch_add(1, Ordering::Relaxed);
        if refused {
            s.connections_refused.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn connection_closed(&self, shard: usize) {
        self.slot(shard)
            .connections_open
            .fetch_sub(1, Ordering::Relaxed);
    }

    /// An open connection moved from shard `from` to shard `to` (a Kafka connection follows
    /// its partition: kafka/handoff.rs); not a new acceptance.
    pub(crate) fn connection_moved(&self, from: usize, to: usize) {
        self.connection_closed(from);
        self.slot(to)
            .connections_open
            .fetch_add(1, Ordering::Relaxed);
    }

    /// A request frame arrived (counted before decoding: malformed requests count too).
    pub(crate) fn request(&self, shard: usize, api_key: u16) {
        let i = usize::from(api_key).min(API_UNKNOWN_SLOT);
        self.slot(shard).requests[i].fetch_add(1, Ordering::Relaxed);
    }

    /// An error was answered (a whole request, or one partition of it).
    pub(crate) fn error(&self, shard: usize, api_key: u16, error_code: u16) {
        if error_code == code::NONE {
            return;
        }
        if let Ok(mut m) = self.slot(shard).errors.lock() {
            *m.entry((api_key, error_code)).or_insert(0) += 1;
        }
    }

    /// Counts the per-partition error codes inside a response.
    pub(crate) fn response_errors(&self, shard: usize, r: &Response) {
        let api = r.api_key().as_u16();
        match r {
            Response::Produce(p) => {
                for part in p.topics.iter().flat_map(|t| &t.partitions) {
                    self.error(shard, api, part.error_code);
                }
            }
            Response::Fetch(f) => {
                for part in f.topics.iter().flat_map(|t| &t.partitions) {
                    self.error(shard, api, part.error_code);
                }
            }
            Response::ListOffsets(l) => {
                for part in l.topics.iter().flat_map(|t| &t.partitions) {
                    self.error(shard, api, part.error_code);
                }
            }
            _ => {}
        }
    }

    /// Server-wide totals, for the Stats api's named counters.
    pub(crate) fn counters(&self) -> Vec<crate::protocol::Counter> {
        let sum = |f: &dyn Fn(&ShardNet) -> u64| self.shards.iter().map(f).sum::<u64>();
        let requests = sum(&|s| s.requests.iter().map(|n| n.load(Ordering::Relaxed)).sum());
        let errors = sum(&|s| s.errors.lock().map_or(0, |m| m.values().sum()));
        [
            (
                "connections_open",
                sum(&|s| s.connections_open.load(Ordering::Relaxed)),
            ),
            (
                "connections_accepted",
                sum(&|s| s.connections_accepted.load(Ordering::Relaxed)),
            ),
            (
                "connections_refused",
                sum(&|s| s.connections_refused.load(Ordering::Relaxed)),
            ),
            ("requests", requests),
            ("errors", errors),
        ]
        .into_iter()
        .map(|(name, value)| crate::protocol::Counter {
            name: name.to_string(),
            value,
        })
        .collect()
    }

    fn fill(&self, shard: usize, out: &mut ShardMetrics) {
        let Some(s) = self.shards.get(shard) else {
            return;
        };
        out.connections_open = s.connections_open.load(Ordering::Relaxed);
        out.connections_accepted = s.connections_accepted.load(Ordering::Relaxed);
        out.connections_refused = s.connections_refused.load(Ordering::Relaxed);
        out.requests = s
            .requests
            .iter()
            .enumerate()
            .filter_map(|(key, n)| {
                let count = n.load(Ordering::Relaxed);
                (count > 0).then(|| ApiCount {
                    api_key: u16::try_from(key).unwrap_or(u16::MAX),
                    count,
                })
            })
            .collect();
        if let Ok(m) = s.errors.lock() {
            out.errors = m
                .iter()
                .map(|(&(api_key, code), &count)| ErrorCount {
                    api_key,
                    code,
                    count,
                })
                .collect();
        }
    }
}

fn histogram(h: &HistogramSnapshot) -> Histogram {
    Histogram {
        buckets: h
            .buckets
            .iter()
            .map(|&(value, count)| HistogramBucket { value, count })
            .collect(),
        sum: h.sum,
    }
}

/// The engine's histogram type, back from the wire form (percentiles, merging, buckets).
pub fn snapshot_of(h: &Histogram) -> HistogramSnapshot {
    HistogramSnapshot {
        buckets: h.buckets.iter().map(|b| (b.value, b.count)).collect(),
        sum: h.sum,
    }
}

fn shard_metrics(id: usize, s: &ShardMetricsSnapshot, net: &NetMetrics) -> ShardMetrics {
    let mut out = ShardMetrics {
        shard: u32::try_from(id).unwrap_or(u32::MAX),
        partitions: u32::try_from(s.stats.partitions).unwrap_or(u32::MAX),
        cache_bytes: s.stats.cache_bytes as u64,
        unflushed_bytes: s.unflushed_bytes,
        cache_hits: s.cache_hits,
        cache_misses: s.cache_misses,
        flushes: s.stats.flushes,
        syncs: s.stats.syncs,
        flushed_bytes: s.stats.flushed_bytes,
        append_durable_ns: histogram(&s.append_durable_ns),
        append_memory_ns: histogram(&s.append_memory_ns),
        flush_write_ns: histogram(&s.flush_write_ns),
        fsync_ns: histogram(&s.fsync_ns),
        flush_bytes: histogram(&s.flush_bytes),
        batch_bytes: histogram(&s.batch_bytes),
        ..ShardMetrics::default()
    };
    net.fill(id, &mut out);
    out
}

/// Resident memory of this process, from /proc/self/statm (0 where unavailable).
fn resident_bytes() -> u64 {
    let Ok(statm) = std::fs::read_to_string("/proc/self/statm") else {
        return 0;
    };
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * u64::try_from(page).unwrap_or(4096)
}

/// Asks every shard for its figures and adds the server's. Blocks on the shards' replies:
/// call it from a helper thread (the /metrics thread, an admin thread), never from a shard.
pub(crate) fn gather(
    engine: &Engine,
    net: &NetMetrics,
    uptime_ms: u64,
    include_partitions: bool,
) -> Result<MetricsResponse, shardline_engine::Error> {
    let shards = engine.metrics_snapshot()?;
    let mut out = MetricsResponse {
        uptime_ms,
        resident_bytes: resident_bytes(),
        ..MetricsResponse::default()
    };
    for (id, s) in shards.iter().enumerate() {
        out.shards.push(shard_metrics(id, s, net));
        if !include_partitions {
            continue;
        }
        for p in &s.partitions {
            out.partitions.push(PartitionMetrics {
                topic: p.topic.clone(),
                partition: p.partition,
                shard: u32::try_from(id).unwrap_or(u32::MAX),
                log_start: p.log_start,
                high_watermark: p.high_watermark,
                durable_offset: p.durable_offset,
                size_bytes: p.size_bytes,
                produced_records: p.produced_records,
                produced_bytes: p.produced_bytes,
                fetched_records: p.fetched_records,
                fetched_bytes: p.fetched_bytes,
            });
        }
        out.samples.extend(s.samples.iter().map(|x| MetricSample {
            family: x.family.to_string(),
            labels: x.labels.clone(),
            value: x.value,
        }));
    }
    out.partitions
        .sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ProducePartitionResult, ProduceResponse, ProduceTopicResult};

    #[test]
    fn counters_land_in_their_shard_and_slot() {
        let m = NetMetrics::new(2);
        m.connection_opened(1, false);
        m.connection_opened(1, true);
        m.connection_closed(1);
        m.request(1, 7);
        m.request(1, 7);
        m.request(1, 9999);
        m.error(1, 7, code::NONE);
        m.error(1, 7, code::UNKNOWN_TOPIC);
        let r = Response::Produce(ProduceResponse {
            topics: vec![ProduceTopicResult {
                name: "t".into(),
                partitions: vec![
                    ProducePartitionResult {
                        error_code: code::UNKNOWN_TOPIC,
                        ..Default::default()
                    },
                    ProducePartitionResult::default(),
                ],
            }],
        });
        m.response_errors(1, &r);
        let mut s = ShardMetrics::default();
        m.fill(1, &mut s);
        assert_eq!(
            (
                s.connections_open,
                s.connections_accepted,
                s.connections_refused
            ),
            (1, 2, 1)
        );
        assert_eq!(
            s.requests,
            vec![
                ApiCount {
                    api_key: 7,
                    count: 2
                },
                ApiCount {
                    api_key: API_UNKNOWN_SLOT as u16,
                    count: 1
                }
            ]
        );
        assert_eq!(
            s.errors,
            vec![ErrorCount {
                api_key: 7,
                code: code::UNKNOWN_TOPIC,
                count: 2
            }]
        );
        let mut other = ShardMetrics::default();
        m.fill(0, &mut other);
        assert!(other.requests.is_empty() && other.connections_accepted == 0);
    }
}
