//! Payload encoding and decoding: typed [`Request`]/[`Response`]/[`ServerMessage`] values to and
//! from frames (docs/protocol.md, "Payloads").
//!
//! ```text
//!  payload = data section ‖ archive
//!  +----------------------+-----+----------------------+-----+----------------------------+
//!  | blob 0 (raw batch)   | pad | blob 1               | pad | rkyv archive (root at end) |
//!  +----------------------+-----+----------------------+-----+----------------------------+
//!  0                                                         data_bytes           payload_len
//! ```
//! Plain messages have an empty data section: the payload is the rkyv archive of the message.
//! Messages that carry record batches archive an *envelope* whose `BlobRef { offset, length }`
//! fields point into the data section; every blob starts 16-aligned (relative to the payload,
//! hence in memory) and is padded with zeros to 16. The archive is validated with
//! `rkyv::access` (bytecheck) over the whole payload, never `access_unchecked`.
//!
//! Why the data section comes first: rkyv puts the root at the end of its buffer, so the archive
//! ends the payload and the decoder needs no extra length field; and a sender can pass batch
//! buffers it already holds (`Bytes` from the cache) straight to a vectored write
//! ([`FrameEncoder::response_parts`]) without copying them into the frame.

use bytes::Bytes;
use rkyv::api::high::{HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::de::Pool;
use rkyv::rancor::{BoxedError, Strategy};
use rkyv::ser::allocator::ArenaHandle;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Serialize};

use super::api::ApiKey;
pub use super::api::{Request, Response};
use super::error::{WireError, limit};
use super::frame::{
    FRAME_HEADER_BYTES, Frame, FrameHeader, FrameKind, OwnedFrame, aligned_bytes, is_aligned,
    padded,
};
use super::membership::*;
use super::messages::*;
use super::ops::*;
use super::{
    FRAME_ALIGN, FRAME_BYTES_MAX_DEFAULT, FRAME_BYTES_MAX_LIMIT, FRAME_BYTES_MIN_LIMIT,
    HANDSHAKE_APIS_MAX, NAME_BYTES_MAX, PARTITIONS_PER_REQUEST_MAX, TOPICS_PER_REQUEST_MAX,
};

// ---------------------------------------------------------------------------------------------
// Envelopes of the messages that carry raw batches.

/// Where a blob (one record batch, or a chunk of consecutive batches) sits in the data section.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BlobRef {
    /// From the start of the payload; a multiple of 16.
    offset: u32,
    length: u32,
}

#[derive(Archive, Serialize, Deserialize)]
pub(crate) struct ProduceEnvelope {
    acks: Acks,
    timeout_ms: u32,
    data_bytes: u32,
    topics: Vec<ProduceTopicEnvelope>,
}

#[derive(Archive, Serialize, Deserialize)]
pub(crate) struct ProduceTopicEnvelope {
    name: String,
    partitions: Vec<ProducePartitionEnvelope>,
}

#[derive(Archive, Serialize, Deserialize)]
pub(crate) struct ProducePartitionEnvelope {
    partition: u32,
    batch: BlobRef,
}

#[derive(Archive, Serialize, Deserialize)]
pub(crate) struct FetchEnvelope {
    data_bytes: u32,
    topics: Vec<FetchTopicEnvelope>,
}

#[derive(Archive, Serialize, Deserialize)]
pub(crate) struct FetchTopicEnvelope {
    name: String,
    partitions: Vec<FetchPartitionEnvelope>,
}

#[derive(Archive, Serialize, Deserialize)]
pub(crate) struct FetchPartitionEnvelope {
    partition: u32,
    error_code: u16,
    error_message: Option<String>,
    high_watermark: u64,
    log_start: u64,
    next_offset: u64,
    records: u32,
    chunks: Vec<BlobRef>,
}

#[derive(Archive, Serialize, Deserialize)]
pub(crate) struct PushEnvelope {
    subscription_id: u32,
    records: u32,
    next_offset: u64,
    high_watermark: u64,
    log_start: u64,
    data_bytes: u32,
    chunks: Vec<BlobRef>,
}

// The archive must be readable in place at a 16-aligned position.
const _: () = assert!(align_of::<ArchivedProduceEnvelope>() <= FRAME_ALIGN);
const _: () = assert!(align_of::<ArchivedFetchEnvelope>() <= FRAME_ALIGN);
const _: () = assert!(align_of::<ArchivedPushEnvelope>() <= FRAME_ALIGN);
const _: () = assert!(align_of::<ArchivedDescribeTopicResponse>() <= FRAME_ALIGN);

/// Blobs of one frame, in data-section order, with the offsets they get.
#[derive(Default)]
pub(crate) struct BlobPlan<'b> {
    blobs: Vec<&'b Bytes>,
    data_bytes: u64,
}

impl<'b> BlobPlan<'b> {
    fn add(&mut self, blob: &'b Bytes) -> Result<BlobRef, WireError> {
        let offset = self.data_bytes;
        let end = offset + padded(blob.len() as u64);
        let too_big = || WireError::Encode {
            reason: format!("data section of {end} bytes does not fit a frame"),
        };
        let offset = u32::try_from(offset).map_err(|_| too_big())?;
        let length = u32::try_from(blob.len()).map_err(|_| too_big())?;
        u32::try_from(end).map_err(|_| too_big())?;
        self.data_bytes = end;
        self.blobs.push(blob);
        Ok(BlobRef { offset, length })
    }

    fn data_bytes(&self) -> u32 {
        // add() checked every end against u32::MAX.
        self.data_bytes as u32
    }
}

