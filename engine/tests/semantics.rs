//! Messaging semantics through the embedding API on real O_DIRECT files: the idempotent
//! producer (duplicates answered with the original offsets, gaps and stale epochs refused, the
//! state rebuilt after a restart both from a snapshot and by replaying the log), producer-id
//! allocation, and consumer groups with durably committed offsets that survive a restart.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use bytes::Bytes;
use shardline_engine::batch::{BatchBuilder, ProducerInfo};
use shardline_engine::groups::OffsetCommit;
use shardline_engine::producer_ids::ProducerIdentity;
use shardline_engine::{Acks, Engine, EngineConfig, Error, OffsetSpec, TopicConfig};

fn config(dir: &std::path::Path, shards: usize) -> EngineConfig {
    let mut c = EngineConfig::with_data_dir(dir);
    c.shards = shards;
    c.pin_shards = false;
    c.io_memory_bytes = 512 << 10;
    c
}

fn idempotent_batch(id: ProducerIdentity, seq: u32, n: u32) -> Bytes {
    let mut b = BatchBuilder::new().producer(ProducerInfo {
        producer_id: id.producer_id,
        producer_epoch: id.epoch,
        base_sequence: seq,
    });
    for i in 0..n {
        b.push_value(format!("m-{}", seq + i));
    }
    b.build().unwrap()
}

fn offsets(e: &Engine, batch: Bytes) -> Result<(u64, u64), Error> {
    e.produce("t", 0, batch, Acks::Durable)
        .map(|a| a.map(|a| (a.base_offset, a.last_offset)).unwrap())
}

fn remove_snapshots(dir: &std::path::Path) -> usize {
    let mut removed = 0;
    for t in std::fs::read_dir(dir.join("topics")).unwrap().flatten() {
        for p in std::fs::read_dir(t.path()).unwrap().flatten() {
            for f in std::fs::read_dir(p.path()).unwrap().flatten() {
                if f.file_name().to_string_lossy().starts_with("producers-") {
                    std::fs::remove_file(f.path()).unwrap();
                    removed += 1;
                }
            }
        }
    }
    removed
}

#[test]
fn retried_batches_are_appended_once_and_answered_with_their_original_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(config(dir.path(), 2)).unwrap();
    e.create_topic("t", TopicConfig::with_partitions(1))
        .unwrap();
    let id = e.init_producer(None).unwrap();
    assert_ne!(id.producer_id, 0);
    assert_eq!(offsets(&e, idempotent_batch(id, 0, 3)).unwrap(), (0, 2));
    assert_eq!(offsets(&e, idempotent_batch(id, 3, 2)).unwrap(), (3, 4));
    // The retry of the first batch: nothing appended, the original offsets answered.
    assert_eq!(offsets(&e, idempotent_batch(id, 0, 3)).unwrap(), (0, 2));
    assert_eq!(e.list_offset("t", 0, OffsetSpec::Latest).unwrap(), 5);
    // A gap is refused, typed and not retriable.
    let gap = offsets(&e, idempotent_batch(id, 9, 1)).unwrap_err();
    assert!(
        matches!(
            gap,
            Error::OutOfOrderSequence {
                expected: 5,
                got: 9,
                ..
            }
        ),
        "{gap}"
    );
    assert!(!gap.is_retriable());
    assert_eq!(gap.code(), 200);
    // A new instance of the same producer fences the old one.
    let next = e.init_producer(Some(id)).unwrap();
    assert_eq!(
        (next.producer_id, next.epoch),
        (id.producer_id, id.epoch + 1)
    );
    assert_eq!(offsets(&e, idempotent_batch(next, 0, 1)).unwrap(), (5, 5));
    let fenced = offsets(&e, idempotent_batch(id, 5, 1)).unwrap_err();
    assert!(matches!(fenced, Error::ProducerFenced { .. }), "{fenced}");
    // Non-idempotent batches are never deduplicated.
    let plain = shardline_engine::batch::batch_of_values(["x"]).unwrap();
    assert_eq!(offsets(&e, plain.clone()).unwrap(), (6, 6));
    assert_eq!(offsets(&e, plain).unwrap(), (7, 7));
    e.shutdown().unwrap();
}

#[test]
fn producer_state_survives_restart_from_snapshot_and_from_log_replay() {
    let dir = tempfile::tempdir().unwrap();
    let id = {
        let e = Engine::open(config(dir.path(), 1)).unwrap();
        e.create_topic("t", TopicConfig::with_partitions(1))
            .unwrap();
        let id = e.init_producer(None).unwrap();
        for s in 0..4 {
            offsets(&e, idempotent_batch(id, s * 2, 2)).unwrap();
        }
        e.shutdown().unwrap();
        id
    };
    for replay in [false, true] {
        if replay {
            // As after a crash before any clean close: the state comes from the log alone.
            assert!(remove_snapshots(dir.path()) > 0);
        }
        let e = Engine::open(config(dir.path(), 1)).unwrap();
        assert_eq!(
            offsets(&e, idempotent_batch(id, 6, 2)).unwrap(),
            (6, 7),
            "replay {replay}"
        );
        assert_eq!(offsets(&e, idempotent_batch(id, 2, 2)).unwrap(), (2, 3));
        assert!(matches!(
            offsets(&e, idempotent_batch(id, 11, 1)),
            Err(Error::OutOfOrderSequence { expected: 8, .. })
        ));
        // Ids handed out before the restart are never handed out again.
        assert!(e.init_producer(None).unwrap().producer_id > id.producer_id);
        assert_eq!(e.list_offset("t", 0, OffsetSpec::Latest).unwrap(), 8);
        e.shutdown().unwrap();
    }
}

