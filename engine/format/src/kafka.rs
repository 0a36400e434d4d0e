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

use bytes::{BufMut, Bytes, BytesMut};

use crate::{
    BASE_SEQUENCE_AT, BATCH_BYTES_MAX, BATCH_LENGTH_AT, BODY_KIND_AT, BODY_LENGTH_AT, BatchHeader,
    COMPRESSION_AT, CRC_AT, FIRST_TIMESTAMP_AT, FLAGS_AT, FORMAT_VERSION, FORMAT_VERSION_AT,
    FormatError as Error, HEADER_BYTES, Header, MAGIC, MAGIC_AT, MAX_TIMESTAMP_AT,
    PRODUCER_EPOCH_AT, PRODUCER_ID_AT, RECORD_COUNT_AT, Record, Result, body_kind, compression,
    compute_crc, padded, put,
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
/// kind [`body_kind::KAFKA_V2`]. One copy (into the aligned buffer). Only the header is read
/// here (magic, length, counts): the Kafka CRC32C and the records are checked once, by
/// [`crate::validate`], which the engine runs on every produced batch.
pub fn wrap(kafka: &[u8]) -> Result<Bytes> {
    let info = parse_header(kafka)?;
    if info.total_bytes != kafka.len() {
        return corrupt(format!(
            "kafka batch length {} but {} bytes given",
            info.total_bytes,
            kafka.len()
        ));
    }
    if info.record_count <= 0 {
        return corrupt("empty kafka batch");
    }
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
    let crc = compute_crc(&buf);
    put(&mut buf, CRC_AT, &crc.to_le_bytes());
    Ok(buf.freeze())
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

/// Encodes `records` as one uncompressed Kafka v2 batch (producer -1, create-time stamps).
fn encode_batch(
    base_offset: i64,
    h: &BatchHeader,
    records: &[Record],
    out: &mut BytesMut,
) -> Result<()> {
    let start = out.len();
    let base_ms = h.first_timestamp_us.div_euclid(1000);
    let max_ms = h.max_timestamp_us.div_euclid(1000);
    out.put_i64(base_offset);
    out.put_i32(0); // length, patched below
    out.put_i32(0); // leader epoch
    out.put_i8(KAFKA_MAGIC);
    out.put_u32(0); // crc, patched below
    out.put_i16(0); // attributes
    let last = i32::try_from(records.len().saturating_sub(1))
        .map_err(|_| Error::Corrupt("too many records".into()))?;
    out.put_i32(last);
    out.put_i64(base_ms);
    out.put_i64(max_ms);
    out.put_i64(-1);
    out.put_i16(-1);
    out.put_i32(-1);
    out.put_i32(last + 1);
    let mut rec = Vec::new();
    for (i, r) in records.iter().enumerate() {
        rec.clear();
        rec.push(0u8);
        let ts_ms = h
            .first_timestamp_us
            .wrapping_add(r.timestamp_delta_us as i64)
            .div_euclid(1000);
        put_varlong(&mut rec, ts_ms - base_ms);
        put_varlong(&mut rec, i64::try_from(i).unwrap_or(i64::MAX));
        match &r.key {
            Some(k) => put_bytes(&mut rec, k),
            None => put_varlong(&mut rec, -1),
        }
        put_bytes(&mut rec, &r.value);
        put_varlong(&mut rec, i64::try_from(r.headers.len()).unwrap_or(0));
        for hd in &r.headers {
            put_bytes(&mut rec, hd.key.as_bytes());
            put_bytes(&mut rec, &hd.value);
        }
        let mut len = Vec::with_capacity(5);
        put_varlong(&mut len, i64::try_from(rec.len()).unwrap_or(0));
        out.extend_from_slice(&len);
        out.extend_from_slice(&rec);
    }
    let length = i32::try_from(out.len() - start - LENGTH_END)
        .map_err(|_| Error::Corrupt("kafka batch too large".into()))?;
    out[start + LENGTH_AT..start + LENGTH_AT + 4].copy_from_slice(&length.to_be_bytes());
    let crc = crc32c::crc32c(&out[start + ATTRIBUTES_AT..]);
    out[start + KCRC_AT..start + KCRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    Ok(())
}

fn put_varlong(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        #[allow(clippy::cast_possible_truncation, reason = "low 7 bits")]
        out.push((z as u8 & 0x7f) | 0x80);
        z >>= 7;
    }
    #[allow(clippy::cast_possible_truncation, reason = "z < 0x80")]
    out.push(z as u8);
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_varlong(out, i64::try_from(b.len()).unwrap_or(0));
    out.extend_from_slice(b);
}

/// A cursor over Kafka's varint-encoded records.
struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn varlong(&mut self) -> Result<i64> {
        let mut z: u64 = 0;
        for i in 0..10 {
            let Some(&byte) = self.b.get(self.at) else {
                return corrupt("kafka record truncated");
            };
            self.at += 1;
            z |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(((z >> 1) as i64) ^ -((z & 1) as i64));
            }
        }
        corrupt("kafka varint too long")
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .at
            .checked_add(n)
            .filter(|e| *e <= self.b.len())
            .ok_or_else(|| Error::Corrupt("kafka record truncated".into()))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }

    /// A length-prefixed field: `None` for length -1.
    fn nullable(&mut self) -> Result<Option<&'a [u8]>> {
        let n = self.varlong()?;
        if n == -1 {
            return Ok(None);
        }
        let n = usize::try_from(n).map_err(|_| Error::Corrupt("kafka negative length".into()))?;
        self.take(n).map(Some)
    }
}

