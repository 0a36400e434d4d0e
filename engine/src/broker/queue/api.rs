//! The embedding API of work queues: [`Engine`] methods, blocking and as futures.

use std::time::Duration;

use super::{
    DLQ_PARTITION_HEADER, DLQ_TOPIC_HEADER, LeaseResults, QueueConfig, QueueMessage,
    QueuePartitionStats, QueueRequest, Receipt, ReceiveOptions,
};
use crate::api::PartitionKey;
use crate::api::{Acks, TopicConfig, TopicInfo};
use crate::batch::BatchBuilder;
use crate::broker::engine::{Engine, block};
use crate::error::{Error, Result};
use crate::shard::Reply;

/// Replicas of a queue created on a cluster without a replica count, at most.
const CLUSTER_QUEUE_REPLICAS: usize = 3;

/// The settings of the dead-letter queue `create_queue` makes for a queue with `q`.
fn dead_letter_settings(q: &QueueConfig) -> QueueConfig {
    QueueConfig {
        max_deliveries: u32::MAX,
        dead_letter_topic: None,
        priority_levels: 1,
        ..q.clone()
    }
}

impl Engine {
    async fn queue_ask_async<T>(
        &self,
        topic: &str,
        partition: u32,
        make: impl FnOnce(PartitionKey, Reply<T>) -> QueueRequest,
    ) -> Result<T> {
        let (name, shard) = self.locate(topic, partition)?;
        self.ask_async(shard, |reply| {
            super::request(make((name, partition), reply))
        })
        .await
    }

    /// Creates a work-queue topic. If the settings name a dead-letter topic that does not
    /// exist, it is created first, as a queue with the same partition count whose messages
    /// are never dead-lettered again.
    ///
    /// On a cluster both go through the controller, replicated on `topic.replicas` nodes, or
    /// on min(3, nodes) when that is 1 (docs/replication.md, "Work queues on a cluster").
    pub fn create_queue(&self, name: &str, mut topic: TopicConfig) -> Result<TopicInfo> {
        let q = topic.queue.get_or_insert_with(QueueConfig::default).clone();
        q.validate()?;
        if let Some(c) = self.inner.cluster.get() {
            if topic.replicas <= 1 {
                topic.replicas = c.nodes().len().min(CLUSTER_QUEUE_REPLICAS) as u32;
            }
            return self.create_queue_replicated(name, topic, &q);
        }
        if let Some(dlq) = &q.dead_letter_topic {
            if dlq == name {
                return Err(Error::InvalidArgument(
                    "a queue cannot be its own dead-letter topic".into(),
                ));
            }
            if self.route(dlq).is_err() {
                let dlq_cfg = TopicConfig {
                    queue: Some(dead_letter_settings(&q)),
                    ..TopicConfig::with_partitions(topic.partitions)
                };
                // One metadata write for both: a crash leaves the pair or neither.
                let mut created =
                    self.create_topics(&[(dlq.as_str(), dlq_cfg, true), (name, topic, false)])?;
                return created
                    .pop()
                    .ok_or_else(|| Error::Runtime("create_topics returned nothing".into()));
            }
        }
        self.create_topic(name, topic)
    }

