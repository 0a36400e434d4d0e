//! Building a batch: [`BatchBuilder`] (the producer side of the format) and its helpers.

use bytes::Bytes;
use rkyv::{rancor, util::AlignedVec};

use crate::{
    BASE_SEQUENCE_AT, BATCH_BYTES_MAX, BATCH_LENGTH_AT, BODY_KIND_AT, BODY_LENGTH_AT, BatchHeader,
    COMPACT_RECORD_OVERHEAD_BYTES_ESTIMATE, COMPRESSION_AT, CRC_AT, FIRST_TIMESTAMP_AT, FLAGS_AT,
    FORMAT_VERSION, FORMAT_VERSION_AT, FormatError, HEADER_BYTES, HEADER_OVERHEAD_BYTES_ESTIMATE,
    Header, MAGIC, MAGIC_AT, MAX_TIMESTAMP_AT, PRODUCER_EPOCH_AT, PRODUCER_ID_AT, ProducerInfo,
    RECORD_COUNT_AT, RECORD_OVERHEAD_BYTES_ESTIMATE, Record, Result, ValidatedBatch, body_kind,
    compact, compress, compression, compute_crc, padded, put,
};
use FormatError as Error;

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
