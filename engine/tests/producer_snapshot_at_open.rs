//! Regression: producer state is rebuilt at open from the newest snapshot plus the log after
//! it, and snapshots were written only at clean close and on the 30 s retention timer. A server
//! that crashed again before that timer (the torture harness kills it every few seconds)
//! replayed its whole log at every start: restarts took 9-10 s with 5-6 GiB of log instead of
//! well under 2 s. An open that replayed more than `REPLAY_SNAPSHOT_BYTES` now writes a
//! snapshot at once, so the next start replays only what was written since.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use shardline_engine::batch::{BatchBuilder, ProducerInfo};
use shardline_engine::idempotence::REPLAY_SNAPSHOT_BYTES;
use shardline_engine::{Acks, Engine, EngineConfig, OffsetSpec, TopicConfig};

fn config(dir: &std::path::Path) -> EngineConfig {
    let mut c = EngineConfig::with_data_dir(dir);
    c.shards = 1;
    c.pin_shards = false;
    c.io_memory_bytes = 512 << 10;
    c
}

/// Offsets named by the producer snapshots of every partition directory.
fn snapshots(dir: &std::path::Path) -> Vec<u64> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(dir.join("topics")).unwrap().flatten() {
        for p in std::fs::read_dir(t.path()).unwrap().flatten() {
            for f in std::fs::read_dir(p.path()).unwrap().flatten() {
                let name = f.file_name().to_string_lossy().to_string();
                if let Some(rest) = name.strip_prefix("producers-") {
                    out.push(rest.split('.').next().unwrap().parse().unwrap());
                    std::fs::remove_file(f.path()).unwrap();
                }
            }
        }
    }
    out
}

#[test]
fn an_open_that_replays_much_of_the_log_writes_a_producer_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let batches = 2 * REPLAY_SNAPSHOT_BYTES / (64 << 10);
    let id = {
        let e = Engine::open(config(dir.path())).unwrap();
        e.create_topic("t", TopicConfig::with_partitions(1))
            .unwrap();
        let id = e.init_producer(None).unwrap();
        for i in 0..batches {
            let mut b = BatchBuilder::new().producer(ProducerInfo {
                producer_id: id.producer_id,
                producer_epoch: id.epoch,
                base_sequence: (i * 64) as u32,
            });
            for _ in 0..64 {
                b.push_value(vec![7u8; 1000]);
            }
            e.produce("t", 0, b.build().unwrap(), Acks::Durable)
                .unwrap();
        }
        e.shutdown().unwrap();
        id
    };
    // As after a crash before any snapshot: the clean close's snapshot is removed.
    assert!(!snapshots(dir.path()).is_empty());
    let log_end = batches * 64;
    {
        let e = Engine::open(config(dir.path())).unwrap();
        assert_eq!(e.list_offset("t", 0, OffsetSpec::Latest).unwrap(), log_end);
        // Written by the open itself, at the recovered log end (the engine is still running:
        // neither a close nor the 30 s timer wrote it).
        assert_eq!(snapshots(dir.path()), vec![log_end]);
        // The rebuilt state is right: the next sequence is accepted, a gap is not.
        let next = |seq: u32| {
            let mut b = BatchBuilder::new().producer(ProducerInfo {
                producer_id: id.producer_id,
                producer_epoch: id.epoch,
                base_sequence: seq,
            });
            b.push_value("x");
            e.produce("t", 0, b.build().unwrap(), Acks::Durable)
        };
        assert!(next((log_end + 5) as u32).is_err());
        assert!(next(log_end as u32).is_ok());
        e.shutdown().unwrap();
    }
}
