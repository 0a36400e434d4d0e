//! `shardline-format`: the record batch, the unit on the wire, on disk and in the cache (docs/storage.md, "Record batch").
//!
//! ```text
//!  0       8            12     16      18  19    20         24          28       32
//!  +-------+------------+------+-------+---+-----+----------+-----------+--------+
//!  | base  | batch      | crc  | magic |ver|flags| record   | body      | key_id |
//!  | offset| length u32 | u32  | u16   |u8 | u8  | count u32| length u32| u32    |
//!  +-------+------------+------+-------+---+-----+----------+-----------+--------+
//!  32                 40                48             56      58   59   60        64
//!  | first_timestamp  | max_timestamp   | producer_id  | epoch |kind|comp| base    |
//!  | _us i64          | _us i64         | u64          | u16   | u8 | u8 | seq u32 |
//!  +------------------+-----------------+--------------+-------+----+----+---------+
//!  64: the body (body_length bytes), then zero padding to a multiple of 16. The body kind says
//!  how it is encoded (see [`body_kind`]): 0 is the rkyv archive of Vec<Record> (every batch
//!  written before the kind byte existed has 0 there), 1 an untouched Kafka record batch v2,
//!  2 the compact encoding. `comp` names the codec of a native body (see [`compression`]);
//!  Kafka bodies carry their codec in their own attributes and have 0 here.
//! ```
//! All integers little-endian. The CRC32C covers bytes `[16, batch_length)`: everything but the
//! base offset, the length and the CRC itself, so that the broker assigns offsets by patching
//! eight bytes without recomputing the checksum (Kafka makes the same choice). The base offset is
//! still checked on every read: recovery and fetch require it to continue the log contiguously.

#![warn(
    clippy::cast_possible_truncation,
    clippy::host_endian_bytes,
    clippy::too_many_lines
)]

mod builder;
pub mod compact;
pub mod compress;
pub mod kafka;
mod read;
mod view;

pub use builder::{BatchBuilder, batch_of_values, now_us};
pub use compact::{CompactHeaders, CompactRecord, CompactRecords};
pub use read::{
    ValidatedBatch, check_crc, decode, split_batches, validate, with_base_offset_copied,
    with_records,
};
pub use view::{HeadersRef, RecordRef, Records, RecordsIter};

use rkyv::{Archive, Deserialize, Serialize};

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

/// Byte positions of the header fields (the layout drawn above). Every read and write of a header
/// field goes through these.
pub const BASE_OFFSET_AT: usize = 0;
pub const BATCH_LENGTH_AT: usize = 8;
pub const CRC_AT: usize = 12;
pub const MAGIC_AT: usize = 16;
pub const FORMAT_VERSION_AT: usize = 18;
pub const FLAGS_AT: usize = 19;
pub const RECORD_COUNT_AT: usize = 20;
pub const BODY_LENGTH_AT: usize = 24;
pub const KEY_ID_AT: usize = 28;
pub const FIRST_TIMESTAMP_AT: usize = 32;
pub const MAX_TIMESTAMP_AT: usize = 40;
pub const PRODUCER_ID_AT: usize = 48;
pub const PRODUCER_EPOCH_AT: usize = 56;
/// How the body is encoded ([`body_kind`]); was a reserved zero byte before, so old batches read as 0.
pub const BODY_KIND_AT: usize = 58;
/// The codec of a native body ([`compression`]); was a reserved zero byte before.
pub const COMPRESSION_AT: usize = 59;
pub const BASE_SEQUENCE_AT: usize = 60;
const _: () = assert!(BASE_SEQUENCE_AT + 4 == HEADER_BYTES);
const _: () = assert!(COMPRESSION_AT + 1 == BASE_SEQUENCE_AT);
const _: () = assert!(BODY_KIND_AT + 1 == COMPRESSION_AT);
/// Bytes covered by the CRC start here: at the magic, right after the CRC field.
const CRC_START: usize = MAGIC_AT;
const _: () = assert!(CRC_AT + 4 == CRC_START);
/// Estimated encoded bytes of one record beyond its key, value and headers (rkyv framing).
const RECORD_OVERHEAD_BYTES_ESTIMATE: usize = 48;
/// The same for the compact body: at most 4 + 4 + 8 + 4 bytes of array entries, usually 2-4.
const COMPACT_RECORD_OVERHEAD_BYTES_ESTIMATE: usize = 8;
/// Estimated encoded bytes of one message header beyond its key and value.
const HEADER_OVERHEAD_BYTES_ESTIMATE: usize = 16;

