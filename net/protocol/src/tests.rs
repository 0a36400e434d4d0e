//! Properties of the wire protocol: every message survives encode → frame → decode unchanged
//! (by both the copying and the zero-copy paths); a byte stream split at arbitrary points yields
//! the same frames; oversized frames are refused before any buffer grows for them; arbitrary
//! bytes never panic the decoder or the message layer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use proptest::prelude::*;
use rkyv::util::AlignedVec;

use super::*;

// ---------------------------------------------------------------------------------------------
// Strategies

fn text(max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!(".{{0,{max}}}"))
        .unwrap()
        .prop_map(move |mut s| {
            messages::truncate_utf8(&mut s, max);
            s
        })
}

fn name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9._-]{0,40}"
}

fn blob() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        3 => proptest::collection::vec(any::<u8>(), 0..200),
        1 => proptest::collection::vec(any::<u8>(), 1000..3000),
    ]
    .prop_map(Bytes::from)
}

fn opt_u64() -> impl Strategy<Value = Option<u64>> {
    proptest::option::of(any::<u64>())
}

fn acks() -> impl Strategy<Value = Acks> {
    prop_oneof![
        Just(Acks::None),
        Just(Acks::Leader),
        Just(Acks::Durable),
        Just(Acks::All)
    ]
}

fn offset_spec() -> impl Strategy<Value = OffsetSpec> {
    prop_oneof![
        Just(OffsetSpec::Earliest),
        Just(OffsetSpec::Latest),
        any::<i64>().prop_map(OffsetSpec::Timestamp),
        any::<u64>().prop_map(OffsetSpec::At),
    ]
}

fn api_range() -> impl Strategy<Value = ApiRange> {
    (any::<u16>(), any::<u16>(), any::<u16>()).prop_map(|(api_key, min_version, max_version)| {
        ApiRange {
            api_key,
            min_version,
            max_version,
        }
    })
}

fn topic_config() -> impl Strategy<Value = TopicConfig> {
    (any::<u32>(), opt_u64(), opt_u64(), opt_u64(), opt_u64()).prop_map(|(p, rb, rm, sb, sm)| {
        TopicConfig {
            partitions: p,
            retention_bytes: rb,
            retention_ms: rm,
            segment_bytes: sb,
            segment_ms: sm,
        }
    })
}

fn topic_info() -> impl Strategy<Value = TopicInfo> {
    (
        name(),
        any::<u64>(),
        topic_config(),
        proptest::collection::vec(any::<u32>(), 0..8),
    )
        .prop_map(|(name, topic_id, config, partition_shards)| TopicInfo {
            name,
            topic_id,
            config,
            partition_shards,
        })
}

fn partition_info() -> impl Strategy<Value = PartitionInfo> {
    (
        (any::<u32>(), any::<u32>(), any::<u64>(), any::<u64>()),
        (any::<u64>(), any::<u64>(), any::<u64>(), any::<u32>()),
        (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()),
        proptest::option::of(text(30)),
    )
        .prop_map(
            |((a, b, c, d), (e, f, g, h), (i, j, k, l), failure)| PartitionInfo {
                partition: a,
                shard: b,
                log_start: c,
                high_watermark: d,
                durable_offset: e,
                next_offset: f,
                size_bytes: g,
                segments: h,
                cache_bytes: i,
                produced_records: j,
                produced_bytes: k,
                fetched_records: l,
                failure,
            },
        )
}

fn produce_request() -> impl Strategy<Value = ProduceRequest> {
    let partition =
        (any::<u32>(), blob()).prop_map(|(partition, batch)| ProducePartition { partition, batch });
    let topic = (name(), proptest::collection::vec(partition, 0..4))
        .prop_map(|(name, partitions)| ProduceTopic { name, partitions });
    (acks(), any::<u32>(), proptest::collection::vec(topic, 0..4)).prop_map(
        |(acks, timeout_ms, topics)| ProduceRequest {
            acks,
            timeout_ms,
            topics,
        },
    )
}

fn fetch_request() -> impl Strategy<Value = FetchRequest> {
    let partition = (any::<u32>(), any::<u64>(), any::<u32>(), any::<u32>()).prop_map(
        |(partition, offset, max_bytes, max_records)| FetchPartition {
            partition,
            offset,
            max_bytes,
            max_records,
        },
    );
    let topic = (name(), proptest::collection::vec(partition, 0..4))
        .prop_map(|(name, partitions)| FetchTopic { name, partitions });
    (
        any::<u32>(),
        any::<u32>(),
        proptest::collection::vec(topic, 0..4),
    )
        .prop_map(|(max_wait_ms, max_bytes, topics)| FetchRequest {
            max_wait_ms,
            max_bytes,
            topics,
            isolation: ReadIsolation::Appended,
        })
}

fn list_offsets_request() -> impl Strategy<Value = ListOffsetsRequest> {
    let partition = (any::<u32>(), offset_spec())
        .prop_map(|(partition, spec)| ListOffsetsPartition { partition, spec });
    let topic = (name(), proptest::collection::vec(partition, 0..4))
        .prop_map(|(name, partitions)| ListOffsetsTopic { name, partitions });
    proptest::collection::vec(topic, 0..4).prop_map(|topics| ListOffsetsRequest { topics })
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (name(), proptest::collection::vec(api_range(), 0..20)).prop_map(|(client_id, apis)| {
            Request::Handshake(HandshakeRequest { client_id, apis })
        }),
        any::<u64>().prop_map(|nonce| Request::Ping(PingRequest { nonce })),
        proptest::collection::vec(name(), 0..5)
            .prop_map(|topics| Request::Metadata(MetadataRequest { topics })),
        (name(), topic_config())
            .prop_map(|(name, config)| Request::CreateTopic(CreateTopicRequest { name, config })),
        name().prop_map(|name| Request::DeleteTopic(DeleteTopicRequest { name })),
        Just(Request::ListTopics(ListTopicsRequest {})),
        name().prop_map(|name| Request::DescribeTopic(DescribeTopicRequest { name })),
        produce_request().prop_map(Request::Produce),
        fetch_request().prop_map(Request::Fetch),
        list_offsets_request().prop_map(Request::ListOffsets),
        (
            name(),
            any::<u32>(),
            offset_spec(),
            any::<u32>(),
            any::<u64>()
        )
            .prop_map(|(topic, partition, start, credit_records, credit_bytes)| {
                Request::Subscribe(SubscribeRequest {
                    topic,
                    partition,
                    start,
                    credit_records,
                    credit_bytes,
                    isolation: ReadIsolation::Appended,
                })
            }),
        (any::<u32>(), any::<u32>(), any::<u64>()).prop_map(|(subscription_id, records, bytes)| {
            Request::GrantCredits(GrantCreditsRequest {
                subscription_id,
                records,
                bytes,
            })
        }),
        any::<u32>().prop_map(|subscription_id| Request::Unsubscribe(UnsubscribeRequest {
            subscription_id
        })),
        Just(Request::Stats(StatsRequest {})),
        any::<bool>()
            .prop_map(|include_partitions| Request::Metrics(MetricsRequest { include_partitions })),
        (name(), setting_change(), setting_change()).prop_map(|(name, b, ms)| {
            Request::AlterTopic(AlterTopicRequest {
                name,
                retention_bytes: b,
                retention_ms: ms,
            })
        }),
        semantics_request(),
        ops_request(),
        (any::<bool>(), name(), text(40)).prop_map(|(token, username, secret)| {
            Request::Authenticate(AuthenticateRequest {
                mechanism: if token {
                    AuthMechanism::Token
                } else {
                    AuthMechanism::Password
                },
                username,
                secret,
            })
        }),
        (0..7u8, name(), text(40), name(), any::<bool>()).prop_map(
            |(op, name, secret, description, deny)| {
                Request::AlterSecurity(AlterSecurityRequest {
                    op: [
                        SecurityOp::UserAdd,
                        SecurityOp::UserRemove,
                        SecurityOp::UserPasswd,
                        SecurityOp::TokenCreate,
                        SecurityOp::TokenRevoke,
                        SecurityOp::AclAdd,
                        SecurityOp::AclRemove,
                    ][usize::from(op)],
                    name,
                    secret,
                    resource: format!("topic:{description}"),
                    description,
                    operation: "produce".into(),
                    deny,
                })
            }
        ),
    ]
}

