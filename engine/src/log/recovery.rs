//! Recovery: [`PartitionLog::open`] rebuilds a log's state from its directory. Each segment is
//! trusted up to its index checkpoint and scanned batch by batch after it (whole, CRC-valid,
//! offsets contiguous); a torn tail of the active segment is cut durably; a crash in the middle
//! of a roll is told apart from corruption of acknowledged data (`crashed_mid_roll`), which is
//! refused. Afterwards `log_start <= durable = written = next` (asserted).

use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use super::PartitionLog;
use super::config::{LogConfig, PREALLOCATED_SCAN_MAX, SCAN_WINDOW_BYTES};
use super::index::{Checkpoint, IndexEntry};
use super::segment::{
    Segment, block_remainder, index_file_name, load_checkpoint, parse_segment_name, remove_files,
    segment_file_name, write_index_files,
};
use crate::batch::{self, BatchHeader, HEADER_BYTES};

/// Segments at the end of a log that an open syncs before counting them durable.
const TAIL_SEGMENTS_SYNCED_AT_OPEN: usize = 2;
use crate::error::{Error, Result};
use crate::storage::{BLOCK_BYTES, LogFile, Storage, align_down, align_up};

/// A file length or position as an in-memory index; a file too large for memory is an I/O
/// error (only possible on a 32-bit target).
fn to_usize(n: u64) -> io::Result<usize> {
    usize::try_from(n).map_err(|_| io::Error::other(format!("{n} bytes do not fit memory")))
}

/// Everything a recovery found, for the start-up summary.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    /// Partitions opened (1 for one log; summed by the engine).
    pub partitions: usize,
    /// Partitions whose tail was torn and truncated.
    pub truncated_tails: usize,
    /// Wall time of the whole recovery (set by the engine).
    pub duration_ms: u64,
    pub segments: usize,
    pub rebuilt_indexes: usize,
    pub scanned_bytes: u64,
    pub truncated_bytes: u64,
    pub truncation_reason: Option<String>,
}

/// Outcome of scanning a segment's batches.
struct Scan {
    end_pos: u64,
    next_offset: u64,
    max_timestamp_us: i64,
    entries: Vec<IndexEntry>,
    bytes_since_index: u64,
    /// Why the scan stopped before the end of the file, if it did and non-zero bytes follow.
    stopped: Option<String>,
}

/// Whether `[from, to)` of the file holds only zero bytes (preallocated space past the data).
/// Bounded: a region larger than [`PREALLOCATED_SCAN_MAX`] is not preallocation.
async fn only_zeros<F: LogFile>(file: &F, from: u64, to: u64) -> io::Result<bool> {
    if to.saturating_sub(from) > PREALLOCATED_SCAN_MAX {
        return Ok(false);
    }
    let mut pos = from;
    while pos < to {
        let len = (to - pos).min(SCAN_WINDOW_BYTES);
        let r = file.read_at(pos, to_usize(align_up(len))?).await?;
        let n = to_usize(len)?.min(r.len());
        if n == 0 {
            return Ok(true); // the file ends here
        }
        if r[..n].iter().any(|b| *b != 0) {
            return Ok(false);
        }
        pos += n as u64;
    }
    Ok(true)
}

/// What recovering one segment found.
enum Recovered<F> {
    Segment(Segment<F>),
    /// A sealed segment (one with a successor) whose data stops before its end: the reason.
    Sealed(String),
}

/// Whether the segments after a short or torn sealed one (`after`) can only have been created
/// by the flush that was in flight at a crash. A flush that rolls writes the old segment's tail
/// and the new segments concurrently, syncs them all, and only then writes their index files
/// and acknowledges anything; flushes of a partition never overlap. So if a process dies in
/// the middle of such a flush, the old segment may end short (its tail write was lost) while
/// the new ones hold data, none of it acknowledged, and none of them has an index file. Any
/// index file after the damage means the damage is not a torn write but corruption of
/// acknowledged data, which recovery must refuse rather than cut (`Error::CorruptLog`).
fn crashed_mid_roll(after: &[u64], names: &[String]) -> bool {
    !after.is_empty()
        && after.iter().all(|b| {
            ["idx", "tix"]
                .iter()
                .all(|ext| !names.iter().any(|n| *n == index_file_name(*b, ext)))
        })
}

