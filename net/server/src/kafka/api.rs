//! Request dispatch and the small APIs: ApiVersions, Metadata, ListOffsets, CreateTopics,
//! DeleteTopics, InitProducerId. Produce is `produce.rs`, Fetch `fetch.rs`.

use std::rc::Rc;
use std::sync::atomic::Ordering;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, BrokerId, CreateTopicsRequest, CreateTopicsResponse,
    DeleteTopicsRequest, DeleteTopicsResponse, InitProducerIdRequest, InitProducerIdResponse,
    ListOffsetsRequest, ListOffsetsResponse, MetadataRequest, MetadataResponse, ProducerId,
    RequestHeader, TopicName,
    api_versions_response::ApiVersion,
    create_topics_response::CreatableTopicResult,
    delete_topics_response::DeletableTopicResult,
    list_offsets_request::ListOffsetsPartition,
    list_offsets_response::{ListOffsetsPartitionResponse, ListOffsetsTopicResponse},
    metadata_response::{MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic},
};
use kafka_protocol::protocol::{Decodable, StrBytes};
use shardline_engine::batch::kafka as batch_kafka;
use shardline_engine::{OffsetSpec, TopicConfig};
use shardline_protocol::acl::Operation;

use super::dispatch_groups::spawn_answer;
use super::{Call, Close, KConn, Reply, answer, codes, frame, off_shard};

/// The APIs and versions served, advertised exactly so in ApiVersions (docs/kafka.md).
/// Produce advertises 0 (librdkafka 2.0 only compresses when it sees Produce v0, as Kafka 4.0
/// does) and answers v0-2 with UNSUPPORTED_VERSION.
pub(crate) const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 0, 9),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 2, 5),
    (ApiKey::DeleteTopics, 1, 4),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::FindCoordinator, 0, 3),
    (ApiKey::JoinGroup, 0, 7),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 4),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 8),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::ListGroups, 0, 4),
    (ApiKey::SaslHandshake, 0, 1),
    (ApiKey::SaslAuthenticate, 0, 1),
    (ApiKey::DescribeConfigs, 1, 4),
];

/// Produce versions advertised but refused (removed by KIP-896; the codec cannot read them).
const PRODUCE_DECODABLE_MIN: i16 = 3;

fn supported(key: ApiKey, version: i16) -> bool {
    SUPPORTED
        .iter()
        .any(|(k, min, max)| *k == key && (*min..=*max).contains(&version))
}

/// Decodes a request's header and body and starts answering it. `Ok(true)` when an answer
/// will be put in `reply` (acks=0 produces get none); `Err` closes the connection.
pub(crate) async fn dispatch(
    conn: &Rc<KConn>,
    call: Call,
    mut frame_bytes: Bytes,
    reply: Reply,
) -> Result<bool, Close> {
    let Ok(key) = ApiKey::try_from(call.api_key) else {
        return Err(Close::Frame(format!("unknown api key {}", call.api_key)));
    };
    if !super::sasl::admitted(conn, call.api_key) {
        return Err(Close::Frame(format!(
            "api {} before SASL authentication",
            call.api_key
        )));
    }
    if key == ApiKey::ApiVersions {
        // Any version: an unsupported one gets error 35 and the list in a v0 body.
        answer(&reply, api_versions(call)?);
        return Ok(true);
    }
    if key == ApiKey::Produce && (0..PRODUCE_DECODABLE_MIN).contains(&call.version) {
        frame_bytes.advance(8);
        return super::produce::refuse_old(call, frame_bytes, &reply);
    }
    if !supported(key, call.version) {
        return Err(Close::Frame(format!(
            "unsupported version {} of api {}",
            call.version, call.api_key
        )));
    }
    let header_version = key.request_header_version(call.version);
    let header = RequestHeader::decode(&mut frame_bytes, header_version)
        .map_err(|e| Close::Frame(format!("request header: {e}")))?;
    let body = &mut frame_bytes;
    let resp_header = key.response_header_version(call.version);
    let (v, c) = (call.version, conn.clone());
    let e = |e| bad(call.api_key, e);
    match key {
        ApiKey::Produce => {
            let req = Decodable::decode(body, v).map_err(e)?;
            return super::produce::produce(conn, call, resp_header, req, reply).await;
        }
        ApiKey::Fetch => {
            let req = Decodable::decode(body, v).map_err(e)?;
            super::fetch::fetch(conn, call, resp_header, req, reply);
        }
        ApiKey::Metadata => {
            let req = MetadataRequest::decode(body, v).map_err(e)?;
            spawn_answer(
                conn,
                call,
                reply,
                async move { metadata(&c, call, req).await },
            );
        }
        ApiKey::ListOffsets => {
            let req = ListOffsetsRequest::decode(body, v).map_err(e)?;
            spawn_answer(conn, call, reply, async move {
                list_offsets(&c, call, req).await
            });
        }
        ApiKey::CreateTopics => {
            let req = CreateTopicsRequest::decode(body, v).map_err(e)?;
            spawn_answer(conn, call, reply, async move {
                create_topics(&c, call, req).await
            });
        }
        ApiKey::DeleteTopics => {
            let req = DeleteTopicsRequest::decode(body, v).map_err(e)?;
            spawn_answer(conn, call, reply, async move {
                delete_topics(&c, call, req).await
            });
        }
        ApiKey::InitProducerId => {
            let req = InitProducerIdRequest::decode(body, v).map_err(e)?;
            spawn_answer(conn, call, reply, async move {
                init_producer_id(&c, &req).await
            });
        }
        _ => {
            let client_id = header
                .client_id
                .as_ref()
                .map(|c| c.as_str().to_string())
                .unwrap_or_default();
            return super::dispatch_groups::dispatch(
                conn,
                call,
                key,
                client_id,
                frame_bytes,
                reply,
            );
        }
    }
    Ok(true)
}

