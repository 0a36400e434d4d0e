//! Preferred-leader balance (issue 14; docs/replication.md, "Leadership balance"): three
//! `Engine`s in one process (real files, an in-process network). A topic of 6 partitions with
//! three replicas each: leadership settles on each partition's preferred replica (the first
//! node of its placement: `(p + crc32c(topic)) % 3` over the sorted ids), two per node; node 1
//! shuts down, its partitions' leadership moves to the others; it restarts from its data
//! directory and, within a bounded time, leads its preferred partitions again. Produces at
//! `Acks::All` go on throughout, and every node ends with the same logs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::future::block_on as block;
use shardline_engine::batch::{BatchBuilder, ProducerInfo};
use shardline_engine::{Acks, Engine, Error, NodeId, TopicConfig};

mod common;
use common::Net;

const TOPIC: &str = "balanced";
const PARTITIONS: u32 = 6;
const NODES: [NodeId; 3] = [1, 2, 3];
fn start(net: &Arc<Net>, n: NodeId, dir: &Path) {
    common::start(net, n, dir);
}

/// Partition `p`'s preferred leader: the first node of its placement.
fn preferred(p: u32) -> NodeId {
    let h = crc32c::crc32c(TOPIC.as_bytes()) as usize;
    NODES[(p as usize + h) % NODES.len()]
}

/// Each partition's leader, as the node that claims it says (0: none claims it).
fn leaders(net: &Net) -> Vec<NodeId> {
    let mut out = vec![0; PARTITIONS as usize];
    for n in net.up() {
        let Ok(st) = block(net.engine(n).replica_status(TOPIC)) else {
            continue;
        };
        for s in st {
            if s.leader == Some(n) {
                out[s.partition as usize] = n;
            }
        }
    }
    out
}

/// Polls (bounded) until `ok(leaders)` holds; produces one batch to every partition between
/// polls (so produce keeps being exercised while leadership moves). Returns the leaders.
fn wait_leaders(
    net: &Net,
    what: &str,
    timeout: Duration,
    seq: &mut [u32],
    ok: impl Fn(&[NodeId]) -> bool,
) -> Vec<NodeId> {
    let deadline = Instant::now() + timeout;
    loop {
        let l = leaders(net);
        if ok(&l) {
            return l;
        }
        assert!(
            Instant::now() < deadline,
            "{what} within {timeout:?}: {l:?}"
        );
        produce_round(net, seq);
    }
}

fn record(p: u32, seq: u32) -> Bytes {
    let mut b = BatchBuilder::new().producer(ProducerInfo {
        producer_id: 500 + u64::from(p),
        producer_epoch: 0,
        base_sequence: seq,
    });
    b.push_value(format!("p{p}-{seq}"));
    b.build().unwrap()
}

/// One idempotent batch at `Acks::All` to every partition, following NOT_LEADER (bounded:
/// 10 s per batch; a transfer or failover in between only delays it).
fn produce_round(net: &Net, seq: &mut [u32]) {
    for p in 0..PARTITIONS {
        let batch = record(p, seq[p as usize]);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut target: Option<NodeId> = None;
        let mut i = 0usize;
        loop {
            assert!(Instant::now() < deadline, "p{p}: no ack within 10 s");
            let up = net.up();
            let n = match target.take() {
                Some(t) if up.contains(&t) => t,
                _ => {
                    i += 1;
                    up[i % up.len()]
                }
            };
            match net.engine(n).produce(TOPIC, p, batch.clone(), Acks::All) {
                Ok(_) => break,
                Err(Error::NotLeader { leader, .. }) => {
                    target = leader;
                    if leader.is_none() {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
                Err(Error::PartitionFailed { .. } | Error::ShuttingDown | Error::Timeout(_)) => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("produce p{p} to node {n}: {e}"),
            }
        }
        seq[p as usize] += 1;
    }
}

/// Every value of a node's partition log, in offset order (offsets checked dense).
fn read_log(e: &Engine, p: u32) -> Vec<String> {
    let out = common::read_values(e, TOPIC, p);
    for (i, o) in out.keys().enumerate() {
        assert_eq!(*o, i as u64, "p{p}: dense offsets");
    }
    out.into_values().collect()
}

fn count(leaders: &[NodeId], n: NodeId) -> usize {
    leaders.iter().filter(|l| **l == n).count()
}

#[test]
fn leadership_returns_to_the_preferred_replicas_after_a_node_comes_back() {
    let dirs: Vec<tempfile::TempDir> = NODES.iter().map(|_| tempfile::tempdir().unwrap()).collect();
    let net = Arc::new(Net::default());
    for (i, n) in NODES.iter().enumerate() {
        start(&net, *n, dirs[i].path());
    }
    let cfg = TopicConfig {
        partitions: PARTITIONS,
        replicas: 3,
        ..TopicConfig::default()
    };
    block(net.engine(1).create_topic_replicated(TOPIC, cfg)).unwrap();
    // The proposer has applied the create; the others apply it on their own (bounded).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !NODES
        .iter()
        .all(|n| block(net.engine(*n).replica_status(TOPIC)).is_ok())
    {
        assert!(
            Instant::now() < deadline,
            "every node has the topic within 10 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let want: Vec<NodeId> = (0..PARTITIONS).map(preferred).collect();
    for n in NODES {
        assert_eq!(
            count(&want, n),
            2,
            "placement prefers each node twice: {want:?}"
        );
    }
    let mut seq = vec![0u32; PARTITIONS as usize];

    // 1. Whoever won the first elections, leadership settles on the preferred replicas.
    let t = Instant::now();
    wait_leaders(
        &net,
        "preferred leaders",
        Duration::from_secs(20),
        &mut seq,
        |l| l == want.as_slice(),
    );
    eprintln!("leader_balance: preferred leaders after {:?}", t.elapsed());

    // 2. Node 1 shuts down: its partitions' leadership moves to nodes 2 and 3.
    let e = net.engines.lock().unwrap().remove(&1).unwrap();
    e.shutdown().unwrap();
    drop(e);
    wait_leaders(
        &net,
        "leaders off node 1",
        Duration::from_secs(20),
        &mut seq,
        |l| l.iter().all(|n| *n == 2 || *n == 3),
    );
    produce_round(&net, &mut seq);

    // 3. Node 1 restarts from its data directory; within a bounded time it leads its
    // preferred partitions again (2 per node).
    start(&net, 1, dirs[0].path());
    let t = Instant::now();
    let l = wait_leaders(
        &net,
        "preferred leaders again",
        Duration::from_secs(30),
        &mut seq,
        |l| l == want.as_slice(),
    );
    eprintln!(
        "leader_balance: rebalanced after a restart in {:?}",
        t.elapsed()
    );
    for n in NODES {
        assert_eq!(count(&l, n), 2, "node {n} leads 2: {l:?}");
    }
    produce_round(&net, &mut seq);

    // Every batch acked is on every node, once, in order.
    for p in 0..PARTITIONS {
        let expect: Vec<String> = (0..seq[p as usize]).map(|s| format!("p{p}-{s}")).collect();
        let deadline = Instant::now() + Duration::from_secs(15);
        for n in NODES {
            loop {
                let log = read_log(&net.engine(n), p);
                if log == expect {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "node {n} p{p}: {} records, want {}",
                    log.len(),
                    expect.len()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    for n in net.up() {
        net.engine(n).shutdown().unwrap();
    }
}
