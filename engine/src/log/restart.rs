//! Restarting a log at another offset (docs/storage.md, "Restarting a log at an offset"): the
//! log is emptied and starts at offset S, an empty first segment whose base is S. A replica
//! needs it when its leader's retention deleted the batches between its log's end and the
//! leader's log start (docs/replication.md, "Snapshots").
//!
//! Crash safety rests on one durable step, the rename of a marker file (`restart-at`, holding
//! S) into the partition directory:
//!
//! ```text
//!  1. restart-at.tmp: create, write S, fdatasync      crash: the old log opens (an open
//!  2. rename restart-at.tmp -> restart-at               removes *.tmp; a lost rename too)
//!  3. fsync the directory                              from here on: the new log opens
//!  4. remove every segment below S (.log .idx .tix) and every producer snapshot
//!  5. create S.log (empty) if missing, fsync the directory
//!  6. remove restart-at, fsync the directory
//! ```
//!
//! Steps 4-6 are what [`PartitionLog::open`] does whenever it finds the marker, so a crash
//! anywhere after step 3 finishes the restart at the next open (they are idempotent), and a
//! crash before leaves the old log whole. The marker goes only after the new segment and the
//! removals are durable, and the log takes appends only after that.

use std::path::Path;

use super::PartitionLog;
use super::segment::{parse_segment_name, segment_file_name, write_whole_file};
use crate::error::{Error, Result};
use crate::storage::Storage;

/// The marker file's name (and its temporary file's, which an open removes).
pub(super) const RESTART_MARKER: &str = "restart-at";
const RESTART_MARKER_TMP: &str = "restart-at.tmp";
/// The marker's text before the offset.
const MARKER_PREFIX: &str = "shardline log restart at ";

impl<S: Storage> PartitionLog<S> {
    /// Why the log cannot restart at `start` now, or `None`. A flush, pending data, a
    /// retention roll or a roll job (prepare, seal) are transient: try again once they end.
    pub fn restart_blocker(&self, start: u64) -> Option<String> {
        if start < self.next_offset {
            return Some(format!(
                "restart offset {start} is below the log's end {}",
                self.next_offset
            ));
        }
        if let Some(f) = &self.failed {
            return Some(format!("the log failed: {f}"));
        }
        if self.flushing || !self.chunks.is_empty() {
            return Some("a flush is pending".into());
        }
        if self.retention_roll_running {
            return Some("a retention roll is running".into());
        }
        if self.has_roll_jobs() {
            return Some("a segment roll job is running".into());
        }
        None
    }

    /// Stops the log taking appends, flushes and retention rolls: it is being restarted at
    /// `start` (the caller runs [`restart_log`] and replaces this log with the one it opens).
    pub fn begin_restart(&mut self, start: u64) {
        self.failed = Some(format!("restarting at offset {start}"));
    }
}

/// Restarts the log in `dir` at `start` (steps 1-3 of the module doc, then an open, which
/// does steps 4-6) and returns the new log: empty, its start and end `start`. The caller
/// must have stopped the old log ([`PartitionLog::begin_restart`]) and drops it afterwards.
pub async fn restart_log<S: Storage>(
    storage: S,
    dir: &Path,
    cfg: super::LogConfig,
    start: u64,
    now_ms: i64,
) -> Result<PartitionLog<S>> {
    let tmp = dir.join(RESTART_MARKER_TMP);
    let marker = dir.join(RESTART_MARKER);
    let text = format!("{MARKER_PREFIX}{start}\n");
    write_whole_file(&storage, &tmp, text.as_bytes())
        .await
        .map_err(|e| Error::io(tmp.display(), e))?;
    storage
        .rename(&tmp, &marker)
        .await
        .map_err(|e| Error::io(marker.display(), e))?;
    storage
        .sync_dir(dir)
        .await
        .map_err(|e| Error::io(dir.display(), e))?;
    let log = PartitionLog::open(storage, dir, cfg, now_ms).await?;
    let w = log.watermarks();
    if w.log_start != start || w.next_offset != start {
        return Err(Error::CorruptLog {
            path: dir.display().to_string(),
            reason: format!("restart at {start} opened the log at {w:?}"),
        });
    }
    Ok(log)
}