fn commit_offset() -> impl Strategy<Value = CommitOffset> {
    (any::<u32>(), any::<u64>(), text(30)).prop_map(|(partition, offset, metadata)| CommitOffset {
        partition,
        offset,
        metadata,
    })
}

fn committed_offset() -> impl Strategy<Value = CommittedOffset> {
    (any::<u32>(), any::<u64>(), text(30), any::<i64>()).prop_map(
        |(partition, offset, metadata, commit_time_ms)| CommittedOffset {
            partition,
            offset,
            metadata,
            commit_time_ms,
        },
    )
}

fn partitions() -> impl Strategy<Value = Vec<u32>> {
    proptest::collection::vec(any::<u32>(), 0..8)
}

/// Requests of apis 15..=21.
fn semantics_request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (any::<u64>(), any::<u16>()).prop_map(|(producer_id, epoch)| Request::InitProducer(
            InitProducerRequest { producer_id, epoch }
        )),
        (name(), name(), name(), any::<u32>()).prop_map(|(group, topic, client_id, t)| {
            Request::JoinGroup(JoinGroupRequest {
                group,
                topic,
                client_id,
                session_timeout_ms: t,
            })
        }),
        (name(), name(), partitions()).prop_map(|(group, member_id, owned)| Request::Heartbeat(
            HeartbeatRequest {
                group,
                member_id,
                owned
            }
        )),
        (name(), name()).prop_map(|(group, member_id)| Request::LeaveGroup(LeaveGroupRequest {
            group,
            member_id
        })),
        (
            name(),
            name(),
            name(),
            any::<u32>(),
            proptest::collection::vec(commit_offset(), 0..5)
        )
            .prop_map(|(group, topic, member_id, generation, offsets)| {
                Request::OffsetCommit(OffsetCommitRequest {
                    group,
                    topic,
                    member_id,
                    generation,
                    offsets,
                })
            }),
        (name(), name())
            .prop_map(|(group, topic)| Request::OffsetFetch(OffsetFetchRequest { group, topic })),
        name().prop_map(|group| Request::DescribeGroup(DescribeGroupRequest { group })),
    ]
}

fn group_assignment() -> impl Strategy<Value = GroupAssignment> {
    (
        name(),
        any::<u32>(),
        name(),
        partitions(),
        partitions(),
        any::<u32>(),
    )
        .prop_map(
            |(member_id, generation, topic, partitions, pending, heartbeat_interval_ms)| {
                GroupAssignment {
                    member_id,
                    generation,
                    topic,
                    partitions,
                    pending,
                    heartbeat_interval_ms,
                }
            },
        )
}

/// Responses of apis 15..=21.
fn semantics_response() -> impl Strategy<Value = Response> {
    let member = (name(), name(), partitions(), partitions(), any::<i64>()).prop_map(
        |(member_id, client_id, assigned, owned, last_seen_ms_ago)| GroupMember {
            member_id,
            client_id,
            assigned,
            owned,
            last_seen_ms_ago,
        },
    );
    prop_oneof![
        (any::<u64>(), any::<u16>()).prop_map(|(producer_id, epoch)| Response::InitProducer(
            InitProducerResponse { producer_id, epoch }
        )),
        group_assignment().prop_map(Response::JoinGroup),
        group_assignment().prop_map(Response::Heartbeat),
        Just(Response::LeaveGroup(LeaveGroupResponse {})),
        Just(Response::OffsetCommit(OffsetCommitResponse {})),
        proptest::collection::vec(committed_offset(), 0..5)
            .prop_map(|offsets| Response::OffsetFetch(OffsetFetchResponse { offsets })),
        (
            name(),
            name(),
            any::<u32>(),
            any::<u32>(),
            proptest::collection::vec(member, 0..4),
            proptest::collection::vec(committed_offset(), 0..4)
        )
            .prop_map(
                |(group, topic, generation, coordinator_slot, members, offsets)| {
                    Response::DescribeGroup(DescribeGroupResponse {
                        group,
                        topic,
                        generation,
                        coordinator_slot,
                        members,
                        offsets,
                    })
                }
            ),
    ]
}

fn reset_target() -> impl Strategy<Value = OffsetResetTarget> {
    prop_oneof![
        Just(OffsetResetTarget::Earliest),
        Just(OffsetResetTarget::Latest),
        any::<u64>().prop_map(OffsetResetTarget::Offset),
        any::<i64>().prop_map(OffsetResetTarget::TimestampMs),
    ]
}

/// Requests of apis 32..=34.
fn ops_request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (
            name(),
            name(),
            proptest::option::of(any::<u32>()),
            reset_target(),
            any::<bool>()
        )
            .prop_map(|(group, topic, partition, target, dry_run)| {
                Request::ResetOffsets(ResetOffsetsRequest {
                    group,
                    topic,
                    partition,
                    target,
                    dry_run,
                })
            }),
        name().prop_map(|topic| Request::QueuePurge(QueuePurgeRequest { topic })),
        Just(Request::ListGroups(ListGroupsRequest {})),
        (name(), any::<u32>()).prop_map(|(name, partitions)| Request::AddPartitions(
            AddPartitionsRequest { name, partitions }
        )),
        (name(), topic_config(), any::<u32>()).prop_map(|(name, config, replicas)| {
            Request::CreateReplicatedTopic(CreateReplicatedTopicRequest {
                name,
                config,
                replicas,
            })
        }),
        name().prop_map(|name| Request::DescribeReplicas(DescribeReplicasRequest { name })),
        proptest::collection::vec(name(), 0..4)
            .prop_map(|topics| Request::DescribeCluster(DescribeClusterRequest { topics })),
        (
            name(),
            any::<u32>(),
            proptest::collection::vec(any::<u64>(), 0..6)
        )
            .prop_map(|(name, partition, replicas)| {
                Request::ReassignPartition(ReassignPartitionRequest {
                    name,
                    partition,
                    replicas,
                })
            }),
        (any::<u64>(), name(), any::<bool>()).prop_map(|(node_id, peer_address, remove)| {
            Request::AlterNode(AlterNodeRequest {
                node_id,
                peer_address,
                remove,
            })
        }),
    ]
}

/// Responses of apis 39 and 50.
fn membership_response() -> impl Strategy<Value = Response> {
    prop_oneof![
        proptest::collection::vec(any::<u64>(), 0..6).prop_map(|replicas| {
            Response::ReassignPartition(ReassignPartitionResponse { replicas })
        }),
        proptest::collection::vec(any::<u64>(), 0..6)
            .prop_map(|nodes| Response::AlterNode(AlterNodeResponse { nodes })),
    ]
}

