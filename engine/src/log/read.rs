//! Reads: [`PartitionLog::plan_read`] serves tailing readers from the in-memory cache of recent
//! batches, or plans a [`DiskRead`] through the sparse index; both return whole batches, and
//! disk reads check every batch's CRC and offset continuity.

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::rc::Rc;

use bytes::Bytes;

use super::PartitionLog;
use super::config::READ_WINDOW_BYTES;
use super::index;
use crate::batch::{self, BatchHeader, HEADER_BYTES};
use crate::error::{Error, Result};
use crate::storage::{LogFile, Storage, align_down, align_up};

/// A batch cached in memory (visible once below the high watermark).
///
/// Its bytes carry the assigned base offset once served. An append patches the caller's buffer
/// in place when it owns it alone; a shared buffer is kept as it came and patched, by one copy,
/// the first time a reader is served from it (never, if no reader tails the partition), so
/// the append path itself never copies a batch for the cache.
pub(super) struct CachedBatch {
    pub(super) base_offset: u64,
    pub(super) next_offset: u64,
    /// The whole batch; its base offset field equals `base_offset` after the first serve.
    bytes: RefCell<Bytes>,
}

impl CachedBatch {
    pub(super) fn new(base_offset: u64, next_offset: u64, bytes: Bytes) -> Self {
        assert!(
            base_offset < next_offset,
            "a batch holds at least one offset"
        );
        assert!(bytes.len() >= HEADER_BYTES, "a cached batch holds a header");
        CachedBatch {
            base_offset,
            next_offset,
            bytes: RefCell::new(bytes),
        }
    }

    /// Bytes of the batch (what the cache accounts for).
    pub(super) fn len(&self) -> usize {
        self.bytes.borrow().len()
    }

    /// The batch as readers get it, with its assigned base offset. Patches (one copy) on the
    /// first serve of a batch appended from a shared buffer, and counts that in `copies`.
    fn served(&self, copies: &Cell<u64>) -> Bytes {
        let mut bytes = self.bytes.borrow_mut();
        let mut base = [0u8; 8];
        base.copy_from_slice(&bytes[batch::BASE_OFFSET_AT..batch::BASE_OFFSET_AT + 8]);
        if u64::from_le_bytes(base) != self.base_offset {
            *bytes = batch::with_base_offset_copied(&bytes, self.base_offset);
            copies.set(copies.get() + 1);
        }
        bytes.clone()
    }
}

/// A fetch that must go to disk.
pub struct DiskRead<F> {
    file: Rc<F>,
    path: PathBuf,
    start_pos: u64,
    /// Base offset of the batch at `start_pos` (from the index). Checked like every later
    /// batch's: the base offset is outside the CRC, so only continuity catches a damaged one.
    start_offset: u64,
    end_pos: u64,
    offset: u64,
    upto_offset: u64,
    max_bytes: usize,
    max_records: usize,
}

/// What a read returns: whole batches (the first may begin before the requested offset).
#[derive(Debug, Clone, Default)]
pub struct ReadResult {
    /// Consecutive batches, each buffer holding one or more whole batches.
    pub chunks: Vec<Bytes>,
    pub records: usize,
    pub bytes: usize,
}

/// How a read will be served.
pub enum ReadPlan<F> {
    Ready(ReadResult),
    Disk(DiskRead<F>),
}

