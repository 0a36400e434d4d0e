//! A shard: one executor that owns its partitions outright (docs/architecture.md, "Shards").
//! Requests arrive on one bounded flume channel, from any thread and from other shards. Nothing
//! here is shared with another thread: partition state lives in `Rc`/`RefCell`, and a borrow is
//! never held across an await.
//!
//! Each partition's decisions (idempotence, group commit, durable acks in offset order, the sync
//! timer, repair, snapshots, retention) are made by its sans-IO core, `crate::partition`; this
//! file is the runtime shell that performs the core's actions: it replies, wakes readers, spawns
//! the flush loop (one task per partition while the core plans flushes: it runs one job, a group
//! commit, hands the result back, and runs the next one the core plans), timers and I/O jobs.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::batch::ValidatedBatch;

use crate::batch::{self, BatchHeader};
use crate::config::EngineConfig;
use crate::error::{Error, Result};
use crate::idempotence::SnapshotJob;
use crate::log::{self, LogConfig, ReadPlan, ReadResult, RecoveryReport, SealJob, Watermarks};
use crate::metrics::{Sample, ShardMetrics, ShardMetricsSnapshot};
use crate::partition::{
    Action, CoreConfig, Flush, FlushReport, PartitionCore, Produced, RepairJob,
};
use crate::rt::{self, DmaStorage};
use crate::util::LocalNotify;

mod local;
mod read;

use local::{CURRENT, ClearCurrent};
pub use local::{LocalPartition, LocalShard, NoExtension, ShardExtension, current};

pub(crate) use read::read_once;
use read::{fetch, list_offset, subscription};

/// Reply channel of one request (bounded(1)).
pub(crate) type Reply<T> = flume::Sender<Result<T>>;

pub(crate) use crate::api::PartitionKey;
pub use crate::api::{
    Acks, FetchResponse, Isolation, OffsetSpec, PartitionInfo, ProduceAck, ShardStats,
};

/// Requests handled back to back before the shard's main loop yields to I/O.
const REQUESTS_PER_YIELD: u32 = 32;

/// Code run on a shard on behalf of a layer above (the broker's work queues, the network
/// server's listeners): it gets the shard's local primitives.
pub type LocalTask = Box<dyn FnOnce(&LocalShard) + Send>;

pub(crate) enum Request {
    Open {
        key: PartitionKey,
        dir: PathBuf,
        config: LogConfig,
        reply: Reply<RecoveryReport>,
    },
    Close {
        key: PartitionKey,
        delete: bool,
        reply: Reply<()>,
    },
    SetRetention {
        key: PartitionKey,
        bytes: Option<u64>,
        ms: Option<u64>,
        reply: Reply<()>,
    },
    Produce {
        key: PartitionKey,
        batch: ValidatedBatch,
        acks: Acks,
        reply: Option<Reply<ProduceAck>>,
    },
    Fetch {
        key: PartitionKey,
        offset: u64,
        max_bytes: usize,
        max_records: usize,
        max_wait: Duration,
        isolation: Isolation,
        reply: Reply<FetchResponse>,
    },
    ListOffset {
        key: PartitionKey,
        spec: OffsetSpec,
        reply: Reply<u64>,
    },
    Subscribe {
        key: PartitionKey,
        from: u64,
        max_bytes: usize,
        isolation: Isolation,
        tx: flume::Sender<Result<FetchResponse>>,
        reply: Reply<()>,
    },
    Describe {
        key: PartitionKey,
        reply: Reply<PartitionInfo>,
    },
    Stats {
        reply: Reply<ShardStats>,
    },
    Metrics {
        reply: Reply<ShardMetricsSnapshot>,
    },
    ApplyRetention {
        reply: Reply<()>,
    },
    Run(LocalTask),
    Shutdown {
        reply: Reply<()>,
    },
}

/// The shell's ack token for the partition core: where to reply, and when the batch was
/// appended (the append latency metrics, docs/operations.md).
pub(crate) struct AckToken {
    reply: Reply<ProduceAck>,
    since: Instant,
}

type Core = PartitionCore<DmaStorage, AckToken>;
type Actions = Vec<Action<DmaStorage, AckToken>>;

