//! Group commit: [`PartitionLog::take_flush`] takes every chunk appended since the last flush
//! into one [`FlushJob`] (block-aligned writes, the segment files to create, the files to sync,
//! the index checkpoints to write after the sync); [`FlushJob::run`] does the I/O without the
//! log; [`PartitionLog::finish_flush`] applies the outcome and moves the written and durable
//! offsets. One flush runs at a time per partition.

use std::io;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Instant;

use super::config::WRITES_IN_FLIGHT_MAX;
use super::index::Checkpoint;
use super::segment::{align_up_usize, block_remainder, write_index_files};
use super::{PartitionLog, Watermarks};
use crate::error::{Error, Result};
use crate::storage::{IoBuf, LogFile, Storage, align_up};
use crate::util::join_all;

/// One block-aligned write of a flush: (segment base, its file if it exists before the flush,
/// buffer, position).
type BlockWrite<S> = (
    u64,
    Option<Rc<<S as Storage>::File>>,
    Rc<<<S as Storage>::File as LogFile>::Buf>,
    u64,
);

/// Files a flush syncs: (segment base, its file if it exists before the flush).
type SyncFiles<S> = Vec<(u64, Option<Rc<<S as Storage>::File>>)>;

/// An index checkpoint a flush writes after its sync: (segment base, checkpoint, final).
type PlannedCheckpoint = (u64, Checkpoint, bool);

/// I/O of one group commit, detached from the log.
pub struct FlushJob<S: Storage> {
    storage: S,
    dir: PathBuf,
    creates: Vec<(u64, PathBuf)>,
    /// Prepared files that become segments: (temporary path, segment path), done first.
    renames: Vec<(PathBuf, PathBuf)>,
    /// Sync the directory before the files (a rename's entry is not durable yet).
    sync_dir: bool,
    writes: Vec<BlockWrite<S>>,
    sync_files: SyncFiles<S>,
    /// Index files to write after the sync.
    checkpoints: Vec<PlannedCheckpoint>,
    sync: bool,
    upto_offset: u64,
    written_positions: Vec<(u64, u64)>,
}

/// What a flush achieved.
pub struct FlushDone<S: Storage> {
    result: io::Result<()>,
    error_path: String,
    created: Vec<(u64, Rc<S::File>)>,
    synced: bool,
    upto_offset: u64,
    written_positions: Vec<(u64, u64)>,
    checkpoints: Vec<(u64, u64, bool)>,
    timings: FlushTimings,
}

/// How long the phases of one flush took (operations metrics, docs/operations.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlushTimings {
    /// Data writes (the chunks, issued concurrently).
    pub write: std::time::Duration,
    /// fdatasync calls (zero when the flush did not sync).
    pub sync: std::time::Duration,
}

impl<S: Storage> FlushDone<S> {
    pub fn is_ok(&self) -> bool {
        self.result.is_ok()
    }

    /// Whether the flush wrote an index checkpoint (recovery's scan restarts there).
    pub fn wrote_checkpoint(&self) -> bool {
        !self.checkpoints.is_empty()
    }

    pub fn timings(&self) -> FlushTimings {
        self.timings
    }
}

impl<S: Storage> FlushJob<S> {
    /// Whether the job will fdatasync (and so may complete durable acks).
    pub fn syncs(&self) -> bool {
        self.sync
    }

    /// Writes and syncs what the flush took, then its index checkpoints. Never fails itself:
    /// the outcome, error included, is in the returned [`FlushDone`] for
    /// [`PartitionLog::finish_flush`].
    pub async fn run(mut self) -> FlushDone<S> {
        let mut done = FlushDone {
            result: Ok(()),
            error_path: String::new(),
            created: Vec::new(),
            synced: false,
            upto_offset: self.upto_offset,
            written_positions: self.written_positions.clone(),
            checkpoints: Vec::new(),
            timings: FlushTimings::default(),
        };
        if let Err((path, e)) = self.write_and_sync(&mut done).await {
            done.error_path = path;
            done.result = Err(e);
            return done;
        }
        // Index checkpoints are an optimisation: a failure only means a longer scan at recovery.
        for (base, cp, fin) in &self.checkpoints {
            if write_index_files(&self.storage, &self.dir, *base, cp)
                .await
                .is_ok()
            {
                done.checkpoints.push((*base, cp.data_bytes, *fin));
            }
        }
        done
    }

