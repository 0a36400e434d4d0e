//! [`Storage`] on glommio DMA files: O_DIRECT through io_uring. Segment files are opened
//! read-write (a write-only open trips glommio's iopoll probe, ../shared/CRATES.md §1 risk 4).

use std::cell::RefCell;
use std::io;
use std::path::Path;
use std::rc::Rc;

use glommio::io::{DmaBuffer, DmaFile, OpenOptions, ReadResult};

use crate::storage::{IoBuf, LogFile, Storage};

#[derive(Clone, Copy, Default)]
pub struct DmaStorage;

impl IoBuf for DmaBuffer {
    fn as_bytes(&self) -> &[u8] {
        DmaBuffer::as_bytes(self)
    }
    fn as_bytes_mut(&mut self) -> &mut [u8] {
        DmaBuffer::as_bytes_mut(self)
    }
    fn set_len(&mut self, len: usize) {
        self.trim_to_size(len);
    }
}

/// Whole write chunks kept for reuse per shard thread: a chunk of the registered pool is cheap,
/// but a large flush takes its 1 MiB chunks from the heap, and a fresh heap buffer costs a page
/// fault and the clearing of each of its pages on first touch. A buffer comes back after its
/// write completed if no one else holds it and it was written whole (a trimmed tail chunk has
/// lost its length for good: glommio's `trim_to_size` cannot be undone).
const CHUNK_POOL_BYTES_MAX: usize = 16 << 20;

/// Buffers below this come from glommio's registered pool cheaply enough: not kept.
const CHUNK_POOL_BUFFER_BYTES_MIN: usize = 256 << 10;

thread_local! {
    static CHUNK_POOL: RefCell<ChunkPool> = const {
        RefCell::new(ChunkPool { free: Vec::new(), bytes: 0, reused: 0 })
    };
}

struct ChunkPool {
    free: Vec<DmaBuffer>,
    bytes: usize,
    /// Allocations served from the pool (tests and diagnostics).
    reused: u64,
}

fn pool_take(len: usize) -> Option<DmaBuffer> {
    if len < CHUNK_POOL_BUFFER_BYTES_MIN {
        return None;
    }
    CHUNK_POOL.with(|p| {
        let mut p = p.borrow_mut();
        let i = p.free.iter().rposition(|b| b.len() == len)?;
        let b = p.free.swap_remove(i);
        p.bytes -= len;
        p.reused += 1;
        Some(b)
    })
}

fn pool_give(buf: Rc<DmaBuffer>) {
    let len = buf.len();
    if len < CHUNK_POOL_BUFFER_BYTES_MIN {
        return;
    }
    let Ok(buf) = Rc::try_unwrap(buf) else {
        return;
    };
    CHUNK_POOL.with(|p| {
        let mut p = p.borrow_mut();
        if p.bytes + len <= CHUNK_POOL_BYTES_MAX {
            p.bytes += len;
            p.free.push(buf);
        }
    });
}

/// Chunk allocations this thread served from its pool so far.
#[cfg(test)]
fn chunk_pool_reused() -> u64 {
    CHUNK_POOL.with(|p| p.borrow().reused)
}

pub struct DmaRead(ReadResult);

impl std::ops::Deref for DmaRead {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

pub struct DmaLogFile(DmaFile);

impl LogFile for DmaLogFile {
    type Buf = DmaBuffer;
    type ReadBuf = DmaRead;

    async fn write_at(&self, buf: Rc<DmaBuffer>, pos: u64) -> io::Result<()> {
        crate::storage::crash_points::step("write");
        let len = buf.len();
        let n = self.0.write_rc_at(Rc::clone(&buf), pos).await?;
        // The write is over: the chunk may serve the next flush (pooled buffers are handed out
        // whole and overwritten before use; only the bytes of a write reach the disk).
        pool_give(buf);
        if n != len {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short direct write: {n} of {len} bytes at {pos}"),
            ));
        }
        Ok(())
    }

    async fn read_at(&self, pos: u64, len: usize) -> io::Result<DmaRead> {
        Ok(DmaRead(self.0.read_at_aligned(pos, len).await?))
    }

    async fn sync(&self) -> io::Result<()> {
        crate::storage::crash_points::step("fsync");
        Ok(self.0.fdatasync().await?)
    }

    async fn size(&self) -> io::Result<u64> {
        Ok(self.0.file_size().await?)
    }

    async fn truncate(&self, len: u64) -> io::Result<()> {
        crate::storage::crash_points::step("truncate");
        Ok(self.0.truncate(len).await?)
    }
}

