//! Conversions between wire messages (`shardline-protocol`) and the engine's public types. The
//! wire types are separate on purpose: their archived layout is a compatibility promise, the
//! engine's structs are not. They live here, in the server, so that the protocol crate (and the
//! client on top of it) never depends on the engine. Engine counters in `usize` saturate into the
//! wire's fixed widths.
//!
//! Both sides are foreign to this crate, so the conversions are two small traits rather than
//! `From` impls: [`ToWire`] (engine -> wire) and [`ToEngine`] (wire -> engine), plus functions
//! for the per-partition results.

use shardline_engine as engine;
use shardline_protocol::code;
use shardline_protocol::messages::*;
use shardline_protocol::queue::{
    MessageHeader, QueueMessage, QueuePartitionStats, QueueReceipt, QueueSettings,
};

/// An engine value as its wire message.
pub(crate) trait ToWire {
    type Wire;
    fn to_wire(self) -> Self::Wire;
}

/// A wire message as the engine's value.
pub(crate) trait ToEngine {
    type Engine;
    fn to_engine(self) -> Self::Engine;
}

fn u32_sat(v: usize) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

fn u64_sat(v: usize) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

impl ToWire for engine::Acks {
    type Wire = Acks;
    fn to_wire(self) -> Acks {
        let a = self;
        match a {
            engine::Acks::None => Acks::None,
            engine::Acks::Leader => Acks::Leader,
            engine::Acks::Durable => Acks::Durable,
            engine::Acks::All => Acks::All,
        }
    }
}

impl ToEngine for Acks {
    type Engine = engine::Acks;
    fn to_engine(self) -> engine::Acks {
        let a = self;
        match a {
            Acks::None => engine::Acks::None,
            Acks::Leader => engine::Acks::Leader,
            Acks::Durable => engine::Acks::Durable,
            Acks::All => engine::Acks::All,
        }
    }
}

impl ToWire for engine::OffsetSpec {
    type Wire = OffsetSpec;
    fn to_wire(self) -> OffsetSpec {
        let s = self;
        match s {
            engine::OffsetSpec::Earliest => OffsetSpec::Earliest,
            engine::OffsetSpec::Latest => OffsetSpec::Latest,
            engine::OffsetSpec::Timestamp(t) => OffsetSpec::Timestamp(t),
            engine::OffsetSpec::At(o) => OffsetSpec::At(o),
        }
    }
}

impl ToEngine for OffsetSpec {
    type Engine = engine::OffsetSpec;
    fn to_engine(self) -> engine::OffsetSpec {
        let s = self;
        match s {
            OffsetSpec::Earliest => engine::OffsetSpec::Earliest,
            OffsetSpec::Latest => engine::OffsetSpec::Latest,
            OffsetSpec::Timestamp(t) => engine::OffsetSpec::Timestamp(t),
            OffsetSpec::At(o) => engine::OffsetSpec::At(o),
        }
    }
}

impl ToWire for &engine::TopicConfig {
    type Wire = TopicConfig;
    fn to_wire(self) -> TopicConfig {
        let c = self;
        TopicConfig {
            partitions: c.partitions,
            retention_bytes: c.retention_bytes,
            retention_ms: c.retention_ms,
            segment_bytes: c.segment_bytes,
            segment_ms: c.segment_ms,
        }
    }
}

impl ToEngine for TopicConfig {
    type Engine = engine::TopicConfig;
    fn to_engine(self) -> engine::TopicConfig {
        let c = self;
        engine::TopicConfig {
            partitions: c.partitions,
            retention_bytes: c.retention_bytes,
            retention_ms: c.retention_ms,
            segment_bytes: c.segment_bytes,
            segment_ms: c.segment_ms,
            queue: None,
            // Decided by the server's policy (server/encryption.rs), not by the client.
            encrypted: false,
            // CreateReplicatedTopic sets it (replicas.rs); CreateTopic is 1.
            replicas: 1,
        }
    }
}

impl ToWire for &engine::TopicInfo {
    type Wire = TopicInfo;
    fn to_wire(self) -> TopicInfo {
        let t = self;
        TopicInfo {
            name: t.name.clone(),
            topic_id: t.id,
            config: (&t.config).to_wire(),
            partition_shards: t.shards.clone(),
        }
    }
}

