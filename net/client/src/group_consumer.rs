//! [`GroupConsumer`]: a member of a consumer group (docs/semantics.md, "Consumer groups").
//!
//! ```text
//!  heartbeat thread ── Heartbeat(owned) every interval (faster while partitions are pending)
//!        │             rejoins by itself when the coordinator forgot the member
//!        ▼ assignment (bounded channel; the newest wins)
//!  poll()/poll_async() ── reconcile: revoked partitions are committed (auto-commit) and
//!        │                unsubscribed; new ones start at the committed offset, else at
//!        │                `reset` (earliest | latest | timestamp)
//!        ▼
//!  Consumer (server-push subscriptions, credits)  ── records, per-partition order
//! ```
//! Delivery is **at least once**: with `auto_commit`, the offsets committed at the start of a
//! poll (every `auto_commit_interval`), on a revocation and on close cover only records the
//! application received before that poll, i.e. records it processed. A crash after processing
//! and before the next commit redelivers those records to the partition's next owner. Manual
//! commits ([`GroupConsumer::commit`]) move that point under the application's control.
//!
//! Liveness: the heartbeat thread keeps the member alive while the application is inside a
//! poll or polled within `max_poll_interval`; an application stuck longer stops heartbeating,
//! so its partitions move to others after the session timeout.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use futures_lite::future::block_on;
use tracing::{debug, warn};

use super::consumer::{Consumer, ConsumerConfig, ConsumerRecord};
use super::error::ClientError;
use super::message::Deduplicator;
use super::pool::Client;
use crate::protocol::{CommitOffset, GroupAssignment, OffsetSpec, code};

/// What a [`GroupConsumer`] promises about each record (docs/semantics.md, "Delivery
/// guarantees").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Guarantee {
    /// A record's offset is committed before the record is handed out: a crash while
    /// processing it loses it, nothing is ever delivered twice.
    AtMostOnce,
    /// Offsets are committed after the application had the records (the default): a crash
    /// redelivers what followed the last commit, nothing is lost.
    #[default]
    AtLeastOnce,
    /// At least once, and redeliveries within the last `window` records are dropped by
    /// message id ([`super::Deduplicator`]); with an idempotent producer the log holds no
    /// duplicates either. Across a consumer crash the application's own store must remember
    /// the ids it applied (see `Deduplicator`).
    EffectivelyOnce { window: usize },
}

/// Settings of a [`GroupConsumer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupConsumerConfig {
    pub group: String,
    pub topic: String,
    /// The member is dropped, and its partitions reassigned, after this long without a
    /// heartbeat (a crashed process, a partition, a stuck application).
    pub session_timeout: Duration,
    /// Commit consumed positions at the start of a poll, at most this often, and on revocation
    /// and close.
    pub auto_commit: bool,
    pub auto_commit_interval: Duration,
    /// Where a partition without a committed offset starts (`Earliest`, `Latest`, a
    /// `Timestamp`; `At` is taken as-is for every such partition).
    pub reset: OffsetSpec,
    /// Longest gap between polls before the member stops heartbeating.
    pub max_poll_interval: Duration,
    pub guarantee: Guarantee,
    pub consumer: ConsumerConfig,
}

impl GroupConsumerConfig {
    pub fn new(group: impl Into<String>, topic: impl Into<String>) -> Self {
        GroupConsumerConfig {
            group: group.into(),
            topic: topic.into(),
            session_timeout: Duration::from_secs(10),
            auto_commit: true,
            auto_commit_interval: Duration::from_secs(1),
            reset: OffsetSpec::Latest,
            max_poll_interval: Duration::from_secs(300),
            guarantee: Guarantee::AtLeastOnce,
            consumer: ConsumerConfig::default(),
        }
    }
}

/// Heartbeats sent while a partition is pending (another member is releasing it).
const PENDING_HEARTBEAT: Duration = Duration::from_millis(50);
/// Slice of a blocking poll after which assignment changes are looked at.
const POLL_SLICE: Duration = Duration::from_millis(50);
/// Assignments queued from the heartbeat thread (only the newest matters).
const ASSIGNMENTS_QUEUED_MAX: usize = 16;
/// Resubscriptions of a partition whose subscription ended, per poll.
const RESUBSCRIBE_MAX: u32 = 3;

