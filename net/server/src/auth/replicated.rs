//! Users, tokens and ACLs changed while the server runs (AlterSecurity, api 41;
//! docs/security.md, "On a cluster").
//!
//! A request becomes a [`Change`] on the node asked (off the shard: argon2 hashing): it
//! carries password hashes and token digests, never a password or a token secret. On a single
//! server the change is applied to the security file at once (as the offline commands do). On
//! a cluster it is proposed through the controller (`Engine::propose_security_change`) and
//! applied on every node, in commit order, by the hook [`enable`] registers: the node's
//! security state is the fold of the controller's security log, written to its security file
//! after each change (a copy for `user list` and friends; offline edits of it are ignored
//! while the cluster runs).
//!
//! A node's own security file at its first cluster start is merged once: it is set aside as
//! `security.import.json` and proposed as an [`Change::Import`] (what the controller's state
//! lacks is added; users, tokens and ACL entries already there win), retried until applied,
//! then renamed `security.imported.json`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shardline_engine::{Engine, Error, SecurityChanges, SecurityHook};

use super::acl::{AclEntry, Operation, Permission, parse_resource};
use super::store::{SecurityFile, StoreError, TokenEntry, UserEntry, check_principal};
use crate::protocol::{AlterSecurityRequest, AlterSecurityResponse, Response, SecurityOp};
use crate::session::AuthState;

/// A node's own file, set aside at its first cluster start until the merge applied.
const IMPORT_PENDING: &str = "security.import.json";
/// ... and once it has.
const IMPORT_DONE: &str = "security.imported.json";
/// Between attempts to merge a node's own file (no controller quorum yet).
const IMPORT_RETRY: Duration = Duration::from_secs(1);

/// One change to the security state, as the controller's log holds it (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Change {
    UserAdd {
        name: String,
        user: UserEntry,
    },
    UserRemove {
        name: String,
    },
    UserPasswd {
        name: String,
        password_hash: String,
    },
    TokenCreate {
        id: String,
        token: TokenEntry,
    },
    TokenRevoke {
        id: String,
    },
    AclAdd {
        entry: AclEntry,
    },
    AclRemove {
        entry: AclEntry,
    },
    /// A node's file at its first cluster start: what the state lacks is added.
    Import {
        file: SecurityFile,
    },
}

impl Change {
    /// Applies the change to `db`: what was done, or why it is refused (`db` unchanged).
    /// Deterministic: every node that applied the same changes decides the same.
    pub fn apply(&self, db: &mut SecurityFile) -> Result<String, String> {
        let err = |e: StoreError| e.to_string();
        match self {
            Change::UserAdd { name, user } => {
                check_principal(name).map_err(err)?;
                if db.users.contains_key(name) {
                    return Err(err(StoreError::UserExists(name.clone())));
                }
                db.users.insert(name.clone(), user.clone());
                Ok(format!("user {name} added"))
            }
            Change::UserRemove { name } => {
                let tokens = db.remove_user(name).map_err(err)?;
                Ok(format!("user {name} removed ({tokens} tokens revoked)"))
            }
            Change::UserPasswd {
                name,
                password_hash,
            } => {
                let u = db
                    .users
                    .get_mut(name)
                    .ok_or_else(|| err(StoreError::UnknownUser(name.clone())))?;
                u.password_hash.clone_from(password_hash);
                Ok(format!("password of {name} changed"))
            }
            Change::TokenCreate { id, token } => {
                check_principal(&token.principal).map_err(err)?;
                if db.tokens.contains_key(id) {
                    return Err(format!("token id {id} exists"));
                }
                db.tokens.insert(id.clone(), token.clone());
                Ok(format!("token {id} created for {}", token.principal))
            }
            Change::TokenRevoke { id } => {
                db.revoke_token(id).map_err(err)?;
                Ok(format!("token {id} revoked"))
            }
            Change::AclAdd { entry } => {
                entry.validate()?;
                if !db.acls.contains(entry) {
                    db.acls.push(entry.clone());
                }
                Ok(format!("added: {entry}"))
            }
            Change::AclRemove { entry } => {
                let before = db.acls.len();
                db.acls.retain(|x| x != entry);
                if db.acls.len() == before {
                    return Err(format!("no such entry: {entry}"));
                }
                Ok(format!("removed: {entry}"))
            }
            Change::Import { file } => Ok(merge(db, file)),
        }
    }
}

