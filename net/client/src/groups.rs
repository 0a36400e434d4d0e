//! [`Client`] calls of the messaging-semantics apis: producer identities, consumer-group
//! membership and committed offsets (docs/protocol.md, "Messaging semantics"). Each has a
//! blocking form and an `_async` form. On one server any listener answers (the bootstrap
//! connection); on a cluster group calls go to the group's coordinator node and follow it when
//! it moves (`coordinator.rs`).

use crate::conn::block_on;

use super::error::ClientError;
use super::pool::{Client, expect_response};
use crate::protocol::{
    CommitOffset, CommittedOffset, DescribeGroupRequest, DescribeGroupResponse, GroupAssignment,
    HeartbeatRequest, InitProducerRequest, JoinGroupRequest, LeaveGroupRequest,
    OffsetCommitRequest, OffsetFetchRequest, Request,
};

/// An idempotent producer's identity (see [`Client::init_producer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProducerId {
    pub producer_id: u64,
    pub epoch: u16,
}

impl Client {
    /// A new producer identity, or `resume`'s id with the next epoch (which fences the older
    /// instance: its batches get `PRODUCER_FENCED`).
    pub fn init_producer(&self, resume: Option<ProducerId>) -> Result<ProducerId, ClientError> {
        block_on(self.init_producer_async(resume))
    }

    pub async fn init_producer_async(
        &self,
        resume: Option<ProducerId>,
    ) -> Result<ProducerId, ClientError> {
        let r = resume.unwrap_or(ProducerId {
            producer_id: 0,
            epoch: 0,
        });
        let request = Request::InitProducer(InitProducerRequest {
            producer_id: r.producer_id,
            epoch: r.epoch,
        });
        let r = expect_response!(self.call_bootstrap(request).await?, InitProducer)?;
        Ok(ProducerId {
            producer_id: r.producer_id,
            epoch: r.epoch,
        })
    }

    /// Joins `group` as a new member consuming `topic`.
    pub fn join_group(
        &self,
        group: &str,
        topic: &str,
        session_timeout_ms: u32,
    ) -> Result<GroupAssignment, ClientError> {
        block_on(self.join_group_async(group, topic, session_timeout_ms))
    }

    pub async fn join_group_async(
        &self,
        group: &str,
        topic: &str,
        session_timeout_ms: u32,
    ) -> Result<GroupAssignment, ClientError> {
        let request = Request::JoinGroup(JoinGroupRequest {
            group: group.to_string(),
            topic: topic.to_string(),
            client_id: self.config().client_id.clone(),
            session_timeout_ms,
        });
        expect_response!(self.call_coordinator(group, request).await?, JoinGroup)
    }

    /// Keeps the member alive; `owned` = the partitions it consumes now.
    pub fn heartbeat(
        &self,
        group: &str,
        member_id: &str,
        owned: &[u32],
    ) -> Result<GroupAssignment, ClientError> {
        block_on(self.heartbeat_async(group, member_id, owned))
    }

    pub async fn heartbeat_async(
        &self,
        group: &str,
        member_id: &str,
        owned: &[u32],
    ) -> Result<GroupAssignment, ClientError> {
        let request = Request::Heartbeat(HeartbeatRequest {
            group: group.to_string(),
            member_id: member_id.to_string(),
            owned: owned.to_vec(),
        });
        expect_response!(self.call_coordinator(group, request).await?, Heartbeat)
    }

    pub fn leave_group(&self, group: &str, member_id: &str) -> Result<(), ClientError> {
        block_on(self.leave_group_async(group, member_id))
    }

    pub async fn leave_group_async(&self, group: &str, member_id: &str) -> Result<(), ClientError> {
        let request = Request::LeaveGroup(LeaveGroupRequest {
            group: group.to_string(),
            member_id: member_id.to_string(),
        });
        expect_response!(self.call_coordinator(group, request).await?, LeaveGroup).map(|_| ())
    }

    /// Commits offsets (each the next offset to consume) durably. `member_id` empty: a
    /// standalone commit, refused while the group has live members.
    pub fn commit_offsets(
        &self,
        group: &str,
        topic: &str,
        member_id: &str,
        generation: u32,
        offsets: Vec<CommitOffset>,
    ) -> Result<(), ClientError> {
        block_on(self.commit_offsets_async(group, topic, member_id, generation, offsets))
    }

    pub async fn commit_offsets_async(
        &self,
        group: &str,
        topic: &str,
        member_id: &str,
        generation: u32,
        offsets: Vec<CommitOffset>,
    ) -> Result<(), ClientError> {
        let request = Request::OffsetCommit(OffsetCommitRequest {
            group: group.to_string(),
            topic: topic.to_string(),
            member_id: member_id.to_string(),
            generation,
            offsets,
        });
        expect_response!(self.call_coordinator(group, request).await?, OffsetCommit).map(|_| ())
    }

    /// The group's committed offsets in `topic` (partitions without one are left out).
    pub fn fetch_offsets(
        &self,
        group: &str,
        topic: &str,
    ) -> Result<Vec<CommittedOffset>, ClientError> {
        block_on(self.fetch_offsets_async(group, topic))
    }

    pub async fn fetch_offsets_async(
        &self,
        group: &str,
        topic: &str,
    ) -> Result<Vec<CommittedOffset>, ClientError> {
        let request = Request::OffsetFetch(OffsetFetchRequest {
            group: group.to_string(),
            topic: topic.to_string(),
        });
        expect_response!(self.call_coordinator(group, request).await?, OffsetFetch)
            .map(|r| r.offsets)
    }

    pub fn describe_group(&self, group: &str) -> Result<DescribeGroupResponse, ClientError> {
        block_on(self.describe_group_async(group))
    }

    pub async fn describe_group_async(
        &self,
        group: &str,
    ) -> Result<DescribeGroupResponse, ClientError> {
        let request = Request::DescribeGroup(DescribeGroupRequest {
            group: group.to_string(),
        });
        expect_response!(self.call_coordinator(group, request).await?, DescribeGroup)
    }
}
