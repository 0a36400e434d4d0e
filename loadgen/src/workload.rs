//! Workload parameters: built-in defaults, overridden by a workload TOML file
//! (`loadgen/workloads/*.toml`), overridden by command-line flags.
//!
//! A workload file may set any of the fields of [`WorkloadSpec`]; unknown keys are errors, so a
//! typo fails loudly instead of silently running the default. Durations are humantime strings
//! (`"10s"`, `"500ms"`).

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::payload;

/// How much durability a producer waits for (driver-neutral; maps onto each broker's notion).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AckLevel {
    /// Fire and forget: `acked` counts messages handed to the broker.
    None,
    /// Appended by the leader, in memory.
    Leader,
    /// On disk (fdatasync) before the ack.
    Durable,
    /// Committed: on disk on a majority of the partition's replicas (a Shardline cluster;
    /// `durable` on a partition with one replica, and for brokers without replication).
    All,
}

impl AckLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            AckLevel::None => "none",
            AckLevel::Leader => "leader",
            AckLevel::Durable => "durable",
            AckLevel::All => "all",
        }
    }
}

/// Limits that keep a run's memory and thread count bounded.
pub const PRODUCERS_MAX: u32 = 256;
pub const CONSUMERS_MAX: u32 = 256;
pub const PARTITIONS_MAX: u32 = 4096;
pub const BATCH_MESSAGES_MAX: u32 = 100_000;
pub const INFLIGHT_BATCHES_MAX: u32 = 4096;
pub const MESSAGE_BYTES_MAX: u64 = 16 << 20;
/// Largest encoded batch we build (the engine's default limit is 16 MiB; leave headroom).
pub const BATCH_BYTES_MAX: u64 = 15 << 20;
/// Most payload bytes all producers may hold in flight together.
pub const INFLIGHT_BYTES_MAX: u64 = 2 << 30;
/// Per-record overhead of the engine's batch encoding (BatchBuilder's own estimate).
const RECORD_OVERHEAD_BYTES: u64 = 48;

/// The fully resolved parameters of one run; written verbatim into the JSON result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Workload {
    pub name: String,
    #[serde(rename = "duration_s", with = "seconds")]
    pub duration: Duration,
    #[serde(rename = "warmup_s", with = "seconds")]
    pub warmup: Duration,
    /// Total messages per second across producers (open loop); `None` = closed loop.
    pub rate: Option<u64>,
    pub producers: u32,
    pub consumers: u32,
    pub partitions: u32,
    pub message_size: u64,
    pub batch: u32,
    pub acks: AckLevel,
    /// Batches in flight per producer.
    pub inflight: u32,
    /// Engine shards for the embedded broker (0 = one per usable core).
    pub shards: u32,
    /// How long to wait for acks and for consumers to catch up after the run.
    #[serde(rename = "drain_timeout_s", with = "seconds")]
    pub drain_timeout: Duration,
    /// Pin producer and consumer threads to cores.
    pub pin_threads: bool,
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            name: "default".into(),
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(2),
            rate: None,
            producers: 2,
            consumers: 2,
            partitions: 4,
            message_size: 1024,
            batch: 64,
            acks: AckLevel::Durable,
            inflight: 16,
            shards: 0,
            drain_timeout: Duration::from_secs(10),
            pin_threads: true,
        }
    }
}

/// A partial workload: the shape of a workload file, and of the command-line overrides.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSpec {
    pub name: Option<String>,
    /// Free text for humans; not used by the run.
    pub description: Option<String>,
    #[serde(default, deserialize_with = "humantime_opt")]
    pub duration: Option<Duration>,
    #[serde(default, deserialize_with = "humantime_opt")]
    pub warmup: Option<Duration>,
    pub rate: Option<u64>,
    pub producers: Option<u32>,
    pub consumers: Option<u32>,
    pub partitions: Option<u32>,
    pub message_size: Option<u64>,
    pub batch: Option<u32>,
    pub acks: Option<AckLevel>,
    pub inflight: Option<u32>,
    pub shards: Option<u32>,
    #[serde(default, deserialize_with = "humantime_opt")]
    pub drain_timeout: Option<Duration>,
    pub pin_threads: Option<bool>,
}

/// Why a workload cannot run.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error("reading workload file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("workload file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("invalid workload: {0}")]
    Invalid(String),
}

