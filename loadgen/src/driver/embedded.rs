//! The embedded driver: a Shardline [`Engine`] in this process, on a temporary directory
//! (removed afterwards) or on `--data-dir`.
//!
//! Producers build one record batch per send with [`BatchBuilder`] and hand it to
//! [`Engine::produce_async`]. Consumers hold one [`Subscription`] per partition (pushed batches,
//! bounded depth) and read records zero-copy with [`batch::with_records`], after checking each
//! batch's CRC: the load generator verifies what it receives, end to end.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use shardline_engine::batch::{self, BatchBuilder};
use shardline_engine::{Acks, Engine, EngineConfig, FetchResponse, OffsetSpec, Subscription};
use shardline_engine::{Error as EngineError, TopicConfig};

use super::{AckFuture, Consumer, Driver, DriverError, Producer, Received};
use crate::workload::AckLevel;

/// Largest response a subscription pushes at once (one batch may exceed it; it is sent whole).
pub const SUBSCRIPTION_BYTES_MAX: usize = 1 << 20;
/// Pushed responses that may wait unread per partition; then the shard waits for the reader.
pub const SUBSCRIPTION_DEPTH: usize = 16;

/// The embedded engine and the directory it runs on.
pub struct EmbeddedDriver {
    engine: Engine,
    /// Removed on shutdown; `None` when the user chose the directory.
    temp_dir: Option<tempfile::TempDir>,
    /// Codec of the producers' batches (`--compression`).
    compression: shardline_engine::batch::compress::Codec,
}

