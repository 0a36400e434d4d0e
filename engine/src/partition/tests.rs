//! Proves the partition core's ack contract with no runtime: every job runs against the crash
//! image (`CrashStorage`) under `futures_lite::future::block_on`. A durable ack is replied only
//! after the sync that covers it, durable acks come in offset order, an idempotent retry gets
//! its original offsets, and a failed flush fails its waiters with an error naming the
//! partition; a proptest checks the same against a model over random interleavings.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::path::Path;

use futures_lite::future::block_on;
use proptest::prelude::*;

use super::*;
use bytes::Bytes;

use crate::batch::{BatchBuilder, BatchHeader};
use crate::storage::CrashStorage;

mod restart;
mod visibility;

type TestCore = PartitionCore<CrashStorage, u32>;
type TestActions = Vec<Action<CrashStorage, u32>>;

const DIR: &str = "/data/topics/orders/3";

fn key() -> PartitionKey {
    (Arc::from("orders"), 3)
}

fn small_log() -> LogConfig {
    LogConfig {
        segment_bytes: 64 << 10,
        checkpoint_interval_bytes: 8 << 10,
        preallocate_bytes: 0,
        ..LogConfig::default()
    }
}

fn open(storage: &CrashStorage) -> TestCore {
    let cfg = CoreConfig {
        sync_interval_ms: 50,
    };
    let opened = block_on(TestCore::open(
        storage.clone(),
        Path::new(DIR),
        key(),
        small_log(),
        cfg,
        0,
    ))
    .unwrap();
    opened.core
}

fn plain(records: usize) -> Bytes {
    let mut b = BatchBuilder::new();
    for i in 0..records {
        b.push_value(format!("value {i}"));
    }
    b.build().unwrap()
}

fn idempotent(producer_id: u64, base_sequence: u32, records: usize) -> Bytes {
    let mut b = BatchBuilder::new().producer(ProducerInfo {
        producer_id,
        producer_epoch: 0,
        base_sequence,
    });
    for i in 0..records {
        b.push_value(format!("value {i}"));
    }
    b.build().unwrap()
}

/// What a driver saw come out of the core.
#[derive(Default)]
struct Seen {
    /// (token, result, durable, durable offset of the log when the reply was made).
    replies: Vec<(u32, Result<ProduceAck>, bool, u64)>,
    flushes: Vec<Flush<CrashStorage>>,
    timers: Vec<i64>,
    repairs: Vec<RepairJob<CrashStorage>>,
    snapshots: Vec<SnapshotJob<CrashStorage>>,
    wakes: usize,
}

impl Seen {
    fn take(&mut self, core: &TestCore, actions: TestActions) {
        let durable = core.watermarks().durable_offset;
        for a in actions {
            match a {
                Action::Reply {
                    token,
                    result,
                    durable: waited,
                } => self.replies.push((token, result, waited, durable)),
                Action::WakeReaders => self.wakes += 1,
                Action::StartFlush(f) => self.flushes.push(f),
                Action::ArmSyncTimer { deadline_ms } => self.timers.push(deadline_ms),
                Action::StartRepair(job) => self.repairs.push(job),
                Action::WriteSnapshot(job) => self.snapshots.push(job),
            }
        }
        assert!(self.flushes.len() <= 1, "two flushes outstanding");
    }

    fn tokens(&self) -> Vec<u32> {
        self.replies.iter().map(|r| r.0).collect()
    }
}

fn produce(core: &mut TestCore, seen: &mut Seen, batch: Bytes, acks: Acks, token: u32) -> Produced {
    let mut out = Vec::new();
    let produced = core.produce(
        ValidatedBatch::validate(batch).unwrap(),
        acks,
        Some(token),
        0,
        &mut out,
    );
    seen.take(core, out);
    produced
}

/// Runs the outstanding flush (if any) to completion and applies it.
fn run_flush(core: &mut TestCore, seen: &mut Seen) -> Option<FlushReport> {
    let f = seen.flushes.pop()?;
    let done = block_on(f.job.run());
    let mut out = Vec::new();
    let report = core.flush_done(done, 0, &mut out);
    seen.take(core, out);
    Some(report)
}

fn drain_flushes(core: &mut TestCore, seen: &mut Seen) {
    for _ in 0..1000 {
        if run_flush(core, seen).is_none() {
            return;
        }
    }
    panic!("the core keeps planning flushes");
}

