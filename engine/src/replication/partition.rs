//! One replica of a replicated partition: a raft-rs [`RawNode`] over the replica's Raft files
//! ([`RaftDisk`]), the side index (Raft index/term <-> offset range of every record batch in
//! the Raft log), the commit index mapped to the high watermark, and the producers waiting for
//! `durable` or `all` acks (docs/replication.md).
//!
//! Invariants checked here (`assert!`, programmer errors):
//! - the side index is dense: every batch starts at the previous batch's end offset, its Raft
//!   indexes increase, and it mirrors the Raft log exactly (same indexes, same terms);
//! - Raft never overwrites a committed entry (a truncation starts above the commit index);
//! - the commit index and the high watermark never move back within a process lifetime.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::path::Path;

use bytes::Bytes;
use protobuf::Message as _;
use raft::prelude::{Entry, EntryType, HardState, Message, MessageType};
use raft::storage::MemStorage;
use raft::{RawNode, Ready, StateRole};
use rand_xoshiro::Xoshiro256PlusPlus;
use rand_xoshiro::rand_core::{Rng, SeedableRng};

use super::disk::{DiskEntry, DiskState, EntryKind, RaftDisk};
use super::{GroupId, NodeId, Outbox, ReplAcks, ReplError, ReplicaConfig};
use crate::api::ProduceAck;
use crate::storage::Storage;

mod membership;
mod snapshot;
pub use membership::MoveStep;
pub use snapshot::{
    CHUNK_BYTES_MAX as SNAPSHOT_CHUNK_BYTES, Chunk, ChunkRequest, Transfer,
    chunk_is_dense as snapshot_chunk_is_dense, snapshot_of,
};

/// One record batch in the Raft log and the offsets it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SideEntry {
    pub index: u64,
    pub term: u64,
    pub base_offset: u64,
    pub last_offset: u64,
    /// (producer id, base sequence) of an idempotent producer's batch.
    pub producer: Option<(u64, u32)>,
    /// The batch bytes (shared with the Raft log's entry, no copy).
    pub data: Bytes,
}

/// A deliberate bug, for showing that the cluster simulator catches it (never set in
/// production).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplSabotage {
    /// `all` acks are answered once the leader's own fsync covers the batch, not once a
    /// majority has it.
    AckAllAtLeaderSync,
}

/// An answer to a producer.
#[derive(Debug)]
pub struct Reply<T> {
    pub token: T,
    pub result: Result<ProduceAck, ReplError>,
}

/// What [`ReplicatedPartition::propose`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proposed {
    /// Appended to the leader's Raft log at this index, with these offsets (final once
    /// committed).
    Appended { index: u64, ack: ProduceAck },
    /// An idempotent retry of a batch already in the leader's log: answered with its offsets.
    Duplicate(ProduceAck),
    /// Refused (not the leader, invalid batch): the reply carries the error.
    Refused,
}

struct Waiter<T> {
    index: u64,
    term: u64,
    acks: ReplAcks,
    ack: ProduceAck,
    token: T,
}

/// One replica (see the module doc).
pub struct ReplicatedPartition<S: Storage, T> {
    group: GroupId,
    id: NodeId,
    cfg: ReplicaConfig,
    node: RawNode<MemStorage>,
    disk: RaftDisk<S>,
    rng: Xoshiro256PlusPlus,
    /// Record batches of the Raft log in index order (committed and not), from the first one
    /// not compacted ([`Self::compact`]).
    side: VecDeque<SideEntry>,
    /// One past the last offset of the compacted batches (where the side index starts).
    compacted_end_offset: u64,
    /// Entries up to this Raft index are compacted out of memory.
    compacted_index: u64,
    /// The term of the entry at `compacted_index`.
    compacted_term: u64,
    /// Where the `raft-log` file starts (its snapshot frame's index; 0: none).
    disk_base_index: u64,
    /// Snapshot transfers in progress (both sides).
    snap: snapshot::SnapState,
    /// (producer id, base sequence) -> Raft index of that batch in the side index.
    by_producer: BTreeMap<(u64, u32), u64>,
    /// Highest index applied (= the commit index as this replica knows it).
    applied: u64,
    /// One past the last committed offset: what readers may see.
    high_watermark: u64,
    /// Last Raft index covered by this replica's fsync.
    synced_index: u64,
    waiters: Vec<Waiter<T>>,
    /// Term in which the waiters were accepted (a change fails them: NOT_LEADER).
    leader_term: u64,
    sabotage: Option<ReplSabotage>,
    /// Configuration changes (membership.rs).
    members: membership::Members,
}

