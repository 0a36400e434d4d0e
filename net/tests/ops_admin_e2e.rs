//! Consumer-group and work-queue operations against the real `shardline` binary on 127.0.0.1
//! (docs/operations.md), `/metrics` parsed with `prometheus-parse`:
//! - `shardline_group_lag` equals log end minus committed offset, per partition, for a group
//!   that consumed with the CLI; it moves by exactly what is produced and committed later;
//! - `group reset-offsets` is refused while the group has a live member, then works to
//!   earliest, an offset, a timestamp and latest; the offsets survive SIGKILL, and a group
//!   consumer resumes exactly at them; `group list` and `group describe` show the group;
//! - the queue families equal the figures of a scripted sequence (receive without ack, nack,
//!   last delivery nacked into the DLQ); `queue purge` empties the queue (in-flight leases are
//!   refused afterwards), the purge survives SIGKILL, and later messages are delivered.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use shardline_engine::batch::batch_of_values;
use shardline_net::client::{
    Acks, Client, ClientConfig, CommitOffset, OffsetSpec, QueueSettings, TopicConfig, code,
};

#[path = "common/spawn.rs"]
mod spawn;

const BIN: &str = env!("CARGO_BIN_EXE_shardline");

/// The server process; killed (SIGKILL) when dropped.
struct Server {
    child: Child,
    addr: String,
    metrics: String,
}

impl Server {
    fn start(dir: &std::path::Path) -> Server {
        let (child, addr, metrics) = spawn::serve_with_metrics(BIN, dir);
        Server {
            child,
            addr,
            metrics,
        }
    }

    fn client(&self) -> Client {
        Client::connect(&self.addr, ClientConfig::default()).unwrap()
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(["--addr", &self.addr])
            .args(args)
            .output()
            .unwrap()
    }

    /// Runs a CLI command that must succeed; returns its stdout.
    fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {stderr}");
        String::from_utf8(out.stdout).unwrap()
    }

    /// Every sample of one scrape (histograms left out).
    fn scrape(&self) -> Vec<prometheus_parse::Sample> {
        let mut s = TcpStream::connect(&self.metrics).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let lines = body.lines().map(|l| Ok(l.to_string()));
        prometheus_parse::Scrape::parse(lines).unwrap().samples
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of the sample of `metric` whose labels are exactly `labels` (`None`: absent).
fn value(
    samples: &[prometheus_parse::Sample],
    metric: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.metric == metric
                && s.labels.len() == labels.len()
                && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
        })
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

fn produce(c: &Client, topic: &str, partition: u32, values: impl Iterator<Item = String>) {
    let batch = batch_of_values(values).unwrap();
    c.produce(topic, partition, batch, Acks::Durable).unwrap();
}

fn committed(c: &Client, group: &str, topic: &str) -> Vec<(u32, u64)> {
    c.fetch_offsets(group, topic)
        .unwrap()
        .into_iter()
        .map(|o| (o.partition, o.offset))
        .collect()
}

/// Checks `shardline_group_lag` and `_committed_offset` of every partition against the
/// committed offsets and log ends asked separately; returns the total lag.
fn check_lag(server: &Server, c: &Client, group: &str, topic: &str) -> u64 {
    let samples = server.scrape();
    let mut total = 0;
    for (p, offset) in committed(c, group, topic) {
        let end = c.list_offsets(topic, p, OffsetSpec::Latest).unwrap();
        let part = p.to_string();
        let labels = [
            ("group", group),
            ("topic", topic),
            ("partition", part.as_str()),
        ];
        let lag = value(&samples, "shardline_group_lag", &labels);
        assert_eq!(lag, Some((end - offset) as f64), "lag of {topic}/{p}");
        let at = value(&samples, "shardline_group_committed_offset", &labels);
        assert_eq!(at, Some(offset as f64));
        total += end - offset;
    }
    total
}

