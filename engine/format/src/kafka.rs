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
    COMPRESSION_AT, CRC_AT, CRC_START, FIRST_TIMESTAMP_AT, FLAGS_AT, FORMAT_VERSION,
    FORMAT_VERSION_AT, FormatError as Error, HEADER_BYTES, Header, MAGIC, MAGIC_AT,
    MAX_TIMESTAMP_AT, PRODUCER_EPOCH_AT, PRODUCER_ID_AT, RECORD_COUNT_AT, Record, Result,
    ValidatedBatch, body_kind, compression, compute_crc, padded, put,
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

/// The CRC32C polynomial, bit-reflected (bit 31 is x^0).
const CRC32C_POLY: u32 = 0x82F6_3B78;

/// `a * b` modulo the CRC32C polynomial (zlib's `multmodp`); `a` must not be 0.
const fn mul_mod_p(a: u32, mut b: u32) -> u32 {
    let mut m: u32 = 1 << 31;
    let mut p: u32 = 0;
    loop {
        if a & m != 0 {
            p ^= b;
            if a & (m - 1) == 0 {
                return p;
            }
        }
        m >>= 1;
        b = if b & 1 != 0 {
            (b >> 1) ^ CRC32C_POLY
        } else {
            b >> 1
        };
    }
}

/// `x^(2^n)` modulo the polynomial, n = 0..32.
const X2N: [u32; 32] = {
    let mut t = [0u32; 32];
    let mut p: u32 = 1 << 30; // x^1
    t[0] = p;
    let mut n = 1;
    while n < 32 {
        p = mul_mod_p(p, p);
        t[n] = p;
        n += 1;
    }
    t
};

/// CRC32C of `A ++ B` from CRC32C(A), CRC32C(B) and B's length: zlib's `crc32_combine`
/// (multiply by `x^(8 * len_b)` with a table of powers: about 20 32-bit products for a 64 KiB
/// batch). The `crc32c` crate's `crc32c_combine` squares 32x32 matrices per length bit and
/// costs more than a CRC pass over 64 KiB.
pub fn crc32c_combine(crc_a: u32, crc_b: u32, len_b: usize) -> u32 {
    let mut p: u32 = 1 << 31; // x^0
    let (mut n, mut k) = (len_b, 3usize); // x^(8n): start at x^(2^3)
    while n != 0 {
        if n & 1 != 0 {
            p = mul_mod_p(X2N[k & 31], p);
        }
        n >>= 1;
        k += 1;
    }
    mul_mod_p(p, crc_a) ^ crc_b
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
        let key = r.nullable()?;
        let value = r.nullable()?;
        let header_count = r.varlong()?;
        let header_count = usize::try_from(header_count)
            .map_err(|_| Error::Corrupt("kafka negative header count".into()))?;
        // Checking only (the produce path): walk the framing without copying anything.
        let mut headers = Vec::new();
        for _ in 0..header_count {
            let k = r.nullable()?.unwrap_or_default();
            let v = r.nullable()?.unwrap_or_default();
            let key = std::str::from_utf8(k)
                .map_err(|_| Error::Corrupt("kafka header key not UTF-8".into()))?;
            if out.is_some() {
                headers.push(Header {
                    key: key.to_owned(),
                    value: v.to_vec(),
                });
            }
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
                key: key.map(<[u8]>::to_vec),
                value: value.map(<[u8]>::to_vec).unwrap_or_default(),
                headers,
            });
        }
        n += 1;
    }
    Ok(n)
}

