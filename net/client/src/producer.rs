//! [`Producer`]: batching, partitioning, acks, retries and bounded memory on top of [`Client`].
//!
//! ```text
//!  send()/send_async() ──bounded queue (queue_records_max)──> producer thread
//!                                                              │ route topic, pick partition
//!                                                              │ Accumulator: per-partition
//!                                                              │ batches, linger, one in flight
//!                                                              │ per partition, retry backoff
//!                                                              ▼
//!             one Produce request per shard connection per round (many partitions each)
//!                                                              │ replies: connection reader ->
//!  SendHandle (bounded(1)) <── offsets / errors per record ────┘ completion queue -> thread
//! ```
//! - Partitioning: explicit partition, else `crc32c(key) % partitions`, else round-robin per
//!   batch (`partitioner.rs`).
//! - Order: one batch in flight per partition, and a retried batch is resent before any later
//!   batch of its partition, so records of one partition are appended in `send` order.
//! - Retries: only on errors that say a retry is safe ([`ClientError::is_retriable`]: the
//!   server's retriable codes except TIMEOUT, a connection that could not be opened), at most
//!   `retries_max` times, after [`Backoff`] delays. A lost connection or a timeout (the
//!   client's, or the server's TIMEOUT: appended, not yet durable) is reported, not retried:
//!   the batch may have been appended, and a retry could duplicate it.
//! - Idempotence (`idempotent: true`, docs/semantics.md "Idempotent producer"): the producer
//!   gets an identity from the broker (InitProducer) and stamps each batch with it and a
//!   per-partition sequence, once, when the batch is first encoded; a retry resends the same
//!   bytes. The broker drops a duplicate and answers with the original offsets, so a lost
//!   connection or a timeout *is* retried (`retries_max` times): each record is appended once.
//!   A batch that fails for good leaves a hole in its partition's sequence, so the producer
//!   then takes a new epoch (sequences restart at 0 everywhere); batches in flight under the
//!   old epoch that are then refused as fenced are reported failed, never resent.
//! - Memory: records in the queue (at most `queue_records_max`) plus records accepted and not
//!   completed (at most `buffer_bytes_max` plus one record); `send` waits when both are full.

use std::collections::HashMap;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::conn::block_on;
use bytes::Bytes;
use flume::{RecvError, Selector};
use shardline_format::Header;
use shardline_format::{BatchBuilder, BatchHeader, ProducerInfo, now_us};
use tracing::debug;

use super::accumulator::{Accumulator, AccumulatorConfig, Batch, PendingRecord, TopicPartition};
use super::backoff::{Backoff, Jitter};
use super::conn::{Callback, Connection, Pending};
use super::error::ClientError;
use super::partitioner::PartitionChoice;
use super::pool::Client;
use crate::protocol::{
    Acks, PARTITIONS_PER_REQUEST_MAX, ProducePartition, ProducePartitionResult, ProduceRequest,
    ProduceTopic, Request, Response, code,
};