#[test]
#[allow(
    clippy::too_many_lines,
    reason = "one end-to-end scenario, told in order"
)]
fn group_lag_reset_offsets_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path());
    let c = server.client();
    let topic = "lag";
    c.create_topic(
        topic,
        TopicConfig {
            partitions: 2,
            ..TopicConfig::default()
        },
    )
    .unwrap();
    for p in 0..2 {
        produce(&c, topic, p, (0..20).map(|i| format!("p{p}-{i}")));
    }
    // A point in time strictly between the two rounds of batches: wait for the clock to pass
    // the first round's timestamps, take it, and wait for the clock to pass it in turn.
    let now_ms = || shardline_engine::batch::now_us() / 1000;
    let after = |t: i64| {
        while now_ms() <= t {
            std::thread::yield_now();
        }
        now_ms()
    };
    let middle_ms = after(now_ms());
    after(middle_ms);
    produce(&c, topic, 0, (20..25).map(|i| format!("p0-{i}")));

    // A real group member consumes 30 of the 45 messages and commits what it printed.
    let args = ["consume", topic, "--group", "g", "--count", "30"];
    let printed = server.cli_ok(&[&args[..], &["--timeout-ms", "20000"]].concat());
    assert_eq!(printed.lines().count(), 30);
    let offsets = committed(&c, "g", topic);
    assert_eq!(offsets.iter().map(|o| o.1).sum::<u64>(), 30, "{offsets:?}");
    assert_eq!(check_lag(&server, &c, "g", topic), 45 - 30);

    // More produced: the lag grows by exactly that; a commit shrinks it.
    produce(&c, topic, 1, (20..27).map(|i| format!("p1-{i}")));
    assert_eq!(check_lag(&server, &c, "g", topic), 45 + 7 - 30);
    let commit = CommitOffset {
        partition: 1,
        offset: 27,
        metadata: String::new(),
    };
    c.commit_offsets("g", topic, "", 0, vec![commit]).unwrap();
    let p0 = offsets.iter().find(|o| o.0 == 0).unwrap().1;
    assert_eq!(check_lag(&server, &c, "g", topic), 25 - p0);

    // Refused while a member is live, with the operations code and a clear message.
    let member = c.join_group("g", topic, 30_000).unwrap();
    let refused = server.cli(&[
        "group",
        "reset-offsets",
        "g",
        "--topic",
        topic,
        "--to-earliest",
    ]);
    assert_eq!(refused.status.code(), Some(1));
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("live members"), "{why}");
    let err = c
        .reset_offsets(
            "g",
            topic,
            None,
            shardline_net::protocol::OffsetResetTarget::Latest,
            false,
        )
        .unwrap_err();
    assert_eq!(err.code(), Some(code::GROUP_NOT_EMPTY), "{err}");
    let described = server.cli_ok(&["group", "describe", "g"]);
    assert!(described.contains(&member.member_id), "{described}");
    c.leave_group("g", &member.member_id).unwrap();

    server.cli_ok(&[
        "group",
        "reset-offsets",
        "g",
        "--topic",
        topic,
        "--to-earliest",
    ]);
    assert_eq!(committed(&c, "g", topic), vec![(0, 0), (1, 0)]);
    server.cli_ok(&[
        "group",
        "reset-offsets",
        "g",
        "--topic",
        topic,
        "--to-latest",
    ]);
    assert_eq!(committed(&c, "g", topic), vec![(0, 25), (1, 27)]);
    let out = server.cli_ok(&[
        "group",
        "reset-offsets",
        "g",
        "--topic",
        topic,
        "--partition",
        "1",
        "--to-offset",
        "12",
    ]);
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().eq(["1", "27", "12"])),
        "{out}"
    );
    let ms = middle_ms.to_string();
    server.cli_ok(&[
        "group",
        "reset-offsets",
        "g",
        "--topic",
        topic,
        "--partition",
        "0",
        "--to-timestamp",
        &ms,
    ]);
    let dry = server.cli_ok(&[
        "group",
        "reset-offsets",
        "g",
        "--topic",
        topic,
        "--to-earliest",
        "--dry-run",
    ]);
    assert!(dry.contains("dry run"), "{dry}");
    assert_eq!(committed(&c, "g", topic), vec![(0, 20), (1, 12)]);
    let listed = server.cli_ok(&["group", "list"]);
    let row = listed.lines().find(|l| l.starts_with("g ")).expect(&listed);
    assert_eq!(
        row.split_whitespace().take(3).collect::<Vec<_>>(),
        ["g", topic, "0"]
    );
    let described = server.cli_ok(&["group", "describe", "g"]);
    assert!(
        described
            .lines()
            .any(|l| l.split_whitespace().eq(["0", "20", "25", "5", "-"])),
        "{described}"
    );

    // SIGKILL: the reset offsets were durable; a group consumer resumes exactly there.
    drop(c);
    let _ = server.child.kill();
    let _ = server.child.wait();
    server = Server::start(dir.path());
    let c = server.client();
    assert_eq!(committed(&c, "g", topic), vec![(0, 20), (1, 12)]);
    assert_eq!(check_lag(&server, &c, "g", topic), 5 + 15);
    let args = [
        "consume",
        topic,
        "--group",
        "g",
        "--count",
        "20",
        "--timeout-ms",
        "20000",
    ];
    let mut got: Vec<String> = server.cli_ok(&args).lines().map(str::to_string).collect();
    got.sort();
    let mut want: Vec<String> = (20..25)
        .map(|i| format!("p0-{i}"))
        .chain((12..27).map(|i| format!("p1-{i}")))
        .collect();
    want.sort();
    assert_eq!(got, want, "resumed at the reset offsets");
}

