//! Proves the partition log's everyday behaviour on the in-memory crash image: segments roll by
//! size and by age and reads cross their boundaries without gaps; retention deletes whole sealed
//! segments (by bytes and by age, including an expired active segment) and moves the log start;
//! a timestamp lookup finds the first offset at or after a time; and, as a property, random
//! appends and restarts never make a read serve anything but the appended batches.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures_lite::future::block_on;
use proptest::prelude::*;
use rand::{RngExt, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use shardline_engine::Error;
use shardline_engine::batch::{self, BatchBuilder, BatchHeader};
use shardline_engine::log::{self, LogConfig, PartitionLog, ReadPlan, ReadResult};
use shardline_engine::storage::CrashStorage;

type Log = PartitionLog<CrashStorage>;

const SEGMENT_BYTES: u64 = 64 << 10;

fn dir() -> &'static Path {
    Path::new("/data/behaviour/0")
}

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: SEGMENT_BYTES,
        segment_ms: u64::MAX / 4,
        index_interval_bytes: 2048,
        write_chunk_bytes: 64 << 10,
        checkpoint_interval_bytes: 16 << 10,
        retention_bytes: None,
        retention_ms: None,
        cache_bytes: 8 << 10,
        encryption: None,
        preallocate_bytes: 0,
    }
}

fn open_with(storage: &CrashStorage, cfg: &LogConfig, now_ms: i64) -> Log {
    block_on(Log::open(storage.clone(), dir(), cfg.clone(), now_ms)).expect("open")
}

/// A batch whose record `r` has timestamp `timestamps_us[r]` and a value derived from `seed`.
fn batch_at(seed: usize, timestamps_us: &[i64], value_bytes: usize) -> Bytes {
    let mut b = BatchBuilder::new();
    for (r, ts) in timestamps_us.iter().enumerate() {
        let value: Vec<u8> = (0..value_bytes)
            .map(|j| (seed * 13 + r * 7 + j) as u8)
            .collect();
        b.push(*ts, None, value, Vec::new());
    }
    b.build().expect("batch")
}

fn make_batch(seed: usize, records: usize, value_bytes: usize) -> Bytes {
    let timestamps: Vec<i64> = (0..records)
        .map(|r| 1_000_000 + (seed * 8 + r) as i64)
        .collect();
    batch_at(seed, &timestamps, value_bytes)
}

struct Harness {
    storage: CrashStorage,
    cfg: LogConfig,
    /// `None` only while a test holds the log elsewhere.
    log: Option<Log>,
    /// Every batch appended and not lost, as the log must serve it (base offset patched in).
    model: Vec<Bytes>,
    /// How many of `model` a completed sync covers.
    durable: usize,
}

impl Harness {
    fn new(cfg: LogConfig) -> Self {
        let storage = CrashStorage::new();
        let log = Some(open_with(&storage, &cfg, 0));
        Harness {
            storage,
            cfg,
            log,
            model: Vec::new(),
            durable: 0,
        }
    }

    fn log(&self) -> &Log {
        self.log.as_ref().expect("log open")
    }

    fn log_mut(&mut self) -> &mut Log {
        self.log.as_mut().expect("log open")
    }

    fn take_log(&mut self) -> Log {
        self.log.take().expect("log open")
    }

    fn append_at(&mut self, batch: Bytes, now_ms: i64) {
        let appended = self
            .log_mut()
            .append(batch.clone(), now_ms)
            .expect("append");
        assert_eq!(
            appended.base_offset,
            self.model.last().map_or(0, |b| next_of(b))
        );
        let mut expected = batch.to_vec();
        batch::set_base_offset(&mut expected, appended.base_offset);
        self.model.push(Bytes::from(expected));
    }

    fn append(&mut self, batch: Bytes) {
        self.append_at(batch, 0);
    }

    fn flush(&mut self, sync: bool) {
        if let Some(job) = self.log_mut().take_flush(sync) {
            let syncs = job.syncs();
            let done = block_on(job.run());
            self.log_mut().finish_flush(done).expect("flush");
            if syncs {
                self.durable = self.model.len();
            }
        }
    }

    /// Clean shutdown and restart of the process (no power loss).
    fn restart_clean(&mut self, now_ms: i64) {
        self.flush(true);
        block_on(self.take_log().close()).expect("close");
        self.log = Some(open_with(&self.storage, &self.cfg, now_ms));
    }

