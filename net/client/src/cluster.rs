//! Leader routing in a cluster (issue 14; docs/protocol.md, "38 DescribeCluster").
//!
//! A replicated partition takes writes on its leader only. The client asks any node
//! DescribeCluster (every node's client address, and each partition's leader as that node
//! knows it) and sends each partition's requests to its leader, through a [`Client`] of that
//! node (`node_only`: it routes to that node's shards and never further). On NOT_LEADER (whose
//! Produce result names the new leader when the node knows it), a lost or refused connection,
//! or a timeout, the topic's leaders are forgotten and asked again before the next attempt;
//! the producer's retries (idempotent: the same producer id and sequence) then reach the new
//! leader. A single server (one node, or a server without DescribeCluster) is routed exactly
//! as before: the view says "not a cluster" after one question and is never asked again.
//!
//! The bootstrap itself fails over too: when its connection cannot be reopened, the client
//! tries the other addresses it was given (`host:port,host:port`) and every node the cluster
//! named.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::conn::block_on;
use tracing::debug;

use super::conn::Connection;
use super::error::ClientError;
use super::pool::{Client, expect_response};
use crate::protocol::{DescribeClusterRequest, DescribeClusterResponse, Request, code};

/// The addresses of `addr`: one `host:port`, or several separated by commas.
pub(crate) fn seeds(addr: &str) -> Vec<String> {
    let list: Vec<String> = addr
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect();
    if list.is_empty() {
        vec![addr.to_string()]
    } else {
        list
    }
}

/// Whether `e` may mean the partition's leader is elsewhere now.
pub(crate) fn leader_may_have_moved(e: &ClientError) -> bool {
    e.code() == Some(code::NOT_LEADER)
        || matches!(
            e,
            ClientError::Connect { .. }
                | ClientError::ConnectionLost { .. }
                | ClientError::Timeout { .. }
        )
}

/// What a client knows of its cluster.
#[derive(Debug)]
pub(crate) struct ClusterRoutes {
    /// The addresses the application gave.
    seeds: Vec<String>,
    /// The bootstrap connection's address.
    current: String,
    /// `None`: not asked yet; `Some(false)`: a single server (routing as without a cluster).
    is_cluster: Option<bool>,
    /// The node the bootstrap connection reaches (0: not known).
    node_id: u64,
    /// Client address of each node.
    addresses: BTreeMap<u64, String>,
    /// Leader node of each partition of each topic asked about (0: none known).
    leaders: HashMap<String, Vec<u64>>,
    /// A client per other node, made on first use.
    nodes: HashMap<u64, Client>,
}

impl ClusterRoutes {
    pub(crate) fn new(seeds: Vec<String>, current: &str) -> Self {
        ClusterRoutes {
            seeds,
            current: current.to_string(),
            is_cluster: None,
            node_id: 0,
            addresses: BTreeMap::new(),
            leaders: HashMap::new(),
            nodes: HashMap::new(),
        }
    }

    /// Where to open a bootstrap connection, in order: the current server, then (unless
    /// `node_only`) the other given addresses and every node the cluster named.
    pub(crate) fn bootstrap_candidates(&self, node_only: bool) -> Vec<String> {
        let mut out = vec![self.current.clone()];
        if node_only {
            return out;
        }
        for a in self.seeds.iter().chain(self.addresses.values()) {
            if !a.is_empty() && !out.contains(a) {
                out.push(a.clone());
            }
        }
        out
    }

    /// The bootstrap now reaches another server.
    pub(crate) fn moved_to(&mut self, address: &str) {
        self.current = address.to_string();
        self.node_id = 0;
        self.leaders.clear();
    }

    pub(crate) fn is_multi_node(&self) -> bool {
        self.is_cluster == Some(true)
    }

    pub(crate) fn forget_topic(&mut self, topic: &str) {
        self.leaders.remove(topic);
    }

