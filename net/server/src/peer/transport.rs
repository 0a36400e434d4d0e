//! The node-to-node transport: a TCP listener on this node's peer address, one outbound link
//! per other node, all running as tasks on one shard (glommio, through the engine's `rt` seam).
//!
//! - **Links.** Each node dials every other node and sends only on the connection it dialled;
//!   it receives on the connections it accepted. A pair of nodes therefore has two TCP
//!   connections, one per direction, and neither side ever waits for the other to read.
//! - **Handshake**, both directions, before any message: the dialler sends Hello (version,
//!   cluster id, its node id, the node id it believes it dialled); the acceptor checks all four
//!   and answers Welcome (its own identity) or Refuse (code and reason) and closes. The dialler
//!   checks the Welcome in turn. Every refusal is logged on both sides.
//! - **Batching.** [`PeerTransport::send`] only queues `(to, group, bytes)`;
//!   [`PeerTransport::flush`] (once per round of the caller, e.g. a shard's Raft tick) hands
//!   every peer's queued messages to its link, which writes them as one Messages frame (more
//!   only when they exceed the frame limit).
//! - **Bounded memory.** A link's queue holds at most `queue_messages_max` messages and
//!   `queue_bytes_max` bytes; beyond that the oldest are dropped and counted (Raft retransmits),
//!   so a dead peer never grows memory.
//! - **Reconnect** with exponential backoff (`backoff_min_ms` doubling to `backoff_max_ms`), reset
//!   by a successful handshake; a write that does not finish in `write_timeout_ms` drops the
//!   connection (a stopped peer).
//! - **Inbound** frames are handed to the registered handler as `(from, Vec<(group, Bytes)>)`,
//!   on the transport's shard; the handler must not block (it routes to the owning shards).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use shardline_engine::Engine;
use shardline_engine::rt::{
    self,
    net::{TcpListener, TcpStream},
};
use shardline_protocol::tls::{ClientTls, ServerTlsConfig, TlsConfigError};

use super::config::{ClusterSpec, PeerNode};
use super::frame::{
    self, FRAME_BYTES_MIN_LIMIT, FRAME_HEADER_BYTES, Frame, Hello, MESSAGE_OVERHEAD_BYTES,
    PEER_PROTOCOL_VERSION, PEER_PROTOCOL_VERSION_MIN, RefuseCode,
};

/// Tuning of the transport; the defaults suit a LAN cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSettings {
    /// Largest frame sent or accepted (header included).
    pub frame_bytes_max: u32,
    /// Messages queued for one peer before the oldest are dropped.
    pub queue_messages_max: usize,
    /// Bytes queued for one peer before the oldest messages are dropped.
    pub queue_bytes_max: usize,
    pub connect_timeout_ms: u64,
    /// Both the TLS and the Hello/Welcome exchange must finish within this.
    pub handshake_timeout_ms: u64,
    /// A frame write that takes longer closes the link (it reconnects).
    pub write_timeout_ms: u64,
    pub backoff_min_ms: u64,
    pub backoff_max_ms: u64,
    /// The shard whose executor runs the listener and the links.
    pub shard: usize,
    /// This node's client address (`host:port`, its `--advertise` or `--listen`), sent in the
    /// handshake so every node can tell clients where every node is; empty = not told.
    pub advertised_address: String,
    /// This node's Kafka address as Kafka clients should dial it (`host:port`), sent in the
    /// handshake so that every node's Kafka Metadata lists every node; empty = no Kafka
    /// listener.
    pub kafka_address: String,
}

impl Default for PeerSettings {
    fn default() -> Self {
        PeerSettings {
            frame_bytes_max: 16 << 20,
            queue_messages_max: 16_384,
            queue_bytes_max: 64 << 20,
            connect_timeout_ms: 1_000,
            handshake_timeout_ms: 5_000,
            write_timeout_ms: 5_000,
            backoff_min_ms: 50,
            backoff_max_ms: 2_000,
            shard: 0,
            advertised_address: String::new(),
            kafka_address: String::new(),
        }
    }
}

/// Receives every inbound Messages frame: `(from node, [(group, bytes)])`, in frame order per
/// sending node. Called on the transport's shard; must not block.
pub type InboundHandler = Arc<dyn Fn(u64, Vec<(u64, Bytes)>) + Send + Sync>;

