//! The `shardline` network driver: a Shardline server at `--addr`, through the project's own
//! client (`shardline_net::client`).
//!
//! - Each producer thread gets its own [`Client`] (so its own connection per shard: shard-aware
//!   routing sends every batch straight to the partition's owner) and sends one record batch
//!   per `send` with [`Client::produce_async`]. Batches are pipelined: up to `--inflight`
//!   requests per producer wait for replies on the same connections. The server applies the
//!   requests of one connection to one partition in arrival order (docs/protocol.md,
//!   "Pipelining and ordering"), which is the order the consumers check.
//! - Each consumer thread gets its own [`Client`] and a [`NetConsumer`] subscribed to its
//!   partitions from the earliest offset: server push within credits, every batch CRC-checked
//!   by the client.
//!
//! Contract detail: `produce_async` writes its request on its first poll only when the route
//! and the shard's connection are already known (otherwise it first awaits Metadata and a
//! connect, on another thread). [`ShardlineDriver::producer`] therefore resolves the route and
//! opens every shard connection before the run (one ListOffsets per partition), so that the
//! first poll of every send writes the request, in call order.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use shardline_net::client::{
    Acks, Client, ClientConfig, ClientError, Consumer as NetClientConsumer, ConsumerConfig,
    ConsumerRecord, OffsetSpec, TopicConfig, code,
};

use super::{AckFuture, Consumer, Driver, DriverError, Producer, Received};
use crate::workload::AckLevel;

/// Records delivered from the client's buffer in one `poll_deliver` (then other work runs).
const RECORDS_PER_POLL_MAX: usize = 4096;
/// Each subscription's record window: large enough that 100-byte messages at full speed are
/// not held back by credit round trips, bounded so a slow consumer holds back the server.
const CREDIT_RECORDS: u32 = 32 * 1024;
/// Each subscription's byte window.
const CREDIT_BYTES: u64 = 16 << 20;
/// The client's default allows this many requests in flight per connection; `--inflight`
/// above it raises it (the first poll of a send must never wait for a permit).
const CLIENT_INFLIGHT_MIN: usize = 1024;

/// A Shardline server reached over the network.
pub struct ShardlineDriver {
    addr: String,
    config: ClientConfig,
    admin: Client,
    /// Codec of the producers' batches (`--compression`).
    compression: shardline_engine::batch::compress::Codec,
    /// Replicas of each partition of the topics it creates (a cluster; 1 = CreateTopic).
    replicas: u32,
}

impl ShardlineDriver {
    /// Connects to `addr` (Handshake on the bootstrap connection). `inflight` is the most
    /// batches one producer keeps outstanding.
    pub fn connect(addr: &str, inflight: u32) -> Result<Self, DriverError> {
        let config = ClientConfig {
            client_id: format!("shardline-loadgen {}", env!("CARGO_PKG_VERSION")),
            inflight_requests_max: CLIENT_INFLIGHT_MIN.max(inflight as usize + 1),
            ..ClientConfig::default()
        };
        let admin = Client::connect(addr, config.clone())?;
        Ok(ShardlineDriver {
            addr: addr.to_string(),
            config,
            admin,
            compression: shardline_engine::batch::compress::Codec::None,
            replicas: 1,
        })
    }

    /// Compresses every produced batch with `codec`.
    pub fn with_compression(mut self, codec: shardline_engine::batch::compress::Codec) -> Self {
        self.compression = codec;
        self
    }

    /// Creates topics with `replicas` replicas per partition.
    pub fn replicas(mut self, replicas: u32) -> Self {
        self.replicas = replicas.max(1);
        self
    }

    fn client(&self) -> Result<Client, DriverError> {
        Ok(Client::connect(&self.addr, self.config.clone())?)
    }
}

fn net_acks(a: AckLevel) -> Acks {
    match a {
        AckLevel::None => Acks::None,
        AckLevel::Leader => Acks::Leader,
        AckLevel::Durable => Acks::Durable,
        AckLevel::All => Acks::All,
    }
}

/// What a Shardline ack means at each level (the embedded engine's too).
pub(crate) fn durability(acks: AckLevel) -> String {
    match acks {
        AckLevel::Durable => "durable: fdatasync before ack".into(),
        AckLevel::All => "all: committed on a majority of the replicas (durable with one)".into(),
        AckLevel::Leader => "leader: in memory, in order".into(),
        AckLevel::None => "none: no ack".into(),
    }
}