    /// The data writes and syncs. Order matters for power loss across a roll: the sealed
    /// segment's data must be durable before the next segment's name is, or recovery would find
    /// a sealed segment with a torn tail (indistinguishable from corruption). So: write and sync
    /// the existing files first, then create the new ones, write them, sync the directory and
    /// them. An error comes with the path to report (empty if none applies).
    async fn write_and_sync(&mut self, done: &mut FlushDone<S>) -> Result<(), (String, io::Error)> {
        let started = Instant::now();
        let dir = self.dir.display().to_string();
        let dir_error = |e| (dir.clone(), e);
        self.rename_prepared().await.map_err(dir_error)?;
        let (old_writes, new_writes): (Vec<_>, Vec<_>) = std::mem::take(&mut self.writes)
            .into_iter()
            .partition(|w| w.1.is_some());
        let old: Vec<_> = old_writes
            .into_iter()
            .filter_map(|(_, f, buf, pos)| f.map(|f| (f, buf, pos)))
            .collect();
        write_all::<S>(old).await.map_err(dir_error)?;
        let mut synced_first: Vec<u64> = Vec::new();
        if !self.creates.is_empty() {
            let sync_started = Instant::now();
            let existing: Vec<(u64, Rc<S::File>)> = self
                .sync_files
                .iter()
                .filter_map(|(b, f)| f.clone().map(|f| (*b, f)))
                .collect();
            let results = join_all(existing.iter().map(|(_, f)| f.sync()).collect()).await;
            first_error(results).map_err(dir_error)?;
            synced_first = existing.iter().map(|(b, _)| *b).collect();
            done.timings.sync += sync_started.elapsed();
        }
        for (base, path) in &self.creates {
            let f = self
                .storage
                .open(path)
                .await
                .map_err(|e| (path.display().to_string(), e))?;
            done.created.push((*base, Rc::new(f)));
        }
        let mut new = Vec::with_capacity(new_writes.len());
        for (base, f, buf, pos) in new_writes {
            let Some(f) = file_of::<S>(&done.created, base, &f) else {
                return Err((String::new(), io::Error::other("segment file missing")));
            };
            new.push((f, buf, pos));
        }
        write_all::<S>(new).await.map_err(dir_error)?;
        if !self.creates.is_empty() || self.sync_dir {
            self.storage.sync_dir(&self.dir).await.map_err(dir_error)?;
        }
        let sync_started = Instant::now();
        done.timings.write = (sync_started - started).saturating_sub(done.timings.sync);
        if self.sync {
            let files: Vec<Rc<S::File>> = self
                .sync_files
                .iter()
                .filter(|(b, _)| !synced_first.contains(b))
                .filter_map(|(b, f)| file_of::<S>(&done.created, *b, f))
                .collect();
            first_error(join_all(files.iter().map(|f| f.sync()).collect()).await)
                .map_err(dir_error)?;
            done.synced = true;
            done.timings.sync += sync_started.elapsed();
        }
        Ok(())
    }
}

impl<S: Storage> FlushJob<S> {
    /// Gives prepared files their segment names (the flush then writes into them: their
    /// writes are in the job with the file). Not synced here: a syncing flush syncs the
    /// directory before its files, and until then a crash leaves the temporary name, which the
    /// next open removes with everything in it (nothing in it was acknowledged as durable).
    async fn rename_prepared(&self) -> io::Result<()> {
        for (from, to) in &self.renames {
            self.storage.rename(from, to).await?;
        }
        Ok(())
    }
}

