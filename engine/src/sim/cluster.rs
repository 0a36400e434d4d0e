//! Deterministic simulation of a replicated cluster (issue 14): 3 or 5 nodes, each a
//! [`ReplicaNode`] holding its replicas of a few Raft groups (replicated partitions), every
//! node on its own [`CrashStorage`], over the simulated network of [`super::net`], all driven
//! by one seed (docs/replication.md, "Simulator").
//!
//! ## Faults
//! The seed picks the network's drop, duplicate and delay rates (delays reorder frames);
//! steps then bring network partitions (nodes split in two sides) and heals, node crashes
//! (power loss: only synced bytes survive, each unsynced block write kept or not, so writes
//! are torn and reordered; or SIGKILL: every completed write survives) and restarts, and a
//! full disk on one node (its replicas stop at the first failed write; they reopen from disk
//! when space returns), long outages (a node down while the others move past the entries they
//! retain: it must come back through a snapshot) and retention on a node's partition log
//! ([`logs`]: every replica's state machine, compacted under, snapshotted from).
//!
//! ## Invariants (checked after every step)
//! 1. At most one leader per term in a group.
//! 2. Replicas never diverge below the commit index: every replica's committed entries
//!    (index, term, offsets, bytes) equal the group's committed history, across crashes.
//! 3. Every batch acknowledged at `all` is present, at its acknowledged offsets with its
//!    bytes, on every leader of the same or a later term (and on every replica at the end).
//! 4. Offsets are dense (the replica asserts it on every append; the history checks it).
//! 5. The high watermark never moves back within a replica's lifetime.
//! 6. An idempotent producer's batch is committed at most once, and every `all` ack of it
//!    (first answer or retry, any leader) carries the same offsets as its committed copy.
//! 7. Every replica's partition log is dense and holds, at each offset, the committed
//!    history's batch (snapshot installs and log restarts after retention included).
//!
//! At the end the network heals, every node restarts and the disk frees: every group must
//! elect a leader and bring every replica to the same commit (liveness), then 2 and 3 are
//! checked on every replica.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use bytes::Bytes;
use futures_lite::future::block_on;
use rand_xoshiro::Xoshiro256PlusPlus;
use rand_xoshiro::rand_core::{Rng, SeedableRng};

use super::net::{Frame, SimNet};

mod logs;
use crate::api::ProduceAck;
use crate::batch::{BatchBuilder, ProducerInfo};
use crate::replication::{
    GroupId, NodeId, ReplAcks, ReplError, ReplSabotage, ReplicaConfig, ReplicaNode,
    ReplicatedPartition,
};
use crate::storage::CrashStorage;
use logs::SimLog;

type Node = ReplicaNode<CrashStorage, u64>;
type Check<T = ()> = std::result::Result<T, String>;

/// One cluster run's settings.
#[derive(Debug, Clone, Copy)]
pub struct ClusterConfig {
    pub seed: u64,
    pub steps: usize,
    /// Number of Raft groups (replicated partitions).
    pub groups: u64,
    /// The leader acks `all` after its own fsync only (the simulator must catch it).
    pub sabotage: bool,
    /// A follower installing a snapshot loses one of its batches (the simulator must catch
    /// it).
    pub sabotage_snapshot: bool,
}

impl ClusterConfig {
    pub fn new(seed: u64) -> Self {
        ClusterConfig {
            seed,
            steps: 300,
            groups: 2,
            sabotage: false,
            sabotage_snapshot: false,
        }
    }
}

/// What a run did (a run that checks nothing proves nothing).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClusterStats {
    pub steps: u64,
    pub proposals: u64,
    pub acks_all: u64,
    pub acks_other: u64,
    pub retries: u64,
    pub duplicates_answered: u64,
    pub not_leader: u64,
    pub elections: u64,
    pub crashes: u64,
    pub disk_full_failures: u64,
    pub partitions: u64,
    pub frames: u64,
    pub frames_dropped: u64,
    pub committed: u64,
    pub snapshots_installed: u64,
    pub chunks_served: u64,
    pub log_resets: u64,
    pub log_rotations: u64,
    pub retention_deletes: u64,
    pub long_outages: u64,
}