/// Adds what `db` lacks of `file` (entries already in `db` win).
fn merge(db: &mut SecurityFile, file: &SecurityFile) -> String {
    let (mut users, mut tokens, mut acls) = (0, 0, 0);
    for (name, u) in &file.users {
        if check_principal(name).is_ok() && !db.users.contains_key(name) {
            db.users.insert(name.clone(), u.clone());
            users += 1;
        }
    }
    for (id, t) in &file.tokens {
        if check_principal(&t.principal).is_ok() && !db.tokens.contains_key(id) {
            db.tokens.insert(id.clone(), t.clone());
            tokens += 1;
        }
    }
    for a in &file.acls {
        if a.validate().is_ok() && !db.acls.contains(a) {
            db.acls.push(a.clone());
            acls += 1;
        }
    }
    format!("merged {users} users, {tokens} tokens, {acls} ACL entries")
}

fn parse_operation(s: &str) -> Result<Operation, String> {
    Operation::ALL
        .into_iter()
        .find(|o| format!("{o:?}").eq_ignore_ascii_case(s))
        .ok_or_else(|| {
            "operation: expected produce, consume, create, delete, describe or admin".into()
        })
}

fn acl_entry(r: &AlterSecurityRequest) -> Result<AclEntry, String> {
    let (resource, pattern_type, pattern) = parse_resource(&r.resource)?;
    let e = AclEntry {
        principal: r.name.clone(),
        resource,
        pattern,
        pattern_type,
        operation: parse_operation(&r.operation)?,
        permission: if r.deny {
            Permission::Deny
        } else {
            Permission::Allow
        },
    };
    e.validate()?;
    Ok(e)
}

/// Turns a request into a change (blocking: argon2 for passwords), checked against `db` so
/// that an obvious refusal needs no round through the controller. Also returns the token
/// made by TokenCreate (shown once, never logged or replicated).
pub fn prepare(
    r: &AlterSecurityRequest,
    db: &SecurityFile,
) -> Result<(Change, Option<String>), String> {
    let name = r.name.clone();
    let change = match r.op {
        SecurityOp::UserAdd => {
            let mut scratch = SecurityFile::default();
            scratch
                .add_user(&name, &r.secret)
                .map_err(|e| e.to_string())?;
            let user = scratch.users.remove(&name).ok_or("user not added")?;
            Change::UserAdd { name, user }
        }
        SecurityOp::UserRemove => Change::UserRemove { name },
        SecurityOp::UserPasswd => {
            let mut scratch = SecurityFile::default();
            scratch.users.insert(
                name.clone(),
                UserEntry {
                    password_hash: String::new(),
                    created_ms: 0,
                },
            );
            scratch
                .set_password(&name, &r.secret)
                .map_err(|e| e.to_string())?;
            let password_hash = scratch.users.remove(&name).ok_or("no user")?.password_hash;
            Change::UserPasswd {
                name,
                password_hash,
            }
        }
        SecurityOp::TokenCreate => {
            let (id, token, entry) = db
                .new_token(&name, &r.description)
                .map_err(|e| e.to_string())?;
            let change = Change::TokenCreate { id, token: entry };
            change.apply(&mut db.clone())?;
            return Ok((change, Some(token)));
        }
        SecurityOp::TokenRevoke => Change::TokenRevoke { id: name },
        SecurityOp::AclAdd => Change::AclAdd {
            entry: acl_entry(r)?,
        },
        SecurityOp::AclRemove => Change::AclRemove {
            entry: acl_entry(r)?,
        },
    };
    change.apply(&mut db.clone())?;
    Ok((change, None))
}

