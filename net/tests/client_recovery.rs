//! Clients across a server outage and restart (issue 16, findings 7 and 8), against the real
//! `shardline serve` binary: a producer gives up after `retries_max` while the server is down
//! (and `shardline produce` exits with an error instead of waiting forever); a consumer, and
//! the plain `shardline consume` command, resume from their position after a restart.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

#[path = "common/spawn.rs"]
mod spawn;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shardline_net::client::{
    Client, ClientConfig, Consumer, ConsumerConfig, Producer, ProducerConfig, TopicConfig,
};
use shardline_net::protocol::OffsetSpec;

const BIN: &str = env!("CARGO_BIN_EXE_shardline");

/// `shardline serve` on `listen` (port 0 picks one), one shard; returns it and its address.
fn serve(dir: &Path, listen: &str) -> (Child, String) {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", listen, "--shards", "1"])
        .args(["--metrics-listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr = spawn::listening_addr(&mut child);
    (child, addr)
}

/// Waits for `child` to exit, up to `limit`; its exit status, or `None` if it is still running
/// (it is killed then).
fn exit_within(mut child: Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let s = child.wait();
        let _ = tx.send(());
        s
    });
    if rx.recv_timeout(limit).is_err() {
        // SAFETY: kill(2) on the PID of a child this test started and has not reaped.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        let _ = waiter.join();
        return None;
    }
    waiter.join().unwrap().ok()
}

/// Lines of `child`'s stdout, read on a thread of their own.
fn stdout_lines(child: &mut Child) -> std::sync::mpsc::Receiver<String> {
    let out = BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in out.lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    rx
}

fn next_lines(rx: &std::sync::mpsc::Receiver<String>, n: usize) -> Vec<String> {
    (0..n)
        .map_while(|_| rx.recv_timeout(Duration::from_secs(30)).ok())
        .collect()
}

fn kill(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn produce_values(addr: &str, topic: &str, values: &[&str]) {
    let client = Client::connect(addr, ClientConfig::default()).unwrap();
    let producer = Producer::new(client, ProducerConfig::default()).unwrap();
    let handles: Vec<_> = values
        .iter()
        .map(|v| producer.send(topic, None, v.as_bytes().to_vec(), Vec::new()))
        .collect();
    for h in handles {
        h.wait().unwrap();
    }
    producer.close().unwrap();
}

// Finding 7: with the server gone, a send fails after retries_max attempts (a clear error,
// well within a minute), and `shardline produce` exits non-zero instead of waiting.
#[test]
fn producers_give_up_after_their_retry_limit_while_the_server_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let (server, addr) = serve(dir.path(), "127.0.0.1:0");
    let client = Client::connect(&addr, ClientConfig::default()).unwrap();
    client
        .create_topic(
            "t",
            TopicConfig {
                partitions: 1,
                ..Default::default()
            },
        )
        .unwrap();
    let config = ProducerConfig {
        retries_max: 3,
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client, config).unwrap();
    producer
        .send("t", None, b"before".to_vec(), Vec::new())
        .wait()
        .unwrap();
    // The CLI producer, started while the server is up, fed after it is gone.
    let mut cli = Command::new(BIN)
        .args(["produce", "t", "--addr", &addr])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = cli.stdin.take().unwrap();
    stdin.write_all(b"one\n").unwrap();
    stdin.flush().unwrap();
    kill(server);
    let started = Instant::now();
    let r = producer
        .send("t", None, b"after".to_vec(), Vec::new())
        .wait();
    assert!(r.is_err(), "{r:?}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    let _ = stdin.write_all(b"two\nthree\n");
    drop(stdin);
    let status =
        exit_within(cli, Duration::from_secs(60)).expect("shardline produce still waiting");
    assert!(!status.success(), "the lost messages are an error");
}

// Finding 8: a consumer (library and `shardline consume`) resumes from its position after the
// server restarts on the same address: nothing is skipped, nothing delivered twice.
#[test]
fn consumers_resume_after_a_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (server, addr) = serve(dir.path(), "127.0.0.1:0");
    let client = Client::connect(&addr, ClientConfig::default()).unwrap();
    client
        .create_topic(
            "t",
            TopicConfig {
                partitions: 1,
                ..Default::default()
            },
        )
        .unwrap();
    produce_values(&addr, "t", &["a", "b", "c"]);
    let mut consumer = Consumer::new(client, ConsumerConfig::default()).unwrap();
    consumer.subscribe("t", 0, OffsetSpec::Earliest).unwrap();
    let mut cli = Command::new(BIN)
        .args([
            "consume", "t", "--from", "earliest", "--count", "6", "--addr", &addr,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = stdout_lines(&mut cli);
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.len() < 3 {
        assert!(Instant::now() < deadline, "{got:?}");
        if let Some(r) = consumer.poll(Duration::from_millis(200)).unwrap() {
            got.push(String::from_utf8(r.value).unwrap());
        }
    }
    assert_eq!(
        next_lines(&lines, 3),
        ["a", "b", "c"],
        "the CLI consumer is reading"
    );
    kill(server);
    let (server, _) = serve(dir.path(), &addr);
    produce_values(&addr, "t", &["d", "e", "f"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < 6 {
        assert!(Instant::now() < deadline, "{got:?}");
        if let Some(r) = consumer.poll(Duration::from_millis(200)).unwrap() {
            got.push(String::from_utf8(r.value).unwrap());
        }
    }
    assert_eq!(got, ["a", "b", "c", "d", "e", "f"]);
    // The CLI consumer printed the other three and exited on its own.
    assert_eq!(next_lines(&lines, 3), ["d", "e", "f"]);
    let status = exit_within(cli, Duration::from_secs(20)).expect("shardline consume did not exit");
    assert!(status.success());
    kill(server);
}

// Finding 6: a second server on a listen address in use fails to start with a clear error
// (SO_REUSEPORT would otherwise let the kernel split clients between two brokers).
#[test]
fn a_second_server_on_the_same_address_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (first, addr) = serve(&dir.path().join("a"), "127.0.0.1:0");
    let second = Command::new(BIN)
        .args(["serve", "--listen", &addr, "--shards", "1"])
        .args(["--metrics-listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("b"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = second.wait_with_output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already listening"), "{err}");
    // The first one still serves.
    let client = Client::connect(&addr, ClientConfig::default()).unwrap();
    client
        .create_topic(
            "still",
            TopicConfig {
                partitions: 1,
                ..Default::default()
            },
        )
        .unwrap();
    kill(first);
}
