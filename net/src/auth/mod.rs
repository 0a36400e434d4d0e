//! Authentication and authorization data, independent of sockets (docs/security.md):
//! the security file with users, API tokens and ACLs ([`store`]), ACL evaluation ([`acl`]),
//! and the credentials a client presents ([`Credentials`]). The server's use of them (sessions,
//! the per-connection ACL cache, reloading, rate limits) is `server/auth.rs`.

pub mod acl;
pub mod store;

pub use acl::{AclEntry, Operation, PatternType, Permission, ResourceType, authorize};
pub use store::{SecurityFile, StoreError};

/// What a client sends in Authenticate after the Handshake. `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    Password {
        username: String,
        password: String,
    },
    /// An API token made by `shardline token create`.
    Token(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Password { username, .. } => f
                .debug_struct("Password")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
            Credentials::Token(t) => {
                let id = store::parse_token(t).map_or("<malformed>", |(id, _)| id);
                f.debug_struct("Token").field("id", &id).finish()
            }
        }
    }
}

impl Credentials {
    pub(crate) fn request(&self) -> crate::protocol::AuthenticateRequest {
        use crate::protocol::{AuthMechanism, AuthenticateRequest};
        match self {
            Credentials::Password { username, password } => AuthenticateRequest {
                mechanism: AuthMechanism::Password,
                username: username.clone(),
                secret: password.clone(),
            },
            Credentials::Token(t) => AuthenticateRequest {
                mechanism: AuthMechanism::Token,
                username: String::new(),
                secret: t.clone(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_secrets() {
        let p = Credentials::Password {
            username: "alice".into(),
            password: "hunter2".into(),
        };
        let text = format!("{p:?} {:?}", p.request());
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("alice"));
        let mut f = SecurityFile::default();
        let (id, token) = f.create_token("svc", "").expect("token");
        let t = Credentials::Token(token.clone());
        let text = format!("{t:?} {:?}", t.request());
        assert!(!text.contains(&token[token.len() - 16..]), "{text}");
        assert!(text.contains(&id), "{text}");
    }
}
