//! Wire errors and the error-code table (docs/protocol.md, "Error codes").
//!
//! Codes `1..=99` belong to the engine: they are exactly `shardline_engine::Error::code()`, mirrored
//! here so that a client can name them without linking the engine (a test in the server crate,
//! `convert.rs`, checks the mirror).
//! Codes `100..=199` are the protocol's own; `200..=249` messaging semantics (groups, queues,
//! idempotence), `250..=269` operations, `270..=299` security. Codes are never renumbered, only
//! appended.

/// Stable numeric error codes carried in `ErrorResponse::code` and per-partition `error_code`.
pub mod code {
    /// Success (per-partition results only; never in an `ErrorResponse`).
    pub const NONE: u16 = 0;
    // --- 1..=99: the engine's `Error::code()` (1 and 2 unassigned) ---
    pub const UNKNOWN_TOPIC: u16 = 3;
    pub const TOPIC_EXISTS: u16 = 4;
    pub const UNKNOWN_PARTITION: u16 = 5;
    pub const INVALID_TOPIC_NAME: u16 = 6;
    pub const INVALID_ARGUMENT: u16 = 7;
    pub const CORRUPT_BATCH: u16 = 8;
    pub const BATCH_TOO_LARGE: u16 = 9;
    pub const OFFSET_OUT_OF_RANGE: u16 = 10;
    pub const DISK_FULL: u16 = 11;
    pub const STORAGE: u16 = 12;
    pub const PARTITION_FAILED: u16 = 13;
    pub const CORRUPT_LOG: u16 = 14;
    pub const METADATA: u16 = 15;
    pub const SHUTTING_DOWN: u16 = 16;
    pub const BUSY: u16 = 17;
    pub const RUNTIME: u16 = 18;
    pub const TIMEOUT: u16 = 19;
    /// A replica that is not (or no longer) its partition's leader (issue 14). A Produce
    /// result with this code carries the leader's node id in `base_offset` (0 = unknown) and
    /// its leader epoch in `last_offset`; DescribeCluster maps the node id to an address.
    pub const NOT_LEADER: u16 = 20;
    // --- 100..: protocol ---
    /// The frame's api key is not one this peer knows (or not one it accepts in this direction).
    pub const UNKNOWN_API: u16 = 100;
    /// The api key is known but not at this version (or was not negotiated).
    pub const UNSUPPORTED_VERSION: u16 = 101;
    /// The frame exceeds the receiver's `frame_bytes_max`; the connection is closed.
    pub const FRAME_TOO_LARGE: u16 = 102;
    /// The payload failed rkyv validation or a blob reference is out of bounds.
    pub const MALFORMED_PAYLOAD: u16 = 103;
    /// Framing rules broken (reserved bits, flags, padding) or requests out of protocol order.
    pub const PROTOCOL_VIOLATION: u16 = 104;
    /// A count or length is above a protocol limit (partitions per request, name bytes, ...).
    pub const LIMIT_EXCEEDED: u16 = 105;
    /// A request other than Handshake arrived before the Handshake.
    pub const HANDSHAKE_REQUIRED: u16 = 106;
    /// Unsubscribe named a subscription this connection does not have.
    pub const UNKNOWN_SUBSCRIPTION: u16 = 107;
    /// An unexpected failure inside the server (a bug); the message says more.
    pub const INTERNAL: u16 = 108;
    // --- 200..=224: messaging semantics, engine-raised (docs/semantics.md) ---
    /// An idempotent producer's batch does not follow its last sequence (a batch is missing).
    pub const OUT_OF_ORDER_SEQUENCE: u16 = 200;
    /// A newer epoch of the producer id exists: this instance must stop.
    pub const PRODUCER_FENCED: u16 = 201;
    /// The batch was written before, too long ago for its offsets to be known.
    pub const DUPLICATE_SEQUENCE: u16 = 202;
    /// The partition has no state for the producer and the sequence is not 0.
    pub const UNKNOWN_PRODUCER: u16 = 203;
    /// The member is not (or no longer) in the group: join again.
    pub const UNKNOWN_MEMBER: u16 = 204;
    /// The request's generation is stale for what it asks.
    pub const ILLEGAL_GENERATION: u16 = 205;
    /// The member committed a partition it neither owns nor is assigned.
    pub const NOT_ASSIGNED: u16 = 206;
    /// The group cannot do this (another topic, no such group, standalone commit refused...).
    pub const INVALID_GROUP: u16 = 207;
    // --- 225..=249: work queues ---
    /// The receipt's delivery is not in flight: its lease expired, it was nacked, or the message
    /// was delivered again since. Not retriable: the message is (or will be) redelivered.
    pub const LEASE_NOT_HELD: u16 = 225;
    /// The topic is not a work queue (engine `NotAQueue`).
    pub const NOT_A_QUEUE: u16 = 226;
    /// The message was already acked or dead-lettered.
    pub const MESSAGE_DONE: u16 = 227;
    /// The offset was never delivered.
    pub const UNKNOWN_MESSAGE: u16 = 228;
    // --- 250..=269: operations (docs/operations.md) ---
    /// ResetOffsets on a group that has live members: stop its consumers first (engine
    /// `GroupNotEmpty`).
    pub const GROUP_NOT_EMPTY: u16 = 250;

