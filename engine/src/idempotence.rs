//! Idempotent producers: per partition, per producer, the sequence state that turns a retried
//! batch into a no-op (docs/semantics.md, "Idempotent producer").
//!
//! Every batch header carries `producer_id`, `producer_epoch` and `base_sequence`
//! (docs/storage.md, "Record batch"); `producer_id = 0` means "not idempotent" and is never
//! tracked. For the others, the partition keeps the last [`DEDUP_WINDOW_BATCHES`] batches of
//! each producer (first and last sequence, assigned offsets) and checks each new batch before it
//! is appended:
//!
//! ```text
//!   epoch <  current            -> ProducerFenced        (a newer instance owns the id)
//!   epoch >  current            -> append iff base_sequence == 0 (the new epoch restarts at 0)
//!   no state for the producer   -> append iff base_sequence == 0, else UnknownProducer
//!   same (first, last) sequence as one of the last 5 batches -> Duplicate: the ORIGINAL offsets
//!   base_sequence == last + 1   -> append
//!   base_sequence <= last       -> DuplicateSequence (older than the window: offsets unknown)
//!   otherwise                   -> OutOfOrderSequence (a gap: an earlier batch is missing)
//! ```
//! Sequences are `u32` and wrap (`u32::MAX + 1 = 0`), as Kafka's do at `i32::MAX`.
//!
//! The table is plain data (no I/O, no clock): the partition core (`crate::partition`) checks
//! and records in the same call as the append, so check-then-append is atomic. On open the table is rebuilt from the log itself
//! ([`ProducerTable::replay`], the log is the truth), starting from the newest snapshot whose
//! offset the recovered log still covers ([`Snapshot`]). Snapshots are written by one writer,
//! [`SnapshotJob`] / [`write_snapshot`], through `Storage` like every other file.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};

use crate::batch::{BatchHeader, ProducerInfo};
use crate::error::{Error, Result};
use crate::log::{PartitionLog, ReadPlan};
use crate::storage::{LogFile, Storage};

/// Batches per producer whose offsets a duplicate is answered with (Kafka keeps 5 too: a
/// producer with at most 5 batches in flight per partition never sees `DuplicateSequence`).
pub const DEDUP_WINDOW_BATCHES: usize = 5;
/// Producers tracked per partition; beyond, the least recently active one is forgotten (it
/// then gets `UnknownProducer` and re-initialises, never a duplicate append).
pub const PRODUCERS_MAX_PER_PARTITION: usize = 100_000;
/// File name prefix of producer-state snapshots in a partition directory.
const SNAPSHOT_PREFIX: &str = "producers-";
const SNAPSHOT_SUFFIX: &str = ".snapshot";
/// Snapshots kept per partition (the newest ones).
const SNAPSHOTS_KEPT: usize = 2;

/// One batch a producer wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BatchMeta {
    pub first_sequence: u32,
    pub last_sequence: u32,
    pub base_offset: u64,
    pub last_offset: u64,
}

/// What the partition knows of one producer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProducerEntry {
    pub producer_id: u64,
    pub epoch: u16,
    /// Oldest first; at most [`DEDUP_WINDOW_BATCHES`].
    pub batches: VecDeque<BatchMeta>,
    /// Bumped on every append (least-recently-active eviction).
    pub last_active: u64,
}

impl ProducerEntry {
    fn last_sequence(&self) -> Option<u32> {
        self.batches.back().map(|b| b.last_sequence)
    }
}

/// Outcome of checking a batch against the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Append it (then call [`ProducerTable::record`]).
    Append,
    /// Already in the log: answer with these offsets and append nothing.
    Duplicate { base_offset: u64, last_offset: u64 },
}

/// Last sequence of a batch starting at `base` with `count` records (wrapping).
pub fn last_sequence(base: u32, count: u32) -> u32 {
    base.wrapping_add(count.saturating_sub(1))
}

/// Whether `a` comes at or before `b` in wrapping sequence space (within half the space).
fn at_or_before(a: u32, b: u32) -> bool {
    b.wrapping_sub(a) < (1 << 31)
}

/// Per-partition producer state (see the module doc).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerTable {
    producers: HashMap<u64, ProducerEntry>,
    clock: u64,
}

