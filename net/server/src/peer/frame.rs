//! The node-to-node frame codec, sans-IO (docs/replication.md, "Node-to-node transport").
//! Every integer is little-endian.
//!
//! ```text
//! frame:    0 u32 frame_len (bytes after this field: 4 + body, at most frame_bytes_max)
//!           4 u8  kind (1 Hello, 2 Welcome, 3 Refuse, 4 Messages)
//!           5 u8  flags (0)
//!           6 u16 reserved (0)
//!           8 ... body
//! Hello / Welcome body:
//!           0 [u8; 4] magic "SLNP"
//!           4 u16 protocol version
//!           6 u64 sender's node id
//!          14 u64 node id the sender believes it talks to
//!          22 u8  cluster id length n (1..=64), then n bytes of cluster id (ASCII)
//!      23 + n u8  client address length m (0..=255), then m bytes of UTF-8 `host:port`: the
//!                 sender's client listener as clients should dial it (version 2; empty =
//!                 not known)
//!  24 + n + m u8  Kafka address length k (0..=255), then k bytes of UTF-8 `host:port`: the
//!                 sender's Kafka listener as Kafka clients should dial it (version 3; empty =
//!                 no Kafka listener)
//! Refuse body:
//!           0 u16 code (1 version, 2 cluster id, 3 unknown node, 4 wrong node, 5 malformed)
//!           2 u16 reason length n, then n bytes of UTF-8 reason
//! Messages body:
//!           0 u32 count, then count times: u64 group, u32 len, len bytes (opaque)
//! ```
//! The decoder never panics and never allocates more than the input holds: every length is
//! checked against the bytes present before it is used.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::config::CLUSTER_ID_BYTES_MAX;

/// The version this build speaks (and sends first).
pub const PEER_PROTOCOL_VERSION: u16 = 3;
/// The oldest version this build still accepts and speaks to a peer that asks for it (a
/// version 2 peer has no Kafka address); older ones are refused.
pub const PEER_PROTOCOL_VERSION_MIN: u16 = 2;
/// The first bytes of a Hello/Welcome body: tells a peer link from a client that dialled the
/// wrong port.
pub const PEER_MAGIC: [u8; 4] = *b"SLNP";
/// Bytes of the frame header (length field included).
pub const FRAME_HEADER_BYTES: usize = 8;
/// Bytes a message adds to a Messages frame besides its own bytes.
pub const MESSAGE_OVERHEAD_BYTES: usize = 12;
/// Smallest `frame_bytes_max` a transport accepts.
pub const FRAME_BYTES_MIN_LIMIT: u32 = 4096;

const KIND_HELLO: u8 = 1;
const KIND_WELCOME: u8 = 2;
const KIND_REFUSE: u8 = 3;
const KIND_MESSAGES: u8 = 4;

/// Why a Refuse frame refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefuseCode {
    Version,
    ClusterId,
    UnknownNode,
    WrongNode,
    Malformed,
    Other(u16),
}

impl RefuseCode {
    fn to_u16(self) -> u16 {
        match self {
            RefuseCode::Version => 1,
            RefuseCode::ClusterId => 2,
            RefuseCode::UnknownNode => 3,
            RefuseCode::WrongNode => 4,
            RefuseCode::Malformed => 5,
            RefuseCode::Other(c) => c,
        }
    }
    fn from_u16(c: u16) -> Self {
        match c {
            1 => RefuseCode::Version,
            2 => RefuseCode::ClusterId,
            3 => RefuseCode::UnknownNode,
            4 => RefuseCode::WrongNode,
            5 => RefuseCode::Malformed,
            c => RefuseCode::Other(c),
        }
    }
}

/// The identity each side sends in the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub version: u16,
    pub node_id: u64,
    /// Who the sender believes the other side is (the dialler: the node it dialled; the
    /// acceptor: the node it accepted).
    pub to_node_id: u64,
    pub cluster_id: String,
    /// The sender's client address (`host:port`, at most 255 bytes; empty = not known):
    /// how every node learns where clients reach every other node (DescribeCluster).
    pub client_address: String,
    /// The sender's Kafka address (`host:port`, at most 255 bytes; empty = no Kafka listener,
    /// or a version 2 peer): every node's Metadata lists every node's Kafka listener.
    pub kafka_address: String,
}

