//! Consumer groups and their committed offsets (docs/semantics.md, "Consumer groups").
//!
//! - [`coordinator`]: the membership and assignment state machine (plain data, `now` passed in).
//! - Placement: a group hashes (CRC32C of its name) to one of N *coordinator slots*, N being the
//!   partition count of the internal topic [`OFFSETS_TOPIC`] (= the shard count when it was
//!   created). Slot `i` owns the groups that hash to it and appends their commits to partition
//!   `i`, which the engine places on a shard like any partition.
//! - Durability: a commit is appended to `__offsets` with `acks = durable` and applied in memory
//!   only once fdatasync covered it, then answered. On open, every `__offsets` partition is
//!   replayed; the last record of each key wins (compaction on replay).
//! - Membership is soft state: after a restart members find themselves unknown and rejoin;
//!   committed offsets are what survives.
//!
//! `__offsets` record (docs/storage.md, "Internal topics"):
//! ```text
//! key:   "O1" | u16 group_bytes | group | u16 topic_bytes | topic | u32 partition   (LE)
//! value: u64 offset | i64 commit_time_ms | metadata (UTF-8, rest of the value)
//!        an empty value deletes the key (tombstone)
//! ```

pub mod admin;
pub mod coordinator;
pub(crate) mod replicated;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use bytes::Bytes;

use crate::api::Acks;
use crate::batch::{self, BatchBuilder};
use crate::config::TopicConfig;
use crate::engine::{Engine, FetchRequest};
use crate::error::{Error, Result};

pub use admin::{GroupListing, OffsetReset, ResetTarget};
pub use coordinator::{Group, Member, MemberAssignment, range_assign, validate_group_name};

/// The internal topic holding committed offsets.
pub const OFFSETS_TOPIC: &str = "__offsets";
const KEY_TAG: &[u8; 2] = b"O1";

/// Whether a topic is internal (left out of topic listings, not deletable).
pub fn is_internal(topic: &str) -> bool {
    topic == OFFSETS_TOPIC
}
/// Metadata stored with a commit, at most.
pub const COMMIT_METADATA_BYTES_MAX: usize = 4096;
/// Offsets per commit request, at most.
pub const COMMIT_OFFSETS_MAX: usize = 10_000;

/// A committed offset: the next offset the group will consume in that partition.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Committed {
    pub offset: u64,
    pub metadata: String,
    pub commit_time_ms: i64,
}

/// One offset to commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetCommit {
    pub partition: u32,
    pub offset: u64,
    pub metadata: String,
}

/// A group as described to operators.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GroupDescription {
    pub group: String,
    pub topic: String,
    pub generation: u32,
    pub coordinator_slot: u32,
    pub members: Vec<MemberDescription>,
    /// Per partition, the committed offset (absent: none).
    pub offsets: Vec<(u32, Committed)>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MemberDescription {
    pub member_id: String,
    pub client_id: String,
    pub assigned: Vec<u32>,
    pub owned: Vec<u32>,
    pub last_seen_ms_ago: i64,
}

type OffsetKey = (String, String, u32);

#[derive(Default)]
struct Slot {
    groups: HashMap<String, Group>,
    /// (group, topic, partition) -> committed.
    offsets: BTreeMap<OffsetKey, Committed>,
    /// Groups whose offsets an operator is resetting (admin.rs): joins wait.
    resetting: HashSet<String>,
    /// On a cluster: the leader term of `__offsets` partition this slot's membership belongs
    /// to (a new term, a new coordinator: membership starts empty and members rejoin).
    coordinator_term: u64,
}

/// Every coordinator slot of the engine.
pub struct Groups {
    slots: Vec<Mutex<Slot>>,
    /// `__offsets` is a replicated topic (a cluster): a slot's coordinator is the leader of
    /// its partition, and commits are applied from committed batches (`replicated.rs`).
    replicated: bool,
}

fn now_ms() -> i64 {
    batch::now_us() / 1000
}

