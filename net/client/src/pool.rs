//! [`Client`]: a bootstrap connection, a metadata cache and one connection per shard.
//!
//! Routing (docs/protocol.md, "Connection" and "2 Metadata"): Metadata tells which shard owns
//! each partition and the address of that shard's own listener. Requests about a partition go
//! straight to its owner over a connection opened lazily on first use; administration goes over
//! the bootstrap connection. When a shard's address cannot be reached the request falls back to
//! the bootstrap connection (every listener accepts every request and forwards it) and the shard
//! is not tried again for [`SHARD_RETRY_AFTER`]. Cached routes are dropped when the server
//! answers `UNKNOWN_TOPIC`/`UNKNOWN_PARTITION`; failed connections are replaced on next use.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use crate::conn::block_on;
use bytes::Bytes;
use tracing::{debug, warn};

use super::ClientConfig;
use super::conn::Connection;
use super::error::ClientError;
use crate::protocol::{
    Acks, CreateTopicRequest, DeleteTopicRequest, DescribeTopicRequest, DescribeTopicResponse,
    FetchPartition, FetchPartitionResult, FetchRequest, FetchTopic, ListOffsetsPartition,
    ListOffsetsRequest, ListOffsetsTopic, ListTopicsRequest, MetadataRequest, MetadataResponse,
    OffsetSpec, PingRequest, ProducePartition, ProduceRequest, ProduceTopic, ReadIsolation,
    Request, Response, StatsRequest, StatsResponse, TopicConfig, TopicInfo, code,
};

/// How long a shard whose own address could not be reached is served through the bootstrap
/// connection before its address is tried again.
pub const SHARD_RETRY_AFTER: Duration = Duration::from_secs(5);

/// Where a topic's partitions live, from Metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRoute {
    pub name: String,
    pub topic_id: u64,
    /// `partition_shards[p]` is the shard that owns partition `p`.
    pub partition_shards: Vec<u32>,
}

impl TopicRoute {
    pub fn partitions(&self) -> u32 {
        u32::try_from(self.partition_shards.len()).unwrap_or(u32::MAX)
    }
}

/// Offsets the server assigned to a produced batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProduceAck {
    pub base_offset: u64,
    pub last_offset: u64,
}

/// A connection to a Shardline server (all its shards). Cheap to clone; every clone shares the
/// connections. Every call has a blocking form and an `_async` form whose future is `Send` and
/// needs no particular runtime (replies arrive over flume channels, deadlines are kept by the
/// connection's timer thread). Blocking forms must not be called from inside an async task.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    addr: String,
    config: ClientConfig,
    bootstrap: Mutex<Option<Arc<Connection>>>,
    shards: Mutex<HashMap<u32, ShardSlot>>,
    metadata: Mutex<Metadata>,
    /// Where each partition's leader is, when the server is a cluster (cluster.rs).
    cluster: Mutex<super::cluster::ClusterRoutes>,
    /// A client of one node that a cluster-aware client made: it never routes to other nodes.
    node_only: bool,
}

#[derive(Debug)]
enum ShardSlot {
    Open(Arc<Connection>),
    Unreachable { retry_at: Instant },
}

