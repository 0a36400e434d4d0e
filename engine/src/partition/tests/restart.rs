//! Restarting a partition's log at another offset (docs/storage.md, "Restarting a log at an
//! offset"): crash-safe at every storage step, and the producer table, watermarks and reads
//! below the new start behave as after retention.

use super::*;
use crate::log::ReadPlan;

/// A batch of about 4 KiB from idempotent producer 7 (sequence `seq`, 20 records).
fn big(seq: u32) -> Bytes {
    let mut b = BatchBuilder::new().producer(ProducerInfo {
        producer_id: 7,
        producer_epoch: 0,
        base_sequence: seq,
    });
    for i in 0..20 {
        b.push_value(format!("{seq}-{i}-{}", "v".repeat(200)));
    }
    b.build().unwrap()
}

/// Every batch of the log: (base offset, record count).
fn batches(core: &TestCore) -> Vec<(u64, u32)> {
    let w = core.watermarks();
    let mut out = Vec::new();
    let mut offset = w.log_start;
    while offset < w.written_offset {
        let plan = core.log().plan_read(offset, 1 << 20, usize::MAX).unwrap();
        let r = match plan {
            ReadPlan::Ready(r) => r,
            ReadPlan::Disk(d) => block_on(d.run()).unwrap(),
        };
        for c in &r.chunks {
            for b in crate::batch::split_batches(c).unwrap() {
                let h = BatchHeader::parse(b).unwrap();
                out.push((h.base_offset, h.record_count));
                offset = h.next_offset();
            }
        }
    }
    out
}

/// A core over several segments of producer 7's batches, all durable, with a producer
/// snapshot on disk. Returns it and its batches.
fn filled(storage: &CrashStorage) -> (TestCore, Vec<(u64, u32)>) {
    let mut core = open(storage);
    let mut seen = Seen::default();
    for i in 0..40u32 {
        produce(&mut core, &mut seen, big(i * 20), Acks::Durable, i);
        drain_flushes(&mut core, &mut seen);
    }
    assert!(seen.replies.iter().all(|r| r.1.is_ok()));
    // The snapshots the checkpoints asked for, then one at the end.
    let mut jobs: Vec<SnapshotJob<CrashStorage>> = seen.snapshots.drain(..).collect();
    for _ in 0..2 {
        for job in jobs.drain(..) {
            let upto = job.upto_offset();
            let r = block_on(job.run());
            core.snapshot_done(upto, &r);
            r.unwrap();
        }
        jobs.extend(core.take_snapshot_job());
    }
    assert!(names(storage).iter().any(|n| n.starts_with("producers-")));
    assert!(core.log().segment_count() >= 3, "a log of several segments");
    let old = batches(&core);
    assert_eq!(old.len(), 40);
    (core, old)
}

fn names(storage: &CrashStorage) -> Vec<String> {
    storage.list_names(Path::new(DIR)).unwrap()
}