// Proves: a durable producer's reply comes only from the flush that fdatasynced its batch,
// and what it acknowledged survives a power loss right after.
#[test]
fn a_durable_ack_waits_for_the_sync_that_covers_it() {
    let storage = CrashStorage::new();
    let mut core = open(&storage);
    let mut seen = Seen::default();
    produce(&mut core, &mut seen, plain(3), Acks::Durable, 1);
    assert!(seen.replies.is_empty(), "acked before any write");
    assert_eq!(core.waiting_acks(), 1);
    assert!(
        seen.flushes[0].job.syncs(),
        "a durable waiter needs a syncing flush"
    );
    let report = run_flush(&mut core, &mut seen).unwrap();
    assert!(report.synced);
    assert_eq!(seen.replies.len(), 1);
    let (token, result, durable, durable_at_reply) = &seen.replies[0];
    assert_eq!((*token, *durable), (1, true));
    let ack = *result.as_ref().unwrap();
    assert_eq!((ack.base_offset, ack.last_offset), (0, 2));
    assert!(*durable_at_reply > ack.last_offset);
    drop(core);
    storage.crash(|_, _, _| false);
    assert_eq!(open(&storage).watermarks().next_offset, 3);
}

// Proves: the sabotage the simulator's self-test uses is a real bug that this file's checks
// see: a durable ack comes out of a flush that did not sync.
#[test]
fn the_ack_before_sync_sabotage_acks_unsynced_data() {
    let storage = CrashStorage::new();
    let mut core = open(&storage);
    core.sabotage(Sabotage::AckBeforeSync);
    let mut seen = Seen::default();
    produce(&mut core, &mut seen, plain(2), Acks::Durable, 1);
    let (_, result, durable, durable_at_reply) = &seen.replies[0];
    let acked = result.as_ref().unwrap();
    assert!(*durable, "sabotaged acks still claim durability");
    assert!(
        acked.last_offset >= *durable_at_reply,
        "the check the model test makes must see this ack as premature"
    );
}

// Proves: leader acks are immediate, and data written without a sync is not durable: the core
// arms the sync timer, whose flush makes it so.
#[test]
fn leader_acks_are_immediate_and_the_sync_timer_makes_them_durable() {
    let storage = CrashStorage::new();
    let mut core = open(&storage);
    let mut seen = Seen::default();
    produce(&mut core, &mut seen, plain(2), Acks::Leader, 7);
    assert_eq!(seen.tokens(), vec![7]);
    assert!(!seen.replies[0].2);
    assert!(!seen.flushes[0].job.syncs());
    run_flush(&mut core, &mut seen).unwrap();
    let w = core.watermarks();
    assert_eq!((w.written_offset, w.durable_offset), (2, 0));
    assert_eq!(seen.timers, vec![50]);
    let mut out = Vec::new();
    core.sync_timer_fired(&mut out);
    seen.take(&core, out);
    assert!(seen.flushes[0].job.syncs());
    run_flush(&mut core, &mut seen).unwrap();
    assert_eq!(core.watermarks().durable_offset, 2);
    assert_eq!(seen.timers.len(), 1, "nothing left to sync: no new timer");
}

// Proves: durable acks complete in offset order, also when an idempotent retry waits for the
// (older) offsets of its original while a later batch waits too.
#[test]
fn durable_acks_complete_in_offset_order_and_a_retry_gets_the_original_offsets() {
    let storage = CrashStorage::new();
    let mut core = open(&storage);
    let mut seen = Seen::default();
    produce(&mut core, &mut seen, idempotent(9, 0, 2), Acks::Durable, 1);
    // The first flush is in flight: these join the next one, or wait for the first.
    produce(&mut core, &mut seen, plain(1), Acks::Durable, 2);
    let retry = produce(&mut core, &mut seen, idempotent(9, 0, 2), Acks::Durable, 3);
    let original = ProduceAck {
        base_offset: 0,
        last_offset: 1,
    };
    assert_eq!(retry, Produced::Duplicate(original));
    assert_eq!(core.watermarks().next_offset, 3, "a retry appends nothing");
    drain_flushes(&mut core, &mut seen);
    assert_eq!(seen.tokens(), vec![1, 3, 2]);
    assert_eq!(*seen.replies[1].1.as_ref().unwrap(), original);
    // Once durable, a retry is answered at once, whatever it asks.
    produce(&mut core, &mut seen, idempotent(9, 0, 2), Acks::Leader, 4);
    produce(&mut core, &mut seen, idempotent(9, 0, 2), Acks::Durable, 5);
    assert_eq!(seen.tokens(), vec![1, 3, 2, 4, 5]);
    assert!(
        seen.replies[3..]
            .iter()
            .all(|r| *r.1.as_ref().unwrap() == original)
    );
    // A gap is refused with the typed sequence error, not appended.
    let gap = produce(&mut core, &mut seen, idempotent(9, 5, 1), Acks::Durable, 6);
    assert_eq!(gap, Produced::Refused);
    assert!(matches!(
        seen.replies[5].1,
        Err(Error::OutOfOrderSequence { .. })
    ));
}