/// Settings of a [`Producer`].
#[derive(Debug, Clone, PartialEq)]
pub struct ProducerConfig {
    /// What a record's acknowledgement means: `All` (the default: committed on a majority of
    /// the partition's replicas; on a partition with one replica the same as `Durable`),
    /// `Durable` (fdatasync done on the leader), `Leader` (appended in memory) or `None`
    /// (written to the socket; no offsets come back).
    pub acks: Acks,
    /// How long a batch that is not full waits for more records before it is sent.
    pub linger: Duration,
    /// A batch is closed (and sent) at this many estimated bytes; a larger record goes alone.
    pub batch_bytes_max: usize,
    /// Records accepted and not yet acknowledged, in estimated bytes; above it `send` waits.
    pub buffer_bytes_max: usize,
    /// Records handed to `send` and not yet taken by the producer thread.
    pub queue_records_max: usize,
    /// Batches sent and not yet answered, over all partitions.
    pub inflight_batches_max: usize,
    /// Retries of one batch after retriable errors (0 = never retry).
    pub retries_max: u32,
    /// A batch is not retried once this long has passed since it was created: it fails with
    /// its last error even if `retries_max` allows more (`None` = no such bound).
    pub delivery_timeout: Option<Duration>,
    pub backoff: Backoff,
    /// Deadline of each Produce request, also sent as the server's durability timeout. `None`
    /// = the client's `request_timeout`.
    pub request_timeout: Option<Duration>,
    /// Exactly-once appends per partition: stamp producer id, epoch and sequences, and retry
    /// lost or timed-out requests safely (see the module doc). Needs `acks` above `None`.
    pub idempotent: bool,
    /// An identity this producer had before (persisted by the application): the broker keeps
    /// the id and bumps the epoch, fencing any older instance. `None`: a new identity.
    pub producer_id: Option<super::ProducerId>,
    /// Codec of the batches' bodies (none, lz4, zstd): compressed here, stored compressed by
    /// the broker, decompressed by consumers (docs/storage.md, "Compression").
    pub compression: shardline_format::compress::Codec,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            acks: Acks::All,
            linger: Duration::from_millis(2),
            batch_bytes_max: 1 << 20,
            buffer_bytes_max: 64 << 20,
            queue_records_max: 8192,
            inflight_batches_max: 1024,
            retries_max: 5,
            delivery_timeout: Some(Duration::from_secs(120)),
            backoff: Backoff::default(),
            request_timeout: None,
            idempotent: false,
            producer_id: None,
            compression: shardline_format::compress::Codec::None,
        }
    }
}

impl ProducerConfig {
    pub fn validate(&self) -> Result<(), ClientError> {
        let bad = |m: &str| Err(ClientError::InvalidArgument(format!("producer: {m}")));
        if !(1024..=shardline_format::BATCH_BYTES_MAX).contains(&self.batch_bytes_max) {
            return bad("batch_bytes_max must be between 1 KiB and 64 MiB");
        }
        if self.buffer_bytes_max < self.batch_bytes_max {
            return bad("buffer_bytes_max must be at least batch_bytes_max");
        }
        if self.queue_records_max == 0 || self.inflight_batches_max == 0 {
            return bad("queue_records_max and inflight_batches_max must be positive");
        }
        if self.linger > Duration::from_secs(60) {
            return bad("linger above 60 s");
        }
        if self.idempotent && self.acks == Acks::None {
            return bad("an idempotent producer needs acks leader, durable or all");
        }
        Ok(())
    }
}

/// A record to send.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProducerRecord {
    pub topic: String,
    /// `None`: chosen by key hash, or round-robin per batch without a key.
    pub partition: Option<u32>,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: Vec<Header>,
    /// Microseconds since the Unix epoch; `None` = when `send` is called.
    pub timestamp_us: Option<i64>,
}

impl ProducerRecord {
    pub fn new(topic: impl Into<String>, value: impl Into<Vec<u8>>) -> ProducerRecord {
        ProducerRecord {
            topic: topic.into(),
            value: value.into(),
            ..Default::default()
        }
    }

    pub fn key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self
    }

    pub fn partition(mut self, partition: u32) -> Self {
        self.partition = Some(partition);
        self
    }

    pub fn header(mut self, key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push(Header {
            key: key.into(),
            value: value.into(),
        });
        self
    }
}

/// Where a record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    pub partition: u32,
    /// The record's offset; `None` with `acks = none` (the server does not answer).
    pub offset: Option<u64>,
}

type DeliveryResult = Result<Delivery, ClientError>;
type DeliveryReply = flume::Sender<DeliveryResult>;

/// The outcome of one `send`: wait for it ([`SendHandle::wait`]) or `.await` it.
#[derive(Debug)]
#[must_use = "a send's outcome (its offset or error) is only known through its handle"]
pub struct SendHandle {
    rx: flume::Receiver<DeliveryResult>,
}

const PRODUCER_CLOSED: ClientError = ClientError::Closed { what: "producer" };

impl SendHandle {
    /// Blocks until the record is acknowledged (at the producer's `acks` level) or failed.
    pub fn wait(self) -> DeliveryResult {
        self.rx.recv().unwrap_or(Err(PRODUCER_CLOSED))
    }

    /// The outcome if it is known already.
    pub fn try_result(&self) -> Option<DeliveryResult> {
        match self.rx.try_recv() {
            Ok(r) => Some(r),
            Err(flume::TryRecvError::Empty) => None,
            Err(flume::TryRecvError::Disconnected) => Some(Err(PRODUCER_CLOSED)),
        }
    }
}