/// A write whose file is known: (file, buffer, position).
type ReadyWrite<S> = (
    Rc<<S as Storage>::File>,
    Rc<<<S as Storage>::File as LogFile>::Buf>,
    u64,
);

/// Issues `writes` concurrently, at most [`WRITES_IN_FLIGHT_MAX`] at a time: a bounded io_uring
/// footprint (glommio also counts a source's wakers in an i16, which a few hundred
/// concurrently re-polled writes overflow). All are issued; the first error is returned.
async fn write_all<S: Storage>(writes: Vec<ReadyWrite<S>>) -> io::Result<()> {
    let mut results = Vec::with_capacity(writes.len());
    let mut it = writes.into_iter().peekable();
    while it.peek().is_some() {
        let group: Vec<_> = it
            .by_ref()
            .take(WRITES_IN_FLIGHT_MAX)
            .map(|(f, buf, pos)| async move { f.write_at(buf, pos).await })
            .collect();
        results.extend(join_all(group).await);
    }
    first_error(results)
}

fn first_error(results: Vec<io::Result<()>>) -> io::Result<()> {
    results.into_iter().find(Result::is_err).unwrap_or(Ok(()))
}

/// The file of segment `base`: the one it had before the flush, or the one the flush created.
fn file_of<S: Storage>(
    created: &[(u64, Rc<S::File>)],
    base: u64,
    before: &Option<Rc<S::File>>,
) -> Option<Rc<S::File>> {
    before.clone().or_else(|| {
        created
            .iter()
            .find(|(b, _)| *b == base)
            .map(|x| x.1.clone())
    })
}

impl<S: Storage> PartitionLog<S> {
    /// Takes everything appended so far into a flush job. `sync` asks for fdatasync (durable
    /// acks waiting, or the periodic sync is due). Returns `None` if there is nothing to do or a
    /// flush is already running.
    pub fn take_flush(&mut self, sync: bool) -> Option<FlushJob<S>> {
        if self.flushing || self.failed.is_some() {
            return None;
        }
        let need_sync =
            sync && self.durable_offset < self.next_offset && !self.only_the_seal_can_sync();
        if self.chunks.is_empty() && !need_sync {
            return None;
        }
        let chunks = std::mem::take(&mut self.chunks);
        let mut renames = Vec::new();
        if self.rolls.background
            && let Some(first) = chunks.first()
            && let Some(r) = self.adopt_prepared(first.segment_base).or_else(|| {
                let next = chunks
                    .iter()
                    .find(|c| c.segment_base != first.segment_base)?;
                self.adopt_prepared(next.segment_base)
            })
        {
            renames.push(r);
        }
        let mut creates = Vec::new();
        let mut writes = Vec::new();
        let mut written_positions: Vec<(u64, u64)> = Vec::new();
        for c in chunks {
            let Some(seg) = self.segments.get_mut(&c.segment_base) else {
                continue;
            };
            if seg.file.is_none() && !creates.iter().any(|(b, _)| *b == seg.base_offset) {
                creates.push((seg.base_offset, seg.path.clone()));
            }
            let end = c.pos + c.len as u64;
            let partial = block_remainder(end);
            seg.tail = c.buf.as_bytes()[c.len - partial..c.len].to_vec();
            match written_positions
                .iter_mut()
                .find(|(b, _)| *b == c.segment_base)
            {
                Some(w) => w.1 = w.1.max(end),
                None => written_positions.push((c.segment_base, end)),
            }
            self.unsynced_segments.insert(c.segment_base);
            let mut buf = c.buf;
            // Write only the blocks holding data, zero-padded (never stale memory on disk).
            let wlen = align_up_usize(c.len);
            buf.as_bytes_mut()[c.len..wlen].fill(0);
            buf.set_len(wlen);
            writes.push((c.segment_base, seg.file.clone(), Rc::new(buf), c.pos));
        }
        self.preallocate(&mut writes, &written_positions);
        // Without background rolls a roll's flush syncs the sealed segment and writes its final
        // index; with them a seal job does (`roll.rs`), off the write path.
        let do_sync = sync
            || (!self.rolls.background
                && self.segments.values().any(|s| s.sealed && !s.index_final));
        let (sync_files, checkpoints) = if do_sync {
            self.plan_sync(&written_positions)
        } else {
            (Vec::new(), Vec::new())
        };
        self.flushing = true;
        Some(FlushJob {
            storage: self.storage.clone(),
            dir: self.dir.clone(),
            creates,
            renames,
            sync_dir: do_sync && self.rolls.dir_unsynced,
            writes,
            sync_files,
            checkpoints,
            sync: do_sync,
            upto_offset: self.next_offset,
            written_positions,
        })
    }

