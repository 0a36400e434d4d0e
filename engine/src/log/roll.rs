//! Segment rolls off the write path (docs/storage.md, "Segment rolls"). Two background jobs
//! that a runtime shell runs beside the flushes once it calls
//! [`PartitionLog::set_background_rolls`]:
//!
//! - [`PrepareJob`]: the next segment file made ahead of the roll, under a temporary name
//!   (`prepared-N.log.tmp`: never taken for a segment, removed at open like every `*.tmp`),
//!   its first `preallocate_bytes` zero-filled and synced, its directory entry synced. The flush
//!   that first writes to the rolled segment renames it and writes into it at once: no file
//!   create on the write path. Without a prepared file the flush creates one as before.
//! - [`SealJob`]: a sealed segment's fdatasync and its final index, after the flush that wrote
//!   its last bytes. The roll's flush does not wait for them (it used to sync the sealed segment
//!   before the next one took data).
//!
//! What recovery relies on is kept by three rules, applied here and in `flush.rs`:
//! 1. the durable offset never passes a sealed segment whose seal is running (a syncing flush
//!    meanwhile counts only up to that segment's base, and the seal's end raises it);
//! 2. no index file of any segment is written while a seal runs, and a seal writes a segment's
//!    index only after its sync, so an index file after a short segment still proves the
//!    short segment was complete (`crashed_mid_roll`);
//! 3. a renamed segment's directory entry is synced before a sync counts anything durable.

use std::io;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::PartitionLog;
use super::index::Checkpoint;
use super::segment::write_index_files;
use crate::error::{Error, Result};
use crate::storage::{IoBuf, LogFile, Storage};
use crate::util::join_all;

/// Distinct names for prepared files of every log in the process (a repair's open removes
/// `*.tmp` files while an old prepare job may still run).
static PREPARED_SEQ: AtomicU64 = AtomicU64::new(0);

/// Distinct ids of log instances: a job's result is applied only to the log that made it (a
/// repair replaces the log while a background job may still run).
static INSTANCE_SEQ: AtomicU64 = AtomicU64::new(1);

/// The roll state of one log.
pub(super) struct RollState<F> {
    /// Set by the shell that runs [`PrepareJob`]s and [`SealJob`]s.
    pub(super) background: bool,
    pub(super) instance: u64,
    /// A file ready to become the next segment: (file, its temporary path, zeroed bytes).
    pub(super) prepared: Option<(Rc<F>, PathBuf, u64)>,
    /// The path a running prepare job creates.
    pub(super) preparing: Option<PathBuf>,
    /// The active segment a prepare failed for: no retry until the next roll.
    pub(super) prepare_failed_for: Option<u64>,
    /// Sealed segments whose seal job is running, in offset order.
    pub(super) sealing: Vec<u64>,
    /// Highest `upto` of a syncing flush that ended while a seal ran: durable once it ends.
    pub(super) synced_behind_seal: u64,
    /// A seal failed while a flush ran: reported by that flush's end.
    pub(super) seal_error: Option<Error>,
    /// A rename's directory entry is not synced yet.
    pub(super) dir_unsynced: bool,
    /// A segment whose file a retention roll is creating (no prepared file may take its name).
    pub(super) creating: Option<u64>,
}

impl<F> Default for RollState<F> {
    fn default() -> Self {
        RollState {
            background: false,
            instance: INSTANCE_SEQ.fetch_add(1, Ordering::Relaxed),
            prepared: None,
            preparing: None,
            prepare_failed_for: None,
            sealing: Vec::new(),
            synced_behind_seal: 0,
            seal_error: None,
            dir_unsynced: false,
            creating: None,
        }
    }
}

/// Creates the next segment file ahead of its roll (see the module comment).
pub struct PrepareJob<S: Storage> {
    storage: S,
    dir: PathBuf,
    path: PathBuf,
    zero_bytes: u64,
    instance: u64,
}

/// The outcome of a [`PrepareJob`], for [`PartitionLog::finish_prepare`].
pub struct PrepareDone<S: Storage> {
    path: PathBuf,
    instance: u64,
    zeroed: u64,
    result: io::Result<Rc<S::File>>,
}

impl<S: Storage> PrepareJob<S> {
    pub async fn run(self) -> PrepareDone<S> {
        let result = self.make().await;
        PrepareDone {
            path: self.path,
            instance: self.instance,
            zeroed: self.zero_bytes,
            result,
        }
    }

