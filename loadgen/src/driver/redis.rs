//! The `redis` driver: Redis Streams as a peer under the same workload.
//!
//! Mapping: partition `p` of topic `t` is the stream key `t:p`; every message is one entry
//! (`XADD t:p * v <value>`; Redis has no multi-entry append, so a batch is a pipeline of XADDs).
//! Consumers read with `XREADGROUP ... NOACK` in one consumer group per topic (no pending-entry
//! bookkeeping, as Shardline's subscriptions keep none). Entry ids are not dense, so consumers
//! check order and loss with the sequence numbers in the message header only.
//!
//! Transport: commands are encoded and replies decoded by the `redis` crate
//! (`Cmd::get_packed_command`, `Parser`); the socket is ours, so that a producer can pipeline
//! `--inflight` batches the way the Shardline client does: the producer thread writes, a reader
//! thread matches replies to batches in order. Consumers use the crate's blocking connection
//! on a feeder thread each.
//!
//! Durability is the server's setting, not the request's: with `appendonly yes` and
//! `appendfsync always`, Redis fsyncs the AOF before it replies (one fsync per event-loop
//! round, a group commit); with `everysec` an ack means "in memory, on disk within ~1 s". The
//! driver reads the setting (`CONFIG GET`) and reports it in the results.

use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use redis::{Value, cmd};

use super::feed::{Delivery, FeedConsumer, FeedItem};
use super::{AckFuture, Consumer, Driver, DriverError, Producer};
use crate::workload::AckLevel;

/// Consumer group every loadgen consumer reads in.
const GROUP: &str = "loadgen";
/// Entries asked of each stream per XREADGROUP.
const READ_COUNT: usize = 1024;
/// How long one XREADGROUP blocks; bounds how long a feeder takes to notice it should stop.
const READ_BLOCK_MS: u64 = 100;
/// Connect and request deadline of the blocking connections.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

fn peer(message: impl std::fmt::Display) -> DriverError {
    DriverError::Peer {
        broker: "redis",
        message: message.to_string(),
    }
}

fn stream_key(topic: &str, partition: u32) -> String {
    format!("{topic}:{partition}")
}

/// A Redis server at `host:port`.
pub struct RedisDriver {
    client: redis::Client,
    addr: String,
    /// `appendonly` and `appendfsync`, as the server reported them.
    aof: (String, String),
}

impl RedisDriver {
    pub fn connect(addr: &str) -> Result<Self, DriverError> {
        let client = redis::Client::open(format!("redis://{addr}/")).map_err(peer)?;
        let mut c = client
            .get_connection_with_timeout(IO_TIMEOUT)
            .map_err(|e| peer(format!("cannot connect to {addr}: {e}")))?;
        let get = |c: &mut redis::Connection, name: &str| -> Result<String, DriverError> {
            let v: Vec<String> = cmd("CONFIG").arg("GET").arg(name).query(c).map_err(peer)?;
            Ok(v.get(1).cloned().unwrap_or_default())
        };
        let aof = (get(&mut c, "appendonly")?, get(&mut c, "appendfsync")?);
        Ok(RedisDriver {
            client,
            addr: addr.to_string(),
            aof,
        })
    }

    fn connection(&self) -> Result<redis::Connection, DriverError> {
        let c = self
            .client
            .get_connection_with_timeout(IO_TIMEOUT)
            .map_err(peer)?;
        Ok(c)
    }
}

impl Driver for RedisDriver {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn durability(&self, acks: AckLevel) -> String {
        if acks == AckLevel::None {
            return "none: replies ignored".into();
        }
        match (self.aof.0.as_str(), self.aof.1.as_str()) {
            ("yes", "always") => "AOF appendfsync=always: fsync before reply".into(),
            ("yes", "everysec") => "AOF appendfsync=everysec: fsync ~1/s".into(),
            ("yes", other) => format!("AOF appendfsync={other}"),
            _ => "no AOF (memory; RDB snapshots at most)".into(),
        }
    }

