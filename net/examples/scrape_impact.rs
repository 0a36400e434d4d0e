//! Produce load against a running server, for measuring what scraping `/metrics` costs the
//! data path (docs/performance.md, "Operations: scrape impact"). Sends 1 KiB messages with
//! `acks = durable` from `THREADS` producers for `SECONDS`, at most `WINDOW` unacknowledged per
//! producer, and prints messages/s and the send-to-ack latency p50/p99/p999 in microseconds.
//!
//! Run: `cargo run --release -p shardline-net --example scrape_impact -- HOST:PORT [SECONDS]`

#![allow(clippy::unwrap_used, clippy::expect_used)] // a measurement tool: fail loudly

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use shardline_net::client::{Client, ClientConfig, Producer, ProducerConfig, TopicConfig};

const THREADS: usize = 2;
const WINDOW: usize = 256;

fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args
        .next()
        .expect("usage: scrape_impact HOST:PORT [SECONDS]");
    let seconds: u64 = args.next().map_or(8, |s| s.parse().expect("seconds"));
    let client = Client::connect(&addr, ClientConfig::default()).unwrap();
    let topic = format!("scrape-impact-{}", std::process::id());
    let config = TopicConfig {
        partitions: 2,
        ..TopicConfig::default()
    };
    client.create_topic(&topic, config).unwrap();
    let end = Instant::now() + Duration::from_secs(seconds);
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (addr, topic) = (addr.clone(), topic.clone());
            std::thread::spawn(move || {
                let client = Client::connect(&addr, ClientConfig::default()).unwrap();
                let producer = Producer::new(client, ProducerConfig::default()).unwrap();
                let mut h = hdrhistogram::Histogram::<u64>::new(3).unwrap();
                let mut window = VecDeque::new();
                let mut sent = 0u64;
                while Instant::now() < end {
                    let key = format!("{t}-{}", sent % 16);
                    let handle =
                        producer.send(&topic, Some(key.as_bytes()), vec![7u8; 1024], vec![]);
                    window.push_back((Instant::now(), handle));
                    sent += 1;
                    if window.len() >= WINDOW {
                        let (at, handle) = window.pop_front().unwrap();
                        handle.wait().unwrap();
                        h.record(at.elapsed().as_micros() as u64).unwrap();
                    }
                }
                for (at, handle) in window {
                    handle.wait().unwrap();
                    h.record(at.elapsed().as_micros() as u64).unwrap();
                }
                producer.close().unwrap();
                h
            })
        })
        .collect();
    let started = Instant::now();
    let mut all = hdrhistogram::Histogram::<u64>::new(3).unwrap();
    for t in threads {
        all.add(t.join().unwrap()).unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "msgs_per_s {:.0} p50_us {} p99_us {} p999_us {}",
        all.len() as f64 / elapsed,
        all.value_at_quantile(0.5),
        all.value_at_quantile(0.99),
        all.value_at_quantile(0.999)
    );
}
