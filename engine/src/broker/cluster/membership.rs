//! Moving a replicated partition onto another replica set (docs/replication.md, "Membership
//! changes"): `Engine::reassign_partition` proposes a controller command `Reassign`; when it
//! applies, every node records the target (`Metadata::moves`), a node in the target that
//! holds no replica opens one (empty Raft log: it joins as a learner and catches up from the
//! log or a snapshot), and every replica gets the target (the group's leader drives the
//! configuration changes: replication/partition/membership.rs). Once the leader's applied
//! configuration is the target, its host reports it; the node proposes `ReassignDone`, which
//! updates `TopicMeta::replica_sets` everywhere (routing and metadata follow), and the nodes
//! left out close their replica and delete its Raft files (the partition log stays, as on any
//! node that holds no replica).

#[allow(clippy::wildcard_imports)]
use super::*;
use crate::replication::MoveStep;

/// A finished move is reported again after this long until the controller records it.
const REPORT_AGAIN_AFTER: Duration = Duration::from_secs(3);

/// A move the host's replica of `group` heads for, and when its end was last reported.
pub(super) struct Watched {
    target: Vec<NodeId>,
    reported: Option<Instant>,
}

/// What the host is told about a group's move.
pub(super) struct MoveOrder {
    pub(super) group: GroupId,
    /// `None`: the move ended (or was never here).
    pub(super) target: Option<Vec<NodeId>>,
    /// The replica's set for leadership balance (preferred leader first), when it changed.
    pub(super) voters: Option<Vec<NodeId>>,
}

impl Host {
    /// Applies the move orders of this round to the replicas.
    pub(super) fn take_moves(&self, orders: Vec<MoveOrder>, node: &mut Node) {
        let mut watched = self.moves.borrow_mut();
        for o in orders {
            node.set_move_target(o.group, o.target.clone());
            match o.target {
                Some(target) => {
                    watched.insert(
                        o.group,
                        Watched {
                            target,
                            reported: None,
                        },
                    );
                }
                None => {
                    watched.remove(&o.group);
                }
            }
            if let Some(v) = o.voters
                && let Some(spec) = self.specs.borrow_mut().get_mut(&o.group)
            {
                spec.voters = v;
            }
        }
    }

    /// Reports the moves whose group this shard leads and whose applied configuration is the
    /// target (again every few seconds until the controller records it).
    pub(super) fn report_moves(&self, node: &mut Node) {
        node.take_conf_changed();
        let now = Instant::now();
        let mut watched = self.moves.borrow_mut();
        for (g, w) in watched.iter_mut() {
            let done = node
                .get(*g)
                .is_some_and(|r| r.is_leader() && r.move_step() == MoveStep::Done);
            let due = w.reported.is_none_or(|t| now >= t + REPORT_AGAIN_AFTER);
            if done && due {
                w.reported = Some(now);
                tracing::info!(group = g, replicas = ?w.target, "partition move done");
                let _ = self.state.moves_done.send((*g, w.target.clone()));
            }
        }
    }
}

/// Proposes `ReassignDone` for the moves the hosts report (blocking: its own thread). Ends
/// when the engine is gone.
pub(super) fn moves_thread(engine: Weak<Inner>, rx: flume::Receiver<(GroupId, Vec<NodeId>)>) {
    while let Ok((group, replicas)) = rx.recv() {
        let Some(inner) = engine.upgrade() else {
            return;
        };
        let engine = Engine { inner };
        let Some((name, partition)) = engine.group_partition(group) else {
            continue;
        };
        let r = futures_lite::future::block_on(engine.controller_command(move |request_id| {
            Command::ReassignDone {
                request_id,
                name,
                partition,
                replicas,
            }
        }));
        if let Err(e) = r {
            tracing::warn!(group, error = %e, "partition move not recorded yet");
        }
    }
}

impl Engine {
    /// The topic and partition of Raft group `group`.
    fn group_partition(&self, group: GroupId) -> Option<(String, u32)> {
        let meta = lock(&self.inner.control).ok()?;
        meta.topics.iter().find_map(|(n, t)| {
            let p = t.groups.iter().position(|g| *g == group)?;
            Some((n.clone(), u32::try_from(p).ok()?))
        })
    }

