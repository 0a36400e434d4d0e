//! Yardstick: fio on the same directory (`bench/disk-baseline.sh` runs both in one go):
//! - durable append bandwidth vs `fio --ioengine=io_uring --direct=1 --bs=1m --rw=write
//!   --fdatasync=1` (target: >= 80%);
//! - leader append bandwidth vs the same fio job without sync (target: >= 80%);
//! - lone durable append p50 vs fio's 4 KiB O_DIRECT|O_DSYNC overwrite p50 (target: <= 1.3x).
//!
//! One engine with one pinned shard and one 1-partition topic per phase; the producer is this
//! thread, pinned to another core, using the embedding API the way an application would.
//!
//! Phases:
//! - `durable`: 1 KiB records in ~1 MiB batches, `Acks::Durable`, `--inflight` produce futures in
//!   flight so batches queue while a flush runs (group commit); the clock stops at the last ack.
//! - `leader`: the same with `Acks::Leader`. Leader acks come back before the bytes are written,
//!   so the clock stops when the high watermark (bytes written to the file) covers the last
//!   batch, and the producer keeps at most `--leader-backlog-mib` appended-but-unwritten bytes.
//!   The engine has no back-pressure of its own at this level, and a flush job of more than
//!   about 250 one-MiB chunks panics the shard inside glommio (docs/performance.md, "Engine
//!   findings"), so the cap is needed, not just polite.
//! - `lone`: one 100-byte record per batch, `Acks::Durable`, one at a time; latency histogram.
//! - `lone-leader` (diagnostic): the same with `Acks::Leader`: the round trip through the
//!   embedding API and the shard without any I/O, i.e. the hand-off part of `lone`.
//! - `roll-durable`, `roll-leader`: one `--roll-batch-kib` batch at a time, latency histogram,
//!   meant with a small `--segment-mib` so that segment rolls are frequent (a 1 MiB segment and
//!   64 KiB batches roll every 16 appends): `durable` until the ack, `leader` until the high
//!   watermark covers the batch (the bytes are in the file; polled, so ~one round trip coarse).
//!
//! Run: `cargo run --release -p shardline-bench --bin append_bench -- --dir /var/tmp [--json]`

use std::collections::VecDeque;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Parser;
use futures_lite::future;
use shardline_bench::{
    LatencySummary, bench_dir, latency_histogram, mib_per_s, micros, pin_current_thread_away_from,
    print_json_line,
};
use shardline_engine::batch::{self, BatchBuilder};
use shardline_engine::{
    Acks, Engine, EngineConfig, ProduceAck, ShardStats, TopicConfig, rt as engine_rt,
};