/// Why a transport did not start.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("peer transport: {0}")]
    Config(String),
    #[error("peer transport TLS: {0}")]
    Tls(#[from] TlsConfigError),
    #[error(transparent)]
    Engine(#[from] shardline_engine::Error),
    #[error("cannot listen for peers on {addr}: {reason}")]
    Listen { addr: SocketAddr, reason: String },
}

/// Why a message was not queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("node {0} is not a peer of this node")]
    UnknownNode(u64),
    #[error("message of {bytes} bytes does not fit the peer frame limit ({max} bytes)")]
    TooLarge { bytes: usize, max: u32 },
    #[error("the peer transport is stopped")]
    Stopped,
}

/// Counters of one outbound link (and what this node received from that peer).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// The outbound connection is established and handshaken.
    pub connected: bool,
    /// Successful handshakes so far.
    pub connects: u64,
    pub frames_sent: u64,
    pub messages_sent: u64,
    /// Dropped because the queue was full.
    pub messages_dropped: u64,
    /// Waiting in the queue now (flushed or not).
    pub messages_queued: u64,
    pub frames_received: u64,
    pub messages_received: u64,
    /// The last reason the link failed (connect, TLS, refusal, write), if any.
    pub last_error: Option<String>,
}

#[derive(Default)]
struct Queue {
    /// Sent since the last flush.
    pending: VecDeque<(u64, Bytes)>,
    /// Flushed, waiting for the link's writer.
    ready: VecDeque<(u64, Bytes)>,
    bytes: usize,
}

impl Queue {
    fn len(&self) -> usize {
        self.pending.len() + self.ready.len()
    }
    fn drop_oldest(&mut self) -> bool {
        let oldest = match self.ready.pop_front() {
            Some(m) => Some(m),
            None => self.pending.pop_front(),
        };
        match oldest {
            Some((_, m)) => {
                self.bytes -= m.len();
                true
            }
            None => false,
        }
    }
}

