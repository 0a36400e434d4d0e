//! The storage seam (docs/architecture.md, "Runtime seam"). The partition log is written against
//! these traits only; `rt::dma` implements them with glommio O_DIRECT files on io_uring, and
//! [`CrashStorage`] with an in-memory *crash image* that keeps live and durable bytes apart.
//!
//! Contract every backend honours, and the log relies on:
//! - `write_at` positions and lengths are multiples of [`BLOCK_BYTES`];
//! - a completed write is visible to later reads, but survives a crash only once `sync` of the
//!   same file has completed after it (writes may be torn or reordered before that);
//! - a created, removed or renamed file survives a crash only after `sync_dir` of its directory.
//!
//! For a deterministic simulator the crash image also injects, from a seed
//! ([`CrashStorage::seeded`]): EIO on writes and syncs at seeded rates ([`FaultRates`]) or on
//! every sync ([`CrashStorage::set_fail_sync`]); slow syncs and writes whose completion the test
//! holds and releases in any order ([`CrashStorage::hold_syncs`], [`CrashStorage::hold_writes`],
//! [`CrashStorage::complete`], [`CrashStorage::complete_all_shuffled`]); a full disk
//! ([`CrashStorage::set_capacity`]); and a process death after N operations
//! ([`CrashStorage::die_after_ops`]). No runtime is needed: a held operation's future is
//! `Pending` until completed, and wakes its waker then.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::task::{Poll, Waker};

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
    /// File names (not paths) in `dir`, sorted. Async: on a shard it runs off the shard thread.
    fn list(&self, dir: &Path) -> impl Future<Output = io::Result<Vec<String>>>;
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
    /// Renames (from -> to): a handle opened under the old name follows its file, as a file
    /// descriptor does (the log writes into a prepared file it renamed).
    moved: BTreeMap<PathBuf, PathBuf>,
    dirs: BTreeSet<PathBuf>,
    /// Total live bytes allowed (simulates a full disk); `None` = unlimited.
    capacity_bytes: Option<u64>,
    /// Fail every write and sync with EIO while set.
    fail_io: bool,
    /// Storage operations left before the simulated process dies (every later one fails).
    ops_left: Option<u64>,
    /// Fail every sync (only) with EIO while set.
    fail_sync: bool,
    /// Seeded random failures (see [`FaultRates`]).
    rates: FaultRates,
    rng: SplitMix64,
    /// While set, writes (syncs) are parked at submission and complete only when the test
    /// says so ([`CrashStorage::complete`]): slow devices, reordered completions.
    hold_writes: bool,
    hold_syncs: bool,
    parked: BTreeMap<u64, Parked>,
    next_ticket: u64,
}

/// Seeded fault probabilities, in parts per million of operations (0 = never).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultRates {
    /// A block write fails with EIO (nothing of it lands).
    pub write_eio_ppm: u32,
    /// An fdatasync fails with EIO (nothing becomes durable).
    pub sync_eio_ppm: u32,
}

/// What a parked operation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParkedKind {
    Write,
    Sync,
}

/// One operation submitted while held, waiting for the test to complete it.
struct Parked {
    path: PathBuf,
    op: ParkedOp,
    waker: Option<Waker>,
    /// Set once completed; the submitting future then returns it.
    result: Option<io::Result<()>>,
}

enum ParkedOp {
    Write {
        pos: u64,
        data: Vec<u8>,
    },
    /// A sync makes durable what was live when it was *submitted* (writes completed before the
    /// call), not what is live when it completes.
    Sync {
        live_at_call: Vec<u8>,
        unsynced_at_call: usize,
    },
    Done,
}

