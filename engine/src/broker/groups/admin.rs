//! Operator actions on consumer groups (docs/operations.md, "Consumer groups"): listing the
//! groups, resetting a group's committed offsets, and the group figures of a metrics scrape.
//!
//! A reset is refused while the group has live members (as Kafka's `kafka-consumer-groups
//! --reset-offsets` requires an empty group): a member would keep consuming from its own
//! position and commit over the reset. The new offsets are written like any commit (appended
//! to `__offsets` with `acks = durable`, applied once fdatasync covered them), so they survive
//! a restart; while that write is in flight, joins of the group are refused (`BUSY`,
//! retriable), so no member can read the old offsets between the check and the write.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::{
    Committed, Groups, OFFSETS_TOPIC, OffsetKey, Slot, encode_key, encode_value, now_ms,
    validate_group_name,
};
use crate::api::OffsetSpec;
use crate::batch::BatchBuilder;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::metrics::{Sample, ShardMetricsSnapshot};

/// Where a reset moves a group's position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetTarget {
    /// The partition's log start.
    Earliest,
    /// The partition's log end: the group skips everything written so far.
    Latest,
    /// This offset, clamped into `[log start, log end]` (like Kafka's `--to-offset`).
    Offset(u64),
    /// The first record with a timestamp at or after this (milliseconds since the epoch); the
    /// log end if there is none.
    TimestampMs(i64),
}

/// One partition of a reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct OffsetReset {
    pub partition: u32,
    /// The committed offset before the reset (`None`: there was none).
    pub previous: Option<u64>,
    /// The committed offset now.
    pub offset: u64,
}

/// A group as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupListing {
    pub group: String,
    /// Topics the group consumes or has committed offsets for, sorted.
    pub topics: Vec<String>,
    pub members: u32,
    pub generation: u32,
}

/// Marks a group as being reset (joins refused) until dropped.
struct ResetGuard<'g> {
    groups: &'g Groups,
    group: String,
}

impl Drop for ResetGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut slot) = self.groups.slot(&self.group) {
            slot.resetting.remove(&self.group);
        }
    }
}

/// Fails with `GroupNotEmpty` while the group has live members.
fn check_empty(slot: &mut Slot, group: &str) -> Result<()> {
    if let Some(g) = slot.groups.get_mut(group) {
        g.expire(now_ms());
        if !g.members.is_empty() {
            return Err(Error::GroupNotEmpty {
                group: group.to_string(),
                members: g.members.len(),
            });
        }
    }
    Ok(())
}

impl Groups {
    /// Checks again that the group is empty and refuses joins until the guard is dropped;
    /// both under one lock, so no member can join in between.
    fn begin_reset(&self, group: &str) -> Result<ResetGuard<'_>> {
        let mut slot = self.slot(group)?;
        check_empty(&mut slot, group)?;
        if !slot.resetting.insert(group.to_string()) {
            return Err(Error::Busy(format!(
                "offsets of group '{group}' are being reset by another request"
            )));
        }
        Ok(ResetGuard {
            groups: self,
            group: group.to_string(),
        })
    }

    /// Every group that has members or committed offsets, sorted by name.
    pub fn list(&self) -> Result<Vec<GroupListing>> {
        let now = now_ms();
        let mut out: BTreeMap<String, GroupListing> = BTreeMap::new();
        for slot in &self.slots {
            let mut slot = slot
                .lock()
                .map_err(|_| Error::Runtime("group coordinator lock poisoned".into()))?;
            for g in slot.groups.values_mut() {
                g.expire(now);
                let e = listing(&mut out, &g.name);
                e.members = u32::try_from(g.members.len()).unwrap_or(u32::MAX);
                e.generation = g.generation;
                e.topics.push(g.topic.clone());
            }
            for (group, topic, _) in slot.offsets.keys() {
                listing(&mut out, group).topics.push(topic.clone());
            }
        }
        Ok(out
            .into_values()
            .map(|mut l| {
                l.topics.sort_unstable();
                l.topics.dedup();
                l
            })
            .collect())
    }
}

fn listing<'m>(out: &'m mut BTreeMap<String, GroupListing>, group: &str) -> &'m mut GroupListing {
    out.entry(group.to_string())
        .or_insert_with(|| GroupListing {
            group: group.to_string(),
            topics: Vec::new(),
            members: 0,
            generation: 0,
        })
}

impl Engine {
    /// Every consumer group known to the coordinators (members or committed offsets).
    pub fn list_groups(&self) -> Result<Vec<GroupListing>> {
        self.groups()?.list()
    }