fn header_of(data: &[u8]) -> Option<(u64, Option<(u64, u32)>)> {
    let h = crate::batch::validate(data).ok()?;
    let producer =
        (h.producer.producer_id != 0).then_some((h.producer.producer_id, h.producer.base_sequence));
    Some((u64::from(h.record_count.max(1)), producer))
}

fn logger() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

impl<S: Storage, T> ReplicatedPartition<S, T> {
    /// Opens (creating) the replica in `dir`. `voters`: the replica set (static; the same on
    /// every replica). `seed` drives the randomized election timeouts.
    pub async fn open(
        storage: S,
        dir: &Path,
        group: GroupId,
        id: NodeId,
        voters: &[NodeId],
        cfg: ReplicaConfig,
        seed: u64,
    ) -> io::Result<Self> {
        assert!(!voters.is_empty(), "replica {id} with an empty set");
        let (disk, recovered) = RaftDisk::open(storage, dir).await?;
        // The configuration: the last one applied (saved with the state), else the set given
        // (a replica not in it is joining: it learns its configuration from the log or a
        // snapshot).
        let conf = membership::start_conf(recovered.conf.as_ref(), voters);
        let conf_index = recovered.conf.as_ref().map_or(0, |c| c.index);
        let store = MemStorage::new_with_conf_state(conf.clone());
        let base = recovered.base.unwrap_or_default();
        let entries: Vec<Entry> = recovered.entries.iter().map(entry_of).collect();
        let last_index = entries.last().map_or(base.index, |e| e.index);
        let hs = HardState {
            term: recovered.state.term.max(base.term),
            vote: recovered.state.vote,
            // The state file may have a commit from before a torn log tail: never above the
            // log; a snapshot's index is committed, and so is an applied configuration's.
            commit: recovered
                .state
                .commit
                .max(conf_index)
                .min(last_index)
                .max(base.index),
            ..HardState::default()
        };
        {
            let mut w = store.wl();
            if base.index > 0 {
                w.apply_snapshot(snapshot_of(base, conf))
                    .map_err(|e| io::Error::other(format!("raft snapshot: {e}")))?;
            }
            w.append(&entries)
                .map_err(|e| io::Error::other(format!("raft log: {e}")))?;
            w.set_hardstate(hs.clone());
        }
        let mut side = VecDeque::new();
        let mut by_producer = BTreeMap::new();
        let mut next_offset = base.end_offset;
        for e in &recovered.entries {
            if let Some(s) = side_entry(e.index, e.term, &e.data, next_offset) {
                next_offset = s.last_offset + 1;
                if let Some(p) = s.producer {
                    by_producer.insert(p, s.index);
                }
                side.push_back(s);
            }
        }
        // Committed configuration changes not in the saved configuration are applied again:
        // raft-rs hands them (and every entry after the first) over as committed.
        let applied = recovered
            .entries
            .iter()
            .find(|e| e.kind != EntryKind::Normal && e.index > conf_index && e.index <= hs.commit)
            .map_or(hs.commit, |e| e.index - 1);
        let high_watermark = side
            .iter()
            .take_while(|s| s.index <= applied)
            .last()
            .map_or(base.end_offset, |s| s.last_offset + 1);
        let config = raft::Config {
            id,
            election_tick: cfg.election_ticks,
            heartbeat_tick: cfg.heartbeat_ticks,
            min_election_tick: cfg.election_ticks,
            max_election_tick: cfg.election_ticks_max,
            applied,
            pre_vote: true,
            check_quorum: true,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            ..raft::Config::default()
        };
        let node = RawNode::new(&config, store, &logger())
            .map_err(|e| io::Error::other(format!("raft: {e}")))?;
        let mut p = ReplicatedPartition {
            group,
            id,
            cfg,
            node,
            disk,
            rng: Xoshiro256PlusPlus::seed_from_u64(mix_seed(seed, group, id)),
            side,
            compacted_end_offset: base.end_offset,
            compacted_index: base.index,
            compacted_term: base.term,
            disk_base_index: base.index,
            snap: snapshot::SnapState::default(),
            by_producer,
            applied,
            high_watermark,
            synced_index: last_index,
            waiters: Vec::new(),
            leader_term: 0,
            sabotage: None,
            members: membership::Members::new(conf_index),
        };
        p.after_call();
        Ok(p)
    }

