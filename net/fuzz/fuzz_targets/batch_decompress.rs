//! Untrusted compressed bodies (lz4 block or zstd frame behind a declared-size prefix, as a
//! native batch carries them): decompression never panics, never produces more than the
//! declared size nor more than the limit, and a body that decompresses must give exactly the
//! declared size. The first input byte picks the codec and the limit.
//!
//! Run: `cd net/fuzz && cargo fuzz run -s none batch_decompress` (stable toolchain, no sanitizer).
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardline_engine::batch::{BATCH_BYTES_MAX, compress, compression};

fuzz_target!(|data: &[u8]| {
    let Some((&control, body)) = data.split_first() else {
        return;
    };
    let codec = if control & 1 == 0 {
        compression::LZ4
    } else {
        compression::ZSTD
    };
    // Limits from 1 KiB to the batch cap: a bomb must stop at the limit.
    let limit = (1024usize << (control >> 1 & 15)).min(BATCH_BYTES_MAX);
    if let Ok(out) = compress::decompress(codec, body, limit) {
        let declared = compress::check_prefix(body).expect("decompressed bodies have a prefix");
        assert_eq!(out.len(), declared);
        assert!(out.len() <= limit);
    }
});
