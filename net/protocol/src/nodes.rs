//! Adding and removing cluster nodes (issue 14 item 6; docs/protocol.md, "50 AlterNode";
//! docs/replication.md, "Membership changes", step 3).

use rkyv::{Archive, Deserialize, Serialize};

/// Longest node-to-node address (`HOST:PORT`) an AlterNode may carry.
pub const NODE_ADDRESS_BYTES_MAX: usize = 256;

// ---------------------------------------------------------------------------------------------
// 50 AlterNode

/// Adds node `node_id`, reachable by the other nodes at `peer_address` (`HOST:PORT`, its
/// node-to-node listener), to the cluster; with `remove`, removes it instead (`peer_address`
/// empty). Answered once the answering node applied the controller's command.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct AlterNodeRequest {
    pub node_id: u64,
    pub peer_address: String,
    pub remove: bool,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct AlterNodeResponse {
    /// The cluster's nodes after the change, sorted.
    pub nodes: Vec<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use rkyv::Archived;

    // Proves: the archived layouts docs/protocol.md gives ("50 AlterNode").
    #[test]
    fn layouts_are_pinned() {
        assert_eq!(
            (
                size_of::<Archived<AlterNodeRequest>>(),
                align_of::<Archived<AlterNodeRequest>>()
            ),
            (24, 8)
        );
        assert_eq!(
            (
                size_of::<Archived<AlterNodeResponse>>(),
                align_of::<Archived<AlterNodeResponse>>()
            ),
            (8, 4)
        );
    }
}
