//! The group APIs on the wire: FindCoordinator, JoinGroup, SyncGroup, Heartbeat, LeaveGroup,
//! OffsetCommit, OffsetFetch, DescribeGroups, ListGroups (membership in `groups.rs`, offsets
//! in the engine's `__offsets`).

use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::{
    BrokerId, DescribeGroupsRequest, DescribeGroupsResponse, FindCoordinatorRequest,
    FindCoordinatorResponse, GroupId, HeartbeatRequest, HeartbeatResponse, JoinGroupRequest,
    JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse, ListGroupsRequest,
    ListGroupsResponse, OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest,
    OffsetFetchResponse, SyncGroupRequest, SyncGroupResponse,
    describe_groups_response::{DescribedGroup, DescribedGroupMember},
    find_coordinator_response::Coordinator as CoordinatorEntry,
    join_group_response::JoinGroupResponseMember,
    leave_group_response::MemberResponse,
    list_groups_response::ListedGroup,
    offset_commit_response::{OffsetCommitResponsePartition, OffsetCommitResponseTopic},
    offset_fetch_response::{
        OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
        OffsetFetchResponseTopic, OffsetFetchResponseTopics,
    },
};
use kafka_protocol::protocol::StrBytes;
use shardline_engine::groups::OffsetCommit;
use shardline_engine::rt;

use super::groups::{self, JoinArgs, Waiting};
use super::{KConn, codes, sasl};
use shardline_protocol::acl::Operation;

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

/// Waits for a parked join or sync, re-checking the group every [`groups::TICK`].
async fn park<T>(conn: &KConn, group: &str, rx: flume::Receiver<T>, limit: Duration) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        match rt::timeout(groups::TICK, rx.recv_async()).await {
            Some(Ok(v)) => return Some(v),
            Some(Err(_)) => return None,
            None => {
                conn.shared.kafka_groups.tick(group);
                if Instant::now() >= deadline {
                    return None;
                }
            }
        }
    }
}

/// FindCoordinator: this node on a single node; on a cluster the node every node names for
/// the group (`cluster::coordinator`: the group's offsets live in that node's `__offsets`,
/// which is not replicated yet), COORDINATOR_NOT_AVAILABLE while its Kafka address is unknown.
pub(crate) fn find_coordinator(
    conn: &KConn,
    version: i16,
    req: &FindCoordinatorRequest,
) -> FindCoordinatorResponse {
    let mut r = FindCoordinatorResponse::default();
    if version >= 4 {
        r.coordinators = req
            .coordinator_keys
            .iter()
            .map(|k| {
                let mut c = CoordinatorEntry::default();
                c.key = k.clone();
                match super::cluster::coordinator(conn, k.as_str()) {
                    Ok((id, host, port)) => {
                        c.node_id = BrokerId(id);
                        c.host = s(&host);
                        c.port = port;
                    }
                    Err(code) => {
                        c.error_code = code;
                        c.node_id = BrokerId(-1);
                        c.port = -1;
                    }
                }
                c
            })
            .collect();
    } else {
        match super::cluster::coordinator(conn, req.key.as_str()) {
            Ok((id, host, port)) => {
                r.node_id = BrokerId(id);
                r.host = s(&host);
                r.port = port;
            }
            Err(code) => {
                r.error_code = code;
                r.node_id = BrokerId(-1);
                r.port = -1;
            }
        }
    }
    r
}

