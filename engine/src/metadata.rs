//! The metadata file: topics, their settings, and which shard owns each partition
//! (docs/storage.md, "Metadata"). JSON, written atomically: temp file, fsync, rename, fsync dir.
//! Read and written through the [`Storage`] trait ([`crate::rt::StdFs`] in the engine, the
//! crash-image storage in tests), as is the producer-id mark (`producer_ids`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use serde::{Deserialize, Serialize};

use crate::config::TopicConfig;
use crate::error::{Error, Result};
use crate::rt::StdFs;
use crate::storage::{BLOCK_BYTES, IoBuf, LogFile, Storage, align_up};

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
    /// A replicated topic (issue 14; created through the controller): `replica_sets[p]` are
    /// the nodes holding partition `p`, `groups[p]` its Raft group. Empty for a local topic
    /// (and in metadata written before clusters existed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replica_sets: Vec<Vec<u64>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Metadata {
    pub version: u32,
    pub shard_count: u32,
    pub next_topic_id: u64,
    pub topics: BTreeMap<String, TopicMeta>,
    /// The cluster's controller (issue 14): commands applied so far (the next one's offset
    /// in the controller group's log).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub controller_applied: u64,
    /// The next Raft group id a replicated partition gets (group 0 is the controller);
    /// assigned when a CreateTopic command applies, so equal on every node.
    #[serde(default = "first_group_id")]
    pub next_group_id: u64,
    /// Request ids of the last controller commands applied (a re-proposed command applies
    /// once).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent_requests: Vec<u64>,
    /// Partition moves under way (docs/replication.md, "Membership changes"): Raft group ->
    /// the replica set it moves onto.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub moves: BTreeMap<u64, Vec<u64>>,
    /// Raft group -> its replica set at creation, recorded when its first move ends (a new
    /// replica starts from that configuration and replays the changes since).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub initial_sets: BTreeMap<u64, Vec<u64>>,
    /// Nodes added at run time (`AddNode`), id -> node-to-node address; the `--cluster` list
    /// is the initial membership (docs/replication.md, "Dynamic nodes").
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub added_nodes: BTreeMap<u64, String>,
    /// Nodes removed (`RemoveNode`), sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed_nodes: Vec<u64>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

fn first_group_id() -> u64 {
    1
}

