//! The simulated partition logs: each replica's state machine (docs/replication.md,
//! "Simulator"). Committed batches are applied to them in commit order, as the engine's host
//! does; they become durable when the node "fsyncs" them (a random round), a crash keeps only
//! their durable part, retention deletes their oldest batches. Replicas compact their Raft
//! logs below a log's durable end (keeping [`RETAIN`] entries) and rotate `raft-log`, so a
//! node that was down long needs a snapshot: its replica fetches the batches in chunks from the
//! leader's log and installs the snapshot once its own log holds them durably.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use futures_lite::future::block_on;

use super::{Check, Cluster, GroupModel};
use crate::replication::{GroupId, ReplicatedPartition, snapshot_chunk_is_dense};

/// Applied Raft entries each replica keeps in memory beyond its log's durable end.
pub(super) const RETAIN: u64 = 16;
/// `raft-log` is rotated once it holds more than this (and twice what memory retains).
const ROTATE_MIN_BYTES: u64 = 8 * 1024;
/// Batches per snapshot chunk (small, so that transfers take several).
const CHUNK_BATCHES: usize = 4;

/// One replica's partition log.
#[derive(Debug, Default, Clone)]
pub(super) struct SimLog {
    /// First offset (retention moves it).
    pub(super) start: u64,
    /// (base offset, last offset, bytes), dense from `start`.
    pub(super) batches: VecDeque<(u64, u64, Bytes)>,
    /// Offsets below survive a crash.
    pub(super) durable_end: u64,
    /// Offsets below were checked against the committed history.
    checked_to: u64,
    /// (producer id, base sequence) -> offsets of the applied idempotent batches (the
    /// partition log's producer table: retries older than the Raft side index are answered
    /// from it, as the engine's host does).
    producers: BTreeMap<(u64, u32), (u64, u64)>,
}

impl SimLog {
    pub(super) fn next(&self) -> u64 {
        self.batches.back().map_or(self.start, |b| b.1 + 1)
    }

    fn append(&mut self, data: Bytes) -> Check {
        let h = crate::batch::validate(&data).map_err(|e| e.to_string())?;
        let base = self.next();
        let last = base + u64::from(h.record_count.max(1)) - 1;
        if h.producer.producer_id != 0 {
            let key = (h.producer.producer_id, h.producer.base_sequence);
            self.producers.insert(key, (base, last));
        }
        self.batches.push_back((base, last, data));
        Ok(())
    }

    /// A crash: the part not yet durable is gone.
    pub(super) fn crash(&mut self) {
        while self.batches.back().is_some_and(|b| b.1 >= self.durable_end) {
            self.batches.pop_back();
        }
        let end = self.next();
        self.producers.retain(|_, (base, _)| *base < end);
        self.checked_to = self.checked_to.min(self.next());
    }

    /// Retention: deletes the durable batches below `offset`.
    fn retain_from(&mut self, offset: u64) {
        while let Some(b) = self.batches.front() {
            if b.1 >= offset || b.1 >= self.durable_end {
                break;
            }
            self.start = b.1 + 1;
            self.batches.pop_front();
        }
    }

    /// Restarts the log empty at `start` (the leader's log starts above this one's end).
    fn reset(&mut self, start: u64) {
        self.batches.clear();
        self.start = start;
        self.durable_end = start;
        self.checked_to = start;
    }

    /// The offsets of an applied idempotent batch.
    pub(super) fn applied_duplicate(&self, producer: (u64, u32)) -> Option<(u64, u64)> {
        self.producers.get(&producer).copied()
    }

    fn at(&self, offset: u64) -> Option<&(u64, u64, Bytes)> {
        let i = self.batches.partition_point(|b| b.1 < offset);
        self.batches.get(i).filter(|b| b.0 == offset)
    }

    /// The log holds `bytes` at `[base, last]`, or retention deleted that range.
    pub(super) fn holds(&self, base: u64, last: u64, bytes: &Bytes) -> bool {
        last < self.start || self.at(base).is_some_and(|b| b.1 == last && b.2 == *bytes)
    }