impl ClusterStats {
    pub fn add(&mut self, o: &ClusterStats) {
        self.steps += o.steps;
        self.proposals += o.proposals;
        self.acks_all += o.acks_all;
        self.acks_other += o.acks_other;
        self.retries += o.retries;
        self.duplicates_answered += o.duplicates_answered;
        self.not_leader += o.not_leader;
        self.elections += o.elections;
        self.crashes += o.crashes;
        self.disk_full_failures += o.disk_full_failures;
        self.partitions += o.partitions;
        self.frames += o.frames;
        self.frames_dropped += o.frames_dropped;
        self.committed += o.committed;
        self.snapshots_installed += o.snapshots_installed;
        self.chunks_served += o.chunks_served;
        self.log_resets += o.log_resets;
        self.log_rotations += o.log_rotations;
        self.retention_deletes += o.retention_deletes;
        self.long_outages += o.long_outages;
    }
}

/// A run that passed.
#[derive(Debug, Clone, Copy)]
pub struct ClusterOutcome {
    pub trace_hash: u64,
    pub stats: ClusterStats,
    pub nodes: usize,
}

/// A run that failed.
#[derive(Debug, Clone)]
pub struct ClusterFailure {
    pub seed: u64,
    pub sabotage: bool,
    pub sabotage_snapshot: bool,
    pub step: usize,
    pub message: String,
}

impl std::fmt::Display for ClusterFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let env = match (self.sabotage, self.sabotage_snapshot) {
            (true, _) => "SIM_SABOTAGE=1 ",
            (false, true) => "SIM_SABOTAGE=snapshot ",
            _ => "",
        };
        write!(
            f,
            "cluster simulation seed {} failed at step {}: {}\n  replay: {env}SIM_SEED={} cargo \
             test -p shardline-engine --test sim_cluster (SIM_VERBOSE=1 prints every event)",
            self.seed, self.step, self.message, self.seed
        )
    }
}

/// Runs one seed.
pub fn run_cluster(cfg: ClusterConfig) -> Result<ClusterOutcome, ClusterFailure> {
    let step = std::cell::Cell::new(0usize);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut w = Cluster::new(cfg);
        for s in 0..cfg.steps {
            step.set(s);
            w.step_no = s;
            w.step()?;
        }
        step.set(cfg.steps);
        w.step_no = cfg.steps;
        w.finish()?;
        Ok::<_, String>(ClusterOutcome {
            trace_hash: w.trace,
            stats: w.stats,
            nodes: w.nodes.len(),
        })
    }));
    let fail = |message| ClusterFailure {
        seed: cfg.seed,
        sabotage: cfg.sabotage,
        sabotage_snapshot: cfg.sabotage_snapshot,
        step: step.get(),
        message,
    };
    match result {
        Ok(Ok(o)) => Ok(o),
        Ok(Err(m)) => Err(fail(m)),
        Err(panic) => {
            let text = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_string()))
                .unwrap_or_else(|| "a panic".to_string());
            Err(fail(format!("panicked: {text}")))
        }
    }
}

struct SimNode {
    id: NodeId,
    storage: CrashStorage,
    /// `None` while the node is down.
    node: Option<Node>,
    /// Groups whose replica stopped on a disk error (reopened when the disk frees).
    stopped: BTreeSet<GroupId>,
    disk_full: bool,
    /// High watermark per group in this lifetime.
    last_hw: BTreeMap<GroupId, u64>,
    /// Highest commit index already checked against the history, per group, this lifetime.
    checked: BTreeMap<GroupId, u64>,
    /// The partition log (state machine) of each replica; survives restarts.
    logs: BTreeMap<GroupId, SimLog>,
    /// Down on purpose (a long outage) until this step.
    down_until: usize,
}

/// A committed entry as the group's history holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Committed {
    term: u64,
    /// (base offset, last offset, bytes) of a batch; `None` for a no-op.
    batch: Option<(u64, u64, Bytes)>,
}

#[derive(Default)]
struct GroupModel {
    voters: Vec<NodeId>,
    /// Raft index -> committed entry (from whichever replica committed it first).
    history: BTreeMap<u64, Committed>,
    /// Base offset -> (last offset, bytes) of every committed batch.
    by_offset: BTreeMap<u64, (u64, Bytes)>,
    /// (producer id, sequence) -> the index it was committed at.
    committed_producer: BTreeMap<(u64, u32), u64>,
    /// Batches acked at `all`: (offsets, bytes, term of the acking leader).
    acked_all: Vec<(ProduceAck, Bytes, u64)>,
    /// Every ack of an idempotent batch: (producer id, sequence) -> offsets.
    producer_acks: BTreeMap<(u64, u32), ProduceAck>,
    /// Leader of each term seen.
    leaders: BTreeMap<u64, NodeId>,
    /// The node clients think leads.
    leader_hint: Option<NodeId>,
    producers: Vec<Producer>,
}

