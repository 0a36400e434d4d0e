//! The cluster's membership as configured (`[cluster]` in the serve config file, or
//! `--node-id`/`--cluster`/`--cluster-id` on `shardline serve`; docs/replication.md,
//! "Node-to-node transport"), and its resolution into peer socket addresses.

use std::collections::{BTreeMap, HashSet};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Most nodes a cluster may list. Replicas per partition are at most 5; this bounds the
/// handshake work and the number of links per node, not the replication factor.
pub const CLUSTER_NODES_MAX: usize = 64;

/// Longest cluster id, in bytes (it travels in every handshake).
pub const CLUSTER_ID_BYTES_MAX: usize = 64;

/// The cluster id used when none is configured.
pub const CLUSTER_ID_DEFAULT: &str = "shardline";

/// `[cluster.tls]`: mutual TLS on every node-to-node link. Each node presents `cert` (both as
/// the accepting and as the dialling side) and accepts only peers whose certificate is signed by
/// a CA in `ca`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerTlsConfig {
    /// PEM: this node's certificate chain, leaf first. Must be valid for the host name (or IP
    /// address) other nodes use for it in the cluster list.
    pub cert: PathBuf,
    /// PEM: this node's private key.
    pub key: PathBuf,
    /// PEM: the CA(s) that sign every node's certificate.
    pub ca: PathBuf,
}

/// The `[cluster]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// This node's id: one of the ids in `nodes`, at least 1.
    pub node_id: u64,
    /// Names the cluster; nodes of different clusters refuse each other, and a data directory
    /// stamped by another cluster refuses to start.
    pub cluster_id: String,
    /// Every node, this one included, as `ID@HOST:PORT`: the node-to-node (peer) address.
    /// This node listens for peers on its own entry.
    pub nodes: Vec<String>,
    /// Mutual TLS between nodes. Absent = plain TCP.
    pub tls: Option<PeerTlsConfig>,
    /// The `host:port` clients use to reach this node's client listener, when it differs
    /// from `server.listen` (a `0.0.0.0` listener, NAT, a proxy); told to every node in the
    /// peer handshake and to clients by DescribeCluster. Empty = the bound listener.
    pub advertised_address: String,
    /// This node joins a running cluster (`shardline serve --join`): `nodes` lists the
    /// controller's voters (the cluster's initial nodes) and this node, which is not one of
    /// them; a member adds it with `shardline cluster add-node` (docs/replication.md,
    /// "Membership changes").
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub join: bool,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            node_id: 0,
            cluster_id: CLUSTER_ID_DEFAULT.into(),
            nodes: Vec::new(),
            tls: None,
            advertised_address: String::new(),
            join: false,
        }
    }
}

/// One node of the cluster list, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerNode {
    pub id: u64,
    /// As configured (`HOST:PORT`); its host part is the TLS server name.
    pub host_port: String,
    /// Resolved once at start.
    pub addr: SocketAddr,
}

/// A validated, resolved cluster configuration: what the transport runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSpec {
    pub cluster_id: String,
    pub node_id: u64,
    /// Every node, this one included, by id.
    pub nodes: BTreeMap<u64, PeerNode>,
    pub tls: Option<PeerTlsConfig>,
}

impl ClusterSpec {
    /// This node's entry.
    pub fn this_node(&self) -> &PeerNode {
        let node = self.nodes.get(&self.node_id);
        assert!(node.is_some(), "a ClusterSpec always lists its own node");
        node.unwrap_or_else(|| unreachable!())
    }

    /// The other nodes.
    pub fn peers(&self) -> impl Iterator<Item = &PeerNode> {
        self.nodes.values().filter(|n| n.id != self.node_id)
    }
}

/// What is wrong with a cluster configuration; the text names the setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ClusterConfigError(pub String);

fn bad<T>(msg: impl Into<String>) -> Result<T, ClusterConfigError> {
    Err(ClusterConfigError(msg.into()))
}

