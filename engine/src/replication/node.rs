//! Every replica of one node (or shard): one tick for all groups, all groups' outgoing
//! messages collected per peer per round, incoming frames dispatched by group id.
//!
//! Idle groups hibernate (docs/replication.md, "Idle groups hibernate"): a leader with nothing
//! to do for a few ticks stops ticking and tells its followers, which stop their election
//! clocks; a node-level liveness heartbeat per peer node ([`LIVENESS_GROUP`]) replaces the
//! per-group heartbeats, and a peer node that goes silent or restarts wakes every group it
//! is a voter of. Any message that needs an answer, and any proposal, wakes a group.

use std::collections::{BTreeMap, BTreeSet};
use std::io;

use bytes::{BufMut, Bytes, BytesMut};
use raft::prelude::MessageType;

use super::{
    GroupId, NodeId, Outbox, ReplAcks, ReplError, ReplicaConfig, ReplicatedPartition, Reply,
};
use crate::storage::Storage;

/// The pseudo-group of node-level messages: a liveness heartbeat per peer node every
/// `heartbeat_ticks`, carrying the sender's incarnation and the groups it leads that went to
/// sleep since the last one. Never a real group id (those count up from 0).
pub const LIVENESS_GROUP: GroupId = u64::MAX;

const LIVENESS_VERSION: u8 = 1;
/// Notices per liveness message at most (a longer list goes in several messages).
const NOTICES_PER_MESSAGE: usize = 4096;

/// Where [`ReplicaNode::process_ready_with`] hands the messages that leave before the fsyncs.
type EarlySend<'a> = dyn FnMut(NodeId, Vec<(GroupId, Bytes)>) + 'a;

/// A hibernation notice: the leader's group, its term and commit index (= its last index).
type Notice = (GroupId, u64, u64);

/// What this node knows of a peer node's liveness.
#[derive(Debug, Clone, Copy)]
struct Peer {
    /// Tick count when anything last arrived from it.
    last_heard: u64,
    alive: bool,
    incarnation: Option<u64>,
}

/// The replicas of one node (see the module doc).
pub struct ReplicaNode<S: Storage, T> {
    id: NodeId,
    groups: BTreeMap<GroupId, ReplicatedPartition<S, T>>,
    /// Groups touched since the last [`Self::process_ready`] (ticked, stepped, proposed to).
    touched: BTreeSet<GroupId>,
    outbox: Outbox,
    replies: Vec<(GroupId, Reply<T>)>,
    /// Messages for groups this node does not hold (dropped).
    pub unknown_group_msgs: u64,
    /// Whether idle groups hibernate (on by default; off: every group ticks, no liveness
    /// messages, the behaviour before hibernation).
    hibernation: bool,
    /// The groups that tick (the others hibernate).
    awake: BTreeSet<GroupId>,
    /// Leaders' consecutive quiet ticks.
    quiet: BTreeMap<GroupId, u32>,
    peers: BTreeMap<NodeId, Peer>,
    /// Ticks since this node started.
    ticks: u64,
    /// This process's start (a peer that sees it change knows this node restarted).
    incarnation: u64,
    notices: BTreeMap<NodeId, Vec<Notice>>,
    /// Timing of the groups (the first inserted one's).
    timing: ReplicaConfig,
    /// Groups woken because a peer node went silent or restarted.
    pub liveness_wakes: u64,
    /// Groups that had a ready since [`Self::take_readied`] (their commit may have moved).
    readied: BTreeSet<GroupId>,
    /// Groups that had a ready since [`Self::take_conf_changed`] (a configuration may have
    /// been applied).
    conf_readied: BTreeSet<GroupId>,
}

impl<S: Storage, T> ReplicaNode<S, T> {
    pub fn new(id: NodeId) -> Self {
        ReplicaNode {
            id,
            groups: BTreeMap::new(),
            touched: BTreeSet::new(),
            outbox: Outbox::default(),
            replies: Vec::new(),
            unknown_group_msgs: 0,
            hibernation: true,
            awake: BTreeSet::new(),
            quiet: BTreeMap::new(),
            peers: BTreeMap::new(),
            ticks: 0,
            incarnation: 0,
            notices: BTreeMap::new(),
            timing: ReplicaConfig::default(),
            liveness_wakes: 0,
            readied: BTreeSet::new(),
            conf_readied: BTreeSet::new(),
        }
    }