    /// Turns on a deliberate bug (cluster simulator self-test).
    #[doc(hidden)]
    pub fn sabotage(&mut self, s: ReplSabotage) {
        self.sabotage = Some(s);
    }

    pub fn group(&self) -> GroupId {
        self.group
    }
    pub fn id(&self) -> NodeId {
        self.id
    }
    pub fn config(&self) -> &ReplicaConfig {
        &self.cfg
    }
    pub fn is_leader(&self) -> bool {
        self.node.raft.state == StateRole::Leader
    }
    /// The leader this replica knows of (itself included).
    pub fn leader(&self) -> Option<NodeId> {
        let l = self.node.raft.leader_id;
        (l != raft::INVALID_ID).then_some(l)
    }
    /// The Raft term: the leader epoch clients see.
    pub fn term(&self) -> u64 {
        self.node.raft.term
    }
    pub fn commit_index(&self) -> u64 {
        self.applied
    }
    pub fn last_index(&self) -> u64 {
        self.node.raft.raft_log.last_index()
    }
    /// One past the last committed offset.
    pub fn high_watermark(&self) -> u64 {
        self.high_watermark
    }
    /// One past the last offset in the Raft log (committed or not).
    pub fn log_end_offset(&self) -> u64 {
        self.side
            .back()
            .map_or(self.compacted_end_offset, |s| s.last_offset + 1)
    }
    /// The record batches of the Raft log, in order (committed: `index <= commit_index`).
    pub fn side(&self) -> &VecDeque<SideEntry> {
        &self.side
    }
    /// Producers waiting for `durable` or `all`.
    pub fn waiting_acks(&self) -> usize {
        self.waiters.len()
    }
    /// Bytes of the Raft log file.
    pub fn log_bytes(&self) -> u64 {
        self.disk.log_bytes()
    }

    /// Committed batches from the one holding `from_offset` on, at most `max` of them:
    /// readers of a replicated partition see only committed data.
    pub fn read_committed(&self, from_offset: u64, max: usize) -> Vec<(u64, Bytes)> {
        let start = self.side.partition_point(|s| s.last_offset < from_offset);
        self.side
            .iter()
            .skip(start)
            .take_while(|s| s.index <= self.applied)
            .take(max)
            .map(|s| (s.base_offset, s.data.clone()))
            .collect()
    }

    fn not_leader(&self) -> ReplError {
        ReplError::NotLeader {
            leader: self.leader().filter(|l| *l != self.id),
            epoch: self.term(),
        }
    }

    /// A producer's batch (validated bytes). Only the leader takes it; an idempotent retry of
    /// a batch still in the leader's log is answered with that batch's offsets (once it is as
    /// safe as `acks` asks). `token` = `None`: nobody waits.
    pub fn propose(
        &mut self,
        batch: Bytes,
        acks: ReplAcks,
        token: Option<T>,
        replies: &mut Vec<Reply<T>>,
    ) -> Proposed {
        let reply = |replies: &mut Vec<Reply<T>>, token: Option<T>, result| {
            if let Some(token) = token {
                replies.push(Reply { token, result });
            }
        };
        if !self.is_leader() {
            let e = self.not_leader();
            reply(replies, token, Err(e));
            return Proposed::Refused;
        }
        let Some((_, producer)) = header_of(&batch) else {
            reply(
                replies,
                token,
                Err(ReplError::Invalid("not a valid record batch".into())),
            );
            return Proposed::Refused;
        };
        if let Some(p) = producer
            && let Some(orig) = self.by_producer.get(&p).and_then(|i| self.side_at(*i))
        {
            let ack = ProduceAck {
                base_offset: orig.base_offset,
                last_offset: orig.last_offset,
            };
            let (index, term) = (orig.index, orig.term);
            match token {
                Some(token) if matches!(acks, ReplAcks::Durable | ReplAcks::All) => {
                    self.wait(index, term, acks, ack, token);
                    self.answer_waiters(replies);
                }
                token => reply(replies, token, Ok(ack)),
            }
            return Proposed::Duplicate(ack);
        }
        let term = self.term();
        if self.node.propose(Vec::new(), batch.to_vec()).is_err() {
            let e = self.not_leader();
            reply(replies, token, Err(e));
            self.after_call();
            return Proposed::Refused;
        }
        self.after_call();
        let index = self.last_index();
        let Some(s) = side_entry(index, term, &batch, self.log_end_offset()) else {
            unreachable!("a validated batch has a header");
        };
        let ack = ProduceAck {
            base_offset: s.base_offset,
            last_offset: s.last_offset,
        };
        self.push_side(s);
        match token {
            Some(token) if matches!(acks, ReplAcks::Durable | ReplAcks::All) => {
                self.wait(index, term, acks, ack, token);
            }
            token => reply(replies, token, Ok(ack)),
        }
        Proposed::Appended { index, ack }
    }

