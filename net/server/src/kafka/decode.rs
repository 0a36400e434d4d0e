//! Decoding of one Kafka request frame without serving it: what the connection driver does
//! with untrusted bytes before anything reaches the engine (header, version check, body of every
//! served api, and each produce batch's checks). For the fuzz target (`net/fuzz`,
//! `kafka_request_decode`) and the never-panics property test.

use bytes::{Buf, Bytes};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::Decodable;

/// Decodes `frame` (one request without its size prefix) as the server would. `Ok` with the
/// api key and version when the server would serve it, `Err` with why it would answer an error
/// or close the connection. Never panics.
pub fn decode_request(frame: Bytes) -> Result<(i16, i16), String> {
    if frame.len() < 8 {
        return Err("short frame".into());
    }
    let api_key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let key = ApiKey::try_from(api_key).map_err(|()| format!("unknown api key {api_key}"))?;
    if key == ApiKey::ApiVersions {
        return Ok((api_key, version));
    }
    if key == ApiKey::Produce && (0..3).contains(&version) {
        let (tx, _rx) = flume::bounded(1);
        let mut rest = frame;
        rest.advance(8);
        let call = super::Call {
            api_key,
            version,
            correlation_id: 0,
        };
        return super::produce::refuse_old(call, rest, &tx)
            .map(|_| (api_key, version))
            .map_err(|e| e.to_string());
    }
    if !super::api::SUPPORTED
        .iter()
        .any(|(k, min, max)| *k == key && (*min..=*max).contains(&version))
    {
        return Err(format!("unsupported version {version} of api {api_key}"));
    }
    let mut b = frame;
    RequestHeader::decode(&mut b, key.request_header_version(version))
        .map_err(|e| e.to_string())?;
    let b = &mut b;
    match key {
        ApiKey::Produce => {
            let r = ProduceRequest::decode(b, version).map_err(e)?;
            for t in &r.topic_data {
                for p in &t.partition_data {
                    if let Some(records) = &p.records
                        && let Ok(w) = shardline_engine::batch::kafka::wrap_validated(records)
                    {
                        let _ = shardline_engine::batch::decode(w.bytes());
                    }
                }
            }
        }
        ApiKey::Fetch => drop(FetchRequest::decode(b, version).map_err(e)?),
        ApiKey::ListOffsets => drop(ListOffsetsRequest::decode(b, version).map_err(e)?),
        ApiKey::Metadata => drop(MetadataRequest::decode(b, version).map_err(e)?),
        ApiKey::CreateTopics => drop(CreateTopicsRequest::decode(b, version).map_err(e)?),
        ApiKey::DeleteTopics => drop(DeleteTopicsRequest::decode(b, version).map_err(e)?),
        ApiKey::InitProducerId => drop(InitProducerIdRequest::decode(b, version).map_err(e)?),
        ApiKey::FindCoordinator => drop(FindCoordinatorRequest::decode(b, version).map_err(e)?),
        ApiKey::JoinGroup => drop(JoinGroupRequest::decode(b, version).map_err(e)?),
        ApiKey::SyncGroup => drop(SyncGroupRequest::decode(b, version).map_err(e)?),
        ApiKey::Heartbeat => drop(HeartbeatRequest::decode(b, version).map_err(e)?),
        ApiKey::LeaveGroup => drop(LeaveGroupRequest::decode(b, version).map_err(e)?),
        ApiKey::OffsetCommit => drop(OffsetCommitRequest::decode(b, version).map_err(e)?),
        ApiKey::OffsetFetch => drop(OffsetFetchRequest::decode(b, version).map_err(e)?),
        ApiKey::DescribeGroups => drop(DescribeGroupsRequest::decode(b, version).map_err(e)?),
        ApiKey::ListGroups => drop(ListGroupsRequest::decode(b, version).map_err(e)?),
        ApiKey::SaslHandshake => drop(SaslHandshakeRequest::decode(b, version).map_err(e)?),
        ApiKey::SaslAuthenticate => drop(SaslAuthenticateRequest::decode(b, version).map_err(e)?),
        ApiKey::DescribeConfigs => drop(DescribeConfigsRequest::decode(b, version).map_err(e)?),
        _ => return Err(format!("api {api_key} not served")),
    }
    Ok((api_key, version))
}

fn e(e: impl std::fmt::Display) -> String {
    e.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn arbitrary_request_frames_never_panic(
            key in 0i16..80, version in -1i16..14,
            body in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let mut f = Vec::new();
            f.extend_from_slice(&key.to_be_bytes());
            f.extend_from_slice(&version.to_be_bytes());
            f.extend_from_slice(&7i32.to_be_bytes());
            f.extend_from_slice(&body);
            let _ = decode_request(Bytes::from(f));
        }
    }

    #[test]
    fn a_metadata_request_decodes() {
        // Metadata v4: header v1 (client id "c"), null topic list, allow auto-creation.
        let f = [
            0, 3, 0, 4, 0, 0, 0, 1, 0, 1, b'c', 0xff, 0xff, 0xff, 0xff, 1,
        ];
        assert_eq!(decode_request(Bytes::copy_from_slice(&f)), Ok((3, 4)));
        assert!(decode_request(Bytes::copy_from_slice(&f[..12])).is_err());
    }
}