pub fn encode_key(group: &str, topic: &str, partition: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(10 + group.len() + topic.len());
    k.extend_from_slice(KEY_TAG);
    k.extend_from_slice(&(group.len() as u16).to_le_bytes());
    k.extend_from_slice(group.as_bytes());
    k.extend_from_slice(&(topic.len() as u16).to_le_bytes());
    k.extend_from_slice(topic.as_bytes());
    k.extend_from_slice(&partition.to_le_bytes());
    k
}

fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if b.len() < n {
        return None;
    }
    let (head, rest) = b.split_at(n);
    *b = rest;
    Some(head)
}

fn take_str(b: &mut &[u8]) -> Option<String> {
    let n = take(b, 2)?;
    let n = u16::from_le_bytes([n[0], n[1]]) as usize;
    String::from_utf8(take(b, n)?.to_vec()).ok()
}

/// Decodes a key; `None` for anything malformed (skipped on replay, never trusted).
pub fn decode_key(mut k: &[u8]) -> Option<OffsetKey> {
    if take(&mut k, 2)? != KEY_TAG {
        return None;
    }
    let group = take_str(&mut k)?;
    let topic = take_str(&mut k)?;
    let p = take(&mut k, 4)?;
    let partition = u32::from_le_bytes([p[0], p[1], p[2], p[3]]);
    k.is_empty().then_some((group, topic, partition))
}

pub fn encode_value(c: &Committed) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + c.metadata.len());
    v.extend_from_slice(&c.offset.to_le_bytes());
    v.extend_from_slice(&c.commit_time_ms.to_le_bytes());
    v.extend_from_slice(c.metadata.as_bytes());
    v
}

/// Decodes a value: `Some(None)` is a tombstone, `None` is malformed.
pub fn decode_value(mut v: &[u8]) -> Option<Option<Committed>> {
    if v.is_empty() {
        return Some(None);
    }
    let o = take(&mut v, 8)?;
    let t = take(&mut v, 8)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(o);
    let offset = u64::from_le_bytes(a);
    a.copy_from_slice(t);
    let commit_time_ms = i64::from_le_bytes(a);
    let metadata = String::from_utf8(v.to_vec()).ok()?;
    Some(Some(Committed {
        offset,
        metadata,
        commit_time_ms,
    }))
}

impl Groups {
    /// The slot (and `__offsets` partition) of a group.
    pub fn slot_of(&self, group: &str) -> u32 {
        crc32c::crc32c(group.as_bytes()) % self.slots.len() as u32
    }

