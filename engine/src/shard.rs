//! A shard: one executor that owns its partitions outright (docs/architecture.md, "Shards").
//! Requests arrive on one bounded flume channel, from any thread and from other shards. Nothing
//! here is shared with another thread: partition state lives in `Rc`/`RefCell`, and a borrow is
//! never held across an await.
//!
//! Per partition, one *flush loop* task runs while there is data to write: it takes everything
//! appended so far into one job (group commit), writes it, fdatasyncs it if a `durable` producer
//! is waiting (or the periodic sync is due), then completes the acks that the new durable offset
//! covers and wakes readers. Appends that arrive meanwhile join the next job.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::rc::Rc;
#[cfg(test)]
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::batch::{self, BatchHeader, ProducerInfo};
use crate::config::EngineConfig;
use crate::error::{Error, Result};
use crate::idempotence::{self, ProducerTable, Verdict};
use crate::log::{self, LogConfig, PartitionLog, ReadPlan, ReadResult, RecoveryReport, Watermarks};
use crate::metrics::{Sample, ShardMetrics, ShardMetricsSnapshot};
use crate::rt::{self, DmaStorage};
use crate::util::LocalNotify;

/// Reply channel of one request (bounded(1)).
pub(crate) type Reply<T> = flume::Sender<Result<T>>;

pub(crate) use crate::api::PartitionKey;
pub use crate::api::{Acks, FetchResponse, OffsetSpec, PartitionInfo, ProduceAck, ShardStats};

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
        batch: Bytes,
        acks: Acks,
        reply: Option<Reply<ProduceAck>>,
    },
    Fetch {
        key: PartitionKey,
        offset: u64,
        max_bytes: usize,
        max_records: usize,
        max_wait: Duration,
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
    static CURRENT: RefCell<Option<Rc<Shard>>> = const { RefCell::new(None) };
}

/// Clears [`CURRENT`] when the shard's main loop ends.
struct ClearCurrent;

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
    shard: Rc<Shard>,
}

/// One partition of the calling shard.
#[derive(Clone)]
pub struct LocalPartition {
    p: Rc<Partition>,
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
        batch: Bytes,
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
        let p = self.shard.partition(key)?;
        fetch(&p, offset, max_bytes, max_records, max_wait).await
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
        self.p.log.borrow().watermarks()
    }

    /// The partition's change counter: pass it to [`LocalPartition::changed`].
    pub fn version(&self) -> u64 {
        self.p.notify.version()
    }

    /// Resolves once the high watermark moved (or the partition closed) after `seen`.
    pub async fn changed(&self, seen: u64) {
        self.p.notify.changed(seen).await;
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

struct Waiter {
    ack: ProduceAck,
    reply: Reply<ProduceAck>,
    /// When the batch was appended (append latency, docs/operations.md).
    since: Instant,
}

pub(crate) struct Partition {
    pub(crate) key: PartitionKey,
    dir: PathBuf,
    config: LogConfig,
    pub(crate) log: RefCell<PartitionLog<DmaStorage>>,
    /// Bumped whenever the high watermark moves or the partition closes.
    pub(crate) notify: LocalNotify,
    durable_waiters: RefCell<VecDeque<Waiter>>,
    flushing: Cell<bool>,
    sync_timer: Cell<bool>,
    closed: Cell<bool>,
    produced_records: Cell<u64>,
    produced_bytes: Cell<u64>,
    fetched_records: Cell<u64>,
    fetched_bytes: Cell<u64>,
    /// Reads served from the cache, and from disk.
    cache_hits: Cell<u64>,
    cache_misses: Cell<u64>,
    /// Idempotent producers' sequence state (docs/semantics.md).
    producers: RefCell<ProducerTable>,
    /// Offset of the newest producer snapshot this process wrote.
    producers_snapshot: Cell<Option<u64>>,
    /// A [`snapshot_producers_async`] is writing.
    producers_snapshot_running: Cell<bool>,
}

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
}

fn now_ms() -> i64 {
    batch::now_us() / 1000
}

/// The partition's name in a `PartitionFailed` (the log knows only its directory).
fn named(e: Error, key: &PartitionKey) -> Error {
    match e {
        Error::PartitionFailed { reason, .. } => Error::PartitionFailed {
            topic: key.0.to_string(),
            partition: key.1,
            reason,
        },
        other => other,
    }
}

