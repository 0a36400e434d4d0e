//! Preferred-leader balance with three real `shardline serve` processes (issue 14;
//! docs/replication.md, "Leadership balance"): a topic of 6 partitions with three replicas;
//! leadership settles at two partitions per node; node 1 is SIGKILLed (its partitions' leaders
//! move to nodes 2 and 3); it restarts and, within a bounded time, the nodes lead two
//! partitions each again. An idempotent `acks all` producer writes to every partition
//! throughout: every delivery succeeds, and every acknowledged id is read back at its offset
//! from every node.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(unreachable_pub)]
#[path = "../../tests/src/cluster.rs"]
mod cluster;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster::Cluster;
use shardline_net::client::{
    Acks, Backoff, Client, ClientConfig, Consumer, ConsumerConfig, Producer, ProducerConfig,
    ProducerRecord, TopicConfig,
};

const BIN: &str = env!("CARGO_BIN_EXE_shardline");
const TOPIC: &str = "balanced";
const PARTITIONS: u32 = 6;

fn config() -> ClientConfig {
    ClientConfig {
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(3),
        ..ClientConfig::default()
    }
}

/// Each partition's leader as claimed by the node itself (0: no live node claims it).
fn leaders(c: &Cluster) -> Vec<u64> {
    let mut out = vec![0; PARTITIONS as usize];
    for n in &c.nodes {
        if n.pid.is_none() {
            continue;
        }
        let Ok(client) = Client::connect_node(&n.addr, config()) else {
            continue;
        };
        let Ok(r) = client.describe_cluster(&[TOPIC]) else {
            continue;
        };
        for t in r.topics.iter().filter(|t| t.name == TOPIC) {
            for p in &t.partitions {
                if p.leader == n.id {
                    out[p.partition as usize] = n.id;
                }
            }
        }
    }
    out
}

fn count(leaders: &[u64], n: u64) -> usize {
    leaders.iter().filter(|l| **l == n).count()
}

