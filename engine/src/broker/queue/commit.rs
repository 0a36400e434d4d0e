//! Group commit of a queue partition's ack log (docs/semantics.md, "Work queues", "How it is
//! built").
//!
//! Every decision of the queue state (a lease, an ack, a nack, a dead letter) is applied to the
//! in-memory state at once and its [`AckRecord`] pushed here; one writer per queue partition
//! drains what was pushed into **one batch** of the ack log and appends it. A group is written
//! `durable` when anyone waits for it (an ack, a dead letter, a purge, an open); its waiters are
//! answered together once that batch is fdatasync'd. While a durable group is being synced,
//! further records pile up and go out as the next group: with N consumers acking concurrently
//! there is one ack-log batch and one fdatasync per round, not per ack.
//!
//! Records without a waiter (deliveries, nacks) are never waited for: a receive hands out its
//! messages as soon as the lease is in memory and its `Delivered` record is queued. A crash
//! can then lose that record (and the lease with it, which never survives a restart anyway): the
//! message is delivered again, with a delivery count that may lag; it is never lost, because
//! only an `Acked` or `Dead` record (always durable before answered) marks a message done.
//!
//! Order: records reach the log in the order they were pushed (one writer, FIFO). A snapshot of
//! the state is taken synchronously when a group is taken, so it reflects exactly the records
//! pushed so far and is appended after them, in the same batch; records applied after it are
//! in later groups. (Replay is monotone anyway: `QueueState::learn` never undoes a later fact.)
//!
//! This file is sans-IO: [`GroupCommit`] only decides what goes into a group; the writer task
//! (`mod.rs`, `write_groups`) does the appending.

use super::record::AckRecord;

/// What one write of the ack log carries.
#[derive(Debug)]
pub(crate) struct Group<W> {
    pub(crate) records: Vec<AckRecord>,
    /// Answered once the group is durable (or its write failed).
    pub(crate) waiters: Vec<W>,
    /// A snapshot of the state goes after the records (asked for, or due by size).
    pub(crate) snapshot: bool,
}

impl<W> Group<W> {
    /// Whether the group must be fdatasync'd before its waiters are answered.
    pub(crate) fn durable(&self) -> bool {
        !self.waiters.is_empty()
    }
}

/// The records waiting for the writer, and whether a writer is running.
#[derive(Debug)]
pub(crate) struct GroupCommit<W> {
    pending: Vec<AckRecord>,
    /// Each waiter with the end of its records in `pending` (answered with the group that
    /// takes its last record).
    waiters: Vec<(usize, W)>,
    /// A snapshot is asked for after the first this-many records of `pending`.
    snapshot_at: Option<usize>,
    /// A writer task owns the log's tail: it takes groups until none is left.
    writing: bool,
    /// Encoded bytes of records taken since the last snapshot.
    since_snapshot_bytes: usize,
    snapshot_every_bytes: usize,
    group_records_max: usize,
}

impl<W> GroupCommit<W> {
    /// `group_records_max` bounds a group (so the records between two snapshots stay bounded:
    /// a snapshot is due after `snapshot_every_bytes` plus at most one group).
    pub(crate) fn new(snapshot_every_bytes: usize, group_records_max: usize) -> Self {
        assert!(snapshot_every_bytes > 0, "snapshots need a period");
        assert!(group_records_max > 0, "groups need room");
        GroupCommit {
            pending: Vec::new(),
            waiters: Vec::new(),
            snapshot_at: None,
            writing: false,
            since_snapshot_bytes: 0,
            snapshot_every_bytes,
            group_records_max,
        }
    }

    /// Queues `records`; `waiter` (if any) is answered once they are durable. Returns true
    /// when the caller must start a writer (none is running).
    #[must_use]
    pub(crate) fn push(
        &mut self,
        records: impl IntoIterator<Item = AckRecord>,
        waiter: Option<W>,
    ) -> bool {
        self.pending.extend(records);
        let end = self.pending.len();
        self.waiters.extend(waiter.map(|w| (end, w)));
        self.wake()
    }

    /// Asks for a snapshot after everything queued so far; `waiter` is answered once it is
    /// durable. Returns true when the caller must start a writer.
    #[must_use]
    pub(crate) fn push_snapshot(&mut self, waiter: Option<W>) -> bool {
        let end = self.pending.len();
        self.snapshot_at = Some(self.snapshot_at.map_or(end, |e| e.max(end)));
        self.waiters.extend(waiter.map(|w| (end, w)));
        self.wake()
    }