/// Reads batches from `from.data_bytes` while they are whole, CRC-valid and contiguous in
/// offsets, extending the checkpoint's index entries.
async fn scan_segment<F: LogFile>(
    file: &F,
    file_size: u64,
    from: &Checkpoint,
    interval: u64,
) -> io::Result<Scan> {
    let mut s = Scan {
        end_pos: from.data_bytes,
        next_offset: from.next_offset,
        max_timestamp_us: from.max_timestamp_us,
        entries: from.entries.clone(),
        bytes_since_index: interval,
        stopped: None,
    };
    if let Some(last) = s.entries.last() {
        s.bytes_since_index = from.data_bytes - u64::from(last.position);
    }
    let mut window: Vec<u8> = Vec::new();
    let mut window_pos = 0u64;
    loop {
        let pos = s.end_pos;
        if pos >= file_size {
            return Ok(s);
        }
        // Make sure [pos, pos + HEADER) is in the window, then the whole batch.
        let need_in_window = |window: &Vec<u8>, window_pos: u64, len: u64| {
            pos >= window_pos && pos + len <= window_pos + window.len() as u64
        };
        if !need_in_window(&window, window_pos, HEADER_BYTES as u64) {
            window_pos = align_down(pos);
            let len = align_up((file_size - window_pos).min(SCAN_WINDOW_BYTES));
            window = file.read_at(window_pos, to_usize(len)?).await?.to_vec();
        }
        let at = to_usize(pos - window_pos)?;
        let avail = &window[at.min(window.len())..];
        if avail.len() < HEADER_BYTES || avail[..HEADER_BYTES].iter().all(|b| *b == 0) {
            if avail.iter().any(|b| *b != 0) {
                s.stopped = Some(format!("partial header at {pos}"));
            }
            return Ok(s);
        }
        let h = match BatchHeader::parse(avail) {
            Ok(h) => h,
            Err(e) => {
                s.stopped = Some(format!("at {pos}: {e}"));
                return Ok(s);
            }
        };
        let len = u64::from(h.batch_length);
        if pos + len > file_size {
            s.stopped = Some(format!("batch at {pos} runs past end of file"));
            return Ok(s);
        }
        if !need_in_window(&window, window_pos, len) {
            window_pos = align_down(pos);
            let want = align_up(pos + len - window_pos).max(SCAN_WINDOW_BYTES);
            let len = want.min(align_up(file_size - window_pos));
            window = file.read_at(window_pos, to_usize(len)?).await?.to_vec();
        }
        let at = to_usize(pos - window_pos)?;
        let Some(bytes) = window.get(at..at + h.batch_length as usize) else {
            s.stopped = Some(format!("batch at {pos} runs past the data read"));
            return Ok(s);
        };
        if let Err(e) = batch::check_crc(bytes) {
            s.stopped = Some(format!("at {pos}: {e}"));
            return Ok(s);
        }
        if h.base_offset != s.next_offset {
            s.stopped = Some(format!(
                "batch at {pos} has base offset {}, expected {}",
                h.base_offset, s.next_offset
            ));
            return Ok(s);
        }
        if s.bytes_since_index >= interval {
            // Data from disk: a position or relative offset beyond u32 cannot be indexed, and
            // no log this code wrote has one (segments roll before), so it ends the valid data.
            let (Ok(rel_offset), Ok(position)) = (
                u32::try_from(h.base_offset - from.segment_base),
                u32::try_from(pos),
            ) else {
                s.stopped = Some(format!("batch at {pos} beyond the index's u32 range"));
                return Ok(s);
            };
            s.entries.push(IndexEntry {
                rel_offset,
                position,
                max_timestamp_before_us: s.max_timestamp_us,
            });
            s.bytes_since_index = 0;
        }
        s.bytes_since_index += len;
        s.max_timestamp_us = s.max_timestamp_us.max(h.max_timestamp_us);
        s.next_offset = h.next_offset();
        s.end_pos = pos + len;
    }
}