/// Longest client address a Hello carries.
pub const CLIENT_ADDRESS_BYTES_MAX: usize = 255;

/// A decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Dialler -> acceptor, first frame of a connection.
    Hello(Hello),
    /// Acceptor -> dialler: the handshake is accepted.
    Welcome(Hello),
    /// Either side: the handshake is refused; the connection closes after it.
    Refuse { code: RefuseCode, reason: String },
    /// Every queued message for this peer at one flush: (group, opaque bytes).
    Messages(Vec<(u64, Bytes)>),
}

/// A stream that cannot be decoded: the connection is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: u64, max: u32 },
    #[error("frame of {len} bytes is shorter than its header")]
    TooShort { len: u32 },
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("nonzero flags or reserved bytes in a frame header")]
    Reserved,
    #[error("malformed {what} frame: {reason}")]
    Malformed {
        what: &'static str,
        reason: &'static str,
    },
}

fn malformed(what: &'static str, reason: &'static str) -> FrameError {
    FrameError::Malformed { what, reason }
}

/// Decodes the first frame of `buf`: `Ok(None)` until a whole frame is there; a decoded frame
/// is split off the front of `buf` (the messages it carries share its memory).
pub fn decode(buf: &mut BytesMut, frame_bytes_max: u32) -> Result<Option<Frame>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if len > frame_bytes_max {
        return Err(FrameError::TooLarge {
            len: u64::from(len),
            max: frame_bytes_max,
        });
    }
    if (len as usize) < FRAME_HEADER_BYTES - 4 {
        return Err(FrameError::TooShort { len });
    }
    if buf.len() < 4 + len as usize {
        return Ok(None);
    }
    let mut frame = buf.split_to(4 + len as usize).freeze();
    frame.advance(4);
    let kind = frame.get_u8();
    if frame.get_u8() != 0 || frame.get_u16_le() != 0 {
        return Err(FrameError::Reserved);
    }
    match kind {
        KIND_HELLO => Ok(Some(Frame::Hello(decode_hello(frame, "Hello")?))),
        KIND_WELCOME => Ok(Some(Frame::Welcome(decode_hello(frame, "Welcome")?))),
        KIND_REFUSE => decode_refuse(frame).map(Some),
        KIND_MESSAGES => decode_messages(frame).map(Some),
        k => Err(FrameError::UnknownKind(k)),
    }
}

fn decode_hello(mut b: Bytes, what: &'static str) -> Result<Hello, FrameError> {
    if b.remaining() < 23 {
        return Err(malformed(what, "body too short"));
    }
    let mut magic = [0u8; 4];
    b.copy_to_slice(&mut magic);
    if magic != PEER_MAGIC {
        return Err(malformed(what, "bad magic (not a Shardline peer)"));
    }
    let version = b.get_u16_le();
    let node_id = b.get_u64_le();
    let to_node_id = b.get_u64_le();
    let n = usize::from(b.get_u8());
    // Version 1 ends with the cluster id; later versions carry the client address after it
    // (the handshake then refuses a version it does not speak, with the reason).
    let exact = version < 2;
    if n == 0 || n > CLUSTER_ID_BYTES_MAX || b.remaining() < n || (exact && b.remaining() != n) {
        return Err(malformed(what, "bad cluster id length"));
    }
    let id = b.split_to(n);
    let cluster_id = std::str::from_utf8(&id)
        .map_err(|_| malformed(what, "cluster id is not UTF-8"))?
        .to_string();
    let mut client_address = String::new();
    let mut kafka_address = String::new();
    if !exact {
        // Version 2 ends with the client address; version 3 and later add the Kafka address.
        client_address = address(&mut b, what, "client address", version < 3)?;
        if version >= 3 {
            kafka_address = address(&mut b, what, "Kafka address", true)?;
        }
    }
    Ok(Hello {
        version,
        node_id,
        to_node_id,
        cluster_id,
        client_address,
        kafka_address,
    })
}

