//! Work queues on a cluster (issue 14 item 5; docs/replication.md, "Work queues on a
//! cluster").
//!
//! - A queue partition of a replicated topic has **two Raft groups with the same replicas**:
//!   the partition's own (its messages) and an *ack group* (id [`ack_group`]: the partition's
//!   group with [`ACK_GROUP_BIT`] set; no metadata change) whose state machine is the queue's
//!   ordinary ack log (`<partition dir>/queue-acks/`, raft files in its `raft/`). Ack-log
//!   records are proposed through the ack group (acks, dead letters and purges with `all`,
//!   answered once committed; deliveries and nacks at `leader`) and applied to the ack log of
//!   **every** replica in commit order by the replica host, like any replicated partition.
//! - The **queue leader** is the ack group's leader, once it has applied everything committed
//!   (its first entry of the term included). It rebuilds [`QueueState`] from its local ack log
//!   (the replay a restart does) and serves; every other replica answers receive, ack, nack,
//!   change-visibility, peek, stats and purge with `NotLeader` naming the leader it knows. The
//!   ack group follows the partition's leader (the host transfers its leadership to the data
//!   group's leader), so clients find the queue where they find the partition.
//! - Leases are soft state: a new leader redelivers at once every message whose `Delivered`
//!   record committed and no `Acked`/`Dead` record did (at least once), and never one whose
//!   ack was answered (its record committed before the answer).

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::state::QueueState;
use super::{QueueCtx, not_a_queue, queues, settings};
use crate::api::PartitionKey;
use crate::broker::balance::CAUGHT_UP_LAG;
use crate::broker::groups::replicated::ReplicaSeen;
use crate::error::{Error, Result};
use crate::replication::{GroupId, NodeId, ReplicaNode};
use crate::rt;
use crate::shard::LocalShard;
use crate::storage::Storage;

/// Set in the group id of a queue partition's ack group (partition groups are numbered from
/// 1 by the controller and never come near it; `LIVENESS_GROUP` is `u64::MAX`, the controller
/// 0).
pub const ACK_GROUP_BIT: GroupId = 1 << 62;

/// The ack group of the queue partition whose Raft group is `data_group`.
pub fn ack_group(data_group: GroupId) -> GroupId {
    data_group | ACK_GROUP_BIT
}

/// The Raft group of the partition whose ack group is `g`, if `g` is an ack group.
pub fn data_group_of(g: GroupId) -> Option<GroupId> {
    (g & ACK_GROUP_BIT != 0 && g != crate::replication::LIVENESS_GROUP)
        .then_some(g & !ACK_GROUP_BIT)
}

/// The queue partition whose ack log is `ack_key`, if it is one.
pub(crate) fn data_key_of(ack_key: &PartitionKey) -> Option<PartitionKey> {
    ack_key
        .0
        .strip_prefix(super::ACK_KEY_PREFIX)
        .map(|t| (t.into(), ack_key.1))
}

/// How long a rebuild waits for the ack-log writer to finish its write in flight, and how
/// often it looks.
const WRITER_IDLE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
const WRITER_IDLE_POLL: std::time::Duration = std::time::Duration::from_millis(5);
/// Wait before a failed rebuild is tried again (while the node still leads).
const REBUILD_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// Test sabotage: a new queue leader starts from an empty state instead of its replicated
/// ack log (engine/tests/cluster_queues.rs shows acked messages then come back).
static SKIP_REBUILD: AtomicBool = AtomicBool::new(false);

/// Turns the sabotage on or off, for every engine of the process (tests only).
#[doc(hidden)]
pub fn sabotage_skip_rebuild(on: bool) {
    SKIP_REBUILD.store(on, Ordering::Relaxed);
}

/// Test sabotage: durable ack-log records (acks) are answered after the leader's own fsync
/// (`durable`) instead of once committed (`all`); a leader cut off from the majority then
/// answers acks that never commit (engine/tests/cluster_queues.rs shows it).
static ACK_AT_DURABLE: AtomicBool = AtomicBool::new(false);

/// Turns the sabotage on or off, for every engine of the process (tests only).
#[doc(hidden)]
pub fn sabotage_ack_at_durable(on: bool) {
    ACK_AT_DURABLE.store(on, Ordering::Relaxed);
}

/// The level durable ack-log records are written at: `all` (on one node that is `durable`).
pub(super) fn durable_acks() -> crate::api::Acks {
    if ACK_AT_DURABLE.load(Ordering::Relaxed) {
        crate::api::Acks::Durable
    } else {
        crate::api::Acks::All
    }
}

/// What this node knows of a replicated queue partition's leadership (on its shard).
#[derive(Debug, Default)]
pub(super) struct Leadership {
    /// 0: unknown.
    leader: Cell<NodeId>,
    term: Cell<u64>,
    /// This node leads the ack group and has applied everything committed.
    ready: Cell<bool>,
    /// The term this node last became leader in, and its last Raft index then.
    lead_term: Cell<u64>,
    lead_from: Cell<u64>,
    /// The term whose state this node serves (rebuilt from the ack log in that term).
    serving: Cell<Option<u64>>,
    rebuilding: Cell<bool>,
    me: Cell<NodeId>,
}