impl ProducerTable {
    pub fn len(&self) -> usize {
        self.producers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    pub fn get(&self, producer_id: u64) -> Option<&ProducerEntry> {
        self.producers.get(&producer_id)
    }

    /// Decides what to do with a batch of `record_count` records from `p`.
    pub fn check(&self, p: ProducerInfo, record_count: u32) -> Result<Verdict> {
        if p.producer_id == 0 {
            return Ok(Verdict::Append);
        }
        let first = p.base_sequence;
        let last = last_sequence(first, record_count);
        let Some(e) = self.producers.get(&p.producer_id) else {
            if first == 0 {
                return Ok(Verdict::Append);
            }
            return Err(Error::UnknownProducer {
                producer_id: p.producer_id,
                sequence: first,
            });
        };
        if p.producer_epoch < e.epoch {
            return Err(Error::ProducerFenced {
                producer_id: p.producer_id,
                epoch: p.producer_epoch,
                current_epoch: e.epoch,
            });
        }
        if p.producer_epoch > e.epoch {
            if first == 0 {
                return Ok(Verdict::Append);
            }
            return Err(Error::OutOfOrderSequence {
                producer_id: p.producer_id,
                expected: 0,
                got: first,
            });
        }
        if let Some(b) = e
            .batches
            .iter()
            .find(|b| b.first_sequence == first && b.last_sequence == last)
        {
            return Ok(Verdict::Duplicate {
                base_offset: b.base_offset,
                last_offset: b.last_offset,
            });
        }
        let Some(prev) = e.last_sequence() else {
            // An epoch bump recorded with no batch cannot happen (record adds one); treat as new.
            return if first == 0 {
                Ok(Verdict::Append)
            } else {
                Err(Error::UnknownProducer {
                    producer_id: p.producer_id,
                    sequence: first,
                })
            };
        };
        let expected = prev.wrapping_add(1);
        if first == expected {
            return Ok(Verdict::Append);
        }
        if at_or_before(first, prev) {
            return Err(Error::DuplicateSequence {
                producer_id: p.producer_id,
                sequence: first,
                last_sequence: prev,
            });
        }
        Err(Error::OutOfOrderSequence {
            producer_id: p.producer_id,
            expected,
            got: first,
        })
    }

    /// Records an appended batch (after [`ProducerTable::check`] said `Append`, or while
    /// replaying the log, which is the truth and is never refused).
    pub fn record(&mut self, p: ProducerInfo, record_count: u32, base_offset: u64) {
        if p.producer_id == 0 || record_count == 0 {
            return;
        }
        self.clock += 1;
        let clock = self.clock;
        let meta = BatchMeta {
            first_sequence: p.base_sequence,
            last_sequence: last_sequence(p.base_sequence, record_count),
            base_offset,
            last_offset: base_offset + u64::from(record_count) - 1,
        };
        let e = self
            .producers
            .entry(p.producer_id)
            .or_insert_with(|| ProducerEntry {
                producer_id: p.producer_id,
                epoch: p.producer_epoch,
                batches: VecDeque::new(),
                last_active: clock,
            });
        if p.producer_epoch != e.epoch {
            e.epoch = p.producer_epoch;
            e.batches.clear();
        }
        e.batches.push_back(meta);
        while e.batches.len() > DEDUP_WINDOW_BATCHES {
            e.batches.pop_front();
        }
        e.last_active = clock;
        debug_assert!(e.batches.len() <= DEDUP_WINDOW_BATCHES);
        if self.producers.len() > PRODUCERS_MAX_PER_PARTITION {
            self.evict_oldest();
        }
    }

    /// Replays one batch header read back from the log.
    pub fn replay(&mut self, h: &BatchHeader) {
        self.record(h.producer, h.record_count, h.base_offset);
    }

    fn evict_oldest(&mut self) {
        if let Some(id) = self
            .producers
            .values()
            .min_by_key(|e| e.last_active)
            .map(|e| e.producer_id)
        {
            self.producers.remove(&id);
        }
    }

    /// Drops batches at or above `offset` (the log was cut there); producers left with no batch
    /// are forgotten.
    pub fn truncate_to(&mut self, offset: u64) {
        for e in self.producers.values_mut() {
            e.batches.retain(|b| b.last_offset < offset);
        }
        self.producers.retain(|_, e| !e.batches.is_empty());
    }
}

/// The table as written at a clean close: valid for every batch below `upto_offset`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Snapshot {
    pub version: u32,
    pub upto_offset: u64,
    pub producers: Vec<ProducerEntry>,
}