    /// A queue (and its missing dead-letter topic, first: two controller commands) on a
    /// cluster.
    fn create_queue_replicated(
        &self,
        name: &str,
        topic: TopicConfig,
        q: &QueueConfig,
    ) -> Result<TopicInfo> {
        if let Some(dlq) = &q.dead_letter_topic {
            if dlq == name {
                return Err(Error::InvalidArgument(
                    "a queue cannot be its own dead-letter topic".into(),
                ));
            }
            if self.route(dlq).is_err() {
                let dlq_cfg = TopicConfig {
                    queue: Some(dead_letter_settings(q)),
                    replicas: topic.replicas,
                    ..TopicConfig::with_partitions(topic.partitions)
                };
                match block(self.create_topic_replicated(dlq, dlq_cfg)) {
                    Ok(_) | Err(Error::TopicExists(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        block(self.create_topic_replicated(name, topic))
    }

    /// Leases messages of one partition (long-polls up to `options.max_wait`).
    pub fn queue_receive(
        &self,
        topic: &str,
        partition: u32,
        options: ReceiveOptions,
    ) -> Result<Vec<QueueMessage>> {
        block(self.queue_receive_async(topic, partition, options))
    }

    pub async fn queue_receive_async(
        &self,
        topic: &str,
        partition: u32,
        options: ReceiveOptions,
    ) -> Result<Vec<QueueMessage>> {
        self.queue_ask_async(topic, partition, |key, reply| QueueRequest::Receive {
            key,
            options,
            reply,
        })
        .await
    }

    /// Acks deliveries; answered once the acks are durable.
    pub fn queue_ack(
        &self,
        topic: &str,
        partition: u32,
        receipts: &[Receipt],
    ) -> Result<LeaseResults> {
        block(self.queue_ack_async(topic, partition, receipts.to_vec()))
    }

    pub async fn queue_ack_async(
        &self,
        topic: &str,
        partition: u32,
        receipts: Vec<Receipt>,
    ) -> Result<LeaseResults> {
        self.queue_ask_async(topic, partition, |key, reply| QueueRequest::Ack {
            key,
            receipts,
            reply,
        })
        .await
    }

    /// Gives deliveries back: visible again after `delay_ms` (`None`: the backoff).
    pub fn queue_nack(
        &self,
        topic: &str,
        partition: u32,
        receipts: &[Receipt],
        delay_ms: Option<u64>,
    ) -> Result<LeaseResults> {
        block(self.queue_nack_async(topic, partition, receipts.to_vec(), delay_ms))
    }

    pub async fn queue_nack_async(
        &self,
        topic: &str,
        partition: u32,
        receipts: Vec<Receipt>,
        delay_ms: Option<u64>,
    ) -> Result<LeaseResults> {
        self.queue_ask_async(topic, partition, |key, reply| QueueRequest::Nack {
            key,
            receipts,
            delay_ms,
            reply,
        })
        .await
    }

    /// Sets the deadline of leases to now + `visibility_ms` (0 makes them visible at once).
    pub async fn queue_change_visibility_async(
        &self,
        topic: &str,
        partition: u32,
        receipts: Vec<Receipt>,
        visibility_ms: u64,
    ) -> Result<LeaseResults> {
        self.queue_ask_async(topic, partition, |key, reply| {
            QueueRequest::ChangeVisibility {
                key,
                receipts,
                visibility_ms,
                reply,
            }
        })
        .await
    }

    pub fn queue_change_visibility(
        &self,
        topic: &str,
        partition: u32,
        receipts: &[Receipt],
        visibility_ms: u64,
    ) -> Result<LeaseResults> {
        block(self.queue_change_visibility_async(
            topic,
            partition,
            receipts.to_vec(),
            visibility_ms,
        ))
    }

    /// Depth, in-flight count, oldest message age and counters of every partition.
    pub fn queue_stats(&self, topic: &str) -> Result<Vec<QueuePartitionStats>> {
        block(self.queue_stats_async(topic))
    }

    pub async fn queue_stats_async(&self, topic: &str) -> Result<Vec<QueuePartitionStats>> {
        let n = self.route(topic)?.shards.len() as u32;
        let mut out = Vec::with_capacity(n as usize);
        for p in 0..n {
            out.push(
                self.queue_ask_async(topic, p, |key, reply| QueueRequest::Stats { key, reply })
                    .await?,
            );
        }
        Ok(out)
    }

    /// Up to `max` messages of a partition that are not acked, in offset order, without
    /// leasing them (inspect a dead-letter queue, debug a stuck queue).
    pub async fn queue_peek_async(
        &self,
        topic: &str,
        partition: u32,
        max: usize,
    ) -> Result<Vec<QueueMessage>> {
        self.queue_ask_async(topic, partition, |key, reply| QueueRequest::Peek {
            key,
            max,
            reply,
        })
        .await
    }

    pub fn queue_peek(&self, topic: &str, partition: u32, max: usize) -> Result<Vec<QueueMessage>> {
        block(self.queue_peek_async(topic, partition, max))
    }

    /// Moves up to `max` messages from a dead-letter queue back to the topic and partition they
    /// came from (their `x-dlq-*` headers name it), without those headers. Each is produced
    /// durably before it is acked in the dead-letter queue (at-least-once). Returns how many.
    pub async fn queue_redrive_async(&self, dlq: &str, max: usize) -> Result<u64> {
        let partitions = self.route(dlq)?.shards.len() as u32;
        let mut moved = 0u64;
        for p in 0..partitions {
            while (moved as usize) < max {
                let options = ReceiveOptions {
                    max_messages: (max - moved as usize).min(256),
                    visibility_timeout_ms: Some(60_000),
                    max_wait: Duration::ZERO,
                };
                let msgs = self.queue_receive_async(dlq, p, options).await?;
                if msgs.is_empty() {
                    break;
                }
                for m in &msgs {
                    self.redrive_one(m).await?;
                }
                let receipts = msgs.iter().map(QueueMessage::receipt).collect();
                self.queue_ack_async(dlq, p, receipts).await?;
                moved += msgs.len() as u64;
            }
        }
        Ok(moved)
    }

    pub fn queue_redrive(&self, dlq: &str, max: usize) -> Result<u64> {
        block(self.queue_redrive_async(dlq, max))
    }

    async fn redrive_one(&self, m: &QueueMessage) -> Result<()> {
        let text = |name| {
            m.header(name)
                .and_then(|v| std::str::from_utf8(v).ok())
                .map(str::to_string)
        };
        let (Some(topic), Some(partition)) = (text(DLQ_TOPIC_HEADER), text(DLQ_PARTITION_HEADER))
        else {
            return Err(Error::InvalidArgument(format!(
                "message at offset {} has no {DLQ_TOPIC_HEADER}/{DLQ_PARTITION_HEADER} headers",
                m.offset
            )));
        };
        let partition: u32 = partition.parse().map_err(|_| {
            Error::InvalidArgument(format!("bad {DLQ_PARTITION_HEADER} '{partition}'"))
        })?;
        let headers = m
            .headers
            .iter()
            .filter(|h| !h.key.starts_with("x-dlq-"))
            .cloned()
            .collect();
        let mut b = BatchBuilder::new();
        b.push(m.timestamp_us, m.key.clone(), m.value.clone(), headers);
        self.produce_async(&topic, partition, b.build()?, Acks::Durable)
            .await?;
        Ok(())
    }
}
