//! Runs the real `shardline-loadgen` binary against its embedded engine for a couple of
//! seconds and checks the JSON contract: every message acknowledged was received exactly once,
//! nothing failed, and every field that DESIGN.md and OpenMessaging-Benchmark tooling rely on
//! is present. Also checks that network drivers refuse clearly and that `compare` reads the
//! results back.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_shardline-loadgen");

/// The JSON contract (DESIGN.md "Command line contracts", plus OMB's aggregated fields).
const REQUIRED_FIELDS: &[&str] = &[
    "driver",
    "workload",
    "sent",
    "acked",
    "received",
    "errors",
    "duration_s",
    "throughput_msgs_per_s",
    "throughput_mb_per_s",
    "publish_latency_us",
    "e2e_latency_us",
    "aggregatedPublishLatency50pct",
    "aggregatedPublishLatency75pct",
    "aggregatedPublishLatency95pct",
    "aggregatedPublishLatency99pct",
    "aggregatedPublishLatency999pct",
    "aggregatedPublishLatency9999pct",
    "aggregatedPublishLatencyMax",
    "aggregatedPublishDelayLatency50pct",
    "aggregatedPublishDelayLatency75pct",
    "aggregatedPublishDelayLatency95pct",
    "aggregatedPublishDelayLatency99pct",
    "aggregatedPublishDelayLatency999pct",
    "aggregatedPublishDelayLatency9999pct",
    "aggregatedPublishDelayLatencyMax",
    "aggregatedEndToEndLatency50pct",
    "aggregatedEndToEndLatency75pct",
    "aggregatedEndToEndLatency95pct",
    "aggregatedEndToEndLatency99pct",
    "aggregatedEndToEndLatency999pct",
    "aggregatedEndToEndLatency9999pct",
    "aggregatedEndToEndLatencyMax",
];
const SUMMARY_FIELDS: &[&str] = &["p50", "p90", "p99", "p999", "p9999", "max", "mean"];
const WORKLOAD_FIELDS: &[&str] = &[
    "name",
    "duration_s",
    "warmup_s",
    "rate",
    "producers",
    "consumers",
    "partitions",
    "message_size",
    "batch",
    "acks",
];

fn run(args: &[&str]) -> Output {
    let out = Command::new(BIN)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("starting {BIN}: {e}"));
    eprintln!(
        "--- {args:?} exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).expect("the run writes its JSON file");
    serde_json::from_str(&text).expect("the JSON file parses")
}

fn check_run(v: &Value) -> u64 {
    for f in REQUIRED_FIELDS {
        assert!(v.get(f).is_some(), "field {f} missing");
    }
    for f in ["publish_latency_us", "e2e_latency_us"] {
        for k in SUMMARY_FIELDS {
            assert!(v[f].get(k).is_some(), "field {f}.{k} missing");
        }
    }
    for k in WORKLOAD_FIELDS {
        assert!(v["workload"].get(k).is_some(), "field workload.{k} missing");
    }
    let n = |f: &str| {
        v[f].as_u64()
            .unwrap_or_else(|| panic!("{f} is not a count"))
    };
    let (sent, acked, received) = (n("sent"), n("acked"), n("received"));
    assert!(sent > 0, "nothing sent");
    assert_eq!(sent, acked, "every sent message is acknowledged");
    assert_eq!(acked, received, "every acknowledged message is received");
    assert_eq!(n("errors"), 0);
    for f in ["duplicates", "gaps", "out_of_order"] {
        assert_eq!(n(f), 0, "{f}");
    }
    assert_eq!(v["driver"], "embedded");
    assert!(v["throughput_msgs_per_s"].as_f64().unwrap_or(0.0) > 0.0);
    assert!(v["e2e_latency_us"]["p50"].as_u64().unwrap_or(0) > 0);
    received
}

#[test]
fn closed_loop_durable_run_receives_every_acked_message() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("closed.json");
    let report = dir.path().join("report");
    let out = run(&[
        "--duration",
        "2s",
        "--warmup",
        "500ms",
        "--partitions",
        "3",
        "--producers",
        "2",
        "--consumers",
        "2",
        "--message-size",
        "256",
        "--batch",
        "16",
        "--inflight",
        "8",
        "--acks",
        "durable",
        "--json",
        json.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "exit {:?}", out.status.code());
    let v = read_json(&json);
    check_run(&v);
    assert_eq!(v["latency_mode"], "closed-loop");
    assert_eq!(v["workload"]["acks"], "durable");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("p99.99") && stdout.contains("end-to-end"),
        "{stdout}"
    );
    for f in [
        "index.html",
        "result.json",
        "latency-spectrum.svg",
        "throughput.svg",
    ] {
        assert!(report.join(f).is_file(), "report lacks {f}");
    }

    // compare reads the result back and charts it with itself.
    let cmp = dir.path().join("cmp");
    let out = run(&[
        "compare",
        json.to_str().unwrap(),
        report.join("result.json").to_str().unwrap(),
        "--report",
        cmp.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("(x1.00)"), "{stdout}");
    assert!(cmp.join("compare-spectrum.svg").is_file());
}

#[test]
fn open_loop_leader_run_from_a_workload_file_receives_every_acked_message() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("open.json");
    let workload = Path::new(env!("CARGO_MANIFEST_DIR")).join("workloads/ticks-100b.toml");
    let out = run(&[
        "--workload",
        workload.to_str().unwrap(),
        "--duration",
        "2s",
        "--warmup",
        "500ms",
        "--rate",
        "2000",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "exit {:?}", out.status.code());
    let v = read_json(&json);
    let received = check_run(&v);
    assert_eq!(v["latency_mode"], "open-loop");
    assert_eq!(v["workload"]["name"], "ticks-100b");
    assert_eq!(v["workload"]["acks"], "leader");
    assert_eq!(v["workload"]["rate"], 2000);
    // 2000 msgs/s for 2.5 s (warm-up included), give or take the last batches.
    assert!((4_500..=5_500).contains(&received), "{received}");
}

#[test]
fn network_drivers_are_refused_clearly() {
    for args in [
        &["--addr", "127.0.0.1:7070"][..],
        &["--driver", "nats"][..],
        &["--driver", "redis", "--addr", "127.0.0.1:6379"][..],
    ] {
        let out = run(args);
        assert!(!out.status.success(), "{args:?} must fail");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("not available yet"), "{args:?}: {stderr}");
    }
}