const SNAPSHOT_VERSION: u32 = 1;

fn snapshot_path(dir: &Path, upto: u64) -> PathBuf {
    dir.join(format!("{SNAPSHOT_PREFIX}{upto:020}{SNAPSHOT_SUFFIX}"))
}

/// Offsets of the snapshots in `dir`, oldest first (none if the directory cannot be listed).
async fn snapshot_offsets<S: Storage>(storage: &S, dir: &Path) -> Vec<u64> {
    let Ok(names) = storage.list(dir).await else {
        return Vec::new();
    };
    let mut out: Vec<u64> = names
        .iter()
        .filter_map(|name| {
            name.strip_prefix(SNAPSHOT_PREFIX)?
                .strip_suffix(SNAPSHOT_SUFFIX)?
                .parse()
                .ok()
        })
        .collect();
    out.sort_unstable();
    out
}

/// Writes one producer-state snapshot: the only writer of snapshot files (the retention timer,
/// index checkpoints, a clean close and a long replay at open all use it). Made by
/// [`ProducerTable::snapshot_job`]; hand the result to the partition core's `snapshot_done`.
pub struct SnapshotJob<S: Storage> {
    storage: S,
    dir: PathBuf,
    upto_offset: u64,
    bytes: Vec<u8>,
}

impl<S: Storage> SnapshotJob<S> {
    /// The offset below which the snapshot is valid.
    pub fn upto_offset(&self) -> u64 {
        self.upto_offset
    }

    /// Temp file, fdatasync, rename, directory sync; then keeps only the newest snapshots. All
    /// through `Storage` (io_uring on a shard: no blocking call).
    pub async fn run(self) -> Result<()> {
        write_snapshot(&self.storage, &self.dir, self.upto_offset, &self.bytes).await
    }
}

impl ProducerTable {
    /// The snapshot file's contents (JSON) for the table as valid below `upto_offset`.
    pub fn snapshot_bytes(&self, upto_offset: u64) -> Result<Vec<u8>> {
        let mut producers: Vec<ProducerEntry> = self.producers.values().cloned().collect();
        producers.sort_by_key(|e| e.last_active);
        let snap = Snapshot {
            version: SNAPSHOT_VERSION,
            upto_offset,
            producers,
        };
        serde_json::to_vec(&snap).map_err(|e| Error::Metadata(e.to_string()))
    }

    /// A [`SnapshotJob`] writing the table as valid below `upto_offset` into `dir`.
    /// `upto_offset` must be durable (at most the durable offset); batches at or above it in
    /// the table are dropped again on load and replayed from the log instead.
    pub fn snapshot_job<S: Storage>(
        &self,
        storage: S,
        dir: &Path,
        upto_offset: u64,
    ) -> Result<SnapshotJob<S>> {
        Ok(SnapshotJob {
            storage,
            dir: dir.to_path_buf(),
            upto_offset,
            bytes: self.snapshot_bytes(upto_offset)?,
        })
    }

    /// Loads the newest snapshot the recovered log covers (`upto_offset <= log_end`) and
    /// deletes those it does not (they describe data that a crash cut off). Returns the table
    /// and the offset from which the log must be replayed; `None` = replay from the log start.
    pub async fn load_snapshot<S: Storage>(
        storage: &S,
        dir: &Path,
        log_end: u64,
    ) -> (ProducerTable, Option<u64>) {
        let mut table = ProducerTable::default();
        let offsets = snapshot_offsets(storage, dir).await;
        for o in offsets.iter().filter(|o| **o > log_end) {
            tracing::warn!(dir = %dir.display(), snapshot = o, log_end, "removing producer snapshot ahead of the log");
            let _ = storage.remove(&snapshot_path(dir, *o)).await;
        }
        for o in offsets.iter().rev().filter(|o| **o <= log_end) {
            let path = snapshot_path(dir, *o);
            let parsed = read_whole_file(storage, &path)
                .await
                .ok()
                .and_then(|b| serde_json::from_slice::<Snapshot>(without_padding(&b)).ok())
                .filter(|s| s.version == SNAPSHOT_VERSION && s.upto_offset == *o);
            let Some(s) = parsed else {
                tracing::warn!(path = %path.display(), "unreadable producer snapshot; trying an older one");
                continue;
            };
            for mut e in s.producers {
                table.clock += 1;
                e.last_active = table.clock;
                e.batches.truncate(DEDUP_WINDOW_BATCHES);
                table.producers.insert(e.producer_id, e);
            }
            // A periodic snapshot may hold batches appended (not yet durable) after its
            // offset: the replay from `o` brings back those that survived.
            table.truncate_to(*o);
            return (table, Some(*o));
        }
        (table, None)
    }
}

