//! The compact record body ([`crate::body_kind::COMPACT`], format "v2", issue 18): a
//! struct-of-arrays layout read in place, with no per-record pointers.
//!
//! ```text
//!  0    1    2    3    4              8            12
//!  +----+----+----+----+--------------+------------+
//!  | kw | vw | tw | hw | header_total | blob_bytes |   preamble (PREAMBLE_BYTES), u32 LE
//!  +----+----+----+----+--------------+------------+
//!  12: blob (blob_bytes): per record, in order: key, value, then per header its key, its value
//!  then, each an array of n = record_count little-endian integers of the given width:
//!    key_lens[n]      width kw: key length + 1; 0 = no key (None)
//!    value_lens[n]    width vw
//!    ts_deltas[n]     width tw: timestamp - first_timestamp_us (wrapping, as u64)
//!    header_counts[n] width hw
//!  then header_lens[header_total]: u32 key length, u32 value length per header
//!  the body ends exactly there.
//! ```
//! A width is one of 0, 1, 2, 4 or 8 bytes; 0 means every entry of that array is 0. At least
//! one of the four widths is non-zero, so a body can never claim more records than it has
//! bytes (validation stays linear in the body length). Offset deltas are implicit: record `i`
//! has offset `base_offset + i`. A 100-byte value without key or headers costs
//! `1 + 0..2 (ts width) + 0 + 0` bytes beyond its value.

use crate::{FormatError as Error, Result};

/// Bytes of the fixed preamble.
pub const PREAMBLE_BYTES: usize = 12;
/// Bytes of one entry of the header length table.
pub const HEADER_LENS_BYTES: usize = 8;

const fn width_ok(w: u8) -> bool {
    matches!(w, 0 | 1 | 2 | 4 | 8)
}

/// The narrowest width holding `max`.
pub(crate) const fn width_for(max: u64) -> u8 {
    if max == 0 {
        0
    } else if max <= 0xff {
        1
    } else if max <= 0xffff {
        2
    } else if max <= 0xffff_ffff {
        4
    } else {
        8
    }
}

/// Appends the low `width` bytes of `v`, little-endian.
#[inline]
pub(crate) fn put_width(out: &mut Vec<u8>, width: u8, v: u64) {
    out.extend_from_slice(&v.to_le_bytes()[..usize::from(width)]);
}

/// One fixed-width array, read in place.
#[derive(Debug, Clone, Copy)]
struct Column<'a> {
    bytes: &'a [u8],
    width: usize,
}

impl Column<'_> {
    /// Entry `i`; callers index within the record count the column was cut for.
    #[inline]
    fn get(&self, i: usize) -> u64 {
        let at = i * self.width;
        match self.width {
            0 => 0,
            1 => u64::from(self.bytes[at]),
            2 => u64::from(u16::from_le_bytes([self.bytes[at], self.bytes[at + 1]])),
            4 => u64::from(u32::from_le_bytes([
                self.bytes[at],
                self.bytes[at + 1],
                self.bytes[at + 2],
                self.bytes[at + 3],
            ])),
            _ => {
                let mut a = [0u8; 8];
                a.copy_from_slice(&self.bytes[at..at + 8]);
                u64::from_le_bytes(a)
            }
        }
    }
}

/// The records of a compact body, checked once by [`CompactRecords::parse`] and then read in
/// place: every accessor returns slices of the body.
#[derive(Debug, Clone, Copy)]
pub struct CompactRecords<'a> {
    count: usize,
    blob: &'a [u8],
    key_lens: Column<'a>,
    value_lens: Column<'a>,
    ts_deltas: Column<'a>,
    header_counts: Column<'a>,
    header_lens: &'a [u8],
}

fn corrupt<T>(m: impl Into<String>) -> Result<T> {
    Err(Error::Corrupt(m.into()))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Cuts `len` bytes off the front of `rest` (an error if there are fewer).
fn take<'a>(rest: &mut &'a [u8], len: u64, what: &str) -> Result<&'a [u8]> {
    match usize::try_from(len) {
        Ok(n) if n <= rest.len() => {
            let (head, tail) = rest.split_at(n);
            *rest = tail;
            Ok(head)
        }
        _ => corrupt(format!("compact body: {what} beyond the body")),
    }
}

