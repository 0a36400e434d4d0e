//! The load under which faults are injected: verifying producers and tail consumers, the
//! idempotent producers, group members and queue consumers (their loops live in
//! [`super::idempotent`], [`super::groups`], [`super::queue`]), how they are started and
//! stopped, and the server's memory monitor.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use rand::{RngExt, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use shardline_engine::batch;
use shardline_net::client::{Client, ClientError};
use shardline_net::protocol::{Acks, code};

use super::ledger::{self, Acked};
use super::verify::{decode_chunk, retry_client};
use super::{
    Config, PRODUCER_ERROR_BACKOFF, PRODUCER_HOLD_INTERVAL, Report, Shared, TOPIC, groups,
    idempotent, lock, queue,
};

/// Records per batch of a verifying producer: 1..=this.
const PRODUCER_BATCH_RECORDS_MAX: u64 = 16;
/// Records per batch of the idempotent producers, on the torture topic and the work queue.
const IDEMPOTENT_BATCH_RECORDS_MAX: u64 = 16;
const QUEUE_FEED_BATCH_RECORDS_MAX: u64 = 8;
/// How long a tail consumer's fetch waits for data, and the most it asks for.
const TAIL_FETCH_WAIT: Duration = Duration::from_millis(50);
const TAIL_FETCH_BYTES_MAX: u32 = 1 << 20;
/// How long the group and the queue consumers may take to drain what was acknowledged.
const DRAIN_LIMIT: Duration = Duration::from_secs(90);
const RSS_SAMPLE_INTERVAL: Duration = Duration::from_millis(50);

/// The harness's threads, by how they are stopped.
pub(super) struct Workers {
    /// Stopped by `load_stop`.
    producers: Vec<JoinHandle<()>>,
    /// Stopped by their own flags after draining.
    group_members: Vec<JoinHandle<()>>,
    queue_consumers: Vec<JoinHandle<()>>,
    /// Stopped by `stop`.
    tail_consumers: Vec<JoinHandle<()>>,
}

