//! Consumer groups on a cluster (issue 14 item 5; docs/replication.md, "Consumer groups and
//! work queues on a cluster"): three `Engine`s in one process (real O_DIRECT files), connected
//! by an in-process `PeerSink` with a cut-off switch (as in `cluster_engines.rs`).
//!
//! `__offsets` becomes a replicated topic on its own when the cluster starts; a group's
//! coordinator is the leader of its `__offsets` partition and the other nodes answer
//! `NotLeader` naming it; offsets committed through the coordinator are read back from the
//! next coordinator after the first one shuts down, and again after the restarted node rejoins
//! and the second coordinator is cut off; members of the old coordinator are unknown to the
//! new one and rejoin.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardline_engine::groups::{Committed, OFFSETS_TOPIC, OffsetCommit};
use shardline_engine::{Error, NodeId, TopicConfig};

mod common;
use common::{Net, start};

const TOPIC: &str = "orders";
const GROUP: &str = "billing";
const STANDALONE: &str = "audit";

/// Waits (bounded) until every node up holds `__offsets` as a replicated topic.
fn wait_offsets_replicated(net: &Net) {
    let deadline = Instant::now() + Duration::from_secs(20);
    for n in net.up() {
        loop {
            let st = futures_lite::future::block_on(net.engine(n).replica_status(OFFSETS_TOPIC));
            if st.is_ok_and(|s| s.iter().all(|p| p.replicas.len() == 3)) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {n}: no replicated __offsets in 20 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The node that coordinates `group` now (bounded: 15 s), skipping `skip`. Checks that the
/// others answer `NotLeader`.
fn coordinator(net: &Net, group: &str, skip: &[NodeId]) -> NodeId {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut found = Vec::new();
        for n in net.up().into_iter().filter(|n| !skip.contains(n)) {
            match net.engine(n).fetch_offsets(group, TOPIC) {
                Ok(_) => found.push(n),
                Err(Error::NotLeader { topic, .. }) => assert_eq!(topic, OFFSETS_TOPIC),
                Err(e) => panic!("node {n}: {e}"),
            }
        }
        if let [one] = found[..] {
            return one;
        }
        assert!(
            Instant::now() < deadline,
            "no single coordinator for {group} in 15 s: {found:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Committed offsets of `group` on node `n`, as partition -> offset.
fn offsets(net: &Net, n: NodeId, group: &str) -> HashMap<u32, u64> {
    net.engine(n)
        .fetch_offsets(group, TOPIC)
        .unwrap()
        .into_iter()
        .map(|(p, c): (u32, Committed)| (p, c.offset))
        .collect()
}

/// Waits (bounded: 10 s) until node `n`'s committed offsets of [`GROUP`] are `want`.
fn wait_offsets(net: &Net, n: NodeId, want: &HashMap<u32, u64>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while offsets(net, n, GROUP) != *want {
        assert!(
            Instant::now() < deadline,
            "node {n}: {:?}",
            offsets(net, n, GROUP)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn commit(p: u32, offset: u64) -> OffsetCommit {
    OffsetCommit {
        partition: p,
        offset,
        metadata: format!("m{offset}"),
    }
}

/// Every other node answers a join with `NotLeader` naming `first` (once it knows the leader),
/// and every node's `group_coordinator` names it.
fn others_name(net: &Net, first: NodeId) {
    let hint_deadline = Instant::now() + Duration::from_secs(10);
    for n in net.up().into_iter().filter(|&n| n != first) {
        loop {
            match net.engine(n).join_group(GROUP, TOPIC, "c", 10_000) {
                Err(Error::NotLeader {
                    leader: Some(l), ..
                }) => {
                    assert_eq!(l, first, "node {n} names another coordinator");
                    break;
                }
                Err(Error::NotLeader { leader: None, .. }) => {}
                other => panic!("node {n} is not the coordinator: {other:?}"),
            }
            assert!(Instant::now() < hint_deadline, "node {n} names no leader");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    // Every node names the coordinator (FindCoordinator for the Kafka front end, tools).
    let named = Instant::now() + Duration::from_secs(10);
    for n in net.up() {
        while net.engine(n).group_coordinator(GROUP).unwrap() != Some(first) {
            assert!(
                Instant::now() < named,
                "node {n} does not name node {first}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn group_offsets_survive_the_loss_of_the_coordinator() {
    let started = Instant::now();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let dir = |n: NodeId| dirs[(n - 1) as usize].path();
    let net = Arc::new(Net::default());
    for n in 1..=3 {
        start(&net, n, dir(n));
    }
    let cfg = TopicConfig {
        replicas: 3,
        ..TopicConfig::with_partitions(2)
    };
    futures_lite::future::block_on(net.engine(1).create_topic_replicated(TOPIC, cfg)).unwrap();
    wait_offsets_replicated(&net);

    // The coordinator answers; the others name it (once they know the leader).
    let first = coordinator(&net, GROUP, &[]);
    others_name(&net, first);

    // A member commits through the coordinator; a standalone consumer too.
    let e = net.engine(first);
    let a = e.join_group(GROUP, TOPIC, "c1", 10_000).unwrap();
    e.commit_offsets(
        GROUP,
        TOPIC,
        &a.member_id,
        a.generation,
        vec![commit(0, 5), commit(1, 7)],
    )
    .unwrap();
    e.commit_offsets(GROUP, TOPIC, &a.member_id, a.generation, vec![commit(0, 9)])
        .unwrap();
    let standalone_coord = coordinator(&net, STANDALONE, &[]);
    net.engine(standalone_coord)
        .commit_offsets(STANDALONE, TOPIC, "", 0, vec![commit(1, 3)])
        .unwrap();
    assert_eq!(offsets(&net, first, GROUP), HashMap::from([(0, 9), (1, 7)]));

    // The coordinator goes away; the next one has every acknowledged commit.
    let e = net.engines.lock().unwrap().remove(&first).unwrap();
    e.shutdown().unwrap();
    drop(e);
    let second = coordinator(&net, GROUP, &[]);
    assert_ne!(second, first);
    assert_eq!(
        offsets(&net, second, GROUP),
        HashMap::from([(0, 9), (1, 7)])
    );
    let s = coordinator(&net, STANDALONE, &[]);
    assert_eq!(offsets(&net, s, STANDALONE), HashMap::from([(1, 3)]));

    // The old member is unknown there: it rejoins and commits in the new generation.
    let e = net.engine(second);
    assert!(matches!(
        e.heartbeat_group(GROUP, &a.member_id, &[0, 1]),
        Err(Error::UnknownMember { .. })
    ));
    let b = e.join_group(GROUP, TOPIC, "c1", 10_000).unwrap();
    e.commit_offsets(
        GROUP,
        TOPIC,
        &b.member_id,
        b.generation,
        vec![commit(1, 11)],
    )
    .unwrap();

    // The first node restarts from its directory and catches up; the second coordinator is
    // cut off: whichever node leads next has all three commits (replayed or applied).
    start(&net, first, dir(first));
    wait_offsets_replicated(&net);
    let caught_up = Instant::now() + Duration::from_secs(15);
    while net
        .engine(first)
        .list_groups()
        .unwrap()
        .iter()
        .all(|g| g.group != GROUP)
    {
        assert!(
            Instant::now() < caught_up,
            "the restarted node has no offsets of {GROUP}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    net.set_cut(second, true);
    let third = coordinator(&net, GROUP, &[second]);
    assert_ne!(third, second);
    let want = HashMap::from([(0, 9), (1, 11)]);
    wait_offsets(&net, third, &want);
    // A commit from a member of the cut-off coordinator does not pass the new one.
    assert!(matches!(
        net.engine(third).commit_offsets(
            GROUP,
            TOPIC,
            &b.member_id,
            b.generation,
            vec![commit(0, 1)]
        ),
        Err(Error::UnknownMember { .. })
    ));
    net.set_cut(second, false);
    for n in net.up() {
        net.engine(n).shutdown().unwrap();
    }
    eprintln!("cluster groups test took {:?}", started.elapsed());
}
