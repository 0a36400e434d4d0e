//! The Rust client of Shardline, over plain `std::net::TcpStream`s.
//!
//! Usable from plain threads and from any async runtime: every call has a blocking form and an
//! `_async` form returning a `Send` future that awaits a flume channel (no runtime timers, no
//! runtime I/O). Blocking forms must not be called from inside an async task.
//!
//! - [`Client`]: Handshake, Metadata, a connection per shard opened lazily and chosen per
//!   partition (shard-aware routing, falling back to the bootstrap connection), admin calls
//!   (create/delete/list/describe topic, list offsets, stats, ping) and single-batch
//!   produce/fetch.
//! - [`Producer`]: per-partition batching with linger, key-hash or round-robin partitioning,
//!   acks, retries with backoff and jitter on retriable codes, bounded memory.
//! - [`Consumer`]: server-push subscriptions with record and byte credits granted back as the
//!   application consumes, and a long-poll fetch path.
//!
//! Inside: `conn.rs` (one connection: reader thread, timer thread, writer lock, correlation ids),
//! `pool.rs` (routing), `accumulator.rs` and `partitioner.rs` (pure batching and partitioning),
//! `backoff.rs` (retry delays). The wire format is docs/protocol.md, through `shardline-protocol`;
//! this crate depends on it and on the record-batch format only (no engine, no glommio).
//!
//! ```no_run
//! use shardline_client::{Client, ClientConfig, Consumer, ConsumerConfig, OffsetSpec,
//!                             Producer, ProducerConfig, TopicConfig};
//! # fn main() -> Result<(), shardline_client::ClientError> {
//! let client = Client::connect("127.0.0.1:7070", ClientConfig::default())?;
//! client.create_topic("orders", TopicConfig { partitions: 4, ..Default::default() })?;
//! let producer = Producer::new(client.clone(), ProducerConfig::default())?;
//! let offset = producer.send("orders", Some(b"customer-7"), "hello", vec![]).wait()?.offset;
//! let mut consumer = Consumer::new(client, ConsumerConfig::default())?;
//! consumer.subscribe("orders", 0, OffsetSpec::Earliest)?;
//! while let Some(record) = consumer.poll(std::time::Duration::from_secs(1))? {
//!     println!("{} {:?}", record.offset, record.value);
//! }
//! # let _ = offset; Ok(()) }
//! ```

mod accumulator;
mod backoff;
mod cluster;
mod conn;
mod consumer;
mod coordinator;
mod error;
mod group_consumer;
mod groups;
mod membership;
mod message;
mod nodes;
mod ops;
mod partitioner;
mod pool;
mod producer;
mod queue;
mod queue_leader;
mod tls;

#[cfg(test)]
mod fake_server;

use std::time::Duration;

use shardline_protocol as protocol;

pub use crate::protocol::queue::{
    QueueCreateResponse, QueueMessage, QueuePartitionStats, QueueReceipt, QueueSettings,
};
pub use backoff::Backoff;
pub use consumer::{Consumer, ConsumerConfig, ConsumerRecord, FetchedRecords, SubscriptionInfo};
pub use error::ClientError;
pub use group_consumer::{GroupConsumer, GroupConsumerConfig, Guarantee};
pub use groups::ProducerId;
pub use message::{Deduplicator, headers, new_message_id};
pub use ops::GroupPartitionLag;
pub use partitioner::partition_for_key;
pub use pool::{Client, ProduceAck, SHARD_RETRY_AFTER, TopicRoute};
pub use producer::{Delivery, Producer, ProducerConfig, ProducerRecord, SendHandle};
pub use queue::{CORRELATION_ID_HEADER, REPLY_TO_HEADER, ReplyMessage, Requester, all_ok, reply};
pub use queue::{PendingAck, QueueConsumer, QueueConsumerConfig, SendOptions};
pub use shardline_protocol::Credentials;
pub use shardline_protocol::tls::ClientTls;

