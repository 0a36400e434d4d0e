//! The Shardline server: a thin runtime shell around the sans-IO protocol codec and the engine
//! (docs/protocol.md, docs/architecture.md "Network").
//!
//! Every shard listens on the shared address (SO_REUSEPORT: the kernel spreads connections) and
//! on a direct address of its own, advertised in Metadata, so shard-aware clients reach a
//! partition's owner without a cross-shard hop. A connection is served by two tasks on the shard
//! that accepted it: a reader that decodes frames and dispatches requests (enqueueing produces in
//! arrival order, so per-partition order holds for pipelined requests), and a writer that
//! drains a bounded outbox. Nothing on a shard thread ever blocks: control-plane calls that
//! wait for every shard (topic create/delete/describe, stats) run on a helper thread.
//!
//! Layers: this crate joins the engine (`shardline-engine`) and the sans-IO codec
//! (`shardline-protocol`); engine <-> wire conversions are `convert.rs`.
//!
//! **A second protocol** (the Kafka front end, a later issue) plugs in at `listener.rs`: a
//! listener is an (address, protocol) pair, and a protocol is an implementation of the small
//! `WireProtocol` trait that serves one accepted connection (`Native` = Shardline's own,
//! served by `conn.rs`). Everything behind the connection (engine, auth and ACLs, quotas,
//! metrics, TLS settings) is shared; the codec and the connection driver are per protocol.

pub mod auth;
mod conn;
mod convert;
mod listener;
mod metrics;
mod ops;
mod prometheus;
mod session;

pub use metrics::snapshot_of as histogram_snapshot;
pub use prometheus::{
    CONTENT_TYPE as METRICS_CONTENT_TYPE, MetricsEndpoint, encode as encode_metrics,
};
mod encryption;
mod kafka;
mod quota;
mod semantics;
mod tls;

pub use encryption::EncryptionConfig;
pub use kafka::{KafkaConfig, decode_request as decode_kafka_request};
pub use quota::QuotaConfig;
pub use session::AuthConfig;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use shardline_engine::rt::{self, net::TcpListener};
use shardline_engine::{Engine, EngineConfig, ShardHandle};
use shardline_protocol as protocol;

/// Network settings (`[server]` in the config file; docs/operations.md).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Shared listen address; port 0 picks one.
    pub listen: String,
    /// Largest frame accepted from a client (and announced in the handshake).
    pub frame_bytes_max: u32,
    /// Open connections across all shards; more are refused with LIMIT_EXCEEDED.
    pub connections_max: usize,
    /// A connection with nothing in flight and no subscription is closed after this long silent.
    pub idle_timeout_ms: u64,
    /// Requests in flight per connection before the server stops reading it.
    pub inflight_requests_max: usize,
    /// Subscriptions per connection.
    pub subscriptions_per_connection_max: usize,
    /// Bytes queued for a connection's socket before its reader and pushes wait.
    pub outbox_bytes_max: usize,
    /// On shutdown, how long to wait for in-flight requests before stopping the engine.
    pub shutdown_grace_ms: u64,
    /// `[server.tls]`: serve TLS on every listener (docs/security.md). Absent = plain TCP.
    pub tls: Option<shardline_protocol::tls::ServerTlsConfig>,
    /// `[server.auth]`: authentication and ACLs (docs/security.md). Off by default.
    pub auth: AuthConfig,
    /// `[server.encryption]`: which new topics are encrypted at rest.
    pub encryption: EncryptionConfig,
    /// `[server.quotas]`: byte rates per principal, connections per address, topic limits.
    pub quotas: QuotaConfig,
    /// The Kafka listener (`[kafka]` in the serve file, docs/kafka.md). Not a `[server]` key:
    /// the CLI copies its top-level `[kafka]` table here.
    #[serde(skip)]
    pub kafka: KafkaConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:7070".into(),
            frame_bytes_max: crate::protocol::FRAME_BYTES_MAX_DEFAULT,
            connections_max: 10_000,
            idle_timeout_ms: 300_000,
            inflight_requests_max: 1024,
            subscriptions_per_connection_max: 1024,
            outbox_bytes_max: 16 << 20,
            shutdown_grace_ms: 10_000,
            tls: None,
            auth: AuthConfig::default(),
            encryption: EncryptionConfig::default(),
            quotas: QuotaConfig::default(),
            kafka: KafkaConfig::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Engine(#[from] shardline_engine::Error),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Tls(#[from] shardline_protocol::tls::TlsConfigError),
}

/// State shared by every shard's listeners and connections.
pub(crate) struct Shared {
    pub(crate) cfg: ServerConfig,
    pub(crate) connections: AtomicUsize,
    pub(crate) inflight: AtomicUsize,
    pub(crate) stopping: AtomicBool,
    pub(crate) shard_addrs: Mutex<Vec<SocketAddr>>,
    pub(crate) started: Instant,
    pub(crate) server_id: String,
    pub(crate) metrics: metrics::NetMetrics,
    /// Set when `cfg.tls` is: every accepted connection does a TLS handshake first.
    pub(crate) tls: Option<futures_rustls::TlsAcceptor>,
    /// Set when `cfg.auth.enabled`.
    pub(crate) auth: Option<Arc<session::AuthState>>,
    pub(crate) quotas: quota::Quotas,
    /// The bound Kafka address (port 0 resolved), when the Kafka listener is on.
    pub(crate) kafka_addr: Mutex<Option<SocketAddr>>,
    /// Kafka consumer groups (classic protocol), coordinated by this node.
    pub(crate) kafka_groups: kafka::groups::Coordinator,
}

