//! Replication unit tests: the Raft files and three replicas over an in-process network
//! (the seeded fault simulation is engine/src/sim/cluster.rs).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures_lite::future::block_on;

use super::disk::{DiskEntry, DiskState, RaftDisk};
use super::{NodeId, ReplAcks, ReplError, ReplicaConfig, ReplicaNode, ReplicatedPartition};
use crate::batch::{BatchBuilder, ProducerInfo};
use crate::storage::CrashStorage;

fn batch(producer: Option<(u64, u32)>, records: usize) -> Bytes {
    let mut b = BatchBuilder::new();
    if let Some((producer_id, base_sequence)) = producer {
        b = b.producer(ProducerInfo {
            producer_id,
            producer_epoch: 0,
            base_sequence,
        });
    }
    for i in 0..records {
        b.push_value(format!("value {i}"));
    }
    b.build().unwrap()
}

fn entry(index: u64, term: u64, data: &str) -> DiskEntry {
    DiskEntry {
        index,
        term,
        kind: super::disk::EntryKind::Normal,
        data: Bytes::copy_from_slice(data.as_bytes()),
    }
}

// Proves: the Raft files read back what was synced; a later frame with a lower index
// overwrites the suffix (Raft's truncation); a power loss keeps only synced frames and the
// newest state slot that was synced.
#[test]
fn raft_files_recover_synced_entries_overwrites_and_state() {
    let st = CrashStorage::new();
    let dir = Path::new("/r/g1");
    block_on(async {
        let (mut d, rec) = RaftDisk::open(st.clone(), dir).await.unwrap();
        assert!(rec.entries.is_empty());
        d.append(&[entry(1, 1, "a"), entry(2, 1, "b"), entry(3, 1, "c")])
            .await
            .unwrap();
        d.save_state(DiskState {
            term: 1,
            vote: 1,
            commit: 1,
        })
        .await
        .unwrap();
        d.sync().await.unwrap();
        // A new leader overwrites index 2 onwards.
        d.append(&[entry(2, 2, "B")]).await.unwrap();
        d.save_state(DiskState {
            term: 2,
            vote: 3,
            commit: 2,
        })
        .await
        .unwrap();
        d.sync().await.unwrap();
        // Unsynced: lost at power loss.
        d.append(&[entry(3, 2, "C".repeat(5000).as_str())])
            .await
            .unwrap();
        d.save_state(DiskState {
            term: 3,
            vote: 0,
            commit: 2,
        })
        .await
        .unwrap();
    });
    st.crash(|_, _, _| false);
    block_on(async {
        let (_, rec) = RaftDisk::open(st.clone(), dir).await.unwrap();
        let got: Vec<(u64, u64, Bytes)> = rec
            .entries
            .iter()
            .map(|e| (e.index, e.term, e.data.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, 1, Bytes::from_static(b"a")),
                (2, 2, Bytes::from_static(b"B"))
            ]
        );
        assert_eq!(
            rec.state,
            DiskState {
                term: 2,
                vote: 3,
                commit: 2
            }
        );
    });
}

// Proves: a torn last frame is cut at open, and appends after it are read back.
#[test]
fn a_torn_tail_frame_is_cut_and_the_log_goes_on() {
    let st = CrashStorage::new();
    let dir = Path::new("/r/g2");
    block_on(async {
        let (mut d, _) = RaftDisk::open(st.clone(), dir).await.unwrap();
        d.append(&[entry(1, 1, "a")]).await.unwrap();
        d.sync().await.unwrap();
    });
    // Corrupt the frame's data byte: its CRC fails.
    st.with_file_bytes(&dir.join("raft-log"), |b| b[28] ^= 0xff)
        .unwrap();
    block_on(async {
        let (mut d, rec) = RaftDisk::open(st.clone(), dir).await.unwrap();
        assert!(rec.entries.is_empty());
        assert!(rec.cut_bytes > 0);
        d.append(&[entry(1, 2, "x"), entry(2, 2, "y")])
            .await
            .unwrap();
        d.sync().await.unwrap();
        let (_, rec) = RaftDisk::open(st.clone(), dir).await.unwrap();
        assert_eq!(rec.entries.len(), 2);
        assert_eq!(rec.entries[1].data, Bytes::from_static(b"y"));
    });
}