    /// Moves `group`'s committed offsets in `topic` (every partition, or only `partition`) to
    /// `target`. Refused with `GroupNotEmpty` while the group has live members. With `dry_run`,
    /// answers the plan and writes nothing. Otherwise answered once the new offsets are durable.
    pub async fn reset_group_offsets_async(
        &self,
        group: &str,
        topic: &str,
        partition: Option<u32>,
        target: ResetTarget,
        dry_run: bool,
    ) -> Result<Vec<OffsetReset>> {
        validate_group_name(group)?;
        if super::is_internal(topic) {
            return Err(Error::InvalidArgument(format!(
                "'{topic}' is internal; it has no consumer offsets"
            )));
        }
        let groups = self.groups()?;
        let count = self.route(topic)?.shards.len() as u32;
        let partitions: Vec<u32> = match partition {
            Some(p) if p >= count => {
                return Err(Error::UnknownPartition {
                    topic: topic.to_string(),
                    partition: p,
                });
            }
            Some(p) => vec![p],
            None => (0..count).collect(),
        };
        check_empty(&mut *groups.coordinated_slot(self, group)?, group)?;
        let previous: HashMap<u32, u64> = groups
            .fetch_offsets(self, group, topic)?
            .into_iter()
            .map(|(p, c)| (p, c.offset))
            .collect();
        let mut plan = Vec::with_capacity(partitions.len());
        for p in partitions {
            plan.push(OffsetReset {
                partition: p,
                previous: previous.get(&p).copied(),
                offset: self.reset_position(topic, p, target).await?,
            });
        }
        if dry_run {
            return Ok(plan);
        }
        let _guard = groups.begin_reset(group)?;
        let now = now_ms();
        let mut b = BatchBuilder::new();
        for r in &plan {
            let value = encode_value(&Committed {
                offset: r.offset,
                metadata: "reset-offsets".to_string(),
                commit_time_ms: now,
            });
            b.push(
                now * 1000,
                Some(encode_key(group, topic, r.partition)),
                value,
                Vec::new(),
            );
        }
        let bytes = b.build()?;
        groups.write_commits(self, group, topic, bytes).await?;
        tracing::info!(
            group,
            topic,
            partitions = plan.len(),
            ?target,
            "group offsets reset"
        );
        Ok(plan)
    }

    /// [`Engine::reset_group_offsets_async`], blocking.
    pub fn reset_group_offsets(
        &self,
        group: &str,
        topic: &str,
        partition: Option<u32>,
        target: ResetTarget,
        dry_run: bool,
    ) -> Result<Vec<OffsetReset>> {
        crate::broker::engine::block(
            self.reset_group_offsets_async(group, topic, partition, target, dry_run),
        )
    }

    async fn reset_position(
        &self,
        topic: &str,
        partition: u32,
        target: ResetTarget,
    ) -> Result<u64> {
        let at = |spec| self.list_offset_async(topic, partition, spec);
        match target {
            ResetTarget::Earliest => at(OffsetSpec::Earliest).await,
            ResetTarget::Latest => at(OffsetSpec::Latest).await,
            ResetTarget::Offset(o) => {
                let start = at(OffsetSpec::Earliest).await?;
                let end = at(OffsetSpec::Latest).await?;
                Ok(o.clamp(start, end.max(start)))
            }
            ResetTarget::TimestampMs(ms) => {
                at(OffsetSpec::Timestamp(ms.saturating_mul(1000))).await
            }
        }
    }
}

/// Committed offsets, lag and member counts of every group, joined on the scrape thread with
/// the log ends the shards reported: each figure goes with the snapshot of the shard that owns
/// the partition (group members: the shard of the group's `__offsets` partition). Partitions
/// without a committed offset have no lag figure (the group has no position there).
pub(crate) fn group_samples(engine: &Engine, shards: &mut [ShardMetricsSnapshot]) {
    let Ok(groups) = engine.groups() else {
        return;
    };
    let mut log_end: HashMap<(&str, u32), (usize, u64)> = HashMap::new();
    for (i, s) in shards.iter().enumerate() {
        for p in &s.partitions {
            log_end.insert((p.topic.as_str(), p.partition), (i, p.high_watermark));
        }
    }
    let now = now_ms();
    let mut found: Vec<(usize, Sample)> = Vec::new();
    for (slot_index, slot) in groups.slots.iter().enumerate() {
        // Every group with members or offsets (0 members: only offsets are left).
        let (offsets, members): (Vec<(OffsetKey, u64)>, BTreeMap<String, usize>) = {
            let Ok(mut slot) = slot.lock() else {
                continue;
            };
            let offsets: Vec<(OffsetKey, u64)> = slot
                .offsets
                .iter()
                .map(|(k, c)| (k.clone(), c.offset))
                .collect();
            let mut members: BTreeMap<String, usize> = slot
                .groups
                .values_mut()
                .map(|g| {
                    g.expire(now);
                    (g.name.clone(), g.members.len())
                })
                .collect();
            for ((group, _, _), _) in &offsets {
                members.entry(group.clone()).or_insert(0);
            }
            (offsets, members)
        };
        for ((group, topic, partition), committed) in offsets {
            let Some(&(shard, end)) = log_end.get(&(topic.as_str(), partition)) else {
                continue;
            };
            let labels = vec![group, topic, partition.to_string()];
            let value = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
            found.push((
                shard,
                Sample {
                    family: "shardline_group_committed_offset",
                    labels: labels.clone(),
                    value: value(committed),
                },
            ));
            found.push((
                shard,
                Sample {
                    family: "shardline_group_lag",
                    labels,
                    value: value(end.saturating_sub(committed)),
                },
            ));
        }
        let owner = engine
            .shard_of(OFFSETS_TOPIC, slot_index as u32)
            .unwrap_or(0);
        for (group, n) in members {
            found.push((
                owner,
                Sample {
                    family: "shardline_group_members",
                    labels: vec![group],
                    value: i64::try_from(n).unwrap_or(i64::MAX),
                },
            ));
        }
    }
    for (shard, sample) in found {
        if let Some(s) = shards.get_mut(shard) {
            s.samples.push(sample);
        }
    }
}
