//! Sparse offset index (`.idx`) and time index (`.tix`) of one segment (docs/storage.md, "Index
//! files"). Both are checkpoints: they describe the segment's first `data_bytes` bytes, and
//! recovery scans the log from there on. A missing, torn or inconsistent file is rebuilt by
//! scanning the segment, never trusted.
//!
//! ```text
//! 0      4       6        8       12     16            24           32           40         64
//! | magic | ver  | entry  | entry | crc  | segment     | data_bytes | next_offset| max_ts_us | 0.. |
//! | u32   | u16  | bytes  | count | u32  | base u64    | u64        | u64        | i64       |     |
//! 64: entries. .idx entry (8 B): rel_offset u32, position u32.
//!              .tix entry (16 B): max_timestamp_before_us i64, rel_offset u32, position u32.
//! The CRC32C covers bytes [0,12) and [16, 64 + entry_count * entry_bytes). The file is padded
//! with zeros to a multiple of 4 KiB (direct I/O).
//! ```

/// One indexed batch: every `index_interval_bytes` of log, the next batch gets an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    /// Base offset of the batch minus the segment's base offset.
    pub rel_offset: u32,
    /// Byte position of the batch in the segment file.
    pub position: u32,
    /// Largest record timestamp of all batches *before* this one in the segment
    /// (`i64::MIN` for none): a time lookup for `t` may start at the last entry with this `< t`.
    pub max_timestamp_before_us: i64,
}

/// What an index file says about its segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub segment_base: u64,
    pub data_bytes: u64,
    pub next_offset: u64,
    pub max_timestamp_us: i64,
    pub entries: Vec<IndexEntry>,
}

pub const OFFSET_MAGIC: u32 = u32::from_le_bytes(*b"SLIX");
pub const TIME_MAGIC: u32 = u32::from_le_bytes(*b"SLTX");
pub const INDEX_HEADER_BYTES: usize = 64;
const VERSION: u16 = 1;
const OFFSET_ENTRY_BYTES: usize = 8;
const TIME_ENTRY_BYTES: usize = 16;
const _: () = assert!(TIME_ENTRY_BYTES <= u16::MAX as usize);

// Header field positions (the layout drawn above).
const MAGIC_AT: usize = 0;
const VERSION_AT: usize = 4;
const ENTRY_BYTES_AT: usize = 6;
const ENTRY_COUNT_AT: usize = 8;
const CRC_AT: usize = 12;
/// The CRC covers `[0, CRC_AT)` and `[CRC_END_AT, end of entries)`.
const CRC_END_AT: usize = 16;
const SEGMENT_BASE_AT: usize = 16;
const DATA_BYTES_AT: usize = 24;
const NEXT_OFFSET_AT: usize = 32;
const MAX_TIMESTAMP_AT: usize = 40;
const _: () = assert!(MAX_TIMESTAMP_AT + 8 <= INDEX_HEADER_BYTES);
// Entry field positions, relative to the entry's start.
const OFFSET_ENTRY_REL_OFFSET_AT: usize = 0;
const OFFSET_ENTRY_POSITION_AT: usize = 4;
const TIME_ENTRY_TIMESTAMP_AT: usize = 0;
const TIME_ENTRY_REL_OFFSET_AT: usize = 8;
const TIME_ENTRY_POSITION_AT: usize = 12;

#[derive(Clone, Copy)]
pub enum IndexKind {
    Offset,
    Time,
}

impl IndexKind {
    fn magic(self) -> u32 {
        match self {
            IndexKind::Offset => OFFSET_MAGIC,
            IndexKind::Time => TIME_MAGIC,
        }
    }
    fn entry_bytes(self) -> usize {
        match self {
            IndexKind::Offset => OFFSET_ENTRY_BYTES,
            IndexKind::Time => TIME_ENTRY_BYTES,
        }
    }
    /// [`Self::entry_bytes`] as stored in the header (both sizes fit u16, asserted above).
    fn entry_bytes_u16(self) -> u16 {
        match u16::try_from(self.entry_bytes()) {
            Ok(n) => n,
            Err(_) => unreachable!("entry sizes fit u16"),
        }
    }
}

fn crc_of(bytes: &[u8], end: usize) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&bytes[..CRC_AT]), &bytes[CRC_END_AT..end])
}

