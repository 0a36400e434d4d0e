//! Work queues on a topic (docs/semantics.md, "Work queues" and "Priorities").
//!
//! A queue partition is an ordinary partition log plus, on the shard that owns it, a
//! [`state::QueueState`] (what is ready, in flight, delayed, done) and an internal *ack log*:
//! another partition log in `<partition dir>/queue-acks/` written through the same shard
//! machinery (group commit, CRC, recovery), whose records ([`record::AckRecord`]) are replayed on
//! open. Acks are answered only once their record is durable; deliveries and nacks are written at
//! `leader` level (after a crash they are at worst redelivered). Snapshots of the state are
//! appended every quarter segment of records, and retention on the ack log (four segments)
//! drops the segments that the latest snapshot made useless (compaction through the engine's
//! own retention: whatever it deletes, the retained tail holds a whole snapshot, because
//! snapshots come more often than the retained bytes).
//!
//! Everything here runs on the owning shard: no locks, `RefCell` borrows never cross an await.

pub mod record;
pub mod replicated;
pub mod state;

mod api;
mod commit;
mod ops;
mod timing;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::api::{Acks, PartitionKey};
use crate::batch::{self, BatchBuilder, BatchHeader, Header, Record};
use crate::broker::engine::WeakEngine;
use crate::error::{Error, Result};
use crate::log::LogConfig;
use crate::metrics::Sample;
use crate::rt;
use crate::shard::{LocalPartition, LocalShard, Reply, ShardExtension};
use crate::util::LocalNotify;
use commit::GroupCommit;
use record::AckRecord;
use state::{DeadReason, Known, QueueSettings, QueueState};

pub use crate::api::config::{QueueConfig, VISIBILITY_TIMEOUT_MS_MAX};
pub use crate::api::queue::{
    DELAY_HEADER, DLQ_DELIVERIES_HEADER, DLQ_OFFSET_HEADER, DLQ_PARTITION_HEADER,
    DLQ_REASON_HEADER, DLQ_TOPIC_HEADER, LeaseError, LeaseResults, PRIORITY_HEADER,
    PurgedPartition, QueueMessage, QueuePartitionStats, Receipt, ReceiveOptions, TTL_HEADER,
};
pub(crate) use ops::dlq_samples;
pub use state::{PRIORITY_LEVELS_MAX, PRIORITY_WEIGHT_RATIO};

/// Subdirectory of a queue partition's directory holding its ack log.
pub const ACK_LOG_DIR: &str = "queue-acks";
/// Messages one receive may lease.
pub const RECEIVE_MESSAGES_MAX: usize = 10_000;
/// Longest receive long-poll.
pub const RECEIVE_WAIT_MAX: Duration = Duration::from_secs(60);

/// Ack-log segment size: the topic's, within these bounds. A snapshot is one batch and can be
/// larger than a segment (a full window of not-done messages plus the facts learned since the
/// previous snapshot: up to ~1.8 MB); the log then gives it a segment of its own. Before it did,
/// a restart in the torture soak could not write its opening snapshot and the server did not
/// start (`snapshot_of_the_worst_case_fits_in_an_ack_log`).
const ACK_SEGMENT_BYTES_MIN: u64 = 64 << 10;
const ACK_SEGMENT_BYTES_MAX: u64 = 1 << 20;
/// Not-done messages held in memory per queue partition (~70 bytes each): the priority
/// lookahead, and the bound of a snapshot.
const WINDOW_MAX: usize = 32_768;
/// The ticker sleeps until the next lease deadline or delay ends, within these bounds.
const TICK_MIN: Duration = Duration::from_millis(10);
const TICK_MAX: Duration = Duration::from_secs(1);
const SCAN_BYTES_MAX: usize = 1 << 20;
const DEAD_LETTER_BATCH_MAX: usize = 64;

/// Cache of a queue's ack log (it is read back only at open and for snapshots).
const ACK_LOG_CACHE_BYTES: usize = 1 << 20;
/// Bytes of the ack log read per step when a queue replays it at open.
const REPLAY_READ_BYTES_MAX: usize = 4 << 20;
/// Wait before dead-lettering is tried again after it failed.
const DEAD_LETTER_RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// The state machine's settings of a queue.
fn settings(c: &QueueConfig) -> QueueSettings {
    QueueSettings {
        visibility_timeout_ms: c.visibility_timeout_ms,
        max_deliveries: c.max_deliveries,
        backoff_base_ms: c.backoff_base_ms,
        backoff_max_ms: c.backoff_max_ms,
        priority_levels: c.priority_levels,
        window_max: WINDOW_MAX,
        strict_priority: c.strict_priority,
    }
}

/// Log settings of an ack log: small segments, and retention that keeps a few snapshots.
pub(crate) fn ack_log_config(base: &LogConfig) -> LogConfig {
    let segment_bytes = base
        .segment_bytes
        .clamp(ACK_SEGMENT_BYTES_MIN, ACK_SEGMENT_BYTES_MAX);
    LogConfig {
        segment_bytes,
        segment_ms: u64::MAX / 4,
        retention_bytes: Some(4 * segment_bytes),
        retention_ms: None,
        cache_bytes: ACK_LOG_CACHE_BYTES,
        ..base.clone()
    }
}

