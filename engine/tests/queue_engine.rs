//! Work queues through the embedding API on real O_DIRECT files: leases, acks, nacks with
//! backoff, dead-lettering with the original headers plus reason and count, redrive, and ack
//! state that survives a clean restart (nothing acked comes back; unacked messages do, with
//! their delivery counts).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::time::Duration;

use shardline_engine::batch::{BatchBuilder, Header, now_us};
use shardline_engine::{
    Acks, Engine, EngineConfig, LeaseError, QueueConfig, ReceiveOptions, TopicConfig,
};

fn config(dir: &std::path::Path) -> EngineConfig {
    let mut c = EngineConfig::with_data_dir(dir);
    c.shards = 2;
    c.pin_shards = false;
    c.io_memory_bytes = 512 << 10;
    c
}

fn queue(dlq: Option<&str>, levels: u8) -> TopicConfig {
    TopicConfig {
        queue: Some(QueueConfig {
            visibility_timeout_ms: 200,
            max_deliveries: 2,
            backoff_base_ms: 0,
            backoff_max_ms: 0,
            dead_letter_topic: dlq.map(str::to_string),
            priority_levels: levels,
            strict_priority: false,
        }),
        ..TopicConfig::with_partitions(1)
    }
}

fn produce(e: &Engine, topic: &str, values: &[(&str, Option<u8>)]) {
    let mut b = BatchBuilder::new();
    for (v, prio) in values {
        let mut headers = vec![Header {
            key: "trace".into(),
            value: b"t-1".to_vec(),
        }];
        if let Some(p) = prio {
            headers.push(Header {
                key: "priority".into(),
                value: p.to_string().into_bytes(),
            });
        }
        b.push(now_us(), None, v.as_bytes().to_vec(), headers);
    }
    e.produce(topic, 0, b.build().unwrap(), Acks::Durable)
        .unwrap();
}

fn receive(e: &Engine, topic: &str, max: usize) -> Vec<shardline_engine::QueueMessage> {
    let o = ReceiveOptions {
        max_messages: max,
        visibility_timeout_ms: None,
        max_wait: Duration::from_millis(500),
    };
    e.queue_receive(topic, 0, o).unwrap()
}