pub(super) fn spawn_workers(cfg: &Config, shared: &Arc<Shared>) -> Workers {
    let mut w = Workers {
        producers: Vec::new(),
        group_members: Vec::new(),
        queue_consumers: Vec::new(),
        tail_consumers: Vec::new(),
    };
    let seed_of = |i: u64| cfg.seed ^ (i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for i in 0..cfg.producers {
        let sh = shared.clone();
        let partitions = cfg.partitions;
        let seed = seed_of(i as u64);
        w.producers.push(std::thread::spawn(move || {
            producer_loop(&sh, i as u32 + 1, partitions, i % 2 == 0, seed);
        }));
    }
    // Idempotent producers: ids 101.. on the torture topic, 201 on the work queue.
    let idempotent = (0..cfg.idempotent_producers).map(|i| (false, 101 + i as u32, i % 2 == 1));
    let feeding_queue = (cfg.queue_consumers > 0).then_some((true, 201, true));
    for (to_queue, producer, via_proxy) in idempotent.chain(feeding_queue) {
        let sh = shared.clone();
        let seed = seed_of(u64::from(producer));
        let sabotage = cfg.sabotage;
        w.producers.push(std::thread::spawn(move || {
            let target = if to_queue {
                idempotent::Target {
                    topic: queue::QUEUE,
                    ledger: &sh.queue_ledger,
                    batch_records_max: QUEUE_FEED_BATCH_RECORDS_MAX,
                    via_proxy,
                }
            } else {
                idempotent::Target {
                    topic: TOPIC,
                    ledger: &sh.ledger,
                    batch_records_max: IDEMPOTENT_BATCH_RECORDS_MAX,
                    via_proxy,
                }
            };
            idempotent::producer_loop(&sh, &target, producer, seed, sabotage);
        }));
    }
    for m in 0..cfg.group_members {
        let sh = shared.clone();
        w.group_members.push(std::thread::spawn(move || {
            groups::member_loop(&sh, m, m == 0)
        }));
    }
    if cfg.group_members > 0 {
        let sh = shared.clone();
        w.group_members
            .push(std::thread::spawn(move || groups::watch_committed(&sh)));
    }
    for c in 0..cfg.queue_consumers {
        let sh = shared.clone();
        let seed = seed_of(300 + c as u64);
        w.queue_consumers.push(std::thread::spawn(move || {
            queue::consumer_loop(&sh, c, c == 0, seed);
        }));
    }
    for c in 0..cfg.consumers {
        let sh = shared.clone();
        let mine: Vec<u32> = (0..cfg.partitions)
            .filter(|p| (*p as usize) % cfg.consumers == c)
            .collect();
        w.tail_consumers
            .push(std::thread::spawn(move || consumer_loop(&sh, &mine)));
    }
    w
}

/// Stops the load, lets the group and the queue consumers drain what was acknowledged and
/// checks it, then stops every worker.
pub(super) fn finish_load(
    cfg: &Config,
    shared: &Arc<Shared>,
    workers: Workers,
    report: &mut Report,
) -> anyhow::Result<()> {
    shared.load_stop.store(true, Ordering::Relaxed);
    shared.hold.store(false, Ordering::Relaxed);
    for w in workers.producers {
        let _ = w.join();
    }
    // A run that failed already does not wait for what may never come.
    let drain_limit = if lock(&shared.violations).is_empty() {
        DRAIN_LIMIT
    } else {
        Duration::ZERO
    };
    let client = retry_client(shared)?;
    if cfg.group_members > 0 {
        if let Err(e) = groups::check_committed(shared, &client) {
            shared.violation(format!("[group] reading committed offsets: {e:#}"));
        }
        report.groups = Some(groups::drain(shared, drain_limit));
    }
    shared.groups.stop.store(true, Ordering::Relaxed);
    for w in workers.group_members {
        let _ = w.join();
    }
    let queue_report =
        (cfg.queue_consumers > 0).then(|| queue::drain(shared, &client, drain_limit));
    shared.queue.stop.store(true, Ordering::Relaxed);
    for w in workers.queue_consumers {
        let _ = w.join();
    }
    if let Some(r) = queue_report {
        report.queue = Some(queue::finish(shared, &client, r, cfg.queue_consumers));
    }
    shared.stop.store(true, Ordering::Relaxed);
    for w in workers.tail_consumers {
        let _ = w.join();
    }
    Ok(())
}

pub(super) fn acked_records(shared: &Shared) -> u64 {
    shared.ledger.iter().map(|l| lock(l).acked_records).sum()
}

/// Samples the server's resident memory until `stop`, keeping the peak; follows the server
/// across restarts ([`RssMonitor::watch`]).
pub(super) struct RssMonitor {
    pid: Arc<AtomicU64>,
    peak_bytes: Arc<AtomicU64>,
    thread: JoinHandle<()>,
}

impl RssMonitor {
    pub(super) fn spawn(pid: u32, shared: Arc<Shared>) -> RssMonitor {
        let pid = Arc::new(AtomicU64::new(u64::from(pid)));
        let peak_bytes = Arc::new(AtomicU64::new(0));
        let (watched, peak) = (pid.clone(), peak_bytes.clone());
        let thread = std::thread::spawn(move || {
            while !shared.stop.load(Ordering::Relaxed) {
                if let Some(rss_bytes) = rss_bytes(watched.load(Ordering::Relaxed)) {
                    peak.fetch_max(rss_bytes, Ordering::Relaxed);
                }
                std::thread::sleep(RSS_SAMPLE_INTERVAL);
            }
        });
        RssMonitor {
            pid,
            peak_bytes,
            thread,
        }
    }

    /// Samples the server process `pid` from now on (a restarted server).
    pub(super) fn watch(&self, pid: u32) {
        self.pid.store(u64::from(pid), Ordering::Relaxed);
    }

    pub(super) fn peak_bytes(&self) -> u64 {
        self.peak_bytes.load(Ordering::Relaxed)
    }

    /// Waits for the sampling thread (it ends once `stop` is set); returns the peak.
    pub(super) fn join(self) -> u64 {
        let _ = self.thread.join();
        self.peak_bytes.load(Ordering::Relaxed)
    }
}

/// `VmRSS` of process `pid`, `None` if it cannot be read.
fn rss_bytes(pid: u64) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())?;
    Some(rss_kib * 1024)
}

