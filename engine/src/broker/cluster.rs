//! Replication wired into the engine (issue 14; docs/replication.md, "Replicate, then
//! apply"). A replicated partition on a node is its ordinary partition log (the state
//! machine) plus a Raft replica ([`ReplicatedPartition`]); only committed batches reach the
//! partition log, in commit order, so every replica's log holds the same batches at the same
//! offsets and readers see committed data only.
//!
//! - One [`Host`] per shard: a [`ReplicaNode`] with every replica the shard owns, one tick
//!   timer for all of them, and a ready loop woken by proposals, peer messages and ticks. After
//!   each round it hands every peer's messages to the [`PeerSink`] (one call per peer), answers
//!   producers, and applies newly committed batches to the local partitions.
//!   Every few ticks it hands the leadership of partitions it leads to their preferred replica
//!   when that one is up and caught up (`balance.rs`).
//! - The controller: Raft group 0 on shard 0 of every node. Its entries are metadata commands
//!   (`CreateTopic`, `DeleteTopic`: JSON in a one-record batch); every node applies them in
//!   order on its apply thread, so a topic created during a leader change exists exactly once.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::balance::{Balancer, preferred_first};
use super::engine::{Engine, Inner, recv, recv_async};
use crate::api::{PartitionKey, ProduceAck, TopicConfig, TopicInfo};
use crate::batch::{BatchBuilder, ValidatedBatch};
use crate::config;
use crate::error::{Error, Result};
use crate::metadata::{self, TopicMeta};
pub use crate::replication::{GroupId, NodeId, ReplicaConfig};
use crate::replication::{LIVENESS_GROUP, ReplAcks, ReplicaNode, ReplicatedPartition};
use crate::rt::{self, DmaStorage};
use crate::shard::{LocalShard, Reply, Request};
use crate::util::LocalNotify;

mod api;
mod controller;
mod membership;
mod nodes;
mod security;
mod snapshots;

pub use nodes::NodeHook;
pub use security::{SECURITY_CHANGE_BYTES_MAX, SecurityChanges, SecurityHook};

/// Where a node's outgoing Raft messages go: one call per peer per round, every group's
/// messages to that peer together (the transport sends them as one frame). Called on a shard
/// thread: it must not block.
pub type PeerSink = Arc<dyn Fn(NodeId, Vec<(GroupId, Bytes)>) + Send + Sync>;

/// One partition's replication state as this node knows it (`topic describe`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReplicaStatus {
    pub partition: u32,
    pub leader: Option<NodeId>,
    pub replicas: Vec<NodeId>,
    pub in_sync: Vec<NodeId>,
    /// The Raft term (leader epoch).
    pub epoch: u64,
    /// One past the last committed offset.
    pub high_watermark: u64,
}

/// The controller's Raft group (every node a voter, on shard 0).
pub const CONTROLLER_GROUP: GroupId = 0;
/// The controller replica's directory under the data directory.
const CONTROLLER_DIR: &str = "controller";
/// A replica's Raft files, under its partition's directory.
pub const RAFT_DIR: &str = "raft";
/// How long a controller command may take to apply on its proposer.
const CONTROLLER_TIMEOUT: Duration = Duration::from_secs(15);
/// A command proposed but not applied after this is proposed again (a leader change may
/// have dropped it; the apply side ignores the second copy).
const REPROPOSE_AFTER: Duration = Duration::from_secs(3);
/// Committed batches applied per group and round (the rest next round).
const APPLY_BATCHES_PER_ROUND: usize = 256;
/// A replica whose log is within this many entries of the leader's is in sync.
const IN_SYNC_LAG_ENTRIES: u64 = 1000;
/// Applied entries a replica keeps in memory for peers that lag (beyond them a peer needs a
/// snapshot: docs/replication.md, "Snapshots").
const RETAIN_ENTRIES: u64 = 1024;
/// Delays between attempts to reopen a replica whose Raft files failed.
const REOPEN_DELAY_MIN: Duration = Duration::from_secs(1);
const REOPEN_DELAY_MAX: Duration = Duration::from_secs(30);
/// Request ids of applied controller commands kept (duplicate detection).
const RECENT_REQUESTS_MAX: usize = 1024;
/// Ticks run at once when the loop fell behind the timer.
const TICKS_PER_ROUND_MAX: u32 = 10;
/// Hibernating groups are compacted every this many ticks (awake ones every tick).
const COMPACT_ASLEEP_EVERY_TICKS: u64 = 64;

