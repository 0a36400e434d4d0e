//! [`LogConfig`], a partition log's settings, and the log's limits: every size and count on the
//! data path is a named constant here, unit last.

use crate::error::{Error, Result};
use crate::storage::BLOCK_BYTES;

/// Settings of one partition log (a topic's config, resolved).
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Roll to a new segment once the active one would exceed this (at most 2 GiB).
    pub segment_bytes: u64,
    /// Roll once the active segment is older than this, if it holds data.
    pub segment_ms: u64,
    /// One index entry per this many bytes of log.
    pub index_interval_bytes: u64,
    /// Capacity of one write chunk; a group commit writes at most a few of these at once.
    pub write_chunk_bytes: usize,
    /// Write an index checkpoint of the active segment after this many new durable bytes.
    pub checkpoint_interval_bytes: u64,
    pub retention_bytes: Option<u64>,
    pub retention_ms: Option<u64>,
    /// Recent batches kept in memory for tailing readers (per partition cap).
    pub cache_bytes: usize,
    /// Seal every appended batch (encryption at rest, `crate::crypto`); `None` = plaintext.
    pub encryption: Option<crate::crypto::TopicEncryption>,
    /// Zero-filled file space kept ahead of small writes in the active segment (0 = off):
    /// writes that stay inside the file need no metadata change, so their fdatasync is a
    /// device flush instead of a journal commit (docs/storage.md, "Preallocation").
    pub preallocate_bytes: u64,
}

/// Largest segment: positions in the index are u32.
pub const SEGMENT_BYTES_MAX: u64 = 2 << 30;
const _: () = assert!(SEGMENT_BYTES_MAX <= u32::MAX as u64 + 1);
/// Smallest segment a config may ask for.
pub(super) const SEGMENT_BYTES_MIN: u64 = 64 << 10;
/// Largest relative offset inside one segment: index entries store offsets as u32 relative to
/// the segment's base, so a segment holds at most this many offsets past its base.
pub(super) const SEGMENT_RELATIVE_OFFSET_MAX: u64 = u32::MAX as u64;
/// Smallest write chunk (and the smallest chunk allocated for a small append).
pub(super) const CHUNK_BYTES_MIN: usize = 64 << 10;
/// Chunk writes of one flush in flight at once.
pub(super) const WRITES_IN_FLIGHT_MAX: usize = 32;
/// Disk reads are issued in windows of at least this.
pub(super) const READ_WINDOW_BYTES: usize = 256 << 10;
/// Recovery reads a segment in windows of at least this.
pub(super) const SCAN_WINDOW_BYTES: u64 = 4 << 20;
/// Largest zero region after the data that recovery keeps as preallocated space.
pub(super) const PREALLOCATED_SCAN_MAX: u64 = 64 << 20;
/// Largest preallocation window a config may ask for.
pub(super) const PREALLOCATE_BYTES_MAX: u64 = 64 << 20;

const SEGMENT_BYTES_DEFAULT: u64 = 256 << 20;
const SEGMENT_MS_DEFAULT: u64 = 7 * 24 * 3600 * 1000;
const INDEX_INTERVAL_BYTES_DEFAULT: u64 = 4096;
const WRITE_CHUNK_BYTES_DEFAULT: usize = 1 << 20;
const CHECKPOINT_INTERVAL_BYTES_DEFAULT: u64 = 64 << 20;
const CACHE_BYTES_DEFAULT: usize = 4 << 20;
const PREALLOCATE_BYTES_DEFAULT: u64 = 256 << 10;

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: SEGMENT_BYTES_DEFAULT,
            segment_ms: SEGMENT_MS_DEFAULT,
            index_interval_bytes: INDEX_INTERVAL_BYTES_DEFAULT,
            write_chunk_bytes: WRITE_CHUNK_BYTES_DEFAULT,
            checkpoint_interval_bytes: CHECKPOINT_INTERVAL_BYTES_DEFAULT,
            retention_bytes: None,
            retention_ms: None,
            cache_bytes: CACHE_BYTES_DEFAULT,
            encryption: None,
            preallocate_bytes: PREALLOCATE_BYTES_DEFAULT,
        }
    }
}

impl LogConfig {
    /// The size at which the active segment rolls: `segment_bytes`, or a quarter of
    /// `retention_bytes` when that is smaller (never below the smallest segment), so that
    /// retention by bytes, which deletes whole sealed segments, holds the log to within one
    /// small segment of its limit (issue 16, finding 9). A batch larger than this still goes
    /// whole into a segment of its own (rolled before and after it).
    pub fn roll_bytes(&self) -> u64 {
        match self.retention_bytes {
            Some(r) => self.segment_bytes.min((r / 4).max(SEGMENT_BYTES_MIN)),
            None => self.segment_bytes,
        }
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::InvalidArgument(m.to_string()));
        if self.segment_bytes < SEGMENT_BYTES_MIN || self.segment_bytes > SEGMENT_BYTES_MAX {
            return bad("segment_bytes must be between 64 KiB and 2 GiB");
        }
        if self.index_interval_bytes == 0 {
            return bad("index_interval_bytes must be positive");
        }
        if self.write_chunk_bytes < CHUNK_BYTES_MIN
            || !self.write_chunk_bytes.is_multiple_of(BLOCK_BYTES)
        {
            return bad("write_chunk_bytes must be a multiple of 4 KiB, at least 64 KiB");
        }
        if !self.preallocate_bytes.is_multiple_of(BLOCK_BYTES as u64)
            || self.preallocate_bytes > PREALLOCATE_BYTES_MAX
        {
            return bad("preallocate_bytes must be a multiple of 4 KiB, at most 64 MiB");
        }
        Ok(())
    }
}
