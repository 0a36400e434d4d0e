//! Quotas and limits on a real server: a greedy producer is throttled (QUOTA_EXCEEDED with a
//! back-off time, and its accepted bytes stay within its rate plus the burst) while a second
//! principal producing below the rate at the same time keeps its rate with no refusal;
//! connections per address and topics/partitions per cluster are capped.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::time::{Duration, Instant};

use common::start;
use shardline_engine::batch;
use shardline_net::auth::acl::parse_resource;
use shardline_net::auth::{AclEntry, Operation, Permission, SecurityFile};
use shardline_net::client::{Acks, Client, ClientConfig, Credentials, TopicConfig, code};
use shardline_net::server::{AuthConfig, QuotaConfig, ServerConfig};

const RATE: u64 = 1 << 20; // 1 MiB/s per principal
const BURST_MS: u64 = 200;

#[test]
#[allow(
    clippy::too_many_lines,
    reason = "one end-to-end scenario, told in order"
)]
fn a_greedy_producer_is_throttled_while_another_keeps_its_rate() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = SecurityFile::default();
    let (_, greedy_token) = db.create_token("greedy", "").unwrap();
    let (_, polite_token) = db.create_token("polite", "").unwrap();
    let (resource, pattern_type, pattern) = parse_resource("cluster").unwrap();
    db.acls.push(AclEntry {
        principal: "*".into(),
        resource,
        pattern,
        pattern_type,
        operation: Operation::Admin,
        permission: Permission::Allow,
    });
    let file = dir.path().join("security.json");
    db.save(&file).unwrap();
    let server = start(
        &dir.path().join("data"),
        ServerConfig {
            auth: AuthConfig {
                enabled: true,
                file: Some(file),
                ..AuthConfig::default()
            },
            quotas: QuotaConfig {
                produce_bytes_per_s: Some(RATE),
                burst_ms: BURST_MS,
                ..QuotaConfig::default()
            },
            ..ServerConfig::default()
        },
    );
    let addr = server.addr().to_string();
    let connect = |token: &str| {
        let config = ClientConfig {
            credentials: Some(Credentials::Token(token.into())),
            ..ClientConfig::default()
        };
        Client::connect(&addr, config).unwrap()
    };
    let greedy = connect(&greedy_token);
    let polite = connect(&polite_token);
    let topic = TopicConfig {
        partitions: 1,
        ..TopicConfig::default()
    };
    greedy.create_topic("q", topic).unwrap();

    let run_for = Duration::from_secs(2);
    let big = batch::batch_of_values([vec![7u8; 64 << 10]]).unwrap();
    let small = batch::batch_of_values([vec![1u8; 16 << 10]]).unwrap();
    let started = Instant::now();
    let greedy_thread = {
        let big = big.clone();
        std::thread::spawn(move || {
            let (mut accepted, mut refused, mut back_off_seen) = (0u64, 0u64, false);
            while started.elapsed() < run_for {
                match greedy.produce("q", 0, big.clone(), Acks::Leader) {
                    Ok(_) => accepted += big.len() as u64,
                    Err(e) if e.code() == Some(code::QUOTA_EXCEEDED) => {
                        refused += 1;
                        back_off_seen |= e.to_string().contains("retry after");
                        // Greedy: ignores the advice, only avoids a hot spin (pacing under
                        // test, not synchronisation).
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(e) => panic!("greedy: {e}"),
                }
            }
            (accepted, refused, back_off_seen)
        })
    };
    // Polite: 16 KiB every 50 ms = 320 KiB/s, under the 1 MiB/s rate.
    let mut polite_sent = 0u64;
    let mut next = Instant::now();
    while started.elapsed() < run_for {
        polite
            .produce("q", 0, small.clone(), Acks::Leader)
            .unwrap_or_else(|e| panic!("the polite producer was refused: {e}"));
        polite_sent += 1;
        next += Duration::from_millis(50);
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            // The polite producer's rate is the behaviour under test.
            std::thread::sleep(wait);
        }
    }
    let elapsed = started.elapsed();
    let (accepted, refused, back_off_seen) = greedy_thread.join().unwrap();
    assert!(refused > 0, "the greedy producer was never throttled");
    assert!(back_off_seen, "the refusal must say how long to back off");
    let allowed =
        RATE as f64 * (elapsed.as_secs_f64() + BURST_MS as f64 / 1000.0) + big.len() as f64;
    assert!(
        (accepted as f64) <= allowed * 1.05,
        "greedy got {accepted} bytes in {elapsed:?}, allowed ~{allowed:.0}"
    );
    assert!(
        accepted as f64 >= RATE as f64 * 0.5,
        "throttled far below its rate: {accepted}"
    );
    let expected = (elapsed.as_millis() / 50) as u64;
    assert!(
        polite_sent + 2 >= expected,
        "polite sent {polite_sent} of {expected}"
    );
    server.shutdown().unwrap();
}

