//! Consumer groups on a cluster (issue 14; docs/replication.md, "Consumer groups and work
//! queues on a cluster").
//!
//! - `__offsets` is an ordinary replicated topic, created through the controller when the
//!   cluster starts (every node proposes it; the first create applies, the others find it
//!   exists), with R = min(3, nodes). A node's single-node `__offsets` is dropped on its first
//!   cluster start (logged): its commits were never replicated.
//! - A group's coordinator is the leader of its `__offsets` partition, once that leader has
//!   committed an entry of its own term and applied everything committed (so it holds every
//!   commit acknowledged by an earlier leader). Other nodes answer `NotLeader` (wire code 20)
//!   naming the leader they know.
//! - Commits are produced with `acks = all` and applied to the in-memory offsets from committed
//!   batches on **every** replica, in commit order (the replica host calls
//!   [`OffsetsView::applied`]), so a new leader has them. Membership is soft state: a new
//!   leader term starts every slot it coordinates with no members; members rejoin.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use bytes::Bytes;

use super::{Groups, OFFSETS_TOPIC};
use crate::broker::engine::{Engine, Inner};
use crate::config::TopicConfig;
use crate::error::{Error, Result};
use crate::metadata::TopicMeta;
use crate::replication::NodeId;

/// Replicas of the replicated `__offsets`, at most.
const OFFSETS_REPLICAS_MAX: usize = 3;
/// Partitions of the replicated `__offsets`, at most.
const OFFSETS_PARTITIONS_MAX: usize = 64;
/// Between attempts to create the replicated `__offsets` (the controller needs a quorum).
const CREATE_RETRY: Duration = Duration::from_secs(1);

/// What the replica host last saw of one `__offsets` replica (after a round's apply).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReplicaSeen {
    pub(crate) is_leader: bool,
    pub(crate) leader: Option<NodeId>,
    pub(crate) term: u64,
    /// Raft index applied (no-op entries included).
    pub(crate) applied_index: u64,
    pub(crate) last_index: u64,
    /// The partition log holds every committed batch (nothing left to apply).
    pub(crate) log_caught_up: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct PartView {
    /// 0: unknown.
    leader: NodeId,
    term: u64,
    /// This node leads and may coordinate (see the module doc).
    ready: bool,
    /// The term this node last became leader in, and its last Raft index then (its no-op).
    lead_term: u64,
    lead_from: u64,
}

/// The coordinators' view of the `__offsets` replicas of this node (shared by the replica
/// hosts, which update it, and the group calls, which check it).
pub(crate) struct OffsetsView {
    node_id: NodeId,
    parts: RwLock<HashMap<u32, PartView>>,
    groups: Weak<RwLock<Option<Arc<Groups>>>>,
}

impl OffsetsView {
    pub(crate) fn new(engine: &Engine, node_id: NodeId) -> OffsetsView {
        OffsetsView {
            node_id,
            parts: RwLock::new(HashMap::new()),
            groups: Arc::downgrade(&engine.inner.semantics.groups),
        }
    }

    #[cfg(test)]
    fn detached(node_id: NodeId) -> OffsetsView {
        OffsetsView {
            node_id,
            parts: RwLock::new(HashMap::new()),
            groups: Weak::new(),
        }
    }

    /// The host's round saw replica `partition` of `__offsets` as `seen`.
    pub(crate) fn observe(&self, partition: u32, seen: ReplicaSeen) {
        let old = self
            .parts
            .read()
            .ok()
            .and_then(|p| p.get(&partition).copied())
            .unwrap_or_default();
        let mut v = old;
        v.leader = seen.leader.unwrap_or(0);
        v.term = seen.term;
        if seen.is_leader {
            if v.lead_term != seen.term {
                v.lead_term = seen.term;
                v.lead_from = seen.last_index;
            }
            v.ready = seen.applied_index >= v.lead_from && seen.log_caught_up;
        } else {
            v.ready = false;
        }
        if v != old
            && let Ok(mut p) = self.parts.write()
        {
            p.insert(partition, v);
        }
    }