impl<'a> CompactRecords<'a> {
    /// Checks a compact body completely (every width, length and sum against the body length;
    /// timestamp deltas within `span_us`; header names UTF-8) and returns its reader. Never
    /// panics and allocates nothing, whatever the bytes.
    pub fn parse(body: &'a [u8], record_count: u32, span_us: u64) -> Result<Self> {
        if body.len() < PREAMBLE_BYTES {
            return corrupt("compact body shorter than its preamble");
        }
        let [kw, vw, tw, hw] = [body[0], body[1], body[2], body[3]];
        if ![kw, vw, tw, hw].into_iter().all(width_ok) {
            return corrupt("compact body: bad array width");
        }
        if kw == 0 && vw == 0 && tw == 0 && hw == 0 {
            return corrupt("compact body: all widths zero");
        }
        let header_total = u64::from(u32_at(body, 4));
        let blob_bytes = u64::from(u32_at(body, 8));
        let n = u64::from(record_count);
        let mut rest = &body[PREAMBLE_BYTES..];
        let blob = take(&mut rest, blob_bytes, "blob")?;
        let mut column = |w: u8, what: &str| -> Result<Column<'a>> {
            let bytes = take(&mut rest, n * u64::from(w), what)?;
            Ok(Column {
                bytes,
                width: usize::from(w),
            })
        };
        let key_lens = column(kw, "key lengths")?;
        let value_lens = column(vw, "value lengths")?;
        let ts_deltas = column(tw, "timestamp deltas")?;
        let header_counts = column(hw, "header counts")?;
        let header_lens = take(
            &mut rest,
            header_total * HEADER_LENS_BYTES as u64,
            "header lengths",
        )?;
        if !rest.is_empty() {
            return corrupt("compact body: bytes after the arrays");
        }
        let records = CompactRecords {
            count: usize::try_from(record_count).unwrap_or(usize::MAX),
            blob,
            key_lens,
            value_lens,
            ts_deltas,
            header_counts,
            header_lens,
        };
        records.check(span_us)?;
        Ok(records)
    }

    /// Walks every record once: lengths add up to the blob exactly, header counts to the
    /// header table, deltas within the span, header names UTF-8.
    fn check(&self, span_us: u64) -> Result<()> {
        let mut data = self.blob;
        let mut lens = self.header_lens;
        for i in 0..self.count {
            if self.ts_deltas.get(i) > span_us {
                return corrupt(format!("record {i} timestamp beyond max timestamp"));
            }
            take(&mut data, self.key_lens.get(i).saturating_sub(1), "key")?;
            take(&mut data, self.value_lens.get(i), "value")?;
            let headers = self.header_counts.get(i);
            let table = take(&mut lens, headers.saturating_mul(8), "header count")?;
            for entry in table.chunks_exact(HEADER_LENS_BYTES) {
                let name = take(&mut data, u64::from(u32_at(entry, 0)), "header name")?;
                if std::str::from_utf8(name).is_err() {
                    return corrupt(format!("record {i} header name not UTF-8"));
                }
                take(&mut data, u64::from(u32_at(entry, 4)), "header value")?;
            }
        }
        if !data.is_empty() || !lens.is_empty() {
            return corrupt("compact body: lengths do not add up to the body");
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn iter(&self) -> CompactIter<'a> {
        CompactIter {
            records: *self,
            index: 0,
            data_at: 0,
            header_at: 0,
        }
    }

    /// Record `i` (a walk over the length arrays up to it; no copy of any payload).
    pub fn get(&self, i: usize) -> Option<CompactRecord<'a>> {
        if i >= self.count {
            return None;
        }
        // Skip records before `i` by their lengths only.
        let mut it = self.iter();
        for j in 0..i {
            it.data_at += self.record_data_bytes(j, it.header_at);
            it.header_at += self.header_count(j);
        }
        it.index = i;
        it.next()
    }

    fn header_count(&self, i: usize) -> usize {
        usize::try_from(self.header_counts.get(i)).unwrap_or(0)
    }

    /// Blob bytes of record `i`, its headers starting at table entry `header_at`.
    fn record_data_bytes(&self, i: usize, header_at: usize) -> usize {
        let len = |v: u64| usize::try_from(v).unwrap_or(0);
        let mut n = len(self.key_lens.get(i).saturating_sub(1)) + len(self.value_lens.get(i));
        let table = &self.header_lens
            [header_at * HEADER_LENS_BYTES..(header_at + self.header_count(i)) * HEADER_LENS_BYTES];
        for e in table.chunks_exact(HEADER_LENS_BYTES) {
            n += u32_at(e, 0) as usize + u32_at(e, 4) as usize;
        }
        n
    }
}

impl<'a> IntoIterator for CompactRecords<'a> {
    type Item = CompactRecord<'a>;
    type IntoIter = CompactIter<'a>;
    fn into_iter(self) -> CompactIter<'a> {
        self.iter()
    }
}

/// Iterator over the records of a checked compact body.
#[derive(Debug, Clone)]
pub struct CompactIter<'a> {
    records: CompactRecords<'a>,
    index: usize,
    data_at: usize,
    header_at: usize,
}

impl<'a> Iterator for CompactIter<'a> {
    type Item = CompactRecord<'a>;

