//! Snapshots and `raft-log` rotation with real engines (issue 14; docs/replication.md,
//! "Snapshots"): engines in one process, each on its own data directory (real O_DIRECT
//! files), connected by a `PeerSink` that hands each node's messages to the others'
//! `deliver_peer_messages`.
//!
//! - A replica shut down while its peers commit more than the 1,024 entries they retain comes
//!   back, fetches the batches from the leader's partition log (a snapshot) and holds the
//!   same records at the same offsets.
//! - A replica shut down while the leader's retention deletes the segments it lacks restarts
//!   its partition log at the leader's log start and ends with the same batches at the same
//!   offsets from there, for a plain and an encrypted topic (each node with its own key).
//! - Under sustained produce a replica's `raft-log` stays bounded (rotated below the applied
//!   and fsynced index), and a restart reads only the retained entries.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::future::block_on;
use shardline_engine::batch::{self, BatchBuilder, ProducerInfo};
use shardline_engine::replication::disk::RaftDisk;
use shardline_engine::rt::StdFs;
use shardline_engine::{Acks, Engine, Error, FetchRequest, NodeId, OffsetSpec, TopicConfig};

mod common;
use common::{Net, config_with, start_with};

const TOPIC: &str = "snap";
/// The entries a replica retains for peers that lag (engine/src/broker/cluster.rs).
const RETAIN_ENTRIES: usize = 1024;
/// Value bytes of the catch-up scenario's batches (enough for the leader's `raft-log` to
/// rotate: the scenario waits for that).
const FILL: usize = 1000;
/// Node `n` of the cluster `nodes`, one shard (every partition on it).
fn start(net: &Arc<Net>, n: NodeId, nodes: &[NodeId], dir: &Path) -> Engine {
    start_with(net, n, nodes, config_with(dir, 1))
}

/// Batch `i` of one idempotent producer (sequence `i`), so that a retry after an error that
/// left the batch committed (`PartitionFailed` when leadership moved) is not stored twice.
fn batch_of(i: u64, fill: usize) -> Bytes {
    let mut b = BatchBuilder::new().producer(ProducerInfo {
        producer_id: 77,
        producer_epoch: 0,
        base_sequence: u32::try_from(i).unwrap(),
    });
    b.push_value(format!("{i}-{}", "x".repeat(fill)));
    b.build().unwrap()
}

/// Produces at `all` to whichever node leads, following NOT_LEADER (bounded: 10 s); returns
/// the leader.
fn produce(net: &Net, batch: &Bytes, hint: NodeId) -> NodeId {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut n = hint;
    let mut i = 0;
    loop {
        assert!(
            Instant::now() < deadline,
            "no leader accepted a batch in 10 s"
        );
        let up = net.up();
        if !up.contains(&n) {
            i += 1;
            n = up[i % up.len()];
        }
        match net.engine(n).produce(TOPIC, 0, batch.clone(), Acks::All) {
            Ok(_) => return n,
            Err(Error::NotLeader { leader, .. }) => match leader {
                Some(l) if up.contains(&l) => n = l,
                _ => {
                    i += 1;
                    n = up[i % up.len()];
                    std::thread::sleep(Duration::from_millis(20));
                }
            },
            Err(Error::PartitionFailed { .. } | Error::ShuttingDown) => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("produce to node {n}: {e}"),
        }
    }
}

/// Every batch of a node's partition log: base offset -> bytes (as fetched).
fn read_log(e: &Engine) -> BTreeMap<u64, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut offset = 0;
    loop {
        let r = e
            .fetch(FetchRequest {
                max_bytes: 1 << 20,
                ..FetchRequest::new(TOPIC, 0, offset)
            })
            .unwrap();
        if r.records == 0 {
            return out;
        }
        for chunk in &r.chunks {
            for b in batch::split_batches(chunk).unwrap() {
                let (h, recs) = batch::decode(b).unwrap();
                let values: Vec<u8> = recs.into_iter().flat_map(|r| r.value).collect();
                out.insert(h.base_offset, values);
            }
        }
        assert!(r.next_offset > offset, "fetch made no progress");
        offset = r.next_offset;
    }
}

