//! Cluster membership apis (issue 14 item 6; docs/protocol.md, "39 ReassignPartition").

use rkyv::{Archive, Deserialize, Serialize};

/// Most replicas a reassignment may name (as a replicated topic's set).
pub const REASSIGN_REPLICAS_MAX: usize = super::ops::REPLICAS_MAX as usize;

// ---------------------------------------------------------------------------------------------
// 39 ReassignPartition

/// Moves partition `partition` of replicated topic `name` onto the nodes `replicas` (any
/// order, 1..=[`REASSIGN_REPLICAS_MAX`] distinct cluster node ids), online. Answered once the
/// controller recorded the move; the move runs in the background (DescribeReplicas shows the
/// new set when it is done). A second request for the same partition replaces the target.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct ReassignPartitionRequest {
    pub name: String,
    pub partition: u32,
    pub replicas: Vec<u64>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct ReassignPartitionResponse {
    /// The target set, sorted.
    pub replicas: Vec<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use rkyv::Archived;

    // Proves: the archived layouts docs/protocol.md gives ("39 ReassignPartition").
    #[test]
    fn layouts_are_pinned() {
        assert_eq!(
            (
                size_of::<Archived<ReassignPartitionRequest>>(),
                align_of::<Archived<ReassignPartitionRequest>>()
            ),
            (20, 4)
        );
        assert_eq!(
            (
                size_of::<Archived<ReassignPartitionResponse>>(),
                align_of::<Archived<ReassignPartitionResponse>>()
            ),
            (8, 4)
        );
    }
}
