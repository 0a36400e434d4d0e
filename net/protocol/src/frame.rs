//! Frames: the 16-byte header and the incremental, sans-IO [`FrameDecoder`]
//! (docs/protocol.md, "Frames").
//!
//! ```text
//!  0             4          6              8                 12        14         16
//!  +-------------+----------+--------------+-----------------+---------+----------+
//!  | payload_len | api_key  | api_version  | correlation_id  | flags   | reserved |
//!  | u32         | u16      | u16          | u32             | u16     | u16 = 0  |
//!  +-------------+----------+--------------+-----------------+---------+----------+
//!  16: payload (payload_len bytes), then zero padding up to a multiple of 16.
//! ```
//! All integers little-endian. `payload_len` excludes the header and the padding, so the payload
//! slice handed to rkyv ends exactly at the archive's root. A frame occupies
//! `16 + round_up_16(payload_len)` bytes, so on a stream that starts 16-aligned every header and
//! every payload is 16-aligned too: the decoder's buffer is an `AlignedVec<16>` and payloads are
//! read in place, without copies.
//!
//! Order of checks on receive: header complete; reserved = 0; flags form a known kind;
//! frame size <= `frame_bytes_max` (before reserving a single byte for the body); frame
//! complete; padding is zero. Api key, version and payload are checked by the message layer.

use bytes::Bytes;
use rkyv::util::AlignedVec;

use super::error::WireError;
use super::{FRAME_ALIGN, FRAME_BYTES_MAX_DEFAULT, FRAME_BYTES_MAX_LIMIT, FRAME_BYTES_MIN_LIMIT};

/// Size of the fixed frame header.
pub const FRAME_HEADER_BYTES: usize = 16;
const _: () = assert!(FRAME_HEADER_BYTES.is_multiple_of(FRAME_ALIGN));

/// Bits of the header's `flags` field.
pub mod flags {
    /// The frame answers the request with the same correlation id.
    pub const RESPONSE: u16 = 1 << 0;
    /// The payload is an `ErrorResponse` instead of the api's own response or push.
    pub const ERROR: u16 = 1 << 1;
    /// Server-initiated frame of a subscription; the correlation id is the subscription id.
    pub const PUSH: u16 = 1 << 2;
    /// Every bit a version-0 peer understands; any other bit set is a protocol violation.
    pub const KNOWN: u16 = RESPONSE | ERROR | PUSH;
}

/// What a frame is, from its flags. Only these five combinations are valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameKind {
    /// Client to server (flags 0).
    Request,
    /// Server to client, the api's response (RESPONSE).
    Response,
    /// Server to client, the request failed (RESPONSE | ERROR).
    Error,
    /// Server to client, a subscription's batches (PUSH).
    Push,
    /// Server to client, a subscription ended with an error (PUSH | ERROR).
    PushError,
}

impl FrameKind {
    pub fn flags(self) -> u16 {
        match self {
            FrameKind::Request => 0,
            FrameKind::Response => flags::RESPONSE,
            FrameKind::Error => flags::RESPONSE | flags::ERROR,
            FrameKind::Push => flags::PUSH,
            FrameKind::PushError => flags::PUSH | flags::ERROR,
        }
    }

