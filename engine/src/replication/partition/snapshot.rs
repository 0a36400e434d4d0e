//! Snapshots of a replicated partition (docs/replication.md, "Snapshots").
//!
//! A snapshot is "the partition log up to offset O, applied at Raft index I, term T". raft-rs
//! carries only its metadata (I, T, the voters) and 8 data bytes (O); the batches travel in
//! chunks that the follower asks the leader for, read from the leader's partition log (its
//! segments), as messages of the group's ordinary message path (`SLS1` envelope, next to the
//! protobuf Raft messages):
//!
//! 1. The leader's raft-rs wants to send a snapshot (a follower needs compacted entries):
//!    [`ReplicatedPartition::send`] writes O into it and sends it.
//! 2. The follower does not hand it to raft-rs yet (if raft-rs would restore it): it keeps it
//!    as a [`Transfer`]; its owner asks for chunks ([`ReplicatedPartition::request_chunk`]),
//!    the leader's owner answers them ([`ReplicatedPartition::take_chunk_requests`],
//!    [`ReplicatedPartition::send_chunk`]), and the follower's owner appends the batches to
//!    its partition log ([`ReplicatedPartition::take_chunks`]).
//! 3. Once the follower's partition log holds everything below O **durably**, the owner calls
//!    [`ReplicatedPartition::install_snapshot`]: raft-rs restores the snapshot, the replica
//!    writes a snapshot frame into `raft-log` and continues from I + 1.
//!
//! The follower's partition log is never cut: it holds committed batches only, which every
//! replica has at the same offsets; it is extended (or, when the leader's log starts above
//! its end because retention deleted what it needs, restarted at the leader's start).

use std::collections::BTreeMap;
use std::io;

use bytes::Bytes;
use raft::prelude::{ConfState, Message, Snapshot};
use raft::{GetEntriesContext, ProgressState, SnapshotStatus, StateRole};

use super::{ReplicatedPartition, header_of};
use crate::replication::disk::{DiskEntry, SnapBase};
use crate::replication::{NodeId, Outbox};
use crate::storage::Storage;

const MAGIC: &[u8; 4] = b"SLS1";
const KIND_REQUEST: u8 = 1;
const KIND_CHUNK: u8 = 2;
const HEAD_BYTES: usize = 4 + 1 + 8 * 5;
/// Batch bytes one chunk carries at most (one batch more if the first is larger).
pub const CHUNK_BYTES_MAX: usize = 1 << 20;
/// Ticks a follower waits for a chunk before asking again.
const REQUEST_RETRY_TICKS: u32 = 5;
/// Ticks a leader waits without hearing from a follower it sent a snapshot to before it gives
/// the snapshot up (raft-rs then probes the follower and sends a newer snapshot).
const SNAPSHOT_STALL_TICKS: u32 = 30;

/// A snapshot a follower is fetching: raft index and term, the partition log's end offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transfer {
    pub leader: NodeId,
    pub index: u64,
    pub term: u64,
    pub end_offset: u64,
}

/// A follower's request for snapshot data (on the leader).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRequest {
    /// The follower asking.
    pub to: NodeId,
    pub index: u64,
    pub from_offset: u64,
    pub end_offset: u64,
}

/// Snapshot data from the leader (on the follower): the leader's log start and consecutive
/// batches from the offset asked for (or from the log start, if that is higher).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub log_start: u64,
    pub batches: Vec<(u64, Bytes)>,
}

struct Incoming {
    t: Transfer,
    /// raft-rs's MsgSnapshot, stepped at install.
    msg: Message,
    chunks: Vec<Chunk>,
    /// Ticks since the last request or chunk.
    waited: u32,
    asked: Option<u64>,
}

/// The snapshot state of one replica (both roles).
#[derive(Default)]
pub(in crate::replication) struct SnapState {
    incoming: Option<Incoming>,
    requests: Vec<ChunkRequest>,
    /// Leader: followers sent a snapshot -> ticks since they were last heard from about it.
    sent: BTreeMap<NodeId, u32>,
    pub(super) installed: u64,
    pub(super) sent_count: u64,
}

