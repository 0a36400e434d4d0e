//! Runs the real `shardline-loadgen` binary against its embedded engine for a couple of
//! seconds and checks the JSON contract: every message acknowledged was received exactly once,
//! nothing failed, and every field that DESIGN.md and OpenMessaging-Benchmark tooling rely on
//! is present. Also checks that peer drivers without an address refuse clearly and that
//! `compare` reads the results back.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::path::Path;

use common::{check_run, read_json, run};

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
    check_run(&v, "embedded");
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
    let received = check_run(&v, "embedded");
    assert_eq!(v["latency_mode"], "open-loop");
    assert_eq!(v["workload"]["name"], "ticks-100b");
    assert_eq!(v["workload"]["acks"], "leader");
    assert_eq!(v["workload"]["rate"], 2000);
    // 2000 msgs/s for 2.5 s (warm-up included), give or take the last batches.
    assert!((4_500..=5_500).contains(&received), "{received}");
    // Send-to-ack (from the actual send of the built batch) is sampled for every measured message
    // that publish latency (from the intended send time) is, and never exceeds it.
    let publish = &v["publish_latency_us"];
    let send_to_ack = &v["send_to_ack_latency_us"];
    assert_eq!(send_to_ack["count"], publish["count"], "{v}");
    assert!(send_to_ack["count"].as_u64().unwrap() > 0, "{v}");
    for q in ["p50", "p99", "max"] {
        assert!(
            send_to_ack[q].as_u64().unwrap() <= publish[q].as_u64().unwrap(),
            "{q}: send-to-ack {send_to_ack} above publish {publish}"
        );
    }
}

#[test]
fn peer_drivers_without_an_address_are_refused_clearly() {
    for driver in ["nats", "redis"] {
        let out = run(&["--driver", driver]);
        assert_eq!(
            out.status.code(),
            Some(1),
            "--driver {driver} without --addr"
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("needs --addr"), "{driver}: {stderr}");
    }
}