/// Prefix of the name of a queue partition's ack log in the shard's partition map.
pub(crate) const ACK_KEY_PREFIX: &str = "__queue-acks/";

/// Key of a queue partition's ack log in the shard's partition map (never routed to clients:
/// topic names cannot contain '/').
pub(crate) fn ack_key(key: &PartitionKey) -> PartitionKey {
    (format!("{ACK_KEY_PREFIX}{}", key.0).into(), key.1)
}

pub(crate) enum QueueRequest {
    Open {
        key: PartitionKey,
        config: QueueConfig,
        dir: PathBuf,
        log: LogConfig,
        /// The partition's Raft group on a cluster (the queue is replicated: replicated.rs).
        group: Option<crate::replication::GroupId>,
        reply: Reply<()>,
    },
    Receive {
        key: PartitionKey,
        options: ReceiveOptions,
        reply: Reply<Vec<QueueMessage>>,
    },
    Ack {
        key: PartitionKey,
        receipts: Vec<Receipt>,
        reply: Reply<Vec<Result<(), LeaseError>>>,
    },
    Nack {
        key: PartitionKey,
        receipts: Vec<Receipt>,
        delay_ms: Option<u64>,
        reply: Reply<Vec<Result<(), LeaseError>>>,
    },
    ChangeVisibility {
        key: PartitionKey,
        receipts: Vec<Receipt>,
        visibility_ms: u64,
        reply: Reply<Vec<Result<(), LeaseError>>>,
    },
    Stats {
        key: PartitionKey,
        reply: Reply<QueuePartitionStats>,
    },
    Peek {
        key: PartitionKey,
        max: usize,
        reply: Reply<Vec<QueueMessage>>,
    },
    /// Discards every message below the partition's end (queue/ops.rs).
    Purge {
        key: PartitionKey,
        reply: Reply<PurgedPartition>,
    },
}

/// The queues of one shard: the broker's extension of the shard (`shard::ShardExtension`),
/// installed when the shard starts.
pub(crate) struct QueueShard {
    map: RefCell<HashMap<PartitionKey, Rc<QueueCtx>>>,
    /// The engine, for dead-lettering to a topic of another shard (weak: the shards never keep
    /// the engine alive).
    engine: WeakEngine,
}

#[derive(Default)]
struct Counters {
    acked: Cell<u64>,
    nacked: Cell<u64>,
    expired: Cell<u64>,
    dead_lettered: Cell<u64>,
    dropped: Cell<u64>,
    lost: Cell<u64>,
    /// Deliveries with an attempt above 1.
    redelivered: Cell<u64>,
    /// Messages discarded by a purge.
    purged: Cell<u64>,
}

struct QueueCtx {
    key: PartitionKey,
    ack_key: PartitionKey,
    config: QueueConfig,
    state: RefCell<QueueState>,
    /// Bumped when messages become available other than by an append (nack, expiry).
    changed: LocalNotify,
    filling: Cell<bool>,
    dead_lettering: Cell<bool>,
    closed: Cell<bool>,
    /// Ack-log records waiting for the writer (commit.rs). Snapshots come every quarter of an
    /// ack-log segment: well below the retained bytes (four segments).
    commit: RefCell<GroupCommit<Waiter>>,
    /// The batch reads last decoded (`decode_wanted`).
    decoded: RefCell<Option<DecodedBatch>>,
    counters: Counters,
    /// On a cluster: who serves the queue (replicated.rs); `None` on a single node.
    repl: Option<replicated::Leadership>,
}

fn now_ms() -> i64 {
    batch::now_us() / 1000
}

fn not_a_queue(key: &PartitionKey) -> Error {
    Error::NotAQueue(key.0.to_string())
}

/// The queues of the calling shard.
fn queues(shard: &LocalShard) -> Result<Rc<QueueShard>> {
    // Every shard the engine starts has one; a shard without is shutting down.
    shard.extension::<QueueShard>().ok_or(Error::ShuttingDown)
}

impl QueueShard {
    pub(crate) fn new(engine: WeakEngine) -> Self {
        QueueShard {
            map: RefCell::new(HashMap::new()),
            engine,
        }
    }

    fn get(&self, key: &PartitionKey) -> Result<Rc<QueueCtx>> {
        self.map
            .borrow()
            .get(key)
            .cloned()
            .ok_or_else(|| not_a_queue(key))
    }
}

impl ShardExtension for QueueShard {
    fn refresh_for_metrics<'a>(
        &'a self,
        shard: &'a LocalShard,
    ) -> Pin<Box<dyn Future<Output = ()> + 'a>> {
        Box::pin(ops::refresh_for_metrics(self, shard))
    }

    fn collect_samples(&self, shard: &LocalShard, out: &mut Vec<Sample>) {
        ops::collect_samples(self, shard, out);
    }

    /// Drops a queue (its topic was deleted) and closes its ack log.
    fn partition_deleted(&self, shard: &LocalShard, key: &PartitionKey) {
        // The map's borrow ends here, before anything else runs (issue 16, finding 5: a
        // borrow held through the body of an `if let` is held through whatever it calls).
        let removed = self.map.borrow_mut().remove(key);
        if let Some(q) = removed {
            q.closed.set(true);
            q.changed.notify_all();
            shard.delete_partition(q.ack_key.clone());
        }
    }

    fn into_any(self: Rc<Self>) -> Rc<dyn std::any::Any> {
        self
    }
}

