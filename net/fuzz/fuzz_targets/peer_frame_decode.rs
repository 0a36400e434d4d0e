//! Arbitrary bytes through the node-to-node frame decoder (net/server/src/peer/frame.rs), fed
//! in pieces whose size the first input byte chooses, as a peer socket delivers them: the
//! decoder must never panic, must consume exactly one frame per decoded frame, and every frame
//! it decodes must re-encode to bytes that decode to the same frame.
//!
//! Run: `cd net/fuzz && cargo fuzz run -s none peer_frame_decode` (stable toolchain).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use shardline_net::server::peer::frame::{self, Frame};

const FRAME_BYTES_MAX: u32 = 1 << 16;

fuzz_target!(|data: &[u8]| {
    let Some((&control, stream)) = data.split_first() else {
        return;
    };
    let piece = usize::from(control) + 1;
    let mut buf = BytesMut::new();
    'feed: for chunk in stream.chunks(piece) {
        buf.extend_from_slice(chunk);
        loop {
            let before = buf.len();
            match frame::decode(&mut buf, FRAME_BYTES_MAX) {
                Ok(Some(f)) => {
                    assert!(buf.len() < before, "a decoded frame consumes bytes");
                    check(&f);
                }
                Ok(None) => {
                    assert_eq!(buf.len(), before, "an incomplete frame consumes nothing");
                    break;
                }
                Err(_) => break 'feed,
            }
        }
    }
});

fn check(f: &Frame) {
    let mut out = BytesMut::new();
    match f {
        Frame::Hello(h) => frame::encode_hello(&mut out, h),
        Frame::Welcome(h) => frame::encode_welcome(&mut out, h),
        // The reason is decoded lossily (invalid UTF-8 becomes U+FFFD): compare its text only.
        Frame::Refuse { code, reason } => {
            frame::encode_refuse(&mut out, *code, reason);
            let again = frame::decode(&mut out, u32::MAX).expect("re-encoded").expect("whole");
            if reason.len() <= 1024 {
                assert_eq!(&again, f);
            }
            return;
        }
        Frame::Messages(m) => frame::encode_messages(&mut out, m),
    }
    let again = frame::decode(&mut out, u32::MAX).expect("re-encoded").expect("whole");
    assert_eq!(&again, f);
    assert!(out.is_empty());
}
