//! Kafka record batches (magic 2) as a Shardline body kind ([`body_kind::KAFKA_V2`], issue 15).
//!
//! ```text
//!  Kafka record batch v2, big-endian (the body of a KAFKA_V2 batch, untouched):
//!  0 base_offset i64 | 8 batch_length i32 | 12 partition_leader_epoch i32 | 16 magic i8 = 2
//!  17 crc u32 (CRC32C of bytes [21, end)) | 21 attributes i16 | 23 last_offset_delta i32
//!  27 base_timestamp i64 (ms) | 35 max_timestamp i64 | 43 producer_id i64 | 51 producer_epoch i16
//!  53 base_sequence i32 | 57 record_count i32 | 61 records (compressed as a whole if codec != 0)
//! ```
//!
//! The produce path ([`wrap`]) checks the Kafka CRC32C and the header's consistency, then puts
//! the bytes as sent behind a Shardline header whose counts, timestamps (ms -> µs) and producer
//! fields are copied from them. Compressed batches are never decompressed there. The Kafka fetch
//! path ([`to_kafka`]) serves the stored bytes with only the base offset and the leader epoch
//! patched (both outside Kafka's CRC); a native batch is converted into an uncompressed Kafka
//! batch on that read only. Native readers of a Kafka batch get records through
//! [`records_of`] (called by [`crate::decode`]), again only on that read path.
//!
//! Kafka producer ids start at 0, Shardline's 0 means "no producer": a Kafka id `p >= 0` is
//! stored as `p + 1` ([`producer_to_shardline`]).

mod crc;
mod decompress;
mod records;

pub use crc::crc32c_combine;
pub use decompress::decompress;
pub use records::records_of;
use records::{encode_batch, parse_records};

use bytes::{BufMut, Bytes, BytesMut};

use crate::{
    BASE_SEQUENCE_AT, BATCH_BYTES_MAX, BATCH_LENGTH_AT, BODY_KIND_AT, BODY_LENGTH_AT, BatchHeader,
    COMPRESSION_AT, CRC_AT, CRC_START, FIRST_TIMESTAMP_AT, FLAGS_AT, FORMAT_VERSION,
    FORMAT_VERSION_AT, FormatError as Error, HEADER_BYTES, MAGIC, MAGIC_AT, MAX_TIMESTAMP_AT,
    PRODUCER_EPOCH_AT, PRODUCER_ID_AT, RECORD_COUNT_AT, Result, ValidatedBatch, body_kind,
    compression, compute_crc, padded, put,
};

/// Bytes of a Kafka v2 batch header (up to the records).
pub const KAFKA_HEADER_BYTES: usize = 61;
/// The only Kafka batch magic this kind stores.
pub const KAFKA_MAGIC: i8 = 2;
const LENGTH_AT: usize = 8;
const LEADER_EPOCH_AT: usize = 12;
const KMAGIC_AT: usize = 16;
const KCRC_AT: usize = 17;
const ATTRIBUTES_AT: usize = 21;
/// Bytes before the length field's end: `batch_length` counts what follows it.
const LENGTH_END: usize = 12;

/// Kafka's compression codecs (attributes bits 0-2).
pub mod codec {
    pub const NONE: u8 = 0;
    pub const GZIP: u8 = 1;
    pub const SNAPPY: u8 = 2;
    pub const LZ4: u8 = 3;
    pub const ZSTD: u8 = 4;
}
/// Attribute bits beyond the codec.
const ATTR_TRANSACTIONAL: i16 = 1 << 4;
const ATTR_CONTROL: i16 = 1 << 5;

/// The fields of a Kafka v2 batch header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KafkaBatchInfo {
    pub base_offset: i64,
    /// Whole batch in bytes (Kafka's `batch_length` + 12).
    pub total_bytes: usize,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp_ms: i64,
    pub max_timestamp_ms: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

impl KafkaBatchInfo {
    /// The codec ([`codec`]) of the records section.
    pub fn codec(&self) -> u8 {
        #[allow(clippy::cast_possible_truncation, reason = "masked to 3 bits")]
        let c = (self.attributes & 0x7) as u8;
        c
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & ATTR_TRANSACTIONAL != 0
    }

    pub fn is_control(&self) -> bool {
        self.attributes & ATTR_CONTROL != 0
    }
}

fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be_i64(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}

fn corrupt<T>(m: impl Into<String>) -> Result<T> {
    Err(Error::Corrupt(m.into()))
}

