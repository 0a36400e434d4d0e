//! Compression end to end against the real `shardline` binary on 127.0.0.1 (issue 18): the
//! CLI produces lz4, zstd and uncompressed batches into one topic, a consumer reads them back
//! in order; a work queue (whose scan reads records inside the broker) delivers messages that
//! arrived compressed; an unknown codec is refused by the CLI.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::io::Write;
use std::process::{Command, Stdio};

#[path = "common/spawn.rs"]
mod spawn;

const BIN: &str = env!("CARGO_BIN_EXE_shardline");

fn cli(addr: &str, args: &[&str], stdin: &str) -> (i32, String, String) {
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
    input.write_all(stdin.as_bytes()).unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn lines(prefix: &str, n: usize) -> String {
    (0..n)
        .map(|i| format!("{{\"{prefix}\":{i},\"state\":\"ok\",\"site\":\"plant-7\"}}\n"))
        .collect()
}

#[test]
fn cli_compressed_batches_round_trip_through_topics_and_queues() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr) = spawn::serve(BIN, dir.path());
    let ok = |r: (i32, String, String)| {
        assert_eq!(r.0, 0, "stdout {} stderr {}", r.1, r.2);
        r.1
    };
    ok(cli(
        &addr,
        &["topic", "create", "t", "--partitions", "1"],
        "",
    ));
    let mut want = String::new();
    for codec in ["lz4", "zstd", "none"] {
        let input = lines(codec, 300);
        let out = ok(cli(
            &addr,
            &["produce", "t", "--compression", codec, "--acks", "leader"],
            &input,
        ));
        assert_eq!(out.trim(), "300");
        want.push_str(&input);
    }
    let got = ok(cli(
        &addr,
        &["consume", "t", "--count", "900", "--timeout-ms", "20000"],
        "",
    ));
    assert_eq!(got, want);

    // A queue reads records inside the broker: compressed batches are decompressed there.
    ok(cli(
        &addr,
        &["queue", "create", "q", "--partitions", "1"],
        "",
    ));
    let input = lines("queued", 50);
    ok(cli(
        &addr,
        &["produce", "q", "--compression", "zstd"],
        &input,
    ));
    let got = ok(cli(
        &addr,
        &[
            "queue",
            "receive",
            "q",
            "--count",
            "50",
            "--timeout-ms",
            "10000",
        ],
        "",
    ));
    let mut got: Vec<&str> = got.lines().collect();
    got.sort_unstable();
    let mut want: Vec<&str> = input.lines().collect();
    want.sort_unstable();
    assert_eq!(got, want);

    let (code, _, err) = cli(&addr, &["produce", "t", "--compression", "brotli"], "x\n");
    assert_ne!(code, 0);
    assert!(err.contains("brotli"), "{err}");
    let _ = child.kill();
    let _ = child.wait();
}