fn produce_envelope(m: &ProduceRequest) -> Result<(ProduceEnvelope, BlobPlan<'_>), WireError> {
    let mut plan = BlobPlan::default();
    let mut topics = Vec::with_capacity(m.topics.len());
    for t in &m.topics {
        let mut partitions = Vec::with_capacity(t.partitions.len());
        for p in &t.partitions {
            partitions.push(ProducePartitionEnvelope {
                partition: p.partition,
                batch: plan.add(&p.batch)?,
            });
        }
        topics.push(ProduceTopicEnvelope {
            name: t.name.clone(),
            partitions,
        });
    }
    let env = ProduceEnvelope {
        acks: m.acks,
        timeout_ms: m.timeout_ms,
        data_bytes: plan.data_bytes(),
        topics,
    };
    Ok((env, plan))
}

fn fetch_envelope(m: &FetchResponse) -> Result<(FetchEnvelope, BlobPlan<'_>), WireError> {
    let mut plan = BlobPlan::default();
    let mut topics = Vec::with_capacity(m.topics.len());
    for t in &m.topics {
        let mut partitions = Vec::with_capacity(t.partitions.len());
        for p in &t.partitions {
            let chunks = p
                .chunks
                .iter()
                .map(|c| plan.add(c))
                .collect::<Result<_, _>>()?;
            partitions.push(FetchPartitionEnvelope {
                partition: p.partition,
                error_code: p.error_code,
                error_message: p.error_message.clone(),
                high_watermark: p.high_watermark,
                log_start: p.log_start,
                next_offset: p.next_offset,
                records: p.records,
                chunks,
            });
        }
        topics.push(FetchTopicEnvelope {
            name: t.name.clone(),
            partitions,
        });
    }
    let env = FetchEnvelope {
        data_bytes: plan.data_bytes(),
        topics,
    };
    Ok((env, plan))
}

fn push_envelope(m: &Push) -> Result<(PushEnvelope, BlobPlan<'_>), WireError> {
    let mut plan = BlobPlan::default();
    let chunks = m
        .chunks
        .iter()
        .map(|c| plan.add(c))
        .collect::<Result<_, _>>()?;
    let env = PushEnvelope {
        subscription_id: m.subscription_id,
        records: m.records,
        next_offset: m.next_offset,
        high_watermark: m.high_watermark,
        log_start: m.log_start,
        data_bytes: plan.data_bytes(),
        chunks,
    };
    Ok((env, plan))
}

// ---------------------------------------------------------------------------------------------
// Decoding.

/// A payload being decoded: borrowed (blobs are copied out) or shared (blobs are sliced).
#[derive(Clone, Copy)]
pub(crate) enum Source<'a> {
    Slice(&'a [u8]),
    Shared(&'a Bytes),
}

impl Source<'_> {
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Source::Slice(s) => s,
            Source::Shared(b) => b,
        }
    }

    fn blob(&self, data_bytes: u32, r: &ArchivedBlobRef) -> Result<Bytes, WireError> {
        let offset = r.offset.to_native();
        let length = r.length.to_native();
        let end = u64::from(offset) + u64::from(length);
        if !(offset as usize).is_multiple_of(FRAME_ALIGN) || end > u64::from(data_bytes) {
            return Err(WireError::BlobOutOfBounds {
                offset,
                length,
                data_bytes,
            });
        }
        // In bounds: data_bytes <= payload length, checked by data_section().
        let range = offset as usize..end as usize;
        Ok(match self {
            // Copied into an aligned allocation, so the engine reads the batch in place.
            Source::Slice(s) => aligned_bytes(&s[range]),
            Source::Shared(b) => b.slice(range),
        })
    }

    fn data_section(&self, data_bytes: u32) -> Result<u32, WireError> {
        if !(data_bytes as usize).is_multiple_of(FRAME_ALIGN)
            || data_bytes as usize > self.bytes().len()
        {
            return Err(WireError::BlobOutOfBounds {
                offset: 0,
                length: data_bytes,
                data_bytes,
            });
        }
        Ok(data_bytes)
    }
}

/// Runs `f` on a 16-aligned view of the payload, copying it once if it is not aligned.
fn with_aligned<T>(
    src: Source<'_>,
    f: impl FnOnce(Source<'_>) -> Result<T, WireError>,
) -> Result<T, WireError> {
    if is_aligned(src.bytes()) {
        f(src)
    } else {
        let copy = aligned_bytes(src.bytes());
        f(Source::Shared(&copy))
    }
}

fn malformed(api: ApiKey, e: BoxedError) -> WireError {
    WireError::Malformed {
        api_key: api.as_u16(),
        reason: crate::messages::scrub_addresses(e.to_string().lines().next().unwrap_or("")),
    }
}

/// Validated access to the archive at the end of `bytes` (bytecheck; never unchecked).
fn access<'a, T>(api: ApiKey, bytes: &'a [u8]) -> Result<&'a T::Archived, WireError>
where
    T: Archive,
    T::Archived: for<'v> CheckBytes<HighValidator<'v, BoxedError>>,
{
    rkyv::access::<T::Archived, BoxedError>(bytes).map_err(|e| malformed(api, e))
}

/// Access, then deserialize into the owned type.
pub(crate) fn plain<T>(api: ApiKey, bytes: &[u8]) -> Result<T, WireError>
where
    T: Archive,
    T::Archived: for<'v> CheckBytes<HighValidator<'v, BoxedError>>
        + Deserialize<T, Strategy<Pool, BoxedError>>,
{
    let archived = access::<T>(api, bytes)?;
    rkyv::deserialize::<T, BoxedError>(archived).map_err(|e| malformed(api, e))
}