/// A request body that does not decode: the connection is closed.
pub(crate) fn bad(api_key: i16, e: impl std::fmt::Display) -> Close {
    Close::Frame(format!("api {api_key}: {e}"))
}

/// ApiVersions: the response header is v0 for every version (KIP-511); an unsupported
/// version gets UNSUPPORTED_VERSION and the list in a v0 body, and the client retries lower.
fn api_versions(call: Call) -> Result<Bytes, Close> {
    let mut r = ApiVersionsResponse::default();
    r.api_keys = SUPPORTED
        .iter()
        .map(|(k, min, max)| {
            let mut v = ApiVersion::default();
            v.api_key = *k as i16;
            v.min_version = *min;
            v.max_version = *max;
            v
        })
        .collect();
    let mut call = call;
    if !supported(ApiKey::ApiVersions, call.version) {
        r.error_code = codes::UNSUPPORTED_VERSION;
        call.version = 0;
    }
    frame(call, 0, &r)
}

pub(crate) fn topic_name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

/// The host and port this node advertises (Metadata, FindCoordinator).
pub(crate) fn advertised(conn: &KConn) -> (String, i32) {
    let bound = conn
        .shared
        .kafka_addr
        .lock()
        .ok()
        .and_then(|a| *a)
        .unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], 9092)));
    conn.shared.cfg.kafka.advertised(bound)
}

/// A topic's name and its route (partition -> shard), or why it has none.
type Routes = Vec<(String, Result<Vec<u32>, shardline_engine::Error>)>;

/// Metadata: the brokers (this node on a single node; on a cluster every node whose Kafka
/// address is known) and each asked topic's partitions with their leader, replicas, ISR and
/// leader epoch (`cluster.rs`). Unknown topics are created when `server.auto_create_topics`
/// is on and the client allows it.
async fn metadata(conn: &Rc<KConn>, call: Call, req: MetadataRequest) -> MetadataResponse {
    let brokers = super::cluster::brokers(conn);
    let mut r = MetadataResponse::default();
    r.brokers = brokers
        .iter()
        .map(|(id, host, port)| {
            let mut b = MetadataResponseBroker::default();
            b.node_id = BrokerId(*id);
            b.host = StrBytes::from_string(host.clone());
            b.port = *port;
            b
        })
        .collect();
    if call.version >= 2 {
        r.cluster_id = Some(StrBytes::from_static_str("shardline"));
    }
    r.controller_id = BrokerId(super::cluster::controller(conn, &brokers));
    for (name, route) in metadata_routes(conn, call, &req).await {
        let mut t = MetadataResponseTopic::default();
        t.name = Some(topic_name(&name));
        if !super::sasl::topic_allowed(conn, &name, Operation::Describe) {
            t.error_code = super::sasl::TOPIC_AUTHORIZATION_FAILED;
            r.topics.push(t);
            continue;
        }
        match route {
            Ok(shards) => match topic_partitions(conn, &name, shards.len(), &brokers).await {
                Ok(p) => t.partitions = p,
                Err(code) => t.error_code = code,
            },
            Err(e) => t.error_code = codes::of(&e),
        }
        r.topics.push(t);
    }
    r
}