#[test]
fn committed_offsets_are_fenced_and_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let e = Engine::open(config(dir.path(), 2)).unwrap();
        e.create_topic("t", TopicConfig::with_partitions(4))
            .unwrap();
        let a = e.join_group("g", "t", "test", 10_000).unwrap();
        assert_eq!(a.partitions, vec![0, 1, 2, 3]);
        let commit = |p, o| OffsetCommit {
            partition: p,
            offset: o,
            metadata: String::new(),
        };
        e.commit_offsets(
            "g",
            "t",
            &a.member_id,
            a.generation,
            vec![commit(0, 10), commit(3, 7)],
        )
        .unwrap();
        e.commit_offsets("g", "t", &a.member_id, a.generation, vec![commit(0, 12)])
            .unwrap();
        // A second member: a keeps 0 and 1, and may no longer commit 2 once it released it.
        let b = e.join_group("g", "t", "test", 10_000).unwrap();
        let a2 = e.heartbeat_group("g", &a.member_id, &[0, 1, 2, 3]).unwrap();
        assert_eq!(a2.partitions.len(), 2);
        e.heartbeat_group("g", &a.member_id, &a2.partitions)
            .unwrap();
        let moved = *b.pending.first().unwrap();
        let refused = e
            .commit_offsets(
                "g",
                "t",
                &a.member_id,
                a.generation,
                vec![commit(moved, 99)],
            )
            .unwrap_err();
        assert!(
            matches!(refused, Error::IllegalGeneration { .. }),
            "{refused}"
        );
        assert!(matches!(
            e.commit_offsets("g", "t", "stranger", 0, vec![commit(0, 1)]),
            Err(Error::UnknownMember { .. })
        ));
        e.leave_group("g", &b.member_id).unwrap();
        let d = e.describe_group("g").unwrap();
        assert_eq!(d.members.len(), 1);
        e.shutdown().unwrap();
    }
    let e = Engine::open(config(dir.path(), 2)).unwrap();
    let got: Vec<(u32, u64)> = e
        .fetch_offsets("g", "t")
        .unwrap()
        .into_iter()
        .map(|(p, c)| (p, c.offset))
        .collect();
    assert_eq!(got, vec![(0, 12), (3, 7)]);
    // Internal topics are hidden from listings and cannot be deleted.
    assert!(e.list_topics().iter().all(|t| t.name == "t"));
    assert!(e.delete_topic("__offsets").is_err());
    e.shutdown().unwrap();
}

/// Offsets of the producer snapshots in every partition directory.
fn snapshot_offsets(dir: &std::path::Path) -> Vec<u64> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(dir.join("topics")).unwrap().flatten() {
        for p in std::fs::read_dir(t.path()).unwrap().flatten() {
            for f in std::fs::read_dir(p.path()).unwrap().flatten() {
                let name = f.file_name().to_string_lossy().into_owned();
                if let Some(o) = name
                    .strip_prefix("producers-")
                    .and_then(|n| n.strip_suffix(".snapshot"))
                {
                    out.push(o.parse().unwrap());
                }
            }
        }
    }
    out
}

// Proves: producer state is snapshotted while the partition runs, at each index checkpoint, so
// a crash replays only the batches since the last checkpoint (not the whole log since the last
// clean close or timer snapshot), and a copy of the directory taken at that point (what a
// SIGKILL leaves) still answers a retried batch with its original offsets.
#[test]
fn producer_state_is_snapshotted_at_index_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path(), 1);
    c.topic_defaults.checkpoint_interval_bytes = 256 << 10;
    c.retention_check_interval_ms = 3_600_000; // no timer snapshot during the test
    let e = Engine::open(c).unwrap();
    e.create_topic("t", TopicConfig::with_partitions(1))
        .unwrap();
    let id = e.init_producer(None).unwrap();
    let value = "x".repeat(1000);
    let batch = |seq: u32| {
        let mut b = BatchBuilder::new().producer(ProducerInfo {
            producer_id: id.producer_id,
            producer_epoch: id.epoch,
            base_sequence: seq,
        });
        for _ in 0..16 {
            b.push_value(value.clone());
        }
        b.build().unwrap()
    };
    // 64 batches of ~16 KiB = 1 MiB: four checkpoints.
    let mut last = (0, 0);
    for s in 0..64u32 {
        last = offsets(&e, batch(s * 16)).unwrap();
    }
    // The snapshot is written in the background after the checkpoint's flush (bounded wait).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while snapshot_offsets(dir.path())
        .iter()
        .max()
        .copied()
        .unwrap_or(0)
        < 512
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no producer snapshot near the log end: {:?}",
            snapshot_offsets(dir.path())
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // The directory as a crash would leave it (no clean close): copy it while the engine runs.
    // Background snapshot writes may rename or remove files meanwhile: those are skipped.
    let copy = tempfile::tempdir().unwrap();
    copy_tree(dir.path(), copy.path());
    e.shutdown().unwrap();
    let e = Engine::open(config(copy.path(), 1)).unwrap();
    assert_eq!(
        offsets(&e, batch(63 * 16)).unwrap(),
        last,
        "retry answered from state"
    );
    assert_eq!(e.list_offset("t", 0, OffsetSpec::Latest).unwrap(), 1024);
    e.shutdown().unwrap();
}

/// Copies a directory tree, skipping entries that vanish while it runs (a crash image of a
/// running engine).
fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        match e.file_type() {
            Ok(t) if t.is_dir() => copy_tree(&e.path(), &target),
            Ok(_) => match std::fs::copy(e.path(), &target) {
                Ok(_) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => panic!("copying {}: {err}", e.path().display()),
            },
            Err(_) => {}
        }
    }
}