// Proves: a failed flush fails every durable waiter with an error naming the topic and
// partition (not the log's directory), refuses appends the same way until the repair, and the
// repair makes the partition writable again.
#[test]
fn a_failed_flush_fails_waiters_naming_the_partition_and_repairs() {
    let storage = CrashStorage::new();
    let mut core = open(&storage);
    let mut seen = Seen::default();
    produce(&mut core, &mut seen, plain(1), Acks::Durable, 1);
    drain_flushes(&mut core, &mut seen);
    produce(&mut core, &mut seen, plain(1), Acks::Durable, 2);
    storage.set_fail_io(true);
    let report = run_flush(&mut core, &mut seen).unwrap();
    assert!(report.result.is_err());
    let want = "partition orders/3 is not writable after an I/O error";
    let failed = seen.replies[1].1.as_ref().unwrap_err().to_string();
    assert!(failed.starts_with(want), "{failed}");
    assert_eq!(seen.repairs.len(), 1);
    produce(&mut core, &mut seen, plain(1), Acks::Leader, 3);
    let refused = seen.replies[2].1.as_ref().unwrap_err().to_string();
    assert!(refused.starts_with(want), "{refused}");
    storage.set_fail_io(false);
    let job = seen.repairs.pop().unwrap();
    let mut out = Vec::new();
    let w = core.repaired(block_on(job.run(0)), &mut out).unwrap();
    seen.take(&core, out);
    assert!(w.next_offset >= 1);
    produce(&mut core, &mut seen, plain(1), Acks::Durable, 4);
    drain_flushes(&mut core, &mut seen);
    assert!(seen.replies[3].1.is_ok());
}

// Proves: a full disk is answered as `DiskFull` (retriable) to the waiter and to appends.
#[test]
fn a_full_disk_is_reported_as_disk_full() {
    let storage = CrashStorage::new();
    let mut core = open(&storage);
    let mut seen = Seen::default();
    storage.set_capacity(Some(0));
    produce(&mut core, &mut seen, plain(1), Acks::Durable, 1);
    run_flush(&mut core, &mut seen).unwrap();
    assert!(matches!(seen.replies[0].1, Err(Error::DiskFull { .. })));
    produce(&mut core, &mut seen, plain(1), Acks::Durable, 2);
    assert!(matches!(seen.replies[1].1, Err(Error::DiskFull { .. })));
}

// Proves: the close sequence flushes and syncs what is pending, acks the waiters, and leaves
// a producer snapshot at the log end (the next open replays nothing).
#[test]
fn a_clean_close_makes_everything_durable_and_snapshots_producers() {
    let storage = CrashStorage::new();
    let mut core = open(&storage);
    let mut seen = Seen::default();
    produce(&mut core, &mut seen, idempotent(3, 0, 4), Acks::Durable, 1);
    run_flush(&mut core, &mut seen).unwrap();
    produce(&mut core, &mut seen, plain(2), Acks::Leader, 2);
    run_flush(&mut core, &mut seen).unwrap();
    assert_eq!(
        core.watermarks().durable_offset,
        4,
        "written, not yet synced"
    );
    core.begin_close();
    let mut close_flushes = 0;
    while let Some(f) = core.take_close_flush() {
        assert!(f.job.syncs());
        let done = block_on(f.job.run());
        let mut out = Vec::new();
        core.flush_done(done, 0, &mut out).result.unwrap();
        seen.take(&core, out);
        close_flushes += 1;
    }
    assert_eq!(close_flushes, 1);
    assert!(
        seen.flushes.is_empty() && seen.timers.len() == 1,
        "a closing core plans nothing"
    );
    let mut out = Vec::new();
    if let Some(job) = core.finish_close(&mut out) {
        block_on(job.run()).unwrap();
    }
    seen.take(&core, out);
    assert!(core.is_closed());
    assert!(seen.replies.iter().all(|r| r.1.is_ok()));
    let job = core.take_snapshot_job().unwrap();
    assert_eq!(job.upto_offset(), 6);
    let r = block_on(job.run());
    core.snapshot_done(6, &r);
    r.unwrap();
    assert!(
        core.take_snapshot_job().is_none(),
        "nothing new to snapshot"
    );
    drop(core);
    storage.crash(|_, _, _| false);
    let reopened = open(&storage);
    assert_eq!(reopened.producers().get(3).unwrap().batches.len(), 1);
}