impl Leadership {
    /// Updates the view from one host round; returns whether the node must (re)build its
    /// state to serve.
    fn observe(&self, me: NodeId, seen: ReplicaSeen) -> bool {
        self.me.set(me);
        self.leader.set(seen.leader.unwrap_or(0));
        self.term.set(seen.term);
        if seen.is_leader {
            if self.lead_term.get() != seen.term {
                self.lead_term.set(seen.term);
                self.lead_from.set(seen.last_index);
            }
            self.ready
                .set(seen.applied_index >= self.lead_from.get() && seen.log_caught_up);
        } else {
            self.ready.set(false);
        }
        if !self.ready.get() {
            self.serving.set(None);
            return false;
        }
        self.serving.get() != Some(seen.term) && !self.rebuilding.get()
    }

    /// `Ok` when this node serves the queue now, else `NotLeader` for `key`.
    pub(super) fn check(&self, key: &PartitionKey) -> Result<()> {
        let term = self.term.get();
        if self.ready.get() && self.serving.get() == Some(term) {
            return Ok(());
        }
        let leader = self.leader.get();
        Err(Error::NotLeader {
            topic: key.0.to_string(),
            partition: key.1,
            leader: (leader != 0 && leader != self.me.get()).then_some(leader),
            epoch: term,
        })
    }

    pub(super) fn is_serving(&self) -> bool {
        self.ready.get() && self.serving.get() == Some(self.term.get())
    }
}

/// `Ok` when the queue is served here (always on a single node).
pub(super) fn check(q: &QueueCtx) -> Result<()> {
    match &q.repl {
        Some(l) => l.check(&q.key),
        None => Ok(()),
    }
}

/// Whether this node may change the queue's state now (always on a single node).
pub(super) fn serving(q: &QueueCtx) -> bool {
    q.repl.as_ref().is_none_or(Leadership::is_serving)
}

/// Hook of the replica host (broker/cluster.rs), on the shard of the ack group's replica,
/// after each round that touched it: the ack group of the queue partition whose ack log is
/// `ack_key` was seen as `seen`.
pub(crate) fn observe(shard: &LocalShard, me: NodeId, ack_key: &PartitionKey, seen: ReplicaSeen) {
    let Some(key) = data_key_of(ack_key) else {
        return;
    };
    let Some(q) = queues(shard).ok().and_then(|qs| qs.get(&key).ok()) else {
        return;
    };
    let Some(l) = &q.repl else { return };
    let was_serving = l.is_serving();
    if l.observe(me, seen) {
        l.rebuilding.set(true);
        rt::spawn_local(rebuild(shard.clone(), q.clone(), seen.term));
    } else if was_serving && !l.is_serving() {
        tracing::info!(topic = %key.0, partition = key.1, leader = l.leader.get(), "queue leadership lost");
        q.changed.notify_all();
    }
}

/// The node became the queue's leader in `term` (or its ack-log write failed while it
/// leads): the state is rebuilt from the ack log, as a restart does, then served.
///
/// Records queued and not yet written are dropped first (they never commit in this term:
/// whoever waits hears `NotLeader`, the client retries) and the rebuild waits until the
/// writer is idle, so no ack can commit after the replay without being in it.
async fn rebuild(shard: LocalShard, q: Rc<QueueCtx>, term: u64) {
    let Some(l) = &q.repl else { return };
    for w in q.commit.borrow_mut().discard() {
        let _ = w.send(Err(l
            .check(&q.key)
            .err()
            .unwrap_or_else(|| not_a_queue(&q.key))));
    }
    let idle_by = std::time::Instant::now() + WRITER_IDLE_WAIT;
    while q.commit.borrow().is_writing() && std::time::Instant::now() < idle_by {
        rt::sleep(WRITER_IDLE_POLL).await;
    }
    let r = if q.commit.borrow().is_writing() {
        Err(Error::Runtime("the ack-log writer is still busy".into()))
    } else {
        rebuild_inner(&shard, &q).await
    };
    l.rebuilding.set(false);
    match r {
        Ok((st, records)) => {
            if !l.ready.get() {
                return;
            }
            if l.term.get() != term {
                // Leadership moved on and came back meanwhile: rebuild for the new term.
                l.rebuilding.set(true);
                rt::spawn_local(rebuild(shard.clone(), q.clone(), l.term.get()));
                return;
            }
            *q.state.borrow_mut() = st;
            l.serving.set(Some(term));
            tracing::info!(topic = %q.key.0, partition = q.key.1, term, records, "queue leader: state rebuilt from the replicated ack log");
            q.changed.notify_all();
        }
        Err(e) => {
            tracing::warn!(topic = %q.key.0, partition = q.key.1, error = %e, "queue state not rebuilt; retrying");
            rt::sleep(REBUILD_RETRY).await;
            if l.ready.get() && !l.rebuilding.get() && !q.closed.get() {
                l.rebuilding.set(true);
                rt::spawn_local(rebuild(shard.clone(), q.clone(), l.term.get()));
            }
        }
    }
}

