//! The network crates' one-way layering (issue 13; docs/architecture.md), read from the real
//! crate graph (`cargo metadata`), following normal dependencies only (dev- and
//! build-dependencies do not ship in a library):
//!
//! - `shardline-protocol` (the sans-IO codec) reaches neither the engine nor glommio nor aes-gcm,
//!   and does not depend on the client or the server built on top of it;
//! - `shardline-client` reaches neither the engine nor glommio nor aes-gcm (nor the server).
//!
//! Positive controls (the server does reach the engine and glommio; the client reaches the
//! protocol) make sure an empty or misread graph cannot pass.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeSet, HashMap};
use std::process::Command;

use serde_json::Value;

/// Package name -> names of its normal dependencies, for the host platform.
fn normal_dependency_graph() -> HashMap<String, BTreeSet<String>> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = Command::new(rustc).arg("-vV").output().expect("rustc -vV");
    let version = String::from_utf8(version.stdout).expect("utf-8");
    let host = version
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("rustc -vV names the host");
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--filter-platform",
            host,
        ])
        .args(["--manifest-path", manifest])
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata is JSON");
    let name_of: HashMap<&str, &str> = meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    let mut graph = HashMap::new();
    for node in meta["resolve"]["nodes"].as_array().expect("resolve.nodes") {
        let deps = node["deps"]
            .as_array()
            .expect("deps")
            .iter()
            .filter(|d| {
                d["dep_kinds"]
                    .as_array()
                    .expect("dep_kinds")
                    .iter()
                    .any(|k| k["kind"].is_null())
            })
            .map(|d| name_of[d["pkg"].as_str().unwrap()].to_string())
            .collect();
        graph.insert(name_of[node["id"].as_str().unwrap()].to_string(), deps);
    }
    graph
}

/// Every package `root` reaches through normal dependencies (itself excluded).
fn reachable(graph: &HashMap<String, BTreeSet<String>>, root: &str) -> BTreeSet<String> {
    assert!(
        graph.contains_key(root),
        "{root} is not in the workspace graph"
    );
    let mut seen = BTreeSet::new();
    let mut todo: Vec<&str> = vec![root];
    while let Some(p) = todo.pop() {
        for d in graph.get(p).into_iter().flatten() {
            if seen.insert(d.clone()) {
                todo.push(d);
            }
        }
    }
    seen
}

fn assert_none_of(graph: &HashMap<String, BTreeSet<String>>, root: &str, forbidden: &[&str]) {
    let reach = reachable(graph, root);
    let bad: Vec<&&str> = forbidden.iter().filter(|f| reach.contains(**f)).collect();
    assert!(
        bad.is_empty(),
        "{root} must not depend (normal dependencies, transitively) on {bad:?}; it reaches {reach:?}"
    );
}

#[test]
fn protocol_and_client_do_not_reach_the_engine_or_the_runtime() {
    let graph = normal_dependency_graph();
    assert_none_of(
        &graph,
        "shardline-protocol",
        &[
            "shardline-engine",
            "glommio",
            "aes-gcm",
            "shardline-client",
            "shardline-server",
            "shardline-net",
        ],
    );
    assert_none_of(
        &graph,
        "shardline-client",
        &[
            "shardline-engine",
            "glommio",
            "aes-gcm",
            "shardline-server",
            "shardline-net",
        ],
    );
}

#[test]
fn the_graph_walk_sees_what_is_there() {
    let graph = normal_dependency_graph();
    let server = reachable(&graph, "shardline-server");
    for want in [
        "shardline-engine",
        "glommio",
        "shardline-protocol",
        "shardline-format",
    ] {
        assert!(server.contains(want), "server reaches {want}: {server:?}");
    }
    let client = reachable(&graph, "shardline-client");
    for want in ["shardline-protocol", "shardline-format", "rkyv"] {
        assert!(client.contains(want), "client reaches {want}: {client:?}");
    }
    let protocol = reachable(&graph, "shardline-protocol");
    assert!(protocol.contains("shardline-format"), "{protocol:?}");
}
