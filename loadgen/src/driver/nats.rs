//! The `nats` driver: NATS JetStream as a peer under the same workload.
//!
//! Mapping: partition `p` of topic `t` is the JetStream stream `t-p` (file storage) bound to
//! the subject `t.p`. One stream per partition keeps the stream sequence dense per partition,
//! so consumers check offsets (gaps, duplicates) as they do for Shardline.
//!
//! - Producers: one NATS connection each. A batch is `batch` JetStream publishes (JetStream has
//!   no multi-message append in the server versions Debian ships); each waits for its own
//!   PubAck. `send` queues the batch for the producer's task, which publishes batches in order
//!   and awaits their acks concurrently (`--inflight` batches outstanding). With `--acks none`
//!   messages are plain publishes without PubAck.
//! - Consumers: one connection each; per partition an ephemeral pull consumer with
//!   `AckPolicy::None` delivering everything from the start, its messages handed to the
//!   consumer thread through a bounded channel ([`super::feed`]).
//! - The client (`async-nats`) runs on a tokio runtime owned by the driver (2 worker threads).
//!
//! Durability: a PubAck means the message was written to the stream's file (the page cache).
//! The server fsyncs on its `sync_interval` (default 2 minutes; `sync_interval: always` exists
//! from nats-server 2.10, while Debian 12 ships 2.9.10, which has no such setting).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::runtime::Runtime;

use super::feed::{Delivery, FeedConsumer, FeedItem};
use super::{AckFuture, Consumer, Driver, DriverError, Producer};
use crate::workload::AckLevel;

/// PubAcks one producer may await at once (its batches in flight times their messages stay
/// well below this); above it the client waits rather than fails.
const ACKS_INFLIGHT_MAX: usize = 1 << 20;
/// Messages a pull consumer asks for per pull.
const PULL_BATCH: usize = 1024;
/// Messages already received that one delivery hands over at most.
const DELIVERY_MESSAGES_MAX: usize = 1024;
/// Deadline of stream and consumer administration.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

fn peer(message: impl std::fmt::Display) -> DriverError {
    DriverError::Peer {
        broker: "nats",
        message: message.to_string(),
    }
}

fn stream_name(topic: &str, partition: u32) -> String {
    format!("{topic}-{partition}")
}

fn subject(topic: &str, partition: u32) -> String {
    format!("{topic}.{partition}")
}

/// A NATS server with JetStream enabled at `host:port`.
pub struct NatsDriver {
    runtime: Runtime,
    addr: String,
    admin: jetstream::Context,
    server_version: String,
}

impl NatsDriver {
    pub fn connect(addr: &str) -> Result<Self, DriverError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("loadgen-nats")
            .enable_all()
            .build()
            .map_err(|source| DriverError::Io {
                context: "starting the NATS client runtime".into(),
                source,
            })?;
        let client = runtime.block_on(connect(addr))?;
        let server_version = client.server_info().version;
        // Building a JetStream context spawns its ack-timeout task on the current runtime.
        let admin = {
            let _rt = runtime.enter();
            jetstream::ContextBuilder::new()
                .timeout(ADMIN_TIMEOUT)
                .build(client)
        };
        Ok(NatsDriver {
            runtime,
            addr: addr.to_string(),
            admin,
            server_version,
        })
    }
}

async fn connect(addr: &str) -> Result<async_nats::Client, DriverError> {
    async_nats::ConnectOptions::new()
        .connection_timeout(ADMIN_TIMEOUT)
        .connect(addr)
        .await
        .map_err(|e| peer(format!("cannot connect to {addr}: {e}")))
}

