//! Engine and topic configuration (docs/operations.md lists every setting with its default).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use crate::api::config::{QueueConfig, TopicConfig};
use crate::error::{Error, Result};
use crate::log::{LogConfig, SEGMENT_BYTES_MAX};

/// Settings of the whole engine. Every field has a default; unknown keys are errors.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Where topics, partitions and the metadata file live.
    pub data_dir: PathBuf,
    /// Master keys for encrypted topics (crypto.rs); needed to create or open one.
    pub encryption_key_file: Option<PathBuf>,
    /// Number of shards (executors); 0 = one per usable core.
    pub shards: usize,
    /// Pin each shard to a core of the process's affinity mask.
    pub pin_shards: bool,
    /// io_uring-registered DMA memory per shard (counts against RLIMIT_MEMLOCK).
    pub io_memory_bytes: usize,
    /// Spin this many microseconds before parking an idle shard (0 = park at once).
    pub spin_before_park_us: u64,
    /// Memory for recently appended batches, per shard (tailing readers never touch disk).
    pub cache_bytes_per_shard: usize,
    /// Data acknowledged at `leader` level is fdatasync'd at most this long after it was written.
    pub sync_interval_ms: u64,
    /// How often each shard applies retention.
    pub retention_check_interval_ms: u64,
    /// Largest record batch accepted from a producer.
    pub batch_bytes_max: usize,
    /// Requests queued to one shard before callers wait (backpressure).
    pub shard_queue_depth: usize,
    /// Appended-but-unwritten bytes a shard may hold; beyond this it stops taking requests
    /// until flushes catch up, so producers wait (acks `none` and `leader` included).
    pub unflushed_bytes_max_per_shard: usize,
    /// Defaults for topics created without explicit settings.
    pub topic_defaults: TopicDefaults,
}

/// Log settings a topic inherits unless it sets its own.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TopicDefaults {
    pub segment_bytes: u64,
    pub segment_ms: u64,
    pub index_interval_bytes: u64,
    pub write_chunk_bytes: usize,
    pub checkpoint_interval_bytes: u64,
    pub retention_bytes: Option<u64>,
    pub retention_ms: Option<u64>,
    pub partition_cache_bytes: usize,
    /// Zero-filled space kept ahead of small writes (docs/storage.md, "Preallocation").
    pub preallocate_bytes: u64,
}

impl Default for TopicDefaults {
    fn default() -> Self {
        let l = LogConfig::default();
        TopicDefaults {
            segment_bytes: l.segment_bytes,
            segment_ms: l.segment_ms,
            index_interval_bytes: l.index_interval_bytes,
            write_chunk_bytes: l.write_chunk_bytes,
            checkpoint_interval_bytes: l.checkpoint_interval_bytes,
            retention_bytes: None,
            retention_ms: None,
            partition_cache_bytes: l.cache_bytes,
            preallocate_bytes: l.preallocate_bytes,
        }
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            data_dir: PathBuf::from("./shardline-data"),
            encryption_key_file: None,
            shards: 0,
            pin_shards: true,
            io_memory_bytes: 2 << 20,
            spin_before_park_us: 0,
            cache_bytes_per_shard: 64 << 20,
            sync_interval_ms: 50,
            retention_check_interval_ms: 30_000,
            batch_bytes_max: 16 << 20,
            shard_queue_depth: 4096,
            unflushed_bytes_max_per_shard: 256 << 20,
            topic_defaults: TopicDefaults::default(),
        }
    }
}

