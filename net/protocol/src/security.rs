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

/// What an AlterSecurity request changes.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[rkyv(derive(Debug))]
pub enum SecurityOp {
    /// Add user `name` with password `secret`.
    #[default]
    UserAdd,
    /// Remove user `name` and every token acting as it.
    UserRemove,
    /// Set user `name`'s password to `secret` (its sessions end).
    UserPasswd,
    /// Create a token acting as `name`, described by `description`; the response carries it.
    TokenCreate,
    /// Revoke the token whose id is `name`.
    TokenRevoke,
    /// Add the ACL entry (`name`, `resource`, `operation`, `deny`).
    AclAdd,
    /// Remove that ACL entry (every field must match).
    AclRemove,
}

/// 41 AlterSecurity: one change to the users, tokens or ACLs of the server (on a cluster:
/// of every node, through the controller; docs/security.md, "On a cluster"). Needs admin on
/// `cluster`. The secret is redacted from `Debug` output.
#[derive(Archive, Serialize, Deserialize, Clone, PartialEq, Eq, Default)]
pub struct AlterSecurityRequest {
    pub op: SecurityOp,
    /// The user, the token's principal (TokenCreate), the token id (TokenRevoke) or the ACL
    /// entry's principal. At most 255 bytes.
    pub name: String,
    /// UserAdd, UserPasswd: the password (at most [`SECRET_BYTES_MAX`] bytes); else empty.
    pub secret: String,
    /// TokenCreate: the token's description (at most 255 bytes).
    pub description: String,
    /// AclAdd, AclRemove: `topic:NAME`, `topic-prefix:P`, `group:NAME`, `group-prefix:P` or
    /// `cluster` (at most 255 bytes).
    pub resource: String,
    /// AclAdd, AclRemove: `produce`, `consume`, `create`, `delete`, `describe` or `admin`.
    pub operation: String,
    /// AclAdd, AclRemove: a deny entry.
    pub deny: bool,
}

impl std::fmt::Debug for AlterSecurityRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlterSecurityRequest")
            .field("op", &self.op)
            .field("name", &self.name)
            .field("secret", &"<redacted>")
            .field("description", &self.description)
            .field("resource", &self.resource)
            .field("operation", &self.operation)
            .field("deny", &self.deny)
            .finish()
    }
}

/// The answer to AlterSecurity, sent once the change applied on the node that was asked.
#[derive(Archive, Serialize, Deserialize, Clone, PartialEq, Eq, Default)]
pub struct AlterSecurityResponse {
    /// TokenCreate: the token (`slt_<id>_<secret>`), shown this once; else empty. Redacted
    /// from `Debug` output.
    pub token: String,
    /// What was done, for people (e.g. "user alice removed (1 tokens revoked)").
    pub message: String,
}

impl std::fmt::Debug for AlterSecurityResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlterSecurityResponse")
            .field("token", &parse_token(&self.token).map(|(id, _)| id))
            .field("message", &self.message)
            .finish()
    }
}

/// Prefix of every API token, so that leaked tokens are easy to scan for.
pub const TOKEN_PREFIX: &str = "slt_";

/// Bytes of a token's public id (hex-encoded in the token).
pub const TOKEN_ID_BYTES: usize = 6;
/// Bytes of a token's secret (hex-encoded in the token).
pub const TOKEN_SECRET_BYTES: usize = 32;

/// A token split into its public id and its secret. `None` if it is not shaped like one.
pub fn parse_token(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix(TOKEN_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let is_hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (is_hex(id, TOKEN_ID_BYTES * 2) && is_hex(secret, TOKEN_SECRET_BYTES * 2))
        .then_some((id, secret))
}

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
                let id = parse_token(t).map_or("<malformed>", |(id, _)| id);
                f.debug_struct("Token").field("id", &id).finish()
            }
        }
    }
}

impl Credentials {
    pub fn request(&self) -> AuthenticateRequest {
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
    use crate::{FrameBuf, FrameEncoder, Request};

    /// The worked example of docs/protocol.md, "40 Authenticate", byte for byte.
    #[test]
    fn authenticate_frame_is_pinned() {
        let r = Request::Authenticate(AuthenticateRequest {
            mechanism: AuthMechanism::Password,
            username: "alice".into(),
            secret: "pw".into(),
        });
        let mut out = FrameBuf::new();
        FrameEncoder::default()
            .request(&mut out, 1, 0, &r)
            .expect("encode");
        #[rustfmt::skip]
        let want: [u8; 48] = [
            0x14, 0, 0, 0,  0x28, 0,  0, 0,  0x01, 0, 0, 0,  0, 0,  0, 0,   // header: payload 20, api 40
            0x00, 0, 0, 0,                                                  // mechanism Password, pad
            b'a', b'l', b'i', b'c', b'e', 0xff, 0xff, 0xff,                 // username inline
            b'p', b'w', 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,                 // secret inline
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,                             // frame padding
        ];
        assert_eq!(&out[..], &want[..]);
    }
}