pub(crate) async fn join_group(
    conn: &KConn,
    version: i16,
    client_id: String,
    req: JoinGroupRequest,
) -> JoinGroupResponse {
    let group = req.group_id.0.as_str().to_string();
    if !sasl::group_allowed(conn, &group) || !super::cluster::is_coordinator(conn, &group) {
        let mut r = JoinGroupResponse::default();
        r.error_code = if sasl::group_allowed(conn, &group) {
            codes::NOT_COORDINATOR
        } else {
            sasl::GROUP_AUTHORIZATION_FAILED
        };
        r.generation_id = -1;
        return r;
    }
    let args = JoinArgs {
        group: group.clone(),
        member_id: req.member_id.as_str().to_string(),
        client_id,
        client_host: conn.peer.clone(),
        session_timeout_ms: req.session_timeout_ms,
        rebalance_timeout_ms: if version >= 1 {
            req.rebalance_timeout_ms
        } else {
            req.session_timeout_ms
        },
        protocol_type: req.protocol_type.as_str().to_string(),
        protocols: req
            .protocols
            .iter()
            .map(|p| (p.name.as_str().to_string(), p.metadata.clone()))
            .collect(),
        require_member_id: version >= 4,
    };
    let limit = Duration::from_millis(u64::try_from(args.rebalance_timeout_ms).unwrap_or(0))
        + Duration::from_secs(5);
    let member_id = args.member_id.clone();
    let joined = match conn.shared.kafka_groups.join(args) {
        Waiting::Done(j) => Some(j),
        Waiting::Wait(rx) => park(conn, &group, rx, limit).await,
    };
    let mut r = JoinGroupResponse::default();
    match joined {
        Some(j) => {
            r.error_code = j.error_code;
            r.generation_id = j.generation;
            if version >= 7 {
                r.protocol_type = Some(s(&j.protocol_type));
            }
            r.protocol_name = Some(s(&j.protocol));
            r.leader = s(&j.leader);
            r.member_id = s(&j.member_id);
            r.members = j
                .members
                .into_iter()
                .map(|(id, md)| {
                    let mut m = JoinGroupResponseMember::default();
                    m.member_id = s(&id);
                    m.metadata = md;
                    m
                })
                .collect();
        }
        None => {
            r.error_code = groups::UNKNOWN_MEMBER_ID;
            r.generation_id = -1;
            r.member_id = s(&member_id);
        }
    }
    r
}

pub(crate) async fn sync_group(
    conn: &KConn,
    version: i16,
    req: SyncGroupRequest,
) -> SyncGroupResponse {
    let group = req.group_id.0.as_str().to_string();
    if !sasl::group_allowed(conn, &group) {
        let mut r = SyncGroupResponse::default();
        r.error_code = sasl::GROUP_AUTHORIZATION_FAILED;
        return r;
    }
    if !super::cluster::is_coordinator(conn, &group) {
        let mut r = SyncGroupResponse::default();
        r.error_code = codes::NOT_COORDINATOR;
        return r;
    }
    let assignments = req
        .assignments
        .iter()
        .map(|a| (a.member_id.as_str().to_string(), a.assignment.clone()))
        .collect();
    let synced = match conn.shared.kafka_groups.sync(
        &group,
        req.generation_id,
        req.member_id.as_str(),
        assignments,
    ) {
        Waiting::Done(s) => Some(s),
        Waiting::Wait(rx) => park(conn, &group, rx, Duration::from_secs(60)).await,
    };
    let mut r = SyncGroupResponse::default();
    match synced {
        Some(x) => {
            r.error_code = x.error_code;
            r.assignment = x.assignment;
            if version >= 5 {
                r.protocol_type = Some(s(&x.protocol_type));
                r.protocol_name = Some(s(&x.protocol));
            }
        }
        None => {
            r.error_code = groups::REBALANCE_IN_PROGRESS;
            r.assignment = Bytes::new();
        }
    }
    r
}

pub(crate) fn heartbeat(conn: &KConn, req: &HeartbeatRequest) -> HeartbeatResponse {
    let mut r = HeartbeatResponse::default();
    if !sasl::group_allowed(conn, req.group_id.0.as_str()) {
        r.error_code = sasl::GROUP_AUTHORIZATION_FAILED;
        return r;
    }
    if !super::cluster::is_coordinator(conn, req.group_id.0.as_str()) {
        r.error_code = codes::NOT_COORDINATOR;
        return r;
    }
    r.error_code = conn.shared.kafka_groups.heartbeat(
        req.group_id.0.as_str(),
        req.generation_id,
        req.member_id.as_str(),
    );
    r
}

pub(crate) fn leave_group(
    conn: &KConn,
    version: i16,
    req: &LeaveGroupRequest,
) -> LeaveGroupResponse {
    let ids: Vec<String> = if version >= 3 {
        req.members
            .iter()
            .map(|m| m.member_id.as_str().to_string())
            .collect()
    } else {
        vec![req.member_id.as_str().to_string()]
    };
    let results = if sasl::group_allowed(conn, req.group_id.0.as_str()) {
        conn.shared
            .kafka_groups
            .leave(req.group_id.0.as_str(), &ids)
    } else {
        vec![sasl::GROUP_AUTHORIZATION_FAILED; ids.len()]
    };
    let mut r = LeaveGroupResponse::default();
    if version >= 3 {
        r.members = ids
            .iter()
            .zip(&results)
            .map(|(id, code)| {
                let mut m = MemberResponse::default();
                m.member_id = s(id);
                m.error_code = *code;
                m
            })
            .collect();
    } else {
        r.error_code = results.first().copied().unwrap_or(codes::NONE);
    }
    r
}

