//! Shardline's network layer, as four crates with one-way dependencies (docs/architecture.md):
//!
//! - [`protocol`] (`shardline-protocol`, net/protocol): the wire protocol as a sans-IO codec
//!   (docs/protocol.md): frames, typed [`protocol::Request`]/[`protocol::Response`] messages
//!   generated from one api table, version negotiation, credit rules, TLS settings. Depends on
//!   the record-batch format only, never on the engine.
//! - [`client`] (`shardline-client`, net/client): the Rust client, on top of the protocol; it
//!   compiles neither the engine nor glommio.
//! - [`server`] (`shardline-server`, net/server): listeners and connections around the engine,
//!   with [`auth`], TLS, quotas and `/metrics`.
//! - this crate (`shardline-net`): the `shardline` binary and its CLI ([`cli`]), and the
//!   re-exports above, so that `shardline_net::client::...` paths keep working.

pub mod cli;

pub use shardline_client as client;
pub use shardline_protocol as protocol;
pub use shardline_server as server;
pub use shardline_server::auth;

/// TLS settings shared by the server and the client (`shardline_protocol::tls`).
pub use shardline_protocol::tls;
