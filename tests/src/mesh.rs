//! A fault proxy on every node-to-node link of a test cluster (issue 14, "Must be shown by
//! tests"): node `a` dials node `b` through proxy `(a, b)`, so each direction of each pair can be
//! delayed, black-holed (partitioned) or reset on its own.
//!
//! Every node dials every other node from its `--cluster` list and sends only on the
//! connection it dialled (docs/replication.md, "Connections"); the handshake checks node ids
//! and the cluster id, never addresses. So each node gets its own list ([`Cluster::node_lists`]):
//! its own entry is its real peer address (where it listens), the others' entries are the
//! addresses of the proxies of its outbound links. The proxies outlive node restarts (a node
//! keeps its peer port).
//!
//! Depends on std, anyhow and the sibling modules `proxy` and `cluster` only, so that net/tests
//! can include it with `#[path]` beside them.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;

use crate::cluster::Cluster;
use crate::proxy::{Mode, Proxy};

/// One proxy per ordered pair of nodes: `(from, to)` carries what `from` sends to `to`.
pub struct Mesh {
    links: BTreeMap<(u64, u64), Proxy>,
}

impl Mesh {
    /// Starts the proxies and sets every node's cluster list; call before the nodes start.
    pub fn install(c: &mut Cluster) -> anyhow::Result<Mesh> {
        let ids: Vec<u64> = c.nodes.iter().map(|n| n.id).collect();
        let mut links = BTreeMap::new();
        let mut lists = Vec::with_capacity(ids.len());
        for &from in &ids {
            let mut entries = Vec::with_capacity(ids.len());
            for &to in &ids {
                let target: SocketAddr = c
                    .node(to)
                    .peer_addr
                    .parse()
                    .context("a node's peer address")?;
                if from == to {
                    entries.push(format!("{to}@{target}"));
                    continue;
                }
                let p = Proxy::start(target).context("starting a link proxy")?;
                entries.push(format!("{to}@{}", p.addr()));
                links.insert((from, to), p);
            }
            lists.push(entries.join(","));
        }
        c.node_lists = lists;
        Ok(Mesh { links })
    }

    /// The proxy of the link `from -> to`.
    pub fn link(&self, from: u64, to: u64) -> Option<&Proxy> {
        self.links.get(&(from, to))
    }

    /// Sets one direction of one link.
    pub fn set(&self, from: u64, to: u64, mode: Mode) {
        if let Some(p) = self.links.get(&(from, to)) {
            p.set_mode(mode);
        }
    }

    /// Every link to `mode`.
    pub fn set_all(&self, mode: Mode) {
        for p in self.links.values() {
            p.set_mode(mode);
        }
    }

    /// A network partition: every link between `side` and the other nodes drops everything
    /// (both directions); links within each side pass.
    pub fn partition(&self, side: &[u64]) {
        for (&(a, b), p) in &self.links {
            let cut = side.contains(&a) != side.contains(&b);
            p.set_mode(if cut { Mode::Blackhole } else { Mode::Pass });
        }
    }

    /// Every node alone: no two nodes can talk (no majority anywhere).
    pub fn isolate_all(&self) {
        self.set_all(Mode::Blackhole);
    }

    /// Every link passes again (connections that lost bytes are reset and redialled).
    pub fn heal(&self) {
        self.set_all(Mode::Pass);
    }

    /// Latency on every link.
    pub fn delay_all(&self, d: Duration) {
        self.set_all(Mode::Delay(d));
    }

    /// Resets (TCP RST) every open connection of every link once; modes stay.
    pub fn reset_all(&self) {
        for p in self.links.values() {
            p.reset_connections();
        }
    }

    /// Bytes forwarded and dropped over every link so far (both directions of each proxied
    /// connection: the dialler's frames and the acceptor's handshake answer).
    pub fn bytes(&self) -> (u64, u64) {
        self.links.values().fold((0, 0), |(f, d), p| {
            let (pf, pd) = p.bytes();
            (f + pf, d + pd)
        })
    }

    /// Forwarded bytes per link, `(from, to) -> bytes`.
    pub fn bytes_per_link(&self) -> BTreeMap<(u64, u64), u64> {
        self.links.iter().map(|(&k, p)| (k, p.bytes().0)).collect()
    }
}
