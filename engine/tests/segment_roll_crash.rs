//! Segment rolls off the write path (docs/storage.md, "Segment rolls"), on the in-memory crash
//! image: the next segment file is prepared ahead (`take_prepare`), the roll's flush renames it
//! and writes into it without syncing the sealed segment, and a seal job (`take_seal`) syncs
//! and indexes the sealed segment beside the following flushes.
//!
//! Proves: a process death at every storage step of that sequence (the prepare half-made, the
//! rename done or not, the new segment's writes before the sealed one's sync, a syncing flush
//! of the new segment while the seal runs, the seal's index writes), followed by a power loss
//! that keeps all, none or a seeded part of the unsynced writes, or by a kill, always reopens
//! to a log that is a prefix of what was appended and holds every batch the durable offset
//! covered; leftover prepared files are gone after the open; the durable offset never passes a
//! sealed segment whose seal is running; no index file is written while a seal runs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::path::Path;

use bytes::Bytes;
use futures_lite::future::block_on;
use shardline_engine::batch::{self, BatchBuilder, BatchHeader};
use shardline_engine::log::{LogConfig, PartitionLog, ReadPlan};
use shardline_engine::storage::CrashStorage;

type Log = PartitionLog<CrashStorage>;

fn dir() -> &'static Path {
    Path::new("/data/roll/0")
}

/// 64 KiB segments, 8 KiB prepared zeros, a checkpoint of the active segment every 16 KiB (so a
/// flush would write index files often, and the gating while a seal runs is exercised).
fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 64 << 10,
        segment_ms: u64::MAX / 4,
        index_interval_bytes: 1024,
        write_chunk_bytes: 64 << 10,
        checkpoint_interval_bytes: 16 << 10,
        retention_bytes: None,
        retention_ms: None,
        cache_bytes: 0,
        encryption: None,
        preallocate_bytes: 8 << 10,
    }
}

fn make_batch(i: usize) -> Bytes {
    let mut b = BatchBuilder::new();
    let value: Vec<u8> = (0..3000).map(|j| (i * 31 + j * 7) as u8).collect();
    b.push(1_000_000 + i as i64, None, value, Vec::new());
    b.build().expect("batch")
}

fn open(storage: &CrashStorage) -> shardline_engine::Result<Log> {
    let mut log = block_on(Log::open(storage.clone(), dir(), config(), 0))?;
    log.set_background_rolls(true);
    Ok(log)
}

fn read_all(log: &Log) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut offset = log.log_start();
    let hw = log.watermarks().written_offset;
    while offset < hw {
        let r = match log.plan_read(offset, 5000, 1000).expect("plan") {
            ReadPlan::Ready(r) => r,
            ReadPlan::Disk(d) => block_on(d.run()).expect("disk read"),
        };
        assert!(r.records > 0, "no progress at {offset} below {hw}");
        for chunk in &r.chunks {
            for b in batch::split_batches(chunk).expect("split") {
                let h = batch::check_crc(b).expect("served batch must pass its CRC");
                assert!(h.base_offset <= offset && offset < h.next_offset(), "gap");
                offset = h.next_offset();
                out.push(Bytes::copy_from_slice(b));
            }
        }
    }
    out
}

fn names(storage: &CrashStorage) -> Vec<String> {
    storage.list_names(dir()).expect("list")
}

/// What a run of the roll sequence appended and had acknowledged as durable.
#[derive(Default)]
struct Run {
    model: Vec<Bytes>,
    /// The highest durable offset the log reported while its storage was alive.
    acked_durable: u64,
    completed: bool,
}

impl Run {
    fn append(&mut self, log: &mut Log, n: usize) {
        for _ in 0..n {
            let b = make_batch(self.model.len());
            let a = log.append(b.clone(), 0).expect("append");
            let mut expected = b.to_vec();
            batch::set_base_offset(&mut expected, a.base_offset);
            self.model.push(Bytes::from(expected));
        }
    }

    /// Notes the durable offset; false once the log failed (the process is dead).
    fn alive(&mut self, log: &Log) -> bool {
        if log.failure().is_some() {
            return false;
        }
        self.acked_durable = self.acked_durable.max(log.watermarks().durable_offset);
        true
    }

    fn flush(&mut self, log: &mut Log, sync: bool) -> bool {
        if let Some(job) = log.take_flush(sync) {
            let done = block_on(job.run());
            let _ = log.finish_flush(done);
        }
        self.alive(log)
    }

