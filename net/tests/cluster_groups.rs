//! Consumer groups on a cluster of three real `shardline serve` processes (issue 14 item 5;
//! docs/replication.md, "Consumer groups and work queues on a cluster"): `__offsets` is a
//! replicated topic, a group's coordinator is the leader of its `__offsets` partition, and the
//! client follows it. A group consumer consumes half of a replicated topic and commits; the
//! coordinator node is SIGKILLed; the committed offsets are read back from the new coordinator
//! (the other survivor answers NOT_LEADER), and the same group consumer resumes from them and
//! consumes the rest: no record is lost, and it does not skip past the committed offsets.
//! Then two runs of the CLI's group consumer on the survivors split the topic between them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(unreachable_pub)]
#[path = "../../tests/src/cluster.rs"]
mod cluster;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use cluster::Cluster;
use shardline_net::client::{
    Acks, Client, ClientConfig, GroupConsumer, GroupConsumerConfig, OffsetSpec, Producer,
    ProducerConfig, ProducerRecord, TopicConfig,
};

const BIN: &str = env!("CARGO_BIN_EXE_shardline");
const TOPIC: &str = "events";
const GROUP: &str = "billing";
const PARTITIONS: u32 = 2;
const RECORDS: u64 = 200;
const NOT_LEADER: u16 = 20;

fn config() -> ClientConfig {
    ClientConfig {
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(3),
        ..ClientConfig::default()
    }
}