/// The topics a Metadata request asks for (all of them when it names none), auto-created when
/// allowed.
async fn metadata_routes(conn: &Rc<KConn>, call: Call, req: &MetadataRequest) -> Routes {
    let names: Option<Vec<String>> = match &req.topics {
        None => None,
        Some(t) if t.is_empty() && call.version == 0 => None,
        Some(t) => Some(
            t.iter()
                .filter_map(|t| t.name.as_ref().map(|n| n.0.as_str().to_string()))
                .collect(),
        ),
    };
    let Some(names) = names else {
        return conn
            .engine
            .topic_routes()
            .iter()
            .filter(|r| super::sasl::topic_allowed(conn, &r.name, Operation::Describe))
            .map(|r| (r.name.to_string(), Ok(r.shards.clone())))
            .collect();
    };
    let mut out = Vec::new();
    for n in names {
        let mut route = conn.engine.route(&n).map(|r| r.shards.clone());
        let auto = conn.shared.cfg.auto_create_topics
            && (call.version < 4 || req.allow_auto_topic_creation);
        if auto && matches!(route, Err(shardline_engine::Error::UnknownTopic(_))) {
            route = auto_create(conn, &n).await;
        }
        out.push((n, route));
    }
    out
}

/// A topic's partitions in Metadata: on a single node this node leads each one (epoch 0); on
/// a cluster each partition's state as `Engine::replica_status` knows it.
async fn topic_partitions(
    conn: &Rc<KConn>,
    name: &str,
    partitions: usize,
    brokers: &[(i32, String, i32)],
) -> Result<Vec<MetadataResponsePartition>, i16> {
    let entry = |p: usize, st: super::cluster::PartitionState| {
        let mut mp = MetadataResponsePartition::default();
        mp.partition_index = i32::try_from(p).unwrap_or(i32::MAX);
        mp.error_code = st.error_code;
        mp.leader_id = BrokerId(st.leader);
        mp.leader_epoch = st.epoch;
        mp.replica_nodes = st.replicas.into_iter().map(BrokerId).collect();
        mp.isr_nodes = st.in_sync.into_iter().map(BrokerId).collect();
        mp
    };
    if !super::cluster::on_cluster(conn) {
        let me = super::cluster::SINGLE_NODE;
        return Ok((0..partitions)
            .map(|p| {
                let st = super::cluster::PartitionState {
                    error_code: codes::NONE,
                    leader: me,
                    epoch: 0,
                    replicas: vec![me],
                    in_sync: vec![me],
                };
                entry(p, st)
            })
            .collect());
    }
    match conn.engine.replica_status(name).await {
        Ok(status) => Ok(status
            .iter()
            .enumerate()
            .map(|(p, s)| entry(p, super::cluster::partition_state(s, brokers)))
            .collect()),
        Err(shardline_engine::Error::UnknownTopic(_)) => Err(codes::UNKNOWN_TOPIC_OR_PARTITION),
        // Replication still starting on this node: clients ask again.
        Err(_) => Err(codes::LEADER_NOT_AVAILABLE),
    }
}

/// Creates `name` with the default partition count (auto-creation); an existing topic (a
/// race with another creator) is fine. As on the native listener, the session needs `create`
/// on the topic and the topic quotas must allow it; otherwise the topic stays unknown.
pub(crate) async fn auto_create(
    conn: &Rc<KConn>,
    name: &str,
) -> Result<Vec<u32>, shardline_engine::Error> {
    let engine = conn.engine.clone();
    let partitions = super::default_partitions(conn);
    if !super::sasl::topic_allowed(conn, name, Operation::Create)
        || conn
            .shared
            .quotas
            .check_create(&engine, partitions)
            .is_err()
    {
        return Err(shardline_engine::Error::UnknownTopic(name.to_string()));
    }
    let n = name.to_string();
    let mut config = TopicConfig::with_partitions(partitions);
    // On a cluster through the controller, replicated (never a local-only topic).
    config.replicas = super::cluster::default_replication(conn);
    let shared = conn.shared.clone();
    let created =
        off_shard(move || crate::replicas::create_topic(&engine, &shared.cluster, &n, config))
            .await
            .unwrap_or_else(|| Err(shardline_engine::Error::Runtime("admin thread died".into())));
    match created {
        Ok(t) => Ok(t.shards),
        Err(shardline_engine::Error::TopicExists(_)) => {
            conn.engine.route(name).map(|r| r.shards.clone())
        }
        Err(e) => Err(e),
    }
}