/// Walks uncompressed records; pushes them into `out` when given. Returns how many there are.
fn parse_records(
    section: &[u8],
    info: &KafkaBatchInfo,
    mut out: Option<&mut Vec<Record>>,
) -> Result<usize> {
    let mut c = Cursor { b: section, at: 0 };
    let mut n = 0usize;
    while c.at < section.len() {
        let len = usize::try_from(c.varlong()?)
            .map_err(|_| Error::Corrupt("kafka negative record length".into()))?;
        let rb = c.take(len)?;
        let mut r = Cursor { b: rb, at: 0 };
        r.take(1)?;
        let ts_delta_ms = r.varlong()?;
        let offset_delta = r.varlong()?;
        if offset_delta != i64::try_from(n).unwrap_or(-1) {
            return corrupt(format!("kafka record {n} has offset delta {offset_delta}"));
        }
        let key = r.nullable()?.map(<[u8]>::to_vec);
        let value = r.nullable()?.map(<[u8]>::to_vec).unwrap_or_default();
        let header_count = r.varlong()?;
        let header_count = usize::try_from(header_count)
            .map_err(|_| Error::Corrupt("kafka negative header count".into()))?;
        let mut headers = Vec::new();
        for _ in 0..header_count {
            let k = r.nullable()?.unwrap_or_default();
            let v = r.nullable()?.unwrap_or_default().to_vec();
            let key = String::from_utf8(k.to_vec())
                .map_err(|_| Error::Corrupt("kafka header key not UTF-8".into()))?;
            headers.push(Header { key, value: v });
        }
        if r.at != rb.len() {
            return corrupt(format!("kafka record {n} has trailing bytes"));
        }
        if let Some(out) = out.as_deref_mut() {
            let ts_us = ms_to_us(info.base_timestamp_ms.saturating_add(ts_delta_ms));
            let first_us = ms_to_us(info.base_timestamp_ms);
            out.push(Record {
                offset_delta: u32::try_from(n).unwrap_or(u32::MAX),
                timestamp_delta_us: ts_us.wrapping_sub(first_us).max(0) as u64,
                key,
                value,
                headers,
            });
        }
        n += 1;
    }
    Ok(n)
}

/// The records of a Kafka-kind Shardline batch, for native readers (the conversion happens
/// only here, on their read path). Uncompressed and gzip batches; snappy, lz4 and zstd ones
/// are refused with a typed error naming the codec (Kafka readers get them as stored).
pub fn records_of(batch: &[u8], h: &BatchHeader) -> Result<Vec<Record>> {
    let b = body(batch, h);
    let info = parse_header(b)?;
    let section = &b[KAFKA_HEADER_BYTES..];
    let inflated;
    let records = match info.codec() {
        codec::NONE => section,
        codec::GZIP => {
            inflated = gunzip(section)?;
            &inflated[..]
        }
        c => {
            return Err(Error::InvalidArgument(format!(
                "kafka batch compressed with codec {c}: read it through the Kafka listener"
            )));
        }
    };
    let mut out = Vec::with_capacity(usize::try_from(info.record_count).unwrap_or(0));
    parse_records(records, &info, Some(&mut out))?;
    if out.len() != usize::try_from(info.record_count).unwrap_or(0) {
        return corrupt("kafka batch record count mismatch");
    }
    Ok(out)
}