/// [`plain`], then the request's own limits.
pub(crate) fn checked<T>(api: ApiKey, bytes: &[u8]) -> Result<T, WireError>
where
    T: Archive + Limits,
    T::Archived: for<'v> CheckBytes<HighValidator<'v, BoxedError>>
        + Deserialize<T, Strategy<Pool, BoxedError>>,
{
    let m: T = plain(api, bytes)?;
    m.check()?;
    Ok(m)
}

fn check_name(what: &'static str, name: &str) -> Result<(), WireError> {
    limit(what, name.len(), NAME_BYTES_MAX)
}

fn check_topics<'n>(
    topics: usize,
    names: impl Iterator<Item = (&'n str, usize)>,
) -> Result<(), WireError> {
    limit("topics per request", topics, TOPICS_PER_REQUEST_MAX)?;
    let mut partitions = 0usize;
    for (name, count) in names {
        check_name("topic name bytes", name)?;
        partitions = partitions.saturating_add(count);
    }
    limit(
        "partitions per request",
        partitions,
        PARTITIONS_PER_REQUEST_MAX,
    )
}

/// The limits a decoded request must keep beyond its layout (docs/protocol.md, "Limits"),
/// checked by the decoder right after the archive. Every request type of the api table
/// implements it, next to its definition; an empty impl means "no limits but the frame's".
pub(crate) trait Limits {
    fn check(&self) -> Result<(), WireError> {
        Ok(())
    }
}

/// A message whose payload carries raw record batches in a data section (Produce requests,
/// Fetch responses); marked `[blobs]` in the api table. Every other message is one plain rkyv
/// archive.
pub(crate) trait Blobs: Sized {
    fn decode_blobs(src: Source<'_>) -> Result<Self, WireError>;
    fn prepare_blobs<'b>(
        &'b self,
        encoder: &mut FrameEncoder,
        head: Head,
    ) -> Result<Prepared<'b>, WireError>;
}

impl Blobs for ProduceRequest {
    fn decode_blobs(src: Source<'_>) -> Result<Self, WireError> {
        decode_produce(src)
    }

    fn prepare_blobs<'b>(
        &'b self,
        encoder: &mut FrameEncoder,
        head: Head,
    ) -> Result<Prepared<'b>, WireError> {
        let (env, plan) = produce_envelope(self)?;
        encoder.prepare(head, &env, plan)
    }
}

impl Blobs for FetchResponse {
    fn decode_blobs(src: Source<'_>) -> Result<Self, WireError> {
        decode_fetch_response(src)
    }

    fn prepare_blobs<'b>(
        &'b self,
        encoder: &mut FrameEncoder,
        head: Head,
    ) -> Result<Prepared<'b>, WireError> {
        let (env, plan) = fetch_envelope(self)?;
        encoder.prepare(head, &env, plan)
    }
}

// Limits of the core (0-14), operations (30-39) and security (40-49) requests; those of the
// messaging semantics and work queues are in semantics.rs and queue.rs.

impl Limits for HandshakeRequest {
    fn check(&self) -> Result<(), WireError> {
        check_name("client id bytes", &self.client_id)?;
        limit("handshake apis", self.apis.len(), HANDSHAKE_APIS_MAX)
    }
}
impl Limits for PingRequest {}
impl Limits for MetadataRequest {
    fn check(&self) -> Result<(), WireError> {
        check_topics(
            self.topics.len(),
            self.topics.iter().map(|t| (t.as_str(), 0)),
        )
    }
}
impl Limits for CreateTopicRequest {
    fn check(&self) -> Result<(), WireError> {
        check_name("topic name bytes", &self.name)
    }
}
impl Limits for DeleteTopicRequest {
    fn check(&self) -> Result<(), WireError> {
        check_name("topic name bytes", &self.name)
    }
}
impl Limits for ListTopicsRequest {}
impl Limits for DescribeTopicRequest {
    fn check(&self) -> Result<(), WireError> {
        check_name("topic name bytes", &self.name)
    }
}
impl Limits for FetchRequest {
    fn check(&self) -> Result<(), WireError> {
        check_topics(
            self.topics.len(),
            self.topics
                .iter()
                .map(|t| (t.name.as_str(), t.partitions.len())),
        )
    }
}
impl Limits for ListOffsetsRequest {
    fn check(&self) -> Result<(), WireError> {
        check_topics(
            self.topics.len(),
            self.topics
                .iter()
                .map(|t| (t.name.as_str(), t.partitions.len())),
        )
    }
}
impl Limits for SubscribeRequest {
    fn check(&self) -> Result<(), WireError> {
        check_name("topic name bytes", &self.topic)
    }
}
impl Limits for GrantCreditsRequest {}
impl Limits for UnsubscribeRequest {}
impl Limits for StatsRequest {}
impl Limits for MetricsRequest {}
impl Limits for CreateReplicatedTopicRequest {
    fn check(&self) -> Result<(), WireError> {
        check_name("topic name bytes", &self.name)
    }
}
impl Limits for DescribeReplicasRequest {
    fn check(&self) -> Result<(), WireError> {
        check_name("topic name bytes", &self.name)
    }
}
impl Limits for DescribeClusterRequest {
    fn check(&self) -> Result<(), WireError> {
        check_topics(
            self.topics.len(),
            self.topics.iter().map(|t| (t.as_str(), 0)),
        )
    }
}
impl Limits for ReassignPartitionRequest {
    fn check(&self) -> Result<(), WireError> {
        check_name("topic name bytes", &self.name)?;
        limit("replicas", self.replicas.len(), REASSIGN_REPLICAS_MAX)
    }
}
impl Limits for AlterTopicRequest {
    fn check(&self) -> Result<(), WireError> {
        check_name("topic name bytes", &self.name)
    }
}
impl Limits for ResetOffsetsRequest {
    fn check(&self) -> Result<(), WireError> {
        check_name("group name bytes", &self.group)?;
        check_name("topic name bytes", &self.topic)
    }
}
impl Limits for QueuePurgeRequest {
    fn check(&self) -> Result<(), WireError> {
        check_name("topic name bytes", &self.topic)
    }
}
impl Limits for ListGroupsRequest {}
impl Limits for AddPartitionsRequest {
    fn check(&self) -> Result<(), WireError> {
        check_name("topic name bytes", &self.name)
    }
}
impl Limits for AuthenticateRequest {
    fn check(&self) -> Result<(), WireError> {
        check_name("user name bytes", &self.username)?;
        limit("secret bytes", self.secret.len(), SECRET_BYTES_MAX)
    }
}

