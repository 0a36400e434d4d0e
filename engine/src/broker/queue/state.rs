//! The work-queue state of one partition, as a plain state machine: no I/O, no clock (`now_ms`
//! is passed in). docs/semantics.md, "Work queues" and "Priorities", describes the behaviour;
//! the shard (`queue/mod.rs`) feeds it messages from the log and persists its decisions.
//!
//! ```text
//!   offsets:  log_start ... floor ......................... scanned ......... high watermark
//!                         |<-- window: entries (not done) -->|<-- not yet looked at -->|
//!   every offset below `floor` is done (acked or dead-lettered); an offset in
//!   [floor, scanned) is done exactly when it has no entry.
//!
//!   entry:  Ready(level) --lease--> InFlight(deadline) --ack--> (removed: done)
//!              ^                        |  nack / deadline passed
//!              |                        v
//!              +---- Delayed(ready_at) <-+   or, once attempts == max_deliveries:
//!                                            DeadPending --dead_lettered--> (removed: done)
//! ```
//! Facts recovered from the ack log about offsets not yet scanned wait in `known` until the scan
//! reaches them.

use std::collections::{BTreeMap, BTreeSet};

pub use crate::api::config::PRIORITY_LEVELS_MAX;
pub use crate::api::queue::{LeaseError, Receipt};

/// Each level's share of deliveries is this many times the share of the level below it
/// (weighted round robin by stride scheduling; docs/semantics.md, "Priorities").
pub const PRIORITY_WEIGHT_RATIO: u64 = 8;
const STRIDE_BASE: u64 = 1 << 40;

/// Queue settings the state machine needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueSettings {
    pub visibility_timeout_ms: u64,
    pub max_deliveries: u32,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    pub priority_levels: u8,
    /// Most messages held in the window (entries); the scan pauses beyond this.
    pub window_max: usize,
    /// Strict priority: never lease a lower level while a higher one has ready messages
    /// (instead of the weighted round robin).
    pub strict_priority: bool,
}

/// Why a message went to the dead-letter queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadReason {
    /// Its last allowed delivery was nacked.
    Nacked,
    /// Its last allowed delivery's visibility timeout passed without an ack.
    TimedOut,
    /// Its time to live (the `ttl-ms` header) passed before it was acked.
    Expired,
}

impl DeadReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadReason::Nacked => "max_deliveries_nacked",
            DeadReason::TimedOut => "max_deliveries_timed_out",
            DeadReason::Expired => "expired",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Ready,
    Delayed { ready_at_ms: i64 },
    InFlight { deadline_ms: i64 },
    DeadPending(DeadReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    level: u8,
    attempts: u32,
    timestamp_ms: i64,
    /// Dead-lettered (reason `expired`) once this time passes while it is not in flight;
    /// `i64::MAX`: never.
    expires_at_ms: i64,
    status: Status,
}

/// What the ack log says about one offset (replay and snapshots).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known {
    Done,
    /// Delivered `attempts` times; visible again from `ready_at_ms` (0 = at once).
    Delivered {
        attempts: u32,
        ready_at_ms: i64,
    },
}

/// Counts for QueueStats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StateCounts {
    pub ready: u64,
    pub delayed: u64,
    pub in_flight: u64,
    pub dead_pending: u64,
    pub floor: u64,
    pub scanned: u64,
    pub oldest_timestamp_ms: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct QueueState {
    settings: QueueSettings,
    floor: u64,
    scanned: u64,
    entries: BTreeMap<u64, Entry>,
    ready: Vec<BTreeSet<u64>>,
    /// Stride-scheduling pass value per level.
    pass: Vec<u64>,
    delayed: BTreeSet<(i64, u64)>,
    deadlines: BTreeSet<(i64, u64)>,
    dead_pending: BTreeSet<u64>,
    /// `(expires_at_ms, offset)` of every entry with a time to live.
    expiring: BTreeSet<(i64, u64)>,
    known: BTreeMap<u64, Known>,
    /// From a restored snapshot: offsets below this without a fact in `known` are done.
    implied_done_until: u64,
}

/// The durable state of a queue partition, as the ack log stores it (bounded by the window, not
/// by the number of messages done): every offset below `floor` is done; in `[floor, scanned)`
/// exactly the offsets listed in `facts` are not done; at or above `scanned`, `facts` says what
/// is known (done or delivered) and everything else is new.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub floor: u64,
    pub scanned: u64,
    pub facts: Vec<(u64, Known)>,
}

