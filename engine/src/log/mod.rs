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

pub mod index;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytes::{Bytes, BytesMut};

use crate::batch::{self, BatchHeader, HEADER_BYTES};
use crate::error::{Error, Result};
use crate::storage::{BLOCK_BYTES, IoBuf, LogFile, Storage, align_down, align_up};
use crate::util::join_all;
use index::{Checkpoint, IndexEntry, IndexKind};

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
const CHUNK_BYTES_MIN: usize = 64 << 10;
/// Chunk writes of one flush in flight at once.
const WRITES_IN_FLIGHT_MAX: usize = 32;
/// Disk reads are issued in windows of at least this.
const READ_WINDOW_BYTES: usize = 256 << 10;

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 256 << 20,
            segment_ms: 7 * 24 * 3600 * 1000,
            index_interval_bytes: 4096,
            write_chunk_bytes: 1 << 20,
            checkpoint_interval_bytes: 64 << 20,
            retention_bytes: None,
            retention_ms: None,
            cache_bytes: 4 << 20,
            encryption: None,
            preallocate_bytes: 256 << 10,
        }
    }
}

impl LogConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::InvalidArgument(m.to_string()));
        if self.segment_bytes < 64 << 10 || self.segment_bytes > SEGMENT_BYTES_MAX {
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
            || self.preallocate_bytes > 64 << 20
        {
            return bad("preallocate_bytes must be a multiple of 4 KiB, at most 64 MiB");
        }
        Ok(())
    }
}

pub fn segment_file_name(base: u64) -> String {
    format!("{base:020}.log")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".log")?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

struct Segment<F> {
    base_offset: u64,
    file: Option<Rc<F>>,
    path: PathBuf,
    /// Bytes appended, including those still in chunks.
    end_pos: u64,
    written_pos: u64,
    /// Offset after the last appended batch of this segment.
    next_offset: u64,
    entries: Vec<IndexEntry>,
    bytes_since_index: u64,
    max_timestamp_us: i64,
    created_ms: i64,
    /// Bytes of the partial last block of data already taken by a flush (carried forward).
    tail: Vec<u8>,
    /// `data_bytes` of the newest index checkpoint on disk.
    checkpoint_pos: u64,
    sealed: bool,
    index_final: bool,
    /// File bytes from 0 that are written (data or preallocated zeros): writes below need no
    /// change of the file's size.
    zeroed_to: u64,
}

impl<F> Segment<F> {
    fn new(dir: &Path, base: u64, now_ms: i64) -> Self {
        Segment {
            base_offset: base,
            file: None,
            path: dir.join(segment_file_name(base)),
            end_pos: 0,
            written_pos: 0,
            next_offset: base,
            entries: Vec::new(),
            bytes_since_index: 0,
            max_timestamp_us: i64::MIN,
            created_ms: now_ms,
            tail: Vec::new(),
            checkpoint_pos: 0,
            sealed: false,
            index_final: false,
            zeroed_to: 0,
        }
    }

    fn checkpoint(&self, data_bytes: u64, next_offset: u64) -> Checkpoint {
        Checkpoint {
            segment_base: self.base_offset,
            data_bytes,
            next_offset,
            max_timestamp_us: self.max_timestamp_us,
            entries: self
                .entries
                .iter()
                .copied()
                .filter(|e| u64::from(e.position) < data_bytes)
                .collect(),
        }
    }
}

struct Chunk<B> {
    segment_base: u64,
    /// File position of `buf[0]` (block-aligned).
    pos: u64,
    buf: B,
    /// Bytes of data in `buf`.
    len: usize,
}

/// A batch cached in memory (visible once below the high watermark).
#[derive(Clone)]
struct CachedBatch {
    base_offset: u64,
    next_offset: u64,
    bytes: Bytes,
}

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

/// One block-aligned write of a flush: (segment base, its file if it exists before the flush,
/// buffer, position).
type BlockWrite<S> = (
    u64,
    Option<Rc<<S as Storage>::File>>,
    Rc<<<S as Storage>::File as LogFile>::Buf>,
    u64,
);

