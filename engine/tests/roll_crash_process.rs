//! Segment rolls off the write path in a real engine (docs/storage.md, "Segment rolls"): a
//! child process (this test binary run again, `ROLL_CRASH_CHILD` set) produces durable batches
//! through several rolls of 64 KiB segments, with the next segment prepared ahead and the
//! sealed ones synced by seal jobs, armed with `storage::crash_points::arm(Some(n))`, which
//! aborts it before its n-th durable storage step. For n = 0, 1, 2, ... until the child
//! completes, the parent opens the directory and checks: the engine starts, every acknowledged
//! batch is there with its bytes, what is there is a prefix of what was produced, and no
//! prepared file is left. Process crashes only (the page cache survives); power loss at each
//! step is covered on the crash image by `segment_roll_crash.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use shardline_engine::batch::{self, BatchBuilder};
use shardline_engine::{Acks, Engine, EngineConfig, FetchRequest, TopicConfig};

const CHILD_ENV: &str = "ROLL_CRASH_CHILD";
const DONE_MARK: &str = "ROLLS-DONE";
const TOPIC: &str = "rolls";
/// Batches the child produces: 8 KiB each, so 64 KiB segments roll about every 8.
const BATCHES: usize = 22;
/// More steps than the child takes: reaching it means the loop never saw completion.
const STEPS_MAX: u64 = 600;

fn config(dir: &Path) -> EngineConfig {
    let mut c = EngineConfig::with_data_dir(dir);
    c.shards = 1;
    c.pin_shards = false;
    c.io_memory_bytes = 512 << 10;
    c.topic_defaults.segment_bytes = 64 << 10;
    c.topic_defaults.preallocate_bytes = 16 << 10;
    c
}

fn value(i: usize) -> Vec<u8> {
    (0..8000).map(|j| (i * 31 + j * 7) as u8).collect()
}

/// The child: produces the batches one at a time with durable acks, printing each ack.
#[test]
fn child_process_entry() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return; // an ordinary run of the test binary: nothing to do
    };
    let (steps, dir) = spec.split_once('|').unwrap();
    let steps: u64 = steps.parse().unwrap();
    let e = Engine::open(config(Path::new(dir))).unwrap();
    assert!(
        shardline_engine::storage::crash_points::arm(Some(steps)),
        "crash points are compiled out (release build)"
    );
    let mut out = std::io::stdout();
    for i in 0..BATCHES {
        let mut b = BatchBuilder::new();
        b.push(batch::now_us(), None, value(i), Vec::new());
        let ack = e
            .produce(TOPIC, 0, b.build().unwrap(), Acks::Durable)
            .unwrap()
            .unwrap();
        writeln!(out, "ACK {i} {}", ack.last_offset).unwrap();
        out.flush().unwrap();
    }
    shardline_engine::storage::crash_points::arm(None);
    println!("{DONE_MARK}");
    std::process::exit(0);
}

/// Runs the child armed at `steps`; returns (completed, acknowledged batches).
fn run_child(steps: u64, dir: &Path) -> (bool, usize) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["child_process_entry", "--exact", "--nocapture"])
        .env(CHILD_ENV, format!("{steps}|{}", dir.display()))
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let done = stdout.contains(DONE_MARK);
    assert!(
        done || stderr.contains("crash point: aborting"),
        "step {steps}: the child neither completed nor crashed at a crash point\n\
         stdout: {stdout}\nstderr: {stderr}"
    );
    let acked = stdout.lines().filter(|l| l.starts_with("ACK ")).count();
    (done, acked)
}

/// The values of partition 0, fetched from offset 0 to the high watermark.
fn values(e: &Engine) -> Vec<Vec<u8>> {
    let hw = e.describe_partition(TOPIC, 0).unwrap().high_watermark;
    let mut out = Vec::new();
    let mut offset = 0;
    // Bounded: every fetch below the high watermark returns at least one record.
    for _ in 0..=hw {
        if offset >= hw {
            break;
        }
        let r = e.fetch(FetchRequest::new(TOPIC, 0, offset)).unwrap();
        for chunk in &r.chunks {
            for b in batch::split_batches(chunk).unwrap() {
                let (h, recs) = batch::decode(b).unwrap();
                for (k, rec) in recs.into_iter().enumerate() {
                    if h.base_offset + k as u64 >= offset {
                        out.push(rec.value);
                    }
                }
            }
        }
        assert!(r.next_offset > offset, "fetch made no progress");
        offset = r.next_offset;
    }
    out
}

#[test]
fn durable_produce_through_rolls_survives_a_crash_at_every_step() {
    if !cfg!(debug_assertions) {
        eprintln!("skipped: crash points are compiled out of release builds");
        return;
    }
    let started = Instant::now();
    let root = tempfile::tempdir().unwrap();
    let template = root.path().join("template");
    {
        let e = Engine::open(config(&template)).unwrap();
        e.create_topic(TOPIC, TopicConfig::with_partitions(1))
            .unwrap();
        e.shutdown().unwrap();
    }
    for steps in 0..STEPS_MAX {
        let dir: PathBuf = root.path().join(format!("run{steps}"));
        copy_dir(&template, &dir);
        let (done, acked) = run_child(steps, &dir);
        if done {
            // 22 batches fill two segments (8 each) and 6/8 of a third: its successor was
            // prepared (the job starts with the file's create, two durable produces earlier).
            assert!(
                tree_has(&dir.join("topics"), |n| n.starts_with("prepared-")),
                "the engine prepared no next segment"
            );
        }
        let e = Engine::open(config(&dir))
            .unwrap_or_else(|err| panic!("crash at step {steps}: no start: {err}"));
        let got = values(&e);
        assert!(
            got.len() >= acked,
            "crash at step {steps}: {acked} batches acknowledged, {} found",
            got.len()
        );
        for (i, v) in got.iter().enumerate() {
            assert!(*v == value(i), "crash at step {steps}: record {i} differs");
        }
        e.shutdown().unwrap();
        drop(e);
        let part = dir.join("topics");
        assert!(
            !tree_has(&part, |n| n.starts_with("prepared-")),
            "crash at step {steps}: a prepared file survived the open"
        );
        std::fs::remove_dir_all(&dir).unwrap();
        if done {
            eprintln!(
                "crashed at each of {steps} steps, then completed ({:?})",
                started.elapsed()
            );
            assert!(
                got.len() == BATCHES,
                "a completed child's batches are all there"
            );
            return;
        }
    }
    panic!("the child did not complete within {STEPS_MAX} steps");
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

fn tree_has(dir: &Path, pred: impl Fn(&str) -> bool + Copy) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        pred(&name) || (e.file_type().is_ok_and(|t| t.is_dir()) && tree_has(&e.path(), pred))
    })
}
