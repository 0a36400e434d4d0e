//! Regression: a member whose session expired (it stopped polling, or the server lost the
//! group's state in a restart) rejoins under a new member id. Its old membership's partitions
//! were given to others meanwhile, who consumed and committed further. The member used to keep
//! its old positions for the partitions it was assigned again and commit them under its new id,
//! moving the group's committed offset back (and redelivering everything since). It must
//! instead start them at the committed offsets, as docs/semantics.md says. Found by the torture
//! harness (docs/reliability.md), whose stalled group member provokes exactly this.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::time::{Duration, Instant};

use shardline_engine::batch;
use shardline_net::client::{
    Acks, Client, ClientConfig, GroupConsumer, GroupConsumerConfig, OffsetSpec, TopicConfig,
};
use shardline_net::server::ServerConfig;

fn committed(c: &Client) -> u64 {
    c.fetch_offsets("g", "t")
        .unwrap()
        .iter()
        .find(|o| o.partition == 0)
        .map_or(0, |o| o.offset)
}

fn member(addr: &str) -> GroupConsumer {
    let client = Client::connect(addr, ClientConfig::default()).unwrap();
    let mut cfg = GroupConsumerConfig::new("g", "t");
    cfg.reset = OffsetSpec::Earliest;
    cfg.session_timeout = Duration::from_millis(500);
    cfg.max_poll_interval = Duration::from_millis(300);
    cfg.auto_commit_interval = Duration::from_millis(20);
    GroupConsumer::new(client, cfg).unwrap()
}

/// Polls until `n` records were handed out (bounded); returns their offsets.
fn take(m: &mut GroupConsumer, n: usize) -> Vec<u64> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut got = Vec::new();
    while got.len() < n {
        assert!(Instant::now() < deadline, "only {got:?}");
        if let Ok(Some(r)) = m.poll(Duration::from_millis(50)) {
            got.push(r.offset);
        }
    }
    got
}

#[test]
fn a_member_that_rejoins_starts_at_the_committed_offsets_not_its_old_positions() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::start(dir.path(), ServerConfig::default());
    let addr = server.addr().to_string();
    let admin = Client::connect(&addr, ClientConfig::default()).unwrap();
    let one = TopicConfig {
        partitions: 1,
        ..TopicConfig::default()
    };
    admin.create_topic("t", one).unwrap();
    let values = (0..200).map(|i| format!("m{i}"));
    admin
        .produce(
            "t",
            0,
            batch::batch_of_values(values).unwrap(),
            Acks::Durable,
        )
        .unwrap();

    let mut a = member(&addr);
    assert_eq!(take(&mut a, 10), (0..10).collect::<Vec<_>>());
    a.commit().unwrap();
    assert_eq!(committed(&admin), 10);
    // A stops polling: past its max poll interval it stops heartbeating, and the coordinator
    // expires it after its session timeout. Wait for that event, as DescribeGroup shows it.
    let a_id = a.member_id().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    while admin
        .describe_group("g")
        .unwrap()
        .members
        .iter()
        .any(|m| m.member_id == a_id)
    {
        assert!(Instant::now() < deadline, "A's session never expired");
        std::thread::sleep(Duration::from_millis(20)); // poll interval
    }
    let mut b = member(&addr);
    let got = take(&mut b, 50);
    assert_eq!(got[0], 10, "B starts at A's commit");
    b.close().unwrap();
    let by_b = committed(&admin);
    assert_eq!(by_b, 60);

    // A comes back, slowly (a record per 10 ms): first as a zombie of its old membership (its
    // commits are refused), then under a new member id once its heartbeat thread rejoined.
    // Whatever it hands out, the group's offset must never move back, and under its new id it
    // continues from B's commit.
    let old_id = a.member_id().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut first_after_rejoin = None;
    while Instant::now() < deadline && first_after_rejoin.is_none() {
        if let Ok(Some(r)) = a.poll(Duration::from_millis(50)) {
            if a.member_id() != old_id {
                first_after_rejoin = Some(r.offset);
            }
            // Pacing, not synchronisation: A consumes slowly on purpose (see above).
            std::thread::sleep(Duration::from_millis(10));
        }
        let now = committed(&admin);
        assert!(
            now >= by_b,
            "committed offset moved back from {by_b} to {now}"
        );
    }
    let first = first_after_rejoin.expect("A never consumed after rejoining");
    assert!(
        first >= by_b,
        "A rejoined and went on at {first}, below B's commit {by_b}"
    );
    for _ in 0..20 {
        let _ = a.poll(Duration::from_millis(20));
        let now = committed(&admin);
        assert!(
            now >= by_b,
            "committed offset moved back from {by_b} to {now}"
        );
    }
    drop(server);
}