/// Runs blocking `work` on a helper thread (argon2, file writes: never on a shard).
async fn off_shard<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, Error> {
    let (tx, rx) = flume::bounded(1);
    std::thread::Builder::new()
        .name("shardline-security".into())
        .spawn(move || {
            let _ = tx.send(work());
        })
        .map_err(|e| Error::Runtime(format!("security helper thread: {e}")))?;
    rx.recv_async()
        .await
        .map_err(|_| Error::Runtime("security helper thread ended".into()))?
        .map_err(Error::InvalidArgument)
}

/// Serves AlterSecurity: answered once the change applied on this node.
pub(crate) async fn handle(
    engine: &Engine,
    auth: Option<Arc<AuthState>>,
    r: AlterSecurityRequest,
) -> Result<Response, Error> {
    let auth = auth.ok_or_else(|| {
        Error::InvalidArgument(
            "authentication is off on this server ([server.auth] enabled, --auth)".into(),
        )
    })?;
    let db = auth.current();
    let (change, token) = off_shard(move || prepare(&r, &db)).await?;
    let message = change
        .apply(&mut (*auth.current()).clone())
        .unwrap_or_default();
    if engine.cluster_node_id().is_some() {
        let bytes = serde_json::to_vec(&change)
            .map_err(|e| Error::Runtime(format!("security change: {e}")))?;
        engine.propose_security_change(bytes).await?;
    } else {
        off_shard(move || apply_local(&auth, &change)).await?;
    }
    Ok(Response::AlterSecurity(AlterSecurityResponse {
        token: token.unwrap_or_default(),
        message,
    }))
}

/// A single server: the change applied to the security file as it is on disk (so offline
/// edits are kept), then in force at once.
fn apply_local(auth: &AuthState, change: &Change) -> Result<String, String> {
    static EDIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = EDIT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let path = auth.path();
    let mut db = SecurityFile::load(path).map_err(|e| e.to_string())?;
    let message = change.apply(&mut db)?;
    db.save(path).map_err(|e| e.to_string())?;
    auth.install(db);
    Ok(message)
}

/// The fold of the controller's security log.
fn fold(entries: &[(u64, Vec<u8>)]) -> SecurityFile {
    let mut db = SecurityFile::default();
    for (offset, bytes) in entries {
        match serde_json::from_slice::<Change>(bytes) {
            Ok(c) => {
                let _ = c.apply(&mut db);
            }
            Err(e) => tracing::warn!(offset, error = %e, "undecodable security change skipped"),
        }
    }
    db
}

/// Writes the node's copy of the state and puts it in force.
fn install(auth: &AuthState, db: SecurityFile) {
    if let Err(e) = db.save(auth.path()) {
        tracing::error!(error = %e, "security file not written (the state is in force anyway)");
    }
    auth.install(db);
}

fn on_change(auth: &AuthState, c: SecurityChanges<'_>) -> Result<(), String> {
    match c {
        SecurityChanges::Replay(entries) => {
            install(auth, fold(entries));
            Ok(())
        }
        SecurityChanges::Applied(offset, bytes) => {
            let change: Change = serde_json::from_slice(bytes).map_err(|e| {
                tracing::warn!(offset, error = %e, "undecodable security change skipped");
                "undecodable security change".to_string()
            })?;
            let mut db = (*auth.current()).clone();
            let message = change.apply(&mut db)?;
            tracing::info!(offset, "{message}");
            install(auth, db);
            Ok(())
        }
    }
}

/// On a cluster: the security state becomes the controller's (the hook above), and this
/// node's own file is merged into it once (module doc). Call after `enable_cluster`.
pub(crate) fn enable(auth: &Arc<AuthState>, engine: &Engine) -> Result<(), Error> {
    let dir = auth
        .path()
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let (pending, done) = (dir.join(IMPORT_PENDING), dir.join(IMPORT_DONE));
    if !pending.exists() && !done.exists() {
        // First cluster start: set the node's own file aside before the log replaces it.
        let own = SecurityFile::load(auth.path()).map_err(|e| Error::Runtime(e.to_string()))?;
        own.save(&pending)
            .map_err(|e| Error::Runtime(e.to_string()))?;
    }
    auth.set_replicated();
    let a = auth.clone();
    let hook: SecurityHook = Arc::new(move |c| on_change(&a, c));
    engine.on_security_change(hook)?;
    if pending.exists() {
        spawn_import(Arc::downgrade(auth), engine.clone(), pending, done)?;
    }
    Ok(())
}