/// A verifying producer: batches of 1..=16 records to partitions in turn, `durable` acks, every
/// acknowledgement recorded; on an error the batch's fate is unknown and the producer moves on
/// with new sequence numbers (never a resend), reconnecting as needed.
fn producer_loop(shared: &Shared, producer: u32, partitions: u32, via_proxy: bool, seed: u64) {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut seqs = vec![0u64; partitions as usize];
    let mut client: Option<Client> = None;
    let mut p = producer % partitions;
    while !shared.load_stopped() {
        shared.sending.fetch_add(1, Ordering::AcqRel);
        if shared.hold.load(Ordering::Acquire) {
            shared.sending.fetch_sub(1, Ordering::AcqRel);
            std::thread::sleep(PRODUCER_HOLD_INTERVAL);
            continue;
        }
        let Some(c) = shared.cached_client(&mut client, via_proxy) else {
            shared.sending.fetch_sub(1, Ordering::AcqRel);
            continue;
        };
        let n = rng.random_range(1..=PRODUCER_BATCH_RECORDS_MAX);
        let seq_base = seqs[p as usize];
        seqs[p as usize] += n;
        let values = (seq_base..seq_base + n).map(|s| ledger::value(producer, p, s));
        let result = batch::batch_of_values(values)
            .map_err(|e| anyhow::anyhow!("building a batch: {e}"))
            .and_then(|b| Ok(c.produce(TOPIC, p, b, Acks::Durable)?));
        match result {
            Ok(Some(ack)) => {
                if ack.last_offset + 1 - ack.base_offset != n {
                    shared.violation(format!(
                        "partition {p}: ack {}..={} for a batch of {n}",
                        ack.base_offset, ack.last_offset
                    ));
                }
                let mut l = lock(&shared.ledger[p as usize]);
                l.acked.insert(
                    ack.base_offset,
                    Acked {
                        last_offset: ack.last_offset,
                        producer,
                        seq_base,
                    },
                );
                l.acked_records += n;
            }
            Ok(None) => shared.violation("a durable produce returned no ack".into()),
            Err(e) => {
                lock(&shared.ledger[p as usize]).unknown_records += n;
                shared.producer_errors.fetch_add(1, Ordering::Relaxed);
                let transient = e.downcast_ref::<ClientError>().is_some_and(|ce| {
                    matches!(
                        ce,
                        ClientError::Connect { .. }
                            | ClientError::ConnectionLost { .. }
                            | ClientError::Timeout { .. }
                    ) || ce.code().is_some_and(|c| {
                        [code::SHUTTING_DOWN, code::BUSY, code::TIMEOUT].contains(&c)
                    })
                });
                if !transient {
                    shared.violation(format!("producer {producer}: unexpected error: {e:#}"));
                }
                client = None;
                std::thread::sleep(PRODUCER_ERROR_BACKOFF);
            }
        }
        shared.sending.fetch_sub(1, Ordering::AcqRel);
        p = (p + 1) % partitions;
    }
}

/// A verifying tail consumer: long-poll fetches from its position on each partition; checks
/// contiguity, byte identity, per-producer order, CRC (the batch decode validates it), and that
/// data it saw is still there after a process kill.
fn consumer_loop(shared: &Shared, partitions: &[u32]) {
    struct Pos {
        next: u64,
        last_seq: HashMap<u32, u64>,
        torn_epoch: u64,
    }
    let mut pos: Vec<Pos> = partitions
        .iter()
        .map(|_| Pos {
            next: 0,
            last_seq: HashMap::new(),
            torn_epoch: 0,
        })
        .collect();
    let mut client: Option<Client> = None;
    while !shared.stop.load(Ordering::Relaxed) {
        for (i, &p) in partitions.iter().enumerate() {
            let Some(c) = shared.cached_client(&mut client, false) else {
                break;
            };
            let at = &mut pos[i];
            let r = c.fetch(TOPIC, p, at.next, TAIL_FETCH_WAIT, TAIL_FETCH_BYTES_MAX);
            let r = match r {
                Ok(r) => r,
                Err(e) if e.code() == Some(code::OFFSET_OUT_OF_RANGE) => {
                    // The log is shorter than what this consumer saw.
                    let torn = shared.torn_epoch[p as usize].load(Ordering::Relaxed);
                    if torn == at.torn_epoch {
                        shared.violation(format!(
                            "partition {p}: offset {} was visible before a process kill and \
                             is gone after it ({e})",
                            at.next
                        ));
                        return;
                    }
                    at.torn_epoch = torn;
                    // Rewind to the end of the acknowledged data (never below the log start).
                    let acked_end = lock(&shared.ledger[p as usize])
                        .acked
                        .values()
                        .map(|a| a.last_offset + 1)
                        .max()
                        .unwrap_or(0);
                    at.next = acked_end.min(at.next);
                    continue;
                }
                Err(_) => {
                    client = None;
                    break;
                }
            };
            if r.error_code != code::NONE {
                client = None;
                break;
            }
            for chunk in &r.chunks {
                let records = match decode_chunk(chunk) {
                    Ok(x) => x,
                    Err(e) => {
                        shared.violation(format!("partition {p}: corrupt batch served: {e}"));
                        return;
                    }
                };
                for (offset, value) in records {
                    if offset < at.next {
                        continue;
                    }
                    if offset != at.next {
                        shared.violation(format!(
                            "partition {p}: consumer expected offset {}, got {offset}",
                            at.next
                        ));
                        return;
                    }
                    let ok = ledger::identity(&value).is_some_and(|(prod, part, seq)| {
                        part == p
                            && value == ledger::value(prod, part, seq)
                            && at.last_seq.insert(prod, seq).is_none_or(|prev| prev < seq)
                    });
                    if !ok {
                        shared.violation(format!(
                            "partition {p}: consumer found a wrong, duplicate or reordered \
                             record at offset {offset}"
                        ));
                        return;
                    }
                    at.next = offset + 1;
                    shared.consumer_records.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}