type Node = ReplicaNode<CrashStorage, u64>;

fn open(st: &CrashStorage, id: NodeId, seed: u64) -> ReplicatedPartition<CrashStorage, u64> {
    let dir = PathBuf::from(format!("/n{id}/g7"));
    block_on(ReplicatedPartition::open(
        st.clone(),
        &dir,
        7,
        id,
        &[1, 2, 3],
        ReplicaConfig::default(),
        seed,
    ))
    .unwrap()
}

/// One round: every node's ready handled, every message delivered (none to `cut`).
fn round(
    nodes: &mut [Option<Node>],
    cut: Option<NodeId>,
) -> Vec<(u64, Result<crate::api::ProduceAck, ReplError>)> {
    let mut replies = Vec::new();
    for n in nodes.iter_mut().flatten() {
        let failed = block_on(n.process_ready());
        assert!(failed.is_empty());
        replies.extend(
            n.take_replies()
                .into_iter()
                .map(|(_, r)| (r.token, r.result)),
        );
    }
    let mut frames = Vec::new();
    for n in nodes.iter_mut().flatten() {
        for (to, msgs) in n.drain_outgoing() {
            frames.push((n.id(), to, msgs));
        }
    }
    for (from, to, msgs) in frames {
        if cut == Some(from) || cut == Some(to) {
            continue;
        }
        if let Some(n) = nodes[usize::try_from(to - 1).unwrap()].as_mut() {
            n.on_peer_messages(from, msgs);
        }
    }
    replies
}

fn leader(nodes: &[Option<Node>]) -> Option<NodeId> {
    nodes
        .iter()
        .flatten()
        .find(|n| n.get(7).unwrap().is_leader())
        .map(|n| n.id())
}

fn elect(nodes: &mut [Option<Node>], cut: Option<NodeId>) -> NodeId {
    for _ in 0..500 {
        for n in nodes.iter_mut().flatten() {
            n.tick_all();
        }
        round(nodes, cut);
        if let Some(l) = leader(nodes).filter(|l| Some(*l) != cut) {
            // Settle: the leader's no-op commits.
            for _ in 0..5 {
                round(nodes, cut);
            }
            return l;
        }
    }
    panic!("no leader elected in 500 ticks");
}