impl<F: LogFile> DiskRead<F> {
    /// Reads whole, CRC-checked, offset-contiguous batches. At least one batch is returned
    /// (even if larger than `max_bytes`) so a reader always makes progress.
    pub async fn run(self) -> Result<ReadResult> {
        let mut out = ReadResult::default();
        let mut pos = self.start_pos;
        let mut expect = self.start_offset;
        let mut min_len = 0u64;
        'windows: while pos < self.end_pos && out.records < self.max_records {
            let wpos = align_down(pos);
            let budget = self
                .max_bytes
                .saturating_sub(out.bytes)
                .max(READ_WINDOW_BYTES) as u64;
            let len = align_up((self.end_pos - wpos).min((pos - wpos + budget).max(min_len)));
            let len = usize::try_from(len).map_err(|_| self.corrupt(pos, too_long(len)))?;
            let win = self
                .file
                .read_at(wpos, len)
                .await
                .map_err(|e| Error::io(self.path.display(), e))?;
            let limit = (wpos + win.len() as u64).min(self.end_pos);
            let (mut cursor, mut first, mut last) = (pos, None, pos);
            let mut stop = false;
            while cursor + HEADER_BYTES as u64 <= limit {
                let at = window_index(cursor, wpos, &win);
                let h =
                    BatchHeader::parse(&win[at..]).map_err(|e| self.corrupt(cursor, e.into()))?;
                let blen = u64::from(h.batch_length);
                let blen_bytes = h.batch_length as usize;
                if h.base_offset != expect {
                    let msg = format!("offset {} where {expect} was expected", h.base_offset);
                    return Err(self.corrupt(cursor, Error::CorruptBatch(msg)));
                }
                if h.base_offset >= self.upto_offset {
                    stop = true;
                    break;
                }
                if cursor + blen > limit {
                    break;
                }
                batch::check_crc(&win[at..at + blen_bytes])
                    .map_err(|e| self.corrupt(cursor, e.into()))?;
                expect = h.next_offset();
                if h.next_offset() > self.offset {
                    if out.bytes > 0 && out.bytes + blen_bytes > self.max_bytes {
                        stop = true;
                        break;
                    }
                    first.get_or_insert(cursor);
                    last = cursor + blen;
                    out.records += h.record_count as usize;
                    out.bytes += blen_bytes;
                }
                cursor += blen;
                if out.records >= self.max_records {
                    stop = true;
                    break;
                }
            }
            if let Some(first) = first {
                let (a, b) = (
                    window_index(first, wpos, &win),
                    window_index(last, wpos, &win),
                );
                out.chunks.push(Bytes::copy_from_slice(&win[a..b]));
            }
            if stop {
                break 'windows;
            }
            if cursor == pos {
                // The batch at `pos` did not fit the window: read again, large enough for it.
                if pos + HEADER_BYTES as u64 > limit {
                    break;
                }
                let at = window_index(pos, wpos, &win);
                let h = BatchHeader::parse(&win[at..]).map_err(|e| self.corrupt(pos, e.into()))?;
                if pos + u64::from(h.batch_length) > self.end_pos {
                    return Err(
                        self.corrupt(pos, Error::CorruptBatch("batch runs past the data".into()))
                    );
                }
                min_len = pos - wpos + u64::from(h.batch_length);
                continue;
            }
            min_len = 0;
            pos = cursor;
        }
        Ok(out)
    }

    fn corrupt(&self, pos: u64, e: Error) -> Error {
        Error::CorruptLog {
            path: self.path.display().to_string(),
            reason: format!("at {pos}: {e}"),
        }
    }
}

impl<S: Storage> PartitionLog<S> {
    pub(super) fn trim_cache(&mut self, max_bytes: usize) {
        while self.cache_bytes > max_bytes && self.cache.len() > 1 {
            if let Some(b) = self.cache.pop_front() {
                self.cache_bytes -= b.len();
            }
        }
    }

    /// Drops cached batches (shard-wide memory pressure).
    pub fn evict_cache(&mut self, keep_bytes: usize) -> usize {
        let before = self.cache_bytes;
        while self.cache_bytes > keep_bytes {
            match self.cache.pop_front() {
                Some(b) => self.cache_bytes -= b.len(),
                None => break,
            }
        }
        before - self.cache_bytes
    }

    pub fn cache_bytes(&self) -> usize {
        self.cache_bytes
    }

    /// Plans a read of whole batches from `offset`, below the high watermark.
    pub fn plan_read(
        &self,
        offset: u64,
        max_bytes: usize,
        max_records: usize,
    ) -> Result<ReadPlan<S::File>> {
        let hw = self.written_offset;
        if offset > hw {
            return Err(Error::OffsetOutOfRange {
                offset,
                log_start: self.log_start(),
                log_end: hw,
            });
        }
        self.plan_read_upto(offset, max_bytes, max_records, hw)
    }

    /// The end of what the log can serve without its file: the high watermark, extended over
    /// the appended, not yet written batches when the cache holds all of them (it is trimmed
    /// from the front, so it holds them all when its first batch starts at or below the high
    /// watermark). Just the high watermark while the log is failed: a repair reopens it from
    /// what the file holds, and the unwritten batches are gone.
    pub fn appended_end(&self) -> u64 {
        let hw = self.written_offset;
        if self.failed.is_some() || self.next_offset == hw {
            return hw;
        }
        match self.cache.front() {
            Some(front) if front.base_offset <= hw => self.next_offset,
            _ => hw,
        }
    }

