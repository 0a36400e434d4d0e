//! [`Consumer`]: server-push subscriptions with credit flow control, and a fetch path.
//!
//! Subscriptions (docs/protocol.md, "10 Subscribe" and "Flow control"): each
//! `(topic, partition)` is subscribed on the connection of the shard that owns it, with a
//! window of `credit_records` records and `credit_bytes` bytes. Pushes of every subscription
//! land in one bounded queue; [`Consumer::poll`] decodes one push at a time and hands its records
//! out. When the application has taken the last record of a push, the push's cost is counted as
//! consumed ([`ConsumerWindow`]), and a GrantCredits goes out once half a window has been
//! consumed. So the server never has more than a window in flight per subscription, and the
//! consumer never buffers more than that plus one decoded push.
//!
//! Batches are whole: a push or fetch may start with a batch that begins before the position;
//! records below it are skipped.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::conn::block_on;
use bytes::Bytes;
use shardline_format as batch;
use shardline_format::Header;
use tracing::debug;

use super::conn::{Callback, Connection, Pending, PushEvent, PushEventKind, PushRoute};
use super::error::ClientError;
use super::pool::{Client, expect_response};
use crate::protocol::{
    ConsumerWindow, GrantCreditsRequest, OffsetSpec, PushCost, ReadIsolation, Request,
    SubscribeRequest, UnsubscribeRequest,
};

/// Settings of a [`Consumer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerConfig {
    /// Record window of each subscription (initial credit).
    pub credit_records: u32,
    /// Byte window of each subscription (batch bytes).
    pub credit_bytes: u64,
    /// Pushes received and not yet polled, over all subscriptions. Credits keep the server
    /// within `credit_records` pushes per subscription; the queue should hold that for all.
    pub push_queue_max: usize,
    /// Budget of one fetch response, in batch bytes.
    pub fetch_bytes_max: u32,
    /// Deadline of Subscribe, Unsubscribe and Fetch (plus its `max_wait`); `None` = the client's.
    pub request_timeout: Option<Duration>,
    /// A subscription whose connection was lost (a server restart) is subscribed again from
    /// its position, retried with backoff for up to this long before `poll` reports it ended
    /// (issue 16, finding 8). Zero: report at once.
    pub resubscribe_timeout: Duration,
    /// What subscriptions and fetches see (docs/semantics.md, "What readers see"): `Appended`
    /// (default) or `Durable` (only what an fdatasync covered; needs a server that speaks
    /// Fetch/Subscribe version 1).
    pub isolation: ReadIsolation,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            credit_records: 4096,
            credit_bytes: 8 << 20,
            push_queue_max: 16 << 10,
            fetch_bytes_max: 4 << 20,
            request_timeout: None,
            resubscribe_timeout: Duration::from_secs(60),
            isolation: ReadIsolation::Appended,
        }
    }
}

/// One consumed record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerRecord {
    pub topic: Arc<str>,
    pub partition: u32,
    pub offset: u64,
    /// Microseconds since the Unix epoch, as the producer stamped it.
    pub timestamp_us: i64,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: Vec<Header>,
}

/// What the server said when a subscription started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionInfo {
    pub topic: String,
    pub partition: u32,
    /// The first offset that will be delivered (the start spec, resolved).
    pub start_offset: u64,
    pub high_watermark: u64,
    pub log_start: u64,
}

/// Records of one fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedRecords {
    pub records: Vec<ConsumerRecord>,
    /// Where the next fetch should start.
    pub next_offset: u64,
    pub high_watermark: u64,
    pub log_start: u64,
}

struct Subscription {
    topic: Arc<str>,
    partition: u32,
    conn: Arc<Connection>,
    id: u32,
    window: ConsumerWindow,
    /// Offset of the next record to hand out; records below it are skipped.
    position: u64,
}

/// Subscribes to partitions and yields their records. `Send`: move it to the thread or task
/// that consumes. Dropping it unsubscribes (without waiting for the answers).
pub struct Consumer {
    client: Client,
    config: ConsumerConfig,
    timeout: Duration,
    tx: flume::Sender<PushEvent>,
    rx: flume::Receiver<PushEvent>,
    subscriptions: HashMap<u64, Subscription>,
    /// Decoded records of the push being handed out, and what to grant once they are taken.
    ready: VecDeque<ConsumerRecord>,
    ready_cost: Option<(u64, PushCost)>,
    next_tag: u64,
    /// Subscriptions whose connection was lost, waiting to be subscribed again.
    lost: Vec<Lost>,
}