impl IntoFuture for SendHandle {
    type Output = DeliveryResult;
    type IntoFuture = Pin<Box<dyn Future<Output = DeliveryResult> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move { self.rx.recv_async().await.unwrap_or(Err(PRODUCER_CLOSED)) })
    }
}

enum Command {
    Send(Box<ProducerRecord>, DeliveryReply),
    Flush(flume::Sender<()>),
}

/// Batches records per partition and sends them to their shards (see the module doc). `Send`
/// and `Sync`: share it between threads or tasks behind an `Arc`. Dropping it still delivers
/// every record already sent (in the background); [`Producer::close`] waits for that.
#[derive(Debug)]
pub struct Producer {
    commands: Option<flume::Sender<Command>>,
    thread: Option<JoinHandle<()>>,
}

impl Producer {
    pub fn new(client: Client, config: ProducerConfig) -> Result<Producer, ClientError> {
        config.validate()?;
        let (commands, rx) = flume::bounded(config.queue_records_max);
        let worker = Worker::new(client, config, rx);
        let thread = thread::Builder::new()
            .name("shardline-producer".into())
            .spawn(move || worker.run())
            .map_err(|e| ClientError::InvalidArgument(format!("cannot spawn producer: {e}")))?;
        Ok(Producer {
            commands: Some(commands),
            thread: Some(thread),
        })
    }

    /// Queues a record; blocks while the producer's queue and buffer are full. The handle
    /// yields the record's offset once acknowledged.
    pub fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        value: impl Into<Vec<u8>>,
        headers: Vec<Header>,
    ) -> SendHandle {
        self.send_record(ProducerRecord {
            topic: topic.to_string(),
            key: key.map(<[u8]>::to_vec),
            value: value.into(),
            headers,
            ..Default::default()
        })
    }

    /// Like [`Producer::send`]; waits for queue space without blocking the executor.
    pub async fn send_async(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        value: impl Into<Vec<u8>>,
        headers: Vec<Header>,
    ) -> SendHandle {
        let record = ProducerRecord {
            topic: topic.to_string(),
            key: key.map(<[u8]>::to_vec),
            value: value.into(),
            headers,
            ..Default::default()
        };
        self.send_record_async(record).await
    }

    pub fn send_record(&self, record: ProducerRecord) -> SendHandle {
        let (command, handle) = Self::command(record);
        if let Some(tx) = &self.commands
            && let Err(flume::SendError(command)) = tx.send(command)
        {
            command.fail_closed();
        }
        handle
    }

    pub async fn send_record_async(&self, record: ProducerRecord) -> SendHandle {
        let (command, handle) = Self::command(record);
        if let Some(tx) = &self.commands
            && let Err(flume::SendError(command)) = tx.send_async(command).await
        {
            command.fail_closed();
        }
        handle
    }

    fn command(mut record: ProducerRecord) -> (Command, SendHandle) {
        record.timestamp_us.get_or_insert_with(now_us);
        let (reply, rx) = flume::bounded(1);
        (Command::Send(Box::new(record), reply), SendHandle { rx })
    }

    /// Sends every record queued before this call without waiting for linger, and waits until
    /// each is acknowledged or failed (outcomes are in their handles).
    pub fn flush(&self) -> Result<(), ClientError> {
        block_on(self.flush_async())
    }

    pub async fn flush_async(&self) -> Result<(), ClientError> {
        let (done, rx) = flume::bounded(1);
        let tx = self.commands.as_ref().ok_or(PRODUCER_CLOSED)?;
        tx.send_async(Command::Flush(done))
            .await
            .map_err(|_| PRODUCER_CLOSED)?;
        rx.recv_async().await.map_err(|_| PRODUCER_CLOSED)
    }

    /// Delivers everything sent so far, then stops the producer thread.
    pub fn close(mut self) -> Result<(), ClientError> {
        drop(self.commands.take());
        match self.thread.take() {
            Some(t) => t.join().map_err(|_| ClientError::Closed {
                what: "producer (its thread panicked)",
            }),
            None => Ok(()),
        }
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        // Closing the queue lets the thread deliver what it holds and exit on its own.
        drop(self.commands.take());
    }
}

