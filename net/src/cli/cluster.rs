//! `shardline serve`'s cluster flags and start-up (docs/operations.md, "A three-node cluster";
//! docs/replication.md, "Node-to-node transport"): `--node-id`, `--cluster`, `--cluster-id` and
//! the peer TLS files override the config file's `[cluster]` table; at start the data
//! directory's cluster stamp is checked (or written), the list is resolved once, and the
//! node-to-node transport starts on shard 0.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, anyhow};
use clap::Args;
use shardline_server::peer::config::parse_cluster_list;
use shardline_server::peer::{
    ClusterConfig, ClusterSpec, InboundHandler, PeerSettings, PeerTlsConfig, PeerTransport, stamp,
};

/// The cluster flags of `shardline serve`.
#[derive(Debug, Clone, Default, Args)]
pub struct ClusterArgs {
    /// This node's id in the cluster list (cluster.node_id)
    #[arg(long, value_name = "N")]
    pub node_id: Option<u64>,
    /// Every node's node-to-node address, this one included: 1@HOST:PORT,2@HOST:PORT,...
    /// (cluster.nodes); this node listens for peers on its own entry
    #[arg(long, value_name = "ID@HOST:PORT,...")]
    pub cluster: Option<String>,
    /// Names the cluster; nodes of another cluster are refused (cluster.cluster_id)
    /// [default: shardline]
    #[arg(long, value_name = "NAME")]
    pub cluster_id: Option<String>,
    /// Mutual TLS between nodes: this node's certificate chain, PEM (cluster.tls.cert)
    #[arg(long, value_name = "FILE", requires_all = ["peer_tls_key", "peer_tls_ca"])]
    pub peer_tls_cert: Option<PathBuf>,
    /// Address clients use for this node's client listener when it differs from --listen
    /// (cluster.advertised_address); told to the other nodes and to clients
    #[arg(long, value_name = "HOST:PORT")]
    pub advertise: Option<String>,
    /// Join a running cluster as a new node: its initial nodes (the controller's voters),
    /// 1@HOST:PORT,2@HOST:PORT,...; this node's own entry is --node-id@--peer-listen; a member
    /// then adds it with `shardline cluster add-node ID@HOST:PORT` (cluster.join)
    #[arg(long, value_name = "ID@HOST:PORT,...", conflicts_with = "cluster",
          requires_all = ["node_id", "peer_listen"])]
    pub join: Option<String>,
    /// With --join: this node's node-to-node address, HOST:PORT
    #[arg(long, value_name = "HOST:PORT", requires = "join")]
    pub peer_listen: Option<String>,
    /// Private key of --peer-tls-cert (cluster.tls.key)
    #[arg(long, value_name = "FILE", requires_all = ["peer_tls_cert", "peer_tls_ca"])]
    pub peer_tls_key: Option<PathBuf>,
    /// CA that signs every node's certificate (cluster.tls.ca)
    #[arg(long, value_name = "FILE", requires_all = ["peer_tls_cert", "peer_tls_key"])]
    pub peer_tls_ca: Option<PathBuf>,
}

impl ClusterArgs {
    fn any(&self) -> bool {
        self.node_id.is_some()
            || self.cluster.is_some()
            || self.cluster_id.is_some()
            || self.peer_tls_cert.is_some()
            || self.advertise.is_some()
            || self.join.is_some()
    }

    /// Applies the flags over the file's `[cluster]` table (creating it when a flag is given).
    pub fn apply(&self, cluster: &mut Option<ClusterConfig>) {
        if !self.any() {
            return;
        }
        let c = cluster.get_or_insert_with(ClusterConfig::default);
        if let Some(list) = &self.cluster {
            c.nodes = parse_cluster_list(list);
        }
        if let Some(id) = self.node_id {
            c.node_id = id;
        }
        if let (Some(list), Some(at)) = (&self.join, &self.peer_listen) {
            c.nodes = parse_cluster_list(list);
            c.nodes.push(format!("{}@{at}", c.node_id));
            c.join = true;
        }
        if let Some(id) = &self.cluster_id {
            c.cluster_id.clone_from(id);
        }
        if let Some(a) = &self.advertise {
            c.advertised_address.clone_from(a);
        }
        if let (Some(cert), Some(key), Some(ca)) =
            (&self.peer_tls_cert, &self.peer_tls_key, &self.peer_tls_ca)
        {
            c.tls = Some(PeerTlsConfig {
                cert: cert.clone(),
                key: key.clone(),
                ca: ca.clone(),
            });
        }
    }
}

/// Before the engine opens: a cluster start checks (or writes) the data directory's stamp; a
/// single-node start refuses a directory stamped by a cluster.
pub fn check_data_dir(data_dir: &Path, cluster: Option<&ClusterConfig>) -> anyhow::Result<()> {
    match cluster {
        Some(c) => stamp::check_or_stamp(data_dir, &c.cluster_id, c.node_id)?,
        None => stamp::check_single_node(data_dir)?,
    }
    Ok(())
}

/// Resolves the cluster list (host names once, now), before anything opens.
pub fn resolve(cluster: Option<&ClusterConfig>) -> anyhow::Result<Option<ClusterSpec>> {
    let Some(cluster) = cluster else {
        return Ok(None);
    };
    let spec = cluster
        .resolve()
        .map_err(|e| anyhow!("invalid configuration: cluster: {e}"))?;
    // A list of one node is a cluster of one (nodes are added later): it listens for peers
    // and has no links yet.
    Ok(Some(spec))
}