/// Proposes the set-aside file until the controller applied it (bounded by the server's
/// life: it ends when the auth state goes).
fn spawn_import(
    auth: std::sync::Weak<AuthState>,
    engine: Engine,
    pending: PathBuf,
    done: PathBuf,
) -> Result<(), Error> {
    std::thread::Builder::new()
        .name("shardline-security-import".into())
        .spawn(move || {
            loop {
                let Some(a) = auth.upgrade() else { return };
                if a.stopped() {
                    return;
                }
                drop(a);
                let file = match SecurityFile::load(&pending) {
                    Ok(f) => f,
                    Err(e) => {
                        tracing::error!(error = %e, "own security file not merged");
                        return;
                    }
                };
                let merged = file.is_empty() || {
                    let bytes = serde_json::to_vec(&Change::Import { file }).unwrap_or_default();
                    match futures_lite::future::block_on(engine.propose_security_change(bytes)) {
                        Ok(()) => true,
                        Err(e @ Error::InvalidArgument(_)) => {
                            // Refused for good (too large): the operator's to resolve.
                            tracing::error!(error = %e, file = %pending.display(), "own security file not merged");
                            return;
                        }
                        Err(e) => {
                            tracing::info!(error = %e, "own security file not merged yet; retrying");
                            false
                        }
                    }
                };
                if merged {
                    if let Err(e) = std::fs::rename(&pending, &done) {
                        tracing::warn!(error = %e, "security import marker not renamed");
                    }
                    tracing::info!("own security file merged into the cluster's");
                    return;
                }
                std::thread::sleep(IMPORT_RETRY);
            }
        })
        .map(|_| ())
        .map_err(|e| Error::Runtime(format!("security import thread: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(op: SecurityOp, name: &str) -> AlterSecurityRequest {
        AlterSecurityRequest {
            op,
            name: name.into(),
            ..AlterSecurityRequest::default()
        }
    }

    #[test]
    fn changes_carry_no_secrets_and_fold_to_the_same_state_everywhere() {
        let mut db = SecurityFile::default();
        let mut add = request(SecurityOp::UserAdd, "alice");
        add.secret = "correct horse".into();
        let (c, _) = prepare(&add, &db).unwrap();
        let mut token = request(SecurityOp::TokenCreate, "svc");
        token.description = "ci".into();
        let (t, shown) = prepare(&token, &db).unwrap();
        let shown = shown.unwrap();
        let mut acl = request(SecurityOp::AclAdd, "alice");
        acl.resource = "topic:orders".into();
        acl.operation = "Produce".into();
        let (a, _) = prepare(&acl, &db).unwrap();
        let log: Vec<(u64, Vec<u8>)> = [&c, &t, &a]
            .iter()
            .enumerate()
            .map(|(i, c)| (i as u64, serde_json::to_vec(c).unwrap()))
            .collect();
        for (_, bytes) in &log {
            let text = String::from_utf8_lossy(bytes);
            assert!(!text.contains("correct horse"), "{text}");
            assert!(!text.contains(shown.rsplit('_').next().unwrap()), "{text}");
        }
        for c in [&c, &t, &a] {
            c.apply(&mut db).unwrap();
        }
        assert_eq!(fold(&log), db);
        assert!(db.check_token(&shown).is_some());
        // Refusals are decided by the state: the same on every node.
        assert!(prepare(&add, &db).is_err());
        assert!(c.apply(&mut db).is_err());
        assert!(prepare(&request(SecurityOp::UserRemove, "bob"), &db).is_err());
        let mut bad = acl.clone();
        bad.operation = "fly".into();
        assert!(prepare(&bad, &db).is_err());
        let (r, _) = prepare(&request(SecurityOp::AclRemove, "alice"), &db)
            .map_or((None, None), |(c, t)| (Some(c), t));
        assert!(r.is_none(), "an ACL remove without a resource is refused");
    }

    /// A change from a small alphabet (names collide often, so refusals happen).
    fn change() -> impl proptest::strategy::Strategy<Value = Change> {
        use proptest::prelude::*;
        let name = prop_oneof![Just("a"), Just("b"), Just("c")].prop_map(String::from);
        let user = |hash: u8| UserEntry {
            password_hash: format!("h{hash}"),
            created_ms: u64::from(hash),
        };
        let entry = (name.clone(), 0..6usize, any::<bool>()).prop_map(|(p, op, deny)| AclEntry {
            principal: p,
            resource: crate::auth::ResourceType::Topic,
            pattern: "t".into(),
            pattern_type: crate::auth::PatternType::Literal,
            operation: Operation::ALL[op],
            permission: if deny {
                Permission::Deny
            } else {
                Permission::Allow
            },
        });
        prop_oneof![
            (name.clone(), any::<u8>()).prop_map(move |(n, h)| Change::UserAdd {
                name: n,
                user: user(h),
            }),
            name.clone().prop_map(|n| Change::UserRemove { name: n }),
            (name.clone(), any::<u8>()).prop_map(|(n, h)| Change::UserPasswd {
                name: n,
                password_hash: format!("p{h}"),
            }),
            (name.clone(), name.clone()).prop_map(|(id, p)| Change::TokenCreate {
                id,
                token: TokenEntry {
                    principal: p,
                    secret_sha256: "00".into(),
                    created_ms: 0,
                    description: String::new(),
                },
            }),
            name.prop_map(|id| Change::TokenRevoke { id }),
            entry.clone().prop_map(|entry| Change::AclAdd { entry }),
            entry.prop_map(|entry| Change::AclRemove { entry }),
        ]
    }

    proptest::proptest! {
        /// The replicated state machine: every change survives the log's JSON; two nodes
        /// folding the same log reach the same state and the same verdicts; a refused change
        /// leaves the state as it was; a removed user's tokens go with it.
        #[test]
        fn every_node_folds_the_same_log_to_the_same_state(
            changes in proptest::collection::vec(change(), 0..40)
        ) {
            let log: Vec<(u64, Vec<u8>)> = changes
                .iter()
                .enumerate()
                .map(|(i, c)| (i as u64, serde_json::to_vec(c).unwrap()))
                .collect();
            let (mut a, mut b) = (SecurityFile::default(), SecurityFile::default());
            for ((_, bytes), c) in log.iter().zip(&changes) {
                let decoded: Change = serde_json::from_slice(bytes).unwrap();
                proptest::prop_assert_eq!(&decoded, c);
                let before = a.clone();
                let verdict = c.apply(&mut a);
                proptest::prop_assert_eq!(verdict.is_ok(), decoded.apply(&mut b).is_ok());
                if verdict.is_err() {
                    proptest::prop_assert_eq!(&a, &before);
                }
                if let (Change::UserRemove { name }, true) = (c, verdict.is_ok()) {
                    proptest::prop_assert!(a.tokens.values().all(|t| &t.principal != name));
                }
            }
            proptest::prop_assert_eq!(&a, &b);
            proptest::prop_assert_eq!(fold(&log), a);
        }
    }

    #[test]
    fn an_import_adds_only_what_is_missing() {
        let mut cluster = SecurityFile::default();
        cluster.add_user("admin", "one").unwrap();
        let mut own = SecurityFile::default();
        own.add_user("admin", "two").unwrap();
        own.add_user("old", "three").unwrap();
        let kept = cluster.users["admin"].clone();
        Change::Import { file: own }.apply(&mut cluster).unwrap();
        assert_eq!(cluster.users["admin"], kept, "the cluster's entry wins");
        assert!(cluster.users.contains_key("old"));
    }
}
