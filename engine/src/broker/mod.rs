//! The broker layer (top of the engine, docs/architecture.md "Layers"): the [`Engine`] handle
//! that routes requests to shards, and the messaging semantics built on partitions: consumer
//! groups ([`groups`]) and work queues ([`queue`]).
//!
//! Nothing below this layer knows it: the shard offers an extension slot
//! (`shard::ShardExtension`) and closures run on a shard (`shard::LocalTask`), and the queue
//! code works through the shard-level primitives of `shard::LocalShard`.

mod admin;
mod balance;
pub mod cluster;
mod data;
pub mod engine;
pub mod groups;
pub mod queue;

pub use cluster::{
    GroupId, NodeHook, NodeId, PeerSink, ReplicaConfig, ReplicaStatus, SecurityChanges,
    SecurityHook,
};
pub use engine::Engine;
