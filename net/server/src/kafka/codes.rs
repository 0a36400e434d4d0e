//! Kafka error codes (Kafka's `Errors.java`) and the mapping from engine errors
//! (docs/kafka.md, "Errors").

use shardline_engine::Error;

pub(crate) const UNKNOWN_SERVER_ERROR: i16 = -1;
pub(crate) const NONE: i16 = 0;
pub(crate) const OFFSET_OUT_OF_RANGE: i16 = 1;
pub(crate) const CORRUPT_MESSAGE: i16 = 2;
pub(crate) const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
pub(crate) const LEADER_NOT_AVAILABLE: i16 = 5;
pub(crate) const NOT_LEADER_OR_FOLLOWER: i16 = 6;
pub(crate) const REQUEST_TIMED_OUT: i16 = 7;
pub(crate) const MESSAGE_TOO_LARGE: i16 = 10;
pub(crate) const COORDINATOR_NOT_AVAILABLE: i16 = 15;
pub(crate) const NOT_COORDINATOR: i16 = 16;
pub(crate) const INVALID_TOPIC_EXCEPTION: i16 = 17;
pub(crate) const INVALID_REQUIRED_ACKS: i16 = 21;
pub(crate) const UNSUPPORTED_VERSION: i16 = 35;
pub(crate) const TOPIC_ALREADY_EXISTS: i16 = 36;
pub(crate) const INVALID_PARTITIONS: i16 = 37;
pub(crate) const INVALID_REPLICATION_FACTOR: i16 = 38;
pub(crate) const INVALID_CONFIG: i16 = 40;
pub(crate) const INVALID_REQUEST: i16 = 42;
pub(crate) const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
pub(crate) const DUPLICATE_SEQUENCE_NUMBER: i16 = 46;
pub(crate) const INVALID_PRODUCER_EPOCH: i16 = 47;
pub(crate) const KAFKA_STORAGE_ERROR: i16 = 56;
pub(crate) const FENCED_LEADER_EPOCH: i16 = 74;
pub(crate) const UNKNOWN_LEADER_EPOCH: i16 = 76;
pub(crate) const INVALID_RECORD: i16 = 87;

/// The Kafka error code for an engine error on a partition operation.
pub(crate) fn of(e: &Error) -> i16 {
    match e {
        Error::UnknownTopic(_) | Error::UnknownPartition { .. } => UNKNOWN_TOPIC_OR_PARTITION,
        Error::InvalidTopicName { .. } => INVALID_TOPIC_EXCEPTION,
        Error::TopicExists(_) => TOPIC_ALREADY_EXISTS,
        Error::CorruptBatch(_) => CORRUPT_MESSAGE,
        Error::BatchTooLarge { .. } => MESSAGE_TOO_LARGE,
        Error::OffsetOutOfRange { .. } => OFFSET_OUT_OF_RANGE,
        Error::OutOfOrderSequence { .. } | Error::UnknownProducer { .. } => {
            OUT_OF_ORDER_SEQUENCE_NUMBER
        }
        Error::DuplicateSequence { .. } => DUPLICATE_SEQUENCE_NUMBER,
        Error::ProducerFenced { .. } => INVALID_PRODUCER_EPOCH,
        Error::Timeout(_) | Error::Busy(_) => REQUEST_TIMED_OUT,
        Error::DiskFull { .. } | Error::Storage { .. } | Error::PartitionFailed { .. } => {
            KAFKA_STORAGE_ERROR
        }
        Error::ShuttingDown => LEADER_NOT_AVAILABLE,
        // A replica that does not lead (or no replica here): the client refreshes Metadata.
        Error::NotLeader { .. } => NOT_LEADER_OR_FOLLOWER,
        Error::InvalidArgument(_) => INVALID_REQUEST,
        _ => UNKNOWN_SERVER_ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_errors_map_to_kafkas_codes() {
        let dup = Error::DuplicateSequence {
            producer_id: 1,
            sequence: 0,
            last_sequence: 9,
        };
        assert_eq!(of(&dup), DUPLICATE_SEQUENCE_NUMBER);
        let ooo = Error::OutOfOrderSequence {
            producer_id: 1,
            expected: 3,
            got: 5,
        };
        assert_eq!(of(&ooo), OUT_OF_ORDER_SEQUENCE_NUMBER);
        assert_eq!(
            of(&Error::UnknownTopic("t".into())),
            UNKNOWN_TOPIC_OR_PARTITION
        );
        let not_leader = Error::NotLeader {
            topic: "t".into(),
            partition: 0,
            leader: Some(2),
            epoch: 3,
        };
        assert_eq!(of(&not_leader), NOT_LEADER_OR_FOLLOWER);
    }
}
