//! The engine's cluster API (docs/replication.md, "API"): enabling replication, peer message
//! delivery, replicated topic create and delete through the controller, replica status.

#[allow(clippy::wildcard_imports)]
use super::*;

impl Engine {
    pub(super) fn cluster(&self) -> Result<&Arc<ClusterState>> {
        self.inner.cluster.get().ok_or_else(|| {
            Error::InvalidArgument("this node is not part of a cluster (no --cluster)".into())
        })
    }

    /// Makes this engine node `node_id` of a cluster of `nodes` (the initial membership and
    /// the controller's voters; includes node_id): starts the controller group on shard 0 and
    /// the per-shard replica hosts; reopens the replicas of existing replicated topics. Nodes
    /// added since (`add_node`, in the metadata) are members too. Call once, after open,
    /// before serving.
    pub fn enable_cluster(
        &self,
        node_id: NodeId,
        nodes: Vec<NodeId>,
        sink: PeerSink,
        cfg: ReplicaConfig,
    ) -> Result<()> {
        self.start_cluster(node_id, nodes, false, sink, cfg)
    }

    /// As [`Engine::enable_cluster`] for a node that is not in the initial list: `voters` are
    /// the controller's voters (`shardline serve --join`). Its controller replica starts empty
    /// with that configuration; it receives the log once a member proposed `AddNode` for it
    /// (it becomes the controller's learner). A restart uses the same call.
    pub fn join_cluster(
        &self,
        node_id: NodeId,
        voters: Vec<NodeId>,
        sink: PeerSink,
        cfg: ReplicaConfig,
    ) -> Result<()> {
        self.start_cluster(node_id, voters, true, sink, cfg)
    }

    fn start_cluster(
        &self,
        node_id: NodeId,
        voters: Vec<NodeId>,
        joining: bool,
        sink: PeerSink,
        cfg: ReplicaConfig,
    ) -> Result<()> {
        let voters = check_start(node_id, voters, joining, &cfg)?;
        let meta = lock(&self.inner.control)?.clone();
        let nodes = nodes::membership(node_id, &voters, &meta);
        // Producer ids carry the node from now on (engine/src/producer_ids.rs).
        self.semantics()?.producer_ids.set_node(node_id, &nodes)?;
        let (moves_tx, moves_rx) = flume::unbounded();
        let state = Arc::new(ClusterState {
            node_id,
            nodes: RwLock::new(nodes),
            controller_voters: voters.clone(),
            node_hook: Mutex::new(None),
            sink,
            cfg,
            routes: RwLock::new(HashMap::from([(CONTROLLER_GROUP, 0)])),
            controller_leader: AtomicU64::new(0),
            waiters: Mutex::new(HashMap::new()),
            next_request: AtomicU64::new(crate::batch::now_us() as u64),
            dropped_peer_msgs: AtomicU64::new(0),
            offsets: crate::groups::replicated::OffsetsView::new(self, node_id),
            incarnation: crate::batch::now_us() as u64,
            security: security::SecurityLog::open(
                &self.inner.config.data_dir.join(CONTROLLER_DIR),
            )?,
            moves_done: moves_tx,
        });
        if self.inner.cluster.set(state.clone()).is_err() {
            return Err(Error::InvalidArgument("cluster already enabled".into()));
        }
        self.offsets_cluster_start()?;
        let (apply_tx, apply_rx) = flume::unbounded();
        let weak = Arc::downgrade(&self.inner);
        std::thread::Builder::new()
            .name("controller-apply".into())
            .spawn(move || controller::apply_thread(weak, apply_rx))
            .map_err(|e| Error::Runtime(format!("controller apply thread: {e}")))?;
        let mut rxs = Vec::new();
        for s in 0..self.shard_count() {
            let (tx, rx) = flume::bounded(1);
            let st = state.clone();
            let apply = (s == 0).then(|| apply_tx.clone());
            let next = meta.controller_applied;
            self.send(
                s,
                Request::Run(Box::new(move |local: &LocalShard| {
                    start_host(local, st, apply, next);
                    let _ = tx.send(Ok(()));
                })),
            )?;
            rxs.push(rx);
        }
        drop(apply_tx);
        for rx in rxs {
            recv(rx)?;
        }
        let dir = self
            .inner
            .config
            .data_dir
            .join(CONTROLLER_DIR)
            .join(RAFT_DIR);
        let initial = voters.clone();
        self.open_replica(
            0,
            CONTROLLER_GROUP,
            Binding::Controller,
            dir,
            voters,
            initial,
        )?;
        self.order_learners(&state)?;
        for (name, t) in &meta.topics {
            self.open_topic_replicas(name, t, &meta.initial_sets)?;
        }
        self.resume_moves(&meta)?;
        let weak = Arc::downgrade(&self.inner);
        std::thread::Builder::new()
            .name("partition-moves".into())
            .spawn(move || membership::moves_thread(weak, moves_rx))
            .map_err(|e| Error::Runtime(format!("partition moves thread: {e}")))?;
        if !joining {
            // A joining node gets `__offsets` from the controller's log.
            self.spawn_offsets_create(state.controller_voters.len())?;
        }
        tracing::info!(node_id, nodes = ?state.nodes(), joining, "cluster enabled");
        Ok(())
    }

