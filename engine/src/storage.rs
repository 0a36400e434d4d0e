//! The storage seam (docs/architecture.md, "Runtime seam"). The partition log is written against
//! these traits only; `rt::dma` implements them with glommio O_DIRECT files on io_uring, and
//! [`CrashStorage`] with an in-memory *crash image* that keeps live and durable bytes apart.
//!
//! Contract every backend honours, and the log relies on:
//! - `write_at` positions and lengths are multiples of [`BLOCK_BYTES`];
//! - a completed write is visible to later reads, but survives a crash only once `sync` of the
//!   same file has completed after it (writes may be torn or reordered before that);
//! - a created, removed or renamed file survives a crash only after `sync_dir` of its directory.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// Unit of direct I/O. Every write covers whole blocks.
pub const BLOCK_BYTES: usize = 4096;

pub const fn align_down(n: u64) -> u64 {
    n / BLOCK_BYTES as u64 * BLOCK_BYTES as u64
}
pub const fn align_up(n: u64) -> u64 {
    n.div_ceil(BLOCK_BYTES as u64) * BLOCK_BYTES as u64
}

/// A buffer suitable for direct I/O on the file that allocated it.
pub trait IoBuf: 'static {
    fn as_bytes(&self) -> &[u8];
    fn as_bytes_mut(&mut self) -> &mut [u8];
    /// Shortens the buffer (to a multiple of [`BLOCK_BYTES`]) without moving it.
    fn set_len(&mut self, len: usize);
}

/// One open file.
pub trait LogFile: 'static {
    type Buf: IoBuf;
    type ReadBuf: Deref<Target = [u8]> + 'static;
    /// Writes the whole buffer at `pos`. Keeps a shared reference so the caller can still read it.
    fn write_at(&self, buf: Rc<Self::Buf>, pos: u64) -> impl Future<Output = io::Result<()>>;
    /// Reads up to `len` bytes at `pos` (both block-aligned); shorter at end of file.
    fn read_at(&self, pos: u64, len: usize) -> impl Future<Output = io::Result<Self::ReadBuf>>;
    /// fdatasync: every write completed before this call becomes durable.
    fn sync(&self) -> impl Future<Output = io::Result<()>>;
    fn size(&self) -> impl Future<Output = io::Result<u64>>;
    fn truncate(&self, len: u64) -> impl Future<Output = io::Result<()>>;
}

/// A directory of files.
pub trait Storage: Clone + 'static {
    type File: LogFile;
    /// An aligned buffer of `len` bytes (a multiple of [`BLOCK_BYTES`]); contents unspecified.
    fn alloc_buf(len: usize) -> <Self::File as LogFile>::Buf;
    /// Opens read-write, creating the file if missing.
    fn open(&self, path: &Path) -> impl Future<Output = io::Result<Self::File>>;
    fn remove(&self, path: &Path) -> impl Future<Output = io::Result<()>>;
    fn rename(&self, from: &Path, to: &Path) -> impl Future<Output = io::Result<()>>;
    fn sync_dir(&self, dir: &Path) -> impl Future<Output = io::Result<()>>;
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    fn remove_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// File names (not paths) in `dir`, sorted.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
}

// ---------------------------------------------------------------------------------------------
// Crash-image storage
// ---------------------------------------------------------------------------------------------

#[derive(Default, Clone)]
struct MemFile {
    live: Vec<u8>,
    durable: Vec<u8>,
    /// Writes completed since the last sync, in completion order: (pos, bytes).
    unsynced: Vec<(u64, Vec<u8>)>,
    /// Length set by a truncate since the last sync.
    truncated_unsynced: bool,
}

#[derive(Default)]
struct MemState {
    files: BTreeMap<PathBuf, MemFile>,
    /// Directory entries as they would be found after a crash.
    durable_names: BTreeSet<PathBuf>,
    dirs: BTreeSet<PathBuf>,
    /// Total live bytes allowed (simulates a full disk); `None` = unlimited.
    capacity_bytes: Option<u64>,
    /// Fail every write and sync with EIO while set.
    fail_io: bool,
    /// Storage operations left before the simulated process dies (every later one fails).
    ops_left: Option<u64>,
}

