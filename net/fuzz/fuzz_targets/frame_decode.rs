//! Arbitrary bytes through the whole receive path: the incremental `FrameDecoder` (fed in pieces
//! whose size the first input byte chooses), then request and server-message decoding of every
//! frame, and, for every message that decodes, encode → decode again must give it back unchanged.
//! The raw input is also decoded directly as a payload of every api key, unaligned, so the fuzzer
//! reaches rkyv validation without having to build a valid frame header first.
//!
//! Run: `cd net/fuzz && cargo fuzz run -s none frame_decode` (stable toolchain, no sanitizer).
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardline_net::protocol::{
    DecoderConfig, FRAME_BYTES_MIN_LIMIT, FrameBuf, FrameDecoder, FrameEncoder, OwnedFrame, Push,
    Request, Response, ServerMessage, WireError,
};

fuzz_target!(|data: &[u8]| {
    let Some((&control, stream)) = data.split_first() else {
        return;
    };
    let piece = usize::from(control) + 1;
    let mut decoder = FrameDecoder::new(DecoderConfig {
        frame_bytes_max: FRAME_BYTES_MIN_LIMIT,
        read_buffer_bytes: 4096,
    })
    .expect("valid config");
    let mut encoder = FrameEncoder::default();
    'feed: for chunk in stream.chunks(piece) {
        let mut chunk = chunk;
        loop {
            let taken = decoder.push(chunk);
            chunk = &chunk[taken..];
            let mut frames = 0;
            loop {
                match decoder.next_frame_owned() {
                    Ok(Some(frame)) => {
                        frames += 1;
                        check_frame(&frame, &mut encoder);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        assert!(e.is_fatal(), "decoder errors are framing errors: {e}");
                        assert_eq!(decoder.next_frame().err(), Some(e), "decoder stays failed");
                        break 'feed;
                    }
                }
            }
            assert!(
                taken > 0 || frames > 0 || chunk.is_empty(),
                "decoder made no progress"
            );
            if chunk.is_empty() {
                break;
            }
        }
    }

    for api_key in 0..shardline_net::protocol::API_KEY_LIMIT as u16 {
        let _ = Request::decode(api_key, 0, stream);
        let _ = Response::decode(api_key, 0, stream);
    }
    let _ = Push::decode(0, stream);
});

fn check_frame(frame: &OwnedFrame, encoder: &mut FrameEncoder) {
    let h = frame.header;
    if let Ok(request) = Request::decode_owned_frame(frame) {
        let mut out = FrameBuf::new();
        match encoder.request(&mut out, h.correlation_id, h.api_version, &request) {
            Ok(_) => {}
            // Blob references may overlap on the wire; re-encoded, each blob gets its own copy,
            // so a frame may legitimately grow past the limit. Anything else is a bug.
            Err(WireError::FrameTooLarge { .. }) => return,
            Err(e) => panic!("a decoded request does not re-encode: {e}"),
        }
        let mut again = FrameDecoder::new(DecoderConfig::default()).expect("valid config");
        assert_eq!(again.push(&out), out.len());
        let f = again
            .next_frame()
            .expect("re-encoded frame")
            .expect("whole frame");
        assert_eq!(Request::decode_frame(&f).expect("decodes again"), request);
    }
    if let Ok(message) = ServerMessage::decode_owned(frame) {
        let mut out = FrameBuf::new();
        let encoded = match &message {
            ServerMessage::Response {
                correlation_id,
                response,
            } => encoder.response(&mut out, *correlation_id, h.api_version, response),
            ServerMessage::Error {
                correlation_id,
                api_key,
                error,
            } => encoder.error(&mut out, *correlation_id, *api_key, h.api_version, error),
            ServerMessage::Push(push) => encoder.push(&mut out, h.api_version, push),
            ServerMessage::PushError {
                subscription_id,
                error,
            } => encoder.push_error(&mut out, *subscription_id, h.api_version, error),
        };
        match encoded {
            Ok(_) => {}
            Err(WireError::FrameTooLarge { .. }) => return,
            Err(e) => panic!("a decoded server message does not re-encode: {e}"),
        }
        let mut again = FrameDecoder::new(DecoderConfig::default()).expect("valid config");
        assert_eq!(again.push(&out), out.len());
        let f = again
            .next_frame()
            .expect("re-encoded frame")
            .expect("whole frame");
        assert_eq!(ServerMessage::decode(&f).expect("decodes again"), message);
    }
}
