//! Issue 18 measurements of the batch format alone (docs/performance.md, "Issue 18: compact
//! format and compression"): bytes per 100-byte record and the cost of encoding 1000 of them,
//! version 1 (rkyv) against version 2 (compact), each against the copy + CRC32C floor of the
//! same bytes; then compression ratio and speed of lz4 and zstd on a JSON-like telemetry
//! payload, written to a file so the `lz4`/`zstd` command-line tools can be timed on the very
//! same bytes.
//!
//! Run: `cargo run --release -p shardline-format --example format_bench -- [ROUNDS] [PAYLOAD_FILE]`
//! (defaults 7 rounds, /tmp/shardline-telemetry.json); each figure is the median of the rounds.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark whose input cannot be built stops

use std::hint::black_box;
use std::time::Instant;

use shardline_format::{BatchBuilder, HEADER_BYTES, body_kind, compress, compression};

const RECORDS: usize = 1000;
const VALUE_BYTES: usize = 100;
/// Telemetry payload: this many JSON lines (about 4 MiB).
const TELEMETRY_LINES: usize = 24_000;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median seconds of one call of `f` over `rounds * iters` calls, each timed alone: on a
/// shared machine a call that was preempted lands in the tail, not in the median.
fn time_it(rounds: usize, iters: usize, mut f: impl FnMut()) -> f64 {
    let mut samples = Vec::with_capacity(rounds * iters);
    for _ in 0..rounds * iters {
        let t = Instant::now();
        f();
        samples.push(t.elapsed().as_secs_f64());
    }
    median(samples)
}

fn values() -> Vec<Vec<u8>> {
    (0..RECORDS)
        .map(|i| (0..VALUE_BYTES).map(|j| ((i * 31) ^ j) as u8).collect())
        .collect()
}

fn build(kind: u8, codec: u8, values: &[Vec<u8>], now: i64) -> bytes::Bytes {
    let mut b = BatchBuilder::new().body_kind(kind).compression(codec);
    for (i, v) in values.iter().enumerate() {
        b.push_ref(now + i as i64, None, v, []);
    }
    b.build().unwrap()
}

/// A JSON-like telemetry stream: one object per line, device ids, metrics, a few enums.
fn telemetry() -> Vec<u8> {
    let mut out = String::new();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let states = ["ok", "degraded", "ok", "ok", "offline"];
    for i in 0..TELEMETRY_LINES {
        let r = next();
        out.push_str(&format!(
            "{{\"ts\":\"2026-12-03T10:{:02}:{:02}.{:03}Z\",\"device\":\"sensor-{:05}\",\"site\":\"plant-{}\",\
             \"temp_c\":{}.{},\"humidity\":{},\"pressure_hpa\":{}.{},\"battery\":{},\"state\":\"{}\",\
             \"seq\":{}}}\n",
            (i / 60_000) % 60,
            (i / 1000) % 60,
            i % 1000,
            r % 5000,
            r % 7,
            15 + (r >> 8) % 20,
            (r >> 16) % 10,
            30 + (r >> 20) % 60,
            990 + (r >> 28) % 40,
            (r >> 32) % 10,
            (r >> 36) % 101,
            states[((r >> 44) % 5) as usize],
            i
        ));
    }
    out.into_bytes()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rounds: usize = args.get(1).map_or(7, |a| a.parse().expect("ROUNDS"));
    let payload_file = args
        .get(2)
        .cloned()
        .unwrap_or_else(|| "/tmp/shardline-telemetry.json".into());

    let vals = values();
    let now = 1_764_000_000_000_000i64;
    println!("== {RECORDS} x {VALUE_BYTES} B records, median of {rounds} rounds");
    for (name, kind) in [
        ("v1 rkyv", body_kind::RKYV_RECORDS),
        ("v2 compact", body_kind::COMPACT),
    ] {
        let encoded = build(kind, compression::NONE, &vals, now);
        let per_record = (encoded.len() - HEADER_BYTES) as f64 / RECORDS as f64;
        let mut copy = vec![0u8; encoded.len()];
        let floor = time_it(rounds, 200, || {
            copy.copy_from_slice(black_box(&encoded));
            black_box(crc32c::crc32c(&copy[16..]));
        });
        let encode = time_it(rounds, 200, || {
            black_box(build(kind, compression::NONE, black_box(&vals), now));
        });
        let validate = time_it(rounds, 200, || {
            shardline_format::validate(black_box(&encoded)).unwrap();
        });
        println!(
            "{name:<11} bytes/record {per_record:6.1}  batch {:7} B  encode {:7.1} us  \
             copy+crc {:5.1} us  encode/(copy+crc) {:4.2}x  validate {:6.1} us",
            encoded.len(),
            encode * 1e6,
            floor * 1e6,
            encode / floor,
            validate * 1e6,
        );
    }

    let plain = telemetry();
    std::fs::write(&payload_file, &plain).unwrap();
    let mb = plain.len() as f64 / 1e6;
    println!(
        "== telemetry payload {} bytes ({} lines) written to {payload_file}",
        plain.len(),
        TELEMETRY_LINES
    );
    for codec in [compression::LZ4, compression::ZSTD] {
        let mut body = Vec::new();
        compress::compress_into(codec, &plain, &mut body).unwrap();
        let iters = if codec == compression::LZ4 { 10 } else { 3 };
        let c = time_it(rounds, iters, || {
            let mut out = Vec::with_capacity(plain.len());
            compress::compress_into(codec, black_box(&plain), &mut out).unwrap();
            black_box(out);
        });
        let d = time_it(rounds, iters, || {
            black_box(compress::decompress(codec, black_box(&body), plain.len()).unwrap());
        });
        println!(
            "{:<5} ratio {:5.2}  compress {:7.1} MB/s  decompress {:7.1} MB/s",
            compress::codec_name(codec),
            plain.len() as f64 / body.len() as f64,
            mb / c,
            mb / d
        );
    }
    // A batch of the same payload, one line per record: what a producer sends.
    let lines: Vec<&[u8]> = plain
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .take(5000)
        .collect();
    for codec in [compression::NONE, compression::LZ4, compression::ZSTD] {
        let mut b = BatchBuilder::new().compression(codec);
        for l in &lines {
            b.push_ref(now, None, l, []);
        }
        let batch = b.build().unwrap();
        println!(
            "batch of {} telemetry lines, {:<4}: {} bytes",
            lines.len(),
            compress::codec_name(codec),
            batch.len()
        );
    }
}
