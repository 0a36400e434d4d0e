//! Operations apis (keys 30-39; docs/protocol.md, "30 Metrics", "31 AlterTopic",
//! "32 ResetOffsets", "33 QueuePurge" and "34 ListGroups").
//!
//! `Metrics` carries the same figures as the `/metrics` endpoint (docs/operations.md): the
//! server builds one [`MetricsResponse`] per scrape or request, and both the Prometheus encoder
//! and `shardline stats`/`top` read it. Histograms travel as their occupied HDR buckets, so a
//! client computes any percentile it likes at the server's precision (2 significant digits).

use rkyv::{Archive, Deserialize, Serialize};

use super::messages::TopicInfo;

// ---------------------------------------------------------------------------------------------
// 30 Metrics

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct MetricsRequest {
    /// Also return one entry per partition (and the per-partition extra samples). Off, the
    /// response stays small whatever the partition count.
    pub include_partitions: bool,
}

/// One occupied histogram bucket: `count` values at or below `value` (and above the previous
/// bucket's value).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct HistogramBucket {
    pub value: u64,
    pub count: u64,
}

/// A histogram as its occupied buckets, ascending, and the exact sum of its values.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct Histogram {
    pub buckets: Vec<HistogramBucket>,
    pub sum: u64,
}

/// Requests received on one shard with one api key.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct ApiCount {
    pub api_key: u16,
    pub count: u64,
}

/// Errors answered on one shard for one api key with one error code (whole-request errors
/// and per-partition error codes alike).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct ErrorCount {
    pub api_key: u16,
    pub code: u16,
    pub count: u64,
}

/// Figures of one shard. Latencies are in nanoseconds, sizes in bytes.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct ShardMetrics {
    pub shard: u32,
    pub partitions: u32,
    pub cache_bytes: u64,
    pub unflushed_bytes: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub flushes: u64,
    pub syncs: u64,
    pub flushed_bytes: u64,
    pub connections_open: u64,
    pub connections_accepted: u64,
    pub connections_refused: u64,
    pub requests: Vec<ApiCount>,
    pub errors: Vec<ErrorCount>,
    pub append_durable_ns: Histogram,
    pub append_memory_ns: Histogram,
    pub flush_write_ns: Histogram,
    pub fsync_ns: Histogram,
    pub flush_bytes: Histogram,
    pub batch_bytes: Histogram,
}

/// Figures of one partition.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct PartitionMetrics {
    pub topic: String,
    pub partition: u32,
    pub shard: u32,
    pub log_start: u64,
    /// Log end: the next offset a reader can see (high watermark).
    pub high_watermark: u64,
    pub durable_offset: u64,
    pub size_bytes: u64,
    pub produced_records: u64,
    pub produced_bytes: u64,
    pub fetched_records: u64,
    pub fetched_bytes: u64,
}

/// A figure of an extra family (engine `metrics::EXTRA_FAMILIES`: consumer groups, queues...):
/// label values in the order of the family's label names.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct MetricSample {
    pub family: String,
    pub labels: Vec<String>,
    pub value: i64,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct MetricsResponse {
    pub uptime_ms: u64,
    /// Resident memory of the server process (from /proc/self/statm; 0 if unknown).
    pub resident_bytes: u64,
    pub shards: Vec<ShardMetrics>,
    /// Sorted by topic and partition; empty unless `include_partitions`.
    pub partitions: Vec<PartitionMetrics>,
    pub samples: Vec<MetricSample>,
}

// ---------------------------------------------------------------------------------------------
// 31 AlterTopic

/// A change to one optional setting.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub enum SettingChange {
    /// Leave the setting as it is.
    #[default]
    Keep,
    /// Remove the limit (the topic inherits the server's default).
    Clear,
    Set(u64),
}

