//! Shared by net/tests/cluster_membership.rs and cluster_nodes.rs (both include it with
//! `#[path]` beside `tests/src/cluster.rs` as `mod cluster`): the client settings, the peer-link
//! and replica-set waits, and a partition-0 producer ledger (seq -> acknowledged offset) with its
//! reader.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::cluster::Cluster;
use shardline_net::client::{
    Acks, Backoff, Client, ClientConfig, Consumer, ConsumerConfig, Producer, ProducerConfig,
    ProducerRecord,
};

pub(crate) fn config() -> ClientConfig {
    ClientConfig {
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(3),
        ..ClientConfig::default()
    }
}

/// Waits until node `id` logged links up to `n` distinct peers.
pub(crate) fn wait_links_to(c: &Cluster, id: u64, n: usize) {
    let mut up = BTreeSet::new();
    while up.len() < n {
        let line = c
            .wait_log(id, &["peer link up"], Duration::from_secs(30))
            .unwrap();
        if let Some(peer) = line.split("peer=").nth(1) {
            up.insert(peer.split_whitespace().next().unwrap_or("").to_string());
        }
    }
}

/// (sorted replicas, leader) of partition 0 as node `id` reports it.
pub(crate) fn replicas(c: &Cluster, id: u64, topic: &str) -> Option<(Vec<u64>, u64)> {
    let client = Client::connect_node(&c.node(id).addr, config()).ok()?;
    let r = client.describe_replicas(topic).ok()?;
    let p = r.partitions.first()?;
    let mut set = p.replicas.clone();
    set.sort_unstable();
    Some((set, p.leader))
}

#[derive(Default)]
pub(crate) struct Ledger {
    /// seq -> offset.
    pub(crate) acked: BTreeMap<u64, u64>,
    pub(crate) failed: u64,
    pub(crate) last_error: Option<String>,
}

pub(crate) fn run_producer(
    bootstrap: String,
    topic: String,
    stop: Arc<AtomicBool>,
    ledger: Arc<Mutex<Ledger>>,
) {
    let client = Client::connect(&bootstrap, config()).unwrap();
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
    let mut seq = 0u64;
    while !stop.load(Ordering::Acquire) {
        let mut handles = Vec::new();
        for _ in 0..20 {
            let record = ProducerRecord::new(&topic, format!("seq-{seq}")).partition(0);
            handles.push((seq, producer.send_record(record)));
            seq += 1;
        }
        for (seq, h) in handles {
            let r = h.wait();
            let mut l = ledger.lock().unwrap();
            match r {
                Ok(d) => {
                    l.acked
                        .insert(seq, d.offset.expect("acks all gives offsets"));
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

pub(crate) fn wait_acks(ledger: &Mutex<Ledger>, n: usize) {
    let start = ledger.lock().unwrap().acked.len();
    let deadline = Instant::now() + Duration::from_secs(30);
    while ledger.lock().unwrap().acked.len() < start + n {
        if Instant::now() >= deadline {
            let l = ledger.lock().unwrap();
            panic!(
                "{n} more acks within 30 s: acked {} failed {} last error {:?}",
                l.acked.len(),
                l.failed,
                l.last_error
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every record of partition 0 on node `addr` up to `end`: offset -> value.
pub(crate) fn read_all(addr: &str, topic: &str, end: u64) -> BTreeMap<u64, String> {
    let client = Client::connect_node(addr, config()).unwrap();
    let consumer = Consumer::new(client, ConsumerConfig::default()).unwrap();
    let mut out = BTreeMap::new();
    let mut offset = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while offset < end {
        assert!(
            Instant::now() < deadline,
            "{addr}: read to {end}, at {offset}"
        );
        let f = consumer
            .fetch(topic, 0, offset, Duration::from_millis(200))
            .unwrap();
        for r in f.records {
            out.insert(r.offset, String::from_utf8(r.value).unwrap());
        }
        offset = f.next_offset;
    }
    out
}
