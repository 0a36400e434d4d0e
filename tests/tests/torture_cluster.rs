//! The bounded cluster torture runs CI does (issue 14). `torture --nodes 3 --cycles 4`: two
//! SIGKILL + restart and two SIGSTOP + SIGCONT of partition leaders under an idempotent `acks
//! all` producer; every acknowledged id must be on every node once, at its offset, in order.
//! `--net-faults --disk-full`: link faults through proxies and a follower's disk full (below).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::process::Command;

const TORTURE: &str = env!("CARGO_BIN_EXE_torture");

#[test]
fn three_nodes_through_leader_kills_and_pauses_lose_nothing() {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let json = dir.path().join("report.json");
    let out = Command::new(TORTURE)
        .args(["--nodes", "3", "--cycles", "4", "--dir"])
        .arg(dir.path())
        .arg("--json")
        .arg(&json)
        .output()
        .expect("running the torture binary");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "torture --nodes 3 failed:\n{stderr}"
    );
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(r["kills"], 2, "{r}");
    assert_eq!(r["pauses"], 2, "{r}");
    assert!(r["acked"].as_u64().unwrap() >= 500, "{r}");
    assert_eq!(r["violations"].as_array().unwrap().len(), 0, "{r}");
}

/// `torture --nodes 3 --cycles 0 --net-faults --disk-full`: a proxy on every node-to-node link
/// (latency, one direction dropping, resets, a partition holding a leader, one holding a
/// follower, no majority anywhere, healing), then the last node's tmpfs data directory fills
/// up while it follows, and is freed. Every acknowledged id must be on every node once, at its
/// offset, in order; no acknowledgement without a majority; the full follower falls behind,
/// stays up and catches up. Without root the disk-full phase is skipped with its reason.
#[test]
fn three_nodes_through_partitions_resets_and_a_full_follower_disk_lose_nothing() {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let json = dir.path().join("report.json");
    let out = Command::new(TORTURE)
        .args([
            "--nodes",
            "3",
            "--cycles",
            "0",
            "--net-faults",
            "--disk-full",
        ])
        .args(["--disk-full-mib", "64", "--dir"])
        .arg(dir.path())
        .arg("--json")
        .arg(&json)
        .output()
        .expect("running the torture binary");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "torture --nodes 3 --net-faults --disk-full failed:\n{stderr}"
    );
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(r["violations"].as_array().unwrap().len(), 0, "{r}");
    let net = &r["net"];
    assert_eq!(net["partitions"], 3, "{r}");
    assert_eq!(net["resets"], 3, "{r}");
    assert_eq!(net["acks_without_majority"], 0, "{r}");
    assert!(net["wire_bytes_dropped"].as_u64().unwrap() > 0, "{r}");
    assert!(r["acked"].as_u64().unwrap() >= 700, "{r}");
    if r["disk_full_skipped"].is_string() {
        eprintln!("disk-full phase skipped: {}", r["disk_full_skipped"]);
        return;
    }
    let d = &r["disk_full"];
    assert!(d["ballast_bytes"].as_u64().unwrap() > 0, "{r}");
    let f = d["follower_high_watermarks"].as_array().unwrap();
    let l = d["leader_high_watermarks"].as_array().unwrap();
    assert_eq!(f.len(), 2, "{r}");
    for (f, l) in f.iter().zip(l) {
        assert!(f.as_u64().unwrap() < l.as_u64().unwrap(), "{r}");
    }
}
