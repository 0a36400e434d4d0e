//! Work queues from the client: create, receive (long poll), ack, nack, change visibility,
//! stats, peek and redrive (docs/semantics.md, "Work queues"); and the request-reply helper
//! ([`Requester`], [`reply`]) built on top (docs/semantics.md, "Request-reply").

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::conn::block_on;
use shardline_format::{BatchBuilder, Header, now_us};

use super::error::ClientError;
use super::pool::{Client, expect_response};
use crate::protocol::queue::*;
use crate::protocol::{Acks, Request, TopicConfig, TopicInfo, code};

/// Header naming the request a reply answers.
pub const CORRELATION_ID_HEADER: &str = "correlation-id";
/// Header naming the topic a reply goes to.
pub const REPLY_TO_HEADER: &str = "reply-to";

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Client {
    /// Creates a work-queue topic (and its dead-letter topic, if named and missing).
    pub fn create_queue(
        &self,
        name: &str,
        config: TopicConfig,
        queue: QueueSettings,
    ) -> Result<QueueCreateResponse, ClientError> {
        block_on(self.create_queue_async(name, config, queue))
    }

    pub async fn create_queue_async(
        &self,
        name: &str,
        config: TopicConfig,
        queue: QueueSettings,
    ) -> Result<QueueCreateResponse, ClientError> {
        self.invalidate(name);
        let request = Request::QueueCreate(QueueCreateRequest {
            name: name.to_string(),
            config,
            queue,
        });
        expect_response!(self.call_bootstrap(request).await?, QueueCreate)
    }

    /// Leases up to `max` messages (of `partition`, or of any partition), waiting up to
    /// `max_wait` when none is available. `visibility`: `None` for the queue's timeout.
    pub fn queue_receive(
        &self,
        topic: &str,
        partition: Option<u32>,
        max: u32,
        visibility: Option<Duration>,
        max_wait: Duration,
    ) -> Result<Vec<QueueMessage>, ClientError> {
        block_on(self.queue_receive_async(topic, partition, max, visibility, max_wait))
    }

    pub async fn queue_receive_async(
        &self,
        topic: &str,
        partition: Option<u32>,
        max: u32,
        visibility: Option<Duration>,
        max_wait: Duration,
    ) -> Result<Vec<QueueMessage>, ClientError> {
        let request = Request::QueueReceive(QueueReceiveRequest {
            topic: topic.to_string(),
            partition,
            max_messages: max,
            visibility_timeout_ms: visibility.map_or(0, millis),
            max_wait_ms: u32::try_from(max_wait.as_millis()).unwrap_or(u32::MAX),
        });
        // Without a partition: the server of partition 0's leader answers.
        let timeout = self.config().request_timeout + max_wait;
        let r = self
            .call_queue_leader(topic, partition.unwrap_or(0), &request, timeout)
            .await?;
        Ok(expect_response!(r, QueueReceive)?.messages)
    }

    /// Acks deliveries; one code per receipt (`code::NONE` when acked, durably).
    pub fn queue_ack(
        &self,
        topic: &str,
        receipts: &[QueueReceipt],
    ) -> Result<Vec<u16>, ClientError> {
        block_on(self.queue_ack_async(topic, receipts))
    }

    pub async fn queue_ack_async(
        &self,
        topic: &str,
        receipts: &[QueueReceipt],
    ) -> Result<Vec<u16>, ClientError> {
        let request = Request::QueueAck(QueueAckRequest {
            topic: topic.to_string(),
            receipts: receipts.to_vec(),
        });
        let r = self.queue_call(topic, receipts, request).await?;
        Ok(expect_response!(r, QueueAck)?.error_codes)
    }

    /// Gives deliveries back: visible again after `delay` (`None`: the queue's backoff).
    pub fn queue_nack(
        &self,
        topic: &str,
        receipts: &[QueueReceipt],
        delay: Option<Duration>,
    ) -> Result<Vec<u16>, ClientError> {
        block_on(self.queue_nack_async(topic, receipts, delay))
    }

    pub async fn queue_nack_async(
        &self,
        topic: &str,
        receipts: &[QueueReceipt],
        delay: Option<Duration>,
    ) -> Result<Vec<u16>, ClientError> {
        let request = Request::QueueNack(QueueNackRequest {
            topic: topic.to_string(),
            receipts: receipts.to_vec(),
            delay_ms: delay.map(millis),
        });
        let r = self.queue_call(topic, receipts, request).await?;
        Ok(expect_response!(r, QueueNack)?.error_codes)
    }

    /// Extends (or ends, with zero) the leases of deliveries.
    pub fn queue_change_visibility(
        &self,
        topic: &str,
        receipts: &[QueueReceipt],
        visibility: Duration,
    ) -> Result<Vec<u16>, ClientError> {
        block_on(self.queue_change_visibility_async(topic, receipts, visibility))
    }

    pub async fn queue_change_visibility_async(
        &self,
        topic: &str,
        receipts: &[QueueReceipt],
        visibility: Duration,
    ) -> Result<Vec<u16>, ClientError> {
        let request = Request::QueueChangeVisibility(QueueChangeVisibilityRequest {
            topic: topic.to_string(),
            receipts: receipts.to_vec(),
            visibility_timeout_ms: millis(visibility),
        });
        let r = self.queue_call(topic, receipts, request).await?;
        Ok(expect_response!(r, QueueChangeVisibility)?.error_codes)
    }

    /// Depth, in-flight count, oldest message age and counters per partition.
    pub fn queue_stats(&self, topic: &str) -> Result<Vec<QueuePartitionStats>, ClientError> {
        block_on(self.queue_stats_async(topic))
    }

    pub async fn queue_stats_async(
        &self,
        topic: &str,
    ) -> Result<Vec<QueuePartitionStats>, ClientError> {
        let request = Request::QueueStats(QueueStatsRequest {
            topic: topic.to_string(),
        });
        // On a cluster: partition 0's leader (it answers when it serves every partition).
        let timeout = self.config().request_timeout;
        let r = self.call_queue_leader(topic, 0, &request, timeout).await?;
        Ok(expect_response!(r, QueueStats)?.partitions)
    }

    /// Messages not yet acked, in offset order, without leasing them.
    pub fn queue_peek(
        &self,
        topic: &str,
        partition: u32,
        max: u32,
    ) -> Result<Vec<QueueMessage>, ClientError> {
        block_on(self.queue_peek_async(topic, partition, max))
    }

    pub async fn queue_peek_async(
        &self,
        topic: &str,
        partition: u32,
        max: u32,
    ) -> Result<Vec<QueueMessage>, ClientError> {
        let request = Request::QueuePeek(QueuePeekRequest {
            topic: topic.to_string(),
            partition,
            max_messages: max,
        });
        let timeout = self.config().request_timeout;
        let r = self
            .call_queue_leader(topic, partition, &request, timeout)
            .await?;
        Ok(expect_response!(r, QueuePeek)?.messages)
    }

    /// Moves up to `max` dead-lettered messages back to where they came from.
    pub fn queue_redrive(&self, dead_letter_topic: &str, max: u32) -> Result<u64, ClientError> {
        block_on(self.queue_redrive_async(dead_letter_topic, max))
    }

    pub async fn queue_redrive_async(
        &self,
        dead_letter_topic: &str,
        max: u32,
    ) -> Result<u64, ClientError> {
        let request = Request::QueueRedrive(QueueRedriveRequest {
            dead_letter_topic: dead_letter_topic.to_string(),
            max_messages: max,
        });
        Ok(expect_response!(self.call_bootstrap(request).await?, QueueRedrive)?.moved)
    }

    /// Sends a lease request to the shard of its first receipt's partition (the server
    /// forwards the others), on a cluster to that partition's leader (queue_leader.rs).
    async fn queue_call(
        &self,
        topic: &str,
        receipts: &[QueueReceipt],
        request: Request,
    ) -> Result<crate::protocol::Response, ClientError> {
        let p = receipts.first().map_or(0, |r| r.partition);
        let timeout = self.config().request_timeout;
        self.call_queue_leader(topic, p, &request, timeout).await
    }
}

