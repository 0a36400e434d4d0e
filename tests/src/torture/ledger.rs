//! What the verifying producers sent and what the broker acknowledged, and the checks that
//! hold it to it.
//!
//! Every record value is a pure function of `(producer, partition, seq)` ([`value`]), so the
//! harness keeps no payloads: a record read back is byte-identical iff it equals the value
//! rebuilt from the identity in its first 24 bytes. Per partition the ledger keeps one entry per
//! acknowledged batch (offset range -> producer and first sequence number).

use std::collections::{BTreeMap, HashMap};

use rand::{RngExt, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

const MAGIC: &[u8; 4] = b"TRT1";
/// Magic, producer, partition, sequence.
const IDENTITY_BYTES: usize = 4 + 4 + 4 + 8;

/// The bytes of record `seq` of `producer` on `partition`: 20..=403 bytes, the tail derived
/// from a seeded generator so that every byte is checkable.
pub fn value(producer: u32, partition: u32, seq: u64) -> Vec<u8> {
    let seed = (u64::from(producer) << 40) ^ (u64::from(partition) << 20) ^ seq;
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let tail = (seq.wrapping_mul(7919) % 384) as usize;
    let mut v = Vec::with_capacity(IDENTITY_BYTES + tail);
    v.extend_from_slice(MAGIC);
    v.extend_from_slice(&producer.to_le_bytes());
    v.extend_from_slice(&partition.to_le_bytes());
    v.extend_from_slice(&seq.to_le_bytes());
    v.extend((0..tail).map(|_| rng.random::<u8>()));
    v
}

/// The identity a value claims, if it has the shape of one.
pub fn identity(v: &[u8]) -> Option<(u32, u32, u64)> {
    if v.len() < IDENTITY_BYTES || &v[..4] != MAGIC {
        return None;
    }
    let u32_at = |at: usize| u32::from_le_bytes([v[at], v[at + 1], v[at + 2], v[at + 3]]);
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&v[12..20]);
    Some((u32_at(4), u32_at(8), u64::from_le_bytes(seq)))
}

/// One acknowledged batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acked {
    pub last_offset: u64,
    pub producer: u32,
    pub seq_base: u64,
}

/// Everything acknowledged on one partition, by base offset.
#[derive(Debug, Default)]
pub struct PartitionLedger {
    pub acked: BTreeMap<u64, Acked>,
    pub acked_records: u64,
    /// Records sent whose outcome is unknown (error or timeout): they may or may not be there.
    pub unknown_records: u64,
}

/// An invariant violation, with enough context to debug it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation(pub String);

/// Checks one partition's records, read in offset order, against the ledger. Feed it records
/// with [`Scan::record`], then call [`Scan::finish`] with the log end.
pub struct Scan<'a> {
    partition: u32,
    next_offset: Option<u64>,
    /// Highest sequence seen per producer (order and duplicates).
    last_seq: HashMap<u32, u64>,
    /// The acknowledged batch being matched, if the scan is inside one.
    pending: std::iter::Peekable<std::collections::btree_map::Range<'a, u64, Acked>>,
    violations: Vec<Violation>,
    records: u64,
    /// Acknowledged records found, byte-identical.
    acked_found: u64,
}

/// Most violations one scan lists (the count goes on).
const VIOLATIONS_LISTED_MAX: usize = 20;

impl<'a> Scan<'a> {
    /// A scan from `from` (the log start, or a verified point; acknowledged batches below it
    /// are not checked), knowing each producer's highest sequence below `from`.
    pub fn new(
        partition: u32,
        ledger: &'a PartitionLedger,
        from: u64,
        last_seq: HashMap<u32, u64>,
    ) -> Scan<'a> {
        Scan {
            partition,
            next_offset: None,
            last_seq,
            pending: ledger.acked.range(from..).peekable(),
            violations: Vec::new(),
            records: 0,
            acked_found: 0,
        }
    }

    fn violation(&mut self, text: String) {
        if self.violations.len() < VIOLATIONS_LISTED_MAX {
            self.violations
                .push(Violation(format!("partition {}: {text}", self.partition)));
        }
    }

    /// One record read back at `offset`.
    pub fn record(&mut self, offset: u64, v: &[u8]) {
        self.records += 1;
        if let Some(expected) = self.next_offset
            && offset != expected
        {
            self.violation(format!(
                "offset {offset} follows {} (gap or reorder)",
                expected - 1
            ));
        }
        self.next_offset = Some(offset + 1);
        let Some((producer, partition, seq)) = identity(v) else {
            self.violation(format!("offset {offset}: value is not a harness record"));
            return;
        };
        if partition != self.partition || v != value(producer, partition, seq).as_slice() {
            self.violation(format!(
                "offset {offset}: bytes differ from producer {producer} seq {seq} on partition \
                 {partition}"
            ));
        }
        match self.last_seq.insert(producer, seq) {
            Some(prev) if prev >= seq => self.violation(format!(
                "offset {offset}: producer {producer} seq {seq} after seq {prev} (duplicate or \
                 reorder)"
            )),
            _ => {}
        }
        // Match against acknowledged batches.
        while let Some((base, a)) = self.pending.peek() {
            let (base, a) = (**base, **a);
            if offset < base {
                break;
            }
            if offset > a.last_offset {
                self.pending.next();
                self.violation(format!(
                    "acknowledged offsets {base}..={} (producer {} seq {}) skipped",
                    a.last_offset, a.producer, a.seq_base
                ));
                continue;
            }
            let want = a.seq_base + (offset - base);
            if producer != a.producer || seq != want {
                self.violation(format!(
                    "offset {offset}: acknowledged as producer {} seq {want}, holds producer \
                     {producer} seq {seq}",
                    a.producer
                ));
            } else {
                self.acked_found += 1;
            }
            if offset == a.last_offset {
                self.pending.next();
            }
            break;
        }
    }

    /// Ends the scan at `log_end` (exclusive): the records must have reached the log end, and
    /// every acknowledged batch from the scan's start must have been seen whole.
    pub fn finish(mut self, log_end: u64) -> ScanResult {
        if let Some(next) = self.next_offset
            && next != log_end
        {
            self.violation(format!("scan ended at {next}, log end is {log_end}"));
        }
        let missing: Vec<(u64, Acked)> = self.pending.by_ref().map(|(b, a)| (*b, *a)).collect();
        for (base, a) in missing {
            self.violation(format!(
                "acknowledged offsets {base}..={} (producer {} seq {}) missing; log end {log_end}",
                a.last_offset, a.producer, a.seq_base
            ));
        }
        ScanResult {
            violations: self.violations,
            records: self.records,
            acked_found: self.acked_found,
            last_seq: self.last_seq,
        }
    }
}