/// Parses a Kafka v2 batch header at the start of `b` (no CRC check). `b` may hold more
/// batches after this one.
pub fn parse_header(b: &[u8]) -> Result<KafkaBatchInfo> {
    if b.len() < KAFKA_HEADER_BYTES {
        return corrupt(format!(
            "kafka batch header needs 61 bytes, got {}",
            b.len()
        ));
    }
    let magic = i8::from_be_bytes([b[KMAGIC_AT]]);
    if magic != KAFKA_MAGIC {
        return corrupt(format!("kafka batch magic {magic}, only 2 is supported"));
    }
    let length = be_i32(b, LENGTH_AT);
    let total_bytes = usize::try_from(length)
        .ok()
        .and_then(|l| l.checked_add(LENGTH_END))
        .filter(|t| *t >= KAFKA_HEADER_BYTES && *t <= BATCH_BYTES_MAX - HEADER_BYTES)
        .ok_or_else(|| Error::Corrupt(format!("kafka batch length {length}")))?;
    Ok(KafkaBatchInfo {
        base_offset: be_i64(b, 0),
        total_bytes,
        attributes: be_i16(b, ATTRIBUTES_AT),
        last_offset_delta: be_i32(b, 23),
        base_timestamp_ms: be_i64(b, 27),
        max_timestamp_ms: be_i64(b, 35),
        producer_id: be_i64(b, 43),
        producer_epoch: be_i16(b, 51),
        base_sequence: be_i32(b, 53),
        record_count: be_i32(b, 57),
    })
}

/// Checks one complete Kafka batch as a client sent it: `b` is exactly the batch, its CRC32C
/// matches, its record count is positive and dense (`last_offset_delta + 1`). The records
/// section is not decompressed; uncompressed records are walked to check their framing.
pub fn check(b: &[u8]) -> Result<KafkaBatchInfo> {
    let info = parse_header(b)?;
    if info.total_bytes != b.len() {
        return corrupt(format!(
            "kafka batch length {} but {} bytes given",
            info.total_bytes,
            b.len()
        ));
    }
    let crc = crc32c::crc32c(&b[ATTRIBUTES_AT..]);
    if crc != be_u32(b, KCRC_AT) {
        return corrupt("kafka batch crc mismatch");
    }
    if info.record_count <= 0 || info.last_offset_delta != info.record_count - 1 {
        return corrupt(format!(
            "kafka batch of {} records with last offset delta {}",
            info.record_count, info.last_offset_delta
        ));
    }
    if info.codec() > codec::ZSTD {
        return corrupt(format!("kafka batch codec {}", info.codec()));
    }
    if info.codec() == codec::NONE {
        let n = parse_records(&b[KAFKA_HEADER_BYTES..], &info, None)?;
        if n != usize::try_from(info.record_count).unwrap_or(0) {
            return corrupt("kafka batch record count mismatch");
        }
    }
    Ok(info)
}

/// Kafka's producer id as stored in a Shardline header: `p + 1` for `p >= 0` (Kafka's id 0 is
/// valid, Shardline's 0 means none), 0 for "no producer" (-1).
pub fn producer_to_shardline(kafka_producer_id: i64) -> u64 {
    u64::try_from(kafka_producer_id).map_or(0, |p| p.wrapping_add(1))
}

/// The inverse of [`producer_to_shardline`].
pub fn producer_to_kafka(shardline_producer_id: u64) -> i64 {
    match shardline_producer_id {
        0 => -1,
        p => i64::try_from(p - 1).unwrap_or(-1),
    }
}

/// Milliseconds to microseconds, saturating.
fn ms_to_us(ms: i64) -> i64 {
    ms.saturating_mul(1000)
}

/// Wraps one Kafka batch (exactly the bytes of one v2 batch, as sent) into a Shardline batch of
/// kind [`body_kind::KAFKA_V2`]: [`wrap_validated`] without the type.
pub fn wrap(kafka: &[u8]) -> Result<Bytes> {
    wrap_validated(kafka).map(ValidatedBatch::into_bytes)
}

