//! Preferred-leader balance (issue 14; docs/replication.md, "Leadership balance").
//!
//! Every partition has a **preferred leader**: the first node of its placement, i.e. the node
//! at `(p + crc32c(topic)) % n` over the sorted node ids, or, for a replica set that does not
//! contain it, the first replica after it in that cyclic order. Since placement starts the
//! partitions of a topic on consecutive nodes, each node is preferred for `P / n` partitions
//! (± 1) of a topic.
//!
//! Each shard's host runs a [`Balancer`]: every `every_ticks` ticks it looks at the groups it
//! leads; a group whose preferred replica is another node, alive and caught up (heard from
//! within an election timeout, log within [`CAUGHT_UP_LAG`] entries) at [`SETTLE_CHECKS`]
//! checks in a row, has its leadership transferred there (raft-rs `transfer_leader`), at most
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

/// One shard's balance state (see the module doc).
#[derive(Debug)]
pub(crate) struct Balancer {
    every_ticks: u32,
    ticks: u32,
    /// Group -> checks in a row at which its preferred replica was caught up.
    streak: HashMap<GroupId, u32>,
    /// Transfers started (metrics, tests).
    pub(crate) started: u64,
}

impl Balancer {
    pub(crate) fn new(every_ticks: u32) -> Self {
        Balancer {
            every_ticks: every_ticks.max(1),
            ticks: 0,
            streak: HashMap::new(),
            started: 0,
        }
    }

    /// Counts `ticks`; once every `every_ticks`, checks the groups `node` leads and starts
    /// the transfers due. `preferred(group)`: the group's preferred leader (`None`: not
    /// balanced, e.g. the controller). Returns the transfers started, as (group, to).
    pub(crate) fn on_ticks<S: Storage, T>(
        &mut self,
        ticks: u32,
        node: &mut ReplicaNode<S, T>,
        preferred: impl Fn(GroupId) -> Option<NodeId>,
    ) -> Vec<(GroupId, NodeId)> {
        self.ticks += ticks;
        if self.ticks < self.every_ticks {
            return Vec::new();
        }
        self.ticks = 0;
        let me = node.id();
        let mut due = Vec::new();
        let mut streak = HashMap::new();
        for r in node.groups() {
            let g = r.group();
            let Some(to) = preferred(g).filter(|to| *to != me) else {
                continue;
            };
            if !r.is_leader() || r.transferring() || !r.peer_caught_up(to, CAUGHT_UP_LAG) {
                continue;
            }
            let n = self.streak.get(&g).copied().unwrap_or(0) + 1;
            if n >= SETTLE_CHECKS && due.len() < TRANSFERS_PER_CHECK {
                due.push((g, to));
            } else {
                streak.insert(g, n);
            }
        }
        // Groups not caught up (or no longer led here) start again from zero.
        self.streak = streak;
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