/// One length-prefixed UTF-8 address of a Hello; `last`: nothing may follow it.
fn address(
    b: &mut Bytes,
    what: &'static str,
    field: &'static str,
    last: bool,
) -> Result<String, FrameError> {
    let reason = |r: &'static str| malformed(what, r);
    if !b.has_remaining() {
        return Err(reason(if field == "client address" {
            "no client address length"
        } else {
            "no Kafka address length"
        }));
    }
    let m = usize::from(b.get_u8());
    if b.remaining() < m || (last && b.remaining() != m) {
        return Err(reason(if field == "client address" {
            "bad client address length"
        } else {
            "bad Kafka address length"
        }));
    }
    let v = b.split_to(m);
    std::str::from_utf8(&v)
        .map(str::to_string)
        .map_err(|_| reason("address is not UTF-8"))
}

fn decode_refuse(mut b: Bytes) -> Result<Frame, FrameError> {
    if b.remaining() < 4 {
        return Err(malformed("Refuse", "body too short"));
    }
    let code = RefuseCode::from_u16(b.get_u16_le());
    let n = usize::from(b.get_u16_le());
    if b.remaining() != n {
        return Err(malformed("Refuse", "bad reason length"));
    }
    let reason = String::from_utf8_lossy(&b).into_owned();
    Ok(Frame::Refuse { code, reason })
}

fn decode_messages(mut b: Bytes) -> Result<Frame, FrameError> {
    if b.remaining() < 4 {
        return Err(malformed("Messages", "body too short"));
    }
    let count = b.get_u32_le() as usize;
    // Each message takes at least its 12 bytes of overhead: the count cannot claim more
    // messages than the body could hold, so the allocation is bounded by the input.
    if count > b.remaining() / MESSAGE_OVERHEAD_BYTES {
        return Err(malformed("Messages", "count exceeds the body"));
    }
    let mut messages = Vec::with_capacity(count);
    for _ in 0..count {
        if b.remaining() < MESSAGE_OVERHEAD_BYTES {
            return Err(malformed("Messages", "truncated message header"));
        }
        let group = b.get_u64_le();
        let len = b.get_u32_le() as usize;
        if b.remaining() < len {
            return Err(malformed("Messages", "message longer than the frame"));
        }
        messages.push((group, b.split_to(len)));
    }
    if b.has_remaining() {
        return Err(malformed("Messages", "trailing bytes"));
    }
    Ok(Frame::Messages(messages))
}

fn header(out: &mut BytesMut, kind: u8, body_bytes: usize) {
    let len = u32::try_from(FRAME_HEADER_BYTES - 4 + body_bytes).unwrap_or(u32::MAX);
    out.put_u32_le(len);
    out.put_u8(kind);
    out.put_u8(0);
    out.put_u16_le(0);
}

fn encode_hello_kind(out: &mut BytesMut, kind: u8, h: &Hello) {
    let id = h.cluster_id.as_bytes();
    assert!(
        !id.is_empty() && id.len() <= CLUSTER_ID_BYTES_MAX,
        "cluster ids are validated before a transport starts"
    );
    let address = h.client_address.as_bytes();
    assert!(
        address.len() <= CLIENT_ADDRESS_BYTES_MAX,
        "client addresses are validated before a transport starts"
    );
    let kafka = h.kafka_address.as_bytes();
    assert!(
        kafka.len() <= CLIENT_ADDRESS_BYTES_MAX,
        "Kafka addresses are validated before a transport starts"
    );
    // Version 1 has no address field (kept so that a refusal can be tested and fuzzed);
    // version 2 no Kafka address (spoken to version 2 peers).
    let with_address = h.version >= 2;
    let with_kafka = h.version >= 3;
    let body = 23
        + id.len()
        + if with_address { 1 + address.len() } else { 0 }
        + if with_kafka { 1 + kafka.len() } else { 0 };
    header(out, kind, body);
    out.put_slice(&PEER_MAGIC);
    out.put_u16_le(h.version);
    out.put_u64_le(h.node_id);
    out.put_u64_le(h.to_node_id);
    out.put_u8(u8::try_from(id.len()).unwrap_or(u8::MAX));
    out.put_slice(id);
    if with_address {
        out.put_u8(u8::try_from(address.len()).unwrap_or(u8::MAX));
        out.put_slice(address);
    }
    if with_kafka {
        out.put_u8(u8::try_from(kafka.len()).unwrap_or(u8::MAX));
        out.put_slice(kafka);
    }
}

/// Appends a Hello frame.
pub fn encode_hello(out: &mut BytesMut, h: &Hello) {
    encode_hello_kind(out, KIND_HELLO, h);
}

