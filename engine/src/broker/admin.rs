//! Topic administration (the control plane): create, delete, list, describe, retention, and
//! the per-shard figures. Serialized by the control-plane lock and persisted in the metadata
//! file before it takes effect.

use std::sync::Arc;

use super::engine::{Engine, recv};
use crate::api::{ShardStats, TopicConfig, TopicDescription, TopicInfo};
use crate::batch;
use crate::config;
use crate::error::{Error, Result};
use crate::metadata::{self, TopicMeta};
use crate::shard::Request;

impl Engine {
    pub fn create_topic(&self, name: &str, cfg: TopicConfig) -> Result<TopicInfo> {
        let mut created = self.create_topics(&[(name, cfg, false)])?;
        created
            .pop()
            .ok_or_else(|| Error::Runtime("create_topics returned nothing".into()))
    }

    /// Creates several topics with one metadata write (create-then-publish): a crash at any
    /// step leaves all of them or none (a work queue and its dead-letter queue are created
    /// together). `(name, config, may_exist)`: a topic with `may_exist` that exists already
    /// is left as it is (and not returned); any other existing name fails the whole call.
    pub(crate) fn create_topics(
        &self,
        topics: &[(&str, TopicConfig, bool)],
    ) -> Result<Vec<TopicInfo>> {
        for (name, cfg, _) in topics {
            config::validate_topic_name(name)?;
            config::validate_topic_config(cfg)?;
            if cfg.encrypted && self.inner.keyring.is_none() {
                return Err(Error::InvalidArgument(
                    "encrypted topics need an encryption key file (engine.encryption_key_file)"
                        .into(),
                ));
            }
        }
        let mut meta = self
            .inner
            .control
            .lock()
            .map_err(|_| Error::Runtime("poisoned".into()))?;
        let mut next = meta.clone();
        let mut created = Vec::new();
        for (name, cfg, may_exist) in topics {
            if next.topics.contains_key(*name) {
                if *may_exist {
                    continue;
                }
                return Err(Error::TopicExists((*name).to_string()));
            }
            let shards = next.place(cfg.partitions);
            let id = next.next_topic_id;
            next.next_topic_id += 1;
            let t = TopicMeta {
                id,
                config: cfg.clone(),
                shards,
                created_ms: batch::now_us() / 1000,
                replica_sets: Vec::new(),
                groups: Vec::new(),
            };
            next.topics.insert((*name).to_string(), t.clone());
            created.push(((*name).to_string(), t));
        }
        check_descriptors(created.iter().map(|(_, t)| t.config.partitions).sum())?;
        metadata::store(&self.inner.config.data_dir, &next)?;
        *meta = next;
        let mut first_err = None;
        for (name, t) in &created {
            for rx in self.open_partitions(name, t)? {
                if let Err(e) = recv(rx) {
                    first_err.get_or_insert(e);
                }
            }
            if first_err.is_none()
                && let Err(e) = self.open_queues(name, t)
            {
                first_err = Some(e);
            }
        }
        if let Some(e) = first_err {
            // Leave no trace: close and delete what was opened, then forget the topics.
            drop(meta);
            for (name, t) in &created {
                self.undo_create(name, t);
            }
            return Err(e);
        }
        self.publish_routes(&meta);
        Ok(created
            .into_iter()
            .map(|(name, t)| TopicInfo {
                name,
                id: t.id,
                config: t.config,
                shards: t.shards,
            })
            .collect())
    }

    /// Deletes a topic: producers and readers get `UnknownTopic` at once, then its files go.
    pub fn delete_topic(&self, name: &str) -> Result<()> {
        if name == crate::groups::OFFSETS_TOPIC {
            return Err(Error::InvalidArgument(format!(
                "'{name}' is internal (committed offsets)"
            )));
        }
        self.delete_topic_unchecked(name)
    }

