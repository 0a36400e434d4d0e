//! `shardline-format`: the record batch, the unit on the wire, on disk and in the cache (docs/storage.md, "Record batch").
//!
//! ```text
//!  0       8            12     16      18  19    20         24          28       32
//!  +-------+------------+------+-------+---+-----+----------+-----------+--------+
//!  | base  | batch      | crc  | magic |ver|flags| record   | body      | key_id |
//!  | offset| length u32 | u32  | u16   |u8 | u8  | count u32| length u32| u32    |
//!  +-------+------------+------+-------+---+-----+----------+-----------+--------+
//!  32                 40                48             56      58     60        64
//!  | first_timestamp  | max_timestamp   | producer_id  | epoch | rsvd | base    |
//!  | _us i64          | _us i64         | u64          | u16   | u16  | seq u32 |
//!  +------------------+-----------------+--------------+-------+------+---------+
//!  64: rkyv archive of Vec<Record> (body_length bytes), then zero padding to a multiple of 16.
//! ```
//! All integers little-endian. The CRC32C covers bytes `[16, batch_length)`: everything but the
//! base offset, the length and the CRC itself, so that the broker assigns offsets by patching
//! eight bytes without recomputing the checksum (Kafka makes the same choice). The base offset is
//! still checked on every read: recovery and fetch require it to continue the log contiguously.

use bytes::Bytes;
use rkyv::{Archive, Deserialize, Serialize, rancor, util::AlignedVec};

/// What can be wrong with a batch or a batch being built. The engine and the protocol convert it
/// into their own error types (`From`); the text never carries addresses (rkyv's check errors are
/// reduced to their kind).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// Bytes that are not a valid batch.
    #[error("corrupt record batch: {0}")]
    Corrupt(String),
    /// A batch the builder refuses to encode.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("batch of {bytes} bytes exceeds the limit of {max}")]
    TooLarge { bytes: usize, max: usize },
}

pub type Result<T, E = FormatError> = std::result::Result<T, E>;
use FormatError as Error;

/// Size of the fixed batch header.
pub const HEADER_BYTES: usize = 64;
const _: () = assert!(HEADER_BYTES.is_multiple_of(16));
/// Batches (and so rkyv bodies) start at 16-byte boundaries on the wire, on disk and in memory.
pub const BATCH_ALIGN: usize = 16;
/// `"SL"` little-endian.
pub const MAGIC: u16 = 0x4C53;
/// Current format version; a reader refuses any other.
pub const FORMAT_VERSION: u8 = 1;
/// Hard upper bound of one batch; configuration may lower it, never raise it.
pub const BATCH_BYTES_MAX: usize = 64 << 20;
/// Bytes covered by the CRC start here.
const CRC_START: usize = 16;

/// Flag bits; the only ones a version-1 reader accepts.
pub mod flags {
    /// The body is sealed (AES-256-GCM, see docs/operations.md); not rkyv-validated on ingress.
    pub const ENCRYPTED: u8 = 1 << 3;
    /// Every bit a version-1 reader understands.
    pub const KNOWN: u8 = ENCRYPTED;
}

/// One message. `offset_delta` equals the record's index in the batch (offsets are dense);
/// the timestamp is `first_timestamp_us + timestamp_delta_us`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct Record {
    pub offset_delta: u32,
    pub timestamp_delta_us: u64,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: Vec<Header>,
}

/// A message header, as in Kafka: a UTF-8 name and opaque bytes.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Header {
    pub key: String,
    pub value: Vec<u8>,
}

/// Producer identity carried in the header (idempotent producers; 0 = none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProducerInfo {
    pub producer_id: u64,
    pub producer_epoch: u16,
    pub base_sequence: u32,
}

/// Decoded fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: u64,
    pub batch_length: u32,
    pub crc: u32,
    pub magic: u16,
    pub format_version: u8,
    pub flags: u8,
    pub record_count: u32,
    pub body_length: u32,
    pub key_id: u32,
    pub first_timestamp_us: i64,
    pub max_timestamp_us: i64,
    pub producer: ProducerInfo,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Rounds `n` up to the batch alignment.
