//! The Kafka front end (issue 15, docs/kafka.md): a second [`WireProtocol`] beside the native
//! one, on the same engine, partitions, TLS settings and metrics.
//!
//! A connection is served on the shard that accepted it by two tasks: a reader that reads
//! Kafka frames (i32 size, request header v1/v2), decodes them with the `kafka-protocol` crate
//! and *dispatches* each request, and a writer that sends the responses in request order.
//! Dispatching a produce enqueues every partition's batch on its owning shard before the next
//! request is read (per-partition order holds for pipelined produces, Redpanda's "dispatched /
//! response" split); the acks are awaited on a task of their own. Every request that answers
//! gets a slot in an ordered queue of at most [`PIPELINE_MAX`] slots, so a client pipelining
//! more than that is simply not read until the oldest answer is written. acks=0 gets no slot.
//!
//! A plain connection whose produces all go to one other shard moves there ([`handoff`]).
//! Request timing for diagnosis: [`trace`] (off unless its log target is at debug).
//!
//! [`WireProtocol`]: crate::listener::WireProtocol

mod api;
mod cluster;
mod codes;
mod configs;
mod decode;
mod dispatch_groups;
mod fetch;
mod group_api;
pub(crate) mod groups;
mod handoff;
mod produce;
mod sasl;
mod trace;

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use serde::{Deserialize, Serialize};
use shardline_engine::Engine;
use shardline_engine::rt::net::TcpStream;

use crate::Shared;
use crate::listener::Accepted;

pub use decode::decode_request;

/// Responses a connection may owe at once (clients pipeline up to 5 requests).
pub(crate) const PIPELINE_MAX: usize = 5;

/// `[kafka]` in the serve configuration (docs/kafka.md, "Configuration").
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Kafka listener address (`--kafka-listen`); absent = no Kafka listener.
    pub listen: Option<String>,
    /// Host advertised in Metadata (default: the listener's IP).
    pub advertised_host: Option<String>,
    /// Port advertised in Metadata (default: the listener's port).
    pub advertised_port: Option<u16>,
    /// Kafka-style `PLAINTEXT://host:port` (or `host:port`); overrides the two above.
    pub advertised_listeners: Option<String>,
    /// Largest request frame accepted; a larger one closes the connection.
    pub request_bytes_max: u32,
    /// Deprecated alias of `[server] auto_create_topics` (the one auto-create setting, for
    /// both listeners); `true` here turns that on. See [`fold_deprecated_keys`].
    pub auto_create_topics: bool,
    /// Deprecated alias of `[server] auto_create_partitions`; when given, it is used.
    pub default_partitions: Option<u32>,
    /// On a cluster: the replication factor of CreateTopics with `replication_factor = -1`
    /// and of auto-created topics (Kafka's `default.replication.factor`); absent = 3, at most
    /// the node count.
    pub default_replication_factor: Option<u32>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            listen: None,
            advertised_host: None,
            advertised_port: None,
            advertised_listeners: None,
            request_bytes_max: 100 << 20,
            auto_create_topics: false,
            default_partitions: None,
            default_replication_factor: None,
        }
    }
}

impl KafkaConfig {
    /// The listen address, parsed; `None` when the Kafka listener is off.
    pub fn listen_addr(&self) -> Result<Option<SocketAddr>, String> {
        match &self.listen {
            None => Ok(None),
            Some(a) => a
                .parse()
                .map(Some)
                .map_err(|e| format!("kafka.listen '{a}': {e}")),
        }
    }

    /// Host and port advertised in Metadata for a listener bound at `bound`.
    pub(crate) fn advertised(&self, bound: SocketAddr) -> (String, i32) {
        if let Some(l) = &self.advertised_listeners {
            let first = l.split(',').next().unwrap_or("").trim();
            let hostport = first.rsplit("://").next().unwrap_or(first);
            if let Some((h, p)) = hostport.rsplit_once(':')
                && let Ok(p) = p.parse::<u16>()
            {
                return (h.to_string(), i32::from(p));
            }
        }
        let host = self
            .advertised_host
            .clone()
            .unwrap_or_else(|| bound.ip().to_string());
        let port = self.advertised_port.unwrap_or(bound.port());
        (host, i32::from(port))
    }
}