struct Shared {
    group: String,
    topic: String,
    session_timeout_ms: u32,
    max_poll_interval: Duration,
    /// (member id, generation) the heartbeats speak for.
    member: Mutex<(String, u32)>,
    /// Partitions the application side consumes.
    owned: Mutex<Vec<u32>>,
    last_poll: Mutex<Instant>,
    /// Inside poll: the application is waiting for records, so it is alive.
    polling: AtomicBool,
    stop: AtomicBool,
}

/// Marks the application as inside a poll while it lives (also when a poll future is dropped).
struct Polling<'a>(&'a Shared);

impl<'a> Polling<'a> {
    fn start(shared: &'a Shared) -> Self {
        *lock(&shared.last_poll) = Instant::now();
        shared.polling.store(true, Ordering::Release);
        Polling(shared)
    }
}

impl Drop for Polling<'_> {
    fn drop(&mut self) {
        *lock(&self.0.last_poll) = Instant::now();
        self.0.polling.store(false, Ordering::Release);
    }
}

/// A consumer-group member (see the module doc). `Send`: move it to the consuming thread or
/// task. Dropping it stops heartbeating and leaves the group without committing; call
/// [`GroupConsumer::close`] to commit first.
pub struct GroupConsumer {
    client: Client,
    config: GroupConsumerConfig,
    consumer: Consumer,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    nudge: flume::Sender<()>,
    assignments: flume::Receiver<GroupAssignment>,
    generation: u32,
    member_id: String,
    /// Owned partition -> offset of the next record to hand out.
    positions: BTreeMap<u32, u64>,
    /// Positions as last committed.
    committed: BTreeMap<u32, u64>,
    last_commit: Instant,
    dedup: Option<Deduplicator>,
    /// An assignment whose reconciliation failed (e.g. the offset fetch timed out): retried on
    /// the next poll, since the heartbeat thread forwards only changes.
    unapplied: Option<GroupAssignment>,
    /// Owned partitions whose subscription ended and could not be resumed yet (the server was
    /// unreachable): resumed at their position on later polls.
    detached: BTreeSet<u32>,
}

