//! Kafka clients against a cluster of three real `shardline serve` processes, each with its own
//! Kafka listener (issue 15 on issue 14, docs/kafka.md "Clusters"): kcat's Metadata lists the
//! three brokers and each partition's leader as placed; confluent-kafka's admin client creates
//! topics through the controller (CreateTopics with a replication factor, one above the node
//! count refused), and a produce to an unknown topic auto-creates it replicated; an idempotent
//! acks=all producer writes unique ids to an R = 3 topic while the leader of a partition is
//! SIGKILLed and restarted; a group consumer bootstrapped from one node then reads every
//! acknowledged id exactly once, at its acknowledged offset, in order per partition. A raw
//! Produce or ListOffsets sent to a node that does not lead the partition gets
//! NOT_LEADER_OR_FOLLOWER; a ListOffsets to the leader with another `current_leader_epoch`
//! FENCED_LEADER_EPOCH or UNKNOWN_LEADER_EPOCH. kcat or confluent-kafka missing: the test is
//! skipped with a message (`.ci/run` installs both).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(unreachable_pub)]
#[path = "../../tests/src/cluster.rs"]
mod cluster;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cluster::Cluster;

const BIN: &str = env!("CARGO_BIN_EXE_shardline");
/// Ids the producer writes (at `RATE` a second: the stream lasts long enough to kill a leader
/// in the middle of it).
const IDS: u64 = 2_000;
const RATE: u64 = 250;
const PARTITIONS: i32 = 2;

fn installed(cmd: &str, args: &[&str]) -> bool {
    let ok = Command::new(cmd)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!(
            "SKIPPED: `{cmd} {}` failed: client not installed (.ci/run installs it)",
            args.join(" ")
        );
    }
    ok
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kafka/ck_cluster.py")
}

/// Three nodes, node `i` with its Kafka listener on `kafka[i - 1]`, links up.
fn start(dir: &Path) -> (Cluster, Vec<String>) {
    let mut c = Cluster::new(Path::new(BIN), dir, 3).unwrap();
    let kafka: Vec<String> = cluster::free_ports(3)
        .unwrap()
        .into_iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    // Auto-creation on a cluster goes through the controller, replicated.
    c.extra = vec!["--auto-create".to_string()];
    c.node_extra = kafka
        .iter()
        .map(|k| vec!["--kafka-listen".to_string(), k.clone()])
        .collect();
    c.start_all().unwrap();
    (c, kafka)
}