impl WorkloadSpec {
    /// Reads a workload file.
    pub fn from_file(path: &Path) -> Result<Self, WorkloadError> {
        let text = std::fs::read_to_string(path).map_err(|source| WorkloadError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text).map_err(|message| WorkloadError::Parse {
            path: path.display().to_string(),
            message,
        })
    }

    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// `self` with every field that `over` sets replaced.
    pub fn overridden_by(self, over: WorkloadSpec) -> WorkloadSpec {
        WorkloadSpec {
            name: over.name.or(self.name),
            description: over.description.or(self.description),
            duration: over.duration.or(self.duration),
            warmup: over.warmup.or(self.warmup),
            rate: over.rate.or(self.rate),
            producers: over.producers.or(self.producers),
            consumers: over.consumers.or(self.consumers),
            partitions: over.partitions.or(self.partitions),
            message_size: over.message_size.or(self.message_size),
            batch: over.batch.or(self.batch),
            acks: over.acks.or(self.acks),
            inflight: over.inflight.or(self.inflight),
            shards: over.shards.or(self.shards),
            drain_timeout: over.drain_timeout.or(self.drain_timeout),
            pin_threads: over.pin_threads.or(self.pin_threads),
        }
    }

    /// Fills the gaps from the defaults and validates. Returns notes on adjustments made
    /// (more producers or consumers than partitions are reduced: each partition has exactly one
    /// producer, so that per-partition sequence numbers can be checked).
    pub fn resolve(self) -> Result<(Workload, Vec<String>), WorkloadError> {
        let d = Workload::default();
        let mut w = Workload {
            name: self.name.unwrap_or(d.name),
            duration: self.duration.unwrap_or(d.duration),
            warmup: self.warmup.unwrap_or(d.warmup),
            rate: self.rate.or(d.rate),
            producers: self.producers.unwrap_or(d.producers),
            consumers: self.consumers.unwrap_or(d.consumers),
            partitions: self.partitions.unwrap_or(d.partitions),
            message_size: self.message_size.unwrap_or(d.message_size),
            batch: self.batch.unwrap_or(d.batch),
            acks: self.acks.unwrap_or(d.acks),
            inflight: self.inflight.unwrap_or(d.inflight),
            shards: self.shards.unwrap_or(d.shards),
            drain_timeout: self.drain_timeout.unwrap_or(d.drain_timeout),
            pin_threads: self.pin_threads.unwrap_or(d.pin_threads),
        };
        let mut notes = Vec::new();
        w.validate()?;
        if w.producers > w.partitions {
            notes.push(format!(
                "{} producers for {} partitions: using {} (one producer per partition at most)",
                w.producers, w.partitions, w.partitions
            ));
            w.producers = w.partitions;
        }
        if w.consumers > w.partitions {
            notes.push(format!(
                "{} consumers for {} partitions: using {}",
                w.consumers, w.partitions, w.partitions
            ));
            w.consumers = w.partitions;
        }
        Ok((w, notes))
    }
}

impl Workload {
    fn validate(&self) -> Result<(), WorkloadError> {
        let bad = |m: String| Err(WorkloadError::Invalid(m));
        let range = |name: &str, v: u64, lo: u64, hi: u64| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(WorkloadError::Invalid(format!(
                    "{name} = {v} is outside {lo}..={hi}"
                )))
            }
        };
        range("producers", self.producers.into(), 1, PRODUCERS_MAX.into())?;
        range("consumers", self.consumers.into(), 0, CONSUMERS_MAX.into())?;
        range(
            "partitions",
            self.partitions.into(),
            1,
            PARTITIONS_MAX.into(),
        )?;
        range(
            "message_size",
            self.message_size,
            payload::HEADER_BYTES as u64,
            MESSAGE_BYTES_MAX,
        )?;
        range("batch", self.batch.into(), 1, BATCH_MESSAGES_MAX.into())?;
        range(
            "inflight",
            self.inflight.into(),
            1,
            INFLIGHT_BATCHES_MAX.into(),
        )?;
        range("shards", self.shards.into(), 0, 1024)?;
        if self.duration.is_zero() {
            return bad("duration must be positive".into());
        }
        if self.rate == Some(0) {
            return bad("rate must be positive (omit it for a closed-loop run)".into());
        }
        let batch_bytes = self.batch_bytes();
        if batch_bytes > BATCH_BYTES_MAX {
            return bad(format!(
                "a batch of {} messages of {} bytes encodes to ~{batch_bytes} bytes, over the \
                 {BATCH_BYTES_MAX}-byte limit; lower --batch or --message-size",
                self.batch, self.message_size
            ));
        }
        let inflight_bytes = batch_bytes
            .saturating_mul(self.inflight.into())
            .saturating_mul(self.producers.min(self.partitions).into());
        if inflight_bytes > INFLIGHT_BYTES_MAX {
            return bad(format!(
                "producers x inflight x batch bytes = {inflight_bytes} exceeds \
                 {INFLIGHT_BYTES_MAX}; lower --inflight, --batch or --producers"
            ));
        }
        Ok(())
    }

    /// Rough encoded size of one batch.
    pub fn batch_bytes(&self) -> u64 {
        u64::from(self.batch).saturating_mul(self.message_size + RECORD_OVERHEAD_BYTES) + 64
    }

    /// Partitions owned by producer `i`: `p % producers == i`.
    pub fn producer_partitions(&self, i: u32) -> Vec<u32> {
        (0..self.partitions)
            .filter(|p| p % self.producers == i)
            .collect()
    }

    /// Partitions read by consumer `j`: `p % consumers == j`.
    pub fn consumer_partitions(&self, j: u32) -> Vec<u32> {
        if self.consumers == 0 {
            return Vec::new();
        }
        (0..self.partitions)
            .filter(|p| p % self.consumers == j)
            .collect()
    }

    /// One line describing the run.
    pub fn describe(&self) -> String {
        let pacing = match self.rate {
            Some(r) => format!("open loop at {r} msgs/s"),
            None => format!(
                "closed loop, {} batches in flight per producer",
                self.inflight
            ),
        };
        format!(
            "workload {}: {} producers, {} consumers, {} partitions, {} B messages, batch {}, \
             acks {}, {pacing}, {} + {} warm-up",
            self.name,
            self.producers,
            self.consumers,
            self.partitions,
            self.message_size,
            self.batch,
            self.acks.as_str(),
            humantime::format_duration(self.duration),
            humantime::format_duration(self.warmup),
        )
    }
}