    fn slot(&self, group: &str) -> Result<MutexGuard<'_, Slot>> {
        self.slots[self.slot_of(group) as usize]
            .lock()
            .map_err(|_| Error::Runtime("group coordinator lock poisoned".into()))
    }

    /// The group's slot, on a cluster only if this node coordinates it now (the ready leader
    /// of its `__offsets` partition; else `NotLeader` naming the leader it knows). A new
    /// leader term empties the slot's membership: members of the previous coordinator rejoin.
    fn coordinated_slot(&self, engine: &Engine, group: &str) -> Result<MutexGuard<'_, Slot>> {
        let term = if self.replicated {
            Some(replicated::coordinator_term(engine, self.slot_of(group))?)
        } else {
            None
        };
        let mut slot = self.slot(group)?;
        if let Some(term) = term
            && slot.coordinator_term != term
        {
            slot.groups.clear();
            slot.coordinator_term = term;
        }
        Ok(slot)
    }

    /// Applies a committed `__offsets` batch of `partition` (a cluster: every replica, in
    /// commit order).
    pub(crate) fn apply_committed(&self, partition: u32, batch: &Bytes) -> Result<()> {
        let (_, recs) = batch::decode(batch)?;
        let Some(slot) = self.slots.get(partition as usize) else {
            return Ok(());
        };
        let mut slot = slot
            .lock()
            .map_err(|_| Error::Runtime("group coordinator lock poisoned".into()))?;
        for r in &recs {
            apply(&mut slot, r);
        }
        Ok(())
    }

    /// Ensures `__offsets` exists and replays it. Runs once, while the engine opens.
    pub(crate) fn open(engine: &Engine) -> Result<Groups> {
        let partitions = match engine.route(OFFSETS_TOPIC) {
            Ok(r) => r.shards.len() as u32,
            Err(Error::UnknownTopic(_)) => {
                let n = engine.shard_count() as u32;
                engine
                    .create_topic(OFFSETS_TOPIC, TopicConfig::with_partitions(n))?
                    .shards
                    .len() as u32
            }
            Err(e) => return Err(e),
        };
        let groups = Groups {
            slots: (0..partitions.max(1))
                .map(|_| Mutex::new(Slot::default()))
                .collect(),
            replicated: engine.is_replicated_topic(OFFSETS_TOPIC),
        };
        let mut records = 0u64;
        for p in 0..partitions {
            records += groups.replay_partition(engine, p)?;
        }
        let live: usize = groups
            .slots
            .iter()
            .filter_map(|s| s.lock().ok().map(|s| s.offsets.len()))
            .sum();
        tracing::info!(
            partitions,
            records,
            live_offsets = live,
            "committed offsets replayed"
        );
        Ok(groups)
    }

    fn replay_partition(&self, engine: &Engine, partition: u32) -> Result<u64> {
        let mut offset =
            engine.list_offset(OFFSETS_TOPIC, partition, crate::api::OffsetSpec::Earliest)?;
        let end = engine.list_offset(OFFSETS_TOPIC, partition, crate::api::OffsetSpec::Latest)?;
        let mut slot = self.slots[partition as usize]
            .lock()
            .map_err(|_| Error::Runtime("poisoned".into()))?;
        let mut records = 0u64;
        // Bounded: every fetch below the end returns at least one batch and moves `offset`.
        while offset < end {
            let r = engine.fetch(FetchRequest::new(OFFSETS_TOPIC, partition, offset))?;
            if r.next_offset <= offset {
                break;
            }
            for chunk in &r.chunks {
                for b in batch::split_batches(chunk)? {
                    let (h, recs) = batch::decode(b)?;
                    for (i, rec) in recs.iter().enumerate() {
                        if h.base_offset + i as u64 >= offset {
                            records += 1;
                            apply(&mut slot, rec);
                        }
                    }
                }
            }
            offset = r.next_offset;
        }
        Ok(records)
    }

    pub fn join(
        &self,
        engine: &Engine,
        group: &str,
        topic: &str,
        client_id: &str,
        session_timeout_ms: u32,
    ) -> Result<MemberAssignment> {
        validate_group_name(group)?;
        let partitions = engine.route(topic)?.shards.len() as u32;
        let mut slot = self.coordinated_slot(engine, group)?;
        if slot.resetting.contains(group) {
            return Err(Error::Busy(format!(
                "offsets of group '{group}' are being reset; join again"
            )));
        }
        let g = slot
            .groups
            .entry(group.to_string())
            .or_insert_with(|| Group::new(group, topic, partitions));
        g.join(topic, partitions, client_id, session_timeout_ms, now_ms())
    }

    pub fn heartbeat(
        &self,
        engine: &Engine,
        group: &str,
        member_id: &str,
        owned: &[u32],
    ) -> Result<MemberAssignment> {
        let mut slot = self.coordinated_slot(engine, group)?;
        let g = known_group(&mut slot, group, member_id)?;
        let partitions = engine
            .route(&g.topic)
            .map_or(g.partitions, |r| r.shards.len() as u32);
        g.heartbeat(member_id, owned, partitions, now_ms())
    }

    pub fn leave(&self, engine: &Engine, group: &str, member_id: &str) -> Result<()> {
        let mut slot = self.coordinated_slot(engine, group)?;
        known_group(&mut slot, group, member_id)?.leave(member_id, now_ms())
    }

    /// Checks a commit against the group's membership. An empty `member_id` commits as a
    /// standalone consumer, allowed only while the group has no live member.
    fn check_commit(
        &self,
        engine: &Engine,
        group: &str,
        topic: &str,
        member_id: &str,
        generation: u32,
        offsets: &[OffsetCommit],
    ) -> Result<()> {
        validate_group_name(group)?;
        if offsets.len() > COMMIT_OFFSETS_MAX {
            return Err(Error::InvalidArgument(format!(
                "{} offsets in one commit, at most {COMMIT_OFFSETS_MAX}",
                offsets.len()
            )));
        }
        if let Some(c) = offsets
            .iter()
            .find(|c| c.metadata.len() > COMMIT_METADATA_BYTES_MAX)
        {
            return Err(Error::InvalidArgument(format!(
                "commit metadata of {} bytes, at most {COMMIT_METADATA_BYTES_MAX}",
                c.metadata.len()
            )));
        }
        let now = now_ms();
        let mut slot = self.coordinated_slot(engine, group)?;
        let Some(g) = slot.groups.get_mut(group) else {
            return if member_id.is_empty() {
                Ok(())
            } else {
                Err(Error::UnknownMember {
                    group: group.to_string(),
                    member: member_id.to_string(),
                })
            };
        };
        g.expire(now);
        if member_id.is_empty() {
            if g.members.is_empty() {
                return Ok(());
            }
            return Err(Error::InvalidGroup {
                group: group.to_string(),
                reason: format!(
                    "{} live members: standalone commits are refused",
                    g.members.len()
                ),
            });
        }
        if g.topic != topic {
            return Err(Error::InvalidGroup {
                group: group.to_string(),
                reason: format!("it consumes topic '{}', not '{topic}'", g.topic),
            });
        }
        for c in offsets {
            g.check_commit(member_id, generation, c.partition, now)?;
        }
        Ok(())
    }

    /// Appends a batch of `group`'s commits to its `__offsets` partition and applies it: on
    /// one node once fdatasync covered it; on a cluster once it is committed (`all`), which
    /// applies it on every replica (the host calls [`Groups::apply_committed`] before it
    /// answers).
    async fn write_commits(
        &self,
        engine: &Engine,
        group: &str,
        topic: &str,
        bytes: Bytes,
    ) -> Result<()> {
        let partition = self.slot_of(group);
        let acks = if self.replicated {
            Acks::All
        } else {
            Acks::Durable
        };
        engine
            .produce_async(OFFSETS_TOPIC, partition, bytes.clone(), acks)
            .await?;
        if self.replicated {
            return Ok(());
        }
        self.apply_commits(group, topic, &bytes)
    }

    fn apply_commits(&self, group: &str, topic: &str, batch: &Bytes) -> Result<()> {
        let (_, recs) = batch::decode(batch)?;
        let mut slot = self.slot(group)?;
        for r in &recs {
            apply(&mut slot, r);
        }
        debug_assert!(recs.iter().all(|r| {
            r.key
                .as_deref()
                .and_then(decode_key)
                .is_some_and(|k| k.0 == group && k.1 == topic)
        }));
        Ok(())
    }

    pub fn fetch_offsets(
        &self,
        engine: &Engine,
        group: &str,
        topic: &str,
    ) -> Result<Vec<(u32, Committed)>> {
        let slot = self.coordinated_slot(engine, group)?;
        Ok(offsets_of(&slot, group, topic))
    }

    fn fetch_offsets_here(&self, group: &str, topic: &str) -> Result<Vec<(u32, Committed)>> {
        Ok(offsets_of(&*self.slot(group)?, group, topic))
    }

    pub fn describe(&self, engine: &Engine, group: &str) -> Result<GroupDescription> {
        let coordinator_slot = self.slot_of(group);
        let now = now_ms();
        let (topic, generation, members) = {
            let mut slot = self.coordinated_slot(engine, group)?;
            describe_members(&mut slot, group, now)?
        };
        let offsets = self.fetch_offsets_here(group, &topic)?;
        Ok(GroupDescription {
            group: group.to_string(),
            topic,
            generation,
            coordinator_slot,
            members,
            offsets,
        })
    }
}

