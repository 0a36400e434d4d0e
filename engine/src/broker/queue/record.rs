//! Records of a queue partition's ack log (docs/storage.md, "Queue ack log"). Each is the value
//! of one record in an ordinary record batch of the internal partition log `queue-acks/`, so
//! the batch CRC, group commit and recovery are the engine's own. Little-endian throughout:
//!
//! ```text
//!  kind 1 Delivered : u8 kind | u64 offset | u32 attempt                     (13 bytes)
//!  kind 2 Acked     : u8 kind | u64 offset                                   ( 9 bytes)
//!  kind 3 Nacked    : u8 kind | u64 offset | u32 attempt | i64 ready_at_ms   (21 bytes)
//!  kind 4 Dead      : u8 kind | u64 offset                                   ( 9 bytes)
//!  kind 5 Snapshot  : u8 kind | u64 floor | u64 scanned | u32 count | count x fact
//!         fact      : u64 offset | u8 tag (0 done, 1 delivered) | u32 attempts | i64 ready_at_ms
//! ```
//! Replay applies records in log order; a Snapshot replaces everything before it.

use super::state::{Known, Snapshot};
use crate::error::{Error, Result};

const DELIVERED: u8 = 1;
const ACKED: u8 = 2;
const NACKED: u8 = 3;
const DEAD: u8 = 4;
const SNAPSHOT: u8 = 5;
const FACT_BYTES: usize = 21;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckRecord {
    Delivered {
        offset: u64,
        attempt: u32,
    },
    Acked {
        offset: u64,
    },
    Nacked {
        offset: u64,
        attempt: u32,
        ready_at_ms: i64,
    },
    Dead {
        offset: u64,
    },
    Snapshot(Snapshot),
}

impl AckRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(24);
        match self {
            AckRecord::Delivered { offset, attempt } => {
                v.push(DELIVERED);
                v.extend_from_slice(&offset.to_le_bytes());
                v.extend_from_slice(&attempt.to_le_bytes());
            }
            AckRecord::Acked { offset } => {
                v.push(ACKED);
                v.extend_from_slice(&offset.to_le_bytes());
            }
            AckRecord::Nacked {
                offset,
                attempt,
                ready_at_ms,
            } => {
                v.push(NACKED);
                v.extend_from_slice(&offset.to_le_bytes());
                v.extend_from_slice(&attempt.to_le_bytes());
                v.extend_from_slice(&ready_at_ms.to_le_bytes());
            }
            AckRecord::Dead { offset } => {
                v.push(DEAD);
                v.extend_from_slice(&offset.to_le_bytes());
            }
            AckRecord::Snapshot(Snapshot {
                floor,
                scanned,
                facts,
            }) => {
                v.reserve(21 + facts.len() * FACT_BYTES);
                v.push(SNAPSHOT);
                v.extend_from_slice(&floor.to_le_bytes());
                v.extend_from_slice(&scanned.to_le_bytes());
                v.extend_from_slice(&(facts.len() as u32).to_le_bytes());
                for (o, k) in facts {
                    v.extend_from_slice(&o.to_le_bytes());
                    let (tag, attempts, ready_at_ms) = match k {
                        Known::Done => (0u8, 0u32, 0i64),
                        Known::Delivered {
                            attempts,
                            ready_at_ms,
                        } => (1, *attempts, *ready_at_ms),
                    };
                    v.push(tag);
                    v.extend_from_slice(&attempts.to_le_bytes());
                    v.extend_from_slice(&ready_at_ms.to_le_bytes());
                }
            }
        }
        v
    }

    pub fn decode(b: &[u8]) -> Result<AckRecord> {
        let mut r = Reader { b, at: 0 };
        let kind = r.u8()?;
        let rec = match kind {
            DELIVERED => AckRecord::Delivered {
                offset: r.u64()?,
                attempt: r.u32()?,
            },
            ACKED => AckRecord::Acked { offset: r.u64()? },
            NACKED => AckRecord::Nacked {
                offset: r.u64()?,
                attempt: r.u32()?,
                ready_at_ms: r.u64()?.cast_signed(),
            },
            DEAD => AckRecord::Dead { offset: r.u64()? },
            SNAPSHOT => {
                let floor = r.u64()?;
                let scanned = r.u64()?;
                let count = r.u32()? as usize;
                // Checked before allocating: the count must fit the bytes that are there.
                if count > (b.len() - r.at) / FACT_BYTES {
                    return Err(corrupt(format!("snapshot claims {count} facts")));
                }
                let mut facts = Vec::with_capacity(count);
                for _ in 0..count {
                    let o = r.u64()?;
                    let tag = r.u8()?;
                    let attempts = r.u32()?;
                    let ready_at_ms = r.u64()?.cast_signed();
                    let k = match tag {
                        // One encoding per fact: a done fact carries zeros.
                        0 if attempts == 0 && ready_at_ms == 0 => Known::Done,
                        0 => return Err(corrupt(format!("done fact at {o} with counts"))),
                        1 => Known::Delivered {
                            attempts,
                            ready_at_ms,
                        },
                        t => return Err(corrupt(format!("fact tag {t}"))),
                    };
                    facts.push((o, k));
                }
                AckRecord::Snapshot(Snapshot {
                    floor,
                    scanned,
                    facts,
                })
            }
            k => return Err(corrupt(format!("record kind {k}"))),
        };
        if r.at != b.len() {
            return Err(corrupt(format!("{} trailing bytes", b.len() - r.at)));
        }
        Ok(rec)
    }
}

