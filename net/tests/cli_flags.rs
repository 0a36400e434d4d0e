//! The CLI's flags and commands of issue 17 against a real `shardline serve` (127.0.0.1, an
//! ephemeral port): `consume --from` times and durations, `--partition`, `--format`, `--json`;
//! `produce --key-separator`, `-H`, unkeyed lines spread over partitions; `request`/`reply`;
//! `queue peek`/`change-visibility`; `--wait`; errors that say what to do; `serve --help`;
//! host names in `--listen`; `stats`/`top` without internal topics or raw metric lines.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "common/spawn.rs"]
mod spawn;

const BIN: &str = env!("CARGO_BIN_EXE_shardline");

struct ServerProc(Child, String);

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn server(dir: &std::path::Path) -> ServerProc {
    let (child, addr) = spawn::serve(BIN, dir);
    ServerProc(child, addr)
}

/// Runs `shardline --addr ADDR args...` with `stdin`: (exit code, stdout, stderr).
fn cli(addr: &str, args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut child = Command::new(BIN)
        .arg("--addr")
        .arg(addr)
        .args(args)
        .env_remove("SHARDLINE_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn ok(addr: &str, args: &[&str], stdin: &str) -> String {
    let (code, out, err) = cli(addr, args, stdin);
    assert_eq!(code, 0, "shardline {args:?}: {err}");
    out
}

#[test]
fn consume_and_produce_flags() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path());
    let a = s.1.as_str();
    ok(a, &["topic", "create", "t", "--partitions", "3"], "");
    let lines: String = (0..30).map(|i| format!("user-{}:v{i}\n", i % 5)).collect();
    let out = ok(
        a,
        &[
            "produce",
            "t",
            "--key-separator",
            ":",
            "-H",
            "app=test",
            "-H",
            "n=1",
        ],
        &lines,
    );
    assert_eq!(out.trim(), "30");

    // --format: key, partition, offset, timestamp, headers, value; one key, one partition.
    let out = ok(
        a,
        &[
            "consume",
            "t",
            "--count",
            "30",
            "--format",
            "%k|%p|%o|%T|%h|%s",
        ],
        "",
    );
    let mut partition_of: BTreeMap<String, String> = BTreeMap::new();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    for line in out.lines() {
        let f: Vec<&str> = line.split('|').collect();
        assert_eq!(f.len(), 6, "{line}");
        let expected = shardline_net::client::partition_for_key(f[0].as_bytes(), 3).to_string();
        assert_eq!(f[1], expected, "{line}");
        assert_eq!(partition_of.entry(f[0].into()).or_insert(f[1].into()), f[1]);
        let ts: i64 = f[3].parse().unwrap();
        assert!((now_ms - 60_000..=now_ms + 1000).contains(&ts), "{line}");
        assert_eq!(f[4], "app=test,n=1");
        assert!(f[5].starts_with('v'), "{line}");
    }
    assert_eq!(out.lines().count(), 30);

    // --json and --partition.
    let p = partition_of["user-1"].clone();
    let out = ok(
        a,
        &[
            "consume",
            "t",
            "--partition",
            &p,
            "--json",
            "--timeout-ms",
            "1500",
        ],
        "",
    );
    let records: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!records.is_empty());
    let p_number: u64 = p.parse().unwrap();
    assert!(
        records
            .iter()
            .all(|r| r["partition"].as_u64() == Some(p_number))
    );
    assert!(records.iter().any(|r| r["key"] == "user-1"));
    assert_eq!(records[0]["headers"]["app"], "test");

    // --from: a duration back, an RFC 3339 time in the past, one in the future.
    let count = |from: &str| {
        let args = ["consume", "t", "--from", from, "--timeout-ms", "1500"];
        ok(a, &args, "").lines().count()
    };
    assert_eq!(count("-10m"), 30);
    assert_eq!(count("2001-02-03T04:05:06Z"), 30);
    assert_eq!(count("2999-01-01T00:00:00+02:00"), 0);
    let (code, _, err) = cli(a, &["consume", "t", "--from", "yesterday"], "");
    assert_eq!(code, 2);
    assert!(err.contains("RFC 3339"), "{err}");
    let (code, _, err) = cli(a, &["consume", "t", "--partition", "7", "--count", "1"], "");
    assert_eq!(code, 1);
    assert!(err.contains("has 3 partitions"), "{err}");

    // Unkeyed lines spread over the partitions (sticky, a 16 KiB batch at a time).
    ok(a, &["topic", "create", "spread", "--partitions", "4"], "");
    let lines: String = (0..3000).map(|i| format!("line-{i:06}\n")).collect();
    assert_eq!(ok(a, &["produce", "spread"], &lines).trim(), "3000");
    let out = ok(
        a,
        &["consume", "spread", "--count", "3000", "--format", "%p"],
        "",
    );
    let used: BTreeSet<&str> = out.lines().collect();
    assert!(used.len() >= 3, "unkeyed lines went to partitions {used:?}");
}