impl ToWire for &engine::PartitionInfo {
    type Wire = PartitionInfo;
    fn to_wire(self) -> PartitionInfo {
        let p = self;
        PartitionInfo {
            partition: p.partition,
            shard: u32_sat(p.shard),
            log_start: p.log_start,
            high_watermark: p.high_watermark,
            durable_offset: p.durable_offset,
            next_offset: p.next_offset,
            size_bytes: p.size_bytes,
            segments: u32_sat(p.segments),
            cache_bytes: u64_sat(p.cache_bytes),
            produced_records: p.produced_records,
            produced_bytes: p.produced_bytes,
            fetched_records: p.fetched_records,
            failure: p.failure.clone(),
        }
    }
}

impl ToWire for &engine::TopicDescription {
    type Wire = DescribeTopicResponse;
    fn to_wire(self) -> DescribeTopicResponse {
        let d = self;
        DescribeTopicResponse {
            topic: (&d.info).to_wire(),
            partitions: d.partitions.iter().map(ToWire::to_wire).collect(),
        }
    }
}

impl ToWire for &engine::ShardStats {
    type Wire = ShardStats;
    fn to_wire(self) -> ShardStats {
        let s = self;
        ShardStats {
            shard: u32_sat(s.shard),
            partitions: u32_sat(s.partitions),
            cache_bytes: u64_sat(s.cache_bytes),
            flushes: s.flushes,
            syncs: s.syncs,
            flushed_bytes: s.flushed_bytes,
        }
    }
}

impl ToWire for &engine::Error {
    type Wire = ErrorResponse;
    fn to_wire(self) -> ErrorResponse {
        ErrorResponse::new(self.code(), self.to_string())
    }
}

/// A per-partition error message: bounded like `ErrorResponse::message`.
fn message(e: &engine::Error) -> Option<String> {
    let mut m = e.to_string();
    truncate_utf8(&mut m, shardline_protocol::MESSAGE_BYTES_MAX);
    Some(m)
}

/// The result of producing one partition's batch.
pub(crate) fn produce_result(
    partition: u32,
    r: &engine::Result<engine::ProduceAck>,
) -> ProducePartitionResult {
    match r {
        Ok(ack) => ProducePartitionResult {
            partition,
            error_code: code::NONE,
            base_offset: ack.base_offset,
            last_offset: ack.last_offset,
            error_message: None,
        },
        Err(e) => {
            // NOT_LEADER carries the leader hint in the offset fields (docs/protocol.md, code 20).
            let (base_offset, last_offset) = match e {
                engine::Error::NotLeader { leader, epoch, .. } => (leader.unwrap_or(0), *epoch),
                _ => (0, 0),
            };
            ProducePartitionResult {
                partition,
                error_code: e.code(),
                base_offset,
                last_offset,
                error_message: message(e),
            }
        }
    }
}

/// Records of `f` at or after `position`: the engine counts every record of the returned batches,
/// and the first batch may start before the position (the wire counts only what is delivered).
fn delivered_records(position: u64, f: &engine::FetchResponse) -> u32 {
    let first_base = f
        .chunks
        .first()
        .and_then(|c| engine::batch::BatchHeader::parse(c).ok())
        .map(|h| h.base_offset);
    match first_base {
        Some(base) if f.next_offset >= base => {
            let skipped = position.saturating_sub(base);
            let total = f.next_offset - base;
            u32::try_from(total.saturating_sub(skipped)).unwrap_or(u32::MAX)
        }
        _ => u32_sat(f.records),
    }
}

/// The result of fetching one partition from `offset`; the engine's chunks are moved, not
/// copied.
pub(crate) fn fetch_result(
    partition: u32,
    offset: u64,
    r: engine::Result<engine::FetchResponse>,
) -> FetchPartitionResult {
    match r {
        Ok(f) => FetchPartitionResult {
            partition,
            error_code: code::NONE,
            error_message: None,
            high_watermark: f.high_watermark,
            log_start: f.log_start,
            next_offset: f.next_offset,
            records: delivered_records(offset, &f),
            chunks: f.chunks,
        },
        Err(e) => FetchPartitionResult {
            partition,
            error_code: e.code(),
            error_message: message(&e),
            ..Default::default()
        },
    }
}

/// The result of looking up one partition's offset.
pub(crate) fn list_offsets_result(
    partition: u32,
    r: &engine::Result<u64>,
) -> ListOffsetsPartitionResult {
    match r {
        Ok(offset) => ListOffsetsPartitionResult {
            partition,
            error_code: code::NONE,
            error_message: None,
            offset: *offset,
        },
        Err(e) => ListOffsetsPartitionResult {
            partition,
            error_code: e.code(),
            error_message: message(e),
            offset: 0,
        },
    }
}

