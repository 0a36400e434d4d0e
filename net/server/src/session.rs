//! The server's side of authentication and authorization (docs/security.md).
//!
//! - [`AuthState`] (one per server, shared by every shard): the security file as last read,
//!   a *generation* counter bumped on every reload, a watcher thread that re-reads the file when
//!   it changes (so `shardline token revoke` works without a restart), per-address failure
//!   windows (rate limiting), and a bound on concurrent password verifications.
//! - [`ConnAuth`] (one per connection): the session (who the connection is), and the ACL cache.
//!   On every request it compares one atomic (the generation) with the one it validated
//!   against; only when they differ does it re-check the session's credentials and drop the
//!   cache. A cache hit is a hash lookup keyed by `&str`, no allocation.
//!
//! Argon2 verification costs tens of milliseconds of CPU: it runs on a helper thread, never on
//! a shard.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::auth::store::{self, SecurityFile};
use crate::auth::{Operation, ResourceType, authorize};
use crate::protocol::{
    AuthMechanism, AuthenticateRequest, AuthenticateResponse, ErrorResponse, Request, code,
};

/// `[server.auth]` in the config file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Require Authenticate before any other request, and check ACLs on every request.
    pub enabled: bool,
    /// The security file; default `<data_dir>/security.json`.
    pub file: Option<PathBuf>,
    /// How often the file is checked for changes (revocations take effect within this).
    pub reload_interval_ms: u64,
    /// Failed Authenticate attempts allowed per client address per window.
    pub failures_max: u32,
    pub failure_window_ms: u64,
    /// Password verifications running at once (each costs ~19 MiB and tens of ms of CPU);
    /// more are refused as rate limited.
    pub verifications_max: usize,
    /// With mutual TLS, a verified client certificate authenticates the connection as its
    /// subject common name (no Authenticate needed).
    pub certificate_principals: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            enabled: false,
            file: None,
            reload_interval_ms: 500,
            failures_max: 5,
            failure_window_ms: 60_000,
            verifications_max: 4,
            certificate_principals: true,
        }
    }
}

/// Bound on remembered failing addresses; expired windows are dropped first.
const FAILURE_ADDRESSES_MAX: usize = 65_536;

struct FailureWindow {
    count: u32,
    started: Instant,
}

/// Identifies a file version cheaply: (modified time, length, inode).
type FileStamp = Option<(SystemTime, u64, u64)>;

fn stamp(path: &Path) -> FileStamp {
    let m = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let ino = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let ino = 0;
    Some((m.modified().ok()?, m.len(), ino))
}

