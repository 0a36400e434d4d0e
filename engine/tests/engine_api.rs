//! The embedding API end to end on real O_DIRECT files: topic administration and its errors,
//! produce with each ack level, fetch and long-poll, subscriptions, offset lookup by time,
//! retention, restart (same and different shard count) without losing acknowledged data.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::time::{Duration, Instant};

use bytes::Bytes;
use shardline_engine::batch::{self, BatchBuilder};
use shardline_engine::{Acks, Engine, EngineConfig, Error, FetchRequest, OffsetSpec, TopicConfig};

fn config(dir: &std::path::Path, shards: usize) -> EngineConfig {
    let mut c = EngineConfig::with_data_dir(dir);
    c.shards = shards;
    c.pin_shards = false;
    c.io_memory_bytes = 512 << 10;
    c
}

fn values_batch(prefix: &str, n: usize) -> Bytes {
    batch::batch_of_values((0..n).map(|i| format!("{prefix}-{i}"))).unwrap()
}

/// Every record value from `from` up to the high watermark, in order.
fn read_values(e: &Engine, topic: &str, p: u32, from: u64) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut offset = from;
    loop {
        let r = e
            .fetch(FetchRequest {
                max_bytes: 4096,
                ..FetchRequest::new(topic, p, offset)
            })
            .unwrap();
        if r.records == 0 {
            return out;
        }
        for chunk in &r.chunks {
            for b in batch::split_batches(chunk).unwrap() {
                let (h, recs) = batch::decode(b).unwrap();
                for (i, rec) in recs.into_iter().enumerate() {
                    let o = h.base_offset + i as u64;
                    if o >= offset {
                        out.push((o, rec.value));
                    }
                }
            }
        }
        assert!(r.next_offset > offset, "fetch made no progress");
        offset = r.next_offset;
    }
}

#[test]
fn topic_admin_and_its_errors() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(config(dir.path(), 2)).unwrap();
    let t = e
        .create_topic("orders", TopicConfig::with_partitions(5))
        .unwrap();
    assert_eq!(t.shards.len(), 5);
    assert!(matches!(
        e.create_topic("orders", TopicConfig::default()),
        Err(Error::TopicExists(_))
    ));
    assert!(matches!(
        e.create_topic("bad/name", TopicConfig::default()),
        Err(Error::InvalidTopicName { .. })
    ));
    assert!(matches!(
        e.create_topic("zero", TopicConfig::with_partitions(0)),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        e.describe_topic("nope"),
        Err(Error::UnknownTopic(_))
    ));
    assert!(matches!(
        e.produce("nope", 0, values_batch("x", 1), Acks::Leader),
        Err(Error::UnknownTopic(_))
    ));
    assert!(matches!(
        e.produce("orders", 9, values_batch("x", 1), Acks::Leader),
        Err(Error::UnknownPartition { .. })
    ));
    // Placement spreads evenly: 5 partitions over 2 shards is 3 + 2.
    let d = e.describe_topic("orders").unwrap();
    let on0 = d.partitions.iter().filter(|p| p.shard == 0).count();
    assert!(on0 == 2 || on0 == 3);
    assert_eq!(e.list_topics().len(), 1);
    e.produce("orders", 1, values_batch("a", 3), Acks::Durable)
        .unwrap();
    e.delete_topic("orders").unwrap();
    assert!(matches!(
        e.delete_topic("orders"),
        Err(Error::UnknownTopic(_))
    ));
    assert!(matches!(
        e.produce("orders", 1, values_batch("x", 1), Acks::Leader),
        Err(Error::UnknownTopic(_))
    ));
    // Re-created topics start empty (new id, new directory).
    e.create_topic("orders", TopicConfig::with_partitions(2))
        .unwrap();
    assert_eq!(e.list_offset("orders", 1, OffsetSpec::Latest).unwrap(), 0);
    e.shutdown().unwrap();
    // Deleted topics leave no files behind.
    // (`__offsets`, the internal topic of committed offsets, is always there.)
    let left: Vec<_> = std::fs::read_dir(dir.path().join("topics"))
        .unwrap()
        .filter(|e| {
            !e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("__")
        })
        .collect();
    assert_eq!(
        left.len(),
        1,
        "only the re-created topic's directory remains"
    );
}

