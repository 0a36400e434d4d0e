//! The Shardline wire protocol, sans-IO (docs/protocol.md is the specification; section names
//! below refer to it).
//!
//! - [`frame`]: the 16-byte frame header and the incremental [`FrameDecoder`] ("Frames");
//! - [`messages`]: request and response bodies of every api ("Messages");
//! - [`codec`]: payload layout (data section of raw batches + rkyv archive), [`Request`],
//!   [`Response`], [`ServerMessage`] decoding, and the [`FrameEncoder`] ("Payloads");
//! - [`api`]: **the api table** (one entry per api: key, versions, request and response types,
//!   permissions), from which [`ApiKey`], [`Request`], [`Response`] and their dispatch are
//!   generated; version negotiation ("Api keys", "Version negotiation"). Adding an api:
//!   net/protocol/README.md;
//! - [`flow`]: subscription credits ("Flow control");
//! - [`error`]: [`WireError`] and the error-code table ("Error codes");
//! - [`tls`]: TLS settings shared by the server and the client;
//! - [`acl`]: the resource types and operations the api table names (docs/security.md).
//!
//! This crate depends on the record-batch format (`shardline-format`) and plain crates only:
//! no engine, no runtime, no sockets. Conversions to and from the engine's types live in the
//! server (`shardline_server::convert`).
//!
//! Typical server loop, per connection:
//! ```text
//! let mut decoder = FrameDecoder::new(DecoderConfig::default())?;
//! loop {
//!     let n = socket.read(decoder.read_buf()).await?;   // runtime shell
//!     decoder.filled(n);
//!     while let Some(frame) = decoder.next_frame_owned()? {   // Err: fatal, answer and close
//!         match Request::decode_owned_frame(&frame) {
//!             Ok(request) => dispatch(frame.header, request),
//!             Err(e) => encoder.error(&mut out, frame.header.correlation_id,
//!                                     frame.header.api_key, frame.header.api_version,
//!                                     &ErrorResponse::from_wire(&e))?,
//!         };
//!     }
//! }
//! ```

pub mod acl;
pub mod api;
pub mod codec;
pub mod error;
pub mod flow;
pub mod frame;
pub mod membership;
pub mod messages;
pub mod nodes;
pub mod ops;
pub mod queue;
pub mod security;
pub mod semantics;
pub mod tls;

#[cfg(test)]
mod tests;

pub use api::{API_COUNT, API_KEY_LIMIT, ApiKey, NegotiatedVersions, negotiate, supported_apis};
pub use codec::{FrameEncoder, FrameParts, Request, Response, ServerMessage};
pub use error::{WireError, code, code_is_retriable, code_name};
pub use flow::{ConsumerWindow, CreditWindow, PushCost};
pub use frame::{
    DecoderConfig, FRAME_HEADER_BYTES, Frame, FrameDecoder, FrameHeader, FrameKind, OwnedFrame,
    flags,
};
pub use membership::*;
pub use messages::*;
pub use nodes::*;
pub use ops::*;
pub use security::Credentials;
pub use semantics::*;

/// The buffer frames are encoded into (and the decoder reads into): 16-aligned, reusable.
/// Re-exported so that users need not depend on rkyv (and risk its format features).
pub type FrameBuf = rkyv::util::AlignedVec<FRAME_ALIGN>;

/// Frames, payloads and blobs are aligned to this many bytes.
pub const FRAME_ALIGN: usize = 16;
/// Default largest frame (header + payload + padding) a peer accepts.
pub const FRAME_BYTES_MAX_DEFAULT: u32 = 16 << 20;
/// Largest value `frame_bytes_max` may be configured to (fits `u32` with room for padding).
pub const FRAME_BYTES_MAX_LIMIT: u32 = 1 << 30;
/// Smallest value `frame_bytes_max` may be configured to: every control message must fit.
pub const FRAME_BYTES_MIN_LIMIT: u32 = 64 << 10;
/// Topics in one Metadata, Produce, Fetch or ListOffsets request.
pub const TOPICS_PER_REQUEST_MAX: usize = 1024;
/// Partitions, summed over topics, in one Produce, Fetch or ListOffsets request.
pub const PARTITIONS_PER_REQUEST_MAX: usize = 4096;
/// Bytes of a name in a request: topic names (the engine allows 200), client id.
pub const NAME_BYTES_MAX: usize = 255;
/// Bytes of an error message; longer ones are cut by the sender.
pub const MESSAGE_BYTES_MAX: usize = 4096;
/// Entries in a Handshake request's api list.
pub const HANDSHAKE_APIS_MAX: usize = 256;
