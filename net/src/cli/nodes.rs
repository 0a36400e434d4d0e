//! Adding and removing nodes (`shardline cluster add-node` / `remove-node`, `serve --join`;
//! docs/operations.md, "Adding and removing nodes"; docs/replication.md, "Membership
//! changes"): the node-to-node transport follows the engine's membership.

use std::io::Write;
use std::net::ToSocketAddrs;
use std::sync::Arc;

use anyhow::{Context, anyhow};
use shardline_client::{Client, ClientError};
use shardline_engine::Engine;
use shardline_server::peer::{PeerNode, PeerTransport};

/// Installs the engine's node hook (a node added gets a link, a node removed loses it) and
/// adds the nodes added before this start (recorded in the metadata).
pub fn follow_members(engine: &Engine, transport: &PeerTransport) -> anyhow::Result<()> {
    let t = transport.clone();
    engine
        .set_node_hook(Arc::new(move |engine: &Engine, id, addr| match addr {
            Some(addr) => add_peer(engine, &t, id, addr),
            None => {
                t.remove_peer(id);
            }
        }))
        .context("cannot follow the cluster's nodes")?;
    for (id, addr) in engine.added_nodes() {
        if !transport.node_ids().contains(&id) {
            add_peer(engine, transport, id, &addr);
        }
    }
    Ok(())
}

fn add_peer(engine: &Engine, transport: &PeerTransport, id: u64, addr: &str) {
    let resolved = addr.to_socket_addrs().ok().and_then(|mut a| a.next());
    let Some(resolved) = resolved else {
        tracing::warn!(
            node = id,
            addr,
            "added node's address does not resolve; no link to it"
        );
        return;
    };
    let node = PeerNode {
        id,
        host_port: addr.to_string(),
        addr: resolved,
    };
    if let Err(e) = transport.add_peer(engine, node) {
        tracing::warn!(node = id, error = %e, "no link to the added node");
    }
}

/// `ID@HOST:PORT` of `cluster add-node`.
pub fn parse_node(s: &str) -> Result<(u64, String), String> {
    let (id, at) = s
        .split_once('@')
        .ok_or_else(|| format!("'{s}' is not ID@HOST:PORT"))?;
    let id: u64 = id
        .trim()
        .parse()
        .ok()
        .filter(|id| *id >= 1)
        .ok_or_else(|| format!("'{s}': the node id must be a number >= 1"))?;
    let at = at.trim();
    let port_ok = at
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
    if !port_ok {
        return Err(format!("'{s}': the address must be HOST:PORT"));
    }
    Ok((id, at.to_string()))
}

/// `shardline cluster add-node ID@HOST:PORT`.
pub fn add_node(client: &Client, node: &str, out: &mut impl Write) -> anyhow::Result<()> {
    let (id, addr) = parse_node(node).map_err(|e| anyhow!(e))?;
    let r = client
        .add_node(id, &addr)
        .map_err(|e| refused("add-node", e))?;
    writeln!(out, "added node {id} at {addr}; nodes: {:?}", r.nodes)?;
    Ok(())
}

/// `shardline cluster remove-node ID`.
pub fn remove_node(client: &Client, id: u64, out: &mut impl Write) -> anyhow::Result<()> {
    let r = client
        .remove_node(id)
        .map_err(|e| refused("remove-node", e))?;
    writeln!(out, "removed node {id}; nodes: {:?}", r.nodes)?;
    Ok(())
}

fn refused(what: &str, e: ClientError) -> anyhow::Error {
    match e {
        ClientError::Server { message, .. } => anyhow!("{what} refused: {message}"),
        e => anyhow!(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_entries_need_an_id_and_host_port() {
        assert_eq!(
            parse_node("4@127.0.0.1:7104"),
            Ok((4, "127.0.0.1:7104".to_string()))
        );
        assert_eq!(parse_node("12@node-c:1"), Ok((12, "node-c:1".to_string())));
        for bad in ["4", "0@h:1", "x@h:1", "4@h", "4@:1", "4@h:99999"] {
            assert!(parse_node(bad).is_err(), "{bad}");
        }
    }
}
