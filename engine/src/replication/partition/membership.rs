//! Configuration changes of a replicated partition (docs/replication.md, "Membership
//! changes").
//!
//! - Committed `EntryConfChangeV2` (and v1) entries are applied in log order
//!   (`RawNode::apply_conf_change`); the configuration is saved with the hard state
//!   (`RaftDisk::save_conf`, synced with the next sync) together with the index it was applied
//!   at, and restored at open. Committed changes above that index are applied again after a
//!   restart (raft-rs hands them over as committed entries once more).
//! - A **move** (reassignment) is driven by the leader towards a target voter set
//!   ([`ReplicatedPartition::set_move_target`], the same target on every replica): it adds the
//!   new replicas as learners one at a time, waits until each has caught up (from a snapshot
//!   if the entries it needs are compacted), enters a joint configuration (promote the
//!   learners, remove the voters not in the target; explicit transition) and leaves it. A
//!   leader that is not in the target's voters hands leadership to one that is, while the
//!   configuration is joint, before it is left. Every step is decided from the applied
//!   configuration alone, so a new leader picks the move up where the old one left it.

use std::io;

use protobuf::Message as _;
use raft::prelude::{
    ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, ConfState, Entry,
    EntryType,
};

use super::ReplicatedPartition;
use crate::replication::NodeId;
use crate::replication::disk::DiskConf;
use crate::storage::Storage;

/// A learner whose log is within this many entries of the leader's last index has caught up
/// (a joint configuration then commits without waiting for it long).
const CAUGHT_UP_LAG_ENTRIES: u64 = 64;

/// Configuration-change state of one replica.
#[derive(Debug, Default)]
pub(super) struct Members {
    /// Index of the entry (or snapshot) of the configuration last applied.
    index: u64,
    /// Applied but not saved yet.
    to_save: Option<DiskConf>,
    /// Applied since the owner last asked ([`ReplicatedPartition::take_conf_changed`]).
    changed: bool,
    /// The voter set a move heads for (sorted).
    target: Option<Vec<NodeId>>,
    /// The learners the group should have, its voters unchanged (sorted; the controller
    /// group's non-voting nodes: docs/replication.md, "Dynamic nodes").
    learner_target: Option<Vec<NodeId>>,
    /// Conf changes this replica proposed (for tests and reports).
    proposed: u64,
}

impl Members {
    pub(super) fn new(index: u64) -> Self {
        Members {
            index,
            ..Members::default()
        }
    }
}

/// What a move is at, as this replica sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoveStep {
    /// No target set.
    Idle,
    /// Learners are being added or catching up.
    AddingLearners,
    /// The configuration is joint (old and new voters).
    Joint,
    /// The applied configuration is the target's voters, with no learners.
    Done,
}

/// The configuration a replica opens with: the saved one, else `voters` alone.
pub(super) fn start_conf(saved: Option<&DiskConf>, voters: &[NodeId]) -> ConfState {
    match saved {
        Some(c) => {
            let mut cs = ConfState::from((c.voters.clone(), c.learners.clone()));
            cs.voters_outgoing = c.voters_outgoing.clone();
            cs.learners_next = c.learners_next.clone();
            cs.auto_leave = c.auto_leave;
            cs
        }
        None => ConfState::from((voters.to_vec(), Vec::<NodeId>::new())),
    }
}

fn disk_conf(cs: &ConfState, index: u64) -> DiskConf {
    let sorted = |v: &[u64]| {
        let mut v = v.to_vec();
        v.sort_unstable();
        v
    };
    DiskConf {
        index,
        voters: sorted(cs.get_voters()),
        learners: sorted(cs.get_learners()),
        voters_outgoing: sorted(cs.get_voters_outgoing()),
        learners_next: sorted(cs.get_learners_next()),
        auto_leave: cs.auto_leave,
    }
}

/// Whether configuration `cs` names `id` (as a voter, old or new, or a learner).
pub(super) fn conf_names(cs: &ConfState, id: NodeId) -> bool {
    cs.get_voters().contains(&id)
        || cs.get_voters_outgoing().contains(&id)
        || cs.get_learners().contains(&id)
        || cs.get_learners_next().contains(&id)
}

fn single(node_id: NodeId, change_type: ConfChangeType) -> ConfChangeSingle {
    let mut c = ConfChangeSingle {
        node_id,
        ..ConfChangeSingle::default()
    };
    c.set_change_type(change_type);
    c
}

