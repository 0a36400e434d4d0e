//! The seam for more than one wire protocol: a listener is an (address, [`WireProtocol`]) pair,
//! and the accept loop hands every accepted connection to its listener's protocol.
//!
//! Today there is one implementation, [`Native`]: Shardline's own protocol (`shardline-protocol`,
//! served by `conn.rs`). The Kafka front end (a later issue) will be a second one: its own
//! codec crate beside `net/protocol`, its own connection driver beside `conn.rs`, and one more
//! (address, protocol) pair in [`listeners`]; the engine, auth, quotas and metrics are shared.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use shardline_engine::Engine;
use shardline_engine::rt::net::TcpStream;

use crate::Shared;

/// One accepted TCP connection, with what serving it needs.
pub(crate) struct Accepted {
    pub(crate) stream: TcpStream,
    pub(crate) engine: Engine,
    pub(crate) shard: usize,
    pub(crate) shared: Arc<Shared>,
    /// Over `connections_max`: answer the first request with LIMIT_EXCEEDED and close.
    pub(crate) refuse: bool,
}

/// The future serving one connection on the shard that accepted it (not `Send`: it stays on
/// that shard).
pub(crate) type Serving = Pin<Box<dyn Future<Output = ()>>>;

/// A wire protocol the server speaks on a listener.
pub(crate) trait WireProtocol: Send + Sync {
    /// For logs.
    fn name(&self) -> &'static str;
    /// Serves `conn` until it closes (its own TLS, framing, dispatch and shutdown rules).
    fn serve(&self, conn: Accepted) -> Serving;
}

/// Shardline's own protocol (docs/protocol.md).
pub(crate) struct Native;

impl WireProtocol for Native {
    fn name(&self) -> &'static str {
        "shardline"
    }

    fn serve(&self, c: Accepted) -> Serving {
        Box::pin(crate::conn::serve(
            c.stream, c.engine, c.shard, c.shared, c.refuse,
        ))
    }
}

/// A listener: where it listens and which protocol it speaks.
pub(crate) struct Listener {
    pub(crate) addr: SocketAddr,
    pub(crate) protocol: Arc<dyn WireProtocol>,
}

/// The listeners of one shard: the shared address (`at`, SO_REUSEPORT across shards) and the
/// shard's direct address (port chosen by the kernel), both native today.
pub(crate) fn listeners(at: SocketAddr) -> Vec<Listener> {
    let native: Arc<dyn WireProtocol> = Arc::new(Native);
    vec![
        Listener {
            addr: at,
            protocol: native.clone(),
        },
        Listener {
            addr: SocketAddr::new(at.ip(), 0),
            protocol: native,
        },
    ]
}
