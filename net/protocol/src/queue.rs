//! Messages of the work-queue apis, keys 22..=29 (docs/protocol.md, "Work queues"), and their
//! limits. Plain rkyv messages: a payload is the archive. The conversions to and from the
//! engine's types live in the server (`shardline_server::convert`).

use rkyv::{Archive, Deserialize, Serialize};

use super::NAME_BYTES_MAX;
use super::codec::Limits;
use super::error::{WireError, limit};
use super::messages::{TopicConfig, TopicInfo};

/// Receipts in one Ack, Nack or ChangeVisibility request.
pub const RECEIPTS_PER_REQUEST_MAX: usize = 10_000;
/// Messages one QueueReceive or QueuePeek may ask for.
pub const QUEUE_MESSAGES_PER_REQUEST_MAX: u32 = 10_000;

/// Work-queue settings of a topic, as the engine's `QueueConfig`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct QueueSettings {
    pub visibility_timeout_ms: u64,
    pub max_deliveries: u32,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    /// Created (as a queue) when missing.
    pub dead_letter_topic: Option<String>,
    pub priority_levels: u8,
}

/// 22 QueueCreate: creates a topic that is a work queue.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct QueueCreateRequest {
    pub name: String,
    pub config: TopicConfig,
    pub queue: QueueSettings,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct QueueCreateResponse {
    pub topic: TopicInfo,
    pub queue: QueueSettings,
}

/// 23 QueueReceive: leases messages.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct QueueReceiveRequest {
    pub topic: String,
    /// `None`: any partition (the server tries them all, starting at a rotating one).
    pub partition: Option<u32>,
    pub max_messages: u32,
    /// 0: the queue's visibility timeout.
    pub visibility_timeout_ms: u64,
    /// Long poll: wait up to this long when nothing is available (server caps at 60 s).
    pub max_wait_ms: u32,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct MessageHeader {
    pub key: String,
    pub value: Vec<u8>,
}

/// One delivery of a message.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct QueueMessage {
    pub partition: u32,
    pub offset: u64,
    /// Deliveries including this one (1 on the first).
    pub attempt: u32,
    pub timestamp_us: i64,
    pub priority: u8,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: Vec<MessageHeader>,
}

/// Answer of QueueReceive and QueuePeek.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct QueueMessages {
    pub messages: Vec<QueueMessage>,
}

/// Names one delivery.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[rkyv(derive(Debug))]
pub struct QueueReceipt {
    pub partition: u32,
    pub offset: u64,
    pub attempt: u32,
}

/// 24 QueueAck.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct QueueAckRequest {
    pub topic: String,
    pub receipts: Vec<QueueReceipt>,
}

/// 25 QueueNack.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct QueueNackRequest {
    pub topic: String,
    pub receipts: Vec<QueueReceipt>,
    /// `None`: the queue's exponential backoff.
    pub delay_ms: Option<u64>,
}

/// 26 QueueChangeVisibility.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct QueueChangeVisibilityRequest {
    pub topic: String,
    pub receipts: Vec<QueueReceipt>,
    /// New deadline = now + this; 0 makes the messages visible at once.
    pub visibility_timeout_ms: u64,
}

/// Answer of QueueAck, QueueNack and QueueChangeVisibility: one code per receipt, in order.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct QueueLeaseResponse {
    /// `NONE`, `LEASE_NOT_HELD`, `MESSAGE_DONE`, `UNKNOWN_MESSAGE`, or the partition's error.
    pub error_codes: Vec<u16>,
}

/// 27 QueueStats.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct QueueStatsRequest {
    pub topic: String,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct QueuePartitionStats {
    pub partition: u32,
    pub depth: u64,
    pub ready: u64,
    pub delayed: u64,
    pub in_flight: u64,
    pub oldest_age_ms: u64,
    pub acked: u64,
    pub nacked: u64,
    pub expired: u64,
    pub dead_lettered: u64,
    pub dropped: u64,
    pub lost: u64,
    pub ack_floor: u64,
    pub high_watermark: u64,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct QueueStatsResponse {
    pub partitions: Vec<QueuePartitionStats>,
}

/// 28 QueuePeek: messages not yet acked, in offset order, without leasing them.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct QueuePeekRequest {
    pub topic: String,
    pub partition: u32,
    pub max_messages: u32,
}

