//! Kafka consumer groups, classic protocol (docs/kafka.md, "Consumer groups"): the broker
//! keeps membership and generations, the leader *client* computes the assignment and the
//! broker relays it (JoinGroup, SyncGroup, Heartbeat, LeaveGroup). Committed offsets live in
//! the same `__offsets` as native groups (`Engine::commit_offsets_async`).
//!
//! One coordinator for the whole server (this node coordinates every group), shared by the
//! shards behind a mutex held only for bookkeeping. A JoinGroup or SyncGroup that must wait
//! parks on a channel and re-checks the group every [`TICK`] (expired sessions, the rebalance
//! deadline), so nothing needs a timer of its own and nothing spins.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::codes;

/// How often a parked JoinGroup or SyncGroup re-checks its group.
pub(crate) const TICK: Duration = Duration::from_millis(250);
/// KIP-394: JoinGroup v4+ from an unknown member gets a member id and this error first.
pub(crate) const MEMBER_ID_REQUIRED: i16 = 79;
pub(crate) const ILLEGAL_GENERATION: i16 = 22;
pub(crate) const UNKNOWN_MEMBER_ID: i16 = 25;
pub(crate) const REBALANCE_IN_PROGRESS: i16 = 27;
pub(crate) const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
pub(crate) const INVALID_SESSION_TIMEOUT: i16 = 26;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl State {
    pub(crate) fn name(self) -> &'static str {
        match self {
            State::Empty => "Empty",
            State::PreparingRebalance => "PreparingRebalance",
            State::CompletingRebalance => "CompletingRebalance",
            State::Stable => "Stable",
        }
    }
}

/// What a completed join tells a member.
#[derive(Debug, Clone)]
pub(crate) struct Joined {
    pub(crate) error_code: i16,
    pub(crate) generation: i32,
    pub(crate) protocol_type: String,
    pub(crate) protocol: String,
    pub(crate) leader: String,
    pub(crate) member_id: String,
    /// For the leader only: every member's id and metadata for the chosen protocol.
    pub(crate) members: Vec<(String, Bytes)>,
}

/// What a completed sync tells a member.
#[derive(Debug, Clone)]
pub(crate) struct Synced {
    pub(crate) error_code: i16,
    pub(crate) protocol_type: String,
    pub(crate) protocol: String,
    pub(crate) assignment: Bytes,
}

struct Member {
    client_id: String,
    client_host: String,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    protocols: Vec<(String, Bytes)>,
    assignment: Bytes,
    last_seen: Instant,
    join_waiter: Option<flume::Sender<Joined>>,
    sync_waiter: Option<flume::Sender<Synced>>,
}

struct Group {
    state: State,
    generation: i32,
    protocol_type: String,
    protocol: String,
    leader: String,
    members: BTreeMap<String, Member>,
    rebalance_deadline: Option<Instant>,
}

impl Group {
    fn new(protocol_type: &str) -> Group {
        Group {
            state: State::Empty,
            generation: 0,
            protocol_type: protocol_type.to_string(),
            protocol: String::new(),
            leader: String::new(),
            members: BTreeMap::new(),
            rebalance_deadline: None,
        }
    }

    /// Starts a rebalance: pending syncs learn REBALANCE_IN_PROGRESS, members rejoin.
    fn prepare_rebalance(&mut self, now: Instant) {
        if self.state == State::PreparingRebalance {
            return;
        }
        self.state = State::PreparingRebalance;
        let timeout = self
            .members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or(Duration::ZERO);
        self.rebalance_deadline = Some(now + timeout);
        let refused = self.sync_error(REBALANCE_IN_PROGRESS);
        for m in self.members.values_mut() {
            if let Some(w) = m.sync_waiter.take() {
                let _ = w.send(refused.clone());
            }
        }
    }

    fn sync_error(&self, error_code: i16) -> Synced {
        Synced {
            error_code,
            protocol_type: self.protocol_type.clone(),
            protocol: self.protocol.clone(),
            assignment: Bytes::new(),
        }
    }

