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
