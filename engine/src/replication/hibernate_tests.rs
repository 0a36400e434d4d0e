//! Hibernation of idle groups (docs/replication.md, "Idle groups hibernate"): three nodes
//! with many groups over an in-process network that can cut a node off or restart it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures_lite::future::{block_on, poll_once};

use super::disk::{DiskState, RaftDisk};
use super::{
    GroupId, LIVENESS_GROUP, NodeId, ReplAcks, ReplError, ReplicaConfig, ReplicaNode,
    ReplicatedPartition,
};
use crate::batch::BatchBuilder;
use crate::storage::{CrashStorage, ParkedKind};

type Node = ReplicaNode<CrashStorage, u64>;

const GROUPS: u64 = 12;
/// Enough groups that their random election timeouts cover the whole range.
const MANY_GROUPS: u64 = 60;

fn batch() -> Bytes {
    let mut b = BatchBuilder::new();
    b.push_value("v");
    b.build().unwrap()
}

struct Cluster {
    groups: u64,
    stores: Vec<CrashStorage>,
    nodes: Vec<Node>,
    /// A node cut off from the others (both directions).
    cut: Option<NodeId>,
    /// Raft messages (not liveness) delivered since the last reset.
    raft_msgs: u64,
    liveness_msgs: u64,
}

fn open_node(st: &CrashStorage, id: NodeId, incarnation: u64, groups: u64) -> Node {
    let mut n = Node::new(id);
    n.set_incarnation(incarnation);
    for g in 1..=groups {
        let p = block_on(ReplicatedPartition::open(
            st.clone(),
            &PathBuf::from(format!("/n{id}/g{g}")),
            g,
            id,
            &[1, 2, 3],
            ReplicaConfig::default(),
            g * 31 + id,
        ))
        .unwrap();
        n.insert(p);
    }
    n
}

impl Cluster {
    fn new(groups: u64) -> Self {
        let stores: Vec<CrashStorage> = (0..3).map(|_| CrashStorage::new()).collect();
        let nodes = (1..=3u64)
            .map(|id| open_node(&stores[idx(id)], id, 1, groups))
            .collect();
        Cluster {
            groups,
            stores,
            nodes,
            cut: None,
            raft_msgs: 0,
            liveness_msgs: 0,
        }
    }

    /// One round: every node's ready handled, every message delivered (none to or from the
    /// cut node). Returns the producers' answers.
    fn round(&mut self) -> Vec<(u64, Result<crate::api::ProduceAck, ReplError>)> {
        let mut replies = Vec::new();
        let mut frames = Vec::new();
        for n in &mut self.nodes {
            assert!(block_on(n.process_ready()).is_empty());
            replies.extend(
                n.take_replies()
                    .into_iter()
                    .map(|(_, r)| (r.token, r.result)),
            );
            for (to, msgs) in n.drain_outgoing() {
                frames.push((n.id(), to, msgs));
            }
        }
        for (from, to, msgs) in frames {
            if self.cut == Some(from) || self.cut == Some(to) {
                continue;
            }
            for (g, _) in &msgs {
                if *g == LIVENESS_GROUP {
                    self.liveness_msgs += 1;
                } else {
                    self.raft_msgs += 1;
                }
            }
            self.nodes[idx(to)].on_peer_messages(from, msgs);
        }
        replies
    }

    /// One tick on every node, then rounds until the messages settle.
    fn tick(&mut self) -> Vec<(u64, Result<crate::api::ProduceAck, ReplError>)> {
        for n in &mut self.nodes {
            n.tick_all();
        }
        let mut replies = Vec::new();
        for _ in 0..4 {
            replies.extend(self.round());
        }
        replies
    }

    /// The leader of `g` among the nodes not cut off.
    fn leader(&self, g: GroupId) -> Option<NodeId> {
        self.nodes
            .iter()
            .filter(|n| Some(n.id()) != self.cut)
            .find(|n| n.get(g).unwrap().is_leader())
            .map(Node::id)
    }

    fn all_led(&self) -> bool {
        (1..=self.groups).all(|g| self.leader(g).is_some())
    }

    fn asleep(&self) -> usize {
        self.nodes.iter().map(Node::asleep_count).sum()
    }

    /// Elects every group and lets them fall asleep; returns the ticks that took.
    fn settle(&mut self) -> u64 {
        for t in 1..=300 {
            self.tick();
            if self.all_led() && self.asleep() == 3 * self.groups as usize {
                return t;
            }
        }
        panic!(
            "groups did not hibernate: {} of {} asleep",
            self.asleep(),
            3 * self.groups
        );
    }
}