// ---------------------------------------------------------------------------------------------
// Request-reply

/// A reply to a request, as the requester gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyMessage {
    pub correlation_id: String,
    pub value: Vec<u8>,
    pub headers: Vec<Header>,
}

type Waiters = Arc<Mutex<HashMap<String, flume::Sender<ReplyMessage>>>>;

/// Sends requests and awaits their replies. Owns a reply topic (its *inbox*), created on
/// [`Requester::new`] and deleted on drop; a background thread long-polls it and hands each
/// reply to the request with the same correlation id. Replies nobody waits for (late ones,
/// after a timeout) are dropped.
pub struct Requester {
    client: Client,
    inbox: String,
    waiters: Waiters,
    next_id: AtomicU64,
    prefix: String,
    stop: Arc<AtomicBool>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Requester {
    pub fn new(client: Client) -> Result<Requester, ClientError> {
        let prefix = format!("{:x}-{:x}", now_us(), std::process::id());
        let inbox = format!("_inbox.{prefix}");
        let info: TopicInfo = client.create_topic(
            &inbox,
            TopicConfig {
                partitions: 1,
                retention_ms: Some(3_600_000),
                ..Default::default()
            },
        )?;
        let start = client.list_offsets(&info.name, 0, crate::protocol::OffsetSpec::Latest)?;
        let waiters: Waiters = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (client, inbox, waiters, stop) =
                (client.clone(), inbox.clone(), waiters.clone(), stop.clone());
            std::thread::Builder::new()
                .name("shardline-replies".into())
                .spawn(move || read_replies(&client, &inbox, start, &waiters, &stop))
                .map_err(|e| ClientError::InvalidArgument(format!("cannot start thread: {e}")))?
        };
        Ok(Requester {
            client,
            inbox,
            waiters,
            next_id: AtomicU64::new(1),
            prefix,
            stop,
            reader: Some(reader),
        })
    }

