//! The Kafka front end on a cluster (docs/kafka.md, "Clusters"): the brokers Metadata lists
//! (every node whose Kafka address this node learned in the peer handshake), each partition's
//! leader, replicas, in-sync replicas and leader epoch (`Engine::replica_status`), the leader
//! checks of Fetch and ListOffsets (NOT_LEADER_OR_FOLLOWER, `current_leader_epoch` fencing) and
//! the group coordinator every node agrees on.
//!
//! On a single node nothing here applies: the node is broker 0 and leads every partition.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use shardline_engine::ReplicaStatus;

use super::{KConn, codes};

/// This node's broker id on a single node (Metadata, FindCoordinator).
pub(crate) const SINGLE_NODE: i32 = 0;

/// How long a partition view used by Fetch and ListOffsets is reused. A stale view is only a
/// routing hint: every node's partition log holds committed batches only, so a deposed leader
/// that serves one more fetch serves committed data.
const VIEW_TTL: Duration = Duration::from_millis(250);
/// Topics whose view a shard keeps at most (the cache is emptied past it).
const VIEW_CACHE_TOPICS_MAX: usize = 4096;

/// Whether this server is a node of a cluster (`serve --cluster`), even while its replication
/// layer is still starting.
pub(crate) fn on_cluster(conn: &KConn) -> bool {
    conn.engine.cluster_node_id().is_some() || conn.shared.cluster.nodes.load(Ordering::Acquire) > 1
}

/// A node id as a Kafka broker id (ids above `i32::MAX` cannot be told to Kafka clients).
pub(crate) fn broker_id(node: u64) -> i32 {
    i32::try_from(node).unwrap_or(-1)
}

/// This node's broker id.
pub(crate) fn this_broker(conn: &KConn) -> i32 {
    if on_cluster(conn) {
        broker_id(conn.shared.cluster.node_id.load(Ordering::Acquire))
    } else {
        SINGLE_NODE
    }
}

/// `host:port` (IPv6 hosts in brackets) split for Kafka.
fn split_host_port(address: &str) -> Option<(String, i32)> {
    let (h, p) = address.rsplit_once(':')?;
    let port = p.parse::<u16>().ok()?;
    let host = h.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty()).then(|| (host.to_string(), i32::from(port)))
}

/// Every broker this node can tell clients about: `(broker id, host, port)`, sorted by id. On
/// a single node, this node; on a cluster, every node whose Kafka address is known (this
/// node's own, and the others' from their last handshake).
pub(crate) fn brokers(conn: &KConn) -> Vec<(i32, String, i32)> {
    let own = || {
        let (host, port) = super::api::advertised(conn);
        vec![(this_broker(conn), host, port)]
    };
    if !on_cluster(conn) {
        return own();
    }
    let peers = conn
        .shared
        .cluster
        .peers
        .lock()
        .ok()
        .and_then(|p| p.as_ref().map(crate::peer::PeerTransport::kafka_addresses));
    match peers {
        Some(known) if !known.is_empty() => known
            .iter()
            .filter_map(|(id, a)| {
                let (host, port) = split_host_port(a)?;
                Some((broker_id(*id), host, port)).filter(|b| b.0 >= 0)
            })
            .collect(),
        // The transport is not set yet (replication starting): this node only.
        _ => own(),
    }
}

/// The controller as Kafka admin clients should see it: the controller group's leader when
/// its Kafka address is known, else this node (any node accepts CreateTopics and DeleteTopics:
/// they are forwarded to the controller inside the cluster).
pub(crate) fn controller(conn: &KConn, brokers: &[(i32, String, i32)]) -> i32 {
    let me = this_broker(conn);
    match conn.engine.controller_leader().map(broker_id) {
        Some(l) if brokers.iter().any(|b| b.0 == l) => l,
        _ => me,
    }
}

/// One partition's state for Metadata.
pub(crate) struct PartitionState {
    pub(crate) error_code: i16,
    pub(crate) leader: i32,
    pub(crate) epoch: i32,
    pub(crate) replicas: Vec<i32>,
    pub(crate) in_sync: Vec<i32>,
}

