//! Replicated topics at the api (issue 14; docs/protocol.md "36 CreateReplicatedTopic",
//! "37 DescribeReplicas"): the replication factor is checked against the cluster and stored in
//! the topic's config; DescribeReplicas answers each partition's leader, replicas, in-sync set,
//! epoch and high watermark.
//!
//! On a cluster (`shardline serve --cluster`: the engine's `enable_cluster` ran, and the
//! server was told with [`crate::Server::enable_replication`]) every CreateTopic,
//! CreateReplicatedTopic and DeleteTopic goes through the controller group
//! (`Engine::create_topic_replicated` / `delete_topic_replicated`, from any node), and
//! DescribeReplicas / DescribeCluster answer from `Engine::replica_status`. On a single node
//! nothing changes: every partition is a single replica on this node (leader = this node,
//! replicas = in_sync = [this node], epoch 0, high watermark = the log's next offset) and a
//! replication factor above 1 is refused with a clear error.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use shardline_engine::{Engine, Error};

use crate::convert::ToWire;
use crate::protocol::{
    ClusterNode, ClusterTopic, CreateReplicatedTopicRequest, CreateTopicRequest,
    CreateTopicResponse, DescribeClusterRequest, DescribeClusterResponse, DescribeReplicasResponse,
    PartitionReplicas, REPLICAS_MAX, code,
};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// DescribeCluster: every node's client address and each asked topic's replication state.
pub(crate) fn describe_cluster(
    engine: &Engine,
    cluster: &ClusterView,
    r: &DescribeClusterRequest,
) -> DescribeClusterResponse {
    // Before the transport is set a cluster node would look like a single server.
    wait_for_replication(cluster);
    let node_id = cluster.node_id.load(Ordering::Acquire);
    let advertised = lock(&cluster.advertised).clone();
    let nodes = match lock(&cluster.peers).as_ref() {
        Some(t) => t
            .client_addresses()
            .into_iter()
            .map(|(node_id, address)| ClusterNode { node_id, address })
            .collect(),
        None => vec![ClusterNode {
            node_id,
            address: advertised,
        }],
    };
    let topics = r
        .topics
        .iter()
        .map(|name| match describe(engine, cluster, name) {
            Ok(d) => ClusterTopic {
                name: name.clone(),
                error_code: code::NONE,
                replicas: d.replicas,
                partitions: d.partitions,
            },
            Err(e) => ClusterTopic {
                name: name.clone(),
                error_code: e.code(),
                replicas: 0,
                partitions: Vec::new(),
            },
        })
        .collect();
    DescribeClusterResponse {
        node_id,
        controller: controller_leader(engine),
        nodes,
        topics,
    }
}

/// The controller's leader as this node knows it (0: unknown, or a single node).
fn controller_leader(engine: &Engine) -> u64 {
    engine.controller_leader().unwrap_or(0)
}

/// What the server knows of its cluster.
pub(crate) struct ClusterView {
    /// This node's id: 1 on a single node (the id a one-node cluster list would give it).
    pub(crate) node_id: AtomicU64,
    /// Nodes in the cluster list (1 on a single node).
    pub(crate) nodes: AtomicU32,
    /// Set when a replication layer serves partitions with more than one replica.
    pub(crate) replication: AtomicBool,
    /// This node's client address as clients should dial it (`--advertise`, else the bound
    /// listener); set at start.
    pub(crate) advertised: Mutex<String>,
    /// The node-to-node transport (a cluster): every node's client address.
    pub(crate) peers: Mutex<Option<crate::peer::PeerTransport>>,
}

impl Default for ClusterView {
    fn default() -> Self {
        ClusterView {
            node_id: AtomicU64::new(1),
            nodes: AtomicU32::new(1),
            replication: AtomicBool::new(false),
            advertised: Mutex::new(String::new()),
            peers: Mutex::new(None),
        }
    }
}

/// How long a topic change asked of a cluster node whose replication is still starting (the
/// client listener opens first) waits for it.
const REPLICATION_START_WAIT_MS: u64 = 30_000;

/// On a node of a cluster (more than one node listed), waits until the replication layer is
/// enabled: a request that arrives between the listener opening and `enable_cluster` must
/// neither create a local-only topic nor be refused for want of replication.
fn wait_for_replication(cluster: &ClusterView) {
    let deadline =
        std::time::Instant::now() + std::time::Duration::from_millis(REPLICATION_START_WAIT_MS);
    while cluster.nodes.load(Ordering::Acquire) > 1
        && !cluster.replication.load(Ordering::Acquire)
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Checks a replication factor against the cluster.
pub(crate) fn check_replicas(cluster: &ClusterView, replicas: u32) -> Result<(), Error> {
    if replicas == 0 || replicas > REPLICAS_MAX {
        return Err(Error::InvalidArgument(format!(
            "replicas must be between 1 and {REPLICAS_MAX}, got {replicas}"
        )));
    }
    // The transport knows the nodes added and removed at run time (cluster add-node).
    let nodes = cluster
        .peers
        .lock()
        .ok()
        .and_then(|p| p.as_ref().map(|t| t.node_ids().len()))
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or_else(|| cluster.nodes.load(Ordering::Acquire));
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
    wait_for_replication(cluster);
    check_replicas(cluster, r.replicas)?;
    let request = CreateTopicRequest {
        name: r.name,
        config: r.config,
    };
    let mut config = crate::encryption::topic_config(policy, &request);
    config.replicas = r.replicas;
    let t = create_topic(engine, cluster, &request.name, config)?;
    Ok(CreateTopicResponse {
        topic: (&t).to_wire(),
    })
}

/// Creates a topic: through the controller on a cluster (any node; waits until this node
/// applied it), locally on a single node. Blocking (the admin thread).
pub(crate) fn create_topic(
    engine: &Engine,
    cluster: &ClusterView,
    name: &str,
    config: shardline_engine::TopicConfig,
) -> Result<shardline_engine::TopicInfo, Error> {
    wait_for_replication(cluster);
    if engine.cluster_node_id().is_some() {
        futures_lite::future::block_on(engine.create_topic_replicated(name, config))
    } else {
        engine.create_topic(name, config)
    }
}

/// Deletes a topic: through the controller on a cluster, locally on a single node.
pub(crate) fn delete_topic(
    engine: &Engine,
    cluster: &ClusterView,
    name: &str,
) -> Result<(), Error> {
    wait_for_replication(cluster);
    if engine.cluster_node_id().is_some() {
        futures_lite::future::block_on(engine.delete_topic_replicated(name))
    } else {
        engine.delete_topic(name)
    }
}

/// DescribeReplicas: each partition's replication state.
pub(crate) fn describe(
    engine: &Engine,
    cluster: &ClusterView,
    name: &str,
) -> Result<DescribeReplicasResponse, Error> {
    let d = engine.describe_topic(name)?;
    let node_id = cluster.node_id.load(Ordering::Acquire);
    if engine.cluster_node_id().is_some() {
        let status = futures_lite::future::block_on(engine.replica_status(name))?;
        return Ok(DescribeReplicasResponse {
            replicas: d.info.config.replicas,
            node_id,
            partitions: status
                .into_iter()
                .map(|s| PartitionReplicas {
                    partition: s.partition,
                    leader: s.leader.unwrap_or(0),
                    replicas: s.replicas,
                    in_sync: s.in_sync,
                    epoch: s.epoch,
                    high_watermark: s.high_watermark,
                })
                .collect(),
        });
    }
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