enum Wire {
    Request(ChunkRequest, NodeId),
    Chunk(Chunk, u64),
}

fn put_u64(v: &mut Vec<u8>, x: u64) {
    v.extend_from_slice(&x.to_le_bytes());
}

fn head(kind: u8, from: NodeId, to: NodeId, index: u64, a: u64, b: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEAD_BYTES);
    v.extend_from_slice(MAGIC);
    v.push(kind);
    for x in [from, to, index, a, b] {
        put_u64(&mut v, x);
    }
    v
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    let s = b.get(at..at + 8)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Some(u64::from_le_bytes(a))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 4)?;
    let mut a = [0u8; 4];
    a.copy_from_slice(s);
    Some(u32::from_le_bytes(a))
}

/// Whether a group message is a snapshot message (a Raft message's first byte is a varint
/// field tag, never `S`).
pub(super) fn is_snapshot_wire(b: &[u8]) -> bool {
    b.starts_with(MAGIC)
}

/// Decodes a snapshot message; `None` if malformed (never panics; allocates no more than the
/// input holds). Returns the message and its (from, to).
fn decode(b: &Bytes) -> Option<(Wire, NodeId, NodeId)> {
    if b.len() < HEAD_BYTES || !is_snapshot_wire(b) {
        return None;
    }
    let kind = b[4];
    let from = u64_at(b, 5)?;
    let to = u64_at(b, 13)?;
    let index = u64_at(b, 21)?;
    let x = u64_at(b, 29)?;
    let y = u64_at(b, 37)?;
    match kind {
        KIND_REQUEST if b.len() == HEAD_BYTES => {
            let r = ChunkRequest {
                to: from,
                index,
                from_offset: x,
                end_offset: y,
            };
            Some((Wire::Request(r, from), from, to))
        }
        KIND_CHUNK => {
            let mut at = HEAD_BYTES;
            let mut batches = Vec::new();
            while at < b.len() {
                let base = u64_at(b, at)?;
                let len = u32_at(b, at + 8)? as usize;
                let start = at + 12;
                if b.len() - start < len {
                    return None;
                }
                batches.push((base, b.slice(start..start + len)));
                at = start + len;
            }
            let c = Chunk {
                log_start: x,
                batches,
            };
            Some((Wire::Chunk(c, index), from, to))
        }
        _ => None,
    }
}

/// raft-rs's snapshot for a snapshot frame (its data: the end offset).
pub fn snapshot_of(base: SnapBase, conf: ConfState) -> Snapshot {
    let mut s = Snapshot {
        data: base.end_offset.to_le_bytes().to_vec().into(),
        ..Snapshot::default()
    };
    let m = s.mut_metadata();
    m.index = base.index;
    m.term = base.term;
    m.set_conf_state(conf);
    s
}

fn end_offset_of(s: &Snapshot) -> Option<u64> {
    (s.data.len() == 8).then(|| u64_at(&s.data, 0)).flatten()
}

impl<S: Storage, T> ReplicatedPartition<S, T> {
    /// Leader: an outgoing MsgSnapshot gets the partition log's end offset at its index.
    pub(super) fn prepare_snapshot(&mut self, m: &mut Message) {
        let index = m.get_snapshot().get_metadata().index;
        let end = self.end_offset_at(index);
        m.mut_snapshot().data = end.to_le_bytes().to_vec().into();
        self.snap.sent.insert(m.to, 0);
        self.snap.sent_count += 1;
        tracing::info!(
            group = self.group,
            to = m.to,
            index,
            end_offset = end,
            "sending a snapshot"
        );
    }

    /// One past the last offset of the batches up to Raft index `index`.
    fn end_offset_at(&self, index: u64) -> u64 {
        let i = self.side.partition_point(|s| s.index <= index);
        if i == 0 {
            self.compacted_end_offset
        } else {
            self.side[i - 1].last_offset + 1
        }
    }

