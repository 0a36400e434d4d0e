//! Failover time of one replicated partition in simulated time (issue 14, "Failover"): 3
//! nodes, R = 3, default Raft timing (tick 100 ms, election after 10-19 ticks), a network with
//! `latency_ms` one way and nothing lost, each node's tick timer at its own random phase. Each run kills the leader at a random moment; a
//! client sends an `all` produce every 10 ms to the replica it believes leads (following
//! NOT_LEADER hints, else trying the next replica) until one is acknowledged. The time from
//! the kill to that ack is the failover time. The killed node then restarts and catches up
//! before the next kill. `cargo run --release -p shardline-engine --example sim_cluster --
//! --failovers 50` prints the figures (docs/performance.md).

use std::path::PathBuf;

use futures_lite::future::block_on;
use rand_xoshiro::Xoshiro256PlusPlus;
use rand_xoshiro::rand_core::{Rng, SeedableRng};

use crate::batch::BatchBuilder;
use crate::replication::{
    GroupId, NodeId, ReplAcks, ReplError, ReplicaConfig, ReplicaNode, ReplicatedPartition,
};
use crate::storage::CrashStorage;

type Node = ReplicaNode<CrashStorage, u64>;
const GROUP: GroupId = 1;
const IDS: [NodeId; 3] = [1, 2, 3];

/// A frame in flight: (due at ms, from, to, messages).
type InFlight = (u64, NodeId, NodeId, Vec<(GroupId, bytes::Bytes)>);

struct Sim {
    now_ms: u64,
    latency_ms: u64,
    storage: Vec<CrashStorage>,
    nodes: Vec<Option<Node>>,
    in_flight: Vec<InFlight>,
    seed: u64,
    restarts: u64,
    phase_ms: Vec<u64>,
}

impl Sim {
    fn open(&mut self, k: usize) {
        let id = IDS[k];
        self.restarts += 1;
        let p = block_on(ReplicatedPartition::open(
            self.storage[k].clone(),
            &PathBuf::from(format!("/n{id}/g1")),
            GROUP,
            id,
            &IDS,
            ReplicaConfig::default(),
            self.seed
                .wrapping_add(self.restarts.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
        ))
        .unwrap_or_else(|e| panic!("open: {e}"));
        let mut n = Node::new(id);
        n.insert(p);
        self.nodes[k] = Some(n);
    }

    /// One millisecond: deliver due frames, tick at 100 ms boundaries, ready rounds.
    fn ms(&mut self, replies: &mut Vec<(u64, Result<crate::api::ProduceAck, ReplError>)>) {
        self.now_ms += 1;
        let now = self.now_ms;
        let mut due = Vec::new();
        self.in_flight.retain_mut(|f| {
            if f.0 <= now {
                due.push((f.1, f.2, std::mem::take(&mut f.3)));
                false
            } else {
                true
            }
        });
        for (from, to, msgs) in due {
            if let Some(n) = self.nodes[usize::try_from(to - 1).unwrap_or(0)].as_mut() {
                n.on_peer_messages(from, msgs);
            }
        }
        // Each node's tick timer has its own phase (nodes do not tick in lockstep).
        for (k, n) in self.nodes.iter_mut().enumerate() {
            if let Some(n) = n
                && now % 100 == self.phase_ms[k]
            {
                n.tick_all();
            }
        }
        for n in self.nodes.iter_mut().flatten() {
            let failed = block_on(n.process_ready());
            assert!(failed.is_empty(), "failover sim: I/O error");
            replies.extend(
                n.take_replies()
                    .into_iter()
                    .map(|(_, r)| (r.token, r.result)),
            );
            for (to, msgs) in n.drain_outgoing() {
                self.in_flight
                    .push((now + self.latency_ms, n.id(), to, msgs));
            }
        }
    }

    fn leader(&self) -> Option<usize> {
        (0..IDS.len()).find(|&k| {
            self.nodes[k]
                .as_ref()
                .and_then(|n| n.get(GROUP))
                .is_some_and(ReplicatedPartition::is_leader)
        })
    }

    fn synced(&self) -> bool {
        let Some(l) = self.leader() else { return false };
        let last = self.nodes[l]
            .as_ref()
            .and_then(|n| n.get(GROUP))
            .map_or(0, |p| p.last_index());
        self.nodes.iter().all(|n| {
            n.as_ref()
                .and_then(|n| n.get(GROUP))
                .is_some_and(|p| p.commit_index() == last)
        })
    }
}

/// Failover times (ms) of `kills` leader kills.
pub fn measure_failover(kills: usize, latency_ms: u64, seed: u64) -> Vec<u64> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut sim = Sim {
        now_ms: 0,
        latency_ms,
        storage: IDS.iter().map(|_| CrashStorage::new()).collect(),
        nodes: IDS.iter().map(|_| None).collect(),
        in_flight: Vec::new(),
        seed,
        restarts: 0,
        phase_ms: IDS.iter().map(|_| rng.next_u64() % 100).collect(),
    };
    for k in 0..IDS.len() {
        sim.open(k);
    }
    let mut replies = Vec::new();
    let mut times = Vec::new();
    let mut token = 0;
    for _ in 0..kills {
        // Settle: a leader, everyone caught up, then a random 0-2 s more.
        let mut waited = 0;
        while !sim.synced() {
            sim.ms(&mut replies);
            waited += 1;
            if waited >= 60_000 {
                let st: Vec<_> = sim
                    .nodes
                    .iter()
                    .flatten()
                    .filter_map(|n| n.get(GROUP))
                    .map(|p| (p.id(), p.role(), p.term(), p.commit_index(), p.last_index()))
                    .collect();
                panic!(
                    "failover sim: no stable leader in 60 s: {st:?} after {} kills",
                    times.len()
                );
            }
        }
        for _ in 0..rng.next_u64() % 2000 {
            sim.ms(&mut replies);
        }
        replies.clear();
        let Some(l) = sim.leader() else { continue };
        let killed_at = sim.now_ms;
        sim.nodes[l] = None;
        let mut target = (l + 1) % IDS.len();
        let mut acked = None;
        for t in 0..30_000 {
            if t % 10 == 0 {
                token += 1;
                let mut b = BatchBuilder::new();
                b.push_value(format!("after kill {token}"));
                let batch = b.build().unwrap_or_else(|e| panic!("batch: {e}"));
                // A client cannot reach a dead node: it tries the next one.
                if sim.nodes[target].is_none() {
                    target = (target + 1) % IDS.len();
                }
                if let Some(n) = sim.nodes[target].as_mut() {
                    n.propose(GROUP, batch, ReplAcks::All, Some(token));
                }
            }
            sim.ms(&mut replies);
            for (_, r) in replies.drain(..) {
                match r {
                    Ok(_) => acked = Some(sim.now_ms),
                    Err(ReplError::NotLeader {
                        leader: Some(hint), ..
                    }) => target = usize::try_from(hint - 1).unwrap_or(0),
                    Err(_) => {
                        target = (target + 1) % IDS.len();
                        if target == l {
                            target = (target + 1) % IDS.len();
                        }
                    }
                }
            }
            if acked.is_some() {
                break;
            }
        }
        let at = acked.unwrap_or_else(|| panic!("failover sim: no ack within 30 s of the kill"));
        times.push(at - killed_at);
        sim.open(l);
    }
    times
}
