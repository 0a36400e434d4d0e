//! The producer's record accumulator: per-partition batching, sans-IO (`now` is passed in).
//!
//! ```text
//!  partition (topic, p):  [ closed batch ][ closed batch ][ open batch <- append ]
//!                           ^ front: the next to send; sent when no batch of this partition is
//!                             in flight, it is closed (full) or its linger expired (or a flush
//!                             is pending), and its retry time (if any) has come.
//! ```
//! Rules:
//! - A record joins the partition's open batch unless that would take the batch above
//!   `batch_bytes_max`; then the open batch is closed and a new one starts. A batch that reaches
//!   the limit is closed at once (sent without waiting for its linger). A record larger than the
//!   limit travels alone.
//! - **One batch in flight per partition**: the next is sent only after the previous one
//!   completed (or was put back for a retry, at the front). This is what keeps per-partition
//!   order through retries.
//! - Every byte of every record is counted from `append` until its batch completes
//!   (`buffered_bytes`); the producer stops accepting records above `buffer_bytes_max`.
//! - Records get increasing sequence numbers; `oldest_seq` is the smallest not yet completed,
//!   which is how a flush knows that everything sent before it is done.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use shardline_format::Header;

use super::partitioner::{PartitionChoice, Sticky};

/// Batch header bytes, as in `shardline_format::HEADER_BYTES`.
const BATCH_HEADER_BYTES: usize = shardline_format::HEADER_BYTES;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AccumulatorConfig {
    pub(crate) linger: Duration,
    pub(crate) batch_bytes_max: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct TopicPartition {
    pub(crate) topic: Arc<str>,
    pub(crate) partition: u32,
}

/// A record waiting to be sent; `token` is how its sender learns the outcome.
#[derive(Debug)]
pub(crate) struct PendingRecord<T> {
    pub(crate) timestamp_us: i64,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) value: Vec<u8>,
    pub(crate) headers: Vec<Header>,
    pub(crate) token: T,
}

impl<T> PendingRecord<T> {
    /// Encoded size estimate, the same formula as `BatchBuilder::bytes_estimate`.
    pub(crate) fn bytes(&self) -> usize {
        48 + self.key.as_ref().map_or(0, Vec::len)
            + self.value.len()
            + self
                .headers
                .iter()
                .map(|h| h.key.len() + h.value.len() + 16)
                .sum::<usize>()
    }
}

#[derive(Debug)]
pub(crate) struct Batch<T> {
    pub(crate) tp: TopicPartition,
    pub(crate) records: Vec<PendingRecord<T>>,
    /// Estimated encoded bytes, header included.
    pub(crate) bytes: usize,
    pub(crate) first_seq: u64,
    pub(crate) created: Instant,
    /// Times this batch was sent.
    pub(crate) attempts: u32,
    /// The encoded batch, kept across retries so a retry sends the same bytes.
    pub(crate) encoded: Option<Bytes>,
    closed: bool,
}

#[derive(Debug)]
struct PartitionQueue<T> {
    batches: VecDeque<Batch<T>>,
    in_flight: bool,
    retry_at: Option<Instant>,
}

#[derive(Debug)]
pub(crate) struct Accumulator<T> {
    config: AccumulatorConfig,
    queues: HashMap<TopicPartition, PartitionQueue<T>>,
    /// Keyless round-robin per topic, with the topic's partition count.
    sticky: HashMap<Arc<str>, (Sticky, u32)>,
    sticky_start: u32,
    buffered_bytes: usize,
    /// `first_seq` of every batch not yet completed.
    outstanding: BTreeSet<u64>,
    in_flight: usize,
}

impl<T> Accumulator<T> {
    /// `sticky_start`: the partition keyless records of each topic start at (random per
    /// producer).
    pub(crate) fn new(config: AccumulatorConfig, sticky_start: u32) -> Accumulator<T> {
        Accumulator {
            config,
            queues: HashMap::new(),
            sticky: HashMap::new(),
            sticky_start,
            buffered_bytes: 0,
            outstanding: BTreeSet::new(),
            in_flight: 0,
        }
    }

    /// Bytes of records accepted and not yet completed.
    pub(crate) fn buffered_bytes(&self) -> usize {
        self.buffered_bytes
    }