/// A small deterministic generator (SplitMix64): the crash image must not depend on a crate
/// the engine does not otherwise need.
#[derive(Debug, Clone, Copy, Default)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// True with probability `ppm` / 1,000,000.
    fn chance_ppm(&mut self, ppm: u32) -> bool {
        ppm > 0 && self.next() % 1_000_000 < u64::from(ppm)
    }

    fn below(&mut self, n: usize) -> usize {
        assert!(n > 0, "below(0)");
        mem_index(self.next() % n as u64)
    }
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

    /// The effect of a completed block write (after the crash tick).
    fn apply_write(&mut self, path: &Path, pos: u64, data: &[u8]) -> io::Result<()> {
        if self.fail_io || self.rng.chance_ppm(self.rates.write_eio_ppm) {
            return Err(eio());
        }
        let end = pos + data.len() as u64;
        let current = self
            .files
            .get(path)
            .ok_or_else(|| not_found(path))?
            .live
            .len() as u64;
        if let Some(cap) = self.capacity_bytes
            && end > current
            && self.used_bytes() + (end - current) > cap
        {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        let f = self.files.get_mut(path).ok_or_else(|| not_found(path))?;
        let (start, end) = (mem_index(pos), mem_index(end));
        if f.live.len() < end {
            f.live.resize(end, 0);
        }
        f.live[start..end].copy_from_slice(data);
        f.unsynced.push((pos, data.to_vec()));
        Ok(())
    }

    /// The effect of a completed sync submitted when the file was `live_at_call` with
    /// `unsynced_at_call` unsynced writes.
    fn apply_sync(
        &mut self,
        path: &Path,
        live_at_call: Vec<u8>,
        unsynced_at_call: usize,
    ) -> io::Result<()> {
        if self.fail_io || self.fail_sync || self.rng.chance_ppm(self.rates.sync_eio_ppm) {
            return Err(eio());
        }
        let f = self.files.get_mut(path).ok_or_else(|| not_found(path))?;
        f.durable = live_at_call;
        let covered = unsynced_at_call.min(f.unsynced.len());
        f.unsynced.drain(..covered);
        if f.unsynced.is_empty() {
            f.truncated_unsynced = false;
        }
        Ok(())
    }

    /// Completes a parked operation: applies it, stores its result, wakes its future.
    fn complete(&mut self, ticket: u64) -> bool {
        let Some(mut parked) = self.parked.remove(&ticket) else {
            return false;
        };
        let op = std::mem::replace(&mut parked.op, ParkedOp::Done);
        let result = match op {
            ParkedOp::Write { pos, data } => self.apply_write(&parked.path, pos, &data),
            ParkedOp::Sync {
                live_at_call,
                unsynced_at_call,
            } => self.apply_sync(&parked.path, live_at_call, unsynced_at_call),
            ParkedOp::Done => return false,
        };
        parked.result = Some(result);
        if let Some(w) = parked.waker.take() {
            w.wake();
        }
        // Kept (with its result) until the submitting future takes it.
        self.parked.insert(ticket, parked);
        true
    }

    /// Parks an operation; returns its ticket.
    fn park(&mut self, path: &Path, op: ParkedOp) -> u64 {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.parked.insert(
            ticket,
            Parked {
                path: path.to_path_buf(),
                op,
                waker: None,
                result: None,
            },
        );
        ticket
    }

    /// Tickets of the operations still waiting for completion, oldest first.
    fn waiting(&self) -> Vec<(u64, ParkedKind)> {
        self.parked
            .iter()
            .filter_map(|(t, p)| match p.op {
                ParkedOp::Write { .. } => Some((*t, ParkedKind::Write)),
                ParkedOp::Sync { .. } => Some((*t, ParkedKind::Sync)),
                ParkedOp::Done => None,
            })
            .collect()
    }
}