/// Kafka's special ListOffsets timestamps.
const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;

async fn list_offsets(
    conn: &Rc<KConn>,
    call: Call,
    req: ListOffsetsRequest,
) -> ListOffsetsResponse {
    let mut r = ListOffsetsResponse::default();
    for t in &req.topics {
        let name = t.name.0.as_str().to_string();
        let mut tr = ListOffsetsTopicResponse::default();
        tr.name = t.name.clone();
        for p in &t.partitions {
            tr.partitions.push(list_offset(conn, call, &name, p).await);
        }
        r.topics.push(tr);
    }
    r
}

/// One partition of ListOffsets: answered by its leader only (NOT_LEADER_OR_FOLLOWER
/// elsewhere; v4+ `current_leader_epoch` fencing), with the leader epoch (v4+).
async fn list_offset(
    conn: &Rc<KConn>,
    call: Call,
    name: &str,
    p: &ListOffsetsPartition,
) -> ListOffsetsPartitionResponse {
    let mut pr = ListOffsetsPartitionResponse::default();
    pr.partition_index = p.partition_index;
    pr.timestamp = -1;
    pr.offset = -1;
    let spec = match p.timestamp {
        LATEST | MAX_TIMESTAMP => Some(OffsetSpec::Latest),
        EARLIEST => Some(OffsetSpec::Earliest),
        ts if ts >= 0 => Some(OffsetSpec::Timestamp(ts.saturating_mul(1000))),
        _ => None,
    };
    if !super::sasl::topic_allowed(conn, name, Operation::Consume) {
        pr.error_code = super::sasl::TOPIC_AUTHORIZATION_FAILED;
        return pr;
    }
    let fence = if call.version >= 4 {
        p.current_leader_epoch
    } else {
        -1
    };
    let (refused, epoch) = super::cluster::read_check(conn, name, p.partition_index, fence).await;
    if refused != codes::NONE {
        pr.error_code = refused;
        return pr;
    }
    match (spec, u32::try_from(p.partition_index)) {
        (Some(spec), Ok(partition)) => {
            match conn.engine.list_offset_async(name, partition, spec).await {
                Ok(o) => {
                    pr.offset = i64::try_from(o).unwrap_or(i64::MAX);
                    if p.timestamp == MAX_TIMESTAMP {
                        // The last record's offset; its timestamp is not looked up.
                        pr.offset = (pr.offset - 1).max(-1);
                    }
                    if call.version >= 4 {
                        pr.leader_epoch = epoch;
                    }
                }
                Err(e) => pr.error_code = codes::of(&e),
            }
        }
        (None, _) => pr.error_code = codes::INVALID_REQUEST,
        (_, Err(_)) => pr.error_code = codes::UNKNOWN_TOPIC_OR_PARTITION,
    }
    pr
}

/// Topic settings from CreateTopics configs (`retention.ms`, `retention.bytes`,
/// `segment.bytes`, `segment.ms`); others are refused with INVALID_CONFIG.
fn topic_config(
    partitions: u32,
    configs: &[(String, Option<String>)],
) -> Result<TopicConfig, String> {
    let mut c = TopicConfig::with_partitions(partitions);
    for (k, v) in configs {
        let Some(v) = v else { continue };
        let n = v.parse::<i64>().map_err(|_| format!("{k}: not a number"))?;
        let value = u64::try_from(n).ok();
        match k.as_str() {
            "retention.ms" => c.retention_ms = value,
            "retention.bytes" => c.retention_bytes = value,
            "segment.bytes" => c.segment_bytes = value,
            "segment.ms" => c.segment_ms = value,
            "cleanup.policy" | "min.insync.replicas" | "message.timestamp.type" => {}
            _ => return Err(format!("unsupported config {k}")),
        }
    }
    Ok(c)
}

/// A CreateTopics replication factor: -1 is the default (`cluster::default_replication`: 1
/// on a single node); otherwise 1 up to the cluster's node count (a single node is one node).
fn replication(conn: &KConn, asked: i16) -> Result<u32, String> {
    let nodes = if super::cluster::on_cluster(conn) {
        conn.shared.cluster.nodes.load(Ordering::Acquire).max(1)
    } else {
        1
    };
    match asked {
        -1 => Ok(super::cluster::default_replication(conn)),
        // Kafka refuses 0; kept as 1 here, as the first release answered it.
        0 => Ok(1),
        r if r < 0 => Err(format!("replication factor {r}: use 1 to {nodes}, or -1")),
        r => {
            let r = u32::from(r.unsigned_abs());
            if r > nodes {
                let plural = if nodes == 1 { "" } else { "s" };
                Err(format!(
                    "replication factor {r} exceeds the cluster's {nodes} node{plural}"
                ))
            } else {
                Ok(r)
            }
        }
    }
}