pub(crate) async fn offset_commit(conn: &KConn, req: OffsetCommitRequest) -> OffsetCommitResponse {
    let group = req.group_id.0.as_str().to_string();
    let allowed = if !sasl::group_allowed(conn, &group) {
        sasl::GROUP_AUTHORIZATION_FAILED
    } else if !super::cluster::is_coordinator(conn, &group) {
        codes::NOT_COORDINATOR
    } else {
        conn.shared.kafka_groups.check_commit(
            &group,
            req.generation_id_or_member_epoch,
            req.member_id.as_str(),
        )
    };
    let mut r = OffsetCommitResponse::default();
    for t in &req.topics {
        let topic = t.name.0.as_str();
        let mut tr = OffsetCommitResponseTopic::default();
        tr.name = t.name.clone();
        let offsets: Vec<OffsetCommit> = t
            .partitions
            .iter()
            .filter_map(|p| {
                Some(OffsetCommit {
                    partition: u32::try_from(p.partition_index).ok()?,
                    offset: u64::try_from(p.committed_offset).ok()?,
                    metadata: p
                        .committed_metadata
                        .as_ref()
                        .map(|m| m.as_str().to_string())
                        .unwrap_or_default(),
                })
            })
            .collect();
        let code = if allowed != codes::NONE {
            allowed
        } else if !sasl::topic_allowed(conn, topic, Operation::Consume) {
            sasl::TOPIC_AUTHORIZATION_FAILED
        } else if offsets.len() != t.partitions.len() {
            codes::INVALID_REQUEST
        } else {
            // Kafka groups commit as standalone consumers of the engine's `__offsets`
            // (membership is checked above, by the Kafka coordinator).
            match conn
                .engine
                .commit_offsets_async(&group, topic, "", 0, offsets)
                .await
            {
                Ok(()) => codes::NONE,
                Err(e) => codes::of(&e),
            }
        };
        tr.partitions = t
            .partitions
            .iter()
            .map(|p| {
                let mut pr = OffsetCommitResponsePartition::default();
                pr.partition_index = p.partition_index;
                pr.error_code = code;
                pr
            })
            .collect();
        r.topics.push(tr);
    }
    r
}

/// Committed offsets of `group` in `topic` for `partitions` (all committed ones when `None`):
/// (partition, offset or -1, metadata).
fn committed(
    conn: &KConn,
    group: &str,
    topic: &str,
    partitions: Option<&[i32]>,
) -> Vec<(i32, i64, String)> {
    let known = conn.engine.fetch_offsets(group, topic).unwrap_or_default();
    let find = |p: i32| {
        known
            .iter()
            .find(|(kp, _)| i64::from(*kp) == i64::from(p))
            .map_or((p, -1, String::new()), |(_, c)| {
                (p, i64::try_from(c.offset).unwrap_or(-1), c.metadata.clone())
            })
    };
    match partitions {
        Some(ps) => ps.iter().map(|p| find(*p)).collect(),
        None => known
            .iter()
            .filter_map(|(p, _)| i32::try_from(*p).ok())
            .map(find)
            .collect(),
    }
}

/// The topics to answer for: those asked, or (null list) every topic with commits.
fn asked_topics(
    conn: &KConn,
    group: &str,
    asked: Option<Vec<(String, Vec<i32>)>>,
) -> Vec<(String, Option<Vec<i32>>)> {
    match asked {
        Some(ts) => ts.into_iter().map(|(n, ps)| (n, Some(ps))).collect(),
        None => conn
            .engine
            .topic_routes()
            .iter()
            .map(|r| r.name.to_string())
            .filter(|n| {
                conn.engine
                    .fetch_offsets(group, n)
                    .is_ok_and(|o| !o.is_empty())
            })
            .map(|n| (n, None))
            .collect(),
    }
}