    /// A committed batch of `partition` reached its partition log: apply it to the offsets.
    pub(crate) fn applied(&self, partition: u32, batch: &Bytes) {
        let Some(groups) = self
            .groups
            .upgrade()
            .and_then(|g| g.read().ok().and_then(|g| g.clone()))
        else {
            return;
        };
        if !groups.replicated {
            return;
        }
        if let Err(e) = groups.apply_committed(partition, batch) {
            tracing::warn!(partition, error = %e, "committed offsets batch not applied");
        }
    }

    /// The leader of `partition` as this node knows it (0: unknown).
    fn leader(&self, partition: u32) -> NodeId {
        self.parts
            .read()
            .ok()
            .and_then(|p| p.get(&partition).map(|v| v.leader))
            .unwrap_or(0)
    }

    /// The term in which this node coordinates `partition`'s groups, or `NotLeader`.
    fn coordinator_term(&self, partition: u32) -> Result<u64> {
        let v = self
            .parts
            .read()
            .ok()
            .and_then(|p| p.get(&partition).copied())
            .unwrap_or_default();
        if v.ready && v.leader == self.node_id {
            return Ok(v.term);
        }
        Err(Error::NotLeader {
            topic: OFFSETS_TOPIC.to_string(),
            partition,
            leader: (v.leader != 0 && v.leader != self.node_id).then_some(v.leader),
            epoch: v.term,
        })
    }
}

/// The term in which this node coordinates the groups of `__offsets` partition `partition`.
pub(crate) fn coordinator_term(engine: &Engine, partition: u32) -> Result<u64> {
    match engine.inner.cluster.get() {
        Some(c) => c.offsets.coordinator_term(partition),
        // A replicated `__offsets` opened before the cluster is enabled: nobody leads yet.
        None => Err(Error::NotLeader {
            topic: OFFSETS_TOPIC.to_string(),
            partition,
            leader: None,
            epoch: 0,
        }),
    }
}

impl Engine {
    /// The node that coordinates `group` as this node knows it: on a cluster the leader of
    /// the group's `__offsets` partition (`None`: not known now; for the Kafka front end's
    /// FindCoordinator and tools), on a single node this node (`Some(1)` without a node id).
    pub fn group_coordinator(&self, group: &str) -> Result<Option<NodeId>> {
        let groups = self.groups()?;
        let slot = groups.slot_of(group);
        match self.inner.cluster.get() {
            Some(c) if groups.replicated => Ok(Some(c.offsets.leader(slot)).filter(|&l| l != 0)),
            Some(c) => Ok(Some(c.node_id())),
            None => Ok(Some(1)),
        }
    }

    /// Whether `name` is a replicated topic (its partitions have Raft groups).
    pub(crate) fn is_replicated_topic(&self, name: &str) -> bool {
        self.inner
            .control
            .lock()
            .ok()
            .and_then(|m| m.topics.get(name).map(|t| !t.groups.is_empty()))
            .unwrap_or(false)
    }

    /// On `enable_cluster`, before the controller applies anything: a single-node `__offsets`
    /// is deleted (the controller creates the replicated one; until it applies, group calls
    /// answer `NotLeader`).
    pub(crate) fn offsets_cluster_start(&self) -> Result<()> {
        let local = self
            .inner
            .control
            .lock()
            .map_err(|_| Error::Runtime("poisoned".into()))?
            .topics
            .get(OFFSETS_TOPIC)
            .is_some_and(|t| t.groups.is_empty());
        if !local {
            return Ok(());
        }
        let had = self
            .groups()
            .ok()
            .map_or(0, |g| g.list().map_or(0, |l| l.len()));
        if had > 0 {
            tracing::warn!(
                groups = had,
                "this node's single-node committed offsets are dropped: a cluster keeps them in the replicated __offsets"
            );
        }
        self.semantics()?.set_groups(None)?;
        self.delete_topic_unchecked(OFFSETS_TOPIC)
    }