async fn create_topics(
    conn: &Rc<KConn>,
    call: Call,
    req: CreateTopicsRequest,
) -> CreateTopicsResponse {
    let mut r = CreateTopicsResponse::default();
    for t in &req.topics {
        let mut tr = CreatableTopicResult::default();
        tr.name = t.name.clone();
        let name = t.name.0.as_str().to_string();
        let partitions = if t.num_partitions == -1 {
            Ok(super::default_partitions(conn))
        } else {
            u32::try_from(t.num_partitions)
                .ok()
                .filter(|p| *p > 0)
                .ok_or(())
        };
        let configs: Vec<(String, Option<String>)> = t
            .configs
            .iter()
            .map(|c| {
                (
                    c.name.as_str().to_string(),
                    c.value.as_ref().map(|v| v.as_str().to_string()),
                )
            })
            .collect();
        let outcome = match (partitions, replication(conn, t.replication_factor)) {
            _ if !super::sasl::topic_allowed(conn, &name, Operation::Create) => Err((
                super::sasl::TOPIC_AUTHORIZATION_FAILED,
                "not authorized".to_string(),
            )),
            (Err(()), _) => Err((
                codes::INVALID_PARTITIONS,
                "invalid partition count".to_string(),
            )),
            (_, Err(m)) => Err((codes::INVALID_REPLICATION_FACTOR, m)),
            (Ok(p), Ok(rf)) => match topic_config(p, &configs) {
                Err(m) => Err((codes::INVALID_CONFIG, m)),
                Ok(_) if req.validate_only => Ok((p, rf)),
                Ok(mut cfg) => {
                    cfg.replicas = rf;
                    let engine = conn.engine.clone();
                    let shared = conn.shared.clone();
                    let n = name.clone();
                    // On a cluster through the controller (from any node), else locally.
                    let created = off_shard(move || {
                        crate::replicas::create_topic(&engine, &shared.cluster, &n, cfg)
                    });
                    match created.await {
                        Some(Ok(_)) => Ok((p, rf)),
                        Some(Err(e)) => Err((codes::of(&e), e.to_string())),
                        None => Err((codes::UNKNOWN_SERVER_ERROR, "admin thread died".into())),
                    }
                }
            },
        };
        match outcome {
            Ok((p, rf)) => {
                if call.version >= 5 {
                    tr.num_partitions = i32::try_from(p).unwrap_or(i32::MAX);
                    tr.replication_factor = i16::try_from(rf).unwrap_or(i16::MAX);
                }
            }
            Err((code, message)) => {
                tr.error_code = code;
                if call.version >= 1 {
                    tr.error_message = Some(StrBytes::from_string(message));
                }
                if call.version >= 5 {
                    tr.num_partitions = -1;
                    tr.replication_factor = -1;
                }
            }
        }
        r.topics.push(tr);
    }
    r
}

async fn delete_topics(
    conn: &Rc<KConn>,
    call: Call,
    req: DeleteTopicsRequest,
) -> DeleteTopicsResponse {
    let _ = call;
    let mut r = DeleteTopicsResponse::default();
    for name in &req.topic_names {
        let mut tr = DeletableTopicResult::default();
        tr.name = Some(name.clone());
        let engine = conn.engine.clone();
        let n = name.0.as_str().to_string();
        if !super::sasl::topic_allowed(conn, &n, Operation::Delete) {
            tr.error_code = super::sasl::TOPIC_AUTHORIZATION_FAILED;
            r.responses.push(tr);
            continue;
        }
        let shared = conn.shared.clone();
        // On a cluster through the controller (from any node), else locally.
        let deleted =
            off_shard(move || crate::replicas::delete_topic(&engine, &shared.cluster, &n));
        match deleted.await {
            Some(Ok(())) => {}
            Some(Err(e)) => tr.error_code = codes::of(&e),
            None => tr.error_code = codes::UNKNOWN_SERVER_ERROR,
        }
        r.responses.push(tr);
    }
    r
}