#[derive(Debug, Default)]
struct Metadata {
    shard_addrs: HashMap<u32, String>,
    topics: HashMap<String, Arc<TopicRoute>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Opens a connection on a short-lived thread, so that async callers never block their
/// executor on `connect` and the Handshake.
async fn open_connection(
    addr: String,
    config: ClientConfig,
) -> Result<Arc<Connection>, ClientError> {
    let (tx, rx) = flume::bounded(1);
    let error_addr = addr.clone();
    thread::Builder::new()
        .name("shardline-client-connect".into())
        .spawn(move || {
            let _ = tx.send(Connection::open(&addr, &config).map(Arc::new));
        })
        .map_err(|e| ClientError::Connect {
            addr: error_addr.clone(),
            reason: format!("cannot spawn a thread: {e}"),
        })?;
    rx.recv_async().await.map_err(|_| ClientError::Connect {
        addr: error_addr,
        reason: "connect thread ended without an answer".into(),
    })?
}

/// Takes the api's own response out of `response`, or says what came instead.
macro_rules! expect_response {
    ($response:expr, $variant:ident) => {
        match $response {
            $crate::protocol::Response::$variant(r) => Ok(r),
            other => Err(ClientError::UnexpectedResponse {
                api: stringify!($variant),
                got: other.api_key().name(),
            }),
        }
    };
}
pub(crate) use expect_response;

/// A per-partition result as a `Result`.
pub(crate) fn partition_result(
    api: &'static str,
    error_code: u16,
    message: Option<String>,
) -> Result<(), ClientError> {
    if error_code == code::NONE {
        return Ok(());
    }
    Err(ClientError::server(
        api,
        error_code,
        message.unwrap_or_default(),
    ))
}

/// A shard address as reachable from here: a server listening on `0.0.0.0` reports that
/// address; the client then uses the bootstrap connection's peer IP with the shard's port.
fn reachable_address(address: &str, bootstrap_peer: SocketAddr) -> String {
    match address.parse::<SocketAddr>() {
        Ok(a) if a.ip().is_unspecified() => {
            SocketAddr::new(bootstrap_peer.ip(), a.port()).to_string()
        }
        _ => address.to_string(),
    }
}

impl Client {
    /// Connects to the server at `addr` (`host:port`) and does the Handshake. Blocking.
    pub fn connect(addr: &str, config: ClientConfig) -> Result<Client, ClientError> {
        block_on(Self::connect_async(addr, config))
    }

    /// `addr` may list several servers of one cluster, `host:port,host:port`: the first that
    /// answers is the bootstrap; the others (and every node the cluster names) are where the
    /// client goes when it fails.
    pub async fn connect_async(addr: &str, config: ClientConfig) -> Result<Client, ClientError> {
        Self::connect_inner(addr, config, false).await
    }

