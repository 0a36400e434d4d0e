//! Security changes through the controller (docs/replication.md, "The controller group";
//! docs/security.md, "On a cluster"). The engine does not know users, tokens or ACLs: a
//! change is opaque bytes (the server's JSON). It is proposed like a topic creation
//! ([`Engine::propose_security_change`], forwarded to the controller's leader), committed in
//! the controller group, and applied on every node in commit order: appended to this node's
//! security log (`<data_dir>/controller/security.log`, fsynced), then handed to the hook the
//! server registered ([`Engine::on_security_change`]). The proposer is answered after its own
//! node applied the change, with what its hook said.
//!
//! The log holds every change since the cluster began (not compacted: security changes are
//! rare and small); registering a hook replays it, so a restarted node rebuilds its state
//! from it and then gets, through Raft, what it missed while down.
//!
//! Record layout: offset (u64 LE), length (u32 LE), crc32c of offset and data (u32 LE),
//! data. A torn or corrupt tail (a crash during an append) is cut at open: that entry was not
//! marked applied, so the controller applies it again.

#[allow(clippy::wildcard_imports)]
use super::*;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// The security log's file, in the controller's directory.
const SECURITY_LOG: &str = "security.log";
/// Largest change accepted (bytes).
pub const SECURITY_CHANGE_BYTES_MAX: usize = 1 << 20;
const RECORD_HEADER: usize = 16;

/// What the security hook is called with (always under the log's lock: calls never overlap
/// and never miss or repeat an entry).
pub enum SecurityChanges<'a> {
    /// At registration: every change applied so far, in order (offset, change).
    Replay(&'a [(u64, Vec<u8>)]),
    /// One change just committed and logged (controller offset, change).
    Applied(u64, &'a [u8]),
}

/// The server's hook. For `Applied`, `Err(reason)` means the change was refused by the
/// current state (every node decides the same, having applied the same changes before); the
/// proposer gets `Error::InvalidArgument(reason)`. The result of `Replay` is ignored.
pub type SecurityHook =
    Arc<dyn Fn(SecurityChanges<'_>) -> std::result::Result<(), String> + Send + Sync>;

pub(crate) struct SecurityLog {
    path: PathBuf,
    state: Mutex<LogState>,
}

struct LogState {
    entries: Vec<(u64, Vec<u8>)>,
    hook: Option<SecurityHook>,
}

fn record_crc(offset: u64, data: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&offset.to_le_bytes()), data)
}

/// The valid records of `bytes` and the length they cover.
fn parse_records(bytes: &[u8]) -> (Vec<(u64, Vec<u8>)>, usize) {
    let mut out: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut at = 0;
    while let Some(head) = bytes.get(at..at + RECORD_HEADER) {
        let field = |i: usize, n: usize| {
            let mut b = [0u8; 8];
            b[..n].copy_from_slice(&head[i..i + n]);
            u64::from_le_bytes(b)
        };
        let (offset, len, crc) = (field(0, 8), field(8, 4) as usize, field(12, 4) as u32);
        let Some(data) = bytes.get(at + RECORD_HEADER..at + RECORD_HEADER + len) else {
            break;
        };
        let in_order = out.last().is_none_or(|(o, _)| *o < offset);
        if len > SECURITY_CHANGE_BYTES_MAX || record_crc(offset, data) != crc || !in_order {
            break;
        }
        out.push((offset, data.to_vec()));
        at += RECORD_HEADER + len;
    }
    (out, at)
}

impl SecurityLog {
    /// Reads the log in `dir` (created if missing), cutting a torn tail.
    pub(crate) fn open(dir: &Path) -> Result<SecurityLog> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir.display(), e))?;
        let path = dir.join(SECURITY_LOG);
        let io = |e| Error::io(path.display(), e);
        let mut bytes = Vec::new();
        match std::fs::File::open(&path) {
            Ok(mut f) => {
                f.read_to_end(&mut bytes).map_err(io)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        let (entries, valid) = parse_records(&bytes);
        if valid < bytes.len() {
            tracing::warn!(
                file = %path.display(),
                cut = bytes.len() - valid,
                "security log: torn or corrupt tail cut (the controller applies it again)"
            );
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io)?;
            f.set_len(valid as u64).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        Ok(SecurityLog {
            path,
            state: Mutex::new(LogState {
                entries,
                hook: None,
            }),
        })
    }

    /// Appends one committed change (fsynced) and hands it to the hook. A change at or
    /// below the last logged offset was applied before a restart: nothing to do.
    fn apply(&self, offset: u64, change: &[u8]) -> Result<std::result::Result<(), String>> {
        let mut s = lock(&self.state)?;
        if s.entries.last().is_some_and(|(o, _)| *o >= offset) {
            return Ok(Ok(()));
        }
        let len = u32::try_from(change.len())
            .map_err(|_| Error::InvalidArgument("security change too large".into()))?;
        let mut rec = Vec::with_capacity(RECORD_HEADER + change.len());
        rec.extend_from_slice(&offset.to_le_bytes());
        rec.extend_from_slice(&len.to_le_bytes());
        rec.extend_from_slice(&record_crc(offset, change).to_le_bytes());
        rec.extend_from_slice(change);
        let io = |e| Error::io(self.path.display(), e);
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(io)?;
        f.write_all(&rec).map_err(io)?;
        f.sync_data().map_err(io)?;
        s.entries.push((offset, change.to_vec()));
        Ok(match &s.hook {
            Some(h) => h(SecurityChanges::Applied(offset, change)),
            None => Ok(()),
        })
    }

    fn register(&self, hook: SecurityHook) -> Result<()> {
        let mut s = lock(&self.state)?;
        let _ = hook(SecurityChanges::Replay(&s.entries));
        s.hook = Some(hook);
        Ok(())
    }

    pub(crate) fn entries(&self) -> Result<Vec<(u64, Vec<u8>)>> {
        Ok(lock(&self.state)?.entries.clone())
    }
}