/// One step of the model test.
#[derive(Debug, Clone)]
enum Op {
    /// A plain batch of `n` records.
    Plain(usize, Acks),
    /// The idempotent producer's next batch.
    Next(usize, Acks),
    /// A retry of its batch `back` batches ago.
    Retry(usize, Acks),
    /// Completes the outstanding flush.
    Flush,
    /// The sync timer fires.
    Timer,
}

fn acks() -> impl Strategy<Value = Acks> {
    prop_oneof![Just(Acks::None), Just(Acks::Leader), Just(Acks::Durable)]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1usize..4, acks()).prop_map(|(n, a)| Op::Plain(n, a)),
        3 => (1usize..4, acks()).prop_map(|(n, a)| Op::Next(n, a)),
        2 => (0usize..8, acks()).prop_map(|(b, a)| Op::Retry(b, a)),
        3 => Just(Op::Flush),
        1 => Just(Op::Timer),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Against a model (the offsets each batch got, the durable offset when each reply was
    /// made): durable replies only once the durable offset covers them and in offset order;
    /// leader replies at once; retries get their original's offsets; offsets are dense; every
    /// durable waiter is answered once the flushes drain; and acknowledged-durable data
    /// survives a power loss.
    #[test]
    fn acks_follow_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        let storage = CrashStorage::new();
        let mut core = open(&storage);
        let mut seen = Seen::default();
        let mut token = 0u32;
        // Idempotent batches sent: (first sequence, records, offsets once known).
        let mut sent: Vec<(u32, usize, ProduceAck)> = Vec::new();
        let mut next_sequence = 0u32;
        let mut next_offset = 0u64;
        // token -> (acks, expected ack if known now)
        let mut expect: Vec<(u32, Acks, Option<ProduceAck>)> = Vec::new();
        for op in ops {
            let (batch, acks, retry_of) = match op {
                Op::Plain(n, a) => (plain(n), a, None),
                Op::Next(n, a) => {
                    let b = idempotent(1, next_sequence, n);
                    (b, a, None)
                }
                Op::Retry(back, a) if !sent.is_empty() => {
                    let i = sent.len() - 1 - back % sent.len();
                    let (seq, n, ack) = sent[i];
                    (idempotent(1, seq, n), a, Some(ack))
                }
                Op::Retry(..) => continue,
                Op::Flush => {
                    run_flush(&mut core, &mut seen);
                    continue;
                }
                Op::Timer => {
                    let mut out = Vec::new();
                    core.sync_timer_fired(&mut out);
                    seen.take(&core, out);
                    continue;
                }
            };
            token += 1;
            let records = u64::from(BatchHeader::parse(&batch).unwrap().record_count);
            let replies_before = seen.replies.len();
            let produced = produce(&mut core, &mut seen, batch, acks, token);
            match (produced, retry_of) {
                (Produced::Appended { appended, waits_durable }, None) => {
                    prop_assert_eq!(appended.base_offset, next_offset, "offsets are dense");
                    prop_assert_eq!(appended.last_offset, next_offset + records - 1);
                    prop_assert_eq!(waits_durable, acks == Acks::Durable);
                    let ack = ProduceAck {
                        base_offset: appended.base_offset,
                        last_offset: appended.last_offset,
                    };
                    if let Op::Next(n, _) = op {
                        sent.push((next_sequence, n, ack));
                        next_sequence += u32::try_from(n).unwrap();
                    }
                    next_offset += records;
                    expect.push((token, acks, Some(ack)));
                }
                (Produced::Duplicate(ack), Some(original)) => {
                    prop_assert_eq!(ack, original, "a retry gets its original offsets");
                    expect.push((token, acks, Some(ack)));
                }
                // A retry older than the dedup window: refused, its offsets no longer known.
                (Produced::Refused, Some(_)) => expect.push((token, acks, None)),
                (other, _) => prop_assert!(false, "unexpected {:?} for {:?}", other, op),
            }
            if acks != Acks::Durable {
                prop_assert_eq!(seen.replies.len(), replies_before + 1, "leader acks are immediate");
            }
        }
        drain_flushes(&mut core, &mut seen);
        let mut out = Vec::new();
        core.sync_timer_fired(&mut out);
        seen.take(&core, out);
        drain_flushes(&mut core, &mut seen);
        prop_assert_eq!(seen.replies.len(), expect.len(), "every producer is answered");
        prop_assert_eq!(core.waiting_acks(), 0);
        let mut last_durable = None;
        let mut acked_durable_end = 0;
        for (t, result, durable, durable_at_reply) in &seen.replies {
            let (_, acks, want) = expect.iter().find(|e| e.0 == *t).unwrap();
            let Some(want) = want else {
                let refused = matches!(result, Err(Error::DuplicateSequence { .. }));
                prop_assert!(refused, "a retry beyond the window: {:?}", result);
                continue;
            };
            let ack = *result.as_ref().unwrap();
            prop_assert_eq!(ack, *want);
            prop_assert!(!*durable || *acks == Acks::Durable);
            if *durable {
                prop_assert!(ack.last_offset < *durable_at_reply, "durable ack before its sync");
                prop_assert!(last_durable.is_none_or(|l| l <= ack.last_offset), "out of order");
                last_durable = Some(ack.last_offset);
                acked_durable_end = acked_durable_end.max(ack.last_offset + 1);
            } else if *acks == Acks::Durable {
                // Answered at once: a retry of a batch already durable.
                prop_assert!(ack.last_offset < *durable_at_reply);
            }
        }
        drop(core);
        storage.crash(|f, w, b| (f + w + b) % 2 == 0);
        let reopened = open(&storage);
        prop_assert!(reopened.watermarks().next_offset >= acked_durable_end, "acked data lost");
    }
}