/// The records of a Kafka-kind Shardline batch, for native readers (the conversion happens
/// only here, on their read path). Every Kafka codec: uncompressed, gzip, snappy (raw or
/// xerial-framed), lz4 (frame format) and zstd; the records section is decompressed to at most
/// [`BATCH_BYTES_MAX`] bytes (more is refused with [`Error::TooLarge`]).
pub fn records_of(batch: &[u8], h: &BatchHeader) -> Result<Vec<Record>> {
    let b = body(batch, h);
    let info = parse_header(b)?;
    let section = &b[KAFKA_HEADER_BYTES..];
    let inflated;
    let records = if info.codec() == codec::NONE {
        section
    } else {
        inflated = decompress(info.codec(), section, BATCH_BYTES_MAX)?;
        &inflated[..]
    };
    let mut out = Vec::with_capacity(usize::try_from(info.record_count).unwrap_or(0).min(4096));
    parse_records(records, &info, Some(&mut out))?;
    if out.len() != usize::try_from(info.record_count).unwrap_or(0) {
        return corrupt("kafka batch record count mismatch");
    }
    Ok(out)
}

/// Decompresses the records section `b` of a Kafka batch compressed with `codec` ([`codec`]),
/// to at most `limit` bytes: a longer output (a compression bomb) is refused with
/// [`Error::TooLarge`] once `limit` is passed, and no decoder allocates an announced size
/// before checking it against `limit`. Hostile bytes give [`Error::Corrupt`], never a panic.
pub fn decompress(codec: u8, b: &[u8], limit: usize) -> Result<Vec<u8>> {
    match codec {
        codec::NONE => {
            if b.len() > limit {
                return Err(too_large(b.len(), limit));
            }
            Ok(b.to_vec())
        }
        codec::GZIP => gunzip(b, limit),
        codec::SNAPPY => unsnappy(b, limit),
        codec::LZ4 => unlz4(b, limit),
        codec::ZSTD => unzstd(b, limit),
        c => corrupt(format!("kafka batch codec {c}")),
    }
}

fn too_large(bytes: usize, max: usize) -> Error {
    Error::TooLarge { bytes, max }
}

/// Reads `r` to its end into a vector of at most `limit` bytes; one byte more is a bomb.
fn read_bounded(r: impl std::io::Read, limit: usize, what: &str) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    r.take(cap)
        .read_to_end(&mut out)
        .map_err(|e| Error::Corrupt(format!("bad {what} stream in kafka batch: {e}")))?;
    if out.len() > limit {
        return Err(too_large(out.len(), limit));
    }
    Ok(out)
}

/// Inflates one gzip member (RFC 1952), at most `limit` bytes out.
fn gunzip(b: &[u8], limit: usize) -> Result<Vec<u8>> {
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
    miniz_oxide::inflate::decompress_to_vec_with_limit(deflate, limit).map_err(|e| {
        if e.status == miniz_oxide::inflate::TINFLStatus::HasMoreOutput {
            too_large(limit.saturating_add(1), limit)
        } else {
            bad()
        }
    })
}

/// snappy-java's (xerial) stream header: magic, then version and compatible version (i32 BE).
const XERIAL_MAGIC: &[u8; 8] = b"\x82SNAPPY\x00";
const XERIAL_HEADER_BYTES: usize = 16;

/// Snappy as Kafka clients write it: the Java client's xerial framing (header, then blocks of
/// u32 big-endian length + raw snappy), or one raw snappy block (librdkafka may write either).
fn unsnappy(b: &[u8], limit: usize) -> Result<Vec<u8>> {
    if b.len() >= XERIAL_HEADER_BYTES && b.starts_with(XERIAL_MAGIC) {
        let mut out = Vec::new();
        let mut rest = &b[XERIAL_HEADER_BYTES..];
        while !rest.is_empty() {
            let Some((len, tail)) = rest.split_first_chunk::<4>() else {
                return corrupt("truncated snappy block length in kafka batch");
            };
            let len = usize::try_from(u32::from_be_bytes(*len)).unwrap_or(usize::MAX);
            let Some(block) = tail.get(..len) else {
                return corrupt("truncated snappy block in kafka batch");
            };
            unsnappy_raw(block, limit, &mut out)?;
            rest = &tail[len..];
        }
        return Ok(out);
    }
    let mut out = Vec::new();
    unsnappy_raw(b, limit, &mut out)?;
    Ok(out)
}

/// At most this many bytes out per snappy byte in: the densest element is a 3-byte copy of 64.
const SNAPPY_MAX_EXPANSION: usize = 22;