    /// Power loss that keeps no unsynced write: exactly the synced batches survive.
    fn restart_after_crash(&mut self) {
        drop(self.take_log());
        self.storage.crash(|_, _, _| false);
        self.log = Some(open_with(&self.storage, &self.cfg, 0));
        self.model.truncate(self.durable);
        assert_eq!(
            self.read_all(),
            self.model,
            "exactly the synced batches survive"
        );
    }

    fn read_all(&self) -> Vec<Bytes> {
        read_range(self.log(), self.log().log_start(), 5000)
    }
}

fn base_of(b: &[u8]) -> u64 {
    BatchHeader::parse(b).expect("header").base_offset
}

fn next_of(b: &[u8]) -> u64 {
    BatchHeader::parse(b).expect("header").next_offset()
}

fn read(log: &Log, offset: u64, max_bytes: usize, max_records: usize) -> Result<ReadResult, Error> {
    match log.plan_read(offset, max_bytes, max_records)? {
        ReadPlan::Ready(r) => Ok(r),
        ReadPlan::Disk(d) => block_on(d.run()),
    }
}

/// The batches of a read of `offset`: each passes its CRC, the first covers `offset`, the rest
/// follow it without gaps.
fn checked_batches(result: &ReadResult, offset: u64) -> Vec<Bytes> {
    let mut out: Vec<Bytes> = Vec::new();
    for chunk in &result.chunks {
        for b in batch::split_batches(chunk).expect("split") {
            let h = batch::check_crc(b).expect("a served batch must pass its CRC");
            match out.last() {
                None => assert!(
                    h.base_offset <= offset && offset < h.next_offset(),
                    "first batch {}..{} does not cover {offset}",
                    h.base_offset,
                    h.next_offset()
                ),
                Some(prev) => assert_eq!(h.base_offset, next_of(prev), "gap after a batch"),
            }
            out.push(Bytes::copy_from_slice(b));
        }
    }
    out
}

fn read_range(log: &Log, from: u64, max_bytes: usize) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut offset = from;
    let hw = log.watermarks().written_offset;
    while offset < hw {
        let result = read(log, offset, max_bytes, 1000).expect("read");
        let batches = checked_batches(&result, offset);
        let last = batches.last().expect("progress below the high watermark");
        offset = next_of(last);
        out.extend(batches);
    }
    out
}

fn segment_bases(storage: &CrashStorage) -> Vec<u64> {
    let names = storage.list_names(dir()).expect("list");
    names
        .iter()
        .filter_map(|n| n.strip_suffix(".log"))
        .map(|stem| stem.parse().expect("segment name"))
        .collect()
}

fn file_path(base: u64, ext: &str) -> PathBuf {
    dir().join(format!("{base:020}.{ext}"))
}

/// The segment bases a size-rolled log must have for these batch lengths: a batch that would
/// take a non-empty segment past `SEGMENT_BYTES` starts a new one.
fn expected_bases(model: &[Bytes]) -> Vec<u64> {
    let mut bases = vec![0];
    let mut used = 0u64;
    for b in model {
        if used > 0 && used + b.len() as u64 > SEGMENT_BYTES {
            bases.push(base_of(b));
            used = 0;
        }
        used += b.len() as u64;
    }
    bases
}

// Proves: the active segment rolls exactly when the next batch would take it past
// `segment_bytes`; no segment file holds more; and reads with any size budget, from any offset,
// cross segment boundaries with contiguous offsets, before and after a restart.
#[test]
fn segments_roll_by_size_and_reads_cross_boundaries_contiguously() {
    let mut h = Harness::new(config());
    for i in 0..60 {
        h.append(make_batch(i, 1 + i % 4, 300 + (i * 2311) % 9000));
        if i % 3 == 2 {
            h.flush(true);
        }
    }
    h.flush(true);
    let bases = expected_bases(&h.model);
    assert!(
        bases.len() >= 4,
        "the test needs several segments: {bases:?}"
    );
    assert_eq!(h.log().segment_count(), bases.len());
    assert_eq!(segment_bases(&h.storage), bases);
    for base in &bases {
        let size = h
            .storage
            .with_file_bytes(&file_path(*base, "log"), |b| b.len() as u64);
        assert!(
            size.is_some_and(|s| s <= SEGMENT_BYTES),
            "segment {base}: {size:?} bytes"
        );
    }
    for round in 0..2 {
        for max_bytes in [1, 5000, 1 << 20] {
            assert_eq!(
                read_range(h.log(), 0, max_bytes),
                h.model,
                "round {round}, {max_bytes}"
            );
        }
        for base in bases.iter().skip(1) {
            for offset in [base - 1, *base, base + 1] {
                let got =
                    checked_batches(&read(h.log(), offset, 1 << 20, 1000).expect("read"), offset);
                let at = h
                    .model
                    .iter()
                    .position(|b| next_of(b) > offset)
                    .expect("in model");
                assert_eq!(got[..], h.model[at..at + got.len()], "read at {offset}");
            }
        }
        h.restart_clean(0);
        assert_eq!(h.log().segment_count(), bases.len());
    }
}

