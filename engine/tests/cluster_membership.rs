//! Moving a partition onto another replica set (docs/replication.md, "Membership changes"):
//! four `Engine`s in one process (cluster 1..4, real O_DIRECT files, the in-process network
//! of engine/tests/common), a topic with R = 3, records produced at `Acks::All` before and
//! during a move that adds the fourth node and removes the partition's leader; afterwards every
//! acknowledged record is in the new replicas' partition logs at the same offsets, every node
//! reports the new set, the node left out has no Raft files for it, and the new set commits
//! with that node cut off. Bounded, well under 60 s.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::future::block_on;
use shardline_engine::batch::{BatchBuilder, ProducerInfo};
use shardline_engine::{Acks, Engine, NodeId, TopicConfig};

mod common;
use common::{Net, config, start_with};

const TOPIC: &str = "moving";

fn record(seq: u32) -> Bytes {
    let mut b = BatchBuilder::new().producer(ProducerInfo {
        producer_id: 77,
        producer_epoch: 0,
        base_sequence: seq,
    });
    b.push_value(format!("r{seq}"));
    b.build().unwrap()
}

/// Produces record `seq` at `Acks::All` through whichever node leads, following NOT_LEADER
/// (bounded: 15 s); returns its offset.
fn produce(net: &Net, seq: u32, skip: &[NodeId]) -> u64 {
    produce_at(net, seq, skip, Acks::All)
}

/// [`produce`] at `acks`.
fn produce_at(net: &Net, seq: u32, skip: &[NodeId], acks: Acks) -> u64 {
    common::produce_to_leader(net, (TOPIC, 0), &record(seq), acks, skip, 15)
        .1
        .base_offset
}

fn read_log(e: &Engine) -> BTreeMap<u64, String> {
    common::read_values(e, TOPIC, 0)
}

/// The replica set and leader node `n` reports for partition 0.
fn status(net: &Net, n: NodeId) -> (Vec<NodeId>, Option<NodeId>) {
    let st = block_on(net.engine(n).replica_status(TOPIC)).unwrap();
    let mut set = st[0].replicas.clone();
    set.sort_unstable();
    (set, st[0].leader)
}

fn raft_dir(data: &Path, e: &Engine) -> PathBuf {
    let id = e.route(TOPIC).unwrap().id;
    shardline_engine::metadata::partition_dir(data, TOPIC, id, 0).join("raft")
}

const ALL: [NodeId; 4] = [1, 2, 3, 4];

