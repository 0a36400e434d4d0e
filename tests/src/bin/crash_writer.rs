//! Child process of the SIGKILL crash test: appends batches with `durable` acks to every
//! partition of topic `crash` from one thread per partition, and prints one line per
//! acknowledged batch: `ACK <partition> <seq> <base_offset> <last_offset> <crc>`.
//! It runs until killed (or 60 s, so a stray child never lingers).
//!
//! Usage: crash-writer DATA_DIR PARTITIONS FIRST_SEQ

use std::io::Write;
use std::time::{Duration, Instant};

use shardline_engine::batch::{BatchBuilder, BatchHeader, now_us};
use shardline_engine::{Acks, Engine, EngineConfig, Error, TopicConfig};
use shardline_tests::{crash_batch_len, crash_value};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        args.len() == 4,
        "usage: crash-writer DATA_DIR PARTITIONS FIRST_SEQ"
    );
    let partitions: u32 = args[2].parse()?;
    let first_seq: u64 = args[3].parse()?;
    let mut cfg = EngineConfig::with_data_dir(&args[1]);
    cfg.shards = 2;
    cfg.pin_shards = false;
    cfg.io_memory_bytes = 512 << 10;
    cfg.topic_defaults.segment_bytes = 256 << 10; // many rolls per run
    let engine = Engine::open(cfg)?;
    match engine.create_topic("crash", TopicConfig::with_partitions(partitions)) {
        Ok(_) | Err(Error::TopicExists(_)) => {}
        Err(e) => return Err(e.into()),
    }
    println!("READY");
    std::io::stdout().flush()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let threads: Vec<_> = (0..partitions)
        .map(|p| {
            let engine = engine.clone();
            std::thread::spawn(move || -> anyhow::Result<()> {
                let mut seq = first_seq + u64::from(p) * 1_000_000;
                while Instant::now() < deadline {
                    let mut b = BatchBuilder::new();
                    for i in 0..crash_batch_len(seq) {
                        b.push(now_us(), None, crash_value(seq, i), Vec::new());
                    }
                    let bytes = b.build()?;
                    let crc = BatchHeader::parse(&bytes)?.crc;
                    let ack = engine
                        .produce("crash", p, bytes, Acks::Durable)?
                        .ok_or_else(|| anyhow::anyhow!("no ack"))?;
                    let mut out = std::io::stdout().lock();
                    writeln!(
                        out,
                        "ACK {p} {seq} {} {} {crc}",
                        ack.base_offset, ack.last_offset
                    )?;
                    out.flush()?;
                    seq += 1;
                }
                Ok(())
            })
        })
        .collect();
    for t in threads {
        t.join()
            .map_err(|_| anyhow::anyhow!("producer panicked"))??;
    }
    engine.shutdown()?;
    Ok(())
}