/// A subscription whose connection was lost: where it was, when it was lost, the next try.
struct Lost {
    topic: Arc<str>,
    partition: u32,
    position: u64,
    since: Instant,
    next_try: Instant,
    tries: u32,
    reason: ClientError,
}

/// Delays between resubscription attempts (doubling up to the cap).
const RESUBSCRIBE_DELAY_MIN: Duration = Duration::from_millis(50);
const RESUBSCRIBE_DELAY_MAX: Duration = Duration::from_secs(1);

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("subscriptions", &self.subscriptions.len())
            .field("buffered_records", &self.ready.len())
            .finish()
    }
}

impl Consumer {
    pub fn new(client: Client, config: ConsumerConfig) -> Result<Consumer, ClientError> {
        if config.credit_records == 0 || config.credit_bytes == 0 || config.push_queue_max == 0 {
            return Err(ClientError::InvalidArgument(
                "consumer: credits and push_queue_max must be positive".into(),
            ));
        }
        let (tx, rx) = flume::bounded(config.push_queue_max);
        let timeout = config
            .request_timeout
            .unwrap_or(client.config().request_timeout);
        Ok(Consumer {
            client,
            config,
            timeout,
            tx,
            rx,
            subscriptions: HashMap::new(),
            ready: VecDeque::new(),
            ready_cost: None,
            next_tag: 0,
            lost: Vec::new(),
        })
    }

    /// Starts pushing `topic`/`partition` from `start`, over the owning shard's connection.
    pub fn subscribe(
        &mut self,
        topic: &str,
        partition: u32,
        start: OffsetSpec,
    ) -> Result<SubscriptionInfo, ClientError> {
        block_on(self.subscribe_async(topic, partition, start))
    }

    pub async fn subscribe_async(
        &mut self,
        topic: &str,
        partition: u32,
        start: OffsetSpec,
    ) -> Result<SubscriptionInfo, ClientError> {
        if self.tag_of(topic, partition).is_some() {
            return Err(ClientError::InvalidArgument(format!(
                "already subscribed to {topic}/{partition}"
            )));
        }
        let conn = self.client.connection_for(topic, partition).await?;
        let tag = self.next_tag;
        self.next_tag += 1;
        let request = Request::Subscribe(SubscribeRequest {
            topic: topic.to_string(),
            partition,
            start,
            credit_records: self.config.credit_records,
            credit_bytes: self.config.credit_bytes,
            isolation: self.config.isolation,
        });
        super::pool::check_isolation(&conn, self.config.isolation)?;
        let route = PushRoute {
            tx: self.tx.clone(),
            tag,
        };
        let r = conn.subscribe(&request, route, self.timeout).await;
        let r = expect_response!(self.client.note_stale(topic, r)?, Subscribe)?;
        debug!(
            topic,
            partition,
            id = r.subscription_id,
            start = r.start_offset,
            "subscribed"
        );
        self.subscriptions.insert(
            tag,
            Subscription {
                topic: Arc::from(topic),
                partition,
                conn,
                id: r.subscription_id,
                window: ConsumerWindow::new(self.config.credit_records, self.config.credit_bytes),
                position: r.start_offset,
            },
        );
        Ok(SubscriptionInfo {
            topic: topic.to_string(),
            partition,
            start_offset: r.start_offset,
            high_watermark: r.high_watermark,
            log_start: r.log_start,
        })
    }

    /// Ends a subscription; returns the offset it would have delivered next. Records of it not
    /// yet polled are dropped.
    pub fn unsubscribe(&mut self, topic: &str, partition: u32) -> Result<u64, ClientError> {
        block_on(self.unsubscribe_async(topic, partition))
    }

    pub async fn unsubscribe_async(
        &mut self,
        topic: &str,
        partition: u32,
    ) -> Result<u64, ClientError> {
        let sub = self.forget(topic, partition)?;
        let request = Request::Unsubscribe(UnsubscribeRequest {
            subscription_id: sub.id,
        });
        let r = sub.conn.call(&request, self.timeout).await;
        // Nothing of the subscription follows the answer; stop routing either way.
        sub.conn.remove_route(sub.id);
        Ok(expect_response!(r?, Unsubscribe)?.next_offset)
    }

