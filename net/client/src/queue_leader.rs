//! Work-queue calls follow the queue's leader on a cluster (issue 14 item 5;
//! docs/replication.md, "Work queues on a cluster").
//!
//! A replicated queue partition is served by its partition's leader (the server moves the
//! queue's ack log leadership there). The client sends each queue call to that leader, as it
//! does produces ([`Client::connection_for`]), and on NOT_LEADER (the whole answer, or every
//! receipt's code of a lease answer), a lost or refused connection or a timeout, forgets where
//! the leader is, asks the cluster again and retries after 50 ms doubling to 500 ms, for at
//! most [`COORDINATOR_WAIT`] (an election takes 1-2 s). A single server is asked once, as
//! before.
//!
//! Retrying is safe for every queue call: a receive whose answer was lost leaves leases that
//! expire (the messages come back: at least once); an ack, nack or visibility change sent
//! again answers per receipt (`MESSAGE_DONE` or `LEASE_NOT_HELD` when the first one passed).

use std::time::{Duration, Instant};

use tracing::debug;

use super::cluster::leader_may_have_moved;
use super::coordinator::{COORDINATOR_WAIT, pause};
use super::error::ClientError;
use super::pool::Client;
use crate::protocol::{Request, Response, code};

const PAUSE_MIN: Duration = Duration::from_millis(50);
const PAUSE_MAX: Duration = Duration::from_millis(500);

/// Whether a lease answer (ack, nack, visibility) says the partition is led elsewhere: every
/// receipt answered NOT_LEADER.
pub(crate) fn lease_answer_moved(r: &Response) -> bool {
    let codes = match r {
        Response::QueueAck(l) | Response::QueueNack(l) | Response::QueueChangeVisibility(l) => {
            &l.error_codes
        }
        _ => return false,
    };
    !codes.is_empty() && codes.iter().all(|&c| c == code::NOT_LEADER)
}

impl Client {
    /// Sends a queue call about `topic`/`partition` to the partition's leader, following it
    /// across a cluster (see the module doc). `timeout`: of one attempt.
    pub(crate) async fn call_queue_leader(
        &self,
        topic: &str,
        partition: u32,
        request: &Request,
        timeout: Duration,
    ) -> Result<Response, ClientError> {
        let deadline = Instant::now() + COORDINATOR_WAIT;
        let mut wait = PAUSE_MIN;
        loop {
            let r = match self.connection_for(topic, partition).await {
                Ok(c) => c.call(request, timeout).await,
                Err(e) => Err(e),
            };
            let r = self.note_stale(topic, r);
            let moved = match &r {
                Ok(resp) => lease_answer_moved(resp),
                Err(e) => leader_may_have_moved(e),
            };
            let follow = !self.is_node_only() && self.cluster_routes().is_multi_node();
            if !(moved && follow && Instant::now() + wait < deadline) {
                return r;
            }
            debug!(
                topic,
                partition, "queue leader moved; asking the cluster again"
            );
            self.invalidate(topic);
            pause(wait).await;
            wait = (wait * 2).min(PAUSE_MAX);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::queue::QueueLeaseResponse;

    #[test]
    fn only_an_all_not_leader_lease_answer_is_a_move() {
        let lease = |codes: Vec<u16>| Response::QueueAck(QueueLeaseResponse { error_codes: codes });
        assert!(lease_answer_moved(&lease(vec![code::NOT_LEADER; 3])));
        assert!(!lease_answer_moved(&lease(vec![
            code::NOT_LEADER,
            code::NONE
        ])));
        assert!(!lease_answer_moved(&lease(Vec::new())));
        assert!(!lease_answer_moved(&lease(vec![code::NONE])));
    }
}