/// A queue request as a shard request: a task run on the owning shard.
pub(crate) fn request(req: QueueRequest) -> crate::shard::Request {
    crate::shard::Request::Run(Box::new(move |shard: &LocalShard| handle(shard, req)))
}

/// Runs a queue request on the shard that owns its partition (sent as a `shard::LocalTask`).
pub(crate) fn handle(shard: &LocalShard, req: QueueRequest) {
    let s = shard.clone();
    match req {
        QueueRequest::Open {
            key,
            config,
            dir,
            log,
            group,
            reply,
        } => rt::spawn_local(async move {
            let r = open(&s, key, config, (dir, log), group).await;
            let _ = reply.send(r);
        }),
        QueueRequest::Receive {
            key,
            options,
            reply,
        } => rt::spawn_local(async move {
            let _ = reply.send(receive(&s, &key, options).await);
        }),
        QueueRequest::Ack {
            key,
            receipts,
            reply,
        } => rt::spawn_local(async move {
            let _ = reply.send(ack(&s, &key, &receipts).await);
        }),
        QueueRequest::Nack {
            key,
            receipts,
            delay_ms,
            reply,
        } => {
            let _ = reply.send(nack(&s, &key, &receipts, delay_ms));
        }
        QueueRequest::ChangeVisibility {
            key,
            receipts,
            visibility_ms,
            reply,
        } => {
            let r = queues(shard).and_then(|qs| qs.get(&key)).and_then(|q| {
                replicated::check(&q)?;
                let now = now_ms();
                let mut st = q.state.borrow_mut();
                Ok(receipts
                    .iter()
                    .map(|r| st.change_visibility(*r, visibility_ms, now).map(|_| ()))
                    .collect())
            });
            let _ = reply.send(r);
        }
        QueueRequest::Stats { key, reply } => rt::spawn_local(async move {
            let _ = reply.send(stats(&s, &key).await);
        }),
        QueueRequest::Peek { key, max, reply } => rt::spawn_local(async move {
            let _ = reply.send(peek(&s, &key, max).await);
        }),
        QueueRequest::Purge { key, reply } => rt::spawn_local(async move {
            let _ = reply.send(ops::purge(&s, &key).await);
        }),
    }
}

// ---------------------------------------------------------------------------- open and replay

async fn open(
    shard: &LocalShard,
    key: PartitionKey,
    config: QueueConfig,
    (dir, log): (PathBuf, LogConfig),
    group: Option<crate::replication::GroupId>,
) -> Result<()> {
    config.validate()?;
    let p = shard.partition(&key)?;
    let ack_key = ack_key(&key);
    if queues(shard)?.map.borrow().contains_key(&key) {
        return Ok(());
    }
    let ack_config = ack_log_config(&log);
    let snapshot_every_bytes = (ack_config.segment_bytes / 4) as usize;
    shard
        .open_partition(ack_key.clone(), dir, ack_config)
        .await?;
    let acks = shard.partition(&ack_key)?;
    let log_start = p.watermarks().log_start;
    let mut st = QueueState::new(settings(&config), 0);
    let replayed = replay(&acks, &mut st).await?;
    let lost = st.skip_to(log_start);
    tracing::info!(topic = %key.0, partition = key.1, records = replayed, floor = st.floor(), lost, "queue opened");
    let q = Rc::new(QueueCtx {
        key: key.clone(),
        ack_key,
        config,
        state: RefCell::new(st),
        changed: LocalNotify::default(),
        filling: Cell::new(false),
        dead_lettering: Cell::new(false),
        closed: Cell::new(false),
        commit: RefCell::new(GroupCommit::new(snapshot_every_bytes, RECEIVE_MESSAGES_MAX)),
        decoded: RefCell::new(None),
        counters: Counters::default(),
        repl: group.map(|_| replicated::Leadership::default()),
    });
    q.counters.lost.set(lost);
    // A fresh snapshot: the next open replays from here, and retention may drop what precedes.
    // Not on a cluster: only the queue's leader writes its ack log, through Raft.
    if q.repl.is_none() {
        write_snapshot(shard, &q).await?;
    }
    queues(shard)?.map.borrow_mut().insert(key, q.clone());
    rt::spawn_local(ticker(shard.clone(), q));
    Ok(())
}

