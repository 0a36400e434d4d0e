//! Apis 15..=21 (idempotent-producer identities, consumer groups, committed offsets): requests
//! in, engine calls, responses out. Group calls take a short in-memory lock and return; a
//! commit awaits its durable append; InitProducer may fsync its id block, so it runs on a
//! helper thread (nothing on a shard thread blocks).

use shardline_engine::groups::{Committed, GroupDescription, MemberAssignment, OffsetCommit};
use shardline_engine::producer_ids::ProducerIdentity;
use shardline_engine::{Engine, Error};

use crate::protocol::{
    CommittedOffset, DescribeGroupResponse, GroupAssignment, GroupMember, InitProducerResponse,
    LeaveGroupResponse, OffsetCommitResponse, OffsetFetchResponse, Request, Response,
};

fn assignment(a: MemberAssignment) -> GroupAssignment {
    GroupAssignment {
        member_id: a.member_id,
        generation: a.generation,
        topic: a.topic,
        partitions: a.partitions,
        pending: a.pending,
        heartbeat_interval_ms: a.heartbeat_interval_ms,
    }
}

fn committed(offsets: Vec<(u32, Committed)>) -> Vec<CommittedOffset> {
    offsets
        .into_iter()
        .map(|(partition, c)| CommittedOffset {
            partition,
            offset: c.offset,
            metadata: c.metadata,
            commit_time_ms: c.commit_time_ms,
        })
        .collect()
}

fn described(d: GroupDescription) -> DescribeGroupResponse {
    DescribeGroupResponse {
        group: d.group,
        topic: d.topic,
        generation: d.generation,
        coordinator_slot: d.coordinator_slot,
        members: d
            .members
            .into_iter()
            .map(|m| GroupMember {
                member_id: m.member_id,
                client_id: m.client_id,
                assigned: m.assigned,
                owned: m.owned,
                last_seen_ms_ago: m.last_seen_ms_ago,
            })
            .collect(),
        offsets: committed(d.offsets),
    }
}

async fn init_producer(
    engine: &Engine,
    resume: Option<ProducerIdentity>,
) -> Result<Response, Error> {
    let engine = engine.clone();
    let (tx, rx) = flume::bounded(1);
    std::thread::Builder::new()
        .name("shardline-producer-ids".into())
        .spawn(move || {
            let _ = tx.send(engine.init_producer(resume));
        })
        .map_err(|e| Error::Runtime(format!("cannot start a helper thread: {e}")))?;
    let id = rx
        .recv_async()
        .await
        .map_err(|_| Error::Runtime("producer-id thread died".into()))??;
    Ok(Response::InitProducer(InitProducerResponse {
        producer_id: id.producer_id,
        epoch: id.epoch,
    }))
}

/// Serves one request of apis 15..=21.
pub(super) async fn handle(engine: &Engine, request: Request) -> Result<Response, Error> {
    match request {
        Request::InitProducer(r) => {
            let resume = (r.producer_id != 0).then_some(ProducerIdentity {
                producer_id: r.producer_id,
                epoch: r.epoch,
            });
            init_producer(engine, resume).await
        }
        Request::JoinGroup(r) => engine
            .join_group(&r.group, &r.topic, &r.client_id, r.session_timeout_ms)
            .map(|a| Response::JoinGroup(assignment(a))),
        Request::Heartbeat(r) => engine
            .heartbeat_group(&r.group, &r.member_id, &r.owned)
            .map(|a| Response::Heartbeat(assignment(a))),
        Request::LeaveGroup(r) => engine
            .leave_group(&r.group, &r.member_id)
            .map(|()| Response::LeaveGroup(LeaveGroupResponse {})),
        Request::OffsetCommit(r) => {
            let offsets = r
                .offsets
                .into_iter()
                .map(|o| OffsetCommit {
                    partition: o.partition,
                    offset: o.offset,
                    metadata: o.metadata,
                })
                .collect();
            engine
                .commit_offsets_async(&r.group, &r.topic, &r.member_id, r.generation, offsets)
                .await
                .map(|()| Response::OffsetCommit(OffsetCommitResponse {}))
        }
        Request::OffsetFetch(r) => engine.fetch_offsets(&r.group, &r.topic).map(|o| {
            Response::OffsetFetch(OffsetFetchResponse {
                offsets: committed(o),
            })
        }),
        Request::DescribeGroup(r) => engine
            .describe_group(&r.group)
            .map(|d| Response::DescribeGroup(described(d))),
        _ => Err(Error::InvalidArgument(
            "not a messaging-semantics request".into(),
        )),
    }
}
