//! Delayed messages and per-message expiry (docs/semantics.md, "Delayed messages and expiry"):
//! a message's `delay-ms` and `ttl-ms` headers, read when the scan feeds it into the window.
//! Both count from the message's timestamp, so the times are a property of the message in the
//! log: a restart scans it again and derives the same times (nothing else to persist).

use super::state::Timing;
use super::{DELAY_HEADER, TTL_HEADER};
use crate::batch::HeadersRef;

/// The value of an ASCII-decimal header, if present and a number.
pub(super) fn header_number(headers: HeadersRef<'_>, name: &str) -> Option<u64> {
    headers
        .get(name)
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
}

/// The delivery times of a record with these headers and this timestamp.
pub(super) fn of_record(headers: HeadersRef<'_>, timestamp_ms: i64) -> Timing {
    Timing::from_message(
        timestamp_ms,
        header_number(headers.clone(), DELAY_HEADER),
        header_number(headers, TTL_HEADER),
    )
}

/// Whether a header is one of the timing headers. The dead-letter copy of a message goes
/// without them: in the dead-letter queue (itself a queue) the message must be visible at
/// once and not expire again, and a redrive sends it back as a fresh message.
pub(super) fn is_timing_header(key: &str) -> bool {
    key == DELAY_HEADER || key == TTL_HEADER
}
