//! Replication wired into the engine (issue 14; docs/replication.md, "Replicate, then
//! apply"): three `Engine`s in one process, each on its own data directory (real O_DIRECT
//! files), connected by a `PeerSink` that hands each node's messages to the others'
//! `deliver_peer_messages`, with a switch that cuts a node off.
//!
//! One scenario (bounded, well under 60 s): a topic with R = 3 created through node 2 (the
//! controller forwards); `Acks::All` produces that follow NOT_LEADER; every replica's partition
//! log holds the same batches at the same offsets; an isolated leader's uncommitted batch never
//! reaches a partition log; failover by cut-off and by shutdown; an idempotent retry across the
//! failover is not duplicated; the old leader restarts from its data directory, rejoins and
//! catches up.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::future::block_on as block;
use shardline_engine::batch::{self, BatchBuilder, ProducerInfo};
use shardline_engine::{Acks, Engine, Error, NodeId, ProduceAck, TopicConfig};

mod common;
use common::{Net, config, start};

const TOPIC: &str = "orders";
const PARTITIONS: u32 = 2;

fn record(p: u32, seq: u32) -> Bytes {
    let mut b = BatchBuilder::new().producer(ProducerInfo {
        producer_id: 100 + u64::from(p),
        producer_epoch: 0,
        base_sequence: seq,
    });
    b.push_value(format!("p{p}-{seq}"));
    b.build().unwrap()
}

/// Produces `batch` at `acks` to whichever node leads partition `p` (common::produce_to_leader,
/// bounded: 10 s). Returns the node that acknowledged and its ack.
fn produce(net: &Net, p: u32, batch: &Bytes, acks: Acks, skip: &[NodeId]) -> (NodeId, ProduceAck) {
    common::produce_to_leader(net, (TOPIC, p), batch, acks, skip, 10)
}

/// Every record of a node's partition log: offset -> value.
fn read_log(e: &Engine, p: u32) -> BTreeMap<u64, String> {
    common::read_values(e, TOPIC, p)
}