    fn create_topic(&self, topic: &str, partitions: u32) -> Result<(), DriverError> {
        let mut c = self.connection()?;
        let old: Vec<String> = cmd("KEYS")
            .arg(format!("{topic}:*"))
            .query(&mut c)
            .map_err(peer)?;
        for key in old {
            let _: i64 = cmd("DEL").arg(&key).query(&mut c).map_err(peer)?;
        }
        for p in 0..partitions {
            let _: Value = cmd("XGROUP")
                .arg("CREATE")
                .arg(stream_key(topic, p))
                .arg(GROUP)
                .arg("0")
                .arg("MKSTREAM")
                .query(&mut c)
                .map_err(peer)?;
        }
        Ok(())
    }

    fn producer(&self, topic: &str, acks: AckLevel) -> Result<Box<dyn Producer>, DriverError> {
        Ok(Box::new(RedisProducer::connect(&self.addr, topic, acks)?))
    }

    fn consumer(&self, topic: &str, partitions: &[u32]) -> Result<Box<dyn Consumer>, DriverError> {
        let conn = self.connection()?;
        let (tx, rx) = FeedConsumer::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let feeder = Feeder {
            conn,
            consumer_name: format!("c-{}", partitions.first().copied().unwrap_or(0)),
            keys: partitions
                .iter()
                .map(|&p| (stream_key(topic, p), p))
                .collect(),
            tx,
            stop: Arc::clone(&stop),
        };
        let thread = std::thread::Builder::new()
            .name("loadgen-redis-feed".into())
            .spawn(move || feeder.run())
            .map_err(|source| DriverError::Io {
                context: "starting a redis consumer thread".into(),
                source,
            })?;
        let guard = StopOnDrop {
            stop,
            thread: Some(thread),
        };
        Ok(Box::new(FeedConsumer::new(rx, Some(Box::new(guard)))))
    }

    fn shutdown(self: Box<Self>) -> Result<(), DriverError> {
        Ok(())
    }
}

/// One batch waiting for its replies.
struct Waiting {
    replies: usize,
    done: flume::Sender<Result<u64, DriverError>>,
}

/// A pipelined connection: this thread writes, a reader thread answers batches in order.
struct RedisProducer {
    stream: TcpStream,
    keys: Vec<String>,
    waiting: flume::Sender<Waiting>,
    acks: AckLevel,
    buf: Vec<u8>,
    failed: Option<String>,
}

impl RedisProducer {
    fn connect(addr: &str, topic: &str, acks: AckLevel) -> Result<Self, DriverError> {
        let io = |context: String| move |source| DriverError::Io { context, source };
        let stream = TcpStream::connect(addr).map_err(io(format!("connecting to {addr}")))?;
        stream.set_nodelay(true).map_err(io("TCP_NODELAY".into()))?;
        let reader = stream.try_clone().map_err(io("cloning a socket".into()))?;
        let (waiting, rx) = flume::unbounded();
        std::thread::Builder::new()
            .name("loadgen-redis-acks".into())
            .spawn(move || read_replies(reader, &rx))
            .map_err(io("starting a redis reply thread".into()))?;
        // Enough keys for any partition the runner hands out (checked on send).
        let partitions = crate::workload::PARTITIONS_MAX;
        Ok(RedisProducer {
            stream,
            keys: (0..partitions).map(|p| stream_key(topic, p)).collect(),
            waiting,
            acks,
            buf: Vec::new(),
            failed: None,
        })
    }
}

impl Producer for RedisProducer {
    fn send(&mut self, partition: u32, values: Vec<Vec<u8>>) -> AckFuture {
        let count = values.len();
        let Some(key) = self.keys.get(partition as usize) else {
            let e = peer(format!("partition {partition} out of range"));
            return Box::pin(std::future::ready(Err(e)));
        };
        if let Some(reason) = &self.failed {
            return Box::pin(std::future::ready(Err(peer(reason.clone()))));
        }
        self.buf.clear();
        for v in values {
            let packed = cmd("XADD")
                .arg(key)
                .arg("*")
                .arg("v")
                .arg(v)
                .get_packed_command();
            self.buf.extend_from_slice(&packed);
        }
        let (done, rx) = flume::bounded(1);
        // Registered before the write, so the reader knows the batch when its replies come.
        // With acks = none the replies are still read (and dropped) to keep the stream framed.
        let registered = self.waiting.send(Waiting {
            replies: count,
            done,
        });
        if registered.is_err() {
            self.failed = Some("the reply reader stopped".into());
        } else if let Err(e) = self.stream.write_all(&self.buf) {
            self.failed = Some(format!("write failed: {e}"));
        }
        if let Some(reason) = &self.failed {
            return Box::pin(std::future::ready(Err(peer(reason.clone()))));
        }
        let count = count as u64;
        if self.acks == AckLevel::None {
            return Box::pin(std::future::ready(Ok(count)));
        }
        Box::pin(async move {
            rx.recv_async()
                .await
                .unwrap_or_else(|_| Err(peer("connection closed before the replies")))
        })
    }
}

