//! Segments and their files: the in-memory state of one segment, the write chunks appended
//! batches are copied into, file names, and the index-file I/O (docs/storage.md, "Segments").

use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use super::config::{SEGMENT_BYTES_MAX, SEGMENT_RELATIVE_OFFSET_MAX};
use super::index::{self, Checkpoint, IndexEntry, IndexKind};
use crate::error::{Error, Result};
use crate::storage::{BLOCK_BYTES, IoBuf, LogFile, Storage, align_up};

/// Digits of the zero-padded base offset in segment and index file names.
const FILE_NAME_DIGITS: usize = 20;

pub fn segment_file_name(base: u64) -> String {
    format!("{base:020}.log")
}

pub(super) fn parse_segment_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".log")?;
    if stem.len() != FILE_NAME_DIGITS || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

pub(super) struct Segment<F> {
    pub(super) base_offset: u64,
    pub(super) file: Option<Rc<F>>,
    pub(super) path: PathBuf,
    /// Bytes appended, including those still in chunks.
    pub(super) end_pos: u64,
    pub(super) written_pos: u64,
    /// Offset after the last appended batch of this segment.
    pub(super) next_offset: u64,
    pub(super) entries: Vec<IndexEntry>,
    pub(super) bytes_since_index: u64,
    pub(super) max_timestamp_us: i64,
    pub(super) created_ms: i64,
    /// Bytes of the partial last block of data already taken by a flush (carried forward).
    pub(super) tail: Vec<u8>,
    /// `data_bytes` of the newest index checkpoint on disk.
    pub(super) checkpoint_pos: u64,
    pub(super) sealed: bool,
    pub(super) index_final: bool,
    /// File bytes from 0 that are written (data or preallocated zeros): writes below need no
    /// change of the file's size.
    pub(super) zeroed_to: u64,
}

impl<F> Segment<F> {
    pub(super) fn new(dir: &Path, base: u64, now_ms: i64) -> Self {
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

    pub(super) fn checkpoint(&self, data_bytes: u64, next_offset: u64) -> Checkpoint {
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

/// A block-aligned buffer that appended batches are copied into until a flush takes it.
pub(super) struct Chunk<B> {
    pub(super) segment_base: u64,
    /// File position of `buf[0]` (block-aligned).
    pub(super) pos: u64,
    pub(super) buf: B,
    /// Bytes of data in `buf`.
    pub(super) len: usize,
}

/// `{base:020}.{ext}`: the name of one of a segment's index files.
pub(super) fn index_file_name(base: u64, ext: &str) -> String {
    format!("{base:020}.{ext}")
}

pub(super) fn index_path(dir: &Path, base: u64, ext: &str) -> PathBuf {
    dir.join(index_file_name(base, ext))
}

pub(crate) async fn write_whole_file<S: Storage>(
    storage: &S,
    path: &Path,
    bytes: &[u8],
) -> io::Result<()> {
    let f = storage.open(path).await?;
    let len = align_up_usize(bytes.len()).max(BLOCK_BYTES);
    let mut buf = S::alloc_buf(len);
    buf.as_bytes_mut()[..bytes.len()].copy_from_slice(bytes);
    buf.as_bytes_mut()[bytes.len()..].fill(0);
    f.truncate(0).await?;
    f.write_at(Rc::new(buf), 0).await?;
    f.sync().await
}

/// Writes `.idx` and `.tix` atomically: temp file, fdatasync, rename (directory synced later or
/// not at all: a lost rename only costs a rebuild).
pub(super) async fn write_index_files<S: Storage>(
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
    let len = usize::try_from(align_up(size))
        .map_err(|_| io::Error::other(format!("file of {size} bytes does not fit memory")))?;
    let r = f.read_at(0, len).await?;
    let end = usize::try_from(size).map_or(r.len(), |size| size.min(r.len()));
    Ok(r[..end].to_vec())
}

pub(super) async fn load_checkpoint<S: Storage>(
    storage: &S,
    dir: &Path,
    base: u64,
    names: &[String],
) -> Option<Checkpoint> {
    let mut parts = Vec::new();
    for (kind, ext) in [(IndexKind::Offset, "idx"), (IndexKind::Time, "tix")] {
        let path = index_path(dir, base, ext);
        let file_name = index_file_name(base, ext);
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

/// [`align_up`] for in-memory lengths.
pub(super) fn align_up_usize(n: usize) -> usize {
    n.next_multiple_of(BLOCK_BYTES)
}

/// The index position of a batch starting at byte `pos` of its segment.
///
/// In range by construction: an append starts a new segment before the active one would pass
/// `segment_bytes` (at most [`SEGMENT_BYTES_MAX`] = 2 GiB), so a batch's position is below 2 GiB.
pub(super) fn index_position(pos: u64) -> u32 {
    assert!(
        pos < SEGMENT_BYTES_MAX,
        "batch position {pos} at or beyond the segment limit {SEGMENT_BYTES_MAX}"
    );
    match u32::try_from(pos) {
        Ok(pos) => pos,
        Err(_) => unreachable!("SEGMENT_BYTES_MAX fits u32"),
    }
}

/// The offset of a batch relative to its segment's base, as stored in the index.
///
/// In range by construction: an append starts a new segment before a batch would end beyond
/// [`SEGMENT_RELATIVE_OFFSET_MAX`] offsets past the segment's base (`PartitionLog::maybe_roll`).
pub(super) fn relative_offset(offset: u64, segment_base: u64) -> u32 {
    assert!(
        offset >= segment_base && offset - segment_base <= SEGMENT_RELATIVE_OFFSET_MAX,
        "offset {offset} not within u32 of its segment base {segment_base}"
    );
    match u32::try_from(offset - segment_base) {
        Ok(rel) => rel,
        Err(_) => unreachable!("checked against SEGMENT_RELATIVE_OFFSET_MAX"),
    }
}

/// Bytes of `pos` past the start of its block (the partial tail block's length).
pub(super) fn block_remainder(pos: u64) -> usize {
    let block_bytes = BLOCK_BYTES as u64;
    match usize::try_from(pos % block_bytes) {
        Ok(n) => n,
        Err(_) => unreachable!("below BLOCK_BYTES"),
    }
}