impl Driver for NatsDriver {
    fn name(&self) -> &'static str {
        "nats"
    }

    fn durability(&self, acks: AckLevel) -> String {
        let v = &self.server_version;
        if acks == AckLevel::None {
            return format!("none: plain publish (nats {v})");
        }
        // sync_interval exists from 2.10 (and may say `always`); before, a fixed 2 minutes.
        let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        if version < (2, 10) {
            format!("page cache; fsync every 2 min (nats {v})")
        } else {
            format!("page cache; fsync per sync_interval (nats {v})")
        }
    }

    fn create_topic(&self, topic: &str, partitions: u32) -> Result<(), DriverError> {
        let js = &self.admin;
        self.runtime.block_on(async {
            let prefix = format!("{topic}-");
            let mut names = js.stream_names();
            let mut old = Vec::new();
            while let Some(name) = names.next().await {
                let name = name.map_err(peer)?;
                if name.starts_with(&prefix) {
                    old.push(name);
                }
            }
            for name in old {
                js.delete_stream(&name).await.map_err(peer)?;
            }
            for p in 0..partitions {
                js.create_stream(stream::Config {
                    name: stream_name(topic, p),
                    subjects: vec![subject(topic, p)],
                    storage: stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(peer)?;
            }
            Ok(())
        })
    }

    fn producer(&self, topic: &str, acks: AckLevel) -> Result<Box<dyn Producer>, DriverError> {
        let client = self.runtime.block_on(connect(&self.addr))?;
        let _rt = self.runtime.enter();
        let js = jetstream::ContextBuilder::new()
            .max_ack_inflight(ACKS_INFLIGHT_MAX)
            .backpressure_on_inflight(true)
            .build(client.clone());
        let subjects: Arc<Vec<String>> = Arc::new(
            (0..crate::workload::PARTITIONS_MAX)
                .map(|p| subject(topic, p))
                .collect(),
        );
        let (tx, rx) = flume::unbounded();
        self.runtime
            .spawn(publish_loop(client, js, rx, subjects, acks));
        Ok(Box::new(NatsProducer { batches: tx }))
    }

    fn consumer(&self, topic: &str, partitions: &[u32]) -> Result<Box<dyn Consumer>, DriverError> {
        let client = self.runtime.block_on(connect(&self.addr))?;
        let js = {
            let _rt = self.runtime.enter();
            jetstream::new(client)
        };
        let (tx, rx) = FeedConsumer::channel();
        let mut tasks = Vec::new();
        for &p in partitions {
            let messages = self.runtime.block_on(async {
                let stream = js.get_stream(stream_name(topic, p)).await.map_err(peer)?;
                let c = stream
                    .create_consumer(consumer::pull::Config {
                        ack_policy: consumer::AckPolicy::None,
                        deliver_policy: consumer::DeliverPolicy::All,
                        ..Default::default()
                    })
                    .await
                    .map_err(peer)?;
                c.stream()
                    .max_messages_per_batch(PULL_BATCH)
                    .messages()
                    .await
                    .map_err(peer)
            })?;
            let task = self.runtime.spawn(feed_partition(p, messages, tx.clone()));
            tasks.push(task.abort_handle());
        }
        let guard = AbortOnDrop(tasks);
        Ok(Box::new(FeedConsumer::new(rx, Some(Box::new(guard)))))
    }

    fn shutdown(self: Box<Self>) -> Result<(), DriverError> {
        let NatsDriver { runtime, admin, .. } = *self;
        drop(admin);
        runtime.shutdown_timeout(Duration::from_secs(2));
        Ok(())
    }
}

struct AbortOnDrop(Vec<tokio::task::AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// A batch for the producer's task, and where its outcome goes.
struct Batch {
    partition: u32,
    values: Vec<Vec<u8>>,
    done: flume::Sender<Result<u64, DriverError>>,
}

struct NatsProducer {
    batches: flume::Sender<Batch>,
}

impl Producer for NatsProducer {
    fn send(&mut self, partition: u32, values: Vec<Vec<u8>>) -> AckFuture {
        let (done, rx) = flume::bounded(1);
        // Queued in call order; the task publishes in queue order.
        let queued = self.batches.send(Batch {
            partition,
            values,
            done,
        });
        if queued.is_err() {
            return Box::pin(std::future::ready(Err(peer("the publisher task stopped"))));
        }
        Box::pin(async move {
            rx.recv_async()
                .await
                .unwrap_or_else(|_| Err(peer("the publisher task stopped")))
        })
    }
}

/// Publishes each batch in order; a batch's PubAcks are awaited on a task of their own, so
/// that later batches go out meanwhile.
async fn publish_loop(
    client: async_nats::Client,
    js: jetstream::Context,
    batches: flume::Receiver<Batch>,
    subjects: Arc<Vec<String>>,
    acks: AckLevel,
) {
    while let Ok(b) = batches.recv_async().await {
        let Some(subject) = subjects.get(b.partition as usize) else {
            let _ = b.done.send(Err(peer("partition out of range")));
            continue;
        };
        let count = b.values.len() as u64;
        if acks == AckLevel::None {
            let mut outcome = Ok(count);
            for v in b.values {
                if let Err(e) = client.publish(subject.clone(), Bytes::from(v)).await {
                    outcome = Err(peer(e));
                    break;
                }
            }
            let _ = b.done.send(outcome);
            continue;
        }
        let mut pending = Vec::with_capacity(b.values.len());
        let mut failed = None;
        for v in b.values {
            match js.publish(subject.clone(), Bytes::from(v)).await {
                Ok(ack) => pending.push(ack),
                Err(e) => {
                    failed = Some(peer(e));
                    break;
                }
            }
        }
        let done = b.done;
        tokio::spawn(async move {
            let mut outcome = failed.map_or(Ok(count), Err);
            for ack in pending {
                if let Err(e) = ack.await
                    && outcome.is_ok()
                {
                    outcome = Err(peer(e));
                }
            }
            let _ = done.send(outcome);
        });
    }
}

/// Hands a partition's messages to the consumer thread, whatever has arrived in one delivery.
async fn feed_partition(
    partition: u32,
    messages: consumer::pull::Stream,
    tx: flume::Sender<FeedItem>,
) {
    let mut chunks = messages.ready_chunks(DELIVERY_MESSAGES_MAX);
    while let Some(chunk) = chunks.next().await {
        let mut out = Vec::with_capacity(chunk.len());
        let mut error = None;
        for m in chunk {
            match m {
                Ok(m) => {
                    // Stream sequences start at 1; offsets at 0.
                    let offset = m.info().ok().map(|i| i.stream_sequence.saturating_sub(1));
                    out.push((offset, m.message.payload));
                }
                Err(e) => {
                    error.get_or_insert_with(|| peer(format!("partition {partition}: {e}")));
                }
            }
        }
        if !out.is_empty() {
            let d = Delivery {
                partition,
                messages: out,
            };
            if tx.send_async(Ok(d)).await.is_err() {
                return;
            }
        }
        if let Some(e) = error
            && tx.send_async(Err(e)).await.is_err()
        {
            return;
        }
    }
}