    /// Batches sent and not completed.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Nothing queued, nothing in flight.
    pub(crate) fn is_empty(&self) -> bool {
        self.outstanding.is_empty()
    }

    /// The smallest sequence number of a record not yet completed.
    pub(crate) fn oldest_seq(&self) -> Option<u64> {
        self.outstanding.first().copied()
    }

    /// The partition a record goes to. `partitions` is the topic's partition count (positive);
    /// an explicit partition is returned as is (the caller checks its range).
    pub(crate) fn partition_for(
        &mut self,
        topic: &Arc<str>,
        partitions: u32,
        choice: PartitionChoice,
    ) -> u32 {
        match choice {
            PartitionChoice::Explicit(p) => p,
            PartitionChoice::KeyHash(h) => h % partitions.max(1),
            PartitionChoice::Sticky => {
                let start = self.sticky_start;
                let entry = self
                    .sticky
                    .entry(Arc::clone(topic))
                    .or_insert((Sticky::new(start), partitions));
                entry.1 = partitions;
                entry.0.current(partitions)
            }
        }
    }

    /// Adds a record to `tp`'s open batch (see the module rules). `seq` must increase.
    pub(crate) fn append(
        &mut self,
        tp: TopicPartition,
        record: PendingRecord<T>,
        seq: u64,
        now: Instant,
    ) {
        let bytes = record.bytes();
        let limit = self.config.batch_bytes_max;
        self.buffered_bytes += bytes;
        let queue = self
            .queues
            .entry(tp.clone())
            .or_insert_with(|| PartitionQueue {
                batches: VecDeque::new(),
                in_flight: false,
                retry_at: None,
            });
        let mut closed_now = false;
        let fits = queue
            .batches
            .back()
            .is_some_and(|b| !b.closed && b.bytes + bytes <= limit);
        if !fits {
            if let Some(b) = queue.batches.back_mut()
                && !b.closed
            {
                b.closed = true;
                closed_now = true;
            }
            self.outstanding.insert(seq);
            queue.batches.push_back(Batch {
                tp: tp.clone(),
                records: Vec::new(),
                bytes: BATCH_HEADER_BYTES,
                first_seq: seq,
                created: now,
                attempts: 0,
                encoded: None,
                closed: false,
            });
        }
        let mut full = false;
        if let Some(b) = queue.batches.back_mut() {
            b.records.push(record);
            b.bytes += bytes;
            if b.bytes >= limit {
                b.closed = true;
                full = true;
            }
        }
        if closed_now || full {
            self.batch_closed(&tp);
        }
    }

    fn batch_closed(&mut self, tp: &TopicPartition) {
        if let Some((sticky, partitions)) = self.sticky.get_mut(&tp.topic) {
            sticky.batch_closed(tp.partition, *partitions);
        }
    }

    fn sendable(&self, q: &PartitionQueue<T>, now: Instant, flush: bool) -> bool {
        let Some(front) = q.batches.front() else {
            return false;
        };
        !q.in_flight
            && q.retry_at.is_none_or(|t| t <= now)
            && (front.closed || flush || front.created + self.config.linger <= now)
    }

    /// Takes up to `limit` batches that may be sent now, marking their partitions in flight.
    /// `flush`: open batches go without waiting for their linger.
    pub(crate) fn drain(&mut self, now: Instant, flush: bool, limit: usize) -> Vec<Batch<T>> {
        let ready: Vec<TopicPartition> = self
            .queues
            .iter()
            .filter(|(_, q)| self.sendable(q, now, flush))
            .map(|(tp, _)| tp.clone())
            .take(limit)
            .collect();
        let mut out = Vec::with_capacity(ready.len());
        for tp in ready {
            let Some(q) = self.queues.get_mut(&tp) else {
                continue;
            };
            let Some(mut batch) = q.batches.pop_front() else {
                continue;
            };
            q.in_flight = true;
            q.retry_at = None;
            self.in_flight += 1;
            if !batch.closed {
                batch.closed = true;
                self.batch_closed(&tp);
            }
            out.push(batch);
        }
        out
    }