/// Appends a Welcome frame.
pub fn encode_welcome(out: &mut BytesMut, h: &Hello) {
    encode_hello_kind(out, KIND_WELCOME, h);
}

/// Appends a Refuse frame (the reason is cut to 1 KiB, at a character boundary).
pub fn encode_refuse(out: &mut BytesMut, code: RefuseCode, reason: &str) {
    let mut end = reason.len().min(1024);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let reason = &reason.as_bytes()[..end];
    header(out, KIND_REFUSE, 4 + reason.len());
    out.put_u16_le(code.to_u16());
    out.put_u16_le(u16::try_from(reason.len()).unwrap_or(u16::MAX));
    out.put_slice(reason);
}

/// Bytes a Messages frame carrying `messages` takes, header included.
pub fn messages_frame_bytes<'a>(messages: impl Iterator<Item = &'a (u64, Bytes)>) -> usize {
    FRAME_HEADER_BYTES
        + 4
        + messages
            .map(|(_, m)| MESSAGE_OVERHEAD_BYTES + m.len())
            .sum::<usize>()
}

/// Appends one Messages frame carrying all of `messages`. The caller keeps the frame within
/// the peer's limit ([`messages_frame_bytes`]).
pub fn encode_messages(out: &mut BytesMut, messages: &[(u64, Bytes)]) {
    let total = messages_frame_bytes(messages.iter());
    out.reserve(total);
    header(out, KIND_MESSAGES, total - FRAME_HEADER_BYTES);
    out.put_u32_le(u32::try_from(messages.len()).unwrap_or(u32::MAX));
    for (group, m) in messages {
        out.put_u64_le(*group);
        out.put_u32_le(u32::try_from(m.len()).unwrap_or(u32::MAX));
        out.put_slice(m);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Hello {
        Hello {
            version: PEER_PROTOCOL_VERSION,
            node_id: 3,
            to_node_id: 1,
            cluster_id: "east-1".into(),
            client_address: "127.0.0.1:7001".into(),
            kafka_address: "127.0.0.1:9092".into(),
        }
    }

    fn decode_all(mut buf: BytesMut) -> Vec<Frame> {
        let mut frames = Vec::new();
        while let Some(f) = decode(&mut buf, 1 << 20).expect("valid") {
            frames.push(f);
        }
        assert!(buf.is_empty(), "a whole number of frames");
        frames
    }

    #[test]
    fn every_frame_kind_round_trips() {
        let mut out = BytesMut::new();
        encode_hello(&mut out, &hello());
        encode_welcome(&mut out, &hello());
        encode_refuse(&mut out, RefuseCode::ClusterId, "wrong cluster é");
        let msgs = vec![
            (7u64, Bytes::from_static(b"append")),
            (u64::MAX, Bytes::new()),
            (0, Bytes::from(vec![9u8; 1000])),
        ];
        encode_messages(&mut out, &msgs);
        assert_eq!(out.len(), 67 + 67 + 28 + messages_frame_bytes(msgs.iter()));
        let frames = decode_all(out);
        assert_eq!(
            frames,
            vec![
                Frame::Hello(hello()),
                Frame::Welcome(hello()),
                Frame::Refuse {
                    code: RefuseCode::ClusterId,
                    reason: "wrong cluster é".into()
                },
                Frame::Messages(msgs),
            ]
        );
    }

    #[test]
    fn partial_frames_wait_and_bad_ones_fail() {
        let mut out = BytesMut::new();
        encode_messages(&mut out, &[(1, Bytes::from_static(b"abc"))]);
        for cut in 0..out.len() {
            let mut part = BytesMut::from(&out[..cut]);
            assert_eq!(decode(&mut part, 1 << 20), Ok(None), "cut at {cut}");
            assert_eq!(part.len(), cut, "nothing consumed");
        }
        let mut big = out.clone();
        assert!(matches!(
            decode(&mut big, 8),
            Err(FrameError::TooLarge { .. })
        ));
        let mut bad = out.clone();
        bad[4] = 99;
        assert_eq!(decode(&mut bad, 1 << 20), Err(FrameError::UnknownKind(99)));
        let mut bad = out.clone();
        bad[5] = 1;
        assert_eq!(decode(&mut bad, 1 << 20), Err(FrameError::Reserved));
        // A count that claims more messages than the body holds.
        let mut bad = out.clone();
        bad[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode(&mut bad, 1 << 20),
            Err(FrameError::Malformed { .. })
        ));
        // A message length past the end.
        let mut bad = out.clone();
        bad[20..24].copy_from_slice(&100u32.to_le_bytes());
        assert!(matches!(
            decode(&mut bad, 1 << 20),
            Err(FrameError::Malformed { .. })
        ));
        let mut short = BytesMut::from(&[2u8, 0, 0, 0, 4, 0][..]);
        assert_eq!(
            decode(&mut short, 1 << 20),
            Err(FrameError::TooShort { len: 2 })
        );
        let mut magic = BytesMut::new();
        encode_hello(&mut magic, &hello());
        magic[8] = b'X';
        assert!(matches!(
            decode(&mut magic, 1 << 20),
            Err(FrameError::Malformed { .. })
        ));
    }

    #[test]
    fn a_version_1_hello_decodes_without_an_address_and_is_refused_by_version() {
        // Version 1's body ends with the cluster id: it still decodes (so the acceptor can
        // answer with the version refusal), with an empty client address.
        let mut out = BytesMut::new();
        let id = b"east-1";
        header(&mut out, KIND_HELLO, 23 + id.len());
        out.put_slice(&PEER_MAGIC);
        out.put_u16_le(1);
        out.put_u64_le(3);
        out.put_u64_le(1);
        out.put_u8(6);
        out.put_slice(id);
        let frames = decode_all(out);
        let Frame::Hello(h) = &frames[0] else {
            panic!("{frames:?}")
        };
        assert_eq!((h.version, h.client_address.as_str()), (1, ""));
        // Version 2 without its address length is malformed.
        let mut out = BytesMut::new();
        header(&mut out, KIND_HELLO, 23 + id.len());
        out.put_slice(&PEER_MAGIC);
        out.put_u16_le(2);
        out.put_u64_le(3);
        out.put_u64_le(1);
        out.put_u8(6);
        out.put_slice(id);
        assert!(matches!(
            decode(&mut out, 1 << 20),
            Err(FrameError::Malformed { .. })
        ));
    }

    #[test]
    fn a_version_2_hello_decodes_without_a_kafka_address_and_round_trips() {
        // What a version 2 peer sends (and what this build answers a version 2 peer with).
        let mut h = hello();
        h.version = 2;
        h.kafka_address.clear();
        let mut out = BytesMut::new();
        encode_hello(&mut out, &h);
        assert_eq!(out.len(), 52, "version 2's layout is unchanged");
        assert_eq!(decode_all(out), vec![Frame::Hello(h.clone())]);
        // A version 2 body with trailing bytes is malformed (version 2 ends with the address).
        let mut v3 = hello();
        v3.version = 3;
        let mut out = BytesMut::new();
        encode_hello(&mut out, &v3);
        out[12..14].copy_from_slice(&2u16.to_le_bytes());
        assert!(matches!(
            decode(&mut out, 1 << 20),
            Err(FrameError::Malformed { .. })
        ));
        // Version 3: every cut of the Kafka address is malformed, never a panic.
        let mut whole = BytesMut::new();
        encode_hello(&mut whole, &v3);
        for cut in 1..=v3.kafka_address.len() + 1 {
            let mut part = BytesMut::from(&whole[..whole.len() - cut]);
            let len = u32::try_from(part.len() - 4).unwrap_or(0);
            part[..4].copy_from_slice(&len.to_le_bytes());
            assert!(
                matches!(
                    decode(&mut part, 1 << 20),
                    Err(FrameError::Malformed { .. })
                ),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap in-test fuzz (the real one is net/fuzz peer_frame_decode): xorshift bytes,
        // with a plausible header now and then.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for round in 0..20_000u32 {
            let mut buf = BytesMut::new();
            let len = (round % 64) as usize;
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                buf.put_u8(x.to_le_bytes()[0]);
            }
            if round % 3 == 0 && buf.len() >= 8 {
                let l = u32::try_from(buf.len() - 4).unwrap_or(0);
                buf[..4].copy_from_slice(&l.to_le_bytes());
                buf[4] = 1 + (round % 4) as u8;
                buf[5..8].fill(0);
            }
            while let Ok(Some(_)) = decode(&mut buf, 1 << 16) {}
        }
    }
}