/// Folds the deprecated `[kafka]` auto-create keys into the one setting, `[server]
/// auto_create_topics` / `auto_create_partitions` (`serve --auto-create`,
/// `--auto-create-partitions`), which both listeners honour: Kafka's Metadata (when the client
/// allows it) and Produce, the native Metadata. Called once when the server starts.
pub(crate) fn fold_deprecated_keys(cfg: &mut crate::ServerConfig) {
    if cfg.kafka.auto_create_topics {
        tracing::warn!("kafka.auto_create_topics is deprecated: use server.auto_create_topics");
        cfg.auto_create_topics = true;
    }
    if let Some(n) = cfg.kafka.default_partitions {
        tracing::warn!("kafka.default_partitions is deprecated: use server.auto_create_partitions");
        cfg.auto_create_partitions = n;
    }
}

/// Partitions of an auto-created topic and of CreateTopics with `num_partitions = -1`
/// (Kafka's `num.partitions`): `[server] auto_create_partitions`.
pub(crate) fn default_partitions(conn: &KConn) -> u32 {
    conn.shared.cfg.auto_create_partitions.max(1)
}

/// One Kafka connection's state shared by its reader and the tasks answering its requests.
pub(crate) struct KConn {
    pub(crate) engine: Engine,
    pub(crate) shard: usize,
    pub(crate) shared: Arc<Shared>,
    /// The client's address (DescribeGroups' client host).
    pub(crate) peer: String,
    /// SASL session and ACL cache (the native protocol's; a no-op when auth is off).
    pub(crate) auth: crate::session::ConnAuth,
    /// After a SaslHandshake v0, the next frame is a bare SASL token.
    pub(crate) raw_sasl_next: Cell<bool>,
    /// Which shards its produces go to; whether it may move ([`handoff`]).
    pub(crate) follow: handoff::Follow,
}

impl KConn {
    fn new(
        engine: Engine,
        shard: usize,
        shared: &Arc<Shared>,
        peer_addr: Option<SocketAddr>,
        certificate_name: Option<&str>,
        follow: handoff::Follow,
    ) -> KConn {
        KConn {
            engine,
            shard,
            shared: shared.clone(),
            peer: peer_addr.map(|a| a.ip().to_string()).unwrap_or_default(),
            auth: crate::session::ConnAuth::new(shared.auth.clone(), peer_addr, certificate_name),
            raw_sasl_next: Cell::new(false),
            follow,
        }
    }
}

/// A request's answer: the encoded response frame (size prefix included).
type Slot = flume::Receiver<Bytes>;
/// Where a request's handler puts its answer.
pub(crate) type Reply = flume::Sender<Bytes>;

/// Decoded request header fields the driver needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Call {
    pub(crate) api_key: i16,
    pub(crate) version: i16,
    pub(crate) correlation_id: i32,
}

/// Counts a request as in flight for graceful shutdown until dropped.
pub(crate) struct InFlight(Arc<Shared>);

