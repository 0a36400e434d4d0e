//! Arbitrary bytes as a work-queue ack-log record (engine/src/queue/record.rs): decoding never
//! panics or over-allocates, and whatever decodes encodes back to the same bytes.
//!
//! Run: `cd engine/fuzz && cargo fuzz run -s none queue_ack_record` (stable, no sanitizer).
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardline_engine::queue::record::AckRecord;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = AckRecord::decode(data) {
        assert_eq!(r.encode(), data, "decode then encode must give the input back");
    }
});