// Proves: a process dying at any step of a producer snapshot (temp file, sync, rename,
// directory sync, removal of old ones), then a power loss, leaves a partition whose reopened
// producer table still answers a retry with its original offsets and accepts the next batch.
#[test]
fn a_crash_at_any_step_of_a_snapshot_keeps_producer_state_right() {
    for die_after in 0..12u64 {
        let storage = CrashStorage::seeded(die_after);
        let mut core = open(&storage);
        let mut seen = Seen::default();
        let mut offsets = Vec::new();
        for i in 0..3u32 {
            produce(
                &mut core,
                &mut seen,
                idempotent(4, i * 2, 2),
                Acks::Durable,
                i,
            );
            drain_flushes(&mut core, &mut seen);
            let job = core.take_snapshot_job().unwrap();
            let upto = job.upto_offset();
            if i == 2 {
                storage.die_after_ops(Some(die_after));
            }
            let r = block_on(job.run());
            core.snapshot_done(upto, &r);
            offsets.push(*seen.replies.last().unwrap().1.as_ref().unwrap());
        }
        drop(core);
        storage.die_after_ops(None);
        storage.crash(|f, w, b| (f * 7 + w * 3 + b) % 2 == 0);
        let mut core = open(&storage);
        let mut seen = Seen::default();
        for (i, original) in offsets.iter().enumerate() {
            let seq = u32::try_from(i).unwrap() * 2;
            let retry = produce(&mut core, &mut seen, idempotent(4, seq, 2), Acks::Leader, 9);
            assert_eq!(
                retry,
                Produced::Duplicate(*original),
                "die after {die_after}"
            );
        }
        let next = produce(&mut core, &mut seen, idempotent(4, 6, 1), Acks::Leader, 10);
        assert!(
            matches!(next, Produced::Appended { .. }),
            "die after {die_after}: {next:?}"
        );
    }
}

fn old_batch(timestamp_us: i64) -> Bytes {
    let mut b = BatchBuilder::new();
    b.push(timestamp_us, None, b"old".to_vec(), Vec::new());
    b.build().unwrap()
}

// Proves: retention through the core's jobs removes an expired segment (the log start moves)
// and, regression, that this works when the expired data was written but not yet synced: the
// roll syncs the file without moving the durable offset, so the log start passes it, which
// the core's invariant checks must accept rather than abort the shard.
#[test]
fn retention_removes_expired_segments_even_of_unsynced_data() {
    let storage = CrashStorage::new();
    let mut core = open(&storage);
    core.set_retention(None, Some(1_000));
    let mut seen = Seen::default();
    produce(&mut core, &mut seen, old_batch(1_000), Acks::Leader, 1);
    run_flush(&mut core, &mut seen).unwrap();
    let w = core.watermarks();
    assert_eq!((w.written_offset, w.durable_offset), (1, 0));
    let now_ms = 1_000_000;
    block_on(core.retention_roll().run(now_ms)).unwrap();
    let expired = core.take_expired(now_ms);
    assert!(!expired.is_empty());
    block_on(expired.run()).unwrap();
    assert_eq!(core.watermarks().log_start, 1);
    produce(
        &mut core,
        &mut seen,
        old_batch(now_ms * 1000),
        Acks::Leader,
        2,
    );
    let report = run_flush(&mut core, &mut seen).unwrap();
    assert_eq!(report.result.unwrap().written_offset, 2);
}
