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
mod console;
mod convert;
mod listener;
mod membership;
mod metrics;
mod nodes;
mod ops;
pub mod peer;
mod prometheus;
mod replicas;
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
    /// Create a topic the first time a client asks for it by name (the Metadata request a
    /// producer sends before its first produce), with `auto_create_partitions` partitions.
    /// Off by default (docs/operations.md, "Administration").
    pub auto_create_topics: bool,
    pub auto_create_partitions: u32,
    /// The server's memory budget (docs/operations.md, "Memory and descriptor budgets"):
    /// frames being received and requests handed to shards get `receive_share_percent` of it,
    /// responses and pushes queued for sockets `outbox_share_percent`, subscriptions'
    /// read-ahead `readahead_share_percent`, unflushed produced data
    /// `unflushed_share_percent` (split evenly over the shards); the rest is headroom.
    pub memory_bytes_max: u64,
    /// Share of `memory_bytes_max` for the buffers of frames being received and the frames of
    /// requests in flight (handed to shards, not yet answered).
    pub receive_share_percent: u8,
    /// Share of `memory_bytes_max` for responses and subscription pushes queued for sockets.
    pub outbox_share_percent: u8,
    /// Share of `memory_bytes_max` for the responses the engine reads ahead for subscriptions
    /// (at most two of up to 1 MiB each per subscription).
    pub readahead_share_percent: u8,
    /// Share of `memory_bytes_max` for produced data appended but not yet written: the
    /// engine's `unflushed_bytes_max_per_shard` is lowered to this share divided by the shard
    /// count (never raised).
    pub unflushed_share_percent: u8,
    /// Largest frame accepted before a connection has handshaken (and authenticated, with
    /// auth on).
    pub unadmitted_frame_bytes_max: u32,
    /// A connection that has not handshaken (and authenticated, with auth on) this long after
    /// it was accepted is closed.
    pub unadmitted_timeout_ms: u64,
    /// A frame must arrive whole within this long of its first byte (slow senders are closed).
    pub frame_receive_timeout_ms: u64,
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
            auto_create_topics: false,
            auto_create_partitions: 1,
            memory_bytes_max: 1 << 30,
            receive_share_percent: 35,
            outbox_share_percent: 25,
            readahead_share_percent: 10,
            unflushed_share_percent: 25,
            unadmitted_frame_bytes_max: crate::protocol::FRAME_BYTES_MIN_LIMIT,
            unadmitted_timeout_ms: 10_000,
            frame_receive_timeout_ms: 60_000,
            kafka: KafkaConfig::default(),
        }
    }
}

impl ServerConfig {
    /// Bytes the buffers of frames being received may hold across the server.
    pub fn receive_bytes_max(&self) -> usize {
        let b = self.memory_bytes_max / 100 * u64::from(self.receive_share_percent);
        usize::try_from(b).unwrap_or(usize::MAX)
    }

    /// Bytes of responses and pushes queued for sockets across the server.
    pub fn outbox_bytes_total_max(&self) -> usize {
        let b = self.memory_bytes_max / 100 * u64::from(self.outbox_share_percent);
        usize::try_from(b).unwrap_or(usize::MAX)
    }

    /// Bytes subscriptions' read-ahead may hold across the server.
    pub fn readahead_bytes_max(&self) -> usize {
        let b = self.memory_bytes_max / 100 * u64::from(self.readahead_share_percent);
        usize::try_from(b).unwrap_or(usize::MAX)
    }

    /// Unflushed bytes each of `shards` shards may hold: the unflushed share split evenly.
    pub fn unflushed_bytes_per_shard(&self, shards: usize) -> usize {
        let b = self.memory_bytes_max / 100 * u64::from(self.unflushed_share_percent);
        let per = b / (shards.max(1) as u64);
        usize::try_from(per).unwrap_or(usize::MAX)
    }

    /// Lowers the engine's unflushed bytes per shard to the unflushed share (issue 16: one
    /// budget); refuses a share too small for the engine's 1 MiB minimum per shard.
    fn apply_unflushed_share(&self, engine: &mut EngineConfig) -> Result<(), ServerError> {
        let shards = match engine.shards {
            0 => shardline_engine::rt::usable_cpus().len().max(1),
            n => n,
        };
        let per = self.unflushed_bytes_per_shard(shards);
        if per < 1 << 20 {
            return Err(ServerError::Config(format!(
                "memory_bytes_max {} with unflushed_share_percent {} leaves {per} unflushed \
                 bytes for each of {shards} shards, less than 1 MiB: raise the budget or the share",
                self.memory_bytes_max, self.unflushed_share_percent
            )));
        }
        engine.unflushed_bytes_max_per_shard = engine.unflushed_bytes_max_per_shard.min(per);
        Ok(())
    }