#[test]
fn corrupt_or_oversize_batches_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path(), 1);
    c.batch_bytes_max = 4096;
    let e = Engine::open(c).unwrap();
    e.create_topic("t", TopicConfig::default()).unwrap();
    let mut b = values_batch("v", 3).to_vec();
    let last = b.len() - 20;
    b[last] ^= 0xff;
    assert!(matches!(
        e.produce("t", 0, Bytes::from(b), Acks::Durable),
        Err(Error::CorruptBatch(_))
    ));
    let big = batch::batch_of_values([vec![0u8; 10_000]]).unwrap();
    assert!(matches!(
        e.produce("t", 0, big, Acks::Durable),
        Err(Error::BatchTooLarge { .. })
    ));
    assert_eq!(
        e.list_offset("t", 0, OffsetSpec::Latest).unwrap(),
        0,
        "nothing was appended"
    );
    e.shutdown().unwrap();
}

#[test]
fn produce_fetch_and_restart_keep_every_acknowledged_record() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(config(dir.path(), 2)).unwrap();
    e.create_topic("t", TopicConfig::with_partitions(3))
        .unwrap();
    // Producers on several threads, all ack levels.
    let mut handles = Vec::new();
    for p in 0..3u32 {
        let e = e.clone();
        handles.push(std::thread::spawn(move || {
            for i in 0..50 {
                let acks = [Acks::Durable, Acks::Leader, Acks::None][i % 3];
                let r = e
                    .produce("t", p, values_batch(&format!("p{p}b{i}"), 4), acks)
                    .unwrap();
                assert_eq!(r.is_some(), acks != Acks::None);
                if let Some(a) = r {
                    assert_eq!(a.last_offset - a.base_offset, 3);
                }
            }
            // A final durable produce covers everything before it on this partition.
            e.produce("t", p, values_batch("end", 1), Acks::Durable)
                .unwrap()
        }));
    }
    for h in handles {
        let ack = h.join().unwrap().unwrap();
        assert_eq!(ack.base_offset, 200);
    }
    for p in 0..3 {
        let vals = read_values(&e, "t", p, 0);
        assert_eq!(vals.len(), 201);
        assert!(
            vals.iter().enumerate().all(|(i, (o, _))| *o == i as u64),
            "offsets contiguous"
        );
        assert_eq!(vals[5].1, format!("p{p}b1-1").into_bytes());
    }
    let before: Vec<_> = (0..3).map(|p| read_values(&e, "t", p, 0)).collect();
    e.shutdown().unwrap();
    assert!(matches!(
        e.fetch(FetchRequest::new("t", 0, 0)),
        Err(Error::ShuttingDown)
    ));

    let e = Engine::open(config(dir.path(), 2)).unwrap();
    assert_eq!(
        e.recovery_report().truncated_bytes,
        0,
        "a clean shutdown leaves nothing torn"
    );
    let after: Vec<_> = (0..3).map(|p| read_values(&e, "t", p, 0)).collect();
    assert_eq!(before, after);
    e.shutdown().unwrap();

    // A different shard count moves partitions between shards, not data.
    let e = Engine::open(config(dir.path(), 1)).unwrap();
    assert!(
        e.describe_topic("t")
            .unwrap()
            .partitions
            .iter()
            .all(|p| p.shard == 0)
    );
    let after: Vec<_> = (0..3).map(|p| read_values(&e, "t", p, 0)).collect();
    assert_eq!(before, after);
    e.produce("t", 2, values_batch("more", 1), Acks::Durable)
        .unwrap();
    e.shutdown().unwrap();
}