#[test]
fn connections_per_address_and_topic_limits() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        &dir.path().join("data"),
        ServerConfig {
            quotas: QuotaConfig {
                connections_per_address_max: 2,
                topics_max: Some(2),
                partitions_max: Some(3),
                ..QuotaConfig::default()
            },
            ..ServerConfig::default()
        },
    );
    let addr = server.addr().to_string();
    let config = ClientConfig {
        shard_aware: false,
        ..ClientConfig::default()
    };
    let a = Client::connect(&addr, config.clone()).unwrap();
    let b = Client::connect(&addr, config.clone()).unwrap();
    let e = Client::connect(&addr, config.clone()).unwrap_err();
    assert_eq!(e.code(), Some(code::LIMIT_EXCEEDED), "{e}");
    drop(b);
    // The slot is given back when the server sees the connection close: wait for that event
    // (the server's own count, bounded), then a new connection must be accepted.
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.connections() >= 2 {
        assert!(
            Instant::now() < deadline,
            "slot not released: {} connections",
            server.connections()
        );
        std::thread::sleep(Duration::from_millis(5)); // poll interval
    }
    let b = Client::connect(&addr, config.clone()).unwrap();
    let two = TopicConfig {
        partitions: 2,
        ..TopicConfig::default()
    };
    a.create_topic("one", two).unwrap();
    let e = a.create_topic("two", two).unwrap_err();
    assert_eq!(e.code(), Some(code::LIMIT_EXCEEDED), "partitions: {e}");
    let one = TopicConfig {
        partitions: 1,
        ..TopicConfig::default()
    };
    a.create_topic("two", one).unwrap();
    let e = b.create_topic("three", one).unwrap_err();
    assert_eq!(e.code(), Some(code::LIMIT_EXCEEDED), "topics: {e}");
    drop((a, b));
    server.shutdown().unwrap();
}

/// Fetch byte rate: once a principal (here: the client address, auth being off) has fetched
/// more than its burst, its next fetch is refused with a back-off time; after waiting that
/// long it is served again.
#[test]
fn fetch_rate_is_limited_per_principal() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        &dir.path().join("data"),
        ServerConfig {
            quotas: QuotaConfig {
                fetch_bytes_per_s: Some(1 << 20),
                burst_ms: 100,
                ..QuotaConfig::default()
            },
            ..ServerConfig::default()
        },
    );
    let client = Client::connect(&server.addr().to_string(), ClientConfig::default()).unwrap();
    let topic = TopicConfig {
        partitions: 1,
        ..TopicConfig::default()
    };
    client.create_topic("f", topic).unwrap();
    let big = batch::batch_of_values([vec![3u8; 512 << 10]]).unwrap();
    for _ in 0..4 {
        client.produce("f", 0, big.clone(), Acks::Durable).unwrap();
    }
    // 2 MiB in one fetch: far above the 100 KiB burst, so the account is in debt.
    let f = client.fetch("f", 0, 0, Duration::ZERO, 4 << 20).unwrap();
    assert!(f.chunks.iter().map(|c| c.len()).sum::<usize>() >= 2 << 20);
    let e = client.fetch("f", 0, 0, Duration::ZERO, 1024).unwrap_err();
    assert_eq!(e.code(), Some(code::QUOTA_EXCEEDED), "{e}");
    let text = e.to_string();
    let ms: u64 = text
        .split("retry after ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no back-off in {text}"));
    assert!(
        (1000..=2500).contains(&ms),
        "back-off {ms} ms for ~2 MiB of debt at 1 MiB/s"
    );
    // Waiting out the advised back-off is the behaviour under test, not synchronisation.
    std::thread::sleep(Duration::from_millis(ms + 50));
    client.fetch("f", 0, 0, Duration::ZERO, 1024).unwrap();
    drop(client);
    server.shutdown().unwrap();
}