/// The restart offset a marker file's bytes name (zero padding after the text is allowed).
fn parse_marker(bytes: &[u8]) -> Option<u64> {
    let end = bytes.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
    let text = std::str::from_utf8(&bytes[..end]).ok()?;
    text.strip_prefix(MARKER_PREFIX)?.trim_end().parse().ok()
}

/// The base offset of a segment's file (`.log`) or index file (`.idx`, `.tix`).
fn segment_file_base(name: &str) -> Option<u64> {
    let stem = [".log", ".idx", ".tix"]
        .iter()
        .find_map(|ext| name.strip_suffix(ext))?;
    parse_segment_name(&format!("{stem}.log"))
}

/// Whether `name` is a producer-state snapshot file (idempotence.rs names them
/// `producers-{offset:020}.snapshot`).
fn is_producer_snapshot(name: &str) -> bool {
    name.starts_with("producers-") && name.ends_with(".snapshot")
}

/// Steps 4-6 of the module doc, if the directory (whose entries are `names`) holds a marker.
/// Returns whether it did (the caller lists the directory again).
pub(super) async fn finish_restart<S: Storage>(
    storage: &S,
    dir: &Path,
    names: &[String],
) -> Result<bool> {
    if !names.iter().any(|n| n == RESTART_MARKER) {
        return Ok(false);
    }
    let marker = dir.join(RESTART_MARKER);
    let err = |e| Error::io(marker.display(), e);
    let f = storage.open(&marker).await.map_err(err)?;
    let bytes = read_small(&f).await.map_err(err)?;
    let Some(start) = parse_marker(&bytes) else {
        // Written whole (fdatasync before the rename): unreadable means damage, not a crash.
        return Err(Error::CorruptLog {
            path: marker.display().to_string(),
            reason: "unreadable restart marker".into(),
        });
    };
    tracing::info!(dir = %dir.display(), start, "finishing a log restart");
    let gone: Vec<std::path::PathBuf> = names
        .iter()
        .filter(|n| segment_file_base(n).is_some_and(|b| b < start) || is_producer_snapshot(n))
        .map(|n| dir.join(n))
        .collect();
    for p in &gone {
        match storage.remove(p).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(p.display(), e)),
        }
    }
    let first = dir.join(segment_file_name(start));
    storage
        .open(&first)
        .await
        .map_err(|e| Error::io(first.display(), e))?;
    storage
        .sync_dir(dir)
        .await
        .map_err(|e| Error::io(dir.display(), e))?;
    storage.remove(&marker).await.map_err(err)?;
    storage
        .sync_dir(dir)
        .await
        .map_err(|e| Error::io(dir.display(), e))?;
    Ok(true)
}

/// A marker file's bytes (one block is plenty; more is not a marker).
async fn read_small<F: crate::storage::LogFile>(f: &F) -> std::io::Result<Vec<u8>> {
    let r = f.read_at(0, crate::storage::BLOCK_BYTES).await?;
    Ok(r.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves: the marker's text parses with or without the zero padding of a direct write,
    // and nothing else parses as a marker (an open refuses it rather than guessing).
    #[test]
    fn a_marker_parses_only_when_whole() {
        let text = format!("{MARKER_PREFIX}52113\n");
        assert_eq!(parse_marker(text.as_bytes()), Some(52113));
        let mut padded = text.into_bytes();
        padded.resize(4096, 0);
        assert_eq!(parse_marker(&padded), Some(52113));
        for bad in [
            &b""[..],
            b"\0\0\0",
            b"shardline log restart at \n",
            b"52113",
            b"\xff\xfe",
        ] {
            assert_eq!(parse_marker(bad), None, "{bad:?}");
        }
        assert_eq!(parse_marker(format!("{MARKER_PREFIX}1x").as_bytes()), None);
        assert!(is_producer_snapshot(
            "producers-00000000000000052113.snapshot"
        ));
        assert_eq!(segment_file_base("00000000000000052113.tix"), Some(52113));
        assert_eq!(segment_file_base("00000000000000052113.snapshot"), None);
    }
}