/// Responses of apis 32..=34.
fn ops_response() -> impl Strategy<Value = Response> {
    let reset =
        (any::<u32>(), opt_u64(), any::<u64>()).prop_map(|(partition, previous, offset)| {
            PartitionOffsetReset {
                partition,
                previous,
                offset,
            }
        });
    let purged =
        (any::<u32>(), any::<u64>(), any::<u64>()).prop_map(|(partition, purged, purged_until)| {
            QueuePurgedPartition {
                partition,
                purged,
                purged_until,
            }
        });
    let group = (
        name(),
        proptest::collection::vec(name(), 0..3),
        any::<u32>(),
        any::<u32>(),
    )
        .prop_map(|(group, topics, members, generation)| ListedGroup {
            group,
            topics,
            members,
            generation,
        });
    let replicas = (
        any::<u32>(),
        any::<u64>(),
        proptest::collection::vec(any::<u64>(), 0..5),
        proptest::collection::vec(any::<u64>(), 0..5),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(
            |(partition, leader, replicas, in_sync, epoch, high_watermark)| PartitionReplicas {
                partition,
                leader,
                replicas,
                in_sync,
                epoch,
                high_watermark,
            },
        );
    let cluster_topic = (
        name(),
        any::<u16>(),
        any::<u32>(),
        proptest::collection::vec(replicas.clone(), 0..3),
    )
        .prop_map(|(name, error_code, replicas, partitions)| ClusterTopic {
            name,
            error_code,
            replicas,
            partitions,
        });
    let node =
        (any::<u64>(), name()).prop_map(|(node_id, address)| ClusterNode { node_id, address });
    let cluster = (
        any::<u64>(),
        any::<u64>(),
        proptest::collection::vec(node, 0..4),
        proptest::collection::vec(cluster_topic, 0..3),
    )
        .prop_map(|(node_id, controller, nodes, topics)| {
            Response::DescribeCluster(DescribeClusterResponse {
                node_id,
                controller,
                nodes,
                topics,
            })
        });
    let described = (
        any::<u32>(),
        any::<u64>(),
        proptest::collection::vec(replicas, 0..4),
    )
        .prop_map(|(replicas, node_id, partitions)| {
            Response::DescribeReplicas(DescribeReplicasResponse {
                replicas,
                node_id,
                partitions,
            })
        });
    prop_oneof![
        cluster,
        described,
        topic_info()
            .prop_map(|topic| Response::CreateReplicatedTopic(CreateTopicResponse { topic })),
        proptest::collection::vec(reset, 0..4)
            .prop_map(|partitions| Response::ResetOffsets(ResetOffsetsResponse { partitions })),
        proptest::collection::vec(purged, 0..4)
            .prop_map(|partitions| Response::QueuePurge(QueuePurgeResponse { partitions })),
        (proptest::collection::vec(group, 0..4), any::<bool>()).prop_map(|(groups, truncated)| {
            Response::ListGroups(ListGroupsResponse { groups, truncated })
        }),
        topic_info().prop_map(|topic| Response::AddPartitions(AddPartitionsResponse { topic })),
    ]
}

fn setting_change() -> impl Strategy<Value = SettingChange> {
    prop_oneof![
        Just(SettingChange::Keep),
        Just(SettingChange::Clear),
        any::<u64>().prop_map(SettingChange::Set),
    ]
}

fn histogram() -> impl Strategy<Value = Histogram> {
    (
        proptest::collection::vec((any::<u64>(), any::<u64>()), 0..6),
        any::<u64>(),
    )
        .prop_map(|(b, sum)| Histogram {
            buckets: b
                .into_iter()
                .map(|(value, count)| HistogramBucket { value, count })
                .collect(),
            sum,
        })
}

fn metrics_response() -> impl Strategy<Value = MetricsResponse> {
    let shard = (
        (any::<u32>(), any::<u64>(), any::<u64>(), any::<u64>()),
        proptest::collection::vec((any::<u16>(), any::<u64>()), 0..3),
        proptest::collection::vec((any::<u16>(), any::<u16>(), any::<u64>()), 0..3),
        (histogram(), histogram()),
    )
        .prop_map(
            |((shard, cache, hits, open), requests, errors, (a, f))| ShardMetrics {
                shard,
                cache_bytes: cache,
                cache_hits: hits,
                connections_open: open,
                requests: requests
                    .into_iter()
                    .map(|(api_key, count)| ApiCount { api_key, count })
                    .collect(),
                errors: errors
                    .into_iter()
                    .map(|(api_key, code, count)| ErrorCount {
                        api_key,
                        code,
                        count,
                    })
                    .collect(),
                append_durable_ns: a,
                fsync_ns: f,
                ..ShardMetrics::default()
            },
        );
    let partition = (name(), any::<u32>(), any::<u64>(), any::<u64>()).prop_map(
        |(topic, partition, high_watermark, fetched_records)| PartitionMetrics {
            topic,
            partition,
            high_watermark,
            fetched_records,
            ..PartitionMetrics::default()
        },
    );
    let sample = (
        name(),
        proptest::collection::vec(name(), 0..3),
        any::<i64>(),
    )
        .prop_map(|(family, labels, value)| MetricSample {
            family,
            labels,
            value,
        });
    (
        any::<u64>(),
        proptest::collection::vec(shard, 0..3),
        proptest::collection::vec(partition, 0..3),
        proptest::collection::vec(sample, 0..3),
    )
        .prop_map(|(uptime_ms, shards, partitions, samples)| MetricsResponse {
            uptime_ms,
            resident_bytes: uptime_ms / 3,
            shards,
            partitions,
            samples,
        })
}

fn fetch_response() -> impl Strategy<Value = FetchResponse> {
    let partition = (
        (any::<u32>(), any::<u16>(), proptest::option::of(text(20))),
        (any::<u64>(), any::<u64>(), any::<u64>(), any::<u32>()),
        proptest::collection::vec(blob(), 0..4),
    )
        .prop_map(
            |((partition, error_code, error_message), (hw, ls, next, records), chunks)| {
                FetchPartitionResult {
                    partition,
                    error_code,
                    error_message,
                    high_watermark: hw,
                    log_start: ls,
                    next_offset: next,
                    records,
                    chunks,
                }
            },
        );
    let topic = (name(), proptest::collection::vec(partition, 0..3))
        .prop_map(|(name, partitions)| FetchTopicResult { name, partitions });
    proptest::collection::vec(topic, 0..3).prop_map(|topics| FetchResponse { topics })
}

#[allow(
    clippy::too_many_lines,
    reason = "one strategy per response type of the api table"
)]
fn response() -> impl Strategy<Value = Response> {
    let api_version =
        (any::<u16>(), any::<u16>()).prop_map(|(api_key, version)| ApiVersion { api_key, version });
    let shard_address =
        (any::<u32>(), text(30)).prop_map(|(shard, address)| ShardAddress { shard, address });
    let topic_metadata = (
        name(),
        any::<u16>(),
        any::<u64>(),
        proptest::collection::vec(any::<u32>(), 0..6),
    )
        .prop_map(
            |(name, error_code, topic_id, partition_shards)| TopicMetadata {
                name,
                error_code,
                topic_id,
                partition_shards,
            },
        );
    let produce_result = (
        any::<u32>(),
        any::<u16>(),
        any::<u64>(),
        any::<u64>(),
        proptest::option::of(text(20)),
    )
        .prop_map(
            |(partition, error_code, base_offset, last_offset, error_message)| {
                ProducePartitionResult {
                    partition,
                    error_code,
                    base_offset,
                    last_offset,
                    error_message,
                }
            },
        );
    let produce_topic = (name(), proptest::collection::vec(produce_result, 0..4))
        .prop_map(|(name, partitions)| ProduceTopicResult { name, partitions });
    let offsets_result = (
        any::<u32>(),
        any::<u16>(),
        proptest::option::of(text(20)),
        any::<u64>(),
    )
        .prop_map(|(partition, error_code, error_message, offset)| {
            ListOffsetsPartitionResult {
                partition,
                error_code,
                error_message,
                offset,
            }
        });
    let offsets_topic = (name(), proptest::collection::vec(offsets_result, 0..4))
        .prop_map(|(name, partitions)| ListOffsetsTopicResult { name, partitions });
    let shard_stats = (
        any::<u32>(),
        any::<u32>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(
            |(shard, partitions, cache_bytes, flushes, syncs, flushed_bytes)| ShardStats {
                shard,
                partitions,
                cache_bytes,
                flushes,
                syncs,
                flushed_bytes,
            },
        );
    let counter = (name(), any::<u64>()).prop_map(|(name, value)| Counter { name, value });
    prop_oneof![
        (
            text(40),
            proptest::collection::vec(api_version, 0..16),
            any::<u32>(),
            any::<u32>(),
            any::<u32>()
        )
            .prop_map(|(server_id, apis, frame_bytes_max, shard, shard_count)| {
                Response::Handshake(HandshakeResponse {
                    server_id,
                    apis,
                    frame_bytes_max,
                    shard,
                    shard_count,
                })
            }),
        any::<u64>().prop_map(|nonce| Response::Ping(PingResponse { nonce })),
        (
            proptest::collection::vec(shard_address, 0..4),
            proptest::collection::vec(topic_metadata, 0..4)
        )
            .prop_map(|(shards, topics)| Response::Metadata(MetadataResponse { shards, topics })),
        topic_info().prop_map(|topic| Response::CreateTopic(CreateTopicResponse { topic })),
        Just(Response::DeleteTopic(DeleteTopicResponse {})),
        proptest::collection::vec(topic_info(), 0..4)
            .prop_map(|topics| Response::ListTopics(ListTopicsResponse { topics })),
        (
            topic_info(),
            proptest::collection::vec(partition_info(), 0..4)
        )
            .prop_map(|(topic, partitions)| Response::DescribeTopic(
                DescribeTopicResponse { topic, partitions }
            )),
        proptest::collection::vec(produce_topic, 0..3)
            .prop_map(|topics| Response::Produce(ProduceResponse { topics })),
        fetch_response().prop_map(Response::Fetch),
        proptest::collection::vec(offsets_topic, 0..3)
            .prop_map(|topics| Response::ListOffsets(ListOffsetsResponse { topics })),
        (any::<u32>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
            |(subscription_id, start_offset, high_watermark, log_start)| {
                Response::Subscribe(SubscribeResponse {
                    subscription_id,
                    start_offset,
                    high_watermark,
                    log_start,
                })
            }
        ),
        (any::<u32>(), any::<u64>()).prop_map(|(subscription_id, next_offset)| {
            Response::Unsubscribe(UnsubscribeResponse {
                subscription_id,
                next_offset,
            })
        }),
        (
            any::<u64>(),
            proptest::collection::vec(shard_stats, 0..4),
            proptest::collection::vec(counter, 0..4)
        )
            .prop_map(
                |(uptime_ms, shards, counters)| Response::Stats(StatsResponse {
                    uptime_ms,
                    shards,
                    counters
                })
            ),
        metrics_response().prop_map(Response::Metrics),
        topic_info().prop_map(|topic| Response::AlterTopic(AlterTopicResponse { topic })),
        semantics_response(),
        ops_response(),
        membership_response(),
        name().prop_map(|principal| Response::Authenticate(AuthenticateResponse { principal })),
        (text(40), text(40)).prop_map(|(token, message)| Response::AlterSecurity(
            AlterSecurityResponse { token, message }
        )),
    ]
}

fn push() -> impl Strategy<Value = Push> {
    (
        any::<u32>(),
        any::<u32>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        proptest::collection::vec(blob(), 0..5),
    )
        .prop_map(
            |(subscription_id, records, next_offset, high_watermark, log_start, chunks)| Push {
                subscription_id,
                records,
                next_offset,
                high_watermark,
                log_start,
                chunks,
            },
        )
}

fn error_response() -> impl Strategy<Value = ErrorResponse> {
    (any::<u16>(), text(100)).prop_map(|(code, message)| ErrorResponse::new(code, message))
}

/// Anything a server sends, with the header fields it goes out with.
fn server_message() -> impl Strategy<Value = ServerMessage> {
    prop_oneof![
        (any::<u32>(), response()).prop_map(|(correlation_id, response)| {
            ServerMessage::Response {
                correlation_id,
                response,
            }
        }),
        (any::<u32>(), any::<u16>(), error_response()).prop_map(
            |(correlation_id, api_key, error)| ServerMessage::Error {
                correlation_id,
                api_key,
                error
            }
        ),
        push().prop_map(ServerMessage::Push),
        (any::<u32>(), error_response()).prop_map(|(subscription_id, error)| {
            ServerMessage::PushError {
                subscription_id,
                error,
            }
        }),
    ]
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn encode_server_message(enc: &mut FrameEncoder, out: &mut AlignedVec<16>, m: &ServerMessage) {
    match m {
        ServerMessage::Response {
            correlation_id,
            response,
        } => enc.response(out, *correlation_id, 0, response),
        ServerMessage::Error {
            correlation_id,
            api_key,
            error,
        } => enc.error(out, *correlation_id, *api_key, 7, error),
        ServerMessage::Push(p) => enc.push(out, 0, p),
        ServerMessage::PushError {
            subscription_id,
            error,
        } => enc.push_error(out, *subscription_id, 0, error),
    }
    .unwrap();
}

fn decoder() -> FrameDecoder {
    FrameDecoder::new(DecoderConfig {
        frame_bytes_max: 1 << 20,
        read_buffer_bytes: 4096,
    })
    .unwrap()
}

/// Feeds `data` to the decoder in pieces of the given sizes (cycled), draining frames as they
/// complete, and returns the frames with owned payloads.
fn feed(dec: &mut FrameDecoder, mut data: &[u8], pieces: &[usize]) -> Vec<OwnedFrame> {
    let mut frames = Vec::new();
    let mut i = 0;
    while !data.is_empty() {
        let piece = pieces[i % pieces.len()].clamp(1, data.len());
        i += 1;
        let mut chunk = &data[..piece];
        data = &data[piece..];
        while !chunk.is_empty() {
            let n = dec.push(chunk);
            chunk = &chunk[n..];
            let mut drained = 0;
            while let Some(f) = dec.next_frame_owned().unwrap() {
                assert!(
                    f.payload.is_empty() || (f.payload.as_ptr() as usize).is_multiple_of(16),
                    "owned payload aligned"
                );
                frames.push(f);
                drained += 1;
            }
            assert!(
                n > 0 || drained > 0,
                "decoder neither took bytes nor gave frames"
            );
            assert!(dec.buffer_capacity() <= 1 << 20, "decoder memory bound");
        }
    }
    frames
}

fn blob_within(blob: &Bytes, payload: &Bytes) -> bool {
    let p = payload.as_ptr() as usize;
    let b = blob.as_ptr() as usize;
    blob.is_empty() || (b >= p && b + blob.len() <= p + payload.len())
}

// ---------------------------------------------------------------------------------------------
// Properties

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn requests_round_trip(req in request(), correlation_id in any::<u32>()) {
        let mut enc = FrameEncoder::default();
        let mut out = AlignedVec::<16>::new();
        let size = enc.request(&mut out, correlation_id, 0, &req).unwrap();
        prop_assert_eq!(size, out.len());
        prop_assert!(out.len().is_multiple_of(16));

        // Borrowed frame, copying decode.
        let mut dec = decoder();
        prop_assert_eq!(dec.push(&out), out.len());
        let frame = dec.next_frame().unwrap().unwrap();
        prop_assert_eq!(frame.header.correlation_id, correlation_id);
        prop_assert_eq!(frame.header.kind, FrameKind::Request);
        prop_assert_eq!(frame.header.api_key, req.api_key().as_u16());
        prop_assert!((frame.payload.as_ptr() as usize).is_multiple_of(16));
        let back = Request::decode_frame(&frame).unwrap();
        prop_assert_eq!(&back, &req);
        if let Request::Produce(p) = &back {
            for part in p.topics.iter().flat_map(|t| &t.partitions) {
                prop_assert!(part.batch.is_empty() || (part.batch.as_ptr() as usize).is_multiple_of(16));
            }
        }
        prop_assert!(dec.next_frame().unwrap().is_none());

        // Owned frame, zero-copy decode: batches are slices of the frame's payload.
        let mut dec = decoder();
        dec.push(&out);
        let frame = dec.next_frame_owned().unwrap().unwrap();
        let back = Request::decode_owned_frame(&frame).unwrap();
        prop_assert_eq!(&back, &req);
        if let Request::Produce(p) = &back {
            for part in p.topics.iter().flat_map(|t| &t.partitions) {
                prop_assert!(blob_within(&part.batch, &frame.payload));
                prop_assert!(part.batch.is_empty() || (part.batch.as_ptr() as usize).is_multiple_of(16));
            }
        }
    }

    #[test]
    fn server_messages_round_trip(m in server_message()) {
        let mut enc = FrameEncoder::default();
        let mut out = AlignedVec::<16>::new();
        encode_server_message(&mut enc, &mut out, &m);
        let mut dec = decoder();
        dec.push(&out);
        let frame = dec.next_frame().unwrap().unwrap();
        prop_assert_eq!(&ServerMessage::decode(&frame).unwrap(), &m);
        let mut dec = decoder();
        dec.push(&out);
        let frame = dec.next_frame_owned().unwrap().unwrap();
        let back = ServerMessage::decode_owned(&frame).unwrap();
        prop_assert_eq!(&back, &m);
        if let ServerMessage::Push(p) = &back {
            prop_assert!(p.chunks.iter().all(|c| blob_within(c, &frame.payload)));
        }
    }

    #[test]
    fn vectored_parts_equal_the_flat_frame(resp in response(), p in push(), corr in any::<u32>()) {
        let mut enc = FrameEncoder::default();
        let mut flat = AlignedVec::<16>::new();
        enc.response(&mut flat, corr, 0, &resp).unwrap();
        let parts = enc.response_parts(corr, 0, &resp).unwrap();
        let mut joined = AlignedVec::<16>::new();
        parts.write_to(&mut joined);
        prop_assert_eq!(parts.len(), flat.len());
        prop_assert_eq!(&joined[..], &flat[..]);

        let mut flat = AlignedVec::<16>::new();
        enc.push(&mut flat, 0, &p).unwrap();
        let mut joined = AlignedVec::<16>::new();
        enc.push_parts(0, &p).unwrap().write_to(&mut joined);
        prop_assert_eq!(&joined[..], &flat[..]);
    }

    /// A stream of pipelined frames cut at arbitrary points decodes to the same frames, whether
    /// the bytes are pushed or read into `read_buf`.
    #[test]
    fn stream_split_anywhere_yields_the_same_frames(
        reqs in proptest::collection::vec((request(), any::<u32>()), 1..12),
        pieces in proptest::collection::vec(1usize..5000, 1..20),
    ) {
        let mut enc = FrameEncoder::default();
        let mut stream = AlignedVec::<16>::new();
        for (r, c) in &reqs {
            enc.request(&mut stream, *c, 0, r).unwrap();
        }
        let mut dec = decoder();
        let frames = feed(&mut dec, &stream, &pieces);
        prop_assert_eq!(frames.len(), reqs.len());
        for (f, (r, c)) in frames.iter().zip(&reqs) {
            prop_assert_eq!(f.header.correlation_id, *c);
            prop_assert_eq!(&Request::decode_owned_frame(f).unwrap(), r);
        }
        prop_assert_eq!(dec.buffered_bytes(), 0);

        // The socket path: read_buf/filled with reads of the given sizes.
        let mut dec = decoder();
        let mut data: &[u8] = &stream;
        let mut got = Vec::new();
        let mut i = 0;
        while !data.is_empty() {
            let room = dec.read_buf();
            prop_assert!(!room.is_empty());
            let n = room.len().min(data.len()).min(pieces[i % pieces.len()]);
            i += 1;
            room[..n].copy_from_slice(&data[..n]);
            dec.filled(n);
            data = &data[n..];
            while let Some(f) = dec.next_frame().unwrap() {
                got.push(Request::decode_frame(&f).unwrap());
            }
        }
        let want: Vec<Request> = reqs.into_iter().map(|(r, _)| r).collect();
        prop_assert_eq!(got, want);
    }

    /// Garbage never panics anything and never makes the decoder buffer more than its bound.
    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..4096),
        pieces in proptest::collection::vec(1usize..600, 1..8),
    ) {
        let mut dec = decoder();
        let mut data: &[u8] = &bytes;
        let mut i = 0;
        'outer: while !data.is_empty() {
            let piece = pieces[i % pieces.len()].min(data.len());
            i += 1;
            let n = dec.push(&data[..piece]);
            data = &data[n..];
            loop {
                match dec.next_frame() {
                    Ok(Some(f)) => {
                        let _ = Request::decode_frame(&f);
                        let _ = ServerMessage::decode(&f);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        prop_assert!(e.is_fatal());
                        prop_assert_eq!(dec.next_frame().err(), Some(e));
                        break 'outer;
                    }
                }
            }
            prop_assert!(dec.buffer_capacity() <= 1 << 20);
            if n == 0 && piece > 0 { break; }
        }
    }

    /// Random payloads under a valid header, for every api key and direction.
    #[test]
    fn arbitrary_payloads_never_panic(
        payload in proptest::collection::vec(any::<u8>(), 0..512),
        api_key in 0u16..20,
        shift in 0usize..16,
    ) {
        let mut buf = vec![0u8; payload.len() + 16];
        buf[shift..shift + payload.len()].copy_from_slice(&payload);
        let p = &buf[shift..shift + payload.len()];
        let _ = Request::decode(api_key, 0, p);
        let _ = Response::decode(api_key, 0, p);
        let _ = Push::decode(0, p);
        let _ = ErrorResponse::decode(p);
        let shared = Bytes::copy_from_slice(p);
        let _ = Request::decode_bytes(api_key, 0, &shared);
        let _ = Response::decode_bytes(api_key, 0, &shared);
    }

    /// Decoding must not depend on where the payload sits in memory.
    #[test]
    fn misaligned_payloads_decode_the_same(req in request(), shift in 1usize..16) {
        let mut enc = FrameEncoder::default();
        let mut out = AlignedVec::<16>::new();
        enc.request(&mut out, 1, 0, &req).unwrap();
        let payload_len = u32::from_le_bytes(out[0..4].try_into().unwrap()) as usize;
        let payload = &out[16..16 + payload_len];
        let mut shifted = vec![0u8; payload_len + shift];
        shifted[shift..].copy_from_slice(payload);
        let key = req.api_key().as_u16();
        prop_assert_eq!(&Request::decode(key, 0, &shifted[shift..]).unwrap(), &req);
        let shared = Bytes::copy_from_slice(&shifted[shift..]).slice(0..payload_len);
        prop_assert_eq!(&Request::decode_bytes(key, 0, &shared).unwrap(), &req);
    }

    #[test]
    fn headers_round_trip(
        payload_bytes in any::<u32>(),
        api_key in any::<u16>(),
        api_version in any::<u16>(),
        correlation_id in any::<u32>(),
        kind in prop_oneof![
            Just(FrameKind::Request), Just(FrameKind::Response), Just(FrameKind::Error),
            Just(FrameKind::Push), Just(FrameKind::PushError)
        ],
    ) {
        let h = FrameHeader { payload_bytes, api_key, api_version, correlation_id, kind };
        prop_assert_eq!(FrameHeader::parse(&h.encode()).unwrap(), h);
        prop_assert!(h.frame_bytes().is_multiple_of(16));
    }
}