#[test]
#[allow(
    clippy::too_many_lines,
    reason = "one end-to-end scenario, told in order"
)]
fn queue_figures_and_purge() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path());
    let c = server.client();
    let settings = QueueSettings {
        visibility_timeout_ms: 60_000,
        max_deliveries: 2,
        backoff_base_ms: 0,
        backoff_max_ms: 0,
        dead_letter_topic: Some("jobs.dlq".into()),
        priority_levels: 1,
    };
    let one = TopicConfig {
        partitions: 1,
        ..TopicConfig::default()
    };
    c.create_queue("jobs", one, settings).unwrap();
    produce(&c, "jobs", 0, (0..5).map(|i| format!("job-{i}")));
    let wait = Duration::from_secs(2);
    let first = c.queue_receive("jobs", Some(0), 2, None, wait).unwrap();
    assert_eq!(first.len(), 2);
    let held = first[1].receipt();
    c.queue_nack("jobs", &[first[0].receipt()], Some(Duration::ZERO))
        .unwrap();
    let again = c.queue_receive("jobs", Some(0), 1, None, wait).unwrap();
    assert_eq!((again[0].offset, again[0].attempt), (0, 2));
    c.queue_nack("jobs", &[again[0].receipt()], Some(Duration::ZERO))
        .unwrap();

    let q = [("queue", "jobs"), ("partition", "0")];
    let deadline = Instant::now() + Duration::from_secs(20);
    let samples = loop {
        let s = server.scrape();
        let dlq = [
            ("queue", "jobs"),
            ("dead_letter_topic", "jobs.dlq"),
            ("partition", "0"),
        ];
        // Counted once the message is marked done here (after its copy is durable there).
        let done = value(&s, "shardline_queue_dead_lettered_total", &q);
        if done == Some(1.0) && value(&s, "shardline_queue_dlq_messages", &dlq) == Some(1.0) {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the message never reached the DLQ"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(value(&samples, "shardline_queue_depth", &q), Some(3.0));
    assert_eq!(value(&samples, "shardline_queue_inflight", &q), Some(1.0));
    assert_eq!(
        value(&samples, "shardline_queue_redeliveries_total", &q),
        Some(1.0)
    );
    assert_eq!(
        value(&samples, "shardline_queue_dead_lettered_total", &q),
        Some(1.0)
    );
    let dlq = [("queue", "jobs.dlq"), ("partition", "0")];
    assert_eq!(value(&samples, "shardline_queue_depth", &dlq), Some(1.0));
    let stats = server.cli_ok(&["stats"]);
    assert!(
        stats
            .lines()
            .any(|l| l.split_whitespace().take(4).eq(["jobs", "0", "3", "1"])),
        "{stats}"
    );

    let out = server.cli_ok(&["queue", "purge", "jobs"]);
    assert!(out.lines().any(|l| l == "purged 4"), "{out}");
    let samples = server.scrape();
    assert_eq!(value(&samples, "shardline_queue_depth", &q), Some(0.0));
    assert_eq!(value(&samples, "shardline_queue_inflight", &q), Some(0.0));
    assert_eq!(
        value(&samples, "shardline_queue_purged_total", &q),
        Some(4.0)
    );
    assert_eq!(
        c.queue_ack("jobs", &[held]).unwrap(),
        vec![code::MESSAGE_DONE]
    );

    drop(c);
    let _ = server.child.kill();
    let _ = server.child.wait();
    server = Server::start(dir.path());
    let c = server.client();
    let s = &c.queue_stats("jobs").unwrap()[0];
    assert_eq!((s.depth, s.in_flight, s.ack_floor), (0, 0, 5));
    assert!(
        c.queue_receive("jobs", Some(0), 10, None, Duration::from_millis(300))
            .unwrap()
            .is_empty()
    );
    produce(&c, "jobs", 0, (5..7).map(|i| format!("job-{i}")));
    let got = c.queue_receive("jobs", Some(0), 10, None, wait).unwrap();
    let values: Vec<String> = got
        .iter()
        .map(|m| String::from_utf8_lossy(&m.value).into_owned())
        .collect();
    assert_eq!(values, vec!["job-5", "job-6"]);
    let refused = server.cli(&["queue", "purge", "lag-free-plain"]);
    assert_eq!(refused.status.code(), Some(1));
}