fn decode_produce(src: Source<'_>) -> Result<ProduceRequest, WireError> {
    let env = access::<ProduceEnvelope>(ApiKey::Produce, src.bytes())?;
    check_topics(
        env.topics.len(),
        env.topics
            .iter()
            .map(|t| (t.name.as_str(), t.partitions.len())),
    )?;
    let data_bytes = src.data_section(env.data_bytes.to_native())?;
    let acks = match env.acks {
        ArchivedAcks::None => Acks::None,
        ArchivedAcks::Leader => Acks::Leader,
        ArchivedAcks::Durable => Acks::Durable,
        ArchivedAcks::All => Acks::All,
    };
    let mut topics = Vec::with_capacity(env.topics.len());
    for t in env.topics.iter() {
        let mut partitions = Vec::with_capacity(t.partitions.len());
        for p in t.partitions.iter() {
            partitions.push(ProducePartition {
                partition: p.partition.to_native(),
                batch: src.blob(data_bytes, &p.batch)?,
            });
        }
        topics.push(ProduceTopic {
            name: t.name.as_str().to_owned(),
            partitions,
        });
    }
    Ok(ProduceRequest {
        acks,
        timeout_ms: env.timeout_ms.to_native(),
        topics,
    })
}

fn decode_fetch_response(src: Source<'_>) -> Result<FetchResponse, WireError> {
    let env = access::<FetchEnvelope>(ApiKey::Fetch, src.bytes())?;
    let data_bytes = src.data_section(env.data_bytes.to_native())?;
    let mut topics = Vec::with_capacity(env.topics.len());
    for t in env.topics.iter() {
        let mut partitions = Vec::with_capacity(t.partitions.len());
        for p in t.partitions.iter() {
            let chunks = p
                .chunks
                .iter()
                .map(|c| src.blob(data_bytes, c))
                .collect::<Result<_, _>>()?;
            partitions.push(FetchPartitionResult {
                partition: p.partition.to_native(),
                error_code: p.error_code.to_native(),
                error_message: p.error_message.as_ref().map(|m| m.as_str().to_owned()),
                high_watermark: p.high_watermark.to_native(),
                log_start: p.log_start.to_native(),
                next_offset: p.next_offset.to_native(),
                records: p.records.to_native(),
                chunks,
            });
        }
        topics.push(FetchTopicResult {
            name: t.name.as_str().to_owned(),
            partitions,
        });
    }
    Ok(FetchResponse { topics })
}

fn decode_push(src: Source<'_>) -> Result<Push, WireError> {
    let env = access::<PushEnvelope>(ApiKey::Push, src.bytes())?;
    let data_bytes = src.data_section(env.data_bytes.to_native())?;
    let chunks = env
        .chunks
        .iter()
        .map(|c| src.blob(data_bytes, c))
        .collect::<Result<_, _>>()?;
    Ok(Push {
        subscription_id: env.subscription_id.to_native(),
        records: env.records.to_native(),
        next_offset: env.next_offset.to_native(),
        high_watermark: env.high_watermark.to_native(),
        log_start: env.log_start.to_native(),
        chunks,
    })
}

impl Request {
    /// False for GrantCredits and for Produce with `acks = none`: the server sends nothing back
    /// (not even for errors, except an error frame before closing on a fatal framing error).
    pub fn expects_response(&self) -> bool {
        match self {
            Request::GrantCredits(_) => false,
            Request::Produce(p) => p.acks != Acks::None,
            _ => true,
        }
    }

    /// Decodes a request payload; batches are copied out of `payload` (use
    /// [`Request::decode_bytes`] to share them instead). Checks the api key, the version, the
    /// archive (bytecheck), blob bounds and the request limits.
    pub fn decode(api_key: u16, api_version: u16, payload: &[u8]) -> Result<Request, WireError> {
        Self::decode_source(api_key, api_version, Source::Slice(payload))
    }

    /// Like [`Request::decode`]; batches are zero-copy slices of `payload`.
    pub fn decode_bytes(
        api_key: u16,
        api_version: u16,
        payload: &Bytes,
    ) -> Result<Request, WireError> {
        Self::decode_source(api_key, api_version, Source::Shared(payload))
    }

    /// Decodes a frame the server received: it must be a request frame.
    pub fn decode_frame(frame: &Frame<'_>) -> Result<Request, WireError> {
        expect_kind(&frame.header, FrameKind::Request)?;
        Self::decode(
            frame.header.api_key,
            frame.header.api_version,
            frame.payload,
        )
    }

