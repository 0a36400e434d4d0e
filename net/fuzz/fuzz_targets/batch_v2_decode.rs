//! Arbitrary bytes as a compact (format v2) record body and as a whole batch: the compact
//! parser (`CompactRecords::parse`) must refuse or accept without panicking and without
//! allocating; whatever it accepts must read in place to the end (every key, value and header
//! a slice of the body), and a whole batch that passes ingress validation must read through the
//! kind-agnostic accessors. The first four input bytes choose the record count and the
//! timestamp span, so the fuzzer reaches the length walk without building a header.
//!
//! Run: `cd net/fuzz && cargo fuzz run -s none batch_v2_decode` (stable toolchain, no sanitizer).
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardline_engine::batch::{self, CompactRecords, FormatError};

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let count = u32::from(u16::from_le_bytes([data[0], data[1]]));
    let span = u64::from(u16::from_le_bytes([data[2], data[3]]));
    let body = &data[4..];
    if let Ok(records) = CompactRecords::parse(body, count, span) {
        let mut seen = 0usize;
        for r in records.iter() {
            assert!(r.timestamp_delta_us <= span);
            seen += r.key.map_or(0, <[u8]>::len) + r.value.len();
            for (k, v) in r.headers {
                seen += k.len() + v.len();
            }
        }
        assert!(seen <= body.len());
        assert_eq!(records.iter().count(), count as usize);
    }
    // The same bytes as a whole batch (header, CRC, then the body of whatever kind it names).
    if let Ok(h) = batch::validate(data) {
        let _ = batch::with_records(data, &h, |rs| {
            Ok::<_, FormatError>(rs.iter().map(|r| r.value().len()).sum::<usize>())
        });
        let _ = batch::decode(data);
    }
});
