//! Cluster membership requests (docs/protocol.md, "39 ReassignPartition";
//! docs/replication.md, "Membership changes").

use shardline_engine::{Engine, Error};

use crate::protocol::{ReassignPartitionRequest, ReassignPartitionResponse};

/// ReassignPartition: proposes the move through the controller (any node) and answers once
/// this node applied it. Blocking (the admin thread).
pub(crate) fn reassign(
    engine: &Engine,
    r: ReassignPartitionRequest,
) -> Result<ReassignPartitionResponse, Error> {
    if engine.cluster_node_id().is_none() {
        return Err(Error::InvalidArgument(
            "this node is not part of a cluster (no --cluster)".into(),
        ));
    }
    let mut replicas = r.replicas;
    replicas.sort_unstable();
    replicas.dedup();
    futures_lite::future::block_on(engine.reassign_partition(
        &r.name,
        r.partition,
        replicas.clone(),
    ))?;
    Ok(ReassignPartitionResponse { replicas })
}
