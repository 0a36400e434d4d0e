//! Api keys, their versions, and version negotiation (docs/protocol.md, "Api keys" and
//! "Version negotiation"); and **the api table**: one entry per api, from which the [`ApiKey`]
//! enum, the [`Request`] and [`Response`] enums, decoding and encoding dispatch, the supported
//! versions and the permissions the server checks are all generated. How to add an api:
//! net/protocol/README.md.

use super::acl::{Operation, ResourceType};
use super::codec::{Blobs, FrameEncoder, Head, Prepared, Source, checked, plain};
use super::error::WireError;
use super::membership::*;
use super::messages::*;
use super::nodes::*;
use super::ops::*;
use super::queue::*;
use super::semantics::*;

/// Decodes one message of the table: a plain archive (requests then keep their [`Limits`]), or
/// a `[blobs]` payload with a data section.
///
/// [`Limits`]: super::codec::Limits
macro_rules! decode_as {
    (() request $t:ty, $api:ident, $src:ident) => {
        checked::<$t>($api, $src.bytes())?
    };
    (() response $t:ty, $api:ident, $src:ident) => {
        plain::<$t>($api, $src.bytes())?
    };
    ((blobs) $kind:ident $t:ty, $api:ident, $src:ident) => {
        <$t as Blobs>::decode_blobs($src)?
    };
}

/// Archives one message of the table into the encoder's scratch and sizes its frame.
macro_rules! prepare_as {
    (() $enc:ident, $head:ident, $m:ident) => {
        $enc.prepare($head, $m, Default::default())
    };
    ((blobs) $enc:ident, $head:ident, $m:ident) => {
        Blobs::prepare_blobs($m, $enc, $head)
    };
}