pub const fn padded(n: usize) -> usize {
    n.div_ceil(BATCH_ALIGN) * BATCH_ALIGN
}

impl BatchHeader {
    /// Parses the fixed header; checks only what needs no body (magic, version, lengths).
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        if bytes.len() < HEADER_BYTES {
            return Err(Error::Corrupt(format!(
                "header needs {HEADER_BYTES} bytes, got {}",
                bytes.len()
            )));
        }
        let h = BatchHeader {
            base_offset: u64_at(bytes, 0),
            batch_length: u32_at(bytes, 8),
            crc: u32_at(bytes, 12),
            magic: u16_at(bytes, 16),
            format_version: bytes[18],
            flags: bytes[19],
            record_count: u32_at(bytes, 20),
            body_length: u32_at(bytes, 24),
            key_id: u32_at(bytes, 28),
            first_timestamp_us: u64_at(bytes, 32) as i64,
            max_timestamp_us: u64_at(bytes, 40) as i64,
            producer: ProducerInfo {
                producer_id: u64_at(bytes, 48),
                producer_epoch: u16_at(bytes, 56),
                base_sequence: u32_at(bytes, 60),
            },
        };
        h.check_shape()?;
        Ok(h)
    }

    fn check_shape(&self) -> Result<()> {
        let corrupt = |m: String| Err(Error::Corrupt(m));
        if self.magic != MAGIC {
            return corrupt(format!("bad magic {:#06x}", self.magic));
        }
        if self.format_version != FORMAT_VERSION {
            return corrupt(format!(
                "unsupported format version {}",
                self.format_version
            ));
        }
        if self.flags & !flags::KNOWN != 0 {
            return corrupt(format!("unknown flags {:#04x}", self.flags));
        }
        let len = self.batch_length as usize;
        if len > BATCH_BYTES_MAX || !len.is_multiple_of(BATCH_ALIGN) {
            return corrupt(format!(
                "batch length {len} not a multiple of 16 up to 64 MiB"
            ));
        }
        if len != padded(HEADER_BYTES + self.body_length as usize) {
            return corrupt(format!(
                "batch length {len} does not match body length {}",
                self.body_length
            ));
        }
        if self.record_count == 0 {
            return corrupt("empty batch".into());
        }
        if self.max_timestamp_us < self.first_timestamp_us {
            return corrupt("max timestamp below first timestamp".into());
        }
        Ok(())
    }

    /// Offset of the last record.
    pub fn last_offset(&self) -> u64 {
        self.base_offset + u64::from(self.record_count) - 1
    }

    /// Offset the next batch in the log must start at.
    pub fn next_offset(&self) -> u64 {
        self.base_offset + u64::from(self.record_count)
    }
}

/// CRC32C of the checksummed region of a complete batch.
pub fn compute_crc(batch: &[u8]) -> u32 {
    crc32c::crc32c(&batch[CRC_START..])
}

/// Overwrites the base offset of a batch in place (not covered by the CRC).
pub fn set_base_offset(batch: &mut [u8], base_offset: u64) {
    batch[0..8].copy_from_slice(&base_offset.to_le_bytes());
}

/// Checks header and CRC of `bytes`, which must hold exactly one batch. Used on reads from disk,
/// where the body was validated on ingress and the CRC proves it has not changed since.
pub fn check_crc(bytes: &[u8]) -> Result<BatchHeader> {
    let h = BatchHeader::parse(bytes)?;
    if bytes.len() != h.batch_length as usize {
        return Err(Error::Corrupt(format!(
            "batch length {} but {} bytes given",
            h.batch_length,
            bytes.len()
        )));
    }
    let crc = compute_crc(bytes);
    if crc != h.crc {
        return Err(Error::Corrupt(format!(
            "crc mismatch: header {:#010x}, computed {crc:#010x}",
            h.crc
        )));
    }
    Ok(h)
}