struct Link {
    node: PeerNode,
    queue: Mutex<Queue>,
    doorbell_tx: flume::Sender<()>,
    doorbell_rx: flume::Receiver<()>,
    connected: AtomicBool,
    connects: AtomicU64,
    frames_sent: AtomicU64,
    messages_sent: AtomicU64,
    messages_dropped: AtomicU64,
    frames_received: AtomicU64,
    messages_received: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// The handshake version this link speaks: [`PEER_PROTOCOL_VERSION`], or the oldest
    /// accepted one after the peer refused it by version (a peer not upgraded yet); back to
    /// the newest whenever the link goes down.
    version: AtomicU16,
    /// Set by [`PeerTransport::remove_peer`]: the link's tasks end.
    removed: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Link {
    fn new(node: PeerNode) -> Link {
        let (doorbell_tx, doorbell_rx) = flume::bounded(1);
        Link {
            node,
            queue: Mutex::new(Queue::default()),
            doorbell_tx,
            doorbell_rx,
            connected: AtomicBool::new(false),
            connects: AtomicU64::new(0),
            frames_sent: AtomicU64::new(0),
            messages_sent: AtomicU64::new(0),
            messages_dropped: AtomicU64::new(0),
            frames_received: AtomicU64::new(0),
            messages_received: AtomicU64::new(0),
            last_error: Mutex::new(None),
            version: AtomicU16::new(PEER_PROTOCOL_VERSION),
            removed: AtomicBool::new(false),
        }
    }

    /// Records a failure; returns whether it differs from the previous one (to log changes at
    /// warn and repeats at debug, so a dead peer does not flood the log).
    fn fail(&self, reason: String) -> bool {
        let mut last = lock(&self.last_error);
        let new = last.as_deref() != Some(reason.as_str());
        *last = Some(reason);
        new
    }
}

struct Inner {
    spec: ClusterSpec,
    settings: PeerSettings,
    /// One link per other node: the cluster list's, plus those added at run time
    /// ([`PeerTransport::add_peer`]). A node without a link is refused at the handshake.
    links: RwLock<BTreeMap<u64, Arc<Link>>>,
    handler: InboundHandler,
    stop_tx: Mutex<Option<flume::Sender<()>>>,
    stop_rx: flume::Receiver<()>,
    acceptor: Option<(futures_rustls::TlsAcceptor, Duration)>,
    connector: Option<(futures_rustls::TlsConnector, ClientTls)>,
    /// The current inbound connection of each node: replacing the sender ends the older
    /// connection's reader (a restarted peer's old socket may linger half-open).
    inbound: Mutex<HashMap<u64, flume::Sender<()>>>,
    refusals: AtomicU64,
    last_refusal: Mutex<Option<String>>,
    /// Each peer's client address, as its last handshake told it.
    client_addresses: Mutex<BTreeMap<u64, String>>,
    /// Each peer's Kafka address, as its last handshake told it (absent: none, or a version
    /// 2 peer).
    kafka_addresses: Mutex<BTreeMap<u64, String>>,
}

impl Inner {
    fn links(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<u64, Arc<Link>>> {
        self.links.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn learned_address(&self, node: u64, hello: &Hello) {
        let address = hello.client_address.as_str();
        if !address.is_empty() {
            let mut known = lock(&self.client_addresses);
            if known.get(&node).map(String::as_str) != Some(address) {
                tracing::info!(node, address, "peer client address");
                known.insert(node, address.to_string());
            }
        }
        let kafka = hello.kafka_address.as_str();
        let mut known = lock(&self.kafka_addresses);
        if known.get(&node).map(String::as_str) != Some(kafka) {
            if kafka.is_empty() {
                known.remove(&node);
            } else {
                tracing::info!(node, address = kafka, "peer Kafka address");
                known.insert(node, kafka.to_string());
            }
        }
    }

    fn stopped(&self) -> bool {
        lock(&self.stop_tx).is_none()
    }

    fn refused(&self, from: Option<SocketAddr>, reason: &str) {
        self.refusals.fetch_add(1, Ordering::AcqRel);
        *lock(&self.last_refusal) = Some(reason.to_string());
        tracing::warn!(
            node = self.spec.node_id,
            from = ?from,
            reason,
            "peer connection refused"
        );
    }
}

/// A running node-to-node transport. Cheap to clone; usable from any thread.
#[derive(Clone)]
pub struct PeerTransport {
    inner: Arc<Inner>,
    listen_addr: SocketAddr,
}

type Bound = Result<SocketAddr, PeerError>;

trait Io: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> Io for T {}
type BoxIo = Box<dyn Io>;

impl PeerTransport {
    /// Binds this node's peer address (its entry in `spec`) and starts the listener and one
    /// link per other node on shard `settings.shard` of `engine`.
    pub fn start(
        engine: &Engine,
        spec: ClusterSpec,
        settings: PeerSettings,
        handler: InboundHandler,
    ) -> Result<PeerTransport, PeerError> {
        if settings.frame_bytes_max < FRAME_BYTES_MIN_LIMIT {
            return Err(PeerError::Config(format!(
                "frame_bytes_max must be at least {FRAME_BYTES_MIN_LIMIT}"
            )));
        }
        if settings.advertised_address.len() > frame::CLIENT_ADDRESS_BYTES_MAX
            || settings.kafka_address.len() > frame::CLIENT_ADDRESS_BYTES_MAX
        {
            return Err(PeerError::Config(format!(
                "the advertised client or Kafka address is longer than {} bytes",
                frame::CLIENT_ADDRESS_BYTES_MAX
            )));
        }
        if settings.queue_messages_max == 0 || settings.backoff_min_ms == 0 {
            return Err(PeerError::Config(
                "queue_messages_max and backoff_min_ms must be positive".into(),
            ));
        }
        let handshake = Duration::from_millis(settings.handshake_timeout_ms);
        let (acceptor, connector) = match &spec.tls {
            None => (None, None),
            Some(t) => {
                let server = ServerTlsConfig {
                    client_ca: Some(t.ca.clone()),
                    handshake_timeout_ms: settings.handshake_timeout_ms,
                    ..ServerTlsConfig::new(&t.cert, &t.key)
                }
                .build()?;
                let client = ClientTls::new(&t.ca, Some((&t.cert, &t.key)))?;
                (
                    Some((futures_rustls::TlsAcceptor::from(server), handshake)),
                    Some((
                        futures_rustls::TlsConnector::from(client.config.clone()),
                        client,
                    )),
                )
            }
        };
        let links = RwLock::new(
            spec.peers()
                .map(|n| (n.id, Arc::new(Link::new(n.clone()))))
                .collect(),
        );
        let (stop_tx, stop_rx) = flume::bounded(1);
        let inner = Arc::new(Inner {
            spec,
            settings,
            links,
            handler,
            stop_tx: Mutex::new(Some(stop_tx)),
            stop_rx,
            acceptor,
            connector,
            inbound: Mutex::new(HashMap::new()),
            refusals: AtomicU64::new(0),
            client_addresses: Mutex::new(BTreeMap::new()),
            kafka_addresses: Mutex::new(BTreeMap::new()),
            last_refusal: Mutex::new(None),
        });
        let (tx, rx) = flume::bounded::<Bound>(1);
        let on_shard = inner.clone();
        engine.run_on_shard(
            inner.settings.shard,
            Box::new(move |_| {
                let _ = tx.send(bind_and_run(on_shard));
            }),
        )?;
        let listen_addr = rx
            .recv()
            .map_err(|_| PeerError::Config("shard stopped while binding".into()))??;
        tracing::info!(
            node = inner.spec.node_id,
            cluster = %inner.spec.cluster_id,
            %listen_addr,
            peers = inner.links().len(),
            tls = inner.acceptor.is_some(),
            "peer transport listening"
        );
        Ok(PeerTransport { inner, listen_addr })
    }

    pub fn node_id(&self) -> u64 {
        self.inner.spec.node_id
    }

    /// The bound peer address.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen_addr
    }

    /// The other nodes' ids.
    pub fn peer_ids(&self) -> Vec<u64> {
        self.inner.links().keys().copied().collect()
    }

    /// Queues `message` of Raft group `group` for node `to`; it leaves at the next
    /// [`flush`](Self::flush). A full queue drops its oldest messages.
    pub fn send(&self, to: u64, group: u64, message: Bytes) -> Result<(), SendError> {
        let link = self
            .inner
            .links()
            .get(&to)
            .cloned()
            .ok_or(SendError::UnknownNode(to))?;
        let max = self.inner.settings.frame_bytes_max;
        let framed = FRAME_HEADER_BYTES + 4 + MESSAGE_OVERHEAD_BYTES + message.len();
        if framed > max as usize {
            return Err(SendError::TooLarge {
                bytes: message.len(),
                max,
            });
        }
        if self.inner.stopped() {
            return Err(SendError::Stopped);
        }
        let s = &self.inner.settings;
        let mut q = lock(&link.queue);
        q.bytes += message.len();
        q.pending.push_back((group, message));
        let mut dropped = 0;
        while (q.len() > s.queue_messages_max || q.bytes > s.queue_bytes_max) && q.drop_oldest() {
            dropped += 1;
        }
        drop(q);
        if dropped > 0 {
            link.messages_dropped.fetch_add(dropped, Ordering::AcqRel);
        }
        Ok(())
    }

    /// Hands every peer's queued messages to its link: one frame per peer.
    pub fn flush(&self) {
        for link in self.inner.links().values() {
            let mut q = lock(&link.queue);
            if q.pending.is_empty() {
                continue;
            }
            let pending = std::mem::take(&mut q.pending);
            q.ready.extend(pending);
            drop(q);
            let _ = link.doorbell_tx.try_send(());
        }
    }

    /// The counters of the link to `node`.
    pub fn link_stats(&self, node: u64) -> Option<LinkStats> {
        let l = self.inner.links().get(&node).cloned()?;
        Some(LinkStats {
            connected: l.connected.load(Ordering::Acquire),
            connects: l.connects.load(Ordering::Acquire),
            frames_sent: l.frames_sent.load(Ordering::Acquire),
            messages_sent: l.messages_sent.load(Ordering::Acquire),
            messages_dropped: l.messages_dropped.load(Ordering::Acquire),
            messages_queued: lock(&l.queue).len() as u64,
            frames_received: l.frames_received.load(Ordering::Acquire),
            messages_received: l.messages_received.load(Ordering::Acquire),
            last_error: lock(&l.last_error).clone(),
        })
    }

    /// Inbound connections refused so far (handshake or TLS failures), and the last reason.
    pub fn refusals(&self) -> (u64, Option<String>) {
        (
            self.inner.refusals.load(Ordering::Acquire),
            lock(&self.inner.last_refusal).clone(),
        )
    }

    /// Every node (the cluster list's and those added since) and its client address: this
    /// node's from the settings, the others' from their handshakes (empty until a handshake
    /// with that node succeeded).
    pub fn client_addresses(&self) -> Vec<(u64, String)> {
        let mut ids: Vec<u64> = self.inner.links().keys().copied().collect();
        ids.push(self.inner.spec.node_id);
        ids.sort_unstable();
        let known = lock(&self.inner.client_addresses);
        ids.into_iter()
            .map(|id| {
                let address = if id == self.inner.spec.node_id {
                    self.inner.settings.advertised_address.clone()
                } else {
                    known.get(&id).cloned().unwrap_or_default()
                };
                (id, address)
            })
            .collect()
    }

    /// Every node of the cluster list whose Kafka address is known: this node's from the
    /// settings, the others' from their handshakes (a node not handshaken yet, a version 2
    /// peer or one without a Kafka listener is absent).
    pub fn kafka_addresses(&self) -> Vec<(u64, String)> {
        let ids = self.node_ids();
        let known = lock(&self.inner.kafka_addresses);
        ids.into_iter()
            .filter_map(|id| {
                let address = if id == self.inner.spec.node_id {
                    self.inner.settings.kafka_address.clone()
                } else {
                    known.get(&id).cloned().unwrap_or_default()
                };
                (!address.is_empty()).then_some((id, address))
            })
            .collect()
    }

    /// The sorted node ids of the cluster (this node's included, and peers added at run time).
    pub fn node_ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.inner.links().keys().copied().collect();
        ids.push(self.inner.spec.node_id);
        ids.sort_unstable();
        ids
    }

