//! A replica's Raft files, written through [`Storage`] (so `CrashStorage` and the simulator can
//! crash them):
//!
//! - `raft-log`: append-only frames `[magic u32][index u64][term u64][len u32][crc32c u32][data]`
//!   (little endian; the CRC covers index, term and data). A frame whose index is not above the
//!   previous one overwrites the suffix from that index on (Raft's truncation of an uncommitted
//!   suffix), so the file is never rewritten in place except its last partial block. Recovery
//!   reads frames until the first one that is short, has a bad magic or a bad CRC (a torn tail).
//!   A snapshot frame (magic `RFS1`, same layout, 8 data bytes: the partition log's end offset)
//!   replaces everything before it: the log restarts after that index (a follower that installed
//!   a snapshot, or the first frame of a rotated file; [`RaftDisk::rewrite`]).
//!   A configuration-change entry is a typed frame (magic `RFT1`, same layout, its data the
//!   entry type byte (1: `EntryConfChange`, 2: `EntryConfChangeV2`) then the entry's data);
//!   record batches and no-ops stay `RFL1` frames, so files written before membership changes
//!   read back unchanged.
//! - `raft-state`: the hard state (term, vote, commit) in two block slots; a write goes to the
//!   slot that does not hold the last synced state,
//!   each `[magic u32][seq u64][term u64][vote u64][commit u64][crc32c u32]`: a torn write of one
//!   slot leaves the other, so the state file is replaced atomically without a rename. Once a
//!   replica has applied a configuration change, its slots are `RST2`:
//!   `[magic u32][seq u64][term u64][vote u64][commit u64][conf index u64][auto_leave u8]`
//!   `4 x ([n u32][n x u64])` (voters, learners, outgoing voters, next learners) `[crc32c u32]`:
//!   the applied configuration and the index of the entry (or snapshot) it was applied at.
//!
//! Every write covers whole [`BLOCK_BYTES`] blocks (direct I/O): the last partial block of the
//! log is kept in memory and rewritten with the next append.

use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytes::Bytes;

use crate::storage::{BLOCK_BYTES, IoBuf, LogFile, Storage, align_down, align_up};

const FRAME_MAGIC: u32 = 0x5246_4c31; // "RFL1"
const SNAP_MAGIC: u32 = 0x5246_5331; // "RFS1"
const TYPED_MAGIC: u32 = 0x5246_5431; // "RFT1"
/// A rotation's new file, renamed over `raft-log` once complete (removed at open otherwise).
const NEW_LOG: &str = "raft-log.new";
const STATE_MAGIC: u32 = 0x5253_5431; // "RST1"
const STATE_CONF_MAGIC: u32 = 0x5253_5432; // "RST2"
/// Node ids per list of a stored configuration (a state slot is one block).
pub const CONF_IDS_MAX: usize = 100;
const FRAME_HEAD_BYTES: usize = 4 + 8 + 8 + 4 + 4;
const STATE_BYTES: usize = 4 + 8 + 8 + 8 + 8 + 4;

/// The type of a stored entry (raft-rs's `EntryType`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum EntryKind {
    /// A record batch, or a leader's no-op (empty).
    #[default]
    Normal,
    ConfChange,
    ConfChangeV2,
}

impl EntryKind {
    fn byte(self) -> u8 {
        match self {
            EntryKind::Normal => 0,
            EntryKind::ConfChange => 1,
            EntryKind::ConfChangeV2 => 2,
        }
    }
    fn of_byte(b: u8) -> Option<Self> {
        match b {
            0 => Some(EntryKind::Normal),
            1 => Some(EntryKind::ConfChange),
            2 => Some(EntryKind::ConfChangeV2),
            _ => None,
        }
    }
}

/// One Raft log entry as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskEntry {
    pub index: u64,
    pub term: u64,
    pub kind: EntryKind,
    pub data: Bytes,
}