    /// Like [`Request::decode_frame`], with batches sliced from the owned payload.
    pub fn decode_owned_frame(frame: &OwnedFrame) -> Result<Request, WireError> {
        expect_kind(&frame.header, FrameKind::Request)?;
        Self::decode_bytes(
            frame.header.api_key,
            frame.header.api_version,
            &frame.payload,
        )
    }

    fn decode_source(api_key: u16, version: u16, src: Source<'_>) -> Result<Request, WireError> {
        let api = ApiKey::parse(api_key)?;
        if !api.is_request() {
            return Err(WireError::UnknownApi { api_key });
        }
        api.check_version(version)?;
        if has_read_options(api, version) {
            return with_aligned(src, |src| decode_with_read_options(api, src));
        }
        with_aligned(src, |src| Request::decode_payload(api, src))
    }
}

/// Bytes of the read-options trailer of Fetch and Subscribe from version 1: the archive's
/// length (u32 LE), the isolation byte, 11 reserved zero bytes.
pub const READ_OPTIONS_BYTES: usize = 16;

/// Whether a request of `api` at `version` carries the read-options trailer.
fn has_read_options(api: ApiKey, version: u16) -> bool {
    matches!(api, ApiKey::Fetch | ApiKey::Subscribe) && version >= 1
}

/// Decodes a request whose archive is followed by the read-options trailer (16-aligned).
fn decode_with_read_options(api: ApiKey, src: Source<'_>) -> Result<Request, WireError> {
    let bytes = src.bytes();
    let bad = |reason: &str| WireError::Malformed {
        api_key: api.as_u16(),
        reason: format!("read options: {reason}"),
    };
    let Some(at) = bytes.len().checked_sub(READ_OPTIONS_BYTES) else {
        return Err(bad("payload too short"));
    };
    let trailer = &bytes[at..];
    let archive_bytes = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
    let archive_bytes = archive_bytes as usize;
    if archive_bytes > at || at - archive_bytes >= FRAME_ALIGN {
        return Err(bad("archive length out of range"));
    }
    if trailer[5..].iter().any(|&b| b != 0) || bytes[archive_bytes..at].iter().any(|&b| b != 0) {
        return Err(bad("reserved bytes not zero"));
    }
    let isolation = ReadIsolation::from_u8(trailer[4]).ok_or_else(|| bad("unknown isolation"))?;
    let mut request = Request::decode_payload(api, Source::Slice(&bytes[..archive_bytes]))?;
    match &mut request {
        Request::Fetch(f) => f.isolation = isolation,
        Request::Subscribe(s) => s.isolation = isolation,
        _ => {}
    }
    Ok(request)
}

impl Response {
    /// Decodes a response payload; fetched batches are copied out of `payload`.
    pub fn decode(api_key: u16, api_version: u16, payload: &[u8]) -> Result<Response, WireError> {
        Self::decode_source(api_key, api_version, Source::Slice(payload))
    }

    /// Like [`Response::decode`]; fetched batches are zero-copy slices of `payload`.
    pub fn decode_bytes(
        api_key: u16,
        api_version: u16,
        payload: &Bytes,
    ) -> Result<Response, WireError> {
        Self::decode_source(api_key, api_version, Source::Shared(payload))
    }

    fn decode_source(api_key: u16, version: u16, src: Source<'_>) -> Result<Response, WireError> {
        let api = ApiKey::parse(api_key)?;
        api.check_version(version)?;
        with_aligned(src, |src| Response::decode_payload(api, src))
    }
}

impl Push {
    /// Decodes a push payload; batches are copied out of `payload`.
    pub fn decode(api_version: u16, payload: &[u8]) -> Result<Push, WireError> {
        ApiKey::Push.check_version(api_version)?;
        with_aligned(Source::Slice(payload), decode_push)
    }

    /// Like [`Push::decode`]; batches are zero-copy slices of `payload`.
    pub fn decode_bytes(api_version: u16, payload: &Bytes) -> Result<Push, WireError> {
        ApiKey::Push.check_version(api_version)?;
        with_aligned(Source::Shared(payload), decode_push)
    }
}

impl ErrorResponse {
    /// Decodes the payload of an ERROR frame. Its layout is the same for every api and version.
    pub fn decode(payload: &[u8]) -> Result<ErrorResponse, WireError> {
        // Errors are decoded under whatever api they answer; report them as Handshake's (0).
        with_aligned(Source::Slice(payload), |src| {
            plain::<ErrorResponse>(ApiKey::Handshake, src.bytes())
        })
    }
}

/// Everything a client receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMessage {
    Response {
        correlation_id: u32,
        response: Response,
    },
    /// The request with this correlation id failed as a whole.
    Error {
        correlation_id: u32,
        api_key: u16,
        error: ErrorResponse,
    },
    Push(Push),
    /// The subscription is over (deleted topic, shutdown...); no more pushes will come for it.
    PushError {
        subscription_id: u32,
        error: ErrorResponse,
    },
}

impl ServerMessage {
    /// Decodes a frame the client received; batches are copied out of the frame.
    pub fn decode(frame: &Frame<'_>) -> Result<ServerMessage, WireError> {
        Self::decode_source(&frame.header, Source::Slice(frame.payload))
    }

    /// Like [`ServerMessage::decode`], with batches sliced from the owned payload.
    pub fn decode_owned(frame: &OwnedFrame) -> Result<ServerMessage, WireError> {
        Self::decode_source(&frame.header, Source::Shared(&frame.payload))
    }

