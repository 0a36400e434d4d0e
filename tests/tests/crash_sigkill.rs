//! Acknowledged writes survive SIGKILL. A child process appends with `durable` acks and
//! reports every acknowledgement; the test kills it with SIGKILL at a random moment, reopens
//! the log in this process and checks that every batch acknowledged in *any* round so far is
//! readable byte-identical (same CRC, same records), that offsets are contiguous from 0, and that
//! no CRC-failing batch is ever returned. `CRASH_ROUNDS` (default 20) sets the number of rounds;
//! the seed is printed, and `CRASH_SEED` replays the kill timings.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::{RngExt, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use shardline_engine::batch;
use shardline_engine::{Engine, EngineConfig, FetchRequest};
use shardline_tests::{crash_batch_len, crash_value};

const PARTITIONS: u32 = 3;

#[derive(Debug, Clone, Copy)]
struct Acked {
    seq: u64,
    base: u64,
    last: u64,
    crc: u32,
}

fn parse_ack(line: &str) -> Option<(u32, Acked)> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() != 6 || f[0] != "ACK" {
        return None;
    }
    Some((
        f[1].parse().ok()?,
        Acked {
            seq: f[2].parse().ok()?,
            base: f[3].parse().ok()?,
            last: f[4].parse().ok()?,
            crc: f[5].parse().ok()?,
        },
    ))
}

/// Runs the writer until a random moment after its first ack, SIGKILLs it, returns its acks.
fn run_and_kill(dir: &std::path::Path, first_seq: u64, kill_after: Duration) -> Vec<(u32, Acked)> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_crash-writer"))
        .arg(dir)
        .arg(PARTITIONS.to_string())
        .arg(first_seq.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn crash-writer");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    // Wait (bounded) for the first acknowledgement, then let it run `kill_after` more.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(l) => {
                let is_ack = l.starts_with("ACK");
                lines.push(l);
                if is_ack {
                    break;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(_) => break,
        }
    }
    std::thread::sleep(kill_after);
    child.kill().expect("SIGKILL the writer"); // std's kill is SIGKILL on Unix
    let status = child.wait().expect("wait");
    assert!(!status.success(), "the writer must have died by the signal");
    reader.join().expect("reader");
    lines.extend(rx.try_iter());
    lines.iter().filter_map(|l| parse_ack(l)).collect()
}

fn verify(dir: &std::path::Path, acked: &BTreeMap<u32, Vec<Acked>>) -> usize {
    let mut cfg = EngineConfig::with_data_dir(dir);
    cfg.shards = 2;
    cfg.pin_shards = false;
    cfg.io_memory_bytes = 512 << 10;
    let engine = Engine::open(cfg).expect("reopen after SIGKILL");
    let mut checked = 0;
    for p in 0..PARTITIONS {
        // Read the whole partition: contiguous offsets, every batch passes its CRC.
        let mut batches: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        let mut offset = 0;
        loop {
            let r = engine
                .fetch(FetchRequest {
                    max_bytes: 64 << 10,
                    ..FetchRequest::new("crash", p, offset)
                })
                .expect("fetch");
            if r.records == 0 {
                break;
            }
            for chunk in &r.chunks {
                for b in batch::split_batches(chunk).expect("split") {
                    let h = batch::validate(b).expect("every served batch is valid");
                    assert_eq!(
                        h.base_offset, offset,
                        "offsets must be contiguous in partition {p}"
                    );
                    offset = h.next_offset();
                    batches.insert(h.base_offset, b.to_vec());
                }
            }
        }
        for a in acked.get(&p).into_iter().flatten() {
            let b = batches.get(&a.base).unwrap_or_else(|| {
                panic!("acked batch {a:?} of partition {p} is missing (log ends at {offset})")
            });
            let (h, recs) = batch::decode(b).expect("decode");
            assert_eq!(h.crc, a.crc, "acked batch {a:?} changed");
            assert_eq!(h.last_offset(), a.last);
            assert_eq!(recs.len(), crash_batch_len(a.seq));
            for (i, r) in recs.iter().enumerate() {
                assert_eq!(r.value, crash_value(a.seq, i), "record {i} of {a:?}");
            }
            checked += 1;
        }
    }
    engine.shutdown().expect("shutdown");
    checked
}

#[test]
fn acked_batches_survive_sigkill() {
    let rounds: u64 = std::env::var("CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("crash_sigkill: seed {seed} (CRASH_SEED={seed} replays the kill timings)");
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut acked: BTreeMap<u32, Vec<Acked>> = BTreeMap::new();
    let mut total_acks = 0;
    for round in 0..rounds {
        let kill_after = Duration::from_millis(rng.random_range(0..400));
        let acks = run_and_kill(dir.path(), round * 10_000_000, kill_after);
        total_acks += acks.len();
        for (p, a) in acks {
            acked.entry(p).or_default().push(a);
        }
        let checked = verify(dir.path(), &acked);
        assert_eq!(
            checked, total_acks,
            "round {round}: every acknowledged batch so far was checked"
        );
    }
    assert!(
        total_acks > 0,
        "the writer acknowledged nothing in {rounds} rounds"
    );
    eprintln!("crash_sigkill: {rounds} rounds, {total_acks} acknowledged batches verified");
}
