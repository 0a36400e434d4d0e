//! The security file: users (argon2id password hashes), API tokens (SHA-256 of their secret)
//! and ACLs, in one JSON document (docs/security.md, "The security file").
//!
//! Managed offline by `shardline user|token|acl ...`, which rewrite it atomically (temporary
//! file, fsync, rename, fsync of the directory); read by the server, which re-reads it when it
//! changes, so revocations take effect without a restart.
//!
//! Why two hash functions: passwords are chosen by people and guessable, so they get a salted,
//! memory-hard hash (argon2id, OWASP's parameters m=19 MiB, t=2) that makes offline guessing
//! expensive. Tokens are 256 random bits made by the server's CSPRNG: no dictionary exists for
//! them, so a single SHA-256 is as strong as argon2 there and costs microseconds, not
//! milliseconds, per connection.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::acl::AclEntry;

/// Version of the file's layout; a reader refuses others.
pub const SECURITY_FILE_VERSION: u32 = 1;

/// Name of the security file inside the data directory, by default.
pub const SECURITY_FILE_NAME: &str = "security.json";

pub use shardline_protocol::security::{
    TOKEN_ID_BYTES, TOKEN_PREFIX, TOKEN_SECRET_BYTES, parse_token,
};

/// Principal names: what ACLs and logs show.
pub const PRINCIPAL_BYTES_MAX: usize = 255;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("security file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{0}")]
    Invalid(String),
    #[error("user '{0}' already exists")]
    UserExists(String),
    #[error("no user '{0}'")]
    UnknownUser(String),
    #[error("no token with id '{0}'")]
    UnknownToken(String),
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error("cannot get random bytes from the OS: {0}")]
    Random(String),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UserEntry {
    /// PHC string: `$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`.
    pub password_hash: String,
    pub created_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// The principal the token acts as (a user name or a service name).
    pub principal: String,
    /// Lower-case hex SHA-256 of the token's secret part.
    pub secret_sha256: String,
    pub created_ms: u64,
    #[serde(default)]
    pub description: String,
}

/// The whole file. Maps are ordered so that rewrites are stable and diffable.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SecurityFile {
    pub version: u32,
    #[serde(default)]
    pub users: BTreeMap<String, UserEntry>,
    /// By token id (the public part of a token).
    #[serde(default)]
    pub tokens: BTreeMap<String, TokenEntry>,
    #[serde(default)]
    pub acls: Vec<AclEntry>,
}

