//! The read-options trailer of Fetch and Subscribe from version 1 (the isolation level after
//! the archive): its decoding and its encoding.

use super::{FrameEncoder, Prepared, READ_OPTIONS_BYTES, Request, Source, ZEROS, pad_of};
use crate::FRAME_ALIGN;
use crate::api::ApiKey;
use crate::error::WireError;
use crate::frame::{FRAME_HEADER_BYTES, padded};
use crate::messages::*;

/// Decodes a request whose archive is followed by the read-options trailer (16-aligned).
pub(super) fn decode_with_read_options(api: ApiKey, src: Source<'_>) -> Result<Request, WireError> {
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

impl FrameEncoder {
    /// Appends the read-options trailer after the archive in the scratch buffer (Fetch and
    /// Subscribe from version 1; they carry no blobs) and resizes the frame.
    pub(super) fn append_read_options<'b>(
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
}