    /// A NOT_LEADER answer named the leader: use it without asking.
    pub(crate) fn note_leader(&mut self, topic: &str, partition: u32, leader: u64) {
        if leader == 0 || !self.addresses.contains_key(&leader) {
            return;
        }
        if let Some(p) = self
            .leaders
            .get_mut(topic)
            .and_then(|v| v.get_mut(partition as usize))
        {
            *p = leader;
        }
    }

    /// The leaders of every partition of `topic` as last described (0: none known), and
    /// whether the client knows it talks to a multi-node cluster.
    pub(crate) fn leaders(&self, topic: &str) -> (Option<bool>, Option<Vec<u64>>) {
        (self.is_cluster, self.leaders.get(topic).cloned())
    }

    fn leader_of(&self, topic: &str, partition: u32) -> Option<u64> {
        self.leaders.get(topic)?.get(partition as usize).copied()
    }

    fn apply(&mut self, r: &DescribeClusterResponse) {
        self.node_id = r.node_id;
        self.is_cluster = Some(r.nodes.len() > 1);
        for n in &r.nodes {
            if !n.address.is_empty() {
                self.addresses.insert(n.node_id, n.address.clone());
            }
        }
        for t in r.topics.iter().filter(|t| t.error_code == code::NONE) {
            let count = t.partitions.iter().map(|p| p.partition as usize + 1).max();
            let mut leaders = vec![0; count.unwrap_or(0)];
            for p in &t.partitions {
                leaders[p.partition as usize] = p.leader;
            }
            self.leaders.insert(t.name.clone(), leaders);
        }
    }
}

pub(crate) type LeaderFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Option<Arc<Connection>>, ClientError>> + Send + 'a>>;

impl Client {
    /// A client of the one server at `addr` that never follows partition leaders to other
    /// nodes of a cluster: reads see what this node's replica has (committed data), writes to
    /// partitions it does not lead answer NOT_LEADER. For tests and tools that inspect a node.
    pub fn connect_node(addr: &str, config: crate::ClientConfig) -> Result<Client, ClientError> {
        block_on(Client::connect_inner(addr, config, true))
    }

    /// Every node's client address and, for `topics`, each partition's leader, replicas,
    /// in-sync replicas, epoch and high watermark, as the answering node knows them.
    pub fn describe_cluster(
        &self,
        topics: &[&str],
    ) -> Result<DescribeClusterResponse, ClientError> {
        block_on(self.describe_cluster_async(topics))
    }

    pub async fn describe_cluster_async(
        &self,
        topics: &[&str],
    ) -> Result<DescribeClusterResponse, ClientError> {
        let request = Request::DescribeCluster(DescribeClusterRequest {
            topics: topics.iter().map(|t| (*t).to_string()).collect(),
        });
        let r = expect_response!(self.call_bootstrap(request).await?, DescribeCluster)?;
        self.cluster_routes().apply(&r);
        Ok(r)
    }

    /// Whether the server is a cluster of more than one node (asks once).
    pub fn is_cluster(&self) -> Result<bool, ClientError> {
        if let Some(known) = self.cluster_routes().is_cluster {
            return Ok(known);
        }
        block_on(self.refresh_cluster(None))?;
        Ok(self.cluster_routes().is_cluster == Some(true))
    }

    /// Asks DescribeCluster (with `topic`'s leaders). A server that does not know the api is
    /// a single server.
    pub(crate) async fn refresh_cluster(&self, topic: Option<&str>) -> Result<(), ClientError> {
        let topics: Vec<&str> = topic.into_iter().collect();
        match self.describe_cluster_async(&topics).await {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.code(),
                    Some(code::UNKNOWN_API | code::UNSUPPORTED_VERSION)
                ) =>
            {
                self.cluster_routes().is_cluster = Some(false);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// The leader's connection for `topic`/`partition` when the leader is another node of a
    /// cluster; `None`: use this client's own routing (a single server, the bootstrap node
    /// leads, or no leader is known now: the server answers NOT_LEADER and the caller retries).
    ///
    /// Boxed: `connection_for` awaits it and it awaits a node client's `connection_for` (one
    /// level deep), a cycle the compiler cannot size or prove `Send` unboxed.
    pub(crate) fn leader_connection<'a>(
        &'a self,
        topic: &'a str,
        partition: u32,
    ) -> LeaderFuture<'a> {
        Box::pin(self.leader_connection_inner(topic, partition))
    }