impl Default for SecurityFile {
    fn default() -> Self {
        SecurityFile {
            version: SECURITY_FILE_VERSION,
            users: BTreeMap::new(),
            tokens: BTreeMap::new(),
            acls: Vec::new(),
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn random<const N: usize>() -> Result<[u8; N], StoreError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| StoreError::Random(e.to_string()))?;
    Ok(b)
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// Checks a principal (user or token principal) name: 1..=255 bytes, no control characters,
/// no `*` (reserved for ACL wildcards).
pub fn check_principal(name: &str) -> Result<(), StoreError> {
    if name.is_empty() || name.len() > PRINCIPAL_BYTES_MAX {
        return Err(StoreError::Invalid(format!(
            "principal names are 1 to {PRINCIPAL_BYTES_MAX} bytes"
        )));
    }
    if name.chars().any(|c| c.is_control() || c == '*') {
        return Err(StoreError::Invalid(
            "principal names may not contain control characters or '*'".into(),
        ));
    }
    Ok(())
}

/// Hashes a password with argon2id (default parameters) and a fresh 16-byte salt.
pub fn hash_password(password: &str) -> Result<String, StoreError> {
    let salt = random::<16>()?;
    let hash: Result<PasswordHash, _> =
        argon2::Argon2::default().hash_password_with_salt(password.as_bytes(), &salt);
    hash.map(|h| h.to_string())
        .map_err(|e| StoreError::Hash(e.to_string()))
}

/// Verifies `password` against a PHC string; false for any mismatch or malformed hash.
pub fn verify_password(phc: &str, password: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    argon2::Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok()
}

impl SecurityFile {
    /// Reads the file; a missing file is an empty one (nobody may log in).
    pub fn load(path: &Path) -> Result<SecurityFile, StoreError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(SecurityFile::default());
            }
            Err(e) => {
                return Err(StoreError::File {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                });
            }
        };
        Self::parse(&text).map_err(|reason| StoreError::File {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// Parses and validates the file's text.
    pub fn parse(text: &str) -> Result<SecurityFile, String> {
        let file: SecurityFile = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if file.version != SECURITY_FILE_VERSION {
            return Err(format!(
                "version {} is not supported (this build reads {SECURITY_FILE_VERSION})",
                file.version
            ));
        }
        for name in file.users.keys() {
            check_principal(name).map_err(|e| format!("user '{name}': {e}"))?;
        }
        for (id, t) in &file.tokens {
            check_principal(&t.principal).map_err(|e| format!("token {id}: {e}"))?;
        }
        for a in &file.acls {
            a.validate().map_err(|e| format!("acl {a}: {e}"))?;
        }
        Ok(file)
    }

    /// Writes the file atomically (temporary file, fsync, rename, fsync of the directory),
    /// readable by its owner only.
    pub fn save(&self, path: &Path) -> Result<(), StoreError> {
        let io = |e: std::io::Error| StoreError::File {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&dir).map_err(io)?;
        let tmp = path.with_extension("json.tmp");
        let text =
            serde_json::to_string_pretty(self).map_err(|e| StoreError::Invalid(e.to_string()))?;
        {
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut f = options.open(&tmp).map_err(io)?;
            f.write_all(text.as_bytes()).map_err(io)?;
            f.write_all(b"\n").map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, path).map_err(io)?;
        std::fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
        Ok(())
    }

    pub fn add_user(&mut self, name: &str, password: &str) -> Result<(), StoreError> {
        check_principal(name)?;
        if password.is_empty() {
            return Err(StoreError::Invalid("the password is empty".into()));
        }
        if self.users.contains_key(name) {
            return Err(StoreError::UserExists(name.into()));
        }
        let entry = UserEntry {
            password_hash: hash_password(password)?,
            created_ms: now_ms(),
        };
        self.users.insert(name.to_string(), entry);
        Ok(())
    }

    /// Removes a user and every token acting as it.
    pub fn remove_user(&mut self, name: &str) -> Result<usize, StoreError> {
        if self.users.remove(name).is_none() {
            return Err(StoreError::UnknownUser(name.into()));
        }
        let before = self.tokens.len();
        self.tokens.retain(|_, t| t.principal != name);
        Ok(before - self.tokens.len())
    }

    /// Creates a token for `principal`; returns `(id, token)`. The token is shown once: only
    /// the SHA-256 of its secret is stored.
    pub fn create_token(
        &mut self,
        principal: &str,
        description: &str,
    ) -> Result<(String, String), StoreError> {
        let (id, token, entry) = self.new_token(principal, description)?;
        self.tokens.insert(id.clone(), entry);
        Ok((id, token))
    }

    /// A new token for `principal` with an id not in this file, without adding it: `(id,
    /// token, entry)`; the entry holds only the SHA-256 of the secret.
    pub fn new_token(
        &self,
        principal: &str,
        description: &str,
    ) -> Result<(String, String, TokenEntry), StoreError> {
        check_principal(principal)?;
        let id = loop {
            let id = hex(&random::<TOKEN_ID_BYTES>()?);
            if !self.tokens.contains_key(&id) {
                break id;
            }
        };
        let secret = hex(&random::<TOKEN_SECRET_BYTES>()?);
        let entry = TokenEntry {
            principal: principal.to_string(),
            secret_sha256: sha256_hex(secret.as_bytes()),
            created_ms: now_ms(),
            description: description.to_string(),
        };
        let token = format!("{TOKEN_PREFIX}{id}_{secret}");
        Ok((id, token, entry))
    }

    /// Sets an existing user's password (a new salt; its sessions end at the next reload).
    pub fn set_password(&mut self, name: &str, password: &str) -> Result<(), StoreError> {
        if password.is_empty() {
            return Err(StoreError::Invalid("the password is empty".into()));
        }
        let hash = hash_password(password)?;
        let user = self
            .users
            .get_mut(name)
            .ok_or_else(|| StoreError::UnknownUser(name.into()))?;
        user.password_hash = hash;
        Ok(())
    }

    /// Whether the file holds no user, token or ACL.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty() && self.tokens.is_empty() && self.acls.is_empty()
    }

    pub fn revoke_token(&mut self, id: &str) -> Result<TokenEntry, StoreError> {
        self.tokens
            .remove(id)
            .ok_or_else(|| StoreError::UnknownToken(id.into()))
    }

    /// The principal of a valid token, comparing the secret's hash in constant time.
    pub fn check_token(&self, token: &str) -> Option<(&str, &TokenEntry)> {
        let (id, secret) = parse_token(token)?;
        let (id, entry) = self.tokens.get_key_value(id)?;
        let want = entry.secret_sha256.as_bytes();
        let got = sha256_hex(secret.as_bytes());
        bool::from(want.ct_eq(got.as_bytes())).then_some((id.as_str(), entry))
    }
}

/// What a successful check of credentials proved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verified {
    /// A user's password; the session ends if this hash changes or the user goes.
    Password { user: String, hash: String },
    /// A token; the session ends when it is revoked.
    Token { id: String, principal: String },
}

