//! Proves the partition log's durability contract against the in-memory crash image: across
//! thousands of seeded random sequences of append / flush / sync / read / crash / reopen,
//! every batch covered by a completed sync survives byte-identical, the recovered log is always a
//! prefix of what was appended (nothing torn, reordered or invented is ever served), and offsets
//! stay contiguous. Before a crash the process may die in the middle of a flush, have the
//! flush's writes and syncs complete out of order and only in part, or see its fdatasync fail.
//! A failure prints the seed; `CRASH_IMAGE_SEED=N` replays one sequence and
//! `CRASH_IMAGE_CASES=N` changes how many run.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::path::Path;

use bytes::Bytes;
use futures_lite::future::{block_on, poll_once};
use rand::{Rng, RngExt, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use shardline_engine::batch::{self, BatchBuilder, BatchHeader};
use shardline_engine::log::{LogConfig, PartitionLog, ReadPlan};
use shardline_engine::storage::CrashStorage;

type Log = PartitionLog<CrashStorage>;

fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes: 64 << 10,
        segment_ms: u64::MAX / 4,
        index_interval_bytes: 700,
        write_chunk_bytes: 64 << 10,
        checkpoint_interval_bytes: 20 << 10,
        retention_bytes: None,
        retention_ms: None,
        cache_bytes: 8 << 10,
        encryption: None,
        // Zero-filled space ahead of small flushes: recoveries meet preallocated tails.
        preallocate_bytes: 8 << 10,
    }
}

fn random_batch(rng: &mut impl Rng, ts: i64) -> Bytes {
    let mut b = BatchBuilder::new();
    for _ in 0..rng.random_range(1..6) {
        let len = if rng.random_bool(0.1) {
            rng.random_range(0..12_000)
        } else {
            rng.random_range(0..300)
        };
        let v: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        let key = rng.random_bool(0.3).then(|| b"k".to_vec());
        b.push(ts, key, v, Vec::new());
    }
    b.build().expect("batch")
}

/// Reads every readable batch through the public read path.
fn read_all(log: &Log) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut offset = log.log_start();
    let hw = log.watermarks().written_offset;
    while offset < hw {
        let max_bytes = 1 + (offset as usize * 7919) % 20_000;
        let res = match log.plan_read(offset, max_bytes, 1000).expect("plan") {
            ReadPlan::Ready(r) => r,
            ReadPlan::Disk(d) => block_on(d.run()).expect("disk read"),
        };
        assert!(
            res.records > 0,
            "no progress at offset {offset} below hw {hw}"
        );
        for chunk in &res.chunks {
            for b in batch::split_batches(chunk).expect("split") {
                let h = batch::check_crc(b).expect("served batch must pass its CRC");
                if h.next_offset() <= offset {
                    continue;
                }
                assert!(
                    h.base_offset <= offset,
                    "gap: batch {} at offset {offset}",
                    h.base_offset
                );
                out.push(Bytes::copy_from_slice(b));
                offset = h.next_offset();
            }
        }
    }
    out
}

fn flush(log: &mut Log, sync: bool) -> bool {
    match log.take_flush(sync) {
        Some(job) => {
            let done = block_on(job.run());
            log.finish_flush(done).is_ok()
        }
        None => true,
    }
}

/// Starts a flush with every write and sync held, completes a random part of them in a random
/// order, then drops the job: the process dies with the rest in flight.
fn flush_partly(log: &mut Log, storage: &CrashStorage, rng: &mut impl Rng) {
    storage.hold_writes(true);
    storage.hold_syncs(true);
    if let Some(job) = log.take_flush(rng.random_bool(0.5)) {
        let mut run = Box::pin(job.run());
        for _ in 0..rng.random_range(0..10) {
            if block_on(poll_once(&mut run)).is_some() {
                break;
            }
            let parked = storage.parked();
            if parked.is_empty() {
                break;
            }
            let (ticket, _) = parked[rng.random_range(0..parked.len())];
            assert!(storage.complete(ticket));
        }
    }
    storage.hold_writes(false);
    storage.hold_syncs(false);
}

