//! Shared by the engine's cluster tests (cluster_engines, cluster_groups, cluster_snapshot,
//! leader_balance): three (or more) `Engine`s in one process, each on its own data directory
//! (real O_DIRECT files), connected by a `PeerSink` that hands each node's messages to the
//! others' `deliver_peer_messages`, with a switch that cuts a node off.

#![allow(dead_code, clippy::unwrap_used)] // each test crate uses part of it; tests fail loudly

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use shardline_engine::{Engine, EngineConfig, NodeId, PeerSink, ReplicaConfig};

/// An engine configuration for these tests: `shards` shards, unpinned, a small DMA arena.
pub(crate) fn config_with(dir: &Path, shards: usize) -> EngineConfig {
    let mut c = EngineConfig::with_data_dir(dir);
    c.shards = shards;
    c.pin_shards = false;
    c.io_memory_bytes = 512 << 10;
    c
}

/// [`config_with`] two shards.
pub(crate) fn config(dir: &Path) -> EngineConfig {
    config_with(dir, 2)
}

/// Fast Raft timing for the tests: tick 20 ms, elections after 200-400 ms (a leadership
/// balance check every 400 ms).
pub(crate) fn replica_config() -> ReplicaConfig {
    ReplicaConfig {
        tick_ms: 20,
        heartbeat_ticks: 2,
        election_ticks: 10,
        election_ticks_max: 20,
    }
}

/// The in-process network: who is up, who is cut off, how many frames were delivered.
#[derive(Default)]
pub(crate) struct Net {
    pub(crate) engines: Mutex<HashMap<NodeId, Engine>>,
    pub(crate) cut: Mutex<HashSet<NodeId>>,
    pub(crate) frames: AtomicU64,
}

impl Net {
    pub(crate) fn sink(self: &Arc<Self>, from: NodeId) -> PeerSink {
        let net = self.clone();
        Arc::new(move |to, msgs| {
            {
                let cut = net.cut.lock().unwrap();
                if cut.contains(&from) || cut.contains(&to) {
                    return;
                }
            }
            let e = net.engines.lock().unwrap().get(&to).cloned();
            if let Some(e) = e {
                net.frames.fetch_add(1, Ordering::Relaxed);
                e.deliver_peer_messages(from, msgs);
            }
        })
    }

    pub(crate) fn engine(&self, n: NodeId) -> Engine {
        self.engines.lock().unwrap().get(&n).cloned().unwrap()
    }

    pub(crate) fn up(&self) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = self.engines.lock().unwrap().keys().copied().collect();
        v.sort_unstable();
        v
    }

    pub(crate) fn set_cut(&self, n: NodeId, cut: bool) {
        let mut c = self.cut.lock().unwrap();
        if cut {
            c.insert(n);
        } else {
            c.remove(&n);
        }
    }

    /// Shuts node `n` down and takes it off the network.
    pub(crate) fn stop(&self, n: NodeId) {
        let e = self.engines.lock().unwrap().remove(&n).unwrap();
        e.shutdown().unwrap();
    }
}

/// Opens node `n` of the cluster `nodes` with `cfg`, puts it on the network and
/// enables replication.
pub(crate) fn start_with(net: &Arc<Net>, n: NodeId, nodes: &[NodeId], cfg: EngineConfig) -> Engine {
    let e = Engine::open(cfg).unwrap();
    net.engines.lock().unwrap().insert(n, e.clone());
    e.enable_cluster(n, nodes.to_vec(), net.sink(n), replica_config())
        .unwrap();
    e
}

/// Node `n` of the three-node cluster 1, 2, 3, two shards.
pub(crate) fn start(net: &Arc<Net>, n: NodeId, dir: &Path) -> Engine {
    start_with(net, n, &[1, 2, 3], config(dir))
}

/// Produces `batch` at `acks` to whichever node leads `topic`/`p`, following NOT_LEADER and
/// waiting out failed or closing partitions (bounded: `secs`); nodes in `skip` are not asked.
/// Returns the node that acknowledged and its ack.
pub(crate) fn produce_to_leader(
    net: &Net,
    (topic, p): (&str, u32),
    batch: &bytes::Bytes,
    acks: shardline_engine::Acks,
    skip: &[NodeId],
    secs: u64,
) -> (NodeId, shardline_engine::ProduceAck) {
    use shardline_engine::Error;
    use std::time::{Duration, Instant};
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut target: Option<NodeId> = None;
    let mut i = 0usize;
    loop {
        assert!(
            Instant::now() < deadline,
            "no leader accepted {topic}/{p}'s batch in {secs} s"
        );
        let up: Vec<NodeId> = net.up().into_iter().filter(|n| !skip.contains(n)).collect();
        let n = match target.take() {
            Some(t) if up.contains(&t) => t,
            _ => {
                i += 1;
                up[i % up.len()]
            }
        };
        match net.engine(n).produce(topic, p, batch.clone(), acks) {
            Ok(Some(ack)) => return (n, ack),
            Ok(None) => unreachable!("acks {acks:?} answers"),
            Err(Error::NotLeader { leader, .. }) => {
                target = leader;
                if leader.is_none() {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            Err(Error::PartitionFailed { .. } | Error::ShuttingDown) => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("produce to node {n}: {e}"),
        }
    }
}

/// Every record of a node's copy of `topic`/`p` from offset 0: offset -> value.
pub(crate) fn read_values(
    e: &Engine,
    topic: &str,
    p: u32,
) -> std::collections::BTreeMap<u64, String> {
    use shardline_engine::{FetchRequest, batch};
    let mut out = std::collections::BTreeMap::new();
    let mut offset = 0;
    loop {
        let r = e
            .fetch(FetchRequest {
                max_bytes: 1 << 20,
                ..FetchRequest::new(topic, p, offset)
            })
            .unwrap();
        if r.records == 0 {
            return out;
        }
        for chunk in &r.chunks {
            for b in batch::split_batches(chunk).unwrap() {
                let (h, recs) = batch::decode(b).unwrap();
                for (i, rec) in recs.into_iter().enumerate() {
                    out.insert(
                        h.base_offset + i as u64,
                        String::from_utf8(rec.value).unwrap(),
                    );
                }
            }
        }
        assert!(r.next_offset > offset, "fetch made no progress");
        offset = r.next_offset;
    }
}
