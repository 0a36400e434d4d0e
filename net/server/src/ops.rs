//! Operations apis 32..=34 (docs/protocol.md): resetting a group's offsets, purging a work
//! queue, listing the groups. Requests in, engine calls, responses out; the engine calls are
//! futures (they wait for durable appends), so nothing blocks the shard thread.

use shardline_engine::groups::ResetTarget;
use shardline_engine::{Engine, Error};

use crate::protocol::{
    GROUPS_LISTED_MAX, ListGroupsResponse, ListedGroup, OffsetResetTarget, PartitionOffsetReset,
    QueuePurgeResponse, QueuePurgedPartition, Request, ResetOffsetsResponse, Response,
};

fn target(t: OffsetResetTarget) -> ResetTarget {
    match t {
        OffsetResetTarget::Earliest => ResetTarget::Earliest,
        OffsetResetTarget::Latest => ResetTarget::Latest,
        OffsetResetTarget::Offset(o) => ResetTarget::Offset(o),
        OffsetResetTarget::TimestampMs(ms) => ResetTarget::TimestampMs(ms),
    }
}

/// Serves one request of apis 32..=34.
pub(super) async fn handle(engine: &Engine, request: Request) -> Result<Response, Error> {
    match request {
        Request::ResetOffsets(r) => {
            let done = engine
                .reset_group_offsets_async(
                    &r.group,
                    &r.topic,
                    r.partition,
                    target(r.target),
                    r.dry_run,
                )
                .await?;
            Ok(Response::ResetOffsets(ResetOffsetsResponse {
                partitions: done
                    .into_iter()
                    .map(|x| PartitionOffsetReset {
                        partition: x.partition,
                        previous: x.previous,
                        offset: x.offset,
                    })
                    .collect(),
            }))
        }
        Request::QueuePurge(r) => {
            let done = engine.queue_purge_async(&r.topic).await?;
            Ok(Response::QueuePurge(QueuePurgeResponse {
                partitions: done
                    .into_iter()
                    .map(|x| QueuePurgedPartition {
                        partition: x.partition,
                        purged: x.purged,
                        purged_until: x.purged_until,
                    })
                    .collect(),
            }))
        }
        Request::ListGroups(_) => {
            let all = engine.list_groups()?;
            let truncated = all.len() > GROUPS_LISTED_MAX;
            Ok(Response::ListGroups(ListGroupsResponse {
                groups: all
                    .into_iter()
                    .take(GROUPS_LISTED_MAX)
                    .map(|g| ListedGroup {
                        group: g.group,
                        topics: g.topics,
                        members: g.members,
                        generation: g.generation,
                    })
                    .collect(),
                truncated,
            }))
        }
        _ => Err(Error::InvalidArgument("not an operations request".into())),
    }
}
