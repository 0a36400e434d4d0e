//! The partition core: one partition's produce -> flush -> ack state machine, with no I/O, no
//! clock and no reply channels (docs/architecture.md, "Partition core"). The shard
//! (`engine/src/shard/`) is its runtime shell; the deterministic simulator drives the same core
//! against [`CrashStorage`](crate::storage::CrashStorage).
//!
//! ```text
//!   produce(batch, acks, token, now_ms) --> idempotence check --> log.append
//!        |                                                           |
//!        |  Reply (leader/none, duplicate already durable, refused)  v
//!        |                                     waiters (durable acks, sorted by offset)
//!        v                                                           |
//!   StartFlush(job) --shell runs job.run()--> flush_done(done) --> Reply for every waiter
//!        ^                                         |               the durable offset covers,
//!        |                                         |               in offset order
//!   sync_timer_fired <-- ArmSyncTimer{deadline_ms} <+-- more data? StartFlush again
//!                                                  +-- error? fail waiters, StartRepair
//! ```
//!
//! Everything that touches a file is a *job*: a value holding what the I/O needs ([`Flush`],
//! [`RepairJob`], [`SnapshotJob`], [`RetentionRoll`], [`Expired`]). The shell runs it (on glommio
//! in production, with `futures_lite::future::block_on` against `CrashStorage` in tests) and
//! hands the result back; the core decides what follows and says so with [`Action`]s.
//!
//! Invariants checked here (`assert!`, programmer errors):
//! - `durable <= written <= next` and `log_start <= written` after every flush;
//! - the high watermark (`written`) and the durable offset never move back within one log;
//! - a durable ack is replied only when the durable offset is above its last offset, and the
//!   durable acks of a partition are replied in offset order;
//! - at most one flush job and one snapshot job are outstanding.
//!
//! The generic parameter `T` is the shell's *ack token* (a reply channel and a start time in the
//! shard, an id in the simulator): the core stores it and gives it back in [`Action::Reply`].

// Offsets, counts and positions narrowed to a smaller width are checked (issue 13, as in the
// format and log layers); no host-endian conversions.
#![warn(clippy::cast_possible_truncation, clippy::host_endian_bytes)]
mod jobs;
#[cfg(test)]
mod tests;

use std::cell::{Ref, RefCell};
use std::collections::VecDeque;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

use jobs::Expiring;
pub use jobs::{Expired, RepairJob, RestartJob, RetentionRoll};

use crate::api::{Acks, Isolation, ProduceAck};
use crate::batch::{ProducerInfo, ValidatedBatch};
use crate::error::{Error, Result};
use crate::idempotence::{self, ProducerTable, SnapshotJob, Verdict};
use crate::log::{
    Appended, CloseJob, FlushDone, FlushJob, FlushTimings, LogConfig, PartitionLog, PrepareDone,
    PrepareJob, RecoveryReport, SealDone, SealJob, Watermarks,
};
use crate::storage::Storage;

/// A partition's name: (topic, partition number).
pub type PartitionKey = (Arc<str>, u32);

/// Settings of the core (from `EngineConfig`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoreConfig {
    /// Written-but-unsynced data is synced at most this long after its flush ends.
    pub sync_interval_ms: u64,
}

/// A group commit to run: `job.run()`, then [`PartitionCore::flush_done`] with its result.
pub struct Flush<S: Storage> {
    pub job: FlushJob<S>,
    /// Appended bytes this flush took out of memory (the shell's unflushed-bytes account).
    pub taken_bytes: usize,
}

/// What the shell must do after a call into the core, in order.
pub enum Action<S: Storage, T> {
    /// Answer a producer. `durable` = it waited for an fdatasync (its latency is the durable
    /// append latency).
    Reply {
        token: T,
        result: Result<ProduceAck>,
        durable: bool,
    },
    /// The high watermark moved, the log was repaired or the partition closed: wake fetches,
    /// long polls and subscriptions.
    WakeReaders,
    /// Run this group commit, then call [`PartitionCore::flush_done`].
    StartFlush(Flush<S>),
    /// Call [`PartitionCore::sync_timer_fired`] at `deadline_ms` (same clock as `now_ms`).
    ArmSyncTimer { deadline_ms: i64 },
    /// A flush failed: run the reopen, then call [`PartitionCore::repaired`].
    StartRepair(RepairJob<S>),
    /// Write a producer-state snapshot, then call [`PartitionCore::snapshot_done`].
    WriteSnapshot(SnapshotJob<S>),
}

