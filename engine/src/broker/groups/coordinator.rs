//! The consumer-group state machine: membership, generations, assignment, commit fencing
//! (docs/semantics.md, "Consumer groups"). Plain data with `now_ms` passed in: no I/O, no
//! clock, no threads; [`super::Groups`] wraps it in a lock and makes commits durable.
//!
//! The protocol is coordinator-driven (server-side assignment, the model of Kafka's KIP-848):
//!
//! ```text
//!  member                         coordinator
//!  Join(topic, session timeout) -> new member id; generation += 1; target assignment recomputed
//!  Heartbeat(generation, owned) -> records what the member really consumes (`owned`), expires
//!                                  silent members, answers the member's *ready* partitions:
//!                                  its target minus any partition another live member still
//!                                  owns. A partition therefore never has two consumers: it
//!                                  moves only after its old owner reported letting it go or
//!                                  its session expired.
//!  Commit(generation, offsets)  -> accepted only from a live member for partitions it owns or
//!                                  is assigned (a zombie that lost them is refused)
//!  Leave                        -> generation += 1; target recomputed
//! ```
//! Assignment policy: **range**. Members sorted by id; partitions `0..n` split into contiguous
//! ranges, the first `n % members` members taking one extra. Deterministic, so every
//! coordinator computes the same answer from the same membership.

use std::collections::BTreeMap;

use crate::error::{Error, Result};

/// Members per group; a join beyond is refused.
pub const MEMBERS_MAX: usize = 1024;
/// Session timeouts a member may ask for.
pub const SESSION_TIMEOUT_MS_MIN: u32 = 100;
pub const SESSION_TIMEOUT_MS_MAX: u32 = 300_000;
/// Group and member names.
pub const GROUP_NAME_BYTES_MAX: usize = 200;

/// One member as the coordinator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub member_id: String,
    pub client_id: String,
    pub session_timeout_ms: u32,
    pub last_seen_ms: i64,
    /// What the member reported consuming in its last heartbeat.
    pub owned: Vec<u32>,
}

/// The answer to a join or heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberAssignment {
    pub member_id: String,
    pub generation: u32,
    pub topic: String,
    /// Partitions the member may consume now (sorted).
    pub partitions: Vec<u32>,
    /// Partitions assigned to the member that another member still has to release: heartbeat
    /// again soon.
    pub pending: Vec<u32>,
    /// Suggested heartbeat interval.
    pub heartbeat_interval_ms: u32,
}

/// One group.
#[derive(Debug, Clone, Default)]
pub struct Group {
    pub name: String,
    pub topic: String,
    pub partitions: u32,
    pub generation: u32,
    pub members: BTreeMap<String, Member>,
    /// Target assignment of the current generation.
    pub target: BTreeMap<String, Vec<u32>>,
    next_member: u64,
}

/// Range assignment of `partitions` over the members (sorted by id).
pub fn range_assign(members: &[&str], partitions: u32) -> BTreeMap<String, Vec<u32>> {
    let mut out = BTreeMap::new();
    if members.is_empty() {
        return out;
    }
    let mut sorted: Vec<&str> = members.to_vec();
    sorted.sort_unstable();
    let n = sorted.len() as u32;
    let (each, extra) = (partitions / n, partitions % n);
    let mut next = 0u32;
    for (i, m) in sorted.iter().enumerate() {
        let take = each + u32::from((i as u32) < extra);
        out.insert((*m).to_string(), (next..next + take).collect());
        next += take;
    }
    debug_assert_eq!(next, partitions);
    out
}

pub fn validate_group_name(group: &str) -> Result<()> {
    if group.is_empty() || group.len() > GROUP_NAME_BYTES_MAX {
        return Err(Error::InvalidGroup {
            group: group.to_string(),
            reason: format!("name must be 1 to {GROUP_NAME_BYTES_MAX} bytes"),
        });
    }
    Ok(())
}

impl Group {
    pub fn new(name: &str, topic: &str, partitions: u32) -> Group {
        Group {
            name: name.to_string(),
            topic: topic.to_string(),
            partitions,
            ..Group::default()
        }
    }

