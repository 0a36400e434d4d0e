//! Sends messages to a running server with the client's `Producer`.
//!
//! ```text
//! cargo run -p shardline-net --example producer -- 127.0.0.1:7070 demo 10000
//! ```
//! Arguments: server address, topic (created with 4 partitions if missing), message count.
//! Every tenth message has no key (round-robin per batch); the others are keyed `user-N`
//! (crc32c(key) % partitions). Prints how many were acknowledged and the rate.

use std::time::Instant;

use shardline_net::client::{
    Client, ClientConfig, ClientError, Producer, ProducerConfig, TopicConfig, code,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:7070".into());
    let topic = args.next().unwrap_or_else(|| "demo".into());
    let count: u64 = args.next().map_or(Ok(1000), |s| s.parse())?;

    let client = Client::connect(&addr, ClientConfig::default())?;
    let config = TopicConfig {
        partitions: 4,
        ..TopicConfig::default()
    };
    match client.create_topic(&topic, config) {
        Ok(t) => println!(
            "created topic {} with {} partitions",
            t.name,
            t.partition_shards.len()
        ),
        Err(e) if e.code() == Some(code::TOPIC_EXISTS) => {}
        Err(e) => return Err(e.into()),
    }

    let producer = Producer::new(client, ProducerConfig::default())?;
    let start = Instant::now();
    let handles: Vec<_> = (0..count)
        .map(|i| {
            let key = format!("user-{}", i % 100);
            let key = (i % 10 != 0).then_some(key.as_bytes());
            producer.send(&topic, key, format!("message {i}"), Vec::new())
        })
        .collect();
    let mut acked = 0u64;
    let mut last: Option<ClientError> = None;
    for h in handles {
        match h.wait() {
            Ok(_) => acked += 1,
            Err(e) => last = Some(e),
        }
    }
    producer.close()?;
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "{acked} of {count} acknowledged in {seconds:.3} s ({:.0} msg/s)",
        acked as f64 / seconds
    );
    match last {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}