    /// The listen address, after the checks that need no engine: frame limit, memory budget.
    fn checked_listen(&self) -> Result<SocketAddr, ServerError> {
        let listen: SocketAddr = self
            .listen
            .parse()
            .map_err(|e| ServerError::Config(format!("listen address '{}': {e}", self.listen)))?;
        if self.frame_bytes_max < crate::protocol::FRAME_BYTES_MIN_LIMIT
            || self.frame_bytes_max > crate::protocol::FRAME_BYTES_MAX_LIMIT
        {
            return Err(ServerError::Config(
                "frame_bytes_max must be between 64 KiB and 1 GiB".into(),
            ));
        }
        self.validate_budget()?;
        Ok(listen)
    }

    /// Checks the budget fields: shares within 100 %, room for two largest frames.
    fn validate_budget(&self) -> Result<(), ServerError> {
        let shares = u16::from(self.receive_share_percent)
            + u16::from(self.outbox_share_percent)
            + u16::from(self.readahead_share_percent)
            + u16::from(self.unflushed_share_percent);
        if shares > 100 {
            return Err(ServerError::Config(format!(
                "receive_share_percent + outbox_share_percent + readahead_share_percent + \
                 unflushed_share_percent = {shares}, more than 100"
            )));
        }
        let two_frames = 2 * u64::from(self.frame_bytes_max);
        if (self.receive_bytes_max() as u64) < two_frames {
            return Err(ServerError::Config(format!(
                "memory_bytes_max {} gives receiving frames {} bytes, less than two frames of \
                 frame_bytes_max {}",
                self.memory_bytes_max,
                self.receive_bytes_max(),
                self.frame_bytes_max
            )));
        }
        Ok(())
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
    /// Bytes held by connections' frame decoders (the receive share of the memory budget).
    pub(crate) receive_bytes: AtomicUsize,
    /// Bytes queued for connections' sockets (the outbox share of the memory budget).
    pub(crate) outbox_bytes: AtomicUsize,
    /// Bytes reserved for subscriptions' read-ahead (the read-ahead share).
    pub(crate) readahead_bytes: AtomicUsize,
    /// Connections admitted: `connections_max`, or fewer if the open-files limit leaves less.
    pub(crate) connections_limit: usize,
    /// This node's id and cluster size, for replicated topics (replicas.rs).
    pub(crate) cluster: replicas::ClusterView,
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
    pub fn start(
        mut engine_config: EngineConfig,
        mut cfg: ServerConfig,
    ) -> Result<Server, ServerError> {
        kafka::fold_deprecated_keys(&mut cfg);
        let listen = cfg.checked_listen()?;
        cfg.apply_unflushed_share(&mut engine_config)?;
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
        exclusive_listen(listen)?;
        let engine = Engine::open(engine_config)?;
        install_shard_panic_exit();
        let cfg_quotas = cfg.quotas.clone();
        let cfg_connections_max = cfg.connections_max;
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
            receive_bytes: AtomicUsize::new(0),
            outbox_bytes: AtomicUsize::new(0),
            readahead_bytes: AtomicUsize::new(0),
            connections_limit: connections_limit(cfg_connections_max),
            cluster: replicas::ClusterView::default(),
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
        let console = Arc::new(console::Console::new(
            self.engine.clone(),
            self.shared.clone(),
        ));
        let endpoint =
            MetricsEndpoint::start_with_console(at, render, Some(console)).map_err(|source| {
                ServerError::Listen {
                    addr: addr.to_string(),
                    source,
                }
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

    /// The Kafka address this node advertises (`host:port`, as Metadata lists it), when the
    /// Kafka listener is on: told to the other nodes of a cluster in the peer handshake.
    pub fn kafka_advertised(&self) -> Option<String> {
        let bound = self.kafka_addr()?;
        let (host, port) = self.shared.cfg.kafka.advertised(bound);
        Some(if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        })
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

impl Server {
    /// Tells the server its node id and the cluster's node count (`shardline serve
    /// --cluster`); a single node is node 1 of 1. Replication factors are checked against it.
    pub fn set_cluster(&self, node_id: u64, nodes: u32) {
        self.shared
            .cluster
            .node_id
            .store(node_id, Ordering::Release);
        self.shared.cluster.nodes.store(nodes, Ordering::Release);
    }

    /// The client address this node advertises to clients (DescribeCluster, and through the
    /// peer handshake to the other nodes): `--advertise`, else the bound listener.
    pub fn set_advertised_address(&self, address: &str) {
        *self
            .shared
            .cluster
            .advertised
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = address.to_string();
    }

    /// Gives the server the node-to-node transport (a cluster): DescribeCluster answers every
    /// node's client address from it.
    pub fn set_peer_transport(&self, transport: crate::peer::PeerTransport) {
        *self
            .shared
            .cluster
            .peers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(transport);
    }

    /// Called by the replication layer once it serves partitions with more than one replica:
    /// from then on CreateReplicatedTopic accepts factors above 1 (up to the node count).
    pub fn enable_replication(&self) {
        self.shared
            .cluster
            .replication
            .store(true, Ordering::Release);
        // Users, tokens and ACLs: the controller's from now on (auth/replicated.rs).
        if let Some(auth) = &self.shared.auth
            && let Err(e) = auth::replicated::enable(auth, &self.engine)
        {
            tracing::error!(error = %e, "security changes are not replicated on this node");
        }
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
                let refuse = n >= shared.connections_limit
                    || shared.receive_bytes.load(Ordering::Acquire)
                        > shared.cfg.receive_bytes_max();
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

/// Descriptors kept free for partitions created later, listeners, files of the admin thread.
const DESCRIPTORS_RESERVED: usize = 256;

/// Connections that fit: `connections_max`, or what the open-files limit (RLIMIT_NOFILE, as the
/// engine raised it) leaves after the descriptors open now (partitions, listeners) and a
/// reserve, whichever is smaller. Logged when the limit is the smaller one.
fn connections_limit(connections_max: usize) -> usize {
    let Some(nofile) = shardline_engine::util::fd::open_files_limit() else {
        return connections_max;
    };
    let open = shardline_engine::util::fd::open_files().unwrap_or(0);
    let fit = nofile.saturating_sub(open + DESCRIPTORS_RESERVED);
    if fit < connections_max {
        tracing::warn!(
            connections_max,
            rlimit_nofile = nofile,
            open_files = open,
            admitted = fit,
            "the open-files limit (RLIMIT_NOFILE) admits fewer connections than connections_max"
        );
    }
    fit.min(connections_max)
}

/// Refuses a listen address another process serves (issue 16, finding 6). The shards bind it
/// with SO_REUSEPORT, which would let a second server share it and the kernel split clients
/// between two unrelated brokers. A connection attempt first tells whether anything listens
/// there (a wildcard address is tried on loopback). A bind probe would not do: sockets of
/// connections a killed server left behind hold the port without listening. Port 0 is always
/// free. Two servers starting at the same instant can still both pass (docs/operations.md).
fn exclusive_listen(listen: SocketAddr) -> Result<(), ServerError> {
    if listen.port() == 0 {
        return Ok(());
    }
    let mut probe = listen;
    if probe.ip().is_unspecified() {
        let loopback: std::net::IpAddr = match probe {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        };
        probe.set_ip(loopback);
    }
    // The listener of a server killed a moment ago lingers while the kernel tears down its
    // io_uring (it even completes handshakes): only one that keeps answering for
    // LISTEN_PROBE_PERIOD is another server.
    let until = Instant::now() + LISTEN_PROBE_PERIOD;
    loop {
        match std::net::TcpStream::connect_timeout(&probe, LISTEN_PROBE_TIMEOUT) {
            Ok(_) if Instant::now() >= until => {
                return Err(ServerError::Listen {
                    addr: listen.to_string(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::AddrInUse,
                        "another process is already listening on it (is another 'shardline serve' \
                         running?): stop it, or pass --listen HOST:PORT",
                    ),
                });
            }
            Ok(_) => std::thread::sleep(LISTEN_PROBE_INTERVAL),
            // Refused (nobody listens) or unreachable: the binds that follow tell the rest.
            Err(_) => return Ok(()),
        }
    }
}

/// How long a listener must keep answering the probe to count as another server's.
const LISTEN_PROBE_PERIOD: Duration = Duration::from_secs(2);
/// Pause between probes while a listener answers.
const LISTEN_PROBE_INTERVAL: Duration = Duration::from_millis(100);

/// How long the listen-address probe waits for a connection.
const LISTEN_PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// A panic on a shard thread (a bug: no request may cause one) ends the process with exit
/// status 70 after the panic is reported, instead of leaving a server that accepts connections
/// but no longer serves the panicked shard's partitions: clients see their connections close
/// (an error, not a hang) and a supervisor restarts the server. Installed once per process.
fn install_shard_panic_exit() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            previous(info);
            let shard = std::thread::current()
                .name()
                .is_some_and(|n| n.starts_with("shard-"));
            if shard {
                tracing::error!(
                    "a shard panicked: exiting so that a supervisor restarts the server"
                );
                std::process::exit(70);
            }
        }));
    });
}