/// What a finished scan found.
#[derive(Debug)]
pub struct ScanResult {
    pub violations: Vec<Violation>,
    pub records: u64,
    pub acked_found: u64,
    /// Highest sequence per producer (where the next scan may continue).
    pub last_seq: HashMap<u32, u64>,
}

impl ScanResult {
    pub fn failed(&self) -> bool {
        !self.violations.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger_with(batches: &[(u64, u64, u32, u64)]) -> PartitionLedger {
        let mut l = PartitionLedger::default();
        for &(base, last, producer, seq_base) in batches {
            l.acked.insert(
                base,
                Acked {
                    last_offset: last,
                    producer,
                    seq_base,
                },
            );
        }
        l
    }

    #[test]
    fn values_round_trip_their_identity() {
        for seq in [0u64, 1, 77, 1 << 40] {
            let v = value(3, 9, seq);
            assert_eq!(identity(&v), Some((3, 9, seq)));
            assert_eq!(v, value(3, 9, seq));
            assert_ne!(v, value(3, 9, seq + 1));
        }
        assert_eq!(identity(b"short"), None);
    }

    #[test]
    fn a_complete_log_passes() {
        let l = ledger_with(&[(0, 2, 1, 0), (3, 3, 2, 0), (5, 6, 1, 3)]);
        let mut s = Scan::new(0, &l, 0, HashMap::new());
        let recs = [(1u32, 0u64), (1, 1), (1, 2), (2, 0), (2, 1), (1, 3), (1, 4)];
        for (o, (p, q)) in recs.iter().enumerate() {
            s.record(o as u64, &value(*p, 0, *q));
        }
        let s = s.finish(7);
        assert!(!s.failed(), "{:?}", s.violations);
        assert_eq!(s.acked_found, 6);
    }

    #[test]
    fn lost_acked_data_is_reported() {
        let l = ledger_with(&[(0, 1, 1, 0), (2, 3, 1, 2)]);
        let mut s = Scan::new(0, &l, 0, HashMap::new());
        s.record(0, &value(1, 0, 0));
        s.record(1, &value(1, 0, 1));
        let s = s.finish(2);
        assert!(s.failed());
        assert!(s.violations[0].0.contains("missing"), "{:?}", s.violations);
    }

    #[test]
    fn corrupt_duplicate_and_reordered_records_are_reported() {
        let l = ledger_with(&[]);
        let mut bad = value(1, 0, 5);
        let last = bad.len() - 1;
        bad[last] ^= 1;
        for (recs, what) in [
            (vec![value(1, 0, 0), bad], "bytes differ"),
            (vec![value(1, 0, 4), value(1, 0, 4)], "duplicate"),
            (vec![value(1, 0, 4), value(1, 0, 3)], "reorder"),
            (vec![value(1, 1, 0)], "bytes differ"),
        ] {
            let mut s = Scan::new(0, &l, 0, HashMap::new());
            for (o, v) in recs.iter().enumerate() {
                s.record(o as u64, v);
            }
            let n = recs.len() as u64;
            let s = s.finish(n);
            assert!(
                s.violations.iter().any(|v| v.0.contains(what)),
                "{what}: {:?}",
                s.violations
            );
        }
    }

    #[test]
    fn an_acknowledged_offset_holding_other_data_is_reported() {
        let l = ledger_with(&[(0, 0, 1, 7)]);
        let mut s = Scan::new(0, &l, 0, HashMap::new());
        s.record(0, &value(1, 0, 8));
        let s = s.finish(1);
        assert!(s.violations.iter().any(|v| v.0.contains("acknowledged as")));
    }

    #[test]
    fn gaps_are_reported() {
        let l = ledger_with(&[]);
        let mut s = Scan::new(0, &l, 0, HashMap::new());
        s.record(0, &value(1, 0, 0));
        s.record(2, &value(1, 0, 1));
        let s = s.finish(3);
        assert!(s.violations.iter().any(|v| v.0.contains("gap")));
    }
}