/// Full ingress validation of untrusted bytes: header, CRC, then the rkyv structure (bytecheck)
/// and the record invariants (count, dense offset deltas, timestamps within the header's range).
/// Encrypted bodies are opaque and are checked by header and CRC only.
pub fn validate(bytes: &[u8]) -> Result<BatchHeader> {
    let h = check_crc(bytes)?;
    if h.flags & flags::ENCRYPTED != 0 {
        return Ok(h);
    }
    with_records(bytes, &h, |records| check_records(&h, records))?;
    Ok(h)
}

fn check_records(h: &BatchHeader, records: &[ArchivedRecord]) -> Result<()> {
    if records.len() != h.record_count as usize {
        return Err(Error::Corrupt(format!(
            "header says {} records, body has {}",
            h.record_count,
            records.len()
        )));
    }
    let span = h.max_timestamp_us.wrapping_sub(h.first_timestamp_us) as u64;
    for (i, r) in records.iter().enumerate() {
        if r.offset_delta.to_native() as usize != i {
            return Err(Error::Corrupt(format!(
                "record {i} has offset delta {}",
                r.offset_delta
            )));
        }
        if r.timestamp_delta_us.to_native() > span {
            return Err(Error::Corrupt(format!(
                "record {i} timestamp beyond max timestamp"
            )));
        }
    }
    Ok(())
}

/// Gives `f` zero-copy access to the records of a validated-shape batch. The body is accessed in
/// place when it is 16-aligned in memory (always for buffers from this crate); otherwise it is
/// copied once into an aligned buffer first.
pub fn with_records<T, E: From<FormatError>>(
    bytes: &[u8],
    h: &BatchHeader,
    f: impl FnOnce(&[ArchivedRecord]) -> Result<T, E>,
) -> Result<T, E> {
    let body = &bytes[HEADER_BYTES..HEADER_BYTES + h.body_length as usize];
    let access = |body: &[u8]| -> Result<T, E> {
        let v = rkyv::access::<rkyv::Archived<Vec<Record>>, rancor::BoxedError>(body)
            .map_err(|_| E::from(Error::Corrupt("invalid record body".into())))?;
        f(v.as_slice())
    };
    if (body.as_ptr() as usize).is_multiple_of(BATCH_ALIGN) {
        access(body)
    } else {
        let mut aligned = AlignedVec::<16>::with_capacity(body.len());
        aligned.extend_from_slice(body);
        access(&aligned)
    }
}

/// Decodes every record into owned values (tests, CLI, slow paths).
pub fn decode(bytes: &[u8]) -> Result<(BatchHeader, Vec<Record>)> {
    let h = validate(bytes)?;
    if h.flags & flags::ENCRYPTED != 0 {
        return Err(Error::Corrupt("cannot decode a sealed batch".into()));
    }
    let records = with_records(bytes, &h, |rs| {
        rs.iter()
            .map(|r| {
                rkyv::deserialize::<Record, rancor::BoxedError>(r)
                    .map_err(|e| Error::Corrupt(format!("record decode: {e}")))
            })
            .collect()
    })?;
    Ok((h, records))
}

/// Splits a buffer holding consecutive batches (as returned by fetch) into batch slices,
/// checking each header's shape. Stops with an error at the first malformed header.
pub fn split_batches(mut bytes: &[u8]) -> Result<Vec<&[u8]>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let h = BatchHeader::parse(bytes)?;
        let len = h.batch_length as usize;
        if len > bytes.len() {
            return Err(Error::Corrupt(format!("batch of {len} bytes truncated")));
        }
        out.push(&bytes[..len]);
        bytes = &bytes[len..];
    }
    Ok(out)
}

/// Builds a batch from records; the producer side of the format.
#[derive(Debug, Default)]
pub struct BatchBuilder {
    records: Vec<Record>,
    timestamps_us: Vec<i64>,
    producer: ProducerInfo,
    bytes_estimate: usize,
}

