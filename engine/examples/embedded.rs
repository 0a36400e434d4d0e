//! Embedding Shardline in a program: open an engine on a directory, create a topic, produce
//! with durable acks from a plain thread, read back by fetch and by subscription, restart, and
//! find the data again.
//!
//! Run: `cargo run --release -p shardline-engine --example embedded [DATA_DIR]`

use std::time::Duration;

use shardline_engine::batch::{self, BatchBuilder};
use shardline_engine::{Acks, Engine, EngineConfig, FetchRequest, OffsetSpec, TopicConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tmp;
    let dir = match std::env::args().nth(1) {
        Some(d) => std::path::PathBuf::from(d),
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let engine = Engine::open(EngineConfig::with_data_dir(&dir))?;
    if engine.route("ticks").is_err() {
        engine.create_topic("ticks", TopicConfig::with_partitions(4))?;
    }

    // A producer on this thread: 10 batches of 100 records to partition 0, durable.
    let mut last = None;
    for b in 0..10 {
        let mut builder = BatchBuilder::new();
        for i in 0..100 {
            builder.push(
                batch::now_us(),
                Some(b"AAPL".to_vec()),
                format!("tick {b}-{i}").into_bytes(),
                Vec::new(),
            );
        }
        last = engine.produce("ticks", 0, builder.build()?, Acks::Durable)?;
    }
    println!("last durable ack: {last:?}");

    // The same from another runtime's point of view: a future any executor can await.
    let ack = futures_lite::future::block_on(engine.produce_async(
        "ticks",
        1,
        batch::batch_of_values(["hello"])?,
        Acks::Leader,
    ))?;
    println!("async ack: {ack:?}");

    // Fetch from the start, decoding records.
    let resp = engine.fetch(FetchRequest::new("ticks", 0, 0))?;
    let mut n = 0;
    for chunk in &resp.chunks {
        for b in batch::split_batches(chunk)? {
            n += batch::decode(b)?.1.len();
        }
    }
    println!(
        "fetched {n} records, high watermark {}",
        resp.high_watermark
    );

    // A subscription receives new batches as soon as they are written.
    let sub = engine.subscribe("ticks", 2, OffsetSpec::Latest, 1 << 20, 8)?;
    engine.produce(
        "ticks",
        2,
        batch::batch_of_values(["pushed"])?,
        Acks::Leader,
    )?;
    let pushed = sub
        .recv_timeout(Duration::from_secs(5))?
        .ok_or("no push within 5 s")?;
    println!("subscription got {} record(s)", pushed.records);

    let info = engine.describe_topic("ticks")?;
    for p in &info.partitions {
        println!(
            "partition {} on shard {}: offsets {}..{}",
            p.partition, p.shard, p.log_start, p.high_watermark
        );
    }
    engine.shutdown()?;

    // Restart on the same directory: everything acknowledged is there.
    let engine = Engine::open(EngineConfig::with_data_dir(&dir))?;
    let hw = engine.list_offset("ticks", 0, OffsetSpec::Latest)?;
    println!("after restart partition 0 ends at offset {hw}");
    engine.shutdown()?;
    Ok(())
}
