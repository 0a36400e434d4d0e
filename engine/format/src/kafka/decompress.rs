//! Bounded decompression of a Kafka batch's records (gzip, snappy, lz4, zstd): hostile
//! input gives an error, never a panic or an unbounded allocation.

use super::{codec, corrupt};
use crate::{FormatError as Error, Result};

/// Decompresses the records section `b` of a Kafka batch compressed with `codec` ([`codec`]),
/// to at most `limit` bytes: a longer output (a compression bomb) is refused with
/// [`Error::TooLarge`] once `limit` is passed, and no decoder allocates an announced size
/// before checking it against `limit`. Hostile bytes give [`Error::Corrupt`], never a panic.
pub fn decompress(codec: u8, b: &[u8], limit: usize) -> Result<Vec<u8>> {
    match codec {
        codec::NONE => {
            if b.len() > limit {
                return Err(too_large(b.len(), limit));
            }
            Ok(b.to_vec())
        }
        codec::GZIP => gunzip(b, limit),
        codec::SNAPPY => unsnappy(b, limit),
        codec::LZ4 => unlz4(b, limit),
        codec::ZSTD => unzstd(b, limit),
        c => corrupt(format!("kafka batch codec {c}")),
    }
}

fn too_large(bytes: usize, max: usize) -> Error {
    Error::TooLarge { bytes, max }
}

/// Reads `r` to its end into a vector of at most `limit` bytes; one byte more is a bomb.
fn read_bounded(r: impl std::io::Read, limit: usize, what: &str) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    r.take(cap)
        .read_to_end(&mut out)
        .map_err(|e| Error::Corrupt(format!("bad {what} stream in kafka batch: {e}")))?;
    if out.len() > limit {
        return Err(too_large(out.len(), limit));
    }
    Ok(out)
}

/// Inflates one gzip member (RFC 1952), at most `limit` bytes out.
fn gunzip(b: &[u8], limit: usize) -> Result<Vec<u8>> {
    const FHCRC: u8 = 2;
    const FEXTRA: u8 = 4;
    const FNAME: u8 = 8;
    const FCOMMENT: u8 = 16;
    let bad = || Error::Corrupt("bad gzip stream in kafka batch".into());
    if b.len() < 18 || b[0] != 0x1f || b[1] != 0x8b || b[2] != 8 {
        return Err(bad());
    }
    let flags = b[3];
    let mut at = 10usize;
    if flags & FEXTRA != 0 {
        let n = usize::from(u16::from_le_bytes([
            *b.get(at).ok_or_else(bad)?,
            *b.get(at + 1).ok_or_else(bad)?,
        ]));
        at += 2 + n;
    }
    for flag in [FNAME, FCOMMENT] {
        if flags & flag != 0 {
            let end = b
                .get(at..)
                .ok_or_else(bad)?
                .iter()
                .position(|c| *c == 0)
                .ok_or_else(bad)?;
            at += end + 1;
        }
    }
    if flags & FHCRC != 0 {
        at += 2;
    }
    let deflate = b.get(at..).ok_or_else(bad)?;
    miniz_oxide::inflate::decompress_to_vec_with_limit(deflate, limit).map_err(|e| {
        if e.status == miniz_oxide::inflate::TINFLStatus::HasMoreOutput {
            too_large(limit.saturating_add(1), limit)
        } else {
            bad()
        }
    })
}

/// snappy-java's (xerial) stream header: magic, then version and compatible version (i32 BE).
pub(super) const XERIAL_MAGIC: &[u8; 8] = b"\x82SNAPPY\x00";
const XERIAL_HEADER_BYTES: usize = 16;

/// Snappy as Kafka clients write it: the Java client's xerial framing (header, then blocks of
/// u32 big-endian length + raw snappy), or one raw snappy block (librdkafka may write either).
fn unsnappy(b: &[u8], limit: usize) -> Result<Vec<u8>> {
    if b.len() >= XERIAL_HEADER_BYTES && b.starts_with(XERIAL_MAGIC) {
        let mut out = Vec::new();
        let mut rest = &b[XERIAL_HEADER_BYTES..];
        while !rest.is_empty() {
            let Some((len, tail)) = rest.split_first_chunk::<4>() else {
                return corrupt("truncated snappy block length in kafka batch");
            };
            let len = usize::try_from(u32::from_be_bytes(*len)).unwrap_or(usize::MAX);
            let Some(block) = tail.get(..len) else {
                return corrupt("truncated snappy block in kafka batch");
            };
            unsnappy_raw(block, limit, &mut out)?;
            rest = &tail[len..];
        }
        return Ok(out);
    }
    let mut out = Vec::new();
    unsnappy_raw(b, limit, &mut out)?;
    Ok(out)
}