pub(crate) struct AuthState {
    cfg: AuthConfig,
    path: PathBuf,
    db: RwLock<Arc<SecurityFile>>,
    generation: AtomicU64,
    failures: Mutex<HashMap<IpAddr, FailureWindow>>,
    verifying: AtomicUsize,
    stop: AtomicBool,
    /// On a cluster the controller's security log is the source (auth/replicated.rs): the
    /// file is a copy this server writes, and offline edits of it are not reloaded.
    replicated: AtomicBool,
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

impl AuthState {
    /// Loads the security file (a missing one is empty: nobody can log in yet) and starts the
    /// watcher thread. A malformed file is an error: refusing to start beats running open.
    pub(crate) fn open(cfg: &AuthConfig, data_dir: &Path) -> Result<Arc<AuthState>, String> {
        let path = cfg
            .file
            .clone()
            .unwrap_or_else(|| data_dir.join(store::SECURITY_FILE_NAME));
        let db = SecurityFile::load(&path).map_err(|e| e.to_string())?;
        let state = Arc::new(AuthState {
            cfg: cfg.clone(),
            path,
            db: RwLock::new(Arc::new(db)),
            generation: AtomicU64::new(1),
            failures: Mutex::new(HashMap::new()),
            verifying: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            replicated: AtomicBool::new(false),
        });
        let watcher = Arc::downgrade(&state);
        let interval = Duration::from_millis(cfg.reload_interval_ms.max(10));
        let mut seen = stamp(&state.path);
        std::thread::Builder::new()
            .name("shardline-auth-watch".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(interval);
                    let Some(state) = watcher.upgrade() else {
                        return;
                    };
                    if state.stop.load(Ordering::Acquire) {
                        return;
                    }
                    let now = stamp(&state.path);
                    if now != seen {
                        seen = now;
                        if !state.replicated.load(Ordering::Acquire) {
                            state.reload();
                        }
                    }
                }
            })
            .map_err(|e| format!("cannot start the security file watcher: {e}"))?;
        tracing::info!(file = %state.path.display(), "authentication enabled");
        Ok(state)
    }

    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    pub(crate) fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// The security file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The contents in force.
    pub(crate) fn current(&self) -> Arc<SecurityFile> {
        self.snapshot().1
    }

    /// Puts `db` in force (sessions re-check at their next request, as after a reload).
    pub(crate) fn install(&self, db: SecurityFile) {
        *self.db.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(db);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// From now on the controller's log is the source, not the file (auth/replicated.rs).
    pub(crate) fn set_replicated(&self) {
        self.replicated.store(true, Ordering::Release);
    }

    /// Re-reads the file. A broken file keeps the previous contents (and says so).
    pub(crate) fn reload(&self) {
        match SecurityFile::load(&self.path) {
            Ok(db) => {
                *self.db.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(db);
                let g = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
                tracing::info!(generation = g, "security file reloaded");
            }
            Err(e) => {
                tracing::error!(error = %e, "security file not reloaded, keeping the previous one")
            }
        }
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn snapshot(&self) -> (u64, Arc<SecurityFile>) {
        // Generation first: a reload between the two reads makes us re-check once more later,
        // never miss a change.
        let g = self.generation();
        (g, read(&self.db).clone())
    }

    /// `Err(retry_after)` while `ip` has used up its failures for the current window.
    fn check_rate(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let window = Duration::from_millis(self.cfg.failure_window_ms);
        let failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        match failures.get(&ip) {
            Some(w) if w.count >= self.cfg.failures_max && now < w.started + window => {
                Err(w.started + window - now)
            }
            _ => Ok(()),
        }
    }

    fn record(&self, ip: IpAddr, success: bool, now: Instant) {
        let window = Duration::from_millis(self.cfg.failure_window_ms);
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        if success {
            failures.remove(&ip);
            return;
        }
        if failures.len() >= FAILURE_ADDRESSES_MAX {
            failures.retain(|_, w| now < w.started + window);
            if failures.len() >= FAILURE_ADDRESSES_MAX {
                // Under an attack from that many addresses, forget the oldest half.
                let mut starts: Vec<Instant> = failures.values().map(|w| w.started).collect();
                starts.sort();
                let cut = starts[starts.len() / 2];
                failures.retain(|_, w| w.started > cut);
            }
        }
        let w = failures.entry(ip).or_insert(FailureWindow {
            count: 0,
            started: now,
        });
        if now >= w.started + window {
            *w = FailureWindow {
                count: 0,
                started: now,
            };
        }
        w.count += 1;
    }

    /// Checks credentials against the current file. Blocking (argon2): call off-shard.
    fn verify(&self, request: &AuthenticateRequest) -> Option<Session> {
        let (generation, db) = self.snapshot();
        let verified = db.verify(request.mechanism, &request.username, &request.secret)?;
        let principal: Arc<str> = verified.principal().into();
        let credential = match verified {
            store::Verified::Password { hash, .. } => Credential::Password { hash: hash.into() },
            store::Verified::Token { id, .. } => Credential::Token { id: id.into() },
        };
        Some(Session {
            principal,
            credential,
            generation: Cell::new(generation),
        })
    }
}

/// How a session was established, to re-check it when the file changes.
enum Credential {
    /// Ends when the user is removed or its password changes.
    Password { hash: Arc<str> },
    /// Ends when the token is revoked.
    Token { id: Arc<str> },
    /// A verified client certificate; certificates are revoked at the CA, not here.
    Certificate,
}

struct Session {
    principal: Arc<str>,
    credential: Credential,
    /// The generation this session (and the ACL cache) was last validated against.
    generation: Cell<u64>,
}

impl Session {
    fn still_valid(&self, db: &SecurityFile) -> bool {
        match &self.credential {
            Credential::Password { hash } => db
                .users
                .get(&*self.principal)
                .is_some_and(|u| *u.password_hash == **hash),
            Credential::Token { id } => db
                .tokens
                .get(&**id)
                .is_some_and(|t| *t.principal == *self.principal),
            Credential::Certificate => true,
        }
    }
}

/// Why a request is refused; `close` when the connection must end (revoked credentials).
pub(crate) struct Denied {
    pub(crate) error: ErrorResponse,
    pub(crate) close: bool,
}

const ACL_CACHE_ENTRIES_MAX: usize = 4096;

/// Per-connection authentication and authorization state. `None` state = auth disabled:
/// every check passes at the cost of one branch.
pub(crate) struct ConnAuth {
    state: Option<Arc<AuthState>>,
    peer: Option<SocketAddr>,
    session: RefCell<Option<Session>>,
    /// (resource, operation) -> name -> allowed, for this session's principal.
    cache: RefCell<HashMap<(ResourceType, Operation), HashMap<String, bool>>>,
    cached: Cell<usize>,
}

impl ConnAuth {
    pub(crate) fn new(
        state: Option<Arc<AuthState>>,
        peer: Option<SocketAddr>,
        certificate_name: Option<&str>,
    ) -> ConnAuth {
        let session = match (&state, certificate_name) {
            (Some(s), Some(cn))
                if s.cfg.certificate_principals && store::check_principal(cn).is_ok() =>
            {
                tracing::info!(peer = ?peer, principal = cn, "authenticated by client certificate");
                Some(Session {
                    principal: cn.into(),
                    credential: Credential::Certificate,
                    generation: Cell::new(s.generation()),
                })
            }
            _ => None,
        };
        ConnAuth {
            state,
            peer,
            session: RefCell::new(session),
            cache: RefCell::new(HashMap::new()),
            cached: Cell::new(0),
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.state.is_some()
    }

    /// Called for every request after the Handshake. Handshake and Authenticate always pass
    /// (Authenticate is answered by [`ConnAuth::authenticate`]); everything else needs a live
    /// session, and the ACLs of the operations it performs.
    pub(crate) fn gate(&self, request: &Request) -> Result<(), Denied> {
        let Some(state) = &self.state else {
            return Ok(());
        };
        if matches!(request, Request::Handshake(_) | Request::Authenticate(_)) {
            return Ok(());
        }
        self.check_session(state)?;
        let mut denied: Option<(ResourceType, &str, Operation)> = None;
        for_each_permission(request, |resource, name, operation| {
            if denied.is_none() && !self.allowed(resource, name, operation) {
                denied = Some((resource, name, operation));
            }
        });
        match denied {
            None => Ok(()),
            Some((resource, name, operation)) => {
                let principal = self.principal().unwrap_or_default();
                tracing::info!(peer = ?self.peer, %principal, ?resource, name, ?operation, "denied");
                Err(Denied {
                    error: ErrorResponse::new(
                        code::AUTHORIZATION_FAILED,
                        format!(
                            "principal '{principal}' may not {} {} '{name}'",
                            format!("{operation:?}").to_lowercase(),
                            format!("{resource:?}").to_lowercase()
                        ),
                    ),
                    close: false,
                })
            }
        }
    }

    /// Who quotas charge: the session's principal, else the client's IP address.
    pub(crate) fn quota_key(&self) -> Arc<str> {
        if let Some(s) = self.session.borrow().as_ref() {
            return s.principal.clone();
        }
        self.peer
            .map_or_else(|| Arc::from("unknown"), |p| Arc::from(p.ip().to_string()))
    }

    fn principal(&self) -> Option<String> {
        self.session
            .borrow()
            .as_ref()
            .map(|s| s.principal.to_string())
    }

    /// The session exists and its credentials are still in the file (re-checked only when the
    /// file's generation moved; the ACL cache is dropped then too).
    fn check_session(&self, state: &AuthState) -> Result<(), Denied> {
        let session = self.session.borrow();
        let Some(s) = session.as_ref() else {
            return Err(Denied {
                error: ErrorResponse::new(
                    code::AUTHENTICATION_REQUIRED,
                    "authenticate first (Authenticate, api 40)",
                ),
                close: false,
            });
        };
        if s.generation.get() == state.generation() {
            return Ok(());
        }
        let (generation, db) = state.snapshot();
        self.cache.borrow_mut().clear();
        self.cached.set(0);
        if s.still_valid(&db) {
            s.generation.set(generation);
            return Ok(());
        }
        tracing::info!(peer = ?self.peer, principal = %s.principal, "credentials revoked: closing");
        drop(session);
        *self.session.borrow_mut() = None;
        Err(Denied {
            error: ErrorResponse::new(code::AUTHENTICATION_FAILED, "credentials revoked"),
            close: true,
        })
    }

    /// ACL check through the per-connection cache. True when auth is disabled.
    pub(crate) fn allowed(&self, resource: ResourceType, name: &str, operation: Operation) -> bool {
        let Some(state) = &self.state else {
            return true;
        };
        let session = self.session.borrow();
        let Some(s) = session.as_ref() else {
            return false;
        };
        if let Some(&hit) = self
            .cache
            .borrow()
            .get(&(resource, operation))
            .and_then(|m| m.get(name))
        {
            return hit;
        }
        let (_, db) = state.snapshot();
        let allowed = authorize(&db.acls, &s.principal, resource, name, operation);
        if self.cached.get() >= ACL_CACHE_ENTRIES_MAX {
            self.cache.borrow_mut().clear();
            self.cached.set(0);
        }
        self.cache
            .borrow_mut()
            .entry((resource, operation))
            .or_default()
            .insert(name.to_string(), allowed);
        self.cached.set(self.cached.get() + 1);
        allowed
    }

    /// Answers an Authenticate request: rate limit per address, verification on a helper
    /// thread, one error code for every failure, a log line without the secret.
    pub(crate) async fn authenticate(
        &self,
        request: AuthenticateRequest,
    ) -> Result<AuthenticateResponse, ErrorResponse> {
        let Some(state) = self.state.clone() else {
            // Without auth every connection is anonymous and allowed: accept and say so.
            return Ok(AuthenticateResponse {
                principal: "anonymous".into(),
            });
        };
        let ip = self
            .peer
            .map_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), |p| p.ip());
        if let Err(retry) = state.check_rate(ip, Instant::now()) {
            tracing::warn!(peer = ?self.peer, "authentication rate limited");
            return Err(ErrorResponse::new(
                code::AUTHENTICATION_RATE_LIMITED,
                format!(
                    "too many failed attempts; retry in {} ms",
                    retry.as_millis()
                ),
            ));
        }
        if state.verifying.fetch_add(1, Ordering::AcqRel) >= state.cfg.verifications_max {
            state.verifying.fetch_sub(1, Ordering::AcqRel);
            return Err(ErrorResponse::new(
                code::AUTHENTICATION_RATE_LIMITED,
                "too many authentications in progress; retry shortly",
            ));
        }
        let mechanism = request.mechanism;
        let who = match mechanism {
            AuthMechanism::Password => request.username.clone(),
            AuthMechanism::Token => store::parse_token(&request.secret).map_or_else(
                || "<malformed token>".into(),
                |(id, _)| format!("token {id}"),
            ),
        };
        let (tx, rx) = flume::bounded(1);
        let worker = state.clone();
        let spawned = std::thread::Builder::new()
            .name("shardline-auth".into())
            .spawn(move || {
                let session = worker.verify(&request).map(|s| {
                    let generation = s.generation.get();
                    (s.principal, s.credential, generation)
                });
                worker.verifying.fetch_sub(1, Ordering::AcqRel);
                let _ = tx.send(session);
            });
        if spawned.is_err() {
            state.verifying.fetch_sub(1, Ordering::AcqRel);
            return Err(ErrorResponse::new(
                code::INTERNAL,
                "cannot start a verification",
            ));
        }
        let verified = rx.recv_async().await.ok().flatten();
        state.record(ip, verified.is_some(), Instant::now());
        match verified {
            Some((principal, credential, generation)) => {
                tracing::info!(peer = ?self.peer, %principal, ?mechanism, "authenticated");
                *self.session.borrow_mut() = Some(Session {
                    principal: principal.clone(),
                    credential,
                    generation: Cell::new(generation),
                });
                self.cache.borrow_mut().clear();
                self.cached.set(0);
                Ok(AuthenticateResponse {
                    principal: principal.to_string(),
                })
            }
            None => {
                tracing::warn!(peer = ?self.peer, who = %who, ?mechanism, "authentication failed");
                // A failed attempt also ends a previous session of this connection.
                *self.session.borrow_mut() = None;
                Err(ErrorResponse::new(
                    code::AUTHENTICATION_FAILED,
                    "authentication failed",
                ))
            }
        }
    }
}

