//! The [`Limits`] of each core, operations and security request.

use super::{Limits, check_name, check_topics};
use crate::HANDSHAKE_APIS_MAX;
use crate::error::{WireError, limit};
use crate::membership::*;
use crate::messages::*;
use crate::nodes::*;
use crate::ops::*;

// Limits of the core (0-14), operations (30-39) and security (40-49) requests; those of the
// messaging semantics and work queues are in semantics.rs and queue.rs.

impl Limits for HandshakeRequest {
    fn check(&self) -> Result<(), WireError> {
        check_name("client id bytes", &self.client_id)?;
        limit("handshake apis", self.apis.len(), HANDSHAKE_APIS_MAX)
    }
}
impl Limits for PingRequest {}
impl Limits for MetadataRequest {
    fn check(&self) -> Result<(), WireError> {
        check_topics(
            self.topics.len(),
            self.topics.iter().map(|t| (t.as_str(), 0)),
        )
    }
}
impl Limits for CreateTopicRequest {
    fn check(&self) -> Result<(), WireError> {
        check_name("topic name bytes", &self.name)
    }
}
impl Limits for DeleteTopicRequest {
    fn check(&self) -> Result<(), WireError> {
        check_name("topic name bytes", &self.name)
    }
}
impl Limits for ListTopicsRequest {}
impl Limits for DescribeTopicRequest {
    fn check(&self) -> Result<(), WireError> {
        check_name("topic name bytes", &self.name)
    }
}
impl Limits for FetchRequest {
    fn check(&self) -> Result<(), WireError> {
        check_topics(
            self.topics.len(),
            self.topics
                .iter()
                .map(|t| (t.name.as_str(), t.partitions.len())),
        )
    }
}
impl Limits for ListOffsetsRequest {
    fn check(&self) -> Result<(), WireError> {
        check_topics(
            self.topics.len(),
            self.topics
                .iter()
                .map(|t| (t.name.as_str(), t.partitions.len())),
        )
    }
}
impl Limits for SubscribeRequest {
    fn check(&self) -> Result<(), WireError> {
        check_name("topic name bytes", &self.topic)
    }
}
impl Limits for GrantCreditsRequest {}
impl Limits for UnsubscribeRequest {}
impl Limits for StatsRequest {}
impl Limits for MetricsRequest {}
impl Limits for CreateReplicatedTopicRequest {
    fn check(&self) -> Result<(), WireError> {
        check_name("topic name bytes", &self.name)
    }
}
impl Limits for DescribeReplicasRequest {
    fn check(&self) -> Result<(), WireError> {
        check_name("topic name bytes", &self.name)
    }
}
impl Limits for DescribeClusterRequest {
    fn check(&self) -> Result<(), WireError> {
        check_topics(
            self.topics.len(),
            self.topics.iter().map(|t| (t.as_str(), 0)),
        )
    }
}
impl Limits for AlterTopicRequest {
    fn check(&self) -> Result<(), WireError> {
        check_name("topic name bytes", &self.name)
    }
}
impl Limits for ResetOffsetsRequest {
    fn check(&self) -> Result<(), WireError> {
        check_name("group name bytes", &self.group)?;
        check_name("topic name bytes", &self.topic)
    }
}
impl Limits for QueuePurgeRequest {
    fn check(&self) -> Result<(), WireError> {
        check_name("topic name bytes", &self.topic)
    }
}
impl Limits for ListGroupsRequest {}
impl Limits for AddPartitionsRequest {
    fn check(&self) -> Result<(), WireError> {
        check_name("topic name bytes", &self.name)
    }
}
impl Limits for AuthenticateRequest {
    fn check(&self) -> Result<(), WireError> {
        check_name("user name bytes", &self.username)?;
        limit("secret bytes", self.secret.len(), SECRET_BYTES_MAX)
    }
}

impl Limits for AlterSecurityRequest {
    fn check(&self) -> Result<(), WireError> {
        check_name("name bytes", &self.name)?;
        limit("secret bytes", self.secret.len(), SECRET_BYTES_MAX)?;
        check_name("description bytes", &self.description)?;
        check_name("resource bytes", &self.resource)?;
        check_name("operation bytes", &self.operation)
    }
}

impl Limits for ReassignPartitionRequest {
    fn check(&self) -> Result<(), WireError> {
        check_name("topic name bytes", &self.name)?;
        limit("replicas", self.replicas.len(), REASSIGN_REPLICAS_MAX)
    }
}

impl Limits for AlterNodeRequest {
    fn check(&self) -> Result<(), WireError> {
        limit(
            "peer address bytes",
            self.peer_address.len(),
            NODE_ADDRESS_BYTES_MAX,
        )
    }
}