impl<S: Storage> PartitionLog<S> {
    /// Opens (recovering) or creates the log in `dir`.
    pub async fn open(storage: S, dir: &Path, cfg: LogConfig, now_ms: i64) -> Result<Self> {
        cfg.validate()?;
        let err = |e| Error::io(dir.display(), e);
        storage.create_dir_all(dir).map_err(err)?;
        let names = storage.list(dir).await.map_err(err)?;
        for n in names.iter().filter(|n| n.ends_with(".tmp")) {
            storage.remove(&dir.join(n)).await.map_err(err)?;
        }
        // A restart at another offset whose marker is durable: finish it (restart.rs).
        let names = if super::restart::finish_restart(&storage, dir, &names).await? {
            storage.list(dir).await.map_err(err)?
        } else {
            names
        };
        let bases: Vec<u64> = names.iter().filter_map(|n| parse_segment_name(n)).collect();
        let sealer = match &cfg.encryption {
            Some(spec) => Some(crate::crypto::Sealer::new(spec.clone())?),
            None => None,
        };
        let mut log = PartitionLog::empty(storage.clone(), dir, cfg, sealer);
        if bases.is_empty() {
            let mut seg = Segment::new(dir, 0, now_ms);
            let f = storage.open(&seg.path).await.map_err(err)?;
            storage.sync_dir(dir).await.map_err(err)?;
            seg.file = Some(Rc::new(f));
            log.segments.insert(0, seg);
            log.check_offsets();
            return Ok(log);
        }
        let keep = log.recover_segments(&bases, &names, now_ms).await?;
        if keep < bases.len() {
            let mut files = Vec::new();
            for b in &bases[keep..] {
                let path = dir.join(segment_file_name(*b));
                if let Ok(f) = storage.open(&path).await {
                    log.recovery.truncated_bytes += f.size().await.unwrap_or(0);
                }
                files.push(path);
            }
            remove_files(&storage, dir, &files).await?;
        }
        log.sync_tail_segments().await.map_err(err)?;
        log.write_missing_indexes().await;
        let next = log
            .segments
            .values()
            .next_back()
            .map_or(0, |s| s.next_offset);
        log.next_offset = next;
        log.written_offset = next;
        log.durable_offset = next;
        log.recovery.segments = log.segments.len();
        log.check_offsets();
        Ok(log)
    }

    /// Recovers the segments `bases` in order and returns how many of them make up the log
    /// (`bases[..keep]`): a crash in the middle of a roll can leave the ones after it holding
    /// nothing acknowledged (see `crashed_mid_roll`); the caller removes those.
    async fn recover_segments(
        &mut self,
        bases: &[u64],
        names: &[String],
        now_ms: i64,
    ) -> Result<usize> {
        let mut keep = bases.len();
        let mut i = 0;
        // Bounded: each round either moves `i` on or shrinks `keep` to `i + 1` or less.
        while i < keep {
            let base = bases[i];
            let next_base = bases[..keep].get(i + 1).copied();
            let torn = match self.recover_segment(base, next_base, now_ms, names).await? {
                Recovered::Sealed(reason) => Some((i, reason)),
                Recovered::Segment(seg) => self.link_segment(seg)?.map(|reason| (i - 1, reason)),
            };
            let Some((last, reason)) = torn else {
                i += 1;
                continue;
            };
            if !crashed_mid_roll(&bases[last + 1..keep], names) {
                return Err(Error::CorruptLog {
                    path: self
                        .dir
                        .join(segment_file_name(bases[last]))
                        .display()
                        .to_string(),
                    reason,
                });
            }
            // Segment `last` ends short and the segments after it were created by the flush
            // that was in flight at the crash: it never completed (no index was written), so
            // nothing in them was acknowledged. `last` becomes the active segment again (its
            // torn tail is cut like any other) and the later files go.
            tracing::warn!(segment = bases[last], reason = %reason, dropped = keep - last - 1, "crash during a segment roll: dropping the unacknowledged segments after the torn one");
            self.recovery.truncation_reason = Some(reason);
            self.segments.remove(&bases[last]);
            keep = last + 1;
            i = last;
        }
        Ok(keep)
    }