    /// The topic replies must be sent to.
    pub fn inbox(&self) -> &str {
        &self.inbox
    }

    /// Sends `value` to `partition` of `topic` with a fresh correlation id and this requester's
    /// inbox as reply-to, then waits up to `timeout` for the reply (`ClientError::Timeout`).
    pub fn request(
        &self,
        topic: &str,
        partition: u32,
        value: impl Into<Vec<u8>>,
        timeout: Duration,
    ) -> Result<ReplyMessage, ClientError> {
        let id = format!(
            "{}-{}",
            self.prefix,
            self.next_id.fetch_add(1, Ordering::Relaxed)
        );
        let (tx, rx) = flume::bounded(1);
        lock(&self.waiters).insert(id.clone(), tx);
        let headers = vec![
            Header {
                key: CORRELATION_ID_HEADER.into(),
                value: id.clone().into_bytes(),
            },
            Header {
                key: REPLY_TO_HEADER.into(),
                value: self.inbox.clone().into_bytes(),
            },
        ];
        let sent = send(&self.client, topic, partition, value.into(), headers);
        let r = sent.and_then(|()| {
            rx.recv_timeout(timeout).map_err(|_| ClientError::Timeout {
                api: "request-reply",
                timeout,
            })
        });
        lock(&self.waiters).remove(&id);
        r
    }
}