/// A controller command (the value of its one-record batch, JSON).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "cmd")]
enum Command {
    /// Group ids are assigned when the command applies (`Metadata::next_group_id`, the same
    /// on every node since every node applies the same commands in the same order).
    CreateTopic {
        request_id: u64,
        name: String,
        config: TopicConfig,
        placement: Vec<Vec<NodeId>>,
    },
    DeleteTopic {
        request_id: u64,
        name: String,
    },
    /// An opaque security change of the server (users, tokens, ACLs: `security.rs`).
    Security {
        request_id: u64,
        change: Vec<u8>,
    },
    /// Node `id` joins the cluster; its node-to-node address is `peer_addr` (nodes.rs).
    AddNode {
        request_id: u64,
        id: NodeId,
        peer_addr: String,
    },
    /// Node `id` leaves the cluster (refused while a replica set or a move names it).
    RemoveNode {
        request_id: u64,
        id: NodeId,
    },
    /// Move a partition onto `replicas` (membership.rs).
    Reassign {
        request_id: u64,
        name: String,
        partition: u32,
        replicas: Vec<NodeId>,
    },
    /// The move of a partition onto `replicas` is done.
    ReassignDone {
        request_id: u64,
        name: String,
        partition: u32,
        replicas: Vec<NodeId>,
    },
}

