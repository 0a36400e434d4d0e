//! Every replica of one node (or shard): one tick for all groups, all groups' outgoing
//! messages collected per peer per round, incoming frames dispatched by group id.

use std::collections::{BTreeMap, BTreeSet};
use std::io;

use bytes::Bytes;

use super::{GroupId, NodeId, Outbox, ReplAcks, ReplError, ReplicatedPartition, Reply};
use crate::storage::Storage;

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
        }
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Adds an opened replica (replacing one of the same group).
    pub fn insert(&mut self, p: ReplicatedPartition<S, T>) {
        assert_eq!(p.id(), self.id, "replica of another node");
        self.touched.insert(p.group());
        self.groups.insert(p.group(), p);
    }

    /// Removes a replica; its waiting producers are answered `Unavailable`.
    pub fn remove(&mut self, group: GroupId) -> Option<ReplicatedPartition<S, T>> {
        let mut p = self.groups.remove(&group)?;
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
        for (group, bytes) in msgs {
            match self.groups.get_mut(&group) {
                Some(p) => {
                    if p.step(from, &bytes) {
                        self.touched.insert(group);
                    }
                }
                None => self.unknown_group_msgs += 1,
            }
        }
    }

    /// The shard's one tick timer: ticks every group.
    pub fn tick_all(&mut self) {
        for (g, p) in &mut self.groups {
            p.tick();
            if p.has_ready() {
                self.touched.insert(*g);
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
    }

    /// Persists, sends and applies what every touched group has ready, as one group commit:
    /// every group writes its entries and hard state first, then all their fsyncs run
    /// together, then every group sends its answers and applies. A group whose Raft files
    /// failed is removed and returned with its error: the owner reopens it from disk (after
    /// the disk recovers), which Raft sees as a restart.
    pub async fn process_ready(&mut self) -> Vec<(GroupId, io::Error)> {
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

    /// Answers to producers since the last call.
    pub fn take_replies(&mut self) -> Vec<(GroupId, Reply<T>)> {
        std::mem::take(&mut self.replies)
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
