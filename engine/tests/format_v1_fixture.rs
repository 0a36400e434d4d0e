//! Format compatibility (issue 18): version-1 segments written by the code before the compact
//! format (engine/tests/fixtures/v1-segments, see its README) are read by this build; compact
//! and compressed batches appended after them roll into new segments, and the mixed log reads
//! back in order, before and after a restart. Also: compression composes with encryption at
//! rest (compress, then seal).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::path::Path;
use std::sync::Arc;

use shardline_engine::batch::{self, BatchBuilder, Header, body_kind, compression};
use shardline_engine::crypto::{Keyring, Sealer, TopicEncryption};
use shardline_engine::{Acks, Engine, EngineConfig, FetchRequest};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/v1-segments");
const V1_RECORDS: u64 = 800;
const TAIL: &str = "0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz";

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else if e.file_name() != "README.md" {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

fn config(dir: &Path) -> EngineConfig {
    let mut c = EngineConfig::with_data_dir(dir);
    c.shards = 1;
    c.pin_shards = false;
    c.io_memory_bytes = 512 << 10;
    c
}

/// One record as read: offset, body kind and codec of its batch, key, value, headers.
type Read = (u64, u8, u8, Option<Vec<u8>>, Vec<u8>, Vec<Header>);

fn read_all(e: &Engine) -> Vec<Read> {
    let mut out = Vec::new();
    let mut offset = 0;
    for _ in 0..10_000 {
        let r = e.fetch(FetchRequest::new("v1", 0, offset)).unwrap();
        if r.records == 0 {
            return out;
        }
        for chunk in &r.chunks {
            for b in batch::split_batches(chunk).unwrap() {
                let (h, recs) = batch::decode(b).unwrap();
                for rec in recs {
                    let o = h.base_offset + u64::from(rec.offset_delta);
                    if o >= offset {
                        out.push((
                            o,
                            h.body_kind,
                            h.compression,
                            rec.key,
                            rec.value,
                            rec.headers,
                        ));
                    }
                }
            }
        }
        assert!(r.next_offset > offset, "fetch made no progress");
        offset = r.next_offset;
    }
    panic!("too many fetches");
}

fn v1_value(round: u64, n: u64) -> Vec<u8> {
    let prefix = format!("v1-{round}-{n}-");
    format!("{prefix}{}", &TAIL[..100]).into_bytes()
}

fn check_v1(records: &[Read]) {
    for (o, kind, codec, key, value, headers) in records.iter().take(V1_RECORDS as usize) {
        let (round, n) = (o / 100, o % 100);
        assert_eq!(
            (*kind, *codec),
            (body_kind::RKYV_RECORDS, compression::NONE),
            "{o}"
        );
        assert_eq!(key.as_deref(), Some(format!("k{round}").as_bytes()), "{o}");
        assert_eq!(value, &v1_value(round, n), "{o}");
        assert_eq!(
            headers,
            &vec![Header {
                key: "h".into(),
                value: format!("x{round}").into_bytes()
            }]
        );
    }
}

fn v2_batch(codec: u8, round: u64) -> bytes::Bytes {
    let mut b = BatchBuilder::new().compression(codec);
    for n in 0..300u64 {
        let value = format!("v2-{round}-{n}-{}", &TAIL[..90]);
        b.push(batch::now_us(), None, value.into_bytes(), Vec::new());
    }
    b.build().unwrap()
}

#[test]
fn version_1_segments_read_and_mix_with_compact_and_compressed_segments() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(Path::new(FIXTURE), dir.path());
    let e = Engine::open(config(dir.path())).unwrap();
    let v1 = read_all(&e);
    assert_eq!(v1.len() as u64, V1_RECORDS);
    check_v1(&v1);
    assert!(v1.iter().enumerate().all(|(i, r)| r.0 == i as u64));

    // ~100 KB per round against 64 KiB segments: the compact batches roll into new segments.
    let codecs = [compression::NONE, compression::LZ4, compression::ZSTD];
    for (round, codec) in codecs.into_iter().enumerate() {
        e.produce("v1", 0, v2_batch(codec, round as u64), Acks::Durable)
            .unwrap();
    }
    let check_all = |e: &Engine| {
        let all = read_all(e);
        assert_eq!(all.len() as u64, V1_RECORDS + 900);
        check_v1(&all);
        for (i, (o, kind, codec, key, value, headers)) in
            all.iter().skip(V1_RECORDS as usize).enumerate()
        {
            let (round, n) = (i / 300, i % 300);
            assert_eq!(*o, V1_RECORDS + i as u64);
            assert_eq!(*kind, body_kind::COMPACT);
            assert_eq!(*codec, codecs[round]);
            assert_eq!(key, &None);
            assert!(headers.is_empty());
            assert!(value.starts_with(format!("v2-{round}-{n}-").as_bytes()));
        }
    };
    check_all(&e);
    drop(e);
    let segments = std::fs::read_dir(dir.path().join("topics/v1-2/0"))
        .unwrap()
        .filter(|f| f.as_ref().unwrap().path().extension() == Some("log".as_ref()))
        .count();
    assert!(
        segments >= 4,
        "v2 data rolled into new segments ({segments})"
    );
    // Recovery scans the mixed segments.
    let e = Engine::open(config(dir.path())).unwrap();
    check_all(&e);
}

#[test]
fn compressed_batches_are_sealed_and_opened_like_any_other() {
    const KEYS: &str = r#"{"active": 1, "keys": {"1": "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"}}"#;
    let keyring = Arc::new(Keyring::parse(KEYS).unwrap());
    let mut sealer = Sealer::new(TopicEncryption {
        keyring: keyring.clone(),
        topic_id: 3,
        partition: 0,
    })
    .unwrap();
    for codec in [compression::LZ4, compression::ZSTD] {
        let mut b = BatchBuilder::new().compression(codec);
        for i in 0..50 {
            b.push_value(format!("secret telemetry {i} {}", &TAIL[..60]));
        }
        let plain = b.build().unwrap();
        let sealed = sealer.seal(&plain, 10).unwrap();
        let h = batch::validate(&sealed).unwrap();
        assert_eq!(
            h.compression, codec,
            "the codec byte stays in the plain header"
        );
        assert!(batch::decode(&sealed).is_err(), "a sealed body is opaque");
        let opened = keyring.open(&sealed, 3, 0).unwrap();
        let (h, records) = batch::decode(&opened).unwrap();
        assert_eq!((h.compression, records.len()), (codec, 50));
        assert!(records[49].value.starts_with(b"secret telemetry 49 "));
    }
}
