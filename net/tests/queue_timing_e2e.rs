//! Delayed messages, per-message expiry and strict priority against the real `shardline`
//! binary on 127.0.0.1 (docs/semantics.md, "Delayed messages and expiry", "Priorities"):
//! - a message sent with `queue send --delay` is not delivered before its time, also after a
//!   server restart in between; one whose `--ttl` passes while it waits is dead-lettered with
//!   reason `expired` (after the restart too);
//! - a queue created with `queue create --strict-priority` never hands a consumer a lower level
//!   while a higher one waits, with four consumers receiving at once.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardline_net::client::{Client, ClientConfig, QueueMessage, SendOptions};

#[path = "common/spawn.rs"]
mod spawn;

use spawn::ServerProc;

const BIN: &str = env!("CARGO_BIN_EXE_shardline");

/// Runs the CLI against `addr`; panics with its stderr unless it succeeds.
fn cli(addr: &str, args: &[&str], stdin: &str) -> String {
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
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into()
}

fn values(msgs: &[QueueMessage]) -> Vec<String> {
    msgs.iter()
        .map(|m| String::from_utf8_lossy(&m.value).into_owned())
        .collect()
}

fn header<'a>(m: &'a QueueMessage, name: &str) -> Option<&'a str> {
    m.headers
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| std::str::from_utf8(&h.value).ok())
}

// Proves: delay and expiry are properties of the message in the log: a restart between the
// send and the due time neither delivers the delayed message early nor forgets it, and the
// expiring one is dead-lettered with its reason.
#[test]
fn delayed_and_expiring_messages_across_a_restart() {
    const DELAY: Duration = Duration::from_secs(4);
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(dir.path());
    let a = server.addr.clone();
    cli(&a, &["queue", "create", "jobs"], "");
    let sent = Instant::now();
    assert_eq!(
        cli(&a, &["queue", "send", "jobs", "--delay", "4s"], "later\n").trim(),
        "1"
    );
    // Expires while still delayed: never deliverable, so the test does not race a consumer.
    let sent_n = cli(
        &a,
        &["queue", "send", "jobs", "--delay", "1h", "--ttl", "1500ms"],
        "stale\n",
    );
    assert_eq!(sent_n.trim(), "1");
    let c = server.client();
    assert_eq!(
        c.queue_send("jobs", 0, vec![b"now".to_vec()], SendOptions::default())
            .unwrap(),
        1
    );
    let got = c
        .queue_receive("jobs", None, 10, None, Duration::from_millis(200))
        .unwrap();
    assert_eq!(values(&got), ["now"], "only the undelayed message is ready");
    c.queue_ack("jobs", &[got[0].receipt()]).unwrap();
    drop(c);

    server.stop(libc::SIGTERM);
    let server = ServerProc::start(dir.path());
    let c = server.client();
    if sent.elapsed() + Duration::from_millis(500) < DELAY {
        let early = c
            .queue_receive("jobs", None, 10, None, Duration::from_millis(300))
            .unwrap();
        assert!(
            sent.elapsed() >= DELAY || early.is_empty(),
            "delivered {:?} {:?} after sending",
            values(&early),
            sent.elapsed()
        );
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let later = loop {
        let got = c
            .queue_receive("jobs", None, 10, None, Duration::from_secs(2))
            .unwrap();
        if !got.is_empty() || Instant::now() > deadline {
            break got;
        }
    };
    assert_eq!(values(&later), ["later"]);
    assert!(sent.elapsed() >= DELAY, "not before its time");
    assert_eq!(later[0].attempt, 1);
    c.queue_ack("jobs", &[later[0].receipt()]).unwrap();

    let dead = c
        .queue_receive("jobs.dlq", None, 10, None, Duration::from_secs(10))
        .unwrap();
    assert_eq!(values(&dead), ["stale"]);
    assert_eq!(header(&dead[0], "x-dlq-reason"), Some("expired"));
    // Done in the queue once the copy is durable (the counters restart with the server, the
    // depth does not).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = c.queue_stats("jobs").unwrap();
        if stats[0].depth == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{stats:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

// Proves: with strict priority, a consumer is never handed a lower level while a higher one is
// waiting, with four consumers receiving concurrently (each consumer's own sequence of levels
// never rises: every message was there before the first receive and all are acked, so a rise
// would mean the higher one was passed over), and every message is delivered exactly once.
#[test]
fn strict_priority_order_under_concurrent_consumers() {
    const PER_LEVEL: usize = 600;
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(dir.path());
    let a = server.addr.clone();
    cli(
        &a,
        &[
            "queue",
            "create",
            "urgent",
            "--no-dlq",
            "--priority-levels",
            "3",
            "--strict-priority",
        ],
        "",
    );
    let c = server.client();
    // Levels interleaved in the log: 0, 1, 2, 0, 1, 2, ...
    for _ in 0..PER_LEVEL / 50 {
        for level in 0..3u8 {
            let values = (0..50)
                .map(|i| format!("{level}-{i}").into_bytes())
                .collect();
            let options = SendOptions {
                priority: Some(level),
                ..SendOptions::default()
            };
            c.queue_send("urgent", 0, values, options).unwrap();
        }
    }
    // Scanned into the queue's window before anyone receives (priorities apply among the
    // messages in the window; docs/semantics.md, "Priorities").
    assert_eq!(
        c.queue_stats("urgent").unwrap()[0].depth,
        3 * PER_LEVEL as u64
    );
    let addr = Arc::new(a);
    let consumers: Vec<_> = (0..4)
        .map(|_| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let c = Client::connect(&addr, ClientConfig::default()).unwrap();
                let mut levels = Vec::new();
                let deadline = Instant::now() + Duration::from_secs(60);
                while Instant::now() < deadline {
                    let got = c
                        .queue_receive("urgent", None, 16, None, Duration::from_millis(300))
                        .unwrap();
                    if got.is_empty() {
                        break;
                    }
                    levels.extend(got.iter().map(|m| m.priority));
                    let receipts: Vec<_> = got.iter().map(QueueMessage::receipt).collect();
                    c.queue_ack("urgent", &receipts).unwrap();
                }
                levels
            })
        })
        .collect();
    let mut total = [0usize; 3];
    for t in consumers {
        let levels = t.join().unwrap();
        assert!(
            levels.windows(2).all(|w| w[0] >= w[1]),
            "a consumer got a lower level before a higher one: {levels:?}"
        );
        for l in levels {
            total[usize::from(l)] += 1;
        }
    }
    assert_eq!(total, [PER_LEVEL; 3], "each message exactly once");
}
