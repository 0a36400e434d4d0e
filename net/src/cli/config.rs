//! The server's configuration file (docs/operations.md, "Configuration"): one TOML file with
//! `[engine]`, `[server]`, `[metrics]`, `[log]` and (for a cluster) `[cluster]` tables. Every key has a default; unknown
//! keys and invalid values are start-up errors that name the key (`engine.shards: ...`).

use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};
use shardline_engine::EngineConfig;

use crate::server::ServerConfig;

/// The `[metrics]` table: the Prometheus endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve `GET /metrics`.
    pub enabled: bool,
    /// Address of the endpoint; port 0 picks a free port.
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            listen: "127.0.0.1:9464".into(),
        }
    }
}

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Timestamp, level, target, message, fields.
    #[default]
    Full,
    /// Shorter lines (fields after the message, no target).
    Compact,
}

/// The `[log]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `tracing` filter directives (`info`, `shardline_engine=debug,warn`); `RUST_LOG`, when
    /// set, wins.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Full,
        }
    }
}

/// The whole file. Unknown keys, at any level, are errors.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    pub engine: EngineConfig,
    pub server: ServerConfig,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
    /// `[cluster]`: node id, cluster id, every node's peer address, peer TLS
    /// (docs/replication.md). Absent = a single node, as before clusters existed.
    pub cluster: Option<shardline_server::peer::ClusterConfig>,
    /// `[kafka]`: the Kafka listener (docs/kafka.md); off unless `listen` is set.
    pub kafka: crate::server::KafkaConfig,
}

/// A configuration error: the key's full path and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct ConfigError {
    pub key: String,
    pub reason: String,
}

fn bad(key: &str, reason: impl Into<String>) -> Result<(), ConfigError> {
    Err(ConfigError {
        key: key.to_string(),
        reason: reason.into(),
    })
}

fn check_range(key: &str, value: u64, min: u64, max: u64, unit: &str) -> Result<(), ConfigError> {
    if value < min || value > max {
        return bad(
            key,
            format!("{value} is outside {min}..={max} {unit}")
                .trim_end()
                .to_string(),
        );
    }
    Ok(())
}

fn check_addr(key: &str, value: &str) -> Result<(), ConfigError> {
    match value.parse::<SocketAddr>() {
        Ok(_) => Ok(()),
        Err(_) if resolve_listen(value).is_ok() => Ok(()),
        Err(e) => bad(
            key,
            format!("'{value}' is not an IP:port or HOST:port address ({e})"),
        ),
    }
}

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