/// Applies the ack log to `st`; from its first snapshot when older segments were dropped.
async fn replay(acks: &LocalPartition, st: &mut QueueState) -> Result<u64> {
    let w = acks.watermarks();
    let mut offset = w.log_start;
    let mut seen_snapshot = w.log_start == 0;
    let mut applied = 0u64;
    while offset < w.written_offset {
        let r = acks.read(offset, REPLAY_READ_BYTES_MAX, usize::MAX).await?;
        if r.records == 0 {
            break;
        }
        for chunk in &r.chunks {
            for b in batch::split_batches(chunk)? {
                let (h, records) = batch::decode(b)?;
                for rec in records {
                    if h.base_offset + u64::from(rec.offset_delta) < offset {
                        continue;
                    }
                    let a = AckRecord::decode(&rec.value)?;
                    if !seen_snapshot && !matches!(a, AckRecord::Snapshot(_)) {
                        continue;
                    }
                    seen_snapshot = true;
                    apply(st, a);
                    applied += 1;
                }
            }
        }
        offset = r.next_offset;
        rt::yield_if_needed().await;
    }
    Ok(applied)
}

fn apply(st: &mut QueueState, a: AckRecord) {
    match a {
        AckRecord::Delivered { offset, attempt } => st.learn(
            offset,
            Known::Delivered {
                attempts: attempt,
                ready_at_ms: 0,
            },
        ),
        AckRecord::Nacked {
            offset,
            attempt,
            ready_at_ms,
        } => st.learn(
            offset,
            Known::Delivered {
                attempts: attempt,
                ready_at_ms,
            },
        ),
        AckRecord::Acked { offset } | AckRecord::Dead { offset } => st.learn(offset, Known::Done),
        AckRecord::Snapshot(s) => st.restore(s),
    }
}

/// Who waits for a group of ack-log records to be durable.
type Waiter = flume::Sender<Result<()>>;

