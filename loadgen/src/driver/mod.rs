//! The seam between the load generator and a broker.
//!
//! A [`Driver`] creates the topic and hands out one [`Producer`] per producer thread and one
//! [`Consumer`] per consumer thread. Everything is poll-based and runtime-free so that the same
//! producer and consumer loops (and the same measurements) drive every broker:
//!
//! - `embedded`: the Shardline engine in this process ([`embedded`]).
//! - `shardline` over `--addr`: the network client, own connections per thread, pipelined
//!   ([`shardline`]).
//! - `nats` and `redis`: JetStream and Redis Streams, as peers under the same workload
//!   ([`nats`], [`redis`]); each partition is a stream of its own.
//!
//! Contract for implementors:
//! - [`Producer::send`] returns an [`AckFuture`] that submits its batch on its *first poll* (or
//!   before returning). The producer loop polls every new future once before creating the next,
//!   so batches to one partition reach the broker in call order; consumers check that order.
//! - [`Consumer::poll_deliver`] registers the waker like any future when nothing is ready, and
//!   reports each message with its partition, its offset if the broker has one, and its value.
//! - Queues inside a driver are bounded: a slow consumer holds back the broker, not memory.

pub mod embedded;
mod feed;
pub mod nats;
pub mod redis;
pub mod shardline;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::workload::AckLevel;

/// Resolves to the number of messages acknowledged, or the reason the batch failed.
pub type AckFuture = Pin<Box<dyn Future<Output = Result<u64, DriverError>> + Send>>;

/// One delivered message, borrowed from the driver's buffer (zero-copy where possible).
#[derive(Debug, Clone, Copy)]
pub struct Received<'a> {
    pub partition: u32,
    /// Broker-assigned offset, dense per partition (`None` if the broker has none).
    pub offset: Option<u64>,
    pub value: &'a [u8],
}

/// Errors a driver reports.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DriverError {
    #[error("{0}")]
    NotAvailable(String),
    #[error("engine: {0}")]
    Engine(#[from] shardline_engine::Error),
    #[error("shardline: {0}")]
    Net(#[from] shardline_net::client::ClientError),
    /// A peer broker (NATS, Redis) refused or failed.
    #[error("{broker}: {message}")]
    Peer {
        broker: &'static str,
        message: String,
    },
    #[error("corrupt delivery on partition {partition}: {reason}")]
    Corrupt { partition: u32, reason: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

impl DriverError {
    /// Whether this error means delivered data failed an integrity check (CRC, layout).
    pub fn is_corruption(&self) -> bool {
        matches!(
            self,
            DriverError::Corrupt { .. }
                | DriverError::Engine(shardline_engine::Error::CorruptBatch(_))
                | DriverError::Net(shardline_net::client::ClientError::Batch(_))
        )
    }
}

/// A broker the load generator can drive.
pub trait Driver: Send + Sync {
    /// Name written to the results (`"embedded"`, `"shardline"`, `"nats"`, `"redis"`).
    fn name(&self) -> &'static str;

    /// What an acknowledgement at `acks` means on this broker as configured (for the results:
    /// peers differ in when they fsync).
    fn durability(&self, acks: AckLevel) -> String {
        acks.as_str().to_string()
    }

    /// Creates `topic` with `partitions` partitions, empty: an existing topic of that name is
    /// deleted first, so that consumers reading from the earliest offset see only this run.
    fn create_topic(&self, topic: &str, partitions: u32) -> Result<(), DriverError>;

    /// A producer for one thread.
    fn producer(&self, topic: &str, acks: AckLevel) -> Result<Box<dyn Producer>, DriverError>;

    /// A consumer for one thread, reading `partitions` of `topic` from the earliest offset.
    fn consumer(&self, topic: &str, partitions: &[u32]) -> Result<Box<dyn Consumer>, DriverError>;

    /// Closes connections, and stops the broker and removes its temporary files if the driver
    /// owns them. The topic itself stays (the next run recreates it).
    fn shutdown(self: Box<Self>) -> Result<(), DriverError>;
}

/// Sends batches; owned by one thread.
pub trait Producer: Send {
    /// Sends `values` as one batch to `partition` (see the module doc for ordering).
    fn send(&mut self, partition: u32, values: Vec<Vec<u8>>) -> AckFuture;
}

/// Receives messages; owned by one thread.
pub trait Consumer: Send {
    /// Polls for the next delivery (one or more messages of one partition). Calls `on_message`
    /// for each message and returns how many there were. An `Err` concerns one delivery or one
    /// partition; the consumer stays usable for the others.
    fn poll_deliver(
        &mut self,
        cx: &mut Context<'_>,
        on_message: &mut dyn FnMut(Received<'_>),
    ) -> Poll<Result<usize, DriverError>>;
}

/// Which broker family `--driver` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DriverKind {
    Shardline,
    Nats,
    Redis,
}

/// Where and how to reach the broker.
#[derive(Debug, Clone)]
pub struct DriverOptions {
    pub kind: DriverKind,
    /// Network address; `None` runs the embedded engine.
    pub addr: Option<String>,
    /// Embedded only: data directory (default: a temporary directory removed afterwards).
    pub data_dir: Option<PathBuf>,
    /// Embedded only: shard count (0 = one per usable core).
    pub shards: u32,
    /// Batches one producer keeps in flight (sizes the network clients' request windows).
    pub inflight: u32,
    /// Shardline only: codec of every produced batch (none, lz4, zstd).
    pub compression: shardline_engine::batch::compress::Codec,
    /// Shardline over the network: replicas of each partition of the run's topic.
    pub replicas: u32,
}

/// Opens the driver the options name.
pub fn open(opts: &DriverOptions) -> Result<Box<dyn Driver>, DriverError> {
    let need_addr = |name: &str| {
        DriverError::NotAvailable(format!(
            "--driver {name} needs --addr HOST:PORT (the load generator embeds only Shardline)"
        ))
    };
    match (opts.kind, opts.addr.as_deref()) {
        (DriverKind::Shardline, None) => Ok(Box::new(
            embedded::EmbeddedDriver::open(opts.data_dir.clone(), opts.shards)?
                .with_compression(opts.compression),
        )),
        (DriverKind::Shardline, Some(addr)) => Ok(Box::new(
            shardline::ShardlineDriver::connect(addr, opts.inflight)?
                .replicas(opts.replicas)
                .with_compression(opts.compression),
        )),
        (DriverKind::Nats, Some(addr)) => Ok(Box::new(nats::NatsDriver::connect(addr)?)),
        (DriverKind::Redis, Some(addr)) => Ok(Box::new(redis::RedisDriver::connect(addr)?)),
        (DriverKind::Nats, None) => Err(need_addr("nats")),
        (DriverKind::Redis, None) => Err(need_addr("redis")),
    }
}