impl Command {
    fn request_id(&self) -> u64 {
        match self {
            Command::CreateTopic { request_id, .. }
            | Command::DeleteTopic { request_id, .. }
            | Command::Security { request_id, .. }
            | Command::Reassign { request_id, .. }
            | Command::ReassignDone { request_id, .. }
            | Command::AddNode { request_id, .. }
            | Command::RemoveNode { request_id, .. } => *request_id,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    v: u32,
    command: Command,
}

const COMMAND_VERSION: u32 = 1;

fn encode_command(c: &Command) -> Result<Bytes> {
    let json = serde_json::to_vec(&Envelope {
        v: COMMAND_VERSION,
        command: c.clone(),
    })
    .map_err(|e| Error::Runtime(format!("controller command: {e}")))?;
    let mut b = BatchBuilder::new();
    b.push_value(json);
    b.build().map_err(Error::from)
}

fn decode_command(batch: &Bytes) -> Option<Command> {
    let (_, records) = crate::batch::decode(batch).ok()?;
    let r = records.first()?;
    let e: Envelope = serde_json::from_slice(&r.value).ok()?;
    (e.v == COMMAND_VERSION).then_some(e.command)
}

/// What a controller command did on its proposer.
enum Outcome {
    Created(TopicInfo),
    Deleted,
    /// A security change: what the hook said.
    Security(std::result::Result<(), String>),
    Reassigned,
    /// A node added or removed.
    Nodes,
}

/// The cluster side of an engine (shared by its shards and its apply thread).
pub(crate) struct ClusterState {
    node_id: NodeId,
    /// The members, sorted, this node included: the `--cluster` list, then `AddNode` /
    /// `RemoveNode` (nodes.rs).
    nodes: RwLock<Vec<NodeId>>,
    /// The controller group's voters (the initial list; fixed: nodes added later are its
    /// learners).
    controller_voters: Vec<NodeId>,
    /// Told of every node added or removed (the transport's peers follow).
    node_hook: Mutex<Option<NodeHook>>,
    sink: PeerSink,
    cfg: ReplicaConfig,
    /// Raft group -> the shard of this node that holds it.
    routes: RwLock<HashMap<GroupId, usize>>,
    /// The controller's leader as shard 0 last saw it (0: unknown).
    controller_leader: AtomicU64,
    /// Proposers waiting for their command to apply, by request id.
    waiters: Mutex<HashMap<u64, flume::Sender<Result<Outcome>>>>,
    next_request: AtomicU64,
    /// Peer messages dropped because the owning shard's inbox was full.
    pub(crate) dropped_peer_msgs: AtomicU64,
    /// Which `__offsets` partitions this node coordinates (groups/replicated.rs).
    pub(crate) offsets: crate::groups::replicated::OffsetsView,
    /// This engine's start (µs): peers that see it change in its liveness messages know
    /// this node restarted (replication::LIVENESS_GROUP).
    incarnation: u64,
    /// Security changes applied on this node (`security.rs`).
    security: security::SecurityLog,
    /// Partition moves the hosts saw end (membership.rs).
    moves_done: flume::Sender<(GroupId, Vec<NodeId>)>,
}

impl ClusterState {
    pub(crate) fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// Every node of the cluster, sorted.
    pub(crate) fn nodes(&self) -> Vec<NodeId> {
        self.nodes.read().map(|n| n.clone()).unwrap_or_default()
    }
}

fn lock<T>(m: &Mutex<T>) -> Result<std::sync::MutexGuard<'_, T>> {
    m.lock().map_err(|_| Error::Runtime("poisoned".into()))
}

// ---------------------------------------------------------------------------------------------
// The per-shard host
// ---------------------------------------------------------------------------------------------

type Replica = ReplicatedPartition<DmaStorage, Token>;
type Node = ReplicaNode<DmaStorage, Token>;

/// A producer waiting for its batch.
struct Token {
    reply: Reply<ProduceAck>,
    key: PartitionKey,
}

/// What a group of a host is bound to.
#[derive(Clone)]
enum Binding {
    Partition(PartitionKey),
    Controller,
}

/// A controller command waiting to apply (shard 0 re-proposes it until it has).
struct PendingCmd {
    request_id: u64,
    bytes: Bytes,
    deadline: Instant,
    next_try: Instant,
}

type Query = Box<dyn FnOnce(&Node)>;

#[derive(Default)]
struct HostInbox {
    peer: Vec<(NodeId, Vec<(GroupId, Bytes)>)>,
    proposals: Vec<(GroupId, Bytes, ReplAcks, Option<Token>)>,
    controller: Vec<PendingCmd>,
    opens: Vec<(Replica, Binding)>,
    removes: Vec<(GroupId, flume::Sender<Result<()>>)>,
    queries: Vec<Query>,
    moves: Vec<membership::MoveOrder>,
    /// The controller group's learner target, when it changed (nodes.rs).
    learners: Option<Vec<NodeId>>,
    ticks: u32,
}

impl HostInbox {
    fn is_empty(&self) -> bool {
        self.peer.is_empty()
            && self.proposals.is_empty()
            && self.controller.is_empty()
            && self.opens.is_empty()
            && self.removes.is_empty()
            && self.queries.is_empty()
            && self.moves.is_empty()
            && self.learners.is_none()
            && self.ticks == 0
    }
}

/// The replicas of one shard (see the module doc). Lives in the shard thread's [`HOST`].
struct Host {
    shard: LocalShard,
    state: Arc<ClusterState>,
    inbox: RefCell<HostInbox>,
    wake: LocalNotify,
    /// Shard 0: where committed controller commands go (the apply thread).
    controller_apply: Option<flume::Sender<(u64, Command)>>,
    /// How each replica of the shard was opened (to reopen one whose Raft files failed).
    specs: RefCell<HashMap<GroupId, OpenSpec>>,
    /// Moves of this shard's groups under way (membership.rs).
    moves: RefCell<HashMap<GroupId, membership::Watched>>,
    /// Shard 0: the controller group's learner target last given (nodes.rs).
    controller_learners: RefCell<Option<Vec<NodeId>>>,
}

/// What a replica is opened from.
#[derive(Clone)]
struct OpenSpec {
    binding: Binding,
    dir: std::path::PathBuf,
    /// The replica set, preferred leader first (leadership balance).
    voters: Vec<NodeId>,
    /// The group's first configuration (what a replica without a saved one starts from:
    /// the log replays every change since; membership.rs).
    initial: Vec<NodeId>,
}

std::thread_local! {
    static HOST: RefCell<Option<Rc<Host>>> = const { RefCell::new(None) };
}

fn host() -> Option<Rc<Host>> {
    HOST.with(|h| h.borrow().clone())
}

impl Host {
    fn push(&self, f: impl FnOnce(&mut HostInbox)) {
        f(&mut self.inbox.borrow_mut());
        self.wake.notify_all();
    }