/// A push of what the engine delivered to a subscription whose position was `position`;
/// chunks are moved, not copied. `records` (the record credit it costs) counts only records
/// at or after the position.
#[cfg(test)] // the connection builds its pushes itself (conn.rs, `pump`)
pub(crate) fn push_of(subscription_id: u32, position: u64, f: engine::FetchResponse) -> Push {
    Push {
        subscription_id,
        records: delivered_records(position, &f),
        next_offset: f.next_offset,
        high_watermark: f.high_watermark,
        log_start: f.log_start,
        chunks: f.chunks,
    }
}

// --- work queues ---

impl ToWire for &engine::QueueConfig {
    type Wire = QueueSettings;
    fn to_wire(self) -> QueueSettings {
        let c = self;
        QueueSettings {
            visibility_timeout_ms: c.visibility_timeout_ms,
            max_deliveries: c.max_deliveries,
            backoff_base_ms: c.backoff_base_ms,
            backoff_max_ms: c.backoff_max_ms,
            dead_letter_topic: c.dead_letter_topic.clone(),
            priority_levels: c.priority_levels,
        }
        .with_strict_priority(c.strict_priority)
    }
}

impl ToEngine for QueueSettings {
    type Engine = engine::QueueConfig;
    fn to_engine(self) -> engine::QueueConfig {
        let c = self;
        engine::QueueConfig {
            visibility_timeout_ms: c.visibility_timeout_ms,
            max_deliveries: c.max_deliveries,
            backoff_base_ms: c.backoff_base_ms,
            backoff_max_ms: c.backoff_max_ms,
            strict_priority: c.strict_priority(),
            priority_levels: c.levels(),
            dead_letter_topic: c.dead_letter_topic,
        }
    }
}

impl ToWire for engine::QueueMessage {
    type Wire = QueueMessage;
    fn to_wire(self) -> QueueMessage {
        let m = self;
        QueueMessage {
            partition: m.partition,
            offset: m.offset,
            attempt: m.attempt,
            timestamp_us: m.timestamp_us,
            priority: m.priority,
            key: m.key,
            value: m.value,
            headers: m
                .headers
                .into_iter()
                .map(|h| MessageHeader {
                    key: h.key,
                    value: h.value,
                })
                .collect(),
        }
    }
}

impl ToEngine for QueueReceipt {
    type Engine = engine::Receipt;
    fn to_engine(self) -> engine::Receipt {
        let r = self;
        engine::Receipt {
            offset: r.offset,
            attempt: r.attempt,
        }
    }
}

impl ToWire for &engine::QueuePartitionStats {
    type Wire = QueuePartitionStats;
    fn to_wire(self) -> QueuePartitionStats {
        let s = self;
        QueuePartitionStats {
            partition: s.partition,
            depth: s.depth,
            ready: s.ready,
            delayed: s.delayed,
            in_flight: s.in_flight,
            oldest_age_ms: s.oldest_age_ms,
            acked: s.acked,
            nacked: s.nacked,
            expired: s.expired,
            dead_lettered: s.dead_lettered,
            dropped: s.dropped,
            lost: s.lost,
            ack_floor: s.ack_floor,
            high_watermark: s.high_watermark,
        }
    }
}

