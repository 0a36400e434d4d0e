//! The metadata file: topics, their settings, and which shard owns each partition
//! (docs/storage.md, "Metadata"). JSON, written atomically: temp file, fsync, rename, fsync dir.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::TopicConfig;
use crate::error::{Error, Result};

pub const METADATA_FILE: &str = "metadata.json";
const METADATA_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TopicMeta {
    /// Unique forever: a re-created topic gets a new id and so a new directory.
    pub id: u64,
    pub config: TopicConfig,
    /// `shards[p]` owns partition `p`.
    pub shards: Vec<u32>,
    pub created_ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Metadata {
    pub version: u32,
    pub shard_count: u32,
    pub next_topic_id: u64,
    pub topics: BTreeMap<String, TopicMeta>,
}

impl Metadata {
    pub fn new(shard_count: u32) -> Self {
        Metadata {
            version: METADATA_VERSION,
            shard_count,
            next_topic_id: 1,
            topics: BTreeMap::new(),
        }
    }

    /// Partitions owned by each shard.
    pub fn load_per_shard(&self) -> Vec<usize> {
        let mut load = vec![0usize; self.shard_count as usize];
        for t in self.topics.values() {
            for s in &t.shards {
                if let Some(l) = load.get_mut(*s as usize) {
                    *l += 1;
                }
            }
        }
        load
    }

    /// Assigns `n` new partitions, each to the least loaded shard (lowest index on ties):
    /// deterministic, and even across shards whatever the topic sizes.
    pub fn place(&self, n: u32) -> Vec<u32> {
        let mut load = self.load_per_shard();
        (0..n)
            .map(|_| {
                let (i, _) = load
                    .iter()
                    .enumerate()
                    .min_by_key(|(i, l)| (**l, *i))
                    .unwrap_or((0, &0));
                load[i] += 1;
                i as u32
            })
            .collect()
    }

    /// On a restart with a different shard count: keeps partitions on shards that still exist
    /// and moves the others to the least loaded ones. Data stays where it is (partition
    /// directories do not depend on the shard), so nothing is copied or lost.
    pub fn reshard(&mut self, shard_count: u32) -> usize {
        if shard_count == self.shard_count {
            return 0;
        }
        self.shard_count = shard_count;
        let mut moved = 0;
        let mut load = vec![0usize; shard_count as usize];
        for t in self.topics.values() {
            for s in &t.shards {
                if let Some(l) = load.get_mut(*s as usize) {
                    *l += 1;
                }
            }
        }
        for t in self.topics.values_mut() {
            for s in &mut t.shards {
                if *s >= shard_count {
                    let (i, _) = load
                        .iter()
                        .enumerate()
                        .min_by_key(|(i, l)| (**l, *i))
                        .unwrap_or((0, &0));
                    load[i] += 1;
                    *s = i as u32;
                    moved += 1;
                }
            }
        }
        // Rebalance when shards were added: move partitions from the most to the least loaded
        // until the spread is at most one.
        loop {
            let (max_i, max_l) = load
                .iter()
                .enumerate()
                .max_by_key(|(i, l)| (**l, usize::MAX - i))
                .map(|(i, l)| (i, *l))
                .unwrap_or((0, 0));
            let (min_i, min_l) = load
                .iter()
                .enumerate()
                .min_by_key(|(i, l)| (**l, *i))
                .map(|(i, l)| (i, *l))
                .unwrap_or((0, 0));
            if max_l <= min_l + 1 {
                break;
            }
            let Some(slot) = self
                .topics
                .values_mut()
                .rev()
                .flat_map(|t| t.shards.iter_mut().rev())
                .find(|s| **s as usize == max_i)
            else {
                break;
            };
            *slot = min_i as u32;
            load[max_i] -= 1;
            load[min_i] += 1;
            moved += 1;
        }
        moved
    }
}

pub fn topic_dir(data_dir: &Path, name: &str, id: u64) -> PathBuf {
    data_dir.join("topics").join(format!("{name}-{id}"))
}

pub fn partition_dir(data_dir: &Path, name: &str, id: u64, partition: u32) -> PathBuf {
    topic_dir(data_dir, name, id).join(partition.to_string())
}

/// Loads the metadata file, or `None` if there is none yet.
pub fn load(data_dir: &Path) -> Result<Option<Metadata>> {
    let path = data_dir.join(METADATA_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path.display(), e)),
    };
    let m: Metadata = serde_json::from_slice(&bytes)
        .map_err(|e| Error::Metadata(format!("{}: {e}", path.display())))?;
    if m.version != METADATA_VERSION {
        return Err(Error::Metadata(format!(
            "unsupported metadata version {}",
            m.version
        )));
    }
    Ok(Some(m))
}

/// Writes the metadata atomically.
pub fn store(data_dir: &Path, m: &Metadata) -> Result<()> {
    let path = data_dir.join(METADATA_FILE);
    let tmp = data_dir.join(format!("{METADATA_FILE}.tmp"));
    let err = |e| Error::io(path.display(), e);
    let bytes = serde_json::to_vec_pretty(m).map_err(|e| Error::Metadata(e.to_string()))?;
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(&bytes).map_err(err)?;
    f.sync_all().map_err(err)?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(err)?;
    sync_dir(data_dir)
}

pub fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir.display(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_topic(m: &mut Metadata, name: &str, n: u32) {
        let shards = m.place(n);
        let id = m.next_topic_id;
        m.next_topic_id += 1;
        m.topics.insert(
            name.into(),
            TopicMeta {
                id,
                config: TopicConfig::with_partitions(n),
                shards,
                created_ms: 0,
            },
        );
    }

    #[test]
    fn placement_is_even_and_deterministic() {
        let mut a = Metadata::new(3);
        let mut b = Metadata::new(3);
        for (name, n) in [("x", 4), ("y", 1), ("z", 7)] {
            with_topic(&mut a, name, n);
            with_topic(&mut b, name, n);
        }
        assert_eq!(a, b);
        let load = a.load_per_shard();
        assert_eq!(load.iter().sum::<usize>(), 12);
        assert!(
            load.iter().max().unwrap() - load.iter().min().unwrap() <= 1,
            "{load:?}"
        );
    }

    #[test]
    fn resharding_keeps_every_partition_and_balances() {
        let mut m = Metadata::new(4);
        with_topic(&mut m, "t", 10);
        m.reshard(2);
        assert!(m.topics["t"].shards.iter().all(|s| *s < 2));
        assert_eq!(m.load_per_shard(), vec![5, 5]);
        m.reshard(5);
        let load = m.load_per_shard();
        assert_eq!(load.iter().sum::<usize>(), 10);
        assert!(
            load.iter().max().unwrap() - load.iter().min().unwrap() <= 1,
            "{load:?}"
        );
    }

    #[test]
    fn store_then_load_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Metadata::new(2);
        with_topic(&mut m, "t", 3);
        store(dir.path(), &m).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(m));
        std::fs::write(dir.path().join(METADATA_FILE), b"{not json").unwrap();
        assert!(matches!(load(dir.path()), Err(Error::Metadata(_))));
    }
}
