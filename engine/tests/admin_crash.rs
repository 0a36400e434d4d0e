//! Crash at every step of every admin operation (issue 16, docs/reliability.md "Admin
//! operations: the crash model"): each operation runs in a child process (this test binary run
//! again, `ADMIN_CRASH_CHILD` set) armed with `storage::crash_points::arm(Some(n))`, which
//! aborts the process before its n-th durable storage step (file create, write, truncate,
//! fsync, rename, directory sync, mkdir, rmdir). For n = 0, 1, 2, ... until the operation
//! completes, the parent then opens the data directory in-process and checks that it starts,
//! that the operation is either complete or without trace (topics, partitions, settings, data
//! of the other topics), that every partition listed serves a produce and a fetch, and that no
//! stray directory or temporary metadata file is left.
//!
//! Process crashes only (the page cache survives); power loss at each step is covered for the
//! metadata file by `metadata::tests` on the crash-image storage.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use shardline_engine::batch::{BatchBuilder, now_us};
use shardline_engine::{Acks, Engine, EngineConfig, FetchRequest, QueueConfig, TopicConfig};

const CHILD_ENV: &str = "ADMIN_CRASH_CHILD";
const DONE_MARK: &str = "ADMIN-OP-DONE";
/// More steps than any operation here takes: reaching it means the loop never saw completion.
const STEPS_MAX: u64 = 400;

fn config(dir: &Path) -> EngineConfig {
    let mut c = EngineConfig::with_data_dir(dir);
    c.shards = 2;
    c.pin_shards = false;
    c.io_memory_bytes = 512 << 10;
    c.topic_defaults.segment_bytes = 1 << 20;
    c.topic_defaults.preallocate_bytes = 0;
    c
}

fn queue_config(dlq: Option<&str>, partitions: u32) -> TopicConfig {
    TopicConfig {
        queue: Some(QueueConfig {
            dead_letter_topic: dlq.map(str::to_string),
            ..QueueConfig::default()
        }),
        ..TopicConfig::with_partitions(partitions)
    }
}

fn produce(e: &Engine, topic: &str, partition: u32, n: usize) {
    let mut b = BatchBuilder::new();
    for i in 0..n {
        b.push(now_us(), None, format!("v{i}").into_bytes(), vec![]);
    }
    e.produce(topic, partition, b.build().unwrap(), Acks::Durable)
        .unwrap_or_else(|err| panic!("produce to {topic}/{partition}: {err}"));
}

#[derive(Clone, Copy, Debug)]
enum Op {
    CreateTopic,
    DeleteTopic,
    AddPartitions,
    AlterRetention,
    CreateQueueWithDlq,
    DeleteQueue,
    DeleteDlq,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::CreateTopic => "create-topic",
            Op::DeleteTopic => "delete-topic",
            Op::AddPartitions => "add-partitions",
            Op::AlterRetention => "alter-retention",
            Op::CreateQueueWithDlq => "create-queue",
            Op::DeleteQueue => "delete-queue",
            Op::DeleteDlq => "delete-dlq",
        }
    }

    fn parse(s: &str) -> Op {
        [
            Op::CreateTopic,
            Op::DeleteTopic,
            Op::AddPartitions,
            Op::AlterRetention,
            Op::CreateQueueWithDlq,
            Op::DeleteQueue,
            Op::DeleteDlq,
        ]
        .into_iter()
        .find(|o| o.name() == s)
        .unwrap()
    }

    /// The state before the operation: topic `keep` (1 partition, 2 records) and, for the
    /// queue deletions, queue `q` with its dead-letter queue `q.dlq` (2 messages each).
    fn setup(self, e: &Engine) {
        e.create_topic("keep", TopicConfig::with_partitions(1))
            .unwrap();
        produce(e, "keep", 0, 2);
        if matches!(self, Op::DeleteQueue | Op::DeleteDlq) {
            e.create_queue("q", queue_config(Some("q.dlq"), 2)).unwrap();
            for p in 0..2 {
                produce(e, "q", p, 2);
                produce(e, "q.dlq", p, 2);
            }
        }
    }

    fn run(self, e: &Engine) {
        match self {
            Op::CreateTopic => drop(
                e.create_topic("t", TopicConfig::with_partitions(2))
                    .unwrap(),
            ),
            Op::DeleteTopic => e.delete_topic("keep").unwrap(),
            Op::AddPartitions => drop(e.add_partitions("keep", 3).unwrap()),
            Op::AlterRetention => e
                .set_retention("keep", Some(64 << 20), Some(3_600_000))
                .unwrap(),
            Op::CreateQueueWithDlq => {
                drop(e.create_queue("q", queue_config(Some("q.dlq"), 2)).unwrap());
            }
            Op::DeleteQueue => e.delete_topic("q").unwrap(),
            Op::DeleteDlq => e.delete_topic("q.dlq").unwrap(),
        }
    }
}

