//! Consumer-group members under faults: a few [`GroupConsumer`]s of one group consume the
//! torture topic with auto-commit, and every record they are handed goes through a
//! [`GroupTracker`]:
//!
//! - **content**: the value is the one its identity derives (see [`super::ledger::value`]) on
//!   the partition it came from (the client checked the batch CRC);
//! - **order and contiguity per member**: within one membership (member id, generation) a
//!   member's records of a partition are contiguous offsets with per-producer sequences
//!   strictly increasing; a member that (re)starts a partition starts at or below the group's
//!   delivered point (its committed offset), never beyond it: the group never skips a record;
//! - **committed offsets** (read back with OffsetFetch after every fault) never move backwards
//!   and never pass what was delivered;
//! - at the end of the run, **every acknowledged record was delivered to the group** at least
//!   once (a bitmap of delivered offsets per partition, against the ledger).
//!
//! Faults on top of the server's: a member that stops polling longer than its max poll interval
//! plus the session timeout (its partitions move to the others; when it wakes up its commits
//! are fenced), and a SIGSTOP of the server longer than the session timeout (every member
//! expires and must rejoin). Before a torn tail (a simulated power loss that may take back
//! data the group already consumed) the members leave; afterwards the harness moves a committed
//! offset that points past the new log end back to it, as an operator would, and forgets what
//! was delivered beyond it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use shardline_net::client::{Client, CommitOffset, GroupConsumer, GroupConsumerConfig, OffsetSpec};

use super::ledger::{self, PartitionLedger};
use super::{Shared, TOPIC, lock};

pub const GROUP: &str = "torture-group";
/// Short, so that a paused server or member outlives it (the faults' point).
pub const SESSION_TIMEOUT: Duration = Duration::from_millis(2000);
pub const MAX_POLL_INTERVAL: Duration = Duration::from_millis(1000);
/// How long a stalled member stops polling: past its max poll interval and its session.
pub const MEMBER_PAUSE: Duration = Duration::from_millis(4000);

/// Offsets delivered to the group, per partition.
#[derive(Debug, Default, Clone)]
struct Bitmap(Vec<u64>);

impl Bitmap {
    fn set(&mut self, o: u64) {
        let (w, b) = ((o / 64) as usize, o % 64);
        if self.0.len() <= w {
            self.0.resize(w + 1, 0);
        }
        self.0[w] |= 1 << b;
    }

    fn get(&self, o: u64) -> bool {
        let (w, b) = ((o / 64) as usize, o % 64);
        self.0.get(w).is_some_and(|x| x & (1 << b) != 0)
    }

    /// Forgets every offset at or above `from`.
    fn truncate(&mut self, from: u64) {
        let w = (from / 64) as usize;
        if w < self.0.len() {
            self.0[w] &= (1u64 << (from % 64)) - 1;
            self.0.truncate(w + 1);
        }
    }
}

/// One member's current run on a partition.
#[derive(Debug, Clone)]
struct Run {
    membership: (String, u32),
    next: u64,
    last_seq: HashMap<u32, u64>,
}

/// The group's checks (pure: fed records and committed offsets, returns violations).
#[derive(Debug, Default)]
pub struct GroupTracker {
    delivered: Vec<Bitmap>,
    /// Per partition: one past the highest offset delivered to the group.
    next: Vec<u64>,
    /// Per partition: the highest committed offset read back.
    committed: Vec<u64>,
    /// (member index, partition) -> run.
    runs: HashMap<(usize, u32), Run>,
    pub records: u64,
    /// Records delivered again (below the group's delivered point): at-least-once at work.
    pub redelivered: u64,
    pub commits_checked: u64,
    /// Torn tails so far (committed offsets read before one are not compared after it).
    pub torn_count: u64,
}

impl GroupTracker {
    pub fn new(partitions: u32) -> GroupTracker {
        GroupTracker {
            delivered: vec![Bitmap::default(); partitions as usize],
            next: vec![0; partitions as usize],
            committed: vec![0; partitions as usize],
            ..GroupTracker::default()
        }
    }