    /// Follower: a MsgSnapshot that raft-rs would restore is kept until the partition log
    /// holds its data (`None`: kept or dropped); others go to raft-rs (`Some`).
    pub(super) fn intercept_snapshot(&mut self, m: Message) -> Option<Message> {
        let meta = m.get_snapshot().get_metadata();
        let (index, term) = (meta.index, meta.term);
        let log = &self.node.raft.raft_log;
        if index < log.committed || log.match_term(index, term) || m.term < self.term() {
            return Some(m);
        }
        if !super::membership::conf_names(meta.get_conf_state(), self.id) {
            tracing::warn!(
                group = self.group,
                "snapshot of another replica set dropped"
            );
            return None;
        }
        let Some(end_offset) = end_offset_of(m.get_snapshot()) else {
            tracing::warn!(group = self.group, "malformed snapshot dropped");
            return None;
        };
        if end_offset < self.high_watermark {
            tracing::warn!(
                group = self.group,
                "snapshot below the high watermark dropped"
            );
            return None;
        }
        if self
            .snap
            .incoming
            .as_ref()
            .is_some_and(|i| i.t.leader == m.from && i.t.index >= index)
        {
            return None;
        }
        tracing::info!(
            group = self.group,
            leader = m.from,
            index,
            end_offset,
            "fetching a snapshot"
        );
        self.snap.incoming = Some(Incoming {
            t: Transfer {
                leader: m.from,
                index,
                term,
                end_offset,
            },
            msg: m,
            chunks: Vec::new(),
            waited: 0,
            asked: None,
        });
        None
    }

    /// A snapshot message from peer `from`; `false`: dropped.
    pub(super) fn step_snapshot_wire(&mut self, from: NodeId, bytes: &[u8]) -> bool {
        let b = Bytes::copy_from_slice(bytes);
        let Some((wire, f, to)) = decode(&b) else {
            tracing::warn!(group = self.group, "undecodable snapshot message dropped");
            return false;
        };
        if f != from || to != self.id {
            return false;
        }
        match wire {
            Wire::Request(r, peer) => {
                let ok = self.is_leader() && self.is_member(peer) && peer != self.id;
                if ok {
                    self.snap.sent.insert(peer, 0);
                    self.snap.requests.retain(|q| q.to != peer);
                    self.snap.requests.push(r);
                }
                ok
            }
            Wire::Chunk(c, index) => match self.snap.incoming.as_mut() {
                Some(i) if i.t.leader == from && i.t.index == index => {
                    i.chunks.push(c);
                    i.waited = 0;
                    i.asked = None;
                    true
                }
                _ => false,
            },
        }
    }

    /// Every tick: a leader gives up snapshots whose follower went quiet; a follower counts
    /// the wait for its chunk.
    pub(super) fn tick_snapshots(&mut self) {
        if let Some(i) = self.snap.incoming.as_mut() {
            i.waited = i.waited.saturating_add(1);
        }
        // Raft caught up past the snapshot another way (a new leader had the entries).
        if self
            .snap
            .incoming
            .as_ref()
            .is_some_and(|i| i.t.index <= self.node.raft.raft_log.committed)
        {
            self.snap.incoming = None;
        }
        if self.snap.sent.is_empty() {
            return;
        }
        if self.node.raft.state != StateRole::Leader {
            self.snap.sent.clear();
            self.snap.requests.clear();
            return;
        }
        let mut give_up = Vec::new();
        let prs = self.node.raft.prs();
        self.snap.sent.retain(|peer, ticks| {
            *ticks += 1;
            let in_snapshot = prs
                .get(*peer)
                .is_some_and(|pr| pr.state == ProgressState::Snapshot);
            if in_snapshot && *ticks > SNAPSHOT_STALL_TICKS {
                give_up.push(*peer);
            }
            in_snapshot && *ticks <= SNAPSHOT_STALL_TICKS
        });
        for peer in give_up {
            self.node.report_snapshot(peer, SnapshotStatus::Failure);
        }
    }

    /// Whether the owner has snapshot work here: a transfer to run, or requests to answer.
    pub fn has_snapshot_work(&self) -> bool {
        self.snap.incoming.is_some() || !self.snap.requests.is_empty()
    }