    pub(crate) async fn connect_inner(
        addr: &str,
        config: ClientConfig,
        node_only: bool,
    ) -> Result<Client, ClientError> {
        let seeds = super::cluster::seeds(addr);
        let mut last = None;
        for seed in &seeds {
            match open_connection(seed.clone(), config.clone()).await {
                Ok(bootstrap) => {
                    return Ok(Client {
                        inner: Arc::new(Inner {
                            addr: addr.to_string(),
                            config,
                            bootstrap: Mutex::new(Some(bootstrap)),
                            shards: Mutex::new(HashMap::new()),
                            metadata: Mutex::new(Metadata::default()),
                            cluster: Mutex::new(super::cluster::ClusterRoutes::new(
                                seeds.clone(),
                                seed,
                            )),
                            node_only,
                        }),
                    });
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| ClientError::InvalidArgument("no server address".into())))
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The address the client was given.
    pub fn addr(&self) -> &str {
        &self.inner.addr
    }

    /// The server's name and version from the bootstrap connection's Handshake.
    pub fn server_id(&self) -> Option<String> {
        lock(&self.inner.bootstrap)
            .as_ref()
            .map(|c| c.server_id().to_string())
    }

    /// The bootstrap connection, reopened if it failed: to the same server first, then (a
    /// cluster) to the other addresses given and the other nodes the cluster named.
    pub(crate) async fn bootstrap(&self) -> Result<Arc<Connection>, ClientError> {
        if let Some(c) = lock(&self.inner.bootstrap).as_ref()
            && !c.is_closed()
        {
            return Ok(Arc::clone(c));
        }
        let candidates = lock(&self.inner.cluster).bootstrap_candidates(self.inner.node_only);
        let mut last = None;
        for (i, address) in candidates.iter().enumerate() {
            match open_connection(address.clone(), self.inner.config.clone()).await {
                Ok(c) => {
                    if i > 0 {
                        // Another server: its shards and routes are not the old one's.
                        debug!(%address, "bootstrap moved to another server");
                        lock(&self.inner.shards).clear();
                        *lock(&self.inner.metadata) = Metadata::default();
                        lock(&self.inner.cluster).moved_to(address);
                    }
                    *lock(&self.inner.bootstrap) = Some(Arc::clone(&c));
                    return Ok(c);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| ClientError::InvalidArgument("no server address".into())))
    }

    /// The connection that reaches the owner of `topic`/`partition` directly (or the bootstrap
    /// connection: shard-aware routing off, shard unreachable).
    pub(crate) async fn connection_for(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<Arc<Connection>, ClientError> {
        let mut route = self.route_async(topic).await?;
        if partition >= route.partitions() {
            // Maybe the cached route is older than the topic: look once more.
            self.invalidate(topic);
            route = self.route_async(topic).await?;
        }
        let Some(&shard) = route.partition_shards.get(partition as usize) else {
            return Err(ClientError::InvalidArgument(format!(
                "partition {partition} of topic '{topic}' does not exist ({} partitions)",
                route.partitions()
            )));
        };
        if !self.inner.node_only {
            match self.leader_connection(topic, partition).await {
                Ok(Some(c)) => return Ok(c),
                Ok(None) => {}
                Err(e) => {
                    // The leader's node is unreachable: ask where the leader is next time.
                    lock(&self.inner.cluster).forget_topic(topic);
                    return Err(e);
                }
            }
        }
        if !self.inner.config.shard_aware {
            return self.bootstrap().await;
        }
        self.shard_connection(shard).await
    }

    async fn shard_connection(&self, shard: u32) -> Result<Arc<Connection>, ClientError> {
        // Decide under the lock, await after it (a guard held across `.await` is not `Send`).
        let cached = match lock(&self.inner.shards).get(&shard) {
            Some(ShardSlot::Open(c)) if !c.is_closed() => Some(Some(Arc::clone(c))),
            Some(ShardSlot::Unreachable { retry_at }) if Instant::now() < *retry_at => Some(None),
            _ => None,
        };
        match cached {
            Some(Some(c)) => return Ok(c),
            Some(None) => return self.bootstrap().await,
            None => {}
        }
        let bootstrap = self.bootstrap().await?;
        if bootstrap.shard() == shard && bootstrap.shard_count() > 0 {
            // The shared listener handed the bootstrap connection to the owner already.
            return Ok(bootstrap);
        }
        let address = lock(&self.inner.metadata).shard_addrs.get(&shard).cloned();
        let Some(address) = address else {
            return Ok(bootstrap);
        };
        let address = reachable_address(&address, bootstrap.peer());
        match open_connection(address.clone(), self.inner.config.clone()).await {
            Ok(c) => {
                if c.shard() != shard {
                    warn!(
                        shard,
                        %address,
                        accepted_by = c.shard(),
                        "shard address answered for another shard (requests are forwarded)"
                    );
                }
                let mut shards = lock(&self.inner.shards);
                // Another caller may have connected meanwhile: keep one connection.
                if let Some(ShardSlot::Open(existing)) = shards.get(&shard)
                    && !existing.is_closed()
                {
                    return Ok(Arc::clone(existing));
                }
                shards.insert(shard, ShardSlot::Open(Arc::clone(&c)));
                Ok(c)
            }
            Err(e) => {
                warn!(shard, %address, error = %e, "shard unreachable; using the bootstrap connection");
                let retry_at = Instant::now() + SHARD_RETRY_AFTER;
                lock(&self.inner.shards).insert(shard, ShardSlot::Unreachable { retry_at });
                Ok(bootstrap)
            }
        }
    }

    /// Where `topic`'s partitions live (cached; Metadata on a miss). Fails with
    /// `UNKNOWN_TOPIC` when the topic does not exist.
    pub fn route(&self, topic: &str) -> Result<Arc<TopicRoute>, ClientError> {
        block_on(self.route_async(topic))
    }

    pub async fn route_async(&self, topic: &str) -> Result<Arc<TopicRoute>, ClientError> {
        if let Some(r) = lock(&self.inner.metadata).topics.get(topic) {
            return Ok(Arc::clone(r));
        }
        let m = self.metadata_async(&[topic]).await?;
        let t = m.topics.into_iter().find(|t| t.name == topic).ok_or(
            ClientError::UnexpectedResponse {
                api: "Metadata",
                got: "Metadata without the topic asked for",
            },
        )?;
        if t.error_code != code::NONE {
            return Err(ClientError::server(
                "Metadata",
                t.error_code,
                format!("topic '{topic}'"),
            ));
        }
        let route = Arc::new(TopicRoute {
            name: t.name,
            topic_id: t.topic_id,
            partition_shards: t.partition_shards,
        });
        lock(&self.inner.metadata)
            .topics
            .insert(topic.to_string(), Arc::clone(&route));
        Ok(route)
    }

    /// Number of partitions of `topic`.
    pub fn partitions(&self, topic: &str) -> Result<u32, ClientError> {
        Ok(self.route(topic)?.partitions())
    }

    /// Forgets the cached route of `topic` (the next request looks it up again), and where
    /// its partitions' leaders are.
    pub fn invalidate(&self, topic: &str) {
        lock(&self.inner.metadata).topics.remove(topic);
        lock(&self.inner.cluster).forget_topic(topic);
    }

    pub(crate) async fn call_bootstrap(&self, request: Request) -> Result<Response, ClientError> {
        let c = self.bootstrap().await?;
        let r = c.call(&request, self.inner.config.request_timeout).await;
        if matches!(r, Err(ClientError::Timeout { .. })) && !self.inner.node_only {
            // A cluster node that stopped answering (paused, cut off): the next call opens the
            // bootstrap again, on another node if this one does not answer the Handshake.
            let mut b = lock(&self.inner.bootstrap);
            if b.as_ref().is_some_and(|b| Arc::ptr_eq(b, &c))
                && lock(&self.inner.cluster).is_multi_node()
            {
                *b = None;
            }
        }
        r
    }

    /// Round trip to the server over the bootstrap connection.
    pub fn ping(&self) -> Result<Duration, ClientError> {
        block_on(self.ping_async())
    }

    pub async fn ping_async(&self) -> Result<Duration, ClientError> {
        let start = Instant::now();
        // The send time, as the protocol suggests: a reply to an older ping cannot match.
        let nonce = shardline_format::now_us().cast_unsigned();
        let r = self
            .call_bootstrap(Request::Ping(PingRequest { nonce }))
            .await?;
        let pong = expect_response!(r, Ping)?;
        if pong.nonce != nonce {
            return Err(ClientError::UnexpectedResponse {
                api: "Ping",
                got: "Ping with another nonce",
            });
        }
        Ok(start.elapsed())
    }

    /// Metadata of `topics` (all topics when empty); refreshes the shard addresses.
    pub fn metadata(&self, topics: &[&str]) -> Result<MetadataResponse, ClientError> {
        block_on(self.metadata_async(topics))
    }

    pub async fn metadata_async(&self, topics: &[&str]) -> Result<MetadataResponse, ClientError> {
        let request = Request::Metadata(MetadataRequest {
            topics: topics.iter().map(|t| (*t).to_string()).collect(),
        });
        let m = expect_response!(self.call_bootstrap(request).await?, Metadata)?;
        let mut cache = lock(&self.inner.metadata);
        for s in &m.shards {
            cache.shard_addrs.insert(s.shard, s.address.clone());
        }
        drop(cache);
        debug!(shards = m.shards.len(), topics = m.topics.len(), "metadata");
        Ok(m)
    }

    /// Creates a topic. `config.partitions` must be at least 1; `None` settings take the
    /// server's defaults.
    pub fn create_topic(&self, name: &str, config: TopicConfig) -> Result<TopicInfo, ClientError> {
        block_on(self.create_topic_async(name, config))
    }

    pub async fn create_topic_async(
        &self,
        name: &str,
        config: TopicConfig,
    ) -> Result<TopicInfo, ClientError> {
        let request = Request::CreateTopic(CreateTopicRequest {
            name: name.to_string(),
            config,
        });
        self.invalidate(name);
        let r = expect_response!(self.call_bootstrap(request).await?, CreateTopic)?;
        Ok(r.topic)
    }

    pub fn delete_topic(&self, name: &str) -> Result<(), ClientError> {
        block_on(self.delete_topic_async(name))
    }

    pub async fn delete_topic_async(&self, name: &str) -> Result<(), ClientError> {
        let request = Request::DeleteTopic(DeleteTopicRequest {
            name: name.to_string(),
        });
        self.invalidate(name);
        expect_response!(self.call_bootstrap(request).await?, DeleteTopic)?;
        Ok(())
    }

    pub fn list_topics(&self) -> Result<Vec<TopicInfo>, ClientError> {
        block_on(self.list_topics_async())
    }

    pub async fn list_topics_async(&self) -> Result<Vec<TopicInfo>, ClientError> {
        let request = Request::ListTopics(ListTopicsRequest {});
        Ok(expect_response!(self.call_bootstrap(request).await?, ListTopics)?.topics)
    }

    pub fn describe_topic(&self, name: &str) -> Result<DescribeTopicResponse, ClientError> {
        block_on(self.describe_topic_async(name))
    }

    pub async fn describe_topic_async(
        &self,
        name: &str,
    ) -> Result<DescribeTopicResponse, ClientError> {
        let request = Request::DescribeTopic(DescribeTopicRequest {
            name: name.to_string(),
        });
        expect_response!(self.call_bootstrap(request).await?, DescribeTopic)
    }

    /// The offset `spec` resolves to in one partition (`Latest` = the high watermark).
    pub fn list_offsets(
        &self,
        topic: &str,
        partition: u32,
        spec: OffsetSpec,
    ) -> Result<u64, ClientError> {
        block_on(self.list_offsets_async(topic, partition, spec))
    }

    pub async fn list_offsets_async(
        &self,
        topic: &str,
        partition: u32,
        spec: OffsetSpec,
    ) -> Result<u64, ClientError> {
        let request = Request::ListOffsets(ListOffsetsRequest {
            topics: vec![ListOffsetsTopic {
                name: topic.to_string(),
                partitions: vec![ListOffsetsPartition { partition, spec }],
            }],
        });
        let c = self.connection_for(topic, partition).await?;
        let r = c.call(&request, self.inner.config.request_timeout).await;
        let r = expect_response!(self.note_stale(topic, r)?, ListOffsets)?;
        let p = r
            .topics
            .into_iter()
            .flat_map(|t| t.partitions)
            .find(|p| p.partition == partition)
            .ok_or(ClientError::UnexpectedResponse {
                api: "ListOffsets",
                got: "ListOffsets without the partition asked for",
            })?;
        let offset = p.offset;
        self.note_stale(
            topic,
            partition_result("ListOffsets", p.error_code, p.error_message),
        )?;
        Ok(offset)
    }

    pub fn stats(&self) -> Result<StatsResponse, ClientError> {
        block_on(self.stats_async())
    }

    pub async fn stats_async(&self) -> Result<StatsResponse, ClientError> {
        let request = Request::Stats(StatsRequest {});
        expect_response!(self.call_bootstrap(request).await?, Stats)
    }

    /// Appends one record batch (built with `shardline_format::BatchBuilder`) to a partition,
    /// sent straight to its shard. `None` with `acks = none` (no answer comes). The
    /// [`super::Producer`] batches, partitions and retries on top of this.
    pub fn produce(
        &self,
        topic: &str,
        partition: u32,
        batch: Bytes,
        acks: Acks,
    ) -> Result<Option<ProduceAck>, ClientError> {
        block_on(self.produce_async(topic, partition, batch, acks))
    }

    pub async fn produce_async(
        &self,
        topic: &str,
        partition: u32,
        batch: Bytes,
        acks: Acks,
    ) -> Result<Option<ProduceAck>, ClientError> {
        let timeout = self.inner.config.request_timeout;
        let request = Request::Produce(ProduceRequest {
            acks,
            timeout_ms: u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX),
            topics: vec![ProduceTopic {
                name: topic.to_string(),
                partitions: vec![ProducePartition { partition, batch }],
            }],
        });
        let c = self.connection_for(topic, partition).await?;
        if acks == Acks::None {
            c.send_oneway(&request)?;
            return Ok(None);
        }
        let r = c.call(&request, timeout).await;
        let r = expect_response!(self.note_stale(topic, r)?, Produce)?;
        let p = r
            .topics
            .into_iter()
            .flat_map(|t| t.partitions)
            .find(|p| p.partition == partition)
            .ok_or(ClientError::UnexpectedResponse {
                api: "Produce",
                got: "Produce without the partition sent",
            })?;
        let ack = ProduceAck {
            base_offset: p.base_offset,
            last_offset: p.last_offset,
        };
        self.note_stale(
            topic,
            partition_result("Produce", p.error_code, p.error_message),
        )?;
        Ok(Some(ack))
    }

    /// Reads batches of one partition from `offset`, waiting up to `max_wait` for data when
    /// there is none yet (long poll). The chunks are whole batches: the first may start before
    /// `offset` ([`super::Consumer::fetch`] decodes and skips those records).
    pub fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_wait: Duration,
        max_bytes: u32,
    ) -> Result<FetchPartitionResult, ClientError> {
        block_on(self.fetch_async(topic, partition, offset, max_wait, max_bytes))
    }

    pub async fn fetch_async(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_wait: Duration,
        max_bytes: u32,
    ) -> Result<FetchPartitionResult, ClientError> {
        let isolation = ReadIsolation::Appended;
        self.fetch_isolated_async(topic, partition, offset, max_wait, max_bytes, isolation)
            .await
    }

    /// [`Client::fetch_async`] seeing what `isolation` lets it see (docs/semantics.md, "What
    /// readers see"). `Durable` needs a server that speaks Fetch version 1.
    pub async fn fetch_isolated_async(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_wait: Duration,
        max_bytes: u32,
        isolation: ReadIsolation,
    ) -> Result<FetchPartitionResult, ClientError> {
        let request = Request::Fetch(FetchRequest {
            max_wait_ms: u32::try_from(max_wait.as_millis()).unwrap_or(u32::MAX),
            max_bytes,
            topics: vec![FetchTopic {
                name: topic.to_string(),
                partitions: vec![FetchPartition {
                    partition,
                    offset,
                    max_bytes,
                    max_records: 0,
                }],
            }],
            isolation,
        });
        let c = self.connection_for(topic, partition).await?;
        check_isolation(&c, isolation)?;
        // The server may hold a long poll for `max_wait` before it answers.
        let timeout = self.inner.config.request_timeout + max_wait;
        let r = c.call(&request, timeout).await;
        let r = expect_response!(self.note_stale(topic, r)?, Fetch)?;
        let p = r
            .topics
            .into_iter()
            .flat_map(|t| t.partitions)
            .find(|p| p.partition == partition)
            .ok_or(ClientError::UnexpectedResponse {
                api: "Fetch",
                got: "Fetch without the partition asked for",
            })?;
        self.note_stale(
            topic,
            partition_result("Fetch", p.error_code, p.error_message.clone()),
        )?;
        Ok(p)
    }

    /// Drops `topic`'s cached route when `result` says it is stale.
    pub(crate) fn note_stale<T>(
        &self,
        topic: &str,
        result: Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        if let Err(e) = &result {
            if e.is_stale_metadata() {
                self.invalidate(topic);
            } else if super::cluster::leader_may_have_moved(e) {
                lock(&self.inner.cluster).forget_topic(topic);
            }
        }
        result
    }

    pub(crate) fn cluster_routes(&self) -> MutexGuard<'_, super::cluster::ClusterRoutes> {
        lock(&self.inner.cluster)
    }

    pub(crate) fn is_node_only(&self) -> bool {
        self.inner.node_only
    }
}

/// Refuses a durable-only read on a connection to a server that would read it as `Appended`
/// (one before Fetch/Subscribe version 1): better an error than a silent downgrade.
pub(crate) fn check_isolation(c: &Connection, isolation: ReadIsolation) -> Result<(), ClientError> {
    if isolation == ReadIsolation::Durable && !c.supports_read_isolation() {
        return Err(ClientError::InvalidArgument(
            "the server does not support durable-only reads (Fetch/Subscribe version 1)".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_shard_addresses_take_the_bootstrap_host() {
        let peer: SocketAddr = "10.1.2.3:7070".parse().unwrap();
        assert_eq!(reachable_address("0.0.0.0:7071", peer), "10.1.2.3:7071");
        assert_eq!(reachable_address("[::]:7071", peer), "10.1.2.3:7071");
        assert_eq!(reachable_address("10.9.9.9:7071", peer), "10.9.9.9:7071");
        assert_eq!(reachable_address("broker-1:7071", peer), "broker-1:7071");
    }
}