/// Starts the transport on `engine`'s shard 0. Until the replication layer registers its own
/// handler, inbound messages are dropped (traced).
pub fn start_transport(
    engine: &shardline_engine::Engine,
    spec: ClusterSpec,
) -> anyhow::Result<PeerTransport> {
    let handler: InboundHandler = Arc::new(|from, messages: Vec<_>| {
        tracing::trace!(
            from,
            messages = messages.len(),
            "peer frame (no consumer yet)"
        );
    });
    PeerTransport::start(engine, spec, PeerSettings::default(), handler)
        .context("cannot start the node-to-node transport")
}

/// The address this node tells clients (and, in a cluster, the other nodes): the configured
/// `advertised_address`, else the bound client listener.
pub fn advertised_address(cluster: Option<&ClusterConfig>, bound: std::net::SocketAddr) -> String {
    match cluster.map(|c| c.advertised_address.as_str()) {
        Some(a) if !a.is_empty() => a.to_string(),
        _ => bound.to_string(),
    }
}

/// `topic describe NAME --json`: DESIGN.md's "Cluster and Kafka contracts" shape, one object
/// on one line: `{"name", "topic_id", "replicas", "node_id", "partitions": [{"partition",
/// "leader", "replicas", "in_sync", "epoch", "high_watermark", "log_start", "durable_offset",
/// "shard", "size_bytes"}]}`.
pub fn describe_json(
    client: &shardline_client::Client,
    name: &str,
    out: &mut impl std::io::Write,
) -> Result<(), shardline_client::ClientError> {
    let d = client.describe_topic(name)?;
    let r = client.describe_replicas(name)?;
    let partitions: Vec<serde_json::Value> = r
        .partitions
        .iter()
        .map(|rp| {
            let p = d.partitions.iter().find(|p| p.partition == rp.partition);
            serde_json::json!({
                "partition": rp.partition,
                "leader": rp.leader,
                "replicas": rp.replicas,
                "in_sync": rp.in_sync,
                "epoch": rp.epoch,
                "high_watermark": rp.high_watermark,
                "log_start": p.map(|p| p.log_start),
                "durable_offset": p.map(|p| p.durable_offset),
                "shard": p.map(|p| p.shard),
                "size_bytes": p.map(|p| p.size_bytes),
            })
        })
        .collect();
    let doc = serde_json::json!({
        "name": d.topic.name,
        "topic_id": d.topic.topic_id,
        "replicas": r.replicas,
        "node_id": r.node_id,
        "partitions": partitions,
    });
    writeln!(out, "{doc}")
        .map_err(|e| shardline_client::ClientError::InvalidArgument(e.to_string()))
}

/// A cluster start, after the server is up: the node-to-node transport (its inbound frames go
/// to the engine's replicas), the engine's replication over it, and the server told both (so
/// that CreateTopic goes through the controller and DescribeCluster answers every node).
pub fn start_cluster(
    server: &shardline_server::Server,
    spec: ClusterSpec,
    advertised: &str,
) -> anyhow::Result<PeerTransport> {
    start_cluster_as(server, spec, advertised, false)
}

/// [`start_cluster`]; `joining`: this node is not one of the initial nodes (`--join`): the
/// other nodes of `spec` are the controller's voters.
pub fn start_cluster_as(
    server: &shardline_server::Server,
    spec: ClusterSpec,
    advertised: &str,
    joining: bool,
) -> anyhow::Result<PeerTransport> {
    let engine = server.engine().clone();
    let node_id = spec.node_id;
    let mut nodes: Vec<u64> = spec.nodes.keys().copied().collect();
    let inbound = engine.clone();
    let handler: InboundHandler = Arc::new(move |from, messages| {
        inbound.deliver_peer_messages(from, messages);
    });
    let settings = PeerSettings {
        advertised_address: advertised.to_string(),
        kafka_address: server.kafka_advertised().unwrap_or_default(),
        ..PeerSettings::default()
    };
    let transport = PeerTransport::start(&engine, spec, settings, handler)
        .context("cannot start the node-to-node transport")?;
    let out = transport.clone();
    let sink: shardline_engine::PeerSink = Arc::new(move |to, messages| {
        for (group, bytes) in messages {
            if let Err(e) = out.send(to, group, bytes) {
                tracing::debug!(to, group, error = %e, "peer message not queued");
            }
        }
        out.flush();
    });
    let cfg = shardline_engine::ReplicaConfig::default();
    let enabled = if joining {
        nodes.retain(|n| *n != node_id);
        engine.join_cluster(node_id, nodes, sink, cfg)
    } else {
        engine.enable_cluster(node_id, nodes, sink, cfg)
    };
    enabled.context("cannot start replication")?;
    super::nodes::follow_members(&engine, &transport)?;
    server.set_advertised_address(advertised);
    server.set_peer_transport(transport.clone());
    server.enable_replication();
    Ok(transport)
}

/// On a cluster, waits (at most 15 s) until every partition of `topic` has a leader, so that
/// the commands after `topic create` can write at once. Nothing on a single server.
pub fn wait_for_leaders(client: &shardline_client::Client, topic: &str) {
    if !client.is_cluster().unwrap_or(false) {
        return;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while std::time::Instant::now() < deadline {
        let led = client.describe_cluster(&[topic]).is_ok_and(|r| {
            r.topics
                .iter()
                .all(|t| !t.partitions.is_empty() && t.partitions.iter().all(|p| p.leader != 0))
        });
        if led {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