    async fn leader_connection_inner(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<Option<Arc<Connection>>, ClientError> {
        let (known, leader) = {
            let r = self.cluster_routes();
            (r.is_cluster, r.leader_of(topic, partition))
        };
        if known == Some(false) {
            return Ok(None);
        }
        if known.is_none() || leader.is_none_or(|l| l == 0) {
            self.refresh_cluster(Some(topic)).await?;
            self.ask_other_nodes(topic, partition).await;
        }
        let (leader, address, existing) = {
            let r = self.cluster_routes();
            let Some(leader) = r.leader_of(topic, partition).filter(|&l| l != 0) else {
                return Ok(None);
            };
            if r.is_cluster != Some(true) || leader == r.node_id {
                return Ok(None);
            }
            let Some(address) = r.addresses.get(&leader).cloned() else {
                return Ok(None);
            };
            (leader, address, r.nodes.get(&leader).cloned())
        };
        let node = match existing {
            Some(c) => c,
            None => {
                debug!(leader, %address, "connecting to a partition leader");
                let c = Client::connect_inner(&address, self.config().clone(), true).await?;
                self.cluster_routes()
                    .nodes
                    .entry(leader)
                    .or_insert(c)
                    .clone()
            }
        };
        // A node's client never routes further: the recursion is one level deep.
        node.connection_for(topic, partition).await.map(Some)
    }

    /// When the bootstrap node knows no leader for `topic`/`partition` (it may be cut off from
    /// the majority, which elected one it has not heard of), asks the other known nodes, one
    /// at a time, and keeps the first leader one of them names. Errors are ignored: the caller
    /// then routes to the bootstrap node, which answers NOT_LEADER, and retries.
    async fn ask_other_nodes(&self, topic: &str, partition: u32) {
        let others: Vec<u64> = {
            let r = self.cluster_routes();
            if r.is_cluster != Some(true) || r.leader_of(topic, partition).is_some_and(|l| l != 0) {
                return;
            }
            r.addresses
                .keys()
                .copied()
                .filter(|&n| n != r.node_id)
                .collect()
        };
        for node in others {
            let Ok(Some(c)) = self.node_client(node).await else {
                continue;
            };
            let Ok(d) = c.describe_cluster_async(&[topic]).await else {
                continue;
            };
            let leader = d
                .topics
                .iter()
                .filter(|t| t.name == topic && t.error_code == code::NONE)
                .flat_map(|t| &t.partitions)
                .find(|p| p.partition == partition)
                .map_or(0, |p| p.leader);
            if leader != 0 {
                debug!(
                    topic,
                    partition, node, leader, "leader learned from another node"
                );
                self.cluster_routes().note_leader(topic, partition, leader);
                return;
            }
        }
    }

    /// A client of node `node` (made on first use, cached), or `None` when it is the node the
    /// bootstrap reaches, its address is not known, or this is not a cluster.
    pub(crate) async fn node_client(&self, node: u64) -> Result<Option<Client>, ClientError> {
        let (address, existing) = {
            let r = self.cluster_routes();
            if r.is_cluster != Some(true) || node == 0 || node == r.node_id {
                return Ok(None);
            }
            let Some(address) = r.addresses.get(&node).cloned() else {
                return Ok(None);
            };
            (address, r.nodes.get(&node).cloned())
        };
        if let Some(c) = existing {
            return Ok(Some(c));
        }
        debug!(node, %address, "connecting to a cluster node");
        let c = Client::connect_inner(&address, self.config().clone(), true).await?;
        Ok(Some(
            self.cluster_routes().nodes.entry(node).or_insert(c).clone(),
        ))
    }

    /// A request about `topic`/`partition` failed with `e`: forget where its leader is when
    /// `e` says it may have moved (the next attempt asks again). `hint`: the leader a
    /// NOT_LEADER answer named (0: none).
    pub(crate) fn leader_failed(&self, topic: &str, partition: u32, e: &ClientError, hint: u64) {
        if self.is_node_only() || !leader_may_have_moved(e) {
            return;
        }
        let mut r = self.cluster_routes();
        if r.is_cluster != Some(true) {
            return;
        }
        if hint != 0 && r.leaders.contains_key(topic) {
            r.note_leader(topic, partition, hint);
        } else {
            r.forget_topic(topic);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ClusterNode, ClusterTopic, PartitionReplicas};

    fn response(leaders: &[u64]) -> DescribeClusterResponse {
        DescribeClusterResponse {
            node_id: 1,
            controller: 1,
            nodes: (1..=3)
                .map(|n| ClusterNode {
                    node_id: n,
                    address: format!("127.0.0.1:700{n}"),
                })
                .collect(),
            topics: vec![ClusterTopic {
                name: "t".into(),
                error_code: code::NONE,
                replicas: 3,
                partitions: leaders
                    .iter()
                    .enumerate()
                    .map(|(p, &leader)| PartitionReplicas {
                        partition: p as u32,
                        leader,
                        ..PartitionReplicas::default()
                    })
                    .collect(),
            }],
        }
    }

    #[test]
    fn seeds_split_on_commas() {
        assert_eq!(seeds("a:1"), vec!["a:1"]);
        assert_eq!(seeds("a:1, b:2,,c:3"), vec!["a:1", "b:2", "c:3"]);
        assert_eq!(seeds(""), vec![""]);
    }

    #[test]
    fn routes_follow_the_cluster_view_and_hints() {
        let mut r = ClusterRoutes::new(vec!["127.0.0.1:7001".into()], "127.0.0.1:7001");
        assert_eq!(r.leader_of("t", 0), None);
        r.apply(&response(&[2, 0, 3]));
        assert_eq!(r.is_cluster, Some(true));
        assert_eq!(r.leader_of("t", 0), Some(2));
        assert_eq!(r.leader_of("t", 1), Some(0), "no leader known");
        r.note_leader("t", 1, 3);
        assert_eq!(r.leader_of("t", 1), Some(3));
        r.note_leader("t", 1, 9);
        assert_eq!(
            r.leader_of("t", 1),
            Some(3),
            "a node without an address is ignored"
        );
        // When the bootstrap node dies, every node the cluster named is a candidate.
        assert_eq!(
            r.bootstrap_candidates(false),
            vec!["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"]
        );
        assert_eq!(r.bootstrap_candidates(true), vec!["127.0.0.1:7001"]);
        r.moved_to("127.0.0.1:7002");
        assert_eq!(
            r.leader_of("t", 0),
            None,
            "another node's view is asked again"
        );
        assert_eq!(r.bootstrap_candidates(false)[0], "127.0.0.1:7002");
        r.forget_topic("t");
        let single = DescribeClusterResponse {
            nodes: vec![ClusterNode {
                node_id: 1,
                address: String::new(),
            }],
            ..DescribeClusterResponse::default()
        };
        r.apply(&single);
        assert_eq!(r.is_cluster, Some(false));
    }

    #[test]
    fn only_leadership_errors_move_routes() {
        assert!(leader_may_have_moved(&ClientError::server(
            "Produce",
            code::NOT_LEADER,
            ""
        )));
        assert!(leader_may_have_moved(&ClientError::ConnectionLost {
            addr: "a".into(),
            reason: "b".into()
        }));
        assert!(!leader_may_have_moved(&ClientError::server(
            "Produce",
            code::CORRUPT_BATCH,
            ""
        )));
    }
}
