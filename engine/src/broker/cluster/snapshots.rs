//! The host's side of snapshots (docs/replication.md, "Snapshots"): a leader answers its
//! followers' chunk requests from its partition log; a follower appends the chunks it gets to
//! its partition log (as committed batches) and installs the snapshot once its log holds
//! everything below the snapshot's end offset durably; a follower whose log ends below the
//! leader's log start (retention) restarts its log there first. Sealed batches of encrypted
//! partitions are opened by the leader and sent as plaintext (docs/security.md). Also the
//! rotation of `raft-log` files.

use std::collections::HashMap;

use bytes::Bytes;

use super::{Binding, Host, Node};
use crate::api::PartitionKey;
use crate::batch::{BatchHeader, ValidatedBatch, flags, split_batches};
use crate::replication::{Chunk, ChunkRequest, GroupId, SNAPSHOT_CHUNK_BYTES, Transfer};

/// `raft-log` is rotated once it holds more than this (and twice the entries memory retains).
pub(super) const RAFT_LOG_ROTATE_BYTES: u64 = 1 << 20;
/// Records one chunk carries at most.
const CHUNK_RECORDS_MAX: usize = 1 << 16;

impl Host {
    /// Serves and runs this round's snapshot transfers (every group bound to a partition).
    pub(super) async fn snapshots(&self, node: &mut Node, bindings: &HashMap<GroupId, Binding>) {
        // A field check per group; the rest only where a transfer runs.
        let busy: Vec<GroupId> = node
            .groups()
            .filter(|r| r.has_snapshot_work())
            .map(crate::replication::ReplicatedPartition::group)
            .collect();
        for g in &busy {
            let Some(Binding::Partition(key)) = bindings.get(g) else {
                continue;
            };
            let Some(r) = node.get_mut(*g) else { continue };
            let requests = r.take_chunk_requests();
            for req in requests {
                let (log_start, batches) = self.read_chunk(key, &req).await;
                node.with_outbox(*g, |r, out| r.send_chunk(&req, log_start, &batches, out));
            }
            let Some(t) = node.get(*g).and_then(|r| r.transfer()) else {
                continue;
            };
            let chunks = node
                .get_mut(*g)
                .map(crate::replication::ReplicatedPartition::take_chunks)
                .unwrap_or_default();
            if !self.restart_for_chunks(node, *g, key, t, &chunks).await {
                continue;
            }
            self.run_transfer(node, *g, key, t, chunks);
        }
    }