#[derive(Parser, Debug)]
#[command(about = "Append throughput and latency of one Shardline shard (compare with fio)")]
struct Args {
    /// Directory on the disk under test (a fresh subdirectory is used and removed). Default: a
    /// temporary directory under the current directory, else under /var/tmp. tmpfs is refused.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Phases to run, comma separated: durable, leader, lone, lone-leader.
    #[arg(
        long,
        default_value = "durable,leader,lone,lone-leader",
        value_delimiter = ','
    )]
    phases: Vec<String>,
    /// Measured seconds of each throughput phase.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Unmeasured seconds of traffic before each throughput phase.
    #[arg(long, default_value_t = 1.0)]
    warmup_seconds: f64,
    /// Value bytes of each record in the throughput phases.
    #[arg(long, default_value_t = 1024)]
    record_bytes: usize,
    /// Target encoded bytes of one batch in the throughput phases.
    #[arg(long, default_value_t = 1 << 20)]
    batch_bytes: usize,
    /// Produce futures in flight in the throughput phases.
    #[arg(long, default_value_t = 8)]
    inflight: usize,
    /// Leader phase: most appended-but-unwritten MiB the producer lets the partition hold (keep
    /// it well under 250: see the module comment).
    #[arg(long, default_value_t = 64)]
    leader_backlog_mib: u64,
    /// Appends measured in the lone phases.
    #[arg(long, default_value_t = 2000)]
    lone_count: usize,
    /// Unmeasured appends before the lone phases.
    #[arg(long, default_value_t = 20)]
    lone_warmup: usize,
    /// Value bytes of the lone record.
    #[arg(long, default_value_t = 100)]
    lone_bytes: usize,
    /// KiB of one batch in the roll phases.
    #[arg(long, default_value_t = 64)]
    roll_batch_kib: usize,
    /// Appends measured in the roll phases (after `--lone-warmup` unmeasured ones).
    #[arg(long, default_value_t = 2000)]
    roll_count: usize,
    /// Segment size in MiB (0 = the engine default, 256 MiB). Each roll seals a segment, which
    /// costs an fdatasync and index writes even at `leader` level.
    #[arg(long, default_value_t = 0)]
    segment_mib: u64,
    /// Zero-filled KiB kept ahead of small writes (`preallocate_bytes`; default: the engine's).
    #[arg(long)]
    preallocate_kib: Option<u64>,
    /// Engine setting `spin_before_park_us` (0 = the engine default: park at once).
    #[arg(long, default_value_t = 0)]
    spin_before_park_us: u64,
    /// Lone phases: busy-poll for the ack instead of blocking (separates the cost of waking the
    /// producer's idle core from the engine's own latency; a diagnostic, not the default).
    #[arg(long)]
    spin_wait: bool,
    /// Leave the producer thread unpinned (default: pinned to a core the shard does not use).
    #[arg(long)]
    no_pin_producer: bool,
    /// Print one JSON object per phase on stdout (human-readable lines go to stderr).
    #[arg(long)]
    json: bool,
}

