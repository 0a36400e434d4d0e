//! Operations calls of the client: the Metrics api (what `shardline stats` and `top` show),
//! AlterTopic, ResetOffsets, QueuePurge and ListGroups (docs/protocol.md, "30 Metrics" to
//! "34 ListGroups"), and a group's lag per partition (DescribeGroup joined with ListOffsets).

use super::error::ClientError;
use super::pool::{Client, expect_response};
use crate::protocol::{
    AlterTopicRequest, DescribeGroupResponse, ListGroupsRequest, ListGroupsResponse,
    MetricsRequest, MetricsResponse, OffsetResetTarget, OffsetSpec, PartitionOffsetReset,
    QueuePurgeRequest, QueuePurgedPartition, Request, ResetOffsetsRequest, SettingChange,
    TopicInfo,
};

/// One partition of a group, as `shardline group describe` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupPartitionLag {
    pub partition: u32,
    /// The group's committed offset (`None`: none yet).
    pub committed: Option<u64>,
    /// The partition's log end (high watermark) when asked.
    pub log_end: u64,
    /// `log_end - committed` (`None` without a committed offset).
    pub lag: Option<u64>,
}

impl Client {
    /// Every figure of the server: shards, connections, requests and, with
    /// `include_partitions`, every partition (docs/operations.md, "Metrics").
    pub fn metrics(&self, include_partitions: bool) -> Result<MetricsResponse, ClientError> {
        crate::conn::block_on(self.metrics_async(include_partitions))
    }

    pub async fn metrics_async(
        &self,
        include_partitions: bool,
    ) -> Result<MetricsResponse, ClientError> {
        let request = Request::Metrics(MetricsRequest { include_partitions });
        expect_response!(self.call_bootstrap(request).await?, Metrics)
    }

    /// Changes a topic's retention; `Keep` leaves a setting as it is, `Clear` removes the
    /// limit. Returns the topic with its new settings.
    pub fn alter_topic_retention(
        &self,
        name: &str,
        retention_bytes: SettingChange,
        retention_ms: SettingChange,
    ) -> Result<TopicInfo, ClientError> {
        let request = Request::AlterTopic(AlterTopicRequest {
            name: name.to_string(),
            retention_bytes,
            retention_ms,
        });
        crate::conn::block_on(async {
            expect_response!(self.call_bootstrap(request).await?, AlterTopic).map(|r| r.topic)
        })
    }

    /// Moves `group`'s committed offsets in `topic` (one partition or all) to `target`;
    /// refused with `GROUP_NOT_EMPTY` while the group has live members. With `dry_run`,
    /// returns the plan and writes nothing.
    pub fn reset_offsets(
        &self,
        group: &str,
        topic: &str,
        partition: Option<u32>,
        target: OffsetResetTarget,
        dry_run: bool,
    ) -> Result<Vec<PartitionOffsetReset>, ClientError> {
        let request = Request::ResetOffsets(ResetOffsetsRequest {
            group: group.to_string(),
            topic: topic.to_string(),
            partition,
            target,
            dry_run,
        });
        crate::conn::block_on(async {
            expect_response!(self.call_coordinator(group, request).await?, ResetOffsets)
                .map(|r| r.partitions)
        })
    }

    /// Discards every message of the work queue below each partition's log end (in-flight
    /// ones included). Returns what each partition discarded.
    pub fn queue_purge(&self, topic: &str) -> Result<Vec<QueuePurgedPartition>, ClientError> {
        let request = Request::QueuePurge(QueuePurgeRequest {
            topic: topic.to_string(),
        });
        crate::conn::block_on(async {
            expect_response!(self.call_bootstrap(request).await?, QueuePurge).map(|r| r.partitions)
        })
    }

    /// Every consumer group the principal may describe.
    pub fn list_groups(&self) -> Result<ListGroupsResponse, ClientError> {
        let request = Request::ListGroups(ListGroupsRequest {});
        crate::conn::block_on(async {
            expect_response!(self.call_bootstrap(request).await?, ListGroups)
        })
    }

