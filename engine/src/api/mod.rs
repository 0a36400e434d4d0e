//! The public API types (bottom layer, docs/architecture.md "Layers"): what callers of the
//! engine send and get back. Plain data: nothing here knows shards, partitions or the broker,
//! so every layer may use them.

pub mod config;
pub mod queue;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::error::{Error, Result};
pub use config::{QueueConfig, TopicConfig};

/// How much durability a producer waits for (docs/semantics.md, "Acknowledgements").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Acks {
    /// No reply at all.
    None,
    /// Appended in order to the partition, in memory; survives nothing.
    Leader,
    /// Covered by fdatasync: survives a process crash and a power loss.
    #[default]
    Durable,
    /// Replicated partitions (issue 14): committed, i.e. fsynced on a majority of the
    /// replicas (docs/replication.md). A partition that is not replicated treats it as
    /// `Durable` (its one copy is the majority).
    All,
}

impl std::str::FromStr for Acks {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "none" => Ok(Acks::None),
            "leader" => Ok(Acks::Leader),
            "durable" => Ok(Acks::Durable),
            "all" => Ok(Acks::All),
            _ => Err(Error::InvalidArgument(format!(
                "acks must be none, leader, durable or all, not '{s}'"
            ))),
        }
    }
}

/// Offsets assigned to a produced batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProduceAck {
    pub base_offset: u64,
    pub last_offset: u64,
}

/// Where to start reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetSpec {
    Earliest,
    Latest,
    /// First record with a timestamp at or after this (microseconds since the epoch).
    Timestamp(i64),
    At(u64),
}

/// Batches returned by a fetch or pushed to a subscription.
#[derive(Debug, Clone, Default)]
pub struct FetchResponse {
    /// Consecutive whole batches; the first may start before the requested offset.
    pub chunks: Vec<Bytes>,
    pub records: usize,
    pub bytes: usize,
    /// Offset after the last returned record (where the next fetch should start).
    pub next_offset: u64,
    pub high_watermark: u64,
    pub log_start: u64,
}

/// State of one partition, for describe/stats.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PartitionInfo {
    pub topic: String,
    pub partition: u32,
    pub shard: usize,
    pub log_start: u64,
    pub high_watermark: u64,
    pub durable_offset: u64,
    pub next_offset: u64,
    pub size_bytes: u64,
    pub segments: usize,
    pub cache_bytes: usize,
    pub produced_records: u64,
    pub produced_bytes: u64,
    pub fetched_records: u64,
    pub fetched_bytes: u64,
    pub failure: Option<String>,
}

/// Per-shard counters.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ShardStats {
    pub shard: usize,
    pub partitions: usize,
    pub cache_bytes: usize,
    pub flushes: u64,
    pub syncs: u64,
    pub flushed_bytes: u64,
}

/// A partition's name inside the engine: topic and partition number.
pub(crate) type PartitionKey = (Arc<str>, u32);

/// Largest fetch response by default (`FetchRequest::new`).
pub const FETCH_BYTES_DEFAULT: usize = 1 << 20;

/// A fetch request.
#[derive(Debug, Clone)]
pub struct FetchRequest {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    pub max_bytes: usize,
    pub max_records: usize,
    /// Long poll: wait up to this long for data if there is none at `offset`.
    pub max_wait: Duration,
}

impl FetchRequest {
    pub fn new(topic: impl Into<String>, partition: u32, offset: u64) -> Self {
        FetchRequest {
            topic: topic.into(),
            partition,
            offset,
            max_bytes: FETCH_BYTES_DEFAULT,
            max_records: usize::MAX,
            max_wait: Duration::ZERO,
        }
    }
}

/// Where a topic's partitions live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRoute {
    pub name: Arc<str>,
    pub id: u64,
    /// `shards[p]` owns partition `p`.
    pub shards: Vec<u32>,
    /// Batches on disk are sealed (crypto.rs); readers open them with `Engine::keyring`.
    pub encrypted: bool,
}

/// A topic as listed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TopicInfo {
    pub name: String,
    pub id: u64,
    pub config: TopicConfig,
    pub shards: Vec<u32>,
}

/// A topic with the live state of each partition.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TopicDescription {
    pub info: TopicInfo,
    pub partitions: Vec<PartitionInfo>,
}
