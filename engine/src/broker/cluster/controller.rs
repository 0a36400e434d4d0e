//! The controller's apply thread: committed controller commands (topic create and delete)
//! applied to the engine's metadata in commit order, each exactly once (docs/replication.md,
//! "The controller group").

#[allow(clippy::wildcard_imports)]
use super::*;

/// Applies committed controller commands in order (blocking engine calls: off the shards).
/// Ends when shard 0's host is gone (its sender dropped) or the engine is.
pub(super) fn apply_thread(engine: Weak<Inner>, rx: flume::Receiver<(u64, Command)>) {
    while let Ok((offset, cmd)) = rx.recv() {
        let Some(inner) = engine.upgrade() else {
            return;
        };
        let engine = Engine { inner };
        let request_id = cmd.request_id();
        let outcome = engine.apply_command(offset, cmd);
        let Ok(state) = engine.cluster() else { return };
        if let Some(Err(e)) = outcome.as_ref().map(|r| r.as_ref().map(|_| ())) {
            tracing::debug!(offset, error = %e, "controller command refused");
        }
        let waiter = state
            .waiters
            .lock()
            .ok()
            .and_then(|mut w| w.remove(&request_id));
        if let (Some(w), Some(outcome)) = (waiter, outcome) {
            let _ = w.send(outcome);
        }
    }
    // Shard 0's host is gone: no command applies any more; proposers waiting get an error.
    if let Some(state) = engine.upgrade().and_then(|i| i.cluster.get().cloned()) {
        for (_, w) in state
            .waiters
            .lock()
            .map(|mut w| std::mem::take(&mut *w))
            .unwrap_or_default()
        {
            let _ = w.send(Err(Error::ShuttingDown));
        }
    }
}

impl Engine {
    /// One committed controller command. `None`: applied before (a restart's replay, or a
    /// re-proposed copy), nothing to answer.
    fn apply_command(&self, offset: u64, cmd: Command) -> Option<Result<Outcome>> {
        let request_id = cmd.request_id();
        {
            let meta = lock(&self.inner.control).ok()?;
            if offset < meta.controller_applied || meta.recent_requests.contains(&request_id) {
                return None;
            }
        }
        Some(match cmd {
            Command::CreateTopic {
                name,
                config,
                placement,
                ..
            } => self.apply_create(offset, request_id, &name, config, placement),
            Command::DeleteTopic { name, .. } => self.apply_delete(offset, request_id, &name),
            Command::Security { change, .. } => self.apply_security(offset, request_id, &change),
            Command::Reassign {
                name,
                partition,
                replicas,
                ..
            } => self.apply_reassign(offset, request_id, &name, partition, replicas),
            Command::ReassignDone {
                name,
                partition,
                replicas,
                ..
            } => self.apply_reassign_done(offset, request_id, &name, partition, replicas),
            Command::AddNode { id, peer_addr, .. } => {
                self.apply_add_node(offset, request_id, id, &peer_addr)
            }
            Command::RemoveNode { id, .. } => self.apply_remove_node(offset, request_id, id),
        })
    }

    /// Records a command as applied in the metadata file.
    pub(super) fn mark_applied(next: &mut metadata::Metadata, offset: u64, request_id: u64) {
        next.controller_applied = offset + 1;
        next.recent_requests.push(request_id);
        let excess = next
            .recent_requests
            .len()
            .saturating_sub(RECENT_REQUESTS_MAX);
        next.recent_requests.drain(..excess);
    }

    pub(super) fn store_applied(&self, offset: u64, request_id: u64) -> Result<()> {
        let mut meta = lock(&self.inner.control)?;
        let mut next = meta.clone();
        Self::mark_applied(&mut next, offset, request_id);
        metadata::store(&self.inner.config.data_dir, &next)?;
        *meta = next;
        Ok(())
    }

    fn apply_create(
        &self,
        offset: u64,
        request_id: u64,
        name: &str,
        config: TopicConfig,
        placement: Vec<Vec<NodeId>>,
    ) -> Result<Outcome> {
        let t = {
            let mut meta = lock(&self.inner.control)?;
            if meta.topics.contains_key(name) {
                drop(meta);
                self.store_applied(offset, request_id)?;
                return Err(Error::TopicExists(name.to_string()));
            }
            let mut next = meta.clone();
            let shards = next.place(config.partitions);
            let id = next.next_topic_id;
            next.next_topic_id += 1;
            let first = next.next_group_id;
            next.next_group_id += u64::from(config.partitions);
            let t = TopicMeta {
                id,
                config: config.clone(),
                shards,
                created_ms: crate::batch::now_us() / 1000,
                replica_sets: placement,
                groups: (first..first + u64::from(config.partitions)).collect(),
            };
            next.topics.insert(name.to_string(), t.clone());
            Self::mark_applied(&mut next, offset, request_id);
            metadata::store(&self.inner.config.data_dir, &next)?;
            *meta = next;
            t
        };
        for rx in self.open_partitions(name, &t)? {
            recv(rx)?;
        }
        if name == crate::groups::OFFSETS_TOPIC {
            self.offsets_created(&t)?;
        }
        // Before the replicas: the ack groups apply to the ack logs the queues open.
        self.open_queues(name, &t)?;
        self.open_topic_replicas(name, &t, &std::collections::BTreeMap::new())?;
        let meta = lock(&self.inner.control)?;
        self.publish_routes(&meta);
        tracing::info!(
            topic = name,
            partitions = t.shards.len(),
            replicas = config.replicas,
            "replicated topic created"
        );
        Ok(Outcome::Created(TopicInfo {
            name: name.to_string(),
            id: t.id,
            config,
            shards: t.shards,
        }))
    }

    fn apply_delete(&self, offset: u64, request_id: u64, name: &str) -> Result<Outcome> {
        let t = lock(&self.inner.control)?.topics.get(name).cloned();
        let result = match t {
            None => Err(Error::UnknownTopic(name.to_string())),
            Some(t) => self
                .close_topic_replicas(&t)
                .and_then(|()| self.delete_topic(name))
                .map(|()| Outcome::Deleted),
        };
        self.store_applied(offset, request_id)?;
        result
    }
}
