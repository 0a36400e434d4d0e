//! The bounded cluster torture run CI does (issue 14): `torture --nodes 3 --cycles 4`: two
//! SIGKILL + restart and two SIGSTOP + SIGCONT of partition leaders under an idempotent `acks
//! all` producer; every acknowledged id must be on every node once, at its offset, in order.

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