/// Generates everything per api from the table below (see its comment for the columns).
macro_rules! api_table {
    (
        requests {$(
            $(#[$doc:meta])*
            $name:ident = $key:literal, versions $min:literal..=$max:literal,
            $req:ty $([$rqc:ident])? => $resp:ty $([$rsc:ident])?,
            acl |$r:pat_param, $f:pat_param| $acl:expr;
        )*}
        one_way {$(
            $(#[$odoc:meta])*
            $oname:ident = $okey:literal, versions $omin:literal..=$omax:literal,
            $oreq:ty,
            acl |$or:pat_param, $of:pat_param| $oacl:expr;
        )*}
        push {$(
            $(#[$pdoc:meta])*
            $pname:ident = $pkey:literal, versions $pmin:literal..=$pmax:literal;
        )*}
    ) => {
        /// Every request kind, and `Push`, the server's unsolicited frame. The numbers are the
        /// wire's `api_key`; they are never reused. They need not be dense (areas of the
        /// protocol own ranges: 0-14 core, 15-29 messaging semantics, 30-39 operations, 40-49
        /// security, 50-59 cluster nodes) but stay below [`API_KEY_LIMIT`].
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u16)]
        pub enum ApiKey {
            $($(#[$doc])* $name = $key,)*
            $($(#[$odoc])* $oname = $okey,)*
            $($(#[$pdoc])* $pname = $pkey,)*
        }

        /// The table's keys, in table order.
        const LISTED: &[ApiKey] = &[$(ApiKey::$name,)* $(ApiKey::$oname,)* $(ApiKey::$pname,)*];

        impl ApiKey {
            pub fn name(self) -> &'static str {
                match self {
                    $(ApiKey::$name => stringify!($name),)*
                    $(ApiKey::$oname => stringify!($oname),)*
                    $(ApiKey::$pname => stringify!($pname),)*
                }
            }

            /// Versions this build can encode and decode, as `(min, max)`.
            pub const fn versions(self) -> (u16, u16) {
                match self {
                    $(ApiKey::$name => ($min, $max),)*
                    $(ApiKey::$oname => ($omin, $omax),)*
                    $(ApiKey::$pname => ($pmin, $pmax),)*
                }
            }

            /// Whether a client may send a request with this key (all but `Push`).
            pub fn is_request(self) -> bool {
                match self {
                    $(ApiKey::$pname => false,)*
                    _ => true,
                }
            }

            /// Whether the server answers a request with this key (all but GrantCredits; a
            /// Produce with `acks = none` is answered by nobody either, see
            /// [`Request::expects_response`]).
            pub fn has_response(self) -> bool {
                match self {
                    $(ApiKey::$name => true,)*
                    _ => false,
                }
            }
        }

        /// A request, as the server receives it.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum Request {
            $($(#[$doc])* $name($req),)*
            $($(#[$odoc])* $oname($oreq),)*
        }

        /// A response to a request (push frames are [`Push`], errors [`ErrorResponse`]).
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum Response {
            $($(#[$doc])* $name($resp),)*
        }

        impl Request {
            pub fn api_key(&self) -> ApiKey {
                match self {
                    $(Request::$name(_) => ApiKey::$name,)*
                    $(Request::$oname(_) => ApiKey::$oname,)*
                }
            }

            /// Every (resource, name, operation) the request needs (docs/security.md, "What
            /// each api needs"). Requests that list topics or groups (ListTopics, Metadata of
            /// all topics, ListGroups) need nothing here: the server filters their answers.
            pub fn for_each_permission<'r>(
                &'r self,
                mut f: impl FnMut(ResourceType, &'r str, Operation),
            ) {
                #[allow(unused_imports)]
                use Operation::*;
                #[allow(unused_imports)]
                use ResourceType::*;
                let f = &mut f;
                match self {
                    $(Request::$name($r) => {
                        let $f = &mut *f;
                        $acl
                    })*
                    $(Request::$oname($or) => {
                        let $of = &mut *f;
                        $oacl
                    })*
                }
            }

            /// The payload of a request with this (known, request) key.
            pub(crate) fn decode_payload(api: ApiKey, src: Source<'_>) -> Result<Request, WireError> {
                Ok(match api {
                    $(ApiKey::$name => Request::$name(decode_as!(($($rqc)?) request $req, api, src)),)*
                    $(ApiKey::$oname => Request::$oname(decode_as!(() request $oreq, api, src)),)*
                    _ => return Err(WireError::UnknownApi { api_key: api.as_u16() }),
                })
            }

            pub(crate) fn prepare_payload<'b>(
                &'b self,
                enc: &mut FrameEncoder,
                head: Head,
            ) -> Result<Prepared<'b>, WireError> {
                match self {
                    $(Request::$name(m) => prepare_as!(($($rqc)?) enc, head, m),)*
                    $(Request::$oname(m) => prepare_as!(() enc, head, m),)*
                }
            }
        }

        impl Response {
            pub fn api_key(&self) -> ApiKey {
                match self {
                    $(Response::$name(_) => ApiKey::$name,)*
                }
            }

            /// The payload of a response to a request with this key.
            pub(crate) fn decode_payload(api: ApiKey, src: Source<'_>) -> Result<Response, WireError> {
                Ok(match api {
                    $(ApiKey::$name => Response::$name(decode_as!(($($rsc)?) response $resp, api, src)),)*
                    _ => {
                        return Err(WireError::UnexpectedFrame {
                            kind: "response",
                            reason: "GrantCredits and Push have no response",
                        });
                    }
                })
            }

            pub(crate) fn prepare_payload<'b>(
                &'b self,
                enc: &mut FrameEncoder,
                head: Head,
            ) -> Result<Prepared<'b>, WireError> {
                match self {
                    $(Response::$name(m) => prepare_as!(($($rsc)?) enc, head, m),)*
                }
            }
        }
    };
}

// The api table: one entry per api. Columns: `Name = key`, the versions this build speaks, the
// request type => the response type (`[blobs]`: the payload carries raw batches in a data
// section, see codec.rs), and the permissions the server checks, as a closure over the request
// and `f(resource type, resource name, operation)` (docs/security.md, "What each api needs").
// `one_way` requests get no response; `push` keys are frames only the server sends.
// Adding an api: net/protocol/README.md.
api_table! {
    requests {
        // --- 0..=14: core ---
        Handshake = 0, versions 0..=0, HandshakeRequest => HandshakeResponse,
            acl |_, _| ();
        Ping = 1, versions 0..=0, PingRequest => PingResponse,
            acl |_, _| ();
        Metadata = 2, versions 0..=0, MetadataRequest => MetadataResponse,
            acl |m, f| m.topics.iter().for_each(|t| f(Topic, t, Describe));
        CreateTopic = 3, versions 0..=0, CreateTopicRequest => CreateTopicResponse,
            acl |c, f| f(Topic, &c.name, Create);
        DeleteTopic = 4, versions 0..=0, DeleteTopicRequest => DeleteTopicResponse,
            acl |d, f| f(Topic, &d.name, Delete);
        ListTopics = 5, versions 0..=0, ListTopicsRequest => ListTopicsResponse,
            acl |_, _| ();
        DescribeTopic = 6, versions 0..=0, DescribeTopicRequest => DescribeTopicResponse,
            acl |d, f| f(Topic, &d.name, Describe);
        Produce = 7, versions 0..=0, ProduceRequest [blobs] => ProduceResponse,
            acl |p, f| p.topics.iter().for_each(|t| f(Topic, &t.name, Produce));
        Fetch = 8, versions 0..=1, FetchRequest => FetchResponse [blobs],
            acl |r, f| r.topics.iter().for_each(|t| f(Topic, &t.name, Consume));
        ListOffsets = 9, versions 0..=0, ListOffsetsRequest => ListOffsetsResponse,
            acl |l, f| l.topics.iter().for_each(|t| f(Topic, &t.name, Describe));
        Subscribe = 10, versions 0..=1, SubscribeRequest => SubscribeResponse,
            acl |s, f| f(Topic, &s.topic, Consume);
        Unsubscribe = 12, versions 0..=0, UnsubscribeRequest => UnsubscribeResponse,
            acl |_, _| ();
        Stats = 14, versions 0..=0, StatsRequest => StatsResponse,
            acl |_, f| f(Cluster, "*", Describe);
        // --- 15..=21: messaging semantics (semantics.rs) ---
        // Allocating producer ids (idempotence) is a cluster-level write.
        InitProducer = 15, versions 0..=0, InitProducerRequest => InitProducerResponse,
            acl |_, f| f(Cluster, "*", Produce);
        // JoinGroup and Heartbeat both answer with an assignment.
        JoinGroup = 16, versions 0..=0, JoinGroupRequest => GroupAssignment,
            acl |j, f| { f(Group, &j.group, Consume); f(Topic, &j.topic, Consume) };
        Heartbeat = 17, versions 0..=0, HeartbeatRequest => GroupAssignment,
            acl |h, f| f(Group, &h.group, Consume);
        LeaveGroup = 18, versions 0..=0, LeaveGroupRequest => LeaveGroupResponse,
            acl |l, f| f(Group, &l.group, Consume);
        OffsetCommit = 19, versions 0..=0, OffsetCommitRequest => OffsetCommitResponse,
            acl |c, f| { f(Group, &c.group, Consume); f(Topic, &c.topic, Consume) };
        OffsetFetch = 20, versions 0..=0, OffsetFetchRequest => OffsetFetchResponse,
            acl |o, f| { f(Group, &o.group, Describe); f(Topic, &o.topic, Describe) };
        DescribeGroup = 21, versions 0..=0, DescribeGroupRequest => DescribeGroupResponse,
            acl |d, f| f(Group, &d.group, Describe);
        // --- 22..=29: work queues (queue.rs) ---
        QueueCreate = 22, versions 0..=0, QueueCreateRequest => QueueCreateResponse,
            acl |q, f| f(Topic, &q.name, Create);
        QueueReceive = 23, versions 0..=0, QueueReceiveRequest => QueueMessages,
            acl |q, f| f(Topic, &q.topic, Consume);
        QueueAck = 24, versions 0..=0, QueueAckRequest => QueueLeaseResponse,
            acl |q, f| f(Topic, &q.topic, Consume);
        QueueNack = 25, versions 0..=0, QueueNackRequest => QueueLeaseResponse,
            acl |q, f| f(Topic, &q.topic, Consume);
        QueueChangeVisibility = 26, versions 0..=0,
            QueueChangeVisibilityRequest => QueueLeaseResponse,
            acl |q, f| f(Topic, &q.topic, Consume);
        QueueStats = 27, versions 0..=0, QueueStatsRequest => QueueStatsResponse,
            acl |q, f| f(Topic, &q.topic, Describe);
        // Peeking reads message bodies.
        QueuePeek = 28, versions 0..=0, QueuePeekRequest => QueueMessages,
            acl |q, f| f(Topic, &q.topic, Consume);
        // Re-drive moves messages out of a dead-letter topic back into their sources.
        QueueRedrive = 29, versions 0..=0, QueueRedriveRequest => QueueRedriveResponse,
            acl |q, f| f(Topic, &q.dead_letter_topic, Admin);
        // --- 30..=39: operations (ops.rs) ---
        Metrics = 30, versions 0..=0, MetricsRequest => MetricsResponse,
            acl |_, f| f(Cluster, "*", Describe);
        AlterTopic = 31, versions 0..=0, AlterTopicRequest => AlterTopicResponse,
            acl |a, f| f(Topic, &a.name, Admin);
        // Rewriting a group's position bypasses its members: an administrative act on the
        // group (Kafka asks only Group Read, as its reset is an ordinary commit); reading the
        // partitions' offsets and timestamps needs Describe on the topic.
        ResetOffsets = 32, versions 0..=0, ResetOffsetsRequest => ResetOffsetsResponse,
            acl |r, f| { f(Group, &r.group, Admin); f(Topic, &r.topic, Describe) };
        // Purging deletes messages, as Kafka's DeleteRecords needs Topic Delete.
        QueuePurge = 33, versions 0..=0, QueuePurgeRequest => QueuePurgeResponse,
            acl |q, f| f(Topic, &q.topic, Delete);
        // Filtered instead: only the groups the principal may describe are listed.
        ListGroups = 34, versions 0..=0, ListGroupsRequest => ListGroupsResponse,
            acl |_, _| ();
        // Like AlterTopic: a change to the topic's settings.
        AddPartitions = 35, versions 0..=0, AddPartitionsRequest => AddPartitionsResponse,
            acl |a, f| f(Topic, &a.name, Admin);
        // Replicated topics (issue 14): CreateTopic with a replication factor, and each
        // partition's leader, replicas, in-sync set, epoch and high watermark.
        CreateReplicatedTopic = 36, versions 0..=0,
            CreateReplicatedTopicRequest => CreateTopicResponse,
            acl |c, f| f(Topic, &c.name, Create);
        DescribeReplicas = 37, versions 0..=0, DescribeReplicasRequest => DescribeReplicasResponse,
            acl |d, f| f(Topic, &d.name, Describe);
        // The nodes' client addresses and each asked topic's partition leaders, so that
        // clients reach each partition's leader (issue 14).
        DescribeCluster = 38, versions 0..=0, DescribeClusterRequest => DescribeClusterResponse,
            acl |d, f| for t in &d.topics { f(Topic, t, Describe) };
        // Moving a partition's replicas is a cluster operation (membership.rs).
        ReassignPartition = 39, versions 0..=0,
            ReassignPartitionRequest => ReassignPartitionResponse,
            acl |_, f| f(Cluster, "*", Admin);
        // --- 40..=49: security (security.rs, docs/security.md) ---
        Authenticate = 40, versions 0..=0, AuthenticateRequest => AuthenticateResponse,
            acl |_, _| ();
        // Users, tokens and ACLs (on a cluster through the controller): a super user's act.
        AlterSecurity = 41, versions 0..=0, AlterSecurityRequest => AlterSecurityResponse,
            acl |_, f| f(Cluster, "*", Admin);
        // --- 50..=59: cluster nodes (nodes.rs) ---
        // Adding or removing a node is a cluster operation.
        AlterNode = 50, versions 0..=0, AlterNodeRequest => AlterNodeResponse,
            acl |_, f| f(Cluster, "*", Admin);
    }
    one_way {
        GrantCredits = 11, versions 0..=0, GrantCreditsRequest,
            acl |_, _| ();
    }
    push {
        Push = 13, versions 0..=0;
    }
}

/// Number of api keys this build knows.
pub const API_COUNT: usize = LISTED.len();

/// Every api key is below this (a bound for lookup tables).
pub const API_KEY_LIMIT: usize = 64;

/// `api_key` -> `ApiKey`, built once at compile time from the table.
const BY_KEY: [Option<ApiKey>; API_KEY_LIMIT] = {
    let mut table = [None; API_KEY_LIMIT];
    let mut i = 0;
    while i < API_COUNT {
        let k = LISTED[i];
        assert!((k as usize) < API_KEY_LIMIT, "api key above API_KEY_LIMIT");
        assert!(table[k as usize].is_none(), "api key listed twice");
        let (min, max) = k.versions();
        assert!(min <= max, "empty version range");
        table[k as usize] = Some(k);
        i += 1;
    }
    table
};

impl ApiKey {
    /// All api keys in numeric order.
    pub const ALL: [ApiKey; API_COUNT] = {
        let mut all = [LISTED[0]; API_COUNT];
        let (mut key, mut n) = (0, 0);
        while key < API_KEY_LIMIT {
            if let Some(k) = BY_KEY[key] {
                all[n] = k;
                n += 1;
            }
            key += 1;
        }
        assert!(n == API_COUNT);
        all
    };

    pub fn from_u16(key: u16) -> Option<ApiKey> {
        BY_KEY.get(usize::from(key)).copied().flatten()
    }

    /// Like [`ApiKey::from_u16`], as a wire error.
    pub fn parse(key: u16) -> Result<ApiKey, WireError> {
        ApiKey::from_u16(key).ok_or(WireError::UnknownApi { api_key: key })
    }

    pub fn as_u16(self) -> u16 {
        self as u16
    }

    /// Newest version this build speaks.
    pub const fn version_max(self) -> u16 {
        self.versions().1
    }

    /// Fails with `UnsupportedVersion` unless this build speaks `version` of the api.
    pub fn check_version(self, version: u16) -> Result<(), WireError> {
        let (min, max) = self.versions();
        if version < min || version > max {
            return Err(WireError::UnsupportedVersion {
                api_key: self.as_u16(),
                version,
                min,
                max,
            });
        }
        Ok(())
    }
}

/// The ranges this build supports, for the Handshake request (client) or the negotiation
/// (server).
pub fn supported_apis() -> Vec<ApiRange> {
    ApiKey::ALL
        .iter()
        .map(|&k| {
            let (min_version, max_version) = k.versions();
            ApiRange {
                api_key: k.as_u16(),
                min_version,
                max_version,
            }
        })
        .collect()
}

/// Server side of the Handshake: for every api in both lists, the highest version both speak.
/// Apis only one side knows, or whose ranges do not overlap, are left out; the client must not
/// use them. A key listed twice by the peer counts once (its first entry).
pub fn negotiate(ours: &[ApiRange], theirs: &[ApiRange]) -> Vec<ApiVersion> {
    let mut out: Vec<ApiVersion> = Vec::new();
    for t in theirs {
        if out.iter().any(|v| v.api_key == t.api_key) {
            continue;
        }
        let Some(o) = ours.iter().find(|o| o.api_key == t.api_key) else {
            continue;
        };
        let low = o.min_version.max(t.min_version);
        let high = o.max_version.min(t.max_version);
        if low <= high {
            out.push(ApiVersion {
                api_key: t.api_key,
                version: high,
            });
        }
    }
    out.sort_by_key(|v| v.api_key);
    out
}

/// The versions agreed on one connection, looked up on every request the client sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NegotiatedVersions {
    versions: [Option<u16>; API_KEY_LIMIT],
}

impl NegotiatedVersions {
    /// From the server's Handshake answer. Keys this build does not know, or versions it does not
    /// speak, are ignored (the api counts as unavailable).
    pub fn from_chosen(chosen: &[ApiVersion]) -> Self {
        let mut versions = [None; API_KEY_LIMIT];
        for v in chosen {
            if let Some(k) = ApiKey::from_u16(v.api_key)
                && k.check_version(v.version).is_ok()
            {
                versions[k as usize] = Some(v.version);
            }
        }
        NegotiatedVersions { versions }
    }

    /// Every api at this build's newest version (both ends of a test, or before negotiation).
    pub fn newest() -> Self {
        let mut versions = [None; API_KEY_LIMIT];
        for k in ApiKey::ALL {
            versions[k as usize] = Some(k.version_max());
        }
        NegotiatedVersions { versions }
    }

    /// The version to send `api` at, or `UnsupportedVersion` if it was not agreed.
    pub fn version(&self, api: ApiKey) -> Result<u16, WireError> {
        self.versions[api as usize].ok_or_else(|| {
            let (min, max) = api.versions();
            WireError::UnsupportedVersion {
                api_key: api.as_u16(),
                version: max,
                min,
                max,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_keys_round_trip() {
        for (i, k) in ApiKey::ALL.iter().enumerate() {
            assert_eq!(ApiKey::from_u16(k.as_u16()), Some(*k));
            if i > 0 {
                assert!(ApiKey::ALL[i - 1] < *k, "ALL is in numeric order");
            }
        }
        for key in 0..=u16::MAX {
            let known = ApiKey::ALL.iter().any(|k| k.as_u16() == key);
            assert_eq!(ApiKey::from_u16(key).is_some(), known, "key {key}");
        }
        assert!(matches!(
            ApiKey::parse(999),
            Err(WireError::UnknownApi { api_key: 999 })
        ));
    }

    /// The api keys are wire numbers: pinned here, so that an edit of the table that moves one
    /// fails a test, not a peer.
    #[test]
    fn the_table_keeps_every_key_and_kind() {
        let keys: Vec<(&str, u16)> = ApiKey::ALL.iter().map(|k| (k.name(), k.as_u16())).collect();
        #[rustfmt::skip]
        let want = [
            ("Handshake", 0), ("Ping", 1), ("Metadata", 2), ("CreateTopic", 3),
            ("DeleteTopic", 4), ("ListTopics", 5), ("DescribeTopic", 6), ("Produce", 7),
            ("Fetch", 8), ("ListOffsets", 9), ("Subscribe", 10), ("GrantCredits", 11),
            ("Unsubscribe", 12), ("Push", 13), ("Stats", 14), ("InitProducer", 15),
            ("JoinGroup", 16), ("Heartbeat", 17), ("LeaveGroup", 18), ("OffsetCommit", 19),
            ("OffsetFetch", 20), ("DescribeGroup", 21), ("QueueCreate", 22),
            ("QueueReceive", 23), ("QueueAck", 24), ("QueueNack", 25),
            ("QueueChangeVisibility", 26), ("QueueStats", 27), ("QueuePeek", 28),
            ("QueueRedrive", 29), ("Metrics", 30), ("AlterTopic", 31), ("ResetOffsets", 32),
            ("QueuePurge", 33), ("ListGroups", 34), ("AddPartitions", 35),
            ("CreateReplicatedTopic", 36), ("DescribeReplicas", 37), ("DescribeCluster", 38),
            ("ReassignPartition", 39), ("Authenticate", 40), ("AlterSecurity", 41),
            ("AlterNode", 50),
        ];
        assert_eq!(keys, want);
        for k in ApiKey::ALL {
            assert_eq!(format!("{k:?}"), k.name());
            // Fetch and Subscribe 1: the read-options trailer (isolation), issue 18.
            let max = u16::from(matches!(k, ApiKey::Fetch | ApiKey::Subscribe));
            assert_eq!(k.versions(), (0, max), "{k:?}");
            assert_eq!(k.is_request(), k != ApiKey::Push, "{k:?}");
            let answered = !matches!(k, ApiKey::Push | ApiKey::GrantCredits);
            assert_eq!(k.has_response(), answered, "{k:?}");
        }
    }

    #[test]
    fn negotiation_picks_highest_common_version() {
        let ours = [
            ApiRange {
                api_key: 1,
                min_version: 0,
                max_version: 3,
            },
            ApiRange {
                api_key: 2,
                min_version: 2,
                max_version: 4,
            },
            ApiRange {
                api_key: 3,
                min_version: 0,
                max_version: 0,
            },
        ];
        let theirs = [
            ApiRange {
                api_key: 2,
                min_version: 0,
                max_version: 1,
            }, // no overlap
            ApiRange {
                api_key: 1,
                min_version: 1,
                max_version: 9,
            },
            ApiRange {
                api_key: 1,
                min_version: 0,
                max_version: 0,
            }, // duplicate: ignored
            ApiRange {
                api_key: 77,
                min_version: 0,
                max_version: 0,
            }, // unknown to us
        ];
        assert_eq!(
            negotiate(&ours, &theirs),
            vec![ApiVersion {
                api_key: 1,
                version: 3
            }]
        );
        let all = negotiate(&supported_apis(), &supported_apis());
        assert_eq!(all.len(), API_COUNT);
        let n = NegotiatedVersions::from_chosen(&all);
        assert_eq!(n, NegotiatedVersions::newest());
        let none = NegotiatedVersions::from_chosen(&[]);
        assert!(none.version(ApiKey::Produce).is_err());
    }
}