/// The wire code of one receipt's outcome.
pub(crate) fn lease_code(r: &Result<(), engine::LeaseError>) -> u16 {
    match r {
        Ok(()) => code::NONE,
        Err(engine::LeaseError::NotLeased) => code::LEASE_NOT_HELD,
        Err(engine::LeaseError::Done) => code::MESSAGE_DONE,
        Err(engine::LeaseError::Unknown) => code::UNKNOWN_MESSAGE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_round_trip_through_the_engine_types() {
        for a in [Acks::None, Acks::Leader, Acks::Durable, Acks::All] {
            assert_eq!(a.to_engine().to_wire(), a);
        }
        for s in [
            OffsetSpec::Earliest,
            OffsetSpec::Latest,
            OffsetSpec::Timestamp(-5),
            OffsetSpec::At(7),
        ] {
            assert_eq!(s.to_engine().to_wire(), s);
        }
        let c = TopicConfig {
            partitions: 3,
            retention_bytes: Some(1),
            retention_ms: None,
            segment_bytes: Some(2),
            segment_ms: Some(3),
        };
        assert_eq!((&c.to_engine()).to_wire(), c);
    }

    #[test]
    fn only_records_at_or_after_the_position_are_counted() {
        let mut b = engine::batch::batch_of_values(["a", "b", "c", "d"])
            .unwrap()
            .to_vec();
        engine::batch::set_base_offset(&mut b, 10);
        let f = engine::FetchResponse {
            chunks: vec![bytes::Bytes::from(b)],
            records: 4,
            bytes: 0,
            next_offset: 14,
            high_watermark: 14,
            log_start: 0,
        };
        assert_eq!(push_of(1, 12, f.clone()).records, 2);
        assert_eq!(fetch_result(0, 10, Ok(f.clone())).records, 4);
        assert_eq!(fetch_result(0, 3, Ok(f)).records, 4);
    }

    #[test]
    fn engine_errors_keep_their_codes() {
        let e = engine::Error::UnknownTopic("t".into());
        let r = produce_result(4, &Err(e));
        assert_eq!(r.error_code, code::UNKNOWN_TOPIC);
        assert_eq!(r.partition, 4);
        let big = engine::Error::InvalidArgument("é".repeat(10_000));
        let er = (&big).to_wire();
        assert!(er.message.len() <= shardline_protocol::MESSAGE_BYTES_MAX);
    }

    fn decoder() -> shardline_protocol::FrameDecoder {
        use shardline_protocol::{DecoderConfig, FrameDecoder};
        FrameDecoder::new(DecoderConfig {
            frame_bytes_max: 1 << 20,
            read_buffer_bytes: 4096,
        })
        .unwrap()
    }

    /// The engine's own batches pass through untouched and can be validated in place.
    #[test]
    fn engine_batches_survive_produce_and_fetch_byte_for_byte() {
        use shardline_engine::batch;
        use shardline_protocol::{FrameBuf, FrameEncoder, Request, Response, ServerMessage};
        let b1 = batch::batch_of_values(["a", "bb", "ccc"]).unwrap();
        let b2 = batch::batch_of_values([vec![9u8; 1000]]).unwrap();
        let req = Request::Produce(ProduceRequest {
            acks: Acks::Leader,
            timeout_ms: 0,
            topics: vec![ProduceTopic {
                name: "orders".into(),
                partitions: vec![
                    ProducePartition {
                        partition: 0,
                        batch: b1.clone(),
                    },
                    ProducePartition {
                        partition: 1,
                        batch: b2.clone(),
                    },
                ],
            }],
        });
        let mut enc = FrameEncoder::default();
        let mut out = FrameBuf::new();
        enc.request(&mut out, 1, 0, &req).unwrap();
        let mut dec = decoder();
        dec.push(&out);
        let f = dec.next_frame_owned().unwrap().unwrap();
        let Request::Produce(p) = Request::decode_owned_frame(&f).unwrap() else {
            panic!("not a produce");
        };
        for (part, want) in p.topics[0].partitions.iter().zip([&b1, &b2]) {
            assert_eq!(&part.batch, want);
            assert!((part.batch.as_ptr() as usize).is_multiple_of(16));
            batch::validate(&part.batch).unwrap();
        }

        let resp = Response::Fetch(FetchResponse {
            topics: vec![FetchTopicResult {
                name: "orders".into(),
                partitions: vec![fetch_result(
                    0,
                    0,
                    Ok(shardline_engine::FetchResponse {
                        chunks: vec![b1.clone(), b2.clone()],
                        records: 4,
                        bytes: b1.len() + b2.len(),
                        next_offset: 4,
                        high_watermark: 4,
                        log_start: 0,
                    }),
                )],
            }],
        });
        out.clear();
        let parts = enc.response_parts(8, 0, &resp).unwrap();
        // The batches go out as the very buffers the engine handed over.
        assert!(parts.segments.iter().any(|s| s.as_ptr() == b1.as_ptr()));
        parts.write_to(&mut out);
        let mut dec = decoder();
        dec.push(&out);
        let f = dec.next_frame_owned().unwrap().unwrap();
        let ServerMessage::Response {
            response: Response::Fetch(fr),
            ..
        } = ServerMessage::decode_owned(&f).unwrap()
        else {
            panic!("not a fetch response");
        };
        let chunks = &fr.topics[0].partitions[0].chunks;
        assert_eq!(chunks, &vec![b1, b2]);
        for c in chunks {
            batch::validate(c).unwrap();
        }
    }
}

/// Guards the mirror of the engine's error codes in `shardline_protocol::code` (moved here
/// from the protocol crate, which no longer links the engine).
#[cfg(test)]
mod error_codes {
    use shardline_engine::Error;
    use shardline_protocol::{code, code_is_retriable, code_name};

    /// Guards the mirror of the engine's codes: renumbering either side breaks this test.
    #[test]
    #[allow(
        clippy::too_many_lines,
        reason = "a table of every engine error and its wire code"
    )]
    fn engine_codes_match_the_mirror() {
        let s = String::new;
        let cases: Vec<(Error, u16)> = vec![
            (Error::UnknownTopic(s()), code::UNKNOWN_TOPIC),
            (Error::TopicExists(s()), code::TOPIC_EXISTS),
            (
                Error::UnknownPartition {
                    topic: s(),
                    partition: 0,
                },
                code::UNKNOWN_PARTITION,
            ),
            (
                Error::InvalidTopicName {
                    name: s(),
                    reason: "",
                },
                code::INVALID_TOPIC_NAME,
            ),
            (Error::InvalidArgument(s()), code::INVALID_ARGUMENT),
            (Error::CorruptBatch(s()), code::CORRUPT_BATCH),
            (
                Error::BatchTooLarge { bytes: 0, max: 0 },
                code::BATCH_TOO_LARGE,
            ),
            (
                Error::OffsetOutOfRange {
                    offset: 0,
                    log_start: 0,
                    log_end: 0,
                },
                code::OFFSET_OUT_OF_RANGE,
            ),
            (Error::DiskFull { path: s() }, code::DISK_FULL),
            (
                Error::Storage {
                    path: s(),
                    source: std::io::Error::other("x"),
                },
                code::STORAGE,
            ),
            (
                Error::PartitionFailed {
                    topic: s(),
                    partition: 0,
                    reason: s(),
                },
                code::PARTITION_FAILED,
            ),
            (
                Error::CorruptLog {
                    path: s(),
                    reason: s(),
                },
                code::CORRUPT_LOG,
            ),
            (Error::Metadata(s()), code::METADATA),
            (Error::ShuttingDown, code::SHUTTING_DOWN),
            (Error::Busy(s()), code::BUSY),
            (Error::Runtime(s()), code::RUNTIME),
            (Error::Timeout(0), code::TIMEOUT),
            (
                Error::NotLeader {
                    topic: s(),
                    partition: 0,
                    leader: None,
                    epoch: 0,
                },
                code::NOT_LEADER,
            ),
        ];
        let semantics: Vec<(Error, u16)> = vec![
            (
                Error::OutOfOrderSequence {
                    producer_id: 1,
                    expected: 0,
                    got: 1,
                },
                code::OUT_OF_ORDER_SEQUENCE,
            ),
            (
                Error::ProducerFenced {
                    producer_id: 1,
                    epoch: 0,
                    current_epoch: 1,
                },
                code::PRODUCER_FENCED,
            ),
            (
                Error::DuplicateSequence {
                    producer_id: 1,
                    sequence: 0,
                    last_sequence: 9,
                },
                code::DUPLICATE_SEQUENCE,
            ),
            (
                Error::UnknownProducer {
                    producer_id: 1,
                    sequence: 3,
                },
                code::UNKNOWN_PRODUCER,
            ),
            (
                Error::UnknownMember {
                    group: s(),
                    member: s(),
                },
                code::UNKNOWN_MEMBER,
            ),
            (
                Error::IllegalGeneration {
                    group: s(),
                    generation: 0,
                    current: 1,
                },
                code::ILLEGAL_GENERATION,
            ),
            (
                Error::NotAssigned {
                    group: s(),
                    member: s(),
                    topic: s(),
                    partition: 0,
                },
                code::NOT_ASSIGNED,
            ),
            (
                Error::InvalidGroup {
                    group: s(),
                    reason: s(),
                },
                code::INVALID_GROUP,
            ),
        ];
        let ops = Error::GroupNotEmpty {
            group: s(),
            members: 1,
        };
        assert_eq!(ops.code(), code::GROUP_NOT_EMPTY);
        assert!((250..=269).contains(&ops.code()), "operations codes");
        assert!(!ops.is_retriable() && !code_is_retriable(ops.code()));
        assert_eq!(code_name(ops.code()), "GROUP_NOT_EMPTY");
        for (e, c) in semantics {
            assert_eq!(e.code(), c, "{e:?}");
            assert!((200..=224).contains(&c), "semantics codes of this area");
            assert_ne!(code_name(c), "UNKNOWN");
            assert_eq!(e.is_retriable(), code_is_retriable(c), "{e:?}");
        }
        for (e, c) in cases {
            assert_eq!(e.code(), c, "{e:?}");
            assert!(
                e.code() < 100,
                "engine codes stay below the protocol's range"
            );
            assert_ne!(code_name(c), "UNKNOWN");
            assert_eq!(e.is_retriable(), code_is_retriable(c), "{e:?}");
        }
    }
}