fn corrupt(reason: String) -> Error {
    Error::CorruptLog {
        path: "queue ack log".into(),
        reason,
    }
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N]> {
        let end = self.at.checked_add(N).filter(|e| *e <= self.b.len());
        let Some(end) = end else {
            return Err(corrupt(format!("record cut at byte {}", self.at)));
        };
        let mut out = [0u8; N];
        out.copy_from_slice(&self.b[self.at..end]);
        self.at = end;
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take::<1>()?[0])
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn known() -> impl Strategy<Value = Known> {
        prop_oneof![
            Just(Known::Done),
            (any::<u32>(), any::<i64>()).prop_map(|(attempts, ready_at_ms)| Known::Delivered {
                attempts,
                ready_at_ms
            }),
        ]
    }

    fn record() -> impl Strategy<Value = AckRecord> {
        prop_oneof![
            (any::<u64>(), any::<u32>())
                .prop_map(|(offset, attempt)| AckRecord::Delivered { offset, attempt }),
            any::<u64>().prop_map(|offset| AckRecord::Acked { offset }),
            (any::<u64>(), any::<u32>(), any::<i64>()).prop_map(|(offset, attempt, r)| {
                AckRecord::Nacked {
                    offset,
                    attempt,
                    ready_at_ms: r,
                }
            }),
            any::<u64>().prop_map(|offset| AckRecord::Dead { offset }),
            (
                any::<u64>(),
                any::<u64>(),
                proptest::collection::vec((any::<u64>(), known()), 0..20)
            )
                .prop_map(|(floor, scanned, facts)| AckRecord::Snapshot(Snapshot {
                    floor,
                    scanned,
                    facts
                })),
        ]
    }

    /// Found by the fuzzer (`queue_ack_record`): a done fact with non-zero fields decoded, and
    /// re-encoded differently. Such bytes are now refused.
    #[test]
    fn done_facts_with_counts_are_refused() {
        let mut b = AckRecord::Snapshot(Snapshot {
            floor: 0,
            scanned: 9,
            facts: vec![(3, Known::Done)],
        })
        .encode();
        let n = b.len();
        b[n - 12] = 7; // attempts of the done fact
        assert!(AckRecord::decode(&b).is_err());
    }

    proptest! {
        #[test]
        fn records_round_trip(r in record()) {
            prop_assert_eq!(AckRecord::decode(&r.encode()).unwrap(), r);
        }

        #[test]
        fn garbage_is_an_error_not_a_panic(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = AckRecord::decode(&b);
        }

        #[test]
        fn cut_records_are_refused(r in record(), cut in 1usize..30) {
            let b = r.encode();
            let n = b.len().saturating_sub(cut);
            prop_assert!(AckRecord::decode(&b[..n]).is_err());
        }
    }
}