    fn prepare(&mut self, log: &mut Log) -> bool {
        if let Some(job) = log.take_prepare() {
            let done = block_on(job.run());
            log.finish_prepare(done);
        }
        self.alive(log)
    }
}

/// Every step of two rolls: prepare, roll (leader flush: rename and writes, no sync), take the
/// seal, a syncing flush of the new segment and the seal (in either order), then a second roll
/// whose flush syncs (durable producers waiting) and its seal. Stops where the storage dies.
fn roll_sequence(log: &mut Log, seal_first: bool) -> Run {
    let mut run = Run::default();
    run.append(log, 12); // ~36 KiB: past half a segment
    if !run.flush(log, true) || !run.prepare(log) {
        return run;
    }
    let segments = log.segment_count();
    run.append(log, 12); // rolls at 64 KiB
    assert!(log.segment_count() > segments, "the appends rolled");
    if !run.flush(log, false) {
        return run;
    }
    let Some(seal) = log.take_seal() else {
        panic!("a sealed, written segment waits for its seal");
    };
    let sealed_end = log.watermarks().written_offset;
    run.append(log, 3);
    let seal_done = if seal_first {
        Some(block_on(seal.run()))
    } else {
        if !run.flush(log, true) {
            return run;
        }
        assert!(
            log.watermarks().durable_offset < sealed_end,
            "durable offset passed a sealed segment whose seal runs"
        );
        let done = block_on(seal.run());
        Some(done)
    };
    if let Some(done) = seal_done {
        let _ = log.finish_seal(done);
    }
    if !run.alive(log) || !run.flush(log, true) || !run.prepare(log) {
        return run;
    }
    run.append(log, 14); // the second roll, its flush syncing
    if !run.flush(log, true) {
        return run;
    }
    if let Some(seal) = log.take_seal() {
        let done = block_on(seal.run());
        let _ = log.finish_seal(done);
    }
    run.completed = run.alive(log);
    run
}

/// The recovered log: opens, serves a prefix of what was appended that covers every durably
/// acknowledged batch, left no prepared file behind, and takes appends that survive a reopen.
fn check_recovered(storage: &CrashStorage, run: &Run, what: &str) {
    let mut log = open(storage).unwrap_or_else(|e| panic!("{what}: open failed: {e}"));
    let got = read_all(&log);
    assert!(
        got.len() <= run.model.len() && got[..] == run.model[..got.len()],
        "{what}: the recovered log is not a prefix of what was appended"
    );
    let end = got
        .last()
        .map_or(0, |b| BatchHeader::parse(b).unwrap().next_offset());
    assert!(
        end >= run.acked_durable,
        "{what}: durable offset {} acknowledged, the log ends at {end}",
        run.acked_durable
    );
    assert!(
        !names(storage).iter().any(|n| n.ends_with(".tmp")),
        "{what}: a temporary (prepared) file survived the open: {:?}",
        names(storage)
    );
    let mut model = got;
    let b = make_batch(1000);
    let a = log.append(b.clone(), 0).expect("append after recovery");
    let mut expected = b.to_vec();
    batch::set_base_offset(&mut expected, a.base_offset);
    model.push(Bytes::from(expected));
    let job = log.take_flush(true).expect("a flush");
    log.finish_flush(block_on(job.run()))
        .unwrap_or_else(|e| panic!("{what}: flush after recovery: {e}"));
    drop(log);
    let log = open(storage).unwrap_or_else(|e| panic!("{what}: reopen failed: {e}"));
    assert_eq!(
        read_all(&log),
        model,
        "{what}: after an append and a reopen"
    );
}

/// A seeded choice of which unsynced block writes reached the disk.
fn seeded_keep(seed: u64) -> impl FnMut(usize, usize, usize) -> bool {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    move |_, _, _| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        !x.is_multiple_of(3)
    }
}

fn crash_everywhere(seal_first: bool) {
    let mut completed_at = None;
    // Bounded: the sequence takes a few hundred storage operations.
    for ops in 0..2000u64 {
        for variant in 0..4u64 {
            let storage = CrashStorage::new();
            let mut log = open(&storage).expect("open a new log");
            storage.die_after_ops(Some(ops));
            let run = roll_sequence(&mut log, seal_first);
            drop(log);
            storage.die_after_ops(None);
            let what = format!("seal_first {seal_first}, death after {ops} ops, variant {variant}");
            match variant {
                0 => storage.kill(|_, _, _| true),
                1 => storage.crash(|_, _, _| true),
                2 => storage.crash(|_, _, _| false),
                _ => storage.crash(seeded_keep(ops)),
            }
            check_recovered(&storage, &run, &what);
            if run.completed {
                completed_at = Some(ops);
            }
        }
        if completed_at.is_some() {
            break;
        }
    }
    let ops = completed_at.expect("the sequence completes within the bound");
    println!("seal_first {seal_first}: crashed at each of {ops} storage steps, 4 ways each");
}