    /// Every batch matches the committed history at its offset, densely.
    fn check(&mut self, m: &GroupModel) -> Check {
        let from = self.checked_to.max(self.start);
        let i = self.batches.partition_point(|b| b.1 < from);
        let mut expect = self.batches.get(i).map_or(from, |b| b.0);
        for (base, last, data) in self.batches.iter().skip(i) {
            if *base != expect {
                return Err(format!(
                    "partition log not dense at {base} (expected {expect})"
                ));
            }
            match m.by_offset.get(base) {
                Some((l, d)) if l == last && d == data => {}
                Some(_) => {
                    return Err(format!(
                        "partition log batch at offset {base} differs from the committed history"
                    ));
                }
                None => {
                    return Err(format!(
                        "partition log batch at offset {base} is not in the committed history"
                    ));
                }
            }
            expect = last + 1;
        }
        self.checked_to = self.next();
        Ok(())
    }
}

impl Cluster {
    /// Node `i`'s state machines after its ready round: applies committed batches, serves and
    /// runs snapshot transfers, sometimes fsyncs its logs.
    pub(super) fn state_machines(&mut self, i: usize) -> Check {
        let groups: Vec<GroupId> = self.groups.keys().copied().collect();
        for g in groups {
            if self.nodes[i].node.as_ref().and_then(|n| n.get(g)).is_none() {
                continue;
            }
            self.apply_committed(i, g)?;
            self.serve_chunks(i, g);
            self.run_transfer(i, g)?;
        }
        if self.chance(500) {
            for log in self.nodes[i].logs.values_mut() {
                log.durable_end = log.next();
            }
        }
        Ok(())
    }

    fn apply_committed(&mut self, i: usize, g: GroupId) -> Check {
        let sn = &mut self.nodes[i];
        let (id, log) = (sn.id, sn.logs.entry(g).or_default());
        let Some(p) = sn.node.as_ref().and_then(|n| n.get(g)) else {
            return Ok(());
        };
        while p.high_watermark() > log.next() {
            let next = log.next();
            let batches = p.read_committed(next, 64);
            if batches.is_empty() {
                break;
            }
            for (base, data) in batches {
                if base != log.next() {
                    return Err(format!(
                        "node {id} group {g}: partition log ends at {} but the Raft log gives \
                         {base}",
                        log.next()
                    ));
                }
                log.append(data)?;
            }
        }
        Ok(())
    }

    /// Leader: answers the followers' chunk requests from its partition log.
    fn serve_chunks(&mut self, i: usize, g: GroupId) {
        let sn = &mut self.nodes[i];
        let log = sn.logs.entry(g).or_default().clone();
        let Some(node) = sn.node.as_mut() else { return };
        let Some(reqs) = node
            .get_mut(g)
            .map(ReplicatedPartition::take_chunk_requests)
        else {
            return;
        };
        for req in reqs {
            let from = req.from_offset.max(log.start);
            let k = log.batches.partition_point(|b| b.1 < from);
            let batches: Vec<(u64, Bytes)> = log
                .batches
                .iter()
                .skip(k)
                .take_while(|b| b.0 < req.end_offset)
                .take(CHUNK_BATCHES)
                .map(|b| (b.0, b.2.clone()))
                .collect();
            self.stats.chunks_served += 1;
            node.with_outbox(g, |p, out| p.send_chunk(&req, log.start, &batches, out));
        }
    }

