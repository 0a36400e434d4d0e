//! Messaging semantics against the real `shardline` binary on 127.0.0.1 (ephemeral ports, temp
//! data dirs, processes killed by pid):
//! - a consumer group of three `shardline consume --group` processes, one SIGKILLed mid-stream:
//!   its partitions move within the session timeout, the group sees every message at least
//!   once with no gap, and each member sees each partition in order;
//! - an idempotent producer whose connections are cut after the request reached the server
//!   (the ack is lost) retries, and the log holds each message exactly once;
//! - committed offsets and idempotent-producer state survive SIGKILL of the server.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shardline_engine::batch::{BatchBuilder, ProducerInfo};
use shardline_net::client::{
    Acks, Client, ClientConfig, CommitOffset, Consumer, ConsumerConfig, GroupConsumer,
    GroupConsumerConfig, Producer, ProducerConfig, ProducerRecord, TopicConfig, code,
};
use shardline_net::protocol::{ApiKey, OffsetSpec};

#[path = "common/spawn.rs"]
mod spawn;

use spawn::ServerProc;

const BIN: &str = env!("CARGO_BIN_EXE_shardline");

fn client(addr: &str) -> Client {
    Client::connect(addr, ClientConfig::default()).unwrap()
}

/// A `shardline consume --group` process whose stdout lines are collected by a thread.
struct Member {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Member {
    fn start(addr: &str, topic: &str, group: &str, session_timeout_ms: u32) -> Member {
        let mut child = Command::new(BIN)
            .args([
                "--addr", addr, "consume", topic, "--group", group, "--from", "earliest",
            ])
            .arg("--session-timeout-ms")
            .arg(session_timeout_ms.to_string())
            .arg("--timeout-ms")
            .arg("60000")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().unwrap();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                sink.lock().unwrap().push(line);
            }
        });
        Member { child, lines }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `"p{partition}-{seq}"` -> (partition, seq).
fn parse(line: &str) -> (u32, u64) {
    let (p, s) = line.trim_start_matches('p').split_once('-').unwrap();
    (p.parse().unwrap(), s.parse().unwrap())
}