/// Bytes read per step while replaying the log into the table.
const REPLAY_READ_BYTES: usize = 4 << 20;
/// Largest snapshot file read back (100,000 producers of 5 batches are about 40 MiB of JSON).
const SNAPSHOT_BYTES_MAX: u64 = 256 << 20;

/// Writes snapshot `bytes` (made by [`ProducerTable::snapshot_bytes`]) as valid below
/// `upto_offset`: temp file, fdatasync, rename, directory sync, then keeps only the newest
/// [`SNAPSHOTS_KEPT`]. A crash at any point leaves either the previous snapshots or the new
/// one complete (a torn temp file is removed by the next open, a lost rename only means an
/// older snapshot and a longer replay).
pub async fn write_snapshot<S: Storage>(
    storage: &S,
    dir: &Path,
    upto_offset: u64,
    bytes: &[u8],
) -> Result<()> {
    let path = snapshot_path(dir, upto_offset);
    let tmp = path.with_extension("tmp");
    crate::log::write_whole_file(storage, &tmp, bytes)
        .await
        .map_err(|e| Error::io(tmp.display(), e))?;
    storage
        .rename(&tmp, &path)
        .await
        .map_err(|e| Error::io(path.display(), e))?;
    storage
        .sync_dir(dir)
        .await
        .map_err(|e| Error::io(dir.display(), e))?;
    remove_old_snapshots(storage, dir).await;
    Ok(())
}

/// The whole contents of a file (block-aligned reads; trailing padding included).
async fn read_whole_file<S: Storage>(storage: &S, path: &Path) -> std::io::Result<Vec<u8>> {
    let f = storage.open(path).await?;
    let len = f.size().await?;
    if len > SNAPSHOT_BYTES_MAX {
        return Err(std::io::Error::other(format!(
            "{len} bytes is more than a snapshot can be"
        )));
    }
    let aligned_bytes = usize::try_from(crate::storage::align_up(len))
        .map_err(|_| std::io::Error::other("snapshot size does not fit in memory"))?;
    let read = f.read_at(0, aligned_bytes).await?;
    Ok(read.to_vec())
}

/// Keeps the newest [`SNAPSHOTS_KEPT`] snapshots of a partition directory.
async fn remove_old_snapshots<S: Storage>(storage: &S, dir: &Path) {
    let offsets = snapshot_offsets(storage, dir).await;
    let excess = offsets.len().saturating_sub(SNAPSHOTS_KEPT);
    for o in &offsets[..excess] {
        let _ = storage.remove(&snapshot_path(dir, *o)).await;
    }
}

/// Snapshots written through the block-aligned storage end in zero padding; JSON never
/// contains a NUL byte, so trailing zeros are padding.
fn without_padding(b: &[u8]) -> &[u8] {
    let end = b.iter().rposition(|&c| c != 0).map_or(0, |i| i + 1);
    &b[..end]
}

/// Log bytes replayed at an open above which the opener writes a snapshot at once (see
/// `partition::PartitionCore::open`), so that a process that keeps crashing before its first snapshot timer does not
/// replay the whole log again at every start.
pub const REPLAY_SNAPSHOT_BYTES: u64 = 4 << 20;

