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
            strict_priority: false,
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

fn topic_dirs(data: &std::path::Path, prefix: &str) -> Vec<String> {
    std::fs::read_dir(data.join("topics"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// Reads every record of `topic`/0 (through the embedding API) and returns the count.
fn records_in(e: &Engine, topic: &str) -> u64 {
    let d = e.describe_topic(topic).unwrap();
    d.partitions[0].high_watermark - d.partitions[0].log_start
}

// Proves (admin-operation crash model, docs/reliability.md): an admin operation is one atomic
// metadata write (crash-tested through CrashStorage in metadata.rs) plus file work the next
// start redoes or undoes. Every image a crash can leave opens, and each topic is either whole
// or gone:
// - create, crashed after the metadata write and before its partition directories: the topic
//   exists with all its partitions (created at open) and takes writes;
// - create, crashed before the metadata write with directories made, or delete, crashed after
//   the metadata write and before the directories went: the topic is gone, its directory too;
// - a metadata write cut short (a stale temporary file): the old metadata, the file ignored;
// - alter, crashed either side of its metadata write: the old or the new retention.
#[test]
fn every_crash_image_of_create_delete_and_alter_opens_whole() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let meta = data.join(shardline_engine::metadata::METADATA_FILE);
    let e = Engine::open(config(data)).unwrap();
    e.create_topic("keep", TopicConfig::with_partitions(1))
        .unwrap();
    produce(&e, "keep", 0, 5);
    e.shutdown().unwrap();
    let before = std::fs::read(&meta).unwrap();

    // Create: metadata written, partition directories not yet.
    let e = Engine::open(config(data)).unwrap();
    e.create_topic("born", TopicConfig::with_partitions(3))
        .unwrap();
    e.shutdown().unwrap();
    let with_born = std::fs::read(&meta).unwrap();
    for d in topic_dirs(data, "born-") {
        std::fs::remove_dir_all(data.join("topics").join(d)).unwrap();
    }
    let e = Engine::open(config(data)).unwrap();
    assert_eq!(e.describe_topic("born").unwrap().partitions.len(), 3);
    for p in 0..3 {
        produce(&e, "born", p, 1);
    }
    assert_eq!(records_in(&e, "keep"), 5);
    e.shutdown().unwrap();

    // Create before its metadata write, or delete after it: directories without metadata.
    std::fs::write(&meta, &before).unwrap();
    assert_eq!(topic_dirs(data, "born-").len(), 1);
    let e = Engine::open(config(data)).unwrap();
    assert!(e.describe_topic("born").is_err(), "gone");
    assert!(
        topic_dirs(data, "born-").is_empty(),
        "its directory removed at open"
    );
    assert_eq!(records_in(&e, "keep"), 5);
    e.shutdown().unwrap();

    // A metadata write cut short: a stale temporary file next to the old metadata.
    std::fs::write(
        data.join("metadata.json.tmp"),
        &with_born[..with_born.len() / 2],
    )
    .unwrap();
    let e = Engine::open(config(data)).unwrap();
    assert!(e.describe_topic("born").is_err());
    assert_eq!(records_in(&e, "keep"), 5);

    // Alter: either side of its metadata write.
    e.set_retention("keep", Some(1 << 20), None).unwrap();
    e.shutdown().unwrap();
    let altered = std::fs::read(&meta).unwrap();
    for (image, want) in [(&before, None), (&altered, Some(1 << 20))] {
        std::fs::write(&meta, image).unwrap();
        let e = Engine::open(config(data)).unwrap();
        let t = e.describe_topic("keep").unwrap();
        assert_eq!(t.info.config.retention_bytes, want);
        assert_eq!(records_in(&e, "keep"), 5);
        e.shutdown().unwrap();
    }
}

// Proves: a partition that cannot be opened at start is reported and fenced; the rest of the
// engine starts and serves (issue 16: one bad partition no longer keeps a server down).
#[test]
fn a_partition_that_cannot_be_opened_is_fenced_and_the_rest_starts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let e = Engine::open(config(data)).unwrap();
    let info = e
        .create_topic("t", TopicConfig::with_partitions(2))
        .unwrap();
    produce(&e, "t", 0, 3);
    produce(&e, "t", 1, 3);
    e.shutdown().unwrap();
    // Partition 1's directory becomes a file: it can no longer be opened.
    let p1 = shardline_engine::metadata::partition_dir(data, "t", info.id, 1);
    std::fs::remove_dir_all(&p1).unwrap();
    std::fs::write(&p1, b"not a directory").unwrap();
    let e = Engine::open(config(data)).unwrap();
    produce(&e, "t", 0, 2);
    let mut b = BatchBuilder::new();
    b.push(now_us(), None, b"x".to_vec(), vec![]);
    assert!(
        e.produce("t", 1, b.build().unwrap(), Acks::Durable)
            .is_err(),
        "the fenced partition refuses writes"
    );
    e.shutdown().unwrap();
}

// Proves (issue 16 item 3): partition counts from a request at their limit are refused before
// anything is allocated or written: AddPartitions to u32::MAX (placing them first allocated
// 16 GiB) and CreateTopic with u32::MAX partitions answer InvalidArgument at once, the topic
// is unchanged, and the engine serves.
#[test]
fn partition_counts_at_their_limit_are_refused_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(config(dir.path())).unwrap();
    e.create_topic("t", TopicConfig::with_partitions(1))
        .unwrap();
    let started = std::time::Instant::now();
    for n in [u32::MAX, u32::MAX / 2, 100_001] {
        let r = e.add_partitions("t", n);
        assert!(
            matches!(r, Err(shardline_engine::Error::InvalidArgument(_))),
            "add_partitions({n}): {r:?}"
        );
        let r = e.create_topic("u", TopicConfig::with_partitions(n));
        assert!(
            matches!(r, Err(shardline_engine::Error::InvalidArgument(_))),
            "create_topic({n}): {r:?}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(e.describe_topic("t").unwrap().partitions.len(), 1);
    assert!(e.describe_topic("u").is_err());
    still_serves(&e, "after");
}
