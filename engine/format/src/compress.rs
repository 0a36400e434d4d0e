//! Native body compression ([`crate::compression`], issue 18). A compressed native body is
//!
//! ```text
//!  0                     4
//!  | uncompressed_bytes  | codec payload ...
//!  | u32 LE              |
//! ```
//! LZ4: one LZ4 block (no frame: the length prefix is the frame); ZSTD: one zstd frame. The
//! uncompressed size is declared up front and capped at [`BATCH_BYTES_MAX`], so decompression
//! never writes more than the declared size and never more than the cap: a body that
//! decompresses to anything else (a bomb, or garbage) is refused with [`FormatError::Corrupt`]
//! or [`FormatError::TooLarge`]. The broker does not decompress on the produce path: ingress
//! checks this prefix only ([`check_prefix`]); readers decompress ([`decompress_body`]).

use crate::{BATCH_BYTES_MAX, FormatError as Error, Result, compression};

/// Bytes of the uncompressed-size prefix.
pub const PREFIX_BYTES: usize = 4;
/// LZ4's largest expansion ratio is about 255:1; a declared size beyond this many times the
/// payload is a bomb (refused before allocating).
const LZ4_RATIO_MAX: usize = 256;
/// Smallest zstd window a reader accepts whatever the declared size (encoders round windows up).
const ZSTD_WINDOW_FLOOR_BYTES: usize = 8 << 20;

/// The codec name as the CLI spells it.
pub fn codec_name(codec: u8) -> &'static str {
    match codec {
        compression::NONE => "none",
        compression::LZ4 => "lz4",
        compression::ZSTD => "zstd",
        _ => "unknown",
    }
}

/// Parses `none`, `lz4` or `zstd`.
pub fn codec_from_name(name: &str) -> Result<u8> {
    match name.to_ascii_lowercase().as_str() {
        "none" => Ok(compression::NONE),
        "lz4" => Ok(compression::LZ4),
        "zstd" => Ok(compression::ZSTD),
        other => Err(Error::InvalidArgument(format!(
            "unknown compression {other:?} (none, lz4, zstd)"
        ))),
    }
}

/// Compresses `plain` with `codec` and appends the prefixed body to `out`.
pub fn compress_into(codec: u8, plain: &[u8], out: &mut Vec<u8>) -> Result<()> {
    let n = u32::try_from(plain.len())
        .ok()
        .filter(|n| *n as usize <= BATCH_BYTES_MAX)
        .ok_or(Error::TooLarge {
            bytes: plain.len(),
            max: BATCH_BYTES_MAX,
        })?;
    out.extend_from_slice(&n.to_le_bytes());
    match codec {
        compression::LZ4 => {
            let start = out.len();
            out.resize(
                start + lz4_flex::block::get_maximum_output_size(plain.len()),
                0,
            );
            let written = lz4_flex::block::compress_into(plain, &mut out[start..])
                .map_err(|e| Error::InvalidArgument(format!("lz4: {e}")))?;
            out.truncate(start + written);
        }
        compression::ZSTD => {
            ruzstd::encoding::compress(
                plain,
                &mut *out,
                ruzstd::encoding::CompressionLevel::Fastest,
            );
        }
        c => {
            return Err(Error::InvalidArgument(format!(
                "not a compression codec: {c}"
            )));
        }
    }
    Ok(())
}

/// The declared uncompressed size of a compressed body, checked against the cap: what ingress
/// validation checks (the broker does not decompress on the produce path).
pub fn check_prefix(body: &[u8]) -> Result<usize> {
    if body.len() <= PREFIX_BYTES {
        return Err(Error::Corrupt("compressed body too short".into()));
    }
    let n = u32::from_le_bytes([body[0], body[1], body[2], body[3]]) as usize;
    if n > BATCH_BYTES_MAX {
        return Err(Error::TooLarge {
            bytes: n,
            max: BATCH_BYTES_MAX,
        });
    }
    Ok(n)
}

/// Decompresses a prefixed body into `out` (cleared first): exactly the declared size or an
/// error; never more than `limit` (itself at most [`BATCH_BYTES_MAX`]) bytes are produced or
/// allocated.
pub fn decompress_body(codec: u8, body: &[u8], limit: usize, out: &mut Vec<u8>) -> Result<()> {
    let declared = check_prefix(body)?;
    let limit = limit.min(BATCH_BYTES_MAX);
    if declared > limit {
        return Err(Error::TooLarge {
            bytes: declared,
            max: limit,
        });
    }
    let payload = &body[PREFIX_BYTES..];
    out.clear();
    match codec {
        compression::LZ4 => {
            if declared > payload.len().saturating_mul(LZ4_RATIO_MAX) {
                return Err(Error::Corrupt(
                    "lz4 body declares more than lz4 can expand to".into(),
                ));
            }
            out.resize(declared, 0);
            let n = lz4_flex::block::decompress_into(payload, out)
                .map_err(|_| Error::Corrupt("bad lz4 body".into()))?;
            if n != declared {
                return Err(Error::Corrupt("lz4 body shorter than declared".into()));
            }
        }
        compression::ZSTD => {
            use std::io::Read;
            // A frame may announce any window; more than the output can need is refused
            // before the decoder allocates it.
            let mut decoder = ruzstd::decoding::FrameDecoder::new();
            decoder.set_max_window_size(
                u64::try_from(declared.max(ZSTD_WINDOW_FLOOR_BYTES)).unwrap_or(u64::MAX),
            );
            let mut input = payload;
            let frame =
                ruzstd::decoding::StreamingDecoder::new_with_decoder(&mut input, &mut decoder)
                    .map_err(|_| Error::Corrupt("bad zstd body".into()))?;
            // One byte more than declared is enough to tell a bomb.
            let cap = u64::try_from(declared).unwrap_or(u64::MAX) + 1;
            out.reserve(declared.min(payload.len().saturating_mul(16)));
            frame
                .take(cap)
                .read_to_end(out)
                .map_err(|_| Error::Corrupt("bad zstd body".into()))?;
            if out.len() > declared {
                return Err(Error::TooLarge {
                    bytes: out.len(),
                    max: declared,
                });
            }
            if !decoder.is_finished() || !input.is_empty() {
                return Err(Error::Corrupt("zstd body is not one whole frame".into()));
            }
            if out.len() != declared {
                return Err(Error::Corrupt(format!(
                    "zstd body decompresses to {} bytes, declared {declared}",
                    out.len()
                )));
            }
        }
        c => return Err(Error::Corrupt(format!("unsupported compression {c}"))),
    }
    Ok(())
}

/// [`decompress_body`] into a new vector.
pub fn decompress(codec: u8, body: &[u8], limit: usize) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    decompress_body(codec, body, limit, &mut out)?;
    Ok(out)
}

/// A producer's choice of codec for native bodies (the header byte is [`Codec::as_u8`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum Codec {
    #[default]
    None,
    Lz4,
    Zstd,
}

impl Codec {
    /// The [`compression`] byte.
    pub fn as_u8(self) -> u8 {
        match self {
            Codec::None => compression::NONE,
            Codec::Lz4 => compression::LZ4,
            Codec::Zstd => compression::ZSTD,
        }
    }

    pub fn name(self) -> &'static str {
        codec_name(self.as_u8())
    }
}

impl std::str::FromStr for Codec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Codec> {
        Ok(match codec_from_name(s)? {
            compression::LZ4 => Codec::Lz4,
            compression::ZSTD => Codec::Zstd,
            _ => Codec::None,
        })
    }
}

impl std::fmt::Display for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
