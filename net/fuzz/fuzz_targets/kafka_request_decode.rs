//! Arbitrary bytes as one Kafka request frame (without its size prefix) through the Kafka
//! listener's decoding: header, version check, the body of every served api, and the checks of
//! every produced record batch (Kafka CRC32C, shape, records). Must never panic.
//!
//! Run: `cd net/fuzz && cargo fuzz run -s none kafka_request_decode` (stable toolchain).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = shardline_net::server::decode_kafka_request(bytes::Bytes::copy_from_slice(data));
    // The same bytes as a record batch a client produced.
    let _ = shardline_net::server::decode_kafka_request({
        let mut f = vec![0u8, 0, 0, 9, 0, 0, 0, 1, 0];
        f.extend_from_slice(data);
        bytes::Bytes::from(f)
    });
});