#[test]
fn long_poll_and_subscription_see_new_batches_promptly() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(config(dir.path(), 1)).unwrap();
    e.create_topic("t", TopicConfig::default()).unwrap();
    let sub = e
        .subscribe("t", 0, OffsetSpec::Earliest, 1 << 20, 4)
        .unwrap();
    // The long poll runs on the partition's shard, where the test can see it park: its first
    // poll reads nothing and waits on the partition. Only then is the batch produced, so the
    // poll must be woken by the data (no sleep to order the two).
    let (parked_tx, parked_rx) = flume::bounded(1);
    let (done_tx, done_rx) = flume::bounded(1);
    e.run_on_shard(
        e.shard_of("t", 0).unwrap(),
        Box::new(move |h| {
            shardline_engine::rt::spawn_local(async move {
                let req = FetchRequest {
                    max_wait: Duration::from_secs(10),
                    ..FetchRequest::new("t", 0, 0)
                };
                let t0 = Instant::now();
                let mut poll = std::pin::pin!(h.engine.fetch_here(req));
                let parked = futures_lite::future::poll_once(poll.as_mut())
                    .await
                    .is_none();
                let _ = parked_tx.send(parked);
                let r = poll.await.map(|r| r.records);
                let _ = done_tx.send((r, t0.elapsed()));
            });
        }),
    )
    .unwrap();
    assert!(
        parked_rx.recv_timeout(Duration::from_secs(10)).unwrap(),
        "the long poll waits for data"
    );
    e.produce("t", 0, values_batch("x", 2), Acks::Leader)
        .unwrap();
    let (records, waited) = done_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let records = records.unwrap();
    assert_eq!(records, 2);
    assert!(
        waited < Duration::from_secs(5),
        "long poll returned on data, not on timeout"
    );
    let got = sub
        .recv_timeout(Duration::from_secs(5))
        .unwrap()
        .expect("pushed");
    assert_eq!(got.records, 2);
    assert_eq!(got.next_offset, 2);
    // An empty long poll waits about max_wait and returns nothing.
    let req = FetchRequest {
        max_wait: Duration::from_millis(100),
        ..FetchRequest::new("t", 0, 2)
    };
    let t0 = Instant::now();
    assert_eq!(e.fetch(req).unwrap().records, 0);
    assert!(t0.elapsed() >= Duration::from_millis(90));
    // Out of range is a clear error.
    assert!(matches!(
        e.fetch(FetchRequest::new("t", 0, 99)),
        Err(Error::OffsetOutOfRange { .. })
    ));
    drop(sub);
    e.shutdown().unwrap();
}

#[test]
fn offsets_by_timestamp() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(config(dir.path(), 1)).unwrap();
    e.create_topic("t", TopicConfig::default()).unwrap();
    for i in 0..20i64 {
        let mut b = BatchBuilder::new();
        b.push(1_000_000 + i * 1000, None, vec![1], Vec::new());
        b.push(1_000_000 + i * 1000 + 500, None, vec![2], Vec::new());
        e.produce("t", 0, b.build().unwrap(), Acks::Durable)
            .unwrap();
    }
    // Record 2k has timestamp 1_000_000 + 1000k, record 2k+1 has +500.
    assert_eq!(e.list_offset("t", 0, OffsetSpec::Timestamp(0)).unwrap(), 0);
    assert_eq!(
        e.list_offset("t", 0, OffsetSpec::Timestamp(1_005_000))
            .unwrap(),
        10
    );
    assert_eq!(
        e.list_offset("t", 0, OffsetSpec::Timestamp(1_005_001))
            .unwrap(),
        11
    );
    assert_eq!(
        e.list_offset("t", 0, OffsetSpec::Timestamp(1_005_501))
            .unwrap(),
        12
    );
    assert_eq!(
        e.list_offset("t", 0, OffsetSpec::Timestamp(9_000_000))
            .unwrap(),
        40,
        "none newer: the end"
    );
    assert_eq!(e.list_offset("t", 0, OffsetSpec::Earliest).unwrap(), 0);
    e.shutdown().unwrap();
}

#[test]
fn retention_by_bytes_deletes_whole_old_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path(), 1);
    c.topic_defaults.segment_bytes = 64 << 10;
    let e = Engine::open(c).unwrap();
    e.create_topic("t", TopicConfig::default()).unwrap();
    for i in 0..40 {
        e.produce(
            "t",
            0,
            batch::batch_of_values([vec![i as u8; 8000]]).unwrap(),
            Acks::Durable,
        )
        .unwrap();
    }
    let before = e.describe_partition("t", 0).unwrap();
    assert!(before.segments >= 4, "{before:?}");
    e.set_retention("t", Some(100 << 10), None).unwrap();
    e.apply_retention_now().unwrap();
    let after = e.describe_partition("t", 0).unwrap();
    assert!(after.log_start > 0, "log start moved: {after:?}");
    assert!(after.size_bytes >= 100 << 10 && after.size_bytes < before.size_bytes);
    assert_eq!(after.high_watermark, 40);
    assert!(matches!(
        e.fetch(FetchRequest::new("t", 0, 0)),
        Err(Error::OffsetOutOfRange { .. })
    ));
    assert_eq!(
        read_values(&e, "t", 0, after.log_start).len() as u64,
        40 - after.log_start
    );
    e.shutdown().unwrap();
    // The retention setting and the new log start survive a restart.
    let e = Engine::open(config(dir.path(), 1)).unwrap();
    assert_eq!(
        e.list_offset("t", 0, OffsetSpec::Earliest).unwrap(),
        after.log_start
    );
    assert_eq!(
        e.describe_topic("t").unwrap().info.config.retention_bytes,
        Some(100 << 10)
    );
    e.shutdown().unwrap();
}