struct Producer {
    producer_id: u64,
    next_sequence: u32,
    /// Batches sent, newest last: (sequence, bytes).
    sent: Vec<(u32, Bytes)>,
}

struct Request {
    group: GroupId,
    acks: ReplAcks,
    producer: Option<(u64, u32)>,
    bytes: Bytes,
    node: NodeId,
}

struct Cluster {
    rng: Xoshiro256PlusPlus,
    cfg: ClusterConfig,
    rcfg: ReplicaConfig,
    now_ms: u64,
    next_tick_ms: u64,
    nodes: Vec<SimNode>,
    groups: BTreeMap<GroupId, GroupModel>,
    net: SimNet,
    requests: BTreeMap<u64, Request>,
    next_token: u64,
    next_batch: u64,
    crash_per_mille: u64,
    step_no: usize,
    verbose: bool,
    trace: u64,
    stats: ClusterStats,
    /// The snapshot sabotage struck.
    sabotaged: bool,
}

impl Cluster {
    fn new(cfg: ClusterConfig) -> Self {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(cfg.seed);
        let n = if rng.next_u64() % 3 == 0 { 5 } else { 3 };
        let net = SimNet::new(&mut rng);
        let crash_per_mille = [0, 5, 15, 30][(rng.next_u64() % 4) as usize];
        let nodes = (1..=n)
            .map(|id| SimNode {
                id,
                storage: CrashStorage::new(),
                node: Some(Node::new(id)),
                stopped: BTreeSet::new(),
                disk_full: false,
                last_hw: BTreeMap::new(),
                checked: BTreeMap::new(),
                logs: BTreeMap::new(),
                down_until: 0,
            })
            .collect();
        let mut w = Cluster {
            rng,
            cfg,
            rcfg: ReplicaConfig::default(),
            now_ms: 0,
            next_tick_ms: 100,
            nodes,
            groups: BTreeMap::new(),
            net,
            requests: BTreeMap::new(),
            next_token: 1,
            next_batch: 0,
            crash_per_mille,
            step_no: 0,
            verbose: std::env::var_os("SIM_VERBOSE").is_some(),
            trace: 0xcbf2_9ce4_8422_2325,
            stats: ClusterStats::default(),
            sabotaged: false,
        };
        let mut next_pid = 1;
        for g in 1..=cfg.groups {
            // 5 nodes: a group on 3 or all 5 of them.
            let mut voters: Vec<NodeId> = (1..=n).collect();
            if n == 5 && w.below(2) == 0 {
                while voters.len() > 3 {
                    let i = w.below(voters.len() as u64) as usize;
                    voters.remove(i);
                }
            }
            let producers = (0..2)
                .map(|_| {
                    next_pid += 1;
                    Producer {
                        producer_id: next_pid,
                        next_sequence: 0,
                        sent: Vec::new(),
                    }
                })
                .collect();
            w.groups.insert(
                g,
                GroupModel {
                    voters,
                    producers,
                    ..GroupModel::default()
                },
            );
        }
        for i in 0..w.nodes.len() {
            w.open_all(i);
        }
        w
    }