    fn from_flags(bits: u16) -> Option<FrameKind> {
        const RESPONSE_ERROR: u16 = flags::RESPONSE | flags::ERROR;
        const PUSH_ERROR: u16 = flags::PUSH | flags::ERROR;
        match bits {
            0 => Some(FrameKind::Request),
            flags::RESPONSE => Some(FrameKind::Response),
            RESPONSE_ERROR => Some(FrameKind::Error),
            flags::PUSH => Some(FrameKind::Push),
            PUSH_ERROR => Some(FrameKind::PushError),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            FrameKind::Request => "request",
            FrameKind::Response => "response",
            FrameKind::Error => "error",
            FrameKind::Push => "push",
            FrameKind::PushError => "push-error",
        }
    }
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FrameHeader {
    /// Payload bytes, excluding header and padding.
    pub payload_bytes: u32,
    pub api_key: u16,
    pub api_version: u16,
    /// Chosen by the client per request and echoed in the response; for PUSH frames, the
    /// subscription id.
    pub correlation_id: u32,
    pub kind: FrameKind,
}

/// Rounds `n` up to the frame alignment (16).
pub const fn padded(n: u64) -> u64 {
    n.div_ceil(FRAME_ALIGN as u64) * FRAME_ALIGN as u64
}

fn u16_le(b: &[u8; FRAME_HEADER_BYTES], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_le(b: &[u8; FRAME_HEADER_BYTES], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl FrameHeader {
    /// Bytes the whole frame occupies on the wire: header, payload and padding.
    pub fn frame_bytes(&self) -> u64 {
        FRAME_HEADER_BYTES as u64 + padded(u64::from(self.payload_bytes))
    }

    /// Parses the fixed header: reserved field and flags. The size limit is the decoder's.
    pub fn parse(bytes: &[u8; FRAME_HEADER_BYTES]) -> Result<FrameHeader, WireError> {
        let correlation_id = u32_le(bytes, 8);
        let reserved = u16_le(bytes, 14);
        if reserved != 0 {
            return Err(WireError::ReservedNotZero {
                value: reserved,
                correlation_id,
            });
        }
        let bits = u16_le(bytes, 12);
        let kind = FrameKind::from_flags(bits).ok_or(WireError::InvalidFlags {
            flags: bits,
            correlation_id,
        })?;
        Ok(FrameHeader {
            payload_bytes: u32_le(bytes, 0),
            api_key: u16_le(bytes, 4),
            api_version: u16_le(bytes, 6),
            correlation_id,
            kind,
        })
    }

    pub fn encode(&self) -> [u8; FRAME_HEADER_BYTES] {
        let mut b = [0u8; FRAME_HEADER_BYTES];
        b[0..4].copy_from_slice(&self.payload_bytes.to_le_bytes());
        b[4..6].copy_from_slice(&self.api_key.to_le_bytes());
        b[6..8].copy_from_slice(&self.api_version.to_le_bytes());
        b[8..12].copy_from_slice(&self.correlation_id.to_le_bytes());
        b[12..14].copy_from_slice(&self.kind.flags().to_le_bytes());
        // 14..16 reserved, zero.
        b
    }
}

/// A complete frame borrowed from the decoder's buffer. The payload is 16-aligned in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    pub header: FrameHeader,
    pub payload: &'a [u8],
}

/// A complete frame that owns its payload (a 16-aligned [`Bytes`]), so that blobs in it (record
/// batches) can be sliced out and sent to other shards without copying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedFrame {
    pub header: FrameHeader,
    pub payload: Bytes,
}

/// Limits of one decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecoderConfig {
    /// Largest frame accepted (header + payload + padding). A header announcing more fails the
    /// decoder before anything is reserved for the body.
    pub frame_bytes_max: u32,
    /// Most bytes asked of a read while frames are small. Reads start at 4 KiB and double up
    /// to this while each fills its whole slice, so idle connections hold small buffers.
    pub read_buffer_bytes: u32,
}

impl Default for DecoderConfig {
    fn default() -> Self {
        DecoderConfig {
            frame_bytes_max: FRAME_BYTES_MAX_DEFAULT,
            read_buffer_bytes: 64 << 10,
        }
    }
}

impl DecoderConfig {
    pub fn validate(&self) -> Result<(), WireError> {
        if !(FRAME_BYTES_MIN_LIMIT..=FRAME_BYTES_MAX_LIMIT).contains(&self.frame_bytes_max) {
            return Err(WireError::InvalidConfig {
                reason: format!(
                    "frame_bytes_max {} outside {FRAME_BYTES_MIN_LIMIT}..={FRAME_BYTES_MAX_LIMIT}",
                    self.frame_bytes_max
                ),
            });
        }
        if self.read_buffer_bytes < FRAME_HEADER_BYTES as u32
            || self.read_buffer_bytes > self.frame_bytes_max
        {
            return Err(WireError::InvalidConfig {
                reason: format!(
                    "read_buffer_bytes {} outside 16..=frame_bytes_max",
                    self.read_buffer_bytes
                ),
            });
        }
        Ok(())
    }
}