// Proves: three replicas elect one leader; an `all` produce is answered only after commit,
// at dense offsets; every replica then serves the same committed batches; a retry of an
// idempotent batch gets the original offsets; after the leader is cut off a new leader (new
// epoch) has every acknowledged batch, and the old one answers NOT_LEADER.
#[test]
fn three_replicas_commit_fail_over_and_keep_acknowledged_batches() {
    let stores: Vec<CrashStorage> = (0..3).map(|_| CrashStorage::new()).collect();
    let mut nodes: Vec<Option<Node>> = (1..=3u64)
        .map(|id| {
            let mut n = Node::new(id);
            n.insert(open(&stores[usize::try_from(id - 1).unwrap()], id, 42));
            Some(n)
        })
        .collect();
    let l = elect(&mut nodes, None);
    let li = usize::try_from(l - 1).unwrap();
    let n = nodes[li].as_mut().unwrap();
    n.propose(7, batch(Some((9, 0)), 3), ReplAcks::All, Some(1));
    n.propose(7, batch(None, 2), ReplAcks::All, Some(2));
    // Not answered before replication.
    assert!(n.take_replies().is_empty());
    let mut acks = Vec::new();
    for _ in 0..10 {
        acks.extend(round(&mut nodes, None));
    }
    acks.sort_by_key(|a| a.0);
    assert_eq!(acks.len(), 2, "{acks:?}");
    assert_eq!(acks[0].1.as_ref().unwrap().base_offset, 0);
    assert_eq!(acks[0].1.as_ref().unwrap().last_offset, 2);
    assert_eq!(acks[1].1.as_ref().unwrap().base_offset, 3);
    for n in nodes.iter().flatten() {
        let p = n.get(7).unwrap();
        assert_eq!(p.high_watermark(), 5, "node {}", n.id());
        assert_eq!(p.read_committed(0, 10).len(), 2);
    }
    // Idempotent retry: original offsets, nothing appended.
    nodes[li]
        .as_mut()
        .unwrap()
        .propose(7, batch(Some((9, 0)), 3), ReplAcks::All, Some(3));
    let mut retry = Vec::new();
    for _ in 0..5 {
        retry.extend(round(&mut nodes, None));
    }
    assert_eq!(retry.len(), 1);
    assert_eq!(retry[0].1.as_ref().unwrap().base_offset, 0);
    let epoch = nodes[li].as_ref().unwrap().get(7).unwrap().term();
    // Cut the leader off: a new leader in a later epoch, with both batches.
    let l2 = elect_other(&mut nodes, l);
    let p2 = nodes[usize::try_from(l2 - 1).unwrap()]
        .as_ref()
        .unwrap()
        .get(7)
        .unwrap();
    assert!(p2.term() > epoch);
    assert_eq!(p2.read_committed(0, 10).len(), 2);
    // The old leader steps down (check quorum) and refuses.
    let old = nodes[li].as_mut().unwrap();
    for _ in 0..30 {
        old.tick_all();
    }
    old.propose(7, batch(None, 1), ReplAcks::All, Some(4));
    let r = old.take_replies();
    assert!(
        matches!(r[0].1.result, Err(ReplError::NotLeader { .. })),
        "{:?}",
        r[0].1.result
    );
}

fn elect_other(nodes: &mut [Option<Node>], cut: NodeId) -> NodeId {
    for _ in 0..500 {
        for n in nodes.iter_mut().flatten() {
            n.tick_all();
        }
        round(nodes, Some(cut));
        if let Some(l) = nodes
            .iter()
            .flatten()
            .filter(|n| n.id() != cut)
            .find(|n| n.get(7).unwrap().is_leader())
        {
            return l.id();
        }
    }
    panic!("no new leader");
}

// Proves: a replica reopened after a power loss keeps its synced Raft log and state and
// rebuilds the same side index and high watermark.
#[test]
fn a_replica_reopens_with_its_log_and_high_watermark() {
    let st = CrashStorage::new();
    let mut nodes: Vec<Option<Node>> = vec![Some(Node::new(1)), None, None];
    // A single-voter group commits alone.
    let one = block_on(ReplicatedPartition::open(
        st.clone(),
        Path::new("/solo/g7"),
        7,
        1,
        &[1],
        ReplicaConfig::default(),
        1,
    ))
    .unwrap();
    nodes[0].as_mut().unwrap().insert(one);
    elect(&mut nodes, None);
    let n = nodes[0].as_mut().unwrap();
    n.propose(7, batch(None, 4), ReplAcks::All, Some(1));
    // The commit index reaches the state file with the next ready (raft-rs persists it
    // lazily; a lower one after a crash is learned again from the leader).
    for _ in 0..4 {
        nodes[0].as_mut().unwrap().tick_all();
        round(&mut nodes, None);
    }
    let before = nodes[0].as_ref().unwrap().get(7).unwrap().high_watermark();
    assert_eq!(before, 4);
    st.crash(|_, _, _| false);
    let again: ReplicatedPartition<CrashStorage, u64> = block_on(ReplicatedPartition::open(
        st.clone(),
        Path::new("/solo/g7"),
        7,
        1,
        &[1],
        ReplicaConfig::default(),
        1,
    ))
    .unwrap();
    // The side index is rebuilt from the synced log; the high watermark is back once the
    // (single) voter is leader again and commits.
    assert_eq!(again.side().len(), 1);
    assert!(again.high_watermark() <= before);
    let mut nodes: Vec<Option<Node>> = vec![Some(Node::new(1)), None, None];
    nodes[0].as_mut().unwrap().insert(again);
    elect(&mut nodes, None);
    assert_eq!(
        nodes[0].as_ref().unwrap().get(7).unwrap().high_watermark(),
        before
    );
}

