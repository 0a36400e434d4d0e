//! Produce: each partition's Kafka record batch is checked (Kafka CRC32C, shape; never
//! decompressed), wrapped as a [`body_kind::KAFKA_V2`] Shardline batch and enqueued on its
//! owning shard before the next request is read; the acks are awaited on a task of their own.
//!
//! acks: 0 -> `none` (no response at all), 1 -> `leader`, -1 -> `all` (committed on a majority
//! of a replicated partition's replicas; `durable` on a one-replica partition), see
//! [`acks_of`]. On a cluster a node that does not lead the partition answers
//! NOT_LEADER_OR_FOLLOWER for it (the engine's `NotLeader`), and the client refreshes Metadata.
//!
//! [`body_kind::KAFKA_V2`]: shardline_engine::batch::body_kind::KAFKA_V2

use std::rc::Rc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ProduceRequest, ProduceResponse,
    produce_response::{PartitionProduceResponse, TopicProduceResponse},
};
use kafka_protocol::protocol::StrBytes;
use shardline_engine::util::join_all;
use shardline_engine::{Acks, PendingAck, rt};
use shardline_protocol::acl::Operation;

use super::{Call, Close, InFlight, KConn, Reply, answer, codes, frame};

/// Kafka's acks as the engine's level; `None` for a value Kafka does not define.
pub(crate) fn acks_of(acks: i16) -> Option<Acks> {
    match acks {
        0 => Some(Acks::None),
        1 => Some(Acks::Leader),
        // `all`: committed on a majority of a replicated partition's replicas; on a partition
        // with one replica the engine treats it as `durable` (fsynced).
        -1 => Some(Acks::All),
        _ => None,
    }
}

/// One partition's outcome before its ack: enqueued, or refused with a Kafka error.
enum Submitted {
    Pending(PendingAck),
    Failed(i16, String),
}

/// Starts a produce; see the module doc. `Ok(false)` for acks=0 (no response).
pub(crate) async fn produce(
    conn: &Rc<KConn>,
    call: Call,
    resp_header: i16,
    req: ProduceRequest,
    reply: Reply,
) -> Result<bool, Close> {
    let acks = acks_of(req.acks);
    let parts = req.topic_data.iter().map(|t| t.partition_data.len()).sum();
    let mut submitted: Vec<(usize, i32, Submitted)> = Vec::with_capacity(parts);
    // The owning shard of each partition, while the connection may follow them (handoff.rs).
    let mut shards = Vec::new();
    for (ti, t) in req.topic_data.iter().enumerate() {
        let name = t.name.0.as_str();
        if conn.shared.cfg.auto_create_topics
            && matches!(
                conn.engine.route(name),
                Err(shardline_engine::Error::UnknownTopic(_))
            )
        {
            let _ = super::api::auto_create(conn, name).await;
        }
        for p in &t.partition_data {
            let s = match (acks, u32::try_from(p.index), &p.records) {
                (None, _, _) => Submitted::Failed(codes::INVALID_REQUIRED_ACKS, "acks".into()),
                (_, Err(_), _) => {
                    Submitted::Failed(codes::UNKNOWN_TOPIC_OR_PARTITION, "partition".into())
                }
                (_, _, None) => Submitted::Failed(codes::INVALID_RECORD, "no records".into()),
                _ if !super::sasl::topic_allowed(conn, name, Operation::Produce) => {
                    Submitted::Failed(super::sasl::TOPIC_AUTHORIZATION_FAILED, "denied".into())
                }
                (Some(acks), Ok(partition), Some(records)) => {
                    if conn.follow.watching() {
                        shards.extend(conn.engine.shard_of(name, partition).ok());
                    }
                    submit(conn, name, partition, records, acks).await
                }
            };
            submitted.push((ti, p.index, s));
        }
    }
    conn.follow.produced(conn.shard, shards.into_iter());
    if acks == Some(Acks::None) {
        return Ok(false);
    }
    let timeout = Duration::from_millis(u64::try_from(req.timeout_ms).unwrap_or(0).max(1));
    let inflight = InFlight::new(&conn.shared);
    rt::spawn_local(async move {
        let _inflight = inflight;
        let waits = submitted.into_iter().map(|(ti, index, s)| async move {
            let mut pr = PartitionProduceResponse::default();
            pr.index = index;
            pr.base_offset = -1;
            pr.log_append_time_ms = -1;
            pr.log_start_offset = -1;
            let outcome = match s {
                Submitted::Failed(code, m) => Err((code, m)),
                Submitted::Pending(ack) => match rt::timeout(timeout, ack.wait()).await {
                    Some(Ok(Some(a))) => Ok(a.base_offset),
                    Some(Ok(None)) => Err((codes::UNKNOWN_SERVER_ERROR, "no ack".into())),
                    Some(Err(e)) => Err((codes::of(&e), e.to_string())),
                    None => Err((codes::REQUEST_TIMED_OUT, "timed out".into())),
                },
            };
            match outcome {
                Ok(base) => pr.base_offset = i64::try_from(base).unwrap_or(i64::MAX),
                Err((code, message)) => {
                    pr.error_code = code;
                    if call.version >= 8 {
                        pr.error_message = Some(StrBytes::from_string(message));
                    }
                }
            }
            (ti, pr)
        });
        let results = join_all(waits.collect()).await;
        let mut r = ProduceResponse::default();
        r.responses = req
            .topic_data
            .iter()
            .map(|t| {
                let mut tr = TopicProduceResponse::default();
                tr.name = t.name.clone();
                tr.partition_responses = Vec::with_capacity(t.partition_data.len());
                tr
            })
            .collect();
        for (ti, pr) in results {
            if let Some(tr) = r.responses.get_mut(ti) {
                tr.partition_responses.push(pr);
            }
        }
        if let Ok(f) = frame(call, resp_header, &r) {
            answer(&reply, f);
        }
    });
    Ok(true)
}