/// Every (resource, name, operation) a request needs (docs/security.md, "What each api
/// needs"). Requests that list topics (ListTopics, Metadata of all topics) need nothing here:
/// their answers are filtered instead.
pub(crate) fn for_each_permission<'r>(
    request: &'r Request,
    f: impl FnMut(ResourceType, &'r str, Operation),
) {
    // The api table (shardline_protocol::api) declares what each api needs.
    request.for_each_permission(f);
}

/// Drops from listing answers (ListTopics, Metadata) the topics the principal may not
/// describe, so that names are not disclosed either.
pub(crate) fn filter_response(
    auth: &ConnAuth,
    response: crate::protocol::Response,
) -> crate::protocol::Response {
    use crate::protocol::Response;
    if !auth.enabled() {
        return response;
    }
    let may = |name: &str| auth.allowed(ResourceType::Topic, name, Operation::Describe);
    match response {
        Response::ListTopics(mut l) => {
            l.topics.retain(|t| may(&t.name));
            Response::ListTopics(l)
        }
        Response::Metadata(mut m) => {
            m.topics.retain(|t| may(&t.name));
            Response::Metadata(m)
        }
        Response::ListGroups(mut l) => {
            l.groups
                .retain(|g| auth.allowed(ResourceType::Group, &g.group, Operation::Describe));
            Response::ListGroups(l)
        }
        other => other,
    }
}

