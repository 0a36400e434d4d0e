//! Fetch: each partition is read on its owning shard (in place when it is this shard) and
//! served as Kafka record batches: Kafka-kind batches as stored with only the base offset
//! patched, native batches converted on this read (`shardline_format::kafka::to_kafka`).
//!
//! On a cluster only the partition's leader serves it (`cluster::read_check`): another node
//! answers NOT_LEADER_OR_FOLLOWER, and a `current_leader_epoch` (v9+) other than the leader's
//! FENCED_LEADER_EPOCH or UNKNOWN_LEADER_EPOCH, so that the client refreshes its Metadata.
//!
//! Long poll: when the first read holds fewer than `min_bytes`, the partitions are read again
//! with the engine's own long poll (`max_wait`, woken by appends: no busy loop) and the
//! response goes out when one of them has data or `max_wait_ms` has passed. Fetch sessions
//! are refused (session id 0): clients then send full fetch requests, as they must.

use std::rc::Rc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{
    FetchRequest, FetchResponse,
    fetch_response::{FetchableTopicResponse, PartitionData},
};
use shardline_engine::batch::{self, BatchHeader};
use shardline_engine::util::join_all;
use shardline_engine::{Engine, FetchRequest as EngineFetch, rt};
use shardline_protocol::acl::Operation;

use super::{Call, InFlight, KConn, Reply, answer, codes, frame};

/// Longest long poll honoured (clients ask for 500 ms by default).
const MAX_WAIT_CAP: Duration = Duration::from_secs(30);

/// One partition asked for.
#[derive(Clone)]
struct Part {
    topic_index: usize,
    topic: String,
    partition: i32,
    offset: i64,
    max_bytes: usize,
    /// Refused by the ACLs: answered TOPIC_AUTHORIZATION_FAILED.
    denied: bool,
    /// The client's `current_leader_epoch` (v9+; -1: not sent).
    leader_epoch: i32,
    /// On a cluster, not readable here (NOT_LEADER_OR_FOLLOWER, a fenced or unknown leader
    /// epoch: `cluster::read_check`); `NONE` otherwise.
    refused: i16,
}

/// One partition's answer.
struct Read {
    error_code: i16,
    high_watermark: i64,
    log_start: i64,
    records: Bytes,
}

pub(crate) fn fetch(
    conn: &Rc<KConn>,
    call: Call,
    resp_header: i16,
    req: FetchRequest,
    reply: Reply,
) {
    let conn = conn.clone();
    let inflight = InFlight::new(&conn.shared);
    rt::spawn_local(async move {
        let _inflight = inflight;
        let request_max = usize::try_from(req.max_bytes).unwrap_or(0).max(1);
        let mut parts: Vec<Part> = req
            .topics
            .iter()
            .enumerate()
            .flat_map(|(ti, t)| {
                let denied =
                    !super::sasl::topic_allowed(&conn, t.topic.0.as_str(), Operation::Consume);
                t.partitions.iter().map(move |p| Part {
                    denied,
                    leader_epoch: p.current_leader_epoch,
                    refused: codes::NONE,
                    topic_index: ti,
                    topic: t.topic.0.as_str().to_string(),
                    partition: p.partition,
                    offset: p.fetch_offset,
                    max_bytes: usize::try_from(p.partition_max_bytes)
                        .unwrap_or(0)
                        .clamp(1, request_max),
                })
            })
            .collect();
        for p in &mut parts {
            if !p.denied {
                p.refused =
                    super::cluster::read_check(&conn, &p.topic, p.partition, p.leader_epoch)
                        .await
                        .0;
            }
        }
        let max_wait =
            Duration::from_millis(u64::try_from(req.max_wait_ms).unwrap_or(0)).min(MAX_WAIT_CAP);
        let min_bytes = usize::try_from(req.min_bytes).unwrap_or(0);
        let mut reads = read_all(&conn.engine, &parts, Duration::ZERO).await;
        let bytes = |reads: &[Read]| reads.iter().map(|r| r.records.len()).sum::<usize>();
        let failed = reads.iter().any(|r| r.error_code != codes::NONE);
        if !failed && !max_wait.is_zero() && bytes(&reads) < min_bytes.max(1) {
            if parts.len() == 1 {
                reads = read_all(&conn.engine, &parts, max_wait).await;
            } else {
                wait_any(&conn.engine, &parts, max_wait).await;
                reads = read_all(&conn.engine, &parts, Duration::ZERO).await;
            }
        }
        let mut r = FetchResponse::default();
        r.responses = req
            .topics
            .iter()
            .map(|t| {
                let mut tr = FetchableTopicResponse::default();
                tr.topic = t.topic.clone();
                tr
            })
            .collect();
        for (p, read) in parts.iter().zip(reads) {
            let mut pd = PartitionData::default();
            pd.partition_index = p.partition;
            pd.error_code = read.error_code;
            pd.high_watermark = read.high_watermark;
            pd.last_stable_offset = read.high_watermark;
            pd.log_start_offset = read.log_start;
            pd.records = Some(read.records);
            if let Some(tr) = r.responses.get_mut(p.topic_index) {
                tr.partitions.push(pd);
            }
        }
        if let Ok(f) = frame(call, resp_header, &r) {
            answer(&reply, f);
        }
    });
}