/// Rebuilds a partition's table on open: the newest usable snapshot, then every batch header
/// from the snapshot's offset (or the log start) to the end of the recovered log. Returns the
/// table and how many bytes of the log it read.
pub async fn rebuild<S: Storage>(log: &PartitionLog<S>) -> Result<(ProducerTable, u64)> {
    let w = log.watermarks();
    let mut replayed_bytes = 0u64;
    let (mut table, from) =
        ProducerTable::load_snapshot(log.storage(), log.dir(), w.written_offset).await;
    let mut offset = from.unwrap_or(w.log_start).max(w.log_start);
    // Bounded: each step consumes at least one batch (plan_read returns at least one).
    while offset < w.written_offset {
        let r = match log.plan_read(offset, REPLAY_READ_BYTES, usize::MAX)? {
            ReadPlan::Ready(r) => r,
            ReadPlan::Disk(d) => d.run().await?,
        };
        let mut next = offset;
        for chunk in &r.chunks {
            replayed_bytes += chunk.len() as u64;
            for b in crate::batch::split_batches(chunk)? {
                let h = BatchHeader::parse(b)?;
                if h.base_offset >= offset {
                    table.replay(&h);
                }
                next = next.max(h.next_offset());
            }
        }
        if next <= offset {
            return Err(Error::CorruptLog {
                path: log.dir().display().to_string(),
                reason: format!("producer-state replay made no progress at offset {offset}"),
            });
        }
        offset = next;
    }
    Ok((table, replayed_bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn info(id: u64, epoch: u16, seq: u32) -> ProducerInfo {
        ProducerInfo {
            producer_id: id,
            producer_epoch: epoch,
            base_sequence: seq,
        }
    }

    #[test]
    fn duplicates_get_original_offsets_and_gaps_are_refused() {
        let mut t = ProducerTable::default();
        assert_eq!(t.check(info(7, 0, 0), 3).unwrap(), Verdict::Append);
        t.record(info(7, 0, 0), 3, 100);
        assert_eq!(
            t.check(info(7, 0, 0), 3).unwrap(),
            Verdict::Duplicate {
                base_offset: 100,
                last_offset: 102
            }
        );
        assert_eq!(t.check(info(7, 0, 3), 1).unwrap(), Verdict::Append);
        let gap = t.check(info(7, 0, 5), 1).unwrap_err();
        assert!(matches!(
            gap,
            Error::OutOfOrderSequence {
                expected: 3,
                got: 5,
                ..
            }
        ));
        assert!(!gap.is_retriable());
        assert!(matches!(
            t.check(info(8, 0, 4), 1),
            Err(Error::UnknownProducer { .. })
        ));
        assert_eq!(t.check(info(0, 0, 99), 1).unwrap(), Verdict::Append);
    }

    #[test]
    fn stale_epochs_are_fenced_and_new_epochs_restart_at_zero() {
        let mut t = ProducerTable::default();
        t.record(info(7, 3, 0), 1, 0);
        assert!(matches!(
            t.check(info(7, 2, 1), 1),
            Err(Error::ProducerFenced {
                current_epoch: 3,
                ..
            })
        ));
        assert!(matches!(
            t.check(info(7, 4, 1), 1),
            Err(Error::OutOfOrderSequence { expected: 0, .. })
        ));
        assert_eq!(t.check(info(7, 4, 0), 1).unwrap(), Verdict::Append);
        t.record(info(7, 4, 0), 1, 1);
        assert_eq!(t.get(7).unwrap().epoch, 4);
        assert_eq!(t.get(7).unwrap().batches.len(), 1);
    }

    #[test]
    fn sequences_wrap() {
        let mut t = ProducerTable::default();
        // State near the wrap point, as a replay of the log sets it (the log is the truth).
        t.record(info(1, 0, u32::MAX - 1), 2, 1);
        assert_eq!(t.check(info(1, 0, 0), 1).unwrap(), Verdict::Append);
        t.record(info(1, 0, 0), 1, 3);
        assert_eq!(
            t.check(info(1, 0, u32::MAX - 1), 2).unwrap(),
            Verdict::Duplicate {
                base_offset: 1,
                last_offset: 2
            }
        );
    }

    #[test]
    fn snapshots_round_trip_and_those_ahead_of_the_log_are_dropped() {
        use crate::storage::CrashStorage;
        use futures_lite::future::block_on;
        let storage = CrashStorage::new();
        let dir = Path::new("/p");
        storage.create_dir_all(dir).unwrap();
        let mut t = ProducerTable::default();
        t.record(info(5, 1, 0), 2, 0);
        block_on(t.snapshot_job(storage.clone(), dir, 2).unwrap().run()).unwrap();
        t.record(info(5, 1, 2), 2, 2);
        block_on(t.snapshot_job(storage.clone(), dir, 4).unwrap().run()).unwrap();
        // The log came back with 3 records: the snapshot at 4 is ahead of it and goes away.
        let (loaded, from) = block_on(ProducerTable::load_snapshot(&storage, dir, 3));
        assert_eq!(from, Some(2));
        assert_eq!(loaded.get(5).unwrap().batches.len(), 1);
        assert_eq!(block_on(snapshot_offsets(&storage, dir)), vec![2]);
        let (_, none) = block_on(ProducerTable::load_snapshot(&storage, dir, 1));
        assert_eq!(none, None);
    }

    // Proves: a snapshot survives power loss once its writer returned (the directory entry is
    // synced, not only the data: the two writers used to differ there), and only the newest
    // `SNAPSHOTS_KEPT` stay.
    #[test]
    fn a_written_snapshot_survives_power_loss_and_old_ones_go() {
        use crate::storage::CrashStorage;
        use futures_lite::future::block_on;
        let storage = CrashStorage::new();
        let dir = Path::new("/p");
        storage.create_dir_all(dir).unwrap();
        let mut t = ProducerTable::default();
        for i in 0..4u32 {
            t.record(info(9, 0, i), 1, u64::from(i));
            let job = t
                .snapshot_job(storage.clone(), dir, u64::from(i) + 1)
                .unwrap();
            block_on(job.run()).unwrap();
        }
        assert_eq!(block_on(snapshot_offsets(&storage, dir)), vec![3, 4]);
        storage.crash(|_, _, _| false);
        let (loaded, from) = block_on(ProducerTable::load_snapshot(&storage, dir, 4));
        assert_eq!(from, Some(4));
        assert_eq!(loaded.get(9).unwrap().batches.len(), 4);
    }

    /// A model: the set of sequences the log holds per producer, written by a producer that
    /// sends batches, sometimes retries an earlier one, sometimes skips ahead.
    #[derive(Debug, Clone)]
    enum Op {
        Next(u32),
        Retry(usize),
        Skip(u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (1u32..5).prop_map(Op::Next),
            3 => (0usize..8).prop_map(Op::Retry),
            1 => (1u32..4).prop_map(Op::Skip),
        ]
    }

    proptest! {
        /// Whatever the mix of new batches, retries and gaps: every sequence is in the log at
        /// most once, the log's sequences are gap-free from 0, a retry within the window gets
        /// the offsets of its original, and a replay of the log rebuilds the same table.
        #[test]
        fn log_holds_each_sequence_once_without_gaps(ops in proptest::collection::vec(op(), 1..200)) {
            let mut t = ProducerTable::default();
            let mut sent: Vec<(u32, u32, Option<u64>)> = Vec::new(); // (first seq, count, offset)
            let mut log: Vec<(u32, u32, u64)> = Vec::new();
            let mut next_seq = 0u32;
            let mut next_offset = 0u64;
            for op in ops {
                let (seq, count) = match op {
                    Op::Next(n) => { let s = next_seq; next_seq += n; (s, n) }
                    Op::Retry(back) if !sent.is_empty() => {
                        let i = sent.len().saturating_sub(1 + back % sent.len());
                        (sent[i].0, sent[i].1)
                    }
                    Op::Retry(_) => continue,
                    Op::Skip(n) => { let s = next_seq + n; (s, 1) }
                };
                let p = info(42, 0, seq);
                match t.check(p, count) {
                    Ok(Verdict::Append) => {
                        t.record(p, count, next_offset);
                        log.push((seq, count, next_offset));
                        sent.push((seq, count, Some(next_offset)));
                        next_offset += u64::from(count);
                    }
                    Ok(Verdict::Duplicate { base_offset, .. }) => {
                        let original = log.iter().find(|(s, c, _)| *s == seq && *c == count);
                        prop_assert_eq!(original.map(|o| o.2), Some(base_offset));
                    }
                    Err(e) => {
                        prop_assert!(!e.is_retriable());
                        if let Op::Skip(_) = op {} else {
                            prop_assert!(matches!(e, Error::DuplicateSequence { .. }), "{e}");
                        }
                    }
                }
                if let Op::Skip(_) = op {
                    // The producer learns of the gap and continues from where the log is.
                    next_seq = log.last().map_or(0, |(s, c, _)| s + c);
                }
            }
            let mut expect = 0u32;
            for (s, c, _) in &log {
                prop_assert_eq!(*s, expect);
                expect += c;
            }
            let mut replayed = ProducerTable::default();
            for (s, c, o) in &log {
                replayed.record(info(42, 0, *s), *c, *o);
            }
            prop_assert_eq!(
                replayed.get(42).map(|e| (e.epoch, e.batches.clone())),
                t.get(42).map(|e| (e.epoch, e.batches.clone()))
            );
        }
    }
}
