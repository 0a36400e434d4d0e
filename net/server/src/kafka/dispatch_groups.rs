//! Dispatch of the group APIs (`group_api.rs`): each answered on a task of its own, in the
//! connection's response order like every request.

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::messages::{
    ApiKey, DescribeConfigsRequest, DescribeGroupsRequest, FindCoordinatorRequest,
    HeartbeatRequest, JoinGroupRequest, LeaveGroupRequest, ListGroupsRequest, OffsetCommitRequest,
    OffsetFetchRequest, SaslAuthenticateRequest, SaslHandshakeRequest, SyncGroupRequest,
};
use kafka_protocol::protocol::{Decodable, Encodable};
use shardline_engine::rt;

use super::api::bad;
use super::{Call, Close, InFlight, KConn, Reply, answer, frame, group_api, sasl};

/// Answers `frame` (encoded) through `reply` when the handler's future completes.
pub(crate) fn spawn_answer<M, F>(conn: &Rc<KConn>, call: Call, reply: Reply, fut: F)
where
    M: Encodable + 'static,
    F: std::future::Future<Output = M> + 'static,
{
    let inflight = InFlight::new(&conn.shared);
    let header = ApiKey::try_from(call.api_key)
        .map(|k| k.response_header_version(call.version))
        .unwrap_or(0);
    rt::spawn_local(async move {
        let _inflight = inflight;
        let r = fut.await;
        if let Ok(f) = frame(call, header, &r) {
            answer(&reply, f);
        }
    });
}

pub(crate) fn dispatch(
    conn: &Rc<KConn>,
    call: Call,
    key: ApiKey,
    client_id: String,
    mut body: Bytes,
    reply: Reply,
) -> Result<bool, Close> {
    let v = call.version;
    let b = &mut body;
    let e = |e| bad(call.api_key, e);
    let c = conn.clone();
    match key {
        ApiKey::FindCoordinator => {
            let req = FindCoordinatorRequest::decode(b, v).map_err(e)?;
            spawn_answer(conn, call, reply, async move {
                group_api::find_coordinator(&c, v, &req)
            });
        }
        ApiKey::JoinGroup => {
            let req = JoinGroupRequest::decode(b, v).map_err(e)?;
            spawn_answer(conn, call, reply, async move {
                group_api::join_group(&c, v, client_id, req).await
            });
        }
        ApiKey::SyncGroup => {
            let req = SyncGroupRequest::decode(b, v).map_err(e)?;
            spawn_answer(conn, call, reply, async move {
                group_api::sync_group(&c, v, req).await
            });
        }
        ApiKey::Heartbeat => {
            let req = HeartbeatRequest::decode(b, v).map_err(e)?;
            spawn_answer(
                conn,
                call,
                reply,
                async move { group_api::heartbeat(&c, &req) },
            );
        }
        ApiKey::LeaveGroup => {
            let req = LeaveGroupRequest::decode(b, v).map_err(e)?;
            spawn_answer(conn, call, reply, async move {
                group_api::leave_group(&c, v, &req)
            });
        }
        ApiKey::OffsetCommit => {
            let req = OffsetCommitRequest::decode(b, v).map_err(e)?;
            spawn_answer(conn, call, reply, async move {
                group_api::offset_commit(&c, req).await
            });
        }
        ApiKey::OffsetFetch => {
            let req = OffsetFetchRequest::decode(b, v).map_err(e)?;
            spawn_answer(conn, call, reply, async move {
                group_api::offset_fetch(&c, v, &req)
            });
        }
        ApiKey::DescribeGroups => {
            let req = DescribeGroupsRequest::decode(b, v).map_err(e)?;
            spawn_answer(conn, call, reply, async move {
                group_api::describe_groups(&c, &req)
            });
        }
        ApiKey::ListGroups => {
            let req = ListGroupsRequest::decode(b, v).map_err(e)?;
            spawn_answer(conn, call, reply, async move {
                group_api::list_groups(&c, v, &req)
            });
        }
        ApiKey::SaslHandshake => {
            let req = SaslHandshakeRequest::decode(b, v).map_err(e)?;
            spawn_answer(
                conn,
                call,
                reply,
                async move { sasl::handshake(&c, v, &req) },
            );
        }
        ApiKey::SaslAuthenticate => {
            let req = SaslAuthenticateRequest::decode(b, v).map_err(e)?;
            spawn_answer(conn, call, reply, async move {
                sasl::authenticate(&c, &req).await
            });
        }
        ApiKey::DescribeConfigs => {
            let req = DescribeConfigsRequest::decode(b, v).map_err(e)?;
            spawn_answer(conn, call, reply, async move {
                super::configs::describe_configs(&c, v, req).await
            });
        }
        _ => return Err(Close::Frame(format!("api {} not served", call.api_key))),
    }
    Ok(true)
}
