//! Shard-local metrics through the embedding API on real files: every histogram counts one
//! sample per event (durable append, in-memory append, batch, flush, fsync), fetched records
//! count only what was delivered (not the part of a batch before the requested offset), cache
//! hits and disk reads are told apart, and `alter_retention` keeps the setting it is not asked
//! to change.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use shardline_engine::batch;
use shardline_engine::metrics::ShardMetricsSnapshot;
use shardline_engine::{Acks, Engine, EngineConfig, FetchRequest, TopicConfig};

fn engine(dir: &std::path::Path) -> Engine {
    let mut c = EngineConfig::with_data_dir(dir);
    c.shards = 1;
    c.pin_shards = false;
    c.io_memory_bytes = 512 << 10;
    Engine::open(c).unwrap()
}

fn snapshot(e: &Engine) -> ShardMetricsSnapshot {
    let mut all = e.metrics_snapshot().unwrap();
    assert_eq!(all.len(), 1);
    all.remove(0)
}

#[test]
fn histograms_and_counters_count_each_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    e.create_topic("m", TopicConfig::with_partitions(1))
        .unwrap();
    let batch = || batch::batch_of_values((0..10).map(|i| format!("v{i}"))).unwrap();
    let bytes = batch().len() as u64;
    // The leader-acked batch first: the durable acks after it cover it too, so every batch
    // is written (visible to the fetch below) once the last produce returns.
    e.produce("m", 0, batch(), Acks::Leader).unwrap();
    for _ in 0..3 {
        e.produce("m", 0, batch(), Acks::Durable).unwrap();
    }
    let s = snapshot(&e);
    assert_eq!(
        s.append_durable_ns.count(),
        3,
        "one sample per durable produce"
    );
    assert_eq!(
        s.append_memory_ns.count(),
        1,
        "one sample per leader produce"
    );
    assert_eq!(s.batch_bytes.count(), 4);
    assert_eq!(s.batch_bytes.sum, 4 * bytes);
    assert_eq!(
        s.flush_write_ns.count(),
        s.stats.flushes,
        "one write sample per flush"
    );
    assert_eq!(
        s.fsync_ns.count(),
        s.stats.syncs,
        "one fsync sample per synced flush"
    );
    assert!(s.stats.syncs >= 1, "durable acks needed an fsync");
    assert!(s.append_durable_ns.quantile(0.5) > 0);
    let p = topic_m(&s);
    assert_eq!((p.produced_records, p.produced_bytes), (40, 4 * bytes));

    // From offset 5 the first batch is returned whole, but only 5 of its records (and the
    // 30 after it) are delivered.
    let r = e.fetch(FetchRequest::new("m", 0, 5)).unwrap();
    assert_eq!(r.records, 40, "whole batches come back");
    let s = snapshot(&e);
    assert_eq!(topic_m(&s).fetched_records, 35);
    assert_eq!(topic_m(&s).fetched_bytes, r.bytes as u64);
    assert_eq!(
        (s.cache_hits, s.cache_misses),
        (1, 0),
        "recent batches come from the cache"
    );
    assert_eq!(
        s.samples.len(),
        s.partitions.len(),
        "one segments sample per partition (topic m's and `__offsets`')"
    );
    let m = s
        .samples
        .iter()
        .find(|x| x.labels == vec!["m".to_string(), "0".to_string()])
        .expect("topic m's segments sample");
    assert_eq!(m.family, "shardline_partition_segments");
    assert_eq!(m.value, 1);
    e.shutdown().unwrap();

    // After a restart the cache is empty: the same read goes to disk.
    let e = engine(dir.path());
    e.fetch(FetchRequest::new("m", 0, 0)).unwrap();
    let s = snapshot(&e);
    assert_eq!((s.cache_hits, s.cache_misses), (0, 1));
    assert_eq!(topic_m(&s).fetched_records, 40);
    // Every partition recovered: topic m's and the internal `__offsets` topic's.
    assert_eq!(e.recovery_report().partitions as usize, s.partitions.len());
    e.shutdown().unwrap();
}

#[test]
fn alter_retention_changes_only_what_it_is_asked_to() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    e.create_topic("r", TopicConfig::with_partitions(2))
        .unwrap();
    let t = e.alter_retention("r", |_| Some(1 << 20), |ms| ms).unwrap();
    assert_eq!(
        (t.config.retention_bytes, t.config.retention_ms),
        (Some(1 << 20), None)
    );
    let t = e.alter_retention("r", |b| b, |_| Some(60_000)).unwrap();
    assert_eq!(
        (t.config.retention_bytes, t.config.retention_ms),
        (Some(1 << 20), Some(60_000))
    );
    assert!(e.alter_retention("missing", |b| b, |m| m).is_err());
    e.shutdown().unwrap();
    // Persisted: a restart sees it.
    let e = engine(dir.path());
    let d = e.describe_topic("r").unwrap();
    assert_eq!(d.info.config.retention_ms, Some(60_000));
    e.shutdown().unwrap();
}

/// Topic m's partition (the snapshot also lists the internal `__offsets` topic's).
fn topic_m(
    s: &shardline_engine::metrics::ShardMetricsSnapshot,
) -> &shardline_engine::shard::PartitionInfo {
    s.partitions
        .iter()
        .find(|p| p.topic == "m")
        .expect("topic m in the snapshot")
}