/// Four engines (cluster 1..4) and the topic (one partition, R = 3).
fn cluster() -> (Arc<Net>, Vec<tempfile::TempDir>) {
    let dirs: Vec<tempfile::TempDir> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let net = Arc::new(Net::default());
    for n in ALL {
        start_with(&net, n, &ALL, config(dirs[n as usize - 1].path()));
    }
    let cfg = TopicConfig {
        replicas: 3,
        ..TopicConfig::with_partitions(1)
    };
    block_on(net.engine(1).create_topic_replicated(TOPIC, cfg)).unwrap();
    for n in ALL {
        let deadline = Instant::now() + Duration::from_secs(10);
        while net.engine(n).route(TOPIC).is_err() {
            assert!(Instant::now() < deadline, "topic not created on node {n}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    (net, dirs)
}

/// Waits (bounded) until every node reports `target` as the partition's replica set.
fn wait_moved(net: &Net, target: &[NodeId]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ALL.iter().all(|n| status(net, *n).0 == target) {
        assert!(
            Instant::now() < deadline,
            "move to {target:?} not done: {:?}",
            ALL.iter().map(|n| status(net, *n)).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits (bounded) until node `n`'s partition log is `want`.
fn wait_log(net: &Net, n: NodeId, want: &BTreeMap<u64, String>) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let log = read_log(&net.engine(n));
        if &log == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node {n}: {} of {} records",
            log.len(),
            want.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn leader_of(net: &Net, n: NodeId) -> NodeId {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let (_, Some(l)) = status(net, n) {
            return l;
        }
        assert!(Instant::now() < deadline, "no leader");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_partition_moves_onto_a_new_node_and_off_its_leader() {
    let started = Instant::now();
    let (net, dirs) = cluster();
    let all = ALL;
    let mut acked = BTreeMap::new();
    for seq in 0..20 {
        acked.insert(produce(&net, seq, &[]), format!("r{seq}"));
    }
    let (old, _) = status(&net, 1);
    assert_eq!(old.len(), 3);
    let newcomer = *all.iter().find(|n| !old.contains(n)).unwrap();
    // The leader leaves the set: it hands leadership over during the joint configuration.
    let leader = leader_of(&net, old[0]);
    let mut target: Vec<NodeId> = old.iter().copied().filter(|n| *n != leader).collect();
    target.push(newcomer);
    target.sort_unstable();
    block_on(
        net.engine(newcomer)
            .reassign_partition(TOPIC, 0, target.clone()),
    )
    .unwrap();
    // Producing goes on during the move.
    for seq in 20..30 {
        acked.insert(produce(&net, seq, &[]), format!("r{seq}"));
    }
    wait_moved(&net, &target);
    // The node left out closed its replica and removed its Raft files.
    let left_dir = raft_dir(dirs[leader as usize - 1].path(), &net.engine(leader));
    let deadline = Instant::now() + Duration::from_secs(10);
    while left_dir.exists() {
        assert!(
            Instant::now() < deadline,
            "{} still exists",
            left_dir.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(raft_dir(dirs[newcomer as usize - 1].path(), &net.engine(newcomer)).exists());
    // The new set commits without the old leader.
    net.set_cut(leader, true);
    for seq in 30..35 {
        acked.insert(produce(&net, seq, &[leader]), format!("r{seq}"));
    }
    let offsets: Vec<u64> = acked.keys().copied().collect();
    assert_eq!(offsets, (0..35).collect::<Vec<u64>>(), "dense offsets");
    for n in &target {
        wait_log(&net, *n, &acked);
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

/// Batches beyond what a replica keeps in memory for lagging peers (RETAIN_ENTRIES, 1,024):
/// a new replica cannot get them from the Raft log.
const COMPACTED_BATCHES: u32 = 1_300;

// Proves: a new replica whose leader has compacted the entries it needs catches up from a
// snapshot (its Raft log starts with a snapshot frame) and then holds every acknowledged record;
// here a follower leaves the set and the leader stays.
#[test]
fn a_new_replica_catches_up_from_a_snapshot_once_the_log_is_compacted() {
    let started = Instant::now();
    let (net, dirs) = cluster();
    let (old, _) = status(&net, 1);
    let newcomer = *ALL.iter().find(|n| !old.contains(n)).unwrap();
    let mut acked = BTreeMap::new();
    // Many small batches at `Acks::Leader`, then one at `All`: every one before it is
    // committed once it is (an idempotent producer: a retry is not duplicated).
    // Leadership first settles on the preferred replica (leadership balance), so that no
    // `Leader`-acknowledged batch is lost to a leader change.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = block_on(net.engine(old[0]).replica_status(TOPIC)).unwrap();
        if st[0].leader == Some(st[0].replicas[0]) {
            break;
        }
        assert!(Instant::now() < deadline, "no preferred leader: {st:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    for seq in 0..COMPACTED_BATCHES {
        acked.insert(produce_at(&net, seq, &[], Acks::Leader), format!("r{seq}"));
    }
    acked.insert(
        produce(&net, COMPACTED_BATCHES, &[]),
        format!("r{COMPACTED_BATCHES}"),
    );
    assert_eq!(acked.len(), COMPACTED_BATCHES as usize + 1);
    let leader = leader_of(&net, old[0]);
    let follower = *old.iter().find(|n| **n != leader).unwrap();
    let mut target: Vec<NodeId> = old.iter().copied().filter(|n| *n != follower).collect();
    target.push(newcomer);
    target.sort_unstable();
    block_on(
        net.engine(follower)
            .reassign_partition(TOPIC, 0, target.clone()),
    )
    .unwrap();
    wait_moved(&net, &target);
    wait_log(&net, newcomer, &acked);
    let log = std::fs::read(
        raft_dir(dirs[newcomer as usize - 1].path(), &net.engine(newcomer)).join("raft-log"),
    )
    .unwrap();
    assert_eq!(
        &log[..4],
        b"1SFR",
        "the new replica's raft log starts with a snapshot frame"
    );
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

// Proves: a move survives a restart of the node it moves onto: while that node is cut off the
// move waits at the learner step (it never answered, so it is not promoted); the node restarts
// from its data directory, resumes the move from the metadata (`Metadata::moves`), catches up
// and the move completes with every acknowledged record on it; the node left out loses its
// Raft files.
#[test]
fn a_move_resumes_after_the_new_node_restarts() {
    let started = Instant::now();
    let (net, dirs) = cluster();
    let (old, _) = status(&net, 1);
    let newcomer = *ALL.iter().find(|n| !old.contains(n)).unwrap();
    let mut acked = BTreeMap::new();
    for seq in 0..10 {
        acked.insert(produce(&net, seq, &[]), format!("r{seq}"));
    }
    let leader = leader_of(&net, old[0]);
    let follower = *old.iter().find(|n| **n != leader).unwrap();
    let mut target: Vec<NodeId> = old.iter().copied().filter(|n| *n != follower).collect();
    target.push(newcomer);
    target.sort_unstable();
    // Recorded everywhere (the controller's majority does not need the cut-off node).
    net.set_cut(newcomer, true);
    block_on(
        net.engine(leader)
            .reassign_partition(TOPIC, 0, target.clone()),
    )
    .unwrap();
    for seq in 10..15 {
        acked.insert(produce(&net, seq, &[newcomer]), format!("r{seq}"));
    }
    // A negative check: for half a second (25 ticks), the set stays the old one.
    let until = Instant::now() + Duration::from_millis(500);
    while Instant::now() < until {
        assert_eq!(
            status(&net, leader).0,
            old,
            "no promotion of an unreachable node"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    net.stop(newcomer);
    net.set_cut(newcomer, false);
    start_with(
        &net,
        newcomer,
        &ALL,
        config(dirs[newcomer as usize - 1].path()),
    );
    wait_moved(&net, &target);
    wait_log(&net, newcomer, &acked);
    let left_dir = raft_dir(dirs[follower as usize - 1].path(), &net.engine(follower));
    let deadline = Instant::now() + Duration::from_secs(10);
    while left_dir.exists() {
        assert!(
            Instant::now() < deadline,
            "{} still exists",
            left_dir.display()
        );
        std::thread::sleep(Duration::from_millis(20));
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

/// Waits (bounded) until `cond` holds, else fails with `what`.
fn wait_until(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "{what} (after {secs} s)");
        std::thread::sleep(Duration::from_millis(20));
    }
}

type HookLog = Arc<std::sync::Mutex<Vec<(NodeId, Option<String>)>>>;

/// A node hook that records what it is told in `log`.
fn recording_hook(log: &HookLog) -> shardline_engine::NodeHook {
    let log = log.clone();
    Arc::new(move |_: &Engine, id, addr| {
        log.lock().unwrap().push((id, addr.map(str::to_string)));
    })
}

/// Node 4 joining the cluster 1, 2, 3 (`join_cluster` with the controller's voters).
fn start_joiner(net: &Arc<Net>, dir: &Path) -> Engine {
    let e = Engine::open(config(dir)).unwrap();
    net.engines.lock().unwrap().insert(4, e.clone());
    e.join_cluster(4, vec![1, 2, 3], net.sink(4), common::replica_config())
        .unwrap();
    e
}

// Proves (docs/replication.md, "Membership changes", step 3): a node that is not in the
// initial list joins with `join_cluster`, is added with `add_node` (every member's hook hears
// of it, every node's membership follows, it catches the controller's log up as a learner:
// it learns the topic created before it joined), survives a restart from its own directory,
// takes a replica by reassignment with every acknowledged record in its log; `remove_node` is
// refused while it holds the replica and succeeds once it is drained.
#[test]
fn a_node_joins_takes_a_replica_is_drained_and_removed() {
    let started = Instant::now();
    let dirs: Vec<tempfile::TempDir> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let net = Arc::new(Net::default());
    let first: [NodeId; 3] = [1, 2, 3];
    let hooks: Vec<HookLog> = (0..3).map(|_| HookLog::default()).collect();
    for n in first {
        let e = start_with(&net, n, &first, config(dirs[n as usize - 1].path()));
        e.set_node_hook(recording_hook(&hooks[n as usize - 1]))
            .unwrap();
    }
    let cfg = TopicConfig {
        replicas: 3,
        ..TopicConfig::with_partitions(1)
    };
    block_on(net.engine(1).create_topic_replicated(TOPIC, cfg)).unwrap();
    for n in first {
        wait_until(&format!("node {n} has the topic"), 10, || {
            net.engine(n).route(TOPIC).is_ok()
        });
    }
    let mut acked = BTreeMap::new();
    for seq in 0..10 {
        acked.insert(produce(&net, seq, &[4]), format!("r{seq}"));
    }
    let four = start_joiner(&net, dirs[3].path());
    assert!(four.route(TOPIC).is_err(), "nothing before it is added");
    block_on(net.engine(2).add_node(4, "127.0.0.1:7004".into())).unwrap();
    // Node 2 applied it before answering: a second add there is refused.
    let err = block_on(net.engine(2).add_node(4, "127.0.0.1:7004".into())).unwrap_err();
    assert!(err.to_string().contains("already a member"), "{err}");
    for n in first {
        let hook = hooks[n as usize - 1].clone();
        wait_until(&format!("node {n}'s hook hears of node 4"), 10, || {
            hook.lock().unwrap().as_slice() == [(4, Some("127.0.0.1:7004".to_string()))]
        });
    }
    for n in [1, 2, 3, 4] {
        wait_until(&format!("node {n} knows four members"), 15, || {
            net.engine(n).cluster_nodes() == [1, 2, 3, 4]
        });
    }
    wait_until("node 4 learns the topic from the log", 15, || {
        four.route(TOPIC).is_ok()
    });
    // A restart of node 1 keeps node 4 (the metadata), and tells its new hook of nothing.
    net.stop(1);
    let one = start_with(&net, 1, &first, config(dirs[0].path()));
    one.set_node_hook(recording_hook(&hooks[0])).unwrap();
    assert_eq!(one.cluster_nodes(), [1, 2, 3, 4]);
    assert_eq!(one.added_nodes(), [(4, "127.0.0.1:7004".to_string())]);
    // A restart of node 4 from its own directory keeps what it learned.
    net.stop(4);
    let four = start_joiner(&net, dirs[3].path());
    assert!(four.route(TOPIC).is_ok());
    assert_eq!(four.cluster_nodes(), [1, 2, 3, 4]);
    // A replica moves onto node 4 while producing goes on.
    let (old, _) = status(&net, 1);
    let target = vec![old[0], old[1], 4];
    block_on(net.engine(1).reassign_partition(TOPIC, 0, target.clone())).unwrap();
    for seq in 10..20 {
        acked.insert(produce(&net, seq, &[]), format!("r{seq}"));
    }
    for n in [1, 2, 3, 4] {
        wait_until(&format!("node {n} sees the move done"), 30, || {
            status(&net, n).0 == target
        });
    }
    wait_log(&net, 4, &acked);
    let err = block_on(net.engine(1).remove_node(4)).unwrap_err();
    assert!(err.to_string().contains("drain it first"), "{err}");
    assert_eq!(net.engine(1).cluster_nodes(), [1, 2, 3, 4]);
    // Drained, it is removed.
    block_on(net.engine(2).reassign_partition(TOPIC, 0, first.to_vec())).unwrap();
    for n in [1, 2, 3] {
        wait_until(&format!("node {n} sees node 4 drained"), 30, || {
            status(&net, n).0 == first
        });
    }
    block_on(net.engine(3).remove_node(4)).unwrap();
    for n in first {
        wait_until(&format!("node {n} removed node 4"), 10, || {
            net.engine(n).cluster_nodes() == first
        });
        let hook = hooks[n as usize - 1].clone();
        wait_until(&format!("node {n}'s hook hears of the removal"), 10, || {
            hook.lock().unwrap().last() == Some(&(4, None))
        });
    }
    for seq in 20..25 {
        acked.insert(produce(&net, seq, &[4]), format!("r{seq}"));
    }
    for n in first {
        wait_log(&net, n, &acked);
    }
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
    for n in net.up() {
        net.stop(n);
    }
}
