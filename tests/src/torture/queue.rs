//! Work-queue consumers under faults. An idempotent producer ([`super::idempotent`]) fills the
//! queue topic (its acknowledged batches are in the queue ledger); competing consumers receive,
//! mostly ack, sometimes nack or forget a message (its lease then times out), and always nack
//! "poison" messages, which must end in the dead-letter queue. A [`QueueTracker`] checks:
//!
//! - **content**: every delivered value (and every dead letter) is the record its identity
//!   derives, on the partition (and original partition) it names;
//! - **acked exactly once**: no message is acked successfully twice;
//! - **ack state never regresses**: a receive sent after an ack was answered never returns
//!   that message again, across SIGKILL and restarts (in-flight, unacked messages may come back:
//!   leases do not survive a restart); each partition's `ack_floor` (QueueStats) never moves
//!   back;
//! - **none lost**: once the queue is drained (no message ready, delayed or in flight), every
//!   message the producer had acknowledged is acked or in the dead-letter queue.
//!
//! An ack whose answer was lost (cut connection, timeout, kill) is sent again with the same
//! receipt until the answer settles it: `NONE` (acked now), `MESSAGE_DONE` (the first one took,
//! or the message was dead-lettered) or `LEASE_NOT_HELD` (it did not take: the message will be
//! delivered again).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::{RngExt, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::Serialize;
use shardline_engine::batch;
use shardline_engine::queue::{DLQ_OFFSET_HEADER, DLQ_PARTITION_HEADER};
use shardline_net::client::{Client, QueueMessage, QueueReceipt, QueueSettings, TopicConfig, code};

use super::ledger::{self, PartitionLedger};
use super::{Shared, lock};

pub const QUEUE: &str = "torture-queue";
pub const DLQ: &str = "torture-queue.dlq";
pub const VISIBILITY: Duration = Duration::from_millis(2000);
pub const MAX_DELIVERIES: u32 = 3;
/// Messages whose harness sequence is a multiple of this are always nacked (dead letters).
const POISON_EVERY: u64 = 61;
/// How long a stalled consumer holds its leases: past the visibility timeout.
pub const CONSUMER_STALL: Duration = Duration::from_millis(3000);
/// Answers an ack with an unknown outcome may take before it counts as unsettled.
const ACK_RESENDS_MAX: u32 = 50;

pub fn settings() -> QueueSettings {
    QueueSettings {
        visibility_timeout_ms: VISIBILITY.as_millis() as u64,
        max_deliveries: MAX_DELIVERIES,
        backoff_base_ms: 50,
        backoff_max_ms: 400,
        dead_letter_topic: Some(DLQ.into()),
        priority_levels: 1,
    }
}

pub(super) fn create(client: &Client, partitions: u32) -> anyhow::Result<()> {
    client.create_queue(
        QUEUE,
        TopicConfig {
            partitions,
            ..TopicConfig::default()
        },
        settings(),
    )?;
    Ok(())
}

pub fn is_poison(seq: u64) -> bool {
    seq.is_multiple_of(POISON_EVERY)
}

/// The queue checks (pure).
#[derive(Debug, Default)]
pub struct QueueTracker {
    /// (partition, offset) -> when the server first said it is done (an ack answered NONE, or
    /// MESSAGE_DONE to a resend), the receipt's attempt, and the answer.
    acked: HashMap<(u32, u64), (Instant, u32, &'static str)>,
    /// Messages whose ack was answered NONE (a successful ack). MESSAGE_DONE to a resend is not
    /// one: the first attempt, another consumer's ack (whose answer may be processed later
    /// here) or dead-lettering may have made it done.
    acked_ok: HashSet<(u32, u64)>,
    /// Per partition: the highest ack floor read back.
    floors: Vec<u64>,
    pub received: u64,
    pub redelivered: u64,
    pub acks: u64,
    pub acks_settled_by_resend: u64,
    pub nacks: u64,
    pub forgotten: u64,
    pub lease_lost: u64,
    pub unsettled_acks: u64,
    pub floor_checks: u64,
    seen: HashSet<(u32, u64)>,
}

impl QueueTracker {
    pub fn new(partitions: u32) -> QueueTracker {
        QueueTracker {
            floors: vec![0; partitions as usize],
            ..QueueTracker::default()
        }
    }

