//! Idempotent verifying producers: each logical batch has one identity (producer id, epoch,
//! partition, base sequence) and is resent, byte for byte, after every error, timeout or cut
//! connection until it is acknowledged. The broker must append it once: the log scans
//! ([`super::ledger::Scan`]) and the tail consumers flag any record whose harness sequence
//! appears twice, and the ledger records every acknowledged batch as the plain producers' do.
//!
//! One batch is outstanding per producer at a time (well inside the broker's 5-batch window),
//! so a resend is always of the partition's newest batch and must be answered with its original
//! offsets if the first copy landed. Under `--sabotage` a resend is restamped with a fresh
//! sequence instead (what a client without idempotence does), and the duplicate checks must then
//! fire.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use rand::{RngExt, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::Serialize;
use shardline_engine::batch::{BatchBuilder, ProducerInfo};
use shardline_net::client::{Client, ClientError, ProducerId};
use shardline_net::protocol::{Acks, code};

use super::Shared;
use super::ledger::{self, Acked, PartitionLedger};

/// Counters of the idempotent producers (all of them, every topic).
#[derive(Debug, Default)]
pub(super) struct Stats {
    pub batches_acked: AtomicU64,
    pub records_acked: AtomicU64,
    /// Sends of a batch after its first (same bytes; fresh sequence under sabotage).
    pub resends: AtomicU64,
    /// Batches acknowledged only after at least one resend (the broker had to deduplicate or
    /// append a copy whose original was lost).
    pub acked_after_resend: AtomicU64,
    pub identities: AtomicU64,
}

#[derive(Debug, Default, Serialize)]
pub struct IdempotentReport {
    pub producers: usize,
    pub batches_acked: u64,
    pub records_acked: u64,
    pub resends: u64,
    pub acked_after_resend: u64,
    pub identities: u64,
}

impl Stats {
    pub(super) fn report(&self, producers: usize) -> IdempotentReport {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        IdempotentReport {
            producers,
            batches_acked: get(&self.batches_acked),
            records_acked: get(&self.records_acked),
            resends: get(&self.resends),
            acked_after_resend: get(&self.acked_after_resend),
            identities: get(&self.identities),
        }
    }
}

/// Where an idempotent producer writes.
pub(super) struct Target<'a> {
    pub topic: &'a str,
    pub ledger: &'a [Mutex<PartitionLedger>],
    /// Records per batch, at most.
    pub batch_records_max: u64,
    pub via_proxy: bool,
}

/// The batch being delivered.
struct Outstanding {
    partition: u32,
    /// Harness sequence of the first record (the value's identity).
    seq_base: u64,
    records: u64,
    bytes: Bytes,
    sends: u32,
}

/// Errors after which the batch's fate is unknown and a resend is the cure.
fn transient(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Connect { .. }
            | ClientError::ConnectionLost { .. }
            | ClientError::Timeout { .. }
    ) || e
        .code()
        .is_some_and(|c| [code::SHUTTING_DOWN, code::BUSY, code::TIMEOUT].contains(&c))
}

fn build(
    id: ProducerId,
    producer: u32,
    partition: u32,
    seq_base: u64,
    records: u64,
    sequence: u32,
) -> anyhow::Result<Bytes> {
    let mut b = BatchBuilder::new().producer(ProducerInfo {
        producer_id: id.producer_id,
        producer_epoch: id.epoch,
        base_sequence: sequence,
    });
    for s in seq_base..seq_base + records {
        b.push_value(ledger::value(producer, partition, s));
    }
    b.build()
        .map_err(|e| anyhow::anyhow!("building a batch: {e}"))
}

