//! DescribeConfigs (1-4) for topics: `retention.ms`, `retention.bytes`, `segment.bytes`,
//! `segment.ms` and `cleanup.policy` (always `delete`) from the topic's settings; `-1` for
//! "no limit", as Kafka shows it. Broker configs are answered empty.

use kafka_protocol::messages::{
    DescribeConfigsRequest, DescribeConfigsResponse,
    describe_configs_response::{DescribeConfigsResourceResult, DescribeConfigsResult},
};
use kafka_protocol::protocol::StrBytes;
use shardline_protocol::acl::Operation;

use super::{KConn, codes, off_shard, sasl};

/// Kafka's resource type for a topic.
const TOPIC: i8 = 2;
/// `config_source`: set for this topic / the broker default.
const TOPIC_CONFIG: i8 = 1;
const DEFAULT_CONFIG: i8 = 5;

pub(crate) async fn describe_configs(
    conn: &KConn,
    version: i16,
    req: DescribeConfigsRequest,
) -> DescribeConfigsResponse {
    let engine = conn.engine.clone();
    let topics = off_shard(move || engine.list_topics())
        .await
        .unwrap_or_default();
    let mut r = DescribeConfigsResponse::default();
    for res in &req.resources {
        let mut out = DescribeConfigsResult::default();
        out.resource_type = res.resource_type;
        out.resource_name = res.resource_name.clone();
        let name = res.resource_name.as_str();
        if res.resource_type != TOPIC {
            r.results.push(out);
            continue;
        }
        if !sasl::topic_allowed(conn, name, Operation::Describe) {
            out.error_code = sasl::TOPIC_AUTHORIZATION_FAILED;
            r.results.push(out);
            continue;
        }
        let Some(t) = topics.iter().find(|t| t.name == name) else {
            out.error_code = codes::UNKNOWN_TOPIC_OR_PARTITION;
            r.results.push(out);
            continue;
        };
        let num = |v: Option<u64>| {
            (
                v.map_or_else(|| "-1".to_string(), |n| n.to_string()),
                v.is_some(),
            )
        };
        let entries = [
            ("retention.ms", num(t.config.retention_ms)),
            ("retention.bytes", num(t.config.retention_bytes)),
            ("segment.bytes", num(t.config.segment_bytes)),
            ("segment.ms", num(t.config.segment_ms)),
            ("cleanup.policy", ("delete".to_string(), false)),
        ];
        let wanted = |k: &str| {
            res.configuration_keys
                .as_ref()
                .is_none_or(|keys| keys.iter().any(|w| w.as_str() == k))
        };
        for (key, (value, set)) in entries {
            if !wanted(key) {
                continue;
            }
            let mut c = DescribeConfigsResourceResult::default();
            c.name = StrBytes::from_static_str(key);
            c.value = Some(StrBytes::from_string(value));
            c.read_only = false;
            if version >= 1 {
                c.config_source = if set { TOPIC_CONFIG } else { DEFAULT_CONFIG };
            }
            out.configs.push(c);
        }
        r.results.push(out);
    }
    r
}
