//! Api keys, their versions, and version negotiation (docs/protocol.md, "Api keys" and
//! "Version negotiation").

use super::error::WireError;
use super::messages::{ApiRange, ApiVersion};

/// Every request kind, and `Push`, the server's unsolicited frame. The numbers are the wire's
/// `api_key`; they are never reused. They need not be dense (areas of the protocol own ranges:
/// 0-14 core, 15-29 messaging semantics, 30-39 operations, 40-49 security) but stay below
/// [`API_KEY_LIMIT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u16)]
pub enum ApiKey {
    Handshake = 0,
    Ping = 1,
    Metadata = 2,
    CreateTopic = 3,
    DeleteTopic = 4,
    ListTopics = 5,
    DescribeTopic = 6,
    Produce = 7,
    Fetch = 8,
    ListOffsets = 9,
    Subscribe = 10,
    GrantCredits = 11,
    Unsubscribe = 12,
    Push = 13,
    Stats = 14,
    // 15..=21 messaging semantics (protocol/semantics.rs)
    InitProducer = 15,
    JoinGroup = 16,
    Heartbeat = 17,
    LeaveGroup = 18,
    OffsetCommit = 19,
    OffsetFetch = 20,
    DescribeGroup = 21,
    // 22..=29: work queues (protocol/queue.rs).
    QueueCreate = 22,
    QueueReceive = 23,
    QueueAck = 24,
    QueueNack = 25,
    QueueChangeVisibility = 26,
    QueueStats = 27,
    QueuePeek = 28,
    QueueRedrive = 29,
    // 30-39 operations (protocol/ops.rs)
    Metrics = 30,
    AlterTopic = 31,
    ResetOffsets = 32,
    QueuePurge = 33,
    ListGroups = 34,
    // 40-49: security (docs/security.md)
    Authenticate = 40,
}

/// Number of api keys this build knows.
pub const API_COUNT: usize = 36;

/// Every api key is below this (a bound for lookup tables).
pub const API_KEY_LIMIT: usize = 64;

/// `api_key` -> `ApiKey`, built once at compile time from [`ApiKey::ALL`].
const BY_KEY: [Option<ApiKey>; API_KEY_LIMIT] = {
    let mut table = [None; API_KEY_LIMIT];
    let mut i = 0;
    while i < API_COUNT {
        let k = ApiKey::ALL[i];
        assert!((k as usize) < API_KEY_LIMIT, "api key above API_KEY_LIMIT");
        assert!(table[k as usize].is_none(), "api key listed twice");
        table[k as usize] = Some(k);
        i += 1;
    }
    table
};

impl ApiKey {
    /// All api keys in numeric order.
    pub const ALL: [ApiKey; API_COUNT] = [
        ApiKey::Handshake,
        ApiKey::Ping,
        ApiKey::Metadata,
        ApiKey::CreateTopic,
        ApiKey::DeleteTopic,
        ApiKey::ListTopics,
        ApiKey::DescribeTopic,
        ApiKey::Produce,
        ApiKey::Fetch,
        ApiKey::ListOffsets,
        ApiKey::Subscribe,
        ApiKey::GrantCredits,
        ApiKey::Unsubscribe,
        ApiKey::Push,
        ApiKey::Stats,
        ApiKey::InitProducer,
        ApiKey::JoinGroup,
        ApiKey::Heartbeat,
        ApiKey::LeaveGroup,
        ApiKey::OffsetCommit,
        ApiKey::OffsetFetch,
        ApiKey::DescribeGroup,
        ApiKey::QueueCreate,
        ApiKey::QueueReceive,
        ApiKey::QueueAck,
        ApiKey::QueueNack,
        ApiKey::QueueChangeVisibility,
        ApiKey::QueueStats,
        ApiKey::QueuePeek,
        ApiKey::QueueRedrive,
        ApiKey::Metrics,
        ApiKey::AlterTopic,
        ApiKey::ResetOffsets,
        ApiKey::QueuePurge,
        ApiKey::ListGroups,
        ApiKey::Authenticate,
    ];

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