impl<S: Storage, T> ReplicatedPartition<S, T> {
    /// A committed configuration-change entry: applied unless the saved configuration has it
    /// already (a restart's second delivery).
    pub(super) fn apply_conf_entry(&mut self, e: &Entry) {
        if e.index <= self.members.index {
            return;
        }
        // Replicas propose only v2 changes; a v1 entry is not ours.
        let cc = match e.get_entry_type() {
            EntryType::EntryConfChangeV2 => ConfChangeV2::parse_from_bytes(&e.data).ok(),
            EntryType::EntryConfChange => None,
            EntryType::EntryNormal => return,
        };
        let Some(cc) = cc else {
            tracing::warn!(
                group = self.group,
                index = e.index,
                "undecodable conf change skipped"
            );
            return;
        };
        match self.node.apply_conf_change(&cc) {
            Ok(cs) => {
                tracing::info!(group = self.group, index = e.index, conf = ?cs, "configuration applied");
                self.node.mut_store().wl().set_conf_state(cs.clone());
                self.members.index = e.index;
                self.members.to_save = Some(disk_conf(&cs, e.index));
                self.members.changed = true;
            }
            // The same on every replica (the same configuration refuses the same change).
            Err(err) => {
                tracing::warn!(group = self.group, index = e.index, error = %err, "conf change refused");
            }
        }
    }

    /// Saves a configuration applied since the last call (synced with the next sync).
    pub(super) async fn save_conf(&mut self) -> io::Result<()> {
        if let Some(c) = self.members.to_save.take()
            && let Err(e) = self.disk.save_conf(c.clone()).await
        {
            self.members.to_save = Some(c);
            return Err(e);
        }
        Ok(())
    }

    /// A snapshot installed at `index` brings its configuration (raft-rs restored it).
    pub(super) async fn snapshot_conf(&mut self, index: u64, cs: &ConfState) -> io::Result<()> {
        if index <= self.members.index {
            return Ok(());
        }
        self.members.index = index;
        self.members.changed = true;
        self.members.to_save = None;
        self.disk.save_conf(disk_conf(cs, index)).await
    }

    /// The applied configuration.
    pub fn conf_state(&self) -> ConfState {
        self.node.raft.prs().conf().to_conf_state()
    }