/// One partition on its shard: the sans-IO core (engine/src/partition/) plus what only the
/// runtime has: the reader wake-up, and counters.
pub(crate) struct Partition {
    pub(crate) key: PartitionKey,
    pub(crate) core: RefCell<Core>,
    /// Bumped whenever the high watermark moves or the partition closes.
    pub(crate) notify: LocalNotify,
    /// Bumped whenever a flush or snapshot job ends (a close waits for those running).
    jobs_ended: LocalNotify,
    produced_records: Cell<u64>,
    produced_bytes: Cell<u64>,
    fetched_records: Cell<u64>,
    fetched_bytes: Cell<u64>,
    /// Reads served from the cache, and from disk.
    cache_hits: Cell<u64>,
    cache_misses: Cell<u64>,
    /// The Raft group of a replicated partition (issue 14): its produces go to the shard's
    /// replication hook, and its log takes only committed batches (`apply_committed`).
    pub(crate) replicated: Cell<Option<u64>>,
}

impl Partition {
    fn new(key: PartitionKey, core: Core) -> Self {
        Partition {
            key,
            core: RefCell::new(core),
            notify: LocalNotify::default(),
            jobs_ended: LocalNotify::default(),
            produced_records: Cell::new(0),
            produced_bytes: Cell::new(0),
            fetched_records: Cell::new(0),
            fetched_bytes: Cell::new(0),
            cache_hits: Cell::new(0),
            cache_misses: Cell::new(0),
            replicated: Cell::new(None),
        }
    }

    pub(crate) fn watermarks(&self) -> Watermarks {
        self.core.borrow().watermarks()
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.core.borrow().is_closed()
    }
}

/// Polls of [`Shard::release_files`] for closed partitions' files to be dropped, and their
/// interval: together the 1 s bound of a shutdown's file release.
const RELEASE_POLLS_MAX: u32 = 200;
const RELEASE_POLL_INTERVAL: Duration = Duration::from_millis(5);
/// A sleep long enough for one more reactor cycle (glommio closes dropped files on the next).
const REACTOR_CYCLE_WAIT: Duration = Duration::from_millis(1);

pub(crate) struct Shard {
    id: usize,
    /// Partitions closed at shutdown, until their files are released (`release_files`).
    closed_partitions: RefCell<Vec<std::rc::Weak<Partition>>>,
    cfg: EngineConfig,
    partitions: RefCell<HashMap<PartitionKey, Rc<Partition>>>,
    cache_total: Cell<usize>,
    /// Bytes appended on this shard and not yet taken by a flush.
    unflushed: Cell<usize>,
    /// Notified after every flush, for the main loop waiting on `unflushed`.
    flushed: LocalNotify,
    stats: RefCell<ShardStats>,
    metrics: RefCell<ShardMetrics>,
    closing: Cell<bool>,
    /// Which engine this shard belongs to (`current`).
    owner: u64,
    /// State of the layer above (the broker's work queues).
    extension: Rc<dyn ShardExtension>,
    /// Where produces to a replicated partition go (installed by the broker's cluster layer).
    pub(crate) repl_hook: RefCell<Option<local::ReplHook>>,
}

fn now_ms() -> i64 {
    batch::now_us() / 1000
}

/// Most bytes one read of a timestamp search takes (`list_offset` by time).
const TIME_SEARCH_READ_BYTES: usize = 1 << 20;
/// How often an idle subscription checks whether its subscriber is still there.
const SUBSCRIPTION_IDLE_CHECK: Duration = Duration::from_secs(2);
/// Longest wait for a running flush or snapshot job at close.
const CLOSE_WAIT_MAX: Duration = Duration::from_secs(30);

impl Shard {
    pub(crate) fn new(
        id: usize,
        cfg: EngineConfig,
        owner: u64,
        extension: Rc<dyn ShardExtension>,
    ) -> Rc<Self> {
        Rc::new(Shard {
            id,
            closed_partitions: RefCell::new(Vec::new()),
            cfg,
            partitions: RefCell::new(HashMap::new()),
            cache_total: Cell::new(0),
            unflushed: Cell::new(0),
            flushed: LocalNotify::default(),
            stats: RefCell::new(ShardStats {
                shard: id,
                ..Default::default()
            }),
            metrics: RefCell::new(ShardMetrics::default()),
            closing: Cell::new(false),
            owner,
            extension,
            repl_hook: RefCell::new(None),
        })
    }