impl Driver for ShardlineDriver {
    fn name(&self) -> &'static str {
        "shardline"
    }

    fn durability(&self, acks: AckLevel) -> String {
        durability(acks)
    }

    fn create_topic(&self, topic: &str, partitions: u32) -> Result<(), DriverError> {
        match self.admin.delete_topic(topic) {
            Ok(()) => {}
            Err(e) if e.code() == Some(code::UNKNOWN_TOPIC) => {}
            Err(e) => return Err(e.into()),
        }
        let config = TopicConfig {
            partitions,
            ..TopicConfig::default()
        };
        if self.replicas > 1 {
            self.admin
                .create_replicated_topic(topic, config, self.replicas)?;
            // Wait (bounded) until every partition has a leader: the run measures writes.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            loop {
                let r = self.admin.describe_cluster(&[topic])?;
                let led = r
                    .topics
                    .iter()
                    .all(|t| t.partitions.iter().all(|p| p.leader != 0));
                if led || std::time::Instant::now() >= deadline {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        } else {
            self.admin.create_topic(topic, config)?;
        }
        Ok(())
    }

    fn producer(&self, topic: &str, acks: AckLevel) -> Result<Box<dyn Producer>, DriverError> {
        let client = self.client()?;
        // Warm the route and every shard connection (see the module doc).
        for partition in 0..client.partitions(topic)? {
            client.list_offsets(topic, partition, OffsetSpec::Latest)?;
        }
        Ok(Box::new(NetProducer {
            client,
            topic: topic.into(),
            acks: net_acks(acks),
            compression: self.compression,
        }))
    }

    fn consumer(&self, topic: &str, partitions: &[u32]) -> Result<Box<dyn Consumer>, DriverError> {
        let config = ConsumerConfig {
            credit_records: CREDIT_RECORDS,
            credit_bytes: CREDIT_BYTES,
            ..ConsumerConfig::default()
        };
        let mut consumer = NetClientConsumer::new(self.client()?, config)?;
        for &partition in partitions {
            consumer.subscribe(topic, partition, OffsetSpec::Earliest)?;
        }
        Ok(Box::new(NetConsumer {
            state: ConsumerState::Idle(Box::new(consumer)),
        }))
    }

    fn shutdown(self: Box<Self>) -> Result<(), DriverError> {
        Ok(())
    }
}

struct NetProducer {
    client: Client,
    topic: std::sync::Arc<str>,
    acks: Acks,
    compression: shardline_engine::batch::compress::Codec,
}

impl Producer for NetProducer {
    fn send(&mut self, partition: u32, values: Vec<Vec<u8>>) -> AckFuture {
        let count = values.len() as u64;
        let built = match super::embedded::record_batch(values, self.compression) {
            Ok(bytes) => bytes,
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        let (client, topic, acks) = (self.client.clone(), self.topic.clone(), self.acks);
        Box::pin(async move {
            client.produce_async(&topic, partition, built, acks).await?;
            Ok(count)
        })
    }
}

type PollFuture = Pin<
    Box<dyn Future<Output = (Box<NetClientConsumer>, Result<ConsumerRecord, ClientError>)> + Send>,
>;

/// The client's consumer is polled through `poll_async`, whose future borrows it; to keep that
/// future (and so the registered waker) alive across `poll_deliver` calls, the future owns the
/// consumer while it waits and hands it back with the record.
enum ConsumerState {
    /// Boxed: the client's consumer is large, the other states small.
    Idle(Box<NetClientConsumer>),
    Waiting(PollFuture),
    /// Every subscription ended: nothing more will come.
    Ended,
    /// Only while a state transition is in progress.
    Taken,
}

struct NetConsumer {
    state: ConsumerState,
}

fn deliver(r: &ConsumerRecord, on_message: &mut dyn FnMut(Received<'_>)) {
    on_message(Received {
        partition: r.partition,
        offset: Some(r.offset),
        value: &r.value,
    });
}

impl NetConsumer {
    /// Hands out records already received, without waiting. `Ok(n)`: `n` delivered.
    fn drain(
        &mut self,
        mut c: Box<NetClientConsumer>,
        mut delivered: usize,
        on_message: &mut dyn FnMut(Received<'_>),
    ) -> Poll<Result<usize, DriverError>> {
        while delivered < RECORDS_PER_POLL_MAX {
            match c.poll(Duration::ZERO) {
                Ok(Some(r)) => {
                    deliver(&r, on_message);
                    delivered += 1;
                }
                Ok(None) => break,
                Err(e) => {
                    self.state = if c.assignment().is_empty() {
                        ConsumerState::Ended
                    } else {
                        ConsumerState::Idle(c)
                    };
                    return Poll::Ready(Err(e.into()));
                }
            }
        }
        self.state = ConsumerState::Idle(c);
        if delivered > 0 {
            Poll::Ready(Ok(delivered))
        } else {
            Poll::Pending
        }
    }
}

impl Consumer for NetConsumer {
    fn poll_deliver(
        &mut self,
        cx: &mut Context<'_>,
        on_message: &mut dyn FnMut(Received<'_>),
    ) -> Poll<Result<usize, DriverError>> {
        let mut fut = match std::mem::replace(&mut self.state, ConsumerState::Taken) {
            ConsumerState::Idle(c) => {
                if let Poll::Ready(r) = self.drain(c, 0, on_message) {
                    return Poll::Ready(r);
                }
                let ConsumerState::Idle(mut c) =
                    std::mem::replace(&mut self.state, ConsumerState::Taken)
                else {
                    return Poll::Pending;
                };
                Box::pin(async move {
                    let r = c.poll_async().await;
                    (c, r)
                }) as PollFuture
            }
            ConsumerState::Waiting(f) => f,
            ConsumerState::Ended | ConsumerState::Taken => {
                self.state = ConsumerState::Ended;
                return Poll::Pending;
            }
        };
        match fut.as_mut().poll(cx) {
            Poll::Pending => {
                self.state = ConsumerState::Waiting(fut);
                Poll::Pending
            }
            Poll::Ready((c, Ok(record))) => {
                deliver(&record, on_message);
                match self.drain(c, 1, on_message) {
                    Poll::Pending => Poll::Ready(Ok(1)),
                    ready => ready,
                }
            }
            Poll::Ready((c, Err(e))) => {
                self.state = if c.assignment().is_empty() {
                    ConsumerState::Ended
                } else {
                    ConsumerState::Idle(c)
                };
                Poll::Ready(Err(e.into()))
            }
        }
    }
}