impl QueueState {
    pub fn new(settings: QueueSettings, start: u64) -> Self {
        assert!(settings.priority_levels >= 1 && settings.priority_levels <= PRIORITY_LEVELS_MAX);
        assert!(settings.max_deliveries >= 1);
        let levels = usize::from(settings.priority_levels);
        QueueState {
            settings,
            floor: start,
            scanned: start,
            entries: BTreeMap::new(),
            ready: vec![BTreeSet::new(); levels],
            pass: vec![0; levels],
            delayed: BTreeSet::new(),
            deadlines: BTreeSet::new(),
            dead_pending: BTreeSet::new(),
            expiring: BTreeSet::new(),
            known: BTreeMap::new(),
            implied_done_until: 0,
        }
    }

    pub fn settings(&self) -> &QueueSettings {
        &self.settings
    }

    pub fn floor(&self) -> u64 {
        self.floor
    }

    /// Next offset the scan must feed with [`QueueState::add`].
    pub fn scanned(&self) -> u64 {
        self.scanned
    }

    /// Room left in the window.
    pub fn window_room(&self) -> usize {
        self.settings.window_max.saturating_sub(self.entries.len())
    }

    // ------------------------------------------------------------------ replay (ack log)

    /// Applies a fact recovered from the ack log. Only before the scan reaches `offset`.
    pub fn learn(&mut self, offset: u64, fact: Known) {
        if offset < self.floor {
            return;
        }
        match (self.known.get(&offset), fact) {
            (Some(Known::Done), _) => {}
            (Some(Known::Delivered { attempts: a, .. }), Known::Delivered { attempts: b, .. })
                if *a > b => {}
            _ => {
                self.known.insert(offset, fact);
            }
        }
    }

    /// Replaces everything with a snapshot (replay of the ack log).
    pub fn restore(&mut self, s: Snapshot) {
        assert!(self.entries.is_empty(), "restore only before the scan");
        self.floor = s.floor;
        self.scanned = s.floor;
        self.known.clear();
        self.implied_done_until = s.scanned;
        for (o, k) in s.facts {
            self.learn(o, k);
        }
    }

    /// The durable state, bounded by the window and the facts not yet scanned.
    pub fn snapshot(&self) -> Snapshot {
        let mut facts = Vec::with_capacity(self.entries.len() + self.known.len());
        for (&o, e) in &self.entries {
            let ready_at_ms = match e.status {
                Status::Delayed { ready_at_ms } => ready_at_ms,
                _ => 0,
            };
            facts.push((
                o,
                Known::Delivered {
                    attempts: e.attempts,
                    ready_at_ms,
                },
            ));
        }
        facts.extend(self.known.range(self.scanned..).map(|(o, k)| (*o, *k)));
        Snapshot {
            floor: self.floor,
            scanned: self.scanned.max(self.implied_done_until),
            facts,
        }
    }

    // ------------------------------------------------------------------ scan

    /// Moves the window past offsets the log no longer holds (retention deleted them).
    /// Returns how many not-done messages were lost that way.
    pub fn skip_to(&mut self, log_start: u64) -> u64 {
        let mut lost = 0;
        let below: Vec<u64> = self.entries.range(..log_start).map(|(o, _)| *o).collect();
        for o in below {
            self.remove(o);
            lost += 1;
        }
        if self.scanned < log_start {
            lost += self.not_done_in(self.scanned, log_start);
            self.scanned = log_start;
        }
        self.advance_floor();
        lost
    }

    /// Discards every message below `end`, whatever its state (ready, delayed, in flight,
    /// waiting for the dead-letter queue, not yet scanned): they are done, and a later ack or
    /// nack of one of their leases answers [`LeaseError::Done`]. Offsets at or above `end` are
    /// untouched. Returns how many not-done messages were discarded. The same move as
    /// [`QueueState::skip_to`], which retention makes involuntarily.
    pub fn purge(&mut self, end: u64) -> u64 {
        self.skip_to(end)
    }

    /// Feeds the message at `scanned()` into the window.
    pub fn add(&mut self, offset: u64, level: u8, timestamp_ms: i64, now_ms: i64) {
        self.add_timed(offset, level, timestamp_ms, Timing::default(), now_ms);
    }