    fn unknown_member(&self, member: &str) -> Error {
        Error::UnknownMember {
            group: self.name.clone(),
            member: member.to_string(),
        }
    }

    /// Removes members whose session expired; returns how many.
    pub fn expire(&mut self, now_ms: i64) -> usize {
        let before = self.members.len();
        self.members
            .retain(|_, m| now_ms - m.last_seen_ms <= i64::from(m.session_timeout_ms));
        let gone = before - self.members.len();
        if gone > 0 {
            self.rebalance();
        }
        gone
    }

    fn rebalance(&mut self) {
        self.generation = self.generation.wrapping_add(1);
        let ids: Vec<&str> = self.members.keys().map(String::as_str).collect();
        self.target = range_assign(&ids, self.partitions);
    }

    /// Adds a member (a new id each time: a rejoin after expiry is a new member).
    pub fn join(
        &mut self,
        topic: &str,
        partitions: u32,
        client_id: &str,
        session_timeout_ms: u32,
        now_ms: i64,
    ) -> Result<MemberAssignment> {
        if !(SESSION_TIMEOUT_MS_MIN..=SESSION_TIMEOUT_MS_MAX).contains(&session_timeout_ms) {
            return Err(Error::InvalidArgument(format!(
                "session timeout {session_timeout_ms} ms outside {SESSION_TIMEOUT_MS_MIN}..={SESSION_TIMEOUT_MS_MAX}"
            )));
        }
        self.expire(now_ms);
        if self.topic != topic {
            if !self.members.is_empty() {
                return Err(Error::InvalidGroup {
                    group: self.name.clone(),
                    reason: format!("its members consume topic '{}', not '{topic}'", self.topic),
                });
            }
            self.topic = topic.to_string();
        }
        if self.members.len() >= MEMBERS_MAX {
            return Err(Error::InvalidGroup {
                group: self.name.clone(),
                reason: format!("already {MEMBERS_MAX} members"),
            });
        }
        self.partitions = partitions;
        self.next_member += 1;
        let member_id = format!("{}-{:x}-{}", self.name, now_ms, self.next_member);
        self.members.insert(
            member_id.clone(),
            Member {
                member_id: member_id.clone(),
                client_id: client_id.to_string(),
                session_timeout_ms,
                last_seen_ms: now_ms,
                owned: Vec::new(),
            },
        );
        self.rebalance();
        Ok(self.hand_out(&member_id))
    }

    /// Keeps a member alive, records what it owns (what it consumed until this call: a member
    /// stops consuming revoked partitions after reading the answer and says so next time), and
    /// tells it what it may consume.
    pub fn heartbeat(
        &mut self,
        member_id: &str,
        owned: &[u32],
        partitions: u32,
        now_ms: i64,
    ) -> Result<MemberAssignment> {
        self.expire(now_ms);
        if partitions != self.partitions {
            // The topic grew: spread the new partitions.
            self.partitions = partitions;
            self.rebalance();
        }
        let m = self
            .members
            .get_mut(member_id)
            .ok_or_else(|| Error::UnknownMember {
                group: self.name.clone(),
                member: member_id.to_string(),
            })?;
        m.last_seen_ms = now_ms;
        let mut owned: Vec<u32> = owned.iter().copied().filter(|p| *p < partitions).collect();
        owned.sort_unstable();
        owned.dedup();
        m.owned = owned;
        Ok(self.hand_out(member_id))
    }

    /// The member's assignment; what it may consume now counts as owned by it until its next
    /// heartbeat reports otherwise (it starts consuming as soon as it reads the answer).
    fn hand_out(&mut self, member_id: &str) -> MemberAssignment {
        let a = self.assignment_of(member_id);
        if let Some(m) = self.members.get_mut(member_id) {
            m.owned.extend(a.partitions.iter().copied());
            m.owned.sort_unstable();
            m.owned.dedup();
        }
        a
    }

