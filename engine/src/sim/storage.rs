//! [`SimStorage`]: the crash image ([`CrashStorage`]) behind a gate. Every mutating operation
//! (open, write, sync, truncate, remove, rename, directory sync) first registers itself as
//! *pending* and completes only when the simulator releases it, in any order the seed picks, with
//! the verdict the seed picks (run it, fail it with EIO, or fail a write with ENOSPC). Reads and
//! listings are not gated (they complete at once).
//!
//! A *shadow* mirrors, for every operation that succeeded on the crash image, which bytes and
//! directory entries a power loss would keep (synced contents, synced names). It is the
//! simulator's own account of durability, independent of what the partition core claims: a
//! probe rebuilds the durable image of one partition in a fresh `CrashStorage` and reopens it.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::future::poll_fn;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::task::Poll;

use crate::storage::{CrashFile, CrashStorage, IoBuf, LogFile, Storage, VecBuf, VecRead};

/// A gated storage operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum OpKind {
    Open,
    Write,
    Sync,
    Truncate,
    Remove,
    Rename,
    SyncDir,
}

/// How the simulator completes a pending operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Perform it on the crash image.
    Run,
    /// Fail it with EIO, doing nothing.
    Eio,
    /// Fail it with ENOSPC, doing nothing (writes only).
    NoSpace,
}

/// One operation waiting for the simulator.
#[derive(Debug, Clone)]
pub struct PendingOp {
    pub id: u64,
    pub kind: OpKind,
    pub path: PathBuf,
}

#[derive(Default, Clone)]
struct ShadowFile {
    live: Vec<u8>,
    durable: Vec<u8>,
}

/// What survives a power loss, mirrored from the successful operations (same model as
/// `CrashStorage::crash` with no unsynced block kept).
#[derive(Default)]
struct Shadow {
    files: BTreeMap<PathBuf, ShadowFile>,
    durable_names: BTreeSet<PathBuf>,
}

#[derive(Default)]
struct Io {
    next_id: u64,
    /// Gates complete at once (open and recovery after a crash run like this).
    passthrough: bool,
    pending: Vec<PendingOp>,
    released: BTreeMap<u64, Verdict>,
    shadow: Shadow,
}

/// The simulator's storage (see the module doc).
#[derive(Clone, Default)]
pub struct SimStorage {
    inner: CrashStorage,
    io: Rc<RefCell<Io>>,
}

impl SimStorage {
    pub fn new() -> Self {
        Self::default()
    }

    /// The crash image underneath (for `crash`, `kill`, `die_after_ops`).
    pub fn crash_image(&self) -> &CrashStorage {
        &self.inner
    }

    pub fn set_passthrough(&self, on: bool) {
        self.io.borrow_mut().passthrough = on;
    }

    /// Operations waiting for a verdict, in the order they were issued.
    pub fn pending(&self) -> Vec<PendingOp> {
        self.io.borrow().pending.clone()
    }

    /// Completes pending operation `id` with `verdict` (its future finishes at its next poll).
    pub fn release(&self, id: u64, verdict: Verdict) {
        let mut io = self.io.borrow_mut();
        let Some(i) = io.pending.iter().position(|p| p.id == id) else {
            panic!("release of an operation that is not pending: {id}");
        };
        io.pending.remove(i);
        io.released.insert(id, verdict);
    }

    /// Forgets every pending and released operation (their futures were dropped by a crash).
    pub fn forget_operations(&self) {
        let mut io = self.io.borrow_mut();
        io.pending.clear();
        io.released.clear();
    }

    /// After a crash or kill, every file's contents on the image are durable: the shadow is
    /// rebuilt from the image (files under `dirs`).
    pub fn reset_shadow(&self, dirs: &[PathBuf]) -> io::Result<()> {
        let mut shadow = Shadow::default();
        for dir in dirs {
            let names = match self.inner.list_names(dir) {
                Ok(names) => names,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for name in names {
                let path = dir.join(name);
                let bytes = self
                    .inner
                    .with_file_bytes(&path, |b| b.clone())
                    .unwrap_or_default();
                shadow.durable_names.insert(path.clone());
                shadow.files.insert(
                    path,
                    ShadowFile {
                        live: bytes.clone(),
                        durable: bytes,
                    },
                );
            }
        }
        self.io.borrow_mut().shadow = shadow;
        Ok(())
    }

    /// A fresh crash image holding only what a power loss now would keep under `dir`.
    pub fn durable_image(&self, dir: &Path) -> io::Result<CrashStorage> {
        let image = CrashStorage::new();
        image.create_dir_all(dir)?;
        let io = self.io.borrow();
        let sh = &io.shadow;
        for (path, f) in sh.files.range(dir.to_path_buf()..) {
            if !path.starts_with(dir) {
                break;
            }
            if !sh.durable_names.contains(path) || path.parent() != Some(dir) {
                continue;
            }
            futures_lite::future::block_on(image.open(path))?;
            image.with_file_bytes(path, |b| b.clone_from(&f.durable));
        }
        futures_lite::future::block_on(image.sync_dir(dir))?;
        Ok(image)
    }

    /// The shadow of `dir`, for failure messages: (file, live bytes, durable bytes, name synced).
    pub fn describe(&self, dir: &Path) -> String {
        let io = self.io.borrow();
        let sh = &io.shadow;
        let mut s = String::new();
        for (path, f) in &sh.files {
            if path.parent() == Some(dir) {
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy())
                    .unwrap_or_default();
                let synced = sh.durable_names.contains(path);
                s += &format!(
                    "{name}: live {} durable {} name synced {synced}; ",
                    f.live.len(),
                    f.durable.len()
                );
            }
        }
        s
    }