    /// Whether [`Self::maybe_rotate_log`] may rotate (cheap; it checks the rest).
    pub fn may_rotate_log(&self, min_bytes: u64) -> bool {
        self.compacted_index > self.disk_base_index && self.disk.log_bytes() > min_bytes
    }

    /// The snapshot this follower is fetching, if any.
    pub fn transfer(&self) -> Option<Transfer> {
        self.snap.incoming.as_ref().map(|i| i.t)
    }

    /// Chunks received for the transfer since the last call.
    pub fn take_chunks(&mut self) -> Vec<Chunk> {
        self.snap
            .incoming
            .as_mut()
            .map(|i| std::mem::take(&mut i.chunks))
            .unwrap_or_default()
    }

    /// Asks the leader for the transfer's batches from `from_offset` (the partition log's
    /// end), unless that was asked recently.
    pub fn request_chunk(&mut self, from_offset: u64, out: &mut Outbox) {
        let (group, id) = (self.group, self.id);
        let Some(i) = self.snap.incoming.as_mut() else {
            return;
        };
        if i.asked == Some(from_offset) && i.waited < REQUEST_RETRY_TICKS {
            return;
        }
        i.asked = Some(from_offset);
        i.waited = 0;
        let t = i.t;
        let m = head(
            KIND_REQUEST,
            id,
            t.leader,
            t.index,
            from_offset,
            t.end_offset,
        );
        out.push(t.leader, group, Bytes::from(m));
    }

    /// Installs the transfer's snapshot: the owner's partition log holds, durably, every batch
    /// below its end offset. raft-rs restores it (the next ready persists it).
    pub fn install_snapshot(&mut self) {
        let Some(i) = self.snap.incoming.take() else {
            return;
        };
        tracing::info!(
            group = self.group,
            index = i.t.index,
            end_offset = i.t.end_offset,
            "installing a snapshot"
        );
        let _ = self.node.step(i.msg);
        self.after_call();
    }

    /// Gives a transfer up (its data cannot be had here); raft-rs sends another one later.
    pub fn abandon_transfer(&mut self) {
        self.snap.incoming = None;
    }

    /// Leader: the followers' requests for snapshot data since the last call.
    pub fn take_chunk_requests(&mut self) -> Vec<ChunkRequest> {
        std::mem::take(&mut self.snap.requests)
    }

    /// Leader: answers a request with the partition log's start and batches (consecutive,
    /// from the offset asked for or the log start; each `(base offset, bytes)`).
    pub fn send_chunk(
        &mut self,
        req: &ChunkRequest,
        log_start: u64,
        batches: &[(u64, Bytes)],
        out: &mut Outbox,
    ) {
        let mut m = head(KIND_CHUNK, self.id, req.to, req.index, log_start, 0);
        for (base, data) in batches {
            let Ok(len) = u32::try_from(data.len()) else {
                break;
            };
            put_u64(&mut m, *base);
            m.extend_from_slice(&len.to_le_bytes());
            m.extend_from_slice(data);
        }
        out.push(req.to, self.group, Bytes::from(m));
    }

    /// Persists a snapshot raft-rs restored (a ready's): a snapshot frame in `raft-log`, the
    /// in-memory log and side index restart after it.
    pub(super) async fn persist_snapshot(&mut self, snap: &Snapshot) -> io::Result<()> {
        let meta = snap.get_metadata();
        let end_offset = end_offset_of(snap).ok_or_else(|| io::Error::other("bad snapshot"))?;
        let base = SnapBase {
            index: meta.index,
            term: meta.term,
            end_offset,
        };
        self.disk.append_snapshot(base).await?;
        self.node
            .mut_store()
            .wl()
            .apply_snapshot(snap.clone())
            .map_err(|e| io::Error::other(format!("raft snapshot: {e}")))?;
        self.side.clear();
        self.by_producer.clear();
        self.compacted_index = base.index;
        self.compacted_term = base.term;
        self.compacted_end_offset = end_offset;
        self.disk_base_index = base.index;
        self.applied = self.applied.max(base.index);
        self.high_watermark = self.high_watermark.max(end_offset);
        self.snap.installed += 1;
        self.snapshot_conf(base.index, meta.get_conf_state())
            .await?;
        Ok(())
    }