    pub fn leave(&mut self, member_id: &str, now_ms: i64) -> Result<()> {
        self.expire(now_ms);
        if self.members.remove(member_id).is_none() {
            return Err(self.unknown_member(member_id));
        }
        self.rebalance();
        Ok(())
    }

    fn assignment_of(&self, member_id: &str) -> MemberAssignment {
        let target = self.target.get(member_id).cloned().unwrap_or_default();
        let (mut ready, mut pending) = (Vec::new(), Vec::new());
        for p in target {
            let held_elsewhere = self
                .members
                .values()
                .any(|o| o.member_id != member_id && o.owned.contains(&p));
            if held_elsewhere {
                pending.push(p);
            } else {
                ready.push(p);
            }
        }
        let timeout = self
            .members
            .get(member_id)
            .map_or(SESSION_TIMEOUT_MS_MIN, |m| m.session_timeout_ms);
        MemberAssignment {
            member_id: member_id.to_string(),
            generation: self.generation,
            topic: self.topic.clone(),
            partitions: ready,
            pending,
            heartbeat_interval_ms: (timeout / 3).max(1),
        }
    }

    /// Whether `member_id` at `generation` may commit an offset of `partition` now. A live
    /// member may commit what it owns (it has not released it, so nobody else consumes it)
    /// and, at the current generation, what it is assigned.
    pub fn check_commit(
        &mut self,
        member_id: &str,
        generation: u32,
        partition: u32,
        now_ms: i64,
    ) -> Result<()> {
        self.expire(now_ms);
        let m = self
            .members
            .get(member_id)
            .ok_or_else(|| self.unknown_member(member_id))?;
        if generation > self.generation {
            return Err(Error::IllegalGeneration {
                group: self.name.clone(),
                generation,
                current: self.generation,
            });
        }
        let owns = m.owned.contains(&partition);
        let assigned = generation == self.generation
            && self
                .assignment_of(member_id)
                .partitions
                .contains(&partition);
        if owns || assigned {
            return Ok(());
        }
        if generation < self.generation {
            return Err(Error::IllegalGeneration {
                group: self.name.clone(),
                generation,
                current: self.generation,
            });
        }
        Err(Error::NotAssigned {
            group: self.name.clone(),
            member: member_id.to_string(),
            topic: self.topic.clone(),
            partition,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn range_assignment_covers_every_partition_once() {
        let a = range_assign(&["b", "a", "c"], 8);
        assert_eq!(a["a"], vec![0, 1, 2]);
        assert_eq!(a["b"], vec![3, 4, 5]);
        assert_eq!(a["c"], vec![6, 7]);
        assert!(range_assign(&[], 4).is_empty());
        let few = range_assign(&["a", "b", "c"], 2);
        assert_eq!(few["c"], Vec::<u32>::new());
    }

    #[test]
    fn a_partition_moves_only_after_its_owner_releases_it_or_expires() {
        let mut g = Group::new("g", "t", 4);
        let a = g.join("t", 4, "c", 1000, 0).unwrap();
        assert_eq!(a.partitions, vec![0, 1, 2, 3]);
        g.heartbeat(&a.member_id, &[0, 1, 2, 3], 4, 10).unwrap();
        let b = g.join("t", 4, "c", 1000, 20).unwrap();
        // b's share (2, 3) is still owned by a.
        assert_eq!(b.partitions, Vec::<u32>::new());
        assert_eq!(b.pending.len(), 2);
        // a learns the new generation and releases 2 and 3.
        let a2 = g.heartbeat(&a.member_id, &[0, 1, 2, 3], 4, 30).unwrap();
        assert_eq!(a2.partitions.len(), 2);
        g.heartbeat(&a.member_id, &a2.partitions, 4, 40).unwrap();
        let b2 = g.heartbeat(&b.member_id, &[], 4, 50).unwrap();
        assert_eq!(b2.partitions.len(), 2);
        assert!(b2.pending.is_empty());
        // a dies: after its session timeout b gets everything.
        g.heartbeat(&b.member_id, &b2.partitions, 4, 900).unwrap();
        let b3 = g.heartbeat(&b.member_id, &b2.partitions, 4, 1100).unwrap();
        assert_eq!(b3.partitions, vec![0, 1, 2, 3]);
        assert!(g.generation > b.generation);
    }

    #[test]
    fn commits_are_fenced() {
        let mut g = Group::new("g", "t", 2);
        let a = g.join("t", 2, "c", 1000, 0).unwrap();
        g.heartbeat(&a.member_id, &[0, 1], 2, 1).unwrap();
        assert!(g.check_commit(&a.member_id, a.generation, 1, 2).is_ok());
        let b = g.join("t", 2, "c", 1000, 3).unwrap();
        // a still owns 1 until it reports otherwise: its commit stands, b's does not.
        assert!(g.check_commit(&a.member_id, a.generation, 1, 4).is_ok());
        assert!(matches!(
            g.check_commit(&b.member_id, b.generation, 1, 4),
            Err(Error::NotAssigned { .. })
        ));
        let a2 = g.heartbeat(&a.member_id, &[0], 2, 5).unwrap();
        assert_eq!(a2.partitions, vec![0]);
        assert!(matches!(
            g.check_commit(&a.member_id, a.generation, 1, 6),
            Err(Error::IllegalGeneration { .. })
        ));
        assert!(g.check_commit(&b.member_id, b.generation, 1, 6).is_ok());
        assert!(matches!(
            g.check_commit("nobody", 0, 0, 6),
            Err(Error::UnknownMember { .. })
        ));
        assert!(matches!(
            g.join("other", 2, "c", 1000, 7),
            Err(Error::InvalidGroup { .. })
        ));
    }

    proptest! {
        /// Whatever joins, leaves, expiries and heartbeats happen, no partition is ever ready for
        /// two members at once (counting what members still own), and once every member has
        /// heartbeated with what it was given, every partition is consumed by someone.
        #[test]
        fn no_partition_has_two_consumers(ops in proptest::collection::vec((0u8..4, 0usize..6), 1..80), partitions in 1u32..9) {
            let mut g = Group::new("g", "t", partitions);
            let mut held: BTreeMap<String, Vec<u32>> = BTreeMap::new();
            let mut now = 0i64;
            for (kind, who) in ops {
                now += 50;
                let ids: Vec<String> = g.members.keys().cloned().collect();
                match kind {
                    0 => { let a = g.join("t", partitions, "c", 1000, now).unwrap(); held.insert(a.member_id, Vec::new()); }
                    1 if !ids.is_empty() => { let id = &ids[who % ids.len()]; g.leave(id, now).unwrap(); held.remove(id); }
                    2 => { now += 2000; g.expire(now); held.retain(|id, _| g.members.contains_key(id)); }
                    _ if !ids.is_empty() => {
                        let id = ids[who % ids.len()].clone();
                        let owned = held.get(&id).cloned().unwrap_or_default();
                        // The heartbeat expires silent members first, the caller included
                        // when it was silent longer than its session: it is gone then.
                        match g.heartbeat(&id, &owned, partitions, now) {
                            Ok(a) => { held.insert(id, a.partitions); }
                            Err(Error::UnknownMember { .. }) => { held.remove(&id); }
                            Err(e) => panic!("heartbeat: {e}"),
                        }
                    }
                    _ => {}
                }
                held.retain(|id, _| g.members.contains_key(id));
                let mut seen = vec![0u32; partitions as usize];
                for ps in held.values() { for p in ps { seen[*p as usize] += 1; } }
                prop_assert!(seen.iter().all(|c| *c <= 1), "{seen:?}");
            }
            // Settle: two rounds of heartbeats (release, then take).
            for _ in 0..3 {
                now += 10;
                for id in g.members.keys().cloned().collect::<Vec<_>>() {
                    let owned = held.get(&id).cloned().unwrap_or_default();
                    let a = g.heartbeat(&id, &owned, partitions, now).unwrap();
                    held.insert(id, a.partitions);
                }
            }
            if !g.members.is_empty() {
                let total: usize = held.values().map(Vec::len).sum();
                prop_assert_eq!(total, partitions as usize);
            }
        }
    }
}