    /// The learners of the applied configuration (sorted).
    pub fn learners(&self) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = self.conf_state().get_learners().to_vec();
        v.sort_unstable();
        v
    }

    /// Whether `id` is a voter or a learner of the applied configuration.
    pub fn is_member(&self, id: NodeId) -> bool {
        self.node.raft.prs().get(id).is_some()
    }

    /// Index of the configuration last applied (0: the one given at open).
    pub fn conf_index(&self) -> u64 {
        self.members.index
    }

    /// Whether a configuration was applied since the last call (the owner's report).
    pub fn take_conf_changed(&mut self) -> bool {
        std::mem::take(&mut self.members.changed)
    }

    /// Conf changes this replica proposed (in this process).
    pub fn conf_changes_proposed(&self) -> u64 {
        self.members.proposed
    }

    /// Sets (or clears) the voter set a move heads for. Every replica may hold it; only the
    /// leader acts on it, on its ticks. Empty: cleared.
    pub fn set_move_target(&mut self, target: Option<Vec<NodeId>>) {
        self.members.target = target
            .map(|mut t| {
                t.sort_unstable();
                t.dedup();
                t
            })
            .filter(|t| !t.is_empty());
    }

    /// Sets (or clears) the learners the group should have while its voters stay: the leader
    /// adds the missing ones and removes the others, one change at a time, on its ticks. A
    /// move target, when set, takes precedence. Empty: no learners.
    pub fn set_learner_target(&mut self, learners: Option<Vec<NodeId>>) {
        self.members.learner_target = learners.map(|mut t| {
            t.sort_unstable();
            t.dedup();
            t
        });
    }

    pub fn move_target(&self) -> Option<&[NodeId]> {
        self.members.target.as_deref()
    }

    /// Where the move is, from the applied configuration.
    pub fn move_step(&self) -> MoveStep {
        let Some(target) = &self.members.target else {
            return MoveStep::Idle;
        };
        let cs = self.conf_state();
        if !cs.get_voters_outgoing().is_empty() {
            return MoveStep::Joint;
        }
        let mut voters = cs.get_voters().to_vec();
        voters.sort_unstable();
        if &voters == target && cs.get_learners().is_empty() {
            MoveStep::Done
        } else {
            MoveStep::AddingLearners
        }
    }

    /// Whether the configuration is plain (no learners, not joint) and no move is under way
    /// (a leader does not hibernate during a move).
    pub(super) fn membership_settled(&self) -> bool {
        let cs = self.conf_state();
        let learners_settled = match &self.members.learner_target {
            None => cs.get_learners().is_empty(),
            Some(want) => {
                let mut have = cs.get_learners().to_vec();
                have.sort_unstable();
                let last = self.last_index();
                &have == want
                    && have.iter().all(|l| {
                        self.node
                            .raft
                            .prs()
                            .get(*l)
                            .is_some_and(|pr| pr.matched >= last)
                    })
            }
        };
        learners_settled
            && cs.get_learners_next().is_empty()
            && cs.get_voters_outgoing().is_empty()
            && matches!(self.move_step(), MoveStep::Idle | MoveStep::Done)
    }

    /// `id`'s log is close to this leader's and holds the configuration last applied (so it
    /// answered since it was added: raft-rs counts a new replica as recently active), and it
    /// answered recently.
    fn caught_up(&self, id: NodeId) -> bool {
        let last = self.last_index();
        let conf = self.members.index;
        self.node.raft.prs().get(id).is_some_and(|pr| {
            pr.recent_active && pr.matched >= conf && pr.matched + CAUGHT_UP_LAG_ENTRIES >= last
        })
    }

    fn propose_cc(&mut self, cc: ConfChangeV2) {
        match self.node.propose_conf_change(Vec::new(), cc) {
            Ok(()) => self.members.proposed += 1,
            Err(e) => tracing::debug!(group = self.group, error = %e, "conf change not proposed"),
        }
    }

    /// One step of a move, on the leader's tick (see the module doc). Nothing while a
    /// configuration change is in flight or leadership is being transferred.
    pub(super) fn drive_move(&mut self) {
        let Some(target) = self.members.target.clone() else {
            self.drive_learners();
            return;
        };
        if !self.is_leader() || self.transferring() || self.node.raft.has_pending_conf() {
            return;
        }
        let cs = self.conf_state();
        if !cs.get_voters_outgoing().is_empty() {
            if cs.get_voters().contains(&self.id) {
                // Leave the joint configuration.
                self.propose_cc(ConfChangeV2::default());
            } else if let Some(to) = cs.get_voters().iter().copied().find(|v| self.caught_up(*v)) {
                tracing::info!(
                    group = self.group,
                    to,
                    "leader leaves the replica set: transferring"
                );
                self.node.transfer_leader(to);
            }
            return;
        }
        let voters = cs.get_voters();
        let learners = cs.get_learners();
        let mut cc = ConfChangeV2::default();
        if let Some(l) = learners.iter().find(|l| !target.contains(l)) {
            cc.mut_changes()
                .push(single(*l, ConfChangeType::RemoveNode));
        } else if let Some(n) = target
            .iter()
            .find(|n| !voters.contains(n) && !learners.contains(n))
        {
            cc.mut_changes()
                .push(single(*n, ConfChangeType::AddLearnerNode));
        } else {
            let mut sorted = voters.to_vec();
            sorted.sort_unstable();
            if sorted == target || !learners.iter().all(|l| self.caught_up(*l)) {
                return;
            }
            for l in learners {
                cc.mut_changes().push(single(*l, ConfChangeType::AddNode));
            }
            for v in voters.iter().filter(|v| !target.contains(v)) {
                cc.mut_changes()
                    .push(single(*v, ConfChangeType::RemoveNode));
            }
            cc.set_transition(ConfChangeTransition::Explicit);
        }
        self.propose_cc(cc);
    }

    /// One step towards the learner target (no move under way): remove a learner not in it,
    /// else add one of it that is not a member. Voters are never changed here.
    fn drive_learners(&mut self) {
        let Some(want) = self.members.learner_target.clone() else {
            return;
        };
        if !self.is_leader() || self.transferring() || self.node.raft.has_pending_conf() {
            return;
        }
        let cs = self.conf_state();
        if !cs.get_voters_outgoing().is_empty() {
            return;
        }
        let voters = cs.get_voters();
        let learners = cs.get_learners();
        let mut cc = ConfChangeV2::default();
        if let Some(l) = learners.iter().find(|l| !want.contains(l)) {
            cc.mut_changes()
                .push(single(*l, ConfChangeType::RemoveNode));
        } else if let Some(n) = want
            .iter()
            .find(|n| !voters.contains(n) && !learners.contains(n))
        {
            cc.mut_changes()
                .push(single(*n, ConfChangeType::AddLearnerNode));
        } else {
            return;
        }
        tracing::info!(group = self.group, change = ?cc.get_changes(), "learner change proposed");
        self.propose_cc(cc);
    }
}
