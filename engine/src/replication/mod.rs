//! Replicated partitions: one Raft group per partition (tikv/raft-rs, `raft` 0.7), many groups
//! per node (docs/replication.md).
//!
//! - [`ReplicatedPartition`]: one replica: a raft-rs `RawNode`, the replica's Raft files
//!   ([`disk::RaftDisk`], through [`Storage`](crate::storage::Storage) so that `CrashStorage`
//!   and the simulator can crash them), the side index (Raft index/term <-> offsets of each
//!   record batch), the high watermark (= the commit index mapped to an offset) and the
//!   producers waiting for `durable` or `all`.
//! - [`ReplicaNode`]: every replica of one node (or shard): one tick for all groups, the
//!   messages of all groups collected per peer per round ([`Outbox`]), incoming frames
//!   dispatched by group id. This is the engine side of the "Engine <-> transport" interface
//!   (docs/replication.md).
//!
//! Layer: above the partition core, below the shard (engine/tests/layering.rs).

pub mod disk;
#[cfg(test)]
mod hibernate_tests;
#[cfg(test)]
mod membership_tests;
mod node;
mod partition;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use bytes::Bytes;

pub use node::{LIVENESS_GROUP, ReplicaNode};
pub use partition::{
    Chunk, ChunkRequest, MoveStep, Proposed, ReplSabotage, ReplicatedPartition, Reply, SideEntry,
    Transfer, snapshot_of,
};
pub use partition::{SNAPSHOT_CHUNK_BYTES, snapshot_chunk_is_dense};

use crate::api::Acks;

/// A node of the cluster (`--node-id`; never 0, raft-rs's "none").
pub type NodeId = u64;
/// A Raft group (one replicated partition, or the controller).
pub type GroupId = u64;

/// Raft timing, in ticks of `tick_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaConfig {
    pub tick_ms: u64,
    /// A leader sends heartbeats every this many ticks.
    pub heartbeat_ticks: usize,
    /// A follower that hears no leader for a random number of ticks in
    /// `[election_ticks, election_ticks_max)` starts a (pre-)vote.
    pub election_ticks: usize,
    pub election_ticks_max: usize,
}

impl Default for ReplicaConfig {
    /// Tick 100 ms, heartbeat every 2 ticks, election after 10 to 20 ticks (1-2 s).
    fn default() -> Self {
        ReplicaConfig {
            tick_ms: 100,
            heartbeat_ticks: 2,
            election_ticks: 10,
            election_ticks_max: 20,
        }
    }
}

/// How safe a batch must be before its producer is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ReplAcks {
    /// No answer.
    None,
    /// Appended to the leader's Raft log (in memory).
    Leader,
    /// Covered by the leader's fsync.
    Durable,
    /// Committed: in the Raft log of a majority of the replicas, each fsynced.
    All,
}

impl From<Acks> for ReplAcks {
    fn from(a: Acks) -> Self {
        match a {
            Acks::None => ReplAcks::None,
            Acks::Leader => ReplAcks::Leader,
            Acks::Durable => ReplAcks::Durable,
            Acks::All => ReplAcks::All,
        }
    }
}

/// Why a replicated produce was not acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplError {
    /// This replica is not (or no longer) the leader; `leader` is the one it knows of. The
    /// batch may still have been committed: retry idempotently.
    #[error("not the leader (leader epoch {epoch}, leader {leader:?})")]
    NotLeader { leader: Option<NodeId>, epoch: u64 },
    #[error("invalid batch: {0}")]
    Invalid(String),
    /// The replica stopped (disk error, shutting down) before the batch was safe.
    #[error("replica unavailable")]
    Unavailable,
}

impl ReplError {
    /// The engine error a client of partition `topic`/`partition` gets.
    pub fn into_engine(self, topic: &str, partition: u32) -> crate::error::Error {
        use crate::error::Error;
        match self {
            ReplError::NotLeader { leader, epoch } => Error::NotLeader {
                topic: topic.to_string(),
                partition,
                leader,
                epoch,
            },
            ReplError::Invalid(reason) => Error::CorruptBatch(reason),
            ReplError::Unavailable => Error::PartitionFailed {
                topic: topic.to_string(),
                partition,
                reason: "replica unavailable".into(),
            },
        }
    }
}

/// Outgoing Raft messages of one round, per peer node: every group's messages to a peer
/// travel together (one frame per peer per round is the transport's job).
#[derive(Debug, Default)]
pub struct Outbox {
    per_peer: BTreeMap<NodeId, Vec<(GroupId, Bytes)>>,
    bytes: usize,
}

impl Outbox {
    pub fn push(&mut self, to: NodeId, group: GroupId, msg: Bytes) {
        self.bytes += msg.len();
        self.per_peer.entry(to).or_default().push((group, msg));
    }

    pub fn is_empty(&self) -> bool {
        self.per_peer.is_empty()
    }

    /// Message bytes queued.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Takes everything queued: one `(peer, messages)` per peer, peers in id order.
    pub fn drain(&mut self) -> Vec<(NodeId, Vec<(GroupId, Bytes)>)> {
        self.bytes = 0;
        std::mem::take(&mut self.per_peer).into_iter().collect()
    }
}