impl EmbeddedDriver {
    /// Opens an engine on `data_dir`, or on a new temporary directory.
    pub fn open(data_dir: Option<PathBuf>, shards: u32) -> Result<Self, DriverError> {
        let (dir, temp_dir) = match data_dir {
            Some(d) => (d, None),
            None => {
                let t = tempfile::Builder::new()
                    .prefix("shardline-loadgen-")
                    .tempdir()
                    .map_err(|source| DriverError::Io {
                        context: "creating a temporary data directory".into(),
                        source,
                    })?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        let config = EngineConfig {
            shards: shards as usize,
            ..EngineConfig::with_data_dir(&dir)
        };
        let engine = Engine::open(config)?;
        Ok(EmbeddedDriver {
            engine,
            temp_dir,
            compression: shardline_engine::batch::compress::Codec::None,
        })
    }

    /// Compresses every produced batch with `codec`.
    pub fn with_compression(mut self, codec: shardline_engine::batch::compress::Codec) -> Self {
        self.compression = codec;
        self
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}

fn engine_acks(a: AckLevel) -> Acks {
    match a {
        AckLevel::None => Acks::None,
        AckLevel::Leader => Acks::Leader,
        AckLevel::Durable => Acks::Durable,
        AckLevel::All => Acks::All,
    }
}

impl Driver for EmbeddedDriver {
    fn name(&self) -> &'static str {
        "embedded"
    }

    fn durability(&self, acks: AckLevel) -> String {
        super::shardline::durability(acks)
    }

    fn create_topic(&self, topic: &str, partitions: u32) -> Result<(), DriverError> {
        match self.engine.delete_topic(topic) {
            Ok(()) | Err(EngineError::UnknownTopic(_)) => {}
            Err(e) => return Err(e.into()),
        }
        self.engine
            .create_topic(topic, TopicConfig::with_partitions(partitions))?;
        Ok(())
    }

    fn producer(&self, topic: &str, acks: AckLevel) -> Result<Box<dyn Producer>, DriverError> {
        // Fail now rather than on the first send if the topic is missing.
        self.engine.route(topic)?;
        Ok(Box::new(EmbeddedProducer {
            engine: self.engine.clone(),
            topic: topic.to_string(),
            acks: engine_acks(acks),
            compression: self.compression,
        }))
    }

    fn consumer(&self, topic: &str, partitions: &[u32]) -> Result<Box<dyn Consumer>, DriverError> {
        let mut subs = Vec::with_capacity(partitions.len());
        for &partition in partitions {
            let sub = self.engine.subscribe(
                topic,
                partition,
                OffsetSpec::Earliest,
                SUBSCRIPTION_BYTES_MAX,
                SUBSCRIPTION_DEPTH,
            )?;
            subs.push(PartitionSub {
                partition,
                sub: Arc::new(sub),
                pending: None,
                cursor: 0,
                live: true,
            });
        }
        Ok(Box::new(EmbeddedConsumer { subs, next: 0 }))
    }

    fn shutdown(self: Box<Self>) -> Result<(), DriverError> {
        let EmbeddedDriver {
            engine, temp_dir, ..
        } = *self;
        let stopped = engine.shutdown();
        drop(engine);
        let removed = match temp_dir {
            Some(t) => {
                let path = t.path().display().to_string();
                t.close().map_err(|source| DriverError::Io {
                    context: format!("removing {path}"),
                    source,
                })
            }
            None => Ok(()),
        };
        stopped?;
        removed
    }
}

/// One Shardline record batch of `values`, all stamped now (the engine's and the network
/// drivers' unit of produce).
pub(crate) fn record_batch(
    values: Vec<Vec<u8>>,
    compression: shardline_engine::batch::compress::Codec,
) -> Result<bytes::Bytes, DriverError> {
    let now = batch::now_us();
    let mut b = BatchBuilder::new().compression(compression.as_u8());
    for v in &values {
        b.push_ref(now, None, v, []);
    }
    Ok(b.build().map_err(shardline_engine::Error::from)?)
}

struct EmbeddedProducer {
    engine: Engine,
    topic: String,
    acks: Acks,
    compression: shardline_engine::batch::compress::Codec,
}

impl Producer for EmbeddedProducer {
    fn send(&mut self, partition: u32, values: Vec<Vec<u8>>) -> AckFuture {
        let count = values.len() as u64;
        let built = match record_batch(values, self.compression) {
            Ok(bytes) => bytes,
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        let ack = self
            .engine
            .produce_async(&self.topic, partition, built, self.acks);
        Box::pin(async move {
            ack.await?;
            Ok(count)
        })
    }
}

type RecvFuture = Pin<Box<dyn Future<Output = shardline_engine::Result<FetchResponse>> + Send>>;

struct PartitionSub {
    partition: u32,
    sub: Arc<Subscription>,
    pending: Option<RecvFuture>,
    /// Offset after the last record delivered. A response may start before it (the API returns
    /// whole batches); those records were delivered already and are skipped.
    cursor: u64,
    /// False once the subscription ended with an error.
    live: bool,
}

impl PartitionSub {
    fn poll_response(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<shardline_engine::Result<FetchResponse>> {
        let sub = &self.sub;
        let fut = self.pending.get_or_insert_with(|| {
            let s = Arc::clone(sub);
            Box::pin(async move { s.recv_async().await })
        });
        let r = fut.as_mut().poll(cx);
        if r.is_ready() {
            self.pending = None;
        }
        r
    }

    fn deliver(
        &mut self,
        resp: &FetchResponse,
        on_message: &mut dyn FnMut(Received<'_>),
    ) -> Result<usize, DriverError> {
        let corrupt = |reason: String| DriverError::Corrupt {
            partition: self.partition,
            reason,
        };
        let mut n = 0;
        let mut cursor = self.cursor;
        for chunk in &resp.chunks {
            let batches = batch::split_batches(chunk).map_err(|e| corrupt(e.to_string()))?;
            for b in batches {
                let h = batch::check_crc(b).map_err(|e| corrupt(e.to_string()))?;
                batch::with_records(b, &h, |records| {
                    for r in records {
                        let offset = h.base_offset + u64::from(r.offset_delta());
                        if offset < cursor {
                            continue;
                        }
                        on_message(Received {
                            partition: self.partition,
                            offset: Some(offset),
                            value: r.value(),
                        });
                        n += 1;
                    }
                    Ok::<(), shardline_engine::batch::FormatError>(())
                })
                .map_err(|e| corrupt(e.to_string()))?;
                cursor = cursor.max(h.next_offset());
            }
        }
        self.cursor = cursor.max(resp.next_offset);
        Ok(n)
    }
}

struct EmbeddedConsumer {
    subs: Vec<PartitionSub>,
    /// Where the next poll starts, so that no partition starves the others.
    next: usize,
}

impl Consumer for EmbeddedConsumer {
    fn poll_deliver(
        &mut self,
        cx: &mut Context<'_>,
        on_message: &mut dyn FnMut(Received<'_>),
    ) -> Poll<Result<usize, DriverError>> {
        let count = self.subs.len();
        for k in 0..count {
            let i = (self.next + k) % count;
            let s = &mut self.subs[i];
            if !s.live {
                continue;
            }
            match s.poll_response(cx) {
                Poll::Pending => {}
                Poll::Ready(Ok(resp)) => {
                    self.next = (i + 1) % count;
                    return Poll::Ready(s.deliver(&resp, on_message));
                }
                Poll::Ready(Err(e)) => {
                    s.live = false;
                    self.next = (i + 1) % count;
                    return Poll::Ready(Err(e.into()));
                }
            }
        }
        Poll::Pending
    }
}