impl BatchBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets idempotent-producer identity and the sequence number of the first record.
    pub fn producer(mut self, producer: ProducerInfo) -> Self {
        self.producer = producer;
        self
    }

    /// Appends a record with the given timestamp (microseconds since the Unix epoch).
    pub fn push(
        &mut self,
        timestamp_us: i64,
        key: Option<Vec<u8>>,
        value: Vec<u8>,
        headers: Vec<Header>,
    ) -> &mut Self {
        self.bytes_estimate += 48
            + key.as_ref().map_or(0, Vec::len)
            + value.len()
            + headers
                .iter()
                .map(|h| h.key.len() + h.value.len() + 16)
                .sum::<usize>();
        self.records.push(Record {
            offset_delta: 0,
            timestamp_delta_us: 0,
            key,
            value,
            headers,
        });
        self.timestamps_us.push(timestamp_us);
        self
    }

    /// Appends a value with the current time and no key.
    pub fn push_value(&mut self, value: impl Into<Vec<u8>>) -> &mut Self {
        self.push(now_us(), None, value.into(), Vec::new())
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Rough encoded size, for producers that cap batch bytes.
    pub fn bytes_estimate(&self) -> usize {
        HEADER_BYTES + self.bytes_estimate
    }

    /// Encodes the batch with base offset 0 (the broker assigns the real one).
    pub fn build(mut self) -> Result<Bytes> {
        if self.records.is_empty() {
            return Err(Error::InvalidArgument(
                "a batch needs at least one record".into(),
            ));
        }
        let count = u32::try_from(self.records.len())
            .map_err(|_| Error::InvalidArgument("too many records in one batch".into()))?;
        let first = self.timestamps_us.iter().copied().min().unwrap_or(0);
        let max = self.timestamps_us.iter().copied().max().unwrap_or(0);
        for (i, (r, ts)) in self.records.iter_mut().zip(&self.timestamps_us).enumerate() {
            r.offset_delta = i as u32;
            r.timestamp_delta_us = ts.wrapping_sub(first) as u64;
        }
        let mut buf = AlignedVec::<16>::with_capacity(padded(self.bytes_estimate()));
        buf.extend_from_slice(&[0u8; HEADER_BYTES]);
        let mut buf = rkyv::api::high::to_bytes_in::<_, rancor::BoxedError>(&self.records, buf)
            .map_err(|e| Error::InvalidArgument(format!("record encode: {e}")))?;
        let body_length = buf.len() - HEADER_BYTES;
        let total = padded(buf.len());
        if total > BATCH_BYTES_MAX {
            return Err(Error::TooLarge {
                bytes: total,
                max: BATCH_BYTES_MAX,
            });
        }
        buf.resize(total, 0);
        let p = self.producer;
        let h = &mut buf[..HEADER_BYTES];
        h[8..12].copy_from_slice(&(total as u32).to_le_bytes());
        h[16..18].copy_from_slice(&MAGIC.to_le_bytes());
        h[18] = FORMAT_VERSION;
        h[19] = 0;
        h[20..24].copy_from_slice(&count.to_le_bytes());
        h[24..28].copy_from_slice(&(body_length as u32).to_le_bytes());
        h[32..40].copy_from_slice(&first.to_le_bytes());
        h[40..48].copy_from_slice(&max.to_le_bytes());
        h[48..56].copy_from_slice(&p.producer_id.to_le_bytes());
        h[56..58].copy_from_slice(&p.producer_epoch.to_le_bytes());
        h[60..64].copy_from_slice(&p.base_sequence.to_le_bytes());
        let crc = compute_crc(&buf);
        buf[12..16].copy_from_slice(&crc.to_le_bytes());
        // Keep the aligned allocation: no copy, and the body stays 16-aligned for readers.
        Ok(Bytes::from_owner(buf))
    }
}