impl std::fmt::Debug for GroupConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupConsumer")
            .field("group", &self.config.group)
            .field("member_id", &self.member_id)
            .field("generation", &self.generation)
            .field("positions", &self.positions)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl GroupConsumer {
    /// Joins the group; partitions are taken on the first poll.
    pub fn new(client: Client, config: GroupConsumerConfig) -> Result<GroupConsumer, ClientError> {
        block_on(Self::new_async(client, config))
    }

    pub async fn new_async(
        client: Client,
        config: GroupConsumerConfig,
    ) -> Result<GroupConsumer, ClientError> {
        let session_timeout_ms = u32::try_from(config.session_timeout.as_millis())
            .map_err(|_| ClientError::InvalidArgument("session timeout too long".into()))?;
        // The group consumer resumes lost subscriptions itself (`recover`), within the group's
        // protocol: its inner consumer reports them at once.
        let inner = super::consumer::ConsumerConfig {
            resubscribe_timeout: Duration::ZERO,
            ..config.consumer.clone()
        };
        let consumer = Consumer::new(client.clone(), inner)?;
        let joined = client
            .join_group_async(&config.group, &config.topic, session_timeout_ms)
            .await?;
        debug!(group = %config.group, member = %joined.member_id, generation = joined.generation, "joined");
        let shared = Arc::new(Shared {
            group: config.group.clone(),
            topic: config.topic.clone(),
            session_timeout_ms,
            max_poll_interval: config.max_poll_interval,
            member: Mutex::new((joined.member_id.clone(), joined.generation)),
            owned: Mutex::new(Vec::new()),
            last_poll: Mutex::new(Instant::now()),
            polling: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        });
        let (nudge, nudged) = flume::bounded(1);
        let (assign_tx, assignments) = flume::bounded(ASSIGNMENTS_QUEUED_MAX);
        let _ = assign_tx.try_send(joined.clone());
        let thread = {
            let (client, shared) = (client.clone(), shared.clone());
            let interval = Duration::from_millis(u64::from(joined.heartbeat_interval_ms.max(1)));
            std::thread::Builder::new()
                .name("shardline-heartbeat".into())
                .spawn(move || heartbeat_loop(&client, &shared, &nudged, &assign_tx, interval))
                .map_err(|e| ClientError::InvalidArgument(format!("cannot spawn: {e}")))?
        };
        let dedup = match config.guarantee {
            Guarantee::EffectivelyOnce { window } => Some(Deduplicator::new(window)),
            _ => None,
        };
        Ok(GroupConsumer {
            client,
            config,
            consumer,
            shared,
            thread: Some(thread),
            nudge,
            assignments,
            generation: joined.generation,
            member_id: joined.member_id,
            positions: BTreeMap::new(),
            committed: BTreeMap::new(),
            last_commit: Instant::now(),
            dedup,
            unapplied: None,
            detached: BTreeSet::new(),
        })
    }

    pub fn member_id(&self) -> &str {
        &self.member_id
    }

    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// Partitions consumed now, with the offset of the next record each will hand out.
    pub fn positions(&self) -> BTreeMap<u32, u64> {
        self.positions.clone()
    }

    /// The next record of any owned partition, waiting up to `timeout`.
    pub fn poll(&mut self, timeout: Duration) -> Result<Option<ConsumerRecord>, ClientError> {
        let deadline = Instant::now() + timeout;
        let shared = self.shared.clone();
        let _polling = Polling::start(&shared);
        block_on(self.before_poll())?;
        loop {
            let now = Instant::now();
            let slice = deadline.saturating_duration_since(now).min(POLL_SLICE);
            block_on(self.reattach());
            let got = if self.attached() == 0 {
                match self.assignments.recv_timeout(slice) {
                    Ok(a) => {
                        block_on(self.reconcile(a))?;
                        None
                    }
                    Err(_) => None,
                }
            } else {
                match self.consumer.poll(slice) {
                    Ok(r) => r,
                    Err(e) => {
                        block_on(self.recover(e))?;
                        None
                    }
                }
            };
            if let Some(r) = got.and_then(|r| self.take(r)) {
                block_on(self.before_handing_out(&r))?;
                return Ok(Some(r));
            }
            block_on(self.reconcile_latest())?;
            if Instant::now() >= deadline {
                return Ok(None);
            }
        }
    }

    /// The next record, however long it takes; assignment changes are applied meanwhile.
    pub async fn poll_async(&mut self) -> Result<ConsumerRecord, ClientError> {
        let shared = self.shared.clone();
        let _polling = Polling::start(&shared);
        self.before_poll().await?;
        loop {
            enum Event {
                Record(Result<ConsumerRecord, ClientError>),
                Assignment(GroupAssignment),
                Retry,
            }
            self.reattach().await;
            let event = if self.attached() == 0 {
                let assignment = async {
                    match self.assignments.recv_async().await {
                        Ok(a) => Some(Event::Assignment(a)),
                        Err(_) => None,
                    }
                };
                // While detached partitions wait, look at them again after a slice.
                let retry = async {
                    if self.detached.is_empty() {
                        std::future::pending::<()>().await;
                    }
                    let (tx, rx) = flume::bounded::<()>(1);
                    std::thread::spawn(move || {
                        std::thread::sleep(POLL_SLICE);
                        let _ = tx.send(());
                    });
                    let _ = rx.recv_async().await;
                };
                let event = futures_lite::future::or(assignment, async {
                    retry.await;
                    Some(Event::Retry)
                })
                .await;
                match event {
                    Some(e) => e,
                    None => {
                        return Err(ClientError::Closed {
                            what: "group consumer",
                        });
                    }
                }
            } else {
                let assignments = self.assignments.clone();
                let record = async { Event::Record(self.consumer.poll_async().await) };
                let assigned = async {
                    match assignments.recv_async().await {
                        Ok(a) => Event::Assignment(a),
                        Err(_) => std::future::pending().await,
                    }
                };
                futures_lite::future::or(record, assigned).await
            };
            match event {
                Event::Record(Ok(r)) => {
                    if let Some(r) = self.take(r) {
                        self.before_handing_out(&r).await?;
                        return Ok(r);
                    }
                }
                Event::Record(Err(e)) => self.recover(e).await?,
                Event::Assignment(a) => self.reconcile(a).await?,
                Event::Retry => {}
            }
        }
    }

    /// Records the position of a record handed out; drops records of partitions given up
    /// and, effectively-once, records already seen.
    fn take(&mut self, r: ConsumerRecord) -> Option<ConsumerRecord> {
        let position = self.positions.get_mut(&r.partition)?;
        if r.offset < *position {
            return None;
        }
        *position = r.offset + 1;
        if let Some(d) = &mut self.dedup
            && !d.is_new(&r)
        {
            return None;
        }
        Some(r)
    }

    /// At most once: the record's position is durable before the application sees it (if the
    /// commit fails, the record is dropped, never delivered).
    async fn before_handing_out(&mut self, r: &ConsumerRecord) -> Result<(), ClientError> {
        if self.config.guarantee == Guarantee::AtMostOnce {
            self.commit_positions(Some(&[r.partition])).await?;
        }
        Ok(())
    }

    async fn before_poll(&mut self) -> Result<(), ClientError> {
        if self.config.auto_commit && self.last_commit.elapsed() >= self.config.auto_commit_interval
        {
            self.commit_positions(None).await?;
        }
        self.reconcile_latest().await
    }

    /// Commits the position of every owned partition (records handed out before this call).
    pub fn commit(&mut self) -> Result<(), ClientError> {
        block_on(self.commit_async())
    }

    pub async fn commit_async(&mut self) -> Result<(), ClientError> {
        self.commit_positions(None).await
    }

    /// Commits `partitions` (all owned ones when `None`) whose position moved since the last
    /// commit.
    async fn commit_positions(&mut self, partitions: Option<&[u32]>) -> Result<(), ClientError> {
        self.last_commit = Instant::now();
        let offsets: Vec<CommitOffset> = self
            .positions
            .iter()
            .filter(|(p, _)| partitions.is_none_or(|only| only.contains(p)))
            .filter(|(p, o)| self.committed.get(p) != Some(o))
            .map(|(p, o)| CommitOffset {
                partition: *p,
                offset: *o,
                metadata: String::new(),
            })
            .collect();
        if offsets.is_empty() {
            return Ok(());
        }
        let done: Vec<(u32, u64)> = offsets.iter().map(|c| (c.partition, c.offset)).collect();
        self.client
            .commit_offsets_async(
                &self.config.group,
                &self.config.topic,
                &self.member_id,
                self.generation,
                offsets,
            )
            .await?;
        self.committed.extend(done);
        Ok(())
    }

    async fn reconcile_latest(&mut self) -> Result<(), ClientError> {
        let mut latest = self.unapplied.take();
        while let Ok(a) = self.assignments.try_recv() {
            latest = Some(a);
        }
        match latest {
            Some(a) => self.reconcile(a).await,
            None => Ok(()),
        }
    }

    /// Applies an assignment: gives up what is no longer ours, takes up what is new.
    async fn reconcile(&mut self, a: GroupAssignment) -> Result<(), ClientError> {
        let mut latest = a;
        while let Ok(a) = self.assignments.try_recv() {
            latest = a;
        }
        let a = latest;
        self.unapplied = Some(a.clone());
        self.apply(&a).await?;
        self.unapplied = None;
        Ok(())
    }

    async fn apply(&mut self, a: &GroupAssignment) -> Result<(), ClientError> {
        // A new member id: the old membership expired (the member stopped polling, or the
        // server lost the group in a restart) and its partitions may have been consumed and
        // committed further by others since. Nothing of it is kept: every partition of the new
        // assignment starts at the group's committed offset.
        let rejoined = a.member_id != self.member_id;
        let revoked: Vec<u32> = self
            .positions
            .keys()
            .copied()
            .filter(|p| rejoined || !a.partitions.contains(p))
            .collect();
        if !revoked.is_empty()
            && self.config.auto_commit
            && !rejoined
            && let Err(e) = self.commit_positions(Some(&revoked)).await
        {
            warn!(group = %self.config.group, error = %e, "commit on revocation failed; the next owner may redeliver");
        }
        for p in &revoked {
            let _ = self
                .consumer
                .unsubscribe_async(&self.config.topic, *p)
                .await;
            self.positions.remove(p);
            self.committed.remove(p);
            self.detached.remove(p);
        }
        self.member_id.clone_from(&a.member_id);
        self.generation = a.generation;
        let added: Vec<u32> = a
            .partitions
            .iter()
            .copied()
            .filter(|p| !self.positions.contains_key(p))
            .collect();
        if !added.is_empty() {
            let committed = self
                .client
                .fetch_offsets_async(&self.config.group, &self.config.topic)
                .await?;
            for p in &added {
                let start = committed
                    .iter()
                    .find(|c| c.partition == *p)
                    .map(|c| c.offset);
                self.start(*p, start).await?;
            }
        }
        *lock(&self.shared.owned) = self.positions.keys().copied().collect();
        if !revoked.is_empty() || !added.is_empty() {
            debug!(group = %self.config.group, generation = a.generation, ?revoked, ?added, "rebalanced");
            let _ = self.nudge.try_send(());
        }
        Ok(())
    }

    /// Subscribes partition `p` from its committed offset, else from the reset policy (also
    /// when the committed offset fell out of the log through retention).
    async fn start(&mut self, p: u32, committed: Option<u64>) -> Result<(), ClientError> {
        let topic = self.config.topic.clone();
        let info = match committed {
            Some(o) => {
                match self
                    .consumer
                    .subscribe_async(&topic, p, OffsetSpec::At(o))
                    .await
                {
                    Err(e) if e.code() == Some(code::OFFSET_OUT_OF_RANGE) => {
                        warn!(topic = %topic, partition = p, offset = o, "committed offset out of range; using the reset policy");
                        self.consumer
                            .subscribe_async(&topic, p, self.config.reset)
                            .await?
                    }
                    other => other?,
                }
            }
            None => {
                self.consumer
                    .subscribe_async(&topic, p, self.config.reset)
                    .await?
            }
        };
        self.positions.insert(p, info.start_offset);
        if let Some(o) = committed {
            self.committed.insert(p, o);
        }
        Ok(())
    }

    /// A subscription ended (connection lost, server restart): resume it where it was.
    async fn recover(&mut self, e: ClientError) -> Result<(), ClientError> {
        let ClientError::SubscriptionEnded { partition, .. } = &e else {
            return Err(e);
        };
        let p = *partition;
        let Some(position) = self.positions.get(&p).copied() else {
            return Ok(());
        };
        let _ = self.consumer.unsubscribe_async(&self.config.topic, p).await;
        for attempt in 0..RESUBSCRIBE_MAX {
            match self
                .consumer
                .subscribe_async(&self.config.topic, p, OffsetSpec::At(position))
                .await
            {
                Ok(_) => return Ok(()),
                Err(err) => {
                    debug!(partition = p, attempt, error = %err, "resubscribe failed");
                }
            }
        }
        // Still owned: resumed at its position by a later poll (a server that restarts takes
        // longer than a few attempts). Giving up here would leave the partition owned and never
        // consumed.
        self.detached.insert(p);
        Ok(())
    }

    /// Owned partitions with a live subscription.
    fn attached(&self) -> usize {
        self.positions.len() - self.detached.len()
    }

    /// One attempt to resume each detached partition at its position.
    async fn reattach(&mut self) {
        let detached: Vec<u32> = self.detached.iter().copied().collect();
        for p in detached {
            let Some(position) = self.positions.get(&p).copied() else {
                self.detached.remove(&p);
                continue;
            };
            match self
                .consumer
                .subscribe_async(&self.config.topic, p, OffsetSpec::At(position))
                .await
            {
                Ok(_) => {
                    self.detached.remove(&p);
                }
                Err(err) => {
                    debug!(partition = p, error = %err, "resubscribe failed; retried on the next poll");
                    return;
                }
            }
        }
    }

    /// Moves partition `p` (which must be owned) to `spec`: replay from an offset, the start,
    /// or a point in time.
    pub fn seek(&mut self, p: u32, spec: OffsetSpec) -> Result<u64, ClientError> {
        block_on(self.seek_async(p, spec))
    }

    pub async fn seek_async(&mut self, p: u32, spec: OffsetSpec) -> Result<u64, ClientError> {
        if !self.positions.contains_key(&p) {
            return Err(ClientError::InvalidArgument(format!(
                "partition {p} is not assigned to this member"
            )));
        }
        let topic = self.config.topic.clone();
        if !self.detached.contains(&p) {
            self.consumer.unsubscribe_async(&topic, p).await?;
        }
        let info = match self.consumer.subscribe_async(&topic, p, spec).await {
            Ok(info) => info,
            Err(e) => {
                // Resumed at its old position later, like any subscription that ended.
                self.detached.insert(p);
                return Err(e);
            }
        };
        self.detached.remove(&p);
        self.positions.insert(p, info.start_offset);
        Ok(info.start_offset)
    }

    /// Commits (with auto-commit), then leaves the group: its partitions move at once.
    pub fn close(mut self) -> Result<(), ClientError> {
        block_on(self.close_inner())
    }

    pub async fn close_async(mut self) -> Result<(), ClientError> {
        self.close_inner().await
    }

    async fn close_inner(&mut self) -> Result<(), ClientError> {
        let committed = if self.config.auto_commit {
            self.commit_positions(None).await
        } else {
            Ok(())
        };
        // The heartbeat thread leaves the group as it stops.
        self.shared.stop.store(true, Ordering::Release);
        let _ = self.nudge.try_send(());
        if let Some(t) = self.thread.take() {
            let (tx, rx) = flume::bounded(1);
            std::thread::spawn(move || {
                let _ = tx.send(t.join());
            });
            let _ = rx.recv_async().await;
        }
        self.positions.clear();
        committed
    }
}

