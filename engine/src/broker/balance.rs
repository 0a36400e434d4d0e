//! Preferred-leader balance (issue 14; docs/replication.md, "Leadership balance").
//!
//! Every partition has a **preferred leader**: the first node of its placement, i.e. the node
//! at `(p + crc32c(topic)) % n` over the sorted node ids, or, for a replica set that does not
//! contain it, the first replica after it in that cyclic order. Since placement starts the
//! partitions of a topic on consecutive nodes, each node is preferred for `P / n` partitions
//! (± 1) of a topic.
//!
//! Each shard's host runs a [`Balancer`]: every `every_ticks` ticks it looks at the groups it
//! leads; a group whose preferred replica is another node, seen alive and caught up (heard from
//! within an election timeout, log within [`CAUGHT_UP_LAG`] entries; sampled every tick round)
//! within the last `every_ticks / 2` ticks at [`SETTLE_CHECKS`] checks in a row, has its
//! leadership transferred there (raft-rs `transfer_leader`), at most
//! [`TRANSFERS_PER_CHECK`] groups per shard per check. So after a node returns its partitions'
//! leadership moves back a few at a time, never all at once, and only once it has caught up.

use std::collections::HashMap;

use crate::replication::{GroupId, NodeId, ReplicaNode};
use crate::storage::Storage;

/// A preferred replica is caught up when its log is within this many entries of the leader's
/// (raft-rs brings it the rest before it hands over; proposals are refused meanwhile, so the
/// gap is kept small, but above what a busy leader has in flight).
pub(crate) const CAUGHT_UP_LAG: u64 = 128;
/// Checks in a row at which the preferred replica must be caught up before a transfer.
pub(crate) const SETTLE_CHECKS: u32 = 2;
/// Transfers a shard starts per check.
pub(crate) const TRANSFERS_PER_CHECK: usize = 2;

/// The replica set of partition `p` of `topic`, preferred leader first (then the others in
/// the cyclic order of `nodes`, the sorted node ids). Replicas not in `nodes` go last, as
/// given.
pub(crate) fn preferred_first(
    topic: &str,
    p: u32,
    replicas: &[NodeId],
    nodes: &[NodeId],
) -> Vec<NodeId> {
    if nodes.is_empty() {
        return replicas.to_vec();
    }
    let n = nodes.len();
    let start = (p as usize + crc32c::crc32c(topic.as_bytes()) as usize) % n;
    let mut out: Vec<NodeId> = (0..n)
        .map(|i| nodes[(start + i) % n])
        .filter(|id| replicas.contains(id))
        .collect();
    out.extend(replicas.iter().filter(|id| !nodes.contains(id)));
    out
}

/// A group this shard leads whose preferred leader is another node.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    to: NodeId,
    /// The last tick at which `to` was seen alive and caught up.
    last_seen: Option<u64>,
    /// Checks in a row at which it had been seen so recently.
    streak: u32,
}

/// One shard's balance state (see the module doc).
///
/// Liveness is sampled at every tick round, not only at the check: raft-rs clears a
/// follower's `recent_active` at every quorum check of the leader (each election timeout)
/// until its next heartbeat answer, so one sample at a fixed phase could miss a live follower
/// forever.
#[derive(Debug)]
pub(crate) struct Balancer {
    every_ticks: u32,
    ticks: u32,
    /// Ticks since the start.
    now: u64,
    candidates: HashMap<GroupId, Candidate>,
    /// Transfers started (metrics, tests).
    pub(crate) started: u64,
}

impl Balancer {
    pub(crate) fn new(every_ticks: u32) -> Self {
        Balancer {
            every_ticks: every_ticks.max(2),
            ticks: 0,
            now: 0,
            candidates: HashMap::new(),
            started: 0,
        }
    }