    /// [`Engine::delete_topic`] without the internal-topic check (a cluster's first start
    /// replaces the single-node `__offsets`: groups/replicated.rs).
    pub(crate) fn delete_topic_unchecked(&self, name: &str) -> Result<()> {
        let mut meta = self
            .inner
            .control
            .lock()
            .map_err(|_| Error::Runtime("poisoned".into()))?;
        let Some(t) = meta.topics.get(name).cloned() else {
            return Err(Error::UnknownTopic(name.to_string()));
        };
        let mut next = meta.clone();
        next.topics.remove(name);
        metadata::store(&self.inner.config.data_dir, &next)?;
        *meta = next;
        self.publish_routes(&meta);
        let key: Arc<str> = Arc::from(name);
        let mut rxs = Vec::new();
        for (p, shard) in t.shards.iter().enumerate() {
            let (tx, rx) = flume::bounded(1);
            self.send(
                *shard as usize,
                Request::Close {
                    key: (key.clone(), p as u32),
                    delete: true,
                    reply: tx,
                },
            )?;
            rxs.push(rx);
        }
        for rx in rxs {
            recv(rx)?;
        }
        let dir = metadata::topic_dir(&self.inner.config.data_dir, name, t.id);
        crate::storage::crash_points::step("rmdir topic");
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::io(dir.display(), e));
            }
            _ => {}
        }
        metadata::sync_dir(&self.inner.config.data_dir.join("topics"))
    }

    /// Every user topic (internal ones, such as `__offsets`, are left out; describe them by
    /// name).
    pub fn list_topics(&self) -> Vec<TopicInfo> {
        let mut all = self.all_topics();
        all.retain(|t| !crate::groups::is_internal(&t.name));
        all
    }

    fn all_topics(&self) -> Vec<TopicInfo> {
        let Ok(meta) = self.inner.control.lock() else {
            return Vec::new();
        };
        meta.topics
            .iter()
            .map(|(n, t)| TopicInfo {
                name: n.clone(),
                id: t.id,
                config: t.config.clone(),
                shards: t.shards.clone(),
            })
            .collect()
    }

    pub fn describe_topic(&self, name: &str) -> Result<TopicDescription> {
        let info = self
            .all_topics()
            .into_iter()
            .find(|t| t.name == name)
            .ok_or_else(|| Error::UnknownTopic(name.to_string()))?;
        let mut partitions = Vec::with_capacity(info.shards.len());
        for p in 0..info.shards.len() as u32 {
            partitions.push(self.describe_partition(name, p)?);
        }
        Ok(TopicDescription { info, partitions })
    }

    /// Changes a topic's retention (persisted, applied by the next retention pass).
    pub fn set_retention(&self, topic: &str, bytes: Option<u64>, ms: Option<u64>) -> Result<()> {
        self.alter_retention(topic, |_| bytes, |_| ms).map(|_| ())
    }

    /// Changes a topic's retention from its current settings (read and written under the
    /// control-plane lock, so concurrent changes do not lose each other's updates). Returns
    /// the topic with its new settings.
    pub fn alter_retention(
        &self,
        topic: &str,
        bytes: impl FnOnce(Option<u64>) -> Option<u64>,
        ms: impl FnOnce(Option<u64>) -> Option<u64>,
    ) -> Result<TopicInfo> {
        let mut meta = self
            .inner
            .control
            .lock()
            .map_err(|_| Error::Runtime("poisoned".into()))?;
        let mut next = meta.clone();
        let t = next
            .topics
            .get_mut(topic)
            .ok_or_else(|| Error::UnknownTopic(topic.to_string()))?;
        let (bytes, ms) = (bytes(t.config.retention_bytes), ms(t.config.retention_ms));
        t.config.retention_bytes = bytes;
        t.config.retention_ms = ms;
        let info = TopicInfo {
            name: topic.to_string(),
            id: t.id,
            config: t.config.clone(),
            shards: t.shards.clone(),
        };
        let shards = t.shards.clone();
        metadata::store(&self.inner.config.data_dir, &next)?;
        *meta = next;
        let name: Arc<str> = Arc::from(topic);
        for (p, s) in shards.iter().enumerate() {
            let (tx, rx) = flume::bounded(1);
            self.send(
                *s as usize,
                Request::SetRetention {
                    key: (name.clone(), p as u32),
                    bytes,
                    ms,
                    reply: tx,
                },
            )?;
            recv(rx)?;
        }
        Ok(info)
    }

    /// A copy of every shard's metrics (engine/src/metrics.rs), one request per shard; the
    /// caller (a scrape thread) merges and encodes them. Must not be called on a shard thread.
    pub fn metrics_snapshot(&self) -> Result<Vec<crate::metrics::ShardMetricsSnapshot>> {
        let mut rxs = Vec::with_capacity(self.shard_count());
        for s in 0..self.shard_count() {
            let (tx, rx) = flume::bounded(1);
            self.send(s, Request::Metrics { reply: tx })?;
            rxs.push(rx);
        }
        let mut out: Vec<crate::metrics::ShardMetricsSnapshot> =
            rxs.into_iter().map(recv).collect::<Result<_>>()?;
        // Figures that join two owners, added here on the scrape thread (never on a shard).
        crate::groups::admin::group_samples(self, &mut out);
        crate::queue::dlq_samples(self, &mut out);
        Ok(out)
    }

    pub fn shard_stats(&self) -> Result<Vec<ShardStats>> {
        let mut out = Vec::new();
        for s in 0..self.shard_count() {
            let (tx, rx) = flume::bounded(1);
            self.send(s, Request::Stats { reply: tx })?;
            out.push(recv(rx)?);
        }
        Ok(out)
    }

    /// Runs one retention pass on every shard now (admin tools and tests; shards also run
    /// it every `retention_check_interval_ms`).
    pub fn apply_retention_now(&self) -> Result<()> {
        let mut rxs = Vec::new();
        for s in 0..self.shard_count() {
            let (tx, rx) = flume::bounded(1);
            self.send(s, Request::ApplyRetention { reply: tx })?;
            rxs.push(rx);
        }
        for rx in rxs {
            recv(rx)?;
        }
        Ok(())
    }
}