/// Appends one raw snappy block to `out`, which may not grow past `limit` bytes. The block's
/// announced length is checked before anything is allocated: against `limit`, and against what
/// the block's bytes could at most expand to (so a few hostile bytes cannot make us allocate
/// up to `limit`).
fn unsnappy_raw(block: &[u8], limit: usize, out: &mut Vec<u8>) -> Result<()> {
    let bad = |e: snap::Error| Error::Corrupt(format!("bad snappy block in kafka batch: {e}"));
    let n = snap::raw::decompress_len(block).map_err(bad)?;
    let total = out.len().saturating_add(n);
    if total > limit {
        return Err(too_large(total, limit));
    }
    if n > block.len().saturating_mul(SNAPPY_MAX_EXPANSION) {
        return corrupt(format!(
            "snappy block of {} bytes in kafka batch announces {n}",
            block.len()
        ));
    }
    let start = out.len();
    out.resize(total, 0);
    let got = snap::raw::Decoder::new()
        .decompress(block, &mut out[start..])
        .map_err(bad)?;
    if got != n {
        return corrupt("snappy block shorter than announced in kafka batch");
    }
    Ok(())
}

/// LZ4 frame format (Kafka's lz4 for record batch v2; the "broken" header checksum of old
/// clients only applies to magic < 2). Frames are decoded block by block (blocks are at most
/// 4 MiB), the output bounded by `limit`.
fn unlz4(b: &[u8], limit: usize) -> Result<Vec<u8>> {
    read_bounded(lz4_flex::frame::FrameDecoder::new(b), limit, "lz4")
}

