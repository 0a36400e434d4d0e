//! Shardline's network layer.
//!
//! - [`protocol`]: the wire protocol as a sans-IO codec (docs/protocol.md): frame header,
//!   incremental [`protocol::FrameDecoder`], [`protocol::FrameEncoder`], typed
//!   [`protocol::Request`]/[`protocol::Response`] messages, version negotiation and the credit
//!   rules of server push. No sockets, no clock, no engine internals: bytes in, typed values out.
//!
//! The server (one listener per shard), the Rust client and the `shardline` binary are built on
//! top of it as thin shells around the runtime (docs/architecture.md, "Runtime seam").

pub mod auth;
pub mod cli;
pub mod client;
pub mod protocol;
pub mod server;
pub mod tls;