// ---------------------------------------------------------------------------------------------
// Examples

#[test]
fn oversized_frame_is_refused_before_the_body_is_buffered() {
    let mut dec = decoder(); // frame_bytes_max = 1 MiB, reads of 4 KiB
    let header = FrameHeader {
        payload_bytes: 1 << 30,
        api_key: ApiKey::Produce.as_u16(),
        api_version: 0,
        correlation_id: 42,
        kind: FrameKind::Request,
    }
    .encode();
    assert_eq!(dec.push(&header), 16);
    let cap_before = dec.buffer_capacity();
    let err = dec.next_frame().unwrap_err();
    assert_eq!(
        err,
        WireError::FrameTooLarge {
            frame_bytes: 16 + (1 << 30),
            frame_bytes_max: 1 << 20,
            correlation_id: 42,
            api_key: 7,
        }
    );
    assert!(err.is_fatal());
    assert_eq!(err.code(), code::FRAME_TOO_LARGE);
    assert_eq!(err.correlation_id(), Some(42));
    // Nothing was reserved for the body, and nothing more will be.
    assert!(dec.read_buf().is_empty());
    assert_eq!(dec.push(&[0u8; 100]), 0);
    assert!(dec.buffer_capacity() <= 4096);
    assert_eq!(dec.buffer_capacity(), cap_before);
}

