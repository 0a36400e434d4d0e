//! The real `shardline` binary on 127.0.0.1 with an ephemeral port and a temp data dir:
//! 100k messages from several producer threads come back complete and in per-partition order
//! through the client library; the CLI's produce/consume round trip; CLI errors are one line
//! with a non-zero exit; a SIGTERM'd server exits 0 and keeps every acknowledged message.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shardline_net::client::{
    Client, ClientConfig, Consumer, ConsumerConfig, Producer, ProducerConfig, TopicConfig,
};
use shardline_net::protocol::OffsetSpec;

#[path = "common/spawn.rs"]
mod spawn;

use spawn::ServerProc;

const BIN: &str = env!("CARGO_BIN_EXE_shardline");

fn cli(addr: &str, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    let mut child = Command::new(BIN)
        .arg("--addr")
        .arg(addr)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// Every record of every partition, read with subscriptions: partition -> [(offset, value)].
fn consume_all(
    addr: &str,
    topic: &str,
    partitions: u32,
    expect: usize,
) -> BTreeMap<u32, Vec<(u64, Vec<u8>)>> {
    let client = Client::connect(addr, ClientConfig::default()).unwrap();
    let mut consumer = Consumer::new(client, ConsumerConfig::default()).unwrap();
    for p in 0..partitions {
        consumer.subscribe(topic, p, OffsetSpec::Earliest).unwrap();
    }
    let mut out: BTreeMap<u32, Vec<(u64, Vec<u8>)>> = BTreeMap::new();
    let mut n = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while n < expect {
        let counts: Vec<(u32, usize, Option<u64>)> = out
            .iter()
            .map(|(p, v)| (*p, v.len(), v.last().map(|x| x.0)))
            .collect();
        assert!(
            Instant::now() < deadline,
            "consumed only {n} of {expect}: {counts:?}"
        );
        if let Some(r) = consumer.poll(Duration::from_millis(500)).unwrap() {
            out.entry(r.partition)
                .or_default()
                .push((r.offset, r.value));
            n += 1;
        }
    }
    out
}

#[test]
fn many_producers_100k_messages_come_back_in_partition_order_and_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(dir.path());
    let client = Client::connect(&server.addr, ClientConfig::default()).unwrap();
    client
        .create_topic(
            "e2e",
            TopicConfig {
                partitions: 4,
                ..TopicConfig::default()
            },
        )
        .unwrap();
    const PRODUCERS: usize = 4;
    const PER_PRODUCER: usize = 25_000;
    let threads: Vec<_> = (0..PRODUCERS)
        .map(|t| {
            let addr = server.addr.clone();
            std::thread::spawn(move || {
                let client = Client::connect(&addr, ClientConfig::default()).unwrap();
                let producer = Producer::new(client, ProducerConfig::default()).unwrap();
                let handles: Vec<_> = (0..PER_PRODUCER)
                    .map(|i| {
                        // Keyed by producer: all of one producer's messages share a partition
                        // per key, so their relative order is checkable.
                        let key = format!("k{t}-{}", i % 8);
                        producer.send(
                            "e2e",
                            Some(key.as_bytes()),
                            format!("{t}:{}:{i}", i % 8),
                            Vec::new(),
                        )
                    })
                    .collect();
                for h in handles {
                    h.wait().unwrap();
                }
                producer.close().unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let check = |parts: &BTreeMap<u32, Vec<(u64, Vec<u8>)>>| {
        let mut total = 0;
        let mut last_seq: HashMap<String, usize> = HashMap::new();
        for recs in parts.values() {
            for (i, (offset, v)) in recs.iter().enumerate() {
                assert_eq!(*offset, i as u64, "offsets contiguous from 0");
                let s = String::from_utf8(v.clone()).unwrap();
                let mut f = s.split(':');
                let key = format!("{}:{}", f.next().unwrap(), f.next().unwrap());
                let seq: usize = f.next().unwrap().parse().unwrap();
                if let Some(prev) = last_seq.insert(key, seq) {
                    assert!(seq > prev, "per-key order kept: {seq} after {prev}");
                }
                total += 1;
            }
        }
        assert_eq!(total, PRODUCERS * PER_PRODUCER);
    };
    let before = consume_all(&server.addr, "e2e", 4, PRODUCERS * PER_PRODUCER);
    check(&before);
    drop(client);
    assert!(
        server.stop(libc::SIGTERM).success(),
        "graceful shutdown exits 0"
    );

    let server = ServerProc::start(dir.path());
    let after = consume_all(&server.addr, "e2e", 4, PRODUCERS * PER_PRODUCER);
    assert_eq!(
        before, after,
        "everything acknowledged is there after a restart"
    );
    assert!(server.stop(libc::SIGTERM).success());
}

#[test]
fn cli_produce_consume_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(dir.path());
    let a = &server.addr;
    let (code, _, err) = cli(a, &["topic", "create", "lines", "--partitions", "1"], None);
    assert_eq!(code, 0, "{err}");
    let input: String = (0..1000).map(|i| format!("line {i}\n")).collect();
    let (code, out, err) = cli(a, &["produce", "lines", "--acks", "durable"], Some(&input));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "1000");
    let (code, out, err) = cli(
        a,
        &[
            "consume",
            "lines",
            "--from",
            "earliest",
            "--count",
            "1000",
            "--timeout-ms",
            "20000",
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, input);
    let (code, out, _) = cli(a, &["topic", "list"], None);
    assert_eq!(code, 0);
    assert!(out.contains("lines"));
    // Errors: unknown topic, bad flags, unreachable server.
    let (code, _, err) = cli(a, &["produce", "nope"], Some("x\n"));
    assert_ne!(code, 0);
    assert_eq!(err.trim().lines().count(), 1, "one-line error: {err}");
    let (code, _, _) = cli(a, &["topic", "create", "x", "--partitions", "many"], None);
    assert_ne!(code, 0);
    let (code, _, err) = cli("127.0.0.1:1", &["topic", "list"], None);
    assert_ne!(code, 0);
    assert!(!err.is_empty());
    assert!(server.stop(libc::SIGTERM).success());
}
