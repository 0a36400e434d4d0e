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

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::{Error, Result};

/// Ids reserved per durable write.
pub const BLOCK_IDS: u64 = 1000;
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
    path: PathBuf,
    dir: PathBuf,
    state: Mutex<State>,
}

fn store(dir: &Path, path: &Path, next_block_start: u64) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let err = |e| Error::io(path.display(), e);
    let bytes = serde_json::to_vec(&Mark {
        version: 1,
        next_block_start,
    })
    .map_err(|e| Error::Metadata(e.to_string()))?;
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(&bytes).map_err(err)?;
    f.sync_all().map_err(err)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(err)?;
    crate::metadata::sync_dir(dir)
}

impl ProducerIds {
    pub fn open(data_dir: &Path) -> Result<ProducerIds> {
        let path = data_dir.join(FILE);
        let start = match std::fs::read(&path) {
            Ok(b) => {
                let m: Mark = serde_json::from_slice(&b)
                    .map_err(|e| Error::Metadata(format!("{}: {e}", path.display())))?;
                m.next_block_start.max(1)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 1,
            Err(e) => return Err(Error::io(path.display(), e)),
        };
        Ok(ProducerIds {
            path,
            dir: data_dir.to_path_buf(),
            state: Mutex::new(State {
                next_id: start,
                block_end: start,
            }),
        })
    }

    /// A new identity, or `resume`'s id with the next epoch.
    pub fn init(&self, resume: Option<ProducerIdentity>) -> Result<ProducerIdentity> {
        let mut s = self
            .state
            .lock()
            .map_err(|_| Error::Runtime("poisoned".into()))?;
        if let Some(r) = resume {
            if r.producer_id == 0 || r.producer_id >= s.block_end {
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
            store(&self.dir, &self.path, end)?;
            s.block_end = end;
        }
        let id = s.next_id;
        s.next_id += 1;
        debug_assert!(id != 0 && id < s.block_end);
        Ok(ProducerIdentity {
            producer_id: id,
            epoch: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
