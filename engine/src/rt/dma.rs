//! [`Storage`] on glommio DMA files: O_DIRECT through io_uring. Segment files are opened
//! read-write (a write-only open trips glommio's iopoll probe, ../shared/CRATES.md §1 risk 4).

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
        let n = self.0.write_rc_at(buf, pos).await?;
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
        glommio::allocate_dma_buffer(len)
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