// Proves: the active segment rolls once it is `segment_ms` old (by the `now_ms` of append) and
// holds data; an empty segment never rolls; the batches stay readable across the age rolls.
#[test]
fn segments_roll_by_age() {
    let mut h = Harness::new(LogConfig {
        segment_ms: 1000,
        ..config()
    });
    // (now_ms of the append, segment count after it)
    let steps = [
        (0, 1),
        (500, 1),
        (999, 1),
        (1000, 2),
        (1500, 2),
        (1999, 2),
        (2000, 3),
        (2001, 3),
    ];
    for (i, (now_ms, segments)) in steps.into_iter().enumerate() {
        h.append_at(make_batch(i, 2, 100), now_ms);
        assert_eq!(
            h.log().segment_count(),
            segments,
            "after the append at {now_ms} ms"
        );
    }
    h.flush(true);
    assert_eq!(segment_bases(&h.storage), vec![0, 6, 12]);
    assert_eq!(h.read_all(), h.model);

    let mut empty = Harness::new(LogConfig {
        segment_ms: 1000,
        ..config()
    });
    empty.append_at(make_batch(0, 1, 10), 1_000_000);
    assert_eq!(
        empty.log().segment_count(),
        1,
        "an empty segment does not roll"
    );
}

/// Builds a log of 8 full segments of equal batches (timestamps: batch `i` at `i` seconds),
/// synced, every sealed segment with its final index.
fn eight_segments() -> (Harness, Vec<u64>) {
    let mut h = Harness::new(config());
    let mut i = 0;
    while segment_bases(&h.storage).len() < 8 {
        let ts = i as i64 * 1_000_000;
        h.append(batch_at(i, &[ts, ts + 1], 2000));
        h.flush(true);
        i += 1;
    }
    let bases = segment_bases(&h.storage);
    (h, bases)
}

fn assert_out_of_range(log: &Log, offset: u64) {
    match log.plan_read(offset, 1000, 10) {
        Err(Error::OffsetOutOfRange { log_start, .. }) => assert_eq!(log_start, log.log_start()),
        Err(e) => panic!("read at {offset}: expected OffsetOutOfRange, got {e}"),
        Ok(_) => panic!("read at {offset} below the log start must fail"),
    }
}

/// Applies retention at `now_ms`, checks exactly the segments before `first_kept` went (from
/// the log and from storage) and the rest still reads, then restarts and checks again.
fn apply_retention(h: &mut Harness, bases: &[u64], now_ms: i64, first_kept: usize) {
    let files = h.log_mut().take_expired(now_ms);
    let mut expected_files = Vec::new();
    for base in &bases[..first_kept] {
        for ext in ["log", "idx", "tix"] {
            expected_files.push(file_path(*base, ext));
        }
    }
    assert_eq!(files, expected_files);
    let start = bases[first_kept];
    assert_eq!(h.log().log_start(), start);
    assert_eq!(h.log().segment_count(), bases.len() - first_kept);
    block_on(log::remove_files(&h.storage, dir(), &files)).expect("remove");
    for f in &files {
        assert!(!h.storage.exists(f), "{} still exists", f.display());
    }
    assert!(h.storage.exists(&file_path(start, "log")));
    let kept_from = h
        .model
        .iter()
        .position(|b| base_of(b) == start)
        .expect("start");
    for round in 0..2 {
        assert_out_of_range(h.log(), 0);
        assert_out_of_range(h.log(), start - 1);
        assert_eq!(h.read_all(), h.model[kept_from..], "round {round}");
        assert!(
            h.log_mut().take_expired(now_ms).is_empty(),
            "retention is idempotent"
        );
        let next = h.log().watermarks().next_offset;
        h.restart_clean(now_ms);
        assert_eq!(h.log().log_start(), start);
        assert_eq!(h.log().watermarks().next_offset, next);
    }
}

/// Data bytes of each segment of `bases`, from the model.
fn segment_sizes(model: &[Bytes], bases: &[u64]) -> Vec<u64> {
    let mut sizes = vec![0u64; bases.len()];
    for b in model {
        let i = bases.partition_point(|base| *base <= base_of(b)) - 1;
        sizes[i] += b.len() as u64;
    }
    sizes
}