/// Inflates one gzip member (RFC 1952), at most [`BATCH_BYTES_MAX`] bytes out.
fn gunzip(b: &[u8]) -> Result<Vec<u8>> {
    const FHCRC: u8 = 2;
    const FEXTRA: u8 = 4;
    const FNAME: u8 = 8;
    const FCOMMENT: u8 = 16;
    let bad = || Error::Corrupt("bad gzip stream in kafka batch".into());
    if b.len() < 18 || b[0] != 0x1f || b[1] != 0x8b || b[2] != 8 {
        return Err(bad());
    }
    let flags = b[3];
    let mut at = 10usize;
    if flags & FEXTRA != 0 {
        let n = usize::from(u16::from_le_bytes([
            *b.get(at).ok_or_else(bad)?,
            *b.get(at + 1).ok_or_else(bad)?,
        ]));
        at += 2 + n;
    }
    for flag in [FNAME, FCOMMENT] {
        if flags & flag != 0 {
            let end = b
                .get(at..)
                .ok_or_else(bad)?
                .iter()
                .position(|c| *c == 0)
                .ok_or_else(bad)?;
            at += end + 1;
        }
    }
    if flags & FHCRC != 0 {
        at += 2;
    }
    let deflate = b.get(at..).ok_or_else(bad)?;
    miniz_oxide::inflate::decompress_to_vec_with_limit(deflate, BATCH_BYTES_MAX).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BatchBuilder, decode, validate};

    fn kafka_batch_of(values: &[&[u8]], producer_id: i64, sequence: i32) -> Vec<u8> {
        let mut b = BatchBuilder::new();
        for (i, v) in values.iter().enumerate() {
            b.push(
                1_700_000_000_000_000 + i64::try_from(i).unwrap() * 1000,
                (i % 2 == 0).then(|| b"k".to_vec()),
                v.to_vec(),
                vec![Header {
                    key: "h".into(),
                    value: b"x".to_vec(),
                }],
            );
        }
        let native = b.build().unwrap();
        let (h, records) = decode(&native).unwrap();
        let mut out = BytesMut::new();
        encode_batch(0, &h, &records, &mut out).unwrap();
        // Set the producer fields as an idempotent Kafka client would, and fix the CRC.
        out[43..51].copy_from_slice(&producer_id.to_be_bytes());
        out[51..53].copy_from_slice(&0i16.to_be_bytes());
        out[53..57].copy_from_slice(&sequence.to_be_bytes());
        let crc = crc32c::crc32c(&out[ATTRIBUTES_AT..]);
        out[KCRC_AT..KCRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        out.to_vec()
    }

    #[test]
    fn kafka_batch_wraps_validates_and_converts_for_native_readers() {
        let k = kafka_batch_of(&[b"a", b"bb", b"ccc"], 0, 5);
        check(&k).unwrap();
        let wrapped = wrap(&k).unwrap();
        let h = validate(&wrapped).unwrap();
        assert_eq!(h.body_kind, body_kind::KAFKA_V2);
        assert_eq!(h.record_count, 3);
        assert_eq!(
            h.producer.producer_id, 1,
            "kafka producer id 0 is stored as 1"
        );
        assert_eq!(h.producer.base_sequence, 5);
        assert_eq!(h.first_timestamp_us, 1_700_000_000_000_000);
        let (_, records) = decode(&wrapped).unwrap();
        let values: Vec<&[u8]> = records.iter().map(|r| r.value.as_slice()).collect();
        assert_eq!(values, [b"a".as_slice(), b"bb", b"ccc"]);
        assert_eq!(records[0].key.as_deref(), Some(b"k".as_slice()));
        assert_eq!(records[1].key, None);
        assert_eq!(records[2].timestamp_delta_us, 2000);
        assert_eq!(records[1].headers[0].key, "h");
    }

    #[test]
    fn kafka_fetch_serves_stored_bytes_with_only_the_base_offset_patched() {
        let k = kafka_batch_of(&[b"x", b"y"], -1, -1);
        let mut wrapped = wrap(&k).unwrap().to_vec();
        crate::set_base_offset(&mut wrapped, 1234);
        let h = crate::check_crc(&wrapped).unwrap();
        assert_eq!(h.producer.producer_id, 0);
        let mut out = BytesMut::new();
        to_kafka(&wrapped, &h, &mut out).unwrap();
        assert_eq!(out.len(), k.len());
        assert_eq!(be_i64(&out, 0), 1234);
        assert_eq!(&out[LENGTH_AT..12], &k[LENGTH_AT..12]);
        assert_eq!(
            &out[KMAGIC_AT..],
            &k[KMAGIC_AT..],
            "everything from the magic on is as sent"
        );
        check(&out).unwrap();
    }

    #[test]
    fn native_batch_becomes_a_valid_kafka_batch() {
        let mut b = BatchBuilder::new();
        b.push(5_000_000, None, b"one".to_vec(), Vec::new());
        b.push(
            6_000_000,
            Some(b"key".to_vec()),
            b"two".to_vec(),
            Vec::new(),
        );
        let mut native = b.build().unwrap().to_vec();
        crate::set_base_offset(&mut native, 40);
        let h = crate::check_crc(&native).unwrap();
        let mut out = BytesMut::new();
        to_kafka(&native, &h, &mut out).unwrap();
        let info = check(&out).unwrap();
        assert_eq!(info.base_offset, 40);
        assert_eq!(info.record_count, 2);
        assert_eq!(info.base_timestamp_ms, 5000);
        assert_eq!(info.max_timestamp_ms, 6000);
        // Round trip through the Kafka kind back to records.
        let back = wrap(&out).unwrap();
        let (_, records) = decode(&back).unwrap();
        assert_eq!(records[1].value, b"two");
        assert_eq!(records[1].key.as_deref(), Some(b"key".as_slice()));
        assert_eq!(records[1].timestamp_delta_us, 1_000_000);
    }

    #[test]
    fn bad_kafka_batches_are_refused() {
        let k = kafka_batch_of(&[b"a"], -1, -1);
        let mut bad_crc = k.clone();
        let last = bad_crc.len() - 1;
        bad_crc[last] ^= 1;
        let wrapped = wrap(&bad_crc).unwrap();
        assert!(validate(&wrapped).unwrap_err().to_string().contains("crc"));
        let mut bad_magic = k.clone();
        bad_magic[KMAGIC_AT] = 1;
        assert!(wrap(&bad_magic).is_err());
        assert!(wrap(&k[..k.len() - 1]).is_err());
        assert!(wrap(&k[..30]).is_err());
        // Record count not dense: refused even with a correct CRC.
        let mut bad_count = k.clone();
        bad_count[57..61].copy_from_slice(&2i32.to_be_bytes());
        let crc = crc32c::crc32c(&bad_count[ATTRIBUTES_AT..]);
        bad_count[KCRC_AT..KCRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        assert!(wrap(&bad_count).and_then(|w| validate(&w)).is_err());
        assert!(check(&bad_count).is_err());
    }

    #[test]
    fn gzip_kafka_batches_are_readable_by_native_readers() {
        // An uncompressed batch's records section, gzip-wrapped with a stored deflate block.
        let plain = kafka_batch_of(&[b"one", b"two"], -1, -1);
        let section = &plain[KAFKA_HEADER_BYTES..];
        let mut gz = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
        gz.push(1); // final stored block
        let n = u16::try_from(section.len()).unwrap();
        gz.extend_from_slice(&n.to_le_bytes());
        gz.extend_from_slice(&(!n).to_le_bytes());
        gz.extend_from_slice(section);
        gz.extend_from_slice(&[0; 8]); // crc32 and size, not checked
        let mut k = plain[..KAFKA_HEADER_BYTES].to_vec();
        k.extend_from_slice(&gz);
        let len = i32::try_from(k.len() - LENGTH_END).unwrap();
        k[LENGTH_AT..LENGTH_AT + 4].copy_from_slice(&len.to_be_bytes());
        k[ATTRIBUTES_AT..ATTRIBUTES_AT + 2].copy_from_slice(&i16::from(codec::GZIP).to_be_bytes());
        let crc = crc32c::crc32c(&k[ATTRIBUTES_AT..]);
        k[KCRC_AT..KCRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        let (_, records) = decode(&wrap(&k).unwrap()).unwrap();
        assert_eq!(records[1].value, b"two");
        // A zstd batch is refused with a typed error for native readers.
        k[ATTRIBUTES_AT..ATTRIBUTES_AT + 2].copy_from_slice(&i16::from(codec::ZSTD).to_be_bytes());
        let crc = crc32c::crc32c(&k[ATTRIBUTES_AT..]);
        k[KCRC_AT..KCRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        let e = decode(&wrap(&k).unwrap()).unwrap_err();
        assert!(e.to_string().contains("codec 4"), "{e}");
    }

    #[test]
    fn producer_ids_map_without_colliding_with_none() {
        assert_eq!(producer_to_shardline(-1), 0);
        assert_eq!(producer_to_shardline(0), 1);
        assert_eq!(producer_to_kafka(producer_to_shardline(0)), 0);
        assert_eq!(producer_to_kafka(producer_to_shardline(77)), 77);
        assert_eq!(producer_to_kafka(0), -1);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_kafka_bytes_never_panic(v in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            if let Ok(w) = wrap(&v) {
                let _ = validate(&w);
                let _ = decode(&w);
            }
            let _ = check(&v);
        }
    }
}