    // 270-299: security (docs/security.md).
    /// Wrong user or password, unknown or revoked token, or a session whose credentials were
    /// revoked: one code for all, so that a client cannot probe which names exist.
    pub const AUTHENTICATION_FAILED: u16 = 270;
    /// A request other than Handshake/Authenticate before a successful Authenticate.
    pub const AUTHENTICATION_REQUIRED: u16 = 271;
    /// The principal's ACLs do not allow this operation on this resource.
    pub const AUTHORIZATION_FAILED: u16 = 272;
    /// Too many failed Authenticate attempts from this address; retry later.
    pub const AUTHENTICATION_RATE_LIMITED: u16 = 273;
    /// A sealed batch of an encrypted topic does not open with the server's keys (wrong or
    /// missing key file): the read fails rather than return ciphertext.
    pub const DECRYPTION_FAILED: u16 = 274;
    /// The principal is over its produce or fetch byte rate; the message says how long to
    /// back off (`retry after N ms`).
    pub const QUOTA_EXCEEDED: u16 = 275;
}

/// Name of an error code, for logs and the CLI (`"UNKNOWN"` for codes this build does not know).
pub fn code_name(code: u16) -> &'static str {
    match code {
        code::NONE => "NONE",
        code::UNKNOWN_TOPIC => "UNKNOWN_TOPIC",
        code::TOPIC_EXISTS => "TOPIC_EXISTS",
        code::UNKNOWN_PARTITION => "UNKNOWN_PARTITION",
        code::INVALID_TOPIC_NAME => "INVALID_TOPIC_NAME",
        code::INVALID_ARGUMENT => "INVALID_ARGUMENT",
        code::CORRUPT_BATCH => "CORRUPT_BATCH",
        code::BATCH_TOO_LARGE => "BATCH_TOO_LARGE",
        code::OFFSET_OUT_OF_RANGE => "OFFSET_OUT_OF_RANGE",
        code::DISK_FULL => "DISK_FULL",
        code::STORAGE => "STORAGE",
        code::PARTITION_FAILED => "PARTITION_FAILED",
        code::CORRUPT_LOG => "CORRUPT_LOG",
        code::METADATA => "METADATA",
        code::SHUTTING_DOWN => "SHUTTING_DOWN",
        code::BUSY => "BUSY",
        code::RUNTIME => "RUNTIME",
        code::TIMEOUT => "TIMEOUT",
        code::NOT_LEADER => "NOT_LEADER",
        code::UNKNOWN_API => "UNKNOWN_API",
        code::UNSUPPORTED_VERSION => "UNSUPPORTED_VERSION",
        code::FRAME_TOO_LARGE => "FRAME_TOO_LARGE",
        code::MALFORMED_PAYLOAD => "MALFORMED_PAYLOAD",
        code::PROTOCOL_VIOLATION => "PROTOCOL_VIOLATION",
        code::LIMIT_EXCEEDED => "LIMIT_EXCEEDED",
        code::HANDSHAKE_REQUIRED => "HANDSHAKE_REQUIRED",
        code::UNKNOWN_SUBSCRIPTION => "UNKNOWN_SUBSCRIPTION",
        code::INTERNAL => "INTERNAL",
        code::OUT_OF_ORDER_SEQUENCE => "OUT_OF_ORDER_SEQUENCE",
        code::PRODUCER_FENCED => "PRODUCER_FENCED",
        code::DUPLICATE_SEQUENCE => "DUPLICATE_SEQUENCE",
        code::UNKNOWN_PRODUCER => "UNKNOWN_PRODUCER",
        code::UNKNOWN_MEMBER => "UNKNOWN_MEMBER",
        code::ILLEGAL_GENERATION => "ILLEGAL_GENERATION",
        code::NOT_ASSIGNED => "NOT_ASSIGNED",
        code::INVALID_GROUP => "INVALID_GROUP",
        code::LEASE_NOT_HELD => "LEASE_NOT_HELD",
        code::NOT_A_QUEUE => "NOT_A_QUEUE",
        code::MESSAGE_DONE => "MESSAGE_DONE",
        code::UNKNOWN_MESSAGE => "UNKNOWN_MESSAGE",
        code::GROUP_NOT_EMPTY => "GROUP_NOT_EMPTY",
        code::AUTHENTICATION_FAILED => "AUTHENTICATION_FAILED",
        code::AUTHENTICATION_REQUIRED => "AUTHENTICATION_REQUIRED",
        code::AUTHORIZATION_FAILED => "AUTHORIZATION_FAILED",
        code::AUTHENTICATION_RATE_LIMITED => "AUTHENTICATION_RATE_LIMITED",
        code::DECRYPTION_FAILED => "DECRYPTION_FAILED",
        code::QUOTA_EXCEEDED => "QUOTA_EXCEEDED",
        _ => "UNKNOWN",
    }
}