/// Encodes one index file (unpadded).
pub fn encode(kind: IndexKind, cp: &Checkpoint) -> Vec<u8> {
    let eb = kind.entry_bytes();
    let mut out = vec![0u8; INDEX_HEADER_BYTES + cp.entries.len() * eb];
    // Entries are one per indexed batch of a segment (at most 2 GiB of batches of at least
    // HEADER_BYTES each): far below u32::MAX.
    let count = u32::try_from(cp.entries.len()).unwrap_or_else(|_| {
        panic!("{} index entries in one segment", cp.entries.len());
    });
    put(&mut out, MAGIC_AT, &kind.magic().to_le_bytes());
    put(&mut out, VERSION_AT, &VERSION.to_le_bytes());
    put(
        &mut out,
        ENTRY_BYTES_AT,
        &kind.entry_bytes_u16().to_le_bytes(),
    );
    put(&mut out, ENTRY_COUNT_AT, &count.to_le_bytes());
    put(&mut out, SEGMENT_BASE_AT, &cp.segment_base.to_le_bytes());
    put(&mut out, DATA_BYTES_AT, &cp.data_bytes.to_le_bytes());
    put(&mut out, NEXT_OFFSET_AT, &cp.next_offset.to_le_bytes());
    put(
        &mut out,
        MAX_TIMESTAMP_AT,
        &cp.max_timestamp_us.to_le_bytes(),
    );
    for (i, e) in cp.entries.iter().enumerate() {
        let at = INDEX_HEADER_BYTES + i * eb;
        match kind {
            IndexKind::Offset => {
                put(
                    &mut out,
                    at + OFFSET_ENTRY_REL_OFFSET_AT,
                    &e.rel_offset.to_le_bytes(),
                );
                put(
                    &mut out,
                    at + OFFSET_ENTRY_POSITION_AT,
                    &e.position.to_le_bytes(),
                );
            }
            IndexKind::Time => {
                let ts = e.max_timestamp_before_us.to_le_bytes();
                put(&mut out, at + TIME_ENTRY_TIMESTAMP_AT, &ts);
                put(
                    &mut out,
                    at + TIME_ENTRY_REL_OFFSET_AT,
                    &e.rel_offset.to_le_bytes(),
                );
                put(
                    &mut out,
                    at + TIME_ENTRY_POSITION_AT,
                    &e.position.to_le_bytes(),
                );
            }
        }
    }
    let end = out.len();
    let crc = crc_of(&out, end);
    put(&mut out, CRC_AT, &crc.to_le_bytes());
    out
}

fn put(out: &mut [u8], at: usize, bytes: &[u8]) {
    out[at..at + bytes.len()].copy_from_slice(bytes);
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le_i64(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_le_bytes(a)
}
fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}
fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Decodes and sanity-checks one index file. `None` means: rebuild by scanning.
pub fn decode(kind: IndexKind, bytes: &[u8], segment_base: u64) -> Option<Checkpoint> {
    if bytes.len() < INDEX_HEADER_BYTES || le_u32(bytes, MAGIC_AT) != kind.magic() {
        return None;
    }
    let eb = kind.entry_bytes();
    if le_u16(bytes, VERSION_AT) != VERSION
        || le_u16(bytes, ENTRY_BYTES_AT) != kind.entry_bytes_u16()
    {
        return None;
    }
    let count = le_u32(bytes, ENTRY_COUNT_AT) as usize;
    let end = INDEX_HEADER_BYTES.checked_add(count.checked_mul(eb)?)?;
    if end > bytes.len() || crc_of(bytes, end) != le_u32(bytes, CRC_AT) {
        return None;
    }
    let cp_base = le_u64(bytes, SEGMENT_BASE_AT);
    let data_bytes = le_u64(bytes, DATA_BYTES_AT);
    let next_offset = le_u64(bytes, NEXT_OFFSET_AT);
    if cp_base != segment_base || next_offset < segment_base || data_bytes > u64::from(u32::MAX) {
        return None;
    }
    let mut entries = Vec::with_capacity(count);
    for i in 0..count {
        let at = INDEX_HEADER_BYTES + i * eb;
        let e = match kind {
            IndexKind::Offset => IndexEntry {
                rel_offset: le_u32(bytes, at + OFFSET_ENTRY_REL_OFFSET_AT),
                position: le_u32(bytes, at + OFFSET_ENTRY_POSITION_AT),
                max_timestamp_before_us: i64::MIN,
            },
            IndexKind::Time => IndexEntry {
                max_timestamp_before_us: le_i64(bytes, at + TIME_ENTRY_TIMESTAMP_AT),
                rel_offset: le_u32(bytes, at + TIME_ENTRY_REL_OFFSET_AT),
                position: le_u32(bytes, at + TIME_ENTRY_POSITION_AT),
            },
        };
        // Entries must increase strictly and stay inside the checkpointed data.
        if let Some(prev) = entries.last().copied() as Option<IndexEntry>
            && (e.rel_offset <= prev.rel_offset || e.position <= prev.position)
        {
            return None;
        }
        if u64::from(e.position) >= data_bytes
            || segment_base + u64::from(e.rel_offset) >= next_offset
        {
            return None;
        }
        entries.push(e);
    }
    Some(Checkpoint {
        segment_base,
        data_bytes,
        next_offset,
        max_timestamp_us: le_i64(bytes, MAX_TIMESTAMP_AT),
        entries,
    })
}