impl Engine {
    /// Grows a topic to `partitions` (docs/semantics.md, "Adding partitions"): the new
    /// partitions are placed on the least loaded shards, persisted in the metadata file, opened
    /// (with their queue state when the topic is a work queue) and then routed. Existing
    /// partitions and their data are untouched. Shrinking is refused; asking for the current
    /// count changes nothing. Keyed producers place a key by `crc32c(key) % partitions`, so
    /// after growing, a key lands in a new partition unless its hash gives the same remainder
    /// for both counts.
    pub fn add_partitions(&self, name: &str, partitions: u32) -> Result<TopicInfo> {
        let mut meta = self
            .inner
            .control
            .lock()
            .map_err(|_| Error::Runtime("poisoned".into()))?;
        let Some(current) = meta.topics.get(name).cloned() else {
            return Err(Error::UnknownTopic(name.to_string()));
        };
        if crate::groups::is_internal(name) {
            return Err(Error::InvalidArgument(format!("'{name}' is internal")));
        }
        let old = current.shards.len() as u32;
        if partitions < old {
            return Err(Error::InvalidArgument(format!(
                "topic '{name}' has {old} partitions; partitions can only be added, not removed"
            )));
        }
        let info = |t: &TopicMeta| TopicInfo {
            name: name.to_string(),
            id: t.id,
            config: t.config.clone(),
            shards: t.shards.clone(),
        };
        if partitions == old {
            return Ok(info(&current));
        }
        // Checked before placing: `place` allocates per partition, so an unchecked count
        // (u32::MAX from a request) would allocate gigabytes first.
        config::validate_topic_config(&TopicConfig {
            partitions,
            ..current.config.clone()
        })?;
        check_descriptors(partitions - old)?;
        let mut next = meta.clone();
        let added = next.place(partitions - old);
        let t = next
            .topics
            .get_mut(name)
            .ok_or_else(|| Error::UnknownTopic(name.to_string()))?;
        t.shards.extend(added);
        t.config.partitions = partitions;
        config::validate_topic_config(&t.config)?;
        let t = t.clone();
        metadata::store(&self.inner.config.data_dir, &next)?;
        *meta = next;
        // Opening asks every partition's shard; the ones open already answer "already open".
        let mut first_err = None;
        for (p, rx) in self.open_partitions(name, &t)?.into_iter().enumerate() {
            if let Err(e) = recv(rx)
                && p as u32 >= old
            {
                first_err.get_or_insert(e);
            }
        }
        if first_err.is_none()
            && let Err(e) = self.open_queues(name, &t)
        {
            first_err = Some(e);
        }
        self.publish_routes(&meta);
        tracing::info!(
            topic = name,
            from = old,
            to = partitions,
            "partitions added"
        );
        match first_err {
            Some(e) => Err(e),
            None => Ok(info(&t)),
        }
    }
}

