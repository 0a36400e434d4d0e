//! Authentication and authorization data, independent of sockets (docs/security.md):
//! the security file with users, API tokens and ACLs ([`store`]), ACL evaluation ([`acl`]),
//! and the credentials a client presents ([`Credentials`], defined in the protocol crate). The
//! server's use of them (sessions, the per-connection ACL cache, reloading, rate limits) is
//! `session.rs`; changes while the server runs (AlterSecurity, on a cluster through the
//! controller) are [`replicated`].

pub mod acl;
pub mod replicated;
pub mod store;

pub use acl::{AclEntry, Operation, PatternType, Permission, ResourceType, authorize};
pub use shardline_protocol::Credentials;
pub use store::{SecurityFile, StoreError};

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
