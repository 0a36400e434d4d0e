//! The seam for more than one wire protocol: a listener is an (address, [`WireProtocol`]) pair,
//! and the accept loop hands every accepted connection to its listener's protocol.
//!
//! Two implementations: [`Native`], Shardline's own protocol (`shardline-protocol`, served by
//! `conn.rs`), and [`Kafka`], Kafka's wire protocol (the `kafka-protocol` codec, served by
//! `kafka/`, docs/kafka.md) on the `[kafka] listen` address when one is configured. The engine,
//! TLS settings, quotas and metrics are shared.

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

/// Kafka's wire protocol (docs/kafka.md).
pub(crate) struct Kafka;

impl WireProtocol for Kafka {
    fn name(&self) -> &'static str {
        "kafka"
    }

    fn serve(&self, c: Accepted) -> Serving {
        Box::pin(crate::kafka::serve(c))
    }
}

/// A listener: where it listens and which protocol it speaks.
pub(crate) struct Listener {
    pub(crate) addr: SocketAddr,
    pub(crate) protocol: Arc<dyn WireProtocol>,
}

/// The listeners of one shard: the shared address (`at`, SO_REUSEPORT across shards), the
/// shard's direct address (port chosen by the kernel), both native, and the Kafka address
/// (SO_REUSEPORT across shards) when one is configured, always third.
pub(crate) fn listeners(at: SocketAddr, kafka: Option<SocketAddr>) -> Vec<Listener> {
    let mut all = native_listeners(at);
    if let Some(k) = kafka {
        all.push(Listener {
            addr: k,
            protocol: Arc::new(Kafka),
        });
    }
    all
}

fn native_listeners(at: SocketAddr) -> Vec<Listener> {
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
