//! The bounded fault-injection run CI does (docs/reliability.md): the real server under load
//! (plain and idempotent producers, tail consumers, a consumer group, a work queue) through 10
//! SIGKILL/restart cycles and one of each other fault (pause longer than the group session,
//! torn tail, connection drops, delays, stalled consumers of every kind, a producer burst, a
//! full disk where mounting is possible), with every invariant checked after each; and the
//! harness's self-tests, which must catch acknowledged data cut away on purpose and the
//! duplicates of resends restamped with fresh sequence numbers.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::process::Command;

const TORTURE: &str = env!("CARGO_BIN_EXE_torture");

fn run(args: &[&str]) -> (Option<i32>, serde_json::Value, String) {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let json = dir.path().join("report.json");
    let out = Command::new(TORTURE)
        .args(args)
        .arg("--dir")
        .arg(dir.path())
        .arg("--json")
        .arg(&json)
        .output()
        .expect("running the torture binary");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let report = std::fs::read_to_string(&json)
        .map(|t| serde_json::from_str(&t).unwrap())
        .unwrap_or(serde_json::Value::Null);
    (out.status.code(), report, stderr)
}

#[test]
fn ten_kills_and_every_other_fault_violate_nothing() {
    let (code, r, stderr) = run(&["--kill-cycles", "10", "--disk-full", "--cycle-ms", "1000"]);
    assert_eq!(code, Some(0), "torture failed:\n{stderr}");
    let faults = &r["faults"];
    assert!(faults["Kill"].as_u64().unwrap() >= 10, "{faults}");
    for f in ["Pause", "Torn", "NetDrop", "NetDelay", "Stall", "Burst"] {
        assert!(
            faults[f].as_u64().unwrap_or(0) >= 1,
            "{f} missing: {faults}"
        );
    }
    assert!(r["violations"].as_array().unwrap().is_empty());
    let acked = r["acked_records"].as_u64().unwrap();
    assert!(
        acked > 1000,
        "too little load: {acked} records acknowledged"
    );
    // Each acknowledged record is found at least twice: the final scan and the one after a
    // clean restart (plus once per cycle while it was new).
    assert!(r["acked_records_verified"].as_u64().unwrap() >= 2 * acked);
    assert!(r["restarts"].as_array().unwrap().len() >= 11);
    assert!(r["peak_rss_bytes"].as_u64().unwrap() < r["rss_limit_bytes"].as_u64().unwrap());
    // Idempotent producers resent after the faults, and nothing was duplicated (the scans
    // above found no violation).
    let i = &r["idempotent"];
    assert!(i["batches_acked"].as_u64().unwrap() > 100, "{i}");
    assert!(
        i["resends"].as_u64().unwrap() > 0,
        "no resend was exercised: {i}"
    );
    // The group went through rejoins and still got every acknowledged record.
    let g = &r["groups"];
    assert_eq!(g["acked_records_undelivered"].as_u64(), Some(0), "{g}");
    assert_eq!(g["acked_records_delivered"].as_u64(), Some(acked), "{g}");
    assert!(g["member_pauses"].as_u64().unwrap() >= 1, "{g}");
    assert!(g["memberships"].as_u64().unwrap() > 3, "no rejoin: {g}");
    assert!(g["commits_checked"].as_u64().unwrap() > 0, "{g}");
    // Every message the queue's producer had acknowledged was acked or dead-lettered.
    let q = &r["queue"];
    assert!(q["produced_acked"].as_u64().unwrap() > 100, "{q}");
    assert_eq!(q["produced_acked_lost"].as_u64(), Some(0), "{q}");
    assert!(q["dead_letters"].as_u64().unwrap() > 0, "{q}");
    assert!(q["redelivered"].as_u64().unwrap() > 0, "{q}");
    assert!(q["consumer_stalls"].as_u64().unwrap() >= 1, "{q}");
    match r["disk_full"].as_object() {
        Some(d) => {
            assert!(d["disk_full_errors"].as_u64().unwrap() > 0);
            assert_eq!(d["other_errors"].as_u64(), Some(0));
            assert_eq!(d["writable_after_space_freed"].as_bool(), Some(true));
        }
        None => eprintln!(
            "disk-full phase skipped: {}",
            r["disk_full_skipped"].as_str().unwrap_or("?")
        ),
    }
}

/// A sabotaged run with `faults` must fail (exit 3) with a violation naming one of `expected`.
fn sabotage_is_caught(faults: &str, extra: &[&str], expected: &[&str]) {
    let mut args = vec![
        "--sabotage",
        "--faults",
        faults,
        "--cycles",
        "3",
        "--kill-cycles",
        "0",
        "--cycle-ms",
        "700",
    ];
    args.extend_from_slice(extra);
    let (code, r, stderr) = run(&args);
    assert_eq!(code, Some(3), "sabotage went unnoticed:\n{stderr}");
    let v = r["violations"].as_array().unwrap();
    assert!(
        v.iter()
            .any(|v| expected.iter().any(|e| v.as_str().unwrap().contains(e))),
        "{v:?}"
    );
}

#[test]
fn the_harness_catches_acknowledged_data_cut_away() {
    // Cut-away acknowledged data shows as records missing from the ledger's scan, or (when
    // the cut took an idempotent producer's acknowledged batches, so the broker's sequence
    // state went back with them) as that producer's next batch refused as out of sequence,
    // whichever the run reaches first.
    sabotage_is_caught(
        "torn",
        &[],
        &[
            "missing",
            "gone",
            "UNKNOWN_PRODUCER",
            "OUT_OF_ORDER_SEQUENCE",
        ],
    );
}

#[test]
fn the_harness_catches_duplicates_of_resends_with_fresh_sequences() {
    // Pauses outlast the request timeout, so requests in flight are answered late and resent;
    // under --sabotage a resend carries a new sequence number, so the broker appends it again.
    sabotage_is_caught(
        "pause",
        &["--queue-consumers", "0"],
        &["duplicate", "[idempotent]"],
    );
}
