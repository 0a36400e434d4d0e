//! Producer-id allocation for idempotent producers (docs/semantics.md, "Idempotent producer").
//!
//! Ids come from a durable counter, handed out in blocks as Kafka's broker does: the file
//! `producer-ids.json` in the data directory records the first id of the next unallocated
//! block, and is advanced (atomically: temp file, fsync, rename, fsync directory) *before* any
//! id of a new block is given out. A restart, even after SIGKILL, resumes at that mark, so an
//! id is never given out twice; at most one block of ids is skipped. Id 0 means "not
//! idempotent" and is never allocated.
//!
//! A producer that restarts and wants to fence its previous instance presents its old id and
//! epoch (`resume`): it gets the same id with the epoch bumped, and the partitions then refuse
//! the old epoch (`ProducerFenced`). An id the allocator never gave out is refused.
//!
//! **In a cluster** every node allocates from its own counter, so ids carry the node: a node
//! with id N hands out `N << NODE_SHIFT | local` (`set_node`, called when the cluster is
//! enabled). Two producers bootstrapped on different nodes therefore never share an id, and a
//! partition leader's duplicate check (by producer id and sequence) never confuses them. An id
//! from another node of the cluster is accepted for `resume` (that node's counter is not known
//! here; its epoch is still bumped and fenced by the partitions); single-node ids are unchanged.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::{Error, Result};
use crate::metadata::{read_file, write_file_atomically};
use crate::rt::StdFs;
use crate::storage::Storage;

/// Ids reserved per durable write.
pub const BLOCK_IDS: u64 = 1000;
/// In a cluster, the node id sits above this bit (ids stay below 2^63: Kafka's are i64).
pub const NODE_SHIFT: u32 = 48;
/// Largest node id that fits above [`NODE_SHIFT`] in a non-negative i64.
pub const NODE_ID_MAX: u64 = (1 << (63 - NODE_SHIFT)) - 1;
const LOCAL_MASK: u64 = (1 << NODE_SHIFT) - 1;
const FILE: &str = "producer-ids.json";

#[derive(serde::Serialize, serde::Deserialize)]
struct Mark {
    version: u32,
    next_block_start: u64,
}

/// An idempotent producer's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerIdentity {
    pub producer_id: u64,
    pub epoch: u16,
}

struct State {
    next_id: u64,
    block_end: u64,
}

pub struct ProducerIds {
    dir: PathBuf,
    state: Mutex<State>,
    /// This node's id in a cluster (0: single node, ids unprefixed).
    node: std::sync::atomic::AtomicU64,
    /// Every node of the cluster (ids of theirs are accepted for `resume`).
    cluster: Mutex<Vec<u64>>,
}

/// The mark file's temporary name while it is replaced.
const TMP_FILE: &str = "producer-ids.tmp";

/// Writes the mark atomically (temp file, sync, rename, directory sync).
async fn store<S: Storage>(storage: &S, dir: &Path, next_block_start: u64) -> Result<()> {
    let bytes = serde_json::to_vec(&Mark {
        version: 1,
        next_block_start,
    })
    .map_err(|e| Error::Metadata(e.to_string()))?;
    write_file_atomically(storage, dir, FILE, TMP_FILE, &bytes).await
}

/// The first id of the next unallocated block (1 when there is no mark yet).
async fn load<S: Storage>(storage: &S, dir: &Path) -> Result<u64> {
    let Some(bytes) = read_file(storage, dir, FILE).await? else {
        return Ok(1);
    };
    let m: Mark = serde_json::from_slice(&bytes)
        .map_err(|e| Error::Metadata(format!("{}: {e}", dir.join(FILE).display())))?;
    Ok(m.next_block_start.max(1))
}

impl ProducerIds {
    pub fn open(data_dir: &Path) -> Result<ProducerIds> {
        let start = futures_lite::future::block_on(load(&StdFs, data_dir))?;
        Ok(ProducerIds {
            dir: data_dir.to_path_buf(),
            state: Mutex::new(State {
                next_id: start,
                block_end: start,
            }),
            node: std::sync::atomic::AtomicU64::new(0),
            cluster: Mutex::new(Vec::new()),
        })
    }