impl Storage for DmaStorage {
    type File = DmaLogFile;

    fn alloc_buf(len: usize) -> DmaBuffer {
        pool_take(len).unwrap_or_else(|| glommio::allocate_dma_buffer(len))
    }

    async fn open(&self, path: &Path) -> io::Result<DmaLogFile> {
        crate::storage::crash_points::step("open/create");
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .dma_open(path)
            .await?;
        Ok(DmaLogFile(f))
    }

    // Unlink and rename run on glommio's blocking-operation thread: a slow directory update
    // never stalls the shard (no blocking std::fs call on a shard thread).
    async fn remove(&self, path: &Path) -> io::Result<()> {
        crate::storage::crash_points::step("unlink");
        Ok(glommio::io::remove(path).await?)
    }

    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        crate::storage::crash_points::step("rename");
        Ok(glommio::io::rename(from, to).await?)
    }

    async fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        crate::storage::crash_points::step("directory fsync");
        let d = glommio::io::Directory::open(dir).await?;
        d.sync().await?;
        Ok(d.close().await?)
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        crate::storage::crash_points::step("mkdir");
        std::fs::create_dir_all(dir)
    }

    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        crate::storage::crash_points::step("rmdir");
        match std::fs::remove_dir_all(dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }

    // glommio has no asynchronous readdir: the listing runs on its blocking-operation thread
    // so that a slow directory never stalls the shard.
    async fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let dir = dir.to_path_buf();
        glommio::executor()
            .spawn_blocking(move || {
                let mut names: Vec<String> = std::fs::read_dir(&dir)?
                    .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
                    .collect();
                names.sort();
                Ok(names)
            })
            .await
    }
}

/// Whether direct I/O with 4 KiB alignment works in `dir` (tmpfs and some stacks refuse it).
pub fn dma_alignment_ok(dir: &Path) -> io::Result<bool> {
    use std::os::unix::fs::OpenOptionsExt;
    let probe = dir.join(".odirect-probe");
    let r = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(&probe);
    let _ = std::fs::remove_file(&probe);
    match r {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// A whole chunk comes back to the pool after its write and serves the next allocation of
    /// its size; a trimmed one (a flush's last, partial chunk) does not; the bytes written are
    /// the ones given, pooled buffer or not.
    #[test]
    fn written_whole_chunks_are_reused_and_trimmed_ones_are_not() {
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        if !dma_alignment_ok(dir.path()).unwrap() {
            eprintln!("skipped: no O_DIRECT in /var/tmp");
            return;
        }
        let path = dir.path().join("f");
        let p = path.clone();
        const LEN: usize = 1 << 20;
        let h = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .spawn(move || async move {
                let f = DmaStorage.open(&p).await.unwrap();
                let reused0 = chunk_pool_reused();
                let mut a = DmaStorage::alloc_buf(LEN);
                a.as_bytes_mut().fill(1);
                f.write_at(Rc::new(a), 0).await.unwrap();
                let mut b = DmaStorage::alloc_buf(LEN);
                assert_eq!(
                    chunk_pool_reused(),
                    reused0 + 1,
                    "the written chunk came back"
                );
                b.as_bytes_mut().fill(2);
                b.set_len(LEN / 2);
                f.write_at(Rc::new(b), LEN as u64).await.unwrap();
                let _c = DmaStorage::alloc_buf(LEN);
                assert_eq!(
                    chunk_pool_reused(),
                    reused0 + 1,
                    "a trimmed chunk is not kept"
                );
                f.0.close().await.unwrap();
            })
            .unwrap();
        h.join().unwrap();
        let r = std::fs::read(&path).unwrap();
        assert_eq!(r.len(), LEN + LEN / 2);
        assert!(r[..LEN].iter().all(|&x| x == 1));
        assert!(r[LEN..].iter().all(|&x| x == 2));
    }
}