/// The partition's `raft-log` file under a node's data directory.
fn raft_log_file(data: &Path) -> PathBuf {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.file_name().is_some_and(|n| n == "raft-log")
                && !p.to_string_lossy().contains("controller")
                // `__offsets` is a replicated internal topic on a cluster too.
                && !p.to_string_lossy().contains("__offsets")
            {
                out.push(p);
            }
        }
    }
    let mut v = Vec::new();
    walk(data, &mut v);
    assert_eq!(v.len(), 1, "raft-log files: {v:?}");
    v.remove(0)
}

fn wait_topic(net: &Net) {
    for n in net.up() {
        let deadline = Instant::now() + Duration::from_secs(10);
        while net.engine(n).route(TOPIC).is_err() {
            assert!(Instant::now() < deadline, "topic not created on node {n}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

// Proves: a replica that was down while the others committed more than the entries they
// retain catches up through a snapshot (its `raft-log` gets a snapshot frame; the batches come
// from the leader's partition log) and then holds the same batches at the same offsets, and
// keeps replicating after it.
#[test]
fn a_replica_down_past_the_retained_window_catches_up_by_snapshot() {
    let started = Instant::now();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let dir = |n: NodeId| dirs[(n - 1) as usize].path();
    let nodes = [1, 2, 3];
    let net = Arc::new(Net::default());
    for n in nodes {
        start(&net, n, &nodes, dir(n));
    }
    let cfg = TopicConfig {
        replicas: 3,
        ..TopicConfig::with_partitions(1)
    };
    block_on(net.engine(1).create_topic_replicated(TOPIC, cfg)).unwrap();
    wait_topic(&net);
    let mut leader = 1;
    for i in 0..20 {
        leader = produce(&net, &batch_of(i, FILL), leader);
    }
    let down = nodes.into_iter().find(|n| *n != leader).unwrap();
    net.stop(down);
    let total = RETAIN_ENTRIES as u64 * 3;
    for i in 20..total {
        leader = produce(&net, &batch_of(i, FILL), leader);
    }
    // The leader compacted past the window: its `raft-log` was rotated (a rotated file starts
    // with a snapshot frame at the compacted index; it rotates only below that).
    let snap_magic = 0x5246_5331u32.to_le_bytes();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read(raft_log_file(dir(leader))).unwrap()[..4] != snap_magic {
        assert!(
            Instant::now() < deadline,
            "the leader's raft-log was not rotated"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let before = std::fs::read(raft_log_file(dir(down))).unwrap();
    assert!(
        !before.windows(4).any(|w| w == snap_magic),
        "the stopped replica had a snapshot already"
    );
    start(&net, down, &nodes, dir(down));
    // Converges: every node holds the same batches at the same offsets.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let logs: Vec<BTreeMap<u64, Vec<u8>>> =
            net.up().iter().map(|n| read_log(&net.engine(*n))).collect();
        if logs.windows(2).all(|w| w[0] == w[1]) && logs[0].len() == total as usize {
            let offsets: Vec<u64> = logs[0].keys().copied().collect();
            assert_eq!(offsets, (0..total).collect::<Vec<_>>(), "dense offsets");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node {down} did not catch up: {:?}",
            logs.iter().map(BTreeMap::len).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // It caught up through a snapshot (the entries it missed are no longer in any peer's
    // memory), and it keeps replicating.
    let after = std::fs::read(raft_log_file(dir(down))).unwrap();
    assert!(
        after.windows(4).any(|w| w == snap_magic),
        "node {down} caught up without installing a snapshot"
    );
    for i in total..total + 10 {
        leader = produce(&net, &batch_of(i, FILL), leader);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while read_log(&net.engine(down)).len() != total as usize + 10 {
        assert!(Instant::now() < deadline, "node {down} stopped replicating");
        std::thread::sleep(Duration::from_millis(20));
    }
    for n in net.up() {
        net.stop(n);
    }
    eprintln!("snapshot catch-up scenario took {:?}", started.elapsed());
}

// Proves: under sustained produce a replica's `raft-log` is rotated below the applied and
// fsynced index (its size stays within a bound of the retained window while the data produced
// grows past it), and a restart reads only the retained entries (and still serves every
// batch from the partition log).
#[test]
fn raft_log_stays_bounded_and_a_restart_reads_only_the_retained_part() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = [1];
    let net = Arc::new(Net::default());
    start(&net, 1, &nodes, dir.path());
    let cfg = TopicConfig {
        replicas: 1,
        ..TopicConfig::with_partitions(1)
    };
    block_on(net.engine(1).create_topic_replicated(TOPIC, cfg)).unwrap();
    wait_topic(&net);
    let fill = 1000;
    let total = 5 * RETAIN_ENTRIES as u64;
    let mut produced = 0u64;
    let mut largest = 0u64;
    for i in 0..total {
        let b = batch_of(i, fill);
        produced += b.len() as u64;
        produce(&net, &b, 1);
        if i % 256 == 0 {
            largest = largest.max(std::fs::metadata(raft_log_file(dir.path())).unwrap().len());
        }
    }
    let retained = RETAIN_ENTRIES as u64 * (fill as u64 + 100);
    let bound = 3 * retained + (2 << 20);
    assert!(
        largest < bound && largest < produced / 2,
        "raft-log reached {largest} bytes (bound {bound}; {produced} bytes produced)"
    );
    net.stop(1);
    let file = raft_log_file(dir.path());
    let (_, recovered) = block_on(RaftDisk::open(StdFs, file.parent().unwrap())).unwrap();
    let base = recovered
        .base
        .expect("a rotated raft-log starts with a snapshot frame");
    assert!(base.index > 0 && base.end_offset > 0, "{base:?}");
    assert!(
        recovered.entries.len() <= 3 * RETAIN_ENTRIES,
        "a restart reads {} entries",
        recovered.entries.len()
    );
    eprintln!(
        "raft-log: largest {largest} bytes, {produced} bytes produced; a restart reads {} entries after index {}",
        recovered.entries.len(),
        base.index
    );
    start(&net, 1, &nodes, dir.path());
    wait_topic(&net);
    let log = read_log(&net.engine(1));
    assert_eq!(log.len() as u64, total);
    produce(&net, &batch_of(total, fill), 1);
    assert_eq!(read_log(&net.engine(1)).len() as u64, total + 1);
    net.stop(1);
}

/// Every batch of a node's partition log from its log start: base offset -> record values
/// (opened with the node's own key when the topic is encrypted).
/// Retention may delete the segment being read, and a restarting log refuses reads for a
/// moment: then it starts again from the new log start (at most 50 times).
fn read_log_from_start(e: &Engine) -> BTreeMap<u64, Vec<u8>> {
    for _ in 0..50 {
        if let Some(log) = try_read_log_from_start(e) {
            return log;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the log kept moving under 50 reads from its start");
}

fn try_read_log_from_start(e: &Engine) -> Option<BTreeMap<u64, Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut offset = e.list_offset(TOPIC, 0, OffsetSpec::Earliest).unwrap();
    let topic_id = e.route(TOPIC).unwrap().id;
    loop {
        let r = match e.fetch(FetchRequest {
            max_bytes: 1 << 20,
            ..FetchRequest::new(TOPIC, 0, offset)
        }) {
            Ok(r) => r,
            Err(Error::OffsetOutOfRange { .. } | Error::PartitionFailed { .. }) => return None,
            Err(err) => panic!("fetch at {offset}: {err}"),
        };
        if r.records == 0 {
            return Some(out);
        }
        for chunk in &r.chunks {
            let chunk = match e.keyring() {
                Some(k) => k.open_chunk(chunk, topic_id, 0).unwrap(),
                None => chunk.clone(),
            };
            for b in batch::split_batches(&chunk).unwrap() {
                let (h, recs) = batch::decode(b).unwrap();
                let values: Vec<u8> = recs.into_iter().flat_map(|r| r.value).collect();
                out.insert(h.base_offset, values);
            }
        }
        assert!(r.next_offset > offset, "fetch made no progress");
        offset = r.next_offset;
    }
}

/// Whether any segment file under `data` holds `needle` (plaintext at rest).
fn segments_hold(data: &Path, needle: &[u8]) -> bool {
    fn walk(dir: &Path, needle: &[u8]) -> bool {
        std::fs::read_dir(dir).unwrap().flatten().any(|e| {
            let p = e.path();
            if p.is_dir() {
                walk(&p, needle)
            } else {
                p.extension().is_some_and(|x| x == "log")
                    && p.to_string_lossy().contains(TOPIC)
                    && std::fs::read(&p)
                        .unwrap()
                        .windows(needle.len())
                        .any(|w| w == needle)
            }
        })
    }
    walk(data, needle)
}

/// Batches produced after the follower stops: past the 1,024 entries the others retain, and
/// several times the leader's retention.
const RETENTION_CATCH_UP_BATCHES: u64 = 1400;

/// A node of the retention scenario: one shard, retention checked every 50 ms, and with
/// `encrypted` its own key file (a sealed batch opens only on the node that sealed it).
fn retention_node_config(dir: &Path, encrypted: bool) -> shardline_engine::EngineConfig {
    let mut c = config_with(dir, 1);
    c.retention_check_interval_ms = 50;
    if encrypted {
        let keys = dir.join("keys.json");
        if !keys.exists() {
            let text = shardline_engine::crypto::Keyring::generate_file_text(1).unwrap();
            std::fs::write(&keys, text).unwrap();
        }
        c.encryption_key_file = Some(keys);
    }
    c
}

/// Waits (bounded by `limit`) until every node up holds batches up to `expect`, densely from
/// its own log start, the same batches at the offsets they share.
fn wait_converged(net: &Net, expect: u64, limit: Duration, what: &str) {
    let deadline = Instant::now() + limit;
    loop {
        let logs: Vec<BTreeMap<u64, Vec<u8>>> = net
            .up()
            .iter()
            .map(|n| read_log_from_start(&net.engine(*n)))
            .collect();
        let ends: Vec<u64> = logs
            .iter()
            .map(|l| l.keys().next_back().map_or(0, |o| o + 1))
            .collect();
        let common = logs.iter().filter_map(|l| l.keys().next()).max().copied();
        let from = common.unwrap_or(0);
        let same = logs
            .iter()
            .all(|l| l.range(from..).eq(logs[0].range(from..)));
        let dense = logs
            .iter()
            .all(|l| l.keys().zip(l.keys().skip(1)).all(|(a, b)| a + 1 == *b));
        if ends.iter().all(|e| *e == expect) && same && dense {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: ends {ends:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Produces the batches `range` (following the leader) and waits until every node holds
/// them; returns the leader.
fn produce_and_converge(net: &Net, mut leader: NodeId, range: std::ops::Range<u64>) -> NodeId {
    let end = range.end;
    for i in range {
        leader = produce(net, &batch_of(i, FILL), leader);
    }
    wait_converged(net, end, Duration::from_secs(15), "stopped replicating");
    leader
}

/// The retention scenario (see the tests below): a follower stopped after 20 batches; the
/// leader's retention (64 KiB segments, 256 KiB retained) deletes far past them; the follower
/// restarts its log at the leader's start, ends with the same batches at the same offsets as
/// the leader from there, and keeps replicating.
fn retention_catch_up(encrypted: bool) {
    let started = Instant::now();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let dir = |n: NodeId| dirs[(n - 1) as usize].path();
    let nodes = [1, 2, 3];
    let net = Arc::new(Net::default());
    let config = |n: NodeId| retention_node_config(dir(n), encrypted);
    for n in nodes {
        start_with(&net, n, &nodes, config(n));
    }
    let cfg = TopicConfig {
        replicas: 3,
        segment_bytes: Some(64 << 10),
        retention_bytes: Some(256 << 10),
        encrypted,
        ..TopicConfig::with_partitions(1)
    };
    block_on(net.engine(1).create_topic_replicated(TOPIC, cfg)).unwrap();
    wait_topic(&net);
    let mut leader = 1;
    for i in 0..20 {
        leader = produce(&net, &batch_of(i, FILL), leader);
    }
    let down = nodes.into_iter().find(|n| *n != leader).unwrap();
    net.stop(down);
    let total = 20 + RETENTION_CATCH_UP_BATCHES;
    for i in 20..total {
        leader = produce(&net, &batch_of(i, FILL), leader);
    }
    // The leader's retention deleted what the stopped replica lacks.
    let deadline = Instant::now() + Duration::from_secs(10);
    while net
        .engine(leader)
        .list_offset(TOPIC, 0, OffsetSpec::Earliest)
        .unwrap()
        <= 20
    {
        assert!(
            Instant::now() < deadline,
            "the leader's retention did not run"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    start_with(&net, down, &nodes, config(down));
    wait_converged(&net, total, Duration::from_secs(30), "did not catch up");
    let restarted_at = net
        .engine(down)
        .list_offset(TOPIC, 0, OffsetSpec::Earliest)
        .unwrap();
    assert!(
        restarted_at > 20,
        "node {down}'s log starts at {restarted_at}"
    );
    // Below its start it answers as after retention.
    assert!(matches!(
        net.engine(down).fetch(FetchRequest::new(TOPIC, 0, 0)),
        Err(Error::OffsetOutOfRange { .. })
    ));
    // The snapshot installs once its batches are durable (the frame is written by the ready
    // after that, which can come after the batches are readable).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read(raft_log_file(dir(down)))
        .unwrap()
        .windows(4)
        .any(|w| w == 0x5246_5331u32.to_le_bytes())
    {
        assert!(
            Instant::now() < deadline,
            "node {down} caught up without installing a snapshot"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // It keeps replicating, also after a restart of its own.
    leader = produce_and_converge(&net, leader, total..total + 10);
    net.stop(down);
    start_with(&net, down, &nodes, config(down));
    produce_and_converge(&net, leader, total + 10..total + 15);
    let marker = format!("{}-{}", total + 14, "x".repeat(64));
    assert_eq!(
        segments_hold(dir(down), marker.as_bytes()),
        !encrypted,
        "node {down}'s segments and the topic's encryption"
    );
    for n in net.up() {
        net.stop(n);
    }
    eprintln!(
        "retention catch-up (encrypted: {encrypted}) took {:?}; node {down} restarted its log at {restarted_at}",
        started.elapsed()
    );
}

// Proves: a replica whose missing batches the leader's retention deleted restarts its
// partition log at the leader's log start (crash-safely: docs/storage.md) and then holds the
// same batches at the same offsets as the leader from there, and keeps replicating.
#[test]
fn a_replica_behind_the_leaders_retention_restarts_its_log_and_catches_up() {
    retention_catch_up(false);
}

// Proves: the same for an encrypted topic whose nodes have different keys: the leader opens its
// sealed batches and sends plaintext, the follower seals them with its own key (its segments
// hold no plaintext).
#[test]
fn an_encrypted_replica_behind_the_leaders_retention_catches_up() {
    retention_catch_up(true);
}