    /// Follower: appends received chunks; installs the snapshot once the log holds it durably;
    /// else asks for more.
    fn run_transfer(&mut self, i: usize, g: GroupId) -> Check {
        let sabotage = self.cfg.sabotage_snapshot && !self.sabotaged;
        let sn = &mut self.nodes[i];
        let id = sn.id;
        let log = sn.logs.entry(g).or_default();
        let Some(node) = sn.node.as_mut() else {
            return Ok(());
        };
        let Some(p) = node.get_mut(g) else {
            return Ok(());
        };
        let Some(t) = p.transfer() else {
            return Ok(());
        };
        let mut abandon = false;
        let mut dropped_one = false;
        for c in p.take_chunks() {
            if !snapshot_chunk_is_dense(&c) {
                continue;
            }
            if c.log_start > t.end_offset {
                // Retention on the leader deleted past this snapshot: wait for a newer one.
                abandon = true;
                break;
            }
            if c.log_start > log.next() {
                log.reset(c.log_start);
                self.stats.log_resets += 1;
            }
            for (n, (base, data)) in c.batches.into_iter().enumerate() {
                if sabotage && n == 0 && !dropped_one {
                    // The deliberate bug: one batch of the snapshot is lost, the rest is
                    // appended at the log's next offsets.
                    dropped_one = true;
                    continue;
                }
                if !sabotage && base < log.next() {
                    continue;
                }
                if !sabotage && base > log.next() {
                    break;
                }
                log.append(data)?;
            }
        }
        if dropped_one {
            self.sabotaged = true;
        }
        if abandon {
            p.abandon_transfer();
            return Ok(());
        }
        if log.next() >= t.end_offset {
            if log.durable_end >= t.end_offset {
                p.install_snapshot();
                self.stats.snapshots_installed += 1;
                let _ = id;
            }
            return Ok(());
        }
        let next = log.next();
        node.with_outbox(g, |p, out| p.request_chunk(next, out));
        Ok(())
    }

    /// Every replica drops applied entries below its log's durable end (keeping [`RETAIN`])
    /// and rotates its `raft-log` when it grew; a replica whose rotation fails (full disk)
    /// stops like one whose write failed.
    pub(super) fn compact_all(&mut self) -> Check {
        for i in 0..self.nodes.len() {
            let groups: Vec<GroupId> = self.groups.keys().copied().collect();
            for g in groups {
                let durable = self.nodes[i].logs.get(&g).map_or(0, |l| l.durable_end);
                let disk_full = self.nodes[i].disk_full;
                let id = self.nodes[i].id;
                let Some(node) = self.nodes[i].node.as_mut() else {
                    continue;
                };
                let Some(p) = node.get_mut(g) else { continue };
                p.compact(durable, RETAIN);
                match block_on(p.maybe_rotate_log(ROTATE_MIN_BYTES)) {
                    Ok(true) => self.stats.log_rotations += 1,
                    Ok(false) => {}
                    Err(e) if disk_full => {
                        node.remove(g);
                        let _ = node.take_replies();
                        self.nodes[i].stopped.insert(g);
                        self.stats.disk_full_failures += 1;
                        self.log(|| format!("node {id} group {g}: rotation failed: {e}"));
                    }
                    Err(e) => return Err(format!("node {id} group {g}: rotation failed: {e}")),
                }
            }
        }
        Ok(())
    }

    /// Retention on one node's log of one group: deletes some of its oldest durable batches.
    pub(super) fn retention(&mut self) {
        let i = self.below(self.nodes.len() as u64) as usize;
        let g = 1 + self.below(self.cfg.groups);
        let pick = self.below(1000);
        let Some(log) = self.nodes[i].logs.get_mut(&g) else {
            return;
        };
        let durable = log.batches.partition_point(|b| b.1 < log.durable_end);
        if durable < 2 {
            return;
        }
        let k = (pick as usize % durable).max(1);
        let cut = log.batches[k].0;
        log.retain_from(cut);
        self.stats.retention_deletes += 1;
        let id = self.nodes[i].id;
        self.log(|| format!("node {id} group {g}: retention deletes below offset {cut}"));
    }

    /// Every log matches the committed history.
    pub(super) fn check_logs(&mut self) -> Check {
        for n in &mut self.nodes {
            for (g, log) in &mut n.logs {
                let m = self.groups.get(g).ok_or("group")?;
                log.check(m)
                    .map_err(|e| format!("node {} group {g}: {e}", n.id))?;
            }
        }
        Ok(())
    }
}