/// A partition's Metadata entry from its replica status: its leader (or -1 and
/// LEADER_NOT_AVAILABLE when there is none, or its Kafka address is unknown), replicas, ISR
/// (the leader at least) and leader epoch.
pub(crate) fn partition_state(s: &ReplicaStatus, brokers: &[(i32, String, i32)]) -> PartitionState {
    // A node that holds no replica of the partition does not know its leader; with one
    // replica, that replica is the leader (its epoch is not known here: -1).
    let (leader, epoch) = match (s.leader, s.replicas.as_slice()) {
        (Some(l), _) => (Some(l), i32::try_from(s.epoch).unwrap_or(i32::MAX)),
        (None, [only]) => (Some(*only), -1),
        (None, _) => (None, i32::try_from(s.epoch).unwrap_or(i32::MAX)),
    };
    let leader = leader
        .map(broker_id)
        .filter(|l| brokers.iter().any(|b| b.0 == *l));
    let ids = |v: &[u64]| v.iter().map(|n| broker_id(*n)).collect::<Vec<i32>>();
    let mut in_sync = ids(&s.in_sync);
    if let Some(l) = leader
        && !in_sync.contains(&l)
    {
        in_sync.insert(0, l);
    }
    PartitionState {
        error_code: if leader.is_some() {
            codes::NONE
        } else {
            codes::LEADER_NOT_AVAILABLE
        },
        leader: leader.unwrap_or(-1),
        epoch,
        replicas: ids(&s.replicas),
        in_sync,
    }
}

/// Per topic: when it was looked up, and the replica status of every partition.
type Views = HashMap<String, (Instant, Rc<Vec<ReplicaStatus>>)>;

thread_local! {
    /// This shard's views (Fetch and ListOffsets leader checks).
    static VIEWS: RefCell<Views> = RefCell::new(HashMap::new());
}

/// A topic's replica status, at most [`VIEW_TTL`] old (Fetch and ListOffsets: one look-up per
/// topic and shard per interval, not per request).
async fn cached_view(
    conn: &KConn,
    topic: &str,
) -> Result<Rc<Vec<ReplicaStatus>>, shardline_engine::Error> {
    let now = Instant::now();
    let hit = VIEWS.with(|v| {
        v.borrow()
            .get(topic)
            .filter(|(at, _)| now.duration_since(*at) < VIEW_TTL)
            .map(|(_, s)| s.clone())
    });
    if let Some(s) = hit {
        return Ok(s);
    }
    let fresh = Rc::new(conn.engine.replica_status(topic).await?);
    VIEWS.with(|v| {
        let mut v = v.borrow_mut();
        if v.len() >= VIEW_CACHE_TOPICS_MAX {
            v.clear();
        }
        v.insert(topic.to_string(), (now, fresh.clone()));
    });
    Ok(fresh)
}

/// Whether a partition is readable here by a Kafka consumer, and its leader epoch: `NONE` on
/// a single node (epoch 0) and on the partition's leader with a matching
/// `current_leader_epoch` (-1: not sent); otherwise NOT_LEADER_OR_FOLLOWER,
/// FENCED_LEADER_EPOCH (the client's epoch is older than the leader's) or
/// UNKNOWN_LEADER_EPOCH (newer than this node knows). An unknown topic or partition is left
/// to the read, which answers it.
pub(crate) async fn read_check(
    conn: &KConn,
    topic: &str,
    partition: i32,
    current_leader_epoch: i32,
) -> (i16, i32) {
    if !on_cluster(conn) {
        return (codes::NONE, 0);
    }
    let Some(me) = conn.engine.cluster_node_id() else {
        return (codes::LEADER_NOT_AVAILABLE, -1);
    };
    let Ok(view) = cached_view(conn, topic).await else {
        return (codes::NONE, 0);
    };
    let Some(s) = usize::try_from(partition).ok().and_then(|p| view.get(p)) else {
        return (codes::NONE, 0);
    };
    (
        leader_check(s, me, current_leader_epoch),
        i32::try_from(s.epoch).unwrap_or(i32::MAX),
    )
}

/// [`read_check`] on one partition's status, for node `me`.
pub(crate) fn leader_check(s: &ReplicaStatus, me: u64, current_leader_epoch: i32) -> i16 {
    if s.leader != Some(me) {
        return codes::NOT_LEADER_OR_FOLLOWER;
    }
    if current_leader_epoch >= 0 {
        let epoch = i64::try_from(s.epoch).unwrap_or(i64::MAX);
        match i64::from(current_leader_epoch).cmp(&epoch) {
            std::cmp::Ordering::Less => return codes::FENCED_LEADER_EPOCH,
            std::cmp::Ordering::Greater => return codes::UNKNOWN_LEADER_EPOCH,
            std::cmp::Ordering::Equal => {}
        }
    }
    codes::NONE
}