    /// One record handed to `member` (whose membership is `membership` right now).
    pub fn record(
        &mut self,
        member: usize,
        membership: (&str, u32),
        p: u32,
        offset: u64,
        value: &[u8],
    ) -> Vec<String> {
        let mut v = Vec::new();
        self.records += 1;
        let Some(next) = self.next.get(p as usize).copied() else {
            v.push(format!("[group] record of unknown partition {p}"));
            return v;
        };
        let identity = ledger::identity(value)
            .filter(|&(prod, part, seq)| part == p && value == ledger::value(prod, part, seq));
        let Some((producer, _, seq)) = identity else {
            v.push(format!(
                "[group] member {member} partition {p} offset {offset}: value is not the \
                 record its identity names"
            ));
            return v;
        };
        let membership = (membership.0.to_string(), membership.1);
        let run = self.runs.get_mut(&(member, p));
        match run {
            Some(r) if r.next == offset => {
                if r.last_seq
                    .insert(producer, seq)
                    .is_some_and(|prev| prev >= seq)
                {
                    v.push(format!(
                        "[group] member {member} partition {p} offset {offset}: producer \
                         {producer} seq {seq} not after its previous record (duplicate or \
                         reorder)"
                    ));
                }
                r.next = offset + 1;
                r.membership = membership;
            }
            other => {
                if let Some(r) = other
                    && r.membership == membership
                {
                    v.push(format!(
                        "[group] member {member} partition {p}: offset {offset} follows {} \
                         within one membership (gap or reorder)",
                        r.next.saturating_sub(1)
                    ));
                }
                if offset > next {
                    v.push(format!(
                        "[group] member {member} starts partition {p} at {offset}, but the \
                         group was handed only up to {} (records skipped)",
                        next.saturating_sub(1)
                    ));
                }
                self.runs.insert(
                    (member, p),
                    Run {
                        membership,
                        next: offset + 1,
                        last_seq: HashMap::from([(producer, seq)]),
                    },
                );
            }
        }
        if offset < next {
            self.redelivered += 1;
        }
        self.delivered[p as usize].set(offset);
        self.next[p as usize] = next.max(offset + 1);
        v
    }

    /// Committed offsets read back from the server.
    pub fn committed(&mut self, offsets: &[(u32, u64)]) -> Vec<String> {
        let mut v = Vec::new();
        for &(p, o) in offsets {
            let Some(prev) = self.committed.get_mut(p as usize) else {
                v.push(format!(
                    "[group] committed offset for unknown partition {p}"
                ));
                continue;
            };
            self.commits_checked += 1;
            if o < *prev {
                v.push(format!(
                    "[group] partition {p}: committed offset moved back from {} to {o}",
                    *prev
                ));
            }
            if o > self.next[p as usize] {
                v.push(format!(
                    "[group] partition {p}: committed offset {o} beyond what the group was \
                     handed ({})",
                    self.next[p as usize]
                ));
            }
            *prev = (*prev).max(o);
        }
        v
    }

    /// A torn tail cut partition `p` at `log_end`: what the group saw beyond it is gone, and
    /// its committed offset has been moved back to at most `log_end`.
    pub fn torn(&mut self, p: u32, log_end: u64) {
        let i = p as usize;
        self.delivered[i].truncate(log_end);
        self.next[i] = self.next[i].min(log_end);
        self.committed[i] = self.committed[i].min(log_end);
        self.runs.retain(|(_, q), _| *q != p);
        self.torn_count += 1;
    }

    /// Acknowledged records (from the ledger) never delivered to the group: (count, first few).
    pub fn undelivered(&self, p: u32, ledger: &PartitionLedger) -> (u64, Vec<u64>) {
        let mut missing = 0;
        let mut first = Vec::new();
        for (&base, a) in &ledger.acked {
            for o in base..=a.last_offset {
                if !self.delivered[p as usize].get(o) {
                    missing += 1;
                    if first.len() < 5 {
                        first.push(o);
                    }
                }
            }
        }
        (missing, first)
    }
}