    async fn make(&self) -> io::Result<Rc<S::File>> {
        let f = self.storage.open(&self.path).await?;
        if self.zero_bytes > 0 {
            let len = usize::try_from(self.zero_bytes).map_err(io::Error::other)?;
            let mut buf = S::alloc_buf(len);
            buf.as_bytes_mut().fill(0);
            f.write_at(Rc::new(buf), 0).await?;
        }
        f.sync().await?;
        self.storage.sync_dir(&self.dir).await?;
        Ok(Rc::new(f))
    }
}

/// Syncs sealed segments and then writes their final indexes (see the module comment).
pub struct SealJob<S: Storage> {
    storage: S,
    dir: PathBuf,
    instance: u64,
    segments: Vec<(u64, Rc<S::File>, Checkpoint)>,
}

/// The outcome of a [`SealJob`], for [`PartitionLog::finish_seal`].
pub struct SealDone {
    instance: u64,
    result: io::Result<()>,
    /// Segments whose final index was written: (base, data bytes).
    indexed: Vec<(u64, u64)>,
}

impl SealDone {
    /// Whether the sealed segments were synced.
    pub fn is_ok(&self) -> bool {
        self.result.is_ok()
    }
}

impl<S: Storage> SealJob<S> {
    pub async fn run(self) -> SealDone {
        let mut done = SealDone {
            instance: self.instance,
            result: Ok(()),
            indexed: Vec::new(),
        };
        let syncs = join_all(self.segments.iter().map(|(_, f, _)| f.sync()).collect()).await;
        if let Some(Err(e)) = syncs.into_iter().find(Result::is_err) {
            done.result = Err(e);
            return done;
        }
        // An index is an optimisation (a failure costs a scan at the next open), written only
        // now that the data it describes is durable.
        for (base, _, cp) in &self.segments {
            if write_index_files(&self.storage, &self.dir, *base, cp)
                .await
                .is_ok()
            {
                done.indexed.push((*base, cp.data_bytes));
            }
        }
        done
    }
}

impl<S: Storage> PartitionLog<S> {
    /// Lets this log leave rolls to background jobs: a roll's flush no longer syncs the sealed
    /// segment, and [`Self::take_prepare`] / [`Self::take_seal`] hand out the work. The shell
    /// that calls this must run both kinds of job (a sealed segment is otherwise synced only
    /// by the next syncing flush).
    pub fn set_background_rolls(&mut self, on: bool) {
        self.rolls.background = on;
    }

    /// Whether [`Self::set_background_rolls`] is on.
    pub fn background_rolls(&self) -> bool {
        self.rolls.background
    }

    /// Whether a prepare or seal job of this log is running.
    pub fn has_roll_jobs(&self) -> bool {
        self.rolls.preparing.is_some() || !self.rolls.sealing.is_empty()
    }

    /// Whether a seal job is running (the durable offset waits for it).
    pub fn is_sealing(&self) -> bool {
        !self.rolls.sealing.is_empty()
    }