impl InFlight {
    fn new(shared: &Arc<Shared>) -> Self {
        shared.inflight.fetch_add(1, Ordering::AcqRel);
        InFlight(shared.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves one accepted Kafka connection until it closes.
pub(crate) async fn serve(c: Accepted) {
    let Accepted {
        stream,
        engine,
        shard,
        shared,
        refuse,
    } = c;
    let peer_addr = stream.peer_addr().ok();
    let mut moved = false;
    if !refuse {
        let follow = handoff::Follow::new(&stream, &shared, &engine, 0);
        let handshake_timeout = Duration::from_millis(
            shared
                .cfg
                .tls
                .as_ref()
                .map_or(0, |t| t.handshake_timeout_ms.max(1)),
        );
        match crate::tls::establish(stream, shared.tls.as_ref(), handshake_timeout).await {
            Ok((stream, peer)) => {
                let conn = KConn::new(
                    engine,
                    shard,
                    &shared,
                    peer_addr,
                    peer.cert_common_name.as_deref(),
                    follow,
                );
                moved = serve_stream(conn, stream).await;
            }
            Err(e) => {
                tracing::info!(peer = ?peer_addr, error = %e, "kafka: TLS handshake failed");
            }
        }
    }
    if !moved {
        closed(&shared, shard);
    }
}

fn closed(shared: &Shared, shard: usize) {
    shared.connections.fetch_sub(1, Ordering::AcqRel);
    shared.metrics.connection_closed(shard);
}

/// Serves a plain connection that moved to this shard ([`handoff`]) until it closes or moves on.
async fn serve_plain(
    stream: TcpStream,
    engine: Engine,
    shard: usize,
    shared: Arc<Shared>,
    moves: u32,
) {
    let peer_addr = stream.peer_addr().ok();
    let follow = handoff::Follow::new(&stream, &shared, &engine, moves);
    let conn = KConn::new(engine, shard, &shared, peer_addr, None, follow);
    if !serve_stream(conn, crate::tls::Stream::Plain(stream)).await {
        closed(&shared, shard);
    }
}

/// Serves `stream` until it closes (false) or has moved to another shard (true).
async fn serve_stream(conn: KConn, stream: crate::tls::Stream) -> bool {
    let conn = Rc::new(conn);
    let (rd, wr) = crate::tls::split(stream);
    let Some((target, wr)) = run(conn.clone(), rd, wr).await else {
        return false;
    };
    let moving = handoff::Moving::take(&conn.follow, &conn.shared, conn.shard);
    // The last handle of the stream: closes this shard's descriptor (not the duplicate).
    drop(wr);
    match moving {
        Some(m) => m.send(&conn.engine, target).await,
        None => false,
    }
}

/// Reads and answers requests until the connection closes: `None`; or, when the reader stopped
/// to move the connection ([`handoff`]) and every answer owed was written, the target shard
/// and the write half (not closed).
async fn run(
    conn: Rc<KConn>,
    mut rd: crate::tls::ReadHalf,
    mut wr: crate::tls::WriteHalf,
) -> Option<(usize, crate::tls::WriteHalf)> {
    let (tx, rx) = flume::bounded::<Slot>(PIPELINE_MAX - 1);
    let moving = Rc::new(Cell::new(None));
    let target = moving.clone();
    let timing = trace::Trace::new().map(Rc::new);
    let reader_timing = timing.clone();
    let shard = conn.shard;
    let writer = async move {
        let mut whole = true;
        while let Ok(slot) = rx.recv_async().await {
            // A handler that drops its reply without answering leaves the stream unanswerable.
            let Ok(frame) = slot.recv_async().await else {
                whole = false;
                break;
            };
            let ready = std::time::Instant::now();
            if wr.write_all(&frame).await.is_err() || (rx.is_empty() && wr.flush().await.is_err()) {
                whole = false;
                break;
            }
            if let Some(t) = &timing {
                t.written(ready);
            }
        }
        if let Some(t) = &timing {
            t.log(shard);
        }
        // The reader has stopped (it dropped the sender); everything owed is written.
        if whole && let Some(shard) = target.get() {
            return Some((shard, wr));
        }
        let _ = wr.close().await;
        None
    };
    let reader = async move {
        match read_loop(&conn, &mut rd, &tx, reader_timing.as_deref()).await {
            Err(Close::Moving(shard)) => moving.set(Some(shard)),
            Err(e) => tracing::debug!(error = %e, "kafka connection closed"),
            Ok(()) => {}
        }
        drop(tx);
        std::future::pending::<()>().await;
        None
    };
    futures_lite::future::or(writer, reader).await
}

/// Why a connection is closed (logged at debug).
#[derive(Debug, thiserror::Error)]
pub(crate) enum Close {
    #[error("peer closed")]
    Eof,
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("bad frame: {0}")]
    Frame(String),
    #[error("server stopping")]
    Stopping,
    /// Not an error: the connection moves to this shard ([`handoff`]).
    #[error("moving to shard {0}")]
    Moving(usize),
}

async fn read_loop(
    conn: &Rc<KConn>,
    rd: &mut crate::tls::ReadHalf,
    tx: &flume::Sender<Slot>,
    timing: Option<&trace::Trace>,
) -> Result<(), Close> {
    // A connection that must authenticate has `unadmitted_timeout_ms` from its start to do it.
    let admit_by =
        std::time::Instant::now() + Duration::from_millis(conn.shared.cfg.unadmitted_timeout_ms);
    loop {
        let mut len = [0u8; 4];
        let start = std::time::Instant::now();
        // An idle connection is closed after `idle_timeout_ms`; one that must authenticate and
        // has not, at its admission deadline (issue 16).
        let wait = if conn.auth.enabled() && !conn.auth.has_session() {
            admit_by.saturating_duration_since(std::time::Instant::now())
        } else {
            Duration::from_millis(conn.shared.cfg.idle_timeout_ms)
        };
        match shardline_engine::rt::timeout(wait, rd.read_exact(&mut len)).await {
            Some(Ok(())) => {}
            Some(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(Close::Eof);
            }
            Some(Err(e)) => return Err(e.into()),
            None => return Err(Close::Frame("idle or unauthenticated for too long".into())),
        }
        let prefix = std::time::Instant::now();
        let size = i32::from_be_bytes(len);
        let max = request_bytes_limit(conn);
        let size = usize::try_from(size)
            .ok()
            .filter(|s| (conn.raw_sasl_next.get() || *s >= 8) && *s <= max)
            .ok_or_else(|| Close::Frame(format!("request size {size}")))?;
        let buf = read_body(conn, rd, size).await?;
        let done = std::time::Instant::now();
        if let Some(t) = timing {
            t.read(start, prefix, done);
        }
        if conn.shared.stopping.load(Ordering::Acquire) {
            return Err(Close::Stopping);
        }
        let frame = buf.freeze();
        if conn.raw_sasl_next.replace(false) {
            // SaslHandshake v0: a bare token, answered by a bare (empty) token or a close.
            sasl::verify(conn, &frame).await.map_err(Close::Frame)?;
            let (reply, slot) = flume::bounded(1);
            answer(&reply, Bytes::from_static(&[0, 0, 0, 0]));
            if let Some(t) = timing {
                t.dispatched(done, true);
            }
            tx.send_async(slot).await.map_err(|_| Close::Eof)?;
            continue;
        }
        let call = Call {
            api_key: i16::from_be_bytes([frame[0], frame[1]]),
            version: i16::from_be_bytes([frame[2], frame[3]]),
            correlation_id: i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]),
        };
        conn.shared.metrics.request(conn.shard, call.api_key as u16);
        let (reply, slot) = flume::bounded(1);
        let answers = api::dispatch(conn, call, frame, reply).await?;
        if let Some(t) = timing {
            t.dispatched(done, answers);
        }
        if answers {
            tx.send_async(slot).await.map_err(|_| Close::Eof)?;
        }
        // At a frame boundary: nothing of the next request has been read.
        if let Some(shard) = conn.follow.due() {
            return Err(Close::Moving(shard));
        }
    }
}

