//! Idle cost of many Raft groups (issue 14, "many groups must stay cheap"): 3 nodes in one
//! thread, `groups` replicated partitions on each (R = 3), a perfect in-process network; after
//! every group elected a leader and committed its no-op, `ticks` tick rounds with no traffic.
//! `cargo run --release -p shardline-engine --example sim_cluster -- --idle-groups 10000`
//! prints the figures (docs/performance.md).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures_lite::future::block_on;

use crate::replication::{NodeId, ReplicaConfig, ReplicaNode, ReplicatedPartition};
use crate::storage::CrashStorage;

/// What an idle run measured.
#[derive(Debug, Clone, Copy)]
pub struct IdleReport {
    pub groups: u64,
    pub nodes: u64,
    /// Tick rounds until every group had a leader and had committed.
    pub election_ticks: u64,
    pub ticks: u64,
    /// Wall time of the idle tick rounds (all nodes, one thread; the caller measures CPU).
    pub idle_busy: Duration,
    /// Raft messages and their bytes sent per idle tick round, all nodes together.
    pub msgs_per_tick: f64,
    pub bytes_per_tick: f64,
    /// Frames (one per sender and receiver per round) per idle tick round.
    pub frames_per_tick: f64,
    /// Bytes the simulated disks hold (kept twice in memory: live and durable image).
    pub storage_bytes: u64,
    /// Replicas hibernating at the end (all nodes).
    pub asleep: u64,
}

type Node = ReplicaNode<CrashStorage, u64>;

/// One round: every node handles its ready groups; every frame delivered.
fn round(nodes: &mut [Node], counts: &mut (u64, u64, u64)) {
    let mut frames = Vec::new();
    for n in nodes.iter_mut() {
        let failed = block_on(n.process_ready());
        assert!(failed.is_empty(), "idle cluster: I/O error");
        for (to, msgs) in n.drain_outgoing() {
            counts.0 += 1;
            counts.1 += msgs.len() as u64;
            counts.2 += msgs.iter().map(|(_, b)| b.len() as u64).sum::<u64>();
            frames.push((n.id(), to, msgs));
        }
    }
    for (from, to, msgs) in frames {
        let i = usize::try_from(to - 1).unwrap_or(usize::MAX);
        if let Some(n) = nodes.get_mut(i) {
            n.on_peer_messages(from, msgs);
        }
    }
}

/// Builds the idle cluster, elects every group, then measures `ticks` idle tick rounds;
/// `hibernate`: whether idle groups hibernate (`ReplicaNode::set_hibernation`). `mark` is called with `"built"` once every group has elected and settled (the caller reads
/// its memory and CPU clock there) and with `"idle-done"` after the idle rounds.
pub fn measure_idle(
    groups: u64,
    ticks: u64,
    hibernate: bool,
    mut mark: impl FnMut(&str),
) -> IdleReport {
    let ids: Vec<NodeId> = vec![1, 2, 3];
    let storage: Vec<CrashStorage> = ids.iter().map(|_| CrashStorage::new()).collect();
    let mut nodes: Vec<Node> = ids
        .iter()
        .map(|id| {
            let mut n = Node::new(*id);
            n.set_hibernation(hibernate);
            n
        })
        .collect();
    for (k, n) in nodes.iter_mut().enumerate() {
        for g in 1..=groups {
            let dir = PathBuf::from(format!("/n{}/g{g}", ids[k]));
            let p = block_on(ReplicatedPartition::open(
                storage[k].clone(),
                &dir,
                g,
                ids[k],
                &ids,
                ReplicaConfig::default(),
                g,
            ))
            .unwrap_or_else(|e| panic!("open: {e}"));
            n.insert(p);
        }
    }
    let mut counts = (0, 0, 0);
    let mut election_ticks = 0;
    loop {
        election_ticks += 1;
        assert!(
            election_ticks < 1000,
            "idle cluster: groups without a leader"
        );
        for n in &mut nodes {
            n.tick_all();
        }
        for _ in 0..3 {
            round(&mut nodes, &mut counts);
        }
        let led = nodes
            .iter()
            .flat_map(|n| n.groups())
            .filter(|p| p.is_leader() && p.commit_index() >= 1)
            .count();
        if led as u64 == groups {
            break;
        }
    }
    // Let the last elections' messages settle.
    for _ in 0..30 {
        for n in &mut nodes {
            n.tick_all();
        }
        round(&mut nodes, &mut counts);
    }
    mark("built");
    let mut counts = (0, 0, 0);
    let started = Instant::now();
    for _ in 0..ticks {
        for n in &mut nodes {
            n.tick_all();
        }
        // A tick round's messages and their answers.
        round(&mut nodes, &mut counts);
        round(&mut nodes, &mut counts);
    }
    let idle_busy = started.elapsed();
    mark("idle-done");
    let t = ticks.max(1) as f64;
    IdleReport {
        groups,
        nodes: ids.len() as u64,
        election_ticks,
        ticks,
        idle_busy,
        frames_per_tick: counts.0 as f64 / t,
        msgs_per_tick: counts.1 as f64 / t,
        bytes_per_tick: counts.2 as f64 / t,
        storage_bytes: storage.iter().map(CrashStorage::used_bytes).sum(),
        asleep: nodes.iter().map(|n| n.asleep_count() as u64).sum(),
    }
}