    /// The next segment's file, made ahead once the active segment is half full (so idle and
    /// small partitions never get one), unless one exists, is being made, or failed for this
    /// segment already.
    pub fn take_prepare(&mut self) -> Option<PrepareJob<S>> {
        let r = &self.rolls;
        if !r.background || self.failed.is_some() || r.prepared.is_some() || r.preparing.is_some() {
            return None;
        }
        let active = self.segments.values().next_back()?;
        if active.end_pos < self.cfg.roll_bytes() / 2
            || r.prepare_failed_for == Some(active.base_offset)
        {
            return None;
        }
        let n = PREPARED_SEQ.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!("prepared-{n}.log.tmp"));
        self.rolls.preparing = Some(path.clone());
        Some(PrepareJob {
            storage: self.storage.clone(),
            dir: self.dir.clone(),
            path,
            zero_bytes: self.cfg.preallocate_bytes.min(self.cfg.segment_bytes),
            instance: self.rolls.instance,
        })
    }

    /// Keeps a prepared file for the next roll. A failure is only logged (the roll then
    /// creates its file itself); a job of another log instance is ignored (its file, if any,
    /// is removed at the next open).
    pub fn finish_prepare(&mut self, done: PrepareDone<S>) {
        if done.instance != self.rolls.instance || self.rolls.preparing.as_ref() != Some(&done.path)
        {
            return;
        }
        self.rolls.preparing = None;
        match done.result {
            Ok(f) if self.failed.is_none() => {
                self.rolls.prepared = Some((f, done.path, done.zeroed));
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(path = %done.path.display(), error = %e, "preparing the next segment failed; the roll creates it");
                self.rolls.prepare_failed_for = self.segments.keys().next_back().copied();
            }
        }
    }

    /// For the flush that first writes to segment `base`: the prepared file, renamed to the
    /// segment's name by that flush. Returns the rename (from, to), or `None` if there is no
    /// prepared file (the flush creates the segment's file then).
    pub(super) fn adopt_prepared(&mut self, base: u64) -> Option<(PathBuf, PathBuf)> {
        let seg = self.segments.get_mut(&base)?;
        if seg.file.is_some() || self.rolls.creating == Some(base) {
            return None;
        }
        let (file, from, zeroed) = self.rolls.prepared.take()?;
        seg.file = Some(file);
        seg.zeroed_to = zeroed;
        self.rolls.dir_unsynced = true;
        Some((from, seg.path.clone()))
    }

    /// The sealed segments to sync and index now: in order, every sealed segment without its
    /// final index whose data is all written, stopping at the first sealed one that is not
    /// (everything before the first one taken is synced: a final index is written only after
    /// a sync). `None` while a seal runs or a flush is writing.
    pub fn take_seal(&mut self) -> Option<SealJob<S>> {
        if !self.rolls.background || self.failed.is_some() || !self.rolls.sealing.is_empty() {
            return None;
        }
        let mut segments = Vec::new();
        for seg in self.segments.values() {
            if !seg.sealed || seg.written_pos != seg.end_pos {
                break;
            }
            if seg.index_final {
                continue;
            }
            let file = seg.file.clone()?;
            let cp = seg.checkpoint(seg.end_pos, seg.next_offset);
            segments.push((seg.base_offset, file, cp));
        }
        if segments.is_empty() {
            return None;
        }
        for (base, _, _) in &segments {
            self.unsynced_segments.remove(base);
            self.rolls.sealing.push(*base);
        }
        Some(SealJob {
            storage: self.storage.clone(),
            dir: self.dir.clone(),
            instance: self.rolls.instance,
            segments,
        })
    }

    /// Applies a finished seal: the sealed segments are durable, so is what syncing flushes
    /// covered meanwhile; returns the new watermarks (`None` if nothing changed). An I/O error
    /// fails the log like a failed flush: returned at once, or by the running flush's end.
    pub fn finish_seal(&mut self, done: SealDone) -> Result<Option<super::Watermarks>> {
        if done.instance != self.rolls.instance {
            return Ok(None);
        }
        let sealed = std::mem::take(&mut self.rolls.sealing);
        let behind = std::mem::take(&mut self.rolls.synced_behind_seal);
        if let Err(e) = done.result {
            let err = Error::io(self.dir.display(), e);
            self.failed = Some(err.to_string());
            self.failed_disk_full = matches!(err, Error::DiskFull { .. });
            self.chunks.clear();
            if self.flushing {
                self.rolls.seal_error = Some(err);
                return Ok(None);
            }
            return Err(err);
        }
        for (base, data_bytes) in done.indexed {
            if let Some(seg) = self.segments.get_mut(&base) {
                seg.checkpoint_pos = data_bytes;
                seg.index_final = true;
            }
        }
        let sealed_end = sealed
            .last()
            .and_then(|b| self.segments.get(b))
            .map_or(0, |s| s.next_offset);
        self.durable_offset = self.durable_offset.max(sealed_end).max(behind);
        self.check_offsets();
        Ok(Some(self.watermarks()))
    }

    /// Whether a sync without new writes would achieve nothing: a seal runs and everything
    /// else written is synced (its end moves the durable offset; a flush taken meanwhile would
    /// end at once and be taken again, without end).
    pub(super) fn only_the_seal_can_sync(&self) -> bool {
        !self.rolls.sealing.is_empty()
            && self.unsynced_segments.is_empty()
            && !self.rolls.dir_unsynced
    }

    /// The durable offset a syncing flush up to `upto` reaches: all of it, unless a seal is
    /// running, whose segments the flush did not sync; then up to the first of them, and the
    /// rest when the seal ends.
    pub(super) fn durable_after_sync(&mut self, upto: u64) -> u64 {
        match self.rolls.sealing.first() {
            Some(first) => {
                self.rolls.synced_behind_seal = self.rolls.synced_behind_seal.max(upto);
                upto.min(*first)
            }
            None => upto,
        }
    }
}