#[test]
fn frame_just_under_the_limit_is_accepted_and_just_over_refused() {
    let max = 1u32 << 20;
    for (payload, ok) in [(max - 16, true), (max - 15, false)] {
        let mut dec = decoder();
        let header = FrameHeader {
            payload_bytes: payload,
            api_key: 1,
            api_version: 0,
            correlation_id: 1,
            kind: FrameKind::Request,
        }
        .encode();
        dec.push(&header);
        let r = dec.next_frame();
        assert_eq!(r.is_ok(), ok, "payload {payload}");
        if ok {
            assert!(r.unwrap().is_none());
            // Room within the rest of this frame: the buffer grows as bytes arrive, never to
            // the announced size up front (issue 16).
            let room = dec.read_buf().len();
            assert!(room > 0 && room <= max as usize - 16, "room {room}");
        }
    }
}

#[test]
fn framing_violations_are_fatal() {
    let good = FrameHeader {
        payload_bytes: 3,
        api_key: 1,
        api_version: 0,
        correlation_id: 9,
        kind: FrameKind::Request,
    }
    .encode();
    let mut reserved = good;
    reserved[15] = 1;
    let mut flags = good;
    flags[12] = 0x08;
    let mut both = good;
    both[12] = (flags::RESPONSE | flags::PUSH) as u8;
    for (h, what) in [
        (reserved, "reserved"),
        (flags, "flags"),
        (both, "response|push"),
    ] {
        let mut dec = decoder();
        dec.push(&h);
        let e = dec.next_frame().unwrap_err();
        assert!(e.is_fatal(), "{what}");
        assert_eq!(e.code(), code::PROTOCOL_VIOLATION, "{what}");
        assert_eq!(e.correlation_id(), Some(9));
    }
    // Non-zero padding after a 3-byte payload.
    let mut dec = decoder();
    let mut frame = good.to_vec();
    frame.extend_from_slice(&[1, 2, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7]);
    dec.push(&frame);
    assert_eq!(
        dec.next_frame().unwrap_err(),
        WireError::PaddingNotZero { correlation_id: 9 }
    );
}