// Proves: retention by bytes deletes the oldest whole sealed segments while what remains is
// still at least `retention_bytes`, never more; the log start moves to the first kept segment,
// reads below it fail with OffsetOutOfRange, and the files are gone from storage.
#[test]
fn retention_by_bytes_deletes_oldest_whole_segments() {
    let (mut h, bases) = eight_segments();
    let sizes = segment_sizes(&h.model, &bases);
    assert_eq!(sizes.iter().sum::<u64>(), h.log().size_bytes());
    let retention_bytes = 3 * sizes[0];
    h.log_mut().set_retention(Some(retention_bytes), None);
    let mut remaining: u64 = sizes.iter().sum();
    let mut first_kept = 0;
    while first_kept + 1 < bases.len() && remaining - sizes[first_kept] >= retention_bytes {
        remaining -= sizes[first_kept];
        first_kept += 1;
    }
    assert!(first_kept >= 3, "the test should delete several segments");
    apply_retention(&mut h, &bases, 0, first_kept);
    let size = h.log().size_bytes();
    assert!(size >= retention_bytes && size - sizes[first_kept] < retention_bytes);
}

// Proves: retention by age deletes the oldest whole sealed segments whose newest record is
// strictly older than `retention_ms`, stops at the first one that is not, and never deletes
// the active segment however old.
#[test]
fn retention_by_age_deletes_segments_older_than_the_limit() {
    let retention_ms = 10_000;
    // Newest record of segment 2, in ms (batch i holds i seconds and i seconds + 1 us).
    let newest_ms = |h: &Harness, bases: &[u64]| {
        let last = h
            .model
            .iter()
            .rfind(|b| base_of(b) < bases[3])
            .expect("segment 2");
        BatchHeader::parse(last).expect("header").max_timestamp_us / 1000
    };
    let (mut h, bases) = eight_segments();
    h.log_mut().set_retention(None, Some(retention_ms));
    let at_limit_ms = newest_ms(&h, &bases) + retention_ms as i64;
    let files = h.log_mut().take_expired(at_limit_ms);
    assert_eq!(
        files.len(),
        3 * 2,
        "segment 2 is exactly at the limit, not past it"
    );

    let (mut h, bases) = eight_segments();
    h.log_mut().set_retention(None, Some(retention_ms));
    apply_retention(&mut h, &bases, at_limit_ms + 1, 3);

    let (mut h, bases) = eight_segments();
    h.log_mut().set_retention(None, Some(retention_ms));
    let far_future_ms = i64::MAX / 2;
    assert_eq!(
        h.log_mut().take_expired(far_future_ms).len(),
        3 * (bases.len() - 1)
    );
    assert_eq!(h.log().segment_count(), 1, "the active segment stays");
}

// Proves: an idle partition whose active segment has expired by age gets it rolled (a new
// empty segment file is created at once), after which retention deletes every old segment with
// no flush in between, as the shard's retention loop does (guards against the rolled segment
// waiting forever for a final index that only a flush, which an idle partition never runs,
// would write); the log start then equals the next offset, and a restart, clean or after a
// power loss, keeps that next offset for the following append.
#[test]
fn expired_active_segment_is_rolled_deleted_and_restart_keeps_next_offset() {
    for power_loss in [false, true] {
        let mut h = Harness::new(config());
        for i in 0..40 {
            let ts = i as i64 * 1_000_000;
            h.append(batch_at(i, &[ts], 3000));
            h.flush(i % 2 == 1);
        }
        h.flush(true);
        let next = h.log().watermarks().next_offset;
        let old_segments = h.log().segment_count();
        assert!(old_segments > 1);
        let retention_ms = 60_000;
        h.log_mut().set_retention(None, Some(retention_ms));
        let now_ms = 40_000 + retention_ms as i64;
        assert!(h.log().active_expired(now_ms));

        let cell = RefCell::new(h.take_log());
        block_on(Log::roll_for_retention(&cell, now_ms)).expect("roll");
        h.log = Some(cell.into_inner());
        assert_eq!(h.log().segment_count(), old_segments + 1);
        assert!(
            h.storage.exists(&file_path(next, "log")),
            "the new segment file exists"
        );
        let files = h.log_mut().take_expired(now_ms);
        assert_eq!(
            files.len(),
            3 * old_segments,
            "every old segment is deleted"
        );
        block_on(log::remove_files(&h.storage, dir(), &files)).expect("remove");
        assert_eq!(h.log().segment_count(), 1);
        assert_eq!(h.log().log_start(), next);
        assert_out_of_range(h.log(), next - 1);
        assert!(h.read_all().is_empty());

        let log = h.take_log();
        if power_loss {
            drop(log);
            h.storage.crash(|_, _, _| false);
        } else {
            block_on(log.close()).expect("close");
        }
        h.log = Some(open_with(&h.storage, &h.cfg, now_ms));
        assert_eq!(h.log().log_start(), next, "power loss: {power_loss}");
        assert_eq!(
            h.log().watermarks().next_offset,
            next,
            "power loss: {power_loss}"
        );
        let appended = h
            .log_mut()
            .append(make_batch(99, 1, 10), now_ms)
            .expect("append");
        assert_eq!(appended.base_offset, next);
    }
}

