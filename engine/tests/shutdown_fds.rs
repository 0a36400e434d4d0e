//! File descriptors across engine shutdowns. Alone in its own test binary: tests in one binary
//! run on parallel threads of one process, and their engines' descriptors would be counted.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use shardline_engine::batch;
use shardline_engine::{Acks, Engine, EngineConfig, TopicConfig};

fn config(dir: &std::path::Path, shards: usize) -> EngineConfig {
    let mut c = EngineConfig::with_data_dir(dir);
    c.shards = shards;
    c.pin_shards = false;
    c.io_memory_bytes = 512 << 10;
    c
}

fn values_batch(prefix: &str, n: usize) -> bytes::Bytes {
    batch::batch_of_values((0..n).map(|i| format!("{prefix}-{i}"))).unwrap()
}

fn open_fds() -> Vec<String> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .map(|e| {
            std::fs::read_link(e.path())
                .map(|t| t.display().to_string())
                .unwrap_or_default()
        })
        .collect()
}

// Proves: an engine shut down gives back every file descriptor it opened (segments, indexes,
// io_uring rings), so an embedding program can close and reopen it without leaking. One
// exception, glommio's: each executor's wake-up eventfd outlives it (glommio issue #448, task
// headers keep its notifier alive), one per shard per engine lifetime; counted separately.
#[test]
fn shutdown_closes_every_file() {
    const EVENTFD: &str = "anon_inode:[eventfd]";
    let dir = tempfile::tempdir().unwrap();
    let others = |fds: &[String]| fds.iter().filter(|f| *f != EVENTFD).count();
    let eventfds = |fds: &[String]| fds.iter().filter(|f| *f == EVENTFD).count();
    let before = open_fds();
    for round in 0..3 {
        let e = Engine::open(config(dir.path(), 2)).unwrap();
        if round == 0 {
            e.create_topic("t", TopicConfig::with_partitions(64))
                .unwrap();
        }
        for p in 0..64 {
            e.produce("t", p, values_batch("x", 2), Acks::Durable)
                .unwrap();
        }
        e.shutdown().unwrap();
        drop(e);
        let after = open_fds();
        assert!(
            others(&after) <= others(&before),
            "round {round}: descriptors before {before:?}, after shutdown {after:?}"
        );
        assert!(
            eventfds(&after) <= eventfds(&before) + 2 * (round + 1) + 1,
            "round {round}: more eventfds than one per shard per engine: {after:?}"
        );
    }
}