#[test]
fn leases_acks_dead_letters_and_redrive() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(config(dir.path())).unwrap();
    e.create_queue("jobs", queue(Some("jobs.dlq"), 1)).unwrap();
    produce(&e, "jobs", &[("a", None), ("b", None), ("c", None)]);

    // A long lease, so that the check below holds on a loaded machine.
    let long = ReceiveOptions {
        max_messages: 10,
        visibility_timeout_ms: Some(30_000),
        max_wait: Duration::from_millis(500),
    };
    let got = e.queue_receive("jobs", 0, long).unwrap();
    assert_eq!(got.len(), 3);
    assert!(got.iter().all(|m| m.attempt == 1));
    // A second consumer sees nothing while the leases hold.
    assert!(
        e.queue_receive("jobs", 0, ReceiveOptions::default())
            .unwrap()
            .is_empty()
    );
    let s = &e.queue_stats("jobs").unwrap()[0];
    assert_eq!((s.in_flight, s.depth), (3, 0));

    // a: acked (twice: the second is refused); b: nacked twice -> DLQ; c: lease expires twice.
    let r = e
        .queue_ack("jobs", 0, &[got[0].receipt(), got[0].receipt()])
        .unwrap();
    assert_eq!(r, vec![Ok(()), Err(LeaseError::Done)]);
    e.queue_nack("jobs", 0, &[got[1].receipt()], None).unwrap();
    let again = receive(&e, "jobs", 10);
    assert_eq!(again.len(), 1);
    let b2 = &again[0];
    assert_eq!((b2.value.as_slice(), b2.attempt), (&b"b"[..], 2));
    e.queue_nack("jobs", 0, &[b2.receipt()], None).unwrap();
    // c: its lease ends now, as if it had timed out; its next (last) lease times out for real.
    let r = e
        .queue_change_visibility("jobs", 0, &[got[2].receipt()], 0)
        .unwrap();
    assert_eq!(r, vec![Ok(())]);
    // Wait (bounded) for both b and c to land in the DLQ.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let _ = e
            .queue_receive("jobs", 0, ReceiveOptions::default())
            .unwrap();
        let s = e.queue_stats("jobs").unwrap()[0].clone();
        if s.dead_lettered == 2 {
            assert_eq!((s.depth, s.in_flight, s.ack_floor), (0, 0, 3));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{s:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let dead = e.queue_peek("jobs.dlq", 0, 10).unwrap();
    assert_eq!(dead.len(), 2);
    let b = dead.iter().find(|m| m.value == b"b").unwrap();
    assert_eq!(b.header("trace"), Some(&b"t-1"[..]));
    assert_eq!(
        b.header("x-dlq-reason"),
        Some(&b"max_deliveries_nacked"[..])
    );
    assert_eq!(b.header("x-dlq-delivery-count"), Some(&b"2"[..]));
    assert_eq!(b.header("x-dlq-original-topic"), Some(&b"jobs"[..]));
    let c = dead.iter().find(|m| m.value == b"c").unwrap();
    assert_eq!(
        c.header("x-dlq-reason"),
        Some(&b"max_deliveries_timed_out"[..])
    );

    assert_eq!(e.queue_redrive("jobs.dlq", 100).unwrap(), 2);
    let back = receive(&e, "jobs", 10);
    let mut values: Vec<_> = back.iter().map(|m| m.value.clone()).collect();
    values.sort();
    assert_eq!(values, vec![b"b".to_vec(), b"c".to_vec()]);
    assert!(
        back.iter()
            .all(|m| m.header("x-dlq-reason").is_none() && m.attempt == 1)
    );
    assert_eq!(e.queue_stats("jobs.dlq").unwrap()[0].depth, 0);
    e.shutdown().unwrap();
}

#[test]
fn ack_state_survives_a_clean_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let e = Engine::open(config(dir.path())).unwrap();
        e.create_queue("q", queue(None, 1)).unwrap();
        let values: Vec<String> = (0..100).map(|i| format!("m{i}")).collect();
        let refs: Vec<(&str, Option<u8>)> = values.iter().map(|v| (v.as_str(), None)).collect();
        produce(&e, "q", &refs);
        let got = receive(&e, "q", 60);
        assert_eq!(got.len(), 60);
        // Ack the even ones; the odd ones stay in flight across the restart.
        let even: Vec<_> = got
            .iter()
            .filter(|m| m.offset % 2 == 0)
            .map(|m| m.receipt())
            .collect();
        assert!(
            e.queue_ack("q", 0, &even)
                .unwrap()
                .iter()
                .all(Result::is_ok)
        );
        e.shutdown().unwrap();
    }
    let e = Engine::open(config(dir.path())).unwrap();
    let mut seen = Vec::new();
    for _ in 0..10 {
        let got = receive(&e, "q", 100);
        if got.is_empty() {
            break;
        }
        for m in &got {
            let expect = if m.offset < 60 { 2 } else { 1 };
            assert_eq!(m.attempt, expect, "offset {}", m.offset);
        }
        seen.extend(got.iter().map(|m| m.offset));
        e.queue_ack("q", 0, &got.iter().map(|m| m.receipt()).collect::<Vec<_>>())
            .unwrap();
    }
    seen.sort_unstable();
    let want: Vec<u64> = (0..100).filter(|o| *o >= 60 || o % 2 == 1).collect();
    assert_eq!(
        seen, want,
        "nothing acked comes back; every unacked message does"
    );
    let s = &e.queue_stats("q").unwrap()[0];
    assert_eq!((s.depth, s.in_flight, s.ack_floor), (0, 0, 100));
    e.shutdown().unwrap();
}

#[test]
fn priorities_are_served_higher_first() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(config(dir.path())).unwrap();
    e.create_queue("p", queue(None, 3)).unwrap();
    let low: Vec<String> = (0..30).map(|i| format!("low{i}")).collect();
    let high: Vec<String> = (0..30).map(|i| format!("high{i}")).collect();
    let mut all: Vec<(&str, Option<u8>)> = low.iter().map(|v| (v.as_str(), Some(0))).collect();
    all.extend(high.iter().map(|v| (v.as_str(), Some(2))));
    produce(&e, "p", &all);
    let got = receive(&e, "p", 20);
    let highs = got.iter().filter(|m| m.priority == 2).count();
    assert!(highs >= 18, "high first: {highs} of 20");
    assert_eq!(got[0].value, b"high0");
    e.shutdown().unwrap();
}