/// Checks one Kafka batch as a client sent it ([`check`]: its CRC32C, the header's consistency,
/// the framing of uncompressed records; compressed records are not decompressed) and wraps it
/// into a [`ValidatedBatch`] of kind [`body_kind::KAFKA_V2`] with one copy (into the aligned
/// buffer). The batch is read once for CRCs: Shardline's CRC32C, which covers the Kafka batch,
/// is derived from the Kafka CRC32C just checked ([`crc32c_combine`] over the concatenation)
/// instead of being computed over the bytes again. The result needs no further validation
/// (the engine takes it as it is: `Engine::submit_validated`).
pub fn wrap_validated(kafka: &[u8]) -> Result<ValidatedBatch> {
    let info = check(kafka)?;
    let total = padded(HEADER_BYTES + kafka.len());
    if total > BATCH_BYTES_MAX {
        return Err(Error::TooLarge {
            bytes: total,
            max: BATCH_BYTES_MAX,
        });
    }
    let mut buf = BytesMut::with_capacity(total);
    buf.put_bytes(0, HEADER_BYTES);
    buf.extend_from_slice(kafka);
    buf.resize(total, 0);
    #[allow(
        clippy::cast_possible_truncation,
        reason = "total and the body are <= BATCH_BYTES_MAX (64 MiB), checked above"
    )]
    let (total_u32, body_u32) = (total as u32, kafka.len() as u32);
    let first_us = ms_to_us(info.base_timestamp_ms);
    let max_us = ms_to_us(info.max_timestamp_ms).max(first_us);
    let producer_id = producer_to_shardline(info.producer_id);
    let (epoch, sequence) = if producer_id == 0 {
        (0u16, 0u32)
    } else {
        (
            u16::try_from(info.producer_epoch).unwrap_or(0),
            u32::try_from(info.base_sequence).unwrap_or(0),
        )
    };
    let count = u32::try_from(info.record_count).unwrap_or(0);
    let h = &mut buf[..HEADER_BYTES];
    put(h, BATCH_LENGTH_AT, &total_u32.to_le_bytes());
    put(h, MAGIC_AT, &MAGIC.to_le_bytes());
    h[FORMAT_VERSION_AT] = FORMAT_VERSION;
    h[FLAGS_AT] = 0;
    h[BODY_KIND_AT] = body_kind::KAFKA_V2;
    h[COMPRESSION_AT] = compression::NONE;
    put(h, RECORD_COUNT_AT, &count.to_le_bytes());
    put(h, BODY_LENGTH_AT, &body_u32.to_le_bytes());
    put(h, FIRST_TIMESTAMP_AT, &first_us.to_le_bytes());
    put(h, MAX_TIMESTAMP_AT, &max_us.to_le_bytes());
    put(h, PRODUCER_ID_AT, &producer_id.to_le_bytes());
    put(h, PRODUCER_EPOCH_AT, &epoch.to_le_bytes());
    put(h, BASE_SEQUENCE_AT, &sequence.to_le_bytes());
    // CRC32C(header after the CRC field ++ Kafka bytes up to its CRC'd region ++ that region
    // ++ padding), with the region's CRC taken from the Kafka header `check` verified.
    let kafka_crc = be_u32(kafka, KCRC_AT);
    let head = crc32c::crc32c_append(
        crc32c::crc32c(&buf[CRC_START..HEADER_BYTES]),
        &kafka[..ATTRIBUTES_AT],
    );
    let crc = crc32c_combine(head, kafka_crc, kafka.len() - ATTRIBUTES_AT);
    let crc = crc32c::crc32c_append(crc, &buf[HEADER_BYTES + kafka.len()..]);
    debug_assert_eq!(
        crc,
        compute_crc(&buf),
        "combined crc equals the computed one"
    );
    put(&mut buf, CRC_AT, &crc.to_le_bytes());
    let header = BatchHeader::parse(&buf)?;
    Ok(ValidatedBatch::checked(header, buf.freeze()))
}

/// The body of a Kafka-kind Shardline batch (the Kafka batch, without padding).
pub fn body<'a>(batch: &'a [u8], h: &BatchHeader) -> &'a [u8] {
    &batch[HEADER_BYTES..HEADER_BYTES + h.body_length as usize]
}

/// Ingress check of a KAFKA_V2 body (called by [`crate::validate`]): the Kafka batch is
/// well formed and agrees with the Shardline header.
pub(crate) fn validate_body(batch: &[u8], h: &BatchHeader) -> Result<()> {
    let info = check(body(batch, h))?;
    if i64::from(h.record_count) != i64::from(info.record_count) {
        return corrupt("kafka batch record count differs from the header");
    }
    Ok(())
}

/// Appends the Kafka form of one checked Shardline batch (`batch`, header `h`) to `out`: a
/// Kafka-kind body as stored with its base offset set to `h.base_offset` and its leader epoch
/// to 0 (both outside Kafka's CRC); a native batch converted into an uncompressed Kafka batch.
pub fn to_kafka(batch: &[u8], h: &BatchHeader, out: &mut BytesMut) -> Result<()> {
    let base = i64::try_from(h.base_offset)
        .map_err(|_| Error::Corrupt("base offset beyond Kafka's range".into()))?;
    if h.body_kind == body_kind::KAFKA_V2 {
        let b = body(batch, h);
        let start = out.len();
        out.extend_from_slice(b);
        out[start..start + 8].copy_from_slice(&base.to_be_bytes());
        out[start + LEADER_EPOCH_AT..start + LEADER_EPOCH_AT + 4]
            .copy_from_slice(&0i32.to_be_bytes());
        return Ok(());
    }
    let (h, records) = crate::decode(batch)?;
    encode_batch(base, &h, &records, out)
}

#[cfg(test)]
mod tests;
