//! One request of every api (for `hostile.rs`'s edge-value test and `auth.rs`'s refusals): by
//! default the queue apis aim at a work queue `q` and the others at topic `t`.

#![allow(dead_code)]

use shardline_engine::batch;
use shardline_net::protocol::queue::*;
use shardline_net::protocol::*;

/// One request of every api that has a response (Handshake and Authenticate excepted).
pub(crate) fn every_api() -> Vec<Request> {
    every_api_on("t", "q")
}

/// [`every_api`] with the topic apis aimed at `topic` and the queue apis at `queue`.
#[allow(clippy::too_many_lines, reason = "one request per api, in key order")]
pub(crate) fn every_api_on(topic: &str, queue: &str) -> Vec<Request> {
    let topic = topic.to_string();
    let queue = queue.to_string();
    ApiKey::ALL
        .iter()
        .filter_map(|api| match api {
            ApiKey::Handshake | ApiKey::Authenticate | ApiKey::Push => None,
            // No response; the refusal is checked by the Ping that follows it.
            ApiKey::GrantCredits => None,
            ApiKey::Ping => Some(Request::Ping(PingRequest { nonce: 1 })),
            ApiKey::Metadata => Some(Request::Metadata(MetadataRequest {
                topics: vec![topic.clone()],
            })),
            ApiKey::CreateTopic => Some(Request::CreateTopic(CreateTopicRequest {
                name: "new".into(),
                config: TopicConfig {
                    partitions: 1,
                    ..TopicConfig::default()
                },
            })),
            ApiKey::DeleteTopic => Some(Request::DeleteTopic(DeleteTopicRequest {
                name: topic.clone(),
            })),
            ApiKey::ListTopics => Some(Request::ListTopics(ListTopicsRequest {})),
            ApiKey::DescribeTopic => Some(Request::DescribeTopic(DescribeTopicRequest {
                name: topic.clone(),
            })),
            ApiKey::Produce => Some(produce(&topic)),
            ApiKey::Fetch => Some(fetch(&topic)),
            ApiKey::ListOffsets => Some(Request::ListOffsets(ListOffsetsRequest {
                topics: vec![ListOffsetsTopic {
                    name: topic.clone(),
                    partitions: vec![ListOffsetsPartition {
                        partition: 0,
                        spec: OffsetSpec::Latest,
                    }],
                }],
            })),
            ApiKey::Subscribe => Some(subscribe(&topic)),
            ApiKey::Unsubscribe => Some(Request::Unsubscribe(UnsubscribeRequest {
                subscription_id: 1,
            })),
            ApiKey::Stats => Some(Request::Stats(StatsRequest {})),
            ApiKey::Metrics => Some(Request::Metrics(MetricsRequest::default())),
            ApiKey::AlterTopic => Some(Request::AlterTopic(AlterTopicRequest {
                name: topic.clone(),
                ..AlterTopicRequest::default()
            })),
            ApiKey::InitProducer => Some(Request::InitProducer(InitProducerRequest::default())),
            ApiKey::JoinGroup => Some(Request::JoinGroup(JoinGroupRequest {
                group: "g".into(),
                topic: topic.clone(),
                client_id: "c".into(),
                session_timeout_ms: 10_000,
            })),
            ApiKey::Heartbeat => Some(Request::Heartbeat(HeartbeatRequest {
                group: "g".into(),
                member_id: "m".into(),
                ..HeartbeatRequest::default()
            })),
            ApiKey::LeaveGroup => Some(Request::LeaveGroup(LeaveGroupRequest {
                group: "g".into(),
                member_id: "m".into(),
            })),
            ApiKey::OffsetCommit => Some(Request::OffsetCommit(OffsetCommitRequest {
                group: "g".into(),
                topic: topic.clone(),
                ..OffsetCommitRequest::default()
            })),
            ApiKey::OffsetFetch => Some(Request::OffsetFetch(OffsetFetchRequest {
                group: "g".into(),
                topic: topic.clone(),
            })),
            ApiKey::DescribeGroup => Some(Request::DescribeGroup(DescribeGroupRequest {
                group: "g".into(),
            })),
            ApiKey::QueueCreate => Some(Request::QueueCreate(QueueCreateRequest {
                name: "q".into(),
                ..QueueCreateRequest::default()
            })),
            ApiKey::QueueReceive => Some(Request::QueueReceive(QueueReceiveRequest {
                topic: queue.clone(),
                ..QueueReceiveRequest::default()
            })),
            ApiKey::QueueAck => Some(Request::QueueAck(QueueAckRequest {
                topic: queue.clone(),
                ..QueueAckRequest::default()
            })),
            ApiKey::QueueNack => Some(Request::QueueNack(QueueNackRequest {
                topic: queue.clone(),
                ..QueueNackRequest::default()
            })),
            ApiKey::QueueChangeVisibility => Some(Request::QueueChangeVisibility(
                QueueChangeVisibilityRequest {
                    topic: queue.clone(),
                    ..QueueChangeVisibilityRequest::default()
                },
            )),
            ApiKey::QueueStats => Some(Request::QueueStats(QueueStatsRequest {
                topic: queue.clone(),
            })),
            ApiKey::QueuePeek => Some(Request::QueuePeek(QueuePeekRequest {
                topic: queue.clone(),
                ..QueuePeekRequest::default()
            })),
            ApiKey::QueueRedrive => Some(Request::QueueRedrive(QueueRedriveRequest {
                dead_letter_topic: queue.clone(),
                max_messages: 1,
            })),
            ApiKey::ResetOffsets => Some(Request::ResetOffsets(ResetOffsetsRequest {
                group: "g".into(),
                topic: topic.clone(),
                dry_run: true,
                ..ResetOffsetsRequest::default()
            })),
            ApiKey::QueuePurge => Some(Request::QueuePurge(QueuePurgeRequest {
                topic: topic.clone(),
            })),
            ApiKey::ListGroups => Some(Request::ListGroups(ListGroupsRequest {})),
            ApiKey::AddPartitions => Some(Request::AddPartitions(AddPartitionsRequest {
                name: topic.clone(),
                partitions: 2,
            })),
            ApiKey::CreateReplicatedTopic => Some(Request::CreateReplicatedTopic(
                shardline_net::protocol::CreateReplicatedTopicRequest {
                    name: "new-replicated".into(),
                    config: TopicConfig {
                        partitions: 1,
                        ..TopicConfig::default()
                    },
                    replicas: 1,
                },
            )),
            ApiKey::DescribeReplicas => Some(Request::DescribeReplicas(
                shardline_net::protocol::DescribeReplicasRequest {
                    name: topic.clone(),
                },
            )),
            ApiKey::DescribeCluster => Some(Request::DescribeCluster(
                shardline_net::protocol::DescribeClusterRequest {
                    topics: vec![topic.clone()],
                },
            )),
            // Removing a user that does not exist: refused, changes nothing.
            ApiKey::AlterSecurity => Some(Request::AlterSecurity(AlterSecurityRequest {
                op: SecurityOp::UserRemove,
                name: "nobody-here".into(),
                ..AlterSecurityRequest::default()
            })),
            ApiKey::ReassignPartition => Some(Request::ReassignPartition(
                shardline_net::protocol::ReassignPartitionRequest {
                    name: topic.clone(),
                    partition: 0,
                    replicas: vec![1],
                },
            )),
            ApiKey::AlterNode => Some(Request::AlterNode(
                shardline_net::protocol::AlterNodeRequest {
                    node_id: 999,
                    peer_address: String::new(),
                    remove: true,
                },
            )),
        })
        .collect()
}

pub(crate) fn produce(topic: &str) -> Request {
    Request::Produce(ProduceRequest {
        acks: Acks::Leader,
        timeout_ms: 5000,
        topics: vec![ProduceTopic {
            name: topic.into(),
            partitions: vec![ProducePartition {
                partition: 0,
                batch: batch::batch_of_values([b"secret".to_vec()]).unwrap(),
            }],
        }],
    })
}

pub(crate) fn fetch(topic: &str) -> Request {
    Request::Fetch(FetchRequest {
        max_wait_ms: 0,
        max_bytes: 1 << 20,
        topics: vec![FetchTopic {
            name: topic.into(),
            partitions: vec![FetchPartition {
                partition: 0,
                offset: 0,
                max_bytes: 1 << 20,
                max_records: 0,
            }],
        }],
        isolation: Default::default(),
    })
}

pub(crate) fn subscribe(topic: &str) -> Request {
    Request::Subscribe(SubscribeRequest {
        topic: topic.into(),
        partition: 0,
        start: OffsetSpec::Earliest,
        credit_records: 100,
        credit_bytes: 1 << 20,
        isolation: Default::default(),
    })
}
