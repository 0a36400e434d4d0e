//! A Kafka connection follows its partition to the owning shard (docs/kafka.md, "Shard
//! placement"; net/server/src/kafka/handoff.rs): one confluent-kafka producer writes to a
//! partition of each shard in turn over its one broker connection, against a real `shardline
//! serve --shards 2` process. Skipped with a message when confluent-kafka is not installed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use shardline_net::client::{Client, ClientConfig, TopicConfig};

const BIN: &str = env!("CARGO_BIN_EXE_shardline");
/// Kafka's Produce api key (the Kafka listener counts requests by Kafka's keys).
const PRODUCE: u16 = 0;

/// A `shardline serve` child; killed by its PID on drop.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// Proves: produces for a partition of the other shard move the connection there (both shards
// then count a share of the one connection's Produce requests; without the move one shard
// would count them all), and across three moves every message is acknowledged and stored once,
// in order, in its partition.
#[test]
fn a_producer_connection_follows_its_partition_to_the_owning_shard() {
    let have = Command::new("python3")
        .args(["-c", "import confluent_kafka"])
        .status()
        .is_ok_and(|s| s.success());
    if !have {
        eprintln!("skipping: python3 module confluent_kafka not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--shards", "2"])
        .args(["--kafka-listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = |prefix: &str| {
        let mut l = String::new();
        out.read_line(&mut l).unwrap();
        l.trim().strip_prefix(prefix).unwrap().to_string()
    };
    let native = line("shardline listening on ");
    let kafka = line("kafka listening on ");
    let child = Child(child);
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));

    let client = Client::connect(&native, ClientConfig::default()).unwrap();
    let config = TopicConfig {
        partitions: 2,
        ..TopicConfig::default()
    };
    client.create_topic("follow", config).unwrap();
    let m = client.metrics(true).unwrap();
    let shard_of = |p: u32| {
        m.partitions
            .iter()
            .find(|x| x.topic == "follow" && x.partition == p)
            .unwrap()
            .shard
    };
    assert_ne!(shard_of(0), shard_of(1), "one partition per shard");

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/kafka/ck_follow.py");
    let per = 200;
    let run = Command::new("python3")
        .args([script, &kafka, "follow", &per.to_string()])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{said}");
    assert_eq!(said.trim(), format!("ok {}", 4 * per));

    // 4 phases of >= 40 requests each (5 messages per request at most); at most MOVE_AFTER (8)
    // of a phase are read on the other shard before the connection moves, and it moves at most
    // 3 times: when it starts on the shard of partition 1, the last phase stays on the other
    // shard (e.g. [112, 49]). Either way each shard reads a phase's worth less 8.
    let m = client.metrics(false).unwrap();
    let produces: Vec<u64> = m
        .shards
        .iter()
        .map(|s| {
            s.requests
                .iter()
                .filter(|r| r.api_key == PRODUCE)
                .map(|r| r.count)
                .sum()
        })
        .collect();
    assert_eq!(produces.len(), 2);
    assert!(
        produces.iter().all(|&n| n >= 40 - 8),
        "Produce requests per shard: {produces:?}"
    );
    drop(child);
}