    /// Adds node `node` at run time (membership, docs/replication.md): a link to it starts on
    /// the transport's shard of `engine`, and its Hello is accepted from now on. Refused for
    /// id 0, this node, a node already known, or an address another node has.
    pub fn add_peer(&self, engine: &Engine, node: PeerNode) -> Result<(), PeerError> {
        if self.inner.stopped() {
            return Err(PeerError::Config("the transport is stopped".into()));
        }
        let link = {
            let mut links = self
                .inner
                .links
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            let me = self.inner.spec.this_node();
            if node.id == 0 || node.id == me.id || links.contains_key(&node.id) {
                return Err(PeerError::Config(format!(
                    "node {} is this node, already a peer, or not a valid id",
                    node.id
                )));
            }
            if node.addr == me.addr || links.values().any(|l| l.node.addr == node.addr) {
                return Err(PeerError::Config(format!(
                    "node {}'s address is another node's",
                    node.id
                )));
            }
            let link = Arc::new(Link::new(node));
            links.insert(link.node.id, link.clone());
            link
        };
        let (id, inner) = (link.node.id, self.inner.clone());
        let spawned = engine.run_on_shard(
            self.inner.settings.shard,
            Box::new(move |_| {
                rt::spawn_local(dial_loop(link, inner));
            }),
        );
        if let Err(e) = spawned {
            self.remove_peer(id);
            return Err(e.into());
        }
        tracing::info!(node = self.inner.spec.node_id, peer = id, "peer added");
        Ok(())
    }