impl Drop for GroupConsumer {
    fn drop(&mut self) {
        // Never blocks: the heartbeat thread leaves the group and exits on its own.
        self.shared.stop.store(true, Ordering::Release);
        let _ = self.nudge.try_send(());
    }
}

/// The heartbeat thread: keeps the member alive and forwards assignment changes. Bounded: one
/// heartbeat per interval (or per nudge), until stopped.
fn heartbeat_loop(
    client: &Client,
    shared: &Shared,
    nudged: &flume::Receiver<()>,
    assignments: &flume::Sender<GroupAssignment>,
    mut interval: Duration,
) {
    // The member id is part of it: a member that rejoined a new coordinator (a restarted
    // server, a cluster's coordinator moving) may get the same generation and partitions
    // under a new id, and the application side must learn the new id.
    let mut last_sent: Option<(String, u32, Vec<u32>)> = None;
    loop {
        let _ = nudged.recv_timeout(interval);
        if shared.stop.load(Ordering::Acquire) {
            let (member_id, _) = lock(&shared.member).clone();
            if let Err(e) = client.leave_group(&shared.group, &member_id) {
                debug!(group = %shared.group, error = %e, "leave failed; the session will expire");
            }
            return;
        }
        let alive = shared.polling.load(Ordering::Acquire)
            || lock(&shared.last_poll).elapsed() <= shared.max_poll_interval;
        if !alive {
            // The application stopped polling: let the session expire so others take over.
            interval = Duration::from_millis(u64::from(shared.session_timeout_ms));
            continue;
        }
        let (member_id, _) = lock(&shared.member).clone();
        let owned = lock(&shared.owned).clone();
        let answer = match client.heartbeat(&shared.group, &member_id, &owned) {
            Err(e) if e.code() == Some(code::UNKNOWN_MEMBER) => {
                debug!(group = %shared.group, member = %member_id, "member expired; rejoining");
                client.join_group(&shared.group, &shared.topic, shared.session_timeout_ms)
            }
            other => other,
        };
        match answer {
            Ok(a) => {
                *lock(&shared.member) = (a.member_id.clone(), a.generation);
                let base = Duration::from_millis(u64::from(a.heartbeat_interval_ms.max(1)));
                interval = if a.pending.is_empty() {
                    base
                } else {
                    base.min(PENDING_HEARTBEAT)
                };
                let seen = Some((a.member_id.clone(), a.generation, a.partitions.clone()));
                if seen != last_sent {
                    last_sent = seen;
                    let _ = assignments.try_send(a);
                }
            }
            Err(e) => {
                warn!(group = %shared.group, error = %e, "heartbeat failed");
                interval = interval.min(Duration::from_millis(200));
            }
        }
    }
}