    /// Adds a recovered segment after the ones recovered so far, sealing its predecessor. A gap
    /// before it (the previous segment ends short) is returned as the reason, for the caller
    /// to decide between a crashed roll and corruption; an overlap is corruption.
    fn link_segment(&mut self, seg: Segment<S::File>) -> Result<Option<String>> {
        let base = seg.base_offset;
        let prev_end = match self.segments.values_mut().next_back() {
            Some(prev) if prev.next_offset != base => prev.next_offset,
            Some(prev) => {
                prev.sealed = true;
                prev.index_final = true;
                self.segments.insert(base, seg);
                return Ok(None);
            }
            None => {
                self.segments.insert(base, seg);
                return Ok(None);
            }
        };
        let reason = format!("segment starts at {base} but the previous one ends at {prev_end}");
        if prev_end > base {
            return Err(Error::CorruptLog {
                path: seg.path.display().to_string(),
                reason,
            });
        }
        Ok(Some(reason))
    }

    /// Sealed segments with a lost or stale index: writes it now so the next start is fast.
    /// Best effort: a failure only means a longer scan next time.
    async fn write_missing_indexes(&mut self) {
        let last = self.segments.keys().next_back().copied();
        for seg in self.segments.values_mut() {
            if Some(seg.base_offset) != last && seg.checkpoint_pos != seg.end_pos {
                let cp = seg.checkpoint(seg.end_pos, seg.next_offset);
                if write_index_files(&self.storage, &self.dir, seg.base_offset, &cp)
                    .await
                    .is_ok()
                {
                    seg.checkpoint_pos = seg.end_pos;
                }
            }
        }
    }

    /// Makes what recovery found durable before it is counted durable. After a kill without a
    /// power loss (a crash of the process, a supervisor's restart), the segments hold bytes
    /// that were written but never synced: the device may still lose them. Counting them
    /// durable unsynced would let a durable retry of such a batch be answered at once, and a
    /// later power loss lose it (found with the simulator's kill model, issue 13). The last two
    /// segments are the ones a flush can have left unsynced, and with rolls off the write path
    /// (`roll.rs`) every sealed segment without its final index (an index is written only
    /// after its segment's sync); the directory sync makes their names durable. Runs before
    /// the missing indexes are written, for the same reason.
    async fn sync_tail_segments(&self) -> io::Result<()> {
        let tail = self
            .segments
            .len()
            .saturating_sub(TAIL_SEGMENTS_SYNCED_AT_OPEN);
        for (i, seg) in self.segments.values().enumerate() {
            if i < tail && seg.checkpoint_pos == seg.end_pos {
                continue;
            }
            match &seg.file {
                Some(file) => file.sync().await?,
                None => self.storage.open(&seg.path).await?.sync().await?,
            }
        }
        self.storage.sync_dir(&self.dir).await
    }

