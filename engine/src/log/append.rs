//! The append path: a validated batch gets its offsets, is copied once into the DMA write
//! chunks with its base offset patched on the way, and enters the cache (patched in place when
//! its buffer is not shared, else when first served: `read::CachedBatch`). Rolls to a new segment by size, age and relative-offset range.

use bytes::Bytes;

use super::config::{CHUNK_BYTES_MIN, SEGMENT_BYTES_MAX, SEGMENT_RELATIVE_OFFSET_MAX};
use super::index::IndexEntry;
use super::read::CachedBatch;
use super::segment::{Chunk, Segment, align_up_usize, index_position, relative_offset};
use super::{Appended, PartitionLog};
use crate::batch::{HEADER_BYTES, ValidatedBatch};
use crate::error::{Error, Result};
use crate::storage::{IoBuf, Storage, align_down};

impl<S: Storage> PartitionLog<S> {
    /// Appends one batch (already validated on ingress) and assigns its offsets. The bytes are
    /// kept for the cache; the caller decides when to flush.
    ///
    /// Thin wrapper over [`Self::append_validated`] for callers that still hold raw bytes: it
    /// checks header and CRC ([`ValidatedBatch::check_crc`]) to get the typed batch.
    pub fn append(&mut self, batch: Bytes, now_ms: i64) -> Result<Appended> {
        self.check_accepting()?;
        self.append_validated(ValidatedBatch::check_crc(batch)?, now_ms)
    }

    /// Appends one batch whose header was parsed and checked on ingress, and assigns its
    /// offsets. The header is not parsed again; the batch is copied once, into the write
    /// chunks, with its base offset patched in that copy. The cache keeps the caller's buffer,
    /// patched in place when no one else holds it; a shared buffer is patched by one copy when
    /// the cache first serves it (see [`Self::cache_copied_batches`]). The caller decides when
    /// to flush.
    pub fn append_validated(&mut self, batch: ValidatedBatch, now_ms: i64) -> Result<Appended> {
        self.check_accepting()?;
        // Encrypted topics: seal now that the base offset is known (it is the nonce). The
        // sealed batch is a new batch (new length, flags, CRC), produced here: check it.
        let batch = match &mut self.sealer {
            Some(s) => ValidatedBatch::check_crc(s.seal(batch.bytes(), self.next_offset)?)?,
            None => batch,
        };
        let len = batch.len();
        let len_bytes = len as u64;
        // A batch larger than the segment size gets a segment of its own (positions are u32,
        // so only the hard segment limit applies). The queue ack log relies on this: its
        // snapshot is one batch and can outgrow its small segments.
        if len_bytes > SEGMENT_BYTES_MAX {
            return Err(Error::BatchTooLarge {
                bytes: len,
                max: usize::try_from(SEGMENT_BYTES_MAX).unwrap_or(usize::MAX),
            });
        }
        let header = *batch.header();
        self.maybe_roll(len_bytes, now_ms);
        let base = self.next_offset;
        let next = base + u64::from(header.record_count);
        let seg_base = *self.segments.keys().next_back().unwrap_or(&0);
        let seg = self
            .segments
            .get_mut(&seg_base)
            .ok_or_else(|| Error::Runtime("no segment".into()))?;
        assert_eq!(
            seg.next_offset, base,
            "the active segment ends at the log's end"
        );
        if seg.entries.is_empty() || seg.bytes_since_index >= self.cfg.index_interval_bytes {
            seg.entries.push(IndexEntry {
                rel_offset: relative_offset(base, seg.base_offset),
                position: index_position(seg.end_pos),
                max_timestamp_before_us: seg.max_timestamp_us,
            });
            seg.bytes_since_index = 0;
        }
        seg.bytes_since_index += len_bytes;
        seg.max_timestamp_us = seg.max_timestamp_us.max(header.max_timestamp_us);
        seg.next_offset = next;
        // The one copy of the batch: header (patched on the stack) and body into the chunks.
        let patched_header = batch.header_bytes_with_base_offset(base);
        self.copy_into_chunks(seg_base, &[&patched_header, batch.body_bytes()]);
        if let Some(seg) = self.segments.get_mut(&seg_base) {
            seg.end_pos += len_bytes;
        }
        self.next_offset = next;
        // Patched in place if the buffer is ours alone; else patched when first served.
        let cached = batch.patch_in_place(base).unwrap_or_else(|shared| shared);
        self.cache
            .push_back(CachedBatch::new(base, next, cached.into_bytes()));
        self.cache_bytes += len;
        self.trim_cache(self.cfg.cache_bytes);
        self.check_offsets();
        Ok(Appended {
            base_offset: base,
            last_offset: next - 1,
            batch_bytes: len,
        })
    }