    pub fn cluster_node_id(&self) -> Option<NodeId> {
        self.inner.cluster.get().map(|c| c.node_id)
    }

    /// The controller's leader as this node knows it (for forwarding/metadata).
    pub fn controller_leader(&self) -> Option<NodeId> {
        let l = self
            .cluster()
            .ok()?
            .controller_leader
            .load(Ordering::Acquire);
        (l != 0).then_some(l)
    }

    /// A frame from peer `from` (any thread, never blocks): routed per group to its shard.
    /// Messages for a group this node does not hold, or for a shard whose inbox is full, are
    /// dropped (Raft retransmits).
    pub fn deliver_peer_messages(&self, from: NodeId, msgs: Vec<(GroupId, Bytes)>) {
        let Ok(state) = self.cluster() else { return };
        let mut per_shard: HashMap<usize, Vec<(GroupId, Bytes)>> = HashMap::new();
        {
            let Ok(routes) = state.routes.read() else {
                return;
            };
            for (g, b) in msgs {
                if g == LIVENESS_GROUP {
                    // Node-level liveness: every shard's groups need it.
                    for s in 0..self.shard_count() {
                        per_shard.entry(s).or_default().push((g, b.clone()));
                    }
                } else if let Some(s) = routes.get(&g) {
                    per_shard.entry(*s).or_default().push((g, b));
                }
            }
        }
        for (s, msgs) in per_shard {
            let n = msgs.len() as u64;
            let task = Request::Run(Box::new(move |_: &LocalShard| {
                if let Some(h) = host() {
                    h.push(|i| i.peer.push((from, msgs)));
                }
            }));
            let sent = self.inbox(s).is_ok_and(|tx| tx.try_send(task).is_ok());
            if !sent {
                state.dropped_peer_msgs.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    /// Opens a replica on shard `shard` and routes its group there (blocking: not for a
    /// shard thread).
    pub(super) fn open_replica(
        &self,
        shard: usize,
        group: GroupId,
        binding: Binding,
        dir: std::path::PathBuf,
        voters: Vec<NodeId>,
        initial: Vec<NodeId>,
    ) -> Result<()> {
        let state = self.cluster()?.clone();
        lock_routes(&state)?.insert(group, shard);
        let (tx, rx) = flume::bounded(1);
        self.send(
            shard,
            Request::Run(Box::new(move |local: &LocalShard| {
                let local = local.clone();
                rt::spawn_local(async move {
                    let opened = open_here(local, state, group, binding, dir, voters, initial);
                    let _ = tx.send(opened.await);
                });
            })),
        )?;
        recv(rx)
    }

    /// Marks every partition of a replicated topic replicated on this node and opens the
    /// replicas placed here.
    pub(super) fn open_topic_replicas(
        &self,
        name: &str,
        t: &TopicMeta,
        initial_sets: &std::collections::BTreeMap<GroupId, Vec<NodeId>>,
    ) -> Result<()> {
        let state = self.cluster()?.clone();
        let key_name: Arc<str> = Arc::from(name);
        for (p, group) in t.groups.iter().enumerate() {
            let shard = t.shards[p] as usize;
            let key: PartitionKey = (key_name.clone(), p as u32);
            let set = t.replica_sets.get(p).cloned().unwrap_or_default();
            // Preferred leader first (the host's balancer reads it there).
            let voters = preferred_first(name, p as u32, &set, &state.nodes());
            if voters.contains(&state.node_id) {
                let dir =
                    metadata::partition_dir(&self.inner.config.data_dir, name, t.id, p as u32)
                        .join(RAFT_DIR);
                // A group that moved starts from its first set (membership.rs).
                let initial = initial_sets.get(group).cloned().unwrap_or(set);
                let binding = Binding::Partition(key);
                self.open_replica(shard, *group, binding, dir, voters, initial)?;
            } else {
                let (tx, rx) = flume::bounded(1);
                let g = *group;
                self.send(
                    shard,
                    Request::Run(Box::new(move |local: &LocalShard| {
                        let _ = tx.send(local.set_replicated(&key, Some(g)));
                    })),
                )?;
                recv(rx)?;
            }
        }
        if t.config.queue.is_some() {
            self.open_ack_replicas(name, t)?;
        }
        Ok(())
    }

    /// A queue topic's ack groups (queue/replicated.rs): one per partition, the partition's
    /// replicas, bound to the queue's ack log (`queue-acks/`, Raft files in its `raft/`).
    fn open_ack_replicas(&self, name: &str, t: &TopicMeta) -> Result<()> {
        let state = self.cluster()?.clone();
        for (p, group) in t.groups.iter().enumerate() {
            let shard = t.shards[p] as usize;
            let key = crate::queue::ack_key(&(Arc::from(name), p as u32));
            let g = crate::queue::replicated::ack_group(*group);
            let set = t.replica_sets.get(p).cloned().unwrap_or_default();
            let voters = preferred_first(name, p as u32, &set, &state.nodes());
            if voters.contains(&state.node_id) {
                let dir =
                    metadata::partition_dir(&self.inner.config.data_dir, name, t.id, p as u32)
                        .join(crate::queue::ACK_LOG_DIR)
                        .join(RAFT_DIR);
                self.open_replica(
                    shard,
                    g,
                    Binding::Partition(key),
                    dir,
                    voters.clone(),
                    voters,
                )?;
            } else {
                let (tx, rx) = flume::bounded(1);
                self.send(
                    shard,
                    Request::Run(Box::new(move |local: &LocalShard| {
                        let _ = tx.send(local.set_replicated(&key, Some(g)));
                    })),
                )?;
                recv(rx)?;
            }
        }
        Ok(())
    }

    /// Removes this node's replicas of a topic from their hosts (before its files go).
    pub(super) fn close_topic_replicas(&self, t: &TopicMeta) -> Result<()> {
        let state = self.cluster()?.clone();
        let acks = t.config.queue.is_some();
        let groups = t.groups.iter().enumerate().flat_map(|(p, g)| {
            let ack = acks.then(|| (p, crate::queue::replicated::ack_group(*g)));
            std::iter::once((p, *g)).chain(ack)
        });
        for (p, g) in groups {
            lock_routes(&state)?.remove(&g);
            let (tx, rx) = flume::bounded(1);
            self.send(
                t.shards[p] as usize,
                Request::Run(Box::new(move |_: &LocalShard| match host() {
                    Some(h) => h.push(|i| i.removes.push((g, tx))),
                    None => {
                        let _ = tx.send(Ok(()));
                    }
                })),
            )?;
            recv(rx)?;
        }
        Ok(())
    }

    /// Proposes a controller command and waits until this node applied it.
    pub(super) async fn controller_command(
        &self,
        make: impl FnOnce(u64) -> Command,
    ) -> Result<Outcome> {
        let state = self.cluster()?.clone();
        let request_id = state.next_request.fetch_add(1, Ordering::Relaxed) ^ (state.node_id << 56);
        let bytes = encode_command(&make(request_id))?;
        let (tx, rx) = flume::bounded(1);
        lock(&state.waiters)?.insert(request_id, tx);
        let now = Instant::now();
        let cmd = PendingCmd {
            request_id,
            bytes,
            deadline: now + CONTROLLER_TIMEOUT,
            next_try: now,
        };
        let sent = self
            .send_async(
                0,
                Request::Run(Box::new(move |_: &LocalShard| {
                    if let Some(h) = host() {
                        h.push(|i| i.controller.push(cmd));
                    }
                })),
            )
            .await;
        if let Err(e) = sent {
            lock(&state.waiters)?.remove(&request_id);
            return Err(e);
        }
        recv_async(rx).await
    }

    /// Creates a replicated topic through the controller (from any node). R =
    /// `config.replicas` (1..=nodes, else InvalidArgument). Partition `p`'s replicas are R
    /// distinct nodes starting at `(p + crc32c(name)) % n` over the sorted node ids.
    pub async fn create_topic_replicated(
        &self,
        name: &str,
        config: TopicConfig,
    ) -> Result<TopicInfo> {
        config::validate_topic_name(name)?;
        config::validate_topic_config(&config)?;
        if let Some(q) = &config.queue {
            // Checked before proposing: every node opens the queue when the create applies.
            q.validate()?;
        }
        let state = self.cluster()?.clone();
        let n = state.nodes().len();
        if config.replicas as usize > n {
            return Err(Error::InvalidArgument(format!(
                "replicas {} exceeds the cluster's {n} nodes",
                config.replicas
            )));
        }
        if config.encrypted && self.inner.keyring.is_none() {
            return Err(Error::InvalidArgument(
                "encrypted topics need an encryption key file (engine.encryption_key_file)".into(),
            ));
        }
        let placement = placement(name, config.partitions, config.replicas, &state.nodes());
        let name = name.to_string();
        match self
            .controller_command(move |request_id| Command::CreateTopic {
                request_id,
                name,
                config,
                placement,
            })
            .await?
        {
            Outcome::Created(info) => Ok(info),
            _ => Err(Error::Runtime("unexpected controller outcome".into())),
        }
    }

    /// Deletes a replicated topic through the controller (from any node).
    pub async fn delete_topic_replicated(&self, name: &str) -> Result<()> {
        if crate::groups::is_internal(name) {
            return Err(Error::InvalidArgument(format!("'{name}' is internal")));
        }
        self.cluster()?;
        let name = name.to_string();
        self.controller_command(move |request_id| Command::DeleteTopic { request_id, name })
            .await
            .map(|_| ())
    }

    /// Per partition: leader (as this node knows it), replicas (the preferred leader first), in-sync (leader's view:
    /// matched within a bound; a follower answers what it knows), epoch (= Raft term), high
    /// watermark. A topic that is not replicated answers this node as its one replica.
    pub async fn replica_status(&self, topic: &str) -> Result<Vec<ReplicaStatus>> {
        let t = lock(&self.inner.control)?
            .topics
            .get(topic)
            .cloned()
            .ok_or_else(|| Error::UnknownTopic(topic.to_string()))?;
        let me = self.cluster_node_id();
        let mut out = Vec::with_capacity(t.shards.len());
        for p in 0..t.shards.len() as u32 {
            let info = self.describe_partition_async(topic, p).await?;
            let Some(group) = t.groups.get(p as usize).copied() else {
                let one: Vec<NodeId> = me.into_iter().collect();
                out.push(ReplicaStatus {
                    partition: p,
                    leader: me,
                    replicas: one.clone(),
                    in_sync: one,
                    epoch: 0,
                    high_watermark: info.next_offset,
                });
                continue;
            };
            let set = t.replica_sets.get(p as usize).cloned().unwrap_or_default();
            // Preferred leader first (docs/protocol.md, DescribeReplicas).
            let nodes = self.cluster().map(|c| c.nodes()).unwrap_or_default();
            let replicas = preferred_first(topic, p, &set, &nodes);
            let (tx, rx) = flume::bounded(1);
            let q: Box<dyn FnOnce(&Node) + Send> = Box::new(move |node: &Node| {
                let _ = tx.send(Ok(node.get(group).map(|r| {
                    (
                        r.leader(),
                        r.in_sync(IN_SYNC_LAG_ENTRIES),
                        r.term(),
                        r.high_watermark(),
                    )
                })));
            });
            self.send_async(
                t.shards[p as usize] as usize,
                Request::Run(Box::new(move |_: &LocalShard| {
                    if let Some(h) = host() {
                        h.push(|i| i.queries.push(q));
                    }
                })),
            )
            .await?;
            let (leader, in_sync, epoch, high_watermark) =
                recv_async(rx)
                    .await?
                    .unwrap_or((None, Vec::new(), 0, info.next_offset));
            out.push(ReplicaStatus {
                partition: p,
                leader,
                replicas,
                in_sync,
                epoch,
                high_watermark,
            });
        }
        Ok(out)
    }
}

/// The sorted voters of a cluster start, checked with the replica timing.
fn check_start(
    node_id: NodeId,
    voters: Vec<NodeId>,
    joining: bool,
    cfg: &ReplicaConfig,
) -> Result<Vec<NodeId>> {
    let mut voters = voters;
    voters.sort_unstable();
    voters.dedup();
    if node_id == 0 || voters.contains(&0) || voters.contains(&node_id) == joining {
        return Err(Error::InvalidArgument(format!(
            "node ids must be >= 1 and the list must {} this node ({node_id}): {voters:?}",
            if joining { "not include" } else { "include" }
        )));
    }
    if voters.is_empty() {
        return Err(Error::InvalidArgument("the node list is empty".into()));
    }
    if cfg.tick_ms == 0
        || cfg.heartbeat_ticks == 0
        || cfg.election_ticks <= cfg.heartbeat_ticks
        || cfg.election_ticks_max <= cfg.election_ticks
    {
        return Err(Error::InvalidArgument(format!(
            "replica timing needs tick_ms > 0 and heartbeat < election < election max: {cfg:?}"
        )));
    }
    Ok(voters)
}
