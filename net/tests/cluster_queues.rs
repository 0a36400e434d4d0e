//! Work queues on a cluster of three real `shardline serve` processes (issue 14 item 5;
//! docs/replication.md, "Work queues on a cluster"). A queue created on a cluster is
//! replicated (three replicas); an idempotent producer at `all` fills it; a consumer receives
//! and acks through the client, which follows the queue's leader; the leader is SIGKILLed
//! half-way, while the consumer holds leases it never acks, and the consumer continues on the
//! new leader (which hands the held messages out again). At the end every message is done,
//! acked exactly once, and no message is delivered again after its ack was answered.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(unreachable_pub)]
#[path = "../../tests/src/cluster.rs"]
mod cluster;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use cluster::Cluster;
use shardline_net::client::{
    Acks, Client, ClientConfig, Producer, ProducerConfig, ProducerRecord, TopicConfig,
};
use shardline_net::protocol::queue::QueueSettings;

const BIN: &str = env!("CARGO_BIN_EXE_shardline");
const QUEUE: &str = "jobs";
const MESSAGES: usize = 300;
const NONE: u16 = 0;
/// The ack of a message already done (a retried ack whose first answer was lost).
const MESSAGE_DONE: u16 = 227;

fn config() -> ClientConfig {
    ClientConfig {
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(3),
        ..ClientConfig::default()
    }
}

/// The leader of the queue's partition as node `id` describes it (0: none known).
fn leader_on(c: &Cluster, id: u64) -> u64 {
    Client::connect_node(&c.node(id).addr, config())
        .and_then(|cl| cl.describe_cluster(&[QUEUE]))
        .ok()
        .and_then(|r| r.topics.into_iter().find(|t| t.name == QUEUE))
        .and_then(|t| t.partitions.first().map(|p| p.leader))
        .unwrap_or(0)
}

