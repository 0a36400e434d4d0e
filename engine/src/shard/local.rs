//! The extension point: what the layer above (the broker) installs on a shard, and the
//! primitives it may use there (`LocalShard`, `LocalPartition`, `current`). Nothing here
//! imports from the broker: it hands its state down, never gets a pointer back up.

use super::*;

// ---------------------------------------------------------------------------------------------
// The extension point: what the layer above installs on a shard and what it may use there
// ---------------------------------------------------------------------------------------------

/// State a layer above keeps on each shard (the broker's work queues), installed when the shard
/// starts. The shard calls these hooks and knows nothing else about it.
pub trait ShardExtension: 'static {
    /// Before a metrics scrape is taken: bring the extension's figures up to date.
    fn refresh_for_metrics<'a>(
        &'a self,
        shard: &'a LocalShard,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + 'a>>;
    /// The extension's samples of the generic families (`metrics::EXTRA_FAMILIES`).
    fn collect_samples(&self, shard: &LocalShard, out: &mut Vec<Sample>);
    /// The partition `key` is being deleted (its topic was): drop what depends on it.
    fn partition_deleted(&self, shard: &LocalShard, key: &PartitionKey);
    /// For [`LocalShard::extension`].
    fn into_any(self: Rc<Self>) -> Rc<dyn std::any::Any>;
}

/// Where the shard sends a produce to a replicated partition (issue 14): `(group, key, batch,
/// acks, reply)`. Installed by the broker's cluster layer with
/// [`LocalShard::set_replication_hook`].
pub(crate) type ReplHook =
    Rc<dyn Fn(u64, PartitionKey, ValidatedBatch, Acks, Option<Reply<ProduceAck>>)>;

/// How long [`LocalShard::restart_partition`] waits for a partition's running jobs to end (it
/// runs in the replica host's round: short, the caller asks again later).
const RESTART_WAIT_MAX: Duration = Duration::from_millis(200);
/// How often it checks again when no job end signals it.
const RESTART_POLL: Duration = Duration::from_millis(10);

/// An extension that does nothing (a shard started without one).
pub struct NoExtension;

impl ShardExtension for NoExtension {
    fn refresh_for_metrics<'a>(
        &'a self,
        _: &'a LocalShard,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + 'a>> {
        Box::pin(std::future::ready(()))
    }
    fn collect_samples(&self, _: &LocalShard, _: &mut Vec<Sample>) {}
    fn partition_deleted(&self, _: &LocalShard, _: &PartitionKey) {}
    fn into_any(self: Rc<Self>) -> Rc<dyn std::any::Any> {
        self
    }
}

std::thread_local! {
    /// The shard running on this thread (set by `Shard::run`), for [`current`].
    pub(super) static CURRENT: RefCell<Option<Rc<Shard>>> = const { RefCell::new(None) };
}

/// Clears [`CURRENT`] when the shard's main loop ends.
pub(super) struct ClearCurrent;

impl Drop for ClearCurrent {
    fn drop(&mut self) {
        CURRENT.with(|c| c.borrow_mut().take());
    }
}

/// The shard running on the calling thread, if it belongs to the engine `owner` (a caller on
/// its own shard then skips the inbox: no channel hop, no second task).
pub fn current(owner: u64) -> Option<LocalShard> {
    CURRENT.with(|c| {
        c.borrow()
            .as_ref()
            .filter(|s| s.owner == owner)
            .map(|s| LocalShard { shard: s.clone() })
    })
}

/// The primitives of one shard for code running on it: local produce, read and wait on the
/// partitions it owns. Not `Send`: it never leaves the shard's thread.
#[derive(Clone)]
pub struct LocalShard {
    pub(super) shard: Rc<Shard>,
}

/// One partition of the calling shard.
#[derive(Clone)]
pub struct LocalPartition {
    pub(super) p: Rc<Partition>,
}

impl LocalShard {
    pub fn id(&self) -> usize {
        self.shard.id
    }

    /// The shard is shutting down: long-running tasks should end.
    pub fn is_closing(&self) -> bool {
        self.shard.is_closing()
    }

    /// The extension installed at start, if it is a `T`.
    pub fn extension<T: 'static>(&self) -> Option<Rc<T>> {
        self.shard.extension.clone().into_any().downcast::<T>().ok()
    }

    pub fn partition(&self, key: &PartitionKey) -> Result<LocalPartition> {
        self.shard.partition(key).map(|p| LocalPartition { p })
    }

    /// Appends a batch now, in call order; `reply` (if any) gets the acknowledgement at the
    /// level `acks` asks for.
    pub(crate) fn produce(
        &self,
        key: PartitionKey,
        batch: ValidatedBatch,
        acks: Acks,
        reply: Option<Reply<ProduceAck>>,
    ) {
        self.shard.produce(key, batch, acks, reply);
    }

    /// Waits while the shard holds more unwritten bytes than allowed (the bound the inbox
    /// applies to requests from other threads, applied to a caller on the shard itself).
    pub async fn wait_for_room(&self) {
        let s = &self.shard;
        while s.unflushed.get() > s.cfg.unflushed_bytes_max_per_shard && !s.is_closing() {
            let seen = s.flushed.version();
            s.flushed.changed(seen).await;
        }
    }

    /// Reads whole batches from `offset`, waiting up to `max_wait` for data.
    pub async fn fetch(
        &self,
        key: &PartitionKey,
        offset: u64,
        max_bytes: usize,
        max_records: usize,
        max_wait: Duration,
    ) -> Result<FetchResponse> {
        self.fetch_isolated(
            key,
            offset,
            max_bytes,
            max_records,
            max_wait,
            Isolation::Appended,
        )
        .await
    }

    /// [`LocalShard::fetch`] seeing what `isolation` lets it see (docs/semantics.md, "What
    /// readers see").
    pub async fn fetch_isolated(
        &self,
        key: &PartitionKey,
        offset: u64,
        max_bytes: usize,
        max_records: usize,
        max_wait: Duration,
        isolation: Isolation,
    ) -> Result<FetchResponse> {
        let p = self.shard.partition(key)?;
        fetch(&p, offset, max_bytes, max_records, max_wait, isolation).await
    }

    /// Opens (recovers) a partition log on this shard under `key`.
    pub async fn open_partition(
        &self,
        key: PartitionKey,
        dir: PathBuf,
        config: LogConfig,
    ) -> Result<RecoveryReport> {
        let (tx, rx) = flume::bounded(1);
        self.shard.clone().open(key, dir, config, tx).await;
        rx.recv_async().await.map_err(|_| Error::ShuttingDown)?
    }

    /// Closes a partition and forgets it (its files are the caller's to remove).
    pub fn delete_partition(&self, key: PartitionKey) {
        let (tx, _rx) = flume::bounded(1);
        rt::spawn_local(self.shard.clone().close(key, true, tx));
    }
}