/// The coordinator of `group` as FindCoordinator answers it: `Ok((broker, host, port))`, or
/// `Err` COORDINATOR_NOT_AVAILABLE while the group has no coordinator (its `__offsets`
/// partition has no leader yet) or that node's Kafka address is not known yet. On a cluster the
/// coordinator is the leader of the group's replicated `__offsets` partition
/// (`Engine::group_coordinator`), the same node the native protocol uses, so a group's
/// committed offsets follow its coordinator through failovers.
pub(crate) fn coordinator(conn: &KConn, group: &str) -> Result<(i32, String, i32), i16> {
    let brokers = brokers(conn);
    if !on_cluster(conn) {
        return brokers
            .into_iter()
            .next()
            .ok_or(codes::COORDINATOR_NOT_AVAILABLE);
    }
    let node = conn
        .engine
        .group_coordinator(group)
        .ok()
        .flatten()
        .map(broker_id);
    brokers
        .into_iter()
        .find(|b| Some(b.0) == node)
        .ok_or(codes::COORDINATOR_NOT_AVAILABLE)
}

/// Whether this node coordinates `group` (always on a single node).
pub(crate) fn is_coordinator(conn: &KConn, group: &str) -> bool {
    if !on_cluster(conn) {
        return true;
    }
    let me = conn.shared.cluster.node_id.load(Ordering::Acquire);
    conn.engine.group_coordinator(group).ok().flatten() == Some(me)
}

/// The replication factor of CreateTopics with `replication_factor = -1` and of topics
/// auto-created on a cluster: `[kafka] default_replication_factor`, else 3 (at most the
/// node count). 1 on a single node.
pub(crate) fn default_replication(conn: &KConn) -> u32 {
    let nodes = conn.shared.cluster.nodes.load(Ordering::Acquire).max(1);
    if !on_cluster(conn) {
        return 1;
    }
    conn.shared
        .cfg
        .kafka
        .default_replication_factor
        .unwrap_or(3)
        .clamp(1, nodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(leader: Option<u64>, epoch: u64) -> ReplicaStatus {
        ReplicaStatus {
            partition: 0,
            leader,
            replicas: vec![1, 2, 3],
            in_sync: vec![2, 3],
            epoch,
            high_watermark: 0,
        }
    }

    #[test]
    fn leader_checks_answer_kafkas_codes() {
        let s = status(Some(2), 7);
        assert_eq!(leader_check(&s, 2, -1), codes::NONE);
        assert_eq!(leader_check(&s, 2, 7), codes::NONE);
        assert_eq!(leader_check(&s, 2, 6), codes::FENCED_LEADER_EPOCH);
        assert_eq!(leader_check(&s, 2, 8), codes::UNKNOWN_LEADER_EPOCH);
        assert_eq!(leader_check(&s, 1, -1), codes::NOT_LEADER_OR_FOLLOWER);
        assert_eq!(
            leader_check(&status(None, 7), 1, 7),
            codes::NOT_LEADER_OR_FOLLOWER
        );
    }

    #[test]
    fn partition_state_needs_a_leader_with_a_known_address() {
        let brokers = vec![
            (1, "h1".to_string(), 1),
            (2, "h2".to_string(), 2),
            (3, "h3".to_string(), 3),
        ];
        let p = partition_state(&status(Some(1), 4), &brokers);
        assert_eq!((p.error_code, p.leader, p.epoch), (codes::NONE, 1, 4));
        assert_eq!(p.replicas, vec![1, 2, 3]);
        assert_eq!(p.in_sync, vec![1, 2, 3], "the leader is in sync");
        let p = partition_state(&status(None, 4), &brokers);
        assert_eq!((p.error_code, p.leader), (codes::LEADER_NOT_AVAILABLE, -1));
        let p = partition_state(&status(Some(4), 4), &brokers);
        assert_eq!((p.error_code, p.leader), (codes::LEADER_NOT_AVAILABLE, -1));
        // A single replica held elsewhere: it leads, epoch unknown here.
        let mut one = status(None, 0);
        one.replicas = vec![3];
        one.in_sync.clear();
        let p = partition_state(&one, &brokers);
        assert_eq!((p.error_code, p.leader, p.epoch), (codes::NONE, 3, -1));
        assert_eq!(p.in_sync, vec![3]);
    }

    #[test]
    fn host_ports_split_for_kafka() {
        assert_eq!(
            split_host_port("127.0.0.1:9092"),
            Some(("127.0.0.1".into(), 9092))
        );
        assert_eq!(split_host_port("[::1]:9093"), Some(("::1".into(), 9093)));
        assert_eq!(split_host_port("nope"), None);
        assert_eq!(split_host_port(":1"), None);
        assert_eq!(split_host_port("h:70000"), None);
    }
}
