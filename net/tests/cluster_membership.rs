//! Moving a partition onto a node started later (issue 14 item 6; docs/replication.md,
//! "Membership changes"), with real `shardline serve` processes: a cluster list of four nodes,
//! three started; a replicated topic (`--replicas 3`) on nodes 1-3; an idempotent producer at
//! `acks all` through the leader-following client; node 4 started; `shardline topic reassign
//! --replicas 2,3,4` (the CLI, as an operator runs it) while the producer goes on; node 1,
//! drained of the partition, is SIGKILLed and the producer still gets acknowledgements.
//! Every acknowledged record is then read back from node 4's copy at its acknowledged offset.
//!
//! Adding a node that is not in the cluster list (`cluster add-node`) and removing one
//! (`cluster remove-node`): net/tests/cluster_nodes.rs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(unreachable_pub)]
#[path = "../../tests/src/cluster.rs"]
mod cluster;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster::Cluster;
use shardline_net::client::{Client, TopicConfig};

const BIN: &str = env!("CARGO_BIN_EXE_shardline");

#[path = "common/moving.rs"]
mod moving;
use moving::*;

/// A topic name the placement puts on nodes 1, 2 and 3 of four (its one partition starts at
/// `crc32c(name) % 4`: engine/src/broker/cluster.rs, `placement`).
fn topic_on_first_three() -> String {
    (0..1000)
        .map(|i| format!("moving-{i}"))
        .find(|n| crc32c::crc32c(n.as_bytes()).is_multiple_of(4))
        .unwrap()
}

#[test]
fn a_partition_moves_onto_a_node_started_later_and_off_node_1() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::new(std::path::Path::new(BIN), dir.path(), 4).unwrap();
    for id in 1..=3 {
        c.spawn(id).unwrap();
    }
    for id in 1..=3 {
        wait_links_to(&c, id, 2);
    }
    let topic = topic_on_first_three();
    let admin = Client::connect(&c.node(2).addr, config()).unwrap();
    admin
        .create_replicated_topic(
            &topic,
            TopicConfig {
                partitions: 1,
                ..TopicConfig::default()
            },
            3,
        )
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !replicas(&c, 1, &topic).is_some_and(|(s, l)| s == vec![1, 2, 3] && l != 0) {
        assert!(Instant::now() < deadline, "topic on 1,2,3 with a leader");
        std::thread::sleep(Duration::from_millis(50));
    }

    let stop = Arc::new(AtomicBool::new(false));
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let producer = {
        let (b, t, s, l) = (c.bootstrap(), topic.clone(), stop.clone(), ledger.clone());
        std::thread::spawn(move || run_producer(b, t, s, l))
    };
    wait_acks(&ledger, 100);

    // Node 4 starts; the partition moves onto it and off node 1 while the producer runs.
    c.spawn(4).unwrap();
    wait_links_to(&c, 4, 3);
    let out = Command::new(BIN)
        .args(["topic", "reassign", &topic, "--partition", "0"])
        .args(["--replicas", "2,3,4", "--wait-secs", "40", "--addr"])
        .arg(&c.node(3).addr)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "reassign: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("moved"), "{stdout}");
    for id in 1..=4 {
        let deadline = Instant::now() + Duration::from_secs(20);
        while replicas(&c, id, &topic).is_none_or(|(s, _)| s != vec![2, 3, 4]) {
            assert!(Instant::now() < deadline, "node {id} reports 2,3,4");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    wait_acks(&ledger, 100);

    // Node 1 holds no replica of it any more: the partition does not need it.
    c.kill(1).unwrap();
    wait_acks(&ledger, 100);
    stop.store(true, Ordering::Release);
    producer.join().unwrap();
    let ledger = Arc::try_unwrap(ledger).ok().unwrap().into_inner().unwrap();

    let end = ledger.acked.values().max().unwrap() + 1;
    let log = read_all(&c.node(4).addr, &topic, end);
    for (seq, offset) in &ledger.acked {
        assert_eq!(
            log.get(offset),
            Some(&format!("seq-{seq}")),
            "acked seq-{seq} at {offset} on node 4"
        );
    }
    let offsets: Vec<u64> = log.keys().copied().collect();
    assert_eq!(
        offsets,
        (0..offsets.len() as u64).collect::<Vec<_>>(),
        "dense"
    );
    eprintln!(
        "cluster_membership: acked {} failed {} in {:?}",
        ledger.acked.len(),
        ledger.failed,
        started.elapsed()
    );
    c.kill_all();
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
}