pub(crate) fn offset_fetch(
    conn: &KConn,
    version: i16,
    req: &OffsetFetchRequest,
) -> OffsetFetchResponse {
    let mut r = OffsetFetchResponse::default();
    if version >= 8 {
        for g in &req.groups {
            let group = g.group_id.0.as_str();
            let asked = g.topics.as_ref().map(|ts| {
                ts.iter()
                    .map(|t| (t.name.0.as_str().to_string(), t.partition_indexes.clone()))
                    .collect()
            });
            let mut gr = OffsetFetchResponseGroup::default();
            gr.group_id = GroupId(s(group));
            if !sasl::group_allowed(conn, group) {
                gr.error_code = sasl::GROUP_AUTHORIZATION_FAILED;
                r.groups.push(gr);
                continue;
            }
            if !super::cluster::is_coordinator(conn, group) {
                gr.error_code = codes::NOT_COORDINATOR;
                r.groups.push(gr);
                continue;
            }
            for (topic, parts) in asked_topics(conn, group, asked) {
                let mut tr = OffsetFetchResponseTopics::default();
                tr.name = super::api::topic_name(&topic);
                tr.partitions = committed(conn, group, &topic, parts.as_deref())
                    .into_iter()
                    .map(|(p, o, m)| {
                        let mut pr = OffsetFetchResponsePartitions::default();
                        pr.partition_index = p;
                        pr.committed_offset = o;
                        pr.metadata = Some(s(&m));
                        pr
                    })
                    .collect();
                gr.topics.push(tr);
            }
            r.groups.push(gr);
        }
        return r;
    }
    let group = req.group_id.0.as_str();
    if !sasl::group_allowed(conn, group) {
        if version >= 2 {
            r.error_code = sasl::GROUP_AUTHORIZATION_FAILED;
        }
        return r;
    }
    if !super::cluster::is_coordinator(conn, group) {
        // v1 has no group error: it gets no offsets (clients ask the coordinator anyway).
        if version >= 2 {
            r.error_code = codes::NOT_COORDINATOR;
        }
        return r;
    }
    let asked = req.topics.as_ref().map(|ts| {
        ts.iter()
            .map(|t| (t.name.0.as_str().to_string(), t.partition_indexes.clone()))
            .collect()
    });
    for (topic, parts) in asked_topics(conn, group, asked) {
        let mut tr = OffsetFetchResponseTopic::default();
        tr.name = super::api::topic_name(&topic);
        tr.partitions = committed(conn, group, &topic, parts.as_deref())
            .into_iter()
            .map(|(p, o, m)| {
                let mut pr = OffsetFetchResponsePartition::default();
                pr.partition_index = p;
                pr.committed_offset = o;
                pr.metadata = Some(s(&m));
                pr
            })
            .collect();
        r.topics.push(tr);
    }
    r
}

pub(crate) fn describe_groups(conn: &KConn, req: &DescribeGroupsRequest) -> DescribeGroupsResponse {
    let mut r = DescribeGroupsResponse::default();
    for g in &req.groups {
        let mut d = DescribedGroup::default();
        d.group_id = g.clone();
        if !sasl::group_allowed(conn, g.0.as_str()) {
            d.error_code = sasl::GROUP_AUTHORIZATION_FAILED;
            r.groups.push(d);
            continue;
        }
        match conn.shared.kafka_groups.describe(g.0.as_str()) {
            Some(x) => {
                d.group_state = s(x.state);
                d.protocol_type = s(&x.protocol_type);
                d.protocol_data = s(&x.protocol);
                d.members = x
                    .members
                    .into_iter()
                    .map(|(id, client, host, md, asg)| {
                        let mut m = DescribedGroupMember::default();
                        m.member_id = s(&id);
                        m.client_id = s(&client);
                        m.client_host = s(&host);
                        m.member_metadata = md;
                        m.member_assignment = asg;
                        m
                    })
                    .collect();
            }
            None => d.group_state = s("Dead"),
        }
        r.groups.push(d);
    }
    r
}

pub(crate) fn list_groups(
    conn: &KConn,
    version: i16,
    req: &ListGroupsRequest,
) -> ListGroupsResponse {
    let mut r = ListGroupsResponse::default();
    for (name, protocol_type, state) in conn.shared.kafka_groups.list() {
        if !sasl::group_allowed(conn, &name) {
            continue;
        }
        if version >= 4
            && !req.states_filter.is_empty()
            && !req.states_filter.iter().any(|f| f.as_str() == state)
        {
            continue;
        }
        let mut g = ListedGroup::default();
        g.group_id = GroupId(s(&name));
        g.protocol_type = s(&protocol_type);
        if version >= 4 {
            g.group_state = s(state);
        }
        if version >= 5 {
            g.group_type = s("classic");
        }
        r.groups.push(g);
    }
    r
}