/// Parses a `--cluster` list: `1@HOST:PORT,2@HOST:PORT,...` (spaces around entries allowed).
pub fn parse_cluster_list(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// One `ID@HOST:PORT` entry, checked but not resolved.
fn parse_entry(entry: &str) -> Result<(u64, String), ClusterConfigError> {
    let Some((id, host_port)) = entry.split_once('@') else {
        return bad(format!("'{entry}' is not ID@HOST:PORT"));
    };
    let id: u64 = match id.trim().parse() {
        Ok(id) if id >= 1 => id,
        _ => return bad(format!("'{entry}': the node id must be a number >= 1")),
    };
    let host_port = host_port.trim();
    let port_ok = host_port
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if !port_ok {
        return bad(format!(
            "'{entry}': '{host_port}' is not HOST:PORT (a port from 1 to 65535)"
        ));
    }
    Ok((id, host_port.to_string()))
}

impl ClusterConfig {
    /// Checks everything that needs no name resolution: the entries' syntax, duplicate ids
    /// and addresses, the size of the list, this node's presence, the cluster id.
    pub fn validate(&self) -> Result<(), ClusterConfigError> {
        let id = &self.cluster_id;
        if id.is_empty() || id.len() > CLUSTER_ID_BYTES_MAX {
            return bad(format!(
                "cluster_id: must be 1 to {CLUSTER_ID_BYTES_MAX} bytes"
            ));
        }
        if !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return bad(format!(
                "cluster_id: '{id}' may hold only letters, digits, '-', '_' and '.'"
            ));
        }
        if self.nodes.is_empty() {
            return bad("nodes: the cluster list is empty (give ID@HOST:PORT for every node)");
        }
        if self.nodes.len() > CLUSTER_NODES_MAX {
            return bad(format!(
                "nodes: {} nodes listed, at most {CLUSTER_NODES_MAX} are supported",
                self.nodes.len()
            ));
        }
        let mut ids = HashSet::new();
        let mut addrs = HashSet::new();
        for entry in &self.nodes {
            let (id, host_port) =
                parse_entry(entry).map_err(|e| ClusterConfigError(format!("nodes: {}", e.0)))?;
            if !ids.insert(id) {
                return bad(format!("nodes: node id {id} is listed twice"));
            }
            if !addrs.insert(host_port.to_ascii_lowercase()) {
                return bad(format!("nodes: address {host_port} is listed twice"));
            }
        }
        if self.node_id == 0 {
            return bad("node_id: required with a cluster list (a number >= 1)");
        }
        let a = &self.advertised_address;
        if !a.is_empty()
            && (a.len() > super::frame::CLIENT_ADDRESS_BYTES_MAX
                || a.rsplit_once(':')
                    .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err()))
        {
            return bad(format!(
                "advertised_address: '{a}' is not HOST:PORT (at most {} bytes)",
                super::frame::CLIENT_ADDRESS_BYTES_MAX
            ));
        }
        if !ids.contains(&self.node_id) {
            let mut listed: Vec<u64> = ids.into_iter().collect();
            listed.sort_unstable();
            return bad(format!(
                "node_id: node {} is not in the cluster list (it lists {listed:?})",
                self.node_id
            ));
        }
        Ok(())
    }

    /// Validates, then resolves every host name once (the first address it resolves to).
    /// Two entries that resolve to one socket address are an error.
    pub fn resolve(&self) -> Result<ClusterSpec, ClusterConfigError> {
        self.validate()?;
        let mut nodes = BTreeMap::new();
        let mut seen: BTreeMap<SocketAddr, u64> = BTreeMap::new();
        for entry in &self.nodes {
            let (id, host_port) = parse_entry(entry)?;
            let addr = match host_port.to_socket_addrs() {
                Ok(mut addrs) => match addrs.next() {
                    Some(a) => a,
                    None => return bad(format!("nodes: '{host_port}' resolves to no address")),
                },
                Err(e) => return bad(format!("nodes: cannot resolve '{host_port}': {e}")),
            };
            if let Some(other) = seen.insert(addr, id) {
                return bad(format!(
                    "nodes: nodes {other} and {id} both resolve to {addr}"
                ));
            }
            nodes.insert(
                id,
                PeerNode {
                    id,
                    host_port,
                    addr,
                },
            );
        }
        Ok(ClusterSpec {
            cluster_id: self.cluster_id.clone(),
            node_id: self.node_id,
            nodes,
            tls: self.tls.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(node_id: u64, list: &str) -> ClusterConfig {
        ClusterConfig {
            node_id,
            nodes: parse_cluster_list(list),
            ..ClusterConfig::default()
        }
    }

    fn error_of(c: &ClusterConfig) -> String {
        match c.resolve() {
            Ok(spec) => panic!("accepted: {spec:?}"),
            Err(e) => e.0,
        }
    }

    #[test]
    fn a_valid_list_resolves_host_names() {
        let c = config(2, "1@127.0.0.1:7101, 2@localhost:7102,3@127.0.0.1:7103");
        let spec = c.resolve().expect("valid");
        assert_eq!(spec.node_id, 2);
        assert_eq!(spec.nodes.len(), 3);
        assert_eq!(spec.this_node().host_port, "localhost:7102");
        assert!(spec.this_node().addr.ip().is_loopback());
        assert_eq!(spec.this_node().addr.port(), 7102);
        let peers: Vec<u64> = spec.peers().map(|p| p.id).collect();
        assert_eq!(peers, vec![1, 3]);
    }

    #[test]
    fn bad_lists_are_refused_with_the_reason() {
        let e = error_of(&config(4, "1@127.0.0.1:7101,2@127.0.0.1:7102"));
        assert!(e.contains("node 4 is not in the cluster list"), "{e}");
        let e = error_of(&config(1, "1@127.0.0.1:7101,1@127.0.0.1:7102"));
        assert!(e.contains("node id 1 is listed twice"), "{e}");
        let e = error_of(&config(1, "1@127.0.0.1:7101,2@127.0.0.1:7101"));
        assert!(e.contains("listed twice"), "{e}");
        let e = error_of(&config(1, "1@localhost:7101,2@127.0.0.1:7101"));
        assert!(e.contains("both resolve to"), "{e}");
        let e = error_of(&config(1, "1@127.0.0.1"));
        assert!(e.contains("HOST:PORT"), "{e}");
        let e = error_of(&config(1, "x@127.0.0.1:1"));
        assert!(e.contains("node id must be a number"), "{e}");
        let e = error_of(&config(1, "0@127.0.0.1:1"));
        assert!(e.contains("node id must be a number"), "{e}");
        let e = error_of(&config(0, "1@127.0.0.1:1"));
        assert!(e.contains("node_id: required"), "{e}");
        let e = error_of(&config(1, ""));
        assert!(e.contains("empty"), "{e}");
        let e = error_of(&config(1, "1@no-such-host.invalid:7101"));
        assert!(e.contains("cannot resolve"), "{e}");
        let many: Vec<String> = (1..=65)
            .map(|i| format!("{i}@127.0.0.1:{}", 7000 + i))
            .collect();
        let e = error_of(&config(1, &many.join(",")));
        assert!(e.contains("at most 64"), "{e}");
        let mut c = config(1, "1@127.0.0.1:7101");
        c.cluster_id = "a b".into();
        assert!(error_of(&c).contains("cluster_id"));
        c.cluster_id = String::new();
        assert!(error_of(&c).contains("cluster_id"));
    }
}
