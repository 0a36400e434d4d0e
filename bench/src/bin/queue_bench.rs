//! Work-queue throughput (messages acked per second) with competing consumers, beside plain
//! streaming consumption of the same messages in the same run (docs/performance.md,
//! "Work queues"). The yardstick is the streaming phase: the difference is the cost of leases
//! and durable acks.
//!
//! One in-process server (`Server::start`) on a real-disk directory; client threads in this
//! process speak the protocol over 127.0.0.1. For each phase, `--messages` records of
//! `--message-size` bytes are produced first (durably, batches of 500, spread over
//! `--partitions` partitions), then consumed by `--consumers` threads, each with its own client:
//! - `stream`: a plain topic; each consumer subscribes to its share of the partitions (server
//!   push, credits) and counts records; no acks.
//! - `queue/B`: a work-queue topic; each consumer loops receive (any partition, up to B
//!   messages, long poll) then acks them all in one request (acks are durable: fdatasync'd
//!   in the ack log, group-committed) until every message is acked. One phase per `--batches`.
//!
//! Throughput = messages / (time from the first consumer start to the last message counted).
//! CPU = process CPU time (server + clients) per message over the same interval.
//!
//! Run: `cargo run --release -p shardline-bench --bin queue_bench -- [--dir /var/tmp]`

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;
use shardline_bench::{bench_dir, print_json_line, process_cpu_time};
use shardline_engine::{EngineConfig, batch};
use shardline_net::client::{
    Acks, Client, ClientConfig, Consumer, ConsumerConfig, OffsetSpec, QueueConsumer,
    QueueConsumerConfig, QueueReceipt, QueueSettings, TopicConfig, all_ok,
};
use shardline_net::server::{Server, ServerConfig};

#[derive(Parser, Debug)]
#[command(about = "Work-queue acked messages/s beside plain streaming consumption")]
struct Args {
    /// Directory on a real disk (a fresh subdirectory is used and removed).
    #[arg(long)]
    dir: Option<PathBuf>,
    #[arg(long, default_value_t = 200_000)]
    messages: u64,
    #[arg(long, default_value_t = 100)]
    message_size: usize,
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    #[arg(long, default_value_t = 4)]
    consumers: u32,
    /// Messages per receive (and per ack request), one queue phase each.
    #[arg(long, default_value = "256,16,1", value_delimiter = ',')]
    batches: Vec<u32>,
    /// Messages per receive with pipelined acks (`QueueConsumer`: the ack is sent without
    /// waiting for its answer), one `queue-pipelined/B` phase each; empty for none.
    #[arg(long, default_value = "1", value_delimiter = ',')]
    pipelined_batches: Vec<u32>,
    /// Engine shards (0 = one per usable core).
    #[arg(long, default_value_t = 0)]
    shards: usize,
}

struct Phase {
    name: String,
    messages: u64,
    elapsed: Duration,
    cpu: Duration,
}