/// 29 QueueRedrive: moves dead-lettered messages back where they came from.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct QueueRedriveRequest {
    pub dead_letter_topic: String,
    pub max_messages: u32,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct QueueRedriveResponse {
    pub moved: u64,
}

// ---------------------------------------------------------------------------------------------
// Request limits, checked by the decoder.

fn name(n: &str) -> Result<(), WireError> {
    limit("topic name bytes", n.len(), NAME_BYTES_MAX)
}

fn receipts(r: &[QueueReceipt]) -> Result<(), WireError> {
    limit("receipts per request", r.len(), RECEIPTS_PER_REQUEST_MAX)
}

fn messages(n: u32) -> Result<(), WireError> {
    limit(
        "messages per request",
        n as usize,
        QUEUE_MESSAGES_PER_REQUEST_MAX as usize,
    )
}

impl Limits for QueueCreateRequest {
    fn check(&self) -> Result<(), WireError> {
        name(&self.name)?;
        self.queue.dead_letter_topic.as_deref().map_or(Ok(()), name)
    }
}
impl Limits for QueueReceiveRequest {
    fn check(&self) -> Result<(), WireError> {
        name(&self.topic)?;
        messages(self.max_messages)
    }
}
impl Limits for QueueAckRequest {
    fn check(&self) -> Result<(), WireError> {
        name(&self.topic)?;
        receipts(&self.receipts)
    }
}
impl Limits for QueueNackRequest {
    fn check(&self) -> Result<(), WireError> {
        name(&self.topic)?;
        receipts(&self.receipts)
    }
}
impl Limits for QueueChangeVisibilityRequest {
    fn check(&self) -> Result<(), WireError> {
        name(&self.topic)?;
        receipts(&self.receipts)
    }
}
impl Limits for QueueStatsRequest {
    fn check(&self) -> Result<(), WireError> {
        name(&self.topic)
    }
}
impl Limits for QueuePeekRequest {
    fn check(&self) -> Result<(), WireError> {
        name(&self.topic)?;
        messages(self.max_messages)
    }
}
impl Limits for QueueRedriveRequest {
    fn check(&self) -> Result<(), WireError> {
        name(&self.dead_letter_topic)
    }
}

impl QueueMessage {
    /// Bytes this message adds to a response, roughly (for response size budgets).
    pub fn size_estimate(&self) -> usize {
        64 + self.value.len()
            + self.key.as_ref().map_or(0, Vec::len)
            + self
                .headers
                .iter()
                .map(|h| 16 + h.key.len() + h.value.len())
                .sum::<usize>()
    }

    pub fn receipt(&self) -> QueueReceipt {
        QueueReceipt {
            partition: self.partition,
            offset: self.offset,
            attempt: self.attempt,
        }
    }

    /// The value of the first header named `name`.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|h| h.key == name)
            .map(|h| h.value.as_slice())
    }
}

// ---------------------------------------------------------------------------------------------
// Strict priority and per-message timing (docs/protocol.md, "Work queues")

/// Bit of [`QueueSettings::priority_levels`] that asks for strict priority (never a lower level
/// while a higher one has ready messages) instead of the weighted round robin. The low 7 bits
/// stay the level count. A server that predates the flag refuses the value (levels out of
/// range) rather than ignoring it, so the layout of QueueCreate is unchanged.
pub const STRICT_PRIORITY_FLAG: u8 = 0x80;

/// Header (ASCII decimal milliseconds after the message's timestamp) that delays a work-queue
/// message's first delivery: the engine's `DELAY_HEADER`.
pub const DELAY_HEADER: &str = "delay-ms";
/// Header (ASCII decimal milliseconds after the message's timestamp) after which a work-queue
/// message not yet acked is dead-lettered with reason `expired`: the engine's `TTL_HEADER`.
pub const TTL_HEADER: &str = "ttl-ms";