    fn decode_source(h: &FrameHeader, src: Source<'_>) -> Result<ServerMessage, WireError> {
        match h.kind {
            FrameKind::Request => Err(WireError::UnexpectedFrame {
                kind: "request",
                reason: "a client does not accept requests",
            }),
            FrameKind::Response => Ok(ServerMessage::Response {
                correlation_id: h.correlation_id,
                response: Response::decode_source(h.api_key, h.api_version, src)?,
            }),
            FrameKind::Error => Ok(ServerMessage::Error {
                correlation_id: h.correlation_id,
                api_key: h.api_key,
                error: ErrorResponse::decode(src.bytes())?,
            }),
            FrameKind::Push => {
                if h.api_key != ApiKey::Push.as_u16() {
                    return Err(WireError::UnexpectedFrame {
                        kind: "push",
                        reason: "push frame with an api key other than Push",
                    });
                }
                ApiKey::Push.check_version(h.api_version)?;
                let push = with_aligned(src, decode_push)?;
                if push.subscription_id != h.correlation_id {
                    return Err(WireError::UnexpectedFrame {
                        kind: "push",
                        reason: "subscription id differs from the correlation id",
                    });
                }
                Ok(ServerMessage::Push(push))
            }
            FrameKind::PushError => Ok(ServerMessage::PushError {
                subscription_id: h.correlation_id,
                error: ErrorResponse::decode(src.bytes())?,
            }),
        }
    }
}

