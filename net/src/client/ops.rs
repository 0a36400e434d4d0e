//! Operations calls of the client: the Metrics api (what `shardline stats` and `top` show)
//! and AlterTopic (docs/protocol.md, "30 Metrics", "31 AlterTopic").

use super::error::ClientError;
use super::pool::{Client, expect_response};
use crate::protocol::{
    AlterTopicRequest, MetricsRequest, MetricsResponse, Request, SettingChange, TopicInfo,
};

impl Client {
    /// Every figure of the server: shards, connections, requests and, with
    /// `include_partitions`, every partition (docs/operations.md, "Metrics").
    pub fn metrics(&self, include_partitions: bool) -> Result<MetricsResponse, ClientError> {
        futures_lite::future::block_on(self.metrics_async(include_partitions))
    }

    pub async fn metrics_async(
        &self,
        include_partitions: bool,
    ) -> Result<MetricsResponse, ClientError> {
        let request = Request::Metrics(MetricsRequest { include_partitions });
        expect_response!(self.call_bootstrap(request).await?, Metrics)
    }

    /// Changes a topic's retention; `Keep` leaves a setting as it is, `Clear` removes the
    /// limit. Returns the topic with its new settings.
    pub fn alter_topic_retention(
        &self,
        name: &str,
        retention_bytes: SettingChange,
        retention_ms: SettingChange,
    ) -> Result<TopicInfo, ClientError> {
        let request = Request::AlterTopic(AlterTopicRequest {
            name: name.to_string(),
            retention_bytes,
            retention_ms,
        });
        futures_lite::future::block_on(async {
            expect_response!(self.call_bootstrap(request).await?, AlterTopic).map(|r| r.topic)
        })
    }
}