impl Drop for Requester {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.reader.take() {
            let _ = t.join();
        }
        let _ = self.client.delete_topic(&self.inbox);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn send(
    client: &Client,
    topic: &str,
    partition: u32,
    value: Vec<u8>,
    headers: Vec<Header>,
) -> Result<(), ClientError> {
    let mut b = BatchBuilder::new();
    b.push(now_us(), None, value, headers);
    let batch = b.build().map_err(|e| ClientError::Batch(e.to_string()))?;
    client.produce(topic, partition, batch, Acks::Durable)?;
    Ok(())
}

fn read_replies(
    client: &Client,
    inbox: &str,
    mut offset: u64,
    waiters: &Waiters,
    stop: &AtomicBool,
) {
    while !stop.load(Ordering::Acquire) {
        let r = client.fetch(inbox, 0, offset, Duration::from_millis(100), 1 << 20);
        let p = match r {
            Ok(p) => p,
            Err(_) => {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        offset = p.next_offset.max(offset);
        for chunk in &p.chunks {
            let Ok(batches) = shardline_format::split_batches(chunk) else {
                continue;
            };
            for b in batches {
                let Ok((h, records)) = shardline_format::decode(b) else {
                    continue;
                };
                // Records before the start offset (in the first batch) carry ids nobody waits for.
                let _ = h;
                for r in records {
                    let Some(id) = r
                        .headers
                        .iter()
                        .find(|x| x.key == CORRELATION_ID_HEADER)
                        .and_then(|x| String::from_utf8(x.value.clone()).ok())
                    else {
                        continue;
                    };
                    if let Some(tx) = lock(waiters).remove(&id) {
                        let _ = tx.send(ReplyMessage {
                            correlation_id: id,
                            value: r.value,
                            headers: r.headers,
                        });
                    }
                }
            }
        }
    }
}

/// Answers a request message with one call: sends `value` to the request's reply-to topic
/// with its correlation id. Fails with `InvalidArgument` when the request has no reply-to or
/// correlation id header.
pub fn reply(
    client: &Client,
    request: &QueueMessage,
    value: impl Into<Vec<u8>>,
) -> Result<(), ClientError> {
    let text = |name| {
        request
            .header(name)
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(str::to_string)
    };
    let (Some(to), Some(id)) = (text(REPLY_TO_HEADER), text(CORRELATION_ID_HEADER)) else {
        return Err(ClientError::InvalidArgument(
            "the message has no reply-to or correlation-id header".into(),
        ));
    };
    let headers = vec![Header {
        key: CORRELATION_ID_HEADER.into(),
        value: id.into_bytes(),
    }];
    send(client, &to, 0, value.into(), headers)
}

/// Whether every code of a lease answer is `NONE`.
pub fn all_ok(codes: &[u16]) -> bool {
    codes.iter().all(|c| *c == code::NONE)
}

/// Per-message delivery options of a work-queue send (docs/semantics.md, "Delayed messages and
/// expiry", "Priorities"), carried as the message's `priority`, `delay-ms` and `ttl-ms` headers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SendOptions {
    /// Priority level (0 = lowest).
    pub priority: Option<u8>,
    /// Not delivered before this long after the message's timestamp (SQS `DelaySeconds`).
    pub delay: Option<Duration>,
    /// Dead-lettered with reason `expired` if not acked this long after its timestamp
    /// (RabbitMQ per-message TTL).
    pub ttl: Option<Duration>,
}

impl SendOptions {
    /// The headers that carry these options.
    pub fn headers(&self) -> Vec<Header> {
        let mut h = Vec::new();
        let mut add = |key: &str, v: u64| {
            h.push(Header {
                key: key.to_string(),
                value: v.to_string().into_bytes(),
            });
        };
        if let Some(p) = self.priority {
            add("priority", u64::from(p));
        }
        if let Some(d) = self.delay {
            add(DELAY_HEADER, millis(d));
        }
        if let Some(t) = self.ttl {
            add(TTL_HEADER, millis(t));
        }
        h
    }
}

impl Client {
    /// Sends `values` to a work queue's partition as one batch, each with `options`' headers,
    /// durably; returns how many were sent.
    pub fn queue_send(
        &self,
        topic: &str,
        partition: u32,
        values: Vec<Vec<u8>>,
        options: SendOptions,
    ) -> Result<u64, ClientError> {
        block_on(self.queue_send_async(topic, partition, values, options))
    }

    pub async fn queue_send_async(
        &self,
        topic: &str,
        partition: u32,
        values: Vec<Vec<u8>>,
        options: SendOptions,
    ) -> Result<u64, ClientError> {
        if values.is_empty() {
            return Ok(0);
        }
        let n = values.len() as u64;
        let mut b = BatchBuilder::new();
        for v in values {
            b.push(now_us(), None, v, options.headers());
        }
        let batch = b.build().map_err(|e| ClientError::Batch(e.to_string()))?;
        self.produce_async(topic, partition, batch, Acks::Durable)
            .await?;
        Ok(n)
    }
}

// ---------------------------------------------------------------------------------------------
// Pipelined acks

/// An ack request sent and not yet answered ([`Client::queue_ack_start`]). The server answers
/// once the acks are durable; meanwhile the caller goes on (receives the next message). Dropping
/// it does not cancel the ack: only its answer is lost.
#[must_use = "an ack's answer says whether it counted"]
pub struct PendingAck {
    receipts: Vec<QueueReceipt>,
    reply: flume::Receiver<Result<crate::protocol::Response, ClientError>>,
}

impl std::fmt::Debug for PendingAck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingAck")
            .field("receipts", &self.receipts.len())
            .finish()
    }
}