/// Waits until the parked operation `ticket` completes and returns its result.
async fn parked_result(state: &Rc<RefCell<MemState>>, ticket: u64) -> io::Result<()> {
    std::future::poll_fn(|cx| {
        let mut st = state.borrow_mut();
        let Some(p) = st.parked.get_mut(&ticket) else {
            return Poll::Ready(Err(io::Error::other("parked operation vanished")));
        };
        if p.result.is_some() {
            let result = st
                .parked
                .remove(&ticket)
                .and_then(|p| p.result)
                .unwrap_or_else(|| Err(io::Error::other("parked operation vanished")));
            return Poll::Ready(result);
        }
        p.waker = Some(cx.waker().clone());
        Poll::Pending
    })
    .await
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

    // --- for a deterministic simulator: seeded faults, held and reordered completions ---

    /// A crash image whose random faults ([`Self::set_fault_rates`]) and reorderings
    /// ([`Self::complete_all_shuffled`]) follow `seed`: the same seed and the same calls give
    /// the same outcomes.
    pub fn seeded(seed: u64) -> Self {
        let s = Self::default();
        s.state.borrow_mut().rng = SplitMix64(seed);
        s
    }

    /// Seeded random EIO on writes and syncs.
    pub fn set_fault_rates(&self, rates: FaultRates) {
        self.state.borrow_mut().rates = rates;
    }

    /// Makes every following sync (only) fail with EIO, or succeed again.
    pub fn set_fail_sync(&self, fail: bool) {
        self.state.borrow_mut().fail_sync = fail;
    }

    /// While set, every write is parked at submission: it has no effect and its future does
    /// not complete until [`Self::complete`] (in any order: io_uring completes independent
    /// requests out of order). A crash drops parked writes (they never reached the device).
    pub fn hold_writes(&self, hold: bool) {
        self.state.borrow_mut().hold_writes = hold;
    }

    /// While set, every sync is parked (a slow fdatasync): nothing becomes durable until
    /// [`Self::complete`], and then exactly what was written before the sync was submitted.
    pub fn hold_syncs(&self, hold: bool) {
        self.state.borrow_mut().hold_syncs = hold;
    }

    /// Operations parked and not yet completed, oldest first: (ticket, kind).
    pub fn parked(&self) -> Vec<(u64, ParkedKind)> {
        self.state.borrow().waiting()
    }

    /// Completes one parked operation now (its effect applies, its future becomes ready).
    /// Returns false if no such operation waits.
    pub fn complete(&self, ticket: u64) -> bool {
        self.state.borrow_mut().complete(ticket)
    }

    /// Completes every parked operation in a seeded random order; returns how many.
    pub fn complete_all_shuffled(&self) -> usize {
        let mut st = self.state.borrow_mut();
        let mut tickets: Vec<u64> = st.waiting().into_iter().map(|(t, _)| t).collect();
        let n = tickets.len();
        while !tickets.is_empty() {
            let i = st.rng.below(tickets.len());
            let t = tickets.swap_remove(i);
            st.complete(t);
        }
        n
    }

    /// Live bytes over all files (what the capacity limit counts).
    pub fn used_bytes(&self) -> u64 {
        self.state.borrow().used_bytes()
    }

    /// Fails every parked operation (the process died with them in flight): a write's data
    /// never lands, a sync makes nothing durable.
    fn fail_parked(st: &mut MemState) {
        for p in st.parked.values_mut() {
            if p.result.is_none() {
                p.op = ParkedOp::Done;
                p.result = Some(Err(io::Error::other("simulated crash: in flight")));
                if let Some(w) = p.waker.take() {
                    w.wake();
                }
            }
        }
    }

    /// Simulates power loss. `keep_block(file_index, write_index, block_index)` decides, for each
    /// unsynced block write, whether it reached the disk. Open handles keep working on the new
    /// image, but a correct user drops them and reopens.
    pub fn crash(&self, mut keep_block: impl FnMut(usize, usize, usize) -> bool) {
        let mut st = self.state.borrow_mut();
        Self::fail_parked(&mut st);
        let durable_names = st.durable_names.clone();
        st.files.retain(|p, _| durable_names.contains(p));
        for (fi, f) in st.files.values_mut().enumerate() {
            let mut image = f.durable.clone();
            for (wi, (pos, data)) in f.unsynced.iter().enumerate() {
                for (bi, block) in data.chunks(BLOCK_BYTES).enumerate() {
                    if keep_block(fi, wi, bi) {
                        let at = mem_index(*pos) + bi * BLOCK_BYTES;
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

/// A file position or length of the in-memory image as an index (the image lives in memory, so
/// it fits; anything else is a test bug).
fn mem_index(n: u64) -> usize {
    let Ok(i) = usize::try_from(n) else {
        panic!("crash image position {n} does not fit in memory");
    };
    i
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
        // Follow renames of this file (bounded: each step is a distinct recorded rename).
        let mut path = self.path.clone();
        for _ in 0..=st.moved.len() {
            if st.files.contains_key(&path) {
                return f(&mut st, &path);
            }
            match st.moved.get(&path) {
                Some(to) => path = to.clone(),
                None => break,
            }
        }
        Err(not_found(&self.path))
    }
}

impl LogFile for CrashFile {
    type Buf = VecBuf;
    type ReadBuf = VecRead;

    async fn write_at(&self, buf: Rc<VecBuf>, pos: u64) -> io::Result<()> {
        assert_eq!(pos % BLOCK_BYTES as u64, 0, "unaligned write position");
        assert_eq!(buf.0.len() % BLOCK_BYTES, 0, "unaligned write length");
        let ticket = self.with(|st, path| {
            st.tick()?;
            if st.hold_writes {
                let data = buf.0.clone();
                return Ok(Some(st.park(path, ParkedOp::Write { pos, data })));
            }
            st.apply_write(path, pos, &buf.0).map(|()| None)
        })?;
        match ticket {
            Some(t) => parked_result(&self.state, t).await,
            None => Ok(()),
        }
    }

    async fn read_at(&self, pos: u64, len: usize) -> io::Result<VecRead> {
        assert_eq!(pos % BLOCK_BYTES as u64, 0, "unaligned read position");
        self.with(|st, path| {
            let live = &st.files[path].live;
            let start = mem_index(pos).min(live.len());
            let end = mem_index(pos).saturating_add(len).min(live.len());
            Ok(VecRead(live[start..end].to_vec()))
        })
    }

    async fn sync(&self) -> io::Result<()> {
        let ticket = self.with(|st, path| {
            st.tick()?;
            let f = st.files.get(path).ok_or_else(|| not_found(path))?;
            let (live_at_call, unsynced_at_call) = (f.live.clone(), f.unsynced.len());
            if st.hold_syncs {
                let op = ParkedOp::Sync {
                    live_at_call,
                    unsynced_at_call,
                };
                return Ok(Some(st.park(path, op)));
            }
            st.apply_sync(path, live_at_call, unsynced_at_call)
                .map(|()| None)
        })?;
        match ticket {
            Some(t) => parked_result(&self.state, t).await,
            None => Ok(()),
        }
    }

    async fn size(&self) -> io::Result<u64> {
        self.with(|st, path| Ok(st.files[path].live.len() as u64))
    }

    async fn truncate(&self, len: u64) -> io::Result<()> {
        self.with(|st, path| {
            st.tick()?;
            let f = st.files.get_mut(path).ok_or_else(|| not_found(path))?;
            f.live.resize(mem_index(len), 0);
            // A truncate is metadata: model it as durable only after sync, like data. Pending
            // writes beyond the new length must not resurrect bytes on crash.
            for (pos, data) in &mut f.unsynced {
                let end = (mem_index(*pos) + data.len()).min(mem_index(len));
                data.truncate(end.saturating_sub(mem_index(*pos)));
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
        st.moved.insert(from.to_path_buf(), to.to_path_buf());
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

    async fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.list_names(dir)
    }
}

impl CrashStorage {
    /// [`Storage::list`] without a future (tests and the simulator's own bookkeeping).
    pub fn list_names(&self, dir: &Path) -> io::Result<Vec<String>> {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

    use futures_lite::future::{block_on, poll_once};

    use super::*;

    fn block(byte: u8) -> Rc<VecBuf> {
        Rc::new(VecBuf(vec![byte; BLOCK_BYTES]))
    }

    fn setup(storage: &CrashStorage) -> CrashFile {
        let dir = Path::new("/d");
        storage.create_dir_all(dir).unwrap();
        let f = block_on(storage.open(&dir.join("f"))).unwrap();
        block_on(storage.sync_dir(dir)).unwrap();
        f
    }

    fn durable_bytes(storage: &CrashStorage) -> Vec<u8> {
        storage.crash(|_, _, _| false);
        storage
            .with_file_bytes(Path::new("/d/f"), |b| b.clone())
            .unwrap()
    }

    // Proves: a held (slow) sync makes durable exactly what was written before it was
    // submitted, only once completed; a write completed meanwhile stays volatile.
    #[test]
    fn a_held_sync_covers_only_writes_before_its_submission() {
        let storage = CrashStorage::seeded(1);
        let f = setup(&storage);
        block_on(f.write_at(block(1), 0)).unwrap();
        storage.hold_syncs(true);
        let mut sync = Box::pin(f.sync());
        assert!(
            block_on(poll_once(&mut sync)).is_none(),
            "a held sync completed"
        );
        block_on(f.write_at(block(2), BLOCK_BYTES as u64)).unwrap();
        let parked = storage.parked();
        assert_eq!(parked.len(), 1);
        assert_eq!(parked[0].1, ParkedKind::Sync);
        assert!(storage.complete(parked[0].0));
        block_on(sync).unwrap();
        assert_eq!(durable_bytes(&storage), vec![1u8; BLOCK_BYTES]);
    }

    // Proves: held writes complete in the order the test picks (the later one can land
    // first), a crash fails those still in flight and drops their data.
    #[test]
    fn held_writes_complete_out_of_order_and_a_crash_drops_those_in_flight() {
        let storage = CrashStorage::seeded(2);
        let f = setup(&storage);
        storage.hold_writes(true);
        let mut first = Box::pin(f.write_at(block(1), 0));
        let mut second = Box::pin(f.write_at(block(2), BLOCK_BYTES as u64));
        assert!(block_on(poll_once(&mut first)).is_none());
        assert!(block_on(poll_once(&mut second)).is_none());
        let parked = storage.parked();
        assert_eq!(parked.len(), 2);
        assert!(storage.complete(parked[1].0));
        block_on(second).unwrap();
        assert!(
            block_on(poll_once(&mut first)).is_none(),
            "the first is still in flight"
        );
        storage.hold_writes(false);
        block_on(f.sync()).unwrap();
        storage.crash(|_, _, _| true);
        assert!(
            block_on(first).is_err(),
            "a write in flight at the crash must fail"
        );
        let bytes = storage
            .with_file_bytes(Path::new("/d/f"), |b| b.clone())
            .unwrap();
        assert_eq!(&bytes[..BLOCK_BYTES], &[0u8; BLOCK_BYTES][..]);
        assert_eq!(&bytes[BLOCK_BYTES..], &[2u8; BLOCK_BYTES][..]);
    }

    // Proves: seeded faults are deterministic (same seed, same failures) and a failed sync
    // makes nothing durable.
    #[test]
    fn seeded_faults_repeat_and_a_failed_sync_makes_nothing_durable() {
        let run = |seed| {
            let storage = CrashStorage::seeded(seed);
            let f = setup(&storage);
            storage.set_fault_rates(FaultRates {
                write_eio_ppm: 300_000,
                sync_eio_ppm: 300_000,
            });
            (0..64)
                .map(|i| {
                    let w = block_on(f.write_at(block(i), 0)).is_ok();
                    let s = block_on(f.sync()).is_ok();
                    (w, s)
                })
                .collect::<Vec<_>>()
        };
        let a = run(7);
        assert_eq!(a, run(7));
        assert!(a.iter().any(|x| !x.0) && a.iter().any(|x| !x.1) && a.iter().any(|x| x.0));
        let storage = CrashStorage::seeded(3);
        let f = setup(&storage);
        block_on(f.write_at(block(5), 0)).unwrap();
        storage.set_fail_sync(true);
        assert!(block_on(f.sync()).is_err());
        assert!(block_on(f.write_at(block(6), 0)).is_ok(), "only syncs fail");
        assert!(durable_bytes(&storage).is_empty());
    }

    // Proves: a full disk refuses writes that grow the files with ENOSPC, and overwrites
    // still succeed.
    #[test]
    fn a_full_disk_refuses_growth_with_enospc() {
        let storage = CrashStorage::new();
        let f = setup(&storage);
        block_on(f.write_at(block(1), 0)).unwrap();
        storage.set_capacity(Some(storage.used_bytes()));
        let e = block_on(f.write_at(block(2), BLOCK_BYTES as u64)).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
        block_on(f.write_at(block(3), 0)).unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// Crash points for whole-process crash tests
// ---------------------------------------------------------------------------------------------

/// A process-wide countdown of durable storage steps (file create, write, truncate, fsync,
/// rename, directory sync, directory create or remove) that aborts the process at the step it
/// reaches zero: crash-at-every-step tests of admin operations (engine/tests/admin_crash.rs)
/// run an operation in a child process armed with N = 0, 1, 2, ... until it completes, and
/// open the data directory after each crash. Honoured only in builds with debug assertions (a
/// release build never aborts here: the check is compiled out).
pub mod crash_points {
    use std::sync::atomic::{AtomicI64, Ordering};

    /// Steps left before the abort; negative = disarmed.
    static STEPS_LEFT: AtomicI64 = AtomicI64::new(-1);

    /// Aborts the process at the `steps`-th durable step from now (0 = the next one); `None`
    /// disarms. Returns false when crash points are compiled out (release builds).
    pub fn arm(steps: Option<u64>) -> bool {
        let v = steps.map_or(-1, |s| i64::try_from(s).unwrap_or(i64::MAX));
        STEPS_LEFT.store(v, Ordering::SeqCst);
        cfg!(debug_assertions)
    }

    /// Called before each durable step by the storage backends and the control plane's direct
    /// file operations. `what` names the step (printed to stderr when it aborts).
    #[inline]
    pub fn step(what: &str) {
        #[cfg(debug_assertions)]
        {
            if STEPS_LEFT.load(Ordering::Relaxed) < 0 {
                return;
            }
            if STEPS_LEFT.fetch_sub(1, Ordering::SeqCst) == 0 {
                eprintln!("crash point: aborting before {what}");
                std::process::abort();
            }
        }
        #[cfg(not(debug_assertions))]
        let _ = what;
    }
}
