//! The peer drivers against real servers: `redis-server` (AOF, `appendfsync always`) and
//! `nats-server` (JetStream, file storage), each started here on 127.0.0.1 with an ephemeral
//! port and a temporary data directory, and killed by PID afterwards. A couple of seconds of
//! the same workload as the Shardline tests: every acknowledged message comes back exactly
//! once and in order per partition, and the result states the broker's fsync setting.
//! Skipped, with the reason printed, when a server binary is not installed (.ci/run installs
//! both from Debian's packages).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use common::{check_run, have, read_json, run, short_network_run};

fn load(driver: &str, addr: &str, acks: &str) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("run.json");
    let args = short_network_run(driver, addr, &json, acks);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run(&args);
    assert!(
        out.status.success(),
        "{driver}: exit {:?}",
        out.status.code()
    );
    let v = read_json(&json);
    check_run(&v, driver);
    v
}

#[test]
fn redis_streams_receive_every_acked_message() {
    if !have("redis-server") {
        return;
    }
    let server = common::start_redis("always");
    let v = load("redis", &server.addr, "durable");
    assert!(
        v["durability"]
            .as_str()
            .unwrap()
            .contains("appendfsync=always"),
        "{}",
        v["durability"]
    );
    // A second run on the same server starts from empty streams.
    let v = load("redis", &server.addr, "durable");
    assert_eq!(v["duplicates"], 0);
}

#[test]
fn nats_jetstream_receives_every_acked_message() {
    if !have("nats-server") {
        return;
    }
    let server = common::start_nats();
    let v = load("nats", &server.addr, "durable");
    assert!(
        v["durability"].as_str().unwrap().contains("page cache"),
        "{}",
        v["durability"]
    );
    // Offsets come from stream sequences: dense per partition, so gaps would show.
    assert_eq!(v["gaps"], 0);
    let v = load("nats", &server.addr, "leader");
    assert_eq!(v["duplicates"], 0);
}
