//! Adding partitions to a topic through the embedding API on real files (docs/semantics.md,
//! "Adding partitions"): the new partitions take records at once, the old ones keep theirs,
//! shrinking is refused, the growth survives a restart, and a work queue's new partitions
//! deliver.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::time::Duration;

use shardline_engine::batch;
use shardline_engine::{Acks, Engine, EngineConfig, Error, ReceiveOptions, TopicConfig};

fn config(dir: &std::path::Path) -> EngineConfig {
    let mut c = EngineConfig::with_data_dir(dir);
    c.shards = 2;
    c.pin_shards = false;
    c.io_memory_bytes = 512 << 10;
    c
}

fn produce(e: &Engine, topic: &str, partition: u32, n: usize) {
    let mut b = batch::BatchBuilder::new();
    for i in 0..n {
        b.push(
            batch::now_us(),
            None,
            format!("v{i}").into_bytes(),
            Vec::new(),
        );
    }
    e.produce(topic, partition, b.build().unwrap(), Acks::Durable)
        .unwrap();
}

fn high_watermarks(e: &Engine, topic: &str) -> Vec<u64> {
    e.describe_topic(topic)
        .unwrap()
        .partitions
        .iter()
        .map(|p| p.high_watermark)
        .collect()
}

#[test]
fn partitions_grow_keep_their_data_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(config(dir.path())).unwrap();
    e.create_topic("t", TopicConfig::with_partitions(2))
        .unwrap();
    produce(&e, "t", 0, 5);
    produce(&e, "t", 1, 3);
    let one = batch::batch_of_values(["x"]).unwrap();
    assert!(
        e.produce("t", 3, one, Acks::Durable).is_err(),
        "no partition 3 yet"
    );
    let info = e.add_partitions("t", 5).unwrap();
    assert_eq!(info.config.partitions, 5);
    assert_eq!(info.shards.len(), 5);
    produce(&e, "t", 3, 7);
    assert_eq!(high_watermarks(&e, "t"), [5, 3, 0, 7, 0]);
    assert!(matches!(
        e.add_partitions("t", 4),
        Err(Error::InvalidArgument(_))
    ));
    assert_eq!(
        e.add_partitions("t", 5).unwrap().shards.len(),
        5,
        "same count: no change"
    );
    assert!(matches!(
        e.add_partitions("nope", 3),
        Err(Error::UnknownTopic(_))
    ));
    e.shutdown().unwrap();
    drop(e);

    let e = Engine::open(config(dir.path())).unwrap();
    assert_eq!(high_watermarks(&e, "t"), [5, 3, 0, 7, 0]);
    assert_eq!(e.route("t").unwrap().shards.len(), 5);
    e.shutdown().unwrap();
}

#[test]
fn a_grown_work_queue_delivers_from_its_new_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(config(dir.path())).unwrap();
    e.create_queue("q", TopicConfig::with_partitions(1))
        .unwrap();
    e.add_partitions("q", 3).unwrap();
    produce(&e, "q", 2, 4);
    let options = ReceiveOptions {
        max_messages: 10,
        visibility_timeout_ms: None,
        max_wait: Duration::from_secs(5),
    };
    let got = e.queue_receive("q", 2, options).unwrap();
    assert_eq!(got.len(), 4);
    assert_eq!(e.queue_stats("q").unwrap().len(), 3);
    e.shutdown().unwrap();
}