/// Human-readable output: stdout normally, stderr when stdout carries JSON lines.
fn say(args: &Args, line: &str) {
    if args.json {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
}

type ProduceFuture = Pin<Box<dyn Future<Output = shardline_engine::Result<Option<ProduceAck>>>>>;

/// What one throughput phase moved, and how the engine grouped it.
struct Moved {
    batches: u64,
    records: u64,
    bytes: u64,
    elapsed: Duration,
    /// Seconds from the start until the last ack (for `leader`, earlier than `elapsed`).
    acked_s: f64,
}

/// Flushes and fdatasyncs the shards did between two snapshots. (`ShardStats::flushed_bytes`
/// is not maintained by the engine yet, so bytes per flush are computed from what was produced.)
fn stats_delta(before: &[ShardStats], after: &[ShardStats]) -> (u64, u64) {
    let sum = |v: &[ShardStats]| {
        v.iter()
            .fold((0, 0), |(f, s), x| (f + x.flushes, s + x.syncs))
    };
    let (f0, s0) = sum(before);
    let (f1, s1) = sum(after);
    (f1 - f0, s1 - s0)
}

/// A batch of `count` records of `record_bytes` each, built once and copied per produce: a copy
/// gives the engine a uniquely owned buffer, as a producer's freshly filled batch would be.
fn template_batch(count: usize, record_bytes: usize) -> anyhow::Result<Bytes> {
    let mut b = BatchBuilder::new();
    let now = batch::now_us();
    for i in 0..count {
        let value: Vec<u8> = (0..record_bytes).map(|j| (i ^ j) as u8).collect();
        b.push(now, None, value, Vec::new());
    }
    Ok(b.build()?)
}

/// Records per batch so that one batch encodes to about `batch_bytes`.
fn records_per_batch(batch_bytes: usize, record_bytes: usize) -> anyhow::Result<usize> {
    let one = template_batch(1, record_bytes)?.len();
    let two = template_batch(2, record_bytes)?.len();
    let per_record = two.saturating_sub(one).max(1);
    Ok((batch_bytes.saturating_sub(one) / per_record + 1).max(1))
}

/// Waits for the oldest produce future and checks its ack.
async fn complete_oldest(inflight: &mut VecDeque<ProduceFuture>) -> anyhow::Result<()> {
    if let Some(f) = inflight.pop_front() {
        f.await?.context("an acked produce returned no ack")?;
    }
    Ok(())
}

/// Produces copies of `template` for `duration` with `args.inflight` futures in flight.
fn produce_for(
    engine: &Engine,
    topic: &str,
    template: &Bytes,
    acks: Acks,
    duration: Duration,
    args: &Args,
) -> anyhow::Result<Moved> {
    let records_per = u64::from(batch::BatchHeader::parse(template)?.record_count);
    let backlog_records_max = (args.leader_backlog_mib << 20) / template.len() as u64 * records_per;
    let start = Instant::now();
    let mut moved = Moved {
        batches: 0,
        records: 0,
        bytes: 0,
        elapsed: Duration::ZERO,
        acked_s: 0.0,
    };
    future::block_on(async {
        let mut inflight: VecDeque<ProduceFuture> = VecDeque::with_capacity(args.inflight);
        while start.elapsed() < duration {
            if acks == Acks::Leader && moved.batches.is_multiple_of(8) {
                // Producer-side flow control (see the module comment): wait while the partition
                // holds more than the backlog limit of unwritten bytes.
                loop {
                    let p = engine.describe_partition(topic, 0)?;
                    if p.next_offset - p.high_watermark <= backlog_records_max {
                        break;
                    }
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
            let batch = Bytes::copy_from_slice(template);
            let mut f: ProduceFuture = Box::pin(engine.produce_async(topic, 0, batch, acks));
            // Polling once sends the request; the ack is awaited later, oldest first (acks of
            // one partition complete in order).
            match future::poll_once(&mut f).await {
                Some(r) => {
                    r?.context("an acked produce returned no ack")?;
                }
                None => inflight.push_back(f),
            }
            moved.batches += 1;
            moved.records += records_per;
            moved.bytes += template.len() as u64;
            while inflight.len() >= args.inflight.max(1) {
                complete_oldest(&mut inflight).await?;
            }
        }
        while !inflight.is_empty() {
            complete_oldest(&mut inflight).await?;
        }
        anyhow::Ok(())
    })?;
    moved.acked_s = start.elapsed().as_secs_f64();
    if acks == Acks::Leader {
        // Leader acks precede the write: stop the clock when the bytes are in the file.
        loop {
            let p = engine.describe_partition(topic, 0)?;
            if p.high_watermark >= p.next_offset {
                break;
            }
            std::thread::sleep(Duration::from_micros(100));
        }
    }
    moved.elapsed = start.elapsed();
    Ok(moved)
}

fn run_throughput(engine: &Engine, phase: &str, acks: Acks, args: &Args) -> anyhow::Result<()> {
    let topic = format!("append-{phase}");
    engine.create_topic(&topic, TopicConfig::with_partitions(1))?;
    let per_batch = records_per_batch(args.batch_bytes, args.record_bytes)?;
    let template = template_batch(per_batch, args.record_bytes)?;
    if args.warmup_seconds > 0.0 {
        let warm = Duration::from_secs_f64(args.warmup_seconds);
        produce_for(engine, &topic, &template, acks, warm, args)?;
    }
    let stats_before = engine.shard_stats()?;
    let moved = produce_for(
        engine,
        &topic,
        &template,
        acks,
        Duration::from_secs_f64(args.seconds),
        args,
    )?;
    let (flushes, syncs) = stats_delta(&stats_before, &engine.shard_stats()?);
    let mib_s = mib_per_s(moved.bytes, moved.elapsed);
    let records_s = moved.records as f64 / moved.elapsed.as_secs_f64();
    let mib = moved.bytes as f64 / f64::from(1 << 20);
    let per_sync_mib = if syncs > 0 { mib / syncs as f64 } else { 0.0 };
    let per_flush_mib = mib / flushes.max(1) as f64;
    say(
        args,
        &format!(
            "{phase:>8}: {mib_s:8.1} MiB/s  {records_s:10.0} records/s  ({} batches of {} B, \
             {} records each, {:.2} s; {flushes} flushes of {per_flush_mib:.2} MiB, {syncs} \
             fdatasyncs, {per_sync_mib:.2} MiB per fdatasync; last ack at {:.2} s)",
            moved.batches,
            template.len(),
            per_batch,
            moved.elapsed.as_secs_f64(),
            moved.acked_s,
        ),
    );
    if args.json {
        print_json_line(&serde_json::json!({
            "bench": "append",
            "phase": phase,
            "acks": format!("{acks:?}").to_lowercase(),
            "record_bytes": args.record_bytes,
            "batch_bytes": template.len(),
            "records_per_batch": per_batch,
            "inflight": args.inflight,
            "seconds": moved.elapsed.as_secs_f64(),
            "acked_seconds": moved.acked_s,
            "batches": moved.batches,
            "records": moved.records,
            "bytes": moved.bytes,
            "mib_per_s": (mib_s * 10.0).round() / 10.0,
            "records_per_s": records_s.round(),
            "flushes": flushes,
            "syncs": syncs,
            "mib_per_flush": (per_flush_mib * 100.0).round() / 100.0,
            "mib_per_sync": (per_sync_mib * 100.0).round() / 100.0,
        }));
    }
    Ok(())
}

fn run_lone(engine: &Engine, phase: &str, acks: Acks, args: &Args) -> anyhow::Result<()> {
    let topic = format!("append-{phase}");
    engine.create_topic(&topic, TopicConfig::with_partitions(1))?;
    let value = vec![0x5Au8; args.lone_bytes];
    let mut hist = latency_histogram()?;
    let mut batch_bytes = 0;
    for i in 0..args.lone_warmup + args.lone_count {
        let batch = batch::batch_of_values([value.clone()])?;
        batch_bytes = batch.len();
        let t0 = Instant::now();
        let ack = if args.spin_wait {
            let mut f = std::pin::pin!(engine.produce_async(&topic, 0, batch, acks));
            loop {
                if let Some(r) = future::block_on(future::poll_once(&mut f)) {
                    break r?;
                }
                std::hint::spin_loop();
            }
        } else {
            engine.produce(&topic, 0, batch, acks)?
        };
        let took = t0.elapsed();
        if ack.is_none() {
            bail!("an acked produce returned no ack");
        }
        if i >= args.lone_warmup {
            hist.record(micros(took))?;
        }
    }
    let s = LatencySummary::of(&hist);
    say(
        args,
        &format!(
            "{phase:>8}: p50 {} us  p90 {} us  p99 {} us  p99.9 {} us  max {} us  mean {:.1} us  \
             ({} appends of one {}-byte record, {batch_bytes}-byte batches, one at a time)",
            s.p50_us, s.p90_us, s.p99_us, s.p999_us, s.max_us, s.mean_us, s.count, args.lone_bytes
        ),
    );
    if args.json {
        print_json_line(&serde_json::json!({
            "bench": "append",
            "phase": phase,
            "acks": format!("{acks:?}").to_lowercase(),
            "record_bytes": args.lone_bytes,
            "batch_bytes": batch_bytes,
            "count": s.count,
            "spin_wait": args.spin_wait,
            "spin_before_park_us": args.spin_before_park_us,
            "latency_us": s.to_json(),
        }));
    }
    Ok(())
}

const PHASES: [&str; 6] = [
    "durable",
    "leader",
    "lone",
    "lone-leader",
    "roll-durable",
    "roll-leader",
];

/// Waits (polling, bounded at 60 s) until the high watermark of partition 0 passes `last`.
fn wait_written(engine: &Engine, topic: &str, last: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while engine.describe_partition(topic, 0)?.high_watermark <= last {
        if Instant::now() > deadline {
            bail!("offset {last} not written after 60 s");
        }
        std::hint::spin_loop();
    }
    Ok(())
}

/// One `--roll-batch-kib` batch at a time: the latency of each append (durable: until the ack;
/// leader: until the bytes are written), with small segments so that rolls are frequent.
fn run_roll(engine: &Engine, phase: &str, acks: Acks, args: &Args) -> anyhow::Result<()> {
    let topic = format!("append-{phase}");
    engine.create_topic(&topic, TopicConfig::with_partitions(1))?;
    let per_batch = records_per_batch(args.roll_batch_kib << 10, args.record_bytes)?;
    let template = template_batch(per_batch, args.record_bytes)?;
    let mut hist = latency_histogram()?;
    let mut segments_warm = engine.describe_partition(&topic, 0)?.segments;
    for i in 0..args.lone_warmup + args.roll_count {
        if i == args.lone_warmup {
            segments_warm = engine.describe_partition(&topic, 0)?.segments;
        }
        let batch = Bytes::copy_from_slice(&template);
        let t0 = Instant::now();
        let ack = engine
            .produce(&topic, 0, batch, acks)?
            .context("an acked produce returned no ack")?;
        if acks == Acks::Leader {
            wait_written(engine, &topic, ack.last_offset)?;
        }
        if i >= args.lone_warmup {
            hist.record(micros(t0.elapsed()))?;
        }
    }
    let rolls = engine.describe_partition(&topic, 0)?.segments - segments_warm;
    let s = LatencySummary::of(&hist);
    say(
        args,
        &format!(
            "{phase:>12}: p50 {} us  p90 {} us  p99 {} us  p99.9 {} us  max {} us  mean {:.1} us  \
             ({} appends of {} B one at a time, {rolls} segment rolls)",
            s.p50_us,
            s.p90_us,
            s.p99_us,
            s.p999_us,
            s.max_us,
            s.mean_us,
            s.count,
            template.len()
        ),
    );
    if args.json {
        print_json_line(&serde_json::json!({
            "bench": "append",
            "phase": phase,
            "acks": format!("{acks:?}").to_lowercase(),
            "batch_bytes": template.len(),
            "count": s.count,
            "rolls": rolls,
            "latency_us": s.to_json(),
        }));
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    for p in &args.phases {
        if !PHASES.contains(&p.as_str()) {
            bail!("unknown phase '{p}' ({})", PHASES.join(", "));
        }
    }
    let (dir, _guard) = bench_dir(args.dir.as_deref())?;
    // The engine places shards on the *calling thread's* affinity mask, so it is opened before
    // this thread pins itself; shard 0 then runs on the first usable CPU.
    let cpus = engine_rt::usable_cpus();
    let shard_cpu = cpus.first().copied().unwrap_or(0);
    let mut config = EngineConfig {
        shards: 1,
        pin_shards: true,
        spin_before_park_us: args.spin_before_park_us,
        ..EngineConfig::with_data_dir(&dir)
    };
    if let Some(kib) = args.preallocate_kib {
        config.topic_defaults.preallocate_bytes = kib << 10;
    }
    if args.segment_mib > 0 {
        config.topic_defaults.segment_bytes = args.segment_mib << 20;
    }
    let segment_bytes = config.topic_defaults.segment_bytes;
    let engine = Engine::open(config)?;
    let producer_cpu = if args.no_pin_producer {
        None
    } else {
        pin_current_thread_away_from(shard_cpu)
    };
    say(
        &args,
        &format!(
            "append_bench: dir {} | 1 shard on cpu {shard_cpu}, producer on cpu {producer_cpu:?} \
             | segments of {} MiB | spin_before_park_us {}",
            dir.display(),
            segment_bytes >> 20,
            args.spin_before_park_us
        ),
    );
    for phase in &args.phases {
        match phase.as_str() {
            "durable" => run_throughput(&engine, phase, Acks::Durable, &args)?,
            "leader" => run_throughput(&engine, phase, Acks::Leader, &args)?,
            "lone" => run_lone(&engine, phase, Acks::Durable, &args)?,
            "roll-durable" => run_roll(&engine, phase, Acks::Durable, &args)?,
            "roll-leader" => run_roll(&engine, phase, Acks::Leader, &args)?,
            _ => run_lone(&engine, phase, Acks::Leader, &args)?,
        }
    }
    engine.shutdown()?;
    Ok(())
}