impl Command {
    fn fail_closed(self) {
        match self {
            Command::Send(_, reply) => {
                let _ = reply.try_send(Err(PRODUCER_CLOSED));
            }
            Command::Flush(_) => {}
        }
    }
}

struct Completion {
    request_id: u64,
    result: Result<Response, ClientError>,
}

enum Event {
    Command(Result<Command, RecvError>),
    Completion(Result<Completion, RecvError>),
}

/// Commands taken in one go before completions and deadlines are looked at again.
const COMMANDS_PER_ROUND_MAX: usize = 4096;
/// Room kept in a Produce frame for the envelope (names, blob references, archive).
const FRAME_ENVELOPE_BYTES: usize = 64 << 10;
/// Envelope bytes per partition in a Produce frame (blob reference, padding, partition entry).
const PARTITION_ENVELOPE_BYTES: usize = 64;

/// The producer thread: owns the accumulator; nothing else touches it.
struct Worker {
    client: Client,
    config: ProducerConfig,
    timeout: Duration,
    acc: Accumulator<DeliveryReply>,
    commands: flume::Receiver<Command>,
    input_open: bool,
    completions_tx: flume::Sender<Completion>,
    completions_rx: flume::Receiver<Completion>,
    in_flight: HashMap<u64, Vec<Batch<DeliveryReply>>>,
    next_request_id: u64,
    next_seq: u64,
    flushes: Vec<(u64, flume::Sender<()>)>,
    jitter: Jitter,
    idempotence: Option<Idempotence>,
}

/// An idempotent producer's state: its identity and each partition's next sequence.
struct Idempotence {
    identity: Option<super::ProducerId>,
    sequences: HashMap<TopicPartition, u32>,
}

impl Idempotence {
    /// The identity, asked of the broker the first time (and after a reset).
    fn identity(&mut self, client: &Client) -> Result<super::ProducerId, ClientError> {
        if let Some(id) = self.identity {
            return Ok(id);
        }
        let id = client.init_producer(None)?;
        self.identity = Some(id);
        Ok(id)
    }

    /// After a batch failed for good: a new epoch, every sequence back to 0.
    fn reset(&mut self, client: &Client) {
        self.sequences.clear();
        self.identity = self
            .identity
            .and_then(|old| client.init_producer(Some(old)).ok());
    }
}

impl Worker {
    fn new(client: Client, config: ProducerConfig, commands: flume::Receiver<Command>) -> Self {
        // Every request carries at least one batch, so this many completions can be pending at
        // most: the reader's `try_send` into it never finds it full.
        let (completions_tx, completions_rx) = flume::bounded(config.inflight_batches_max);
        let mut jitter = Jitter::from_entropy();
        let sticky_start = u32::try_from(jitter.next_u64() >> 40).unwrap_or(0);
        let acc = Accumulator::new(
            AccumulatorConfig {
                linger: config.linger,
                batch_bytes_max: config.batch_bytes_max,
            },
            sticky_start,
        );
        let timeout = config
            .request_timeout
            .unwrap_or(client.config().request_timeout);
        Worker {
            client,
            config,
            timeout,
            acc,
            commands,
            input_open: true,
            completions_tx,
            completions_rx,
            in_flight: HashMap::new(),
            next_request_id: 0,
            next_seq: 0,
            flushes: Vec::new(),
            jitter,
            idempotence: None,
        }
    }

