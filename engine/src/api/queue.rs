//! Work-queue API types: what a receive returns, how to receive, the figures of a queue
//! partition, and the receipt that names one delivery.

use std::time::Duration;

use serde::Serialize;

use crate::batch::{BatchHeader, Header, Record};

/// Header a producer sets to give a message a priority: ASCII decimal, 0 = lowest.
pub const PRIORITY_HEADER: &str = "priority";
/// Header a producer sets to delay a message: ASCII decimal milliseconds after the message's
/// timestamp before its first delivery (docs/semantics.md, "Delayed messages and expiry").
pub const DELAY_HEADER: &str = "delay-ms";
/// Header a producer sets to give a message a time to live: ASCII decimal milliseconds after
/// its timestamp; a message not acked by then is dead-lettered with reason `expired`.
pub const TTL_HEADER: &str = "ttl-ms";
/// Headers the dead-letter queue adds to the original ones.
pub const DLQ_REASON_HEADER: &str = "x-dlq-reason";
pub const DLQ_DELIVERIES_HEADER: &str = "x-dlq-delivery-count";
pub const DLQ_TOPIC_HEADER: &str = "x-dlq-original-topic";
pub const DLQ_PARTITION_HEADER: &str = "x-dlq-original-partition";
pub const DLQ_OFFSET_HEADER: &str = "x-dlq-original-offset";

/// Names one delivery of one message: a lease is valid only for the delivery it was given for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Receipt {
    pub offset: u64,
    /// 1 for the first delivery.
    pub attempt: u32,
}

/// Why an ack, nack or visibility change was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseError {
    /// The offset is done (acked or dead-lettered) or below the floor.
    Done,
    /// The message is not in flight under this receipt: its lease expired, it was nacked, or
    /// it was delivered again since.
    NotLeased,
    /// The offset was never delivered (beyond what the queue has looked at).
    Unknown,
}

/// One delivery of a queue message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueMessage {
    pub partition: u32,
    pub offset: u64,
    /// Deliveries so far, this one included (1 on the first). Peek shows past deliveries.
    pub attempt: u32,
    pub timestamp_us: i64,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: Vec<Header>,
    pub priority: u8,
}

impl QueueMessage {
    pub(crate) fn from_record(
        partition: u32,
        r: Receipt,
        h: &BatchHeader,
        rec: &Record,
        levels: u8,
    ) -> Self {
        let priority = rec
            .headers
            .iter()
            .find(|x| x.key == PRIORITY_HEADER)
            .and_then(|x| std::str::from_utf8(&x.value).ok())
            .and_then(|s| s.trim().parse::<u8>().ok())
            .unwrap_or(0)
            .min(levels.saturating_sub(1));
        QueueMessage {
            partition,
            offset: r.offset,
            attempt: r.attempt,
            timestamp_us: h
                .first_timestamp_us
                .wrapping_add(rec.timestamp_delta_us as i64),
            key: rec.key.clone(),
            value: rec.value.clone(),
            headers: rec.headers.clone(),
            priority,
        }
    }

    /// What acks, nacks or extends this delivery.
    pub fn receipt(&self) -> Receipt {
        Receipt {
            offset: self.offset,
            attempt: self.attempt,
        }
    }

    /// The value of the first header named `name`.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|h| h.key == name)
            .map(|h| h.value.as_slice())
    }
}

/// How to receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceiveOptions {
    pub max_messages: usize,
    /// `None`: the queue's setting.
    pub visibility_timeout_ms: Option<u64>,
    /// Long poll: wait up to this long when nothing is available.
    pub max_wait: Duration,
}

impl Default for ReceiveOptions {
    fn default() -> Self {
        ReceiveOptions {
            max_messages: 10,
            visibility_timeout_ms: None,
            max_wait: Duration::ZERO,
        }
    }
}

/// Live state of one queue partition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct QueuePartitionStats {
    pub partition: u32,
    /// Messages waiting for a consumer (ready, delayed by a nack or backoff, or not yet
    /// scanned), in-flight ones excluded.
    pub depth: u64,
    pub ready: u64,
    pub delayed: u64,
    pub in_flight: u64,
    /// Age of the oldest message not yet acked or dead-lettered (0 if none).
    pub oldest_age_ms: u64,
    /// Counters since the partition was opened (this process).
    pub acked: u64,
    pub nacked: u64,
    pub expired: u64,
    pub dead_lettered: u64,
    pub dropped: u64,
    pub lost: u64,
    /// Deliveries after the first (nacked or expired messages handed out again).
    pub redelivered: u64,
    /// Messages discarded by purges (docs/semantics.md, "Purging a queue").
    pub purged: u64,
    /// Every offset below this is acked or dead-lettered.
    pub ack_floor: u64,
    pub high_watermark: u64,
}

/// Result of each receipt of an ack, nack or visibility change, in request order.
pub type LeaseResults = Vec<std::result::Result<(), LeaseError>>;

/// What a purge did to one partition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PurgedPartition {
    pub partition: u32,
    /// Messages discarded (not yet acked or dead-lettered when the purge ran).
    pub purged: u64,
    /// Every offset below this is done now; messages from here on are delivered as usual.
    pub purged_until: u64,
}
