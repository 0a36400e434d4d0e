//! Conversions between wire messages and the engine's public types. The wire types are separate
//! on purpose: their archived layout is a compatibility promise, the engine's structs are not.
//! Engine counters in `usize` saturate into the wire's fixed widths.

use shardline_engine as engine;

use super::error::code;
use super::messages::*;

fn u32_sat(v: usize) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

fn u64_sat(v: usize) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

impl From<engine::Acks> for Acks {
    fn from(a: engine::Acks) -> Self {
        match a {
            engine::Acks::None => Acks::None,
            engine::Acks::Leader => Acks::Leader,
            engine::Acks::Durable => Acks::Durable,
        }
    }
}

impl From<Acks> for engine::Acks {
    fn from(a: Acks) -> Self {
        match a {
            Acks::None => engine::Acks::None,
            Acks::Leader => engine::Acks::Leader,
            Acks::Durable => engine::Acks::Durable,
        }
    }
}

impl From<engine::OffsetSpec> for OffsetSpec {
    fn from(s: engine::OffsetSpec) -> Self {
        match s {
            engine::OffsetSpec::Earliest => OffsetSpec::Earliest,
            engine::OffsetSpec::Latest => OffsetSpec::Latest,
            engine::OffsetSpec::Timestamp(t) => OffsetSpec::Timestamp(t),
            engine::OffsetSpec::At(o) => OffsetSpec::At(o),
        }
    }
}

impl From<OffsetSpec> for engine::OffsetSpec {
    fn from(s: OffsetSpec) -> Self {
        match s {
            OffsetSpec::Earliest => engine::OffsetSpec::Earliest,
            OffsetSpec::Latest => engine::OffsetSpec::Latest,
            OffsetSpec::Timestamp(t) => engine::OffsetSpec::Timestamp(t),
            OffsetSpec::At(o) => engine::OffsetSpec::At(o),
        }
    }
}

impl From<&engine::TopicConfig> for TopicConfig {
    fn from(c: &engine::TopicConfig) -> Self {
        TopicConfig {
            partitions: c.partitions,
            retention_bytes: c.retention_bytes,
            retention_ms: c.retention_ms,
            segment_bytes: c.segment_bytes,
            segment_ms: c.segment_ms,
        }
    }
}

impl From<TopicConfig> for engine::TopicConfig {
    fn from(c: TopicConfig) -> Self {
        engine::TopicConfig {
            partitions: c.partitions,
            retention_bytes: c.retention_bytes,
            retention_ms: c.retention_ms,
            segment_bytes: c.segment_bytes,
            segment_ms: c.segment_ms,
            queue: None,
            // Decided by the server's policy (server/encryption.rs), not by the client.
            encrypted: false,
        }
    }
}

impl From<&engine::TopicInfo> for TopicInfo {
    fn from(t: &engine::TopicInfo) -> Self {
        TopicInfo {
            name: t.name.clone(),
            topic_id: t.id,
            config: TopicConfig::from(&t.config),
            partition_shards: t.shards.clone(),
        }
    }
}

impl From<&engine::PartitionInfo> for PartitionInfo {
    fn from(p: &engine::PartitionInfo) -> Self {
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

impl From<&engine::TopicDescription> for DescribeTopicResponse {
    fn from(d: &engine::TopicDescription) -> Self {
        DescribeTopicResponse {
            topic: TopicInfo::from(&d.info),
            partitions: d.partitions.iter().map(PartitionInfo::from).collect(),
        }
    }
}

impl From<&engine::ShardStats> for ShardStats {
    fn from(s: &engine::ShardStats) -> Self {
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

impl From<&engine::Error> for ErrorResponse {
    fn from(e: &engine::Error) -> Self {
        ErrorResponse::new(e.code(), e.to_string())
    }
}

/// A per-partition error message: bounded like `ErrorResponse::message`.
fn message(e: &engine::Error) -> Option<String> {
    let mut m = e.to_string();
    truncate_utf8(&mut m, super::MESSAGE_BYTES_MAX);
    Some(m)
}

impl ProducePartitionResult {
    /// The result of producing one partition's batch.
    pub fn from_engine(partition: u32, r: &engine::Result<engine::ProduceAck>) -> Self {
        match r {
            Ok(ack) => ProducePartitionResult {
                partition,
                error_code: code::NONE,
                base_offset: ack.base_offset,
                last_offset: ack.last_offset,
                error_message: None,
            },
            Err(e) => ProducePartitionResult {
                partition,
                error_code: e.code(),
                base_offset: 0,
                last_offset: 0,
                error_message: message(e),
            },
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

impl FetchPartitionResult {
    /// The result of fetching one partition from `offset`; the engine's chunks are moved, not
    /// copied.
    pub fn from_engine(
        partition: u32,
        offset: u64,
        r: engine::Result<engine::FetchResponse>,
    ) -> Self {
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
}

impl ListOffsetsPartitionResult {
    pub fn from_engine(partition: u32, r: &engine::Result<u64>) -> Self {
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
}

impl Push {
    /// A push of what the engine delivered to a subscription whose position was `position`;
    /// chunks are moved, not copied. `records` (the record credit it costs) counts only records
    /// at or after the position.
    pub fn from_engine(subscription_id: u32, position: u64, f: engine::FetchResponse) -> Self {
        Push {
            subscription_id,
            records: delivered_records(position, &f),
            next_offset: f.next_offset,
            high_watermark: f.high_watermark,
            log_start: f.log_start,
            chunks: f.chunks,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_round_trip_through_the_engine_types() {
        for a in [Acks::None, Acks::Leader, Acks::Durable] {
            assert_eq!(Acks::from(engine::Acks::from(a)), a);
        }
        for s in [
            OffsetSpec::Earliest,
            OffsetSpec::Latest,
            OffsetSpec::Timestamp(-5),
            OffsetSpec::At(7),
        ] {
            assert_eq!(OffsetSpec::from(engine::OffsetSpec::from(s)), s);
        }
        let c = TopicConfig {
            partitions: 3,
            retention_bytes: Some(1),
            retention_ms: None,
            segment_bytes: Some(2),
            segment_ms: Some(3),
        };
        assert_eq!(TopicConfig::from(&engine::TopicConfig::from(c)), c);
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
        assert_eq!(Push::from_engine(1, 12, f.clone()).records, 2);
        assert_eq!(
            FetchPartitionResult::from_engine(0, 10, Ok(f.clone())).records,
            4
        );
        assert_eq!(FetchPartitionResult::from_engine(0, 3, Ok(f)).records, 4);
    }

    #[test]
    fn engine_errors_keep_their_codes() {
        let e = engine::Error::UnknownTopic("t".into());
        let r = ProducePartitionResult::from_engine(4, &Err(e));
        assert_eq!(r.error_code, code::UNKNOWN_TOPIC);
        assert_eq!(r.partition, 4);
        let big = engine::Error::InvalidArgument("é".repeat(10_000));
        let er = ErrorResponse::from(&big);
        assert!(er.message.len() <= crate::protocol::MESSAGE_BYTES_MAX);
    }
}
