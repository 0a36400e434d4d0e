//! The data path of the embedding API: produce, fetch, offsets, subscriptions. One async core
//! per operation; each blocking form is [`block`] over it.
//!
//! A caller running on the shard that owns the partition (the network server's connection
//! tasks) is served directly through `shard::current`: no inbox hop, no second task. Any
//! other caller goes through the owning shard's inbox.

use std::future::Future;

use bytes::Bytes;

use super::engine::{Engine, PendingAck, Subscription, block};
use crate::api::PartitionKey;
use crate::api::{
    Acks, FetchRequest, FetchResponse, Isolation, OffsetSpec, PartitionInfo, ProduceAck,
};
use crate::batch::ValidatedBatch;
use crate::error::{Error, Result};
use crate::shard::{self, LocalShard, Request};

impl Engine {
    /// Ingress validation, once, on the caller's thread: the header parsed here travels with
    /// the bytes to the log (no layer parses it again).
    fn check_batch(&self, batch: Bytes) -> Result<ValidatedBatch> {
        let max = self.inner.config.batch_bytes_max;
        if batch.len() > max {
            return Err(Error::BatchTooLarge {
                bytes: batch.len(),
                max,
            });
        }
        ValidatedBatch::validate(batch).map_err(Error::from)
    }

    /// The calling thread's shard if it is `shard` of this engine.
    fn local_shard(&self, shard: usize) -> Option<LocalShard> {
        shard::current(self.inner.id).filter(|l| l.id() == shard)
    }

    /// What the inbox answers once the engine or the shard is shutting down, for a caller
    /// that skips the inbox.
    fn check_open(&self, local: &LocalShard) -> Result<()> {
        if local.is_closing() || self.is_closed() {
            return Err(Error::ShuttingDown);
        }
        Ok(())
    }

    /// Enqueues a produce on the owning shard through its inbox; the receiver gets the ack
    /// (`None` for `Acks::None`).
    async fn enqueue_produce(
        &self,
        shard: usize,
        key: PartitionKey,
        batch: ValidatedBatch,
        acks: Acks,
    ) -> Result<PendingAck> {
        let (reply, rx) = match acks {
            Acks::None => (None, None),
            _ => {
                let (tx, rx) = flume::bounded(1);
                (Some(tx), Some(rx))
            }
        };
        let req = Request::Produce {
            key,
            batch,
            acks,
            reply,
        };
        self.send_async(shard, req).await?;
        Ok(PendingAck { rx })
    }

    /// Appends a batch (validated here, on the caller's thread) and waits for the requested
    /// acknowledgement. `Ok(None)` for `Acks::None`, which does not wait at all.
    pub fn produce(
        &self,
        topic: &str,
        partition: u32,
        batch: Bytes,
        acks: Acks,
    ) -> Result<Option<ProduceAck>> {
        block(self.produce_async(topic, partition, batch, acks))
    }

