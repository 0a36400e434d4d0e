//! One partition's segmented, append-only log (docs/storage.md).
//!
//! ```text
//!  partition dir/
//!    00000000000000000000.log   sealed segment: batches back to back, each 16-aligned
//!    00000000000000000000.idx   its sparse offset index (checkpoint of the whole segment)
//!    00000000000000000000.tix   its time index
//!    00000000000000052113.log   active segment; .idx/.tix here are checkpoints of a prefix
//!
//!  active segment file:  | synced ... | written, not synced | tail block  |
//!                        0        durable_pos           written_pos    end_pos (appended)
//!
//!  offsets of the log:   log_start <= durable_offset <= written_offset <= next_offset
//!                        (asserted by `PartitionLog::check_offsets` after every change)
//! ```
//!
//! The log is plain Rust over the [`Storage`] trait. State changes are synchronous (`append`,
//! `take_flush`, `finish_flush`, `plan_read`); I/O happens in [`FlushJob::run`] and
//! [`DiskRead::run`], which hold only `Rc` file handles and buffers, never the log itself, so the
//! runtime shell can keep the log in a `RefCell` and never hold a borrow across an await.
//!
//! Positions: appended batches are copied into block-aligned *chunks*. A chunk is filled to its
//! capacity before the next one starts, so chunks of one flush never overlap and are written
//! concurrently; the partial last block is carried (as `tail`) into the next flush's first
//! chunk and written again. One flush runs at a time per partition, so a block's writes are
//! never reordered; `fdatasync` is issued only after the writes it covers have completed.
//!
//! ```text
//!  module        holds                                              state it changes
//!  mod.rs        PartitionLog's state, watermarks, check_offsets    -
//!  config.rs     LogConfig and the log's limits (named, units last) -
//!  segment.rs    Segment, Chunk, file names, index file I/O         -
//!  append.rs     append / append_validated, rolls, chunk copies     next_offset, chunks, cache
//!  flush.rs      take_flush, FlushJob (group commit), finish_flush  written/durable_offset
//!  recovery.rs   open (scan, torn tails, crashed rolls), repair     everything, from disk
//!  read.rs       plan_read, DiskRead, the batch cache               cache
//!  retention.rs  expired segments, roll_for_retention, take_expired log_start
//!  restart.rs    restart_log (empty at offset S), its marker file   everything, from disk
//!  roll.rs       prepared next segment, seals off the write path    durable_offset
//!  index.rs      .idx / .tix encoding and lookups                   -
//! ```

#![warn(
    clippy::cast_possible_truncation,
    clippy::host_endian_bytes,
    clippy::too_many_lines
)]

mod append;
mod config;
mod flush;
pub mod index;
mod read;
mod recovery;
mod restart;
mod retention;
mod roll;
mod segment;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};

use crate::storage::{LogFile, Storage};

pub use config::{LogConfig, SEGMENT_BYTES_MAX};
pub use flush::{CloseJob, FlushDone, FlushJob, FlushTimings};
pub use read::{DiskRead, ReadPlan, ReadResult, first_at_or_after};
pub use recovery::RecoveryReport;
pub use restart::restart_log;
pub use roll::{PrepareDone, PrepareJob, SealDone, SealJob};
pub(crate) use segment::write_whole_file;
pub use segment::{remove_files, segment_file_name};

use read::CachedBatch;
use segment::{Chunk, Segment};

/// Result of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub base_offset: u64,
    pub last_offset: u64,
    pub batch_bytes: usize,
}

/// Offsets of a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Watermarks {
    /// First readable offset.
    pub log_start: u64,
    /// Offset the next append gets (in memory).
    pub next_offset: u64,
    /// High watermark: offsets below are written to the file and readable.
    pub written_offset: u64,
    /// Offsets below were covered by fdatasync.
    pub durable_offset: u64,
}

