//! Cluster membership calls (docs/protocol.md, "39 ReassignPartition").

use super::error::ClientError;
use super::pool::{Client, expect_response};
use crate::protocol::{ReassignPartitionRequest, ReassignPartitionResponse, Request};

impl Client {
    /// Moves partition `partition` of replicated topic `name` onto the nodes `replicas`
    /// (online). Returns once the cluster's controller recorded the move; `describe_replicas`
    /// shows the new set once it is done.
    pub fn reassign_partition(
        &self,
        name: &str,
        partition: u32,
        replicas: &[u64],
    ) -> Result<ReassignPartitionResponse, ClientError> {
        let request = Request::ReassignPartition(ReassignPartitionRequest {
            name: name.to_string(),
            partition,
            replicas: replicas.to_vec(),
        });
        crate::conn::block_on(async {
            expect_response!(self.call_bootstrap(request).await?, ReassignPartition)
        })
    }
}