    /// The shard's main loop: serves requests until shutdown.
    pub(crate) async fn run(self: Rc<Self>, rx: flume::Receiver<Request>) {
        if let Err(e) = rt::prime_dma_probe(&self.cfg.data_dir).await {
            tracing::warn!(shard = self.id, error = %e, "direct I/O probe failed");
        }
        rt::spawn_local(self.clone().retention_loop());
        CURRENT.with(|c| *c.borrow_mut() = Some(self.clone()));
        let _current = ClearCurrent;
        let mut handled = 0u32;
        while let Ok(req) = rx.recv_async().await {
            if let Request::Shutdown { reply } = req {
                self.closing.set(true);
                let r = self.close_all().await;
                self.release_files().await;
                let _ = reply.send(r);
                return;
            }
            self.handle(req);
            // While the inbox stays full, `recv_async` never returns Pending: give the flush
            // loops and io_uring completions their turn, or the high watermark stalls.
            handled = handled.wrapping_add(1);
            if handled.is_multiple_of(REQUESTS_PER_YIELD) {
                rt::yield_to_io().await;
            }
            // Memory bound: while too much is appended but unwritten, take no more requests;
            // senders then wait on the bounded inbox (backpressure for every ack level).
            while self.unflushed.get() > self.cfg.unflushed_bytes_max_per_shard {
                let seen = self.flushed.version();
                self.flushed.changed(seen).await;
            }
        }
        // Every sender is gone without a shutdown: still close cleanly.
        self.closing.set(true);
        let _ = self.close_all().await;
        self.release_files().await;
    }

    /// After `close_all`: lets the reactor run the closes of the dropped files. glommio closes a
    /// file dropped without an explicit `close` asynchronously, on the reactor's next cycle; if
    /// the executor ends first the descriptor is never closed (an embedding program that
    /// shuts the engine down and reopens it would leak one per segment and index file). The
    /// other tasks holding partitions (flush loops, retention, queue tickers) see `closing`
    /// and end within a tick; bounded: 1 s.
    async fn release_files(&self) {
        let closed = std::mem::take(&mut *self.closed_partitions.borrow_mut());
        for _ in 0..RELEASE_POLLS_MAX {
            if closed.iter().all(|p| p.strong_count() == 0) {
                break;
            }
            rt::sleep(RELEASE_POLL_INTERVAL).await;
        }
        // One more reactor cycle submits the closes of the files dropped last.
        rt::sleep(REACTOR_CYCLE_WAIT).await;
    }

    pub(crate) fn is_closing(&self) -> bool {
        self.closing.get()
    }

    fn local(self: &Rc<Self>) -> LocalShard {
        LocalShard {
            shard: self.clone(),
        }
    }

    pub(crate) fn partition(&self, key: &PartitionKey) -> Result<Rc<Partition>> {
        self.partitions
            .borrow()
            .get(key)
            .cloned()
            .ok_or_else(|| Error::UnknownPartition {
                topic: key.0.to_string(),
                partition: key.1,
            })
    }