// The wire types callers of the client handle.
pub use crate::protocol::{
    Acks, CommitOffset, CommittedOffset, DescribeGroupResponse, DescribeTopicResponse,
    GroupAssignment, MetadataResponse, OffsetSpec, PartitionInfo, StatsResponse, TopicConfig,
    TopicInfo, code, code_name,
};
pub use shardline_format::Header;

/// Settings of a [`Client`] and of every connection it opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Sent in the Handshake (server logs and stats); at most 255 bytes.
    pub client_id: String,
    /// Deadline of TCP connect plus Handshake.
    pub connect_timeout: Duration,
    /// Deadline of every request (a fetch adds its `max_wait`), and of a stalled socket write.
    pub request_timeout: Duration,
    /// Requests awaiting replies per connection; more wait (responses are pipelined).
    pub inflight_requests_max: usize,
    /// Largest frame accepted from the server. A fetch or push carries whole batches, and a
    /// batch may be as large as the engine's `batch_bytes_max` (at most 64 MiB).
    pub response_frame_bytes_max: u32,
    /// Bytes asked of each socket read while frames are small.
    pub read_buffer_bytes: u32,
    /// Route each partition's requests to its shard's own address (else: bootstrap only).
    pub shard_aware: bool,
    /// Connect with TLS (docs/security.md); `None` = plain TCP.
    pub tls: Option<shardline_protocol::tls::ClientTls>,
    /// Authenticate after the Handshake on every connection (docs/security.md).
    pub credentials: Option<shardline_protocol::Credentials>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            client_id: format!("shardline-rs {}", env!("CARGO_PKG_VERSION")),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            inflight_requests_max: 1024,
            response_frame_bytes_max: (64 << 20) + (1 << 20),
            read_buffer_bytes: 64 << 10,
            shard_aware: true,
            tls: None,
            credentials: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_send<T: Send>(_: &T) {}
    fn is_send_type<T: Send>() {}
    fn is_send_sync<T: Send + Sync>() {}

    /// The async forms must be usable on multi-threaded runtimes: their futures are `Send`.
    #[test]
    fn async_forms_are_send() {
        is_send_sync::<Client>();
        is_send_sync::<Producer>();
        is_send_type::<Consumer>();
        // Build (never poll) a future of each kind.
        let make = |c: Client| {
            is_send(&c.create_topic_async("t", TopicConfig::default()));
            is_send(&c.list_topics_async());
            is_send(&c.fetch_async("t", 0, 0, Duration::ZERO, 1));
            is_send(&c.produce_async("t", 0, bytes::Bytes::new(), Acks::Leader));
            is_send(&c.list_offsets_async("t", 0, OffsetSpec::Latest));
        };
        let _ = make;
        let produce = |p: &Producer| {
            is_send(&p.send_async("t", None, "v", vec![]));
            is_send(&p.flush_async());
        };
        let _ = produce;
        let consume = |c: &mut Consumer| {
            is_send(&c.poll_async());
        };
        let _ = consume;
        let subscribe = |c: &mut Consumer| {
            is_send(&c.subscribe_async("t", 0, OffsetSpec::Earliest));
        };
        let _ = subscribe;
    }

    #[test]
    fn connecting_to_nothing_is_a_connect_error() {
        // Port 1 on loopback: nothing listens there in any sane test environment.
        let config = ClientConfig {
            connect_timeout: Duration::from_millis(500),
            ..ClientConfig::default()
        };
        match Client::connect("127.0.0.1:1", config) {
            Err(ClientError::Connect { addr, .. }) => assert_eq!(addr, "127.0.0.1:1"),
            other => panic!("expected a connect error, got {other:?}"),
        }
        let bad = Client::connect("not an address", ClientConfig::default());
        assert!(matches!(bad, Err(ClientError::Connect { .. })), "{bad:?}");
    }
}
