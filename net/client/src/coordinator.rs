//! Group coordinator routing on a cluster (issue 14; docs/replication.md, "Consumer groups
//! and work queues on a cluster").
//!
//! On a cluster a group's coordinator is the leader of its partition of the internal topic
//! `__offsets`: partition `crc32c(group) % partitions`, the engine's slot of the group. The
//! client asks DescribeCluster for `__offsets` (once, and again whenever a coordinator may
//! have moved), sends the group's calls to that partition's leader through a client of that
//! node, and on NOT_LEADER (the node does not coordinate the group now: another node leads, or
//! a new leader has not caught up), a lost or refused connection or a timeout, asks again and
//! retries after a short pause, for at most [`COORDINATOR_WAIT`] (an election takes 1-2 s).
//! A single server is asked over the bootstrap as before.

use std::time::{Duration, Instant};

use tracing::debug;

use super::cluster::leader_may_have_moved;
use super::error::ClientError;
use super::pool::Client;
use crate::protocol::{Request, Response};

/// The engine's internal topic of committed offsets.
const OFFSETS_TOPIC: &str = "__offsets";
/// How long a group call keeps looking for its coordinator.
pub(crate) const COORDINATOR_WAIT: Duration = Duration::from_secs(15);
const PAUSE_MIN: Duration = Duration::from_millis(50);
const PAUSE_MAX: Duration = Duration::from_millis(500);

/// The `__offsets` partition (coordinator slot) of `group` among `partitions`.
pub(crate) fn slot_of(group: &str, partitions: usize) -> usize {
    crc32c::crc32c(group.as_bytes()) as usize % partitions.max(1)
}

/// Waits `d` without blocking the caller's executor (the client has no timer of its own).
pub(crate) async fn pause(d: Duration) {
    let (tx, rx) = flume::bounded::<()>(1);
    let spawned = std::thread::Builder::new()
        .name("shardline-retry-pause".into())
        .spawn(move || {
            std::thread::sleep(d);
            let _ = tx.send(());
        });
    if spawned.is_ok() {
        let _ = rx.recv_async().await;
    }
}

impl Client {
    /// The client of `group`'s coordinator node; `None`: the bootstrap (a single server, the
    /// bootstrap's node coordinates, or no leader is known yet: the node answers NOT_LEADER).
    async fn coordinator_client(&self, group: &str) -> Result<Option<Client>, ClientError> {
        if self.is_node_only() {
            return Ok(None);
        }
        let (mut known, leaders) = self.cluster_routes().leaders(OFFSETS_TOPIC);
        if known.is_none() {
            // Asked without topics first: a single server needs no `__offsets` view (and a
            // principal may not be allowed to describe it).
            self.refresh_cluster(None).await?;
            known = self.cluster_routes().leaders(OFFSETS_TOPIC).0;
        }
        if known != Some(true) {
            return Ok(None);
        }
        let leaders = match leaders {
            Some(l) if !l.is_empty() => l,
            _ => {
                match self.refresh_cluster(Some(OFFSETS_TOPIC)).await {
                    Ok(()) => {}
                    Err(e) if leader_may_have_moved(&e) => return Err(e),
                    // Not allowed to describe `__offsets`: the bootstrap node answers, or
                    // NOT_LEADER (docs/replication.md).
                    Err(_) => return Ok(None),
                }
                match self.cluster_routes().leaders(OFFSETS_TOPIC) {
                    (Some(true), Some(l)) if !l.is_empty() => l,
                    _ => return Ok(None),
                }
            }
        };
        let leader = leaders[slot_of(group, leaders.len())];
        self.node_client(leader).await
    }

    /// Sends a call about `group` to its coordinator, following it across a cluster (see the
    /// module doc).
    pub(crate) async fn call_coordinator(
        &self,
        group: &str,
        request: Request,
    ) -> Result<Response, ClientError> {
        let deadline = Instant::now() + COORDINATOR_WAIT;
        let mut wait = PAUSE_MIN;
        loop {
            let r = match self.coordinator_client(group).await {
                Ok(Some(node)) => node.call_bootstrap(request.clone()).await,
                Ok(None) => self.call_bootstrap(request.clone()).await,
                Err(e) => Err(e),
            };
            match r {
                Err(e)
                    if leader_may_have_moved(&e)
                        && !self.is_node_only()
                        && self.cluster_routes().is_multi_node()
                        && Instant::now() + wait < deadline =>
                {
                    debug!(group, error = %e, "group coordinator moved; asking the cluster again");
                    self.cluster_routes().forget_topic(OFFSETS_TOPIC);
                    pause(wait).await;
                    wait = (wait * 2).min(PAUSE_MAX);
                }
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_the_engine() {
        // The engine's `Groups::slot_of`: crc32c(group) % partitions.
        assert_eq!(slot_of("g", 1), 0);
        assert_eq!(
            slot_of("billing", 3),
            crc32c::crc32c(b"billing") as usize % 3
        );
        assert_eq!(
            slot_of("x", 0),
            0,
            "no partitions known: slot 0, never a panic"
        );
    }
}