fn offsets_of(slot: &Slot, group: &str, topic: &str) -> Vec<(u32, Committed)> {
    let from = (group.to_string(), topic.to_string(), 0);
    slot.offsets
        .range(from..)
        .take_while(|((g, t, _), _)| g == group && t == topic)
        .map(|((_, _, p), c)| (*p, c.clone()))
        .collect()
}

type MembersView = (String, u32, Vec<MemberDescription>);

fn describe_members(slot: &mut Slot, group: &str, now: i64) -> Result<MembersView> {
    Ok(match slot.groups.get_mut(group) {
        Some(g) => {
            g.expire(now);
            let members = g
                .members
                .values()
                .map(|m| MemberDescription {
                    member_id: m.member_id.clone(),
                    client_id: m.client_id.clone(),
                    assigned: g.target.get(&m.member_id).cloned().unwrap_or_default(),
                    owned: m.owned.clone(),
                    last_seen_ms_ago: now - m.last_seen_ms,
                })
                .collect();
            (g.topic.clone(), g.generation, members)
        }
        None => {
            let topic = slot
                .offsets
                .keys()
                .find(|(g, _, _)| g == group)
                .map(|(_, t, _)| t.clone())
                .ok_or_else(|| Error::InvalidGroup {
                    group: group.to_string(),
                    reason: "no such group".into(),
                })?;
            (topic, 0, Vec::new())
        }
    })
}

