//! Peers added and removed at run time (`PeerTransport::add_peer` / `remove_peer`; the
//! transport part of membership changes, docs/replication.md "Membership changes"): a node not
//! in the cluster list is refused until the others add it, then links run both ways and carry
//! messages; once removed, it is refused again and sends to it fail.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use shardline_engine::{Engine, EngineConfig};
use shardline_server::peer::config::parse_cluster_list;
use shardline_server::peer::{
    ClusterConfig, InboundHandler, PeerNode, PeerSettings, PeerTransport, SendError,
};

type Inbox = flume::Receiver<(u64, Vec<(u64, Bytes)>)>;

struct Node {
    engine: Engine,
    transport: PeerTransport,
    inbox: Inbox,
}

impl Node {
    fn stop(self) {
        self.transport.shutdown();
        self.engine.shutdown().unwrap();
    }
}

fn free_ports(n: usize) -> Vec<u16> {
    let ls: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    ls.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

fn start_node(dir: &Path, node_id: u64, list: &str) -> Node {
    let config = ClusterConfig {
        node_id,
        cluster_id: "test".into(),
        nodes: parse_cluster_list(list),
        ..ClusterConfig::default()
    };
    let spec = config.resolve().unwrap();
    let mut e = EngineConfig::with_data_dir(dir.join(format!("node-{node_id}")));
    e.shards = 1;
    e.pin_shards = false;
    e.io_memory_bytes = 256 << 10;
    let engine = Engine::open(e).unwrap();
    let (tx, inbox) = flume::unbounded();
    let handler: InboundHandler = Arc::new(move |from, messages| {
        let _ = tx.send((from, messages));
    });
    let settings = PeerSettings {
        backoff_min_ms: 10,
        backoff_max_ms: 200,
        connect_timeout_ms: 500,
        handshake_timeout_ms: 2_000,
        ..PeerSettings::default()
    };
    let transport = PeerTransport::start(&engine, spec, settings, handler).unwrap();
    Node {
        engine,
        transport,
        inbox,
    }
}

/// Polls (bounded) until `cond` holds (the transport has no "link up" event for tests).
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn connected(n: &Node, peer: u64) -> bool {
    n.transport.link_stats(peer).is_some_and(|s| s.connected)
}

/// Sends one message `from` -> `to` and waits for it in `to`'s inbox.
fn exchange(from: &Node, to: &Node, group: u64) {
    let body = Bytes::from(format!("m-{group}"));
    from.transport
        .send(to.transport.node_id(), group, body.clone())
        .unwrap();
    from.transport.flush();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (sender, msgs) = to.inbox.recv_timeout(left).expect("the message");
        if sender == from.transport.node_id() && msgs.contains(&(group, body.clone())) {
            return;
        }
    }
}

#[test]
fn a_node_added_at_run_time_links_up_and_a_removed_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(3);
    let entry = |id: u64| format!("{id}@127.0.0.1:{}", ports[id as usize - 1]);
    let list12 = format!("{},{}", entry(1), entry(2));
    let list123 = format!("{list12},{}", entry(3));
    let n1 = start_node(dir.path(), 1, &list12);
    let n2 = start_node(dir.path(), 2, &list12);
    // Node 3 joins: it knows the others; they do not know it yet and refuse it.
    let n3 = start_node(dir.path(), 3, &list123);
    wait_until("node 1 refuses node 3", || n1.transport.refusals().0 >= 1);
    let reason = n1.transport.refusals().1.unwrap();
    assert!(
        reason.contains("node 3 is not in the cluster list"),
        "{reason}"
    );
    assert!(!connected(&n3, 1));
    assert_eq!(
        n1.transport.send(3, 1, Bytes::from_static(b"x")),
        Err(SendError::UnknownNode(3))
    );

    let node3 = PeerNode {
        id: 3,
        host_port: format!("127.0.0.1:{}", ports[2]),
        addr: format!("127.0.0.1:{}", ports[2]).parse().unwrap(),
    };
    n1.transport.add_peer(&n1.engine, node3.clone()).unwrap();
    n2.transport.add_peer(&n2.engine, node3.clone()).unwrap();
    assert_eq!(n1.transport.peer_ids(), vec![2, 3]);
    for (n, peers) in [(&n1, [2, 3]), (&n2, [1, 3]), (&n3, [1, 2])] {
        for p in peers {
            wait_until(&format!("link {} -> {p}", n.transport.node_id()), || {
                connected(n, p)
            });
        }
    }
    exchange(&n1, &n3, 7);
    exchange(&n3, &n1, 8);
    exchange(&n3, &n2, 9);
    assert!(
        n1.transport
            .client_addresses()
            .iter()
            .any(|(id, _)| *id == 3),
        "the added node is listed"
    );

    // Refusals: a known id, this node's id, id 0, another node's address.
    assert!(n1.transport.add_peer(&n1.engine, node3.clone()).is_err());
    for (id, port) in [(1, ports[2]), (0, 9), (4, ports[1])] {
        let n = PeerNode {
            id,
            host_port: format!("127.0.0.1:{port}"),
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
        };
        assert!(n1.transport.add_peer(&n1.engine, n).is_err(), "id {id}");
    }

    // Removal: sends fail, node 3's connection to node 1 is closed and refused again.
    let refusals = n1.transport.refusals().0;
    assert!(n1.transport.remove_peer(3));
    assert!(!n1.transport.remove_peer(3));
    assert_eq!(
        n1.transport.send(3, 1, Bytes::from_static(b"x")),
        Err(SendError::UnknownNode(3))
    );
    assert!(n1.transport.link_stats(3).is_none());
    wait_until("node 1 refuses node 3 again", || {
        n1.transport.refusals().0 > refusals
    });
    wait_until("node 3's link to node 1 is down", || !connected(&n3, 1));
    // Node 2 still has it.
    exchange(&n3, &n2, 10);
    for n in [n1, n2, n3] {
        n.stop();
    }
}