/// Whether a client may retry the same request later and expect success. Mirrors the engine's
/// `Error::is_retriable` for its codes.
pub fn code_is_retriable(code: u16) -> bool {
    matches!(
        code,
        code::DISK_FULL
            | code::BUSY
            | code::TIMEOUT
            | code::NOT_LEADER
            | code::PARTITION_FAILED
            | code::AUTHENTICATION_RATE_LIMITED
            | code::QUOTA_EXCEEDED
    )
}

/// Everything that can go wrong turning bytes into frames and messages, or messages into frames.
/// Every variant carries the offending value. [`WireError::is_fatal`] says whether the byte
/// stream is still framed (answer and go on) or lost (answer if possible, then close).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The header announces a frame above the receiver's limit. Raised as soon as the 16 header
    /// bytes are in, before any byte of the body is buffered or any memory reserved for it.
    #[error(
        "frame of {frame_bytes} bytes exceeds the limit of {frame_bytes_max} (correlation id {correlation_id})"
    )]
    FrameTooLarge {
        frame_bytes: u64,
        frame_bytes_max: u32,
        correlation_id: u32,
        api_key: u16,
    },
    /// The header's reserved field is not zero: not a Shardline peer, or the stream lost sync.
    #[error("reserved header field is {value:#06x}, not 0 (correlation id {correlation_id})")]
    ReservedNotZero { value: u16, correlation_id: u32 },
    /// Flag bits outside `flags::KNOWN`, or a combination no frame kind has.
    #[error("invalid frame flags {flags:#06x} (correlation id {correlation_id})")]
    InvalidFlags { flags: u16, correlation_id: u32 },
    /// A byte of the zero padding after the payload is not zero.
    #[error("frame padding is not zero (correlation id {correlation_id})")]
    PaddingNotZero { correlation_id: u32 },
    /// A frame of a kind this side never receives (a response sent to a server, a request to a
    /// client), or a push whose header and payload disagree.
    #[error("unexpected {kind} frame: {reason}")]
    UnexpectedFrame {
        kind: &'static str,
        reason: &'static str,
    },
    #[error("unknown api key {api_key}")]
    UnknownApi { api_key: u16 },
    #[error("api {api_key} version {version} is not supported (supported {min}..={max})")]
    UnsupportedVersion {
        api_key: u16,
        version: u16,
        min: u16,
        max: u16,
    },
    /// rkyv validation (bytecheck) refused the payload.
    #[error("malformed payload for api {api_key}: {reason}")]
    Malformed { api_key: u16, reason: String },
    /// A blob reference (raw batch bytes) lies outside the payload's data section or is not
    /// 16-aligned.
    #[error("blob [{offset}, +{length}) outside data section of {data_bytes} bytes or unaligned")]
    BlobOutOfBounds {
        offset: u32,
        length: u32,
        data_bytes: u32,
    },
    #[error("{what} is {value}, above the limit of {max}")]
    LimitExceeded {
        what: &'static str,
        value: u64,
        max: u64,
    },
    /// The encoder could not build the frame (a value above a format limit).
    #[error("cannot encode: {reason}")]
    Encode { reason: String },
    /// Decoder or encoder configured with values out of range.
    #[error("invalid protocol configuration: {reason}")]
    InvalidConfig { reason: String },
}