/// A running server.
pub struct Server {
    engine: Engine,
    addr: SocketAddr,
    shard_addrs: Vec<SocketAddr>,
    shared: Arc<Shared>,
    /// Dropping these ends every accept loop.
    stop: Vec<flume::Sender<()>>,
    metrics_endpoint: Option<MetricsEndpoint>,
}

/// A shard's bound addresses: shared, direct, and Kafka (when configured).
type Bound = Result<(SocketAddr, SocketAddr, Option<SocketAddr>), String>;

impl Server {
    /// Opens the engine, then starts the listeners on every shard.
    pub fn start(engine_config: EngineConfig, cfg: ServerConfig) -> Result<Server, ServerError> {
        let listen: SocketAddr = cfg
            .listen
            .parse()
            .map_err(|e| ServerError::Config(format!("listen address '{}': {e}", cfg.listen)))?;
        if cfg.frame_bytes_max < crate::protocol::FRAME_BYTES_MIN_LIMIT
            || cfg.frame_bytes_max > crate::protocol::FRAME_BYTES_MAX_LIMIT
        {
            return Err(ServerError::Config(
                "frame_bytes_max must be between 64 KiB and 1 GiB".into(),
            ));
        }
        let mut kafka_at = cfg.kafka.listen_addr().map_err(ServerError::Config)?;
        let tls = match &cfg.tls {
            Some(t) => Some(futures_rustls::TlsAcceptor::from(t.build()?)),
            None => None,
        };
        if !listen.ip().is_loopback() && tls.is_none() {
            tracing::warn!(
                %listen,
                "listening on a non-loopback address without TLS: traffic and credentials \
                 travel in clear text (configure [server.tls] or --tls-cert/--tls-key)"
            );
        }
        let auth = if cfg.auth.enabled {
            Some(
                session::AuthState::open(&cfg.auth, &engine_config.data_dir)
                    .map_err(ServerError::Config)?,
            )
        } else {
            None
        };
        let engine = Engine::open(engine_config)?;
        let cfg_quotas = cfg.quotas.clone();
        let shared = Arc::new(Shared {
            cfg,
            connections: AtomicUsize::new(0),
            inflight: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            shard_addrs: Mutex::new(Vec::new()),
            started: Instant::now(),
            server_id: format!("shardline-{}", env!("CARGO_PKG_VERSION")),
            metrics: metrics::NetMetrics::new(engine.shard_count()),
            tls,
            auth,
            quotas: quota::Quotas::new(cfg_quotas),
            kafka_addr: Mutex::new(None),
            kafka_groups: kafka::groups::Coordinator::default(),
        });
        let mut stop = Vec::new();
        let mut shard_addrs = Vec::new();
        let mut addr = listen;
        for shard in 0..engine.shard_count() {
            let (tx, rx) = flume::bounded::<Bound>(1);
            let (stop_tx, stop_rx) = flume::bounded::<()>(1);
            let shared2 = shared.clone();
            let bind_at = addr;
            let kafka_bind_at = kafka_at;
            let task = Box::new(move |h: ShardHandle| {
                let r = bind_and_serve(h, bind_at, kafka_bind_at, shared2, stop_rx);
                let _ = tx.send(r);
            });
            engine.run_on_shard(shard, task)?;
            let (shared_addr, direct, kafka_bound) = rx
                .recv()
                .map_err(|_| ServerError::Config("shard stopped while binding".into()))?
                .map_err(|e| ServerError::Listen {
                    addr: bind_at.to_string(),
                    source: std::io::Error::other(e),
                })?;
            // The first shard resolves port 0; the others bind the same port.
            addr = shared_addr;
            kafka_at = kafka_bound;
            shard_addrs.push(direct);
            stop.push(stop_tx);
        }
        if let Ok(mut a) = shared.shard_addrs.lock() {
            *a = shard_addrs.clone();
        }
        if let Ok(mut k) = shared.kafka_addr.lock() {
            *k = kafka_at;
        }
        if let Some(k) = kafka_at {
            tracing::info!(addr = %k, "kafka listening");
        }
        let tls_on = shared.tls.is_some();
        tracing::info!(%addr, shards = ?shard_addrs, tls = tls_on, "listening");
        Ok(Server {
            engine,
            addr,
            shard_addrs,
            shared,
            stop,
            metrics_endpoint: None,
        })
    }