    /// The group's description and, for every partition of its topic, the committed offset,
    /// the log end and the lag between them.
    pub fn describe_group_lag(
        &self,
        group: &str,
    ) -> Result<(DescribeGroupResponse, Vec<GroupPartitionLag>), ClientError> {
        let d = self.describe_group(group)?;
        let partitions = self.partitions(&d.topic)?;
        let mut out = Vec::with_capacity(partitions as usize);
        for partition in 0..partitions {
            let committed = d
                .offsets
                .iter()
                .find(|o| o.partition == partition)
                .map(|o| o.offset);
            let log_end = self.list_offsets(&d.topic, partition, OffsetSpec::Latest)?;
            out.push(GroupPartitionLag {
                partition,
                committed,
                log_end,
                lag: committed.map(|c| log_end.saturating_sub(c)),
            });
        }
        Ok((d, out))
    }
}

impl Client {
    /// Grows a topic to `partitions` (AddPartitions, api 35): never shrinks; the current count
    /// changes nothing. Keyed records map by `crc32c(key) % partitions`, so keys move
    /// (docs/semantics.md, "Adding partitions"). Returns the topic as it is now.
    pub fn add_partitions(&self, name: &str, partitions: u32) -> Result<TopicInfo, ClientError> {
        crate::conn::block_on(self.add_partitions_async(name, partitions))
    }

    pub async fn add_partitions_async(
        &self,
        name: &str,
        partitions: u32,
    ) -> Result<TopicInfo, ClientError> {
        let request = Request::AddPartitions(crate::protocol::AddPartitionsRequest {
            name: name.to_string(),
            partitions,
        });
        let r = expect_response!(self.call_bootstrap(request).await?, AddPartitions);
        // The cached route has the old partition count.
        self.invalidate(name);
        r.map(|r| r.topic)
    }
}

/// Replicated topics (issue 14; docs/protocol.md "36 CreateReplicatedTopic",
/// "37 DescribeReplicas").
impl Client {
    /// Creates a topic whose partitions have `replicas` replicas (1..=5, at most the cluster's
    /// node count). `replicas` 1 is exactly [`Client::create_topic`].
    pub fn create_replicated_topic(
        &self,
        name: &str,
        config: crate::protocol::TopicConfig,
        replicas: u32,
    ) -> Result<TopicInfo, ClientError> {
        let request =
            Request::CreateReplicatedTopic(crate::protocol::CreateReplicatedTopicRequest {
                name: name.to_string(),
                config,
                replicas,
            });
        crate::conn::block_on(async {
            expect_response!(self.call_bootstrap(request).await?, CreateReplicatedTopic)
                .map(|r| r.topic)
        })
    }

    /// Each partition's leader, replicas, in-sync replicas, epoch and high watermark.
    pub fn describe_replicas(
        &self,
        name: &str,
    ) -> Result<crate::protocol::DescribeReplicasResponse, ClientError> {
        let request = Request::DescribeReplicas(crate::protocol::DescribeReplicasRequest {
            name: name.to_string(),
        });
        crate::conn::block_on(async {
            expect_response!(self.call_bootstrap(request).await?, DescribeReplicas)
        })
    }
}

/// Users, tokens and ACLs of a running server (docs/protocol.md, "41 AlterSecurity"): on a
/// cluster the change goes through the controller and reaches every node.
impl Client {
    /// Applies one change; answered once it applied on the node asked. Needs admin on
    /// `cluster`.
    pub fn alter_security(
        &self,
        request: crate::protocol::AlterSecurityRequest,
    ) -> Result<crate::protocol::AlterSecurityResponse, ClientError> {
        crate::conn::block_on(async {
            expect_response!(
                self.call_bootstrap(Request::AlterSecurity(request)).await?,
                AlterSecurity
            )
        })
    }
}
