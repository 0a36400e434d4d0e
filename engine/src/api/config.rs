//! Settings a caller gives per topic: the topic's own (`TopicConfig`) and its work-queue
//! settings (`QueueConfig`). Persisted in the metadata file; the engine-wide settings are in
//! `crate::config`.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Most priority levels a queue may declare.
pub const PRIORITY_LEVELS_MAX: u8 = 10;
/// Longest visibility timeout.
pub const VISIBILITY_TIMEOUT_MS_MAX: u64 = 12 * 3600 * 1000;

/// Settings given when a topic is created.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TopicConfig {
    pub partitions: u32,
    pub retention_bytes: Option<u64>,
    pub retention_ms: Option<u64>,
    pub segment_bytes: Option<u64>,
    pub segment_ms: Option<u64>,
    /// Work-queue settings; `None` for a plain (streaming) topic.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueueConfig>,
    /// Seal batch bodies on disk with AES-256-GCM (needs `encryption_key_file`); fixed at
    /// creation (crypto.rs, docs/storage.md "Encrypted batches").
    pub encrypted: bool,
    /// Replicas of each partition (issue 14; 1..=5, at most the cluster's node count). Absent
    /// in metadata written before clusters existed: 1.
    pub replicas: u32,
}

impl Default for TopicConfig {
    fn default() -> Self {
        TopicConfig {
            partitions: 1,
            retention_bytes: None,
            retention_ms: None,
            segment_bytes: None,
            segment_ms: None,
            queue: None,
            encrypted: false,
            replicas: 1,
        }
    }
}

impl TopicConfig {
    pub fn with_partitions(partitions: u32) -> Self {
        TopicConfig {
            partitions,
            ..Default::default()
        }
    }
}

/// Work-queue settings of a topic (persisted in the metadata file with the topic).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// How long a received message stays invisible to other consumers unless acked.
    pub visibility_timeout_ms: u64,
    /// Deliveries before a message goes to the dead-letter topic (at least 1).
    pub max_deliveries: u32,
    /// Redelivery delay after the first failed delivery; doubles per delivery.
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    /// Where messages go after `max_deliveries`; `None` drops them (counted).
    pub dead_letter_topic: Option<String>,
    /// 1..=10; a message's level is its `priority` header, higher first.
    pub priority_levels: u8,
    /// Strict priority: never deliver a lower level while a higher one has messages ready
    /// (off: weighted round robin, each level 8x the share of the one below).
    #[serde(default)]
    pub strict_priority: bool,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            visibility_timeout_ms: 30_000,
            max_deliveries: 5,
            backoff_base_ms: 1_000,
            backoff_max_ms: 60_000,
            dead_letter_topic: None,
            priority_levels: 1,
            strict_priority: false,
        }
    }
}

impl QueueConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(m));
        if self.max_deliveries == 0 {
            return bad("max_deliveries must be at least 1".into());
        }
        if !(1..=PRIORITY_LEVELS_MAX).contains(&self.priority_levels) {
            return bad(format!(
                "priority_levels must be 1..={PRIORITY_LEVELS_MAX}, got {}",
                self.priority_levels
            ));
        }
        if self.visibility_timeout_ms == 0 || self.visibility_timeout_ms > VISIBILITY_TIMEOUT_MS_MAX
        {
            return bad(format!(
                "visibility_timeout_ms must be 1..={VISIBILITY_TIMEOUT_MS_MAX}"
            ));
        }
        if self.backoff_base_ms > self.backoff_max_ms {
            return bad("backoff_base_ms exceeds backoff_max_ms".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod replicas_tests {
    use super::*;

    #[test]
    fn topics_stored_before_replicas_existed_have_one() {
        // A metadata entry as written before issue 14 (no `replicas`).
        let old = r#"{"partitions":3,"retention_bytes":null,"retention_ms":null,
                      "segment_bytes":null,"segment_ms":null,"encrypted":false}"#;
        let c: TopicConfig = serde_json::from_str(old).expect("old config");
        assert_eq!((c.partitions, c.replicas), (3, 1));
        let mut c = TopicConfig::with_partitions(2);
        assert_eq!(c.replicas, 1);
        c.replicas = 3;
        let text = serde_json::to_string(&c).expect("json");
        assert_eq!(serde_json::from_str::<TopicConfig>(&text).expect("new"), c);
    }
}
