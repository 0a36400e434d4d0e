//! Helpers shared by the loadgen integration tests: run the binary, read its JSON, check the
//! JSON contract and the counts.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_shardline-loadgen");

/// The JSON contract (DESIGN.md "Command line contracts", plus OMB's aggregated fields).
pub(crate) const REQUIRED_FIELDS: &[&str] = &[
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
pub(crate) const SUMMARY_FIELDS: &[&str] = &["p50", "p90", "p99", "p999", "p9999", "max", "mean"];
pub(crate) const WORKLOAD_FIELDS: &[&str] = &[
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

pub(crate) fn run(args: &[&str]) -> Output {
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

pub(crate) fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).expect("the run writes its JSON file");
    serde_json::from_str(&text).expect("the JSON file parses")
}

/// Checks the contract and that `driver` received every acknowledged message exactly once, in
/// order; returns the received count.
pub(crate) fn check_run(v: &Value, driver: &str) -> u64 {
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
    assert_eq!(v["driver"], driver);
    assert!(v["throughput_msgs_per_s"].as_f64().unwrap_or(0.0) > 0.0);
    assert!(v["e2e_latency_us"]["p50"].as_u64().unwrap_or(0) > 0);
    received
}

/// Arguments of a short closed-loop run against a broker at `addr` (2 s + 0.5 s warm-up).
pub(crate) fn short_network_run(driver: &str, addr: &str, json: &Path, acks: &str) -> Vec<String> {
    [
        "--driver",
        driver,
        "--addr",
        addr,
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
        "100",
        "--batch",
        "16",
        "--inflight",
        "8",
        "--acks",
        acks,
        "--drain-timeout",
        "20s",
        "--json",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([json.display().to_string()])
    .collect()
}

/// A broker process started by a test on 127.0.0.1, with its data in a temporary directory;
/// killed by PID (and its directory removed) when dropped.
pub(crate) struct ServerProcess {
    child: std::process::Child,
    pub(crate) addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `program` is on PATH; prints why the test is skipped if not.
pub(crate) fn have(program: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()));
    if !found {
        eprintln!("SKIPPED: {program} is not installed (apt-get install {program}; .ci/run does)");
    }
    found
}

/// A port nothing listens on right now (the kernel's pick; the server binds it right after).
pub(crate) fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Reads `pipe` line by line on a thread (to its end, so the child never blocks on a full
/// pipe) and returns the first line containing `needle`, or what was read if none came in 20 s.
fn wait_for_line(pipe: impl std::io::Read + Send + 'static, needle: &'static str) -> String {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = String::new();
        for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
            if line.contains(needle) {
                let _ = tx.send(Ok(line.clone()));
            } else {
                seen.push_str(&line);
                seen.push('\n');
            }
        }
        let _ = tx.send(Err(seen));
    });
    match rx.recv_timeout(std::time::Duration::from_secs(20)) {
        Ok(Ok(line)) => line,
        Ok(Err(seen)) => panic!("the server exited before '{needle}':\n{seen}"),
        Err(_) => panic!("no '{needle}' from the server within 20 s"),
    }
}

/// `redis-server` with the AOF on and `appendfsync` as given.
pub(crate) fn start_redis(appendfsync: &str) -> ServerProcess {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().to_string();
    let mut child = Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port, "--dir"])
        .arg(dir.path())
        .args(["--appendonly", "yes", "--appendfsync", appendfsync])
        .args(["--save", "", "--logfile", "", "--daemonize", "no"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for_line(child.stdout.take().unwrap(), "Ready to accept connections");
    ServerProcess {
        child,
        addr: format!("127.0.0.1:{port}"),
        _dir: dir,
    }
}

/// `nats-server` with JetStream on, its store in a temporary directory, on a random port.
pub(crate) fn start_nats() -> ServerProcess {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", "-1", "-js", "-sd"])
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let line = wait_for_line(
        child.stderr.take().unwrap(),
        "Listening for client connections on",
    );
    let addr = line
        .rsplit(' ')
        .next()
        .unwrap_or_else(|| panic!("{line}"))
        .to_string();
    ServerProcess {
        child,
        addr,
        _dir: dir,
    }
}
