//! Reading a batch: header and CRC checks, full ingress validation, the [`ValidatedBatch`]
//! handle, and access to the records of any body kind.

use bytes::Bytes;
use rkyv::{rancor, util::AlignedVec};

use crate::{
    ArchivedRecord, BASE_OFFSET_AT, BATCH_ALIGN, BATCH_BYTES_MAX, BatchHeader, CompactRecords,
    FormatError, HEADER_BYTES, Record, Records, Result, body_kind, compress, compression,
    compute_crc, flags, kafka, set_base_offset, u64_at,
};
use FormatError as Error;

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

    pub(crate) fn checked(header: BatchHeader, bytes: Bytes) -> Self {
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
