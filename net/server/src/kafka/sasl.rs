//! SASL on the Kafka listener (docs/kafka.md, "Security"): SaslHandshake 0-1 and
//! SaslAuthenticate 0-1 with the PLAIN mechanism, checked against the same users file as the
//! native protocol (`session::ConnAuth`); ACLs map Kafka's operations onto Shardline's
//! (Produce -> produce, Fetch/ListOffsets/groups -> consume, Metadata -> describe,
//! CreateTopics -> create, DeleteTopics -> delete). With auth on, every request but
//! ApiVersions and SASL closes the connection until the client has authenticated.
//! After a SaslHandshake v0 the next frame is a bare SASL token (no Kafka header).

use bytes::Bytes;
use kafka_protocol::messages::{
    SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse,
};
use kafka_protocol::protocol::StrBytes;
use shardline_protocol::acl::{Operation, ResourceType};
use shardline_protocol::security::{AuthMechanism, AuthenticateRequest};

use super::KConn;

pub(crate) const TOPIC_AUTHORIZATION_FAILED: i16 = 29;
pub(crate) const GROUP_AUTHORIZATION_FAILED: i16 = 30;
pub(crate) const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
pub(crate) const SASL_AUTHENTICATION_FAILED: i16 = 58;

pub(crate) fn handshake(
    conn: &KConn,
    version: i16,
    req: &SaslHandshakeRequest,
) -> SaslHandshakeResponse {
    let mut r = SaslHandshakeResponse::default();
    r.mechanisms = vec![StrBytes::from_static_str("PLAIN")];
    if req.mechanism.as_str() != "PLAIN" {
        r.error_code = UNSUPPORTED_SASL_MECHANISM;
    } else if version == 0 {
        conn.raw_sasl_next.set(true);
    }
    r
}

/// `[authzid] NUL authcid NUL passwd` (RFC 4616).
fn plain(token: &[u8]) -> Option<(String, String)> {
    let mut parts = token.split(|b| *b == 0);
    let _authzid = parts.next()?;
    let user = std::str::from_utf8(parts.next()?).ok()?.to_string();
    let password = std::str::from_utf8(parts.next()?).ok()?.to_string();
    if parts.next().is_some() || user.is_empty() {
        return None;
    }
    Some((user, password))
}

/// Verifies a PLAIN token; `Err` carries the error text for the client (never the secret).
pub(crate) async fn verify(conn: &KConn, token: &[u8]) -> Result<(), String> {
    let Some((username, secret)) = plain(token) else {
        return Err("malformed PLAIN token".into());
    };
    let request = AuthenticateRequest {
        mechanism: AuthMechanism::Password,
        username,
        secret,
    };
    conn.auth
        .authenticate(request)
        .await
        .map(|_| ())
        .map_err(|e| e.message)
}

pub(crate) async fn authenticate(
    conn: &KConn,
    req: &SaslAuthenticateRequest,
) -> SaslAuthenticateResponse {
    let mut r = SaslAuthenticateResponse::default();
    r.auth_bytes = Bytes::new();
    if let Err(m) = verify(conn, &req.auth_bytes).await {
        r.error_code = SASL_AUTHENTICATION_FAILED;
        r.error_message = Some(StrBytes::from_string(m));
    }
    r
}

/// Whether the session may perform `operation` on topic `name` (true when auth is off).
pub(crate) fn topic_allowed(conn: &KConn, name: &str, operation: Operation) -> bool {
    conn.auth.allowed(ResourceType::Topic, name, operation)
}

/// Whether the session may use group `name` (true when auth is off).
pub(crate) fn group_allowed(conn: &KConn, name: &str) -> bool {
    conn.auth
        .allowed(ResourceType::Group, name, Operation::Consume)
}

/// Whether a request of this api may be served on this connection now.
pub(crate) fn admitted(conn: &KConn, api_key: i16) -> bool {
    const API_VERSIONS: i16 = 18;
    const SASL_HANDSHAKE: i16 = 17;
    const SASL_AUTHENTICATE: i16 = 36;
    !conn.auth.enabled()
        || conn.auth.has_session()
        || matches!(api_key, API_VERSIONS | SASL_HANDSHAKE | SASL_AUTHENTICATE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_tokens_parse() {
        assert_eq!(plain(b"\0alice\0pw"), Some(("alice".into(), "pw".into())));
        assert_eq!(
            plain(b"admin\0alice\0pw"),
            Some(("alice".into(), "pw".into()))
        );
        assert_eq!(plain(b"\0\0pw"), None);
        assert_eq!(plain(b"alice"), None);
        assert_eq!(plain(b"\0a\0b\0c"), None);
    }
}
