//! Cost of the idempotent-producer check (docs/semantics.md) on the append path.
//!
//! Yardstick: the same engine, partition and batches without producer ids, in the same run,
//! rounds interleaved (plain, idempotent, many-producers, plain, ...) so drift hits all alike.
//! Every batch is built before the clock starts (the sequence is in the CRC-covered header, so
//! each idempotent batch is distinct); the clock covers handing the batches to the engine with
//! `--inflight` produce futures in flight at `acks = leader` (the check runs on the shard before
//! the append; `leader` keeps fdatasync out of the measurement) until the last ack.
//!
//! Run: `cargo run --release -p shardline-bench --bin idempotence_bench -- [--batches N]`

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;
use futures_lite::future;
use shardline_bench::bench_dir;
use shardline_engine::batch::{BatchBuilder, ProducerInfo};
use shardline_engine::{Acks, Engine, EngineConfig, ProduceAck, TopicConfig};

#[derive(Parser, Debug)]
struct Args {
    /// Directory on the disk under test (default: a temporary one).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// Batches per measured round.
    #[arg(long, default_value_t = 20_000)]
    batches: usize,
    /// Records per batch.
    #[arg(long, default_value_t = 10)]
    records: usize,
    /// Value bytes per record.
    #[arg(long, default_value_t = 100)]
    record_bytes: usize,
    /// Produce futures in flight.
    #[arg(long, default_value_t = 64)]
    inflight: usize,
    /// Rounds of each variant (the median is reported).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Producers of the many-producers variant (batches round-robin over them).
    #[arg(long, default_value_t = 1000)]
    producers: u64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Variant {
    Plain,
    Idempotent,
    ManyProducers,
}

fn build(args: &Args, variant: Variant, round: usize) -> anyhow::Result<Vec<Bytes>> {
    let value = vec![b'x'; args.record_bytes];
    let mut out = Vec::with_capacity(args.batches);
    let per_batch = args.records as u32;
    for i in 0..args.batches {
        let mut b = BatchBuilder::new();
        let producers = match variant {
            Variant::Plain => 0,
            Variant::Idempotent => 1,
            Variant::ManyProducers => args.producers,
        };
        if producers > 0 {
            let p = i as u64 % producers;
            // A fresh id range per round and variant: every producer starts at sequence 0.
            let variant_base = if variant == Variant::Idempotent {
                1
            } else {
                500_000
            };
            let id = variant_base + round as u64 * 1_000_000 + p;
            let seq = (i as u64 / producers) as u32 * per_batch;
            b = b.producer(ProducerInfo {
                producer_id: id,
                producer_epoch: 0,
                base_sequence: seq,
            });
        }
        for _ in 0..args.records {
            b.push_value(value.clone());
        }
        out.push(b.build()?);
    }
    Ok(out)
}

type Pending = Pin<Box<dyn Future<Output = shardline_engine::Result<Option<ProduceAck>>>>>;

fn run(
    engine: &Engine,
    topic: &str,
    batches: Vec<Bytes>,
    inflight: usize,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut queue: VecDeque<Pending> = VecDeque::new();
    for b in batches {
        if queue.len() >= inflight
            && let Some(f) = queue.pop_front()
        {
            future::block_on(f)?;
        }
        queue.push_back(Box::pin(engine.produce_async(topic, 0, b, Acks::Leader)));
    }
    for f in queue {
        future::block_on(f)?;
    }
    Ok(start.elapsed())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (dir, _tmp) = bench_dir(args.dir.as_deref())?;
    let mut config = EngineConfig::with_data_dir(&dir);
    config.shards = 1;
    let engine = Engine::open(config).context("open engine")?;
    engine.create_topic("t", TopicConfig::with_partitions(1))?;
    let variants = [Variant::Plain, Variant::Idempotent, Variant::ManyProducers];
    let mut rates: Vec<(Variant, Vec<f64>)> = variants.iter().map(|v| (*v, Vec::new())).collect();
    // Warm-up round (unmeasured).
    run(
        &engine,
        "t",
        build(&args, Variant::Plain, 0)?,
        args.inflight,
    )?;
    for round in 0..args.rounds {
        // Rotate the order each round so no variant always runs first (or last).
        for k in 0..rates.len() {
            let i = (k + round) % rates.len();
            let variant = rates[i].0;
            let batches = build(&args, variant, round)?;
            let elapsed = run(&engine, "t", batches, args.inflight)?;
            rates[i].1.push(args.batches as f64 / elapsed.as_secs_f64());
        }
    }
    let plain = median(rates[0].1.clone());
    println!(
        "batches={} records/batch={} record_bytes={} inflight={} rounds={} producers(many)={}",
        args.batches, args.records, args.record_bytes, args.inflight, args.rounds, args.producers
    );
    for (variant, samples) in &rates {
        let m = median(samples.clone());
        println!(
            "{variant:?}: {m:.0} batches/s ({:.0} records/s), {:+.1}% vs plain, samples {samples:.0?}",
            m * args.records as f64,
            (m / plain - 1.0) * 100.0
        );
    }
    engine.shutdown()?;
    Ok(())
}