    /// Refuses appends after a failed flush, until [`Self::repair`] reopens the log.
    fn check_accepting(&self) -> Result<()> {
        let Some(reason) = &self.failed else {
            return Ok(());
        };
        if self.failed_disk_full {
            return Err(Error::DiskFull {
                path: self.dir.display().to_string(),
            });
        }
        Err(Error::PartitionFailed {
            topic: self.dir.display().to_string(),
            partition: 0,
            reason: reason.clone(),
        })
    }

    /// Rolls before appending `len_bytes` if the active segment holds data and is full, old,
    /// or so many offsets long that the next batch's relative offset would not fit the index.
    fn maybe_roll(&mut self, len_bytes: u64, now_ms: i64) {
        let Some(active) = self.segments.values_mut().next_back() else {
            return;
        };
        let full = active.end_pos + len_bytes > self.cfg.roll_bytes();
        let segment_ms = i64::try_from(self.cfg.segment_ms).unwrap_or(i64::MAX);
        let old = now_ms.saturating_sub(active.created_ms) >= segment_ms;
        let offsets_full = self.next_offset - active.base_offset > SEGMENT_RELATIVE_OFFSET_MAX;
        if active.end_pos > 0 && (full || old || offsets_full) {
            self.roll(now_ms);
        }
    }

    pub(super) fn roll(&mut self, now_ms: i64) {
        if let Some(active) = self.segments.values_mut().next_back() {
            active.sealed = true;
        }
        let seg = Segment::new(&self.dir, self.next_offset, now_ms);
        self.segments.insert(self.next_offset, seg);
    }

    /// Copies `parts` (one batch, in order) into the write chunks of segment `seg_base`, after
    /// its `end_pos`. Chunks are filled to capacity before the next one starts.
    fn copy_into_chunks(&mut self, seg_base: u64, parts: &[&[u8]]) {
        let Some(seg) = self.segments.get(&seg_base) else {
            return;
        };
        let mut cursor = seg.end_pos;
        let mut remaining: usize = parts.iter().map(|p| p.len()).sum();
        let chunk_max = self.cfg.write_chunk_bytes;
        for mut src in parts.iter().copied() {
            while !src.is_empty() {
                let continues = self
                    .chunks
                    .last()
                    .is_some_and(|c| c.segment_base == seg_base);
                let full = self
                    .chunks
                    .last()
                    .is_some_and(|c| c.len == c.buf.as_bytes().len());
                if !continues || full {
                    // A chunk continuing a full one starts block-aligned; a first chunk carries
                    // the partial tail block that earlier flushes already wrote, and rewrites it.
                    let carried: &[u8] = if continues { &[] } else { &seg.tail };
                    let pos = align_down(cursor);
                    assert_eq!(pos + carried.len() as u64, cursor, "tail out of step");
                    let want = align_up_usize(carried.len() + remaining);
                    let cap = chunk_max.min(want.max(CHUNK_BYTES_MIN));
                    let mut buf = S::alloc_buf(cap);
                    buf.as_bytes_mut()[..carried.len()].copy_from_slice(carried);
                    self.chunks.push(Chunk {
                        segment_base: seg_base,
                        pos,
                        buf,
                        len: carried.len(),
                    });
                }
                let Some(c) = self.chunks.last_mut() else {
                    return;
                };
                let n = (c.buf.as_bytes().len() - c.len).min(src.len());
                c.buf.as_bytes_mut()[c.len..c.len + n].copy_from_slice(&src[..n]);
                c.len += n;
                cursor += n as u64;
                remaining -= n;
                src = &src[n..];
            }
        }
        assert_eq!(remaining, 0, "every byte of the batch copied");
    }
}

// The chunk copy writes the header and the body as two parts; both start 16-aligned in the
// segment because batches are multiples of 16 bytes.
const _: () = assert!(HEADER_BYTES.is_multiple_of(crate::batch::BATCH_ALIGN));
