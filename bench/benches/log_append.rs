//! The produce path inside the engine, from the bytes of one batch to its place in the log:
//! ingress validation, then the partition log's append (offset assignment, the copy into the
//! write chunks, the cache entry). Two paths side by side (issue 13, "Produce path without
//! waste"):
//! - `old`: `batch::validate` then `PartitionLog::append(Bytes)`, which parses and checks the
//!   header again and (before issue 13) copied the batch only to patch its base offset;
//! - `validated`: `ValidatedBatch::validate` then `PartitionLog::append_validated`: the header
//!   is parsed once and the batch is copied once (into the write chunks).
//!
//! Yardstick: `copy`, one `memcpy` of the same bytes plus `crc32c` over them (one validation
//! pass): the floor for a path that must validate and copy the batch once.
//!
//! The log runs on the in-memory crash-image storage: no disk I/O is measured. Flushes and
//! retention (to bound memory) run between timed blocks, outside the measured time.
//! Run: `cargo bench -p shardline-bench --bench log_append`.

// A benchmark whose input cannot be built has nothing to measure: stopping is right.
#![allow(clippy::expect_used)]

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use futures_lite::future::block_on;
use shardline_engine::batch::{self, BatchBuilder, ValidatedBatch};
use shardline_engine::log::{self, LogConfig, PartitionLog};
use shardline_engine::storage::CrashStorage;

/// The two batch shapes of the storage-engine issue: few large records, many small ones.
const SHAPES: [(usize, usize); 2] = [(100, 1024), (1000, 100)];
/// Appends timed together between two untimed flushes.
const APPENDS_PER_FLUSH: u64 = 64;
/// Segment size of the benchmark's log; retention keeps about two of them in memory.
const SEGMENT_BYTES: u64 = 16 << 20;

type Log = PartitionLog<CrashStorage>;

fn encoded(count: usize, value_bytes: usize) -> Bytes {
    let mut b = BatchBuilder::new();
    for i in 0..count {
        let value: Vec<u8> = (0..value_bytes).map(|j| ((i * 31) ^ j) as u8).collect();
        b.push(1_700_000_000_000_000 + i as i64, None, value, Vec::new());
    }
    b.build().expect("batch builds")
}

fn open_log() -> Log {
    let cfg = LogConfig {
        segment_bytes: SEGMENT_BYTES,
        retention_bytes: Some(SEGMENT_BYTES),
        preallocate_bytes: 0,
        ..LogConfig::default()
    };
    block_on(Log::open(
        CrashStorage::new(),
        Path::new("/bench/log_append/0"),
        cfg,
        0,
    ))
    .expect("log opens")
}

/// Untimed housekeeping: write and sync what was appended, then drop expired segments.
fn flush_and_trim(log: &mut Log) {
    if let Some(job) = log.take_flush(true) {
        let done = block_on(job.run());
        log.finish_flush(done).expect("flush");
    }
    let files = log.take_expired(0);
    let storage = log.storage().clone();
    block_on(log::remove_files(&storage, log.dir(), &files)).expect("remove");
}

/// Times `iters` appends of fresh, uniquely owned copies of `encoded` (as a network frame
/// would hand them over); making the copies is not timed.
fn time_appends(
    log: &mut Log,
    encoded: &Bytes,
    iters: u64,
    mut append: impl FnMut(&mut Log, Bytes),
) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(APPENDS_PER_FLUSH);
        let inputs: Vec<Bytes> = (0..n).map(|_| Bytes::from(encoded.to_vec())).collect();
        let started = Instant::now();
        for input in inputs {
            append(log, black_box(input));
        }
        total += started.elapsed();
        flush_and_trim(log);
        left -= n;
    }
    total
}

fn bench_append(c: &mut Criterion) {
    let mut group = c.benchmark_group("log_append");
    for (count, value_bytes) in SHAPES {
        let encoded = encoded(count, value_bytes);
        let name = format!("{count}x{value_bytes}B");
        group.throughput(Throughput::Bytes(encoded.len() as u64));
        group.bench_function(BenchmarkId::new("old", &name), |b| {
            let mut log = open_log();
            b.iter_custom(|iters| {
                time_appends(&mut log, &encoded, iters, |log, bytes| {
                    batch::validate(&bytes).expect("valid");
                    log.append(bytes, 0).expect("append");
                })
            });
        });
        group.bench_function(BenchmarkId::new("validated", &name), |b| {
            let mut log = open_log();
            b.iter_custom(|iters| {
                time_appends(&mut log, &encoded, iters, |log, bytes| {
                    let batch = ValidatedBatch::validate(bytes).expect("valid");
                    log.append_validated(batch, 0).expect("append");
                })
            });
        });
        let mut copy = vec![0u8; encoded.len()];
        group.bench_function(BenchmarkId::new("copy", &name), |b| {
            b.iter(|| {
                copy.copy_from_slice(black_box(&encoded));
                crc32c::crc32c(black_box(&copy[16..]))
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench_append);
criterion_main!(benches);
