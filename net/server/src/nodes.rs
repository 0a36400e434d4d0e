//! Adding and removing cluster nodes (docs/protocol.md, "50 AlterNode"; docs/replication.md,
//! "Membership changes", step 3).

use shardline_engine::{Engine, Error};

use crate::protocol::{AlterNodeRequest, AlterNodeResponse};

/// AlterNode: proposes `AddNode` / `RemoveNode` through the controller (any node) and answers
/// once this node applied it, with the nodes after the change. Blocking (the admin thread).
pub(crate) fn alter_node(engine: &Engine, r: AlterNodeRequest) -> Result<AlterNodeResponse, Error> {
    if engine.cluster_node_id().is_none() {
        return Err(Error::InvalidArgument(
            "this node is not part of a cluster (no --cluster)".into(),
        ));
    }
    let done = if r.remove {
        futures_lite::future::block_on(engine.remove_node(r.node_id))
    } else {
        futures_lite::future::block_on(engine.add_node(r.node_id, r.peer_address))
    };
    done?;
    Ok(AlterNodeResponse {
        nodes: engine.cluster_nodes(),
    })
}