    fn wait(&mut self, index: u64, term: u64, acks: ReplAcks, ack: ProduceAck, token: T) {
        self.leader_term = self.term();
        self.waiters.push(Waiter {
            index,
            term,
            acks,
            ack,
            token,
        });
    }

    /// Cuts the side index's last batch (an overwritten uncommitted suffix).
    fn pop_side(&mut self) {
        if let Some(s) = self.side.pop_back()
            && let Some(p) = s.producer
            && self.by_producer.get(&p) == Some(&s.index)
        {
            self.by_producer.remove(&p);
        }
    }

    /// The batch at Raft index `index` (the side index is sorted by index).
    fn side_at(&self, index: u64) -> Option<&SideEntry> {
        let i = self.side.partition_point(|s| s.index < index);
        self.side.get(i).filter(|s| s.index == index)
    }

    fn push_side(&mut self, s: SideEntry) {
        if let Some(b) = self.side.back() {
            assert!(
                b.index < s.index && b.last_offset + 1 == s.base_offset,
                "group {}: side index not dense: {:?} then {:?}",
                self.group,
                (b.index, b.last_offset),
                (s.index, s.base_offset)
            );
        }
        if let Some(p) = s.producer {
            self.by_producer.insert(p, s.index);
        }
        self.side.push_back(s);
    }

    /// A Raft message from peer `from` (the bytes the transport carried). A message that does
    /// not decode, or claims another sender or receiver, is dropped.
    pub fn step(&mut self, from: NodeId, bytes: &[u8]) -> bool {
        self.step_kind(from, bytes).is_some()
    }

    /// [`Self::step`], returning the type of the message stepped (`None`: dropped). A
    /// snapshot transfer message (ours, not raft-rs's) counts as `MsgSnapshot`.
    pub fn step_kind(&mut self, from: NodeId, bytes: &[u8]) -> Option<MessageType> {
        if snapshot::is_snapshot_wire(bytes) {
            return self
                .step_snapshot_wire(from, bytes)
                .then_some(MessageType::MsgSnapshot);
        }
        let Ok(m) = Message::parse_from_bytes(bytes) else {
            tracing::warn!(group = self.group, "undecodable raft message dropped");
            return None;
        };
        if m.from != from || m.to != self.id {
            tracing::warn!(
                group = self.group,
                from,
                "raft message with a wrong sender or receiver dropped"
            );
            return None;
        }
        let kind = m.get_msg_type();
        let m = if kind == MessageType::MsgSnapshot {
            match self.intercept_snapshot(m) {
                Some(m) => m,
                None => return Some(kind),
            }
        } else {
            m
        };
        // Errors are messages from unknown peers or stale proposals: dropped, as raft-rs wants.
        let _ = self.node.step(m);
        self.after_call();
        Some(kind)
    }

    /// One Raft tick (the shard's tick timer, every `tick_ms`).
    pub fn tick(&mut self) {
        self.node.tick();
        self.tick_snapshots();
        self.drive_move();
        self.after_call();
    }

    /// After every call into the Raft node: replace raft-rs's thread-local random election
    /// timeout (set whenever the election clock restarts) with one from this replica's seeded
    /// generator, so that a simulation seed replays exactly.
    fn after_call(&mut self) {
        let r = &mut self.node.raft;
        if r.election_elapsed == 0 {
            let (lo, hi) = (
                self.cfg.election_ticks as u64,
                self.cfg.election_ticks_max as u64,
            );
            let t = lo + self.rng.next_u64() % (hi - lo);
            r.set_randomized_election_timeout(
                usize::try_from(t).unwrap_or(self.cfg.election_ticks),
            );
        }
    }

    /// Whether [`Self::handle_ready`] has work.
    pub fn has_ready(&self) -> bool {
        self.node.has_ready()
    }