/// The group of a member that calls in: a group nobody joined knows no member.
fn known_group<'s>(slot: &'s mut Slot, group: &str, member_id: &str) -> Result<&'s mut Group> {
    slot.groups
        .get_mut(group)
        .ok_or_else(|| Error::UnknownMember {
            group: group.to_string(),
            member: member_id.to_string(),
        })
}

fn apply(slot: &mut Slot, r: &batch::Record) {
    let Some(key) = r.key.as_deref().and_then(decode_key) else {
        return;
    };
    match decode_value(&r.value) {
        Some(Some(c)) => {
            slot.offsets.insert(key, c);
        }
        Some(None) => {
            slot.offsets.remove(&key);
        }
        None => {}
    }
}

impl Engine {
    /// The coordinators. On a cluster between dropping the local `__offsets` and the
    /// controller creating the replicated one there are none: `NotLeader` (retriable).
    pub(crate) fn groups(&self) -> Result<Arc<Groups>> {
        let g = self
            .semantics()?
            .groups
            .read()
            .map_err(|_| Error::Runtime("poisoned".into()))?
            .clone();
        match g {
            Some(g) => Ok(g),
            None if self.cluster_node_id().is_some() => Err(Error::NotLeader {
                topic: OFFSETS_TOPIC.to_string(),
                partition: 0,
                leader: None,
                epoch: 0,
            }),
            None => Err(Error::Runtime("consumer groups are not open".into())),
        }
    }

    /// Joins `group` as a new member consuming `topic` (docs/semantics.md, "Consumer groups").
    pub fn join_group(
        &self,
        group: &str,
        topic: &str,
        client_id: &str,
        session_timeout_ms: u32,
    ) -> Result<MemberAssignment> {
        self.groups()?
            .join(self, group, topic, client_id, session_timeout_ms)
    }

    /// Keeps `member_id` alive; `owned` is what it consumes now. Answers what it may consume.
    pub fn heartbeat_group(
        &self,
        group: &str,
        member_id: &str,
        owned: &[u32],
    ) -> Result<MemberAssignment> {
        self.groups()?.heartbeat(self, group, member_id, owned)
    }

    pub fn leave_group(&self, group: &str, member_id: &str) -> Result<()> {
        self.groups()?.leave(self, group, member_id)
    }

