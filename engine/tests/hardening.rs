//! Hardening regressions (issue 16) through the embedding API on real files: deleting queues
//! and their dead-letter topics never panics a shard (finding 5), a CreateTopic that cannot fit
//! the open-files limit leaves no trace and the data directory still opens (finding 2).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::time::Duration;

use shardline_engine::batch::{BatchBuilder, now_us};
use shardline_engine::{Acks, Engine, EngineConfig, QueueConfig, ReceiveOptions, TopicConfig};

fn config(dir: &std::path::Path) -> EngineConfig {
    let mut c = EngineConfig::with_data_dir(dir);
    c.shards = 2;
    c.pin_shards = false;
    c.io_memory_bytes = 512 << 10;
    c
}

fn queue(dlq: Option<&str>, partitions: u32) -> TopicConfig {
    TopicConfig {
        queue: Some(QueueConfig {
            visibility_timeout_ms: 50,
            max_deliveries: 1,
            backoff_base_ms: 0,
            backoff_max_ms: 0,
            dead_letter_topic: dlq.map(str::to_string),
            priority_levels: 1,
        }),
        ..TopicConfig::with_partitions(partitions)
    }
}

fn produce(e: &Engine, topic: &str, partition: u32, n: usize) {
    let mut b = BatchBuilder::new();
    for i in 0..n {
        b.push(now_us(), None, format!("v{i}").into_bytes(), vec![]);
    }
    e.produce(topic, partition, b.build().unwrap(), Acks::Durable)
        .unwrap();
}

/// The engine still creates, produces to and reads a fresh topic on every shard.
fn still_serves(e: &Engine, name: &str) {
    e.create_topic(name, TopicConfig::with_partitions(2))
        .unwrap();
    for p in 0..2 {
        produce(e, name, p, 3);
    }
    let d = e.describe_topic(name).unwrap();
    assert_eq!(d.partitions.len(), 2);
    e.delete_topic(name).unwrap();
}

// Proves finding 5: deleting a work queue (and its dead-letter queue) while receivers wait on
// it, leases expire and messages are being dead-lettered leaves every shard serving.
#[test]
fn deleting_queues_and_their_dead_letter_topics_keeps_shards_serving() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(config(dir.path())).unwrap();
    for round in 0..3 {
        let (q, dlq) = (format!("jobs{round}"), format!("jobs{round}.dlq"));
        e.create_queue(&q, queue(Some(&dlq), 2)).unwrap();
        for p in 0..2 {
            produce(&e, &q, p, 20);
        }
        // Leases that expire into the DLQ, and receivers waiting while the topic goes.
        for p in 0..2 {
            let o = ReceiveOptions {
                max_messages: 5,
                visibility_timeout_ms: Some(1),
                max_wait: Duration::from_millis(100),
            };
            let _ = e.queue_receive(&q, p, o).unwrap();
        }
        let waiters: Vec<_> = (0..2)
            .map(|p| {
                let e = e.clone();
                let q = q.clone();
                std::thread::spawn(move || {
                    let o = ReceiveOptions {
                        max_messages: 100,
                        visibility_timeout_ms: Some(1),
                        max_wait: Duration::from_millis(400),
                    };
                    // Ok or an error (the queue went away): never a hang or a panic.
                    let _ = e.queue_receive(&q, p, o);
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(20 * round));
        if round % 2 == 0 {
            e.delete_topic(&dlq).unwrap();
            e.delete_topic(&q).unwrap();
        } else {
            e.delete_topic(&q).unwrap();
            e.delete_topic(&dlq).unwrap();
        }
        for w in waiters {
            w.join().unwrap();
        }
        assert!(e.queue_stats(&q).is_err(), "gone with its topic");
        still_serves(&e, &format!("after{round}"));
        // Every shard answers its figures (a panicked shard would not).
        assert_eq!(e.shard_stats().unwrap().len(), 2);
    }
    e.shutdown().unwrap();
}

fn produce_bytes(e: &Engine, topic: &str, value_bytes: usize, records: usize) {
    let mut b = BatchBuilder::new();
    for _ in 0..records {
        b.push(now_us(), None, vec![7u8; value_bytes], vec![]);
    }
    e.produce(topic, 0, b.build().unwrap(), Acks::Durable)
        .unwrap();
}

// Proves finding 9: with the default 256 MiB segments, `retention_bytes` of 1 MiB holds the
// log to within one small segment of the limit (segments roll at retention_bytes / 4), also
// when single batches are larger than that roll size.
#[test]
fn retention_bytes_below_a_segment_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(config(dir.path())).unwrap();
    let retention_bytes: u64 = 1 << 20;
    let t = TopicConfig {
        retention_bytes: Some(retention_bytes),
        ..TopicConfig::with_partitions(1)
    };
    e.create_topic("r", t).unwrap();
    // 6 MiB in batches of ~64 KiB, then a few oversized ones of ~400 KiB.
    for _ in 0..96 {
        produce_bytes(&e, "r", 1024, 64);
    }
    for _ in 0..4 {
        produce_bytes(&e, "r", 4096, 100);
    }
    for _ in 0..4 {
        produce_bytes(&e, "r", 1024, 64);
    }
    e.apply_retention_now().unwrap();
    let p = &e.describe_topic("r").unwrap().partitions[0];
    let roll = retention_bytes / 4;
    // One segment of slack, plus one oversized batch that went into a segment alone.
    let slack = roll + (420 << 10);
    assert!(
        p.size_bytes <= retention_bytes + slack,
        "{} bytes kept for retention_bytes {retention_bytes} ({} segments)",
        p.size_bytes,
        p.segments
    );
    assert!(p.size_bytes >= retention_bytes, "never below the limit");
    assert!(p.log_start > 0, "old segments were deleted");
    e.shutdown().unwrap();
}

// Proves finding 2: a CreateTopic whose partitions cannot fit the open-files limit is refused
// with an error naming the limit, leaves no trace (not listed, no directory), and the data
// directory opens again.
#[test]
fn a_create_beyond_the_open_files_limit_leaves_no_trace() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(config(dir.path())).unwrap();
    let limit = shardline_engine::util::fd::open_files_limit().expect("RLIMIT_NOFILE");
    let partitions = u32::try_from(limit).unwrap_or(u32::MAX).min(100_000);
    let err = e
        .create_topic("huge", TopicConfig::with_partitions(partitions))
        .unwrap_err()
        .to_string();
    assert!(err.contains("RLIMIT_NOFILE"), "{err}");
    assert!(e.list_topics().iter().all(|t| t.name != "huge"));
    let topics_dir = dir.path().join("topics");
    let leftovers: Vec<_> = std::fs::read_dir(&topics_dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("huge"))
                .collect()
        })
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    e.create_topic("small", TopicConfig::with_partitions(4))
        .unwrap();
    e.shutdown().unwrap();
    let e = Engine::open(config(dir.path())).unwrap();
    assert!(e.list_topics().iter().any(|t| t.name == "small"));
    assert!(e.list_topics().iter().all(|t| t.name != "huge"));
    e.shutdown().unwrap();
}