    fn idle(&self) -> bool {
        self.pending.is_empty() && self.waiters.is_empty() && self.snapshot_at.is_none()
    }

    fn wake(&mut self) -> bool {
        if self.writing || self.idle() {
            return false;
        }
        self.writing = true;
        true
    }

    /// The next group for the running writer (the oldest records, at most `group_records_max`),
    /// or `None` (and the writer ends) when nothing is queued. `encoded_bytes` is the size of a
    /// record's encoding (for the snapshot period).
    pub(crate) fn take(&mut self, encoded_bytes: impl Fn(&AckRecord) -> usize) -> Option<Group<W>> {
        assert!(self.writing, "take only from the writer");
        if self.idle() {
            self.writing = false;
            return None;
        }
        let n = self.pending.len().min(self.group_records_max);
        let records: Vec<AckRecord> = self.pending.drain(..n).collect();
        self.since_snapshot_bytes += records.iter().map(encoded_bytes).sum::<usize>();
        let asked = self.snapshot_at.is_some_and(|e| e <= n);
        let snapshot = asked || self.since_snapshot_bytes > self.snapshot_every_bytes;
        self.snapshot_at = if asked {
            None
        } else {
            self.snapshot_at.map(|e| e - n)
        };
        if snapshot {
            self.since_snapshot_bytes = 0;
        }
        let mut waiters = Vec::new();
        let mut left = Vec::with_capacity(self.waiters.len());
        for (end, w) in self.waiters.drain(..) {
            if end <= n {
                waiters.push(w);
            } else {
                left.push((end - n, w));
            }
        }
        self.waiters = left;
        Some(Group {
            records,
            waiters,
            snapshot,
        })
    }

    /// Drops every record queued and not yet taken (a queue leader that lost its term: they
    /// would not commit) and returns their waiters. A running writer keeps running (it ends
    /// at its next `take`).
    pub(crate) fn discard(&mut self) -> Vec<W> {
        self.pending.clear();
        self.snapshot_at = None;
        self.waiters.drain(..).map(|(_, w)| w).collect()
    }

    /// Whether a writer is running.
    pub(crate) fn is_writing(&self) -> bool {
        self.writing
    }