/// Microseconds since the Unix epoch from the system clock.
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Convenience: a batch of values with no keys, stamped now.
pub fn batch_of_values<I, V>(values: I) -> Result<Bytes>
where
    I: IntoIterator<Item = V>,
    V: Into<Vec<u8>>,
{
    let mut b = BatchBuilder::new();
    for v in values {
        b.push_value(v);
    }
    b.build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_record() -> impl Strategy<Value = (i64, Option<Vec<u8>>, Vec<u8>, Vec<Header>)> {
        (
            0i64..1 << 50,
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..32)),
            proptest::collection::vec(any::<u8>(), 0..512),
            proptest::collection::vec(
                (
                    "[a-z-]{0,12}",
                    proptest::collection::vec(any::<u8>(), 0..16),
                )
                    .prop_map(|(key, value)| Header { key, value }),
                0..3,
            ),
        )
    }

    proptest! {
        #[test]
        fn build_then_decode_round_trips(recs in proptest::collection::vec(arb_record(), 1..40),
                                         base in any::<u64>().prop_map(|b| b >> 1)) {
            let mut b = BatchBuilder::new();
            for (ts, k, v, h) in &recs {
                b.push(*ts, k.clone(), v.clone(), h.clone());
            }
            let mut bytes = b.build().unwrap().to_vec();
            set_base_offset(&mut bytes, base);
            let (h, out) = decode(&bytes).unwrap();
            prop_assert_eq!(h.base_offset, base);
            prop_assert_eq!(h.record_count as usize, recs.len());
            prop_assert_eq!(bytes.len() % 16, 0);
            for (i, ((ts, k, v, hd), r)) in recs.iter().zip(&out).enumerate() {
                prop_assert_eq!(r.offset_delta as usize, i);
                prop_assert_eq!(h.first_timestamp_us + r.timestamp_delta_us as i64, *ts);
                prop_assert_eq!(&r.key, k);
                prop_assert_eq!(&r.value, v);
                prop_assert_eq!(&r.headers, hd);
            }
        }

        #[test]
        fn any_flipped_byte_in_crc_region_is_rejected(len in 1usize..200, at in any::<usize>(), bit in 0u8..8) {
            let bytes = batch_of_values([vec![7u8; len]]).unwrap();
            let mut v = bytes.to_vec();
            let at = CRC_START + at % (v.len() - CRC_START);
            v[at] ^= 1 << bit;
            prop_assert!(validate(&v).is_err());
        }

        #[test]
        fn arbitrary_bytes_never_panic(v in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = validate(&v);
            let _ = split_batches(&v);
        }
    }

    #[test]
    fn misaligned_buffer_is_still_readable() {
        let bytes = batch_of_values(["hello", "world"]).unwrap();
        let mut shifted = vec![0u8; bytes.len() + 1];
        shifted[1..].copy_from_slice(&bytes);
        let (_, rs) = decode(&shifted[1..]).unwrap();
        assert_eq!(rs[1].value, b"world");
    }

    #[test]
    fn body_with_valid_crc_but_bad_structure_is_rejected() {
        let bytes = batch_of_values(["abc"]).unwrap();
        let mut v = bytes.to_vec();
        // Corrupt the archive's root (last bytes of the body) and fix the CRC, as a malicious
        // client could: bytecheck must catch it.
        let body_end = HEADER_BYTES + u32_at(&v, 24) as usize;
        for b in &mut v[body_end - 8..body_end] {
            *b = 0xff;
        }
        let crc = compute_crc(&v);
        v[12..16].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(validate(&v), Err(Error::Corrupt(_))));
    }

    #[test]
    fn record_count_mismatch_is_rejected() {
        let bytes = batch_of_values(["a", "b"]).unwrap();
        let mut v = bytes.to_vec();
        v[20..24].copy_from_slice(&3u32.to_le_bytes());
        let crc = compute_crc(&v);
        v[12..16].copy_from_slice(&crc.to_le_bytes());
        assert!(validate(&v).is_err());
    }
}