#[test]
fn wrong_direction_and_unknown_apis_are_reported() {
    let mut enc = FrameEncoder::default();
    let mut out = AlignedVec::<16>::new();
    enc.response(&mut out, 5, 0, &Response::Ping(PingResponse { nonce: 1 }))
        .unwrap();
    let mut dec = decoder();
    dec.push(&out);
    let f = dec.next_frame().unwrap().unwrap();
    assert!(matches!(
        Request::decode_frame(&f),
        Err(WireError::UnexpectedFrame { .. })
    ));
    assert!(matches!(
        Request::decode(99, 0, &[]),
        Err(WireError::UnknownApi { api_key: 99 })
    ));
    assert!(matches!(
        Request::decode(ApiKey::Push.as_u16(), 0, &[]),
        Err(WireError::UnknownApi { .. })
    ));
    let e = Request::decode(1, 5, &[]).unwrap_err();
    assert_eq!(e.code(), code::UNSUPPORTED_VERSION);
    assert!(!e.is_fatal());
    assert!(
        enc.request(&mut out, 1, 3, &Request::Ping(PingRequest { nonce: 0 }))
            .is_err()
    );
}

#[test]
fn push_with_mismatched_subscription_id_is_refused() {
    let mut enc = FrameEncoder::default();
    let mut out = AlignedVec::<16>::new();
    let p = Push {
        subscription_id: 3,
        ..Push::default()
    };
    enc.push(&mut out, 0, &p).unwrap();
    out[8] = 4; // correlation id 3 -> 4
    let mut dec = decoder();
    dec.push(&out);
    let f = dec.next_frame().unwrap().unwrap();
    assert!(matches!(
        ServerMessage::decode(&f),
        Err(WireError::UnexpectedFrame { kind: "push", .. })
    ));
}

#[test]
fn request_limits_are_enforced_on_decode() {
    let many = ProduceRequest {
        acks: Acks::Leader,
        timeout_ms: 0,
        topics: vec![ProduceTopic {
            name: "t".into(),
            partitions: (0..=PARTITIONS_PER_REQUEST_MAX as u32)
                .map(|partition| ProducePartition {
                    partition,
                    batch: Bytes::new(),
                })
                .collect(),
        }],
    };
    let mut enc = FrameEncoder::default();
    let mut out = AlignedVec::<16>::new();
    enc.request(&mut out, 1, 0, &Request::Produce(many))
        .unwrap();
    let mut dec = decoder();
    dec.push(&out);
    let f = dec.next_frame().unwrap().unwrap();
    let e = Request::decode_frame(&f).unwrap_err();
    assert_eq!(e.code(), code::LIMIT_EXCEEDED);
    assert!(
        !e.is_fatal(),
        "the stream is still framed: answer and go on"
    );

    let long = Request::CreateTopic(CreateTopicRequest {
        name: "x".repeat(NAME_BYTES_MAX + 1),
        config: TopicConfig::default(),
    });
    out.clear();
    enc.request(&mut out, 2, 0, &long).unwrap();
    let mut dec = decoder();
    dec.push(&out);
    let f = dec.next_frame().unwrap().unwrap();
    assert!(matches!(
        Request::decode_frame(&f),
        Err(WireError::LimitExceeded { .. })
    ));
}

#[test]
fn semantics_request_limits_are_enforced_on_decode() {
    let too_many = Request::Heartbeat(HeartbeatRequest {
        group: "g".into(),
        member_id: "m".into(),
        owned: vec![0; PARTITIONS_PER_REQUEST_MAX + 1],
    });
    let long_metadata = Request::OffsetCommit(OffsetCommitRequest {
        group: "g".into(),
        topic: "t".into(),
        member_id: "m".into(),
        generation: 1,
        offsets: vec![CommitOffset {
            partition: 0,
            offset: 1,
            metadata: "x".repeat(MESSAGE_BYTES_MAX + 1),
        }],
    });
    let long_group = Request::ResetOffsets(ResetOffsetsRequest {
        group: "g".repeat(NAME_BYTES_MAX + 1),
        topic: "t".into(),
        ..ResetOffsetsRequest::default()
    });
    let long_queue = Request::QueuePurge(QueuePurgeRequest {
        topic: "q".repeat(NAME_BYTES_MAX + 1),
    });
    for r in [too_many, long_metadata, long_group, long_queue] {
        let mut enc = FrameEncoder::default();
        let mut out = AlignedVec::<16>::new();
        enc.request(&mut out, 1, 0, &r).unwrap();
        let mut dec = decoder();
        dec.push(&out);
        let f = dec.next_frame().unwrap().unwrap();
        let e = Request::decode_frame(&f).unwrap_err();
        assert!(matches!(e, WireError::LimitExceeded { .. }), "{e}");
        assert!(!e.is_fatal());
    }
}

#[test]
fn encoder_refuses_frames_above_the_peer_limit_and_writes_nothing() {
    let mut enc = FrameEncoder::new(FRAME_BYTES_MIN_LIMIT).unwrap();
    let mut out = AlignedVec::<16>::new();
    enc.request(&mut out, 1, 0, &Request::Ping(PingRequest { nonce: 1 }))
        .unwrap();
    let before = out.to_vec();
    let big = Request::Produce(ProduceRequest {
        acks: Acks::Durable,
        timeout_ms: 0,
        topics: vec![ProduceTopic {
            name: "t".into(),
            partitions: vec![ProducePartition {
                partition: 0,
                batch: Bytes::from(vec![1u8; FRAME_BYTES_MIN_LIMIT as usize]),
            }],
        }],
    });
    let e = enc.request(&mut out, 2, 0, &big).unwrap_err();
    assert!(matches!(
        e,
        WireError::FrameTooLarge {
            correlation_id: 2,
            ..
        }
    ));
    assert_eq!(&out[..], &before[..]);
}

#[test]
fn large_frame_alone_in_the_buffer_is_handed_off_without_copy() {
    let batch = Bytes::from(vec![5u8; 200 << 10]);
    let req = Request::Produce(ProduceRequest {
        acks: Acks::Durable,
        timeout_ms: 0,
        topics: vec![ProduceTopic {
            name: "t".into(),
            partitions: vec![ProducePartition {
                partition: 0,
                batch: batch.clone(),
            }],
        }],
    });
    let mut enc = FrameEncoder::default();
    let mut out = AlignedVec::<16>::new();
    enc.request(&mut out, 1, 0, &req).unwrap();
    let mut dec = decoder();
    let mut data: &[u8] = &out;
    let mut frame = None;
    while frame.is_none() {
        let room = dec.read_buf();
        let n = room.len().min(data.len());
        room[..n].copy_from_slice(&data[..n]);
        dec.filled(n);
        data = &data[n..];
        frame = dec.next_frame_owned().unwrap();
    }
    let frame = frame.unwrap();
    // read_buf sized the last read to end exactly at the frame, so the buffer itself moved out.
    assert_eq!(dec.buffer_capacity(), 0);
    let Request::Produce(p) = Request::decode_owned_frame(&frame).unwrap() else {
        panic!("not a produce");
    };
    assert_eq!(p.topics[0].partitions[0].batch, batch);
    assert!(blob_within(
        &p.topics[0].partitions[0].batch,
        &frame.payload
    ));
}

#[test]
fn handshake_negotiation_end_to_end() {
    let req = HandshakeRequest {
        client_id: "test".into(),
        apis: supported_apis(),
    };
    let chosen = negotiate(&supported_apis(), &req.apis);
    let versions = NegotiatedVersions::from_chosen(&chosen);
    assert_eq!(versions.version(ApiKey::Produce).unwrap(), 0);
    assert_eq!(versions, NegotiatedVersions::newest());
}