/// Frames larger than this are handed out of [`FrameDecoder::next_frame_owned`] by giving away
/// the buffer they were read into, instead of copying them (when the frame is alone in it).
const HANDOFF_BYTES_MIN: usize = 32 << 10;

/// Turns a byte stream into frames. Sans-IO: the caller reads from its socket into
/// [`FrameDecoder::read_buf`] (then calls [`FrameDecoder::filled`]) or hands over bytes it already
/// has with [`FrameDecoder::push`], and takes frames out with [`FrameDecoder::next_frame`] or
/// [`FrameDecoder::next_frame_owned`] until they return `None`.
///
/// Bounds: the buffer's allocation never exceeds `max(read_buffer_bytes, frame_bytes_max)` bytes
/// and grows beyond `read_buffer_bytes` only for a frame whose header has been checked against
/// `frame_bytes_max`, and then only as that frame's bytes arrive: at most twice the bytes
/// received (never the announced size up front). After a fatal error the decoder stays failed and returns that error again.
#[derive(Debug)]
pub struct FrameDecoder {
    config: DecoderConfig,
    /// Initialized storage; `[start, filled)` holds unconsumed bytes. `start` is always a multiple
    /// of 16 (frames are), so every frame starts 16-aligned in memory.
    buf: AlignedVec<FRAME_ALIGN>,
    start: usize,
    filled: usize,
    /// Size of the frame last returned; dropped from the buffer on the next call.
    release: usize,
    failed: Option<WireError>,
    /// Bytes asked of a read while frames are small: starts at [`READ_CHUNK_START_BYTES`] and
    /// doubles each time a read fills its whole slice, up to `read_buffer_bytes`; so an idle
    /// connection holds a small buffer and a busy one reads in large chunks.
    chunk: usize,
    /// Length of the slice the last `read_buf` returned, when it was `chunk`-limited.
    chunk_room: usize,
}

/// The read size a decoder starts at (see `FrameDecoder::chunk`).
const READ_CHUNK_START_BYTES: usize = 4 << 10;

impl FrameDecoder {
    pub fn new(config: DecoderConfig) -> Result<FrameDecoder, WireError> {
        config.validate()?;
        Ok(FrameDecoder {
            buf: AlignedVec::new(),
            start: 0,
            filled: 0,
            release: 0,
            failed: None,
            chunk: READ_CHUNK_START_BYTES.min(config.read_buffer_bytes as usize),
            chunk_room: 0,
            config,
        })
    }

    pub fn config(&self) -> &DecoderConfig {
        &self.config
    }

    /// Bytes received and not yet returned as frames.
    pub fn buffered_bytes(&self) -> usize {
        self.filled - self.start - self.release
    }

    /// Bytes allocated for the buffer (tests check the memory bound).
    #[cfg(test)]
    pub(crate) fn buffer_capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Bytes allocated for the buffer right now (what a server charges to its memory budget).
    pub fn allocated_bytes(&self) -> usize {
        self.buf.capacity()
    }

    /// Changes the largest frame accepted from now on (a server lowers it until a connection
    /// has handshaken or authenticated, then raises it). A frame already partly buffered is
    /// checked against the new limit when it is located. Clamped to the valid range and to at
    /// least `read_buffer_bytes`.
    pub fn set_frame_bytes_max(&mut self, frame_bytes_max: u32) {
        self.config.frame_bytes_max = frame_bytes_max
            .clamp(FRAME_BYTES_MIN_LIMIT, FRAME_BYTES_MAX_LIMIT)
            .max(self.config.read_buffer_bytes);
    }

    /// Changes both limits from now on (a server starts a connection with small ones and
    /// raises them once it has handshaken); bytes already buffered are kept. An invalid pair is
    /// refused and nothing changes.
    pub fn set_config(&mut self, config: DecoderConfig) -> Result<(), WireError> {
        config.validate()?;
        self.chunk = self.chunk.min(config.read_buffer_bytes as usize);
        self.config = config;
        Ok(())
    }

