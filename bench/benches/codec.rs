//! Yardstick: the `crc32c` crate and a plain `memcpy` of the same bytes. Encoding a batch is at
//! heart one copy of the payload plus one CRC32C pass, and ingress validation is one CRC32C pass
//! plus rkyv's structure check, so `copy` and `crc32c` in the same group are the floor each
//! codec figure is compared with (docs/performance.md, "Codec"). Index lookups are compared with
//! nothing but themselves: they must stay far below the ~155 us of one durable 4 KiB write.
//!
//! Throughput is in bytes of the encoded batch (what goes to disk and on the wire).
//! Run: `cargo bench -p shardline-bench --bench codec` (add `-- --save-baseline NAME` to keep a
//! baseline, `-- --baseline NAME` to compare with it).

// A benchmark whose input cannot be built has nothing to measure: stopping is right.
#![allow(clippy::expect_used)]

use std::hint::black_box;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use shardline_engine::batch::{self, BatchBuilder};
use shardline_engine::log::index::{self, IndexEntry};

/// The two batch shapes of the storage-engine issue: few large records, many small ones.
const SHAPES: [(usize, usize); 2] = [(100, 1024), (1000, 100)];
/// Entries in the index of the lookup benchmarks (a 400 MiB segment at one entry per 4 KiB).
const INDEX_ENTRIES: usize = 100_000;
/// Lookups per measured iteration (random keys, so the binary search is not branch-predicted).
const LOOKUPS_PER_ITERATION: usize = 1024;

fn values(count: usize, value_bytes: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| {
            (0..value_bytes)
                .map(|j| (i.wrapping_mul(31) ^ j) as u8)
                .collect()
        })
        .collect()
}

fn builder_of(values: &[Vec<u8>], timestamp_us: i64) -> BatchBuilder {
    let mut b = BatchBuilder::new();
    for (i, v) in values.iter().enumerate() {
        b.push(timestamp_us + i as i64, None, v.clone(), Vec::new());
    }
    b
}

fn shape_name(count: usize, value_bytes: usize) -> String {
    format!("{count}x{value_bytes}B")
}

fn bench_batches(c: &mut Criterion) {
    let mut group = c.benchmark_group("batch");
    for (count, value_bytes) in SHAPES {
        let vals = values(count, value_bytes);
        let now = batch::now_us();
        let encoded = builder_of(&vals, now).build().expect("batch builds");
        let name = shape_name(count, value_bytes);
        group.throughput(Throughput::Bytes(encoded.len() as u64));

        // The builder owns its records, so constructing it (cloning the values) is setup.
        group.bench_function(BenchmarkId::new("encode", &name), |b| {
            b.iter_batched(
                || builder_of(&vals, now),
                |builder| builder.build().expect("batch builds"),
                BatchSize::SmallInput,
            );
        });
        group.bench_function(BenchmarkId::new("validate", &name), |b| {
            b.iter(|| batch::validate(black_box(&encoded)).expect("batch is valid"));
        });
        // Yardsticks on exactly the same bytes.
        group.bench_function(BenchmarkId::new("crc32c", &name), |b| {
            b.iter(|| crc32c::crc32c(black_box(&encoded[16..])));
        });
        let mut copy = vec![0u8; encoded.len()];
        group.bench_function(BenchmarkId::new("copy", &name), |b| {
            b.iter(|| copy.copy_from_slice(black_box(&encoded)));
        });
    }
    group.finish();
}

fn bench_crc32c(c: &mut Criterion) {
    let mut group = c.benchmark_group("crc32c");
    for bytes in [64usize, 4 << 10, 1 << 20] {
        let data: Vec<u8> = (0..bytes).map(|i| (i * 7) as u8).collect();
        group.throughput(Throughput::Bytes(bytes as u64));
        group.bench_with_input(BenchmarkId::from_parameter(bytes), &data, |b, d| {
            b.iter(|| crc32c::crc32c(black_box(d)));
        });
    }
    group.finish();
}

/// A deterministic xorshift64 stream: lookup keys without a dependency on `rand`.
fn keys(seed: u64, count: usize, bound: u64) -> Vec<u64> {
    let mut x = seed.max(1);
    (0..count)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % bound
        })
        .collect()
}

fn bench_index(c: &mut Criterion) {
    // One entry per ~4 KiB of log: offsets step by 10 records, timestamps by 1 ms.
    let entries: Vec<IndexEntry> = (0..INDEX_ENTRIES as u32)
        .map(|i| IndexEntry {
            rel_offset: i * 10,
            position: i * 4096,
            max_timestamp_before_us: if i == 0 {
                i64::MIN
            } else {
                1_700_000_000_000_000 + i64::from(i) * 1000
            },
        })
        .collect();
    let offset_keys: Vec<u32> = keys(0x5EED, LOOKUPS_PER_ITERATION, INDEX_ENTRIES as u64 * 10)
        .into_iter()
        .map(|k| k as u32)
        .collect();
    let time_keys: Vec<i64> = keys(0xF00D, LOOKUPS_PER_ITERATION, INDEX_ENTRIES as u64 * 1000)
        .into_iter()
        .map(|k| 1_700_000_000_000_000 + k as i64)
        .collect();

    let mut group = c.benchmark_group("index_100k");
    group.throughput(Throughput::Elements(LOOKUPS_PER_ITERATION as u64));
    group.bench_function("lookup_offset", |b| {
        b.iter(|| {
            let mut found = 0usize;
            for k in &offset_keys {
                found += index::lookup_offset(black_box(&entries), *k).unwrap_or(0);
            }
            found
        });
    });
    group.bench_function("lookup_time", |b| {
        b.iter(|| {
            let mut found = 0usize;
            for k in &time_keys {
                found += index::lookup_time(black_box(&entries), *k).unwrap_or(0);
            }
            found
        });
    });
    group.finish();
}

criterion_group!(benches, bench_batches, bench_crc32c, bench_index);
criterion_main!(benches);
