//! Configuration changes: typed Raft-log frames, the saved configuration, old-format files,
//! and moves of a group's replica set over an in-process network (with restarts mid-move and
//! the leader leaving the set).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures_lite::future::block_on;
use proptest::prelude::*;

use super::disk::{DiskConf, DiskEntry, DiskState, EntryKind, RaftDisk};
use super::{MoveStep, NodeId, ReplAcks, ReplicaConfig, ReplicaNode, ReplicatedPartition};
use crate::batch::{BatchBuilder, ProducerInfo};
use crate::storage::{CrashStorage, Storage};

type Node = ReplicaNode<CrashStorage, u64>;
const G: u64 = 7;

fn batch(producer_id: u64, seq: u32, records: usize) -> Bytes {
    let mut b = BatchBuilder::new().producer(ProducerInfo {
        producer_id,
        producer_epoch: 0,
        base_sequence: seq,
    });
    for i in 0..records {
        b.push_value(format!("value {seq} {i}"));
    }
    b.build().unwrap()
}

fn kind_of(k: u8) -> EntryKind {
    match k % 3 {
        0 => EntryKind::Normal,
        1 => EntryKind::ConfChange,
        _ => EntryKind::ConfChangeV2,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    // Proves: entries of every type (and empty data: raft-rs's leave-joint entry) read back
    // with their type, index, term and data, also after suffix overwrites.
    #[test]
    fn typed_frames_round_trip(
        kinds in proptest::collection::vec((any::<u8>(), proptest::collection::vec(any::<u8>(), 0..40)), 1..30),
        cut in 0usize..30,
    ) {
        let st = CrashStorage::new();
        let dir = Path::new("/t/typed");
        let entries: Vec<DiskEntry> = kinds
            .iter()
            .zip(1u64..)
            .map(|((k, d), i)| DiskEntry { index: i, term: 1, kind: kind_of(*k), data: Bytes::from(d.clone()) })
            .collect();
        let cut = (cut % entries.len()) as u64 + 1;
        let over = DiskEntry { index: cut, term: 2, kind: EntryKind::ConfChangeV2, data: Bytes::new() };
        block_on(async {
            let (mut d, _) = RaftDisk::open(st.clone(), dir).await.unwrap();
            d.append(&entries).await.unwrap();
            d.append(std::slice::from_ref(&over)).await.unwrap();
            d.sync().await.unwrap();
        });
        st.crash(|_, _, _| false);
        let (_, rec) = block_on(RaftDisk::open(st.clone(), dir)).unwrap();
        let mut want: Vec<DiskEntry> = entries[..usize::try_from(cut - 1).unwrap()].to_vec();
        want.push(over);
        prop_assert_eq!(rec.entries, want);
    }
}

fn put_u32(v: &mut Vec<u8>, x: u32) {
    v.extend_from_slice(&x.to_le_bytes());
}
fn put_u64(v: &mut Vec<u8>, x: u64) {
    v.extend_from_slice(&x.to_le_bytes());
}

/// The bytes an older build wrote: `RFL1` frames only, an `RST1` state slot.
fn old_format_files(entries: &[(u64, u64, &[u8])], state: (u64, u64, u64)) -> (Vec<u8>, Vec<u8>) {
    let mut log = Vec::new();
    for (index, term, data) in entries {
        let mut crc = crc32c::crc32c(&index.to_le_bytes());
        crc = crc32c::crc32c_append(crc, &term.to_le_bytes());
        crc = crc32c::crc32c_append(crc, data);
        put_u32(&mut log, 0x5246_4c31);
        put_u64(&mut log, *index);
        put_u64(&mut log, *term);
        put_u32(&mut log, u32::try_from(data.len()).unwrap());
        put_u32(&mut log, crc);
        log.extend_from_slice(data);
    }
    let mut st = Vec::new();
    put_u32(&mut st, 0x5253_5431);
    put_u64(&mut st, 1);
    put_u64(&mut st, state.0);
    put_u64(&mut st, state.1);
    put_u64(&mut st, state.2);
    let crc = crc32c::crc32c(&st);
    put_u32(&mut st, crc);
    (log, st)
}

fn write_file(st: &CrashStorage, path: &Path, bytes: &[u8]) {
    block_on(async {
        let f = st.open(path).await.unwrap();
        let padded = crate::storage::align_up(bytes.len() as u64);
        let mut buf = CrashStorage::alloc_buf(usize::try_from(padded).unwrap());
        {
            let b = crate::storage::IoBuf::as_bytes_mut(&mut buf);
            b[..bytes.len()].copy_from_slice(bytes);
            b[bytes.len()..].fill(0);
        }
        crate::storage::LogFile::write_at(&f, std::rc::Rc::new(buf), 0)
            .await
            .unwrap();
        crate::storage::LogFile::truncate(&f, bytes.len() as u64)
            .await
            .unwrap();
        crate::storage::LogFile::sync(&f).await.unwrap();
    });
}

// Proves: a replica directory written before configuration changes existed (RFL1 frames,
// RST1 state) opens as before: same entries, state, no saved configuration; the replica
// opened on it has the voters it is given and its committed batches; the first configuration
// saved then turns its state slots into RST2 and reads back.
#[test]
fn an_old_format_replica_opens_as_before_and_saves_a_configuration() {
    let st = CrashStorage::new();
    let dir = Path::new("/old/g7");
    st.create_dir_all(dir).unwrap();
    let b0 = batch(5, 0, 2);
    let b1 = batch(5, 2, 3);
    let (log, state) = old_format_files(&[(1, 1, b""), (2, 1, &b0), (3, 1, &b1)], (1, 1, 3));
    write_file(&st, &dir.join("raft-log"), &log);
    write_file(&st, &dir.join("raft-state"), &state);
    block_on(async {
        let (mut d, rec) = RaftDisk::open(st.clone(), dir).await.unwrap();
        assert_eq!(rec.entries.len(), 3);
        assert!(rec.entries.iter().all(|e| e.kind == EntryKind::Normal));
        assert_eq!(rec.entries[1].data, b0);
        assert_eq!(
            rec.state,
            DiskState {
                term: 1,
                vote: 1,
                commit: 3
            }
        );
        assert_eq!(rec.conf, None);
        let c = DiskConf {
            index: 4,
            voters: vec![1, 2, 3],
            learners: vec![4],
            ..DiskConf::default()
        };
        d.save_conf(c.clone()).await.unwrap();
        d.save_state(DiskState {
            term: 2,
            vote: 1,
            commit: 4,
        })
        .await
        .unwrap();
        d.sync().await.unwrap();
        drop(d);
        let (_, rec) = RaftDisk::open(st.clone(), dir).await.unwrap();
        assert_eq!(rec.conf, Some(c));
        assert_eq!(rec.state.commit, 4);
    });
    // A second directory of the same old bytes opens as a replica with its batches.
    let dir2 = Path::new("/old/g8");
    st.create_dir_all(dir2).unwrap();
    write_file(&st, &dir2.join("raft-log"), &log);
    write_file(&st, &dir2.join("raft-state"), &state);
    let r: ReplicatedPartition<CrashStorage, u64> = block_on(ReplicatedPartition::open(
        st.clone(),
        dir2,
        8,
        1,
        &[1, 2, 3],
        ReplicaConfig::default(),
        1,
    ))
    .unwrap();
    assert_eq!(r.voters(), vec![1, 2, 3]);
    assert_eq!(r.high_watermark(), 5);
    assert_eq!(r.conf_index(), 0);
}

// ---------------------------------------------------------------------------------------------
// Moves over an in-process network
// ---------------------------------------------------------------------------------------------

fn dir_of(id: NodeId) -> PathBuf {
    PathBuf::from(format!("/m{id}/g7"))
}

/// Opens node `id`'s replica; `voters`: the group's initial set (a node outside it joins).
fn open_node(st: &CrashStorage, id: NodeId, voters: &[NodeId], seed: u64) -> Node {
    let r = block_on(ReplicatedPartition::open(
        st.clone(),
        &dir_of(id),
        G,
        id,
        voters,
        ReplicaConfig::default(),
        seed,
    ))
    .unwrap();
    let mut n = Node::new(id);
    n.insert(r);
    n
}

/// One round: readies handled, messages delivered (none from or to `down`).
fn round(nodes: &mut [Option<Node>], acks: &mut Vec<u64>) {
    for n in nodes.iter_mut().flatten() {
        assert!(block_on(n.process_ready()).is_empty());
        for (_, r) in n.take_replies() {
            if r.result.is_ok() {
                acks.push(r.token);
            }
        }
        n.take_conf_changed();
    }
    let mut frames = Vec::new();
    for n in nodes.iter_mut().flatten() {
        for (to, msgs) in n.drain_outgoing() {
            frames.push((n.id(), to, msgs));
        }
    }
    for (from, to, msgs) in frames {
        if let Some(n) = nodes[usize::try_from(to - 1).unwrap()].as_mut() {
            n.on_peer_messages(from, msgs);
        }
    }
}

fn tick_round(nodes: &mut [Option<Node>], acks: &mut Vec<u64>) {
    for n in nodes.iter_mut().flatten() {
        n.tick_all();
    }
    round(nodes, acks);
}

fn leader(nodes: &[Option<Node>]) -> Option<NodeId> {
    nodes
        .iter()
        .flatten()
        .find(|n| n.get(G).is_some_and(|p| p.is_leader()))
        .map(|n| n.id())
}

fn node(nodes: &mut [Option<Node>], id: NodeId) -> &mut Node {
    nodes[usize::try_from(id - 1).unwrap()].as_mut().unwrap()
}

fn elect(nodes: &mut [Option<Node>], acks: &mut Vec<u64>) -> NodeId {
    for _ in 0..500 {
        tick_round(nodes, acks);
        if let Some(l) = leader(nodes) {
            for _ in 0..5 {
                round(nodes, acks);
            }
            return l;
        }
    }
    panic!("no leader elected in 500 ticks");
}

/// Produces `count` idempotent `all` batches through the current leader (tokens from
/// `first`), waiting until each is acknowledged.
fn produce(nodes: &mut [Option<Node>], acks: &mut Vec<u64>, first: u64, count: u64) {
    for t in first..first + count {
        for _ in 0..200 {
            let l = elect(nodes, acks);
            let seq = u32::try_from(t).unwrap() * 2;
            node(nodes, l).propose(G, batch(9, seq, 2), ReplAcks::All, Some(t));
            for _ in 0..10 {
                round(nodes, acks);
            }
            if acks.contains(&t) {
                break;
            }
        }
        assert!(acks.contains(&t), "batch {t} never acknowledged");
    }
}

fn set_target(nodes: &mut [Option<Node>], target: &[NodeId]) {
    for n in nodes.iter_mut().flatten() {
        n.set_move_target(G, Some(target.to_vec()));
    }
}

/// Ticks until every replica in `target` sees the move done (bounded).
fn run_move(nodes: &mut [Option<Node>], acks: &mut Vec<u64>, target: &[NodeId]) {
    for _ in 0..600 {
        tick_round(nodes, acks);
        let done = target.iter().all(|id| {
            nodes[usize::try_from(id - 1).unwrap()]
                .as_ref()
                .and_then(|n| n.get(G))
                .is_some_and(|p| p.move_step() == MoveStep::Done)
        });
        if done && leader(nodes).is_some_and(|l| target.contains(&l)) {
            return;
        }
    }
    panic!("move to {target:?} not done in 600 ticks");
}

fn four_nodes(stores: &[CrashStorage]) -> Vec<Option<Node>> {
    (1..=4u64)
        .map(|id| {
            Some(open_node(
                &stores[usize::try_from(id - 1).unwrap()],
                id,
                &[1, 2, 3],
                42,
            ))
        })
        .collect()
}

/// Every replica in `set` has the same committed batches: `records` records.
fn assert_all_committed(nodes: &[Option<Node>], set: &[NodeId], records: u64) {
    for id in set {
        let p = nodes[usize::try_from(id - 1).unwrap()]
            .as_ref()
            .unwrap()
            .get(G)
            .unwrap();
        assert_eq!(p.high_watermark(), records, "node {id}");
        let offsets: Vec<u64> = p
            .read_committed(0, 10_000)
            .iter()
            .map(|(o, _)| *o)
            .collect();
        let want: Vec<u64> = (0..records / 2).map(|i| i * 2).collect();
        assert_eq!(offsets, want, "node {id}");
    }
}

// Proves: a group on {1,2,3} moves onto {1,2,4} online (node 4 joins with an empty log as a
// learner, catches up, the joint configuration is entered and left): every acknowledged batch
// (before, and after, the move) is committed on 1, 2 and 4 at the same offsets; 3 is out of
// every member's configuration; batches produced after the move commit without 3.
#[test]
fn a_group_moves_onto_a_new_node_and_keeps_every_acknowledged_batch() {
    let stores: Vec<CrashStorage> = (0..4).map(|_| CrashStorage::new()).collect();
    let mut nodes = four_nodes(&stores);
    let mut acks = Vec::new();
    produce(&mut nodes, &mut acks, 0, 10);
    set_target(&mut nodes, &[1, 2, 4]);
    run_move(&mut nodes, &mut acks, &[1, 2, 4]);
    for id in [1, 2, 4] {
        let p = node(&mut nodes, id).get(G).unwrap();
        assert_eq!(p.voters(), vec![1, 2, 4], "node {id}");
        assert!(p.learners().is_empty());
        assert!(!p.is_member(3));
    }
    // Node 3 is gone: the new set commits without it.
    nodes[2] = None;
    produce(&mut nodes, &mut acks, 10, 5);
    assert_all_committed(&nodes, &[1, 2, 4], 30);
}

// Proves: when the leader is not in the target set it hands leadership to a new voter while
// the configuration is joint, and the move completes: {1,2,3} -> {2,3,4} with 1 leading
// and {1,2,3} -> {1,2,4} -> ... every acknowledged batch stays.
#[test]
fn a_leader_that_leaves_the_set_transfers_leadership_first() {
    let stores: Vec<CrashStorage> = (0..4).map(|_| CrashStorage::new()).collect();
    let mut nodes = four_nodes(&stores);
    let mut acks = Vec::new();
    produce(&mut nodes, &mut acks, 0, 6);
    let l = leader(&nodes).unwrap();
    let mut target: Vec<NodeId> = [1, 2, 3, 4].into_iter().filter(|x| *x != l).collect();
    target.sort_unstable();
    set_target(&mut nodes, &target);
    run_move(&mut nodes, &mut acks, &target);
    let l2 = leader(&nodes).unwrap();
    assert_ne!(l2, l);
    assert!(target.contains(&l2));
    assert!(!node(&mut nodes, l2).get(G).unwrap().is_member(l));
    nodes[usize::try_from(l - 1).unwrap()] = None;
    produce(&mut nodes, &mut acks, 6, 4);
    assert_all_committed(&nodes, &target, 20);
}

// Proves: a restart of every replica in the middle of a move (power loss: only synced
// writes stay) comes back with the configuration it had applied (joint, or with the
// learner), reopened with the *initial* set as the host would, and the move then completes
// with every acknowledged batch.
#[test]
fn a_restart_in_the_middle_of_a_move_keeps_the_configuration() {
    for stop_at in [MoveStep::AddingLearners, MoveStep::Joint] {
        let stores: Vec<CrashStorage> = (0..4).map(|_| CrashStorage::new()).collect();
        let mut nodes = four_nodes(&stores);
        let mut acks = Vec::new();
        produce(&mut nodes, &mut acks, 0, 5);
        set_target(&mut nodes, &[2, 3, 4]);
        let mut seen = None;
        for _ in 0..600 {
            tick_round(&mut nodes, &mut acks);
            let l = leader(&nodes);
            let p = l.and_then(|l| node(&mut nodes, l).get(G));
            let hit = match stop_at {
                MoveStep::AddingLearners => p.is_some_and(|p| p.learners() == vec![4]),
                _ => p.is_some_and(|p| p.move_step() == MoveStep::Joint),
            };
            if hit {
                seen = Some(p.unwrap().conf_state());
                break;
            }
        }
        let seen = seen.expect("the move never reached the step");
        for _ in 0..3 {
            round(&mut nodes, &mut acks);
        }
        for st in &stores {
            st.crash(|_, _, _| false);
        }
        nodes = four_nodes(&stores);
        let l = elect(&mut nodes, &mut acks);
        let cs = node(&mut nodes, l).get(G).unwrap().conf_state();
        let mut got = cs.get_voters().to_vec();
        got.sort_unstable();
        let mut want = seen.get_voters().to_vec();
        want.sort_unstable();
        assert_eq!(got, want, "{stop_at:?}: voters after the restart");
        assert_eq!(
            cs.get_learners().is_empty(),
            seen.get_learners().is_empty(),
            "{stop_at:?}"
        );
        assert_eq!(
            cs.get_voters_outgoing().is_empty(),
            seen.get_voters_outgoing().is_empty(),
            "{stop_at:?}: joint after the restart"
        );
        set_target(&mut nodes, &[2, 3, 4]);
        run_move(&mut nodes, &mut acks, &[2, 3, 4]);
        nodes[0] = None;
        produce(&mut nodes, &mut acks, 5, 3);
        assert_all_committed(&nodes, &[2, 3, 4], 16);
    }
}

// Proves: a move onto a node that is down stops at the learner step (the learner never
// catches up, no joint configuration is entered, the group keeps committing with its old
// voters), and setting the target back undoes it: the learner is removed.
#[test]
fn a_move_onto_a_dead_node_waits_and_a_new_target_undoes_it() {
    let stores: Vec<CrashStorage> = (0..4).map(|_| CrashStorage::new()).collect();
    let mut nodes = four_nodes(&stores);
    nodes[3] = None;
    let mut acks = Vec::new();
    produce(&mut nodes, &mut acks, 0, 3);
    set_target(&mut nodes, &[1, 2, 4]);
    for _ in 0..200 {
        tick_round(&mut nodes, &mut acks);
    }
    let l = leader(&nodes).unwrap();
    let p = node(&mut nodes, l).get(G).unwrap();
    assert_eq!(p.learners(), vec![4]);
    assert_eq!(p.voters(), vec![1, 2, 3]);
    assert_eq!(p.move_step(), MoveStep::AddingLearners);
    produce(&mut nodes, &mut acks, 3, 2);
    set_target(&mut nodes, &[1, 2, 3]);
    run_move(&mut nodes, &mut acks, &[1, 2, 3]);
    for id in [1, 2, 3] {
        let p = node(&mut nodes, id).get(G).unwrap();
        assert!(p.learners().is_empty(), "node {id}");
        assert!(!p.is_member(4), "node {id}");
    }
    assert_all_committed(&nodes, &[1, 2, 3], 10);
}

fn set_learners(nodes: &mut [Option<Node>], learners: &[NodeId]) {
    for n in nodes.iter_mut().flatten() {
        n.set_learner_target(G, Some(learners.to_vec()));
    }
}

/// Ticks until the leader's applied configuration has `learners` as its learners (bounded).
fn run_learners(nodes: &mut [Option<Node>], acks: &mut Vec<u64>, learners: &[NodeId]) {
    for _ in 0..600 {
        tick_round(nodes, acks);
        let l = leader(nodes);
        let done = l.is_some_and(|l| node(nodes, l).get(G).unwrap().learners() == learners);
        if done {
            return;
        }
    }
    panic!("learners {learners:?} not reached in 600 ticks");
}

// Proves (the controller group's learners, docs/replication.md "Membership changes" step 3):
// a learner target adds node 4 as a learner of {1,2,3} without touching the voters; it
// receives every committed batch; a new leader (the old one cut off) keeps it from the
// applied configuration; an empty target removes it, and batches then commit without it.
#[test]
fn a_learner_target_adds_and_removes_a_learner_and_leaves_the_voters() {
    let stores: Vec<CrashStorage> = (0..4).map(|_| CrashStorage::new()).collect();
    let mut nodes = four_nodes(&stores);
    let mut acks = Vec::new();
    produce(&mut nodes, &mut acks, 0, 5);
    set_learners(&mut nodes, &[4]);
    run_learners(&mut nodes, &mut acks, &[4]);
    produce(&mut nodes, &mut acks, 5, 5);
    for _ in 0..50 {
        tick_round(&mut nodes, &mut acks);
    }
    for id in 1..=4 {
        let p = node(&mut nodes, id).get(G).unwrap();
        assert_eq!(p.voters(), vec![1, 2, 3], "node {id}");
    }
    assert_all_committed(&nodes, &[1, 2, 3, 4], 20);
    // The leader goes: the next one has the learner in its configuration.
    let old = leader(&nodes).unwrap();
    nodes[usize::try_from(old - 1).unwrap()] = None;
    produce(&mut nodes, &mut acks, 10, 3);
    let l = leader(&nodes).unwrap();
    assert_ne!(l, 4, "a learner never leads");
    assert_eq!(node(&mut nodes, l).get(G).unwrap().learners(), vec![4]);
    // Removed: an empty target.
    set_learners(&mut nodes, &[]);
    run_learners(&mut nodes, &mut acks, &[]);
    nodes[3] = None;
    produce(&mut nodes, &mut acks, 13, 2);
    let survivors: Vec<NodeId> = [1, 2, 3].into_iter().filter(|n| *n != old).collect();
    assert_all_committed(&nodes, &survivors, 30);
}
