//! Messages of the security apis, 40-49 (docs/protocol.md, "40 Authenticate";
//! docs/security.md). Kept apart from `messages.rs` and re-exported from it.

use rkyv::{Archive, Deserialize, Serialize};

/// Longest secret (password or API token) accepted in an Authenticate request.
pub const SECRET_BYTES_MAX: usize = 1024;

/// How an Authenticate request proves who it is.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[rkyv(derive(Debug))]
pub enum AuthMechanism {
    /// `username` and its password (sent inside TLS; the server keeps only an argon2id hash).
    #[default]
    Password,
    /// An API token (`slt_<id>_<secret>`) in `secret`; `username` is ignored (send it empty).
    Token,
}

/// 40 Authenticate. The secret is redacted from `Debug` output.
#[derive(Archive, Serialize, Deserialize, Clone, PartialEq, Eq, Default)]
pub struct AuthenticateRequest {
    pub mechanism: AuthMechanism,
    /// At most 255 bytes.
    pub username: String,
    /// At most [`SECRET_BYTES_MAX`] bytes.
    pub secret: String,
}

impl std::fmt::Debug for AuthenticateRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthenticateRequest")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .field("secret", &"<redacted>")
            .finish()
    }
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct AuthenticateResponse {
    /// The principal the connection now acts as (ACLs name it).
    pub principal: String,
}
