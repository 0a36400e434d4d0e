//! Growing topics and auto-creation against the real `shardline` binary on 127.0.0.1
//! (docs/semantics.md, "Adding partitions"; docs/operations.md, "Administration"):
//! - `serve --auto-create --auto-create-partitions 3`: `shardline produce` to a topic nobody
//!   created creates it with three partitions and delivers; without the option the same
//!   produce fails with an unknown topic and creates nothing;
//! - `topic alter --partitions 5` grows it (the new partitions take records, the old keep
//!   theirs), shrinking is refused with a message, and a keyed record lands where
//!   `crc32c(key) % 5` says.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::io::Write;
use std::process::{Child, Command, Stdio};

use shardline_net::client::{Client, ClientConfig, SendOptions, partition_for_key};

#[path = "common/spawn.rs"]
mod spawn;

const BIN: &str = env!("CARGO_BIN_EXE_shardline");

struct ServerProc(Child);

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(dir: &std::path::Path, extra: &[&str]) -> (ServerProc, String) {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--shards", "2"])
        .args(["--metrics-listen", "127.0.0.1:0"])
        .args(extra)
        .arg("--data-dir")
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr = spawn::listening_addr(&mut child);
    (ServerProc(child), addr)
}

fn cli(addr: &str, args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut child = Command::new(BIN)
        .arg("--addr")
        .arg(addr)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn high_watermarks(c: &Client, topic: &str) -> Vec<u64> {
    c.describe_topic(topic)
        .unwrap()
        .partitions
        .iter()
        .map(|p| p.high_watermark)
        .collect()
}

#[test]
fn auto_create_on_first_produce_then_grow_with_topic_alter() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, a) = serve(
        dir.path(),
        &["--auto-create", "--auto-create-partitions", "3"],
    );
    let (ok, _, err) = cli(&a, &["produce", "fresh", "--key", "k"], "one\ntwo\n");
    assert!(ok, "{err}");
    let c = Client::connect(&a, ClientConfig::default()).unwrap();
    let d = c.describe_topic("fresh").unwrap();
    assert_eq!(d.topic.config.partitions, 3);
    assert_eq!(high_watermarks(&c, "fresh").iter().sum::<u64>(), 2);

    let (ok, out, err) = cli(&a, &["topic", "alter", "fresh", "--partitions", "5"], "");
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "altered topic fresh partitions=5");
    let before = high_watermarks(&c, "fresh");
    assert_eq!(before.len(), 5);
    assert_eq!(before[3..], [0, 0], "new partitions start empty");
    c.queue_send("fresh", 4, vec![b"x".to_vec()], SendOptions::default())
        .unwrap();
    assert_eq!(high_watermarks(&c, "fresh")[4], 1);

    // The CLI's keyed produce follows the new count.
    let (ok, _, err) = cli(&a, &["produce", "fresh", "--key", "k"], "three\n");
    assert!(ok, "{err}");
    let p = partition_for_key(b"k", 5) as usize;
    let after = high_watermarks(&c, "fresh");
    assert_eq!(
        after[p],
        before[p] + u64::from(p == 4) + 1,
        "{before:?} {after:?}"
    );

    let (ok, _, err) = cli(&a, &["topic", "alter", "fresh", "--partitions", "2"], "");
    assert!(!ok);
    assert!(err.contains("only be added"), "{err}");
    assert_eq!(c.describe_topic("fresh").unwrap().partitions.len(), 5);
}

#[test]
fn without_auto_create_an_unknown_topic_is_not_created() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, a) = serve(dir.path(), &[]);
    let (ok, _, err) = cli(&a, &["produce", "fresh"], "one\n");
    assert!(!ok, "produced to a topic nobody created");
    assert!(err.to_lowercase().contains("unknown topic"), "{err}");
    let c = Client::connect(&a, ClientConfig::default()).unwrap();
    assert!(c.describe_topic("fresh").is_err());
}