    async fn ticker(self: Rc<Self>) {
        let every = Duration::from_millis(self.state.cfg.tick_ms.max(1));
        while !self.shard.is_closing() {
            rt::sleep(every).await;
            self.push(|i| i.ticks += 1);
        }
    }

    /// The ready loop: owns the shard's `ReplicaNode` (nothing else touches it, so no borrow
    /// is held across its awaits); sleeps until the inbox gets something.
    async fn run(self: Rc<Self>, mut controller_next: u64) {
        let mut node: Node = ReplicaNode::new(self.state.node_id);
        node.set_incarnation(self.state.incarnation);
        let mut bindings: HashMap<GroupId, Binding> = HashMap::new();
        let mut pending: Vec<PendingCmd> = Vec::new();
        let every = u32::try_from(self.state.cfg.election_ticks_max).unwrap_or(u32::MAX);
        let mut balancer = Balancer::new(every);
        // Groups whose committed batches may not all be applied yet.
        let mut to_apply: HashSet<GroupId> = HashSet::new();
        let mut ticks: u64 = 0;
        loop {
            let seen = self.wake.version();
            if self.shard.is_closing() {
                break;
            }
            let inbox = std::mem::take(&mut *self.inbox.borrow_mut());
            let round_ticks = inbox.ticks.min(TICKS_PER_ROUND_MAX);
            let ticked = inbox.ticks > 0;
            ticks += u64::from(inbox.ticks);
            to_apply.extend(inbox.opens.iter().map(|(r, _)| r.group()));
            self.take_inbox(inbox, &mut node, &mut bindings, &mut pending);
            // The leaders' appends leave before their own fsync (Raft thesis 10.2.1).
            let sink = self.state.sink.clone();
            let failed = node.process_ready_with(|peer, msgs| sink(peer, msgs)).await;
            for (g, e) in failed {
                tracing::error!(group = g, error = %e, "raft replica failed; reopening it from disk");
                bindings.remove(&g);
                self.reopen_later(g);
            }
            self.snapshots(&mut node, &bindings).await;
            for (peer, msgs) in node.drain_outgoing() {
                (self.state.sink)(peer, msgs);
            }
            // Apply first: a producer acked at `all` reads its batch from the leader's log.
            to_apply.extend(node.take_readied());
            self.apply(&node, &bindings, &mut to_apply, &mut controller_next);
            self.answer(&mut node);
            if ticked {
                self.compact(
                    &mut node,
                    &bindings,
                    ticks.is_multiple_of(COMPACT_ASLEEP_EVERY_TICKS),
                );
                self.rotate_logs(&mut node, &mut bindings).await;
                self.balance(&mut balancer, round_ticks, &mut node);
                self.report_moves(&mut node);
            }
            if self.controller_apply.is_some() {
                let leader = node
                    .get(CONTROLLER_GROUP)
                    .and_then(|r| r.leader())
                    .unwrap_or(0);
                self.state
                    .controller_leader
                    .store(leader, Ordering::Release);
                self.expire(&mut pending);
            }
            if !node.has_pending() && self.inbox.borrow().is_empty() {
                self.wake.changed(seen).await;
            }
        }
        HOST.with(|h| h.borrow_mut().take());
    }

    fn take_inbox(
        &self,
        inbox: HostInbox,
        node: &mut Node,
        bindings: &mut HashMap<GroupId, Binding>,
        pending: &mut Vec<PendingCmd>,
    ) {
        for (r, b) in inbox.opens {
            let group = r.group();
            bindings.insert(group, b);
            node.insert(r);
            if group == CONTROLLER_GROUP {
                // A reopened controller replica keeps its learner target.
                let learners = self.controller_learners.borrow().clone();
                node.set_learner_target(CONTROLLER_GROUP, learners);
            }
        }
        for (g, done) in inbox.removes {
            self.specs.borrow_mut().remove(&g);
            node.remove(g);
            bindings.remove(&g);
            let _ = done.send(Ok(()));
        }
        if let Some(l) = inbox.learners {
            node.set_learner_target(CONTROLLER_GROUP, Some(l.clone()));
            *self.controller_learners.borrow_mut() = Some(l);
        }
        for (from, msgs) in inbox.peer {
            node.on_peer_messages(from, msgs);
        }
        for (g, batch, acks, token) in inbox.proposals {
            node.propose(g, batch, acks, token);
        }
        pending.extend(inbox.controller);
        let now = Instant::now();
        for c in pending.iter_mut().filter(|c| c.next_try <= now) {
            c.next_try = if node.propose_forward(CONTROLLER_GROUP, c.bytes.clone()) {
                now + REPROPOSE_AFTER
            } else {
                now + Duration::from_millis(self.state.cfg.tick_ms)
            };
        }
        for _ in 0..inbox.ticks.min(TICKS_PER_ROUND_MAX) {
            node.tick_all();
        }
        for q in inbox.queries {
            q(node);
        }
        self.take_moves(inbox.moves, node);
    }