/// Outcome of [`PartitionCore::produce`] (the replies themselves are actions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Produced {
    /// Appended at these offsets; `waits_durable` = its reply waits for a sync.
    Appended {
        appended: Appended,
        waits_durable: bool,
    },
    /// An idempotent retry of a batch already in the log: nothing appended, answered (now or
    /// once durable) with the original offsets.
    Duplicate(ProduceAck),
    /// Refused (sequence error, unwritable partition, corrupt batch): answered with the error.
    Refused,
}

/// What a finished flush did, for the shell's counters.
#[derive(Debug)]
pub struct FlushReport {
    /// Bytes the flush took out of memory (as in its [`Flush`]).
    pub taken_bytes: usize,
    /// Whether it fdatasynced.
    pub synced: bool,
    pub timings: FlushTimings,
    /// The new watermarks, or the I/O error (the partition is then repairing, or closing).
    pub result: Result<Watermarks>,
}

/// An opened partition.
pub struct Opened<S: Storage, T> {
    pub core: PartitionCore<S, T>,
    pub report: RecoveryReport,
    /// A snapshot to write before the partition serves (the open replayed much of the log;
    /// see [`idempotence::REPLAY_SNAPSHOT_BYTES`]): run it and call
    /// [`PartitionCore::snapshot_done`].
    pub snapshot: Option<SnapshotJob<S>>,
}

/// A deliberate bug, for showing that a simulator or a test catches it (never set in
/// production: only [`PartitionCore::sabotage`] sets it).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sabotage {
    /// Durable acks are answered at append, like leader acks (and a retry of a batch written
    /// but not synced is answered at once), claiming a durability nothing provided yet.
    AckBeforeSync,
}

/// A durable ack waiting for the sync that covers it.
struct Waiter<T> {
    ack: ProduceAck,
    token: T,
}

/// Why the partition takes no appends (between a failed flush and a successful repair).
#[derive(Debug, Clone)]
struct Failure {
    /// The failed flush's error was ENOSPC (appends answer `DiskFull`, retriable).
    disk_full_path: Option<String>,
    reason: String,
}

/// The partition state machine (see the module doc).
pub struct PartitionCore<S: Storage, T> {
    key: PartitionKey,
    cfg: CoreConfig,
    /// Shared only so that the log's own async retention roll ([`RetentionRoll`]) can borrow it
    /// between its awaits; the core never holds a borrow beyond one call.
    log: Rc<RefCell<PartitionLog<S>>>,
    producers: ProducerTable,
    /// Durable acks, sorted by last offset (a duplicate may wait for an older offset).
    waiters: VecDeque<Waiter<T>>,
    /// The flush job outstanding, if any: (taken bytes, syncs).
    flush_in_flight: Option<(usize, bool)>,
    sync_timer_armed: bool,
    failure: Option<Failure>,
    /// No new flush is planned by produce or the timer (a close is flushing).
    closing: bool,
    closed: bool,
    /// Watermarks after the last flush (monotonic within one log).
    last_watermarks: Watermarks,
    /// Offset of the newest producer snapshot written; whether one is being written.
    snapshot_written_upto: Option<u64>,
    snapshot_running: bool,
    sabotage: Option<Sabotage>,
    /// Files retention is deleting (a repair finishes their deletion before it reopens).
    expiring: Expiring,
    /// A restart at this offset began ([`Self::begin_restart`]) and has not succeeded yet.
    restart_started: Option<u64>,
}

impl<S: Storage, T> PartitionCore<S, T> {
    /// Opens (recovering) the log in `dir` and rebuilds the producer table from its newest
    /// snapshot and the log after it.
    pub async fn open(
        storage: S,
        dir: &Path,
        key: PartitionKey,
        log_config: LogConfig,
        cfg: CoreConfig,
        now_ms: i64,
    ) -> Result<Opened<S, T>> {
        let log = PartitionLog::open(storage, dir, log_config, now_ms).await?;
        let (producers, replayed_bytes) = idempotence::rebuild(&log).await?;
        let report = log.recovery.clone();
        let mut core = Self::new(key, cfg, log, producers);
        // The next open (after a crash that may come before the retention timer's first
        // snapshot) then replays only what this process writes.
        let snapshot = if replayed_bytes >= idempotence::REPLAY_SNAPSHOT_BYTES {
            core.take_snapshot_job()
        } else {
            None
        };
        Ok(Opened {
            core,
            report,
            snapshot,
        })
    }