/// An error for each of several waiters (errors are not `Clone`).
fn copy_error(e: &Error) -> Error {
    match e {
        Error::DiskFull { path } => Error::DiskFull { path: path.clone() },
        Error::ShuttingDown => Error::ShuttingDown,
        Error::UnknownPartition { topic, partition } => Error::UnknownPartition {
            topic: topic.clone(),
            partition: *partition,
        },
        other => Error::PartitionFailed {
            topic: String::new(),
            partition: 0,
            reason: other.to_string(),
        },
    }
}

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
        for _ in 0..200 {
            if closed.iter().all(|p| p.strong_count() == 0) {
                break;
            }
            rt::sleep(Duration::from_millis(5)).await;
        }
        // One more reactor cycle submits the closes of the files dropped last.
        rt::sleep(Duration::from_millis(1)).await;
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
                    .map(|p| p.log.borrow_mut().set_retention(bytes, ms));
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
                reply,
            } => match self.partition(&key) {
                Ok(p) => rt::spawn_local(async move {
                    let r = fetch(&p, offset, max_bytes, max_records, max_wait).await;
                    let _ = reply.send(r);
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
                tx,
                reply,
            } => match self.partition(&key) {
                Ok(p) => {
                    let _ = reply.send(Ok(()));
                    rt::spawn_local(subscription(p, from, max_bytes, tx));
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
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
        let l = p.log.borrow();
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
        let opened = match PartitionLog::open(DmaStorage, &dir, config.clone(), now_ms()).await {
            Ok(log) => idempotence::rebuild_counted(&log)
                .await
                .map(|(t, replayed)| (log, t, replayed)),
            Err(e) => Err(e),
        };
        match opened {
            Ok((log, producers, replayed_bytes)) => {
                let report = log.recovery.clone();
                let p = Rc::new(Partition {
                    key: key.clone(),
                    dir,
                    config,
                    log: RefCell::new(log),
                    notify: LocalNotify::default(),
                    durable_waiters: RefCell::new(VecDeque::new()),
                    flushing: Cell::new(false),
                    sync_timer: Cell::new(false),
                    closed: Cell::new(false),
                    produced_records: Cell::new(0),
                    produced_bytes: Cell::new(0),
                    fetched_records: Cell::new(0),
                    fetched_bytes: Cell::new(0),
                    cache_hits: Cell::new(0),
                    cache_misses: Cell::new(0),
                    producers: RefCell::new(producers),
                    producers_snapshot: Cell::new(None),
                    producers_snapshot_running: Cell::new(false),
                });
                if replayed_bytes >= idempotence::REPLAY_SNAPSHOT_BYTES {
                    // The next open (after a crash that may come before the retention timer's
                    // first snapshot) then replays only what this process writes.
                    snapshot_producers(&p);
                }
                self.partitions.borrow_mut().insert(key, p);
                let _ = reply.send(Ok(report));
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
            p.closed.set(true);
            // The directory goes next: let a snapshot being written there finish first.
            wait_for_snapshot(&p).await;
            for w in p.durable_waiters.borrow_mut().drain(..) {
                let _ = w.reply.send(Err(Error::UnknownTopic(key.0.to_string())));
            }
            p.notify.notify_all();
            self.cache_total.set(
                self.cache_total
                    .get()
                    .saturating_sub(p.log.borrow().cache_bytes()),
            );
            Ok(())
        } else {
            self.close_partition(&p).await
        };
        let _ = reply.send(r);
    }

    /// Final flush and sync, then a checkpoint so the next start scans nothing.
    async fn close_partition(&self, p: &Rc<Partition>) -> Result<()> {
        // Let a running flush loop finish (bounded: 30 s).
        for _ in 0..30_000 {
            if !p.flushing.get() {
                break;
            }
            rt::sleep(Duration::from_millis(1)).await;
        }
        p.flushing.set(true);
        let mut result = Ok(());
        loop {
            let job = p.log.borrow_mut().take_flush(true);
            let Some(job) = job else { break };
            let done = job.run().await;
            let r = p.log.borrow_mut().finish_flush(done);
            match r {
                Ok(w) => complete_waiters(p, &w, &self.metrics),
                Err(e) => {
                    fail_waiters(p, &e);
                    result = Err(e);
                    break;
                }
            }
        }
        p.closed.set(true);
        p.notify.notify_all();
        if result.is_ok() {
            let job = p.log.borrow().close_job();
            if let Some(job) = job {
                result = job.run().await;
            }
        }
        if result.is_ok() {
            // Everything is durable now: the next open replays nothing.
            wait_for_snapshot(p).await;
            snapshot_producers(p);
        }
        result
    }

    async fn close_all(&self) -> Result<()> {
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

    pub(crate) fn produce(
        self: &Rc<Self>,
        key: PartitionKey,
        batch: Bytes,
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
        let producer = match idempotence_check(&p, &batch) {
            Ok(stamp) => stamp,
            Err((e, ack)) => {
                if let Some(r) = reply {
                    match ack {
                        Some(ack) => self.answer_duplicate(&p, ack, acks, r),
                        None => {
                            let _ = r.send(Err(e));
                        }
                    }
                }
                return;
            }
        };
        let since = Instant::now();
        let batch_bytes = batch.len() as u64;
        let cache_before = p.log.borrow().cache_bytes();
        let appended = p.log.borrow_mut().append(batch, now_ms());
        let cache_after = p.log.borrow().cache_bytes();
        // The append adds the batch and may trim older ones: apply the signed difference.
        self.cache_total
            .set((self.cache_total.get() + cache_after).saturating_sub(cache_before));
        match appended {
            Err(e) => {
                if let Some(r) = reply {
                    let _ = r.send(Err(named(e, &p.key)));
                }
            }
            Ok(a) => {
                if let Some((info, count)) = producer {
                    p.producers.borrow_mut().record(info, count, a.base_offset);
                }
                self.unflushed.set(self.unflushed.get() + a.batch_bytes);
                p.produced_records
                    .set(p.produced_records.get() + a.last_offset - a.base_offset + 1);
                p.produced_bytes
                    .set(p.produced_bytes.get() + a.batch_bytes as u64);
                let ack = ProduceAck {
                    base_offset: a.base_offset,
                    last_offset: a.last_offset,
                };
                {
                    let mut m = self.metrics.borrow_mut();
                    m.batch_bytes.record(batch_bytes);
                    if !(acks == Acks::Durable && reply.is_some()) {
                        m.append_memory_ns.record_duration(since.elapsed());
                    }
                }
                match (acks, reply) {
                    (Acks::Durable, Some(reply)) => p
                        .durable_waiters
                        .borrow_mut()
                        .push_back(Waiter { ack, reply, since }),
                    (_, Some(reply)) => {
                        let _ = reply.send(Ok(ack));
                    }
                    (_, None) => {}
                }
                self.start_flush(&p, false);
                self.enforce_cache_budget();
            }
        }
    }

    /// A retried batch that is already in the log: the original offsets, once as durable as
    /// the producer asked (the original may still be waiting for its fdatasync).
    fn answer_duplicate(
        &self,
        p: &Partition,
        ack: ProduceAck,
        acks: Acks,
        reply: Reply<ProduceAck>,
    ) {
        let durable = p.log.borrow().watermarks().durable_offset;
        if acks == Acks::Durable && ack.last_offset >= durable {
            p.durable_waiters.borrow_mut().push_back(Waiter {
                ack,
                reply,
                since: Instant::now(),
            });
        } else {
            let _ = reply.send(Ok(ack));
        }
    }

    fn enforce_cache_budget(&self) {
        let budget = self.cfg.cache_bytes_per_shard;
        if self.cache_total.get() <= budget {
            return;
        }
        let mut total = 0;
        for p in self.partitions.borrow().values() {
            let mut l = p.log.borrow_mut();
            let keep = l.cache_bytes() / 2;
            l.evict_cache(keep);
            total += l.cache_bytes();
        }
        self.cache_total.set(total);
    }

    fn start_flush(self: &Rc<Self>, p: &Rc<Partition>, force_sync: bool) {
        if p.flushing.get() || p.closed.get() {
            return;
        }
        p.flushing.set(true);
        rt::spawn_local(self.clone().flush_loop(p.clone(), force_sync));
    }

    async fn flush_loop(self: Rc<Self>, p: Rc<Partition>, mut force_sync: bool) {
        loop {
            let want_sync = force_sync || !p.durable_waiters.borrow().is_empty();
            let before = p.log.borrow().pending_bytes();
            let job = p.log.borrow_mut().take_flush(want_sync);
            let Some(job) = job else { break };
            let taken = before.saturating_sub(p.log.borrow().pending_bytes());
            force_sync = false;
            let syncs = job.syncs();
            let done = job.run().await;
            let timings = done.timings();
            let checkpointed = done.wrote_checkpoint();
            let r = p.log.borrow_mut().finish_flush(done);
            self.unflushed
                .set(self.unflushed.get().saturating_sub(taken));
            self.flushed.notify_all();
            match r {
                Ok(w) => {
                    {
                        let mut s = self.stats.borrow_mut();
                        s.flushes += 1;
                        s.syncs += u64::from(syncs);
                        s.flushed_bytes += taken as u64;
                    }
                    {
                        let mut m = self.metrics.borrow_mut();
                        m.flush_write_ns.record_duration(timings.write);
                        m.flush_bytes.record(taken as u64);
                        if syncs {
                            m.fsync_ns.record_duration(timings.sync);
                        }
                    }
                    complete_waiters(&p, &w, &self.metrics);
                    p.notify.notify_all();
                    if checkpointed && !p.producers_snapshot_running.replace(true) {
                        rt::spawn_local(snapshot_producers_async(p.clone()));
                    }
                }
                Err(e) => {
                    tracing::error!(topic = %p.key.0, partition = p.key.1, error = %e, "flush failed; repairing the partition");
                    fail_waiters(&p, &e);
                    p.flushing.set(false);
                    rt::spawn_local(repair(p.clone()));
                    return;
                }
            }
        }
        p.flushing.set(false);
        let w = p.log.borrow().watermarks();
        if w.durable_offset < w.written_offset && !p.sync_timer.get() && !self.closing.get() {
            p.sync_timer.set(true);
            let shard = self.clone();
            let interval = Duration::from_millis(self.cfg.sync_interval_ms);
            rt::spawn_local(async move {
                rt::sleep(interval).await;
                p.sync_timer.set(false);
                if p.flushing.get() || p.closed.get() {
                    return;
                }
                shard.start_flush(&p, true);
            });
        }
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

    pub(crate) async fn apply_retention(&self) {
        let parts: Vec<Rc<Partition>> = self.partitions.borrow().values().cloned().collect();
        let now = now_ms();
        for p in parts {
            if p.closed.get() {
                continue;
            }
            snapshot_producers(&p);
            if let Err(e) = PartitionLog::roll_for_retention(&p.log, now).await {
                tracing::warn!(topic = %p.key.0, partition = p.key.1, error = %e, "retention roll failed");
            }
            let (files, dir, storage) = {
                let mut l = p.log.borrow_mut();
                let before = l.cache_bytes();
                let files = l.take_expired(now);
                self.cache_total.set(
                    self.cache_total
                        .get()
                        .saturating_sub(before - l.cache_bytes()),
                );
                (files, l.dir().to_path_buf(), *l.storage())
            };
            if !files.is_empty() {
                if let Err(e) = log::remove_files(&storage, &dir, &files).await {
                    tracing::warn!(error = %e, "deleting expired segments failed");
                }
                p.notify.notify_all();
            }
            rt::yield_if_needed().await;
        }
    }
}

/// Writes a producer-state snapshot at the durable offset if the log moved since the last one
/// (at clean close, and on the retention timer so a crash replays only recent batches). A
/// small blocking write: the shard pays one fsync per partition and interval at most.
fn snapshot_producers(p: &Partition) {
    if p.producers_snapshot_running.get() {
        return; // a checkpoint snapshot is being written (and would share its temporary file)
    }
    let upto = p.log.borrow().watermarks().durable_offset;
    if p.producers_snapshot.get() == Some(upto) {
        return;
    }
    match p.producers.borrow().write_snapshot(&p.dir, upto) {
        Ok(()) => p.producers_snapshot.set(Some(upto)),
        Err(e) => {
            tracing::warn!(topic = %p.key.0, partition = p.key.1, error = %e, "producer snapshot not written; the next open replays more of the log");
        }
    }
}

/// Waits (bounded: 30 s) until no [`snapshot_producers_async`] is writing in the partition's
/// directory.
async fn wait_for_snapshot(p: &Partition) {
    for _ in 0..30_000 {
        if !p.producers_snapshot_running.get() {
            return;
        }
        rt::sleep(Duration::from_millis(1)).await;
    }
}

/// [`snapshot_producers`] after an index checkpoint, without blocking the shard: the file is
/// written through io_uring. Without it a crash would replay every batch since the last
/// timer snapshot (up to `retention_check_interval_ms` of appends, gigabytes at disk speed)
/// while recovery itself scans only from the last index checkpoint.
///
/// The caller sets `producers_snapshot_running` when it spawns this, so that two never write the
/// same temporary file (glommio's open panics if the file vanishes between its open and its
/// statfs, which a concurrent rename of the same path would do).
async fn snapshot_producers_async(p: Rc<Partition>) {
    let r = write_producer_snapshot(&p).await;
    p.producers_snapshot_running.set(false);
    match r {
        Ok(Some(upto)) => p.producers_snapshot.set(Some(upto)),
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(topic = %p.key.0, partition = p.key.1, error = %e, "producer snapshot not written; the next open replays more of the log");
        }
    }
}

async fn write_producer_snapshot(p: &Partition) -> Result<Option<u64>> {
    let upto = p.log.borrow().watermarks().durable_offset;
    if p.producers_snapshot.get() == Some(upto) || p.closed.get() {
        return Ok(None);
    }
    let bytes = p.producers.borrow().snapshot_bytes(upto)?;
    let storage = *p.log.borrow().storage();
    idempotence::write_snapshot_async(&storage, &p.dir, upto, &bytes).await?;
    Ok(Some(upto))
}

type ProducerStamp = Option<(ProducerInfo, u32)>;

/// The idempotence check before an append: `Ok(stamp)` = append (and record `stamp` if the
/// producer is idempotent), `Err((error, None))` = refuse, `Err((_, Some(ack)))` = a duplicate
/// to answer with its original offsets. An unreadable header passes: append reports it.
fn idempotence_check(
    p: &Partition,
    batch: &Bytes,
) -> std::result::Result<ProducerStamp, (Error, Option<ProduceAck>)> {
    let Ok(h) = BatchHeader::parse(batch) else {
        return Ok(None);
    };
    if h.producer.producer_id == 0 {
        return Ok(None);
    }
    match p.producers.borrow().check(h.producer, h.record_count) {
        Ok(Verdict::Append) => Ok(Some((h.producer, h.record_count))),
        Ok(Verdict::Duplicate {
            base_offset,
            last_offset,
        }) => Err((
            Error::Runtime("duplicate".into()),
            Some(ProduceAck {
                base_offset,
                last_offset,
            }),
        )),
        Err(e) => Err((e, None)),
    }
}

fn complete_waiters(p: &Partition, w: &Watermarks, metrics: &RefCell<ShardMetrics>) {
    let mut ws = p.durable_waiters.borrow_mut();
    let mut m = metrics.borrow_mut();
    while ws
        .front()
        .is_some_and(|x| x.ack.last_offset < w.durable_offset)
    {
        if let Some(x) = ws.pop_front() {
            m.append_durable_ns.record_duration(x.since.elapsed());
            let _ = x.reply.send(Ok(x.ack));
        }
    }
}

fn fail_waiters(p: &Partition, e: &Error) {
    for w in p.durable_waiters.borrow_mut().drain(..) {
        let _ = w.reply.send(Err(named(copy_error(e), &p.key)));
    }
}

/// After an I/O error: reopen the partition from disk (the recovery path of a restart).
async fn repair(p: Rc<Partition>) {
    match PartitionLog::open(DmaStorage, &p.dir, p.config.clone(), now_ms()).await {
        Ok(log) => {
            tracing::info!(topic = %p.key.0, partition = p.key.1, next_offset = log.watermarks().next_offset, "partition repaired");
            p.producers
                .borrow_mut()
                .truncate_to(log.watermarks().next_offset);
            *p.log.borrow_mut() = log;
            p.notify.notify_all();
        }
        Err(e) => {
            tracing::error!(topic = %p.key.0, partition = p.key.1, error = %e, "partition repair failed; it stays unwritable");
        }
    }
}

fn response(p: &Partition, r: ReadResult, offset: u64) -> FetchResponse {
    let w = p.log.borrow().watermarks();
    let next_offset = r
        .chunks
        .last()
        .and_then(|c| batch::split_batches(c).ok())
        .and_then(|bs| bs.last().and_then(|b| BatchHeader::parse(b).ok()))
        .map_or(offset, |h| h.next_offset());
    // Records delivered: whole batches are returned, so the first may start before `offset`.
    let first_base = r
        .chunks
        .first()
        .and_then(|c| BatchHeader::parse(c).ok())
        .map_or(next_offset, |h| h.base_offset);
    let delivered = next_offset.saturating_sub(first_base.max(offset));
    p.fetched_records.set(p.fetched_records.get() + delivered);
    p.fetched_bytes.set(p.fetched_bytes.get() + r.bytes as u64);
    FetchResponse {
        chunks: r.chunks,
        records: r.records,
        bytes: r.bytes,
        next_offset,
        high_watermark: w.written_offset,
        log_start: w.log_start,
    }
}

pub(crate) async fn read_once(
    p: &Partition,
    offset: u64,
    max_bytes: usize,
    max_records: usize,
) -> Result<FetchResponse> {
    let plan = p.log.borrow().plan_read(offset, max_bytes, max_records)?;
    let r = match plan {
        ReadPlan::Ready(r) => {
            if r.records > 0 {
                p.cache_hits.set(p.cache_hits.get() + 1);
            }
            r
        }
        ReadPlan::Disk(d) => {
            p.cache_misses.set(p.cache_misses.get() + 1);
            d.run().await?
        }
    };
    Ok(response(p, r, offset))
}

async fn fetch(
    p: &Partition,
    offset: u64,
    max_bytes: usize,
    max_records: usize,
    max_wait: Duration,
) -> Result<FetchResponse> {
    let deadline = Instant::now() + max_wait;
    loop {
        let seen = p.notify.version();
        let r = read_once(p, offset, max_bytes, max_records).await?;
        let now = Instant::now();
        if r.records > 0 || now >= deadline || p.closed.get() {
            return Ok(r);
        }
        rt::timeout(deadline - now, p.notify.changed(seen)).await;
    }
}

async fn list_offset(p: &Partition, spec: OffsetSpec) -> Result<u64> {
    let w = p.log.borrow().watermarks();
    match spec {
        OffsetSpec::Earliest => Ok(w.log_start),
        OffsetSpec::Latest => Ok(w.written_offset),
        OffsetSpec::At(o) if o >= w.log_start && o <= w.written_offset => Ok(o),
        OffsetSpec::At(o) => Err(Error::OffsetOutOfRange {
            offset: o,
            log_start: w.log_start,
            log_end: w.written_offset,
        }),
        OffsetSpec::Timestamp(ts) => {
            let Some(mut offset) = p.log.borrow().time_lookup_start(ts) else {
                return Ok(w.written_offset);
            };
            // Bounded: each round advances by at least one batch, and stops at the watermark.
            while offset < w.written_offset {
                let r = read_once(p, offset, 1 << 20, usize::MAX).await?;
                if r.records == 0 {
                    break;
                }
                if let Some(found) = log::first_at_or_after(&r.chunks, ts)? {
                    return Ok(found.max(offset));
                }
                offset = r.next_offset;
                rt::yield_if_needed().await;
            }
            Ok(w.written_offset)
        }
    }
}

/// Pushes batches to a subscriber as soon as they are written, as fast as the subscriber takes
/// them (the bounded channel is the credit). Ends when the subscriber goes away or the
/// partition closes; an error (e.g. the offset fell below the log start) is sent, then it ends.
async fn subscription(
    p: Rc<Partition>,
    from: u64,
    max_bytes: usize,
    tx: flume::Sender<Result<FetchResponse>>,
) {
    let mut cursor = from;
    loop {
        if p.closed.get() {
            let _ = tx
                .send_async(Err(Error::UnknownPartition {
                    topic: p.key.0.to_string(),
                    partition: p.key.1,
                }))
                .await;
            return;
        }
        let seen = p.notify.version();
        match read_once(&p, cursor, max_bytes, usize::MAX).await {
            Err(e) => {
                let _ = tx.send_async(Err(e)).await;
                return;
            }
            Ok(r) if r.records == 0 => {
                // Idle: wait for new data, checking now and then whether anyone still listens.
                if rt::timeout(Duration::from_secs(2), p.notify.changed(seen))
                    .await
                    .is_none()
                    && tx.is_disconnected()
                {
                    return;
                }
            }
            Ok(r) => {
                cursor = r.next_offset;
                if tx.send_async(Ok(r)).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves: a failed partition's error names the topic and partition, not the log's
    // directory (the log knows only that), for the producer and for every durable waiter.
    #[test]
    fn partition_failures_name_the_partition() {
        let key: PartitionKey = (Arc::from("orders"), 3);
        let from_log = Error::PartitionFailed {
            topic: "/data/topics/orders-1/3".into(),
            partition: 0,
            reason: "EIO".into(),
        };
        let want = "partition orders/3 is not writable after an I/O error: EIO";
        assert_eq!(named(from_log, &key).to_string(), want);
        let io = Error::Storage {
            path: "/data/x".into(),
            source: std::io::Error::other("EIO"),
        };
        let copied = named(copy_error(&io), &key);
        assert!(
            copied
                .to_string()
                .starts_with("partition orders/3 is not writable"),
            "{copied}"
        );
        let full = Error::DiskFull {
            path: "/data".into(),
        };
        assert!(matches!(
            named(copy_error(&full), &key),
            Error::DiskFull { .. }
        ));
    }
}
