//! Retention: whole sealed segments expire by bytes or by age and are removed from the log (the
//! log start moves); an expired active segment is rolled first so that it can go too.

use std::path::PathBuf;
use std::rc::Rc;

use super::PartitionLog;
use super::segment::{index_path, write_index_files};
use crate::error::{Error, Result};
use crate::storage::{LogFile, Storage};

/// Microseconds per millisecond (segment timestamps are in µs, retention limits in ms).
const US_PER_MS: i64 = 1000;

/// Whether a segment whose newest record has `max_timestamp_us` is older than `retention_ms`.
fn older_than(max_timestamp_us: i64, retention_ms: u64, now_ms: i64) -> bool {
    let retention_ms = i64::try_from(retention_ms).unwrap_or(i64::MAX);
    max_timestamp_us != i64::MIN
        && max_timestamp_us / US_PER_MS < now_ms.saturating_sub(retention_ms)
}

impl<S: Storage> PartitionLog<S> {
    /// Segments (base offset, bytes, max timestamp) that retention would delete now.
    fn expired_segments(&self, now_ms: i64) -> Vec<u64> {
        let mut out = Vec::new();
        let total: u64 = self.size_bytes();
        let mut remaining = total;
        for seg in self.segments.values() {
            // Only durable data expires: the log start never passes the durable offset.
            if !seg.sealed
                || !seg.index_final
                || seg.written_pos != seg.end_pos
                || seg.next_offset > self.durable_offset
            {
                break;
            }
            let by_bytes = self
                .cfg
                .retention_bytes
                .is_some_and(|max| remaining - seg.end_pos >= max);
            let by_age = self
                .cfg
                .retention_ms
                .is_some_and(|ms| older_than(seg.max_timestamp_us, ms, now_ms));
            if !(by_bytes || by_age) {
                break;
            }
            remaining -= seg.end_pos;
            out.push(seg.base_offset);
        }
        out
    }

    /// Whether the active segment itself has expired by age and should be rolled so that
    /// retention can delete it.
    pub fn active_expired(&self, now_ms: i64) -> bool {
        let Some(seg) = self.segments.values().next_back() else {
            return false;
        };
        seg.end_pos > 0
            && seg.written_pos == seg.end_pos
            && self
                .cfg
                .retention_ms
                .is_some_and(|ms| older_than(seg.max_timestamp_us, ms, now_ms))
    }

    /// Rolls an expired active segment (creating the new empty segment file right away, so the
    /// log's next offset survives a restart even when every older segment is deleted).
    pub async fn roll_for_retention(log: &std::cell::RefCell<Self>, now_ms: i64) -> Result<()> {
        let r = Self::roll_for_retention_inner(log, now_ms).await;
        log.borrow_mut().retention_roll_running = false;
        r
    }

    async fn roll_for_retention_inner(log: &std::cell::RefCell<Self>, now_ms: i64) -> Result<()> {
        let (storage, dir, path, base, rolled) = {
            let mut l = log.borrow_mut();
            // A failed log is repaired (reopened) before anything else happens to it.
            // Not while a seal runs: the rolled segment's index must not precede its sync.
            if !l.active_expired(now_ms)
                || l.flushing
                || !l.chunks.is_empty()
                || l.failed.is_some()
                || l.is_sealing()
            {
                return Ok(());
            }
            // All its data is written (`active_expired`), so its final index can be made here.
            let rolled = l.segments.values().next_back().map(|s| {
                let cp = s.checkpoint(s.end_pos, s.next_offset);
                (s.base_offset, s.file.clone(), cp)
            });
            assert_eq!(
                l.written_offset, l.next_offset,
                "no pending data at a retention roll"
            );
            l.roll(now_ms);
            l.retention_roll_running = true;
            l.rolls.creating = Some(l.next_offset);
            let seg = l
                .segments
                .values()
                .next_back()
                .ok_or_else(|| Error::Runtime("no segment".into()))?;
            (
                l.storage.clone(),
                l.dir.clone(),
                seg.path.clone(),
                seg.base_offset,
                rolled,
            )
        };
        let err = |e| Error::io(path.display(), e);
        let created = storage.open(&path).await;
        log.borrow_mut().rolls.creating = None;
        let f = created.map_err(err)?;
        storage.sync_dir(&dir).await.map_err(err)?;
        if let Some(seg) = log.borrow_mut().segments.get_mut(&base) {
            seg.file = Some(Rc::new(f));
        }
        // Finish the rolled segment as a flush would (sync, then its final index): retention
        // deletes only segments with a final index, and an idle partition has no next flush.
        if let Some((rolled_base, Some(file), cp)) = rolled {
            file.sync().await.map_err(|e| Error::io(dir.display(), e))?;
            log.borrow_mut().synced_rolled(rolled_base, cp.next_offset);
            if write_index_files(&storage, &dir, rolled_base, &cp)
                .await
                .is_ok()
                && let Some(seg) = log.borrow_mut().segments.get_mut(&rolled_base)
            {
                seg.checkpoint_pos = cp.data_bytes;
                seg.index_final = true;
            }
        }
        Ok(())
    }

    /// Applies retention: removes expired whole segments from the log (the log start moves at
    /// once) and returns the files to delete.
    pub fn take_expired(&mut self, now_ms: i64) -> Vec<PathBuf> {
        let mut files = Vec::new();
        for base in self.expired_segments(now_ms) {
            if let Some(seg) = self.segments.remove(&base) {
                files.push(seg.path.clone());
                files.push(index_path(&self.dir, base, "idx"));
                files.push(index_path(&self.dir, base, "tix"));
            }
        }
        let start = self.log_start();
        while self.cache.front().is_some_and(|b| b.base_offset < start) {
            if let Some(b) = self.cache.pop_front() {
                self.cache_bytes -= b.len();
            }
        }
        self.check_offsets();
        files
    }

    /// The rolled segment `rolled_base` (all of it written) was just synced. If no earlier
    /// segment waits for a sync, everything before `rolled_next_offset` is durable now: say so,
    /// so that retention, which may delete this segment next, never moves the log start past
    /// the durable offset.
    fn synced_rolled(&mut self, rolled_base: u64, rolled_next_offset: u64) {
        if self.unsynced_segments.range(..rolled_base).next().is_none() {
            self.unsynced_segments.remove(&rolled_base);
            self.durable_offset = self.durable_offset.max(rolled_next_offset);
        }
        self.check_offsets();
    }
}