#[test]
fn decoder_config_is_validated() {
    for (max, read) in [(1024, 512), (FRAME_BYTES_MAX_LIMIT + 1, 4096), (1 << 20, 8)] {
        assert!(
            FrameDecoder::new(DecoderConfig {
                frame_bytes_max: max,
                read_buffer_bytes: read
            })
            .is_err()
        );
    }
    assert!(FrameDecoder::new(DecoderConfig::default()).is_ok());
}

/// Writes one valid frame stream per message kind as fuzz seeds, so that libFuzzer starts from
/// well-formed frames: `SHARDLINE_FUZZ_SEEDS=net/fuzz/corpus/frame_decode cargo test -p
/// shardline-protocol write_fuzz_seeds -- --ignored`. Each seed is a control byte (piece size) then
/// the stream.
#[test]
#[ignore = "writes files; run by hand to seed the fuzz corpus"]
fn write_fuzz_seeds() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config, TestRng, TestRunner};
    let Ok(dir) = std::env::var("SHARDLINE_FUZZ_SEEDS") else {
        return;
    };
    std::fs::create_dir_all(&dir).unwrap();
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::deterministic_rng(proptest::test_runner::RngAlgorithm::ChaCha),
    );
    let mut enc = FrameEncoder::default();
    for i in 0..64 {
        let mut out = FrameBuf::new();
        let req = request().new_tree(&mut runner).unwrap().current();
        enc.request(&mut out, i, 0, &req).unwrap();
        let msg = server_message().new_tree(&mut runner).unwrap().current();
        let mut server = FrameBuf::new();
        encode_server_message(&mut enc, &mut server, &msg);
        for (name, bytes) in [("request", &out), ("server", &server)] {
            let mut seed = vec![(i as u8).wrapping_mul(37)];
            seed.extend_from_slice(bytes);
            std::fs::write(format!("{dir}/seed-{name}-{i:02}"), seed).unwrap();
        }
    }
}

/// [`wire_layout_is_pinned`] for 41 AlterSecurity (docs/protocol.md gives these sizes).
#[test]
fn alter_security_layout_is_pinned() {
    use rkyv::Archived;
    let sizes = [
        (
            size_of::<Archived<SecurityOp>>(),
            align_of::<Archived<SecurityOp>>(),
        ),
        (
            size_of::<Archived<AlterSecurityRequest>>(),
            align_of::<Archived<AlterSecurityRequest>>(),
        ),
        (
            size_of::<Archived<AlterSecurityResponse>>(),
            align_of::<Archived<AlterSecurityResponse>>(),
        ),
    ];
    assert_eq!(sizes, [(1, 1), (48, 4), (16, 4)]);
}

/// Pins the wire format: the archived size and alignment of every payload type, and the exact
/// bytes of two frames (the worked examples in docs/protocol.md). A failure here means the
/// format changed: that needs a new api version, not a test update.
#[test]
fn wire_layout_is_pinned() {
    use super::codec::{
        BlobRef, FetchEnvelope, FetchPartitionEnvelope, FetchTopicEnvelope, ProduceEnvelope,
        ProducePartitionEnvelope, ProduceTopicEnvelope, PushEnvelope,
    };
    use rkyv::Archived;
    macro_rules! pin {
        ($($t:ty => $size:expr, $align:expr;)*) => {$(
            assert_eq!(
                (size_of::<Archived<$t>>(), align_of::<Archived<$t>>()),
                ($size, $align),
                "archived layout of {}",
                stringify!($t)
            );
        )*};
    }
    pin! {
        Acks => 1, 1; OffsetSpec => 16, 8; ApiRange => 6, 2; ApiVersion => 4, 2;
        String => 8, 4; Vec<u8> => 8, 4; Option<u64> => 16, 8; Option<String> => 12, 4;
        BlobRef => 8, 4;
        HandshakeRequest => 16, 4; HandshakeResponse => 28, 4;
        PingRequest => 8, 8; PingResponse => 8, 8;
        MetadataRequest => 8, 4; ShardAddress => 12, 4; TopicMetadata => 32, 8;
        MetadataResponse => 16, 4;
        TopicConfig => 72, 8; TopicInfo => 96, 8;
        CreateTopicRequest => 80, 8; CreateTopicResponse => 96, 8;
        DeleteTopicRequest => 8, 4; DeleteTopicResponse => 0, 1;
        ListTopicsRequest => 0, 1; ListTopicsResponse => 8, 4;
        DescribeTopicRequest => 8, 4; PartitionInfo => 104, 8; DescribeTopicResponse => 104, 8;
        ProduceEnvelope => 20, 4; ProduceTopicEnvelope => 16, 4;
        ProducePartitionEnvelope => 12, 4;
        ProduceResponse => 8, 4; ProduceTopicResult => 16, 4; ProducePartitionResult => 40, 8;
        FetchRequest => 16, 4; FetchTopic => 16, 4; FetchPartition => 24, 8;
        FetchEnvelope => 12, 4; FetchTopicEnvelope => 16, 4; FetchPartitionEnvelope => 64, 8;
        ListOffsetsRequest => 8, 4; ListOffsetsTopic => 16, 4; ListOffsetsPartition => 24, 8;
        ListOffsetsResponse => 8, 4; ListOffsetsTopicResult => 16, 4;
        ListOffsetsPartitionResult => 32, 8;
        SubscribeRequest => 48, 8; SubscribeResponse => 32, 8;
        GrantCreditsRequest => 16, 8; UnsubscribeRequest => 4, 4; UnsubscribeResponse => 16, 8;
        PushEnvelope => 48, 8;
        StatsRequest => 0, 1; ShardStats => 40, 8; Counter => 16, 8; StatsResponse => 24, 8;
        MetricsRequest => 1, 1; HistogramBucket => 16, 8; Histogram => 16, 8;
        ApiCount => 16, 8; ErrorCount => 16, 8; ShardMetrics => 200, 8;
        PartitionMetrics => 80, 8; MetricSample => 24, 8; MetricsResponse => 40, 8;
        SettingChange => 16, 8; AlterTopicRequest => 40, 8; AlterTopicResponse => 96, 8;
        OffsetResetTarget => 16, 8; ResetOffsetsRequest => 48, 8;
        PartitionOffsetReset => 32, 8; ResetOffsetsResponse => 8, 4;
        QueuePurgeRequest => 8, 4; QueuePurgedPartition => 24, 8; QueuePurgeResponse => 8, 4;
        ListGroupsRequest => 0, 1; ListedGroup => 24, 4; ListGroupsResponse => 12, 4;
        AddPartitionsRequest => 12, 4; AddPartitionsResponse => 96, 8;
        CreateReplicatedTopicRequest => 88, 8; DescribeReplicasRequest => 8, 4;
        PartitionReplicas => 48, 8; DescribeReplicasResponse => 24, 8;
        DescribeClusterRequest => 8, 4; ClusterNode => 16, 8; ClusterTopic => 24, 4;
        DescribeClusterResponse => 32, 8; ErrorResponse => 12, 4;
        InitProducerRequest => 16, 8; InitProducerResponse => 16, 8;
        JoinGroupRequest => 28, 4; GroupAssignment => 40, 4; HeartbeatRequest => 24, 4;
        LeaveGroupRequest => 16, 4; LeaveGroupResponse => 0, 1;
        CommitOffset => 24, 8; OffsetCommitRequest => 36, 4; OffsetCommitResponse => 0, 1;
        OffsetFetchRequest => 16, 4; CommittedOffset => 32, 8; OffsetFetchResponse => 8, 4;
        DescribeGroupRequest => 8, 4; GroupMember => 40, 8; DescribeGroupResponse => 40, 4;
        AuthMechanism => 1, 1; AuthenticateRequest => 20, 4; AuthenticateResponse => 8, 4;
    }

    let mut enc = FrameEncoder::default();
    let mut out = FrameBuf::new();
    let ping = Request::Ping(PingRequest {
        nonce: 0x1122_3344_5566_7788,
    });
    enc.request(&mut out, 7, 0, &ping).unwrap();
    #[rustfmt::skip]
    let want: [u8; 32] = [
        0x08, 0, 0, 0,  0x01, 0,  0, 0,  0x07, 0, 0, 0,  0, 0,  0, 0,   // header
        0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11,                 // nonce
        0, 0, 0, 0, 0, 0, 0, 0,                                         // padding
    ];
    assert_eq!(&out[..], &want[..]);

    out.clear();
    let produce = Request::Produce(ProduceRequest {
        acks: Acks::Leader,
        timeout_ms: 1000,
        topics: vec![ProduceTopic {
            name: "t".into(),
            partitions: vec![ProducePartition {
                partition: 2,
                batch: Bytes::from_static(b"0123456789abcdefXY"),
            }],
        }],
    });
    enc.request(&mut out, 9, 0, &produce).unwrap();
    #[rustfmt::skip]
    let want: [u8; 96] = [
        0x50, 0, 0, 0,  0x07, 0,  0, 0,  0x09, 0, 0, 0,  0, 0,  0, 0,   // header, payload 80
        b'0', b'1', b'2', b'3', b'4', b'5', b'6', b'7',                 // payload 0: blob
        b'8', b'9', b'a', b'b', b'c', b'd', b'e', b'f',
        b'X', b'Y', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,           // blob end, pad to 32
        0x02, 0, 0, 0,  0, 0, 0, 0,  0x12, 0, 0, 0,                     // 32: partition 2, blob (0, 18)
        b't', 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,                 // 44: name "t" inline
        0xec, 0xff, 0xff, 0xff,  0x01, 0, 0, 0,                         // partitions: -20 -> 32, len 1
        0x01, 0, 0, 0,  0xe8, 0x03, 0, 0,  0x20, 0, 0, 0,               // 60: acks Leader, 1000 ms, data 32
        0xe4, 0xff, 0xff, 0xff,  0x01, 0, 0, 0,                         // topics: -28 -> 44, len 1
    ];
    assert_eq!(&out[..], &want[..]);
}