    /// A message returned by a receive that was sent at `sent_at`.
    pub fn received(&mut self, m: &QueueMessage, sent_at: Instant) -> Vec<String> {
        let mut v = Vec::new();
        self.received += 1;
        if !self.seen.insert((m.partition, m.offset)) {
            self.redelivered += 1;
        }
        let ok = ledger::identity(&m.value).is_some_and(|(prod, part, seq)| {
            part == m.partition && m.value == ledger::value(prod, part, seq)
        });
        if !ok {
            v.push(format!(
                "[queue] partition {} offset {}: value is not the record its identity names",
                m.partition, m.offset
            ));
        }
        if let Some((at, attempt, how)) = self.acked.get(&(m.partition, m.offset))
            && sent_at > *at
        {
            v.push(format!(
                "[queue] partition {} offset {} was acked ({how}, attempt {attempt}) {:?} before \
                 a receive that returned it again (attempt {})",
                m.partition,
                m.offset,
                sent_at - *at,
                m.attempt
            ));
        }
        v
    }

    /// An ack answered `NONE` (`resend`: to a resend of an ack whose first answer was lost), or
    /// `MESSAGE_DONE` to a resend.
    pub fn acked(&mut self, r: &QueueReceipt, answer: u16, resend: bool) -> Vec<String> {
        let mut v = Vec::new();
        let key = (r.partition, r.offset);
        match answer {
            code::NONE => {
                self.acks += 1;
                let how = if resend { "NONE to a resend" } else { "NONE" };
                let first = *self
                    .acked
                    .entry(key)
                    .or_insert((Instant::now(), r.attempt, how));
                if !self.acked_ok.insert(key) {
                    let (at, attempt, first_how) = first;
                    v.push(format!(
                        "[queue] partition {} offset {} acked successfully twice: {first_how} \
                         (attempt {attempt}), then {:?} later {how} (attempt {})",
                        r.partition,
                        r.offset,
                        at.elapsed(),
                        r.attempt
                    ));
                }
            }
            code::MESSAGE_DONE if resend => {
                self.acks_settled_by_resend += 1;
                self.acked
                    .entry(key)
                    .or_insert_with(|| (Instant::now(), r.attempt, "MESSAGE_DONE to a resend"));
            }
            _ => self.lease_lost += 1,
        }
        v
    }

    pub fn is_acked(&self, p: u32, o: u64) -> bool {
        self.acked.contains_key(&(p, o))
    }