fn idx(id: NodeId) -> usize {
    usize::try_from(id - 1).unwrap()
}

// Proves: once every group has a leader and nothing happens, every replica on every node
// hibernates within a few ticks; idle tick rounds then carry liveness messages only (one per
// peer node per heartbeat, not one per group); a produce wakes its group, is acknowledged at
// `all` on every replica, and the group goes back to sleep.
#[test]
fn idle_groups_hibernate_and_a_produce_wakes_one() {
    let mut c = Cluster::new(GROUPS);
    c.settle();
    c.raft_msgs = 0;
    c.liveness_msgs = 0;
    for _ in 0..20 {
        c.tick();
    }
    assert_eq!(c.raft_msgs, 0, "no per-group messages while idle");
    // 3 nodes x 2 peers, every 2 ticks, over 20 ticks.
    assert_eq!(c.liveness_msgs, 60);
    assert_eq!(c.asleep(), 3 * GROUPS as usize);

    let g = 5;
    let l = c.leader(g).unwrap();
    c.nodes[idx(l)].propose(g, batch(), ReplAcks::All, Some(77));
    assert!(c.nodes[idx(l)].is_awake(g));
    let mut acks = Vec::new();
    for _ in 0..5 {
        acks.extend(c.round());
    }
    assert_eq!(acks.len(), 1, "{acks:?}");
    assert_eq!(acks[0].0, 77);
    assert_eq!(acks[0].1.as_ref().unwrap().base_offset, 0);
    // Every replica has it once the followers hear the commit.
    for _ in 0..10 {
        c.tick();
    }
    for n in &c.nodes {
        assert_eq!(n.get(g).unwrap().high_watermark(), 1, "node {}", n.id());
    }
    // Back to sleep, the other groups never woke.
    for _ in 0..10 {
        c.tick();
    }
    assert_eq!(c.asleep(), 3 * GROUPS as usize);
    assert_eq!(c.leader(g), Some(l));
}

/// Cuts off the node leading group 1 once every group is settled (asleep with hibernation,
/// or after 30 ticks without) and returns, for every group it led, the ticks until another
/// node leads it, sorted; then the groups it led and the cluster, still cut.
fn failover_ticks(hibernate: bool) -> (Vec<u64>, Vec<GroupId>, Cluster) {
    let mut c = Cluster::new(MANY_GROUPS);
    for n in &mut c.nodes {
        n.set_hibernation(hibernate);
    }
    if hibernate {
        c.settle();
    } else {
        for _ in 0..300 {
            c.tick();
            if c.all_led() {
                break;
            }
        }
        for _ in 0..30 {
            c.tick();
        }
    }
    let victim = c.leader(1).unwrap();
    let led: Vec<GroupId> = (1..=MANY_GROUPS)
        .filter(|g| c.leader(*g) == Some(victim))
        .collect();
    assert!(!led.is_empty());
    c.cut = Some(victim);
    let mut took = vec![0; led.len()];
    for t in 1..=100 {
        c.tick();
        for (i, g) in led.iter().enumerate() {
            if took[i] == 0 && c.leader(*g).is_some() {
                took[i] = t;
            }
        }
        if took.iter().all(|t| *t > 0) {
            took.sort_unstable();
            return (took, led, c);
        }
    }
    panic!("groups without a new leader after 100 ticks: {took:?}");
}

// Proves: when the node leading hibernating groups dies (cut off, both directions), the
// others notice its silence at the node level, wake those groups and elect new leaders as
// fast as without hibernation (same harness, same seeds: the median and the slowest group
// within one tick of it; nodes tick in lockstep here, so some elections split their votes
// in both runs); and the cut-off node's own leaders, woken by the silence of their
// followers, step down (check quorum) so that a produce there is refused.
#[test]
fn a_dead_leader_node_wakes_its_groups_and_they_fail_over_in_time() {
    let (off, _, _) = failover_ticks(false);
    let (on, led, mut c) = failover_ticks(true);
    let p50 = |v: &[u64]| v[v.len() / 2];
    let max = |v: &[u64]| v[v.len() - 1];
    eprintln!("failover ticks, hibernation off: {off:?}; on: {on:?}");
    assert!(p50(&on) <= p50(&off) + 1, "median: on {on:?} off {off:?}");
    assert!(max(&on) <= max(&off) + 1, "slowest: on {on:?} off {off:?}");
    assert!(p50(&on) <= 20, "median above 2 s: {on:?}");
    assert!(c.nodes.iter().map(|n| n.liveness_wakes).sum::<u64>() > 0);
    let victim = c.cut.unwrap();
    // The cut-off node's leaders lose their quorum within two election timeouts.
    for _ in 0..40 {
        c.tick();
    }
    let v = &mut c.nodes[idx(victim)];
    for g in &led {
        assert!(!v.get(*g).unwrap().is_leader(), "group {g} kept its leader");
    }
    v.propose(led[0], batch(), ReplAcks::All, Some(1));
    let r = v.take_replies();
    assert!(matches!(r[0].1.result, Err(ReplError::NotLeader { .. })));
    // Healed: the node rejoins as a follower and everything hibernates again.
    c.cut = None;
    c.settle();
}