    pub fn name(self) -> &'static str {
        match self {
            ApiKey::Handshake => "Handshake",
            ApiKey::Ping => "Ping",
            ApiKey::Metadata => "Metadata",
            ApiKey::CreateTopic => "CreateTopic",
            ApiKey::DeleteTopic => "DeleteTopic",
            ApiKey::ListTopics => "ListTopics",
            ApiKey::DescribeTopic => "DescribeTopic",
            ApiKey::Produce => "Produce",
            ApiKey::Fetch => "Fetch",
            ApiKey::ListOffsets => "ListOffsets",
            ApiKey::Subscribe => "Subscribe",
            ApiKey::GrantCredits => "GrantCredits",
            ApiKey::Unsubscribe => "Unsubscribe",
            ApiKey::Push => "Push",
            ApiKey::Stats => "Stats",
            ApiKey::InitProducer => "InitProducer",
            ApiKey::JoinGroup => "JoinGroup",
            ApiKey::Heartbeat => "Heartbeat",
            ApiKey::LeaveGroup => "LeaveGroup",
            ApiKey::OffsetCommit => "OffsetCommit",
            ApiKey::OffsetFetch => "OffsetFetch",
            ApiKey::DescribeGroup => "DescribeGroup",
            ApiKey::Metrics => "Metrics",
            ApiKey::AlterTopic => "AlterTopic",
            ApiKey::ResetOffsets => "ResetOffsets",
            ApiKey::QueuePurge => "QueuePurge",
            ApiKey::ListGroups => "ListGroups",
            ApiKey::QueueCreate => "QueueCreate",
            ApiKey::QueueReceive => "QueueReceive",
            ApiKey::QueueAck => "QueueAck",
            ApiKey::QueueNack => "QueueNack",
            ApiKey::QueueChangeVisibility => "QueueChangeVisibility",
            ApiKey::QueueStats => "QueueStats",
            ApiKey::QueuePeek => "QueuePeek",
            ApiKey::QueueRedrive => "QueueRedrive",
            ApiKey::Authenticate => "Authenticate",
        }
    }

    /// Versions this build can encode and decode, as `(min, max)`. Every api starts at 0.
    pub const fn versions(self) -> (u16, u16) {
        match self {
            ApiKey::Handshake
            | ApiKey::Ping
            | ApiKey::Metadata
            | ApiKey::CreateTopic
            | ApiKey::DeleteTopic
            | ApiKey::ListTopics
            | ApiKey::DescribeTopic
            | ApiKey::Produce
            | ApiKey::Fetch
            | ApiKey::ListOffsets
            | ApiKey::Subscribe
            | ApiKey::GrantCredits
            | ApiKey::Unsubscribe
            | ApiKey::Push
            | ApiKey::Stats
            | ApiKey::InitProducer
            | ApiKey::JoinGroup
            | ApiKey::Heartbeat
            | ApiKey::LeaveGroup
            | ApiKey::OffsetCommit
            | ApiKey::OffsetFetch
            | ApiKey::DescribeGroup => (0, 0),
            ApiKey::Metrics
            | ApiKey::AlterTopic
            | ApiKey::ResetOffsets
            | ApiKey::QueuePurge
            | ApiKey::ListGroups => (0, 0),
            ApiKey::QueueCreate
            | ApiKey::QueueReceive
            | ApiKey::QueueAck
            | ApiKey::QueueNack
            | ApiKey::QueueChangeVisibility
            | ApiKey::QueueStats
            | ApiKey::QueuePeek
            | ApiKey::QueueRedrive => (0, 0),
            ApiKey::Authenticate => (0, 0),
        }
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

    /// Whether a client may send a request with this key (all but `Push`).
    pub fn is_request(self) -> bool {
        self != ApiKey::Push
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