    /// [`Engine::produce`] as a future that any runtime can await. Validation runs now, on the
    /// calling thread; the future only waits.
    pub fn produce_async(
        &self,
        topic: &str,
        partition: u32,
        batch: Bytes,
        acks: Acks,
    ) -> impl Future<Output = Result<Option<ProduceAck>>> + Send + 'static {
        let ready = self
            .check_batch(batch)
            .and_then(|batch| Ok((batch, self.locate(topic, partition)?)));
        let engine = self.clone();
        async move {
            let (batch, (name, shard)) = ready?;
            engine
                .enqueue_produce(shard, (name, partition), batch, acks)
                .await?
                .wait()
                .await
        }
    }

    /// Enqueues a produce on the owning shard now, in call order, and returns a handle that
    /// resolves to the acknowledgement. Callers that must keep per-partition order across
    /// concurrent requests (the network server) await this in order and the acks in parallel.
    /// Validation runs here, on the calling thread. On the owning shard itself the batch is
    /// appended directly (after waiting, like the inbox, while the shard holds too many
    /// unwritten bytes).
    pub async fn submit_produce(
        &self,
        topic: &str,
        partition: u32,
        batch: Bytes,
        acks: Acks,
    ) -> Result<PendingAck> {
        let batch = self.check_batch(batch)?;
        self.submit_validated(topic, partition, batch, acks).await
    }

    /// [`Engine::submit_produce`] for a batch its caller validated already (the Kafka front
    /// end's `batch::kafka::wrap_validated` checks a Kafka batch once while wrapping it): only
    /// the engine's size limit is checked here, the batch is not validated again.
    pub async fn submit_validated(
        &self,
        topic: &str,
        partition: u32,
        batch: ValidatedBatch,
        acks: Acks,
    ) -> Result<PendingAck> {
        let max = self.inner.config.batch_bytes_max;
        if batch.len() > max {
            return Err(Error::BatchTooLarge {
                bytes: batch.len(),
                max,
            });
        }
        let (name, shard) = self.locate(topic, partition)?;
        let key = (name, partition);
        let Some(local) = self.local_shard(shard) else {
            return self.enqueue_produce(shard, key, batch, acks).await;
        };
        local.wait_for_room().await;
        self.check_open(&local)?;
        if acks == Acks::None {
            local.produce(key, batch, acks, None);
            return Ok(PendingAck { rx: None });
        }
        let (tx, rx) = flume::bounded(1);
        local.produce(key, batch, acks, Some(tx));
        Ok(PendingAck { rx: Some(rx) })
    }

    /// Reads whole batches from `offset` (long-polls up to `max_wait` when there is no data).
    pub fn fetch(&self, r: FetchRequest) -> Result<FetchResponse> {
        block(self.fetch_async(r))
    }

    /// [`Engine::fetch`] as a future that any runtime can await (through the owning shard's
    /// inbox; on a shard of this engine, [`Engine::fetch_here`] skips it).
    pub fn fetch_async(
        &self,
        r: FetchRequest,
    ) -> impl Future<Output = Result<FetchResponse>> + Send + 'static {
        self.fetch_isolated_async(r, Isolation::Appended)
    }

    /// [`Engine::fetch_async`] seeing what `isolation` lets it see (docs/semantics.md, "What
    /// readers see"); the plain forms read `Isolation::Appended`.
    pub fn fetch_isolated_async(
        &self,
        r: FetchRequest,
        isolation: Isolation,
    ) -> impl Future<Output = Result<FetchResponse>> + Send + 'static {
        let ready = self.locate(&r.topic, r.partition);
        let engine = self.clone();
        async move {
            let (name, shard) = ready?;
            engine
                .ask_async(shard, |reply| Request::Fetch {
                    key: (name, r.partition),
                    offset: r.offset,
                    max_bytes: r.max_bytes,
                    max_records: r.max_records,
                    max_wait: r.max_wait,
                    isolation,
                    reply,
                })
                .await
        }
    }

    /// [`Engine::fetch_async`] for a caller running on a shard of this engine (the network
    /// server): a partition of the caller's own shard is read in place, without the inbox hop
    /// and the second task. The future is not `Send`.
    pub async fn fetch_here(&self, r: FetchRequest) -> Result<FetchResponse> {
        self.fetch_here_isolated(r, Isolation::Appended).await
    }

    /// [`Engine::fetch_here`] seeing what `isolation` lets it see.
    pub async fn fetch_here_isolated(
        &self,
        r: FetchRequest,
        isolation: Isolation,
    ) -> Result<FetchResponse> {
        let (name, shard) = self.locate(&r.topic, r.partition)?;
        match self.local_shard(shard) {
            Some(local) => {
                self.check_open(&local)?;
                let key = (name, r.partition);
                local
                    .fetch_isolated(
                        &key,
                        r.offset,
                        r.max_bytes,
                        r.max_records,
                        r.max_wait,
                        isolation,
                    )
                    .await
            }
            None => self.fetch_isolated_async(r, isolation).await,
        }
    }

    /// Resolves an offset specification to an offset.
    pub fn list_offset(&self, topic: &str, partition: u32, spec: OffsetSpec) -> Result<u64> {
        block(self.list_offset_async(topic, partition, spec))
    }

    /// [`Engine::list_offset`] as a future.
    pub async fn list_offset_async(
        &self,
        topic: &str,
        partition: u32,
        spec: OffsetSpec,
    ) -> Result<u64> {
        let (name, shard) = self.locate(topic, partition)?;
        self.ask_async(shard, |reply| Request::ListOffset {
            key: (name, partition),
            spec,
            reply,
        })
        .await
    }

    /// Subscribes to a partition from `from`: batches are pushed as soon as they are appended
    /// (`Isolation::Appended`; see [`Engine::subscribe_isolated_async`]).
    /// At most `capacity` responses (each up to `max_bytes`) wait unread; then the shard waits
    /// for the subscriber, so a slow subscriber holds bounded memory.
    pub fn subscribe(
        &self,
        topic: &str,
        partition: u32,
        from: OffsetSpec,
        max_bytes: usize,
        capacity: usize,
    ) -> Result<Subscription> {
        block(self.subscribe_async(topic, partition, from, max_bytes, capacity)).map(|(_, s)| s)
    }

    /// [`Engine::subscribe`] as a future (safe to await inside a shard). Returns the resolved
    /// start offset with the subscription.
    pub async fn subscribe_async(
        &self,
        topic: &str,
        partition: u32,
        from: OffsetSpec,
        max_bytes: usize,
        capacity: usize,
    ) -> Result<(u64, Subscription)> {
        let isolation = Isolation::Appended;
        self.subscribe_isolated_async(topic, partition, from, max_bytes, capacity, isolation)
            .await
    }

    /// [`Engine::subscribe_async`] seeing what `isolation` lets it see: batches are pushed as
    /// soon as they are appended (`Appended`; a durable producer's batch once written) or once
    /// an fdatasync covered them (`Durable`). docs/semantics.md, "What readers see".
    pub async fn subscribe_isolated_async(
        &self,
        topic: &str,
        partition: u32,
        from: OffsetSpec,
        max_bytes: usize,
        capacity: usize,
        isolation: Isolation,
    ) -> Result<(u64, Subscription)> {
        let offset = self.list_offset_async(topic, partition, from).await?;
        let (name, shard) = self.locate(topic, partition)?;
        let (stx, srx) = flume::bounded(capacity.max(1));
        self.ask_async(shard, |reply| Request::Subscribe {
            key: (name, partition),
            from: offset,
            max_bytes,
            isolation,
            tx: stx,
            reply,
        })
        .await?;
        Ok((offset, Subscription { rx: srx }))
    }

    pub fn describe_partition(&self, topic: &str, partition: u32) -> Result<PartitionInfo> {
        block(self.describe_partition_async(topic, partition))
    }

    /// [`Engine::describe_partition`] as a future.
    pub async fn describe_partition_async(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<PartitionInfo> {
        let (name, shard) = self.locate(topic, partition)?;
        self.ask_async(shard, |reply| Request::Describe {
            key: (name, partition),
            reply,
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::api::TopicConfig;
    use crate::config::EngineConfig;

    fn open(dir: &std::path::Path) -> Engine {
        let mut c = EngineConfig::with_data_dir(dir);
        c.shards = 2;
        c.pin_shards = false;
        c.io_memory_bytes = 512 << 10;
        Engine::open(c).unwrap()
    }

    /// What the shard task saw: offsets around the submit, the ack, a local fetch, and
    /// whether `shard::current` told engines apart.
    type Seen = (u64, u64, Option<ProduceAck>, usize, bool);

    // Proves: on the shard that owns the partition, `submit_produce` appends in place: the
    // partition's next offset has moved when the call returns, before the task yields once
    // (through the inbox the shard's main loop would append only after that yield);
    // `fetch_here` reads it back in place; `shard::current` is this engine's shard there, and
    // nothing on a thread that is no shard or for another engine.
    #[test]
    fn a_request_on_the_owning_shard_skips_the_inbox() {
        let dir = tempfile::tempdir().unwrap();
        let engine = open(dir.path());
        engine
            .create_topic("t", TopicConfig::with_partitions(2))
            .unwrap();
        let owner = engine.shard_of("t", 1).unwrap();
        assert!(shard::current(engine.inner.id).is_none(), "not on a shard");
        let (tx, rx) = flume::bounded::<Result<Seen>>(1);
        let batch = crate::batch::batch_of_values(["a", "b", "c"]).unwrap();
        engine
            .run_on_shard(
                owner,
                Box::new(move |h| {
                    crate::rt::spawn_local(async move {
                        let r = async {
                            let e = &h.engine;
                            let other = shard::current(e.inner.id + 1_000_000).is_none();
                            let local = shard::current(e.inner.id).expect("on this engine's shard");
                            let p = local.partition(&(Arc::from("t"), 1))?;
                            let before = p.watermarks().next_offset;
                            let pending = e.submit_produce("t", 1, batch, Acks::Durable).await?;
                            let after = p.watermarks().next_offset;
                            let ack = pending.wait().await?;
                            let read = e.fetch_here(FetchRequest::new("t", 1, 0)).await?;
                            Ok((before, after, ack, read.records, other))
                        }
                        .await;
                        let _ = tx.send(r);
                    });
                }),
            )
            .unwrap();
        let (before, after, ack, records, other) =
            rx.recv_timeout(Duration::from_secs(10)).unwrap().unwrap();
        assert_eq!((before, after), (0, 3), "appended before the task yielded");
        assert_eq!(
            ack,
            Some(ProduceAck {
                base_offset: 0,
                last_offset: 2
            })
        );
        assert_eq!(records, 3);
        assert!(other, "another engine's id finds no current shard");
        // The same partition from this thread goes through the inbox and sees the same log.
        assert_eq!(
            engine.fetch(FetchRequest::new("t", 1, 0)).unwrap().records,
            3
        );
        engine.shutdown().unwrap();
    }
}