    pub fn floors(&mut self, floors: &[(u32, u64)]) -> Vec<String> {
        let mut v = Vec::new();
        for &(p, f) in floors {
            let Some(prev) = self.floors.get_mut(p as usize) else {
                continue;
            };
            self.floor_checks += 1;
            if f < *prev {
                v.push(format!(
                    "[queue] partition {p}: ack floor moved back from {} to {f}",
                    *prev
                ));
            }
            *prev = (*prev).max(f);
        }
        v
    }
}

pub(super) struct QueueState {
    pub tracker: Mutex<QueueTracker>,
    pub stop: AtomicBool,
    /// Consumer index + 1 that should hold its next leases past the visibility timeout.
    pub stall_consumer: AtomicU64,
    pub stalls: AtomicU64,
    pub errors: AtomicU64,
}

impl QueueState {
    pub(super) fn new(partitions: u32) -> QueueState {
        QueueState {
            tracker: Mutex::new(QueueTracker::new(partitions)),
            stop: AtomicBool::new(false),
            stall_consumer: AtomicU64::new(0),
            stalls: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        }
    }
}

#[derive(Debug, Default, Serialize)]
pub struct QueueReport {
    pub consumers: usize,
    pub produced_acked: u64,
    pub received: u64,
    pub redelivered: u64,
    pub acked: u64,
    pub acks_settled_by_resend: u64,
    pub unsettled_acks: u64,
    pub nacked: u64,
    pub forgotten: u64,
    pub lease_lost: u64,
    pub consumer_stalls: u64,
    pub errors: u64,
    pub dead_letters: u64,
    pub ack_floor_checks: u64,
    pub produced_acked_settled: u64,
    pub produced_acked_lost: u64,
    pub drain_ms: f64,
}

/// One competing consumer.
pub(super) fn consumer_loop(shared: &Shared, index: usize, via_proxy: bool, seed: u64) {
    let q = &shared.queue;
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut client: Option<Client> = None;
    // Acks whose answer was lost: resent until settled.
    let mut unsettled: Vec<(QueueReceipt, u32)> = Vec::new();
    while !q.stop.load(Ordering::Relaxed) {
        let Some(c) = shared.cached_client(&mut client, via_proxy) else {
            continue;
        };
        if !unsettled.is_empty() && !resend_acks(shared, &c, &mut unsettled) {
            client = None;
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        let sent_at = Instant::now();
        let messages = match c.queue_receive(QUEUE, None, 32, None, Duration::from_millis(200)) {
            Ok(m) => m,
            Err(_) => {
                q.errors.fetch_add(1, Ordering::Relaxed);
                client = None;
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
        };
        let mut to_ack = Vec::new();
        let mut to_nack = Vec::new();
        {
            let mut t = lock(&q.tracker);
            for m in &messages {
                for v in t.received(m, sent_at) {
                    shared.violation(v);
                }
                let receipt = QueueReceipt {
                    partition: m.partition,
                    offset: m.offset,
                    attempt: m.attempt,
                };
                let poison = ledger::identity(&m.value).is_some_and(|(_, _, s)| is_poison(s));
                let roll = rng.random_range(0..100u32);
                if poison || roll < 8 {
                    to_nack.push(receipt);
                } else if roll < 11 {
                    t.forgotten += 1;
                } else {
                    to_ack.push(receipt);
                }
            }
            t.nacks += to_nack.len() as u64;
        }
        if q.stall_consumer
            .compare_exchange(index as u64 + 1, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            // Holds its leases past the visibility timeout, then acks: the acks must not take
            // for messages delivered to others meanwhile.
            q.stalls.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(CONSUMER_STALL);
        }
        if !to_nack.is_empty() && c.queue_nack(QUEUE, &to_nack, None).is_err() {
            q.errors.fetch_add(1, Ordering::Relaxed);
        }
        if to_ack.is_empty() {
            continue;
        }
        match c.queue_ack(QUEUE, &to_ack) {
            Ok(codes) => {
                let mut t = lock(&q.tracker);
                for (r, answer) in to_ack.iter().zip(codes) {
                    for v in t.acked(r, answer, false) {
                        shared.violation(v);
                    }
                }
            }
            Err(_) => {
                q.errors.fetch_add(1, Ordering::Relaxed);
                unsettled.extend(to_ack.into_iter().map(|r| (r, 0)));
                client = None;
            }
        }
    }
    // Settle what is left (bounded).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !unsettled.is_empty() && Instant::now() < deadline {
        match shared.client(via_proxy) {
            Ok(c) if resend_acks(shared, &c, &mut unsettled) => {}
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    lock(&q.tracker).unsettled_acks += unsettled.len() as u64;
}

/// Resends acks with unknown outcomes; keeps those still unsettled. `false` if the request
/// itself failed.
fn resend_acks(shared: &Shared, c: &Client, unsettled: &mut Vec<(QueueReceipt, u32)>) -> bool {
    let receipts: Vec<QueueReceipt> = unsettled.iter().map(|(r, _)| *r).collect();
    let codes = match c.queue_ack(QUEUE, &receipts) {
        Ok(codes) => codes,
        Err(_) => return false,
    };
    let mut t = lock(&shared.queue.tracker);
    let mut keep = Vec::new();
    for ((r, tries), answer) in unsettled.drain(..).zip(codes) {
        match answer {
            code::NONE | code::MESSAGE_DONE | code::LEASE_NOT_HELD => {
                for v in t.acked(&r, answer, true) {
                    shared.violation(v);
                }
            }
            // UNKNOWN_MESSAGE: the restarted partition has not read that far yet.
            _ if tries + 1 < ACK_RESENDS_MAX => keep.push((r, tries + 1)),
            _ => t.unsettled_acks += 1,
        }
    }
    *unsettled = keep;
    true
}

/// Reads the ack floors back and checks them.
pub(super) fn check_floors(shared: &Shared, client: &Client) -> anyhow::Result<()> {
    let floors: Vec<(u32, u64)> = client
        .queue_stats(QUEUE)?
        .into_iter()
        .map(|s| (s.partition, s.ack_floor))
        .collect();
    for v in lock(&shared.queue.tracker).floors(&floors) {
        shared.violation(v);
    }
    Ok(())
}

/// Original (partition, offset) of every dead letter, content-checked.
fn dead_letters(shared: &Shared, client: &Client) -> anyhow::Result<HashSet<(u32, u64)>> {
    let mut out = HashSet::new();
    for dlq_partition in 0..client.partitions(DLQ)? {
        dead_letters_of(shared, client, dlq_partition, &mut out)?;
    }
    Ok(out)
}

fn dead_letters_of(
    shared: &Shared,
    client: &Client,
    dlq_partition: u32,
    out: &mut HashSet<(u32, u64)>,
) -> anyhow::Result<()> {
    let mut at = 0u64;
    loop {
        let r = client.fetch(DLQ, dlq_partition, at, Duration::ZERO, 4 << 20)?;
        if r.chunks.is_empty() || at >= r.high_watermark {
            break;
        }
        for chunk in &r.chunks {
            for b in batch::split_batches(chunk)? {
                let (h, records) = batch::decode(b)?;
                for rec in records {
                    let offset = h.base_offset + u64::from(rec.offset_delta);
                    if offset < at {
                        continue;
                    }
                    at = offset + 1;
                    let header = |name: &str| {
                        rec.headers
                            .iter()
                            .find(|h| h.key == name)
                            .and_then(|h| std::str::from_utf8(&h.value).ok())
                            .and_then(|s| s.parse::<u64>().ok())
                    };
                    let (Some(p), Some(o)) =
                        (header(DLQ_PARTITION_HEADER), header(DLQ_OFFSET_HEADER))
                    else {
                        shared.violation(format!("[queue] dead letter at {offset} without origin"));
                        continue;
                    };
                    let p = p as u32;
                    let ok = ledger::identity(&rec.value).is_some_and(|(prod, part, seq)| {
                        part == p && rec.value == ledger::value(prod, part, seq)
                    });
                    if !ok {
                        shared.violation(format!(
                            "[queue] dead letter at {offset} (from {p}/{o}): value is not the \
                             record its identity names"
                        ));
                    }
                    out.insert((p, o));
                }
            }
        }
    }
    Ok(())
}

/// At the end (producers stopped, consumers running): waits (bounded) until nothing is ready,
/// delayed or in flight, stops the consumers (the caller joins them), and checks that every
/// message the producer had acknowledged is acked or dead-lettered.
pub(super) fn drain(shared: &Shared, client: &Client, within: Duration) -> QueueReport {
    let t0 = Instant::now();
    let deadline = t0 + within;
    loop {
        let idle = client.queue_stats(QUEUE).is_ok_and(|s| {
            s.iter()
                .all(|p| p.depth == 0 && p.in_flight == 0 && p.delayed == 0)
        });
        if idle || Instant::now() >= deadline {
            if !idle {
                shared.violation(format!("[queue] not drained within {within:?}"));
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let drain_ms = t0.elapsed().as_secs_f64() * 1e3;
    shared.queue.stop.store(true, Ordering::Relaxed);
    QueueReport {
        drain_ms,
        ..QueueReport::default()
    }
}

/// After the consumers stopped: the "none lost" check and the figures.
pub(super) fn finish(
    shared: &Shared,
    client: &Client,
    mut report: QueueReport,
    consumers: usize,
) -> QueueReport {
    let dead = match dead_letters(shared, client) {
        Ok(d) => d,
        Err(e) => {
            shared.violation(format!("[queue] reading the dead-letter queue: {e:#}"));
            HashSet::new()
        }
    };
    let t = lock(&shared.queue.tracker);
    let mut lost = Vec::new();
    let (mut produced, mut settled) = (0, 0);
    for (p, l) in shared.queue_ledger.iter().enumerate() {
        let p = p as u32;
        let l: std::sync::MutexGuard<'_, PartitionLedger> = lock(l);
        for (&base, a) in &l.acked {
            for o in base..=a.last_offset {
                produced += 1;
                if t.is_acked(p, o) || dead.contains(&(p, o)) {
                    settled += 1;
                } else if lost.len() < 10 {
                    lost.push((p, o));
                }
            }
        }
    }
    let lost_count = produced - settled;
    if lost_count > 0 {
        shared.violation(format!(
            "[queue] {lost_count} acknowledged messages neither acked nor dead-lettered (first: \
             {lost:?})"
        ));
    }
    report.consumers = consumers;
    report.produced_acked = produced;
    report.produced_acked_settled = settled;
    report.produced_acked_lost = lost_count;
    report.received = t.received;
    report.redelivered = t.redelivered;
    report.acked = t.acks;
    report.acks_settled_by_resend = t.acks_settled_by_resend;
    report.unsettled_acks = t.unsettled_acks;
    report.nacked = t.nacks;
    report.forgotten = t.forgotten;
    report.lease_lost = t.lease_lost;
    report.ack_floor_checks = t.floor_checks;
    report.dead_letters = dead.len() as u64;
    report.consumer_stalls = shared.queue.stalls.load(Ordering::Relaxed);
    report.errors = shared.queue.errors.load(Ordering::Relaxed);
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(p: u32, o: u64, seq: u64) -> QueueMessage {
        QueueMessage {
            partition: p,
            offset: o,
            attempt: 1,
            value: ledger::value(7, p, seq),
            ..QueueMessage::default()
        }
    }

    fn receipt(p: u32, o: u64) -> QueueReceipt {
        QueueReceipt {
            partition: p,
            offset: o,
            attempt: 1,
        }
    }

    #[test]
    fn a_message_acked_twice_is_reported() {
        let mut t = QueueTracker::new(1);
        assert!(t.acked(&receipt(0, 4), code::NONE, false).is_empty());
        let v = t.acked(&receipt(0, 4), code::NONE, true);
        assert!(v.iter().any(|v| v.contains("twice")), "{v:?}");
    }

    /// Another consumer's ack may be answered by the server first and processed here second:
    /// a resend's MESSAGE_DONE followed by a NONE is one successful ack, not two.
    #[test]
    fn a_resend_answered_done_then_another_consumers_success_is_one_ack() {
        let mut t = QueueTracker::new(1);
        assert!(t.acked(&receipt(0, 4), code::MESSAGE_DONE, true).is_empty());
        assert!(t.acked(&receipt(0, 4), code::NONE, false).is_empty());
        assert!(t.is_acked(0, 4));
    }

    #[test]
    fn redelivery_after_an_answered_ack_is_reported_and_before_it_is_not() {
        let mut t = QueueTracker::new(1);
        let before = Instant::now();
        t.acked(&receipt(0, 1), code::NONE, false);
        assert!(t.received(&message(0, 1, 1), before).is_empty());
        let v = t.received(&message(0, 1, 1), Instant::now());
        assert!(v.iter().any(|v| v.contains("again")), "{v:?}");
        // Settled by a resend's MESSAGE_DONE counts as acked too.
        t.acked(&receipt(0, 2), code::MESSAGE_DONE, true);
        let v = t.received(&message(0, 2, 2), Instant::now());
        assert!(v.iter().any(|v| v.contains("again")), "{v:?}");
    }

    #[test]
    fn wrong_values_and_receding_floors_are_reported() {
        let mut t = QueueTracker::new(2);
        let mut m = message(1, 0, 3);
        m.partition = 0;
        let v = t.received(&m, Instant::now());
        assert!(v.iter().any(|v| v.contains("not the record")), "{v:?}");
        assert!(t.floors(&[(0, 5), (1, 2)]).is_empty());
        let v = t.floors(&[(0, 4)]);
        assert!(v.iter().any(|v| v.contains("moved back")), "{v:?}");
    }
}