/// The reply thread: reads each batch's replies in order and completes it. Exits when the
/// producer is dropped or the connection fails (failing every batch still waiting).
fn read_replies(stream: TcpStream, waiting: &flume::Receiver<Waiting>) {
    let mut reader = BufReader::with_capacity(1 << 16, stream);
    let mut parser = redis::Parser::new();
    let mut broken: Option<String> = None;
    while let Ok(w) = waiting.recv() {
        if let Some(reason) = &broken {
            let _ = w.done.send(Err(peer(reason.clone())));
            continue;
        }
        let mut first_error = None;
        for _ in 0..w.replies {
            match parser.parse_value(&mut reader).map(Value::extract_error) {
                Ok(Ok(Value::BulkString(_))) => {}
                Ok(Ok(other)) => {
                    first_error.get_or_insert_with(|| format!("XADD: unexpected reply {other:?}"));
                }
                Ok(Err(e)) => {
                    first_error.get_or_insert_with(|| format!("XADD: {e}"));
                }
                Err(e) => {
                    let reason = format!("connection lost: {e}");
                    first_error.get_or_insert_with(|| reason.clone());
                    broken = Some(reason);
                    break;
                }
            }
        }
        let outcome = match first_error {
            None => Ok(w.replies as u64),
            Some(e) => Err(peer(e)),
        };
        let _ = w.done.send(outcome);
    }
}

/// Stops a feeder thread and waits for it (within one blocking read).
struct StopOnDrop {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads a consumer's streams with XREADGROUP and hands each stream's entries to the channel.
struct Feeder {
    conn: redis::Connection,
    consumer_name: String,
    keys: Vec<(String, u32)>,
    tx: flume::Sender<FeedItem>,
    stop: Arc<AtomicBool>,
}

impl Feeder {
    fn run(mut self) {
        while !self.stop.load(Ordering::Relaxed) {
            let mut c = cmd("XREADGROUP");
            c.arg("GROUP")
                .arg(GROUP)
                .arg(&self.consumer_name)
                .arg("COUNT")
                .arg(READ_COUNT)
                .arg("BLOCK")
                .arg(READ_BLOCK_MS)
                .arg("NOACK")
                .arg("STREAMS");
            for (key, _) in &self.keys {
                c.arg(key);
            }
            for _ in &self.keys {
                c.arg(">");
            }
            let reply: Value = match c.query(&mut self.conn) {
                Ok(v) => v,
                Err(e) => {
                    let _ = self.tx.send(Err(peer(format!("XREADGROUP: {e}"))));
                    return;
                }
            };
            let deliveries = match parse_read_reply(&self.keys, reply) {
                Ok(d) => d,
                Err(e) => {
                    let _ = self.tx.send(Err(e));
                    return;
                }
            };
            for d in deliveries {
                if self.tx.send(Ok(d)).is_err() {
                    return; // the consumer is gone
                }
            }
        }
    }
}

/// `[[key, [[id, [field, value, ...]], ...]], ...]` (RESP2) or a map of key to entries
/// (RESP3); `Nil` when the block timed out.
fn parse_read_reply(keys: &[(String, u32)], reply: Value) -> Result<Vec<Delivery>, DriverError> {
    let streams: Vec<(Value, Value)> = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Map(m) => m,
        Value::Array(a) => a
            .into_iter()
            .map(|s| match s {
                Value::Array(mut kv) if kv.len() == 2 => {
                    let entries = kv.pop().unwrap_or(Value::Nil);
                    let key = kv.pop().unwrap_or(Value::Nil);
                    Ok((key, entries))
                }
                other => Err(peer(format!("XREADGROUP: unexpected stream {other:?}"))),
            })
            .collect::<Result<_, _>>()?,
        other => return Err(peer(format!("XREADGROUP: unexpected reply {other:?}"))),
    };
    let mut out = Vec::with_capacity(streams.len());
    for (key, entries) in streams {
        let Value::BulkString(key) = key else {
            return Err(peer("XREADGROUP: stream key is not a string"));
        };
        let partition = keys
            .iter()
            .find(|(k, _)| k.as_bytes() == key.as_slice())
            .map(|(_, p)| *p)
            .ok_or_else(|| peer("XREADGROUP: a stream that was not asked for"))?;
        let Value::Array(entries) = entries else {
            return Err(peer("XREADGROUP: entries are not an array"));
        };
        let mut messages = Vec::with_capacity(entries.len());
        for e in entries {
            messages.push((None, entry_value(e)?));
        }
        out.push(Delivery {
            partition,
            messages,
        });
    }
    Ok(out)
}