impl WireError {
    /// The code to put in the `ErrorResponse` that reports this error to the peer.
    pub fn code(&self) -> u16 {
        match self {
            WireError::FrameTooLarge { .. } => code::FRAME_TOO_LARGE,
            WireError::ReservedNotZero { .. }
            | WireError::InvalidFlags { .. }
            | WireError::PaddingNotZero { .. }
            | WireError::UnexpectedFrame { .. } => code::PROTOCOL_VIOLATION,
            WireError::UnknownApi { .. } => code::UNKNOWN_API,
            WireError::UnsupportedVersion { .. } => code::UNSUPPORTED_VERSION,
            WireError::Malformed { .. } | WireError::BlobOutOfBounds { .. } => {
                code::MALFORMED_PAYLOAD
            }
            WireError::LimitExceeded { .. } => code::LIMIT_EXCEEDED,
            WireError::Encode { .. } | WireError::InvalidConfig { .. } => code::INTERNAL,
        }
    }

    /// True when framing is lost (the decoder stays failed): the receiver reports the error if it
    /// can and closes the connection. False for errors inside one well-framed payload: the
    /// receiver answers that frame with an error and carries on.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            WireError::FrameTooLarge { .. }
                | WireError::ReservedNotZero { .. }
                | WireError::InvalidFlags { .. }
                | WireError::PaddingNotZero { .. }
                | WireError::UnexpectedFrame { .. }
        )
    }

    /// The correlation id of the frame a framing error was found in, when the header was read.
    pub fn correlation_id(&self) -> Option<u32> {
        match self {
            WireError::FrameTooLarge { correlation_id, .. }
            | WireError::ReservedNotZero { correlation_id, .. }
            | WireError::InvalidFlags { correlation_id, .. }
            | WireError::PaddingNotZero { correlation_id } => Some(*correlation_id),
            _ => None,
        }
    }
}

pub(crate) fn limit(what: &'static str, value: usize, max: usize) -> Result<(), WireError> {
    if value > max {
        return Err(WireError::LimitExceeded {
            what,
            value: value as u64,
            max: max as u64,
        });
    }
    Ok(())
}
