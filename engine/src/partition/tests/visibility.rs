//! What readers see before a batch is written or synced (issue 18, "Delivery from memory";
//! docs/semantics.md, "What readers see"): with the storage's writes held, a read with
//! `Isolation::Appended` gets a `leader` producer's batch at once, a `Durable` read does not
//! until a sync covered it, and a batch a `durable` producer waits for stays invisible (and
//! holds back the batches after it) until it is written.

use futures_lite::future::poll_once;

use super::*;
use crate::log::ReadPlan;
use crate::storage::ParkedKind;

/// Records of a read ending at the core's visible end for `isolation` (all served from memory
/// or from the file, run to completion).
fn read(core: &TestCore, offset: u64, isolation: Isolation) -> (usize, Vec<u64>) {
    let end = core.visible_end(isolation);
    let plan = core
        .log()
        .plan_read_upto(offset, 1 << 20, 10_000, end)
        .unwrap();
    let r = match plan {
        ReadPlan::Ready(r) => r,
        ReadPlan::Disk(d) => block_on(d.run()).unwrap(),
    };
    let mut bases = Vec::new();
    for c in &r.chunks {
        for b in crate::batch::split_batches(c).unwrap() {
            bases.push(BatchHeader::parse(b).unwrap().base_offset);
        }
    }
    (r.records, bases)
}

// Proves: a `leader` batch is readable (and readers are woken) while its write is parked in the
// storage; a durable-only reader sees it only once a sync covered it. Fails on a core whose
// readers end at the high watermark (the behaviour before issue 18).
#[test]
fn a_leader_batch_is_delivered_before_its_write_and_durable_readers_wait_for_the_sync() {
    let storage = CrashStorage::new();
    let mut core = open(&storage);
    let mut seen = Seen::default();
    storage.hold_writes(true);
    produce(&mut core, &mut seen, plain(3), Acks::Leader, 1);
    assert_eq!(seen.wakes, 1, "the append wakes readers");
    let flush = seen.flushes.pop().expect("the append planned a flush");
    let mut job = Box::pin(flush.job.run());
    assert!(block_on(poll_once(&mut job)).is_none(), "the write is held");
    assert!(
        storage
            .parked()
            .iter()
            .any(|(_, k)| *k == ParkedKind::Write),
        "a write waits in the storage"
    );
    let w = core.watermarks();
    assert_eq!(
        (w.written_offset, w.durable_offset, w.next_offset),
        (0, 0, 3)
    );
    assert_eq!(read(&core, 0, Isolation::Appended), (3, vec![0]));
    assert_eq!(read(&core, 0, Isolation::Durable), (0, vec![]));
    // A reader already past the batch waits (no error) for the next one.
    assert_eq!(read(&core, 3, Isolation::Appended), (0, vec![]));

    // The write completes: still not durable (a leader flush does not sync).
    storage.hold_writes(false);
    for (t, _) in storage.parked() {
        storage.complete(t);
    }
    let done = block_on(job);
    let mut out = Vec::new();
    core.flush_done(done, 0, &mut out);
    seen.take(&core, out);
    assert_eq!(core.watermarks().written_offset, 3);
    assert_eq!(read(&core, 0, Isolation::Durable), (0, vec![]));
    assert_eq!(read(&core, 0, Isolation::Appended), (3, vec![0]));

    // The sync timer's flush makes it durable: now the durable-only reader gets it.
    let mut out = Vec::new();
    core.sync_timer_fired(&mut out);
    seen.take(&core, out);
    drain_flushes(&mut core, &mut seen);
    assert_eq!(core.watermarks().durable_offset, 3);
    assert_eq!(read(&core, 0, Isolation::Durable), (3, vec![0]));
}

// Proves: the batch a `durable` producer waits for is seen by `Appended` readers once written
// (as before issue 18), not before, and a later `leader` batch waits behind it (reads are in
// offset order); the `leader` batch before it is seen at once.
#[test]
fn a_durable_producers_batch_is_seen_once_written_and_holds_back_later_batches() {
    let storage = CrashStorage::new();
    let mut core = open(&storage);
    let mut seen = Seen::default();
    storage.hold_writes(true);
    produce(&mut core, &mut seen, plain(3), Acks::Leader, 1);
    produce(&mut core, &mut seen, plain(2), Acks::Durable, 2);
    produce(&mut core, &mut seen, plain(4), Acks::Leader, 3);
    assert_eq!(core.watermarks().next_offset, 9);
    assert_eq!(core.visible_end(Isolation::Appended), 3);
    assert_eq!(read(&core, 0, Isolation::Appended), (3, vec![0]));
    assert_eq!(read(&core, 3, Isolation::Appended), (0, vec![]));
    // The first flush took only the first batch; its write is parked: complete it.
    let flush = seen.flushes.pop().expect("a flush");
    let mut job = Box::pin(flush.job.run());
    assert!(block_on(poll_once(&mut job)).is_none());
    storage.hold_writes(false);
    for (t, _) in storage.parked() {
        storage.complete(t);
    }
    let mut out = Vec::new();
    core.flush_done(block_on(job), 0, &mut out);
    seen.take(&core, out);
    assert_eq!(core.watermarks().written_offset, 3);
    assert_eq!(
        core.visible_end(Isolation::Appended),
        3,
        "still not written"
    );
    drain_flushes(&mut core, &mut seen);
    let w = core.watermarks();
    assert_eq!((w.written_offset, w.durable_offset), (9, 9));
    assert_eq!(read(&core, 3, Isolation::Appended), (6, vec![3, 5]));
    assert_eq!(seen.tokens(), vec![1, 3, 2]);
}

// Proves: after a failed flush, `Appended` readers see only what the file holds (the repair
// reopens the log from it and the unwritten batches are gone); after the repair the offsets
// are dense again from the file's end.
#[test]
fn a_failed_flush_hides_unwritten_batches_and_the_repair_keeps_offsets_dense() {
    let storage = CrashStorage::new();
    let mut core = open(&storage);
    let mut seen = Seen::default();
    produce(&mut core, &mut seen, plain(2), Acks::Leader, 1);
    drain_flushes(&mut core, &mut seen);
    storage.set_fail_io(true);
    produce(&mut core, &mut seen, plain(3), Acks::Leader, 2);
    assert_eq!(core.visible_end(Isolation::Appended), 5);
    assert_eq!(read(&core, 2, Isolation::Appended), (3, vec![2]));
    run_flush(&mut core, &mut seen).unwrap();
    assert!(core.failure().is_some(), "the flush failed");
    assert_eq!(core.visible_end(Isolation::Appended), 2);
    storage.set_fail_io(false);
    let job = seen.repairs.pop().expect("a repair");
    let reopened = block_on(job.run(0));
    let mut out = Vec::new();
    core.repaired(reopened, &mut out).unwrap();
    seen.take(&core, out);
    assert_eq!(core.watermarks().next_offset, 2);
    produce(&mut core, &mut seen, plain(1), Acks::Leader, 3);
    assert_eq!(read(&core, 2, Isolation::Appended), (1, vec![2]));
}