impl QueueSettings {
    /// The number of priority levels (without the strict flag).
    pub fn levels(&self) -> u8 {
        self.priority_levels & !STRICT_PRIORITY_FLAG
    }

    /// Whether the queue uses strict priority.
    pub fn strict_priority(&self) -> bool {
        self.priority_levels & STRICT_PRIORITY_FLAG != 0
    }

    /// These settings with strict priority on or off.
    #[must_use]
    pub fn with_strict_priority(mut self, strict: bool) -> Self {
        self.priority_levels = self.levels() | if strict { STRICT_PRIORITY_FLAG } else { 0 };
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FrameBuf, FrameDecoder, FrameEncoder, Request, Response, code};
    use proptest::prelude::*;
    use rkyv::Archived;

    /// The archived size and alignment of every work-queue payload type (docs/protocol.md,
    /// "Work queues"): changing any of them requires a new api version.
    #[test]
    fn queue_wire_layout_is_pinned() {
        macro_rules! pin {
            ($($t:ty => $size:expr, $align:expr;)*) => {$(
                assert_eq!(
                    (size_of::<Archived<$t>>(), align_of::<Archived<$t>>()),
                    ($size, $align),
                    "archived layout of {}",
                    stringify!($t)
                );
            )*};
        }
        pin! {
            QueueSettings => 48, 8; QueueCreateRequest => 128, 8; QueueCreateResponse => 144, 8;
            QueueReceiveRequest => 40, 8; MessageHeader => 16, 4; QueueMessage => 64, 8;
            QueueMessages => 8, 4; QueueReceipt => 24, 8; QueueAckRequest => 16, 4;
            QueueNackRequest => 32, 8; QueueChangeVisibilityRequest => 24, 8;
            QueueLeaseResponse => 8, 4; QueueStatsRequest => 8, 4;
            QueuePartitionStats => 112, 8; QueueStatsResponse => 8, 4;
            QueuePeekRequest => 16, 4; QueueRedriveRequest => 12, 4; QueueRedriveResponse => 8, 8;
        }
    }

    fn through_frames(r: &Request) -> Request {
        let mut enc = FrameEncoder::default();
        let mut buf = FrameBuf::new();
        enc.request(&mut buf, 7, 0, r).unwrap();
        let mut dec = FrameDecoder::new(crate::DecoderConfig::default()).unwrap();
        let n = dec.push(&buf);
        assert_eq!(n, buf.len());
        let f = dec.next_frame_owned().unwrap().unwrap();
        Request::decode_owned_frame(&f).unwrap()
    }

    fn receipt() -> impl Strategy<Value = QueueReceipt> {
        (any::<u32>(), any::<u64>(), any::<u32>()).prop_map(|(partition, offset, attempt)| {
            QueueReceipt {
                partition,
                offset,
                attempt,
            }
        })
    }