/// An applied Raft configuration (raft-rs's `ConfState`) and the index it was applied at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskConf {
    pub index: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    pub voters_outgoing: Vec<u64>,
    pub learners_next: Vec<u64>,
    pub auto_leave: bool,
}

/// Where the log starts: every entry up to `index` (of term `term`) is in the state machine
/// (the partition log, which ends at `end_offset` there) and no longer in this file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SnapBase {
    pub index: u64,
    pub term: u64,
    pub end_offset: u64,
}

/// Term, vote and commit index.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskState {
    pub term: u64,
    pub vote: u64,
    pub commit: u64,
}

/// What a replica's directory held at open.
#[derive(Debug, Default)]
pub struct Recovered {
    /// The last snapshot frame (entries follow it from `index + 1`).
    pub base: Option<SnapBase>,
    pub entries: Vec<DiskEntry>,
    pub state: DiskState,
    /// The last configuration saved ([`RaftDisk::save_conf`]); `None`: never changed.
    pub conf: Option<DiskConf>,
    /// Bytes cut from the log's tail (a torn or unsynced frame).
    pub cut_bytes: u64,
}

/// The open Raft files of one replica.
pub struct RaftDisk<S: Storage> {
    storage: S,
    dir: PathBuf,
    log: S::File,
    state: S::File,
    /// Logical length of the log file (end of the last good frame).
    log_len: u64,
    /// The bytes of the log's last partial block (`log_len % BLOCK_BYTES` of them).
    tail: Vec<u8>,
    state_seq: u64,
    /// The state slot (0 or 1) holding the last state known durable: writes go to the other
    /// one, so a lost or torn unsynced write always leaves it.
    durable_slot: u64,
    /// The slot of the last state write.
    written_slot: u64,
    /// Term and vote of the last state written.
    saved: DiskState,
    /// The configuration every state write carries (once one was saved).
    conf: Option<DiskConf>,
    /// Log writes since the last log sync.
    log_dirty: bool,
    /// State writes since the last state sync.
    state_written: bool,
    /// A state write since the last state sync changed the term or the vote: the next
    /// [`RaftDisk::sync`] must cover it (a write that only moves the commit need not: Raft
    /// learns the commit again from the leader).
    state_must_sync: bool,
}