/// Polls (bounded) until `ok` holds for the leaders; returns them.
fn wait_leaders(
    c: &Cluster,
    what: &str,
    timeout: Duration,
    ok: impl Fn(&[u64]) -> bool,
) -> Vec<u64> {
    let deadline = Instant::now() + timeout;
    loop {
        let l = leaders(c);
        if ok(&l) {
            return l;
        }
        assert!(
            Instant::now() < deadline,
            "{what} within {timeout:?}: {l:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Two partitions led by each of the three nodes.
fn balanced(l: &[u64]) -> bool {
    (1..=3).all(|n| count(l, n) == 2)
}

#[derive(Default)]
struct Ledger {
    acked: BTreeMap<u64, (u32, u64)>,
    failed: u64,
    last_error: Option<String>,
}

/// Sends ids to every partition in rounds of 12 (waiting for each round) until `stop`.
fn run_producer(bootstrap: String, stop: Arc<AtomicBool>, ledger: Arc<Mutex<Ledger>>) {
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
    let mut id = 0u64;
    while !stop.load(Ordering::Acquire) {
        let mut handles = Vec::new();
        for _ in 0..2 * PARTITIONS {
            let p = (id % u64::from(PARTITIONS)) as u32;
            let record = ProducerRecord::new(TOPIC, format!("id-{id}")).partition(p);
            handles.push((id, producer.send_record(record)));
            id += 1;
        }
        for (id, h) in handles {
            let r = h.wait();
            let mut l = ledger.lock().unwrap();
            match r {
                Ok(d) => {
                    l.acked
                        .insert(id, (d.partition, d.offset.expect("acks all")));
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

/// Waits until the ledger has `n` more acknowledgements than now (bounded: 40 s).
fn wait_acks(ledger: &Mutex<Ledger>, n: usize) {
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

/// The high watermark of `partition` on node `addr`.
fn high_watermark(addr: &str, partition: u32) -> u64 {
    let client = Client::connect_node(addr, config()).unwrap();
    let r = client.describe_replicas(TOPIC).unwrap();
    r.partitions
        .iter()
        .find(|p| p.partition == partition)
        .map_or(0, |p| p.high_watermark)
}

/// Every record of `partition` on node `addr` up to `end`: value -> offset (offsets dense).
fn read_all(addr: &str, partition: u32, end: u64) -> HashMap<String, u64> {
    let client = Client::connect_node(addr, config()).unwrap();
    let consumer = Consumer::new(client, ConsumerConfig::default()).unwrap();
    let mut out = HashMap::new();
    let mut offset = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while offset < end {
        assert!(
            Instant::now() < deadline,
            "{addr} p{partition}: read to {end}"
        );
        let f = consumer
            .fetch(TOPIC, partition, offset, Duration::from_millis(200))
            .unwrap();
        for r in f.records {
            assert_eq!(r.offset, offset, "p{partition}: dense offsets");
            let v = String::from_utf8(r.value).unwrap();
            assert!(
                out.insert(v, r.offset).is_none(),
                "p{partition}: a value twice"
            );
            offset += 1;
        }
    }
    out
}

/// Every node reaches the same high watermark per partition and holds every acked id at its
/// acknowledged offset.
fn check_logs(c: &Cluster, ledger: &Ledger) {
    for p in 0..PARTITIONS {
        let deadline = Instant::now() + Duration::from_secs(20);
        let end = loop {
            let hw: Vec<u64> = c.nodes.iter().map(|n| high_watermark(&n.addr, p)).collect();
            if hw.iter().all(|&h| h == hw[0]) {
                break hw[0];
            }
            assert!(Instant::now() < deadline, "p{p}: nodes converge ({hw:?})");
            std::thread::sleep(Duration::from_millis(100));
        };
        for n in &c.nodes {
            let log = read_all(&n.addr, p, end);
            for (id, (q, offset)) in ledger.acked.iter().filter(|(_, (q, _))| *q == p) {
                let v = format!("id-{id}");
                assert_eq!(log.get(&v), Some(offset), "node {} p{q}: {v}", n.id);
            }
        }
    }
}

#[test]
fn leaders_return_to_their_preferred_nodes_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::new(std::path::Path::new(BIN), dir.path(), 3).unwrap();
    c.start_all().unwrap();
    let admin = Client::connect(&c.node(2).addr, config()).unwrap();
    admin
        .create_replicated_topic(
            TOPIC,
            TopicConfig {
                partitions: PARTITIONS,
                ..TopicConfig::default()
            },
            3,
        )
        .unwrap();
    // Whoever won the first elections, leadership settles at two partitions per node.
    let t = Instant::now();
    wait_leaders(
        &c,
        "two leaders per node",
        Duration::from_secs(30),
        balanced,
    );
    eprintln!(
        "leader_balance_e2e: balanced after creation in {:?}",
        t.elapsed()
    );

    let stop = Arc::new(AtomicBool::new(false));
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let producer = {
        let (b, s, l) = (c.bootstrap(), stop.clone(), ledger.clone());
        std::thread::spawn(move || run_producer(b, s, l))
    };
    wait_acks(&ledger, 120);

    // SIGKILL node 1: its partitions' leadership moves to nodes 2 and 3.
    c.kill(1).unwrap();
    wait_leaders(
        &c,
        "every partition led by node 2 or 3",
        Duration::from_secs(20),
        |l| l.iter().all(|n| *n == 2 || *n == 3),
    );
    wait_acks(&ledger, 120);

    // Restart node 1: within a bounded time, two partitions per node again.
    c.spawn(1).unwrap();
    c.wait_links(1, Duration::from_secs(30)).unwrap();
    let t = Instant::now();
    let l = wait_leaders(
        &c,
        "two leaders per node again",
        Duration::from_secs(30),
        balanced,
    );
    eprintln!(
        "leader_balance_e2e: rebalanced {l:?} {:?} after node 1's links came up",
        t.elapsed()
    );
    wait_acks(&ledger, 120);

    stop.store(true, Ordering::Release);
    producer.join().unwrap();
    let ledger = Arc::try_unwrap(ledger).ok().unwrap().into_inner().unwrap();
    assert_eq!(
        ledger.failed, 0,
        "failed deliveries: {:?}",
        ledger.last_error
    );
    check_logs(&c, &ledger);
    eprintln!("leader_balance_e2e: acked {}", ledger.acked.len());
}
