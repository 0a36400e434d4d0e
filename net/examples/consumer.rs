//! Reads a topic from a running server with the client's `Consumer`: server-push subscriptions
//! with credits (default), or the long-poll fetch path (`--fetch`).
//!
//! ```text
//! cargo run -p shardline-net --example consumer -- 127.0.0.1:7070 demo 100
//! cargo run -p shardline-net --example consumer -- 127.0.0.1:7070 demo 100 --fetch
//! ```
//! Arguments: server address, topic, how many records to print (stops earlier after 3 s
//! without records).

use std::time::Duration;

use shardline_net::client::{Client, ClientConfig, Consumer, ConsumerConfig, OffsetSpec};

const IDLE: Duration = Duration::from_secs(3);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let addr = args.first().map_or("127.0.0.1:7070", String::as_str);
    let topic = args.get(1).map_or("demo", String::as_str);
    let count: usize = args.get(2).map_or(Ok(100), |s| s.parse())?;
    let fetch = args.iter().any(|a| a == "--fetch");

    let client = Client::connect(addr, ClientConfig::default())?;
    let partitions = client.partitions(topic)?;
    let mut consumer = Consumer::new(client, ConsumerConfig::default())?;
    let mut printed = 0;
    if fetch {
        // Partition by partition, from the start, long-polling up to IDLE for more.
        for p in 0..partitions {
            let mut offset = 0;
            while printed < count {
                let batch = consumer.fetch(topic, p, offset, IDLE)?;
                if batch.records.is_empty() {
                    break;
                }
                for r in batch.records.iter().take(count - printed) {
                    println!(
                        "{}/{} {}",
                        r.partition,
                        r.offset,
                        String::from_utf8_lossy(&r.value)
                    );
                    printed += 1;
                }
                offset = batch.next_offset;
            }
        }
    } else {
        for p in 0..partitions {
            let info = consumer.subscribe(topic, p, OffsetSpec::Earliest)?;
            eprintln!(
                "partition {p}: from {} (high watermark {})",
                info.start_offset, info.high_watermark
            );
        }
        while printed < count {
            let Some(r) = consumer.poll(IDLE)? else {
                break;
            };
            println!(
                "{}/{} {}",
                r.partition,
                r.offset,
                String::from_utf8_lossy(&r.value)
            );
            printed += 1;
        }
    }
    eprintln!("{printed} records");
    Ok(())
}