fn put_u32(v: &mut Vec<u8>, x: u32) {
    v.extend_from_slice(&x.to_le_bytes());
}
fn put_u64(v: &mut Vec<u8>, x: u64) {
    v.extend_from_slice(&x.to_le_bytes());
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn usize_of(n: u64) -> io::Result<usize> {
    usize::try_from(n).map_err(|_| io::Error::other("raft file larger than memory"))
}

/// Encodes one entry frame (typed if not a normal entry).
fn frame(e: &DiskEntry, out: &mut Vec<u8>) -> io::Result<()> {
    if e.kind == EntryKind::Normal {
        return frame_with(FRAME_MAGIC, e, out);
    }
    let mut data = Vec::with_capacity(1 + e.data.len());
    data.push(e.kind.byte());
    data.extend_from_slice(&e.data);
    let typed = DiskEntry {
        data: Bytes::from(data),
        ..e.clone()
    };
    frame_with(TYPED_MAGIC, &typed, out)
}

/// Encodes a snapshot frame.
fn snap_frame(b: SnapBase, out: &mut Vec<u8>) -> io::Result<()> {
    let e = DiskEntry {
        index: b.index,
        term: b.term,
        kind: EntryKind::Normal,
        data: Bytes::copy_from_slice(&b.end_offset.to_le_bytes()),
    };
    frame_with(SNAP_MAGIC, &e, out)
}

fn frame_with(magic: u32, e: &DiskEntry, out: &mut Vec<u8>) -> io::Result<()> {
    let len = u32::try_from(e.data.len()).map_err(|_| io::Error::other("raft entry too large"))?;
    let mut crc = crc32c::crc32c(&e.index.to_le_bytes());
    crc = crc32c::crc32c_append(crc, &e.term.to_le_bytes());
    crc = crc32c::crc32c_append(crc, &e.data);
    put_u32(out, magic);
    put_u64(out, e.index);
    put_u64(out, e.term);
    put_u32(out, len);
    put_u32(out, crc);
    out.extend_from_slice(&e.data);
    Ok(())
}

/// Parses frames from the start of `b`; returns the last snapshot base, the entries after it
/// (suffix overwrites applied) and the length of the good prefix.
fn parse_log(b: &[u8]) -> (Option<SnapBase>, Vec<DiskEntry>, usize) {
    let mut base: Option<SnapBase> = None;
    let mut entries: Vec<DiskEntry> = Vec::new();
    let mut at = 0;
    while b.len() - at >= FRAME_HEAD_BYTES {
        let magic = u32_at(b, at);
        if magic != FRAME_MAGIC && magic != SNAP_MAGIC && magic != TYPED_MAGIC {
            break;
        }
        let index = u64_at(b, at + 4);
        let term = u64_at(b, at + 12);
        let len = u32_at(b, at + 20) as usize;
        let crc = u32_at(b, at + 24);
        let start = at + FRAME_HEAD_BYTES;
        if b.len() - start < len {
            break;
        }
        let data = &b[start..start + len];
        let mut c = crc32c::crc32c(&index.to_le_bytes());
        c = crc32c::crc32c_append(c, &term.to_le_bytes());
        c = crc32c::crc32c_append(c, data);
        if c != crc {
            break;
        }
        if magic == SNAP_MAGIC {
            // A snapshot never goes back, and carries its end offset.
            if len != 8 || index == 0 || base.is_some_and(|x| index < x.index) {
                break;
            }
            base = Some(SnapBase {
                index,
                term,
                end_offset: u64_at(data, 0),
            });
            entries.clear();
            at = start + len;
            continue;
        }
        // Index 0 is never an entry; a frame at or below the base, or that leaves a hole, is
        // not ours either.
        let floor = base.map_or(1, |x| x.index + 1);
        let lowest = if base.is_some() { floor } else { index };
        let first = entries.first().map_or(lowest, |e| e.index);
        if index < floor || index < first || index > first + entries.len() as u64 {
            break;
        }
        let (kind, data) = if magic == TYPED_MAGIC {
            match data
                .split_first()
                .and_then(|(k, d)| Some((EntryKind::of_byte(*k)?, d)))
            {
                Some(x) => x,
                None => break,
            }
        } else {
            (EntryKind::Normal, data)
        };
        entries.truncate(usize::try_from(index - first).unwrap_or(usize::MAX));
        entries.push(DiskEntry {
            index,
            term,
            kind,
            data: Bytes::copy_from_slice(data),
        });
        at = start + len;
    }
    (base, entries, at)
}

fn parse_state(b: &[u8]) -> Option<(u64, DiskState, Option<DiskConf>)> {
    if b.len() >= STATE_BYTES && u32_at(b, 0) == STATE_CONF_MAGIC {
        return parse_state_conf(b);
    }
    if b.len() < STATE_BYTES || u32_at(b, 0) != STATE_MAGIC {
        return None;
    }
    let crc = u32_at(b, STATE_BYTES - 4);
    if crc32c::crc32c(&b[..STATE_BYTES - 4]) != crc {
        return None;
    }
    Some((
        u64_at(b, 4),
        DiskState {
            term: u64_at(b, 12),
            vote: u64_at(b, 20),
            commit: u64_at(b, 28),
        },
        None,
    ))
}

/// An `RST2` slot (see the module doc); `None` if torn or malformed.
fn parse_state_conf(b: &[u8]) -> Option<(u64, DiskState, Option<DiskConf>)> {
    let mut at = 4 + 8 * 4;
    let conf_index = u64_at(b.get(..at + 9)?, at);
    let auto_leave = match b[at + 8] {
        0 => false,
        1 => true,
        _ => return None,
    };
    at += 9;
    let mut lists: [Vec<u64>; 4] = Default::default();
    for l in &mut lists {
        let n = u32_at(b.get(..at + 4)?, at) as usize;
        at += 4;
        if n > CONF_IDS_MAX {
            return None;
        }
        let ids = b.get(at..at + 8 * n)?;
        *l = (0..n).map(|i| u64_at(ids, 8 * i)).collect();
        at += 8 * n;
    }
    let crc = u32_at(b.get(..at + 4)?, at);
    if crc32c::crc32c(&b[..at]) != crc {
        return None;
    }
    let [voters, learners, voters_outgoing, learners_next] = lists;
    Some((
        u64_at(b, 4),
        DiskState {
            term: u64_at(b, 12),
            vote: u64_at(b, 20),
            commit: u64_at(b, 28),
        },
        Some(DiskConf {
            index: conf_index,
            voters,
            learners,
            voters_outgoing,
            learners_next,
            auto_leave,
        }),
    ))
}

async fn read_all<F: LogFile>(f: &F) -> io::Result<Vec<u8>> {
    let size = f.size().await?;
    let mut out = Vec::with_capacity(usize_of(size)?);
    let mut pos = 0;
    while pos < size {
        let chunk = (size - pos).min(1 << 20);
        let b = f.read_at(pos, usize_of(align_up(chunk))?).await?;
        if b.is_empty() {
            break;
        }
        out.extend_from_slice(&b);
        pos += b.len() as u64;
    }
    out.truncate(usize_of(size)?);
    Ok(out)
}

impl<S: Storage> RaftDisk<S> {
    /// Opens (creating) the Raft files in `dir` and reads them back.
    pub async fn open(storage: S, dir: &Path) -> io::Result<(Self, Recovered)> {
        storage.create_dir_all(dir)?;
        let log_path = dir.join("raft-log");
        let state_path = dir.join("raft-state");
        // A rotation that did not reach its rename: the old file is whole.
        match storage.remove(&dir.join(NEW_LOG)).await {
            Ok(()) => storage.sync_dir(dir).await?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let log = storage.open(&log_path).await?;
        let state = storage.open(&state_path).await?;
        // Both empty: new, or created by an open that died before its directory sync (nothing
        // is written before that sync), so their names may not be durable yet.
        let fresh = log.size().await? == 0 && state.size().await? == 0;
        // Always: after a process kill the page cache may hold writes that were never synced;
        // what this replica tells its peers it has must be on disk first. New names must
        // survive a power loss before anything in them counts.
        log.sync().await?;
        state.sync().await?;
        if fresh {
            storage.sync_dir(dir).await?;
        }
        let log_bytes = read_all(&log).await?;
        let (base, entries, good) = parse_log(&log_bytes);
        let state_bytes = read_all(&state).await?;
        let slots = [
            parse_state(&state_bytes),
            state_bytes.get(BLOCK_BYTES..).and_then(parse_state),
        ];
        // The newest valid slot is the state (both files were just synced: it is durable).
        let (durable_slot, (state_seq, disk_state, conf)) = slots
            .into_iter()
            .zip(0u64..)
            .filter_map(|(s, slot)| s.map(|s| (slot, s)))
            .max_by_key(|(_, (seq, _, _))| *seq)
            .unwrap_or((1, (0, DiskState::default(), None)));
        let log_len = good as u64;
        let tail_start = usize_of(align_down(log_len))?;
        let tail = log_bytes[tail_start..good].to_vec();
        let cut_bytes = (log_bytes.len() - good) as u64;
        let disk = RaftDisk {
            storage,
            dir: dir.to_path_buf(),
            log,
            state,
            log_len,
            tail,
            state_seq,
            durable_slot,
            written_slot: durable_slot,
            saved: disk_state,
            conf: conf.clone(),
            log_dirty: false,
            state_written: false,
            state_must_sync: false,
        };
        if cut_bytes > 0 {
            // Cut the bad tail so that a later append cannot leave good frames behind garbage.
            disk.log.truncate(log_len).await?;
            disk.log.sync().await?;
        }
        Ok((
            disk,
            Recovered {
                base,
                entries,
                state: disk_state,
                conf,
                cut_bytes,
            },
        ))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// Bytes in the log file.
    pub fn log_bytes(&self) -> u64 {
        self.log_len
    }

    /// Appends entries (the first may overwrite a suffix: its frame says so). Not durable until
    /// [`Self::sync`].
    pub async fn append(&mut self, entries: &[DiskEntry]) -> io::Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut bytes = std::mem::take(&mut self.tail);
        let tail_len = bytes.len();
        for e in entries {
            if let Err(err) = frame(e, &mut bytes) {
                bytes.truncate(tail_len);
                self.tail = bytes;
                return Err(err);
            }
        }
        self.write_tail(bytes, tail_len).await
    }

    /// Appends a snapshot frame: the log restarts after `base.index` (a follower installing a
    /// snapshot). Not durable until [`Self::sync`].
    pub async fn append_snapshot(&mut self, base: SnapBase) -> io::Result<()> {
        let mut bytes = std::mem::take(&mut self.tail);
        let tail_len = bytes.len();
        if let Err(err) = snap_frame(base, &mut bytes) {
            bytes.truncate(tail_len);
            self.tail = bytes;
            return Err(err);
        }
        self.write_tail(bytes, tail_len).await
    }

    /// Writes `bytes` (the kept partial block, `tail_len` bytes, then new frames) at the log's
    /// last block boundary.
    async fn write_tail(&mut self, mut bytes: Vec<u8>, tail_len: usize) -> io::Result<()> {
        let new_len = self.log_len + (bytes.len() - tail_len) as u64;
        let write_at = align_down(self.log_len);
        let padded = usize_of(align_up(bytes.len() as u64))?;
        let mut buf = S::alloc_buf(padded);
        {
            let b = buf.as_bytes_mut();
            b[..bytes.len()].copy_from_slice(&bytes);
            b[bytes.len()..].fill(0);
        }
        let result = self.log.write_at(Rc::new(buf), write_at).await;
        let keep_from = usize_of(align_down(new_len) - write_at)?;
        match result {
            Ok(()) => {
                self.tail = bytes[keep_from..].to_vec();
                self.log_len = new_len;
                self.log_dirty = true;
                Ok(())
            }
            Err(e) => {
                bytes.truncate(tail_len);
                self.tail = bytes;
                Err(e)
            }
        }
    }

    /// Rotates the log: a new file holding the snapshot frame `base` and `entries` (those after
    /// it, in order) replaces `raft-log`. Everything written before is synced first; the new
    /// file is written and fsynced under `raft-log.new`, renamed over `raft-log`, and the
    /// directory fsynced before anything else is appended, so a crash at any point leaves the
    /// old file or the new one, whole (a leftover `raft-log.new` is removed at open).
    pub async fn rewrite(&mut self, base: SnapBase, entries: &[DiskEntry]) -> io::Result<()> {
        self.sync().await?;
        let mut bytes = Vec::new();
        snap_frame(base, &mut bytes)?;
        for e in entries {
            frame(e, &mut bytes)?;
        }
        let new_path = self.dir.join(NEW_LOG);
        let log_path = self.dir.join("raft-log");
        let f = self.storage.open(&new_path).await?;
        f.truncate(0).await?;
        let padded = usize_of(align_up(bytes.len() as u64))?;
        let mut buf = S::alloc_buf(padded);
        {
            let b = buf.as_bytes_mut();
            b[..bytes.len()].copy_from_slice(&bytes);
            b[bytes.len()..].fill(0);
        }
        f.write_at(Rc::new(buf), 0).await?;
        f.sync().await?;
        drop(f);
        self.storage.rename(&new_path, &log_path).await?;
        self.storage.sync_dir(&self.dir).await?;
        self.log = self.storage.open(&log_path).await?;
        let len = bytes.len() as u64;
        self.tail = bytes[usize_of(align_down(len))?..].to_vec();
        self.log_len = len;
        Ok(())
    }

    /// Writes the hard state into the slot that does not hold the last durable state. Not
    /// durable until [`Self::sync`]; a write that changes only the commit is not even made
    /// durable by it unless the log is synced too (see [`Self::sync`]).
    pub async fn save_state(&mut self, s: DiskState) -> io::Result<()> {
        let seq = self.state_seq + 1;
        let mut v = Vec::with_capacity(STATE_BYTES);
        let magic = if self.conf.is_some() {
            STATE_CONF_MAGIC
        } else {
            STATE_MAGIC
        };
        put_u32(&mut v, magic);
        put_u64(&mut v, seq);
        put_u64(&mut v, s.term);
        put_u64(&mut v, s.vote);
        put_u64(&mut v, s.commit);
        if let Some(c) = &self.conf {
            put_u64(&mut v, c.index);
            v.push(u8::from(c.auto_leave));
            for l in [&c.voters, &c.learners, &c.voters_outgoing, &c.learners_next] {
                put_u32(&mut v, u32::try_from(l.len()).unwrap_or(u32::MAX));
                for id in l {
                    put_u64(&mut v, *id);
                }
            }
        }
        let crc = crc32c::crc32c(&v);
        put_u32(&mut v, crc);
        let mut buf = S::alloc_buf(BLOCK_BYTES);
        {
            let b = buf.as_bytes_mut();
            b[..v.len()].copy_from_slice(&v);
            b[v.len()..].fill(0);
        }
        let slot = 1 - self.durable_slot;
        self.state
            .write_at(Rc::new(buf), slot * BLOCK_BYTES as u64)
            .await?;
        self.state_seq = seq;
        self.written_slot = slot;
        self.state_written = true;
        if s.term != self.saved.term || s.vote != self.saved.vote {
            self.state_must_sync = true;
        }
        self.saved = s;
        Ok(())
    }

    /// Saves an applied configuration (with the last hard state written): from now on every
    /// state write carries it. The next [`Self::sync`] makes it durable. Refused if a list
    /// holds more than [`CONF_IDS_MAX`] ids.
    pub async fn save_conf(&mut self, conf: DiskConf) -> io::Result<()> {
        let lists = [
            &conf.voters,
            &conf.learners,
            &conf.voters_outgoing,
            &conf.learners_next,
        ];
        if lists.iter().any(|l| l.len() > CONF_IDS_MAX) {
            return Err(io::Error::other("raft configuration too large"));
        }
        let previous = self.conf.replace(conf);
        let s = self.saved;
        if let Err(e) = self.save_state(s).await {
            self.conf = previous;
            return Err(e);
        }
        self.state_must_sync = true;
        Ok(())
    }

    /// The configuration last saved.
    pub fn conf(&self) -> Option<&DiskConf> {
        self.conf.as_ref()
    }

    /// fdatasyncs what must be durable: the log if it was written, the state if its term or
    /// vote changed, or if it was written and the log is synced anyway (both syncs in flight
    /// together). A state write that only moved the commit index waits for a later sync: the
    /// leader's round that learns a commit costs no fsync (after a power loss a replica may
    /// recover an older commit, which it learns again from the leader; it never recovers an
    /// older term or vote than one it acted on, since those writes are always synced).
    pub async fn sync(&mut self) -> io::Result<()> {
        let sync_log = self.log_dirty;
        let sync_state = self.state_must_sync || (self.state_written && sync_log);
        match (sync_log, sync_state) {
            (false, false) => return Ok(()),
            (true, false) => self.log.sync().await?,
            (false, true) => self.state.sync().await?,
            (true, true) => {
                let (a, b) = futures_lite::future::zip(self.log.sync(), self.state.sync()).await;
                a?;
                b?;
            }
        }
        if sync_log {
            self.log_dirty = false;
        }
        if sync_state {
            self.state_written = false;
            self.state_must_sync = false;
            self.durable_slot = self.written_slot;
        }
        Ok(())
    }
}