    /// Makes this the allocator of node `node` of a cluster of `nodes`: ids handed out from
    /// now on carry the node id above [`NODE_SHIFT`].
    pub fn set_node(&self, node: u64, nodes: &[u64]) -> Result<()> {
        if node == 0 || node > NODE_ID_MAX || nodes.iter().any(|&n| n > NODE_ID_MAX) {
            return Err(Error::InvalidArgument(format!(
                "node ids must be between 1 and {NODE_ID_MAX} (producer ids carry them)"
            )));
        }
        *self
            .cluster
            .lock()
            .map_err(|_| Error::Runtime("poisoned".into()))? = nodes.to_vec();
        self.node.store(node, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// (node part, local part) of `id`; the node part is 0 on a single node.
    fn split(&self, id: u64) -> (u64, u64) {
        if self.node.load(std::sync::atomic::Ordering::Acquire) == 0 {
            (0, id)
        } else {
            (id >> NODE_SHIFT, id & LOCAL_MASK)
        }
    }

    /// Whether `id` belongs to another node of this cluster.
    fn other_node(&self, id: u64) -> bool {
        let (node, local) = self.split(id);
        let me = self.node.load(std::sync::atomic::Ordering::Acquire);
        node != 0
            && node != me
            && local != 0
            && self.cluster.lock().is_ok_and(|c| c.contains(&node))
    }

    /// A new identity, or `resume`'s id with the next epoch.
    pub fn init(&self, resume: Option<ProducerIdentity>) -> Result<ProducerIdentity> {
        let mut s = self
            .state
            .lock()
            .map_err(|_| Error::Runtime("poisoned".into()))?;
        let node = self.node.load(std::sync::atomic::Ordering::Acquire);
        if let Some(r) = resume {
            let (id_node, local) = self.split(r.producer_id);
            let ours = id_node == node && local != 0 && local < s.block_end;
            if !ours && !self.other_node(r.producer_id) {
                return Err(Error::InvalidArgument(format!(
                    "producer id {} was never allocated by this broker",
                    r.producer_id
                )));
            }
            if let Some(epoch) = r.epoch.checked_add(1) {
                return Ok(ProducerIdentity {
                    producer_id: r.producer_id,
                    epoch,
                });
            }
            // Epochs exhausted: a fresh id (epoch 0) fences nothing but is never a duplicate.
        }
        if s.next_id >= s.block_end {
            let end = s.block_end + BLOCK_IDS;
            futures_lite::future::block_on(store(&StdFs, &self.dir, end))?;
            s.block_end = end;
        }
        let id = s.next_id;
        s.next_id += 1;
        debug_assert!(id != 0 && id < s.block_end);
        if node != 0 && id > LOCAL_MASK {
            return Err(Error::Runtime(
                "producer ids of this node are exhausted".into(),
            ));
        }
        Ok(ProducerIdentity {
            producer_id: (node << NODE_SHIFT) | id,
            epoch: 0,
        })
    }
}

impl ProducerIds {
    /// Whether `producer_id` may have been handed out by this broker: below the end of the
    /// last reserved block (ids of a block reserved but not yet given out count as allocated;
    /// ids never reserved do not). 0 (no producer) is not an id.
    pub fn allocated(&self, producer_id: u64) -> bool {
        if self.other_node(producer_id) {
            return true;
        }
        let node = self.node.load(std::sync::atomic::Ordering::Acquire);
        let (id_node, local) = self.split(producer_id);
        id_node == node
            && self
                .state
                .lock()
                .is_ok_and(|s| local != 0 && local < s.block_end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves: advancing the mark, interrupted after any number of storage operations and
    // followed by a power loss, leaves the old mark or the new one (the new one once the write
    // returned): ids handed out from a block whose mark was durable are never handed out again.
    #[test]
    fn an_interrupted_mark_reopens_as_the_old_or_the_new_one() {
        use crate::storage::CrashStorage;
        use futures_lite::future::block_on;

        let dir = Path::new("/data");
        let mut completed = false;
        for ops in 0..32 {
            for keep_all in [true, false] {
                let storage = CrashStorage::new();
                storage.create_dir_all(dir).unwrap();
                block_on(store(&storage, dir, 1001)).unwrap();
                storage.die_after_ops(Some(ops));
                let r = block_on(store(&storage, dir, 2001));
                storage.die_after_ops(None);
                storage.crash(|_, _, _| keep_all);
                let got = block_on(load(&storage, dir)).unwrap();
                if r.is_ok() {
                    assert_eq!(got, 2001, "ops {ops}");
                    completed = true;
                } else {
                    assert!(got == 1001 || got == 2001, "ops {ops}: {got}");
                }
            }
            if completed {
                break;
            }
        }
        assert!(completed);
    }

    #[test]
    fn ids_are_never_reused_across_reopen_and_resume_bumps_the_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let ids = ProducerIds::open(dir.path()).unwrap();
        let a = ids.init(None).unwrap();
        let b = ids.init(None).unwrap();
        assert_eq!((a.producer_id, b.producer_id), (1, 2));
        let r = ids.init(Some(a)).unwrap();
        assert_eq!((r.producer_id, r.epoch), (1, 1));
        drop(ids);
        let again = ProducerIds::open(dir.path()).unwrap();
        let c = again.init(None).unwrap();
        assert!(c.producer_id > b.producer_id, "{c:?}");
        assert!(
            again
                .init(Some(ProducerIdentity {
                    producer_id: 1 << 40,
                    epoch: 0
                }))
                .is_err()
        );
    }

    // Proves: in a cluster, ids carry the node (two nodes never hand out the same id), ids of
    // other cluster nodes are accepted for resume and as allocated, ids of unknown nodes are not.
    #[test]
    fn cluster_ids_carry_the_node() {
        let d1 = tempfile::tempdir().unwrap();
        let d2 = tempfile::tempdir().unwrap();
        let n1 = ProducerIds::open(d1.path()).unwrap();
        let n2 = ProducerIds::open(d2.path()).unwrap();
        n1.set_node(1, &[1, 2, 3]).unwrap();
        n2.set_node(2, &[1, 2, 3]).unwrap();
        let a = n1.init(None).unwrap();
        let b = n2.init(None).unwrap();
        assert_ne!(a.producer_id, b.producer_id);
        assert_eq!(a.producer_id >> NODE_SHIFT, 1);
        assert_eq!(b.producer_id >> NODE_SHIFT, 2);
        assert!(i64::try_from(b.producer_id).is_ok());
        assert!(n1.allocated(a.producer_id) && n1.allocated(b.producer_id));
        assert!(!n1.allocated(9 << NODE_SHIFT | 1));
        assert!(!n1.allocated(1 << NODE_SHIFT | 5000));
        let r = n1.init(Some(b)).unwrap();
        assert_eq!((r.producer_id, r.epoch), (b.producer_id, 1));
        assert!(
            n1.init(Some(ProducerIdentity {
                producer_id: 9 << NODE_SHIFT | 1,
                epoch: 0
            }))
            .is_err()
        );
        assert!(n1.set_node(NODE_ID_MAX + 1, &[1]).is_err());
    }
}
