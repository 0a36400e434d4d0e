//! The messages that carry raw batches (Produce requests, Fetch responses, pushes): their
//! envelopes, the plan of the data section, and their encode/decode bodies.

use bytes::Bytes;
use rkyv::{Archive, Deserialize, Serialize};

use super::{Blobs, FrameEncoder, Head, Prepared, Source, access, check_topics};
use crate::FRAME_ALIGN;
use crate::api::ApiKey;
use crate::error::WireError;
use crate::frame::{aligned_bytes, padded};
use crate::messages::*;

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

/// Blob access in a payload being decoded.
impl Source<'_> {
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

/// Blobs of one frame, in data-section order, with the offsets they get.
#[derive(Default)]
pub(crate) struct BlobPlan<'b> {
    pub(super) blobs: Vec<&'b Bytes>,
    pub(super) data_bytes: u64,
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

pub(super) fn push_envelope(m: &Push) -> Result<(PushEnvelope, BlobPlan<'_>), WireError> {
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

pub(super) fn decode_push(src: Source<'_>) -> Result<Push, WireError> {
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

#[cfg(test)]
mod tests {
    //! Hostile envelopes a well-behaved encoder never writes: blob references outside the data
    //! section, unaligned, or a data section longer than the payload.
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::api::Request;
    use rkyv::rancor::BoxedError;
    use rkyv::util::AlignedVec;

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