impl Engine {
    /// Proposes an opaque security change through the controller (from any node) and waits
    /// until this node applied it; the error of a refused change is its hook's reason
    /// (`InvalidArgument`). Needs a cluster.
    pub async fn propose_security_change(&self, change: Vec<u8>) -> Result<()> {
        if change.is_empty() || change.len() > SECURITY_CHANGE_BYTES_MAX {
            return Err(Error::InvalidArgument(format!(
                "a security change is 1 to {SECURITY_CHANGE_BYTES_MAX} bytes"
            )));
        }
        self.cluster()?;
        match self
            .controller_command(move |request_id| Command::Security { request_id, change })
            .await?
        {
            Outcome::Security(Ok(())) => Ok(()),
            Outcome::Security(Err(reason)) => Err(Error::InvalidArgument(reason)),
            _ => Err(Error::Runtime("unexpected controller outcome".into())),
        }
    }

    /// Registers the hook that applies security changes on this node: called at once with
    /// every change applied so far ([`SecurityChanges::Replay`]), then with each new one in
    /// commit order ([`SecurityChanges::Applied`], on the controller's apply thread: it may
    /// block briefly, e.g. to write a file). One hook per engine (a second replaces it).
    pub fn on_security_change(&self, hook: SecurityHook) -> Result<()> {
        self.cluster()?.security.register(hook)
    }

    /// Every security change this node applied, in order (offset, change).
    pub fn security_changes(&self) -> Result<Vec<(u64, Vec<u8>)>> {
        self.cluster()?.security.entries()
    }

    /// A committed `Security` command.
    pub(super) fn apply_security(
        &self,
        offset: u64,
        request_id: u64,
        change: &[u8],
    ) -> Result<Outcome> {
        let verdict = self
            .cluster()?
            .security
            .apply(offset, change)
            .inspect_err(|e| {
                // Not retried (docs/replication.md, "Not done yet"): this node lacks the change.
                tracing::error!(offset, error = %e, "security change not logged on this node");
            })?;
        self.store_applied(offset, request_id)?;
        Ok(Outcome::Security(verdict))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_tail_is_cut_and_appends_follow_the_valid_records() {
        let dir = tempfile::tempdir().unwrap();
        let log = SecurityLog::open(dir.path()).unwrap();
        log.apply(3, b"one").unwrap().unwrap();
        log.apply(7, b"two").unwrap().unwrap();
        // Already logged (a replay after a restart): ignored.
        log.apply(7, b"again").unwrap().unwrap();
        let path = dir.path().join(SECURITY_LOG);
        let full = std::fs::read(&path).unwrap();
        // A crash in the middle of the second record.
        std::fs::write(&path, &full[..full.len() - 2]).unwrap();
        let log = SecurityLog::open(dir.path()).unwrap();
        assert_eq!(log.entries().unwrap(), vec![(3, b"one".to_vec())]);
        log.apply(7, b"two").unwrap().unwrap();
        let log = SecurityLog::open(dir.path()).unwrap();
        assert_eq!(
            log.entries().unwrap(),
            vec![(3, b"one".to_vec()), (7, b"two".to_vec())]
        );
        // A flipped byte ends the valid part there.
        let mut bad = std::fs::read(&path).unwrap();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        std::fs::write(&path, &bad).unwrap();
        let log = SecurityLog::open(dir.path()).unwrap();
        assert_eq!(log.entries().unwrap(), vec![(3, b"one".to_vec())]);
    }

    #[test]
    fn the_hook_gets_the_replay_then_each_change_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let log = SecurityLog::open(dir.path()).unwrap();
        log.apply(1, b"a").unwrap().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        log.register(Arc::new(move |c| {
            let mut s = s.lock().unwrap();
            match c {
                SecurityChanges::Replay(all) => s.push(format!("replay {}", all.len())),
                SecurityChanges::Applied(o, d) => {
                    if d == b"refused" {
                        return Err("no".into());
                    }
                    s.push(format!("{o} {}", String::from_utf8_lossy(d)));
                }
            }
            Ok(())
        }))
        .unwrap();
        log.apply(2, b"b").unwrap().unwrap();
        assert_eq!(log.apply(3, b"refused").unwrap(), Err("no".to_string()));
        assert_eq!(*seen.lock().unwrap(), vec!["replay 1", "2 b"]);
    }
}