impl MemState {
    /// Counts one mutating operation; `Err` once the simulated process has died.
    fn tick(&mut self) -> io::Result<()> {
        match &mut self.ops_left {
            Some(0) => Err(io::Error::other("simulated crash: storage is gone")),
            Some(n) => {
                *n -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn used_bytes(&self) -> u64 {
        self.files.values().map(|f| f.live.len() as u64).sum()
    }
}

/// In-memory storage that remembers which bytes were made durable, and can "crash": only synced
/// file contents and synced directory entries survive, plus an arbitrary (seeded) subset of the
/// unsynced block writes, which models torn and reordered writes.
#[derive(Clone, Default)]
pub struct CrashStorage {
    state: Rc<RefCell<MemState>>,
}

impl CrashStorage {
    pub fn new() -> Self {
        Self::default()
    }

    /// Limits total live bytes; writes beyond fail with ENOSPC.
    pub fn set_capacity(&self, bytes: Option<u64>) {
        self.state.borrow_mut().capacity_bytes = bytes;
    }

    /// Lets `ops` more mutating operations (write, sync, open, rename, remove, sync_dir,
    /// truncate) succeed, then fails all others: a process dying in the middle of a flush.
    /// `crash` then decides what reached the disk. `None` lifts the limit.
    pub fn die_after_ops(&self, ops: Option<u64>) {
        self.state.borrow_mut().ops_left = ops;
    }

    /// Makes every following write and sync fail with EIO (or succeed again).
    pub fn set_fail_io(&self, fail: bool) {
        self.state.borrow_mut().fail_io = fail;
    }

    /// Simulates power loss. `keep_block(file_index, write_index, block_index)` decides, for each
    /// unsynced block write, whether it reached the disk. Open handles keep working on the new
    /// image, but a correct user drops them and reopens.
    pub fn crash(&self, mut keep_block: impl FnMut(usize, usize, usize) -> bool) {
        let mut st = self.state.borrow_mut();
        let durable_names = st.durable_names.clone();
        st.files.retain(|p, _| durable_names.contains(p));
        for (fi, f) in st.files.values_mut().enumerate() {
            let mut image = f.durable.clone();
            for (wi, (pos, data)) in f.unsynced.iter().enumerate() {
                for (bi, block) in data.chunks(BLOCK_BYTES).enumerate() {
                    if keep_block(fi, wi, bi) {
                        let at = *pos as usize + bi * BLOCK_BYTES;
                        if image.len() < at + block.len() {
                            image.resize(at + block.len(), 0);
                        }
                        image[at..at + block.len()].copy_from_slice(block);
                    }
                }
            }
            f.live = image.clone();
            f.durable = image;
            f.unsynced.clear();
            f.truncated_unsynced = false;
        }
    }

    /// Simulates a process killed (SIGKILL) while writes were in flight: every directory
    /// operation it completed stays (the kernel has it), and each unsynced block write either
    /// landed or not, in any order (`keep_block` as in [`CrashStorage::crash`]), as io_uring
    /// requests in flight at the kill complete or are cancelled independently.
    pub fn kill(&self, keep_block: impl FnMut(usize, usize, usize) -> bool) {
        {
            let mut st = self.state.borrow_mut();
            st.durable_names = st.files.keys().cloned().collect();
        }
        self.crash(keep_block);
    }

    /// Raw durable+live access for corruption tests.
    pub fn with_file_bytes<T>(&self, path: &Path, f: impl FnOnce(&mut Vec<u8>) -> T) -> Option<T> {
        let mut st = self.state.borrow_mut();
        let file = st.files.get_mut(path)?;
        let out = f(&mut file.live);
        file.durable = file.live.clone();
        file.unsynced.clear();
        Some(out)
    }

    pub fn exists(&self, path: &Path) -> bool {
        self.state.borrow().files.contains_key(path)
    }
}

/// Handle to one in-memory file.
pub struct CrashFile {
    state: Rc<RefCell<MemState>>,
    path: PathBuf,
}

/// A plain heap buffer (the crash image needs no real alignment).
pub struct VecBuf(Vec<u8>);
impl IoBuf for VecBuf {
    fn as_bytes(&self) -> &[u8] {
        &self.0
    }
    fn as_bytes_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
    fn set_len(&mut self, len: usize) {
        self.0.truncate(len);
    }
}

/// Owned read result.
pub struct VecRead(Vec<u8>);
impl Deref for VecRead {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

fn eio() -> io::Error {
    io::Error::other("injected I/O error")
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{} not found", path.display()),
    )
}

impl CrashFile {
    fn with<T>(&self, f: impl FnOnce(&mut MemState, &PathBuf) -> io::Result<T>) -> io::Result<T> {
        let mut st = self.state.borrow_mut();
        if !st.files.contains_key(&self.path) {
            return Err(not_found(&self.path));
        }
        f(&mut st, &self.path)
    }
}

impl LogFile for CrashFile {
    type Buf = VecBuf;
    type ReadBuf = VecRead;

    async fn write_at(&self, buf: Rc<VecBuf>, pos: u64) -> io::Result<()> {
        assert_eq!(pos % BLOCK_BYTES as u64, 0, "unaligned write position");
        assert_eq!(buf.0.len() % BLOCK_BYTES, 0, "unaligned write length");
        self.with(|st, path| {
            st.tick()?;
            if st.fail_io {
                return Err(eio());
            }
            let end = pos + buf.0.len() as u64;
            let current = st.files[path].live.len() as u64;
            if let Some(cap) = st.capacity_bytes
                && end > current
                && st.used_bytes() + (end - current) > cap
            {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            let f = st.files.get_mut(path).ok_or_else(|| not_found(path))?;
            if f.live.len() < end as usize {
                f.live.resize(end as usize, 0);
            }
            f.live[pos as usize..end as usize].copy_from_slice(&buf.0);
            f.unsynced.push((pos, buf.0.clone()));
            Ok(())
        })
    }

    async fn read_at(&self, pos: u64, len: usize) -> io::Result<VecRead> {
        assert_eq!(pos % BLOCK_BYTES as u64, 0, "unaligned read position");
        self.with(|st, path| {
            let live = &st.files[path].live;
            let start = (pos as usize).min(live.len());
            let end = (pos as usize).saturating_add(len).min(live.len());
            Ok(VecRead(live[start..end].to_vec()))
        })
    }

    async fn sync(&self) -> io::Result<()> {
        self.with(|st, path| {
            st.tick()?;
            if st.fail_io {
                return Err(eio());
            }
            let f = st.files.get_mut(path).ok_or_else(|| not_found(path))?;
            f.durable = f.live.clone();
            f.unsynced.clear();
            f.truncated_unsynced = false;
            Ok(())
        })
    }

    async fn size(&self) -> io::Result<u64> {
        self.with(|st, path| Ok(st.files[path].live.len() as u64))
    }

    async fn truncate(&self, len: u64) -> io::Result<()> {
        self.with(|st, path| {
            st.tick()?;
            let f = st.files.get_mut(path).ok_or_else(|| not_found(path))?;
            f.live.resize(len as usize, 0);
            // A truncate is metadata: model it as durable only after sync, like data. Pending
            // writes beyond the new length must not resurrect bytes on crash.
            for (pos, data) in &mut f.unsynced {
                let end = (*pos as usize + data.len()).min(len as usize);
                data.truncate(end.saturating_sub(*pos as usize));
            }
            f.truncated_unsynced = true;
            Ok(())
        })
    }
}

impl Storage for CrashStorage {
    type File = CrashFile;

    fn alloc_buf(len: usize) -> VecBuf {
        // Not zeroed on purpose: the log must never rely on fresh buffers being clean.
        VecBuf(vec![0xA5; len])
    }

    async fn open(&self, path: &Path) -> io::Result<CrashFile> {
        let mut st = self.state.borrow_mut();
        if !st.files.contains_key(path) {
            st.tick()?;
        }
        if let Some(parent) = path.parent()
            && !st.dirs.contains(parent)
        {
            return Err(not_found(parent));
        }
        st.files.entry(path.to_path_buf()).or_default();
        Ok(CrashFile {
            state: self.state.clone(),
            path: path.to_path_buf(),
        })
    }

    async fn remove(&self, path: &Path) -> io::Result<()> {
        let mut st = self.state.borrow_mut();
        st.tick()?;
        st.files
            .remove(path)
            .map(|_| ())
            .ok_or_else(|| not_found(path))
    }

    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = self.state.borrow_mut();
        st.tick()?;
        let f = st.files.remove(from).ok_or_else(|| not_found(from))?;
        st.files.insert(to.to_path_buf(), f);
        Ok(())
    }

    async fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.state.borrow_mut();
        st.tick()?;
        let live: Vec<PathBuf> = st
            .files
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .cloned()
            .collect();
        st.durable_names.retain(|p| p.parent() != Some(dir));
        st.durable_names.extend(live);
        Ok(())
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.state.borrow_mut();
        for a in dir.ancestors() {
            st.dirs.insert(a.to_path_buf());
        }
        Ok(())
    }

    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.state.borrow_mut();
        st.files.retain(|p, _| !p.starts_with(dir));
        st.dirs.retain(|p| !p.starts_with(dir));
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let st = self.state.borrow();
        if !st.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        let mut names: Vec<String> = st
            .files
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        names.sort();
        Ok(names)
    }
}
