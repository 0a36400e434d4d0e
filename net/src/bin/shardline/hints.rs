//! Errors a person can act on: the client errors people hit, said in terms of the command line
//! (which flag to pass, which ACL to grant, which limit was hit) instead of the protocol.

use anyhow::anyhow;
use shardline_net::client::{ClientError, QueueReceipt, code};

/// What the command was about, for the message.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Subject<'a> {
    pub(crate) topic: Option<&'a str>,
}

/// Turns a client error into a message that says what to do.
pub(crate) fn explain(e: ClientError, subject: Subject<'_>) -> anyhow::Error {
    let topic = subject.topic.unwrap_or("TOPIC");
    let server_message = match &e {
        ClientError::Server { message, .. } => message.clone(),
        _ => String::new(),
    };
    match e.code() {
        Some(code::UNKNOWN_TOPIC) => anyhow!(
            "unknown topic '{topic}': create it with 'shardline topic create {topic}' \
             (or 'shardline queue create {topic}' for a work queue); 'shardline topic list' \
             shows the topics"
        ),
        Some(code::TOPIC_EXISTS) => {
            anyhow!("topic '{topic}' already exists ('shardline topic describe {topic}' shows it)")
        }
        Some(code::UNKNOWN_PARTITION) => anyhow!(
            "topic '{topic}' has no such partition ('shardline topic describe {topic}' shows \
             its partitions)"
        ),
        Some(code::NOT_A_QUEUE) => anyhow!(
            "topic '{topic}' is not a work queue: queue commands need a topic made with \
             'shardline queue create'; read a plain topic with 'shardline consume {topic}'"
        ),
        Some(code::AUTHENTICATION_REQUIRED) => anyhow!(
            "the server requires authentication: pass --token-file FILE (or set \
             $SHARDLINE_TOKEN), or --user NAME with --password-file FILE (or \
             $SHARDLINE_PASSWORD); docs/security.md"
        ),
        Some(code::AUTHENTICATION_FAILED) => anyhow!(
            "authentication failed: check the token (--token-file, $SHARDLINE_TOKEN) or the \
             user and password (--user, --password-file, $SHARDLINE_PASSWORD); the token may \
             have been revoked"
        ),
        Some(code::AUTHENTICATION_RATE_LIMITED) => anyhow!(
            "too many failed authentications from this address: wait a little, then retry \
             with the right credentials"
        ),
        Some(code::AUTHORIZATION_FAILED) => anyhow!(
            "not allowed: {server_message}; an admin grants it with 'shardline acl add \
             --principal NAME --resource topic:TOPIC --operation OPERATION' (every command \
             also needs describe on its topic; consumer groups need consume and describe on \
             group:GROUP); docs/security.md"
        ),
        Some(code::QUOTA_EXCEEDED) => {
            anyhow!("over quota: {server_message} (quotas are set in the server's [server.quotas])")
        }
        Some(code::LIMIT_EXCEEDED) => anyhow!(
            "a server limit was hit: {server_message} (limits are set in the server's \
             configuration; docs/operations.md)"
        ),
        Some(code::BATCH_TOO_LARGE) => anyhow!(
            "a message is larger than the server accepts ({server_message}); split it, or \
             raise the server's limit (docs/operations.md)"
        ),
        Some(code::DISK_FULL) => anyhow!(
            "the server's disk is full: free space or lower retention ('shardline topic \
             alter {topic} --retention-bytes B')"
        ),
        _ => match &e {
            ClientError::Connect { addr, reason } => anyhow!(
                "cannot connect to {addr} ({reason}): is 'shardline serve' running there? \
                 Pass --addr HOST:PORT (or set $SHARDLINE_ADDR), and --wait 10s to wait for \
                 a server that is starting"
            ),
            _ => e.into(),
        },
    }
}

/// Per-receipt answers of ack, nack and change-visibility: `Ok` when all are `NONE`, else one
/// message naming each failed delivery and what happened to it.
pub(crate) fn check_receipts(receipts: &[QueueReceipt], codes: &[u16]) -> anyhow::Result<()> {
    let bad: Vec<String> = codes
        .iter()
        .enumerate()
        .filter(|(_, c)| **c != code::NONE)
        .map(|(i, c)| {
            let name = receipts.get(i).map_or_else(
                || format!("receipt {i}"),
                |r| format!("{}:{}:{}", r.partition, r.offset, r.attempt),
            );
            format!("{name}: {}", receipt_problem(*c))
        })
        .collect();
    if bad.is_empty() {
        Ok(())
    } else {
        Err(anyhow!("{}", bad.join("; ")))
    }
}

fn receipt_problem(c: u16) -> String {
    match c {
        code::LEASE_NOT_HELD => "this delivery no longer holds the message (its visibility \
             timeout passed, it was nacked, or it was delivered again); the message is or will \
             be redelivered, so receive it again and use the new receipt"
            .into(),
        code::MESSAGE_DONE => "the message was already acked or dead-lettered".into(),
        code::UNKNOWN_MESSAGE => {
            "no such delivery: check PARTITION:OFFSET:ATTEMPT against what 'queue receive \
             --no-ack' printed"
                .into()
        }
        other => shardline_net::client::code_name(other).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipt_errors_name_the_delivery_and_what_happened() {
        let r = [
            QueueReceipt {
                partition: 0,
                offset: 5,
                attempt: 1,
            },
            QueueReceipt {
                partition: 1,
                offset: 9,
                attempt: 2,
            },
        ];
        assert!(check_receipts(&r, &[code::NONE, code::NONE]).is_ok());
        let e = check_receipts(&r, &[code::NONE, code::LEASE_NOT_HELD])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("1:9:2: "), "{e}");
        assert!(e.contains("visibility timeout"), "{e}");
        assert!(!e.contains("LEASE_NOT_HELD"), "{e}");
    }

    #[test]
    fn authentication_errors_name_the_flags() {
        let e = ClientError::Server {
            api: "Produce",
            code: code::AUTHENTICATION_REQUIRED,
            message: "authenticate first (Authenticate, api 40)".into(),
        };
        let text = explain(e, Subject::default()).to_string();
        assert!(text.contains("--token-file"), "{text}");
        assert!(!text.contains("api 40"), "{text}");
    }
}
