//! The client's error type.
//!
//! Every failure a caller can see is one [`ClientError`]: the server refused (with its code and
//! message), the connection could not be opened or was lost, a deadline passed, or the bytes the
//! server sent did not decode. Errors are `Clone` because one connection failure is reported to
//! every request and subscription that was waiting on it.

use std::time::Duration;

use crate::protocol::{WireError, code, code_is_retriable, code_name};

/// Why a client call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// No connection could be opened (nothing was sent, so retrying is safe).
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    /// The server answered with an error code (`protocol::code`), for the whole request or for
    /// the partition the call was about.
    #[error("{api}: {name} ({code}): {message}", name = code_name(*code))]
    Server {
        api: &'static str,
        code: u16,
        message: String,
    },
    /// The connection failed after the request may have been sent: its outcome is unknown.
    #[error("connection to {addr} lost: {reason}")]
    ConnectionLost { addr: String, reason: String },
    /// No answer within the deadline; the request may still take effect on the server.
    #[error("{api} timed out after {} ms", timeout.as_millis())]
    Timeout {
        api: &'static str,
        timeout: Duration,
    },
    /// Bytes that do not follow docs/protocol.md (either way), or a frame above a limit
    /// (`FrameTooLarge` from the encoder: nothing was written).
    #[error("protocol: {0}")]
    Wire(#[from] WireError),
    /// The server answered with a response of another api than the request's.
    #[error("{api}: unexpected {got} response")]
    UnexpectedResponse {
        api: &'static str,
        got: &'static str,
    },
    /// A record batch could not be built, or a received one did not validate.
    #[error("record batch: {0}")]
    Batch(String),
    /// A caller's argument is out of range (partition beyond the topic, empty subscription set...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A subscription ended: the topic was deleted, the server shut down, the connection failed.
    #[error("subscription to {topic}/{partition} ended: {reason}")]
    SubscriptionEnded {
        topic: String,
        partition: u32,
        reason: Box<ClientError>,
    },
    /// The producer or consumer was closed.
    #[error("{what} is closed")]
    Closed { what: &'static str },
}

impl ClientError {
    /// The server's error code, when the server gave one.
    pub fn code(&self) -> Option<u16> {
        match self {
            ClientError::Server { code, .. } => Some(*code),
            ClientError::SubscriptionEnded { reason, .. } => reason.code(),
            _ => None,
        }
    }

    /// Whether sending the same request again may succeed and cannot duplicate anything the
    /// first attempt did: the server said so (`code_is_retriable`: DISK_FULL, PARTITION_FAILED,
    /// BUSY, TIMEOUT), or no connection could be opened. A lost connection or a client-side
    /// timeout is *not* retriable: the request may have been applied.
    pub fn is_retriable(&self) -> bool {
        match self {
            ClientError::Server { code, .. } => code_is_retriable(*code),
            ClientError::Connect { .. } => true,
            _ => false,
        }
    }

    /// Whether cached metadata for the topic should be refreshed before the next attempt.
    pub fn is_stale_metadata(&self) -> bool {
        matches!(
            self.code(),
            Some(code::UNKNOWN_TOPIC | code::UNKNOWN_PARTITION | code::NOT_LEADER)
        )
    }

    pub(crate) fn server(api: &'static str, code: u16, message: impl Into<String>) -> Self {
        ClientError::Server {
            api,
            code,
            message: message.into(),
        }
    }

    pub(crate) fn batch(e: impl std::fmt::Display) -> Self {
        ClientError::Batch(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_server_retriable_codes_and_connect_failures_are_retried() {
        assert!(ClientError::server("Produce", code::BUSY, "").is_retriable());
        assert!(ClientError::server("Produce", code::DISK_FULL, "").is_retriable());
        assert!(!ClientError::server("Produce", code::CORRUPT_BATCH, "").is_retriable());
        let lost = ClientError::ConnectionLost {
            addr: "a".into(),
            reason: "b".into(),
        };
        assert!(!lost.is_retriable(), "a lost request may have been applied");
        let timeout = ClientError::Timeout {
            api: "Produce",
            timeout: Duration::from_secs(1),
        };
        assert!(!timeout.is_retriable());
    }

    #[test]
    fn server_errors_name_their_code() {
        let e = ClientError::server("DescribeTopic", code::UNKNOWN_TOPIC, "no topic 'x'");
        assert_eq!(
            e.to_string(),
            "DescribeTopic: UNKNOWN_TOPIC (3): no topic 'x'"
        );
        assert!(e.is_stale_metadata());
    }
}