// Proves: a leader node that restarts faster than the silence limit is still noticed (its
// liveness messages carry a new incarnation): its former groups wake and elect a leader within
// 20 ticks of the restart.
#[test]
fn a_quickly_restarted_leader_node_is_noticed_by_its_incarnation() {
    let mut c = Cluster::new(GROUPS);
    c.settle();
    let victim = c.leader(1).unwrap();
    // Restart: a new process (new incarnation) over the same disks.
    let st = c.stores[idx(victim)].clone();
    st.crash(|_, _, _| true);
    c.nodes[idx(victim)] = open_node(&st, victim, 2, GROUPS);
    let mut ticks = 0;
    while !c.all_led() {
        ticks += 1;
        assert!(ticks <= 20, "no leader for every group within 20 ticks");
        c.tick();
    }
}

// Proves: a state write that only moves the commit index is not synced on its own (no fsync
// is issued), goes to the slot that does not hold the last synced state, and a power loss
// at any point (any subset of unsynced blocks kept) recovers the synced term and vote; a
// term or vote change is always synced by the next `sync`.
#[test]
fn commit_only_state_writes_are_lazy_and_never_lose_the_vote() {
    let dir = Path::new("/s/g1");
    for keep in [false, true] {
        let st = CrashStorage::new();
        block_on(async {
            let (mut d, _) = RaftDisk::open(st.clone(), dir).await.unwrap();
            let voted = DiskState {
                term: 4,
                vote: 2,
                commit: 1,
            };
            d.save_state(voted).await.unwrap();
            d.sync().await.unwrap();
            for commit in 2..6 {
                d.save_state(DiskState { commit, ..voted }).await.unwrap();
            }
            st.hold_syncs(true);
            let mut sync = Box::pin(d.sync());
            assert!(
                block_on(poll_once(&mut sync)).is_some(),
                "a commit-only write waits for no fsync"
            );
            drop(sync);
            assert!(
                !st.parked().iter().any(|(_, k)| *k == ParkedKind::Sync),
                "no fsync issued"
            );
            st.hold_syncs(false);
        });
        st.crash(|_, _, _| keep);
        let (mut d, rec) = block_on(RaftDisk::open(st.clone(), dir)).unwrap();
        assert_eq!((rec.state.term, rec.state.vote), (4, 2), "keep {keep}");
        assert!(rec.state.commit == 1 || rec.state.commit == 5, "{rec:?}");
        // A vote change is synced: it survives a power loss that keeps nothing unsynced.
        block_on(async {
            d.save_state(DiskState {
                term: 5,
                vote: 3,
                commit: 5,
            })
            .await
            .unwrap();
            d.sync().await.unwrap();
        });
        st.crash(|_, _, _| false);
        let (_, rec) = block_on(RaftDisk::open(st.clone(), dir)).unwrap();
        assert_eq!((rec.state.term, rec.state.vote), (5, 3));
    }
}

// Proves: with hibernation off every group keeps ticking and sending its heartbeats (the
// behaviour the idle measurement compares against), and no liveness message is sent.
#[test]
fn hibernation_off_keeps_per_group_heartbeats() {
    let mut c = Cluster::new(GROUPS);
    for n in &mut c.nodes {
        n.set_hibernation(false);
    }
    for _ in 0..200 {
        c.tick();
        if c.all_led() {
            break;
        }
    }
    assert!(c.all_led());
    for _ in 0..10 {
        c.tick();
    }
    c.raft_msgs = 0;
    c.liveness_msgs = 0;
    for _ in 0..20 {
        c.tick();
    }
    assert_eq!(c.asleep(), 0);
    assert_eq!(c.liveness_msgs, 0);
    // Every group's leader heartbeats both followers every 2 ticks, and they answer.
    assert_eq!(c.raft_msgs, GROUPS * 2 * 2 * 10);
}