#[allow(
    clippy::too_many_lines,
    reason = "one seeded scenario: the match arms are the model's operations and read best side by side"
)]
fn run_case(seed: u64) {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let storage = CrashStorage::seeded(seed);
    let dir = Path::new("/data/t/0");
    let open =
        |st: &CrashStorage| block_on(Log::open(st.clone(), dir, small_config(), 0)).expect("open");
    let mut log = open(&storage);
    // The model: every batch appended, with its assigned offsets, and how many are durable.
    let mut model: Vec<Bytes> = Vec::new();
    let mut durable = 0usize;
    let mut ts = 1_000_000i64;
    for _step in 0..rng.random_range(20..120) {
        match rng.random_range(0..100) {
            0..=54 => {
                // Now and then a burst, so that one flush spans several segment rolls.
                let n = if rng.random_bool(0.05) {
                    rng.random_range(8..40)
                } else {
                    1
                };
                let mut next: u64 = model
                    .iter()
                    .map(|m| u64::from(BatchHeader::parse(m).unwrap().record_count))
                    .sum();
                for _ in 0..n {
                    ts += rng.random_range(0..1000);
                    let b = random_batch(&mut rng, ts);
                    let a = log.append(b.clone(), 0).expect("append");
                    let mut expected = b.to_vec();
                    batch::set_base_offset(&mut expected, a.base_offset);
                    assert_eq!(a.base_offset, next, "offsets must be dense");
                    next = a.last_offset + 1;
                    model.push(Bytes::from(expected));
                }
            }
            55..=69 => assert!(flush(&mut log, false)),
            70..=84 => {
                assert!(flush(&mut log, true));
                // A sync covers everything appended before the flush was taken.
                assert_eq!(
                    log.watermarks().durable_offset,
                    log.watermarks().next_offset
                );
                durable = model.len();
            }
            85..=91 => {
                let got = read_all(&log);
                assert_eq!(
                    got.as_slice(),
                    &model[..got.len()],
                    "reads must match the model"
                );
                let hw = log.watermarks().written_offset;
                let expect_n = model
                    .iter()
                    .take_while(|m| BatchHeader::parse(m).unwrap().base_offset < hw)
                    .count();
                assert_eq!(got.len(), expect_n);
            }
            92..=97 => {
                // Power loss (or a process kill): unsynced block writes land at random. Half the
                // time the process dies in the middle of a flush first (after a random number of
                // storage operations), which exercises the ordering inside a group commit and a
                // roll.
                match rng.random_range(0..6) {
                    0..=2 => {
                        storage.die_after_ops(Some(rng.random_range(0..6)));
                        let _ = flush(&mut log, rng.random_bool(0.5));
                        storage.die_after_ops(None);
                    }
                    3 => flush_partly(&mut log, &storage, &mut rng),
                    4 => {
                        // fdatasync fails (EIO): nothing of this flush may count as durable.
                        let before = log.watermarks().durable_offset;
                        storage.set_fail_sync(true);
                        let _ = flush(&mut log, true);
                        storage.set_fail_sync(false);
                        assert_eq!(log.watermarks().durable_offset, before);
                    }
                    _ => {}
                }
                drop(log);
                let keep_p = rng.random_range(0.0..1.0);
                let mut r2 = Xoshiro256PlusPlus::seed_from_u64(rng.random());
                if rng.random_bool(0.5) {
                    // Or a process kill: files created and renamed stay, in-flight writes
                    // land in any order (a roll's new segment without the old one's tail).
                    storage.kill(|_, _, _| r2.random_bool(keep_p));
                } else {
                    storage.crash(|_, _, _| r2.random_bool(keep_p));
                }
                log = open(&storage);
                let got = read_all(&log);
                assert!(
                    got.len() >= durable,
                    "lost synced batches: {} < {durable}",
                    got.len()
                );
                assert_eq!(
                    got.as_slice(),
                    &model[..got.len()],
                    "recovered log must be a prefix"
                );
                model.truncate(got.len());
                durable = got.len();
                assert_eq!(
                    log.watermarks().next_offset,
                    log.watermarks().written_offset
                );
            }
            _ => {
                // Clean shutdown and restart: everything appended survives.
                assert!(flush(&mut log, true));
                block_on(log.close()).expect("close");
                storage.crash(|_, _, _| false);
                log = open(&storage);
                let got = read_all(&log);
                assert_eq!(got, model, "clean restart must keep everything");
                durable = model.len();
            }
        }
    }
}

#[test]
fn synced_batches_survive_random_crashes() {
    if let Ok(seed) = std::env::var("CRASH_IMAGE_SEED") {
        run_case(seed.parse().expect("seed"));
        return;
    }
    let cases: u64 = std::env::var("CRASH_IMAGE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1500);
    for seed in 0..cases {
        if let Err(e) = std::panic::catch_unwind(|| run_case(seed)) {
            eprintln!("crash-image case failed: replay with CRASH_IMAGE_SEED={seed}");
            std::panic::resume_unwind(e);
        }
    }
}