#[test]
fn plain_topics_are_not_queues() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(config(dir.path())).unwrap();
    e.create_topic("plain", TopicConfig::with_partitions(1))
        .unwrap();
    let err = e
        .queue_receive("plain", 0, ReceiveOptions::default())
        .unwrap_err();
    assert_eq!(err.code(), 226, "{err}");
    let bad = TopicConfig {
        queue: Some(QueueConfig {
            priority_levels: 0,
            ..QueueConfig::default()
        }),
        ..TopicConfig::with_partitions(1)
    };
    assert!(e.create_queue("bad", bad).is_err());
    e.shutdown().unwrap();
}

/// Compaction of the ack log by retention: with small segments, retention deletes its oldest
/// segments (so replay must start at the first retained snapshot), and a restart still finds
/// exactly the unacked messages.
#[test]
fn ack_log_compaction_keeps_the_state() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.topic_defaults.segment_bytes = 64 << 10;
    let mut stuck = Vec::new();
    {
        let e = Engine::open(c.clone()).unwrap();
        e.create_queue("c", queue(None, 1)).unwrap();
        // Compact (v2) ack batches are about a third smaller than v1: enough acks to fill and
        // retire several 64 KiB segments.
        let values: Vec<String> = (0..6000).map(|i| format!("m{i}")).collect();
        for chunk in values.chunks(500) {
            let refs: Vec<(&str, Option<u8>)> = chunk.iter().map(|v| (v.as_str(), None)).collect();
            produce(&e, "c", &refs);
        }
        let long = ReceiveOptions {
            max_messages: 50,
            visibility_timeout_ms: Some(600_000),
            max_wait: Duration::from_millis(200),
        };
        loop {
            let got = e.queue_receive("c", 0, long).unwrap();
            if got.is_empty() {
                break;
            }
            // Every 97th message stays in flight (unacked) forever.
            let (keep, ack): (Vec<_>, Vec<_>) = got.iter().partition(|m| m.offset % 97 == 0);
            stuck.extend(keep.iter().map(|m| m.offset));
            let receipts: Vec<_> = ack.iter().map(|m| m.receipt()).collect();
            assert!(
                e.queue_ack("c", 0, &receipts)
                    .unwrap()
                    .iter()
                    .all(Result::is_ok)
            );
        }
        e.apply_retention_now().unwrap();
        e.shutdown().unwrap();
    }
    let acks_dir = std::fs::read_dir(dir.path().join("topics"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
        .join("0")
        .join("queue-acks");
    let segments: Vec<String> = std::fs::read_dir(&acks_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".log"))
        .collect();
    assert!(
        !segments.contains(&format!("{:020}.log", 0)),
        "retention deleted the oldest ack-log segment: {segments:?}"
    );
    let e = Engine::open(c).unwrap();
    let got = receive(&e, "c", 1000);
    let mut back: Vec<u64> = got.iter().map(|m| m.offset).collect();
    back.sort_unstable();
    assert_eq!(back, stuck, "exactly the unacked messages come back");
    assert!(got.iter().all(|m| m.attempt == 2));
    e.shutdown().unwrap();
}

// Proves: deleting a queue topic drops its queue state on the shard and closes its ack log
// (the broker's hook on the shard, `ShardExtension::partition_deleted`): the same name can be
// created again as a queue at once, and it starts empty: no lease, count or message of the
// deleted one survives.
#[test]
fn a_deleted_queue_can_be_created_again_and_starts_empty() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(config(dir.path())).unwrap();
    e.create_queue("jobs", queue(None, 1)).unwrap();
    produce(&e, "jobs", &[("old-a", None), ("old-b", None)]);
    let got = receive(&e, "jobs", 1);
    assert_eq!(got.len(), 1);
    e.queue_ack("jobs", 0, &[got[0].receipt()]).unwrap();
    e.delete_topic("jobs").unwrap();
    assert!(e.queue_stats("jobs").is_err(), "gone with its topic");

    e.create_queue("jobs", queue(None, 1)).unwrap();
    let stats = &e.queue_stats("jobs").unwrap()[0];
    assert_eq!((stats.depth, stats.acked, stats.ack_floor), (0, 0, 0));
    produce(&e, "jobs", &[("new", None)]);
    let got = receive(&e, "jobs", 10);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!((got[0].value.as_slice(), got[0].attempt), (&b"new"[..], 1));
    e.shutdown().unwrap();
}
