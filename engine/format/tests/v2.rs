//! Format v2 (compact body) and native compression (issue 18): round trips through builder,
//! validation and every reader path, for both body kinds and every codec; hostile bodies.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use proptest::prelude::*;
use shardline_format::{
    BATCH_BYTES_MAX, BODY_LENGTH_AT, BatchBuilder, BatchHeader, CRC_AT, FormatError, HEADER_BYTES,
    Header, Record, body_kind, compact, compress, compression, compute_crc, decode,
    set_base_offset, split_batches, validate, with_records,
};

type Rec = (i64, Option<Vec<u8>>, Vec<u8>, Vec<Header>);

fn arb_record() -> impl Strategy<Value = Rec> {
    (
        (1i64 << 50)..(1i64 << 50) + (1 << 40),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300)),
        proptest::collection::vec(any::<u8>(), 0..600),
        proptest::collection::vec(
            (
                "[a-z-]{0,12}",
                proptest::collection::vec(any::<u8>(), 0..16),
            )
                .prop_map(|(key, value)| Header { key, value }),
            0..3,
        ),
    )
}

const KINDS: [u8; 2] = [body_kind::COMPACT, body_kind::RKYV_RECORDS];
const CODECS: [u8; 3] = [compression::NONE, compression::LZ4, compression::ZSTD];

fn build(recs: &[Rec], kind: u8, codec: u8) -> Vec<u8> {
    let mut b = BatchBuilder::new().body_kind(kind).compression(codec);
    for (ts, k, v, h) in recs {
        b.push(*ts, k.clone(), v.clone(), h.clone());
    }
    b.build().expect("builds").to_vec()
}

fn refix_crc(v: &mut [u8]) {
    let crc = compute_crc(v);
    v[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
}

fn check_same(h: &BatchHeader, recs: &[Rec], out: &[Record]) -> Result<(), TestCaseError> {
    prop_assert_eq!(out.len(), recs.len());
    for (i, ((ts, k, v, hd), r)) in recs.iter().zip(out).enumerate() {
        prop_assert_eq!(r.offset_delta as usize, i);
        prop_assert_eq!(
            h.first_timestamp_us
                .wrapping_add(r.timestamp_delta_us as i64),
            *ts
        );
        prop_assert_eq!(&r.key, k);
        prop_assert_eq!(&r.value, v);
        prop_assert_eq!(&r.headers, hd);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn every_kind_and_codec_round_trips(recs in proptest::collection::vec(arb_record(), 1..30),
                                        base in any::<u64>().prop_map(|b| b >> 1)) {
        for kind in KINDS {
            for codec in CODECS {
                let mut bytes = build(&recs, kind, codec);
                set_base_offset(&mut bytes, base);
                let h = validate(&bytes).unwrap();
                prop_assert_eq!(h.body_kind, kind);
                prop_assert_eq!(h.compression, codec);
                prop_assert_eq!(bytes.len() % 16, 0);
                let (h, out) = decode(&bytes).unwrap();
                prop_assert_eq!(h.base_offset, base);
                check_same(&h, &recs, &out)?;
                // The borrowed accessors agree with the owned decode, record by record and
                // by random access.
                with_records(&bytes, &h, |rs| {
                    assert_eq!(rs.len(), recs.len());
                    for (i, r) in rs.iter().enumerate() {
                        assert_eq!(r.to_record(), out[i]);
                        assert_eq!(rs.get(i).map(|g| g.value()), Some(r.value()));
                        assert_eq!(r.headers().count(), out[i].headers.len());
                    }
                    assert!(rs.get(recs.len()).is_none());
                    Ok::<_, FormatError>(())
                }).unwrap();
            }
        }
    }

    #[test]
    fn arbitrary_compact_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..200),
                                            count in 0u32..64, span in any::<u64>()) {
        if let Ok(rs) = compact::CompactRecords::parse(&body, count, span) {
            for r in rs.iter() {
                let _ = (r.key, r.value, r.headers.count());
            }
        }
    }

    #[test]
    fn arbitrary_compressed_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..200),
                                               codec in 1u8..3) {
        let _ = compress::decompress(codec, &body, 1 << 16);
    }

    #[test]
    fn flipped_body_bytes_never_panic_on_read(recs in proptest::collection::vec(arb_record(), 1..8),
                                              at in any::<usize>(), x in 1u8..=255, codec in 0u8..3) {
        let mut v = build(&recs, body_kind::COMPACT, codec);
        let body_len = v.len() - HEADER_BYTES;
        v[HEADER_BYTES + at % body_len] ^= x;
        refix_crc(&mut v);
        // Ingress either refuses it or it reads back (possibly different) records: never panics.
        if let Ok(h) = validate(&v) {
            let _ = with_records(&v, &h, |rs| Ok::<_, FormatError>(rs.iter().map(|r| r.value().len()).sum::<usize>()));
        }
    }
}

#[test]
fn compact_small_records_cost_at_most_16_bytes_each() {
    let now = 1_764_000_000_000_000i64;
    let mut b = BatchBuilder::new();
    for i in 0..1000i64 {
        b.push_ref(now + i, None, &[7u8; 100], []);
    }
    let bytes = b.build().unwrap();
    let per_record = (bytes.len() - HEADER_BYTES) as f64 / 1000.0;
    assert!(per_record <= 116.0, "{per_record} bytes per 100 B record");
    // Version 1 of the same records, for the record: 148 bytes.
    let mut v1 = BatchBuilder::new().body_kind(body_kind::RKYV_RECORDS);
    for i in 0..1000i64 {
        v1.push_ref(now + i, None, &[7u8; 100], []);
    }
    assert!(v1.build().unwrap().len() > bytes.len() + 30_000);
}