impl FileConfig {
    /// Parses a file's text. Errors name the key path, and the line for syntax errors.
    pub fn parse(text: &str) -> Result<FileConfig, ConfigError> {
        let de = toml::de::Deserializer::parse(text).map_err(|e| ConfigError {
            key: line_of(text, e.span()),
            reason: e.message().trim().to_string(),
        })?;
        let config: FileConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            ConfigError {
                key: if key == "." {
                    line_of(text, inner.span())
                } else {
                    key
                },
                reason: inner.message().trim().to_string(),
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Reads and parses a file.
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            key: path.display().to_string(),
            reason: format!("cannot read: {e}"),
        })?;
        FileConfig::parse(&text)
    }

    /// Checks every value; the first invalid one is reported by its key.
    #[allow(
        clippy::too_many_lines,
        reason = "one check per config key, in file order"
    )]
    pub fn validate(&self) -> Result<(), ConfigError> {
        let e = &self.engine;
        if e.data_dir.as_os_str().is_empty() {
            bad("engine.data_dir", "must not be empty")?;
        }
        check_range("engine.shards", e.shards as u64, 0, 1024, "")?;
        check_range(
            "engine.io_memory_bytes",
            e.io_memory_bytes as u64,
            64 * KIB,
            u64::MAX,
            "bytes",
        )?;
        check_range(
            "engine.batch_bytes_max",
            e.batch_bytes_max as u64,
            KIB,
            shardline_engine::batch::BATCH_BYTES_MAX as u64,
            "bytes",
        )?;
        check_range(
            "engine.unflushed_bytes_max_per_shard",
            e.unflushed_bytes_max_per_shard as u64,
            MIB,
            u64::MAX,
            "bytes",
        )?;
        check_range(
            "engine.shard_queue_depth",
            e.shard_queue_depth as u64,
            1,
            1 << 20,
            "requests",
        )?;
        check_range(
            "engine.sync_interval_ms",
            e.sync_interval_ms,
            1,
            3_600_000,
            "ms",
        )?;
        check_range(
            "engine.retention_check_interval_ms",
            e.retention_check_interval_ms,
            10,
            u64::MAX,
            "ms",
        )?;
        let t = &e.topic_defaults;
        check_range(
            "engine.topic_defaults.segment_bytes",
            t.segment_bytes,
            64 * KIB,
            2 * GIB,
            "bytes",
        )?;
        check_range(
            "engine.topic_defaults.segment_ms",
            t.segment_ms,
            1,
            u64::MAX,
            "ms",
        )?;
        check_range(
            "engine.topic_defaults.index_interval_bytes",
            t.index_interval_bytes,
            1,
            u64::MAX,
            "bytes",
        )?;
        let chunk = t.write_chunk_bytes as u64;
        if chunk < 64 * KIB || !chunk.is_multiple_of(4 * KIB) {
            bad(
                "engine.topic_defaults.write_chunk_bytes",
                format!("{chunk} must be a multiple of 4096, at least 65536"),
            )?;
        }
        let s = &self.server;
        check_addr("server.listen", &s.listen)?;
        check_range(
            "server.frame_bytes_max",
            u64::from(s.frame_bytes_max),
            u64::from(crate::protocol::FRAME_BYTES_MIN_LIMIT),
            u64::from(crate::protocol::FRAME_BYTES_MAX_LIMIT),
            "bytes",
        )?;
        check_range(
            "server.connections_max",
            s.connections_max as u64,
            1,
            1 << 24,
            "",
        )?;
        check_range(
            "server.idle_timeout_ms",
            s.idle_timeout_ms,
            1,
            u64::MAX,
            "ms",
        )?;
        check_range(
            "server.inflight_requests_max",
            s.inflight_requests_max as u64,
            1,
            1 << 20,
            "",
        )?;
        check_range(
            "server.subscriptions_per_connection_max",
            s.subscriptions_per_connection_max as u64,
            1,
            1 << 20,
            "",
        )?;
        check_range(
            "server.outbox_bytes_max",
            s.outbox_bytes_max as u64,
            64 * KIB,
            u64::MAX,
            "bytes",
        )?;
        check_addr("metrics.listen", &self.metrics.listen)?;
        self.validate_kafka()?;
        if let Err(err) = tracing_subscriber::EnvFilter::builder().parse(&self.log.level) {
            bad("log.level", format!("'{}': {err}", self.log.level))?;
        }
        if let Some(c) = &self.cluster {
            c.validate().map_err(|e| ConfigError {
                key: "cluster".into(),
                reason: e.to_string(),
            })?;
        }
        // Anything the engine checks beyond the above.
        self.engine.validate().map_err(|err| ConfigError {
            key: "engine".into(),
            reason: err.to_string(),
        })
    }

    /// The effective configuration as TOML (`shardline serve --print-config`). Unset optional
    /// settings (no retention limit) are left out, as TOML has no null.
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string_pretty(self)
    }
}

impl FileConfig {
    /// `[kafka]` (docs/kafka.md, "Configuration").
    fn validate_kafka(&self) -> Result<(), ConfigError> {
        let k = &self.kafka;
        if let Some(listen) = &k.listen {
            check_addr("kafka.listen", listen)?;
        }
        check_range(
            "kafka.request_bytes_max",
            u64::from(k.request_bytes_max),
            64 * KIB,
            GIB,
            "bytes",
        )?;
        check_range(
            "kafka.default_partitions",
            u64::from(k.default_partitions.unwrap_or(1)),
            1,
            1 << 16,
            "",
        )?;
        check_range(
            "kafka.default_replication_factor",
            u64::from(k.default_replication_factor.unwrap_or(1)),
            1,
            5,
            "",
        )
    }
}

fn line_of(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(s) => {
            let before = text.get(..s.start).unwrap_or(text);
            let line = before.bytes().filter(|b| *b == b'\n').count() + 1;
            format!("line {line}")
        }
        None => "config".to_string(),
    }
}

