//! Tests of the Kafka body kind: wrapping, conversion both ways, decompression of hostile input.

use super::decompress::XERIAL_MAGIC;
use super::records::encode_batch;
use super::*;
use crate::{BatchBuilder, Header, decode, validate};

fn kafka_batch_of(values: &[&[u8]], producer_id: i64, sequence: i32) -> Vec<u8> {
    let mut b = BatchBuilder::new();
    for (i, v) in values.iter().enumerate() {
        b.push(
            1_700_000_000_000_000 + i64::try_from(i).unwrap() * 1000,
            (i % 2 == 0).then(|| b"k".to_vec()),
            v.to_vec(),
            vec![Header {
                key: "h".into(),
                value: b"x".to_vec(),
            }],
        );
    }
    let native = b.build().unwrap();
    let (h, records) = decode(&native).unwrap();
    let mut out = BytesMut::new();
    encode_batch(0, &h, &records, &mut out).unwrap();
    // Set the producer fields as an idempotent Kafka client would, and fix the CRC.
    out[43..51].copy_from_slice(&producer_id.to_be_bytes());
    out[51..53].copy_from_slice(&0i16.to_be_bytes());
    out[53..57].copy_from_slice(&sequence.to_be_bytes());
    let crc = crc32c::crc32c(&out[ATTRIBUTES_AT..]);
    out[KCRC_AT..KCRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    out.to_vec()
}

#[test]
fn kafka_batch_wraps_validates_and_converts_for_native_readers() {
    let k = kafka_batch_of(&[b"a", b"bb", b"ccc"], 0, 5);
    check(&k).unwrap();
    let wrapped = wrap(&k).unwrap();
    let h = validate(&wrapped).unwrap();
    assert_eq!(h.body_kind, body_kind::KAFKA_V2);
    assert_eq!(h.record_count, 3);
    assert_eq!(
        h.producer.producer_id, 1,
        "kafka producer id 0 is stored as 1"
    );
    assert_eq!(h.producer.base_sequence, 5);
    assert_eq!(h.first_timestamp_us, 1_700_000_000_000_000);
    let (_, records) = decode(&wrapped).unwrap();
    let values: Vec<&[u8]> = records.iter().map(|r| r.value.as_slice()).collect();
    assert_eq!(values, [b"a".as_slice(), b"bb", b"ccc"]);
    assert_eq!(records[0].key.as_deref(), Some(b"k".as_slice()));
    assert_eq!(records[1].key, None);
    assert_eq!(records[2].timestamp_delta_us, 2000);
    assert_eq!(records[1].headers[0].key, "h");
}

#[test]
fn wrapped_batches_carry_the_crc_a_full_pass_computes() {
    // Every padding length (the body length mod 16) and a producer-less batch.
    for n in 0..20usize {
        let v = vec![b'v'; n];
        let k = kafka_batch_of(&[&v, b"w"], i64::try_from(n).unwrap() - 1, 0);
        let w = wrap_validated(&k).unwrap();
        assert_eq!(w.header().crc, compute_crc(w.bytes()));
        assert_eq!(*w.header(), validate(w.bytes()).unwrap());
    }
}

#[test]
fn crc_combine_matches_the_crate_and_a_full_pass() {
    let data: Vec<u8> = (0..70_000u32)
        .map(|i| (i * 7 + i / 251).to_le_bytes()[0])
        .collect();
    for split in [0, 1, 7, 21, 64, 1000, 65_535, 69_999, 70_000] {
        let (a, b) = data.split_at(split);
        let combined = crc32c_combine(crc32c::crc32c(a), crc32c::crc32c(b), b.len());
        assert_eq!(combined, crc32c::crc32c(&data), "split at {split}");
        assert_eq!(
            combined,
            crc32c::crc32c_combine(crc32c::crc32c(a), crc32c::crc32c(b), b.len())
        );
    }
}

#[test]
fn kafka_fetch_serves_stored_bytes_with_only_the_base_offset_patched() {
    let k = kafka_batch_of(&[b"x", b"y"], -1, -1);
    let mut wrapped = wrap(&k).unwrap().to_vec();
    crate::set_base_offset(&mut wrapped, 1234);
    let h = crate::check_crc(&wrapped).unwrap();
    assert_eq!(h.producer.producer_id, 0);
    let mut out = BytesMut::new();
    to_kafka(&wrapped, &h, &mut out).unwrap();
    assert_eq!(out.len(), k.len());
    assert_eq!(be_i64(&out, 0), 1234);
    assert_eq!(&out[LENGTH_AT..12], &k[LENGTH_AT..12]);
    assert_eq!(
        &out[KMAGIC_AT..],
        &k[KMAGIC_AT..],
        "everything from the magic on is as sent"
    );
    check(&out).unwrap();
}

#[test]
fn native_batch_becomes_a_valid_kafka_batch() {
    let mut b = BatchBuilder::new();
    b.push(5_000_000, None, b"one".to_vec(), Vec::new());
    b.push(
        6_000_000,
        Some(b"key".to_vec()),
        b"two".to_vec(),
        Vec::new(),
    );
    let mut native = b.build().unwrap().to_vec();
    crate::set_base_offset(&mut native, 40);
    let h = crate::check_crc(&native).unwrap();
    let mut out = BytesMut::new();
    to_kafka(&native, &h, &mut out).unwrap();
    let info = check(&out).unwrap();
    assert_eq!(info.base_offset, 40);
    assert_eq!(info.record_count, 2);
    assert_eq!(info.base_timestamp_ms, 5000);
    assert_eq!(info.max_timestamp_ms, 6000);
    // Round trip through the Kafka kind back to records.
    let back = wrap(&out).unwrap();
    let (_, records) = decode(&back).unwrap();
    assert_eq!(records[1].value, b"two");
    assert_eq!(records[1].key.as_deref(), Some(b"key".as_slice()));
    assert_eq!(records[1].timestamp_delta_us, 1_000_000);
}

#[test]
fn bad_kafka_batches_are_refused() {
    let k = kafka_batch_of(&[b"a"], -1, -1);
    let mut bad_crc = k.clone();
    let last = bad_crc.len() - 1;
    bad_crc[last] ^= 1;
    assert!(wrap(&bad_crc).unwrap_err().to_string().contains("crc"));
    let mut bad_magic = k.clone();
    bad_magic[KMAGIC_AT] = 1;
    assert!(wrap(&bad_magic).is_err());
    assert!(wrap(&k[..k.len() - 1]).is_err());
    assert!(wrap(&k[..30]).is_err());
    // Record count not dense: refused even with a correct CRC.
    let mut bad_count = k.clone();
    bad_count[57..61].copy_from_slice(&2i32.to_be_bytes());
    let crc = crc32c::crc32c(&bad_count[ATTRIBUTES_AT..]);
    bad_count[KCRC_AT..KCRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    assert!(wrap(&bad_count).and_then(|w| validate(&w)).is_err());
    assert!(check(&bad_count).is_err());
}

#[test]
fn gzip_kafka_batches_are_readable_by_native_readers() {
    // An uncompressed batch's records section, gzip-wrapped with a stored deflate block.
    let plain = kafka_batch_of(&[b"one", b"two"], -1, -1);
    let section = &plain[KAFKA_HEADER_BYTES..];
    let mut gz = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
    gz.push(1); // final stored block
    let n = u16::try_from(section.len()).unwrap();
    gz.extend_from_slice(&n.to_le_bytes());
    gz.extend_from_slice(&(!n).to_le_bytes());
    gz.extend_from_slice(section);
    gz.extend_from_slice(&[0; 8]); // crc32 and size, not checked
    let mut k = plain[..KAFKA_HEADER_BYTES].to_vec();
    k.extend_from_slice(&gz);
    let len = i32::try_from(k.len() - LENGTH_END).unwrap();
    k[LENGTH_AT..LENGTH_AT + 4].copy_from_slice(&len.to_be_bytes());
    k[ATTRIBUTES_AT..ATTRIBUTES_AT + 2].copy_from_slice(&i16::from(codec::GZIP).to_be_bytes());
    let crc = crc32c::crc32c(&k[ATTRIBUTES_AT..]);
    k[KCRC_AT..KCRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    let (_, records) = decode(&wrap(&k).unwrap()).unwrap();
    assert_eq!(records[1].value, b"two");
    // The same stream claimed as zstd is corrupt for native readers, not a panic.
    k[ATTRIBUTES_AT..ATTRIBUTES_AT + 2].copy_from_slice(&i16::from(codec::ZSTD).to_be_bytes());
    let crc = crc32c::crc32c(&k[ATTRIBUTES_AT..]);
    k[KCRC_AT..KCRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    let e = decode(&wrap(&k).unwrap()).unwrap_err();
    assert!(e.to_string().contains("zstd"), "{e}");
}

/// `section` (an uncompressed records section) compressed with `codec` by the same crates'
/// encoders (snappy raw and xerial-framed, lz4 frame, zstd).
fn compress(codec: u8, section: &[u8], xerial: bool) -> Vec<u8> {
    use std::io::Write;
    match codec {
        codec::SNAPPY if xerial => {
            // snappy-java: header, then blocks (here of at most 100 bytes, to have several).
            let mut out = XERIAL_MAGIC.to_vec();
            out.extend_from_slice(&1i32.to_be_bytes());
            out.extend_from_slice(&1i32.to_be_bytes());
            for chunk in section.chunks(100) {
                let block = snap::raw::Encoder::new().compress_vec(chunk).unwrap();
                out.extend_from_slice(&u32::try_from(block.len()).unwrap().to_be_bytes());
                out.extend_from_slice(&block);
            }
            out
        }
        codec::SNAPPY => snap::raw::Encoder::new().compress_vec(section).unwrap(),
        codec::LZ4 => {
            let mut e = lz4_flex::frame::FrameEncoder::new(Vec::new());
            e.write_all(section).unwrap();
            e.finish().unwrap()
        }
        codec::ZSTD => {
            ruzstd::encoding::compress_to_vec(section, ruzstd::encoding::CompressionLevel::Fastest)
        }
        c => panic!("codec {c}"),
    }
}

/// A Kafka batch of `values` whose records section is `codec`-compressed, CRC fixed.
fn compressed_batch(values: &[&[u8]], codec: u8, xerial: bool) -> Vec<u8> {
    let plain = kafka_batch_of(values, -1, -1);
    let mut k = plain[..KAFKA_HEADER_BYTES].to_vec();
    k.extend_from_slice(&compress(codec, &plain[KAFKA_HEADER_BYTES..], xerial));
    let len = i32::try_from(k.len() - LENGTH_END).unwrap();
    k[LENGTH_AT..LENGTH_AT + 4].copy_from_slice(&len.to_be_bytes());
    k[ATTRIBUTES_AT..ATTRIBUTES_AT + 2].copy_from_slice(&i16::from(codec).to_be_bytes());
    let crc = crc32c::crc32c(&k[ATTRIBUTES_AT..]);
    k[KCRC_AT..KCRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    k
}

const CODECS: [(u8, bool); 4] = [
    (codec::SNAPPY, false),
    (codec::SNAPPY, true),
    (codec::LZ4, false),
    (codec::ZSTD, false),
];

#[test]
fn snappy_lz4_zstd_kafka_batches_are_readable_by_native_readers() {
    let values: Vec<Vec<u8>> = (0..500)
        .map(|i| format!("line {i} {}", "x".repeat(i % 37)).into_bytes())
        .collect();
    let refs: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
    for (c, xerial) in CODECS {
        let k = compressed_batch(&refs, c, xerial);
        check(&k).unwrap();
        let wrapped = wrap(&k).unwrap();
        validate(&wrapped).unwrap();
        let (h, records) = decode(&wrapped).unwrap();
        assert_eq!(h.record_count, 500, "codec {c} xerial {xerial}");
        let got: Vec<&[u8]> = records.iter().map(|r| r.value.as_slice()).collect();
        assert_eq!(got, refs, "codec {c} xerial {xerial}");
        assert_eq!(records[2].key.as_deref(), Some(b"k".as_slice()));
        assert_eq!(records[3].timestamp_delta_us, 3000);
        // The Kafka fetch path still serves the bytes as sent.
        let mut out = BytesMut::new();
        to_kafka(&wrapped, &h, &mut out).unwrap();
        assert_eq!(&out[KMAGIC_AT..], &k[KMAGIC_AT..]);
    }
}

#[test]
fn zstd_skippable_and_concatenated_frames_are_read() {
    let a = compress(codec::ZSTD, b"hello ", false);
    let b = compress(codec::ZSTD, b"world", false);
    let mut s = Vec::new();
    s.extend_from_slice(&0x184D_2A50u32.to_le_bytes()); // a skippable frame of 3 bytes
    s.extend_from_slice(&3u32.to_le_bytes());
    s.extend_from_slice(b"abc");
    s.extend_from_slice(&a);
    s.extend_from_slice(&b);
    assert_eq!(decompress(codec::ZSTD, &s, 1000).unwrap(), b"hello world");
}

#[test]
fn compression_bombs_are_refused_with_a_typed_error() {
    let zeros = vec![0u8; 1 << 20];
    for (c, xerial) in CODECS {
        let z = compress(c, &zeros, xerial);
        assert!(z.len() < zeros.len() / 4, "codec {c}: {}", z.len());
        assert_eq!(decompress(c, &z, 1 << 20).unwrap().len(), 1 << 20);
        let e = decompress(c, &z, 4096).unwrap_err();
        assert!(
            matches!(e, Error::TooLarge { max: 4096, .. }),
            "codec {c} xerial {xerial}: {e}"
        );
    }
    let mut gz = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
    gz.extend_from_slice(&miniz_oxide::deflate::compress_to_vec(&zeros, 6));
    gz.extend_from_slice(&[0; 8]);
    assert_eq!(
        decompress(codec::GZIP, &gz, 1 << 20).unwrap().len(),
        1 << 20
    );
    let e = decompress(codec::GZIP, &gz, 4096).unwrap_err();
    assert!(matches!(e, Error::TooLarge { .. }), "{e}");
    // Raw snappy announcing 4 GiB in a few bytes: refused on the announcement, before any
    // allocation, through the native read path (limit BATCH_BYTES_MAX) too.
    let announced = [0xff, 0xff, 0xff, 0xff, 0x0f, 0, 0];
    let e = decompress(codec::SNAPPY, &announced, BATCH_BYTES_MAX).unwrap_err();
    assert!(matches!(e, Error::TooLarge { .. }), "{e}");
    // The same in xerial framing, and split over blocks that each fit but add up past it.
    let block = snap::raw::Encoder::new().compress_vec(&zeros).unwrap();
    let mut x = XERIAL_MAGIC.to_vec();
    x.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1]);
    for _ in 0..5 {
        x.extend_from_slice(&u32::try_from(block.len()).unwrap().to_be_bytes());
        x.extend_from_slice(&block);
    }
    let e = decompress(codec::SNAPPY, &x, 4 << 20).unwrap_err();
    assert!(matches!(e, Error::TooLarge { .. }), "{e}");
    // A few bytes announcing 1 MiB (within the limit) are refused before allocating it.
    let e = decompress(codec::SNAPPY, &[0x80, 0x80, 0x40, 0, 0], 4 << 20).unwrap_err();
    assert!(e.to_string().contains("announces"), "{e}");
    // A zstd frame announcing a window far beyond what its bytes could expand to.
    let mut frame = 0xFD2F_B528u32.to_le_bytes().to_vec();
    frame.extend_from_slice(&[0x00, 0xF8]); // no content size, window descriptor 2^41
    frame.extend_from_slice(&[1, 0, 0]); // one last raw block of 0 bytes
    let e = decompress(codec::ZSTD, &frame, BATCH_BYTES_MAX).unwrap_err();
    assert!(matches!(e, Error::Corrupt(_)), "{e}");
}

#[test]
fn truncated_and_garbage_compressed_sections_are_errors() {
    let section =
        kafka_batch_of(&[b"one", b"two", b"three"], -1, -1)[KAFKA_HEADER_BYTES..].to_vec();
    for (c, xerial) in CODECS {
        let z = compress(c, &section, xerial);
        assert_eq!(decompress(c, &z, BATCH_BYTES_MAX).unwrap(), section);
        // (Not the last byte for lz4: lz4_flex takes a stream cut inside its end mark as
        // complete, every block being there; the record count check would still apply.)
        for cut in [1, z.len() / 2, z.len() - 5] {
            assert!(
                decompress(c, &z[..cut], BATCH_BYTES_MAX)
                    .is_err_and(|e| matches!(e, Error::Corrupt(_))),
                "codec {c} xerial {xerial} cut at {cut} of {}",
                z.len()
            );
        }
        assert!(decompress(c, b"definitely not compressed", BATCH_BYTES_MAX).is_err());
    }
    // A batch whose compressed section is garbage: the native reader gets an error.
    let mut k = compressed_batch(&[b"a", b"b"], codec::LZ4, false);
    let end = k.len() - 1;
    k[end] ^= 0x55;
    let crc = crc32c::crc32c(&k[ATTRIBUTES_AT..]);
    k[KCRC_AT..KCRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    assert!(decode(&wrap(&k).unwrap()).is_err());
}

#[test]
fn producer_ids_map_without_colliding_with_none() {
    assert_eq!(producer_to_shardline(-1), 0);
    assert_eq!(producer_to_shardline(0), 1);
    assert_eq!(producer_to_kafka(producer_to_shardline(0)), 0);
    assert_eq!(producer_to_kafka(producer_to_shardline(77)), 77);
    assert_eq!(producer_to_kafka(0), -1);
}

proptest::proptest! {
    #[test]
    fn arbitrary_kafka_bytes_never_panic(v in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
        if let Ok(w) = wrap(&v) {
            let _ = validate(&w);
            let _ = decode(&w);
        }
        let _ = check(&v);
    }

    #[test]
    fn arbitrary_compressed_bytes_never_panic(
        c in 1u8..=4,
        v in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
    ) {
        let _ = decompress(c, &v, 1 << 20);
        // The same bytes behind each codec's magic, so the decoders get past their headers.
        let mut x = XERIAL_MAGIC.to_vec();
        x.extend_from_slice(&v);
        let _ = decompress(codec::SNAPPY, &x, 1 << 20);
        let mut z = 0xFD2F_B528u32.to_le_bytes().to_vec();
        z.extend_from_slice(&v);
        let _ = decompress(codec::ZSTD, &z, 1 << 20);
        let mut l = 0x184D_2204u32.to_le_bytes().to_vec();
        l.extend_from_slice(&v);
        let _ = decompress(codec::LZ4, &l, 1 << 20);
    }

    #[test]
    fn corrupted_compressed_sections_never_panic(
        which in 0usize..4,
        flips in proptest::collection::vec((proptest::prelude::any::<usize>(), 1u8..=255), 1..8),
        cut in proptest::prelude::any::<usize>(),
    ) {
        let (c, xerial) = CODECS[which];
        let section = kafka_batch_of(&[b"one", b"two", b"three", b"four"], -1, -1);
        let mut z = compress(c, &section[KAFKA_HEADER_BYTES..], xerial);
        for (at, x) in flips {
            let n = z.len();
            z[at % n] ^= x;
        }
        let cut = cut % (z.len() + 1);
        let _ = decompress(c, &z[..cut], 1 << 20);
        let _ = decompress(c, &z, 1 << 20);
    }
}