/// Flag bits; the only ones a version-1 reader accepts.
pub mod flags {
    /// The body is sealed (AES-256-GCM, see docs/operations.md); not rkyv-validated on ingress.
    pub const ENCRYPTED: u8 = 1 << 3;
    /// Every bit a version-1 reader understands.
    pub const KNOWN: u8 = ENCRYPTED;
}

/// Body encodings (header byte [`BODY_KIND_AT`]). One header layout serves every kind, so the log,
/// the index, recovery, retention and replication never look inside a body. A reader that meets a
/// kind it does not know refuses the batch as corrupt (`BatchHeader::parse`).
pub mod body_kind {
    /// An rkyv archive of `Vec<Record>` (format version 1; every batch written before this byte
    /// was named).
    pub const RKYV_RECORDS: u8 = 0;
    /// One Kafka record batch (magic 2), stored as the Kafka client sent it (its own CRC32C
    /// checked on ingress, its compression untouched); the header's counts, timestamps and
    /// producer fields are copied from it. Served to Kafka fetches with only Kafka's base offset
    /// patched; converted to records only for native readers (issue 15).
    pub const KAFKA_V2: u8 = 1;
    /// The compact struct-of-arrays record encoding (issue 18).
    pub const COMPACT: u8 = 2;
    /// The kinds this build reads. Raised as each kind's reader lands.
    pub const KNOWN_MAX: u8 = COMPACT;
    /// The kind [`crate::BatchBuilder`] writes unless told otherwise.
    pub const DEFAULT: u8 = COMPACT;
}