    /// The leader's batches for a chunk request: from the offset asked (or the log start),
    /// below the snapshot's end, at most [`SNAPSHOT_CHUNK_BYTES`].
    async fn read_chunk(&self, key: &PartitionKey, req: &ChunkRequest) -> (u64, Vec<(u64, Bytes)>) {
        let Ok(p) = self.shard.partition(key) else {
            return (0, Vec::new());
        };
        let log_start = p.watermarks().log_start;
        let from = req.from_offset.max(log_start);
        let mut out = Vec::new();
        if from >= req.end_offset {
            return (log_start, out);
        }
        let sealed_with = p.encryption();
        let read = match p.read(from, SNAPSHOT_CHUNK_BYTES, CHUNK_RECORDS_MAX).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(topic = %key.0, partition = key.1, error = %e, "snapshot chunk not read");
                return (log_start, out);
            }
        };
        'chunks: for c in &read.chunks {
            let Ok(batches) = split_batches(c) else { break };
            for b in batches {
                let Ok(h) = BatchHeader::parse(b) else {
                    break 'chunks;
                };
                if h.next_offset() <= from {
                    continue;
                }
                if h.base_offset >= req.end_offset {
                    break 'chunks;
                }
                // Sealed at rest with this node's keys: sent as plaintext over the peer link,
                // as Raft entries are; the follower seals it with its own (docs/security.md).
                let batch = match &sealed_with {
                    Some(enc) if h.flags & flags::ENCRYPTED != 0 => {
                        match enc.keyring.open(b, enc.topic_id, enc.partition) {
                            Ok(plain) => plain,
                            Err(e) => {
                                tracing::warn!(topic = %key.0, partition = key.1, offset = h.base_offset, error = %e, "snapshot batch does not open");
                                break 'chunks;
                            }
                        }
                    }
                    _ => c.slice_ref(b),
                };
                out.push((h.base_offset, batch));
            }
        }
        (log_start, out)
    }

    /// A chunk whose leader log start is above the partition log's end means the leader's
    /// retention deleted what this log lacks: the log restarts empty at the leader's start
    /// (docs/replication.md, "Snapshots"), and the transfer continues from there. `false`:
    /// not now (the chunks are dropped and asked for again).
    async fn restart_for_chunks(
        &self,
        node: &mut Node,
        g: GroupId,
        key: &PartitionKey,
        t: Transfer,
        chunks: &[Chunk],
    ) -> bool {
        let Ok(p) = self.shard.partition(key) else {
            return false;
        };
        let next = p.watermarks().next_offset;
        let Some(start) = chunks
            .iter()
            .filter(|c| crate::replication::snapshot_chunk_is_dense(c))
            .map(|c| c.log_start)
            .filter(|s| *s > next)
            .max()
        else {
            return true;
        };
        if start > t.end_offset {
            // Retention passed the snapshot's end: a newer snapshot is needed (the leader
            // sends one once this transfer stalls).
            tracing::warn!(topic = %key.0, partition = key.1, leader_log_start = start, snapshot_end = t.end_offset, "the leader's log starts after the snapshot; waiting for a newer one");
            if let Some(r) = node.get_mut(g) {
                r.abandon_transfer();
            }
            return false;
        }
        if node.get(g).is_some_and(|r| r.high_watermark() > next) {
            // Committed batches this log has not applied yet: they go first.
            return false;
        }
        tracing::info!(topic = %key.0, partition = key.1, log_end = next, leader_log_start = start, "the leader's retention deleted what this log lacks: restarting the partition log at the leader's start");
        match self.shard.restart_partition(key, start).await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(topic = %key.0, partition = key.1, error = %e, "partition log not restarted; asking again");
                false
            }
        }
    }

    /// A follower's transfer: appends the chunks' batches at the partition log's end; installs
    /// once the log holds the snapshot durably; else asks for the next chunk.
    fn run_transfer(
        &self,
        node: &mut Node,
        g: GroupId,
        key: &PartitionKey,
        t: Transfer,
        chunks: Vec<Chunk>,
    ) {
        let Ok(p) = self.shard.partition(key) else {
            return;
        };
        let mut next = p.watermarks().next_offset;
        for c in chunks {
            if !crate::replication::snapshot_chunk_is_dense(&c) {
                continue;
            }
            if c.log_start > next {
                // Not restarted at it (`restart_for_chunks` waits): asked again.
                continue;
            }
            for (base, data) in c.batches {
                if base < next {
                    continue;
                }
                if base > next {
                    break;
                }
                let applied = ValidatedBatch::validate(data)
                    .map_err(crate::error::Error::from)
                    .and_then(|b| self.shard.apply_committed(key, b));
                match applied {
                    Ok(a) if a.base_offset == base => next = a.last_offset + 1,
                    Ok(a) => {
                        // Never happens: the log's end was `base`.
                        tracing::error!(topic = %key.0, partition = key.1, base, applied = a.base_offset, "snapshot batch applied at another offset");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(topic = %key.0, partition = key.1, error = %e, "snapshot batch not applied yet");
                        break;
                    }
                }
            }
        }
        if next >= t.end_offset {
            let durable = self.shard.durable_offset(key).unwrap_or(0);
            if durable >= t.end_offset {
                node.with_outbox(g, |r, _| r.install_snapshot());
            }
            return;
        }
        node.with_outbox(g, |r, out| r.request_chunk(next, out));
    }

    /// Rotates the `raft-log` files that grew (see `ReplicatedPartition::maybe_rotate_log`);
    /// a replica whose rotation fails is removed and reopened from disk later.
    pub(super) async fn rotate_logs(
        &self,
        node: &mut Node,
        bindings: &mut HashMap<GroupId, Binding>,
    ) {
        let groups: Vec<GroupId> = node
            .groups()
            .filter(|r| r.may_rotate_log(RAFT_LOG_ROTATE_BYTES))
            .map(crate::replication::ReplicatedPartition::group)
            .filter(|g| matches!(bindings.get(g), Some(Binding::Partition(_))))
            .collect();
        for g in groups {
            let Some(r) = node.get_mut(g) else { continue };
            if let Err(e) = r.maybe_rotate_log(RAFT_LOG_ROTATE_BYTES).await {
                tracing::error!(group = g, error = %e, "raft log rotation failed; reopening the replica from disk");
                node.remove(g);
                bindings.remove(&g);
                self.reopen_later(g);
            }
        }
    }
}