    fn below(&mut self, n: u64) -> u64 {
        self.rng.next_u64() % n.max(1)
    }

    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }

    fn mix(&mut self, x: u64) {
        self.trace = (self.trace ^ x).wrapping_mul(0x0100_0000_01b3);
    }

    fn log(&self, what: impl FnOnce() -> String) {
        if self.verbose {
            eprintln!("[{} t={}ms] {}", self.step_no, self.now_ms, what());
        }
    }

    fn open_replica(
        &mut self,
        i: usize,
        g: GroupId,
    ) -> Check<Option<ReplicatedPartition<CrashStorage, u64>>> {
        let id = self.nodes[i].id;
        let voters = self.groups[&g].voters.clone();
        if !voters.contains(&id) {
            return Ok(None);
        }
        let dir = PathBuf::from(format!("/node{id}/group{g}"));
        let st = self.nodes[i].storage.clone();
        let seed = self.cfg.seed;
        match block_on(ReplicatedPartition::open(
            st, &dir, g, id, &voters, self.rcfg, seed,
        )) {
            Ok(mut p) => {
                if self.cfg.sabotage {
                    p.sabotage(ReplSabotage::AckAllAtLeaderSync);
                }
                Ok(Some(p))
            }
            // A full disk can fail the open (creating the files): stays stopped.
            Err(e) if self.nodes[i].disk_full => {
                self.log(|| format!("node {id} group {g}: open failed: {e}"));
                self.nodes[i].stopped.insert(g);
                Ok(None)
            }
            Err(e) => Err(format!("node {id} group {g}: open failed: {e}")),
        }
    }

    /// (Re)opens every replica of node `i` (a start or restart).
    fn open_all(&mut self, i: usize) {
        let groups: Vec<GroupId> = self.groups.keys().copied().collect();
        let mut node = Node::new(self.nodes[i].id);
        self.nodes[i].stopped.clear();
        for g in groups {
            match self.open_replica(i, g) {
                Ok(Some(p)) => node.insert(p),
                Ok(None) => {}
                Err(e) => panic!("{e}"),
            }
        }
        self.nodes[i].node = Some(node);
        self.nodes[i].last_hw.clear();
        self.nodes[i].checked.clear();
    }

    // --- the step ----------------------------------------------------------------------------

    fn step(&mut self) -> Check {
        self.stats.steps += 1;
        let roll = self.below(1000);
        match roll {
            0..=449 => self.produce()?,
            450..=469 => self.partition_change(),
            470..=489 => self.restart_one(),
            490..=499 => self.disk_change(),
            500..=504 => self.long_outage(),
            505..=529 => self.retention(),
            _ => {}
        }
        if self.chance(self.crash_per_mille) {
            let i = self.below(self.nodes.len() as u64) as usize;
            self.crash(i);
        }
        let ms = 10 + self.below(60);
        self.advance_time(ms);
        self.round()?;
        self.check()
    }

    /// Moves the clock: ticks every up node at each 100 ms boundary, delivers due frames.
    fn advance_time(&mut self, ms: u64) {
        let end = self.now_ms + ms;
        while self.next_tick_ms <= end {
            self.now_ms = self.next_tick_ms;
            self.deliver();
            for n in &mut self.nodes {
                if let Some(node) = n.node.as_mut() {
                    node.tick_all();
                }
            }
            self.next_tick_ms += self.rcfg.tick_ms;
        }
        self.now_ms = end;
        self.deliver();
    }

    fn deliver(&mut self) {
        let due = self.net.take_due(self.now_ms, &mut self.rng);
        for Frame { from, to, msgs, .. } in due {
            let i = usize::try_from(to - 1).unwrap_or(usize::MAX);
            if let Some(node) = self.nodes.get_mut(i).and_then(|n| n.node.as_mut()) {
                self.trace = (self.trace ^ (from << 8 | to)).wrapping_mul(0x0100_0000_01b3);
                node.on_peer_messages(from, msgs);
            }
        }
    }

    /// Every up node handles its ready groups; replies are checked; frames go on the network.
    fn round(&mut self) -> Check {
        self.compact_all()?;
        for _ in 0..3 {
            for i in 0..self.nodes.len() {
                let Some(node) = self.nodes[i].node.as_mut() else {
                    continue;
                };
                let failed = block_on(node.process_ready());
                let replies = node.take_replies();
                let outgoing = node.drain_outgoing();
                let id = self.nodes[i].id;
                for (g, e) in failed {
                    self.stats.disk_full_failures += 1;
                    self.log(|| format!("node {id} group {g} stopped: {e}"));
                    self.nodes[i].stopped.insert(g);
                    if !self.nodes[i].disk_full {
                        return Err(format!(
                            "node {id} group {g}: I/O error without a fault: {e}"
                        ));
                    }
                }
                for (g, r) in replies {
                    self.on_reply(g, id, r.token, r.result)?;
                }
                self.state_machines(i)?;
                let outgoing = match self.nodes[i].node.as_mut() {
                    Some(node) => {
                        let mut o = outgoing;
                        o.extend(node.drain_outgoing());
                        o
                    }
                    None => outgoing,
                };
                for (to, msgs) in outgoing {
                    self.stats.frames += 1;
                    let dropped = self.net.send(id, to, msgs, self.now_ms, &mut self.rng);
                    self.stats.frames_dropped += u64::from(dropped);
                }
            }
        }
        Ok(())
    }

    // --- producers ---------------------------------------------------------------------------

    fn build_batch(&mut self, g: GroupId, producer: Option<ProducerInfo>) -> Check<Bytes> {
        let mut b = BatchBuilder::new();
        if let Some(info) = producer {
            b = b.producer(info);
        }
        self.next_batch += 1;
        let records = 1 + self.below(3);
        for r in 0..records {
            let fill = "x".repeat(self.below(200) as usize);
            b.push_value(format!("g{g}-b{}-r{r}-{fill}", self.next_batch));
        }
        b.build().map_err(|e| e.to_string())
    }

    fn produce(&mut self) -> Check {
        let g = 1 + self.below(self.cfg.groups);
        let acks = [
            ReplAcks::Leader,
            ReplAcks::Durable,
            ReplAcks::All,
            ReplAcks::All,
        ][self.below(4) as usize];
        let kind = self.below(100);
        let k = self.below(2) as usize;
        let (bytes, producer) = if kind < 30 {
            (self.build_batch(g, None)?, None)
        } else if kind < 75 || self.groups[&g].producers[k].sent.is_empty() {
            let p = &self.groups[&g].producers[k];
            let info = ProducerInfo {
                producer_id: p.producer_id,
                producer_epoch: 0,
                base_sequence: p.next_sequence,
            };
            let b = self.build_batch(g, Some(info))?;
            let p = &mut self.groups.get_mut(&g).ok_or("group")?.producers[k];
            p.next_sequence += 1;
            p.sent.push((info.base_sequence, b.clone()));
            (b, Some((info.producer_id, info.base_sequence)))
        } else {
            self.stats.retries += 1;
            let len = self.groups[&g].producers[k].sent.len();
            let back = self.below(len.min(5) as u64) as usize;
            let p = &self.groups[&g].producers[k];
            let (seq, b) = p.sent[len - 1 - back].clone();
            (b, Some((p.producer_id, seq)))
        };
        // The client sends to the leader it knows of, or to a random replica.
        let voters = self.groups[&g].voters.clone();
        let hint = self.groups[&g].leader_hint;
        let target = match hint {
            Some(l) if self.chance(800) => l,
            _ => voters[self.below(voters.len() as u64) as usize],
        };
        let i = usize::try_from(target - 1).map_err(|e| e.to_string())?;
        if self.nodes[i].node.is_none() {
            return Ok(());
        }
        self.next_token += 1;
        let token = self.next_token;
        self.requests.insert(
            token,
            Request {
                group: g,
                acks,
                producer,
                bytes: bytes.clone(),
                node: target,
            },
        );
        self.stats.proposals += 1;
        // A retry older than the Raft side index keeps: the partition log's producer table
        // answers it (the engine's host does the same before proposing).
        let applied = producer.and_then(|p| self.nodes[i].logs.get(&g)?.applied_duplicate(p));
        if let Some((base_offset, last_offset)) = applied {
            let ack = ProduceAck {
                base_offset,
                last_offset,
            };
            return self.on_reply(g, target, token, Ok(ack));
        }
        let Some(node) = self.nodes[i].node.as_mut() else {
            return Ok(());
        };
        node.propose(g, bytes, acks, Some(token));
        self.mix(token ^ target << 32);
        Ok(())
    }

    fn on_reply(
        &mut self,
        g: GroupId,
        node: NodeId,
        token: u64,
        result: Result<ProduceAck, ReplError>,
    ) -> Check {
        let req = self
            .requests
            .remove(&token)
            .ok_or(format!("reply to unknown or answered request {token}"))?;
        if req.group != g || req.node != node {
            return Err(format!("reply for request {token} from the wrong replica"));
        }
        match result {
            Ok(ack) => {
                self.mix(ack.base_offset ^ token << 20);
                self.log(|| {
                    format!(
                        "node {node} group {g}: ack {:?} {ack:?} token {token}",
                        req.acks
                    )
                });
                let term = self.nodes[usize::try_from(node - 1).map_err(|e| e.to_string())?]
                    .node
                    .as_ref()
                    .and_then(|n| n.get(g))
                    .map_or(0, ReplicatedPartition::term);
                let m = self.groups.get_mut(&g).ok_or("group")?;
                // Only `all` promises offsets that survive a failover (a `leader` or
                // `durable` ack's batch may be cut with its leader's uncommitted suffix and
                // appended anew by a retry).
                if let Some(p) = req.producer.filter(|_| req.acks == ReplAcks::All) {
                    if let Some(index) = m.committed_producer.get(&p)
                        && let Some((base, last, _)) =
                            m.history.get(index).and_then(|h| h.batch.as_ref())
                        && (*base, *last) != (ack.base_offset, ack.last_offset)
                    {
                        return Err(format!(
                            "group {g}: producer batch {p:?} committed at {:?} but acked at {ack:?}",
                            (base, last)
                        ));
                    }
                    if let Some(prev) = m.producer_acks.get(&p) {
                        if *prev != ack {
                            return Err(format!(
                                "group {g}: producer batch {p:?} acked at {prev:?} and again at {ack:?}"
                            ));
                        }
                        self.stats.duplicates_answered += 1;
                    }
                    m.producer_acks.insert(p, ack);
                }
                if req.acks == ReplAcks::All {
                    self.stats.acks_all += 1;
                    m.acked_all.push((ack, req.bytes, term));
                } else {
                    self.stats.acks_other += 1;
                }
            }
            Err(ReplError::NotLeader { leader, .. }) => {
                self.stats.not_leader += 1;
                self.mix(token ^ 0xdead);
                let m = self.groups.get_mut(&g).ok_or("group")?;
                m.leader_hint = leader.or(m.leader_hint);
            }
            Err(e) => {
                self.mix(token ^ 0xbeef);
                self.log(|| format!("node {node} group {g}: token {token}: {e}"));
            }
        }
        Ok(())
    }

    // --- faults ------------------------------------------------------------------------------

    fn partition_change(&mut self) {
        if self.net.is_partitioned() && self.chance(600) {
            self.log(|| "network heals".into());
            self.net.heal();
            return;
        }
        self.stats.partitions += 1;
        let n = self.nodes.len() as u64;
        let sides: Vec<u8> = (0..n).map(|_| u8::from(self.chance(500))).collect();
        self.log(|| format!("network partition {sides:?}"));
        self.net.partition(sides);
    }

    /// A node goes down for 40-100 steps while the others move on (past the entries its
    /// peers retain: it comes back to a snapshot).
    fn long_outage(&mut self) {
        let up: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].node.is_some())
            .collect();
        if up.len() < self.nodes.len() {
            return;
        }
        let i = up[self.below(up.len() as u64) as usize];
        self.stats.long_outages += 1;
        self.nodes[i].down_until = self.step_no + 40 + self.below(60) as usize;
        let id = self.nodes[i].id;
        self.log(|| format!("node {id}: long outage"));
        self.crash(i);
    }

    fn crash(&mut self, i: usize) {
        let Some(mut node) = self.nodes[i].node.take() else {
            return;
        };
        for log in self.nodes[i].logs.values_mut() {
            log.crash();
        }
        self.stats.crashes += 1;
        let groups: Vec<GroupId> = node.groups().map(ReplicatedPartition::group).collect();
        for g in groups {
            node.remove(g);
        }
        for (_, r) in node.take_replies() {
            self.requests.remove(&r.token);
        }
        let kill = self.chance(300);
        let keep = [0, 500, 1000][self.below(3) as usize];
        let mut r = Xoshiro256PlusPlus::seed_from_u64(self.rng.next_u64());
        let id = self.nodes[i].id;
        self.log(|| {
            format!(
                "node {id} {} (keep {keep}/1000 unsynced blocks)",
                if kill { "killed" } else { "loses power" }
            )
        });
        let st = &self.nodes[i].storage;
        let keep_block = move |_, _, _| r.next_u64() % 1000 < keep;
        if kill {
            st.kill(keep_block);
        } else {
            st.crash(keep_block);
        }
        // Requests in flight to it are never answered.
        self.requests.retain(|_, q| q.node != id);
    }

    fn restart_one(&mut self) {
        let down: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].node.is_none() && self.nodes[i].down_until <= self.step_no)
            .collect();
        if down.is_empty() {
            return;
        }
        let i = down[self.below(down.len() as u64) as usize];
        let id = self.nodes[i].id;
        self.log(|| format!("node {id} restarts"));
        self.open_all(i);
    }

    fn disk_change(&mut self) {
        let i = self.below(self.nodes.len() as u64) as usize;
        let id = self.nodes[i].id;
        if self.nodes[i].disk_full {
            self.log(|| format!("node {id}: disk space returns"));
            self.free_disk(i);
        } else if !self.nodes.iter().any(|n| n.disk_full) {
            self.log(|| format!("node {id}: disk full"));
            self.nodes[i].disk_full = true;
            let st = &self.nodes[i].storage;
            st.set_capacity(Some(st.used_bytes()));
        }
    }

    fn free_disk(&mut self, i: usize) {
        self.nodes[i].disk_full = false;
        self.nodes[i].storage.set_capacity(None);
        if self.nodes[i].node.is_none() {
            return;
        }
        let stopped: Vec<GroupId> = std::mem::take(&mut self.nodes[i].stopped)
            .into_iter()
            .collect();
        for g in stopped {
            match self.open_replica(i, g) {
                Ok(Some(p)) => {
                    self.nodes[i].last_hw.remove(&g);
                    self.nodes[i].checked.remove(&g);
                    if let Some(n) = self.nodes[i].node.as_mut() {
                        n.insert(p);
                    }
                }
                Ok(None) => {}
                Err(e) => panic!("{e}"),
            }
        }
    }

    // --- invariants --------------------------------------------------------------------------

    fn check(&mut self) -> Check {
        let groups: Vec<GroupId> = self.groups.keys().copied().collect();
        for g in groups {
            for i in 0..self.nodes.len() {
                self.check_replica(i, g)?;
            }
        }
        self.check_logs()
    }

    fn check_replica(&mut self, i: usize, g: GroupId) -> Check {
        let sn = &mut self.nodes[i];
        let id = sn.id;
        let Some(p) = sn.node.as_ref().and_then(|n| n.get(g)) else {
            return Ok(());
        };
        let m = self.groups.get_mut(&g).ok_or("group")?;
        // 1. One leader per term.
        if p.is_leader() {
            match m.leaders.insert(p.term(), id) {
                Some(other) if other != id => {
                    return Err(format!(
                        "group {g}: two leaders in term {}: {other} and {id}",
                        p.term()
                    ));
                }
                None => {
                    self.stats.elections += 1;
                    m.leader_hint = Some(id);
                }
                _ => {}
            }
        }
        // 5. The high watermark never moves back in a lifetime.
        let hw = p.high_watermark();
        let last = sn.last_hw.insert(g, hw).unwrap_or(0);
        if hw < last {
            return Err(format!(
                "node {id} group {g}: high watermark moved back {last} -> {hw}"
            ));
        }
        // 2, 4, 6. Committed entries equal the history; dense; producer batches once.
        let commit = p.commit_index();
        let from = sn.checked.get(&g).copied().unwrap_or(0);
        if commit > from {
            check_committed(m, p, from, commit, &mut self.stats)
                .map_err(|e| format!("node {id} group {g}: {e}"))?;
            sn.checked.insert(g, commit);
        }
        // 3. Every `all` ack is on every leader of its term or later.
        if p.is_leader() {
            let log = sn.logs.get(&g);
            for (ack, bytes, term) in &m.acked_all {
                if p.term() < *term {
                    continue;
                }
                if !holds(p, log, ack, bytes) {
                    return Err(format!(
                        "group {g}: batch acked at `all` at {ack:?} (term {term}) is missing on \
                         leader {id} of term {}",
                        p.term()
                    ));
                }
            }
        }
        Ok(())
    }

    // --- the end -----------------------------------------------------------------------------

    /// Heals everything and requires every group to converge, then checks every replica.
    fn finish(&mut self) -> Check {
        self.net.heal();
        self.net.quiet();
        for i in 0..self.nodes.len() {
            if self.nodes[i].disk_full {
                self.free_disk(i);
            }
            if self.nodes[i].node.is_none() {
                self.open_all(i);
            }
        }
        let mut converged = false;
        for _ in 0..600 {
            self.advance_time(50);
            self.round()?;
            self.check()?;
            if self.converged() {
                converged = true;
                break;
            }
        }
        if !converged {
            return Err("no convergence within 30 s of simulated time after healing".into());
        }
        // Every replica now holds every `all` ack.
        for (g, m) in &self.groups {
            for n in &self.nodes {
                let Some(p) = n.node.as_ref().and_then(|x| x.get(*g)) else {
                    continue;
                };
                let log = n.logs.get(g);
                for (ack, bytes, _) in &m.acked_all {
                    if !holds(p, log, ack, bytes) || ack.last_offset >= p.high_watermark() {
                        return Err(format!(
                            "group {g}: batch acked at `all` at {ack:?} missing on node {} after healing",
                            n.id
                        ));
                    }
                }
            }
        }
        self.stats.committed = self.groups.values().map(|m| m.history.len() as u64).sum();
        Ok(())
    }

    /// Every group has a leader and every replica has committed the leader's whole log.
    fn converged(&self) -> bool {
        self.groups.iter().all(|(g, m)| {
            let reps: Vec<&ReplicatedPartition<CrashStorage, u64>> = self
                .nodes
                .iter()
                .filter_map(|n| n.node.as_ref().and_then(|x| x.get(*g)))
                .collect();
            let Some(l) = reps.iter().find(|p| p.is_leader()) else {
                return false;
            };
            let logs_done = self.nodes.iter().all(|n| {
                n.node.as_ref().and_then(|x| x.get(*g)).is_none()
                    || n.logs.get(g).map_or(0, SimLog::next) == l.high_watermark()
            });
            reps.len() == m.voters.len()
                && logs_done
                && reps
                    .iter()
                    .all(|p| p.commit_index() == l.last_index() && p.term() == l.term())
        })
    }
}

