//! Operations against the real `shardline` binary (docs/operations.md):
//! - `/metrics` scraped during a produce/consume run parses as Prometheus text (with the
//!   `prometheus-parse` crate), and its counters move by exactly what was produced and consumed;
//!   the log end offsets equal what the producer was acknowledged, so the lag of a consumer that
//!   read everything (log end minus its position) is exactly zero, and exactly N before it read;
//! - invalid configuration files stop start-up with a message naming the key;
//! - `--print-config` prints a configuration that the server accepts back unchanged;
//! - `topic alter` changes retention over the protocol; `stats` and `top` print the figures;
//! - a silent client of the metrics endpoint does not hold up scrapes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shardline_net::client::{
    Client, ClientConfig, Consumer, ConsumerConfig, Producer, ProducerConfig, TopicConfig,
};
use shardline_net::protocol::OffsetSpec;

const BIN: &str = env!("CARGO_BIN_EXE_shardline");

struct ServerProc {
    child: Child,
    addr: String,
    metrics: String,
}

impl ServerProc {
    /// Starts `serve` on ephemeral ports; the metrics address comes from the start-up log.
    fn start(dir: &std::path::Path) -> ServerProc {
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--shards", "2"])
            .args(["--metrics-listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        stdout.read_line(&mut line).unwrap();
        let addr = line
            .trim()
            .strip_prefix("shardline listening on ")
            .unwrap_or_else(|| panic!("{line:?}"))
            .to_string();
        // The endpoint is logged before the stdout line is written.
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut metrics = None;
        for _ in 0..100 {
            let mut l = String::new();
            if stderr.read_line(&mut l).unwrap() == 0 {
                break;
            }
            if l.contains("metrics endpoint listening") {
                let at = l.split("addr=").nth(1).unwrap();
                metrics = Some(at.split_whitespace().next().unwrap().to_string());
                break;
            }
        }
        // Keep draining the pipes so the server never blocks on a full one.
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        ServerProc {
            child,
            addr,
            metrics: metrics.expect("metrics address in the start-up log"),
        }
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP GET; returns (status line, content type, body).
fn http_get(addr: &str, path: &str) -> (String, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.lines().next().unwrap().to_string();
    let content_type = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Type: "))
        .unwrap_or("")
        .to_string();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(length, body.len(), "Content-Length matches the body");
    (status, content_type, body.to_string())
}

/// A parsed scrape: `(metric, sorted labels) -> value`, histograms left out.
type Figures = BTreeMap<(String, Vec<(String, String)>), f64>;

fn scrape(addr: &str) -> Figures {
    let (status, content_type, body) = http_get(addr, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    assert!(
        body.ends_with("# EOF\n"),
        "OpenMetrics text ends with # EOF"
    );
    let parsed = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).unwrap();
    // The parser skips lines it cannot read: every sample line must have become a sample
    // (a histogram's bucket lines become one sample per series).
    let lines: Vec<&str> = body.lines().filter(|l| !l.starts_with('#')).collect();
    let buckets = lines.iter().filter(|l| l.contains("_bucket{")).count();
    let series = lines.iter().filter(|l| l.contains("le=\"+Inf\"")).count();
    assert!(series > 0, "histograms are exported");
    assert_eq!(
        parsed.samples.len(),
        lines.len() - buckets + series,
        "every line parsed"
    );
    let mut out = Figures::new();
    for s in parsed.samples {
        let v = match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(h) => {
                let le: Vec<f64> = h.iter().map(|b| b.count).collect();
                assert!(le.windows(2).all(|w| w[0] <= w[1]), "cumulative buckets");
                continue;
            }
            _ => continue,
        };
        let mut labels: Vec<(String, String)> = s
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        labels.sort();
        out.insert((s.metric, labels), v);
    }
    out
}

/// Sum of a family's samples whose labels include all of `with`.
fn total(f: &Figures, metric: &str, with: &[(&str, &str)]) -> f64 {
    f.iter()
        .filter(|((m, labels), _)| {
            m == metric
                && with
                    .iter()
                    .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|(_, v)| *v)
        .sum()
}

fn partition_value(f: &Figures, metric: &str, topic: &str, partition: u32) -> f64 {
    let p = partition.to_string();
    total(f, metric, &[("topic", topic), ("partition", &p)])
}

const TOPIC: &str = "ops";
const PARTITIONS: u32 = 3;
const MESSAGES: u64 = 3_000;

#[test]
#[allow(
    clippy::too_many_lines,
    reason = "one end-to-end scenario, told in order"
)]
fn metrics_count_exactly_what_was_produced_and_consumed() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(dir.path());
    let client = Client::connect(&server.addr, ClientConfig::default()).unwrap();
    client
        .create_topic(
            TOPIC,
            TopicConfig {
                partitions: PARTITIONS,
                ..TopicConfig::default()
            },
        )
        .unwrap();
    let before = scrape(&server.metrics);
    assert_eq!(
        total(&before, "shardline_partition_produced_records_total", &[]),
        0.0
    );

    // Produce on a thread while this one keeps scraping: scrapes must not stall the run.
    let addr = server.addr.clone();
    let producer = std::thread::spawn(move || {
        let client = Client::connect(&addr, ClientConfig::default()).unwrap();
        let producer = Producer::new(client, ProducerConfig::default()).unwrap();
        let handles: Vec<_> = (0..MESSAGES)
            .map(|i| {
                producer.send(
                    TOPIC,
                    Some(format!("k{i}").as_bytes()),
                    vec![b'x'; 100],
                    Vec::new(),
                )
            })
            .collect();
        let mut per_partition: BTreeMap<u32, u64> = BTreeMap::new();
        for h in handles {
            *per_partition
                .entry(h.wait().unwrap().partition)
                .or_default() += 1;
        }
        producer.close().unwrap();
        per_partition
    });
    let mut previous = 0.0;
    let mut scrapes = 0;
    while !producer.is_finished() && scrapes < 200 {
        let f = scrape(&server.metrics);
        let now = total(&f, "shardline_partition_produced_records_total", &[]);
        assert!(
            now >= previous,
            "counters never go down: {now} < {previous}"
        );
        previous = now;
        scrapes += 1;
    }
    let acked = producer.join().unwrap();
    assert_eq!(acked.values().sum::<u64>(), MESSAGES);

    let produced = scrape(&server.metrics);
    let mut batch_bytes = 0.0;
    for p in 0..PARTITIONS {
        let n = acked.get(&p).copied().unwrap_or(0) as f64;
        let v = |m| partition_value(&produced, m, TOPIC, p);
        assert_eq!(
            v("shardline_partition_produced_records_total"),
            n,
            "partition {p}"
        );
        assert_eq!(
            v("shardline_partition_log_end_offset"),
            n,
            "log end = acked records"
        );
        assert_eq!(
            v("shardline_partition_durable_offset"),
            n,
            "durable acks were synced"
        );
        assert_eq!(v("shardline_partition_log_start_offset"), 0.0);
        assert_eq!(
            v("shardline_partition_fetched_records_total"),
            0.0,
            "nothing read yet"
        );
        assert_eq!(
            v("shardline_partition_size_bytes"),
            v("shardline_partition_produced_bytes_total"),
            "every appended byte is on disk"
        );
        batch_bytes += v("shardline_partition_produced_bytes_total");
    }
    assert!(batch_bytes > (MESSAGES * 100) as f64);
    // Group commits write every appended byte, plus the partial last block (< 4 KiB) that
    // each flush carries over from the previous one and writes again.
    let flushed = total(&produced, "shardline_shard_flushed_bytes_total", &[]);
    let flushes = total(&produced, "shardline_shard_flushes_total", &[]);
    assert!(flushes > 0.0);
    assert!(
        flushed >= batch_bytes && flushed < batch_bytes + flushes * 4096.0,
        "flushed {flushed}, appended {batch_bytes}, {flushes} flushes"
    );
    assert!(
        total(
            &produced,
            "shardline_append_latency_seconds_count",
            &[("acks", "durable")]
        ) > 0.0
    );
    assert!(total(&produced, "shardline_fsync_seconds_count", &[]) > 0.0);
    assert!(total(&produced, "shardline_requests_total", &[("api", "Produce")]) > 0.0);

    // Consume everything: the fetched counters move by exactly MESSAGES and each partition's
    // lag (log end - the consumer's next offset) is zero.
    let mut consumer = Consumer::new(client.clone(), ConsumerConfig::default()).unwrap();
    for p in 0..PARTITIONS {
        consumer.subscribe(TOPIC, p, OffsetSpec::Earliest).unwrap();
    }
    let mut next: BTreeMap<u32, u64> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut received = 0;
    while received < MESSAGES {
        assert!(
            Instant::now() < deadline,
            "consumed {received} of {MESSAGES}"
        );
        if let Some(r) = consumer.poll(Duration::from_millis(200)).unwrap() {
            next.insert(r.partition, r.offset + 1);
            received += 1;
        }
    }
    let consumed = scrape(&server.metrics);
    for p in 0..PARTITIONS {
        let end = partition_value(&consumed, "shardline_partition_log_end_offset", TOPIC, p);
        let position = next.get(&p).copied().unwrap_or(0) as f64;
        assert_eq!(end - position, 0.0, "lag of partition {p}");
        assert_eq!(
            partition_value(
                &consumed,
                "shardline_partition_fetched_records_total",
                TOPIC,
                p
            ),
            acked.get(&p).copied().unwrap_or(0) as f64
        );
    }
    assert_eq!(
        total(&consumed, "shardline_partition_fetched_records_total", &[]),
        MESSAGES as f64
    );
    assert!(
        total(
            &consumed,
            "shardline_shard_cache_reads_total",
            &[("result", "hit")]
        ) > 0.0
    );
    assert!(total(&consumed, "shardline_connections_open", &[]) >= 1.0);

    // Errors are counted by api and code.
    assert!(client.describe_topic("no-such-topic").is_err());
    let errors = scrape(&server.metrics);
    assert_eq!(
        total(
            &errors,
            "shardline_request_errors_total",
            &[("api", "DescribeTopic"), ("error", "UNKNOWN_TOPIC")]
        ),
        1.0
    );
    let (status, _, _) = http_get(&server.metrics, "/nope");
    assert!(status.contains("404"), "{status}");

    // A client that connects and says nothing does not hold up the next scrape (each
    // connection has its own thread; the silent one times out after 5 s).
    let silent = TcpStream::connect(&server.metrics).unwrap();
    let started = Instant::now();
    let again = scrape(&server.metrics);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        total(&again, "shardline_partition_fetched_records_total", &[]),
        MESSAGES as f64,
        "scrapes do not change the figures"
    );
    drop(silent);
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn invalid_config_files_fail_start_up_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cases = [
        ("[engine]\nshardz = 2\n", "engine.shardz"),
        ("[engine]\nshards = \"two\"\n", "engine.shards"),
        (
            "[engine]\nsync_interval_ms = 0\n",
            "engine.sync_interval_ms",
        ),
        ("[server]\nlisten = \"localhost\"\n", "server.listen"),
        ("[metrics]\nlisten = \"nowhere\"\n", "metrics.listen"),
        ("[log]\nformat = \"xml\"\n", "log.format"),
        (
            "[engine.topic_defaults]\nsegment_bytes = 10\n",
            "engine.topic_defaults.segment_bytes",
        ),
        ("[colour]\n", "colour"),
    ];
    for (text, key) in cases {
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, text).unwrap();
        let (code, stdout, stderr) = run(&[
            "serve",
            "--config",
            file.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ]);
        assert_eq!(code, 1, "{text}: {stderr}");
        assert!(stdout.is_empty(), "nothing served: {stdout}");
        assert!(
            stderr.contains(key),
            "{text:?}: error names {key}: {stderr}"
        );
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    }
}