    async fn recover_segment(
        &mut self,
        base: u64,
        next_base: Option<u64>,
        now_ms: i64,
        names: &[String],
    ) -> Result<Recovered<S::File>> {
        let active = next_base.is_none();
        let dir = self.dir.clone();
        let mut seg = Segment::new(&dir, base, now_ms);
        let path_s = seg.path.display().to_string();
        let err = |e| Error::io(&path_s, e);
        let file = self.storage.open(&seg.path).await.map_err(err)?;
        let size = file.size().await.map_err(err)?;
        let cp = load_checkpoint(&self.storage, &dir, base, names)
            .await
            .filter(|cp| cp.data_bytes <= size);
        let had_cp = cp.is_some();
        let start = cp.unwrap_or(Checkpoint {
            segment_base: base,
            data_bytes: 0,
            next_offset: base,
            max_timestamp_us: i64::MIN,
            entries: Vec::new(),
        });
        let interval = self.cfg.index_interval_bytes;
        // A sealed segment's final index ends where the next segment starts. Any other
        // checkpoint is stale (the rename of the final index was lost) and only a valid prefix.
        let final_cp = had_cp && next_base == Some(start.next_offset);
        let scan = if final_cp {
            // A sealed segment with a valid final index: trust it; reads verify every CRC.
            Scan {
                end_pos: start.data_bytes,
                next_offset: start.next_offset,
                max_timestamp_us: start.max_timestamp_us,
                entries: start.entries.clone(),
                bytes_since_index: 0,
                stopped: None,
            }
        } else {
            let s = scan_segment(&file, size, &start, interval)
                .await
                .map_err(err)?;
            self.recovery.scanned_bytes += s.end_pos - start.data_bytes;
            s
        };
        if let Some(reason) = &scan.stopped {
            if !active {
                return Ok(Recovered::Sealed(reason.clone()));
            }
            tracing::warn!(segment = %path_s, reason = %reason, "truncating torn tail");
            self.recovery.truncation_reason = Some(reason.clone());
        }
        let zeroed_to = if active {
            self.cut_torn_tail(&file, size, &scan).await.map_err(err)?
        } else {
            size
        };
        if !had_cp || (!active && !final_cp) {
            self.recovery.rebuilt_indexes += 1;
        }
        assert!(scan.end_pos <= size, "scan ended past the file");
        assert!(
            scan.next_offset >= base,
            "scan went back before the segment's base"
        );
        seg.end_pos = scan.end_pos;
        seg.written_pos = scan.end_pos;
        seg.next_offset = scan.next_offset;
        seg.entries = scan.entries;
        seg.bytes_since_index = scan.bytes_since_index;
        seg.max_timestamp_us = scan.max_timestamp_us;
        seg.checkpoint_pos = if had_cp { start.data_bytes } else { 0 };
        // Block-aligned: a torn extension (or a cut, like the harness's torn-tail fault) can
        // leave the zeros ending mid-block, and direct writes start on a block.
        seg.zeroed_to = align_down(zeroed_to);
        let partial = block_remainder(scan.end_pos);
        if partial > 0 {
            let r = file
                .read_at(align_down(scan.end_pos), BLOCK_BYTES)
                .await
                .map_err(err)?;
            seg.tail = r[..partial].to_vec();
        }
        // A sealed segment with a lost or stale index gets one in `open` once the segments
        // are known to follow each other (an index written here would make a segment that
        // turns out to be the unacknowledged tail of a crash look like acknowledged data).
        seg.file = Some(Rc::new(file));
        Ok(Recovered::Segment(seg))
    }

    /// For the active segment: zero padding up to the end of the last block is what every
    /// flush leaves (and the next flush rewrites that block), and zeros beyond are preallocated
    /// space; anything else past the data is a torn tail, cut off durably so that stale bytes
    /// can never line up with future offsets. Returns how far the file is known written.
    async fn cut_torn_tail(&mut self, file: &S::File, size: u64, scan: &Scan) -> io::Result<u64> {
        let data_end = align_up(scan.end_pos);
        let torn = scan.stopped.is_some()
            || (size > data_end && !only_zeros(file, data_end, size).await?);
        if !torn {
            return Ok(size);
        }
        self.recovery.truncated_bytes += size.saturating_sub(scan.end_pos);
        file.truncate(scan.end_pos).await?;
        file.sync().await?;
        Ok(scan.end_pos)
    }

    /// After a failed flush: re-reads the log from disk (the same recovery as a restart) and,
    /// if that succeeds, takes appends again. Offsets continue from what is on disk.
    pub async fn repair(self, now_ms: i64) -> Result<Self> {
        let storage = self.storage.clone();
        let dir = self.dir.clone();
        let cfg = self.cfg.clone();
        // A segment starting after the last synced offset was created by the failed flush (a
        // roll always syncs): it holds nothing acknowledged, and its base offset counts batches
        // the previous segment may not have on disk, a gap recovery would refuse. Remove it.
        let unsynced: Vec<PathBuf> = self
            .segments
            .values()
            .filter(|s| s.base_offset > self.durable_offset)
            .map(|s| s.path.clone())
            .collect();
        drop(self);
        if !unsynced.is_empty() {
            remove_files(&storage, &dir, &unsynced).await?;
        }
        PartitionLog::open(storage, &dir, cfg, now_ms).await
    }
}