/// Finds the first offset with a timestamp `>= t` through the public API: the time index gives
/// a start, reads from there and `first_at_or_after` give the offset; the high watermark if none.
fn lookup_time(log: &Log, t: i64) -> u64 {
    let hw = log.watermarks().written_offset;
    let Some(start) = log.time_lookup_start(t) else {
        return hw;
    };
    assert!(start >= log.log_start() && start <= hw);
    let mut offset = start;
    while offset < hw {
        let result = read(log, offset, 4096, 1000).expect("read");
        if let Some(found) = log::first_at_or_after(&result.chunks, t).expect("scan") {
            return found;
        }
        let batches = checked_batches(&result, offset);
        offset = next_of(batches.last().expect("progress"));
    }
    hw
}

/// The answer `lookup_time` must give, from the model: every record's (offset, timestamp).
fn expected_time_lookup(records: &[(u64, i64)], from: u64, hw: u64, t: i64) -> u64 {
    records
        .iter()
        .find(|(o, ts)| *o >= from && *ts >= t)
        .map_or(hw, |(o, _)| *o)
}

// Proves: for any time `t`, `time_lookup_start` + reading + `first_at_or_after` find the first
// offset whose timestamp is `>= t` (the high watermark when there is none), with timestamps in
// order or not, across segments, after a restart, and after retention moved the log start.
#[test]
fn time_lookup_finds_first_offset_at_or_after() {
    for ordered in [true, false] {
        let mut h = Harness::new(LogConfig {
            index_interval_bytes: 1024,
            ..config()
        });
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(7);
        let mut records: Vec<(u64, i64)> = Vec::new();
        for i in 0..120usize {
            let n = 1 + i % 4;
            let timestamps: Vec<i64> = (0..n)
                .map(|r| {
                    if ordered {
                        10_000_000 + (i * 1000 + r * 100) as i64
                    } else {
                        10_000_000 + rng.random_range(0..200_000)
                    }
                })
                .collect();
            let next = h.model.last().map_or(0, |b| next_of(b));
            records.extend(
                timestamps
                    .iter()
                    .enumerate()
                    .map(|(r, ts)| (next + r as u64, *ts)),
            );
            h.append(batch_at(i, &timestamps, 700));
            if i % 7 == 0 {
                h.flush(i % 2 == 0);
            }
        }
        h.flush(true);
        assert!(h.log().segment_count() > 1);
        let mut probes: Vec<i64> = vec![i64::MIN, 0, 9_999_999, 10_000_000, 10_000_001, i64::MAX];
        for (_, ts) in records.iter().step_by(3) {
            probes.extend([ts - 1, *ts, ts + 1]);
        }
        let check = |log: &Log, what: &str| {
            let hw = log.watermarks().written_offset;
            for t in &probes {
                let expected = expected_time_lookup(&records, log.log_start(), hw, *t);
                assert_eq!(
                    lookup_time(log, *t),
                    expected,
                    "{what}: t = {t}, ordered {ordered}"
                );
            }
        };
        check(h.log(), "live");
        h.restart_clean(0);
        check(h.log(), "after restart");
        h.log_mut().set_retention(Some(1), None);
        let files = h.log_mut().take_expired(0);
        assert!(!files.is_empty());
        check(h.log(), "after retention");
    }
}

// Guards against an overflow found by fuzzing: a record's timestamp is `first_timestamp_us +
// timestamp_delta_us` with the delta an unsigned wrap-around difference (as the builder makes
// it), so a batch whose records span the whole i64 range passes ingress validation, and a time
// lookup over it must find the right record instead of panicking on the addition.
#[test]
fn time_lookup_over_a_batch_spanning_all_timestamps_does_not_overflow() {
    let mut h = Harness::new(config());
    h.append(make_batch(0, 2, 10));
    let wide = batch_at(1, &[i64::MIN, -5, i64::MAX], 10);
    batch::validate(&wide).expect("a full-range batch is valid on ingress");
    h.append(wide);
    h.flush(true);
    let wide_base = base_of(&h.model[1]);
    // (t, first offset at or after t in the wide batch, in the whole log)
    let cases = [
        (i64::MIN, wide_base, 0),
        (-5, wide_base + 1, 0),
        (0, wide_base + 2, 0),
        (1_000_001, wide_base + 2, 1),
        (i64::MAX, wide_base + 2, wide_base + 2),
    ];
    for (t, in_batch, in_log) in cases {
        let found = log::first_at_or_after(&h.model[1..], t).expect("scan");
        assert_eq!(found, Some(in_batch), "t = {t}");
        assert_eq!(lookup_time(h.log(), t), in_log, "t = {t}");
    }
}