    /// Removes members whose session expired (a member waiting in a join is alive).
    fn expire(&mut self, now: Instant) {
        let before = self.members.len();
        self.members.retain(|_, m| {
            m.join_waiter.is_some() || now.duration_since(m.last_seen) <= m.session_timeout
        });
        if self.members.len() != before {
            self.after_departure(now);
        }
    }

    fn after_departure(&mut self, now: Instant) {
        if self.members.is_empty() {
            self.state = State::Empty;
            self.rebalance_deadline = None;
            self.leader.clear();
        } else {
            self.prepare_rebalance(now);
        }
    }

    /// Completes the join phase when every member has rejoined, or at the deadline (those
    /// that did not rejoin are removed).
    fn maybe_complete_join(&mut self, now: Instant) {
        if self.state != State::PreparingRebalance {
            return;
        }
        let all_joined = self.members.values().all(|m| m.join_waiter.is_some());
        let late = self.rebalance_deadline.is_some_and(|d| now >= d);
        if !all_joined && !late {
            return;
        }
        self.members.retain(|_, m| m.join_waiter.is_some());
        if self.members.is_empty() {
            self.state = State::Empty;
            return;
        }
        self.generation += 1;
        self.rebalance_deadline = None;
        // The leader's first protocol that every member supports.
        if !self.members.contains_key(&self.leader) {
            self.leader = self.members.keys().next().cloned().unwrap_or_default();
        }
        let leader_protocols: Vec<String> = self
            .members
            .get(&self.leader)
            .map(|m| m.protocols.iter().map(|(n, _)| n.clone()).collect())
            .unwrap_or_default();
        self.protocol = leader_protocols
            .into_iter()
            .find(|p| {
                self.members
                    .values()
                    .all(|m| m.protocols.iter().any(|(n, _)| n == p))
            })
            .unwrap_or_default();
        let metadata: Vec<(String, Bytes)> = self
            .members
            .iter()
            .map(|(id, m)| {
                let md = m
                    .protocols
                    .iter()
                    .find(|(n, _)| *n == self.protocol)
                    .map(|(_, md)| md.clone())
                    .unwrap_or_default();
                (id.clone(), md)
            })
            .collect();
        self.state = State::CompletingRebalance;
        for (id, m) in &mut self.members {
            m.assignment = Bytes::new();
            m.last_seen = now;
            if let Some(w) = m.join_waiter.take() {
                let _ = w.send(Joined {
                    error_code: codes::NONE,
                    generation: self.generation,
                    protocol_type: self.protocol_type.clone(),
                    protocol: self.protocol.clone(),
                    leader: self.leader.clone(),
                    member_id: id.clone(),
                    members: if *id == self.leader {
                        metadata.clone()
                    } else {
                        Vec::new()
                    },
                });
            }
        }
    }
}

/// A join request's fields.
pub(crate) struct JoinArgs {
    pub(crate) group: String,
    pub(crate) member_id: String,
    pub(crate) client_id: String,
    pub(crate) client_host: String,
    pub(crate) session_timeout_ms: i32,
    pub(crate) rebalance_timeout_ms: i32,
    pub(crate) protocol_type: String,
    pub(crate) protocols: Vec<(String, Bytes)>,
    /// JoinGroup v4+: an unknown member first gets MEMBER_ID_REQUIRED.
    pub(crate) require_member_id: bool,
}

/// A group's description (DescribeGroups).
pub(crate) struct Described {
    pub(crate) state: &'static str,
    pub(crate) protocol_type: String,
    pub(crate) protocol: String,
    /// (member id, client id, client host, metadata, assignment)
    pub(crate) members: Vec<(String, String, String, Bytes, Bytes)>,
}

/// Every Kafka group of the server.
#[derive(Default)]
pub(crate) struct Coordinator {
    groups: Mutex<HashMap<String, Group>>,
    next_member: std::sync::atomic::AtomicU64,
}

