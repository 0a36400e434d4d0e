//! Read isolation end to end (issue 18, docs/semantics.md "What readers see"): through a real
//! server, a consumer and fetches with `ReadIsolation::Appended` see a `leader` batch at once,
//! with `Durable` only once an fdatasync covered it (here: the sync a `durable` produce makes,
//! the periodic sync being set to an hour).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::time::{Duration, Instant};

use shardline_engine::EngineConfig;
use shardline_net::client::{
    Acks, Client, ClientConfig, Consumer, ConsumerConfig, OffsetSpec, TopicConfig,
};
use shardline_net::protocol::ReadIsolation;
use shardline_net::server::{Server, ServerConfig};

fn start(dir: &std::path::Path) -> Server {
    let mut e = EngineConfig::with_data_dir(dir);
    e.shards = 1;
    e.pin_shards = false;
    e.io_memory_bytes = 512 << 10;
    // Leader-acked data is not synced by the timer during the test.
    e.sync_interval_ms = 3_600_000;
    let s = ServerConfig {
        listen: "127.0.0.1:0".into(),
        ..ServerConfig::default()
    };
    Server::start(e, s).unwrap()
}

fn values(n: usize, tag: &str) -> bytes::Bytes {
    shardline_engine::batch::batch_of_values((0..n).map(|i| format!("{tag}{i}"))).unwrap()
}

/// Polls `consumer` until `n` records arrived (bounded by 20 s).
fn poll_n(consumer: &mut Consumer, n: usize) -> Vec<(u64, Vec<u8>)> {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} records",
            got.len()
        );
        if let Some(r) = consumer.poll(Duration::from_millis(200)).unwrap() {
            got.push((r.offset, r.value));
        }
    }
    got
}

// Proves: a durable-only reader (fetch and subscription) does not get a leader batch that no
// sync covered, while an appended reader does; once a durable produce's sync covers it, the
// durable reader gets every record in order. The fetch's high watermark is the visible end.
#[test]
fn durable_isolation_waits_for_the_sync_and_appended_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let addr = server.addr().to_string();
    let client = Client::connect(&addr, ClientConfig::default()).unwrap();
    let config = TopicConfig {
        partitions: 1,
        ..TopicConfig::default()
    };
    client.create_topic("t", config).unwrap();
    let durable_config = ConsumerConfig {
        isolation: ReadIsolation::Durable,
        ..ConsumerConfig::default()
    };
    let mut durable = Consumer::new(client.clone(), durable_config).unwrap();
    durable.subscribe("t", 0, OffsetSpec::Earliest).unwrap();
    let mut appended = Consumer::new(client.clone(), ConsumerConfig::default()).unwrap();
    appended.subscribe("t", 0, OffsetSpec::Earliest).unwrap();

    client
        .produce("t", 0, values(3, "l"), Acks::Leader)
        .unwrap();
    let seen = poll_n(&mut appended, 3);
    assert_eq!(seen.iter().map(|r| r.0).collect::<Vec<_>>(), vec![0, 1, 2]);
    let wait = Duration::ZERO;
    let f = block(client.fetch_isolated_async("t", 0, 0, wait, 1 << 20, ReadIsolation::Durable))
        .unwrap();
    assert_eq!((f.records, f.high_watermark), (0, 0), "nothing synced yet");
    let f = block(client.fetch_isolated_async("t", 0, 0, wait, 1 << 20, ReadIsolation::Appended))
        .unwrap();
    assert_eq!((f.records, f.high_watermark), (3, 3));
    assert!(
        durable.poll(Duration::from_millis(300)).unwrap().is_none(),
        "a durable-only subscriber got unsynced data"
    );

    client
        .produce("t", 0, values(1, "d"), Acks::Durable)
        .unwrap();
    let got = poll_n(&mut durable, 4);
    let offsets: Vec<u64> = got.iter().map(|r| r.0).collect();
    assert_eq!(offsets, vec![0, 1, 2, 3]);
    assert_eq!(got[3].1, b"d0".to_vec());
    let f = block(client.fetch_isolated_async("t", 0, 0, wait, 1 << 20, ReadIsolation::Durable))
        .unwrap();
    assert_eq!((f.records, f.high_watermark), (4, 4));
    drop((durable, appended, client));
    server.shutdown().unwrap();
}

fn block<F: std::future::Future>(f: F) -> F::Output {
    futures_lite::future::block_on(f)
}