impl LocalPartition {
    pub fn key(&self) -> &PartitionKey {
        &self.p.key
    }

    pub fn watermarks(&self) -> Watermarks {
        self.p.watermarks()
    }

    /// The partition's change counter: pass it to [`LocalPartition::changed`].
    pub fn version(&self) -> u64 {
        self.p.notify.version()
    }

    /// Resolves once the high watermark moved (or the partition closed) after `seen`.
    pub async fn changed(&self, seen: u64) {
        self.p.notify.changed(seen).await;
    }

    /// How the partition's batches are sealed at rest, if its topic is encrypted.
    pub fn encryption(&self) -> Option<crate::crypto::TopicEncryption> {
        self.p.core.borrow().log().config().encryption.clone()
    }

    /// One read from `offset` without waiting (from the cache when recent).
    pub async fn read(
        &self,
        offset: u64,
        max_bytes: usize,
        max_records: usize,
    ) -> Result<FetchResponse> {
        read_once(&self.p, offset, max_bytes, max_records).await
    }
}

impl LocalShard {
    /// Installs where produces to replicated partitions go (issue 14).
    pub(crate) fn set_replication_hook(&self, hook: ReplHook) {
        *self.shard.repl_hook.borrow_mut() = Some(hook);
    }

    /// Marks a partition of this shard as replicated by Raft group `group` (`None`: plain):
    /// its produces go to the replication hook from now on.
    pub fn set_replicated(&self, key: &PartitionKey, group: Option<u64>) -> Result<()> {
        self.shard.partition(key)?.replicated.set(group);
        Ok(())
    }

    /// Appends a committed batch of a replicated partition at its next offset (no
    /// idempotence refusal; docs/replication.md, "Replicate, then apply").
    pub fn apply_committed(&self, key: &PartitionKey, batch: ValidatedBatch) -> Result<ProduceAck> {
        self.shard.apply_committed(key, batch)
    }

    /// A retry of a batch the partition log holds already (its producer's state says so):
    /// the original offsets. Replicated partitions ask this before proposing, for retries
    /// older than the Raft side index keeps (issue 14).
    pub fn applied_duplicate(
        &self,
        key: &PartitionKey,
        batch: &ValidatedBatch,
    ) -> Option<ProduceAck> {
        let h = batch.header();
        if h.producer.producer_id == 0 {
            return None;
        }
        let p = self.shard.partition(key).ok()?;
        let core = p.core.borrow();
        match core.producers().check(h.producer, h.record_count) {
            Ok(crate::idempotence::Verdict::Duplicate {
                base_offset,
                last_offset,
            }) => Some(ProduceAck {
                base_offset,
                last_offset,
            }),
            _ => None,
        }
    }

    /// Restarts a partition's log empty at `start`, at or above its end (docs/storage.md,
    /// "Restarting a log at an offset"; a replica whose leader's retention deleted what it
    /// lacks). Waits (bounded: 200 ms, then `Busy`) for a running flush, producer snapshot or
    /// retention roll to end; appends are refused until it is done. Returns the new watermarks.
    pub async fn restart_partition(&self, key: &PartitionKey, start: u64) -> Result<Watermarks> {
        let p = self.shard.partition(key)?;
        let deadline = Instant::now() + RESTART_WAIT_MAX;
        let mut out = Vec::new();
        let job = loop {
            let seen = p.jobs_ended.version();
            let begun = p.core.borrow_mut().begin_restart(start, &mut out);
            match begun {
                Ok(job) => break job,
                Err(Error::Busy(_)) if Instant::now() < deadline => {
                    // A flush or snapshot signals its end; a retention roll does not: poll.
                    rt::timeout(RESTART_POLL, p.jobs_ended.changed(seen)).await;
                }
                Err(e) => return Err(e),
            }
        };
        self.shard.perform(&p, std::mem::take(&mut out));
        let result = job.run(now_ms()).await;
        let cached = p.core.borrow().log().cache_bytes();
        let restarted = p.core.borrow_mut().restarted(result, &mut out);
        if restarted.is_ok() {
            let total = &self.shard.cache_total;
            total.set(total.get().saturating_sub(cached));
        }
        self.shard.perform(&p, out);
        restarted
    }

    /// The durable end of a partition's log (offsets below survive a power loss).
    pub fn durable_offset(&self, key: &PartitionKey) -> Option<u64> {
        Some(self.shard.partition(key).ok()?.watermarks().durable_offset)
    }

    /// Whether the shard's main loop is this engine's (`owner`).
    pub fn engine_id(&self) -> u64 {
        self.shard.owner
    }
}