/// Partition count of `topic`, or `None` when it does not exist; every partition it has must
/// serve (its records intact: `records` each for the partitions that existed before) and take
/// a produce that a fetch then returns.
fn check_topic(e: &Engine, topic: &str, records: &[u64]) -> Option<usize> {
    let Ok(d) = e.describe_topic(topic) else {
        return None;
    };
    for p in 0..d.partitions.len() as u32 {
        let info = e
            .describe_partition(topic, p)
            .unwrap_or_else(|err| panic!("{topic}/{p} is listed but does not open: {err}"));
        let want = records.get(p as usize).copied().unwrap_or(0);
        assert_eq!(
            info.high_watermark, want,
            "{topic}/{p}: records lost or invented"
        );
        produce(e, topic, p, 1);
        let mut r = FetchRequest::new(topic, p, want);
        r.max_wait = Duration::ZERO;
        let got = e.fetch(r).unwrap();
        assert!(
            got.records >= 1,
            "{topic}/{p}: the new record does not read back"
        );
    }
    Some(d.partitions.len())
}

/// Checks what a start after a crash at some step of `op` finds (`done`: the operation
/// returned before the crash, so it must be complete).
fn check_after(op: Op, e: &Engine, done: bool, dir: &Path) {
    let keep = e.describe_topic("keep").map(|d| d.info);
    match op {
        Op::CreateTopic => {
            let t = check_topic(e, "t", &[]);
            assert!(t == Some(2) || (t.is_none() && !done), "topic t: {t:?}");
        }
        Op::DeleteTopic => {
            let k = check_topic(e, "keep", &[2]);
            assert!(k.is_none() || (k == Some(1) && !done), "keep: {k:?}");
        }
        Op::AddPartitions => {
            let k = check_topic(e, "keep", &[2]);
            assert!(k == Some(3) || (k == Some(1) && !done), "keep: {k:?}");
        }
        Op::AlterRetention => {
            let c = keep.unwrap().config;
            let r = (c.retention_bytes, c.retention_ms);
            let new = (Some(64 << 20), Some(3_600_000));
            assert!(r == new || (r == (None, None) && !done), "{r:?}");
        }
        Op::CreateQueueWithDlq => {
            let (q, dlq) = (check_topic(e, "q", &[]), check_topic(e, "q.dlq", &[]));
            assert!(
                (q == Some(2) && dlq == Some(2)) || (q.is_none() && dlq.is_none() && !done),
                "a queue and its DLQ are created together: q {q:?}, dlq {dlq:?}"
            );
            if q.is_some() {
                assert_eq!(e.queue_stats("q").unwrap().len(), 2);
            }
        }
        Op::DeleteQueue | Op::DeleteDlq => {
            let (gone, other) = match op {
                Op::DeleteQueue => ("q", "q.dlq"),
                _ => ("q.dlq", "q"),
            };
            let g = check_topic(e, gone, &[2, 2]);
            assert!(g.is_none() || (g == Some(2) && !done), "{gone}: {g:?}");
            if g.is_some() {
                assert_eq!(e.queue_stats(gone).unwrap().len(), 2);
            }
            assert_eq!(check_topic(e, other, &[2, 2]), Some(2), "{other} untouched");
            assert_eq!(e.queue_stats(other).unwrap().len(), 2);
        }
    }
    if !matches!(op, Op::DeleteTopic | Op::AddPartitions) {
        assert_eq!(check_topic(e, "keep", &[2]).map(|_| ()), Some(()));
    }
    // Nothing stray: one directory per topic of the metadata, no temporary metadata file.
    let meta = shardline_engine::metadata::load(dir).unwrap().unwrap();
    let mut want: Vec<String> = meta
        .topics
        .iter()
        .map(|(n, t)| format!("{n}-{}", t.id))
        .collect();
    want.sort();
    let mut have: Vec<String> = std::fs::read_dir(dir.join("topics"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    have.sort();
    assert_eq!(have, want, "topic directories against the metadata");
    let tmp = dir.join(format!("{}.tmp", shardline_engine::metadata::METADATA_FILE));
    assert!(!tmp.exists(), "a temporary metadata file is left");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// Runs `op` in a child process that aborts before its `steps`-th durable step; true when the
/// operation completed first.
fn run_child(op: Op, steps: u64, dir: &Path) -> bool {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["child_process_entry", "--exact", "--nocapture"])
        .env(
            CHILD_ENV,
            format!("{}|{steps}|{}", op.name(), dir.display()),
        )
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let done = stdout.contains(DONE_MARK);
    let crashed = stderr.contains("crash point: aborting");
    assert!(
        done || crashed,
        "{} at step {steps}: the child neither completed nor crashed at a crash point\n\
         stdout: {stdout}\nstderr: {stderr}",
        op.name()
    );
    done
}

/// The child: opens the prepared directory, arms the crash point, runs the operation and
/// reports completion; exits without a clean close (a crash after completion is allowed too).
#[test]
fn child_process_entry() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return; // an ordinary run of the test binary: nothing to do
    };
    let mut parts = spec.splitn(3, '|');
    let op = Op::parse(parts.next().unwrap());
    let steps: u64 = parts.next().unwrap().parse().unwrap();
    let dir = PathBuf::from(parts.next().unwrap());
    let e = Engine::open(config(&dir)).unwrap();
    assert!(
        shardline_engine::storage::crash_points::arm(Some(steps)),
        "crash points are compiled out (release build)"
    );
    op.run(&e);
    shardline_engine::storage::crash_points::arm(None);
    println!("{DONE_MARK}");
    std::process::exit(0);
}