    /// Removes node `id` (membership): its link stops (queued messages are dropped), its
    /// inbound connection is closed, and its Hello is refused from now on. `false`: not a peer.
    pub fn remove_peer(&self, id: u64) -> bool {
        let link = self
            .inner
            .links
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
        let Some(link) = link else {
            return false;
        };
        link.removed.store(true, Ordering::Release);
        let _ = link.doorbell_tx.try_send(());
        // Dropping the sender ends the inbound connection's reader.
        lock(&self.inner.inbound).remove(&id);
        lock(&self.inner.client_addresses).remove(&id);
        tracing::info!(node = self.inner.spec.node_id, peer = id, "peer removed");
        true
    }

    /// Stops the listener and every link (their tasks end at their next wake-up). Queued
    /// messages are dropped.
    pub fn shutdown(&self) {
        lock(&self.inner.stop_tx).take();
        lock(&self.inner.inbound).clear();
    }
}

/// On the shard: binds, spawns the accept loop and the links.
fn bind_and_run(inner: Arc<Inner>) -> Bound {
    let at = inner.spec.this_node().addr;
    let listener = TcpListener::bind(at).map_err(|e| PeerError::Listen {
        addr: at,
        reason: e.to_string(),
    })?;
    let addr = listener.local_addr().map_err(|e| PeerError::Listen {
        addr: at,
        reason: e.to_string(),
    })?;
    rt::spawn_local(accept_loop(listener, inner.clone()));
    for link in inner.links().values() {
        rt::spawn_local(dial_loop(link.clone(), inner.clone()));
    }
    Ok(addr)
}

/// Resolves when the transport stops.
async fn stopped(inner: &Inner) {
    let _ = inner.stop_rx.recv_async().await;
}

async fn accept_loop(listener: TcpListener, inner: Arc<Inner>) {
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            stopped(&inner).await;
            None
        })
        .await;
        match accepted {
            None => return,
            Some(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                rt::spawn_local(inbound(stream, inner.clone()));
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "peer accept failed");
                rt::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Reads one frame: `Ok(None)` on a clean end of stream.
async fn read_frame(
    io: &mut BoxIo,
    buf: &mut BytesMut,
    chunk: &mut [u8],
    frame_bytes_max: u32,
) -> Result<Option<Frame>, String> {
    loop {
        if let Some(f) = frame::decode(buf, frame_bytes_max).map_err(|e| e.to_string())? {
            return Ok(Some(f));
        }
        let n = io.read(chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err("connection closed inside a frame".into())
            };
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn write_frame(io: &mut BoxIo, bytes: &[u8], timeout: Duration) -> Result<(), String> {
    let write = async {
        io.write_all(bytes).await?;
        io.flush().await
    };
    match rt::timeout(timeout, write).await {
        Some(r) => r.map_err(|e| e.to_string()),
        None => Err(format!("write timed out after {} ms", timeout.as_millis())),
    }
}

/// What the acceptor holds against a Hello, if anything.
/// `known`: whether the sender has a link here (it is in the cluster list, or was added).
fn check_hello(spec: &ClusterSpec, known: bool, h: &Hello) -> Option<(RefuseCode, String)> {
    if !(PEER_PROTOCOL_VERSION_MIN..=PEER_PROTOCOL_VERSION).contains(&h.version) {
        return Some((
            RefuseCode::Version,
            format!(
                "peer protocol version {} is not supported (node {} speaks \
                 {PEER_PROTOCOL_VERSION_MIN} to {PEER_PROTOCOL_VERSION})",
                h.version, spec.node_id
            ),
        ));
    }
    if h.cluster_id != spec.cluster_id {
        return Some((
            RefuseCode::ClusterId,
            format!(
                "cluster id '{}' does not match cluster '{}' of node {}",
                h.cluster_id, spec.cluster_id, spec.node_id
            ),
        ));
    }
    if h.node_id == spec.node_id || !known {
        return Some((
            RefuseCode::UnknownNode,
            format!(
                "node {} is not in the cluster list of node {}",
                h.node_id, spec.node_id
            ),
        ));
    }
    if h.to_node_id != spec.node_id {
        return Some((
            RefuseCode::WrongNode,
            format!(
                "node {} dialled node {} but reached node {}",
                h.node_id, h.to_node_id, spec.node_id
            ),
        ));
    }
    None
}

/// This node's handshake frame to node `to` in `version` (version 2 carries no Kafka address).
fn hello_of(inner: &Inner, to: u64, version: u16) -> Hello {
    Hello {
        version,
        node_id: inner.spec.node_id,
        to_node_id: to,
        cluster_id: inner.spec.cluster_id.clone(),
        client_address: inner.settings.advertised_address.clone(),
        kafka_address: if version >= 3 {
            inner.settings.kafka_address.clone()
        } else {
            String::new()
        },
    }
}

/// Serves one accepted connection: handshake, then frames to the handler until it closes.
async fn inbound(stream: TcpStream, inner: Arc<Inner>) {
    let from = stream.peer_addr().ok();
    let s = &inner.settings;
    let handshake = Duration::from_millis(s.handshake_timeout_ms);
    let mut io: BoxIo = match &inner.acceptor {
        None => Box::new(stream),
        Some((acceptor, timeout)) => {
            match crate::tls::establish(stream, Some(acceptor), *timeout).await {
                Ok((tls, _)) => Box::new(tls),
                Err(e) => return inner.refused(from, &format!("TLS handshake failed: {e}")),
            }
        }
    };
    let mut buf = BytesMut::new();
    let mut chunk = vec![0u8; 64 << 10];
    let first = rt::timeout(
        handshake,
        read_frame(&mut io, &mut buf, &mut chunk, s.frame_bytes_max),
    )
    .await;
    let hello = match first {
        Some(Ok(Some(Frame::Hello(h)))) => h,
        Some(Ok(None)) => return,
        Some(Ok(Some(_))) => return inner.refused(from, "the first frame is not a Hello"),
        Some(Err(e)) => return inner.refused(from, &format!("bad handshake frame: {e}")),
        None => return inner.refused(from, "no Hello within the handshake timeout"),
    };
    let mut out = BytesMut::new();
    let known = inner.links().contains_key(&hello.node_id);
    if let Some((code, reason)) = check_hello(&inner.spec, known, &hello) {
        inner.refused(from, &reason);
        frame::encode_refuse(&mut out, code, &reason);
        let _ = write_frame(&mut io, &out, handshake).await;
        return;
    }
    let peer = hello.node_id;
    inner.learned_address(peer, &hello);
    // Answered in the dialler's version (an older peer reads only what it knows).
    frame::encode_welcome(&mut out, &hello_of(&inner, peer, hello.version));
    if let Err(e) = write_frame(&mut io, &out, handshake).await {
        tracing::debug!(peer, error = %e, "peer handshake write failed");
        return;
    }
    let (cancel_tx, cancel_rx) = flume::bounded::<()>(1);
    lock(&inner.inbound).insert(peer, cancel_tx);
    let Some(link) = inner.links().get(&peer).cloned() else {
        return;
    };
    tracing::debug!(node = inner.spec.node_id, peer, "inbound peer connection");
    loop {
        let next = futures_lite::future::or(
            async { Some(read_frame(&mut io, &mut buf, &mut chunk, s.frame_bytes_max).await) },
            futures_lite::future::or(
                async {
                    stopped(&inner).await;
                    None
                },
                async {
                    let _ = cancel_rx.recv_async().await;
                    None
                },
            ),
        )
        .await;
        match next {
            None | Some(Ok(None)) => return,
            Some(Ok(Some(Frame::Messages(messages)))) => {
                link.frames_received.fetch_add(1, Ordering::AcqRel);
                link.messages_received
                    .fetch_add(messages.len() as u64, Ordering::AcqRel);
                (inner.handler)(peer, messages);
            }
            Some(Ok(Some(other))) => {
                tracing::warn!(peer, frame = ?other, "unexpected frame on a peer link; closing");
                return;
            }
            Some(Err(e)) => {
                tracing::warn!(peer, error = %e, "peer link broken; closing");
                return;
            }
        }
    }
}

/// Keeps the outbound connection to one peer up, and writes its flushed messages.
async fn dial_loop(link: Arc<Link>, inner: Arc<Inner>) {
    let s = &inner.settings;
    let mut backoff = Duration::from_millis(s.backoff_min_ms);
    let backoff_max = Duration::from_millis(s.backoff_max_ms.max(s.backoff_min_ms));
    loop {
        if inner.stopped() || link.removed.load(Ordering::Acquire) {
            return;
        }
        match connect(&link, &inner).await {
            Ok(io) => {
                link.connected.store(true, Ordering::Release);
                link.connects.fetch_add(1, Ordering::AcqRel);
                tracing::info!(
                    node = inner.spec.node_id,
                    peer = link.node.id,
                    "peer link up"
                );
                backoff = Duration::from_millis(s.backoff_min_ms);
                let r = write_loop(io, &link, &inner).await;
                link.connected.store(false, Ordering::Release);
                // The peer may come back upgraded: try the newest version first again.
                link.version.store(PEER_PROTOCOL_VERSION, Ordering::Release);
                match r {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::warn!(
                            node = inner.spec.node_id,
                            peer = link.node.id,
                            error = %e,
                            "peer link down; reconnecting"
                        );
                        link.fail(e);
                    }
                }
            }
            Err(e) => {
                if link.fail(e.clone()) {
                    tracing::warn!(
                        node = inner.spec.node_id,
                        peer = link.node.id,
                        addr = %link.node.addr,
                        error = %e,
                        "cannot reach peer; retrying with backoff"
                    );
                }
            }
        }
        let stop = futures_lite::future::or(
            async {
                rt::sleep(backoff).await;
                false
            },
            async {
                stopped(&inner).await;
                true
            },
        )
        .await;
        if stop {
            return;
        }
        backoff = (backoff * 2).min(backoff_max);
    }
}

/// Connects, does TLS when configured, and the Hello/Welcome exchange.
async fn connect(link: &Link, inner: &Inner) -> Result<BoxIo, String> {
    let s = &inner.settings;
    let node = &link.node;
    let tcp = match rt::timeout(
        Duration::from_millis(s.connect_timeout_ms),
        TcpStream::connect(node.addr),
    )
    .await
    {
        Some(Ok(t)) => t,
        Some(Err(e)) => return Err(format!("connect to node {}: {e}", node.id)),
        None => return Err(format!("connect to node {} timed out", node.id)),
    };
    let _ = tcp.set_nodelay(true);
    let handshake = Duration::from_millis(s.handshake_timeout_ms);
    let mut io: BoxIo = match &inner.connector {
        None => Box::new(tcp),
        Some((connector, client)) => {
            let name = client
                .server_name_for(&node.host_port)
                .map_err(|e| e.to_string())?;
            match rt::timeout(handshake, connector.connect(name, tcp)).await {
                Some(Ok(tls)) => Box::new(tls),
                Some(Err(e)) => {
                    return Err(format!("TLS handshake with node {} failed: {e}", node.id));
                }
                None => return Err(format!("TLS handshake with node {} timed out", node.id)),
            }
        }
    };
    let mut out = BytesMut::new();
    let version = link.version.load(Ordering::Acquire);
    frame::encode_hello(&mut out, &hello_of(inner, node.id, version));
    write_frame(&mut io, &out, handshake).await?;
    let mut buf = BytesMut::new();
    let mut chunk = vec![0u8; 4096];
    let reply = rt::timeout(
        handshake,
        read_frame(&mut io, &mut buf, &mut chunk, s.frame_bytes_max),
    )
    .await;
    let welcome = match reply {
        Some(Ok(Some(Frame::Welcome(h)))) => h,
        Some(Ok(Some(Frame::Refuse { code, reason }))) => {
            if code == RefuseCode::Version && version > PEER_PROTOCOL_VERSION_MIN {
                // A peer not upgraded yet: the next attempt speaks the oldest version.
                link.version
                    .store(PEER_PROTOCOL_VERSION_MIN, Ordering::Release);
            }
            tracing::error!(
                node = inner.spec.node_id,
                peer = node.id,
                ?code,
                reason,
                "peer refused this node"
            );
            return Err(format!("node {} refused the handshake: {reason}", node.id));
        }
        Some(Ok(Some(_))) => return Err(format!("node {} answered with no Welcome", node.id)),
        Some(Ok(None)) => return Err(format!("node {} closed during the handshake", node.id)),
        Some(Err(e)) => return Err(format!("handshake with node {}: {e}", node.id)),
        None => return Err(format!("handshake with node {} timed out", node.id)),
    };
    let expected = hello_of(inner, node.id, version);
    if welcome.version != expected.version
        || welcome.cluster_id != expected.cluster_id
        || welcome.node_id != node.id
        || welcome.to_node_id != inner.spec.node_id
    {
        let reason = format!(
            "the peer at node {}'s address is node {} of cluster '{}' (version {}); expected \
             node {} of cluster '{}'",
            node.id,
            welcome.node_id,
            welcome.cluster_id,
            welcome.version,
            node.id,
            expected.cluster_id
        );
        tracing::error!(
            node = inner.spec.node_id,
            peer = node.id,
            reason,
            "refusing peer"
        );
        return Err(reason);
    }
    inner.learned_address(node.id, &welcome);
    Ok(io)
}

enum Wake {
    Doorbell,
    Stop,
    Closed(String),
}

/// Writes flushed messages until the link fails (`Err`) or the transport stops (`Ok`).
async fn write_loop(mut io: BoxIo, link: &Link, inner: &Inner) -> Result<(), String> {
    let s = &inner.settings;
    let max = s.frame_bytes_max as usize;
    let timeout = Duration::from_millis(s.write_timeout_ms);
    let mut out = BytesMut::new();
    loop {
        let ready: Vec<(u64, Bytes)> = {
            let mut q = lock(&link.queue);
            let ready: Vec<_> = q.ready.drain(..).collect();
            q.bytes -= ready.iter().map(|(_, m)| m.len()).sum::<usize>();
            ready
        };
        if ready.is_empty() {
            // Idle: wait for a flush, the transport's stop, or the peer closing the connection
            // (the acceptor never writes after its Welcome, so a readable socket means closed).
            let mut probe = [0u8; 1];
            let wake = futures_lite::future::or(
                async {
                    let _ = link.doorbell_rx.recv_async().await;
                    Wake::Doorbell
                },
                futures_lite::future::or(
                    async {
                        stopped(inner).await;
                        Wake::Stop
                    },
                    async {
                        Wake::Closed(match io.read(&mut probe).await {
                            Ok(0) => "the peer closed the connection".to_string(),
                            Ok(_) => "unexpected bytes from the peer".to_string(),
                            Err(e) => e.to_string(),
                        })
                    },
                ),
            )
            .await;
            match wake {
                Wake::Doorbell if link.removed.load(Ordering::Acquire) => return Ok(()),
                Wake::Doorbell => continue,
                Wake::Stop => return Ok(()),
                Wake::Closed(reason) => return Err(reason),
            }
        }
        // As few frames as the limit allows: one, unless the round's messages exceed it.
        out.clear();
        let (mut frames, mut start, mut size) = (0u64, 0usize, FRAME_HEADER_BYTES + 4);
        for (i, (_, m)) in ready.iter().enumerate() {
            let add = MESSAGE_OVERHEAD_BYTES + m.len();
            if i > start && size + add > max {
                frame::encode_messages(&mut out, &ready[start..i]);
                frames += 1;
                (start, size) = (i, FRAME_HEADER_BYTES + 4);
            }
            size += add;
        }
        frame::encode_messages(&mut out, &ready[start..]);
        frames += 1;
        write_frame(&mut io, &out, timeout).await?;
        link.frames_sent.fetch_add(frames, Ordering::AcqRel);
        link.messages_sent
            .fetch_add(ready.len() as u64, Ordering::AcqRel);
    }
}