    /// A core over an opened log and its rebuilt producer table.
    pub fn new(
        key: PartitionKey,
        cfg: CoreConfig,
        log: PartitionLog<S>,
        producers: ProducerTable,
    ) -> Self {
        let w = log.watermarks();
        check_watermarks(&w);
        PartitionCore {
            key,
            cfg,
            log: Rc::new(RefCell::new(log)),
            producers,
            waiters: VecDeque::new(),
            flush_in_flight: None,
            sync_timer_armed: false,
            failure: None,
            closing: false,
            closed: false,
            last_watermarks: w,
            snapshot_written_upto: None,
            snapshot_running: false,
            sabotage: None,
            expiring: Expiring::default(),
            restart_started: None,
        }
    }

    /// Turns on a deliberate bug (simulator self-test: `--sabotage`).
    #[doc(hidden)]
    pub fn sabotage(&mut self, sabotage: Sabotage) {
        self.sabotage = Some(sabotage);
    }

    /// The offset below which durable acks complete: the durable offset (or, sabotaged, the
    /// high watermark).
    fn ack_covered_offset(&self, w: &Watermarks) -> u64 {
        match self.sabotage {
            Some(Sabotage::AckBeforeSync) => w.written_offset,
            None => w.durable_offset,
        }
    }

    pub fn key(&self) -> &PartitionKey {
        &self.key
    }