    fn forget(&mut self, topic: &str, partition: u32) -> Result<Subscription, ClientError> {
        let tag = self.tag_of(topic, partition).ok_or_else(|| {
            ClientError::InvalidArgument(format!("not subscribed to {topic}/{partition}"))
        })?;
        self.ready
            .retain(|r| !(&*r.topic == topic && r.partition == partition));
        if self.ready_cost.is_some_and(|(t, _)| t == tag) {
            self.ready_cost = None;
        }
        self.subscriptions
            .remove(&tag)
            .ok_or_else(|| ClientError::InvalidArgument("subscription vanished".into()))
    }

    fn tag_of(&self, topic: &str, partition: u32) -> Option<u64> {
        self.subscriptions
            .iter()
            .find(|(_, s)| &*s.topic == topic && s.partition == partition)
            .map(|(tag, _)| *tag)
    }

    /// `(topic, partition, next offset to deliver)` of every live subscription.
    pub fn assignment(&self) -> Vec<(String, u32, u64)> {
        let mut v: Vec<_> = self
            .subscriptions
            .values()
            .map(|s| (s.topic.to_string(), s.partition, s.position))
            .collect();
        v.sort();
        v
    }

    /// Records decoded and not yet polled.
    pub fn buffered_records(&self) -> usize {
        self.ready.len()
    }