/// The replica holds `bytes` at the acknowledged offsets: in its Raft log, or (compacted
/// from it) in its partition log (or retention deleted them there).
fn holds(
    p: &ReplicatedPartition<CrashStorage, u64>,
    log: Option<&SimLog>,
    ack: &ProduceAck,
    bytes: &Bytes,
) -> bool {
    if ack.base_offset < p.compacted_end_offset() {
        return log.is_some_and(|l| l.holds(ack.base_offset, ack.last_offset, bytes));
    }
    let side = p.side();
    let i = side.partition_point(|s| s.last_offset < ack.base_offset);
    side.get(i).is_some_and(|s| {
        s.base_offset == ack.base_offset && s.last_offset == ack.last_offset && s.data == *bytes
    })
}

/// Invariants 2, 4 and 6 over the replica's committed entries in `(from, commit]`.
fn check_committed(
    m: &mut GroupModel,
    p: &ReplicatedPartition<CrashStorage, u64>,
    from: u64,
    commit: u64,
    stats: &mut ClusterStats,
) -> Check {
    let _ = stats;
    // The replica's committed batches by index (no-ops are implied by gaps; their terms are
    // checked through the batches around them).
    let side = p.side();
    let mut prev_end: Option<u64> = None;
    for s in side.iter().take_while(|s| s.index <= commit) {
        if let Some(end) = prev_end
            && s.base_offset != end
        {
            return Err(format!(
                "offsets not dense at index {}: {} after {end}",
                s.index, s.base_offset
            ));
        }
        prev_end = Some(s.last_offset + 1);
        if s.index <= from {
            continue;
        }
        let mine = Committed {
            term: s.term,
            batch: Some((s.base_offset, s.last_offset, s.data.clone())),
        };
        match m.history.get(&s.index) {
            Some(h) if *h != mine => {
                return Err(format!(
                    "diverged below the commit index at index {}: history term {} offsets {:?}, \
                     replica term {} offsets {:?}",
                    s.index,
                    h.term,
                    h.batch.as_ref().map(|b| (b.0, b.1)),
                    s.term,
                    (s.base_offset, s.last_offset)
                ));
            }
            Some(_) => {}
            None => {
                if let Some(b) = crate::batch::validate(&s.data).ok().map(|h| h.producer)
                    && b.producer_id != 0
                {
                    let key = (b.producer_id, b.base_sequence);
                    if let Some(other) = m.committed_producer.insert(key, s.index)
                        && other != s.index
                    {
                        return Err(format!(
                            "producer batch {key:?} committed twice: at index {other} and {}",
                            s.index
                        ));
                    }
                    if let Some(ack) = m.producer_acks.get(&key)
                        && (ack.base_offset, ack.last_offset) != (s.base_offset, s.last_offset)
                    {
                        return Err(format!(
                            "producer batch {key:?} acked at {ack:?} but committed at {:?}",
                            (s.base_offset, s.last_offset)
                        ));
                    }
                }
                m.by_offset
                    .insert(s.base_offset, (s.last_offset, s.data.clone()));
                m.history.insert(s.index, mine);
            }
        }
    }
    // A committed index the history has as a batch must be a batch here too.
    let low = from.max(p.compacted_index()) + 1;
    for (index, h) in m.history.range(low..commit.saturating_add(1).max(low)) {
        if h.batch.is_some() && !side.iter().any(|s| s.index == *index) {
            return Err(format!("committed batch at index {index} missing"));
        }
    }
    Ok(())
}