    /// Rotates `raft-log` once it holds more than `min_bytes` and twice the bytes of the
    /// entries still in memory: the new file starts with a snapshot frame at the compacted
    /// index (the partition log holds everything below it durably) and keeps the retained
    /// window. `true`: rotated.
    pub async fn maybe_rotate_log(&mut self, min_bytes: u64) -> io::Result<bool> {
        let file = self.disk.log_bytes();
        if !self.may_rotate_log(min_bytes) {
            return Ok(false);
        }
        let in_memory: u64 = self.side.iter().map(|s| s.data.len() as u64 + 32).sum();
        if file <= in_memory.saturating_mul(2) {
            return Ok(false);
        }
        let store = self.node.store();
        let first = raft::Storage::first_index(store).unwrap_or(1);
        let last = raft::Storage::last_index(store).unwrap_or(0);
        let entries = if last >= first {
            raft::Storage::entries(
                store,
                first,
                last + 1,
                None,
                GetEntriesContext::empty(false),
            )
            .map_err(|e| io::Error::other(format!("raft log: {e}")))?
        } else {
            Vec::new()
        };
        let disk: Vec<DiskEntry> = entries.iter().map(super::disk_entry).collect();
        let base = SnapBase {
            index: self.compacted_index,
            term: self.compacted_term,
            end_offset: self.compacted_end_offset,
        };
        self.disk.rewrite(base, &disk).await?;
        self.disk_base_index = base.index;
        Ok(true)
    }

    /// Snapshots this replica installed / sent, in this process.
    pub fn snapshot_counts(&self) -> (u64, u64) {
        (self.snap.installed, self.snap.sent_count)
    }

    /// Entries up to this Raft index are out of memory (and their batches out of
    /// [`Self::side`]): the partition log holds them.
    pub fn compacted_index(&self) -> u64 {
        self.compacted_index
    }

    /// Where [`Self::side`] starts (one past the compacted batches).
    pub fn compacted_end_offset(&self) -> u64 {
        self.compacted_end_offset
    }
}

/// Checks a chunk's batches: each a valid batch, consecutive offsets from the first.
pub fn chunk_is_dense(c: &Chunk) -> bool {
    let mut next = None;
    for (base, data) in &c.batches {
        let Some((count, _)) = header_of(data) else {
            return false;
        };
        if next.is_some_and(|n| n != *base) {
            return false;
        }
        next = Some(base + count);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use protobuf::Message as _;
    use raft::prelude::MessageType;

    // Proves: the snapshot message decoder never panics on arbitrary bytes after the magic
    // and refuses truncated chunks.
    #[test]
    fn decode_refuses_truncated_and_garbage() {
        let mut m = head(KIND_CHUNK, 1, 2, 7, 0, 0);
        put_u64(&mut m, 0);
        m.extend_from_slice(&100u32.to_le_bytes());
        m.extend_from_slice(&[0u8; 10]);
        assert!(decode(&Bytes::from(m)).is_none());
        let mut x: u64 = 0x1234_5678;
        for len in 0..200 {
            let mut v = MAGIC.to_vec();
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                v.push(x as u8);
            }
            let _ = decode(&Bytes::from(v));
        }
        let r = head(KIND_REQUEST, 3, 1, 9, 10, 20);
        match decode(&Bytes::from(r)) {
            Some((Wire::Request(q, p), 3, 1)) => {
                assert_eq!((p, q.index, q.from_offset, q.end_offset), (3, 9, 10, 20));
            }
            _ => panic!("request not decoded"),
        }
    }

    #[test]
    fn is_snapshot_wire_is_not_a_raft_message() {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgHeartbeat);
        m.to = 2;
        m.from = 1;
        let b = m.write_to_bytes().unwrap_or_default();
        assert!(!is_snapshot_wire(&b));
    }
}