impl EngineConfig {
    /// A config with everything default but the data directory.
    pub fn with_data_dir(dir: impl Into<PathBuf>) -> Self {
        EngineConfig {
            data_dir: dir.into(),
            ..Default::default()
        }
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(m));
        if self.shards > 1024 {
            return bad(format!("shards = {} is more than 1024", self.shards));
        }
        if self.io_memory_bytes < 64 << 10 {
            return bad("io_memory_bytes must be at least 64 KiB".into());
        }
        if self.batch_bytes_max < 1024 || self.batch_bytes_max > crate::batch::BATCH_BYTES_MAX {
            return bad("batch_bytes_max must be between 1 KiB and 64 MiB".into());
        }
        if self.unflushed_bytes_max_per_shard < 1 << 20 {
            return bad("unflushed_bytes_max_per_shard must be at least 1 MiB".into());
        }
        if self.shard_queue_depth == 0 {
            return bad("shard_queue_depth must be positive".into());
        }
        if self.sync_interval_ms == 0 {
            return bad("sync_interval_ms must be positive".into());
        }
        self.log_config(&TopicConfig::default()).validate()
    }

    /// Resolves a topic's log settings against the defaults.
    pub fn log_config(&self, t: &TopicConfig) -> LogConfig {
        let d = &self.topic_defaults;
        LogConfig {
            segment_bytes: t
                .segment_bytes
                .unwrap_or(d.segment_bytes)
                .min(SEGMENT_BYTES_MAX),
            segment_ms: t.segment_ms.unwrap_or(d.segment_ms),
            index_interval_bytes: d.index_interval_bytes,
            write_chunk_bytes: d.write_chunk_bytes,
            checkpoint_interval_bytes: d.checkpoint_interval_bytes,
            retention_bytes: t.retention_bytes.or(d.retention_bytes),
            retention_ms: t.retention_ms.or(d.retention_ms),
            cache_bytes: d.partition_cache_bytes,
            encryption: None,
            preallocate_bytes: d.preallocate_bytes,
        }
    }
}

/// Most partitions one topic may have.
pub const PARTITIONS_MAX: u32 = 100_000;
/// Longest topic name.
pub const TOPIC_NAME_BYTES_MAX: usize = 200;

/// Topic names: 1..=200 bytes of `[A-Za-z0-9._-]`, not `.` or `..`, not starting with `__`
/// (reserved for internal topics).
pub fn validate_topic_name(name: &str) -> Result<()> {
    let bad = |reason| {
        Err(Error::InvalidTopicName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > TOPIC_NAME_BYTES_MAX {
        return bad("longer than 200 bytes");
    }
    if name == "." || name == ".." {
        return bad("'.' and '..' are not allowed");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return bad("only ASCII letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

/// Validates a topic's settings.
pub fn validate_topic_config(t: &TopicConfig) -> Result<()> {
    if t.partitions == 0 || t.partitions > PARTITIONS_MAX {
        return Err(Error::InvalidArgument(format!(
            "partitions must be between 1 and {PARTITIONS_MAX}, got {}",
            t.partitions
        )));
    }
    if let Some(s) = t.segment_bytes
        && !(64 << 10..=SEGMENT_BYTES_MAX).contains(&s)
    {
        return Err(Error::InvalidArgument(format!(
            "segment_bytes {s} outside 64 KiB..2 GiB"
        )));
    }
    if let Some(q) = &t.queue {
        q.validate()?;
    }
    if t.replicas == 0 || t.replicas > REPLICAS_MAX {
        return Err(Error::InvalidArgument(format!(
            "replicas must be between 1 and {REPLICAS_MAX}, got {}",
            t.replicas
        )));
    }
    Ok(())
}

/// Most replicas a partition may have (issue 14).
pub const REPLICAS_MAX: u32 = 5;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_are_checked() {
        for ok in ["a", "orders.v1", "A_b-9", &"x".repeat(200)] {
            assert!(validate_topic_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "ü", &"x".repeat(201), "a\0"] {
            assert!(
                matches!(
                    validate_topic_name(bad),
                    Err(Error::InvalidTopicName { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn unknown_config_keys_are_refused() {
        let e = serde_json::from_str::<EngineConfig>(r#"{"shardz": 2}"#).unwrap_err();
        assert!(e.to_string().contains("shardz"), "{e}");
    }

    #[test]
    fn topic_config_validation() {
        assert!(validate_topic_config(&TopicConfig::with_partitions(0)).is_err());
        assert!(validate_topic_config(&TopicConfig::with_partitions(3)).is_ok());
        let t = TopicConfig {
            segment_bytes: Some(10),
            ..TopicConfig::default()
        };
        assert!(validate_topic_config(&t).is_err());
    }
}

#[cfg(test)]
mod replicas_tests {
    use super::*;

    #[test]
    fn replication_factors_are_validated() {
        let mut c = TopicConfig::with_partitions(2);
        for (replicas, ok) in [(0, false), (1, true), (3, true), (5, true), (6, false)] {
            c.replicas = replicas;
            assert_eq!(validate_topic_config(&c).is_ok(), ok, "{replicas}");
        }
    }
}
