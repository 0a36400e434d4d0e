//! Adding and removing nodes (docs/replication.md, "Membership changes", step 3). The
//! `--cluster` list is the initial membership and the controller's voters (a fixed controller
//! quorum, as Kafka's KRaft controller quorum); the controller commands `AddNode` and
//! `RemoveNode` change the membership on every node (recorded in `Metadata::added_nodes` /
//! `removed_nodes`, restored at start). A node added is a **learner** of the controller group
//! (group 0): the controller's leader adds it with a configuration change, and it catches up
//! from the log. The transport's peers follow through the [`NodeHook`]. Removing a node is
//! refused while a replica set or a move names it (drain it first with `topic reassign`).

#[allow(clippy::wildcard_imports)]
use super::*;

/// Told of each node added (`Some(peer address)`) or removed (`None`) when the command
/// applies on this engine (the transport's `add_peer` / `remove_peer`). Called on the
/// controller's apply thread: it may block briefly. It gets the engine (so it need not hold
/// one: the engine holds the hook).
pub type NodeHook = Arc<dyn Fn(&Engine, NodeId, Option<&str>) + Send + Sync>;

/// Longest node-to-node address an `AddNode` may carry.
pub(super) const PEER_ADDR_BYTES_MAX: usize = 256;

/// The members: the initial list (`voters`), this node, the nodes added since, less the nodes
/// removed; sorted.
pub(super) fn membership(me: NodeId, voters: &[NodeId], meta: &metadata::Metadata) -> Vec<NodeId> {
    let mut nodes: Vec<NodeId> = voters
        .iter()
        .copied()
        .chain(meta.added_nodes.keys().copied())
        .filter(|n| !meta.removed_nodes.contains(n))
        .chain(std::iter::once(me))
        .collect();
    nodes.sort_unstable();
    nodes.dedup();
    nodes
}

/// Why `id`'s removal is refused (a replica set or a move names it), if it is.
fn holds_replicas(meta: &metadata::Metadata, id: NodeId) -> Option<String> {
    for (name, t) in &meta.topics {
        if let Some(p) = t.replica_sets.iter().position(|s| s.contains(&id)) {
            return Some(format!(
                "node {id} holds a replica of '{name}' partition {p}"
            ));
        }
    }
    meta.moves
        .values()
        .any(|target| target.contains(&id))
        .then(|| format!("a partition move under way names node {id}"))
}

impl Engine {
    /// Sets the hook told of nodes added and removed from now on (the server's transport).
    /// Nodes added before are in [`Engine::added_nodes`].
    pub fn set_node_hook(&self, hook: NodeHook) -> Result<()> {
        *lock(&self.cluster()?.node_hook)? = Some(hook);
        Ok(())
    }