/// A partition log.
pub struct PartitionLog<S: Storage> {
    storage: S,
    dir: PathBuf,
    cfg: LogConfig,
    segments: BTreeMap<u64, Segment<S::File>>,
    chunks: Vec<Chunk<<S::File as LogFile>::Buf>>,
    next_offset: u64,
    written_offset: u64,
    durable_offset: u64,
    unsynced_segments: BTreeSet<u64>,
    flushing: bool,
    failed: Option<String>,
    /// The failure was ENOSPC: appends answer `DiskFull` (retriable, and what the operator
    /// must fix) rather than the generic `PartitionFailed` until the repair reopens the log.
    failed_disk_full: bool,
    /// A retention roll is between its awaits (a restart waits for it: `restart.rs`).
    retention_roll_running: bool,
    cache: VecDeque<CachedBatch>,
    cache_bytes: usize,
    /// Cached batches that needed a copy to carry their base offset (appended from a shared
    /// buffer, then served); the others were patched in place at append. A `Cell`: the copy is
    /// made by `plan_read`, which takes `&self`.
    cache_copied_batches: std::cell::Cell<u64>,
    /// Set for encrypted topics: batches are sealed in `append`, after offsets are assigned.
    sealer: Option<crate::crypto::Sealer>,
    /// Rolls off the write path: the prepared next segment, running seals (`roll.rs`).
    rolls: roll::RollState<S::File>,
    pub recovery: RecoveryReport,
}

impl<S: Storage> PartitionLog<S> {
    /// A log with no segments and all offsets at 0; recovery (`open`) fills it in.
    fn empty(
        storage: S,
        dir: &Path,
        cfg: LogConfig,
        sealer: Option<crate::crypto::Sealer>,
    ) -> Self {
        PartitionLog {
            storage,
            dir: dir.to_path_buf(),
            cfg,
            sealer,
            segments: BTreeMap::new(),
            chunks: Vec::new(),
            next_offset: 0,
            written_offset: 0,
            durable_offset: 0,
            unsynced_segments: BTreeSet::new(),
            flushing: false,
            failed: None,
            failed_disk_full: false,
            retention_roll_running: false,
            cache: VecDeque::new(),
            cache_bytes: 0,
            cache_copied_batches: std::cell::Cell::new(0),
            rolls: roll::RollState::default(),
            recovery: RecoveryReport::default(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config(&self) -> &LogConfig {
        &self.cfg
    }

    pub fn set_retention(&mut self, bytes: Option<u64>, ms: Option<u64>) {
        self.cfg.retention_bytes = bytes;
        self.cfg.retention_ms = ms;
    }

    pub fn watermarks(&self) -> Watermarks {
        Watermarks {
            log_start: self.log_start(),
            next_offset: self.next_offset,
            written_offset: self.written_offset,
            durable_offset: self.durable_offset,
        }
    }

    pub fn log_start(&self) -> u64 {
        self.segments.keys().next().copied().unwrap_or(0)
    }

    /// Bytes of log data (appended) across all segments.
    pub fn size_bytes(&self) -> u64 {
        self.segments.values().map(|s| s.end_pos).sum()
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    pub fn failure(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    pub fn has_pending(&self) -> bool {
        !self.chunks.is_empty()
    }

    /// Bytes appended but not yet taken by a flush (memory held for this partition's writes).
    pub fn pending_bytes(&self) -> usize {
        self.chunks.iter().map(|c| c.len).sum()
    }

    pub fn is_flushing(&self) -> bool {
        self.flushing
    }

    /// How many cached batches needed a copy to carry their base offset: appended from a
    /// shared buffer (see [`Self::append_validated`]) and then served from the cache. Every
    /// other batch costs one copy only, the one into the write chunks.
    pub fn cache_copied_batches(&self) -> u64 {
        self.cache_copied_batches.get()
    }

    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// Asserts the log's offset invariant, `log_start <= durable_offset <= written_offset <=
    /// next_offset`, and that the active segment never claims more written than appended bytes.
    /// Called after every change of these offsets (append, finish_flush, retention, recovery).
    fn check_offsets(&self) {
        let start = self.log_start();
        assert!(
            start <= self.durable_offset,
            "log start {start} beyond durable offset {}",
            self.durable_offset
        );
        assert!(
            self.durable_offset <= self.written_offset,
            "durable offset {} beyond written offset {}",
            self.durable_offset,
            self.written_offset
        );
        assert!(
            self.written_offset <= self.next_offset,
            "written offset {} beyond next offset {}",
            self.written_offset,
            self.next_offset
        );
        if let Some(seg) = self.segments.values().next_back() {
            assert!(
                seg.written_pos <= seg.end_pos,
                "segment {} written to {} but appended only to {}",
                seg.base_offset,
                seg.written_pos,
                seg.end_pos
            );
            assert!(
                seg.next_offset == self.next_offset,
                "active segment ends at offset {}, the log at {}",
                seg.next_offset,
                self.next_offset
            );
        }
    }
}
