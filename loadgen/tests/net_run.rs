//! The `shardline` network driver: a real server (`shardline_net::server::Server`, two shards)
//! on 127.0.0.1 with an ephemeral port, loaded by the real `shardline-loadgen` binary with
//! `--addr` for a couple of seconds. Every acknowledged message must come back exactly once and
//! in order per partition (offsets and sequence numbers), and the JSON must carry every field.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use common::{check_run, read_json, run, short_network_run};
use shardline_engine::EngineConfig;
use shardline_net::server::{Server, ServerConfig};

fn start_server(dir: &std::path::Path) -> Server {
    let mut e = EngineConfig::with_data_dir(dir);
    e.shards = 2;
    e.pin_shards = false;
    e.io_memory_bytes = 512 << 10;
    let s = ServerConfig {
        listen: "127.0.0.1:0".into(),
        ..ServerConfig::default()
    };
    Server::start(e, s).unwrap()
}

#[test]
fn durable_and_leader_runs_over_the_network_receive_every_acked_message() {
    let data = tempfile::tempdir().unwrap();
    let server = start_server(data.path());
    let addr = server.addr().to_string();
    let out_dir = tempfile::tempdir().unwrap();
    for acks in ["durable", "leader"] {
        let json = out_dir.path().join(format!("{acks}.json"));
        let args = short_network_run("shardline", &addr, &json, acks);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run(&args);
        assert!(out.status.success(), "{acks}: exit {:?}", out.status.code());
        let v = read_json(&json);
        check_run(&v, "shardline");
        assert_eq!(v["workload"]["acks"], acks);
        let durability = v["durability"].as_str().unwrap();
        assert!(durability.starts_with(acks), "{durability}");
    }
    // The second run recreated the topic: its consumers saw only their own run's messages
    // (check_run found no duplicates or gaps).
    server.shutdown().unwrap();
}

#[test]
fn nothing_listening_is_a_clear_error() {
    let port = common::free_port().to_string();
    let addr = format!("127.0.0.1:{port}");
    let out = run(&["--addr", &addr, "--duration", "1s"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot connect"), "{stderr}");
}