/// The default data directory: `$SHARDLINE_DATA_DIR`; else `$XDG_DATA_HOME/shardline`; else
/// `/var/lib/shardline` for root and `~/.local/share/shardline` for others. Never the current
/// directory, so that a server started from a source tree does not write into it.
pub fn default_data_dir() -> std::path::PathBuf {
    use std::path::PathBuf;
    let nonempty = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = nonempty("SHARDLINE_DATA_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(xdg) = nonempty("XDG_DATA_HOME") {
        return PathBuf::from(xdg).join("shardline");
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    match nonempty("HOME") {
        Some(home) if !root => PathBuf::from(home).join(".local/share/shardline"),
        _ => PathBuf::from("/var/lib/shardline"),
    }
}

/// A listen address as `IP:port`: an IP address as is, a host name (`localhost:7070`)
/// resolved to its first address, IPv4 first.
pub fn resolve_listen(addr: &str) -> Result<String, String> {
    use std::net::ToSocketAddrs;
    if addr.parse::<SocketAddr>().is_ok() {
        return Ok(addr.to_string());
    }
    let resolved: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| format!("'{addr}' is not an IP:port or HOST:port address ({e})"))?
        .collect();
    resolved
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| resolved.first())
        .map(SocketAddr::to_string)
        .ok_or_else(|| format!("'{addr}' resolves to no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(text: &str) -> ConfigError {
        FileConfig::parse(text).expect_err(text)
    }

    #[test]
    fn defaults_round_trip_through_print_config() {
        let text = FileConfig::default().to_toml().unwrap_or_default();
        assert!(
            text.contains("[engine]") && text.contains("[metrics]"),
            "{text}"
        );
        assert_eq!(FileConfig::parse(&text), Ok(FileConfig::default()));
        assert_eq!(FileConfig::parse(""), Ok(FileConfig::default()));
    }

    #[test]
    fn unknown_keys_name_their_table_and_key() {
        let e = error_of("[engine]\nshardz = 2\n");
        assert_eq!(e.key, "engine.shardz");
        assert!(e.reason.contains("shardz"), "{e}");
        let e = error_of("[engine.topic_defaults]\nsegment_byte = 1\n");
        assert_eq!(e.key, "engine.topic_defaults.segment_byte");
        assert!(e.reason.contains("segment_byte"), "{e}");
        let e = error_of("[metricz]\n");
        assert!(e.reason.contains("metricz"), "{e}");
    }

    #[test]
    fn invalid_values_name_the_key() {
        assert_eq!(
            error_of("[engine]\nshards = \"two\"\n").key,
            "engine.shards"
        );
        assert_eq!(error_of("[engine]\nshards = 5000\n").key, "engine.shards");
        assert_eq!(
            error_of("[server]\nlisten = \"nowhere\"\n").key,
            "server.listen"
        );
        assert_eq!(
            error_of("[metrics]\nlisten = \"x:y\"\n").key,
            "metrics.listen"
        );
        assert_eq!(error_of("[log]\nlevel = \"info,=[\"\n").key, "log.level");
        assert_eq!(error_of("[log]\nformat = \"xml\"\n").key, "log.format");
        assert_eq!(
            error_of("[engine.topic_defaults]\nwrite_chunk_bytes = 5000\n").key,
            "engine.topic_defaults.write_chunk_bytes"
        );
        assert_eq!(
            error_of("[server]\nframe_bytes_max = 10\n").key,
            "server.frame_bytes_max"
        );
        assert_eq!(error_of("[engine\n").key, "line 1");
    }

    #[test]
    fn the_cluster_table_is_checked_and_round_trips() {
        let text = "[cluster]\nnode_id = 2\ncluster_id = \"east\"\n\
                    nodes = [\"1@127.0.0.1:7101\", \"2@localhost:7102\"]\n\
                    [cluster.tls]\ncert = \"n.pem\"\nkey = \"n.key\"\nca = \"ca.pem\"\n";
        let config = FileConfig::parse(text).expect("valid");
        let c = config.cluster.clone().expect("cluster");
        assert_eq!(
            (c.node_id, c.cluster_id.as_str(), c.nodes.len()),
            (2, "east", 2)
        );
        assert!(c.tls.is_some());
        let printed = config.to_toml().expect("toml");
        assert_eq!(FileConfig::parse(&printed), Ok(config));
        let e = error_of("[cluster]\nnode_id = 3\nnodes = [\"1@127.0.0.1:7101\"]\n");
        assert_eq!(e.key, "cluster");
        assert!(
            e.reason.contains("node 3 is not in the cluster list"),
            "{e}"
        );
        assert_eq!(error_of("[cluster]\nnodez = 1\n").key, "cluster.nodez");
        assert_eq!(FileConfig::parse("").map(|c| c.cluster), Ok(None));
    }
}