    /// Plans a read of whole batches from `offset`, below `end`: the high watermark, the
    /// durable offset, or up to [`Self::appended_end`] (batches not yet written are served from
    /// the cache; the file is read below the high watermark only). `end` must lie on a batch
    /// boundary. An offset in `[end, next offset]` reads nothing (the reader waits); above the
    /// next offset (or below the log start) it is out of range.
    pub fn plan_read_upto(
        &self,
        offset: u64,
        max_bytes: usize,
        max_records: usize,
        end: u64,
    ) -> Result<ReadPlan<S::File>> {
        let end = end.min(self.appended_end());
        let start = self.log_start();
        if offset < start || offset > self.next_offset {
            return Err(Error::OffsetOutOfRange {
                offset,
                log_start: start,
                log_end: end,
            });
        }
        if offset >= end {
            return Ok(ReadPlan::Ready(ReadResult::default()));
        }
        let hw = end;
        let max_records = max_records.max(1);
        if let Some(front) = self.cache.front()
            && front.base_offset <= offset
        {
            let i = self.cache.partition_point(|b| b.next_offset <= offset);
            let mut out = ReadResult::default();
            for b in self.cache.iter().skip(i) {
                if b.base_offset >= hw
                    || out.records >= max_records
                    || (out.bytes > 0 && out.bytes + b.len() > max_bytes)
                {
                    break;
                }
                // At most u32::MAX records per batch: fits usize on every supported target.
                out.records += usize::try_from(b.next_offset - b.base_offset).unwrap_or(usize::MAX);
                let bytes = b.served(&self.cache_copied_batches);
                out.bytes += bytes.len();
                out.chunks.push(bytes);
            }
            return Ok(ReadPlan::Ready(out));
        }
        let (_, seg) =
            self.segments
                .range(..=offset)
                .next_back()
                .ok_or(Error::OffsetOutOfRange {
                    offset,
                    log_start: start,
                    log_end: hw,
                })?;
        let file = seg
            .file
            .clone()
            .ok_or_else(|| Error::Runtime("segment not open".into()))?;
        // Relative offsets of batch starts fit u32 (`PartitionLog::maybe_roll`); an offset inside
        // a segment's last batch may lie beyond, and then the last index entry is the start.
        let rel = u32::try_from(offset - seg.base_offset).unwrap_or(u32::MAX);
        let (start_pos, start_rel) = index::lookup_offset(&seg.entries, rel).map_or((0, 0), |i| {
            (seg.entries[i].position, seg.entries[i].rel_offset)
        });
        Ok(ReadPlan::Disk(DiskRead {
            file,
            path: seg.path.clone(),
            start_pos: u64::from(start_pos),
            start_offset: seg.base_offset + u64::from(start_rel),
            end_pos: seg.written_pos,
            offset,
            upto_offset: hw.min(self.written_offset),
            max_bytes,
            max_records,
        }))
    }

    /// Where a search for the first record with timestamp `>= timestamp_us` should start
    /// reading (via the time index), or `None` if no record is that new.
    pub fn time_lookup_start(&self, timestamp_us: i64) -> Option<u64> {
        let hw = self.written_offset;
        let seg = self
            .segments
            .values()
            .find(|s| s.max_timestamp_us >= timestamp_us && s.base_offset < hw)?;
        let start = index::lookup_time(&seg.entries, timestamp_us).map_or(seg.base_offset, |i| {
            seg.base_offset + u64::from(seg.entries[i].rel_offset)
        });
        Some(start.max(self.log_start()))
    }
}

/// In fetched batches, the first record with timestamp `>= timestamp_us`, if any.
pub fn first_at_or_after(chunks: &[Bytes], timestamp_us: i64) -> Result<Option<u64>> {
    for chunk in chunks {
        for b in batch::split_batches(chunk)? {
            let h = BatchHeader::parse(b)?;
            if h.max_timestamp_us < timestamp_us {
                continue;
            }
            // Sealed and Kafka-kind bodies are not read here: the batch's first offset.
            if h.flags & batch::flags::ENCRYPTED != 0 || h.body_kind == batch::body_kind::KAFKA_V2 {
                return Ok(Some(h.base_offset));
            }
            // The delta is a wrap-around difference (see `BatchBuilder::build`): a batch spanning
            // the whole i64 range is valid, and only a wrapping add gives its timestamps back.
            let found = batch::with_records(b, &h, |rs| -> Result<_> {
                Ok(rs.iter().position(|r| {
                    let delta = r.timestamp_delta_us() as i64;
                    h.first_timestamp_us.wrapping_add(delta) >= timestamp_us
                }))
            })?;
            return Ok(Some(h.base_offset + found.unwrap_or(0) as u64));
        }
    }
    Ok(None)
}

/// Index into a read window of the byte at file position `pos`, the window starting at file
/// position `window_pos`. In range by construction: callers only ask for positions inside the
/// window they read (`window_pos <= pos <= window_pos + window.len()`).
fn window_index(pos: u64, window_pos: u64, window: &[u8]) -> usize {
    assert!(
        pos >= window_pos && pos - window_pos <= window.len() as u64,
        "position {pos} outside the window at {window_pos} of {} bytes",
        window.len()
    );
    match usize::try_from(pos - window_pos) {
        Ok(at) => at,
        Err(_) => unreachable!("bounded by the window's length"),
    }
}

fn too_long(len: u64) -> Error {
    Error::CorruptBatch(format!("read of {len} bytes does not fit memory"))
}
