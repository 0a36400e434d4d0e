//! Request and response bodies, version 0 of every api (docs/protocol.md, "Messages").
//!
//! Plain messages derive rkyv's `Archive`: their payload is the rkyv archive of the struct, read
//! with validated `access` and deserialized. The three messages that carry record batches
//! ([`ProduceRequest`], [`FetchResponse`], [`Push`]) hold them as [`Bytes`]: on the wire the
//! batches sit raw and 16-aligned in the payload's data section, and an rkyv *envelope* (see
//! `codec.rs`) names them by offset and length. Batches are never re-encoded.
//!
//! Integers are explicit widths (never `usize`) so that the archive does not depend on the
//! platform. Changing a field's type, order or meaning is a new api version.

use bytes::Bytes;

pub use super::security::*;
use rkyv::{Archive, Deserialize, Serialize};

/// How much durability a producer waits for; the same levels as the engine's `Acks`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[rkyv(derive(Debug))]
pub enum Acks {
    /// No response at all, not even for errors.
    None,
    /// Appended in order, in memory.
    Leader,
    /// Covered by fdatasync.
    #[default]
    Durable,
    /// Committed: fsynced on a majority of the partition's replicas (issue 14; wire value 3).
    /// On a partition with one replica it is `Durable`.
    All,
}

/// Where to start reading, as in the engine's `OffsetSpec`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[rkyv(derive(Debug))]
pub enum OffsetSpec {
    Earliest,
    Latest,
    /// First record with a timestamp at or after this many microseconds since the Unix epoch.
    Timestamp(i64),
    At(u64),
}

/// Which batches a read sees (docs/semantics.md, "What readers see"). Not part of the
/// archives: Fetch and Subscribe carry it from version 1 in a read-options trailer after the
/// archive (docs/protocol.md, "Read options"); a version 0 request reads `Appended`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ReadIsolation {
    /// Everything appended (a `durable` producer's batches once written): the default.
    #[default]
    Appended,
    /// Only what an fdatasync covered (`read_committed`-style).
    Durable,
}

impl ReadIsolation {
    /// The byte in the read-options trailer.
    pub fn as_u8(self) -> u8 {
        match self {
            ReadIsolation::Appended => 0,
            ReadIsolation::Durable => 1,
        }
    }

    pub fn from_u8(b: u8) -> Option<ReadIsolation> {
        match b {
            0 => Some(ReadIsolation::Appended),
            1 => Some(ReadIsolation::Durable),
            _ => None,
        }
    }
}

/// One api's version range, as a peer supports it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[rkyv(derive(Debug))]
pub struct ApiRange {
    pub api_key: u16,
    pub min_version: u16,
    pub max_version: u16,
}

/// The version chosen for one api.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[rkyv(derive(Debug))]
pub struct ApiVersion {
    pub api_key: u16,
    pub version: u16,
}