impl Verified {
    pub fn principal(&self) -> &str {
        match self {
            Verified::Password { user, .. } => user,
            Verified::Token { principal, .. } => principal,
        }
    }
}

impl SecurityFile {
    /// Checks an Authenticate request's credentials (blocking: argon2 for passwords). Unknown
    /// users cost the same as wrong passwords, so timing does not reveal which names exist.
    pub fn verify(
        &self,
        mechanism: crate::protocol::AuthMechanism,
        username: &str,
        secret: &str,
    ) -> Option<Verified> {
        use crate::protocol::AuthMechanism;
        match mechanism {
            AuthMechanism::Password => {
                let Some(user) = self.users.get(username) else {
                    let _ = verify_password(dummy_hash(), secret);
                    return None;
                };
                verify_password(&user.password_hash, secret).then(|| Verified::Password {
                    user: username.to_string(),
                    hash: user.password_hash.clone(),
                })
            }
            AuthMechanism::Token => {
                let (id, entry) = self.check_token(secret)?;
                Some(Verified::Token {
                    id: id.to_string(),
                    principal: entry.principal.clone(),
                })
            }
        }
    }
}

/// A hash of a random password, verified against for unknown users.
fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| {
        let password = random::<16>().map(|b| hex(&b)).unwrap_or_default();
        hash_password(&password).unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_round_trip_through_the_file_and_verify() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("security.json");
        let mut f = SecurityFile::load(&path).expect("missing = empty");
        assert!(f.users.is_empty());
        f.add_user("alice", "correct horse").expect("add");
        assert!(matches!(
            f.add_user("alice", "x"),
            Err(StoreError::UserExists(_))
        ));
        f.save(&path).expect("save");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(
            !text.contains("correct horse"),
            "plaintext password in the file"
        );
        assert!(text.contains("$argon2id$"), "{text}");
        let g = SecurityFile::load(&path).expect("load");
        assert_eq!(f, g);
        let phc = &g.users["alice"].password_hash;
        assert!(verify_password(phc, "correct horse"));
        assert!(!verify_password(phc, "correct horsE"));
        assert!(!verify_password("not a phc string", "x"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o077, 0, "file readable by others: {mode:o}");
        }
    }

    #[test]
    fn salts_differ_between_equal_passwords() {
        let a = hash_password("same").expect("a");
        let b = hash_password("same").expect("b");
        assert_ne!(a, b);
    }

    #[test]
    fn tokens_verify_until_revoked() {
        let mut f = SecurityFile::default();
        let (id, token) = f.create_token("svc-orders", "ci").expect("token");
        assert!(token.starts_with("slt_"));
        let (got_id, entry) = f.check_token(&token).expect("valid");
        assert_eq!(
            (got_id, entry.principal.as_str()),
            (id.as_str(), "svc-orders")
        );
        // The stored form is not the token.
        let text = serde_json::to_string(&f).expect("json");
        assert!(!text.contains(token.rsplit('_').next().expect("secret")));
        // A flipped secret character fails.
        let mut bad = token.clone().into_bytes();
        let last = bad.len() - 1;
        bad[last] = if bad[last] == b'0' { b'1' } else { b'0' };
        assert!(
            f.check_token(&String::from_utf8(bad).expect("utf8"))
                .is_none()
        );
        assert!(f.check_token("slt_nope").is_none());
        assert!(f.check_token("").is_none());
        f.revoke_token(&id).expect("revoke");
        assert!(f.check_token(&token).is_none());
        assert!(matches!(
            f.revoke_token(&id),
            Err(StoreError::UnknownToken(_))
        ));
    }

    #[test]
    fn removing_a_user_removes_its_tokens() {
        let mut f = SecurityFile::default();
        f.add_user("bob", "pw").expect("add");
        let (_, t) = f.create_token("bob", "").expect("token");
        let (_, other) = f.create_token("carol", "").expect("token");
        assert_eq!(f.remove_user("bob").expect("remove"), 1);
        assert!(f.check_token(&t).is_none());
        assert!(f.check_token(&other).is_some());
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        assert!(SecurityFile::parse("{").is_err());
        let e = SecurityFile::parse(r#"{"version": 9}"#).expect_err("version");
        assert!(e.contains("version 9"), "{e}");
        let e = SecurityFile::parse(r#"{"version": 1, "extra": 1}"#).expect_err("unknown");
        assert!(e.contains("extra"), "{e}");
        assert!(check_principal("").is_err());
        assert!(check_principal("a*").is_err());
        assert!(check_principal("a\nb").is_err());
    }
}
