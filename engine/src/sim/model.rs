//! The simulator's model of one partition: which batch the log holds at which offset (as the
//! producers sent it), the idempotent batches' offsets, and what was acknowledged durable.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::batch::BatchHeader;
use crate::shard::ProduceAck;

/// One batch the log took.
#[derive(Clone)]
pub(super) struct Entry {
    pub(super) bytes: Bytes,
    pub(super) next_offset: u64,
    /// (producer id, base sequence) of an idempotent batch.
    pub(super) producer: Option<(u64, u32)>,
}

#[derive(Default)]
pub(super) struct Model {
    /// Batches by base offset; dense: each entry's `next_offset` is the next key.
    pub(super) batches: BTreeMap<u64, Entry>,
    pub(super) next_offset: u64,
    /// Idempotent batches in the log: (producer id, base sequence) -> offsets.
    pub(super) idempotent: BTreeMap<(u64, u32), ProduceAck>,
    /// One past the highest offset acknowledged durable (ever; it must survive every crash).
    pub(super) durable_acked_end: u64,
}

impl Model {
    pub(super) fn append(
        &mut self,
        base: u64,
        last: u64,
        bytes: Bytes,
        producer: Option<(u64, u32)>,
    ) {
        let next_offset = last + 1;
        self.batches.insert(
            base,
            Entry {
                bytes,
                next_offset,
                producer,
            },
        );
        if let Some(p) = producer {
            self.idempotent.insert(
                p,
                ProduceAck {
                    base_offset: base,
                    last_offset: last,
                },
            );
        }
        self.next_offset = next_offset;
    }

    /// The log now ends at `end` (a crash or a repair lost the rest). `Err` if `end` is not a
    /// batch boundary of what was appended.
    pub(super) fn truncate(&mut self, end: u64) -> Result<(), String> {
        if end > self.next_offset {
            return Err(format!(
                "the log ends at {end}, beyond everything appended ({})",
                self.next_offset
            ));
        }
        if end < self.next_offset && !self.batches.contains_key(&end) {
            return Err(format!("the log ends at {end}, inside a batch"));
        }
        let lost = self.batches.split_off(&end);
        for e in lost.values() {
            if let Some(p) = e.producer {
                self.idempotent.remove(&p);
            }
        }
        self.next_offset = end;
        Ok(())
    }

    /// Checks one batch served at `base` against what was appended there.
    pub(super) fn check_batch(&self, batch: &[u8]) -> Result<BatchHeader, String> {
        let h = BatchHeader::parse(batch).map_err(|e| format!("unparsable batch: {e}"))?;
        let Some(e) = self.batches.get(&h.base_offset) else {
            return Err(format!(
                "a batch at offset {} that was never appended there",
                h.base_offset
            ));
        };
        if e.next_offset != h.next_offset() {
            return Err(format!(
                "batch at {} ends at {}, appended ending at {}",
                h.base_offset,
                h.next_offset(),
                e.next_offset
            ));
        }
        // The base offset (bytes 0..8) is the log's; everything after is the producer's.
        if batch.len() != e.bytes.len() || batch[8..] != e.bytes[8..] {
            return Err(format!(
                "batch at {} differs from the batch appended there",
                h.base_offset
            ));
        }
        Ok(h)
    }
}
