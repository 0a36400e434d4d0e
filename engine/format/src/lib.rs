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

pub mod compact;
pub mod compress;
pub mod kafka;
mod view;

pub use compact::{CompactHeaders, CompactRecord, CompactRecords};
pub use view::{HeadersRef, RecordRef, Records, RecordsIter};

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

/// Full ingress validation of untrusted bytes: header, CRC, then the body: the rkyv structure
/// (bytecheck) and record invariants (count, dense offset deltas, timestamps within the
/// header's range) of a version-1 body, every length and sum of a compact body
/// ([`CompactRecords::parse`]), Kafka's own checks of a Kafka body. Encrypted bodies are opaque
/// and compressed ones are not decompressed here (the broker never decompresses on the produce
/// path): both are checked by header and CRC, a compressed one also by its declared size
/// ([`compress::check_prefix`]); readers check them completely when they decompress.
pub fn validate(bytes: &[u8]) -> Result<BatchHeader> {
    let h = check_crc(bytes)?;
    if h.flags & flags::ENCRYPTED != 0 {
        return Ok(h);
    }
    if h.body_kind == body_kind::KAFKA_V2 {
        kafka::validate_body(bytes, &h)?;
    } else if h.compression != compression::NONE {
        compress::check_prefix(body_of(bytes, &h)?)?;
    } else {
        records_of_body(body_of(bytes, &h)?, &h, |_| Ok::<_, FormatError>(()))?;
    }
    Ok(h)
}

/// The body bytes of a batch (without padding).
fn body_of<'a>(bytes: &'a [u8], h: &BatchHeader) -> Result<&'a [u8]> {
    bytes
        .get(HEADER_BYTES..HEADER_BYTES + h.body_length as usize)
        .ok_or_else(|| Error::Corrupt("batch shorter than its body length".into()))
}

/// A batch whose header was parsed and checked once, carried with its bytes as a typed value so
/// that no later layer parses it again (issue 13, "Produce path without waste"). Constructible
/// only through [`ValidatedBatch::validate`] (untrusted bytes: header, CRC and record structure)
/// or [`ValidatedBatch::check_crc`] (trusted bytes: header and CRC, e.g. read back from disk).
#[derive(Debug, Clone)]
pub struct ValidatedBatch {
    header: BatchHeader,
    bytes: Bytes,
}

impl ValidatedBatch {
    /// Full ingress validation of untrusted bytes (see [`validate`]).
    pub fn validate(bytes: Bytes) -> Result<Self> {
        let header = validate(&bytes)?;
        Ok(Self::checked(header, bytes))
    }

    /// Header and CRC only (see [`check_crc`]): for bytes whose body was validated before.
    pub fn check_crc(bytes: Bytes) -> Result<Self> {
        let header = check_crc(&bytes)?;
        Ok(Self::checked(header, bytes))
    }

    fn checked(header: BatchHeader, bytes: Bytes) -> Self {
        assert_eq!(
            bytes.len(),
            header.batch_length as usize,
            "a validated batch is exactly its header's length"
        );
        ValidatedBatch { header, bytes }
    }

    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }

    pub fn into_parts(self) -> (BatchHeader, Bytes) {
        (self.header, self.bytes)
    }

    /// Bytes of the whole batch (header, body, padding).
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The fixed header as it will be with `base_offset` assigned (the CRC does not cover the
    /// base offset, so the rest is unchanged): for writers that copy the batch anyway and patch
    /// on the way (the log's DMA chunk copy).
    pub fn header_bytes_with_base_offset(&self, base_offset: u64) -> [u8; HEADER_BYTES] {
        let mut header = [0u8; HEADER_BYTES];
        header.copy_from_slice(&self.bytes[..HEADER_BYTES]);
        set_base_offset(&mut header, base_offset);
        header
    }

    /// The body and padding after the fixed header.
    pub fn body_bytes(&self) -> &[u8] {
        &self.bytes[HEADER_BYTES..]
    }

    /// Assigns `base_offset` without copying: patches the eight bytes in place when this handle
    /// owns its buffer alone (or the offset is already set). Gives the batch back unchanged
    /// when the buffer is shared or cannot be reclaimed (`Bytes::from_owner`).
    pub fn patch_in_place(self, base_offset: u64) -> Result<Self, Self> {
        let ValidatedBatch { mut header, bytes } = self;
        if u64_at(&bytes, BASE_OFFSET_AT) == base_offset {
            header.base_offset = base_offset;
            return Ok(ValidatedBatch { header, bytes });
        }
        match bytes.try_into_mut() {
            Ok(mut owned) => {
                set_base_offset(&mut owned, base_offset);
                header.base_offset = base_offset;
                Ok(ValidatedBatch {
                    header,
                    bytes: owned.freeze(),
                })
            }
            Err(bytes) => Err(ValidatedBatch { header, bytes }),
        }
    }

    /// Assigns `base_offset`. Patches the eight bytes in place when this handle owns its buffer
    /// alone (no copy); otherwise, or if the buffer cannot be reclaimed (`Bytes::from_owner`),
    /// copies the batch once. The second value says whether a copy was made.
    pub fn with_base_offset(self, base_offset: u64) -> (Self, bool) {
        match self.patch_in_place(base_offset) {
            Ok(patched) => (patched, false),
            Err(ValidatedBatch { mut header, bytes }) => {
                header.base_offset = base_offset;
                let bytes = with_base_offset_copied(&bytes, base_offset);
                (ValidatedBatch { header, bytes }, true)
            }
        }
    }
}