/// A durable ack-log write of a replicated queue failed (lost leadership, a leadership
/// transfer, a full disk): the in-memory state may hold decisions that never committed (an
/// ack whose retry would otherwise answer `MESSAGE_DONE`), so the node stops serving and, if
/// it still leads, rebuilds from the committed ack log.
pub(super) fn write_failed(shard: &LocalShard, q: &Rc<QueueCtx>) {
    let Some(l) = &q.repl else { return };
    l.serving.set(None);
    q.changed.notify_all();
    if l.ready.get() && !l.rebuilding.get() {
        l.rebuilding.set(true);
        rt::spawn_local(rebuild(shard.clone(), q.clone(), l.term.get()));
    }
}

async fn rebuild_inner(shard: &LocalShard, q: &QueueCtx) -> Result<(QueueState, u64)> {
    let acks = shard.partition(&q.ack_key)?;
    let p = shard.partition(&q.key)?;
    let mut st = QueueState::new(settings(&q.config), 0);
    let records = if SKIP_REBUILD.load(Ordering::Relaxed) {
        0
    } else {
        super::replay(&acks, &mut st).await?
    };
    let lost = st.skip_to(p.watermarks().log_start);
    q.counters.lost.set(q.counters.lost.get() + lost);
    Ok((st, records))
}

/// The ack groups this node leads whose partition has another leader: their leadership is
/// handed to that leader (once it is caught up), so the queue is served where its partition
/// is led. Called by the replica host every tick round; returns the transfers started.
pub(crate) fn follow_data_leaders<S: Storage, T>(
    node: &mut ReplicaNode<S, T>,
) -> Vec<(GroupId, NodeId)> {
    let me = node.id();
    let due: Vec<(GroupId, NodeId)> = node
        .groups()
        .filter(|r| data_group_of(r.group()).is_some() && r.is_leader() && !r.transferring())
        .filter_map(|r| {
            let data = node.get(data_group_of(r.group())?)?;
            let to = data.leader().filter(|&l| l != me && !data.is_leader())?;
            r.peer_caught_up(to, CAUGHT_UP_LAG)
                .then_some((r.group(), to))
        })
        .collect();
    due.into_iter()
        .filter(|&(g, to)| node.transfer_leader(g, to))
        .collect()
}

/// Maps an error of an ack-log write to what the queue's client sees: `NotLeader` names the
/// queue's topic, not the internal ack log.
pub(super) fn client_error(q: &QueueCtx, e: Error) -> Error {
    match e {
        Error::NotLeader { leader, epoch, .. } => Error::NotLeader {
            topic: q.key.0.to_string(),
            partition: q.key.1,
            leader,
            epoch,
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ME: NodeId = 2;

    proptest! {
        /// A node serves only as the caught-up leader of the term it rebuilt in, and any
        /// round that shows it otherwise stops it serving.
        #[test]
        fn serves_only_as_a_caught_up_leader(
            rounds in proptest::collection::vec(
                (any::<bool>(), 0u64..4, 1u64..4, 0u64..12, 0u64..12, any::<bool>(), any::<bool>()),
                1..40,
            )
        ) {
            let l = Leadership::default();
            let key: PartitionKey = ("q".into(), 0);
            for (is_leader, other, term, applied, last, caught_up, rebuilt) in rounds {
                let seen = ReplicaSeen {
                    is_leader,
                    leader: if is_leader { Some(ME) } else { Some(other).filter(|&o| o != 0 && o != ME) },
                    term,
                    applied_index: applied,
                    last_index: last,
                    log_caught_up: caught_up,
                };
                let must_build = l.observe(ME, seen);
                if must_build && rebuilt {
                    l.serving.set(Some(term));
                }
                match l.check(&key) {
                    Ok(()) => {
                        prop_assert!(is_leader && caught_up);
                        prop_assert_eq!(l.serving.get(), Some(term));
                    }
                    Err(Error::NotLeader { leader, epoch, .. }) => {
                        prop_assert_eq!(epoch, term);
                        prop_assert!(leader != Some(ME));
                    }
                    Err(e) => prop_assert!(false, "unexpected {e}"),
                }
                if !is_leader || !caught_up {
                    prop_assert_eq!(l.serving.get(), None);
                }
            }
        }
    }

    #[test]
    fn ack_groups_are_told_apart() {
        assert_eq!(data_group_of(ack_group(7)), Some(7));
        assert_eq!(data_group_of(7), None);
        assert_eq!(data_group_of(crate::replication::LIVENESS_GROUP), None);
        assert_eq!(data_group_of(0), None);
    }
}