// Proves: one ready round of a node is one group commit: every group's fsync is in flight at
// the same time (not one group after the other), and `all` producers are answered only after
// the syncs complete.
#[test]
fn a_ready_round_syncs_every_group_together() {
    use crate::storage::ParkedKind;
    use futures_lite::future::poll_once;

    let st = CrashStorage::new();
    let mut node = Node::new(1);
    for g in [1, 2, 3] {
        let p = block_on(ReplicatedPartition::open(
            st.clone(),
            &PathBuf::from(format!("/gc/g{g}")),
            g,
            1,
            &[1],
            ReplicaConfig::default(),
            g,
        ))
        .unwrap();
        node.insert(p);
    }
    // Single-voter groups elect themselves.
    for _ in 0..40 {
        node.tick_all();
        block_on(node.process_ready());
    }
    assert!(node.groups().all(ReplicatedPartition::is_leader));
    st.hold_syncs(true);
    for g in [1, 2, 3] {
        node.propose(g, batch(None, 1), ReplAcks::All, Some(g));
    }
    let mut round = Box::pin(node.process_ready());
    assert!(block_on(poll_once(&mut round)).is_none());
    let parked = st.parked();
    let syncs = parked
        .iter()
        .filter(|(_, k)| *k == ParkedKind::Sync)
        .count();
    // Each group's log sync and the sync of its state file (whose commit the previous round
    // wrote without a sync) run together too.
    assert_eq!(
        syncs, 6,
        "every group's syncs in flight together: {parked:?}"
    );
    let mut done = None;
    for _ in 0..10 {
        st.complete_all_shuffled();
        if let Some(failed) = block_on(poll_once(&mut round)) {
            done = Some(failed);
            break;
        }
    }
    assert!(done.expect("round finished").is_empty());
    drop(round);
    st.hold_syncs(false);
    let mut answered: Vec<u64> = node
        .take_replies()
        .into_iter()
        .map(|(_, r)| r.token)
        .collect();
    for _ in 0..3 {
        block_on(node.process_ready());
        answered.extend(node.take_replies().into_iter().map(|(_, r)| r.token));
    }
    answered.sort_unstable();
    assert_eq!(answered, vec![1, 2, 3]);
}

// Proves: a replica's NOT_LEADER becomes the engine's retriable NotLeader (code 20) with the
// leader hint and epoch, and its text names no address.
#[test]
fn not_leader_maps_to_a_retriable_engine_error_with_the_hint() {
    let e = ReplError::NotLeader {
        leader: Some(2),
        epoch: 7,
    }
    .into_engine("t", 3);
    assert_eq!(e.code(), 20);
    assert!(e.is_retriable());
    assert!(matches!(
        e,
        crate::error::Error::NotLeader {
            leader: Some(2),
            epoch: 7,
            partition: 3,
            ..
        }
    ));
    assert_eq!(
        e.to_string(),
        "partition t/3: not the leader (leader epoch 7, leader Some(2))"
    );
}

