//! The embedding API: [`Engine`] is a `Send + Sync + Clone` handle usable from any thread, with
//! blocking methods and runtime-agnostic futures (flume underneath), so a plain thread, a tokio
//! application or a glommio shard can embed Shardline (docs/architecture.md, "Embedding").
//!
//! The handle routes each partition's requests straight to the shard that owns it, using a
//! routing snapshot read without locks. Topic administration (control plane) is serialized by a
//! mutex and persisted in the metadata file before it takes effect.

use std::collections::HashMap;
use std::future::Future;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;

pub use crate::api::{FetchRequest, TopicDescription, TopicInfo, TopicRoute};
use crate::api::{FetchResponse, ProduceAck};
use crate::config::EngineConfig;
use crate::error::{Error, Result};
use crate::log::RecoveryReport;
use crate::metadata::{self, Metadata, TopicMeta};
use crate::rt::{self, ExecutorHandle, ExecutorSpec};
use crate::shard::{LocalShard, Reply, Request, Shard};

/// What a [`ShardTask`] gets: its shard's id and a way to reach the whole engine.
pub struct ShardHandle {
    pub shard: usize,
    pub engine: Engine,
}

/// Code run on a shard on behalf of another crate (the network server's listeners).
pub type ShardTask = Box<dyn FnOnce(ShardHandle) + Send>;

/// Tells the shards of one engine from another's (`shard::current`).
static NEXT_ENGINE_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

#[derive(Default)]
struct Routes {
    topics: HashMap<String, Arc<TopicRoute>>,
}

/// An enqueued produce, waiting for its acknowledgement.
pub struct PendingAck {
    pub(super) rx: Option<flume::Receiver<Result<ProduceAck>>>,
}

impl PendingAck {
    /// The acknowledgement; `None` for `Acks::None`.
    pub async fn wait(self) -> Result<Option<ProduceAck>> {
        match self.rx {
            Some(rx) => recv_async(rx).await.map(Some),
            None => Ok(None),
        }
    }
}

/// A stream of batches pushed as soon as they are written.
pub struct Subscription {
    pub(super) rx: flume::Receiver<Result<FetchResponse>>,
}

impl Subscription {
    /// Next pushed response; `Err(ShuttingDown)` once the partition or engine closed.
    pub fn recv(&self) -> Result<FetchResponse> {
        self.rx.recv().map_err(|_| Error::ShuttingDown)?
    }

    pub fn recv_timeout(&self, d: Duration) -> Result<Option<FetchResponse>> {
        match self.rx.recv_timeout(d) {
            Ok(r) => r.map(Some),
            Err(flume::RecvTimeoutError::Timeout) => Ok(None),
            Err(flume::RecvTimeoutError::Disconnected) => Err(Error::ShuttingDown),
        }
    }

    pub async fn recv_async(&self) -> Result<FetchResponse> {
        self.rx
            .recv_async()
            .await
            .map_err(|_| Error::ShuttingDown)?
    }
}

pub(super) struct Inner {
    pub(super) config: EngineConfig,
    /// Loaded from `config.encryption_key_file`.
    pub(super) keyring: Option<Arc<crate::crypto::Keyring>>,
    pub(super) shards: Vec<flume::Sender<Request>>,
    routes: ArcSwap<Routes>,
    pub(super) control: Mutex<Metadata>,
    pub(super) threads: Mutex<Vec<ExecutorHandle>>,
    pub(super) closed: AtomicBool,
    /// Held while running; released by shutdown so the directory can be reopened.
    pub(super) lock: Mutex<Option<std::fs::File>>,
    pub(super) recovery: Mutex<RecoveryReport>,
    /// Producer ids and consumer groups (`crate::groups`).
    pub(super) semantics: crate::groups::Semantics,
    /// This engine's shards carry it (`shard::current`).
    pub(super) id: u64,
    /// Set by [`Engine::enable_cluster`] (issue 14, broker/cluster.rs).
    pub(super) cluster: OnceLock<Arc<super::cluster::ClusterState>>,
}

/// A weak reference the broker's per-shard state holds (so it never keeps the engine alive).
#[derive(Clone, Default)]
pub(crate) struct WeakEngine(Arc<OnceLock<Weak<Inner>>>);

impl WeakEngine {
    pub(crate) fn upgrade(&self) -> Option<Engine> {
        self.0
            .get()
            .and_then(Weak::upgrade)
            .map(|inner| Engine { inner })
    }
}

