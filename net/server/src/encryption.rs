//! Encryption at rest, the server's part (docs/security.md, "Encryption at rest"): which new
//! topics are created encrypted (`[server.encryption] topics`), and opening sealed batches on
//! the way out, after the ACL check has let the consumer in. The engine seals on append
//! (`shardline_engine::crypto`); segment files and the engine's cache hold only ciphertext.

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use shardline_engine::crypto::Keyring;
use shardline_engine::{Engine, FetchResponse};

use crate::convert::ToEngine;
use crate::protocol::{CreateTopicRequest, ErrorResponse, FetchPartitionResult, code};

/// `[server.encryption]`. The keys themselves are `engine.encryption_key_file`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct EncryptionConfig {
    /// Topics created with a matching name are encrypted: a name, or a prefix ending in `*`
    /// (`"*"` = every new topic). Existing topics keep what they were created with.
    pub topics: Vec<String>,
}

impl EncryptionConfig {
    pub fn matches(&self, topic: &str) -> bool {
        self.topics.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => topic.starts_with(prefix),
            None => p == topic,
        })
    }
}

/// The engine topic config of a CreateTopic, with the encryption policy applied.
pub(crate) fn topic_config(
    policy: &EncryptionConfig,
    c: &CreateTopicRequest,
) -> shardline_engine::TopicConfig {
    let mut config: shardline_engine::TopicConfig = c.config.to_engine();
    config.encrypted = policy.matches(&c.name);
    config
}

/// Opens the sealed batches of one partition's reads.
#[derive(Clone)]
pub(crate) struct Opener {
    keyring: Arc<Keyring>,
    topic_id: u64,
    partition: u32,
}

impl Opener {
    /// `None` when the topic is not encrypted (or unknown: the read fails on its own then).
    pub(crate) fn for_partition(engine: &Engine, topic: &str, partition: u32) -> Option<Opener> {
        let route = engine.route(topic).ok()?;
        if !route.encrypted {
            return None;
        }
        Some(Opener {
            keyring: engine.keyring()?.clone(),
            topic_id: route.id,
            partition,
        })
    }

    pub(crate) fn open(&self, chunks: &[Bytes]) -> Result<Vec<Bytes>, ErrorResponse> {
        chunks
            .iter()
            .map(|c| {
                self.keyring
                    .open_chunk(c, self.topic_id, self.partition)
                    .map_err(|e| ErrorResponse::new(code::DECRYPTION_FAILED, e.to_string()))
            })
            .collect()
    }
}

/// A fetch's partition result, with sealed batches opened (a batch that does not open is
/// DECRYPTION_FAILED for the partition, never ciphertext passed off as records).
pub(crate) fn fetch_result(
    engine: &Engine,
    topic: &str,
    partition: u32,
    offset: u64,
    r: shardline_engine::Result<FetchResponse>,
) -> FetchPartitionResult {
    let r = match (r, Opener::for_partition(engine, topic, partition)) {
        (Ok(mut f), Some(opener)) => match opener.open(&f.chunks) {
            Ok(chunks) => {
                f.chunks = chunks;
                Ok(f)
            }
            Err(e) => {
                return FetchPartitionResult {
                    partition,
                    error_code: e.code,
                    error_message: Some(e.message),
                    ..Default::default()
                };
            }
        },
        (r, _) => r,
    };
    crate::convert::fetch_result(partition, offset, r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_patterns() {
        let p = EncryptionConfig {
            topics: vec!["orders".into(), "pay.*".into()],
        };
        assert!(p.matches("orders") && p.matches("pay.eu") && p.matches("pay."));
        assert!(!p.matches("orders2") && !p.matches("pay") && !p.matches("x"));
        let all = EncryptionConfig {
            topics: vec!["*".into()],
        };
        assert!(all.matches("anything"));
        assert!(!EncryptionConfig::default().matches("x"));
    }
}
