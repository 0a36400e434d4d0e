//! Adding and removing a node (issue 14 item 6; docs/replication.md, "Membership changes",
//! step 3; docs/operations.md, "Adding and removing nodes"), with real `shardline serve`
//! processes: three nodes started with a three-node list and a replicated topic (R = 3) with an
//! idempotent `acks all` producer running; node 4 started with `--join` (not in anyone's list)
//! and added with `shardline cluster add-node`; node 4 SIGKILLed and restarted from its own
//! data directory; the partition reassigned onto it (`topic reassign --replicas 2,3,4`) while
//! producing goes on; every acknowledged record read back from node 4; `cluster remove-node 4`
//! refused while node 4 holds the replica; the partition moved back to 1,2,3; node 4 removed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(unreachable_pub)]
#[path = "../../tests/src/cluster.rs"]
mod cluster;

use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster::Cluster;
use shardline_net::client::{Client, TopicConfig};

const BIN: &str = env!("CARGO_BIN_EXE_shardline");

#[path = "common/moving.rs"]
mod moving;
use moving::*;

/// Runs the CLI against node `at`'s client address.
fn cli(c: &Cluster, at: u64, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .arg("--addr")
        .arg(&c.node(at).addr)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{} {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Waits until every node in `ids` reports `want` as partition 0's replicas.
fn wait_replicas(c: &Cluster, ids: &[u64], topic: &str, want: &[u64]) {
    for id in ids {
        let deadline = Instant::now() + Duration::from_secs(30);
        while replicas(c, *id, topic).is_none_or(|(s, _)| s != want) {
            assert!(Instant::now() < deadline, "node {id} reports {want:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Nodes 1-3 list only each other; node 4 gets `--join` (the three) and its own
/// `--peer-listen`. Returns node 4's peer address.
fn join_setup(c: &mut Cluster) -> String {
    let first3: Vec<String> = c.nodes[..3]
        .iter()
        .map(|n| format!("{}@{}", n.id, n.peer_addr))
        .collect();
    let first3 = first3.join(",");
    let peer4 = c.node(4).peer_addr.clone();
    c.list.clone_from(&first3);
    c.node_lists = vec![
        first3.clone(),
        first3.clone(),
        first3.clone(),
        String::new(),
    ];
    c.node_extra = vec![
        vec![],
        vec![],
        vec![],
        vec![
            "--join".into(),
            first3.clone(),
            "--peer-listen".into(),
            peer4.clone(),
        ],
    ];
    for id in 1..=3 {
        c.spawn(id).unwrap();
    }
    for id in 1..=3 {
        wait_links_to(c, id, 2);
    }
    peer4
}

/// Creates a one-partition topic with `r` replicas and waits until node 1 reports `want` with
/// a leader.
fn create(c: &Cluster, admin: &Client, topic: &str, r: u32, want: &[u64]) {
    admin
        .create_replicated_topic(
            topic,
            TopicConfig {
                partitions: 1,
                ..TopicConfig::default()
            },
            r,
        )
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !replicas(c, 1, topic).is_some_and(|(s, l)| s == want && l != 0) {
        assert!(
            Instant::now() < deadline,
            "{topic} on {want:?} with a leader"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `topic reassign TOPIC --partition 0 --replicas SET` through node `at` (waits for the end).
fn reassign(c: &Cluster, at: u64, topic: &str, set: &str) {
    let out = cli(
        c,
        at,
        &[
            "topic",
            "reassign",
            topic,
            "--partition",
            "0",
            "--replicas",
            set,
            "--wait-secs",
            "40",
        ],
    );
    assert!(out.status.success(), "reassign to {set}: {}", text(&out));
}

#[test]
fn a_node_is_added_with_the_cli_takes_a_partition_and_is_removed_once_drained() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::new(std::path::Path::new(BIN), dir.path(), 4).unwrap();
    let peer4 = join_setup(&mut c);
    let topic = "joining".to_string();
    let admin = Client::connect(&c.node(2).addr, config()).unwrap();
    create(&c, &admin, &topic, 3, &[1, 2, 3]);
    let stop = Arc::new(AtomicBool::new(false));
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let bootstrap = c.nodes[..3]
        .iter()
        .map(|n| n.addr.clone())
        .collect::<Vec<_>>()
        .join(",");
    let producer = {
        let (b, t, s, l) = (bootstrap, topic.clone(), stop.clone(), ledger.clone());
        std::thread::spawn(move || run_producer(b, t, s, l))
    };
    wait_acks(&ledger, 100);

    // Node 4 starts (nobody lists it: its links wait) and is added with the CLI.
    c.spawn(4).unwrap();
    let bad = cli(&c, 1, &["cluster", "remove-node", "4"]);
    assert!(!bad.status.success(), "not a member yet: {}", text(&bad));
    let out = cli(&c, 1, &["cluster", "add-node", &format!("4@{peer4}")]);
    assert!(out.status.success(), "add-node: {}", text(&out));
    assert!(text(&out).contains("nodes: [1, 2, 3, 4]"), "{}", text(&out));
    wait_links_to(&c, 4, 3);
    // It caught the controller's log up: it knows the topic.
    let deadline = Instant::now() + Duration::from_secs(20);
    while replicas(&c, 4, &topic).is_none() {
        assert!(Instant::now() < deadline, "node 4 learns the topic");
        std::thread::sleep(Duration::from_millis(50));
    }
    // New topics may be placed on node 4 (and four replicas are allowed now).
    create(&c, &admin, "wide", 4, &[1, 2, 3, 4]);
    wait_replicas(&c, &[4], "wide", &[1, 2, 3, 4]);
    admin.delete_topic("wide").unwrap();
    // A restart of node 4 from its own data directory.
    c.kill(4).unwrap();
    c.spawn(4).unwrap();
    wait_links_to(&c, 4, 3);

    reassign(&c, 3, &topic, "2,3,4");
    wait_replicas(&c, &[1, 2, 3, 4], &topic, &[2, 3, 4]);
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

    // Node 4 holds a replica: removing it is refused.
    let out = cli(&c, 2, &["cluster", "remove-node", "4"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("drain it first"), "{}", text(&out));
    // Drained, it is removed.
    reassign(&c, 1, &topic, "1,2,3");
    wait_replicas(&c, &[1, 2, 3], &topic, &[1, 2, 3]);
    let out = cli(&c, 2, &["cluster", "remove-node", "4"]);
    assert!(out.status.success(), "remove-node: {}", text(&out));
    assert!(text(&out).contains("nodes: [1, 2, 3]"), "{}", text(&out));
    for id in 1..=3 {
        c.wait_log(id, &["peer removed", "peer=4"], Duration::from_secs(10))
            .unwrap();
    }
    eprintln!(
        "cluster_nodes: acked {} failed {} in {:?}",
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
