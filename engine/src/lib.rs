//! Shardline's storage engine: topics split into partitions, each partition a segmented,
//! append-only log owned by one shard (a glommio executor pinned to one core).
//!
//! Layers, bottom up (docs/architecture.md):
//! - [`batch`]: the record-batch format (same bytes on the wire, on disk, in the cache);
//! - [`storage`]: the narrow file trait the log is written against, and the crash-image backend;
//! - [`log`]: one partition's log: append, group commit, reads, recovery, retention;
//! - `rt`: the only module that touches glommio (executors, DMA files, timers);
//! - [`shard`] and [`engine`]: shard state, request routing, and the embedding API;
//! - [`queue`]: work queues on topics (leases, acks, dead letters, priorities, the ack log).

pub mod batch;
pub mod config;
pub mod crypto;
pub mod engine;
pub mod error;
pub mod groups;
pub mod idempotence;
pub mod log;
pub mod metadata;
pub mod metrics;
pub mod partition;
pub mod producer_ids;
pub mod queue;
pub mod rt;
pub mod shard;
#[doc(hidden)]
pub mod sim;
pub mod storage;
pub mod util;

pub use batch::{BatchBuilder, Header, Record};
pub use config::{EngineConfig, TopicConfig};
pub use engine::{
    Engine, FetchRequest, PendingAck, Subscription, TopicDescription, TopicInfo, TopicRoute,
};
pub use error::{Error, Result};
pub use queue::{
    LeaseError, QueueConfig, QueueMessage, QueuePartitionStats, Receipt, ReceiveOptions,
};
pub use shard::{
    Acks, FetchResponse, OffsetSpec, PartitionInfo, ProduceAck, ShardHandle, ShardStats,
};