    fn run(mut self) {
        if self.config.idempotent {
            let mut i = Idempotence {
                identity: None,
                sequences: HashMap::new(),
            };
            if let Some(old) = self.config.producer_id {
                // Resume (and fence) the application's earlier identity; a failure here is
                // retried on the first batch, with a fresh identity.
                i.identity = self.client.init_producer(Some(old)).ok();
            }
            self.idempotence = Some(i);
        }
        loop {
            let now = Instant::now();
            let flushing = !self.flushes.is_empty() || !self.input_open;
            let room = self
                .config
                .inflight_batches_max
                .saturating_sub(self.acc.in_flight());
            if room > 0 {
                let ready = self.acc.drain(now, flushing, room);
                if !ready.is_empty() {
                    self.send(ready);
                    continue;
                }
            }
            self.answer_flushes();
            if !self.input_open && self.acc.is_empty() {
                debug!("producer closed");
                return;
            }
            // At the in-flight limit only a completion can make progress.
            let deadline = if room > 0 {
                self.acc.next_deadline(flushing)
            } else {
                None
            };
            let accept =
                self.input_open && self.acc.buffered_bytes() < self.config.buffer_bytes_max;
            let mut select = Selector::new().recv(&self.completions_rx, Event::Completion);
            if accept {
                select = select.recv(&self.commands, Event::Command);
            }
            let event = match deadline {
                Some(d) => match select.wait_deadline(d) {
                    Ok(e) => e,
                    Err(_) => continue, // a linger or backoff expired
                },
                None => select.wait(),
            };
            match event {
                Event::Completion(Ok(c)) => self.completed(c),
                // The worker holds a sender: cannot happen.
                Event::Completion(Err(_)) => {}
                Event::Command(c) => {
                    self.command(c);
                    self.take_more_commands();
                }
            }
        }
    }

    fn take_more_commands(&mut self) {
        for _ in 0..COMMANDS_PER_ROUND_MAX {
            if !self.input_open || self.acc.buffered_bytes() >= self.config.buffer_bytes_max {
                return;
            }
            match self.commands.try_recv() {
                Ok(c) => self.command(Ok(c)),
                Err(flume::TryRecvError::Empty) => return,
                Err(flume::TryRecvError::Disconnected) => {
                    self.command(Err(RecvError::Disconnected))
                }
            }
        }
    }

    fn command(&mut self, command: Result<Command, RecvError>) {
        match command {
            Ok(Command::Send(record, reply)) => self.accept(*record, reply),
            Ok(Command::Flush(done)) => self.flushes.push((self.next_seq, done)),
            Err(RecvError::Disconnected) => self.input_open = false,
        }
    }