// ---------------------------------------------------------------------------------------------
// Hardening (issue 16)

/// Finding 1: a header announcing a large frame costs no more than the bytes that arrived.
#[test]
fn a_large_frame_buffer_grows_only_as_its_bytes_arrive() {
    let mut dec = FrameDecoder::new(DecoderConfig {
        frame_bytes_max: 16 << 20,
        read_buffer_bytes: 4096,
    })
    .unwrap();
    let header = FrameHeader {
        payload_bytes: (16 << 20) - 16,
        api_key: ApiKey::Produce.as_u16(),
        api_version: 0,
        correlation_id: 1,
        kind: FrameKind::Request,
    }
    .encode();
    assert_eq!(dec.push(&header), 16);
    assert!(dec.next_frame().unwrap().is_none());
    let room = dec.read_buf().len();
    assert!(room <= 4096, "read slice {room} after a bare header");
    assert!(dec.allocated_bytes() <= 8192, "{}", dec.allocated_bytes());
    // Feed 1 MiB of body: the buffer stays within twice what arrived.
    let mut sent = 16usize;
    while sent < (1 << 20) {
        let room = dec.read_buf();
        let n = room.len().min((1 << 20) - sent);
        room[..n].fill(0);
        dec.filled(n);
        sent += n;
        assert!(
            dec.allocated_bytes() <= 2 * sent.max(4096),
            "{} allocated after {sent} bytes",
            dec.allocated_bytes()
        );
    }
    // The rest of the frame arrives and is handed out whole.
    let mut left = (16 << 20) - sent;
    while left > 0 {
        let room = dec.read_buf();
        let n = room.len().min(left);
        assert!(n > 0);
        room[..n].fill(0);
        dec.filled(n);
        left -= n;
    }
    let f = dec.next_frame_owned().unwrap().unwrap();
    assert_eq!(f.payload.len(), (16 << 20) - 16);
}

#[test]
fn the_frame_limit_can_be_lowered_before_a_handshake() {
    let mut dec = FrameDecoder::new(DecoderConfig::default()).unwrap();
    dec.set_frame_bytes_max(64 << 10);
    let header = FrameHeader {
        payload_bytes: 1 << 20,
        api_key: 0,
        api_version: 0,
        correlation_id: 3,
        kind: FrameKind::Request,
    }
    .encode();
    dec.push(&header);
    let err = dec.next_frame().unwrap_err();
    assert_eq!(err.code(), code::FRAME_TOO_LARGE);
}

/// Finding 4: error text never carries a pointer.
#[test]
fn error_text_is_scrubbed_of_addresses() {
    let e = ErrorResponse::new(
        code::MALFORMED_PAYLOAD,
        "subtree pointer overran range: ptr 0x00007f7312345678 range 0x7f73aaaa..0x7f73bbbb flags 0x0004",
    );
    assert!(!e.message.contains("7f73"), "{}", e.message);
    assert!(e.message.contains("flags 0x0004"), "{}", e.message);
    // Garbage after a valid header: the decode error reaching the client has no address.
    let mut raw = AlignedVec::<16>::new();
    let mut payload = vec![0xffu8; 256];
    payload[..8].copy_from_slice(&0x7fff_0000_1234u64.to_le_bytes());
    let header = FrameHeader {
        payload_bytes: 256,
        api_key: ApiKey::Produce.as_u16(),
        api_version: 0,
        correlation_id: 5,
        kind: FrameKind::Request,
    }
    .encode();
    raw.extend_from_slice(&header);
    raw.extend_from_slice(&payload);
    let mut dec = decoder();
    dec.push(&raw);
    let frame = dec.next_frame_owned().unwrap().unwrap();
    let err = Request::decode_owned_frame(&frame).unwrap_err();
    let text = ErrorResponse::from_wire(&err).message;
    let long_hex = text
        .split("0x")
        .skip(1)
        .any(|t| t.bytes().take_while(u8::is_ascii_hexdigit).count() >= 5);
    assert!(!long_hex, "{text}");
}

// Proves: Fetch and Subscribe at version 1 carry the isolation in the read-options trailer
// (round trip, both values); at version 0 there is no trailer and the decoded request reads
// `Appended`; a trailer with an unknown isolation, a reserved byte set or a bad archive length
// is refused as malformed.
#[test]
fn read_options_travel_from_version_1_and_are_checked() {
    let fetch = |isolation| {
        Request::Fetch(FetchRequest {
            max_wait_ms: 5,
            max_bytes: 1 << 20,
            topics: vec![FetchTopic {
                name: "t".into(),
                partitions: vec![FetchPartition {
                    partition: 0,
                    offset: 7,
                    max_bytes: 1024,
                    max_records: 0,
                }],
            }],
            isolation,
        })
    };
    let subscribe = |isolation| {
        Request::Subscribe(SubscribeRequest {
            topic: "t".into(),
            partition: 1,
            start: OffsetSpec::Earliest,
            credit_records: 10,
            credit_bytes: 1 << 20,
            isolation,
        })
    };
    let mut enc = FrameEncoder::default();
    let encode = |enc: &mut FrameEncoder, version, req: &Request| {
        let mut out = AlignedVec::<FRAME_ALIGN>::new();
        enc.request(&mut out, 1, version, req).unwrap();
        out
    };
    let decode = |bytes: &[u8]| {
        let h = FrameHeader::parse(bytes[..FRAME_HEADER_BYTES].try_into().unwrap()).unwrap();
        let payload = &bytes[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + h.payload_bytes as usize];
        Request::decode(h.api_key, h.api_version, payload)
    };
    for make in [&fetch as &dyn Fn(ReadIsolation) -> Request, &subscribe] {
        for isolation in [ReadIsolation::Appended, ReadIsolation::Durable] {
            let req = make(isolation);
            assert_eq!(decode(&encode(&mut enc, 1, &req)).unwrap(), req);
            let v0 = decode(&encode(&mut enc, 0, &req)).unwrap();
            assert_eq!(
                v0,
                make(ReadIsolation::Appended),
                "version 0 has no trailer"
            );
        }
        let good = encode(&mut enc, 1, &make(ReadIsolation::Durable));
        let h = FrameHeader::parse(good[..FRAME_HEADER_BYTES].try_into().unwrap()).unwrap();
        let end = FRAME_HEADER_BYTES + h.payload_bytes as usize;
        let trailer = end - codec::READ_OPTIONS_BYTES;
        for (at, value) in [
            (trailer + 4, 2u8),
            (trailer + 9, 1),
            (trailer, 0xff),
            (trailer + 1, 1),
        ] {
            let mut bad = good.to_vec();
            bad[at] = value;
            assert!(
                matches!(decode(&bad), Err(WireError::Malformed { .. })),
                "byte {} = {value} accepted",
                at - trailer
            );
        }
    }
}
