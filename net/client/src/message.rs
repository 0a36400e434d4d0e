//! Message metadata and the idempotent-consumer helper (docs/semantics.md, "Message metadata"
//! and "Delivery guarantees").
//!
//! Every record carries an offset (unique in its partition), a timestamp, an optional key and
//! headers. The well-known headers below give the metadata users of other brokers expect;
//! [`ConsumerRecord::message_id`] is the identity an idempotent consumer deduplicates on: the
//! producer-assigned `message-id` header when there is one (it survives a non-idempotent
//! producer's duplicate append), else `topic/partition/offset` (the identity of the log record,
//! the same on every redelivery).

use std::collections::{HashSet, VecDeque};

use super::consumer::ConsumerRecord;
use super::producer::ProducerRecord;

/// Well-known header names (lower case, as HTTP/2 and Kafka Connect spell them).
pub mod headers {
    /// A producer-assigned unique id of the message.
    pub const MESSAGE_ID: &str = "message-id";
    /// Ties a reply (or any related message) to the message it belongs to.
    pub const CORRELATION_ID: &str = "correlation-id";
    /// MIME type of the value (`application/json`, ...).
    pub const CONTENT_TYPE: &str = "content-type";
}

impl ConsumerRecord {
    /// The first header named `name`.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|h| h.key == name)
            .map(|h| h.value.as_slice())
    }

    pub fn correlation_id(&self) -> Option<&[u8]> {
        self.header(headers::CORRELATION_ID)
    }

    pub fn content_type(&self) -> Option<&str> {
        self.header(headers::CONTENT_TYPE)
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The message's identity for deduplication (see the module doc).
    pub fn message_id(&self) -> Vec<u8> {
        match self.header(headers::MESSAGE_ID) {
            Some(id) => id.to_vec(),
            None => format!("{}/{}/{}", self.topic, self.partition, self.offset).into_bytes(),
        }
    }
}

impl ProducerRecord {
    pub fn correlation_id(self, id: impl Into<Vec<u8>>) -> Self {
        self.header(headers::CORRELATION_ID, id)
    }

    pub fn content_type(self, mime: &str) -> Self {
        self.header(headers::CONTENT_TYPE, mime)
    }

    /// Sets the `message-id` header (an application id, or [`new_message_id`]).
    pub fn message_id(self, id: impl Into<Vec<u8>>) -> Self {
        self.header(headers::MESSAGE_ID, id)
    }
}

/// A fresh 128-bit message id, as 32 hex digits: 64 bits keyed by the OS's randomness
/// (std's `RandomState`, seeded from the OS per process) over a process-wide counter, and 64
/// bits of clock and counter, so ids never repeat within a process and collide across
/// processes only by chance (2^-64).
pub fn new_message_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static KEYS: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut h = KEYS
        .get_or_init(std::collections::hash_map::RandomState::new)
        .build_hasher();
    h.write_u64(n);
    let time = shardline_format::now_us().cast_unsigned();
    format!("{:016x}{:016x}", h.finish(), time.rotate_left(20) ^ n)
}

/// The idempotent-consumer helper: remembers the last `capacity` message ids it let through,
/// and says whether a message is new. With at-least-once delivery, a redelivered message (after
/// a rebalance, a consumer crash before its commit, a seek) is recognised as long as it is
/// within the window; size the window to at least the records consumed between two commits.
/// The memory is bounded by `capacity` ids. It is process memory: to stay effectively-once
/// across a consumer crash, store [`ConsumerRecord::message_id`] with the side effect (e.g. a
/// unique key in the database the consumer writes to), or [`Deduplicator::restore`] the ids
/// the application persisted with its results.
#[derive(Debug, Clone)]
pub struct Deduplicator {
    capacity: usize,
    seen: HashSet<Vec<u8>>,
    order: VecDeque<Vec<u8>>,
}

impl Deduplicator {
    pub fn new(capacity: usize) -> Deduplicator {
        let capacity = capacity.max(1);
        Deduplicator {
            capacity,
            seen: HashSet::with_capacity(capacity),
            order: VecDeque::with_capacity(capacity),
        }
    }

    /// True the first time `id` is offered within the window; false for a duplicate.
    pub fn first_time(&mut self, id: &[u8]) -> bool {
        if self.seen.contains(id) {
            return false;
        }
        if self.order.len() >= self.capacity
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        self.seen.insert(id.to_vec());
        self.order.push_back(id.to_vec());
        debug_assert!(self.seen.len() == self.order.len() && self.order.len() <= self.capacity);
        true
    }

    /// [`Deduplicator::first_time`] of the record's [`ConsumerRecord::message_id`].
    pub fn is_new(&mut self, record: &ConsumerRecord) -> bool {
        self.first_time(&record.message_id())
    }

    /// Ids the window holds, oldest first (to persist with the application's state).
    pub fn ids(&self) -> impl Iterator<Item = &[u8]> {
        self.order.iter().map(Vec::as_slice)
    }

    /// Refills the window from persisted ids (oldest first).
    pub fn restore<'a>(&mut self, ids: impl IntoIterator<Item = &'a [u8]>) {
        for id in ids {
            self.first_time(id);
        }
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;

    fn record(offset: u64, id: Option<&str>) -> ConsumerRecord {
        ConsumerRecord {
            topic: Arc::from("t"),
            partition: 2,
            offset,
            timestamp_us: 1,
            key: None,
            value: Vec::new(),
            headers: id
                .map(|i| {
                    vec![shardline_format::Header {
                        key: headers::MESSAGE_ID.into(),
                        value: i.as_bytes().to_vec(),
                    }]
                })
                .unwrap_or_default(),
        }
    }

    #[test]
    fn message_ids_prefer_the_producer_header() {
        assert_eq!(record(7, None).message_id(), b"t/2/7".to_vec());
        assert_eq!(record(7, Some("abc")).message_id(), b"abc".to_vec());
        let a = new_message_id();
        assert_eq!(a.len(), 32);
        assert_ne!(a, new_message_id());
    }

    proptest! {
        /// An id never offered before is new; an id accepted fewer than `capacity` acceptances
        /// ago is a duplicate; memory never exceeds the capacity.
        #[test]
        fn dedup_rejects_duplicates_within_its_window(ids in proptest::collection::vec(0u8..40, 1..300), capacity in 1usize..50) {
            let mut d = Deduplicator::new(capacity);
            let mut accepted: Vec<u8> = Vec::new();
            let mut offered: Vec<u8> = Vec::new();
            for id in ids {
                let new = d.first_time(&[id]);
                if !offered.contains(&id) {
                    prop_assert!(new, "unseen id {id} refused");
                }
                if let Some(at) = accepted.iter().rposition(|a| *a == id)
                    && accepted.len() - at <= capacity
                {
                    prop_assert!(!new, "duplicate {id} accepted within the window");
                }
                if new {
                    accepted.push(id);
                }
                offered.push(id);
                prop_assert!(d.len() <= capacity);
            }
        }
    }
}
