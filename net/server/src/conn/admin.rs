//! Metadata and admin requests of a connection (topics, groups, cluster operations), and
//! `serve --auto-create`.

use super::*;

impl Conn {
    pub(super) fn metadata(&self, m: &MetadataRequest) -> MetadataResponse {
        let shards = self
            .shared
            .shard_addrs
            .lock()
            .map(|a| {
                a.iter()
                    .enumerate()
                    .map(|(i, a)| ShardAddress {
                        shard: i as u32,
                        address: a.to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let topics = if m.topics.is_empty() {
            self.engine
                .topic_routes()
                .iter()
                .map(|r| TopicMetadata {
                    name: r.name.to_string(),
                    error_code: code::NONE,
                    topic_id: r.id,
                    partition_shards: r.shards.clone(),
                })
                .collect()
        } else {
            m.topics
                .iter()
                .map(|t| match self.engine.route(t) {
                    Ok(r) => TopicMetadata {
                        name: t.clone(),
                        error_code: code::NONE,
                        topic_id: r.id,
                        partition_shards: r.shards.clone(),
                    },
                    Err(e) => TopicMetadata {
                        name: t.clone(),
                        error_code: e.code(),
                        topic_id: 0,
                        partition_shards: Vec::new(),
                    },
                })
                .collect()
        };
        MetadataResponse { shards, topics }
    }

    /// Runs a control-plane call on a helper thread (it may wait for every shard, this one too).
    pub(super) async fn admin(
        &self,
        request: Request,
    ) -> Result<Response, shardline_engine::Error> {
        let engine = self.engine.clone();
        let encryption = self.shared.cfg.encryption.clone();
        let started = self.shared.started;
        let shared = self.shared.clone();
        let (tx, rx) = flume::bounded(1);
        let spawned = std::thread::Builder::new()
            .name("shardline-admin".into())
            .spawn(move || {
                let r = match request {
                    Request::CreateTopic(c) => crate::replicas::create_topic(
                        &engine,
                        &shared.cluster,
                        &c.name,
                        crate::encryption::topic_config(&encryption, &c),
                    )
                    .map(|t| {
                        Response::CreateTopic(CreateTopicResponse {
                            topic: (&t).to_wire(),
                        })
                    }),
                    Request::DeleteTopic(d) => {
                        crate::replicas::delete_topic(&engine, &shared.cluster, &d.name)
                            .map(|()| Response::DeleteTopic(DeleteTopicResponse {}))
                    }
                    Request::ListTopics(_) => Ok(Response::ListTopics(ListTopicsResponse {
                        topics: engine.list_topics().iter().map(ToWire::to_wire).collect(),
                    })),
                    Request::DescribeTopic(d) => engine
                        .describe_topic(&d.name)
                        .map(|t| Response::DescribeTopic((&t).to_wire())),
                    Request::Stats(_) => engine.shard_stats().map(|s| {
                        Response::Stats(StatsResponse {
                            uptime_ms: started.elapsed().as_millis() as u64,
                            shards: s.iter().map(ToWire::to_wire).collect(),
                            counters: shared.metrics.counters(),
                        })
                    }),
                    Request::Metrics(m) => {
                        let uptime_ms = started.elapsed().as_millis() as u64;
                        crate::metrics::gather(
                            &engine,
                            &shared.metrics,
                            uptime_ms,
                            m.include_partitions,
                        )
                        .map(Response::Metrics)
                    }
                    Request::AlterTopic(a) => engine
                        .alter_retention(
                            &a.name,
                            |b| a.retention_bytes.apply(b),
                            |ms| a.retention_ms.apply(ms),
                        )
                        .map(|t| {
                            Response::AlterTopic(crate::protocol::AlterTopicResponse {
                                topic: (&t).to_wire(),
                            })
                        }),
                    Request::AddPartitions(a) => {
                        engine.add_partitions(&a.name, a.partitions).map(|t| {
                            Response::AddPartitions(crate::protocol::AddPartitionsResponse {
                                topic: (&t).to_wire(),
                            })
                        })
                    }
                    Request::CreateReplicatedTopic(c) => {
                        crate::replicas::create(&engine, &encryption, &shared.cluster, c)
                            .map(Response::CreateReplicatedTopic)
                    }
                    Request::DescribeReplicas(d) => {
                        crate::replicas::describe(&engine, &shared.cluster, &d.name)
                            .map(Response::DescribeReplicas)
                    }
                    Request::DescribeCluster(d) => Ok(Response::DescribeCluster(
                        crate::replicas::describe_cluster(&engine, &shared.cluster, &d),
                    )),
                    Request::ReassignPartition(r) => {
                        crate::membership::reassign(&engine, r).map(Response::ReassignPartition)
                    }
                    Request::AlterNode(r) => {
                        crate::nodes::alter_node(&engine, r).map(Response::AlterNode)
                    }
                    _ => Err(shardline_engine::Error::InvalidArgument(
                        "not an admin request".into(),
                    )),
                };
                let _ = tx.send(r);
            });
        if let Err(e) = spawned {
            return Err(shardline_engine::Error::Runtime(format!(
                "cannot start admin thread: {e}"
            )));
        }
        rx.recv_async()
            .await
            .map_err(|_| shardline_engine::Error::Runtime("admin thread died".into()))?
    }

    pub(super) fn reply_admin(
        &self,
        cid: u32,
        api: u16,
        ver: u16,
        r: Result<Response, shardline_engine::Error>,
    ) {
        match r {
            Ok(resp) => {
                let resp = crate::session::filter_response(&self.auth, resp);
                self.send_response(cid, ver, &resp);
            }
            Err(e) => self.send_error(cid, api, ver, &(&e).to_wire()),
        }
    }
}

impl Conn {
    /// `serve --auto-create` (`server.auto_create_topics`): creates the topics a Metadata
    /// request names that do not exist, with `auto_create_partitions` partitions, before the
    /// answer (a barrier for this connection). Each needs the `create` permission on the topic
    /// and fits the topic quotas; a name that cannot be created is answered UNKNOWN_TOPIC as
    /// without the option.
    pub(super) async fn auto_create(&self, topics: &[String]) {
        let partitions = self.shared.cfg.auto_create_partitions.max(1);
        for name in topics {
            if self.engine.route(name).is_ok()
                || !self.auth.allowed(
                    crate::auth::ResourceType::Topic,
                    name,
                    crate::auth::Operation::Create,
                )
                || self
                    .shared
                    .quotas
                    .check_create(&self.engine, partitions)
                    .is_err()
            {
                continue;
            }
            let request = Request::CreateTopic(crate::protocol::CreateTopicRequest {
                name: name.clone(),
                config: crate::protocol::TopicConfig {
                    partitions,
                    ..Default::default()
                },
            });
            self.begin();
            match self.admin(request).await {
                Ok(_) => tracing::info!(topic = %name, partitions, "topic auto-created"),
                Err(shardline_engine::Error::TopicExists(_)) => {}
                Err(e) => tracing::debug!(topic = %name, error = %e, "auto-create refused"),
            }
            self.end();
        }
    }
}
