//! Messages of the messaging-semantics apis 15..=21: idempotent-producer identities, consumer
//! groups and committed offsets (docs/protocol.md, "Messaging semantics"; docs/semantics.md for
//! what they guarantee). All are plain rkyv archives; none carries record batches.

use rkyv::{Archive, Deserialize, Serialize};

use super::api::ApiKey;
use super::codec::Limits;
use super::error::{WireError, limit};
use super::{MESSAGE_BYTES_MAX, NAME_BYTES_MAX, PARTITIONS_PER_REQUEST_MAX};

// ---------------------------------------------------------------------------------------------
// 15 InitProducer

/// Asks for an idempotent-producer identity. `producer_id = 0`: a new one. Otherwise the
/// producer's previous identity: the answer keeps the id and bumps the epoch, fencing any older
/// instance still sending with it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct InitProducerRequest {
    pub producer_id: u64,
    pub epoch: u16,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct InitProducerResponse {
    pub producer_id: u64,
    pub epoch: u16,
}

// ---------------------------------------------------------------------------------------------
// 16 JoinGroup, 17 Heartbeat, 18 LeaveGroup

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct JoinGroupRequest {
    pub group: String,
    pub topic: String,
    /// Shown in DescribeGroup.
    pub client_id: String,
    /// The member is removed (and its partitions reassigned) after this long without a
    /// heartbeat; 100..=300000.
    pub session_timeout_ms: u32,
}

/// The answer to JoinGroup and Heartbeat: what the member may consume now.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct GroupAssignment {
    pub member_id: String,
    pub generation: u32,
    pub topic: String,
    /// Partitions to consume now (sorted).
    pub partitions: Vec<u32>,
    /// Partitions assigned to this member that another member still releases: heartbeat again
    /// soon to get them.
    pub pending: Vec<u32>,
    pub heartbeat_interval_ms: u32,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct HeartbeatRequest {
    pub group: String,
    pub member_id: String,
    /// Partitions the member consumes at the time of sending (it stops consuming revoked
    /// ones after reading the answer, and leaves them out of the next heartbeat).
    pub owned: Vec<u32>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct LeaveGroupRequest {
    pub group: String,
    pub member_id: String,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct LeaveGroupResponse {}

// ---------------------------------------------------------------------------------------------
// 19 OffsetCommit, 20 OffsetFetch, 21 DescribeGroup

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct CommitOffset {
    pub partition: u32,
    /// The next offset the group will consume (last processed + 1).
    pub offset: u64,
    /// Free text stored with the offset, at most `MESSAGE_BYTES_MAX` bytes.
    pub metadata: String,
}

/// Commits offsets durably. `member_id` empty: a standalone commit, refused while the group
/// has live members. Answered once fdatasync covered the commit; failures as an error frame.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct OffsetCommitRequest {
    pub group: String,
    pub topic: String,
    pub member_id: String,
    pub generation: u32,
    pub offsets: Vec<CommitOffset>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct OffsetCommitResponse {}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct OffsetFetchRequest {
    pub group: String,
    pub topic: String,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct CommittedOffset {
    pub partition: u32,
    pub offset: u64,
    pub metadata: String,
    pub commit_time_ms: i64,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct OffsetFetchResponse {
    /// Partitions with a committed offset, sorted; a partition not listed has none.
    pub offsets: Vec<CommittedOffset>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct DescribeGroupRequest {
    pub group: String,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct GroupMember {
    pub member_id: String,
    pub client_id: String,
    /// Target assignment of the current generation.
    pub assigned: Vec<u32>,
    /// What the member consumes (its last heartbeat plus what it was handed since).
    pub owned: Vec<u32>,
    pub last_seen_ms_ago: i64,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct DescribeGroupResponse {
    pub group: String,
    pub topic: String,
    pub generation: u32,
    /// The coordinator slot (= `__offsets` partition) the group hashes to.
    pub coordinator_slot: u32,
    pub members: Vec<GroupMember>,
    pub offsets: Vec<CommittedOffset>,
}

fn name(what: &'static str, s: &str) -> Result<(), WireError> {
    limit(what, s.len(), NAME_BYTES_MAX)
}

fn partitions(what: &'static str, n: usize) -> Result<(), WireError> {
    limit(what, n, PARTITIONS_PER_REQUEST_MAX)
}

// The request limits of apis 15..=21, checked after decoding (docs/protocol.md, "Limits").

impl Limits for InitProducerRequest {}

impl Limits for JoinGroupRequest {
    fn check(&self) -> Result<(), WireError> {
        name("group name bytes", &self.group)?;
        name("topic name bytes", &self.topic)?;
        name("client id bytes", &self.client_id)
    }
}

impl Limits for HeartbeatRequest {
    fn check(&self) -> Result<(), WireError> {
        name("group name bytes", &self.group)?;
        name("member id bytes", &self.member_id)?;
        partitions("owned partitions", self.owned.len())
    }
}

impl Limits for LeaveGroupRequest {
    fn check(&self) -> Result<(), WireError> {
        name("group name bytes", &self.group)?;
        name("member id bytes", &self.member_id)
    }
}

impl Limits for OffsetCommitRequest {
    fn check(&self) -> Result<(), WireError> {
        name("group name bytes", &self.group)?;
        name("topic name bytes", &self.topic)?;
        name("member id bytes", &self.member_id)?;
        partitions("committed offsets", self.offsets.len())?;
        for o in &self.offsets {
            limit("commit metadata bytes", o.metadata.len(), MESSAGE_BYTES_MAX)?;
        }
        Ok(())
    }
}

impl Limits for OffsetFetchRequest {
    fn check(&self) -> Result<(), WireError> {
        name("group name bytes", &self.group)?;
        name("topic name bytes", &self.topic)
    }
}

impl Limits for DescribeGroupRequest {
    fn check(&self) -> Result<(), WireError> {
        name("group name bytes", &self.group)
    }
}

/// Whether `api` is one of this module's.
pub const fn is_semantics_api(api: ApiKey) -> bool {
    matches!(
        api,
        ApiKey::InitProducer
            | ApiKey::JoinGroup
            | ApiKey::Heartbeat
            | ApiKey::LeaveGroup
            | ApiKey::OffsetCommit
            | ApiKey::OffsetFetch
            | ApiKey::DescribeGroup
    )
}