    /// When the next batch may become sendable without new records or completions: the
    /// earliest linger expiry or retry time of a partition with nothing in flight.
    pub(crate) fn next_deadline(&self, flush: bool) -> Option<Instant> {
        self.queues
            .values()
            .filter(|q| !q.in_flight)
            .filter_map(|q| {
                let front = q.batches.front()?;
                let ready = if front.closed || flush {
                    front.created
                } else {
                    front.created + self.config.linger
                };
                Some(q.retry_at.map_or(ready, |r| r.max(ready)))
            })
            .min()
    }

    /// The batch (taken by `drain`) is done, successfully or not: its partition may send the
    /// next one and its bytes are released. Returns its records, for their tokens.
    pub(crate) fn complete(&mut self, batch: Batch<T>) -> Vec<PendingRecord<T>> {
        self.buffered_bytes = self
            .buffered_bytes
            .saturating_sub(batch.bytes - BATCH_HEADER_BYTES);
        self.outstanding.remove(&batch.first_seq);
        self.in_flight = self.in_flight.saturating_sub(1);
        if let Some(q) = self.queues.get_mut(&batch.tp) {
            q.in_flight = false;
            if q.batches.is_empty() {
                self.queues.remove(&batch.tp);
            }
        }
        batch.records
    }

    /// The batch (taken by `drain`) failed retriably: it goes back to the front of its
    /// partition, to be sent again no earlier than `at`.
    pub(crate) fn retry(&mut self, batch: Batch<T>, at: Instant) {
        self.in_flight = self.in_flight.saturating_sub(1);
        let q = self
            .queues
            .entry(batch.tp.clone())
            .or_insert_with(|| PartitionQueue {
                batches: VecDeque::new(),
                in_flight: false,
                retry_at: None,
            });
        q.in_flight = false;
        q.retry_at = Some(at);
        q.batches.push_front(batch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINGER: Duration = Duration::from_millis(5);

    fn acc(batch_bytes_max: usize) -> Accumulator<u64> {
        Accumulator::new(
            AccumulatorConfig {
                linger: LINGER,
                batch_bytes_max,
            },
            0,
        )
    }

    fn tp(p: u32) -> TopicPartition {
        TopicPartition {
            topic: Arc::from("t"),
            partition: p,
        }
    }

    fn rec(value_bytes: usize, token: u64) -> PendingRecord<u64> {
        PendingRecord {
            timestamp_us: 0,
            key: None,
            value: vec![0; value_bytes],
            headers: Vec::new(),
            token,
        }
    }

    #[test]
    fn a_batch_waits_for_its_linger_unless_flushed() {
        let mut a = acc(1 << 20);
        let t0 = Instant::now();
        a.append(tp(0), rec(10, 0), 0, t0);
        a.append(tp(0), rec(10, 1), 1, t0);
        assert!(a.drain(t0, false, 100).is_empty());
        assert_eq!(a.next_deadline(false), Some(t0 + LINGER));
        assert_eq!(a.drain(t0, true, 100).len(), 1, "a flush sends at once");
        let mut a = acc(1 << 20);
        a.append(tp(0), rec(10, 0), 0, t0);
        let batches = a.drain(t0 + LINGER, false, 100);
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].records.len(), 1);
    }