    /// Every figure of the server and its shards (what `/metrics` and the Metrics api show).
    /// Blocks on the shards: do not call it from a shard thread.
    pub fn metrics(
        &self,
        include_partitions: bool,
    ) -> Result<crate::protocol::MetricsResponse, ServerError> {
        let uptime_ms = self.shared.started.elapsed().as_millis() as u64;
        Ok(metrics::gather(
            &self.engine,
            &self.shared.metrics,
            uptime_ms,
            include_partitions,
        )?)
    }

    /// Serves `GET /metrics` (Prometheus/OpenMetrics text) on `addr` from a thread of its
    /// own, until shutdown. Returns the bound address (port 0 picks one).
    pub fn serve_metrics(&mut self, addr: &str) -> Result<SocketAddr, ServerError> {
        let at: SocketAddr = addr
            .parse()
            .map_err(|e| ServerError::Config(format!("metrics.listen '{addr}': {e}")))?;
        let engine = self.engine.clone();
        let shared = self.shared.clone();
        let render: prometheus::Render = Arc::new(move || {
            let uptime_ms = shared.started.elapsed().as_millis() as u64;
            let snapshot = metrics::gather(&engine, &shared.metrics, uptime_ms, true)
                .map_err(|e| e.to_string())?;
            prometheus::encode(snapshot).map_err(|e| e.to_string())
        });
        let endpoint =
            MetricsEndpoint::start(at, render).map_err(|source| ServerError::Listen {
                addr: addr.to_string(),
                source,
            })?;
        let bound = endpoint.addr();
        tracing::info!(addr = %bound, path = "/metrics", "metrics endpoint listening");
        self.metrics_endpoint = Some(endpoint);
        Ok(bound)
    }

    /// The shared (bootstrap) address; every shard accepts on it.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The Kafka listener's address (port 0 resolved), when `[kafka] listen` is set.
    pub fn kafka_addr(&self) -> Option<SocketAddr> {
        self.shared.kafka_addr.lock().ok().and_then(|a| *a)
    }

    /// One direct address per shard (as Metadata advertises them).
    pub fn shard_addrs(&self) -> Vec<SocketAddr> {
        self.shard_addrs.clone()
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Open connections right now.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::Acquire)
    }

    /// Stops accepting, lets in-flight requests finish (up to `shutdown_grace_ms`), then flushes
    /// and fsyncs every partition and stops the shards.
    pub fn shutdown(self) -> Result<(), ServerError> {
        self.shared.stopping.store(true, Ordering::Release);
        drop(self.metrics_endpoint);
        if let Some(a) = &self.shared.auth {
            a.stop();
        }
        drop(self.stop);
        let deadline = Instant::now() + Duration::from_millis(self.shared.cfg.shutdown_grace_ms);
        while self.shared.inflight.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        self.engine.shutdown()?;
        Ok(())
    }
}

/// Runs on a shard: binds its listeners (listener.rs: the shared and the direct address),
/// spawns their accept loops, and returns the two addresses.
fn bind_and_serve(
    h: ShardHandle,
    at: SocketAddr,
    kafka: Option<SocketAddr>,
    shared: Arc<Shared>,
    stop: flume::Receiver<()>,
) -> Bound {
    let mut bound = Vec::new();
    for listener in listener::listeners(at, kafka) {
        let a = listener.addr;
        let l = TcpListener::bind(a).map_err(|e| format!("bind {a}: {e}"))?;
        bound.push((l, listener.protocol));
    }
    let mut addrs = Vec::with_capacity(bound.len());
    for (l, protocol) in bound {
        addrs.push(l.local_addr().map_err(|e| e.to_string())?);
        tracing::debug!(shard = h.shard, addr = ?addrs.last(), protocol = protocol.name(), "listener");
        rt::spawn_local(accept_loop(
            l,
            protocol,
            h.engine.clone(),
            h.shard,
            shared.clone(),
            stop.clone(),
        ));
    }
    match addrs[..] {
        [shared_addr, direct_addr] => Ok((shared_addr, direct_addr, None)),
        [shared_addr, direct_addr, kafka_addr] => Ok((shared_addr, direct_addr, Some(kafka_addr))),
        _ => Err(format!(
            "expected a shared and a direct listener, got {addrs:?}"
        )),
    }
}

async fn accept_loop(
    l: TcpListener,
    protocol: Arc<dyn listener::WireProtocol>,
    engine: Engine,
    shard: usize,
    shared: Arc<Shared>,
    stop: flume::Receiver<()>,
) {
    loop {
        let accepted = futures_lite::future::or(async { Some(l.accept().await) }, async {
            let _ = stop.recv_async().await;
            None
        })
        .await;
        let Some(r) = accepted else { return };
        if shared.stopping.load(Ordering::Acquire) {
            return;
        }
        match r {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                let n = shared.connections.fetch_add(1, Ordering::AcqRel);
                let refuse = n >= shared.cfg.connections_max;
                shared.metrics.connection_opened(shard, refuse);
                rt::spawn_local(protocol.serve(listener::Accepted {
                    stream,
                    engine: engine.clone(),
                    shard,
                    shared: shared.clone(),
                    refuse,
                }));
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(shard, error = %e, "accept failed");
                rt::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}