/// Runs one idempotent producer until the harness stops the load.
pub(super) fn producer_loop(
    shared: &Shared,
    target: &Target<'_>,
    producer: u32,
    seed: u64,
    sabotage: bool,
) {
    let partitions = target.ledger.len() as u32;
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    // Per partition: the next harness sequence, and the next sequence stamped (the same
    // unless sabotage restamps resends).
    let mut seqs = vec![0u64; partitions as usize];
    let mut stamped = vec![0u32; partitions as usize];
    let mut identity: Option<ProducerId> = None;
    let mut client: Option<Client> = None;
    let mut outstanding: Option<Outstanding> = None;
    let mut next_partition = producer % partitions;
    while !shared.load_stopped() {
        let Some(_sending) = shared.start_send() else {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        let Some(c) = shared.cached_client(&mut client, target.via_proxy) else {
            continue;
        };
        let id = match identity {
            Some(id) => id,
            None => match c.init_producer(None) {
                Ok(id) => {
                    shared.idempotent.identities.fetch_add(1, Ordering::Relaxed);
                    identity = Some(id);
                    id
                }
                Err(_) => {
                    client = None;
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
            },
        };
        if outstanding.is_none() {
            let p = next_partition;
            next_partition = (next_partition + 1) % partitions;
            let records = rng.random_range(1..=target.batch_records_max);
            let seq_base = seqs[p as usize];
            let sequence = stamped[p as usize];
            stamped[p as usize] = sequence.wrapping_add(records as u32);
            match build(id, producer, p, seq_base, records, sequence) {
                Ok(bytes) => {
                    outstanding = Some(Outstanding {
                        partition: p,
                        seq_base,
                        records,
                        bytes,
                        sends: 0,
                    });
                }
                Err(e) => {
                    shared.violation(format!("[idempotent] producer {producer}: {e:#}"));
                    return;
                }
            }
        }
        let Some(o) = outstanding.as_mut() else {
            continue;
        };
        if o.sends > 0 {
            shared.idempotent.resends.fetch_add(1, Ordering::Relaxed);
            if sabotage {
                // What a producer without idempotence does: the same records, a new sequence.
                let p = o.partition as usize;
                let sequence = stamped[p];
                stamped[p] = sequence.wrapping_add(o.records as u32);
                match build(id, producer, o.partition, o.seq_base, o.records, sequence) {
                    Ok(b) => o.bytes = b,
                    Err(e) => {
                        shared.violation(format!("[idempotent] producer {producer}: {e:#}"));
                        return;
                    }
                }
            }
        }
        o.sends += 1;
        match c.produce(target.topic, o.partition, o.bytes.clone(), Acks::Durable) {
            Ok(Some(ack)) => {
                let p = o.partition;
                if ack.last_offset + 1 - ack.base_offset != o.records {
                    shared.violation(format!(
                        "[idempotent] {} partition {p}: ack {}..={} for a batch of {}",
                        target.topic, ack.base_offset, ack.last_offset, o.records
                    ));
                }
                let mut l = super::lock(&target.ledger[p as usize]);
                if let Some(prev) = l.acked.insert(
                    ack.base_offset,
                    Acked {
                        last_offset: ack.last_offset,
                        producer,
                        seq_base: o.seq_base,
                    },
                ) {
                    shared.violation(format!(
                        "[idempotent] {} partition {p}: offset {} acknowledged twice (producer \
                         {} seq {}, then producer {producer} seq {})",
                        target.topic, ack.base_offset, prev.producer, prev.seq_base, o.seq_base
                    ));
                }
                l.acked_records += o.records;
                drop(l);
                let s = &shared.idempotent;
                s.batches_acked.fetch_add(1, Ordering::Relaxed);
                s.records_acked.fetch_add(o.records, Ordering::Relaxed);
                if o.sends > 1 {
                    s.acked_after_resend.fetch_add(1, Ordering::Relaxed);
                }
                seqs[p as usize] = o.seq_base + o.records;
                outstanding = None;
            }
            Ok(None) => {
                shared.violation("[idempotent] a durable produce returned no ack".into());
                return;
            }
            Err(e) if transient(&e) => {
                shared.producer_errors.fetch_add(1, Ordering::Relaxed);
                client = None;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => {
                // Sequence errors cannot happen to a producer that resends only its newest
                // batch against a log that keeps what it acknowledged.
                shared.violation(format!(
                    "[idempotent] producer {producer} ({}/{}) on {} partition {}, seq {}: {e}",
                    id.producer_id, id.epoch, target.topic, o.partition, o.seq_base
                ));
                return;
            }
        }
    }
}
