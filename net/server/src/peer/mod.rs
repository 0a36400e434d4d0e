//! Node-to-node transport and cluster configuration (issue 14; docs/replication.md,
//! "Node-to-node transport"). Independent of Raft: messages are opaque `Bytes` tagged with a
//! group id, between node ids.
//!
//! - [`config`]: the `[cluster]` table / `--cluster` list, validated and resolved;
//! - [`stamp`]: the data directory's cluster stamp (`cluster.json`);
//! - [`frame`]: the sans-IO frame codec (fuzzed by net/fuzz `peer_frame_decode`);
//! - [`transport`]: the listener, the links, batching, TLS, reconnects.

pub mod config;
pub mod frame;
pub mod stamp;
pub mod transport;

pub use config::{ClusterConfig, ClusterSpec, PeerNode, PeerTlsConfig};
pub use transport::{InboundHandler, LinkStats, PeerError, PeerSettings, PeerTransport, SendError};
