//! Operator figures and actions through the embedding API on real files (docs/operations.md):
//! - group lag in a metrics snapshot is exactly log end minus committed offset, per partition,
//!   and moves when more is produced or committed;
//! - the queue families (depth, in flight, redeliveries, dead-lettered, DLQ records) equal the
//!   figures of a scripted receive / nack / dead-letter sequence;
//! - resetting a group's offsets is refused while it has live members, works to earliest,
//!   latest, an offset (clamped) and a timestamp once empty, and survives a restart;
//! - purging a queue discards everything below the end (in-flight leases are refused
//!   afterwards), survives a restart, and later messages are delivered.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use shardline_engine::batch;
use shardline_engine::groups::{OffsetCommit, ResetTarget};
use shardline_engine::{
    Acks, Engine, EngineConfig, Error, LeaseError, QueueConfig, ReceiveOptions, TopicConfig,
};

fn config(dir: &std::path::Path) -> EngineConfig {
    let mut c = EngineConfig::with_data_dir(dir);
    c.shards = 2;
    c.pin_shards = false;
    c.io_memory_bytes = 512 << 10;
    c
}

/// Every extra-family sample of a snapshot: (family, labels) -> value.
fn samples(e: &Engine) -> BTreeMap<(String, Vec<String>), i64> {
    e.metrics_snapshot()
        .unwrap()
        .into_iter()
        .flat_map(|s| s.samples)
        .map(|s| ((s.family.to_string(), s.labels), s.value))
        .collect()
}

fn sample(all: &BTreeMap<(String, Vec<String>), i64>, family: &str, labels: &[&str]) -> i64 {
    let key = (
        family.to_string(),
        labels.iter().map(|l| (*l).to_string()).collect(),
    );
    *all.get(&key)
        .unwrap_or_else(|| panic!("no {family}{labels:?} in {all:?}"))
}

fn produce(e: &Engine, topic: &str, partition: u32, n: usize) {
    let b = batch::batch_of_values((0..n).map(|i| format!("v{i}"))).unwrap();
    e.produce(topic, partition, b, Acks::Durable).unwrap();
}

fn commit(e: &Engine, group: &str, topic: &str, partition: u32, offset: u64) {
    let c = OffsetCommit {
        partition,
        offset,
        metadata: String::new(),
    };
    e.commit_offsets(group, topic, "", 0, vec![c]).unwrap();
}

#[test]
fn group_lag_is_log_end_minus_committed() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(config(dir.path())).unwrap();
    e.create_topic("t", TopicConfig::with_partitions(2))
        .unwrap();
    produce(&e, "t", 0, 10);
    produce(&e, "t", 1, 4);
    commit(&e, "g", "t", 0, 3);
    commit(&e, "g", "t", 1, 4);
    let s = samples(&e);
    assert_eq!(sample(&s, "shardline_group_lag", &["g", "t", "0"]), 7);
    assert_eq!(sample(&s, "shardline_group_lag", &["g", "t", "1"]), 0);
    assert_eq!(
        sample(&s, "shardline_group_committed_offset", &["g", "t", "0"]),
        3
    );
    produce(&e, "t", 1, 5);
    commit(&e, "g", "t", 0, 10);
    let s = samples(&e);
    assert_eq!(sample(&s, "shardline_group_lag", &["g", "t", "0"]), 0);
    assert_eq!(sample(&s, "shardline_group_lag", &["g", "t", "1"]), 5);
    assert_eq!(sample(&s, "shardline_group_members", &["g"]), 0);
    e.join_group("g", "t", "c1", 10_000).unwrap();
    assert_eq!(sample(&samples(&e), "shardline_group_members", &["g"]), 1);
    e.shutdown().unwrap();
}

#[test]
fn reset_offsets_needs_an_empty_group_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let before_ms;
    {
        let e = Engine::open(config(dir.path())).unwrap();
        e.create_topic("t", TopicConfig::with_partitions(2))
            .unwrap();
        produce(&e, "t", 0, 5);
        produce(&e, "t", 1, 5);
        std::thread::sleep(Duration::from_millis(5));
        before_ms = batch::now_us() / 1000;
        produce(&e, "t", 0, 3);
        commit(&e, "g", "t", 0, 2);
        let m = e.join_group("g", "t", "c1", 10_000).unwrap();
        let refused = e.reset_group_offsets("g", "t", None, ResetTarget::Earliest, false);
        assert!(
            matches!(refused, Err(Error::GroupNotEmpty { members: 1, .. })),
            "{refused:?}"
        );
        assert_eq!(refused.unwrap_err().code(), 250);
        e.leave_group("g", &m.member_id).unwrap();

        let r = e
            .reset_group_offsets("g", "t", None, ResetTarget::Latest, false)
            .unwrap();
        assert_eq!(
            r.iter()
                .map(|x| (x.partition, x.previous, x.offset))
                .collect::<Vec<_>>(),
            vec![(0, Some(2), 8), (1, None, 5)]
        );
        let dry = e
            .reset_group_offsets("g", "t", Some(0), ResetTarget::Earliest, true)
            .unwrap();
        assert_eq!((dry[0].previous, dry[0].offset), (Some(8), 0));
        assert_eq!(e.fetch_offsets("g", "t").unwrap()[0].1.offset, 8, "dry run");
        let r = e
            .reset_group_offsets("g", "t", Some(1), ResetTarget::Offset(99), false)
            .unwrap();
        assert_eq!(r[0].offset, 5, "clamped to the log end");
        let r = e
            .reset_group_offsets(
                "g",
                "t",
                Some(0),
                ResetTarget::TimestampMs(before_ms),
                false,
            )
            .unwrap();
        assert_eq!(r[0].offset, 5, "first record at or after the timestamp");
        assert!(matches!(
            e.reset_group_offsets("g", "t", Some(7), ResetTarget::Latest, false),
            Err(Error::UnknownPartition { partition: 7, .. })
        ));
        e.shutdown().unwrap();
    }
    let e = Engine::open(config(dir.path())).unwrap();
    let offsets: Vec<(u32, u64)> = e
        .fetch_offsets("g", "t")
        .unwrap()
        .into_iter()
        .map(|(p, c)| (p, c.offset))
        .collect();
    assert_eq!(offsets, vec![(0, 5), (1, 5)]);
    let listed = e.list_groups().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].group.as_str(), listed[0].members), ("g", 0));
    assert_eq!(listed[0].topics, vec!["t".to_string()]);
    e.shutdown().unwrap();
}