/// zstd: one or more frames (skippable frames skipped), output bounded by `limit`. The decoder
/// reserves the window a frame announces up front, so the window allowed is bounded too: by
/// what the input could at most expand to (a zstd block of up to 128 KiB needs at least 4 input
/// bytes) and by `limit`, but never below 8 MiB so that an encoder's default window descriptor
/// (zstd's level 3 announces 2 MiB whatever the input) is accepted for a small input.
fn unzstd(b: &[u8], limit: usize) -> Result<Vec<u8>> {
    use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
    use std::io::Read;
    const MAX_EXPANSION: u64 = 32 * 1024;
    const WINDOW_FLOOR: u64 = 8 << 20;
    let bad =
        |e: &dyn std::fmt::Display| Error::Corrupt(format!("bad zstd stream in kafka batch: {e}"));
    let limit64 = u64::try_from(limit).unwrap_or(u64::MAX);
    let input_len = u64::try_from(b.len()).unwrap_or(u64::MAX);
    let window = input_len
        .saturating_mul(MAX_EXPANSION)
        .saturating_add(128 * 1024)
        .min(limit64.max(WINDOW_FLOOR))
        .max(WINDOW_FLOOR);
    let mut decoder = ruzstd::decoding::FrameDecoder::new();
    decoder.set_max_window_size(window);
    let mut input = b;
    let mut out = Vec::new();
    while !input.is_empty() {
        let budget = limit.saturating_sub(out.len());
        let frame =
            match ruzstd::decoding::StreamingDecoder::new_with_decoder(&mut input, &mut decoder) {
                Ok(frame) => frame,
                Err(FrameDecoderError::ReadFrameHeaderError(ReadFrameHeaderError::SkipFrame {
                    length,
                    ..
                })) => {
                    let skip = usize::try_from(length).unwrap_or(usize::MAX);
                    input = input
                        .get(skip..)
                        .ok_or_else(|| bad(&"truncated skippable frame"))?;
                    continue;
                }
                Err(e) => return Err(bad(&e)),
            };
        let cap = u64::try_from(budget).unwrap_or(u64::MAX).saturating_add(1);
        frame.take(cap).read_to_end(&mut out).map_err(|e| bad(&e))?;
        if out.len() > limit {
            return Err(too_large(out.len(), limit));
        }
        if !decoder.is_finished() {
            return Err(bad(&"truncated frame"));
        }
    }
    Ok(out)
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
    fn wrapped_batches_carry_the_crc_a_full_pass_computes() {
        // Every padding length (the body length mod 16) and a producer-less batch.
        for n in 0..20usize {
            let v = vec![b'v'; n];
            let k = kafka_batch_of(&[&v, b"w"], i64::try_from(n).unwrap() - 1, 0);
            let w = wrap_validated(&k).unwrap();
            assert_eq!(w.header().crc, compute_crc(w.bytes()));
            assert_eq!(*w.header(), validate(w.bytes()).unwrap());
        }
    }

    #[test]
    fn crc_combine_matches_the_crate_and_a_full_pass() {
        let data: Vec<u8> = (0..70_000u32)
            .map(|i| (i * 7 + i / 251).to_le_bytes()[0])
            .collect();
        for split in [0, 1, 7, 21, 64, 1000, 65_535, 69_999, 70_000] {
            let (a, b) = data.split_at(split);
            let combined = crc32c_combine(crc32c::crc32c(a), crc32c::crc32c(b), b.len());
            assert_eq!(combined, crc32c::crc32c(&data), "split at {split}");
            assert_eq!(
                combined,
                crc32c::crc32c_combine(crc32c::crc32c(a), crc32c::crc32c(b), b.len())
            );
        }
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
        assert!(wrap(&bad_crc).unwrap_err().to_string().contains("crc"));
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
        // The same stream claimed as zstd is corrupt for native readers, not a panic.
        k[ATTRIBUTES_AT..ATTRIBUTES_AT + 2].copy_from_slice(&i16::from(codec::ZSTD).to_be_bytes());
        let crc = crc32c::crc32c(&k[ATTRIBUTES_AT..]);
        k[KCRC_AT..KCRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        let e = decode(&wrap(&k).unwrap()).unwrap_err();
        assert!(e.to_string().contains("zstd"), "{e}");
    }

    /// `section` (an uncompressed records section) compressed with `codec` by the same crates'
    /// encoders (snappy raw and xerial-framed, lz4 frame, zstd).
    fn compress(codec: u8, section: &[u8], xerial: bool) -> Vec<u8> {
        use std::io::Write;
        match codec {
            codec::SNAPPY if xerial => {
                // snappy-java: header, then blocks (here of at most 100 bytes, to have several).
                let mut out = XERIAL_MAGIC.to_vec();
                out.extend_from_slice(&1i32.to_be_bytes());
                out.extend_from_slice(&1i32.to_be_bytes());
                for chunk in section.chunks(100) {
                    let block = snap::raw::Encoder::new().compress_vec(chunk).unwrap();
                    out.extend_from_slice(&u32::try_from(block.len()).unwrap().to_be_bytes());
                    out.extend_from_slice(&block);
                }
                out
            }
            codec::SNAPPY => snap::raw::Encoder::new().compress_vec(section).unwrap(),
            codec::LZ4 => {
                let mut e = lz4_flex::frame::FrameEncoder::new(Vec::new());
                e.write_all(section).unwrap();
                e.finish().unwrap()
            }
            codec::ZSTD => ruzstd::encoding::compress_to_vec(
                section,
                ruzstd::encoding::CompressionLevel::Fastest,
            ),
            c => panic!("codec {c}"),
        }
    }

    /// A Kafka batch of `values` whose records section is `codec`-compressed, CRC fixed.
    fn compressed_batch(values: &[&[u8]], codec: u8, xerial: bool) -> Vec<u8> {
        let plain = kafka_batch_of(values, -1, -1);
        let mut k = plain[..KAFKA_HEADER_BYTES].to_vec();
        k.extend_from_slice(&compress(codec, &plain[KAFKA_HEADER_BYTES..], xerial));
        let len = i32::try_from(k.len() - LENGTH_END).unwrap();
        k[LENGTH_AT..LENGTH_AT + 4].copy_from_slice(&len.to_be_bytes());
        k[ATTRIBUTES_AT..ATTRIBUTES_AT + 2].copy_from_slice(&i16::from(codec).to_be_bytes());
        let crc = crc32c::crc32c(&k[ATTRIBUTES_AT..]);
        k[KCRC_AT..KCRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        k
    }

    const CODECS: [(u8, bool); 4] = [
        (codec::SNAPPY, false),
        (codec::SNAPPY, true),
        (codec::LZ4, false),
        (codec::ZSTD, false),
    ];

    #[test]
    fn snappy_lz4_zstd_kafka_batches_are_readable_by_native_readers() {
        let values: Vec<Vec<u8>> = (0..500)
            .map(|i| format!("line {i} {}", "x".repeat(i % 37)).into_bytes())
            .collect();
        let refs: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
        for (c, xerial) in CODECS {
            let k = compressed_batch(&refs, c, xerial);
            check(&k).unwrap();
            let wrapped = wrap(&k).unwrap();
            validate(&wrapped).unwrap();
            let (h, records) = decode(&wrapped).unwrap();
            assert_eq!(h.record_count, 500, "codec {c} xerial {xerial}");
            let got: Vec<&[u8]> = records.iter().map(|r| r.value.as_slice()).collect();
            assert_eq!(got, refs, "codec {c} xerial {xerial}");
            assert_eq!(records[2].key.as_deref(), Some(b"k".as_slice()));
            assert_eq!(records[3].timestamp_delta_us, 3000);
            // The Kafka fetch path still serves the bytes as sent.
            let mut out = BytesMut::new();
            to_kafka(&wrapped, &h, &mut out).unwrap();
            assert_eq!(&out[KMAGIC_AT..], &k[KMAGIC_AT..]);
        }
    }

    #[test]
    fn zstd_skippable_and_concatenated_frames_are_read() {
        let a = compress(codec::ZSTD, b"hello ", false);
        let b = compress(codec::ZSTD, b"world", false);
        let mut s = Vec::new();
        s.extend_from_slice(&0x184D_2A50u32.to_le_bytes()); // a skippable frame of 3 bytes
        s.extend_from_slice(&3u32.to_le_bytes());
        s.extend_from_slice(b"abc");
        s.extend_from_slice(&a);
        s.extend_from_slice(&b);
        assert_eq!(decompress(codec::ZSTD, &s, 1000).unwrap(), b"hello world");
    }

    #[test]
    fn compression_bombs_are_refused_with_a_typed_error() {
        let zeros = vec![0u8; 1 << 20];
        for (c, xerial) in CODECS {
            let z = compress(c, &zeros, xerial);
            assert!(z.len() < zeros.len() / 4, "codec {c}: {}", z.len());
            assert_eq!(decompress(c, &z, 1 << 20).unwrap().len(), 1 << 20);
            let e = decompress(c, &z, 4096).unwrap_err();
            assert!(
                matches!(e, Error::TooLarge { max: 4096, .. }),
                "codec {c} xerial {xerial}: {e}"
            );
        }
        let mut gz = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
        gz.extend_from_slice(&miniz_oxide::deflate::compress_to_vec(&zeros, 6));
        gz.extend_from_slice(&[0; 8]);
        assert_eq!(
            decompress(codec::GZIP, &gz, 1 << 20).unwrap().len(),
            1 << 20
        );
        let e = decompress(codec::GZIP, &gz, 4096).unwrap_err();
        assert!(matches!(e, Error::TooLarge { .. }), "{e}");
        // Raw snappy announcing 4 GiB in a few bytes: refused on the announcement, before any
        // allocation, through the native read path (limit BATCH_BYTES_MAX) too.
        let announced = [0xff, 0xff, 0xff, 0xff, 0x0f, 0, 0];
        let e = decompress(codec::SNAPPY, &announced, BATCH_BYTES_MAX).unwrap_err();
        assert!(matches!(e, Error::TooLarge { .. }), "{e}");
        // The same in xerial framing, and split over blocks that each fit but add up past it.
        let block = snap::raw::Encoder::new().compress_vec(&zeros).unwrap();
        let mut x = XERIAL_MAGIC.to_vec();
        x.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1]);
        for _ in 0..5 {
            x.extend_from_slice(&u32::try_from(block.len()).unwrap().to_be_bytes());
            x.extend_from_slice(&block);
        }
        let e = decompress(codec::SNAPPY, &x, 4 << 20).unwrap_err();
        assert!(matches!(e, Error::TooLarge { .. }), "{e}");
        // A few bytes announcing 1 MiB (within the limit) are refused before allocating it.
        let e = decompress(codec::SNAPPY, &[0x80, 0x80, 0x40, 0, 0], 4 << 20).unwrap_err();
        assert!(e.to_string().contains("announces"), "{e}");
        // A zstd frame announcing a window far beyond what its bytes could expand to.
        let mut frame = 0xFD2F_B528u32.to_le_bytes().to_vec();
        frame.extend_from_slice(&[0x00, 0xF8]); // no content size, window descriptor 2^41
        frame.extend_from_slice(&[1, 0, 0]); // one last raw block of 0 bytes
        let e = decompress(codec::ZSTD, &frame, BATCH_BYTES_MAX).unwrap_err();
        assert!(matches!(e, Error::Corrupt(_)), "{e}");
    }

    #[test]
    fn truncated_and_garbage_compressed_sections_are_errors() {
        let section =
            kafka_batch_of(&[b"one", b"two", b"three"], -1, -1)[KAFKA_HEADER_BYTES..].to_vec();
        for (c, xerial) in CODECS {
            let z = compress(c, &section, xerial);
            assert_eq!(decompress(c, &z, BATCH_BYTES_MAX).unwrap(), section);
            // (Not the last byte for lz4: lz4_flex takes a stream cut inside its end mark as
            // complete, every block being there; the record count check would still apply.)
            for cut in [1, z.len() / 2, z.len() - 5] {
                assert!(
                    decompress(c, &z[..cut], BATCH_BYTES_MAX)
                        .is_err_and(|e| matches!(e, Error::Corrupt(_))),
                    "codec {c} xerial {xerial} cut at {cut} of {}",
                    z.len()
                );
            }
            assert!(decompress(c, b"definitely not compressed", BATCH_BYTES_MAX).is_err());
        }
        // A batch whose compressed section is garbage: the native reader gets an error.
        let mut k = compressed_batch(&[b"a", b"b"], codec::LZ4, false);
        let end = k.len() - 1;
        k[end] ^= 0x55;
        let crc = crc32c::crc32c(&k[ATTRIBUTES_AT..]);
        k[KCRC_AT..KCRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        assert!(decode(&wrap(&k).unwrap()).is_err());
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

        #[test]
        fn arbitrary_compressed_bytes_never_panic(
            c in 1u8..=4,
            v in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
        ) {
            let _ = decompress(c, &v, 1 << 20);
            // The same bytes behind each codec's magic, so the decoders get past their headers.
            let mut x = XERIAL_MAGIC.to_vec();
            x.extend_from_slice(&v);
            let _ = decompress(codec::SNAPPY, &x, 1 << 20);
            let mut z = 0xFD2F_B528u32.to_le_bytes().to_vec();
            z.extend_from_slice(&v);
            let _ = decompress(codec::ZSTD, &z, 1 << 20);
            let mut l = 0x184D_2204u32.to_le_bytes().to_vec();
            l.extend_from_slice(&v);
            let _ = decompress(codec::LZ4, &l, 1 << 20);
        }

        #[test]
        fn corrupted_compressed_sections_never_panic(
            which in 0usize..4,
            flips in proptest::collection::vec((proptest::prelude::any::<usize>(), 1u8..=255), 1..8),
            cut in proptest::prelude::any::<usize>(),
        ) {
            let (c, xerial) = CODECS[which];
            let section = kafka_batch_of(&[b"one", b"two", b"three", b"four"], -1, -1);
            let mut z = compress(c, &section[KAFKA_HEADER_BYTES..], xerial);
            for (at, x) in flips {
                let n = z.len();
                z[at % n] ^= x;
            }
            let cut = cut % (z.len() + 1);
            let _ = decompress(c, &z[..cut], 1 << 20);
            let _ = decompress(c, &z, 1 << 20);
        }
    }
}