#[test]
fn print_config_shows_the_effective_configuration_and_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(
        &file,
        "[engine]\nsync_interval_ms = 7\n[log]\nlevel = \"warn\"\n",
    )
    .unwrap();
    let (code, printed, stderr) = run(&[
        "serve",
        "--print-config",
        "--config",
        file.to_str().unwrap(),
        "--shards",
        "3",
    ]);
    assert_eq!(code, 0, "{stderr}");
    for expect in [
        "sync_interval_ms = 7",
        "shards = 3",
        "level = \"warn\"",
        "[metrics]",
    ] {
        assert!(printed.contains(expect), "{expect} in {printed}");
    }
    let again = dir.path().join("again.toml");
    std::fs::write(&again, &printed).unwrap();
    let (code, reprinted, stderr) = run(&[
        "serve",
        "--print-config",
        "--config",
        again.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        reprinted, printed,
        "the printed configuration is accepted back unchanged"
    );
}

#[test]
fn topic_alter_stats_and_top_work_against_a_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(dir.path());
    let cli = |args: &[&str]| {
        let mut all = vec!["--addr", server.addr.as_str()];
        all.extend_from_slice(args);
        run(&all)
    };
    assert_eq!(cli(&["topic", "create", "t", "--partitions", "2"]).0, 0);
    let (code, out, err) = cli(&["topic", "alter", "t", "--retention-bytes", "5000000"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("retention_bytes=5000000 retention_ms=-"),
        "{out}"
    );
    let (code, out, err) = cli(&["topic", "alter", "t", "--retention-ms", "60000"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("retention_bytes=5000000 retention_ms=60000"),
        "kept: {out}"
    );
    let (_, out, _) = cli(&["topic", "describe", "t"]);
    assert!(
        out.contains("retention_bytes=5000000 retention_ms=60000"),
        "{out}"
    );
    let (code, out, _) = cli(&["topic", "alter", "t", "--retention-bytes", "none"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("retention_bytes=- retention_ms=60000"),
        "{out}"
    );
    let (code, _, err) = cli(&["topic", "alter", "missing", "--retention-ms", "1"]);
    assert_eq!(code, 1);
    assert!(err.contains("unknown topic 'missing'"), "{err}");

    let (code, out, err) = cli(&["stats"]);
    assert_eq!(code, 0, "{err}");
    for expect in ["SHARD", "APPEND durable", "TOPIC", "AlterTopic"] {
        assert!(out.contains(expect), "{expect} in {out}");
    }
    assert_eq!(
        out.lines().filter(|l| l.starts_with("t ")).count(),
        2,
        "{out}"
    );
    // Not a terminal: periodic snapshots, bounded by --iterations.
    let (code, out, err) = cli(&["top", "--iterations", "2", "--interval-ms", "100"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.matches("shardline top").count(), 2, "{out}");
    assert!(out.contains("IN msg/s"), "{out}");
}