#[test]
fn a_second_engine_on_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(config(dir.path(), 1)).unwrap();
    assert!(matches!(
        Engine::open(config(dir.path(), 1)),
        Err(Error::Runtime(_))
    ));
    e.shutdown().unwrap();
    Engine::open(config(dir.path(), 1))
        .unwrap()
        .shutdown()
        .unwrap();
}

/// Regression: on a fresh engine (whose first DMA file is an empty new segment), glommio's
/// iopoll probe used to conclude "pollable" and every disk read then failed with EOPNOTSUPP.
/// Reads beyond the in-memory cache must come from disk, in the same process that wrote them.
#[test]
fn reads_beyond_the_cache_come_from_disk_on_a_fresh_engine() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path(), 1);
    c.topic_defaults.partition_cache_bytes = 16 << 10;
    let e = Engine::open(c).unwrap();
    e.create_topic("t", TopicConfig::default()).unwrap();
    // 800 compact batches of 8 small values: ~115 KB (v1 batches were ~3x larger).
    for i in 0..800 {
        e.produce("t", 0, values_batch(&format!("b{i}"), 8), Acks::Leader)
            .unwrap();
    }
    e.produce("t", 0, values_batch("end", 1), Acks::Durable)
        .unwrap();
    let d = e.describe_partition("t", 0).unwrap();
    assert!(
        d.cache_bytes <= 16 << 10 && d.size_bytes > 64 << 10,
        "{d:?}"
    );
    let vals = read_values(&e, "t", 0, 0);
    assert_eq!(vals.len(), 6401);
    assert_eq!(vals[8].1, b"b1-0".to_vec());
    e.shutdown().unwrap();
}

/// Data acknowledged at `leader` (or not at all) is fdatasync'd by the periodic sync within
/// about `sync_interval_ms`, without any durable producer asking for it.
#[test]
fn leader_acked_data_becomes_durable_within_the_sync_interval() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(config(dir.path(), 1)).unwrap();
    e.create_topic("t", TopicConfig::default()).unwrap();
    e.produce("t", 0, values_batch("a", 3), Acks::Leader)
        .unwrap();
    e.produce("t", 0, values_batch("b", 2), Acks::None).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let p = e.describe_partition("t", 0).unwrap();
        if p.durable_offset == 5 {
            break;
        }
        assert!(Instant::now() < deadline, "never synced: {p:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(e.shard_stats().unwrap()[0].syncs >= 1);
    e.shutdown().unwrap();
}

#[test]
fn a_relative_data_dir_works_like_an_absolute_one() {
    let dir = tempfile::tempdir().unwrap();
    // The same directory spelled relative to the working directory (`serve --data-dir ./data`).
    let cwd = std::env::current_dir().unwrap();
    let up = "../".repeat(cwd.components().count() - 1);
    let rel = std::path::PathBuf::from(format!(
        "{up}{}",
        dir.path().strip_prefix("/").unwrap().display()
    ));
    assert!(rel.is_relative());
    let e = Engine::open(config(&rel, 1)).unwrap();
    assert!(e.config().data_dir.is_absolute());
    e.create_topic("t", TopicConfig::with_partitions(2))
        .unwrap();
    let ack = e
        .produce("t", 1, values_batch("r", 3), Acks::Durable)
        .unwrap()
        .unwrap();
    assert_eq!((ack.base_offset, ack.last_offset), (0, 2));
    assert_eq!(read_values(&e, "t", 1, 0).len(), 3);
    e.shutdown().unwrap();
}
