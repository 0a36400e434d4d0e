//! Proves how the partition log treats damaged bytes on disk, on the in-memory crash image: a
//! damaged torn tail is cut back to the last valid batch; damage anywhere else is reported as
//! `Error::CorruptLog` and never served; damaged or missing index files are rebuilt from the
//! segment; a full disk or an I/O error stops appends until `repair`, and loses nothing synced.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures_lite::future::block_on;
use shardline_engine::Error;
use shardline_engine::batch::{self, BatchBuilder, BatchHeader};
use shardline_engine::log::index::{self, IndexKind};
use shardline_engine::log::{LogConfig, PartitionLog, ReadPlan, ReadResult, segment_file_name};
use shardline_engine::storage::{CrashStorage, Storage};

type Log = PartitionLog<CrashStorage>;

fn dir() -> &'static Path {
    Path::new("/data/corrupt/0")
}

/// Small segments, an index entry for every batch of these tests (they are all over 1 KiB), and
/// no checkpoint of the active segment except the one a clean close writes.
fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 64 << 10,
        segment_ms: u64::MAX / 4,
        index_interval_bytes: 1024,
        write_chunk_bytes: 64 << 10,
        checkpoint_interval_bytes: 1 << 30,
        retention_bytes: None,
        retention_ms: None,
        cache_bytes: 0,
        encryption: None,
        preallocate_bytes: 0,
    }
}

/// Batch number `i` of a test: values derived from `i`, so no two batches have the same bytes.
fn make_batch(i: usize, records: usize, value_bytes: usize) -> Bytes {
    let mut b = BatchBuilder::new();
    for r in 0..records {
        let value: Vec<u8> = (0..value_bytes)
            .map(|j| (i * 31 + r * 17 + j * 7) as u8)
            .collect();
        b.push(1_000_000 + (i * 10 + r) as i64, None, value, Vec::new());
    }
    b.build().expect("batch")
}

fn open(storage: &CrashStorage) -> shardline_engine::Result<Log> {
    block_on(Log::open(storage.clone(), dir(), config(), 0))
}

/// Appends `batch` and records, in `model`, the bytes the log must serve for it.
fn append(log: &mut Log, model: &mut Vec<Bytes>, batch: Bytes) {
    let appended = log.append(batch.clone(), 0).expect("append");
    let mut expected = batch.to_vec();
    batch::set_base_offset(&mut expected, appended.base_offset);
    model.push(Bytes::from(expected));
}

fn flush(log: &mut Log, sync: bool) -> shardline_engine::Result<()> {
    match log.take_flush(sync) {
        Some(job) => {
            let done = block_on(job.run());
            log.finish_flush(done).map(|_| ())
        }
        None => Ok(()),
    }
}

fn read(log: &Log, offset: u64, max_bytes: usize, max_records: usize) -> Result<ReadResult, Error> {
    match log.plan_read(offset, max_bytes, max_records)? {
        ReadPlan::Ready(r) => Ok(r),
        ReadPlan::Disk(d) => block_on(d.run()),
    }
}

/// The batches of a read result, each checked against its CRC.
fn batches_of(result: &ReadResult) -> Vec<Bytes> {
    let mut out = Vec::new();
    for chunk in &result.chunks {
        for b in batch::split_batches(chunk).expect("split") {
            batch::check_crc(b).expect("a served batch must pass its CRC");
            out.push(Bytes::copy_from_slice(b));
        }
    }
    out
}

/// Reads from `from` up to the high watermark; asserts the batches are offset-contiguous.
fn read_range(log: &Log, from: u64) -> Result<Vec<Bytes>, Error> {
    let mut out = Vec::new();
    let mut offset = from;
    let hw = log.watermarks().written_offset;
    while offset < hw {
        let result = read(log, offset, 5000, 1000)?;
        let batches = batches_of(&result);
        assert!(!batches.is_empty(), "no progress at {offset} below {hw}");
        for b in batches {
            let h = BatchHeader::parse(&b).expect("header");
            assert!(
                h.base_offset <= offset && offset < h.next_offset(),
                "gap at {offset}"
            );
            offset = h.next_offset();
            out.push(b);
        }
    }
    Ok(out)
}

fn read_all(log: &Log) -> Vec<Bytes> {
    read_range(log, log.log_start()).expect("read all")
}