fn queue_config() -> TopicConfig {
    TopicConfig {
        queue: Some(QueueConfig {
            visibility_timeout_ms: 30_000,
            max_deliveries: 2,
            backoff_base_ms: 0,
            backoff_max_ms: 0,
            dead_letter_topic: Some("q.dlq".into()),
            priority_levels: 1,
            strict_priority: false,
        }),
        ..TopicConfig::with_partitions(1)
    }
}

fn receive(e: &Engine, max: usize) -> Vec<shardline_engine::QueueMessage> {
    let o = ReceiveOptions {
        max_messages: max,
        visibility_timeout_ms: None,
        max_wait: Duration::from_millis(200),
    };
    e.queue_receive("q", 0, o).unwrap()
}

#[test]
fn queue_figures_follow_a_scripted_sequence_and_purge_discards_them() {
    let dir = tempfile::tempdir().unwrap();
    let held;
    {
        let e = Engine::open(config(dir.path())).unwrap();
        e.create_queue("q", queue_config()).unwrap();
        produce(&e, "q", 0, 5);
        let first = receive(&e, 2); // offsets 0 and 1 in flight
        assert_eq!(first.len(), 2);
        held = first[1].receipt();
        e.queue_nack("q", 0, &[first[0].receipt()], Some(0))
            .unwrap();
        let again = receive(&e, 1);
        assert_eq!((again[0].offset, again[0].attempt), (0, 2));
        // The last allowed delivery nacked: offset 0 goes to the dead-letter topic.
        e.queue_nack("q", 0, &[again[0].receipt()], Some(0))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let s = loop {
            let s = samples(&e);
            if s.get(&(
                "shardline_queue_dead_lettered".into(),
                vec!["q".into(), "0".into()],
            )) == Some(&1)
                || Instant::now() > deadline
            {
                break s;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let q = ["q", "0"];
        assert_eq!(sample(&s, "shardline_queue_depth", &q), 3);
        assert_eq!(sample(&s, "shardline_queue_inflight", &q), 1);
        assert_eq!(sample(&s, "shardline_queue_redeliveries", &q), 1);
        assert_eq!(sample(&s, "shardline_queue_dead_lettered", &q), 1);
        assert_eq!(
            sample(&s, "shardline_queue_dlq_messages", &["q", "q.dlq", "0"]),
            1
        );
        assert_eq!(sample(&s, "shardline_queue_depth", &["q.dlq", "0"]), 1);
        assert!(sample(&s, "shardline_queue_oldest_age_seconds", &q) >= 0);

        let purged = e.queue_purge("q").unwrap();
        assert_eq!((purged[0].purged, purged[0].purged_until), (4, 5));
        let s = samples(&e);
        assert_eq!(sample(&s, "shardline_queue_depth", &q), 0);
        assert_eq!(sample(&s, "shardline_queue_inflight", &q), 0);
        assert_eq!(sample(&s, "shardline_queue_purged", &q), 4);
        assert_eq!(
            e.queue_ack("q", 0, &[held]).unwrap(),
            vec![Err(LeaseError::Done)],
            "a purged lease is refused"
        );
        e.shutdown().unwrap();
    }
    let e = Engine::open(config(dir.path())).unwrap();
    let st = &e.queue_stats("q").unwrap()[0];
    assert_eq!((st.depth, st.in_flight, st.ack_floor), (0, 0, 5));
    assert!(receive(&e, 10).is_empty(), "nothing purged comes back");
    produce(&e, "q", 0, 2);
    let got = receive(&e, 10);
    assert_eq!(
        got.iter()
            .map(|m| (m.offset, m.attempt))
            .collect::<Vec<_>>(),
        vec![(5, 1), (6, 1)]
    );
    assert!(matches!(e.queue_purge("nope"), Err(Error::UnknownTopic(_))));
    e.create_topic("plain", TopicConfig::with_partitions(1))
        .unwrap();
    assert!(matches!(e.queue_purge("plain"), Err(Error::NotAQueue(_))));
    e.shutdown().unwrap();
}
