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
    #[error("topic '{0}' is not a work queue")]
    NotAQueue(String),
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
            // Messaging semantics (work queues) own 225-249.
            Error::NotAQueue(_) => 226,
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
        )
    }
}