/// State the members and the harness share.
pub(super) struct GroupState {
    pub tracker: Mutex<GroupTracker>,
    pub members: usize,
    /// Members leave and wait while set (around a torn tail).
    pub park: AtomicBool,
    pub parked: AtomicU64,
    /// Member index + 1 that should stop polling for [`MEMBER_PAUSE`] (0 = none).
    pub pause_member: AtomicU64,
    pub stop: AtomicBool,
    pub member_starts: AtomicU64,
    pub poll_errors: AtomicU64,
    pub member_pauses: AtomicU64,
    pub memberships: Mutex<std::collections::HashSet<(String, u32)>>,
    pub poll_errors_by_kind: Mutex<std::collections::BTreeMap<String, u64>>,
}

impl GroupState {
    pub(super) fn new(partitions: u32, members: usize) -> GroupState {
        GroupState {
            tracker: Mutex::new(GroupTracker::new(partitions)),
            members,
            park: AtomicBool::new(false),
            parked: AtomicU64::new(0),
            pause_member: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            member_starts: AtomicU64::new(0),
            poll_errors: AtomicU64::new(0),
            member_pauses: AtomicU64::new(0),
            memberships: Mutex::new(std::collections::HashSet::new()),
            poll_errors_by_kind: Mutex::new(std::collections::BTreeMap::new()),
        }
    }
}

#[derive(Debug, Default, Serialize)]
pub struct GroupReport {
    pub members: usize,
    pub records_delivered: u64,
    pub redelivered: u64,
    pub memberships: u64,
    pub member_starts: u64,
    pub member_pauses: u64,
    pub poll_errors: u64,
    /// Poll errors by kind (a fenced commit after a rebalance, a lost connection, ...).
    pub poll_errors_by_kind: std::collections::BTreeMap<String, u64>,
    pub commits_checked: u64,
    pub acked_records_delivered: u64,
    pub acked_records_undelivered: u64,
    pub drain_ms: f64,
}