/// Codecs of a native body (header byte [`COMPRESSION_AT`]): the body is compressed, then (with
/// encryption at rest) sealed. Kafka bodies keep their codec in Kafka's attributes and say NONE.
pub mod compression {
    pub const NONE: u8 = 0;
    pub const LZ4: u8 = 1;
    pub const ZSTD: u8 = 2;
    /// The codecs this build reads. Raised as each codec lands.
    pub const KNOWN_MAX: u8 = ZSTD;
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
    /// [`body_kind`] of the body.
    pub body_kind: u8,
    /// [`compression`] codec of a native body.
    pub compression: u8,
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
/// Writes `bytes` at `at` (a header field position).
fn put(b: &mut [u8], at: usize, bytes: &[u8]) {
    b[at..at + bytes.len()].copy_from_slice(bytes);
}
fn i64_at(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_le_bytes(a)
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
            base_offset: u64_at(bytes, BASE_OFFSET_AT),
            batch_length: u32_at(bytes, BATCH_LENGTH_AT),
            crc: u32_at(bytes, CRC_AT),
            magic: u16_at(bytes, MAGIC_AT),
            format_version: bytes[FORMAT_VERSION_AT],
            flags: bytes[FLAGS_AT],
            body_kind: bytes[BODY_KIND_AT],
            compression: bytes[COMPRESSION_AT],
            record_count: u32_at(bytes, RECORD_COUNT_AT),
            body_length: u32_at(bytes, BODY_LENGTH_AT),
            key_id: u32_at(bytes, KEY_ID_AT),
            first_timestamp_us: i64_at(bytes, FIRST_TIMESTAMP_AT),
            max_timestamp_us: i64_at(bytes, MAX_TIMESTAMP_AT),
            producer: ProducerInfo {
                producer_id: u64_at(bytes, PRODUCER_ID_AT),
                producer_epoch: u16_at(bytes, PRODUCER_EPOCH_AT),
                base_sequence: u32_at(bytes, BASE_SEQUENCE_AT),
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
        if self.body_kind > body_kind::KNOWN_MAX {
            return corrupt(format!("unsupported body kind {}", self.body_kind));
        }
        if self.compression > compression::KNOWN_MAX {
            return corrupt(format!("unsupported compression {}", self.compression));
        }
        if self.compression != compression::NONE && self.body_kind == body_kind::KAFKA_V2 {
            return corrupt("a kafka body carries its codec in its own attributes".into());
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
    batch[BASE_OFFSET_AT..BASE_OFFSET_AT + 8].copy_from_slice(&base_offset.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
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
    fn validated_batch_patches_a_unique_buffer_in_place_and_copies_a_shared_one() {
        let built = batch_of_values(["a", "b"]).unwrap();
        // A uniquely owned buffer (as a frame split off a receive buffer): patched in place.
        let unique = Bytes::from(built.to_vec());
        let ptr = unique.as_ptr();
        let v = ValidatedBatch::validate(unique).unwrap();
        assert_eq!(v.header().record_count, 2);
        let (v, copied) = v.with_base_offset(77);
        assert!(!copied);
        assert_eq!(v.bytes().as_ptr(), ptr, "no copy for a unique buffer");
        assert_eq!(v.header().base_offset, 77);
        assert_eq!(check_crc(v.bytes()).unwrap().base_offset, 77);
        // A shared buffer: copied once, the other handle keeps its bytes.
        let shared = Bytes::from(built.to_vec());
        let keep = shared.clone();
        let (v, copied) = ValidatedBatch::check_crc(shared)
            .unwrap()
            .with_base_offset(5);
        assert!(copied);
        assert_eq!(check_crc(v.bytes()).unwrap().base_offset, 5);
        assert_eq!(BatchHeader::parse(&keep).unwrap().base_offset, 0);
        // The header copy with the offset patched matches the patched bytes.
        let header = ValidatedBatch::check_crc(keep.clone())
            .unwrap()
            .header_bytes_with_base_offset(5);
        assert_eq!(&header[..], &v.bytes()[..HEADER_BYTES]);
    }

    #[test]
    fn patch_in_place_gives_a_shared_batch_back_unchanged() {
        let shared = Bytes::from(batch_of_values(["a"]).unwrap().to_vec());
        let keep = shared.clone();
        let v = ValidatedBatch::check_crc(shared).unwrap();
        let back = v.patch_in_place(9).unwrap_err();
        assert_eq!(back.header().base_offset, 0);
        assert_eq!(back.bytes().as_ptr(), keep.as_ptr());
        drop(keep);
        // Now unique: patched in place.
        let ptr = back.bytes().as_ptr();
        let patched = back.patch_in_place(9).unwrap();
        assert_eq!(patched.bytes().as_ptr(), ptr);
        assert_eq!(check_crc(patched.bytes()).unwrap().base_offset, 9);
        assert_eq!(patched.header().base_offset, 9);
    }

    #[test]
    fn unknown_body_kind_or_codec_is_refused() {
        let mut builder = BatchBuilder::new();
        builder.push_value(b"v".to_vec());
        let good = builder.build().unwrap();
        for (at, value) in [
            (BODY_KIND_AT, body_kind::KNOWN_MAX + 1),
            (COMPRESSION_AT, compression::KNOWN_MAX + 1),
        ] {
            let mut b = good.to_vec();
            b[at] = value;
            let crc = compute_crc(&b);
            b[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
            let e = validate(&b).unwrap_err();
            assert!(e.to_string().contains("unsupported"), "{e}");
        }
        assert_eq!(validate(&good).unwrap().body_kind, body_kind::COMPACT);
    }

    #[test]
    fn validated_batch_refuses_what_validate_refuses() {
        let mut v = batch_of_values(["x"]).unwrap().to_vec();
        v[MAGIC_AT] ^= 1;
        assert!(ValidatedBatch::validate(Bytes::from(v.clone())).is_err());
        assert!(ValidatedBatch::check_crc(Bytes::from(v)).is_err());
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
        let body_end = HEADER_BYTES + u32_at(&v, BODY_LENGTH_AT) as usize;
        for b in &mut v[body_end - 8..body_end] {
            *b = 0xff;
        }
        let crc = compute_crc(&v);
        put(&mut v, CRC_AT, &crc.to_le_bytes());
        assert!(matches!(validate(&v), Err(Error::Corrupt(_))));
    }

    #[test]
    fn record_count_mismatch_is_rejected() {
        let bytes = batch_of_values(["a", "b"]).unwrap();
        let mut v = bytes.to_vec();
        put(&mut v, RECORD_COUNT_AT, &3u32.to_le_bytes());
        let crc = compute_crc(&v);
        put(&mut v, CRC_AT, &crc.to_le_bytes());
        assert!(validate(&v).is_err());
    }
}