impl Phase {
    fn rate(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64()
    }
    fn cpu_us_per_message(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.messages as f64
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (dir, _guard) = bench_dir(args.dir.as_deref())?;
    let engine = EngineConfig {
        shards: args.shards,
        ..EngineConfig::with_data_dir(&dir)
    };
    let server = Server::start(
        engine,
        ServerConfig {
            listen: "127.0.0.1:0".into(),
            ..ServerConfig::default()
        },
    )
    .context("starting the server")?;
    let addr = server.addr().to_string();
    let admin = Client::connect(&addr, ClientConfig::default())?;
    let mut phases = Vec::new();

    let topic = TopicConfig {
        partitions: args.partitions,
        ..Default::default()
    };
    admin.create_topic("stream", topic)?;
    produce(&admin, "stream", &args)?;
    phases.push(stream_phase(&addr, &args)?);

    for &b in &args.batches {
        let name = format!("queue-{b}");
        admin.create_queue(&name, topic, queue_settings())?;
        produce(&admin, &name, &args)?;
        phases.push(queue_phase(&addr, &name, b, &args)?);
    }
    for &b in &args.pipelined_batches {
        let name = format!("queue-pipelined-{b}");
        admin.create_queue(&name, topic, queue_settings())?;
        produce(&admin, &name, &args)?;
        phases.push(pipelined_phase(&addr, &name, b, &args)?);
    }
    drop(admin);
    server.shutdown()?;

    let base = phases[0].rate();
    println!(
        "{:<20} {:>10} {:>12} {:>14} {:>16}",
        "phase", "messages", "msgs/s", "vs stream", "cpu us/message"
    );
    for p in &phases {
        println!(
            "{:<20} {:>10} {:>12.0} {:>13.2}x {:>16.2}",
            p.name,
            p.messages,
            p.rate(),
            base / p.rate(),
            p.cpu_us_per_message()
        );
        print_json_line(&serde_json::json!({
            "bench": "queue_bench",
            "phase": p.name,
            "messages": p.messages,
            "message_size": args.message_size,
            "partitions": args.partitions,
            "consumers": args.consumers,
            "elapsed_s": p.elapsed.as_secs_f64(),
            "msgs_per_s": p.rate(),
            "slowdown_vs_stream": base / p.rate(),
            "cpu_us_per_message": p.cpu_us_per_message(),
        }));
    }
    Ok(())
}

fn queue_settings() -> QueueSettings {
    QueueSettings {
        visibility_timeout_ms: 30_000,
        max_deliveries: 5,
        backoff_base_ms: 100,
        backoff_max_ms: 1_000,
        dead_letter_topic: None,
        priority_levels: 1,
    }
}

fn produce(c: &Client, topic: &str, args: &Args) -> anyhow::Result<()> {
    let value = vec![b'x'; args.message_size];
    let per_partition = args.messages / u64::from(args.partitions);
    for p in 0..args.partitions {
        let mut left =
            per_partition + u64::from(p < (args.messages % u64::from(args.partitions)) as u32);
        while left > 0 {
            let n = left.min(500);
            let b: Bytes = batch::batch_of_values((0..n).map(|_| value.clone()))?;
            c.produce(topic, p, b, Acks::Durable)?;
            left -= n;
        }
    }
    Ok(())
}

fn stream_phase(addr: &str, args: &Args) -> anyhow::Result<Phase> {
    let counted = Arc::new(AtomicU64::new(0));
    let (start, cpu0) = (Instant::now(), process_cpu_time());
    let threads: Vec<_> = (0..args.consumers)
        .map(|t| {
            let (addr, counted) = (addr.to_string(), counted.clone());
            let (partitions, consumers, total) = (args.partitions, args.consumers, args.messages);
            std::thread::spawn(move || -> anyhow::Result<()> {
                let client = Client::connect(&addr, ClientConfig::default())?;
                let mut consumer = Consumer::new(client, ConsumerConfig::default())?;
                let mine: Vec<u32> = (0..partitions).filter(|p| p % consumers == t).collect();
                for p in &mine {
                    consumer.subscribe("stream", *p, OffsetSpec::Earliest)?;
                }
                if mine.is_empty() {
                    return Ok(());
                }
                while counted.load(Ordering::Acquire) < total {
                    if consumer.poll(Duration::from_millis(200))?.is_some() {
                        counted.fetch_add(1, Ordering::AcqRel);
                    }
                }
                Ok(())
            })
        })
        .collect();
    for t in threads {
        t.join()
            .map_err(|_| anyhow::anyhow!("consumer panicked"))??;
    }
    Ok(Phase {
        name: "stream".into(),
        messages: args.messages,
        elapsed: start.elapsed(),
        cpu: process_cpu_time() - cpu0,
    })
}

fn queue_phase(addr: &str, topic: &str, batch: u32, args: &Args) -> anyhow::Result<Phase> {
    let acked = Arc::new(AtomicU64::new(0));
    let (start, cpu0) = (Instant::now(), process_cpu_time());
    let threads: Vec<_> = (0..args.consumers)
        .map(|_| {
            let (addr, topic, acked) = (addr.to_string(), topic.to_string(), acked.clone());
            let total = args.messages;
            std::thread::spawn(move || -> anyhow::Result<()> {
                let c = Client::connect(&addr, ClientConfig::default())?;
                while acked.load(Ordering::Acquire) < total {
                    let msgs =
                        c.queue_receive(&topic, None, batch, None, Duration::from_millis(100))?;
                    if msgs.is_empty() {
                        continue;
                    }
                    let receipts: Vec<QueueReceipt> = msgs.iter().map(|m| m.receipt()).collect();
                    let codes = c.queue_ack(&topic, &receipts)?;
                    anyhow::ensure!(all_ok(&codes), "ack refused: {codes:?}");
                    acked.fetch_add(receipts.len() as u64, Ordering::AcqRel);
                }
                Ok(())
            })
        })
        .collect();
    for t in threads {
        t.join()
            .map_err(|_| anyhow::anyhow!("consumer panicked"))??;
    }
    Ok(Phase {
        name: format!("queue/{batch}"),
        messages: acked.load(Ordering::Acquire),
        elapsed: start.elapsed(),
        cpu: process_cpu_time() - cpu0,
    })
}

/// Like `queue_phase`, with pipelined acks: each consumer sends its ack and receives the next
/// message(s) without waiting for the ack's answer; counted when the answer (durable) arrives.
fn pipelined_phase(addr: &str, topic: &str, batch: u32, args: &Args) -> anyhow::Result<Phase> {
    let acked = Arc::new(AtomicU64::new(0));
    let (start, cpu0) = (Instant::now(), process_cpu_time());
    let threads: Vec<_> = (0..args.consumers)
        .map(|_| {
            let (addr, topic, acked) = (addr.to_string(), topic.to_string(), acked.clone());
            let total = args.messages;
            std::thread::spawn(move || -> anyhow::Result<()> {
                let c = Client::connect(&addr, ClientConfig::default())?;
                let mut q = QueueConsumer::new(c, &topic, QueueConsumerConfig::default());
                let mut counted = 0;
                while acked.load(Ordering::Acquire) < total {
                    let msgs = q.receive(batch, Duration::from_millis(100))?;
                    if msgs.is_empty() {
                        q.flush()?;
                    } else {
                        let receipts: Vec<QueueReceipt> =
                            msgs.iter().map(|m| m.receipt()).collect();
                        q.ack(&receipts)?;
                    }
                    let refused = q.take_refused();
                    anyhow::ensure!(refused.is_empty(), "ack refused: {refused:?}");
                    acked.fetch_add(q.acked() - counted, Ordering::AcqRel);
                    counted = q.acked();
                }
                q.flush()?;
                acked.fetch_add(q.acked() - counted, Ordering::AcqRel);
                Ok(())
            })
        })
        .collect();
    for t in threads {
        t.join()
            .map_err(|_| anyhow::anyhow!("consumer panicked"))??;
    }
    Ok(Phase {
        name: format!("queue-pipelined/{batch}"),
        messages: acked.load(Ordering::Acquire),
        elapsed: start.elapsed(),
        cpu: process_cpu_time() - cpu0,
    })
}
