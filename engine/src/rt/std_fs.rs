//! [`StdFs`]: the [`Storage`] trait over blocking `std::fs` calls, with futures that are ready
//! at their first poll. For small control files written from the engine handle's threads (the
//! metadata file, the producer-id mark), never from a shard's executor: there every file goes
//! through [`super::DmaStorage`] on io_uring.
//!
//! Blocks are not required to be aligned here (buffered I/O), but callers keep to the trait's
//! contract so the same code runs on [`crate::storage::CrashStorage`] in tests.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use crate::storage::{IoBuf, LogFile, Storage};

/// Blocking `std::fs` storage.
#[derive(Debug, Clone, Copy, Default)]
pub struct StdFs;

/// A heap buffer.
pub struct StdBuf(Vec<u8>);

impl IoBuf for StdBuf {
    fn as_bytes(&self) -> &[u8] {
        &self.0
    }
    fn as_bytes_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
    fn set_len(&mut self, len: usize) {
        assert!(len <= self.0.len(), "set_len {len} beyond {}", self.0.len());
        self.0.truncate(len);
    }
}

/// One open file.
pub struct StdFile {
    file: File,
    path: PathBuf,
}

impl StdFile {
    /// The error with the file's path (std's errors do not carry it).
    fn named(&self, e: io::Error) -> io::Error {
        io::Error::new(e.kind(), format!("{}: {e}", self.path.display()))
    }
}

impl LogFile for StdFile {
    type Buf = StdBuf;
    type ReadBuf = Vec<u8>;

    async fn write_at(&self, buf: Rc<StdBuf>, pos: u64) -> io::Result<()> {
        crate::storage::crash_points::step("write");
        self.file
            .write_all_at(buf.as_bytes(), pos)
            .map_err(|e| self.named(e))
    }

    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut out = vec![0; len];
        let mut filled = 0;
        while filled < len {
            match self.file.read_at(&mut out[filled..], pos + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.named(e)),
            }
        }
        out.truncate(filled);
        Ok(out)
    }

    /// `fsync` (data and size): these files change size on every write.
    async fn sync(&self) -> io::Result<()> {
        crate::storage::crash_points::step("fsync");
        self.file.sync_all().map_err(|e| self.named(e))
    }

    async fn size(&self) -> io::Result<u64> {
        self.file
            .metadata()
            .map(|m| m.len())
            .map_err(|e| self.named(e))
    }

    async fn truncate(&self, len: u64) -> io::Result<()> {
        crate::storage::crash_points::step("truncate");
        self.file.set_len(len).map_err(|e| self.named(e))
    }
}

impl Storage for StdFs {
    type File = StdFile;

    fn alloc_buf(len: usize) -> StdBuf {
        StdBuf(vec![0; len])
    }

    async fn open(&self, path: &Path) -> io::Result<StdFile> {
        crate::storage::crash_points::step("open/create");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        Ok(StdFile {
            file,
            path: path.to_path_buf(),
        })
    }

    async fn remove(&self, path: &Path) -> io::Result<()> {
        crate::storage::crash_points::step("unlink");
        std::fs::remove_file(path)
    }

    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        crate::storage::crash_points::step("rename");
        std::fs::rename(from, to)
    }

    async fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        crate::storage::crash_points::step("directory fsync");
        File::open(dir)?.sync_all()
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        crate::storage::crash_points::step("mkdir");
        std::fs::create_dir_all(dir)
    }

    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        crate::storage::crash_points::step("rmdir");
        std::fs::remove_dir_all(dir)
    }

    async fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future::block_on;

    // Proves: the backend honours the trait as the log uses it: a write reads back, a read at
    // the end is short, truncate and size agree, rename and list see the new name.
    #[test]
    fn files_behave_as_the_storage_trait_says() {
        let dir = tempfile::tempdir().unwrap();
        let fs = StdFs;
        let a = dir.path().join("a");
        let f = block_on(fs.open(&a)).unwrap();
        let mut buf = StdFs::alloc_buf(4096);
        buf.as_bytes_mut().fill(7);
        block_on(f.write_at(Rc::new(buf), 4096)).unwrap();
        assert_eq!(block_on(f.size()).unwrap(), 8192);
        let r = block_on(f.read_at(4096, 8192)).unwrap();
        assert_eq!(r.len(), 4096, "short at the end of the file");
        assert!(r.iter().all(|b| *b == 7));
        block_on(f.truncate(10)).unwrap();
        block_on(f.sync()).unwrap();
        assert_eq!(block_on(f.size()).unwrap(), 10);
        drop(f);
        block_on(fs.rename(&a, &dir.path().join("b"))).unwrap();
        block_on(fs.sync_dir(dir.path())).unwrap();
        assert_eq!(
            block_on(fs.list(dir.path())).unwrap(),
            vec!["b".to_string()]
        );
        block_on(fs.remove(&dir.path().join("b"))).unwrap();
        assert!(block_on(fs.list(dir.path())).unwrap().is_empty());
    }
}
