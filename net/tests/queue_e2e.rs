//! Work queues, priorities and request-reply against the real `shardline` binary on 127.0.0.1:
//! - 10k messages over 4 competing consumers with random nacks, plus one consumer that vanishes
//!   holding messages: every message ends acked exactly once or in the dead-letter queue after
//!   `max_deliveries`, and the counts add up (then the DLQ is re-driven and drained);
//! - ack state survives SIGKILL (only unacked messages come back) and a clean restart (nothing
//!   acked comes back);
//! - request-reply round trip, and its timeout;
//! - priority ordering and the queue CLI (create, send, receive, stats, dlq list/redrive).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::collections::{BTreeSet, HashSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shardline_engine::batch::{BatchBuilder, now_us};
use shardline_net::client::{
    Acks, Client, ClientConfig, ClientError, QueueMessage, QueueReceipt, QueueSettings, Requester,
    TopicConfig, all_ok, reply,
};

#[path = "common/spawn.rs"]
mod spawn;

use spawn::ServerProc;

const BIN: &str = env!("CARGO_BIN_EXE_shardline");

fn settings(visibility_ms: u64, max_deliveries: u32, dlq: Option<&str>) -> QueueSettings {
    QueueSettings {
        visibility_timeout_ms: visibility_ms,
        max_deliveries,
        backoff_base_ms: 5,
        backoff_max_ms: 40,
        dead_letter_topic: dlq.map(str::to_string),
        priority_levels: 1,
    }
}

fn produce_values(c: &Client, topic: &str, partition: u32, values: impl Iterator<Item = String>) {
    let mut b = BatchBuilder::new();
    for v in values {
        b.push(now_us(), None, v.into_bytes(), Vec::new());
        if b.len() == 500 {
            let full = std::mem::take(&mut b);
            c.produce(topic, partition, full.build().unwrap(), Acks::Durable)
                .unwrap();
        }
    }
    if !b.is_empty() {
        c.produce(topic, partition, b.build().unwrap(), Acks::Durable)
            .unwrap();
    }
}

fn one() -> TopicConfig {
    TopicConfig {
        partitions: 1,
        ..Default::default()
    }
}

/// xorshift64*: deterministic per seed, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn value_index(m: &QueueMessage) -> u64 {
    std::str::from_utf8(&m.value).unwrap()[1..].parse().unwrap()
}