/// `kcat -L -J` against `broker` (one topic or all): the parsed document, None on failure.
fn kcat_metadata(broker: &str, topic: Option<&str>) -> Option<serde_json::Value> {
    let mut cmd = Command::new("kcat");
    cmd.args(["-b", broker, "-L", "-J", "-m", "5"]);
    if let Some(t) = topic {
        cmd.args(["-t", t]);
    }
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// A topic's partitions as `broker` lists them: (partition, leader, replicas, isr).
type Parts = Vec<(i64, i64, Vec<i64>, Vec<i64>)>;

fn partitions(meta: &serde_json::Value, topic: &str) -> Parts {
    let ids = |v: &serde_json::Value, key: &str| -> Vec<i64> {
        v[key]
            .as_array()
            .map(|a| a.iter().filter_map(|r| r["id"].as_i64()).collect())
            .unwrap_or_default()
    };
    meta["topics"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["topic"] == topic)
        .flat_map(|t| t["partitions"].as_array().cloned().unwrap_or_default())
        .map(|p| {
            (
                p["partition"].as_i64().unwrap_or(-1),
                p["leader"].as_i64().unwrap_or(-1),
                ids(&p, "replicas"),
                ids(&p, "isrs"),
            )
        })
        .collect()
}

/// Polls (bounded) `broker`'s Metadata of `topic` until every one of its `n` partitions has a
/// leader; returns them.
fn wait_leaders(broker: &str, topic: &str, n: usize) -> Parts {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(m) = kcat_metadata(broker, Some(topic)) {
            let p = partitions(&m, topic);
            if p.len() == n && p.iter().all(|(_, l, _, _)| *l > 0) {
                return p;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{broker}: no leader for every partition of {topic} within 20 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn python(args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg(script())
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ck_cluster.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A Python child whose stdout lines arrive on a channel; killed (by its PID) on drop.
struct Script {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Script {
    fn spawn(args: &[&str]) -> Script {
        let mut child = Command::new("python3")
            .arg(script())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in out.lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Script { child, lines }
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the producer reported: id -> (partition, offset), and the ids that failed.
#[derive(Default)]
struct Ledger {
    acked: BTreeMap<u64, (i64, i64)>,
    failed: Vec<String>,
    done: bool,
}

impl Ledger {
    fn take(&mut self, line: &str) {
        let w: Vec<&str> = line.split_whitespace().collect();
        match w.as_slice() {
            ["acked", id, p, o] => {
                let prev = self.acked.insert(
                    id.parse().unwrap(),
                    (p.parse().unwrap(), o.parse().unwrap()),
                );
                assert!(prev.is_none(), "id {id} acknowledged twice");
            }
            ["failed", ..] => self.failed.push(line.to_string()),
            ["done", ..] => self.done = true,
            _ => panic!("unexpected producer line {line:?}"),
        }
    }

    /// Reads producer lines until `until` holds (bounded by `within`).
    fn follow(&mut self, s: &Script, within: Duration, until: impl Fn(&Ledger) -> bool) -> bool {
        let deadline = Instant::now() + within;
        while !until(self) {
            let left = deadline.saturating_duration_since(Instant::now());
            match s.lines.recv_timeout(left) {
                Ok(l) => self.take(&l),
                Err(_) => return false,
            }
        }
        true
    }
}

#[test]
fn kafka_clients_on_a_three_node_cluster_survive_a_leader_kill() {
    if !installed("kcat", &["-V"]) || !installed("python3", &["-c", "import confluent_kafka"]) {
        return;
    }
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (mut c, kafka) = start(dir.path());
    let leader0 = metadata_and_topics(&kafka);

    // A raw Produce to a node that does not lead partition 0: NOT_LEADER_OR_FOLLOWER.
    let follower = [1i64, 2, 3].into_iter().find(|n| *n != leader0).unwrap();
    assert_eq!(
        raw_produce(&kafka[(follower - 1) as usize], "ids", 0),
        6,
        "produce to follower node {follower}"
    );
    assert_eq!(
        raw_produce(&kafka[(leader0 - 1) as usize], "ids", 0),
        0,
        "produce to the leader, node {leader0}"
    );

    // ListOffsets: the leader answers with its epoch and fences other epochs; a follower
    // answers NOT_LEADER_OR_FOLLOWER.
    let on_leader = &kafka[(leader0 - 1) as usize];
    let (code, epoch) = raw_list_offsets(on_leader, "ids", 0, -1);
    assert_eq!(code, 0);
    assert!(epoch > 0, "a Raft term: {epoch}");
    assert_eq!(raw_list_offsets(on_leader, "ids", 0, epoch).0, 0);
    assert_eq!(raw_list_offsets(on_leader, "ids", 0, epoch - 1).0, 74);
    assert_eq!(raw_list_offsets(on_leader, "ids", 0, epoch + 1).0, 76);
    let on_follower = &kafka[(follower - 1) as usize];
    assert_eq!(raw_list_offsets(on_follower, "ids", 0, -1).0, 6);

    let victim = u64::try_from(leader0).unwrap();
    let ledger = produce_killing(&mut c, &kafka, victim);
    consume_and_check(&kafka, &ledger);
    eprintln!(
        "{} ids acknowledged and read back; node {victim} killed and restarted; {:?} in all",
        ledger.acked.len(),
        started.elapsed()
    );
}

/// kcat's Metadata from node 1 lists the three brokers; CreateTopics through the controller
/// (R = 1 spread as placed, R = 4 refused, R = 3 led on every node's view). Returns the
/// leader of partition 0 of `ids`.
fn metadata_and_topics(kafka: &[String]) -> i64 {
    // Every node learns every node's Kafka address in the peer handshake.
    let deadline = Instant::now() + Duration::from_secs(20);
    let brokers = loop {
        let listed: BTreeSet<String> = kcat_metadata(&kafka[0], None)
            .and_then(|m| {
                m["brokers"].as_array().map(|b| {
                    b.iter()
                        .filter_map(|b| b["name"].as_str().map(str::to_string))
                        .collect()
                })
            })
            .unwrap_or_default();
        if listed.len() == 3 || Instant::now() > deadline {
            break listed;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let want: BTreeSet<String> = kafka.iter().cloned().collect();
    let listed: BTreeSet<String> = brokers
        .iter()
        .map(|b| b.split('/').next().unwrap().to_string())
        .collect();
    assert_eq!(listed, want, "node 1 lists the three Kafka listeners");

    // R = 1 spreads the partitions' replicas, so their leaders, over the three nodes
    // (placement); node 1 knows them all.
    assert_eq!(
        python(&["create", &kafka[1], "placed", "3", "1"]).trim(),
        "ok"
    );
    let placed = wait_leaders(&kafka[0], "placed", 3);
    let leaders: BTreeSet<i64> = placed.iter().map(|p| p.1).collect();
    assert_eq!(leaders, BTreeSet::from([1, 2, 3]), "{placed:?}");
    for (_, leader, replicas, _) in &placed {
        assert_eq!(replicas, &vec![*leader], "{placed:?}");
    }
    assert_eq!(
        python(&["create", &kafka[2], "too-wide", "1", "4"]).trim(),
        "error INVALID_REPLICATION_FACTOR"
    );
    assert_eq!(
        python(&["create", &kafka[0], "ids", &PARTITIONS.to_string(), "3"]).trim(),
        "ok"
    );
    for k in kafka {
        for (p, leader, mut replicas, isr) in wait_leaders(k, "ids", PARTITIONS as usize) {
            // Listed preferred leader first (leadership balance), so compare as a set.
            replicas.sort_unstable();
            assert_eq!(replicas, vec![1, 2, 3], "{k} partition {p}");
            assert!(isr.contains(&leader), "{k} partition {p}: isr {isr:?}");
        }
    }
    // A topic auto-created by a produce to node 2: replicated (3 = the default), led.
    let mut kcat = Command::new("kcat")
        .args([
            "-b",
            &kafka[1],
            "-P",
            "-t",
            "auto",
            "-X",
            "message.timeout.ms=20000",
        ])
        .stdin(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    kcat.stdin.take().unwrap().write_all(b"one\n").unwrap();
    assert!(
        kcat.wait().unwrap().success(),
        "kcat produced to an auto-created topic"
    );
    for (_, _, mut replicas, _) in wait_leaders(&kafka[0], "auto", 1) {
        replicas.sort_unstable();
        assert_eq!(replicas, vec![1, 2, 3]);
    }
    let ids = wait_leaders(&kafka[0], "ids", PARTITIONS as usize);
    ids.iter().find(|p| p.0 == 0).unwrap().1
}

/// The producer writes every id; node `victim` is SIGKILLed mid-stream and restarted. Every
/// id must be acknowledged.
fn produce_killing(c: &mut Cluster, kafka: &[String], victim: u64) -> Ledger {
    let producer = Script::spawn(&[
        "produce",
        &kafka.join(","),
        "ids",
        &PARTITIONS.to_string(),
        &IDS.to_string(),
        &RATE.to_string(),
    ]);
    let mut ledger = Ledger::default();
    assert!(
        ledger.follow(&producer, Duration::from_secs(20), |l| l.acked.len() >= 300),
        "300 ids acknowledged before the kill"
    );
    c.kill(victim).unwrap();
    let at_kill = ledger.acked.len();
    assert!(
        ledger.follow(&producer, Duration::from_secs(25), |l| l.acked.len()
            >= at_kill + 300),
        "the producer goes on after the leader's SIGKILL ({} acknowledged, failures {:?})",
        ledger.acked.len(),
        ledger.failed
    );
    c.spawn(victim).unwrap();
    assert!(
        ledger.follow(&producer, Duration::from_secs(50), |l| l.done),
        "the producer finishes ({} acknowledged)",
        ledger.acked.len()
    );
    assert!(ledger.failed.is_empty(), "{:?}", ledger.failed);
    assert_eq!(ledger.acked.len() as u64, IDS, "every id acknowledged");
    ledger
}

/// A group consumer bootstrapped from node 3 (the coordinator is found from any node) reads
/// every acknowledged id exactly once, at its acknowledged offset, in order per partition.
fn consume_and_check(kafka: &[String], ledger: &Ledger) {
    // The ids and the raw produce's one record.
    let expected = (IDS + 1).to_string();
    let consumer = Script::spawn(&["consume", &kafka[2], "ids", "billing", &expected, "40"]);
    let mut seen: BTreeMap<u64, Vec<(i64, i64)>> = BTreeMap::new();
    let mut per_partition: BTreeMap<i64, Vec<(i64, u64)>> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(l) = consumer.lines.recv_timeout(left) else {
            panic!("the consumer did not finish within 45 s");
        };
        let w: Vec<&str> = l.split_whitespace().collect();
        match w.as_slice() {
            ["done"] => break,
            ["rec", p, o, v] => {
                let (p, o): (i64, i64) = (p.parse().unwrap(), o.parse().unwrap());
                let Some(id) = v.strip_prefix("id-") else {
                    continue; // the raw produce's record
                };
                let id: u64 = id.parse().unwrap();
                seen.entry(id).or_default().push((p, o));
                per_partition.entry(p).or_default().push((o, id));
            }
            _ => {} // transient client errors are retried by the client
        }
    }
    for (id, at) in &ledger.acked {
        assert_eq!(
            seen.get(id).map(Vec::as_slice),
            Some(&[*at][..]),
            "id {id}: acknowledged at {at:?}, read at {:?}",
            seen.get(id)
        );
    }
    assert_eq!(
        seen.len(),
        ledger.acked.len(),
        "nothing unacknowledged read"
    );
    for (p, recs) in &per_partition {
        assert!(
            recs.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1),
            "partition {p}: ids in send order"
        );
    }
}

/// CRC-32C (Castagnoli), bitwise: the Kafka record batch checksum.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for b in data {
        crc ^= u32::from(*b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A Kafka record batch (magic 2) of one record with value `x`.
fn record_batch() -> Vec<u8> {
    // length 7 (zigzag 14), attributes, timestamp delta 0, offset delta 0, key -1 (zigzag 1),
    // value length 1 (zigzag 2), "x", no headers.
    let record = [14u8, 0, 0, 0, 1, 2, b'x', 0];
    let mut tail = Vec::new(); // from the attributes on: what the CRC covers
    tail.extend_from_slice(&0i16.to_be_bytes()); // attributes
    tail.extend_from_slice(&0i32.to_be_bytes()); // last offset delta
    tail.extend_from_slice(&1_700_000_000_000i64.to_be_bytes()); // base timestamp
    tail.extend_from_slice(&1_700_000_000_000i64.to_be_bytes()); // max timestamp
    tail.extend_from_slice(&(-1i64).to_be_bytes()); // producer id
    tail.extend_from_slice(&(-1i16).to_be_bytes()); // producer epoch
    tail.extend_from_slice(&(-1i32).to_be_bytes()); // base sequence
    tail.extend_from_slice(&1i32.to_be_bytes()); // records
    tail.extend_from_slice(&record);
    let mut b = Vec::new();
    b.extend_from_slice(&0i64.to_be_bytes()); // base offset
    let length = i32::try_from(4 + 1 + 4 + tail.len()).unwrap();
    b.extend_from_slice(&length.to_be_bytes());
    b.extend_from_slice(&(-1i32).to_be_bytes()); // partition leader epoch
    b.push(2); // magic
    b.extend_from_slice(&crc32c(&tail).to_be_bytes());
    b.extend_from_slice(&tail);
    b
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&i16::try_from(s.len()).unwrap().to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Sends one request (header v1, client id "raw", correlation id 42) and returns the response
/// body after the correlation id.
fn round_trip(broker: &str, api_key: i16, version: i16, body: &[u8]) -> Vec<u8> {
    let mut req = Vec::new();
    req.extend_from_slice(&api_key.to_be_bytes());
    req.extend_from_slice(&version.to_be_bytes());
    req.extend_from_slice(&42i32.to_be_bytes());
    put_str(&mut req, "raw");
    req.extend_from_slice(body);
    let mut s = TcpStream::connect(broker).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(&i32::try_from(req.len()).unwrap().to_be_bytes())
        .unwrap();
    s.write_all(&req).unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut r = vec![0u8; usize::try_from(i32::from_be_bytes(len)).unwrap()];
    s.read_exact(&mut r).unwrap();
    assert_eq!(&r[..4], &42i32.to_be_bytes());
    r.split_off(4)
}

/// ListOffsets v4 (latest) of one partition with `current_leader_epoch`: the partition's error
/// code and leader epoch.
fn raw_list_offsets(broker: &str, topic: &str, partition: i32, epoch: i32) -> (i16, i32) {
    let mut body = Vec::new();
    body.extend_from_slice(&(-1i32).to_be_bytes()); // replica id
    body.push(0); // isolation level
    body.extend_from_slice(&1i32.to_be_bytes());
    put_str(&mut body, topic);
    body.extend_from_slice(&1i32.to_be_bytes());
    body.extend_from_slice(&partition.to_be_bytes());
    body.extend_from_slice(&epoch.to_be_bytes());
    body.extend_from_slice(&(-1i64).to_be_bytes()); // latest
    let r = round_trip(broker, 2, 4, &body);
    // throttle, topics (1), name, partitions (1), index, error, timestamp, offset, epoch
    let name_len = usize::try_from(i16::from_be_bytes([r[8], r[9]])).unwrap();
    let at = 4 + 4 + 2 + name_len + 4;
    assert_eq!(&r[at..at + 4], &partition.to_be_bytes());
    let code = i16::from_be_bytes([r[at + 4], r[at + 5]]);
    let e = at + 6 + 8 + 8;
    (code, i32::from_be_bytes(r[e..e + 4].try_into().unwrap()))
}

/// Sends one Produce v3 (acks=-1) of one record to `broker` and returns the partition's error
/// code.
fn raw_produce(broker: &str, topic: &str, partition: i32) -> i16 {
    let mut body = Vec::new();
    body.extend_from_slice(&(-1i16).to_be_bytes()); // no transactional id
    body.extend_from_slice(&(-1i16).to_be_bytes()); // acks=all
    body.extend_from_slice(&10_000i32.to_be_bytes());
    body.extend_from_slice(&1i32.to_be_bytes());
    put_str(&mut body, topic);
    body.extend_from_slice(&1i32.to_be_bytes());
    body.extend_from_slice(&partition.to_be_bytes());
    let batch = record_batch();
    body.extend_from_slice(&i32::try_from(batch.len()).unwrap().to_be_bytes());
    body.extend_from_slice(&batch);
    let r = round_trip(broker, 0, 3, &body);
    // topics (1), name, partitions (1), index, error code, ...
    let name_len = usize::try_from(i16::from_be_bytes([r[4], r[5]])).unwrap();
    let at = 6 + name_len + 4;
    assert_eq!(&r[at..at + 4], &partition.to_be_bytes());
    i16::from_be_bytes([r[at + 4], r[at + 5]])
}