/// Reads every partition (concurrently, each on its owning shard).
async fn read_all(engine: &Engine, parts: &[Part], max_wait: Duration) -> Vec<Read> {
    join_all(
        parts
            .iter()
            .map(|p| read_one(engine, p, max_wait))
            .collect(),
    )
    .await
}

/// Long-polls every partition and returns when one has data (or `max_wait` passed). The
/// polls still waiting end on their own at `max_wait`.
async fn wait_any(engine: &Engine, parts: &[Part], max_wait: Duration) {
    let (tx, rx) = flume::bounded::<()>(parts.len().max(1));
    for p in parts {
        let (engine, p, tx) = (engine.clone(), p.clone(), tx.clone());
        rt::spawn_local(async move {
            if !read_one(&engine, &p, max_wait).await.records.is_empty() {
                let _ = tx.try_send(());
            }
        });
    }
    drop(tx);
    let _ = rt::timeout(max_wait, rx.recv_async()).await;
}

fn failed(error_code: i16) -> Read {
    Read {
        error_code,
        high_watermark: -1,
        log_start: -1,
        records: Bytes::new(),
    }
}

async fn read_one(engine: &Engine, p: &Part, max_wait: Duration) -> Read {
    if p.denied {
        return failed(super::sasl::TOPIC_AUTHORIZATION_FAILED);
    }
    if p.refused != codes::NONE {
        return failed(p.refused);
    }
    let (Ok(partition), Ok(offset)) = (u32::try_from(p.partition), u64::try_from(p.offset)) else {
        return failed(codes::OFFSET_OUT_OF_RANGE);
    };
    let req = EngineFetch {
        topic: p.topic.clone(),
        partition,
        offset,
        max_bytes: p.max_bytes,
        max_records: usize::MAX,
        max_wait,
    };
    let mut fetched = match engine.fetch_here(req).await {
        Ok(f) => f,
        Err(e) => return failed(codes::of(&e)),
    };
    if let Some(opener) = crate::encryption::Opener::for_partition(engine, &p.topic, partition) {
        match opener.open(&fetched.chunks) {
            Ok(chunks) => fetched.chunks = chunks,
            Err(_) => return failed(codes::KAFKA_STORAGE_ERROR),
        }
    }
    match kafka_records(&fetched.chunks, offset) {
        Ok(records) => Read {
            error_code: codes::NONE,
            high_watermark: i64::try_from(fetched.high_watermark).unwrap_or(i64::MAX),
            log_start: i64::try_from(fetched.log_start).unwrap_or(0),
            records,
        },
        Err(e) => {
            tracing::warn!(topic = %p.topic, partition, error = %e, "kafka fetch: batch not servable");
            failed(codes::CORRUPT_MESSAGE)
        }
    }
}

/// The Kafka form of fetched Shardline batches; batches wholly before `from` are skipped.
pub(crate) fn kafka_records(chunks: &[Bytes], from: u64) -> batch::Result<Bytes> {
    let mut out = BytesMut::with_capacity(chunks.iter().map(Bytes::len).sum());
    for chunk in chunks {
        for b in batch::split_batches(chunk)? {
            let h = BatchHeader::parse(b)?;
            if h.next_offset() <= from {
                continue;
            }
            batch::kafka::to_kafka(b, &h, &mut out)?;
        }
    }
    Ok(out.freeze())
}
