//! Which partition a produced record goes to.
//!
//! - **Explicit**: the caller names the partition.
//! - **Keyed**: `crc32c(key) % partitions`, where `crc32c` is CRC-32C (Castagnoli, reflected
//!   polynomial `0x82F63B78`, initial value and final xor `0xFFFFFFFF`; the `crc32c` crate, the
//!   same checksum the batch format uses). Stable across builds, platforms and client languages:
//!   every record with the same key lands in the same partition while the partition count stays.
//!   `crc32c(b"") = 0`, so the empty key goes to partition 0.
//! - **Keyless**: round-robin *per batch* ("sticky"): keyless records of a topic go to one
//!   partition until its batch is closed (full, or taken for sending), then to the next. Batches
//!   stay large under light load, and load still spreads evenly over time. Each producer starts
//!   at a random partition so that producers started together do not all hit partition 0.

/// Partition of a keyed record: `crc32c(key) % partitions`. `partitions` must be positive.
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    assert!(partitions > 0, "a topic has at least one partition");
    crc32c::crc32c(key) % partitions
}

/// How the producer picks a record's partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PartitionChoice {
    Explicit(u32),
    /// `crc32c` of the key (computed once, when the record is accepted).
    KeyHash(u32),
    Sticky,
}

impl PartitionChoice {
    pub(crate) fn for_record(partition: Option<u32>, key: Option<&[u8]>) -> PartitionChoice {
        match (partition, key) {
            (Some(p), _) => PartitionChoice::Explicit(p),
            (None, Some(k)) => PartitionChoice::KeyHash(crc32c::crc32c(k)),
            (None, None) => PartitionChoice::Sticky,
        }
    }
}

/// Round-robin cursor of one topic's keyless records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sticky {
    current: u32,
}

impl Sticky {
    pub(crate) fn new(start: u32) -> Sticky {
        Sticky { current: start }
    }

    /// The partition keyless records go to now.
    pub(crate) fn current(&self, partitions: u32) -> u32 {
        self.current % partitions.max(1)
    }

    /// The batch of `partition` was closed: if it was the sticky one, move to the next.
    pub(crate) fn batch_closed(&mut self, partition: u32, partitions: u32) {
        if partition == self.current(partitions) {
            self.current = (self.current(partitions) + 1) % partitions.max(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_hash_is_crc32c_mod_partitions() {
        // Known CRC-32C check value: crc32c("123456789") = 0xE3069283.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(partition_for_key(b"123456789", 1000), 0xE306_9283 % 1000);
        assert_eq!(partition_for_key(b"", 7), 0);
        for p in 1..20 {
            assert!(partition_for_key(b"user-42", p) < p);
        }
        assert_eq!(
            PartitionChoice::for_record(None, Some(b"123456789")),
            PartitionChoice::KeyHash(0xE306_9283)
        );
        assert_eq!(
            PartitionChoice::for_record(Some(3), Some(b"k")),
            PartitionChoice::Explicit(3),
            "an explicit partition wins over the key"
        );
    }

    #[test]
    fn keys_spread_over_partitions() {
        let mut counts = [0u32; 8];
        for i in 0..8000 {
            counts[partition_for_key(format!("key-{i}").as_bytes(), 8) as usize] += 1;
        }
        for c in counts {
            assert!((800..1200).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn sticky_moves_on_only_when_its_batch_closes() {
        let mut s = Sticky::new(5);
        assert_eq!(s.current(4), 1);
        s.batch_closed(3, 4);
        assert_eq!(
            s.current(4),
            1,
            "another partition's batch does not move it"
        );
        s.batch_closed(1, 4);
        assert_eq!(s.current(4), 2);
        s.batch_closed(2, 4);
        s.batch_closed(3, 4);
        assert_eq!(s.current(4), 0, "wraps around");
    }
}