    /// The next record, waiting up to `timeout`; `Ok(None)` when none came in time. A
    /// subscription that ended is reported once as `SubscriptionEnded` (the others go on).
    ///
    /// A subscription whose connection was lost (a server restart) is subscribed again from
    /// its position, with backoff, for up to `resubscribe_timeout`; only then is it reported.
    pub fn poll(&mut self, timeout: Duration) -> Result<Option<ConsumerRecord>, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(r) = self.pop_ready() {
                return Ok(Some(r));
            }
            self.resubscribe_due()?;
            if self.subscriptions.is_empty() && self.lost.is_empty() {
                self.check_subscribed()?;
            }
            let wake = self
                .lost
                .iter()
                .map(|l| l.next_try)
                .min()
                .map_or(deadline, |t| t.min(deadline));
            match self.rx.recv_deadline(wake) {
                Ok(event) => self.handle(event, true)?,
                Err(flume::RecvTimeoutError::Timeout) if Instant::now() >= deadline => {
                    return Ok(None);
                }
                Err(flume::RecvTimeoutError::Timeout) => {}
                Err(flume::RecvTimeoutError::Disconnected) => {
                    return Err(ClientError::Closed { what: "consumer" });
                }
            }
        }
    }

    /// Subscribes again the lost subscriptions whose next try is due; reports one that has
    /// been lost longer than `resubscribe_timeout`.
    fn resubscribe_due(&mut self) -> Result<(), ClientError> {
        let now = Instant::now();
        let mut i = 0;
        while i < self.lost.len() {
            if self.lost[i].next_try > now {
                i += 1;
                continue;
            }
            let l = self.lost.swap_remove(i);
            let start = OffsetSpec::At(l.position);
            match block_on(self.subscribe_async(&l.topic, l.partition, start)) {
                Ok(info) => {
                    debug!(topic = %l.topic, partition = l.partition, position = l.position,
                           start = info.start_offset, "subscribed again after a lost connection");
                }
                Err(e) if l.since.elapsed() < self.config.resubscribe_timeout => {
                    let tries = l.tries + 1;
                    let delay = RESUBSCRIBE_DELAY_MIN
                        .saturating_mul(1 << tries.min(8))
                        .min(RESUBSCRIBE_DELAY_MAX);
                    debug!(topic = %l.topic, partition = l.partition, error = %e, ?delay,
                           "resubscribing failed; retrying");
                    self.lost.push(Lost {
                        next_try: Instant::now() + delay,
                        tries,
                        ..l
                    });
                    // Pushed at the end: the loop reaches it again only if due (it is not).
                }
                Err(_) => {
                    return Err(ClientError::SubscriptionEnded {
                        topic: l.topic.to_string(),
                        partition: l.partition,
                        reason: Box::new(l.reason),
                    });
                }
            }
        }
        Ok(())
    }

    /// The next record, however long it takes.
    pub async fn poll_async(&mut self) -> Result<ConsumerRecord, ClientError> {
        loop {
            if let Some(r) = self.pop_ready() {
                return Ok(r);
            }
            self.check_subscribed()?;
            let event = self
                .rx
                .recv_async()
                .await
                .map_err(|_| ClientError::Closed { what: "consumer" })?;
            self.handle(event, false)?;
        }
    }

    fn check_subscribed(&self) -> Result<(), ClientError> {
        if self.subscriptions.is_empty() {
            return Err(ClientError::InvalidArgument(
                "the consumer has no subscriptions".into(),
            ));
        }
        Ok(())
    }

    fn pop_ready(&mut self) -> Option<ConsumerRecord> {
        let r = self.ready.pop_front()?;
        if self.ready.is_empty()
            && let Some((tag, cost)) = self.ready_cost.take()
        {
            self.grant(tag, cost);
        }
        Some(r)
    }

    /// The application is done with a push: count it, and grant credit back when due.
    fn grant(&mut self, tag: u64, cost: PushCost) {
        let Some(sub) = self.subscriptions.get_mut(&tag) else {
            return;
        };
        if let Some((records, bytes)) = sub.window.consumed(cost) {
            let request = Request::GrantCredits(GrantCreditsRequest {
                subscription_id: sub.id,
                records,
                bytes,
            });
            // A failed connection ends the subscription, which poll reports.
            if let Err(e) = sub.conn.send_oneway(&request) {
                debug!(error = %e, "grant not sent");
            }
        }
    }

    /// Decodes one event into `ready` (which is empty when this is called). With `resubscribe`,
    /// a subscription ended by a lost connection is queued to be subscribed again instead of
    /// reported.
    fn handle(&mut self, event: PushEvent, resubscribe: bool) -> Result<(), ClientError> {
        let tag = event.tag;
        let Some(sub) = self.subscriptions.get_mut(&tag) else {
            return Ok(()); // unsubscribed meanwhile
        };
        match event.kind {
            PushEventKind::Push(push) => {
                let cost = PushCost {
                    records: u64::from(push.records),
                    bytes: push.bytes(),
                };
                let from = sub.position;
                sub.position = sub.position.max(push.next_offset);
                let (topic, partition) = (Arc::clone(&sub.topic), sub.partition);
                let decoded = decode_chunks(&topic, partition, &push.chunks, from, &mut self.ready)
                    .map(|_| ());
                if self.ready.is_empty() {
                    self.grant(tag, cost);
                } else {
                    self.ready_cost = Some((tag, cost));
                }
                decoded
            }
            PushEventKind::End(reason)
                if resubscribe
                    && !self.config.resubscribe_timeout.is_zero()
                    && matches!(reason, ClientError::ConnectionLost { .. }) =>
            {
                if let Some(sub) = self.subscriptions.remove(&tag) {
                    debug!(topic = %sub.topic, partition = sub.partition, %reason,
                           "subscription lost with its connection; subscribing again");
                    let now = Instant::now();
                    self.lost.push(Lost {
                        topic: sub.topic,
                        partition: sub.partition,
                        position: sub.position,
                        since: now,
                        next_try: now,
                        tries: 0,
                        reason,
                    });
                }
                Ok(())
            }
            PushEventKind::End(reason) => {
                let sub = self.subscriptions.remove(&tag);
                let (topic, partition) = sub
                    .map(|s| (s.topic.to_string(), s.partition))
                    .unwrap_or_default();
                Err(ClientError::SubscriptionEnded {
                    topic,
                    partition,
                    reason: Box::new(reason),
                })
            }
        }
    }

    /// Reads records of one partition from `offset` without subscribing, waiting up to
    /// `max_wait` for data when there is none (long poll). Returns no records when the wait
    /// ended empty.
    pub fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_wait: Duration,
    ) -> Result<FetchedRecords, ClientError> {
        block_on(self.fetch_async(topic, partition, offset, max_wait))
    }

    pub async fn fetch_async(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_wait: Duration,
    ) -> Result<FetchedRecords, ClientError> {
        let max_bytes = self.config.fetch_bytes_max;
        let p = self
            .client
            .fetch_isolated_async(
                topic,
                partition,
                offset,
                max_wait,
                max_bytes,
                self.config.isolation,
            )
            .await?;
        let mut records = VecDeque::new();
        let topic: Arc<str> = Arc::from(topic);
        decode_chunks(&topic, partition, &p.chunks, offset, &mut records)?;
        Ok(FetchedRecords {
            records: records.into(),
            next_offset: p.next_offset.max(offset),
            high_watermark: p.high_watermark,
            log_start: p.log_start,
        })
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        for (_, sub) in self.subscriptions.drain() {
            sub.conn.remove_route(sub.id);
            let request = Request::Unsubscribe(UnsubscribeRequest {
                subscription_id: sub.id,
            });
            let ignore: Callback = Box::new(|_| {});
            // Best effort: the server also ends it when the connection closes.
            let _ = sub
                .conn
                .try_submit(&request, self.timeout, Pending::Callback(ignore));
        }
    }
}