    /// Feeds the message at `scanned()` into the window, with its delay and time to live
    /// (both derived from the message itself, so a restart that scans it again derives the
    /// same times).
    pub fn add_timed(
        &mut self,
        offset: u64,
        level: u8,
        timestamp_ms: i64,
        timing: Timing,
        now_ms: i64,
    ) {
        assert_eq!(offset, self.scanned, "messages are added in offset order");
        self.scanned += 1;
        let level = level.min(self.settings.priority_levels - 1);
        let (attempts, ready_at_ms) = match self.known.remove(&offset) {
            Some(Known::Done) => {
                self.advance_floor();
                return;
            }
            None if offset < self.implied_done_until => {
                self.advance_floor();
                return;
            }
            Some(Known::Delivered {
                attempts,
                ready_at_ms,
            }) => (attempts, ready_at_ms),
            None => (0, timing.not_before_ms),
        };
        let expires_at_ms = timing.expires_at_ms;
        if expires_at_ms != i64::MAX {
            self.expiring.insert((expires_at_ms, offset));
        }
        let status = if expires_at_ms <= now_ms {
            self.dead_pending.insert(offset);
            Status::DeadPending(DeadReason::Expired)
        } else if ready_at_ms > now_ms {
            self.delayed.insert((ready_at_ms, offset));
            Status::Delayed { ready_at_ms }
        } else {
            self.make_ready(offset, level);
            Status::Ready
        };
        self.entries.insert(
            offset,
            Entry {
                level,
                attempts,
                timestamp_ms,
                expires_at_ms,
                status,
            },
        );
    }

    // ------------------------------------------------------------------ deliveries

    /// Moves due delayed messages to ready and expired leases back (or to the dead-letter
    /// queue). Returns the offsets whose lease expired.
    pub fn tick(&mut self, now_ms: i64) -> Vec<u64> {
        while let Some(&(at, o)) = self.delayed.first() {
            if at > now_ms {
                break;
            }
            self.delayed.pop_first();
            if let Some(e) = self.entries.get_mut(&o) {
                e.status = Status::Ready;
                let level = e.level;
                self.make_ready(o, level);
            }
        }
        self.expire(now_ms);
        let mut expired = Vec::new();
        while let Some(&(at, o)) = self.deadlines.first() {
            if at > now_ms {
                break;
            }
            self.deadlines.pop_first();
            expired.push(o);
            self.requeue(o, None, now_ms, DeadReason::TimedOut);
        }
        expired
    }

    /// Leases up to `max` messages for `visibility_ms`, highest priority first by weighted
    /// round robin.
    pub fn lease(&mut self, now_ms: i64, max: usize, visibility_ms: u64) -> Vec<Receipt> {
        self.tick(now_ms);
        let deadline_ms = now_ms.saturating_add(visibility_ms.min(i64::MAX as u64) as i64);
        let mut out = Vec::new();
        while out.len() < max {
            let Some(level) = self.pick_level() else {
                break;
            };
            let Some(o) = self.ready[level].pop_first() else {
                break;
            };
            self.pass[level] += STRIDE_BASE / weight(level);
            if self.pass[level] > 1 << 62 {
                // Renormalize long before u64 overflows; only differences matter.
                let low = self.pass[level] - (1 << 61);
                self.pass
                    .iter_mut()
                    .for_each(|p| *p = p.saturating_sub(low));
            }
            let Some(e) = self.entries.get_mut(&o) else {
                continue;
            };
            e.attempts += 1;
            e.status = Status::InFlight { deadline_ms };
            self.deadlines.insert((deadline_ms, o));
            out.push(Receipt {
                offset: o,
                attempt: e.attempts,
            });
        }
        out
    }

    pub fn ack(&mut self, r: Receipt) -> Result<(), LeaseError> {
        self.check_lease(r)?;
        self.remove(r.offset);
        self.advance_floor();
        Ok(())
    }

    /// Gives a delivery back: visible again after `delay_ms`, or after the backoff for its
    /// attempt count when `None`; or dead-lettered if it was the last allowed delivery.
    /// Returns the time it becomes visible (`None` if it is to be dead-lettered).
    pub fn nack(
        &mut self,
        r: Receipt,
        delay_ms: Option<u64>,
        now_ms: i64,
    ) -> Result<Option<i64>, LeaseError> {
        let deadline = self.check_lease(r)?;
        self.deadlines.remove(&(deadline, r.offset));
        Ok(self.requeue(r.offset, delay_ms, now_ms, DeadReason::Nacked))
    }

    /// Sets a lease's deadline to `now + visibility_ms`.
    pub fn change_visibility(
        &mut self,
        r: Receipt,
        visibility_ms: u64,
        now_ms: i64,
    ) -> Result<i64, LeaseError> {
        let old = self.check_lease(r)?;
        let deadline_ms = now_ms.saturating_add(visibility_ms.min(i64::MAX as u64) as i64);
        self.deadlines.remove(&(old, r.offset));
        self.deadlines.insert((deadline_ms, r.offset));
        if let Some(e) = self.entries.get_mut(&r.offset) {
            e.status = Status::InFlight { deadline_ms };
        }
        Ok(deadline_ms)
    }