    /// What a syncing flush syncs (every segment written since the last sync) and the index
    /// checkpoints it writes after the sync: final ones for sealed segments whose data is all
    /// written, and a periodic one for the active segment.
    fn plan_sync(
        &self,
        written_positions: &[(u64, u64)],
    ) -> (SyncFiles<S>, Vec<PlannedCheckpoint>) {
        let mut sync_files = Vec::new();
        let mut checkpoints = Vec::new();
        for b in &self.unsynced_segments {
            if let Some(seg) = self.segments.get(b) {
                sync_files.push((*b, seg.file.clone()));
            }
        }
        let upto = self.next_offset;
        // While a seal runs no index file is written: an index after a sealed segment whose
        // sync has not ended would make a crash's torn tail look like lost acknowledged data.
        if !self.rolls.sealing.is_empty() {
            return (sync_files, checkpoints);
        }
        for seg in self.segments.values() {
            let end = written_positions
                .iter()
                .find(|(b, _)| *b == seg.base_offset)
                .map_or(seg.written_pos, |w| w.1);
            // With background rolls a seal job writes it, off the flush's path.
            if seg.sealed && !seg.index_final && end == seg.end_pos && !self.rolls.background {
                checkpoints.push((seg.base_offset, seg.checkpoint(end, seg.next_offset), true));
            } else if !seg.sealed
                && end >= seg.checkpoint_pos + self.cfg.checkpoint_interval_bytes
                && seg.next_offset == upto
            {
                checkpoints.push((seg.base_offset, seg.checkpoint(end, seg.next_offset), false));
            }
        }
        (sync_files, checkpoints)
    }

    /// Zero-fills file space ahead of the active segment's data when this flush writes little
    /// of it (a latency-bound producer): the flush that extends the file pays the metadata
    /// commit of its fdatasync, the next ones (overwrites of those zeros) only a device flush.
    /// Large flushes extend the file as they go, so streaming writes each byte once. The
    /// zeros go out with the flush's data writes (disjoint blocks) and under its sync.
    fn preallocate(&mut self, writes: &mut Vec<BlockWrite<S>>, written: &[(u64, u64)]) {
        let window = self.cfg.preallocate_bytes;
        let limit = align_up(self.cfg.segment_bytes);
        let Some(seg) = self.segments.values_mut().next_back() else {
            return;
        };
        let Some((_, end)) = written.iter().find(|(b, _)| *b == seg.base_offset) else {
            return;
        };
        let data: u64 = writes
            .iter()
            .filter(|w| w.0 == seg.base_offset)
            .map(|w| w.2.as_bytes().len() as u64)
            .sum();
        let end = align_up(*end);
        if window == 0 || data > window || seg.zeroed_to >= end + window / 2 {
            seg.zeroed_to = seg.zeroed_to.max(end);
            return;
        }
        let from = seg.zeroed_to.max(end);
        let to = (end + window).min(limit.max(end));
        if to <= from {
            seg.zeroed_to = from;
            return;
        }
        // At most `preallocate_bytes` (<= PREALLOCATE_BYTES_MAX, 64 MiB; `LogConfig::validate`).
        let Ok(len) = usize::try_from(to - from) else {
            unreachable!("a preallocation window of {} bytes", to - from);
        };
        let mut buf = S::alloc_buf(len);
        buf.as_bytes_mut().fill(0);
        writes.push((seg.base_offset, seg.file.clone(), Rc::new(buf), from));
        // Set now: if the flush fails the log is repaired by reopening, which reads the size.
        seg.zeroed_to = to;
    }