/// How a parked join or sync proceeds.
pub(crate) enum Waiting<T> {
    Done(T),
    Wait(flume::Receiver<T>),
}

impl Coordinator {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, Group>) -> T) -> T {
        let mut g = match self.groups.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        f(&mut g)
    }

    fn new_member_id(&self, client_id: &str) -> String {
        let n = self
            .next_member
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let now = shardline_engine::batch::now_us();
        format!("{client_id}-{now:x}-{n}")
    }

    /// JoinGroup: adds or refreshes the member and starts (or joins) a rebalance.
    pub(crate) fn join(&self, a: JoinArgs) -> Waiting<Joined> {
        let now = Instant::now();
        let fail = |error_code: i16, member_id: String| {
            Waiting::Done(Joined {
                error_code,
                generation: -1,
                protocol_type: a.protocol_type.clone(),
                protocol: String::new(),
                leader: String::new(),
                member_id,
                members: Vec::new(),
            })
        };
        if a.session_timeout_ms <= 0 {
            return fail(INVALID_SESSION_TIMEOUT, a.member_id.clone());
        }
        if a.member_id.is_empty() && a.require_member_id {
            return fail(MEMBER_ID_REQUIRED, self.new_member_id(&a.client_id));
        }
        let member_id = if a.member_id.is_empty() {
            self.new_member_id(&a.client_id)
        } else {
            a.member_id.clone()
        };
        let session = Duration::from_millis(u64::try_from(a.session_timeout_ms).unwrap_or(0));
        let rebalance = Duration::from_millis(
            u64::try_from(a.rebalance_timeout_ms)
                .ok()
                .filter(|r| *r > 0)
                .unwrap_or(session.as_millis() as u64),
        );
        self.with(|groups| {
            let g = groups
                .entry(a.group.clone())
                .or_insert_with(|| Group::new(&a.protocol_type));
            g.expire(now);
            if g.members.is_empty() {
                g.protocol_type = a.protocol_type.clone();
            } else if g.protocol_type != a.protocol_type
                || !a.protocols.iter().any(|(n, _)| {
                    g.members
                        .values()
                        .all(|m| m.protocols.iter().any(|(mn, _)| mn == n))
                })
            {
                return fail(INCONSISTENT_GROUP_PROTOCOL, member_id.clone());
            }
            let (tx, rx) = flume::bounded(1);
            let m = g
                .members
                .entry(member_id.clone())
                .or_insert_with(|| Member {
                    client_id: a.client_id.clone(),
                    client_host: a.client_host.clone(),
                    session_timeout: session,
                    rebalance_timeout: rebalance,
                    protocols: Vec::new(),
                    assignment: Bytes::new(),
                    last_seen: now,
                    join_waiter: None,
                    sync_waiter: None,
                });
            m.protocols = a.protocols.clone();
            m.session_timeout = session;
            m.rebalance_timeout = rebalance;
            m.last_seen = now;
            m.join_waiter = Some(tx);
            if g.leader.is_empty() {
                g.leader = member_id.clone();
            }
            g.prepare_rebalance(now);
            g.maybe_complete_join(now);
            Waiting::Wait(rx)
        })
    }

    /// Re-checks a group: expired sessions, the rebalance deadline.
    pub(crate) fn tick(&self, group: &str) {
        let now = Instant::now();
        self.with(|groups| {
            if let Some(g) = groups.get_mut(group) {
                g.expire(now);
                g.maybe_complete_join(now);
            }
        });
    }

    /// SyncGroup: the leader's assignment is stored and relayed; the others wait for it.
    pub(crate) fn sync(
        &self,
        group: &str,
        generation: i32,
        member_id: &str,
        assignments: Vec<(String, Bytes)>,
    ) -> Waiting<Synced> {
        let now = Instant::now();
        self.with(|groups| {
            let Some(g) = groups.get_mut(group) else {
                return Waiting::Done(Group::new("").sync_error(UNKNOWN_MEMBER_ID));
            };
            g.expire(now);
            if !g.members.contains_key(member_id) {
                return Waiting::Done(g.sync_error(UNKNOWN_MEMBER_ID));
            }
            if generation != g.generation {
                return Waiting::Done(g.sync_error(ILLEGAL_GENERATION));
            }
            match g.state {
                State::PreparingRebalance | State::Empty => {
                    return Waiting::Done(g.sync_error(REBALANCE_IN_PROGRESS));
                }
                State::Stable => {
                    let assignment = g.members[member_id].assignment.clone();
                    let mut s = g.sync_error(codes::NONE);
                    s.assignment = assignment;
                    return Waiting::Done(s);
                }
                State::CompletingRebalance => {}
            }
            if member_id == g.leader {
                for (id, a) in assignments {
                    if let Some(m) = g.members.get_mut(&id) {
                        m.assignment = a;
                    }
                }
                g.state = State::Stable;
                let (pt, p) = (g.protocol_type.clone(), g.protocol.clone());
                for m in g.members.values_mut() {
                    m.last_seen = now;
                    if let Some(w) = m.sync_waiter.take() {
                        let _ = w.send(Synced {
                            error_code: codes::NONE,
                            protocol_type: pt.clone(),
                            protocol: p.clone(),
                            assignment: m.assignment.clone(),
                        });
                    }
                }
                let mut s = g.sync_error(codes::NONE);
                s.assignment = g.members[member_id].assignment.clone();
                return Waiting::Done(s);
            }
            let (tx, rx) = flume::bounded(1);
            if let Some(m) = g.members.get_mut(member_id) {
                m.last_seen = now;
                m.sync_waiter = Some(tx);
            }
            Waiting::Wait(rx)
        })
    }

    /// Heartbeat: keeps the member alive; tells it to rejoin during a rebalance.
    pub(crate) fn heartbeat(&self, group: &str, generation: i32, member_id: &str) -> i16 {
        let now = Instant::now();
        self.with(|groups| {
            let Some(g) = groups.get_mut(group) else {
                return UNKNOWN_MEMBER_ID;
            };
            if let Some(m) = g.members.get_mut(member_id) {
                m.last_seen = now;
            }
            g.expire(now);
            g.maybe_complete_join(now);
            if !g.members.contains_key(member_id) {
                return UNKNOWN_MEMBER_ID;
            }
            match g.state {
                State::PreparingRebalance => REBALANCE_IN_PROGRESS,
                _ if generation != g.generation => ILLEGAL_GENERATION,
                _ => codes::NONE,
            }
        })
    }

    /// LeaveGroup: removes the members; the others rebalance.
    pub(crate) fn leave(&self, group: &str, member_ids: &[String]) -> Vec<i16> {
        let now = Instant::now();
        self.with(|groups| {
            let Some(g) = groups.get_mut(group) else {
                return vec![UNKNOWN_MEMBER_ID; member_ids.len()];
            };
            let codes: Vec<i16> = member_ids
                .iter()
                .map(|id| match g.members.remove(id) {
                    Some(_) => codes::NONE,
                    None => UNKNOWN_MEMBER_ID,
                })
                .collect();
            if codes.contains(&codes::NONE) {
                g.after_departure(now);
                g.maybe_complete_join(now);
            }
            codes
        })
    }

    /// Whether `member_id` at `generation` may commit (generation < 0: a standalone commit,
    /// allowed when the member is not in a live group generation).
    pub(crate) fn check_commit(&self, group: &str, generation: i32, member_id: &str) -> i16 {
        if generation < 0 {
            return codes::NONE;
        }
        self.with(|groups| {
            let Some(g) = groups.get_mut(group) else {
                return UNKNOWN_MEMBER_ID;
            };
            let Some(m) = g.members.get_mut(member_id) else {
                return UNKNOWN_MEMBER_ID;
            };
            m.last_seen = Instant::now();
            if generation != g.generation {
                return ILLEGAL_GENERATION;
            }
            codes::NONE
        })
    }

    pub(crate) fn describe(&self, group: &str) -> Option<Described> {
        self.with(|groups| {
            groups.get(group).map(|g| Described {
                state: g.state.name(),
                protocol_type: g.protocol_type.clone(),
                protocol: g.protocol.clone(),
                members: g
                    .members
                    .iter()
                    .map(|(id, m)| {
                        let md = m
                            .protocols
                            .iter()
                            .find(|(n, _)| *n == g.protocol)
                            .map(|(_, b)| b.clone())
                            .unwrap_or_default();
                        (
                            id.clone(),
                            m.client_id.clone(),
                            m.client_host.clone(),
                            md,
                            m.assignment.clone(),
                        )
                    })
                    .collect(),
            })
        })
    }

    /// (group, protocol type, state) of every group.
    pub(crate) fn list(&self) -> Vec<(String, String, &'static str)> {
        self.with(|groups| {
            groups
                .iter()
                .map(|(n, g)| (n.clone(), g.protocol_type.clone(), g.state.name()))
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join(c: &Coordinator, member: &str) -> Waiting<Joined> {
        c.join(JoinArgs {
            group: "g".into(),
            member_id: member.into(),
            client_id: "c".into(),
            client_host: "h".into(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 10_000,
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::from_static(b"md"))],
            require_member_id: true,
        })
    }

    fn done<T>(w: Waiting<T>) -> T {
        match w {
            Waiting::Done(t) => t,
            Waiting::Wait(rx) => rx.try_recv().expect("completed"),
        }
    }

    #[test]
    fn two_members_join_sync_and_rebalance_when_one_leaves() {
        let c = Coordinator::default();
        let first = done(join(&c, ""));
        assert_eq!(first.error_code, MEMBER_ID_REQUIRED);
        let a = first.member_id;
        let ja = done(join(&c, &a));
        assert_eq!(
            (ja.error_code, ja.generation, ja.leader.as_str()),
            (0, 1, a.as_str())
        );
        assert_eq!(ja.members.len(), 1);
        let sa = done(c.sync("g", 1, &a, vec![(a.clone(), Bytes::from_static(b"all"))]));
        assert_eq!(sa.assignment, Bytes::from_static(b"all"));
        assert_eq!(c.heartbeat("g", 1, &a), codes::NONE);
        // A second member: the first learns of the rebalance by heartbeat and rejoins.
        let b = done(join(&c, "")).member_id;
        let Waiting::Wait(jb) = join(&c, &b) else {
            panic!("b waits for a to rejoin")
        };
        assert_eq!(c.heartbeat("g", 1, &a), REBALANCE_IN_PROGRESS);
        let ja = done(join(&c, &a));
        let jb = jb.try_recv().unwrap();
        assert_eq!((ja.generation, jb.generation), (2, 2));
        assert_eq!(ja.members.len(), 2, "the leader gets every member");
        assert!(jb.members.is_empty());
        let Waiting::Wait(sb) = c.sync("g", 2, &b, Vec::new()) else {
            panic!("b waits for the leader's assignment")
        };
        let assignments = vec![
            (a.clone(), Bytes::from_static(b"p0")),
            (b.clone(), Bytes::from_static(b"p1")),
        ];
        assert_eq!(
            done(c.sync("g", 2, &a, assignments)).assignment,
            Bytes::from_static(b"p0")
        );
        assert_eq!(sb.try_recv().unwrap().assignment, Bytes::from_static(b"p1"));
        assert_eq!(c.check_commit("g", 1, &a), ILLEGAL_GENERATION);
        assert_eq!(c.check_commit("g", 2, &a), codes::NONE);
        // b leaves: a rebalances alone into generation 3.
        assert_eq!(c.leave("g", std::slice::from_ref(&b)), vec![codes::NONE]);
        assert_eq!(c.heartbeat("g", 2, &a), REBALANCE_IN_PROGRESS);
        assert_eq!(done(join(&c, &a)).generation, 3);
        assert_eq!(c.describe("g").unwrap().members.len(), 1);
    }
}