#[test]
fn request_reply() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path());
    let a = s.1.as_str();
    ok(a, &["queue", "create", "rpc"], "");
    let responder = Command::new(BIN)
        .args([
            "--addr",
            a,
            "reply",
            "rpc",
            "--count",
            "2",
            "--command",
            "tr a-z A-Z",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = ok(
        a,
        &["request", "rpc", "--timeout-ms", "20000"],
        "ping\npong\n",
    );
    assert_eq!(out, "PING\nPONG\n");
    let done = responder.wait_with_output().unwrap();
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let (code, _, err) = cli(a, &["request", "rpc", "hello", "--timeout-ms", "300"], "");
    assert_eq!(code, 1);
    assert!(err.contains("shardline reply rpc"), "{err}");
}

#[test]
fn queue_peek_and_change_visibility() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path());
    let a = s.1.as_str();
    ok(
        a,
        &[
            "queue",
            "create",
            "jobs",
            "--visibility-timeout-ms",
            "60000",
        ],
        "",
    );
    ok(a, &["queue", "send", "jobs"], "a\nb\nc\n");
    let peek = ok(a, &["queue", "peek", "jobs"], "");
    assert_eq!(
        peek,
        "0:0\tdeliveries=0\ta\n0:1\tdeliveries=0\tb\n0:2\tdeliveries=0\tc\n"
    );
    let got = ok(a, &["queue", "receive", "jobs", "--no-ack"], "");
    assert_eq!(got, "0:0:1\ta\n");
    // Invisible for a minute; change-visibility 0 gives it back at once.
    let out = ok(
        a,
        &[
            "queue",
            "receive",
            "jobs",
            "--no-ack",
            "--count",
            "3",
            "--timeout-ms",
            "500",
        ],
        "",
    );
    assert_eq!(out, "0:1:1\tb\n0:2:1\tc\n");
    let out = ok(
        a,
        &[
            "queue",
            "change-visibility",
            "jobs",
            "0:0:1",
            "--timeout-ms",
            "0",
        ],
        "",
    );
    assert!(out.starts_with("changed visibility of 1"), "{out}");
    let out = ok(
        a,
        &[
            "queue",
            "receive",
            "jobs",
            "--no-ack",
            "--timeout-ms",
            "5000",
        ],
        "",
    );
    assert_eq!(out, "0:0:2\ta\n");
    // The first delivery's receipt no longer holds the message: said in words, with the receipt.
    let (code, _, err) = cli(a, &["queue", "ack", "jobs", "0:0:1"], "");
    assert_eq!(code, 1);
    assert!(
        err.contains("0:0:1: this delivery no longer holds"),
        "{err}"
    );
    assert!(
        !err.contains("LEASE_NOT_HELD") && !err.contains("receipt 0"),
        "{err}"
    );
}

#[test]
fn errors_help_wait_hostnames_stats_and_top() {
    // serve --help lists server flags only.
    let out = Command::new(BIN)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("--listen") && help.contains("--data-dir"),
        "{help}"
    );
    for client_flag in ["--addr", "--user", "--tls-ca", "--token-file", "--wait"] {
        assert!(
            !help.contains(client_flag),
            "{client_flag} in serve --help:\n{help}"
        );
    }

    // Nothing listens: the error says what to do.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let (code, _, err) = cli(&addr, &["topic", "list"], "");
    assert_eq!(code, 1);
    assert!(err.contains("--addr") && err.contains("--wait"), "{err}");

    // --wait: a client started before the server connects once it listens; the server is
    // given a host name.
    let waiting = Command::new(BIN)
        .args(["--addr", &addr, "--wait", "30s", "topic", "create", "late"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--shards", "2", "--metrics-listen", "127.0.0.1:0"])
        .args(["--listen", &format!("localhost:{port}"), "--data-dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let listening = spawn::listening_addr(&mut child);
    let s = ServerProc(child, listening);
    assert_eq!(s.1, addr, "localhost resolves to 127.0.0.1");
    let started = Instant::now();
    let out = waiting.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("created topic late"));
    assert!(started.elapsed() < Duration::from_secs(30));

    let a = s.1.as_str();
    // A second server on the same port is refused (the shards' SO_REUSEPORT would share it).
    let second = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            a,
            "--metrics-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path().join("second"))
        .output()
        .unwrap();
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("already listening"), "{err}");
    let (code, _, err) = cli(a, &["produce", "nosuch"], "x\n");
    assert_eq!(code, 1);
    assert!(err.contains("shardline topic create nosuch"), "{err}");
    let (code, _, err) = cli(a, &["queue", "receive", "late"], "");
    assert_eq!(code, 1);
    assert!(err.contains("not a work queue"), "{err}");

    // A group commit writes the internal offsets topic; stats and top leave it out.
    ok(a, &["produce", "late"], "1\n2\n");
    ok(a, &["consume", "late", "--group", "g", "--count", "2"], "");
    let stats = ok(a, &["stats"], "");
    assert!(stats.contains("late"), "{stats}");
    assert!(!stats.contains("__"), "internal topics in stats:\n{stats}");
    assert!(
        !stats.contains("{topic="),
        "raw metric lines in stats:\n{stats}"
    );
    let top = ok(a, &["top", "--iterations", "1", "--interval-ms", "200"], "");
    assert!(top.contains("late"), "{top}");
    assert!(!top.contains("(q quits)") && !top.contains("__"), "{top}");
}