fn crash_at_every_step(op: Op) {
    if !cfg!(debug_assertions) {
        eprintln!("skipped: crash points are compiled out of release builds");
        return;
    }
    let started = Instant::now();
    let root = tempfile::tempdir().unwrap();
    let template = root.path().join("template");
    {
        let e = Engine::open(config(&template)).unwrap();
        op.setup(&e);
        e.shutdown().unwrap();
    }
    for steps in 0..STEPS_MAX {
        let dir = root.path().join(format!("run{steps}"));
        copy_dir(&template, &dir);
        let done = run_child(op, steps, &dir);
        let e = Engine::open(config(&dir))
            .unwrap_or_else(|err| panic!("{} crash at step {steps}: no start: {err}", op.name()));
        check_after(op, &e, done, &dir);
        e.shutdown().unwrap();
        drop(e);
        std::fs::remove_dir_all(&dir).unwrap();
        if done {
            eprintln!(
                "{}: crashed at each of {steps} steps, then completed ({:?})",
                op.name(),
                started.elapsed()
            );
            assert!(steps > 0, "no crash point was reached");
            return;
        }
    }
    panic!("{} did not complete within {STEPS_MAX} steps", op.name());
}

// Proves (each of the tests below): a crash before any durable step of the operation leaves a
// data directory that starts, with the operation complete or without trace, nothing stray.
#[test]
fn create_topic_survives_a_crash_at_every_step() {
    crash_at_every_step(Op::CreateTopic);
}

#[test]
fn delete_topic_survives_a_crash_at_every_step() {
    crash_at_every_step(Op::DeleteTopic);
}

#[test]
fn add_partitions_survives_a_crash_at_every_step() {
    crash_at_every_step(Op::AddPartitions);
}

#[test]
fn retention_change_survives_a_crash_at_every_step() {
    crash_at_every_step(Op::AlterRetention);
}

#[test]
fn queue_create_with_its_dlq_survives_a_crash_at_every_step() {
    crash_at_every_step(Op::CreateQueueWithDlq);
}

#[test]
fn queue_delete_survives_a_crash_at_every_step() {
    crash_at_every_step(Op::DeleteQueue);
}

#[test]
fn dlq_delete_survives_a_crash_at_every_step() {
    crash_at_every_step(Op::DeleteDlq);
}