/// The largest request this connection may send now: `[kafka] request_bytes_max`, or the
/// server's `unadmitted_frame_bytes_max` while SASL is required and not yet done (issue 16:
/// an unauthenticated client cannot make the server hold large buffers).
fn request_bytes_limit(conn: &KConn) -> usize {
    let cfg = &conn.shared.cfg;
    let max = cfg.kafka.request_bytes_max;
    let max = if conn.auth.enabled() && !conn.auth.has_session() {
        max.min(cfg.unadmitted_frame_bytes_max)
    } else {
        max
    };
    usize::try_from(max).unwrap_or(usize::MAX)
}

/// First step of a request body's buffer; it then doubles as bytes arrive (never the announced
/// size up front: a header announcing 100 MiB costs nothing until the bytes come).
const BODY_STEP_BYTES: usize = 64 << 10;
/// How often a read waiting for room in the receive share looks again.
const BUDGET_POLL: std::time::Duration = std::time::Duration::from_millis(5);

/// The receive-share charge of a body being read (docs/operations.md, "Memory and descriptor
/// budgets"); returned when dropped.
struct BodyCharge<'a> {
    shared: &'a Shared,
    charged: usize,
}

impl BodyCharge<'_> {
    fn add(&mut self, bytes: usize) {
        self.shared.receive_bytes.fetch_add(bytes, Ordering::AcqRel);
        self.charged += bytes;
    }
}

impl Drop for BodyCharge<'_> {
    fn drop(&mut self) {
        self.shared
            .receive_bytes
            .fetch_sub(self.charged, Ordering::AcqRel);
    }
}