    /// Messages waiting to be copied to the dead-letter queue, with attempts and reason.
    pub fn dead_pending(&self) -> Vec<(u64, u32, DeadReason)> {
        self.dead_pending
            .iter()
            .filter_map(|o| {
                self.entries.get(o).and_then(|e| match e.status {
                    Status::DeadPending(r) => Some((*o, e.attempts, r)),
                    _ => None,
                })
            })
            .collect()
    }

    /// The message is in the dead-letter queue now: done here.
    pub fn dead_lettered(&mut self, offset: u64) {
        if self.dead_pending.remove(&offset) {
            self.remove(offset);
            self.advance_floor();
        }
    }

    /// Earliest time something changes by itself (a delay or a lease ends).
    pub fn next_due_ms(&self) -> Option<i64> {
        [
            self.delayed.first().map(|x| x.0),
            self.deadlines.first().map(|x| x.0),
            self.expiring.first().map(|x| x.0),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Up to `max` offsets that are not done, in offset order, without leasing them (inspect).
    pub fn peek(&self, max: usize) -> Vec<(u64, u32)> {
        self.entries
            .iter()
            .take(max)
            .map(|(o, e)| (*o, e.attempts))
            .collect()
    }

    pub fn counts(&self) -> StateCounts {
        let in_flight = self.deadlines.len() as u64;
        let delayed = self.delayed.len() as u64;
        let ready = self.ready.iter().map(|r| r.len() as u64).sum();
        StateCounts {
            ready,
            delayed,
            in_flight,
            dead_pending: self.dead_pending.len() as u64,
            floor: self.floor,
            scanned: self.scanned,
            oldest_timestamp_ms: self.entries.values().next().map(|e| e.timestamp_ms),
        }
    }

    /// Not-done offsets the window holds (tests, stats).
    pub fn window_len(&self) -> usize {
        self.entries.len()
    }

    /// Offsets in `[from, to)`, at or above `scanned()`, that are not done (depth accounting).
    pub fn not_done_in(&self, from: u64, to: u64) -> u64 {
        if from >= to {
            return 0;
        }
        let mid = self.implied_done_until.clamp(from, to);
        // Below `mid` only the offsets with a "delivered" fact are not done...
        let below = self
            .known
            .range(from..mid)
            .filter(|(_, k)| **k != Known::Done)
            .count() as u64;
        // ...at or above it, all but those with a "done" fact.
        let done_above = self
            .known
            .range(mid..to)
            .filter(|(_, k)| **k == Known::Done)
            .count() as u64;
        below + (to - mid) - done_above
    }

    // ------------------------------------------------------------------ internals

    /// Messages whose time to live passed while ready or delayed go to the dead-letter queue
    /// (reason `expired`). One in flight stays leased: its ack still counts; if it comes back
    /// (nack, lease timeout) it is dead-lettered then (`requeue`).
    fn expire(&mut self, now_ms: i64) {
        while let Some(&(at, o)) = self.expiring.first() {
            if at > now_ms {
                break;
            }
            self.expiring.pop_first();
            let Some(e) = self.entries.get_mut(&o) else {
                continue;
            };
            match e.status {
                Status::Ready => {
                    self.ready[usize::from(e.level)].remove(&o);
                }
                Status::Delayed { ready_at_ms } => {
                    self.delayed.remove(&(ready_at_ms, o));
                }
                Status::InFlight { .. } | Status::DeadPending(_) => continue,
            }
            e.status = Status::DeadPending(DeadReason::Expired);
            self.dead_pending.insert(o);
        }
    }

    fn check_lease(&self, r: Receipt) -> Result<i64, LeaseError> {
        if r.offset < self.floor {
            return Err(LeaseError::Done);
        }
        if r.offset >= self.scanned {
            return Err(LeaseError::Unknown);
        }
        match self.entries.get(&r.offset) {
            None => Err(LeaseError::Done),
            Some(e) => match e.status {
                Status::InFlight { deadline_ms } if e.attempts == r.attempt => Ok(deadline_ms),
                _ => Err(LeaseError::NotLeased),
            },
        }
    }

    /// After a nack or an expired lease (the deadline is already out of `deadlines`).
    fn requeue(
        &mut self,
        o: u64,
        delay_ms: Option<u64>,
        now_ms: i64,
        reason: DeadReason,
    ) -> Option<i64> {
        let max = self.settings.max_deliveries;
        let (base, cap) = (self.settings.backoff_base_ms, self.settings.backoff_max_ms);
        let e = self.entries.get_mut(&o)?;
        if e.expires_at_ms <= now_ms {
            e.status = Status::DeadPending(DeadReason::Expired);
            self.dead_pending.insert(o);
            return None;
        }
        if e.attempts >= max {
            e.status = Status::DeadPending(reason);
            self.dead_pending.insert(o);
            return None;
        }
        let delay = delay_ms.unwrap_or_else(|| backoff_ms(base, cap, e.attempts));
        if delay == 0 {
            e.status = Status::Ready;
            let level = e.level;
            self.make_ready(o, level);
            return Some(now_ms);
        }
        let ready_at_ms = now_ms.saturating_add(delay.min(i64::MAX as u64) as i64);
        e.status = Status::Delayed { ready_at_ms };
        self.delayed.insert((ready_at_ms, o));
        Some(ready_at_ms)
    }

    fn make_ready(&mut self, o: u64, level: u8) {
        let l = usize::from(level);
        if self.ready[l].is_empty() {
            // A level that was idle rejoins at the current pass: no burst for past idleness.
            let current = (0..self.ready.len())
                .filter(|&i| !self.ready[i].is_empty())
                .map(|i| self.pass[i])
                .min();
            if let Some(c) = current {
                self.pass[l] = self.pass[l].max(c);
            }
        }
        self.ready[l].insert(o);
    }

    /// The non-empty level with the lowest pass; ties go to the higher level. Strict: the
    /// highest non-empty level.
    fn pick_level(&self) -> Option<usize> {
        if self.settings.strict_priority {
            return (0..self.ready.len())
                .rev()
                .find(|&l| !self.ready[l].is_empty());
        }
        (0..self.ready.len())
            .rev()
            .filter(|&l| !self.ready[l].is_empty())
            .min_by_key(|&l| self.pass[l])
    }

    fn remove(&mut self, o: u64) {
        let Some(e) = self.entries.remove(&o) else {
            return;
        };
        if e.expires_at_ms != i64::MAX {
            self.expiring.remove(&(e.expires_at_ms, o));
        }
        match e.status {
            Status::Ready => {
                self.ready[usize::from(e.level)].remove(&o);
            }
            Status::Delayed { ready_at_ms } => {
                self.delayed.remove(&(ready_at_ms, o));
            }
            Status::InFlight { deadline_ms } => {
                self.deadlines.remove(&(deadline_ms, o));
            }
            Status::DeadPending(_) => {
                self.dead_pending.remove(&o);
            }
        }
    }

    fn advance_floor(&mut self) {
        let new_floor = self.entries.keys().next().copied().unwrap_or(self.scanned);
        if new_floor > self.floor {
            self.floor = new_floor;
            // Facts below the floor can never matter again.
            self.known = self.known.split_off(&new_floor);
        }
    }
}

/// When a message may first be delivered and when it expires, from its `delay-ms` and
/// `ttl-ms` headers and its timestamp (docs/semantics.md, "Delayed messages and expiry").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Not delivered before this time (0: at once).
    pub not_before_ms: i64,
    /// Dead-lettered (reason `expired`) at this time unless acked; `i64::MAX`: never.
    pub expires_at_ms: i64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            not_before_ms: 0,
            expires_at_ms: i64::MAX,
        }
    }
}

impl Timing {
    /// From a message's timestamp and its `delay-ms` / `ttl-ms` header values (if any).
    pub fn from_message(timestamp_ms: i64, delay_ms: Option<u64>, ttl_ms: Option<u64>) -> Self {
        let after = |d: u64| timestamp_ms.saturating_add(i64::try_from(d).unwrap_or(i64::MAX));
        Timing {
            not_before_ms: delay_ms.map_or(0, after),
            expires_at_ms: ttl_ms.map_or(i64::MAX, after),
        }
    }
}

/// Weight of a priority level: `PRIORITY_WEIGHT_RATIO ^ level`.
fn weight(level: usize) -> u64 {
    PRIORITY_WEIGHT_RATIO.pow(level as u32)
}

/// Exponential backoff before delivery `attempts + 1`: `base * 2^(attempts-1)`, capped.
pub fn backoff_ms(base_ms: u64, max_ms: u64, attempts: u32) -> u64 {
    let shift = attempts.saturating_sub(1).min(40);
    base_ms.saturating_mul(1u64 << shift).min(max_ms)
}

#[cfg(test)]
mod tests;