#[test]
#[allow(
    clippy::too_many_lines,
    reason = "one end-to-end scenario, told in order"
)]
fn group_rebalance_after_sigkill_sees_every_message_in_partition_order() {
    const PARTITIONS: u32 = 6;
    const PER_PARTITION: u64 = 1500;
    const SESSION_MS: u32 = 1500;
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(dir.path());
    let c = client(&server.addr);
    c.create_topic(
        "orders",
        TopicConfig {
            partitions: PARTITIONS,
            ..Default::default()
        },
    )
    .unwrap();
    let members: Vec<Member> = (0..3)
        .map(|_| Member::start(&server.addr, "orders", "g", SESSION_MS))
        .collect();
    // Wait (bounded) for the stable three-way assignment before producing: then no member
    // ever gives up a partition and takes it back later, so each member's view of a
    // partition must be gap-free and in order.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // (INVALID_GROUP until the first member has joined.)
        let d = c.describe_group("g").unwrap_or_default();
        let owned: BTreeSet<u32> = d.members.iter().flat_map(|m| m.owned.clone()).collect();
        if d.members.len() == 3
            && owned.len() == PARTITIONS as usize
            && d.members.iter().all(|m| m.owned.len() == 2)
        {
            break;
        }
        assert!(Instant::now() < deadline, "no stable assignment: {d:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Produce in the background, paced, so consumption is mid-stream when the kill comes.
    let producer_client = c.clone();
    let producing = std::thread::spawn(move || {
        let config = ProducerConfig {
            acks: Acks::Leader,
            ..ProducerConfig::default()
        };
        let producer = Producer::new(producer_client, config).unwrap();
        for seq in 0..PER_PARTITION {
            for p in 0..PARTITIONS {
                let r = ProducerRecord::new("orders", format!("p{p}-{seq}")).partition(p);
                let _ = producer.send_record(r);
            }
            if seq % 100 == 0 {
                std::thread::sleep(Duration::from_millis(30));
            }
        }
        producer.close().unwrap();
    });
    // Wait (bounded) until every member consumes, then SIGKILL one.
    let deadline = Instant::now() + Duration::from_secs(30);
    while members.iter().any(|m| m.lines().len() < 50) {
        assert!(
            Instant::now() < deadline,
            "members did not all start consuming"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut members = members;
    let mut victim = members.remove(1);
    victim.child.kill().unwrap();
    victim.child.wait().unwrap();
    let killed_at = Instant::now();
    // Its partitions move: two live members own every partition between them.
    let moved_after = loop {
        let d = c.describe_group("g").unwrap();
        let owned: BTreeSet<u32> = d.members.iter().flat_map(|m| m.owned.clone()).collect();
        if d.members.len() == 2 && owned.len() == PARTITIONS as usize {
            break killed_at.elapsed();
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(20),
            "partitions never moved: {d:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let bound = Duration::from_millis(u64::from(SESSION_MS) * 4 / 3 + 1500);
    assert!(
        moved_after <= bound,
        "moved after {moved_after:?}, bound {bound:?}"
    );
    producing.join().unwrap();
    // Every message at least once (the victim's output counts: it printed before dying).
    let want = PARTITIONS as usize * PER_PARTITION as usize;
    let deadline = Instant::now() + Duration::from_secs(60);
    let seen = loop {
        let mut seen: BTreeSet<(u32, u64)> = BTreeSet::new();
        for m in members.iter().chain(std::iter::once(&victim)) {
            seen.extend(m.lines().iter().map(|l| parse(l)));
        }
        if seen.len() >= want {
            break seen;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {want} messages seen",
            seen.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    for p in 0..PARTITIONS {
        for s in 0..PER_PARTITION {
            assert!(seen.contains(&(p, s)), "gap: p{p}-{s} never consumed");
        }
    }
    // Per-partition order to each member: within one member a partition's records follow
    // each other one by one (from a stable assignment, one death only moves partitions to
    // members that never had them).
    for m in members.iter().chain(std::iter::once(&victim)) {
        let mut last: BTreeMap<u32, u64> = BTreeMap::new();
        for l in m.lines() {
            let (p, s) = parse(&l);
            if let Some(prev) = last.insert(p, s) {
                assert_eq!(s, prev + 1, "partition {p} out of order: {prev} then {s}");
            }
        }
    }
}

/// A TCP proxy that forwards everything, except that it cuts the connection (both ways) instead
/// of forwarding a Produce *response* while `cuts` is above zero and the response's number is a
/// multiple of `every`: the server has appended the batch, the producer never hears of it.
fn cutting_proxy(upstream: String, every: u32, cuts: Arc<AtomicU32>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let responses = Arc::new(AtomicU32::new(0));
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(down) = conn else { return };
            let Ok(up) = TcpStream::connect(&upstream) else {
                return;
            };
            let (down2, up2) = (down.try_clone().unwrap(), up.try_clone().unwrap());
            std::thread::spawn(move || pump_raw(down2, up2));
            let (cuts, responses) = (cuts.clone(), responses.clone());
            std::thread::spawn(move || pump_frames(up, down, every, &cuts, &responses));
        }
    });
    addr
}

fn pump_raw(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 64 << 10];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 || to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

fn pump_frames(
    mut from: TcpStream,
    mut to: TcpStream,
    every: u32,
    cuts: &AtomicU32,
    n: &AtomicU32,
) {
    let mut header = [0u8; 16];
    while from.read_exact(&mut header).is_ok() {
        let len = u32::from_le_bytes(header[0..4].try_into().unwrap()) as usize;
        let api = u16::from_le_bytes(header[4..6].try_into().unwrap());
        let mut body = vec![0u8; len.div_ceil(16) * 16];
        if from.read_exact(&mut body).is_err() {
            break;
        }
        if api == ApiKey::Produce.as_u16() {
            let i = n.fetch_add(1, Ordering::AcqRel) + 1;
            if i.is_multiple_of(every)
                && cuts
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| c.checked_sub(1))
                    .is_ok()
            {
                break;
            }
        }
        if to.write_all(&header).is_err() || to.write_all(&body).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

#[test]
fn idempotent_producer_whose_acks_are_lost_writes_each_message_once() {
    const MESSAGES: u64 = 3000;
    const WAVES: u64 = 30;
    const CUTS: u32 = 5;
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(dir.path());
    let c = client(&server.addr);
    c.create_topic(
        "t",
        TopicConfig {
            partitions: 2,
            ..Default::default()
        },
    )
    .unwrap();
    let cuts = Arc::new(AtomicU32::new(CUTS));
    let proxy = cutting_proxy(server.addr.clone(), 3, cuts.clone());
    // Through the proxy only (no direct shard connections), so every ack can be cut.
    let via_proxy = Client::connect(
        &proxy,
        ClientConfig {
            shard_aware: false,
            ..ClientConfig::default()
        },
    )
    .unwrap();
    let config = ProducerConfig {
        idempotent: true,
        retries_max: 20,
        linger: Duration::from_millis(1),
        batch_bytes_max: 4096,
        ..ProducerConfig::default()
    };
    let producer = Producer::new(via_proxy, config).unwrap();
    // In waves, each awaited: at least one Produce response per wave, so the proxy gets to
    // make all its cuts whatever the batching.
    for wave in 0..WAVES {
        let handles: Vec<_> = (wave * MESSAGES / WAVES..(wave + 1) * MESSAGES / WAVES)
            .map(|i| producer.send("t", Some(&i.to_le_bytes()), format!("m-{i}"), Vec::new()))
            .collect();
        for h in handles {
            h.wait().expect("every send succeeds after retries");
        }
    }
    producer.close().unwrap();
    assert_eq!(cuts.load(Ordering::Acquire), 0, "the proxy cut {CUTS} acks");
    // Read everything back directly: each message exactly once.
    let mut consumer = Consumer::new(c.clone(), ConsumerConfig::default()).unwrap();
    let mut expect = 0;
    for p in 0..2 {
        expect += c.list_offsets("t", p, OffsetSpec::Latest).unwrap();
        consumer.subscribe("t", p, OffsetSpec::Earliest).unwrap();
    }
    assert_eq!(
        expect, MESSAGES,
        "the log holds exactly one copy of each message"
    );
    let mut counts: BTreeMap<String, u32> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while counts.values().sum::<u32>() < MESSAGES as u32 {
        assert!(Instant::now() < deadline);
        if let Some(r) = consumer.poll(Duration::from_millis(200)).unwrap() {
            *counts
                .entry(String::from_utf8(r.value).unwrap())
                .or_default() += 1;
        }
    }
    assert_eq!(counts.len(), MESSAGES as usize);
    assert!(counts.values().all(|n| *n == 1));
}

fn stamped(id: (u64, u16), seq: u32, n: u32) -> bytes::Bytes {
    let mut b = BatchBuilder::new().producer(ProducerInfo {
        producer_id: id.0,
        producer_epoch: id.1,
        base_sequence: seq,
    });
    for i in 0..n {
        b.push_value(format!("v{}", seq + i));
    }
    b.build().unwrap()
}

#[test]
fn offsets_and_producer_state_survive_sigkill_of_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let (id, first) = {
        let server = ServerProc::start(dir.path());
        let c = client(&server.addr);
        c.create_topic(
            "t",
            TopicConfig {
                partitions: 3,
                ..Default::default()
            },
        )
        .unwrap();
        let pid = c.init_producer(None).unwrap();
        let id = (pid.producer_id, pid.epoch);
        let first = c
            .produce("t", 1, stamped(id, 0, 3), Acks::Durable)
            .unwrap()
            .unwrap();
        c.produce("t", 1, stamped(id, 3, 3), Acks::Durable).unwrap();
        // A group member consumes and commits (the CLI's path: a GroupConsumer).
        let mut g = GroupConsumer::new(
            c.clone(),
            GroupConsumerConfig {
                reset: OffsetSpec::Earliest,
                auto_commit: false,
                ..GroupConsumerConfig::new("g", "t")
            },
        )
        .unwrap();
        let mut got = 0;
        let deadline = Instant::now() + Duration::from_secs(20);
        while got < 6 {
            assert!(Instant::now() < deadline);
            if g.poll(Duration::from_millis(100)).unwrap().is_some() {
                got += 1;
            }
        }
        g.commit().unwrap();
        // A standalone commit is refused while the group has a live member.
        let refused = c
            .commit_offsets(
                "g",
                "t",
                "",
                0,
                vec![CommitOffset {
                    partition: 0,
                    offset: 1,
                    metadata: String::new(),
                }],
            )
            .unwrap_err();
        assert_eq!(refused.code(), Some(code::INVALID_GROUP));
        server.stop(libc::SIGKILL);
        (id, first)
    };
    let server = ServerProc::start(dir.path());
    let c = client(&server.addr);
    let committed: Vec<(u32, u64)> = c
        .fetch_offsets("g", "t")
        .unwrap()
        .iter()
        .map(|o| (o.partition, o.offset))
        .collect();
    // Every owned partition's position was committed: 0 where nothing was consumed.
    assert_eq!(committed, vec![(0, 0), (1, 6), (2, 0)]);
    // The producer's retry of its first batch is recognised after the crash.
    let again = c
        .produce("t", 1, stamped(id, 0, 3), Acks::Durable)
        .unwrap()
        .unwrap();
    assert_eq!(
        (again.base_offset, again.last_offset),
        (first.base_offset, first.last_offset)
    );
    let gap = c
        .produce("t", 1, stamped(id, 9, 1), Acks::Durable)
        .unwrap_err();
    assert_eq!(gap.code(), Some(code::OUT_OF_ORDER_SEQUENCE));
    assert!(!gap.is_retriable());
    let next = c
        .produce("t", 1, stamped(id, 6, 1), Acks::Durable)
        .unwrap()
        .unwrap();
    assert_eq!(next.base_offset, 6);
    // A restarted member resumes at the committed offset.
    let mut g = GroupConsumer::new(c.clone(), GroupConsumerConfig::new("g", "t")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let r = loop {
        if let Some(r) = g.poll(Duration::from_millis(100)).unwrap() {
            break r;
        }
        assert!(Instant::now() < deadline, "nothing consumed after restart");
    };
    assert_eq!((r.partition, r.offset), (1, 6));
    g.close().unwrap();
}

/// Polls `n` records (bounded in time).
fn poll_n(g: &mut GroupConsumer, n: usize) -> Vec<shardline_net::client::ConsumerRecord> {
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while out.len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} records",
            out.len()
        );
        if let Some(r) = g.poll(Duration::from_millis(100)).unwrap() {
            out.push(r);
        }
    }
    out
}

fn produce_values(c: &Client, topic: &str, values: impl Iterator<Item = String>) {
    let producer = Producer::new(c.clone(), ProducerConfig::default()).unwrap();
    let handles: Vec<_> = values
        .map(|v| {
            let id = shardline_net::client::new_message_id();
            producer.send_record(
                ProducerRecord::new(topic, v)
                    .message_id(id)
                    .content_type("text/plain"),
            )
        })
        .collect();
    for h in handles {
        h.wait().unwrap();
    }
    producer.close().unwrap();
}

#[test]
fn pub_sub_groups_each_get_everything_resume_durably_and_ephemeral_starts_at_the_tail() {
    use shardline_net::client::Guarantee;
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(dir.path());
    let c = client(&server.addr);
    c.create_topic(
        "news",
        TopicConfig {
            partitions: 3,
            ..Default::default()
        },
    )
    .unwrap();
    produce_values(&c, "news", (0..300).map(|i| format!("before-{i}")));
    // Ephemeral subscriber: from the tail, no state on the server.
    let mut ephemeral = Consumer::new(c.clone(), ConsumerConfig::default()).unwrap();
    for p in 0..3 {
        ephemeral.subscribe("news", p, OffsetSpec::Latest).unwrap();
    }
    let group = |name: &str, guarantee| {
        GroupConsumer::new(
            c.clone(),
            GroupConsumerConfig {
                reset: OffsetSpec::Earliest,
                guarantee,
                ..GroupConsumerConfig::new(name, "news")
            },
        )
        .unwrap()
    };
    let mut a = group("a", Guarantee::AtLeastOnce);
    let mut b = group("b", Guarantee::EffectivelyOnce { window: 10_000 });
    produce_values(&c, "news", (0..300).map(|i| format!("after-{i}")));
    for g in [&mut a, &mut b] {
        let got: BTreeSet<Vec<u8>> = poll_n(g, 600).into_iter().map(|r| r.value).collect();
        assert_eq!(got.len(), 600, "each group gets every message");
    }
    let mut tail = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while tail.len() < 300 {
        assert!(Instant::now() < deadline);
        if let Some(r) = ephemeral.poll(Duration::from_millis(100)).unwrap() {
            assert!(
                r.value.starts_with(b"after-"),
                "the ephemeral subscriber starts at the tail"
            );
            assert_eq!(r.content_type(), Some("text/plain"));
            assert_eq!(r.header("message-id").map(<[u8]>::len), Some(32));
            tail.insert(r.value);
        }
    }
    // Effectively once: a replay from the start delivers nothing the member already had.
    b.seek(0, OffsetSpec::Earliest).unwrap();
    assert!(b.poll(Duration::from_millis(500)).unwrap().is_none());
    // Durable: group a resumes after its last commit (close commits), sees only what is new.
    a.close().unwrap();
    produce_values(&c, "news", (0..30).map(|i| format!("later-{i}")));
    let mut a = group("a", Guarantee::AtMostOnce);
    let later = poll_n(&mut a, 30);
    assert!(later.iter().all(|r| r.value.starts_with(b"later-")));
    // At most once: the last record's position was committed before it was handed out.
    let last = later.last().unwrap();
    let committed = c.fetch_offsets("a", "news").unwrap();
    let at = committed
        .iter()
        .find(|o| o.partition == last.partition)
        .unwrap();
    assert_eq!(at.offset, last.offset + 1);
    assert!(
        a.poll(Duration::from_millis(300)).unwrap().is_none(),
        "nothing more"
    );
}

/// Runs the CLI to completion: (exit code, stdout lines).
fn cli(addr: &str, args: &[&str], stdin: &str) -> (i32, Vec<String>) {
    let mut child = Command::new(BIN)
        .args(["--addr", addr])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    (out.status.code().unwrap_or(-1), lines)
}

#[test]
fn cli_group_consumer_resumes_where_the_last_run_committed() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(dir.path());
    let c = client(&server.addr);
    c.create_topic(
        "q",
        TopicConfig {
            partitions: 1,
            ..Default::default()
        },
    )
    .unwrap();
    let input: String = (0..10).map(|i| format!("line-{i}\n")).collect();
    let (code, out) = cli(&server.addr, &["produce", "q", "--idempotent"], &input);
    assert_eq!((code, out), (0, vec!["10".to_string()]));
    let run = |count: &str| {
        cli(
            &server.addr,
            &[
                "consume",
                "q",
                "--group",
                "g",
                "--count",
                count,
                "--timeout-ms",
                "20000",
            ],
            "",
        )
    };
    let (code, first) = run("4");
    assert_eq!(code, 0);
    assert_eq!(
        first,
        (0..4).map(|i| format!("line-{i}")).collect::<Vec<_>>()
    );
    let (code, second) = run("6");
    assert_eq!(code, 0);
    assert_eq!(
        second,
        (4..10).map(|i| format!("line-{i}")).collect::<Vec<_>>()
    );
    let committed = c.fetch_offsets("g", "q").unwrap();
    assert_eq!(
        committed
            .iter()
            .map(|o| (o.partition, o.offset))
            .collect::<Vec<_>>(),
        vec![(0, 10)]
    );
}