/// Reads a request body of `size` bytes into a buffer that grows as the bytes arrive (at most
/// twice what was received), charged to the server's receive share while it is read; while the
/// share is spent this socket is not read (the server slows), up to `frame_receive_timeout_ms`.
async fn read_body(
    conn: &KConn,
    rd: &mut crate::tls::ReadHalf,
    size: usize,
) -> Result<BytesMut, Close> {
    let shared = &conn.shared;
    let deadline = std::time::Instant::now()
        + std::time::Duration::from_millis(shared.cfg.frame_receive_timeout_ms);
    let share = shared.cfg.receive_bytes_max();
    let mut charge = BodyCharge { shared, charged: 0 };
    let mut buf = BytesMut::new();
    while buf.len() < size {
        let old = buf.len();
        let step = (size - old).min(old.max(BODY_STEP_BYTES));
        while shared.receive_bytes.load(Ordering::Acquire) + step > share && charge.charged > 0 {
            if std::time::Instant::now() >= deadline {
                return Err(Close::Frame(
                    "server memory budget for requests exhausted: retry later".into(),
                ));
            }
            shardline_engine::rt::sleep(BUDGET_POLL).await;
        }
        charge.add(step);
        buf.resize(old + step, 0);
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match shardline_engine::rt::timeout(left, rd.read_exact(&mut buf[old..])).await {
            Some(r) => r?,
            None => return Err(Close::Frame("request not received in time".into())),
        }
    }
    Ok(buf)
}

/// Encodes a response frame: size, header (v0: correlation id; v1: plus empty tagged fields),
/// body.
pub(crate) fn frame<M: kafka_protocol::protocol::Encodable>(
    call: Call,
    header_version: i16,
    body: &M,
) -> Result<Bytes, Close> {
    let mut out = BytesMut::with_capacity(64);
    out.put_i32(0);
    out.put_i32(call.correlation_id);
    if header_version >= 1 {
        out.put_u8(0);
    }
    body.encode(&mut out, call.version).map_err(|e| {
        // A bug of ours (a field set that the version lacks), never the client's.
        tracing::warn!(api = call.api_key, version = call.version, error = %e, "kafka: cannot encode a response");
        Close::Frame(format!("encoding response: {e}"))
    })?;
    let size =
        i32::try_from(out.len() - 4).map_err(|_| Close::Frame("response too large".into()))?;
    out[..4].copy_from_slice(&size.to_be_bytes());
    Ok(out.freeze())
}

/// Sends an answer; a closed connection is not an error for the handler.
pub(crate) fn answer(reply: &Reply, frame: Bytes) {
    let _ = reply.send(frame);
}

/// Runs a blocking control-plane call (it may wait for every shard, this one too) on a helper
/// thread and awaits its result.
pub(crate) async fn off_shard<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = flume::bounded(1);
    let spawned = std::thread::Builder::new()
        .name("shardline-kafka-admin".into())
        .spawn(move || {
            let _ = tx.send(f());
        });
    if spawned.is_err() {
        return None;
    }
    rx.recv_async().await.ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deprecated_kafka_auto_create_keys_fold_into_the_server_setting() {
        let mut cfg = crate::ServerConfig::default();
        fold_deprecated_keys(&mut cfg);
        assert!(!cfg.auto_create_topics);
        assert_eq!(cfg.auto_create_partitions, 1);
        cfg.kafka.auto_create_topics = true;
        cfg.kafka.default_partitions = Some(3);
        fold_deprecated_keys(&mut cfg);
        assert!(cfg.auto_create_topics);
        assert_eq!(cfg.auto_create_partitions, 3);
    }

    #[test]
    fn advertised_address_prefers_advertised_listeners_then_host_and_port() {
        let bound: SocketAddr = "127.0.0.1:9092".parse().unwrap_or_else(|_| unreachable!());
        let mut c = KafkaConfig::default();
        assert_eq!(c.advertised(bound), ("127.0.0.1".into(), 9092));
        c.advertised_host = Some("broker.example".into());
        c.advertised_port = Some(19092);
        assert_eq!(c.advertised(bound), ("broker.example".into(), 19092));
        c.advertised_listeners = Some("SASL_SSL://kafka.example:29092,PLAINTEXT://x:1".into());
        assert_eq!(c.advertised(bound), ("kafka.example".into(), 29092));
    }
}