    /// Counts `ticks` and samples the candidates' preferred replicas; once every
    /// `every_ticks`, checks the groups `node` leads and starts the transfers due: those whose
    /// preferred replica was seen alive and caught up within the last `every_ticks / 2` ticks
    /// at [`SETTLE_CHECKS`] checks in a row. `preferred(group)`: the group's preferred leader
    /// (`None`: not balanced, e.g. the controller). Returns the transfers started, as
    /// (group, to).
    pub(crate) fn on_ticks<S: Storage, T>(
        &mut self,
        ticks: u32,
        node: &mut ReplicaNode<S, T>,
        preferred: impl Fn(GroupId) -> Option<NodeId>,
    ) -> Vec<(GroupId, NodeId)> {
        self.now += u64::from(ticks);
        for (g, c) in &mut self.candidates {
            if node
                .get(*g)
                .is_some_and(|r| r.peer_caught_up(c.to, CAUGHT_UP_LAG))
            {
                c.last_seen = Some(self.now);
            }
        }
        self.ticks += ticks;
        if self.ticks < self.every_ticks {
            return Vec::new();
        }
        self.ticks = 0;
        let me = node.id();
        let fresh = u64::from(self.every_ticks / 2);
        let mut due = Vec::new();
        let mut next = HashMap::new();
        for r in node.groups() {
            let g = r.group();
            let Some(to) = preferred(g).filter(|to| *to != me) else {
                continue;
            };
            if !r.is_leader() || r.transferring() {
                continue;
            }
            let mut c = match self.candidates.get(&g) {
                Some(c) if c.to == to => *c,
                _ => Candidate {
                    to,
                    last_seen: None,
                    streak: 0,
                },
            };
            let seen = c.last_seen.is_some_and(|t| t + fresh >= self.now);
            c.streak = if seen { c.streak + 1 } else { 0 };
            if c.streak >= SETTLE_CHECKS && due.len() < TRANSFERS_PER_CHECK {
                due.push((g, to));
            } else {
                next.insert(g, c);
            }
        }
        // Groups no longer led here (or balanced) drop out.
        self.candidates = next;
        due.retain(|(g, to)| node.transfer_leader(*g, *to));
        self.started += due.len() as u64;
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::cluster::placement;

    #[test]
    fn the_preferred_leader_is_the_placements_first_node_and_spreads_evenly() {
        for n in 1..=7u64 {
            let nodes: Vec<NodeId> = (1..=n).map(|i| i * 3).collect();
            for r in 1..=n as u32 {
                for topic in ["a", "orders", "t-17", "zz"] {
                    let parts = 4 * n as u32;
                    let sets = placement(topic, parts, r, &nodes);
                    let mut count: HashMap<NodeId, u32> = HashMap::new();
                    let h = crc32c::crc32c(topic.as_bytes()) as usize;
                    for (p, set) in sets.iter().enumerate() {
                        let order = preferred_first(topic, p as u32, set, &nodes);
                        let mut sorted = order.clone();
                        sorted.sort_unstable();
                        assert_eq!(&sorted, set, "same replicas");
                        assert_eq!(order[0], nodes[(p + h) % n as usize], "first of placement");
                        *count.entry(order[0]).or_default() += 1;
                    }
                    assert_eq!(count.len(), n as usize, "every node leads some");
                    assert!(
                        count.values().all(|c| *c == 4),
                        "{topic} n={n} r={r}: {count:?}"
                    );
                }
            }
        }
    }

    use std::path::PathBuf;

    use futures_lite::future::block_on;

    use crate::replication::{ReplicaConfig, ReplicatedPartition};
    use crate::storage::CrashStorage;

    type Node = ReplicaNode<CrashStorage, u64>;
    const GROUPS: std::ops::Range<GroupId> = 10..16;

    /// Groups 10..16: preferred leaders 2, 3, 1, 2, 3, 1.
    fn preferred_of(g: GroupId) -> Option<NodeId> {
        Some(g % 3 + 1)
    }

    fn nodes() -> Vec<Node> {
        (1..=3u64)
            .map(|id| {
                let st = CrashStorage::new();
                let mut n = ReplicaNode::new(id);
                for g in GROUPS {
                    let dir = PathBuf::from(format!("/n{id}/g{g}"));
                    let r = block_on(ReplicatedPartition::open(
                        st.clone(),
                        &dir,
                        g,
                        id,
                        &[1, 2, 3],
                        ReplicaConfig::default(),
                        7,
                    ))
                    .unwrap();
                    n.insert(r);
                }
                n
            })
            .collect()
    }

    /// One tick on every node, its ready rounds and deliveries (none to or from `cut`), then
    /// each node's balancer; returns the transfers started, per node.
    fn step(
        nodes: &mut [Node],
        balancers: &mut [Balancer],
        cut: Option<NodeId>,
    ) -> Vec<(NodeId, GroupId, NodeId)> {
        for n in nodes.iter_mut() {
            n.tick_all();
        }
        for _ in 0..2 {
            let mut frames = Vec::new();
            for n in nodes.iter_mut() {
                assert!(block_on(n.process_ready()).is_empty());
                n.take_replies();
                for (to, msgs) in n.drain_outgoing() {
                    frames.push((n.id(), to, msgs));
                }
            }
            for (from, to, msgs) in frames {
                if cut != Some(from) && cut != Some(to) {
                    nodes[(to - 1) as usize].on_peer_messages(from, msgs);
                }
            }
        }
        let mut started = Vec::new();
        for (n, b) in nodes.iter_mut().zip(balancers.iter_mut()) {
            let s = b.on_ticks(1, n, preferred_of);
            assert!(s.len() <= TRANSFERS_PER_CHECK, "rate bound: {s:?}");
            started.extend(s.into_iter().map(|(g, to)| (n.id(), g, to)));
        }
        started
    }

    /// Whether every group is led by its preferred node, as every node (but `cut`) sees it.
    fn balanced(nodes: &[Node], cut: Option<NodeId>) -> bool {
        GROUPS.into_iter().all(|g| {
            let want = preferred_of(g);
            nodes
                .iter()
                .filter(|n| Some(n.id()) != cut)
                .all(|n| n.get(g).and_then(|r| r.leader()) == want)
        })
    }

    // Proves: whoever won the elections, leadership reaches every group's preferred node, at
    // most TRANSFERS_PER_CHECK transfers per node per check; a node cut off gets no
    // transfer once it has been unreachable for two checks (its groups fail over elsewhere);
    // once it is back, it leads its preferred groups again.
    #[test]
    fn leadership_moves_to_live_preferred_replicas_a_few_at_a_time() {
        let mut nodes = nodes();
        let mut balancers: Vec<Balancer> = (0..3).map(|_| Balancer::new(20)).collect();
        let mut steps = 0;
        while !balanced(&nodes, None) {
            step(&mut nodes, &mut balancers, None);
            steps += 1;
            assert!(steps < 3_000, "balanced within 3,000 ticks");
        }
        // Node 1 cut off: its groups (12, 15) fail over; no transfer to it after 40 ticks.
        for i in 0..600 {
            let started = step(&mut nodes, &mut balancers, Some(1));
            if i >= 40 {
                assert!(
                    started.iter().all(|(_, _, to)| *to != 1),
                    "a transfer to the unreachable node at tick {i}: {started:?}"
                );
            }
        }
        for g in [12, 15] {
            let l = nodes[1].get(g).and_then(|r| r.leader());
            assert!(matches!(l, Some(2 | 3)), "group {g} failed over: {l:?}");
        }
        // Back: within a bounded time every group is led by its preferred node again.
        let mut steps = 0;
        let mut to_1 = 0;
        while !balanced(&nodes, None) {
            let started = step(&mut nodes, &mut balancers, None);
            to_1 += started.iter().filter(|(_, _, to)| *to == 1).count();
            steps += 1;
            assert!(steps < 3_000, "rebalanced within 3,000 ticks");
        }
        assert!(
            to_1 >= 2,
            "node 1 got its groups back by transfers ({to_1})"
        );
    }

    #[test]
    fn a_replica_set_without_the_start_node_prefers_the_next_one_in_order() {
        let nodes = [1, 2, 3, 4];
        let h = crc32c::crc32c(b"x") as usize;
        // p such that the start is node 1 (index 0).
        let p = ((4 - h % 4) % 4) as u32;
        assert_eq!(preferred_first("x", p, &[2, 4], &nodes), vec![2, 4]);
        assert_eq!(preferred_first("x", p, &[4, 3], &nodes), vec![3, 4]);
        // A replica unknown to the list goes last.
        assert_eq!(preferred_first("x", p, &[9, 4], &nodes), vec![4, 9]);
    }
}