    /// The controller created the replicated `__offsets` on this node (before its replicas
    /// open, so no committed batch is applied before the coordinators exist).
    pub(crate) fn offsets_created(&self, t: &TopicMeta) -> Result<()> {
        let groups = Groups {
            slots: (0..t.shards.len().max(1))
                .map(|_| std::sync::Mutex::new(super::Slot::default()))
                .collect(),
            replicated: true,
        };
        self.semantics()?.set_groups(Some(Arc::new(groups)))
    }

    /// Proposes the replicated `__offsets` (a background thread: the controller needs a
    /// quorum, which may come later) until it exists or the engine is gone.
    pub(crate) fn spawn_offsets_create(&self, nodes: usize) -> Result<()> {
        if self.is_replicated_topic(OFFSETS_TOPIC) {
            return Ok(());
        }
        let partitions = self
            .shard_count()
            .max(nodes)
            .clamp(1, OFFSETS_PARTITIONS_MAX);
        let mut config = TopicConfig::with_partitions(partitions as u32);
        config.replicas = nodes.min(OFFSETS_REPLICAS_MAX) as u32;
        let weak = Arc::downgrade(&self.inner);
        std::thread::Builder::new()
            .name("offsets-create".into())
            .spawn(move || create_offsets_until_done(&weak, &config))
            .map(|_| ())
            .map_err(|e| Error::Runtime(format!("offsets-create thread: {e}")))
    }
}

fn create_offsets_until_done(weak: &Weak<Inner>, config: &TopicConfig) {
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let engine = Engine { inner };
        if engine.is_closed() || engine.is_replicated_topic(OFFSETS_TOPIC) {
            return;
        }
        let r = crate::broker::engine::block(
            engine.create_topic_replicated(OFFSETS_TOPIC, config.clone()),
        );
        match r {
            Ok(_) | Err(Error::TopicExists(_)) => return,
            Err(Error::ShuttingDown) => return,
            Err(e) => tracing::debug!(error = %e, "replicated __offsets not created yet"),
        }
        drop(engine);
        std::thread::sleep(CREATE_RETRY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ME: NodeId = 2;

    fn seen() -> impl Strategy<Value = ReplicaSeen> {
        (
            any::<bool>(),
            0u64..4,
            1u64..5,
            0u64..20,
            0u64..20,
            any::<bool>(),
        )
            .prop_map(
                |(is_leader, leader, term, applied_index, last_index, log_caught_up)| ReplicaSeen {
                    is_leader,
                    leader: if is_leader {
                        Some(ME)
                    } else {
                        Some(leader).filter(|&l| l != 0 && l != ME)
                    },
                    term,
                    applied_index,
                    last_index,
                    log_caught_up,
                },
            )
    }

    proptest! {
        /// This node coordinates only as the leader, in the term it reports, once it has
        /// applied its first entry of that term and its partition log holds every committed
        /// batch; otherwise the answer is NotLeader naming another node or none.
        #[test]
        fn coordinates_only_as_a_caught_up_leader(rounds in proptest::collection::vec(seen(), 1..40)) {
            let v = OffsetsView::detached(ME);
            let mut first_index: HashMap<u64, u64> = HashMap::new();
            let mut last_term_led = None;
            for s in rounds {
                if s.is_leader && last_term_led != Some(s.term) {
                    first_index.insert(s.term, s.last_index);
                    last_term_led = Some(s.term);
                }
                v.observe(0, s);
                match v.coordinator_term(0) {
                    Ok(t) => {
                        prop_assert!(s.is_leader && s.log_caught_up);
                        prop_assert_eq!(t, s.term);
                        prop_assert!(s.applied_index >= first_index[&s.term]);
                    }
                    Err(Error::NotLeader { leader, epoch, .. }) => {
                        prop_assert_eq!(epoch, s.term);
                        prop_assert!(leader != Some(ME));
                        let ready = s.is_leader && s.log_caught_up
                            && s.applied_index >= first_index[&s.term];
                        prop_assert!(!ready, "a caught-up leader must coordinate");
                    }
                    Err(e) => prop_assert!(false, "unexpected {e}"),
                }
            }
        }
    }
}
