//! Replicated topics at the api (issue 14; docs/protocol.md "36 CreateReplicatedTopic",
//! "37 DescribeReplicas"): the replication factor is checked against the cluster and stored in
//! the topic's config; DescribeReplicas answers each partition's leader, replicas, in-sync set,
//! epoch and high watermark.
//!
//! Until the replication layer (engine/src/replication) registers itself with
//! [`crate::Server::enable_replication`], every partition is a single replica on this node:
//! leader = this node, replicas = in_sync = [this node], epoch 0, high watermark = the log's
//! next offset; and a replication factor above 1 is refused with a clear error rather than
//! accepted and not honoured.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use shardline_engine::{Engine, Error};

use crate::convert::ToWire;
use crate::protocol::{
    CreateReplicatedTopicRequest, CreateTopicRequest, CreateTopicResponse,
    DescribeReplicasResponse, PartitionReplicas, REPLICAS_MAX,
};

/// What the server knows of its cluster.
pub(crate) struct ClusterView {
    /// This node's id: 1 on a single node (the id a one-node cluster list would give it).
    pub(crate) node_id: AtomicU64,
    /// Nodes in the cluster list (1 on a single node).
    pub(crate) nodes: AtomicU32,
    /// Set when a replication layer serves partitions with more than one replica.
    pub(crate) replication: AtomicBool,
}

impl Default for ClusterView {
    fn default() -> Self {
        ClusterView {
            node_id: AtomicU64::new(1),
            nodes: AtomicU32::new(1),
            replication: AtomicBool::new(false),
        }
    }
}

/// Checks a replication factor against the cluster.
pub(crate) fn check_replicas(cluster: &ClusterView, replicas: u32) -> Result<(), Error> {
    if replicas == 0 || replicas > REPLICAS_MAX {
        return Err(Error::InvalidArgument(format!(
            "replicas must be between 1 and {REPLICAS_MAX}, got {replicas}"
        )));
    }
    let nodes = cluster.nodes.load(Ordering::Acquire);
    if replicas > nodes {
        let plural = if nodes == 1 { "" } else { "s" };
        return Err(Error::InvalidArgument(format!(
            "replicas {replicas} exceeds the cluster's {nodes} node{plural}"
        )));
    }
    if replicas > 1 && !cluster.replication.load(Ordering::Acquire) {
        return Err(Error::InvalidArgument(format!(
            "replicas {replicas}: this server does not run the replication layer yet; only \
             replicas 1 can be created"
        )));
    }
    Ok(())
}

/// CreateReplicatedTopic: CreateTopic with the factor checked and stored.
pub(crate) fn create(
    engine: &Engine,
    policy: &crate::EncryptionConfig,
    cluster: &ClusterView,
    r: CreateReplicatedTopicRequest,
) -> Result<CreateTopicResponse, Error> {
    check_replicas(cluster, r.replicas)?;
    let request = CreateTopicRequest {
        name: r.name,
        config: r.config,
    };
    let mut config = crate::encryption::topic_config(policy, &request);
    config.replicas = r.replicas;
    let t = engine.create_topic(&request.name, config)?;
    Ok(CreateTopicResponse {
        topic: (&t).to_wire(),
    })
}

/// DescribeReplicas: each partition's replication state.
pub(crate) fn describe(
    engine: &Engine,
    cluster: &ClusterView,
    name: &str,
) -> Result<DescribeReplicasResponse, Error> {
    let d = engine.describe_topic(name)?;
    let node_id = cluster.node_id.load(Ordering::Acquire);
    let partitions = d
        .partitions
        .iter()
        .map(|p| PartitionReplicas {
            partition: p.partition,
            leader: node_id,
            replicas: vec![node_id],
            in_sync: vec![node_id],
            epoch: 0,
            high_watermark: p.next_offset,
        })
        .collect();
    Ok(DescribeReplicasResponse {
        replicas: d.info.config.replicas,
        node_id,
        partitions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replication_factors_are_checked_against_the_cluster() {
        let c = ClusterView::default();
        assert!(check_replicas(&c, 1).is_ok());
        let e = check_replicas(&c, 0).expect_err("0").to_string();
        assert!(e.contains("between 1 and 5"), "{e}");
        let e = check_replicas(&c, 6).expect_err("6").to_string();
        assert!(e.contains("between 1 and 5"), "{e}");
        let e = check_replicas(&c, 3).expect_err("3 of 1").to_string();
        assert!(e.contains("exceeds the cluster's 1 node"), "{e}");
        c.nodes.store(3, Ordering::Release);
        let e = check_replicas(&c, 3)
            .expect_err("no replication")
            .to_string();
        assert!(e.contains("replication layer"), "{e}");
        c.replication.store(true, Ordering::Release);
        assert!(check_replicas(&c, 3).is_ok());
        assert!(check_replicas(&c, 4).is_err());
    }
}