/// Checks, wraps and enqueues one partition's batch on its owning shard.
async fn submit(
    conn: &Rc<KConn>,
    topic: &str,
    partition: u32,
    records: &Bytes,
    acks: Acks,
) -> Submitted {
    // One CRC pass and one copy; the engine does not validate the result again.
    let batch = match shardline_engine::batch::kafka::wrap_validated(records) {
        Ok(b) => b,
        Err(e) => return Submitted::Failed(codes::CORRUPT_MESSAGE, e.to_string()),
    };
    match conn
        .engine
        .submit_validated(topic, partition, batch, acks)
        .await
    {
        Ok(p) => Submitted::Pending(p),
        Err(e) => Submitted::Failed(codes::of(&e), e.to_string()),
    }
}

/// Produce v0-2: advertised (librdkafka 2.0 compresses only when it sees Produce v0, as with
/// Kafka 4.0) but refused: every partition gets UNSUPPORTED_VERSION. `body` starts after the
/// correlation id (request header v1: the client id comes next).
pub(crate) fn refuse_old(call: Call, mut body: Bytes, reply: &Reply) -> Result<bool, Close> {
    let bad = || Close::Frame("malformed produce v0-2 request".into());
    let b = &mut body;
    skip_string(b).ok_or_else(bad)?; // client id
    let acks = get_i16(b).ok_or_else(bad)?;
    get_i32(b).ok_or_else(bad)?; // timeout
    let topics = get_i32(b).ok_or_else(bad)?;
    let mut out = BytesMut::new();
    out.put_i32(0);
    out.put_i32(call.correlation_id);
    out.put_i32(topics.max(0));
    for _ in 0..topics.max(0) {
        let name = get_string(b).ok_or_else(bad)?;
        super::api::put_str(&mut out, &name);
        let parts = get_i32(b).ok_or_else(bad)?;
        out.put_i32(parts.max(0));
        for _ in 0..parts.max(0) {
            let index = get_i32(b).ok_or_else(bad)?;
            let len = get_i32(b).ok_or_else(bad)?;
            if len > 0 {
                let len = usize::try_from(len).map_err(|_| bad())?;
                if b.remaining() < len {
                    return Err(bad());
                }
                b.advance(len);
            }
            out.put_i32(index);
            out.put_i16(codes::UNSUPPORTED_VERSION);
            out.put_i64(-1);
            if call.version >= 2 {
                out.put_i64(-1);
            }
        }
    }
    if call.version >= 1 {
        out.put_i32(0);
    }
    if acks == 0 {
        return Ok(false);
    }
    let size = i32::try_from(out.len() - 4).map_err(|_| bad())?;
    out[..4].copy_from_slice(&size.to_be_bytes());
    answer(reply, out.freeze());
    Ok(true)
}

fn get_i16(b: &mut Bytes) -> Option<i16> {
    (b.remaining() >= 2).then(|| b.get_i16())
}
fn get_i32(b: &mut Bytes) -> Option<i32> {
    (b.remaining() >= 4).then(|| b.get_i32())
}
fn get_string(b: &mut Bytes) -> Option<Bytes> {
    let n = usize::try_from(get_i16(b)?).ok()?;
    (b.remaining() >= n).then(|| b.split_to(n))
}
fn skip_string(b: &mut Bytes) -> Option<()> {
    let n = get_i16(b)?;
    if n > 0 {
        let n = usize::try_from(n).ok()?;
        if b.remaining() < n {
            return None;
        }
        b.advance(n);
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_map_to_engine_levels() {
        assert_eq!(acks_of(0), Some(Acks::None));
        assert_eq!(acks_of(1), Some(Acks::Leader));
        assert_eq!(acks_of(-1), Some(Acks::All));
        assert_eq!(acks_of(2), None);
    }

    #[test]
    fn produce_v0_to_v2_is_answered_unsupported_per_partition() {
        let mut req = BytesMut::new();
        req.put_i16(-1); // null client id
        req.put_i16(1); // acks
        req.put_i32(1000);
        req.put_i32(1);
        req.put_i16(1);
        req.put_slice(b"t");
        req.put_i32(1);
        req.put_i32(3);
        req.put_i32(2);
        req.put_slice(b"xx");
        let (tx, rx) = flume::bounded(1);
        let call = Call {
            api_key: 0,
            version: 2,
            correlation_id: 7,
        };
        assert!(refuse_old(call, req.clone().freeze(), &tx).unwrap());
        let mut r = rx.try_recv().unwrap();
        assert_eq!(usize::try_from(r.get_i32()).unwrap(), r.remaining());
        assert_eq!(r.get_i32(), 7);
        assert_eq!(r.get_i32(), 1);
        assert_eq!(get_string(&mut r).unwrap(), Bytes::from_static(b"t"));
        assert_eq!(r.get_i32(), 1);
        assert_eq!(r.get_i32(), 3);
        assert_eq!(r.get_i16(), codes::UNSUPPORTED_VERSION);
        // Truncated requests close the connection instead of panicking.
        for n in 0..req.len() {
            assert!(refuse_old(call, req.clone().freeze().slice(..n), &tx).is_err());
        }
    }
}