/// Waits (bounded) until every node up has the same log for partition `p`, of at least
/// `min_len` records, and returns it.
fn converged(net: &Net, p: u32, min_len: usize) -> BTreeMap<u64, String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let logs: Vec<(NodeId, BTreeMap<u64, String>)> = net
            .up()
            .into_iter()
            .map(|n| (n, read_log(&net.engine(n), p)))
            .collect();
        let same = logs.windows(2).all(|w| w[0].1 == w[1].1);
        if same && logs[0].1.len() >= min_len {
            return logs[0].1.clone();
        }
        assert!(
            Instant::now() < deadline,
            "partition {p}: logs did not converge: {:?}",
            logs.iter().map(|(n, l)| (n, l.len())).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn leader_of(net: &Net, p: u32) -> NodeId {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        for n in net.up() {
            let st = futures_lite::future::block_on(net.engine(n).replica_status(TOPIC)).unwrap();
            if st[p as usize].leader == Some(n) {
                return n;
            }
        }
        assert!(Instant::now() < deadline, "no leader for partition {p}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
#[allow(clippy::too_many_lines, reason = "one scenario, step by step")]
fn three_engines_replicate_fail_over_and_rejoin() {
    let started = Instant::now();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let dir = |n: NodeId| dirs[(n - 1) as usize].path();
    let net = Arc::new(Net::default());
    for n in 1..=3 {
        start(&net, n, dir(n));
    }

    // Created through node 2 (the controller forwards the command to its leader); it
    // exists on every node exactly once.
    let cfg = TopicConfig {
        replicas: 3,
        ..TopicConfig::with_partitions(PARTITIONS)
    };
    let info =
        futures_lite::future::block_on(net.engine(2).create_topic_replicated(TOPIC, cfg.clone()))
            .unwrap();
    assert_eq!(info.shards.len(), PARTITIONS as usize);
    for n in 1..=3 {
        let deadline = Instant::now() + Duration::from_secs(10);
        while net.engine(n).route(TOPIC).is_err() {
            assert!(Instant::now() < deadline, "topic not created on node {n}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    assert!(matches!(
        futures_lite::future::block_on(net.engine(3).create_topic_replicated(TOPIC, cfg.clone())),
        Err(Error::TopicExists(_))
    ));
    let too_many = TopicConfig {
        replicas: 4,
        ..TopicConfig::default()
    };
    assert!(matches!(
        futures_lite::future::block_on(net.engine(1).create_topic_replicated("big", too_many)),
        Err(Error::InvalidArgument(_))
    ));

    // Acks::All, following NOT_LEADER.
    let mut acked: Vec<BTreeMap<u64, String>> = vec![BTreeMap::new(); PARTITIONS as usize];
    let seq = std::cell::RefCell::new([0u32; PARTITIONS as usize]);
    let send = |net: &Net, p: u32, skip: &[NodeId], acked: &mut Vec<BTreeMap<u64, String>>| {
        let s = seq.borrow()[p as usize];
        seq.borrow_mut()[p as usize] += 1;
        let (n, ack) = produce(net, p, &record(p, s), Acks::All, skip);
        assert_eq!(ack.base_offset, ack.last_offset);
        let prev = acked[p as usize].insert(ack.base_offset, format!("p{p}-{s}"));
        assert!(prev.is_none(), "offset {} acked twice", ack.base_offset);
        n
    };
    for _ in 0..10 {
        for p in 0..PARTITIONS {
            send(&net, p, &[], &mut acked);
        }
    }
    for p in 0..PARTITIONS {
        let log = converged(&net, p, 10);
        assert_eq!(log, acked[p as usize], "partition {p}");
    }
    // A follower (not the leader) answers NOT_LEADER naming the leader.
    let leader0 = leader_of(&net, 0);
    let follower = (1..=3).find(|n| *n != leader0).unwrap();
    match net
        .engine(follower)
        .produce(TOPIC, 0, record(0, 999), Acks::All)
    {
        Err(Error::NotLeader { leader, epoch, .. }) => {
            assert_eq!(leader, Some(leader0));
            assert!(epoch >= 1);
        }
        other => panic!("a follower accepted a produce: {other:?}"),
    }
    let st = futures_lite::future::block_on(net.engine(leader0).replica_status(TOPIC)).unwrap();
    // The preferred leader first (leadership balance), then the others.
    let mut replicas = st[0].replicas.clone();
    replicas.sort_unstable();
    assert_eq!(replicas, vec![1, 2, 3]);
    assert_eq!(st[0].in_sync, vec![1, 2, 3]);
    assert_eq!(st[0].high_watermark, 10);

    // Cut the leader of partition 0 off: its uncommitted batch (acks = leader) never reaches
    // a partition log; the majority elects another leader and producing continues.
    net.set_cut(leader0, true);
    let lonely = record(0, 500);
    let r = net.engine(leader0).produce(TOPIC, 0, lonely, Acks::Leader);
    assert!(r.is_ok(), "the isolated leader still appends: {r:?}");
    let cut_at = Instant::now();
    let n = send(&net, 0, &[leader0], &mut acked);
    let failover = cut_at.elapsed();
    assert_ne!(n, leader0);
    assert!(
        failover < Duration::from_secs(5),
        "failover took {failover:?}"
    );
    eprintln!("cut-off leader: first `all` ack on another leader after {failover:?}");
    let isolated = read_log(&net.engine(leader0), 0);
    assert_eq!(
        isolated.len(),
        10,
        "uncommitted data reached the isolated leader's log"
    );
    net.set_cut(leader0, false);
    for _ in 0..5 {
        send(&net, 0, &[], &mut acked);
    }
    let log = converged(&net, 0, 16);
    assert_eq!(log, acked[0], "after healing");
    assert!(
        !log.values().any(|v| v == "p0-500"),
        "the uncommitted batch survived"
    );

    // Shut the current leader down; another takes over; an idempotent retry of a batch acked
    // before is answered with its original offsets, not appended again.
    let leader = leader_of(&net, 0);
    let before_seq = seq.borrow()[0] - 1;
    let old = leader;
    let e = net.engines.lock().unwrap().remove(&old).unwrap();
    let stopped = Instant::now();
    e.shutdown().unwrap();
    drop(e);
    let (n, ack) = produce(&net, 0, &record(0, before_seq), Acks::All, &[]);
    assert_ne!(n, old);
    let failover = stopped.elapsed();
    let original = acked[0]
        .iter()
        .find(|(_, v)| **v == format!("p0-{before_seq}"))
        .map(|(o, _)| *o)
        .unwrap();
    assert_eq!(
        ack.base_offset, original,
        "an idempotent retry was appended again"
    );
    assert!(
        failover < Duration::from_secs(5),
        "failover took {failover:?}"
    );
    eprintln!("leader shut down: first `all` ack on another leader after {failover:?}");
    for _ in 0..5 {
        send(&net, 0, &[], &mut acked);
        send(&net, 1, &[], &mut acked);
    }
    for p in 0..PARTITIONS {
        assert_eq!(
            converged(&net, p, acked[p as usize].len()),
            acked[p as usize],
            "partition {p} on two nodes"
        );
    }

    // The old leader restarts from its data directory, rejoins and catches up.
    start(&net, old, dir(old));
    for p in 0..PARTITIONS {
        let log = converged(&net, p, acked[p as usize].len());
        assert_eq!(log, acked[p as usize], "partition {p} after the restart");
    }
    // Offsets are dense.
    for p in 0..PARTITIONS {
        let offsets: Vec<u64> = acked[p as usize].keys().copied().collect();
        assert_eq!(offsets, (0..offsets.len() as u64).collect::<Vec<_>>());
    }
    for n in net.up() {
        net.engine(n).shutdown().unwrap();
    }
    net.engines.lock().unwrap().clear();
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
}

fn wait_topic(net: &Net, name: &str, exists: bool) {
    for n in net.up() {
        let deadline = Instant::now() + Duration::from_secs(10);
        while net.engine(n).route(name).is_ok() != exists {
            assert!(
                Instant::now() < deadline,
                "topic {name} exists={exists} not reached on node {n}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The controller: create, delete and re-create through different nodes apply once on every
/// node, in order; a restarted node replays nothing twice (the re-created topic stays).
#[test]
fn controller_commands_apply_once_in_order() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let net = Arc::new(Net::default());
    for n in 1..=3 {
        start(&net, n, dirs[(n - 1) as usize].path());
    }
    let cfg = TopicConfig {
        replicas: 2,
        ..TopicConfig::with_partitions(3)
    };
    let first = block(net.engine(1).create_topic_replicated("tmp", cfg.clone())).unwrap();
    wait_topic(&net, "tmp", true);
    // Two replicas per partition, on distinct nodes.
    let st = block(net.engine(2).replica_status("tmp")).unwrap();
    assert_eq!(st.len(), 3);
    for s in &st {
        assert_eq!(s.replicas.len(), 2);
        assert_ne!(s.replicas[0], s.replicas[1]);
    }
    block(net.engine(3).delete_topic_replicated("tmp")).unwrap();
    wait_topic(&net, "tmp", false);
    assert!(matches!(
        block(net.engine(2).delete_topic_replicated("tmp")),
        Err(Error::UnknownTopic(_))
    ));
    let second = block(net.engine(2).create_topic_replicated("tmp", cfg)).unwrap();
    wait_topic(&net, "tmp", true);
    assert_eq!(first.shards.len(), second.shards.len());
    produce_named(&net, "tmp", 0);
    // Node 1 restarts: it re-applies nothing it applied before (the topic is not deleted
    // again) and reopens its replicas.
    let e = net.engines.lock().unwrap().remove(&1).unwrap();
    e.shutdown().unwrap();
    drop(e);
    start(&net, 1, dirs[0].path());
    wait_topic(&net, "tmp", true);
    produce_named(&net, "tmp", 1);
    for n in net.up() {
        net.engine(n).shutdown().unwrap();
    }
    net.engines.lock().unwrap().clear();
}

/// One `all` produce to partition `p` of `topic`, following NOT_LEADER (bounded).
fn produce_named(net: &Net, topic: &str, p: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut i = 0;
    loop {
        assert!(Instant::now() < deadline, "no leader for {topic}/{p}");
        let up = net.up();
        i += 1;
        let batch = batch::batch_of_values(["x"]).unwrap();
        match net
            .engine(up[i % up.len()])
            .produce(topic, p, batch, Acks::All)
        {
            Ok(_) => return,
            Err(Error::NotLeader { .. }) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("{e}"),
        }
    }
}

/// Without a cluster, `Acks::All` ("all") is `Acks::Durable`: answered once fsynced; the
/// cluster API answers that this node is not in a cluster; a local topic's status names no
/// node.
#[test]
fn a_single_node_treats_all_as_durable() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(config(dir.path())).unwrap();
    assert_eq!("all".parse::<Acks>().unwrap(), Acks::All);
    e.create_topic("solo", TopicConfig::with_partitions(1))
        .unwrap();
    let ack = e
        .produce(
            "solo",
            0,
            batch::batch_of_values(["a", "b"]).unwrap(),
            Acks::All,
        )
        .unwrap()
        .unwrap();
    assert_eq!((ack.base_offset, ack.last_offset), (0, 1));
    let d = e.describe_partition("solo", 0).unwrap();
    assert!(
        d.durable_offset >= 2,
        "acked at all before the fsync: {d:?}"
    );
    assert_eq!(e.cluster_node_id(), None);
    assert_eq!(e.controller_leader(), None);
    assert!(matches!(
        block(e.create_topic_replicated("r", TopicConfig::default())),
        Err(Error::InvalidArgument(_))
    ));
    let st = block(e.replica_status("solo")).unwrap();
    assert_eq!(st.len(), 1);
    assert_eq!(
        (st[0].leader, st[0].epoch, st[0].high_watermark),
        (None, 0, 2)
    );
    e.shutdown().unwrap();
}