#[test]
#[allow(
    clippy::too_many_lines,
    reason = "one end-to-end scenario, told in order"
)]
fn competing_consumers_ack_exactly_once_or_dead_letter() {
    const MESSAGES: u64 = 10_000;
    const MAX_DELIVERIES: u32 = 3;
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(dir.path());
    let admin = server.client();
    let config = TopicConfig {
        partitions: 2,
        ..Default::default()
    };
    admin
        .create_queue(
            "work",
            config,
            settings(300, MAX_DELIVERIES, Some("work.dlq")),
        )
        .unwrap();
    for p in 0..2u64 {
        produce_values(
            &admin,
            "work",
            p as u32,
            (0..MESSAGES / 2).map(|i| format!("m{}", i * 2 + p)),
        );
    }

    // The consumer that vanishes: takes 100 messages and disconnects without a word.
    {
        let c = server.client();
        let held = c
            .queue_receive("work", None, 100, None, Duration::from_secs(5))
            .unwrap();
        assert!(!held.is_empty());
        drop(c);
    }

    let seed = now_us().cast_unsigned() | 1;
    eprintln!("seed {seed}");
    let acked: Arc<Mutex<Vec<u64>>> = Arc::default();
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let (addr, acked) = (server.addr.clone(), acked.clone());
            std::thread::spawn(move || {
                let c = Client::connect(&addr, ClientConfig::default()).unwrap();
                let mut rng = Rng(seed.wrapping_add(t * 0x9E37_79B9));
                let mut idle = 0;
                let deadline = Instant::now() + Duration::from_secs(90);
                while idle < 6 && Instant::now() < deadline {
                    let msgs = c
                        .queue_receive("work", None, 64, None, Duration::from_millis(250))
                        .unwrap();
                    if msgs.is_empty() {
                        idle += 1;
                        continue;
                    }
                    idle = 0;
                    let (nack, ack): (Vec<&QueueMessage>, Vec<&QueueMessage>) =
                        msgs.iter().partition(|_| rng.next() % 100 < 30);
                    let receipts: Vec<QueueReceipt> = ack.iter().map(|m| m.receipt()).collect();
                    let codes = c.queue_ack("work", &receipts).unwrap();
                    let mut mine = acked.lock().unwrap();
                    for (m, code) in ack.iter().zip(codes) {
                        if code == 0 {
                            mine.push(value_index(m));
                        }
                    }
                    drop(mine);
                    let receipts: Vec<QueueReceipt> = nack.iter().map(|m| m.receipt()).collect();
                    if !receipts.is_empty() {
                        c.queue_nack("work", &receipts, None).unwrap();
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }

    // Wait (bounded) until the queue is drained: nothing waiting, in flight or dead-pending.
    let deadline = Instant::now() + Duration::from_secs(30);
    let stats = loop {
        let s = admin.queue_stats("work").unwrap();
        if s.iter().all(|p| p.depth == 0 && p.in_flight == 0) {
            break s;
        }
        assert!(Instant::now() < deadline, "queue not drained: {s:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let acked = acked.lock().unwrap().clone();
    let acked_set: HashSet<u64> = acked.iter().copied().collect();
    assert_eq!(acked.len(), acked_set.len(), "a message was acked twice");

    let mut dead = Vec::new();
    for p in 0..2 {
        for m in admin.queue_peek("work.dlq", p, 10_000).unwrap() {
            let count: u32 = std::str::from_utf8(m.header("x-dlq-delivery-count").unwrap())
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(count, MAX_DELIVERIES, "dead after max_deliveries");
            assert!(m.header("x-dlq-reason").is_some());
            assert_eq!(m.header("x-dlq-original-topic"), Some(&b"work"[..]));
            dead.push(value_index(&m));
        }
    }
    let dead_set: HashSet<u64> = dead.iter().copied().collect();
    assert_eq!(dead.len(), dead_set.len(), "dead-lettered twice");
    assert!(acked_set.is_disjoint(&dead_set), "acked and dead-lettered");
    assert_eq!(acked.len() + dead.len(), MESSAGES as usize, "counts add up");
    assert!(
        !dead.is_empty(),
        "30% nacks with 3 deliveries must dead-letter some"
    );
    let acked_total: u64 = stats.iter().map(|s| s.acked).sum();
    let dead_total: u64 = stats.iter().map(|s| s.dead_lettered).sum();
    assert_eq!(
        (acked_total, dead_total),
        (acked.len() as u64, dead.len() as u64)
    );
    assert!(
        stats.iter().map(|s| s.expired).sum::<u64>() >= 100,
        "the vanished lease expired"
    );

    // Re-drive the DLQ and drain it: every dead message comes back once.
    assert_eq!(
        admin.queue_redrive("work.dlq", 100_000).unwrap(),
        dead.len() as u64
    );
    let mut back = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while back.len() < dead.len() {
        assert!(Instant::now() < deadline, "redriven messages missing");
        let msgs = admin
            .queue_receive("work", None, 500, None, Duration::from_millis(200))
            .unwrap();
        let receipts: Vec<QueueReceipt> = msgs.iter().map(|m| m.receipt()).collect();
        if !receipts.is_empty() {
            assert!(all_ok(&admin.queue_ack("work", &receipts).unwrap()));
        }
        back.extend(msgs.iter().map(value_index));
    }
    assert_eq!(back, dead_set.iter().copied().collect::<BTreeSet<_>>());
}

#[test]
fn ack_state_survives_sigkill_and_clean_restart() {
    let dir = tempfile::tempdir().unwrap();
    let acked: BTreeSet<u64>;
    {
        let server = ServerProc::start(dir.path());
        let c = server.client();
        c.create_queue("q", one(), settings(60_000, 10, None))
            .unwrap();
        produce_values(&c, "q", 0, (0..1000).map(|i| format!("m{i}")));
        let got = c
            .queue_receive("q", Some(0), 600, None, Duration::from_secs(5))
            .unwrap();
        assert_eq!(got.len(), 600);
        let even: Vec<&QueueMessage> = got.iter().filter(|m| m.offset % 2 == 0).collect();
        let receipts: Vec<QueueReceipt> = even.iter().map(|m| m.receipt()).collect();
        assert!(all_ok(&c.queue_ack("q", &receipts).unwrap()));
        acked = even.iter().map(|m| m.offset).collect();
        server.stop(libc::SIGKILL);
    }
    // After the crash: exactly the unacked messages come back (the leases died with it).
    let server = ServerProc::start(dir.path());
    let c = server.client();
    let mut seen = BTreeSet::new();
    let got = c
        .queue_receive("q", Some(0), 1000, None, Duration::from_millis(300))
        .unwrap();
    for m in &got {
        assert!(
            !acked.contains(&m.offset),
            "acked offset {} came back",
            m.offset
        );
        assert!(seen.insert(m.offset), "offset {} delivered twice", m.offset);
    }
    // Ack the first 200 of them; leave the rest in flight for the clean restart.
    let ack: Vec<QueueReceipt> = got.iter().take(200).map(|m| m.receipt()).collect();
    assert!(all_ok(&c.queue_ack("q", &ack).unwrap()));
    let second_acked: BTreeSet<u64> = got.iter().take(200).map(|m| m.offset).collect();
    assert_eq!(seen.len(), 1000 - acked.len());
    let s = &c.queue_stats("q").unwrap()[0];
    assert_eq!(s.in_flight, seen.len() as u64 - 200);
    drop(c);
    server.stop(libc::SIGTERM);

    let server = ServerProc::start(dir.path());
    let c = server.client();
    let got = c
        .queue_receive("q", Some(0), 1000, None, Duration::from_millis(300))
        .unwrap();
    let offsets: BTreeSet<u64> = got.iter().map(|m| m.offset).collect();
    let want: BTreeSet<u64> = seen.difference(&second_acked).copied().collect();
    assert_eq!(
        offsets, want,
        "after a clean restart nothing acked comes back"
    );
    assert!(
        got.iter().all(|m| m.attempt >= 2),
        "delivery counts survive a clean restart"
    );
}

#[test]
fn request_reply_round_trip_and_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(dir.path());
    let c = server.client();
    c.create_queue("rpc", one(), settings(5_000, 3, None))
        .unwrap();
    c.create_queue("rpc-idle", one(), settings(5_000, 3, None))
        .unwrap();
    let responder = {
        let addr = server.addr.clone();
        std::thread::spawn(move || {
            let c = Client::connect(&addr, ClientConfig::default()).unwrap();
            let mut answered = 0;
            while answered < 3 {
                for m in c
                    .queue_receive("rpc", None, 10, None, Duration::from_millis(200))
                    .unwrap()
                {
                    let upper = String::from_utf8(m.value.clone()).unwrap().to_uppercase();
                    reply(&c, &m, upper).unwrap();
                    c.queue_ack("rpc", &[m.receipt()]).unwrap();
                    answered += 1;
                }
            }
        })
    };
    let requester = Requester::new(c.clone()).unwrap();
    for word in ["hello", "queue", "reply"] {
        let start = Instant::now();
        let r = requester
            .request("rpc", 0, word, Duration::from_secs(10))
            .unwrap();
        assert_eq!(r.value, word.to_uppercase().as_bytes());
        assert!(start.elapsed() < Duration::from_secs(10));
    }
    responder.join().unwrap();
    // Nobody serves rpc-idle: the request times out, in about the time asked.
    let start = Instant::now();
    let e = requester
        .request("rpc-idle", 0, "anyone?", Duration::from_millis(400))
        .unwrap_err();
    assert!(matches!(e, ClientError::Timeout { .. }), "{e:?}");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(5),
        "{took:?}"
    );
    // A message without reply-to cannot be answered.
    let m = QueueMessage::default();
    assert!(matches!(
        reply(&c, &m, "x"),
        Err(ClientError::InvalidArgument(_))
    ));
}

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

#[test]
fn priority_ordering_and_the_queue_cli() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(dir.path());
    let a = server.addr.as_str();
    let ok = |args: &[&str], stdin: Option<&str>| {
        let (status, out, err) = cli(a, args, stdin);
        assert_eq!(status, 0, "{args:?}: {err}");
        out
    };
    let out = ok(
        &[
            "queue",
            "create",
            "p",
            "--priority-levels",
            "3",
            "--max-deliveries",
            "1",
        ],
        None,
    );
    assert!(out.contains("dead letters to p.dlq"), "{out}");
    let low: String = (0..50).map(|i| format!("low{i}\n")).collect();
    let high: String = (0..50).map(|i| format!("high{i}\n")).collect();
    assert_eq!(
        ok(&["queue", "send", "p", "--priority", "0"], Some(&low)).trim(),
        "50"
    );
    assert_eq!(
        ok(&["queue", "send", "p", "--priority", "2"], Some(&high)).trim(),
        "50"
    );
    let first = ok(&["queue", "receive", "p", "--count", "20"], None);
    let lines: Vec<&str> = first.lines().collect();
    assert_eq!(lines.len(), 20);
    assert_eq!(lines[0], "high0");
    let highs = lines.iter().filter(|l| l.starts_with("high")).count();
    assert!(
        highs >= 17,
        "higher priority first: {highs} of 20: {lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("low")),
        "low is not starved"
    );

    let stats = ok(&["queue", "stats", "p", "--json"], None);
    assert!(
        stats.contains("\"depth\":80") && stats.contains("\"acked\":20"),
        "{stats}"
    );

    // One message leased without ack, then nacked: with max_deliveries 1 it is dead-lettered.
    let held = ok(&["queue", "receive", "p", "--no-ack"], None);
    let receipt = held.split('\t').next().unwrap().to_string();
    let value = held.trim().split('\t').nth(1).unwrap().to_string();
    ok(&["queue", "nack", "p", &receipt], None);
    let deadline = Instant::now() + Duration::from_secs(10);
    let listed = loop {
        let l = ok(&["queue", "dlq", "list", "p.dlq"], None);
        if !l.is_empty() {
            break l;
        }
        assert!(Instant::now() < deadline, "nothing dead-lettered");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(listed.contains("reason=max_deliveries_nacked"), "{listed}");
    assert!(
        listed.contains("deliveries=1") && listed.contains("origin=p/0/"),
        "{listed}"
    );
    assert!(listed.trim().ends_with(&value), "{listed}");
    assert_eq!(
        ok(&["queue", "dlq", "redrive", "p.dlq"], None).trim(),
        "redriven 1"
    );

    // Bad input: one line, non-zero exit.
    let (status, _, err) = cli(a, &["queue", "ack", "p", "nonsense"], None);
    assert_ne!(status, 0);
    assert!(err.contains("PARTITION:OFFSET:ATTEMPT"), "{err}");
    let (status, _, err) = cli(a, &["queue", "stats", "missing"], None);
    assert_ne!(status, 0);
    assert!(
        err.contains("UNKNOWN_TOPIC") || err.contains("unknown topic"),
        "{err}"
    );
}