    /// Turns hibernation of idle groups on (the default) or off (every group then ticks).
    pub fn set_hibernation(&mut self, on: bool) {
        self.hibernation = on;
        if !on {
            self.awake.extend(self.groups.keys().copied());
            self.quiet.clear();
        }
    }

    /// This process's incarnation (e.g. its start time), sent in liveness messages: peers
    /// that see it change treat this node as restarted.
    pub fn set_incarnation(&mut self, incarnation: u64) {
        self.incarnation = incarnation;
    }

    /// Whether `group` ticks (not hibernating).
    pub fn is_awake(&self, group: GroupId) -> bool {
        self.awake.contains(&group)
    }

    /// Groups hibernating.
    pub fn asleep_count(&self) -> usize {
        self.groups.len() - self.awake.len()
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Adds an opened replica (replacing one of the same group).
    pub fn insert(&mut self, p: ReplicatedPartition<S, T>) {
        assert_eq!(p.id(), self.id, "replica of another node");
        if self.groups.is_empty() {
            self.timing = *p.config();
        }
        for v in p.voters() {
            if v != self.id {
                self.peers.entry(v).or_insert(Peer {
                    last_heard: self.ticks,
                    alive: true,
                    incarnation: None,
                });
            }
        }
        self.touched.insert(p.group());
        self.awake.insert(p.group());
        self.quiet.remove(&p.group());
        self.groups.insert(p.group(), p);
    }

    /// Removes a replica; its waiting producers are answered `Unavailable`.
    pub fn remove(&mut self, group: GroupId) -> Option<ReplicatedPartition<S, T>> {
        let mut p = self.groups.remove(&group)?;
        self.awake.remove(&group);
        self.quiet.remove(&group);
        let mut replies = Vec::new();
        p.fail_waiters(&mut replies);
        self.replies.extend(replies.into_iter().map(|r| (group, r)));
        Some(p)
    }

    pub fn get(&self, group: GroupId) -> Option<&ReplicatedPartition<S, T>> {
        self.groups.get(&group)
    }

    pub fn get_mut(&mut self, group: GroupId) -> Option<&mut ReplicatedPartition<S, T>> {
        self.groups.get_mut(&group)
    }

    /// Runs `f` on a group's replica with this round's outbox (snapshot transfers: the owner
    /// moves chunks between the replica and its partition log); the group is touched if Raft has
    /// work after it (an installed snapshot).
    pub fn with_outbox<R>(
        &mut self,
        group: GroupId,
        f: impl FnOnce(&mut ReplicatedPartition<S, T>, &mut Outbox) -> R,
    ) -> Option<R> {
        let p = self.groups.get_mut(&group)?;
        let r = f(p, &mut self.outbox);
        if p.has_ready() {
            self.touched.insert(group);
        }
        Some(r)
    }

    pub fn groups(&self) -> impl Iterator<Item = &ReplicatedPartition<S, T>> {
        self.groups.values()
    }

    pub fn len(&self) -> usize {
        self.groups.len()
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// One frame's worth of messages from peer `from` (the transport's inbound side).
    pub fn on_peer_messages(&mut self, from: NodeId, msgs: Vec<(GroupId, Bytes)>) {
        self.heard(from);
        for (group, bytes) in msgs {
            if group == LIVENESS_GROUP {
                self.on_liveness(from, &bytes);
                continue;
            }
            match self.groups.get_mut(&group) {
                Some(p) => {
                    let Some(kind) = p.step_kind(from, &bytes) else {
                        continue;
                    };
                    self.touched.insert(group);
                    // A hibernating group wakes for anything but the late answers to its
                    // leader's last heartbeats and appends that leave it nothing to do.
                    let answer = matches!(
                        kind,
                        MessageType::MsgHeartbeatResponse | MessageType::MsgAppendResponse
                    );
                    if (!answer || p.has_ready()) && self.awake.insert(group) {
                        self.quiet.remove(&group);
                    }
                }
                None => self.unknown_group_msgs += 1,
            }
        }
    }

    /// The shard's one tick timer: ticks every group that does not hibernate; puts leaders
    /// that stayed quiet to sleep; checks and sends node-level liveness.
    pub fn tick_all(&mut self) {
        self.ticks += 1;
        if self.hibernation {
            self.check_peers();
        }
        let sleep_after = u32::try_from(2 * self.timing.heartbeat_ticks + 1).unwrap_or(u32::MAX);
        let mut sleep = Vec::new();
        for g in &self.awake {
            let Some(p) = self.groups.get_mut(g) else {
                continue;
            };
            p.tick();
            let ready = p.has_ready();
            if ready {
                self.touched.insert(*g);
            }
            if !self.hibernation || !p.is_quiet_leader() {
                self.quiet.remove(g);
                continue;
            }
            let q = self.quiet.entry(*g).or_insert(0);
            *q = q.saturating_add(1);
            // Not on a tick that sent a heartbeat: its answers come back while asleep.
            if *q >= sleep_after && !ready {
                let voters = p.voters();
                if voters
                    .iter()
                    .all(|v| *v == self.id || self.peers.get(v).is_some_and(|x| x.alive))
                {
                    sleep.push((*g, p.term(), p.commit_index(), voters));
                }
            }
        }
        for (g, term, commit, voters) in sleep {
            self.awake.remove(&g);
            self.quiet.remove(&g);
            for v in voters.into_iter().filter(|v| *v != self.id) {
                self.notices.entry(v).or_default().push((g, term, commit));
            }
        }
        if self.hibernation {
            self.send_liveness();
        }
    }

    /// Anything arrived from `from`: it is alive (a node that was silent wakes the groups it
    /// is a voter of, so that their leaders bring it up to date).
    fn heard(&mut self, from: NodeId) {
        let ticks = self.ticks;
        let Some(peer) = self.peers.get_mut(&from) else {
            return;
        };
        peer.last_heard = ticks;
        if !peer.alive {
            peer.alive = true;
            if self.hibernation {
                self.wake_voters_of(from, None);
            }
        }
    }

    /// Peers silent for longer than `max(election_ticks / 2, 2 * heartbeat_ticks + 1)` ticks
    /// are lost: every group they are a voter of wakes (a follower of a lost leader counts
    /// the silence as time without a leader).
    fn check_peers(&mut self) {
        let limit = (self.timing.election_ticks / 2).max(2 * self.timing.heartbeat_ticks + 1);
        let limit = limit as u64;
        let mut lost = Vec::new();
        for (id, peer) in &mut self.peers {
            let silent = self.ticks.saturating_sub(peer.last_heard);
            if peer.alive && silent > limit {
                peer.alive = false;
                lost.push((*id, silent));
            }
        }
        for (id, silent) in lost {
            tracing::debug!(
                peer = id,
                silent_ticks = silent,
                "peer node silent: waking its groups"
            );
            self.wake_voters_of(id, Some(usize::try_from(silent).unwrap_or(usize::MAX)));
        }
    }

    /// Wakes every group `peer` is a voter of; `lost`: it went silent for that many ticks.
    fn wake_voters_of(&mut self, peer: NodeId, lost: Option<usize>) {
        for (g, p) in &mut self.groups {
            if !p.voters().contains(&peer) {
                continue;
            }
            if let Some(silent) = lost {
                p.peer_lost(peer, silent);
            }
            if self.awake.insert(*g) {
                self.liveness_wakes += 1;
            }
            self.quiet.remove(g);
        }
    }

    /// Sends a liveness message to every peer every `heartbeat_ticks` ticks, and at once to a
    /// peer with hibernation notices waiting.
    fn send_liveness(&mut self) {
        let every = self.timing.heartbeat_ticks.max(1) as u64;
        let beat = self.ticks.is_multiple_of(every);
        let peers: Vec<NodeId> = self.peers.keys().copied().collect();
        for peer in peers {
            let mut notices = self.notices.remove(&peer).unwrap_or_default();
            if !beat && notices.is_empty() {
                continue;
            }
            loop {
                let rest = notices.split_off(notices.len().min(NOTICES_PER_MESSAGE));
                let msg = encode_liveness(self.incarnation, &notices);
                self.outbox.push(peer, LIVENESS_GROUP, msg);
                notices = rest;
                if notices.is_empty() {
                    break;
                }
            }
        }
    }

    /// A liveness message from `from`: a restart (new incarnation) wakes the groups it is a
    /// voter of; each notice puts a follower of `from` to sleep if its log is the leader's.
    fn on_liveness(&mut self, from: NodeId, bytes: &[u8]) {
        let Some((incarnation, notices)) = decode_liveness(bytes) else {
            tracing::warn!(from, "undecodable liveness message dropped");
            return;
        };
        if !self.hibernation {
            return;
        }
        let restarted = match self.peers.get_mut(&from) {
            Some(peer) => {
                let before = peer.incarnation.replace(incarnation);
                before.is_some_and(|b| b != incarnation)
            }
            None => false,
        };
        if restarted {
            let t = self.timing.election_ticks;
            self.wake_voters_of(from, Some(t));
        }
        for (g, term, commit) in notices {
            if let Some(p) = self.groups.get(&g)
                && p.may_sleep_on_notice(from, term, commit)
            {
                self.awake.remove(&g);
                self.quiet.remove(&g);
            }
        }
    }

    /// A producer's batch for `group`.
    pub fn propose(&mut self, group: GroupId, batch: Bytes, acks: ReplAcks, token: Option<T>) {
        let Some(p) = self.groups.get_mut(&group) else {
            if let Some(token) = token {
                let reply = Reply {
                    token,
                    result: Err(ReplError::NotLeader {
                        leader: None,
                        epoch: 0,
                    }),
                };
                self.replies.push((group, reply));
            }
            return;
        };
        let mut replies = Vec::new();
        p.propose(batch, acks, token, &mut replies);
        self.replies.extend(replies.into_iter().map(|r| (group, r)));
        self.touched.insert(group);
        self.awake.insert(group);
        self.quiet.remove(&group);
    }

    /// Persists, sends and applies what every touched group has ready, as one group commit:
    /// every group writes its entries and hard state first, then all their fsyncs run
    /// together, then every group sends its answers and applies. A group whose Raft files
    /// failed is removed and returned with its error: the owner reopens it from disk (after
    /// the disk recovers), which Raft sees as a restart.
    pub async fn process_ready(&mut self) -> Vec<(GroupId, io::Error)> {
        self.process_ready_inner(None).await
    }

    /// [`Self::process_ready`], handing `send` what may leave before the fsyncs (the leaders'
    /// appends and heartbeats, liveness messages: Raft thesis 10.2.1, a leader's own write
    /// runs in parallel with its followers') once every group has written and before the
    /// syncs run; one call per peer. What needs the fsync stays for [`Self::drain_outgoing`].
    pub async fn process_ready_with(
        &mut self,
        mut send: impl FnMut(NodeId, Vec<(GroupId, Bytes)>),
    ) -> Vec<(GroupId, io::Error)> {
        self.process_ready_inner(Some(&mut send)).await
    }

    async fn process_ready_inner(
        &mut self,
        early: Option<&mut EarlySend<'_>>,
    ) -> Vec<(GroupId, io::Error)> {
        let mut failed = Vec::new();
        let touched = std::mem::take(&mut self.touched);
        // Phase 1: writes.
        let mut written = BTreeMap::new();
        for g in touched {
            let Some(p) = self.groups.get_mut(&g) else {
                continue;
            };
            match p.ready_write(&mut self.outbox).await {
                Ok(Some(rd)) => {
                    written.insert(g, rd);
                }
                Ok(None) => {
                    let mut replies = Vec::new();
                    p.answer_waiters_now(&mut replies);
                    self.replies.extend(replies.into_iter().map(|r| (g, r)));
                }
                Err(e) => failed.push((g, e)),
            }
        }
        self.readied.extend(written.keys().copied());
        self.conf_readied.extend(written.keys().copied());
        if let Some(send) = early {
            for (peer, msgs) in self.outbox.drain() {
                send(peer, msgs);
            }
        }
        // Phase 2: the syncs, all in flight at once.
        let syncs: Vec<_> = self
            .groups
            .iter_mut()
            .filter(|(g, _)| written.contains_key(*g))
            .map(|(g, p)| {
                let g = *g;
                Box::pin(async move { (g, p.sync().await) })
                    as std::pin::Pin<Box<dyn std::future::Future<Output = _> + '_>>
            })
            .collect();
        for (g, result) in join_all(syncs).await {
            if let Err(e) = result {
                written.remove(&g);
                failed.push((g, e));
            }
        }
        // Phase 3: answers and application.
        for (g, rd) in written {
            let Some(p) = self.groups.get_mut(&g) else {
                continue;
            };
            let mut replies = Vec::new();
            let result = p.ready_finish(rd, &mut self.outbox, &mut replies).await;
            self.replies.extend(replies.into_iter().map(|r| (g, r)));
            match result {
                Ok(()) if p.has_ready() => {
                    self.touched.insert(g);
                }
                Ok(()) => {}
                Err(e) => failed.push((g, e)),
            }
        }
        for (g, _) in &failed {
            self.remove(*g);
        }
        failed
    }

    /// Whether some group has work for [`Self::process_ready`] (touched since the last one).
    pub fn has_pending(&self) -> bool {
        !self.touched.is_empty()
    }

    /// A proposal that a follower forwards to its leader (raft-rs's own forwarding; the
    /// controller group's commands, which nobody waits for here: their proposer watches its
    /// applied state). `false`: dropped (no leader known, or no such group).
    pub fn propose_forward(&mut self, group: GroupId, batch: Bytes) -> bool {
        let Some(p) = self.groups.get_mut(&group) else {
            return false;
        };
        let ok = p.propose_forward(batch);
        self.touched.insert(group);
        self.awake.insert(group);
        self.quiet.remove(&group);
        ok
    }

    /// Starts handing `group`'s leadership to voter `to`
    /// ([`ReplicatedPartition::transfer_leader`]); `false`: not started.
    pub fn transfer_leader(&mut self, group: GroupId, to: NodeId) -> bool {
        let Some(p) = self.groups.get_mut(&group) else {
            return false;
        };
        let started = p.transfer_leader(to);
        if started {
            self.touched.insert(group);
        }
        started
    }

    /// This round's outgoing messages, one entry per peer (the transport's outbound side).
    pub fn drain_outgoing(&mut self) -> Vec<(NodeId, Vec<(GroupId, Bytes)>)> {
        self.outbox.drain()
    }

    /// The groups that had a ready (wrote, sent, committed or applied something) since the
    /// last call: the only ones whose high watermark may have moved.
    pub fn take_readied(&mut self) -> BTreeSet<GroupId> {
        std::mem::take(&mut self.readied)
    }

    /// Answers to producers since the last call.
    pub fn take_replies(&mut self) -> Vec<(GroupId, Reply<T>)> {
        std::mem::take(&mut self.replies)
    }

    /// The groups that applied a configuration change since the last call (the owner's
    /// report); their new members' nodes become liveness peers.
    pub fn take_conf_changed(&mut self) -> Vec<GroupId> {
        let mut changed = Vec::new();
        let mut members = Vec::new();
        for g in std::mem::take(&mut self.conf_readied) {
            let Some(p) = self.groups.get_mut(&g) else {
                continue;
            };
            if p.take_conf_changed() {
                changed.push(g);
                let cs = p.conf_state();
                members.extend(cs.get_voters().iter().chain(cs.get_learners()).copied());
            }
        }
        for v in members {
            if v != self.id {
                self.peers.entry(v).or_insert(Peer {
                    last_heard: self.ticks,
                    alive: true,
                    incarnation: None,
                });
            }
        }
        changed
    }

    /// Sets a group's learner target (`ReplicatedPartition::set_learner_target`); wakes it.
    pub fn set_learner_target(&mut self, group: GroupId, learners: Option<Vec<NodeId>>) -> bool {
        let Some(p) = self.groups.get_mut(&group) else {
            return false;
        };
        p.set_learner_target(learners);
        self.awake.insert(group);
        self.quiet.remove(&group);
        self.touched.insert(group);
        true
    }

    /// Sets (or clears) the voter set a move of `group` heads for (see
    /// [`ReplicatedPartition::set_move_target`]); the group wakes. `false`: no such group.
    pub fn set_move_target(&mut self, group: GroupId, target: Option<Vec<NodeId>>) -> bool {
        let Some(p) = self.groups.get_mut(&group) else {
            return false;
        };
        p.set_move_target(target);
        self.awake.insert(group);
        self.quiet.remove(&group);
        self.touched.insert(group);
        true
    }
}

/// Runs every future to completion, polling them together (their I/O is in flight at once);
/// results in the futures' order.
async fn join_all<F: std::future::Future + Unpin>(mut futs: Vec<F>) -> Vec<F::Output> {
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, slot) in futs.iter_mut().zip(out.iter_mut()) {
            if slot.is_none() {
                match std::pin::Pin::new(f).poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

fn encode_liveness(incarnation: u64, notices: &[Notice]) -> Bytes {
    let mut b = BytesMut::with_capacity(13 + notices.len() * 24);
    b.put_u8(LIVENESS_VERSION);
    b.put_u64_le(incarnation);
    b.put_u32_le(u32::try_from(notices.len()).unwrap_or(u32::MAX));
    for (g, term, commit) in notices {
        b.put_u64_le(*g);
        b.put_u64_le(*term);
        b.put_u64_le(*commit);
    }
    b.freeze()
}

/// Decodes a liveness message; `None` if malformed (never panics, allocates no more than the
/// input holds).
fn decode_liveness(b: &[u8]) -> Option<(u64, Vec<Notice>)> {
    let (&version, rest) = b.split_first()?;
    if version != LIVENESS_VERSION || rest.len() < 12 {
        return None;
    }
    let u64_at = |x: &[u8], at: usize| -> Option<u64> {
        Some(u64::from_le_bytes(x.get(at..at + 8)?.try_into().ok()?))
    };
    let incarnation = u64_at(rest, 0)?;
    let n = u32::from_le_bytes(rest.get(8..12)?.try_into().ok()?) as usize;
    let body = &rest[12..];
    if body.len() != n.checked_mul(24)? {
        return None;
    }
    let notices = body
        .chunks_exact(24)
        .map(|c| Some((u64_at(c, 0)?, u64_at(c, 8)?, u64_at(c, 16)?)))
        .collect::<Option<Vec<_>>>()?;
    Some((incarnation, notices))
}

#[cfg(test)]
mod liveness_codec_tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trips(inc in any::<u64>(), notices in proptest::collection::vec(any::<(u64, u64, u64)>(), 0..50)) {
            let b = encode_liveness(inc, &notices);
            prop_assert_eq!(decode_liveness(&b), Some((inc, notices)));
        }

        #[test]
        fn never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_liveness(&bytes);
        }

        #[test]
        fn truncated_or_extended_is_refused(inc in any::<u64>(), notices in proptest::collection::vec(any::<(u64, u64, u64)>(), 1..10), cut in 1usize..24) {
            let b = encode_liveness(inc, &notices);
            prop_assert_eq!(decode_liveness(&b[..b.len() - cut]), None);
            let mut longer = b.to_vec();
            longer.push(0);
            prop_assert_eq!(decode_liveness(&longer), None);
        }
    }
}