/// A copy of the batch in `bytes` with its base offset set to `base_offset` (for a buffer that
/// cannot be patched in place).
pub fn with_base_offset_copied(bytes: &[u8], base_offset: u64) -> Bytes {
    let mut owned = bytes::BytesMut::from(bytes);
    set_base_offset(&mut owned, base_offset);
    owned.freeze()
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

/// Gives `f` access to the records of a batch of any kind ([`Records`]), checking the body
/// on the way (rkyv bytecheck and record invariants, or [`CompactRecords::parse`]: both linear
/// and allocation-free). Version-1 and compact bodies are read in place; an rkyv body that is
/// not 16-aligned in memory is copied once into an aligned buffer first. A compressed body is
/// decompressed into a buffer of at most its declared size (itself at most
/// [`BATCH_BYTES_MAX`]); a Kafka body is converted into records. A sealed batch is refused:
/// open it first.
pub fn with_records<T, E: From<FormatError>>(
    bytes: &[u8],
    h: &BatchHeader,
    f: impl FnOnce(Records<'_>) -> Result<T, E>,
) -> Result<T, E> {
    if h.flags & flags::ENCRYPTED != 0 {
        return Err(E::from(Error::Corrupt(
            "cannot read the records of a sealed batch".into(),
        )));
    }
    let body = body_of(bytes, h)?;
    if h.body_kind == body_kind::KAFKA_V2 {
        let owned = kafka::records_of(bytes, h)?;
        return f(Records::Owned(&owned));
    }
    if h.compression != compression::NONE {
        // Compact bodies need no alignment; an rkyv body is realigned by `records_of_body`.
        let plain = compress::decompress(h.compression, body, BATCH_BYTES_MAX)?;
        return records_of_body(&plain, h, f);
    }
    records_of_body(body, h, f)
}

/// Checks an uncompressed native body and hands its records to `f`.
fn records_of_body<T, E: From<FormatError>>(
    body: &[u8],
    h: &BatchHeader,
    f: impl FnOnce(Records<'_>) -> Result<T, E>,
) -> Result<T, E> {
    if h.body_kind == body_kind::COMPACT {
        let span = h.max_timestamp_us.wrapping_sub(h.first_timestamp_us) as u64;
        let records = CompactRecords::parse(body, h.record_count, span)?;
        return f(Records::Compact(records));
    }
    let access = |body: &[u8]| -> Result<T, E> {
        let v = rkyv::access::<rkyv::Archived<Vec<Record>>, rancor::BoxedError>(body)
            .map_err(|_| E::from(Error::Corrupt("invalid record body".into())))?;
        check_records(h, v.as_slice())?;
        f(Records::Archived(v.as_slice()))
    };
    if (body.as_ptr() as usize).is_multiple_of(BATCH_ALIGN) {
        access(body)
    } else {
        let mut aligned = AlignedVec::<16>::with_capacity(body.len());
        aligned.extend_from_slice(body);
        access(&aligned)
    }
}

/// Decodes every record into owned values (tests, CLI, slow paths): any body kind, compressed
/// or not.
pub fn decode(bytes: &[u8]) -> Result<(BatchHeader, Vec<Record>)> {
    let h = validate(bytes)?;
    if h.flags & flags::ENCRYPTED != 0 {
        return Err(Error::Corrupt("cannot decode a sealed batch".into()));
    }
    let records = with_records(bytes, &h, |rs| {
        Ok::<_, FormatError>(rs.iter().map(|r| r.to_record()).collect())
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

/// Builds a batch from records; the producer side of the format. Writes the compact body
/// ([`body_kind::COMPACT`]) unless [`BatchBuilder::body_kind`] asks for version 1, and
/// compresses it with the codec set by [`BatchBuilder::compression`]. Payload bytes are copied
/// once, into the batch buffer, as they are pushed.
#[derive(Debug)]
pub struct BatchBuilder {
    /// Header space, preamble space, then the blob of the compact body, appended to by `push`.
    buf: AlignedVec<16>,
    columns: compact::Columns,
    producer: ProducerInfo,
    bytes_estimate: usize,
    body_kind: u8,
    compression: u8,
    /// A key, value or header longer than a batch can hold was pushed (reported by `build`).
    oversized: bool,
}

impl Default for BatchBuilder {
    fn default() -> Self {
        Self::new()
    }
}

/// First allocation of a builder's buffer.
const BUILDER_INITIAL_BYTES: usize = 4096;
/// Where the blob starts in the builder's buffer.
const BLOB_AT: usize = HEADER_BYTES + compact::PREAMBLE_BYTES;

impl BatchBuilder {
    pub fn new() -> Self {
        BatchBuilder {
            buf: AlignedVec::new(),
            columns: compact::Columns::default(),
            producer: ProducerInfo::default(),
            bytes_estimate: 0,
            body_kind: body_kind::DEFAULT,
            compression: compression::NONE,
            oversized: false,
        }
    }

    /// Sets idempotent-producer identity and the sequence number of the first record.
    pub fn producer(mut self, producer: ProducerInfo) -> Self {
        self.producer = producer;
        self
    }

    /// Compresses the body with `codec` ([`compression`]; NONE by default).
    pub fn compression(mut self, codec: u8) -> Self {
        self.compression = codec;
        self
    }

    /// Writes body kind `kind`: [`body_kind::COMPACT`] (the default) or
    /// [`body_kind::RKYV_RECORDS`] (version 1, for compatibility tests and measurements).
    pub fn body_kind(mut self, kind: u8) -> Self {
        self.body_kind = kind;
        self
    }

    fn len_u32(&mut self, n: usize) -> u32 {
        u32::try_from(n).unwrap_or_else(|_| {
            self.oversized = true;
            0
        })
    }

    /// Appends a record with the given timestamp (microseconds since the Unix epoch).
    pub fn push(
        &mut self,
        timestamp_us: i64,
        key: Option<Vec<u8>>,
        value: Vec<u8>,
        headers: Vec<Header>,
    ) -> &mut Self {
        self.push_ref(
            timestamp_us,
            key.as_deref(),
            &value,
            headers.iter().map(|h| (h.key.as_str(), h.value.as_slice())),
        )
    }

    /// Appends a record from borrowed parts (copied into the batch once).
    pub fn push_ref<'h>(
        &mut self,
        timestamp_us: i64,
        key: Option<&[u8]>,
        value: &[u8],
        headers: impl IntoIterator<Item = (&'h str, &'h [u8])>,
    ) -> &mut Self {
        if self.buf.is_empty() {
            // Room for a few small records before the first doubling.
            self.buf
                .reserve(BUILDER_INITIAL_BYTES.max(BLOB_AT + value.len() * 4));
            self.buf.extend_from_slice(&[0u8; BLOB_AT]);
        }
        let key_len = match key {
            Some(k) => self.len_u32(k.len()).saturating_add(1),
            None => 0,
        };
        let value_len = self.len_u32(value.len());
        if let Some(k) = key {
            self.buf.extend_from_slice(k);
        }
        self.buf.extend_from_slice(value);
        let mut count = 0u32;
        let mut header_bytes = 0;
        for (k, v) in headers {
            let lens = (self.len_u32(k.len()), self.len_u32(v.len()));
            self.columns.header_lens.push(lens);
            self.buf.extend_from_slice(k.as_bytes());
            self.buf.extend_from_slice(v);
            count += 1;
            header_bytes += k.len() + v.len() + HEADER_OVERHEAD_BYTES_ESTIMATE;
        }
        if self.buf.len() > BATCH_BYTES_MAX {
            self.oversized = true;
        }
        self.columns.key_lens.push(key_len);
        self.columns.value_lens.push(value_len);
        self.columns.timestamps_us.push(timestamp_us);
        self.columns.header_counts.push(count);
        self.bytes_estimate += COMPACT_RECORD_OVERHEAD_BYTES_ESTIMATE
            + key.map_or(0, <[u8]>::len)
            + value.len()
            + header_bytes;
        self
    }

    /// Appends a value with the current time and no key.
    pub fn push_value(&mut self, value: impl Into<Vec<u8>>) -> &mut Self {
        self.push(now_us(), None, value.into(), Vec::new())
    }

    pub fn len(&self) -> usize {
        self.columns.value_lens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.columns.value_lens.is_empty()
    }

    /// Rough encoded size (uncompressed), for producers that cap batch bytes.
    pub fn bytes_estimate(&self) -> usize {
        let per_record = if self.body_kind == body_kind::RKYV_RECORDS {
            RECORD_OVERHEAD_BYTES_ESTIMATE - COMPACT_RECORD_OVERHEAD_BYTES_ESTIMATE
        } else {
            0
        };
        HEADER_BYTES + compact::PREAMBLE_BYTES + self.bytes_estimate + per_record * self.len()
    }

    /// Encodes the batch with base offset 0 (the broker assigns the real one).
    pub fn build(self) -> Result<Bytes> {
        if self.is_empty() {
            return Err(Error::InvalidArgument(
                "a batch needs at least one record".into(),
            ));
        }
        if self.oversized {
            return Err(Error::TooLarge {
                bytes: self.buf.len().max(BATCH_BYTES_MAX + 1),
                max: BATCH_BYTES_MAX,
            });
        }
        if self.compression > compression::KNOWN_MAX {
            return Err(Error::InvalidArgument(format!(
                "unknown compression {}",
                self.compression
            )));
        }
        let count = u32::try_from(self.len())
            .map_err(|_| Error::InvalidArgument("too many records in one batch".into()))?;
        let ts = &self.columns.timestamps_us;
        let first = ts.iter().copied().min().unwrap_or(0);
        let max = ts.iter().copied().max().unwrap_or(0);
        let meta = BatchMeta {
            count,
            first,
            max,
            producer: self.producer,
            body_kind: self.body_kind,
            compression: self.compression,
        };
        match self.body_kind {
            body_kind::COMPACT => self.build_compact(meta),
            body_kind::RKYV_RECORDS => self.build_rkyv(meta),
            k => Err(Error::InvalidArgument(format!(
                "cannot build body kind {k}"
            ))),
        }
    }

    /// The compact body: the blob is in place; the arrays and preamble go around it.
    fn build_compact(mut self, meta: BatchMeta) -> Result<Bytes> {
        let blob_bytes = self.buf.len() - BLOB_AT;
        let header_total = self.len_u32(self.columns.header_lens.len());
        #[allow(
            clippy::cast_possible_truncation,
            reason = "the blob is under BATCH_BYTES_MAX (64 MiB): `oversized` is checked first"
        )]
        let blob_bytes = blob_bytes as u32;
        let mut arrays = Vec::with_capacity(self.len() * 8 + self.columns.header_lens.len() * 8);
        let widths = self.columns.write_arrays(meta.first, &mut arrays);
        self.buf.extend_from_slice(&arrays);
        let pre = &mut self.buf[HEADER_BYTES..BLOB_AT];
        pre[..4].copy_from_slice(&widths);
        pre[4..8].copy_from_slice(&header_total.to_le_bytes());
        pre[8..12].copy_from_slice(&blob_bytes.to_le_bytes());
        if meta.compression != compression::NONE {
            return compressed(&self.buf[HEADER_BYTES..], &meta);
        }
        finish(self.buf, &meta)
    }

    /// Version 1: the rkyv archive of the records (rebuilt from the columns).
    fn build_rkyv(self, meta: BatchMeta) -> Result<Bytes> {
        let mut records = Vec::with_capacity(self.len());
        let mut rest = &self.buf[BLOB_AT..];
        let mut headers = self.columns.header_lens.iter();
        let mut cut = |n: usize| {
            let (head, tail) = rest.split_at(n);
            rest = tail;
            head.to_vec()
        };
        let c = &self.columns;
        for (i, &ts) in c.timestamps_us.iter().enumerate() {
            let key = (c.key_lens[i] != 0).then(|| cut(c.key_lens[i] as usize - 1));
            let value = cut(c.value_lens[i] as usize);
            let hs = (0..c.header_counts[i])
                .filter_map(|_| headers.next())
                .map(|&(k, v)| Header {
                    key: String::from_utf8(cut(k as usize)).unwrap_or_default(),
                    value: cut(v as usize),
                })
                .collect();
            records.push(Record {
                offset_delta: u32::try_from(i).unwrap_or(u32::MAX),
                timestamp_delta_us: ts.wrapping_sub(meta.first) as u64,
                key,
                value,
                headers: hs,
            });
        }
        let mut buf = AlignedVec::<16>::with_capacity(padded(self.bytes_estimate()));
        buf.extend_from_slice(&[0u8; HEADER_BYTES]);
        let buf = rkyv::api::high::to_bytes_in::<_, rancor::BoxedError>(&records, buf)
            .map_err(|e| Error::InvalidArgument(format!("record encode: {e}")))?;
        if meta.compression != compression::NONE {
            return compressed(&buf[HEADER_BYTES..], &meta);
        }
        finish(buf, &meta)
    }
}

/// Header fields of a batch being built.
struct BatchMeta {
    count: u32,
    first: i64,
    max: i64,
    producer: ProducerInfo,
    body_kind: u8,
    compression: u8,
}

/// A batch whose body is `plain` compressed with the meta's codec (no alignment needed: the
/// body is read only after decompression).
fn compressed(plain: &[u8], meta: &BatchMeta) -> Result<Bytes> {
    let mut out = Vec::with_capacity(HEADER_BYTES + plain.len() / 2 + 64);
    out.extend_from_slice(&[0u8; HEADER_BYTES]);
    compress::compress_into(meta.compression, plain, &mut out)?;
    finish(out, meta)
}

/// Pads `buf` (header space, then the body) and writes the header and the CRC.
fn finish<B>(mut buf: B, meta: &BatchMeta) -> Result<Bytes>
where
    B: AsRef<[u8]> + AsMut<[u8]> + Send + 'static + BatchBuf,
{
    let len = buf.as_ref().len();
    let body_length = u32::try_from(len - HEADER_BYTES).map_err(|_| Error::TooLarge {
        bytes: len,
        max: BATCH_BYTES_MAX,
    })?;
    let total = padded(len);
    if total > BATCH_BYTES_MAX {
        return Err(Error::TooLarge {
            bytes: total,
            max: BATCH_BYTES_MAX,
        });
    }
    buf.pad_to(total);
    #[allow(
        clippy::cast_possible_truncation,
        reason = "total <= BATCH_BYTES_MAX (64 MiB), checked just above"
    )]
    let total_u32 = total as u32;
    let p = meta.producer;
    let b = buf.as_mut();
    let h = &mut b[..HEADER_BYTES];
    put(h, BATCH_LENGTH_AT, &total_u32.to_le_bytes());
    put(h, MAGIC_AT, &MAGIC.to_le_bytes());
    h[FORMAT_VERSION_AT] = FORMAT_VERSION;
    h[FLAGS_AT] = 0;
    h[BODY_KIND_AT] = meta.body_kind;
    h[COMPRESSION_AT] = meta.compression;
    put(h, RECORD_COUNT_AT, &meta.count.to_le_bytes());
    put(h, BODY_LENGTH_AT, &body_length.to_le_bytes());
    put(h, FIRST_TIMESTAMP_AT, &meta.first.to_le_bytes());
    put(h, MAX_TIMESTAMP_AT, &meta.max.to_le_bytes());
    put(h, PRODUCER_ID_AT, &p.producer_id.to_le_bytes());
    put(h, PRODUCER_EPOCH_AT, &p.producer_epoch.to_le_bytes());
    put(h, BASE_SEQUENCE_AT, &p.base_sequence.to_le_bytes());
    let crc = compute_crc(b);
    put(b, CRC_AT, &crc.to_le_bytes());
    // Keep the allocation: no copy (an AlignedVec keeps the body 16-aligned for readers).
    Ok(Bytes::from_owner(buf))
}

/// The two buffers a batch is built in.
trait BatchBuf {
    fn pad_to(&mut self, len: usize);
}

impl BatchBuf for AlignedVec<16> {
    fn pad_to(&mut self, len: usize) {
        self.resize(len, 0);
    }
}

impl BatchBuf for Vec<u8> {
    fn pad_to(&mut self, len: usize) {
        self.resize(len, 0);
    }
}

impl BatchBuilder {
    /// [`BatchBuilder::build`] as a [`ValidatedBatch`]: the builder wrote the header itself, so
    /// it is parsed (not checked again) and carried with the bytes.
    pub fn build_validated(self) -> Result<ValidatedBatch> {
        let bytes = self.build()?;
        let header = BatchHeader::parse(&bytes)?;
        Ok(ValidatedBatch::checked(header, bytes))
    }
}

/// Microseconds since the Unix epoch from the system clock.
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
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