    fn answer(&self, node: &mut Node) {
        for (_, r) in node.take_replies() {
            let Token { reply, key } = r.token;
            let _ = reply.send(r.result.map_err(|e| e.into_engine(&key.0, key.1)));
        }
    }

    /// Drops the controller commands applied (their waiter is gone) and times out the rest
    /// past their deadline.
    fn expire(&self, pending: &mut Vec<PendingCmd>) {
        if pending.is_empty() {
            return;
        }
        let now = Instant::now();
        let Ok(mut waiters) = self.state.waiters.lock() else {
            return;
        };
        pending.retain(|c| {
            if !waiters.contains_key(&c.request_id) {
                return false;
            }
            if now >= c.deadline {
                if let Some(w) = waiters.remove(&c.request_id) {
                    // The controller did not apply it in time (no quorum, or no leader).
                    let timeout_ms =
                        u64::try_from(CONTROLLER_TIMEOUT.as_millis()).unwrap_or(u64::MAX);
                    let _ = w.send(Err(Error::Timeout(timeout_ms)));
                }
                return false;
            }
            true
        });
    }

    /// Reopens a replica whose Raft files failed (disk full, I/O error) from what its disk
    /// holds, retrying with a growing delay until it opens, the group is removed or the shard
    /// closes (Raft treats the reopen as a restart; docs/replication.md).
    fn reopen_later(&self, group: GroupId) {
        let Some(spec) = self.specs.borrow().get(&group).cloned() else {
            return;
        };
        let (local, state) = (self.shard.clone(), self.state.clone());
        rt::spawn_local(async move {
            let mut delay = REOPEN_DELAY_MIN;
            loop {
                rt::sleep(delay).await;
                let wanted = host().is_some_and(|h| h.specs.borrow().contains_key(&group));
                if local.is_closing() || !wanted {
                    return;
                }
                let s = spec.clone();
                match open_here(
                    local.clone(),
                    state.clone(),
                    group,
                    s.binding,
                    s.dir,
                    s.voters,
                    s.initial,
                )
                .await
                {
                    Ok(()) => {
                        tracing::info!(group, "raft replica reopened");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(group, error = %e, "raft replica not reopened yet");
                        delay = (delay * 2).min(REOPEN_DELAY_MAX);
                    }
                }
            }
        });
    }

    /// Moves leadership of the partitions this shard leads to their preferred replicas
    /// (`balance.rs`; the preferred leader is the first voter of the replica's spec).
    fn balance(&self, balancer: &mut Balancer, ticks: u32, node: &mut Node) {
        let specs = self.specs.borrow();
        // A queue's ack group follows its partition's leader instead (queue/replicated.rs).
        let started = balancer.on_ticks(ticks, node, |g| {
            specs
                .get(&g)
                .filter(|s| matches!(s.binding, Binding::Partition(_)))
                .filter(|_| crate::queue::replicated::data_group_of(g).is_none())
                .and_then(|s| s.voters.first().copied())
        });
        for (group, to) in started {
            tracing::info!(group, to, "leadership transfer to the preferred replica");
        }
        for (group, to) in crate::queue::replicated::follow_data_leaders(node) {
            tracing::info!(
                group,
                to,
                "queue ack group: leadership transfer to the partition's leader"
            );
        }
    }