/// Proposes `n` one-record batches at `all` on the leader and runs rounds until all are acked.
fn produce_all(nodes: &mut [Option<Node>], l: NodeId, n: u64, cut: Option<NodeId>) {
    let li = usize::try_from(l - 1).unwrap();
    for i in 0..n {
        nodes[li]
            .as_mut()
            .unwrap()
            .propose(7, batch(None, 1), ReplAcks::All, Some(i));
    }
    let mut acked = 0;
    for _ in 0..50 {
        acked += round(nodes, cut).iter().filter(|r| r.1.is_ok()).count();
        if acked as u64 == n {
            return;
        }
    }
    panic!("{acked} of {n} acked");
}

// Proves: compaction drops applied, durable entries from memory (raft-rs's entries and the side
// index) without moving offsets (new batches stay dense); a follower keeps its last
// `retain_entries`; a voter that lags beyond the bound is sent no snapshot (it stays behind: the
// documented gap) and nothing panics or diverges.
#[test]
fn compaction_frees_applied_entries_and_keeps_offsets_dense() {
    let stores: Vec<CrashStorage> = (0..3).map(|_| CrashStorage::new()).collect();
    let mut nodes: Vec<Option<Node>> = (1..=3u64)
        .map(|id| {
            let mut n = Node::new(id);
            n.insert(open(&stores[usize::try_from(id - 1).unwrap()], id, 7));
            Some(n)
        })
        .collect();
    let l = elect(&mut nodes, None);
    let li = usize::try_from(l - 1).unwrap();
    produce_all(&mut nodes, l, 20, None);
    let before = nodes[li]
        .as_ref()
        .unwrap()
        .get(7)
        .unwrap()
        .entries_in_memory();
    assert!(before >= 20, "{before}");
    // Nothing is durable in the state machine yet: nothing goes.
    let p = nodes[li].as_mut().unwrap().get_mut(7).unwrap();
    assert_eq!(p.compact(0, 4), 0);
    // Everything applied is durable: the leader (every voter matched) drops all but the
    // matched entry; a follower keeps its last 4.
    let hw = p.high_watermark();
    assert_eq!(hw, 20);
    assert!(p.compact(hw, 4) > 0);
    assert!(p.entries_in_memory() <= 2, "{}", p.entries_in_memory());
    assert_eq!(p.log_end_offset(), 20);
    let f = if l == 1 { 2 } else { 1 };
    // Followers learn the commit with the leader's next message.
    for _ in 0..3 {
        round(&mut nodes, None);
    }
    let fp = nodes[usize::try_from(f - 1).unwrap()]
        .as_mut()
        .unwrap()
        .get_mut(7)
        .unwrap();
    assert!(fp.compact(20, 4) > 0);
    assert!(fp.side().len() >= 4 && fp.side().len() < 20);
    // New batches continue at dense offsets on every replica.
    produce_all(&mut nodes, l, 3, None);
    for _ in 0..3 {
        round(&mut nodes, None);
    }
    for n in nodes.iter().flatten() {
        let p = n.get(7).unwrap();
        assert_eq!(p.high_watermark(), 23, "node {}", n.id());
        let c = p.read_committed(20, 10);
        assert_eq!(c.iter().map(|b| b.0).collect::<Vec<_>>(), vec![20, 21, 22]);
    }
    // A voter cut off falls behind by more than the bound: the leader compacts past it and
    // sends no snapshot; the others go on.
    let lag = (1..=3).find(|n| *n != l && *n != f).unwrap();
    produce_all(&mut nodes, l, 30, Some(lag));
    let p = nodes[li].as_mut().unwrap().get_mut(7).unwrap();
    let hw = p.high_watermark();
    assert_eq!(hw, 53);
    assert!(p.compact(hw, 2) > 0);
    for _ in 0..30 {
        for n in nodes.iter_mut().flatten() {
            n.tick_all();
        }
        round(&mut nodes, None);
    }
    let lagging = nodes[usize::try_from(lag - 1).unwrap()]
        .as_ref()
        .unwrap()
        .get(7)
        .unwrap();
    assert!(
        lagging.high_watermark() < 53,
        "caught up without a snapshot?"
    );
    produce_all(&mut nodes, l, 1, None);
    let leader = nodes[li].as_ref().unwrap().get(7).unwrap();
    assert_eq!(leader.high_watermark(), 54);
}