/// Queues ack-log records for the partition's writer (group commit, commit.rs); with
/// `durable`, waits until the group that carries them is fdatasync'd. Without, returns at once:
/// the records reach the log in order, at `leader` level, with the next group.
async fn append(
    shard: &LocalShard,
    q: &Rc<QueueCtx>,
    records: Vec<AckRecord>,
    durable: bool,
) -> Result<()> {
    if records.is_empty() {
        return Ok(());
    }
    let (waiter, rx) = if durable {
        let (tx, rx) = flume::bounded(1);
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    if q.commit.borrow_mut().push(records, waiter) {
        rt::spawn_local(write_groups(shard.clone(), q.clone()));
    }
    match rx {
        Some(rx) => rx.recv_async().await.map_err(|_| Error::ShuttingDown)?,
        None => Ok(()),
    }
}

/// Appends a snapshot of the state after every record queued so far, and waits until it is
/// durable.
async fn write_snapshot(shard: &LocalShard, q: &Rc<QueueCtx>) -> Result<()> {
    let (tx, rx) = flume::bounded(1);
    if q.commit.borrow_mut().push_snapshot(Some(tx)) {
        rt::spawn_local(write_groups(shard.clone(), q.clone()));
    }
    rx.recv_async().await.map_err(|_| Error::ShuttingDown)?
}

/// The writer of a queue partition's ack log: takes groups until none is left. One runs at a
/// time (`GroupCommit::push` says when to start one); a durable group is synced before the
/// next is taken, so everything queued meanwhile goes out together.
async fn write_groups(shard: LocalShard, q: Rc<QueueCtx>) {
    loop {
        let Some(group) = q.commit.borrow_mut().take(|r| r.encode().len()) else {
            return;
        };
        // Taken with the group, no await between: the snapshot is the state after exactly
        // the records before it.
        let snapshot = group.snapshot.then(|| q.state.borrow().snapshot());
        let durable = group.durable();
        let r = write_group(&shard, &q, group.records, snapshot, durable).await;
        if let Err(e) = &r {
            tracing::warn!(topic = %q.key.0, partition = q.key.1, error = %e, "writing ack-log records failed");
            replicated::write_failed(&shard, &q);
        }
        for w in group.waiters {
            let _ = w.send(match &r {
                Ok(()) => Ok(()),
                Err(e) => Err(again(e)),
            });
        }
    }
}

/// One group as one ack-log batch; `durable` waits for fdatasync.
async fn write_group(
    shard: &LocalShard,
    q: &QueueCtx,
    records: Vec<AckRecord>,
    snapshot: Option<state::Snapshot>,
    durable: bool,
) -> Result<()> {
    let mut b = BatchBuilder::new();
    let now = batch::now_us();
    for r in records.into_iter().chain(snapshot.map(AckRecord::Snapshot)) {
        b.push(now, None, r.encode(), Vec::new());
    }
    if b.is_empty() {
        return Ok(());
    }
    let batch = b.build_validated()?;
    if durable {
        // Replicated: answered once committed (on one node `all` is `durable`).
        let (tx, rx) = flume::bounded(1);
        shard.produce(
            q.ack_key.clone(),
            batch,
            replicated::durable_acks(),
            Some(tx),
        );
        rx.recv_async()
            .await
            .map_err(|_| Error::ShuttingDown)?
            .map_err(|e| replicated::client_error(q, e))?;
    } else {
        shard.produce(q.ack_key.clone(), batch, Acks::Leader, None);
    }
    Ok(())
}

/// The error of a failed group write, for each of its waiters (errors are not `Clone`).
fn again(e: &Error) -> Error {
    match e {
        Error::ShuttingDown => Error::ShuttingDown,
        Error::NotLeader {
            topic,
            partition,
            leader,
            epoch,
        } => Error::NotLeader {
            topic: topic.clone(),
            partition: *partition,
            leader: *leader,
            epoch: *epoch,
        },
        Error::Storage { path, source } => Error::Storage {
            path: path.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        other => Error::Runtime(format!("ack log write failed: {other}")),
    }
}

/// Expires leases and starts dead-lettering even when nobody receives.
async fn ticker(shard: LocalShard, q: Rc<QueueCtx>) {
    while !q.closed.get() && !shard.is_closing() {
        let due = q.state.borrow().next_due_ms();
        let wait = due.map_or(TICK_MAX, |d| {
            Duration::from_millis(u64::try_from(d - now_ms()).unwrap_or(0))
        });
        rt::sleep(wait.clamp(TICK_MIN, TICK_MAX)).await;
        if !replicated::serving(&q) {
            continue;
        }
        let expired = q.state.borrow_mut().tick(now_ms());
        if !expired.is_empty() {
            q.counters
                .expired
                .set(q.counters.expired.get() + expired.len() as u64);
            q.changed.notify_all();
        }
        start_dead_lettering(&shard, &q);
    }
}

// ---------------------------------------------------------------------------- scan

/// Feeds the window with messages appended since the last scan (up to the window bound).
async fn fill(shard: &LocalShard, q: &QueueCtx) -> Result<()> {
    if q.filling.get() {
        return Ok(());
    }
    q.filling.set(true);
    let r = fill_inner(shard, q).await;
    q.filling.set(false);
    r
}

async fn fill_inner(shard: &LocalShard, q: &QueueCtx) -> Result<()> {
    let p = shard.partition(&q.key)?;
    for _ in 0..8 {
        let w = p.watermarks();
        let (scanned, room) = {
            let mut st = q.state.borrow_mut();
            let lost = st.skip_to(w.log_start);
            q.counters.lost.set(q.counters.lost.get() + lost);
            (st.scanned(), st.window_room())
        };
        if room == 0 || scanned >= w.written_offset {
            return Ok(());
        }
        let r = p.read(scanned, SCAN_BYTES_MAX, room).await?;
        if r.records == 0 {
            return Ok(());
        }
        let now = now_ms();
        let mut st = q.state.borrow_mut();
        for chunk in &r.chunks {
            for b in batch::split_batches(chunk)? {
                let h = BatchHeader::parse(b)?;
                scan_batch(&mut st, b, &h, now)?;
            }
        }
    }
    Ok(())
}

fn scan_batch(st: &mut QueueState, b: &[u8], h: &BatchHeader, now: i64) -> Result<()> {
    if h.next_offset() <= st.scanned() {
        return Ok(());
    }
    let first_ms = h.first_timestamp_us / 1000;
    if h.flags & batch::flags::ENCRYPTED != 0 {
        // Sealed bodies: no headers to read, every message at level 0.
        for o in st.scanned().max(h.base_offset)..h.next_offset() {
            if st.window_room() == 0 {
                break;
            }
            st.add(o, 0, first_ms, now);
        }
        return Ok(());
    }
    batch::with_records(b, h, |records| {
        for r in records {
            let o = h.base_offset + u64::from(r.offset_delta());
            if o != st.scanned() {
                continue;
            }
            if st.window_room() == 0 {
                break;
            }
            let level = timing::header_number(r.headers(), PRIORITY_HEADER)
                .and_then(|n| u8::try_from(n).ok())
                .unwrap_or(0);
            let ts = first_ms + (r.timestamp_delta_us() / 1000) as i64;
            st.add_timed(o, level, ts, timing::of_record(r.headers(), ts), now);
        }
        Ok(())
    })
}

/// Reads the messages named by `receipts` from the partition log, in the receipts' order.
/// Each batch is read once (from the cache when recent) and only the wanted records decoded.
async fn read_messages(
    p: &LocalPartition,
    q: &QueueCtx,
    receipts: &[Receipt],
) -> Result<Vec<QueueMessage>> {
    let mut sorted = receipts.to_vec();
    sorted.sort_unstable_by_key(|r| r.offset);
    let mut msgs = read_sorted(p, q, &sorted).await?;
    // Back to delivery (priority) order.
    let position: HashMap<u64, usize> = receipts
        .iter()
        .enumerate()
        .map(|(i, r)| (r.offset, i))
        .collect();
    msgs.sort_by_key(|m| position.get(&m.offset).copied().unwrap_or(usize::MAX));
    Ok(msgs)
}

async fn read_sorted(
    p: &LocalPartition,
    q: &QueueCtx,
    receipts: &[Receipt],
) -> Result<Vec<QueueMessage>> {
    let levels_max = q.config.priority_levels;
    let mut out = Vec::with_capacity(receipts.len());
    let mut i = 0;
    while i < receipts.len() {
        let offset = receipts[i].offset;
        let got = p.read(offset, 1, 1).await?;
        let mut found = false;
        for chunk in &got.chunks {
            for b in batch::split_batches(chunk)? {
                let h = BatchHeader::parse(b)?;
                if !(h.base_offset <= offset && offset < h.next_offset()) {
                    continue;
                }
                let end = receipts[i..]
                    .iter()
                    .position(|r| r.offset >= h.next_offset() || r.offset < h.base_offset)
                    .map_or(receipts.len(), |n| i + n);
                let wanted = Wanted {
                    receipts: &receipts[i..end],
                    partition: p.key().1,
                    levels_max,
                };
                decode_wanted(b, &h, &wanted, &q.decoded, &mut out)?;
                i = end;
                found = true;
            }
        }
        if !found {
            let w = p.watermarks();
            return Err(Error::OffsetOutOfRange {
                offset,
                log_start: w.log_start,
                log_end: w.written_offset,
            });
        }
    }
    Ok(out)
}

/// The records of one batch a read wants.
struct Wanted<'a> {
    /// All inside the batch.
    receipts: &'a [Receipt],
    partition: u32,
    levels_max: u8,
}

/// The records of the batch a queue read last, deserialized once: receives of one message
/// each from a batch of 500 would otherwise validate and walk all 500 records every time.
struct DecodedBatch {
    base_offset: u64,
    crc: u32,
    records: Rc<Vec<Record>>,
}

/// Deserializes the records of one batch that `w` names (through `cache`). A sealed batch
/// yields messages with an empty value (the broker cannot open it).
fn decode_wanted(
    b: &[u8],
    h: &BatchHeader,
    w: &Wanted<'_>,
    cache: &RefCell<Option<DecodedBatch>>,
    out: &mut Vec<QueueMessage>,
) -> Result<()> {
    if h.flags & batch::flags::ENCRYPTED != 0 {
        for r in w.receipts {
            out.push(QueueMessage::from_record(
                w.partition,
                *r,
                h,
                &Record::default(),
                w.levels_max,
            ));
        }
        return Ok(());
    }
    let hit = cache
        .borrow()
        .as_ref()
        .filter(|d| d.base_offset == h.base_offset && d.crc == h.crc)
        .map(|d| d.records.clone());
    let records = match hit {
        Some(r) => r,
        None => {
            let all = batch::with_records(b, h, |records| {
                Ok::<_, Error>(
                    records
                        .iter()
                        .map(|a| a.to_record())
                        .collect::<Vec<Record>>(),
                )
            })?;
            let all = Rc::new(all);
            *cache.borrow_mut() = Some(DecodedBatch {
                base_offset: h.base_offset,
                crc: h.crc,
                records: all.clone(),
            });
            all
        }
    };
    for r in w.receipts {
        let index = (r.offset - h.base_offset) as usize;
        let Some(rec) = records.get(index) else {
            return Err(Error::CorruptBatch(format!("no record at {}", r.offset)));
        };
        out.push(QueueMessage::from_record(
            w.partition,
            *r,
            h,
            rec,
            w.levels_max,
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------- operations

async fn receive(
    shard: &LocalShard,
    key: &PartitionKey,
    o: ReceiveOptions,
) -> Result<Vec<QueueMessage>> {
    let q = queues(shard)?.get(key)?;
    let p = shard.partition(key)?;
    let max = o.max_messages.clamp(1, RECEIVE_MESSAGES_MAX);
    let visibility = o
        .visibility_timeout_ms
        .unwrap_or(q.config.visibility_timeout_ms)
        .clamp(1, VISIBILITY_TIMEOUT_MS_MAX);
    let deadline = Instant::now() + o.max_wait.min(RECEIVE_WAIT_MAX);
    loop {
        if q.closed.get() {
            return Err(not_a_queue(key));
        }
        replicated::check(&q)?;
        let seen_log = p.version();
        let seen_queue = q.changed.version();
        fill(shard, &q).await?;
        let now = now_ms();
        let (receipts, next_due) = {
            let mut st = q.state.borrow_mut();
            let expired = st.tick(now);
            q.counters
                .expired
                .set(q.counters.expired.get() + expired.len() as u64);
            (st.lease(now, max, visibility), st.next_due_ms())
        };
        start_dead_lettering(shard, &q);
        if !receipts.is_empty() {
            let again = receipts.iter().filter(|r| r.attempt > 1).count() as u64;
            q.counters
                .redelivered
                .set(q.counters.redelivered.get() + again);
            let records: Vec<AckRecord> = receipts
                .iter()
                .map(|r| AckRecord::Delivered {
                    offset: r.offset,
                    attempt: r.attempt,
                })
                .collect();
            append(shard, &q, records, false).await?;
            return read_messages(&p, &q, &receipts).await;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(Vec::new());
        }
        let until_due = next_due.map_or(left, |d| {
            Duration::from_millis(u64::try_from(d - now).unwrap_or(0).max(1))
        });
        let wake = futures_lite::future::or(p.changed(seen_log), q.changed.changed(seen_queue));
        rt::timeout(left.min(until_due), wake).await;
    }
}

async fn ack(
    shard: &LocalShard,
    key: &PartitionKey,
    receipts: &[Receipt],
) -> Result<Vec<Result<(), LeaseError>>> {
    let q = queues(shard)?.get(key)?;
    replicated::check(&q)?;
    let results: Vec<Result<(), LeaseError>> = {
        let mut st = q.state.borrow_mut();
        receipts.iter().map(|r| st.ack(*r)).collect()
    };
    let records: Vec<AckRecord> = receipts
        .iter()
        .zip(&results)
        .filter(|(_, r)| r.is_ok())
        .map(|(r, _)| AckRecord::Acked { offset: r.offset })
        .collect();
    q.counters
        .acked
        .set(q.counters.acked.get() + records.len() as u64);
    append(shard, &q, records, true).await?;
    Ok(results)
}

fn nack(
    shard: &LocalShard,
    key: &PartitionKey,
    receipts: &[Receipt],
    delay_ms: Option<u64>,
) -> Result<Vec<Result<(), LeaseError>>> {
    let q = queues(shard)?.get(key)?;
    replicated::check(&q)?;
    let now = now_ms();
    let mut records = Vec::new();
    let results: Vec<Result<(), LeaseError>> = {
        let mut st = q.state.borrow_mut();
        receipts
            .iter()
            .map(|r| {
                let at = st.nack(*r, delay_ms, now)?;
                if let Some(ready_at_ms) = at {
                    records.push(AckRecord::Nacked {
                        offset: r.offset,
                        attempt: r.attempt,
                        ready_at_ms,
                    });
                }
                Ok(())
            })
            .collect()
    };
    let n = results.iter().filter(|r| r.is_ok()).count() as u64;
    q.counters.nacked.set(q.counters.nacked.get() + n);
    q.changed.notify_all();
    let s = shard.clone();
    rt::spawn_local(async move {
        if let Err(e) = append(&s, &q, records, false).await {
            tracing::warn!(topic = %q.key.0, error = %e, "writing nack records failed");
        }
        start_dead_lettering(&s, &q);
    });
    Ok(results)
}

fn start_dead_lettering(shard: &LocalShard, q: &Rc<QueueCtx>) {
    if q.dead_lettering.get()
        || !replicated::serving(q)
        || q.state.borrow().counts().dead_pending == 0
    {
        return;
    }
    q.dead_lettering.set(true);
    let (s, q) = (shard.clone(), q.clone());
    rt::spawn_local(async move {
        if let Err(e) = dead_letter(&s, &q).await {
            tracing::warn!(topic = %q.key.0, partition = q.key.1, error = %e, "dead-lettering failed; retrying");
            rt::sleep(DEAD_LETTER_RETRY_INTERVAL).await;
        }
        q.dead_lettering.set(false);
    });
}

/// Copies dead messages to the dead-letter topic (durably), then marks them done.
async fn dead_letter(shard: &LocalShard, q: &Rc<QueueCtx>) -> Result<()> {
    let p = shard.partition(&q.key)?;
    loop {
        let mut pending = q.state.borrow().dead_pending();
        if pending.is_empty() || q.closed.get() || !replicated::serving(q) {
            return Ok(());
        }
        pending.truncate(DEAD_LETTER_BATCH_MAX);
        let receipts: Vec<Receipt> = pending
            .iter()
            .map(|(o, a, _)| Receipt {
                offset: *o,
                attempt: *a,
            })
            .collect();
        let msgs = read_messages(&p, q, &receipts).await?;
        let counter = if q.config.dead_letter_topic.is_some() {
            &q.counters.dead_lettered
        } else {
            &q.counters.dropped
        };
        if let Some(dlq) = &q.config.dead_letter_topic {
            let engine = queues(shard)?.engine.upgrade().ok_or(Error::ShuttingDown)?;
            let partitions = engine.route(dlq)?.shards.len() as u32;
            let target = q.key.1 % partitions.max(1);
            let mut b = BatchBuilder::new();
            for (m, (_, attempts, reason)) in msgs.iter().zip(&pending) {
                b.push(
                    m.timestamp_us,
                    m.key.clone(),
                    m.value.clone(),
                    dead_headers(&m.headers, &q.key, m.offset, *attempts, *reason),
                );
            }
            // `all` on a replicated dead-letter topic (committed), `durable` on one node.
            engine
                .produce_async(dlq, target, b.build()?, Acks::All)
                .await?;
        }
        let records: Vec<AckRecord> = receipts
            .iter()
            .map(|r| AckRecord::Dead { offset: r.offset })
            .collect();
        append(shard, q, records, true).await?;
        let mut st = q.state.borrow_mut();
        for r in &receipts {
            st.dead_lettered(r.offset);
        }
        // Counted once done here, so that stats never show a message both dead and pending.
        counter.set(counter.get() + receipts.len() as u64);
    }
}

fn dead_headers(
    original: &[Header],
    key: &PartitionKey,
    offset: u64,
    attempts: u32,
    reason: DeadReason,
) -> Vec<Header> {
    let mut h: Vec<Header> = original
        .iter()
        .filter(|x| !x.key.starts_with("x-dlq-") && !timing::is_timing_header(&x.key))
        .cloned()
        .collect();
    let mut add = |k: &str, v: String| {
        h.push(Header {
            key: k.to_string(),
            value: v.into_bytes(),
        });
    };
    add(DLQ_REASON_HEADER, reason.as_str().to_string());
    add(DLQ_DELIVERIES_HEADER, attempts.to_string());
    add(DLQ_TOPIC_HEADER, key.0.to_string());
    add(DLQ_PARTITION_HEADER, key.1.to_string());
    add(DLQ_OFFSET_HEADER, offset.to_string());
    h
}

async fn stats(shard: &LocalShard, key: &PartitionKey) -> Result<QueuePartitionStats> {
    let q = queues(shard)?.get(key)?;
    replicated::check(&q)?;
    let p = shard.partition(key)?;
    fill(shard, &q).await?;
    Ok(partition_stats(&q, &p, now_ms()))
}

/// The figures of one queue partition as they are now (after a `fill`, exact).
fn partition_stats(q: &QueueCtx, p: &LocalPartition, now: i64) -> QueuePartitionStats {
    let w = p.watermarks();
    let st = q.state.borrow();
    let c = st.counts();
    let unscanned = w
        .written_offset
        .saturating_sub(c.scanned)
        .min(st.not_done_in(c.scanned, w.written_offset));
    let k = &q.counters;
    QueuePartitionStats {
        partition: q.key.1,
        depth: c.ready + c.delayed + c.dead_pending + unscanned,
        ready: c.ready,
        delayed: c.delayed,
        in_flight: c.in_flight,
        oldest_age_ms: c
            .oldest_timestamp_ms
            .map_or(0, |t| u64::try_from(now - t).unwrap_or(0)),
        acked: k.acked.get(),
        nacked: k.nacked.get(),
        expired: k.expired.get(),
        dead_lettered: k.dead_lettered.get(),
        dropped: k.dropped.get(),
        lost: k.lost.get(),
        redelivered: k.redelivered.get(),
        purged: k.purged.get(),
        ack_floor: c.floor,
        high_watermark: w.written_offset,
    }
}

async fn peek(shard: &LocalShard, key: &PartitionKey, max: usize) -> Result<Vec<QueueMessage>> {
    let q = queues(shard)?.get(key)?;
    replicated::check(&q)?;
    let p = shard.partition(key)?;
    fill(shard, &q).await?;
    let offsets: Vec<Receipt> = q
        .state
        .borrow()
        .peek(max.min(RECEIVE_MESSAGES_MAX))
        .into_iter()
        .map(|(offset, attempt)| Receipt { offset, attempt })
        .collect();
    read_messages(&p, &q, &offsets).await
}

#[cfg(test)]
mod ack_log_tests {
    use super::*;
    use crate::log::PartitionLog;
    use crate::queue::state::{Known, Snapshot};
    use crate::storage::CrashStorage;

    // Proves: the largest snapshot the queue can write (a full window of not-done messages
    // plus every fact a quarter segment of the smallest records can carry) is appended to an
    // ack log with the smallest segments and read back after a restart, so opening a queue
    // (which writes a snapshot) cannot fail on its size.
    #[test]
    fn snapshot_of_the_worst_case_fits_in_an_ack_log() {
        let cfg = ack_log_config(&LogConfig {
            segment_bytes: 64 << 10,
            ..LogConfig::default()
        });
        let since_snapshot_max = cfg.segment_bytes as usize / 4 + RECEIVE_MESSAGES_MAX * 21;
        let facts = WINDOW_MAX + since_snapshot_max / 9;
        let snapshot = Snapshot {
            floor: 1,
            scanned: 2,
            facts: (0..facts as u64)
                .map(|o| {
                    (
                        o,
                        Known::Delivered {
                            attempts: u32::MAX,
                            ready_at_ms: i64::MAX,
                        },
                    )
                })
                .collect(),
        };
        let mut b = BatchBuilder::new();
        b.push(1, None, AckRecord::Snapshot(snapshot).encode(), Vec::new());
        let big = b.build().unwrap();
        assert!(big.len() as u64 > cfg.segment_bytes, "the case of interest");
        let mut b = BatchBuilder::new();
        b.push(1, None, AckRecord::Acked { offset: 7 }.encode(), Vec::new());
        let small = b.build().unwrap();

        let storage = CrashStorage::new();
        let dir = std::path::Path::new("/acks");
        let open = || {
            futures_lite::future::block_on(PartitionLog::open(storage.clone(), dir, cfg.clone(), 0))
                .unwrap()
        };
        let mut log = open();
        for batch in [small.clone(), big.clone(), small] {
            log.append(batch, 0).unwrap();
            let job = log.take_flush(true).unwrap();
            let done = futures_lite::future::block_on(job.run());
            log.finish_flush(done).unwrap();
        }
        drop(log);
        let log = open();
        assert_eq!(log.watermarks().next_offset, 3);
        let r = match log.plan_read(1, 1 << 20, 1).unwrap() {
            crate::log::ReadPlan::Ready(r) => r,
            crate::log::ReadPlan::Disk(d) => futures_lite::future::block_on(d.run()).unwrap(),
        };
        let got: usize = r.chunks.iter().map(|c| c.len()).sum();
        assert_eq!(got, big.len(), "the snapshot batch reads back whole");
    }
}
