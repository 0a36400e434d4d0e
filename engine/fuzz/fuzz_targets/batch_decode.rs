//! Feeds arbitrary bytes to every decoder of bytes the engine did not produce itself (record
//! batches from the wire and from disk, index files from disk). Proves none of them panics or
//! over-allocates, and that whatever one accepts is self-consistent: an accepted batch has the
//! length and CRC it claims and dense record offsets, a split covers the buffer exactly, and an
//! accepted index file re-encodes to one that decodes to the same checkpoint.
//!
//! The typed [`batch::ValidatedBatch`] accepts exactly what `validate` accepts, and assigning
//! it a base offset changes those eight bytes only and keeps the CRC valid.
//!
//! Run: `cargo +nightly fuzz run -s none batch_decode` from `engine/fuzz`.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use shardline_engine::batch;
use shardline_engine::log::index::IndexKind;
use shardline_engine::log::{self, index};

fuzz_target!(|data: &[u8]| {
    check_batch_decoders(data);
    check_index_decoders(data);
});

fn check_batch_decoders(data: &[u8]) {
    if let Ok(h) = batch::validate(data) {
        assert_eq!(h.batch_length as usize, data.len());
        assert_eq!(batch::compute_crc(data), h.crc);
        assert_eq!(data.len() % batch::BATCH_ALIGN, 0);
        // The typed batch agrees, and assigning a base offset changes nothing else.
        let typed = batch::ValidatedBatch::validate(Bytes::copy_from_slice(data))
            .expect("ValidatedBatch accepts what validate accepts");
        assert_eq!(*typed.header(), h);
        let base = h.base_offset.wrapping_add(1) >> 1;
        let (patched, _) = typed.with_base_offset(base);
        let again = batch::check_crc(patched.bytes()).expect("patched batch keeps its CRC");
        assert_eq!(again, batch::BatchHeader { base_offset: base, ..h });
        assert_eq!(*patched.header(), again);
        let rest = batch::BATCH_LENGTH_AT;
        assert_eq!(&patched.bytes()[rest..], &data[rest..]);
    } else {
        assert!(batch::ValidatedBatch::validate(Bytes::copy_from_slice(data)).is_err());
    }
    if let Ok((h, records)) = batch::decode(data) {
        assert_eq!(records.len(), h.record_count as usize);
        for (i, r) in records.iter().enumerate() {
            assert_eq!(r.offset_delta as usize, i);
            let span = h.max_timestamp_us.wrapping_sub(h.first_timestamp_us) as u64;
            assert!(r.timestamp_delta_us <= span);
        }
    }
    if let Ok(batches) = batch::split_batches(data) {
        assert_eq!(batches.iter().map(|b| b.len()).sum::<usize>(), data.len());
        for b in batches {
            let _ = batch::validate(b);
        }
    }
    // The time-lookup scan of fetched batches, at a timestamp taken from the input. The log
    // assigns base offsets itself, so fetched batches never end past u64::MAX; skip those.
    let offsets_fit = batch::split_batches(data).is_ok_and(|bs| {
        bs.iter().all(|b| {
            batch::BatchHeader::parse(b).is_ok_and(|h| {
                h.base_offset
                    .checked_add(u64::from(h.record_count))
                    .is_some()
            })
        })
    });
    if offsets_fit {
        let t = data
            .get(32..40)
            .map_or(0, |b| i64::from_le_bytes(b.try_into().unwrap_or([0; 8])));
        let _ = log::first_at_or_after(&[Bytes::copy_from_slice(data)], t);
    }
}

fn check_index_decoders(data: &[u8]) {
    // The segment base an index file must name: the one in the input (so the fuzzer can get
    // past that check) and a fixed one.
    let named = data
        .get(16..24)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])));
    for base in [named, 0] {
        let mut decoded = Vec::new();
        for kind in [IndexKind::Offset, IndexKind::Time] {
            let Some(cp) = index::decode(kind, data, base) else {
                continue;
            };
            assert_eq!(cp.segment_base, base);
            assert!(cp.next_offset >= base);
            for pair in cp.entries.windows(2) {
                assert!(pair[0].rel_offset < pair[1].rel_offset);
                assert!(pair[0].position < pair[1].position);
            }
            for e in &cp.entries {
                assert!(u64::from(e.position) < cp.data_bytes);
                let _ = index::lookup_offset(&cp.entries, e.rel_offset);
                let _ = index::lookup_time(&cp.entries, e.max_timestamp_before_us);
            }
            let again = index::decode(kind, &index::encode(kind, &cp), base);
            assert_eq!(
                again.as_ref(),
                Some(&cp),
                "re-encoded index must decode the same"
            );
            decoded.push(cp);
        }
        if let [offsets, times] = &decoded[..] {
            let _ = index::merge(offsets.clone(), times.clone());
        }
    }
}