/// Waits (bounded: 30 s) until node `id` knows a leader of the queue's partition.
fn wait_led(c: &Cluster, id: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let l = leader_on(c, id);
        if l != 0 {
            return l;
        }
        assert!(Instant::now() < deadline, "{QUEUE}: no leader within 30 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn produce_all(bootstrap: &str) {
    let client = Client::connect(bootstrap, config()).unwrap();
    let producer = Producer::new(
        client,
        ProducerConfig {
            acks: Acks::All,
            idempotent: true,
            ..ProducerConfig::default()
        },
    )
    .unwrap();
    let handles: Vec<_> = (0..MESSAGES)
        .map(|id| producer.send_record(ProducerRecord::new(QUEUE, format!("id-{id}")).partition(0)))
        .collect();
    for h in handles {
        h.wait().unwrap();
    }
    producer.close().unwrap();
}

/// What the consumer saw.
#[derive(Default)]
struct Seen {
    /// Messages whose ack answered NONE (or MESSAGE_DONE on a retry), with how many times.
    done: BTreeMap<String, u32>,
    deliveries: u64,
    /// Deliveries of a message after its ack was answered (must stay empty).
    after_ack: Vec<String>,
    errors: u32,
}

/// Receives and acks until `until_done` messages are done (bounded: 60 s).
fn consume(client: &Client, seen: &mut Seen, until_done: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.done.len() < until_done {
        assert!(
            Instant::now() < deadline,
            "{} of {until_done} done in 60 s ({} errors)",
            seen.done.len(),
            seen.errors
        );
        let msgs = match client.queue_receive(
            QUEUE,
            Some(0),
            25,
            Some(Duration::from_secs(4)),
            Duration::from_millis(300),
        ) {
            Ok(m) => m,
            Err(e) => {
                seen.errors += 1;
                eprintln!("receive: {e}");
                continue;
            }
        };
        seen.deliveries += msgs.len() as u64;
        for m in &msgs {
            let v = String::from_utf8(m.value.clone()).unwrap();
            if seen.done.contains_key(&v) {
                seen.after_ack.push(v);
            }
        }
        let receipts: Vec<_> = msgs.iter().map(|m| m.receipt()).collect();
        if receipts.is_empty() {
            continue;
        }
        match client.queue_ack(QUEUE, &receipts) {
            Ok(codes) => {
                for (m, code) in msgs.iter().zip(codes) {
                    if code == NONE || code == MESSAGE_DONE {
                        let v = String::from_utf8(m.value.clone()).unwrap();
                        *seen.done.entry(v).or_default() += u32::from(code == NONE);
                    }
                }
            }
            Err(e) => {
                // Not answered: the leases come back (at least once).
                seen.errors += 1;
                eprintln!("ack: {e}");
            }
        }
    }
}

#[test]
fn a_queue_keeps_serving_and_loses_no_ack_when_its_leader_is_sigkilled() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::new(std::path::Path::new(BIN), dir.path(), 3).unwrap();
    c.start_all().unwrap();
    let admin = Client::connect(&c.bootstrap(), config()).unwrap();
    let created = admin
        .create_queue(
            QUEUE,
            TopicConfig {
                partitions: 1,
                ..TopicConfig::default()
            },
            QueueSettings {
                visibility_timeout_ms: 4_000,
                max_deliveries: 100,
                backoff_base_ms: 0,
                backoff_max_ms: 0,
                dead_letter_topic: None,
                priority_levels: 1,
            },
        )
        .unwrap();
    assert_eq!(created.topic.name, QUEUE);
    let first = wait_led(&c, 1);
    let replicas = admin.describe_cluster(&[QUEUE]).unwrap();
    let t = replicas.topics.iter().find(|t| t.name == QUEUE).unwrap();
    assert_eq!(
        t.partitions[0].replicas.len(),
        3,
        "a cluster queue has three replicas"
    );
    produce_all(&c.bootstrap());

    // Half, then SIGKILL the queue's leader (the partition's leader, as described now).
    let consumer = Client::connect(&c.bootstrap(), config()).unwrap();
    let mut seen = Seen::default();
    consume(&consumer, &mut seen, MESSAGES / 2);
    // Leases held, never acked, when the leader dies: the next leader hands them out again.
    let held = consumer
        .queue_receive(QUEUE, Some(0), 10, None, Duration::from_millis(300))
        .unwrap();
    assert_eq!(held.len(), 10);
    seen.deliveries += held.len() as u64;
    let leader = {
        let l = leader_on(&c, 1);
        if l == 0 { first } else { l }
    };
    c.kill(leader).unwrap();
    let killed_at = Instant::now();

    // The same consumer continues on the new leader, to the end.
    consume(&consumer, &mut seen, MESSAGES);
    let failover = killed_at.elapsed();

    let want: BTreeSet<String> = (0..MESSAGES).map(|i| format!("id-{i}")).collect();
    let done: BTreeSet<String> = seen.done.keys().cloned().collect();
    assert_eq!(done, want, "every message is done");
    assert!(
        seen.after_ack.is_empty(),
        "delivered again after an answered ack: {:?}",
        seen.after_ack
    );
    assert!(
        seen.deliveries >= (MESSAGES + held.len()) as u64,
        "the held leases were delivered again"
    );
    let twice: Vec<_> = seen.done.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "acked NONE twice: {twice:?}");
    // Nothing is left for anyone.
    let left = consumer
        .queue_receive(QUEUE, Some(0), 10, None, Duration::from_millis(300))
        .unwrap();
    assert!(left.is_empty(), "{} messages left", left.len());
    // Any-partition receives and the stats follow the leader too.
    let any = consumer
        .queue_receive(QUEUE, None, 10, None, Duration::from_millis(100))
        .unwrap();
    assert!(any.is_empty());
    let stats = consumer.queue_stats(QUEUE).unwrap();
    assert_eq!((stats[0].depth, stats[0].in_flight), (0, 0), "{stats:?}");
    assert!(
        stats[0].acked > 0,
        "the new leader counts its acks: {stats:?}"
    );
    // The CLI follows the leader through the bootstrap list (the dead node included).
    let out = std::process::Command::new(BIN)
        .args(["--addr", &c.bootstrap(), "queue", "stats", QUEUE, "--json"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "queue stats: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("\"depth\":0,"), "{text}");
    c.kill_all();
    eprintln!(
        "cluster queues: {} deliveries for {MESSAGES} messages, {} errors, second half {failover:?}, total {:?}",
        seen.deliveries,
        seen.errors,
        started.elapsed()
    );
}