fn base_of(b: &[u8]) -> u64 {
    BatchHeader::parse(b).expect("header").base_offset
}

fn next_of(b: &[u8]) -> u64 {
    BatchHeader::parse(b).expect("header").next_offset()
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

/// The segment file holding batch `k` of `model`, and the batch's position in it.
fn locate(storage: &CrashStorage, model: &[Bytes], k: usize) -> (PathBuf, u64) {
    let base = base_of(&model[k]);
    let segment = segment_bases(storage)
        .into_iter()
        .filter(|b| *b <= base)
        .max()
        .expect("segment");
    let pos: usize = model[..k]
        .iter()
        .filter(|b| base_of(b) >= segment)
        .map(|b| b.len())
        .sum();
    (dir().join(segment_file_name(segment)), pos as u64)
}

fn flip(storage: &CrashStorage, path: &Path, pos: u64, mask: u8) {
    storage
        .with_file_bytes(path, |bytes| bytes[pos as usize] ^= mask)
        .expect("file to corrupt exists");
}

fn file_bytes(storage: &CrashStorage, path: &Path) -> Option<Vec<u8>> {
    storage.with_file_bytes(path, |bytes| bytes.clone())
}

/// Builds a log of `count` batches of about 3 KiB (three segments for 50), syncing every five,
/// and shuts it down cleanly: every sealed segment has its final index, the active one a
/// checkpoint.
fn build_clean_log(count: usize) -> (CrashStorage, Vec<Bytes>) {
    let storage = CrashStorage::new();
    let mut log = open(&storage).expect("open");
    let mut model = Vec::new();
    for i in 0..count {
        append(
            &mut log,
            &mut model,
            make_batch(i, 1 + i % 3, 3000 / (1 + i % 3)),
        );
        if i % 5 == 4 {
            flush(&mut log, true).expect("flush");
        }
    }
    flush(&mut log, true).expect("flush");
    block_on(log.close()).expect("close");
    (storage, model)
}

fn assert_corrupt_log_in(result: Result<ReadResult, Error>, segment_base: u64, what: &str) {
    match result {
        Err(Error::CorruptLog { path, .. }) => assert!(
            path.ends_with(&segment_file_name(segment_base)),
            "{what}: error names {path}"
        ),
        Err(e) => panic!("{what}: expected CorruptLog, got {e}"),
        Ok(r) => panic!(
            "{what}: expected CorruptLog, got {} batches",
            batches_of(&r).len()
        ),
    }
}

// Proves: after a crash that keeps unsynced writes, a flipped byte anywhere in a batch of the
// torn tail (base offset, length, CRC, header, body, padding) makes recovery cut the log back to
// the batch before it: nothing synced is lost, nothing damaged is served, and appends continue
// at the cut.
#[test]
fn flipped_byte_in_torn_tail_truncates_to_last_valid_batch() {
    for at_in_batch in [0usize, 9, 13, 17, 21, 40, 64, 300, 1111] {
        let storage = CrashStorage::new();
        let mut log = open(&storage).expect("open");
        let mut model = Vec::new();
        for i in 0..10 {
            append(&mut log, &mut model, make_batch(i, 2, 700));
        }
        flush(&mut log, true).expect("sync");
        let synced = model.len();
        for i in 10..16 {
            append(&mut log, &mut model, make_batch(i, 2, 700));
        }
        flush(&mut log, false).expect("write without sync");
        drop(log);
        storage.crash(|_, _, _| true);
        let damaged = 13;
        let (path, pos) = locate(&storage, &model, damaged);
        assert!(at_in_batch < model[damaged].len());
        flip(&storage, &path, pos + at_in_batch as u64, 0x10);

        let mut log = open(&storage).expect("reopen");
        let what = format!("flip at byte {at_in_batch}");
        assert_eq!(read_all(&log), model[..damaged], "{what}");
        assert!(damaged >= synced);
        assert_eq!(
            log.watermarks().next_offset,
            base_of(&model[damaged]),
            "{what}"
        );
        assert!(log.recovery.truncated_bytes > 0, "{what}");
        assert!(log.recovery.truncation_reason.is_some(), "{what}");
        let kept: usize = model[..damaged].iter().map(|b| b.len()).sum();
        assert_eq!(
            file_bytes(&storage, &path).map(|b| b.len()),
            Some(kept),
            "{what}"
        );

        model.truncate(damaged);
        append(&mut log, &mut model, make_batch(99, 1, 50));
        flush(&mut log, true).expect("sync after recovery");
        drop(log);
        let log = open(&storage).expect("reopen again");
        assert_eq!(read_all(&log), model, "{what}");
    }
}

// Proves: a flipped body byte in the middle of a sealed segment (final index present, so open
// trusts it without a scan) is caught by the read's CRC check: reads of that batch return
// CorruptLog naming the segment and never the bad bytes; every other batch, in this segment or
// the others, still reads correctly.
#[test]
fn flipped_byte_in_sealed_segment_fails_reads_of_that_batch_only() {
    let (storage, model) = build_clean_log(50);
    let bases = segment_bases(&storage);
    assert!(
        bases.len() >= 3,
        "expected at least three segments, got {bases:?}"
    );
    let in_first: Vec<usize> = (0..model.len())
        .filter(|k| next_of(&model[*k]) <= bases[1])
        .collect();
    let damaged = in_first[in_first.len() / 2];
    let (path, pos) = locate(&storage, &model, damaged);
    assert_eq!(path, dir().join(segment_file_name(0)));
    flip(&storage, &path, pos + 64 + 100, 0x01);

    let log = open(&storage).expect("a sealed segment with an index is not scanned at open");
    assert_eq!(log.recovery.rebuilt_indexes, 0);
    let damaged_base = base_of(&model[damaged]);
    for offset in damaged_base..next_of(&model[damaged]) {
        assert_corrupt_log_in(
            read(&log, offset, 1 << 20, 1000),
            0,
            "read of the damaged batch",
        );
        assert_corrupt_log_in(
            read(&log, offset, 1, 1),
            0,
            "one-batch read of the damaged batch",
        );
    }
    assert_corrupt_log_in(read(&log, 0, 1 << 20, 100_000), 0, "read across the damage");
    for (k, expected) in model.iter().enumerate().filter(|(k, _)| *k != damaged) {
        let got = batches_of(&read(&log, base_of(expected), 1, 1).expect("undamaged batch"));
        assert_eq!(got.first(), Some(expected), "batch {k}");
    }
    let after_first = model
        .iter()
        .position(|b| base_of(b) == bases[1])
        .expect("boundary");
    assert_eq!(
        read_range(&log, bases[1]).expect("later segments"),
        model[after_first..]
    );
}

// Proves: the base offset is outside the CRC, so a flipped bit there must still be caught by the
// offset-continuity check, also when the damaged batch is the first one a read looks at (an
// index entry points at it). Before the fix, such a read served the batch under a wrong offset,
// or returned nothing below the high watermark.
#[test]
fn flipped_base_offset_of_first_batch_read_is_corrupt_log() {
    for (byte, mask) in [(0u64, 0x01u8), (0, 0x80), (1, 0x01), (7, 0x80)] {
        let (storage, model) = build_clean_log(50);
        let bases = segment_bases(&storage);
        let damaged = model
            .iter()
            .position(|b| next_of(b) == bases[1])
            .expect("last of first")
            - 2;
        let (path, pos) = locate(&storage, &model, damaged);
        flip(&storage, &path, pos + byte, mask);
        let log = open(&storage).expect("open");
        let offset = base_of(&model[damaged]);
        let what = format!("byte {byte} mask {mask:#x}");
        assert_corrupt_log_in(read(&log, offset, 1, 1), 0, &what);
        assert_corrupt_log_in(read(&log, offset, 1 << 20, 1000), 0, &what);
    }
}

// Proves: after a clean close the active segment's data is covered by a checkpoint and not
// rescanned at open, so a flipped byte there is found only by reads: they return CorruptLog,
// never the bad bytes, the other batches still read, and the log still takes appends.
#[test]
fn flipped_byte_in_checkpointed_active_segment_fails_reads_never_serves_it() {
    for at_in_batch in [3u64, 20, 64, 500] {
        let storage = CrashStorage::new();
        let mut log = open(&storage).expect("open");
        let mut model = Vec::new();
        for i in 0..10 {
            append(&mut log, &mut model, make_batch(i, 3, 500));
        }
        flush(&mut log, true).expect("sync");
        block_on(log.close()).expect("close");
        let damaged = 5;
        let (path, pos) = locate(&storage, &model, damaged);
        flip(&storage, &path, pos + at_in_batch, 0x04);

        let mut log = open(&storage).expect("open");
        assert_eq!(
            log.recovery.scanned_bytes, 0,
            "the checkpoint covers the whole segment"
        );
        let what = format!("flip at byte {at_in_batch}");
        for offset in base_of(&model[damaged])..next_of(&model[damaged]) {
            assert_corrupt_log_in(read(&log, offset, 1, 1), 0, &what);
        }
        for (k, expected) in model.iter().enumerate().filter(|(k, _)| *k != damaged) {
            let got = batches_of(&read(&log, base_of(expected), 1, 1).expect("undamaged"));
            assert_eq!(got.first(), Some(expected), "{what}: batch {k}");
        }
        append(&mut log, &mut model, make_batch(10, 1, 10));
        flush(&mut log, true).expect("appends continue");
        let last = model.last().expect("appended");
        let got = batches_of(&read(&log, base_of(last), 1, 1).expect("new batch"));
        assert_eq!(got.first(), Some(last));
    }
}

#[derive(Debug, Clone, Copy)]
enum IndexDamage {
    TruncatedIdx,
    MissingIdx,
    MissingTix,
    GarbageIdx,
}

fn damage_index(storage: &CrashStorage, base: u64, damage: IndexDamage) {
    let idx = file_path(base, "idx");
    match damage {
        IndexDamage::TruncatedIdx => {
            storage
                .with_file_bytes(&idx, |b| {
                    let count = u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize;
                    assert!(count > 1, "the index must have entries to cut");
                    b.truncate(index::INDEX_HEADER_BYTES + count * 8 - 3);
                })
                .expect("idx exists");
        }
        IndexDamage::MissingIdx => block_on(storage.remove(&idx)).expect("remove idx"),
        IndexDamage::MissingTix => {
            block_on(storage.remove(&file_path(base, "tix"))).expect("remove tix");
        }
        IndexDamage::GarbageIdx => {
            storage
                .with_file_bytes(&idx, |b| {
                    let mut x = 0x9E37_79B9_7F4A_7C15u64;
                    for byte in b.iter_mut() {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        *byte = x as u8;
                    }
                })
                .expect("idx exists");
        }
    }
}

/// Every offset of the log, read as a one-batch read, lands on the batch that holds it.
fn assert_offset_lookups_land_right(log: &Log, model: &[Bytes], what: &str) {
    for expected in model {
        for offset in base_of(expected)..next_of(expected) {
            let got = batches_of(&read(log, offset, 1, 1).expect("read"));
            assert_eq!(got.first(), Some(expected), "{what}: offset {offset}");
        }
    }
}

// Proves: a truncated, missing or garbage `.idx`, or a missing `.tix`, of a sealed segment or of
// the active one is never trusted: open rebuilds that one index by scanning, every batch reads
// back byte-identical, every offset lookup lands on its batch, and the rebuilt index of a sealed
// segment is written back identical to the original (the next open rebuilds nothing).
#[test]
fn damaged_or_missing_index_files_are_rebuilt() {
    let damages = [
        IndexDamage::TruncatedIdx,
        IndexDamage::MissingIdx,
        IndexDamage::MissingTix,
        IndexDamage::GarbageIdx,
    ];
    for damage in damages {
        for target in ["sealed", "active"] {
            let what = format!("{damage:?} of the {target} segment");
            let (storage, model) = build_clean_log(50);
            let bases = segment_bases(&storage);
            let base = if target == "sealed" {
                bases[1]
            } else {
                bases[bases.len() - 1]
            };
            let original_idx = file_bytes(&storage, &file_path(base, "idx")).expect("idx");
            let original_tix = file_bytes(&storage, &file_path(base, "tix")).expect("tix");
            damage_index(&storage, base, damage);

            let log = open(&storage).expect("open");
            assert_eq!(log.recovery.rebuilt_indexes, 1, "{what}");
            assert_eq!(log.segment_count(), bases.len(), "{what}");
            assert_eq!(read_all(&log), model, "{what}");
            assert_offset_lookups_land_right(&log, &model, &what);
            if target == "sealed" {
                let idx = file_bytes(&storage, &file_path(base, "idx"));
                let tix = file_bytes(&storage, &file_path(base, "tix"));
                assert_eq!(idx.as_ref(), Some(&original_idx), "{what}: rewritten .idx");
                assert_eq!(tix.as_ref(), Some(&original_tix), "{what}: rewritten .tix");
                drop(log);
            } else {
                // The active segment's checkpoint is rewritten by the next clean close.
                block_on(log.close()).expect("close");
                let cp = file_bytes(&storage, &file_path(base, "idx")).expect("idx");
                assert!(
                    index::decode(IndexKind::Offset, &cp, base).is_some(),
                    "{what}"
                );
            }
            let log = open(&storage).expect("open again");
            assert_eq!(
                log.recovery.rebuilt_indexes, 0,
                "{what}: index written back"
            );
            assert_eq!(read_all(&log), model, "{what}");
        }
    }
}

// Proves: a sealed segment whose index files hold a stale checkpoint (one written while it was
// still active, left behind when the rename of its final index was lost in a crash) is not
// trusted: open scans the rest of the segment instead of failing on the gap to the next one.
#[test]
fn stale_checkpoint_of_a_sealed_segment_is_rescanned() {
    let storage = CrashStorage::new();
    let cfg = LogConfig {
        checkpoint_interval_bytes: 8 << 10,
        ..config()
    };
    let mut log = block_on(Log::open(storage.clone(), dir(), cfg.clone(), 0)).expect("open");
    let mut model = Vec::new();
    let mut stale = None;
    for i in 0..50 {
        append(&mut log, &mut model, make_batch(i, 1, 3000));
        flush(&mut log, true).expect("sync");
        if log.segment_count() == 1 && model.len() == 10 {
            stale = Some((
                file_bytes(&storage, &file_path(0, "idx")).expect("checkpoint idx"),
                file_bytes(&storage, &file_path(0, "tix")).expect("checkpoint tix"),
            ));
        }
    }
    block_on(log.close()).expect("close");
    let (stale_idx, stale_tix) = stale.expect("a checkpoint of the active segment");
    let cp = index::decode(IndexKind::Offset, &stale_idx, 0).expect("stale checkpoint decodes");
    assert!(
        cp.next_offset < segment_bases(&storage)[1],
        "the checkpoint must be stale"
    );
    storage.with_file_bytes(&file_path(0, "idx"), |b| *b = stale_idx.clone());
    storage.with_file_bytes(&file_path(0, "tix"), |b| *b = stale_tix.clone());

    let log = block_on(Log::open(storage.clone(), dir(), cfg, 0)).expect("open with stale index");
    assert_eq!(read_all(&log), model);
    assert_offset_lookups_land_right(&log, &model, "stale checkpoint");
}

// Proves: when a sealed segment has lost its index and is also corrupt in the middle, there is
// no safe way to recover it (truncating would drop every later segment's predecessor data), so
// open fails with a CorruptLog naming the segment, and leaves its bytes untouched for an operator.
#[test]
fn sealed_segment_without_index_and_corrupt_middle_fails_open() {
    let (storage, model) = build_clean_log(50);
    let bases = segment_bases(&storage);
    block_on(storage.remove(&file_path(0, "idx"))).expect("remove idx");
    let damaged = model
        .iter()
        .position(|b| next_of(b) == bases[1])
        .expect("last")
        / 2;
    let (path, pos) = locate(&storage, &model, damaged);
    flip(&storage, &path, pos + 200, 0x20);
    let before = file_bytes(&storage, &path);

    match open(&storage) {
        Err(Error::CorruptLog { path: p, reason }) => {
            assert!(p.ends_with(&segment_file_name(0)), "error names {p}");
            assert!(!reason.is_empty());
        }
        Err(e) => panic!("expected CorruptLog, got {e}"),
        Ok(_) => panic!("a sealed segment with a corrupt middle must not open"),
    }
    assert_eq!(
        file_bytes(&storage, &path),
        before,
        "the segment must be left as it was"
    );
    assert!(
        storage.exists(&file_path(bases[1], "idx")),
        "other segments untouched"
    );
}

/// The state a SIGKILL in the middle of a flush that rolled leaves behind: the flush wrote
/// the tail of segment `bases[1]` and created the next segment concurrently and died before its
/// sync, so `bases[1]` ends short or torn (`damage`) and no segment from `bases[1]` on has index
/// files. Returns the storage, the model and the index of the first batch lost.
fn crashed_mid_roll(damage: impl Fn(&mut Vec<u8>, usize)) -> (CrashStorage, Vec<Bytes>, usize) {
    let (storage, model) = build_clean_log(50);
    let bases = segment_bases(&storage);
    assert!(bases.len() >= 3, "three segments: {bases:?}");
    for b in &bases[1..] {
        for ext in ["idx", "tix"] {
            block_on(storage.remove(&file_path(*b, ext))).expect("remove index");
        }
    }
    let lost = model
        .iter()
        .position(|b| next_of(b) == bases[2])
        .expect("last batch of the middle segment");
    let (path, pos) = locate(&storage, &model, lost);
    storage
        .with_file_bytes(&path, |b| damage(b, pos as usize))
        .expect("segment");
    (storage, model, lost)
}

// Proves: a crash in the middle of a flush that rolled (old segment short, new segment written,
// no index yet) opens: the log ends where the old segment's valid data ends, the later segment
// (nothing in it was acknowledged: its flush never completed) is removed, every earlier batch
// reads back, and appends continue from there across a further restart.
#[test]
fn crash_mid_roll_drops_the_unacknowledged_segments() {
    let cut_at_batch = |b: &mut Vec<u8>, pos: usize| b.truncate(pos);
    let zero_tail = |b: &mut Vec<u8>, pos: usize| b[pos..].fill(0);
    let torn_batch = |b: &mut Vec<u8>, pos: usize| {
        let end = b.len();
        b[(pos + 100).min(end)..].fill(0);
    };
    type Damage<'a> = &'a dyn Fn(&mut Vec<u8>, usize);
    let damages: [(&str, Damage); 3] = [
        ("short file", &cut_at_batch),
        ("zeros", &zero_tail),
        ("torn batch", &torn_batch),
    ];
    for (what, damage) in damages {
        let (storage, mut model, lost) = crashed_mid_roll(damage);
        let bases = segment_bases(&storage);
        let mut log = open(&storage).unwrap_or_else(|e| panic!("{what}: open failed: {e}"));
        assert_eq!(read_all(&log), model[..lost], "{what}");
        assert_eq!(
            log.watermarks().next_offset,
            base_of(&model[lost]),
            "{what}"
        );
        assert_eq!(
            segment_bases(&storage),
            bases[..2],
            "{what}: the segment after the torn one is removed"
        );
        assert!(log.recovery.truncation_reason.is_some(), "{what}");
        assert!(log.recovery.truncated_bytes > 0, "{what}");

        model.truncate(lost);
        for i in 0..30 {
            append(&mut log, &mut model, make_batch(100 + i, 1, 3000));
        }
        flush(&mut log, true).expect("sync after recovery");
        drop(log);
        let log = open(&storage).expect("reopen");
        assert_eq!(
            read_all(&log),
            model,
            "{what}: after new appends and a restart"
        );
    }
}

// Proves: the same damage is refused (CorruptLog, nothing removed) when a later segment has an
// index file: its flush completed, so the damage is not a torn write but lost acknowledged data.
#[test]
fn short_sealed_segment_before_an_indexed_one_fails_open() {
    let (storage, _, _) = crashed_mid_roll(|b, pos| b.truncate(pos));
    let bases = segment_bases(&storage);
    let (idx, tix) = (file_path(bases[2], "idx"), file_path(bases[2], "tix"));
    let (clean, _) = build_clean_log(50);
    for (path, bytes) in [
        (&idx, file_bytes(&clean, &idx).expect("idx")),
        (&tix, file_bytes(&clean, &tix).expect("tix")),
    ] {
        let f = block_on(storage.open(path)).expect("create index");
        drop(f);
        storage
            .with_file_bytes(path, |b| *b = bytes)
            .expect("index");
    }
    let storage_names = segment_bases(&storage);
    match open(&storage) {
        Err(Error::CorruptLog { path, reason }) => {
            assert!(
                path.ends_with(&segment_file_name(bases[1])),
                "error names {path}"
            );
            assert!(reason.contains("previous one ends"), "{reason}");
        }
        Err(e) => panic!("expected CorruptLog, got {e}"),
        Ok(_) => panic!("a short segment before an indexed one must not open"),
    }
    assert_eq!(segment_bases(&storage), storage_names, "nothing removed");
}

/// Sum of the live bytes of every file in the log directory.
fn used_bytes(storage: &CrashStorage) -> u64 {
    let names = storage.list_names(dir()).expect("list");
    names
        .iter()
        .filter_map(|n| storage.with_file_bytes(&dir().join(n), |b| b.len() as u64))
        .sum()
}

/// Drives the log into a failed flush with `fail` after `synced_count` synced batches of about
/// 2 KiB, checks what a failed partition does, clears the fault with `heal`, repairs, and checks
/// nothing synced was lost and appends continue. `segments` is the segment count before and
/// after the failing appends (so a case can put a roll inside the failed flush).
fn failed_flush_then_repair(
    fail: &impl Fn(&CrashStorage),
    heal: &impl Fn(&CrashStorage),
    expect_error: &impl Fn(&Error) -> bool,
    synced_count: usize,
    segments: (usize, usize),
) {
    let storage = CrashStorage::new();
    let mut log = open(&storage).expect("open");
    let mut model = Vec::new();
    for i in 0..synced_count {
        append(&mut log, &mut model, make_batch(i, 2, 1000));
        if i % 4 == 3 {
            flush(&mut log, true).expect("sync");
        }
    }
    flush(&mut log, true).expect("sync");
    let synced = model.clone();
    assert_eq!(log.segment_count(), segments.0);

    fail(&storage);
    for i in synced_count..synced_count + 10 {
        append(&mut log, &mut model, make_batch(i, 2, 1000));
    }
    assert_eq!(log.segment_count(), segments.1);
    let err = flush(&mut log, true).expect_err("the flush must fail");
    assert!(expect_error(&err), "unexpected flush error: {err}");
    assert!(log.failure().is_some());
    // A full disk stays DiskFull (retriable, names the cause); any other failure is
    // PartitionFailed, until the repair.
    let refused = log
        .append(make_batch(999, 1, 10), 0)
        .expect_err("append after a failed flush");
    if matches!(err, Error::DiskFull { .. }) {
        assert!(matches!(refused, Error::DiskFull { .. }), "{refused:?}");
    } else {
        assert!(
            matches!(refused, Error::PartitionFailed { .. }),
            "{refused:?}"
        );
    }
    assert!(
        log.take_flush(true).is_none(),
        "a failed partition starts no flush"
    );
    assert_eq!(
        log.watermarks().durable_offset,
        next_of(synced.last().expect("synced"))
    );
    assert_eq!(
        read_all(&log),
        synced,
        "synced batches stay readable while failed"
    );

    heal(&storage);
    let mut log = block_on(log.repair(0)).expect("repair");
    assert!(log.failure().is_none());
    let recovered = read_all(&log);
    assert!(recovered.len() >= synced.len(), "lost synced batches");
    assert_eq!(
        recovered,
        model[..recovered.len()],
        "recovered log must be a prefix"
    );
    model.truncate(recovered.len());
    append(&mut log, &mut model, make_batch(1000, 2, 1000));
    flush(&mut log, true).expect("sync after repair");
    drop(log);
    let log = open(&storage).expect("reopen");
    assert_eq!(read_all(&log), model);
}

/// Failure points: inside the first segment, across a roll, after a roll.
const FAILURE_POINTS: [(usize, (usize, usize)); 3] = [(10, (1, 1)), (27, (1, 2)), (40, (2, 2))];

// Proves: a flush that hits a full disk fails with DiskFull; the partition then refuses appends
// (DiskFull again) and flushes, still serves what was synced, and once space is back `repair`
// reopens it with every synced batch intact and appends working again, also when the failed
// flush had created the next segment.
#[test]
fn disk_full_fails_partition_until_repair_without_losing_synced_batches() {
    for (synced_count, segments) in FAILURE_POINTS {
        failed_flush_then_repair(
            &|s: &CrashStorage| s.set_capacity(Some(used_bytes(s) + 4096)),
            &|s: &CrashStorage| s.set_capacity(None),
            &|e: &Error| matches!(e, Error::DiskFull { .. }),
            synced_count,
            segments,
        );
    }
}

// Proves: the same for an I/O error (EIO) on write or sync: Error::Storage, PartitionFailed on
// append, and a clean repair once the device works again.
#[test]
fn io_error_fails_partition_until_repair_without_losing_synced_batches() {
    for (synced_count, segments) in FAILURE_POINTS {
        failed_flush_then_repair(
            &|s: &CrashStorage| s.set_fail_io(true),
            &|s: &CrashStorage| s.set_fail_io(false),
            &|e: &Error| matches!(e, Error::Storage { .. }),
            synced_count,
            segments,
        );
    }
}