/// I/O of one group commit, detached from the log.
pub struct FlushJob<S: Storage> {
    storage: S,
    dir: PathBuf,
    creates: Vec<(u64, PathBuf)>,
    writes: Vec<BlockWrite<S>>,
    sync_files: Vec<(u64, Option<Rc<S::File>>)>,
    /// Index files to write after the sync: (segment base, checkpoint, final).
    checkpoints: Vec<(u64, Checkpoint, bool)>,
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

    pub async fn run(self) -> FlushDone<S> {
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
        let started = std::time::Instant::now();
        let fail = |done: &mut FlushDone<S>, path: &Path, e: io::Error| {
            done.error_path = path.display().to_string();
            done.result = Err(e);
        };
        // Order matters for power loss across a roll: the sealed segment's data must be durable
        // before the next segment's name is, or recovery would find a sealed segment with a
        // torn tail (indistinguishable from corruption). So: write and sync the existing
        // files first, then create the new ones, write them, sync the directory and them.
        let (old_writes, new_writes): (Vec<_>, Vec<_>) =
            self.writes.into_iter().partition(|w| w.1.is_some());
        // Writes go out concurrently, at most WRITES_IN_FLIGHT_MAX at a time: a bounded
        // io_uring footprint (glommio also counts a source's wakers in an i16, which a few
        // hundred concurrently re-polled writes overflow).
        type Ready<S> = (
            u64,
            Rc<<S as Storage>::File>,
            Rc<<<S as Storage>::File as LogFile>::Buf>,
            u64,
        );
        let write_all = |writes: Vec<Ready<S>>| async move {
            let mut results = Vec::with_capacity(writes.len());
            let mut it = writes.into_iter().peekable();
            while it.peek().is_some() {
                let group: Vec<_> = it
                    .by_ref()
                    .take(WRITES_IN_FLIGHT_MAX)
                    .map(|(_, f, buf, pos)| async move { f.write_at(buf, pos).await })
                    .collect();
                results.extend(join_all(group).await);
            }
            results
        };
        let old: Vec<_> = old_writes
            .into_iter()
            .filter_map(|(b, f, buf, pos)| f.map(|f| (b, f, buf, pos)))
            .collect();
        if let Some(e) = write_all(old).await.into_iter().find_map(Result::err) {
            fail(&mut done, &self.dir, e);
            return done;
        }
        let mut synced_first: Vec<u64> = Vec::new();
        if !self.creates.is_empty() {
            let sync_started = std::time::Instant::now();
            let existing: Vec<(u64, Rc<S::File>)> = self
                .sync_files
                .iter()
                .filter_map(|(b, f)| f.clone().map(|f| (*b, f)))
                .collect();
            let results = join_all(existing.iter().map(|(_, f)| f.sync()).collect()).await;
            if let Some(e) = results.into_iter().find_map(Result::err) {
                fail(&mut done, &self.dir, e);
                return done;
            }
            synced_first = existing.iter().map(|(b, _)| *b).collect();
            done.timings.sync += sync_started.elapsed();
        }
        for (base, path) in &self.creates {
            match self.storage.open(path).await {
                Ok(f) => done.created.push((*base, Rc::new(f))),
                Err(e) => {
                    fail(&mut done, path, e);
                    return done;
                }
            }
        }
        let file_of = |base: u64, f: &Option<Rc<S::File>>| -> Option<Rc<S::File>> {
            f.clone().or_else(|| {
                done.created
                    .iter()
                    .find(|(b, _)| *b == base)
                    .map(|x| x.1.clone())
            })
        };
        let mut new = Vec::new();
        for (base, f, buf, pos) in new_writes {
            let Some(f) = file_of(base, &f) else {
                done.result = Err(io::Error::other("segment file missing"));
                return done;
            };
            new.push((base, f, buf, pos));
        }
        if let Some(e) = write_all(new).await.into_iter().find_map(Result::err) {
            fail(&mut done, &self.dir, e);
            return done;
        }
        if !self.creates.is_empty()
            && let Err(e) = self.storage.sync_dir(&self.dir).await
        {
            fail(&mut done, &self.dir, e);
            return done;
        }
        let sync_started = std::time::Instant::now();
        done.timings.write = (sync_started - started).saturating_sub(done.timings.sync);
        if self.sync {
            let files: Vec<Rc<S::File>> = self
                .sync_files
                .iter()
                .filter(|(b, _)| !synced_first.contains(b))
                .filter_map(|(b, f)| file_of(*b, f))
                .collect();
            for r in join_all(files.iter().map(|f| f.sync()).collect()).await {
                if let Err(e) = r {
                    let p = self.dir.clone();
                    fail(&mut done, &p, e);
                    return done;
                }
            }
            done.synced = true;
            done.timings.sync += sync_started.elapsed();
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
}

fn index_path(dir: &Path, base: u64, ext: &str) -> PathBuf {
    dir.join(format!("{base:020}.{ext}"))
}

pub(crate) async fn write_whole_file<S: Storage>(
    storage: &S,
    path: &Path,
    bytes: &[u8],
) -> io::Result<()> {
    let f = storage.open(path).await?;
    let len = (align_up(bytes.len() as u64) as usize).max(BLOCK_BYTES);
    let mut buf = S::alloc_buf(len);
    buf.as_bytes_mut()[..bytes.len()].copy_from_slice(bytes);
    buf.as_bytes_mut()[bytes.len()..].fill(0);
    f.truncate(0).await?;
    f.write_at(Rc::new(buf), 0).await?;
    f.sync().await
}

/// Writes `.idx` and `.tix` atomically: temp file, fdatasync, rename (directory synced later or
/// not at all: a lost rename only costs a rebuild).
async fn write_index_files<S: Storage>(
    storage: &S,
    dir: &Path,
    base: u64,
    cp: &Checkpoint,
) -> io::Result<()> {
    for (kind, ext) in [(IndexKind::Offset, "idx"), (IndexKind::Time, "tix")] {
        let tmp = index_path(dir, base, &format!("{ext}.tmp"));
        write_whole_file(storage, &tmp, &index::encode(kind, cp)).await?;
        storage.rename(&tmp, &index_path(dir, base, ext)).await?;
    }
    Ok(())
}

async fn read_whole<F: LogFile>(f: &F) -> io::Result<Vec<u8>> {
    let size = f.size().await?;
    let r = f.read_at(0, align_up(size) as usize).await?;
    Ok(r[..(size as usize).min(r.len())].to_vec())
}

async fn load_checkpoint<S: Storage>(
    storage: &S,
    dir: &Path,
    base: u64,
    names: &[String],
) -> Option<Checkpoint> {
    let mut parts = Vec::new();
    for (kind, ext) in [(IndexKind::Offset, "idx"), (IndexKind::Time, "tix")] {
        let path = index_path(dir, base, ext);
        let file_name = format!("{base:020}.{ext}");
        if !names.contains(&file_name) {
            return None;
        }
        let f = storage.open(&path).await.ok()?;
        let bytes = read_whole(&f).await.ok()?;
        parts.push(index::decode(kind, &bytes, base)?);
    }
    let times = parts.pop()?;
    let offsets = parts.pop()?;
    index::merge(offsets, times)
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

/// Reads batches from `start_pos` while they are whole, CRC-valid and contiguous in offsets.
/// Whether `[from, to)` of the file holds only zero bytes (preallocated space past the data).
/// Bounded: a region larger than [`PREALLOCATED_SCAN_MAX`] is not preallocation.
async fn only_zeros<F: LogFile>(file: &F, from: u64, to: u64) -> io::Result<bool> {
    if to.saturating_sub(from) > PREALLOCATED_SCAN_MAX {
        return Ok(false);
    }
    let mut pos = from;
    while pos < to {
        let len = (to - pos).min(4 << 20) as usize;
        let r = file.read_at(pos, align_up(len as u64) as usize).await?;
        let n = len.min(r.len());
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

/// Largest zero region after the data that recovery keeps as preallocated space.
const PREALLOCATED_SCAN_MAX: u64 = 64 << 20;

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
                .all(|ext| !names.iter().any(|n| *n == format!("{b:020}.{ext}")))
        })
}

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
            let len = align_up((file_size - window_pos).min(4 << 20)) as usize;
            window = file.read_at(window_pos, len).await?.to_vec();
        }
        let at = (pos - window_pos) as usize;
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
            let want = align_up(pos + len - window_pos).max(4 << 20);
            let len = want.min(align_up(file_size - window_pos)) as usize;
            window = file.read_at(window_pos, len).await?.to_vec();
        }
        let at = (pos - window_pos) as usize;
        let bytes = &window[at..at + len as usize];
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
            s.entries.push(IndexEntry {
                rel_offset: (h.base_offset - from.segment_base) as u32,
                position: pos as u32,
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
            let win = self
                .file
                .read_at(wpos, len as usize)
                .await
                .map_err(|e| Error::io(self.path.display(), e))?;
            let limit = (wpos + win.len() as u64).min(self.end_pos);
            let (mut cursor, mut first, mut last) = (pos, None, pos);
            let mut stop = false;
            while cursor + HEADER_BYTES as u64 <= limit {
                let at = (cursor - wpos) as usize;
                let h =
                    BatchHeader::parse(&win[at..]).map_err(|e| self.corrupt(cursor, e.into()))?;
                let blen = u64::from(h.batch_length);
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
                batch::check_crc(&win[at..at + blen as usize])
                    .map_err(|e| self.corrupt(cursor, e.into()))?;
                expect = h.next_offset();
                if h.next_offset() > self.offset {
                    if out.bytes > 0 && out.bytes + blen as usize > self.max_bytes {
                        stop = true;
                        break;
                    }
                    first.get_or_insert(cursor);
                    last = cursor + blen;
                    out.records += h.record_count as usize;
                    out.bytes += blen as usize;
                }
                cursor += blen;
                if out.records >= self.max_records {
                    stop = true;
                    break;
                }
            }
            if let Some(first) = first {
                let (a, b) = ((first - wpos) as usize, (last - wpos) as usize);
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
                let at = (pos - wpos) as usize;
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
    cache: VecDeque<CachedBatch>,
    cache_bytes: usize,
    /// Set for encrypted topics: batches are sealed in `append`, after offsets are assigned.
    sealer: Option<crate::crypto::Sealer>,
    pub recovery: RecoveryReport,
}

impl<S: Storage> PartitionLog<S> {
    /// Opens (recovering) or creates the log in `dir`.
    pub async fn open(storage: S, dir: &Path, cfg: LogConfig, now_ms: i64) -> Result<Self> {
        cfg.validate()?;
        let err = |e| Error::io(dir.display(), e);
        storage.create_dir_all(dir).map_err(err)?;
        let names = storage.list(dir).map_err(err)?;
        for n in names.iter().filter(|n| n.ends_with(".tmp")) {
            storage.remove(&dir.join(n)).await.map_err(err)?;
        }
        let bases: Vec<u64> = names.iter().filter_map(|n| parse_segment_name(n)).collect();
        let sealer = match &cfg.encryption {
            Some(spec) => Some(crate::crypto::Sealer::new(spec.clone())?),
            None => None,
        };
        let mut log = PartitionLog {
            storage: storage.clone(),
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
            cache: VecDeque::new(),
            cache_bytes: 0,
            recovery: RecoveryReport::default(),
        };
        if bases.is_empty() {
            let mut seg = Segment::new(dir, 0, now_ms);
            let f = storage.open(&seg.path).await.map_err(err)?;
            storage.sync_dir(dir).await.map_err(err)?;
            seg.file = Some(Rc::new(f));
            log.segments.insert(0, seg);
            return Ok(log);
        }
        // Segments `bases[..keep]` make up the log; a crash in the middle of a roll can leave
        // the ones after it holding nothing acknowledged (see `crashed_mid_roll`).
        let mut keep = bases.len();
        let mut i = 0;
        while i < keep {
            let base = bases[i];
            let next_base = bases[..keep].get(i + 1).copied();
            let torn = match log.recover_segment(base, next_base, now_ms, &names).await? {
                Recovered::Sealed(reason) => Some((i, reason)),
                Recovered::Segment(seg) => {
                    let gap = match log.segments.values_mut().next_back() {
                        Some(prev) if prev.next_offset != base => Some(prev.next_offset),
                        Some(prev) => {
                            prev.sealed = true;
                            prev.index_final = true;
                            None
                        }
                        None => None,
                    };
                    match gap {
                        None => {
                            log.segments.insert(base, seg);
                            None
                        }
                        Some(prev_end) => {
                            let reason = format!(
                                "segment starts at {base} but the previous one ends at {prev_end}"
                            );
                            if prev_end > base {
                                return Err(Error::CorruptLog {
                                    path: seg.path.display().to_string(),
                                    reason,
                                });
                            }
                            Some((i - 1, reason))
                        }
                    }
                }
            };
            let Some((last, reason)) = torn else {
                i += 1;
                continue;
            };
            if !crashed_mid_roll(&bases[last + 1..keep], &names) {
                return Err(Error::CorruptLog {
                    path: dir
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
            log.recovery.truncation_reason = Some(reason);
            log.segments.remove(&bases[last]);
            keep = last + 1;
            i = last;
        }
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
        // Sealed segments with a lost or stale index: write it now so the next start is fast.
        let last = log.segments.keys().next_back().copied();
        for seg in log.segments.values_mut() {
            if Some(seg.base_offset) != last && seg.checkpoint_pos != seg.end_pos {
                let cp = seg.checkpoint(seg.end_pos, seg.next_offset);
                if write_index_files(&storage, dir, seg.base_offset, &cp)
                    .await
                    .is_ok()
                {
                    seg.checkpoint_pos = seg.end_pos;
                }
            }
        }
        let next = log
            .segments
            .values()
            .next_back()
            .map_or(0, |s| s.next_offset);
        log.next_offset = next;
        log.written_offset = next;
        log.durable_offset = next;
        log.recovery.segments = log.segments.len();
        Ok(log)
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
        // Zero padding up to the end of the last block is what every flush leaves (and the
        // next flush rewrites that block), and zeros beyond are preallocated space; anything
        // else past the data is a torn tail, cut off durably so that stale bytes can never line
        // up with future offsets.
        let mut zeroed_to = size;
        if active
            && (scan.stopped.is_some()
                || (size > align_up(scan.end_pos)
                    && !only_zeros(&file, align_up(scan.end_pos), size)
                        .await
                        .map_err(err)?))
        {
            self.recovery.truncated_bytes += size.saturating_sub(scan.end_pos);
            file.truncate(scan.end_pos).await.map_err(err)?;
            file.sync().await.map_err(err)?;
            zeroed_to = scan.end_pos;
        }
        if !had_cp || (!active && !final_cp) {
            self.recovery.rebuilt_indexes += 1;
        }
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
        let partial = (scan.end_pos % BLOCK_BYTES as u64) as usize;
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

    /// Appends one batch (already validated on ingress) and assigns its offsets. The bytes are
    /// kept for the cache; the caller decides when to flush.
    pub fn append(&mut self, batch: Bytes, now_ms: i64) -> Result<Appended> {
        if let Some(reason) = &self.failed {
            if self.failed_disk_full {
                return Err(Error::DiskFull {
                    path: self.dir.display().to_string(),
                });
            }
            return Err(Error::PartitionFailed {
                topic: self.dir.display().to_string(),
                partition: 0,
                reason: reason.clone(),
            });
        }
        let h = BatchHeader::parse(&batch)?;
        if batch.len() != h.batch_length as usize {
            return Err(Error::CorruptBatch(format!(
                "{} bytes for a batch of {}",
                batch.len(),
                h.batch_length
            )));
        }
        // Encrypted topics: seal now that the base offset is known (it is the nonce).
        let batch = match &mut self.sealer {
            Some(s) => s.seal(&batch, self.next_offset)?,
            None => batch,
        };
        let len = batch.len();
        // A batch larger than the segment size gets a segment of its own (positions are u32,
        // so only the hard segment limit applies). The queue ack log relies on this: its
        // snapshot is one batch and can outgrow its small segments.
        if len as u64 > SEGMENT_BYTES_MAX {
            return Err(Error::BatchTooLarge {
                bytes: len,
                max: SEGMENT_BYTES_MAX as usize,
            });
        }
        self.maybe_roll(len as u64, now_ms);
        let base = self.next_offset;
        let mut bm = BytesMut::from(batch);
        batch::set_base_offset(&mut bm, base);
        let bytes = bm.freeze();
        let seg_base = *self.segments.keys().next_back().unwrap_or(&0);
        let seg = self
            .segments
            .get_mut(&seg_base)
            .ok_or_else(|| Error::Runtime("no segment".into()))?;
        let pos = seg.end_pos;
        if seg.entries.is_empty() || seg.bytes_since_index >= self.cfg.index_interval_bytes {
            seg.entries.push(IndexEntry {
                rel_offset: (base - seg.base_offset) as u32,
                position: pos as u32,
                max_timestamp_before_us: seg.max_timestamp_us,
            });
            seg.bytes_since_index = 0;
        }
        seg.bytes_since_index += len as u64;
        seg.max_timestamp_us = seg.max_timestamp_us.max(h.max_timestamp_us);
        seg.next_offset = base + u64::from(h.record_count);
        self.copy_into_chunks(seg_base, &bytes);
        if let Some(seg) = self.segments.get_mut(&seg_base) {
            seg.end_pos += len as u64;
        }
        self.next_offset = base + u64::from(h.record_count);
        self.cache.push_back(CachedBatch {
            base_offset: base,
            next_offset: self.next_offset,
            bytes,
        });
        self.cache_bytes += len;
        self.trim_cache(self.cfg.cache_bytes);
        Ok(Appended {
            base_offset: base,
            last_offset: self.next_offset - 1,
            batch_bytes: len,
        })
    }

    fn maybe_roll(&mut self, len: u64, now_ms: i64) {
        let Some(active) = self.segments.values_mut().next_back() else {
            return;
        };
        let full = active.end_pos + len > self.cfg.segment_bytes;
        let old = now_ms.saturating_sub(active.created_ms) >= self.cfg.segment_ms as i64;
        if active.end_pos > 0 && (full || old) {
            self.roll(now_ms);
        }
    }

    fn roll(&mut self, now_ms: i64) {
        if let Some(active) = self.segments.values_mut().next_back() {
            active.sealed = true;
        }
        let seg = Segment::new(&self.dir, self.next_offset, now_ms);
        self.segments.insert(self.next_offset, seg);
    }

    fn copy_into_chunks(&mut self, seg_base: u64, mut src: &[u8]) {
        let Some(seg) = self.segments.get(&seg_base) else {
            return;
        };
        let mut cursor = seg.end_pos;
        let chunk_max = self.cfg.write_chunk_bytes;
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
                // A chunk continuing a full one starts block-aligned; a first chunk carries the
                // partial tail block that earlier flushes already wrote, and rewrites it.
                let carried: &[u8] = if continues { &[] } else { &seg.tail };
                let pos = align_down(cursor);
                debug_assert_eq!(pos + carried.len() as u64, cursor, "tail out of step");
                let want = align_up((carried.len() + src.len()) as u64) as usize;
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
            src = &src[n..];
        }
    }

    /// Takes everything appended so far into a flush job. `sync` asks for fdatasync (durable
    /// acks waiting, or the periodic sync is due). Returns `None` if there is nothing to do or a
    /// flush is already running.
    pub fn take_flush(&mut self, sync: bool) -> Option<FlushJob<S>> {
        if self.flushing || self.failed.is_some() {
            return None;
        }
        let need_sync = sync && self.durable_offset < self.next_offset;
        if self.chunks.is_empty() && !need_sync {
            return None;
        }
        let chunks = std::mem::take(&mut self.chunks);
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
            let partial = (end % BLOCK_BYTES as u64) as usize;
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
            let wlen = align_up(c.len as u64) as usize;
            buf.as_bytes_mut()[c.len..wlen].fill(0);
            buf.set_len(wlen);
            writes.push((c.segment_base, seg.file.clone(), Rc::new(buf), c.pos));
        }
        self.preallocate(&mut writes, &written_positions);
        let mut sync_files = Vec::new();
        let mut checkpoints = Vec::new();
        let do_sync = sync || self.segments.values().any(|s| s.sealed && !s.index_final);
        if do_sync {
            for b in &self.unsynced_segments {
                if let Some(seg) = self.segments.get(b) {
                    sync_files.push((*b, seg.file.clone()));
                }
            }
            let upto = self.next_offset;
            for seg in self.segments.values() {
                let end = written_positions
                    .iter()
                    .find(|(b, _)| *b == seg.base_offset)
                    .map_or(seg.written_pos, |w| w.1);
                if seg.sealed && !seg.index_final && end == seg.end_pos {
                    checkpoints.push((seg.base_offset, seg.checkpoint(end, seg.next_offset), true));
                } else if !seg.sealed
                    && end >= seg.checkpoint_pos + self.cfg.checkpoint_interval_bytes
                    && seg.next_offset == upto
                {
                    checkpoints.push((
                        seg.base_offset,
                        seg.checkpoint(end, seg.next_offset),
                        false,
                    ));
                }
            }
        }
        self.flushing = true;
        Some(FlushJob {
            storage: self.storage.clone(),
            dir: self.dir.clone(),
            creates,
            writes,
            sync_files,
            checkpoints,
            sync: do_sync,
            upto_offset: self.next_offset,
            written_positions,
        })
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
        let len = (to - from) as usize;
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
        self.flushing = false;
        for (base, f) in done.created {
            if let Some(seg) = self.segments.get_mut(&base) {
                seg.file = Some(f);
            }
        }
        if let Err(e) = done.result {
            let err = Error::io(&done.error_path, e);
            self.failed = Some(err.to_string());
            self.failed_disk_full = matches!(err, Error::DiskFull { .. });
            self.chunks.clear();
            return Err(err);
        }
        for (base, pos) in &done.written_positions {
            if let Some(seg) = self.segments.get_mut(base) {
                seg.written_pos = seg.written_pos.max(*pos);
            }
        }
        self.written_offset = self.written_offset.max(done.upto_offset);
        if done.synced {
            self.durable_offset = self.durable_offset.max(done.upto_offset);
            // Every segment written since the last sync was in this job's sync set.
            self.unsynced_segments.clear();
        }
        for (base, data_bytes, fin) in done.checkpoints {
            if let Some(seg) = self.segments.get_mut(&base) {
                seg.checkpoint_pos = data_bytes;
                seg.index_final |= fin;
            }
        }
        Ok(self.watermarks())
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

    fn trim_cache(&mut self, max_bytes: usize) {
        while self.cache_bytes > max_bytes && self.cache.len() > 1 {
            if let Some(b) = self.cache.pop_front() {
                self.cache_bytes -= b.bytes.len();
            }
        }
    }

    /// Drops cached batches (shard-wide memory pressure).
    pub fn evict_cache(&mut self, keep_bytes: usize) -> usize {
        let before = self.cache_bytes;
        while self.cache_bytes > keep_bytes {
            match self.cache.pop_front() {
                Some(b) => self.cache_bytes -= b.bytes.len(),
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
        let start = self.log_start();
        if offset < start || offset > hw {
            return Err(Error::OffsetOutOfRange {
                offset,
                log_start: start,
                log_end: hw,
            });
        }
        if offset == hw {
            return Ok(ReadPlan::Ready(ReadResult::default()));
        }
        let max_records = max_records.max(1);
        if let Some(front) = self.cache.front()
            && front.base_offset <= offset
        {
            let i = self.cache.partition_point(|b| b.next_offset <= offset);
            let mut out = ReadResult::default();
            for b in self.cache.iter().skip(i) {
                if b.base_offset >= hw
                    || out.records >= max_records
                    || (out.bytes > 0 && out.bytes + b.bytes.len() > max_bytes)
                {
                    break;
                }
                out.records += (b.next_offset - b.base_offset) as usize;
                out.bytes += b.bytes.len();
                out.chunks.push(b.bytes.clone());
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
        let rel = (offset - seg.base_offset) as u32;
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
            upto_offset: hw,
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

    /// Segments (base offset, bytes, max timestamp) that retention would delete now.
    fn expired_segments(&self, now_ms: i64) -> Vec<u64> {
        let mut out = Vec::new();
        let total: u64 = self.size_bytes();
        let mut remaining = total;
        for seg in self.segments.values() {
            if !seg.sealed || !seg.index_final || seg.written_pos != seg.end_pos {
                break;
            }
            let by_bytes = self
                .cfg
                .retention_bytes
                .is_some_and(|max| remaining - seg.end_pos >= max);
            let by_age = self.cfg.retention_ms.is_some_and(|ms| {
                seg.max_timestamp_us != i64::MIN && seg.max_timestamp_us / 1000 < now_ms - ms as i64
            });
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
            && self.cfg.retention_ms.is_some_and(|ms| {
                seg.max_timestamp_us != i64::MIN && seg.max_timestamp_us / 1000 < now_ms - ms as i64
            })
    }

    /// Rolls an expired active segment (creating the new empty segment file right away, so the
    /// log's next offset survives a restart even when every older segment is deleted).
    pub async fn roll_for_retention(log: &std::cell::RefCell<Self>, now_ms: i64) -> Result<()> {
        let (storage, dir, path, base, rolled) = {
            let mut l = log.borrow_mut();
            if !l.active_expired(now_ms) || l.flushing || !l.chunks.is_empty() {
                return Ok(());
            }
            // All its data is written (`active_expired`), so its final index can be made here.
            let rolled = l.segments.values().next_back().map(|s| {
                let cp = s.checkpoint(s.end_pos, s.next_offset);
                (s.base_offset, s.file.clone(), cp)
            });
            l.roll(now_ms);
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
        let f = storage.open(&path).await.map_err(err)?;
        storage.sync_dir(&dir).await.map_err(err)?;
        if let Some(seg) = log.borrow_mut().segments.get_mut(&base) {
            seg.file = Some(Rc::new(f));
        }
        // Finish the rolled segment as a flush would (sync, then its final index): retention
        // deletes only segments with a final index, and an idle partition has no next flush.
        if let Some((rolled_base, Some(file), cp)) = rolled {
            file.sync().await.map_err(|e| Error::io(dir.display(), e))?;
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
                self.cache_bytes -= b.bytes.len();
            }
        }
        files
    }

    pub fn storage(&self) -> &S {
        &self.storage
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

/// Deletes files (retention, topic deletion) and syncs the directory.
pub async fn remove_files<S: Storage>(storage: &S, dir: &Path, files: &[PathBuf]) -> Result<()> {
    for f in files {
        match storage.remove(f).await {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(f.display(), e)),
        }
    }
    storage
        .sync_dir(dir)
        .await
        .map_err(|e| Error::io(dir.display(), e))
}

/// In fetched batches, the first record with timestamp `>= timestamp_us`, if any.
pub fn first_at_or_after(chunks: &[Bytes], timestamp_us: i64) -> Result<Option<u64>> {
    for chunk in chunks {
        for b in batch::split_batches(chunk)? {
            let h = BatchHeader::parse(b)?;
            if h.max_timestamp_us < timestamp_us {
                continue;
            }
            if h.flags & batch::flags::ENCRYPTED != 0 {
                return Ok(Some(h.base_offset));
            }
            // The delta is a wrap-around difference (see `BatchBuilder::build`): a batch spanning
            // the whole i64 range is valid, and only a wrapping add gives its timestamps back.
            let found = batch::with_records(b, &h, |rs| -> Result<_> {
                Ok(rs.iter().position(|r| {
                    let delta = r.timestamp_delta_us.to_native() as i64;
                    h.first_timestamp_us.wrapping_add(delta) >= timestamp_us
                }))
            })?;
            return Ok(Some(h.base_offset + found.unwrap_or(0) as u64));
        }
    }
    Ok(None)
}