#[test]
fn crash_at_every_step_of_a_roll_flush_first() {
    crash_everywhere(false);
}

#[test]
fn crash_at_every_step_of_a_roll_seal_first() {
    crash_everywhere(true);
}

/// While a seal runs: a syncing flush of the new segment neither moves the durable offset past
/// the sealed segment nor writes an index file; the seal's end moves it over both, and writes
/// the sealed segment's final index.
#[test]
fn the_durable_offset_and_index_files_wait_for_the_seal() {
    let storage = CrashStorage::new();
    let mut log = open(&storage).unwrap();
    let mut run = Run::default();
    run.append(&mut log, 12);
    assert!(run.flush(&mut log, true));
    assert!(run.prepare(&mut log));
    assert!(
        names(&storage).iter().any(|n| n.starts_with("prepared-")),
        "the next segment is prepared once the active one is half full: {:?}",
        names(&storage)
    );
    run.append(&mut log, 12);
    assert!(run.flush(&mut log, false));
    assert!(
        !names(&storage).iter().any(|n| n.starts_with("prepared-")),
        "the roll took the prepared file"
    );
    assert_eq!(log.segment_count(), 2);
    let sealed_end = log.watermarks().written_offset;
    let durable_before = log.watermarks().durable_offset;
    let seal = log.take_seal().expect("a seal");
    assert!(log.is_sealing());
    let index_files = |s: &CrashStorage| {
        names(s)
            .into_iter()
            .filter(|n| n.ends_with(".idx"))
            .collect::<Vec<_>>()
    };
    let indexes_before = index_files(&storage);
    run.append(&mut log, 8); // 24 KiB: past the 16 KiB checkpoint interval
    assert!(run.flush(&mut log, true));
    let w = log.watermarks();
    assert_eq!(w.written_offset, w.next_offset);
    // The sealed segment starts at 0: nothing past what was durable before may count.
    assert!(sealed_end > durable_before);
    assert_eq!(
        w.durable_offset, durable_before,
        "the durable offset moved into the sealed segment during its seal"
    );
    assert_eq!(
        index_files(&storage),
        indexes_before,
        "an index file was written while a seal ran"
    );
    let w = log
        .finish_seal(block_on(seal.run()))
        .unwrap()
        .expect("new watermarks");
    assert_eq!(
        w.durable_offset, w.next_offset,
        "the seal's end covers the flush that synced meanwhile"
    );
    assert!(!log.is_sealing());
    // The next syncing flush writes the new segment's checkpoint again.
    run.append(&mut log, 1);
    assert!(run.flush(&mut log, true));
    assert_eq!(index_files(&storage).len(), indexes_before.len() + 1);
    drop(log);
    let log = open(&storage).unwrap();
    assert_eq!(read_all(&log), run.model);
    assert_eq!(
        log.recovery.rebuilt_indexes, 0,
        "the sealed segment's index is valid"
    );
}

/// A prepared file left by a crash (whole or half-made) is removed at open and never read as a
/// segment.
#[test]
fn leftover_prepared_files_are_removed_at_open() {
    let storage = CrashStorage::new();
    let mut log = open(&storage).unwrap();
    let mut run = Run::default();
    run.append(&mut log, 12);
    assert!(run.flush(&mut log, true));
    assert!(run.prepare(&mut log));
    drop(log);
    // A second, half-made one: created and named, its zeros not written.
    let half = dir().join("prepared-999999.log.tmp");
    drop(block_on(shardline_engine::storage::Storage::open(&storage, &half)).unwrap());
    block_on(shardline_engine::storage::Storage::sync_dir(
        &storage,
        dir(),
    ))
    .unwrap();
    storage.crash(|_, _, _| false);
    assert_eq!(
        names(&storage)
            .iter()
            .filter(|n| n.starts_with("prepared-"))
            .count(),
        2
    );
    let log = open(&storage).unwrap();
    assert_eq!(log.segment_count(), 1);
    assert_eq!(read_all(&log), run.model);
    assert!(
        !names(&storage).iter().any(|n| n.ends_with(".tmp")),
        "{:?}",
        names(&storage)
    );
}