    fn accept(&mut self, record: ProducerRecord, reply: DeliveryReply) {
        let route = match block_on(self.client.route_async(&record.topic)) {
            Ok(r) => r,
            Err(e) => {
                let _ = reply.try_send(Err(e));
                return;
            }
        };
        let partitions = route.partitions();
        let topic: Arc<str> = Arc::from(record.topic.as_str());
        let choice = PartitionChoice::for_record(record.partition, record.key.as_deref());
        let partition = self.acc.partition_for(&topic, partitions, choice);
        if partition >= partitions {
            let _ = reply.try_send(Err(ClientError::InvalidArgument(format!(
                "partition {partition} of topic '{topic}' does not exist ({partitions} partitions)"
            ))));
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let pending = PendingRecord {
            timestamp_us: record.timestamp_us.unwrap_or_else(now_us),
            key: record.key,
            value: record.value,
            headers: record.headers,
            token: reply,
        };
        self.acc.append(
            TopicPartition { topic, partition },
            pending,
            seq,
            Instant::now(),
        );
    }

    fn answer_flushes(&mut self) {
        let oldest = self.acc.oldest_seq();
        self.flushes.retain(|(seq, done)| {
            let waiting = oldest.is_some_and(|o| o < *seq);
            if !waiting {
                let _ = done.try_send(());
            }
            waiting
        });
    }

    /// Encodes, routes and sends `batches`: one request per connection (within its frame
    /// limit and the protocol's partitions-per-request limit).
    fn send(&mut self, batches: Vec<Batch<DeliveryReply>>) {
        let mut groups: Vec<(Arc<Connection>, usize, Vec<Batch<DeliveryReply>>)> = Vec::new();
        for mut batch in batches {
            let encoded = match batch.encoded.clone() {
                Some(b) => b,
                None => match self.encode(&mut batch) {
                    Ok(b) => b,
                    Err(e) => {
                        // An attempt that failed before it was sent still counts, or a
                        // server that is down would be retried forever (issue 16, finding 7).
                        batch.attempts += 1;
                        self.failed(batch, e);
                        continue;
                    }
                },
            };
            let tp = batch.tp.clone();
            let conn = match block_on(self.client.connection_for(&tp.topic, tp.partition)) {
                Ok(c) => c,
                Err(e) => {
                    batch.attempts += 1;
                    self.failed(batch, e);
                    continue;
                }
            };
            let cost = encoded.len() + PARTITION_ENVELOPE_BYTES + tp.topic.len();
            let budget = (conn.frame_bytes_max() as usize).saturating_sub(FRAME_ENVELOPE_BYTES);
            let group = groups.iter_mut().find(|(c, bytes, batches)| {
                Arc::ptr_eq(c, &conn)
                    && bytes + cost <= budget
                    && batches.len() < PARTITIONS_PER_REQUEST_MAX
            });
            match group {
                Some((_, bytes, batches)) => {
                    *bytes += cost;
                    batches.push(batch);
                }
                None => groups.push((conn, cost, vec![batch])),
            }
        }
        for (conn, _, batches) in groups {
            self.send_request(&conn, batches);
        }
    }

    fn send_request(&mut self, conn: &Connection, mut batches: Vec<Batch<DeliveryReply>>) {
        let mut topics: Vec<ProduceTopic> = Vec::new();
        for b in &mut batches {
            b.attempts += 1;
            let partition = ProducePartition {
                partition: b.tp.partition,
                batch: b.encoded.clone().unwrap_or_default(),
            };
            match topics.iter_mut().find(|t| *t.name == *b.tp.topic) {
                Some(t) => t.partitions.push(partition),
                None => topics.push(ProduceTopic {
                    name: b.tp.topic.to_string(),
                    partitions: vec![partition],
                }),
            }
        }
        let request = Request::Produce(ProduceRequest {
            acks: self.config.acks,
            timeout_ms: u32::try_from(self.timeout.as_millis()).unwrap_or(u32::MAX),
            topics,
        });
        if self.config.acks == Acks::None {
            let sent = conn.send_oneway(&request);
            for b in batches {
                match &sent {
                    Ok(()) => self.delivered(b, None),
                    Err(e) => self.failed(b, e.clone()),
                }
            }
            return;
        }
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        let tx = self.completions_tx.clone();
        let callback: Callback = Box::new(move |result| {
            let _ = tx.try_send(Completion { request_id, result });
        });
        match block_on(conn.submit(&request, self.timeout, Pending::Callback(callback))) {
            Ok(()) => {
                self.in_flight.insert(request_id, batches);
            }
            Err(e) => {
                for b in batches {
                    self.failed(b, e.clone());
                }
            }
        }
    }

    fn completed(&mut self, c: Completion) {
        let Some(batches) = self.in_flight.remove(&c.request_id) else {
            return;
        };
        let response = match c.result {
            Ok(Response::Produce(r)) => r,
            Ok(other) => {
                let e = ClientError::UnexpectedResponse {
                    api: "Produce",
                    got: other.api_key().name(),
                };
                return batches.into_iter().for_each(|b| self.failed(b, e.clone()));
            }
            Err(e) => return batches.into_iter().for_each(|b| self.failed(b, e.clone())),
        };
        let mut results: HashMap<(&str, u32), &ProducePartitionResult> = HashMap::new();
        for t in &response.topics {
            for p in &t.partitions {
                results.insert((t.name.as_str(), p.partition), p);
            }
        }
        for b in batches {
            let mut hint = 0;
            let outcome = match results.get(&(&*b.tp.topic, b.tp.partition)) {
                Some(r) if r.error_code == code::NONE => Ok(r.base_offset),
                Some(r) => {
                    if r.error_code == code::NOT_LEADER {
                        // docs/protocol.md, code 20: the leader's node id rides in base_offset.
                        hint = r.base_offset;
                    }
                    let message = r.error_message.clone().unwrap_or_default();
                    Err(ClientError::server("Produce", r.error_code, message))
                }
                None => Err(ClientError::UnexpectedResponse {
                    api: "Produce",
                    got: "Produce without a result for a partition sent",
                }),
            };
            match outcome {
                Ok(base_offset) => self.delivered(b, Some(base_offset)),
                Err(e) => {
                    let (topic, partition) = (b.tp.topic.clone(), b.tp.partition);
                    self.failed(b, e.clone());
                    self.client.leader_failed(&topic, partition, &e, hint);
                }
            }
        }
    }

    fn delivered(&mut self, batch: Batch<DeliveryReply>, base_offset: Option<u64>) {
        let partition = batch.tp.partition;
        for (i, r) in self.acc.complete(batch).into_iter().enumerate() {
            let offset = base_offset.map(|b| b + i as u64);
            let _ = r.token.try_send(Ok(Delivery { partition, offset }));
        }
    }

    /// Encodes a batch once; an idempotent producer stamps identity and sequence here.
    fn encode(&mut self, batch: &mut Batch<DeliveryReply>) -> Result<Bytes, ClientError> {
        let producer = match &mut self.idempotence {
            None => None,
            Some(i) => {
                let id = i.identity(&self.client)?;
                let next = i.sequences.entry(batch.tp.clone()).or_insert(0);
                let base_sequence = *next;
                *next = next.wrapping_add(batch.records.len() as u32);
                Some(ProducerInfo {
                    producer_id: id.producer_id,
                    producer_epoch: id.epoch,
                    base_sequence,
                })
            }
        };
        encode(batch, producer, self.config.compression)
    }

    fn failed(&mut self, batch: Batch<DeliveryReply>, error: ClientError) {
        self.client
            .leader_failed(&batch.tp.topic, batch.tp.partition, &error, 0);
        let idempotent = self.idempotence.is_some() && batch.encoded.is_some();
        if idempotent && error.code() == Some(code::DUPLICATE_SEQUENCE) {
            // Written by an earlier attempt, too long ago for the broker to know its offsets.
            return self.delivered(batch, None);
        }
        // With an idempotent producer a request whose outcome is unknown is safe to resend. The
        // server's TIMEOUT on a produce is one of those: the batch was appended and did not
        // become durable in time (it may still), so a plain producer must not resend it.
        let unknown_outcome = matches!(
            error,
            ClientError::ConnectionLost { .. } | ClientError::Timeout { .. }
        ) || matches!(error.code(), Some(code::TIMEOUT | code::NOT_LEADER));
        let retriable =
            (error.is_retriable() && !unknown_outcome) || (idempotent && unknown_outcome);
        let expired = self
            .config
            .delivery_timeout
            .is_some_and(|t| batch.created.elapsed() >= t);
        if retriable && !expired && batch.attempts <= self.config.retries_max {
            let delay = self
                .config
                .backoff
                .delay(batch.attempts.max(1), self.jitter.next_u64());
            debug!(topic = %batch.tp.topic, partition = batch.tp.partition,
                   attempts = batch.attempts, ?delay, %error, "retrying batch");
            self.acc.retry(batch, Instant::now() + delay);
            return;
        }
        if error.is_stale_metadata() {
            self.client.invalidate(&batch.tp.topic);
        }
        let stamped_with_current = batch
            .encoded
            .as_ref()
            .and_then(|b| BatchHeader::parse(b).ok())
            .map(|h| h.producer);
        if let (Some(i), Some(p)) = (&mut self.idempotence, stamped_with_current)
            && i.identity
                .is_some_and(|id| id.producer_id == p.producer_id && id.epoch == p.producer_epoch)
        {
            // Its partition's sequence now has a hole: continue under a new epoch.
            i.reset(&self.client);
        }
        for r in self.acc.complete(batch) {
            let _ = r.token.try_send(Err(error.clone()));
        }
    }
}

/// Builds the batch's bytes once (kept for retries). The records' data moves into the builder;
/// only their reply tokens stay behind.
fn encode(
    batch: &mut Batch<DeliveryReply>,
    producer: Option<ProducerInfo>,
    compression: shardline_format::compress::Codec,
) -> Result<Bytes, ClientError> {
    let mut builder = BatchBuilder::new().compression(compression.as_u8());
    if let Some(p) = producer {
        builder = builder.producer(p);
    }
    for r in &mut batch.records {
        builder.push(
            r.timestamp_us,
            r.key.take(),
            std::mem::take(&mut r.value),
            std::mem::take(&mut r.headers),
        );
    }
    let bytes = builder.build().map_err(ClientError::batch)?;
    batch.encoded = Some(bytes.clone());
    Ok(bytes)
}