fn expect_kind(h: &FrameHeader, kind: FrameKind) -> Result<(), WireError> {
    if h.kind != kind {
        return Err(WireError::UnexpectedFrame {
            kind: h.kind.name(),
            reason: "a server accepts only request frames",
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Encoding.

/// Zero bytes for padding.
static ZEROS: [u8; FRAME_ALIGN] = [0; FRAME_ALIGN];

/// A frame as a list of segments, for a vectored write that sends batch buffers without copying
/// them: the header, then each blob (shared, not copied) and its padding, then the archive and
/// its padding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameParts {
    pub header: [u8; FRAME_HEADER_BYTES],
    pub segments: Vec<Bytes>,
}

impl FrameParts {
    /// Total bytes of the frame.
    pub fn len(&self) -> usize {
        FRAME_HEADER_BYTES + self.segments.iter().map(Bytes::len).sum::<usize>()
    }

    /// Never true: a frame has at least its header.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Every segment in order, the header first.
    pub fn slices(&self) -> impl Iterator<Item = &[u8]> {
        std::iter::once(&self.header[..]).chain(self.segments.iter().map(|s| &s[..]))
    }

    /// Appends the whole frame to `out` (copying the blobs).
    pub fn write_to(&self, out: &mut AlignedVec<FRAME_ALIGN>) {
        for s in self.slices() {
            out.extend_from_slice(s);
        }
    }
}

/// A frame ready to be written: header set, the envelope archived in the encoder's scratch.
pub(crate) struct Prepared<'b> {
    header: FrameHeader,
    blobs: Vec<&'b Bytes>,
    frame_bytes: usize,
}

/// Key, version, correlation id and kind of a frame being prepared.
pub(crate) type Head = (u16, u16, u32, FrameKind);

type Ser<'a> = HighSerializer<AlignedVec<FRAME_ALIGN>, ArenaHandle<'a>, BoxedError>;

/// Writes frames. Holds the peer's frame limit and a scratch buffer reused for every archive.
/// Every method checks the api version and refuses (with `FrameTooLarge`, writing nothing) a
/// frame above the limit.
#[derive(Debug)]
pub struct FrameEncoder {
    frame_bytes_max: u32,
    scratch: AlignedVec<FRAME_ALIGN>,
}

impl Default for FrameEncoder {
    fn default() -> Self {
        FrameEncoder {
            frame_bytes_max: FRAME_BYTES_MAX_DEFAULT,
            scratch: AlignedVec::new(),
        }
    }
}

impl FrameEncoder {
    /// `frame_bytes_max` is the *peer's* limit (the server's comes in the Handshake response).
    pub fn new(frame_bytes_max: u32) -> Result<FrameEncoder, WireError> {
        let mut e = FrameEncoder::default();
        e.set_frame_bytes_max(frame_bytes_max)?;
        Ok(e)
    }

    pub fn set_frame_bytes_max(&mut self, frame_bytes_max: u32) -> Result<(), WireError> {
        if !(FRAME_BYTES_MIN_LIMIT..=FRAME_BYTES_MAX_LIMIT).contains(&frame_bytes_max) {
            return Err(WireError::InvalidConfig {
                reason: format!("frame_bytes_max {frame_bytes_max} out of range"),
            });
        }
        self.frame_bytes_max = frame_bytes_max;
        Ok(())
    }

    pub fn frame_bytes_max(&self) -> u32 {
        self.frame_bytes_max
    }

    /// Appends a request frame to `out` and returns its size. `out.len()` must be a multiple of
    /// 16 (it is, if it holds only frames).
    pub fn request(
        &mut self,
        out: &mut AlignedVec<FRAME_ALIGN>,
        correlation_id: u32,
        api_version: u16,
        request: &Request,
    ) -> Result<usize, WireError> {
        let p = self.prepare_request(correlation_id, api_version, request)?;
        Ok(self.write_flat(out, &p))
    }

    /// Appends a response frame to `out` and returns its size.
    pub fn response(
        &mut self,
        out: &mut AlignedVec<FRAME_ALIGN>,
        correlation_id: u32,
        api_version: u16,
        response: &Response,
    ) -> Result<usize, WireError> {
        let p = self.prepare_response(correlation_id, api_version, response)?;
        Ok(self.write_flat(out, &p))
    }

    /// A response frame as segments: fetched batches are shared, not copied.
    pub fn response_parts(
        &mut self,
        correlation_id: u32,
        api_version: u16,
        response: &Response,
    ) -> Result<FrameParts, WireError> {
        let p = self.prepare_response(correlation_id, api_version, response)?;
        Ok(self.write_parts(&p))
    }

    /// Appends a push frame (correlation id = subscription id) to `out`.
    pub fn push(
        &mut self,
        out: &mut AlignedVec<FRAME_ALIGN>,
        api_version: u16,
        push: &Push,
    ) -> Result<usize, WireError> {
        let p = self.prepare_push(api_version, push)?;
        Ok(self.write_flat(out, &p))
    }

    /// A push frame as segments: the batches are shared, not copied.
    pub fn push_parts(&mut self, api_version: u16, push: &Push) -> Result<FrameParts, WireError> {
        let p = self.prepare_push(api_version, push)?;
        Ok(self.write_parts(&p))
    }

    /// Appends an ERROR frame answering the request `(correlation_id, api_key, api_version)`.
    /// The key and version are echoed as received, even unknown ones.
    pub fn error(
        &mut self,
        out: &mut AlignedVec<FRAME_ALIGN>,
        correlation_id: u32,
        api_key: u16,
        api_version: u16,
        error: &ErrorResponse,
    ) -> Result<usize, WireError> {
        let h = (api_key, api_version, correlation_id, FrameKind::Error);
        let p = self.prepare(h, error, BlobPlan::default())?;
        Ok(self.write_flat(out, &p))
    }

    /// Appends a PUSH|ERROR frame: the subscription ended for the reason given.
    pub fn push_error(
        &mut self,
        out: &mut AlignedVec<FRAME_ALIGN>,
        subscription_id: u32,
        api_version: u16,
        error: &ErrorResponse,
    ) -> Result<usize, WireError> {
        let h = (
            ApiKey::Push.as_u16(),
            api_version,
            subscription_id,
            FrameKind::PushError,
        );
        let p = self.prepare(h, error, BlobPlan::default())?;
        Ok(self.write_flat(out, &p))
    }

    fn prepare_request<'b>(
        &mut self,
        correlation_id: u32,
        version: u16,
        request: &'b Request,
    ) -> Result<Prepared<'b>, WireError> {
        let api = request.api_key();
        api.check_version(version)?;
        let h = (api.as_u16(), version, correlation_id, FrameKind::Request);
        let prepared = request.prepare_payload(self, h)?;
        if !has_read_options(api, version) {
            return Ok(prepared);
        }
        let isolation = match request {
            Request::Fetch(f) => f.isolation,
            Request::Subscribe(s) => s.isolation,
            _ => ReadIsolation::Appended,
        };
        self.append_read_options(prepared, isolation)
    }

    /// Appends the read-options trailer after the archive in the scratch buffer (Fetch and
    /// Subscribe from version 1; they carry no blobs) and resizes the frame.
    fn append_read_options<'b>(
        &mut self,
        mut p: Prepared<'b>,
        isolation: ReadIsolation,
    ) -> Result<Prepared<'b>, WireError> {
        assert!(p.blobs.is_empty(), "read options follow a plain archive");
        let archive_bytes = self.scratch.len();
        let Ok(archive_len) = u32::try_from(archive_bytes) else {
            return Err(WireError::Encode {
                reason: "request archive too large".into(),
            });
        };
        self.scratch
            .extend_from_slice(&ZEROS[..pad_of(archive_bytes)]);
        let mut trailer = [0u8; READ_OPTIONS_BYTES];
        trailer[..4].copy_from_slice(&archive_len.to_le_bytes());
        trailer[4] = isolation.as_u8();
        self.scratch.extend_from_slice(&trailer);
        let payload_bytes = self.scratch.len() as u64;
        let frame_bytes = FRAME_HEADER_BYTES as u64 + padded(payload_bytes);
        if frame_bytes > u64::from(self.frame_bytes_max) {
            return Err(WireError::FrameTooLarge {
                frame_bytes,
                frame_bytes_max: self.frame_bytes_max,
                correlation_id: p.header.correlation_id,
                api_key: p.header.api_key,
            });
        }
        // Fits: frame_bytes <= frame_bytes_max < u32::MAX.
        p.header.payload_bytes = payload_bytes as u32;
        p.frame_bytes = frame_bytes as usize;
        Ok(p)
    }

    fn prepare_response<'b>(
        &mut self,
        correlation_id: u32,
        version: u16,
        response: &'b Response,
    ) -> Result<Prepared<'b>, WireError> {
        let api = response.api_key();
        api.check_version(version)?;
        let h = (api.as_u16(), version, correlation_id, FrameKind::Response);
        response.prepare_payload(self, h)
    }

    fn prepare_push<'b>(
        &mut self,
        version: u16,
        push: &'b Push,
    ) -> Result<Prepared<'b>, WireError> {
        ApiKey::Push.check_version(version)?;
        let h = (
            ApiKey::Push.as_u16(),
            version,
            push.subscription_id,
            FrameKind::Push,
        );
        let (env, plan) = push_envelope(push)?;
        self.prepare(h, &env, plan)
    }

    /// Archives `envelope` into the scratch buffer and sizes the frame.
    pub(crate) fn prepare<'b, T>(
        &mut self,
        (api_key, api_version, correlation_id, kind): Head,
        envelope: &T,
        plan: BlobPlan<'b>,
    ) -> Result<Prepared<'b>, WireError>
    where
        T: for<'a> Serialize<Ser<'a>>,
    {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        self.scratch =
            rkyv::api::high::to_bytes_in::<_, BoxedError>(envelope, scratch).map_err(|e| {
                WireError::Encode {
                    reason: e.to_string(),
                }
            })?;
        let payload_bytes = plan.data_bytes + self.scratch.len() as u64;
        let frame_bytes = FRAME_HEADER_BYTES as u64 + padded(payload_bytes);
        if frame_bytes > u64::from(self.frame_bytes_max) {
            return Err(WireError::FrameTooLarge {
                frame_bytes,
                frame_bytes_max: self.frame_bytes_max,
                correlation_id,
                api_key,
            });
        }
        // Both fit: frame_bytes <= frame_bytes_max <= FRAME_BYTES_MAX_LIMIT < u32::MAX.
        let header = FrameHeader {
            payload_bytes: payload_bytes as u32,
            api_key,
            api_version,
            correlation_id,
            kind,
        };
        Ok(Prepared {
            header,
            blobs: plan.blobs,
            frame_bytes: frame_bytes as usize,
        })
    }

    fn write_flat(&self, out: &mut AlignedVec<FRAME_ALIGN>, p: &Prepared<'_>) -> usize {
        assert!(
            out.len().is_multiple_of(FRAME_ALIGN),
            "frames must start at a multiple of 16 in the output buffer"
        );
        let start = out.len();
        out.reserve(p.frame_bytes);
        out.extend_from_slice(&p.header.encode());
        for b in &p.blobs {
            out.extend_from_slice(b);
            out.extend_from_slice(&ZEROS[..pad_of(b.len())]);
        }
        out.extend_from_slice(&self.scratch);
        out.extend_from_slice(&ZEROS[..pad_of(self.scratch.len())]);
        assert_eq!(out.len() - start, p.frame_bytes, "frame size as planned");
        p.frame_bytes
    }

    fn write_parts(&self, p: &Prepared<'_>) -> FrameParts {
        let mut segments = Vec::with_capacity(2 * p.blobs.len() + 1);
        for b in &p.blobs {
            segments.push((*b).clone());
            let pad = pad_of(b.len());
            if pad > 0 {
                segments.push(Bytes::from_static(&ZEROS[..pad]));
            }
        }
        let mut tail = Vec::with_capacity(padded(self.scratch.len() as u64) as usize);
        tail.extend_from_slice(&self.scratch);
        tail.extend_from_slice(&ZEROS[..pad_of(self.scratch.len())]);
        segments.push(Bytes::from(tail));
        let parts = FrameParts {
            header: p.header.encode(),
            segments,
        };
        assert_eq!(parts.len(), p.frame_bytes, "frame size as planned");
        parts
    }
}