/// Waits (bounded) until node 1 sees a leader for every partition of `topic`.
fn wait_led(c: &Cluster, topic: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let led = Client::connect_node(&c.node(1).addr, config())
            .and_then(|cl| cl.describe_cluster(&[topic]))
            .ok()
            .and_then(|r| r.topics.into_iter().find(|t| t.name == topic))
            .is_some_and(|t| {
                !t.partitions.is_empty() && t.partitions.iter().all(|p| p.leader != 0)
            });
        if led {
            return;
        }
        assert!(Instant::now() < deadline, "{topic}: no leaders within 30 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The group's committed offsets as node `addr` answers them (no following).
fn offsets_on(addr: &str) -> Result<BTreeMap<u32, u64>, Option<u16>> {
    let cl = Client::connect_node(addr, config()).map_err(|_| None)?;
    cl.fetch_offsets(GROUP, TOPIC)
        .map(|o| o.into_iter().map(|o| (o.partition, o.offset)).collect())
        .map_err(|e| e.code())
}

/// The node that coordinates the group now, among `ids` (bounded: 20 s); the others must
/// answer NOT_LEADER.
fn coordinator(c: &Cluster, ids: &[u64]) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut answering = Vec::new();
        for &id in ids {
            match offsets_on(&c.node(id).addr) {
                Ok(_) => answering.push(id),
                Err(Some(NOT_LEADER) | None) => {}
                Err(Some(code)) => panic!("node {id} answered error code {code}"),
            }
        }
        if let [one] = answering[..] {
            return one;
        }
        assert!(
            Instant::now() < deadline,
            "no single coordinator within 20 s: {answering:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn produce_all(bootstrap: &str) {
    let client = Client::connect(bootstrap, config()).unwrap();
    let producer = Producer::new(
        client,
        ProducerConfig {
            acks: Acks::All,
            idempotent: true,
            ..ProducerConfig::default()
        },
    )
    .unwrap();
    let handles: Vec<_> = (0..RECORDS)
        .map(|id| {
            let p = (id % u64::from(PARTITIONS)) as u32;
            producer.send_record(ProducerRecord::new(TOPIC, format!("id-{id}")).partition(p))
        })
        .collect();
    for h in handles {
        h.wait().unwrap();
    }
    producer.close().unwrap();
}

/// Polls until `want` more records arrived or `done` holds (bounded: 40 s); returns
/// (partition, offset, value) of each.
fn consume(m: &mut GroupConsumer, want: usize, seen: &BTreeSet<String>) -> Vec<(u32, u64, String)> {
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut got = Vec::new();
    let mut union = seen.clone();
    let mut errors = 0u32;
    while got.len() < want && union.len() < RECORDS as usize {
        assert!(
            Instant::now() < deadline,
            "consumed {} of {want} in 40 s ({} distinct of {RECORDS} overall)",
            got.len(),
            union.len()
        );
        // Errors while the coordinator or a leader moves are retried by polling again.
        match m.poll(Duration::from_millis(100)) {
            Ok(Some(r)) => {
                let v = String::from_utf8(r.value).unwrap();
                union.insert(v.clone());
                got.push((r.partition, r.offset, v));
            }
            Ok(None) => {}
            Err(e) => {
                errors += 1;
                if errors <= 5 {
                    eprintln!("poll: {e}");
                }
            }
        }
    }
    got
}

/// Polls and commits until the group's committed offsets cover every record (bounded: 40 s).
/// A commit passes once the member rejoined the new coordinator (a commit under the old
/// membership is refused: UNKNOWN_MEMBER); it then owns positions at the end.
fn commit_everything(member: &mut GroupConsumer, client: &Client) {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        assert!(
            Instant::now() < deadline,
            "no full commit within 40 s after the failover"
        );
        let _ = member.poll(Duration::from_millis(100));
        if member.commit().is_err() {
            continue;
        }
        let total: u64 = client
            .fetch_offsets(GROUP, TOPIC)
            .unwrap()
            .iter()
            .map(|o| o.offset)
            .sum();
        if total == RECORDS {
            break;
        }
    }
}

/// `shardline consume TOPIC --group cli --count N` through the bootstrap list: its lines.
fn cli(bootstrap: &str, count: &str) -> (i32, Vec<String>) {
    let out = std::process::Command::new(BIN)
        .args([
            "--addr", bootstrap, "consume", TOPIC, "--group", "cli", "--count", count,
        ])
        .args(["--timeout-ms", "30000"])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .unwrap();
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    (out.status.code().unwrap_or(-1), lines)
}

#[test]
fn committed_offsets_and_a_group_consumer_survive_the_coordinators_sigkill() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::new(std::path::Path::new(BIN), dir.path(), 3).unwrap();
    c.start_all().unwrap();
    let admin = Client::connect(&c.bootstrap(), config()).unwrap();
    admin
        .create_replicated_topic(
            TOPIC,
            TopicConfig {
                partitions: PARTITIONS,
                ..TopicConfig::default()
            },
            3,
        )
        .unwrap();
    wait_led(&c, TOPIC);
    wait_led(&c, "__offsets");
    produce_all(&c.bootstrap());

    // Half of the records, then a commit through the coordinator.
    let mut member = GroupConsumer::new(
        Client::connect(&c.bootstrap(), config()).unwrap(),
        GroupConsumerConfig {
            auto_commit: false,
            session_timeout: Duration::from_secs(6),
            reset: OffsetSpec::Earliest,
            ..GroupConsumerConfig::new(GROUP, TOPIC)
        },
    )
    .unwrap();
    let first = consume(&mut member, (RECORDS / 2) as usize, &BTreeSet::new());
    member.commit().unwrap();
    let committed: BTreeMap<u32, u64> = admin
        .fetch_offsets(GROUP, TOPIC)
        .unwrap()
        .into_iter()
        .map(|o| (o.partition, o.offset))
        .collect();
    assert_eq!(
        committed.values().sum::<u64>(),
        first.len() as u64,
        "the commit covers exactly the records handed out"
    );

    // SIGKILL the coordinator: the next one has the commit, the other survivor names it.
    let coord = coordinator(&c, &[1, 2, 3]);
    c.kill(coord).unwrap();
    let survivors: Vec<u64> = (1..=3).filter(|&n| n != coord).collect();
    let next = coordinator(&c, &survivors);
    assert_eq!(offsets_on(&c.node(next).addr).unwrap(), committed);
    let fresh = Client::connect(&c.bootstrap(), config()).unwrap();
    let read_back: BTreeMap<u32, u64> = fresh
        .fetch_offsets(GROUP, TOPIC)
        .unwrap()
        .into_iter()
        .map(|o| (o.partition, o.offset))
        .collect();
    assert_eq!(read_back, committed, "the client follows the coordinator");

    // The same member rejoins at the new coordinator and consumes the rest from the commit.
    let seen: BTreeSet<String> = first.iter().map(|r| r.2.clone()).collect();
    let rest = consume(&mut member, RECORDS as usize, &seen);
    let all: BTreeSet<String> = seen
        .iter()
        .cloned()
        .chain(rest.iter().map(|r| r.2.clone()))
        .collect();
    assert_eq!(
        all.len(),
        RECORDS as usize,
        "every record consumed at least once"
    );
    for p in 0..PARTITIONS {
        let resumed = rest.iter().filter(|r| r.0 == p).map(|r| r.1).min();
        if let (Some(resumed), Some(&at)) = (resumed, committed.get(&p)) {
            assert!(
                resumed <= at,
                "partition {p}: resumed at {resumed}, past the committed {at}"
            );
        }
    }
    let old_id = member.member_id().to_string();
    commit_everything(&mut member, &fresh);
    assert_ne!(
        member.member_id(),
        old_id,
        "the member rejoined the new coordinator"
    );
    drop(member);

    // The CLI's group consumer on the two survivors: two runs split the topic between them.
    let (code, first_run) = cli(&c.bootstrap(), "50");
    assert_eq!(code, 0);
    let (code, second_run) = cli(&c.bootstrap(), "150");
    assert_eq!(code, 0);
    let runs: BTreeSet<&String> = first_run.iter().chain(&second_run).collect();
    assert_eq!(
        (first_run.len(), second_run.len(), runs.len()),
        (50, 150, RECORDS as usize),
        "the second run resumes where the first committed"
    );
    c.kill_all();
    eprintln!("cluster groups e2e took {:?}", started.elapsed());
}