/// The value of the `v` field of one `[id, [field, value]]` entry.
fn entry_value(entry: Value) -> Result<Bytes, DriverError> {
    let Value::Array(mut parts) = entry else {
        return Err(peer("XREADGROUP: entry is not an array"));
    };
    match parts.pop() {
        Some(Value::Array(mut fields)) if fields.len() == 2 => match fields.pop() {
            Some(Value::BulkString(v)) => Ok(Bytes::from(v)),
            _ => Err(peer("XREADGROUP: entry value is not a string")),
        },
        _ => Err(peer("XREADGROUP: entry has no single field")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(b: &[u8]) -> Value {
        Value::BulkString(b.to_vec())
    }

    fn entry(id: &[u8], value: &[u8]) -> Value {
        Value::Array(vec![bulk(id), Value::Array(vec![bulk(b"v"), bulk(value)])])
    }

    fn keys() -> Vec<(String, u32)> {
        vec![("t:0".into(), 0), ("t:3".into(), 3)]
    }

    #[test]
    fn a_resp2_reply_becomes_one_delivery_per_stream_in_order() {
        let reply = Value::Array(vec![
            Value::Array(vec![
                bulk(b"t:3"),
                Value::Array(vec![entry(b"1-0", b"a"), entry(b"1-1", b"b")]),
            ]),
            Value::Array(vec![bulk(b"t:0"), Value::Array(vec![entry(b"2-0", b"c")])]),
        ]);
        let d = parse_read_reply(&keys(), reply).unwrap();
        let got: Vec<(u32, Vec<Vec<u8>>)> = d
            .iter()
            .map(|d| {
                (
                    d.partition,
                    d.messages.iter().map(|(_, v)| v.to_vec()).collect(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (3, vec![b"a".to_vec(), b"b".to_vec()]),
                (0, vec![b"c".to_vec()])
            ]
        );
        assert!(d.iter().flat_map(|d| &d.messages).all(|(o, _)| o.is_none()));
    }

    #[test]
    fn a_timed_out_block_is_no_delivery() {
        assert!(parse_read_reply(&keys(), Value::Nil).unwrap().is_empty());
    }

    #[test]
    fn malformed_replies_are_typed_errors_not_panics() {
        let bad = [
            Value::Int(3),
            Value::Array(vec![Value::Int(1)]),
            Value::Array(vec![Value::Array(vec![bulk(b"t:9"), Value::Array(vec![])])]),
            Value::Array(vec![Value::Array(vec![bulk(b"t:0"), Value::Int(1)])]),
            Value::Array(vec![Value::Array(vec![
                bulk(b"t:0"),
                Value::Array(vec![Value::Array(vec![bulk(b"1-0")])]),
            ])]),
            Value::Array(vec![Value::Array(vec![
                bulk(b"t:0"),
                Value::Array(vec![Value::Array(vec![
                    bulk(b"1-0"),
                    Value::Array(vec![bulk(b"v"), Value::Int(5)]),
                ])]),
            ])]),
        ];
        for reply in bad {
            let shown = format!("{reply:?}");
            match parse_read_reply(&keys(), reply) {
                Err(DriverError::Peer {
                    broker: "redis", ..
                }) => {}
                other => panic!(
                    "{shown}: expected a redis error, got {:?}",
                    other.map(|d| d.len())
                ),
            }
        }
    }
}
