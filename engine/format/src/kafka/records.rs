//! Kafka's varint-encoded records: encoding native records into an uncompressed Kafka batch
//! and parsing a Kafka batch's records for native readers.

use bytes::{BufMut, BytesMut};

use super::{
    ATTRIBUTES_AT, KAFKA_HEADER_BYTES, KAFKA_MAGIC, KCRC_AT, KafkaBatchInfo, LENGTH_AT, LENGTH_END,
    body, codec, corrupt, decompress, ms_to_us, parse_header,
};
use crate::{BATCH_BYTES_MAX, BatchHeader, FormatError as Error, Header, Record, Result};

/// Encodes `records` as one uncompressed Kafka v2 batch (producer -1, create-time stamps).
pub(super) fn encode_batch(
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
pub(super) fn parse_records(
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
