//! The engine's one error type. Every variant carries the offending value; `code()` gives the
//! stable number the wire protocol sends (docs/protocol.md, "Error codes").

use std::io;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("unknown topic '{0}'")]
    UnknownTopic(String),
    #[error("topic '{0}' already exists")]
    TopicExists(String),
    #[error("unknown partition {partition} of topic '{topic}'")]
    UnknownPartition { topic: String, partition: u32 },
    #[error("invalid topic name '{name}': {reason}")]
    InvalidTopicName { name: String, reason: &'static str },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("corrupt record batch: {0}")]
    CorruptBatch(String),
    #[error("batch of {bytes} bytes exceeds the limit of {max}")]
    BatchTooLarge { bytes: usize, max: usize },
    #[error("offset {offset} out of range [{log_start}, {log_end}]")]
    OffsetOutOfRange {
        offset: u64,
        log_start: u64,
        log_end: u64,
    },
    #[error("disk full while writing {path}")]
    DiskFull { path: String },
    #[error("storage error on {path}: {source}")]
    Storage { path: String, source: io::Error },
    #[error("partition {topic}/{partition} is not writable after an I/O error: {reason}")]
    PartitionFailed {
        topic: String,
        partition: u32,
        reason: String,
    },
    #[error("corrupt log {path}: {reason}")]
    CorruptLog { path: String, reason: String },
    #[error("metadata: {0}")]
    Metadata(String),
    #[error("the engine is shutting down")]
    ShuttingDown,
    #[error("engine busy: {0}")]
    Busy(String),
    #[error("runtime: {0}")]
    Runtime(String),
    #[error("timed out after {0} ms")]
    Timeout(u64),
    /// A replicated partition's replica that is not (or no longer) the leader (issue 14;
    /// docs/replication.md). `leader`: the node id it knows leads (a hint, no address);
    /// `epoch`: its leader epoch (Raft term). The batch may still commit: retry idempotently.
    #[error(
        "partition {topic}/{partition}: not the leader (leader epoch {epoch}, leader {leader:?})"
    )]
    NotLeader {
        topic: String,
        partition: u32,
        leader: Option<u64>,
        epoch: u64,
    },
    // --- messaging semantics (codes 200..=224; docs/semantics.md) ---
    #[error("producer {producer_id}: sequence {got} out of order, expected {expected}")]
    OutOfOrderSequence {
        producer_id: u64,
        expected: u32,
        got: u32,
    },
    #[error("producer {producer_id} epoch {epoch} is fenced by epoch {current_epoch}")]
    ProducerFenced {
        producer_id: u64,
        epoch: u16,
        current_epoch: u16,
    },
    #[error(
        "producer {producer_id}: sequence {sequence} was written before (last is {last_sequence}), its offsets are no longer known"
    )]
    DuplicateSequence {
        producer_id: u64,
        sequence: u32,
        last_sequence: u32,
    },
    #[error(
        "producer {producer_id} is unknown to this partition (first sequence {sequence} is not 0)"
    )]
    UnknownProducer { producer_id: u64, sequence: u32 },
    #[error("unknown member '{member}' of group '{group}'")]
    UnknownMember { group: String, member: String },
    #[error("group '{group}': generation {generation} is stale (current {current})")]
    IllegalGeneration {
        group: String,
        generation: u32,
        current: u32,
    },
    #[error(
        "group '{group}': partition {partition} of '{topic}' is not assigned to member '{member}'"
    )]
    NotAssigned {
        group: String,
        member: String,
        topic: String,
        partition: u32,
    },
    #[error("invalid group '{group}': {reason}")]
    InvalidGroup { group: String, reason: String },
    #[error("topic '{0}' is not a work queue")]
    NotAQueue(String),
    // --- operations (codes 250..=269; docs/operations.md) ---
    #[error(
        "group '{group}' has {members} live members: stop its consumers (or wait for their session timeout) before resetting its offsets"
    )]
    GroupNotEmpty { group: String, members: usize },
}

impl Error {
    /// Wraps an I/O error with the path it happened on, mapping ENOSPC to `DiskFull`.
    pub fn io(path: impl std::fmt::Display, source: io::Error) -> Self {
        if source.raw_os_error() == Some(libc::ENOSPC)
            || source.kind() == io::ErrorKind::StorageFull
        {
            Error::DiskFull {
                path: path.to_string(),
            }
        } else {
            Error::Storage {
                path: path.to_string(),
                source,
            }
        }
    }

    /// Stable numeric code for the wire protocol. Never renumber; only append.
    pub fn code(&self) -> u16 {
        match self {
            Error::UnknownTopic(_) => 3,
            Error::TopicExists(_) => 4,
            Error::UnknownPartition { .. } => 5,
            Error::InvalidTopicName { .. } => 6,
            Error::InvalidArgument(_) => 7,
            Error::CorruptBatch(_) => 8,
            Error::BatchTooLarge { .. } => 9,
            Error::OffsetOutOfRange { .. } => 10,
            Error::DiskFull { .. } => 11,
            Error::Storage { .. } => 12,
            Error::PartitionFailed { .. } => 13,
            Error::CorruptLog { .. } => 14,
            Error::Metadata(_) => 15,
            Error::ShuttingDown => 16,
            Error::Busy(_) => 17,
            Error::Runtime(_) => 18,
            Error::Timeout(_) => 19,
            Error::NotLeader { .. } => 20,
            Error::OutOfOrderSequence { .. } => 200,
            Error::ProducerFenced { .. } => 201,
            Error::DuplicateSequence { .. } => 202,
            Error::UnknownProducer { .. } => 203,
            Error::UnknownMember { .. } => 204,
            Error::IllegalGeneration { .. } => 205,
            Error::NotAssigned { .. } => 206,
            Error::InvalidGroup { .. } => 207,
            // Messaging semantics (work queues) own 225-249.
            Error::NotAQueue(_) => 226,
            // Operations own 250-269.
            Error::GroupNotEmpty { .. } => 250,
        }
    }

    /// Whether a client may retry the same request and expect it to succeed later.
    pub fn is_retriable(&self) -> bool {
        matches!(
            self,
            Error::DiskFull { .. }
                | Error::Busy(_)
                | Error::Timeout(_)
                | Error::PartitionFailed { .. }
                | Error::NotLeader { .. }
        )
    }
}

impl From<shardline_format::FormatError> for Error {
    fn from(e: shardline_format::FormatError) -> Self {
        use shardline_format::FormatError;
        match e {
            FormatError::Corrupt(reason) => Error::CorruptBatch(reason),
            FormatError::InvalidArgument(reason) => Error::InvalidArgument(reason),
            FormatError::TooLarge { bytes, max } => Error::BatchTooLarge { bytes, max },
            other => Error::CorruptBatch(other.to_string()),
        }
    }
}