    #[test]
    fn full_batches_close_and_go_without_linger() {
        let mut a = acc(64 + 3 * 58);
        let t0 = Instant::now();
        for i in 0..7 {
            a.append(tp(0), rec(10, i), i, t0); // 58 bytes each
        }
        // 3 records fill a batch; the third closes it at once.
        let sent = a.drain(t0, false, 100);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].records.len(), 3);
        assert_eq!(
            a.drain(t0, false, 100).len(),
            0,
            "one in flight per partition"
        );
        assert_eq!(
            a.next_deadline(false),
            None,
            "nothing can go while in flight"
        );
        let records = a.complete(sent.into_iter().next().unwrap());
        assert_eq!(
            records.iter().map(|r| r.token).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        let sent = a.drain(t0, false, 100);
        assert_eq!(
            sent[0].records.len(),
            3,
            "the second closed batch goes next"
        );
        a.complete(sent.into_iter().next().unwrap());
        assert!(a.drain(t0, false, 100).is_empty(), "the last one is open");
        assert_eq!(a.drain(t0 + LINGER, false, 100)[0].records[0].token, 6);
    }

    #[test]
    fn an_oversized_record_travels_alone() {
        let mut a = acc(1000);
        let t0 = Instant::now();
        a.append(tp(0), rec(10, 0), 0, t0);
        a.append(tp(0), rec(5000, 1), 1, t0);
        a.append(tp(0), rec(10, 2), 2, t0);
        let b1 = a.drain(t0, false, 10).pop().unwrap();
        assert_eq!(b1.records.len(), 1);
        a.complete(b1);
        let b2 = a.drain(t0, false, 10).pop().unwrap();
        assert_eq!(b2.records.len(), 1);
        assert_eq!(b2.records[0].token, 1);
    }

    #[test]
    fn a_retried_batch_goes_first_after_its_backoff() {
        let mut a = acc(64 + 58);
        let t0 = Instant::now();
        a.append(tp(0), rec(10, 0), 0, t0);
        a.append(tp(0), rec(10, 1), 1, t0);
        let first = a.drain(t0, false, 10).pop().unwrap();
        assert_eq!(first.records[0].token, 0);
        let retry_at = t0 + Duration::from_millis(50);
        a.retry(first, retry_at);
        assert!(
            a.drain(t0 + LINGER, false, 10).is_empty(),
            "backoff holds the partition"
        );
        assert_eq!(a.next_deadline(false), Some(retry_at));
        let again = a.drain(retry_at, false, 10).pop().unwrap();
        assert_eq!(again.records[0].token, 0, "order kept through the retry");
    }

    #[test]
    fn partitions_progress_independently_up_to_the_limit() {
        let mut a = acc(1 << 20);
        let t0 = Instant::now();
        for p in 0..5 {
            a.append(tp(p), rec(1, u64::from(p)), u64::from(p), t0);
        }
        assert_eq!(a.drain(t0 + LINGER, false, 3).len(), 3);
        assert_eq!(a.in_flight(), 3);
        assert_eq!(a.drain(t0 + LINGER, false, 3).len(), 2);
    }

    #[test]
    fn buffered_bytes_and_oldest_seq_follow_completion() {
        let mut a = acc(1 << 20);
        let t0 = Instant::now();
        a.append(tp(0), rec(10, 0), 10, t0);
        a.append(tp(1), rec(20, 1), 11, t0);
        assert_eq!(a.buffered_bytes(), 58 + 68);
        assert_eq!(a.oldest_seq(), Some(10));
        let mut sent = a.drain(t0, true, 10);
        sent.sort_by_key(|b| b.first_seq);
        let second = sent.pop().unwrap();
        a.complete(sent.pop().unwrap());
        assert_eq!(a.oldest_seq(), Some(11));
        assert_eq!(a.buffered_bytes(), 68);
        a.complete(second);
        assert!(a.is_empty());
        assert_eq!(a.buffered_bytes(), 0);
    }

    #[test]
    fn keyless_records_round_robin_per_batch() {
        let mut a = acc(64 + 2 * 58);
        let t0 = Instant::now();
        let topic: Arc<str> = Arc::from("t");
        let mut placed = Vec::new();
        for i in 0..6 {
            let p = a.partition_for(&topic, 3, PartitionChoice::Sticky);
            placed.push(p);
            a.append(
                TopicPartition {
                    topic: Arc::clone(&topic),
                    partition: p,
                },
                rec(10, i),
                i,
                t0,
            );
        }
        assert_eq!(
            placed,
            [0, 0, 1, 1, 2, 2],
            "two records fill a batch, then next"
        );
        for b in a.drain(t0, true, 10) {
            a.complete(b);
        }
        assert_eq!(a.partition_for(&topic, 3, PartitionChoice::Sticky), 0);
        a.append(tp(0), rec(10, 6), 6, t0);
        // Taking an open batch for sending closes it, which also moves the cursor on.
        let sent = a.drain(t0, true, 10);
        assert_eq!(sent.len(), 1);
        assert_eq!(a.partition_for(&topic, 3, PartitionChoice::Sticky), 1);
        assert_eq!(
            a.partition_for(&topic, 3, PartitionChoice::KeyHash(7)),
            1,
            "7 % 3"
        );
    }
}