/// Decodes the batches in `chunks` (each chunk holds whole batches back to back) and appends
/// the records at or after `from`. Every batch is validated (header, CRC, record structure).
/// A batch that cannot be decoded (corrupt, sealed, an unknown body kind) is skipped alone and
/// reported (a warning naming its offsets), never failing the batches around it (issue 16,
/// finding 3); returns how many were skipped. Only bytes that cannot even be split into
/// batches fail the whole call.
pub(crate) fn decode_chunks(
    topic: &Arc<str>,
    partition: u32,
    chunks: &[Bytes],
    from: u64,
    out: &mut VecDeque<ConsumerRecord>,
) -> Result<usize, ClientError> {
    let mut skipped = 0;
    for chunk in chunks {
        for bytes in batch::split_batches(chunk).map_err(ClientError::batch)? {
            let (h, records) = match batch::decode(bytes) {
                Ok(d) => d,
                Err(e) => {
                    skipped += 1;
                    let base = batch::BatchHeader::parse(bytes).map(|h| h.base_offset).ok();
                    tracing::warn!(
                        %topic, partition, base_offset = ?base, error = %e,
                        "skipping a batch that cannot be decoded"
                    );
                    continue;
                }
            };
            for r in records {
                let offset = h.base_offset + u64::from(r.offset_delta);
                if offset < from {
                    continue;
                }
                out.push_back(ConsumerRecord {
                    topic: Arc::clone(topic),
                    partition,
                    offset,
                    timestamp_us: h
                        .first_timestamp_us
                        .wrapping_add(r.timestamp_delta_us.cast_signed()),
                    key: r.key,
                    value: r.value,
                    headers: r.headers,
                });
            }
        }
    }
    Ok(skipped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardline_format::BatchBuilder;

    fn batch_at(base: u64, values: &[&str]) -> Bytes {
        let mut b = BatchBuilder::new();
        for (i, v) in values.iter().enumerate() {
            b.push(
                1_000 + i as i64,
                Some(b"k".to_vec()),
                v.as_bytes().to_vec(),
                vec![],
            );
        }
        let mut bytes = b.build().unwrap().to_vec();
        batch::set_base_offset(&mut bytes, base);
        Bytes::from(bytes)
    }

    #[test]
    fn records_before_the_position_are_skipped_and_offsets_follow_the_batch() {
        let mut chunk = batch_at(10, &["a", "b", "c"]).to_vec();
        chunk.extend_from_slice(&batch_at(13, &["d"]));
        let topic: Arc<str> = Arc::from("t");
        let mut out = VecDeque::new();
        decode_chunks(&topic, 2, &[Bytes::from(chunk)], 11, &mut out).unwrap();
        let got: Vec<(u64, &[u8], i64)> = out
            .iter()
            .map(|r| (r.offset, &r.value[..], r.timestamp_us))
            .collect();
        assert_eq!(
            got,
            [(11, &b"b"[..], 1_001), (12, b"c", 1_002), (13, b"d", 1_000)]
        );
        assert!(
            out.iter()
                .all(|r| r.partition == 2 && r.key.as_deref() == Some(b"k"))
        );
    }

    #[test]
    fn a_corrupt_batch_is_skipped_alone() {
        let mut bytes = batch_at(0, &["x"]).to_vec();
        let last = bytes.len() - 20;
        bytes[last] ^= 0xff;
        let mut chunk = bytes;
        chunk.extend_from_slice(&batch_at(1, &["y"]));
        let topic: Arc<str> = Arc::from("t");
        let mut out = VecDeque::new();
        let skipped = decode_chunks(&topic, 0, &[Bytes::from(chunk)], 0, &mut out).unwrap();
        assert_eq!(skipped, 1);
        let got: Vec<_> = out.iter().map(|r| (r.offset, r.value.clone())).collect();
        assert_eq!(
            got,
            vec![(1, b"y".to_vec())],
            "the batch after it is delivered"
        );
    }
}