/// InitProducerId for idempotent producers: an identity from the engine's persistent
/// producer-id allocator (the native protocol's too, so ids never collide), epoch 0; a producer
/// that sends its id and epoch (KIP-360) gets the next epoch. Kafka's id is the engine's minus
/// one (Kafka's 0 is valid; batches store `kafka + 1`, `batch::kafka::producer_to_shardline`).
/// Transactional ids are refused (transactions are not supported).
async fn init_producer_id(conn: &Rc<KConn>, req: &InitProducerIdRequest) -> InitProducerIdResponse {
    let mut r = InitProducerIdResponse::default();
    r.producer_id = ProducerId(-1);
    r.producer_epoch = -1;
    if req.transactional_id.is_some() {
        r.error_code = codes::INVALID_REQUEST;
        return r;
    }
    let resume = (req.producer_id.0 >= 0 && req.producer_epoch >= 0).then(|| {
        shardline_engine::producer_ids::ProducerIdentity {
            producer_id: batch_kafka::producer_to_shardline(req.producer_id.0),
            epoch: u16::try_from(req.producer_epoch).unwrap_or(0),
        }
    });
    let engine = conn.engine.clone();
    match off_shard(move || engine.init_producer(resume)).await {
        Some(Ok(id)) => match i16::try_from(id.epoch) {
            Ok(epoch) => {
                r.producer_id = ProducerId(batch_kafka::producer_to_kafka(id.producer_id));
                r.producer_epoch = epoch;
            }
            Err(_) => r.error_code = codes::INVALID_PRODUCER_EPOCH,
        },
        Some(Err(e)) => r.error_code = codes::of(&e),
        None => r.error_code = codes::UNKNOWN_SERVER_ERROR,
    }
    r
}

/// The produce path's hand-written helpers need this too.
pub(crate) fn put_str(out: &mut BytesMut, s: &[u8]) {
    out.put_i16(i16::try_from(s.len()).unwrap_or(i16::MAX));
    out.extend_from_slice(s);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertised_versions_are_decodable() {
        use kafka_protocol::protocol::Message;
        for (k, min, max) in SUPPORTED {
            let range = match k {
                ApiKey::Produce => kafka_protocol::messages::ProduceRequest::VERSIONS,
                ApiKey::Fetch => kafka_protocol::messages::FetchRequest::VERSIONS,
                ApiKey::ListOffsets => ListOffsetsRequest::VERSIONS,
                ApiKey::Metadata => MetadataRequest::VERSIONS,
                ApiKey::ApiVersions => kafka_protocol::messages::ApiVersionsRequest::VERSIONS,
                ApiKey::CreateTopics => CreateTopicsRequest::VERSIONS,
                ApiKey::DeleteTopics => DeleteTopicsRequest::VERSIONS,
                ApiKey::InitProducerId => InitProducerIdRequest::VERSIONS,
                ApiKey::FindCoordinator => {
                    kafka_protocol::messages::FindCoordinatorRequest::VERSIONS
                }
                ApiKey::JoinGroup => kafka_protocol::messages::JoinGroupRequest::VERSIONS,
                ApiKey::SyncGroup => kafka_protocol::messages::SyncGroupRequest::VERSIONS,
                ApiKey::Heartbeat => kafka_protocol::messages::HeartbeatRequest::VERSIONS,
                ApiKey::LeaveGroup => kafka_protocol::messages::LeaveGroupRequest::VERSIONS,
                ApiKey::OffsetCommit => kafka_protocol::messages::OffsetCommitRequest::VERSIONS,
                ApiKey::OffsetFetch => kafka_protocol::messages::OffsetFetchRequest::VERSIONS,
                ApiKey::DescribeGroups => kafka_protocol::messages::DescribeGroupsRequest::VERSIONS,
                ApiKey::ListGroups => kafka_protocol::messages::ListGroupsRequest::VERSIONS,
                ApiKey::SaslHandshake => kafka_protocol::messages::SaslHandshakeRequest::VERSIONS,
                ApiKey::SaslAuthenticate => {
                    kafka_protocol::messages::SaslAuthenticateRequest::VERSIONS
                }
                ApiKey::DescribeConfigs => {
                    kafka_protocol::messages::DescribeConfigsRequest::VERSIONS
                }
                _ => panic!("no decoder checked for {k:?}"),
            };
            let lowest = if *k == ApiKey::Produce {
                PRODUCE_DECODABLE_MIN
            } else {
                *min
            };
            assert!(range.min <= lowest && *max <= range.max, "{k:?}");
        }
    }
}