/// Parses a humantime duration (`"10s"`, `"1m 30s"`, `"250ms"`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("'{s}' is not a duration like 10s or 500ms: {e}"))
}

fn humantime_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    s.map(|s| parse_duration(&s).map_err(serde::de::Error::custom))
        .transpose()
}

/// Durations as fractional seconds in JSON.
mod seconds {
    use super::*;

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let v = f64::deserialize(d)?;
        Duration::try_from_secs_f64(v).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_short() {
        let (w, notes) = WorkloadSpec::default().resolve().unwrap();
        assert!(notes.is_empty());
        assert_eq!(w, Workload::default());
        assert!(w.duration + w.warmup <= Duration::from_secs(15));
    }

    #[test]
    fn file_values_are_overridden_by_flags() {
        let file = WorkloadSpec::from_toml(
            "name = \"t\"\nduration = \"3s\"\nwarmup = \"500ms\"\nrate = 1000\nacks = \"leader\"\n",
        )
        .unwrap();
        let flags = WorkloadSpec {
            duration: Some(Duration::from_secs(1)),
            ..Default::default()
        };
        let (w, _) = file.overridden_by(flags).resolve().unwrap();
        assert_eq!(w.name, "t");
        assert_eq!(w.duration, Duration::from_secs(1));
        assert_eq!(w.warmup, Duration::from_millis(500));
        assert_eq!(w.rate, Some(1000));
        assert_eq!(w.acks, AckLevel::Leader);
    }

    #[test]
    fn unknown_keys_and_bad_durations_are_refused() {
        let e = WorkloadSpec::from_toml("duraton = \"3s\"").unwrap_err();
        assert!(e.contains("duraton"), "{e}");
        let e = WorkloadSpec::from_toml("duration = \"3 parsecs\"").unwrap_err();
        assert!(e.contains("parsecs"), "{e}");
        let e = WorkloadSpec::from_toml("acks = \"most\"").unwrap_err();
        assert!(e.contains("most"), "{e}");
    }

    #[test]
    fn invalid_parameters_are_refused_and_excess_threads_reduced() {
        for spec in [
            WorkloadSpec {
                message_size: Some(15),
                ..Default::default()
            },
            WorkloadSpec {
                producers: Some(0),
                ..Default::default()
            },
            WorkloadSpec {
                rate: Some(0),
                ..Default::default()
            },
            WorkloadSpec {
                duration: Some(Duration::ZERO),
                ..Default::default()
            },
            WorkloadSpec {
                message_size: Some(1 << 20),
                batch: Some(64),
                ..Default::default()
            },
        ] {
            assert!(spec.clone().resolve().is_err(), "{spec:?}");
        }
        let (w, notes) = WorkloadSpec {
            partitions: Some(1),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!((w.producers, w.consumers), (1, 1));
        assert_eq!(notes.len(), 2);
    }

    #[test]
    fn partitions_are_split_without_overlap() {
        let w = Workload {
            partitions: 7,
            producers: 3,
            consumers: 2,
            ..Default::default()
        };
        let mut seen: Vec<u32> = (0..3).flat_map(|i| w.producer_partitions(i)).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..7).collect::<Vec<_>>());
        let mut seen: Vec<u32> = (0..2).flat_map(|j| w.consumer_partitions(j)).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..7).collect::<Vec<_>>());
    }

    #[test]
    fn shipped_workload_files_parse_and_validate() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("workloads");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            if path.extension().is_some_and(|x| x == "toml") {
                let spec = WorkloadSpec::from_file(&path).unwrap();
                let (w, _) = spec.resolve().unwrap();
                assert_eq!(
                    Some(w.name.as_str()),
                    path.file_stem().and_then(|s| s.to_str())
                );
                n += 1;
            }
        }
        assert!(
            n >= 3,
            "expected the shipped workloads in {}",
            dir.display()
        );
    }
}