    /// Records queued and not yet taken.
    #[cfg(test)]
    pub(crate) fn queued(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn acked(o: u64) -> AckRecord {
        AckRecord::Acked { offset: o }
    }

    fn size(r: &AckRecord) -> usize {
        r.encode().len()
    }

    // Proves: discarding drops the queued records and hands back their waiters, and the
    // running writer ends at its next take (no second writer is started meanwhile).
    #[test]
    fn discard_hands_back_waiters_and_lets_the_writer_end() {
        let mut g: GroupCommit<u32> = GroupCommit::new(1 << 20, 100);
        assert!(g.push([acked(1)], Some(1)));
        assert!(!g.push([acked(2)], Some(2)));
        assert!(!g.push_snapshot(None));
        assert_eq!(g.discard(), vec![1, 2]);
        assert_eq!(g.queued(), 0);
        assert!(g.is_writing());
        assert!(g.take(size).is_none(), "nothing left: the writer ends");
        assert!(!g.is_writing());
        assert!(
            g.push([acked(3)], Some(3)),
            "a later push starts a writer again"
        );
    }

    // Proves: concurrent pushes while a group is being written become one next group with all
    // their waiters, and only one writer is ever asked for.
    #[test]
    fn pushes_during_a_write_form_the_next_group() {
        let mut g: GroupCommit<u32> = GroupCommit::new(1 << 20, 100);
        assert!(
            g.push([acked(1)], Some(1)),
            "the first push starts a writer"
        );
        let first = g.take(size).unwrap();
        assert_eq!(first.records.len(), 1);
        assert_eq!(first.waiters, vec![1]);
        assert!(first.durable());
        // While the first group syncs, three consumers ack and one receive leases.
        assert!(!g.push([acked(2)], Some(2)));
        assert!(!g.push(
            [AckRecord::Delivered {
                offset: 9,
                attempt: 1
            }],
            None
        ));
        assert!(!g.push([acked(3), acked(4)], Some(3)));
        let second = g.take(size).unwrap();
        assert_eq!(second.records.len(), 4);
        assert_eq!(second.waiters, vec![2, 3]);
        assert!(g.take(size).is_none(), "nothing left: the writer ends");
        assert!(!g.is_writing());
        assert!(g.push([acked(5)], None), "a later push starts a new writer");
    }

    // Proves: a group of records nobody waits for is not durable (a receive never waits for
    // an fdatasync), and an asked-for snapshot comes after the queued records.
    #[test]
    fn leases_alone_are_not_synced_and_snapshots_follow_records() {
        let mut g: GroupCommit<u32> = GroupCommit::new(1 << 20, 100);
        assert!(g.push(
            [AckRecord::Delivered {
                offset: 1,
                attempt: 1
            }],
            None
        ));
        assert!(!g.push_snapshot(Some(7)));
        let grp = g.take(size).unwrap();
        assert_eq!(grp.records.len(), 1);
        assert!(grp.snapshot);
        assert!(grp.durable());
        assert!(g.take(size).is_none());
        assert!(g.push(
            [AckRecord::Delivered {
                offset: 2,
                attempt: 1
            }],
            None
        ));
        let grp = g.take(size).unwrap();
        assert!(!grp.durable() && !grp.snapshot);
    }

    // Proves: a snapshot is due once the records written since the last one pass the period.
    #[test]
    fn snapshots_come_by_size() {
        let per = size(&acked(1));
        let mut g: GroupCommit<u32> = GroupCommit::new(3 * per, 100);
        let mut snapshots = 0;
        assert!(g.push_snapshot(None));
        let _ = g.take(size);
        for o in 0..40 {
            let _ = g.push([acked(o)], None);
            if let Some(grp) = g.take(size) {
                snapshots += usize::from(grp.snapshot);
            }
        }
        assert_eq!(snapshots, 10, "one every fourth record of this size");
    }

    proptest! {
        // Proves: whatever the interleaving of pushes and takes, records come out exactly once
        // and in push order, every waiter is answered exactly once in a durable group that
        // holds (or follows) its records, and at most one writer runs.
        #[test]
        fn groups_keep_order_and_answer_everyone(ops in proptest::collection::vec(
            (0u8..4, 0usize..4), 1..200), group_max in 1usize..6) {
            let mut g: GroupCommit<usize> = GroupCommit::new(64, group_max);
            let mut writers = 0usize;
            let mut next_offset = 0u64;
            let mut out: Vec<u64> = Vec::new();
            let mut answered: Vec<usize> = Vec::new();
            let mut pushed_waiters = 0usize;
            let mut last_record_of_waiter: Vec<u64> = Vec::new();
            for (op, n) in ops {
                match op {
                    0 | 1 => {
                        let records: Vec<AckRecord> = (0..n as u64)
                            .map(|i| acked(next_offset + i)).collect();
                        next_offset += n as u64;
                        let waiter = (op == 0).then_some(pushed_waiters);
                        if waiter.is_some() {
                            pushed_waiters += 1;
                            last_record_of_waiter.push(next_offset);
                        }
                        if g.push(records, waiter) {
                            writers += 1;
                        }
                    }
                    2 => {
                        if g.push_snapshot(None) {
                            writers += 1;
                        }
                    }
                    _ => {
                        if writers == 1 {
                            match g.take(size) {
                                Some(grp) => {
                                    prop_assert_eq!(grp.durable(), !grp.waiters.is_empty());
                                    prop_assert!(grp.records.len() <= group_max);
                                    out.extend(grp.records.iter().map(|r| match r {
                                        AckRecord::Acked { offset } => *offset,
                                        _ => unreachable!(),
                                    }));
                                    for w in grp.waiters {
                                        // Everything its push queued is in this or an earlier group.
                                        prop_assert!(out.len() as u64 >= last_record_of_waiter[w]);
                                        answered.push(w);
                                    }
                                }
                                None => writers -= 1,
                            }
                        }
                    }
                }
                prop_assert!(writers <= 1, "one writer at most");
            }
            // Drain.
            if writers == 1 {
                while let Some(grp) = g.take(size) {
                    out.extend(grp.records.iter().map(|r| match r {
                        AckRecord::Acked { offset } => *offset,
                        _ => unreachable!(),
                    }));
                    answered.extend(grp.waiters);
                }
            }
            prop_assert_eq!(out, (0..next_offset).collect::<Vec<_>>());
            prop_assert_eq!(answered, (0..pushed_waiters).collect::<Vec<_>>());
            prop_assert_eq!(g.queued(), 0);
        }
    }
}