// Proves: a snapshot frame replaces everything before it (entries restart after its index,
// its end offset is read back), and a frame at or below it, or leaving a hole, ends the log.
#[test]
fn a_snapshot_frame_restarts_the_log_after_its_index() {
    use super::disk::SnapBase;
    let st = CrashStorage::new();
    let dir = Path::new("/r/snap");
    let base = SnapBase {
        index: 7,
        term: 2,
        end_offset: 40,
    };
    block_on(async {
        let (mut d, _) = RaftDisk::open(st.clone(), dir).await.unwrap();
        d.append(&[entry(1, 1, "a"), entry(2, 1, "b")])
            .await
            .unwrap();
        d.append_snapshot(base).await.unwrap();
        d.append(&[entry(8, 2, "h"), entry(9, 3, "i")])
            .await
            .unwrap();
        // Overwrites index 9 (a new leader's suffix).
        d.append(&[entry(9, 4, "I")]).await.unwrap();
        d.sync().await.unwrap();
        let (mut d, rec) = RaftDisk::open(st.clone(), dir).await.unwrap();
        assert_eq!(rec.base, Some(base));
        let got: Vec<(u64, u64)> = rec.entries.iter().map(|e| (e.index, e.term)).collect();
        assert_eq!(got, vec![(8, 2), (9, 4)]);
        // A frame at the base's index is not ours: the log ends before it.
        d.append(&[entry(7, 5, "bad"), entry(8, 5, "x")])
            .await
            .unwrap();
        d.sync().await.unwrap();
        let (_, rec) = RaftDisk::open(st.clone(), dir).await.unwrap();
        assert_eq!(rec.base, Some(base));
        assert_eq!(rec.entries.len(), 2);
    });
}

// Proves: rotating `raft-log` is crash-safe at every step: a process that dies after any
// number of its operations (then loses power, keeping any subset of unsynced blocks) reopens
// either the old file whole or the new one (snapshot frame + the retained entries), never a
// mix, and the retained entries are intact either way.
#[test]
fn raft_log_rotation_survives_a_crash_at_every_step() {
    use super::disk::SnapBase;
    let entries: Vec<DiskEntry> = (1..=40)
        .map(|i| entry(i, 1 + i / 10, &format!("entry {i} {}", "x".repeat(300))))
        .collect();
    let base = SnapBase {
        index: 30,
        term: 4,
        end_offset: 90,
    };
    let mut saw_old = false;
    let mut saw_new = false;
    for ops in 0..40u64 {
        for keep in [false, true] {
            let st = CrashStorage::new();
            let dir = PathBuf::from(format!("/r/rot{ops}"));
            let done = block_on(async {
                let (mut d, _) = RaftDisk::open(st.clone(), &dir).await.unwrap();
                d.append(&entries).await.unwrap();
                d.sync().await.unwrap();
                st.die_after_ops(Some(ops));
                let r = d.rewrite(base, &entries[30..]).await;
                st.die_after_ops(None);
                r.is_ok()
            });
            st.crash(|_, _, _| keep);
            let (_, rec) = block_on(RaftDisk::open(st.clone(), &dir)).unwrap();
            match rec.base {
                None => {
                    assert_eq!(rec.entries, entries, "ops {ops}: the old file is not whole");
                    assert!(!done, "ops {ops}: a finished rotation was lost");
                    saw_old = true;
                }
                Some(b) => {
                    assert_eq!(b, base, "ops {ops}");
                    assert_eq!(rec.entries, entries[30..].to_vec(), "ops {ops}");
                    saw_new = true;
                }
            }
            assert!(!st.exists(&dir.join("raft-log.new")), "ops {ops}");
        }
    }
    assert!(saw_old && saw_new);
}