    /// Persists, sends and applies what Raft has ready: messages for peers go to `out`,
    /// answers to producers to `replies`. An I/O error leaves the replica unusable: the owner
    /// drops it and opens it again (what the disk holds is consistent; Raft treats it as a
    /// restart). The three phases ([`Self::ready_write`], [`Self::sync`],
    /// [`Self::ready_finish`]) let a [`ReplicaNode`](super::ReplicaNode) write every group
    /// first and run their syncs together (one group commit per round).
    pub async fn handle_ready(
        &mut self,
        out: &mut Outbox,
        replies: &mut Vec<Reply<T>>,
    ) -> io::Result<()> {
        let Some(rd) = self.ready_write(out).await? else {
            self.answer_waiters(replies);
            return Ok(());
        };
        self.sync().await?;
        self.ready_finish(rd, out, replies).await
    }

    /// Phase 1: takes the ready, sends the leader's messages, applies what committed, writes
    /// new entries and the hard state (not synced). `None`: nothing was ready.
    pub async fn ready_write(&mut self, out: &mut Outbox) -> io::Result<Option<Ready>> {
        if !self.node.has_ready() {
            return Ok(None);
        }
        let mut rd = self.node.ready();
        self.send(rd.take_messages(), out);
        if !rd.snapshot().is_empty() {
            let snap = rd.snapshot().clone();
            self.persist_snapshot(&snap).await?;
        }
        self.apply(rd.take_committed_entries());
        self.save_conf().await?;
        let entries = rd.take_entries();
        if !entries.is_empty() {
            self.persist_entries(&entries).await?;
        }
        if let Some(hs) = rd.hs() {
            let s = DiskState {
                term: hs.term,
                vote: hs.vote,
                commit: hs.commit,
            };
            self.disk.save_state(s).await?;
            self.node.mut_store().wl().set_hardstate(hs.clone());
        }
        Ok(Some(rd))
    }

    /// Phase 2: fsyncs what phase 1 wrote (nothing if it wrote nothing).
    pub async fn sync(&mut self) -> io::Result<()> {
        self.disk.sync().await?;
        self.synced_index = raft::Storage::last_index(self.node.store()).unwrap_or(0);
        Ok(())
    }

    /// Phase 3 (after [`Self::sync`]): sends what needed the persistence (votes, append
    /// answers), advances Raft, applies newly committed entries, answers producers.
    pub async fn ready_finish(
        &mut self,
        mut rd: Ready,
        out: &mut Outbox,
        replies: &mut Vec<Reply<T>>,
    ) -> io::Result<()> {
        self.send(rd.take_persisted_messages(), out);
        let mut light = self.node.advance(rd);
        if let Some(commit) = light.commit_index() {
            // raft-rs reports a commit learned here once; it reaches the disk with the next
            // sync (a lower commit after a crash is only learned again from the leader).
            let hs = {
                let mut w = self.node.mut_store().wl();
                w.mut_hard_state().set_commit(commit);
                w.hard_state().clone()
            };
            let s = DiskState {
                term: hs.term,
                vote: hs.vote,
                commit,
            };
            self.disk.save_state(s).await?;
        }
        self.send(light.take_messages(), out);
        self.apply(light.take_committed_entries());
        self.save_conf().await?;
        self.node.advance_apply();
        self.after_call();
        self.answer_waiters(replies);
        Ok(())
    }

    async fn persist_entries(&mut self, entries: &[Entry]) -> io::Result<()> {
        let first = entries[0].index;
        assert!(
            first > self.applied,
            "group {}: raft overwrites committed index {first} (commit {})",
            self.group,
            self.applied
        );
        let disk: Vec<DiskEntry> = entries.iter().map(disk_entry).collect();
        self.disk.append(&disk).await?;
        self.node
            .mut_store()
            .wl()
            .append(entries)
            .map_err(|e| io::Error::other(format!("raft log: {e}")))?;
        for e in entries {
            self.mirror(e);
        }
        Ok(())
    }

    /// Keeps the side index equal to the Raft log after an append (a leader's own proposals
    /// are there already; a follower's overwrite cuts the suffix first).
    fn mirror(&mut self, e: &Entry) {
        if e.data.is_empty() || e.get_entry_type() != EntryType::EntryNormal {
            // A leader's no-op (or an empty entry) takes no offset, but cuts what it replaces.
            while self.side.back().is_some_and(|s| s.index >= e.index) {
                self.pop_side();
            }
            return;
        }
        if let Some(s) = self.side_at(e.index)
            && s.term == e.term
        {
            return;
        }
        while self.side.back().is_some_and(|s| s.index >= e.index) {
            self.pop_side();
        }
        match side_entry(e.index, e.term, &e.data, self.log_end_offset()) {
            Some(s) => self.push_side(s),
            None => tracing::warn!(
                group = self.group,
                index = e.index,
                "raft entry without a batch header"
            ),
        }
    }