    /// The error the decoder failed with, if it did.
    pub fn failure(&self) -> Option<&WireError> {
        self.failed.as_ref()
    }

    /// Frees the buffer when it holds nothing (a connection going idle after large frames).
    pub fn release_memory(&mut self) {
        self.apply_release();
        if self.start == self.filled {
            self.buf = AlignedVec::new();
            self.start = 0;
            self.filled = 0;
        }
    }

    fn apply_release(&mut self) {
        self.start += self.release;
        self.release = 0;
        if self.start == self.filled {
            self.start = 0;
            self.filled = 0;
        }
    }

    /// Size of the first buffered frame, if its 16 header bytes are in and valid within limits.
    fn pending_frame_bytes(&self) -> Option<usize> {
        if self.filled - self.start < FRAME_HEADER_BYTES {
            return None;
        }
        let head = self.buf.get(self.start..self.start + FRAME_HEADER_BYTES)?;
        let header = FrameHeader::parse(head.try_into().ok()?).ok()?;
        let bytes = header.frame_bytes();
        if bytes > u64::from(self.config.frame_bytes_max) {
            return None;
        }
        usize::try_from(bytes).ok()
    }

    /// Space to read into. Its length is at least the rest of the current frame when that frame
    /// is larger than `read_buffer_bytes` (and then exactly that, so a large frame ends its
    /// buffer and can be handed off without a copy), else whatever room the buffer has. Empty
    /// only when complete frames are waiting to be taken, or after a failure.
    pub fn read_buf(&mut self) -> &mut [u8] {
        self.apply_release();
        if self.failed.is_some() {
            return &mut [];
        }
        let chunk = self.chunk;
        let frame = self.pending_frame_bytes();
        // A large frame's buffer grows as its bytes arrive (doubling what is already in),
        // never to the announced size up front: a header alone costs a peer no more memory
        // than the bytes it actually sent (issue 16, finding 1).
        let received = self.filled - self.start;
        let want = match frame {
            Some(f) if f > chunk => f.min(chunk.max(received.saturating_mul(2))),
            _ => chunk,
        };
        if self.start + want > self.buf.len() && self.start > 0 {
            // Move the partial frame to the front; it is shorter than one frame.
            self.buf.copy_within(self.start..self.filled, 0);
            self.filled -= self.start;
            self.start = 0;
        }
        if self.buf.len() < self.start + want {
            // Bounded: `want` is read_buffer_bytes or a frame checked against frame_bytes_max,
            // and `start` is 0 here. Exact, so that the allocation keeps the bound too.
            let grow = self.start + want - self.buf.len();
            self.buf.reserve_exact(grow);
            self.buf.resize(self.start + want, 0);
        }
        let end = match frame {
            Some(f) if f > chunk => self.start + want,
            _ => self.buf.len(),
        };
        let end = end.max(self.filled);
        self.chunk_room = end - self.filled;
        &mut self.buf[self.filled..end]
    }

    /// Records that `n` bytes were read into the slice [`FrameDecoder::read_buf`] returned.
    pub fn filled(&mut self, n: usize) {
        assert!(
            self.filled + n <= self.buf.len(),
            "filled({n}) beyond the slice read_buf returned"
        );
        self.filled += n;
        if n > 0 && n == self.chunk_room {
            // A read filled its whole slice: more is coming, read larger chunks.
            self.chunk = (self.chunk * 2).min(self.config.read_buffer_bytes as usize);
        }
    }

    /// Copies as much of `data` as the buffer takes and returns how many bytes that was. Returns
    /// less than `data.len()` (possibly 0) when complete frames must be taken out first.
    pub fn push(&mut self, data: &[u8]) -> usize {
        let mut taken = 0;
        while taken < data.len() {
            let room = self.read_buf();
            if room.is_empty() {
                break;
            }
            let n = room.len().min(data.len() - taken);
            room[..n].copy_from_slice(&data[taken..taken + n]);
            self.filled(n);
            taken += n;
            // Stop once a whole frame is buffered: the caller should drain it before we grow.
            if self.has_complete_frame() {
                break;
            }
        }
        taken
    }