/// At most this many bytes out per snappy byte in: the densest element is a 3-byte copy of 64.
const SNAPPY_MAX_EXPANSION: usize = 22;

/// Appends one raw snappy block to `out`, which may not grow past `limit` bytes. The block's
/// announced length is checked before anything is allocated: against `limit`, and against what
/// the block's bytes could at most expand to (so a few hostile bytes cannot make us allocate
/// up to `limit`).
fn unsnappy_raw(block: &[u8], limit: usize, out: &mut Vec<u8>) -> Result<()> {
    let bad = |e: snap::Error| Error::Corrupt(format!("bad snappy block in kafka batch: {e}"));
    let n = snap::raw::decompress_len(block).map_err(bad)?;
    let total = out.len().saturating_add(n);
    if total > limit {
        return Err(too_large(total, limit));
    }
    if n > block.len().saturating_mul(SNAPPY_MAX_EXPANSION) {
        return corrupt(format!(
            "snappy block of {} bytes in kafka batch announces {n}",
            block.len()
        ));
    }
    let start = out.len();
    out.resize(total, 0);
    let got = snap::raw::Decoder::new()
        .decompress(block, &mut out[start..])
        .map_err(bad)?;
    if got != n {
        return corrupt("snappy block shorter than announced in kafka batch");
    }
    Ok(())
}

/// LZ4 frame format (Kafka's lz4 for record batch v2; the "broken" header checksum of old
/// clients only applies to magic < 2). Frames are decoded block by block (blocks are at most
/// 4 MiB), the output bounded by `limit`.
fn unlz4(b: &[u8], limit: usize) -> Result<Vec<u8>> {
    read_bounded(lz4_flex::frame::FrameDecoder::new(b), limit, "lz4")
}

/// zstd: one or more frames (skippable frames skipped), output bounded by `limit`. The decoder
/// reserves the window a frame announces up front, so the window allowed is bounded too: by
/// what the input could at most expand to (a zstd block of up to 128 KiB needs at least 4 input
/// bytes) and by `limit`, but never below 8 MiB so that an encoder's default window descriptor
/// (zstd's level 3 announces 2 MiB whatever the input) is accepted for a small input.
fn unzstd(b: &[u8], limit: usize) -> Result<Vec<u8>> {
    use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
    use std::io::Read;
    const MAX_EXPANSION: u64 = 32 * 1024;
    const WINDOW_FLOOR: u64 = 8 << 20;
    let bad =
        |e: &dyn std::fmt::Display| Error::Corrupt(format!("bad zstd stream in kafka batch: {e}"));
    let limit64 = u64::try_from(limit).unwrap_or(u64::MAX);
    let input_len = u64::try_from(b.len()).unwrap_or(u64::MAX);
    let window = input_len
        .saturating_mul(MAX_EXPANSION)
        .saturating_add(128 * 1024)
        .min(limit64.max(WINDOW_FLOOR))
        .max(WINDOW_FLOOR);
    let mut decoder = ruzstd::decoding::FrameDecoder::new();
    decoder.set_max_window_size(window);
    let mut input = b;
    let mut out = Vec::new();
    while !input.is_empty() {
        let budget = limit.saturating_sub(out.len());
        let frame =
            match ruzstd::decoding::StreamingDecoder::new_with_decoder(&mut input, &mut decoder) {
                Ok(frame) => frame,
                Err(FrameDecoderError::ReadFrameHeaderError(ReadFrameHeaderError::SkipFrame {
                    length,
                    ..
                })) => {
                    let skip = usize::try_from(length).unwrap_or(usize::MAX);
                    input = input
                        .get(skip..)
                        .ok_or_else(|| bad(&"truncated skippable frame"))?;
                    continue;
                }
                Err(e) => return Err(bad(&e)),
            };
        let cap = u64::try_from(budget).unwrap_or(u64::MAX).saturating_add(1);
        frame.take(cap).read_to_end(&mut out).map_err(|e| bad(&e))?;
        if out.len() > limit {
            return Err(too_large(out.len(), limit));
        }
        if !decoder.is_finished() {
            return Err(bad(&"truncated frame"));
        }
    }
    Ok(out)
}