// Proves: a process dying after any storage operation of a restart at offset S, then losing
// power with or without its unsynced blocks, opens as either the old log (whole: every batch at
// its offset, the producer's state) or the new one (empty from S, one segment, no producer
// state or snapshot, no marker); a finished restart is never lost; either way the log takes
// appends at its end.
#[test]
fn a_restart_at_an_offset_survives_a_crash_at_every_step() {
    let (mut saw_old, mut saw_new) = (false, false);
    let mut done_at = None;
    for ops in 0..200u64 {
        if done_at.is_some_and(|d| ops > d + 2) {
            break;
        }
        for keep in [false, true] {
            let storage = CrashStorage::new();
            let (mut core, old) = filled(&storage);
            let end = core.watermarks().next_offset;
            let start = end + 1000;
            let mut out = Vec::new();
            let job = core.begin_restart(start, &mut out).unwrap();
            storage.die_after_ops(Some(ops));
            let done = block_on(job.run(0)).is_ok();
            storage.die_after_ops(None);
            if done && done_at.is_none() {
                done_at = Some(ops);
            }
            drop(core);
            storage.crash(|_, _, _| keep);
            let mut core = open(&storage);
            let w = core.watermarks();
            let files = names(&storage);
            assert!(
                !files.iter().any(|n| n.starts_with("restart-at")),
                "{files:?}"
            );
            if w.log_start == start {
                assert_eq!(w.next_offset, start, "ops {ops}");
                assert_eq!(core.log().segment_count(), 1, "ops {ops}: {files:?}");
                assert!(core.producers().is_empty(), "ops {ops}");
                assert!(
                    !files.iter().any(|n| n.starts_with("producers-")),
                    "ops {ops}"
                );
                saw_new = true;
            } else {
                assert!(!done, "ops {ops}: a finished restart was lost");
                assert_eq!((w.log_start, w.next_offset), (0, end), "ops {ops}");
                assert_eq!(batches(&core), old, "ops {ops}: the old log is not whole");
                assert!(core.producers().get(7).is_some(), "ops {ops}");
                saw_old = true;
            }
            let mut seen = Seen::default();
            produce(&mut core, &mut seen, plain(3), Acks::Durable, 99);
            drain_flushes(&mut core, &mut seen);
            let ack = seen.replies[0].1.as_ref().unwrap();
            assert_eq!(
                ack.base_offset, w.next_offset,
                "ops {ops}: dense from the end"
            );
        }
    }
    assert!(saw_old && saw_new && done_at.is_some());
    eprintln!("a restart completes after {done_at:?} storage operations");
}

// Proves: while a restart runs appends are refused; after it the log is empty from S, its
// watermarks are S, reads below S are out of range (as after retention), the producer table
// is empty (a continuing sequence is an unknown producer, a new producer appends), appends
// get dense offsets from S, and a reopen sees the same.
#[test]
fn a_restarted_log_starts_at_its_offset_with_an_empty_producer_table() {
    let storage = CrashStorage::new();
    let (mut core, _) = filled(&storage);
    let end = core.watermarks().next_offset;
    let mut out = Vec::new();
    assert!(matches!(
        core.begin_restart(end - 1, &mut out),
        Err(Error::InvalidArgument(_))
    ));
    let start = end + 500;
    let job = core.begin_restart(start, &mut out).unwrap();
    assert_eq!(job.start_offset(), start);
    let mut seen = Seen::default();
    let refused = produce(&mut core, &mut seen, plain(1), Acks::Leader, 1);
    assert_eq!(refused, Produced::Refused);
    assert!(seen.replies[0].1.is_err());
    assert!(
        core.take_snapshot_job().is_none(),
        "a producer snapshot of the old log while it is being removed"
    );
    let r = block_on(job.run(0));
    let w = core.restarted(r, &mut out).unwrap();
    assert_eq!(
        (w.log_start, w.next_offset, w.written_offset),
        (start, start, start)
    );
    assert_eq!(w.durable_offset, start);
    assert!(core.producers().is_empty());
    assert!(matches!(
        core.log().plan_read(start - 1, 1 << 20, 100),
        Err(Error::OffsetOutOfRange { log_start, .. }) if log_start == start
    ));
    let mut seen = Seen::default();
    let continuing = produce(&mut core, &mut seen, big(40 * 20), Acks::Durable, 2);
    assert_eq!(continuing, Produced::Refused, "the table forgot producer 7");
    assert!(matches!(
        seen.replies[0].1,
        Err(Error::UnknownProducer { .. })
    ));
    produce(&mut core, &mut seen, big(0), Acks::Durable, 3);
    produce(&mut core, &mut seen, plain(2), Acks::Durable, 4);
    drain_flushes(&mut core, &mut seen);
    assert_eq!(batches(&core), vec![(start, 20), (start + 20, 2)]);
    drop(core);
    storage.crash(|_, _, _| false);
    let core = open(&storage);
    assert_eq!(core.watermarks().log_start, start);
    assert_eq!(batches(&core), vec![(start, 20), (start + 20, 2)]);
    assert!(core.producers().get(7).is_some());
}