    /// Drops applied entries from memory once the partition log's fsync covers them (see
    /// `ReplicatedPartition::compact`): the groups that tick, and the hibernating ones too
    /// when `all`. The controller's few entries stay.
    fn compact(&self, node: &mut Node, bindings: &HashMap<GroupId, Binding>, all: bool) {
        for (g, b) in bindings {
            let Binding::Partition(key) = b else { continue };
            if !all && !node.is_awake(*g) {
                continue;
            }
            let Some(durable) = self.shard.durable_offset(key) else {
                continue;
            };
            if let Some(r) = node.get_mut(*g) {
                r.compact(durable, RETAIN_ENTRIES);
            }
        }
    }

    /// Appends newly committed batches of the groups in `groups` to their partition logs
    /// (a group stays in the set until all its committed batches are applied); hands
    /// committed controller commands to the apply thread.
    fn apply(
        &self,
        node: &Node,
        bindings: &HashMap<GroupId, Binding>,
        groups: &mut HashSet<GroupId>,
        controller_next: &mut u64,
    ) {
        groups.retain(|g| {
            let (Some(r), Some(b)) = (node.get(*g), bindings.get(g)) else {
                return false;
            };
            match b {
                Binding::Partition(key) => {
                    let done = self.apply_partition(r, key);
                    if key.0.as_ref() == crate::groups::OFFSETS_TOPIC {
                        self.observe_offsets(r, key);
                    } else if crate::queue::replicated::data_group_of(*g).is_some() {
                        self.observe_queue(r, key);
                    }
                    !done
                }
                Binding::Controller => {
                    self.apply_controller(r, controller_next);
                    false
                }
            }
        });
    }

    fn apply_controller(&self, r: &Replica, controller_next: &mut u64) {
        let Some(tx) = &self.controller_apply else {
            return;
        };
        if r.high_watermark() <= *controller_next {
            return;
        }
        for (base, data) in r.read_committed(*controller_next, usize::MAX) {
            if base < *controller_next {
                continue;
            }
            match decode_command(&data) {
                Some(c) => {
                    let _ = tx.send((base, c));
                }
                None => {
                    tracing::warn!(offset = base, "undecodable controller command skipped")
                }
            }
            *controller_next = base + 1;
        }
    }

    /// Hook: what the group coordinators need of an `__offsets` replica (groups/replicated.rs).
    fn observe_offsets(&self, r: &Replica, key: &PartitionKey) {
        if let Some(seen) = self.seen(r, key) {
            self.state.offsets.observe(key.1, seen);
        }
    }

    /// Hook: what a work queue needs of its ack group's replica (queue/replicated.rs).
    fn observe_queue(&self, r: &Replica, ack_key: &PartitionKey) {
        if let Some(seen) = self.seen(r, ack_key) {
            crate::queue::replicated::observe(&self.shard, self.state.node_id, ack_key, seen);
        }
    }

    fn seen(
        &self,
        r: &Replica,
        key: &PartitionKey,
    ) -> Option<crate::groups::replicated::ReplicaSeen> {
        let p = self.shard.partition(key).ok()?;
        Some(crate::groups::replicated::ReplicaSeen {
            is_leader: r.is_leader(),
            leader: r.leader(),
            term: r.term(),
            applied_index: r.commit_index(),
            last_index: r.last_index(),
            log_caught_up: p.watermarks().next_offset >= r.high_watermark(),
        })
    }