    /// The log, for reads (`plan_read`, `time_lookup_start`, sizes). Do not hold across an
    /// await.
    pub fn log(&self) -> Ref<'_, PartitionLog<S>> {
        self.log.borrow()
    }

    pub fn watermarks(&self) -> Watermarks {
        self.log.borrow().watermarks()
    }

    /// Where reads with `isolation` end (docs/semantics.md, "What readers see"): `Durable`, the
    /// durable offset; `Appended`, the log's appended end ([`PartitionLog::appended_end`]:
    /// batches in memory, not yet written), held back at the first batch a durable producer
    /// waits for that is not written yet (its readers see it when written, as they always
    /// did, and the batches after it wait with it). Always a batch boundary.
    pub fn visible_end(&self, isolation: Isolation) -> u64 {
        let log = self.log.borrow();
        let w = log.watermarks();
        match isolation {
            Isolation::Durable => w.durable_offset,
            Isolation::Appended => {
                let appended = log.appended_end();
                // Waiters are sorted by last offset and their batches do not overlap, so the
                // first one not yet written has the lowest base offset of those unwritten.
                let i = self
                    .waiters
                    .partition_point(|x| x.ack.last_offset < w.written_offset);
                match self.waiters.get(i) {
                    Some(x) => appended.min(x.ack.base_offset.max(w.written_offset)),
                    None => appended,
                }
            }
        }
    }

    pub fn producers(&self) -> &ProducerTable {
        &self.producers
    }

    /// Durable acks waiting for a sync.
    pub fn waiting_acks(&self) -> usize {
        self.waiters.len()
    }

    pub fn is_flushing(&self) -> bool {
        self.flush_in_flight.is_some()
    }

    /// Leaves segment rolls to background jobs the shell runs beside the flushes
    /// (docs/storage.md, "Segment rolls"): after each flush, [`Self::take_prepare`] and
    /// [`Self::take_seal`]. Call again after a repair (a new log).
    pub fn enable_background_rolls(&mut self) {
        self.log.borrow_mut().set_background_rolls(true);
    }

    /// The next segment's file to make ahead of its roll, if it is time: run it, then
    /// [`Self::prepare_done`].
    pub fn take_prepare(&mut self) -> Option<PrepareJob<S>> {
        if self.closing || self.closed || self.failure.is_some() {
            return None;
        }
        self.log.borrow_mut().take_prepare()
    }

    pub fn prepare_done(&mut self, done: PrepareDone<S>) {
        self.log.borrow_mut().finish_prepare(done);
    }

    /// Sealed segments to sync and index off the write path: run it, then
    /// [`Self::seal_done`]. Also while closing (after the final flushes, so that every sealed
    /// segment has its index at the next start).
    pub fn take_seal(&mut self) -> Option<SealJob<S>> {
        if self.closed || self.failure.is_some() {
            return None;
        }
        self.log.borrow_mut().take_seal()
    }

    /// A seal ended: completes the durable acks it unblocked and plans what follows as after a
    /// flush (a sync for waiters the seal did not cover, the sync timer), or fails the partition.
    pub fn seal_done(&mut self, done: SealDone, now_ms: i64, out: &mut Vec<Action<S, T>>) {
        if self.failure.is_some() {
            return; // already failed: the repair replaces this log
        }
        let finished = self.log.borrow_mut().finish_seal(done);
        match finished {
            Ok(Some(w)) => {
                self.advance(w, out);
                self.plan_after_flush(now_ms, out);
            }
            Ok(None) => {}
            Err(e) => self.fail(&e, out),
        }
    }

    /// Whether a prepare or seal job is running (a close or repair waits for it).
    pub fn has_roll_jobs(&self) -> bool {
        self.log.borrow().has_roll_jobs()
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Why the partition takes no appends (a flush failed; a repair is running or failed).
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_ref().map(|f| f.reason.as_str())
    }

    pub fn set_retention(&mut self, bytes: Option<u64>, ms: Option<u64>) {
        self.log.borrow_mut().set_retention(bytes, ms);
    }

    /// Drops cached batches down to `keep_bytes`; returns the bytes freed.
    pub fn evict_cache(&mut self, keep_bytes: usize) -> usize {
        self.log.borrow_mut().evict_cache(keep_bytes)
    }

    /// The error an append gets while the partition is failed, naming the partition.
    fn failure_error(&self, f: &Failure) -> Error {
        match &f.disk_full_path {
            Some(_) => Error::DiskFull {
                path: self.log.borrow().dir().display().to_string(),
            },
            None => self.failed_error(f.reason.clone()),
        }
    }

    fn failed_error(&self, reason: String) -> Error {
        Error::PartitionFailed {
            topic: self.key.0.to_string(),
            partition: self.key.1,
            reason,
        }
    }

    /// Appends one batch (validated on ingress), after the idempotence check. `token` = `None`:
    /// nobody waits for an answer. A durable producer's reply waits for the sync that covers
    /// its batch; every other reply is an action right away.
    pub fn produce(
        &mut self,
        batch: ValidatedBatch,
        acks: Acks,
        token: Option<T>,
        now_ms: i64,
        out: &mut Vec<Action<S, T>>,
    ) -> Produced {
        // One copy is the whole replica set: `all` asks what `durable` does (docs/replication.md).
        let acks = if acks == Acks::All {
            Acks::Durable
        } else {
            acks
        };
        let reply_now = |out: &mut Vec<Action<S, T>>, token: Option<T>, result| {
            if let Some(token) = token {
                out.push(Action::Reply {
                    token,
                    result,
                    durable: false,
                });
            }
        };
        if self.closed {
            let e = Error::UnknownPartition {
                topic: self.key.0.to_string(),
                partition: self.key.1,
            };
            reply_now(out, token, Err(e));
            return Produced::Refused;
        }
        let stamp = match self.check_producer(&batch) {
            Check::Append(stamp) => stamp,
            Check::Duplicate(ack) => {
                self.answer_duplicate(ack, acks, token, out);
                return Produced::Duplicate(ack);
            }
            Check::Refuse(e) => {
                reply_now(out, token, Err(e));
                return Produced::Refused;
            }
        };
        if let Some(f) = &self.failure {
            let e = self.failure_error(f);
            reply_now(out, token, Err(e));
            return Produced::Refused;
        }
        let appended = self.log.borrow_mut().append_validated(batch, now_ms);
        let a = match appended {
            Ok(a) => a,
            Err(e) => {
                reply_now(out, token, Err(e));
                return Produced::Refused;
            }
        };
        assert!(a.base_offset <= a.last_offset, "append returned {a:?}");
        if let Some((info, count)) = stamp {
            self.producers.record(info, count, a.base_offset);
        }
        let ack = ProduceAck {
            base_offset: a.base_offset,
            last_offset: a.last_offset,
        };
        let waits_durable = acks == Acks::Durable && token.is_some();
        match token {
            Some(token) if acks == Acks::Durable && self.sabotage.is_some() => {
                out.push(Action::Reply {
                    token,
                    result: Ok(ack),
                    durable: true,
                });
            }
            Some(token) if acks == Acks::Durable => self.wait_durable(ack, token),
            token => {
                reply_now(out, token, Ok(ack));
                // Readers of appended data see it now, before its write.
                out.push(Action::WakeReaders);
            }
        }
        self.plan_flush(false, out);
        Produced::Appended {
            appended: a,
            waits_durable,
        }
    }

    /// Appends a batch its replicated partition's Raft group committed (docs/replication.md,
    /// "Replicate, then apply"): at the next offset, recording its producer's state, with no
    /// idempotence check (the Raft leader deduplicated it; a committed batch is never
    /// refused for sequence reasons). Nobody waits for an answer.
    pub fn apply_committed(
        &mut self,
        batch: ValidatedBatch,
        now_ms: i64,
        out: &mut Vec<Action<S, T>>,
    ) -> Result<Appended> {
        if self.closed {
            return Err(Error::UnknownPartition {
                topic: self.key.0.to_string(),
                partition: self.key.1,
            });
        }
        if let Some(f) = &self.failure {
            return Err(self.failure_error(f));
        }
        let h = *batch.header();
        let a = self.log.borrow_mut().append_validated(batch, now_ms)?;
        if h.producer.producer_id != 0 {
            self.producers
                .record(h.producer, h.record_count, a.base_offset);
        }
        self.plan_flush(false, out);
        Ok(a)
    }

    /// The idempotence check before an append. An unreadable header passes: append reports it.
    fn check_producer(&self, batch: &ValidatedBatch) -> Check {
        let h = batch.header();
        if h.producer.producer_id == 0 {
            return Check::Append(None);
        }
        match self.producers.check(h.producer, h.record_count) {
            Ok(Verdict::Append) => Check::Append(Some((h.producer, h.record_count))),
            Ok(Verdict::Duplicate {
                base_offset,
                last_offset,
            }) => Check::Duplicate(ProduceAck {
                base_offset,
                last_offset,
            }),
            Err(e) => Check::Refuse(e),
        }
    }

    /// A retried batch already in the log: the original offsets, once as durable as the
    /// producer asked (the original may still be waiting for its fdatasync).
    fn answer_duplicate(
        &mut self,
        ack: ProduceAck,
        acks: Acks,
        token: Option<T>,
        out: &mut Vec<Action<S, T>>,
    ) {
        let Some(token) = token else { return };
        let durable = self.ack_covered_offset(&self.log.borrow().watermarks());
        if acks != Acks::Durable || ack.last_offset < durable {
            out.push(Action::Reply {
                token,
                result: Ok(ack),
                durable: false,
            });
            return;
        }
        // Not durable yet and the partition failed: the original's fate is unknown until the
        // repair; waiting could ack whatever later takes those offsets.
        if let Some(f) = &self.failure {
            let e = self.failure_error(f);
            out.push(Action::Reply {
                token,
                result: Err(e),
                durable: false,
            });
            return;
        }
        self.wait_durable(ack, token);
    }

    fn wait_durable(&mut self, ack: ProduceAck, token: T) {
        let i = self
            .waiters
            .partition_point(|w| w.ack.last_offset <= ack.last_offset);
        self.waiters.insert(i, Waiter { ack, token });
    }

    /// Takes the next group commit if there is data (or a wanted sync) and no flush is running.
    fn plan_flush(&mut self, force_sync: bool, out: &mut Vec<Action<S, T>>) {
        if self.closing || self.closed {
            return;
        }
        if let Some(f) = self.take_flush(force_sync) {
            out.push(Action::StartFlush(f));
        }
    }

    fn take_flush(&mut self, force_sync: bool) -> Option<Flush<S>> {
        if self.flush_in_flight.is_some() || self.failure.is_some() {
            return None;
        }
        let want_sync = force_sync || (!self.waiters.is_empty() && self.sabotage.is_none());
        let mut log = self.log.borrow_mut();
        let before = log.pending_bytes();
        let job = log.take_flush(want_sync)?;
        let taken_bytes = before.saturating_sub(log.pending_bytes());
        self.flush_in_flight = Some((taken_bytes, job.syncs()));
        Some(Flush { job, taken_bytes })
    }

    /// Applies a finished flush: completes the durable acks its sync covers (in offset order),
    /// wakes readers, and plans what follows (the next flush, the sync timer, a snapshot after
    /// an index checkpoint, or the repair after an error).
    pub fn flush_done(
        &mut self,
        done: FlushDone<S>,
        now_ms: i64,
        out: &mut Vec<Action<S, T>>,
    ) -> FlushReport {
        let Some((taken_bytes, synced)) = self.flush_in_flight.take() else {
            panic!("flush_done without a flush in flight");
        };
        let timings = done.timings();
        let checkpointed = done.wrote_checkpoint();
        let finished = self.log.borrow_mut().finish_flush(done);
        let result = match finished {
            Ok(w) => {
                self.advance(w, out);
                // Not while closing: the close writes its own snapshot after the last flush.
                if checkpointed
                    && !self.closing
                    && let Some(job) = self.take_snapshot_job()
                {
                    out.push(Action::WriteSnapshot(job));
                }
                self.plan_after_flush(now_ms, out);
                Ok(w)
            }
            Err(e) => {
                self.fail(&e, out);
                Err(e)
            }
        };
        FlushReport {
            taken_bytes,
            synced,
            timings,
            result,
        }
    }

    /// New watermarks from a flush: checks them, completes covered waiters, wakes readers.
    fn advance(&mut self, w: Watermarks, out: &mut Vec<Action<S, T>>) {
        check_watermarks(&w);
        let last = self.last_watermarks;
        assert!(
            w.written_offset >= last.written_offset && w.durable_offset >= last.durable_offset,
            "{}/{}: watermarks moved back: {last:?} -> {w:?}",
            self.key.0,
            self.key.1
        );
        self.last_watermarks = w;
        let mut previous_last_offset = None;
        let covered = self.ack_covered_offset(&w);
        while self
            .waiters
            .front()
            .is_some_and(|x| x.ack.last_offset < covered)
        {
            let Some(x) = self.waiters.pop_front() else {
                break;
            };
            assert!(
                previous_last_offset.is_none_or(|p| p <= x.ack.last_offset),
                "durable acks out of offset order"
            );
            previous_last_offset = Some(x.ack.last_offset);
            out.push(Action::Reply {
                token: x.token,
                result: Ok(x.ack),
                durable: true,
            });
        }
        out.push(Action::WakeReaders);
    }

    /// After a successful flush: the next one if data or a waiter is there, else the sync timer
    /// if written data is not yet durable.
    fn plan_after_flush(&mut self, now_ms: i64, out: &mut Vec<Action<S, T>>) {
        if self.closing || self.closed {
            return;
        }
        if let Some(f) = self.take_flush(false) {
            out.push(Action::StartFlush(f));
            return;
        }
        let w = self.log.borrow().watermarks();
        if w.durable_offset < w.written_offset && !self.sync_timer_armed {
            self.sync_timer_armed = true;
            let interval_ms = i64::try_from(self.cfg.sync_interval_ms).unwrap_or(i64::MAX);
            out.push(Action::ArmSyncTimer {
                deadline_ms: now_ms.saturating_add(interval_ms),
            });
        }
    }

    /// A flush failed: every durable waiter gets the error (naming this partition), appends are
    /// refused until the repair, which starts now (unless the partition is closing).
    fn fail(&mut self, e: &Error, out: &mut Vec<Action<S, T>>) {
        let failure = Failure {
            disk_full_path: match e {
                Error::DiskFull { path } => Some(path.clone()),
                _ => None,
            },
            reason: e.to_string(),
        };
        for w in self.waiters.drain(..).collect::<Vec<_>>() {
            let err = match &failure.disk_full_path {
                Some(path) => Error::DiskFull { path: path.clone() },
                None => self.failed_error(failure.reason.clone()),
            };
            out.push(Action::Reply {
                token: w.token,
                result: Err(err),
                durable: true,
            });
        }
        self.failure = Some(failure);
        if !self.closing && !self.closed {
            let l = self.log.borrow();
            out.push(Action::StartRepair(RepairJob::new(
                l.storage().clone(),
                l.dir().to_path_buf(),
                l.config().clone(),
                self.expiring.clone(),
            )));
        }
    }

    /// The result of a [`RepairJob`]: on success the reopened log replaces the failed one (the
    /// producer table forgets batches the reopen did not find) and appends are taken again.
    /// On error the partition stays unwritable; the error is returned for the shell to log.
    pub fn repaired(
        &mut self,
        reopened: Result<PartitionLog<S>>,
        out: &mut Vec<Action<S, T>>,
    ) -> Result<Watermarks> {
        let log = reopened?;
        let w = log.watermarks();
        check_watermarks(&w);
        self.producers.truncate_to(w.next_offset);
        // A failed restart whose marker was durable: the reopen finished it.
        if self
            .restart_started
            .take()
            .is_some_and(|s| w.log_start >= s)
        {
            self.producers = ProducerTable::default();
        }
        *self.log.borrow_mut() = log;
        // A new log instance: its watermarks are what the disk holds.
        self.last_watermarks = w;
        self.failure = None;
        out.push(Action::WakeReaders);
        Ok(w)
    }

    /// Why the log cannot restart at `start` now (`None`: it can). Transient reasons (a flush,
    /// a producer snapshot or a retention roll running) clear by themselves.
    pub fn restart_blocker(&self, start: u64) -> Option<String> {
        if self.closing || self.closed {
            return Some("the partition is closing".into());
        }
        if let Some(f) = &self.failure {
            return Some(format!("the partition failed: {}", f.reason));
        }
        if self.flush_in_flight.is_some() {
            return Some("a flush is running".into());
        }
        if self.snapshot_running {
            return Some("a producer snapshot is being written".into());
        }
        self.log.borrow().restart_blocker(start)
    }

    /// Starts restarting the log empty at `start`, at or above its end (a replica whose
    /// leader's retention deleted what it lacks; docs/storage.md, "Restarting a log at an
    /// offset"). Until [`Self::restarted`] appends are refused and nothing is flushed; durable
    /// waiters get an error (their batches go). Refused while [`Self::restart_blocker`] says
    /// why.
    pub fn begin_restart(
        &mut self,
        start: u64,
        out: &mut Vec<Action<S, T>>,
    ) -> Result<RestartJob<S>> {
        let end = self.log.borrow().watermarks().next_offset;
        if start < end {
            return Err(Error::InvalidArgument(format!(
                "restart offset {start} is below the log's end {end}"
            )));
        }
        if let Some(why) = self.restart_blocker(start) {
            return Err(Error::Busy(why));
        }
        let reason = format!("restarting at offset {start}");
        for w in self.waiters.drain(..).collect::<Vec<_>>() {
            out.push(Action::Reply {
                token: w.token,
                result: Err(self.failed_error(reason.clone())),
                durable: true,
            });
        }
        self.failure = Some(Failure {
            disk_full_path: None,
            reason,
        });
        self.restart_started = Some(start);
        let mut l = self.log.borrow_mut();
        l.begin_restart(start);
        Ok(RestartJob::new(
            l.storage().clone(),
            l.dir().to_path_buf(),
            l.config().clone(),
            start,
        ))
    }

    /// The result of a [`RestartJob`]: on success the new, empty log replaces the old one, the
    /// producer table starts empty (it learns the batches applied from now on) and appends
    /// are taken again. On error the partition repairs itself from disk (which finishes the
    /// restart if its marker was durable, or reopens the old log); the error is returned.
    pub fn restarted(
        &mut self,
        result: Result<PartitionLog<S>>,
        out: &mut Vec<Action<S, T>>,
    ) -> Result<Watermarks> {
        let log = match result {
            Ok(log) => log,
            Err(e) => {
                self.failure = None;
                self.fail(&e, out);
                return Err(e);
            }
        };
        let mut log = log;
        // The new log rolls as the old one did (the shell enabled background rolls, or not).
        log.set_background_rolls(self.log.borrow().background_rolls());
        let w = log.watermarks();
        check_watermarks(&w);
        *self.log.borrow_mut() = log;
        self.producers = ProducerTable::default();
        self.last_watermarks = w;
        self.snapshot_written_upto = None;
        self.restart_started = None;
        self.failure = None;
        out.push(Action::WakeReaders);
        Ok(w)
    }

    /// The periodic sync is due: a flush that syncs, unless one is running (its end re-arms the
    /// timer if data is still unsynced).
    pub fn sync_timer_fired(&mut self, out: &mut Vec<Action<S, T>>) {
        self.sync_timer_armed = false;
        self.plan_flush(true, out);
    }

    /// A producer-state snapshot of the table as valid below the durable offset, unless one is
    /// being written or the newest already has that offset.
    pub fn take_snapshot_job(&mut self) -> Option<SnapshotJob<S>> {
        // Not while a restart removes the old log's snapshots: this one would outlive them.
        if self.snapshot_running || self.restart_started.is_some() {
            return None;
        }
        let upto = self.log.borrow().watermarks().durable_offset;
        if self.snapshot_written_upto == Some(upto) {
            return None;
        }
        let l = self.log.borrow();
        match self
            .producers
            .snapshot_job(l.storage().clone(), l.dir(), upto)
        {
            Ok(job) => {
                drop(l);
                self.snapshot_running = true;
                Some(job)
            }
            Err(e) => {
                tracing::warn!(topic = %self.key.0, partition = self.key.1, error = %e, "producer snapshot not encoded");
                None
            }
        }
    }

    /// The result of a [`SnapshotJob`] written up to `upto_offset`.
    pub fn snapshot_done(&mut self, upto_offset: u64, result: &Result<()>) {
        assert!(
            self.snapshot_running,
            "snapshot_done without a snapshot job"
        );
        self.snapshot_running = false;
        if result.is_ok() {
            self.snapshot_written_upto = Some(upto_offset);
        }
    }

    pub fn is_snapshot_running(&self) -> bool {
        self.snapshot_running
    }

    /// Retention, step 1: the roll of an expired active segment (run it before
    /// [`Self::take_expired`]; it does nothing unless the active segment expired and is idle).
    pub fn retention_roll(&self) -> RetentionRoll<S> {
        RetentionRoll::new(self.log.clone())
    }

    /// Retention, step 2: removes expired whole segments from the log (the log start moves at
    /// once) and returns the files to delete. Run it, then wake readers if it was not empty.
    pub fn take_expired(&mut self, now_ms: i64) -> Expired<S> {
        let mut l = self.log.borrow_mut();
        let before = l.cache_bytes();
        // Nothing while failed: the repair reopens the log from the files this would delete
        // (found by the simulator, engine/src/sim, seed 317).
        let files = if self.failure.is_some() {
            Vec::new()
        } else {
            l.take_expired(now_ms)
        };
        let cache_freed_bytes = before.saturating_sub(l.cache_bytes());
        Expired::new(
            l.storage().clone(),
            l.dir().to_path_buf(),
            files,
            cache_freed_bytes,
            self.expiring.clone(),
        )
    }

    /// Close, step 1: no flush is planned by appends or the timer any more. The shell then
    /// waits until [`Self::is_flushing`] is false and runs [`Self::take_close_flush`] jobs.
    pub fn begin_close(&mut self) {
        self.closing = true;
    }

    /// Close, step 2: the final flushes (always syncing). Run each and pass it to
    /// [`Self::flush_done`]; stop at `None` or at an error.
    pub fn take_close_flush(&mut self) -> Option<Flush<S>> {
        assert!(self.closing, "take_close_flush before begin_close");
        self.take_flush(true)
    }

    /// Close, step 3: the partition is closed (readers wake and end); returns the checkpoint
    /// write of a clean close, if the log has one to write.
    pub fn finish_close(&mut self, out: &mut Vec<Action<S, T>>) -> Option<CloseJob<S>> {
        self.closing = true;
        self.closed = true;
        out.push(Action::WakeReaders);
        if self.failure.is_some() {
            return None;
        }
        self.log.borrow().close_job()
    }

    /// The partition is being deleted: waiting producers get `UnknownTopic`, readers wake and
    /// end. Its files go away with the directory.
    pub fn close_deleted(&mut self, out: &mut Vec<Action<S, T>>) {
        self.closing = true;
        self.closed = true;
        for w in self.waiters.drain(..) {
            out.push(Action::Reply {
                token: w.token,
                result: Err(Error::UnknownTopic(self.key.0.to_string())),
                durable: true,
            });
        }
        out.push(Action::WakeReaders);
    }
}

/// The idempotence verdict on one batch (a duplicate is a typed outcome, not an error).
enum Check {
    /// Append, then record the producer's batch if it is idempotent.
    Append(Option<(ProducerInfo, u32)>),
    /// Already in the log: answer with these original offsets.
    Duplicate(ProduceAck),
    Refuse(Error),
}

/// The log's offset invariant: `durable <= written <= next` and `log_start <= written`.
/// (`log_start <= durable` does not always hold: the retention roll syncs an expired active
/// segment without moving the log's durable offset, and the deletion then moves the log start
/// past it.)
fn check_watermarks(w: &Watermarks) {
    assert!(
        w.durable_offset <= w.written_offset && w.written_offset <= w.next_offset,
        "watermarks out of order: {w:?}"
    );
    assert!(
        w.log_start <= w.written_offset,
        "log start above the high watermark: {w:?}"
    );
}
