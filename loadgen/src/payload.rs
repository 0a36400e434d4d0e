//! The loadgen message layout: every value starts with a fixed header, the rest is filler.
//!
//! ```text
//!  0                8                16                     message_size
//!  +----------------+----------------+------------------------+
//!  | send_us u64 LE | sequence u64 LE| filler (i % 251)       |
//!  +----------------+----------------+------------------------+
//! ```
//! `send_us` is the *intended* send time on [`crate::clock`] (equal to the actual send time in
//! closed-loop mode), so end-to-end latency measured from it is free of coordinated omission.
//! `sequence` counts the messages of one partition from 0; one producer owns each partition, so
//! consumers can check per-partition order without talking to producers.

/// Size of the header at the start of every value.
pub const HEADER_BYTES: usize = 16;

/// The decoded header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageHeader {
    pub send_us: u64,
    pub sequence: u64,
}

/// A template value of `message_bytes` (at least [`HEADER_BYTES`]) with deterministic filler.
pub fn template(message_bytes: usize) -> Vec<u8> {
    assert!(
        message_bytes >= HEADER_BYTES,
        "message smaller than its header"
    );
    (0..message_bytes).map(|i| (i % 251) as u8).collect()
}

/// A copy of `template` carrying `header`.
pub fn stamp(template: &[u8], header: MessageHeader) -> Vec<u8> {
    let mut v = template.to_vec();
    write_header(&mut v, header);
    v
}

/// Writes `header` over the first [`HEADER_BYTES`] of `value`.
pub fn write_header(value: &mut [u8], header: MessageHeader) {
    assert!(value.len() >= HEADER_BYTES, "value smaller than the header");
    value[0..8].copy_from_slice(&header.send_us.to_le_bytes());
    value[8..16].copy_from_slice(&header.sequence.to_le_bytes());
}

/// Reads the header; `None` if the value is too short to hold one.
pub fn read_header(value: &[u8]) -> Option<MessageHeader> {
    let send: [u8; 8] = value.get(0..8)?.try_into().ok()?;
    let sequence: [u8; 8] = value.get(8..16)?.try_into().ok()?;
    Some(MessageHeader {
        send_us: u64::from_le_bytes(send),
        sequence: u64::from_le_bytes(sequence),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_keeps_filler() {
        let t = template(100);
        let h = MessageHeader {
            send_us: 0x0102_0304_0506_0708,
            sequence: 42,
        };
        let v = stamp(&t, h);
        assert_eq!(v.len(), 100);
        assert_eq!(read_header(&v), Some(h));
        assert_eq!(&v[HEADER_BYTES..], &t[HEADER_BYTES..]);
    }

    #[test]
    fn short_values_have_no_header() {
        assert_eq!(read_header(&[0u8; 15]), None);
        assert!(read_header(&[0u8; 16]).is_some());
    }
}