    /// Waits for the simulator's verdict on one operation.
    async fn gate(&self, kind: OpKind, path: &Path) -> Verdict {
        let mut id = None;
        poll_fn(|_| {
            let mut io = self.io.borrow_mut();
            match id {
                None if io.passthrough => Poll::Ready(Verdict::Run),
                None => {
                    let new = io.next_id;
                    io.next_id += 1;
                    io.pending.push(PendingOp {
                        id: new,
                        kind,
                        path: path.to_path_buf(),
                    });
                    id = Some(new);
                    Poll::Pending
                }
                Some(mine) => match io.released.remove(&mine) {
                    Some(v) => Poll::Ready(v),
                    None => Poll::Pending,
                },
            }
        })
        .await
    }

    async fn checked(&self, kind: OpKind, path: &Path) -> io::Result<()> {
        match self.gate(kind, path).await {
            Verdict::Run => Ok(()),
            Verdict::Eio => Err(io::Error::other("simulated EIO")),
            Verdict::NoSpace => Err(io::Error::from_raw_os_error(libc::ENOSPC)),
        }
    }

    fn shadow(&self, f: impl FnOnce(&mut Shadow)) {
        f(&mut self.io.borrow_mut().shadow);
    }
}

/// A file of [`SimStorage`].
pub struct SimFile {
    inner: CrashFile,
    storage: SimStorage,
    path: PathBuf,
}

impl LogFile for SimFile {
    type Buf = VecBuf;
    type ReadBuf = VecRead;

    async fn write_at(&self, buf: Rc<VecBuf>, pos: u64) -> io::Result<()> {
        self.storage.checked(OpKind::Write, &self.path).await?;
        let bytes = buf.as_bytes().to_vec();
        self.inner.write_at(buf, pos).await?;
        self.storage.shadow(|sh| {
            if let Some(f) = sh.files.get_mut(&self.path) {
                let (at, end) = (pos as usize, pos as usize + bytes.len());
                if f.live.len() < end {
                    f.live.resize(end, 0);
                }
                f.live[at..end].copy_from_slice(&bytes);
            }
        });
        Ok(())
    }

    async fn read_at(&self, pos: u64, len: usize) -> io::Result<VecRead> {
        self.inner.read_at(pos, len).await
    }

    async fn sync(&self) -> io::Result<()> {
        // A write with Write verdict `NoSpace` never reaches here; sync itself never is ENOSPC.
        match self.storage.gate(OpKind::Sync, &self.path).await {
            Verdict::Run => {}
            Verdict::Eio | Verdict::NoSpace => return Err(io::Error::other("simulated EIO")),
        }
        self.inner.sync().await?;
        self.storage.shadow(|sh| {
            if let Some(f) = sh.files.get_mut(&self.path) {
                f.durable.clone_from(&f.live);
            }
        });
        Ok(())
    }

    async fn size(&self) -> io::Result<u64> {
        self.inner.size().await
    }

    async fn truncate(&self, len: u64) -> io::Result<()> {
        self.storage.checked(OpKind::Truncate, &self.path).await?;
        self.inner.truncate(len).await?;
        self.storage.shadow(|sh| {
            if let Some(f) = sh.files.get_mut(&self.path) {
                f.live.resize(len as usize, 0);
            }
        });
        Ok(())
    }
}

impl Storage for SimStorage {
    type File = SimFile;

    fn alloc_buf(len: usize) -> VecBuf {
        CrashStorage::alloc_buf(len)
    }

    async fn open(&self, path: &Path) -> io::Result<SimFile> {
        self.checked(OpKind::Open, path).await?;
        let inner = self.inner.open(path).await?;
        self.shadow(|sh| {
            sh.files.entry(path.to_path_buf()).or_default();
        });
        Ok(SimFile {
            inner,
            storage: self.clone(),
            path: path.to_path_buf(),
        })
    }

    async fn remove(&self, path: &Path) -> io::Result<()> {
        self.checked(OpKind::Remove, path).await?;
        self.inner.remove(path).await?;
        self.shadow(|sh| {
            sh.files.remove(path);
        });
        Ok(())
    }

    async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.checked(OpKind::Rename, from).await?;
        self.inner.rename(from, to).await?;
        self.shadow(|sh| {
            if let Some(f) = sh.files.remove(from) {
                sh.files.insert(to.to_path_buf(), f);
            }
        });
        Ok(())
    }

    async fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.checked(OpKind::SyncDir, dir).await?;
        self.inner.sync_dir(dir).await?;
        self.shadow(|sh| {
            sh.durable_names.retain(|p| p.parent() != Some(dir));
            let live: Vec<PathBuf> = sh
                .files
                .keys()
                .filter(|p| p.parent() == Some(dir))
                .cloned()
                .collect();
            sh.durable_names.extend(live);
        });
        Ok(())
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.inner.create_dir_all(dir)
    }

    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.inner.remove_dir_all(dir)?;
        self.shadow(|sh| {
            sh.files.retain(|p, _| !p.starts_with(dir));
        });
        Ok(())
    }

    async fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.inner.list_names(dir)
    }
}