    /// Commits offsets durably (fdatasync'd in `__offsets`) if `member_id` at `generation` may
    /// (empty `member_id`: a standalone commit, only while the group has no members).
    pub async fn commit_offsets_async(
        &self,
        group: &str,
        topic: &str,
        member_id: &str,
        generation: u32,
        offsets: Vec<OffsetCommit>,
    ) -> Result<()> {
        let groups = self.groups()?;
        groups.check_commit(self, group, topic, member_id, generation, &offsets)?;
        if offsets.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let mut b = BatchBuilder::new();
        for c in offsets {
            let value = encode_value(&Committed {
                offset: c.offset,
                metadata: c.metadata,
                commit_time_ms: now,
            });
            b.push(
                now * 1000,
                Some(encode_key(group, topic, c.partition)),
                value,
                Vec::new(),
            );
        }
        let bytes = b.build()?;
        groups.write_commits(self, group, topic, bytes).await
    }

    /// [`Engine::commit_offsets_async`], blocking.
    pub fn commit_offsets(
        &self,
        group: &str,
        topic: &str,
        member_id: &str,
        generation: u32,
        offsets: Vec<OffsetCommit>,
    ) -> Result<()> {
        crate::broker::engine::block(
            self.commit_offsets_async(group, topic, member_id, generation, offsets),
        )
    }

    /// Committed offsets of `group` in `topic`, by partition.
    pub fn fetch_offsets(&self, group: &str, topic: &str) -> Result<Vec<(u32, Committed)>> {
        self.groups()?.fetch_offsets(self, group, topic)
    }

    pub fn describe_group(&self, group: &str) -> Result<GroupDescription> {
        self.groups()?.describe(self, group)
    }

    /// A new idempotent-producer identity, or `resume`'s id with its epoch bumped (fencing the
    /// previous instance). See [`crate::producer_ids`].
    pub fn init_producer(
        &self,
        resume: Option<crate::producer_ids::ProducerIdentity>,
    ) -> Result<crate::producer_ids::ProducerIdentity> {
        self.semantics()?.producer_ids.init(resume)
    }
}

/// Messaging-semantics state of an engine: producer ids and consumer groups.
pub(crate) struct Semantics {
    pub(crate) producer_ids: crate::producer_ids::ProducerIds,
    /// Replaced once on a cluster's first start (the replicated `__offsets`: replicated.rs).
    pub(crate) groups: Arc<RwLock<Option<Arc<Groups>>>>,
}

impl Semantics {
    pub(crate) fn open(data_dir: &std::path::Path) -> Result<Semantics> {
        Ok(Semantics {
            producer_ids: crate::producer_ids::ProducerIds::open(data_dir)?,
            groups: Arc::new(RwLock::new(None)),
        })
    }

    /// Opens the groups (needs a running engine: `__offsets` is an ordinary topic).
    pub(crate) fn open_groups(&self, engine: &Engine) -> Result<()> {
        let g = Groups::open(engine)?;
        self.set_groups(Some(Arc::new(g)))
    }

    pub(crate) fn set_groups(&self, g: Option<Arc<Groups>>) -> Result<()> {
        *self
            .groups
            .write()
            .map_err(|_| Error::Runtime("poisoned".into()))? = g;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn offset_records_round_trip(group in "[a-z]{1,20}", topic in "[a-z]{1,20}", partition: u32,
                                     offset: u64, t: i64, metadata in ".{0,40}") {
            let k = encode_key(&group, &topic, partition);
            prop_assert_eq!(decode_key(&k), Some((group, topic, partition)));
            let c = Committed { offset, metadata, commit_time_ms: t };
            prop_assert_eq!(decode_value(&encode_value(&c)), Some(Some(c)));
        }

        #[test]
        fn malformed_keys_and_values_are_rejected_not_trusted(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_key(&bytes);
            let _ = decode_value(&bytes);
        }
    }
}