impl PendingAck {
    /// The receipts this request acks.
    pub fn receipts(&self) -> &[QueueReceipt] {
        &self.receipts
    }

    /// The answer if it has arrived: one code per receipt (`code::NONE` when acked, durably).
    pub fn try_wait(&self) -> Option<Result<Vec<u16>, ClientError>> {
        match self.reply.try_recv() {
            Ok(r) => Some(ack_codes(r)),
            Err(flume::TryRecvError::Empty) => None,
            Err(flume::TryRecvError::Disconnected) => Some(Err(reply_lost())),
        }
    }

    /// Waits for the answer (bounded by the client's request timeout).
    pub fn wait(self) -> Result<Vec<u16>, ClientError> {
        block_on(self.wait_async())
    }

    pub async fn wait_async(self) -> Result<Vec<u16>, ClientError> {
        match self.reply.recv_async().await {
            Ok(r) => ack_codes(r),
            Err(_) => Err(reply_lost()),
        }
    }
}

fn ack_codes(r: Result<crate::protocol::Response, ClientError>) -> Result<Vec<u16>, ClientError> {
    Ok(expect_response!(r?, QueueAck)?.error_codes)
}

fn reply_lost() -> ClientError {
    ClientError::InvalidArgument("the ack's reply slot was dropped".into())
}

impl Client {
    /// Sends an ack without waiting for its answer (pipelined acks): returns once the request
    /// is written (or waits while `inflight_requests_max` requests of the connection are
    /// unanswered). [`PendingAck::wait`] gives the codes [`Client::queue_ack`] would.
    pub fn queue_ack_start(
        &self,
        topic: &str,
        receipts: &[QueueReceipt],
    ) -> Result<PendingAck, ClientError> {
        block_on(self.queue_ack_start_async(topic, receipts))
    }

    pub async fn queue_ack_start_async(
        &self,
        topic: &str,
        receipts: &[QueueReceipt],
    ) -> Result<PendingAck, ClientError> {
        let request = Request::QueueAck(QueueAckRequest {
            topic: topic.to_string(),
            receipts: receipts.to_vec(),
        });
        let p = receipts.first().map_or(0, |r| r.partition);
        let c = self.connection_for(topic, p).await?;
        let (tx, rx) = flume::bounded(1);
        let sent = c
            .submit(
                &request,
                self.config().request_timeout,
                super::conn::Pending::Call(tx),
            )
            .await;
        self.note_stale(topic, sent)?;
        Ok(PendingAck {
            receipts: receipts.to_vec(),
            reply: rx,
        })
    }
}

/// Settings of a [`QueueConsumer`].
#[derive(Debug, Clone)]
pub struct QueueConsumerConfig {
    /// Ack requests sent and not yet answered; `ack` waits for the oldest beyond this.
    pub acks_in_flight_max: usize,
    /// Lease length each receive asks for (`None`: the queue's visibility timeout).
    pub visibility: Option<Duration>,
    /// Receive from this partition only (`None`: any partition).
    pub partition: Option<u32>,
}

impl Default for QueueConsumerConfig {
    fn default() -> Self {
        QueueConsumerConfig {
            acks_in_flight_max: 64,
            visibility: None,
            partition: None,
        }
    }
}