#[test]
fn mixed_kinds_in_one_buffer_read_in_order() {
    let mut all = Vec::new();
    let mut base = 0u64;
    for (i, (kind, codec)) in [
        (body_kind::RKYV_RECORDS, compression::NONE),
        (body_kind::COMPACT, compression::NONE),
        (body_kind::COMPACT, compression::LZ4),
        (body_kind::RKYV_RECORDS, compression::ZSTD),
        (body_kind::COMPACT, compression::ZSTD),
    ]
    .into_iter()
    .enumerate()
    {
        let mut b = BatchBuilder::new().body_kind(kind).compression(codec);
        b.push_value(format!("a{i}"));
        b.push_value(format!("b{i}"));
        let mut v = b.build().unwrap().to_vec();
        set_base_offset(&mut v, base);
        base += 2;
        all.extend_from_slice(&v);
    }
    let mut values = Vec::new();
    for b in split_batches(&all).unwrap() {
        let (h, rs) = decode(b).unwrap();
        for r in rs {
            values.push((h.base_offset + u64::from(r.offset_delta), r.value));
        }
    }
    let want: Vec<_> = (0..5)
        .flat_map(|i| [format!("a{i}"), format!("b{i}")])
        .enumerate()
        .map(|(o, v)| (o as u64, v.into_bytes()))
        .collect();
    assert_eq!(values, want);
}

/// A body declaring a huge size, or decompressing beyond what it declared, is refused; the
/// ingress check refuses declared sizes over the cap without decompressing.
#[test]
fn compression_bombs_are_refused() {
    let zeros = vec![0u8; 4 << 20];
    for codec in [compression::LZ4, compression::ZSTD] {
        let mut body = Vec::new();
        compress::compress_into(codec, &zeros, &mut body).unwrap();
        assert!(body.len() < 64 << 10, "4 MiB of zeros compresses well");
        // Declares 1 KiB but holds 4 MiB: a bomb.
        let mut lying = body.clone();
        lying[..4].copy_from_slice(&1024u32.to_le_bytes());
        let e = compress::decompress(codec, &lying, BATCH_BYTES_MAX).unwrap_err();
        assert!(
            matches!(e, FormatError::TooLarge { .. } | FormatError::Corrupt(_)),
            "{e}"
        );
        // Declares more than the reader's limit.
        let e = compress::decompress(codec, &body, 1 << 20).unwrap_err();
        assert!(matches!(e, FormatError::TooLarge { .. }), "{e}");
        // Declares more than any batch may hold: refused by the prefix check (ingress).
        let mut huge = body.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            compress::check_prefix(&huge),
            Err(FormatError::TooLarge { .. })
        ));
        // The honest body decompresses to exactly its bytes.
        assert_eq!(
            compress::decompress(codec, &body, BATCH_BYTES_MAX).unwrap(),
            zeros
        );
    }
    // A whole batch whose compressed body declares more than the cap fails ingress.
    let mut b = BatchBuilder::new().compression(compression::LZ4);
    b.push_value(vec![1u8; 1000]);
    let mut v = b.build().unwrap().to_vec();
    v[HEADER_BYTES..HEADER_BYTES + 4]
        .copy_from_slice(&((BATCH_BYTES_MAX + 1) as u32).to_le_bytes());
    refix_crc(&mut v);
    assert!(matches!(validate(&v), Err(FormatError::TooLarge { .. })));
}

#[test]
fn corrupt_compact_bodies_are_refused_on_ingress() {
    let mut b = BatchBuilder::new();
    b.push(
        1,
        Some(b"key".to_vec()),
        b"value".to_vec(),
        vec![Header {
            key: "h".into(),
            value: b"v".to_vec(),
        }],
    );
    b.push(2, None, b"second".to_vec(), Vec::new());
    let good = b.build().unwrap().to_vec();
    assert!(validate(&good).is_ok());
    let body_len =
        u32::from_le_bytes(good[BODY_LENGTH_AT..BODY_LENGTH_AT + 4].try_into().unwrap()) as usize;
    let body = HEADER_BYTES;
    for (at, value, what) in [
        (body, 3u8, "bad key width"),
        (body + 4, 9, "header total"),
        (body + 8, 0xff, "blob length"),
        // The first key length (the first array entry, after the blob).
        (body + 12 + 3 + 5 + 1 + 1 + 6, 0x7f, "key length"),
    ] {
        let mut v = good.clone();
        v[at] = value;
        refix_crc(&mut v);
        assert!(
            matches!(validate(&v), Err(FormatError::Corrupt(_))),
            "{what}"
        );
    }
    // A header name that is not UTF-8.
    let mut v = good.clone();
    let name_at = body + 12 + 3 + 5;
    v[name_at] = 0xff;
    refix_crc(&mut v);
    assert!(validate(&v).is_err());
    // All widths zero: refused (a body may not claim records it has no bytes for).
    let mut v = good.clone();
    v[body..body + 4].fill(0);
    refix_crc(&mut v);
    assert!(validate(&v).is_err());
    assert!(body_len > 12);
}
