//! Operations on work queues: purging (docs/semantics.md, "Purging a queue") and the queue
//! figures of a metrics scrape (docs/operations.md, "Metrics").
//!
//! A purge discards every message of the partition below its log end at the moment the purge
//! runs on the owning shard: ready, delayed, in flight, waiting for the dead-letter queue, or
//! not yet scanned. It is recorded as a snapshot of the state appended durably to the ack log
//! (the snapshot says "everything below the floor is done"), so it survives a restart; the
//! purge is answered only once that snapshot is fdatasync'd. Leases of purged messages are
//! refused afterwards (`MESSAGE_DONE`): they are never redelivered.

use std::rc::Rc;

use super::{QueueCtx, QueueShard, fill, now_ms, partition_stats, queues, write_snapshot};
use crate::api::PartitionKey;
use crate::api::queue::PurgedPartition;
use crate::broker::engine::Engine;
use crate::error::Result;
use crate::metrics::{Sample, ShardMetricsSnapshot};
use crate::shard::LocalShard;

pub(super) async fn purge(shard: &LocalShard, key: &PartitionKey) -> Result<PurgedPartition> {
    let q = queues(shard)?.get(key)?;
    super::replicated::check(&q)?;
    let p = shard.partition(key)?;
    // No await between reading the end and writing the snapshot: the snapshot is exactly the
    // purged state, appended after every ack-log record that preceded the purge.
    let end = p.watermarks().written_offset;
    let purged = q.state.borrow_mut().purge(end);
    q.counters.purged.set(q.counters.purged.get() + purged);
    write_snapshot(shard, &q).await?;
    tracing::info!(topic = %key.0, partition = key.1, purged, purged_until = end, "queue purged");
    Ok(PurgedPartition {
        partition: key.1,
        purged,
        purged_until: end,
    })
}

/// Brings every queue window of the shard up to the log end before a scrape, so that depth
/// and oldest age are as exact as a QueueStats answer. Bounded like any fill.
pub(super) async fn refresh_for_metrics(qs: &QueueShard, shard: &LocalShard) {
    let queues: Vec<Rc<QueueCtx>> = qs.map.borrow().values().cloned().collect();
    for q in queues {
        if let Err(e) = fill(shard, &q).await {
            tracing::debug!(topic = %q.key.0, partition = q.key.1, error = %e, "queue fill before a scrape failed");
        }
    }
}

/// The queue families of every queue partition this shard owns (no lock, no I/O).
pub(super) fn collect_samples(qs: &QueueShard, shard: &LocalShard, out: &mut Vec<Sample>) {
    let now = now_ms();
    let mut queues: Vec<Rc<QueueCtx>> = qs.map.borrow().values().cloned().collect();
    queues.sort_by(|a, b| a.key.cmp(&b.key));
    for q in queues {
        let Ok(p) = shard.partition(&q.key) else {
            continue;
        };
        let s = partition_stats(&q, &p, now);
        let figures = [
            ("shardline_queue_depth", s.depth),
            ("shardline_queue_inflight", s.in_flight),
            ("shardline_queue_oldest_age_seconds", s.oldest_age_ms / 1000),
            ("shardline_queue_redeliveries", s.redelivered),
            ("shardline_queue_dead_lettered", s.dead_lettered + s.dropped),
            ("shardline_queue_purged", s.purged),
        ];
        for (family, value) in figures {
            out.push(Sample {
                family,
                labels: vec![q.key.0.to_string(), q.key.1.to_string()],
                value: i64::try_from(value).unwrap_or(i64::MAX),
            });
        }
    }
}

/// Records held by each queue's dead-letter topic, per partition of that topic. Runs on the
/// scrape thread (it reads the topic settings under the control-plane lock, which a shard must
/// not take) and joins them with the partition figures the shards reported.
pub(crate) fn dlq_samples(engine: &Engine, shards: &mut [ShardMetricsSnapshot]) {
    let dead_letter: Vec<(String, String)> = engine
        .list_topics()
        .into_iter()
        .filter_map(|t| {
            let dlq = t.config.queue?.dead_letter_topic?;
            Some((t.name, dlq))
        })
        .collect();
    if dead_letter.is_empty() {
        return;
    }
    for s in shards.iter_mut() {
        let mut found = Vec::new();
        for p in &s.partitions {
            for (queue, dlq) in dead_letter.iter().filter(|(_, d)| *d == p.topic) {
                found.push(Sample {
                    family: "shardline_queue_dlq_messages",
                    labels: vec![queue.clone(), dlq.clone(), p.partition.to_string()],
                    value: i64::try_from(p.high_watermark.saturating_sub(p.log_start))
                        .unwrap_or(i64::MAX),
                });
            }
        }
        s.samples.extend(found);
    }
}

impl Engine {
    /// Discards every message of the work queue `topic` below each partition's log end
    /// (docs/semantics.md, "Purging a queue"). Answered once each partition's purge is durable.
    pub async fn queue_purge_async(&self, topic: &str) -> Result<Vec<PurgedPartition>> {
        let n = self.route(topic)?.shards.len() as u32;
        let mut out = Vec::with_capacity(n as usize);
        for partition in 0..n {
            let (name, shard) = self.locate(topic, partition)?;
            let r = self
                .ask_async(shard, |reply| {
                    super::request(super::QueueRequest::Purge {
                        key: (name, partition),
                        reply,
                    })
                })
                .await?;
            out.push(r);
        }
        Ok(out)
    }

    /// [`Engine::queue_purge_async`], blocking.
    pub fn queue_purge(&self, topic: &str) -> Result<Vec<PurgedPartition>> {
        crate::broker::engine::block(self.queue_purge_async(topic))
    }
}