fn pad_of(len: usize) -> usize {
    (FRAME_ALIGN - len % FRAME_ALIGN) % FRAME_ALIGN
}

#[cfg(test)]
mod tests {
    //! Hostile envelopes a well-behaved encoder never writes: blob references outside the data
    //! section, unaligned, or a data section longer than the payload.
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn produce_payload(data: &[u8], data_bytes: u32, batch: BlobRef) -> AlignedVec<FRAME_ALIGN> {
        let env = ProduceEnvelope {
            acks: Acks::Leader,
            timeout_ms: 0,
            data_bytes,
            topics: vec![ProduceTopicEnvelope {
                name: "t".into(),
                partitions: vec![ProducePartitionEnvelope {
                    partition: 0,
                    batch,
                }],
            }],
        };
        let mut out = AlignedVec::<FRAME_ALIGN>::new();
        out.extend_from_slice(data);
        rkyv::api::high::to_bytes_in::<_, BoxedError>(&env, out).unwrap()
    }

    #[test]
    fn blob_references_are_bounds_checked() {
        let data = [7u8; 32];
        let key = ApiKey::Produce.as_u16();
        let ok = produce_payload(
            &data,
            32,
            BlobRef {
                offset: 16,
                length: 16,
            },
        );
        let Request::Produce(p) = Request::decode(key, 0, &ok).unwrap() else {
            panic!("not a produce");
        };
        assert_eq!(&p.topics[0].partitions[0].batch[..], &[7u8; 16]);

        let cases = [
            (
                32,
                BlobRef {
                    offset: 16,
                    length: 17,
                },
            ), // past the data section
            (
                32,
                BlobRef {
                    offset: 8,
                    length: 8,
                },
            ), // unaligned
            (
                32,
                BlobRef {
                    offset: u32::MAX - 15,
                    length: 100,
                },
            ), // overflowing end
            (
                48,
                BlobRef {
                    offset: 0,
                    length: 0,
                },
            ), // data section not a multiple of 16
            (
                u32::MAX - 15,
                BlobRef {
                    offset: 0,
                    length: 16,
                },
            ), // data section past the payload
        ];
        for (i, (data_bytes, blob)) in cases.into_iter().enumerate() {
            let data_bytes = if i == 3 { 40 } else { data_bytes };
            let bad = produce_payload(&data, data_bytes, blob);
            let e = Request::decode(key, 0, &bad).unwrap_err();
            assert!(
                matches!(e, WireError::BlobOutOfBounds { .. }),
                "case {i}: {e:?}"
            );
            assert_eq!(e.code(), crate::code::MALFORMED_PAYLOAD);
        }
    }

    #[test]
    fn truncated_archives_are_malformed_not_panics() {
        let ok = produce_payload(
            &[0u8; 16],
            16,
            BlobRef {
                offset: 0,
                length: 16,
            },
        );
        for cut in 0..ok.len() {
            let mut v = AlignedVec::<FRAME_ALIGN>::new();
            v.extend_from_slice(&ok[..cut]);
            assert!(Request::decode(ApiKey::Produce.as_u16(), 0, &v).is_err());
        }
    }
}
