//! Encryption at rest through the real server: a topic matching `[server.encryption] topics`
//! is sealed on disk (the segment files contain none of the produced plaintext, while a plain
//! topic's files do, so the search can fail), consumers get plaintext through fetch and push;
//! after a restart with a wrong key, reads fail with DECRYPTION_FAILED instead of returning
//! garbage, and the right key reads again; without a key file the server refuses to start.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::engine_config;
use shardline_engine::batch;
use shardline_engine::crypto::Keyring;
use shardline_net::client::{
    Acks, Client, ClientConfig, Consumer, ConsumerConfig, OffsetSpec, TopicConfig, code,
};
use shardline_net::server::{EncryptionConfig, Server, ServerConfig};

const MARKER: &str = "PLAINTEXT-MARKER";

fn start(data: &Path, key_file: Option<&Path>) -> Result<Server, String> {
    let mut e = engine_config(data);
    e.encryption_key_file = key_file.map(Path::to_path_buf);
    let s = ServerConfig {
        listen: "127.0.0.1:0".into(),
        encryption: EncryptionConfig {
            topics: vec!["secret*".into()],
        },
        ..ServerConfig::default()
    };
    Server::start(e, s).map_err(|e| e.to_string())
}

fn key_file(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, Keyring::generate_file_text(1).unwrap()).unwrap();
    p
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn contains_marker(dir: &Path) -> bool {
    files(dir).iter().any(|f| {
        std::fs::read(f)
            .unwrap()
            .windows(MARKER.len())
            .any(|w| w == MARKER.as_bytes())
    })
}

fn topic_dir(data: &Path, topic: &str) -> PathBuf {
    std::fs::read_dir(data.join("topics"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{topic}-")))
        })
        .unwrap_or_else(|| panic!("no directory for {topic}"))
}

/// The values of partition 0, or `(error code, message)`.
fn fetch_values(client: &Client, topic: &str) -> Result<Vec<Vec<u8>>, (u16, String)> {
    let f = client
        .fetch(topic, 0, 0, Duration::ZERO, 16 << 20)
        .map_err(|e| (e.code().unwrap_or(0), e.to_string()))?;
    if f.error_code != code::NONE {
        return Err((f.error_code, f.error_message.unwrap_or_default()));
    }
    let mut values = Vec::new();
    for chunk in &f.chunks {
        for b in batch::split_batches(chunk).unwrap() {
            values.extend(batch::decode(b).unwrap().1.into_iter().map(|r| r.value));
        }
    }
    Ok(values)
}

fn produce_markers(client: &Client, topic: &str) {
    for i in 0..50 {
        let values = (0..10).map(|j| format!("{MARKER}-{i}-{j}").into_bytes());
        let b = batch::batch_of_values(values).unwrap();
        client.produce(topic, 0, b, Acks::Durable).unwrap();
    }
}

#[test]
fn segment_files_of_an_encrypted_topic_hold_no_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let key = key_file(dir.path(), "keys.json");
    let server = start(&data, Some(&key)).unwrap();
    let client = Client::connect(&server.addr().to_string(), ClientConfig::default()).unwrap();
    for t in ["secret-orders", "plain-orders"] {
        client.create_topic(t, one_partition()).unwrap();
        produce_markers(&client, t);
    }
    // Consumers get plaintext: fetch...
    let values = fetch_values(&client, "secret-orders").unwrap();
    assert_eq!(values.len(), 500);
    assert_eq!(values[499], format!("{MARKER}-49-9").into_bytes());
    // ...and push.
    let mut consumer = Consumer::new(client.clone(), ConsumerConfig::default()).unwrap();
    consumer
        .subscribe("secret-orders", 0, OffsetSpec::Earliest)
        .unwrap();
    let first = consumer
        .poll(Duration::from_secs(10))
        .unwrap()
        .expect("a record");
    assert_eq!(first.value, format!("{MARKER}-0-0").into_bytes());
    drop(consumer);
    drop(client);
    server.shutdown().unwrap();
    assert!(
        contains_marker(&topic_dir(&data, "plain-orders")),
        "the search must find plaintext where it is stored in clear"
    );
    assert!(
        !contains_marker(&topic_dir(&data, "secret-orders")),
        "plaintext found in the encrypted topic's files"
    );
}

#[test]
fn reading_with_a_wrong_key_is_an_error_not_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let right = key_file(dir.path(), "right.json");
    let wrong = key_file(dir.path(), "wrong.json");
    let server = start(&data, Some(&right)).unwrap();
    let client = Client::connect(&server.addr().to_string(), ClientConfig::default()).unwrap();
    client.create_topic("secret", one_partition()).unwrap();
    produce_markers(&client, "secret");
    drop(client);
    server.shutdown().unwrap();

    let server = start(&data, Some(&wrong)).unwrap();
    let client = Client::connect(&server.addr().to_string(), ClientConfig::default()).unwrap();
    let (c, message) = fetch_values(&client, "secret").unwrap_err();
    assert_eq!(c, code::DECRYPTION_FAILED, "{message}");
    assert!(message.contains("wrong key"), "{message}");
    // A subscription ends with the same code instead of pushing ciphertext.
    let mut consumer = Consumer::new(client.clone(), ConsumerConfig::default()).unwrap();
    consumer
        .subscribe("secret", 0, OffsetSpec::Earliest)
        .unwrap();
    let e = consumer.poll(Duration::from_secs(10)).unwrap_err();
    assert_eq!(e.code(), Some(code::DECRYPTION_FAILED), "{e}");
    drop(consumer);
    drop(client);
    server.shutdown().unwrap();

    let e = start(&data, None)
        .err()
        .expect("no key file: refuse to start");
    assert!(e.contains("encryption_key_file"), "{e}");

    let server = start(&data, Some(&right)).unwrap();
    let client = Client::connect(&server.addr().to_string(), ClientConfig::default()).unwrap();
    assert_eq!(fetch_values(&client, "secret").unwrap().len(), 500);
    drop(client);
    server.shutdown().unwrap();
}

fn one_partition() -> TopicConfig {
    TopicConfig {
        partitions: 1,
        ..TopicConfig::default()
    }
}