impl SettingChange {
    /// The new value, given the current one.
    pub fn apply(self, current: Option<u64>) -> Option<u64> {
        match self {
            SettingChange::Keep => current,
            SettingChange::Clear => None,
            SettingChange::Set(v) => Some(v),
        }
    }
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct AlterTopicRequest {
    pub name: String,
    pub retention_bytes: SettingChange,
    pub retention_ms: SettingChange,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct AlterTopicResponse {
    /// The topic with its new settings.
    pub topic: TopicInfo,
}

// ---------------------------------------------------------------------------------------------
// 32 ResetOffsets

/// Where a reset moves the group's committed offsets.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub enum OffsetResetTarget {
    /// The log start of each partition.
    #[default]
    Earliest,
    /// The log end of each partition (the group skips everything written so far).
    Latest,
    /// This offset, clamped into `[log start, log end]` of each partition.
    Offset(u64),
    /// The first record at or after this time (milliseconds since the epoch); the log end if
    /// there is none.
    TimestampMs(i64),
}

/// Moves a consumer group's committed offsets. Refused with `GROUP_NOT_EMPTY` while the group
/// has live members; answered once the new offsets are durable (or, with `dry_run`, at once
/// with the plan and nothing written).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct ResetOffsetsRequest {
    pub group: String,
    pub topic: String,
    /// One partition; `None`: every partition of the topic.
    pub partition: Option<u32>,
    pub target: OffsetResetTarget,
    pub dry_run: bool,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct PartitionOffsetReset {
    pub partition: u32,
    /// The committed offset before the reset; `None`: the group had none.
    pub previous: Option<u64>,
    /// The committed offset after it.
    pub offset: u64,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct ResetOffsetsResponse {
    /// By partition, ascending.
    pub partitions: Vec<PartitionOffsetReset>,
}

// ---------------------------------------------------------------------------------------------
// 33 QueuePurge

/// Discards every message of a work queue below each partition's log end, in flight ones
/// included (their leases are refused afterwards). Answered once durable.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct QueuePurgeRequest {
    pub topic: String,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct QueuePurgedPartition {
    pub partition: u32,
    /// Messages discarded.
    pub purged: u64,
    /// Every offset below this is done; later messages are delivered as usual.
    pub purged_until: u64,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct QueuePurgeResponse {
    pub partitions: Vec<QueuePurgedPartition>,
}

// ---------------------------------------------------------------------------------------------
// 34 ListGroups

/// Groups listed in one answer, at most (the rest is left out and `truncated` set).
pub const GROUPS_LISTED_MAX: usize = 10_000;

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct ListGroupsRequest {}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct ListedGroup {
    pub group: String,
    /// Topics the group consumes or has committed offsets in, sorted.
    pub topics: Vec<String>,
    /// Live members (0: only committed offsets are left).
    pub members: u32,
    pub generation: u32,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct ListGroupsResponse {
    /// Sorted by name; only the groups the principal may describe.
    pub groups: Vec<ListedGroup>,
    pub truncated: bool,
}

// ---------------------------------------------------------------------------------------------
// 35 AddPartitions

/// Grows a topic to `partitions` (never shrinks; the current count is a no-op). Keyed records
/// are placed by `crc32c(key) % partitions`, so growing moves keys (docs/semantics.md, "Adding
/// partitions").
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct AddPartitionsRequest {
    pub name: String,
    pub partitions: u32,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct AddPartitionsResponse {
    /// The topic with its new partition count and placement.
    pub topic: TopicInfo,
}

// ---------------------------------------------------------------------------------------------
// 36 CreateReplicatedTopic, 37 DescribeReplicas (issue 14; docs/protocol.md)

/// Most replicas a partition may have.
pub const REPLICAS_MAX: u32 = 5;

/// CreateTopic with a replication factor. `replicas` is 1..=[`REPLICAS_MAX`] and at most the
/// cluster's node count; 1 is exactly CreateTopic.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct CreateReplicatedTopicRequest {
    pub name: String,
    pub config: super::messages::TopicConfig,
    pub replicas: u32,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct DescribeReplicasRequest {
    pub name: String,
}

/// One partition's replication state.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct PartitionReplicas {
    pub partition: u32,
    /// The leader's node id; 0 = no leader known now (an election is under way).
    pub leader: u64,
    /// Node ids of the replicas, the preferred leader first.
    pub replicas: Vec<u64>,
    /// The replicas caught up with the leader (Raft: matched up to the commit index).
    pub in_sync: Vec<u64>,
    /// The leader epoch (the Raft term); 0 on a single node.
    pub epoch: u64,
    /// Offset after the last committed record: what consumers can read up to.
    pub high_watermark: u64,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct DescribeReplicasResponse {
    /// The topic's replication factor.
    pub replicas: u32,
    /// The node that answered.
    pub node_id: u64,
    pub partitions: Vec<PartitionReplicas>,
}

// ---------------------------------------------------------------------------------------------
// 38 DescribeCluster (issue 14; docs/protocol.md "38 DescribeCluster")

/// The cluster's nodes and, for each topic asked, where each partition's leader is.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct DescribeClusterRequest {
    /// Topics whose partitions' leaders are wanted (none: only the nodes).
    pub topics: Vec<String>,
}

/// One node of the cluster and the address its clients use.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct ClusterNode {
    pub node_id: u64,
    /// `host:port` of the node's client listener (its `--advertise`, else its `--listen`);
    /// empty when the answering node has not heard it yet (the peer never connected).
    pub address: String,
}

/// One topic's replication state, as in DescribeReplicas.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct ClusterTopic {
    pub name: String,
    /// `NONE`, or why the topic has no entry (`UNKNOWN_TOPIC`).
    pub error_code: u16,
    /// The topic's replication factor.
    pub replicas: u32,
    pub partitions: Vec<PartitionReplicas>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct DescribeClusterResponse {
    /// The node that answered.
    pub node_id: u64,
    /// The controller group's leader as the answering node knows it; 0 = unknown or no
    /// cluster.
    pub controller: u64,
    /// Every node of the cluster list, by id (one entry, this node, without a cluster).
    pub nodes: Vec<ClusterNode>,
    /// The topics asked for, in the request's order.
    pub topics: Vec<ClusterTopic>,
}