    fn next(&mut self) -> Option<CompactRecord<'a>> {
        let r = &self.records;
        let i = self.index;
        if i >= r.count {
            return None;
        }
        // In bounds: `parse` checked that every length fits the blob.
        let len = |v: u64| usize::try_from(v).unwrap_or(0);
        let key_len = r.key_lens.get(i);
        let mut at = self.data_at;
        let key = if key_len == 0 {
            None
        } else {
            let n = len(key_len - 1);
            at += n;
            Some(&r.blob[at - n..at])
        };
        let n = len(r.value_lens.get(i));
        let value = &r.blob[at..at + n];
        at += n;
        let count = r.header_count(i);
        let table =
            &r.header_lens[self.header_at * HEADER_LENS_BYTES..][..count * HEADER_LENS_BYTES];
        let headers_start = at;
        for e in table.chunks_exact(HEADER_LENS_BYTES) {
            at += u32_at(e, 0) as usize + u32_at(e, 4) as usize;
        }
        let out = CompactRecord {
            index: u32::try_from(i).unwrap_or(u32::MAX),
            timestamp_delta_us: r.ts_deltas.get(i),
            key,
            value,
            headers: CompactHeaders {
                table,
                data: &r.blob[headers_start..at],
            },
        };
        self.index += 1;
        self.data_at = at;
        self.header_at += count;
        Some(out)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.records.count - self.index;
        (left, Some(left))
    }
}

impl ExactSizeIterator for CompactIter<'_> {}

/// One record of a compact body: slices of the body.
#[derive(Debug, Clone, Copy)]
pub struct CompactRecord<'a> {
    pub index: u32,
    pub timestamp_delta_us: u64,
    pub key: Option<&'a [u8]>,
    pub value: &'a [u8],
    pub headers: CompactHeaders<'a>,
}

/// The headers of one compact record: `(name, value)` pairs, read in place.
#[derive(Debug, Clone, Copy)]
pub struct CompactHeaders<'a> {
    table: &'a [u8],
    data: &'a [u8],
}

impl CompactHeaders<'_> {
    pub fn len(&self) -> usize {
        self.table.len() / HEADER_LENS_BYTES
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

impl<'a> Iterator for CompactHeaders<'a> {
    type Item = (&'a str, &'a [u8]);

    fn next(&mut self) -> Option<(&'a str, &'a [u8])> {
        if self.table.len() < HEADER_LENS_BYTES {
            return None;
        }
        let k = u32_at(self.table, 0) as usize;
        let v = u32_at(self.table, 4) as usize;
        self.table = &self.table[HEADER_LENS_BYTES..];
        let (name, rest) = self.data.split_at(k);
        let (value, rest) = rest.split_at(v);
        self.data = rest;
        // Checked UTF-8 by `parse`; the fallback is never taken.
        Some((std::str::from_utf8(name).unwrap_or(""), value))
    }
}

/// Column-wise record data as the builder collects it: the blob holds the payload bytes in
/// body order, the vectors the per-record integers.
#[derive(Debug, Default, Clone)]
pub(crate) struct Columns {
    pub(crate) key_lens: Vec<u32>,
    pub(crate) value_lens: Vec<u32>,
    pub(crate) timestamps_us: Vec<i64>,
    pub(crate) header_counts: Vec<u32>,
    pub(crate) header_lens: Vec<(u32, u32)>,
}

impl Columns {
    /// Appends the arrays (everything after the blob) for timestamps relative to `first_us`.
    /// Returns the widths `[kw, vw, tw, hw]` to write in the preamble.
    pub(crate) fn write_arrays(&self, first_us: i64, out: &mut Vec<u8>) -> [u8; 4] {
        let max = |v: &[u32]| u64::from(v.iter().copied().max().unwrap_or(0));
        let kw = width_for(max(&self.key_lens));
        let mut vw = width_for(max(&self.value_lens));
        let deltas = || {
            self.timestamps_us
                .iter()
                .map(move |t| t.wrapping_sub(first_us) as u64)
        };
        let tw = width_for(deltas().max().unwrap_or(0));
        let hw = width_for(max(&self.header_counts));
        if kw == 0 && vw == 0 && tw == 0 && hw == 0 {
            // At least one byte per record (see the module doc).
            vw = 1;
        }
        for &k in &self.key_lens {
            put_width(out, kw, u64::from(k));
        }
        for &v in &self.value_lens {
            put_width(out, vw, u64::from(v));
        }
        for d in deltas() {
            put_width(out, tw, d);
        }
        for &c in &self.header_counts {
            put_width(out, hw, u64::from(c));
        }
        for &(k, v) in &self.header_lens {
            out.extend_from_slice(&k.to_le_bytes());
            out.extend_from_slice(&v.to_le_bytes());
        }
        [kw, vw, tw, hw]
    }
}