    fn handle(self: &Rc<Self>, req: Request) {
        match req {
            Request::Open {
                key,
                dir,
                config,
                reply,
            } => {
                rt::spawn_local(self.clone().open(key, dir, config, reply));
            }
            Request::Close { key, delete, reply } => {
                if delete {
                    self.extension.partition_deleted(&self.local(), &key);
                }
                rt::spawn_local(self.clone().close(key, delete, reply));
            }
            Request::SetRetention {
                key,
                bytes,
                ms,
                reply,
            } => {
                let r = self
                    .partition(&key)
                    .map(|p| p.core.borrow_mut().set_retention(bytes, ms));
                let _ = reply.send(r);
            }
            Request::Produce {
                key,
                batch,
                acks,
                reply,
            } => self.produce(key, batch, acks, reply),
            Request::Fetch {
                key,
                offset,
                max_bytes,
                max_records,
                max_wait,
                isolation,
                reply,
            } => match self.partition(&key) {
                Ok(p) => rt::spawn_local(async move {
                    let _ = reply
                        .send(fetch(&p, offset, max_bytes, max_records, max_wait, isolation).await);
                }),
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Request::ListOffset { key, spec, reply } => match self.partition(&key) {
                Ok(p) => rt::spawn_local(async move {
                    let _ = reply.send(list_offset(&p, spec).await);
                }),
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Request::Subscribe {
                key,
                from,
                max_bytes,
                isolation,
                tx,
                reply,
            } => {
                let r = self.partition(&key).map(|p| {
                    rt::spawn_local(subscription(p, from, max_bytes, isolation, tx));
                });
                let _ = reply.send(r);
            }
            Request::Describe { key, reply } => {
                let _ = reply.send(self.partition(&key).map(|p| self.describe(&p)));
            }
            Request::Stats { reply } => {
                let _ = reply.send(Ok(self.stats()));
            }
            Request::Metrics { reply } => {
                let shard = self.clone();
                rt::spawn_local(async move {
                    let local = shard.local();
                    shard.extension.refresh_for_metrics(&local).await;
                    let mut snapshot = shard.metrics_snapshot();
                    shard
                        .extension
                        .collect_samples(&local, &mut snapshot.samples);
                    let _ = reply.send(Ok(snapshot));
                });
            }
            Request::ApplyRetention { reply } => {
                let shard = self.clone();
                rt::spawn_local(async move {
                    shard.apply_retention().await;
                    let _ = reply.send(Ok(()));
                });
            }
            Request::Run(task) => task(&self.local()),
            Request::Shutdown { .. } => {}
        }
    }

    fn stats(&self) -> ShardStats {
        let mut s = self.stats.borrow().clone();
        s.partitions = self.partitions.borrow().len();
        s.cache_bytes = self.cache_total.get();
        s
    }

    /// A copy of the shard's metrics for a scrape (engine/src/metrics.rs).
    fn metrics_snapshot(&self) -> ShardMetricsSnapshot {
        let mut out = ShardMetricsSnapshot {
            stats: self.stats(),
            unflushed_bytes: self.unflushed.get() as u64,
            ..Default::default()
        };
        self.metrics.borrow().fill(&mut out);
        let parts: Vec<Rc<Partition>> = self.partitions.borrow().values().cloned().collect();
        for p in &parts {
            out.cache_hits += p.cache_hits.get();
            out.cache_misses += p.cache_misses.get();
            out.partitions.push(self.describe(p));
        }
        out.partitions
            .sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        self.collect_samples(&out.partitions, &mut out.samples);
        out
    }

    /// Figures of the generic families (`metrics::EXTRA_FAMILIES`): subsystems that live on
    /// the shard push theirs here.
    fn collect_samples(&self, partitions: &[PartitionInfo], out: &mut Vec<Sample>) {
        for p in partitions {
            out.push(Sample {
                family: "shardline_partition_segments",
                labels: vec![p.topic.clone(), p.partition.to_string()],
                value: i64::try_from(p.segments).unwrap_or(i64::MAX),
            });
        }
    }

    fn describe(&self, p: &Partition) -> PartitionInfo {
        let core = p.core.borrow();
        let l = core.log();
        let w = l.watermarks();
        PartitionInfo {
            topic: p.key.0.to_string(),
            partition: p.key.1,
            shard: self.id,
            log_start: w.log_start,
            high_watermark: w.written_offset,
            durable_offset: w.durable_offset,
            next_offset: w.next_offset,
            size_bytes: l.size_bytes(),
            segments: l.segment_count(),
            cache_bytes: l.cache_bytes(),
            produced_records: p.produced_records.get(),
            produced_bytes: p.produced_bytes.get(),
            fetched_records: p.fetched_records.get(),
            fetched_bytes: p.fetched_bytes.get(),
            failure: l.failure().map(str::to_string),
        }
    }

    /// Performs what the partition core asked for, in order.
    fn perform(self: &Rc<Self>, p: &Rc<Partition>, actions: Actions) {
        for a in actions {
            match a {
                Action::Reply {
                    token,
                    result,
                    durable,
                } => {
                    if durable && result.is_ok() {
                        self.metrics
                            .borrow_mut()
                            .append_durable_ns
                            .record_duration(token.since.elapsed());
                    }
                    let _ = token.reply.send(result);
                }
                Action::WakeReaders => p.notify.notify_all(),
                Action::StartFlush(f) => {
                    rt::spawn_local(self.clone().flush_loop(p.clone(), f));
                }
                Action::ArmSyncTimer { deadline_ms } => {
                    if !self.closing.get() {
                        rt::spawn_local(self.clone().sync_timer(p.clone(), deadline_ms));
                    }
                }
                Action::StartRepair(job) => {
                    rt::spawn_local(self.clone().repair(p.clone(), job));
                }
                Action::WriteSnapshot(job) => {
                    let p = p.clone();
                    rt::spawn_local(async move { write_snapshot(&p, job).await });
                }
            }
        }
    }

    pub(crate) async fn open(
        self: Rc<Self>,
        key: PartitionKey,
        dir: PathBuf,
        config: LogConfig,
        reply: Reply<RecoveryReport>,
    ) {
        if self.partitions.borrow().contains_key(&key) {
            let _ = reply.send(Err(Error::InvalidArgument(format!(
                "{}/{} is already open",
                key.0, key.1
            ))));
            return;
        }
        let cfg = CoreConfig {
            sync_interval_ms: self.cfg.sync_interval_ms,
        };
        let opened =
            PartitionCore::open(DmaStorage, &dir, key.clone(), config, cfg, now_ms()).await;
        match opened {
            Ok(mut o) => {
                o.core.enable_background_rolls();
                let p = Rc::new(Partition::new(key.clone(), o.core));
                if let Some(job) = o.snapshot {
                    write_snapshot(&p, job).await;
                }
                self.partitions.borrow_mut().insert(key, p);
                let _ = reply.send(Ok(o.report));
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    pub(crate) async fn close(self: Rc<Self>, key: PartitionKey, delete: bool, reply: Reply<()>) {
        let Some(p) = self.partitions.borrow_mut().remove(&key) else {
            let _ = reply.send(Ok(()));
            return;
        };
        let r = if delete {
            let mut actions = Vec::new();
            p.core.borrow_mut().close_deleted(&mut actions);
            // The directory goes next: let a snapshot being written there finish first.
            wait_for_snapshot(&p).await;
            self.perform(&p, actions);
            self.cache_total.set(
                self.cache_total
                    .get()
                    .saturating_sub(p.core.borrow().log().cache_bytes()),
            );
            Ok(())
        } else {
            self.close_partition(&p).await
        };
        let _ = reply.send(r);
    }

    /// Final flush and sync, then a checkpoint so the next start scans nothing, then a producer
    /// snapshot so it replays nothing.
    async fn close_partition(self: &Rc<Self>, p: &Rc<Partition>) -> Result<()> {
        p.core.borrow_mut().begin_close();
        // Let a running flush end (bounded); it plans no next one now.
        wait_for_jobs(p, |c| !c.is_flushing() && !c.has_roll_jobs()).await;
        let mut result = Ok(());
        loop {
            let flush = p.core.borrow_mut().take_close_flush();
            let Some(flush) = flush else { break };
            let done = flush.job.run().await;
            let mut actions = Vec::new();
            let report = p.core.borrow_mut().flush_done(done, now_ms(), &mut actions);
            self.unflushed
                .set(self.unflushed.get().saturating_sub(report.taken_bytes));
            self.flushed.notify_all();
            self.perform(p, actions);
            if let Err(e) = report.result {
                result = Err(e);
                break;
            }
        }
        // Sealed segments still without their final index get it now (their data is synced).
        while result.is_ok() {
            let seal = p.core.borrow_mut().take_seal();
            let Some(job) = seal else { break };
            let done = job.run().await;
            let mut actions = Vec::new();
            p.core.borrow_mut().seal_done(done, now_ms(), &mut actions);
            self.perform(p, actions);
        }
        let mut actions = Vec::new();
        let close_job = p.core.borrow_mut().finish_close(&mut actions);
        self.perform(p, actions);
        if result.is_ok()
            && let Some(job) = close_job
        {
            result = job.run().await;
        }
        if result.is_ok() {
            // Everything is durable now: the next open replays nothing.
            wait_for_snapshot(p).await;
            let job = p.core.borrow_mut().take_snapshot_job();
            if let Some(job) = job {
                write_snapshot(p, job).await;
            }
        }
        result
    }

    async fn close_all(self: &Rc<Self>) -> Result<()> {
        let parts: Vec<Rc<Partition>> = self
            .partitions
            .borrow_mut()
            .drain()
            .map(|(_, p)| p)
            .collect();
        self.closed_partitions
            .borrow_mut()
            .extend(parts.iter().map(Rc::downgrade));
        let mut first_err = Ok(());
        let results =
            crate::util::join_all(parts.iter().map(|p| self.close_partition(p)).collect()).await;
        for r in results {
            if let Err(e) = r {
                tracing::error!(shard = self.id, error = %e, "closing a partition failed");
                if first_err.is_ok() {
                    first_err = Err(e);
                }
            }
        }
        first_err
    }

    /// Appends a batch to a partition of this shard (the core decides; this shell replies,
    /// counts and starts the I/O it asks for).
    pub(crate) fn produce(
        self: &Rc<Self>,
        key: PartitionKey,
        batch: ValidatedBatch,
        acks: Acks,
        reply: Option<Reply<ProduceAck>>,
    ) {
        let p = match self.partition(&key) {
            Ok(p) => p,
            Err(e) => {
                if let Some(r) = reply {
                    let _ = r.send(Err(e));
                }
                return;
            }
        };
        if let Some(group) = p.replicated.get() {
            let hook = self.repl_hook.borrow().clone();
            match hook {
                Some(hook) => hook(group, key, batch, acks, reply),
                None => {
                    if let Some(r) = reply {
                        let _ = r.send(Err(Error::NotLeader {
                            topic: key.0.to_string(),
                            partition: key.1,
                            leader: None,
                            epoch: 0,
                        }));
                    }
                }
            }
            return;
        }
        let since = Instant::now();
        let batch_bytes = batch.len() as u64;
        let token = reply.map(|reply| AckToken { reply, since });
        let mut actions = Vec::new();
        let (produced, cache_before, cache_after) = {
            let mut core = p.core.borrow_mut();
            let before = core.log().cache_bytes();
            let produced = core.produce(batch, acks, token, now_ms(), &mut actions);
            let after = core.log().cache_bytes();
            (produced, before, after)
        };
        // The append adds the batch and may trim older ones: apply the signed difference.
        self.cache_total
            .set((self.cache_total.get() + cache_after).saturating_sub(cache_before));
        let appended = match produced {
            Produced::Appended {
                appended,
                waits_durable,
            } => {
                self.unflushed
                    .set(self.unflushed.get() + appended.batch_bytes);
                p.produced_records.set(
                    p.produced_records.get() + appended.last_offset - appended.base_offset + 1,
                );
                p.produced_bytes
                    .set(p.produced_bytes.get() + appended.batch_bytes as u64);
                let mut m = self.metrics.borrow_mut();
                m.batch_bytes.record(batch_bytes);
                if !waits_durable {
                    m.append_memory_ns.record_duration(since.elapsed());
                }
                true
            }
            Produced::Duplicate(_) | Produced::Refused => false,
        };
        self.perform(&p, actions);
        if appended {
            self.enforce_cache_budget();
        }
    }

    fn enforce_cache_budget(&self) {
        let budget = self.cfg.cache_bytes_per_shard;
        if self.cache_total.get() <= budget {
            return;
        }
        let mut total = 0;
        for p in self.partitions.borrow().values() {
            let mut core = p.core.borrow_mut();
            let keep = core.log().cache_bytes() / 2;
            core.evict_cache(keep);
            total += core.log().cache_bytes();
        }
        self.cache_total.set(total);
    }

    /// Runs the group commits the core plans, one after the other, until it plans none (one
    /// such task per partition at a time: the core has at most one flush outstanding).
    async fn flush_loop(self: Rc<Self>, p: Rc<Partition>, first: Flush<DmaStorage>) {
        let mut next = Some(first);
        while let Some(flush) = next.take() {
            let done = flush.job.run().await;
            let mut actions = Vec::new();
            let report = p.core.borrow_mut().flush_done(done, now_ms(), &mut actions);
            p.jobs_ended.notify_all();
            self.count_flush(&report);
            self.start_roll_jobs(&p);
            if let Err(e) = &report.result {
                tracing::error!(topic = %p.key.0, partition = p.key.1, error = %e, "flush failed; repairing the partition");
            }
            let mut rest = Vec::with_capacity(actions.len());
            for a in actions {
                match a {
                    Action::StartFlush(f) => next = Some(f),
                    other => rest.push(other),
                }
            }
            self.perform(&p, rest);
        }
    }

    /// Segment rolls off the write path (docs/storage.md, "Segment rolls"): makes the next
    /// segment's file once the active one is half full, and syncs and indexes sealed segments
    /// beside the flushes. Each job is taken at most once at a time by the log.
    fn start_roll_jobs(self: &Rc<Self>, p: &Rc<Partition>) {
        if self.closing.get() {
            return;
        }
        let (prepare, seal) = {
            let mut c = p.core.borrow_mut();
            (c.take_prepare(), c.take_seal())
        };
        if let Some(job) = prepare {
            let p = p.clone();
            rt::spawn_local(async move {
                let done = job.run().await;
                p.core.borrow_mut().prepare_done(done);
                p.jobs_ended.notify_all();
            });
        }
        if let Some(job) = seal {
            rt::spawn_local(self.clone().seal_loop(p.clone(), job));
        }
    }

    /// Runs seal jobs one after the other while the log has sealed segments waiting.
    async fn seal_loop(self: Rc<Self>, p: Rc<Partition>, first: SealJob<DmaStorage>) {
        let mut next = Some(first);
        while let Some(job) = next.take() {
            let done = job.run().await;
            // Counted with the flushes' syncs (`ShardStats::syncs`).
            self.stats.borrow_mut().syncs += u64::from(done.is_ok());
            let mut actions = Vec::new();
            p.core.borrow_mut().seal_done(done, now_ms(), &mut actions);
            p.jobs_ended.notify_all();
            self.perform(&p, actions);
            if !self.closing.get() {
                next = p.core.borrow_mut().take_seal();
            }
        }
    }

    /// The shard's accounts after a flush: unflushed bytes (the inbox's memory bound), stats
    /// and flush metrics.
    fn count_flush(&self, report: &FlushReport) {
        let taken = report.taken_bytes;
        self.unflushed
            .set(self.unflushed.get().saturating_sub(taken));
        self.flushed.notify_all();
        if report.result.is_err() {
            return;
        }
        {
            let mut s = self.stats.borrow_mut();
            s.flushes += 1;
            s.syncs += u64::from(report.synced);
            s.flushed_bytes += taken as u64;
        }
        let mut m = self.metrics.borrow_mut();
        m.flush_write_ns.record_duration(report.timings.write);
        m.flush_bytes.record(taken as u64);
        if report.synced {
            m.fsync_ns.record_duration(report.timings.sync);
        }
    }

    /// Fires the core's periodic sync at its deadline.
    async fn sync_timer(self: Rc<Self>, p: Rc<Partition>, deadline_ms: i64) {
        // A wall-clock deadline: clamp the wait so that a clock step neither skips nor
        // stretches the interval.
        let wait_ms = deadline_ms.saturating_sub(now_ms()).max(0).unsigned_abs();
        rt::sleep(Duration::from_millis(
            wait_ms.min(self.cfg.sync_interval_ms),
        ))
        .await;
        let mut actions = Vec::new();
        p.core.borrow_mut().sync_timer_fired(&mut actions);
        self.perform(&p, actions);
    }

    /// After an I/O error: reopen the partition from disk (the recovery path of a restart).
    async fn repair(self: Rc<Self>, p: Rc<Partition>, job: RepairJob<DmaStorage>) {
        // A running seal could write an index into the directory the reopen reads.
        wait_for_jobs(&p, |c| !c.has_roll_jobs()).await;
        let reopened = job.run(now_ms()).await;
        let mut actions = Vec::new();
        let repaired = p.core.borrow_mut().repaired(reopened, &mut actions);
        match repaired {
            Ok(w) => {
                p.core.borrow_mut().enable_background_rolls();
                tracing::info!(topic = %p.key.0, partition = p.key.1, next_offset = w.next_offset, "partition repaired");
            }
            Err(e) => {
                tracing::error!(topic = %p.key.0, partition = p.key.1, error = %e, "partition repair failed; it stays unwritable");
            }
        }
        self.perform(&p, actions);
    }

    async fn retention_loop(self: Rc<Self>) {
        let every = Duration::from_millis(self.cfg.retention_check_interval_ms.max(10));
        while !self.closing.get() {
            rt::sleep(every).await;
            if self.closing.get() {
                return;
            }
            self.apply_retention().await;
        }
    }

    /// The retention timer's work on every partition: a producer snapshot if the log moved
    /// (so a crash replays only recent batches), the roll of an expired active segment, and
    /// the deletion of expired segments.
    pub(crate) async fn apply_retention(&self) {
        let parts: Vec<Rc<Partition>> = self.partitions.borrow().values().cloned().collect();
        let now = now_ms();
        for p in parts {
            if p.is_closed() {
                continue;
            }
            let job = p.core.borrow_mut().take_snapshot_job();
            if let Some(job) = job {
                write_snapshot(&p, job).await;
            }
            let roll = p.core.borrow().retention_roll();
            if let Err(e) = roll.run(now).await {
                tracing::warn!(topic = %p.key.0, partition = p.key.1, error = %e, "retention roll failed");
            }
            let expired = p.core.borrow_mut().take_expired(now);
            self.cache_total.set(
                self.cache_total
                    .get()
                    .saturating_sub(expired.cache_freed_bytes),
            );
            if !expired.is_empty() {
                if let Err(e) = expired.run().await {
                    tracing::warn!(error = %e, "deleting expired segments failed");
                }
                p.notify.notify_all();
            }
            rt::yield_if_needed().await;
        }
    }
}

/// Runs a producer-snapshot job the core made and reports back to it. A failure is only
/// logged: the next open replays more of the log.
async fn write_snapshot(p: &Partition, job: SnapshotJob<DmaStorage>) {
    let upto = job.upto_offset();
    let r = job.run().await;
    p.core.borrow_mut().snapshot_done(upto, &r);
    p.jobs_ended.notify_all();
    if let Err(e) = r {
        tracing::warn!(topic = %p.key.0, partition = p.key.1, error = %e, "producer snapshot not written; the next open replays more of the log");
    }
}

/// Waits (bounded: 30 s) until no snapshot is being written in the partition's directory (two
/// writers would share its temporary file).
async fn wait_for_snapshot(p: &Partition) {
    wait_for_jobs(p, |c| !c.is_snapshot_running()).await;
}

/// Waits until `done` holds for the partition's core, re-checking whenever one of its jobs
/// ends; bounded by [`CLOSE_WAIT_MAX`] (a stuck device must not hang the shutdown).
async fn wait_for_jobs(p: &Partition, done: impl Fn(&Core) -> bool) {
    let deadline = Instant::now() + CLOSE_WAIT_MAX;
    loop {
        let seen = p.jobs_ended.version();
        if done(&p.core.borrow()) {
            return;
        }
        let now = Instant::now();
        if now >= deadline {
            tracing::warn!(topic = %p.key.0, partition = p.key.1, "a flush or snapshot job is still running after 30 s; closing anyway");
            return;
        }
        rt::timeout(deadline - now, p.jobs_ended.changed(seen)).await;
    }
}

impl Shard {
    /// Appends a batch a replicated partition's Raft group committed (issue 14): the
    /// partition core's apply path (no idempotence refusal), with the shell's accounting.
    pub(crate) fn apply_committed(
        self: &Rc<Self>,
        key: &PartitionKey,
        batch: ValidatedBatch,
    ) -> Result<ProduceAck> {
        let p = self.partition(key)?;
        let batch_bytes = batch.len();
        let mut actions = Vec::new();
        let (applied, cache_before, cache_after) = {
            let mut core = p.core.borrow_mut();
            let before = core.log().cache_bytes();
            let applied = core.apply_committed(batch, now_ms(), &mut actions);
            let after = core.log().cache_bytes();
            (applied, before, after)
        };
        self.cache_total
            .set((self.cache_total.get() + cache_after).saturating_sub(cache_before));
        let a = applied?;
        self.unflushed.set(self.unflushed.get() + a.batch_bytes);
        p.produced_records
            .set(p.produced_records.get() + a.last_offset - a.base_offset + 1);
        p.produced_bytes
            .set(p.produced_bytes.get() + a.batch_bytes as u64);
        self.metrics
            .borrow_mut()
            .batch_bytes
            .record(batch_bytes as u64);
        actions.push(Action::WakeReaders);
        self.perform(&p, actions);
        self.enforce_cache_budget();
        Ok(ProduceAck {
            base_offset: a.base_offset,
            last_offset: a.last_offset,
        })
    }
}