/// Merges a decoded offset index and time index into one checkpoint, or `None` if they disagree.
pub fn merge(offsets: Checkpoint, times: Checkpoint) -> Option<Checkpoint> {
    if offsets.data_bytes != times.data_bytes
        || offsets.next_offset != times.next_offset
        || offsets.entries.len() != times.entries.len()
    {
        return None;
    }
    let mut cp = offsets;
    for (e, t) in cp.entries.iter_mut().zip(&times.entries) {
        if e.rel_offset != t.rel_offset || e.position != t.position {
            return None;
        }
        e.max_timestamp_before_us = t.max_timestamp_before_us;
    }
    cp.max_timestamp_us = times.max_timestamp_us;
    Some(cp)
}

/// Index of the last entry whose offset is `<= rel_offset`.
pub fn lookup_offset(entries: &[IndexEntry], rel_offset: u32) -> Option<usize> {
    entries
        .partition_point(|e| e.rel_offset <= rel_offset)
        .checked_sub(1)
}

/// Index of the last entry all of whose predecessors are older than `timestamp_us`.
pub fn lookup_time(entries: &[IndexEntry], timestamp_us: i64) -> Option<usize> {
    entries
        .partition_point(|e| e.max_timestamp_before_us < timestamp_us)
        .checked_sub(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_checkpoint() -> impl Strategy<Value = Checkpoint> {
        proptest::collection::vec((1u32..100, 1u32..5000, 0i64..1000), 0..50).prop_map(|steps| {
            let mut entries = Vec::new();
            let (mut rel, mut pos, mut ts) = (0u32, 0u32, i64::MIN);
            for (dr, dp, dt) in steps {
                entries.push(IndexEntry {
                    rel_offset: rel,
                    position: pos,
                    max_timestamp_before_us: ts,
                });
                rel += dr;
                pos += dp;
                ts = if ts == i64::MIN { dt } else { ts + dt };
            }
            Checkpoint {
                segment_base: 1000,
                data_bytes: u64::from(pos) + 1,
                next_offset: 1000 + u64::from(rel) + 1,
                max_timestamp_us: 5,
                entries,
            }
        })
    }

    proptest! {
        #[test]
        fn index_files_round_trip(cp in arb_checkpoint()) {
            let o = decode(IndexKind::Offset, &encode(IndexKind::Offset, &cp), 1000).unwrap();
            let t = decode(IndexKind::Time, &encode(IndexKind::Time, &cp), 1000).unwrap();
            prop_assert_eq!(merge(o, t).unwrap(), cp);
        }

        #[test]
        fn damaged_index_is_refused(cp in arb_checkpoint(), at in any::<usize>(), bit in 0u8..8) {
            let mut b = encode(IndexKind::Offset, &cp);
            let at = at % b.len();
            b[at] ^= 1 << bit;
            prop_assert!(decode(IndexKind::Offset, &b, 1000).is_none());
        }

        #[test]
        fn truncated_index_is_refused(cp in arb_checkpoint(), cut in 1usize..64) {
            let b = encode(IndexKind::Offset, &cp);
            let keep = b.len().saturating_sub(cut);
            prop_assert!(decode(IndexKind::Offset, &b[..keep], 1000).is_none());
        }
    }

    #[test]
    fn lookups_find_the_last_entry_at_or_before() {
        let e = |r, p, t| IndexEntry {
            rel_offset: r,
            position: p,
            max_timestamp_before_us: t,
        };
        let es = [e(0, 0, i64::MIN), e(10, 100, 50), e(20, 200, 70)];
        assert_eq!(lookup_offset(&es, 0), Some(0));
        assert_eq!(lookup_offset(&es, 15), Some(1));
        assert_eq!(lookup_offset(&es, 99), Some(2));
        assert_eq!(lookup_time(&es, 60), Some(1));
        assert_eq!(lookup_time(&es, 50), Some(0));
        assert_eq!(lookup_time(&es, 1000), Some(2));
        assert_eq!(lookup_offset(&[], 3), None);
    }
}
