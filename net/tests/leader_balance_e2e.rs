//! Preferred-leader balance with three real `shardline serve` processes (issue 14;
//! docs/replication.md, "Leadership balance"): a topic of 6 partitions with three replicas;
//! leadership settles at two partitions per node; node 1 is SIGKILLed (its partitions' leaders
//! move to nodes 2 and 3); it restarts and, within a bounded time, the nodes lead two
//! partitions each again. An idempotent `acks all` producer writes to every partition
//! throughout: every delivery succeeds, and every acknowledged id is read back at its offset
//! from every node.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(unreachable_pub)]
#[path = "../../tests/src/cluster.rs"]
mod cluster;
#[allow(unreachable_pub)]
#[path = "../../tests/src/ledger.rs"]
mod ledger;

use std::time::{Duration, Instant};

use cluster::Cluster;
use ledger::{Ledger, Load, RunningProducer, config, converged_high_watermark, read_all};
use shardline_net::client::{Client, TopicConfig};

const BIN: &str = env!("CARGO_BIN_EXE_shardline");
const TOPIC: &str = "balanced";
const PARTITIONS: u32 = 6;

/// Each partition's leader as claimed by the node itself (0: no live node claims it).
fn leaders(c: &Cluster) -> Vec<u64> {
    let mut out = vec![0; PARTITIONS as usize];
    for n in &c.nodes {
        if n.pid.is_none() {
            continue;
        }
        let Ok(client) = Client::connect_node(&n.addr, config()) else {
            continue;
        };
        let Ok(r) = client.describe_cluster(&[TOPIC]) else {
            continue;
        };
        for t in r.topics.iter().filter(|t| t.name == TOPIC) {
            for p in &t.partitions {
                if p.leader == n.id {
                    out[p.partition as usize] = n.id;
                }
            }
        }
    }
    out
}

fn count(leaders: &[u64], n: u64) -> usize {
    leaders.iter().filter(|l| **l == n).count()
}

/// Polls (bounded) until `ok` holds for the leaders; returns them.
fn wait_leaders(
    c: &Cluster,
    what: &str,
    timeout: Duration,
    ok: impl Fn(&[u64]) -> bool,
) -> Vec<u64> {
    let deadline = Instant::now() + timeout;
    loop {
        let l = leaders(c);
        if ok(&l) {
            return l;
        }
        assert!(
            Instant::now() < deadline,
            "{what} within {timeout:?}: {l:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Two partitions led by each of the three nodes.
fn balanced(l: &[u64]) -> bool {
    (1..=3).all(|n| count(l, n) == 2)
}

/// Every node reaches the same high watermark per partition and holds every acked id at its
/// acknowledged offset.
fn check_logs(c: &Cluster, ledger: &Ledger) {
    let addrs: Vec<&str> = c.nodes.iter().map(|n| n.addr.as_str()).collect();
    for p in 0..PARTITIONS {
        let end = converged_high_watermark(&addrs, TOPIC, p);
        for addr in &addrs {
            ledger::check_log(ledger, p, &read_all(addr, TOPIC, p, end));
        }
    }
}

#[test]
fn leaders_return_to_their_preferred_nodes_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::new(std::path::Path::new(BIN), dir.path(), 3).unwrap();
    c.start_all().unwrap();
    let admin = Client::connect(&c.node(2).addr, config()).unwrap();
    admin
        .create_replicated_topic(
            TOPIC,
            TopicConfig {
                partitions: PARTITIONS,
                ..TopicConfig::default()
            },
            3,
        )
        .unwrap();
    // Whoever won the first elections, leadership settles at two partitions per node.
    let t = Instant::now();
    wait_leaders(
        &c,
        "two leaders per node",
        Duration::from_secs(30),
        balanced,
    );
    eprintln!(
        "leader_balance_e2e: balanced after creation in {:?}",
        t.elapsed()
    );

    let producer = RunningProducer::start(
        c.bootstrap(),
        Load {
            topic: TOPIC.into(),
            partitions: PARTITIONS,
            round: 2 * u64::from(PARTITIONS),
        },
    );
    producer.wait_acks(120);

    // SIGKILL node 1: its partitions' leadership moves to nodes 2 and 3.
    c.kill(1).unwrap();
    wait_leaders(
        &c,
        "every partition led by node 2 or 3",
        Duration::from_secs(20),
        |l| l.iter().all(|n| *n == 2 || *n == 3),
    );
    producer.wait_acks(120);

    // Restart node 1: within a bounded time, two partitions per node again.
    c.spawn(1).unwrap();
    c.wait_links(1, Duration::from_secs(30)).unwrap();
    let t = Instant::now();
    let l = wait_leaders(
        &c,
        "two leaders per node again",
        Duration::from_secs(30),
        balanced,
    );
    eprintln!(
        "leader_balance_e2e: rebalanced {l:?} {:?} after node 1's links came up",
        t.elapsed()
    );
    producer.wait_acks(120);

    let ledger = producer.finish();
    assert_eq!(
        ledger.failed, 0,
        "failed deliveries: {:?}",
        ledger.last_error
    );
    check_logs(&c, &ledger);
    eprintln!("leader_balance_e2e: acked {}", ledger.acked.len());
}