    /// Applies `r`'s committed batches to the partition log; `true`: all applied (or the
    /// partition is gone), `false`: retry next round.
    fn apply_partition(&self, r: &Replica, key: &PartitionKey) -> bool {
        let Ok(p) = self.shard.partition(key) else {
            return true;
        };
        let mut next = p.watermarks().next_offset;
        while r.high_watermark() > next {
            let batches = r.read_committed(next, APPLY_BATCHES_PER_ROUND);
            if batches.is_empty() {
                return false;
            }
            for (base, data) in batches {
                assert_eq!(
                    base, next,
                    "{}/{}: raft offsets differ from the partition log's",
                    key.0, key.1
                );
                let offsets =
                    (key.0.as_ref() == crate::groups::OFFSETS_TOPIC).then(|| data.clone());
                let applied = ValidatedBatch::validate(data)
                    .map_err(Error::from)
                    .and_then(|b| self.shard.apply_committed(key, b));
                match applied {
                    Ok(a) => {
                        if let Some(batch) = offsets {
                            self.state.offsets.applied(key.1, &batch);
                        }
                        assert_eq!(
                            a.base_offset, base,
                            "{}/{}: applied at another offset",
                            key.0, key.1
                        );
                        next = a.last_offset + 1;
                    }
                    Err(e) => {
                        // Retried next round (a failed partition repairs itself).
                        tracing::warn!(topic = %key.0, partition = key.1, error = %e, "committed batch not applied yet");
                        return false;
                    }
                }
            }
        }
        true
    }
}

/// Installs the host on the calling shard and starts its loop and ticker.
fn start_host(
    local: &LocalShard,
    state: Arc<ClusterState>,
    controller_apply: Option<flume::Sender<(u64, Command)>>,
    controller_next: u64,
) {
    let h = Rc::new(Host {
        shard: local.clone(),
        state,
        inbox: RefCell::new(HostInbox::default()),
        wake: LocalNotify::default(),
        controller_apply,
        specs: RefCell::new(HashMap::new()),
        moves: RefCell::new(HashMap::new()),
        controller_learners: RefCell::new(None),
    });
    HOST.with(|x| *x.borrow_mut() = Some(h.clone()));
    local.set_replication_hook(Rc::new(|group, key, batch, acks, reply| {
        let Some(h) = host() else {
            if let Some(r) = reply {
                let _ = r.send(Err(Error::ShuttingDown));
            }
            return;
        };
        // A retry older than the side index keeps: the partition log's producer state knows it.
        if let Some(ack) = h.shard.applied_duplicate(&key, &batch) {
            if let Some(r) = reply {
                let _ = r.send(Ok(ack));
            }
            return;
        }
        let token = reply.map(|reply| Token {
            reply,
            key: key.clone(),
        });
        h.push(|i| {
            i.proposals
                .push((group, batch.into_bytes(), acks.into(), token))
        });
    }));
    rt::spawn_local(h.clone().run(controller_next));
    rt::spawn_local(h.ticker());
}

/// Opens a replica on the calling shard and gives it to the shard's host.
async fn open_here(
    local: LocalShard,
    state: Arc<ClusterState>,
    group: GroupId,
    binding: Binding,
    dir: std::path::PathBuf,
    voters: Vec<NodeId>,
    initial: Vec<NodeId>,
) -> Result<()> {
    let Some(h) = host() else {
        return Err(Error::ShuttingDown);
    };
    if let Binding::Partition(key) = &binding {
        local.set_replicated(key, Some(group))?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(dir.display(), e))?;
    let seed = (crate::batch::now_us() as u64) ^ ((local.id() as u64) << 48);
    let r = ReplicatedPartition::open(
        DmaStorage,
        &dir,
        group,
        state.node_id,
        &initial,
        state.cfg,
        seed,
    )
    .await
    .map_err(|e| Error::io(dir.display(), e))?;
    h.specs.borrow_mut().insert(
        group,
        OpenSpec {
            binding: binding.clone(),
            dir,
            voters,
            initial,
        },
    );
    h.push(|i| i.opens.push((r, binding)));
    Ok(())
}

fn lock_routes(
    state: &ClusterState,
) -> Result<std::sync::RwLockWriteGuard<'_, HashMap<GroupId, usize>>> {
    state
        .routes
        .write()
        .map_err(|_| Error::Runtime("poisoned".into()))
}

/// Partition `p`'s replicas: `r` distinct nodes, starting at `(p + crc32c(name)) % n` over the
/// sorted node ids, so replicas (and first leaders) spread evenly.
pub(crate) fn placement(name: &str, partitions: u32, r: u32, nodes: &[NodeId]) -> Vec<Vec<NodeId>> {
    let n = nodes.len();
    let h = crc32c::crc32c(name.as_bytes()) as usize;
    (0..partitions as usize)
        .map(|p| {
            let start = (p + h) % n;
            let mut v: Vec<NodeId> = (0..r as usize).map(|i| nodes[(start + i) % n]).collect();
            v.sort_unstable();
            v
        })
        .collect()
}
