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
use shardline_net::client::{Client, ClientError, ProduceAck, ProducerId};
use shardline_net::protocol::{Acks, code};

use super::ledger::{self, Acked, PartitionLedger};
use super::{PRODUCER_ERROR_BACKOFF, PRODUCER_HOLD_INTERVAL, Shared};

/// How long a producer waits after a failed identity request.
const IDENTITY_RETRY_INTERVAL: Duration = Duration::from_millis(20);

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

/// Per partition: the next harness sequence, and the next sequence stamped (the same unless
/// sabotage restamps resends); batches go to the partitions in turn.
struct Sequences {
    harness: Vec<u64>,
    stamped: Vec<u32>,
    next_partition: u32,
}

impl Sequences {
    fn new(partitions: u32, first_partition: u32) -> Sequences {
        Sequences {
            harness: vec![0; partitions as usize],
            stamped: vec![0; partitions as usize],
            next_partition: first_partition,
        }
    }

    /// Stamps `records` more sequence numbers on partition `p`; returns the first of them.
    fn stamp(&mut self, p: u32, records: u64) -> u32 {
        let sequence = self.stamped[p as usize];
        self.stamped[p as usize] = sequence.wrapping_add(records as u32);
        sequence
    }
}

/// The next batch: to the next partition in turn, 1..=`batch_records_max` records.
fn new_batch(
    id: ProducerId,
    producer: u32,
    target: &Target<'_>,
    seqs: &mut Sequences,
    rng: &mut Xoshiro256PlusPlus,
) -> anyhow::Result<Outstanding> {
    let p = seqs.next_partition;
    seqs.next_partition = (p + 1) % seqs.harness.len() as u32;
    let records = rng.random_range(1..=target.batch_records_max);
    let seq_base = seqs.harness[p as usize];
    let sequence = seqs.stamp(p, records);
    let bytes = build(id, producer, p, seq_base, records, sequence)?;
    Ok(Outstanding {
        partition: p,
        seq_base,
        records,
        bytes,
        sends: 0,
    })
}

/// The producer's identity, asking the server for one if it has none yet; `None` (after a
/// short back-off, the client dropped) when that fails.
fn identity(
    shared: &Shared,
    identity: &mut Option<ProducerId>,
    client: &mut Option<Client>,
    c: &Client,
) -> Option<ProducerId> {
    if identity.is_none() {
        match c.init_producer(None) {
            Ok(id) => {
                shared.idempotent.identities.fetch_add(1, Ordering::Relaxed);
                *identity = Some(id);
            }
            Err(_) => {
                *client = None;
                std::thread::sleep(IDENTITY_RETRY_INTERVAL);
            }
        }
    }
    *identity
}

/// Records the acknowledgement of `o` in the ledger and the counters; an ack of the wrong
/// length or an offset acknowledged twice is a violation.
fn record_ack(
    shared: &Shared,
    target: &Target<'_>,
    producer: u32,
    o: &Outstanding,
    ack: &ProduceAck,
) {
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
    let mut seqs = Sequences::new(partitions, producer % partitions);
    let mut id_slot: Option<ProducerId> = None;
    let mut client: Option<Client> = None;
    let mut outstanding: Option<Outstanding> = None;
    while !shared.load_stopped() {
        let Some(_sending) = shared.start_send() else {
            std::thread::sleep(PRODUCER_HOLD_INTERVAL);
            continue;
        };
        let Some(c) = shared.cached_client(&mut client, target.via_proxy) else {
            continue;
        };
        let Some(id) = identity(shared, &mut id_slot, &mut client, &c) else {
            continue;
        };
        if outstanding.is_none() {
            match new_batch(id, producer, target, &mut seqs, &mut rng) {
                Ok(o) => outstanding = Some(o),
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
                let sequence = seqs.stamp(o.partition, o.records);
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
                record_ack(shared, target, producer, o, &ack);
                seqs.harness[o.partition as usize] = o.seq_base + o.records;
                outstanding = None;
            }
            Ok(None) => {
                shared.violation("[idempotent] a durable produce returned no ack".into());
                return;
            }
            Err(e) if transient(&e) => {
                shared.producer_errors.fetch_add(1, Ordering::Relaxed);
                client = None;
                std::thread::sleep(PRODUCER_ERROR_BACKOFF);
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