    fn apply(&mut self, committed: Vec<Entry>) {
        for e in committed {
            assert!(
                e.index > self.applied,
                "group {}: commit moved back to {} from {}",
                self.group,
                e.index,
                self.applied
            );
            if e.entry_type == EntryType::EntryNormal
                && !e.data.is_empty()
                && let Some(s) = self.side_at(e.index)
            {
                assert_eq!(
                    s.term, e.term,
                    "group {}: side index term differs",
                    self.group
                );
                let hw = s.last_offset + 1;
                assert!(hw >= self.high_watermark, "high watermark moved back");
                self.high_watermark = hw;
            }
            if e.entry_type != EntryType::EntryNormal {
                self.apply_conf_entry(&e);
            }
            self.applied = e.index;
        }
    }

    fn send(&mut self, msgs: Vec<Message>, out: &mut Outbox) {
        for mut m in msgs {
            if m.get_msg_type() == MessageType::MsgSnapshot {
                // A peer needs entries compacted here: it fetches the batches from this
                // replica's partition log (snapshot.rs).
                self.prepare_snapshot(&mut m);
            }
            match m.write_to_bytes() {
                Ok(b) => out.push(m.to, self.group, Bytes::from(b)),
                Err(e) => {
                    tracing::warn!(group = self.group, error = %e, "raft message not encoded")
                }
            }
        }
    }

    /// Answers the waiters whose batch is as safe as asked, and fails every waiter once this
    /// replica is no longer the leader of the term that accepted it (its batch may still
    /// commit; the producer retries, idempotently).
    fn answer_waiters(&mut self, replies: &mut Vec<Reply<T>>) {
        if self.waiters.is_empty() {
            return;
        }
        let lost = !self.is_leader() || self.term() != self.leader_term;
        let (commit, synced) = (self.applied, self.synced_index);
        let sabotage = self.sabotage;
        let mut keep = Vec::new();
        for w in std::mem::take(&mut self.waiters) {
            let present = self.side_at(w.index).is_some_and(|s| s.term == w.term);
            // `durable`: the leader's fsync; `all`: committed (a majority's fsync), unless
            // sabotaged.
            let safe_index = match (w.acks, sabotage) {
                (ReplAcks::All, None) => commit,
                _ => synced,
            };
            if present && w.index <= safe_index {
                replies.push(Reply {
                    token: w.token,
                    result: Ok(w.ack),
                });
            } else if lost || !present {
                replies.push(Reply {
                    token: w.token,
                    result: Err(ReplError::NotLeader {
                        leader: self.leader().filter(|l| *l != self.id),
                        epoch: self.node.raft.term,
                    }),
                });
            } else {
                keep.push(w);
            }
        }
        self.waiters = keep;
    }

    /// Answers the waiters that are safe now (nothing was ready, but a leadership change may
    /// have come with a tick or a message).
    pub fn answer_waiters_now(&mut self, replies: &mut Vec<Reply<T>>) {
        self.answer_waiters(replies);
    }

    /// Fails every waiter (the replica is being dropped: crash, disk error).
    pub fn fail_waiters(&mut self, replies: &mut Vec<Reply<T>>) {
        for w in self.waiters.drain(..) {
            replies.push(Reply {
                token: w.token,
                result: Err(ReplError::Unavailable),
            });
        }
    }

    /// A proposal nobody waits for, forwarded by raft-rs to the leader when this replica is a
    /// follower (the leader's side index gets it when the entry reaches its log). `false`:
    /// dropped (no leader known, or not a valid batch).
    pub fn propose_forward(&mut self, batch: Bytes) -> bool {
        if self.is_leader() {
            let mut replies = Vec::new();
            return !matches!(
                self.propose(batch, ReplAcks::Leader, None, &mut replies),
                Proposed::Refused
            );
        }
        if header_of(&batch).is_none() {
            return false;
        }
        let ok = self.node.propose(Vec::new(), batch.to_vec()).is_ok();
        self.after_call();
        ok
    }