    proptest! {
        #[test]
        fn queue_requests_round_trip(
            topic in "[a-z.]{1,40}",
            receipts in proptest::collection::vec(receipt(), 0..50),
            delay in proptest::option::of(any::<u64>()),
            n in 0u32..10_000,
            partition in proptest::option::of(any::<u32>()),
        ) {
            let all = [
                Request::QueueCreate(QueueCreateRequest {
                    name: topic.clone(),
                    config: TopicConfig { partitions: n, ..Default::default() },
                    queue: QueueSettings {
                        visibility_timeout_ms: n.into(),
                        max_deliveries: n,
                        backoff_base_ms: 1,
                        backoff_max_ms: 2,
                        dead_letter_topic: Some(format!("{topic}.dlq")),
                        priority_levels: 3,
                    },
                }),
                Request::QueueReceive(QueueReceiveRequest {
                    topic: topic.clone(), partition, max_messages: n,
                    visibility_timeout_ms: delay.unwrap_or(0), max_wait_ms: n,
                }),
                Request::QueueAck(QueueAckRequest { topic: topic.clone(), receipts: receipts.clone() }),
                Request::QueueNack(QueueNackRequest {
                    topic: topic.clone(), receipts: receipts.clone(), delay_ms: delay,
                }),
                Request::QueueChangeVisibility(QueueChangeVisibilityRequest {
                    topic: topic.clone(), receipts: receipts.clone(), visibility_timeout_ms: 5,
                }),
                Request::QueueStats(QueueStatsRequest { topic: topic.clone() }),
                Request::QueuePeek(QueuePeekRequest { topic: topic.clone(), partition: 1, max_messages: n }),
                Request::QueueRedrive(QueueRedriveRequest { dead_letter_topic: topic.clone(), max_messages: n }),
            ];
            for r in &all {
                prop_assert_eq!(&through_frames(r), r);
            }
        }

        #[test]
        fn queue_responses_round_trip(
            value in proptest::collection::vec(any::<u8>(), 0..200),
            codes in proptest::collection::vec(any::<u16>(), 0..50),
            attempt in any::<u32>(),
        ) {
            let m = QueueMessage {
                partition: 3, offset: 99, attempt, timestamp_us: -5, priority: 2,
                key: Some(b"k".to_vec()), value: value.clone(),
                headers: vec![MessageHeader { key: "correlation-id".into(), value }],
            };
            let all = [
                Response::QueueReceive(QueueMessages { messages: vec![m.clone(), m.clone()] }),
                Response::QueuePeek(QueueMessages { messages: vec![m] }),
                Response::QueueAck(QueueLeaseResponse { error_codes: codes.clone() }),
                Response::QueueNack(QueueLeaseResponse { error_codes: codes }),
                Response::QueueStats(QueueStatsResponse { partitions: vec![QueuePartitionStats { depth: 4, ..Default::default() }] }),
                Response::QueueRedrive(QueueRedriveResponse { moved: 8 }),
            ];
            for r in &all {
                let mut enc = FrameEncoder::default();
                let mut buf = FrameBuf::new();
                enc.response(&mut buf, 1, 0, r).unwrap();
                let mut dec = FrameDecoder::new(crate::DecoderConfig::default()).unwrap();
                dec.push(&buf);
                let f = dec.next_frame_owned().unwrap().unwrap();
                let back = Response::decode_bytes(f.header.api_key, 0, &f.payload).unwrap();
                prop_assert_eq!(&back, r);
            }
        }
    }

    /// The worked example of docs/protocol.md, "Work queues", byte for byte.
    #[test]
    fn ack_request_bytes_match_the_spec() {
        let m = QueueAckRequest {
            topic: "jobs".into(),
            receipts: vec![QueueReceipt {
                partition: 0,
                offset: 5,
                attempt: 1,
            }],
        };
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&m).unwrap();
        let mut want = Vec::new();
        want.extend_from_slice(&0u32.to_le_bytes());
        want.extend_from_slice(&[0; 4]);
        want.extend_from_slice(&5u64.to_le_bytes());
        want.extend_from_slice(&1u32.to_le_bytes());
        want.extend_from_slice(&[0; 4]);
        want.extend_from_slice(b"jobs\xff\xff\xff\xff");
        want.extend_from_slice(&(-32i32).to_le_bytes());
        want.extend_from_slice(&1u32.to_le_bytes());
        assert_eq!(bytes.as_slice(), want.as_slice());
    }

    #[test]
    fn oversized_receipt_lists_are_refused() {
        let r = Request::QueueAck(QueueAckRequest {
            topic: "t".into(),
            receipts: vec![QueueReceipt::default(); RECEIPTS_PER_REQUEST_MAX + 1],
        });
        let mut enc = FrameEncoder::default();
        let mut buf = FrameBuf::new();
        enc.request(&mut buf, 7, 0, &r).unwrap();
        let mut dec = FrameDecoder::new(crate::DecoderConfig::default()).unwrap();
        dec.push(&buf);
        let f = dec.next_frame_owned().unwrap().unwrap();
        let e = Request::decode_owned_frame(&f).unwrap_err();
        assert_eq!(e.code(), code::LIMIT_EXCEEDED, "{e}");
    }
}