// ---------------------------------------------------------------------------------------------
// 0 Handshake

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct HandshakeRequest {
    /// Free text naming the client (logs and stats), at most `NAME_BYTES_MAX` bytes.
    pub client_id: String,
    /// Every api the client may use, with the versions it speaks.
    pub apis: Vec<ApiRange>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct HandshakeResponse {
    /// Free text naming the server build ("shardline 0.1.0").
    pub server_id: String,
    /// For each api both sides speak, the version to use on this connection.
    pub apis: Vec<ApiVersion>,
    /// Largest frame the server accepts; the client's encoder must not exceed it.
    pub frame_bytes_max: u32,
    /// The shard whose listener accepted this connection.
    pub shard: u32,
    pub shard_count: u32,
}

// ---------------------------------------------------------------------------------------------
// 1 Ping

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct PingRequest {
    /// Echoed back unchanged (a client may put its send time here).
    pub nonce: u64,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct PingResponse {
    pub nonce: u64,
}

// ---------------------------------------------------------------------------------------------
// 2 Metadata

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct MetadataRequest {
    /// Topics to describe; empty means all.
    pub topics: Vec<String>,
}

/// The address that reaches one shard's own listener (no cross-shard hop).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct ShardAddress {
    pub shard: u32,
    /// `host:port`.
    pub address: String,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct TopicMetadata {
    pub name: String,
    /// `code::NONE`, or why the topic is missing (`UNKNOWN_TOPIC`).
    pub error_code: u16,
    pub topic_id: u64,
    /// `partition_shards[p]` is the shard that owns partition `p`.
    pub partition_shards: Vec<u32>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct MetadataResponse {
    /// One entry per shard, sorted by shard.
    pub shards: Vec<ShardAddress>,
    pub topics: Vec<TopicMetadata>,
}

// ---------------------------------------------------------------------------------------------
// 3..6 Topic administration

/// Settings of a topic, as the engine's `TopicConfig`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct TopicConfig {
    pub partitions: u32,
    pub retention_bytes: Option<u64>,
    pub retention_ms: Option<u64>,
    pub segment_bytes: Option<u64>,
    pub segment_ms: Option<u64>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct TopicInfo {
    pub name: String,
    pub topic_id: u64,
    pub config: TopicConfig,
    /// `partition_shards[p]` is the shard that owns partition `p`.
    pub partition_shards: Vec<u32>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct CreateTopicRequest {
    pub name: String,
    pub config: TopicConfig,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct CreateTopicResponse {
    pub topic: TopicInfo,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct DeleteTopicRequest {
    pub name: String,
}

/// Empty: success is the answer. (An empty struct archives to zero bytes.)
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct DeleteTopicResponse {}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct ListTopicsRequest {}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct ListTopicsResponse {
    pub topics: Vec<TopicInfo>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct DescribeTopicRequest {
    pub name: String,
}

/// Live state of one partition (the engine's `PartitionInfo` without the topic name).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct PartitionInfo {
    pub partition: u32,
    pub shard: u32,
    pub log_start: u64,
    pub high_watermark: u64,
    pub durable_offset: u64,
    pub next_offset: u64,
    pub size_bytes: u64,
    pub segments: u32,
    pub cache_bytes: u64,
    pub produced_records: u64,
    pub produced_bytes: u64,
    pub fetched_records: u64,
    /// Why the partition stopped accepting writes, if it did.
    pub failure: Option<String>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct DescribeTopicResponse {
    pub topic: TopicInfo,
    pub partitions: Vec<PartitionInfo>,
}

// ---------------------------------------------------------------------------------------------
// 7 Produce (carries raw batches)

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProduceRequest {
    pub acks: Acks,
    /// How long the server may wait for the requested durability before answering `TIMEOUT`
    /// for a partition; 0 means the server's default.
    pub timeout_ms: u32,
    pub topics: Vec<ProduceTopic>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProduceTopic {
    pub name: String,
    pub partitions: Vec<ProducePartition>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProducePartition {
    pub partition: u32,
    /// One record batch (engine/src/batch.rs), exactly as the producer built it.
    pub batch: Bytes,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct ProduceResponse {
    /// Same topics and partitions, in the same order, as the request.
    pub topics: Vec<ProduceTopicResult>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct ProduceTopicResult {
    pub name: String,
    pub partitions: Vec<ProducePartitionResult>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct ProducePartitionResult {
    pub partition: u32,
    pub error_code: u16,
    /// Offsets assigned to the batch; meaningless unless `error_code` is `NONE`.
    pub base_offset: u64,
    pub last_offset: u64,
    pub error_message: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// 8 Fetch (response carries raw batches)

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct FetchRequest {
    /// Long poll: wait up to this long for data if no partition has any (server clamps).
    pub max_wait_ms: u32,
    /// Budget for the whole response's batch bytes; a partition's first batch is always
    /// returned whole, so a consumer progresses even past a batch above the budget.
    pub max_bytes: u32,
    pub topics: Vec<FetchTopic>,
    /// From version 1, in the read-options trailer (not archived); version 0 reads `Appended`.
    #[rkyv(with = rkyv::with::Skip)]
    pub isolation: ReadIsolation,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct FetchTopic {
    pub name: String,
    pub partitions: Vec<FetchPartition>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct FetchPartition {
    pub partition: u32,
    pub offset: u64,
    pub max_bytes: u32,
    /// 0 means no record limit.
    pub max_records: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FetchResponse {
    /// Same topics and partitions, in the same order, as the request.
    pub topics: Vec<FetchTopicResult>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FetchTopicResult {
    pub name: String,
    pub partitions: Vec<FetchPartitionResult>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FetchPartitionResult {
    pub partition: u32,
    pub error_code: u16,
    pub error_message: Option<String>,
    pub high_watermark: u64,
    pub log_start: u64,
    /// Where the next fetch should start.
    pub next_offset: u64,
    /// Records in `chunks` at or after the requested offset.
    pub records: u32,
    /// Consecutive whole batches, as stored; the first may start before the requested offset.
    pub chunks: Vec<Bytes>,
}

// ---------------------------------------------------------------------------------------------
// 9 ListOffsets

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct ListOffsetsRequest {
    pub topics: Vec<ListOffsetsTopic>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct ListOffsetsTopic {
    pub name: String,
    pub partitions: Vec<ListOffsetsPartition>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ListOffsetsPartition {
    pub partition: u32,
    pub spec: OffsetSpec,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct ListOffsetsResponse {
    pub topics: Vec<ListOffsetsTopicResult>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct ListOffsetsTopicResult {
    pub name: String,
    pub partitions: Vec<ListOffsetsPartitionResult>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct ListOffsetsPartitionResult {
    pub partition: u32,
    pub error_code: u16,
    pub error_message: Option<String>,
    pub offset: u64,
}

// ---------------------------------------------------------------------------------------------
// 10..13 Subscriptions and server push

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct SubscribeRequest {
    pub topic: String,
    pub partition: u32,
    pub start: OffsetSpec,
    /// Initial credit, which is also the subscription's *window* (docs/protocol.md,
    /// "Flow control"): records and batch bytes the server may have pushed and not yet had
    /// granted back.
    pub credit_records: u32,
    pub credit_bytes: u64,
    /// From version 1, in the read-options trailer (not archived); version 0 reads `Appended`.
    #[rkyv(with = rkyv::with::Skip)]
    pub isolation: ReadIsolation,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct SubscribeResponse {
    /// Chosen by the server, unique on the connection while the subscription lives; every Push
    /// frame of the subscription carries it as its correlation id.
    pub subscription_id: u32,
    /// The resolved start offset.
    pub start_offset: u64,
    pub high_watermark: u64,
    pub log_start: u64,
}

/// Adds credit to a subscription. Never answered, except by an error frame when malformed.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct GrantCreditsRequest {
    pub subscription_id: u32,
    pub records: u32,
    pub bytes: u64,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct UnsubscribeRequest {
    pub subscription_id: u32,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct UnsubscribeResponse {
    pub subscription_id: u32,
    /// The offset the subscription would have pushed next (resume point).
    pub next_offset: u64,
}

/// Server-initiated: batches of one subscription. Frame kind PUSH, correlation id =
/// `subscription_id`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Push {
    pub subscription_id: u32,
    /// Records at or after the subscription's position: what this push costs in record credit.
    pub records: u32,
    pub next_offset: u64,
    pub high_watermark: u64,
    pub log_start: u64,
    /// Consecutive whole batches; their total length is what this push costs in byte credit.
    pub chunks: Vec<Bytes>,
}

impl Push {
    /// Byte credit this push consumes.
    pub fn bytes(&self) -> u64 {
        self.chunks.iter().map(|c| c.len() as u64).sum()
    }
}

// ---------------------------------------------------------------------------------------------
// 14 Stats

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct StatsRequest {}

/// Counters of one shard, as the engine's `ShardStats`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct ShardStats {
    pub shard: u32,
    pub partitions: u32,
    pub cache_bytes: u64,
    pub flushes: u64,
    pub syncs: u64,
    pub flushed_bytes: u64,
}

/// A named server counter (connections, requests, errors...): the server adds counters without
/// a new api version.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct Counter {
    pub name: String,
    pub value: u64,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct StatsResponse {
    pub uptime_ms: u64,
    pub shards: Vec<ShardStats>,
    pub counters: Vec<Counter>,
}

// ---------------------------------------------------------------------------------------------
// Errors

/// Payload of every frame with the ERROR flag: the request failed as a whole (per-partition
/// failures are reported inside the api's response instead).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct ErrorResponse {
    /// `error::code`: an engine code (`1..=99`) or a protocol code (`100..`).
    pub code: u16,
    /// Human-readable detail, at most `MESSAGE_BYTES_MAX` bytes.
    pub message: String,
}

impl ErrorResponse {
    /// Builds an error, cutting the message to `MESSAGE_BYTES_MAX` bytes on a char boundary.
    pub fn new(code: u16, message: impl Into<String>) -> Self {
        // Never hand a peer the server's address layout (issue 16, finding 4).
        let mut message = scrub_addresses(message.into());
        truncate_utf8(&mut message, super::MESSAGE_BYTES_MAX);
        ErrorResponse { code, message }
    }

    /// The error to answer a frame with when its decoding failed.
    pub fn from_wire(e: &super::WireError) -> Self {
        ErrorResponse::new(e.code(), e.to_string())
    }
}

/// Cuts `s` to at most `max` bytes without splitting a character.
pub fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

/// Replaces every hexadecimal number of 5 or more digits written `0x...` (a pointer, in the
/// text of a bytecheck or allocator error) with `0x?`, so error text sent to clients never
/// carries memory addresses. Short hex values (flags, `0x0004`) are kept.
pub fn scrub_addresses(s: impl Into<String>) -> String {
    let s: String = s.into();
    if !s.contains("0x") {
        return s;
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s.as_str();
    while let Some(at) = rest.find("0x") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let digits = after.bytes().take_while(u8::is_ascii_hexdigit).count();
        if digits >= 5 {
            out.push_str("0x?");
        } else {
            out.push_str(&rest[at..at + 2 + digits]);
        }
        rest = &after[digits..];
    }
    out.push_str(rest);
    out
}
