//! Shardline's storage engine: topics split into partitions, each partition a segmented,
//! append-only log owned by one shard (a glommio executor pinned to one core).
//!
//! Layers, bottom up; a module imports only from its own layer and the ones below it
//! (docs/architecture.md, "Layers"; checked by `tests/layering.rs`):
//! 0. [`batch`] (the record-batch format), [`api`] (the public API types), [`error`],
//!    [`crypto`], [`util`];
//! 1. [`storage`] (the narrow file trait and the crash-image backend), `rt` (the only module
//!    that touches glommio), [`log`] (one partition's log), [`config`], [`metadata`],
//!    [`producer_ids`], [`metrics`];
//! 2. [`partition`]: the sans-IO partition core, and [`idempotence`] (the producer table);
//! 3. [`shard`]: the runtime shell (executor, inbox, timers, I/O jobs);
//! 4. [`broker`]: the [`Engine`] handle and the messaging semantics ([`groups`], [`queue`]);
//! 5. `sim`: the deterministic simulator of the partition core (test infrastructure, hidden;
//!    nothing imports it).

pub mod api;
pub mod batch;
pub mod broker;
pub mod config;
pub mod crypto;
pub mod error;
pub mod idempotence;
pub mod log;
pub mod metadata;
pub mod metrics;
pub mod partition;
pub mod producer_ids;
pub mod replication;
pub mod rt;
pub mod shard;
#[doc(hidden)]
pub mod sim;
pub mod storage;
pub mod util;

pub use broker::{engine, groups, queue};

pub use api::{
    Acks, FetchRequest, FetchResponse, Isolation, OffsetSpec, PartitionInfo, ProduceAck,
    ShardStats, TopicDescription, TopicInfo, TopicRoute,
};
pub use batch::{BatchBuilder, Header, Record};
pub use broker::cluster::{
    GroupId, NodeHook, NodeId, PeerSink, ReplicaConfig, ReplicaStatus, SecurityChanges,
    SecurityHook,
};
pub use broker::engine::{Engine, PendingAck, ShardHandle, ShardTask, Subscription};
pub use config::{EngineConfig, TopicConfig};
pub use error::{Error, Result};
pub use queue::{
    LeaseError, QueueConfig, QueueMessage, QueuePartitionStats, Receipt, ReceiveOptions,
};
