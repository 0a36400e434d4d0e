//! Adding and removing cluster nodes (docs/protocol.md, "50 AlterNode").

use super::error::ClientError;
use super::pool::{Client, expect_response};
use crate::protocol::{AlterNodeRequest, AlterNodeResponse, Request};

impl Client {
    /// Adds node `node_id`, whose node-to-node listener the other nodes reach at
    /// `peer_address` (`HOST:PORT`), to the cluster (the node itself runs `shardline serve
    /// --join`). Returns once the controller recorded it, with the nodes after the change.
    pub fn add_node(
        &self,
        node_id: u64,
        peer_address: &str,
    ) -> Result<AlterNodeResponse, ClientError> {
        self.alter_node(AlterNodeRequest {
            node_id,
            peer_address: peer_address.to_string(),
            remove: false,
        })
    }

    /// Removes node `node_id` from the cluster: refused while it holds replicas (drain it
    /// first with `reassign_partition`).
    pub fn remove_node(&self, node_id: u64) -> Result<AlterNodeResponse, ClientError> {
        self.alter_node(AlterNodeRequest {
            node_id,
            peer_address: String::new(),
            remove: true,
        })
    }

    fn alter_node(&self, r: AlterNodeRequest) -> Result<AlterNodeResponse, ClientError> {
        let request = Request::AlterNode(r);
        crate::conn::block_on(async {
            expect_response!(self.call_bootstrap(request).await?, AlterNode)
        })
    }
}