#[derive(Debug, Clone)]
enum Op {
    Append {
        records: usize,
        value_bytes: usize,
    },
    Flush {
        sync: bool,
    },
    RestartClean,
    /// Sync, then lose power: the synced log is all there is, and all of it survives.
    CrashAfterSync,
    /// Lose power with unsynced writes pending: exactly the synced batches survive.
    CrashUnsynced,
    Read {
        at: u32,
        max_bytes: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (1usize..6, prop_oneof![0usize..300, 2000usize..12_000])
            .prop_map(|(records, value_bytes)| Op::Append { records, value_bytes }),
        3 => any::<bool>().prop_map(|sync| Op::Flush { sync }),
        1 => Just(Op::RestartClean),
        1 => Just(Op::CrashAfterSync),
        1 => Just(Op::CrashUnsynced),
        3 => (any::<u32>(), prop_oneof![Just(1usize), 1usize..40_000])
            .prop_map(|(at, max_bytes)| Op::Read { at, max_bytes }),
    ]
}

/// Reads from `offset` and checks the result against the model.
fn check_read(h: &Harness, offset: u64, max_bytes: usize) {
    let result = read(h.log(), offset, max_bytes, 1000).expect("read");
    let got = checked_batches(&result, offset);
    assert!(!got.is_empty(), "no batch at {offset}");
    let at = h
        .model
        .iter()
        .position(|b| next_of(b) > offset)
        .expect("offset in model");
    assert_eq!(got[..], h.model[at..at + got.len()], "read at {offset}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    // Proves: under random append sizes (across segment rolls), flushes, clean restarts and
    // power losses, a read from any offset below the high watermark returns batches whose first
    // covers that offset, that pass their CRC, and that are exactly the batches appended; what
    // a restart keeps is everything (clean, or synced) or exactly the synced prefix.
    #[test]
    fn random_appends_and_restarts_read_back_exactly(ops in proptest::collection::vec(op(), 1..50)) {
        let mut h = Harness::new(config());
        for (step, op) in ops.into_iter().enumerate() {
            match op {
                Op::Append { records, value_bytes } => {
                    h.append(make_batch(step, records, value_bytes / records));
                }
                Op::Flush { sync } => h.flush(sync),
                Op::RestartClean => h.restart_clean(0),
                Op::CrashAfterSync => {
                    h.flush(true);
                    h.restart_after_crash();
                }
                Op::CrashUnsynced => h.restart_after_crash(),
                Op::Read { at, max_bytes } => {
                    let (start, hw) = (h.log().log_start(), h.log().watermarks().written_offset);
                    if hw > start {
                        check_read(&h, start + u64::from(at) % (hw - start), max_bytes);
                    }
                }
            }
        }
        h.flush(true);
        prop_assert_eq!(h.read_all(), h.model.clone());
        let count = h.model.len();
        h.restart_after_crash();
        prop_assert_eq!(h.model.len(), count, "a final sync covers everything");
        prop_assert_eq!(h.read_all(), h.model.clone());
        prop_assert_eq!(h.log().watermarks().next_offset, h.model.last().map_or(0, |b| next_of(b)));
    }
}

fn file_len(storage: &CrashStorage, path: &Path) -> usize {
    storage
        .with_file_bytes(path, |b| b.len())
        .expect("file exists")
}

// Proves: with `preallocate_bytes`, small flushes keep zero-filled space ahead of the data (so
// the next small writes do not grow the file), large flushes do not zero-fill (streaming
// writes each byte once), a restart keeps the zeros as preallocated space without counting a
// torn tail, and anything but zeros past the data is still cut off as a torn tail.
#[test]
fn preallocated_space_ahead_of_small_writes_survives_restarts() {
    let window = 16 << 10;
    let mut h = Harness::new(LogConfig {
        preallocate_bytes: window,
        segment_bytes: 256 << 10,
        ..config()
    });
    let seg = file_path(0, "log");
    h.append(make_batch(0, 1, 100));
    h.flush(true);
    assert_eq!(file_len(&h.storage, &seg), window as usize + 4096);
    // Small appends inside the window do not grow the file.
    for i in 1..20 {
        h.append(make_batch(i, 1, 100));
        h.flush(true);
    }
    assert_eq!(file_len(&h.storage, &seg), window as usize + 4096);
    h.restart_after_crash();
    assert_eq!(
        h.log().recovery.truncated_bytes,
        0,
        "zeros are not a torn tail"
    );
    assert_eq!(file_len(&h.storage, &seg), window as usize + 4096);
    // A flush larger than the window writes just its data.
    let before = file_len(&h.storage, &seg);
    for i in 20..30 {
        h.append(make_batch(i, 4, 4000));
    }
    h.flush(true);
    let data_end: usize = h.model.iter().map(|b| b.len()).sum();
    assert!(data_end > before);
    assert_eq!(file_len(&h.storage, &seg), data_end.div_ceil(4096) * 4096);
    // Garbage in the preallocated space past the data is a torn tail.
    h.append(make_batch(30, 1, 100));
    h.flush(true);
    let len = file_len(&h.storage, &seg);
    assert!(
        len > data_end + 8192,
        "zeros ahead again after a small flush"
    );
    h.storage
        .with_file_bytes(&seg, |b| b[len - 10] = 0x5a)
        .expect("segment");
    h.restart_after_crash();
    let data_end: usize = h.model.iter().map(|b| b.len()).sum();
    assert!(h.log().recovery.truncated_bytes > 0);
    assert_eq!(file_len(&h.storage, &seg), data_end);
    // Zeros that end mid-block (a torn extension, or a cut) are kept, and the next writes
    // still start on a block (CrashStorage refuses unaligned writes, as O_DIRECT does).
    h.append(make_batch(31, 1, 100));
    h.flush(true);
    let len = file_len(&h.storage, &seg);
    h.storage
        .with_file_bytes(&seg, |b| b.truncate(len - 4096 - 1000))
        .expect("segment");
    h.restart_after_crash();
    assert_eq!(h.log().recovery.truncated_bytes, 0);
    for i in 32..60 {
        h.append(make_batch(i, 1, 700));
        h.flush(true);
    }
    h.restart_after_crash();
}

// Proves: `append_validated` assigns the base offset without copying a uniquely owned batch
// (the cache serves the caller's own buffer, patched in place) and copies a shared one once,
// when the cache first serves it; either way a cached read returns the assigned base offset, a
// valid CRC and the records, and after a flush and a restart the disk copy (patched in the
// chunk copy) matches it.
#[test]
fn cached_read_after_append_validated_has_the_assigned_base_offset_and_a_valid_crc() {
    let mut h = Harness::new(LogConfig {
        cache_bytes: 1 << 20,
        ..config()
    });
    // Offsets 0..3 from an old-path append, so the next base offset is not 0.
    h.append(make_batch(1, 3, 40));
    let unique = Bytes::from(make_batch(2, 4, 100).to_vec());
    let unique_ptr = unique.as_ptr();
    let shared = make_batch(3, 2, 100);
    let shared_keep = shared.clone();
    let copies_before = h.log().cache_copied_batches();

    let log = h.log_mut();
    let a = log
        .append_validated(batch::ValidatedBatch::validate(unique).unwrap(), 0)
        .unwrap();
    assert_eq!((a.base_offset, a.last_offset), (3, 6));
    let b = log
        .append_validated(batch::ValidatedBatch::validate(shared).unwrap(), 0)
        .unwrap();
    assert_eq!((b.base_offset, b.last_offset), (7, 8));
    assert_eq!(
        log.cache_copied_batches(),
        copies_before,
        "appends copy nothing for the cache"
    );
    assert_eq!(
        base_of(&shared_keep),
        0,
        "the caller's shared buffer is untouched"
    );
    h.flush(true);

    let result = read(h.log(), 3, 1 << 20, 1000).unwrap();
    assert_eq!(
        h.log().cache_copied_batches() - copies_before,
        1,
        "the shared batch is copied once, when first served"
    );
    let again = read(h.log(), 3, 1 << 20, 1000).unwrap();
    assert_eq!(
        h.log().cache_copied_batches() - copies_before,
        1,
        "and served from that copy afterwards"
    );
    assert_eq!(again.chunks, result.chunks);
    assert_eq!(
        base_of(&shared_keep),
        0,
        "the caller's shared buffer is still untouched"
    );
    assert!(
        result.chunks.iter().any(|c| c.as_ptr() == unique_ptr),
        "the unique batch is served from the caller's buffer, not a copy"
    );
    let served = checked_batches(&result, 3);
    assert_eq!(served.len(), 2);
    for (batch, base) in served.iter().zip([3, 7]) {
        let header = batch::check_crc(batch).expect("valid CRC");
        assert_eq!(header.base_offset, base);
        let (_, records) = batch::decode(batch).expect("decodes");
        assert_eq!(records.len() as u32, header.record_count);
    }
    // The same bytes come back from disk (the chunk copy was patched on its way).
    h.model.push(served[0].clone());
    h.model.push(served[1].clone());
    h.restart_clean(0);
    assert_eq!(read_range(h.log(), 3, 1 << 20), served);
}

// Proves: the old `append(Bytes)` path refuses a batch whose CRC does not match (it now builds
// a `ValidatedBatch` through `check_crc`) and leaves the offsets where they were.
#[test]
fn append_refuses_a_batch_with_a_bad_crc_and_keeps_the_offsets() {
    let mut h = Harness::new(config());
    h.append(make_batch(1, 2, 10));
    let mut bad = make_batch(2, 2, 10).to_vec();
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    let before = h.log().watermarks();
    let err = h.log_mut().append(Bytes::from(bad), 0).unwrap_err();
    assert!(matches!(err, Error::CorruptBatch(_)), "{err:?}");
    assert_eq!(h.log().watermarks(), before);
}

// Guards a hole the offset assertions found: an expired active segment holding data that was
// written but never synced (leader acks only) is synced by its retention roll, so the durable
// offset moves with it and deleting it never puts the log start past the durable offset
// (`log_start <= durable <= written <= next`, asserted by the log after every change).
#[test]
fn retention_roll_of_unsynced_data_makes_it_durable_before_it_is_deleted() {
    let mut h = Harness::new(config());
    for i in 0..3 {
        h.append(batch_at(i, &[i as i64 * 1_000_000], 100));
    }
    h.flush(false);
    let w = h.log().watermarks();
    assert_eq!(w.written_offset, w.next_offset);
    assert!(w.durable_offset < w.next_offset, "nothing synced yet");
    let retention_ms = 60_000;
    h.log_mut().set_retention(None, Some(retention_ms));
    let now_ms = 3_000 + retention_ms as i64;
    assert!(h.log().active_expired(now_ms));

    let cell = RefCell::new(h.take_log());
    block_on(Log::roll_for_retention(&cell, now_ms)).expect("roll");
    h.log = Some(cell.into_inner());
    let w = h.log().watermarks();
    assert_eq!(
        w.durable_offset, w.next_offset,
        "the roll's sync covers the data"
    );
    let files = h.log_mut().take_expired(now_ms);
    assert_eq!(files.len(), 3, "the rolled segment and its two index files");
    block_on(log::remove_files(&h.storage, dir(), &files)).expect("remove");
    let w = h.log().watermarks();
    assert_eq!(w.log_start, w.next_offset);
    assert!(w.log_start <= w.durable_offset);
}

// Proves: a log reopened after a process kill (no power loss: the device still holds bytes
// that were written but never synced) syncs them before it counts them durable, so a power
// loss right after the reopen keeps every offset the reopen reported durable. Before the fix
// the reopen counted the unsynced tail durable, and a durable retry of a batch in it would have
// been answered at once and then lost (found while building the simulator, issue 13).
#[test]
fn a_reopen_after_a_kill_syncs_what_it_counts_durable() {
    let storage = CrashStorage::new();
    let cfg = config();
    let mut log = open_with(&storage, &cfg, 0);
    for i in 0..3 {
        log.append(batch_at(i, &[1_000, 2_000], 100), 0)
            .expect("append");
    }
    let job = log.take_flush(false).expect("data to write");
    assert!(!job.syncs(), "a leader-level flush writes without syncing");
    let done = block_on(job.run());
    log.finish_flush(done).expect("flush");
    assert_eq!(log.watermarks().durable_offset, 0, "nothing synced yet");
    drop(log); // SIGKILL: the storage keeps the written, unsynced bytes
    let log = open_with(&storage, &cfg, 0);
    let durable = log.watermarks().durable_offset;
    assert_eq!(durable, 6, "the reopen finds every written record");
    drop(log);
    storage.crash(|_, _, _| false); // power loss: unsynced blocks are gone
    let log = open_with(&storage, &cfg, 0);
    assert!(
        log.watermarks().next_offset >= durable,
        "a power loss after the reopen lost offsets it reported durable: {} < {durable}",
        log.watermarks().next_offset
    );
}