impl Metadata {
    pub fn new(shard_count: u32) -> Self {
        Metadata {
            version: METADATA_VERSION,
            shard_count,
            next_topic_id: 1,
            topics: BTreeMap::new(),
            controller_applied: 0,
            next_group_id: first_group_id(),
            recent_requests: Vec::new(),
            moves: BTreeMap::new(),
            initial_sets: BTreeMap::new(),
            added_nodes: BTreeMap::new(),
            removed_nodes: Vec::new(),
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
    futures_lite::future::block_on(load_from(&StdFs, data_dir))
}

/// Writes the metadata atomically.
pub fn store(data_dir: &Path, m: &Metadata) -> Result<()> {
    futures_lite::future::block_on(store_to(&StdFs, data_dir, m))
}

/// [`load`] from any storage.
pub async fn load_from<S: Storage>(storage: &S, data_dir: &Path) -> Result<Option<Metadata>> {
    let path = data_dir.join(METADATA_FILE);
    let Some(bytes) = read_file(storage, data_dir, METADATA_FILE).await? else {
        return Ok(None);
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

/// [`store`] to any storage.
pub async fn store_to<S: Storage>(storage: &S, data_dir: &Path, m: &Metadata) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(m).map_err(|e| Error::Metadata(e.to_string()))?;
    let tmp = format!("{METADATA_FILE}.tmp");
    write_file_atomically(storage, data_dir, METADATA_FILE, &tmp, &bytes).await
}

/// The whole content of `dir/name`, or `None` if there is no such file.
pub async fn read_file<S: Storage>(storage: &S, dir: &Path, name: &str) -> Result<Option<Vec<u8>>> {
    let path = dir.join(name);
    let err = |e| Error::io(path.display(), e);
    match storage.list(dir).await {
        Ok(names) if names.iter().any(|n| n == name) => {}
        Ok(_) => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err(e)),
    }
    let f = storage.open(&path).await.map_err(err)?;
    let size = f.size().await.map_err(err)?;
    let len = usize::try_from(size)
        .map_err(|_| Error::Metadata(format!("{}: {size} bytes", path.display())))?;
    let read = f.read_at(0, align_up(size) as usize).await.map_err(err)?;
    Ok(Some(read[..len.min(read.len())].to_vec()))
}

/// Replaces `dir/name` with `bytes` atomically: written to `dir/tmp_name` and synced, renamed
/// over `name`, then the directory synced. A crash at any point leaves the old content or the
/// new one under `name`, never a mix; once this returns the new content is durable.
pub async fn write_file_atomically<S: Storage>(
    storage: &S,
    dir: &Path,
    name: &str,
    tmp_name: &str,
    bytes: &[u8],
) -> Result<()> {
    let path = dir.join(name);
    let tmp = dir.join(tmp_name);
    let err = |e| Error::io(path.display(), e);
    let f = storage.open(&tmp).await.map_err(err)?;
    f.truncate(0).await.map_err(err)?;
    // Whole blocks (the storage contract), then cut to the exact length: the file holds
    // exactly `bytes`.
    let len = (align_up(bytes.len() as u64) as usize).max(BLOCK_BYTES);
    let mut buf = S::alloc_buf(len);
    buf.as_bytes_mut()[..bytes.len()].copy_from_slice(bytes);
    buf.as_bytes_mut()[bytes.len()..].fill(0);
    f.write_at(Rc::new(buf), 0).await.map_err(err)?;
    f.truncate(bytes.len() as u64).await.map_err(err)?;
    f.sync().await.map_err(err)?;
    drop(f);
    storage.rename(&tmp, &path).await.map_err(err)?;
    storage
        .sync_dir(dir)
        .await
        .map_err(|e| Error::io(dir.display(), e))
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
                replica_sets: Vec::new(),
                groups: Vec::new(),
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

    // Proves: a metadata write that dies after any number of storage operations, followed by
    // a power loss that keeps all, none or every other unsynced block, reopens as exactly the
    // old metadata or the new one (the new one once the write returned), never a mix, never
    // an error; and a first write (no old file) as nothing or the new one.
    #[test]
    fn an_interrupted_store_reopens_as_the_old_or_the_new_metadata() {
        use crate::storage::CrashStorage;
        use futures_lite::future::block_on;

        let dir = Path::new("/data");
        let mut old = Metadata::new(2);
        with_topic(&mut old, "t", 3);
        let mut new = old.clone();
        with_topic(&mut new, "u", 1000);
        let keeps: [fn(usize, usize, usize) -> bool; 3] =
            [|_, _, _| true, |_, _, _| false, |_, w, b| (w + b) % 2 == 0];
        for first in [false, true] {
            let mut completed = false;
            for ops in 0..64 {
                for keep in keeps {
                    let storage = CrashStorage::new();
                    storage.create_dir_all(dir).unwrap();
                    if !first {
                        block_on(store_to(&storage, dir, &old)).unwrap();
                    }
                    storage.die_after_ops(Some(ops));
                    let r = block_on(store_to(&storage, dir, &new));
                    storage.die_after_ops(None);
                    storage.crash(keep);
                    let got = block_on(load_from(&storage, dir))
                        .unwrap_or_else(|e| panic!("ops {ops}: {e}"));
                    let want_old = if first { None } else { Some(old.clone()) };
                    if r.is_ok() {
                        assert_eq!(
                            got,
                            Some(new.clone()),
                            "ops {ops}: a finished store is durable"
                        );
                        completed = true;
                    } else {
                        assert!(
                            got == want_old || got == Some(new.clone()),
                            "ops {ops}: neither old nor new: {got:?}"
                        );
                    }
                }
                if completed {
                    break;
                }
            }
            assert!(completed, "the store never finished within 64 operations");
        }
    }

    // Proves: the file written holds exactly the JSON (no block padding), as before the
    // storage trait carried it.
    #[test]
    fn the_file_holds_exactly_the_json() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Metadata::new(2);
        with_topic(&mut m, "t", 3);
        store(dir.path(), &m).unwrap();
        let on_disk = std::fs::read(dir.path().join(METADATA_FILE)).unwrap();
        assert_eq!(on_disk, serde_json::to_vec_pretty(&m).unwrap());
        assert!(!dir.path().join(format!("{METADATA_FILE}.tmp")).exists());
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
