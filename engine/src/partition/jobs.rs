//! The I/O jobs of the partition core that are not the log's own (`FlushJob`, `CloseJob`) or
//! the producer table's (`SnapshotJob`): each holds what its I/O needs, the shell runs it and
//! hands the result back to the core.

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;

use crate::error::{Error, Result};
use crate::log::{self, LogConfig, PartitionLog};
use crate::storage::{LogFile, Storage};

/// Segment files handed to [`Expired`] jobs and not deleted yet (shared by the core and its
/// jobs).
pub(super) type Expiring = Rc<RefCell<Vec<PathBuf>>>;

/// Reopens a failed partition's log from disk (the recovery path of a restart). Hand the result
/// to [`super::PartitionCore::repaired`].
pub struct RepairJob<S: Storage> {
    storage: S,
    dir: PathBuf,
    config: LogConfig,
    expiring: Expiring,
}

impl<S: Storage> RepairJob<S> {
    pub(super) fn new(storage: S, dir: PathBuf, config: LogConfig, expiring: Expiring) -> Self {
        RepairJob {
            storage,
            dir,
            config,
            expiring,
        }
    }

    pub async fn run(self, now_ms: i64) -> Result<PartitionLog<S>> {
        // The reopen counts all it finds as durable, but after a failed flush the segments may
        // hold written, unsynced data, and a segment the flush created may have no durable
        // directory entry: sync them and the directory first, or a durable retry of such a
        // batch is acked with no fdatasync, and later durable acks land in a file a power loss
        // removes (both found by the simulator, engine/src/sim, seeds 1 and 132).
        // Deletions retention started may still be in flight: finish them first, or the reopen
        // lists a segment they then remove, recreates it empty and cuts the log there (found
        // by the simulator, seed 420).
        let expiring = self.expiring.borrow().clone();
        log::remove_files(&self.storage, &self.dir, &expiring).await?;
        let dir_err = |e| Error::io(self.dir.display(), e);
        let names = self.storage.list(&self.dir).await.map_err(dir_err)?;
        for name in names.iter().filter(|n| n.ends_with(".log")) {
            let path = self.dir.join(name);
            let err = |e| Error::io(path.display(), e);
            self.storage
                .open(&path)
                .await
                .map_err(err)?
                .sync()
                .await
                .map_err(err)?;
        }
        self.storage.sync_dir(&self.dir).await.map_err(dir_err)?;
        PartitionLog::open(self.storage, &self.dir, self.config, now_ms).await
    }
}

/// Restarts a partition's log empty at another offset ([`log::restart_log`]; docs/storage.md,
/// "Restarting a log at an offset"). Hand the result to [`super::PartitionCore::restarted`].
pub struct RestartJob<S: Storage> {
    storage: S,
    dir: PathBuf,
    config: LogConfig,
    start: u64,
}

impl<S: Storage> RestartJob<S> {
    pub(super) fn new(storage: S, dir: PathBuf, config: LogConfig, start: u64) -> Self {
        RestartJob {
            storage,
            dir,
            config,
            start,
        }
    }

    /// The offset the log restarts at.
    pub fn start_offset(&self) -> u64 {
        self.start
    }

    pub async fn run(self, now_ms: i64) -> Result<PartitionLog<S>> {
        log::restart_log(self.storage, &self.dir, self.config, self.start, now_ms).await
    }
}

/// Rolls an expired, idle active segment so that retention can delete it (the log's
/// `roll_for_retention`, which borrows the log between its awaits).
pub struct RetentionRoll<S: Storage> {
    log: Rc<RefCell<PartitionLog<S>>>,
}

impl<S: Storage> RetentionRoll<S> {
    pub(super) fn new(log: Rc<RefCell<PartitionLog<S>>>) -> Self {
        RetentionRoll { log }
    }

    pub async fn run(self, now_ms: i64) -> Result<()> {
        PartitionLog::roll_for_retention(&self.log, now_ms).await
    }
}

/// Segment files that retention removed from the log, to delete (then sync the directory).
pub struct Expired<S: Storage> {
    storage: S,
    dir: PathBuf,
    files: Vec<PathBuf>,
    expiring: Expiring,
    /// Cached bytes the removal freed (the shard's cache account).
    pub cache_freed_bytes: usize,
}

impl<S: Storage> Expired<S> {
    pub(super) fn new(
        storage: S,
        dir: PathBuf,
        files: Vec<PathBuf>,
        cache_freed_bytes: usize,
        expiring: Expiring,
    ) -> Self {
        expiring.borrow_mut().extend(files.iter().cloned());
        Expired {
            storage,
            dir,
            files,
            expiring,
            cache_freed_bytes,
        }
    }

    /// Whether nothing expired (the log start did not move).
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    pub async fn run(self) -> Result<()> {
        if self.files.is_empty() {
            return Ok(());
        }
        // Every file still to delete, oldest first (with those an earlier, failed run left):
        // `remove_files` stops at the first failure, so a newer segment never goes while an
        // older one stays, which would leave a gap the next open refuses as corrupt (found by
        // the simulator, seed 20053 with 1000 steps).
        let files = self.expiring.borrow().clone();
        log::remove_files(&self.storage, &self.dir, &files).await?;
        self.expiring.borrow_mut().retain(|p| !files.contains(p));
        Ok(())
    }
}