    /// The members added at run time with their node-to-node addresses (for the transport
    /// at start).
    pub fn added_nodes(&self) -> Vec<(NodeId, String)> {
        let Ok(state) = self.cluster() else {
            return Vec::new();
        };
        let nodes = state.nodes();
        lock(&self.inner.control)
            .map(|m| {
                m.added_nodes
                    .iter()
                    .filter(|(id, _)| nodes.contains(id))
                    .map(|(id, a)| (*id, a.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The cluster's members, sorted (empty on a single node).
    pub fn cluster_nodes(&self) -> Vec<NodeId> {
        self.cluster().map(|c| c.nodes()).unwrap_or_default()
    }

    /// Adds node `id`, reachable by peers at `peer_addr` (`HOST:PORT`), to the cluster:
    /// returns once the controller applied it here. The node itself is started with
    /// [`Engine::join_cluster`] (before or after).
    pub async fn add_node(&self, id: NodeId, peer_addr: String) -> Result<()> {
        let state = self.cluster()?.clone();
        if id == 0 || id > crate::producer_ids::NODE_ID_MAX {
            return Err(Error::InvalidArgument(format!(
                "node ids must be between 1 and {}",
                crate::producer_ids::NODE_ID_MAX
            )));
        }
        if peer_addr.is_empty()
            || peer_addr.len() > PEER_ADDR_BYTES_MAX
            || peer_addr
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(Error::InvalidArgument(
                "the node's address must be HOST:PORT".into(),
            ));
        }
        if state.nodes().contains(&id) {
            return Err(Error::InvalidArgument(format!(
                "node {id} is already a member"
            )));
        }
        self.controller_command(move |request_id| Command::AddNode {
            request_id,
            id,
            peer_addr,
        })
        .await
        .map(|_| ())
    }

    /// Removes node `id` from the cluster: refused while a replica set or a move names it
    /// (drain it first: `topic reassign`), and for the controller's voters (the initial list).
    pub async fn remove_node(&self, id: NodeId) -> Result<()> {
        let state = self.cluster()?.clone();
        if !state.nodes().contains(&id) {
            return Err(Error::InvalidArgument(format!("node {id} is not a member")));
        }
        if state.controller_voters.contains(&id) {
            return Err(Error::InvalidArgument(format!(
                "node {id} is a controller voter (the initial node list): it cannot be removed"
            )));
        }
        let refused = {
            let meta = lock(&self.inner.control)?;
            holds_replicas(&meta, id)
        };
        if let Some(why) = refused {
            return Err(Error::InvalidArgument(format!(
                "{why}: drain it first (topic reassign)"
            )));
        }
        self.controller_command(move |request_id| Command::RemoveNode { request_id, id })
            .await
            .map(|_| ())
    }

    /// A committed `AddNode`: records it, updates the members, tells the hook, and gives the
    /// controller group its new learner.
    pub(super) fn apply_add_node(
        &self,
        offset: u64,
        request_id: u64,
        id: NodeId,
        peer_addr: &str,
    ) -> Result<Outcome> {
        let state = self.cluster()?.clone();
        {
            let mut meta = lock(&self.inner.control)?;
            let mut next = meta.clone();
            next.added_nodes.insert(id, peer_addr.to_string());
            next.removed_nodes.retain(|n| *n != id);
            Self::mark_applied(&mut next, offset, request_id);
            metadata::store(&self.inner.config.data_dir, &next)?;
            self.set_members(&state, &next)?;
            *meta = next;
        }
        if id != state.node_id {
            self.tell_hook(&state, id, Some(peer_addr));
        }
        self.order_learners(&state)?;
        tracing::info!(id, peer_addr, "node added");
        Ok(Outcome::Nodes)
    }

    /// A committed `RemoveNode`: refused (nothing changes) while a replica set or a move names
    /// the node; else records it, updates the members, tells the hook, and removes the
    /// controller's learner.
    pub(super) fn apply_remove_node(
        &self,
        offset: u64,
        request_id: u64,
        id: NodeId,
    ) -> Result<Outcome> {
        let state = self.cluster()?.clone();
        {
            let mut meta = lock(&self.inner.control)?;
            let refused = if state.controller_voters.contains(&id) {
                Some(format!("node {id} is a controller voter"))
            } else {
                holds_replicas(&meta, id)
            };
            if let Some(why) = refused {
                drop(meta);
                self.store_applied(offset, request_id)?;
                return Err(Error::InvalidArgument(format!(
                    "{why}: drain it first (topic reassign)"
                )));
            }
            let mut next = meta.clone();
            next.added_nodes.remove(&id);
            if !next.removed_nodes.contains(&id) {
                next.removed_nodes.push(id);
                next.removed_nodes.sort_unstable();
            }
            Self::mark_applied(&mut next, offset, request_id);
            metadata::store(&self.inner.config.data_dir, &next)?;
            self.set_members(&state, &next)?;
            *meta = next;
        }
        if id != state.node_id {
            self.tell_hook(&state, id, None);
        }
        self.order_learners(&state)?;
        tracing::info!(id, "node removed");
        Ok(Outcome::Nodes)
    }

    fn set_members(&self, state: &ClusterState, meta: &metadata::Metadata) -> Result<()> {
        let nodes = membership(state.node_id, &state.controller_voters, meta);
        self.semantics()?
            .producer_ids
            .set_node(state.node_id, &nodes)?;
        *state
            .nodes
            .write()
            .map_err(|_| Error::Runtime("poisoned".into()))? = nodes;
        Ok(())
    }

    fn tell_hook(&self, state: &ClusterState, id: NodeId, addr: Option<&str>) {
        let hook = lock(&state.node_hook).ok().and_then(|h| h.clone());
        if let Some(hook) = hook {
            hook(self, id, addr);
        }
    }

    /// Hands shard 0's host the controller group's learners: every member that is not one of
    /// its voters (only the controller's leader acts on it).
    pub(super) fn order_learners(&self, state: &ClusterState) -> Result<()> {
        let learners: Vec<NodeId> = state
            .nodes()
            .into_iter()
            .filter(|n| !state.controller_voters.contains(n))
            .collect();
        self.send(
            0,
            Request::Run(Box::new(move |_: &LocalShard| {
                if let Some(h) = host() {
                    h.push(|i| i.learners = Some(learners));
                }
            })),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves: members = initial list + added - removed, this node always in, sorted; a move
    // naming a node refuses its removal.
    #[test]
    fn membership_follows_the_metadata() {
        let mut m = metadata::Metadata::new(1);
        assert_eq!(membership(1, &[3, 1, 2], &m), vec![1, 2, 3]);
        m.added_nodes.insert(5, "h:1".into());
        m.added_nodes.insert(4, "h:2".into());
        assert_eq!(membership(2, &[1, 2, 3], &m), vec![1, 2, 3, 4, 5]);
        m.removed_nodes = vec![4];
        assert_eq!(membership(2, &[1, 2, 3], &m), vec![1, 2, 3, 5]);
        // A joining node is a member of its own view before its AddNode applies.
        assert_eq!(membership(9, &[1, 2, 3], &m), vec![1, 2, 3, 5, 9]);
        assert_eq!(holds_replicas(&m, 5), None);
        m.moves.insert(7, vec![1, 2, 5]);
        assert!(holds_replicas(&m, 5).is_some_and(|w| w.contains("move")));
    }
}