    /// Moves partition `partition` of replicated topic `topic` onto `replicas` (node ids of
    /// the cluster; any order), online: returns once every node recorded the move (the
    /// controller applied it here); the move itself runs in the background:
    /// [`Engine::replica_status`] shows the new set once it is done. A second call replaces
    /// the target of a move under way.
    pub async fn reassign_partition(
        &self,
        topic: &str,
        partition: u32,
        replicas: Vec<NodeId>,
    ) -> Result<()> {
        let state = self.cluster()?.clone();
        let mut replicas = replicas;
        replicas.sort_unstable();
        replicas.dedup();
        if replicas.is_empty() || replicas.len() > crate::replication::disk::CONF_IDS_MAX {
            return Err(Error::InvalidArgument(
                "a replica set needs 1 to 100 nodes".into(),
            ));
        }
        if let Some(n) = replicas.iter().find(|n| !state.nodes().contains(n)) {
            return Err(Error::InvalidArgument(format!(
                "node {n} is not a member of the cluster"
            )));
        }
        {
            let meta = lock(&self.inner.control)?;
            let t = meta
                .topics
                .get(topic)
                .ok_or_else(|| Error::UnknownTopic(topic.to_string()))?;
            if t.groups.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "'{topic}' is not a replicated topic"
                )));
            }
            if t.config.queue.is_some() {
                // The queue's ack group (queue/replicated.rs) has the partition's first
                // replica set and is not moved with it yet.
                return Err(Error::InvalidArgument(format!(
                    "'{topic}' is a queue: moving queue partitions is not supported yet"
                )));
            }
            if partition as usize >= t.groups.len() {
                return Err(Error::UnknownPartition {
                    topic: topic.to_string(),
                    partition,
                });
            }
        }
        let name = topic.to_string();
        self.controller_command(move |request_id| Command::Reassign {
            request_id,
            name,
            partition,
            replicas,
        })
        .await
        .map(|_| ())
    }

    /// A committed `Reassign`: records the target; opens a joining replica here if this node
    /// is in the target and holds none; hands the target to this node's replica.
    pub(super) fn apply_reassign(
        &self,
        offset: u64,
        request_id: u64,
        name: &str,
        partition: u32,
        replicas: Vec<NodeId>,
    ) -> Result<Outcome> {
        let (t, meta) = {
            let mut meta = lock(&self.inner.control)?;
            let Some(t) = meta
                .topics
                .get(name)
                .filter(|t| (partition as usize) < t.groups.len())
                .cloned()
            else {
                drop(meta);
                self.store_applied(offset, request_id)?;
                return Err(Error::UnknownTopic(name.to_string()));
            };
            let mut next = meta.clone();
            next.moves
                .insert(t.groups[partition as usize], replicas.clone());
            Self::mark_applied(&mut next, offset, request_id);
            metadata::store(&self.inner.config.data_dir, &next)?;
            *meta = next.clone();
            (t, next)
        };
        self.resume_move(name, &t, partition, &meta)?;
        tracing::info!(topic = name, partition, replicas = ?replicas, "partition move started");
        Ok(Outcome::Reassigned)
    }

    /// Opens this node's joining replica of a moving partition if it needs one, and hands
    /// the move's target to the replica (at `Reassign` and at start).
    fn resume_move(
        &self,
        name: &str,
        t: &TopicMeta,
        partition: u32,
        meta: &metadata::Metadata,
    ) -> Result<()> {
        let state = self.cluster()?.clone();
        let p = partition as usize;
        let (Some(group), Some(shard)) = (t.groups.get(p).copied(), t.shards.get(p).copied())
        else {
            return Ok(());
        };
        let Some(target) = meta.moves.get(&group).cloned() else {
            return Ok(());
        };
        let holds = state
            .routes
            .read()
            .map_err(|_| Error::Runtime("poisoned".into()))?
            .contains_key(&group);
        if !holds && target.contains(&state.node_id) {
            // A new replica starts from the group's first configuration: the log (or a
            // snapshot) brings every change since.
            let initial = meta
                .initial_sets
                .get(&group)
                .or_else(|| t.replica_sets.get(p))
                .cloned()
                .unwrap_or_default();
            let dir = metadata::partition_dir(&self.inner.config.data_dir, name, t.id, partition)
                .join(RAFT_DIR);
            let key: PartitionKey = (Arc::from(name), partition);
            let voters = preferred_first(name, partition, &target, &state.nodes());
            let binding = Binding::Partition(key);
            self.open_replica(shard as usize, group, binding, dir, voters, initial)?;
        } else if !holds {
            return Ok(());
        }
        self.order_move(
            shard as usize,
            MoveOrder {
                group,
                target: Some(target),
                voters: None,
            },
        )
    }

    /// At start: resumes the moves under way (after the topics' replicas opened), and
    /// removes the Raft files of replicas a finished move left out (a crash between
    /// `ReassignDone` and their removal), so that a later move back onto this node starts
    /// from an empty log.
    pub(super) fn resume_moves(&self, meta: &metadata::Metadata) -> Result<()> {
        let me = self.cluster()?.node_id;
        for (name, t) in &meta.topics {
            for (p, group) in t.groups.iter().enumerate() {
                let partition = u32::try_from(p).unwrap_or(u32::MAX);
                let member = t.replica_sets.get(p).is_some_and(|s| s.contains(&me))
                    || meta.moves.get(group).is_some_and(|s| s.contains(&me));
                if !member {
                    let dir =
                        metadata::partition_dir(&self.inner.config.data_dir, name, t.id, partition)
                            .join(RAFT_DIR);
                    if dir.exists() {
                        tracing::info!(dir = %dir.display(), "removing a moved replica's raft files");
                        std::fs::remove_dir_all(&dir).map_err(|e| Error::io(dir.display(), e))?;
                    }
                }
                if meta.moves.contains_key(group) {
                    self.resume_move(name, t, partition, meta)?;
                }
            }
        }
        Ok(())
    }

    fn order_move(&self, shard: usize, order: MoveOrder) -> Result<()> {
        self.send(
            shard,
            Request::Run(Box::new(move |_: &LocalShard| {
                if let Some(h) = host() {
                    h.push(|i| i.moves.push(order));
                }
            })),
        )
    }

    /// A committed `ReassignDone` (for the move under way only): the partition's replica set
    /// becomes `replicas`; a replica here that is not in it closes and its Raft files go.
    pub(super) fn apply_reassign_done(
        &self,
        offset: u64,
        request_id: u64,
        name: &str,
        partition: u32,
        replicas: Vec<NodeId>,
    ) -> Result<Outcome> {
        let state = self.cluster()?.clone();
        let (t, group) = {
            let mut meta = lock(&self.inner.control)?;
            let t = meta.topics.get(name).cloned();
            let group = t
                .as_ref()
                .and_then(|t| t.groups.get(partition as usize).copied());
            let current = group.and_then(|g| meta.moves.get(&g));
            let (Some(t), Some(group)) = (t, group.filter(|_| current == Some(&replicas))) else {
                drop(meta);
                self.store_applied(offset, request_id)?;
                return Ok(Outcome::Reassigned);
            };
            let mut next = meta.clone();
            next.moves.remove(&group);
            let p = partition as usize;
            if let Some(set) = t.replica_sets.get(p) {
                next.initial_sets
                    .entry(group)
                    .or_insert_with(|| set.clone());
            }
            if let Some(set) = next
                .topics
                .get_mut(name)
                .and_then(|t| t.replica_sets.get_mut(p))
            {
                *set = replicas.clone();
            }
            Self::mark_applied(&mut next, offset, request_id);
            metadata::store(&self.inner.config.data_dir, &next)?;
            *meta = next;
            self.publish_routes(&meta);
            (t, group)
        };
        let holds = state
            .routes
            .read()
            .map_err(|_| Error::Runtime("poisoned".into()))?
            .contains_key(&group);
        let shard = t.shards.get(partition as usize).copied().unwrap_or(0) as usize;
        if holds && replicas.contains(&state.node_id) {
            let voters = preferred_first(name, partition, &replicas, &state.nodes());
            self.order_move(
                shard,
                MoveOrder {
                    group,
                    target: None,
                    voters: Some(voters),
                },
            )?;
        } else if holds {
            self.close_replica(shard, group)?;
            let dir = metadata::partition_dir(&self.inner.config.data_dir, name, t.id, partition)
                .join(RAFT_DIR);
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "raft files of a moved replica not removed");
            }
        }
        tracing::info!(topic = name, partition, replicas = ?replicas, "partition moved");
        Ok(Outcome::Reassigned)
    }

    /// Removes this node's replica of `group` from its host (blocking).
    fn close_replica(&self, shard: usize, group: GroupId) -> Result<()> {
        let state = self.cluster()?.clone();
        lock_routes(&state)?.remove(&group);
        let (tx, rx) = flume::bounded(1);
        self.send(
            shard,
            Request::Run(Box::new(move |_: &LocalShard| match host() {
                Some(h) => h.push(|i| i.removes.push((group, tx))),
                None => {
                    let _ = tx.send(Ok(()));
                }
            })),
        )?;
        recv(rx)
    }
}