    fn has_complete_frame(&self) -> bool {
        self.pending_frame_bytes()
            .is_some_and(|f| self.filled - self.start >= f)
    }

    fn fail(&mut self, e: WireError) -> WireError {
        self.failed = Some(e.clone());
        e
    }

    /// The next complete frame, borrowing the buffer (zero copies), or `None` if more bytes are
    /// needed. The frame's bytes are released on the next call to any method.
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>, WireError> {
        match self.locate()? {
            None => Ok(None),
            Some((header, bytes)) => {
                self.release = bytes;
                let payload_start = self.start + FRAME_HEADER_BYTES;
                let payload_end = payload_start + header.payload_bytes as usize;
                Ok(Some(Frame {
                    header,
                    payload: &self.buf[payload_start..payload_end],
                }))
            }
        }
    }

    /// The next complete frame with an owned, 16-aligned payload. A large frame alone in the
    /// buffer is handed off without copying (the decoder starts a new buffer); otherwise the
    /// payload is copied once into a fresh aligned allocation.
    pub fn next_frame_owned(&mut self) -> Result<Option<OwnedFrame>, WireError> {
        let Some((header, bytes)) = self.locate()? else {
            return Ok(None);
        };
        let payload_end = FRAME_HEADER_BYTES + header.payload_bytes as usize;
        if self.start == 0
            && self.filled == bytes
            && bytes >= HANDOFF_BYTES_MIN
            && self.buf.capacity() <= 2 * bytes
        {
            let mut whole = std::mem::take(&mut self.buf);
            whole.resize(payload_end, 0);
            self.start = 0;
            self.filled = 0;
            let payload = Bytes::from_owner(whole).slice(FRAME_HEADER_BYTES..);
            return Ok(Some(OwnedFrame { header, payload }));
        }
        self.release = bytes;
        let src = &self.buf[self.start + FRAME_HEADER_BYTES..self.start + payload_end];
        Ok(Some(OwnedFrame {
            header,
            payload: aligned_bytes(src),
        }))
    }

    /// Finds the first complete frame: returns its header and total size, without consuming it.
    fn locate(&mut self) -> Result<Option<(FrameHeader, usize)>, WireError> {
        self.apply_release();
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let available = self.filled - self.start;
        let Some(head) = self.buf.get(self.start..self.start + FRAME_HEADER_BYTES) else {
            return Ok(None);
        };
        if available < FRAME_HEADER_BYTES {
            return Ok(None);
        }
        let mut raw = [0u8; FRAME_HEADER_BYTES];
        raw.copy_from_slice(head);
        let header = FrameHeader::parse(&raw).map_err(|e| self.fail(e))?;
        let frame_bytes = header.frame_bytes();
        if frame_bytes > u64::from(self.config.frame_bytes_max) {
            return Err(self.fail(WireError::FrameTooLarge {
                frame_bytes,
                frame_bytes_max: self.config.frame_bytes_max,
                correlation_id: header.correlation_id,
                api_key: header.api_key,
            }));
        }
        // Fits in usize: at most frame_bytes_max.
        let frame_bytes = frame_bytes as usize;
        if available < frame_bytes {
            return Ok(None);
        }
        let pad_start = self.start + FRAME_HEADER_BYTES + header.payload_bytes as usize;
        let pad = &self.buf[pad_start..self.start + frame_bytes];
        if pad.iter().any(|&b| b != 0) {
            return Err(self.fail(WireError::PaddingNotZero {
                correlation_id: header.correlation_id,
            }));
        }
        Ok(Some((header, frame_bytes)))
    }
}

/// Copies `src` into a new 16-aligned allocation.
pub(crate) fn aligned_bytes(src: &[u8]) -> Bytes {
    let mut v = AlignedVec::<FRAME_ALIGN>::with_capacity(src.len());
    v.extend_from_slice(src);
    Bytes::from_owner(v)
}

/// Whether `bytes` starts at a 16-byte boundary in memory.
pub(crate) fn is_aligned(bytes: &[u8]) -> bool {
    (bytes.as_ptr() as usize).is_multiple_of(FRAME_ALIGN)
}