/// One member thread: joins, polls, checks; leaves and waits while parked; stops polling when
/// told to pause; starts over as a new member after errors that persist.
pub(super) fn member_loop(shared: &Shared, member: usize, via_proxy: bool) {
    let g = &shared.groups;
    let mut consumer: Option<GroupConsumer> = None;
    let mut failing_since: Option<Instant> = None;
    while !g.stop.load(Ordering::Relaxed) {
        if g.park.load(Ordering::Acquire) {
            drop(consumer.take());
            g.parked.fetch_add(1, Ordering::AcqRel);
            while g.park.load(Ordering::Acquire) && !g.stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(10));
            }
            g.parked.fetch_sub(1, Ordering::AcqRel);
            continue;
        }
        if g.pause_member
            .compare_exchange(member as u64 + 1, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            // Keeps its consumer (and the records it holds) but stops polling.
            g.member_pauses.fetch_add(1, Ordering::Relaxed);
            let until = Instant::now() + MEMBER_PAUSE;
            while Instant::now() < until && !g.stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let c = match &mut consumer {
            Some(c) => c,
            None => match new_member(shared, via_proxy) {
                Ok(c) => {
                    g.member_starts.fetch_add(1, Ordering::Relaxed);
                    failing_since = None;
                    consumer.insert(c)
                }
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            },
        };
        match c.poll(Duration::from_millis(100)) {
            Ok(Some(r)) => {
                failing_since = None;
                let membership = (c.member_id().to_string(), c.generation());
                let v = lock(&g.tracker).record(
                    member,
                    (&membership.0, membership.1),
                    r.partition,
                    r.offset,
                    &r.value,
                );
                lock(&g.memberships).insert(membership);
                for v in v {
                    shared.violation(v);
                }
            }
            Ok(None) => failing_since = None,
            Err(e) => {
                let kind = match e.code() {
                    Some(c) => shardline_net::client::code_name(c).to_string(),
                    None => e.to_string().chars().take(48).collect(),
                };
                *lock(&g.poll_errors_by_kind).entry(kind).or_default() += 1;
                // A fenced commit, a lost connection, a server restart: the consumer's heartbeat
                // thread rejoins by itself; start over only if errors persist.
                g.poll_errors.fetch_add(1, Ordering::Relaxed);
                let since = *failing_since.get_or_insert_with(Instant::now);
                // A restarted server listens on a new port: a member that cannot connect is a
                // process that has to be started again with the new address.
                let unreachable = matches!(e, shardline_net::client::ClientError::Connect { .. });
                if unreachable || since.elapsed() > SESSION_TIMEOUT * 2 {
                    consumer = None;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    if let Some(c) = consumer {
        let _ = c.close();
    }
}

fn new_member(shared: &Shared, via_proxy: bool) -> anyhow::Result<GroupConsumer> {
    let client = shared.client(via_proxy)?;
    let mut cfg = GroupConsumerConfig::new(GROUP, TOPIC);
    cfg.session_timeout = SESSION_TIMEOUT;
    cfg.max_poll_interval = MAX_POLL_INTERVAL;
    cfg.auto_commit_interval = Duration::from_millis(200);
    cfg.reset = OffsetSpec::Earliest;
    Ok(GroupConsumer::new(client, cfg)?)
}

/// Reads the committed offsets back and checks them.
pub(super) fn check_committed(shared: &Shared, client: &Client) -> anyhow::Result<()> {
    let torn_count = lock(&shared.groups.tracker).torn_count;
    let offsets: Vec<(u32, u64)> = client
        .fetch_offsets(GROUP, TOPIC)?
        .into_iter()
        .map(|c| (c.partition, c.offset))
        .collect();
    let mut t = lock(&shared.groups.tracker);
    if t.torn_count != torn_count {
        // A torn tail moved offsets back on purpose while these were read.
        return Ok(());
    }
    for v in t.committed(&offsets) {
        shared.violation(v);
    }
    Ok(())
}

/// Reads the committed offsets back every 100 ms while the load runs (between the checks
/// after each fault), so that an offset that moves back and forth again is seen too.
pub(super) fn watch_committed(shared: &Shared) {
    let g = &shared.groups;
    let mut client: Option<Client> = None;
    while !g.stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        if g.park.load(Ordering::Acquire) {
            continue;
        }
        let Some(c) = shared.cached_client(&mut client, false) else {
            continue;
        };
        if check_committed(shared, &c).is_err() {
            client = None;
        }
    }
}

/// Members leave and wait (bounded) before a torn tail.
pub(super) fn park(shared: &Shared) {
    let g = &shared.groups;
    g.park.store(true, Ordering::Release);
    let deadline = Instant::now() + Duration::from_secs(10);
    while (g.parked.load(Ordering::Acquire) as usize) < g.members && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// After a torn tail of partition `p` and the restart: moves a committed offset beyond the new
/// log end back to it (no member is live, so a standalone commit is accepted), tells the
/// tracker, and lets the members rejoin.
pub(super) fn after_torn(shared: &Shared, client: &Client, p: u32) -> anyhow::Result<()> {
    let log_end = client.list_offsets(TOPIC, p, OffsetSpec::Latest)?;
    let committed = client
        .fetch_offsets(GROUP, TOPIC)?
        .into_iter()
        .find(|c| c.partition == p)
        .map(|c| c.offset);
    let result = match committed {
        Some(o) if o > log_end => client
            .commit_offsets(
                GROUP,
                TOPIC,
                "",
                0,
                vec![CommitOffset {
                    partition: p,
                    offset: log_end,
                    metadata: "torture: log end after a torn tail".into(),
                }],
            )
            .map_err(anyhow::Error::from),
        _ => Ok(()),
    };
    lock(&shared.groups.tracker).torn(p, log_end);
    shared.groups.park.store(false, Ordering::Release);
    result
}

/// At the end: waits (bounded) until every acknowledged record of the torture topic was
/// delivered to the group, then reports what was not.
pub(super) fn drain(shared: &Shared, within: Duration) -> GroupReport {
    let t0 = Instant::now();
    let deadline = t0 + within;
    let (mut delivered, mut undelivered);
    let mut firsts: Vec<(u32, Vec<u64>)>;
    loop {
        (delivered, undelivered, firsts) = (0, 0, Vec::new());
        for (p, l) in shared.ledger.iter().enumerate() {
            let l = lock(l);
            let (missing, first) = lock(&shared.groups.tracker).undelivered(p as u32, &l);
            delivered += l.acked_records.saturating_sub(missing);
            undelivered += missing;
            if missing > 0 {
                firsts.push((p as u32, first));
            }
        }
        if undelivered == 0 || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if undelivered > 0 {
        shared.violation(format!(
            "[group] {undelivered} acknowledged records never delivered to the group within \
             {within:?} (partition, first offsets): {firsts:?}"
        ));
    }
    let g = &shared.groups;
    let t = lock(&g.tracker);
    GroupReport {
        members: g.members,
        records_delivered: t.records,
        redelivered: t.redelivered,
        memberships: lock(&g.memberships).len() as u64,
        member_starts: g.member_starts.load(Ordering::Relaxed),
        member_pauses: g.member_pauses.load(Ordering::Relaxed),
        poll_errors: g.poll_errors.load(Ordering::Relaxed),
        poll_errors_by_kind: lock(&g.poll_errors_by_kind).clone(),
        commits_checked: t.commits_checked,
        acked_records_delivered: delivered,
        acked_records_undelivered: undelivered,
        drain_ms: t0.elapsed().as_secs_f64() * 1e3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::torture::ledger::{Acked, value};

    const M: (&str, u32) = ("m1", 1);

    #[test]
    fn contiguous_delivery_and_rising_commits_pass() {
        let mut t = GroupTracker::new(1);
        for o in 0..5u64 {
            assert!(t.record(0, M, 0, o, &value(1, 0, o)).is_empty());
        }
        // Another member takes over at the committed offset and redelivers.
        assert!(t.record(1, ("m2", 2), 0, 3, &value(1, 0, 3)).is_empty());
        assert_eq!(t.redelivered, 1);
        assert!(t.committed(&[(0, 3)]).is_empty());
        assert!(t.committed(&[(0, 5)]).is_empty());
        let mut l = PartitionLedger::default();
        l.acked.insert(
            0,
            Acked {
                last_offset: 4,
                producer: 1,
                seq_base: 0,
            },
        );
        assert_eq!(t.undelivered(0, &l).0, 0);
    }

    #[test]
    fn gaps_skips_bad_values_and_duplicates_are_reported() {
        let mut t = GroupTracker::new(1);
        t.record(0, M, 0, 0, &value(1, 0, 0));
        let v = t.record(0, M, 0, 2, &value(1, 0, 2));
        assert!(v.iter().any(|v| v.contains("gap")), "{v:?}");
        assert!(v.iter().any(|v| v.contains("skipped")), "{v:?}");
        let v = t.record(0, M, 0, 3, &value(1, 0, 2));
        assert!(v.iter().any(|v| v.contains("duplicate")), "{v:?}");
        let mut bad = value(1, 0, 4);
        bad[30] ^= 1;
        let v = t.record(0, M, 0, 4, &bad);
        assert!(v.iter().any(|v| v.contains("not the record")), "{v:?}");
        let v = t.record(0, M, 0, 5, &value(1, 1, 5));
        assert!(v.iter().any(|v| v.contains("not the record")), "{v:?}");
    }

    #[test]
    fn commits_moving_back_or_past_deliveries_are_reported() {
        let mut t = GroupTracker::new(1);
        for o in 0..4u64 {
            t.record(0, M, 0, o, &value(1, 0, o));
        }
        assert!(t.committed(&[(0, 3)]).is_empty());
        let v = t.committed(&[(0, 2)]);
        assert!(v.iter().any(|v| v.contains("moved back")), "{v:?}");
        let v = t.committed(&[(0, 9)]);
        assert!(v.iter().any(|v| v.contains("beyond")), "{v:?}");
    }

    #[test]
    fn undelivered_acknowledged_records_are_found_and_torn_tails_forget() {
        let mut t = GroupTracker::new(1);
        for o in [0u64, 1, 3] {
            t.record(0, M, 0, o, &value(1, 0, o));
        }
        let mut l = PartitionLedger::default();
        l.acked.insert(
            0,
            Acked {
                last_offset: 3,
                producer: 1,
                seq_base: 0,
            },
        );
        assert_eq!(t.undelivered(0, &l), (1, vec![2]));
        t.torn(0, 1);
        assert_eq!(t.undelivered(0, &l).0, 3);
        // After the tear, delivery restarts at the log end without a skip.
        assert!(t.record(2, ("m3", 3), 0, 1, &value(2, 0, 0)).is_empty());
    }
}