/// Descriptors one partition holds open (its active segment's log and index, and one spare for
/// a roll or a reader), for the admission check of new partitions.
const DESCRIPTORS_PER_PARTITION: usize = 3;
/// Descriptors kept free for connections, listeners and the files of control operations.
const DESCRIPTORS_HEADROOM: usize = 512;

/// Refuses `partitions` more partitions when their descriptors would not fit the process's
/// open-files limit (RLIMIT_NOFILE), naming the limit (issue 16, finding 2).
fn check_descriptors(partitions: u32) -> Result<()> {
    let (Some(limit), Some(open)) = (
        crate::util::fd::open_files_limit(),
        crate::util::fd::open_files(),
    ) else {
        return Ok(());
    };
    let need = (partitions as usize).saturating_mul(DESCRIPTORS_PER_PARTITION);
    let free = limit.saturating_sub(open + DESCRIPTORS_HEADROOM);
    if need > free {
        return Err(Error::InvalidArgument(format!(
            "{partitions} partitions need about {need} open files, but the open-files limit \
             (RLIMIT_NOFILE {limit}) leaves {free} ({open} open, {DESCRIPTORS_HEADROOM} kept \
             for connections): raise the limit or create fewer partitions"
        )));
    }
    Ok(())
}

impl Engine {
    /// Undoes a CreateTopic whose partitions could not all be opened: closes (deleting) the
    /// ones that were, removes the topic from the metadata and its directory from disk. A crash
    /// half-way leaves either the topic in the metadata (the next start opens it) or an orphan
    /// directory (the next start removes it).
    fn undo_create(&self, name: &str, t: &TopicMeta) {
        let key: Arc<str> = Arc::from(name);
        for (p, shard) in t.shards.iter().enumerate() {
            let (tx, rx) = flume::bounded(1);
            let close = Request::Close {
                key: (key.clone(), p as u32),
                delete: true,
                reply: tx,
            };
            if self.send(*shard as usize, close).is_ok() {
                let _ = recv(rx);
            }
        }
        if let Ok(mut meta) = self.inner.control.lock() {
            let mut next = meta.clone();
            next.topics.remove(name);
            match metadata::store(&self.inner.config.data_dir, &next) {
                Ok(()) => *meta = next,
                Err(e) => tracing::error!(topic = name, error = %e, "cannot undo a failed create"),
            }
            self.publish_routes(&meta);
        }
        let dir = metadata::topic_dir(&self.inner.config.data_dir, name, t.id);
        let _ = std::fs::remove_dir_all(&dir);
        let _ = metadata::sync_dir(&self.inner.config.data_dir.join("topics"));
    }
}

impl Engine {
    /// Whether `producer_id` was allocated by this broker (InitProducer): the network ingress
    /// refuses batches carrying any other id (issue 16, finding 3).
    pub fn producer_id_allocated(&self, producer_id: u64) -> bool {
        self.semantics()
            .is_ok_and(|s| s.producer_ids.allocated(producer_id))
    }
}