/// A work-queue consumer with **pipelined acks**: [`QueueConsumer::ack`] sends the ack and
/// returns without waiting for the server's (durable) answer, so the next receive goes out at
/// once and the ack's fdatasync overlaps it; on the server, the acks of all consumers of a
/// partition share one ack-log write and one fdatasync (group commit). One message per
/// receive+ack then costs about one round trip instead of two plus a sync.
///
/// Answers are collected as they arrive (on every call) and at [`QueueConsumer::flush`]:
/// [`QueueConsumer::acked`] counts acks confirmed durable, [`QueueConsumer::take_refused`]
/// gives the receipts the server refused (`LEASE_NOT_HELD`: the lease was gone, the message
/// is or will be delivered again; `MESSAGE_DONE`: already acked). Until its answer arrives an
/// ack is unconfirmed: if the connection fails first, the ack may or may not have counted (the
/// error is returned; the message is then acked or redelivered, never lost).
pub struct QueueConsumer {
    client: Client,
    topic: String,
    config: QueueConsumerConfig,
    in_flight: std::collections::VecDeque<PendingAck>,
    refused: Vec<(QueueReceipt, u16)>,
    acked: u64,
}

impl std::fmt::Debug for QueueConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueConsumer")
            .field("topic", &self.topic)
            .field("acks_in_flight", &self.in_flight.len())
            .field("acked", &self.acked)
            .finish()
    }
}

impl QueueConsumer {
    pub fn new(client: Client, topic: &str, config: QueueConsumerConfig) -> Self {
        QueueConsumer {
            client,
            topic: topic.to_string(),
            config,
            in_flight: std::collections::VecDeque::new(),
            refused: Vec::new(),
            acked: 0,
        }
    }

    /// Leases up to `max` messages, long-polling up to `max_wait` when none is available.
    /// Collects the answers of acks that arrived meanwhile.
    pub fn receive(
        &mut self,
        max: u32,
        max_wait: Duration,
    ) -> Result<Vec<QueueMessage>, ClientError> {
        self.reap()?;
        self.client.queue_receive(
            &self.topic,
            self.config.partition,
            max,
            self.config.visibility,
            max_wait,
        )
    }

    /// Acks `receipts` without waiting for the answer (waits for the oldest unanswered ack
    /// only when `acks_in_flight_max` are unanswered).
    pub fn ack(&mut self, receipts: &[QueueReceipt]) -> Result<(), ClientError> {
        if receipts.is_empty() {
            return Ok(());
        }
        while self.in_flight.len() >= self.config.acks_in_flight_max.max(1) {
            if let Some(oldest) = self.in_flight.pop_front() {
                let receipts = oldest.receipts.clone();
                self.settle(&receipts, oldest.wait())?;
            }
        }
        let pending = self.client.queue_ack_start(&self.topic, receipts)?;
        self.in_flight.push_back(pending);
        self.reap()
    }

    /// Waits for the answer of every ack sent.
    pub fn flush(&mut self) -> Result<(), ClientError> {
        while let Some(oldest) = self.in_flight.pop_front() {
            let receipts = oldest.receipts.clone();
            self.settle(&receipts, oldest.wait())?;
        }
        Ok(())
    }

    /// Acks answered as done (durable), since the consumer was made.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Ack requests sent and not yet answered.
    pub fn acks_in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Receipts whose ack the server refused, with the code, since the last call.
    pub fn take_refused(&mut self) -> Vec<(QueueReceipt, u16)> {
        std::mem::take(&mut self.refused)
    }

    /// The client, for other calls (nack, change visibility).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Collects the answers that have arrived, oldest first, without waiting.
    fn reap(&mut self) -> Result<(), ClientError> {
        while let Some(front) = self.in_flight.front() {
            let Some(r) = front.try_wait() else {
                break;
            };
            if let Some(done) = self.in_flight.pop_front() {
                self.settle(&done.receipts, r)?;
            }
        }
        Ok(())
    }

    fn settle(
        &mut self,
        receipts: &[QueueReceipt],
        r: Result<Vec<u16>, ClientError>,
    ) -> Result<(), ClientError> {
        let codes = r?;
        for (receipt, c) in receipts.iter().zip(codes) {
            if c == code::NONE {
                self.acked += 1;
            } else {
                self.refused.push((*receipt, c));
            }
        }
        Ok(())
    }
}