    /// Drops applied entries from memory (raft-rs's entries and the side index): every
    /// batch that ends below `durable_offset` (the partition log's fsynced end: the state
    /// machine holds it for good) and is committed, keeping the last `retain_entries` of them
    /// for peers that lag (on the leader: everything some voter has not matched yet, unless
    /// it lags by more than `retain_entries`). Returns the entries dropped. A peer that needs
    /// dropped entries gets a snapshot (snapshot.rs).
    pub fn compact(&mut self, durable_offset: u64, retain_entries: u64) -> u64 {
        let durable = self
            .side
            .partition_point(|s| s.index <= self.applied && s.last_offset < durable_offset);
        if durable == 0 {
            return 0;
        }
        let durable_index = self.side[durable - 1].index;
        // Entries below `compact_index` go. The entry just below a peer's next one must stay
        // (raft-rs reads its term to send the next append), so the leader keeps every voter's
        // matched entry.
        let mut compact_index = durable_index.saturating_sub(retain_entries);
        if self.is_leader() {
            let min_matched = self
                .node
                .raft
                .prs()
                .iter()
                .filter(|(id, _)| **id != self.id)
                .map(|(_, pr)| pr.matched)
                .min()
                .unwrap_or(durable_index);
            compact_index = compact_index.max(min_matched.min(durable_index));
        }
        if compact_index <= self.compacted_index + 1 {
            return 0;
        }
        let first = raft::Storage::first_index(self.node.store()).unwrap_or(0);
        if compact_index <= first {
            return 0;
        }
        let Ok(term) = raft::Storage::term(self.node.store(), compact_index - 1) else {
            return 0;
        };
        if self.node.mut_store().wl().compact(compact_index).is_err() {
            return 0;
        }
        self.compacted_index = compact_index - 1;
        self.compacted_term = term;
        while self.side.front().is_some_and(|s| s.index < compact_index) {
            if let Some(s) = self.side.pop_front() {
                self.compacted_end_offset = s.last_offset + 1;
                if let Some(p) = s.producer
                    && self.by_producer.get(&p) == Some(&s.index)
                {
                    self.by_producer.remove(&p);
                }
            }
        }
        compact_index - first
    }

    /// Raft entries held in memory (raft-rs's storage).
    pub fn entries_in_memory(&self) -> u64 {
        let s = self.node.store();
        let first = raft::Storage::first_index(s).unwrap_or(1);
        let last = raft::Storage::last_index(s).unwrap_or(0);
        (last + 1).saturating_sub(first)
    }

    /// The voters of the group (its replica set).
    pub fn voters(&self) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = self.node.raft.prs().conf().voters().ids().iter().collect();
        v.sort_unstable();
        v
    }

    /// The replicas in sync, as this replica knows: on the leader, those whose log matches
    /// within `lag_entries_max` entries of its last index and that it heard from within an
    /// election timeout (itself included); on a follower, itself and the leader it follows
    /// when it has caught up with the commit it knows of.
    pub fn in_sync(&self, lag_entries_max: u64) -> Vec<NodeId> {
        let last = self.last_index();
        let mut v: Vec<NodeId> = if self.is_leader() {
            self.node
                .raft
                .prs()
                .iter()
                .filter(|(id, pr)| {
                    **id == self.id || (pr.recent_active && pr.matched + lag_entries_max >= last)
                })
                .map(|(id, _)| *id)
                .collect()
        } else {
            match self.leader() {
                Some(l) if self.applied + lag_entries_max >= self.node.raft.raft_log.committed => {
                    vec![self.id, l]
                }
                Some(l) => vec![l],
                None => Vec::new(),
            }
        };
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Whether `peer` is a voter this leader heard from within an election timeout and whose
    /// log matches within `lag_entries_max` entries of the leader's last index (`false` on a
    /// follower).
    pub fn peer_caught_up(&self, peer: NodeId, lag_entries_max: u64) -> bool {
        if !self.is_leader() || !self.node.raft.prs().conf().voters().contains(peer) {
            return false;
        }
        let last = self.last_index();
        self.node
            .raft
            .prs()
            .get(peer)
            .is_some_and(|pr| pr.recent_active && pr.matched + lag_entries_max >= last)
    }

    /// Whether a leadership transfer is under way (raft-rs drops proposals meanwhile).
    pub fn transferring(&self) -> bool {
        self.node.raft.lead_transferee.is_some()
    }

    /// Hands leadership to voter `to` (leadership balance, docs/replication.md): raft-rs
    /// brings it up to date, then tells it to campaign at once (`MsgTimeoutNow`); the
    /// transfer is abandoned after an election timeout. Proposals are refused (NOT_LEADER)
    /// until it ends. `false`: not started (not the leader, `to` is this replica or not a
    /// voter, or a transfer is under way already).
    pub fn transfer_leader(&mut self, to: NodeId) -> bool {
        if !self.is_leader()
            || to == self.id
            || self.transferring()
            || !self.node.raft.prs().conf().voters().contains(to)
        {
            return false;
        }
        self.node.transfer_leader(to);
        self.after_call();
        true
    }

    /// The Raft state, for the owner's report (`topic describe`).
    pub fn role(&self) -> StateRole {
        self.node.raft.state
    }
}