    /// Applies a finished flush. On an I/O error the partition stops taking appends and
    /// everything after the last successful flush is dropped from memory; the caller fails
    /// the waiting producers and calls [`PartitionLog::repair`]. Returns the new watermarks.
    pub fn finish_flush(&mut self, done: FlushDone<S>) -> Result<Watermarks> {
        assert!(self.flushing, "finish_flush without a flush in flight");
        assert!(
            done.upto_offset <= self.next_offset,
            "flush up to {} beyond the log's end {}",
            done.upto_offset,
            self.next_offset
        );
        self.flushing = false;
        for (base, f) in done.created {
            if let Some(seg) = self.segments.get_mut(&base) {
                seg.file = Some(f);
            }
        }
        let result = match self.rolls.seal_error.take() {
            Some(seal_error) => Err(seal_error),
            None => done.result.map_err(|e| Error::io(&done.error_path, e)),
        };
        if let Err(err) = result {
            self.failed = Some(err.to_string());
            self.failed_disk_full = matches!(err, Error::DiskFull { .. });
            self.chunks.clear();
            self.check_offsets();
            return Err(err);
        }
        for (base, pos) in &done.written_positions {
            if let Some(seg) = self.segments.get_mut(base) {
                seg.written_pos = seg.written_pos.max(*pos);
            }
        }
        self.written_offset = self.written_offset.max(done.upto_offset);
        if done.synced {
            let durable = self.durable_after_sync(done.upto_offset);
            self.durable_offset = self.durable_offset.max(durable);
            self.rolls.dir_unsynced = false;
            // Every segment written since the last sync was in this job's sync set.
            self.unsynced_segments.clear();
        }
        for (base, data_bytes, fin) in done.checkpoints {
            if let Some(seg) = self.segments.get_mut(&base) {
                seg.checkpoint_pos = data_bytes;
                seg.index_final |= fin;
            }
        }
        self.check_offsets();
        Ok(self.watermarks())
    }

    /// Clean shutdown: a final flush and sync must have run; writes a checkpoint of the
    /// active segment so the next start scans nothing.
    pub async fn close(self) -> Result<()> {
        match self.close_job() {
            Some(job) => job.run().await,
            None => Ok(()),
        }
    }

    /// The checkpoint write of a clean close, detached from the log (see [`Self::close`]).
    pub fn close_job(&self) -> Option<CloseJob<S>> {
        let seg = self.segments.values().next_back()?;
        let clean = seg.written_pos == seg.end_pos && self.durable_offset == self.next_offset;
        if !clean || seg.checkpoint_pos >= seg.end_pos {
            return None;
        }
        Some(CloseJob {
            storage: self.storage.clone(),
            dir: self.dir.clone(),
            base: seg.base_offset,
            checkpoint: seg.checkpoint(seg.end_pos, seg.next_offset),
        })
    }
}

/// Writes the final checkpoint of a cleanly closed log.
pub struct CloseJob<S: Storage> {
    storage: S,
    dir: PathBuf,
    base: u64,
    checkpoint: Checkpoint,
}

impl<S: Storage> CloseJob<S> {
    pub async fn run(self) -> Result<()> {
        write_index_files(&self.storage, &self.dir, self.base, &self.checkpoint)
            .await
            .map_err(|e| Error::io(self.dir.display(), e))
    }
}