/// What the web console (console/) needs of authentication: the principal of a token, and
/// ACL checks for it, against the current security file.
impl AuthState {
    pub(crate) fn token_principal(&self, token: &str) -> Option<String> {
        let (_, db) = self.snapshot();
        db.check_token(token).map(|(_, e)| e.principal.clone())
    }

    pub(crate) fn principal_allowed(
        &self,
        principal: &str,
        resource: ResourceType,
        name: &str,
        operation: Operation,
    ) -> bool {
        let (_, db) = self.snapshot();
        authorize(&db.acls, principal, resource, name, operation)
    }
}

impl ConnAuth {
    /// Whether requests other than Handshake and Authenticate may be decoded: auth is off, or
    /// the connection has a session (issue 16: payloads before authentication are not decoded).
    pub(crate) fn authenticated(&self) -> bool {
        self.state.is_none() || self.session.borrow().is_some()
    }

    /// Whether this connection has a session (the Kafka listener refuses every request but
    /// ApiVersions and SASL before one, when auth is on).
    pub(crate) fn has_session(&self) -> bool {
        self.session.borrow().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(failures_max: u32) -> AuthState {
        AuthState {
            cfg: AuthConfig {
                enabled: true,
                failures_max,
                failure_window_ms: 1000,
                ..AuthConfig::default()
            },
            path: PathBuf::from("/nonexistent"),
            db: RwLock::new(Arc::new(SecurityFile::default())),
            generation: AtomicU64::new(1),
            failures: Mutex::new(HashMap::new()),
            verifying: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            replicated: AtomicBool::new(false),
        }
    }

    #[test]
    fn failures_are_limited_per_address_and_window() {
        let s = state(3);
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(s.check_rate(a, t0).is_ok());
            s.record(a, false, t0);
        }
        let retry = s.check_rate(a, t0).expect_err("limited");
        assert!(retry <= Duration::from_millis(1000));
        assert!(
            s.check_rate(b, t0).is_ok(),
            "another address is not limited"
        );
        let later = t0 + Duration::from_millis(1001);
        assert!(s.check_rate(a, later).is_ok(), "the window ends");
        s.record(a, false, later);
        assert!(
            s.check_rate(a, later).is_ok(),
            "a new window starts at one failure"
        );
        s.record(a, true, later);
        assert!(s.failures.lock().expect("lock").get(&a).is_none());
    }

    #[test]
    fn every_request_kind_names_its_permissions() {
        use crate::protocol::*;
        let mut seen = Vec::new();
        let produce = Request::Produce(ProduceRequest {
            acks: Acks::Leader,
            timeout_ms: 1,
            topics: vec![ProduceTopic {
                name: "a".into(),
                partitions: vec![],
            }],
        });
        for_each_permission(&produce, |r, n, o| seen.push((r, n.to_string(), o)));
        assert_eq!(
            seen,
            vec![(ResourceType::Topic, "a".into(), Operation::Produce)]
        );
        seen.clear();
        for_each_permission(&Request::Stats(StatsRequest {}), |r, n, o| {
            seen.push((r, n.to_string(), o))
        });
        assert_eq!(
            seen,
            vec![(ResourceType::Cluster, "*".into(), Operation::Describe)]
        );
    }
}