/// Hibernation (docs/replication.md, "Idle groups hibernate"): what a
/// [`ReplicaNode`](super::ReplicaNode) asks before it stops ticking a group, and what it tells
/// a group when a peer node's liveness changes.
impl<S: Storage, T> ReplicatedPartition<S, T> {
    /// A leader with nothing to do: every entry committed, applied and synced, every voter's
    /// log matches its own, no producer waiting, no leadership transfer (it may still have a
    /// heartbeat ready).
    pub fn is_quiet_leader(&self) -> bool {
        let r = &self.node.raft;
        if r.state != StateRole::Leader
            || !self.waiters.is_empty()
            || r.lead_transferee.is_some()
            || !self.membership_settled()
        {
            return false;
        }
        let last = r.raft_log.last_index();
        r.raft_log.committed == last
            && self.applied == last
            && self.synced_index >= last
            && r.prs().iter().all(|(_, pr)| pr.matched == last)
    }

    /// Whether this follower may stop its election clock on leader `from`'s notice that the
    /// group hibernates at `term` with everything up to `commit` committed: it follows that
    /// leader in that term and holds, has committed and applied exactly that log.
    pub fn may_sleep_on_notice(&self, from: NodeId, term: u64, commit: u64) -> bool {
        let r = &self.node.raft;
        r.state == StateRole::Follower
            && r.leader_id == from
            && r.term == term
            && r.raft_log.last_index() == commit
            && r.raft_log.committed == commit
            && self.applied == commit
    }

    /// Peer node `peer` went silent for `silent_ticks` ticks (or restarted): a follower of it
    /// counts the silence as time without a leader (it campaigns as if the leader's
    /// heartbeats had stopped then); a leader stops counting it as recently active (its
    /// check-quorum then sees the loss at the next election timeout).
    pub fn peer_lost(&mut self, peer: NodeId, silent_ticks: usize) {
        let r = &mut self.node.raft;
        if r.state == StateRole::Leader {
            if let Some(pr) = r.mut_prs().get_mut(peer) {
                pr.recent_active = false;
            }
        } else if r.leader_id == peer && r.election_elapsed < silent_ticks {
            r.election_elapsed = silent_ticks;
        }
    }
}

/// The stored form of a Raft entry.
fn disk_entry(e: &Entry) -> DiskEntry {
    let kind = match e.get_entry_type() {
        EntryType::EntryNormal => EntryKind::Normal,
        EntryType::EntryConfChange => EntryKind::ConfChange,
        EntryType::EntryConfChangeV2 => EntryKind::ConfChangeV2,
    };
    DiskEntry {
        index: e.index,
        term: e.term,
        kind,
        data: e.data.clone(),
    }
}

/// The Raft entry of a stored one.
fn entry_of(d: &DiskEntry) -> Entry {
    let mut x = Entry::default();
    x.set_entry_type(match d.kind {
        EntryKind::Normal => EntryType::EntryNormal,
        EntryKind::ConfChange => EntryType::EntryConfChange,
        EntryKind::ConfChangeV2 => EntryType::EntryConfChangeV2,
    });
    x.index = d.index;
    x.term = d.term;
    x.data = d.data.clone();
    x
}

fn side_entry(index: u64, term: u64, data: &Bytes, base_offset: u64) -> Option<SideEntry> {
    if data.is_empty() {
        return None;
    }
    let (count, producer) = header_of(data)?;
    Some(SideEntry {
        index,
        term,
        base_offset,
        last_offset: base_offset + count - 1,
        producer,
        data: data.clone(),
    })
}

/// A replica's election-timeout seed from the owner's seed, its group and its node: distinct
/// replicas must draw distinct timeouts even when the owner's seed is the same everywhere
/// (equal timeouts split every vote).
fn mix_seed(seed: u64, group: GroupId, id: NodeId) -> u64 {
    let mut x = seed;
    for v in [group, id] {
        // splitmix64 steps.
        x = x.wrapping_add(v).wrapping_add(0x9e37_79b9_7f4a_7c15);
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^= x >> 31;
    }
    x
}
