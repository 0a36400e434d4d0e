//! An idempotent `acks all` producer that records every acknowledged id (the [`Ledger`]), and
//! the read-back of a replicated topic from every node, for the cluster tests with real
//! `shardline serve` processes (net/tests/cluster_e2e.rs, net/tests/leader_balance_e2e.rs).
//!
//! Depends on std and `shardline_net::client` only, so that net/tests can include it with
//! `#[path]` as they include cluster.rs. Every wait is bounded in time.

#![allow(dead_code)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers: a failed call is the test failing"
)]

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shardline_net::client::{
    Acks, Backoff, Client, ClientConfig, Consumer, ConsumerConfig, Producer, ProducerConfig,
    ProducerRecord,
};

/// Client settings of the cluster tests: a stopped or killed node holds requests, so give up
/// on them quickly and retry elsewhere.
pub fn config() -> ClientConfig {
    ClientConfig {
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(3),
        ..ClientConfig::default()
    }
}

/// Ids acknowledged: id -> (partition, offset); how many sends failed, and every id sent.
#[derive(Default)]
pub struct Ledger {
    pub acked: BTreeMap<u64, (u32, u64)>,
    pub failed: u64,
    pub sent: u64,
    pub last_error: Option<String>,
}

/// What [`run_producer`] writes: `round` records a round (waiting for each round), id `i` as
/// the value `id-{i}` to partition `i % partitions` of `topic`.
#[derive(Debug, Clone)]
pub struct Load {
    pub topic: String,
    pub partitions: u32,
    pub round: u64,
}

/// Sends ids through an idempotent `acks all` producer (bootstrap `bootstrap`, leader-following)
/// in rounds until `stop`, recording each outcome in `ledger`.
pub fn run_producer(bootstrap: &str, load: &Load, stop: &AtomicBool, ledger: &Mutex<Ledger>) {
    let client = Client::connect(bootstrap, config()).unwrap();
    let producer = Producer::new(
        client,
        ProducerConfig {
            acks: Acks::All,
            idempotent: true,
            retries_max: 1_000,
            delivery_timeout: Some(Duration::from_secs(40)),
            backoff: Backoff {
                initial: Duration::from_millis(50),
                max: Duration::from_millis(500),
            },
            ..ProducerConfig::default()
        },
    )
    .unwrap();
    let mut id = 0u64;
    while !stop.load(Ordering::Acquire) {
        let mut handles = Vec::new();
        for _ in 0..load.round {
            let p = u32::try_from(id % u64::from(load.partitions)).unwrap();
            let record = ProducerRecord::new(load.topic.as_str(), format!("id-{id}")).partition(p);
            handles.push((id, producer.send_record(record)));
            id += 1;
        }
        for (id, h) in handles {
            let r = h.wait();
            let mut l = ledger.lock().unwrap();
            l.sent += 1;
            match r {
                Ok(d) => {
                    l.acked
                        .insert(id, (d.partition, d.offset.expect("acks all gives offsets")));
                }
                Err(e) => {
                    l.failed += 1;
                    l.last_error = Some(e.to_string());
                }
            }
        }
    }
    producer.close().unwrap();
}

/// [`run_producer`] on a thread of its own; stop it with [`RunningProducer::finish`].
pub struct RunningProducer {
    stop: Arc<AtomicBool>,
    ledger: Arc<Mutex<Ledger>>,
    thread: std::thread::JoinHandle<()>,
}

impl RunningProducer {
    pub fn start(bootstrap: String, load: Load) -> RunningProducer {
        let stop = Arc::new(AtomicBool::new(false));
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let thread = {
            let (stop, ledger) = (stop.clone(), ledger.clone());
            std::thread::spawn(move || run_producer(&bootstrap, &load, &stop, &ledger))
        };
        RunningProducer {
            stop,
            ledger,
            thread,
        }
    }

    /// Waits (bounded: 40 s) until the ledger has `n` more acknowledgements than now.
    pub fn wait_acks(&self, n: usize) {
        wait_acks(&self.ledger, n);
    }

    /// Stops the producer after its current round and hands back the ledger.
    pub fn finish(self) -> Ledger {
        self.stop.store(true, Ordering::Release);
        self.thread.join().unwrap();
        Arc::try_unwrap(self.ledger)
            .ok()
            .unwrap()
            .into_inner()
            .unwrap()
    }
}

/// Waits until `ledger` has `n` more acknowledgements than now (bounded: 40 s).
pub fn wait_acks(ledger: &Mutex<Ledger>, n: usize) {
    let start = ledger.lock().unwrap().acked.len();
    let deadline = Instant::now() + Duration::from_secs(40);
    while ledger.lock().unwrap().acked.len() < start + n {
        let l = ledger.lock().unwrap();
        assert!(
            Instant::now() < deadline,
            "{n} more acks within 40 s: acked {} failed {} last error {:?}",
            l.acked.len(),
            l.failed,
            l.last_error
        );
        drop(l);
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The high watermark of `partition` of `topic` on node `addr`.
pub fn high_watermark(addr: &str, topic: &str, partition: u32) -> u64 {
    let client = Client::connect_node(addr, config()).unwrap();
    let r = client.describe_replicas(topic).unwrap();
    r.partitions
        .iter()
        .find(|p| p.partition == partition)
        .map_or(0, |p| p.high_watermark)
}

/// Waits (bounded: 20 s) until the nodes at `addrs` report the same high watermark for
/// `partition` of `topic`; returns it.
pub fn converged_high_watermark(addrs: &[&str], topic: &str, partition: u32) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let hw: Vec<u64> = addrs
            .iter()
            .map(|a| high_watermark(a, topic, partition))
            .collect();
        if hw.iter().all(|&h| h == hw[0]) {
            return hw[0];
        }
        assert!(
            Instant::now() < deadline,
            "p{partition}: nodes converge ({hw:?})"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every record of `partition` of `topic` on node `addr`, as (offset, value), up to `end`
/// (bounded: 30 s).
pub fn read_all(addr: &str, topic: &str, partition: u32, end: u64) -> Vec<(u64, String)> {
    let client = Client::connect_node(addr, config()).unwrap();
    let consumer = Consumer::new(client, ConsumerConfig::default()).unwrap();
    let mut out = Vec::new();
    let mut offset = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while offset < end {
        assert!(
            Instant::now() < deadline,
            "{addr} p{partition}: read to {end}"
        );
        let f = consumer
            .fetch(topic, partition, offset, Duration::from_millis(200))
            .unwrap();
        for r in f.records {
            out.push((r.offset, String::from_utf8(r.value).unwrap()));
        }
        offset = f.next_offset;
    }
    out
}

/// Checks one node's copy of a partition (`log`, from [`read_all`]) against the ledger: dense
/// offsets from 0, no value twice, every id acknowledged on `partition` at its acknowledged
/// offset. Returns value -> offset.
pub fn check_log(ledger: &Ledger, partition: u32, log: &[(u64, String)]) -> HashMap<String, u64> {
    for (i, (offset, _)) in log.iter().enumerate() {
        assert_eq!(*offset, i as u64, "p{partition}: no offset gap");
    }
    let mut seen = HashMap::new();
    for (offset, v) in log {
        assert!(
            seen.insert(v.clone(), *offset).is_none(),
            "p{partition}: {v} twice"
        );
    }
    for (id, (_, offset)) in ledger.acked.iter().filter(|(_, (q, _))| *q == partition) {
        let v = format!("id-{id}");
        assert_eq!(
            seen.get(&v),
            Some(offset),
            "acked {v} at p{partition}/{offset}"
        );
    }
    seen
}