/// Handle to a running engine. Cheap to clone; the engine shuts down cleanly when
/// [`Engine::shutdown`] is called or the last handle is dropped.
#[derive(Clone)]
pub struct Engine {
    pub(super) inner: Arc<Inner>,
}

/// Runs an async core of the API to completion on the calling thread: the blocking form of
/// every operation. Not for a shard's thread (it would stall the shard's executor), like any
/// blocking call of this API.
pub(crate) fn block<F: Future>(f: F) -> F::Output {
    futures_lite::future::block_on(f)
}

pub(super) fn recv<T>(rx: flume::Receiver<Result<T>>) -> Result<T> {
    rx.recv().map_err(|_| Error::ShuttingDown)?
}

pub(super) async fn recv_async<T>(rx: flume::Receiver<Result<T>>) -> Result<T> {
    rx.recv_async().await.map_err(|_| Error::ShuttingDown)?
}

fn lock_data_dir(dir: &Path) -> Result<std::fs::File> {
    let path = dir.join(".lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(path.display(), e))?;
    // SAFETY: flock on a valid, owned descriptor.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r != 0 {
        return Err(Error::Runtime(format!(
            "data directory {} is in use by another Shardline process",
            dir.display()
        )));
    }
    Ok(f)
}

/// Raises the soft open-files limit to the hard one: every partition holds open segment files.
fn raise_nofile_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Removes topic directories that the metadata does not know (a crash during delete/create).
fn remove_orphans(data_dir: &Path, m: &Metadata) {
    let Ok(entries) = std::fs::read_dir(data_dir.join("topics")) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let known = m
            .topics
            .iter()
            .any(|(t, meta)| name == format!("{t}-{}", meta.id));
        if !known {
            tracing::warn!(dir = %e.path().display(), "removing orphaned topic directory");
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Creates the data directory, makes its path absolute in `config`, takes its lock, and
/// checks direct I/O there. Returns the lock (held while the engine runs).
fn prepare_data_dir(config: &mut EngineConfig) -> Result<std::fs::File> {
    let dir = config.data_dir.clone();
    std::fs::create_dir_all(dir.join("topics")).map_err(|e| Error::io(dir.display(), e))?;
    // Absolute from here on: glommio opens directories by path without a base descriptor,
    // and a relative path there fails with EBADF (`serve --data-dir ./data`).
    let dir = std::fs::canonicalize(&dir).map_err(|e| Error::io(dir.display(), e))?;
    config.data_dir = dir.clone();
    let lock = lock_data_dir(&dir)?;
    raise_nofile_limit();
    match rt::dma_alignment_ok(&dir) {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!(dir = %dir.display(), "O_DIRECT is not supported here; glommio falls back to buffered I/O")
        }
        Err(e) => return Err(Error::io(dir.display(), e)),
    }
    Ok(lock)
}

/// The metadata file (new if there is none), re-placed on `shard_count` shards and stored.
fn load_metadata(dir: &Path, shard_count: usize) -> Result<Metadata> {
    let mut meta = metadata::load(dir)?.unwrap_or_else(|| Metadata::new(shard_count as u32));
    let moved = meta.reshard(shard_count as u32);
    if moved > 0 {
        tracing::info!(
            moved,
            shards = shard_count,
            "shard count changed; partitions re-placed"
        );
    }
    metadata::store(dir, &meta)?;
    Ok(meta)
}

/// Starts one executor per shard, each with the broker's per-shard state (work queues).
fn start_shards(
    config: &EngineConfig,
    cpus: &[usize],
    shard_count: usize,
    engine_id: u64,
    weak: &WeakEngine,
) -> Result<(Vec<flume::Sender<Request>>, Vec<ExecutorHandle>)> {
    let mut senders = Vec::with_capacity(shard_count);
    let mut threads = Vec::with_capacity(shard_count);
    for id in 0..shard_count {
        let (tx, rx) = flume::bounded(config.shard_queue_depth);
        let cpu = config.pin_shards.then(|| cpus[id % cpus.len()]);
        let spec = ExecutorSpec {
            name: format!("shard-{id}"),
            cpu,
            io_memory_bytes: config.io_memory_bytes,
            spin_before_park: Duration::from_micros(config.spin_before_park_us),
        };
        let cfg = config.clone();
        let w = weak.clone();
        let h = rt::spawn_executor(spec, move || async move {
            let queues = Rc::new(crate::queue::QueueShard::new(w));
            Shard::new(id, cfg, engine_id, queues).run(rx).await;
        });
        match h {
            Ok(h) => threads.push(h),
            Err(e) => {
                drop(senders);
                drop(tx);
                for t in threads {
                    let _ = t.join();
                }
                return Err(e);
            }
        }
        tracing::debug!(shard = id, cpu = ?cpu, "shard started");
        senders.push(tx);
    }
    let map: Vec<String> = (0..shard_count)
        .map(|id| match config.pin_shards {
            true => format!("{id}->cpu{}", cpus[id % cpus.len()]),
            false => format!("{id}->unpinned"),
        })
        .collect();
    tracing::info!(shards = shard_count, map = %map.join(" "), data_dir = %config.data_dir.display(), "shards started");
    Ok((senders, threads))
}

impl Engine {
    /// Starts the shards, recovers every partition, and returns once all are open.
    pub fn open(config: EngineConfig) -> Result<Engine> {
        Self::open_with(config, None)
    }

    /// The master keys of encrypted topics, to open sealed batches that fetches and
    /// subscriptions return (`Keyring::open_chunk`).
    pub fn keyring(&self) -> Option<&Arc<crate::crypto::Keyring>> {
        self.inner.keyring.as_ref()
    }

    /// Like [`Engine::open`], and runs `on_shard` on every shard once the engine is up (the
    /// network server starts its listeners this way).
    pub fn open_with(
        mut config: EngineConfig,
        on_shard: Option<Arc<dyn Fn(ShardHandle) + Send + Sync>>,
    ) -> Result<Engine> {
        config.validate()?;
        let keyring = match &config.encryption_key_file {
            Some(path) => Some(Arc::new(crate::crypto::Keyring::load(path)?)),
            None => None,
        };
        let lock = prepare_data_dir(&mut config)?;
        let dir = config.data_dir.clone();
        let cpus = rt::usable_cpus();
        let shard_count = if config.shards == 0 {
            cpus.len().max(1)
        } else {
            config.shards
        };
        let meta = load_metadata(&dir, shard_count)?;
        remove_orphans(&dir, &meta);
        let semantics = crate::groups::Semantics::open(&dir)?;

        let recovery_started = std::time::Instant::now();
        let weak = WeakEngine::default();
        let id = NEXT_ENGINE_ID.fetch_add(1, Ordering::Relaxed);
        let (senders, threads) = start_shards(&config, &cpus, shard_count, id, &weak)?;
        let engine = Engine {
            inner: Arc::new(Inner {
                config,
                keyring,
                shards: senders,
                routes: ArcSwap::from_pointee(Routes::default()),
                control: Mutex::new(meta.clone()),
                threads: Mutex::new(threads),
                closed: AtomicBool::new(false),
                lock: Mutex::new(Some(lock)),
                recovery: Mutex::new(RecoveryReport::default()),
                semantics,
                id,
                cluster: OnceLock::new(),
            }),
        };
        let _ = weak.0.set(Arc::downgrade(&engine.inner));
        let total = engine.recover(&meta, recovery_started)?;
        *engine
            .inner
            .recovery
            .lock()
            .map_err(|_| Error::Runtime("poisoned".into()))? = total;
        for (name, t) in &meta.topics {
            engine.open_queues(name, t)?;
        }
        engine.publish_routes(&meta);
        engine.inner.semantics.open_groups(&engine)?;
        if let Some(hook) = on_shard {
            for s in 0..shard_count {
                let hook = hook.clone();
                engine.run_on_shard(s, Box::new(move |h| hook(h)))?;
            }
        }
        Ok(engine)
    }

    /// Opens every partition of `meta` on its shard and sums up what recovery did.
    fn recover(&self, meta: &Metadata, started: std::time::Instant) -> Result<RecoveryReport> {
        let mut pending = Vec::new();
        for (name, t) in &meta.topics {
            let rxs = self.open_partitions(name, t)?;
            pending.extend(rxs.into_iter().enumerate().map(|(p, rx)| (name, p, rx)));
        }
        let mut total = RecoveryReport::default();
        for (name, partition, rx) in pending {
            // A partition that cannot be opened is reported and fenced (it stays closed: its
            // requests fail with an error), and the rest of the engine starts (issue 16).
            let r = match recv(rx) {
                Ok(r) => r,
                Err(e @ Error::ShuttingDown) => return Err(e),
                Err(e) => {
                    tracing::error!(topic = %name, partition, error = %e,
                        "partition cannot be opened: fenced until the next start");
                    continue;
                }
            };
            total.partitions += 1;
            total.truncated_tails += usize::from(r.truncated_bytes > 0);
            total.segments += r.segments;
            total.rebuilt_indexes += r.rebuilt_indexes;
            total.scanned_bytes += r.scanned_bytes;
            total.truncated_bytes += r.truncated_bytes;
            if r.truncation_reason.is_some() {
                total.truncation_reason = r.truncation_reason;
            }
        }
        total.duration_ms = started.elapsed().as_millis() as u64;
        tracing::info!(
            topics = meta.topics.len(),
            partitions = total.partitions,
            truncated_tails = total.truncated_tails,
            duration_ms = total.duration_ms,
            segments = total.segments,
            rebuilt_indexes = total.rebuilt_indexes,
            scanned_bytes = total.scanned_bytes,
            truncated_bytes = total.truncated_bytes,
            "recovery complete"
        );
        Ok(total)
    }

    pub(super) fn open_partitions(
        &self,
        name: &str,
        t: &TopicMeta,
    ) -> Result<Vec<flume::Receiver<Result<RecoveryReport>>>> {
        let cfg = self.inner.config.log_config(&t.config);
        let key_name: Arc<str> = Arc::from(name);
        let mut out = Vec::new();
        let keyring = match (t.config.encrypted, &self.inner.keyring) {
            (false, _) => None,
            (true, Some(k)) => Some(k.clone()),
            (true, None) => {
                return Err(Error::InvalidArgument(format!(
                    "topic '{name}' is encrypted: the engine needs encryption_key_file"
                )));
            }
        };
        for (p, shard) in t.shards.iter().enumerate() {
            let mut cfg = cfg.clone();
            cfg.encryption = keyring
                .clone()
                .map(|keyring| crate::crypto::TopicEncryption {
                    keyring,
                    topic_id: t.id,
                    partition: p as u32,
                });
            let (tx, rx) = flume::bounded(1);
            let dir = metadata::partition_dir(&self.inner.config.data_dir, name, t.id, p as u32);
            self.send(
                *shard as usize,
                Request::Open {
                    key: (key_name.clone(), p as u32),
                    dir,
                    config: cfg.clone(),
                    reply: tx,
                },
            )?;
            out.push(rx);
        }
        Ok(out)
    }

    /// Starts the work-queue state of each partition of a queue topic (after its logs opened).
    pub(super) fn open_queues(&self, name: &str, t: &TopicMeta) -> Result<()> {
        let Some(q) = &t.config.queue else {
            return Ok(());
        };
        let log = self.inner.config.log_config(&t.config);
        let key_name: Arc<str> = Arc::from(name);
        let mut rxs = Vec::new();
        for (p, shard) in t.shards.iter().enumerate() {
            let (tx, rx) = flume::bounded(1);
            let dir = metadata::partition_dir(&self.inner.config.data_dir, name, t.id, p as u32)
                .join(crate::queue::ACK_LOG_DIR);
            self.send(
                *shard as usize,
                crate::queue::request(crate::queue::QueueRequest::Open {
                    key: (key_name.clone(), p as u32),
                    config: q.clone(),
                    dir,
                    log: log.clone(),
                    group: t.groups.get(p).copied(),
                    reply: tx,
                }),
            )?;
            rxs.push(rx);
        }
        for rx in rxs {
            recv(rx)?;
        }
        Ok(())
    }

    pub(super) fn publish_routes(&self, meta: &Metadata) {
        let topics = meta
            .topics
            .iter()
            .map(|(n, t)| {
                let route = TopicRoute {
                    name: Arc::from(n.as_str()),
                    id: t.id,
                    shards: t.shards.clone(),
                    encrypted: t.config.encrypted,
                };
                (n.clone(), Arc::new(route))
            })
            .collect();
        self.inner.routes.store(Arc::new(Routes { topics }));
    }

    pub(crate) fn semantics(&self) -> Result<&crate::groups::Semantics> {
        Ok(&self.inner.semantics)
    }

    /// `shutdown` was called (or the last handle dropped).
    pub(super) fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    pub(super) fn inbox(&self, shard: usize) -> Result<&flume::Sender<Request>> {
        if self.is_closed() {
            return Err(Error::ShuttingDown);
        }
        self.inner
            .shards
            .get(shard)
            .ok_or_else(|| Error::Runtime(format!("no shard {shard}")))
    }

    pub(super) fn send(&self, shard: usize, req: Request) -> Result<()> {
        self.inbox(shard)?
            .send(req)
            .map_err(|_| Error::ShuttingDown)
    }

    pub(super) async fn send_async(&self, shard: usize, req: Request) -> Result<()> {
        self.inbox(shard)?
            .send_async(req)
            .await
            .map_err(|_| Error::ShuttingDown)
    }

    /// One request to a shard and its reply, as a future.
    pub(crate) async fn ask_async<T>(
        &self,
        shard: usize,
        make: impl FnOnce(Reply<T>) -> Request,
    ) -> Result<T> {
        let (tx, rx) = flume::bounded(1);
        self.send_async(shard, make(tx)).await?;
        recv_async(rx).await
    }

    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    pub fn shard_count(&self) -> usize {
        self.inner.shards.len()
    }

    /// What the last start recovered.
    pub fn recovery_report(&self) -> RecoveryReport {
        self.inner
            .recovery
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// The route of a topic (lock-free read of the current snapshot).
    pub fn route(&self, topic: &str) -> Result<Arc<TopicRoute>> {
        self.inner
            .routes
            .load()
            .topics
            .get(topic)
            .cloned()
            .ok_or_else(|| Error::UnknownTopic(topic.to_string()))
    }

    /// Every user topic's route, from the lock-free snapshot (safe on a shard thread, unlike
    /// [`Engine::list_topics`], which takes the control-plane lock).
    pub fn topic_routes(&self) -> Vec<Arc<TopicRoute>> {
        let mut v: Vec<Arc<TopicRoute>> = self
            .inner
            .routes
            .load()
            .topics
            .values()
            .filter(|r| !crate::groups::is_internal(&r.name))
            .cloned()
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// The shard owning a partition.
    pub fn shard_of(&self, topic: &str, partition: u32) -> Result<usize> {
        self.locate(topic, partition).map(|(_, s)| s)
    }

    pub(crate) fn locate(&self, topic: &str, partition: u32) -> Result<(Arc<str>, usize)> {
        let route = self.route(topic)?;
        let shard =
            route
                .shards
                .get(partition as usize)
                .ok_or_else(|| Error::UnknownPartition {
                    topic: topic.to_string(),
                    partition,
                })?;
        Ok((route.name.clone(), *shard as usize))
    }

    /// Runs `task` on shard `shard` (for code that must live inside a shard, e.g. listeners).
    /// The task does not keep the engine alive while it waits in the shard's inbox.
    pub fn run_on_shard(&self, shard: usize, task: ShardTask) -> Result<()> {
        let weak = Arc::downgrade(&self.inner);
        self.send(
            shard,
            Request::Run(Box::new(move |local: &LocalShard| {
                if let Some(inner) = weak.upgrade() {
                    task(ShardHandle {
                        shard: local.id(),
                        engine: Engine { inner },
                    });
                }
            })),
        )
    }

    /// Flushes and syncs every partition, writes checkpoints, and stops the shards.
    /// Idempotent; other handles get `ShuttingDown` afterwards.
    pub fn shutdown(&self) -> Result<()> {
        shutdown_inner(&self.inner)
    }
}

fn shutdown_inner(inner: &Inner) -> Result<()> {
    if inner.closed.swap(true, Ordering::AcqRel) {
        return Ok(());
    }
    let mut result = Ok(());
    let mut rxs = Vec::new();
    for tx in &inner.shards {
        let (rtx, rrx) = flume::bounded(1);
        if tx.send(Request::Shutdown { reply: rtx }).is_ok() {
            rxs.push(rrx);
        }
    }
    for rx in rxs {
        if let Err(e) = recv(rx) {
            result = Err(e);
        }
    }
    let threads = std::mem::take(
        &mut *inner
            .threads
            .lock()
            .map_err(|_| Error::Runtime("poisoned".into()))?,
    );
    for t in threads {
        t.join()?;
    }
    if let Ok(mut l) = inner.lock.lock() {
        l.take();
    }
    result
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Err(e) = shutdown_inner(self) {
            tracing::error!(error = %e, "engine shutdown failed");
        }
    }
}
